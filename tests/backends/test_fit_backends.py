"""``SAMModel`` / ``sam_train_step`` in ``fit`` on every Keras backend, against NumPy by hand.

References share nothing with the step: the least-squares model ``y = xW + b`` under Keras's MSE
(``sum_i s_i · mean_k r_ik² / N``, r = xW + b − y, s the sample weights), whose gradient
``2/(NK) · xᵀ(s ⊙ r)``, ``2/(NK) · Σ_i s_i r_i`` is written by hand; SAM's ε = ρ·g/‖g‖ and
ASAM's ε = ρ·T²g/‖Tg‖ (T = |W| + η, 1 for the bias) and SGD's w − lr·g(w + ε) in float64
NumPy; BatchNorm's momentum rule on NumPy moments; the dropout mask read back from the layer
itself at the seed state before the step. Runs in the backend's own process
(``LANDSCAPE_TEST_BACKEND``, see conftest.py); the reload test starts one other backend.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import sam
from sam import SAM, SAMModel, sam_train_step

BACKEND = keras.backend.backend()
HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent.parent
LR, RHO, ETA = 0.1, 0.05, 0.01
N, D, K = 8, 3, 2
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, D)).astype("float32")
Y = RNG.normal(size=(N, K)).astype("float32")
W0 = [RNG.normal(size=(D, K)).astype("float32"), RNG.normal(size=(K,)).astype("float32")]


def _numpy(t) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t), np.float64)


def _linear(x_dim=D, dropout=None, batchnorm=False):
    inputs = keras.Input((x_dim,))
    h = inputs if dropout is None else dropout(inputs)
    outputs = keras.layers.Dense(K)(h)
    model = SAMModel(inputs, outputs)
    model.layers[-1].set_weights(W0)
    return model


def _mse_grad(ws, x, y, sw=None):
    w, b = (np.asarray(a, np.float64) for a in ws)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, k = y.shape
    s = np.ones(n) if sw is None else np.asarray(sw, np.float64)
    r = s[:, None] * (x @ w + b - y)
    return [2 / (n * k) * x.T @ r, 2 / (n * k) * r.sum(0)]


def _sam_grad(ws, x, y, sw=None, rho=RHO, adaptive=False):
    """g(w + ε(w)), ε by SAM's or ASAM's rule (T = |W| + η for the kernel, 1 for the bias)."""
    g = _mse_grad(ws, x, y, sw)
    t = [np.abs(ws[0]) + ETA, np.ones_like(ws[1])] if adaptive else [1.0, 1.0]
    norm = np.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g)))
    eps = [rho * ti * ti * gi / (norm + 1e-12) for ti, gi in zip(t, g)]
    return _mse_grad([w + e for w, e in zip(ws, eps)], x, y, sw)


def _sgd(ws, g):
    return [np.asarray(w, np.float64) - LR * gi for w, gi in zip(ws, g)]


def _close(model, expected, atol=2e-6):
    for v, e in zip(model.layers[-1].weights, expected):
        np.testing.assert_allclose(_numpy(v), e, rtol=2e-5, atol=atol)


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
def test_one_fit_step_is_w_minus_lr_g_at_w_plus_eps(adaptive, weighted):
    model = _linear()
    model.compile(optimizer=SAM(keras.optimizers.SGD(LR), rho=RHO, adaptive=adaptive), loss="mse")
    sw = RNG.uniform(0.2, 2.0, N).astype("float32") if weighted else None
    history = model.fit(X, Y, sample_weight=sw, batch_size=N, shuffle=False, verbose=0)
    _close(model, _sgd(W0, _sam_grad(W0, X, Y, sw, adaptive=adaptive)))
    # the loss logged is the clean pass's, at w
    r = X.astype(np.float64) @ W0[0] + W0[1] - Y
    s = np.ones(N) if sw is None else sw
    np.testing.assert_allclose(history.history["loss"][0], (s * (r**2).mean(1)).mean(), rtol=1e-5)


def test_a_plain_optimizer_gets_sam_with_rho_0_05():
    model = _linear()
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    model.fit(X, Y, batch_size=N, shuffle=False, verbose=0)
    _close(model, _sgd(W0, _sam_grad(W0, X, Y, rho=0.05)))


def test_batchnorm_statistics_are_one_clean_pass_update():
    inputs = keras.Input((D,))
    h = keras.layers.Dense(4)(inputs)
    bn = keras.layers.BatchNormalization(momentum=0.9)
    outputs = keras.layers.Dense(K)(bn(h))
    model = SAMModel(inputs, outputs)
    model.compile(optimizer=SAM(keras.optimizers.SGD(LR), rho=0.5), loss="mse")
    w1, b1 = (_numpy(v) for v in model.layers[1].weights)
    model.fit(X, Y, batch_size=N, shuffle=False, verbose=0)
    hidden = X.astype(np.float64) @ w1 + b1  # at w: the clean pass's batch moments
    np.testing.assert_allclose(_numpy(bn.moving_mean), 0.1 * hidden.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        _numpy(bn.moving_variance), 0.9 + 0.1 * hidden.var(0), rtol=1e-5, atol=1e-6
    )


def _dropout_input(layer, state0):
    """The layer's own output on ones at the seed state ``state0``: mask / (1 − rate)."""
    layer.seed_generator.state.assign(state0)
    return _numpy(layer(keras.ops.ones((N, D)), training=True))


