"""Scaling benchmark: how a grid point, a gradient, an HVP and the top eigenvalues grow with size.

Three untrained models on the same data — the first 64 CIFAR-10 training images of
``../shared/data/cifar10_10k.npz`` scaled to [0, 1] (Gaussian noise if the file is absent), one
batch, sparse categorical cross-entropy:

- ``cnn``: ``landscape.models.cnn`` with filters (36, 72, 144, 288) and BatchNorm, ~0.50 M;
- ``resnet20``: ``landscape.models.resnet`` with depth 20 and width 68, ~4.9 M;
- ``resnet50``: ``keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3),
  classes=10)``, 23.6 M.

1. Cost (one spawned process per model): a surface grid point (``Objective.evaluate_at`` at a
   new point of a 2D plane of filter-normalized random directions, loss + accuracy), a gradient
   (``Objective.value_and_gradient``) and a Hessian-vector product (the default
   back-over-back mode), interleaved in a new random order in every repetition; medians, and
   the median of the per-repetition ratios HVP ÷ gradient and grid point ÷ gradient. HVP ÷
   gradient should stay flat as the models grow.
2. Memory: ``hessian_eigenvalues(obj, k=1)`` and ``k=5`` (thick-restart Lanczos, default
   basis and tolerance), each in a fresh spawned process so that each peak resident set
   (``ru_maxrss``) is its own: the peak after building the model and the Objective and one
   warm-up HVP (TensorFlow's own), the peak at the end, and the stated bound of the solver's
   vectors (``landscape.hessian.lanczos_memory``: a float32 basis of basis_size + 1 vectors,
   k + 4 float64 vectors); products, restarts, converged/capped, time.
3. Acceptance points of issue 14, run as a user would, with wall time and peak RSS of each
   command: ``landscape sharpness`` on the saved ResNet-50 with the cheapest settings its
   documentation allows (``--cli-flags``), and ``landscape hessian --trace`` and ``landscape
   sharpness`` on the ~0.5 M untrained CNN with their default caps.

Like the other benchmarks (``_common.py``), it runs TensorFlow with ``TF_ENABLE_ONEDNN_OPTS=0``
unless the variable is set: ``TF_ENABLE_ONEDNN_OPTS=1`` measures TensorFlow's default, which is
several times faster for ResNet-50's gradients on this CPU. Timings on a shared 2-core machine are
noisy; rerun to reproduce. The full run takes 25–50 minutes there; ``--quick`` is a smoke run on
tiny models (no ResNet-50) that finishes in about a minute.

    .venv/bin/python benchmarks/scaling.py [--quick] [--models cnn,resnet20,resnet50]
        [--repeats 5] [--ks 1,5] [--basis-size M] [--max-iter N] [--no-cost] [--no-cli]
        [--json results.json]
    # ResNet-50's top 1 and top 5 at the default basis only (about 9 minutes):
    .venv/bin/python benchmarks/scaling.py --models resnet50 --ks 1,5 --no-cost --no-cli
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pathlib
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from _common import CIFAR, cifar_subset

import numpy as np

#: The cheapest settings of ``landscape sharpness`` (docs/guide/cli.md: "A cheap first look at a
#: large model", with fewer probes, steps and samples still).
CHEAP_SHARPNESS = (
    "--k 1 --max-iter 100 --trace-probes 10 --steps 2 --average-samples 2 --no-epsilon"
)
GB = 1e9


# ----------------------------------------------------------------------- in the child processes
def build(name: str, quick: bool):
    """The named model, seeded, compiled with sparse categorical cross-entropy."""
    import keras

    from landscape.models import cnn, resnet

    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    if name == "cnn":
        filters = (8, 16) if quick else (36, 72, 144, 288)
        model = cnn(shape, 10, filters=filters, sam_model=False)
    elif name == "resnet20":
        model = resnet(shape, 10, depth=8 if quick else 20, width=8 if quick else 68,
                       sam_model=False)  # fmt: skip
    elif name == "resnet50":
        model = keras.applications.ResNet50(weights=None, input_shape=shape, classes=10)
    else:
        raise ValueError(f"Unknown model {name!r}; expected cnn, resnet20 or resnet50.")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def objective(name: str, quick: bool, n: int):
    import landscape

    model = build(name, quick)
    x, y, source = cifar_subset(n)
    obj = landscape.Objective(model, (x, y), batch_size=n)
    n_params = sum(int(np.prod(v.shape)) for v in obj.trainable_variables)
    return model, obj, n_params, source


def peak_rss() -> int:
    """Peak resident set of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cost_job(name: str, quick: bool, n: int, repeats: int, calls: int) -> dict:
    """Interleaved medians of a grid point, a gradient and an HVP (seconds)."""
    import landscape

    model, obj, n_params, source = objective(name, quick, n)
    basis = obj.basis([landscape.random_direction(model, seed=s) for s in (0, 1)])
    rng = np.random.default_rng(0)
    v = [rng.standard_normal(tuple(t.shape)).astype("float32") for t in obj.trainable_variables]

    def point():
        obj.evaluate_at(rng.uniform(-1, 1, 2), basis)

    def gradient():
        obj.value_and_gradient()[1][0].numpy()

    def hvp():
        obj.hessian_vector_product(v)[0].numpy()

    runs = {"point": point, "gradient": gradient, "hvp": hvp}
    start = time.perf_counter()
    for fn in runs.values():  # tracing and first-call allocations
        fn()
    warm_up = time.perf_counter() - start
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key in rng.permutation(list(runs)):  # a new order in every repetition
            start = time.perf_counter()
            for _ in range(calls):
                runs[key]()
            times[key].append((time.perf_counter() - start) / calls)
    med = {k: statistics.median(t) for k, t in times.items()}
    return {
        "model": name,
        "n_params": n_params,
        "data": source,
        "loss": obj.evaluate()["loss"],
        "point": med["point"],
        "gradient": med["gradient"],
        "hvp": med["hvp"],
        "hvp_per_gradient": statistics.median(
            h / g for h, g in zip(times["hvp"], times["gradient"])
        ),
        "point_per_gradient": statistics.median(
            p / g for p, g in zip(times["point"], times["gradient"])
        ),
        "warm_up": warm_up,
        "peak_rss": peak_rss(),
    }


