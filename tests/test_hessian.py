"""Hessian: products against a dense Hessian, eigenvalues/trace/density against closed forms."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import landscape
from landscape import hessian

# A spectrum with a close top pair (100/97), a third at 90, a bulk and two negative eigenvalues.
TOP = np.array([100.0, 97.0, 90.0])
NEGATIVE = np.array([-10.0, -25.0])
DIM = 40


def _snapshot(model):
    return [keras.ops.convert_to_numpy(v.value).copy() for v in model.variables]


def _assert_bit_identical(model, snapshot):
    for v, s in zip(model.variables, snapshot):
        assert keras.ops.convert_to_numpy(v.value).tobytes() == s.tobytes(), v.path


@pytest.fixture
def float64():
    """Layers made in the test compute and store in float64 (conftest resets afterwards)."""
    keras.config.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")
    yield


class Quadratic(keras.layers.Layer):
    """Outputs ½ wᵀAw for every sample: with ``loss=_output`` the objective is ½ wᵀAw."""

    def __init__(self, a, **kwargs):
        super().__init__(dtype="float64", **kwargs)
        self.a = np.asarray(a, np.float64)

    def build(self, input_shape):
        self.w = self.add_weight(shape=(self.a.shape[0],), initializer="random_normal")

    def call(self, x):
        value = 0.5 * tf.tensordot(self.w, tf.linalg.matvec(tf.constant(self.a), self.w), 1)
        return tf.zeros_like(x[:, :1]) + value


def _output(y_true, y_pred):
    return y_pred[:, 0]


def _quadratic_objective(a):
    keras.utils.set_random_seed(0)
    inp = keras.Input((1,), dtype="float64")
    model = keras.Model(inp, Quadratic(a)(inp))
    data = (np.zeros((5, 1)), np.zeros((5, 1)))
    return model, landscape.Objective(model, data, _output, batch_size=2, metrics=())


def _spectrum(seed=0):
    rng = np.random.default_rng(seed)
    bulk = rng.uniform(-5.0, 60.0, DIM - len(TOP) - len(NEGATIVE))
    eig = np.concatenate([TOP, bulk, NEGATIVE])
    q, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
    return eig, (q * eig) @ q.T


@pytest.fixture
def quadratic(float64):
    eig, a = _spectrum()
    model, obj = _quadratic_objective(a)
    return eig, model, obj


# --------------------------------------------------------------------------- products
def _tiny_mlp():
    keras.utils.set_random_seed(1)
    inp = keras.Input((3,))
    h = keras.layers.Dense(4, activation="tanh")(inp)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.5)(h)
    out = keras.layers.Dense(3)(h)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(1)
    bn = model.layers[2]  # non-trivial moving statistics, as after training
    bn.moving_mean.assign(rng.normal(size=4) * 0.3)
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 4))
    bn.gamma.assign(rng.uniform(0.5, 1.5, 4))
    return model


def _dense_hessian(model, x, y, s):
    """The Hessian of Σ s ℓ / n in inference mode, by tape.jacobian of the gradient."""
    trainable = model.trainable_variables
    shapes = [tuple(v.shape) for v in trainable]
    sizes = [int(np.prod(sh)) for sh in shapes]
    theta = tf.Variable(np.concatenate([keras.ops.convert_to_numpy(v).ravel() for v in trainable]))
    non_trainable = [v.value for v in model.non_trainable_variables]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            parts = tf.split(theta, sizes)
            weights = [tf.reshape(p, sh) for p, sh in zip(parts, shapes)]
            logits, _ = model.stateless_call(weights, non_trainable, x, training=False)
            loss = tf.reduce_sum(s * loss_fn(y, logits)) / len(y)
        grad = inner.gradient(loss, theta)
    return outer.jacobian(grad, theta).numpy(), sizes


@pytest.mark.parametrize("mode", hessian.HVP_MODES)
@pytest.mark.parametrize("eager", [False, True], ids=["graph", "eager"])
def test_hvp_equals_dense_hessian_times_v_with_bn_and_dropout(float64, mode, eager):
    model = _tiny_mlp()
    rng = np.random.default_rng(2)
    x, y, s = rng.normal(size=(23, 3)), rng.integers(0, 3, 23), rng.uniform(0.5, 2.0, 23)
    before = _snapshot(model)
    h, sizes = _dense_hessian(model, x, y, s)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    obj = landscape.Objective(model, (x, y, s), loss, batch_size=5, metrics=())
    v = rng.normal(size=h.shape[0])
    parts = [
        p.reshape(tuple(t.shape))
        for p, t in zip(np.split(v, np.cumsum(sizes)[:-1]), obj.trainable_variables)
    ]
    tf.config.run_functions_eagerly(eager)
    try:
        got = obj.hessian_vector_product(parts, mode=mode)
    finally:
        tf.config.run_functions_eagerly(False)
    got = np.concatenate([g.numpy().ravel() for g in got])
    assert np.linalg.norm(h @ v) > 0.1
    np.testing.assert_allclose(got, h @ v, rtol=1e-9, atol=1e-12)
    _assert_bit_identical(model, before)


# ----------------------------------------------------------------- linear regression
def _regression(n_out, design, seed=0):
    """y = X W with Keras MSE: H = kron((2 / (n · n_out)) XᵀSX, I_out) over the kernel."""
    rng = np.random.default_rng(seed)
    n, p = 41, 6
    s = rng.uniform(0.5, 1.5, n)
    if design == "orthogonal":  # XᵀSX diagonal, so every Rademacher probe gives the trace
        q, _ = np.linalg.qr(rng.normal(size=(n, p)))
        x = (q * np.linspace(1.0, 4.0, p)) / np.sqrt(s)[:, None]
    else:
        x = rng.normal(size=(n, p)) * np.linspace(0.5, 2.0, p)
    y = rng.normal(size=(n, n_out))
    inp = keras.Input((p,), dtype="float64")
    model = keras.Model(inp, keras.layers.Dense(n_out, use_bias=False)(inp))
    g = 2.0 / (n * n_out) * x.T @ (s[:, None] * x)
    h = np.kron(g, np.eye(n_out))  # kernel (p, n_out) flattened row-major
    obj = landscape.Objective(model, (x, y, s), "mse", batch_size=10, metrics=())
    return model, obj, h


@pytest.mark.parametrize("n_out", [1, 2])
@pytest.mark.parametrize("design", ["generic", "orthogonal"])
@pytest.mark.parametrize("method", ["lanczos", "arpack"])
def test_linear_regression_eigenvalues_and_trace_closed_form(float64, n_out, design, method):
    model, obj, h = _regression(n_out, design)
    before = _snapshot(model)
    want = np.linalg.eigh(h)[0]
    k = 3 if n_out == 1 else 1  # eigenvalues are n_out-fold: one Krylov space sees one copy
    eig = landscape.hessian_eigenvalues(obj, k=k, method=method, tol=1e-10, seed=0)
    np.testing.assert_allclose(eig.values, want[::-1][:k], rtol=1e-8)
    assert eig.converged and np.all(eig.residuals <= 1e-10)
    low = landscape.hessian_eigenvalues(obj, which="smallest", method=method, tol=1e-10, seed=0)
    np.testing.assert_allclose(low.values, want[:1], rtol=1e-8)
    exact = landscape.hessian_trace(obj, samples=200, tol=1e-3, seed=0)  # n ≤ 200: exact
    assert exact.method == "exact" and exact.n_hvp == h.shape[0] and exact.stderr == 0.0
    assert exact.estimate == pytest.approx(want.sum(), rel=1e-10)
    tr = landscape.hessian_trace(obj, samples=200, tol=1e-3, seed=0, method="hutchinson")
    if design == "orthogonal":
        assert tr.estimate == pytest.approx(want.sum(), rel=1e-8)
        assert tr.samples == hessian.TRACE_MIN_SAMPLES and tr.converged
    else:
        assert abs(tr.estimate - want.sum()) <= 4 * tr.stderr
    _assert_bit_identical(model, before)


def test_l2_regularization_adds_two_lambda_identity(float64):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(30, 1))
    inp = keras.Input((4,), dtype="float64")
    dense = keras.layers.Dense(1, kernel_regularizer=keras.regularizers.L2(0.5))
    model = keras.Model(inp, dense(inp))
    x1 = np.hstack([x, np.ones((30, 1))])  # kernel and bias
    h = 2.0 / 30 * x1.T @ x1
    plain = landscape.Objective(model, (x, y), "mse", metrics=())
    regular = landscape.Objective(model, (x, y), "mse", metrics=(), regularization=True)
    v = [rng.normal(size=(4, 1)), rng.normal(size=(1,))]
    a, b = plain.hessian_vector_product(v), regular.hessian_vector_product(v)
    hv = h @ np.concatenate([v[0][:, 0], v[1]])
    np.testing.assert_allclose(a[0].numpy()[:, 0], hv[:4], rtol=1e-10)
    np.testing.assert_allclose(a[1].numpy(), hv[4:], rtol=1e-10)
    np.testing.assert_allclose(b[0].numpy() - a[0].numpy(), 2 * 0.5 * v[0], rtol=1e-10)
    np.testing.assert_allclose(b[1].numpy(), a[1].numpy(), rtol=1e-12)  # bias: no regularizer
    penalty = np.diag([2 * 0.5] * 4 + [0.0])  # 2λ on the kernel's entries only
    for o, hh in ((plain, h), (regular, h + penalty)):
        got = landscape.hessian_eigenvalues(o, k=2, tol=1e-10, seed=0).values
        np.testing.assert_allclose(got, np.linalg.eigh(hh)[0][::-1][:2], rtol=1e-8)


# ------------------------------------------------------------- chosen spectrum ½ wᵀAw
def test_lanczos_top3_and_most_negative_with_certificates(quadratic):
    eig, model, obj = quadratic
    before = _snapshot(model)
    tol = 1e-6
    top = landscape.hessian_eigenvalues(obj, k=3, tol=tol, seed=0)
    np.testing.assert_allclose(top.values, TOP, rtol=tol)
    assert top.converged and np.all(top.residuals <= tol)
    assert top.which == "largest" and top.method == "lanczos" and top.n_params == DIM
    assert top.n_hvp < DIM  # fewer products than the dimension, including 3 for certificates
    low = landscape.hessian_eigenvalues(obj, which="smallest", tol=tol, seed=0)
    assert low.values[0] == pytest.approx(NEGATIVE.min(), rel=tol) and low.converged
    mag = landscape.hessian_eigenvalues(obj, which="magnitude", tol=tol, seed=0)
    assert mag.values[0] == pytest.approx(TOP[0], rel=tol)
    _assert_bit_identical(model, before)


def test_eigenvectors_are_directions_with_the_right_curvature(quadratic):
    eig, model, obj = quadratic
    top = landscape.hessian_eigenvalues(obj, k=2, tol=1e-8, seed=1)
    v1, v2 = top.vectors
    assert isinstance(v1, landscape.Direction)
    assert v1.norm() == pytest.approx(1.0, rel=1e-10)
    assert abs(v1.dot(v2)) < 1e-8
    assert v1.metadata["eigenvalue"] == top.values[0]
    # As a surface direction: the second difference of the loss along v1 is λ₁ (a quadratic).
    a = 0.1
    loss = [obj.evaluate_at([t], [v1])["loss"] for t in (-a, 0.0, a)]
    assert (loss[0] - 2 * loss[1] + loss[2]) / a**2 == pytest.approx(TOP[0], rel=1e-6)


def test_power_iteration_stopped_pyhessians_way_is_worse_at_equal_products(quadratic):
    """Why Lanczos is the default: on a close top pair (100/97) the relative change of λ becomes
    small long before λ is accurate, and with the same number of products power iteration is
    still far off."""
    eig, model, obj = quadratic
    lanczos = landscape.hessian_eigenvalues(obj, tol=1e-4, seed=0)
    power = landscape.hessian_eigenvalues(obj, method="power", tol=1e-3, seed=0)
    equal = landscape.hessian_eigenvalues(
        obj, method="power", tol=1e-12, max_iter=lanczos.n_hvp - 1, seed=0
    )
    assert equal.n_hvp == lanczos.n_hvp

    def error(r):
        return abs(r.values[0] - TOP[0]) / TOP[0]

    assert lanczos.converged and error(lanczos) < 1e-7
    # PyHessian's rule stops early, on 97 (3 % off) and does not know it: the residual does.
    assert error(power) > 1e-2 and power.n_hvp < lanczos.n_hvp
    assert not power.converged and power.residuals[0] > 1e-3
    assert error(equal) > 1000 * error(lanczos) and not equal.converged
    assert equal.capped and not lanczos.capped and not power.capped


def test_power_iteration_with_deflation_on_a_well_separated_spectrum(float64):
    d = np.array([10.0, 5.0, 2.0, 1.0, 0.5, 0.25])
    model, obj = _quadratic_objective(np.diag(d))
    r = landscape.hessian_eigenvalues(obj, k=2, method="power", tol=1e-10, max_iter=500, seed=0)
    np.testing.assert_allclose(r.values, d[:2], rtol=1e-8)
    # λ has settled to 1e-10, the vectors only to about its square root: no certificate.
    assert np.all(r.residuals < 1e-4) and not r.converged
    assert abs(r.vectors[0].dot(r.vectors[1])) < 1e-4


def test_one_trace_for_all_products(quadratic):
    eig, model, obj = quadratic
    r = landscape.hessian_eigenvalues(obj, k=3, tol=1e-6, seed=0)
    landscape.hessian_trace(obj, samples=12, seed=0)
    landscape.hessian_spectrum(obj, steps=5, runs=2, seed=0)
    assert r.n_hvp > 10
    assert obj.trace_count == {"train": 1, "train/hvp/backward_over_backward": 1}


# ------------------------------------------------------------- thick-restart Lanczos
def _two_sided(dim=60, seed=5):
    """Known spectrum with both ends well apart from a bulk: 100, 97, 90 and −95, −60, −40."""
    rng = np.random.default_rng(seed)
    eig = np.concatenate([[100.0, 97.0, 90.0], rng.uniform(-30.0, 70.0, dim - 6)])
    eig = np.concatenate([eig, [-95.0, -60.0, -40.0]])
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return (q * eig) @ q.T


@pytest.mark.parametrize("which", ["largest", "smallest", "magnitude"])
def test_thick_restart_in_a_small_basis_finds_the_eigh_values(float64, which):
    a = _two_sided()
    model, obj = _quadratic_objective(a)
    want = np.linalg.eigh(a)[0]
    want = {"largest": want[::-1], "smallest": want, "magnitude": want[np.argsort(-abs(want))]}
    r = landscape.hessian_eigenvalues(obj, k=3, which=which, basis_size=8, tol=1e-10, seed=0)
    np.testing.assert_allclose(r.values, want[which][:3], rtol=1e-8)
    assert r.converged and not r.capped and np.all(r.residuals <= 1e-10)
    assert r.restarts > 0 and r.n_hvp - 3 > r.basis_size == 8  # it did restart
    assert abs(r.vectors[0].dot(r.vectors[2])) < 1e-8
    # The same certified values as unrestarted Lanczos (a basis that holds the whole space).
    full = landscape.hessian_eigenvalues(obj, k=3, which=which, basis_size=60, tol=1e-10, seed=0)
    assert full.restarts == 0 and full.basis_size == 60
    np.testing.assert_allclose(r.values, full.values, rtol=1e-9)


def test_thick_restart_on_a_keras_model_matches_its_dense_hessian(float64):
    model = _tiny_mlp()
    rng = np.random.default_rng(2)
    x, y, s = rng.normal(size=(23, 3)), rng.integers(0, 3, 23), rng.uniform(0.5, 2.0, 23)
    h, _ = _dense_hessian(model, x, y, s)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    obj = landscape.Objective(model, (x, y, s), loss, batch_size=8, metrics=())
    r = landscape.hessian_eigenvalues(obj, k=3, basis_size=8, tol=1e-10, seed=0)
    np.testing.assert_allclose(r.values, np.linalg.eigh(h)[0][::-1][:3], rtol=1e-8)
    assert r.converged and r.restarts > 0 and r.n_params == h.shape[0]


def test_a_basis_that_cannot_fit_is_refused_before_any_product(quadratic, monkeypatch):
    eig, model, obj = quadratic
    assert hessian.available_memory() > 0  # /proc/meminfo on Linux
    monkeypatch.setattr(hessian, "available_memory", lambda: 5_000)
    # (basis_size + 1 + k + WORK_VECTORS) float64 vectors of 40: (20 + 1 + 2 + 4) · 40 · 8 bytes.
    need = (20 + 1 + 2 + hessian.WORK_VECTORS) * DIM * 8
    with pytest.raises(ValueError, match=f"basis_size=20 and k=2 needs about {need / 1e3:.1f} kB"):
        landscape.hessian_eigenvalues(obj, k=2)
    with pytest.raises(ValueError, match="but 5.0 kB of memory is available; pass a smaller `b"):
        landscape.hessian_eigenvalues(obj, k=2, basis_size=30)
    with pytest.raises(ValueError, match="hessian_spectrum with steps=40 .* fewer `steps`"):
        landscape.hessian_spectrum(obj, steps=80)
    assert obj.trace_count == {}  # refused before any product was traced or run
    small = landscape.hessian_eigenvalues(obj, k=2, basis_size=4, tol=1e-8, seed=0)  # 3.2 kB
    np.testing.assert_allclose(small.values, TOP[:2], rtol=1e-8)


def test_a_float32_analysis_stores_its_basis_in_float32_and_still_certifies(monkeypatch):
    """Half the memory; the same certified values as a float64 basis, to float32 rounding."""
    model = _tiny_mlp()  # float32
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(23, 3)).astype("float32"), rng.integers(0, 3, 23)
    h, _ = _dense_hessian(model, x, y, np.ones(23))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    obj = landscape.Objective(model, (x, y), loss, batch_size=8, metrics=())
    assert obj.precision == "float32" and hessian.basis_dtype(obj.precision) == np.float32
    assert hessian.basis_dtype("float64") == np.float64
    assert hessian.basis_dtype("float16") == np.float32
    stored, combine = [], hessian._combine  # the Ritz vectors are combined from the basis
    monkeypatch.setattr(hessian, "_combine", lambda c, b: stored.append(b.dtype) or combine(c, b))
    r = landscape.hessian_eigenvalues(obj, k=3, basis_size=8, tol=1e-4, seed=0)
    monkeypatch.undo()
    assert stored == [np.float32]
    assert r.converged and r.restarts > 0 and np.all(r.residuals <= 1e-4)
    np.testing.assert_allclose(r.values, np.linalg.eigh(h)[0][::-1][:3], rtol=1e-4)
    monkeypatch.setattr(hessian, "basis_dtype", lambda precision: np.dtype(np.float64))
    wide = landscape.hessian_eigenvalues(obj, k=3, basis_size=8, tol=1e-4, seed=0)
    np.testing.assert_allclose(r.values, wide.values, rtol=1e-5)
    monkeypatch.undo()
    monkeypatch.setattr(hessian, "available_memory", lambda: 100)
    with pytest.raises(ValueError, match=r"\(9 float32 basis vectors and 7 float64 vectors of"):
        landscape.hessian_eigenvalues(obj, k=3, basis_size=8)
    with pytest.raises(ValueError, match=r"\(6 float32 basis vectors and 4 float64 vectors of"):
        landscape.hessian_spectrum(obj, steps=5)


def test_a_warm_start_from_the_eigenvectors_needs_fewer_products(quadratic):
    eig, model, obj = quadratic
    cold = landscape.hessian_eigenvalues(obj, k=2, tol=1e-8, seed=0)
    # Perturbed eigenvectors, as after a training step: the warm start still converges faster.
    nudged = [v + landscape.Direction({p: 0.01 * np.ones_like(a) for p, a in v.arrays.items()})
              for v in cold.vectors]  # fmt: skip
    warm = landscape.hessian_eigenvalues(obj, k=2, tol=1e-8, seed=1, v0=nudged)
    np.testing.assert_allclose(warm.values, TOP[:2], rtol=1e-8)
    assert warm.converged and warm.warm_start and not cold.warm_start
    assert warm.n_hvp < cold.n_hvp
    again = landscape.hessian_eigenvalues(obj, k=2, tol=1e-8, seed=1, v0=cold)  # an EigenResult
    np.testing.assert_allclose(again.values, TOP[:2], rtol=1e-8)
    flat = obj.flat.concat(cold.vectors[0].aligned(obj.trainable_variables))
    one = landscape.hessian_eigenvalues(obj, tol=1e-8, seed=1, v0=flat)  # a flat array
    assert one.values[0] == pytest.approx(TOP[0], rel=1e-8) and one.n_hvp <= 6
    with pytest.raises(ValueError, match="`v0` must be a Direction or an array of n_params = 40"):
        landscape.hessian_eigenvalues(obj, v0=np.ones(3))
    with pytest.raises(ValueError, match="`v0` must be nonzero and finite"):
        landscape.hessian_eigenvalues(obj, v0=np.zeros(DIM))


def test_a_diagonal_preconditioner_gives_the_eigenvalues_of_its_inverse_times_h(quadratic):
    eig, model, obj = quadratic
    _, a = _spectrum()
    p = np.random.default_rng(3).uniform(0.2, 5.0, DIM)
    want = np.linalg.eigvals(a / p[:, None]).real  # P⁻¹A: not symmetric, same spectrum
    want = np.sort(want)[::-1]
    r = landscape.hessian_eigenvalues(obj, k=2, tol=1e-9, seed=0, preconditioner=p)
    np.testing.assert_allclose(r.values, want[:2], rtol=1e-8)
    assert r.preconditioned and r.converged
    direction = obj.flat.direction(p)
    same = landscape.hessian_eigenvalues(obj, k=2, tol=1e-9, seed=0, preconditioner=direction)
    np.testing.assert_allclose(same.values, r.values, rtol=1e-12)
    with pytest.raises(ValueError, match="`preconditioner` must be the diagonal of a positive"):
        landscape.hessian_eigenvalues(obj, preconditioner=np.r_[p[:-1], 0.0])


def test_a_run_stopped_at_its_cap_says_so(quadratic, caplog):
    eig, model, obj = quadratic
    with caplog.at_level("WARNING", logger="landscape"):
        r = landscape.hessian_eigenvalues(obj, k=3, basis_size=5, max_iter=6, tol=1e-10, seed=0)
    assert r.capped and not r.converged and r.max_iter == 6
    assert r.n_hvp == 6 + 3 and r.restarts == 1  # the cap, then three certificates
    assert "stopped at its cap, max_iter=6 products (9 products in all)" in caplog.text
    assert f"largest residual {r.residuals.max():.2g}" in caplog.text
    arpack = landscape.hessian_eigenvalues(obj, k=6, method="arpack", max_iter=1, tol=1e-12)
    assert arpack.capped and arpack.max_iter == 1 and arpack.basis_size is None


# --------------------------------------------------------------------- trace, spectrum
def test_hutchinson_is_exact_on_a_diagonal_quadratic(float64):
    d = np.random.default_rng(4).uniform(-2.0, 7.0, 25)
    model, obj = _quadratic_objective(np.diag(d))
    before = _snapshot(model)
    tr = landscape.hessian_trace(obj, seed=0, method="hutchinson")  # n = 25: auto is exact
    assert tr.estimate == pytest.approx(d.sum(), rel=1e-12)
    assert tr.stderr == pytest.approx(0.0, abs=1e-10)
    assert tr.converged and tr.samples == tr.n_hvp == hessian.TRACE_MIN_SAMPLES
    assert tr.values.shape == (tr.samples,)
    _assert_bit_identical(model, before)


def test_hutchinson_stops_on_standard_error_not_running_mean(quadratic):
    eig, model, obj = quadratic
    tr = landscape.hessian_trace(obj, samples=2000, tol=0.05, seed=0, method="hutchinson")
    assert tr.converged and tr.stderr <= 0.05 * abs(tr.estimate)
    assert tr.stderr == pytest.approx(np.std(tr.values, ddof=1) / np.sqrt(tr.samples))
    assert abs(tr.estimate - eig.sum()) <= 4 * tr.stderr
    capped = landscape.hessian_trace(obj, samples=15, tol=1e-6, seed=0)
    assert capped.samples == capped.n_hvp == 15 and not capped.converged


def test_slq_density_integrates_to_one_and_its_mean_is_trace_over_n(quadratic):
    eig, model, obj = quadratic
    before = _snapshot(model)
    spec = landscape.hessian_spectrum(obj, steps=12, runs=4, seed=7)
    assert spec.nodes.shape == spec.weights.shape == (4, 12)
    assert spec.n_params == DIM and spec.n_hvp == 48
    np.testing.assert_allclose(spec.weights.sum(axis=1), 1.0, rtol=1e-12)
    grid = spec.default_grid(20001)
    assert np.trapezoid(spec.density(grid), grid) == pytest.approx(1.0, abs=1e-6)
    wide = np.linspace(-200, 300, 50001)
    assert np.trapezoid(spec.density(wide, sigma=3.0), wide) == pytest.approx(1.0, abs=1e-6)
    # Same seed, same Rademacher probes: the measure's mean is Hutchinson's trace / n.
    tr = landscape.hessian_trace(obj, samples=4, tol=1e-12, seed=7)
    assert spec.mean() == pytest.approx(tr.estimate / DIM, rel=1e-10)
    assert spec.precision == tr.precision == obj.precision == "float64"  # a float64 model's own
    assert abs(spec.mean() - eig.mean()) <= 4 * tr.stderr / DIM
    _assert_bit_identical(model, before)


def test_trace_and_density_of_a_mixed_precision_model_record_their_precision():
    """Computed in float32 by default, in float16 on request; every result says which."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(5)
        inp = keras.Input((3,))
        h = keras.layers.Dense(2)(keras.layers.Dense(4, activation="tanh")(inp))
        model = keras.Model(inp, keras.layers.Activation("linear", dtype="float32")(h))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(5)
    data = (rng.normal(size=(16, 3)).astype("float32"), rng.integers(0, 2, 16))
    for precision, want in (("auto", "float32"), ("model", "float16")):
        obj = landscape.Objective(model, data, metrics=(), precision=precision)
        tr = landscape.hessian_trace(obj, samples=2, seed=0)
        spec = landscape.hessian_spectrum(obj, steps=2, runs=1, seed=0)
        assert obj.precision == tr.precision == spec.precision == want