def test_dropout_replays_the_clean_pass_mask_and_draws_once():
    dropout = keras.layers.Dropout(0.5, seed=7)
    model = _linear(dropout=dropout)
    model.compile(optimizer=SAM(keras.optimizers.SGD(LR), rho=0.5), loss="mse")
    state0 = _numpy(dropout.seed_generator.state)
    model.fit(X, Y, batch_size=N, shuffle=False, verbose=0)
    after_fit = _numpy(dropout.seed_generator.state)
    trained = [_numpy(v) for v in model.layers[-1].weights]
    mask = _dropout_input(dropout, state0)
    np.testing.assert_array_equal(after_fit, _numpy(dropout.seed_generator.state))  # one draw
    assert 0 < (mask == 0).sum() < mask.size
    expected = _sgd(W0, _sam_grad(W0, X * mask, Y, rho=0.5))
    for t, e in zip(trained, expected):
        np.testing.assert_allclose(t, e, rtol=2e-5, atol=2e-6)


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's unseeded dropout uses its global RNG")
def test_unseeded_dropout_on_torch_replays_the_global_rng(monkeypatch):
    import torch

    masks, dropout = [], torch.nn.functional.dropout

    def spy(inputs, p, training, inplace=False):  # Keras's unseeded path on PyTorch
        out = dropout(inputs, p=p, training=training, inplace=inplace)
        masks.append(keras.ops.convert_to_numpy(out != 0).astype("float64") / (1 - p))
        return out

    monkeypatch.setattr(torch.nn.functional, "dropout", spy)
    model = _linear(dropout=keras.layers.Dropout(0.5))
    model.compile(optimizer=SAM(keras.optimizers.SGD(LR), rho=0.5), loss="mse")
    model.fit(X, Y, batch_size=N, shuffle=False, verbose=0)
    assert len(masks) == 2  # the clean and the perturbed pass
    np.testing.assert_array_equal(masks[0], masks[1])
    _close(model, _sgd(W0, _sam_grad(W0, X * masks[0], Y, rho=0.5)))


