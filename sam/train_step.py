"""The SAM training step for ``model.fit``: ``sam_train_step(model, data)`` and ``SAMModel``.

One step on a batch (Foret et al. 2020, Algorithm 1):
1. clean pass at w: loss, metrics, BatchNorm statistics and the gradient g(w);
2. ε(w) from g(w) (SAM or ASAM, see ``sam.optimizer``);
3. perturbed pass at w + ε(w), run as a *stateless* call: the weights are never assigned, BatchNorm
   statistics and RNG state are left as the clean pass made them, and the pass starts from the
   same state (same dropout mask) as the clean one;
4. the base optimizer updates w with g(w + ε(w)).

Because nothing is assigned in step 3, each replica of a ``tf.distribute`` strategy can use its
own ε (the default, as google-research/sam) or the all-reduced one (``sync_perturbations=True``).
"""

from __future__ import annotations

import warnings

import keras

from sam import _backend
from sam._compat import (
    all_layers,
    init_as_functional,
    is_functional_call,
    record_reads,
    symbolic_build,
    unbuilt_layers,
)
from sam._portable_step import split_optimizer
from sam.optimizer import RHO, SAM, all_finite, sam_perturbation

if _backend.name() == "tensorflow":  # JAX and PyTorch run sam._portable_step, without TensorFlow
    import tensorflow as tf


def _build(model, x, optimizer):
    """Build the model, then the optimizer, before the step reads any variable.

    ``fit`` traces its step as a ``tf.function``, which may create variables in its first trace
    only. A subclassed model is usually built by its first call, i.e. inside the step; read
    before that call, ``model.trainable_variables`` is empty, so the optimizer state would be made
    in a later trace and fail ("tf.function only supports singleton tf.Variables created on the
    first call"). A symbolic call builds the model as ``fit`` does under a distribution strategy,
    without running it on data or touching its state.
    """
    if unbuilt_layers(model):
        try:
            symbolic_build(model, x)
        except Exception as e:
            if isinstance(e, ValueError):
                raise
            raise RuntimeError(
                "Unable to build the model before its first SAM step; build it yourself first "
                f"(call it on a batch of data). Exception encountered: {e!r}"
            ) from e
    tvars = model.trainable_variables
    sam = split_optimizer(optimizer)[0]
    if sam is not None and any(id(v) not in sam._roles for v in tvars):
        sam.assign_roles(model)  # ASAM's T and SAM-ON's selection by each variable's layer
    if tvars and not optimizer.built:  # the loss scale and SAM's state must exist before use
        optimizer.build(tvars)
    return tvars


def _replica_count():
    return tf.distribute.get_strategy().num_replicas_in_sync


def _unscale(grads, scaler, inner):
    """The true gradients from loss-scaled ones (dynamic scale and a static loss_scale_factor)."""
    factor = 1.0
    if scaler is not None:
        factor = scaler.dynamic_scale
    base = inner.base_optimizer if isinstance(inner, SAM) else inner
    if base.loss_scale_factor is not None:
        factor = factor * base.loss_scale_factor
    if isinstance(factor, float) and factor == 1.0:
        return grads
    return [None if g is None else g / tf.cast(factor, g.dtype) for g in grads]


def _compute_loss(model, x, y, y_pred, sample_weight):
    compute = getattr(model, "_compute_loss", model.compute_loss)  # tolerates old overrides
    return compute(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)


def _perturbation(sam, grads, weights, variables):
    if sam is None:  # a plain optimizer: SAM with the default radius around it, as the seed did
        return sam_perturbation(grads, rho=RHO)
    return sam.perturbation(grads, weights, variables)


