"""SAMModel in fit: the update, BatchNorm, metrics, mixed precision, distribution."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from sam_reference import compile_mlp, grad, make_data, make_mlp, reference_step, sam_gradient

from sam import SAM, SAMModel


def weights_of(model):
    return [v.numpy() for v in model.trainable_variables]


def assert_weights_close(actual, expected, rtol=1e-6):
    for a, b in zip(actual, expected):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-9)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("jit", [False, True])
def test_fit_step_equals_hand_computed_sam(adaptive, jit):
    x, y, sw = make_data(n=12)
    rho = 0.5 if adaptive else 0.05
    model = make_mlp(model_cls=SAMModel)
    w0 = weights_of(model)
    model.compile(
        optimizer=SAM(keras.optimizers.SGD(0.1), rho=rho, adaptive=adaptive),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    # Two steps of a whole batch each: sample weights and the L2 term count in both passes.
    for _ in range(2):
        model.train_on_batch(x, y, sample_weight=sw)
        w0 = reference_step(w0, x, y, sw, lr=0.1, rho=rho, adaptive=adaptive)
    assert_weights_close(weights_of(model), w0)


def test_reported_loss_and_metrics_are_the_clean_pass():
    x, y, sw = make_data(n=12)
    model = compile_mlp(make_mlp(model_cls=SAMModel), SAM(keras.optimizers.SGD(0.1), rho=0.5))
    w0 = weights_of(model)
    import sam_reference

    clean_loss = float(sam_reference.loss_fn([tf.constant(w) for w in w0], x, y, sw))
    logits = model.predict(x, verbose=0)
    clean_acc = np.mean(np.argmax(logits, -1) == y)
    out = model.train_on_batch(x, y, sample_weight=sw, return_dict=True)
    assert out["loss"] == pytest.approx(clean_loss, rel=1e-10)
    assert out["accuracy"] == pytest.approx(clean_acc)


def test_plain_optimizer_gets_sam_with_default_rho():
    x, y, sw = make_data(n=12)
    a = compile_mlp(make_mlp(model_cls=SAMModel), keras.optimizers.SGD(0.1))
    b = compile_mlp(make_mlp(model_cls=SAMModel), SAM(keras.optimizers.SGD(0.1), rho=0.05))
    for m in (a, b):
        m.train_on_batch(x, y, sample_weight=sw)
    for u, v in zip(weights_of(a), weights_of(b)):
        np.testing.assert_array_equal(u, v)


def bn_model():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(6, name="d1")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.5, name="bn")(h)
    h = keras.layers.Dropout(0.3, seed=3)(keras.layers.Activation("relu")(h))
    outputs = keras.layers.Dense(3, name="d2")(h)
    return SAMModel(inputs, outputs)


def test_batchnorm_statistics_come_from_the_clean_pass_only():
    x, y, _ = make_data(n=16, dtype="float32")
    model = bn_model()
    model.compile(
        optimizer=SAM(keras.optimizers.SGD(0.5), rho=2.0),  # a big ρ: the perturbed pass differs
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    reference = bn_model()
    reference.set_weights(model.get_weights())
    reference(x, training=True)  # one clean forward pass at w updates the moving statistics
    model.train_on_batch(x, y)
    bn, ref_bn = model.get_layer("bn"), reference.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), ref_bn.moving_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), ref_bn.moving_variance.numpy(), rtol=1e-6
    )


def test_dropout_mask_is_shared_by_both_passes():
    """With ρ = 0 the perturbed pass is the clean pass: the update must equal plain SGD's."""
    x, y, _ = make_data(n=16, dtype="float32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = bn_model()
    model.compile(optimizer=SAM(keras.optimizers.SGD(0.1), rho=0.0), loss=loss)
    w0 = model.get_weights()
    seed_state = [v.numpy() for v in model.non_trainable_variables]
    model.train_on_batch(x, y)
    plain = bn_model()
    plain.set_weights(w0)
    for v, s in zip(plain.non_trainable_variables, seed_state):
        v.assign(s)
    with tf.GradientTape() as tape:
        value = loss(y, plain(x, training=True))
    grads = tape.gradient(value, plain.trainable_variables)
    for v, g in zip(plain.trainable_variables, grads):
        v.assign_sub(0.1 * g)
    for a, b in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_frozen_layer_and_unused_variable():
    class WithUnused(keras.layers.Layer):
        def build(self, shape):
            self.unused = self.add_weight(shape=(2,), initializer="ones", name="unused")

        def call(self, x):
            return x

    x, y, _ = make_data(n=12, dtype="float32")
    inputs = keras.Input((4,))
    frozen = keras.layers.Dense(5, activation="relu", name="frozen")
    frozen.trainable = False
    h = WithUnused(name="with_unused")(frozen(inputs))
    model = SAMModel(inputs, keras.layers.Dense(3, name="head")(h))
    model.compile(
        optimizer=SAM(keras.optimizers.SGD(0.1)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    frozen_before = [w.copy() for w in frozen.get_weights()]
    head_before = model.get_layer("head").get_weights()[0].copy()
    model.fit(x, y, epochs=2, batch_size=6, verbose=0)
    for a, b in zip(frozen.get_weights(), frozen_before):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.get_layer("with_unused").unused.numpy(), np.ones(2))
    assert not np.array_equal(model.get_layer("head").get_weights()[0], head_before)


@pytest.mark.parametrize("n", [10, 2])
def test_batch_splits_average_ragged_micro_batches(n):
    """m = 3 on a batch of 10 (3/3/4) and of 2 (one micro-batch empty)."""
    x, y, sw = make_data(n=n)
    model = make_mlp(model_cls=SAMModel)
    w0 = weights_of(model)
    compile_mlp(model, SAM(keras.optimizers.SGD(0.1), rho=0.3, num_batch_splits=3))
    model.train_on_batch(x, y, sample_weight=sw)
    bounds = [(i * n) // 3 for i in range(4)]
    g = [np.zeros_like(w) for w in w0]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi == lo:
            continue
        gi = sam_gradient(w0, x[lo:hi], y[lo:hi], sw[lo:hi], rho=0.3)
        g = [a + (hi - lo) / n * b for a, b in zip(g, gi)]
    assert_weights_close(weights_of(model), [w - 0.1 * gi for w, gi in zip(w0, g)])
    # and it differs from one ε for the whole batch
    whole = reference_step(w0, x, y, sw, lr=0.1, rho=0.3)
    if n == 10:
        assert not np.allclose(weights_of(model)[0], whole[0], rtol=1e-6)


@pytest.mark.parametrize("weights", ["none", "sample", "class"])
def test_batch_splits_train_in_plain_fit(weights):
    """m = 3 in fit over an epoch of 11 examples in batches of 4 (4, 4, 3: ragged last batch)."""
    x, y, sw = make_data(n=11)
    class_weight = {0: 0.5, 1: 2.0, 2: 1.25}
    kwargs = {"sample": {"sample_weight": sw}, "class": {"class_weight": class_weight}}
    per_example = {"none": None, "sample": sw, "class": np.array([class_weight[c] for c in y])}
    model = make_mlp(model_cls=SAMModel)
    w = weights_of(model)
    compile_mlp(model, SAM(keras.optimizers.SGD(0.1), rho=0.3, num_batch_splits=3))
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, **kwargs.get(weights, {}))
    weight = per_example[weights]
    for start in range(0, 11, 4):
        xb, yb = x[start : start + 4], y[start : start + 4]
        wb = None if weight is None else weight[start : start + 4]
        n = len(xb)
        bounds = [(i * n) // 3 for i in range(4)]
        g = [np.zeros_like(wi) for wi in w]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            part = None if wb is None else wb[lo:hi]
            gi = sam_gradient(w, xb[lo:hi], yb[lo:hi], part, rho=0.3)
            g = [a + (hi - lo) / n * b for a, b in zip(g, gi)]
        w = [wi - 0.1 * gi for wi, gi in zip(w, g)]
    assert_weights_close(weights_of(model), w)


@pytest.mark.parametrize("wrapped", [True, False], ids=["SAM", "plain SGD"])
def test_mixed_float16_fit_decreases_the_loss(mnist_small, wrapped):
    (x, y), _ = mnist_small
    keras.mixed_precision.set_global_policy("mixed_float16")
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(10, activation="softmax", dtype="float32")(h)
    model = SAMModel(inputs, outputs)
    base = keras.optimizers.SGD(0.05, momentum=0.9)
    model.compile(
        optimizer=SAM(base) if wrapped else base,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(x[:1024], y[:1024], batch_size=64, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)


def test_loss_scale_overflow_skips_the_step_and_keeps_weights():
    keras.mixed_precision.set_global_policy("mixed_float16")
    x, y, _ = make_data(n=8, dtype="float32")
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3, dtype="float32")(keras.layers.Dense(5)(inputs))
    model = SAMModel(inputs, outputs)
    optimizer = keras.optimizers.LossScaleOptimizer(
        SAM(keras.optimizers.SGD(0.1)), initial_scale=2.0**120
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = model.get_weights()
    model.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert float(optimizer.dynamic_scale) == 2.0**119


# -- tf.distribute on two logical CPU devices -----------------------------------------------------


def mirrored_step(sync):
    x, y, _ = make_data(n=8)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = make_mlp(model_cls=SAMModel)
        compile_mlp(model, SAM(keras.optimizers.SGD(0.1), rho=0.3, sync_perturbations=sync))
    w0 = weights_of(model)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return x, y, w0, weights_of(model)


def test_mirrored_synced_perturbation_equals_single_device_sam_on_global_batch():
    x, y, w0, w1 = mirrored_step(sync=True)
    assert_weights_close(w1, reference_step(w0, x, y, lr=0.1, rho=0.3))


def test_mirrored_default_perturbs_each_replica_with_its_own_gradient():
    x, y, w0, w1 = mirrored_step(sync=False)
    halves = [slice(0, 4), slice(4, 8)]
    g = [sam_gradient(w0, x[h], y[h], rho=0.3) for h in halves]
    expected = [w - 0.1 * (a + b) / 2 for w, a, b in zip(w0, *g)]
    assert_weights_close(w1, expected)
    # and this is not single-device SAM on the global batch
    assert not np.allclose(w1[0], reference_step(w0, x, y, lr=0.1, rho=0.3)[0], rtol=1e-6)


def test_gradient_helper_matches_keras():
    """The reference loss is Keras's: its gradient equals tape.gradient of compute_loss."""
    x, y, sw = make_data(n=12)
    model = compile_mlp(make_mlp(), keras.optimizers.SGD(0.1))
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x, y, model(x, training=True), sw)
    g = tape.gradient(loss, model.trainable_variables)
    for a, b in zip(g, grad(weights_of(model), x, y, sw)):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-10)
