"""batch_spectrum: each mini-batch's top eigenvalues against closed forms built in NumPy.

References never share the code path they check: the per-batch Hessian of linear least squares
is 2/B X_bᵀX_b, the GGN of a one-hidden-layer tanh network is 2/B Σ J_iᵀJ_i with the Jacobian J_i
written out by hand, and the Hessian of a linear softmax classifier is
1/B Σ (diag(p_i) − p_i p_iᵀ) ⊗ x_i x_iᵀ; each is diagonalized by ``numpy.linalg.eigvalsh``.
"""

from __future__ import annotations

import json
import logging

import keras
import numpy as np
import provenance_check
import pytest
from click.testing import CliRunner

import landscape
from landscape.cli import main

N, D, B = 50, 4, 16  # 50 samples in batches of 16: three full batches and one of 2


@pytest.fixture(scope="module")
def regression():
    """Linear least squares in float64 (a model built under a float64 policy)."""
    keras.config.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(N, D)), rng.normal(size=(N, 1))
    inp = keras.Input((D,))
    model = keras.Model(inp, keras.layers.Dense(1, use_bias=False)(inp))
    model.compile(loss="mse")
    keras.mixed_precision.set_global_policy("float32")
    keras.config.set_floatx("float32")
    return model, x, y, landscape.Objective(model, (x, y), batch_size=B, metrics=())


def _top(matrix: np.ndarray, k: int) -> np.ndarray:
    return np.linalg.eigvalsh(matrix)[::-1][:k]


def test_each_batch_matches_its_closed_form_hessian(regression):
    _, x, _, obj = regression
    spec = landscape.batch_spectrum(obj, k=2, batches=None, batch_size=B, full=True, seed=0)
    starts = range(0, N, B)
    expected = np.stack([_top(2 / len(x[s : s + B]) * x[s : s + B].T @ x[s : s + B], 2)
                         for s in starts])  # fmt: skip
    assert spec.values.shape == (4, 2) and spec.batch_sizes.tolist() == [16, 16, 16, 2]
    np.testing.assert_allclose(spec.values, expected, rtol=1e-10)
    assert spec.converged.all() and (spec.residuals <= spec.tol).all() and not spec.capped.any()
    np.testing.assert_allclose(spec.full_values, _top(2 / N * x.T @ x, 2), rtol=1e-10)
    # H = Σ (B_b/N) H_b and λ_max is convex: the full λ_max is at most the weighted mean
    assert spec.full_lambda_max <= np.average(spec.lambda_max, weights=spec.batch_sizes) + 1e-12
    assert spec.lambda_max.tolist() == spec.values[:, 0].tolist()
    out = json.loads(json.dumps(spec.as_dict()))
    assert out["values"] == spec.values.tolist() and out["batch_sizes"] == [16, 16, 16, 2]
    assert out["summary"]["max"] == spec.values[:, 0].max() and out["full_converged"] is True


def test_batches_caps_the_count_and_one_batch_of_all_is_the_full_hessian(regression):
    model, x, y, obj = regression
    assert landscape.batch_spectrum(obj, batches=2, batch_size=B, seed=1).values.shape == (2, 1)
    one = landscape.batch_spectrum(model, (x, y), k=3, batches=1, batch_size=N, seed=2)
    whole = landscape.hessian_eigenvalues(obj, 3, seed=3)
    assert one.batch_sizes.tolist() == [N]
    np.testing.assert_allclose(one.values[0], whole.values, rtol=1e-10)


def _tanh_net():
    """f(x) = tanh(x K1) K2 in float64, 3 inputs, 4 hidden units, MSE (the conftest puts the
    float32 policy back after the test)."""
    keras.config.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")
    keras.utils.set_random_seed(3)
    inp = keras.Input((3,))
    h = keras.layers.Dense(4, activation="tanh", use_bias=False)(inp)
    model = keras.Model(inp, keras.layers.Dense(1, use_bias=False)(h))
    model.compile(loss="mse")
    return model


