"""The train-then-plot experiment behind ``make demo``, ``landscape figures`` and the README.

The regime is the one where SAM's paper reports its largest gains: label noise (Foret et al. 2021,
arXiv 2010.01412, section 3.3). A fraction of the training labels is changed to another class
(``landscape.data.flip_labels``) and a ResNet is trained to the end of a cosine schedule with SGD
and with SAM, from the same seed, noisy labels, initial weights and batch order, for several seeds.
SGD fits many of the wrong labels; SAM fits fewer and generalizes better. Then, per seed and
optimizer: a 2D filter-normalized surface (a different random direction pair per seed), a
``sharpness_report``; for the first seed a 1D interpolation from the SGD to the SAM weights. Every
quantity is reported per seed and as mean ± standard error, SAM is compared with SGD by a paired
t-test over seeds (``landscape._summary``), and every title, caption and summary sentence that
compares the two is computed from those numbers.

Stages, each skipped when its output exists (rerunning resumes; ``config.json`` guards that the
output directory holds this configuration's files and nothing else):
1. ``seed_<s>/sgd.keras``, ``seed_<s>/sam.keras`` and ``training.json``;
2. ``seed_<s>/{sgd,sam}_surface.h5`` and ``seed_0/interpolation.h5``;
3. ``reports.json`` (``sharpness_report`` of every model);
4. ``no_sam.png``, ``with_sam.png``, ``comparison.png``, ``sharpness.png``, ``interpolation.png``,
   ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import keras
import numpy as np

import sam  # noqa: F401 (registers SAM and SAMModel, so that the saved models load)
from landscape import _figure_plots, _summary
from landscape._provenance import provenance
from landscape.data import flip_labels, load_dataset
from landscape.directions import interpolation_direction, random_direction
from landscape.objective import Objective
from landscape.sharpness import sharpness_report
from landscape.surface import Surface, compute_surface
from landscape.train import train

logger = logging.getLogger("landscape")

OPTIMIZERS = ("sgd", "sam")
DEFAULT_OUT_DIR = os.path.join("out", "figures")


@dataclasses.dataclass(frozen=True)
class FiguresConfig:
    """Everything that determines the figures; stored as ``config.json`` beside them.

    The defaults are ``make demo``'s experiment (about 10 minutes on 2 cores): ResNet-8, width 8,
    on 2,000 images of the embedded MNIST subset with 40 % of the labels wrong, 30 epochs, 3 seeds.
    SAM's ρ = 0.1 was chosen on this experiment: with ρ = 0.05 SAM fitted more of the wrong labels
    and gained less test accuracy over SGD (4.4 against 9.7 points, 3 seeds; see
    docs/guide/figures-experiment.md).
    Training runs to the end of the schedule, not to an early-stopping point (where Baek et al.,
    "Why is SAM robust to label noise?", ICLR 2024, find SAM's largest gains).
    """

    data: str = "embedded"
    depth: int = 8
    width: int = 8
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float | None = 5e-4
    rho: float = 0.1
    schedule: str = "cosine"
    augment: bool = False
    train_samples: int = 2000  # 0: all
    label_noise: float = 0.4  # fraction of training labels changed to another class
    seeds: int = 3  # seeds 0 .. seeds-1
    grid: str = "-0.5:0.5:17"
    basin_rise: float = 1.0  # basin = grid points within this loss of the centre (nats)
    interpolation: str = "-0.5:1.5:41"  # step 0.05: α = 0 and 1 are grid points
    surface_samples: int = 500  # training examples of surfaces, interpolation, reports (0: all)
    test_samples: int = 500  # test examples of the interpolation (0: all)
    # sharpness_report keyword arguments: 3 eigenvalues; the trace to 10 % relative standard
    # error or 30 Hutchinson probes; ε-sharpness; worst- and average-case ℓ2 sharpness.
    report: dict = dataclasses.field(
        default_factory=lambda: {
            "k": 3,
            "trace_tol": 0.1,
            "trace_samples": 30,
            "steps": 10,
            "samples": 10,
            "rho": {
                "worst_l2_adaptive": None,
                "worst_linf": None,
                "worst_linf_adaptive": None,
                "average_l2_adaptive": None,
            },
        }  # fmt: skip
    )

    def train_part(self) -> dict[str, Any]:
        keys = ("data", "depth", "width", "epochs", "batch_size", "learning_rate", "momentum",
                "weight_decay", "rho", "schedule", "augment", "train_samples",
                "label_noise")  # fmt: skip
        return {k: getattr(self, k) for k in keys}


QUICK = FiguresConfig(
    width=4,
    epochs=1,
    batch_size=64,
    train_samples=256,
    seeds=2,
    grid="-0.5:0.5:5",
    interpolation="-0.5:1.5:5",
    surface_samples=128,
    test_samples=64,
    report={
        "k": 2,
        "steps": 2,
        "samples": 2,
        "trace_tol": 0.5,
        "trace_samples": 4,
        "rho": FiguresConfig().report["rho"],
    },
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


def _provenance(config: FiguresConfig, objectives: dict | None = None, **extra) -> dict:
    """The provenance block of a JSON file of the experiment: its configuration and seeds, and
    with ``objectives`` every model's weights and every seed's data fingerprints."""
    fingerprints = {}
    if objectives is not None:
        models = {f"{name}_seed_{seed}": o.weights_fingerprint()
                  for seed, pair in objectives.items() for name, o in pair.items()}  # fmt: skip
        data = {f"seed_{seed}": next(iter(pair.values())).data_fingerprint()
                for seed, pair in objectives.items()}  # fmt: skip
        fingerprints = {"model_fingerprint": models, "data_fingerprint": data}
    return provenance(settings=dataclasses.asdict(config), seeds=list(range(config.seeds)),
                      **fingerprints, **extra)  # fmt: skip


def _write_text(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def claim_out_dir(out_dir: str, config: FiguresConfig) -> None:
    """Make ``out_dir`` this configuration's, or refuse before any work.

    An empty or missing directory is claimed by writing ``config.json``; one whose
    ``config.json`` equals ``config`` is resumed. Anything else is refused, so figures are never
    left half from one configuration and half from another.

    Raises:
        ValueError: ``out_dir`` is a file, holds files without ``config.json`` (not written by
            ``landscape figures``), or holds another configuration's figures (the sentence names
            the settings that differ).
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"Argument `out_dir` must be a directory; {out_dir!r} is a file.")
    path = os.path.join(out_dir, "config.json")
    wanted = json.loads(json.dumps(dataclasses.asdict(config)))
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        stored = _read_json(path)
        if stored is None:
            raise ValueError(
                f"Argument `out_dir`: {out_dir!r} already holds files that `landscape figures` "
                "did not write (no config.json); choose an empty or new directory."
            )
        if stored != wanted:
            changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
            diffs = ", ".join(f"{k} {stored.get(k)!r} → {wanted.get(k)!r}" for k in changed)
            raise ValueError(
                f"Argument `out_dir`: {out_dir!r} holds figures of another configuration "
                f"({diffs}); choose another directory, or delete it to start over."
            )
        return
    os.makedirs(out_dir, exist_ok=True)
    _write_json(path, wanted)


