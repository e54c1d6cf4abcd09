"""What the Objective checks about a model once, when it is built, before any expensive work.

* ``finite_weights`` / ``finite_loss``: a diverged model (non-finite weights, or a non-finite
  loss at its own weights) is refused in one sentence: every loss, gradient and curvature there
  is undefined, and a surface or spectrum of it would be NaN after all its work.
* ``reach``: every variable the Objective lists is moved by its offsets (``_reach``), or the
  Objective says which layer it cannot move.
* ``batch_coupling``: the loss (and the model's own ``add_loss`` terms, and the model's
  outputs) of a batch is the sum of its samples' parts — checked on the probe batch against its
  two halves. A loss that couples samples (``keras.losses.Circle``, triplet, contrastive,
  InfoNCE), a batch-level ``add_loss`` term or a model that mixes samples has a value over the
  data set that depends on the batching: exact in one batch (``model.evaluate`` with the whole
  data in one batch), refused in several.
* ``zero_directions``: a direction that is zero (or not finite) on the model's variables.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import keras
import numpy as np

from landscape import _reach, _terms
from landscape.directions import variable_owners
from sam._backend import adapter

logger = logging.getLogger("landscape")

#: relative tolerance of the batch-additivity check (per-sample values of halves vs the whole)
COUPLING_RTOL = {"float16": 2e-2, "bfloat16": 2e-2}
COUPLING_RTOL_DEFAULT = 1e-4


def finite_weights(variables: Sequence) -> None:
    """Refuse trainable weights that hold NaN or ±inf (a diverged training run)."""
    bad = []
    for v in variables:
        a = np.asarray(keras.ops.convert_to_numpy(v.value), np.float64)
        count = int(a.size - np.count_nonzero(np.isfinite(a)))
        if count:
            bad.append((v.path, count))
    if bad:
        total = sum(c for _, c in bad)
        where = ", ".join(p for p, _ in bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise ValueError(
            f"Argument `model` has {total} non-finite weight values (NaN or inf, in {where}): "
            "training diverged, so every loss, gradient and curvature at these weights is "
            "undefined; analyse a checkpoint from before it diverged."
        )


def finite_loss(value: float, x) -> None:
    """Refuse a non-finite loss at the model's own weights (finite weights, checked before)."""
    if not np.isfinite(value):
        n = _leading(x)
        raise ValueError(
            f"The loss is {value} at the model's own weights on the first {n} samples of "
            "`data`: the data hold non-finite values or the model overflows on them, so every "
            "loss, gradient and curvature there is undefined."
        )


def _leading(x) -> int | None:
    leaves = [t for t in keras.tree.flatten(x) if getattr(t, "shape", None) is not None]
    if not leaves or not leaves[0].shape or leaves[0].shape[0] is None:
        return None
    return int(leaves[0].shape[0])


def reach(obj, x, reads: set) -> None:
    """Check that the offsets reach every variable of ``obj`` (see ``landscape._reach``).

    Layers with cached state get it recomputed inside the scope; trainable variables captured
    outside Keras's variable access are refused; non-trainable ones are remembered, and
    offsets that move them are refused (``check_offsets``).
    """
    unread = [v for v in obj.variables if id(v) not in reads]
    if not unread:
        return
    owners = variable_owners(obj.model)
    obj._cached_layers = _reach.cached_state_layers(unread, owners)
    if obj._cached_layers:
        again: set = set()
        obj._run_model(x, reads=again)
        unread = [v for v in unread if id(v) not in again]
        logger.info(
            "The Objective recomputes the cached state of %s from the offset variables.",
            ", ".join(repr(layer.name) for layer in obj._cached_layers),
        )
    caught = _reach.captured(unread, lambda: obj.model(x, training=False))
    trainable = {id(v) for v in obj.trainable_variables}
    frozen = [v for v in caught if id(v) in trainable]
    if frozen:
        raise _reach.captured_refusal(frozen, owners)
    obj._unmovable = {id(v): v for v in caught}
    obj._owners = owners


def check_offsets(obj, arrays: Sequence, argument: str) -> None:
    """Refuse offsets (aligned with ``obj.variables``) that move a variable the scope cannot."""
    if not obj._unmovable:
        return
    moved = [
        v
        for v, a in zip(obj.variables, arrays)
        if id(v) in obj._unmovable and np.any(np.asarray(a) != 0)
    ]
    if moved:
        raise _reach.moved_refusal(argument, moved, obj._owners)


