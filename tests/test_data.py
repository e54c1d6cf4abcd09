"""Data loaders: the embedded subset, .npz files, and errors that say what to do."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest

import landscape
from landscape.data import embedded_path, load_dataset, read_dataset
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
    assert x.shape == (5, 4, 4, 3) and x.dtype == np.float32 and x.max() <= 1.0
    assert y.shape == (5, 1) and y.dtype == np.uint8  # as stored: Keras's sparse losses take it
    (x, y), _ = load_dataset(str(path), images=True)  # the zoo's convention: a label vector
    assert y.dtype == np.int32 and y.tolist() == [0, 1, 2, 3, 4]
    np.savez(tmp_path / "bad.npz", x_train=np.zeros(3), X_test=np.zeros(3))
    with pytest.raises(ValueError, match=r"lacks the arrays .*it has \['X_test', 'x_train'\]"):
        load_dataset(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="Unknown data set 'imagenet'"):
        load_dataset("imagenet")


def _npz(path, **arrays):
    n, m = len(arrays["x_train"]), len(arrays["x_test"])
    arrays.setdefault("y_train", np.zeros(n, np.int64))
    arrays.setdefault("y_test", np.zeros(m, np.int64))
    np.savez(path, **arrays)
    return str(path)


def test_npz_arrays_are_used_as_stored(tmp_path, rng):
    """Standardized features, float and multi-target y, token ids: nothing rescaled or cast."""
    x = rng.normal(size=(6, 3)) * 300.0  # max far above 1: once divided by 255
    y = rng.normal(size=(6, 2))
    path = _npz(tmp_path / "r.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    data = read_dataset(path)
    (xs, ys), (xt, yt) = data.arrays()
    np.testing.assert_allclose(xs, x.astype(np.float32))  # float64 -> float32, as Keras does
    assert xs.dtype == np.float32 and ys.dtype == np.float32 and ys.shape == (6, 2)
    np.testing.assert_allclose(ys, y.astype(np.float32))
    assert data.notes == ()
    tokens = rng.integers(0, 5000, size=(6, 7))
    labels = rng.integers(0, 3, size=(6, 1))
    path = _npz(tmp_path / "t.npz", x_train=tokens, y_train=labels, x_test=tokens, y_test=labels)
    (xs, ys), _ = load_dataset(path)
    assert xs.dtype == tokens.dtype and (xs == tokens).all()
    assert ys.shape == (6, 1) and (ys == labels).all()
    seq = rng.normal(size=(6, 5, 3)).astype(np.float32)  # (n, timesteps, features): no axis added
    path = _npz(tmp_path / "s.npz", x_train=seq, x_test=seq)
    assert load_dataset(path)[0][0].shape == (6, 5, 3)


def test_uint8_images_and_scale_are_said(tmp_path, rng):
    images = rng.integers(0, 256, size=(4, 5, 5), dtype=np.uint8)
    path = _npz(tmp_path / "u.npz", x_train=images, x_test=images)
    data = read_dataset(path)
    assert data.notes == ("x: uint8 images scaled to [0, 1]",)
    np.testing.assert_allclose(data.train[0], images / 255.0, rtol=1e-6)
    assert data.train[0].shape == (4, 5, 5)  # the model decides about a channel axis
    floats = images.astype(np.float32)
    path = _npz(tmp_path / "f.npz", x_train=floats, x_test=floats)
    assert read_dataset(path).train[0].max() == floats.max()  # never guessed
    data = read_dataset(path, scale=255)
    assert data.notes == ("x: divided by 255",)
    np.testing.assert_allclose(data.train[0], floats / 255.0, rtol=1e-6)
    with pytest.raises(ValueError, match="Argument `scale` must be a positive number"):
        read_dataset(path, scale=0)
    # the named sets keep the image convention, silently
    (x, y), _ = read_dataset("embedded").arrays()
    assert x.shape[1:] == (28, 28, 1) and y.ndim == 1 and read_dataset("embedded").notes == ()


def test_sample_weights(tmp_path, rng):
    x = rng.normal(size=(4, 2))
    w = np.array([1.0, 0.0, 2.0, 0.5])
    path = _npz(tmp_path / "w.npz", x_train=x, x_test=x, sample_weight_train=w)
    data = read_dataset(path)
    assert len(data.train) == 3 and len(data.test) == 2
    np.testing.assert_allclose(data.train[2], w)
    assert data.notes == ("sample weights: sample_weight_train",)
    path = _npz(tmp_path / "bad.npz", x_train=x, x_test=x[:2], sample_weight_test=w)
    with pytest.raises(ValueError, match="sample_weight_test must hold one number per sample"):
        read_dataset(path)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda f: f.write(b"a,b\n1,2\n"), "is not an .npz archive"),
        (lambda f: np.save(f, np.zeros(3)), "holds one array"),
        (
            lambda f: np.savez(
                f,
                x_train=np.zeros((3, 2)),
                y_train=np.zeros(2),
                x_test=np.zeros((1, 2)),
                y_test=np.zeros(1),
            ),
            "x_train has 3 samples but y_train has 2",
        ),  # fmt: skip
        (
            lambda f: np.savez(
                f,
                x_train=np.array([{}], dtype=object),
                y_train=np.zeros(1),
                x_test=np.zeros(1),
                y_test=np.zeros(1),
            ),
            "holds Python objects",
        ),  # fmt: skip
    ],
)
def test_malformed_files_are_one_sentence(tmp_path, write, message):
    path = tmp_path / "data.npz"
    with open(path, "wb") as f:
        write(f)
    with pytest.raises(ValueError, match=message):
        read_dataset(str(path))


def test_match_model_adds_a_stated_channel_axis_or_names_both_shapes(rng):
    import keras

    images = rng.random((3, 6, 6)).astype(np.float32)
    data = landscape.data.Dataset((images, np.zeros(3)), (images, np.zeros(3)), (), "d.npz")
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten()])
    fitted = landscape.data.match_model(data, model)
    assert fitted.train[0].shape == fitted.test[0].shape == (3, 6, 6, 1)
    assert fitted.notes == (
        "x: samples of shape (6, 6) given a trailing axis to match the model's input (6, 6, 1)",
    )
    rnn = keras.Sequential([keras.Input((None, 6)), keras.layers.SimpleRNN(2)])
    assert landscape.data.match_model(data, rnn) is data  # None matches any number of steps
    dense = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"inputs of shape \(6, 6\); the model expects \(5,\)"):
        landscape.data.match_model(data, dense)


def test_missing_tensorflow_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
    with pytest.raises(ImportError) as err:
        _compat.require_tensorflow()
    assert str(err.value) == _compat.INSTALL_HINT
    assert "sam-landscape[cpu]" in str(err.value)


def test_version_is_exposed():
    assert landscape.__version__


def test_a_misspelt_data_set_name_is_named_as_such(tmp_path, monkeypatch):
    """'mnst' is no file: the recipe keeps it as a name, and loading says which names exist."""
    monkeypatch.chdir(tmp_path)
    recipe = landscape.ObjectiveRecipe(str(tmp_path / "m.keras"), data="mnst")
    assert recipe.data == "mnst"
    with pytest.raises(ValueError, match="Unknown data set 'mnst'; expected one of"):
        read_dataset(recipe.data)
    assert landscape.ObjectiveRecipe("m.keras", data="mine.npz").data == str(tmp_path / "mine.npz")
