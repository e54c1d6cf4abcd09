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
    directions_fingerprint, data_fingerprint, norm, ignore, seeds, directions_metadata (JSON),
    provenance (JSON: ``landscape._provenance``'s block of the run that created the file) ...

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
FLAGS = "flags"  # group: per-point counts of invalid model state (landscape._validity); optional
COMPUTED = "computed"  # mask of evaluated points; files without it: computed = no metric is NaN
# stored as JSON text, read back as lists
JSON_ATTRS = ("seeds", "directions_metadata", "loss_terms", "provenance")
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


def write_flags(path: str, flags: Mapping[str, np.ndarray]) -> None:
    """Store ``flags`` (per-point counts, shape of the grid) in the file's ``flags`` group.

    A group, not datasets beside the metrics, so that readers of format version 1 (ours before
    the flags, and loss-landscape's scripts) see the same metrics as before; files without the
    group have no flags.
    """
    tmp = _tmp(path)
    shutil.copyfile(path, tmp)
    with h5py.File(tmp, "r+") as f:
        if FLAGS in f:
            del f[FLAGS]
        g = f.create_group(FLAGS)
        for name, counts in flags.items():
            g.create_dataset(name, data=np.asarray(counts, np.int64))
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
        ``StoredDirection`` records (none for loss-landscape files); ``flags`` the per-point
        counts of invalid model state (``landscape._validity``), empty when the file has none.
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
        flags = {}
        if ours and FLAGS in f:
            flags = {n: f[FLAGS][n][()] for n in f[FLAGS] if isinstance(f[FLAGS][n], h5py.Dataset)}
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
        "flags": flags,
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
    for key in ("loss_terms",):  # older files lack it
        if key in fa and list(fa[key]) != list(attrs.get(key) or []):
            diffs.append(f"{key} differ (file {list(fa[key])}, run {attrs.get(key)})")
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


# ------------------------------------------------------------------------------ VTK export
# path suffix -> (meshio format, writer options): legacy VTK 4.2 (every ParaView/VisIt reads it;
# meshio's default 5.1 needs ParaView >= 5.9) or XML unstructured grid, both binary.
VTK_FORMATS = {
    ".vtk": ("vtk42", {"binary": True}),
    ".vtu": ("vtu", {"binary": True}),
}


def _vtk_name(name: str) -> str:
    """A point-data array name VTK's legacy format accepts (no whitespace)."""
    return "_".join(str(name).split())


def _vtk_z(values: Mapping[str, np.ndarray], metric: str, log: bool, zmax: float | None):
    """The z of every point: ``metric`` clipped at ``zmax`` and/or in log10; non-finite kept."""
    if metric not in values:
        raise ValueError(
            f"Argument `metric` must be one of {sorted(values)}. Received: metric={metric!r}."
        )
    z = np.array(values[metric], np.float64)
    if zmax is not None:
        z = np.where(np.isnan(z), z, np.minimum(z, float(zmax)))
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log10(z)  # a loss <= 0 becomes a hole, as a NaN does
    if not np.isfinite(z).any():
        raise ValueError(
            f"Argument `surface` has no finite value of {metric!r}"
            f"{' (log10)' if log else ''}; there is nothing to draw."
        )
    return z


def _vtk_cells(finite: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Quads of a 2D grid (lines of a 1D one) whose corners are all finite; vertices if none.

    Point ``[iy, ix]`` is number ``iy * nx + ix`` (x varies fastest).
    """
    if finite.ndim == 1:
        i = np.flatnonzero(finite[:-1] & finite[1:])
        cells = [("line", np.stack([i, i + 1], axis=-1))] if i.size else []
    else:
        ny, nx = finite.shape
        ok = finite[:-1, :-1] & finite[:-1, 1:] & finite[1:, 1:] & finite[1:, :-1]
        iy, ix = np.nonzero(ok)
        i = iy * nx + ix
        cells = [("quad", np.stack([i, i + 1, i + nx + 1, i + nx], axis=-1))] if i.size else []
    if not cells:  # a grid with a single row or column, or isolated finite points
        cells = [("vertex", np.flatnonzero(finite.ravel())[:, None])]
    return [(kind, c.astype(np.int64)) for kind, c in cells]


def export_vtk(
    surface: Any,
    path: str | os.PathLike,
    *,
    metric: str = "train_loss",
    log: bool = False,
    zmax: float | None = None,
) -> str:
    """Write a surface as a VTK mesh that ParaView (or VisIt, PyVista) opens.

    The mesh's points are the grid points (x = α, y = β, z = ``metric``), point ``[iy, ix]``
    numbered ``iy·nx + ix``. A 2D surface becomes quad cells between neighbouring points (what
    loss-landscape's ``h52vtp.py`` writes as polygons); a 1D surface a polyline (line cells, y
    = 0). Every stored metric (``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``, ...)
    is point data, unclipped and linear, beside ``computed`` (1 where the point was evaluated)
    and ``z_finite`` (1 where z is a value).

    NaN points (not computed yet, or diverged) and infinite ones: their metric values are written
    as NaN/inf in the point data (ParaView shows its NaN colour), their z coordinate is set to
    the lowest finite z (so that they leave the bounds alone), ``z_finite`` is 0, and every cell
    touching one is left out: the surface has a hole there. The file is written with meshio
    (legacy ``.vtk``, format 4.2, binary; or XML ``.vtu``, binary), to ``path + ".tmp"`` first and
    renamed, so a crash never leaves half a file.

    Args:
        surface: A ``Surface`` (anything with ``x``, ``y``, ``values`` and ``computed``), or the
            path of a surface file (ours or loss-landscape's).
        path: The file to write; its suffix chooses the format: ``.vtk`` or ``.vtu``.
        metric: The metric drawn as height z. Defaults to ``"train_loss"``.
        log: z = log10(metric), as loss-landscape's ``--log`` (which used log(z + 0.1));
            values <= 0 become holes. Defaults to False.
        zmax: Clip z at this value before ``log`` (loss-landscape's ``--zmax``), so that a
            few huge losses far out do not flatten the picture. Defaults to None.

    Returns:
        The path written, as a string.

    Raises:
        ValueError: a ``path`` with another suffix or in a directory that does not exist, a
            ``metric`` the surface does not have, a surface file that cannot be read, or no
            finite z at all.

    Example:
        >>> landscape.io.export_vtk(surf, "surf.vtk")               # then: paraview surf.vtk
        >>> landscape.io.export_vtk("surf.h5", "surf.vtu", log=True)

    References:
        Li et al. 2018, https://arxiv.org/abs/1712.09913; ``h52vtp.py`` of
        https://github.com/tomgoldstein/loss-landscape (its .vtp writer, whose cubic
        ``interp2d`` upsampling no longer exists in SciPy >= 1.14, is not reproduced).
    """
    # Deferred (load-bearing): meshio takes ~0.1-0.2 s to import, which reading and drawing
    # surface files (the CLI's plot) should not pay unless they export.
    import meshio

    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in VTK_FORMATS:
        raise ValueError(
            f"Argument `path` must end in {' or '.join(VTK_FORMATS)}. Received: path={path!r}."
        )
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ValueError(
            f"Argument `path` must be in an existing directory; {folder!r} does not exist. "
            f"Received: path={path!r}."
        )
    if isinstance(surface, str | os.PathLike):
        data = read_surface_file(surface)
        x, y, values, computed = data["x"], data["y"], data["values"], data["computed"]
    else:
        x, y, values, computed = surface.x, surface.y, surface.values, surface.computed
    z = _vtk_z(values, metric, log, zmax)
    finite = np.isfinite(z)
    z = np.where(finite, z, z[finite].min())
    if y is None:
        xs, ys = np.asarray(x, np.float64), np.zeros(len(x))
    else:
        xs, ys = np.meshgrid(np.asarray(x, np.float64), np.asarray(y, np.float64))
    points = np.column_stack([xs.ravel(), ys.ravel(), z.ravel()])
    point_data = {_vtk_name(k): np.asarray(v, np.float64).ravel() for k, v in values.items()}
    point_data["computed"] = np.asarray(computed, np.uint8).ravel()
    point_data["z_finite"] = finite.astype(np.uint8).ravel()
    mesh = meshio.Mesh(points, _vtk_cells(finite), point_data=point_data)
    file_format, options = VTK_FORMATS[suffix]
    tmp = _tmp(path)
    meshio.write(tmp, mesh, file_format=file_format, **options)
    os.replace(tmp, path)
    logger.info("Wrote %s: %d points, z = %s%s.", path, len(points), metric, " (log10)" * log)
    return path
