"""Sharpness of an SGD-trained and a SAM-trained model: one Markdown table from sharpness_report.

Trains the same small CNN on the embedded MNIST subset twice with the same seed (same initial
weights and batch order; only the optimizer differs), computes ``landscape.sharpness_report``
for both on the same training examples, and prints a table with one row per metric.

    .venv/bin/python benchmarks/sharpness_table.py [--epochs 8] [--n-train 1000] [--seed 0]
"""

from __future__ import annotations

import _common  # noqa: F401  (sets the TensorFlow environment first)

import argparse
import json
import time

import landscape
from landscape import sharpness
from landscape.train import train

LABELS = {
    "loss": "train loss",
    "acc": "train accuracy",
    "test_loss": "test loss",
    "test_acc": "test accuracy",
    "hessian_trace": "Hessian trace",
    "epsilon_sharpness": "ε-sharpness (%, ε={epsilon:g})",
}
# Lower is flatter for every row below the accuracies.
FLATNESS_ROWS_FROM = "hessian_eigenvalue_1"


def label(key: str, epsilon: float) -> str:
    if key in LABELS:
        return LABELS[key].format(epsilon=epsilon)
    if key.startswith("hessian_eigenvalue_"):
        return f"Hessian λ{key.rsplit('_', 1)[1]}"
    kind, norm, *rest = key.split("_")
    adaptive = " adaptive" if rest == ["adaptive"] else ""
    name = "worst-case" if kind == "worst" else "average (Gaussian)"
    return f"{name} {norm}{adaptive} (ρ={sharpness.REPORT_RHO[key]:g})"


def cell(report: dict[str, float], key: str) -> str:
    stderr = report.get(f"{key}_stderr")
    return f"{report[key]:.4g}" if stderr is None else f"{report[key]:.4g} ± {stderr:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n-train", type=int, default=1000, help="examples for the metrics")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=3, help="top Hessian eigenvalues")
    parser.add_argument("--epsilon", type=float, default=1e-3)
    parser.add_argument("--json", help="also write both reports to this JSON file")
    args = parser.parse_args()

    data = landscape.load_embedded()
    (x_train, y_train), test = data
    reports, seconds = {}, {}
    for optimizer in ("sgd", "sam"):
        result = train(
            data,
            model="cnn",
            optimizer=optimizer,
            epochs=args.epochs,
            learning_rate=0.05,
            seed=args.seed,
            model_kwargs={"filters": (8, 16)},
            verbose=0,
        )
        objective = landscape.Objective(
            result.model,
            (x_train[: args.n_train], y_train[: args.n_train]),
            batch_size=500,
            test_data=test,
        )
        start = time.perf_counter()
        reports[optimizer] = landscape.sharpness_report(
            objective, epsilon=args.epsilon, k=args.k, seed=args.seed, trace_tol=0.05
        )
        seconds[optimizer] = time.perf_counter() - start

    n_params = sum(int(v.numpy().size) for v in result.model.trainable_variables)
    print(
        f"CNN (filters 8, 16, BatchNorm; {n_params} trainable weights), embedded MNIST, "
        f"{args.epochs} epochs, seed {args.seed}, SGD(0.05, momentum 0.9) vs SAM(ρ=0.05) around "
        f"it; metrics on the first {args.n_train} training examples (test: 1000). "
        f"Report time: SGD {seconds['sgd']:.0f} s, SAM {seconds['sam']:.0f} s."
    )
    print()
    print("| metric | SGD | SAM |")
    print("| --- | ---: | ---: |")
    # Flags (bools) and the precision (a string) have no row: they are printed below the table.
    keys = list(reports["sgd"])
    notes = [k for k in keys if isinstance(reports["sgd"][k], bool | str)]
    for key in keys:
        if key.endswith("_stderr") or key in notes:
            continue  # stderr goes beside its value
        sgd, sam = cell(reports["sgd"], key), cell(reports["sam"], key)
        print(f"| {label(key, args.epsilon)} | {sgd} | {sam} |")
    flat = [k for k in keys[keys.index(FLATNESS_ROWS_FROM) :]
            if not k.endswith("_stderr") and k not in notes]  # fmt: skip
    flatter = sum(reports["sam"][k] < reports["sgd"][k] for k in flat)
    print()
    print(f"SAM is flatter (lower) on {flatter} of {len(flat)} sharpness rows.")
    for key in notes:
        print(f"{key}: SGD {reports['sgd'][key]}, SAM {reports['sam'][key]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=2)


if __name__ == "__main__":
    main()
