"""SharpnessTracker and the stability thresholds, against Keras's own optimizers and the paper."""

import csv
import json
import math

import keras
import numpy as np
import provenance_check
import pytest
import tensorflow as tf

import landscape
from landscape import tracking
from sam import SAM


# ------------------------------------------------------------------------------ thresholds
def _quadratic_run(optimizer, curvature: float, steps: int = 600) -> float:
    """|w| after ``steps`` of ``optimizer`` on ½ λ w² (gradient λ w) from w = 1."""
    w = keras.Variable([1.0], dtype="float64")
    optimizer.build([w])
    for _ in range(steps):
        optimizer.apply([curvature * w.value], [w])
    return float(abs(w.numpy()[0]))


@pytest.mark.parametrize(
    "make, want",
    [
        (lambda: keras.optimizers.SGD(0.1), 2 / 0.1),
        (lambda: keras.optimizers.SGD(0.1, momentum=0.9), (2 + 1.8) / 0.1),
        (lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True), 3.8 / (2.8 * 0.1)),
    ],
)
def test_sgd_thresholds_are_where_keras_sgd_becomes_unstable(make, want):
    """The rule's value, and Keras's SGD itself: stable just below it, unstable just above."""
    stability = tracking.stability_threshold(make())
    assert stability.threshold == pytest.approx(want, rel=1e-6)  # η is a float32 variable
    assert stability.learning_rate == pytest.approx(0.1) and stability.optimizer == "SGD"
    assert _quadratic_run(make(), 0.97 * want) < 1e-3
    assert _quadratic_run(make(), 1.03 * want) > 1e3


def test_sam_and_a_loss_scaler_are_looked_through():
    base = keras.optimizers.SGD(0.05, momentum=0.5)
    for opt in (SAM(base, rho=0.1), keras.optimizers.LossScaleOptimizer(SAM(base, rho=0.1))):
        stability = tracking.stability_threshold(opt)
        assert stability.threshold == pytest.approx(3.0 / 0.05)
        assert stability.optimizer == "SGD" and stability.rule == "(2 + 2β)/η"
    assert math.isnan(tracking.stability_threshold(keras.optimizers.RMSprop(0.1)).threshold)


def test_adam_preconditioner_is_the_one_of_keras_adams_last_update():
    """Δw of Adam's step t equals −η P_t⁻¹ m_t with P_t as the tracker reads it."""
    opt = keras.optimizers.Adam(0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-3)
    w = keras.Variable(np.ones(5), dtype="float64")
    opt.build([w])
    rng = np.random.default_rng(0)
    assert math.isnan(tracking.stability_threshold(opt, [w]).threshold)  # no step yet
    for _ in range(4):
        before = w.numpy().copy()
        opt.apply([rng.normal(size=5)], [w])
    stability = tracking.stability_threshold(opt, [w])
    momentum = next(v for v in opt.variables if "momentum" in v.path).numpy()
    np.testing.assert_allclose(
        w.numpy() - before,
        -stability.learning_rate * momentum / stability.preconditioner[0],
        rtol=1e-6,  # one scalar factor of Keras's step (η, bias corrections) is float32
    )
    assert stability.threshold == pytest.approx((2 + 1.6) / (0.2 * 0.01))


def test_adam_threshold_is_the_frozen_preconditioner_stability_limit():
    """Cohen et al. 2022's rule, from the recurrence m ← β₁m + (1 − β₁)g, w ← w − η m / p."""
    eta, beta_1, p = 0.01, 0.9, 0.5
    limit = (2 + 2 * beta_1) / ((1 - beta_1) * eta)  # on λ / p

    def run(ratio):
        w, m = 1.0, 0.0
        for _ in range(3000):
            m = beta_1 * m + (1 - beta_1) * ratio * p * w
            w -= eta * m / p
        return abs(w)

    assert run(0.97 * limit) < 1e-3
    assert not run(1.03 * limit) < 1e3  # grows without bound (to inf, then NaN)
    assert tracking.stability_threshold(keras.optimizers.Adam(eta)).rule.endswith("P⁻¹H)")


# ---------------------------------------------------------------------------------- tracker
def _small_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6,))
    h = keras.layers.Dense(8, activation="tanh")(inp)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.3)(h)
    model = keras.Model(inp, keras.layers.Dense(3)(h))
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 3, n)


def _state(model):
    return [v.numpy().copy() for v in (*model.variables, *model.optimizer.variables)]


