"""Hutch++ (``hessian_trace(method="hutchpp")``) and ``hessian_diagonal``, against references
built another way: a quadratic ½wᵀAw with a chosen spectrum (H = A), a dense Hessian from central
finite differences of float64 gradients (first derivatives by one GradientTape, exact), and the
GGN JᵀH_ℓJ of a tiny MLP built by hand in NumPy (its Jacobian written out, H_ℓ = diag p − ppᵀ).
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_hessian import _quadratic_objective

import landscape
from landscape import diagonal, hessian

# float64 products against closed forms, and against Richardson-extrapolated differences
# (error O(h⁴), ~1e-12 relative here): rounding only.
EXACT = 1e-9
# A random estimate within this many of its own standard errors of the truth (fixed seeds: the
# tests are deterministic; a miscalibrated stderr or a bias would fail them).
SIGMAS = 4.5
N_SAMPLES, N_IN, N_HIDDEN, N_OUT = 13, 3, 4, 3
PROBES = 120  # Hutchinson's probes of the calibration test


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def mlp():
    """Dense(3→4, tanh) → Dense(4→3) logits, float64, softmax cross-entropy: 31 parameters;
    with its dense Hessian by finite differences and its GGN by hand."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((N_IN,), dtype="float64")
    h = keras.layers.Dense(N_HIDDEN, activation="tanh", name="hidden", dtype="float64")(inp)
    model = keras.Model(inp, keras.layers.Dense(N_OUT, name="out", dtype="float64")(h))
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(N_SAMPLES, N_IN)), rng.integers(0, N_OUT, N_SAMPLES)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
    obj = landscape.Objective(model, (x, y), loss, batch_size=5, metrics=())
    assert obj.trainable_variables.paths == ["hidden/kernel", "hidden/bias", "out/kernel",
                                             "out/bias"]  # fmt: skip
    return obj, _fd_hessian(model, x, y, loss), _numpy_ggn(model, x)


def _fd_hessian(model, x, y, loss_fn, h=1e-3):
    """The dense Hessian by central differences of the float64 gradient (inference mode),
    Richardson-extrapolated, (4 D(h/2) − D(h)) / 3, and symmetrized."""
    trainable = model.trainable_variables
    shapes = [tuple(v.shape) for v in trainable]
    sizes = [int(np.prod(s)) for s in shapes]
    w0 = np.concatenate([keras.ops.convert_to_numpy(v).ravel() for v in trainable])

    @tf.function(input_signature=[tf.TensorSpec([sum(sizes)], tf.float64)])
    def grad(theta):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            weights = [tf.reshape(p, s) for p, s in zip(tf.split(theta, sizes), shapes)]
            logits, _ = model.stateless_call(weights, [], x, training=False)
            loss = loss_fn(y, logits)
        return tape.gradient(loss, theta)

    def central(i, step):
        e = np.zeros_like(w0)
        e[i] = step
        return (grad(w0 + e).numpy() - grad(w0 - e).numpy()) / (2 * step)

    columns = [(4 * central(i, h / 2) - central(i, h)) / 3 for i in range(w0.size)]
    dense = np.array(columns).T
    return (dense + dense.T) / 2


def _numpy_ggn(model, x):
    """G = (1/N) Σₙ Jₙᵀ (diag pₙ − pₙpₙᵀ) Jₙ, Jₙ = ∂logits/∂θ written out for
    a = tanh(x W₁ + b₁) W₂ + b₂ (Keras kernels (in, out), flattened row-major)."""
    w1, b1, w2, b2 = (keras.ops.convert_to_numpy(v) for v in model.trainable_variables)
    g = 0.0
    for xn in x:
        h = np.tanh(xn @ w1 + b1)
        a = h @ w2 + b2
        p = np.exp(a - a.max())
        p /= p.sum()
        dh = 1.0 - h**2
        jac = np.concatenate(
            [
                np.einsum("m,j,jk->kmj", xn, dh, w2).reshape(N_OUT, -1),  # ∂a/∂W₁
                (dh[:, None] * w2).T,  # ∂a/∂b₁
                np.einsum("j,kl->kjl", h, np.eye(N_OUT)).reshape(N_OUT, -1),  # ∂a/∂W₂
                np.eye(N_OUT),  # ∂a/∂b₂
            ],
            axis=1,
        )
        g = g + jac.T @ (np.diag(p) - np.outer(p, p)) @ jac
    return g / len(x)


