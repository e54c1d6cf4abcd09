"""The CLI on the user's own data and models: arrays as stored, custom classes via --import.

Every loss is checked against ``model.evaluate`` on the same arrays: the centre of a surface is
the model itself (a = 0).
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import h5py
import keras
import numpy as np
import pytest
from click.testing import CliRunner

from landscape import executors
from landscape.cli import main

REL = 1e-5


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def save_npz(path, x, y, **extra):
    """Train = all samples, test = the first quarter."""
    m = max(1, len(x) // 4)
    np.savez(path, x_train=x, y_train=y, x_test=x[:m], y_test=y[:m], **extra)
    return path


def centre_loss(tmp_path, model_path, data_path, *args, out="s.h5"):
    """train_loss at a = 0 of a 3-point surface, and the command's output."""
    out = tmp_path / out
    result = invoke("surface", model_path, "--data", data_path, "--x=-1:1:3", "--test-samples",
                    0, "--out", out, *args)  # fmt: skip
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        return float(f["train_loss"][1]), result.output


def save(model, path, loss, x):
    model.compile("sgd", loss)
    model(x[:1])
    model.save(path)
    return path


def assert_one_sentence(result, start):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"Error: {start}"), result.output


# ----------------------------------------------------------------------------- data as stored
def test_regression_with_standardized_features_and_float_targets(tmp_path, rng):
    """x is never divided by 255, y stays float: the loss is model.evaluate's (not 149)."""
    x = rng.normal(size=(70, 4)) * 3.0  # standardized-like features, max well above 1
    y = x @ rng.normal(size=4) + 0.1 * rng.normal(size=70)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(1)])  # fmt: skip
    path = save(model, tmp_path / "reg.keras", "mse", x)
    loss, _ = centre_loss(tmp_path, path, save_npz(tmp_path / "reg.npz", x, y))
    assert loss == pytest.approx(model.evaluate(x, y, verbose=0), rel=REL)
    # sample weights stored beside the arrays weight the loss, as evaluate(sample_weight=) does
    w = rng.uniform(0.0, 2.0, size=70)
    data = save_npz(tmp_path / "w.npz", x, y, sample_weight_train=w)
    loss, output = centre_loss(tmp_path, path, data, out="w.h5")
    assert loss == pytest.approx(model.evaluate(x, y, sample_weight=w, verbose=0), rel=REL)
    assert "sample weights: sample_weight_train" in output


def test_multi_target_y_keeps_its_shape(tmp_path, rng):
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = rng.normal(size=(40, 2))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = save(model, tmp_path / "mt.keras", "mse", x)
    loss, _ = centre_loss(tmp_path, path, save_npz(tmp_path / "mt.npz", x, y))
    assert loss == pytest.approx(model.evaluate(x, y, verbose=0), rel=REL)


def test_token_ids_are_not_rescaled(tmp_path, rng):
    """Integer ids up to 999 stay ids (divided by 255 they would all be token 0..3)."""
    x = rng.integers(0, 1000, size=(48, 6))
    y = rng.integers(0, 3, size=(48, 1))  # (n, 1) class labels, as Keras's sparse losses take
    model = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(1000, 4),
                              keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(3)])  # fmt: skip
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    path = save(model, tmp_path / "tok.keras", loss_fn, x)
    loss, _ = centre_loss(tmp_path, path, save_npz(tmp_path / "tok.npz", x, y))
    assert loss == pytest.approx(model.evaluate(x, y, verbose=0), rel=REL)


def test_uint8_token_ids_are_refused_not_scaled(tmp_path, rng):
    """uint8 x reads as images: for a model with an integer input that is refused, not /255."""
    x = rng.integers(1, 9, size=(16, 6)).astype(np.uint8)
    model = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(9, 4),
                              keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(3)])  # fmt: skip
    path = save(model, tmp_path / "u8.keras", "sparse_categorical_crossentropy", x)
    result = invoke("surface", path, "--data", save_npz(tmp_path / "u8.npz", x, x[:, 0] % 3))
    assert_one_sentence(result, "The data")
    assert "uint8 x" in result.output and "int32" in result.output


def test_regularization_flag_adds_the_weight_penalties(tmp_path, rng):
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.normal(size=(32, 1)).astype(np.float32)
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(0.5)),
                              keras.layers.Dense(1)])  # fmt: skip
    path = save(model, tmp_path / "l2.keras", "mse", x)
    data = save_npz(tmp_path / "l2.npz", x, y)
    plain, output = centre_loss(tmp_path, path, data)
    assert "weight penalties are not included" in output
    mse = np.mean((model.predict(x, verbose=0).astype(np.float64) - y) ** 2)
    assert plain == pytest.approx(mse, rel=REL)
    with_penalty, _ = centre_loss(tmp_path, path, data, "--regularization", out="r.h5")
    assert with_penalty == pytest.approx(model.evaluate(x, y, verbose=0), rel=REL)
    assert with_penalty > plain


