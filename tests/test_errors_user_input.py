"""Inputs found by outside testing: each works as Keras does, or is refused in one sentence."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import scipy.sparse
import tensorflow as tf

import landscape
import sam


def _sparse_problem(rng, n=21, d=7):
    x = rng.random((n, d)).astype("float32")
    x[x < 0.6] = 0.0  # mostly zeros
    y = rng.integers(0, 3, n)
    model = keras.Sequential(
        [keras.Input((d,)), keras.layers.Dense(4, "tanh"), keras.layers.Dense(3)]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    return model, x, y


@pytest.mark.parametrize("kind", ["scipy_csr", "tf_sparse", "dataset"])
def test_sparse_x_is_evaluated_as_model_evaluate_does(rng, kind):
    model, x, y = _sparse_problem(rng)
    xs = scipy.sparse.csr_matrix(x) if kind == "scipy_csr" else tf.sparse.from_dense(x)
    # n = 21, batch 21: one batch, so Keras's batch-size-weighted mean is the data-set mean.
    ref = model.evaluate(xs, y, batch_size=21, verbose=0, return_dict=True)
    data = (xs, y)
    if kind == "dataset":
        data = tf.data.Dataset.from_tensor_slices((xs, y)).batch(8)
    objective = landscape.Objective(model, data, batch_size=8)  # three batches, last partial
    got = objective.evaluate()
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert got["acc"] == pytest.approx(ref["accuracy"], abs=1e-12)
    # The same numbers on the dense array: the gradient and an HVP run through sparse batches.
    dense = landscape.Objective(model, (x, y), batch_size=8)
    for a, b in zip(objective.value_and_gradient()[1], dense.value_and_gradient()[1]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    v = [rng.standard_normal(w.shape) for w in model.trainable_weights]
    for mode in ("forward_over_backward", "backward_over_backward"):
        for a, b in zip(
            objective.hessian_vector_product(v, mode=mode),
            dense.hessian_vector_product(v, mode=mode),
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
    if kind != "dataset":  # a dataset has no fingerprint
        assert objective.data_fingerprint() == objective.data_fingerprint()
        assert objective.data_fingerprint() != dense.data_fingerprint()


def _string_model(vocabulary):
    model = keras.Sequential(
        [
            keras.Input((1,), dtype="string"),
            keras.layers.StringLookup(vocabulary=vocabulary, output_mode="one_hot"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize("dtype", [str, object])
def test_string_data_fingerprint_is_deterministic_and_a_surface_resumes(tmp_path, rng, dtype):
    words = ["red", "green", "blue", "cyan"]
    model = _string_model(words)
    x = np.array([[w] for w in rng.choice(words, 12)], dtype=dtype)
    y = rng.integers(0, 2, 12)
    obj = landscape.Objective(model, (x, y), batch_size=5)
    again = landscape.Objective(model, (x.copy(), y), batch_size=5)  # other objects, same text
    assert obj.data_fingerprint() == obj.data_fingerprint() == again.data_fingerprint()
    d = landscape.random_direction(model, seed=1)
    path = tmp_path / "strings.h5"
    first = landscape.compute_surface(obj, [d], x="-1:1:3", path=path, verbose=0)
    resumed = landscape.compute_surface(again, [d], x="-1:1:3", path=path, verbose=0)
    np.testing.assert_array_equal(resumed.values["train_loss"], first.values["train_loss"])
    other = x.copy()
    other[0, 0] = "magenta" if other[0, 0] != "magenta" else "red"
    changed = landscape.Objective(model, (other, y), batch_size=5)
    assert changed.data_fingerprint() != obj.data_fingerprint()
    with pytest.raises(ValueError, match="data differ"):
        landscape.compute_surface(changed, [d], x="-1:1:3", path=path, verbose=0)


class _Weights(keras.callbacks.Callback):
    """Records the model's weights after every training step and when evaluation begins/ends."""

    def __init__(self):
        super().__init__()
        self.steps, self.test_begin, self.test_end = [], [], []

    def _now(self):
        return [np.array(w) for w in self.model.trainable_weights]

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(self._now())

    def on_test_begin(self, logs=None):
        self.test_begin.append(self._now())

    def on_test_end(self, logs=None):
        self.test_end.append(self._now())