def test_num_batch_splits_averages_micro_batch_sam_gradients_ragged_batches_too():
    x, y = RNG.normal(size=(9, D)).astype("float32"), RNG.normal(size=(9, K)).astype("float32")
    model = _linear()
    model.compile(optimizer=SAM(keras.optimizers.SGD(LR), num_batch_splits=2), loss="mse")
    model.fit(x, y, batch_size=4, shuffle=False, verbose=0)  # batches of 4, 4 and 1
    ws = [np.asarray(w, np.float64) for w in W0]
    for lo, hi in [(0, 4), (4, 8), (8, 9)]:
        n, g = hi - lo, [0.0, 0.0]
        for a, b in [(lo, lo + n // 2), (lo + n // 2, hi)]:
            if b > a:
                g = [gi + (b - a) / n * si for gi, si in zip(g, _sam_grad(ws, x[a:b], y[a:b]))]
        ws = _sgd(ws, g)
    _close(model, ws)


def test_mixed_float16_trains_and_an_overflow_leaves_the_state_unchanged():
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = _linear()
    model.compile(optimizer=SAM(keras.optimizers.SGD(LR)), loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    model.fit(X, Y, batch_size=N, shuffle=False, verbose=0)
    _close(model, _sgd(W0, _sam_grad(W0, X, Y)), atol=3e-3)  # float16 forward pass
    before = [_numpy(v) for v in model.trainable_variables]
    scale, steps = _numpy(model.optimizer.dynamic_scale), _numpy(model.optimizer.iterations)
    model.fit(np.full((N, D), 1e5, "float32"), Y, batch_size=N, verbose=0)  # inf in float16
    for b, v in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(_numpy(v), b)
    assert _numpy(model.optimizer.iterations) == steps
    assert _numpy(model.optimizer.dynamic_scale) == scale / 2


class UserModel(keras.Model):
    """A user's own train_step calling the documented SAM entry point of its backend."""

    def train_step(self, *args):
        if BACKEND == "jax":
            state, data = args
            return sam_train_step(self, data, state=state)
        return sam_train_step(self, *args)


def test_a_users_train_step_calls_the_entry_point_of_its_backend():
    inputs = keras.Input((D,))
    model = UserModel(inputs, keras.layers.Dense(K)(inputs))
    model.layers[-1].set_weights(W0)
    model.compile(optimizer=SAM(keras.optimizers.SGD(LR)), loss="mse", metrics=["mae"])
    history = model.fit(X, Y, batch_size=N, shuffle=False, verbose=0)
    _close(model, _sgd(W0, _sam_grad(W0, X, Y)))
    mae = np.abs(X.astype(np.float64) @ W0[0] + W0[1] - Y).mean()
    np.testing.assert_allclose(history.history["mae"][0], mae, rtol=1e-5)
    wrong = {"state": None} if BACKEND == "jax" else {"state": ([], [], [], [])}
    with pytest.raises(ValueError, match="Argument `state` of sam_train_step"):
        sam_train_step(model, (X, Y), **wrong)


def _reload_model():
    inputs = keras.Input((D,))
    h = keras.layers.BatchNormalization()(keras.layers.Dense(4, activation="tanh")(inputs))
    model = SAMModel(inputs, keras.layers.Dense(K)(h))
    model.compile(optimizer=SAM(keras.optimizers.SGD(LR, momentum=0.9), adaptive=True), loss="mse")
    return model


def test_a_model_saved_here_continues_identically_on_another_backend(tmp_path):
    other = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}[BACKEND]
    pytest.importorskip(other)
    keras.utils.set_random_seed(0)
    model = _reload_model()
    x2, y2 = X[::-1].copy(), Y[::-1].copy()
    model.fit(X, Y, batch_size=N, shuffle=False, verbose=0)
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "data.npz", x=x2, y=y2)
    env = dict(os.environ, KERAS_BACKEND=other, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
               JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")  # fmt: skip
    script = HERE / "_fit_cross_script.py"
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    model.fit(x2, y2, batch_size=N, shuffle=False, verbose=0)
    there = np.load(tmp_path / "out.npz")
    for i, v in enumerate(model.variables):
        np.testing.assert_allclose(there[f"v{i}"], _numpy(v), rtol=1e-5, atol=1e-6)
    assert there["iterations"] == _numpy(model.optimizer.iterations) == 2
    assert sam.SAM is type(model.optimizer)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed")
def test_several_torch_processes_are_refused_in_one_sentence(monkeypatch):
    import torch.distributed as dist

    from sam._backend import _torch

    with monkeypatch.context() as patch:  # Keras itself reads these during fit: patched briefly
        patch.setattr(dist, "is_available", lambda: True)
        patch.setattr(dist, "is_initialized", lambda: True)
        patch.setattr(dist, "get_world_size", lambda group=None: 2)
        with pytest.raises(ValueError, match="torch.distributed has 2 processes"):
            _torch.check_one_process()
    _torch.check_one_process()  # one process: nothing to say

    def refuse():
        raise ValueError("checked")

    monkeypatch.setattr(_torch, "check_one_process", refuse)
    model = _linear()
    model.compile(optimizer=SAM(keras.optimizers.SGD(LR)), loss="mse")
    with pytest.raises(ValueError, match="checked"):  # fit's step asks before anything else
        model.fit(X, Y, batch_size=N, verbose=0)
    _close(model, W0, atol=0)  # nothing trained


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution.DataParallel on JAX")
def test_data_parallel_on_two_jax_devices_is_sam_on_the_global_batch():
    """Two host devices (``XLA_FLAGS``, set before JAX starts: a subprocess): SAM, GSAM and
    LookSAM under ``DataParallel`` give the single-device steps on the global batch, BatchNorm
    included (one SPMD program: global gradients, global batch statistics)."""
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")  # fmt: skip
    run = subprocess.run([sys.executable, str(HERE / "_data_parallel_script.py")], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["ok"] * 3, run.stdout


@pytest.mark.parametrize("frozen", [False, True], ids=["no_weights", "frozen_layer"])
def test_a_model_with_nothing_to_train_reports_its_loss(frozen):
    """No trainable variable: fit warns, trains nothing, and reports the loss (by hand) and
    metrics of its pass, as Keras's own step does (it reported a loss of 0 before)."""
    inputs = keras.Input((D,))
    if frozen:
        layer = keras.layers.Dense(K)
        outputs = layer(inputs)
        layer.trainable = False
    else:
        outputs = keras.layers.Activation("relu")(inputs[:, :K])
    model = SAMModel(inputs, outputs)
    before = [_numpy(v) for v in model.weights]
    model.compile(optimizer=SAM(keras.optimizers.SGD(LR)), loss="mse", metrics=["mae"])
    with pytest.warns(UserWarning, match="does not have any trainable weights"):
        history = model.fit(X, Y, batch_size=N, verbose=0)
    pred = _numpy(model(X))
    np.testing.assert_allclose(history.history["loss"][0], ((pred - Y) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(history.history["mae"][0], np.abs(pred - Y).mean(), rtol=1e-5)
    for b, v in zip(before, model.weights):
        np.testing.assert_array_equal(_numpy(v), b)


def test_a_mixed_precision_model_loads_where_the_policy_is_float32(tmp_path, caplog):
    """Saved with a LossScaleOptimizer around SAM, loaded where none is made (the float32
    policy): the weights load, SAM's state is skipped with a warning, as Keras skips a plain
    optimizer's there (it failed on a shape mismatch before)."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    inputs = keras.Input((D,))
    model = SAMModel(inputs, keras.layers.Dense(K, dtype="float32")(keras.layers.Dense(4)(inputs)))
    model.compile(optimizer=SAM(keras.optimizers.SGD(LR)), loss="mse")
    model.fit(X, Y, batch_size=N, epochs=2, verbose=0)
    model.save(tmp_path / "m.keras")
    keras.mixed_precision.set_global_policy("float32")
    with caplog.at_level("WARNING", logger="sam"):
        loaded = keras.models.load_model(tmp_path / "m.keras")
    assert "Skipping variable loading for optimizer" in caplog.text
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(_numpy(a), _numpy(b))
    loaded.fit(X, Y, batch_size=N, verbose=0)  # and it trains on
