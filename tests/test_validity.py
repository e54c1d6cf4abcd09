"""Points whose interpolated model state is invalid (negative BatchNorm moving variances) are
counted, stored in the surface file, logged in one sentence and marked on the plots."""

from __future__ import annotations

import logging

import keras
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import landscape  # noqa: E402
from landscape import _validity  # noqa: E402
from landscape.surface import Surface  # noqa: E402

GRID = "-1:2:7"  # α = -1, -0.5, 0, 0.5, 1, 1.5, 2


def _bn_model(variance):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    h = keras.layers.Dense(2, name="dense")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h))
    model.get_layer("bn").moving_variance.assign(np.asarray(variance, np.float32))
    return model


@pytest.fixture(scope="module")
def pair():
    # moving variances a = (1, 1), b = (4, 2.5): 1 + 3α < 0 for α < -1/3, 1 + 1.5α < 0 for α < -2/3
    a, b = _bn_model([1.0, 1.0]), _bn_model([4.0, 2.5])
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(16, 3)).astype("float32"), rng.normal(size=(16, 2)).astype("float32"))
    return a, b, landscape.Objective(a, data, "mse", batch_size=16, metrics=())


def _by_hand(alpha):
    """Negative entries of (1, 1) + α (3, 1.5), counted with NumPy."""
    state = np.array([1.0, 1.0])[None, :] + np.asarray(alpha)[:, None] * np.array([3.0, 1.5])
    return (state < 0).sum(axis=1)


def test_negative_moving_variances_are_flagged_stored_and_logged(pair, tmp_path, caplog):
    a, b, objective = pair
    d = landscape.interpolation_direction(a, b)
    path = tmp_path / "line.h5"
    with caplog.at_level(logging.WARNING, logger="landscape"):
        surface = landscape.compute_surface(objective, [d], x=GRID, path=path, verbose=0)
    alpha = np.linspace(-1, 2, 7)
    expected = _by_hand(alpha)
    assert expected.tolist() == [2, 1, 0, 0, 0, 0, 0]
    np.testing.assert_array_equal(surface.flags[_validity.NEGATIVE_VARIANCE], expected)
    loaded = Surface.load(str(path))
    np.testing.assert_array_equal(loaded.flags[_validity.NEGATIVE_VARIANCE], expected)
    assert set(loaded.values) == {"train_loss"}  # the flags are no metric
    sentences = [r.getMessage() for r in caplog.records if "BatchNorm" in r.getMessage()]
    assert sentences == [
        "2 of 4 points beyond the segment have negative BatchNorm moving variances (the model "
        "computes a meaningless loss there); they are flagged (surface flags "
        "'negative_moving_variance')."
    ]
    ax = landscape.plot_surface(loaded, kind="line")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "invalid state (2)" in labels
    marks = [ln for ln in ax.get_lines() if ln.get_label() == "invalid state (2)"][0]
    np.testing.assert_allclose(marks.get_xdata(), [-1.0, -0.5])


def test_2d_surfaces_mark_flagged_points_and_valid_ones_carry_no_flags(pair, tmp_path):
    a, b, objective = pair
    d = landscape.interpolation_direction(a, b)
    r = landscape.random_direction(a, norm="filter", ignore="biasbn", seed=1)
    flags = _validity.invalid_points(a, [d, r], np.linspace(-1, 2, 7), np.array([-1.0, 0.0]))
    counts = flags[_validity.NEGATIVE_VARIANCE]
    assert counts.shape == (2, 7)  # the random direction leaves BatchNorm's statistics alone
    np.testing.assert_array_equal(counts, np.tile(_by_hand(np.linspace(-1, 2, 7)), (2, 1)))
    surface = Surface(np.linspace(-1, 2, 7), np.array([-1.0, 0.0]),
                      {"train_loss": np.ones((2, 7))}, flags=flags)  # fmt: skip
    ax = landscape.plot_surface(surface, kind="heatmap")
    assert "invalid state (4)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert _validity.invalid_points(a, [r], np.linspace(-1, 2, 7), None) == {}
    path = tmp_path / "valid.h5"  # a file without flags (as every file before them) has none
    landscape.compute_surface(objective, [r], x="-1:1:3", path=path, verbose=0)
    assert Surface.load(str(path)).flags == {}