def _decaying_quadratic(n=40, seed=0, eigenvalues=None):
    """½wᵀAw with eigenvalues i⁻² (or those given) in a random basis: H = A."""
    rng = np.random.default_rng(seed)
    eig = 1.0 / np.arange(1, n + 1) ** 2 if eigenvalues is None else eigenvalues
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = (q * eig) @ q.T
    return a, _quadratic_objective(a)[1]


def _block(obj, name):
    """A boolean mask over the flat parameters: those of layer ``name``."""
    sizes = [int(np.prod(v.shape)) for v in obj.trainable_variables]
    owner = np.repeat([p.split("/")[0] for p in obj.trainable_variables.paths], sizes)
    return owner == name


# ------------------------------------------------------------------------------------ Hutch++
def test_hutchpp_is_exact_once_its_sketch_holds_the_range(float64):
    """A rank-4 A and a sketch of 5: tr(QᵀAQ) is the trace and the residual probes are 0."""
    eig = np.zeros(40)
    eig[:4] = [5.0, 3.0, -2.0, 1.0]
    a, obj = _decaying_quadratic(eigenvalues=eig)
    tr = landscape.hessian_trace(obj, method="hutchpp", samples=15, seed=0)
    assert tr.method == "hutchpp" and tr.sketch == 5 and tr.samples == 5 and tr.n_hvp == 15
    assert tr.sketch_trace == pytest.approx(np.trace(a), rel=EXACT)
    assert tr.estimate == pytest.approx(np.trace(a), rel=EXACT)
    assert tr.converged and tr.stderr <= EXACT * abs(tr.estimate)
    # Hutchinson at the same 15 products is far off on the same matrix.
    hutchinson = landscape.hessian_trace(obj, method="hutchinson", samples=15, seed=0)
    assert abs(hutchinson.estimate - np.trace(a)) > 1e3 * abs(tr.estimate - np.trace(a))


def test_hutchpp_beats_hutchinson_at_equal_products_on_a_decaying_spectrum(float64):
    a, obj = _decaying_quadratic()
    errors = {"hutchpp": [], "hutchinson": []}
    for seed in range(3):
        for method in errors:
            tr = landscape.hessian_trace(obj, method=method, samples=30, tol=1e-9, seed=seed)
            assert tr.n_hvp == 30 and not tr.converged and tr.capped
            errors[method].append(abs(tr.estimate - np.trace(a)))
            assert errors[method][-1] <= SIGMAS * tr.stderr
    assert np.median(errors["hutchpp"]) < np.median(errors["hutchinson"]) / 5
    payload = json.loads(json.dumps(tr.as_dict()))
    assert payload["method"] == "hutchinson" and payload["sketch"] == 0


def test_hutchpp_picks_the_exact_trace_where_the_operator_is_small(float64):
    a, obj = _decaying_quadratic()
    exact = landscape.hessian_trace(obj, method="exact")
    small = landscape.hessian_trace(obj, method="hutchpp", samples=40, seed=0)
    assert small.method == "exact" and small.n_hvp == 40 and small.stderr == 0.0
    np.testing.assert_array_equal(small.values, exact.values)
    assert small.estimate == pytest.approx(np.trace(a), rel=EXACT)