def test_ggn_of_each_batch_matches_jacobians_written_out():
    model = _tanh_net()
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(24, 3)), rng.normal(size=(24, 1))
    spec = landscape.batch_spectrum(model, (x, y), k=2, batches=3, batch_size=8,
                                    curvature="ggn", tol=1e-10, seed=0)  # fmt: skip
    k1, k2 = (keras.ops.convert_to_numpy(v) for v in model.trainable_variables)
    t = np.tanh(x @ k1)  # (n, 4)
    # ∂f/∂K1[a, j] = x_a K2[j] (1 − t_j²), ∂f/∂K2[j] = t_j: one row of J per sample
    jac = np.concatenate(
        [(x[:, :, None] * (k2[:, 0] * (1 - t**2))[:, None, :]).reshape(24, -1), t], axis=1
    )
    expected = np.stack([_top(2 / 8 * jac[s : s + 8].T @ jac[s : s + 8], 2) for s in (0, 8, 16)])
    np.testing.assert_allclose(spec.values, expected, rtol=1e-9)
    assert spec.curvature == "ggn" and spec.converged.all() and spec.residuals.max() <= 1e-10
    hess = landscape.batch_spectrum(model, (x, y), k=2, batches=3, batch_size=8, seed=0)
    assert not np.allclose(hess.values, expected, rtol=1e-3)  # H ≠ G off the minimum


def _squares(y_true, y_pred):
    return (y_true - y_pred)[:, 0] ** 2


def test_refusals_come_before_any_product(regression):
    model, x, y, obj = regression
    before = dict(obj.passes)
    bad = [
        (dict(k=5), "Argument `k` must be at most the number of parameters (4)"),
        (dict(batches=0), "Argument `batches` must be an int >= 1. Received: batches=0."),
        (dict(batch_size=0), "Argument `batch_size` must be an int >= 1"),
        (dict(tol=2.0), "Argument `tol` must be in (0, 1). Received: tol=2.0."),
        (dict(curvature="fisher"), "Unknown curvature 'fisher'"),
        (dict(which="top"), "Unknown which 'top'"),
        (dict(full="yes"), "Argument `full` must be a bool."),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError) as err:
            landscape.batch_spectrum(obj, **kwargs)
        assert message in str(err.value), (kwargs, str(err.value))
    with pytest.raises(ValueError, match="Argument `data` must be None when an Objective"):
        landscape.batch_spectrum(obj, (x, y))
    with pytest.raises(ValueError, match="Argument `data` is required with a keras.Model"):
        landscape.batch_spectrum(model)
    with pytest.raises(ValueError, match="must be a landscape.Objective or a keras.Model"):
        landscape.batch_spectrum("model.keras")
    own = landscape.Objective(model, (x, y), _squares, metrics=())
    with pytest.raises(ValueError, match="needs a mean squared error or a cross-entropy"):
        landscape.batch_spectrum(own, curvature="ggn")
    assert dict(obj.passes) == before and own.passes["ggn"] == 0


def test_plot_draws_each_result_and_its_full_data_line(regression):
    import matplotlib.pyplot as plt

    _, _, _, obj = regression
    spec = landscape.batch_spectrum(obj, batches=None, batch_size=8, full=True, seed=0)
    other = dict(spec.as_dict(), full_values=None)
    ax = landscape.plot_batch_spectrum([spec, other], labels=["SGD", "SAM"])
    lines = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(lines) == 1 and lines[0].get_xdata()[0] == spec.full_lambda_max
    assert sum(p.get_height() for p in ax.patches) == 2 * len(spec.lambda_max)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"SGD", "SAM", "SGD: full data"}
    ax = landscape.plot_batch_spectrum(spec, labels="SGD", kind="violin")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["SGD"]
    with pytest.raises(ValueError, match="one label per result"):
        landscape.plot_batch_spectrum([spec, spec], labels=["a"])
    with pytest.raises(ValueError, match="Unknown kind 'box'"):
        landscape.plot_batch_spectrum(spec, kind="box")
    plt.close("all")