def clean_pass(model, x, y, sample_weight, scaler, inner):
    """The clean pass of a SAM step: (state it started from, predictions, true gradients).

    It updates the loss tracker, BatchNorm statistics and RNG state as Keras's own step does;
    ``state`` is the non-trainable state before it (BN statistics, RNG seeds), which the
    perturbed pass reuses. The gradients are unscaled (``LossScaleOptimizer``).
    """
    # tf.identity reads the state now; `v.value` alone is the variable, read after the pass.
    state = [tf.identity(v.value) for v in model.non_trainable_variables]
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = _compute_loss(model, x, y, y_pred, sample_weight)
        tracker = getattr(model, "_loss_tracker", None)
        if tracker is not None:
            batch = tf.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]
            tracker.update_state(loss * _replica_count(), sample_weight=batch)
        scaled = model.optimizer.scale_loss(loss)
    return state, y_pred, _unscale(tape.gradient(scaled, model.trainable_variables), scaler, inner)


def perturbed_pass(model, x, y, sample_weight, perturbed, mapping, clean=None):
    """The loss-scaled gradient at w + ε (``perturbed``): a stateless pass in which the
    variables read as ``mapping`` says, so BN statistics and RNG state are left untouched.

    With the clean pass's gradients ``clean``, a trainable variable that the clean pass
    differentiates but the stateless pass never reads (a layer that captured its handle, e.g.
    ``TFSMLayer``) is refused: ε cannot reach it and it would be trained with a zero gradient.
    """
    with tf.GradientTape() as tape:
        tape.watch(perturbed)
        scope = keras.StatelessScope(state_mapping=mapping, collect_losses=True)
        reads = record_reads(scope)
        with scope:
            y_adv = model(x, training=True)
            loss_adv = _compute_loss(model, x, y, y_adv, sample_weight)
            scaled_adv = model.optimizer.scale_loss(loss_adv)
    if clean is not None:
        _refuse_unreached(model, [v for v, _ in mapping[: len(perturbed)]], clean, reads)
    return tape.gradient(scaled_adv, perturbed)


def _refuse_unreached(model, tvars, clean, reads) -> None:
    missed = [v for v, g in zip(tvars, clean) if g is not None and id(v) not in reads]
    if not missed:
        return
    owners = {}
    for layer in all_layers(model):
        for v in layer.variables:
            owners[id(v)] = layer  # outer layers come first: the innermost owner wins
    names = sorted({f"{owners[id(v)].name!r} ({type(owners[id(v)]).__name__})" for v in missed})
    raise ValueError(
        f"SAM cannot perturb the trainable variables of the layer {', '.join(names)}: it reads "
        "them outside Keras's variable access (e.g. a SavedModel's captured handles), so the "
        "perturbed pass would see no ε there and train them with a zero gradient; set "
        "`layer.trainable = False`, or rebuild the layer from Keras layers."
    )


def _sam_gradients(model, x, y, sample_weight, sam, scaler, inner):
    """Clean pass (updates state and metrics) and stateless perturbed pass on one (micro-)batch.

    Returns the loss-scaled gradients at w + ε(w), the clean predictions, and whether the clean
    gradients were finite.
    """
    if sam is not None and hasattr(sam, "_fit_gradients"):  # the SAM family, sam.variants
        return sam._fit_gradients(model, x, y, sample_weight, scaler, inner)
    tvars = model.trainable_variables
    state, y_pred, grads = clean_pass(model, x, y, sample_weight, scaler, inner)

    ctx = tf.distribute.get_replica_context()
    if sam is not None and sam.sync_perturbations and ctx is not None and _replica_count() > 1:
        # Each replica's loss is already divided by the replica count: the sum is the global mean.
        present = [i for i, g in enumerate(grads) if g is not None]
        reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
        for i, g in zip(present, reduced):
            grads[i] = g
    finite = all_finite(grads)

    weights = [v.value for v in tvars]
    e_w = _perturbation(sam, grads, weights, tvars)
    perturbed = [w if e is None else w + e for w, e in zip(weights, e_w)]  # w + ε(w)
    mapping = list(zip(tvars, perturbed)) + list(zip(model.non_trainable_variables, state))
    adv = perturbed_pass(model, x, y, sample_weight, perturbed, mapping, clean=grads)
    return adv, y_pred, finite


