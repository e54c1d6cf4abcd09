"""Data sets: the embedded MNIST subset (offline default), ``keras.datasets`` names, ``.npz`` files.

Two conventions:

- **Images** (the embedded subset and the ``keras.datasets`` names, or ``images=True``): x as
  float32 in [0, 1] (uint8 divided by 255), a trailing channel axis added to grey-scale
  ``(n, H, W)`` images, labels as int32 vectors. This is what the model zoo trains on.
- **Arrays as stored** (an ``.npz`` file, by default): x, y and sample weights keep their shapes
  and kinds. Only two things change them: x of dtype uint8 is taken for 8-bit images and
  divided by 255 (``Dataset.notes`` says so), and ``scale`` divides x by a number given by the
  caller. Floating-point arrays become ``keras.config.floatx()`` (float32), as Keras's own
  ``fit``/``evaluate`` make them; integer arrays (class labels, token ids) keep their dtype.

An ``.npz`` holds ``x_train, y_train, x_test, y_test`` and, optionally, ``sample_weight_train``
and ``sample_weight_test`` (one weight per example), which the loss then weights by, as
``model.evaluate(x, y, sample_weight=w)`` does.

``match_model`` fits a data set to a model's input: shapes must agree (``None`` matches any
size), except that x one axis short of an input whose last size is 1 — ``(n, 28, 28)`` for an
input ``(28, 28, 1)``, ``(n,)`` for ``(1,)`` — gets that trailing axis (Keras's own rule for
functional models), with a note.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import math
import os
import zipfile
from collections.abc import Sequence
from typing import Literal

import numpy as np

from landscape import _checks

logger = logging.getLogger("landscape")

KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
EMBEDDED = "embedded"
DatasetName = Literal["embedded", "mnist", "fashion_mnist", "cifar10", "cifar100"]

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_WEIGHT_KEYS = ("sample_weight_train", "sample_weight_test")
UINT8_NOTE = "x: uint8 images scaled to [0, 1]"

Arrays = tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A loaded data set and what loading did to it.

    Attributes:
        train: ``(x, y)`` or ``(x, y, sample_weight)`` of the training split.
        test: The same for the test split.
        notes: One line per change made to the stored arrays (scaling, an added axis), for
            the user to read.
        name: The name or path it was loaded from.
    """

    train: tuple[np.ndarray, ...]
    test: tuple[np.ndarray, ...]
    notes: tuple[str, ...] = ()
    name: str = ""

    def arrays(self) -> Arrays:
        """``(train, test)``, what ``load_dataset`` returns."""
        return self.train, self.test


def check_scale(scale: float | None) -> float | None:
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, int | float | np.number):
        raise ValueError(f"Argument `scale` must be a positive number. Received: scale={scale!r}.")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"Argument `scale` must be a positive number. Received: scale={scale!r}.")
    return float(scale)


def _floatx() -> str:
    import keras

    return keras.config.floatx()


def _as_floatx(a: np.ndarray) -> np.ndarray:
    """Floating arrays in Keras's float type (as ``fit``/``evaluate`` cast them); others as is."""
    if np.issubdtype(a.dtype, np.floating):
        floatx = _floatx()
        return a if a.dtype == floatx else a.astype(floatx)
    return a


def _scaled_x(x: np.ndarray, scale: float | None, notes: list[str]) -> np.ndarray:
    """x divided by ``scale``, or uint8 images by 255, in floatx; other x as stored."""
    if scale is not None:
        note = f"x: divided by {scale:g}"
        if note not in notes:
            notes.append(note)
        return (x.astype(np.float64) / scale).astype(_floatx())
    if x.dtype == np.uint8:
        if UINT8_NOTE not in notes:
            notes.append(UINT8_NOTE)
        return (x.astype(np.float32) / np.float32(255.0)).astype(_floatx())
    return _as_floatx(x)


def _as_images(name: str, split: tuple[np.ndarray, ...], scale, notes) -> tuple[np.ndarray, ...]:
    """The image convention: x in [0, 1] with a channel axis, labels an int32 vector."""
    x, y, *w = split
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    x = _scaled_x(x, scale, notes)
    y = np.asarray(y)
    if y.size != len(x):
        raise ValueError(
            f"The data ({name}) has labels of shape {y.shape} for {len(x)} images; image "
            "classification needs one integer class per image."
        )
    return (x, y.reshape(-1).astype(np.int32), *(_as_floatx(np.asarray(v)) for v in w))


