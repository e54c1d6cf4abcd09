"""The HDF5 surface file: layout, resume (interrupted, kill -9), refusal, loss-landscape files."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import keras
import numpy as np
import pytest

import landscape
from landscape import io

# The model, data and directions both this process and a child process build, identically.
PROBLEM = textwrap.dedent(
    '''
    import keras
    import numpy as np

    import landscape


    def problem(n=600):
        """A small classifier with fixed weights (explicit layer names keep the paths equal)."""
        rng = np.random.default_rng(0)
        x = rng.normal(size=(n, 16)).astype("float32")
        y = rng.integers(0, 3, n).astype("int32")
        inp = keras.Input((16,), name="inp")
        h = keras.layers.Dense(64, activation="relu", name="h1")(inp)
        h = keras.layers.Dense(64, activation="relu", name="h2")(h)
        model = keras.Model(inp, keras.layers.Dense(3, name="out")(h), name="net")
        for v in model.variables:
            v.assign((0.3 * rng.normal(size=tuple(v.shape))).astype("float32"))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        obj = landscape.Objective(model, (x, y), loss, batch_size=64)
        dirs = [landscape.random_direction(model, seed=s) for s in (0, 1)]
        return model, obj, dirs
    '''
)
namespace: dict = {}
exec(PROBLEM, namespace)  # noqa: S102 - the same source runs in the child process
problem = namespace["problem"]

GRID = {"x": "-1:1:6", "y": "-1:1:5"}


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def reference():
    """An uninterrupted run (in memory) to compare every resumed file against."""
    model, obj, dirs = problem()
    surf = landscape.compute_surface(obj, dirs, **GRID, verbose=0)
    return surf


class _Interrupting:
    """An Objective stand-in that raises after ``k`` points (and counts evaluations)."""

    def __init__(self, obj, k):
        self.obj, self.k, self.calls = obj, k, 0

    def __getattr__(self, name):
        return getattr(self.obj, name)

    def evaluate_at(self, *args, **kwargs):
        if self.calls == self.k:
            raise KeyboardInterrupt("interrupted for the test")
        self.calls += 1
        return self.obj.evaluate_at(*args, **kwargs)


def test_file_layout_readable_with_plain_h5py(tmp_path, reference):
    _, obj, dirs = problem()
    path = str(tmp_path / "s.h5")
    surf = landscape.compute_surface(obj, dirs, **GRID, path=path, verbose=0)
    with h5py.File(path, "r") as f:
        assert {"xcoordinates", "ycoordinates", "train_loss", "train_acc", "directions"} <= set(f)
        np.testing.assert_array_equal(f["xcoordinates"][()], np.linspace(-1, 1, 6))
        np.testing.assert_array_equal(f["ycoordinates"][()], np.linspace(-1, 1, 5))
        assert f["train_loss"].shape == (5, 6) and f["train_loss"].dtype == np.float64
        np.testing.assert_array_equal(f["train_loss"][()], reference["train_loss"])
        assert f.attrs["format"] == io.FORMAT and f.attrs["format_version"] == 1
        assert f.attrs["model_fingerprint"] == obj.weights_fingerprint()
        assert f.attrs["norm"] == "filter" and f.attrs["ignore"] == "biasbn"
        assert f.attrs["seeds"] == "[0, 1]"
        assert {"created", "package_version", "directions_fingerprint"} <= set(f.attrs)
        assert set(f["directions"]) == {"x", "y"}
    loaded = landscape.Surface.load(path)
    assert loaded.shape == (5, 6) and loaded.complete
    np.testing.assert_array_equal(loaded["train_acc"], surf["train_acc"])
    assert [d.fingerprint() for d in loaded.directions] == [d.fingerprint() for d in dirs]
    assert loaded.metadata["seeds"] == [0, 1]
    assert loaded.metadata["directions_metadata"][1]["norm"] == "filter"
    assert not os.path.exists(path + ".tmp")


def test_resume_after_an_interruption_computes_only_missing_points(tmp_path, reference):
    _, obj, dirs = problem()
    path = str(tmp_path / "s.h5")
    interrupting = _Interrupting(obj, k=7)
    with pytest.raises(KeyboardInterrupt):
        landscape.compute_surface(interrupting, dirs, **GRID, path=path, verbose=0)
    partial = landscape.Surface.load(path)
    assert np.count_nonzero(~np.isnan(partial["train_loss"])) == 7  # flushed on the way out
    np.testing.assert_array_equal(
        partial["train_loss"].ravel()[:7], reference["train_loss"].ravel()[:7]
    )
    counting = _Interrupting(obj, k=10**9)
    final = landscape.compute_surface(counting, dirs, **GRID, path=path, verbose=0)
    assert counting.calls == 30 - 7
    for name in reference.values:
        np.testing.assert_array_equal(final[name], reference[name])
        np.testing.assert_array_equal(landscape.Surface.load(path)[name], reference[name])
    # A complete file: calling again computes nothing.
    again = _Interrupting(obj, k=0)
    landscape.compute_surface(again, dirs, **GRID, path=path, verbose=0)


def test_mismatched_resume_is_refused_and_the_file_untouched(tmp_path):
    model, obj, dirs = problem()
    path = str(tmp_path / "s.h5")
    with pytest.raises(KeyboardInterrupt):
        landscape.compute_surface(_Interrupting(obj, 3), dirs, **GRID, path=path, verbose=0)
    digest = _sha(path)
    cases = [
        ({"x": "-1:1:7", "y": GRID["y"]}, dirs, obj, r"x differs \(file -1:1:6, run -1:1:7\)"),
        ({"x": GRID["x"]}, dirs[:1], obj, "the grid is 2D in the file"),
        (GRID, [dirs[0], landscape.random_direction(model, seed=5)], obj, "directions differ"),
    ]
    for grid, d, o, message in cases:
        with pytest.raises(ValueError, match=message):
            landscape.compute_surface(o, d, **grid, path=path, verbose=0)
        assert _sha(path) == digest
    model.layers[-1].bias.assign(model.layers[-1].bias.value + 1.0)  # other model weights
    with pytest.raises(ValueError, match="does not match .*model weights differ.*untouched"):
        landscape.compute_surface(obj, dirs, **GRID, path=path, verbose=0)
    assert _sha(path) == digest
    foreign = str(tmp_path / "foreign.h5")
    with h5py.File(foreign, "w") as f:
        f["xcoordinates"] = np.linspace(-1, 1, 6)
    with pytest.raises(ValueError, match="not written by sam-landscape"):
        landscape.compute_surface(obj, dirs[:1], x=GRID["x"], path=foreign, verbose=0)


def test_loss_landscape_files_load_with_placeholders_as_nan(tmp_path):
    """Their 2D arrays are shaped (nx, ny) but filled in meshgrid ravel order, i.e. [iy, ix]."""
    xs, ys = np.linspace(-1, 1, 4), np.linspace(-2, 2, 3)
    xx, yy = np.meshgrid(xs, ys)  # (ny, nx)
    truth = xx**2 + 10 * yy  # [iy, ix]
    theirs = -np.ones((len(xs), len(ys)))
    for ind in range(truth.size - 2):  # the last two points "not computed yet"
        theirs.ravel()[ind] = truth.ravel()[ind]
    path = str(tmp_path / "ll.h5")
    with h5py.File(path, "w") as f:
        f["dir_file"] = "dirs.h5"
        f["xcoordinates"], f["ycoordinates"] = xs, ys
        f["train_loss"], f["train_acc"] = theirs, 90.0 * np.ones_like(theirs)
    surf = landscape.Surface.load(path)
    assert surf.shape == (3, 4) and surf.metadata["source"] == "loss-landscape"
    want = truth.copy()
    want.ravel()[-2:] = np.nan
    np.testing.assert_array_equal(surf["train_loss"], want)
    assert not surf.complete and set(surf.values) == {"train_loss", "train_acc"}
    path1 = str(tmp_path / "ll1.h5")
    with h5py.File(path1, "w") as f:
        f["xcoordinates"], f["train_loss"] = xs, np.array([0.5, -1.0, 0.25, 1.0])
    np.testing.assert_array_equal(
        landscape.Surface.load(path1)["train_loss"], [0.5, np.nan, 0.25, 1.0]
    )


CHILD = PROBLEM + textwrap.dedent(
    """
    import sys, time
    import tensorflow as tf
    tf.config.threading.set_inter_op_parallelism_threads(2)
    tf.config.threading.set_intra_op_parallelism_threads(2)

    class Slow:  # a little slower per point, so that the parent can kill it mid-run
        def __init__(self, obj):
            self.obj = obj
        def __getattr__(self, name):
            return getattr(self.obj, name)
        def evaluate_at(self, *args, **kwargs):
            time.sleep(0.02)
            return self.obj.evaluate_at(*args, **kwargs)

    _, obj, dirs = problem()
    landscape.compute_surface(
        Slow(obj), dirs, x="-1:1:12", y="-1:1:10", path=sys.argv[1], verbose=0, flush_seconds=0
    )
    """
)


@pytest.mark.slow
def test_kill_minus_9_leaves_a_file_that_opens_and_resumes(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path = str(tmp_path / "s.h5")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    rng = np.random.default_rng()
    done_before = []
    for _ in range(2):
        child = subprocess.Popen(
            [sys.executable, str(script), path], env=env, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 120
            start_done = done_before[-1] if done_before else 0
            # Wait until the child has written a few points, then kill it at a random moment
            # (flush_seconds=0: it is rewriting the file after every point).
            while time.monotonic() < deadline and child.poll() is None:
                if os.path.exists(path):
                    try:
                        n = np.count_nonzero(~np.isnan(landscape.Surface.load(path)["train_loss"]))
                    except (OSError, KeyError):
                        n = -1  # mid-replace on some file systems; try again
                    if n >= start_done + 5:
                        break
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.1))
            assert child.poll() is None, "the child finished before it could be killed"
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
        surf = landscape.Surface.load(path)  # opens after kill -9
        done_before.append(int(np.count_nonzero(~np.isnan(surf["train_loss"]))))
        assert 0 < done_before[-1] < 120
    assert done_before[1] > done_before[0]
    _, obj, dirs = problem()
    resumed = landscape.compute_surface(obj, dirs, x="-1:1:12", y="-1:1:10", path=path, verbose=0)
    fresh = landscape.compute_surface(obj, dirs, x="-1:1:12", y="-1:1:10", verbose=0)
    for name in fresh.values:
        np.testing.assert_allclose(resumed[name], fresh[name], rtol=1e-6)
    assert keras.backend.backend() == "tensorflow"


def test_unreadable_file_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not readable HDF5"):
        landscape.Surface.load(str(path))
    with pytest.raises(ValueError, match="does not exist"):
        landscape.Surface.load(str(tmp_path / "missing.h5"))


def test_resume_with_dataset_data_and_no_data_fingerprint(tmp_path):
    import tensorflow as tf

    model, obj, dirs = problem(n=100)
    x, y = (t.numpy() for t in (obj._splits["train"].x, obj._splits["train"].y))
    ds_obj = landscape.Objective(
        model,
        tf.data.Dataset.from_tensor_slices((x, y)).batch(32),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    assert ds_obj.data_fingerprint() is None
    path = str(tmp_path / "s.h5")
    with pytest.raises(KeyboardInterrupt):
        landscape.compute_surface(
            _Interrupting(ds_obj, 2), dirs[:1], x="-1:1:4", path=path, verbose=0
        )
    counting = _Interrupting(ds_obj, 10**9)
    surf = landscape.compute_surface(counting, dirs[:1], x="-1:1:4", path=path, verbose=0)
    assert counting.calls == 2 and surf.complete
    assert landscape.Surface.load(path).metadata["data_fingerprint"] is None


def test_points_whose_loss_is_nan_count_as_computed(tmp_path):
    """A diverged point (here sqrt of a negative weight) is evaluated once, not on every resume."""
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")]
    )
    data = (np.ones((8, 1), "float32"), np.zeros((8, 1), "float32"))
    obj = landscape.Objective(model, data, lambda y, p: keras.ops.sqrt(p[:, 0]) + 0 * y[:, 0])
    d = landscape.random_direction(model, seed=0)  # filter-normalized: d = ±1, w0 = 1
    counting = _Interrupting(obj, 10**9)
    path = str(tmp_path / "s.h5")
    surf = landscape.compute_surface(counting, [d], x="-3:3:7", path=path, verbose=0)
    loss = surf["train_loss"]
    assert np.isnan(loss).sum() == 2 and surf.complete and surf.computed.all()
    np.testing.assert_allclose(loss[~np.isnan(loss)], np.sqrt([0, 1, 2, 3, 4]), atol=1e-6)
    loaded = landscape.Surface.load(path)
    assert loaded.complete and np.array_equal(loaded["train_loss"], loss, equal_nan=True)
    with h5py.File(path, "r") as f:
        assert f["computed"][()].tolist() == [1] * 7
    again = landscape.compute_surface(counting, [d], x="-3:3:7", path=path, verbose=0)
    assert counting.calls == 7 and again.complete  # nothing recomputed
    # Without the mask (files of loss-landscape or older versions) NaN means "not computed".
    assert not landscape.Surface(surf.x, None, surf.values).complete
