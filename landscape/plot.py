"""Figures: loss surfaces (contour, filled contour, heat map, 3D, 1D lines), SGD-vs-SAM
comparisons, PCA trajectories and Hessian spectral densities.

Axes-level functions in the matplotlib/seaborn manner: each takes ``ax=None`` (makes a figure),
passes extra keyword arguments on to matplotlib, returns the ``Axes`` and never shows or saves.
Points not computed yet (NaN) are drawn as gaps, never as zeros; on 1D lines each gap is marked.
Titles are wrapped to the width of their axes (``fit_title``), so that a long one is never cut off
and never runs into a neighbouring panel or colour bar.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Sequence

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
from matplotlib.axes import Axes
from matplotlib.text import Text

from landscape._checks import BatchPlotKind, Kind, choice, options
from landscape.surface import Surface

KINDS = options(Kind)
DEFAULT_LEVELS = 15
CMAP = "viridis"
FIGSIZE = (5.5, 4.5)
# Contour labels: at most this many labelled levels (every other one, or sparser, when more could
# be), each on a contour at least LABEL_MIN_LENGTH label widths long, so that the small closed
# contours crowding a minimum carry none.
MAX_CONTOUR_LABELS = 6
LABEL_MIN_LENGTH = 8.0
LABEL_FONTSIZE = 7.0
LABEL_INLINE_SPACING = 3.0  # pixels of line left out on each side of a label
CHAR_WIDTH_EM = 0.6  # mean width of a label character (digits, ".", "e-") in font sizes
BAR_PAD = 0.05  # the colour bar's distance from its axes, a fraction of the axes' width
BAR_CLEARANCE_3D = 6.0  # points between a 3D axes' z-axis label and its colour bar
BAR_ATTEMPTS_3D = 6  # placements of a 3D colour bar tried (each further right)
MIN_TITLE_FONTSIZE = 6.0
# Not-computed (NaN) and non-finite points of 1D lines: marks at the bottom of the axes.
MISSING_STYLE = {"marker": "x", "color": "0.45", "linestyle": "none", "clip_on": False}
NON_FINITE_STYLE = {"marker": "x", "color": "C3", "linestyle": "none", "clip_on": False}
LEGEND_ON_WHITE_LINES = "0.55"  # legend face behind white line entries (black text reads too)
# a point whose interpolated state is invalid (a negative BatchNorm moving variance)
INVALID_STYLE = {"marker": "v", "color": "C4", "linestyle": "none", "clip_on": False}
MISSING_MARK_Y = 0.02  # height of the marks, in axes coordinates


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
    """``ax`` (checked), or the axes of a new figure with constrained layout (room for titles)."""
    if ax is not None:
        if three_d and getattr(ax, "name", "") != "3d":
            raise ValueError("kind='surface' needs an Axes made with projection='3d'.")
        return ax
    fig = plt.figure(figsize=FIGSIZE, layout="constrained")
    return fig.add_subplot(projection="3d" if three_d else None)


def _settle(axes: Sequence[Axes]) -> None:
    """Place ``axes`` where their figures will draw them: run each figure's layout engine, if any
    (e.g. constrained layout), then the axes' aspect ratio, so that their sizes are final."""
    for fig in {id(ax.figure): ax.figure for ax in axes}.values():
        engine = fig.get_layout_engine()
        if engine is not None:
            for other in fig.axes:  # the layout measures every 3D panel by its projection
                _project(other)
            engine.execute(fig)
    for ax in axes:
        ax.apply_aspect()
        _project(ax)


def _project(ax: Axes) -> None:
    """A 3D axes' projection as its next draw will make it (matplotlib updates it only when
    drawing, and measures the axes with the last one: stale after new data or limits)."""
    if getattr(ax, "name", "") == "3d":
        ax.M = ax.get_proj()
        ax.invM = np.linalg.inv(ax.M)


def _wrapped(title: str, width: int, break_words: bool) -> str:
    """``title`` with each of its lines wrapped at ``width`` characters."""
    return "\n".join(
        "\n".join(textwrap.wrap(line, width, break_long_words=break_words)) or line
        for line in title.split("\n")
    )


def _fit_text(text: Text, title: str, width: float) -> None:
    """Wrap (then shrink, then break words of) ``text`` until it is at most ``width`` pixels."""
    text.set_text(title)
    if width <= 0 or text.get_window_extent().width <= width:
        return
    longest = max(len(line) for line in title.split("\n"))
    words = max(len(w) for w in title.split()) if title.split() else 1
    chars = int(longest * width / text.get_window_extent().width)
    for n in range(max(chars, words), words - 1, -1):  # whole words on each line
        text.set_text(_wrapped(title, n, break_words=False))
        if text.get_window_extent().width <= width:
            return
    # A word wider than the axes (a long file name): a smaller font, then break it.
    size = max(MIN_TITLE_FONTSIZE, text.get_fontsize() * width / text.get_window_extent().width)
    text.set_fontsize(size)
    if text.get_window_extent().width <= width:
        return
    for n in range(words, 0, -1):
        text.set_text(_wrapped(title, n, break_words=True))
        if text.get_window_extent().width <= width:
            return


def fit_title(ax: Axes, title: str, **kwargs) -> Text:
    """Set the title of ``ax``, wrapped at word boundaries to the axes' width.

    The width is the one the figure will draw (its layout engine, e.g. constrained layout, and
    the axes' aspect are applied first). A title is wrapped, not cut, and never wider than its
    axes, so it neither leaves the figure nor runs into a neighbouring panel or colour bar. A
    word wider than the axes (a long file name) is drawn smaller (down to 6 points), then broken.
    Explicit line breaks are kept.

    Args:
        ax: The axes.
        title: The title.
        **kwargs: Passed on to ``ax.set_title`` (``fontsize``, ``loc``, ``pad``, ...).

    Returns:
        The title's ``Text``.
    """
    text = ax.set_title("", **kwargs)
    _fit_titles([(ax, text, title)])
    return text


def _fit_titles(titles: Sequence[tuple[Axes, Text, str]]) -> None:
    """``fit_title`` for several ``(axes, title Text, title)`` at once (one layout per pass)."""
    sizes = [text.get_fontsize() for _, text, _ in titles]
    for _ in range(2):  # a wrapped title is taller: the layout may then narrow the axes a little
        _settle([ax for ax, _, _ in titles])
        for (ax, text, title), size in zip(titles, sizes):
            text.set_fontsize(size)
            _fit_text(text, title, ax.get_window_extent().width)
        if all(ax.figure.get_layout_engine() is None for ax, _, _ in titles):
            break


