"""The SAM family's custom-loop steps (``sam.variants``) on every Keras backend, against NumPy.

References, written here in float64 NumPy and sharing no code with ``sam``: the linear
least-squares model L(W, b) = ½ mean((xW + b − y)²) with its gradient x⊤r/N, mean(r) by hand;
each member's published rule (the docstrings of ``sam.variants``; the float64 rules of
tests/test_variants.py and tests/test_family_properties.py, ported to NumPy); SGD's w − η·u.
Also: ρ = 0 against the base optimizer run alone (bit for bit), a non-finite pass against the
state before the step, a reload against the run without one, and the random draws against
themselves (same seed, same sequence) and their probability. Runs eagerly in the backend's own
process (``LANDSCAPE_TEST_BACKEND``, see conftest.py).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import sam
from sam import ESAM, GSAM, FriendlySAM, LookSAM, SAMSchedule, SAMVariant

BACKEND = keras.backend.backend()
RHO, ETA, LR, STEPS = 0.1, 0.01, 0.1, 3
RNG = np.random.default_rng(0)
N, D = 16, 3
X = RNG.normal(size=(N, D)) * np.array([1.0, 0.5, 2.0])  # anisotropic: SAM's ε matters
Y = RNG.normal(size=(N, 1))
W0 = [np.float32(RNG.normal(size=(D, 1))), np.float32([0.3])]
GSAM_ALPHA, LOOK_ALPHA, SIGMA, LMBDA = 0.3, 0.7, 1.0, 0.9
RHO_MIN, LR_MAX, LR_MIN = 0.02, 0.2, 0.0

# name -> (rho, base optimizer) -> member
MEMBERS = {
    "SAM": lambda rho, b: SAMVariant(b, rho=rho),
    "ASAM": lambda rho, b: SAMVariant(b, rho=rho, adaptive=True, eta=ETA),
    "GSAM": lambda rho, b: GSAM(b, rho=rho, alpha=GSAM_ALPHA),
    "GSAM-rho-schedule": lambda rho, b: GSAM(
        b, rho=rho, alpha=GSAM_ALPHA, rho_min=min(RHO_MIN, rho), lr_max=LR_MAX, lr_min=LR_MIN
    ),
    "LookSAM": lambda rho, b: LookSAM(b, rho=rho, k=2, alpha=LOOK_ALPHA),
    "FriendlySAM": lambda rho, b: FriendlySAM(b, rho=rho, sigma=SIGMA, lmbda=LMBDA),
    "ESAM": lambda rho, b: ESAM(b, rho=rho, beta=1.0, gamma=1.0),
    "SAM-ON": lambda rho, b: SAMVariant(b, rho=rho, perturbed="bias"),
    "schedule": lambda rho, b: SAMVariant(b, rho=rho, schedule=SAMSchedule.every_k(2)),
}
# Members with random draws: their steps depend on (seed, step).
RANDOM = {
    "ESAM-draw": lambda rho, b: ESAM(b, rho=rho, beta=0.5, gamma=1.0, seed=3),
    "random-schedule": lambda rho, b: SAMVariant(b, rho=rho, schedule=SAMSchedule.random(0.5, 7)),
}
EVERY = {**MEMBERS, **RANDOM}


# -- NumPy by hand -------------------------------------------------------------------------------


def grad(w):
    """∇ of ½ mean((xW + b − y)²) in float64."""
    kernel, bias = w
    r = X @ kernel + bias - Y
    return [X.T @ r / N, r.mean(axis=0)]


def dot(a, b):
    return sum(float(np.sum(x * y)) for x, y in zip(a, b))


def unit(d):
    n = np.sqrt(dot(d, d))
    return [x / n if n > 0 else 0 * x for x in d]


def at(w, e):
    return grad([a + b for a, b in zip(w, e)])


def sam_grad(w, rho=RHO, mask=(True, True), factor=1.0, direction=None):
    """g(w + ε), ε = factor·ρ·M⊙d/‖M⊙d‖, d = g(w) unless given."""
    d = grad(w) if direction is None else direction
    d = [x if keep else np.zeros_like(x) for x, keep in zip(d, mask)]
    return at(w, [factor * rho * x for x in unit(d)])


def gsam(w, rho):
    g, ga = grad(w), sam_grad(w, rho)
    c = dot(g, ga) / dot(ga, ga)
    return [a - GSAM_ALPHA * (b - c * a) for a, b in zip(ga, g)]


def rules():
    """name -> update(t, w) of each member's step t (w ← w − η·update), with its own state."""
    state = {}

    def asam(t, w):
        g = grad(w)
        trust = [np.abs(w[0]) + ETA, np.ones_like(w[1])]  # T = |W| + η; 1 for the bias
        n = np.sqrt(sum(np.sum((s * x) ** 2) for s, x in zip(trust, g)))
        return at(w, [RHO * s**2 * x / n for s, x in zip(trust, g)])

    def looksam(t, w):
        g = grad(w)
        if t % 2 == 0:
            gs = sam_grad(w)
            state["gv"] = [a - dot(g, gs) / dot(g, g) * b for a, b in zip(gs, g)]
            return gs
        gv = state["gv"]
        return [a + LOOK_ALPHA * np.sqrt(dot(g, g) / dot(gv, gv)) * b for a, b in zip(g, gv)]

    def friendly(t, w):
        g = grad(w)
        if "m" not in state:
            d, state["m"] = g, g
        else:
            d = [a - SIGMA * m for a, m in zip(g, state["m"])]
            state["m"] = [LMBDA * m + (1 - LMBDA) * a for m, a in zip(state["m"], g)]
        return sam_grad(w, direction=d)

    lr = float(np.float32(LR))  # the rate as Keras holds it
    rho_t = RHO_MIN + (RHO - RHO_MIN) * np.clip((lr - LR_MIN) / (LR_MAX - LR_MIN), 0, 1)
    return {
        "SAM": lambda t, w: sam_grad(w),
        "ASAM": asam,
        "GSAM": lambda t, w: gsam(w, RHO),
        "GSAM-rho-schedule": lambda t, w: gsam(w, rho_t),
        "LookSAM": looksam,
        "FriendlySAM": friendly,
        "ESAM": lambda t, w: sam_grad(w),
        "SAM-ON": lambda t, w: sam_grad(w, mask=(False, True)),
        "schedule": lambda t, w: sam_grad(w) if t % 2 == 0 else grad(w),
    }


