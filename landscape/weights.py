"""Spectra of the weight matrices themselves, without data: singular values, the empirical
spectral density (ESD), its power-law exponent α, stable rank and spectral norm, per layer.

The matrices of a layer (the rule, as WeightWatcher 0.7.7 applies it where it has one):

- ``Dense``: the kernel, ``(in, out)``.
- ``Embedding``: the table, ``(vocabulary, dim)``.
- ``Conv1D/2D/3D`` (and ``ConvNDTranspose``): a kernel ``(k_1, ..., k_d, c_in, c_out)`` is
  ``k_1 ⋯ k_d`` matrices of ``c_in × c_out``, one per spatial position (WeightWatcher's
  "conv2d slices": ``W[i, j, :, :]`` for a Keras ``(kh, kw, c_in, c_out)`` kernel). Their
  squared singular values are pooled into one ESD for the layer. A transposed convolution's
  kernel ``(..., c_out, c_in)`` gives the transposed slices, with the same singular values.
- ``MultiHeadAttention``: per head. The query, key and value kernels ``(d, heads, key_dim)``
  are ``heads`` matrices of ``d × key_dim``; the output kernel ``(heads, value_dim, d)`` is
  ``heads`` matrices of ``value_dim × d``; each projection's heads pooled into one ESD.
- Any other ``EinsumDense``: its equation says which kernel axes are contracted with the input
  (the rows), which only reach the output (the columns) and which appear in input, kernel and
  output alike (one matrix per index, as for the heads).

Every other layer that holds weights of its own (normalization, depthwise and separable
convolutions, recurrent cells with their gates side by side, custom layers) is skipped and
listed in ``WeightSpectra.skipped`` with its class and the reason. So is a quantized layer
(``layer.quantize("int8")`` and the other modes): its kernel variable holds integer codes and
scales, not the matrix it computes with.

The ESD is the set of eigenvalues of ``WᵀW``, λ = σ² (WeightWatcher 0.7.7 does the same: its
``1/N`` normalization was removed in 0.6.5; α does not depend on the scale). Eigenvalues below
numerical rank (σ ≤ σ_max · max(N, M) · ε of the kernel's dtype, NumPy's ``matrix_rank``
tolerance) are left out of the fit.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from landscape import _checks

logger = logging.getLogger("landscape")

MIN_TAIL = 10  # fewest eigenvalues a power-law tail is fitted to (smaller: α is noise)


# -- the power-law fit ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """A continuous power law ``p(x) ∝ x^-α`` fitted to the values ``x ≥ xmin``.

    Attributes:
        alpha: The maximum-likelihood exponent, ``1 + n / Σ ln(x_i / xmin)`` over the tail.
        stderr: Its asymptotic standard error ``(α − 1) / √n``.
        xmin: The lower bound of the tail, the candidate of least KS distance.
        n_tail: ``n``, the number of values ``≥ xmin``.
        ks_distance: The Kolmogorov-Smirnov distance between the tail and the fitted law.
    """

    alpha: float
    stderr: float
    xmin: float
    n_tail: int
    ks_distance: float

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


NO_FIT = PowerLawFit(float("nan"), float("nan"), float("nan"), 0, float("nan"))


def fit_power_law(values, *, min_tail: int = MIN_TAIL) -> PowerLawFit:
    """Fits a power law to the upper tail of positive values (Clauset, Shalizi & Newman 2009).

    For each candidate ``xmin`` (every distinct value leaving at least ``min_tail`` values at or
    above it) the exponent is the continuous maximum-likelihood estimate
    ``α = 1 + n / Σ_{x_i ≥ xmin} ln(x_i / xmin)``; the ``xmin`` chosen is the one whose tail is
    closest to its fitted law in Kolmogorov-Smirnov distance
    ``D = max_x |S(x) − (1 − (x / xmin)^(1−α))|`` (``S`` the empirical CDF of the tail, taken on
    both sides of each step). The first (largest tail) wins a tie.

    Args:
        values: Positive, finite values (eigenvalues), any shape.
        min_tail: Fewest values in a tail. Defaults to 10.

    Returns:
        A ``PowerLawFit``.

    Raises:
        ValueError: a value that is not positive and finite, fewer than ``min_tail`` values, or
            a ``min_tail`` below 2.

    References:
        Clauset, Shalizi & Newman, "Power-law distributions in empirical data", SIAM Review 51
        (2009), https://arxiv.org/abs/0706.1062.
    """
    min_tail = _checks.integer("min_tail", min_tail, minimum=2)
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size and not (np.all(np.isfinite(x)) and x[0] > 0):
        raise ValueError(
            f"Argument `values` must be positive and finite. Received: min={x[0]!r}, max={x[-1]!r}."
        )
    if x.size < min_tail:
        raise ValueError(
            f"Argument `values` must hold at least min_tail={min_tail} values. "
            f"Received: {x.size} values."
        )
    logs = np.log(x)
    suffix = np.cumsum(logs[::-1])[::-1]  # Σ_{j ≥ i} ln x_j
    _, first = np.unique(x, return_index=True)  # one candidate per distinct value
    best = NO_FIT
    for i in first[first <= x.size - min_tail]:
        n = x.size - i
        spread = suffix[i] - n * logs[i]
        if spread <= 0:
            continue
        alpha = 1.0 + n / spread
        cdf = 1.0 - np.exp((1.0 - alpha) * (logs[i:] - logs[i]))
        steps = np.arange(n + 1, dtype=np.float64) / n
        ks = max(np.max(steps[1:] - cdf), np.max(cdf - steps[:-1]))
        if not ks >= best.ks_distance:  # NaN at first: any fit wins
            best = PowerLawFit(float(alpha), float((alpha - 1) / np.sqrt(n)), float(x[i]), int(n),
                               float(ks))  # fmt: skip
    return best


# -- the matrices of a layer ---------------------------------------------------------------------


def conv_matrices(kernel: np.ndarray) -> np.ndarray:
    """The per-position matrices of a convolution kernel ``(k_1, ..., k_d, c_in, c_out)``:
    ``(k_1 ⋯ k_d, c_in, c_out)``, position ``(i, j, ...)`` in C order (``W[i, j, :, :]``)."""
    kernel = np.asarray(kernel)
    return kernel.reshape(-1, *kernel.shape[-2:])


def einsum_matrices(equation: str, kernel: np.ndarray) -> np.ndarray:
    """The matrices of an ``EinsumDense`` kernel, ``(n, rows, cols)``: rows are the kernel axes
    contracted with the input, cols those only in the output, one matrix per index of the axes
    in input, kernel and output alike."""
    kernel = np.asarray(kernel)
    inputs, _, output = equation.replace("...", "").replace(" ", "").partition("->")
    source, _, spec = inputs.partition(",")
    if len(spec) != kernel.ndim:
        raise ValueError(
            f"Argument `equation` must name the kernel's {kernel.ndim} axes. "
            f"Received: equation={equation!r}."
        )
    batch = [a for a, c in enumerate(spec) if c in source and c in output]
    rows = [a for a, c in enumerate(spec) if c in source and c not in output]
    cols = [a for a, c in enumerate(spec) if c not in source]
    shape = kernel.shape
    moved = np.transpose(kernel, batch + rows + cols)
    size = lambda axes: int(np.prod([shape[a] for a in axes], dtype=np.int64))  # noqa: E731
    return moved.reshape(size(batch), size(rows), size(cols))


def _attention_matrices(layer) -> list[tuple[Any, str, np.ndarray]]:
    """``(sublayer, kind, matrices)`` of a MultiHeadAttention's projections, per head."""
    import keras

    out = []
    for dense in (layer.query_dense, layer.key_dense, layer.value_dense):
        kernel = keras.ops.convert_to_numpy(dense.kernel)
        if kernel.ndim != 3:  # not (d, heads, key_dim): the generic rule
            out.append((dense, "einsum_dense", einsum_matrices(dense.equation, kernel)))
        else:
            out.append((dense, "attention_head", np.transpose(kernel, (1, 0, 2))))
    kernel = keras.ops.convert_to_numpy(layer.output_dense.kernel)  # (heads, value_dim, ...)
    out.append((layer.output_dense, "attention_head", kernel.reshape(*kernel.shape[:2], -1)))
    return out


