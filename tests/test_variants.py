"""The SAM family (sam.variants): each update against its paper's rule computed here, in float64.

The references below use only NumPy and ``sam_reference.grad`` (hand-written TF gradients of the
MLP, no Keras layer, no ``sam`` code); the library runs the same steps through its custom loop
(``step``, eagerly and in a ``tf.function``), ``first_step``/``second_step`` where offered, and
``fit`` (``SAMModel``), with plain SGD as the base so that each update is w ← w − η·u.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from sam_reference import (
    L2,
    compile_mlp,
    grad,
    make_data,
    make_mlp,
    make_second_pass_overflow,
)

from sam import (
    ESAM,
    GSAM,
    SAM,
    FriendlySAM,
    LookSAM,
    SAMModel,
    SAMSchedule,
    SAMVariant,
)

LR = 0.1
RHO = 0.3  # a large radius, so that every rule visibly changes the update


# -- the papers' rules, independently ------------------------------------------------------------


def dot(a, b):
    return sum(float(np.sum(x * y)) for x, y in zip(a, b))


def norm(a):
    return math.sqrt(dot(a, a))


def add(a, b, s=1.0):
    return [x + s * y for x, y in zip(a, b)]


def scale(a, s):
    return [s * x for x in a]


def sam_grad(w, data, rho=RHO, mask=None, direction=None, factor=1.0):
    """g(w + ε), ε = factor·ρ·M⊙d/‖M⊙d‖ (d = g(w) unless given)."""
    d = grad(w, *data) if direction is None else direction
    if mask is not None:
        d = [x if keep else np.zeros_like(x) for x, keep in zip(d, mask)]
    n = norm(d)
    e = scale(d, factor * rho / n) if n > 0 else scale(d, 0.0)
    return grad(add(w, e), *data)


def gsam_update(w, data, rho=RHO, alpha=0.4):
    g = grad(w, *data)
    ga = sam_grad(w, data, rho)
    perp = add(g, ga, -dot(g, ga) / dot(ga, ga))  # g − (g·ĝₐ)ĝₐ
    return add(ga, perp, -alpha)


def looksam_updates(k, alpha, rho=RHO):
    state = {}

    def update(t, w, data):
        g = grad(w, *data)
        if t % k == 0:
            gs = sam_grad(w, data, rho)
            state["gv"] = add(gs, g, -dot(g, gs) / dot(g, g))
            return gs
        gv = state["gv"]
        return add(g, gv, alpha * norm(g) / norm(gv))

    return update


def fsam_updates(sigma, lmbda, rho=RHO):
    """The official code's order: subtract the previous average, then update it."""
    state = {}

    def update(t, w, data):
        g = grad(w, *data)
        if "m" not in state:
            d, state["m"] = g, g
        else:
            d = add(g, state["m"], -sigma)
            state["m"] = add(scale(state["m"], lmbda), g, 1 - lmbda)
        return sam_grad(w, data, rho, direction=d)

    return update


def swp_updates(beta, seed, rho=RHO):
    def update(t, w, data):
        draw = tf.random.stateless_uniform([len(w)], seed=[seed + 1, t], dtype=tf.float64)
        keep = list(draw.numpy() < beta)
        return sam_grad(w, data, rho, mask=keep, factor=1 / beta)

    return update


def per_example_ce(w, x, y):
    w1, b1, w2, b2 = w
    z = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    z = z - z.max(axis=1, keepdims=True)
    return -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1)))


def sds_update(w, data, gamma, rho=RHO):
    x, y, sw = data
    g = grad(w, *data)
    e = scale(g, rho / norm(g))
    rise = per_example_ce(add(w, e), x, y) - per_example_ce(w, x, y)
    chosen = np.argsort(-rise)[: max(1, int(np.floor(len(y) * gamma)))]
    return grad(add(w, e), x[chosen], y[chosen], sw[chosen])


def scheduled_updates(use_sam, rho=RHO):
    def update(t, w, data):
        return sam_grad(w, data, rho) if use_sam(t) else grad(w, *data)

    return update