def reference(name, steps=STEPS):
    rule, w = rules()[name], [a.astype(np.float64) for a in W0]
    for t in range(steps):
        w = [a - LR * u for a, u in zip(w, rule(t, w))]
    return w


# -- running the library -------------------------------------------------------------------------


def numpy(t) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t))


def linear_model():
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(1)])
    model.set_weights(W0)
    return model


def gradient_fn(model, bad_call=None, bad=np.nan):
    """The NumPy gradient at the variables' current values, as float32 tensors of the backend;
    the call numbered ``bad_call`` (0 the first) puts ``bad`` in the bias's gradient."""
    calls = []

    def gradients():
        g = grad([numpy(v).astype(np.float64) for v in model.trainable_variables])
        if len(calls) == bad_call:
            g[1] = np.full_like(g[1], bad)
        calls.append(1)
        return [keras.ops.convert_to_tensor(np.float32(x)) for x in g]

    return gradients


def run(optimizer, model, steps):
    fn = gradient_fn(model)
    for _ in range(steps):
        optimizer.step(fn, model.trainable_variables)


def snapshot(model, optimizer):
    return [numpy(v).copy() for v in [*model.variables, *optimizer.variables]]


def assert_bitwise(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# -- the tests -----------------------------------------------------------------------------------


def test_the_family_loads_on_every_backend():
    for name in ("SAMVariant", "GSAM", "LookSAM", "FriendlySAM", "ESAM", "SAMSchedule"):
        assert getattr(sam, name) is getattr(sam.variants, name)
    assert issubclass(sam.GSAM, sam.SAM)


def half_mse(y_true, y_pred):
    """½ (ŷ − y)² per example: its mean over a batch is the reference's loss."""
    return 0.5 * keras.ops.mean(keras.ops.square(y_pred - y_true), axis=-1)


def fitted(optimizer, epochs=STEPS):
    inputs = keras.Input((D,))
    model = sam.SAMModel(inputs, keras.layers.Dense(1)(inputs))
    model.set_weights(W0)
    model.compile(optimizer=optimizer, loss=half_mse)
    model.fit(np.float32(X), np.float32(Y), batch_size=N, epochs=epochs, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("name", list(MEMBERS))
def test_fit_steps_are_the_members_rule(name):
    """SAMModel's fit (compiled: jax.jit on JAX, tf.function on TensorFlow) with the
    backend's own autodiff gives the member's rule, step after step."""
    model = fitted(MEMBERS[name](RHO, keras.optimizers.SGD(LR)))
    for v, expected in zip(model.trainable_variables, reference(name)):
        np.testing.assert_allclose(numpy(v), expected, rtol=2e-5, atol=2e-6)


def test_fit_with_esam_data_selection_takes_the_examples_whose_loss_rose_most():
    """ESAM's SDS (γ = 0.5, β = 1): the perturbed gradient is the mean over the ⌊γn⌋ examples
    whose loss rose most from w to w + ε."""
    model = fitted(ESAM(keras.optimizers.SGD(LR), rho=RHO, beta=1.0, gamma=0.5), epochs=1)
    w = [a.astype(np.float64) for a in W0]
    e = [RHO * x for x in unit(grad(w))]
    moved = [a + b for a, b in zip(w, e)]

    def per_example(v):
        return 0.5 * ((X @ v[0] + v[1] - Y) ** 2).ravel()

    chosen = np.argsort(per_example(moved) - per_example(w))[-N // 2 :]
    r = (X @ moved[0] + moved[1] - Y)[chosen]
    adv = [X[chosen].T @ r / len(chosen), r.mean(axis=0)]
    for v, a, g in zip(model.trainable_variables, w, adv):
        np.testing.assert_allclose(numpy(v), a - LR * g, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", list(EVERY))
def test_fit_at_rho_zero_is_the_base_optimizers_fit_bit_for_bit(name):
    model = fitted(EVERY[name](0.0, keras.optimizers.SGD(LR, momentum=0.9)))
    inputs = keras.Input((D,))
    plain = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    plain.set_weights(W0)
    plain.compile(optimizer=keras.optimizers.SGD(LR, momentum=0.9), loss=half_mse)
    plain.fit(np.float32(X), np.float32(Y), batch_size=N, epochs=STEPS, shuffle=False, verbose=0)
    assert_bitwise([numpy(v) for v in model.variables], [numpy(v) for v in plain.variables])
    assert_bitwise([numpy(v) for v in model.optimizer.base_optimizer.variables],
                   [numpy(v) for v in plain.optimizer.variables])  # fmt: skip


@pytest.mark.parametrize("name", list(EVERY))
def test_fit_after_a_reload_continues_bit_identically(name, tmp_path):
    model = fitted(EVERY[name](RHO, keras.optimizers.SGD(LR, momentum=0.9)), epochs=2)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", custom_objects={"half_mse": half_mse})
    for m in (model, loaded):
        m.fit(np.float32(X), np.float32(Y), batch_size=N, epochs=2, shuffle=False, verbose=0)
    assert_bitwise(snapshot(loaded, loaded.optimizer), snapshot(model, model.optimizer))


@pytest.mark.parametrize("name", list(EVERY))
def test_fit_skips_a_float16_overflow_leaving_every_state_unchanged(name):
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = fitted(EVERY[name](RHO, keras.optimizers.SGD(LR, momentum=0.9)), epochs=2)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    inner = model.optimizer.inner_optimizer
    before = snapshot(model, inner)
    scale = numpy(model.optimizer.dynamic_scale)
    huge = np.full((N, D), 1e5, "float32")  # inf in float16
    model.fit(huge, np.float32(Y), batch_size=N, shuffle=False, verbose=0)
    assert_bitwise(snapshot(model, inner), before)
    assert numpy(model.optimizer.dynamic_scale) == scale / 2


@pytest.mark.parametrize("name", list(MEMBERS))
def test_a_custom_loop_step_is_the_members_rule(name):
    model = linear_model()
    run(MEMBERS[name](RHO, keras.optimizers.SGD(LR)), model, STEPS)
    plain = [a - LR * STEPS * b for a, b in zip(W0, grad(W0))]  # what ε = 0 would roughly give
    for v, expected, p in zip(model.trainable_variables, reference(name), plain):
        np.testing.assert_allclose(numpy(v), expected, rtol=2e-5, atol=2e-6)
        assert not np.allclose(expected, p, rtol=0, atol=1e-4)  # the rule is not plain SGD


@pytest.mark.parametrize("name", list(EVERY))
def test_rho_zero_is_the_base_optimizer_bit_for_bit(name):
    model, plain = linear_model(), linear_model()
    opt = EVERY[name](0.0, keras.optimizers.SGD(LR, momentum=0.9))
    base = keras.optimizers.SGD(LR, momentum=0.9)
    fn = gradient_fn(plain)
    for _ in range(3):  # LookSAM and the schedules take both kinds of step
        run(opt, model, 1)
        base.apply(fn(), plain.trainable_variables)
    assert_bitwise([numpy(v) for v in model.variables], [numpy(v) for v in plain.variables])
    assert_bitwise([numpy(v) for v in opt.base_optimizer.variables],
                   [numpy(v) for v in base.variables])  # fmt: skip


@pytest.mark.parametrize(
    ("bad_call", "bad"),
    [(0, np.nan), (0, np.inf), (1, np.nan)],
    ids=["clean-pass-nan", "clean-pass-inf", "perturbed-pass-nan"],
)
@pytest.mark.parametrize("name", list(EVERY))
def test_a_non_finite_pass_changes_nothing(name, bad_call, bad):
    model = linear_model()
    opt = EVERY[name](RHO, keras.optimizers.SGD(LR, momentum=0.9))
    run(opt, model, 2)  # state to keep: momentum, m, g_v, FriendlySAM's start, the step
    for _ in range(20 * bad_call):  # a perturbed pass needs a SAM step (the schedules' draw)
        if bool(numpy(opt._use_sam())):
            break
        run(opt, model, 1)
    before = snapshot(model, opt)
    opt.step(gradient_fn(model, bad_call, bad), model.trainable_variables)
    assert_bitwise(snapshot(model, opt), before)
    run(opt, model, 1)  # and the next finite step trains
    assert not np.array_equal(numpy(model.trainable_variables[0]), before[0])


@pytest.mark.parametrize("name", list(EVERY))
def test_save_and_reload_mid_training_continues_bit_identically(name, tmp_path):
    model = linear_model()
    model.compile(optimizer=EVERY[name](RHO, keras.optimizers.SGD(LR, momentum=0.9)), loss="mse")
    run(model.optimizer, model, 3)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is type(model.optimizer)
    assert_bitwise(snapshot(loaded, loaded.optimizer), snapshot(model, model.optimizer))
    run(model.optimizer, model, 3)
    run(loaded.optimizer, loaded, 3)
    assert_bitwise(snapshot(loaded, loaded.optimizer), snapshot(model, model.optimizer))


def test_a_random_schedule_is_reproducible_and_takes_its_fraction():
    def draws(p, seed, n=300):
        schedule = SAMSchedule.random(p, seed=seed)
        return [bool(numpy(schedule.use_sam(keras.ops.convert_to_tensor(t)))) for t in range(n)]

    first = draws(0.3, 5)
    assert draws(0.3, 5) == first  # same seed, same sequence
    assert draws(0.3, 6) != first
    assert abs(np.mean(first) - 0.3) < 0.1  # binomial sd 0.026
    assert all(draws(1.0, 5, 20)) and not any(draws(0.0, 5, 20))


def close(actual, expected):
    return all(np.allclose(a, e, rtol=2e-5, atol=2e-6) for a, e in zip(actual, expected))


def esam_masks(seed, steps=6):
    """The masks ESAM(β = 0.5) drew, each read off a step's update against the four possible."""
    model = linear_model()
    opt = ESAM(keras.optimizers.SGD(LR), rho=RHO, beta=0.5, gamma=1.0, seed=seed)
    fn = gradient_fn(model)
    masks = [(a, b) for a in (False, True) for b in (False, True)]
    drawn = []
    for _ in range(steps):
        w = [numpy(v).astype(np.float64) for v in model.trainable_variables]
        candidates = [[a - LR * u for a, u in zip(w, sam_grad(w, mask=m, factor=2.0))]
                      for m in masks]  # fmt: skip
        opt.step(fn, model.trainable_variables)
        new = [numpy(v) for v in model.trainable_variables]
        fits = [m for m, c in zip(masks, candidates) if close(new, c)]
        assert len(fits) == 1, fits
        drawn.append(fits[0])
    return drawn


def test_esam_draws_a_mask_per_tensor_reproducibly():
    drawn = esam_masks(seed=3)
    assert esam_masks(seed=3) == drawn  # same seed, same masks
    kept = [k for m in drawn for k in m]
    assert any(kept) and not all(kept)  # the draw keeps some tensors and drops others
    assert esam_masks(seed=4) != drawn


@pytest.mark.parametrize("name", ["FriendlySAM", "SAM-ON", "ESAM"])
def test_first_and_second_step_are_the_members_rule(name):
    model = linear_model()
    opt = MEMBERS[name](RHO, keras.optimizers.SGD(LR))
    fn = gradient_fn(model)
    for _ in range(STEPS):
        opt.first_step(fn(), model.trainable_variables)
        opt.second_step(fn(), model.trainable_variables)
    for v, expected in zip(model.trainable_variables, reference(name)):
        np.testing.assert_allclose(numpy(v), expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", ["GSAM", "LookSAM", "schedule"])
def test_first_step_is_refused_where_the_step_needs_more(name):
    model = linear_model()
    opt = MEMBERS[name](RHO, keras.optimizers.SGD(LR))
    with pytest.raises(ValueError, match="call step"):
        opt.first_step(gradient_fn(model)(), model.trainable_variables)


@pytest.mark.skipif(BACKEND != "jax", reason="a JAX trace")
def test_step_inside_jax_jit_is_refused():
    import jax

    model = linear_model()
    opt = GSAM(keras.optimizers.SGD(LR))
    with pytest.raises(ValueError, match="not inside jax.jit"):
        jax.jit(lambda: opt.step(gradient_fn(model), model.trainable_variables))()
