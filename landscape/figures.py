"""The train-then-plot pipeline behind ``landscape figures`` and the README's figures.

Stages, each skipped when its output already exists and matches (so an interrupted run resumes):
1. train the same ResNet with SGD and with SAM (same seed, data order and hyperparameters);
2. a 2D filter-normalized surface around each minimum, on one grid;
3. a 1D interpolation from the SGD minimum to the SAM minimum;
4. ``sharpness_report`` for both models;
5. the figures: ``no_sam.png``, ``with_sam.png``, ``comparison.png``, ``interpolation.png``,
   and ``summary.json`` / ``summary.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import keras
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

import sam  # noqa: F401 (registers SAM and SAMModel, so that the saved models load)
from landscape.data import load_dataset
from landscape.directions import interpolation_direction, random_direction
from landscape.objective import Objective
from landscape.plot import plot_comparison, plot_surface
from landscape.sharpness import sharpness_report
from landscape.surface import compute_surface
from landscape.train import train

logger = logging.getLogger("landscape")

SGD_TITLE = "a sharp minimum to which a ResNet trained with SGD converged"
SAM_TITLE = "a wide minimum to which the same ResNet trained with SAM converged"


@dataclasses.dataclass(frozen=True)
class FiguresConfig:
    """Everything that determines the figures; stored beside them and checked on resume."""

    data: str = "embedded"
    depth: int = 8
    width: int = 8
    epochs: int = 6
    batch_size: int = 128
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float | None = 5e-4
    rho: float = 0.05
    schedule: str = "cosine"
    augment: bool = False
    train_samples: int = 0  # 0: all
    seed: int = 0
    grid: str = "-1:1:15"
    interpolation: str = "-0.5:1.5:31"
    surface_samples: int = 1000
    test_samples: int = 500
    # sharpness_report keyword arguments: 3 eigenvalues; the trace to 10 % relative standard
    # error or 30 Hutchinson probes, whichever comes first (its stderr is in the table)
    report: dict = dataclasses.field(
        default_factory=lambda: {"k": 3, "trace_tol": 0.1, "trace_samples": 30}
    )

    def train_part(self) -> dict[str, Any]:
        keys = ("data", "depth", "width", "epochs", "batch_size", "learning_rate", "momentum",
                "weight_decay", "rho", "schedule", "augment", "train_samples", "seed")  # fmt: skip
        return {k: getattr(self, k) for k in keys}


QUICK = FiguresConfig(
    depth=8,
    width=4,
    epochs=1,
    batch_size=64,
    train_samples=256,
    grid="-1:1:3",
    interpolation="-0.5:1.5:3",
    surface_samples=128,
    test_samples=64,
    report={"k": 1, "steps": 2, "samples": 2, "trace_tol": 0.5},
)


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)  # never a half-written file


def train_models(config: FiguresConfig, out_dir: str, *, verbose: int = 1) -> dict[str, Any]:
    """Stage 1: ``sgd.keras`` and ``sam.keras`` in ``out_dir`` (reused if trained with ``config``).

    Returns ``{"sgd": model, "sam": model, "metrics": {...}}``.
    """
    os.makedirs(out_dir, exist_ok=True)
    record_path = os.path.join(out_dir, "training.json")
    record = _read_json(record_path) or {}
    (x, y), test = load_dataset(config.data, images=True)
    if config.train_samples:
        x, y = x[: config.train_samples], y[: config.train_samples]
    out: dict[str, Any] = {"metrics": {}}
    for name in ("sgd", "sam"):
        path = os.path.join(out_dir, f"{name}.keras")
        entry = record.get(name)
        if entry and entry.get("config") == config.train_part() and os.path.isfile(path):
            logger.info("reusing %s (trained with the same configuration)", path)
            out[name] = keras.models.load_model(path)
            out["metrics"][name] = entry["metrics"]
            continue
        logger.info("training the ResNet with %s", name.upper())
        result = train(
            ((x, y), test),
            model="resnet",
            optimizer=name,
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            rho=config.rho,
            seed=config.seed,
            model_kwargs={"depth": config.depth, "width": config.width},
            augment=config.augment,
            schedule=config.schedule,
            verbose=2 if verbose else 0,
        )
        result.model.save(path)
        metrics = {
            "train_loss": result.train_loss,
            "train_acc": result.train_acc,
            "test_loss": result.test_loss,
            "test_acc": result.test_acc,
        }
        record[name] = {"config": config.train_part(), "metrics": metrics}
        _write_json(record_path, record)
        out[name], out["metrics"][name] = result.model, metrics
    return out


def _objective(model, config: FiguresConfig):
    (x, y), (xt, yt) = load_dataset(config.data, images=True)
    n, m = config.surface_samples, config.test_samples
    return Objective(model, (x[:n], y[:n]), batch_size=500, test_data=(xt[:m], yt[:m]))


def compute_surfaces(
    models: dict, objectives: dict, config: FiguresConfig, out_dir: str, *, verbose: int = 1
):
    """Stages 2-3: the two 2D surfaces and the SGD→SAM interpolation (resumable h5 files)."""
    surfaces = {}
    for name in ("sgd", "sam"):
        model = models[name]
        dirs = [
            random_direction(model, norm="filter", ignore="biasbn", seed=config.seed + i)
            for i in (1, 2)
        ]
        surfaces[name] = compute_surface(
            objectives[name],
            dirs,
            x=config.grid,
            y=config.grid,
            path=os.path.join(out_dir, f"{name}_surface.h5"),
            verbose=verbose,
        )
    surfaces["interpolation"] = compute_surface(
        objectives["sgd"],
        [interpolation_direction(models["sgd"], models["sam"])],
        x=config.interpolation,
        path=os.path.join(out_dir, "interpolation.h5"),
        verbose=verbose,
    )
    return surfaces


def sharpness_reports(objectives: dict, config: FiguresConfig, out_dir: str) -> dict[str, dict]:
    """Stage 4: ``sharpness_report`` of both models (cached in ``reports.json``)."""
    path = os.path.join(out_dir, "reports.json")
    cached = _read_json(path) or {}
    key = json.dumps({**config.train_part(), "surface_samples": config.surface_samples,
                      "test_samples": config.test_samples, "report": config.report},
                     sort_keys=True)  # fmt: skip
    reports = cached.get("reports") if cached.get("key") == key else None
    if reports is None:
        reports = {}
        for name in ("sgd", "sam"):
            logger.info("sharpness report of the %s model", name.upper())
            reports[name] = sharpness_report(objectives[name], **config.report)
        _write_json(path, {"key": key, "reports": reports})
    return reports


def _flat(report: dict, prefix: str = "") -> dict[str, Any]:
    rows = {}
    for k, v in report.items():
        if isinstance(v, dict):
            rows.update(_flat(v, f"{prefix}{k}."))
        else:
            rows[f"{prefix}{k}"] = v
    return rows


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        return ", ".join(_cell(x) for x in v)
    return str(v)


def summary_markdown(metrics: dict, reports: dict, config: FiguresConfig) -> str:
    """The README table: accuracies and both sharpness reports, SGD beside SAM."""
    lines = [
        f"ResNet-{config.depth} (width {config.width}) on `{config.data}`, {config.epochs} epochs, "
        f"SGD lr {config.learning_rate} ({config.schedule}), momentum {config.momentum}, "
        f"weight decay {config.weight_decay}; SAM rho {config.rho}. Sharpness on the first "
        f"{config.surface_samples} training images.",
        "",
        "| quantity | SGD | SAM |",
        "| --- | --- | --- |",
    ]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        lines.append(f"| {key} (full split) | {_cell(metrics['sgd'][key])} | "
                     f"{_cell(metrics['sam'][key])} |")  # fmt: skip
    sgd, sam_ = _flat(reports["sgd"]), _flat(reports["sam"])
    for key in sgd:
        lines.append(f"| {key} | {_cell(sgd[key])} | {_cell(sam_.get(key))} |")
    return "\n".join(lines) + "\n"


def draw(surfaces: dict, out_dir: str) -> list[str]:
    """Stage 5: the PNG figures."""
    matplotlib.use("Agg")
    written = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=130, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    both = [surfaces["sgd"]["train_loss"], surfaces["sam"]["train_loss"]]
    finite = np.concatenate([b[np.isfinite(b)] for b in both])
    vmin, vmax = float(finite.min()), float(finite.max())
    for name, title, file in (("sgd", SGD_TITLE, "no_sam.png"), ("sam", SAM_TITLE, "with_sam.png")):
        ax = plot_surface(surfaces[name], kind="contour", log=True, vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        save(ax.figure, file)
    axes = plot_comparison(
        [surfaces["sgd"], surfaces["sam"]], titles=["SGD", "SAM"], kind="contourf", log=True
    )
    save(axes[0].figure, "comparison.png")
    # log scale: extrapolating BatchNorm statistics beyond either end can make the loss explode
    ax = plot_surface(surfaces["interpolation"], kind="line", log=True)
    ax.set_title("from the SGD minimum (α = 0) to the SAM minimum (α = 1)", fontsize=9)
    save(ax.figure, "interpolation.png")
    return written


def make_figures(
    out_dir: str = "figures", config: FiguresConfig | None = None, *, verbose: int = 1
) -> dict[str, Any]:
    """Run the whole pipeline; returns the paths written and the summary.

    Args:
        out_dir: Folder for models, surfaces, figures and summaries. Defaults to "figures".
        config: A ``FiguresConfig``; ``QUICK`` is the tiny preset the tests use.
            Defaults to ``FiguresConfig()`` (embedded data, a few minutes on 2 cores).
        verbose: 0 silent, 1 progress. Defaults to 1.
    """
    config = config or FiguresConfig()
    os.makedirs(out_dir, exist_ok=True)
    trained = train_models(config, out_dir, verbose=verbose)
    # One Objective per model serves its surfaces and its report: each compiled function is
    # traced once per model.
    objectives = {name: _objective(trained[name], config) for name in ("sgd", "sam")}
    surfaces = compute_surfaces(trained, objectives, config, out_dir, verbose=verbose)
    reports = sharpness_reports(objectives, config, out_dir)
    written = draw(surfaces, out_dir)
    summary = {"config": dataclasses.asdict(config), "metrics": trained["metrics"],
               "reports": reports}  # fmt: skip
    _write_json(os.path.join(out_dir, "summary.json"), summary)
    md = os.path.join(out_dir, "summary.md")
    with open(md + ".tmp", "w") as f:
        f.write(summary_markdown(trained["metrics"], reports, config))
    os.replace(md + ".tmp", md)
    written += [os.path.join(out_dir, "summary.json"), md]
    return {"written": written, "summary": summary}