def every_step(rule):
    return lambda t, w, data: rule(w, data)


# -- running the library ---------------------------------------------------------------------------


def weights_of(model):
    return [v.numpy() for v in model.trainable_variables]


def loss_gradients(model, x, y, sw):
    loss_obj = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")

    def gradient_fn():
        with tf.GradientTape() as tape:
            loss = loss_obj(y, model(x, training=True), sample_weight=sw) + tf.add_n(model.losses)
        return tape.gradient(loss, model.trainable_variables)

    return gradient_fn


def train(make_optimizer, path, steps, data):
    x, y, sw = data
    if path == "fit":
        model = compile_mlp(make_mlp(model_cls=SAMModel), make_optimizer())
        for _ in range(steps):
            model.train_on_batch(x, y, sample_weight=sw)
        return model
    model = make_mlp()
    opt = make_optimizer()
    gradient_fn = loss_gradients(model, x, y, sw)
    if path == "two_call":
        for _ in range(steps):
            opt.first_step(gradient_fn(), model.trainable_variables)
            opt.second_step(gradient_fn(), model.trainable_variables)
        return model

    def one_step():
        opt.step(gradient_fn, model.trainable_variables)

    run = tf.function(one_step) if path == "function" else one_step
    for _ in range(steps):
        run()
    return model


def reference(update, steps, data):
    w = [v.numpy() for v in make_mlp().trainable_variables]
    for t in range(steps):
        w = add(w, update(t, w, data), -LR)
    return w


def assert_same(model, expected):
    for a, b in zip(weights_of(model), expected):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def sgd():
    return keras.optimizers.SGD(LR)


CASES = {
    "GSAM": (lambda: GSAM(sgd(), rho=RHO, alpha=0.4), lambda: every_step(gsam_update), 2),
    "LookSAM": (
        lambda: LookSAM(sgd(), rho=RHO, k=2, alpha=0.7),
        lambda: looksam_updates(2, 0.7),
        4,
    ),
    "FriendlySAM": (
        lambda: FriendlySAM(sgd(), rho=RHO, sigma=0.8, lmbda=0.6),
        lambda: fsam_updates(0.8, 0.6),
        3,
    ),
    "SAM-ON": (
        lambda: SAMVariant(sgd(), rho=RHO, perturbed="^logits/"),
        lambda: every_step(lambda w, d: sam_grad(w, d, mask=[False, False, True, True])),
        2,
    ),
    "ESAM-SWP": (
        lambda: ESAM(sgd(), rho=RHO, beta=0.5, gamma=1.0, seed=3),
        lambda: swp_updates(0.5, 3),
        3,
    ),
    "every-2": (
        lambda: SAMVariant(sgd(), rho=RHO, schedule=SAMSchedule.every_k(2)),
        lambda: scheduled_updates(lambda t: t % 2 == 0),
        4,
    ),
    "last-half": (
        lambda: GSAM(sgd(), rho=RHO, alpha=0.0, schedule=SAMSchedule.last(0.5, 4)),
        lambda: scheduled_updates(lambda t: t >= 2),
        4,
    ),
    "random": (
        lambda: FriendlySAM(sgd(), rho=RHO, sigma=0.0, schedule=SAMSchedule.random(0.5, seed=1)),
        lambda: scheduled_updates(
            lambda t: bool(tf.random.stateless_uniform([], seed=[1, t], dtype=tf.float64) < 0.5)
        ),
        4,
    ),
}
PATHS = {name: ["eager", "function", "fit"] for name in CASES}
PATHS["FriendlySAM"] += ["two_call"]
PATHS["SAM-ON"] = ["function", "fit", "two_call"]
PATHS["ESAM-SWP"] = ["function", "fit", "two_call"]


@pytest.mark.parametrize(("name", "path"), [(name, path) for name in CASES for path in PATHS[name]])
def test_updates_equal_the_papers_rule(name, path):
    make_optimizer, make_update, steps = CASES[name]
    data = make_data(n=12)
    assert_same(train(make_optimizer, path, steps, data), reference(make_update(), steps, data))