def test_the_tracker_changes_nothing_and_logs_what_hessian_eigenvalues_computes(tmp_path):
    x, y = _data()
    plain = _small_model()
    plain_history = plain.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)
    model = _small_model()
    tracker = landscape.SharpnessTracker((x[:64], y[:64]), k=2, trace=True, trace_tol=0.2, seed=3)
    log = tmp_path / "log.csv"
    history = model.fit(
        x, y, batch_size=32, epochs=3, shuffle=False, verbose=0,
        callbacks=[tracker, keras.callbacks.CSVLogger(str(log))],
    )  # fmt: skip
    # Weights, BN statistics, optimizer state, dropout's RNG: as if no tracker had run.
    for a, b in zip(_state(plain), _state(model)):
        np.testing.assert_array_equal(a, b)
    assert history.history["loss"] == plain_history.history["loss"]
    h = tracker.history
    assert h["step"] == [0, 3, 6, 9] and h["epoch"] == [0.0, 1.0, 2.0, 3.0]
    assert all(len(v) == 4 for v in h.values())
    assert h["threshold"] == pytest.approx([3.8 / 0.05] * 4)
    assert h["learning_rate"][0] == pytest.approx(0.05)
    assert all(h["converged"]) and max(h["residual"]) <= 1e-3
    # The last probe equals a fresh certified computation at the final weights.
    obj = landscape.Objective(model, (x[:64], y[:64]), metrics=())
    eig = landscape.hessian_eigenvalues(obj, k=2, tol=1e-8, seed=0)
    np.testing.assert_allclose([h["lambda_max"][-1], h["lambda_2"][-1]], eig.values, rtol=1e-5)
    assert h["probe_loss"][-1] == pytest.approx(obj.evaluate()["loss"], rel=1e-6)
    assert h["trace"][-1] == pytest.approx(
        landscape.hessian_trace(obj, samples=100, tol=0.2, seed=3 + 3).estimate, rel=1e-6
    )
    # fit's logs: History and a CSVLogger listed after the tracker see every epoch's values.
    assert history.history["lambda_max"] == pytest.approx(h["lambda_max"][1:])
    rows = list(csv.DictReader(log.open()))
    assert [float(r["lambda_2"]) for r in rows] == pytest.approx(h["lambda_2"][1:])
    assert [float(r["threshold"]) for r in rows] == pytest.approx(h["threshold"][1:])
    assert 0 < tracker.seconds < tracker.train_seconds and tracker.overhead > 0
    saved = json.loads(json.dumps(tracker.as_dict()))
    assert saved["history"]["lambda_max"] == pytest.approx(h["lambda_max"])
    assert saved["quantity"] == "lambda_max(H)" and saved["rule"] == "(2 + 2β)/η"


def test_adam_is_tracked_by_its_preconditioned_sharpness():
    x, y = _data(48)
    model = _small_model()
    model.compile(keras.optimizers.Adam(0.01), model.loss)
    tracker = landscape.SharpnessTracker((x, y), every=2, unit="step", tol=1e-6, max_iter=200)
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[tracker])
    assert tracker.history["step"] == [2, 4, 6]  # none before the first step
    assert tracker.quantity == "lambda_1(P^-1 H)"
    opt = model.optimizer
    v = [next(s for s in opt.variables if s.path.endswith(w.path.replace("/", "_") + "_velocity"))
         for w in model.trainable_variables]  # fmt: skip
    t = int(opt.iterations.numpy())
    p = np.concatenate([
        (np.sqrt(s.numpy().ravel().astype(np.float64)) + opt.epsilon)
        * (1 - opt.beta_1**t) / np.sqrt(1 - opt.beta_2**t) for s in v
    ])  # fmt: skip
    obj = landscape.Objective(model, (x, y), metrics=())
    plain = landscape.hessian_eigenvalues(obj, k=1, tol=1e-8, seed=0)
    want = landscape.hessian_eigenvalues(obj, k=1, tol=1e-8, seed=0, preconditioner=p)
    assert tracker.history["lambda_max"][-1] == pytest.approx(want.values[0], rel=1e-5)
    assert abs(want.values[0] - plain.values[0]) > 0.1 * plain.values[0]  # P matters
    assert tracker.history["threshold"][-1] == pytest.approx(3.8 / (0.1 * 0.01))


