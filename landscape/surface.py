"""Loss surfaces: the objective on a 1D line or a 2D grid of ``w0 + α d1 (+ β d2)``.

``compute_surface`` walks the grid row by row (``[iy, ix]``), evaluates every split of the
``Objective`` at each point, and — given ``path`` — keeps an HDF5 file up to date as it goes
(see ``landscape.io``). Calling it again with the same arguments resumes: only the points not
yet evaluated are computed. With an ``executor``, chunks of points run in worker processes
(``landscape.distributed``) and this process alone writes the file. A file from another grid,
model, data set or pair of directions is refused.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from landscape import _progress, io
from landscape._progress import resolve_verbose
from landscape.directions import Direction
from landscape.objective import Objective

logger = logging.getLogger("landscape")

GridSpec = str | tuple[float, float, int]
FLUSH_SECONDS = 2.0  # the file on disk is at most this many seconds (plus one point) behind
FLUSH_MAX_FRACTION = 0.05  # writes may take at most this share of the run (large directions)


def parse_grid(spec: GridSpec, *, name: str = "x") -> np.ndarray:
    """Coordinates ``linspace(min, max, num)`` from ``"min:max:num"`` or ``(min, max, num)``.

    Raises:
        ValueError: naming the argument and the value when the spec is malformed.
    """
    parts = spec.split(":") if isinstance(spec, str) else spec
    try:
        lo, hi, num = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(
            f"Argument `{name}` must be 'min:max:num' or (min, max, num). "
            f"Received: {name}={spec!r}."
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"Argument `{name}` needs finite min <= max. Received: {name}={spec!r}.")
    if num != int(num) or num < 1 or (num == 1 and lo != hi):
        raise ValueError(
            f"Argument `{name}` needs an integer num >= 2 (or 1 with min == max). "
            f"Received: {name}={spec!r}."
        )
    return np.linspace(lo, hi, int(num))


@dataclass
class Surface:
    """Metric values on a grid of coordinates.

    Attributes:
        x: Coordinates along the first direction, ``[nx]``.
        y: Coordinates along the second direction ``[ny]``, or None for a 1D surface.
        values: ``{"train_loss": Z, "train_acc": ..., "test_loss": ...}``; ``Z`` is ``[ny, nx]``
            (``[nx]`` in 1D), NaN where not computed (or where the loss itself is NaN).
        metadata: Fingerprints, direction metadata, creation time, …
        directions: The directions the surface was computed along (when known).
        path: The HDF5 file it is stored in, if any.
        computed: Bool mask (shape of ``Z``) of the points evaluated; a computed point can hold
            NaN when the network diverges there. Defaults to the points where no value is NaN.
    """

    x: np.ndarray
    y: np.ndarray | None
    values: dict[str, np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)
    directions: tuple[Direction, ...] = ()
    path: str | None = None
    computed: np.ndarray | None = None

    def __post_init__(self):
        if self.computed is None:
            self.computed = io.computed_from_values(self.values, self.shape)
        else:
            self.computed = np.asarray(self.computed, bool)

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.x),) if self.y is None else (len(self.y), len(self.x))

    @property
    def complete(self) -> bool:
        """True when every point has been evaluated."""
        return bool(self.computed.all())

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    @classmethod
    def load(cls, path: str) -> Surface:
        """Read a surface file written by ``compute_surface`` or by loss-landscape."""
        data = io.read_surface_file(path)
        return cls(
            data["x"],
            data["y"],
            data["values"],
            data["attrs"],
            data["directions"],
            os.fspath(path),
            data["computed"],
        )


def _directions_fingerprint(directions: Sequence[Direction]) -> str:
    h = hashlib.sha256()
    for d in directions:
        h.update(d.fingerprint().encode())
    return h.hexdigest()


class _Writer:
    """Keeps the surface file at most ``flush_seconds`` behind the in-memory arrays."""

    def __init__(
        self,
        path: str | None,
        values: dict[str, np.ndarray],
        computed: np.ndarray,
        flush_seconds: float,
    ):
        self.path, self.values, self.computed = path, values, computed
        self.flush_seconds = flush_seconds
        self.interval = flush_seconds
        self.last = time.monotonic()
        self.dirty = False

    def point_done(self) -> None:
        self.dirty = True
        if self.path is not None and time.monotonic() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self.path is None or not self.dirty:
            return
        start = time.monotonic()
        io.update_surface_file(self.path, self.values, self.computed)
        took = time.monotonic() - start
        # Large direction groups make each copy slow: write less often, never more than ~5%.
        self.interval = max(self.flush_seconds, took / FLUSH_MAX_FRACTION)
        self.last = time.monotonic()
        self.dirty = False
        logger.debug("Flushed %s in %.3fs.", self.path, took)


def compute_surface(
    objective: Objective | Callable[[], Objective],
    directions: Sequence[Direction],
    x: GridSpec = "-1:1:51",
    y: GridSpec | None = None,
    *,
    path: str | os.PathLike | None = None,
    verbose: Literal["auto", 0, 1, 2] = "auto",
    flush_seconds: float = FLUSH_SECONDS,
    executor: concurrent.futures.Executor | None = None,
    chunk_size: int | None = None,
) -> Surface:
    """Evaluate the objective at ``w0 + α d1`` (1D) or ``w0 + α d1 + β d2`` (2D) on a grid.

    Args:
        objective: The ``Objective`` (model, data, loss); every split it has is evaluated. With
            an ``executor``, a recipe workers can rebuild it from instead: an
            ``ObjectiveRecipe`` or any picklable function returning an ``Objective`` (called
            once here for the fingerprints, and once in each worker).
        directions: One direction (1D, needs ``y=None``) or two (2D, needs ``y``).
        x: Grid of α, ``"min:max:num"`` or ``(min, max, num)``. Defaults to ``"-1:1:51"``.
        y: Grid of β for 2D surfaces. Defaults to None.
        path: HDF5 file to write as points complete (NaN = not computed). If it exists and
            matches this computation, only its points not yet evaluated are computed (a point
            whose loss came out NaN is not retried); if it does not match,
            a ``ValueError`` says what differs and the file is left untouched. Defaults to None.
        verbose: 0 silent, 1 or 2 a ``keras.utils.Progbar`` over points, ``"auto"`` 1 unless
            Keras's interactive logging is off. Defaults to ``"auto"``.
        flush_seconds: Longest time between file writes. Defaults to 2.0.
        executor: Where the points are evaluated: None in this process, or a
            ``concurrent.futures.Executor``-style backend (``landscape.process_pool``,
            ``landscape.dask_executor``, ``landscape.mpi_executor``, or your own) to which
            chunks of points are submitted; results are written here as they arrive and chunks
            lost with a worker are resubmitted. The values equal the serial run's up to float32
            reduction order (bit-identical when workers use the same thread count). Defaults
            to None.
        chunk_size: Points per submitted chunk; None picks about 8 chunks per worker (at most
            64 points). Defaults to None.

    Returns:
        A ``Surface`` with ``values["train_loss"]``, ``values["train_acc"]`` (and ``test_*``).

    Example:
        >>> surf = compute_surface(obj, [d1, d2], x="-1:1:51", y="-1:1:51", path="surf.h5")
        >>> surf.values["train_loss"].shape
        (51, 51)
    """
    recipe = None
    if not isinstance(objective, Objective) and not hasattr(objective, "evaluate_at"):
        if not callable(objective):
            raise ValueError(
                "Argument `objective` must be an Objective or a function (recipe) returning "
                f"one. Received: {type(objective).__name__}."
            )
        recipe, objective = objective, objective()
        if not hasattr(objective, "evaluate_at"):
            raise ValueError(
                f"The recipe {recipe!r} returned {type(objective).__name__}, not an Objective."
            )
    if executor is not None and recipe is None:
        raise ValueError(
            "An executor needs an objective its workers can rebuild: pass "
            "landscape.ObjectiveRecipe(model_path, data=...) or a picklable function returning "
            "the Objective instead of the Objective itself."
        )
    directions = list(directions)
    if not all(isinstance(d, Direction) for d in directions):
        raise ValueError("Argument `directions` must be a list of Direction objects.")
    if y is None and len(directions) != 1:
        raise ValueError(
            f"A 1D surface (y=None) needs exactly 1 direction. Received {len(directions)}."
        )
    if y is not None and len(directions) != 2:
        raise ValueError(
            f"A 2D surface (y={y!r}) needs exactly 2 directions. Received {len(directions)}."
        )
    if not flush_seconds >= 0:
        raise ValueError(f"Argument `flush_seconds` must be >= 0. Received: {flush_seconds}.")
    verbose = resolve_verbose(verbose)
    xs = parse_grid(x, name="x")
    ys = None if y is None else parse_grid(y, name="y")
    shape = (len(xs),) if ys is None else (len(ys), len(xs))
    names = tuple(f"{s}_{m}" for s in objective.splits for m in objective.metric_names)
    basis = objective.basis(directions)  # validates alignment before any file is touched

    meta = [d.metadata for d in directions]
    attrs = {
        "model_fingerprint": objective.weights_fingerprint(),
        "directions_fingerprint": _directions_fingerprint(directions),
        "data_fingerprint": objective.data_fingerprint(),
        "loss": objective.loss_name,
        "norm": meta[0].get("norm"),
        "ignore": meta[0].get("ignore"),
        "seeds": [m.get("seed") for m in meta],
        "directions_metadata": meta,
    }
    if path is not None:
        path = os.fspath(path)
    if path is not None and os.path.exists(path):
        values, computed = io.check_resumable(path, x=xs, y=ys, metrics=names, attrs=attrs)
        logger.info("Resuming %s: %d points left.", path, int((~computed).sum()))
    else:
        values = {n: np.full(shape, np.nan) for n in names}
        computed = np.zeros(shape, bool)
        if path is not None:
            from landscape import __version__

            created = datetime.datetime.now(datetime.timezone.utc).isoformat()
            io.create_surface_file(
                path,
                x=xs,
                y=ys,
                metrics=names,
                directions=tuple(directions),
                attrs={**attrs, "created": created, "package_version": __version__},
            )

    todo = [idx for idx in np.ndindex(*shape) if not computed[idx]]
    progbar = _progress.progbar(len(todo), verbose, "point")
    writer = _Writer(path, values, computed, flush_seconds)
    done = 0

    def coefficients(idx):
        return [xs[idx[-1]]] if ys is None else [xs[idx[1]], ys[idx[0]]]

    def store(idx, row):
        nonlocal done
        for n, v in zip(names, row):
            values[n][idx] = v
        computed[idx] = True
        writer.point_done()
        done += 1
        if progbar is not None:
            progbar.update(done, [(n, values[n][idx]) for n in names])

    splits = objective.splits
    start = time.monotonic()
    try:
        if executor is None:
            for idx in todo:
                results = [objective.evaluate_at(coefficients(idx), basis, split=s) for s in splits]
                store(idx, [v for r in results for v in r.values()])
        elif todo:
            from landscape import distributed

            job = distributed._Job(
                recipe,
                os.path.abspath(path) if path is not None else tuple(directions),
                attrs["model_fingerprint"],
                attrs["directions_fingerprint"],
                getattr(executor, "threads_per_worker", None),
            )
            workers = distributed._worker_count(executor)
            chunks = distributed.chunk_points(todo, workers, chunk_size)
            logger.info("%d points in %d chunks on %d workers.", len(todo), len(chunks), workers)
            distributed.run_chunks(executor, job, chunks, coefficients, store)
    finally:
        writer.flush()
    logger.info("Computed %d points in %.1fs.", done, time.monotonic() - start)
    return Surface(xs, ys, values, attrs, tuple(directions), path, computed)
