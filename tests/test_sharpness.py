"""Sharpness metrics: closed forms on quadratics, Dinh et al.'s rescaling, weights untouched."""

import itertools
import json
import math
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import landscape
from landscape import sharpness

N = 5  # weights of the quadratic problems


class Quadratic(keras.layers.Layer):
    """Outputs f(w) = ½(w − x)ᵀA(w − x) + c for every sample; the loss is that output."""

    def __init__(self, A, x, c, w0, **kwargs):
        super().__init__(dtype="float64", **kwargs)
        self.A = tf.constant(A, tf.float64)
        self.x = tf.constant(x, tf.float64)
        self.c = float(c)
        self.w0 = np.asarray(w0, np.float64)

    def build(self, input_shape):
        self.w = self.add_weight(shape=self.w0.shape, initializer="zeros", dtype="float64")
        self.w.assign(self.w0)

    def call(self, inputs):
        d = self.w - self.x
        f = 0.5 * tf.tensordot(d, tf.linalg.matvec(self.A, d), 1) + self.c
        return tf.zeros_like(inputs[:, :1]) + f


def quadratic_objective(A, x, c=0.0, w0=None):
    inputs = keras.Input((1,), dtype="float64")
    layer = Quadratic(A, x, c, x if w0 is None else w0)
    model = keras.Model(inputs, layer(inputs))
    data = (np.zeros((4, 1)), np.zeros((4, 1)))
    return landscape.Objective(model, data, loss=lambda y_true, y_pred: y_pred[:, 0], metrics=())


def spd(rng, n):
    """A random symmetric positive definite matrix with a well separated top eigenvalue."""
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return q @ np.diag([*np.linspace(0.5, 1.5, n - 1), 4.0]) @ q.T


@pytest.fixture
def minimum(rng):
    """A full SPD A and a minimum x far from zero (so that c = |x| is a proper scaling)."""
    A = spd(rng, N)
    x = rng.choice([-1.0, 1.0], N) * rng.uniform(0.5, 2.0, N)
    return A, x


def _snapshot(model):
    return [keras.ops.convert_to_numpy(v.value).copy() for v in model.variables]


def _assert_bit_identical(model, snapshot):
    for v, s in zip(model.variables, snapshot):
        assert keras.ops.convert_to_numpy(v.value).tobytes() == s.tobytes(), v.path


# ---------------------------------------------------------------------------- ε-sharpness
@pytest.mark.parametrize("epsilon", [1e-3, 0.05])
def test_epsilon_sharpness_of_a_quadratic_in_the_full_space(rng, epsilon):
    a = rng.uniform(0.5, 3.0, N)
    x = rng.normal(size=N)
    c = 0.7
    obj = quadratic_objective(np.diag(a), x, c)
    expected = 50 * epsilon**2 * np.sum(a * (np.abs(x) + 1) ** 2) / (1 + c)
    got = landscape.epsilon_sharpness(obj, epsilon, seed=0)  # the default 10 iterations
    assert got.value == pytest.approx(expected, rel=1e-2)
    assert got.loss == pytest.approx(c, rel=1e-12)
    assert got.max_loss >= got.loss
    assert 1 <= got.iterations <= 10
    assert got.evaluations >= got.iterations
    assert got.subspace_dim is None
    exact = landscape.epsilon_sharpness(obj, epsilon, max_iter=100, seed=1)
    assert exact.value == pytest.approx(expected, rel=1e-9)