@pytest.mark.parametrize("family", ["SAM", "GSAM"])
def test_swap_ema_weights_works_with_sam(rng, tmp_path, family):
    momentum = 0.6
    base = keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=momentum)
    optimizer = getattr(sam, family)(base, rho=0.05)
    inputs = keras.Input((3,))
    model = sam.SAMModel(inputs, keras.layers.Dense(2)(keras.layers.Dense(4, "tanh")(inputs)))
    model.compile(optimizer=optimizer, loss="mse")
    x, y = rng.standard_normal((32, 3)), rng.standard_normal((32, 2))
    record = _Weights()
    model.fit(x, y, batch_size=8, epochs=1, validation_data=(x, y), verbose=0,
              callbacks=[keras.callbacks.SwapEMAWeights(), record])  # fmt: skip
    # Keras's EMA by hand: a₁ = w₁, aₜ = m aₜ₋₁ + (1 - m) wₜ over the weights after each step.
    ema = record.steps[0]
    for weights in record.steps[1:]:
        ema = [momentum * a + (1 - momentum) * w for a, w in zip(ema, weights)]
    assert len(record.steps) == 4
    for swapped, by_hand in zip(record.test_begin[0], ema):  # evaluation sees the EMA
        np.testing.assert_allclose(swapped, by_hand, rtol=1e-6, atol=1e-7)
    for back, raw in zip(record.test_end[0], record.steps[-1]):  # and the raw weights after
        np.testing.assert_allclose(back, raw, rtol=1e-6, atol=1e-7)
    assert not np.allclose(ema[0], record.steps[-1][0])  # the two differ: the test can fail
    model.save(tmp_path / "ema.keras")  # the forwarded EMA is saved once, by the base
    loaded = keras.saving.load_model(tmp_path / "ema.keras")
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a, b)


def test_swap_ema_weights_without_ema_on_the_base_is_refused(rng):
    model = sam.SAMModel(inputs := keras.Input((3,)), keras.layers.Dense(2)(inputs))
    model.compile(optimizer=sam.SAM(keras.optimizers.SGD(0.1)), loss="mse")
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    with pytest.raises(ValueError, match="use_ema=True"):
        model.fit(x, y, epochs=1, validation_data=(x, y), verbose=0,
                  callbacks=[keras.callbacks.SwapEMAWeights()])  # fmt: skip


def test_quantized_model_in_float64_is_refused_in_one_sentence(rng):
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5, name="first"), keras.layers.Dense(2, name="head")]
    )
    model.compile(loss="mse")
    with pytest.warns(UserWarning):  # Keras: the InputLayer has no quantize method
        model.quantize("int8")
    x, y = rng.standard_normal((8, 4)), rng.standard_normal((8, 2))
    with pytest.raises(ValueError) as info:
        landscape.Objective(model, (x, y), precision="float64")
    message = str(info.value)
    assert "\n" not in message and "'first' is quantized" in message
    assert "Received: precision='float64'" in message
    # Its own float32 arithmetic works, as model.evaluate computes it.
    for precision in ("auto", "float32", "model"):
        objective = landscape.Objective(model, (x, y), precision=precision)
        assert objective.precision == "float32"
        reference = model.evaluate(x, y, batch_size=8, verbose=0)
        assert objective.evaluate()["loss"] == pytest.approx(reference, rel=1e-6)


