"""Figures: every kind draws, honours ax=, log scales, non-square grids, NaN gaps; stays legible."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import re  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from landscape import io  # noqa: E402
from landscape.plot import (  # noqa: E402
    plot_comparison,
    plot_spectrum,
    plot_surface,
    plot_trajectory,
)
from landscape.surface import Surface  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def bowl(nx=21, ny=13, scale=1.0, nan_corner=False):
    """A non-square 2D surface: loss = scale·(x² + 2y²) + 1e-6, accuracy falling off."""
    x, y = np.linspace(-1, 1, nx), np.linspace(-0.5, 0.5, ny)
    xx, yy = np.meshgrid(x, y)
    loss = scale * (xx**2 + 2 * yy**2) + 1e-6
    values = {"train_loss": loss, "train_acc": 1 - loss / loss.max(), "test_loss": 1.1 * loss}
    if nan_corner:
        for v in values.values():
            v[-4:, -6:] = np.nan  # not computed yet: the top-right corner
    return Surface(x, y, values)


def line():
    x = np.linspace(-1, 1, 31)
    values = {
        "train_loss": x**2 + 0.1,
        "test_loss": x**2 + 0.2,
        "train_acc": 1 - x**2 / 2,
        "test_acc": 0.9 - x**2 / 2,
    }
    return Surface(x, None, values)


def pixels(ax):
    fig = ax.figure
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


def is_drawn(ax, painted_share=0.3):
    """Not blank: the axes area is mostly painted, in several colours."""
    img = pixels(ax)
    box = ax.get_window_extent()
    h = img.shape[0]
    crop = img[int(h - box.y1) : int(h - box.y0), int(box.x0) : int(box.x1)]
    painted = (crop != 255).any(axis=-1).mean()
    return len(np.unique(crop.reshape(-1, 3), axis=0)) >= 5 and painted > painted_share


@pytest.mark.parametrize("kind", ["contour", "contourf", "heatmap", "surface"])
@pytest.mark.parametrize("log", [False, True])
def test_each_2d_kind_draws_something(kind, log):
    ax = plot_surface(bowl(), kind=kind, log=log)
    assert is_drawn(ax, painted_share=0.02 if kind == "contour" else 0.3)  # lines are thin
    assert ax.get_xlabel() == "α" and ax.get_ylabel() == "β"


def test_contour_has_the_levels_asked_for_and_labels():
    ax = plot_surface(bowl(), kind="contour", levels=9)
    cs = ax.collections[0]
    assert len(cs.levels) == 9
    assert len(ax.texts) > 0  # labelled levels
    ax = plot_surface(bowl(), kind="contour", levels=[0.1, 0.5, 1.0])
    np.testing.assert_allclose(ax.collections[0].levels, [0.1, 0.5, 1.0])


def test_log_levels_are_geometric_and_work_near_zero():
    ax = plot_surface(bowl(), kind="contourf", log=True, levels=7)
    levels = ax.collections[0].levels
    ratios = levels[1:] / levels[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)
    assert levels[0] == pytest.approx(1e-6)


def test_ax_is_honoured():
    fig, axes = plt.subplots(1, 2)
    out = plot_surface(bowl(), kind="heatmap", ax=axes[1])
    assert out is axes[1] and len(axes[1].collections) == 1 and not axes[0].collections
    fig3d = plt.figure()
    ax3d = fig3d.add_subplot(projection="3d")
    assert plot_surface(bowl(), kind="surface", ax=ax3d) is ax3d
    with pytest.raises(ValueError, match="projection='3d'"):
        plot_surface(bowl(), kind="surface", ax=axes[0])


def test_nan_points_are_gaps_not_zeros():
    surf = bowl(nan_corner=True)
    ax = plot_surface(surf, kind="heatmap", colorbar=False)
    mesh = ax.collections[0]
    mask = np.ma.getmaskarray(mesh.get_array()).reshape(surf.shape)
    assert mask[-4:, -6:].all() and not mask[:-4].any()
    # the corner renders as background (white), the rest does not
    img = pixels(ax)
    h = img.shape[0]
    for (x, y), blank in [((0.9, 0.45), True), ((-0.9, -0.45), False)]:
        px, py = ax.transData.transform((x, y))
        assert (img[int(h - py), int(px)] == 255).all() == blank
    ax = plot_surface(surf, kind="contourf", colorbar=False)
    img = pixels(ax)
    px, py = ax.transData.transform((0.9, 0.45))
    assert (img[int(h - py), int(px)] == 255).all()
    assert is_drawn(plot_surface(surf, kind="surface"))  # 3D with gaps is not blank


def test_line_kind_draws_loss_and_accuracy_on_twin_axes():
    ax = plot_surface(line(), kind="line")
    assert [ln.get_label() for ln in ax.lines] == ["train loss", "test loss"]
    twin = [a for a in ax.figure.axes if a is not ax][0]
    assert [ln.get_label() for ln in twin.lines] == ["train accuracy", "test accuracy"]
    assert ax.lines[1].get_linestyle() == "--"
    assert plot_surface(line(), kind="line", log=True).get_yscale() == "log"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "pie"}, "Unknown kind 'pie'"),
        ({"metric": "val_loss"}, "Unknown metric 'val_loss'"),
        ({"kind": "line"}, "1D surfaces"),
        ({"levels": 1}, "at least 2 levels"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_surface(bowl(), **kwargs)
    with pytest.raises(ValueError, match="kind='line'"):
        plot_surface(line(), kind="contour")


def test_reads_files_ours_and_loss_landscapes(tmp_path):
    import h5py

    path = tmp_path / "ll.h5"
    surf = bowl()
    with h5py.File(path, "w") as f:  # loss-landscape layout: (nx, ny), -1 = not computed
        f["xcoordinates"] = surf.x
        f["ycoordinates"] = surf.y
        z = surf.values["train_loss"].T.copy()
        z[0, 0] = -1
        f["train_loss"] = z
    ax = plot_surface(str(path), kind="heatmap")
    assert is_drawn(ax)
    assert np.ma.getmaskarray(ax.collections[0].get_array()).reshape(surf.shape)[0, 0]
    assert io is not None


def test_comparison_shares_levels_and_axes():
    sharp, wide = bowl(scale=10.0), bowl(nx=31, ny=31, scale=1.0)
    axes = plot_comparison([sharp, wide], titles=["SGD", "SAM"], kind="contourf")
    assert [a.get_title() for a in axes] == ["SGD", "SAM"]
    np.testing.assert_allclose(axes[0].collections[0].levels, axes[1].collections[0].levels)
    assert axes[0].get_xlim() == axes[1].get_xlim() and axes[0].get_ylim() == axes[1].get_ylim()
    assert axes[0].collections[0].levels[-1] == pytest.approx(sharp["train_loss"].max())
    lines = plot_comparison([line(), line()], titles=["a", "b"])
    assert lines[0].get_ylim() == lines[1].get_ylim()
    with pytest.raises(ValueError, match="2 titles"):
        plot_comparison([sharp], titles=["a", "b"])


def test_trajectory_draws_the_path_over_the_contour():
    class PCA:
        coordinates = np.array([[-0.8, 0.3], [-0.4, 0.2], [-0.1, 0.05], [0.0, 0.0]])
        explained_variance_ratio = np.array([0.8, 0.15])

    ax = plot_trajectory(PCA(), bowl())
    path = [ln for ln in ax.lines if ln.get_label() == "trajectory"][0]
    np.testing.assert_allclose(path.get_xydata(), PCA.coordinates)
    assert "80.0 %" in ax.get_xlabel() and ax.collections


def test_spectrum_uses_a_log_density_axis():
    class Spectrum:
        nodes = np.array([[0.0, 1.0, 10.0]])
        weights = np.array([[0.5, 0.3, 0.2]])

        def density(self, grid, *, sigma=None):
            s = sigma or 0.5
            z = (grid[:, None] - self.nodes[0]) / s
            return (self.weights[0] * np.exp(-0.5 * z**2)).sum(1) / (s * np.sqrt(2 * np.pi))

    ax = plot_spectrum(Spectrum())
    assert ax.get_yscale() == "log"
    x, y = ax.lines[0].get_xydata().T
    assert x.min() < 0 < 10 < x.max() and y.min() >= 1e-12
    np.testing.assert_allclose(y, np.maximum(Spectrum().density(x), 1e-12))


# ----------------------------------------------------------------------------- legibility
LONG = (
    "ResNet-20 on CIFAR-10 with 20% label noise, trained by SAM (rho=0.05) for 200 epochs: "
    "train loss along two filter-normalized random directions"
)
FILE_NAME = "resnet20_cifar10_noise0.2_sam_rho0.05_seed0_surface_51x51.h5"


def bowl51(shift=0.02, scale=2.3):
    """A 51 × 51 bowl whose levels near the minimum crowd on a log scale."""
    x = y = np.linspace(-1, 1, 51)
    xx, yy = np.meshgrid(x, y)
    return Surface(x, y, {"train_loss": scale * (xx**2 + 1.5 * yy**2) + shift})


def extent(artist):
    return artist.get_window_extent(artist.figure.canvas.get_renderer())


def inside(inner, outer, tol=1.0):
    return (
        inner.x0 >= outer.x0 - tol
        and inner.y0 >= outer.y0 - tol
        and inner.x1 <= outer.x1 + tol
        and inner.y1 <= outer.y1 + tol
    )


@pytest.mark.parametrize("log", [False, True])
def test_contour_labels_a_legible_subset_and_draws_every_level(log):
    from landscape.plot import LABEL_MIN_LENGTH, MAX_CONTOUR_LABELS, _longest_piece

    ax = plot_surface(bowl51(), kind="contour", log=log)
    ax.figure.canvas.draw()
    cs = ax.collections[0]
    assert len(cs.levels) == 15  # every level is drawn (the top one is the corners' points)
    assert all(len(p.vertices) for p in cs.get_paths()[:-1])
    labelled = sorted(set(cs.labelLevelList))
    assert 2 <= len(labelled) <= MAX_CONTOUR_LABELS
    index = [int(np.flatnonzero(cs.levels == level)[0]) for level in labelled]
    assert np.all(np.diff(index) >= 2)  # every other level at most: never neighbours
    if log:  # the small rings crowding the minimum carry no label
        assert min(index) >= 3
    for level, i in zip(labelled, index):  # each on a contour long enough to hold it
        label_width = 7 * 0.6 * len(f"{level:.3g}") * ax.figure.dpi / 72
        # (the label cut its ring open: the piece left is a label width and spacing shorter)
        assert _longest_piece(ax, cs.get_paths()[i]) >= (LABEL_MIN_LENGTH - 2) * label_width
    boxes = [extent(t) for t in cs.labelTexts]
    for i, a in enumerate(boxes):  # no two labels overlap
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b)
    assert all(inside(b, ax.bbox) for b in boxes)


def test_explicit_contour_levels_are_all_drawn_and_few_all_labelled():
    ax = plot_surface(bowl51(), kind="contour", levels=[0.5, 1.5, 3.0])
    cs = ax.collections[0]
    np.testing.assert_allclose(cs.levels, [0.5, 1.5, 3.0])
    assert sorted(set(cs.labelLevelList)) == [0.5, 1.5, 3.0]


def _check_titles_fit(fig, axes, titles):
    fig.canvas.draw()
    figure_box = fig.bbox
    texts = [ax.title for ax in axes]
    others = [a for a in fig.axes if a not in list(axes)]  # colour bars
    for ax, text, title in zip(axes, texts, titles):
        box = extent(text)
        assert inside(box, figure_box), (title, box, figure_box)
        assert box.width <= ax.bbox.width + 1.0  # wrapped to its axes: no neighbour reached
        for other in others:
            assert not box.overlaps(extent(other)), title
    for i, a in enumerate(texts):
        for b in texts[i + 1 :]:
            assert not extent(a).overlaps(extent(b))


@pytest.mark.parametrize("kind", ["contour", "contourf", "heatmap", "surface"])
def test_a_long_title_wraps_inside_the_figure(kind):
    ax = plot_surface(bowl(), kind=kind, title=LONG)
    _check_titles_fit(ax.figure, [ax], [LONG])
    assert "\n" in ax.get_title()  # wrapped at word boundaries (or hyphens), every word kept
    assert ax.get_title().replace("-\n", "-").split() == LONG.split()
    assert plot_surface(bowl(), kind=kind).get_title() == "train loss"  # short: unchanged


def test_long_titles_of_every_figure_function_fit_and_tight_saving_does_not_widen(tmp_path):
    import matplotlib.image as mpimg

    class PCA:
        coordinates = np.array([[-0.8, 0.3], [-0.4, 0.2], [0.0, 0.0]])
        explained_variance_ratio = np.array([0.8, 0.15])

    class Spectrum:
        nodes = np.array([[0.0, 1.0, 10.0]])

        def density(self, grid, *, sigma=None):
            return np.exp(-0.5 * (grid - 1.0) ** 2)

    axes = [
        plot_surface(line(), kind="line", title=LONG),
        plot_trajectory(PCA(), bowl(), title=LONG),
        plot_spectrum(Spectrum(), title=LONG),
        plot_surface(bowl(), kind="contourf", title="two\nlines"),
    ]
    for ax in axes:
        _check_titles_fit(ax.figure, [ax], [LONG])
    assert axes[-1].get_title() == "two\nlines"  # explicit breaks are kept
    panels = plot_comparison([bowl(scale=10.0), bowl()], titles=[LONG, FILE_NAME], kind="contourf")
    _check_titles_fit(panels[0].figure, panels, [LONG, FILE_NAME])
    assert panels[1].title.get_fontsize() < 12 or "\n" in panels[1].get_title()  # shrunk/broken
    assert panels[1].get_title().replace("\n", "") == FILE_NAME
    three_d = plot_comparison([bowl(), bowl()], titles=[LONG, LONG], kind="surface")
    _check_titles_fit(three_d[0].figure, three_d, [LONG, LONG])
    for ax in [*axes, panels[0], three_d[0]]:
        fig = ax.figure
        path = tmp_path / "tight.png"
        fig.savefig(path, dpi=50, bbox_inches="tight", pad_inches=0)
        height, width = mpimg.imread(path).shape[:2]
        assert width <= fig.get_figwidth() * 50 + 1 and height <= fig.get_figheight() * 50 + 1


def _zlabel_and_bar(ax):
    ax.figure.canvas.draw()
    bar = ax.collections[0].colorbar
    return extent(ax.zaxis.label), extent(bar.ax), bar


@pytest.mark.parametrize("figsize", [None, (6.4, 4.8), (4.0, 3.0)])
@pytest.mark.parametrize("log", [False, True])
def test_3d_colour_bar_stands_clear_of_the_z_label(figsize, log):
    surf = bowl51() if log else bowl51(scale=2300.0)  # long z tick labels ("4000")
    if figsize is None:
        ax = plot_surface(surf, kind="surface", log=log)  # its own figure (constrained layout)
    else:
        fig = plt.figure(figsize=figsize)  # a user's figure without a layout engine
        ax = plot_surface(surf, kind="surface", log=log, ax=fig.add_subplot(projection="3d"))
    zlabel, bar_box, _ = _zlabel_and_bar(ax)
    assert zlabel.width > 0 and not zlabel.overlaps(bar_box)
    assert zlabel.x1 < bar_box.x0


def test_3d_colour_bars_of_a_comparison_stand_clear_of_the_z_labels():
    axes = plot_comparison([bowl51(), bowl51(5.0), bowl51()], kind="surface", log=True)
    for ax in axes:
        zlabel, bar_box, _ = _zlabel_and_bar(ax)
        assert zlabel.x1 < bar_box.x0


def test_3d_log_scale_is_labelled_and_ticked_in_loss_units():
    ax = plot_surface(bowl51(), kind="surface", log=True)
    _, _, bar = _zlabel_and_bar(ax)
    assert bar.ax.get_ylabel() == "train loss (log scale)" == ax.get_zlabel()
    for axis in (bar.ax.yaxis, ax.zaxis):
        ticks = [(t.get_loc(), t.label1.get_text()) for t in axis.get_major_ticks()]
        ticks = [(p, s) for p, s in ticks if s]
        assert len(ticks) >= 3
        for position, text in ticks:  # a tick at log10(v) reads v
            assert float(text) == pytest.approx(10**position, rel=1e-3)
        values = [float(s) for _, s in ticks]
        assert set(values) <= {0.03, 0.1, 0.3, 1.0, 3.0}  # round values, 1-3 over two decades
    linear = plot_surface(bowl51(), kind="surface")
    _, _, bar = _zlabel_and_bar(linear)
    assert bar.ax.get_ylabel() == "train loss" == linear.get_zlabel()


def _marks(ax, name):
    return [ln for ln in ax.lines if ln.get_label().startswith(name)]


def test_line_marks_each_point_not_computed_and_each_non_finite_one():
    surf = line()
    surf.values["train_loss"][[3, 20]] = np.nan  # not computed yet
    surf = Surface(surf.x, None, surf.values)
    ax = plot_surface(surf, kind="line")
    (marks,) = _marks(ax, "not computed")
    assert marks.get_label() == "not computed (2)"
    np.testing.assert_allclose(marks.get_xdata(), surf.x[[3, 20]])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "not computed (2)" in legend and not _marks(ax, "non-finite")
    ax.figure.canvas.draw()  # drawn at the bottom of the axes, inside it, whatever the y-scale
    for px, py in marks.get_transform().transform(marks.get_xydata()):
        assert ax.bbox.y0 <= py <= ax.bbox.y0 + 0.05 * ax.bbox.height
        assert ax.bbox.x0 <= px <= ax.bbox.x1

    diverged = line()
    diverged.values["test_loss"][7] = np.inf  # computed, but the network diverged there
    ax = plot_surface(Surface(diverged.x, None, diverged.values), kind="line", log=True)
    (bad,) = _marks(ax, "non-finite")
    assert bad.get_label() == "non-finite (1)" and not _marks(ax, "not computed")
    np.testing.assert_allclose(bad.get_xdata(), [diverged.x[7]])

    clean = plot_surface(line(), kind="line")
    assert not _marks(clean, "not computed") and not _marks(clean, "non-finite")
    assert [t.get_text() for t in clean.get_legend().get_texts()] == [
        "train loss",
        "test loss",
        "train accuracy",
        "test accuracy",
    ]


# ---------------------------------------------------------------------- glitches of issue 28
PLAIN_NUMBER = r"^[−-]?\d+(\.\d+)?(e[+−-]?\d+)?$"  # "12", "0.52", "1e+03": no "×10¹", no TeX


def _shown(axis) -> list[str]:
    """The tick labels a reader sees on ``axis`` (major and minor, empty ones left out)."""
    axis.figure.canvas.draw()
    labels = axis.get_ticklabels(which="both")
    return [t.get_text() for t in labels if t.get_text() and t.get_visible()]


@pytest.mark.parametrize("base", [11.0, 2.3, 0.5])
def test_log_colour_bar_ticks_are_plain_numbers_one_label_each(base):
    x = np.linspace(-0.5, 0.5, 9)
    xx, yy = np.meshgrid(x, x)
    surface = Surface(x, x, {"train_loss": base + 0.4 * base * (xx**2 + yy**2)})  # < a decade
    for kind in ("heatmap", "contourf"):
        fig, ax = plt.subplots(layout="constrained")
        plot_surface(surface, kind=kind, log=True, ax=ax)
        bar = fig.axes[-1]
        shown = _shown(bar.yaxis)
        assert len(shown) >= 2 and all(re.match(PLAIN_NUMBER, t) for t in shown), (kind, shown)
        assert len(shown) == len(set(shown)) == len(bar.yaxis.get_majorticklocs()), shown


def _line_surface():
    a = np.linspace(-0.5, 1.5, 21)
    bump = 3 * (a - 0.5) ** 2
    values = {"train_loss": 1 + bump, "test_loss": 1.5 + bump, "train_acc": 0.9 - 0.1 * bump,
              "test_acc": 0.8 - 0.1 * bump}  # fmt: skip
    return Surface(a, None, values, {"directions_metadata": [{"kind": "interpolation"}]})


def test_line_plot_has_a_title_a_legend_clear_of_the_curves_and_plain_log_ticks():
    ax = plot_surface(_line_surface(), kind="line", log=True)
    fig = ax.figure
    fig.canvas.draw()
    assert (
        " ".join(ax.get_title().split())
        == "loss and accuracy from model a (α = 0) to model b (α = 1)"
    )
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "train loss", "test loss", "train accuracy", "test accuracy"]  # fmt: skip
    renderer = fig.canvas.get_renderer()
    box, axes_box = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert box.y1 <= axes_box.y0  # below the axes: over no curve
    shown = _shown(ax.yaxis)
    assert len(shown) >= 2 and all(re.match(PLAIN_NUMBER, t) for t in shown), shown
    assert plot_surface(_line_surface(), kind="line", title="").get_title() == ""


def _luminance(colour) -> float:
    r, g, b, _ = matplotlib.colors.to_rgba(colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_connection_plane_legend_entries_stand_out_from_its_background():
    from landscape.plot import plot_connection_plane

    plane = bowl(nx=11, ny=9)
    t = np.linspace(0, 1, 11)
    plane.metadata.update({"curve_x": -0.5 + t, "curve_y": 0.3 * np.sin(np.pi * t),
                           "points": {"w_a": (-0.5, 0.0), "bend": (0.0, 0.3),
                                      "w_b": (0.5, 0.0)}})  # fmt: skip
    ax = plot_connection_plane(plane)
    legend = ax.get_legend()
    face = _luminance(legend.get_frame().get_facecolor())
    for line in legend.get_lines():
        colour = line.get_color() if line.get_linestyle() != "None" else line.get_markerfacecolor()
        assert abs(_luminance(colour) - face) > 0.3, colour
    for text in legend.get_texts():
        assert abs(_luminance(text.get_color()) - face) > 0.3