def test_bad_tracker_arguments_are_refused():
    data = _data(8)
    with pytest.raises(ValueError, match="`every`"):
        landscape.SharpnessTracker(data, every=0)
    with pytest.raises(ValueError, match="`unit` must be one of"):
        landscape.SharpnessTracker(data, unit="batch")
    with pytest.raises(ValueError, match="`tol`"):
        landscape.SharpnessTracker(data, tol=2.0)


# ------------------------------------------------------------------------ edge of stability
def _edge_of_stability_run():
    """Full-batch gradient descent (MSE, tanh MLP, 500 embedded MNIST digits pooled to 14×14):
    400 steps at η = 1.8, then 600 at η = 0.9, a probe every 20 steps."""
    (x, y), _ = landscape.load_embedded()
    n = 500
    x = (x[:n] / 255).astype("float32").reshape(n, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(n, -1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    targets = keras.utils.to_categorical(y[:n], 10)
    keras.utils.set_random_seed(0)
    init = keras.initializers.VarianceScaling(0.5, "fan_in", "truncated_normal", seed=0)
    model = keras.Sequential(
        [keras.Input((196,))]
        + [keras.layers.Dense(64, activation="tanh", kernel_initializer=init) for _ in range(3)]
        + [keras.layers.Dense(10, kernel_initializer=init)]
    )
    model.compile(keras.optimizers.SGD(1.8), "mse", steps_per_execution=20)
    tracker = landscape.SharpnessTracker((x, targets), every=20, unit="step", batch_size=n)
    full_batch = tf.data.Dataset.from_tensors((x, targets)).repeat()
    fit = {"epochs": 1, "verbose": 0, "shuffle": False, "callbacks": [tracker]}
    model.fit(full_batch, steps_per_epoch=400, **fit)
    model.optimizer.learning_rate = 0.9
    model.fit(full_batch, steps_per_epoch=600, **fit)
    return tracker


def _phase(history, first, last):
    keep = [i for i, s in enumerate(history["step"]) if first <= s <= last]
    return {key: np.asarray([history[key][i] for i in keep]) for key in history}


def test_gradient_descent_reaches_and_stays_at_the_edge_of_stability():
    tracker = _edge_of_stability_run()
    h = tracker.history
    assert h["step"][0] == 0 and h["step"][-1] == 1000 and all(h["converged"])
    # After η is halved, λ_max rises from below the new 2/η to within 10 % of it and stays
    # within ±20 % of it for the rest of training (Cohen et al. 2021's edge of stability).
    late = _phase(h, 420, 1000)
    ratio = late["lambda_max"] / late["threshold"]
    assert np.allclose(late["threshold"], 2 / 0.9) and ratio[0] < 0.9
    reached = int(np.argmax(ratio >= 0.9))
    assert ratio[reached] >= 0.9 and np.all(np.abs(ratio[reached:] - 1) <= 0.2), ratio
    # ... while the loss keeps decreasing, not monotonically.
    loss = late["probe_loss"]
    assert loss[-1] < loss[reached] and np.any(np.diff(loss[reached:]) > 0)
    # At η = 1.8: from below 2/η to within 10 %; the first crossing overshoots (to 1.25 × 2/η
    # on this machine) until the first catapult, after which λ stays within ±20 %.
    early = _phase(h, 0, 400)
    ratio = early["lambda_max"] / early["threshold"]
    assert np.allclose(early["threshold"], 2 / 1.8) and ratio[0] < 0.9
    reached = int(np.argmax(ratio >= 0.9))
    catapult = reached + int(np.argmax(np.diff(ratio[reached:]) < 0)) + 1
    assert np.max(ratio[reached:]) < 1.35 and np.all(np.abs(ratio[catapult:] - 1) <= 0.2), ratio
    assert np.any(np.diff(early["probe_loss"][reached:]) > 0)


# -------------------------------------------------------------------------------------- plot
def test_plot_sharpness_draws_the_recorded_values_and_threshold(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    history = {
        "step": [0, 10, 20, 30], "epoch": [0.0, 0.5, 1.0, 1.5],
        "lambda_max": [1.0, 1.5, 2.1, 1.9], "lambda_2": [0.5, 0.7, 0.9, 1.0],
        "threshold": [2.0, 2.0, 4.0, 4.0], "converged": [True, True, False, True],
    }  # fmt: skip
    ax = landscape.plot_sharpness(history)
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_array_equal(lines["λ_max"].get_ydata(), history["lambda_max"])
    np.testing.assert_array_equal(lines["λ2"].get_ydata(), history["lambda_2"])
    np.testing.assert_array_equal(lines["not certified"].get_xdata(), [20])
    np.testing.assert_array_equal(lines["stability threshold"].get_ydata(), history["threshold"])
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"history": history, "quantity": "lambda_1(P^-1 H)"}))
    ax = landscape.plot_sharpness(str(path), x="epoch", all_eigenvalues=False)
    assert ax.get_ylabel() == "λ₁(P⁻¹H)" and ax.get_xlabel() == "epoch"
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), history["epoch"])
    with pytest.raises(ValueError, match="`x` must be 'step' or 'epoch'"):
        landscape.plot_sharpness(history, x="time")
    with pytest.raises(ValueError, match="no 'lambda_max' entries"):
        landscape.plot_sharpness({"step": [1]})