def test_epsilon_sharpness_in_a_known_subspace(rng):
    a = rng.uniform(0.5, 3.0, N)
    x = rng.normal(size=N)
    c, epsilon = 0.3, 0.01
    obj = quadratic_objective(np.diag(a), x, c)
    # A = [s₁ e₃, s₂ e₀]: A⁺x = (x₃/s₁, x₀/s₂), A y moves w₃ and w₀ only, so the box's corner
    # gives ½ε² Σⱼ a_πⱼ (|x_πⱼ| + |sⱼ|)².
    picks, scales = [3, 0], np.array([2.0, -0.5])
    A = np.zeros((N, 2))
    A[picks, [0, 1]] = scales
    expected = 50 * epsilon**2 * np.sum(a[picks] * (np.abs(x[picks]) + np.abs(scales)) ** 2)
    expected /= 1 + c
    got = landscape.epsilon_sharpness(obj, epsilon, projection=A, seed=0)
    assert got.value == pytest.approx(expected, rel=1e-2)
    assert got.subspace_dim == 2
    random = landscape.epsilon_sharpness(obj, epsilon, subspace_dim=3, seed=0)
    assert random.subspace_dim == 3
    assert random.value > 0


def test_epsilon_sharpness_at_a_minimum_needs_the_random_start(rng):
    """With y₀ = 0 the gradient vanishes; a seeded start is reproducible and finds the corner."""
    obj = quadratic_objective(np.eye(N), np.ones(N))
    first = landscape.epsilon_sharpness(obj, 0.1, seed=3)
    assert first.value > 0
    assert landscape.epsilon_sharpness(obj, 0.1, seed=3) == first


# ------------------------------------------------------------------- worst-case sharpness
@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_case_l2_is_half_rho_squared_lambda_max(minimum, adaptive):
    A, x = minimum
    rho = 0.1
    C = np.diag(np.abs(x) if adaptive else np.ones(N))
    eigenvalues = np.linalg.eigvalsh(C @ A @ C)
    expected = 0.5 * rho**2 * eigenvalues[-1]
    # Steps of 2ρ converge like a power iteration at the rate (1 + 2λ₂/λ₁) / 3 per step.
    assert (1 + 2 * eigenvalues[-2] / eigenvalues[-1]) / 3 < 0.8
    obj = quadratic_objective(A, x, c=0.2)
    got = landscape.worst_case_sharpness(obj, rho, norm="l2", adaptive=adaptive, seed=0)
    assert got.value == pytest.approx(expected, rel=1e-3)
    assert got.value <= expected * (1 + 1e-9)  # every evaluated point is inside the ball
    assert got.loss == pytest.approx(0.2, rel=1e-12)
    assert got.max_loss == pytest.approx(got.loss + got.value)
    assert got.n_gradients == 20
    assert got.batch_values == (got.value,)
    assert math.isnan(got.stderr)


@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_case_linf_reaches_the_best_corner(minimum, adaptive):
    A, x = minimum
    rho = 0.05
    c = np.abs(x) if adaptive else np.ones(N)
    # Diagonal A: every corner of the box is a maximum, ½ρ² Σ aᵢcᵢ².
    a = np.diag(A).copy()
    got = landscape.worst_case_sharpness(
        quadratic_objective(np.diag(a), x), rho, norm="linf", adaptive=adaptive, seed=0
    )
    assert got.value == pytest.approx(0.5 * rho**2 * np.sum(a * c**2), rel=1e-9)
    # Full A: a convex quadratic is largest at a corner γ = ρs of the box, and sign steps of 2ρ
    # stop at a corner with s = sign(CACs), a local maximum (the global one is NP-hard to find).
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=N)))
    M = np.diag(c) @ A @ np.diag(c)
    values = 0.5 * rho**2 * np.einsum("ki,ij,kj->k", signs, M, signs)
    local = values[np.all(np.sign(signs @ M) == signs, axis=1)]
    got = landscape.worst_case_sharpness(
        quadratic_objective(A, x), rho, norm="linf", adaptive=adaptive, seed=0
    )
    assert got.value <= values.max() * (1 + 1e-9)
    assert np.min(np.abs(local / got.value - 1)) < 1e-9


