"""Figures: loss surfaces (contour, filled contour, heat map, 3D, 1D lines), SGD-vs-SAM
comparisons, PCA trajectories and Hessian spectral densities.

Axes-level functions in the matplotlib/seaborn manner: each takes ``ax=None`` (makes a figure),
passes extra keyword arguments on to matplotlib, returns the ``Axes`` and never shows or saves.
Points not computed yet (NaN) are drawn as gaps, never as zeros.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from landscape._checks import Kind, choice, options
from landscape.surface import Surface

KINDS = options(Kind)
DEFAULT_LEVELS = 15
CMAP = "viridis"


def as_surface(surface_or_path: Surface | str | os.PathLike) -> Surface:
    """A ``Surface`` as is, or one loaded from an HDF5 path (ours or loss-landscape's)."""
    if isinstance(surface_or_path, Surface):
        return surface_or_path
    if isinstance(surface_or_path, str | os.PathLike):
        return Surface.load(os.fspath(surface_or_path))
    raise ValueError(
        "Argument `surface_or_path` must be a Surface or the path of a surface file. "
        f"Received: {surface_or_path!r}."
    )


def _metric(surface: Surface, metric: str) -> np.ndarray:
    if metric not in surface.values:
        raise ValueError(f"Unknown metric {metric!r}; this surface has {tuple(surface.values)}.")
    return np.asarray(surface.values[metric], dtype=np.float64)


def _value_range(arrays: Sequence[np.ndarray], log: bool, vmin, vmax) -> tuple[float, float]:
    """(vmin, vmax) over the finite (and, on a log scale, positive) values of all arrays."""
    finite = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    if log:
        finite = finite[finite > 0]
    if finite.size == 0:
        raise ValueError(
            "Nothing to draw: the surface has no computed"
            + (" positive values (log=True)." if log else " values.")
        )
    lo = float(finite.min()) if vmin is None else float(vmin)
    hi = float(finite.max()) if vmax is None else float(vmax)
    if hi <= lo:  # a flat surface: widen a little so that levels exist
        pad = abs(lo) * 1e-3 or 1e-3
        lo, hi = (lo / 2, lo * 2) if log else (lo - pad, hi + pad)
    return lo, hi


def _levels(levels, lo: float, hi: float, log: bool) -> np.ndarray:
    if levels is not None and not isinstance(levels, int | np.integer):
        return np.asarray(levels, dtype=np.float64)
    n = DEFAULT_LEVELS if levels is None else int(levels)
    if n < 2:
        raise ValueError(f"Argument `levels` needs at least 2 levels. Received: levels={levels}.")
    return np.geomspace(lo, hi, n) if log else np.linspace(lo, hi, n)


def _norm(lo: float, hi: float, log: bool) -> mcolors.Normalize:
    return mcolors.LogNorm(lo, hi) if log else mcolors.Normalize(lo, hi)


def _masked(z: np.ndarray, log: bool) -> np.ma.MaskedArray:
    bad = ~np.isfinite(z) | ((z <= 0) if log else False)
    return np.ma.masked_array(z, mask=bad)


def _label(metric: str) -> str:
    split, _, name = metric.partition("_")
    name = {"loss": "loss", "acc": "accuracy"}.get(name, name)
    return f"{split} {name}" if name else metric


def _new_axes(ax: Axes | None, three_d: bool = False) -> Axes:
    if ax is not None:
        if three_d and getattr(ax, "name", "") != "3d":
            raise ValueError("kind='surface' needs an Axes made with projection='3d'.")
        return ax
    fig = plt.figure(figsize=(5.5, 4.5))
    return fig.add_subplot(projection="3d" if three_d else None)


def _check_kind(kind: str, surface: Surface) -> str:
    choice("kind", kind, Kind)
    if surface.ndim == 1 and kind != "line":
        raise ValueError(f"A 1D surface is drawn with kind='line'. Received: kind={kind!r}.")
    if surface.ndim == 2 and kind == "line":
        raise ValueError("kind='line' draws 1D surfaces; this surface is 2D.")
    return kind


def _plot_line(surface: Surface, ax: Axes, log: bool, **kwargs) -> Axes:
    """Loss on the left axis, accuracy on a twin right axis; train solid, test dashed."""
    styles = {"train": "-", "test": "--"}
    loss_keys = [k for k in surface.values if k.endswith("_loss")]
    acc_keys = [k for k in surface.values if k.endswith("_acc")]
    if not loss_keys and not acc_keys:
        raise ValueError(f"Nothing to draw: the surface has {tuple(surface.values)}.")
    for key in loss_keys:
        split = key.split("_")[0]
        ax.plot(surface.x, surface.values[key], styles.get(split, "-"), color="C0",
                label=_label(key), **kwargs)  # fmt: skip
    ax.set_xlabel("α")
    ax.set_ylabel("loss", color="C0")
    if log:
        ax.set_yscale("log")
    handles, labels = ax.get_legend_handles_labels()
    if acc_keys:
        twin = ax.twinx()
        for key in acc_keys:
            split = key.split("_")[0]
            twin.plot(surface.x, surface.values[key], styles.get(split, "-"), color="C1",
                      label=_label(key), **kwargs)  # fmt: skip
        twin.set_ylabel("accuracy", color="C1")
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize="small")
    return ax


