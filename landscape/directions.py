"""Directions in weight space: random filter-normalized, interpolation and PCA (trajectory) ones.

A ``Direction`` holds one array per model variable, keyed by ``variable.path``. Random directions
follow Li et al. 2018: draw d ~ N(0, I), then rescale every *filter* of d to the Frobenius norm of
the same filter of the weights w, so that a step α·d means the same relative change in every layer.

Keras stores kernels as ``(..., in, out)``, so a filter (output unit) is indexed by the **last**
axis of Dense and ConvND kernels, by axis −2 of ConvNDTranspose kernels, by the last two axes
(input channel × multiplier) of depthwise kernels and by the first axis (a row) of an Embedding.
Porting PyTorch's "dim 0" rule would mix filters; ``filter_axes`` keeps that knowledge in one place.

References:
    Li et al., Visualizing the Loss Landscape of Neural Nets, https://arxiv.org/abs/1712.09913
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import keras
import numpy as np

logger = logging.getLogger("landscape")

Norm = Literal["filter", "layer", "weight", "none"]
Ignore = Literal["biasbn", "none"]
Include = Literal["trainable", "all"]

NORMS = ("filter", "layer", "weight", "none")
IGNORES = ("biasbn", "none")
INCLUDES = ("trainable", "all")
NORM_EPS = 1e-10  # loss-landscape's guard against a zero-norm random filter

_TRANSPOSE = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value is None and "none" in choices:
        return "none"
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {tuple(choices)}.")
    return value


def fingerprint_arrays(arrays: Iterable[np.ndarray]) -> str:
    """A SHA-256 hex digest of the shapes, dtypes and bytes of ``arrays`` in order."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def float_variables(model: keras.Model, include: Include = "all") -> list:
    """The model's floating-point variables (``"trainable"`` or ``"all"``), in model order.

    Integer state such as a dropout layer's seed is never part of a direction.
    """
    include = _check_choice("include", include, INCLUDES)
    variables = model.trainable_variables if include == "trainable" else model.variables
    return [v for v in variables if np.dtype(keras.backend.standardize_dtype(v.dtype)).kind == "f"]


def variable_owners(model: keras.Model) -> dict[int, keras.layers.Layer]:
    """Map ``id(variable)`` to the innermost layer that owns it."""
    owners: dict[int, keras.layers.Layer] = {}
    # _flatten_layers lists every layer before its sub-layers, so the innermost owner wins.
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for v in layer.weights:
            owners[id(v)] = layer
    return owners


def filter_axes(layer: keras.layers.Layer | None, variable) -> tuple[int, ...] | None:
    """The axes of ``variable`` that index its filters (output units), or None for one filter.

    Args:
        layer: The layer that owns the variable (None if unknown).
        variable: A Keras variable (or anything with ``.shape`` and ``.name``).

    Returns:
        Non-negative axes: ``(ndim-1,)`` for Dense/ConvND kernels and unknown layers,
        ``(ndim-2,)`` for ConvNDTranspose kernels, ``(ndim-2, ndim-1)`` for depthwise kernels
        (input channel × depth multiplier), ``(0,)`` for Embedding tables; None for tensors with
        ndim ≤ 1 (biases, normalization parameters, moving statistics).
    """
    ndim = len(variable.shape)
    if ndim <= 1:
        return None
    name = variable.name.split("/")[-1]
    if isinstance(layer, _TRANSPOSE) and name == "kernel":
        return (ndim - 2,)
    if (isinstance(layer, _DEPTHWISE) and name == "kernel") or (
        isinstance(layer, _SEPARABLE) and name == "depthwise_kernel"
    ):
        return (ndim - 2, ndim - 1)
    if isinstance(layer, keras.layers.Embedding) and name == "embeddings":
        return (0,)
    if not isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense, *_SEPARABLE)) and not (
        isinstance(layer, keras.layers.Conv1D | keras.layers.Conv2D | keras.layers.Conv3D)
    ):
        logger.debug(
            "Variable %s of layer %s: filters assumed along the last axis.",
            variable.path,
            type(layer).__name__,
        )
    return (ndim - 1,)


def _group_norms(a: np.ndarray, keep: tuple[int, ...] | None) -> np.ndarray:
    """Frobenius norm of each filter of ``a``, broadcastable to ``a``."""
    if keep is None:
        return np.sqrt(np.sum(a * a, keepdims=True))
    reduce = tuple(i for i in range(a.ndim) if i not in keep)
    return np.sqrt(np.sum(a * a, axis=reduce, keepdims=True))