class Cosine(keras.layers.Layer):
    """Outputs f(w) = 1 − cos(w) for every sample: a non-convex loss, largest at w = ±π."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(1,), initializer="zeros", dtype="float64")

    def call(self, inputs):
        return tf.zeros_like(inputs[:, :1]) + 1.0 - tf.cos(self.w)


class RecordingObjective(landscape.Objective):
    """Records every loss it returns."""

    losses: list

    def evaluate(self, offsets=None, **kwargs):
        values = super().evaluate(offsets, **kwargs)
        self.losses.append(values["loss"])
        return values

    def value_and_gradient(self, offsets=None, **kwargs):
        values, grads = super().value_and_gradient(offsets, **kwargs)
        self.losses.append(values["loss"])
        return values, grads


def test_worst_case_keeps_the_best_point_seen():
    """Sign steps of 2ρ = 8 jump to the corners ±4 (loss 1 − cos 4 ≈ 1.65) from a random start
    that may be higher (up to 2 at ±π): the largest loss seen is returned, not the last."""
    inputs = keras.Input((1,), dtype="float64")
    model = keras.Model(inputs, Cosine(dtype="float64")(inputs))
    obj = RecordingObjective(model, (np.zeros((2, 1)), np.zeros((2, 1))), loss=lambda t, p: p[:, 0])
    for seed in range(10):
        obj.losses = []
        got = landscape.worst_case_sharpness(obj, 4.0, norm="linf", steps=3, seed=seed)
        assert got.max_loss == max(obj.losses)
        assert got.value == max(obj.losses) - obj.losses[0]
        if obj.losses[-1] < max(obj.losses) - 0.1:
            break
    else:
        pytest.fail("no seed started above the corners")


def test_worst_case_without_random_start_is_stuck_at_an_exact_minimum(minimum):
    obj = quadratic_objective(*minimum)
    assert landscape.worst_case_sharpness(obj, 0.1, random_start=False).value == 0.0


@pytest.fixture(scope="module")
def regression():
    """Linear least squares: the per-batch losses differ, so m-sharpness ≠ full-batch sharpness."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=12)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,), dtype="float64")
    model = keras.Model(inputs, keras.layers.Dense(1, dtype="float64")(inputs))
    return model, x, y


def test_m_sharpness_is_the_mean_of_per_batch_worst_cases(regression):
    model, x, y = regression
    obj = landscape.Objective(model, (x, y), loss="mse", metrics=())
    options = dict(rho=0.3, norm="l2", steps=5, random_start=False)
    got = landscape.worst_case_sharpness(obj, batch_size=4, **options)
    manual = [
        landscape.worst_case_sharpness(
            landscape.Objective(model, (x[s : s + 4], y[s : s + 4]), loss="mse", metrics=()),
            **options,
        ).value
        for s in (0, 4, 8)
    ]
    np.testing.assert_allclose(got.batch_values, manual, rtol=1e-12)
    assert got.value == pytest.approx(np.mean(manual), rel=1e-12)
    assert got.stderr == pytest.approx(np.std(manual, ddof=1) / math.sqrt(3), rel=1e-9)
    assert got.n_gradients == 15
    full = landscape.worst_case_sharpness(obj, **options)
    assert landscape.worst_case_sharpness(obj, batch_size=12, **options).value == pytest.approx(
        full.value, rel=1e-12
    )
    assert got.value != pytest.approx(full.value, rel=1e-3)
    two = landscape.worst_case_sharpness(obj, batch_size=4, max_batches=2, **options)
    np.testing.assert_allclose(two.batch_values, manual[:2], rtol=1e-12)


def test_m_sharpness_of_a_dataset_objective_equals_arrays(regression):
    model, x, y = regression
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    options = dict(rho=0.3, norm="linf", adaptive=True, steps=3, batch_size=6, seed=0)
    arrays = landscape.worst_case_sharpness(
        landscape.Objective(model, (x, y), loss="mse", metrics=()), **options
    )
    dataset = landscape.worst_case_sharpness(
        landscape.Objective(model, ds, loss="mse", metrics=()), **options
    )
    np.testing.assert_allclose(dataset.batch_values, arrays.batch_values, rtol=1e-12)