def _conv_classes() -> tuple[type, ...]:
    import keras

    L = keras.layers
    return (L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)


def _layer_matrices(layer) -> tuple[str, np.ndarray] | None:
    """``(kind, matrices (n, N, M))`` of a layer with a matrix, None for any other layer."""
    import keras

    L = keras.layers
    numpy = keras.ops.convert_to_numpy
    if isinstance(layer, L.Embedding):
        return "embedding", numpy(layer.embeddings)[None]
    if isinstance(layer, L.EinsumDense):
        return "einsum_dense", einsum_matrices(layer.equation, numpy(layer.kernel))
    if isinstance(layer, L.Dense):
        return "dense", numpy(layer.kernel)[None]
    if isinstance(layer, _conv_classes()):
        return type(layer).__name__.lower(), conv_matrices(numpy(layer.kernel))
    return None


def _quantization(layer) -> str | None:
    """The quantization mode of ``layer`` (for an attention, of its projections), or None. A
    quantized kernel holds integer codes and scales, not the matrix: skipped."""
    import keras

    from sam import _compat

    subs = [layer]
    if isinstance(layer, keras.layers.MultiHeadAttention):
        subs += _compat.direct_sublayers(layer)
    modes = [getattr(sub, "quantization_mode", None) for sub in subs]
    return next((str(m) for m in modes if m), None)


