"""Mode connectivity: a low-loss curve between two models' weights (Garipov et al. 2018).

``connect(model_a, model_b, data)`` fits a curve φ(t), t ∈ [0, 1], from the weights w_a of
``model_a`` (t = 0) to the weights w_b of ``model_b`` (t = 1) through one trainable *bend* θ:

* ``"bezier"``: the quadratic Bézier curve φ(t) = (1−t)² w_a + 2t(1−t) θ + t² w_b;
* ``"polychain"``: the polygonal chain w_a → θ → w_b, φ(t) = (1−2t) w_a + 2t θ for t ≤ ½ and
  (2−2t) θ + (2t−1) w_b for t ≥ ½.

θ starts at the midpoint (w_a + w_b)/2 (so an untrained Bézier curve *is* the straight line) and
is trained with a Keras optimizer to minimize the expected loss E_{t~U(0,1)} L(φ(t)): every
minibatch draws one t and takes one optimizer step on θ alone, with the model run in training
mode at φ(t) (BatchNorm normalizes with the batch's statistics, dropout is on), as in the paper.
No layer is rewritten: the model is called statelessly (``Model.stateless_call`` and
``Model.stateless_compute_loss``, the model's compiled loss with its weight penalties at φ(t))
with the weights supplied as values, so any Keras model qualifies, and neither model's variables
(weights, BatchNorm statistics, optimizer or metric state) are ever assigned.

The step runs on every Keras backend through ``sam._backend``: θ's gradient by the backend's
autodiff (``value_and_grad``) and one compiled step per minibatch (``compile_step``:
``tf.function``, ``jax.jit`` over θ's and the optimizer's variables, PyTorch eagerly). Array
data are shuffled on the host at every epoch (NumPy, seeded by ``seed``) and fed in NumPy
batches; a ``tf.data.Dataset`` is read as it comes, on any backend where TensorFlow is installed.

Then the loss and metrics are evaluated along the straight line (1−t) w_a + t w_b and along the
curve at a grid of t by the one evaluator, ``landscape.Objective`` (inference mode; the whole
data set, float64 sums), on the training data and on ``test_data`` if given. The barrier of a
path is max_t L(t) − (L(0) + L(1))/2 over the grid. A point is an Objective basis point, as a
surface point is: w_a + c_θ(t)(θ − w_a) + c_b(t)(w_b − w_a) (c_θ = 0, c_b = t on the straight
line), the two differences held as tensors in the weights' dtypes and added in the compiled
pass, so no point costs host arithmetic over all the weights.

BatchNorm statistics along a path
---------------------------------
The moving statistics of the two models belong to their own weights; at φ(t) they are
recomputed, as the paper does before evaluating each point (its ``update_bn``): one pass over
the training data in ``batch_size`` batches, in order, with the model called statelessly in
training mode at φ(t); the statistics each trainable ``keras.layers.BatchNormalization`` layer
computes on each batch (mean and biased variance, as Keras normalizes with them) are averaged
over the batches, weighted by batch size, and become the layer's moving mean and variance for
that point. The batch statistics are read from what the stateless call returns: with the moving
statistics supplied as zeros, Keras's update m·0 + (1−m)·s returns (1−m)·s, divided here by
(1−m) (the layer's ``momentum`` m < 1). Every layer before a BatchNorm layer runs in training
mode in that pass (earlier BatchNorm layers use their batch statistics, dropout is on), as in
PyTorch's ``train()`` mode. The recomputation is done at every evaluated point of both paths,
endpoints included, so the losses at t = 0 and 1 of a BatchNorm model are those of w_a and w_b
with recomputed statistics, not with the models' own moving averages. The statistics pass runs
in the model's own compute dtype (a bfloat16 model's statistics carry bfloat16 rounding), the
evaluation in the Objective's precision.

With ``batchnorm=False`` nothing is recomputed: each end is evaluated with its own model's
moving statistics (t = 0 with ``model_a``'s, t = 1 with ``model_b``'s, so the ends' values are
``model_a.evaluate``'s and ``model_b.evaluate``'s in the Objective's precision: a bfloat16 or
mixed-precision model is evaluated in float32 there, and its ends differed from its own
``evaluate`` by 3e-6 to 5e-4 relative), and the point at t of either path with the
statistics interpolated linearly, (1 − t)·s_a + t·s_b for every moving mean and variance, as
loss-landscape interpolates a model's whole state. On the curve this is also its own
parametrization applied to the statistics with the bend's at their midpoint: c_a(t) s_a +
c_θ(t) (s_a + s_b)/2 + c_b(t) s_b = (1 − t) s_a + t s_b for both curves. A point (x, y) of
``connection_plane`` takes the statistics at t = x / ‖w_b − w_a‖ clipped to [0, 1] (its
position along w_a → w_b).

Departures from the paper
-------------------------
* The curve is trained for ``epochs`` passes with the given optimizer (default SGD, learning
  rate 0.01, momentum 0.9, constant); the paper trains as long as the endpoints (600 epochs on
  CIFAR, learning rate 0.015 with a step-down schedule) with weight decay 5e-4 on φ(t). Here
  the only penalty is the model's own weight regularizers (evaluated at φ(t)); pass an optimizer
  with ``weight_decay`` to decay θ itself.
* The averaged BatchNorm variance is the mean of the biased per-batch variances (Keras's
  normalization), where PyTorch's running variance averages the unbiased ones (factor
  n/(n−1) per batch); batches are weighted by size (PyTorch's cumulative average weighs each
  batch equally, the last partial one included).
* Only Bézier curves with one bend and three-point polygonal chains are offered (the paper
  also uses them; its code allows more bends).

Reference:
    Garipov, Izmailov, Podoprikhin, Vetrov, Wilson. Loss Surfaces, Mode Connectivity, and Fast
    Ensembling of DNNs. NeurIPS 2018. https://arxiv.org/abs/1802.10026
"""

from __future__ import annotations

import inspect
import logging
import numbers
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import keras
import numpy as np