# ----------------------------------------------------------------- average-case sharpness
@pytest.mark.parametrize(
    ("norm", "adaptive"), list(itertools.product(["l2", "linf"], [False, True]))
)
def test_average_sharpness_closed_forms(minimum, norm, adaptive):
    """E ½δᵀAδ = ½ Σ Aᵢᵢ E δᵢ²: ρ²cᵢ² for Gaussian δ, ρ²cᵢ²/3 for uniform δ."""
    A, x = minimum
    rho = 0.1
    c = np.abs(x) if adaptive else np.ones(N)
    second_moment = 1.0 if norm == "l2" else 1.0 / 3.0
    expected = 0.5 * rho**2 * second_moment * np.sum(np.diag(A) * c**2)
    got = landscape.average_sharpness(
        quadratic_objective(A, x), rho, norm=norm, adaptive=adaptive, samples=300, seed=0
    )
    assert abs(got.value - expected) < 4 * got.stderr
    assert got.stderr < 0.15 * expected
    assert got.samples == 300
    assert (got.norm, got.adaptive, got.rho) == (norm, adaptive, rho)


def test_average_sharpness_is_seeded(minimum):
    obj = quadratic_objective(*minimum)
    first = landscape.average_sharpness(obj, 0.1, samples=3, seed=7)
    assert landscape.average_sharpness(obj, 0.1, samples=3, seed=7) == first
    assert landscape.average_sharpness(obj, 0.1, samples=3, seed=8) != first
    assert math.isnan(landscape.average_sharpness(obj, 0.1, samples=1, seed=0).stderr)


# ------------------------------------------------------- Dinh et al.: rescaled ReLU layers
ALPHA = 3.0


@pytest.fixture(scope="module")
def rescaled_pair():
    """The same function twice: layer 1 scaled by α, layer 2's kernel by 1/α (float64)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 4))
    y = rng.integers(0, 3, 32)

    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,), dtype="float64")
        h = keras.layers.Dense(6, activation="relu", dtype="float64")(inputs)
        return keras.Model(inputs, keras.layers.Dense(3, dtype="float64")(h))

    original, rescaled = build(), build()
    k1, b1, k2, b2 = original.get_weights()
    rescaled.set_weights([ALPHA * k1, ALPHA * b1, k2 / ALPHA, b2])
    np.testing.assert_allclose(rescaled.predict(x, verbose=0), original.predict(x, verbose=0))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return tuple(landscape.Objective(m, (x, y), loss=loss) for m in (original, rescaled))


METRICS = {
    "worst_l2": lambda o, a: landscape.worst_case_sharpness(o, 0.2, adaptive=a, seed=0),
    "worst_linf": lambda o, a: landscape.worst_case_sharpness(
        o, 0.05, norm="linf", adaptive=a, seed=0
    ),
    "average_l2": lambda o, a: landscape.average_sharpness(o, 0.1, adaptive=a, seed=0),
    "average_linf": lambda o, a: landscape.average_sharpness(
        o, 0.1, norm="linf", adaptive=a, seed=0
    ),
}


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_adaptive_sharpness_is_invariant_to_relu_rescaling_and_plain_is_not(rescaled_pair, metric):
    original, rescaled = rescaled_pair
    assert original.evaluate()["loss"] == pytest.approx(rescaled.evaluate()["loss"], rel=1e-12)
    fn = METRICS[metric]
    adaptive = [fn(o, True).value for o in rescaled_pair]
    assert adaptive[0] > 0
    assert adaptive[1] == pytest.approx(adaptive[0], rel=1e-6)
    plain = [fn(o, False).value for o in rescaled_pair]
    assert abs(plain[1] - plain[0]) > 0.05 * abs(plain[0])


def test_epsilon_sharpness_is_not_reparametrization_invariant(rescaled_pair):
    values = [landscape.epsilon_sharpness(o, 0.01, seed=0).value for o in rescaled_pair]
    assert abs(values[1] - values[0]) > 0.05 * values[0]


# ---------------------------------------------------------------- the weights stay the same
@pytest.fixture(scope="module")
def bn_objective():
    """A conv net with BatchNorm (non-trainable state) and Dropout, float32."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, 24).astype("int32")
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 3)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dropout(0.5)(h)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    test = (x[:8], y[:8])
    return landscape.Objective(model, (x, y), batch_size=8, test_data=test)


