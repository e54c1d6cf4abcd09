"""weight_spectra: the power-law fit against its closed form and SciPy, the matrices of each
layer kind against slices taken by hand, the norms against numpy.linalg, the refusals, the CLI
and the sharpness report's rows."""

from __future__ import annotations

import json
import pathlib

import keras
import numpy as np
import provenance_check
import pytest
import scipy.stats
from click.testing import CliRunner

import landscape
from landscape.cli import main
from landscape.weights import conv_matrices, einsum_matrices, fit_power_law, weight_spectra

ALPHA = 3.0  # density ∝ λ^-3: numpy's pareto(a) + 1 has density ∝ x^-(a+1)


def pareto(seed: int, n: int, xmin: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).pareto(ALPHA - 1, n) + 1.0) * xmin


def with_spectrum(seed: int, eigenvalues: np.ndarray, rows: int) -> np.ndarray:
    """``U diag(√λ) Vᵀ``, ``rows × len(λ)``: the eigenvalues of ``WᵀW`` are ``λ``."""
    rng = np.random.default_rng(seed + 1000)
    m = len(eigenvalues)
    u, _ = np.linalg.qr(rng.normal(size=(rows, m)))
    v, _ = np.linalg.qr(rng.normal(size=(m, m)))
    return u @ np.diag(np.sqrt(eigenvalues)) @ v.T


@pytest.fixture(scope="module")
def model():
    """Every kind of layer: Embedding, Conv1D, Conv2D, BatchNorm, MultiHeadAttention, Dense."""
    tokens = keras.Input((6,), dtype="int32")
    t = keras.layers.Embedding(20, 8, name="embed")(tokens)
    t = keras.layers.Conv1D(8, 3, padding="same", name="conv1d")(t)
    t = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, value_dim=3, name="mha")(t, t)
    images = keras.Input((5, 5, 3))
    x = keras.layers.Conv2D(4, 2, name="conv2d")(images)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Concatenate()([keras.layers.Flatten()(x), keras.layers.Flatten()(t)])
    out = keras.layers.Dense(3, name="head")(x)
    return keras.Model([tokens, images], out)


@pytest.fixture(scope="module")
def spectra(model):
    return weight_spectra(model, min_tail=4)


# -- the power-law fit ---------------------------------------------------------------------------


def test_alpha_recovered_within_its_stated_error():
    """α of Pareto(α=3) samples: |α̂ − 3| within 2 standard errors in most draws, 3 in all."""
    z = []
    for seed in range(40):
        fit = fit_power_law(pareto(seed, 300))
        z.append((fit.alpha - ALPHA) / fit.stderr)
    z = np.abs(z)
    assert np.mean(z < 2) >= 0.85 and np.all(z < 3.5), z


def test_xmin_found_where_the_tail_starts():
    """A uniform bulk on [0.1, 1) under a Pareto tail from 1: the KS choice of xmin is ≈ 1."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0.1, 1.0, 500), pareto(2, 500)])
    fit = fit_power_law(x)
    assert 0.95 <= fit.xmin <= 1.1 and 450 <= fit.n_tail <= 510
    assert abs(fit.alpha - ALPHA) < 3 * fit.stderr


def test_fit_matches_scipy_mle_and_ks_on_its_tail():
    """At the chosen xmin: SciPy's Pareto MLE with the scale fixed and its KS statistic."""
    x = pareto(3, 200) * 0.01
    fit = fit_power_law(x)
    tail = x[x >= fit.xmin]
    b, _, _ = scipy.stats.pareto.fit(tail, floc=0.0, fscale=fit.xmin)
    assert fit.alpha == pytest.approx(b + 1.0, rel=1e-6)
    ks = scipy.stats.kstest(tail, scipy.stats.pareto(b, scale=fit.xmin).cdf).statistic
    assert fit.ks_distance == pytest.approx(ks, rel=1e-6)
    assert fit.n_tail == tail.size and fit.stderr == pytest.approx((b) / np.sqrt(tail.size))


