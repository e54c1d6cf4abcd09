"""Wall and CPU time of every ``landscape`` command at its defaults, on ``landscape train``'s model.

Into a temporary folder: ``landscape train`` at its defaults (model.keras), a second model with
``--seed 1`` for ``connect``, then each command at its defaults on them (surface, plot, hessian,
sharpness, connect) and ``figures --quick``. Each command is a fresh process (start-up and model
loading included), run one after the other; the table gives its wall time, its CPU time (user +
system of the process and its threads: on a shared machine the wall time grows with the load,
the CPU time hardly), exit status and the lines of its output that say whether an iterative part
converged or stopped at its cap. Target (issue 28): each under a minute on 2 cores.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/cli_defaults.py [--timeout 1800] [--only hessian]
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import _common  # noqa: F401  (quiets TensorFlow's start-up lines in the child processes)

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = 60.0  # seconds
# (name, arguments after `landscape`): the defaults, nothing else but what a command needs
COMMANDS = [
    ("train", ["train"]),
    ("train (2nd model)", ["train", "--seed", "1", "--out", "b.keras"]),
    ("surface", ["surface", "model.keras"]),
    ("plot", ["plot", "surface.h5"]),
    ("hessian", ["hessian", "model.keras"]),
    ("sharpness", ["sharpness", "model.keras"]),
    ("connect", ["connect", "model.keras", "b.keras"]),
    ("figures --quick", ["figures", "--quick", "--out-dir", "figures"]),
]
WORDS = ("converged", "cap", "probes", "products", "hessian_", "barrier")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the finished children's
    return usage.ru_utime + usage.ru_stime


def run(args: list[str], cwd: str, timeout: float) -> tuple[float, float, object, list[str]]:
    """Wall and CPU seconds, exit status ("timeout" past ``timeout``) and the output's telling
    lines."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start, cpu = time.perf_counter(), _cpu()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "landscape.cli", *args],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, math.nan, "timeout", []
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    lines = [line.strip() for line in proc.stdout.splitlines()]
    telling = [line for line in lines if any(w in line for w in WORDS)]
    if proc.returncode:
        telling += proc.stderr.strip().splitlines()[-1:]
    return seconds, cpu, proc.returncode, telling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=1800.0, help="Seconds per command.")
    parser.add_argument("--only", nargs="*", default=None, help="Commands to time (after train).")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, command in COMMANDS:
            if args.only and not name.startswith(("train", *args.only)):
                continue
            seconds, cpu, rc, telling = run(command, tmp, args.timeout)
            rows.append((name, seconds, cpu, rc))
            print(f"{name:<18} {seconds:8.1f} s  cpu {cpu:8.1f} s  exit {rc}", flush=True)
            for line in telling:
                print(f"{'':<18}   {line}", flush=True)
    print(f"\n| command | wall (s) | CPU (s) | exit | wall under {TARGET:.0f} s |")
    print("|---|---:|---:|---:|---|")
    for name, seconds, cpu, rc in rows:
        print(
            f"| {name} | {seconds:.1f} | {cpu:.1f} | {rc} | {'yes' if seconds < TARGET else 'no'} |"
        )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n{os.cpu_count()} CPUs, load average at the end {load}; Python {sys.version.split()[0]}"
    )


if __name__ == "__main__":
    main()
