"""The figures of ``landscape figures``: every title and caption built from the summary's numbers.

``draw`` returns the captions beside the files, and ``summary.json`` stores them, so a test (or a
reader) can recompute each one from the statistics in the same file.
"""

from __future__ import annotations

import os
import textwrap

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from landscape import _summary
from landscape.plot import _fit_titles, fit_title, plot_comparison, plot_surface

OPTIMIZERS = ("sgd", "sam")
NAMES = {"sgd": "SGD", "sam": "SAM"}
FILES = {"sgd": "no_sam.png", "sam": "with_sam.png"}
# Quantities of sharpness.png, one panel each (those the summary has).
PANELS = ("test_acc", "memorized", "hessian_eigenvalue_1", "hessian_trace", "epsilon_sharpness",
          "worst_l2", "average_l2", "basin_area")  # fmt: skip
HEADLINE = ("test_acc", "hessian_eigenvalue_1", "hessian_trace", "basin_area")


def _wrap(text: str, width: int = 60) -> str:
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def model_title(summary: dict, name: str, seed: int) -> str:
    """Facts of one model (no comparison): λ₁, trace, training loss beside them, test accuracy
    and basin area."""
    run = summary["runs"][name][str(seed)]
    basin = summary["statistics"][name].get("basin_area")
    parts = [f"{NAMES[name]}, seed {seed}"]
    if "hessian_eigenvalue_1" in run:
        parts.append(f"λ₁ = {run['hessian_eigenvalue_1']:.3g}")
    if "hessian_trace" in run:
        parts.append(f"tr(H) = {run['hessian_trace']:.3g}")
    if "train_loss" in run:
        parts.append(f"training loss {run['train_loss']:.3g} nats")
    parts.append(f"test accuracy {run['test_acc'] * 100:.1f} %")
    text = ", ".join(parts)
    if basin is not None:
        rise = summary["config"]["basin_rise"]
        area = basin["values"][summary["seeds"].index(seed)]
        text += (
            f"\ntraining loss at most {rise:g} above the centre's on {area * 100:.0f} % of "
            "this plane"
        )
    return text


def headline(summary: dict, keys=HEADLINE) -> str:
    """The comparison sentences of ``keys`` (those measured), one per line, then the flatness
    sentence with the training loss beside it (when the summary has one)."""
    comparison = summary["comparison"]
    lines = [comparison[k]["sentence"] for k in keys if k in comparison]
    return "\n".join(lines + ([summary["flatness"]] if summary.get("flatness") else []))


def _save(fig, out_dir: str, name: str, written: list) -> None:
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    written.append(path)


def _range(surfaces: list) -> tuple[float, float]:
    both = np.concatenate([np.ravel(s.values["train_loss"]) for s in surfaces])
    finite = both[np.isfinite(both) & (both > 0)]
    return float(finite.min()), float(finite.max())


def _single_panels(surfaces: dict, summary: dict, out_dir: str, written: list) -> dict:
    first = summary["seeds"][0]
    lo, hi = _range([surfaces[first][n] for n in OPTIMIZERS])
    captions = {}
    for name in OPTIMIZERS:
        fig, ax = plt.subplots(figsize=(5.4, 5.0), layout="constrained")
        plot_surface(surfaces[first][name], kind="contour", log=True, vmin=lo, vmax=hi, ax=ax)
        title = model_title(summary, name, first)
        ax.set_aspect("equal")
        fit_title(ax, title, fontsize=9)
        _save(fig, out_dir, FILES[name], written)
        captions[FILES[name]] = title.replace("\n", "; ")
    return captions


def _comparison(surfaces: dict, summary: dict, out_dir: str, written: list) -> str:
    seeds = summary["seeds"]
    fig, axes = plt.subplots(len(seeds), 2, figsize=(9.0, 3.9 * len(seeds) + 1.2),
                             layout="constrained", squeeze=False)  # fmt: skip
    panels = [surfaces[s][n] for s in seeds for n in OPTIMIZERS]
    titles = [f"{NAMES[n]}, seed {s}" for s in seeds for n in OPTIMIZERS]
    plot_comparison(panels, titles=titles, kind="contourf", log=True, axes=axes.ravel())
    text = headline(summary)
    fig.suptitle(_wrap(text, 90), fontsize=9)
    _save(fig, out_dir, "comparison.png", written)
    return text.replace("\n", "; ")