# --------------------------------------------------------------------------------------- CLI
def test_landscape_train_tracks_sharpness_next_to_the_model(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from landscape.cli import main

    monkeypatch.chdir(tmp_path)

    def invoke(*args):
        return CliRunner().invoke(main, ["train", "--model", "mlp", "--samples", "64", *args])

    result = invoke("--optimizer", "sgd", "--epochs", "2", "--track-sharpness", "1",
                    "--track-samples", "32", "--out", "gd.keras")  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "gd_sharpness.json").read_text())
    assert saved["history"]["epoch"] == [0.0, 1.0, 2.0] and saved["rule"] == "(2 + 2β)/η"
    assert all(saved["history"]["converged"]) and (tmp_path / "gd_sharpness.png").stat().st_size
    block = provenance_check.check(
        saved["provenance"],
        command="train",
        options={"track_every": 1, "track_samples": 32},
        model=keras.models.load_model(tmp_path / "gd.keras"),
    )
    assert block["converged"] == {"every_probe": True} and block["settings"]["every"] == 1
    assert "sharpness: 3 probes" in result.output
    for bad in (["--track-sharpness", "-1"], ["--track-sharpness", "1", "--track-samples", "0"],
                ["--track-sharpness", "1", "--strategy", "mirrored"]):  # fmt: skip
        result = invoke(*bad, "--out", "bad.keras")
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert not (tmp_path / "bad.keras").exists()


def test_a_dataset_probe_set_and_sam_training():
    """A finite tf.data probe set measures what arrays do; with SAM the base SGD's rule counts."""
    import sam

    x, y = _data(64)
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    model = sam.SAMModel(inp, keras.layers.Dense(3)(keras.layers.Dense(8, activation="tanh")(inp)))
    model.compile(SAM(keras.optimizers.SGD(0.1, momentum=0.5), rho=0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    arrays = landscape.SharpnessTracker((x, y), tol=1e-6, max_iter=200)
    dataset = landscape.SharpnessTracker(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(20), tol=1e-6, max_iter=200
    )
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[arrays, dataset])
    assert arrays.history["step"] == dataset.history["step"] == [0, 4, 8]
    np.testing.assert_allclose(arrays.history["lambda_max"], dataset.history["lambda_max"],
                               rtol=1e-5)  # fmt: skip
    assert arrays.history["threshold"] == pytest.approx([3.0 / 0.1] * 3)
    assert arrays.rule == "(2 + 2β)/η"


def test_a_schedule_decaying_to_zero_ends_with_an_infinite_threshold(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    x, y = _data(64)
    model = _small_model()
    schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=4)
    model.compile(keras.optimizers.SGD(schedule), model.loss)
    tracker = landscape.SharpnessTracker((x, y))
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[tracker])
    h = tracker.history
    assert h["learning_rate"][0] == pytest.approx(0.1) and h["learning_rate"][-1] == 0.0
    assert h["threshold"][0] == pytest.approx(20.0) and h["threshold"][-1] == math.inf
    assert tracker.as_dict()["history"]["threshold"][-1] is None  # JSON has no inf
    line = landscape.plot_sharpness(tracker).get_lines()[-1]
    assert np.isnan(line.get_ydata()[-1])


def test_an_unbuilt_subclassed_model_and_steps_per_execution():
    """fit builds a subclassed model in its first step: the first probe comes after it. With
    several steps per execution, the probes' epochs count steps, not Keras's batch index."""

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden, self.out = keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(3)

        def call(self, x):
            return self.out(self.hidden(x))

    x, y = _data(64)
    keras.utils.set_random_seed(0)
    model = Sub()
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(True),
                  steps_per_execution=3)  # fmt: skip
    tracker = landscape.SharpnessTracker((x, y), every=2, unit="step")
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[tracker])
    assert tracker.history["step"] == [3, 4, 7, 8]  # 4 steps per epoch, run 3 at a time
    assert tracker.history["epoch"] == [0.75, 1.0, 1.75, 2.0]
    assert all(tracker.history["converged"])


