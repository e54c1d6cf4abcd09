"""SAM optimizer: the maths, the first_step/second_step API, configuration and state."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from sam_reference import compile_mlp, epsilon, grad, make_data, make_mlp, reference_step

from sam import SAM, SAMModel, asam_perturbation, sam_perturbation, sam_train_step


def weights_of(model):
    return [v.numpy() for v in model.trainable_variables]


# -- the pure functions ---------------------------------------------------------------------------


def test_sam_perturbation_is_rho_times_unit_gradient():
    g = [np.array([[3.0, 0.0]], "float64"), None, np.array([4.0], "float64")]
    e = sam_perturbation(g, rho=0.5, eps=1e-12)
    assert e[1] is None
    np.testing.assert_allclose(e[0].numpy(), [[0.3, 0.0]], rtol=1e-12)
    np.testing.assert_allclose(e[2].numpy(), [0.4], rtol=1e-12)
    assert e[0].dtype == tf.float64


def test_sam_perturbation_norm_in_float32_for_float16_gradients():
    g = [tf.constant([300.0, 400.0], tf.float16)]  # ‖g‖² = 250000 overflows float16
    e = sam_perturbation(g, rho=1.0)
    assert e[0].dtype == tf.float16
    np.testing.assert_allclose(e[0].numpy().astype("float32"), [0.6, 0.8], rtol=1e-3)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradient_gives_zero_perturbation(bad):
    g = [np.array([1.0, bad], "float32"), np.array([2.0], "float32")]
    for e in sam_perturbation(g) + asam_perturbation(g, [np.ones(2, "float32"), np.ones(1)]):
        np.testing.assert_array_equal(e.numpy(), np.zeros_like(e.numpy()))


def test_asam_perturbation_matches_formula_and_skips_biases():
    rng = np.random.default_rng(0)
    w = [rng.normal(size=(3, 2)), rng.normal(size=(2,))]
    g = [rng.normal(size=(3, 2)), rng.normal(size=(2,))]
    e = asam_perturbation(g, w, rho=0.7, eta=0.1)
    expected = epsilon(w, g, 0.7, adaptive=True, eta=0.1)
    for a, b in zip(e, expected):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-12)
    # bias: T = 1, so ε_b is parallel to g_b
    cos = np.dot(e[1].numpy(), g[1]) / np.linalg.norm(e[1].numpy()) / np.linalg.norm(g[1])
    assert cos == pytest.approx(1.0)


# -- first_step / second_step against an independent computation ---------------------------------


def manual_step(model, opt, x, y, sw):
    loss_obj = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
    with tf.GradientTape() as tape:
        loss = loss_obj(y, model(x, training=True), sample_weight=sw) + tf.add_n(model.losses)
    opt.first_step(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    with tf.GradientTape() as tape:
        loss = loss_obj(y, model(x, training=True), sample_weight=sw) + tf.add_n(model.losses)
    opt.second_step(tape.gradient(loss, model.trainable_variables), model.trainable_variables)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_first_second_step_equal_hand_computed_update(adaptive, mode):
    model = make_mlp()
    x, y, sw = make_data()
    w0 = weights_of(model)
    rho = 0.5 if adaptive else 0.05
    opt = SAM(keras.optimizers.SGD(0.1), rho=rho, adaptive=adaptive)
    step = manual_step
    if mode != "eager":
        step = tf.function(manual_step, jit_compile=mode == "xla")
    for _ in range(2):
        step(model, opt, x, y, sw)
        w0 = reference_step(w0, x, y, sw, lr=0.1, rho=rho, adaptive=adaptive)
    for a, b in zip(weights_of(model), w0):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert int(opt.iterations) == 2


def test_steps_in_separate_functions_and_exact_restore():
    model = make_mlp()
    x, y, sw = make_data()
    w0 = weights_of(model)
    opt = SAM(keras.optimizers.SGD(0.0), rho=0.3)  # lr 0: after the step w must be w0 exactly
    g = grad(w0, x, y, sw)
    first = tf.function(lambda gs: opt.first_step(gs, model.trainable_variables))
    second = tf.function(lambda gs: opt.second_step(gs, model.trainable_variables))
    first([tf.constant(a) for a in g])
    moved = weights_of(model)
    for a, b, e in zip(moved, w0, epsilon(w0, g, 0.3)):
        np.testing.assert_allclose(a - b, e, rtol=1e-9, atol=1e-12)
    second([tf.constant(a) for a in g])
    for a, b in zip(weights_of(model), w0):
        np.testing.assert_array_equal(a, b)  # restored bit-exactly, not by subtracting ε


def test_none_gradients_and_unused_variables_are_skipped():
    model = make_mlp()
    w0 = weights_of(model)
    opt = SAM(keras.optimizers.SGD(0.1), rho=0.1)
    g = [np.ones_like(w0[0]), None, None, np.ones_like(w0[3])]
    opt.first_step(g, model.trainable_variables)
    after = weights_of(model)
    np.testing.assert_array_equal(after[1], w0[1])
    np.testing.assert_array_equal(after[2], w0[2])
    assert not np.array_equal(after[0], w0[0])
    opt.second_step(g, model.trainable_variables)
    after = weights_of(model)
    np.testing.assert_array_equal(after[1], w0[1])
    np.testing.assert_array_equal(after[2], w0[2])
    np.testing.assert_allclose(after[0], w0[0] - 0.1, rtol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_first_gradient_never_reaches_weights(bad):
    model = make_mlp()
    w0 = weights_of(model)
    opt = SAM(keras.optimizers.SGD(0.1))
    g = [np.ones_like(w) for w in w0]
    g[2] = np.full_like(w0[2], bad)
    opt.first_step(g, model.trainable_variables)
    for a, b in zip(weights_of(model), w0):
        np.testing.assert_array_equal(a, b)


def test_second_step_without_first_step_is_refused_eagerly():
    model = make_mlp()
    opt = SAM(keras.optimizers.SGD(0.1))
    g = [np.ones_like(w) for w in weights_of(model)]
    w0 = weights_of(model)
    with pytest.raises(ValueError, match="without a pending first_step"):
        opt.second_step(g, model.trainable_variables)
    opt.first_step(g, model.trainable_variables)
    opt.second_step(g, model.trainable_variables)
    with pytest.raises(ValueError, match="without a pending first_step"):
        opt.second_step(g, model.trainable_variables)
    for a, b in zip(weights_of(model), w0):
        np.testing.assert_allclose(a, b - 0.1, rtol=1e-12)


def test_second_step_without_first_step_in_graph_does_not_corrupt_weights():
    model = make_mlp()
    opt = SAM(keras.optimizers.SGD(0.1))
    g = [np.ones_like(w) for w in weights_of(model)]
    opt.first_step(g, model.trainable_variables)
    opt.second_step(g, model.trainable_variables)
    w1 = weights_of(model)
    # No first step pending now: the remembered copy is stale and must not be restored.
    tf.function(lambda: opt.second_step(g, model.trainable_variables))()
    for a, b in zip(weights_of(model), w1):
        np.testing.assert_allclose(a, b - 0.1, rtol=1e-12)


def test_first_step_twice_is_refused_eagerly():
    model = make_mlp()
    opt = SAM(keras.optimizers.SGD(0.1))
    g = [np.ones_like(w) for w in weights_of(model)]
    opt.first_step(g, model.trainable_variables)
    with pytest.raises(ValueError, match="twice"):
        opt.first_step(g, model.trainable_variables)


def test_manual_steps_refused_inside_strategy_run():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = make_mlp()
        opt = SAM(keras.optimizers.SGD(0.1))
        opt.build(model.trainable_variables)
    g = [tf.ones_like(v) for v in model.trainable_variables]

    @tf.function
    def run():
        strategy.run(lambda: opt.first_step(g, model.trainable_variables))

    with pytest.raises(ValueError, match="SAMModel or sam_train_step"):
        run()


# -- arguments, config and state -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rho": -1}, "`rho` must be a number >= 0. Received: rho=-1"),
        ({"eps": 0.0}, "`eps` must be a number > 0"),
        ({"eta": -0.1}, "`eta`"),
        ({"rho": "big"}, "`rho`"),
        ({"num_batch_splits": 0}, "`num_batch_splits`"),
        ({"num_batch_splits": 1.5}, "`num_batch_splits`"),
        ({"weight_decay": 0.1}, "`weight_decay`: set it on the base optimizer"),
    ],
)
def test_invalid_arguments_are_refused_with_the_argument_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SAM(keras.optimizers.SGD(0.1), **kwargs)


@pytest.mark.parametrize("base", ["sgd", None, SAM(keras.optimizers.SGD())])
def test_base_optimizer_must_be_a_plain_optimizer(base):
    with pytest.raises(ValueError, match="`base_optimizer`"):
        SAM(base)


def test_get_config_lists_every_argument_and_round_trips():
    opt = SAM(
        keras.optimizers.SGD(0.2, momentum=0.9),
        rho=0.1,
        adaptive=True,
        eta=0.02,
        eps=1e-10,
        sync_perturbations=True,
        num_batch_splits=4,
        name="my_sam",
    )
    config = opt.get_config()
    for arg in ("base_optimizer", "rho", "adaptive", "eta", "eps", "sync_perturbations"):
        assert arg in config
    assert config["num_batch_splits"] == 4 and config["name"] == "my_sam"
    clone = SAM.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone.base_optimizer, keras.optimizers.SGD)
    assert clone.base_optimizer.momentum == 0.9
    assert keras.optimizers.deserialize(keras.optimizers.serialize(opt)).rho == 0.1


def test_learning_rate_and_iterations_are_the_base_optimizers():
    base = keras.optimizers.SGD(0.1)
    opt = SAM(base)
    assert float(opt.learning_rate) == pytest.approx(0.1)
    opt.learning_rate = 0.05
    assert float(base.learning_rate) == pytest.approx(0.05)
    model = make_mlp()
    g = [np.zeros_like(w) for w in weights_of(model)]
    opt.first_step(g, model.trainable_variables)
    opt.second_step(g, model.trainable_variables)
    assert int(opt.iterations) == int(base.iterations) == 1


def test_schedule_lives_in_the_base_optimizer():
    schedule = keras.optimizers.schedules.ExponentialDecay(1.0, decay_steps=1, decay_rate=0.5)
    opt = SAM(keras.optimizers.SGD(schedule))
    model = make_mlp()
    g = [np.zeros_like(w) for w in weights_of(model)]
    for _ in range(3):
        opt.first_step(g, model.trainable_variables)
        opt.second_step(g, model.trainable_variables)
    assert float(opt.learning_rate) == pytest.approx(0.125)


def test_callbacks_act_on_the_base_learning_rate():
    x, y, _ = make_data(n=16)
    model = compile_mlp(make_mlp(model_cls=SAMModel), SAM(keras.optimizers.SGD(0.1)))
    sched = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="loss", factor=0.5, patience=0, min_delta=1e9
    )
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[sched, plateau])
    # epoch 2: the scheduler sets 0.05, then the plateau callback halves it at the epoch's end
    assert float(model.optimizer.base_optimizer.learning_rate) == pytest.approx(0.025)


def test_save_load_restores_state_and_resumes_identically(tmp_path):
    x, y, sw = make_data(n=32)
    model = compile_mlp(
        make_mlp(model_cls=SAMModel), SAM(keras.optimizers.SGD(0.05, momentum=0.9), rho=0.1)
    )
    model.fit(x, y, sample_weight=sw, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, SAMModel)
    assert isinstance(loaded.optimizer, SAM) and loaded.optimizer.rho == 0.1
    assert isinstance(loaded.optimizer.base_optimizer, keras.optimizers.SGD)
    assert int(loaded.optimizer.iterations) == 4
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    for m in (model, loaded):
        m.fit(x, y, sample_weight=sw, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(weights_of(model), weights_of(loaded)):
        np.testing.assert_array_equal(a, b)


# -- one gradient per step is refused: never silently the base optimizer ------------------------


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d1 = keras.layers.Dense(5, activation="relu")
        self.d2 = keras.layers.Dense(3, dtype="float32")

    def call(self, x):
        return self.d2(self.d1(x))


def float32_model(kind="functional"):
    if kind == "subclassed":  # built inside the first traced step
        return Subclassed()
    inputs = keras.Input((4,))
    h = keras.layers.Dense(5, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, dtype="float32")(h))


def assert_one_sentence_saying_what_to_do(message):
    assert message.endswith(".") and not re.search(r"[.:;]\s+[A-Z]", message)
    for way in ("sam.SAMModel", "sam.sam_train_step(self, data)", "first_step and second_step"):
        assert way in message


@pytest.mark.parametrize("kind", ["functional", "subclassed"])
@pytest.mark.parametrize("mode", ["graph", "xla", "eager", "mixed_float16"])
def test_plain_keras_model_refuses_sam_at_the_first_step(mode, kind):
    """``compile(optimizer=SAM(...))`` on a keras.Model whose train_step is Keras's own.

    Every later call raises too: TensorFlow leaves a function whose first trace made variables
    and then raised returning None, silently, on later calls.
    """
    if mode == "mixed_float16":
        keras.mixed_precision.set_global_policy("mixed_float16")
    x, y, _ = make_data(n=8, dtype="float32")
    model = float32_model(kind)
    model.compile(
        optimizer=SAM(keras.optimizers.SGD(0.1)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=mode == "xla",
        run_eagerly=mode == "eager",
    )
    if mode == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    if kind == "subclassed" and mode == "eager":
        model(x)  # eagerly, the forward pass runs before the refusal: build it to compare
    before = model.get_weights()
    with pytest.raises(ValueError, match="two gradient evaluations on the same batch") as info:
        model.fit(x, y, epochs=1, verbose=0)
    assert_one_sentence_saying_what_to_do(str(info.value))
    for call in (lambda: model.fit(x, y, verbose=0), lambda: model.train_on_batch(x, y)) * 2:
        with pytest.raises(ValueError, match="two gradient evaluations on the same batch"):
            call()
    after = model.get_weights()
    assert len(after) == len(before) or not before  # a subclassed model may be built by now
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
    assert int(model.optimizer.iterations) == 0
    model.evaluate(x, y, verbose=0)  # evaluation and prediction make no update: they work


@pytest.mark.parametrize("call", ["apply", "apply_gradients"])
@pytest.mark.parametrize("scaled", [False, True], ids=["SAM", "LossScaleOptimizer(SAM)"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_custom_loop_apply_without_first_step_is_refused(call, scaled, graph):
    model = make_mlp()
    opt = SAM(keras.optimizers.SGD(0.1))
    if scaled:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    w0 = weights_of(model)
    g = [tf.ones_like(v) for v in model.trainable_variables]

    def step():
        if call == "apply":
            opt.apply(g, model.trainable_variables)
        else:
            opt.apply_gradients(zip(g, model.trainable_variables))

    with pytest.raises(ValueError, match="two gradient evaluations on the same batch"):
        tf.function(step)() if graph else step()
    for a, b in zip(weights_of(model), w0):
        np.testing.assert_array_equal(a, b)
    assert int(opt.iterations) == 0


def test_plain_model_compiled_with_sam_loads_and_still_refuses_to_fit(tmp_path):
    x, y, _ = make_data(n=8, dtype="float32")
    model = float32_model()
    model.compile(
        optimizer=SAM(keras.optimizers.SGD(0.1), rho=0.2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.save(tmp_path / "plain.keras")
    loaded = keras.saving.load_model(tmp_path / "plain.keras")
    assert isinstance(loaded.optimizer, SAM) and loaded.optimizer.rho == 0.2
    with pytest.raises(ValueError, match="two gradient evaluations"):
        loaded.fit(x, y, verbose=0)


# -- the copy of w: made by first_step only -------------------------------------------------------


def test_fit_makes_no_weight_copy_and_the_file_is_as_small_as_sgd(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(32, 64)), np.arange(32) % 10
    sizes = {}
    for name, cls, opt in [
        ("sgd", keras.Model, keras.optimizers.SGD(0.1, momentum=0.9)),
        ("sam", SAMModel, SAM(keras.optimizers.SGD(0.1, momentum=0.9))),
    ]:
        inputs = keras.Input((64,))
        outputs = keras.layers.Dense(10)(keras.layers.Dense(256, activation="relu")(inputs))
        model = cls(inputs, outputs)
        model.compile(
            optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        model.fit(x, y, verbose=0)
        model.save(tmp_path / f"{name}.keras")
        sizes[name] = (tmp_path / f"{name}.keras").stat().st_size
    assert not any("sam_w" in v.path for v in opt.variables)
    assert sizes["sam"] < 1.1 * sizes["sgd"]  # it was 1.9x with the copy and base state twice


@pytest.mark.parametrize("jit", [False, True])
def test_first_step_after_fit_makes_the_copy_in_a_functions_first_trace(jit):
    """fit builds SAM without the copy of w; a custom loop's tf.function makes it when traced."""
    x, y, sw = make_data()
    model = compile_mlp(make_mlp(model_cls=SAMModel), SAM(keras.optimizers.SGD(0.1)))
    w = weights_of(model)
    model.fit(x, y, sample_weight=sw, batch_size=12, epochs=1, shuffle=False, verbose=0)
    opt = model.optimizer
    assert opt.built and opt._remembered is None
    step = tf.function(manual_step, jit_compile=jit)
    for _ in range(2):
        step(model, opt, x, y, sw)
    for _ in range(3):
        w = reference_step(w, x, y, sw, lr=0.1)
    for a, b in zip(weights_of(model), w):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert len(opt._remembered) == len(model.trainable_variables)