def _subset(arrays, n: int):
    return tuple(a[:n] for a in arrays) if n else tuple(arrays)


def noisy_data(config: FiguresConfig, seed: int):
    """``((x, y_noisy), (x_test, y_test)), y_true, flipped`` of one seed's training run."""
    (x, y), test = load_dataset(config.data, images=True)
    x, y = _subset((x, y), config.train_samples)
    y_noisy, flipped = flip_labels(y, config.label_noise, seed=10_000 + seed)
    return ((x, y_noisy), test), y, flipped


def _fit_metrics(model, x, y_true, y_noisy, flipped) -> dict[str, float]:
    """Accuracy on the true training labels and the fraction of flipped labels fitted.

    The model runs eagerly, batch by batch: ``model.predict`` traces a new ``tf.function`` for
    each model, and from the fifth of the figures' models on TensorFlow warned of retracing.
    """
    batches = (model(x[i : i + 512], training=False) for i in range(0, len(x), 512))
    predicted = np.concatenate([np.argmax(keras.ops.convert_to_numpy(p), axis=-1) for p in batches])
    metrics = {"train_acc_clean": float(np.mean(predicted == y_true.reshape(-1)))}
    if flipped.any():
        metrics["memorized"] = float(np.mean(predicted[flipped] == y_noisy.reshape(-1)[flipped]))
    return metrics