def _as_stored(split: tuple[np.ndarray, ...], scale, notes) -> tuple[np.ndarray, ...]:
    x, y, *w = split
    return (_scaled_x(x, scale, notes), _as_floatx(y), *(_as_floatx(v) for v in w))


def _read_npz(path: str) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """The stored arrays of an ``.npz``: ``(x, y[, w])`` per split, sizes checked."""
    if not os.path.isfile(path):
        raise ValueError(f"Data file {path!r} does not exist.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise ValueError(
            f"Data file {path!r} is not an .npz archive (np.savez) of arrays {', '.join(NPZ_KEYS)}."
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"Data file {path!r} holds one array; an .npz archive (np.savez) needs "
            f"{', '.join(NPZ_KEYS)}."
        )
    with archive as f:
        missing = [k for k in NPZ_KEYS if k not in f.files]
        if missing:
            raise ValueError(
                f"Data file {path!r} lacks the arrays {missing}; an .npz needs "
                f"{', '.join(NPZ_KEYS)} (it has {sorted(f.files)})."
            )
        arrays = {}
        for key in (*NPZ_KEYS, *NPZ_WEIGHT_KEYS):
            if key not in f.files:
                continue
            try:
                arrays[key] = f[key]
            except ValueError:
                raise ValueError(
                    f"Data file {path!r}: the array {key!r} holds Python objects; store "
                    "numeric arrays."
                ) from None
    splits = []
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        w = arrays.get(f"sample_weight_{part}")
        if x.ndim == 0 or y.ndim == 0:
            raise ValueError(f"Data file {path!r}: x_{part} and y_{part} must have a sample axis.")
        if len(y) != len(x):
            raise ValueError(
                f"Data file {path!r}: x_{part} has {len(x)} samples but y_{part} has {len(y)}."
            )
        if w is not None and (w.size != len(x) or not np.issubdtype(w.dtype, np.number)):
            raise ValueError(
                f"Data file {path!r}: sample_weight_{part} must hold one number per sample "
                f"({len(x)}); it has shape {w.shape} and dtype {w.dtype}."
            )
        splits.append((x, y) if w is None else (x, y, w.reshape(-1)))
    return splits[0], splits[1]


def _keras_dataset(name: str):
    import keras

    try:
        return getattr(keras.datasets, name).load_data()
    except Exception as err:  # urllib/HTTP/OS errors all mean "could not download"
        raise ValueError(
            f"Could not download the {name!r} data set ({type(err).__name__}); when offline, "
            f"pass an .npz file with x_train, y_train, x_test, y_test instead."
        ) from None


def embedded_path() -> str:
    """Path of the embedded MNIST subset (600 train / 100 test images per class)."""
    return str(importlib.resources.files("landscape") / "_data" / "mnist_small.npz")


def is_file_name(name: str | os.PathLike) -> bool:
    """Whether ``name`` names an ``.npz`` file: it ends in ``.npz``, has a path separator or is
    an existing file (anything else must be ``"embedded"`` or a ``keras.datasets`` name)."""
    name = os.fspath(name)
    if name == EMBEDDED or name in KERAS_DATASETS:
        return False
    return name.endswith(".npz") or os.path.sep in name or os.path.isfile(name)


def check_data_name(name: str | os.PathLike) -> str:
    """``name`` as a str if ``read_dataset`` can read it: ``"embedded"``, a ``keras.datasets``
    name or an existing file; checked without reading it (the CLI checks before TensorFlow
    loads).

    Raises:
        ValueError: An unknown name or a missing file.
    """
    name = os.fspath(name)
    if name == EMBEDDED or name in KERAS_DATASETS:
        return name
    if not is_file_name(name):
        raise ValueError(
            f"Unknown data set {name!r}; expected one of {(EMBEDDED, *KERAS_DATASETS)} or an "
            ".npz path."
        )
    if not os.path.isfile(name):
        raise ValueError(f"Data file {name!r} does not exist.")
    return name


