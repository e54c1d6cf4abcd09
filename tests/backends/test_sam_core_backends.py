"""SAM's optimizer (``sam.optimizer``) on every Keras backend, against NumPy float64 by hand.

References: ε = ρ·g/‖g‖ (SAM) and ε = ρ·T²g/‖Tg‖ with T = |w| + η for scaled tensors, 1 for
the others (ASAM), written in NumPy; the linear least-squares model L(W, b) = ½ mean((xW + b − y)²)
whose gradient x⊤r/N, mean(r) is written by hand; SGD's w − lr·g in NumPy. Runs eagerly in the
backend's own process (``LANDSCAPE_TEST_BACKEND``, see conftest.py).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import sam

BACKEND = keras.backend.backend()
RHO, ETA, EPS, LR = 0.07, 0.01, 1e-12, 0.1
RNG = np.random.default_rng(0)
SHAPES = [(3, 2), (2,), (4, 1, 2)]
N, D = 16, 3
X = RNG.normal(size=(N, D))
Y = RNG.normal(size=(N, 1))


def _numpy(t) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t), np.float64)


def _tensors(arrays):
    return [keras.ops.convert_to_tensor(np.asarray(a, np.float32)) for a in arrays]


def _close(actual, expected):
    """float32 arithmetic against float64 NumPy."""
    np.testing.assert_allclose(_numpy(actual), expected, rtol=2e-6, atol=1e-8)


def _arrays(scale=1.0):
    return [np.float32(scale * RNG.normal(size=s)).astype(np.float64) for s in SHAPES]


def test_every_public_name_loads_on_this_backend():
    assert issubclass(sam.SAM, keras.optimizers.Optimizer)
    assert callable(sam.sam_perturbation) and callable(sam.asam_perturbation)
    assert issubclass(sam.SAMModel, keras.Model) and callable(sam.sam_train_step)
    assert issubclass(sam.GSAM, sam.SAMVariant) and issubclass(sam.SAMVariant, sam.SAM)


def test_sam_perturbation_is_rho_g_over_its_norm():
    g = _arrays()
    eps = sam.sam_perturbation(_tensors(g), rho=RHO, eps=EPS)
    norm = np.sqrt(sum((a**2).sum() for a in g))
    for e, a in zip(eps, g):
        _close(e, RHO * a / (norm + EPS))


def test_asam_perturbation_uses_the_roles():
    g, w = _arrays(), _arrays()
    scaled = [True, False, True]
    eps = sam.asam_perturbation(_tensors(g), _tensors(w), rho=RHO, eta=ETA, scaled=scaled)
    t = [np.abs(b) + ETA if s else np.ones_like(b) for b, s in zip(w, scaled)]
    norm = np.sqrt(sum(((tt * a) ** 2).sum() for tt, a in zip(t, g)))
    for e, a, tt in zip(eps, g, t):
        _close(e, RHO * tt**2 * a / (norm + EPS))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_gradient_gives_no_perturbation(bad):
    g, w = _arrays(), _arrays()
    g[1][0] = bad
    grads = [*_tensors(g), None]
    for eps in (
        sam.sam_perturbation(grads, rho=RHO),
        sam.asam_perturbation(grads, [*_tensors(w), _tensors([[1.0]])[0]], rho=RHO),
    ):
        assert eps[-1] is None
        for e, a in zip(eps, g):
            assert np.array_equal(_numpy(e), np.zeros_like(a))


def _linear_model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(1)])
    model.set_weights([RNG.normal(size=(D, 1)).astype("float32"), np.float32([0.3])])
    return model


def _gradient(weights):
    """∇ of ½ mean((xW + b − y)²) by hand, in float64."""
    kernel, bias = weights
    r = X @ kernel + bias - Y
    return [X.T @ r / N, r.mean(axis=0)]


def _weights(model):
    return [_numpy(v) for v in model.trainable_variables]


def test_a_custom_loop_step_equals_numpy():
    model = _linear_model()
    tvars = model.trainable_variables
    opt = sam.SAM(keras.optimizers.SGD(LR), rho=RHO)
    w = _weights(model)
    g = _gradient(w)
    opt.first_step(_tensors(g), tvars)
    norm = np.sqrt(sum((a**2).sum() for a in g))
    perturbed = [a + RHO * b / norm for a, b in zip(w, g)]
    for v, expected in zip(tvars, perturbed):
        _close(v, expected)
    _close(model(X.astype("float32")), X @ perturbed[0] + perturbed[1])  # the model sees w + ε
    g_adv = _gradient(_weights(model))
    opt.second_step(_tensors(g_adv), tvars)
    for v, a, b in zip(tvars, w, g_adv):
        _close(v, a - LR * np.float32(b))
    assert int(_numpy(opt.iterations)) == 1


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_step_with_a_gradient_function_equals_numpy(adaptive):
    """``SAM.step(gradient_fn, variables)``: the gradient at w, then at w + ε, then SGD at w."""
    model = _linear_model()
    tvars = model.trainable_variables
    opt = sam.SAM(keras.optimizers.SGD(LR), rho=RHO, adaptive=adaptive)
    w = _weights(model)
    g = _gradient(w)
    t = [np.abs(w[0]) + 0.01, np.ones_like(w[1])] if adaptive else [1.0, 1.0]  # kernel, bias
    norm = np.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g)))
    g_adv = _gradient([a + RHO * ti * ti * b / norm for a, ti, b in zip(w, t, g)])
    opt.step(lambda: _tensors(_gradient(_weights(model))), tvars)
    for v, a, b in zip(tvars, w, g_adv):
        _close(v, a - LR * np.float32(b))
    assert int(_numpy(opt.iterations)) == 1

    def failing():
        raise RuntimeError("the second pass failed")

    calls = iter([lambda: _tensors(_gradient(_weights(model))), failing])
    before = [keras.ops.convert_to_numpy(v).copy() for v in tvars]
    with pytest.raises(RuntimeError, match="second pass"):
        opt.step(lambda: next(calls)(), tvars)
    for v, b in zip(tvars, before):  # w is back, bit for bit, and nothing is pending
        assert np.array_equal(keras.ops.convert_to_numpy(v), b)
    opt.step(lambda: _tensors(_gradient(_weights(model))), tvars)


def test_second_step_comes_back_to_w_bit_exactly():
    model = _linear_model()
    tvars = model.trainable_variables
    opt = sam.SAM(keras.optimizers.SGD(0.0), rho=0.5, adaptive=True)
    before = [keras.ops.convert_to_numpy(v).copy() for v in tvars]
    opt.first_step(_tensors(_gradient(_weights(model))), tvars)
    assert not np.array_equal(keras.ops.convert_to_numpy(tvars[0]), before[0])
    opt.second_step(_tensors(_gradient(_weights(model))), tvars)  # learning rate 0: w itself
    for v, b in zip(tvars, before):
        assert np.array_equal(keras.ops.convert_to_numpy(v), b)


def test_steps_out_of_order_and_apply_are_refused():
    model = _linear_model()
    tvars = model.trainable_variables
    opt = sam.SAM(keras.optimizers.SGD(LR))
    grads = _tensors(_gradient(_weights(model)))
    with pytest.raises(ValueError, match="without a pending first_step"):
        opt.second_step(grads, tvars)
    before = _weights(model)
    for call in (lambda: opt.apply(grads, tvars), lambda: opt.apply_gradients(zip(grads, tvars))):
        with pytest.raises(ValueError, match="two gradient evaluations"):
            call()
    assert all(np.array_equal(a, b) for a, b in zip(_weights(model), before))
    opt.first_step(grads, tvars)
    with pytest.raises(ValueError, match="called twice"):
        opt.first_step(grads, tvars)


@pytest.mark.skipif(BACKEND != "jax", reason="a JAX trace")
def test_first_step_inside_jax_jit_is_refused():
    import jax

    model = _linear_model()
    opt = sam.SAM(keras.optimizers.SGD(LR))
    grads = _tensors(_gradient(_weights(model)))
    with pytest.raises(ValueError, match="not inside jax.jit"):
        jax.jit(lambda g: opt.first_step(g, model.trainable_variables))(grads)
    assert not opt.built  # refused before anything was made


def test_a_saved_model_keeps_sam_and_its_pending_step(tmp_path):
    model = _linear_model()
    model.compile(optimizer=sam.SAM(keras.optimizers.SGD(LR, momentum=0.5), rho=RHO), loss="mse")
    w = _weights(model)
    model.optimizer.first_step(_tensors(_gradient(w)), model.trainable_variables)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    opt = loaded.optimizer
    assert isinstance(opt, sam.SAM) and isinstance(opt.base_optimizer, keras.optimizers.SGD)
    assert (opt.rho, opt.adaptive) == (RHO, False)
    assert (float(opt.base_optimizer.momentum), float(_numpy(opt.learning_rate))) == (
        0.5,
        np.float32(LR),
    )
    g_adv = _gradient(_weights(loaded))  # the loaded weights are w + ε, w pending
    opt.second_step(_tensors(g_adv), loaded.trainable_variables)
    for v, a, b in zip(loaded.trainable_variables, w, g_adv):
        _close(v, a - LR * np.float32(b))  # momentum's first step is plain SGD