def eigen_job(
    name: str, quick: bool, n: int, k: int, max_iter: int | None, basis_size: int | None
) -> dict:
    """One ``hessian_eigenvalues`` run in this (fresh) process, with its peak memory."""
    import landscape
    from landscape import hessian

    _, obj, n_params, _ = objective(name, quick, n)
    rng = np.random.default_rng(1)
    v = [rng.standard_normal(tuple(t.shape)).astype("float32") for t in obj.trainable_variables]
    obj.hessian_vector_product(v)[0].numpy()  # the traced product and TensorFlow's own memory
    before = peak_rss()
    start = time.perf_counter()
    eig = landscape.hessian_eigenvalues(obj, k=k, max_iter=max_iter, basis_size=basis_size, seed=0)
    wall = time.perf_counter() - start
    return {
        "model": name,
        "k": k,
        "n_params": n_params,
        "values": [float(x) for x in eig.values],
        "residual": float(np.max(eig.residuals)),
        "n_hvp": int(eig.n_hvp),
        "restarts": int(eig.restarts),
        "converged": bool(eig.converged),
        "capped": bool(eig.capped),
        "basis_size": eig.basis_size,
        "max_iter": eig.max_iter,
        "wall": wall,
        "rss_before": before,
        "peak_rss": peak_rss(),
        "bound": hessian.lanczos_memory(n_params, k, eig.basis_size, eig.precision),
    }


def save_job(name: str, quick: bool, path: str) -> int:
    model = build(name, quick)
    model.save(path)
    return int(model.count_params())


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a new spawned interpreter (its own TensorFlow, its own peak RSS)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


# ----------------------------------------------------------------------------- the CLI runs
def run_cli(args: list[str], log: pathlib.Path) -> dict:
    """Run ``landscape *args``; wall time, CPU time and peak RSS of that process alone."""
    exe = pathlib.Path(sys.executable).with_name("landscape")
    argv = [str(exe), *args]
    print(f"$ landscape {shlex.join(args)}", flush=True)
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child only
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if proc.returncode:
        print(text[-3000:])
    return {
        "command": "landscape " + shlex.join(args),
        "exit": proc.returncode,
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "peak_rss": usage.ru_maxrss * 1024,
        "output": text,
    }