@pytest.fixture(scope="module")
def classifier_files(tmp_path_factory):
    """A linear softmax classifier (float32) saved as .keras and its data as an .npz."""
    d = tmp_path_factory.mktemp("batch_spectrum")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = rng.integers(0, 3, 64).astype(np.int64)
    np.savez(d / "data.npz", x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    keras.utils.set_random_seed(6)
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(3, use_bias=False)(inp))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(d / "linear.keras")
    return d, x, y, keras.ops.convert_to_numpy(model.trainable_variables[0])


def _softmax_hessian(x, w):
    """1/B Σ (diag p − p pᵀ) ⊗ x xᵀ of the mean cross-entropy of logits x W."""
    z = x @ w
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return sum(np.kron(np.diag(q) - np.outer(q, q), np.outer(a, a)) for a, q in zip(x, p)) / len(x)


def test_cli_writes_the_spectrum_and_refuses_bad_options(classifier_files):
    d, x, _, w = classifier_files
    out, png = d / "bs.json", d / "bs.png"
    args = ["batch-spectrum", str(d / "linear.keras"), "--data", str(d / "data.npz"),
            "--batches", "3", "--batch-size", "16", "--samples", "48", "--full", "-q"]  # fmt: skip
    result = CliRunner().invoke(main, [*args, "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    expected = [_top(_softmax_hessian(x[s : s + 16].astype(np.float64), w), 1) for s in (0, 16, 32)]
    np.testing.assert_allclose(report["values"], expected, rtol=1e-4)  # float32 products
    np.testing.assert_allclose(report["full_values"], _top(_softmax_hessian(x[:48], w), 1),
                               rtol=1e-4)  # fmt: skip
    assert report["batch_sizes"] == [16, 16, 16] and report["model"].endswith("linear.keras")
    block = provenance_check.check(
        report["provenance"],
        command="batch-spectrum",
        options={"batches": 3, "batch_size": 16, "full": True},
        model=keras.models.load_model(d / "linear.keras"),
    )
    assert block["converged"] == {
        "every_batch": all(report["converged"]),
        "full": report["full_converged"],
    }
    assert png.stat().st_size > 0 and "lambda_1 over 3 batches" in result.output
    for bad in (["--batches", "0"], ["--k", "3", "--basis-size", "4"], ["--samples", "8"],
                ["--kind", "box"]):  # fmt: skip
        gone = d / "never.json"
        result = CliRunner().invoke(main, [*args, *bad, "--json", str(gone)])
        assert result.exit_code == 2 and "Traceback" not in result.output, (bad, result.output)
        assert not gone.exists()


def test_a_batch_with_fewer_than_k_eigenvalues_is_nan_padded_and_not_certified(regression, caplog):
    model, x, y, obj = regression
    with caplog.at_level(logging.WARNING, logger="landscape"):
        spec = landscape.batch_spectrum(obj, k=D, batch_size=B, tol=1e-10, seed=0)
    last = 2 / 2 * x[48:].T @ x[48:]  # the batch of 2: rank 2, a Krylov space of 3 at most
    found = np.isfinite(spec.values[-1])
    assert spec.values.shape == (4, D) and 2 <= found.sum() < D and not found[found.sum() :].any()
    np.testing.assert_allclose(spec.values[-1][found], _top(last, D)[: found.sum()], atol=1e-9)
    assert not spec.converged[-1] and spec.converged[:-1].all()
    assert "fewer than k=4 eigenvalues (batches 3" in caplog.text
    saved = json.loads(json.dumps(spec.as_dict(), allow_nan=False))  # strict JSON: NaN as null
    assert saved["values"][-1][-1] is None
