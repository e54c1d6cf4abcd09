"""Figures: every kind draws something, honours ax=, log scales, non-square grids, NaN gaps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

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
