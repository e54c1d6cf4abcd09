"""The private Keras attributes ``landscape`` reads, in one place, each checked and tested.

Keras 3 has no public way to reach the loss and metrics a model was compiled with, nor the mask
a layer attaches to its output tensor. ``Objective`` needs all three to measure exactly what
``model.evaluate`` reports. Loading a model in a worker process needs Keras's counters of
automatic layer names, so that its variable paths are the coordinator's. Checked with Keras
3.15; ``tests/test_compat.py`` fails if a name moves, instead of a silent fallback.
"""

from __future__ import annotations

import collections
from typing import Any, NamedTuple

import keras
from keras.src.backend.common import global_state
from keras.src.backend.common.masking import get_keras_mask
from keras.src.trainers.compile_utils import CompileLoss


class FlatLoss(NamedTuple):
    """One term of a compiled loss: ``weight · loss(y_true[path], y_pred[path])``."""

    path: tuple
    loss: keras.losses.Loss
    weight: float | None
    name: str


def _private(obj: Any, name: str):
    if not hasattr(obj, name):
        raise RuntimeError(
            f"This Keras version ({keras.__version__}) has no `{type(obj).__name__}.{name}`, "
            "which landscape reads to reproduce the compiled loss; please report it."
        )
    return getattr(obj, name)


def compiled_loss(model: keras.Model) -> CompileLoss | None:
    """The loss object ``model.compile(loss=..., loss_weights=...)`` made, or None."""
    return _private(model, "_compile_loss")


def compiled_metrics(model: keras.Model) -> keras.metrics.Metric | None:
    """The metric object ``model.compile(metrics=..., weighted_metrics=...)`` made, or None."""
    return _private(model, "_compile_metrics")


def make_compile_loss(loss, output_names) -> CompileLoss:
    """A loss object built from ``loss`` exactly as ``model.compile(loss=loss)`` would."""
    return CompileLoss(loss, loss_weights=None, output_names=output_names)


def flat_losses(compile_loss: CompileLoss) -> list[FlatLoss]:
    """The resolved per-output losses of a built ``CompileLoss``."""
    if not compile_loss.built:
        raise RuntimeError("The compiled loss is not built yet.")
    return [FlatLoss(*entry) for entry in _private(compile_loss, "_flat_losses")]


def build_structures(compile_loss: CompileLoss) -> tuple[Any, Any]:
    """(y_true, y_pred) structures the built ``CompileLoss`` resolves its paths in."""
    return (
        _private(compile_loss, "_y_true_build_structure"),
        _private(compile_loss, "_y_pred_build_structure"),
    )


def keras_mask(tensor):
    """The Keras mask attached to ``tensor`` by a masking layer (or ``ignore_class``), or None."""
    return get_keras_mask(tensor)


_NAME_UIDS = "object_name_uids"


def layer_name_counters() -> dict[str, int]:
    """Keras's per-process counters behind automatic layer names (``dense``, ``dense_1``)."""
    return dict(global_state.get_global_attribute(_NAME_UIDS) or {})


def set_layer_name_counters(counters: dict[str, int]) -> None:
    """Replace the counters (a ``defaultdict(int)``, as Keras keeps them)."""
    global_state.set_global_attribute(_NAME_UIDS, collections.defaultdict(int, counters))