def _own_weights(layer) -> list:
    """The weights a layer holds itself, not through its sublayers."""
    from sam import _compat

    inner = {id(v) for sub in _compat.direct_sublayers(layer) for v in sub.weights}
    return [v for v in layer.weights if id(v) not in inner]


# -- the results ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerSpectrum:
    """The spectrum of one layer's matrices (one, or one per conv position or head, pooled).

    Attributes:
        name: The layer's path (``model/dense_1``; ``.../query`` for an attention projection).
        kind: ``"dense"``, ``"embedding"``, ``"conv2d"`` (the class, lower case),
            ``"einsum_dense"`` or ``"attention_head"``.
        kernel_shape: The shape of the weight tensor.
        singular_values: ``(n_matrices, min(N, M))``, each row descending: the singular values
            of each ``N × M`` matrix.
        matrix_shape: ``(N, M)`` of each matrix.
        fit: The power-law fit of the pooled ESD (``NO_FIT``, NaN, with too few eigenvalues).
    """

    name: str
    kind: str
    kernel_shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    singular_values: np.ndarray
    fit: PowerLawFit

    @property
    def n_matrices(self) -> int:
        return int(self.singular_values.shape[0])

    @property
    def eigenvalues(self) -> np.ndarray:
        """The ESD: the eigenvalues σ² of every ``WᵀW``, pooled, descending."""
        return np.sort(self.singular_values.ravel() ** 2)[::-1]

    @property
    def spectral_norm(self) -> float:
        """``max σ``, ``‖W‖_2`` (over the positions or heads: not a convolution's operator
        norm)."""
        return float(self.singular_values.max())

    @property
    def frobenius_norm(self) -> float:
        return float(np.sqrt(np.sum(self.singular_values**2)))

    @property
    def stable_rank(self) -> float:
        """``‖W‖_F² / ‖W‖_2²``, ``Σλ / λ_max`` over the pooled ESD (WeightWatcher's)."""
        top = self.spectral_norm
        return float(self.frobenius_norm**2 / top**2) if top > 0 else float("nan")

    def row(self) -> dict[str, Any]:
        """The table row: shapes, norms and the fit, without the singular values."""
        return {
            "name": self.name,
            "kind": self.kind,
            "matrix_shape": list(self.matrix_shape),
            "n_matrices": self.n_matrices,
            "spectral_norm": self.spectral_norm,
            "lambda_max": self.spectral_norm**2,
            "frobenius_norm": self.frobenius_norm,
            "stable_rank": self.stable_rank,
            "alpha": self.fit.alpha,
            "alpha_stderr": self.fit.stderr,
            "xmin": self.fit.xmin,
            "n_tail": self.fit.n_tail,
            "ks_distance": self.fit.ks_distance,
        }

    def as_dict(self) -> dict[str, Any]:
        """The row (None for NaN, valid JSON), the kernel shape and the singular values
        (nested lists)."""
        row = {
            k: None if isinstance(v, float) and np.isnan(v) else v for k, v in self.row().items()
        }
        return {
            **row,
            "kernel_shape": list(self.kernel_shape),
            "singular_values": self.singular_values.tolist(),
        }