def _check_kind(kind: str, surface: Surface) -> str:
    choice("kind", kind, Kind)
    if surface.ndim == 1 and kind != "line":
        raise ValueError(f"A 1D surface is drawn with kind='line'. Received: kind={kind!r}.")
    if surface.ndim == 2 and kind == "line":
        raise ValueError("kind='line' draws 1D surfaces; this surface is 2D.")
    return kind


def _plot_line(surface: Surface, ax: Axes, log: bool, **kwargs) -> Axes:
    """Loss on the left axis, accuracy on a twin right axis; train solid, test dashed; missing
    points marked at the bottom."""
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
        _clean_log_axis(ax, surface, loss_keys)
    _mark_missing(ax, surface, loss_keys + acc_keys)
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
    # below the axes, clear of the curves and of both y-axes' labels
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.15),
              ncol=min(len(labels), 3), fontsize="small", frameon=False)  # fmt: skip
    return ax


def _clean_log_axis(ax: Axes, surface: Surface, keys: Sequence[str]) -> None:
    """A log y-axis ticked at round values in the data's range, one plain label per tick
    (matplotlib's own labels a narrow range's minor ticks as "1.2167×10¹")."""
    ax.set_yscale("log")
    z = np.concatenate([np.ravel(np.asarray(surface.values[k], np.float64)) for k in keys])
    z = z[np.isfinite(z) & (z > 0)]
    if z.size:
        lo, hi = float(z.min()), float(z.max())
        ticks = _log_ticks(lo, hi) if hi > lo else z[:1]
        if len(ticks) < 3 and hi > lo:  # under a decade: round linear values
            ticks = mticker.MaxNLocator(5).tick_values(lo, hi)
            ticks = ticks[(ticks >= lo) & (ticks <= hi) & (ticks > 0)]
        ax.yaxis.set_major_locator(mticker.FixedLocator(ticks))
    ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _pos=None: f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(mticker.NullFormatter())


def _line_title(surface: Surface) -> str:
    """The default title of a 1D plot: what is drawn, along which direction."""
    kind = (surface.metadata.get("directions_metadata") or [{}])[0].get("kind")
    along = {"interpolation": "from model a (α = 0) to model b (α = 1)"}.get(kind, "along α")
    drawn = [k for k in surface.values if k.endswith(("_loss", "_acc"))]
    words = " and ".join(w for w, end in (("loss", "_loss"), ("accuracy", "_acc"))
                         if any(k.endswith(end) for k in drawn))  # fmt: skip
    return f"{words} {along}"


def _mark_missing(ax: Axes, surface: Surface, keys: Sequence[str]) -> None:
    """A grey x at the bottom of the axes under each point not computed (NaN), a red x under each
    computed point where a drawn value is not finite (a diverged network); each with a legend
    entry that counts them ("not computed (3)", "non-finite (1)")."""
    finite = np.ones(len(surface.x), bool)
    for key in keys:
        finite &= np.isfinite(np.asarray(surface.values[key], dtype=np.float64))
    computed = np.asarray(surface.computed, bool)
    for mask, name, style in [
        (~computed, "not computed", MISSING_STYLE),
        (computed & ~finite, "non-finite", NON_FINITE_STYLE),
        (_flagged(surface), "invalid state", INVALID_STYLE),
    ]:
        if mask.any():
            xs = np.asarray(surface.x, dtype=np.float64)[mask]
            ax.plot(xs, np.full(len(xs), MISSING_MARK_Y), transform=ax.get_xaxis_transform(),
                    label=f"{name} ({len(xs)})", **style)  # fmt: skip


def _flagged(surface: Surface) -> np.ndarray:
    """Points where any flag (``Surface.flags``: invalid model state) counts something."""
    mask = np.zeros(surface.shape, bool)
    for counts in (getattr(surface, "flags", None) or {}).values():
        mask |= np.asarray(counts) > 0
    return mask


