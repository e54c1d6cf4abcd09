"""The console script."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from click.testing import CliRunner

from landscape import __version__
from landscape.cli import main


def test_version_and_help():
    runner = CliRunner()
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "Examples" in result.output


def test_console_script_runs():
    script = pathlib.Path(sys.executable).with_name("landscape")
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout
