"""SAM's ``fit`` step on JAX and PyTorch, in backend-free code (``keras.ops`` and ``sam._backend``).

The same algorithm as the TensorFlow step (``sam.train_step``, Foret et al. 2020, Algorithm 1):
1. clean pass at w: loss, metrics, non-trainable state updates (BatchNorm statistics, RNG seeds)
   and g(w), from a stateless call differentiated by the backend's autodiff;
2. ε(w) = ``sam.perturbation(...)`` (SAM or ASAM; ρ = 0.05 around a plain optimizer);
3. perturbed pass at w + ε(w), stateless from the non-trainable state the clean pass started
   from (same BatchNorm statistics, same dropout mask), its state updates discarded;
4. the base optimizer applies g(w + ε(w)) inside ``sam.sam_update()``.

The step itself is written statefully: it reads and assigns Keras variables. PyTorch's trainer
runs it as it is; on JAX, ``sam_train_step(model, data, state=state)`` runs it inside a
``keras.StatelessScope`` that maps every variable to its value in ``state`` and reads the new
state back from the scope (keras-team/keras#18881), so the step stays pure under ``jax.jit``.
No pass assigns w + ε to the weights, so the custom loop's ``first_step`` is never used here.

The two passes are separate functions, ``portable_clean_pass`` and ``portable_perturbed_pass``,
which the SAM family's members use for their own gradients (``sam.variants``).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import keras
from keras import ops

from sam._backend import adapter
from sam._compat import unbuilt_layers
from sam.optimizer import RHO, SAM, all_finite, sam_perturbation


class PassStart(NamedTuple):
    """Where a clean pass started: copies of the non-trainable values (BatchNorm statistics,
    RNG seeds) and the backend's global RNG state (``random_state``; PyTorch's unseeded
    dropout), for the perturbed pass to start from the same place."""

    values: list
    rng: Any


def split_optimizer(optimizer):
    """(the SAM inside ``optimizer`` or None, the LossScaleOptimizer around it or None, the
    optimizer inside the LossScaleOptimizer)."""
    scaler = optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else None
    inner = scaler.inner_optimizer if scaler is not None else optimizer
    return (inner if isinstance(inner, SAM) else None), scaler, inner


def step_variables(model) -> list[list]:
    """The variables a step reads, in the groups of Keras's JAX state: trainable,
    non-trainable, optimizer, metrics."""
    return [
        list(model.trainable_variables),
        list(model.non_trainable_variables),
        list(model.optimizer.variables),
        list(model.metrics_variables),
    ]


def unscale(grads, scaler, inner):
    """The true gradients from loss-scaled ones (dynamic scale and a static loss_scale_factor)."""
    factor = None if scaler is None else scaler.dynamic_scale.value
    base = inner.base_optimizer if isinstance(inner, SAM) else inner
    if base.loss_scale_factor is not None:
        static = ops.convert_to_tensor(base.loss_scale_factor, "float32")
        factor = static if factor is None else factor * static
    if factor is None:
        return list(grads)
    return [None if g is None else g / ops.cast(factor, g.dtype) for g in grads]


def _compute_loss(model, x, y, y_pred, sample_weight):
    compute = getattr(model, "_compute_loss", model.compute_loss)  # tolerates old overrides
    return compute(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)


def _stateless_loss(model, params, state, x, y, sample_weight):
    """The loss-scaled loss of a stateless training pass at ``params`` from non-trainable
    ``state``, with (loss, predictions, new non-trainable state, new metrics values).

    Every variable the pass may read is mapped (the optimizer's loss scale, the metrics' state):
    under JAX's ``fit`` the variables themselves hold stale values.
    """
    trainable, non_trainable, optimizer, metrics = step_variables(model)
    others = optimizer + metrics
    mapping = list(zip(trainable, params)) + list(zip(non_trainable, state))
    mapping += [(v, v.value) for v in others]
    with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
        y_pred = model(x, training=True)
        loss = _compute_loss(model, x, y, y_pred, sample_weight)
        scaled = model.optimizer.scale_loss(loss)
    new_state = [scope.get_current_value(v) for v in non_trainable]
    new_metrics = [scope.get_current_value(v) for v in metrics]
    return scaled, (loss, y_pred, new_state, new_metrics)


def _batch_size(x):
    return ops.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]


def portable_clean_pass(model, x, y, sample_weight, scaler, inner):
    """The clean pass of a SAM step: (state it started from, predictions, true gradients).

    It assigns the pass's non-trainable state (BatchNorm statistics, RNG seeds) and the
    loss's own metric updates, and updates the loss tracker, as Keras's own step does;
    ``state`` (a ``PassStart``) is what ``portable_perturbed_pass`` starts from. The gradients
    are unscaled (``LossScaleOptimizer``), one per trainable variable.
    """
    trainable, non_trainable, _, metrics = step_variables(model)
    values = [ops.copy(v.value) for v in non_trainable]  # PyTorch assigns in place
    state = PassStart(values, adapter().random_state())
    params = [v.value for v in trainable]

    def loss_fn(p):
        return _stateless_loss(model, p, values, x, y, sample_weight)

    _, (loss, y_pred, new_state, new_metrics), grads = adapter().value_and_grad(loss_fn, params)
    with adapter().no_grad():
        for v, value in zip(non_trainable + metrics, new_state + new_metrics):
            v.assign(value)
        tracker = getattr(model, "_loss_tracker", None)
        if tracker is not None:
            tracker.update_state(loss, sample_weight=_batch_size(x))
    return state, y_pred, unscale(grads, scaler, inner)


def portable_perturbed_pass(model, x, y, sample_weight, perturbed, state):
    """The loss-scaled gradients at the weights ``perturbed`` (w + ε, one per trainable
    variable), from a stateless pass that starts where the clean pass did (``state``, the
    ``PassStart`` from ``portable_clean_pass``: same statistics, same dropout mask) and whose
    own state updates are discarded."""

    def loss_fn(p):
        return _stateless_loss(model, p, state.values, x, y, sample_weight)

    with adapter().replay_random(state.rng):
        return adapter().value_and_grad(loss_fn, list(perturbed))[2]


def _perturbation(sam, grads, weights, variables):
    if sam is None:  # a plain optimizer: SAM with the default radius around it
        return sam_perturbation(grads, rho=RHO)
    return sam.perturbation(grads, weights, variables)


def portable_sam_gradients(model, x, y, sample_weight, sam, scaler, inner):
    """Clean pass (updates state and metrics) and stateless perturbed pass on one (micro-)batch:
    (loss-scaled gradients at w + ε(w), clean predictions, whether g(w) was finite)."""
    if sam is not None and hasattr(sam, "_fit_gradients"):  # the SAM family, sam.variants
        return sam._fit_gradients(model, x, y, sample_weight, scaler, inner)
    tvars = model.trainable_variables
    state, y_pred, grads = portable_clean_pass(model, x, y, sample_weight, scaler, inner)
    with adapter().no_grad():
        finite = all_finite(grads)
        weights = [v.value for v in tvars]
        e_w = _perturbation(sam, grads, weights, tvars)
        perturbed = [w if e is None else w + e for w, e in zip(weights, e_w)]
    adv = portable_perturbed_pass(model, x, y, sample_weight, perturbed, state)
    return adv, y_pred, finite


def _slice(structure, lo, hi):
    return keras.tree.map_structure(lambda t: None if t is None else t[lo:hi], structure)


def _split_gradients(model, x, y, sample_weight, sam, scaler, inner):
    """m-sharpness: each micro-batch its own ε, the gradients averaged with weights n_i / n
    (the gradient of the full batch's mean loss); a batch smaller than m leaves some
    micro-batches empty (the batch size is static under ``jax.jit``)."""
    n, splits = int(_batch_size(x)), sam.num_batch_splits
    grads, finite = None, ops.convert_to_tensor(True)
    for i in range(splits):
        lo, hi = (i * n) // splits, ((i + 1) * n) // splits
        if hi <= lo:
            continue
        xi, yi, swi = _slice(x, lo, hi), _slice(y, lo, hi), _slice(sample_weight, lo, hi)
        g, y_pred, f = portable_sam_gradients(model, xi, yi, swi, sam, scaler, inner)
        with adapter().no_grad():
            model.compute_metrics(xi, yi, y_pred, sample_weight=swi)
            g = [None if gi is None else gi * ops.cast((hi - lo) / n, gi.dtype) for gi in g]
            finite = ops.logical_and(finite, f)
            grads = g if grads is None else [a if b is None else a + b for a, b in zip(grads, g)]
    return grads, finite


def _prepare(model):
    optimizer = model.optimizer
    sam, scaler, inner = split_optimizer(optimizer)
    adapter().check_one_process()
    if unbuilt_layers(model):
        raise ValueError(
            "The model must be built before its first SAM step on this backend; call it on a "
            "batch of data (or build it) before fit."
        )
    tvars = model.trainable_variables
    if sam is not None and any(id(v) not in sam._roles for v in tvars):
        sam.assign_roles(model)  # ASAM's T by each variable's layer
    if tvars and not optimizer.built:
        optimizer.build(tvars)
    return optimizer, sam, scaler, inner, tvars


def portable_train_step(model, data):
    """One SAM step, written statefully (see the module's docstring); returns the logs."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    optimizer, sam, scaler, inner, tvars = _prepare(model)
    if not tvars:  # nothing to train: the pass's loss, state and metrics, as Keras's step
        warnings.warn("The model does not have any trainable weights.", stacklevel=2)
        with adapter().no_grad():
            y_pred = model(x, training=True)
            loss = _compute_loss(model, x, y, y_pred, sample_weight)
            tracker = getattr(model, "_loss_tracker", None)
            if tracker is not None:
                tracker.update_state(loss, sample_weight=_batch_size(x))
            return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    if sam is None or sam.num_batch_splits == 1:
        grads, y_pred, finite = portable_sam_gradients(
            model, x, y, sample_weight, sam, scaler, inner
        )
        with adapter().no_grad():
            logs = model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    else:
        grads, finite = _split_gradients(model, x, y, sample_weight, sam, scaler, inner)
        logs = model.get_metrics_result()
    with adapter().no_grad():
        if scaler is not None:  # a first-pass overflow skips the step too: a NaN for the scaler
            nan = float("nan")
            grads = [None if g is None else ops.where(finite, g, ops.cast(nan, g.dtype))
                     for g in grads]  # fmt: skip
        if sam is not None:
            with sam.sam_update():
                adapter().apply_update(optimizer, grads, tvars)
        else:
            adapter().apply_update(optimizer, grads, tvars)
    return logs
