"""Loss surfaces: the objective on a 1D line or a 2D grid of ``w0 + α d1 (+ β d2)``.

``compute_surface`` walks the grid row by row (``[iy, ix]``) in four steps: resolve the objective
(or the recipe workers rebuild it from), open the HDF5 file (``landscape.io``: create it, or resume
it when it matches), evaluate the points not yet computed (``landscape.executors.evaluate_points``
here, or chunks on an executor's workers), and store each row as it arrives, keeping the file up to
date. Calling it again with the same arguments resumes; a file from another grid, model, data set
or pair of directions is refused.

Reading and drawing a stored surface (``Surface``, ``parse_grid``, ``Surface.load``) needs neither
Keras nor TensorFlow: this module imports them only when ``compute_surface`` runs, and a loaded
surface makes its ``Direction`` objects on first use.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from landscape import io
from landscape._provenance import provenance

if TYPE_CHECKING:
    from landscape.directions import Direction
    from landscape.objective import Objective

logger = logging.getLogger("landscape")

GridSpec = str | tuple[float, float, int]
Point = tuple[int, ...]  # a grid index: (ix,) in 1D, (iy, ix) in 2D
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
        directions: The directions the surface was computed along (when known); for a loaded
            surface, made from the file on first use.
        path: The HDF5 file it is stored in, if any.
        computed: Bool mask (shape of ``Z``) of the points evaluated; a computed point can hold
            NaN when the network diverges there. Defaults to the points where no value is NaN.
        flags: ``{name: counts}`` (shape of ``Z``) of invalid model state at each point, e.g.
            ``"negative_moving_variance"``: BatchNorm moving-variance entries a direction moved
            below zero (its loss there is meaningless). Empty when every point is valid.
    """

    x: np.ndarray
    y: np.ndarray | None
    values: dict[str, np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)
    directions: Sequence[Direction] = ()
    path: str | None = None
    computed: np.ndarray | None = None
    flags: dict[str, np.ndarray] = field(default_factory=dict)

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
            _StoredDirections(data["directions"]),
            os.fspath(path),
            data["computed"],
            data.get("flags", {}),
        )


class _StoredDirections(Sequence):
    """A loaded surface's directions, made into ``Direction`` objects on first use.

    ``Direction`` needs Keras (and so TensorFlow), which reading and drawing a surface file
    does not; the file's arrays are read at once, the objects made only when asked for.
    """

    def __init__(self, stored: Sequence[io.StoredDirection]):
        self._stored = tuple(stored)
        self._directions: tuple[Direction, ...] | None = None

    def _made(self) -> tuple[Direction, ...]:
        if self._directions is None:
            # Deferred (load-bearing): landscape.directions imports Keras and TensorFlow.
            from landscape.directions import Direction

            self._directions = tuple(Direction(*s) for s in self._stored)
        return self._directions

    def __getitem__(self, i):
        return self._made()[i]

    def __len__(self) -> int:
        return len(self._stored)

    def __repr__(self) -> str:
        return f"<{len(self)} directions stored in the surface file>"


@dataclass(frozen=True)
class _Grid:
    """The coordinates of a surface and the map from grid index to coefficients."""

    x: np.ndarray
    y: np.ndarray | None

    @classmethod
    def parse(cls, x: GridSpec, y: GridSpec | None) -> _Grid:
        return cls(parse_grid(x, name="x"), None if y is None else parse_grid(y, name="y"))

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.x),) if self.y is None else (len(self.y), len(self.x))

    def coefficients(self, idx: Point) -> list[float]:
        """``[α]`` (1D) or ``[α, β]`` (2D) at grid index ``idx``."""
        return [self.x[idx[-1]]] if self.y is None else [self.x[idx[1]], self.y[idx[0]]]


class _Store:
    """The surface's arrays in memory, with progress, and the file at most a few seconds behind.

    The file is written at most every ``flush_seconds`` (less often when a write is slow, so
    that writes take at most ``FLUSH_MAX_FRACTION`` of the run), and once more at the end.
    """

    def __init__(
        self,
        path: str | None,
        names: Sequence[str],
        values: dict[str, np.ndarray],
        computed: np.ndarray,
        flush_seconds: float,
        progbar=None,
    ):
        self.path, self.values, self.computed = path, values, computed
        self.names = tuple(names)  # the order of a row's values
        self.flush_seconds = self.interval = flush_seconds
        self.progbar = progbar
        # The bar shows the lowest finite loss of each split on the grid so far (points of a
        # resumed file included), as "min_train_loss": not the last point's value, nor a mean.
        self.lowest = {n: _lowest(values[n][computed]) for n in self.names if _is_loss(n)}
        self.last = time.monotonic()
        self.dirty = False
        self.done = 0

    def consume(self, points: Iterator[tuple[Point, np.ndarray]]) -> None:
        """Store every ``(index, row)``; on the way out, done or not, write the file."""
        start = time.monotonic()
        try:
            for idx, row in points:
                self.put(idx, row)
        finally:
            self.flush()
            if hasattr(points, "close"):  # stop an executor's chunks still running
                points.close()
        where = f" of {self.path}" if self.path else ""
        logger.info("Computed %d points%s in %.1fs.", self.done, where, time.monotonic() - start)

    def put(self, idx: Point, row: Sequence[float]) -> None:
        for name, value in zip(self.names, row):
            self.values[name][idx] = value
        self.computed[idx] = True
        self.dirty = True
        self.done += 1
        if self.progbar is not None:
            self.show_progress(idx)
        if self.path is not None and time.monotonic() - self.last >= self.interval:
            self.flush()

    def show_progress(self, idx: Point) -> None:
        """Points done, and the lowest finite loss of each split so far (once there is one)."""
        for name in self.lowest:
            value = float(self.values[name][idx])
            if np.isfinite(value) and value < self.lowest[name]:
                self.lowest[name] = value
        shown = [(f"min_{n}", v) for n, v in self.lowest.items() if np.isfinite(v)]
        self.progbar.update(self.done, shown)

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