def test_alpha_of_a_matrix_built_with_a_power_law_spectrum():
    """A Dense kernel U diag(√λ) Vᵀ: its ESD is λ exactly, and α is recovered."""
    lam = pareto(5, 200)
    layer = keras.layers.Dense(200, use_bias=False, dtype="float64")
    layer.build((None, 300))
    layer.kernel.assign(with_spectrum(5, lam, 300))
    result = weight_spectra(layer)
    (spectrum,) = result.layers
    np.testing.assert_allclose(spectrum.eigenvalues, np.sort(lam)[::-1], rtol=1e-9)
    assert abs(spectrum.fit.alpha - ALPHA) < 3 * spectrum.fit.stderr
    assert spectrum.fit.alpha == fit_power_law(lam).alpha


# -- the matrices and norms ----------------------------------------------------------------------


def test_conv_rule_by_hand():
    """(kh, kw, c_in, c_out) -> kh·kw matrices W[i, j, :, :], position (i, j) in C order."""
    kernel = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    mats = conv_matrices(kernel)
    assert mats.shape == (6, 4, 5)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(mats[3 * i + j], kernel[i, j])


def test_conv_layers_pool_their_slices(model, spectra):
    for name, slices in (("conv2d", [(i, j) for i in range(2) for j in range(2)]),
                         ("conv1d", [(i,) for i in range(3)])):  # fmt: skip
        kernel = keras.ops.convert_to_numpy(model.get_layer(name).kernel).astype(np.float64)
        expected = np.concatenate([np.linalg.svd(kernel[s], compute_uv=False) for s in slices])
        got = spectra[name]
        assert got.n_matrices == len(slices)
        np.testing.assert_allclose(np.sort(got.singular_values.ravel()), np.sort(expected),
                                   rtol=1e-10)  # fmt: skip
        assert got.spectral_norm == pytest.approx(max(np.linalg.norm(kernel[s], 2) for s in slices))
        assert got.stable_rank == pytest.approx(np.sum(kernel**2) / got.spectral_norm**2)


def test_dense_and_embedding_norms_against_numpy(model, spectra):
    for name, weight in (("head", "kernel"), ("embed", "embeddings")):
        w = keras.ops.convert_to_numpy(getattr(model.get_layer(name), weight)).astype(np.float64)
        got = spectra[name]
        assert got.n_matrices == 1 and got.matrix_shape == w.shape
        assert got.spectral_norm == pytest.approx(np.linalg.norm(w, 2), rel=1e-10)
        fro2 = np.linalg.norm(w, "fro") ** 2
        assert got.stable_rank == pytest.approx(fro2 / np.linalg.norm(w, 2) ** 2, rel=1e-10)


def test_attention_per_head(model, spectra):
    mha = model.get_layer("mha")
    q = keras.ops.convert_to_numpy(mha.query_dense.kernel)  # (8, heads, 4)
    o = keras.ops.convert_to_numpy(mha.output_dense.kernel)  # (heads, 3, 8)
    for name, heads in (
        ("mha/query", [q[:, h, :] for h in range(2)]),
        ("mha/attention_output", [o[h] for h in range(2)]),
    ):
        got = spectra[name]
        assert got.kind == "attention_head" and got.matrix_shape == heads[0].shape
        for h, w in enumerate(heads):
            expected = np.linalg.svd(w.astype(np.float64), compute_uv=False)
            np.testing.assert_allclose(got.singular_values[h], expected, rtol=1e-10)


def test_einsum_rule():
    kernel = np.random.default_rng(0).normal(size=(2, 3, 4))
    # attention output's equation, as a plain EinsumDense: one (2·3) × 4 matrix
    np.testing.assert_array_equal(einsum_matrices("abcd,cde->abe", kernel)[0], kernel.reshape(6, 4))
    # b in input, kernel and output: one c × d matrix per b
    np.testing.assert_array_equal(einsum_matrices("abc,bcd->abd", kernel), kernel)
    np.testing.assert_array_equal(einsum_matrices("...b,bc->...c", kernel[0])[0], kernel[0])


def test_skipped_and_table(spectra):
    assert [(s["class"], s["reason"]) for s in spectra.skipped] == [
        ("BatchNormalization", "no weight matrix")
    ]
    names = [row["name"] for row in spectra.rows()]
    assert names == [layer.name for layer in spectra.layers] and "mha/key" in names
    assert json.loads(json.dumps(spectra.as_dict()))["min_tail"] == 4