def test_weights_are_bit_identical_after_every_metric(bn_objective):
    model = bn_objective.model
    before = _snapshot(model)
    landscape.epsilon_sharpness(bn_objective, seed=0)
    _assert_bit_identical(model, before)
    landscape.epsilon_sharpness(bn_objective, subspace_dim=2, seed=0)
    _assert_bit_identical(model, before)
    for norm, adaptive in itertools.product(["l2", "linf"], [False, True]):
        landscape.worst_case_sharpness(bn_objective, 0.05, norm=norm, adaptive=adaptive, steps=2)
        _assert_bit_identical(model, before)
        landscape.average_sharpness(bn_objective, 0.05, norm=norm, adaptive=adaptive, samples=2)
        _assert_bit_identical(model, before)
    landscape.worst_case_sharpness(bn_objective, 0.05, steps=2, batch_size=8, max_batches=2)
    _assert_bit_identical(model, before)
    landscape.sharpness_report(bn_objective, include_hessian=False, steps=2, samples=2)
    _assert_bit_identical(model, before)


# ---------------------------------------------------------------------------------- report
def test_report_without_hessian_is_flat_json_floats(bn_objective):
    report = landscape.sharpness_report(
        bn_objective, include_hessian=False, steps=3, samples=3, rho={"worst_linf": None}
    )
    assert json.loads(json.dumps(report)) == report
    assert report.pop("precision") == bn_objective.precision == "float32"
    assert all(isinstance(v, float) for v in report.values())
    expected = [
        "loss",
        "acc",
        "test_loss",
        "test_acc",
        "epsilon_sharpness",
        "worst_l2",
        "worst_l2_adaptive",
        "worst_linf_adaptive",
        "average_l2",
        "average_l2_stderr",
        "average_l2_adaptive",
        "average_l2_adaptive_stderr",
    ]
    assert list(report) == expected
    evaluated = bn_objective.evaluate()
    assert report["loss"] == evaluated["loss"]
    assert report["acc"] == evaluated["acc"]
    # every ball measure of the report equals the measure called alone
    for name in ("worst_l2", "worst_l2_adaptive", "worst_linf_adaptive"):
        _, norm, adaptive = sharpness._report_metric(name)
        seeded = landscape.worst_case_sharpness(
            bn_objective, sharpness.REPORT_RHO[name], steps=3, seed=0, norm=norm,
            adaptive=adaptive,
        )  # fmt: skip
        assert report[name] == seeded.value
    for name in ("average_l2", "average_l2_adaptive"):
        _, norm, adaptive = sharpness._report_metric(name)
        alone = landscape.average_sharpness(
            bn_objective, sharpness.REPORT_RHO[name], samples=3, seed=0, norm=norm,
            adaptive=adaptive,
        )  # fmt: skip
        assert (report[name], report[f"{name}_stderr"]) == (alone.value, alone.stderr)


def test_report_records_the_precision_it_was_computed_in(bn_objective):
    """A float32 CNN with BatchNorm computed in float64: the same loss, and the report says so."""
    wide = bn_objective.with_precision("float64")
    report = landscape.sharpness_report(
        wide, include_hessian=False, epsilon=None, rho=dict.fromkeys(sharpness.REPORT_RHO)
    )
    assert report["precision"] == "float64" and bn_objective.precision == "float32"
    assert report["loss"] == pytest.approx(bn_objective.evaluate()["loss"], rel=1e-5)


