"""landscape.connect on every Keras backend, against references that share none of its code path.

Runs in the backend's own process (``KERAS_BACKEND=jax pytest tests/backends/...``); no
TensorFlow import here (the one tf.data test imports it itself, where it is installed).
References: the Bézier and polygonal-chain formulas written here in NumPy float64, closed-form
losses of a two-weight linear network, Keras's own ``model.evaluate`` of a clone with the curve's
weights assigned, ``Objective.evaluate`` at offsets built here, and the BatchNorm statistics
computed in NumPy.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import landscape
from landscape.connectivity import _Pair, _training_dataset, barrier

BACKEND = keras.backend.backend()
RTOL = 1e-5  # float32 arithmetic in the model


def phi(w_a, theta, w_b, t, curve):
    """φ(t) from the control points, in NumPy float64 (Garipov et al. 2018, eq. 2 and 3)."""
    a, m, b = (np.asarray(p, np.float64) for p in (w_a, theta, w_b))
    if curve == "bezier":
        return (1 - t) ** 2 * a + 2 * t * (1 - t) * m + t**2 * b
    if t <= 0.5:
        return (1 - 2 * t) * a + 2 * t * m
    return (2 - 2 * t) * m + (2 * t - 1) * b


def _mlp(seed, batch_norm=False):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(6, name="hidden")(inputs)
    if batch_norm:
        h = keras.layers.BatchNormalization(momentum=0.9, name="bn")(h)
    h = keras.layers.Activation("relu")(h)
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])  # fmt: skip
    return model


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype("float32")
    y = ((x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.3)).astype("int32")
    return x, y


def _trained(xy, seed, **kwargs):
    model = _mlp(seed, **kwargs)
    model.fit(*xy, epochs=2, batch_size=16, verbose=0)
    return model


def _state(*models):
    variables = [v for m in models for v in [*m.variables, *m.optimizer.variables]]
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in variables]


def _weights(model):
    return [np.asarray(keras.ops.convert_to_numpy(v.value)) for v in model.trainable_variables]


def _at(model, trainable, bn=None):
    """A clone of ``model`` with its trainable weights (and BatchNorm statistics) assigned."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for v, w in zip(clone.trainable_variables, trainable):
        v.assign(np.asarray(w, np.float32))
    if bn is not None:
        clone.get_layer("bn").moving_mean.assign(bn[0].astype(np.float32))
        clone.get_layer("bn").moving_variance.assign(bn[1].astype(np.float32))
    clone.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return clone


def _evaluate(model, x, y):
    return model.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)


@pytest.mark.parametrize("curve", ["bezier", "polychain"])
def test_curve_ends_are_the_models_and_its_values_are_the_weights_by_hand(xy, curve):
    model_a, model_b = _trained(xy, 0), _trained(xy, 1)
    before = _state(model_a, model_b)
    res = landscape.connect(model_a, model_b, xy, curve=curve, epochs=2, batch_size=16,
                            t=[0.3, 0.5, 0.8])  # fmt: skip
    assert all(np.array_equal(p, q) for p, q in zip(before, _state(model_a, model_b)))
    np.testing.assert_array_equal(res.t, [0.0, 0.3, 0.5, 0.8, 1.0])
    assert res.steps == 2 * 3 and len(res.history["loss"]) == 2
    assert np.all(np.isfinite(res.history["loss"]))
    wa, wb = _weights(model_a), _weights(model_b)
    bend = res.bend.aligned(model_a.trainable_variables)
    assert not np.allclose(bend[0], (wa[0] + wb[0]) / 2)  # θ was trained
    # the curve's ends are the two models, bit for bit, as weights and as values
    for s, ends in ((0.0, wa), (1.0, wb)):
        for p, e in zip((phi(a, m, b, s, curve) for a, m, b in zip(wa, bend, wb)), ends):
            np.testing.assert_array_equal(p, e.astype(np.float64))
    objective_a = landscape.Objective(model_a, xy, batch_size=256)
    objective_b = landscape.Objective(model_b, xy, batch_size=256)
    assert res.curve["train_loss"][0] == objective_a.evaluate()["loss"]
    assert res.curve["train_loss"][-1] == pytest.approx(objective_b.evaluate()["loss"], rel=1e-6)
    for i, model in ((0, model_a), (-1, model_b)):
        assert res.linear["train_loss"][i] == res.curve["train_loss"][i]
        assert res.curve["train_loss"][i] == pytest.approx(_evaluate(model, *xy)["loss"], rel=RTOL)
    # inside: Objective.evaluate at φ(t) − w_a, and Keras's evaluate of a clone at φ(t)
    for i, s in enumerate(res.t):
        point = [phi(a, m, b, s, curve) for a, m, b in zip(wa, bend, wb)]
        offsets = [p - a for p, a in zip(point, wa)]
        expected = objective_a.evaluate(offsets)
        assert res.curve["train_loss"][i] == pytest.approx(expected["loss"], rel=1e-6)
        assert res.curve["train_acc"][i] == pytest.approx(expected["acc"], abs=1e-12)
        keras_values = _evaluate(_at(model_a, point), *xy)
        assert res.curve["train_loss"][i] == pytest.approx(keras_values["loss"], rel=RTOL)
        assert res.curve["train_acc"][i] == pytest.approx(keras_values["accuracy"], abs=1e-6)
    assert res.curve_barrier == barrier(res.curve["train_loss"])