def _is_loss(name: str) -> bool:
    """True for a split's total loss ("train_loss"), not a per-output one or a metric."""
    return name.partition("_")[2] == "loss"


def _lowest(values: np.ndarray) -> float:
    """The smallest finite value, inf if there is none."""
    finite = values[np.isfinite(values)]
    return float(finite.min()) if finite.size else np.inf


def _resolve(objective, recipe, executor) -> tuple[Objective, Callable[[], Objective] | None]:
    """``(objective, recipe)``: the Objective to evaluate here, and the recipe for workers.

    The older form passes the recipe as ``objective``; it is accepted as ``recipe=``.
    """
    if recipe is None and objective is not None and not hasattr(objective, "evaluate_at"):
        if not callable(objective):
            raise ValueError(
                "Argument `objective` must be an Objective or a function (recipe) returning "
                f"one. Received: {type(objective).__name__}."
            )
        objective, recipe = None, objective
    if recipe is not None and not callable(recipe):
        raise ValueError(
            "Argument `recipe` must be an ObjectiveRecipe or a picklable function returning an "
            f"Objective. Received: {type(recipe).__name__}."
        )
    if objective is not None and not hasattr(objective, "evaluate_at"):
        raise ValueError(
            "Argument `objective` must be an Objective (or None with `recipe=`). "
            f"Received: {type(objective).__name__}."
        )
    if objective is None:
        if recipe is None:
            raise ValueError("compute_surface needs an `objective` or a `recipe`; got neither.")
        objective = recipe()
        if not hasattr(objective, "evaluate_at"):
            raise ValueError(
                f"The recipe {recipe!r} returned {type(objective).__name__}, not an Objective."
            )
    if executor is not None and recipe is None:
        raise ValueError(
            "An executor needs a recipe its workers can rebuild the objective from: pass "
            "recipe=landscape.ObjectiveRecipe(model_path, data=...) or another picklable "
            "function returning the Objective."
        )
    return objective, recipe


def _check_direction_count(n: int, y: GridSpec | None) -> None:
    if y is None and n != 1:
        raise ValueError(f"A 1D surface (y=None) needs exactly 1 direction. Received {n}.")
    if y is not None and n != 2:
        raise ValueError(f"A 2D surface (y={y!r}) needs exactly 2 directions. Received {n}.")


def _attributes(objective: Objective, directions: Sequence[Direction], fingerprint: str,
                settings: dict) -> dict:  # fmt: skip
    """The file attributes that identify the computation (checked when a file is resumed), and
    the provenance block of the run that creates the file."""
    meta = [d.metadata for d in directions]
    model, data = objective.weights_fingerprint(), objective.data_fingerprint()
    seeds = [m.get("seed") for m in meta]
    return {
        "provenance": provenance(
            objective=objective,
            model_fingerprint=model,
            data_fingerprint=data,
            seeds=seeds,
            settings={
                **settings,
                "directions_fingerprint": fingerprint,
                "loss": objective.loss_name,
                "batch_size": objective.batch_size,
            },
        ),  # fmt: skip
        "model_fingerprint": model,
        "directions_fingerprint": fingerprint,
        "data_fingerprint": data,
        "loss": objective.loss_name,
        "precision": objective.precision,
        "backend": objective.backend,
        "loss_terms": list(objective.included),
        "norm": meta[0].get("norm"),
        "ignore": meta[0].get("ignore"),
        "seeds": seeds,
        "directions_metadata": meta,
    }


def _spec(values: np.ndarray) -> dict:
    """A grid axis as the provenance records it."""
    return {"start": float(values[0]), "stop": float(values[-1]), "num": len(values)}


def _open(path, grid: _Grid, names, directions, attrs) -> tuple[dict, np.ndarray]:
    """``(values, computed)``: from the file at ``path`` (created or resumed), or in memory."""
    if path is None:
        return {n: np.full(grid.shape, np.nan) for n in names}, np.zeros(grid.shape, bool)
    return io.open_surface(
        path, x=grid.x, y=grid.y, metrics=names, directions=directions, attrs=attrs
    )