# ------------------------------------------------------------------------------ arguments
def test_unknown_norm_is_refused(minimum):
    obj = quadratic_objective(*minimum)
    expected = "Unknown norm 'l1'; expected one of ('l2', 'linf')."
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        landscape.worst_case_sharpness(obj, 0.1, norm="l1")
    with pytest.raises(ValueError, match="Unknown norm 'l1'"):
        landscape.average_sharpness(obj, 0.1, norm="l1")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda o: landscape.epsilon_sharpness(o, 0.0), "`epsilon`.*epsilon=0.0"),
        (lambda o: landscape.epsilon_sharpness(o, max_iter=0), "`max_iter`.*max_iter=0"),
        (lambda o: landscape.epsilon_sharpness(o, subspace_dim=0), "subspace_dim=0"),
        (lambda o: landscape.epsilon_sharpness(o, projection=np.ones((2, 2))), "`projection`"),
        (lambda o: landscape.worst_case_sharpness(o, -1), r"`rho`.*rho=-1\."),
        (lambda o: landscape.worst_case_sharpness(o, float("nan")), "rho=nan"),
        (lambda o: landscape.worst_case_sharpness(o, 0.1, steps=0), "steps=0"),
        (lambda o: landscape.worst_case_sharpness(o, 0.1, step_size=-2), "step_size=-2"),
        (lambda o: landscape.worst_case_sharpness(o, 0.1, batch_size=0), "batch_size=0"),
        (lambda o: landscape.worst_case_sharpness(o, 0.1, adaptive="yes"), "adaptive='yes'"),
        (lambda o: landscape.average_sharpness(o, 0.0), "rho=0.0"),
        (lambda o: landscape.average_sharpness(o, 0.1, samples=1.5), "samples=1.5"),
        (lambda o: landscape.sharpness_report(o, rho={"worst_l1": 0.1}), "'worst_l1'"),
        (lambda o: landscape.sharpness_report(o, rho={"worst_l2": -1.0}), "worst_l2.*-1.0"),
        (lambda o: landscape.worst_case_sharpness("model", 0.1), "`objective`"),
    ],
)
def test_bad_arguments_name_the_argument_and_value(minimum, call, match):
    with pytest.raises(ValueError, match=match):
        call(quadratic_objective(*minimum))


def test_report_with_hessian_on_a_quadratic(minimum):
    """The Hessian of ½(w − x)ᵀA(w − x) is A: top eigenvalues and trace in closed form."""
    pytest.importorskip("landscape.hessian")
    A, x = minimum
    obj = quadratic_objective(A, x, c=0.25)
    report = landscape.sharpness_report(obj, k=2, steps=20, samples=3, trace_tol=0.05)
    assert json.loads(json.dumps(report)) == report
    assert list(report)[:7] == [
        "loss",
        "hessian_eigenvalue_1",
        "hessian_eigenvalue_2",
        "hessian_converged",
        "hessian_trace",
        "hessian_trace_stderr",
        "hessian_trace_converged",
    ]
    assert report["hessian_converged"] is True and report["hessian_trace_converged"] is True
    assert report["loss"] == pytest.approx(0.25, rel=1e-12)
    eigenvalues = np.linalg.eigvalsh(A)
    assert report["hessian_eigenvalue_1"] == pytest.approx(eigenvalues[-1], rel=1e-6)
    assert report["hessian_eigenvalue_2"] == pytest.approx(eigenvalues[-2], rel=1e-4)
    # N = 5 parameters ≤ the probe cap: hessian_trace computes the trace exactly
    assert report["hessian_trace"] == pytest.approx(np.trace(A), rel=1e-10)
    assert report["hessian_trace_stderr"] == 0.0
    # At the minimum the plain worst case is ½ρ²λ_max(A), the curvature the Hessian reports.
    rho = sharpness.REPORT_RHO["worst_l2"]
    assert report["worst_l2"] == pytest.approx(0.5 * rho**2 * eigenvalues[-1], rel=1e-3)


