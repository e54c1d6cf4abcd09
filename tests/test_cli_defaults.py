"""Every command at its defaults completes, and its converged-or-capped flags are honest.

The references are the numbers each command prints beside its flags: an eigenvalue is certified
(converged) exactly when its printed relative residual is at most --tol; a trace converged
exactly when its printed standard error is at most --trace-tol times its printed estimate (else
it stopped at its cap, and says so). No timing is asserted (benchmarks/cli_defaults.py times
them). The fast tests run the commands at their defaults on a small MLP from ``landscape
train --model mlp``; the slow one on the CNN that ``landscape train`` writes at its defaults.
"""

from __future__ import annotations

import contextlib
import math
import os
import re

import pytest
from click.testing import CliRunner

from landscape import hessian
from landscape.cli import main

EIGEN_TOL = 1e-4  # --tol's default
ROUNDING = 1.01  # the residuals are printed with 3 significant digits


@contextlib.contextmanager
def _cwd(path):
    """Run in ``path``: the defaults write model.keras, surface.h5, ... to the current folder."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def invoke(folder, *args) -> str:
    with _cwd(folder):
        result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def check_hessian(output: str) -> None:
    """The eigenvalue table: converged iff every residual <= --tol; a capped run says so."""
    rows = re.findall(r"^\s*\d+\s+(\S+)\s+(\S+)$", output, re.M)
    assert len(rows) == 5  # --k 5
    residuals = [float(r) for _, r in rows]
    converged = re.search(r"converged: (True|False)", output).group(1) == "True"
    assert converged == all(r <= EIGEN_TOL * ROUNDING for r in residuals), output
    if "stopped at the cap" in output:
        assert not converged


def check_sharpness(output: str) -> dict[str, str]:
    """The report's table: both flags match the numbers printed beside them."""
    table = dict(re.findall(r"^(\w+) +(\S+)$", output, re.M))  # not the progress bars' lines
    trace, stderr = float(table["hessian_trace"]), float(table["hessian_trace_stderr"])
    assert math.isfinite(trace) and math.isfinite(stderr)
    trace_converged = table["hessian_trace_converged"].strip() == "True"
    assert trace_converged == (stderr <= hessian.TRACE_TOL * abs(trace) * ROUNDING), table
    assert table["hessian_converged"].strip() in ("True", "False")
    for key in ("epsilon_sharpness", "worst_l2", "average_l2", "hessian_eigenvalue_5"):
        assert math.isfinite(float(table[key])), key
    return table


def check_connect(output: str) -> None:
    for key in ("linear_barrier", "curve_barrier"):
        value = re.search(rf"^{key}\s+(\S+)$", output, re.M).group(1)
        assert math.isfinite(float(value)), output


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Two small MLPs trained briefly (the commands' cost is their defaults' on a small model)."""
    folder = tmp_path_factory.mktemp("defaults")
    for seed, out in ((0, "model.keras"), (1, "b.keras")):
        invoke(folder, "train", "--model", "mlp", "--epochs", 1, "--samples", 600,
               "--seed", seed, "--out", out, "-q")  # fmt: skip
    return folder


def test_surface_and_plot_at_their_defaults(small):
    output = invoke(small, "surface", "model.keras")
    assert "1D surface of shape (21,)" in output
    assert "wrote surface.png" in invoke(small, "plot", "surface.h5")
    assert (small / "surface.png").stat().st_size > 0


def test_hessian_at_its_defaults(small):
    check_hessian(invoke(small, "hessian", "model.keras"))


def test_sharpness_at_its_defaults(small):
    check_sharpness(invoke(small, "sharpness", "model.keras"))


def test_connect_at_its_defaults(small):
    check_connect(invoke(small, "connect", "model.keras", "b.keras"))


@pytest.mark.slow
def test_every_command_at_its_defaults_on_the_train_model(tmp_path):
    """The whole chain at the defaults, on `landscape train`'s CNN (about 3 minutes)."""
    assert "saved model.keras" in invoke(tmp_path, "train")
    invoke(tmp_path, "train", "--seed", 1, "--out", "b.keras", "-q")
    assert "1D surface" in invoke(tmp_path, "surface", "model.keras")
    invoke(tmp_path, "plot", "surface.h5")
    check_hessian(invoke(tmp_path, "hessian", "model.keras"))
    table = check_sharpness(invoke(tmp_path, "sharpness", "model.keras"))
    assert table["hessian_trace_converged"].strip() == "True"  # the cap is not the rule here
    check_connect(invoke(tmp_path, "connect", "model.keras", "b.keras"))
    invoke(tmp_path, "figures", "--quick", "--out-dir", "figures")
    assert (tmp_path / "figures" / "summary.json").is_file()


def test_the_commands_share_the_library_defaults():
    """The CLI's literals (the options are parsed before the library is imported) are the
    library's constants, the same in hessian and sharpness."""
    from landscape import sharpness

    def defaults(command):
        return {p.name: p.default for p in main.commands[command].params}

    h, s = defaults("hessian"), defaults("sharpness")
    for options in (h, s):
        assert options["trace_tol"] == hessian.TRACE_TOL == 0.05
        assert options["trace_probes"] == hessian.TRACE_SAMPLES
        assert options["samples"] == 1000 and options["tol"] == EIGEN_TOL
    assert (h["steps"], h["runs"]) == (hessian.SLQ_STEPS, hessian.SLQ_RUNS)
    assert h["density"] is None  # the density is asked for, never a default cost
    assert (s["steps"], s["average_samples"]) == (sharpness.STEPS, sharpness.SAMPLES)
    assert s["epsilon"] == sharpness.EPSILON
