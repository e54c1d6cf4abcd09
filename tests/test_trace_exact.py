"""The exact trace Σᵢ eᵢᵀHeᵢ of small operators, against closed forms and finite differences.

``hessian_trace`` (and ``layer_curvature`` per block) computes tr(H) exactly from n unit-vector
products when n is at most its cap of probes. References: a quadratic ½wᵀAw (H = A), linear
regression (H = G = kron(2/(N·n_out) XᵀSX, I)), and central finite differences of float64
gradients (first derivatives by one GradientTape, exact) on a model with a BatchNorm block.
"""

import json

import keras
import numpy as np
import provenance_check
import pytest
import tensorflow as tf
from click.testing import CliRunner
from test_hessian import _quadratic_objective, _regression, _spectrum

import landscape
from landscape import hessian
from landscape.cli import main

# float64 products: the exact trace agrees with a closed form, and with the Richardson-
# extrapolated differences below (measured 8e-13 relative on the BatchNorm model), to rounding.
EXACT = 1e-10


@pytest.fixture
def float64():
    """Layers made in the test compute and store in float64 (conftest resets afterwards)."""
    keras.config.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")


def _bn_model(channels=6):
    """Dense(3→6, tanh), BatchNorm(6) with non-trivial moving statistics, Dense(6→3): a
    BatchNorm block of 2 × 6 = 12 parameters (γ, β)."""
    keras.utils.set_random_seed(7)
    inp = keras.Input((3,))
    h = keras.layers.Dense(channels, activation="tanh", name="hidden")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(h))
    rng = np.random.default_rng(7)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(rng.normal(size=channels) * 0.3)
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, channels))
    bn.gamma.assign(rng.uniform(0.5, 1.5, channels))
    bn.beta.assign(rng.normal(size=channels) * 0.2)
    return model


def _fd_hessian_diagonal(model, x, y, h=1e-3):
    """H_ii by central differences of the float64 gradient of the mean cross-entropy in
    inference mode, Richardson-extrapolated: (4 D(h/2) − D(h)) / 3, error O(h⁴)."""
    trainable = model.trainable_variables
    shapes = [tuple(v.shape) for v in trainable]
    sizes = [int(np.prod(s)) for s in shapes]
    w0 = np.concatenate([keras.ops.convert_to_numpy(v).ravel() for v in trainable])
    fixed = [v.value for v in model.non_trainable_variables]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def grad(w):
        theta = tf.constant(w)
        with tf.GradientTape() as tape:
            tape.watch(theta)
            weights = [tf.reshape(p, s) for p, s in zip(tf.split(theta, sizes), shapes)]
            logits, _ = model.stateless_call(weights, fixed, x, training=False)
            loss = loss_fn(y, logits)
        return tape.gradient(loss, theta).numpy()

    def central(i, step):
        e = np.zeros_like(w0)
        e[i] = step
        return (grad(w0 + e)[i] - grad(w0 - e)[i]) / (2 * step)

    return np.array([(4 * central(i, h / 2) - central(i, h)) / 3 for i in range(w0.size)])


def _bn_objective():
    model = _bn_model()
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(29, 3)), rng.integers(0, 3, 29)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return model, x, y, landscape.Objective(model, (x, y), loss, batch_size=10, metrics=())


# ------------------------------------------------------------------------------ closed forms
def test_small_quadratic_is_traced_exactly_with_n_unit_vectors(float64):
    eig, a = _spectrum()  # a dense, coupled 40 x 40 A with eigenvalues of both signs
    n = a.shape[0]
    model, obj = _quadratic_objective(a)
    tr = landscape.hessian_trace(obj, seed=0)  # n = 40 ≤ samples = 1000: exact
    assert tr.method == "exact" and tr.converged and not tr.capped
    assert tr.estimate == pytest.approx(np.trace(a), rel=EXACT)
    np.testing.assert_allclose(tr.values, np.diag(a), rtol=EXACT, atol=EXACT * np.abs(a).max())
    assert tr.stderr == 0.0 and tr.n_hvp == tr.samples == tr.n_params == n
    payload = json.loads(json.dumps(tr.as_dict()))
    assert payload["method"] == "exact" and payload["n_hvp"] == n and payload["stderr"] == 0.0
    # The cap decides: one probe fewer than n is Hutchinson's; "exact" ignores the cap.
    below = landscape.hessian_trace(obj, samples=n - 1, seed=0)
    assert below.method == "hutchinson" and below.n_hvp <= n - 1 and below.stderr > 0
    forced = landscape.hessian_trace(obj, samples=3, method="exact")
    assert forced.method == "exact" and forced.n_hvp == n
    assert forced.estimate == pytest.approx(np.trace(a), rel=EXACT)
    # Hutchinson can still be asked for, even when n is small.
    random = landscape.hessian_trace(obj, method="hutchinson", tol=0.05, seed=0)
    assert random.method == "hutchinson" and random.stderr > 0
    assert abs(random.estimate - np.trace(a)) <= 4 * random.stderr
    assert random.as_dict()["method"] == "hutchinson"


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_exact_trace_of_linear_regression_and_its_ggn_closed_form(float64, curvature):
    """For y = XW with MSE, G = H = kron(2/(N·n_out) XᵀSX, I_out): both traces in closed form."""
    model, obj, h = _regression(2, "generic")
    tr = landscape.hessian_trace(obj, curvature=curvature, seed=0)
    assert tr.method == "exact" and tr.curvature == curvature
    assert tr.n_hvp == h.shape[0] == 12 and tr.stderr == 0.0 and tr.converged
    assert tr.estimate == pytest.approx(np.trace(h), rel=EXACT)