def _sharpness(summary: dict, out_dir: str, written: list) -> str:
    keys = [k for k in PANELS if k in summary["comparison"]]
    cols = 4
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.4 * rows), layout="constrained",
                             squeeze=False)  # fmt: skip
    # The panels' titles are fitted together: one constrained layout of the figure per pass,
    # not two per panel (8 panels: 16 layouts of the whole figure, most of its drawing time).
    _fit_titles([_bars(ax, summary, key) for ax, key in zip(axes.ravel(), keys)])
    for ax in axes.ravel()[len(keys) :]:
        ax.set_visible(False)
    n = len(summary["seeds"])
    fig.suptitle(f"SGD and SAM: mean ± standard error over {n} seed{'s' * (n > 1)} "
                 "(dots: seeds; lines join the same seed)", fontsize=10)  # fmt: skip
    _save(fig, out_dir, "sharpness.png", written)
    return "; ".join(summary["comparison"][k]["sentence"] for k in keys)


def _bars(ax, summary: dict, key: str) -> tuple:
    """Two bars (mean ± stderr) with each seed's pair of values joined by a line; returns
    ``(ax, title Text, verdict)`` for ``_fit_titles``."""
    scale = 100.0 if _summary.KIND.get(key) == "accuracy" else 1.0
    stats = [summary["statistics"][n][key] for n in OPTIMIZERS]
    means = [s["mean"] * scale for s in stats]
    errors = [0.0 if s["stderr"] is None else s["stderr"] * scale for s in stats]
    ax.bar([0, 1], means, yerr=errors, capsize=5, color=["C0", "C1"], alpha=0.55)
    for sgd, sam_ in zip(stats[0]["values"], stats[1]["values"]):
        ax.plot([0, 1], [sgd * scale, sam_ * scale], "o-", color="0.3", ms=3, lw=0.8)
    ax.set_xticks([0, 1], [NAMES[n] for n in OPTIMIZERS])
    unit = (
        " (%)" if scale == 100.0 else f" ({_summary.UNITS[key]})" if key in _summary.UNITS else ""
    )
    ax.set_ylabel(_summary.WORDS.get(key, key) + unit, fontsize=8)
    verdict = summary["comparison"][key]["sentence"].split(": ", 1)[1]
    return ax, ax.set_title("", fontsize=7), verdict


def linear_barrier(surface) -> float | None:
    """max over α ∈ [0, 1] of the training loss minus the mean of its values at α = 0 and 1.

    The barrier height of mode-connectivity studies (Garipov et al. 2018, arXiv 1802.10026),
    read off the grid; None when α = 0 or α = 1 is not a grid point.
    """
    alpha = np.asarray(surface.x, dtype=np.float64)
    loss = np.asarray(surface.values["train_loss"], dtype=np.float64)
    ends = [np.flatnonzero(np.abs(alpha - a) < 1e-9) for a in (0.0, 1.0)]
    if any(e.size == 0 for e in ends):
        return None
    inside = (alpha >= -1e-9) & (alpha <= 1 + 1e-9)
    return float(loss[inside].max() - (loss[ends[0][0]] + loss[ends[1][0]]) / 2)


def _interpolation(surface, summary: dict, out_dir: str, written: list) -> str:
    fig, ax = plt.subplots(figsize=(6.0, 4.0), layout="constrained")
    # log scale: extrapolating BatchNorm statistics beyond either end can make the loss explode
    plot_surface(surface, kind="line", log=True, ax=ax)
    seed = summary["seeds"][0]
    title = f"seed {seed}: from the SGD weights (α = 0) to the SAM weights (α = 1)"
    barrier = linear_barrier(surface)
    if barrier is not None:
        title += f"\ntraining-loss barrier on the segment: {barrier:.3g}"
    fit_title(ax, title, fontsize=9)
    _save(fig, out_dir, "interpolation.png", written)
    return title.replace("\n", "; ")


def draw(surfaces: dict, summary: dict, out_dir: str) -> tuple[list[str], dict[str, str]]:
    """Write every PNG; returns the paths and ``{file name: caption}``.

    Args:
        surfaces: ``{seed: {"sgd": Surface, "sam": Surface}, "interpolation": Surface}``.
        summary: What ``landscape.figures.summarize`` returns, with ``runs`` added.
        out_dir: Where the PNGs go.
    """
    matplotlib.use("Agg")
    written: list[str] = []
    captions = _single_panels(surfaces, summary, out_dir, written)
    captions["comparison.png"] = _comparison(surfaces, summary, out_dir, written)
    captions["sharpness.png"] = _sharpness(summary, out_dir, written)
    captions["interpolation.png"] = _interpolation(
        surfaces["interpolation"], summary, out_dir, written
    )
    return written, captions