def _two_weight_net(w1, w2):
    """f(x) = w₂ w₁ x: with x = y = 1 and MSE, L(w) = (w₁ w₂ − 1)² (zero on the hyperbola)."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False),
                              keras.layers.Dense(1, use_bias=False)])  # fmt: skip
    model.compile(loss="mse")
    for v, w in zip(model.trainable_variables, (w1, w2)):
        v.assign([[w]])
    return model


ONES = (np.ones((8, 1), np.float32), np.ones((8, 1), np.float32))


def test_untrained_bezier_is_the_straight_line_with_the_closed_form_barrier():
    """w_a = (1, 1), w_b = (−1, −1): L(t) = ((1 − 2t)² − 1)² on the line, barrier L(½) = 1."""
    res = landscape.connect(_two_weight_net(1.0, 1.0), _two_weight_net(-1.0, -1.0), ONES,
                            epochs=0, points=5)  # fmt: skip
    t = np.linspace(0, 1, 5)
    expected = ((1 - 2 * t) ** 2 - 1) ** 2
    np.testing.assert_allclose(res.linear["train_loss"], expected, atol=1e-6)
    np.testing.assert_allclose(res.curve["train_loss"], expected, atol=1e-6)
    assert res.linear_barrier == pytest.approx(1.0, abs=1e-6) and res.steps == 0


@pytest.mark.parametrize("curve", ["bezier", "polychain"])
def test_curve_lowers_the_barrier_between_two_minima_of_a_symmetric_problem(curve):
    """w_a = (2, ½) and w_b = (½, 2) are minima on one branch of w₁w₂ = 1 (mirror images under
    w₁ ↔ w₂); the straight line leaves it (L(½) = (1.25² − 1)²), a bent curve can follow it."""
    model_a = _two_weight_net(2.0, 0.5)
    res = landscape.connect(model_a, _two_weight_net(0.5, 2.0), ONES, curve=curve, epochs=40,
                            batch_size=4, points=11)  # fmt: skip
    t = res.t
    line = (((1 - t) * 2 + t * 0.5) * ((1 - t) * 0.5 + t * 2) - 1) ** 2
    np.testing.assert_allclose(res.linear["train_loss"], line, rtol=1e-5, atol=1e-7)
    assert res.linear_barrier == pytest.approx((1.25**2 - 1) ** 2, rel=1e-5)
    bend = [float(np.ravel(b)[0]) for b in res.bend.aligned(model_a.trainable_variables)]
    along = [phi([2.0, 0.5], bend, [0.5, 2.0], s, curve) for s in t]
    closed_form = np.array([(p[0] * p[1] - 1) ** 2 for p in along])
    np.testing.assert_allclose(res.curve["train_loss"], closed_form, rtol=1e-4, atol=1e-7)
    assert res.curve_barrier < 0.25 * res.linear_barrier


def _numpy_bn_statistics(x, kernel, bias, batch_size):
    """Batch means and biased variances of x·K + b, averaged over the batches weighted by size."""
    h = x.astype(np.float64) @ kernel + bias
    parts = [h[s : s + batch_size] for s in range(0, len(x), batch_size)]
    w = np.array([len(p) for p in parts], np.float64) / len(x)
    return w @ np.array([p.mean(0) for p in parts]), w @ np.array([p.var(0) for p in parts])


def _bn_check(model_a, model_b, x, data, batch):
    pair = _Pair(model_a, model_b)
    kernel, bias = (np.asarray(w, np.float64) for w in pair.w_a[:2])
    mean, var = _numpy_bn_statistics(x, kernel, bias, batch)
    stats = pair.bn_statistics(pair.w_a, lambda: (b[0] for b in data))
    by_path = {pair.non_trainable[k].path: v for k, v in stats.items()}
    np.testing.assert_allclose(by_path["bn/moving_mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_path["bn/moving_variance"], var, rtol=1e-5, atol=1e-6)
    return mean, var


def test_batchnorm_statistics_are_recomputed_as_numpy_does(xy):
    model_a, model_b = _trained(xy, 0, batch_norm=True), _trained(xy, 1, batch_norm=True)
    before = _state(model_a, model_b)
    batch = 20  # 48 = 20 + 20 + 8: a partial last batch
    res = landscape.connect(model_a, model_b, xy, epochs=1, batch_size=batch, t=[0.4])
    assert all(np.array_equal(p, q) for p, q in zip(before, _state(model_a, model_b)))
    assert res.batchnorm
    mean, var = _bn_check(model_a, model_b, xy[0], _training_dataset(xy, batch, None, False), 20)
    loss = _evaluate(_at(model_a, _weights(model_a), (mean, var)), *xy)["loss"]
    assert res.curve["train_loss"][0] == pytest.approx(loss, rel=RTOL)


def test_a_tf_data_dataset_gives_the_statistics_of_its_batches(xy):
    tf = pytest.importorskip("tensorflow")
    model_a, model_b = _mlp(0, batch_norm=True), _mlp(1, batch_norm=True)
    dataset = tf.data.Dataset.from_tensor_slices(xy).batch(20)
    _bn_check(model_a, model_b, xy[0], _training_dataset(dataset, 999, None, False), 20)
    res = landscape.connect(model_a, model_b, dataset, epochs=1, points=2)
    assert res.steps == 3 and np.isfinite(res.curve_barrier)


def test_without_recomputation_each_end_has_its_own_statistics(xy):
    model_a, model_b = _trained(xy, 0, batch_norm=True), _trained(xy, 1, batch_norm=True)
    res = landscape.connect(model_a, model_b, xy, epochs=1, batch_size=16, t=[0.3],
                            batchnorm=False)  # fmt: skip
    assert not res.batchnorm
    for path in (res.linear, res.curve):
        assert path["train_loss"][0] == pytest.approx(_evaluate(model_a, *xy)["loss"], rel=RTOL)
        assert path["train_loss"][-1] == pytest.approx(_evaluate(model_b, *xy)["loss"], rel=RTOL)


def test_bad_arguments_name_the_argument(xy):
    a, b = _mlp(0), _mlp(1)
    for data, kwargs, match in (
        (np.zeros(3), {}, "`data`"),
        (xy, {"curve": "spline"}, "curve 'spline'"),
        (xy, {"t": [1.5]}, "`t`"),
    ):
        with pytest.raises(ValueError, match=match):
            landscape.connect(a, b, data, epochs=0, **kwargs)
    built = keras.optimizers.SGD(0.1)
    built.build(a.trainable_variables)
    with pytest.raises(ValueError, match="`optimizer`"):
        landscape.connect(a, b, xy, epochs=1, optimizer=built)