def _train_one(config: FiguresConfig, seed: int, name: str, data, verbose: int, callbacks=None):
    """Train one model; returns it and its metrics (full noisy training split, test split)."""
    result = train(
        data,
        model="resnet",
        optimizer=name,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        rho=config.rho,
        seed=seed,
        model_kwargs={"depth": config.depth, "width": config.width},
        augment=config.augment,
        schedule=config.schedule,
        callbacks=callbacks,
        verbose=2 if verbose else 0,
    )
    metrics = {"train_loss": result.train_loss, "train_acc": result.train_acc,
               "test_loss": result.test_loss, "test_acc": result.test_acc}  # fmt: skip
    return result.model, metrics


# A step of SAM takes two gradient passes where SGD's takes one; evaluating a surface point is
# a forward pass, about a third of a training step's forward and backward passes.
EPOCH_COST = {"sgd": 1.0, "sam": 2.0}
POINT_COST = 1 / 3


def _model_path(out_dir: str, seed: int, name: str) -> str:
    return os.path.join(out_dir, f"seed_{seed}", f"{name}.keras")


def to_train(config: FiguresConfig, out_dir: str) -> list[tuple[int, str]]:
    """``(seed, name)`` of the models ``train_models`` will train (not found in ``out_dir``)."""
    record = _read_json(os.path.join(out_dir, "training.json")) or {}
    return [(seed, name) for seed in range(config.seeds) for name in OPTIMIZERS
            if str(seed) not in record.get(name, {})
            or not os.path.isfile(_model_path(out_dir, seed, name))]  # fmt: skip


def plan(config: FiguresConfig, out_dir: str) -> list[str]:
    """The sentences of what ``make_figures`` will do in ``out_dir`` (what it holds is reused)."""
    from landscape.surface import parse_grid

    n_models = config.seeds * len(OPTIMIZERS)
    todo = len(to_train(config, out_dir))
    side, line = len(parse_grid(config.grid)), len(parse_grid(config.interpolation))
    examples = config.surface_samples or "all"
    reused = f" ({n_models - todo} found in {out_dir} and reused)" if todo < n_models else ""
    return [
        f"Plan: train {todo} of {n_models} ResNet-{config.depth} models{reused}: SGD and SAM "
        f"on {config.seeds} seed{'s' * (config.seeds > 1)}, {config.epochs} epoch"
        f"{'s' * (config.epochs > 1)} each on {config.train_samples or 'all'} examples;",
        f"  {n_models} 2D surfaces of {side} × {side} = {side * side} points and one SGD → SAM "
        f"interpolation of {line} points, on {examples} training examples;",
        f"  {n_models} sharpness reports (k = {config.report.get('k')}); then 5 figures, "
        "summary.json and summary.md.",
        "  A time estimate follows the first model's second epoch (its first, if it has one); "
        "each stage is estimated again from its first item.",
    ]


def training_estimate(
    epoch_seconds: float, measured: str, todo: list[str], config: FiguresConfig, n_train: int
) -> dict[str, float]:
    """Estimated seconds of training ``todo`` (optimizer names) and of the surfaces' points.

    From one measured epoch of a ``measured`` model: an epoch of SAM counted as two of SGD's
    (``EPOCH_COST``), a surface point as ``POINT_COST`` of a training pass over the same number
    of examples. The first epoch includes tracing, so the estimate errs on the long side.
    """
    from landscape.surface import parse_grid

    sgd_epoch = epoch_seconds / EPOCH_COST[measured]
    side, line = len(parse_grid(config.grid)), len(parse_grid(config.interpolation))
    points = config.seeds * len(OPTIMIZERS) * side * side + line
    share = min(config.surface_samples or n_train, n_train) / n_train  # examples per point
    return {
        "training": sgd_epoch * config.epochs * sum(EPOCH_COST[n] for n in todo),
        "surfaces": sgd_epoch * share * POINT_COST * points,
    }


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class _FirstEpochClock(keras.callbacks.Callback):
    """Logs the estimate once, after the epoch it times: the second (the first traces the
    model's functions, which later epochs reuse), or the first of a one-epoch run."""

    def __init__(self, measured: str, todo: list[str], config: FiguresConfig, n_train: int):
        super().__init__()
        self.measured, self.todo, self.config, self.n_train = measured, todo, config, n_train
        self.timed = min(1, config.epochs - 1)  # the epoch's index
        self.start: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.timed:
            self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if epoch != self.timed or self.start is None:
            return
        took = time.perf_counter() - self.start
        est = training_estimate(took, self.measured, self.todo, self.config, self.n_train)
        which = "the second epoch" if self.timed else "the first epoch, tracing included"
        logger.info(
            "Estimate from %s (%s of %s): training about %s, surfaces about %s; the sharpness "
            "reports are estimated after the first one.",
            which, _minutes(took), self.measured.upper(), _minutes(est["training"]),
            _minutes(est["surfaces"]),
        )  # fmt: skip


