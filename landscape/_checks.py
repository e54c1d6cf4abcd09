"""One vocabulary of argument checks and mode names for ``landscape``.

Every mode argument is a ``Literal`` type defined here once; its allowed values (``options``),
the library's check (``choice``) and the CLI's ``click.Choice`` all come from it. Every check
raises one ``ValueError`` sentence naming the argument, the rule and the value, in Keras's words:
"Argument `k` must be an int >= 1. Received: k=0."

This module imports nothing heavy (numpy only, no TensorFlow), so the CLI can use it at start-up.
"""

from __future__ import annotations

import math
import numbers
import os
import typing
from typing import Any, Literal

import numpy as np

# ------------------------------------------------------------------------------ mode names
Norm = Literal["filter", "layer", "weight", "none"]  # direction normalization
Ignore = Literal["biasbn", "none"]
Include = Literal["trainable", "all"]
SharpnessNorm = Literal["l2", "linf"]
Method = Literal["lanczos", "arpack", "power"]
Which = Literal["largest", "magnitude", "smallest"]
Split = Literal["train", "test"]
HVPMode = Literal["auto", "forward_over_backward", "backward_over_backward"]
Precision = Literal["auto", "float32", "float64", "model"]  # the dtype an Objective computes in
Kind = Literal["contour", "contourf", "heatmap", "surface", "line"]
BatchPlotKind = Literal["histogram", "violin"]  # plot_batch_spectrum
Verbose = Literal["auto", 0, 1, 2]
ModelName = Literal["mlp", "cnn", "resnet"]  # the model zoo
# training recipes: SGD, SAM, ASAM and the SAM family (sam.variants)
OptimizerName = Literal["sgd", "sam", "asam", "gsam", "looksam", "friendlysam", "esam"]
Schedule = Literal["constant", "cosine"]  # learning-rate schedules of the recipes
StrategyName = Literal["default", "mirrored", "multi-worker"]  # tf.distribute
Backend = Literal["auto", "process", "dask", "mpi"]  # surface executors


def options(mode: Any) -> tuple:
    """The values a ``Literal`` mode type allows, in their order: ``options(Which)``."""
    values = typing.get_args(mode)
    if not values:
        raise TypeError(f"{mode!r} is not a Literal type.")
    return values


# ---------------------------------------------------------------------------------- checks
def choice(name: str, value: Any, mode: Any) -> Any:
    """``value`` if ``mode`` allows it, else "Unknown {name} {value!r}; expected one of ..."."""
    allowed = options(mode)
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {allowed}.")
    return value


def integer(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (numpy integers accepted, bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"Argument `{name}` must be an int >= {minimum}. Received: {name}={value!r}."
        )
    if value < minimum:
        raise ValueError(
            f"Argument `{name}` must be an int >= {minimum}. Received: {name}={value}."
        )
    return int(value)


def positive(name: str, value: Any) -> float:
    """``value`` as a finite float > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"Argument `{name}` must be a number > 0. Received: {name}={value!r}.")
    return float(value)


def fraction(name: str, value: Any) -> float:
    """``value`` as a float in the open interval (0, 1), e.g. a relative tolerance."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(f"Argument `{name}` must be in (0, 1). Received: {name}={value!r}.")
    return float(value)


def proportion(name: str, value: Any) -> float:
    """``value`` as a float in the closed interval [0, 1], e.g. a fraction of examples."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"Argument `{name}` must be in [0, 1]. Received: {name}={value!r}.")
    return float(value)


def boolean(name: str, value: Any) -> bool:
    """``value`` if it is a bool (or a numpy bool), as a bool."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"Argument `{name}` must be a bool. Received: {name}={value!r}.")
    return bool(value)


def model_file(path: Any) -> str:
    """``path`` as a str if it names an existing model file; a missing file, a directory, and
    above all a TensorFlow SavedModel directory (which Keras 3 cannot load as a model) are
    refused in one sentence that says what to do."""
    path = os.fspath(path)
    if os.path.isdir(path):
        saved = ("saved_model.pb", "saved_model.pbtxt")
        if any(os.path.isfile(os.path.join(path, name)) for name in saved):
            raise ValueError(
                f"Model {path!r} is a TensorFlow SavedModel directory, not a .keras model file: "
                "Keras 3 runs it only as a layer, keras.layers.TFSMLayer(path, "
                "call_endpoint='serving_default') in a keras.Model, whose weights no analysis "
                "can move (the SavedModel's graph holds them), so rebuild the model in Keras, "
                "load its weights, compile it and save it with model.save('model.keras')."
            )
        raise ValueError(f"Model file {path!r} is a directory, not a .keras model file.")
    if not os.path.isfile(path):
        raise ValueError(f"Model file {path!r} does not exist.")
    return path
