"""The train-then-plot pipeline (`landscape figures --quick`): every file, resumable, honest."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from landscape.cli import main
from landscape.figures import QUICK, summary_markdown


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    result = CliRunner().invoke(main, ["figures", "--quick", "--out-dir", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_writes_every_figure_and_summary(quick_run):
    out, output = quick_run
    for name in ("no_sam.png", "with_sam.png", "comparison.png", "interpolation.png"):
        assert (out / name).stat().st_size > 5000, name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["reports"]) == {"sgd", "sam"}
    for name in ("sgd", "sam"):
        report = summary["reports"][name]
        assert np.isfinite(report["hessian_eigenvalue_1"]) and "worst_l2" in report
        assert 0.0 <= summary["metrics"][name]["test_acc"] <= 1.0
    md = (out / "summary.md").read_text()
    assert "| quantity | SGD | SAM |" in md and "hessian_trace" in md
    assert "SGD: train acc" in output and "SAM: train acc" in output


def test_rerun_reuses_models_surfaces_and_reports(quick_run):
    out, _ = quick_run
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".keras", ".h5")}
    reports = (out / "reports.json").read_text()
    result = CliRunner().invoke(main, ["figures", "--quick", "--out-dir", str(out), "-q"])
    assert result.exit_code == 0, result.output
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".keras", ".h5")}
    assert after == stamps  # nothing retrained or recomputed
    assert (out / "reports.json").read_text() == reports


def test_summary_table_lists_both_models():
    metrics = {m: {"train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.2, "test_acc": 0.4}
               for m in ("sgd", "sam")}  # fmt: skip
    reports = {"sgd": {"loss": 0.3, "hessian_eigenvalue_1": 40.0},
               "sam": {"loss": 0.35, "hessian_eigenvalue_1": 12.5}}  # fmt: skip
    md = summary_markdown(metrics, reports, QUICK)
    assert "| hessian_eigenvalue_1 | 40 | 12.5 |" in md
    assert md.count("\n| ") == 8  # header, rule, 4 metrics, 2 report rows
