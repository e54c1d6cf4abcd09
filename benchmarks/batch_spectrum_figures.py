"""The per-batch λ_max spectra of the SGD and SAM models of ``landscape figures``.

Loads ``FIGURES/config.json`` and ``FIGURES/seed_0/{sgd,sam}.keras`` (the ResNets ``landscape
figures`` trained), rebuilds seed 0's training data exactly as the pipeline does
(``landscape.figures.noisy_data``: the labels as trained, with their label noise), and on the
first ``--batches`` × ``--batch-size`` training samples computes ``landscape.batch_spectrum``
(certified top eigenvalue of each batch's Hessian) and the λ_max of the loss over those same
samples (``full=True`` on an Objective of exactly them). Prints each model's numbers, writes
them as JSON and draws both with ``plot_batch_spectrum``.

    .venv/bin/python benchmarks/batch_spectrum_figures.py --figures figures --batches 10 \\
        --batch-size 128 --out docs/guide/batch_spectrum.png --json batch_spectrum.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", default="figures", help="The figures folder.")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="batch_spectrum.png")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import keras

    import landscape
    from landscape.figures import FiguresConfig, noisy_data

    folder = pathlib.Path(args.figures).resolve()
    config = json.loads((folder / "config.json").read_text())
    data = pathlib.Path(config["data"])
    if not data.is_absolute() and not data.exists():  # relative to the repository root
        config["data"] = str((folder.parent / data).resolve())
    known = {f.name for f in dataclasses.fields(FiguresConfig)}
    config = FiguresConfig(**{k: v for k, v in config.items() if k in known})
    ((x, y), _), _, _ = noisy_data(config, 0)
    n = args.batches * args.batch_size
    x, y = x[:n], y[:n]
    results, report = [], {}
    for name in ("sgd", "sam"):
        model = keras.models.load_model(folder / "seed_0" / f"{name}.keras")
        objective = landscape.Objective(model, (x, y), batch_size=500)
        start = time.perf_counter()
        spec = landscape.batch_spectrum(
            objective, batches=args.batches, batch_size=args.batch_size, full=True, seed=args.seed
        )
        seconds = time.perf_counter() - start
        results.append(spec)
        report[name] = {**spec.as_dict(), "seconds": seconds, "loss": objective.evaluate()}
        s = spec.summary()
        print(f"{name}: λ_max per batch {spec.lambda_max.round(3).tolist()}")
        print(
            f"{name}: mean {s['mean']:.4g} std {s['std']:.3g} min {s['min']:.4g} max "
            f"{s['max']:.4g}; full {spec.full_lambda_max:.4g}; certified "
            f"{int(spec.converged.sum())}/{spec.converged.size} + {spec.full_converged}; "
            f"{int(spec.n_hvp.sum())} batch products; {seconds:.1f} s"
        )
    ax = landscape.plot_batch_spectrum(
        results,
        labels=["SGD", "SAM"],
        kind="violin",
        title=f"ResNet-8 on CIFAR-10 (40 % label noise): λ_max "
        f"of {args.batches} batches of {args.batch_size}",
    )
    ax.figure.savefig(args.out, dpi=150, bbox_inches="tight")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