from landscape import _checks, _model_checks
from landscape._forms import unpack
from landscape._progress import finish, progbar
from landscape.directions import Direction, float_variables, storage_dtype
from landscape.objective import _SIGNIFICAND_BITS, Basis, Objective
from landscape.surface import Surface
from sam import _compat
from sam._backend import adapter

logger = logging.getLogger("landscape")

Curve = Literal["bezier", "polychain"]
CURVES = _checks.options(Curve)
PATHS = ("linear", "curve")
DEFAULT_POINTS = 21  # t grid of the evaluation: 0, 0.05, ..., 1
DEFAULT_LEARNING_RATE = 0.01
DEFAULT_MOMENTUM = 0.9
PLANE_MARGIN = 0.2  # the plane's grid extends this fraction of ‖w_b − w_a‖ beyond the points
CURVE_DRAW_POINTS = 101  # points of the curve's trace in the plane


# ------------------------------------------------------------------------------ the curve
def curve_coefficients(t, curve: Curve = "bezier") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights (c_a, c_θ, c_b) of w_a, θ and w_b in φ(t) = c_a w_a + c_θ θ + c_b w_b.

    Args:
        t: A number or array of numbers in [0, 1].
        curve: ``"bezier"`` or ``"polychain"`` (see the module docstring). Defaults to
            ``"bezier"``.

    Returns:
        Three float64 arrays of the shape of ``t``; they sum to 1.

    Raises:
        ValueError: an unknown ``curve``, or ``t`` outside [0, 1].
    """
    curve = _checks.choice("curve", curve, Curve)
    t = _check_t(t)
    if curve == "bezier":
        return (1 - t) ** 2, 2 * t * (1 - t), t**2
    first = t <= 0.5
    return (
        np.where(first, 1 - 2 * t, 0.0),
        np.where(first, 2 * t, 2 - 2 * t),
        np.where(first, 0.0, 2 * t - 1),
    )


def _check_t(t) -> np.ndarray:
    try:
        arr = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"Argument `t` must be numbers in [0, 1]. Received: t={t!r}.") from None
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr > 1):
        raise ValueError(f"Argument `t` must be numbers in [0, 1]. Received: t={t!r}.")
    return arr


def curve_weights(
    w_a: Sequence[np.ndarray],
    bend: Sequence[np.ndarray],
    w_b: Sequence[np.ndarray],
    t: float,
    *,
    curve: Curve = "bezier",
) -> list[np.ndarray]:
    """φ(t) for weights given as aligned lists of arrays (float64).

    Args:
        w_a: The arrays at t = 0.
        bend: θ, aligned with ``w_a``.
        w_b: The arrays at t = 1, aligned with ``w_a``.
        t: A number in [0, 1].
        curve: ``"bezier"`` or ``"polychain"``. Defaults to ``"bezier"``.

    Returns:
        The float64 arrays c_a w_a + c_θ θ + c_b w_b.
    """
    ca, cm, cb = (float(c) for c in curve_coefficients(t, curve))
    return [
        ca * np.asarray(a, np.float64)
        + cm * np.asarray(m, np.float64)
        + cb * np.asarray(b, np.float64)
        for a, m, b in zip(w_a, bend, w_b)
    ]


def barrier(values) -> float:
    """max over the path minus the mean of its two ends: ``max(v) − (v[0] + v[-1]) / 2``.

    Args:
        values: The metric along a path, ordered by t from t = 0 to t = 1 (NaN-free).

    Raises:
        ValueError: fewer than two values, or a non-finite value.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size < 2 or not np.all(np.isfinite(v)):
        raise ValueError(
            f"Argument `values` must hold at least two finite numbers. Received: values={v!r}."
        )
    return float(v.max() - (v[0] + v[-1]) / 2)