def test_random_schedule_case_mixes_both_kinds_of_step():
    draws = [
        float(tf.random.stateless_uniform([], seed=[1, t], dtype=tf.float64)) for t in range(4)
    ]
    assert any(d < 0.5 for d in draws) and any(d >= 0.5 for d in draws)


def test_gsam_rho_follows_the_learning_rate():
    schedule = keras.optimizers.schedules.PolynomialDecay(0.2, decay_steps=4, end_learning_rate=0.1)
    data = make_data(n=12)

    def make():
        return GSAM(keras.optimizers.SGD(schedule), rho=0.5, alpha=0.3, rho_min=0.1,
                    lr_max=0.2, lr_min=0.1)  # fmt: skip

    w = [v.numpy() for v in make_mlp().trainable_variables]
    for t in range(2):
        lr = float(schedule(t))
        rho_t = min(0.1 + (0.5 - 0.1) * (lr - 0.1) / (0.2 - 0.1), 0.5)  # float32 0.2 > 0.2
        w = add(w, gsam_update(w, data, rho=rho_t, alpha=0.3), -lr)
    assert_same(train(make, "fit", 2, data), w)


@pytest.mark.parametrize("lr", [0.02, 0.15, 0.35])  # below lr_min, between, above lr_max
def test_gsam_rho_is_clamped_to_its_range(lr):
    data = make_data(n=12)

    def make():
        return GSAM(keras.optimizers.SGD(lr), rho=0.5, alpha=0.3, rho_min=0.1,
                    lr_max=0.2, lr_min=0.1)  # fmt: skip

    rho_t = min(max(0.1 + (0.5 - 0.1) * (lr - 0.1) / (0.2 - 0.1), 0.1), 0.5)
    w = [v.numpy() for v in make_mlp().trainable_variables]
    w = add(w, gsam_update(w, data, rho=rho_t, alpha=0.3), -lr)
    assert_same(train(make, "fit", 1, data), w)


@pytest.mark.parametrize("size", [1e-7, 1.0])
def test_gsam_projection_is_exact_at_a_vanishing_gradient(size):
    """‖gₐ‖² near eps (1e-12): the official code's (‖gₐ‖ + eps) would remove only part of g's
    component along gₐ; the rule is scale-free, so the step is ``size`` times the unit one."""
    h = np.array([1.0, 3.0, 0.5])
    w0 = size * np.array([0.4, -0.2, 0.9])
    w = keras.Variable(w0, dtype="float64")

    def gradient_fn():
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_sum(tf.constant(h) * tf.square(w))
        return tape.gradient(loss, [w])

    rho, alpha = 0.3 * size, 0.4
    lr = 0.125  # exact in the float32 learning-rate variable
    GSAM(keras.optimizers.SGD(lr), rho=rho, alpha=alpha).step(gradient_fn, [w])
    g = h * w0
    ga = h * (w0 + rho * g / (np.linalg.norm(g) + 1e-12))  # SAM's ε, eps as davda54/sam
    update = ga - alpha * (g - (g @ ga) / (ga @ ga) * ga)
    np.testing.assert_allclose(w.numpy(), w0 - lr * update, rtol=1e-12, atol=0)


def quadratic_step(opt, w):
    """One ``opt.step`` on the isotropic quadratic ½‖w‖² (gradient w: g(w + ε) ∥ g(w))."""

    def gradient_fn():
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_sum(tf.square(w))
        return tape.gradient(loss, [w])

    opt.step(gradient_fn, [w])