def _mark_flagged_2d(ax: Axes, surface: Surface) -> None:
    """A marker on each grid point of a 2D surface whose model state is invalid."""
    mask = _flagged(surface)
    if mask.any():
        xx, yy = np.meshgrid(surface.x, surface.y)
        style = {**INVALID_STYLE, "clip_on": True}
        ax.plot(xx[mask], yy[mask], label=f"invalid state ({int(mask.sum())})", **style)
        ax.legend(loc="upper right", fontsize="small")


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
    title: str | None = None,
    **kwargs,
) -> Axes:
    """Draw one metric of a loss surface.

    Args:
        surface_or_path: A ``Surface`` or the path of a surface file (ours or loss-landscape's).
        metric: ``"train_loss"``, ``"train_acc"``, ``"test_loss"`` or ``"test_acc"``. Ignored by
            ``kind="line"``, which draws every loss and accuracy. Defaults to "train_loss".
        kind: ``"contour"`` (every level drawn; labels only on contours long enough to hold
            one, so none on the small rings crowding a minimum, and on at most 6 levels: every
            other one, or sparser, when more could carry one), ``"contourf"``, ``"heatmap"``,
            ``"surface"`` (3D; its colour bar clear of the z-axis label) for 2D surfaces;
            ``"line"`` for 1D ones (loss and accuracy on twin axes; a grey x at the bottom
            marks each point not computed, a red x each computed point whose value is not
            finite, a purple triangle each point flagged for invalid model state, with their
            counts in the legend; 2D kinds mark flagged points too). Defaults to "contour".
        ax: Axes to draw on (for ``"surface"`` made with ``projection="3d"``); None makes a
            figure (constrained layout). Defaults to None.
        log: Logarithmic colour scale (levels spaced geometrically; values ≤ 0 left out), or a
            log y-axis for lines. The 3D surface then shows log10 of the metric as height and
            colour, with the z-axis and colour bar ticked in the metric's units and labelled
            "(log scale)". Defaults to False.
        levels: Number of levels or their values. Defaults to 15.
        vmin: Lower end of the colour scale. Defaults to the smallest computed value.
        vmax: Upper end of the colour scale. Defaults to the largest computed value.
        colorbar: Add a colour bar (not for ``"contour"`` and ``"line"``); for ``"surface"`` it
            stands clear of the z-axis label. Defaults to True.
        title: The title, wrapped to the axes' width (``fit_title``); ``""`` for none.
            Defaults to the metric's name (2D), or what a 1D plot draws and along what
            ("loss and accuracy from model a (α = 0) to model b (α = 1)").
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
        ax = _plot_line(surface, _new_axes(ax), log, **kwargs)
        title = _line_title(surface) if title is None else title
        if title:
            fit_title(ax, title)
        return ax
    z = _metric(surface, metric)
    lo, hi = _value_range([z], log, vmin, vmax)
    ax = _new_axes(ax, three_d=kind == "surface")
    xx, yy = np.meshgrid(surface.x, surface.y)  # "xy" indexing: Z is [iy, ix]
    norm = _norm(lo, hi, log)
    zm = _masked(z, log)
    kwargs.setdefault("cmap", CMAP)
    label, mappable, ticks, fmt = _label(metric), None, None, "%.3g"
    if kind == "contour":
        cs = ax.contour(xx, yy, zm, levels=_levels(levels, lo, hi, log), norm=norm, **kwargs)
    elif kind == "contourf":
        filled = _levels(levels, lo, hi, log)
        mappable = ax.contourf(xx, yy, zm, levels=filled, norm=norm, extend="both", **kwargs)
        ticks = filled[:: max(1, len(filled) // 6)]
    elif kind == "heatmap":
        mappable = ax.pcolormesh(xx, yy, zm, norm=norm, shading="nearest", **kwargs)
    else:
        mappable, ticks, fmt, label = _plot_3d(ax, xx, yy, z, zm, (lo, hi), log, label, **kwargs)
    if mappable is not None and colorbar:
        if log and ticks is None and kind != "surface":  # round values, one label per tick
            ticks = _log_ticks(lo, hi)
        bar = _colorbar(ax, mappable, ticks, fmt)
        bar.set_label(label)
        if log and kind != "surface":
            bar.ax.yaxis.set_minor_formatter(mticker.NullFormatter())
        if kind == "surface":
            _clear_zlabels([ax])
    ax.set_xlabel("α")
    ax.set_ylabel("β")
    title = _label(metric) if title is None else title
    if title:
        fit_title(ax, title)
    if kind == "contour":
        _label_contours(ax, cs)
    if kind != "surface":
        _mark_flagged_2d(ax, surface)
    return ax


def _plot_3d(ax, xx, yy, z, zm, limits, log: bool, label: str, **kwargs):
    """The 3D surface; returns (mappable, colour bar ticks, their format, label).

    With ``log``, heights and colours are log10 of the metric, and the z-axis and the colour bar
    carry ticks in the metric's own units (0.1, 0.2, 0.5, 1, ...) on that log scale.
    """
    lo, hi = limits
    # NaN (not computed) points are left out of the mesh; the colour scale is set explicitly so
    # that it never comes from NaNs (loss-landscape's 3D plot renders blank for that reason).
    z3 = np.where(zm.mask, np.nan, np.log10(z) if log else z)
    norm3 = mcolors.Normalize(np.log10(lo), np.log10(hi)) if log else _norm(lo, hi, False)
    mappable = ax.plot_surface(xx, yy, z3, norm=norm3, linewidth=0, antialiased=True, **kwargs)
    ax.set_zlim(norm3.vmin, norm3.vmax)
    for axis in (ax.xaxis, ax.yaxis):  # foreshortened: fewer ticks, so that labels stay apart
        axis.set_major_locator(mticker.MaxNLocator(5, steps=[1, 2, 2.5, 5, 10]))
    ticks, fmt = None, "%.3g"
    if log:
        ticks, fmt = np.log10(_log_ticks(lo, hi)), mticker.FuncFormatter(_power_of_ten)
        ax.set_zticks(ticks)
        ax.zaxis.set_major_formatter(fmt)
        label = f"{label} (log scale)"
    ax.set_zlabel(label)
    return mappable, ticks, fmt, label


def _colorbar(ax: Axes, mappable, ticks, fmt, pad: float = BAR_PAD):
    return ax.figure.colorbar(mappable, ax=ax, shrink=0.8, pad=pad, ticks=ticks, format=fmt)


def _clear_zlabels(axes: Sequence[Axes]) -> None:
    """Move the colour bar of each 3D axes right until it is clear of the z-axis label.

    Matplotlib draws the z-axis tick labels and label outside the axes' box, by distances in
    points (so a larger share of a small figure), and constrained layout leaves the label out of
    its sums. The bars are measured where the figure will draw them and made again, further
    right, while they overlap (several panels of a figure are settled together, since moving one
    bar can narrow the others).
    """
    bars = {id(ax): bar for ax in axes if (bar := _colorbar_of(ax)) is not None}
    pads = dict.fromkeys(bars, BAR_PAD)
    for _ in range(BAR_ATTEMPTS_3D):
        _settle(axes)
        moved = False
        for ax in [a for a in axes if id(a) in bars]:
            bar = bars[id(ax)]
            clearance = BAR_CLEARANCE_3D * ax.figure.dpi / 72
            zaxis = ax.zaxis.get_tightbbox()
            overlap = zaxis.x1 + clearance - bar.ax.get_window_extent().x0 if zaxis else 0.0
            if overlap > 0:  # aim at 1.5 clearances, so that a second placement is seldom needed
                pads[id(ax)] += (overlap + clearance / 2) / ax.get_window_extent().width
                bars[id(ax)] = _remake_colorbar(ax, bar, pads[id(ax)])
                moved = True
        if not moved:
            return


def _colorbar_of(ax: Axes):
    """The colour bar of the mappable ``plot_surface`` drew on ``ax``, or None."""
    return next((c.colorbar for c in ax.collections if getattr(c, "colorbar", None)), None)


def _remake_colorbar(ax: Axes, bar, pad: float):
    """``bar`` made again at ``pad``: same mappable, ticks, format and label."""
    mappable, label = bar.mappable, bar.ax.get_ylabel()
    locator, formatter = bar.locator, bar.formatter
    bar.remove()
    new = _colorbar(ax, mappable, locator, formatter, pad)
    new.set_label(label)
    return new


def _log_ticks(lo: float, hi: float) -> np.ndarray:
    """Round values in [lo, hi] for a log scale: 1-2-5, 1-3 or powers of ten by the range."""
    decades = np.log10(hi / lo)
    subs = (1.0, 2.0, 5.0) if decades <= 1 else (1.0, 3.0) if decades <= 2.5 else (1.0,)
    ticks = mticker.LogLocator(subs=subs, numticks=12).tick_values(lo, hi)
    ticks = ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))]
    if len(ticks) < 2:  # a narrow range: round linear values
        ticks = mticker.MaxNLocator(4).tick_values(lo, hi)
        ticks = ticks[(ticks >= lo) & (ticks <= hi) & (ticks > 0)]
    return ticks


def _power_of_ten(value: float, _pos=None) -> str:
    """The tick label of a log10 position, in the metric's units."""
    return f"{10.0**value:.4g}"