def _log_rest(stage: str, took: float, left: int) -> None:
    """The estimate of a stage's remaining items from its first measured one."""
    if left > 0:
        logger.info("The first %s took %s; the %d left should take about %s (estimate).",
                    stage, _minutes(took), left, _minutes(took * left))  # fmt: skip


def train_models(config: FiguresConfig, out_dir: str, *, verbose: int = 1) -> dict[str, Any]:
    """Stage 1: SGD and SAM models of every seed (reused when ``training.json`` has them).

    Returns:
        ``{"models": {seed: {name: model}}, "metrics": {name: {seed: {...}}}}``; metrics are
        ``train_loss``/``train_acc`` on the training labels as trained (noisy),
        ``train_acc_clean`` on the true labels, ``memorized`` (flipped labels fitted),
        ``test_loss``/``test_acc`` on the full test split, and ``seconds`` of training.
    """
    record_path = os.path.join(out_dir, "training.json")
    record = _read_json(record_path) or {}
    todo = to_train(config, out_dir)
    models: dict[int, dict] = {}
    for seed in range(config.seeds):
        data, y_true, flipped = noisy_data(config, seed)
        (x, y_noisy), _ = data
        os.makedirs(os.path.join(out_dir, f"seed_{seed}"), exist_ok=True)
        for name in OPTIMIZERS:
            path = _model_path(out_dir, seed, name)
            if (seed, name) not in todo:
                logger.info("reusing %s", path)
                models.setdefault(seed, {})[name] = keras.models.load_model(path)
                continue
            logger.info("training the ResNet with %s, seed %d", name.upper(), seed)
            clock = None
            if (seed, name) == todo[0]:  # the first model trained times its first epoch
                clock = [_FirstEpochClock(name, [n for _, n in todo], config, len(x))]
            start = time.perf_counter()
            model, metrics = _train_one(config, seed, name, data, verbose, clock)
            metrics["seconds"] = time.perf_counter() - start
            metrics.update(_fit_metrics(model, x, y_true, y_noisy, flipped))
            model.save(path)
            record.setdefault(name, {})[str(seed)] = metrics
            record["provenance"] = _provenance(config)
            _write_json(record_path, record)
            models.setdefault(seed, {})[name] = model
    metrics = {name: {int(s): m for s, m in record[name].items()} for name in OPTIMIZERS}
    return {"models": models, "metrics": metrics}


def _objective(model, config: FiguresConfig, seed: int, *, test: bool = False) -> Objective:
    """The objective of the analyses: the seed's training labels as trained (the loss SGD and
    SAM minimized); with ``test``, also the test split (drawn on the interpolation only: the 2D
    surfaces and the reports need the training loss, and a test split would double their cost).
    """
    ((x, y), test_split), _, _ = noisy_data(config, seed)
    train_part = _subset((x, y), config.surface_samples)
    test_data = _subset(test_split, config.test_samples) if test else None
    return Objective(model, train_part, batch_size=500, test_data=test_data)