def test_second_step_traced_before_any_first_step_still_restores():
    model = make_mlp()
    w0 = weights_of(model)
    opt = SAM(keras.optimizers.SGD(0.1), rho=0.3)
    opt.build(model.trainable_variables)  # built without the copy (as fit or load_model do)
    g = [np.ones_like(w) for w in w0]
    second = tf.function(lambda: opt.second_step(g, model.trainable_variables))
    second()  # nothing pending: a base step only, as in a graph it cannot know
    opt.first_step(g, model.trainable_variables)
    second()  # the same concrete function: it must come back from w + ε first
    for a, b in zip(weights_of(model), w0):
        np.testing.assert_allclose(a, b - 0.2, rtol=1e-12)


def test_saved_state_holds_w_only_while_a_step_is_pending():
    model = make_mlp()
    opt = SAM(keras.optimizers.SGD(0.1, momentum=0.9))
    g = [np.ones_like(w) for w in weights_of(model)]
    store = {}
    opt.first_step(g, model.trainable_variables)
    opt.second_step(g, model.trainable_variables)
    opt.save_own_variables(store)
    assert len(store) == 3  # iterations, learning rate and the pending flag of the wrapper
    opt.first_step(g, model.trainable_variables)
    store = {}
    opt.save_own_variables(store)
    assert len(store) == 3 + len(model.trainable_variables) and store["2"] == 1.0