def test_lstm_on_timesteps_and_features(tmp_path, rng):
    """A 3-D x (n, timesteps, features) gets no channel axis; None matches any length."""
    x = rng.normal(size=(32, 5, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=32)
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(4), keras.layers.Dense(2)])
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    path = save(model, tmp_path / "lstm.keras", loss_fn, x)
    loss, _ = centre_loss(tmp_path, path, save_npz(tmp_path / "seq.npz", x, y))
    assert loss == pytest.approx(model.evaluate(x, y, verbose=0), rel=REL)


@pytest.fixture
def image_model(tmp_path):
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3),
                              keras.layers.Flatten(), keras.layers.Dense(3)])  # fmt: skip
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return model, save(model, tmp_path / "img.keras", loss_fn, np.zeros((1, 6, 6, 1)))


def test_uint8_images_are_scaled_and_given_a_channel_axis_and_it_is_said(
    tmp_path, rng, image_model
):
    model, path = image_model
    x = rng.integers(0, 256, size=(24, 6, 6), dtype=np.uint8)
    y = rng.integers(0, 3, size=24)
    loss, output = centre_loss(tmp_path, path, save_npz(tmp_path / "u8.npz", x, y))
    expected = model.evaluate(x[..., None].astype(np.float32) / 255.0, y, verbose=0)
    assert loss == pytest.approx(expected, rel=REL)
    assert "x: uint8 images scaled to [0, 1]" in output
    axis = "x: samples of shape (6, 6) given a trailing axis to match the model's input (6, 6, 1)"
    assert axis in output