def test_looksam_stores_no_round_off_on_an_isotropic_quadratic():
    w = keras.Variable(np.random.default_rng(0).normal(size=(6, 7)).astype("float32"))
    opt = LookSAM(keras.optimizers.SGD(LR), rho=0.3, k=2, alpha=0.7)
    quadratic_step(opt, w)  # a SAM step: g_v = gₛ − (g·gₛ/‖g‖²) g = 0 exactly
    g = w.numpy().astype("float64")  # the gradient of the plain step
    quadratic_step(opt, w)
    used = (g - w.numpy()) / LR
    # the exact rule's used = g; w − η·used in float32 costs ~1e-7 relative (was 0.70)
    assert np.linalg.norm(used - g) / np.linalg.norm(g) < 1e-5


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_looksam_with_rho_zero_is_its_base_optimizer(dtype):
    init = np.random.default_rng(1).normal(size=(5, 3)).astype(dtype)
    a, b = keras.Variable(init), keras.Variable(init)
    opt = LookSAM(keras.optimizers.SGD(LR, momentum=0.9), rho=0.0, k=3, alpha=0.7)
    base = keras.optimizers.SGD(LR, momentum=0.9)
    for _ in range(6):
        quadratic_step(opt, a)
        base.apply([b.value], [b])  # ∇ ½‖b‖² = b
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_sds_selects_the_sharpest_examples_in_fit():
    data = make_data(n=12)
    model = train(lambda: ESAM(sgd(), rho=RHO, beta=1.0, gamma=0.5), "fit", 2, data)
    assert_same(model, reference(every_step(lambda w, d: sds_update(w, d, 0.5)), 2, data))


# -- a plain step really skips the second pass ---------------------------------------------------


class Counting(keras.layers.Layer):
    calls = 0

    def call(self, x, training=None):
        if training:
            Counting.calls += 1
        return x


@pytest.mark.parametrize("kind", ["every-2", "LookSAM"])
def test_plain_steps_run_one_pass(kind):
    x, y, _ = make_data(n=8, dtype="float32")
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3)(Counting()(inputs))
    model = SAMModel(inputs, outputs)
    opt = (
        SAMVariant(sgd(), schedule=SAMSchedule.every_k(2))
        if kind == "every-2"
        else LookSAM(sgd(), k=2)
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=opt, loss=loss, run_eagerly=True)
    Counting.calls = 0
    for _ in range(4):
        model.train_on_batch(x, y)
    assert Counting.calls == 6  # 4 clean passes + 2 perturbed ones

    calls = []

    def gradient_fn():
        calls.append(1)
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return tape.gradient(value, model.trainable_variables)

    for _ in range(4):
        opt.step(gradient_fn, model.trainable_variables)
    assert len(calls) == 6


# -- SAM-ON's selection ----------------------------------------------------------------------------


def test_normalization_choice_selects_gamma_and_beta():
    inputs = keras.Input((6,))
    h = keras.layers.Dense(5, name="d")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.LayerNormalization(name="ln")(h)
    h = keras.layers.RMSNormalization(name="rms_norm")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h))
    opt = SAMVariant(sgd(), perturbed="normalization")
    opt.build(model.trainable_variables)
    paths = [v.path for v in opt.perturbed_variables()]
    assert paths == ["bn/gamma", "bn/beta", "ln/gamma", "ln/beta", "rms_norm/scale"]
    callable_opt = SAMVariant(sgd(), perturbed=lambda v: v.path.startswith("out/"))
    assert len(callable_opt.perturbed_variables(model.trainable_variables)) == 2


def test_a_selection_of_nothing_is_refused():
    model = make_mlp()
    with pytest.raises(ValueError, match=r"Argument `perturbed` must be a selection of at least"):
        SAMVariant(sgd(), perturbed="normalization").build(model.trainable_variables)