# ----------------------------------------------------------------------------- the result
@dataclass(frozen=True)
class ConnectResult:
    """What ``connect`` measured.

    Attributes:
        kind: ``"bezier"`` or ``"polychain"``.
        t: The evaluated t, float64 of shape ``(m,)``, increasing, from 0 to 1.
        linear: The straight line's values at ``t``: ``{"train_loss": (m,), "train_acc": ...,
            "test_loss": ..., "test_acc": ...}`` (``"<split>_<metric>"`` for the Objective's
            metric names; test entries only with ``test_data``).
        curve: The fitted curve's values at ``t``, with the same keys.
        linear_barrier: ``barrier(linear["train_loss"])``: max_t L − (L(0) + L(1))/2, in loss
            units.
        curve_barrier: ``barrier(curve["train_loss"])``.
        bend: θ as a ``Direction`` of absolute weights keyed by ``model_a``'s trainable
            variable paths (metadata ``kind="bend"``).
        history: ``{"loss": [...]}``: the mean training loss along the curve in each epoch
            (each minibatch at its own t), in loss units; empty with ``epochs=0``.
        steps: The optimizer steps taken on θ.
        batchnorm: Whether BatchNorm statistics were recomputed at every point (False: the
            two models' own, interpolated linearly in t between them).
        segment_norm: ‖w_b − w_a‖ over the trainable weights (L2, float64).
    """

    kind: str
    t: np.ndarray
    linear: dict[str, np.ndarray]
    curve: dict[str, np.ndarray]
    linear_barrier: float
    curve_barrier: float
    bend: Direction
    history: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0
    batchnorm: bool = False
    segment_norm: float = 0.0

    def barrier(self, path: str = "curve", metric: str = "train_loss") -> float:
        """The barrier of ``metric`` along ``path`` (``"linear"`` or ``"curve"``).

        For an accuracy, a barrier is a dip: use ``-min`` yourself; this is max − mean ends.
        """
        if path not in PATHS:
            raise ValueError(f"Unknown path {path!r}; expected one of {PATHS}.")
        values = getattr(self, path)
        if metric not in values:
            raise ValueError(f"Unknown metric {metric!r}; expected one of {tuple(values)}.")
        return barrier(values[metric])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: every field but ``bend`` (arrays as lists), plus its norm."""
        return {
            "kind": self.kind,
            "t": self.t.tolist(),
            "linear": {k: np.asarray(v).tolist() for k, v in self.linear.items()},
            "curve": {k: np.asarray(v).tolist() for k, v in self.curve.items()},
            "linear_barrier": self.linear_barrier,
            "curve_barrier": self.curve_barrier,
            "history": {k: list(v) for k, v in self.history.items()},
            "steps": self.steps,
            "batchnorm": self.batchnorm,
            "segment_norm": self.segment_norm,
        }


# ------------------------------------------------------------------------- the two models
def _bn_layers(model: keras.Model) -> list:
    """The trainable BatchNormalization layers of ``model`` (those training mode updates)."""
    out = []
    for layer in _compat.all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            if getattr(layer, "renorm", False):
                raise ValueError(
                    f"BatchNormalization layer {layer.name!r} uses renorm=True, whose "
                    "statistics connect cannot recompute; use a model without renorm."
                )
            if not 0 <= float(layer.momentum) < 1:
                raise ValueError(
                    f"BatchNormalization layer {layer.name!r} has momentum={layer.momentum}; "
                    "recomputing its statistics needs momentum < 1."
                )
            out.append(layer)
    return out


def _values(variables) -> list[np.ndarray]:
    return [np.asarray(keras.ops.convert_to_numpy(v.value)) for v in variables]


def _check_models(model_a, model_b) -> None:
    """Both built Keras models, ``model_a`` compiled with a loss and taking ``training``."""
    for name, model in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(model, keras.Model) or not model.built:
            raise ValueError(
                f"Argument `{name}` must be a built keras.Model. Received: {name}={model!r}."
            )
    if _compat.compiled_loss(model_a) is None:
        raise ValueError(
            "Argument `model_a` must be compiled with a loss (model_a.compile(loss=...)): "
            "the curve is trained on the model's compiled loss. Received: model_a "
            "without a loss."
        )
    if not _takes_training(model_a):
        raise ValueError(
            "Argument `model_a` must take `training` in its `call` (the curve is trained and "
            "its BatchNorm statistics recomputed with the model run statelessly in training "
            "mode, `Model.stateless_call(..., training=True)`, which passes it to `call`). "
            f"Received: {type(model_a).__name__}.call{inspect.signature(model_a.call)}."
        )


class _Pair:
    """Two models of one architecture: their weights, and how to run ``model_a`` at others.

    ``trainable`` and ``non_trainable`` are ``model_a``'s variable lists (the order
    ``stateless_call`` takes); ``nt_values`` and ``nt_values_b`` the two models' values of
    them; ``bn`` holds (slot in ``non_trainable``, momentum) of every BatchNorm moving
    statistic.
    """

    def __init__(self, model_a: keras.Model, model_b: keras.Model):
        _check_models(model_a, model_b)
        self.model = model_a
        self.trainable = list(model_a.trainable_variables)
        self.non_trainable = list(model_a.non_trainable_variables)
        other_tr = list(model_b.trainable_variables)
        other_nt = list(model_b.non_trainable_variables)

        def signature(variables):
            return [(tuple(v.shape), keras.backend.standardize_dtype(v.dtype)) for v in variables]

        if signature(self.trainable) != signature(other_tr) or [
            s for s, _ in signature(self.non_trainable)
        ] != [s for s, _ in signature(other_nt)]:
            raise ValueError(
                "Argument `model_b` must have the same architecture as `model_a` (the same "
                "variables with the same shapes and dtypes, in order). Received: model_b with "
                f"trainable shapes {[s for s, _ in signature(other_tr)]}, model_a "
                f"{[s for s, _ in signature(self.trainable)]}."
            )
        if not self.trainable:
            raise ValueError("Argument `model_a` must have trainable variables. Received: none.")
        self.w_a = _values(self.trainable)
        self.w_b = _values(other_tr)
        self.nt_values, self.nt_values_b = _values(self.non_trainable), _values(other_nt)
        slot_of = {id(v): i for i, v in enumerate(self.non_trainable)}
        self.bn: list[tuple[int, float]] = []
        for layer in _bn_layers(model_a):
            for v in (layer.moving_mean, layer.moving_variance):
                self.bn.append((slot_of[id(v)], float(layer.momentum)))
        bn_slots = {i for i, _ in self.bn}
        for i, (va, vb) in enumerate(zip(self.non_trainable, other_nt)):
            if i in bn_slots or not _is_float(va):
                continue
            if not np.array_equal(self.nt_values[i], keras.ops.convert_to_numpy(vb.value)):
                raise ValueError(
                    f"Argument `model_b` must have the same non-trainable variable {va.path!r} "
                    "as `model_a` (frozen weights are not on the curve; only the trainable "
                    "weights and the statistics of trainable BatchNorm layers may differ). "
                    f"Received: model_b with different values of {vb.path!r}."
                )
        keyed = float_variables(model_a, "trainable")
        paths = {id(v): k for v, k in zip(keyed, keyed.paths)}
        self.paths = [paths[id(v)] for v in self.trainable]
        self.segment_norm = float(
            np.sqrt(
                sum(np.sum((b.astype(np.float64) - a) ** 2) for a, b in zip(self.w_a, self.w_b))
            )
        )
        self._bn_fns: dict = {}

    # -- BatchNorm statistics at given trainable weights
    def bn_statistics(self, weights: Sequence, batches) -> dict[int, np.ndarray]:
        """{slot in ``non_trainable``: recomputed statistic} at trainable ``weights``: arrays
        aligned with the trainable variables, or a ``_Point`` (made inside the compiled call).

        ``batches`` yields input batches x; see the module docstring for the method.
        """
        if not self.bn:
            return {}
        if isinstance(weights, _Point):
            run, args = self._bn_function("point"), (weights.coefficients, weights.rows)
        else:
            run = self._bn_function("weights")
            trainable = [
                _tensor(np.asarray(w).astype(v.dtype)) for w, v in zip(weights, self.trainable)
            ]
            nt = [_tensor(a) for a in self.nt_values]
            for i, _ in self.bn:
                nt[i] = _tensor(np.zeros_like(self.nt_values[i]))
            args = (trainable, nt)
        sums = [np.zeros(self.nt_values[i].shape, np.float64) for i, _ in self.bn]
        total = 0
        for x in batches():
            n = int(keras.tree.flatten(x)[0].shape[0])
            out = run(*args, _tensors(x))
            for k, ((_, momentum), value) in enumerate(zip(self.bn, out)):
                sums[k] += n * _numpy(value).astype(np.float64) / (1.0 - momentum)
            total += n
        return {i: s / total for (i, _), s in zip(self.bn, sums)}

    def _bn_function(self, kind: str):
        """The compiled training-mode call that returns the BatchNorm updates, given the
        trainable and non-trainable values (``"weights"``) or a ``_Point``'s coefficients and
        rows (``"point"``: w0 and the non-trainable values read from ``model_a``'s variables
        inside the call, the statistics zero; 163 argument tensors for ResNet-50 where passing
        them made 430, whose ``tf.function`` dispatch took 29 ms a call)."""
        if kind not in self._bn_fns:
            model, slots = self.model, [i for i, _ in self.bn]
            trainable, non_trainable = self.trainable, self.non_trainable
            dtypes = [v.dtype for v in trainable]

            def run(trainable_values, non_trainable_values, x):
                _, updated = model.stateless_call(trainable_values, non_trainable_values, x,
                                                  training=True)  # fmt: skip
                return [updated[i] for i in slots]

            def run_at(coefficients, rows, x):
                with adapter().no_grad():  # PyTorch: the variables' values need no graph
                    w0 = [v.value for v in trainable]
                    nt = [v.value for v in non_trainable]
                    for i in slots:
                        nt[i] = keras.ops.zeros_like(nt[i])
                    weights = _Point.weights(w0, coefficients, rows, dtypes)
                    return run(weights, nt, x)

            self._bn_fns[kind] = (
                adapter().compile_step(run)
                if kind == "weights"
                else adapter().compile_step(run_at, [*trainable, *non_trainable])
            )
        return self._bn_fns[kind]


@dataclass
class _Point:
    """Trainable weights w0 + Σₖ cₖ rowsₖ (w0: ``model_a``'s), made inside the compiled
    BatchNorm pass as the Objective's compiled passes make theirs (``_tf_engine``'s and
    ``_portable``'s ``_values``: the rows' dtype, the coefficients cast to it, ``tensordot``)."""

    coefficients: Any  # float64 [k]
    rows: list  # [k, *shape] per trainable variable

    @staticmethod
    def weights(w0, coefficients, rows, dtypes) -> list:
        ops = keras.ops
        return [
            ops.cast(
                ops.cast(w, r.dtype) + ops.tensordot(ops.cast(coefficients, r.dtype), r, axes=1),
                d,
            )
            for w, r, d in zip(w0, rows, dtypes)
        ]


def _takes_training(model: keras.Model) -> bool:
    """Whether ``model.call`` takes ``training`` (by name or ``**kwargs``)."""
    parameters = inspect.signature(model.call).parameters.values()
    return any(p.name == "training" or p.kind is p.VAR_KEYWORD for p in parameters)


def _is_float(variable) -> bool:
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(variable.dtype))


def _numpy(t) -> np.ndarray:
    return np.asarray(adapter().to_numpy(t))


def _tensor(a):
    return keras.ops.convert_to_tensor(a)


def _tensors(structure):
    """A nest of arrays (or None) as the backend's tensors."""
    return None if structure is None else keras.tree.map_structure(_tensor, structure)