def test_hutchpp_on_a_network_and_per_layer_against_finite_differences(mlp):
    obj, hessian, _ = mlp
    tr = landscape.hessian_trace(obj, method="hutchpp", samples=24, tol=0.01, seed=0)
    assert tr.method == "hutchpp" and tr.sketch == 8 and tr.n_hvp <= 24
    assert abs(tr.estimate - np.trace(hessian)) <= SIGMAS * tr.stderr
    assert json.loads(json.dumps(tr.as_dict()))["sketch"] == 8
    # Per layer: hidden has 16 parameters (> 15: Hutch++), out 15 (exact).
    report = landscape.layer_curvature(
        obj, trace=True, trace_method="hutchpp", trace_samples=15, tol=1e-3
    )
    assert report.names == ("hidden", "out") and report.trace_method == ("hutchpp", "exact")
    masks = [_block(obj, name) for name in report.names]
    hidden, out = (np.trace(hessian[np.ix_(m, m)]) for m in masks)
    assert report.trace[1] == pytest.approx(out, rel=EXACT) and report.trace_stderr[1] == 0
    assert report.trace_stderr[0] > 0 and abs(report.trace[0] - hidden) <= (
        SIGMAS * report.trace_stderr[0]
    )


# ----------------------------------------------------------------------------------- diagonal
def test_exact_diagonal_against_finite_differences_per_variable_and_per_layer(mlp):
    obj, hessian, _ = mlp
    d = landscape.hessian_diagonal(obj)  # 31 ≤ samples: exact
    assert d.method == "exact" and d.n_hvp == d.samples == d.n_params == 31 and d.converged
    np.testing.assert_allclose(d.values, np.diag(hessian), rtol=EXACT, atol=1e-12)
    assert not d.stderr.any()
    # The exact trace's unit-vector products, bit for bit.
    np.testing.assert_array_equal(d.values, landscape.hessian_trace(obj).values)
    parts = d.by_variable()
    assert list(parts) == list(obj.trainable_variables.paths)
    for v, (path, part) in zip(obj.trainable_variables, parts.items()):
        assert part.shape == tuple(v.shape) and d.stderr_by_variable()[path].shape == part.shape
    np.testing.assert_array_equal(parts["out/kernel"].ravel(), d.values[16:28])
    payload = json.loads(json.dumps(d.as_dict(values=True)))
    assert payload["trace"] == pytest.approx(np.trace(hessian), rel=EXACT)
    assert payload["variables"]["out/kernel"]["values"] == parts["out/kernel"].tolist()
    assert "values" not in d.as_dict()["variables"]["out/bias"]
    # One layer's block: the same unit-vector products, read back on the block.
    block = landscape.hessian_diagonal(obj, variables="out")
    assert block.variables == ("out/kernel", "out/bias") and block.n_hvp == 15
    np.testing.assert_array_equal(block.values, d.values[_block(obj, "out")])


def test_hutchinson_diagonal_is_unbiased_with_a_calibrated_stderr(mlp):
    obj, hessian, _ = mlp
    d = landscape.hessian_diagonal(obj, method="hutchinson", samples=PROBES, tol=1e-6, seed=0)
    assert d.method == "hutchinson" and d.samples == d.n_hvp == PROBES and d.capped
    z = (d.values - np.diag(hessian)) / d.stderr
    assert np.abs(z).max() <= SIGMAS and 0.6 <= np.sqrt(np.mean(z**2)) <= 1.5
    # A probe's i-th value zᵢ(Hz)ᵢ has variance Σ_{j≠i} Hᵢⱼ²: the stderr estimates its root.
    off = hessian - np.diag(np.diag(hessian))
    ratio = d.stderr / np.sqrt((off**2).sum(axis=1) / PROBES)
    assert 0.85 <= np.median(ratio) <= 1.15 and ratio.min() >= 0.7 and ratio.max() <= 1.3
    # The same probes as Hutchinson's trace: the entries sum to its estimate.
    tr = landscape.hessian_trace(obj, method="hutchinson", samples=PROBES, tol=1e-6, seed=0)
    assert d.values.sum() == pytest.approx(tr.estimate, rel=1e-12)