# -- state is saved -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: LookSAM(keras.optimizers.SGD(0.05, momentum=0.9), rho=0.2, k=3),
        lambda: FriendlySAM(keras.optimizers.SGD(0.05), rho=0.2, lmbda=0.5),
        lambda: GSAM(sgd(), rho=0.2, schedule=SAMSchedule.random(0.5, seed=2), perturbed="^hid"),
    ],
    ids=["LookSAM", "FriendlySAM", "GSAM+schedule"],
)
def test_save_load_keeps_state_and_resumes_identically(make, tmp_path):
    x, y, sw = make_data(n=16)
    model = compile_mlp(make_mlp(model_cls=SAMModel), make())
    model.fit(x, y, sample_weight=sw, batch_size=8, epochs=2, shuffle=False, verbose=0)  # 4 steps
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    for m in (model, loaded):
        m.fit(x, y, sample_weight=sw, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(weights_of(model), weights_of(loaded)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "opt",
    [
        GSAM(sgd(), rho=0.1, alpha=0.2, rho_min=0.05, lr_max=0.1, lr_min=0.0, adaptive=True),
        LookSAM(sgd(), rho=0.1, k=3, alpha=0.5, perturbed="normalization"),
        FriendlySAM(sgd(), sigma=0.5, lmbda=0.8, schedule=SAMSchedule.last(0.25, 100)),
        ESAM(sgd(), beta=0.7, gamma=0.4, seed=5),
        SAMVariant(sgd(), swp_beta=0.9, schedule=SAMSchedule.every_k(3), sync_perturbations=True),
    ],
    ids=lambda o: type(o).__name__,
)
def test_config_round_trip(opt):
    config = opt.get_config()
    clone = type(opt).from_config(config)
    assert clone.get_config() == config
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is type(opt) and again.get_config() == config


# -- mixed precision -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: GSAM(sgd()),
        lambda: LookSAM(sgd(), k=2),
        lambda: FriendlySAM(sgd(), schedule=SAMSchedule.every_k(2)),
        lambda: ESAM(sgd()),
    ],
    ids=["GSAM", "LookSAM", "FriendlySAM", "ESAM"],
)
def test_mixed_float16_fit_decreases_the_loss(make):
    keras.mixed_precision.set_global_policy("mixed_float16")
    x, y, _ = make_data(n=64, dtype="float32")
    inputs = keras.Input((4,))
    h = keras.layers.BatchNormalization()(keras.layers.Dense(16, activation="relu")(inputs))
    model = SAMModel(inputs, keras.layers.Dense(3, dtype="float32")(h))
    model.compile(
        optimizer=make(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    losses = model.fit(x, y, batch_size=16, epochs=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_loss_scale_overflow_leaves_weights_and_moving_average():
    keras.mixed_precision.set_global_policy("mixed_float16")
    x, y, _ = make_data(n=8, dtype="float32")
    inputs = keras.Input((4,))
    model = SAMModel(inputs, keras.layers.Dense(3, dtype="float32")(keras.layers.Dense(5)(inputs)))
    fsam = FriendlySAM(sgd())
    optimizer = keras.optimizers.LossScaleOptimizer(fsam, initial_scale=2.0**120)
    model.compile(
        optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    before = model.get_weights()
    model.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert float(fsam._started.numpy()) == 0.0
    assert all(not np.any(m.numpy()) for m in fsam._m)


def test_overflow_in_the_second_pass_leaves_weights_and_friendly_sam_state():
    keras.mixed_precision.set_global_policy("mixed_float16")
    model, x, y = make_second_pass_overflow(SAMModel)
    fsam = FriendlySAM(sgd(), rho=1e4)
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(fsam, initial_scale=1.0),
                  loss="mae")  # fmt: skip
    before = model.get_weights()
    model.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert fsam._m and float(fsam._started.numpy()) == 0.0  # was 1: the next ε would be 0
    assert all(not np.any(m.numpy()) for m in fsam._m)  # was m = g


# -- tf.distribute ---------------------------------------------------------------------------------


def test_mirrored_gsam_with_synced_perturbations_equals_gsam_on_the_global_batch():
    x, y, _ = make_data(n=8)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = make_mlp(model_cls=SAMModel)
        compile_mlp(model, GSAM(sgd(), rho=RHO, alpha=0.4, sync_perturbations=True))
    w0 = weights_of(model)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    expected = add(w0, gsam_update(w0, (x, y, None)), -LR)
    for a, b in zip(weights_of(model), expected):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", [LookSAM, FriendlySAM])
def test_mirrored_refuses_members_with_one_state_for_the_model(cls):
    x, y, _ = make_data(n=8)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = compile_mlp(make_mlp(model_cls=SAMModel), cls(sgd()))
    with pytest.raises(ValueError, match=f"{cls.__name__} keeps one state for the whole model"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)


# -- the API's refusals and arguments --------------------------------------------------------------


@pytest.mark.parametrize(
    "opt",
    [GSAM(sgd()), LookSAM(sgd()), SAMVariant(sgd(), schedule=SAMSchedule.every_k(2))],
    ids=["GSAM", "LookSAM", "schedule"],
)
def test_first_step_refused_where_the_step_needs_more(opt):
    model = make_mlp()
    g = [np.ones_like(w) for w in weights_of(model)]
    with pytest.raises(ValueError, match=r"first_step/second_step cannot make .* call step\("):
        opt.first_step(g, model.trainable_variables)


def test_sds_refused_in_a_custom_loop():
    model = make_mlp()
    with pytest.raises(ValueError, match="Argument `sds_gamma` needs each example's loss"):
        ESAM(sgd()).step(lambda: None, model.trainable_variables)


def test_plain_compile_still_refuses_one_gradient_steps():
    x, y, _ = make_data(n=8, dtype="float32")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile(optimizer=GSAM(sgd()), loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="two gradient evaluations on the same batch"):
        model.fit(x, y, verbose=0)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: GSAM(sgd(), alpha=-1),
            "Argument `alpha` must be a number >= 0. Received: alpha=-1",
        ),
        (lambda: GSAM(sgd(), rho=0.1, rho_min=0.2, lr_max=1, lr_min=0), "`rho_min` must be <= rho"),
        (lambda: GSAM(sgd(), rho_min=0.01), "Argument `lr_min` must be a number >= 0"),
        (lambda: GSAM(sgd(), lr_max=0.1), "`rho_min` must be given with `lr_max`"),
        (lambda: LookSAM(sgd(), k=0), "Argument `k` must be an integer >= 1. Received: k=0"),
        (lambda: LookSAM(sgd(), schedule=SAMSchedule.every_k(2)), "`schedule` must be None"),
        (lambda: FriendlySAM(sgd(), lmbda=1.0), r"`lmbda` must be a number in \[0, 1\)"),
        (lambda: FriendlySAM(sgd(), sigma=-0.5), "`sigma` must be a number >= 0"),
        (lambda: ESAM(sgd(), beta=0), r"`beta` must be a number in \(0, 1\]. Received: beta=0"),
        (lambda: ESAM(sgd(), gamma=1.5), "`gamma` must be a number in"),
        (lambda: SAMVariant(sgd(), perturbed=3), "Argument `perturbed` must be None, 'all'"),
        (lambda: SAMVariant(sgd(), perturbed="(["), "the pattern does not compile"),
        (lambda: SAMVariant(sgd(), schedule="every"), "`schedule` must be a sam.SAMSchedule"),
        (lambda: SAMVariant(sgd(), num_batch_splits=2), "`num_batch_splits` must be 1"),
        (lambda: SAMVariant(sgd(), rho=-1), "Argument `rho` must be a number >= 0"),
        (lambda: SAMSchedule(), "exactly one of `every`"),
        (lambda: SAMSchedule(every=2, probability=0.5), "exactly one of"),
        (lambda: SAMSchedule.every_k(0), "Argument `every` must be an integer >= 1"),
        (lambda: SAMSchedule.last(1.5, 10), "Argument `last_fraction` must be a number in"),
        (lambda: SAMSchedule(last_fraction=0.5), "Argument `total_steps` must be an integer"),
        (lambda: SAMSchedule.random(-0.1), r"`probability` must be a number in \[0, 1\]"),
    ],
)
def test_bad_arguments_name_argument_rule_and_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_family_members_are_sams():
    for opt in (GSAM(sgd()), LookSAM(sgd()), FriendlySAM(sgd()), ESAM(sgd()), SAMVariant(sgd())):
        assert isinstance(opt, SAM)
    assert "L2" and L2 > 0  # the reference's regularizer counts in every pass above