def test_save_load_while_a_first_step_is_pending_resumes_identically(tmp_path):
    x, y, sw = make_data(n=12)
    model = compile_mlp(make_mlp(model_cls=SAMModel), SAM(keras.optimizers.SGD(0.1), rho=0.2))
    opt = model.optimizer
    g = grad(weights_of(model), x, y, sw)
    opt.first_step(g, model.trainable_variables)
    model.save(tmp_path / "pending.keras")  # the weights are at w + ε(w)
    loaded = keras.saving.load_model(tmp_path / "pending.keras")
    g2 = grad(weights_of(model), x, y, sw)
    for m in (model, loaded):
        m.optimizer.second_step(g2, m.trainable_variables)
        m.fit(x, y, sample_weight=sw, batch_size=6, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(weights_of(model), weights_of(loaded)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("pending", [0.0, 1.0])
def test_files_that_saved_the_copy_always_still_load(pending, caplog):
    """Earlier files: SAM's vars were iterations, learning rate, pending flag, copy of w, base."""
    model = make_mlp()
    opt = SAM(keras.optimizers.SGD(0.1))
    opt.build(model.trainable_variables)
    w = weights_of(model)
    old = [np.int64(7), np.float32(0.0), np.float32(pending), *[a + 1 for a in w]]
    old += [np.array(v) for v in opt.base_optimizer.variables]
    with caplog.at_level("WARNING", logger="sam"):
        opt.load_own_variables({str(i): v for i, v in enumerate(old)})
    assert not caplog.text
    assert int(opt._iterations.numpy()) == 7 and float(opt._pending.numpy()) == pending
    if pending:
        opt.restore(model.trainable_variables)
        for a, b in zip(weights_of(model), w):
            np.testing.assert_array_equal(a, b + 1)


# -- the seed's snippets, as written with Keras 3 imports ----------------------------------------


def test_seed_snippets_run_as_written():
    x, y, _ = make_data(n=16)
    model = make_mlp()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
    base_optimizer = keras.optimizers.SGD(0.1)

    optimizer = SAM(base_optimizer)  # rho default 0.05
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.first_step(gradients, model.trainable_variables)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.second_step(gradients, model.trainable_variables)
    assert optimizer.rho == 0.05 and int(optimizer.iterations) == 1

    class YourModel(keras.Model):
        def train_step(self, data):
            return sam_train_step(self, data)

    model = compile_mlp(make_mlp(model_cls=YourModel), SAM(keras.optimizers.SGD(0.1)))
    history = model.fit(x, y, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
