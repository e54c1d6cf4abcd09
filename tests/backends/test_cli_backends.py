"""The command line runs on the process's Keras backend.

A JAX and a PyTorch process (``KERAS_BACKEND`` in its environment) run ``landscape surface`` on
one tiny saved model and data file: each exits 0, the surface file records its backend, and its
values agree with this TensorFlow process's Objective along the file's directions to float32
rounding (each backend's own kernels; rtol 2e-6, as in ``test_cross_backend.py``); so does
``landscape hessian``'s top eigenvalue on JAX (rtol 1e-5: the
Lanczos tolerance 1e-4 bounds the residual, the eigenvalue's error goes with its square).
``landscape train`` on JAX and PyTorch writes a model that loads on TensorFlow with the loss it
reported; ``--strategy mirrored`` on JAX exits 2 with one sentence (TensorFlow's own C++ start-up
lines, which TF_CPP_MIN_LOG_LEVEL=2 does not silence with TensorFlow 2.21 here, are not the
command's). Runs from the TensorFlow leg only (it starts every backend itself).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).parent.parent.parent
BACKENDS = ("tensorflow", "jax", "torch")

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow"
    or any(importlib.util.find_spec(b) is None for b in BACKENDS),
    reason="runs from the TensorFlow leg, with jax and torch installed",
)


def _start(backend: str, *args) -> subprocess.Popen:
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-c", "from landscape.cli import main; main()", *map(str, args)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_backends")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(3)]
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(root / "tiny.keras")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(24, 4)).astype("float32"), rng.integers(0, 3, 24)
    np.savez(root / "data.npz", x_train=x, y_train=y, x_test=x[:6], y_test=y[:6])
    return root


def test_surface_and_hessian_run_on_every_backend_and_agree(files):
    """The commands on JAX and PyTorch (subprocesses) against this TensorFlow process's own
    Objective at the grid the file records, along the directions the file stores."""
    other = ("jax", "torch")
    procs = {
        b: _start(
            b,
            "surface",
            files / "tiny.keras",
            "--data",
            files / "data.npz",
            "--x=-1:1:3",
            "--y=-1:1:3",
            "--out",
            files / f"{b}.h5",
            "-q",
        )  # fmt: skip
        for b in other
    }
    procs["jax/hessian"] = _start(
        "jax", "hessian", files / "tiny.keras", "--data", files / "data.npz", "--k", 1,
        "--json", files / "jax.json", "-q",
    )  # fmt: skip
    for name, proc in procs.items():
        code, out, err = _finish(proc)
        assert code == 0, f"{name}: {out}{err}"
    import landscape

    model = keras.models.load_model(files / "tiny.keras")
    with np.load(files / "data.npz") as d:
        objective = landscape.Objective(
            model, (d["x_train"], d["y_train"]), test_data=(d["x_test"], d["y_test"])
        )
    for b in other:
        surface = landscape.Surface.load(files / f"{b}.h5")
        assert surface.metadata["backend"] == b
        basis = objective.basis(list(surface.directions))
        expected = np.array(
            [[objective.evaluate_at([a, c], basis)["loss"] for a in surface.x] for c in surface.y]
        )
        np.testing.assert_allclose(surface.values["train_loss"], expected, rtol=2e-6, err_msg=b)
        assert np.ptp(expected) > 0
    # A file from JAX, half its points cleared, resumed here on TensorFlow: the same file goes
    # on (its fingerprints match), the recomputed points agree, it keeps the backend it began on.
    import shutil

    import h5py

    shutil.copy(files / "jax.h5", files / "resumed.h5")
    with h5py.File(files / "resumed.h5", "r+") as f:
        f["train_loss"][0, :] = np.nan
        f["computed"][0, :] = 0
    surface = landscape.Surface.load(files / "jax.h5")
    resumed = landscape.compute_surface(objective, list(surface.directions), "-1:1:3", "-1:1:3",
                                        path=files / "resumed.h5", verbose=0)  # fmt: skip
    for name in ("train_loss", "test_loss"):
        np.testing.assert_allclose(resumed.values[name], surface.values[name], rtol=2e-6)
    assert landscape.Surface.load(files / "resumed.h5").metadata["backend"] == "jax"
    top = json.loads((files / "jax.json").read_text())["eigenvalues"][0]
    ours = landscape.hessian_eigenvalues(objective, k=1).values[0]
    np.testing.assert_allclose(top, ours, rtol=1e-5)


def test_train_runs_on_every_backend_and_its_model_loads_on_tensorflow(files):
    """``landscape train`` with a SAM-family member on JAX and PyTorch writes a model that this
    TensorFlow process loads, optimizer included, and whose loss it reproduces; tf.distribute's
    strategies are refused there in one sentence, nothing written."""
    args = ["train", "--model", "mlp", "--data", files / "data.npz", "--optimizer", "looksam",
            "--epochs", 2, "--batch-size", 8]  # fmt: skip
    procs = {b: _start(b, *args, "--out", files / f"{b}.keras") for b in ("jax", "torch")}
    refused = _finish(_start("jax", "train", "--strategy", "mirrored", "--out", files / "x.keras"))
    import sam

    with np.load(files / "data.npz") as data:
        x, y = data["x_train"], data["y_train"]
    for backend, proc in procs.items():
        code, out, err = _finish(proc)
        assert code == 0, err
        model = keras.models.load_model(files / f"{backend}.keras")
        assert isinstance(model.optimizer, sam.LookSAM)
        reported = float(re.search(r"train loss ([0-9.]+)", out).group(1))  # 4 decimals
        np.testing.assert_allclose(model.evaluate(x, y, verbose=0)[0], reported, atol=6e-5)
    code, out, err = refused
    tf_log = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)")
    lines = [line for line in err.strip().splitlines() if not tf_log.match(line)]
    assert code == 2 and out == "" and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("Error: Argument `strategy` names tf.distribute")
    assert not (files / "x.keras").exists()
