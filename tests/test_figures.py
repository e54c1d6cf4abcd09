"""The experiment behind `landscape figures` (quick preset): every file, words from data, resumable,
never clobbering another configuration's directory."""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import numpy as np
import provenance_check
import pytest
from click.testing import CliRunner

from landscape import _figure_plots, _summary
from landscape.cli import main
from landscape.figures import QUICK, FiguresConfig, claim_out_dir, make_figures, summarize
from landscape.surface import Surface

FIGURES = ("no_sam.png", "with_sam.png", "comparison.png", "sharpness.png", "interpolation.png")
REQUIRED = ("train_loss", "train_acc", "test_loss", "test_acc", "hessian_eigenvalue_1",
            "hessian_eigenvalue_2", "hessian_trace", "epsilon_sharpness", "worst_l2",
            "average_l2")  # fmt: skip


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures") / "out"
    result = CliRunner().invoke(main, ["figures", "--quick", "--out-dir", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_writes_every_figure_and_the_statistics(quick_run):
    out, output = quick_run
    for name in FIGURES:
        assert (out / name).stat().st_size > 5000, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    for name in ("summary.json", "reports.json", "training.json"):
        saved = summary if name == "summary.json" else json.loads((out / name).read_text())
        block = provenance_check.check(
            saved["provenance"], command="figures", options={"quick": True}
        )
        assert block["seeds"] == [0, 1] and block["settings"]["seeds"] == 2
    model = keras.models.load_model(out / "seed_1" / "sam.keras")
    fingerprint = summary["provenance"]["model_fingerprint"]["sam_seed_1"]
    assert fingerprint == provenance_check.weights_fingerprint(model)
    flags = summary["provenance"]["converged"]
    certified = summary["certificates"]["hessian_converged"]["sgd"][0]
    assert flags["hessian_converged_sgd_seed_0"] == certified
    for name in ("sgd", "sam"):
        assert set(summary["runs"][name]) == {"0", "1"}
        for key in REQUIRED:
            stats = summary["statistics"][name][key]
            values = [summary["runs"][name][s][key] for s in ("0", "1")]
            assert stats["values"] == pytest.approx(values)
            assert stats["mean"] == pytest.approx(np.mean(values))
            assert stats["stderr"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(2))
    md = (out / "summary.md").read_text()
    assert (
        "| quantity | SGD | SAM | SAM vs SGD |" in md
        and "| λ₁ (nats/w²) |" in md
        and "| ε-sharpness (% of 1 + L) |" in md
    )
    reports = json.loads((out / "reports.json").read_text())
    for flag, per_name in summary["certificates"].items():
        for name, flags in per_name.items():
            assert flags == [reports[name][s][flag] for s in ("0", "1")]
        counts = ", ".join(f"{sum(per_name[n])} of 2 {n.upper()}" for n in ("sgd", "sam"))
        assert counts in md
    assert set(summary["certificates"]) == {"hessian_converged", "hessian_trace_converged"}
    assert summary["comparison"]["test_acc"]["sentence"] in output


def test_captions_are_computed_from_the_summary_numbers(quick_run):
    out, _ = quick_run
    summary = json.loads((out / "summary.json").read_text())
    stats, sentences = summary["statistics"], {}
    for key, comparison in summary["comparison"].items():
        recomputed = _summary.paired_comparison(stats["sgd"][key]["values"],
                                                stats["sam"][key]["values"])  # fmt: skip
        sentences[key] = _summary.comparison_sentence(key, recomputed)
        assert comparison["sentence"] == sentences[key]
    captions = summary["captions"]
    assert set(captions) == set(FIGURES)
    headline = [sentences[k] for k in _figure_plots.HEADLINE if k in sentences]
    flatness = _summary.flatness_sentence(
        *(_summary.paired_comparison(stats["sgd"][k]["values"], stats["sam"][k]["values"])
          for k in ("hessian_eigenvalue_1", "train_loss"))
    )  # fmt: skip
    assert captions["comparison.png"] == "; ".join([*headline, flatness])
    assert summary["flatness"] == flatness and flatness + "." in (out / "summary.md").read_text()
    for name, file in (("sgd", "no_sam.png"), ("sam", "with_sam.png")):
        run = summary["runs"][name]["0"]
        area = stats[name]["basin_area"]["values"][0]
        assert f"λ₁ = {run['hessian_eigenvalue_1']:.3g}" in captions[file]
        assert f"test accuracy {run['test_acc'] * 100:.1f} %" in captions[file]
        assert f"training loss {run['train_loss']:.3g} nats" in captions[file]
        assert f"on {area * 100:.0f} % of this plane" in captions[file]
        assert "sharp" not in captions[file] and "wide" not in captions[file]
    line = Surface.load(str(out / "seed_0" / "interpolation.h5"))
    barrier = _figure_plots.linear_barrier(line)
    assert captions["interpolation.png"].endswith(f"segment: {barrier:.3g}")
    panels = [sentences[k] for k in _figure_plots.PANELS if k in sentences]
    assert captions["sharpness.png"] == "; ".join(panels)
    assert (out / "summary.md").read_text().count(captions["comparison.png"]) == 1


def test_rerun_reuses_models_surfaces_and_reports(quick_run):
    out, _ = quick_run
    files = [p for p in out.rglob("*") if p.suffix in (".keras", ".h5")]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    reports = (out / "reports.json").read_text()
    result = CliRunner().invoke(main, ["figures", "--quick", "--out-dir", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in files} == stamps  # nothing retrained or recomputed
    assert (out / "reports.json").read_text() == reports


def test_another_configuration_is_refused_before_any_work(quick_run):
    out, _ = quick_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    result = CliRunner().invoke(
        main, ["figures", "--quick", "--epochs", "2", "--out-dir", str(out), "-q"]
    )
    assert result.exit_code == 2
    assert "another configuration (epochs 1 → 2)" in result.output
    assert "Traceback" not in result.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_directory_with_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="did not write"):
        claim_out_dir(str(tmp_path), QUICK)
    assert os.listdir(tmp_path) == ["notes.txt"]
    with pytest.raises(ValueError, match="is a file"):
        claim_out_dir(str(tmp_path / "notes.txt"), QUICK)


def test_default_output_is_not_the_repository_figures():
    option = next(p for p in main.commands["figures"].params if p.name == "out_dir")
    assert option.default == os.path.join("out", "figures")
    assert make_figures.__defaults__[0] == os.path.join("out", "figures")


def test_a_grid_without_the_centre_is_refused_before_training(tmp_path):
    config = dataclasses.replace(QUICK, grid="0.1:0.5:3")
    with pytest.raises(ValueError, match="must contain 0"):
        make_figures(str(tmp_path / "out"), config, verbose=0)
    assert not (tmp_path / "out").exists()


def _surface(depth: float) -> Surface:
    x = np.linspace(-1.0, 1.0, 5)
    xx, yy = np.meshgrid(x, x)
    return Surface(x, x, {"train_loss": 0.5 + depth * (xx**2 + yy**2)})


def test_figures_say_so_when_the_data_show_no_difference(tmp_path):
    """Synthetic seeds where SAM differs from SGD only by noise: every headline says so."""
    config = dataclasses.replace(FiguresConfig(), seeds=3)
    sgd = {
        "test_acc": [0.70, 0.74, 0.71],
        "hessian_eigenvalue_1": [50.0, 80.0, 60.0],
        "hessian_trace": [400.0, 300.0, 500.0],
        "basin_area": [0.2, 0.3, 0.25],
        "train_loss": [1.5, 1.7, 1.6],
    }
    sam = {"test_acc": [0.72, 0.71, 0.72], "hessian_eigenvalue_1": [70.0, 55.0, 62.0],
           "hessian_trace": [380.0, 420.0, 390.0], "basin_area": [0.3, 0.2, 0.26],
           "train_loss": [1.7, 1.5, 1.65]}  # fmt: skip
    summary = summarize({"sgd": sgd, "sam": sam}, config)
    summary["runs"] = {n: {str(s): {"test_acc": v["test_acc"][s],
                                    "hessian_eigenvalue_1": v["hessian_eigenvalue_1"][s]}
                           for s in range(3)} for n, v in (("sgd", sgd), ("sam", sam))}  # fmt: skip
    surfaces = {s: {"sgd": _surface(4.0), "sam": _surface(1.0)} for s in range(3)}
    surfaces["interpolation"] = Surface(np.linspace(0, 1, 5), None,
                                        {"train_loss": np.linspace(1, 2, 5)})  # fmt: skip
    written, captions = _figure_plots.draw(surfaces, summary, str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == sorted(FIGURES)
    for key in ("test_acc", "hessian_eigenvalue_1", "hessian_trace", "basin_area"):
        assert f"{_summary.WORDS[key]}: no significant difference" in captions["comparison.png"]
    assert "lower for SAM" not in captions["comparison.png"]
    assert ("SAM's minimum is not significantly flatter or sharper (λ₁: no significant difference"
            in captions["comparison.png"])  # fmt: skip
    assert ("at a training loss not significantly different (1.6 → 1.62 nats; SAM higher on 2 of "
            "3 seeds, lower on 1, paired t-test p = ") in captions["comparison.png"]  # fmt: skip


def test_linear_barrier_is_the_maximum_on_the_segment_above_the_endpoints_mean():
    alpha = np.linspace(-0.5, 1.5, 9)  # step 0.25
    loss = 1.0 + 2.0 * alpha + 3.0 * np.sin(np.pi * np.clip(alpha, 0, 1))  # 1 at 0, 3 at 1
    line = Surface(alpha, None, {"train_loss": loss})
    inside = loss[(alpha >= 0) & (alpha <= 1)]
    assert _figure_plots.linear_barrier(line) == pytest.approx(inside.max() - (1.0 + 3.0) / 2)
    coarse = Surface(np.linspace(-0.5, 1.5, 4), None, {"train_loss": np.ones(4)})
    assert _figure_plots.linear_barrier(coarse) is None  # α = 0 is not a grid point