def compute_surfaces(models: dict, objectives: dict, config: FiguresConfig, out_dir: str,
                     *, verbose: int = 1) -> dict:  # fmt: skip
    """Stage 2: one 2D surface per seed and optimizer, and seed 0's SGD→SAM interpolation.

    Seed s uses the filter-normalized direction pair drawn with seeds (100 s + 1, 100 s + 2)
    for both optimizers (biases and BN parameters not moved), so the planes differ across seeds.

    Returns:
        ``{seed: {"sgd": Surface, "sam": Surface}, "interpolation": Surface}``.
    """
    surfaces: dict[Any, Any] = {}
    jobs = [(seed, name) for seed in models for name in OPTIMIZERS]
    first: float | None = None
    for i, (seed, name) in enumerate(jobs):
        model = models[seed][name]
        dirs = [random_direction(model, norm="filter", ignore="biasbn", seed=100 * seed + j)
                for j in (1, 2)]  # fmt: skip
        path = _surface_path(out_dir, seed, name)
        fresh = not os.path.exists(path)
        logger.info("surface %d of %d: the %s model, seed %d → %s", i + 1, len(jobs) + 1,
                    name.upper(), seed, path)  # fmt: skip
        start = time.perf_counter()
        surfaces.setdefault(seed, {})[name] = compute_surface(
            objectives[seed][name], dirs, x=config.grid, y=config.grid, verbose=verbose,
            path=path,
        )  # fmt: skip
        if fresh and first is None:
            first = time.perf_counter() - start
            _log_rest("surface", first, sum(not os.path.exists(_surface_path(out_dir, s, n))
                                            for s, n in jobs[i + 1 :]))  # fmt: skip
    path = os.path.join(out_dir, "seed_0", "interpolation.h5")
    logger.info("surface %d of %d: SGD → SAM interpolation, seed 0 → %s", len(jobs) + 1,
                len(jobs) + 1, path)  # fmt: skip
    surfaces["interpolation"] = compute_surface(
        _objective(models[0]["sgd"], config, 0, test=True),
        [interpolation_direction(models[0]["sgd"], models[0]["sam"])],
        x=config.interpolation,
        path=path,
        verbose=verbose,
    )
    return surfaces


def _surface_path(out_dir: str, seed: int, name: str) -> str:
    return os.path.join(out_dir, f"seed_{seed}", f"{name}_surface.h5")


def sharpness_reports(objectives: dict, config: FiguresConfig, out_dir: str) -> dict:
    """Stage 3: ``sharpness_report`` of every model, ``{name: {seed: report}}`` (cached)."""
    path = os.path.join(out_dir, "reports.json")
    cached = _read_json(path) or {}
    reports = {name: {int(s): r for s, r in cached.get(name, {}).items()} for name in OPTIMIZERS}
    todo = [(seed, name) for seed in objectives for name in OPTIMIZERS
            if seed not in reports[name]]  # fmt: skip
    for i, (seed, name) in enumerate(todo):
        logger.info("sharpness report %d of %d: the %s model, seed %d", i + 1, len(todo),
                    name.upper(), seed)  # fmt: skip
        start = time.perf_counter()
        reports[name][seed] = sharpness_report(objectives[seed][name], **config.report)
        payload = {n: {str(s): r for s, r in reports[n].items()} for n in OPTIMIZERS}
        _write_json(path, {**payload, "provenance": _provenance(config, objectives)})
        if i == 0:
            _log_rest("sharpness report", time.perf_counter() - start, len(todo) - 1)
    return reports


def _centre_loss(surface: Surface) -> float:
    """The surface's loss at the origin of its plane (the trained weights)."""
    ix, iy = int(np.argmin(np.abs(surface.x))), int(np.argmin(np.abs(surface.y)))
    if abs(surface.x[ix]) > 1e-12 or abs(surface.y[iy]) > 1e-12:
        raise ValueError("The surface grid must contain the origin (0, 0) to measure its basin.")
    return float(surface.values["train_loss"][iy, ix])


def per_seed_values(metrics: dict, reports: dict, surfaces: dict, config: FiguresConfig) -> dict:
    """``{name: {quantity: [value per seed]}}`` for every quantity in ``_summary.QUANTITIES``."""
    seeds = sorted(metrics["sgd"])
    values: dict[str, dict[str, list]] = {}
    for name in OPTIMIZERS:
        rows = {}
        for key, _, _ in _summary.QUANTITIES:
            if key == "basin_area":
                surf = [surfaces[s][name] for s in seeds]
                rows[key] = [_summary.basin_area(su.values["train_loss"], _centre_loss(su),
                                                 config.basin_rise) for su in surf]  # fmt: skip
                continue
            source = [metrics[name][s] if key in metrics[name][s] else reports[name][s]
                      for s in seeds]  # fmt: skip
            if all(key in row for row in source):
                rows[key] = [float(row[key]) for row in source]
        values[name] = rows
    return values


