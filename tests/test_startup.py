"""Start-up: ``import landscape`` and the CLI's --version/--help load no TensorFlow; names resolve.

The test process has TensorFlow loaded already (conftest), so what a fresh process imports is
checked in subprocesses; one subprocess checks several things to keep this module fast.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile

import click
import h5py
import numpy as np
import pytest

import landscape
from landscape import _checks
from landscape.cli import main

FRESH_PROCESS = """
import json, sys
import landscape
seen = {"import landscape": "tensorflow" in sys.modules, "version": landscape.__version__}
from landscape.cli import main
for args in (["--version"], ["--help"], ["surface", "--help"], ["plot", "--help"]):
    try:
        main(args, standalone_mode=False)
    except SystemExit:
        pass
    seen["landscape " + " ".join(args)] = "tensorflow" in sys.modules
print(json.dumps(seen))
"""

FIRST_MODULE_WITH_TENSORFLOW = """
import importlib, sys
import landscape
for module in sorted(landscape._WITHOUT_TENSORFLOW):
    importlib.import_module("landscape." + module)
    if "tensorflow" in sys.modules:
        print(module)
        break
else:
    print("none")
"""


def last_line(script: str) -> str:
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_import_version_and_help_load_no_tensorflow():
    seen = json.loads(last_line(FRESH_PROCESS))
    assert seen.pop("version") == landscape.__version__
    assert seen == {
        "import landscape": False,
        "landscape --version": False,
        "landscape --help": False,
        "landscape surface --help": False,
        "landscape plot --help": False,
    }


def test_tensorflow_free_modules_load_no_tensorflow():
    assert last_line(FIRST_MODULE_WITH_TENSORFLOW) == "none"


def test_public_names_resolve_from_their_modules():
    assert landscape.Objective is landscape.objective.Objective
    assert landscape.Surface is landscape.surface.Surface
    assert sorted(landscape._SUBMODULE_OF) == sorted(landscape.__all__)
    for name in landscape.__all__:
        value = getattr(landscape, name)  # imports the module on first use
        assert value is getattr(sys.modules[f"landscape.{landscape._SUBMODULE_OF[name]}"], name)
    assert set(landscape.__all__) <= set(dir(landscape))
    assert landscape.io.__name__ == "landscape.io"  # submodules too, as before
    with pytest.raises(AttributeError, match="has no attribute 'nonexistent'"):
        landscape.nonexistent  # noqa: B018


def test_version_has_one_source():
    from landscape._version import __version__

    assert landscape.__version__ == __version__


@pytest.mark.parametrize(
    ("command", "option", "mode"),
    [
        ("surface", "norm", _checks.Norm),
        ("surface", "ignore", _checks.Ignore),
        ("plot", "kind", _checks.Kind),
        ("hessian", "which", _checks.Which),
    ],
)
def test_cli_choices_are_the_library_modes(command, option, mode):
    (param,) = [p for p in main.commands[command].params if p.name == option]
    assert isinstance(param.type, click.Choice)
    assert tuple(param.type.choices) == _checks.options(mode)


# -- validation before TensorFlow, quiet start-up, models that load without `sam` ---------------

CHECKED_BEFORE_TENSORFLOW = """
import json, sys
import click
from landscape.cli import main
seen = []
for args in json.loads(sys.argv[1]):
    try:
        main(args, standalone_mode=False)
        code = 0
    except click.ClickException as err:
        code = err.exit_code
    seen.append([code, "tensorflow" in sys.modules])