# ---------------------------------------------------------------------------------------- CLI
# Every command's numbers are checked at parsing, before any model is loaded: the model files
# below do not exist, so a message about the option (and not about the model) shows that the
# option was refused first.
_BAD_OPTIONS = {
    "train": [("--lr", "nan"), ("--lr", "0"), ("--rho", "inf"), ("--rho", "-1"),
              ("--momentum", "nan"), ("--momentum", "1.5"), ("--epochs", "0"),
              ("--batch-size", "0"), ("--weight-decay", "-inf"), ("--alpha", "nan"),
              ("--lmbda", "1"), ("--beta", "0"), ("--sam-last", "nan"), ("--seed", "-1"),
              ("--depth", "9"), ("--scale", "nan"), ("--track-samples", "0")],
    "surface": [("--scale", "nan"), ("--scale", "0"), ("--batch-size", "nan"),
                ("--samples", "-1"), ("--workers", "0"), ("--seed", "-3"), ("--x", "nan:1:3"),
                ("--y", "-inf:1:3")],
    "plot": [("--vmin", "nan"), ("--vmax", "inf"), ("--levels", "0")],
    "hessian": [("--tol", "nan"), ("--tol", "1"), ("--trace-tol", "inf"), ("--k", "0"),
                ("--runs", "0"), ("--max-iter", "-2"), ("--scale", "-inf")],
    "sharpness": [("--epsilon", "nan"), ("--epsilon", "-1"), ("--trace-tol", "nan"),
                  ("--steps", "0"), ("--batch-size", "-5")],
    "figures": [("--lr", "nan"), ("--rho", "-0.1"), ("--label-noise", "nan"),
                ("--label-noise", "2"), ("--basin-rise", "inf"), ("--seeds", "0"),
                ("--depth", "10"), ("--grid", "nan:1:3")],
    "connect": [("--lr", "nan"), ("--lr", "-1"), ("--momentum", "inf"), ("--epochs", "-1"),
                ("--points", "1"), ("--plane-points", "nan")],
}  # fmt: skip
_POSITIONAL = {
    "train": [], "surface": ["m.keras"], "plot": ["s.h5"], "hessian": ["m.keras"],
    "sharpness": ["m.keras"], "figures": [], "connect": ["a.keras", "b.keras"],
}  # fmt: skip
_OUTPUTS = {
    "train": ["--out"], "surface": ["--out"], "plot": ["--out", "--vtk"],
    "hessian": ["--json", "--density", "--layers-plot"], "sharpness": ["--json"],
    "connect": ["--out", "--plot", "--plane"],
}  # fmt: skip


def _cli(tmp_path, monkeypatch, *args):
    from click.testing import CliRunner

    from landscape import cli, executors

    def never(*_, **__):
        raise AssertionError("a model was loaded")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(executors, "load_model", never)
    result = CliRunner().invoke(cli.main, list(args))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written
    return lines[0]


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [(c, o, v) for c, pairs in _BAD_OPTIONS.items() for o, v in pairs],
)
def test_cli_refuses_a_bad_number_before_any_work(tmp_path, monkeypatch, command, option, value):
    line = _cli(tmp_path, monkeypatch, command, *_POSITIONAL[command], f"{option}={value}")
    name = option.lstrip("-")
    assert f"'{option}'" in line or f"`{name}`" in line, line
    assert "does not exist" not in line  # the option, not the (missing) model file


@pytest.mark.parametrize(
    ("command", "option"), [(c, o) for c, options in _OUTPUTS.items() for o in options]
)
def test_cli_refuses_an_output_in_a_missing_folder_up_front(tmp_path, monkeypatch, command, option):
    line = _cli(tmp_path, monkeypatch, command, *_POSITIONAL[command], option, "nope/out.file")
    assert line == f"Error: Invalid value for '{option}': the folder 'nope' does not exist."


@pytest.mark.parametrize("command", ["surface", "hessian", "sharpness", "connect"])
def test_cli_says_what_a_savedmodel_directory_is(tmp_path, monkeypatch, command):
    saved = tmp_path / "exported"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    line = _cli_in(saved, monkeypatch, command, str(saved), str(saved))
    assert "is a TensorFlow SavedModel directory, not a .keras model file" in line
    assert "TFSMLayer" in line


def _cli_in(folder, monkeypatch, command, *models):
    """Like _cli, but in a folder that holds the model (so only the model's files are there)."""
    from click.testing import CliRunner

    from landscape import cli

    monkeypatch.chdir(folder)
    before = sorted(folder.rglob("*"))
    args = [command, *models[: 2 if command == "connect" else 1]]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2 and "Traceback" not in result.stderr, result.output
    assert sorted(folder.rglob("*")) == before
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_load_model_says_what_a_savedmodel_directory_is(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.export(tmp_path / "exported", verbose=False)  # a real SavedModel
    from landscape.executors import load_model

    with pytest.raises(ValueError) as info:
        load_model(tmp_path / "exported")
    message = str(info.value)
    assert message.startswith(f"Model {str(tmp_path / 'exported')!r} is a TensorFlow SavedModel")
    assert "\n" not in message and "keras.layers.TFSMLayer" in message
    with pytest.raises(ValueError, match="is a directory, not a .keras model file"):
        load_model(tmp_path)
