"""Surface workers: grid points evaluated here or on other processes and machines.

``evaluate_points`` is the one evaluator of grid points: ``compute_surface`` calls it in this
process, and every worker calls it on its chunk. ``compute_surface(obj, dirs, recipe=recipe,
executor=ex)`` cuts the points still to compute into chunks and submits them (``submit_points``)
to any ``concurrent.futures.Executor``-style backend. Each worker rebuilds the objective from the
recipe (an ``ObjectiveRecipe``: a picklable description of model file, data, batch size) and the
directions once per run, caches them, and returns plain float64 arrays; only the calling process
writes the HDF5 file, so resume and crash safety are those of the serial path.

Backends (each a context manager yielding an executor):

- ``process_pool(n)``: a local pool of ``n`` spawned processes (TensorFlow hangs after ``fork``),
  each pinned to its share of the CPU threads; it restarts itself when a worker dies.
- ``dask_executor(scheduler=None, workers=n)``: a Dask cluster (``pip install
  'sam-landscape[dask]'``): an existing scheduler (``"tcp://host:8786"``, e.g. started by
  dask-jobqueue on SLURM) or a ``LocalCluster`` of ``n`` one-thread worker processes on loopback.
- ``mpi_executor()``: ``mpi4py.futures.MPIPoolExecutor`` (``'sam-landscape[mpi]'``); run as
  ``mpiexec -n K python -m mpi4py.futures script.py`` or let it spawn workers.

Workers must see the model file (and the data file) under the same path: local processes always
do, cluster nodes through a shared file system.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import logging
import math
import multiprocessing
import os
import re
import shutil
import sys
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import h5py
import keras
import numpy as np

import sam  # noqa: F401 (registers SAM and SAMModel, so that models using them load)
from landscape import _checks, io
from landscape._checks import Backend, choice, integer
from landscape.data import check_scale, is_file_name, match_model, read_dataset
from landscape.directions import Direction, fingerprint_directions
from landscape.objective import Basis, Objective
from sam import _compat

logger = logging.getLogger("landscape")

CHUNKS_PER_WORKER = 8  # chunks per worker: small enough for progress and for losing little work
MAX_CHUNK = 64
MAX_RETRIES = 3  # resubmissions of a chunk whose worker died


# --------------------------------------------------------------------------------- recipes
_IMPORTED: dict[str, Any] = {}  # --import specification -> module, so each runs once per process


def _module_from_file(path: str):
    """Import the ``.py`` file at ``path`` as a module named after it (its folder importable)."""
    name = os.path.splitext(os.path.basename(path))[0]
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so that it can import the modules beside it
    if not name.isidentifier() or name in sys.modules:
        name = f"_landscape_import_{hashlib.sha256(path.encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"not a Python file: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_modules(imports: Sequence[str] = ()) -> dict[str, Any]:
    """Import the modules that define (and register) a model's custom classes.

    Args:
        imports: Module names (importable from the current directory or ``sys.path``) or paths
            of ``.py`` files. Each is imported once per process. Defaults to ().

    Returns:
        The custom objects they define: every class and function whose ``__module__`` is one
        of them, by name, for ``keras.models.load_model(custom_objects=...)`` (so that classes
        not decorated with ``@keras.saving.register_keras_serializable()`` load too).

    Raises:
        ValueError: a module failed to import; the message names it and the exception.
    """
    if isinstance(imports, str):
        imports = (imports,)
    objects: dict[str, Any] = {}
    for spec in imports:
        spec = os.fspath(spec)
        is_file = spec.endswith(".py")
        key = os.path.abspath(spec) if is_file else spec
        module = _IMPORTED.get(key)
        if module is None:
            try:
                if is_file:
                    if not os.path.isfile(spec):
                        raise FileNotFoundError(f"{spec} does not exist")
                    module = _module_from_file(key)
                else:
                    if os.getcwd() not in sys.path and "" not in sys.path:
                        sys.path.insert(0, os.getcwd())
                    module = importlib.import_module(spec)
            except Exception as err:
                text = str(err).strip().splitlines()[0] if str(err).strip() else ""
                hint = ""
                if isinstance(err, ModuleNotFoundError) and err.name == spec.split(".")[0]:
                    hint = " (give a module importable from the current directory or a .py path)"
                raise ValueError(
                    f"Could not import {spec!r} (--import, imports=): {type(err).__name__}"
                    f"{': ' + text if text else ''}{hint}."
                ) from err
            _IMPORTED[key] = module
        for key, value in vars(module).items():
            if (
                not key.startswith("_")
                and callable(value)
                and getattr(value, "__module__", None) == module.__name__
            ):
                objects[key] = value
    return objects


def _load_failure(path: str, err: Exception) -> ValueError:
    """One sentence for a model file Keras could not load."""
    text = str(err)
    missing = re.search(r"Could not locate (class|function) '([^']+)'", text)
    if missing:
        kind, name = missing.groups()
        module = re.search(r"'module': '([\w.]+)', 'class_name': '" + re.escape(name), text)
        where = module.group(1) if module and module.group(1) != "__main__" else None
        target = where or "the module (or .py file) that defines it"
        return ValueError(
            f"Could not locate {kind} {name!r} of model file {path!r}; pass --import {target} "
            f"(imports=[...] in Python), with the {kind} decorated with "
            "@keras.saving.register_keras_serializable()."
        )
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return ValueError(f"Could not load the model file {path!r}: {first.rstrip('.')}.")


@contextlib.contextmanager
def _fresh_layer_names():
    """Layers that Keras names automatically get the same names whatever was built before.

    A subclassed model that creates ``Dense(4)`` in ``__init__`` is named anew on loading
    (``dense``, ``dense_1``, ... from a per-process counter); a worker process, or a second
    model, would otherwise get other names and so other variable paths than the coordinator's
    directions, which are aligned by path. The counters are private Keras state (see
    ``sam._compat``). Afterwards every counter is at least as high as before.
    """
    before = _compat.layer_name_counters()
    _compat.set_layer_name_counters({})
    try:
        yield
    finally:
        merged = dict(before)
        for name, count in _compat.layer_name_counters().items():
            merged[name] = max(merged.get(name, 0), count)
        _compat.set_layer_name_counters(merged)


def load_model(path: str, *, imports: Sequence[str] = ()):
    """``keras.models.load_model`` with SAM registered and the user's modules imported.

    Args:
        path: A ``.keras`` (or legacy ``.h5``) model file.
        imports: Modules (names or ``.py`` paths) that define the model's custom classes; see
            ``import_modules``. Defaults to ().

    Raises:
        ValueError: one sentence for every failure: a missing file, a file that is not a
            Keras model, a class Keras cannot locate, a module that fails to import.
    """
    path = _checks.model_file(path)  # a missing file, a directory, a SavedModel directory
    custom_objects = import_modules(imports)
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(f"Model file {path!r} is not a Keras model file (a .keras zip archive).")
    if path.endswith((".h5", ".hdf5")):
        if not h5py.is_hdf5(path):
            raise ValueError(f"Model file {path!r} is not a Keras model file (an HDF5 file).")
    elif not path.endswith(".keras"):
        raise ValueError(f"Model file {path!r} is not a .keras (or legacy .h5) model file.")
    try:
        with _fresh_layer_names():
            return keras.models.load_model(path, custom_objects=custom_objects or None)
    except Exception as err:  # Keras raises TypeError, ValueError, KeyError, OSError, ...
        raise _load_failure(path, err) from err


@dataclasses.dataclass(frozen=True)
class ObjectiveRecipe:
    """How to build an ``Objective`` in another process: model file, data and batch size.

    Calling it (``recipe()``) loads the model (``load_model``: SAM registered, ``imports``
    imported) and the data (``landscape.data.read_dataset``, fitted to the model by
    ``landscape.data.match_model``) and returns the ``Objective``. It pickles as a few strings,
    so workers of any backend rebuild the same objective from the same arrays.

    Attributes:
        model: Path of a ``.keras`` model file (made absolute).
        data: ``"embedded"``, a ``keras.datasets`` name or an ``.npz`` path (made absolute).
        samples: Use the first ``samples`` training examples; 0 for all.
        test_samples: Use the first ``test_samples`` test examples; None for all, 0 for no
            test split.
        batch_size: Evaluation batch size.
        scale: Divide x by this number (None: only uint8 x, by 255).
        imports: Modules defining the model's custom classes: names (importable from the
            current directory of each worker) or ``.py`` paths (made absolute).
        regularization: Add the weight penalties to the loss (``Objective(regularization=)``).

    Example:
        >>> recipe = landscape.ObjectiveRecipe("sam.keras", data="cifar10_10k.npz", samples=2000)
        >>> with landscape.process_pool(2) as ex:
        ...     surf = landscape.compute_surface(recipe=recipe, directions=dirs, x="-1:1:21",
        ...                                      y="-1:1:21", path="sam.h5", executor=ex)
    """

    model: str
    data: str = "embedded"
    samples: int = 0
    test_samples: int | None = None
    batch_size: int = 256
    scale: float | None = None
    imports: tuple[str, ...] = ()
    regularization: bool = False

    def __post_init__(self):
        if not isinstance(self.model, str | os.PathLike):
            raise ValueError(f"Argument `model` must be a file path. Received: {self.model!r}.")
        object.__setattr__(self, "model", os.path.abspath(os.fspath(self.model)))
        data = os.fspath(self.data)
        if is_file_name(data):
            data = os.path.abspath(data)
        object.__setattr__(self, "data", data)
        integer("samples", self.samples, 0)
        integer("batch_size", self.batch_size, 1)
        t = self.test_samples
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 0):
            raise ValueError(
                f"Argument `test_samples` must be None or an integer >= 0. Received: {t!r}."
            )
        object.__setattr__(self, "scale", check_scale(self.scale))
        imports = (self.imports,) if isinstance(self.imports, str) else tuple(self.imports)
        imports = tuple(
            os.path.abspath(os.fspath(m)) if os.fspath(m).endswith(".py") else os.fspath(m)
            for m in imports
        )
        object.__setattr__(self, "imports", imports)

    def load_model(self):
        """The Keras model of ``self.model``."""
        return load_model(self.model, imports=self.imports)

    def build(self, model=None, *, on_note: Callable[[str], None] | None = None):
        """The ``Objective`` (of ``model`` if given, else of the loaded model file).

        Args:
            model: The loaded model; None loads ``self.model``. Defaults to None.
            on_note: Called with each line that says what loading changed in the data
                (scaling, an added axis). Defaults to None (logged at debug level).
        """
        model = self.load_model() if model is None else model
        dataset = match_model(read_dataset(self.data, scale=self.scale), model)
        for note in dataset.notes:
            (on_note or logger.debug)(note)
        train, test = dataset.train, None
        if self.samples:
            train = tuple(a[: self.samples] for a in train)
        if self.test_samples != 0:
            test = tuple(a[: self.test_samples] for a in dataset.test)
        penalized = any(getattr(v, "regularizer", None) for v in model.trainable_variables)
        if penalized and not self.regularization:
            (on_note or logger.debug)(
                "loss: the model's weight penalties are not included (model.evaluate adds "
                "them); --regularization (regularization=True) includes them"
            )
        return Objective(
            model,
            train,
            batch_size=self.batch_size,
            test_data=test,
            regularization=self.regularization,
        )

    def __call__(self):
        return self.build()


# --------------------------------------------------------------------------- the evaluator
def evaluate_points(
    objective: Objective,
    basis_or_directions: Basis | Sequence[Direction],
    points: Iterable[Sequence[float]],
    splits: Sequence[str] | None = None,
) -> Iterator[np.ndarray]:
    """The values at each grid point, one row per point, as each is computed.

    This is the one evaluator of surface points: ``compute_surface`` calls it in this process,
    and every worker of an executor on its chunk.

    Args:
        objective: The ``Objective``.
        basis_or_directions: ``objective.basis(directions)``, or the directions themselves.
        points: The coefficients of each point: ``[α]`` (1D) or ``[α, β]`` (2D).
        splits: The splits to evaluate. Defaults to every split of the objective.

    Yields:
        A float64 row per point: every metric of every split, in the order
        ``[f"{split}_{metric}" for split in splits for metric in objective.metric_names]``.
    """
    basis = basis_or_directions
    if not isinstance(basis, Basis):
        basis = objective.basis(list(basis))
    splits = objective.splits if splits is None else tuple(splits)
    for coefficients in points:
        row = []
        for split in splits:
            row.extend(objective.evaluate_at(list(coefficients), basis, split=split).values())
        yield np.asarray(row, np.float64)


# ---------------------------------------------------------------------------------- workers
@dataclasses.dataclass(frozen=True)
class SurfaceJob:
    """What a worker needs for one surface: recipe, directions (inline or a file), checks.

    Attributes:
        recipe: Builds the ``Objective`` in the worker (an ``ObjectiveRecipe`` or any picklable
            function).
        directions: The ``Direction`` objects, or the path of the surface file that holds them.
        model_fingerprint: ``Objective.weights_fingerprint()`` of the coordinator's objective;
            a worker whose model differs refuses to evaluate.
        directions_fingerprint: ``fingerprint_directions`` of the coordinator's directions.
        threads: TensorFlow threads of each worker process (None: leave as they are).
    """

    recipe: Callable[[], Any]
    directions: tuple | str  # Directions, or the surface file that holds them
    model_fingerprint: str
    directions_fingerprint: str
    threads: int | None

    @property
    def token(self) -> str:
        key = f"{self.recipe!r}|{self.model_fingerprint}|{self.directions_fingerprint}"
        return hashlib.sha256(key.encode()).hexdigest()

    def load_directions(self) -> list[Direction]:
        """The job's directions, read from the surface file if they are not inline."""
        if not isinstance(self.directions, str):
            return list(self.directions)
        stored = io.read_directions(self.directions)
        return [Direction(*stored[n]) for n in io.DIRECTION_NAMES if n in stored]