def read_dataset(
    name: str | os.PathLike = EMBEDDED, *, scale: float | None = None, images: bool | None = None
) -> Dataset:
    """Load a data set by name or path, with notes on what loading changed.

    Args:
        name: ``"embedded"`` (the default, offline), a ``keras.datasets`` name (``"mnist"``,
            ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"``; downloaded once by Keras) or
            the path of an ``.npz`` with ``x_train, y_train, x_test, y_test`` and optionally
            ``sample_weight_train``, ``sample_weight_test``. Defaults to ``"embedded"``.
        scale: Divide x by this number (e.g. 255 for float images in [0, 255]). Defaults to
            None: only uint8 x is scaled (by 255).
        images: Apply the image convention (x in [0, 1] with a channel axis, labels an int32
            vector). Defaults to None: True for the embedded and ``keras.datasets`` sets,
            False (arrays as stored) for an ``.npz``.

    Returns:
        A ``Dataset``.

    Raises:
        ValueError: an unknown name, a missing or malformed file, or a download that failed.
    """
    scale = check_scale(scale)
    name = check_data_name(name)
    if name == EMBEDDED:
        splits = _read_npz(embedded_path())
    elif name in KERAS_DATASETS:
        splits = _keras_dataset(name)
    else:
        splits = _read_npz(name)
    if images is None:
        images = not is_file_name(name)
    notes: list[str] = []
    if images:
        train, test = (_as_images(name, s, scale, notes) for s in splits)
    else:
        train, test = (_as_stored(s, scale, notes) for s in splits)
    if not is_file_name(name):  # the named sets are known to be 8-bit images
        notes = [n for n in notes if n != UINT8_NOTE]
    weighted = [
        f"sample_weight_{part}" for part, s in (("train", train), ("test", test)) if len(s) == 3
    ]
    if weighted:
        notes.append(f"sample weights: {', '.join(weighted)}")
    return Dataset(train, test, tuple(notes), name)


def load_dataset(
    name: str | os.PathLike = EMBEDDED, *, scale: float | None = None, images: bool | None = None
) -> Arrays:
    """Load a data set by name or path (``read_dataset`` without the notes, which are logged).

    Args:
        name: ``"embedded"`` (the default, offline), a ``keras.datasets`` name
            (``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"``; downloaded once by
            Keras) or the path of an ``.npz`` with ``x_train, y_train, x_test, y_test`` (and
            optionally ``sample_weight_train``, ``sample_weight_test``). Defaults to
            ``"embedded"``.
        scale: Divide x by this number. Defaults to None: only uint8 x is scaled (by 255).
        images: The image convention; None: for the named sets, not for an ``.npz``. See
            ``read_dataset``. Defaults to None.

    Returns:
        ``((x_train, y_train), (x_test, y_test))`` — with a third entry per split, the sample
        weights, when the ``.npz`` has them. Named sets: images float32 in [0, 1] with a
        channel axis, labels int32. An ``.npz``: the arrays as stored (see the module notes).

    Raises:
        ValueError: an unknown name, a missing or malformed file, or a download that failed.
    """
    dataset = read_dataset(name, scale=scale, images=images)
    for note in dataset.notes:
        logger.info("%s", note)
    return dataset.arrays()


def load_embedded() -> Arrays:
    """Load the embedded MNIST subset: 6,000 train and 1,000 test images, 28x28x1, 10 classes.

    Made by ``scripts/make_embedded_data.py`` from the full MNIST; works offline.
    """
    return read_dataset(EMBEDDED).arrays()


