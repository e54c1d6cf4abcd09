"""Data loaders: the embedded subset, .npz files, and errors that say what to do."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest

import landscape
from landscape.data import embedded_path, load_dataset
from sam import _compat


def test_embedded_subset_is_stratified_small_and_normalized(mnist_small):
    (x, y), (xt, yt) = mnist_small
    assert x.shape == (6000, 28, 28, 1) and xt.shape == (1000, 28, 28, 1)
    assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
    assert np.bincount(y).tolist() == [600] * 10 and np.bincount(yt).tolist() == [100] * 10
    with open(embedded_path(), "rb") as f:
        assert len(f.read()) <= 2_000_000


def test_embedded_subset_is_a_subset_of_mnist():
    source = "../shared/data/mnist.npz"
    try:
        full = np.load(source)
    except FileNotFoundError:
        pytest.skip("the full MNIST is not beside the repository")
    small = np.load(embedded_path())
    np.testing.assert_array_equal(full["x_train"][small["train_index"]], small["x_train"])
    np.testing.assert_array_equal(full["y_test"][small["test_index"]], small["y_test"])
    assert hashlib.sha256(small["x_train"].tobytes()).hexdigest()  # readable and complete


def test_npz_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 255, (5, 4, 4, 3), dtype=np.uint8),
        y_train=np.arange(5, dtype=np.uint8).reshape(5, 1),
        x_test=rng.integers(0, 255, (2, 4, 4, 3), dtype=np.uint8),
        y_test=np.arange(2, dtype=np.uint8),
    )
    (x, y), (xt, yt) = load_dataset(str(path))
    assert x.shape == (5, 4, 4, 3) and x.max() <= 1.0 and y.tolist() == [0, 1, 2, 3, 4]
    np.savez(tmp_path / "bad.npz", x_train=np.zeros(3))
    with pytest.raises(ValueError, match="lacks the arrays"):
        load_dataset(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="Unknown data set 'imagenet'"):
        load_dataset("imagenet")


def test_missing_tensorflow_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
    with pytest.raises(ImportError) as err:
        _compat.require_tensorflow()
    assert str(err.value) == _compat.INSTALL_HINT
    assert "sam-landscape[cpu]" in str(err.value)


def test_version_is_exposed():
    assert landscape.__version__
