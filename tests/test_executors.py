"""Surfaces on other processes: process pool, Dask, MPI — the same values as the serial run."""

import os
import pathlib

import h5py
import keras
import numpy as np
import pytest
from click.testing import CliRunner

import landscape
from landscape import executors
from landscape.cli import main

GRID = {"x": "-1:1:5", "y": "-1:1:4"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved classifier with BatchNorm and Dropout and an .npz data set (with a test split)."""
    root = tmp_path_factory.mktemp("distributed")
    rng = np.random.default_rng(0)
    data = root / "data.npz"
    np.savez(
        data,
        x_train=rng.uniform(size=(203, 12)).astype("float32"),  # a partial last batch
        y_train=rng.integers(0, 3, 203),
        x_test=rng.uniform(size=(61, 12)).astype("float32"),
        y_test=rng.integers(0, 3, 61),
    )
    keras.utils.set_random_seed(0)
    inp = keras.Input((12,))
    h = keras.layers.Dense(24, activation="relu")(inp)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.5)(h)
    model = keras.Model(inp, keras.layers.Dense(3)(h))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for v in model.variables:  # non-trivial BN statistics
        value = 0.5 * rng.normal(size=tuple(v.shape)).astype("float32")
        v.assign(np.abs(value) + 0.5 if "variance" in v.path else value)
    model_path = root / "model.keras"
    model.save(model_path)
    return str(model_path), str(data)


@pytest.fixture(scope="module")
def recipe(files):
    return landscape.ObjectiveRecipe(files[0], data=files[1], batch_size=64)


@pytest.fixture(scope="module")
def directions(recipe):
    model = recipe.load_model()
    return [landscape.random_direction(model, seed=s) for s in (0, 1)]


@pytest.fixture(scope="module")
def serial(recipe, directions):
    return landscape.compute_surface(recipe, directions, **GRID, verbose=0)


@pytest.fixture(scope="module")
def pool():
    with landscape.process_pool(2) as executor:
        yield executor


def assert_same_surface(a, b):
    """Bit-identical: workers run the same graph on the same batches (one thread each)."""
    assert set(a.values) == set(b.values) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    for name in a.values:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert a.complete and b.complete


def test_recipe_builds_the_objective_of_the_files(files, recipe):
    model = keras.models.load_model(files[0])
    with np.load(files[1]) as f:
        direct = landscape.Objective(
            model,
            (f["x_train"], f["y_train"]),
            batch_size=64,
            test_data=(f["x_test"], f["y_test"]),
        )
    assert recipe().evaluate() == direct.evaluate()
    assert recipe().evaluate(split="test") == direct.evaluate(split="test")
    assert os.path.isabs(recipe.model) and os.path.isabs(recipe.data)
    small = landscape.ObjectiveRecipe(files[0], data=files[1], samples=50, test_samples=0)
    assert small().splits == ("train",)
    with np.load(files[1]) as f:
        first50 = landscape.Objective(model, (f["x_train"][:50], f["y_train"][:50]), batch_size=256)
    assert small().evaluate() == first50.evaluate()


def test_process_pool_surface_equals_serial_and_is_written_by_the_coordinator(
    tmp_path, recipe, directions, serial, pool
):
    path = str(tmp_path / "s.h5")
    surf = landscape.compute_surface(
        recipe, directions, **GRID, path=path, executor=pool, chunk_size=3, verbose=0
    )
    assert_same_surface(serial, surf)
    assert_same_surface(serial, landscape.Surface.load(path))
    assert not os.path.exists(path + ".tmp")
    with h5py.File(path, "r") as f:
        assert f["computed"][()].all()


def test_resume_with_a_pool_computes_only_the_missing_points(tmp_path, recipe, directions, pool):
    path = str(tmp_path / "s.h5")

    class Interrupt(Exception):
        pass

    objective = recipe()
    calls = []

    class Stopping:  # the serial run stops after 7 points
        def __getattr__(self, name):
            return getattr(objective, name)

        def evaluate_at(self, *args, **kwargs):
            if len(calls) == 2 * 7:  # two splits per point
                raise Interrupt
            calls.append(1)
            return objective.evaluate_at(*args, **kwargs)

    with pytest.raises(Interrupt):
        landscape.compute_surface(Stopping(), directions, **GRID, path=path, verbose=0)
    partial = landscape.Surface.load(path)
    assert partial.computed.sum() == 7
    before = {n: v[partial.computed] for n, v in partial.values.items()}
    surf = landscape.compute_surface(
        recipe, directions, **GRID, path=path, executor=pool, verbose=0
    )
    assert_same_surface(landscape.compute_surface(objective, directions, **GRID, verbose=0), surf)
    for name, values in before.items():  # the 7 stored points were kept, not recomputed
        np.testing.assert_array_equal(surf[name][partial.computed], values)


class _DieOnce:
    """A recipe whose objective kills its worker process at one point, the first time only."""

    def __init__(self, recipe, marker):
        self.recipe, self.marker = recipe, marker

    def __repr__(self):
        return f"_DieOnce({self.recipe!r})"

    def __call__(self):
        objective = self.recipe()
        marker = self.marker
        evaluate_at = objective.evaluate_at

        def dying_evaluate_at(coefficients, *args, **kwargs):
            if coefficients[0] == 0.5 and not os.path.exists(marker):
                pathlib.Path(marker).touch()
                os._exit(1)  # the worker dies mid-chunk, like a kill -9 or an OOM kill
            return evaluate_at(coefficients, *args, **kwargs)

        objective.evaluate_at = dying_evaluate_at
        return objective


@pytest.mark.slow
def test_a_lost_worker_chunk_is_resubmitted(tmp_path, recipe, directions, serial):
    marker = str(tmp_path / "died")
    with landscape.process_pool(2) as executor:
        surf = landscape.compute_surface(
            _DieOnce(recipe, marker), directions, **GRID, executor=executor, chunk_size=2, verbose=0
        )
        assert executor.worker_pids()  # the restarted pool is alive
    assert os.path.exists(marker)  # a worker did die
    assert_same_surface(serial, surf)


class _FailInWorkers:
    """A recipe whose objective raises in worker processes (not in the coordinator)."""

    def __init__(self, recipe, coordinator_pid):
        self.recipe, self.coordinator_pid = recipe, coordinator_pid

    def __call__(self):
        objective = self.recipe()
        if os.getpid() != self.coordinator_pid:

            def failing_evaluate_at(*args, **kwargs):
                raise ZeroDivisionError("the objective failed in a worker")

            objective.evaluate_at = failing_evaluate_at
        return objective


def test_an_error_in_the_objective_is_raised_not_retried(tmp_path, recipe, directions, pool):
    """A failing objective is the user's error: it propagates and nothing is resubmitted."""
    path = str(tmp_path / "s.h5")
    pids = pool.worker_pids()
    with pytest.raises(ZeroDivisionError, match="failed in a worker"):
        landscape.compute_surface(
            _FailInWorkers(recipe, os.getpid()), directions, **GRID, path=path, executor=pool
        )
    assert pool.worker_pids() == pids  # not restarted
    assert not landscape.Surface.load(path).computed.any()  # the file is intact, empty
    bad = landscape.ObjectiveRecipe(recipe.model, data="embedded")  # 28x28 images, 12 inputs
    with pytest.raises(ValueError, match="inputs of shape"):
        landscape.compute_surface(bad, directions, **GRID, executor=pool, verbose=0)


def test_workers_refuse_a_model_that_changed(recipe, directions):
    job = executors.SurfaceJob(recipe, tuple(directions), "0" * 64, "1" * 64, None)
    with pytest.raises(ValueError, match="other weights"):
        executors.evaluate_chunk(job, np.zeros((1, 2)))


@pytest.mark.slow
def test_dask_local_cluster_surface_equals_serial(
    tmp_path, recipe, directions, serial, monkeypatch
):
    pytest.importorskip("distributed")
    path = str(tmp_path / "s.h5")
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # `workers` wins over the CPU count
    with landscape.dask_executor(workers=2) as executor:
        assert executor.workers == 2
        surf = landscape.compute_surface(
            recipe, directions, **GRID, path=path, executor=executor, verbose=0
        )
    assert_same_surface(serial, surf)
    assert_same_surface(serial, landscape.Surface.load(path))


@pytest.mark.slow
def test_mpi_pool_surface_equals_serial(recipe, directions, serial):
    pytest.importorskip("mpi4py.futures", reason="the optional [mpi] extra is not installed")
    with landscape.mpi_executor(2) as executor:
        surf = landscape.compute_surface(recipe, directions, **GRID, executor=executor, verbose=0)
    assert_same_surface(serial, surf)


def test_bad_arguments(recipe, directions, files, pool):
    obj = recipe()
    with pytest.raises(ValueError, match="ObjectiveRecipe"):
        landscape.compute_surface(obj, directions, **GRID, executor=pool, verbose=0)
    with pytest.raises(ValueError, match="must be an Objective or a function"):
        landscape.compute_surface("model.keras", directions, **GRID, verbose=0)
    with pytest.raises(ValueError, match="returned int"):
        landscape.compute_surface(lambda: 3, directions, **GRID, verbose=0)
    with pytest.raises(ValueError, match="chunk_size"):
        landscape.compute_surface(recipe, directions, **GRID, executor=pool, chunk_size=0)
    with pytest.raises(ValueError, match="does not exist"):
        landscape.ObjectiveRecipe("missing.keras")()
    with pytest.raises(ValueError, match="batch_size"):
        landscape.ObjectiveRecipe(files[0], batch_size=0)
    with pytest.raises(ValueError, match="test_samples"):
        landscape.ObjectiveRecipe(files[0], test_samples=-1)
    with pytest.raises(ValueError, match="workers"):
        landscape.ProcessPool(0)
    with pytest.raises(ValueError, match="Unknown backend 'spark'"):
        executors.make_executor(2, backend="spark").__enter__()
    with pytest.raises(ValueError, match="needs the Dask backend"):
        executors.make_executor(scheduler="tcp://127.0.0.1:1", backend="process").__enter__()


def test_cli_surface_with_workers_equals_serial(tmp_path, files):
    model_path, data = files
    runner = CliRunner()
    common = [model_path, "--data", data, "--x=-1:1:3", "--y=-1:1:3", "--batch-size", "64", "-q"]
    serial_path, pool_path = str(tmp_path / "serial.h5"), str(tmp_path / "pool.h5")
    result = runner.invoke(main, ["surface", *common, "--out", serial_path])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["surface", *common, "--out", pool_path, "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert_same_surface(landscape.Surface.load(serial_path), landscape.Surface.load(pool_path))
    result = runner.invoke(main, ["surface", *common, "--workers", "0", "--out", pool_path])
    assert result.exit_code == 2 and "workers" in result.output
    assert "Traceback" not in result.output


def test_make_executor_picks_in_process_or_the_process_pool():
    with executors.make_executor() as executor:
        assert executor is None
    with executors.make_executor(2) as executor:
        assert isinstance(executor, landscape.ProcessPool) and executor.workers == 2
        assert executor.threads_per_worker == max(1, (os.cpu_count() or 1) // 2)


class _Counting:
    """A recipe that counts how often it is called (in the process that calls it)."""

    def __init__(self, recipe):
        self.recipe, self.calls = recipe, 0

    def __repr__(self):
        return f"_Counting({self.recipe!r})"

    def __call__(self):
        self.calls += 1
        return self.recipe()


def test_recipe_keyword_with_the_objective_builds_it_only_in_the_workers(
    recipe, directions, serial, pool
):
    counting = _Counting(recipe)
    surf = landscape.compute_surface(
        recipe(), directions, **GRID, recipe=counting, executor=pool, verbose=0
    )
    assert_same_surface(serial, surf)
    assert counting.calls == 0  # the coordinator used the objective it was given


def test_recipe_keyword_alone_builds_the_objective_once_here(recipe, directions, serial, pool):
    counting = _Counting(recipe)
    surf = landscape.compute_surface(
        directions=directions, **GRID, recipe=counting, executor=pool, verbose=0
    )
    assert_same_surface(serial, surf)
    assert counting.calls == 1


def test_workers_refuse_an_objective_other_than_the_coordinators(files, recipe, directions, pool):
    other = landscape.ObjectiveRecipe(files[0], data=files[1], batch_size=64)
    model = other.load_model()
    model.layers[1].kernel.assign(model.layers[1].kernel + 1.0)
    with pytest.raises(ValueError, match="other weights"):
        landscape.compute_surface(
            other.build(model), directions, **GRID, recipe=recipe, executor=pool, verbose=0
        )