def test_scale_divides_float_images(tmp_path, rng, image_model):
    model, path = image_model
    x = rng.uniform(0, 255, size=(24, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=24)
    data = save_npz(tmp_path / "f.npz", x, y)
    loss, output = centre_loss(tmp_path, path, data, "--scale", 255)
    assert loss == pytest.approx(model.evaluate(x / 255.0, y, verbose=0), rel=REL)
    assert "x: divided by 255" in output
    loss, _ = centre_loss(tmp_path, path, data, out="raw.h5")  # not asked: as is
    assert loss == pytest.approx(model.evaluate(x, y, verbose=0), rel=REL)


def test_bad_data_is_one_sentence(tmp_path, rng, image_model):
    _, path = image_model
    x = rng.normal(size=(8, 5)).astype(np.float32)
    result = invoke("surface", path, "--data", save_npz(tmp_path / "w.npz", x, np.zeros(8)))
    assert_one_sentence(result, "The data")
    assert "inputs of shape (5,); the model expects (6, 6, 1)" in result.output
    np.savez(tmp_path / "keys.npz", X=x)
    assert_one_sentence(invoke("hessian", path, "--data", tmp_path / "keys.npz"), "Data file")
    (tmp_path / "text.npz").write_text("not numpy")
    result = invoke("sharpness", path, "--data", tmp_path / "text.npz")
    assert_one_sentence(result, "Data file")
    result = invoke("surface", path, "--data", tmp_path / "w.npz", "--scale", -1)
    assert_one_sentence(result, "Invalid value for '--scale': -1.0 is not in the range x>0.")
    labels = rng.integers(5, 9, size=8)  # out of the model's 3 classes: TensorFlow refuses
    images = rng.normal(size=(8, 6, 6, 1)).astype(np.float32)
    data = save_npz(tmp_path / "l.npz", images, labels)
    result = invoke("surface", path, "--data", data, "--x=0:1:2", "--out", tmp_path / "l.h5")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output


def test_train_on_an_npz_of_uint8_images(tmp_path, rng):
    x = rng.integers(0, 256, size=(32, 6, 6), dtype=np.uint8)
    y = rng.integers(0, 2, size=(32, 1))
    data = save_npz(tmp_path / "d.npz", x, y, sample_weight_train=np.ones(32))
    result = invoke("train", "--model", "mlp", "--data", data, "--epochs", 1, "--optimizer",
                    "sgd", "--out", tmp_path / "m.keras")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "x: uint8 images scaled to [0, 1]" in result.output
    assert "not used by train" in result.output
    assert keras.models.load_model(tmp_path / "m.keras").input_shape == (None, 6, 6, 1)


# ------------------------------------------------------------------------ the user's classes
USER_MODULE = """
import keras

from sam import sam_train_step


class YourModel(keras.Model):  # README's pattern: not registered
    def train_step(self, data):
        return sam_train_step(self, data)


@keras.saving.register_keras_serializable(package="cli_user_data")
class Tiny(keras.Model):  # registered, layers named automatically
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(4, activation="tanh")
        self.out = keras.layers.Dense(1)

    def call(self, x):
        return self.out(self.hidden(x))
"""
MODULE = "user_models_cli"
REGISTERED = "cli_user_data>Tiny"


def _forget_user_module():
    keras.saving.get_custom_objects().pop(REGISTERED, None)
    for name in [n for n in sys.modules if n == MODULE or n == "_saved_" + MODULE]:
        del sys.modules[name]
    for key in [k for k in executors._IMPORTED if MODULE in k]:
        del executors._IMPORTED[key]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """The module file, a YourModel and a Tiny saved with it, and regression data."""
    root = tmp_path_factory.mktemp("user")
    module_path = root / f"{MODULE}.py"
    module_path.write_text(textwrap.dedent(USER_MODULE))
    spec = importlib.util.spec_from_file_location("_saved_" + MODULE, module_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = rng.normal(size=(40, 1)).astype(np.float32)
    inputs = keras.Input((3,))
    readme = module.YourModel(inputs, keras.layers.Dense(1)(keras.layers.Dense(4)(inputs)))
    save(readme, root / "readme.keras", "mse", x)
    tiny = module.Tiny()
    save(tiny, root / "tiny.keras", "mse", x)
    losses = {
        "readme": readme.evaluate(x, y, verbose=0),
        "tiny": tiny.evaluate(x, y, verbose=0),
    }
    _forget_user_module()
    yield root, save_npz(root / "reg.npz", x, y), losses
    _forget_user_module()


@pytest.fixture
def user(user_files, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # --import may add folders
    _forget_user_module()
    yield user_files
    _forget_user_module()


@pytest.mark.parametrize(("name", "cls"), [("readme", "YourModel"), ("tiny", "Tiny")])
def test_custom_class_without_import_is_one_sentence(user, name, cls):
    root, data, _ = user
    result = invoke("surface", root / f"{name}.keras", "--data", data)
    assert_one_sentence(result, f"Could not locate class '{cls}'")
    assert "pass --import" in result.output
    assert "@keras.saving.register_keras_serializable()" in result.output


@pytest.mark.parametrize("name", ["readme", "tiny"])
def test_custom_class_with_import_of_a_file(tmp_path, user, name):
    root, data, losses = user
    loss, _ = centre_loss(tmp_path, root / f"{name}.keras", data, "--import",
                          root / f"{MODULE}.py")  # fmt: skip
    assert loss == pytest.approx(losses[name], rel=REL)


def test_import_of_a_module_name_from_the_current_directory(tmp_path, user, monkeypatch):
    root, data, _ = user
    monkeypatch.chdir(root)
    result = invoke("hessian", "tiny.keras", "--data", "reg.npz", "--import", MODULE, "--k", 1,
                    "--samples", 0, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Hessian-vector products" in result.output


def test_a_module_that_fails_to_import_is_named(tmp_path, user):
    root, data, _ = user
    broken = tmp_path / "broken_models.py"
    broken.write_text("import keras\nraise RuntimeError('no GPU here')\n")
    result = invoke("sharpness", root / "tiny.keras", "--data", data, "--import", broken)
    assert_one_sentence(result, f"Could not import {str(broken)!r}")
    assert "RuntimeError: no GPU here" in result.output
    result = invoke("surface", root / "tiny.keras", "--data", data, "--import", "no_such_module")
    assert_one_sentence(result, "Could not import 'no_such_module'")
    assert "ModuleNotFoundError" in result.output


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.keras", None, "Model file '{}' does not exist."),
        ("garbage.keras", b"not a zip", "Model file '{}' is not a Keras model file"),
        ("garbage.h5", b"not hdf5", "Model file '{}' is not a Keras model file"),
        ("model.txt", b"x", "Model file '{}' is not a .keras (or legacy .h5) model file."),
    ],
)
def test_files_that_are_not_models_are_one_sentence(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    for command in ("surface", "hessian", "sharpness"):
        assert_one_sentence(invoke(command, path), message.format(path))


@pytest.mark.slow
def test_workers_import_the_module_too(tmp_path, user):
    """A spawned worker process imports --import itself and rebuilds the same objective."""
    root, data, losses = user
    out = tmp_path / "w.h5"
    result = invoke("surface", root / "tiny.keras", "--data", data, "--import",
                    root / f"{MODULE}.py", "--x=-1:1:3", "--test-samples", 0, "--workers", 1,
                    "--out", out, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        z = f["train_loss"][()]
    assert np.isfinite(z).all() and z[1] == pytest.approx(losses["tiny"], rel=REL)