def _slice(structure, lo, hi):
    """Rows lo:hi of every tensor of ``structure`` (None, e.g. no sample weights, stays None)."""
    return keras.tree.map_structure(lambda t: None if t is None else t[lo:hi], structure)


def _if_nonempty(nonempty, run, variables):
    """``run()`` -> (gradients, finite) for a non-empty micro-batch, else zero gradients.

    Eagerly an empty micro-batch gives ``(None, None)``; in a graph a ``tf.cond`` keeps the None
    pattern of the gradients (unused variables stay untouched by the base optimizer).
    """
    if tf.executing_eagerly():
        return run() if bool(nonempty) else (None, None)
    pattern = []

    def true_fn():
        grads, finite = run()
        pattern[:] = [g is None for g in grads]
        return [tf.convert_to_tensor(g) for g in grads if g is not None], finite

    def false_fn():
        zeros = [tf.zeros(v.shape, v.dtype) for v, none in zip(variables, pattern) if not none]
        return zeros, tf.constant(True)

    present, finite = tf.cond(nonempty, true_fn, false_fn)
    present = iter(present)
    return [None if none else next(present) for none in pattern], finite


def sam_train_step(model, data, state=None):
    """One SAM step for ``model.fit``: call it from ``train_step``.

    Works when ``model.optimizer`` is a ``SAM``, a plain optimizer (then SAM with ρ = 0.05 around
    it), or a ``LossScaleOptimizer`` around either (what ``compile`` makes under the
    ``mixed_float16`` policy): first-pass gradients are unscaled before the norm, and an overflow
    in either pass skips the step. Sample weights and ``model.losses`` (regularizers) count in
    both passes; the returned loss and metrics are those of the clean pass.

    On TensorFlow and PyTorch ``fit`` calls ``train_step(self, data)`` and the step updates the
    variables in place. On JAX ``fit`` calls ``train_step(self, state, data)`` inside
    ``jax.jit`` and expects ``(logs, new_state)``: pass the state on, as
    ``sam_train_step(self, data, state=state)``, which returns both. The SAM family
    (``sam.variants``) runs in ``fit`` on TensorFlow only in this version.

    Args:
        model: A compiled ``keras.Model``.
        data: The batch, as ``fit`` passes it: ``x``, ``(x, y)`` or ``(x, y, sample_weight)``.
        state: On JAX, the state ``fit`` passes to ``train_step``: the values of the trainable,
            non-trainable, optimizer and metrics variables. Defaults to None (TensorFlow and
            PyTorch, which take none).

    Returns:
        The metrics dict of the clean pass, as ``Model.train_step`` returns it; with ``state``,
        ``(metrics, new_state)``.

    Raises:
        ValueError: For a ``state`` off JAX or none on JAX, and for a member of the SAM family
            off TensorFlow.

    Example:

    ```python
    class MyModel(keras.Model):
        def train_step(self, data):  # TensorFlow, PyTorch
            return sam_train_step(self, data)

    class MyJaxModel(keras.Model):
        def train_step(self, state, data):  # JAX
            return sam_train_step(self, data, state=state)
    ```
    """
    backend = _backend.name()
    if state is not None:
        from sam._portable_step import portable_train_step, step_variables

        groups = step_variables(model)
        return _backend.adapter().stateful_step(
            groups, state, lambda: portable_train_step(model, data)
        )
    if backend == "jax":
        raise ValueError(
            "Argument `state` of sam_train_step is required on JAX, whose fit calls "
            "train_step(self, state, data): return sam_train_step(self, data, state=state). "
            "Received: state=None."
        )
    if backend != "tensorflow":
        from sam._portable_step import portable_train_step

        return portable_train_step(model, data)
    return _tensorflow_train_step(model, data)


