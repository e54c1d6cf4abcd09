"""Grid points whose model state is invalid: variances that a direction moves below zero.

A direction that moves non-trainable state (``interpolation_direction`` with ``include="all"``,
the default, moves BatchNorm's moving statistics) can carry it outside its domain: between two
models a moving variance is a convex combination of two non-negative ones, but beyond the
segment (α < 0 or α > 1) it can fall below zero. The network then computes
(x − μ) / √(σ² + ε) with σ² + ε < 0 or near 0: a spike in the loss that is exactly what the model
computes there, and meaningless. ``compute_surface`` counts such entries per grid point, stores
the counts in the surface file's ``flags`` group and logs one sentence; the plots mark the points.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import keras
import numpy as np

from sam import _compat

logger = logging.getLogger("landscape")

NEGATIVE_VARIANCE = "negative_moving_variance"
# (layer class, attribute) of each state that must stay >= 0: BatchNormalization's moving
# variance and a Normalization layer's adapted variance.
VARIANCES = ((keras.layers.BatchNormalization, "moving_variance"),
             (keras.layers.Normalization, "variance"))  # fmt: skip


def _variances(model: keras.Model) -> list:
    """Every variance variable of ``model`` (nested layers included)."""
    found = []
    for layer in _compat.all_layers(model):
        for cls, attr in VARIANCES:
            v = getattr(layer, attr, None) if isinstance(layer, cls) else None
            if isinstance(v, keras.Variable):
                found.append(v)
    return found


def invalid_points(model: keras.Model, directions: Sequence, x: np.ndarray, y) -> dict:
    """``{NEGATIVE_VARIANCE: counts}`` when a direction moves a variance below zero, else {}.

    Args:
        model: The model at the origin of the grid.
        directions: The surface's ``Direction`` objects (keyed as ``variable_keys(model)``).
        x: The grid's α.
        y: The grid's β, or None (1D).

    Returns:
        The number of variance entries below zero at each grid point (shape of the surface),
        under ``NEGATIVE_VARIANCE``; an empty dict when no point has one.
    """
    from landscape.directions import variable_keys

    keys = variable_keys(model)
    grids = np.meshgrid(x, y) if y is not None else [np.asarray(x)]
    shape = grids[0].shape
    counts = np.zeros(shape, np.int64)
    for v in _variances(model):
        moves = [np.asarray(d.arrays.get(keys.get(id(v), v.path), 0.0), np.float64).ravel()
                 for d in directions]  # fmt: skip
        if not any(np.any(m != 0) for m in moves):
            continue
        w = np.asarray(keras.ops.convert_to_numpy(v), np.float64).ravel()
        for idx in np.ndindex(*shape):
            state = w + sum(g[idx] * m for g, m in zip(grids, moves))
            counts[idx] += int(np.count_nonzero(state < 0))
    return {NEGATIVE_VARIANCE: counts} if counts.any() else {}


def sentence(flags: dict, x: np.ndarray, y, directions: Sequence) -> str | None:
    """'7 of 21 points beyond the segment have negative BatchNorm moving variances; ...'."""
    counts = flags.get(NEGATIVE_VARIANCE)
    if counts is None:
        return None
    bad = int(np.count_nonzero(counts))
    kinds = [getattr(d, "metadata", {}).get("kind") for d in directions]
    if y is None and kinds == ["interpolation"]:
        beyond = int(np.count_nonzero((np.asarray(x) < 0) | (np.asarray(x) > 1)))
        where = f"{bad} of {beyond} points beyond the segment"
    else:
        where = f"{bad} of {counts.size} grid points"
    verb = "has" if bad == 1 else "have"
    return (
        f"{where} {verb} negative BatchNorm moving variances (the model computes a meaningless "
        f"loss there); they are flagged (surface flags '{NEGATIVE_VARIANCE}')."
    )