def plot_surface(
    surface_or_path: Surface | str | os.PathLike,
    *,
    metric: str = "train_loss",
    kind: Kind = "contour",
    ax: Axes | None = None,
    log: bool = False,
    levels: int | Sequence[float] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
    **kwargs,
) -> Axes:
    """Draw one metric of a loss surface.

    Args:
        surface_or_path: A ``Surface`` or the path of a surface file (ours or loss-landscape's).
        metric: ``"train_loss"``, ``"train_acc"``, ``"test_loss"`` or ``"test_acc"``. Ignored by
            ``kind="line"``, which draws every loss and accuracy. Defaults to "train_loss".
        kind: ``"contour"`` (labelled levels), ``"contourf"``, ``"heatmap"``, ``"surface"``
            (3D) for 2D surfaces; ``"line"`` for 1D ones (loss and accuracy on twin axes).
            Defaults to "contour".
        ax: Axes to draw on (for ``"surface"`` made with ``projection="3d"``); None makes a
            figure. Defaults to None.
        log: Logarithmic colour scale (levels spaced geometrically; values ≤ 0 left out), or a
            log y-axis for lines. Defaults to False.
        levels: Number of levels or their values. Defaults to 15.
        vmin: Lower end of the colour scale. Defaults to the smallest computed value.
        vmax: Upper end of the colour scale. Defaults to the largest computed value.
        colorbar: Add a colour bar (not for ``"contour"`` and ``"line"``). Defaults to True.
        **kwargs: Passed on to the matplotlib call (``contour``, ``contourf``, ``pcolormesh``,
            ``plot_surface`` or ``plot``).

    Returns:
        The ``Axes`` drawn on.

    Example:
        >>> ax = landscape.plot_surface("surf.h5", kind="contour", log=True)
        >>> ax.figure.savefig("surface.png")
    """
    surface = as_surface(surface_or_path)
    kind = _check_kind(kind, surface)
    if kind == "line":
        return _plot_line(surface, _new_axes(ax), log, **kwargs)
    z = _metric(surface, metric)
    lo, hi = _value_range([z], log, vmin, vmax)
    ax = _new_axes(ax, three_d=kind == "surface")
    xx, yy = np.meshgrid(surface.x, surface.y)  # "xy" indexing: Z is [iy, ix]
    norm = _norm(lo, hi, log)
    zm = _masked(z, log)
    mappable, ticks = None, None
    if kind == "contour":
        kwargs.setdefault("cmap", CMAP)
        cs = ax.contour(xx, yy, zm, levels=_levels(levels, lo, hi, log), norm=norm, **kwargs)
        ax.clabel(cs, inline=True, fontsize=7, fmt="%.3g")
    elif kind == "contourf":
        kwargs.setdefault("cmap", CMAP)
        filled = _levels(levels, lo, hi, log)
        mappable = ax.contourf(xx, yy, zm, levels=filled, norm=norm, extend="both", **kwargs)
        ticks = filled[:: max(1, len(filled) // 6)]
    elif kind == "heatmap":
        kwargs.setdefault("cmap", CMAP)
        mappable = ax.pcolormesh(xx, yy, zm, norm=norm, shading="nearest", **kwargs)
    else:  # 3D
        kwargs.setdefault("cmap", CMAP)
        # NaN (not computed) points are left out of the mesh; the colour scale is set explicitly so
        # that it never comes from NaNs (loss-landscape's 3D plot renders blank for that reason).
        z3 = np.where(zm.mask, np.nan, np.log10(z) if log else z)
        norm3 = mcolors.Normalize(np.log10(lo), np.log10(hi)) if log else norm
        mappable = ax.plot_surface(xx, yy, z3, norm=norm3, linewidth=0, antialiased=True, **kwargs)
        ax.set_zlim(norm3.vmin, norm3.vmax)
        ax.set_zlabel(("log10 " if log else "") + _label(metric))
    if mappable is not None and colorbar:
        bar = ax.figure.colorbar(mappable, ax=ax, shrink=0.8, ticks=ticks, format="%.3g")
        bar.set_label(_label(metric))
    ax.set_xlabel("α")
    ax.set_ylabel("β")
    ax.set_title(_label(metric))
    return ax


def plot_comparison(
    surfaces: Sequence[Surface | str | os.PathLike],
    *,
    titles: Sequence[str] | None = None,
    metric: str = "train_loss",
    kind: Kind = "contour",
    log: bool = False,
    levels: int | Sequence[float] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    axes: Sequence[Axes] | None = None,
    **kwargs,
) -> np.ndarray:
    """Draw surfaces side by side on one shared colour/level scale and equal axes.

    The figure of the README: SGD's sharp minimum beside SAM's wide one. Levels and colour limits
    are computed over all surfaces together, so the same colour means the same loss everywhere.

    Args:
        surfaces: Surfaces or paths, all 1D or all 2D.
        titles: One title per surface. Defaults to the file names, or "surface i".
        metric: The metric drawn (2D). Defaults to "train_loss".
        kind: As in ``plot_surface``. Defaults to "contour".
        log: Logarithmic scale. Defaults to False.
        levels: Number of levels or their values, shared by all panels. Defaults to 15.
        vmin: Lower end of the shared scale. Defaults to the smallest value of all surfaces.
        vmax: Upper end of the shared scale. Defaults to the largest value of all surfaces.
        axes: One Axes per surface; None makes a row of panels. Defaults to None.
        **kwargs: Passed on to ``plot_surface``.

    Returns:
        The array of ``Axes``.
    """
    loaded = [as_surface(s) for s in surfaces]
    if not loaded:
        raise ValueError("Argument `surfaces` must contain at least one surface.")
    if len({s.ndim for s in loaded}) != 1:
        raise ValueError("Argument `surfaces` mixes 1D and 2D surfaces.")
    if titles is None:
        titles = [
            os.path.basename(s.path) if s.path else f"surface {i + 1}" for i, s in enumerate(loaded)
        ]
    if len(titles) != len(loaded):
        raise ValueError(f"Got {len(titles)} titles for {len(loaded)} surfaces.")
    if axes is None:
        three_d = kind == "surface"
        fig = plt.figure(figsize=(5.2 * len(loaded), 4.4), layout="constrained")
        axes = [
            fig.add_subplot(1, len(loaded), i + 1, projection="3d" if three_d else None)
            for i in range(len(loaded))
        ]
    axes = np.asarray(axes, dtype=object).ravel()
    if len(axes) != len(loaded):
        raise ValueError(f"Got {len(axes)} axes for {len(loaded)} surfaces.")
    if loaded[0].ndim == 2:
        lo, hi = _value_range([_metric(s, metric) for s in loaded], log, vmin, vmax)
        shared = _levels(levels, lo, hi, log) if kind in ("contour", "contourf") else levels
        for s, ax, title in zip(loaded, axes, titles):
            plot_surface(s, metric=metric, kind=kind, ax=ax, log=log, levels=shared,
                         vmin=lo, vmax=hi, **kwargs)  # fmt: skip
            ax.set_title(title)
        xs = [v for s in loaded for v in (s.x.min(), s.x.max())]
        ys = [v for s in loaded for v in (s.y.min(), s.y.max())]
        for ax in axes:
            ax.set_xlim(min(xs), max(xs))
            ax.set_ylim(min(ys), max(ys))
            if kind != "surface":
                ax.set_aspect("equal", adjustable="box")
    else:
        for s, ax, title in zip(loaded, axes, titles):
            plot_surface(s, kind="line", ax=ax, log=log, **kwargs)
            ax.set_title(title)
        lows, highs = zip(*(ax.get_ylim() for ax in axes))
        for ax in axes:
            ax.set_ylim(min(lows), max(highs))
    return axes


def plot_trajectory(
    pca,
    surface: Surface | str | os.PathLike | None = None,
    *,
    metric: str = "train_loss",
    ax: Axes | None = None,
    log: bool = False,
    levels: int | Sequence[float] | None = None,
    **kwargs,
) -> Axes:
    """The optimization path in the plane of the top-2 PCA directions, over a contour.

    Args:
        pca: A ``PCAResult`` from ``landscape.pca_directions`` (its ``coordinates`` are drawn).
        surface: A surface computed along ``pca.directions`` (drawn as a contour), or None.
        metric: Metric of the contour. Defaults to "train_loss".
        ax: Axes to draw on; None makes a figure. Defaults to None.
        log: Logarithmic contour levels. Defaults to False.
        levels: Contour levels. Defaults to 15.
        **kwargs: Passed on to the path's ``ax.plot``.

    Returns:
        The ``Axes``.
    """
    coords = np.asarray(pca.coordinates, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"`pca.coordinates` must be (n, 2). Received shape {coords.shape}.")
    ax = _new_axes(ax)
    if surface is not None:
        plot_surface(surface, metric=metric, kind="contour", ax=ax, log=log, levels=levels)
    kwargs.setdefault("color", "C3")
    kwargs.setdefault("marker", "o")
    kwargs.setdefault("markersize", 3)
    ax.plot(coords[:, 0], coords[:, 1], label="trajectory", **kwargs)
    ax.plot([0.0], [0.0], marker="*", color="k", markersize=10, linestyle="none", label="final")
    ratio = np.asarray(pca.explained_variance_ratio, dtype=np.float64)
    ax.set_xlabel(f"1st PCA direction ({100 * ratio[0]:.1f} %)")
    ax.set_ylabel(f"2nd PCA direction ({100 * ratio[1]:.1f} %)")
    ax.legend(loc="best", fontsize="small")
    return ax


def plot_spectrum(
    result,
    *,
    ax: Axes | None = None,
    grid: np.ndarray | int | None = None,
    sigma: float | None = None,
    log: bool = True,
    floor: float = 1e-12,
    **kwargs,
) -> Axes:
    """Hessian eigenvalue density from stochastic Lanczos quadrature, on a log-density axis.

    Args:
        result: The result of ``landscape.hessian_spectrum`` (``nodes``, ``weights``,
            ``density(grid, sigma=...)``).
        ax: Axes to draw on; None makes a figure. Defaults to None.
        grid: Eigenvalue grid, or a number of points spanning the nodes (with a margin).
            Defaults to 1,000 points.
        sigma: Width of the Gaussian smoothing. Defaults to the result's own choice.
        log: Log scale for the density axis, as the papers draw it. Defaults to True.
        floor: Densities below this are drawn at it on the log axis. Defaults to 1e-12.
        **kwargs: Passed on to ``ax.plot``.

    Returns:
        The ``Axes``.
    """
    nodes = np.asarray(result.nodes, dtype=np.float64)
    if grid is None or isinstance(grid, int | np.integer):
        lo, hi = float(nodes.min()), float(nodes.max())
        margin = 0.05 * (hi - lo) or 1.0
        grid = np.linspace(lo - margin, hi + margin, 1000 if grid is None else int(grid))
    grid = np.asarray(grid, dtype=np.float64)
    density = np.asarray(result.density(grid, sigma=sigma), dtype=np.float64)
    ax = _new_axes(ax)
    ax.plot(grid, np.maximum(density, floor) if log else density, **kwargs)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    return ax
