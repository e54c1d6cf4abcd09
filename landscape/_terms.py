"""The model's own loss and metrics as wide-float (numerator, denominator) pairs per batch.

A Keras loss reduces a batch to N / D; ``loss_pair`` returns N and D separately (masks,
``ignore_class`` and sample weights merged as ``keras.losses.Loss.__call__`` merges them), so
that the Objective sums both over the whole data set. ``CompiledLoss`` does this for every
output of a compiled (or given) loss with its ``loss_weights``; ``ModelComputeLoss`` wraps a
model's own ``compute_loss`` override. Metrics: ``accuracy_pair`` and ``callable_pair``.

Backend-neutral: only ``keras.ops``, ``keras.tree`` and the backend tensors' own operators, so
the pairs run on every Keras backend (inside a ``keras.StatelessScope`` too). The pairs are in
the dtype ``_wide()`` returns: "float64" where the backend computes in it (TensorFlow, PyTorch,
JAX with ``jax_enable_x64``), else the widest float it has ("float32" on JAX without x64, which
would silently turn float64 into float32). Keras's type promotion turns float64 into float32 on
the backends other than TensorFlow (``keras.src.backend.common.dtypes.result_type``), so the
wide arithmetic here keeps to ops that do not promote (``_divide_no_nan``, ``_mean_trailing``
instead of ``keras.ops.divide_no_nan`` and ``keras.ops.mean``, float32 on torch). Keras's own
losses still compute in float32 there (``keras.ops.mean`` inside ``mean_squared_error``), so
a float64 model's per-sample losses are float32-accurate on torch; the sums here are float64.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from sam import _compat

logger = logging.getLogger("landscape")

ACCURACY_NAMES = ("accuracy", "acc")
MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")


def _wide() -> str:
    """The dtype of the pairs: "float64" where the backend computes in it, else "float32".

    TensorFlow and PyTorch have float64; JAX has it only with ``jax_enable_x64`` (read at each
    call, so ``jax.experimental.enable_x64`` counts); without it JAX makes float64 into float32.
    """
    if keras.backend.backend() == "jax":
        import jax

        return keras.backend.standardize_dtype(jax.dtypes.canonicalize_dtype("float64"))
    return "float64"


def _rank(x) -> int:
    return len(x.shape)


def _divide_no_nan(a, b):
    """``a / b``, 0 where ``b`` is 0 (``keras.ops.divide_no_nan`` gives float32 on torch)."""
    ops = keras.ops
    zero = ops.equal(b, 0)
    return ops.where(zero, ops.zeros_like(a), a / ops.where(zero, ops.ones_like(b), b))


def _mean_trailing(values):
    """The mean over every axis but the first (``keras.ops.mean`` gives float32 on torch)."""
    count = 1
    for dim in keras.ops.shape(values)[1:]:
        count = count * dim
    return keras.ops.sum(values, axis=list(range(1, _rank(values)))) / keras.ops.cast(
        count, _wide()
    )


def _same_rank(a, b):
    """Keras's rule: squeeze or expand a trailing unit axis so that a and b have equal rank."""
    ra, rb = _rank(a), _rank(b)
    if ra == rb + 1 and a.shape[-1] == 1:
        if rb == 1:
            b = keras.ops.expand_dims(b, -1)
        else:
            a = keras.ops.squeeze(a, -1)
    elif rb == ra + 1 and b.shape[-1] == 1:
        if ra == 1:
            a = keras.ops.expand_dims(a, -1)
        else:
            b = keras.ops.squeeze(b, -1)
    return a, b


def _per_sample(weight, values):
    """``weight`` with unit axes appended up to the rank of ``values``.

    Per-sample weights on per-entry values (a sequence output) weight every entry of their sample.
    Keras broadcasts them against the last axis instead, which fails, or silently mixes samples
    when that axis happens to have the batch's length; the check against Keras's own loss on the
    first batch then refuses the data rather than report either number.
    """
    while 0 < _rank(weight) < _rank(values):
        weight = weight[..., None]
    return weight


def _size(t):
    """The number of entries of ``t`` as a wide float: a constant where the shape is static
    (one op fewer per batch where ops run eagerly)."""
    if all(isinstance(d, int) for d in t.shape):
        return keras.ops.convert_to_tensor(float(math.prod(t.shape)), _wide())
    return keras.ops.cast(keras.ops.size(t), _wide())


def _batch_size(y_pred):
    """The batch size of (the first output of) ``y_pred``, as a wide float."""
    return keras.ops.cast(keras.ops.shape(keras.tree.flatten(y_pred)[0])[0], _wide())