def run_record(metrics: dict, report: dict) -> dict:
    """One model's numbers: training metrics on the full splits, then its sharpness report.

    The report's loss and accuracy, measured on the analysis subset (the first
    ``surface_samples`` training examples), are kept as ``analysis_loss`` and ``analysis_acc``
    beside the full-split ``train_*`` and ``test_*``.
    """
    renamed = {k: v for k, v in report.items() if k not in ("loss", "acc", "test_loss", "test_acc")}
    for key in ("loss", "acc", "test_loss", "test_acc"):
        if key in report:
            renamed[f"analysis_{key}"] = report[key]
    return {**renamed, **metrics}


CERTIFICATES = {
    "hessian_converged": "Hessian eigenvalues certified (Lanczos residual within tolerance)",
    "hessian_trace_converged": "Hessian trace within its standard-error tolerance",
}


def certificates(reports: dict) -> dict:
    """``{flag: {name: [bool per seed]}}`` for the reports' convergence flags (those present)."""
    out: dict[str, dict[str, list]] = {}
    for flag in CERTIFICATES:
        for name in OPTIMIZERS:
            rows = [reports[name][s] for s in sorted(reports[name])]
            if all(flag in row for row in rows):
                out.setdefault(flag, {})[name] = [bool(row[flag]) for row in rows]
    return out


def summarize(values: dict, config: FiguresConfig) -> dict:
    """Statistics per optimizer and the SAM-vs-SGD comparison (numbers and sentences)."""
    stats = {name: {key: _summary.seed_statistics(v) for key, v in rows.items()}
             for name, rows in values.items()}  # fmt: skip
    comparison = {}
    for key in values["sgd"]:
        if key in values["sam"]:
            c = _summary.paired_comparison(values["sgd"][key], values["sam"][key])
            c["sentence"] = _summary.comparison_sentence(key, c)
            comparison[key] = c
    out = {"config": dataclasses.asdict(config), "seeds": list(range(config.seeds)),
           "statistics": stats, "comparison": comparison}  # fmt: skip
    if "hessian_eigenvalue_1" in comparison and "train_loss" in comparison:
        out["flatness"] = _summary.flatness_sentence(
            comparison["hessian_eigenvalue_1"], comparison["train_loss"]
        )
    return out


def summary_markdown(summary: dict) -> str:
    """The table of docs/guide/figures-experiment.md: mean ± standard error per optimizer, and the
    comparison sentences."""
    c = summary["config"]
    lines = [
        f"ResNet-{c['depth']} (width {c['width']}) on {c['train_samples'] or 'all'} training "
        f"examples of `{c['data']}` with {c['label_noise']:.0%} of the labels changed to another "
        f"class; {c['epochs']} epochs of SGD (peak learning rate {c['learning_rate']}, "
        f"{c['schedule']}, momentum {c['momentum']}, weight decay {c['weight_decay']}) and SAM "
        f"(ρ = {c['rho']}) from the same {c['seeds']} seeds. Mean ± standard error over seeds; "
        "p from a paired t-test over seeds.",
        "",
        "| quantity | SGD | SAM | SAM vs SGD |",
        "| --- | ---: | ---: | --- |",
    ]
    for key, comparison in summary["comparison"].items():
        cells = [_mean_se(summary["statistics"][n][key], key) for n in OPTIMIZERS]
        verdict = comparison["sentence"].split(": ", 1)[1]
        lines.append(f"| {_quantity(key)} | {cells[0]} | {cells[1]} | {verdict} |")
    lines.append("")
    if summary.get("flatness"):
        lines += [summary["flatness"] + ".", ""]
    for flag, per_name in summary.get("certificates", {}).items():
        counts = ", ".join(f"{sum(v)} of {len(v)} {n.upper()}" for n, v in per_name.items())
        lines.append(f"{CERTIFICATES[flag]}: {counts} models.")
    lines += ["", *(f"- {file}: {text}" for file, text in summary.get("captions", {}).items())]
    return "\n".join(lines) + "\n"