def test_report_trace_samples_caps_the_hutchinson_probes(minimum):
    """A tolerance never reached stops at ``trace_samples`` probes, as hessian_trace does."""
    hessian = pytest.importorskip("landscape.hessian")
    obj = quadratic_objective(*minimum)
    rho = dict.fromkeys(sharpness.REPORT_RHO)  # only the Hessian rows
    # A cap below N = 5 (at least N would trace exactly, with no probes at all)
    report = landscape.sharpness_report(obj, k=1, rho=rho, trace_tol=1e-12, trace_samples=4)
    capped = hessian.hessian_trace(obj, samples=4, tol=1e-12, seed=0)
    assert capped.n_hvp == 4 and capped.method == "hutchinson"
    assert report["hessian_trace"] == capped.estimate
    assert report["hessian_trace_stderr"] == capped.stderr > 0
    assert report["hessian_trace_converged"] is False and capped.capped
    with pytest.raises(ValueError, match="trace_samples=0"):
        landscape.sharpness_report(obj, trace_samples=0)


def test_report_forwards_the_eigenvalue_cost_knobs(minimum, monkeypatch):
    """eigen_tol, eigen_max_iter and basis_size reach hessian_eigenvalues; a run stopped at
    its cap is flagged not converged."""
    hessian = pytest.importorskip("landscape.hessian")
    obj = quadratic_objective(*minimum)
    rho = dict.fromkeys(sharpness.REPORT_RHO)  # only the Hessian rows
    calls = []
    original = hessian.hessian_eigenvalues
    monkeypatch.setattr(
        hessian, "hessian_eigenvalues", lambda *a, **kw: calls.append(kw) or original(*a, **kw)
    )
    report = landscape.sharpness_report(
        obj, k=1, rho=rho, epsilon=None, eigen_tol=1e-12, eigen_max_iter=2, basis_size=3,
        trace_samples=10,
    )  # fmt: skip
    knobs = {"tol": 1e-12, "max_iter": 2, "basis_size": 3}
    assert calls == [{"k": 1, "seed": 0, "verbose": 0, **knobs}]
    capped = original(obj, k=1, tol=1e-12, max_iter=2, basis_size=3, seed=0)
    assert capped.capped and not capped.converged
    assert report["hessian_eigenvalue_1"] == capped.values[0]
    assert report["hessian_converged"] is False
    assert "epsilon_sharpness" not in report


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"eigen_max_iter": 0}, "eigen_max_iter=0"),
        ({"eigen_tol": 2.0}, "`eigen_tol` must be in \\(0, 1\\). Received: eigen_tol=2.0"),
        ({"basis_size": 0}, "basis_size=0"),
        ({"epsilon": 0.0}, "epsilon=0.0"),
        ({"steps": 0}, "steps=0"),
        ({"samples": 0}, "samples=0"),
    ],
)
def test_report_refuses_bad_cost_settings_before_any_work(minimum, options, match):
    obj = quadratic_objective(*minimum)
    with pytest.raises(ValueError, match=match):
        landscape.sharpness_report(obj, **options)
    assert obj.trace_count == {}  # nothing evaluated


def test_report_with_hessian_fails_clearly_without_the_hessian_module(minimum, monkeypatch):
    monkeypatch.setitem(sys.modules, "landscape.hessian", None)  # import raises ImportError
    obj = quadratic_objective(*minimum)
    with pytest.raises(ImportError, match="pass include_hessian=False"):
        landscape.sharpness_report(obj)
    assert "worst_l2" in landscape.sharpness_report(obj, include_hessian=False, steps=1, samples=2)


