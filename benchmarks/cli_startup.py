"""Start-up time of the ``landscape`` command: --version, --help and plotting an existing surface.

Each command runs as a fresh process (wall time from start to exit, the commands interleaved,
median of several repetitions), beside ``python -c "import tensorflow"`` for reference. The
surface is a 21 × 21 paraboloid written first with plain numpy + h5py in loss-landscape's layout
(``xcoordinates``, ``ycoordinates``, ``train_loss``), which ``Surface.load`` reads. The last column
says whether the command imported TensorFlow (checked in a separate process that runs the same
arguments through ``landscape.cli.main``). Target: --version and plot under 2 s.

    .venv/bin/python benchmarks/cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import _common  # noqa: F401  (quiets TensorFlow's start-up lines in the child processes)

import h5py
import numpy as np

LANDSCAPE = pathlib.Path(sys.executable).with_name("landscape")
TARGET = 2.0  # seconds, for --version and plot
IMPORTS_TENSORFLOW = """
import sys
from landscape.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
print("tensorflow" in sys.modules)
"""


def write_surface(path: pathlib.Path, n: int = 21) -> None:
    """A paraboloid on an n × n grid, as loss-landscape writes it."""
    x = np.linspace(-1.0, 1.0, n)
    y = np.linspace(-1.0, 1.0, n)
    xx, yy = np.meshgrid(x, y)  # [iy, ix]
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = x
        f["ycoordinates"] = y
        f["train_loss"] = 0.1 + xx**2 + 2.0 * yy**2


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def imports_tensorflow(args: list[str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", IMPORTS_TENSORFLOW, *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return "yes" if out.stdout.strip().splitlines()[-1] == "True" else "no"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        surface = pathlib.Path(tmp) / "surface.h5"
        write_surface(surface)
        plot_args = ["plot", str(surface), "--out", str(pathlib.Path(tmp) / "x.png"), "-q"]
        commands = {
            "landscape --version": ["--version"],
            "landscape --help": ["--help"],
            "landscape plot surface.h5 --out x.png": plot_args,
            'python -c "import tensorflow"': None,
        }
        argv = {
            name: [str(LANDSCAPE), *cli_args]
            if cli_args is not None
            else [sys.executable, "-c", "import tensorflow"]
            for name, cli_args in commands.items()
        }
        times = {name: [] for name in commands}
        for r in range(args.repeats):
            order = list(commands) if r % 2 == 0 else list(reversed(commands))
            for name in order:
                times[name].append(wall_time(argv[name]))
        uses_tf = {
            name: imports_tensorflow(cli_args) if cli_args is not None else "yes"
            for name, cli_args in commands.items()
        }

    width = max(len(name) for name in commands)
    print(f"fresh processes, median of {args.repeats} (seconds); target < {TARGET:g} s")
    print(f"{'command':<{width}}  {'median':>7}  {'min':>6}  {'max':>6}  imports TF")
    for name, values in times.items():
        print(
            f"{name:<{width}}  {statistics.median(values):>7.2f}  {min(values):>6.2f}  "
            f"{max(values):>6.2f}  {uses_tf[name]}"
        )


if __name__ == "__main__":
    main()