def loss_pair(loss: keras.losses.Loss, y_true, y_pred, sample_weight) -> tuple:
    """Wide (N, D, per_batch) of one batch: Keras's reduced ``loss(y_true, y_pred, s)`` is N / D.

    ``per_batch`` is True when ``loss.call`` returns one value for the batch rather than one per
    sample: then N / D is that value (weighted by the batch size), exact only in one batch.

    Follows ``keras.losses.Loss.__call__``: the mask of ``y_pred`` and the one the loss sets on
    its values (``ignore_class``) are merged into the sample weights; the "sum_over_batch_size"
    normalizer counts unmasked entries, "mean_with_sample_weight" sums the merged weights.
    """
    in_mask = _compat.keras_mask(y_pred)
    # Keras computes in the loss's dtype (floatx); a float64 model keeps float64 here.
    standardize = keras.backend.standardize_dtype
    wide = any(standardize(t.dtype) == "float64" for t in keras.tree.flatten(y_pred))
    dtype = "float64" if wide else loss.dtype
    y_pred = keras.tree.map_structure(lambda t: keras.ops.cast(t, dtype), y_pred)
    y_true = keras.tree.map_structure(lambda t: keras.ops.cast(t, dtype), y_true)
    values = loss.call(y_true, y_pred)
    out_mask = _compat.keras_mask(values)
    if in_mask is not None and out_mask is not None:
        mask = keras.ops.logical_and(
            keras.ops.cast(in_mask, "bool"), keras.ops.cast(out_mask, "bool")
        )
    else:
        mask = in_mask if in_mask is not None else out_mask
    values = keras.ops.cast(values, _wide())
    if _rank(values) == 0 and sample_weight is None and mask is None:
        n = _batch_size(y_pred)
        return values * n, n, True  # one value per batch: exact only with one batch
    per_batch = _rank(values) == 0
    weight, scale = None, None
    if mask is not None:
        weight = keras.ops.cast(mask, _wide())
        scale = keras.ops.sum(weight) / _size(weight)  # valid / total, as Keras's apply_mask
    if sample_weight is not None:
        s = keras.ops.cast(sample_weight, _wide())
        if weight is None:
            weight = s
        else:
            weight, s = _same_rank(weight, s)
            weight = weight * _per_sample(s, weight)
    if weight is not None:
        values, weight = _same_rank(values, weight)
        values = values * _per_sample(weight, values)
    numerator = keras.ops.sum(values)
    if loss.reduction == "mean_with_sample_weight" and weight is not None:
        return numerator, keras.ops.sum(weight), per_batch
    if scale is not None:
        return numerator, scale * _size(values), per_batch
    return numerator, _size(values), per_batch


class Refusal(ValueError):
    """A loss the Objective cannot measure exactly: raised as it is, never reworded."""


def per_batch_refusal(name: str) -> Refusal:
    return Refusal(
        f"The loss {name!r} returns one value per batch, not one per sample, so its value over "
        "the data set depends on how the data are batched; return per-sample values (reduce "
        "over the trailing axes only), or put every sample in one batch (`batch_size`)."
    )


def _is_custom_compute_loss(model: keras.Model) -> bool:
    return type(model).compute_loss is not keras.Model.compute_loss


def loss_name(loss) -> str:
    if isinstance(loss, str):
        return loss
    return getattr(loss, "name", None) or getattr(loss, "__name__", type(loss).__name__)


def _at(path: tuple, structure):
    for key in path:
        structure = structure[key]
    return structure


class CompiledLoss:
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
        # copies: a variable's NumPy view can share its buffer, which the call updates in place
        saved = [[np.array(keras.ops.convert_to_numpy(v)) for v in m.variables] for m in trackers]
        value = self.compile_loss(y, y_pred, w)
        for m in self.compile_loss.metrics:
            if m in trackers:
                for v, a in zip(m.variables, saved[trackers.index(m)]):
                    v.assign(a)
            else:
                m.reset_state()
        self.flat = _compat.flat_losses(self.compile_loss)
        for term in self.flat:
            if term.loss.reduction not in MEAN_REDUCTIONS:
                raise Refusal(
                    f"The loss {term.name!r} has reduction {term.loss.reduction!r}; the Objective "
                    f"measures mean losses ({', '.join(MEAN_REDUCTIONS)}): a sum depends on the "
                    "batch size and 'none' is not one number. Pass `loss=` with a mean reduction."
                )
        self.n_pairs = len(self.flat)
        return float(keras.ops.convert_to_numpy(value))

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
            numerator, denominator, per_batch = loss_pair(term.loss, y_t, y_p, sw)
            if per_batch:
                self.per_batch.add(term.loss.name)
            out += [numerator, denominator]
        return out

    def combine(self, sums) -> dict[str, Any]:
        total = keras.ops.zeros((), _wide())
        parts = {}
        for k, term in enumerate(self.flat):
            value = _divide_no_nan(sums[2 * k], sums[2 * k + 1])
            weight = 1.0 if term.weight is None else float(term.weight)
            total += weight * value
            parts[f"{term.name}_loss"] = value
        return {"loss": total, **(parts if len(self.flat) > 1 else {})}


class ModelComputeLoss:
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
        n = _batch_size(y_pred)
        return [keras.ops.cast(value, _wide()) * n, n]

    def combine(self, sums) -> dict[str, Any]:
        return {"loss": sums[0] / sums[1]}


def resolve_loss(model: keras.Model, loss):
    if loss is not None:
        if not (isinstance(loss, str | keras.losses.Loss | dict | list | tuple) or callable(loss)):
            raise ValueError(
                "Argument `loss` must be None, a name, a keras Loss, a callable or a "
                f"dict/list of them per output. Received: loss={loss!r}."
            )
        names = getattr(model, "output_names", None)
        return CompiledLoss(model, _compat.make_compile_loss(loss, names), loss_name(loss))
    if _is_custom_compute_loss(model):
        logger.info(
            "%s overrides compute_loss: the Objective uses it per batch, averaged over batches "
            "weighted by batch size (as model.evaluate does).",
            type(model).__name__,
        )
        return ModelComputeLoss(model)
    compile_loss = _compat.compiled_loss(model)
    if compile_loss is None:
        raise ValueError(
            "Argument `loss` is None and the model is not compiled with a loss; compile it or "
            "pass `loss=`."
        )
    return CompiledLoss(model, compile_loss, loss_name(model.loss))


# --------------------------------------------------------------------------------- metrics
def accuracy_pair(y_true, y_pred, sample_weight, *, threshold: float, ignore_class):
    """Wide-float (Σ s·m·[ŷ = y], Σ s·m): sparse, one-hot or binary accuracy, masks honoured."""
    ops = keras.ops
    mask = _compat.keras_mask(y_pred)
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    if _rank(y_pred) == 1 or y_pred.shape[-1] == 1:  # binary
        p = y_pred if _rank(y_pred) == 1 else y_pred[..., 0]
        t = ops.reshape(ops.cast(y_true, "float32"), ops.shape(p)) > 0.5
        correct = ops.cast(ops.equal(p > ops.cast(threshold, p.dtype), t), _wide())
        valid = None  # every entry counts (the common case: no ones_like, no product)
    else:
        pred = ops.argmax(y_pred, axis=-1)
        if _rank(y_true) == _rank(y_pred) and y_true.shape[-1] == y_pred.shape[-1]:
            true = ops.argmax(y_true, axis=-1)  # one-hot
        else:
            true = ops.cast(ops.reshape(y_true, ops.shape(pred)), pred.dtype)
        correct = ops.cast(ops.equal(pred, true), _wide())
        valid = None
        if ignore_class is not None:
            valid = ops.cast(ops.not_equal(true, ignore_class), _wide())
    if mask is not None:
        mask = ops.reshape(ops.cast(mask, _wide()), ops.shape(correct))
        valid = mask if valid is None else valid * mask
    if sample_weight is not None:
        s = ops.cast(sample_weight, _wide())
        if _rank(s) > _rank(correct):
            s = ops.reshape(s, ops.shape(correct))
        while _rank(s) < _rank(correct):
            s = s[..., None]
        valid = s * ops.ones_like(correct) if valid is None else valid * s  # s broadcast
    if valid is None:
        return ops.sum(correct), _size(correct)
    return ops.sum(correct * valid), ops.sum(valid)


def callable_pair(fn: Callable, y_true, y_pred, sample_weight):
    """Wide-float (Σ sᵢ vᵢ, Σ sᵢ) of a per-sample metric (trailing axes averaged)."""
    ops = keras.ops
    values = ops.cast(fn(y_true, y_pred), _wide())
    n = ops.shape(keras.tree.flatten(y_pred)[0])[0]
    if _rank(values) == 0:
        values = ops.broadcast_to(values, (n,))
    elif _rank(values) > 1:
        values = _mean_trailing(values)
    s = ops.ones((n,), _wide()) if sample_weight is None else ops.cast(sample_weight, _wide())
    s = ops.reshape(s, (-1,))
    return ops.sum(s * values), ops.sum(s)


def loss_options(model: keras.Model, loss) -> tuple[bool, Any]:
    """(from_logits, ignore_class) of the (single) loss, for the built-in accuracy."""
    obj = loss if loss is not None else getattr(model, "loss", None)
    if isinstance(obj, keras.losses.Loss):
        fn_kwargs = getattr(obj, "_fn_kwargs", {}) or {}
        from_logits = bool(getattr(obj, "from_logits", fn_kwargs.get("from_logits", False)))
        ignore_class = getattr(obj, "ignore_class", fn_kwargs.get("ignore_class"))
        return from_logits, ignore_class
    return False, None


def is_classification(model: keras.Model, loss) -> bool:
    obj = loss if loss is not None else getattr(model, "loss", None)
    name = loss_name(obj).lower() if obj is not None else ""
    return "crossentropy" in name or name in ("ce",)


def short_name(name: str) -> str:
    """Keras's "accuracy" is stored as "acc" (loss-landscape's name for surface files)."""
    return "acc" if name in ACCURACY_NAMES else name