def read_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


# ------------------------------------------------------------------------------------ report
def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def print_costs(rows: list[dict]) -> None:
    print(
        "\n| model | parameters | loss at w0 | grid point (ms) | gradient (ms) | HVP (ms) "
        "| HVP ÷ gradient | grid point ÷ gradient | peak RSS (GB) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['model']} | {r['n_params']:,} | {r['loss']:.4g} | {fmt_ms(r['point'])} "
            f"| {fmt_ms(r['gradient'])} | {fmt_ms(r['hvp'])} | {r['hvp_per_gradient']:.2f} "
            f"| {r['point_per_gradient']:.2f} | {r['peak_rss'] / GB:.2f} |"
        )


def print_eigen(rows: list[dict]) -> None:
    print(
        "\n| model | k | basis | HVPs | restarts | converged | capped | max residual | time (s) "
        "| s per HVP | peak RSS before (GB) | peak RSS (GB) | increase (GB) | bound (GB) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: "
          "| ---: | ---: |")  # fmt: skip
    for r in rows:
        print(
            f"| {r['model']} | {r['k']} | {r['basis_size']} | {r['n_hvp']} | {r['restarts']} "
            f"| {r['converged']} | {r['capped']} | {r['residual']:.1e} | {r['wall']:.1f} "
            f"| {r['wall'] / r['n_hvp']:.2f} | {r['rss_before'] / GB:.2f} "
            f"| {r['peak_rss'] / GB:.2f} | {(r['peak_rss'] - r['rss_before']) / GB:.2f} "
            f"| {r['bound'] / GB:.2f} |"
        )
    for r in rows:
        values = ", ".join(f"{x:.5g}" for x in r["values"])
        print(f"  {r['model']} k={r['k']}: λ = {values}")


def acceptance(results: dict, quick: bool) -> None:
    print("\nAcceptance (issue 14)")
    top5 = [r for r in results["eigen"] if r["model"] == "resnet50" and r["k"] == 5]
    if not top5:
        print("  (1) ResNet-50 top-5: not run" + (" (--quick)" if quick else ""))
    for eig5 in top5:
        ok = eig5["converged"] and eig5["peak_rss"] < 6 * GB
        print(
            f"  (1) ResNet-50 top-5, basis {eig5['basis_size']}: certified {eig5['converged']} "
            f"(max residual {eig5['residual']:.1e}), peak RSS {eig5['peak_rss'] / GB:.2f} GB "
            f"< 6 GB: {eig5['peak_rss'] < 6 * GB}  ->  {'PASS' if ok else 'FAIL'}"
        )
    for key, label in (("resnet50_sharpness", "(2)"), ("cnn_hessian", "(3)"),
                       ("cnn_sharpness", "(3)")):  # fmt: skip
        run = results["cli"].get(key)
        if run is None:
            continue
        report = run["json"]
        flags = {k: v for k, v in report.items() if isinstance(v, bool)}
        flags |= {k: report[k] for k in ("n_hvp", "max_iter", "restarts") if k in report}
        for part in ("eigenvalues", "trace"):
            if isinstance(report.get(part), dict):
                sub = report[part]
                flags |= {f"{part}_{k}": sub[k] for k in ("converged", "capped") if k in sub}
                for k in ("n_hvp", "max_iter", "samples", "max_samples"):
                    if k in sub:
                        flags[f"{part}_{k}"] = sub[k]
        limit = 900 if key == "resnet50_sharpness" else None
        verdict = ""
        if limit is not None:
            finished = run["exit"] == 0 and run["wall"] < limit
            verdict = f"  ->  {'PASS' if finished else 'FAIL'} (limit {limit / 60:.0f} min)"
        print(
            f"  {label} {run['command']}\n"
            f"      exit {run['exit']}, {run['wall']:.1f} s wall ({run['cpu']:.1f} s CPU), "
            f"peak RSS {run['peak_rss'] / GB:.2f} GB; flags {flags}{verdict}"
        )


