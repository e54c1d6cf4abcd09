"""Wall and CPU time of every ``landscape`` command at its defaults, on ``landscape train``'s model.

Into a temporary folder: ``landscape train`` at its defaults (model.keras), a second model with
``--seed 1`` for ``connect``, then each command at its defaults on them (surface, plot, hessian,
sharpness, connect) and ``figures --quick``. Each command is a fresh process (start-up and model
loading included), run one after the other; the table gives its wall time, its CPU time (user +
system of the process and its threads: on a shared machine the wall time grows with the load,
the CPU time hardly), exit status and the lines of its output that say whether an iterative part
converged or stopped at its cap. Target (issue 28): each under a minute on 2 cores.

With --library, each library analysis at its defaults too (one process, on the objective the
CLI's hessian and sharpness build at their defaults).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/cli_defaults.py [--timeout 1800] [--only hessian]
        [--library [sharpness_report ...]]
"""

from __future__ import annotations

import argparse
import json
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


LIBRARY = """
import json, sys, time
import landscape
from landscape.executors import ObjectiveRecipe, load_model

model = load_model("model.keras")
# the objective of `landscape hessian` / `sharpness` at their defaults (first --samples examples)
samples = int(sys.argv[1])
obj = ObjectiveRecipe("model.keras", samples=samples, batch_size=500).build(model)
calls = {
    "hessian_eigenvalues": lambda: landscape.hessian_eigenvalues(obj, seed=0),
    "hessian_trace": lambda: landscape.hessian_trace(obj, seed=0),
    "hessian_spectrum": lambda: landscape.hessian_spectrum(obj, seed=0),
    "layer_curvature": lambda: landscape.layer_curvature(obj),
    "epsilon_sharpness": lambda: landscape.epsilon_sharpness(obj, seed=0),
    "worst_case_sharpness (l2, 0.05)": lambda: landscape.worst_case_sharpness(obj, 0.05, seed=0),
    "average_sharpness (l2, 0.05)": lambda: landscape.average_sharpness(obj, 0.05, seed=0),
    "sharpness_report": lambda: landscape.sharpness_report(obj),
}
only = sys.argv[2:]
for name, call in calls.items():
    if only and not name.startswith(tuple(only)):
        continue
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    flags = {key: getattr(result, key) for key in ("converged", "capped", "n_hvp", "samples")
             if isinstance(getattr(result, key, None), (bool, int))}
    if isinstance(result, dict):
        flags = {k: v for k, v in result.items() if k.endswith("converged")}
    print(json.dumps({"name": name, "wall": time.perf_counter() - wall,
                      "cpu": time.process_time() - cpu, "flags": flags}), flush=True)
"""


def library(cwd: str, samples: int, timeout: float, only) -> list[tuple]:
    """Each library analysis at its defaults, in one process on the objective of the CLI's
    analyses (model.keras, the first ``samples`` embedded training examples)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-c", LIBRARY, str(samples), *(only or [])],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rows.append((row["name"], row["wall"], row["cpu"], row["flags"]))
            print(f"{row['name']:<32} {row['wall']:8.1f} s  cpu {row['cpu']:8.1f} s  "
                  f"{row['flags']}", flush=True)  # fmt: skip
    if proc.returncode:
        print(proc.stderr.strip().splitlines()[-1:], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=1800.0, help="Seconds per command.")
    parser.add_argument("--only", nargs="*", default=None, help="Commands to time (after train).")
    parser.add_argument(
        "--library",
        nargs="*",
        default=None,
        help="Also time the library's analyses (these names, or all).",
    )
    parser.add_argument("--samples", type=int, default=1000,
                        help="Training examples of the library's objective (the CLI's "
                             "--samples default).")  # fmt: skip
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
        lib = (
            []
            if args.library is None
            else library(tmp, args.samples, args.timeout * 4, args.library)
        )
    print(f"\n| command | wall (s) | CPU (s) | exit | wall under {TARGET:.0f} s |")
    print("|---|---:|---:|---:|---|")
    for name, seconds, cpu, rc in rows:
        print(
            f"| {name} | {seconds:.1f} | {cpu:.1f} | {rc} | {'yes' if seconds < TARGET else 'no'} |"
        )
    if lib:
        print(f"\nLibrary, at the defaults, on the first {args.samples} embedded examples:\n")
        print("| analysis | wall (s) | CPU (s) | flags |\n|---|---:|---:|---|")
        for name, seconds, cpu, flags in lib:
            print(f"| {name} | {seconds:.1f} | {cpu:.1f} | {flags} |")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n{os.cpu_count()} CPUs, load average at the end {load}; Python {sys.version.split()[0]}"
    )


if __name__ == "__main__":
    main()