def test_few_eigenvalues_give_nan_alpha(spectra):
    assert np.isnan(spectra["head"].fit.alpha)  # 3 eigenvalues < min_tail
    assert spectra["head"].as_dict()["alpha"] is None


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, kwargs, match",
    [
        ([1.0, -2.0] * 10, {}, "positive and finite"),
        ([1.0, np.nan] * 10, {}, "positive and finite"),
        ([1.0, 2.0], {}, "at least min_tail=10"),
        ([1.0] * 20, {"min_tail": 1}, "min_tail"),
    ],
)
def test_fit_refusals(values, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(values, **kwargs)


def test_model_refusals():
    with pytest.raises(ValueError, match="Argument `model` must be a Keras model"):
        weight_spectra(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="must be built"):
        weight_spectra(keras.Sequential([keras.layers.Dense(2)]))


def test_plot(spectra, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    ax = landscape.plot_weight_spectra([spectra, spectra.as_dict()], labels=["a", "b"])
    assert len(ax.get_xticklabels()) == len(spectra.layers)
    ax = landscape.plot_weight_spectra(spectra, layer="conv1d")
    assert ax.get_xscale() == "log" and ax.lines
    with pytest.raises(ValueError, match="`labels`"):
        landscape.plot_weight_spectra([spectra], labels=["a", "b"])
    with pytest.raises(ValueError, match="`layer`"):
        landscape.plot_weight_spectra(spectra, layer="nope")


# -- CLI and sharpness report --------------------------------------------------------------------


def test_cli_json_and_refusal(model, spectra, tmp_path):
    path = tmp_path / "m.keras"
    model.save(path)
    out, png = tmp_path / "w.json", tmp_path / "w.png"
    result = CliRunner().invoke(
        main,
        ["weights", str(path), "--min-tail", "4", "--json", str(out), "--plot", str(png), "-q"],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert [r["name"] for r in saved["layers"]] == [r["name"] for r in spectra.rows()]
    assert saved["layers"][0]["alpha"] == pytest.approx(spectra.layers[0].fit.alpha)
    assert png.stat().st_size > 0
    block = provenance_check.check(
        saved["provenance"], command="weights", options={"min_tail": 4}, model=model
    )
    assert block["settings"] == {"min_tail": 4}
    bad = tmp_path / "bad.keras"
    bad.write_text("not a model")
    for model_path in (bad, tmp_path / "missing.keras"):
        out2 = tmp_path / "w2.json"
        result = CliRunner().invoke(main, ["weights", str(model_path), "--json", str(out2)])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert not out2.exists()


def test_sharpness_report_rows():
    x = np.random.default_rng(0).normal(size=(8, 12)).astype("float32")
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(11), keras.layers.Dense(1)])
    objective = landscape.Objective(model, (x, x[:, :1]), loss="mse", metrics=())
    rho = dict.fromkeys(landscape.sharpness.REPORT_RHO)
    report = landscape.sharpness_report(objective, include_hessian=False, epsilon=None, rho=rho,
                                        weights=True)  # fmt: skip
    rows = weight_spectra(model).rows()
    for row in rows:
        assert report[f"weights/{row['name']}/stable_rank"] == pytest.approx(row["stable_rank"])
        np.testing.assert_equal(report[f"weights/{row['name']}/alpha"], row["alpha"])
    assert len([k for k in report if k.startswith("weights/")]) == 4 * len(rows)


def test_benchmark_agrees_with_weightwatcher():
    pytest.importorskip("weightwatcher")
    import runpy

    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "weightwatcher_compare.py"
    assert runpy.run_path(str(script))["main"]([]) == 0  # the built model: no mismatch


def test_a_quantized_kernel_is_skipped_with_its_reason():
    import keras

    inp = keras.Input((12,))
    plain_dense, quantized = keras.layers.Dense(12, name="plain"), keras.layers.Dense(8, name="q")
    model = keras.Model(inp, quantized(plain_dense(inp)))
    kernel = keras.ops.convert_to_numpy(plain_dense.kernel)
    quantized.quantize("int8")  # its kernel variable now holds int8 codes (and scales)
    result = weight_spectra(model)
    assert [s.name for s in result.layers] == ["plain"]
    np.testing.assert_allclose(result.layers[0].spectral_norm, np.linalg.norm(kernel, 2),
                               rtol=1e-5)  # fmt: skip
    assert result.skipped == ({"name": "q", "class": "Dense", "reason": "int8-quantized"},)