def test_slq_with_a_full_krylov_space_finds_every_eigenvalue(float64):
    d = np.array([-3.0, 0.5, 1.0, 2.0, 8.0])
    model, obj = _quadratic_objective(np.diag(d))
    spec = landscape.hessian_spectrum(obj, steps=50, runs=2, seed=0)  # capped at n = 5
    assert spec.nodes.shape == (2, 5)
    np.testing.assert_allclose(np.sort(spec.nodes, axis=1), np.tile(d, (2, 1)), atol=1e-10)
    assert spec.mean() == pytest.approx(d.mean(), rel=1e-12)  # diagonal: every probe is exact


def test_slq_density_matches_a_smoothed_histogram_of_the_eigenvalues(quadratic):
    eig, model, obj = quadratic
    spec = landscape.hessian_spectrum(obj, steps=DIM, runs=3, seed=0)
    grid = np.linspace(-40, 120, 801)
    sigma = 4.0
    want = np.mean(np.exp(-0.5 * ((grid[:, None] - eig) / sigma) ** 2), axis=1)
    want /= sigma * np.sqrt(2 * np.pi)
    got = spec.density(grid, sigma=sigma)
    # A full Krylov space gives the exact eigenvalues with probe-dependent weights (mean 1/n).
    assert np.abs(got - want).max() < 0.5 * want.max()
    assert np.corrcoef(got, want)[0, 1] > 0.9