def test_diagonal_of_a_diagonal_quadratic_is_exact_from_the_probes(float64):
    weights = np.linspace(-2.0, 5.0, 30)
    _, obj = _quadratic_objective(np.diag(weights))
    d = landscape.hessian_diagonal(obj, method="hutchinson", seed=0)
    assert d.converged and d.samples == 10  # stderr 0 from the second probe: stops at 10
    np.testing.assert_allclose(d.values, weights, rtol=EXACT)
    assert np.all(d.stderr <= EXACT)


def test_ggn_diagonal_against_jacobian_by_hand(mlp):
    obj, hessian, ggn = mlp
    d = landscape.hessian_diagonal(obj, curvature="ggn")
    assert d.method == "exact" and d.curvature == "ggn" and d.n_hvp == 31
    np.testing.assert_allclose(d.values, np.diag(ggn), rtol=EXACT, atol=1e-13)
    assert not np.allclose(np.diag(ggn), np.diag(hessian), rtol=1e-3)  # G ≠ H here
    out = _block(obj, "out")
    block = landscape.hessian_diagonal(
        obj, curvature="ggn", variables="out", method="hutchinson", samples=60, seed=1
    )
    z = (block.values - np.diag(ggn)[out]) / block.stderr
    assert block.n_params == 15 and np.abs(z).max() <= SIGMAS


# --------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda o: landscape.hessian_trace(o, method="hutchpp", samples=2),
         r"^Argument `samples` must be >= 3 with method='hutchpp' .* Received: samples=2 "),
        (lambda o: landscape.hessian_diagonal(o, method="fast"),
         r"^Unknown method 'fast'; expected one of \('auto', 'exact', 'hutchinson'\)\.$"),
        (lambda o: landscape.hessian_diagonal(o, samples=0),
         r"^Argument `samples` must be an int >= 1\. Received: samples=0\.$"),
        (lambda o: landscape.hessian_diagonal(o, tol=1.5), r"^Argument `tol` must be "),
        (lambda o: landscape.hessian_diagonal(o, curvature="fisher"),
         r"^Unknown curvature 'fisher'"),
        (lambda o: landscape.hessian_diagonal(o, variables="nothing"),
         r"^Argument `variables` must select at least one trainable variable"),
        (lambda o: landscape.hessian_diagonal(o, curvature="ggn"), r"curvature='ggn'"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_sentence_before_any_product(float64, call, message):
    _, obj = _quadratic_objective(np.diag([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match=message) as error:
        call(obj)
    assert "\n" not in str(error.value)
    assert obj.trace_count == {}  # nothing traced or run
    assert diagonal.DIAGONAL_METHODS == ("auto", "exact", "hutchinson")


@pytest.fixture
def float64():
    """Layers made in the test compute and store in float64 (conftest resets afterwards)."""
    keras.config.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")


def test_a_hutchpp_sketch_that_cannot_fit_is_refused_before_any_product(float64, monkeypatch):
    _, obj = _decaying_quadratic()
    monkeypatch.setattr(hessian, "available_memory", lambda: 5_000)
    # 30 products: a sketch of 10, (3 · 10 + 4) float64 vectors of 40 entries = 10.9 kB.
    with pytest.raises(ValueError, match=r"^hessian_trace\(method='hutchpp'\) with a sketch of "
                       r"10 vectors needs about 10\.9 kB .* pass a smaller `samples`"):  # fmt: skip
        landscape.hessian_trace(obj, method="hutchpp", samples=30)
    assert obj.trace_count == {}


def test_one_probe_gives_infinite_errors_that_json_writes_as_null(mlp):
    obj = mlp[0]
    d = landscape.hessian_diagonal(obj, method="hutchinson", samples=1, seed=0)
    assert not d.converged and not np.isfinite(d.stderr).any()  # no spread from one probe
    saved = json.loads(json.dumps(d.as_dict(values=True), allow_nan=False))  # strict JSON
    for row in saved["variables"].values():
        assert row["max_stderr"] is None
        assert set(np.ravel(np.array(row["stderr"], dtype=object)).tolist()) == {None}
