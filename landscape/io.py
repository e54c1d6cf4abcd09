"""The HDF5 surface file: the one module that knows its layout (plain h5py can read it).

Layout (compatible with tomgoldstein/loss-landscape's plotting scripts)::

    /xcoordinates             float64 [nx]
    /ycoordinates             float64 [ny]              (2D surfaces only)
    /train_loss, /train_acc   float64 [ny, nx] or [nx]  NaN = not computed yet
    /test_loss, /test_acc     (when the objective has test data)
    /computed                 uint8 [ny, nx] or [nx]    1 = evaluated (its values may be NaN:
                              a diverged point, e.g. negative BatchNorm variances far out)
    /directions/x, /directions/y   one dataset per variable (v0000, ...) and attribute ``paths``
    root attributes: format, format_version, package_version, created, model_fingerprint,
    directions_fingerprint, data_fingerprint, norm, ignore, seeds, directions_metadata (JSON) ...

Crash safety: the file at ``path`` is only ever replaced whole. Every write goes to
``path + ".tmp"`` (a fresh file, or a byte copy of the current one patched with the new values),
which is closed and then renamed over ``path`` with ``os.replace`` (atomic on POSIX). A process
killed at any moment leaves either the previous or the next complete file.

This module sits below ``landscape.directions``: it writes anything with ``arrays`` (``{key:
array}``) and ``metadata`` (a ``Direction``) and reads directions back as plain
``StoredDirection`` records (``Direction(*record)`` makes one). So reading a surface file needs
neither Keras nor TensorFlow.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import h5py
import numpy as np

from landscape._version import __version__

logger = logging.getLogger("landscape")

FORMAT = "sam-landscape/surface"
FORMAT_VERSION = 1
DIRECTION_NAMES = ("x", "y")
COMPUTED = "computed"  # mask of evaluated points; files without it: computed = no metric is NaN
JSON_ATTRS = ("seeds", "directions_metadata")  # stored as JSON text, read back as lists
LOSS_LANDSCAPE_MISSING = -1.0  # loss-landscape's placeholder for a point not computed


def _tmp(path: str) -> str:
    return os.fspath(path) + ".tmp"


def _attr(value: Any) -> Any:
    if value is None:
        return "None"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    return value


class StoredDirection(NamedTuple):
    """A direction as stored: ``Direction(*record)`` (``landscape.directions``) makes one."""

    arrays: dict[str, np.ndarray]
    metadata: dict[str, Any]


def _write_direction(group: h5py.Group, d: Any) -> None:
    """Write a ``Direction`` (anything with ``arrays`` and ``metadata``) into ``group``."""
    group.attrs["paths"] = json.dumps(list(d.arrays))
    group.attrs["metadata"] = json.dumps(d.metadata, default=str)
    for i, a in enumerate(d.arrays.values()):
        group.create_dataset(f"v{i:04d}", data=a)


def _read_direction(group: h5py.Group) -> StoredDirection:
    paths = json.loads(_decode(group.attrs["paths"]))
    metadata = json.loads(_decode(group.attrs.get("metadata", "{}")))
    return StoredDirection({p: group[f"v{i:04d}"][()] for i, p in enumerate(paths)}, metadata)


def save_directions(path: str, directions: Mapping[str, Any]) -> None:
    """Write ``{name: Direction}`` to groups ``directions/<name>`` of a new HDF5 file (atomic)."""
    tmp = _tmp(path)
    with h5py.File(tmp, "w") as f:
        g = f.create_group("directions")
        for name, d in directions.items():
            _write_direction(g.create_group(name), d)
    os.replace(tmp, path)


def read_directions(path: str) -> dict[str, StoredDirection]:
    """Every direction in the ``directions/`` group of ``path`` (in stored order), as records.

    ``Direction.load`` and the surface workers make ``Direction`` objects of them.
    """
    with h5py.File(path, "r") as f:
        if "directions" not in f:
            return {}
        g = f["directions"]
        return {name: _read_direction(g[name]) for name in g}


def create_surface_file(
    path: str,
    *,
    x: np.ndarray,
    y: np.ndarray | None,
    metrics: tuple[str, ...],
    directions: Sequence[Any],
    attrs: Mapping[str, Any],
) -> None:
    """Write a complete surface file with every metric NaN (atomically).

    ``directions`` are ``Direction`` objects (anything with ``arrays`` and ``metadata``).
    """
    shape = (len(x),) if y is None else (len(y), len(x))
    tmp = _tmp(path)
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        for k, v in attrs.items():
            f.attrs[k] = _attr(v)
        f.create_dataset("xcoordinates", data=np.asarray(x, np.float64))
        if y is not None:
            f.create_dataset("ycoordinates", data=np.asarray(y, np.float64))
        for name in metrics:
            f.create_dataset(name, data=np.full(shape, np.nan))
        f.create_dataset(COMPUTED, data=np.zeros(shape, np.uint8))
        g = f.create_group("directions")
        for name, d in zip(DIRECTION_NAMES, directions):
            _write_direction(g.create_group(name), d)
    os.replace(tmp, path)


def update_surface_file(
    path: str, values: Mapping[str, np.ndarray], computed: np.ndarray | None = None
) -> None:
    """Replace the metric arrays and ``computed`` mask of a surface file (copy, patch, rename)."""
    tmp = _tmp(path)
    shutil.copyfile(path, tmp)
    with h5py.File(tmp, "r+") as f:
        for name, arr in values.items():
            f[name][...] = arr
        if computed is not None:
            mask = np.asarray(computed, np.uint8)
            if COMPUTED in f:
                f[COMPUTED][...] = mask
            else:  # a file written before the mask existed
                f.create_dataset(COMPUTED, data=mask)
    os.replace(tmp, path)


def computed_from_values(values: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """The ``computed`` mask of a file that has none: points where no metric is NaN."""
    mask = np.ones(shape, bool)
    for arr in values.values():
        if arr.shape == shape:
            mask &= ~np.isnan(arr)
    return mask


def _read_attrs(f: h5py.File) -> dict[str, Any]:
    attrs = {k: _decode(v) for k, v in f.attrs.items()}
    for key in JSON_ATTRS:
        if isinstance(attrs.get(key), str):
            attrs[key] = json.loads(attrs[key])
    return {k: None if v == "None" else v for k, v in attrs.items()}


def _read_values(f: h5py.File, x: np.ndarray, y: np.ndarray | None, ours: bool):
    """``{metric: [iy, ix] array}``: every numeric 1D/2D dataset but the coordinates and mask."""
    values = {}
    for name in f:
        obj = f[name]
        if name in ("xcoordinates", "ycoordinates", COMPUTED) or not isinstance(obj, h5py.Dataset):
            continue
        if not np.issubdtype(obj.dtype, np.number) or obj.ndim not in (1, 2):
            continue
        arr = obj[()].astype(np.float64)
        if not ours:
            arr = np.where(arr == LOSS_LANDSCAPE_MISSING, np.nan, arr)
            if y is not None and arr.size == len(x) * len(y):
                arr = arr.reshape(len(y), len(x))
        values[name] = arr
    return values


def _open_for_reading(path: str) -> h5py.File:
    if not os.path.isfile(path):
        raise ValueError(f"Surface file {os.fspath(path)!r} does not exist.")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"Surface file {os.fspath(path)!r} is not readable HDF5: {err}.") from None


def read_surface_file(path: str) -> dict[str, Any]:
    """Read a surface file written by this package or by tomgoldstein/loss-landscape.

    Returns:
        ``{"x", "y", "values", "computed", "attrs", "directions"}``. Arrays are ``[iy, ix]``
        (1D: ``[ix]``); ``computed`` is a bool mask of the evaluated points; ``directions`` are
        ``StoredDirection`` records (none for loss-landscape files).
        For loss-landscape files (no ``format`` attribute) the −1 placeholders become NaN, the
        values (stored in ``[iy, ix]`` order in an array shaped ``(nx, ny)``) are reshaped to
        ``(ny, nx)``, and ``attrs["source"] == "loss-landscape"`` (their accuracy is in percent).
    """
    with _open_for_reading(path) as f:
        if "xcoordinates" not in f:
            raise ValueError(f"{os.fspath(path)!r} is not a surface file (no xcoordinates).")
        attrs = _read_attrs(f)
        x = f["xcoordinates"][()].astype(np.float64)
        y = f["ycoordinates"][()].astype(np.float64) if "ycoordinates" in f else None
        ours = attrs.get("format") == FORMAT
        values = _read_values(f, x, y, ours)
        shape = (len(x),) if y is None else (len(y), len(x))
        if ours and COMPUTED in f and f[COMPUTED].shape == shape:
            computed = f[COMPUTED][()].astype(bool)
        else:
            computed = computed_from_values(values, shape)
        if not ours:
            attrs["source"] = "loss-landscape"
        directions = ()
        if "directions" in f:
            g = f["directions"]
            directions = tuple(_read_direction(g[n]) for n in DIRECTION_NAMES if n in g)
    return {
        "x": x,
        "y": y,
        "values": values,
        "computed": computed,
        "attrs": attrs,
        "directions": directions,
    }


def check_resumable(
    path: str,
    *,
    x: np.ndarray,
    y: np.ndarray | None,
    metrics: tuple[str, ...],
    attrs: Mapping[str, Any],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Check that ``path`` was written by the same computation; return its arrays and mask.

    Returns:
        ``(values, computed)``: the metric arrays and the bool mask of evaluated points.

    Raises:
        ValueError: naming every difference (format, grid, metrics, model weights, directions,
            data, analysis precision when the file records it); the file is left untouched.
    """
    stored = read_surface_file(path)
    fa = stored["attrs"]
    p = os.fspath(path)
    if fa.get("format") != FORMAT:
        raise ValueError(
            f"Surface file {p!r} was not written by sam-landscape; refusing to resume into it."
        )
    diffs = []

    def grid(name, a, b):
        if (a is None) != (b is None):
            diffs.append(f"the grid is {'1D' if b is None else '2D'} in the file")
        elif a is not None and (a.shape != b.shape or not np.array_equal(a, b)):
            diffs.append(
                f"{name} differs (file {b.min():g}:{b.max():g}:{len(b)}, "
                f"run {a.min():g}:{a.max():g}:{len(a)})"
            )

    grid("x", np.asarray(x, np.float64), stored["x"])
    grid("y", None if y is None else np.asarray(y, np.float64), stored["y"])
    if set(metrics) != set(stored["values"]):
        diffs.append(f"metrics differ (file {sorted(stored['values'])}, run {sorted(metrics)})")
    labels = {
        "model_fingerprint": "model weights",
        "directions_fingerprint": "directions",
        "data_fingerprint": "data",
    }
    for key, label in labels.items():
        a, b = attrs.get(key), fa.get(key)  # None (e.g. no data fingerprint) on both sides
        if a != b:
            diffs.append(f"{label} differ (file {str(b)[:12]}, run {str(a)[:12]})")
    if "precision" in fa and fa["precision"] != attrs.get("precision"):  # older files lack it
        diffs.append(f"precision differs (file {fa['precision']}, run {attrs.get('precision')})")
    if diffs:
        raise ValueError(
            f"Surface file {p!r} does not match this computation: {'; '.join(diffs)}. "
            "Refusing to resume; the file was left untouched (pass another path or delete it)."
        )
    return stored["values"], stored["computed"]