def flip_labels(
    y, fraction: float, *, num_classes: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric label noise: exactly ``round(fraction · n)`` labels changed to another class.

    The examples to corrupt are drawn without replacement and each gets a class drawn uniformly
    from the *other* classes, so ``fraction`` is the fraction of wrong labels (the noise model of
    the label-noise experiments in SAM's paper, Foret et al. 2021, arXiv 2010.01412, section 3.3,
    except that there a new label may equal the old one).

    Args:
        y: Integer class labels, shape ``(n,)`` (or ``(n, 1)``).
        fraction: Fraction of labels to corrupt, in [0, 1].
        num_classes: Number of classes. Defaults to None: ``max(y) + 1``.
        seed: Seed of the choice of examples and of their new labels. Defaults to 0.

    Returns:
        ``(y_noisy, flipped)``: the labels with y's shape and dtype, and a boolean mask of shape
        ``(n,)`` marking the corrupted examples.

    Raises:
        ValueError: ``y`` not integer class labels, ``fraction`` outside [0, 1], or fewer than
            two classes.
    """
    y = np.asarray(y)
    fraction = _checks.proportion("fraction", fraction)
    if not np.issubdtype(y.dtype, np.integer) or y.ndim not in (1, 2) or y.size != len(y):
        raise ValueError(
            "Argument `y` must be integer class labels of shape (n,) or (n, 1). "
            f"Received: dtype {y.dtype}, shape {y.shape}."
        )
    labels = y.reshape(-1)
    classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if classes < 2 or labels.min() < 0 or labels.max() >= classes:
        raise ValueError(
            "Argument `num_classes` must exceed every label and be at least 2. "
            f"Received: num_classes={num_classes}, labels in [{labels.min()}, {labels.max()}]."
        )
    rng = np.random.default_rng(seed)
    flipped = np.zeros(labels.size, dtype=bool)
    flipped[rng.choice(labels.size, size=round(fraction * labels.size), replace=False)] = True
    noisy = labels.copy()
    shift = rng.integers(1, classes, size=int(flipped.sum()))  # never 0: always another class
    noisy[flipped] = (labels[flipped] + shift) % classes
    return noisy.reshape(y.shape).astype(y.dtype), flipped


# ------------------------------------------------------------------------ fitting a model
def model_input_shape(model) -> tuple | None:
    """The shape of one example the model takes, or None when it has several or none known."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):  # a subclassed model built without an Input
        return None
    if isinstance(shape, tuple) and all(d is None or isinstance(d, int) for d in shape):
        return tuple(shape[1:])
    return None


def _model_input_dtype(model) -> str | None:
    """The dtype of the model's single input, or None when it has several or none known."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        return None
    return str(getattr(inputs[0].dtype, "name", inputs[0].dtype))


def _fits(shape: Sequence[int], expected: Sequence[int | None]) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def _shape_text(shape: Sequence[int | None]) -> str:
    return str(tuple(shape))


def match_model(dataset: Dataset, model) -> Dataset:
    """``dataset`` with x fitted to ``model``'s input, or a ValueError naming both shapes.

    x must have the model's input shape per example (``None`` matches any size), and uint8 x
    (scaled as images) is refused for a model with an integer input. The one change made: x
    one axis short of an input whose last size is 1 (``(n, 28, 28)`` for an input
    ``(28, 28, 1)``) gets that trailing axis, with a note. Models with several inputs, or whose
    input is unknown (subclassed), are left to Keras.
    """
    expected = model_input_shape(model)
    if expected is None:
        return dataset
    dtype = _model_input_dtype(model)
    if UINT8_NOTE in dataset.notes and dtype is not None and dtype.startswith(("int", "uint")):
        raise ValueError(
            f"The data ({dataset.name}) has uint8 x, which is read as 8-bit images and scaled "
            f"to [0, 1], but the model's input is {dtype} (token ids?); store x as int32 or "
            "int64 to keep it as integers."
        )
    notes = list(dataset.notes)
    splits = []
    for split in (dataset.train, dataset.test):
        x, *rest = split
        shape = tuple(x.shape[1:])
        if not _fits(shape, expected):
            if not (expected and expected[-1] == 1 and _fits((*shape, 1), expected)):
                raise ValueError(
                    f"The data ({dataset.name}) has inputs of shape {_shape_text(shape)}; the "
                    f"model expects {_shape_text(expected)}."
                )
            x = x[..., None]
            note = (
                f"x: samples of shape {_shape_text(shape)} given a trailing axis to match the "
                f"model's input {_shape_text(expected)}"
            )
            if note not in notes:
                notes.append(note)
        splits.append((x, *rest))
    if len(notes) == len(dataset.notes):
        return dataset
    return dataclasses.replace(dataset, train=splits[0], test=splits[1], notes=tuple(notes))
