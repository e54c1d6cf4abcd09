"""The long profile of the conformance harness: N generated models, each checked.

    PYTHONPATH=. python benchmarks/conformance.py --models 2000 --seed 0 --workers 2
    KERAS_BACKEND=jax PYTHONPATH=. python benchmarks/conformance.py --models 200 --seed 0
    PYTHONPATH=. python benchmarks/conformance.py --backend torch --models 200 --workers 1

Draws cases ``seed .. seed+N-1`` of the "long" profile of tests/model_grammar.py, runs the
invariants of tests/conformance.py on each (one TensorFlow thread per worker process), prints
progress, then how many models it tried, how many passed each invariant, and every failure with
its seed and one-line description, grouped by kind (known faults being fixed marked as such).
A case reproduces alone with ``--models 1 --seed S``. The Keras backend is KERAS_BACKEND
(TensorFlow when unset), or ``--backend``, which re-runs the script with KERAS_BACKEND set; off
TensorFlow the grammar draws only what the backend has and the SAM step (g) is skipped.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import pathlib
import sys
import time

TESTS = str(pathlib.Path(__file__).resolve().parents[1] / "tests")


def _init_worker() -> None:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    sys.path.insert(0, TESTS)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("landscape").setLevel(logging.ERROR)
    if os.environ["KERAS_BACKEND"] == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.get_logger().setLevel(logging.ERROR)
    elif os.environ["KERAS_BACKEND"] == "torch":
        import torch

        torch.set_num_threads(1)


def _run(seed: int) -> dict:
    import keras

    import conformance
    import model_grammar

    case = model_grammar.draw(seed, "long")
    try:
        res = conformance.run_case(case)
    except Exception as error:  # noqa: BLE001 (the harness itself broke: report, go on)
        return {"seed": seed, "line": case.describe(), "harness": repr(error)[:200]}
    finally:
        keras.backend.clear_session(free_memory=False)
    failures = [
        (f.check, f.kind, f.message, conformance.known_fault(case, f)) for f in res.failures
    ]
    return {
        "seed": seed,
        "line": case.describe(),
        "ran": sorted(set(res.ran)),
        "failures": failures,
        "invalid": res.invalid,
        "refusals": {"a": res.refusal, **res.refusals} if res.refusal else dict(res.refusals),
        "seconds": res.seconds,
        "hvp_error": res.hvp_error,
    }


def _report(results: list[dict], elapsed: float) -> None:
    tried = [r for r in results if not r.get("invalid") and "harness" not in r]
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    print(f"\nmodels tried: {len(results)} ({len(tried)} valid, {elapsed:.0f} s, {backend})")
    errors = [r["hvp_error"] for r in tried if r.get("hvp_error") is not None]
    if errors:
        print(f"(d) ‖Hv − reference‖/‖reference‖: max {max(errors):.3g} over {len(errors)} models")
    invalid = collections.Counter(r["invalid"].split(":")[0] for r in results if r.get("invalid"))
    print(f"Keras itself could not run: {sum(invalid.values())} {dict(invalid)}")
    for r in results:
        if "harness" in r:
            print(f"HARNESS ERROR seed {r['seed']}: {r['harness']}")
    refused = collections.defaultdict(list)
    for r in tried:
        for check, message in r.get("refusals", {}).items():
            refused[(check, message[:90])].append(r["seed"])
    print(f"one-sentence refusals (allowed outcomes, listed for review): {len(refused)} kinds")
    for (check, message), seeds in sorted(refused.items(), key=lambda kv: -len(kv[1])):
        print(f"    ({check}) {len(seeds)}x {message}... seeds {seeds[:8]}")
    for check in "abcdefgh":
        ran = [r for r in tried if check in r["ran"]]
        failed = [r for r in ran if any(f[0] == check for f in r["failures"])]
        print(f"  ({check}) passed {len(ran) - len(failed)}/{len(ran)}")
    groups = collections.defaultdict(list)
    for r in tried:
        for check, kind, message, known in r["failures"]:
            groups[(check, kind, known)].append((r["seed"], r["line"], message))
    for (check, kind, known), rows in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        tag = f"KNOWN {known}" if known else "NEW"
        print(
            f"\n[{tag}] ({check}) {kind}: {len(rows)} failures; "
            f"seeds {[s for s, _, _ in rows][:12]}"
        )
        for seed, line, message in rows[:3]:
            print(f"    seed {seed}: {line}\n        {message}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None)
    args = parser.parse_args(argv)
    if args.backend and args.backend != os.environ.get("KERAS_BACKEND", "tensorflow"):
        env = {**os.environ, "KERAS_BACKEND": args.backend}
        rest = sys.argv[1:] if argv is None else list(argv)
        os.execve(sys.executable, [sys.executable, __file__, *rest], env)
    seeds = range(args.seed, args.seed + args.models)
    start, results = time.perf_counter(), []
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.workers, initializer=_init_worker, maxtasksperchild=50) as pool:
        for r in pool.imap_unordered(_run, seeds):
            results.append(r)
            for check, kind, message, known in r.get("failures", []):
                tag = f"KNOWN {known}" if known else "NEW"
                print(f"  seed {r['seed']} [{tag}] ({check}) {kind}: {message}", flush=True)
            bad = sum(1 for x in results if x.get("failures"))
            if len(results) % 10 == 0 or len(results) == len(seeds):
                print(
                    f"{len(results)}/{len(seeds)} models, {bad} with failures, "
                    f"{time.perf_counter() - start:.0f} s",
                    flush=True,
                )
    _report(sorted(results, key=lambda r: r["seed"]), time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