print(json.dumps(seen))
"""


def test_files_and_options_are_refused_before_tensorflow_loads(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"")  # exists: the data option is the one refused
    commands = [
        ["surface", "missing.keras"],
        ["hessian", "missing.keras", "-q"],
        ["surface", str(model), "--data", "none.npz"],
        ["sharpness", str(model), "--data", "imagenet"],
        ["train", "--data", "none.npz"],
        ["train", "--out", "model.h5"],
    ]
    out = subprocess.run(
        [sys.executable, "-c", CHECKED_BEFORE_TENSORFLOW, json.dumps(commands)],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[2, False]] * len(commands)


def _user_environment() -> dict:
    """The environment of a user's shell: without the test set-up's TensorFlow switches."""
    env = dict(os.environ)
    for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS"):
        env.pop(name, None)
    return env


TWO_COMMANDS = """
import sys
from landscape.cli import main
for args in (sys.argv[1:-1], ["surface", sys.argv[-2], "--x=-1:1:3", "--samples", "64",
                              "--test-samples", "0", "--out", sys.argv[-1]]):
    try:
        main(args, standalone_mode=False)
    except SystemExit:
        pass
"""


@pytest.fixture(scope="module")
def sgd_run(tmp_path_factory):
    """``landscape train --optimizer sgd`` (a tiny MLP) then ``landscape surface`` on its model,
    in a fresh process with a user's environment; (model path, completed process)."""
    d = tmp_path_factory.mktemp("startup")
    model = d / "sgd.keras"
    train = ["train", "--model", "mlp", "--optimizer", "sgd", "--epochs", "1",
             "--samples", "64", "--out", str(model)]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", TWO_COMMANDS, *train, str(d / "s.h5")],
        capture_output=True, text=True, env=_user_environment(), cwd=d,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return model, out


# What TensorFlow 2.21 prints at start-up, and its retracing warning: absl's prefix (severity,
# MMDD, time), absl's notice, the CPU-feature line, "triggered tf.function retracing".
NOISE = re.compile(r"^[IWEF]\d{4} |InitializeLog|To enable the following instructions|retracing")


def test_cli_commands_print_no_tensorflow_banner_or_retracing(sgd_run):
    model, out = sgd_run
    assert "saved" in out.stdout and "train loss" in out.stdout and "train_loss: min" in out.stdout
    assert [line for line in out.stderr.splitlines() if NOISE.search(line)] == []
    assert "import sam" not in out.stdout  # an SGD model needs no class of sam


LOAD_PLAIN = """
import json, sys
import keras
m = keras.models.load_model(sys.argv[1])
print(json.dumps([type(m).__name__, type(m.optimizer).__name__,
                  sorted(k for k in ("sam", "landscape") if k in sys.modules),
                  sum(float(keras.ops.sum(w)) for w in m.weights)]))
"""


def _stored_weight_sum(path) -> float:
    """The sum of the layers' weights as stored in the .keras archive (read with h5py)."""
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as f:
        data = io.BytesIO(f.read())
    total = []
    with h5py.File(data, "r") as h5:
        h5["layers"].visititems(
            lambda name, obj: total.append(float(np.sum(obj[()], dtype=np.float64)))
            if isinstance(obj, h5py.Dataset) else None
        )  # fmt: skip
    return sum(total)


def test_sgd_model_loads_with_plain_keras_in_a_fresh_process(sgd_run):
    model, _ = sgd_run
    out = subprocess.run(
        [sys.executable, "-c", LOAD_PLAIN, str(model)],
        capture_output=True, text=True, env=_user_environment(), cwd=model.parent,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    name, optimizer, imported, weight_sum = json.loads(out.stdout.strip().splitlines()[-1])
    assert (name, optimizer, imported) == ("Functional", "SGD", [])
    assert weight_sum == pytest.approx(_stored_weight_sum(model), rel=1e-6)


def test_sam_model_says_in_one_sentence_that_it_needs_sam(tmp_path):
    from click.testing import CliRunner

    out = tmp_path / "sam.keras"
    args = ["train", "--model", "mlp", "--optimizer", "sam", "--epochs", "1", "--samples", "64",
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "import sam" in line]
    assert lines == [
        f"{out} holds classes of the sam package: `import sam` before keras.models.load_model "
        "(docs/guide/loading-models.md)."
    ]