_CACHE: dict[str, tuple[Any, Any]] = {}
_CACHE_LOCK = threading.Lock()
_PINNED = False


def pin_threads(threads: int | None) -> None:
    """Limit this process's backend (TensorFlow's or PyTorch's thread pools; BLAS and XLA's
    through the OpenMP variables) to ``threads`` threads, if not yet running."""
    global _PINNED
    if threads is None or _PINNED:
        return
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        elif backend == "torch":
            import torch

            torch.set_num_threads(threads)
    except RuntimeError:  # the backend already runs in this process: keep its pools
        logger.debug("%s already running; thread counts left unchanged.", backend)
    _PINNED = True


def _worker_init(threads: int | None, backend: str = "tensorflow") -> None:
    """A spawned worker: the caller's Keras backend (set before Keras loads), quiet, pinned."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["KERAS_BACKEND"] = backend
    pin_threads(threads)


def _load_job(job: SurfaceJob) -> tuple[Objective, Basis]:
    """The worker's (objective, basis) for ``job``: built on the first chunk, then cached."""
    with _CACHE_LOCK:
        state = _CACHE.get(job.token)
        if state is not None:
            return state
        pin_threads(job.threads)
        objective = job.recipe()
        if objective.weights_fingerprint() != job.model_fingerprint:
            raise ValueError(
                f"The worker's model ({job.recipe!r}) has other weights than the coordinator's; "
                "was the model file changed during the run?"
            )
        directions = job.load_directions()
        if fingerprint_directions(directions) != job.directions_fingerprint:
            raise ValueError("The worker read other directions than the coordinator's.")
        state = (objective, objective.basis(directions))
        _CACHE.clear()  # one surface at a time per worker: free the previous model
        _CACHE[job.token] = state
        return state