# ----------------------------------------------------------------- warm start, certificates
def _tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(3)]
    )
    model.compile(
        keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def _dense_hessian(model, data, h=1e-4) -> np.ndarray:
    """H at the model's weights by central differences of float64 gradients, column by column."""
    obj = landscape.Objective(model, data, metrics=(), precision="float64")
    flat = obj.flat
    columns = []
    for i in range(flat.n):
        step = np.zeros(flat.n)
        step[i] = h
        plus = flat.concat(obj.value_and_gradient(flat.split(step))[1])
        minus = flat.concat(obj.value_and_gradient(flat.split(-step))[1])
        columns.append((plus - minus) / (2 * h))
    H = np.stack(columns, axis=1)
    return (H + H.T) / 2


class _Weights(keras.callbacks.Callback):
    """The weights where the tracker (listed before it) has just probed."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_begin(self, logs=None):
        self.seen.append([v.numpy().copy() for v in self.model.weights])

    def on_epoch_end(self, epoch, logs=None):
        self.on_train_begin()


def test_warm_started_probes_equal_cold_lanczos_and_a_dense_eigendecomposition():
    """Every probe of a run, warm (Rayleigh–Ritz on the previous vectors, then extended) and
    from a random vector, against the top eigenvalue of the dense finite-difference Hessian
    and a cold-started certified Lanczos at the same weights."""
    x, y = _data(48, seed=1)
    x = x[:, :4]
    model = _tiny_model()
    tol = 1e-5
    warm, cold = (
        landscape.SharpnessTracker((x, y), tol=tol, batch_size=48, warm_start=w, seed=2)
        for w in (True, False)
    )
    weights = _Weights()
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0,
              callbacks=[warm, cold, weights])  # fmt: skip
    assert len(weights.seen) == len(warm.history["lambda_max"]) == 4
    for i, seen in enumerate(weights.seen):
        for v, value in zip(model.weights, seen):
            v.assign(value)
        dense = np.linalg.eigvalsh(_dense_hessian(model, (x, y)))[-1]
        obj = landscape.Objective(model, (x, y), metrics=())
        lanczos = landscape.hessian_eigenvalues(obj, tol=1e-7, seed=5).values[0]
        for tracker in (warm, cold):
            assert tracker.history["converged"][i] and tracker.history["residual"][i] <= tol
            assert tracker.history["lambda_max"][i] == pytest.approx(dense, rel=2 * tol)
            assert tracker.history["lambda_max"][i] == pytest.approx(lanczos, rel=2 * tol)
            assert 1 <= tracker.history["n_hvp"][i] <= tracker.max_iter
    assert warm.history["lambda_max"] == pytest.approx(cold.history["lambda_max"], rel=2 * tol)
    assert abs(dense - warm.history["lambda_max"][0]) > 0.05 * dense  # training moved λ_max


def test_a_warm_started_certificate_is_computed_at_the_new_weights():
    """Weights moved between probes (by hand, training at η = 0 after): the probe's residual
    is that of its vector under the new Hessian, and that vector is no eigenvector of the old."""
    x, y = _data(48, seed=1)
    x = x[:, :4]
    model = _tiny_model()
    tracker = landscape.SharpnessTracker((x, y), tol=1e-5, batch_size=48, seed=0)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[tracker])
    old = _dense_hessian(model, (x, y))
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:
        v.assign(v.numpy() * (1 + 0.5 * rng.standard_normal(v.shape)))
    model.optimizer.learning_rate.assign(0.0)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[tracker])
    new = _dense_hessian(model, (x, y))
    h = tracker.history
    assert len(h["lambda_max"]) == 3 and all(n >= 1 for n in h["n_hvp"])
    lam, vector = h["lambda_max"][-1], tracker._previous.vectors[0]
    assert lam == pytest.approx(np.linalg.eigvalsh(new)[-1], rel=2e-5)
    assert np.linalg.norm(new @ vector - lam * vector) / lam <= 1e-4  # certified here ...
    assert h["residual"][-1] <= 1e-5
    old_rq = vector @ old @ vector
    assert np.linalg.norm(old @ vector - old_rq * vector) / old_rq > 1e-2  # ... not there