def _quantity(key: str) -> str:
    """'ε-sharpness (% of 1 + L)': the quantity's words and its unit."""
    unit = "%" if _summary.KIND.get(key) == "accuracy" else _summary.UNITS.get(key)
    words = _summary.WORDS.get(key, key)
    return words if unit is None else f"{words} ({unit})"


def _mean_se(stat: dict, key: str) -> str:
    """'74.4 ± 0.8 %' for accuracies (percent, one decimal), '578 ± 25' for other values."""
    if _summary.KIND.get(key) == "accuracy":
        mean, se = stat["mean"] * 100, stat["stderr"]
        return f"{mean:.1f} %" if se is None else f"{mean:.1f} ± {se * 100:.1f} %"
    mean = f"{stat['mean']:.4g}"
    return mean if stat["stderr"] is None else f"{mean} ± {stat['stderr']:.2g}"


def make_figures(
    out_dir: str = DEFAULT_OUT_DIR, config: FiguresConfig | None = None, *, verbose: int = 1
) -> dict[str, Any]:
    """Run the whole experiment; returns the paths written and the summary.

    Args:
        out_dir: Folder for models, surfaces, figures and summaries: new, empty, or one this
            configuration wrote before (then finished stages are reused). Defaults to
            ``"out/figures"``.
        config: A ``FiguresConfig``; ``QUICK`` is the tiny preset the tests use.
            Defaults to ``FiguresConfig()`` (the ``make demo`` experiment).
        verbose: 0 silent, 1 progress. Defaults to 1.

    Returns:
        ``{"written": [paths], "summary": summary}`` (the summary as in ``summary.json``).

    Raises:
        ValueError: ``out_dir`` holds other files or another configuration's figures (before
            anything is trained), or a configuration that cannot run (a grid without the
            origin, a label-noise fraction outside [0, 1], fewer than one seed).
    """
    config = config or FiguresConfig()
    _check_config(config)
    claim_out_dir(out_dir, config)
    for line in plan(config, out_dir):
        logger.info(line)
    trained = train_models(config, out_dir, verbose=verbose)
    # One Objective per model serves its surface and its report: traced once per model.
    objectives = {seed: {name: _objective(m, config, seed) for name, m in pair.items()}
                  for seed, pair in trained["models"].items()}  # fmt: skip
    surfaces = compute_surfaces(trained["models"], objectives, config, out_dir, verbose=verbose)
    reports = sharpness_reports(objectives, config, out_dir)
    values = per_seed_values(trained["metrics"], reports, surfaces, config)
    summary = summarize(values, config)
    metrics = trained["metrics"]
    summary["runs"] = {name: {str(s): run_record(metrics[name][s], reports[name][s])
                              for s in metrics[name]} for name in OPTIMIZERS}  # fmt: skip
    summary["certificates"] = certificates(reports)
    written, summary["captions"] = _figure_plots.draw(surfaces, summary, out_dir)
    flags = {f"{flag}_{name}_seed_{seed}": ok for flag, by_name in summary["certificates"].items()
             for name, per_seed in by_name.items() for seed, ok in enumerate(per_seed)}  # fmt: skip
    summary["provenance"] = _provenance(config, objectives, converged=flags)
    _write_json(os.path.join(out_dir, "summary.json"), summary)
    _write_text(os.path.join(out_dir, "summary.md"), summary_markdown(summary))
    written += [os.path.join(out_dir, "summary.json"), os.path.join(out_dir, "summary.md")]
    return {"written": written, "summary": summary}


def _check_config(config: FiguresConfig) -> None:
    """Refuse, before any work, a configuration the experiment cannot run."""
    from landscape import _checks
    from landscape.surface import parse_grid

    _checks.integer("seeds", config.seeds, 1)
    _checks.proportion("label_noise", config.label_noise)
    _checks.positive("basin_rise", config.basin_rise)
    grid = parse_grid(config.grid, name="grid")
    if not np.any(np.abs(grid) < 1e-12):
        raise ValueError(
            "Argument `grid` must contain 0 (the trained weights), so that each basin is "
            f"measured from its centre. Received: grid={config.grid!r}."
        )
