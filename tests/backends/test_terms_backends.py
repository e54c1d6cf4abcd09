"""landscape._terms on the Keras backend in use (TensorFlow, JAX or PyTorch), against NumPy by hand.

The reference never calls Keras: cross-entropy from log-softmax, squared errors, the masked and
sample-weighted sums of ``keras.losses.Loss.__call__`` written out. The pairs are in ``_wide()``:
float64 on TensorFlow and PyTorch (compared to 1e-12 where the inputs are float64 too), float32 on
JAX without x64; a loss computed in float32 is compared to rtol 1e-6. Runs on one backend per
process: ``KERAS_BACKEND=jax`` (or torch, tensorflow) before Python starts.
"""

import ast
import importlib
import importlib.util
import pathlib

import keras
import numpy as np
import pytest

B, T, C = 6, 5, 4
F32 = {"rtol": 1e-6, "atol": 1e-7}  # a loss computed in float32


_terms = importlib.import_module("landscape._terms")


def _np(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


def _t(x):
    return keras.ops.convert_to_tensor(x)


def _wide_expected() -> str:
    if keras.backend.backend() == "jax":
        import jax

        return "float64" if jax.config.read("jax_enable_x64") else "float32"
    return "float64"


def _check_pair(pair, numerator, denominator, **tol):
    tol = tol or F32
    for got, want in zip(pair, (numerator, denominator)):
        assert keras.backend.standardize_dtype(got.dtype) == _wide_expected()
        np.testing.assert_allclose(_np(got), want, **tol)


def _log_softmax(z):
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _sparse_ce(labels, logits):
    return -np.take_along_axis(_log_softmax(logits), labels[..., None], -1)[..., 0]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_no_tensorflow_in_the_module():
    tree = ast.parse(pathlib.Path(_terms.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.split(".")[0] == "tensorflow"]
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "tf"]


def test_wide_is_float64_where_the_backend_has_it():
    assert _terms._wide() == _wide_expected()
    assert keras.backend.standardize_dtype(keras.ops.ones((), _terms._wide()).dtype) == (
        _terms._wide()
    )


def test_sparse_cross_entropy_from_logits_with_sample_weights(rng):
    logits = rng.normal(size=(B, C)).astype("float32")
    labels = rng.integers(0, C, size=B)
    w = rng.random(B).astype("float32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    ce = _sparse_ce(labels, logits)
    n, d, per_batch = _terms.loss_pair(loss, _t(labels), _t(logits), None)
    _check_pair((n, d), ce.sum(), B)
    assert per_batch is False
    n, d, _ = _terms.loss_pair(loss, _t(labels), _t(logits), _t(w))
    _check_pair((n, d), (w * ce).sum(), B)  # "sum_over_batch_size" counts samples, not weights


def test_categorical_cross_entropy_one_hot_mean_with_sample_weight(rng):
    logits = rng.normal(size=(B, C)).astype("float32")
    labels = rng.integers(0, C, size=B)
    w = rng.random(B).astype("float32")
    loss = keras.losses.CategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight"
    )
    onehot = np.eye(C, dtype="float32")[labels]
    n, d, _ = _terms.loss_pair(loss, _t(onehot), _t(logits), _t(w))
    _check_pair((n, d), (w * _sparse_ce(labels, logits)).sum(), w.astype(np.float64).sum())


def test_mean_squared_error(rng):
    y = rng.normal(size=(B, 3)).astype("float32")
    p = rng.normal(size=(B, 3)).astype("float32")
    w = rng.random(B).astype("float32")
    mse = ((y.astype(np.float64) - p) ** 2).mean(-1)
    n, d, _ = _terms.loss_pair(keras.losses.MeanSquaredError(), _t(y), _t(p), _t(w))
    _check_pair((n, d), (w * mse).sum(), B)


class _SumSquares(keras.losses.Loss):
    """Σ (y - ŷ)² over the last axis: no ``keras.ops.mean``, which is float32 on torch."""

    def call(self, y_true, y_pred):
        return keras.ops.sum(keras.ops.square(y_true - y_pred), axis=-1)


def test_float64_predictions_stay_float64(rng):
    y, p, w = rng.normal(size=(B, 3)), rng.normal(size=(B, 3)), rng.random(B)
    wide = _wide_expected()
    tol = {"rtol": 1e-13} if wide == "float64" else F32  # exact to float64 round-off
    args = [keras.ops.cast(a, wide) for a in (y, p, w)]
    n, d, _ = _terms.loss_pair(_SumSquares(), *args)
    _check_pair((n, d), (w * ((y - p) ** 2).sum(-1)).sum(), B, **tol)
    y3, p3 = rng.normal(size=(B, T, 3)), rng.normal(size=(B, T, 3))
    n, d = _terms.callable_pair(
        lambda t, q: keras.ops.abs(t - q), keras.ops.cast(y3, wide), keras.ops.cast(p3, wide), None
    )
    _check_pair((n, d), np.abs(y3 - p3).mean((1, 2)).sum(), B, **tol)


def test_per_entry_sample_weights_and_ignore_class_on_a_sequence(rng):
    logits = rng.normal(size=(B, T, C)).astype("float32")
    labels = rng.integers(0, C, size=(B, T))
    w1 = rng.random(B).astype("float32")
    w2 = rng.random((B, T)).astype("float32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    ce = _sparse_ce(labels, logits)
    valid = (labels != 0).astype(np.float64)
    # Keras's apply_mask: the mean over unmasked entries, weights multiplying each entry
    _check_pair(
        _terms.loss_pair(loss, _t(labels), _t(logits), _t(w2))[:2],
        (w2 * valid * ce).sum(),
        valid.sum(),
    )
    # a per-sample weight weights every entry of its sample
    n, d, _ = _terms.loss_pair(loss, _t(labels), _t(logits), _t(w1))
    _check_pair((n, d), (w1[:, None] * valid * ce).sum(), valid.sum())


def test_keras_mask_merged_with_ignore_class(rng):
    logits = rng.normal(size=(B, T, C)).astype("float32")
    padded = rng.random((B, T)) < 0.3
    logits[padded] = 0.0
    labels = rng.integers(0, C, size=(B, T))
    w = rng.random(B).astype("float32")
    masked = keras.layers.Masking(mask_value=0.0)(_t(logits))  # a mask on the padded steps
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=2, reduction="mean_with_sample_weight"
    )
    keep = (~padded & (labels != 2)).astype(np.float64)
    weights = w[:, None] * keep
    n, d, _ = _terms.loss_pair(loss, _t(labels), masked, _t(w))
    _check_pair((n, d), (weights * _sparse_ce(labels, logits)).sum(), weights.sum())


def test_compiled_loss_pairs_and_combine_with_loss_weights(rng):
    x = rng.normal(size=(B, 3)).astype("float32")
    inputs = keras.Input((3,))
    model = keras.Model(
        inputs,
        {
            "a": keras.layers.Dense(C, name="a")(inputs),
            "b": keras.layers.Dense(2, name="b")(inputs),
        },
    )
    model.compile(
        loss={"a": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "b": "mse"},
        loss_weights={"a": 0.3, "b": 2.0},
    )
    y = {"a": rng.integers(0, C, size=B), "b": rng.normal(size=(B, 2)).astype("float32")}
    w = rng.random(B).astype("float32")
    y_pred = model(x)
    loss = _terms.resolve_loss(model, None)
    loss.build(y, y_pred, w)
    pairs = loss.pairs(x, y, w, y_pred)
    za, zb = _np(y_pred["a"]).astype(np.float64), _np(y_pred["b"]).astype(np.float64)
    ce = (w * _sparse_ce(y["a"], za)).sum()
    mse = (w * ((y["b"] - zb) ** 2).mean(-1)).sum()
    _check_pair(pairs[:2], ce, B)
    _check_pair(pairs[2:], mse, B)
    out = loss.combine(keras.ops.stack(pairs))
    assert {keras.backend.standardize_dtype(v.dtype) for v in out.values()} == {_wide_expected()}
    np.testing.assert_allclose(_np(out["loss"]), 0.3 * ce / B + 2.0 * mse / B, **F32)
    np.testing.assert_allclose(_np(out["a_loss"]), ce / B, **F32)
    zero = loss.combine(keras.ops.zeros((4,), _terms._wide()))  # empty sums: 0, not NaN
    assert _np(zero["loss"]) == 0.0


def test_accuracy_with_ignore_class_mask_and_sample_weights(rng):
    logits = rng.normal(size=(B, T, C)).astype("float32")
    padded = rng.random((B, T)) < 0.3
    logits[padded] = 0.0
    labels = rng.integers(0, C, size=(B, T))
    w = rng.random(B).astype("float32")
    masked = keras.layers.Masking(mask_value=0.0)(_t(logits))
    n, d = _terms.accuracy_pair(_t(labels), masked, _t(w), threshold=0.5, ignore_class=1)
    valid = w[:, None] * (~padded & (labels != 1))
    _check_pair((n, d), (valid * (logits.argmax(-1) == labels)).sum(), valid.sum(), rtol=1e-6)
    # one-hot targets, no mask
    onehot = np.eye(C, dtype="float32")[labels]
    n, d = _terms.accuracy_pair(
        _t(onehot), _t(logits + 1.0), None, threshold=0.5, ignore_class=None
    )
    _check_pair((n, d), ((logits + 1.0).argmax(-1) == labels).sum(), B * T, rtol=1e-6)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_binary_accuracy_threshold(rng, threshold):
    p = rng.random((B * 4, 1)).astype("float32")
    y = rng.integers(0, 2, size=(B * 4, 1)).astype("float32")
    w = rng.random(B * 4).astype("float32")
    n, d = _terms.accuracy_pair(_t(y), _t(p), _t(w), threshold=threshold, ignore_class=None)
    correct = (p[:, 0] > threshold) == (y[:, 0] > 0.5)
    _check_pair((n, d), (w * correct).sum(), w.astype(np.float64).sum())
    n, d = _terms.accuracy_pair(
        _t(y[:, 0]), _t(p[:, 0]), None, threshold=threshold, ignore_class=None
    )
    _check_pair((n, d), correct.sum(), B * 4, rtol=1e-6)


def test_callable_pair_averages_trailing_axes(rng):
    y = rng.normal(size=(B, T)).astype("float32")
    p = rng.normal(size=(B, T)).astype("float32")
    w = rng.random(B).astype("float32")

    def absolute(t, q):  # per entry: callable_pair averages the trailing axis
        return keras.ops.abs(t - q)

    n, d = _terms.callable_pair(absolute, _t(y), _t(p), _t(w))
    per_sample = np.abs(y.astype(np.float64) - p).mean(-1)
    _check_pair((n, d), (w * per_sample).sum(), w.astype(np.float64).sum())
    n, d = _terms.callable_pair(lambda t, q: keras.ops.mean(absolute(t, q)), _t(y), _t(p), None)
    _check_pair((n, d), B * per_sample.mean(), B)  # one value for the batch: weighted by B


def test_per_batch_loss_is_flagged(rng):
    y = rng.normal(size=(B, 2)).astype("float32")
    p = rng.normal(size=(B, 2)).astype("float32")

    class BatchMean(keras.losses.Loss):
        def call(self, y_true, y_pred):
            return keras.ops.mean(keras.ops.square(y_true - y_pred))

    n, d, per_batch = _terms.loss_pair(BatchMean(), _t(y), _t(p), None)
    assert per_batch is True
    y64, p64 = y.astype(np.float64), p.astype(np.float64)
    _check_pair((n, d), B * ((y64 - p64) ** 2).mean(), B)