# -------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, a smoke run")
    parser.add_argument("--models", default=None, help="comma-separated subset")
    parser.add_argument("--n", type=int, default=64, help="images (one batch)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--ks", default="1,5", help="eigenvalue counts to measure")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="Lanczos cap of the eigenvalue runs [the library's]")  # fmt: skip
    parser.add_argument("--basis-size", type=int, default=None,
                        help="Lanczos basis of the eigenvalue runs [the library's]")  # fmt: skip
    parser.add_argument("--no-cost", action="store_true", help="skip the timing runs")
    parser.add_argument("--cli-flags", default=CHEAP_SHARPNESS,
                        help="flags of the ResNet-50 `landscape sharpness` run")  # fmt: skip
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI acceptance runs")
    parser.add_argument("--json", default=None, help="write every result here")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats = min(args.n, 16), min(args.repeats, 2)
    names = ["cnn", "resnet20"] if args.quick else ["cnn", "resnet20", "resnet50"]
    if args.models:
        names = args.models.split(",")
    ks = [int(k) for k in args.ks.split(",") if k]
    print(
        f"data: {args.n} images of {CIFAR.name if CIFAR.exists() else 'generated noise'}, one "
        f"batch; models {names}{' (quick: tiny variants)' if args.quick else ''}; "
        f"{args.repeats} interleaved repetitions; load average at start "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        flush=True,
    )
    results: dict = {"cost": [], "eigen": [], "cli": {}, "quick": args.quick}
    started = time.perf_counter()

    for name in [] if args.no_cost else names:
        r = in_fresh_process(cost_job, name, args.quick, args.n, args.repeats, args.calls)
        print(
            f"  cost {name}: {r['n_params']:,} parameters, HVP ÷ gradient "
            f"{r['hvp_per_gradient']:.2f} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        results["cost"].append(r)
    for name in names:
        for k in ks:
            r = in_fresh_process(
                eigen_job, name, args.quick, args.n, k, args.max_iter, args.basis_size
            )
            print(
                f"  eigen {name} k={k}: {r['n_hvp']} HVPs, converged {r['converged']}, peak "
                f"{r['peak_rss'] / GB:.2f} GB ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
            results["eigen"].append(r)

    if not args.no_cli:
        with tempfile.TemporaryDirectory(prefix="scaling_") as tmp:
            tmp = pathlib.Path(tmp)
            data_file = CIFAR
            if not CIFAR.exists():  # the same generated images as the library runs
                x, y, _ = cifar_subset(args.n)
                data_file = tmp / "noise.npz"
                np.savez(data_file, x_train=x, y_train=y, x_test=x, y_test=y)
            data = ["--data", str(data_file)]
            common = [*data, "--samples", str(args.n), "--seed", "0", "--quiet"]
            runs = []
            if "resnet50" in names:
                runs.append(("resnet50_sharpness", "resnet50", "sharpness",
                              shlex.split(args.cli_flags)))  # fmt: skip
            if "cnn" in names:
                quick_caps = ["--max-iter", "50", "--trace-probes", "20"] if args.quick else []
                runs.append(("cnn_hessian", "cnn", "hessian", ["--trace", *quick_caps]))
                runs.append(("cnn_sharpness", "cnn", "sharpness", quick_caps))
            for key, name, command, flags in runs:
                path = tmp / f"{name}.keras"
                if not path.exists():
                    in_fresh_process(save_job, name, args.quick, str(path))
                out = tmp / f"{key}.json"
                run = run_cli([command, str(path), *flags, *common, "--json", str(out)],
                              tmp / f"{key}.log")  # fmt: skip
                run["json"] = read_json(out)
                run["command"] = run["command"].replace(str(tmp) + "/", "")
                run["command"] = run["command"].replace(str(data_file), data_file.name)
                results["cli"][key] = run
                print(f"  {key}: {run['wall']:.1f} s, exit {run['exit']}", flush=True)

    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average now "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    if results["cost"]:
        print_costs(results["cost"])
    if results["eigen"]:
        print_eigen(results["eigen"])
    acceptance(results, args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
