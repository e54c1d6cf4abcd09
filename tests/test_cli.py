"""The console script: train -> surface -> plot, user errors as exit code 2 with one sentence."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import h5py
import keras
import numpy as np
import provenance_check
import pytest
from click.testing import CliRunner

from landscape import __version__
from landscape.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_version_and_help():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output
    for command in ([], ["train"], ["surface"], ["plot"], ["hessian"], ["sharpness"], ["figures"]):
        result = invoke(*command, "--help")
        assert result.exit_code == 0 and "Examples" in result.output
    for command in ("surface", "hessian", "sharpness"):  # every command that reads a model file
        help_text = invoke(command, "--help").output
        assert "--import MODULE" in help_text and "--scale" in help_text


def test_console_script_runs_as_a_process():
    script = pathlib.Path(sys.executable).with_name("landscape")
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout
    bad = subprocess.run([str(script), "plot", "nope.h5"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "Error: Surface file 'nope.h5' does not exist."


def test_missing_tensorflow_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
    result = invoke("train", "--epochs", 1)
    assert result.exit_code == 2
    assert result.output.startswith("Error: sam-landscape needs TensorFlow")
    assert len(result.output.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An SGD and a SAM MLP trained briefly on part of the embedded data."""
    d = tmp_path_factory.mktemp("cli")
    for opt in ("sgd", "sam"):
        out = d / f"{opt}.keras"
        result = invoke("train", "--model", "mlp", "--optimizer", opt, "--epochs", 1,
                        "--samples", 600, "--save-every", 1, "--out", out, "-q")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "test acc" in result.output
    return d