# ------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda o: landscape.hessian_eigenvalues(o, k=0), "`k` must be an int >= 1. Received: k=0"),
        (lambda o: landscape.hessian_eigenvalues(o, k=2.0), "Received: k=2.0"),
        (lambda o: landscape.hessian_eigenvalues(o, k=41), "Received: k=41"),
        (lambda o: landscape.hessian_eigenvalues(o, tol=0), "`tol` must be in \\(0, 1\\)"),
        (lambda o: landscape.hessian_eigenvalues(o, tol=1.5), "Received: tol=1.5"),
        (lambda o: landscape.hessian_eigenvalues(o, max_iter=0), "Received: max_iter=0"),
        (
            lambda o: landscape.hessian_eigenvalues(o, k=3, basis_size=4),
            "`basis_size` must be an int >= 5. Received: basis_size=4",
        ),
        (
            lambda o: landscape.hessian_eigenvalues(o, method="arpack", basis_size=10),
            "`basis_size` applies to method='lanczos' only",
        ),
        (
            lambda o: landscape.hessian_eigenvalues(o, method="qr"),
            "Unknown method 'qr'; expected one of \\('lanczos', 'arpack', 'power'\\)",
        ),
        (
            lambda o: landscape.hessian_eigenvalues(o, which="top"),
            "Unknown which 'top'; expected one of",
        ),
        (
            lambda o: landscape.hessian_eigenvalues(o, method="power", which="smallest"),
            "which='smallest'",
        ),
        (lambda o: landscape.hessian_eigenvalues(o, hvp_mode="fd"), "Unknown hvp_mode 'fd'"),
        (lambda o: landscape.hessian_eigenvalues(o, split="test"), "Unknown split 'test'"),
        (lambda o: landscape.hessian_trace(o, samples=0), "Received: samples=0"),
        (lambda o: landscape.hessian_trace(o, tol=-1.0), "Received: tol=-1.0"),
        (lambda o: landscape.hessian_spectrum(o, steps=0), "Received: steps=0"),
        (lambda o: landscape.hessian_spectrum(o, runs=-2), "Received: runs=-2"),
        (lambda o: landscape.hessian_eigenvalues(o.model), "must be a landscape.Objective"),
        (lambda o: o.hessian_vector_product([np.zeros(40)], mode="jvp"), "Unknown mode 'jvp'"),
        (lambda o: o.hessian_vector_product([]), "`vector` has 0 entries"),
        (lambda o: o.hessian_vector_product([np.zeros(3)]), "`vector` has shape \\(3,\\)"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(quadratic, call, match):
    eig, model, obj = quadratic
    with pytest.raises(ValueError, match=match):
        call(obj)
    assert obj.trace_count == {}  # rejected before any work


def test_density_rejects_bad_sigma(float64):
    spec = hessian.SpectrumResult(np.zeros((1, 2)), np.array([[0.5, 0.5]]), 2, 2)
    with pytest.raises(ValueError, match="Received: sigma=0.0"):
        spec.density([0.0], sigma=0.0)
    assert spec.default_sigma() == 1.0  # degenerate spectrum: a unit width, not zero


def test_power_warns_on_a_dominant_negative_eigenvalue_and_progress_bars_run(float64, caplog):
    d = np.array([-10.0, 3.0, 1.0, 0.5])
    model, obj = _quadratic_objective(np.diag(d))
    with caplog.at_level("WARNING", logger="landscape"):
        r = landscape.hessian_eigenvalues(obj, method="power", tol=1e-8, max_iter=300, seed=0)
    assert r.values[0] == pytest.approx(-10.0, rel=1e-6)
    assert "largest |λ|, not the largest algebraic" in caplog.text
    lanczos = landscape.hessian_eigenvalues(obj, tol=1e-8, seed=0, verbose=1)
    assert lanczos.values[0] == pytest.approx(3.0, rel=1e-8)
    landscape.hessian_trace(obj, samples=12, seed=0, verbose=1)
    landscape.hessian_spectrum(obj, steps=3, runs=2, seed=0, verbose=1)


def test_analyses_hold_blas_to_one_thread_and_restore_it(quadratic, monkeypatch):
    """The host's vector work between passes runs on one BLAS thread (``landscape._threads``:
    OpenBLAS's spinning threads and the backend's slowed each other on 2 cores); the caller's
    setting comes back after, also when the analysis raises."""
    import threadpoolctl

    def blas_threads():
        return {
            d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"
        }

    _, _, obj = quadratic
    limits = threadpoolctl.threadpool_limits(limits=2, user_api="blas")  # the caller's setting
    outside = blas_threads()
    assert outside == {2}
    seen = []
    product = type(obj).hessian_vector_product

    def recording(self, *args, **kwargs):
        seen.append(blas_threads())
        return product(self, *args, **kwargs)

    monkeypatch.setattr(type(obj), "hessian_vector_product", recording)
    landscape.hessian_eigenvalues(obj, k=1, seed=0)
    landscape.hessian_spectrum(obj, steps=4, runs=1, seed=0)
    assert seen and all(s == {1} for s in seen)
    assert blas_threads() == outside
    with pytest.raises(ValueError):
        landscape.hessian_trace(obj, samples=0)
    assert blas_threads() == outside
    limits.restore_original_limits()