def open_surface(
    path: str,
    *,
    x: np.ndarray,
    y: np.ndarray | None,
    metrics: tuple[str, ...],
    directions: Sequence[Any],
    attrs: Mapping[str, Any],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Resume the surface file at ``path``, or create it (stamped with time and package version).

    Args:
        path: The HDF5 file.
        x, y: The grid's coordinates (``y`` None for 1D).
        metrics: Names of the metric arrays.
        directions: The ``Direction`` objects the surface is computed along.
        attrs: Fingerprints and direction metadata; a resumed file must have the same
            fingerprints (see ``check_resumable``).

    Returns:
        ``(values, computed)``: the metric arrays (NaN where not computed) and the bool mask of
        evaluated points, both empty for a new file.
    """
    if os.path.exists(path):
        values, computed = check_resumable(path, x=x, y=y, metrics=metrics, attrs=attrs)
        logger.info("Resuming %s: %d points left.", path, int((~computed).sum()))
        return values, computed
    shape = (len(x),) if y is None else (len(y), len(x))
    created = datetime.datetime.now(datetime.timezone.utc).isoformat()
    create_surface_file(
        path,
        x=x,
        y=y,
        metrics=metrics,
        directions=tuple(directions),
        attrs={**attrs, "created": created, "package_version": __version__},
    )
    return {n: np.full(shape, np.nan) for n in metrics}, np.zeros(shape, bool)