def normalize_array(
    d: np.ndarray,
    w: np.ndarray,
    *,
    norm: Norm,
    keep: tuple[int, ...] | None,
) -> np.ndarray:
    """Rescale one direction tensor ``d`` against its weight tensor ``w`` (float64 maths)."""
    d = np.asarray(d, np.float64)
    w = np.asarray(w, np.float64)
    if norm == "filter":
        return d * (_group_norms(w, keep) / (_group_norms(d, keep) + NORM_EPS))
    if norm == "layer":
        return d * (_group_norms(w, None) / (_group_norms(d, None) + NORM_EPS))
    if norm == "weight":
        return d * w
    return d


@dataclass(frozen=True, eq=False)
class Direction:
    """A direction in weight space: one array per variable, keyed by ``variable.path``.

    Supports ``d1 + d2``, ``d1 - d2``, ``a * d``, ``d / a``, ``-d``, ``d1.dot(d2)`` and
    ``d.norm()`` (both in float64). Variables of the model that a direction does not name are
    treated as zero (e.g. BatchNorm moving statistics of an ``include="trainable"`` direction).

    Attributes:
        arrays: ``{variable.path: array}`` in model order.
        metadata: How it was made (``kind``, ``norm``, ``ignore``, ``seed``, ``include``).
    """

    arrays: dict[str, np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def paths(self) -> list[str]:
        return list(self.arrays)

    def _binary(self, other: Direction, op) -> Direction:
        if not isinstance(other, Direction):
            return NotImplemented
        if list(other.arrays) != list(self.arrays):
            raise ValueError("Directions cover different variables; they cannot be combined.")
        return Direction({k: op(a, other.arrays[k]) for k, a in self.arrays.items()})

    def __add__(self, other: Direction) -> Direction:
        return self._binary(other, np.add)

    def __sub__(self, other: Direction) -> Direction:
        return self._binary(other, np.subtract)

    def __mul__(self, scale: float) -> Direction:
        if not np.isscalar(scale):
            return NotImplemented
        return Direction({k: (a * scale).astype(a.dtype) for k, a in self.arrays.items()})

    __rmul__ = __mul__

    def __truediv__(self, scale: float) -> Direction:
        return self * (1.0 / scale)

    def __neg__(self) -> Direction:
        return self * -1.0

    def dot(self, other: Direction) -> float:
        """Inner product ⟨self, other⟩ over all shared variables, in float64."""
        total = 0.0
        for k, a in self.arrays.items():
            if k in other.arrays:
                total += float(np.vdot(a.astype(np.float64), other.arrays[k].astype(np.float64)))
        return total

    def norm(self) -> float:
        """Euclidean norm over all variables, in float64."""
        return float(np.sqrt(self.dot(self)))

    def fingerprint(self) -> str:
        """SHA-256 of the arrays (shapes, dtypes, bytes; in order, paths excluded)."""
        return fingerprint_arrays(self.arrays.values())

    def aligned(self, variables: Sequence) -> list[np.ndarray]:
        """Arrays aligned to ``variables`` by ``variable.path`` (zeros where not named).

        Raises:
            ValueError: if the direction names a path that is not among ``variables``, or a
                shape differs.
        """
        by_path = {v.path: v for v in variables}
        unknown = [p for p in self.arrays if p not in by_path]
        if unknown:
            raise ValueError(
                f"Direction names variables the model does not have: {unknown[:3]}; "
                "use Direction.rebind(model) for a rebuilt model with other layer names."
            )
        out = []
        for v in variables:
            a = self.arrays.get(v.path)
            if a is None:
                out.append(np.zeros(tuple(v.shape), keras.backend.standardize_dtype(v.dtype)))
                continue
            if tuple(a.shape) != tuple(v.shape):
                raise ValueError(
                    f"Direction array for {v.path} has shape {a.shape}; the variable has "
                    f"shape {tuple(v.shape)}."
                )
            out.append(a)
        return out

    def rebind(self, model: keras.Model) -> Direction:
        """The same arrays keyed by the paths of ``model``'s variables, matched by position.

        Useful when the model was rebuilt with different layer names (e.g. ``dense_1``).
        """
        variables = [v for v in float_variables(model, "all")]
        shapes = [tuple(a.shape) for a in self.arrays.values()]
        for start in (variables, float_variables(model, "trainable")):
            if [tuple(v.shape) for v in start] == shapes:
                return Direction(
                    {v.path: a for v, a in zip(start, self.arrays.values())}, dict(self.metadata)
                )
        raise ValueError("Direction and model variables differ in number or shapes.")

    def save(self, path: str, *, name: str = "direction") -> None:
        """Save to an HDF5 file (group ``name``); see ``landscape.io``."""
        from landscape import io

        io.save_directions(path, {name: self})

    @classmethod
    def load(cls, path: str, *, name: str = "direction") -> Direction:
        """Load a direction saved by ``save`` (or from a surface file's ``directions/`` group)."""
        from landscape import io

        return io.load_directions(path)[name]


def _weights(variables: Sequence) -> list[np.ndarray]:
    return [np.asarray(keras.ops.convert_to_numpy(v.value)) for v in variables]


def orthogonalize(d: Direction, against: Direction) -> Direction:
    """Gram–Schmidt: ``d − (⟨d, u⟩ / ⟨u, u⟩) u`` so that the result is orthogonal to ``against``."""
    uu = against.dot(against)
    if uu == 0.0:
        return d
    coef = d.dot(against) / uu
    arrays = {}
    for k, a in d.arrays.items():
        u = against.arrays.get(k)
        arrays[k] = a if u is None else (a - coef * u.astype(np.float64)).astype(a.dtype)
    return Direction(arrays, {**d.metadata, "orthogonal_to": against.fingerprint()})


def random_direction(
    model: keras.Model,
    *,
    norm: Norm = "filter",
    ignore: Ignore | None = "biasbn",
    seed: int | None = None,
    include: Include = "trainable",
    orthogonal_to: Direction | None = None,
) -> Direction:
    """A Gaussian random direction, normalized against the model's weights.

    Args:
        model: A built Keras model; its current weights are w.
        norm: ``"filter"`` (each filter of d gets the norm of that filter of w), ``"layer"``
            (each tensor of d gets the norm of its tensor of w), ``"weight"`` (d ← d ⊙ w) or
            ``"none"``. Defaults to ``"filter"``.
        ignore: ``"biasbn"`` zeroes tensors with ndim ≤ 1 (biases, BatchNorm/LayerNorm γ and β,
            moving statistics); ``"none"`` (or None) normalizes each such tensor as a single
            filter. Defaults to ``"biasbn"``.
        seed: Seed of ``numpy.random.default_rng``; equal seeds give identical directions.
            Defaults to None (fresh entropy).
        include: ``"trainable"`` moves trainable variables only; ``"all"`` also moves
            non-trainable floating-point state such as BatchNorm moving statistics
            (loss-landscape's "states"). Defaults to ``"trainable"``.
        orthogonal_to: If given, the result is orthogonalized against this direction after
            normalization (which then holds only approximately). Defaults to None.

    Returns:
        A ``Direction`` in the dtypes of the variables.

    Example:
        >>> d1 = random_direction(model, seed=0)
        >>> d2 = random_direction(model, seed=1, orthogonal_to=d1)
    """
    norm = _check_choice("norm", norm, NORMS)
    ignore = _check_choice("ignore", ignore, IGNORES)
    include = _check_choice("include", include, INCLUDES)
    variables = float_variables(model, include)
    if not variables:
        raise ValueError("Argument `model` has no floating-point variables; is it built?")
    owners = variable_owners(model)
    rng = np.random.default_rng(seed)
    arrays = {}
    for v, w in zip(variables, _weights(variables)):
        d = rng.standard_normal(w.shape)
        if ignore == "biasbn" and w.ndim <= 1:
            d = np.zeros_like(d)
        else:
            d = normalize_array(d, w, norm=norm, keep=filter_axes(owners.get(id(v)), v))
        arrays[v.path] = d.astype(w.dtype)
    out = Direction(
        arrays,
        {"kind": "random", "norm": norm, "ignore": ignore, "seed": seed, "include": include},
    )
    if orthogonal_to is not None:
        out = orthogonalize(out, orthogonal_to)
    return out


def interpolation_direction(
    model_a: keras.Model, model_b: keras.Model, *, include: Include = "all"
) -> Direction:
    """d = w_b − w_a, keyed by ``model_a``'s paths: α = 0 is model a, α = 1 is model b.

    Variables are matched by position (two separately built models often differ in layer
    names) and must agree in shape.

    Args:
        model_a: The model at α = 0; evaluate the direction with an ``Objective`` of this model.
        model_b: The model at α = 1, of the same architecture.
        include: ``"all"`` (default) also interpolates BatchNorm moving statistics;
            ``"trainable"`` only trainable weights. Defaults to ``"all"``.

    Returns:
        A ``Direction`` with ``metadata["kind"] == "interpolation"``.
    """
    include = _check_choice("include", include, INCLUDES)
    va, vb = float_variables(model_a, include), float_variables(model_b, include)
    if [tuple(v.shape) for v in va] != [tuple(v.shape) for v in vb]:
        raise ValueError("Arguments `model_a` and `model_b` differ in variables or shapes.")
    arrays = {
        v.path: (b.astype(np.float64) - a.astype(np.float64)).astype(a.dtype)
        for v, a, b in zip(va, _weights(va), _weights(vb))
    }
    return Direction(arrays, {"kind": "interpolation", "include": include})


@dataclass(frozen=True)
class PCAResult:
    """Top principal directions of a training trajectory.

    Attributes:
        directions: The two unit-norm principal directions (``Direction``), keyed by the final
            model's paths.
        explained_variance_ratio: Fraction of the variance of the trajectory each explains.
        coordinates: ``(n_checkpoints, 2)`` projections of ``w_t − w_final`` on the directions;
            the final model sits at (0, 0).
    """

    directions: tuple[Direction, Direction]
    explained_variance_ratio: np.ndarray
    coordinates: np.ndarray


def _checkpoint_arrays(
    checkpoint: keras.Model | Mapping[str, np.ndarray] | Sequence[np.ndarray],
    final: keras.Model,
    variables: list,
) -> list[np.ndarray]:
    if isinstance(checkpoint, keras.Model):
        other = float_variables(checkpoint, "all")
        by_pos = dict(zip([id(v) for v in float_variables(final, "all")], _weights(other)))
        arrays = [by_pos[id(v)] for v in variables]
    elif isinstance(checkpoint, Direction):
        arrays = checkpoint.aligned(variables)
    elif isinstance(checkpoint, Mapping):
        arrays = [np.asarray(checkpoint[v.path]) for v in variables]
    else:  # a list as returned by final.get_weights(), aligned with final.weights
        ids = {id(v): a for v, a in zip(final.weights, checkpoint)}
        arrays = [np.asarray(ids[id(v)]) for v in variables]
    for v, a in zip(variables, arrays):
        if tuple(a.shape) != tuple(v.shape):
            raise ValueError(f"A checkpoint has shape {a.shape} for {v.path}; expected {v.shape}.")
    return arrays


def pca_directions(
    checkpoints: Sequence[keras.Model | Mapping[str, np.ndarray] | Sequence[np.ndarray]],
    final: keras.Model,
    *,
    include: Include = "trainable",
    ignore: Ignore | None = "biasbn",
    center: bool = True,
) -> PCAResult:
    """Top-2 principal directions of the trajectory ``w_t − w_final`` (loss-landscape's recipe).

    Args:
        checkpoints: The weights along training: Keras models of the same architecture, dicts
            ``{variable.path: array}``, or lists as returned by ``final.get_weights()``.
        final: The final model; the plane passes through its weights.
        include: Variables to use (``"trainable"`` or ``"all"``). Defaults to ``"trainable"``.
        ignore: ``"biasbn"`` leaves tensors with ndim ≤ 1 out of the PCA (zero in the
            directions). Defaults to ``"biasbn"``.
        center: Subtract the mean of the differences before the SVD, as sklearn's PCA (used by
            loss-landscape) does. Defaults to True.

    Returns:
        A ``PCAResult`` with the directions, explained variance ratios and the checkpoints'
        coordinates in that plane.
    """
    include = _check_choice("include", include, INCLUDES)
    ignore = _check_choice("ignore", ignore, IGNORES)
    if len(checkpoints) < 2:
        raise ValueError(
            f"Argument `checkpoints` needs at least 2 entries. Received: {len(checkpoints)}."
        )
    variables = float_variables(final, include)
    used = [not (ignore == "biasbn" and len(v.shape) <= 1) for v in variables]
    w_final = _weights(variables)

    def flat(arrays):
        return np.concatenate(
            [
                (a.astype(np.float64) - w.astype(np.float64)).ravel()
                for a, w, u in zip(arrays, w_final, used)
                if u
            ]
        )

    m = np.stack([flat(_checkpoint_arrays(c, final, variables)) for c in checkpoints])
    centered = m - m.mean(axis=0) if center else m
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    var = s**2
    ratio = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    coords = m @ vt[:2].T
    dirs = []
    for i in range(2):
        comp = vt[i] if i < vt.shape[0] else np.zeros(m.shape[1])
        arrays, offset = {}, 0
        for v, w, u in zip(variables, w_final, used):
            if u:
                arrays[v.path] = comp[offset : offset + w.size].reshape(w.shape).astype(w.dtype)
                offset += w.size
            else:
                arrays[v.path] = np.zeros_like(w)
        dirs.append(
            Direction(arrays, {"kind": "pca", "component": i, "include": include, "ignore": ignore})
        )
    return PCAResult(tuple(dirs), np.asarray(ratio, np.float64), coords)
