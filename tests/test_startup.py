"""Start-up: ``import landscape`` and the CLI's --version/--help load no TensorFlow; names resolve.

The test process has TensorFlow loaded already (conftest), so what a fresh process imports is
checked in subprocesses; one subprocess checks several things to keep this module fast.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click
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