# -- make_optimizer and `landscape train --optimizer` ----------------------------------------------


def test_make_optimizer_offers_every_member():
    from landscape._checks import OptimizerName, options
    from landscape.train import make_optimizer

    made = {name: make_optimizer(name) for name in options(OptimizerName)}
    assert isinstance(made["sgd"], keras.optimizers.SGD)
    expected = {"gsam": GSAM, "looksam": LookSAM, "friendlysam": FriendlySAM, "esam": ESAM}
    for name, cls in expected.items():
        assert type(made[name]) is cls
    assert made["asam"].adaptive and made["asam"].rho == 0.5
    looksam = make_optimizer("looksam", k=3, alpha=0.5)
    assert (looksam.k, looksam.alpha) == (3, 0.5)
    scheduled = make_optimizer("asam", sam_last=0.25, total_steps=40, perturbed="normalization")
    assert type(scheduled) is SAMVariant and scheduled.adaptive
    assert scheduled.schedule.first_sam_step == 30 and scheduled.perturbed == "normalization"
    with pytest.raises(ValueError, match="Argument `sigma` applies to friendlysam, not gsam"):
        make_optimizer("gsam", sigma=1.0)
    with pytest.raises(ValueError, match="Argument `perturbed` applies to every SAM member"):
        make_optimizer("sgd", perturbed="normalization")
    with pytest.raises(ValueError, match="must be at most one schedule"):
        make_optimizer("sam", sam_every=2, sam_probability=0.5)