@dataclasses.dataclass(frozen=True)
class WeightSpectra:
    """The result of ``weight_spectra``: one ``LayerSpectrum`` per layer with a matrix.

    Attributes:
        layers: The spectra, in the order of ``model``'s layers.
        skipped: ``{"name", "class", "reason"}`` of each layer with weights of its own but no
            matrix this function knows (``"no weight matrix"``), or a quantized kernel
            (``"int8-quantized"``, ...).
        min_tail: The fewest eigenvalues a tail was fitted to.
    """

    layers: tuple[LayerSpectrum, ...]
    skipped: tuple[dict[str, str], ...]
    min_tail: int

    def __getitem__(self, name: str) -> LayerSpectrum:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"No layer named {name!r}; the layers are {[x.name for x in self.layers]}.")

    @property
    def alphas(self) -> dict[str, float]:
        return {layer.name: layer.fit.alpha for layer in self.layers}

    def rows(self) -> list[dict[str, Any]]:
        """One table row per layer (``LayerSpectrum.row``)."""
        return [layer.row() for layer in self.layers]

    def as_dict(self) -> dict[str, Any]:
        """JSON-serializable: every layer's ``as_dict()`` (None where α was not fitted), the
        skipped layers and ``min_tail``."""
        return {
            "layers": [layer.as_dict() for layer in self.layers],
            "skipped": [dict(s) for s in self.skipped],
            "min_tail": self.min_tail,
        }


# -- the analysis --------------------------------------------------------------------------------


def _spectrum(name: str, kind: str, kernel_shape, matrices: np.ndarray, min_tail: int):
    """The ``LayerSpectrum`` of a stack of matrices (float64 SVD)."""
    eps = np.finfo(matrices.dtype).eps if matrices.dtype.kind == "f" else np.finfo(float).eps
    sv = np.linalg.svd(matrices.astype(np.float64), compute_uv=False)  # (n, min(N, M)) desc.
    tol = sv.max(initial=0.0) * max(matrices.shape[1:]) * eps
    kept = sv[sv > tol] ** 2
    fit = fit_power_law(kept, min_tail=min_tail) if kept.size >= min_tail else NO_FIT
    if kept.size < min_tail:
        logger.info("%s: %d nonzero eigenvalues, fewer than min_tail=%d: no α.", name,
                    kept.size, min_tail)  # fmt: skip
    return LayerSpectrum(name, kind, tuple(int(d) for d in kernel_shape),
                         (int(matrices.shape[1]), int(matrices.shape[2])), sv, fit)  # fmt: skip


def _path(layer, variable) -> str:
    """The layer's path, from its weight's (``model/dense/kernel`` -> ``model/dense``)."""
    path = getattr(variable, "path", None)
    return str(path).rpartition("/")[0] if path and "/" in str(path) else layer.name