def compute_surface(
    objective: Objective | None = None,
    directions: Sequence[Direction] = (),
    x: GridSpec = "-1:1:51",
    y: GridSpec | None = None,
    *,
    recipe: Callable[[], Objective] | None = None,
    path: str | os.PathLike | None = None,
    verbose: Literal["auto", 0, 1, 2] = "auto",
    flush_seconds: float = FLUSH_SECONDS,
    executor: concurrent.futures.Executor | None = None,
    chunk_size: int | None = None,
) -> Surface:
    """Evaluate the objective at ``w0 + α d1`` (1D) or ``w0 + α d1 + β d2`` (2D) on a grid.

    Args:
        objective: The ``Objective`` (model, data, loss); every split it has is evaluated.
            None builds it with ``recipe()``. (Passing the recipe itself here, the older form,
            still works.) Defaults to None.
        directions: One direction (1D, needs ``y=None``) or two (2D, needs ``y``).
        x: Grid of α, ``"min:max:num"`` or ``(min, max, num)``. Defaults to ``"-1:1:51"``.
        y: Grid of β for 2D surfaces. Defaults to None.
        recipe: How workers rebuild the objective: an ``ObjectiveRecipe`` or any picklable
            function returning the ``Objective``; needed with an ``executor``. Give the
            ``objective`` too if you have it (it serves the fingerprints here and the workers
            check that theirs has the same weights); otherwise it is built once here with
            ``recipe()``. Defaults to None.
        path: HDF5 file to write as points complete (NaN = not computed). If it exists and
            matches this computation, only its points not yet evaluated are computed (a point
            whose loss came out NaN is not retried); if it does not match,
            a ``ValueError`` says what differs and the file is left untouched. Defaults to None.
        verbose: 0 silent, 1 or 2 a ``keras.utils.Progbar`` over the points to compute, with
            the lowest loss found so far of each split (``min_train_loss``, ``min_test_loss``;
            non-finite losses left out), ``"auto"`` 1 unless Keras's interactive logging is
            off. Defaults to ``"auto"``.
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
        >>> recipe = landscape.ObjectiveRecipe("sam.keras", data="cifar10_10k.npz")
        >>> with landscape.process_pool(2) as ex:
        ...     surf = compute_surface(directions=[d1, d2], recipe=recipe, x="-1:1:51",
        ...                            y="-1:1:51", path="surf.h5", executor=ex)
    """
    # Deferred (load-bearing): these import Keras and TensorFlow, which reading and drawing a
    # stored surface (Surface.load, landscape.plot) must not.
    from landscape import executors
    from landscape._progress import progbar, resolve_verbose
    from landscape.directions import Direction, fingerprint_directions

    objective, recipe = _resolve(objective, recipe, executor)
    directions = list(directions)
    if not all(isinstance(d, Direction) for d in directions):
        raise ValueError("Argument `directions` must be a list of Direction objects.")
    _check_direction_count(len(directions), y)
    if not flush_seconds >= 0:
        raise ValueError(f"Argument `flush_seconds` must be >= 0. Received: {flush_seconds}.")
    verbose = resolve_verbose(verbose)
    grid = _Grid.parse(x, y)
    names = tuple(f"{s}_{m}" for s in objective.splits for m in objective.metric_names)
    basis = objective.basis(directions)  # validates alignment before any file is touched
    settings = {"x": _spec(grid.x), "y": None if grid.y is None else _spec(grid.y),
                "executor": None if executor is None else type(executor).__name__}  # fmt: skip
    attrs = _attributes(objective, directions, fingerprint_directions(directions), settings)
    path = None if path is None else os.fspath(path)
    values, computed = _open(path, grid, names, directions, attrs)
    flags = _flag(objective, directions, grid, path)
    todo = [idx for idx in np.ndindex(*grid.shape) if not computed[idx]]
    if executor is None:
        rows = executors.evaluate_points(objective, basis, map(grid.coefficients, todo))
        points = zip(todo, rows)
    else:
        job = executors.SurfaceJob(
            recipe,
            os.path.abspath(path) if path is not None else tuple(directions),
            attrs["model_fingerprint"],
            attrs["directions_fingerprint"],
            getattr(executor, "threads_per_worker", None),
        )
        points = executors.submit_points(
            executor, job, todo, grid.coefficients, chunk_size=chunk_size
        )
    progress = progbar(len(todo), verbose, "point")
    _Store(path, names, values, computed, flush_seconds, progress).consume(points)
    return Surface(grid.x, grid.y, values, attrs, tuple(directions), path, computed, flags)


def _flag(objective, directions, grid: _Grid, path: str | None) -> dict[str, np.ndarray]:
    """Count the invalid state at each grid point; log one sentence and store it if any."""
    from landscape import _validity

    flags = _validity.invalid_points(objective.model, directions, grid.x, grid.y)
    if flags:
        logger.warning(_validity.sentence(flags, grid.x, grid.y, directions))
        if path is not None:
            io.write_flags(path, flags)
    return flags
