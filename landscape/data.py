"""Data sets: the embedded MNIST subset (offline default), ``keras.datasets`` names, ``.npz`` files.

Every loader returns ``((x_train, y_train), (x_test, y_test))`` with images as float32 in [0, 1]
(a trailing channel axis added to grey-scale images) and labels as int32 vectors.
"""

from __future__ import annotations

import importlib.resources
import os
from typing import Literal

import numpy as np

KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
EMBEDDED = "embedded"
DatasetName = Literal["embedded", "mnist", "fashion_mnist", "cifar10", "cifar100"]

Arrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _prepare(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    x = x.astype(np.float32)
    if x.size and x.max() > 1.0:
        x /= 255.0
    return x, np.asarray(y).reshape(-1).astype(np.int32)


def _from_npz(path: str | os.PathLike) -> Arrays:
    keys = ("x_train", "y_train", "x_test", "y_test")
    if not os.path.isfile(path):
        raise ValueError(f"Data file {os.fspath(path)!r} does not exist.")
    with np.load(path) as f:
        missing = [k for k in keys if k not in f.files]
        if missing:
            raise ValueError(
                f"Data file {os.fspath(path)!r} lacks the arrays {missing}; an .npz needs "
                f"{', '.join(keys)}."
            )
        arrays = {k: f[k] for k in keys}
    return (
        _prepare(arrays["x_train"], arrays["y_train"]),
        _prepare(arrays["x_test"], arrays["y_test"]),
    )


def embedded_path() -> str:
    """Path of the embedded MNIST subset (600 train / 100 test images per class)."""
    return str(importlib.resources.files("landscape") / "_data" / "mnist_small.npz")


def load_embedded() -> Arrays:
    """Load the embedded MNIST subset: 6,000 train and 1,000 test images, 28x28x1, 10 classes.

    Made by ``scripts/make_embedded_data.py`` from the full MNIST; works offline.
    """
    return _from_npz(embedded_path())


def load_dataset(name: str = EMBEDDED) -> Arrays:
    """Load a data set by name or path.

    Args:
        name: ``"embedded"`` (the default, offline), a ``keras.datasets`` name
            (``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"``; downloaded once by
            Keras) or the path of an ``.npz`` with ``x_train, y_train, x_test, y_test``.
            Defaults to ``"embedded"``.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``, images float32 in [0, 1] with a channel axis,
        labels int32.

    Raises:
        ValueError: an unknown name, a missing or malformed file, or a download that failed.
    """
    if name == EMBEDDED:
        return load_embedded()
    if name in KERAS_DATASETS:
        import keras

        try:
            (xt, yt), (xv, yv) = getattr(keras.datasets, name).load_data()
        except Exception as err:  # urllib/HTTP/OS errors all mean "could not download"
            raise ValueError(
                f"Could not download the {name!r} data set ({type(err).__name__}); when offline, "
                f"pass an .npz file with x_train, y_train, x_test, y_test instead."
            ) from None
        return _prepare(xt, yt), _prepare(xv, yv)
    if str(name).endswith(".npz") or os.path.sep in str(name):
        return _from_npz(name)
    raise ValueError(
        f"Unknown data set {name!r}; expected one of {(EMBEDDED, *KERAS_DATASETS)} or an .npz path."
    )