def zero_directions(obj, aligned: Sequence[Sequence[np.ndarray]], argument: str) -> None:
    """Refuse a direction that is all zeros, or not finite, on ``obj``'s variables."""
    for i, arrays in enumerate(aligned):
        total = sum(float(np.sum(np.square(np.asarray(a, np.float64)))) for a in arrays)
        if not np.isfinite(total):
            raise ValueError(
                f"Argument `{argument}`: direction {i} holds non-finite values (NaN or inf), "
                "so every point along it would be undefined; it was made from non-finite "
                "weights (a diverged model?)."
            )
        if total == 0.0:
            raise ValueError(
                f"Argument `{argument}`: direction {i} is zero on every variable of the model, "
                "so a surface along it would be flat: what it could move is ignored (biases, "
                "normalization), quantized (int8 kernels), frozen, or zero itself (a reloaded "
                "LoRA model's factors; filter normalization scales to them)."
            )


def _half(part, lo: int, hi: int):
    if part is None:
        return None
    return keras.tree.map_structure(lambda t: t[lo:hi], part)


def _pairs(obj, x, y, w) -> tuple[np.ndarray, list[np.ndarray]]:
    added: list = []
    y_pred = obj._run_model(x, added=added)
    pairs = obj._batch_pairs(x, y, w, y_pred, False, added)
    return np.asarray(pairs, np.float64), [_numpy(t) for t in keras.tree.flatten(y_pred)]


def _numpy(t) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t), np.float64)


def batch_coupling(obj) -> None:
    """Check that the loss of a probe batch (up to ``PROBE_SAMPLES`` samples from the start of
    each split) is the sum of its halves' (see the module's doc).

    A term that is not makes the Objective exact in one batch only: refused in several.
    """
    for split in obj._splits.values():
        if not split.single_batch:  # one batch: model.evaluate's one-batch value, coupled or not
            _coupling(obj, split.probe_batch(PROBE_SAMPLES))


#: samples of the probe batch of the coupling check (more samples, fewer degenerate batches:
#: a pair loss needs pairs of one class in it)
PROBE_SAMPLES = 64


def _coupling(obj, batch: tuple) -> None:
    x, y, w = batch
    n = _leading(x)
    if n is None or n < 2:
        return
    h = n // 2
    try:
        whole, outputs = _pairs(obj, x, y, w)
        first, out_a = _pairs(obj, *(_half(p, 0, h) for p in (x, y, w)))
        second, out_b = _pairs(obj, *(_half(p, h, n) for p in (x, y, w)))
    except (ValueError, TypeError, *adapter().errors) as error:
        logger.debug("The batch-coupling check could not split the probe batch: %s", error)
        return
    rtol = COUPLING_RTOL.get(obj.precision, COUPLING_RTOL_DEFAULT)
    scale = np.abs(first) + np.abs(second) + np.abs(whole)
    bad = ~np.isclose(first + second, whole, rtol=rtol, atol=rtol * 1e-3 * float(scale.max()))
    coupled = [k // 2 for k in np.flatnonzero(bad)]
    if not coupled:
        return
    mixes = any(
        not np.allclose(np.concatenate([a, b]), o, rtol=rtol, atol=rtol * 1e-3)
        for a, b, o in zip(out_a, out_b, outputs)
        if a.ndim and o.ndim
    )
    names = _term_names(obj)
    what = sorted({names[k] for k in coupled})
    if mixes:
        what = ["the model itself (a layer mixes the samples of a batch)"]
    raise coupling_refusal(what[0], n)


def _term_names(obj) -> list[str]:
    if isinstance(obj._loss, _terms.CompiledLoss):
        names = [f"the loss {t.loss.name!r}" for t in obj._loss.flat]
    else:
        names = [f"the loss {obj._loss.name!r}"]
    if obj._with_model_losses:
        names.append("the sum of the model's own losses (add_loss, activity regularizers)")
    return names


def coupling_refusal(what: str, n: int) -> ValueError:
    return _terms.Refusal(
        f"{what[0].upper()}{what[1:]} couples the samples of a batch (the loss of a probe "
        f"batch of {n} samples is not the sum of its halves'), so its value over the data set "
        "depends on the batching; put every sample in one batch (`batch_size` at least the "
        "number of samples, or a dataset of one batch)."
    )