# ------------------------------------------------------------------------------- the data
def _is_tf_dataset(data) -> bool:
    """Whether ``data`` is a ``tf.data.Dataset`` (only possible once TensorFlow is imported, so
    no other backend's process imports TensorFlow to ask)."""
    if "tensorflow" not in sys.modules:
        return False
    import tensorflow as tf

    return isinstance(data, tf.data.Dataset)


class _DatasetBatches:
    """A finite ``tf.data.Dataset``'s batches as NumPy, in its own order, at every pass."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        yield from _compat.numpy_batches(self.dataset)


class _ArrayBatches:
    """Batches ``(x, y[, sample_weight])`` of host arrays; a new permutation at every pass when
    shuffled (the generator is seeded once, so passes differ and runs repeat)."""

    def __init__(self, parts: tuple, batch_size: int, seed: int | None, shuffle: bool):
        self.parts = parts
        self.batch_size = batch_size
        self.n = int(keras.tree.flatten(parts[0])[0].shape[0])
        self.rng = np.random.default_rng(seed) if shuffle else None

    def __iter__(self):
        order = None if self.rng is None else self.rng.permutation(self.n)
        for start in range(0, self.n, self.batch_size):
            if order is None:
                index = slice(start, start + self.batch_size)
            else:
                index = order[start : start + self.batch_size]

            def take(a, index=index):
                return a[index]

            yield tuple(keras.tree.map_structure(take, p) for p in self.parts)


def _host_array(a) -> np.ndarray:
    if hasattr(a, "toarray"):  # a SciPy sparse matrix
        return np.asarray(a.toarray())
    return np.asarray(keras.ops.convert_to_numpy(a))


def _training_dataset(data, batch_size: int, seed: int | None, shuffle: bool):
    """NumPy batches ``(x, y[, sample_weight])`` of ``data`` for training and BatchNorm passes:
    arrays sliced on the host (shuffled at every pass if ``shuffle``), a ``tf.data.Dataset``
    read as it comes (where TensorFlow is installed)."""
    if _is_tf_dataset(data):
        return _DatasetBatches(data)
    if isinstance(data, keras.utils.PyDataset) or not isinstance(data, tuple | list):
        raise ValueError(
            "Argument `data` must be arrays (x, y) or (x, y, sample_weight), or a finite "
            f"tf.data.Dataset of such batches. Received: data of type {type(data).__name__}."
        )
    x, y, w = unpack(tuple(data), "data")
    parts = (x, y) if w is None else (x, y, w)
    parts = tuple(keras.tree.map_structure(_host_array, p) for p in parts)
    return _ArrayBatches(parts, batch_size, seed, shuffle)


def _split_batch(batch):
    if isinstance(batch, tuple | list) and len(batch) in (2, 3):
        return batch[0], batch[1], (batch[2] if len(batch) == 3 else None)
    raise ValueError(
        "Argument `data` must yield batches (x, y) or (x, y, sample_weight). "
        f"Received: a batch of type {type(batch).__name__}."
    )


# --------------------------------------------------------------------------- the training
def _optimizer(optimizer) -> keras.optimizers.Optimizer:
    if optimizer is None:
        return keras.optimizers.SGD(DEFAULT_LEARNING_RATE, momentum=DEFAULT_MOMENTUM)
    if isinstance(optimizer, str):
        return keras.optimizers.get(optimizer)
    if isinstance(optimizer, keras.optimizers.Optimizer):
        if optimizer.built:
            raise ValueError(
                "Argument `optimizer` must be a fresh (unbuilt) Keras optimizer: it is built "
                f"for the bend's weights. Received: optimizer={optimizer!r}, already built."
            )
        return optimizer
    raise ValueError(
        f"Argument `optimizer` must be None, a name or a keras Optimizer. Received: "
        f"optimizer={optimizer!r}."
    )


def _bend_step(pair: _Pair, theta, opt):
    """One optimizer step on θ at one t, compiled for the backend (``compile_step``).

    ``step(coefficients, ends_a, ends_b, metric_values, non_trainable, x, y, w)`` runs the
    model statelessly in training mode at φ(t) = c_a w_a + c_θ θ + c_b w_b (``coefficients``
    = (c_a, c_θ, c_b)), differentiates its compiled loss with respect to θ and applies the
    optimizer to θ's variables; it returns the loss and the updated non-trainable values.
    """
    model, back = pair.model, adapter()

    def step(coefficients, ends_a, ends_b, metric_values, non_trainable, x, y, w):
        def loss_of(bend):
            weights = []
            for a, m, b in zip(ends_a, bend, ends_b):
                ca, cm, cb = (keras.ops.cast(coefficients[k], a.dtype) for k in range(3))
                weights.append(ca * a + cm * m + cb * b)
            y_pred, updated = model.stateless_call(weights, non_trainable, x, training=True)
            loss, _ = model.stateless_compute_loss(
                weights, updated, metric_values, x=x, y=y, y_pred=y_pred, sample_weight=w,
                training=True,
            )  # fmt: skip
            return loss, updated

        loss, updated, grads = back.value_and_grad(loss_of, [m.value for m in theta])
        opt.apply_gradients(zip(grads, theta))
        return loss, updated

    return back.compile_step(step, [*theta, *opt.variables])


def _train_bend(pair: _Pair, curve, data, *, epochs, batch_size, optimizer, seed, verbose):
    """Train θ (keras Variables, from the midpoint) to minimize E_t L(φ(t)); see the module."""
    theta = [
        keras.Variable(((a.astype(np.float64) + b) / 2).astype(a.dtype), name=f"bend_{i}")
        for i, (a, b) in enumerate(zip(pair.w_a, pair.w_b))
    ]
    history: dict[str, list[float]] = {"loss": []}
    if epochs == 0:
        return _values(theta), history, 0
    opt = _optimizer(optimizer)
    opt.build(theta)
    step = _bend_step(pair, theta, opt)
    ends = [_tensor(a) for a in pair.w_a], [_tensor(b) for b in pair.w_b]
    metric_values = [_tensor(v) for v in _values(pair.model.metrics_variables)]
    wide = np.result_type(*(a.dtype for a in pair.w_a))
    # one seed, two independent streams: the t draws and the shuffling
    t_seed, order_seed = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(t_seed)
    dataset = _training_dataset(data, batch_size, order_seed, shuffle=True)
    # The non-trainable values (BatchNorm statistics, dropout seeds) carried from step to step:
    # a local copy, never the model's variables.
    non_trainable = [_tensor(a) for a in pair.nt_values]
    steps = 0
    bar = progbar(epochs, verbose, unit="epoch")
    for epoch in range(epochs):
        total, count = 0.0, 0
        for batch in dataset:
            x, y, w = _split_batch(batch)
            coefficients = np.asarray(curve_coefficients(rng.uniform(), curve), wide)
            batch = (_tensors(x), _tensors(y), _tensors(w))
            loss, non_trainable = step(_tensor(coefficients), *ends, metric_values,
                                       non_trainable, *batch)  # fmt: skip
            total += float(_numpy(loss))
            count += 1
            steps += 1
        if count == 0:
            raise ValueError("Argument `data` must not be empty. Received: no batches.")
        history["loss"].append(total / count)
        logger.info("connect: epoch %d/%d, loss along the curve %.4g", epoch + 1, epochs,
                    total / count)  # fmt: skip
        if bar is not None:
            bar.update(epoch + 1, [("loss", total / count)])
    finish(bar, epochs)
    return _values(theta), history, steps


# ------------------------------------------------------------------------------ evaluation
class _Evaluator:
    """Loss and metrics at given trainable weights, BatchNorm statistics recomputed there."""

    def __init__(self, pair, data, test_data, *, batch_size, bn_batch_size, loss, recompute):
        """``recompute``: BatchNorm statistics recomputed at every point; else interpolated
        between the two models' own (``at``'s ``s``)."""
        self.pair = pair
        self.objective = Objective(pair.model, data, loss, batch_size=batch_size,
                                   test_data=test_data)  # fmt: skip
        variables = self.objective.variables
        index = {id(v): i for i, v in enumerate(variables)}
        self.w0 = _values(variables)
        self.trainable_slots = [index[id(v)] for v in pair.trainable]
        self.bn_slots = {i: index[id(pair.non_trainable[i])] for i, _ in pair.bn}
        self.recompute = recompute and bool(pair.bn)
        self._bn_data = _training_dataset(data, bn_batch_size, None, shuffle=False)

    def _batches(self):
        for batch in self._bn_data:
            yield _split_batch(batch)[0]

    def _statistics(self, weights, s: float) -> dict[int, np.ndarray]:
        """The BatchNorm moving statistics at trainable ``weights`` (a ``_Point``), or without
        recomputation (1 − s)·model_a's + s·model_b's (s = 0: model_a's own, s = 1: model_b's).
        """
        if self.recompute:
            return self.pair.bn_statistics(weights, self._batches)
        a, b = self.pair.nt_values, self.pair.nt_values_b
        return {
            i: (1 - s) * a[i].astype(np.float64) + s * b[i].astype(np.float64)
            for i, _ in self.pair.bn
        }

    def along(self, c1: float, c2: float, basis: Basis, s: float) -> dict[str, float]:
        """The values at w_a + ``c1``·d₁ + ``c2``·d₂ for the rows d₁, d₂ of ``basis`` (from
        ``rows`` or ``path_basis``), BatchNorm statistics at ``s`` (see ``_statistics``).

        The point is an Objective basis point (``evaluate_at``), as a surface point is: the
        rows (rounded once to the variables' dtypes, converted to tensors once) and a third
        row that carries the BatchNorm statistics' offsets of the point; the compiled pass adds
        them to w0 = w_a, so no host arithmetic or conversion of every variable is made at a
        point (ResNet-50: a path point's weights and offsets made on the host in float64 took
        0.26–0.49 s, 1.6–2.1 times its two passes, in one process). The weights are
        w_a + c₁d₁ + c₂d₂ in the variables' dtype, where offsetting w0 by the float64
        φ(t) − w0 rounded once gives the same numbers to a few units of the dtype's last place
        (tests/test_connectivity.py:
        at t = 0 and 1 the same weights, and without recomputed statistics the same values to
        the bit); recomputed BatchNorm statistics are taken at the very weights evaluated.
        """
        coefficients = np.array([c1, c2, 1.0])
        point = None
        if self.recompute:
            rows = [basis.tensors[slot] for slot in self.trainable_slots]
            point = _Point(_tensor(coefficients), rows)
        stats = self._statistics(point, s)
        if stats:
            offsets: list = [np.zeros(())] * len(self.w0)
            rows = {}
            for i, stat in stats.items():
                slot = self.bn_slots[i]
                offsets[slot] = stat - self.w0[slot]
                rows[slot] = np.stack([np.zeros_like(offsets[slot])] * 2 + [offsets[slot]])
            _model_checks.check_offsets(self.objective, offsets, "offsets")
            tensors = list(basis.tensors)
            dtypes = [self.objective._dtypes[slot] for slot in rows]
            for slot, tensor in zip(rows, self.objective._tensors(list(rows.values()), dtypes)):
                tensors[slot] = tensor
            basis = Basis(tuple(tensors), 3)
        out = {}
        for split in self.objective.splits:
            values = self.objective.evaluate_at(coefficients, basis, split=split)
            for name, value in values.items():
                out[f"{split}_{name}"] = value
        return out

    def rows(self, first: Sequence, second: Sequence) -> Basis:
        """The basis of rows (``first``, ``second``, 0) of every variable: arrays aligned with
        the trainable weights (0 on the others), stored as a direction is (``storage_dtype``:
        rounded once) and converted to tensors once; offsets from w0, which is w_a."""
        for slot, a in zip(self.trainable_slots, self.pair.w_a):
            if not np.array_equal(a, self.w0[slot]):  # w0 is model_a's, read at once, never set
                raise RuntimeError(
                    f"model_a's variable {self.objective.variables[slot].path!r} changed "
                    "while its points were evaluated."
                )
        trainable = dict(zip(self.trainable_slots, range(len(self.trainable_slots))))
        stacked = []
        for slot, (w0, v) in enumerate(zip(self.w0, self.objective.variables)):
            row = np.zeros((3, *w0.shape), storage_dtype(v))
            if slot in trainable:
                row[0], row[1] = first[trainable[slot]], second[trainable[slot]]
            stacked.append(row)
        _model_checks.check_offsets(self.objective, [r[0] for r in stacked], "offsets")
        _model_checks.check_offsets(self.objective, [r[1] for r in stacked], "offsets")
        return Basis(self.objective._tensors(stacked, self.objective._dtypes), 3)

    def path_basis(self, bend) -> Basis:
        """``rows`` θ − w_a and w_b − w_a (in float64, then rounded), so that the curve at t
        is ``along(c_θ(t), c_b(t))`` and the straight line ``along(0, t)`` (Σ c = 1)."""
        w_a, w_b = self.pair.w_a, self.pair.w_b
        return self.rows(
            [np.asarray(m, np.float64) - a for m, a in zip(bend, w_a)],
            [b.astype(np.float64) - a for a, b in zip(w_a, w_b)],
        )


def _t_grid(t, points) -> np.ndarray:
    if t is None:
        points = _checks.integer("points", points, 2)
        return np.linspace(0.0, 1.0, points)
    grid = _check_t(t).reshape(-1)
    return np.unique(np.concatenate([[0.0, 1.0], grid]))


def _evaluate_paths(evaluator, pair, bend, grid, curve, verbose):
    """({metric: values at grid} of the straight line, the same of the curve)."""
    values: dict[str, dict[str, list[float]]] = {"linear": {}, "curve": {}}
    bar = progbar(2 * len(grid), verbose, unit="point")
    done = 0
    basis = evaluator.path_basis(bend)
    for s in grid:
        row_linear = evaluator.along(0.0, s, basis, s)
        ends = s in (0.0, 1.0)
        _, c_bend, c_b = curve_coefficients(s, curve)
        row_curve = row_linear if ends else evaluator.along(c_bend, c_b, basis, s)
        for path, row in (("linear", row_linear), ("curve", row_curve)):
            for k, v in row.items():
                values[path].setdefault(k, []).append(v)
        done += 2
        if bar is not None:
            bar.update(done, [("t", float(s))])
    finish(bar, done)
    return tuple({k: np.asarray(v) for k, v in values[p].items()} for p in PATHS)


def connect(
    model_a: keras.Model,
    model_b: keras.Model,
    data,
    *,
    curve: Curve = "bezier",
    test_data=None,
    epochs: int = 10,
    batch_size: int = 128,
    optimizer: keras.optimizers.Optimizer | str | None = None,
    t: Sequence[float] | None = None,
    points: int = DEFAULT_POINTS,
    loss=None,
    eval_batch_size: int = 256,
    batchnorm: bool = True,
    seed: int | None = 0,
    verbose: int | str = 0,
) -> ConnectResult:
    """Fit a low-loss curve between two models' weights and measure both paths' barriers.

    See the module docstring for the curve, the training of its bend θ, the BatchNorm
    statistics and the departures from Garipov et al. 2018 (arXiv 1802.10026).

    Args:
        model_a: A built, compiled Keras model (its compiled loss trains the curve); its
            weights w_a are the curve's start (t = 0). Never modified.
        model_b: A model of the same architecture (same variables, shapes and dtypes, in
            order); its weights w_b are the end (t = 1). Never modified.
        data: Training data: arrays ``(x, y)`` or ``(x, y, sample_weight)`` (shuffled each
            epoch, batches of ``batch_size``), or a finite ``tf.data.Dataset`` of such
            batches (used as it comes; on any backend, where TensorFlow is installed). Also
            the data of the BatchNorm passes and of the ``train_*`` values.
        curve: ``"bezier"`` (quadratic Bézier) or ``"polychain"`` (w_a → θ → w_b). Defaults
            to ``"bezier"``.
        test_data: Optional data evaluated as ``test_*`` values (any form ``Objective`` takes).
            Defaults to None.
        epochs: Passes over ``data`` training θ; 0 keeps θ at the midpoint (then the Bézier
            curve is the straight line). Defaults to 10.
        batch_size: Minibatch size of the training and of the BatchNorm passes (array data).
            Defaults to 128.
        optimizer: A fresh Keras optimizer for θ, a name (``"adam"``), or None for SGD with
            learning rate 0.01 and momentum 0.9. Defaults to None.
        t: The t values to evaluate, in [0, 1] (0 and 1 are always added); None for
            ``points`` evenly spaced ones. Defaults to None.
        points: The number of evenly spaced t when ``t`` is None (at least 2). Defaults to 21.
        loss: The loss of the evaluation, as ``Objective(loss=)``; None for the compiled
            loss. Training always uses the compiled loss. Defaults to None.
        eval_batch_size: Batch size of the evaluation (memory and speed, not the values).
            Defaults to 256.
        batchnorm: Recompute BatchNorm statistics at every evaluated point (the paper's
            method). False uses the models' own moving statistics: ``model_a``'s at t = 0,
            ``model_b``'s at t = 1, and (1 − t)·``model_a``'s + t·``model_b``'s in between, on
            both paths (see the module docstring). Defaults to True.
        seed: Seeds the t draws and the shuffling. Defaults to 0.
        verbose: 0, 1, 2 or ``"auto"``: a progress bar over epochs and points. Defaults to 0.

    Returns:
        A ``ConnectResult``: ``t``, ``linear`` and ``curve`` values, ``linear_barrier`` and
        ``curve_barrier`` (training loss), the bend θ, the training history.

    Raises:
        ValueError: a model that is not a built keras.Model, ``model_a`` without a compiled
            loss, models of different architectures or different frozen weights, an unknown
            ``curve``, ``t`` outside [0, 1], a non-integer or negative ``epochs``, a
            ``batch_size``/``eval_batch_size``/``points`` below 1 (2 for ``points``), an
            optimizer that is already built, data that do not fit the model, or a BatchNorm
            layer with ``renorm=True`` or ``momentum`` ≥ 1 (with ``batchnorm=True``).

    Example:
        >>> res = landscape.connect(model_a, model_b, (x, y), test_data=(x_test, y_test))
        >>> res.linear_barrier, res.curve_barrier
        >>> landscape.plot_connection(res)

    References:
        Garipov et al., Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs,
        https://arxiv.org/abs/1802.10026
    """
    curve = _checks.choice("curve", curve, Curve)
    epochs = _checks.integer("epochs", epochs, 0)
    batch_size = _checks.integer("batch_size", batch_size)
    eval_batch_size = _checks.integer("eval_batch_size", eval_batch_size)
    batchnorm = _checks.boolean("batchnorm", batchnorm)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"Argument `seed` must be an int or None. Received: seed={seed!r}.")
    grid = _t_grid(t, points)
    pair = _Pair(model_a, model_b)
    evaluator = _Evaluator(pair, data, test_data, batch_size=eval_batch_size,
                           bn_batch_size=batch_size, loss=loss, recompute=batchnorm)  # fmt: skip
    bend, history, steps = _train_bend(
        pair, curve, data, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
        seed=seed, verbose=verbose,
    )  # fmt: skip
    linear, curve_values = _evaluate_paths(evaluator, pair, bend, grid, curve, verbose)
    result = ConnectResult(
        kind=curve,
        t=grid,
        linear=linear,
        curve=curve_values,
        linear_barrier=barrier(linear["train_loss"]),
        curve_barrier=barrier(curve_values["train_loss"]),
        bend=Direction(dict(zip(pair.paths, bend)), {"kind": "bend", "curve": curve}),
        history=history,
        steps=steps,
        batchnorm=evaluator.recompute,
        segment_norm=pair.segment_norm,
    )
    logger.info(
        "connect (%s): training-loss barrier %.4g on the straight line, %.4g on the curve",
        curve, result.linear_barrier, result.curve_barrier,
    )  # fmt: skip
    return result


# ---------------------------------------------------------------------------------- plane
def _plane_basis(pair: _Pair, theta):
    """Flat w_a, orthonormal u, v of the plane, ‖w_b − w_a‖ and θ's coordinates (x, y)."""
    flat = np.concatenate
    a = flat([w.astype(np.float64).ravel() for w in pair.w_a])
    d = flat([w.astype(np.float64).ravel() for w in pair.w_b]) - a
    m = flat([np.asarray(w, np.float64).ravel() for w in theta]) - a
    length = float(np.linalg.norm(d))
    if length == 0:
        raise ValueError("Arguments `model_a` and `model_b` must have different weights.")
    u = d / length
    mx = float(m @ u)
    rest = m - mx * u
    my = float(np.linalg.norm(rest))
    # θ is held in the weights' dtypes: an off-line part within its rounding (unit roundoff ×
    # ‖θ‖, 4 times) is that rounding, and v would be a direction of noise (the untrained bend,
    # the midpoint (w_a + w_b)/2 rounded to float32, gave ResNet-50 a residual of 1.4e-7 ×
    # ‖w_b − w_a‖, which 1e-12 × ‖w_b − w_a‖ let through)
    roundoff = max(2.0 ** -_SIGNIFICAND_BITS.get(keras.backend.standardize_dtype(v.dtype), 53)
                   for v in pair.trainable)  # fmt: skip
    noise = 4 * roundoff * float(np.linalg.norm(m + a))
    if my <= max(1e-12 * length, noise):
        raise ValueError(
            "Argument `result` must have a bend off the straight line (train the curve, "
            "epochs >= 1): the plane through three collinear points is not defined. "
            f"Received: a bend {my:.3g} off the line, within the rounding of its weights "
            f"({noise:.3g})."
        )
    return a, u, rest / my, length, (mx, my)


def connection_plane(
    model_a: keras.Model,
    model_b: keras.Model,
    result: ConnectResult,
    data,
    *,
    test_data=None,
    points: int = 11,
    margin: float = PLANE_MARGIN,
    loss=None,
    eval_batch_size: int = 256,
    batch_size: int = 128,
) -> Surface:
    """The loss on the plane through w_a, θ and w_b, with the curve's trace in its metadata.

    The plane's orthonormal basis (over the trainable weights) is u = (w_b − w_a)/‖w_b − w_a‖
    and v = the part of θ − w_a orthogonal to u, normalized; a grid point (x, y) is
    w_a + x u + y v, so x and y are Euclidean distances in weight space (w_a at (0, 0), w_b at
    (‖w_b − w_a‖, 0)). The grid spans the three points plus ``margin`` · ‖w_b − w_a‖ on every
    side. Every point is evaluated as ``connect`` evaluates its paths (BatchNorm statistics
    recomputed there when ``result.batchnorm``; else the two models' moving statistics
    interpolated at t = x / ‖w_b − w_a‖ clipped to [0, 1], so w_a has ``model_a``'s and w_b
    ``model_b``'s), which is the paper's figure 1 (arXiv 1802.10026) on a ``points`` ×
    ``points`` grid.

    Args:
        model_a: The model at t = 0 given to ``connect``.
        model_b: The model at t = 1 given to ``connect``.
        result: What ``connect`` returned for these models.
        data: The training data (as ``connect`` takes them).
        test_data: Optional test data (``test_*`` values). Defaults to None.
        points: Grid points along each axis (at least 2; the cost is points² evaluations,
            each with a BatchNorm pass for a BatchNorm model). Defaults to 11.
        margin: The grid's margin, a fraction of ‖w_b − w_a‖ (>= 0). Defaults to 0.2.
        loss: The evaluated loss, as in ``connect``. Defaults to None.
        eval_batch_size: Batch size of the evaluation. Defaults to 256.
        batch_size: Batch size of the BatchNorm passes (as in ``connect``). Defaults to 128.

    Returns:
        A 2D ``Surface`` (values ``[len(y), len(x)]``) whose metadata hold ``"curve_x"``,
        ``"curve_y"`` (the curve's trace, 101 points), ``"points"`` ({"w_a", "bend", "w_b"}:
        (x, y) each) and ``"kind"`` (``"connection_plane"``).

    Raises:
        ValueError: as ``connect`` for the models and data; ``points`` below 2; a negative
            ``margin``; a ``result`` that is not a ``ConnectResult``; w_a = w_b; or a bend on
            the straight line (the plane is then not defined: v = 0).
    """
    if not isinstance(result, ConnectResult):
        raise ValueError(
            f"Argument `result` must be a ConnectResult. Received: result={type(result).__name__}."
        )
    points = _checks.integer("points", points, 2)
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not margin >= 0:
        raise ValueError(f"Argument `margin` must be a number >= 0. Received: margin={margin!r}.")
    pair = _Pair(model_a, model_b)
    a, u, v, length, (mx, my) = _plane_basis(pair, result.bend.aligned(pair.trainable))
    pad = margin * length
    xs = np.linspace(min(0.0, mx) - pad, max(length, mx) + pad, points)
    ys = np.linspace(min(0.0, my) - pad, max(0.0, my) + pad, points)
    evaluator = _Evaluator(
        pair, data, test_data, batch_size=eval_batch_size, bn_batch_size=batch_size, loss=loss,
        recompute=result.batchnorm,
    )  # fmt: skip
    shapes, sizes = [w.shape for w in pair.w_a], [w.size for w in pair.w_a]
    bounds = np.cumsum(sizes)[:-1]

    def split(flat):
        return [p.reshape(s) for p, s in zip(np.split(flat, bounds), shapes)]

    basis = evaluator.rows(split(u), split(v))  # (x, y) is w_a + x u + y v
    values: dict[str, np.ndarray] = {}
    for iy, y in enumerate(ys):
        for ix, x in enumerate(xs):
            row = evaluator.along(x, y, basis, min(max(x / length, 0.0), 1.0))
            for k, val in row.items():
                values.setdefault(k, np.full((points, points), np.nan))[iy, ix] = val
    s = np.linspace(0.0, 1.0, CURVE_DRAW_POINTS)
    _, cm, cb = curve_coefficients(s, result.kind)
    metadata = {
        "kind": "connection_plane",
        "curve": result.kind,
        "curve_x": (cm * mx + cb * length).tolist(),
        "curve_y": (cm * my).tolist(),
        "points": {"w_a": (0.0, 0.0), "bend": (mx, my), "w_b": (length, 0.0)},
    }
    return Surface(xs, ys, values, metadata)