def test_train_saves_model_and_checkpoints(trained):
    assert (trained / "sam.keras").is_file()
    checkpoints = sorted((trained / "sam_checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["epoch_0000.weights.h5", "epoch_0001.weights.h5"]
    with h5py.File(checkpoints[1]) as f:
        block = provenance_check.check(
            f.attrs["provenance"],
            command="train",
            options={"optimizer": "sam", "epochs": 1, "samples": 600},
        )
    assert block["settings"] == {"epoch": 1, "every": 1}


def test_surface_resume_and_plot(trained):
    out = trained / "s.h5"
    args = ["surface", trained / "sam.keras", "--x=-1:1:4", "--y=-0.5:0.5:3", "--samples", 300,
            "--test-samples", 100, "--out", out, "-q"]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        z = f["train_loss"][()]
        assert z.shape == (3, 4) and np.isfinite(z).all() and "test_acc" in f
        block = provenance_check.check(
            f.attrs["provenance"],
            command="surface",
            options={"samples": 300, "x_spec": "-1:1:4"},
            model=keras.models.load_model(trained / "sam.keras"),
        )
        assert block["settings"]["y"] == {"start": -0.5, "stop": 0.5, "num": 3}
        assert block["data_fingerprint"] == f.attrs["data_fingerprint"]
    before = out.read_bytes()
    assert invoke(*args).exit_code == 0  # complete file: nothing recomputed
    assert out.read_bytes() == before
    result = invoke("plot", out, "--kind", "contourf", "--log", "--out", trained / "s.png", "-q")
    assert result.exit_code == 0 and (trained / "s.png").stat().st_size > 1000


def test_interpolation_surface(trained):
    out = trained / "i.h5"
    models = [trained / "sgd.keras", "--model2", trained / "sam.keras"]
    result = invoke("surface", *models, "--x=0:1:3", "--samples", 300, "--test-samples", 0,
                    "--out", out, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert invoke("plot", out, "-q").exit_code == 0 and out.with_suffix(".png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["surface", "missing.keras"], "Error: Model file 'missing.keras' does not exist."),
        (["train", "--data", "imagenet"], "Error: Unknown data set 'imagenet'"),
        (["train", "--data", "none.npz"], "Error: Data file 'none.npz' does not exist."),
        (["train", "--out", "model.h5"], "Error: --out must end in .keras."),
        (["plot", "missing.h5"], "Error: Surface file 'missing.h5' does not exist."),
    ],
)
def test_user_errors_are_one_sentence_and_exit_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.output.startswith(message) and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_grid_and_mismatched_file(trained, tmp_path):
    result = invoke("surface", trained / "sam.keras", "--x=1:0:3", "--out", tmp_path / "b.h5")
    assert result.exit_code == 2 and "Argument `x`" in result.output
    out = tmp_path / "m.h5"
    base = ["surface", trained / "sam.keras", "--samples", 100, "--test-samples", 0, "-q"]
    assert invoke(*base, "--x=-1:1:3", "--out", out).exit_code == 0
    before = out.read_bytes()
    result = invoke(*base, "--x=-1:1:5", "--out", out)
    assert result.exit_code == 2 and "does not match" in result.output
    assert out.read_bytes() == before


def test_incompatible_data_shape(trained, tmp_path):
    path = tmp_path / "rgb.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((4, 8, 8, 3)), y_train=np.arange(4),
             x_test=rng.random((2, 8, 8, 3)), y_test=np.arange(2))  # fmt: skip
    result = invoke("surface", trained / "sam.keras", "--data", path, "--out", tmp_path / "x.h5")
    assert result.exit_code == 2 and "the model expects" in result.output


def test_hessian_command(trained, tmp_path):
    out = tmp_path / "h.json"
    result = invoke("hessian", trained / "sam.keras", "--k", 2, "--trace", "--trace-tol", 0.5,
                    "--density", tmp_path / "spectrum.png", "--steps", 5, "--runs", 2,
                    "--samples", 200, "--json", out, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert len(report["eigenvalues"]) == 2 and report["eigenvalues"][0] >= report["eigenvalues"][1]
    assert report["trace"]["estimate"] > 0 and (tmp_path / "spectrum.png").is_file()
    block = provenance_check.check(
        report["provenance"],
        command="hessian",
        options={"k": 2, "steps": 5, "runs": 2},
        model=keras.models.load_model(trained / "sam.keras"),
    )
    assert block["converged"] == {
        "eigenvalues": report["converged"],
        "trace": report["trace"]["converged"],
    }
    assert block["settings"]["k"] == 2 and block["seeds"] == 0 and block["precision"]
    assert "Hessian-vector products" in result.output


def test_sharpness_command(trained, tmp_path):
    out = tmp_path / "s.json"
    result = invoke("sharpness", trained / "sgd.keras", "--no-hessian", "--samples", 200,
                    "--json", out, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert "worst_l2" in report and "epsilon_sharpness" in report and "test_acc" in report
    block = provenance_check.check(
        report["provenance"],
        command="sharpness",
        model=keras.models.load_model(trained / "sgd.keras"),
    )
    assert block["settings"]["include_hessian"] is False and len(block["data_fingerprint"]) == 64
    assert "worst_l2" in result.output


# ------------------------------------------------------------------------ cost knobs
def test_hessian_knobs_reach_the_library_and_a_capped_run_says_so(trained, tmp_path):
    out = tmp_path / "capped.json"
    result = invoke("hessian", trained / "sam.keras", "--k", 2, "--max-iter", 3, "--basis-size",
                    4, "--trace", "--trace-probes", 4, "--trace-tol", 1e-6, "--samples", 100,
                    "--batch-size", 50, "--json", out, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["capped"] is True and report["converged"] is False
    assert report["max_iter"] == 3 and report["basis_size"] == 4 and report["tol"] == 1e-4
    assert report["n_hvp"] == 3 + 2  # the cap, then one certificate per eigenvalue
    assert report["trace"]["samples"] == report["trace"]["n_hvp"] == 4
    assert report["trace"]["capped"] is True and report["trace"]["converged"] is False
    assert "stopped at the cap --max-iter 3" in result.output
    assert "4 probes, stopped at the cap --trace-probes 4" in result.output


def test_sharpness_forwards_every_knob(trained, monkeypatch):
    import landscape.sharpness

    calls = []

    def report(objective, **options):
        calls.append((objective.batch_size, options))
        return {"loss": 0.5, "hessian_converged": False}

    monkeypatch.setattr(landscape.sharpness, "sharpness_report", report)
    result = invoke("sharpness", trained / "sgd.keras", "--k", 2, "--tol", 1e-3, "--max-iter", 7,
                    "--basis-size", 9, "--trace-probes", 4, "--trace-tol", 0.2, "--no-epsilon",
                    "--steps", 3, "--average-samples", 2, "--samples", 100, "--batch-size", 64,
                    "--seed", 5, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    batch_size, options = calls[0]
    assert batch_size == 64
    assert options == {
        "k": 2, "seed": 5, "include_hessian": True, "eigen_tol": 1e-3, "eigen_max_iter": 7,
        "basis_size": 9, "trace_tol": 0.2, "trace_samples": 4, "epsilon": None, "steps": 3,
        "samples": 2, "verbose": 0,
    }  # fmt: skip
    assert "hessian_converged  False" in result.output
    assert invoke("sharpness", trained / "sgd.keras", "--epsilon", 0.01, "-q").exit_code == 0
    assert calls[1][1]["epsilon"] == 0.01 and calls[1][1]["eigen_max_iter"] is None


def test_cheapest_sharpness_flags_what_stopped_at_its_cap(trained):
    result = invoke("sharpness", trained / "sgd.keras", "--k", 1, "--max-iter", 2, "--basis-size",
                    3, "--trace-probes", 3, "--no-epsilon", "--steps", 1, "--average-samples", 2,
                    "--samples", 64, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = dict(line.split(maxsplit=1) for line in result.output.strip().splitlines())
    assert rows["hessian_converged"] == "False" and rows["hessian_trace_converged"] == "False"
    assert "epsilon_sharpness" not in rows and float(rows["worst_l2"]) >= 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["hessian", "m.keras", "--max-iter", 0],
            "Invalid value for '--max-iter': 0 is not in the range x>=1.",
        ),
        (["hessian", "m.keras", "--tol", 2], "Invalid value for '--tol': 2.0 is not in the range"),
        (["hessian", "m.keras", "--k", 2, "--basis-size", 3], "--basis-size must be at least 4"),
        (["hessian", "m.keras", "--trace-probes", 0], "Invalid value for '--trace-probes': 0 "),
        (["hessian", "m.keras", "--steps", 0], "Invalid value for '--steps': 0 "),
        (["hessian", "m.keras", "--batch-size", 0], "Invalid value for '--batch-size': 0 "),
        (["sharpness", "m.keras", "--trace-tol", 0], "Invalid value for '--trace-tol': 0.0 "),
        (["sharpness", "m.keras", "--epsilon", 0], "Invalid value for '--epsilon': 0.0 "),
        (["sharpness", "m.keras", "--steps", 0], "Invalid value for '--steps': 0 "),
        (["sharpness", "m.keras", "--average-samples", 0], "Invalid value for '--average-samples'"),
        (["sharpness", "m.keras", "--samples", -1], "Invalid value for '--samples': -1 "),
        (["surface", "m.keras", "--batch-size", 0], "Invalid value for '--batch-size': 0 "),
        (
            ["surface", "m.keras", "--workers", 0],
            "Invalid value for '--workers': 0 is not in the range x>=1.",
        ),
    ],
)
def test_bad_cost_settings_are_one_sentence_before_any_work(args, message):
    result = invoke(*args)  # m.keras does not exist: the settings are checked first
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {message}") and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_basis_that_cannot_fit_is_one_sentence(trained, monkeypatch):
    from landscape import hessian

    monkeypatch.setattr(hessian, "available_memory", lambda: 1000)
    result = invoke("hessian", trained / "sam.keras", "--samples", 50, "-q")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("Error: hessian_eigenvalues with basis_size=20 and k=5 needs")
    assert "--basis-size" in result.output and len(result.output.strip().splitlines()) == 1