# ------------------------------------------------- the L-BFGS-B driver against SciPy's own
def _rosenbrock(x):
    f = np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    g = np.zeros_like(x)
    g[:-1] = -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2.0 * (1.0 - x[:-1])
    g[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
    return f, g


@pytest.mark.parametrize(
    "case",
    [
        (0.5, 1, 3),  # a box that cuts off the minimum at (1, …, 1): iterates end on bounds
        (2.0, 100, 7),  # the minimum inside the box: SciPy's convergence test stops it
        (2.0, 4, 11),  # the iteration cap
        (np.inf, 30, 5),  # no bounds at all (codes 0)
    ],
)
def test_box_lbfgs_retraces_scipy_minimize_exactly(case):
    """``minimize_in_box`` drives SciPy's compiled routine itself (its Python set-up costs
    ~100 s on ResNet-50); every iterate must be SciPy's public ``minimize``'s, bit for bit."""
    import scipy.optimize

    from landscape._box_lbfgs import minimize_in_box

    half, max_iter, seed = case
    rng = np.random.default_rng(seed)
    n = 12
    lower, upper = -half * np.ones(n), half * np.ones(n)
    lower[::3] = -half / 4  # uneven bounds
    x0 = rng.uniform(-1.5, 1.5, n)  # partly outside the box: clipped by both
    seen_ours, seen_scipy = [], []

    def recorded(seen):
        def fun(x):
            seen.append(x.copy())
            return _rosenbrock(x)

        return fun

    ours = minimize_in_box(recorded(seen_ours), x0, lower, upper, max_iter=max_iter)
    ref = scipy.optimize.minimize(
        recorded(seen_scipy),
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=scipy.optimize.Bounds(lower, upper),
        options={"maxiter": max_iter},
    )
    assert len(seen_ours) == len(seen_scipy) == ours.nfev == ref.nfev
    for a, b in zip(seen_ours, seen_scipy):
        assert a.tobytes() == b.tobytes()
    assert ours.x.tobytes() == ref.x.tobytes() and ours.fun == ref.fun
    assert ours.nit == ref.nit and ours.message == ref.message
    # Handing over x0 (clipped in place, then the routine's iterate): the same run.
    owned = np.array(x0, np.float64)
    mine = minimize_in_box(recorded([]), owned, lower, upper, max_iter=max_iter, own_x0=True)
    assert mine.x.tobytes() == ref.x.tobytes() and np.shares_memory(mine.x, owned)


def test_box_lbfgs_falls_back_to_minimize_without_the_routine(monkeypatch):
    """Where SciPy's routine is absent (or refuses its arguments), SciPy's public minimize runs:
    the same result."""
    from landscape import _box_lbfgs

    lower, upper, x0 = -np.ones(5) * 0.4, np.ones(5) * 0.4, np.linspace(-1, 1, 5)
    direct = _box_lbfgs.minimize_in_box(_rosenbrock, x0, lower, upper, max_iter=20)

    class Refusing:
        @staticmethod
        def setulb(*args):
            raise TypeError("setulb() takes 18 positional arguments but 17 were given")

    monkeypatch.setattr(_box_lbfgs, "_routine", Refusing)
    fallback = _box_lbfgs.minimize_in_box(_rosenbrock, x0, lower, upper, max_iter=20)
    assert fallback.x.tobytes() == direct.x.tobytes()
    assert (fallback.nit, fallback.nfev, fallback.message) == (
        direct.nit,
        direct.nfev,
        direct.message,
    )


@pytest.mark.parametrize("n", [1, 6, 1001])
def test_draws_in_place_are_numpys_own(n):
    """The in-place draws give the numbers and leave the generator state of the NumPy calls
    they replace (the measures' seeded values do not move): N(0, I), U[−1, 1]ⁿ, U[−b, b]."""
    bound = np.abs(np.random.default_rng(9).standard_normal(n)) * 1e-3 + 1e-4
    for norm, reference in [
        ("l2", lambda r: r.standard_normal(n)),
        ("linf", lambda r: r.uniform(-1.0, 1.0, n)),
    ]:
        mine, theirs = np.random.default_rng(5), np.random.default_rng(5)
        out = sharpness._draw(mine, norm, np.full(n, np.nan))
        np.testing.assert_array_equal(out, reference(theirs))
        np.testing.assert_array_equal(mine.random(3), theirs.random(3))
    mine, theirs = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(
        sharpness._uniform_in_box(mine, bound), theirs.uniform(-bound, bound)
    )
    np.testing.assert_array_equal(mine.random(3), theirs.random(3))