def evaluate_chunk(job: SurfaceJob, coefficients: np.ndarray) -> np.ndarray:
    """Every split and metric at each row of ``coefficients``: ``[n_points, n_values]``."""
    objective, basis = _load_job(job)
    rows = evaluate_points(objective, basis, np.asarray(coefficients, np.float64))
    return np.asarray(list(rows), np.float64)


# --------------------------------------------------------------------------------- backends
def _lost_worker_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [cf.process.BrokenProcessPool, EOFError, ConnectionError]
    try:  # Dask is optional (the [dask] extra): its errors count only when it is installed
        from distributed import KilledWorker
        from distributed.comm import CommClosedError

        errors += [KilledWorker, CommClosedError]
    except ImportError:
        pass
    return tuple(errors)


class ProcessPool(cf.Executor):
    """A local pool of spawned worker processes that restarts itself when a worker dies.

    Args:
        workers: Number of processes. Defaults to ``os.cpu_count()``.
        threads_per_worker: TensorFlow threads of each; None shares the CPUs evenly
            (at least 1). Defaults to None.
    """

    def __init__(self, workers: int | None = None, threads_per_worker: int | None = None):
        cpus = os.cpu_count() or 1
        workers = cpus if workers is None else workers
        workers = integer("workers", workers, 1)
        if threads_per_worker is None:
            threads_per_worker = max(1, cpus // workers)
        threads_per_worker = integer("threads_per_worker", threads_per_worker, 1)
        self.workers, self.threads_per_worker = workers, threads_per_worker
        self._pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(self.threads_per_worker, keras.backend.backend()),
        )

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        return self._pool.submit(fn, *args, **kwargs)

    def restart(self) -> None:
        """Replace a broken pool (a worker died) by a fresh one."""
        logger.warning("A worker process died; restarting the pool of %d.", self.workers)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (after the first submission)."""
        return [p.pid for p in (self._pool._processes or {}).values()]


@contextlib.contextmanager
def process_pool(workers: int | None = None, threads_per_worker: int | None = None):
    """A ``ProcessPool`` that is shut down on exit (see ``ProcessPool``)."""
    pool = ProcessPool(workers, threads_per_worker)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _require(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise ValueError(
            f"This backend needs {module}, which is not installed: "
            f"pip install 'sam-landscape[{extra}]'."
        ) from None


@contextlib.contextmanager
def dask_executor(
    scheduler: str | None = None, *, workers: int | None = None, threads_per_worker: int = 1
):
    """A Dask executor: on the cluster at ``scheduler``, or on a new local one of ``workers``.

    Args:
        scheduler: Address of a running scheduler (``"tcp://host:8786"``, from ``dask
            scheduler``, dask-jobqueue's ``SLURMCluster`` …). None starts a ``LocalCluster``
            on 127.0.0.1. Defaults to None.
        workers: Worker processes of the local cluster. Defaults to ``os.cpu_count()``.
        threads_per_worker: Threads of each local worker (and of its TensorFlow). Defaults to 1.

    Yields:
        ``client.get_executor(pure=False)``, a ``concurrent.futures.Executor``.
    """
    _require("distributed", "dask")
    from distributed import Client, LocalCluster  # the optional [dask] extra, checked above

    if scheduler is not None:
        client = Client(scheduler)
        cluster = None
    else:
        workers = (os.cpu_count() or 1) if workers is None else workers
        workers = integer("workers", workers, 1)
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    try:
        executor = client.get_executor(pure=False)
        executor.threads_per_worker = None if scheduler is not None else threads_per_worker
        executor.workers = sum(client.nthreads().values()) or 1
        yield executor
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def mpi_executor(workers: int | None = None):
    """``mpi4py.futures.MPIPoolExecutor`` (under ``mpiexec -n K python -m mpi4py.futures`` it
    uses the K−1 processes started by mpiexec; otherwise it spawns ``workers`` processes)."""
    _require("mpi4py", "mpi")
    from mpi4py.futures import MPIPoolExecutor  # the optional [mpi] extra, checked above

    # Spawning workers from a singleton process starts MPI's process manager (mpiexec); a
    # pip-installed MPI (the mpich wheel) puts it next to this Python, maybe not on PATH.
    here = os.path.dirname(sys.executable)
    if shutil.which("mpiexec") is None and os.path.exists(os.path.join(here, "mpiexec")):
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")

    kwargs = {} if workers is None else {"max_workers": workers}
    executor = MPIPoolExecutor(**kwargs)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True)


@contextlib.contextmanager
def make_executor(
    workers: int | None = None, scheduler: str | None = None, backend: str = "auto"
) -> Iterator[cf.Executor | None]:
    """The executor the CLI asks for: None (in-process), a process pool, Dask or MPI.

    ``backend="auto"``: Dask when ``scheduler`` is given, else the process pool for ``workers``
    (it measured faster than a Dask ``LocalCluster`` on one machine, see
    ``benchmarks/scale_out.py``); no ``workers`` and no ``scheduler`` means in-process.
    """
    choice("backend", backend, Backend)
    if scheduler is not None and backend not in ("auto", "dask"):
        raise ValueError(f"A scheduler address needs the Dask backend, not {backend!r}.")
    if backend == "auto":
        if scheduler is None and workers is None:
            yield None
            return
        backend = "process" if scheduler is None else "dask"
    logger.info("Backend: %s%s", backend, f" at {scheduler}" if scheduler else "")
    if backend == "process":
        with process_pool(workers) as ex:
            yield ex
    elif backend == "dask":
        with dask_executor(scheduler, workers=workers) as ex:
            yield ex
    else:
        with mpi_executor(workers) as ex:
            yield ex


# ------------------------------------------------------------------------------ the driver
def worker_count(executor) -> int:
    """The number of workers of ``executor`` (its ``workers``, ``_max_workers`` or
    ``num_workers``), or the CPU count when it does not say."""
    for attr in ("workers", "_max_workers", "num_workers"):
        n = getattr(executor, attr, None)
        if isinstance(n, int) and n > 0:
            return n
    return os.cpu_count() or 1


def chunk_points(todo: Sequence[tuple[int, ...]], workers: int, chunk_size: int | None):
    """Split the points into chunks of consecutive grid indices."""
    if chunk_size is None:
        chunk_size = max(1, min(MAX_CHUNK, math.ceil(len(todo) / (CHUNKS_PER_WORKER * workers))))
    chunk_size = integer("chunk_size", chunk_size, 1)
    return [list(todo[i : i + chunk_size]) for i in range(0, len(todo), chunk_size)]


def submit_points(
    executor,
    job: SurfaceJob,
    todo: Sequence[tuple[int, ...]],
    coefficients: Callable[[tuple[int, ...]], list[float]],
    *,
    chunk_size: int | None = None,
) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Evaluate the grid points ``todo`` on ``executor``'s workers, in chunks.

    Args:
        executor: A ``concurrent.futures.Executor``-style backend (``process_pool``,
            ``dask_executor``, ``mpi_executor``, or your own).
        job: The recipe, directions and fingerprints the workers check.
        todo: Grid indices of the points to evaluate.
        coefficients: The coefficients (``[α]`` or ``[α, β]``) of a grid index.
        chunk_size: Points per chunk; None picks about 8 chunks per worker (at most 64 points).
            Defaults to None.

    Returns:
        An iterator of ``(index, row)`` in the order chunks finish (``row`` as
        ``evaluate_points`` yields it). Closing it cancels the chunks not yet done.

    Raises:
        ValueError: for a bad ``chunk_size`` (at once, before anything is submitted).
    """
    if not todo:
        return iter(())
    workers = worker_count(executor)
    chunks = chunk_points(todo, workers, chunk_size)
    logger.info("%d points in %d chunks on %d workers.", len(todo), len(chunks), workers)
    return run_chunks(executor, job, chunks, coefficients)


def _broken_pool(executor, done, pending: dict[cf.Future, int]) -> list[int]:
    """After a worker of a process pool died: restart it; every pending chunk is lost too."""
    if not any(isinstance(f.exception(), cf.process.BrokenProcessPool) for f in done):
        return []
    if not hasattr(executor, "restart"):
        raise RuntimeError(
            "A worker of the process pool died and the pool cannot restart; "
            "use landscape.process_pool, which does."
        )
    lost = list(pending.values())  # every future of a broken pool fails: resubmit them all
    pending.clear()
    executor.restart()
    return lost


def run_chunks(
    executor,
    job: SurfaceJob,
    chunks: list[list[tuple[int, ...]]],
    coefficients: Callable[[tuple[int, ...]], list[float]],
    *,
    max_retries: int = MAX_RETRIES,
) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Submit every chunk; yield each point's ``(index, row)`` as chunks finish.

    A chunk whose worker died (a broken process pool, Dask's ``KilledWorker``, a closed
    connection) is resubmitted up to ``max_retries`` times; a process pool is restarted first.
    Any other exception (the objective failing) cancels the rest and propagates, as does
    closing the iterator.
    """
    lost_errors = _lost_worker_errors()
    retries = [0] * len(chunks)
    pending: dict[cf.Future, int] = {}

    def submit(i: int) -> None:
        coefs = np.asarray([coefficients(idx) for idx in chunks[i]], np.float64)
        pending[executor.submit(evaluate_chunk, job, coefs)] = i

    try:
        for i in range(len(chunks)):
            submit(i)
        while pending:
            done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
            lost = []
            for future in done:
                i = pending.pop(future)
                try:
                    values = future.result()
                except lost_errors as err:
                    retries[i] += 1
                    if retries[i] > max_retries:
                        raise RuntimeError(
                            f"A chunk of {len(chunks[i])} points was lost {retries[i]} times "
                            f"(last: {type(err).__name__}: {err}); giving up."
                        ) from err
                    lost.append(i)
                    continue
                yield from zip(chunks[i], values)
            if lost:
                lost += _broken_pool(executor, done, pending)
                logger.warning("Resubmitting %d chunk(s) lost with their worker.", len(lost))
                for i in lost:
                    submit(i)
    finally:
        for future in pending:
            future.cancel()