def _check_model(model):
    import keras

    if not isinstance(model, keras.layers.Layer):
        raise ValueError(
            "Argument `model` must be a Keras model or layer. "
            f"Received: model={type(model).__name__}."
        )
    if not model.built or not model.weights:
        raise ValueError(
            f"Argument `model` must be built and hold weights. Received: model={model.name!r} "
            f"with {len(model.weights)} weights."
        )
    return model


def weight_spectra(model, *, min_tail: int = MIN_TAIL) -> WeightSpectra:
    """The spectrum of every weight matrix of a model: no data, no loss, only the weights.

    For each layer with a matrix (the rule is in the module's docstring: Dense, Embedding,
    ConvND per spatial position as WeightWatcher's "conv2d slices", MultiHeadAttention per
    head, EinsumDense by its equation): the singular values, the ESD (eigenvalues σ² of
    ``WᵀW``, pooled over the positions or heads), the power-law exponent α of its tail with
    ``xmin`` chosen by the least Kolmogorov-Smirnov distance (``fit_power_law``), its standard
    error ``(α − 1)/√n``, the stable rank ``‖W‖_F²/‖W‖_2²`` and the spectral norm ``‖W‖_2``.

    Heavy-Tailed Self-Regularization reads α as a sign of training: α between about 2 and 6
    for well-trained layers, larger for layers that learned little, below 2 for over-fitted
    ones (Martin & Mahoney 2021). Those thresholds are empirical; compare models layer by
    layer rather than against them.

    Args:
        model: A built Keras model (or layer).
        min_tail: Fewest eigenvalues a tail is fitted to; a layer with fewer nonzero
            eigenvalues gets α = NaN. Defaults to 10.

    Returns:
        A ``WeightSpectra``: ``layers`` (``LayerSpectrum`` each), ``skipped`` (layers holding
        weights but no matrix: normalization, depthwise/separable convolutions, recurrent
        cells, custom layers), ``rows()`` and ``as_dict()``.

    Raises:
        ValueError: ``model`` is not a Keras layer, is not built, or ``min_tail`` is below 2.

    Example:
        >>> spectra = landscape.weight_spectra(model)
        >>> for row in spectra.rows():
        ...     print(row["name"], row["alpha"], row["stable_rank"])

    References:
        Martin & Mahoney, "Implicit self-regularization in deep neural networks", JMLR 22
        (2021), https://arxiv.org/abs/1810.01075; Clauset, Shalizi & Newman (2009),
        https://arxiv.org/abs/0706.1062.
    """
    import keras

    from sam import _compat

    min_tail = _checks.integer("min_tail", min_tail, minimum=2)
    model = _check_model(model)
    layers, skipped, done = [], [], set()
    for layer in _compat.all_layers(model):
        if id(layer) in done:
            continue
        mode = _quantization(layer)
        if mode is not None:  # its kernel variable holds codes, not the weights it computes with
            skipped.append({"name": layer.name, "class": type(layer).__name__,
                            "reason": f"{mode}-quantized"})  # fmt: skip
            done.update(id(sub) for sub in _compat.direct_sublayers(layer))
            continue
        if isinstance(layer, keras.layers.MultiHeadAttention):
            for dense, kind, matrices in _attention_matrices(layer):
                done.add(id(dense))
                name = _path(dense, dense.kernel)
                layers.append(_spectrum(name, kind, dense.kernel.shape, matrices, min_tail))
            continue
        found = _layer_matrices(layer)
        if found is not None:
            variable = layer.embeddings if found[0] == "embedding" else layer.kernel
            name = _path(layer, variable)
            layers.append(_spectrum(name, found[0], variable.shape, found[1], min_tail))
        elif _own_weights(layer):
            skipped.append({"name": layer.name, "class": type(layer).__name__,
                            "reason": "no weight matrix"})  # fmt: skip
    if skipped:
        shown = (f"{s['name']} ({s['class']}, {s['reason']})" for s in skipped)
        logger.info("weight_spectra skipped: %s", ", ".join(shown))
    return WeightSpectra(tuple(layers), tuple(skipped), min_tail)