def _label_contours(ax: Axes, cs) -> None:
    """Label a legible subset of the contour levels (all stay drawn).

    Only levels with a contour piece at least ``LABEL_MIN_LENGTH`` label widths long can carry a
    label (the small closed contours around a minimum cannot); all of them when they are at most
    ``MAX_CONTOUR_LABELS``, else every other one, or sparser, so that at most that many are.
    """
    fmt = "%.3g"
    _settle([ax])  # labels are placed in pixels: after the layout
    char = LABEL_FONTSIZE * CHAR_WIDTH_EM * ax.figure.dpi / 72  # pixels per label character
    ax.get_xlim()  # brings the view limits, and so the data-to-pixel transform, up to date
    lengths = [_longest_piece(ax, path) for path in cs.get_paths()]
    eligible = [
        level
        for level, length in zip(cs.levels, lengths)
        if length >= LABEL_MIN_LENGTH * char * len(fmt % level)
    ]
    if not eligible and max(lengths, default=0) > 0:  # a small plot: its longest contour
        eligible = [cs.levels[int(np.argmax(lengths))]]
    step = -(-len(eligible) // MAX_CONTOUR_LABELS)  # ceil: every step-th eligible level
    if eligible:
        ax.clabel(cs, levels=eligible[::step], inline=True, inline_spacing=LABEL_INLINE_SPACING,
                  fontsize=LABEL_FONTSIZE, fmt=fmt)  # fmt: skip


def _longest_piece(ax: Axes, path) -> float:
    """Length in pixels of the longest connected piece of a contour level's path."""
    pieces = path.to_polygons(closed_only=False) if len(path.vertices) else []
    lengths = [
        np.hypot(*np.diff(ax.transData.transform(p), axis=0).T).sum() for p in pieces if len(p)
    ]
    return float(max(lengths, default=0.0))


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
        titles: One title per surface, each wrapped to its panel's width (``fit_title``).
            Defaults to the file names, or "surface i".
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
        for s, ax in zip(loaded, axes):
            plot_surface(s, metric=metric, kind=kind, ax=ax, log=log, levels=shared,
                         vmin=lo, vmax=hi, title="", **kwargs)  # fmt: skip
        xs = [v for s in loaded for v in (s.x.min(), s.x.max())]
        ys = [v for s in loaded for v in (s.y.min(), s.y.max())]
        for ax in axes:
            ax.set_xlim(min(xs), max(xs))
            ax.set_ylim(min(ys), max(ys))
            if kind != "surface":
                ax.set_aspect("equal", adjustable="box")
        if kind == "surface":  # the panels' final sizes: move their colour bars if need be
            _clear_zlabels(axes)
    else:
        for s, ax in zip(loaded, axes):
            plot_surface(s, kind="line", ax=ax, log=log, **kwargs)
        lows, highs = zip(*(ax.get_ylim() for ax in axes))
        for ax in axes:
            ax.set_ylim(min(lows), max(highs))
    _fit_titles([(ax, ax.set_title(""), title) for ax, title in zip(axes, titles)])
    return axes


def plot_trajectory(
    pca,
    surface: Surface | str | os.PathLike | None = None,
    *,
    metric: str = "train_loss",
    ax: Axes | None = None,
    log: bool = False,
    levels: int | Sequence[float] | None = None,
    title: str | None = None,
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
        title: The title, wrapped to the axes' width (``fit_title``); ``""`` for none.
            Defaults to the metric's name with a surface, none without.
        **kwargs: Passed on to the path's ``ax.plot``.

    Returns:
        The ``Axes``.
    """
    coords = np.asarray(pca.coordinates, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"`pca.coordinates` must be (n, 2). Received shape {coords.shape}.")
    ax = _new_axes(ax)
    if surface is not None:
        plot_surface(surface, metric=metric, kind="contour", ax=ax, log=log, levels=levels,
                     title="")  # fmt: skip
    kwargs.setdefault("color", "C3")
    kwargs.setdefault("marker", "o")
    kwargs.setdefault("markersize", 3)
    ax.plot(coords[:, 0], coords[:, 1], label="trajectory", **kwargs)
    ax.plot([0.0], [0.0], marker="*", color="k", markersize=10, linestyle="none", label="final")
    ratio = np.asarray(pca.explained_variance_ratio, dtype=np.float64)
    ax.set_xlabel(f"1st PCA direction ({100 * ratio[0]:.1f} %)")
    ax.set_ylabel(f"2nd PCA direction ({100 * ratio[1]:.1f} %)")
    ax.legend(loc="best", fontsize="small")
    if title is None and surface is not None:
        title = _label(metric)
    if title:
        fit_title(ax, title)
    return ax


def plot_spectrum(
    result,
    *,
    ax: Axes | None = None,
    grid: np.ndarray | int | None = None,
    sigma: float | None = None,
    log: bool = True,
    floor: float = 1e-12,
    title: str | None = None,
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
        title: A title, wrapped to the axes' width (``fit_title``). Defaults to None (none).
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
    if title:
        fit_title(ax, title)
    return ax


def _sharpness_history(source) -> tuple[dict, str]:
    """(history, quantity) from a SharpnessTracker, its ``as_dict()``, a JSON file of it, or a
    plain dict of lists."""
    if isinstance(source, str | os.PathLike):
        import json

        with open(source) as f:
            source = json.load(f)
    if hasattr(source, "history") and hasattr(source, "quantity"):  # a SharpnessTracker
        return source.history, source.quantity
    if isinstance(source, dict) and "history" in source:
        return source["history"], source.get("quantity", "lambda_max(H)")
    if isinstance(source, dict):
        return source, "lambda_max(H)"
    raise ValueError(
        "Argument `history_or_tracker` must be a SharpnessTracker, its as_dict(), a JSON file "
        f"of it or a dict of lists. Received: {type(source).__name__}."
    )


def plot_sharpness(
    history_or_tracker,
    *,
    ax: Axes | None = None,
    x: str = "step",
    log: bool = False,
    all_eigenvalues: bool = True,
    title: str | None = None,
    **kwargs,
) -> Axes:
    """The tracked sharpness against training time, with the optimizer's stability threshold.

    λ_max (solid, with markers; λ₂ … λ_k fainter) and the threshold (dashed, a step line that
    follows learning-rate changes), as Cohen et al. (2021, arXiv 2103.00065) draw the edge of
    stability. A probe that was not certified is drawn with a hollow marker.

    Args:
        history_or_tracker: A ``landscape.SharpnessTracker``, its ``as_dict()``, the path of
            a JSON file of it (``landscape train --track-sharpness`` writes one), or a dict of
            lists with ``step`` (or ``epoch``), ``lambda_max`` and optionally ``threshold``,
            ``lambda_2`` …, ``converged``.
        ax: Axes to draw on; None makes a figure. Defaults to None.
        x: ``"step"`` or ``"epoch"``. Defaults to "step".
        log: Log scale for the sharpness axis. Defaults to False.
        all_eigenvalues: Also draw λ₂ … λ_k when recorded. Defaults to True.
        title: A title, wrapped to the axes' width (``fit_title``). Defaults to None.
        **kwargs: Passed on to ``ax.plot`` for λ_max.

    Returns:
        The ``Axes``.

    Raises:
        ValueError: an unknown ``x``, or a history without ``lambda_max`` or the ``x`` key.
    """
    history, quantity = _sharpness_history(history_or_tracker)
    if x not in ("step", "epoch"):
        raise ValueError(f"Argument `x` must be 'step' or 'epoch'. Received: x={x!r}.")
    if "lambda_max" not in history or x not in history:
        raise ValueError(
            f"The history has no {'lambda_max' if 'lambda_max' not in history else x!r} "
            f"entries; its keys are {sorted(history)}."
        )
    t = np.asarray(history[x], dtype=np.float64)
    lam = np.asarray([np.nan if v is None else v for v in history["lambda_max"]], np.float64)
    ax = _new_axes(ax)
    label = "λ₁(P⁻¹H)" if "P^-1" in quantity else "λ_max"
    (line,) = ax.plot(t, lam, marker="o", markersize=3, label=label, **kwargs)
    converged = np.asarray(history.get("converged", [True] * len(t)), dtype=bool)
    if not converged.all():
        ax.plot(t[~converged], lam[~converged], "o", mfc="none", color=line.get_color(),
                label="not certified")  # fmt: skip
    i = 2
    while all_eigenvalues and f"lambda_{i}" in history:
        values = np.asarray([np.nan if v is None else v for v in history[f"lambda_{i}"]])
        ax.plot(t, values, color=line.get_color(), alpha=0.35, linewidth=1, label=f"λ{i}")
        i += 1
    if "threshold" in history:
        thr = np.asarray([np.nan if v is None else v for v in history["threshold"]], np.float64)
        thr[~np.isfinite(thr)] = np.nan  # no threshold (unknown rule) or none (η = 0)
        if np.isfinite(thr).any():
            ax.step(
                t, thr, where="post", linestyle="--", color="black", label="stability threshold"
            )
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step" if x == "step" else "epoch")
    ax.set_ylabel(label)
    ax.legend(loc="best", fontsize="small")
    if title:
        fit_title(ax, title)
    return ax


def _connection(source) -> dict:
    """A ``ConnectResult`` (or its ``as_dict()``, or the path of its JSON file) as a dict."""
    if hasattr(source, "as_dict"):
        return source.as_dict()
    if isinstance(source, dict):
        return source
    if isinstance(source, str | os.PathLike):
        with open(source) as f:
            return json.load(f)
    raise ValueError(
        "Argument `result` must be a ConnectResult, its as_dict() or the path of its JSON "
        f"file. Received: result={type(source).__name__}."
    )


def plot_connection(
    result,
    *,
    metric: str = "train_loss",
    ax: Axes | None = None,
    log: bool = False,
    title: str | None = None,
    **kwargs,
) -> Axes:
    """A metric along the straight line and along the fitted curve, against t.

    The two paths of ``landscape.connect`` (Garipov et al. 2018, arXiv 1802.10026): t = 0 is
    ``model_a``, t = 1 ``model_b``; each legend entry gives the path's barrier, max − mean of
    the two ends, in the metric's units.

    Args:
        result: A ``ConnectResult``, its ``as_dict()``, or the path of its JSON file
            (``landscape connect --out`` writes one).
        metric: ``"train_loss"``, ``"train_acc"``, ``"test_loss"``, ``"test_acc"`` (those
            measured). Defaults to "train_loss".
        ax: Axes to draw on; None makes a figure. Defaults to None.
        log: Log scale for the metric. Defaults to False.
        title: A title, wrapped to the axes' width (``fit_title``). Defaults to None.
        **kwargs: Passed on to ``ax.plot`` for both lines.

    Returns:
        The ``Axes``.

    Raises:
        ValueError: an unreadable ``result``, or a ``metric`` it does not hold.
    """
    data = _connection(result)
    for key in ("t", "linear", "curve"):
        if key not in data:
            raise ValueError(
                f"Argument `result` has no {key!r} entry; its keys are {sorted(data)}."
            )
    if metric not in data["linear"] or metric not in data["curve"]:
        raise ValueError(f"Unknown metric {metric!r}; this result has {tuple(data['linear'])}.")
    t = np.asarray(data["t"], np.float64)
    ax = _new_axes(ax)
    kind = data.get("kind", "curve")
    for path, label, style in (("linear", "straight line", "--"), ("curve", kind, "-")):
        values = np.asarray(data[path][metric], np.float64)
        ends = (values[0] + values[-1]) / 2
        ax.plot(t, values, style, marker="o", markersize=3,
                label=f"{label} (barrier {values.max() - ends:.3g})", **kwargs)  # fmt: skip
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("t  (0: model a, 1: model b)")
    ax.set_ylabel(_label(metric))
    ax.legend(loc="best", fontsize="small")
    if title:
        fit_title(ax, title)
    return ax


def plot_connection_plane(
    plane: Surface,
    *,
    metric: str = "train_loss",
    ax: Axes | None = None,
    log: bool = True,
    title: str | None = None,
    **kwargs,
) -> Axes:
    """The plane through w_a, the bend θ and w_b, with the curve and the straight line on it.

    Contours of ``landscape.connection_plane``'s surface (axes in weight-space distance), the
    fitted curve (solid), the straight segment (dashed) and the three points.

    Args:
        plane: The ``Surface`` ``landscape.connection_plane`` returns.
        metric: The metric drawn. Defaults to "train_loss".
        ax: Axes to draw on; None makes a figure. Defaults to None.
        log: Logarithmic colour scale. Defaults to True.
        title: A title (``fit_title``). Defaults to None.
        **kwargs: Passed on to ``plot_surface`` (``levels``, ``vmin``, ``vmax``, ``kind``, …).

    Returns:
        The ``Axes``.

    Raises:
        ValueError: a surface without the curve's trace in its metadata.
    """
    meta = getattr(plane, "metadata", {}) or {}
    if not isinstance(plane, Surface) or "curve_x" not in meta or "points" not in meta:
        raise ValueError(
            "Argument `plane` must be the Surface landscape.connection_plane returns. "
            f"Received: plane={type(plane).__name__} without the curve's trace."
        )
    kwargs.setdefault("kind", "contourf")
    ax = plot_surface(plane, metric=metric, ax=ax, log=log, **kwargs)
    points = meta["points"]
    (xa, ya), (xm, ym), (xb, yb) = points["w_a"], points["bend"], points["w_b"]
    ax.plot(meta["curve_x"], meta["curve_y"], "-", color="white", linewidth=2,
            label=meta.get("curve", "curve"))  # fmt: skip
    ax.plot([xa, xb], [ya, yb], "--", color="white", linewidth=1, label="straight line")
    ax.plot([xa, xb], [ya, yb], "o", color="black", markersize=5)
    ax.plot([xm], [ym], "s", color="black", markersize=5, label="bend θ")
    ax.annotate("a", (xa, ya), textcoords="offset points", xytext=(4, 4))
    ax.annotate("b", (xb, yb), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("distance along w_b − w_a")
    ax.set_ylabel("distance towards θ")
    ax.set_aspect("equal", adjustable="datalim")
    # the curve and the line are white (on the colour map): a grey legend frame shows them
    ax.legend(loc="best", fontsize="small", facecolor=LEGEND_ON_WHITE_LINES, framealpha=1.0)
    if title:
        fit_title(ax, title)
    return ax


def _layer_rows(report) -> tuple[list[dict], str]:
    """The rows and curvature name of a ``LayerCurvature``, its ``as_dict()`` or JSON file."""
    if isinstance(report, str | os.PathLike):
        import json

        with open(report) as f:
            report = json.load(f)
        report = report.get("layers_report", report)
    if hasattr(report, "as_dict"):
        report = report.as_dict()
    if not isinstance(report, dict) or not isinstance(report.get("layers"), list):
        raise ValueError(
            "Argument `report` must be a landscape.LayerCurvature, its as_dict() or a JSON "
            f"file of it. Received: report={type(report).__name__}."
        )
    return report["layers"], str(report.get("curvature", "hessian"))


def plot_layer_curvature(
    report,
    *,
    ax: Axes | None = None,
    trace: bool = True,
    log: bool | None = None,
    title: str | None = None,
    **kwargs,
) -> Axes:
    """Per-layer curvature: horizontal bars of each block's top eigenvalue (and trace).

    One row per group of ``landscape.layer_curvature``'s report, in model order from the top.
    The top eigenvalue λ_max(H_BB) is a filled bar (hatched when not certified: its residual
    is above ``tol``), the trace estimate tr(H_BB) a lighter bar beside it with its standard
    error; the label names each layer with its number of parameters.

    Args:
        report: A ``LayerCurvature``, its ``as_dict()``, or the path of a JSON file holding
            that dict (``landscape hessian --layers --json``, under ``"layers_report"``).
        ax: Axes to draw on. Defaults to None (a new figure).
        trace: Draw the traces too (when the report has them). Defaults to True.
        log: Logarithmic value axis. Defaults to None: when every value drawn is > 0.
        title: Axes title. Defaults to None.
        **kwargs: Passed on to ``Axes.barh`` for the eigenvalue bars.

    Returns:
        The ``Axes``.

    Raises:
        ValueError: a ``report`` in none of the forms above.
    """
    rows, curvature = _layer_rows(report)
    name = "G" if curvature == "ggn" else "H"
    if ax is None:
        _, ax = plt.subplots(figsize=(FIGSIZE[0], max(2.0, 0.45 * len(rows) + 1.0)))
    lam = np.array([r["lambda_max"] for r in rows], np.float64)
    tr = np.array([r.get("trace", np.nan) for r in rows], np.float64)
    err = np.array([r.get("trace_stderr", np.nan) for r in rows], np.float64)
    with_trace = trace and bool(np.any(np.isfinite(tr)))
    y = np.arange(len(rows), dtype=np.float64)
    height = 0.4 if with_trace else 0.7
    shift = height / 2 if with_trace else 0.0
    kwargs.setdefault("color", "C0")
    bars = ax.barh(y - shift, lam, height, label=f"λ_max({name}_BB)", **kwargs)
    for bar, r in zip(bars, rows):
        if not r.get("converged", True):
            bar.set_hatch("//")
            bar.set_alpha(0.6)
    drawn = [lam]
    if with_trace:
        ax.barh(y + shift, tr, height, xerr=np.where(np.isfinite(err), err, 0.0), color="C1",
                alpha=0.7, label=f"tr({name}_BB)", error_kw={"elinewidth": 0.8})  # fmt: skip
        drawn.append(tr[np.isfinite(tr)])
    values = np.concatenate(drawn)
    if log is None:
        log = bool(values.size) and bool(np.all(values > 0))
    if log:
        ax.set_xscale("log")
    ax.set_yticks(y, [f"{r['name']} ({r['n_params']:,})" for r in rows])
    ax.invert_yaxis()  # model order from the top
    ax.set_xlabel(f"curvature of the layer's block of {name}")
    ax.legend(loc="best", fontsize="small")
    if title:
        fit_title(ax, title)
    return ax


# ------------------------------------------------------------------------ batch spectra
MAX_SHARED_BINS = 200  # histogram bins of plot_batch_spectrum's default, over all results


def _batch_spectrum_dict(source) -> dict:
    """A ``BatchSpectrum`` (or its ``as_dict()``, or a JSON file holding it, at the top or
    under ``"batch_spectrum"``) as a dict with ``values``."""
    if isinstance(source, str | os.PathLike):
        with open(source) as f:
            source = json.load(f)
    if hasattr(source, "as_dict"):
        source = source.as_dict()
    if isinstance(source, dict) and "batch_spectrum" in source:
        source = source["batch_spectrum"]
    if not isinstance(source, dict) or "values" not in source:
        raise ValueError(
            "Argument `results` must hold BatchSpectrum results, their as_dict() or JSON files "
            f"of them. Received: an item of type {type(source).__name__}."
        )
    return source


def _batch_inputs(results, labels) -> tuple[list[dict], list[str | None]]:
    """The results as dicts and their labels, checked."""
    single = not isinstance(results, list | tuple)
    items = [_batch_spectrum_dict(r) for r in ([results] if single else results)]
    if not items:
        raise ValueError("Argument `results` must hold at least one BatchSpectrum.")
    if labels is None:
        labels = [None] * len(items)
    elif isinstance(labels, str):
        labels = [labels]
    if len(labels) != len(items):
        raise ValueError(
            f"Argument `labels` must have one label per result ({len(items)}). "
            f"Received: {len(labels)} labels."
        )
    return items, list(labels)


def plot_batch_spectrum(
    results,
    *,
    labels: Sequence[str] | str | None = None,
    kind: BatchPlotKind = "histogram",
    bins: int | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    **kwargs,
) -> Axes:
    """The distribution of each mini-batch's λ_max, with the full-data λ_max as a line.

    A histogram (one semi-transparent histogram per result on shared bins) or violins (one per
    result, with each batch as a point: hollow where the batch's eigenvalues are not
    certified). The full-data λ_max of a result that has it is drawn in the result's colour: a
    dashed vertical line on the histogram, a short horizontal bar across its violin. Park & Kim
    (2022, arXiv 2202.06709) draw these to compare architectures and optimizers.

    Args:
        results: A ``landscape.BatchSpectrum`` (``landscape.batch_spectrum``), its
            ``as_dict()``, the path of a JSON file of it (``landscape batch-spectrum --json``),
            or a list of these (e.g. SGD's and SAM's).
        labels: One label per result (a str for a single result). Defaults to None (none).
        kind: ``"histogram"`` or ``"violin"``. Defaults to ``"histogram"``.
        bins: Number of histogram bins, shared by all results. Defaults to None: bins of
            the narrowest width that gives each result max(5, min(30, 2·√batches)) bins over
            its own range (at most ``MAX_SHARED_BINS`` in all).
        ax: Axes to draw on; None makes a figure. Defaults to None.
        title: A title, wrapped to the axes' width (``fit_title``). Defaults to None.
        **kwargs: Passed on to ``ax.hist`` (histogram) or ``ax.violinplot`` (violin).

    Returns:
        The ``Axes``.

    Raises:
        ValueError: an unknown ``kind``, ``labels`` of another length than ``results``, or an
            item that is not a batch spectrum.
    """
    kind = choice("kind", kind, BatchPlotKind)
    items, labels = _batch_inputs(results, labels)
    lams = [np.asarray(r["values"], np.float64).reshape(len(r["values"]), -1)[:, 0] for r in items]
    curvature = "G" if items[0].get("curvature") == "ggn" else "H"
    ax = _new_axes(ax)
    if kind == "histogram":
        _batch_histograms(ax, items, lams, labels, bins, **kwargs)
        ax.set_xlabel(f"λ_max({curvature}) of a mini-batch")
        ax.set_ylabel("batches")
        ax.yaxis.set_major_locator(mticker.MaxNLocator(integer=True))
    else:
        _batch_violins(ax, items, lams, labels, **kwargs)
        ax.set_ylabel(f"λ_max({curvature}) of a mini-batch")
    if any(labels) or any(r.get("full_values") for r in items):
        ax.legend(loc="best", fontsize="small")
    if title:
        fit_title(ax, title)
    return ax


def _batch_histograms(ax: Axes, items, lams, labels, bins, **kwargs) -> None:
    """Overlaid histograms on shared bins, each with its full-data line."""
    every = np.concatenate(lams)
    lo, hi = float(every.min()), float(every.max())
    hi = hi if hi > lo else lo + 1.0
    if bins is None:
        bins = _shared_bins(lams, lo, hi)
    edges = np.linspace(lo, hi, bins + 1)
    kwargs.setdefault("alpha", 0.55 if len(items) > 1 else 0.8)
    single = kwargs.pop("color", None) if len(items) == 1 else None
    for i, (r, lam, label) in enumerate(zip(items, lams, labels)):
        color = single or f"C{i}"
        ax.hist(lam, bins=edges, color=color, label=label, **kwargs)
        if r.get("full_values"):
            name = "full data" if label is None else f"{label}: full data"
            ax.axvline(r["full_values"][0], color=color, linestyle="--", label=name)


def _shared_bins(lams, lo: float, hi: float) -> int:
    """Bins over [lo, hi] as wide as each result's own choice allows: max(5, min(30,
    2·√batches)) bins over its own range, the narrowest of these widths (at most
    ``MAX_SHARED_BINS`` bins), so that results far apart keep their shape."""
    widths = [
        (float(lam.max()) - float(lam.min())) / max(5, min(30, int(2 * np.sqrt(lam.size))))
        for lam in lams
    ]
    widths = [w for w in widths if w > 0]
    if not widths:
        return 5
    return int(min(MAX_SHARED_BINS, max(5, np.ceil((hi - lo) / min(widths)))))


def _batch_violins(ax: Axes, items, lams, labels, **kwargs) -> None:
    """One violin per result with its batches as points and its full-data bar."""
    positions = np.arange(1, len(items) + 1, dtype=np.float64)
    parts = ax.violinplot(lams, positions=positions, showextrema=False, **kwargs)
    rng = np.random.default_rng(0)  # the points' horizontal jitter only
    for i, (r, lam, body) in enumerate(zip(items, lams, parts["bodies"])):
        color = f"C{i}"
        body.set_facecolor(color)
        body.set_alpha(0.4)
        x = positions[i] + rng.uniform(-0.08, 0.08, lam.size)
        certified = np.asarray(r.get("converged", [True] * lam.size), dtype=bool)
        ax.plot(x[certified], lam[certified], "o", color=color, markersize=3)
        ax.plot(x[~certified], lam[~certified], "o", mfc="none", color=color, markersize=3)
        if r.get("full_values"):
            ax.hlines(r["full_values"][0], positions[i] - 0.3, positions[i] + 0.3, color="black",
                      linestyle="--", label="full data" if i == 0 else None)  # fmt: skip
    ax.set_xticks(positions, [label or "" for label in labels])


def _weight_layers(result) -> list[dict]:
    """The layer dicts of a ``WeightSpectra``, its ``as_dict()`` or a JSON file of it."""
    if isinstance(result, str | os.PathLike):
        with open(result) as f:
            result = json.load(f)
    if hasattr(result, "as_dict"):
        result = result.as_dict()
    if not isinstance(result, dict) or not isinstance(result.get("layers"), list):
        raise ValueError(
            "Argument `results` must hold landscape.WeightSpectra, their as_dict() or JSON files "
            f"of them. Received: {type(result).__name__}."
        )
    return result["layers"]


def _plot_esd(ax: Axes, layer: dict, label: str | None, color, **kwargs) -> None:
    """One layer's ESD as a log-binned density on log-log axes, with its fitted tail."""
    lam = np.asarray(layer["singular_values"], np.float64).ravel() ** 2
    lam = lam[lam > 0]
    bins = (
        np.geomspace(lam.min(), lam.max(), max(10, min(60, lam.size // 5))) if lam.size > 1 else 2
    )
    density, edges = np.histogram(lam, bins=bins, density=True)
    centers = np.sqrt(edges[:-1] * edges[1:])
    shown = density > 0
    ax.plot(centers[shown], density[shown], "o-", ms=3, color=color, label=label, **kwargs)
    alpha, xmin, n_tail = layer["alpha"], layer["xmin"], layer["n_tail"]
    if n_tail and alpha is not None and np.isfinite(alpha):
        x = np.geomspace(xmin, lam.max(), 50)
        # p(x) = (α − 1)/xmin (x/xmin)^−α on the tail, times the tail's share of the ESD
        tail = (n_tail / lam.size) * (alpha - 1) / xmin * (x / xmin) ** (-alpha)
        ax.plot(x, tail, "--", color=color, label=f"α = {alpha:.2f} ± {layer['alpha_stderr']:.2f}")
        ax.axvline(xmin, color=color, lw=0.8, ls=":")


def plot_weight_spectra(
    results,
    *,
    layer: str | None = None,
    labels: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    **kwargs,
) -> Axes:
    """Weight spectra: α per layer of one or more models, or one layer's ESD with its fit.

    Without ``layer``: the power-law exponent α of each layer (with its standard error as an
    error bar), one series per result, layers in model order along x (those of the first
    result; a layer missing from another result is a gap). With ``layer``: that layer's
    empirical spectral density (the eigenvalues σ² of ``WᵀW``, log-binned) on log-log axes for
    each result, the fitted law ``∝ λ^-α`` drawn dashed from ``xmin`` (dotted line).

    Args:
        results: A ``landscape.WeightSpectra``, its ``as_dict()``, the path of a JSON file of
            it (``landscape weights --json``), or a sequence of these to compare.
        layer: The name of a layer whose ESD to draw. Defaults to None (α per layer).
        labels: A legend label per result. Defaults to None ("model 1", "model 2", ...).
        ax: Axes to draw on. Defaults to None (a new figure).
        title: A title, wrapped to the axes' width. Defaults to None (none).
        **kwargs: Passed on to ``ax.errorbar`` (α per layer) or ``ax.plot`` (the ESD).

    Returns:
        The ``Axes``.

    Raises:
        ValueError: a result in none of the forms above, ``labels`` of another length, or a
            ``layer`` some result does not have.
    """
    many = isinstance(results, list | tuple)
    tables = [_weight_layers(r) for r in (results if many else [results])]
    labels = list(labels) if labels is not None else [f"model {i + 1}" for i in range(len(tables))]
    if len(labels) != len(tables):
        raise ValueError(
            f"Argument `labels` must have one label per result ({len(tables)}). "
            f"Received: {len(labels)} labels."
        )
    if ax is None:
        wide = layer is None and len(tables[0]) > 8
        _, ax = plt.subplots(
            figsize=(max(FIGSIZE[0], 0.45 * len(tables[0])) if wide else FIGSIZE[0], FIGSIZE[1])
        )
    if layer is None:
        _plot_alphas(ax, tables, labels, **kwargs)
    else:
        for i, (table, label) in enumerate(zip(tables, labels)):
            found = [row for row in table if row["name"] == layer]
            if not found:
                raise ValueError(
                    f"Argument `layer` must name a layer of every result. Received: "
                    f"layer={layer!r}; {label} has {[row['name'] for row in table]}."
                )
            _plot_esd(ax, found[0], label if len(tables) > 1 else None, f"C{i}", **kwargs)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue λ of WᵀW")
        ax.set_ylabel("density")
        ax.legend(loc="best", fontsize="small")
    if title:
        fit_title(ax, title)
    return ax


def _plot_alphas(ax: Axes, tables: list[list[dict]], labels: list[str], **kwargs) -> None:
    names = [row["name"] for row in tables[0]]
    x = np.arange(len(names), dtype=np.float64)
    width = 0.6 / max(len(tables), 1)
    for i, (table, label) in enumerate(zip(tables, labels)):
        rows = {row["name"]: row for row in table}
        alpha = np.array([rows.get(n, {}).get("alpha", np.nan) for n in names], np.float64)
        err = np.array([rows.get(n, {}).get("alpha_stderr", np.nan) for n in names], np.float64)
        shift = (i - (len(tables) - 1) / 2) * width
        ax.errorbar(x + shift, alpha, yerr=np.where(np.isfinite(err), err, 0.0), fmt="o",
                    capsize=2, label=label, **kwargs)  # fmt: skip
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize="small")
    ax.set_ylabel("power-law exponent α of the ESD")
    ax.legend(loc="best", fontsize="small")