def test_cli_trains_a_member_and_refuses_bad_options(tmp_path):
    from click.testing import CliRunner

    from landscape.cli import main

    def invoke(*args):
        return CliRunner().invoke(main, ["train", "--model", "mlp", "--epochs", "1", "--samples",
                                         "64", "-q", *map(str, args)])  # fmt: skip

    out = tmp_path / "looksam.keras"
    result = invoke("--optimizer", "looksam", "--looksam-k", 2, "--alpha", 0.5, "--out", out)
    assert result.exit_code == 0, result.output
    optimizer = keras.models.load_model(out).optimizer
    assert type(optimizer) is LookSAM and (optimizer.k, optimizer.alpha) == (2, 0.5)
    for args, words in [
        (("--optimizer", "gsam", "--sigma", 1), "`sigma` applies to friendlysam, not gsam"),
        (("--optimizer", "sam", "--sam-every", 0), "'--sam-every': 0 is not in the range x>=1"),
        (("--optimizer", "esam", "--beta", 2), "'--beta': 2.0 is not in the range 0<x<=1"),
        (("--optimizer", "looksam", "--sam-last", 0.5), "no schedule for looksam"),
    ]:
        result = invoke(*args, "--out", tmp_path / "bad.keras")
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.output


@pytest.mark.parametrize("make", [lambda b: GSAM(b, rho=0.05), lambda b: LookSAM(b, k=2)])
def test_members_combining_two_gradients_train_an_embedding(make):
    """An Embedding's gradient is IndexedSlices; GSAM's and LookSAM's products need it dense."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(1, 20, (32, 6)), rng.integers(0, 3, 32)
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), dtype="int32")
    embedded = keras.layers.Embedding(20, 3, mask_zero=True)(inp)
    model = SAMModel(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(embedded)))
    model.compile(make(keras.optimizers.SGD(0.05)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    before = model.layers[1].embeddings.numpy().copy()
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]
    assert not np.array_equal(before, model.layers[1].embeddings.numpy())


def test_family_arguments_given_to_sam_point_to_the_family():
    with pytest.raises(ValueError, match=r"\['schedule'\]; schedule belong to the SAM family"):
        SAM(keras.optimizers.SGD(0.1), schedule=SAMSchedule.every_k(2))
