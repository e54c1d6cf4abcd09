"""The loss as a function of the weights: the one evaluator of ``landscape``.

``Objective(model, data)`` evaluates, for an offset δ aligned with the model's variables, the loss
the model is compiled with — exactly as ``model.evaluate`` computes it — over the whole data set:

    L(w0 + δ) = Σₖ λₖ · Nₖ / Dₖ,    Nₖ = Σ_batches Σᵢ sᵢ mᵢ ℓₖ(f(xᵢ; w0 + δ), yᵢ),

one term per compiled output loss ℓₖ with its ``loss_weights`` entry λₖ, its sample weights s
and its mask m (Keras masks propagated to the output, ``ignore_class``), and Dₖ the normalizer of
the loss's reduction summed over every batch: the number of unmasked entries for
``"sum_over_batch_size"`` (Keras's default), Σ sᵢ mᵢ for ``"mean_with_sample_weight"``. This is
the weighted mean over the whole data set, accumulated in float64; it equals ``model.evaluate``
with the whole data in one batch. With several batches Keras averages the per-batch losses
weighted by batch size, which differs when the normalizer varies between batches (masks,
``mean_with_sample_weight``) and is the same otherwise.

The model runs in inference mode (BatchNorm moving statistics, no dropout). The offset is applied
through ``keras.StatelessScope``: the model's variables are never assigned, so they stay
bit-identical, also when evaluation raises. One compiled batch loop (``tf.function`` per data
split and entry point, traced once) serves the values, the gradient and exact Hessian-vector
products; the offset of a point is built on the device as δ = Σₖ αₖ dₖ.

Metrics are the model's compiled metrics (``metrics="auto"``), evaluated through Keras's own
metric objects in the same loop (stateless: the model's metric state is not touched).
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import keras
import numpy as np
import tensorflow as tf

from landscape import _compat
from landscape.directions import Direction, ModelVariables, fingerprint_arrays, float_variables

logger = logging.getLogger("landscape")

Split = Literal["train", "test"]
HVPMode = Literal["forward_over_backward", "backward_over_backward"]
HVP_MODES = ("forward_over_backward", "backward_over_backward")
_ACCURACY_NAMES = ("accuracy", "acc")
_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")
#: relative tolerance of the check that the Objective reproduces the model's compiled loss
LOSS_CHECK_RTOL = 1e-4


@dataclass(frozen=True)
class Basis:
    """Directions converted to stacked device tensors ``[k, *variable.shape]``, one per variable."""

    tensors: tuple[tf.Tensor, ...]
    k: int


# ------------------------------------------------------------------------------------ data
def _structure(value) -> str:
    """A short description of a nested structure of arrays: ``{'a': (n, 3), 'b': (n,)}``."""

    def leaf(t):
        shape = getattr(t, "shape", None)
        return "None" if t is None else str(tuple(shape)) if shape is not None else type(t).__name__

    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_structure(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        inner = ", ".join(_structure(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    return leaf(value)


def _model_inputs(model: keras.Model) -> str:
    try:
        return _structure(tf.nest.map_structure(lambda t: t, model.input))
    except (AttributeError, ValueError):
        return "(not known for this model: it has no symbolic inputs)"


def _unpack(batch, argument: str):
    """(x, y, sample_weight) of one element of ``data``; refuses x-only data."""
    if not isinstance(batch, tuple | list):
        raise ValueError(
            f"Argument `{argument}` must be (x, y) or (x, y, sample_weight) arrays, a "
            "tf.data.Dataset or a keras.utils.PyDataset of such batches. "
            f"Received: {type(batch).__name__}."
        )
    x, y, w = keras.utils.unpack_x_y_sample_weight(tuple(batch))
    if y is None or len(batch) > 3:
        raise ValueError(
            f"Argument `{argument}` must have 2 or 3 entries (x, y[, sample_weight]): the "
            f"loss needs targets. Received {len(batch)} entries."
        )
    return x, y, w


def _to_tensor(t):
    return tf.convert_to_tensor(t)


def _py_dataset(data: keras.utils.PyDataset, steps: int | None) -> tf.data.Dataset:
    """A finite tf.data view of a ``keras.utils.PyDataset`` (batches in index order).

    Every axis is left free, so batches may differ in length and in padding.
    """
    count = data.num_batches
    if count is None:
        if steps is None:
            raise ValueError(
                "Argument `data` is a PyDataset with no length (`num_batches` is None); pass "
                "`steps=` to say how many batches the objective covers."
            )
        count = steps
    count = count if steps is None else min(count, steps)
    first = data[0]
    spec = tf.nest.map_structure(
        lambda t: tf.TensorSpec([None] * np.ndim(t), tf.as_dtype(np.asarray(t).dtype)),
        tuple(first),
    )

    def batches():
        for i in range(count):
            yield tuple(data[i])

    return tf.data.Dataset.from_generator(batches, output_signature=spec)


class _Split:
    """One data set: device tensors sliced in a graph loop, or a finite tf.data.Dataset."""

    def __init__(self, data, batch_size: int, steps: int | None, argument: str):
        self.dataset = None
        self.n = None
        if isinstance(data, keras.utils.PyDataset):
            data = _py_dataset(data, steps)
            steps = None
        if isinstance(data, tf.data.Dataset):
            infinite = int(data.cardinality()) == int(tf.data.INFINITE_CARDINALITY)
            if infinite and steps is None:
                raise ValueError(
                    f"Argument `{argument}` is an infinite tf.data.Dataset (it ends in "
                    "`.repeat()`); drop the `.repeat()` or pass `steps=` (the number of "
                    "batches the objective covers)."
                )
            if steps is not None:
                data = data.take(steps)
            if int(data.cardinality()) == 0:
                raise ValueError(f"Argument `{argument}` is an empty dataset.")
            self.dataset = data
            return
        x, y, w = _unpack(data, argument)
        self.x = tf.nest.map_structure(_to_tensor, x)
        self.y = tf.nest.map_structure(_to_tensor, y)
        self.w = None if w is None else tf.nest.map_structure(_to_tensor, w)
        counts = {int(t.shape[0]) if t.shape.rank else -1 for t in tf.nest.flatten(self.x)}
        n = min(counts)
        for name, part in (("y", self.y), ("sample_weight", self.w)):
            for t in [] if part is None else tf.nest.flatten(part):
                if t.shape.rank == 0 or int(t.shape[0]) != n:
                    raise ValueError(
                        f"Argument `{argument}`: x has {n} samples but {name} has shape "
                        f"{tuple(t.shape)}."
                    )
        if len(counts) != 1:
            raise ValueError(
                f"Argument `{argument}`: the inputs have different numbers of samples: "
                f"{_structure(x)}."
            )
        if n <= 0:
            raise ValueError(f"Argument `{argument}` is empty.")
        self.n = n
        self.batch_size = batch_size
        self.n_batches = -(-n // batch_size)

    @property
    def single_batch(self) -> bool:
        """Whether the split is one batch (so a per-batch loss value is the data set's)."""
        if self.dataset is not None:
            return int(self.dataset.cardinality()) == 1
        return self.n_batches == 1

    def first_batch(self, size: int):
        """(x, y, w) of the first ``size`` samples (or the dataset's first batch), eagerly."""
        if self.dataset is not None:
            for batch in self.dataset.take(1):
                return _unpack(batch, "data")
            raise ValueError("Argument `data` is an empty dataset.")

        def take(t):
            return t[:size]

        return tuple(
            None if part is None else tf.nest.map_structure(take, part)
            for part in (self.x, self.y, self.w)
        )

    def batches(self, size: int) -> Iterator[tuple]:
        """Consecutive (x, y, w) slices of ``size`` samples, eagerly."""
        if self.dataset is not None:
            for batch in self.dataset.unbatch().batch(size):
                yield _unpack(batch, "data")
            return
        for start in range(0, self.n, size):

            def take(t, s=start):
                return t[s : s + size]

            yield tuple(
                None if part is None else tf.nest.map_structure(take, part)
                for part in (self.x, self.y, self.w)
            )

    def arrays(self) -> list[np.ndarray] | None:
        if self.dataset is not None:
            return None
        parts = tf.nest.flatten(self.x) + tf.nest.flatten(self.y)
        parts += [] if self.w is None else tf.nest.flatten(self.w)
        return [keras.ops.convert_to_numpy(t) for t in parts]

    def reduce(self, init, body):
        """state ← body(state, x, y, w) over all batches (in a graph loop); w may be None."""
        if self.dataset is not None:

            def step(state, batch):
                return body(state, *_unpack(batch, "data"))

            return self.dataset.reduce(init, step)

        bs = self.batch_size

        def loop_body(i, state):
            start = i * bs

            def take(t):
                return t[start : start + bs]

            x = tf.nest.map_structure(take, self.x)
            y = tf.nest.map_structure(take, self.y)
            w = None if self.w is None else tf.nest.map_structure(take, self.w)
            return i + 1, body(state, x, y, w)

        _, state = tf.while_loop(
            lambda i, _: i < self.n_batches,
            loop_body,
            (tf.constant(0), init),
            parallel_iterations=1,
        )
        return state


# ------------------------------------------------------------------------------------ loss
def _same_rank(a, b):
    """Keras's rule: squeeze or expand a trailing unit axis so that a and b have equal rank."""
    ra, rb = a.shape.rank, b.shape.rank
    if ra == rb + 1 and a.shape[-1] == 1:
        if rb == 1:
            b = tf.expand_dims(b, -1)
        else:
            a = tf.squeeze(a, -1)
    elif rb == ra + 1 and b.shape[-1] == 1:
        if ra == 1:
            a = tf.expand_dims(a, -1)
        else:
            b = tf.squeeze(b, -1)
    return a, b


def _per_sample(weight, values):
    """``weight`` with unit axes appended up to the rank of ``values``.

    Per-sample weights on per-entry values (a sequence output) weight every entry of their sample.
    Keras broadcasts them against the last axis instead, which fails, or silently mixes samples
    when that axis happens to have the batch's length; the check against Keras's own loss on the
    first batch then refuses the data rather than report either number.
    """
    while 0 < weight.shape.rank < values.shape.rank:
        weight = weight[..., None]
    return weight


def _size(t) -> tf.Tensor:
    return tf.cast(tf.size(t), tf.float64)


def _loss_pair(loss: keras.losses.Loss, y_true, y_pred, sample_weight) -> tuple:
    """Float64 (N, D, per_batch) of one batch: Keras's reduced ``loss(y_true, y_pred, s)`` is N / D.

    ``per_batch`` is True when ``loss.call`` returns one value for the batch rather than one per
    sample: then N / D is that value (weighted by the batch size), exact only in one batch.

    Follows ``keras.losses.Loss.__call__``: the mask of ``y_pred`` and the one the loss sets on
    its values (``ignore_class``) are merged into the sample weights; the "sum_over_batch_size"
    normalizer counts unmasked entries, "mean_with_sample_weight" sums the merged weights.
    """
    in_mask = _compat.keras_mask(y_pred)
    # Keras computes in the loss's dtype (floatx); a float64 model keeps float64 here.
    wide = any(t.dtype == tf.float64 for t in tf.nest.flatten(y_pred))
    dtype = tf.float64 if wide else loss.dtype
    y_pred = tf.nest.map_structure(lambda t: tf.cast(t, dtype), y_pred)
    y_true = tf.nest.map_structure(lambda t: tf.cast(t, dtype), y_true)
    values = loss.call(y_true, y_pred)
    out_mask = _compat.keras_mask(values)
    if in_mask is not None and out_mask is not None:
        mask = tf.logical_and(tf.cast(in_mask, tf.bool), tf.cast(out_mask, tf.bool))
    else:
        mask = in_mask if in_mask is not None else out_mask
    values = tf.cast(values, tf.float64)
    if values.shape.rank == 0 and sample_weight is None and mask is None:
        n = tf.cast(tf.shape(tf.nest.flatten(y_pred)[0])[0], tf.float64)
        return values * n, n, True  # one value per batch: exact only with one batch
    per_batch = values.shape.rank == 0
    weight, scale = None, None
    if mask is not None:
        weight = tf.cast(mask, tf.float64)
        scale = tf.reduce_sum(weight) / _size(weight)  # valid / total, as Keras's apply_mask
    if sample_weight is not None:
        s = tf.cast(sample_weight, tf.float64)
        if weight is None:
            weight = s
        else:
            weight, s = _same_rank(weight, s)
            weight = weight * _per_sample(s, weight)
    if weight is not None:
        values, weight = _same_rank(values, weight)
        values = values * _per_sample(weight, values)
    numerator = tf.reduce_sum(values)
    if loss.reduction == "mean_with_sample_weight" and weight is not None:
        return numerator, tf.reduce_sum(weight), per_batch
    if scale is not None:
        return numerator, scale * _size(values), per_batch
    return numerator, _size(values), per_batch


class _Refusal(ValueError):
    """A loss the Objective cannot measure exactly: raised as it is, never reworded."""


def _per_batch_refusal(name: str) -> _Refusal:
    return _Refusal(
        f"The loss {name!r} returns one value per batch, not one per sample, so its value over "
        "the data set depends on how the data are batched; return per-sample values (reduce "
        "over the trailing axes only), or put every sample in one batch (`batch_size`)."
    )


def _is_custom_compute_loss(model: keras.Model) -> bool:
    return type(model).compute_loss is not keras.Model.compute_loss


def _loss_name(loss) -> str:
    if isinstance(loss, str):
        return loss
    return getattr(loss, "name", None) or getattr(loss, "__name__", type(loss).__name__)


def _at(path: tuple, structure):
    for key in path:
        structure = structure[key]
    return structure


class _CompiledLoss:
    """Σₖ λₖ Nₖ/Dₖ over the per-output losses of a Keras ``CompileLoss``."""

    def __init__(self, model: keras.Model, compile_loss, name: str):
        self.model = model
        self.compile_loss = compile_loss
        self.name = name
        self.flat: list[_compat.FlatLoss] = []
        self.n_pairs = 0
        self.per_batch: set[str] = set()  # losses that return one value per batch

    def build(self, y, y_pred, w) -> float:
        """Builds Keras's loss on one batch; returns its value there (eagerly).

        Calling the loss updates its per-output loss trackers; they are put back as they were.
        """
        trackers = list(self.compile_loss.metrics)
        saved = [[keras.ops.convert_to_numpy(v) for v in m.variables] for m in trackers]
        value = self.compile_loss(y, y_pred, w)
        for m in self.compile_loss.metrics:
            if m in trackers:
                for v, a in zip(m.variables, saved[trackers.index(m)]):
                    v.assign(a)
            else:
                m.reset_state()
        self.flat = _compat.flat_losses(self.compile_loss)
        for term in self.flat:
            if term.loss.reduction not in _MEAN_REDUCTIONS:
                raise _Refusal(
                    f"The loss {term.name!r} has reduction {term.loss.reduction!r}; the Objective "
                    f"measures mean losses ({', '.join(_MEAN_REDUCTIONS)}): a sum depends on the "
                    "batch size and 'none' is not one number. Pass `loss=` with a mean reduction."
                )
        self.n_pairs = len(self.flat)
        return float(value)

    def _targets(self, y_true, y_pred) -> tuple[list, list]:
        """(y_true, y_pred) of each term, resolved as Keras's ``CompileLoss.call`` does."""
        tree = keras.tree
        true_struct, pred_struct = _compat.build_structures(self.compile_loss)
        try:
            tree.assert_same_structure(pred_struct, y_pred)
        except (ValueError, TypeError):
            y_pred = tree.pack_sequence_as(pred_struct, tree.flatten(y_pred))
        preds = [_at(term.path, y_pred) for term in self.flat]
        try:
            return [_at(t.path, self._align_true(y_true, true_struct)) for t in self.flat], preds
        except (ValueError, TypeError, KeyError, IndexError):
            pass
        # Targets given only for the outputs that have a loss: by key, else in order.
        try:
            return [_at(term.path, y_true) for term in self.flat], preds
        except (ValueError, TypeError, KeyError, IndexError):
            leaves = tree.flatten(y_true)
            if len(leaves) != len(self.flat):
                raise
            return leaves, preds

    def _align_true(self, y_true, true_struct):
        tree = keras.tree
        try:
            tree.assert_same_structure(true_struct, y_true)
            return y_true
        except (ValueError, TypeError):
            pass
        if isinstance(true_struct, dict) and isinstance(y_true, list | tuple):
            names = self.compile_loss.output_names or []
            if len(names) == len(y_true):
                y_true = dict(zip(names, y_true))
        elif isinstance(true_struct, list | tuple) and isinstance(y_true, dict):
            names = self.compile_loss.output_names or []
            if set(names) == set(y_true):
                y_true = [y_true[name] for name in names]
        elif not tree.is_nested(y_true):
            y_true = [y_true]
        return tree.pack_sequence_as(true_struct, tree.flatten(y_true))

    def pairs(self, x, y, w, y_pred) -> list:
        trues, preds = self._targets(y, y_pred)
        out = []
        for term, y_t, y_p in zip(self.flat, trues, preds):
            sw = _at(term.path, w) if w is not None and keras.tree.is_nested(w) else w
            numerator, denominator, per_batch = _loss_pair(term.loss, y_t, y_p, sw)
            if per_batch:
                self.per_batch.add(term.loss.name)
            out += [numerator, denominator]
        return out

    def combine(self, sums) -> dict[str, tf.Tensor]:
        total = tf.constant(0.0, tf.float64)
        parts = {}
        for k, term in enumerate(self.flat):
            value = tf.math.divide_no_nan(sums[2 * k], sums[2 * k + 1])
            weight = 1.0 if term.weight is None else float(term.weight)
            total += weight * value
            parts[f"{term.name}_loss"] = value
        return {"loss": total, **(parts if len(self.flat) > 1 else {})}


class _ModelComputeLoss:
    """A model's own ``compute_loss`` override, averaged over batches weighted by batch size.

    The override's value is all we can see of its loss, so the normalizer is the batch size —
    what ``model.evaluate`` does — rather than a data-set-wide one.
    """

    n_pairs = 1
    per_batch: frozenset[str] = frozenset()

    def __init__(self, model: keras.Model):
        self.model = model
        self.name = f"{type(model).__name__}.compute_loss"

    def build(self, y, y_pred, w) -> float:
        return float("nan")

    def pairs(self, x, y, w, y_pred) -> list:
        if "training" in inspect.signature(self.model.compute_loss).parameters:
            value = self.model.compute_loss(x, y, y_pred, w, training=False)
        else:  # overrides written before Keras 3.3 added the argument
            value = self.model.compute_loss(x, y, y_pred, w)
        n = tf.cast(tf.shape(tf.nest.flatten(y_pred)[0])[0], tf.float64)
        return [tf.cast(value, tf.float64) * n, n]

    def combine(self, sums) -> dict[str, tf.Tensor]:
        return {"loss": sums[0] / sums[1]}


def _resolve_loss(model: keras.Model, loss):
    if loss is not None:
        if not (isinstance(loss, str | keras.losses.Loss | dict | list | tuple) or callable(loss)):
            raise ValueError(
                "Argument `loss` must be None, a name, a keras Loss, a callable or a "
                f"dict/list of them per output. Received: loss={loss!r}."
            )
        names = getattr(model, "output_names", None)
        return _CompiledLoss(model, _compat.make_compile_loss(loss, names), _loss_name(loss))
    if _is_custom_compute_loss(model):
        logger.info(
            "%s overrides compute_loss: the Objective uses it per batch, averaged over batches "
            "weighted by batch size (as model.evaluate does).",
            type(model).__name__,
        )
        return _ModelComputeLoss(model)
    compile_loss = _compat.compiled_loss(model)
    if compile_loss is None:
        raise ValueError(
            "Argument `loss` is None and the model is not compiled with a loss; compile it or "
            "pass `loss=`."
        )
    return _CompiledLoss(model, compile_loss, _loss_name(model.loss))


# --------------------------------------------------------------------------------- metrics
def _accuracy_pair(y_true, y_pred, sample_weight, *, threshold: float, ignore_class):
    """Float64 (Σ s·m·[ŷ = y], Σ s·m): sparse, one-hot or binary accuracy, masks honoured."""
    mask = _compat.keras_mask(y_pred)
    y_pred = tf.convert_to_tensor(y_pred)
    y_true = tf.convert_to_tensor(y_true)
    if y_pred.shape.rank == 1 or y_pred.shape[-1] == 1:  # binary
        p = y_pred if y_pred.shape.rank == 1 else y_pred[..., 0]
        t = tf.reshape(tf.cast(y_true, tf.float32), tf.shape(p)) > 0.5
        correct = tf.cast(tf.equal(p > tf.cast(threshold, p.dtype), t), tf.float64)
        valid = tf.ones_like(correct)
    else:
        pred = tf.argmax(y_pred, axis=-1)
        if y_true.shape.rank == y_pred.shape.rank and y_true.shape[-1] == y_pred.shape[-1]:
            true = tf.argmax(y_true, axis=-1)  # one-hot
        else:
            true = tf.cast(tf.reshape(y_true, tf.shape(pred)), tf.int64)
        correct = tf.cast(tf.equal(pred, true), tf.float64)
        valid = tf.ones_like(correct)
        if ignore_class is not None:
            valid = tf.cast(tf.not_equal(true, ignore_class), tf.float64)
    if mask is not None:
        valid = valid * tf.reshape(tf.cast(mask, tf.float64), tf.shape(correct))
    if sample_weight is not None:
        s = tf.cast(sample_weight, tf.float64)
        if s.shape.rank > correct.shape.rank:
            s = tf.reshape(s, tf.shape(correct))
        while s.shape.rank < correct.shape.rank:
            s = s[..., None]
        valid = valid * s
    return tf.reduce_sum(correct * valid), tf.reduce_sum(valid)


def _callable_pair(fn: Callable, y_true, y_pred, sample_weight):
    """Float64 (Σ sᵢ vᵢ, Σ sᵢ) of a per-sample metric (trailing axes averaged)."""
    values = tf.cast(fn(y_true, y_pred), tf.float64)
    n = tf.shape(tf.nest.flatten(y_pred)[0])[0]
    if values.shape.rank == 0:
        values = tf.fill([n], values)
    elif values.shape.rank > 1:
        values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
    s = tf.ones([n], tf.float64) if sample_weight is None else tf.cast(sample_weight, tf.float64)
    s = tf.reshape(s, [-1])
    return tf.reduce_sum(s * values), tf.reduce_sum(s)


def _loss_options(model: keras.Model, loss) -> tuple[bool, Any]:
    """(from_logits, ignore_class) of the (single) loss, for the built-in accuracy."""
    obj = loss if loss is not None else getattr(model, "loss", None)
    if isinstance(obj, keras.losses.Loss):
        fn_kwargs = getattr(obj, "_fn_kwargs", {}) or {}
        from_logits = bool(getattr(obj, "from_logits", fn_kwargs.get("from_logits", False)))
        ignore_class = getattr(obj, "ignore_class", fn_kwargs.get("ignore_class"))
        return from_logits, ignore_class
    return False, None


def _is_classification(model: keras.Model, loss) -> bool:
    obj = loss if loss is not None else getattr(model, "loss", None)
    name = _loss_name(obj).lower() if obj is not None else ""
    return "crossentropy" in name or name in ("ce",)


def _short(name: str) -> str:
    """Keras's "accuracy" is stored as "acc" (loss-landscape's name for surface files)."""
    return "acc" if name in _ACCURACY_NAMES else name


def _compiled(python_function, signature):
    """``tf.function`` with a fixed signature: one trace per Objective and split.

    TensorFlow keys its "frequent retracing" warning by the code object, so several Objectives
    (each tracing its own closure once) would trigger it wrongly; ``trace_count`` is the check.
    """
    fn = tf.function(python_function, input_signature=signature, autograph=False)
    fn._omit_frequent_tracing_warning = True  # private TF flag; harmless if ignored
    return fn


# ------------------------------------------------------------------------------ flat view
class FlatView:
    """The trainable variables of an Objective as one float64 vector w ∈ ℝⁿ.

    The order is ``objective.trainable_variables``, each variable flattened in C order. Used by
    ``hessian`` (Lanczos on flat vectors) and ``sharpness`` (ascent on flat perturbations).

    Attributes:
        n: The number of trainable parameters.
        shapes: The variables' shapes, in order.
        w0: The weights as a float64 array of shape ``(n,)``.
    """

    def __init__(self, objective: Objective):
        self.objective = objective
        trainable = {id(v) for v in objective.trainable_variables}
        self._slots = [i for i, v in enumerate(objective.variables) if id(v) in trainable]
        self.shapes = [tuple(v.shape) for v in objective.trainable_variables]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self._bounds = np.cumsum(self.sizes)[:-1]
        self.n = int(sum(self.sizes))

    @property
    def w0(self) -> np.ndarray:
        return self.concat([v.value for v in self.objective.trainable_variables])

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """A flat float64 vector of shape (n,) as arrays aligned with the trainable variables."""
        flat = np.asarray(flat, np.float64).reshape(-1)
        if flat.size != self.n:
            raise ValueError(f"Expected a flat vector of {self.n} entries; got {flat.size}.")
        parts = np.split(flat, self._bounds)
        return [p.reshape(s) for p, s in zip(parts, self.shapes)]

    def concat(self, arrays: Sequence) -> np.ndarray:
        """Arrays aligned with the trainable variables as one float64 vector of shape (n,)."""
        return np.concatenate(
            [np.asarray(keras.ops.convert_to_numpy(a), np.float64).reshape(-1) for a in arrays]
        )

    def offsets(self, delta: np.ndarray) -> list:
        """Offsets for ``Objective.evaluate``: δ on the trainable variables, zero elsewhere."""
        out: list = [np.zeros(v.shape, np.float64) for v in self.objective.variables]
        for slot, part in zip(self._slots, self.split(delta)):
            out[slot] = part
        return out

    def direction(self, flat: np.ndarray, metadata: dict | None = None) -> Direction:
        """A flat vector as a ``Direction`` keyed by the trainable variables' paths."""
        variables = self.objective.trainable_variables
        arrays = {
            key: a.astype(keras.backend.standardize_dtype(v.dtype))
            for v, key, a in zip(variables, variables.paths, self.split(flat))
        }
        return Direction(arrays, dict(metadata or {}))


# ------------------------------------------------------------------------------- objective
class Objective:
    """The loss (and metrics) of a model over a data set, as a function of its weights.

    Args:
        model: A built Keras model; its current weights are w0.
        data: ``(x, y)`` or ``(x, y, sample_weight)`` with x, y and the sample weights arrays
            or any nest of arrays Keras takes (dicts of inputs, lists of outputs), a finite
            ``tf.data.Dataset`` of such batches, or a ``keras.utils.PyDataset``.
        loss: None for the model's compiled loss (every output, ``loss_weights``, masks,
            ``ignore_class``, sample weights, and a ``compute_loss`` override), or what
            ``model.compile(loss=...)`` accepts — a name, a keras Loss, a callable
            ``loss(y_true, y_pred)`` returning per-sample values, or a dict/list of them per
            output. Defaults to None.
        batch_size: Batch size for array data. Defaults to 256.
        metrics: ``"auto"``: the model's compiled metrics (reported under Keras's names, with
            "accuracy" shortened to "acc"), or accuracy when the model has none and the loss is
            a cross-entropy; ``"compiled"``: the compiled metrics only; or a sequence of
            ``"accuracy"`` (sparse, one-hot or binary, sample-weighted, masks and the loss's
            ``ignore_class`` honoured; threshold 0 for ``from_logits=True``, else 0.5) and
            callables ``fn(y_true, y_pred) -> per-sample values``. Defaults to ``"auto"``.
        test_data: An optional second data set in the same forms as ``data``, evaluated with
            ``split="test"``. Defaults to None.
        regularization: Add the weight-regularization penalties of the trainable variables
            (the ``kernel_regularizer``/``bias_regularizer`` terms of ``model.losses``, e.g.
            λ‖w‖² for an L2 regularizer, which adds 2λI to the Hessian) to the loss, at the
            evaluated weights. Activity regularizers and other ``add_loss`` terms are never
            included. Defaults to False: the loss is the data term only (``model.evaluate``
            does add the penalties), so that surfaces and spectra show the loss itself.
        steps: The number of batches taken from a dataset (required for an infinite one, e.g.
            ending in ``.repeat()``; a dataset whose cardinality TensorFlow cannot tell, e.g.
            after ``.filter()``, is taken to be finite, as ``model.evaluate`` does). Defaults
            to None: the whole dataset.

    Raises:
        ValueError: the model is not built or has no loss; the data are not in one of the
            forms above, have no targets, are infinite without ``steps``, or do not fit the
            model's inputs/outputs (the message names both structures); the loss has a
            "sum" reduction; or the Objective's loss differs from Keras's own on the first
            batch (a loss structure it cannot reproduce: pass ``loss=``).

    Example:
        >>> obj = Objective(model, (x, y), batch_size=256)
        >>> obj.evaluate()                          # at w0: {"loss": ..., "acc": ...}
        >>> obj.evaluate(offsets=[...])             # at w0 + δ, δ aligned with obj.variables
        >>> obj.evaluate_at([0.5, -0.2], [d1, d2])  # at w0 + 0.5 d1 − 0.2 d2
    """

    def __init__(
        self,
        model: keras.Model,
        data,
        loss=None,
        *,
        batch_size: int = 256,
        metrics: str | Sequence[str | Callable] = "auto",
        test_data=None,
        regularization: bool = False,
        steps: int | None = None,
    ):
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"Argument `model` must be a keras.Model. Received: {type(model).__name__}."
            )
        if not model.built:
            raise ValueError("Argument `model` must be built (call it once or give it an input).")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
            raise ValueError(
                f"Argument `batch_size` must be a positive int. Received: batch_size={batch_size}."
            )
        if batch_size < 1:
            raise ValueError(
                f"Argument `batch_size` must be a positive int. Received: batch_size={batch_size}."
            )
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)):
            raise ValueError(f"Argument `steps` must be a positive int. Received: steps={steps!r}.")
        if steps is not None and steps < 1:
            raise ValueError(f"Argument `steps` must be a positive int. Received: steps={steps}.")
        if not isinstance(regularization, bool):
            raise ValueError(
                "Argument `regularization` must be a bool. "
                f"Received: regularization={regularization!r}."
            )
        self.model = model
        self.regularization = regularization
        self.batch_size = int(batch_size)
        self.steps = steps
        self.variables = float_variables(model, "all")
        trainable = {id(v) for v in model.trainable_variables}
        pairs = [(v, k) for v, k in zip(self.variables, self.variables.paths) if id(v) in trainable]
        self.trainable_variables = ModelVariables([v for v, _ in pairs], [k for _, k in pairs])
        self._splits: dict[str, _Split] = {"train": _Split(data, self.batch_size, steps, "data")}
        if test_data is not None:
            self._splits["test"] = _Split(test_data, self.batch_size, steps, "test_data")
        self._loss = _resolve_loss(model, loss)
        self.loss_name = self._loss.name
        self._pair_metrics: dict[str, Callable] = {}
        self._keras_metrics: keras.metrics.Metric | None = None
        self._keras_metric_names: tuple[str, ...] = ()
        self._probe(metrics, loss)
        self._value_fns: dict[str, Any] = {}
        self._grad_fns: dict[str, Any] = {}
        self._hvp_fns: dict[tuple[str, str], Any] = {}
        self._scales: dict[str, tf.Tensor] = {}
        self.trace_count: dict[str, int] = {}
        self._flat: FlatView | None = None

    # ------------------------------------------------------------------------- construction
    def _probe(self, metrics, loss) -> None:
        """Run the model on a few samples: check the structures, build and check loss/metrics."""
        x, y, w = self._splits["train"].first_batch(min(self.batch_size, 64))
        try:
            y_pred = self.model(x, training=False)
        except Exception as error:  # any failure here is the data not fitting the model
            raise ValueError(
                f"Argument `data` does not fit the model: x is {_structure(x)} but the model's "
                f"inputs are {_model_inputs(self.model)} ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''})."
            ) from error
        try:
            keras_value = self._loss.build(y, y_pred, w)
            pairs = self._loss.pairs(x, y, w, y_pred)
            ours = self._loss.combine(tf.stack([tf.cast(t, tf.float64) for t in pairs]))
        except (ValueError, TypeError, KeyError, tf.errors.InvalidArgumentError) as error:
            if isinstance(error, _Refusal):
                raise
            weights = "" if w is None else f" and sample_weight is {_structure(w)}"
            raise ValueError(
                f"Argument `data` does not fit the loss: y is {_structure(y)}{weights} but the "
                f"model's outputs are {_structure(y_pred)} ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''})."
            ) from error
        ours = float(ours["loss"])
        if self._loss.per_batch and any(not s.single_batch for s in self._splits.values()):
            raise _per_batch_refusal(sorted(self._loss.per_batch)[0])
        if np.isfinite(keras_value) and not np.isclose(
            ours, keras_value, rtol=LOSS_CHECK_RTOL, atol=1e-7
        ):
            raise ValueError(
                f"The Objective could not reproduce the model's compiled loss on the first "
                f"batch (Keras: {keras_value:.8g}, Objective: {ours:.8g}); if the sample weights "
                "are per sample on a per-entry output, give one weight per entry; otherwise pass "
                "`loss=` explicitly."
            )
        self._setup_metrics(metrics, loss, y, y_pred, w)

    def _setup_metrics(self, metrics, loss, y, y_pred, w) -> None:
        compiled = _compat.compiled_metrics(self.model)
        if isinstance(metrics, str):
            if metrics not in ("auto", "compiled"):
                raise ValueError(
                    f"Unknown metrics {metrics!r}; expected 'auto', 'compiled' or a sequence "
                    "of 'accuracy' and callables."
                )
            if compiled is not None:
                if not compiled.built:
                    compiled.build(y, y_pred)
                state = compiled.stateless_reset_state()
                names = tuple(compiled.stateless_result(state))
                if names:
                    self._keras_metrics = compiled
                    self._keras_metric_names = names
                    return
            if metrics == "compiled" or not _is_classification(self.model, loss):
                return
            metrics = ("accuracy",)
        if tf.nest.is_nested(y_pred) and len(tf.nest.flatten(y_pred)) > 1 and metrics:
            raise ValueError(
                "Argument `metrics`: 'accuracy' and callables take single-output models; for "
                "several outputs compile the model with metrics and use metrics='auto'."
            )
        from_logits, ignore_class = _loss_options(self.model, loss)
        for m in metrics:
            if isinstance(m, str) and m in _ACCURACY_NAMES:

                def accuracy(y_true, y_pred, s, t=0.0 if from_logits else 0.5):
                    return _accuracy_pair(y_true, y_pred, s, threshold=t, ignore_class=ignore_class)

                self._pair_metrics["acc"] = accuracy
            elif isinstance(m, str):
                raise ValueError(f"Unknown metric {m!r}; expected 'accuracy' or a callable.")
            elif callable(m):

                def pair(y_true, y_pred, s, fn=m):
                    return _callable_pair(fn, y_true, y_pred, s)

                self._pair_metrics[getattr(m, "__name__", type(m).__name__)] = pair
            else:
                raise ValueError(f"Argument `metrics` entries must be names or callables: {m!r}.")

    # ----------------------------------------------------------------------------- properties
    @property
    def splits(self) -> tuple[str, ...]:
        """The data splits: ``("train",)`` or ``("train", "test")``."""
        return tuple(self._splits)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Keys of ``evaluate``'s result: ``"loss"``, per-output losses, then the metrics."""
        parts = ()
        if isinstance(self._loss, _CompiledLoss) and len(self._loss.flat) > 1:
            parts = tuple(f"{t.name}_loss" for t in self._loss.flat)
        keras_names = tuple(_short(n) for n in self._keras_metric_names)
        return ("loss", *parts, *self._pair_metrics, *keras_names)

    @property
    def flat(self) -> FlatView:
        """The trainable variables as one float64 vector (see ``FlatView``)."""
        if self._flat is None:
            self._flat = FlatView(self)
        return self._flat

    def weights_fingerprint(self) -> str:
        """SHA-256 of the current weights (all floating-point variables, in order)."""
        return fingerprint_arrays(keras.ops.convert_to_numpy(v.value) for v in self.variables)

    def data_fingerprint(self) -> str | None:
        """SHA-256 of the array data of every split, or None if a split is a dataset."""
        arrays = []
        for split in self._splits.values():
            part = split.arrays()
            if part is None:
                return None
            arrays += part
        return fingerprint_arrays(arrays)

    def with_data(self, data, *, batch_size: int | None = None) -> Objective:
        """The same model, loss, metrics and options on other (training) data.

        The copy has its own compiled functions (traced on first use) and no test split; the
        original is untouched. ``worst_case_sharpness`` uses it for per-batch m-sharpness.
        """
        sub = copy.copy(self)
        sub._value_fns, sub._grad_fns, sub._hvp_fns = {}, {}, {}  # traced per split: not shared
        sub.trace_count, sub._scales = {}, {}
        sub._flat = None
        size = batch_size or self.batch_size
        sub._splits = {"train": _Split(data, size, None, "data")}
        return sub

    def batches(self, batch_size: int, *, max_batches: int | None = None) -> Iterator[Objective]:
        """Objectives on consecutive batches of ``batch_size`` training samples (m-sharpness).

        Each has the same model, loss and metrics; the last batch may be smaller.
        """
        for i, (x, y, w) in enumerate(self._split("train").batches(batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            yield self.with_data((x, y) if w is None else (x, y, w), batch_size=batch_size)

    def basis(self, directions: Sequence[Direction]) -> Basis:
        """Stack ``directions`` into device tensors aligned with ``self.variables`` (once)."""
        if not directions:
            raise ValueError("Argument `directions` must contain at least one Direction.")
        aligned = [d.aligned(self.variables) for d in directions]
        tensors = tuple(
            tf.constant(np.stack([a[i] for a in aligned]).astype(v.dtype))
            for i, v in enumerate(self.variables)
        )
        return Basis(tensors, len(directions))

    # ---------------------------------------------------------------------- the batch loop
    def _split(self, split: str) -> _Split:
        if split not in self._splits:
            raise ValueError(f"Unknown split {split!r}; expected one of {self.splits}.")
        return self._splits[split]

    def _n_pairs(self, with_metrics: bool) -> int:
        return self._loss.n_pairs + (len(self._pair_metrics) if with_metrics else 0)

    def _batch_pairs(self, x, y, w, y_pred, with_metrics: bool) -> tf.Tensor:
        """Float64 [N₁, D₁, N₂, D₂, ...] of one batch: the loss terms, then the metrics."""
        terms = list(self._loss.pairs(x, y, w, y_pred))
        if with_metrics:
            for fn in self._pair_metrics.values():
                terms.extend(fn(y, y_pred, w))
        return tf.stack([tf.cast(t, tf.float64) for t in terms])

    def _metric_state(self):
        if self._keras_metrics is None:
            return ()
        return tuple(tf.convert_to_tensor(v) for v in self._keras_metrics.stateless_reset_state())

    def _update_metrics(self, state, y, y_pred, w):
        if self._keras_metrics is None:
            return state
        return tuple(self._keras_metrics.stateless_update_state(list(state), y, y_pred, w))

    def _forward(self, values, x, y, w, with_metrics: bool):
        """(pairs, y_pred) at the variable values ``values`` (inference mode, one batch)."""
        mapping = list(zip(self.variables, values))
        with keras.StatelessScope(state_mapping=mapping):
            y_pred = self.model(x, training=False)
            return self._batch_pairs(x, y, w, y_pred, with_metrics), y_pred

    def _penalty(self, values) -> tf.Tensor:
        """Float64 Σ regularizer(w) over trainable variables, at ``values`` (one per variable)."""
        total = tf.constant(0.0, tf.float64)
        trainable = {id(v) for v in self.trainable_variables}
        for v, value in zip(self.variables, values):
            regularizer = getattr(v, "regularizer", None)
            if regularizer is not None and id(v) in trainable:
                total += tf.cast(regularizer(value), tf.float64)
        return total

    def _finish(self, sums, metric_state, penalty=None) -> dict[str, tf.Tensor]:
        out = self._loss.combine(sums)
        if penalty is not None:
            out["loss"] += penalty
        k = 2 * self._loss.n_pairs
        for i, name in enumerate(self._pair_metrics):
            out[name] = tf.math.divide_no_nan(sums[k + 2 * i], sums[k + 2 * i + 1])
        if self._keras_metrics is not None:
            result = self._keras_metrics.stateless_result(list(metric_state))
            for name in self._keras_metric_names:
                out[_short(name)] = tf.cast(result[name], tf.float64)
        return out

    def _values(self, coefficients, basis) -> list:
        return [
            v.value + tf.tensordot(tf.cast(coefficients, b.dtype), b, axes=1)
            for v, b in zip(self.variables, basis)
        ]

    def _signature(self):
        return [
            tf.TensorSpec([None], tf.float64),
            [tf.TensorSpec([None, *v.shape], v.dtype) for v in self.variables],
        ]

    def _trainable_slots(self) -> list[int]:
        trainable = {id(v) for v in self.trainable_variables}
        return [i for i, v in enumerate(self.variables) if id(v) in trainable]

    def _count(self, key: str) -> None:
        self.trace_count[key] = self.trace_count.get(key, 0) + 1

    def _value_fn(self, split: str):
        fn = self._value_fns.get(split)
        if fn is not None:
            return fn
        data = self._split(split)
        n_terms = 2 * self._n_pairs(True)

        def value(coefficients, basis):
            self._count(split)
            values = self._values(coefficients, basis)

            def body(state, x, y, w):
                sums, metric_state = state
                pairs, y_pred = self._forward(values, x, y, w, True)
                return sums + pairs, self._update_metrics(metric_state, y, y_pred, w)

            init = (tf.zeros([n_terms], tf.float64), self._metric_state())
            sums, metric_state = data.reduce(init, body)
            penalty = self._penalty(values) if self.regularization else None
            return self._finish(sums, metric_state, penalty), sums

        fn = _compiled(value, self._signature())
        self._value_fns[split] = fn
        return fn

    def _grad_fn(self, split: str):
        fn = self._grad_fns.get(split)
        if fn is not None:
            return fn
        data = self._split(split)
        n_terms = 2 * self._n_pairs(True)
        slots = self._trainable_slots()

        def value_and_grad(coefficients, basis):
            self._count(f"{split}/gradient")
            values = self._values(coefficients, basis)

            # ∇ of Σₖ λₖ Nₖ/Dₖ: the Dₖ do not depend on w, so accumulate ∇Nₖ per term and
            # combine once the data-set-wide Dₖ are known.
            n_loss = self._loss.n_pairs
            grads0 = tuple(tf.zeros([n_loss, *self.variables[i].shape], tf.float64) for i in slots)

            def body(state, x, y, w):
                sums, metric_state, grads = state
                vals = [tf.identity(v) for v in values]  # the tape sees the body's tensors
                watched = [vals[i] for i in slots]
                with tf.GradientTape(persistent=n_loss > 1) as tape:
                    tape.watch(watched)
                    pairs, y_pred = self._forward(vals, x, y, w, True)
                    numerators = [pairs[2 * k] for k in range(n_loss)]
                per_term = []
                for numerator in numerators:
                    g = tape.gradient(numerator, watched, unconnected_gradients="zero")
                    per_term.append([tf.cast(tf.convert_to_tensor(a), tf.float64) for a in g])
                del tape
                stacked = [tf.stack([t[j] for t in per_term]) for j in range(len(slots))]
                grads = tuple(a + b for a, b in zip(grads, stacked))
                metric_state = self._update_metrics(metric_state, y, y_pred, w)
                return sums + pairs, metric_state, grads

            init = (tf.zeros([n_terms], tf.float64), self._metric_state(), grads0)
            sums, metric_state, grads = data.reduce(init, body)
            scale = self._term_scales(sums)
            grads = [tf.tensordot(scale, g, axes=1) for g in grads]
            penalty = None
            if self.regularization:
                vals = [tf.identity(v) for v in values]
                with tf.GradientTape() as tape:
                    watched = [vals[i] for i in slots]
                    tape.watch(watched)
                    penalty = self._penalty(vals)
                extra = tape.gradient(penalty, watched, unconnected_gradients="zero")
                grads = [g + tf.cast(e, tf.float64) for g, e in zip(grads, extra)]
            out = self._finish(sums, metric_state, penalty)
            return out, [tf.cast(g, self.variables[i].dtype) for g, i in zip(grads, slots)]

        fn = _compiled(value_and_grad, self._signature())
        self._grad_fns[split] = fn
        return fn

    def _term_scales(self, sums) -> tf.Tensor:
        """λₖ / Dₖ for each loss term (float64 vector): L = Σₖ scaleₖ · Nₖ."""
        if isinstance(self._loss, _CompiledLoss):
            weights = [1.0 if t.weight is None else float(t.weight) for t in self._loss.flat]
        else:
            weights = [1.0]
        return tf.stack(
            [
                tf.math.divide_no_nan(tf.constant(lam, tf.float64), sums[2 * k + 1])
                for k, lam in enumerate(weights)
            ]
        )

    def _hvp_fn(self, split: str, mode: str):
        fn = self._hvp_fns.get((split, mode))
        if fn is not None:
            return fn
        data = self._split(split)
        slots = self._trainable_slots()
        n_loss = self._loss.n_pairs

        def hvp_of(scalar_of, vals, vectors):
            """(aux, H v) for the scalar ``scalar_of(vals)`` w.r.t. the trainable entries."""
            watched = [vals[i] for i in slots]
            if mode == "forward_over_backward":
                # The accumulator pushes v forward through the forward *and* the backward pass:
                # the tangent of g = ∇L(w) along v is H v.
                with tf.autodiff.ForwardAccumulator(watched, vectors) as acc:
                    with tf.GradientTape() as tape:
                        tape.watch(watched)
                        scalar, aux = scalar_of(vals)
                    g = tape.gradient(scalar, watched, unconnected_gradients="zero")
                hv = acc.jvp(g, unconnected_gradients="zero")
            else:
                # H v = ∇(∇L(w) · v), the gradient of a scalar: two reverse passes.
                with tf.GradientTape() as outer:
                    outer.watch(watched)
                    with tf.GradientTape() as inner:
                        inner.watch(watched)
                        scalar, aux = scalar_of(vals)
                    g = inner.gradient(scalar, watched, unconnected_gradients="zero")
                    g = [tf.convert_to_tensor(a) for a in g]  # IndexedSlices of embeddings
                    gv = tf.add_n(
                        [tf.reduce_sum(a * tf.cast(b, a.dtype)) for a, b in zip(g, vectors)]
                    )
                hv = outer.gradient(gv, watched, unconnected_gradients="zero")
            return aux, [tf.cast(tf.convert_to_tensor(h), tf.float64) for h in hv]

        def hvp(coefficients, basis, vectors, scales):
            self._count(f"{split}/hvp/{mode}")
            values = self._values(coefficients, basis)
            hv0 = tuple(tf.zeros(self.variables[i].shape, tf.float64) for i in slots)

            def body(state, x, y, w):
                sums, acc_hv = state
                vals = [tf.identity(v) for v in values]  # the tapes see the body's tensors

                def batch_loss(vs):
                    pairs, _ = self._forward(vs, x, y, w, False)
                    numerators = tf.stack([pairs[2 * k] for k in range(n_loss)])
                    # Σₖ (λₖ/Dₖ) Nₖ with the data-set-wide Dₖ, sliced inside the tape
                    return tf.reduce_sum(scales * numerators), pairs

                pairs, hv = hvp_of(batch_loss, vals, list(vectors))
                return sums + pairs, tuple(a + b for a, b in zip(acc_hv, hv))

            _, hv = data.reduce((tf.zeros([2 * n_loss], tf.float64), hv0), body)
            if self.regularization:
                vals = [tf.identity(v) for v in values]

                def penalty(vs):
                    return self._penalty(vs), tf.zeros([])

                _, extra = hvp_of(penalty, vals, list(vectors))
                hv = [a + b for a, b in zip(hv, extra)]
            return hv

        signature = [
            *self._signature(),
            [tf.TensorSpec(self.variables[i].shape, self.variables[i].dtype) for i in slots],
            tf.TensorSpec([n_loss], tf.float64),
        ]
        fn = _compiled(hvp, signature)
        self._hvp_fns[(split, mode)] = fn
        return fn

    def _normalizers(self, split: str) -> tf.Tensor:
        """λₖ / Dₖ of the loss terms on ``split`` (they do not depend on the weights)."""
        scales = self._scales.get(split)
        if scales is None:
            _, sums = self._value_fn(split)(*self._offset_args(None))
            scales = self._scales[split] = self._term_scales(sums)
        return scales

    # --------------------------------------------------------------------------- public API
    def _offset_args(self, offsets):
        if offsets is None:
            basis = [tf.zeros([1, *v.shape], v.dtype) for v in self.variables]
        else:
            if isinstance(offsets, Direction):
                offsets = offsets.aligned(self.variables)
            if len(offsets) != len(self.variables):
                raise ValueError(
                    f"Argument `offsets` has {len(offsets)} entries; the objective has "
                    f"{len(self.variables)} variables (see `Objective.variables`)."
                )
            basis = [
                tf.expand_dims(tf.cast(o, v.dtype), 0) for o, v in zip(offsets, self.variables)
            ]
        return tf.constant([1.0], tf.float64), basis

    @staticmethod
    def _to_float(result) -> dict[str, float]:
        return {k: float(v) for k, v in result.items()}

    def evaluate(self, offsets=None, *, split: Split = "train") -> dict[str, float]:
        """Loss and metrics at ``w0 + offsets``.

        Args:
            offsets: None (at w0), a ``Direction``, or one tensor per entry of
                ``self.variables`` (all floating-point variables, trainable first as in
                ``model.variables``). Defaults to None.
            split: ``"train"`` or ``"test"``. Defaults to ``"train"``.

        Returns:
            ``{"loss": ..., <per-output losses>, <metrics>}`` as Python floats (keys as in
            ``metric_names``).
        """
        return self._to_float(self._value_fn(split)(*self._offset_args(offsets))[0])

    def evaluate_at(
        self,
        coefficients: Sequence[float],
        directions: Sequence[Direction] | Basis,
        *,
        split: Split = "train",
    ) -> dict[str, float]:
        """Loss and metrics at ``w0 + Σₖ coefficients[k] · directions[k]``.

        Pass a ``Basis`` from ``self.basis(directions)`` to avoid converting the directions at
        every call (``compute_surface`` does).
        """
        basis = directions if isinstance(directions, Basis) else self.basis(directions)
        coefficients = tf.constant(np.asarray(coefficients, np.float64).reshape(-1))
        if int(coefficients.shape[0]) != basis.k:
            raise ValueError(
                f"Got {int(coefficients.shape[0])} coefficients for {basis.k} directions."
            )
        return self._to_float(self._value_fn(split)(coefficients, list(basis.tensors))[0])

    def value_and_gradient(
        self, offsets=None, *, split: Split = "train"
    ) -> tuple[dict[str, float], list[tf.Tensor]]:
        """Loss/metrics and the gradient of the loss at ``w0 + offsets``.

        Returns:
            ``(values, gradients)``: gradients aligned with ``self.trainable_variables``, of the
            same data-set-wide loss that ``evaluate`` reports (float64 accumulation).
        """
        values, grads = self._grad_fn(split)(*self._offset_args(offsets))
        return self._to_float(values), grads

    def hessian_vector_product(
        self,
        vector,
        offsets=None,
        *,
        split: Split = "train",
        mode: HVPMode = "backward_over_backward",
    ) -> list[tf.Tensor]:
        """The exact product ``H v`` of the loss's Hessian w.r.t. the trainable weights.

        H is the Hessian of the same data-set-wide loss that ``evaluate`` reports (inference
        mode: BatchNorm moving statistics held fixed, no dropout; plus the weight penalties if
        ``regularization=True``), at ``w0 + offsets``. The per-batch products are summed in
        float64 in one compiled batch loop, traced once per split and mode; the normalizers
        Dₖ (which do not depend on the weights) are computed once per split.

        Args:
            vector: v, a ``Direction`` (its trainable entries are used; missing ones are zero)
                or one array per entry of ``self.trainable_variables``.
            offsets: Where to take the Hessian, as in ``evaluate``. Defaults to None (at w0).
            split: ``"train"`` or ``"test"``. Defaults to ``"train"``.
            mode: ``"backward_over_backward"`` differentiates the scalar ``∇L · v`` with a
                second ``GradientTape`` around the first (the backward pass is recorded and
                reversed once more). ``"forward_over_backward"`` pushes v through the gradient
                computation with ``tf.autodiff.ForwardAccumulator`` around a ``GradientTape``:
                the textbook choice (about twice a gradient in JAX), but TensorFlow computes
                most forward-mode rules by the double-VJP trick, so here it is the slower one:
                on the CNN with BatchNorm of ``benchmarks/hessian.py`` 2.3–2.5× a gradient
                for backward-over-backward against 2.5–2.7× (interleaved medians). Both give
                the same product to rounding. Defaults to ``"backward_over_backward"``, the
                faster measured.

        Returns:
            ``H v`` as float64 tensors aligned with ``self.trainable_variables``.
        """
        if mode not in HVP_MODES:
            raise ValueError(f"Unknown mode {mode!r}; expected one of {HVP_MODES}.")
        if isinstance(vector, Direction):
            by_id = dict(zip(map(id, self.variables), vector.aligned(self.variables)))
            vector = [by_id[id(v)] for v in self.trainable_variables]
        if len(vector) != len(self.trainable_variables):
            raise ValueError(
                f"Argument `vector` has {len(vector)} entries; the objective has "
                f"{len(self.trainable_variables)} trainable variables."
            )
        vector = [tf.cast(a, v.dtype) for a, v in zip(vector, self.trainable_variables)]
        for a, v in zip(vector, self.trainable_variables):
            if tuple(a.shape) != tuple(v.shape):
                raise ValueError(
                    f"Argument `vector` has shape {tuple(a.shape)} for {v.path}; the variable "
                    f"has shape {tuple(v.shape)}."
                )
        scales = self._normalizers(split)
        return self._hvp_fn(split, mode)(*self._offset_args(offsets), vector, scales)