def _tensorflow_train_step(model, data):
    """``sam_train_step`` on TensorFlow: ``tf.GradientTape``, ``tf.distribute`` and ``tf.cond``."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    optimizer = model.optimizer
    sam, scaler, inner = split_optimizer(optimizer)
    tvars = _build(model, x, optimizer)
    if not tvars:  # nothing to train: the clean pass's loss, state and metrics, as Keras's step
        warnings.warn("The model does not have any trainable weights.", stacklevel=2)
        _, y_pred, _ = clean_pass(model, x, y, sample_weight, scaler, inner)
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    splits = sam.num_batch_splits if sam is not None else 1
    if splits == 1:
        grads, y_pred, finite = _sam_gradients(model, x, y, sample_weight, sam, scaler, inner)
        metrics = model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    else:
        # m-sharpness: each micro-batch gets its own ε; the second-pass gradients are averaged
        # with weights n_i / n, which is exactly the gradient of the full batch's mean loss.
        n = tf.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]
        grads, finite = None, tf.constant(True)
        for i in range(splits):
            lo, hi = (i * n) // splits, ((i + 1) * n) // splits

            def micro_batch(lo=lo, hi=hi):
                xi, yi, swi = _slice(x, lo, hi), _slice(y, lo, hi), _slice(sample_weight, lo, hi)
                g, y_pred, f = _sam_gradients(model, xi, yi, swi, sam, scaler, inner)
                model.compute_metrics(xi, yi, y_pred, sample_weight=swi)
                share = tf.cast(hi - lo, tf.float32) / tf.cast(n, tf.float32)
                return [None if gi is None else gi * tf.cast(share, gi.dtype) for gi in g], f

            # A batch smaller than m (an epoch's last batch) leaves some micro-batches empty.
            g, f = _if_nonempty(hi > lo, micro_batch, tvars)
            if g is None:
                continue
            finite = tf.logical_and(finite, f)
            grads = g if grads is None else [a if b is None else a + b for a, b in zip(grads, g)]
        metrics = model.get_metrics_result()

    if scaler is not None:
        # A first-pass overflow must skip the step too: hand the loss scaler a non-finite gradient.
        nan = float("nan")
        grads = [None if g is None else tf.where(finite, g, tf.cast(nan, g.dtype)) for g in grads]
    if sam is not None:
        with sam.sam_update():
            optimizer.apply(grads, tvars)
    else:
        optimizer.apply(grads, tvars)
    return metrics


@keras.saving.register_keras_serializable(package="sam")
class SAMModel(keras.Model):
    """A ``keras.Model`` whose ``fit`` trains with SAM (``train_step = sam_train_step``).

    Build it like any functional or subclassed model and compile it with a ``SAM`` optimizer (a
    plain optimizer gets SAM with ρ = 0.05 around it). Subclassed models may be built by their
    first call, inside ``fit``'s first step.

    Example:

    ```python
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs))
    model = SAMModel(inputs, outputs)
    model.compile(optimizer=SAM(keras.optimizers.SGD(0.1)), loss="sparse_categorical_crossentropy")

    class MyModel(SAMModel):  # or subclassed: layers in __init__, built on first call
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(10)

        def call(self, x):
            return self.dense(x)
    ```
    """

    def __init__(self, *args, **kwargs):
        if is_functional_call(args, kwargs):
            # Not keras.Model.__init__: it would make SAMModel itself derive from Functional, and
            # with it every subclassed SAMModel made afterwards.
            init_as_functional(self, *args, **kwargs)
        else:
            super().__init__(*args, **kwargs)

    def train_step(self, *args):
        """``sam_train_step``: ``(data)`` on TensorFlow and PyTorch, ``(state, data)`` on JAX."""
        if len(args) == 2:
            state, data = args
            return sam_train_step(self, data, state=state)
        return sam_train_step(self, *args)