# ------------------------------------------------------- a BatchNorm block, by finite differences
def test_batchnorm_block_trace_is_exact_against_finite_differences(float64):
    model, x, y, obj = _bn_objective()
    diagonal = _fd_hessian_diagonal(model, x, y)
    paths = obj.trainable_variables.paths
    sizes = [int(np.prod(v.shape)) for v in obj.trainable_variables]
    owner = np.repeat([p.split("/")[0] for p in paths], sizes)
    bn = owner == "bn"
    assert bn.sum() == 12

    block = landscape.hessian_trace(obj, variables="bn", seed=0)
    assert block.method == "exact" and block.n_hvp == block.n_params == 12
    assert block.stderr == 0.0 and block.converged
    assert block.estimate == pytest.approx(diagonal[bn].sum(), rel=EXACT)
    np.testing.assert_allclose(block.values, diagonal[bn], rtol=1e-9, atol=1e-12)

    whole = landscape.hessian_trace(obj, seed=0)
    assert whole.method == "exact" and whole.n_hvp == obj.flat.n
    assert whole.estimate == pytest.approx(diagonal.sum(), rel=EXACT)

    report = landscape.layer_curvature(obj, tol=1e-6, trace=True)
    assert report.names == ("hidden", "bn", "out")
    assert report.trace_method == ("exact",) * 3
    for i, name in enumerate(report.names):
        assert report.trace[i] == pytest.approx(diagonal[owner == name].sum(), rel=EXACT)
    assert report.trace[1] == pytest.approx(block.estimate, rel=1e-12)
    assert np.all(report.trace_stderr == 0.0) and report.trace_converged.all()
    assert report.trace.sum() == pytest.approx(whole.estimate, rel=1e-12)
    rows = json.loads(json.dumps(report.as_dict()))["layers"]
    assert [r["trace_method"] for r in rows] == ["exact"] * 3
    # A cap below a block's size leaves that block to Hutchinson; the method can be forced.
    capped = landscape.layer_curvature(obj, trace=True, trace_samples=12, trace_tol=0.5)
    assert capped.trace_method == ("hutchinson", "exact", "hutchinson")  # 24, 12, 21 params
    forced = landscape.layer_curvature(obj, groups=["bn"], trace=True, trace_method="hutchinson")
    assert forced.trace_method == ("hutchinson",) and forced.trace_stderr[0] > 0
    assert (
        landscape.layer_curvature(obj, groups=["bn"], trace=False).rows()[0]["trace_method"] is None
    )


# --------------------------------------------------------------------------- bad arguments
def test_unknown_trace_method_is_one_sentence_before_any_product(float64):
    model, obj = _quadratic_objective(np.diag([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"^Unknown method 'fast'; expected one of \('auto', "):
        landscape.hessian_trace(obj, method="fast")
    with pytest.raises(ValueError, match="Unknown method True"):
        landscape.hessian_trace(obj, method=True)
    with pytest.raises(ValueError, match="^Unknown trace_method 'exakt'"):
        landscape.layer_curvature(obj, trace_method="exakt")
    assert obj.trace_count == {}  # refused before any product was traced or run
    assert hessian.TRACE_METHODS == ("auto", "exact", "hutchinson", "hutchpp")


# ---------------------------------------------------------------------------------------- CLI
def test_cli_reports_how_each_trace_was_computed(tmp_path):
    model = _bn_model()  # float32: the CLI computes in the model's precision
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    path = tmp_path / "bn.keras"
    model.save(path)
    rng = np.random.default_rng(9)
    data = tmp_path / "d.npz"
    np.savez(data, x_train=rng.normal(size=(40, 3)).astype("float32"),
             y_train=rng.integers(0, 3, 40), x_test=rng.normal(size=(8, 3)).astype("float32"),
             y_test=rng.integers(0, 3, 8))  # fmt: skip
    base = ["hessian", str(path), "--data", str(data), "--samples", "0", "--trace", "-q"]

    out = tmp_path / "layers.json"
    result = CliRunner().invoke(main, [*base, "--layers", "--trace-probes", "20", "--json", out])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    rows = saved["layers_report"]["layers"]
    block = provenance_check.check(
        saved["provenance"], command="hessian", options={"layers": True, "trace_probes": 20}
    )
    assert block["converged"] == {"layers": all(r["converged"] for r in rows)}
    assert [(r["name"], r["n_params"]) for r in rows] == [("hidden", 24), ("bn", 12), ("out", 21)]
    assert [r["trace_method"] for r in rows] == ["hutchinson", "exact", "hutchinson"]
    assert rows[1]["trace_stderr"] == 0.0 and rows[1]["trace_converged"] is True
    assert "method" in result.output and "exact" in result.output

    out = tmp_path / "whole.json"
    result = CliRunner().invoke(main, [*base, "--k", "1", "--json", out])
    assert result.exit_code == 0, result.output
    trace = json.loads(out.read_text())["trace"]
    assert trace["method"] == "exact" and trace["n_hvp"] == 57 and trace["stderr"] == 0.0
    assert "exact: 57 unit-vector products" in result.output
    result = CliRunner().invoke(main, [*base, "--k", "1", "--trace-probes", "10", "--json", out])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["trace"]["method"] == "hutchinson"
