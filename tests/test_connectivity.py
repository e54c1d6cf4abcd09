"""landscape.connect: curves between two models, evaluated at assigned weights, models untouched."""

from __future__ import annotations

import json

import keras
import matplotlib.pyplot as plt
import numpy as np
import provenance_check
import pytest
from click.testing import CliRunner

import landscape
from landscape.cli import main
from landscape.connectivity import (
    _Evaluator,
    _Pair,
    _training_dataset,
    barrier,
    curve_coefficients,
    curve_weights,
)


def _mlp(seed, width=6, batch_norm=False, compile=True):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(width, name="hidden")(inputs)
    if batch_norm:
        h = keras.layers.BatchNormalization(momentum=0.9, name="bn")(h)
    h = keras.layers.Activation("relu")(h)
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(h)
    model = keras.Model(inputs, outputs)
    if compile:
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    return model


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype("float32")
    y = ((x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.3)).astype("int32")
    return x, y


def _trained(xy, seed, **kwargs):
    model = _mlp(seed, **kwargs)
    model.fit(*xy, epochs=2, batch_size=16, verbose=0)
    return model


def _state(*models):
    return [keras.ops.convert_to_numpy(v.value).copy() for m in models for v in m.variables] + [
        keras.ops.convert_to_numpy(v.value).copy() for m in models for v in m.optimizer.variables
    ]


def _at(model, trainable, bn=None):
    """A clone of ``model`` with its trainable weights (and BatchNorm statistics) assigned."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for v, w in zip(clone.trainable_variables, trainable):
        v.assign(np.asarray(w, np.float32))
    if bn is not None:
        layer = clone.get_layer("bn")
        layer.moving_mean.assign(bn[0].astype(np.float32))
        layer.moving_variance.assign(bn[1].astype(np.float32))
    clone.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return clone


def _weights(model):
    return [keras.ops.convert_to_numpy(v.value) for v in model.trainable_variables]


def test_curve_coefficients_closed_forms():
    np.testing.assert_allclose(curve_coefficients(0.5), (0.25, 0.5, 0.25))
    np.testing.assert_allclose(curve_coefficients(0.25, "polychain"), (0.5, 0.5, 0.0))
    np.testing.assert_allclose(curve_coefficients(0.75, "polychain"), (0.0, 0.5, 0.5))
    t = np.linspace(0, 1, 11)
    for curve in ("bezier", "polychain"):
        ca, cm, cb = curve_coefficients(t, curve)
        np.testing.assert_allclose(ca + cm + cb, 1.0)
        assert ca[0] == 1 and cb[-1] == 1 and cm[0] == 0 and cm[-1] == 0
    # θ at the midpoint: the Bézier curve is the straight line, at the same t
    a, b = [np.array([1.0, -2.0])], [np.array([3.0, 4.0])]
    mid = [(a[0] + b[0]) / 2]
    np.testing.assert_allclose(curve_weights(a, mid, b, 0.3)[0], 0.7 * a[0] + 0.3 * b[0])


def test_barrier_on_a_closed_form():
    """f(x) = w₂ w₁ x, y = 1, MSE: w_a = (1, 1) and w_b = (−1, −1) are exact minima, and the
    straight line between them has L(t) = ((1 − 2t)² − 1)², whose barrier is L(½) = 1."""

    def model(w):
        m = keras.Sequential(
            [
                keras.Input((1,)),
                keras.layers.Dense(1, use_bias=False),
                keras.layers.Dense(1, use_bias=False),
            ]
        )
        m.compile(loss="mse")
        for v in m.trainable_variables:
            v.assign([[w]])
        return m

    data = (np.ones((4, 1), np.float32), np.ones((4, 1), np.float32))
    res = landscape.connect(model(1.0), model(-1.0), data, epochs=0, points=5)
    t = np.linspace(0, 1, 5)
    expected = ((1 - 2 * t) ** 2 - 1) ** 2
    np.testing.assert_allclose(res.t, t)
    np.testing.assert_allclose(res.linear["train_loss"], expected, atol=1e-6)
    assert res.linear_barrier == pytest.approx(1.0, abs=1e-6)
    # an untrained Bézier bend is the midpoint: the curve is the straight line
    np.testing.assert_allclose(res.curve["train_loss"], expected, atol=1e-6)
    assert barrier([2.0, 5.0, 1.0]) == pytest.approx(3.5)
    assert res.barrier("linear") == res.linear_barrier
    with pytest.raises(ValueError, match="`values`"):
        barrier([1.0])


@pytest.mark.parametrize("curve", ["bezier", "polychain"])
def test_curve_equals_assigned_weights_and_models_untouched(xy, curve):
    model_a, model_b = _trained(xy, 0), _trained(xy, 1)
    before = _state(model_a, model_b)
    res = landscape.connect(model_a, model_b, xy, curve=curve, epochs=2, batch_size=16,
                            t=[0.3, 0.5], test_data=(xy[0][:40], xy[1][:40]))  # fmt: skip
    after = _state(model_a, model_b)
    assert len(before) == len(after)
    assert all(np.array_equal(p, q) for p, q in zip(before, after))  # bit for bit
    np.testing.assert_allclose(res.t, [0.0, 0.3, 0.5, 1.0])
    assert res.steps == 2 * 6 and len(res.history["loss"]) == 2
    assert set(res.curve) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    # the straight line's ends are the two models
    for i, model in ((0, model_a), (-1, model_b)):
        loss, acc = model.evaluate(*xy, batch_size=len(xy[0]), verbose=0)
        assert res.linear["train_loss"][i] == pytest.approx(loss, rel=1e-5)
        assert res.linear["train_acc"][i] == pytest.approx(acc)
    # the curve at t is the model with φ(t) assigned
    bend = res.bend.aligned(model_a.trainable_variables)
    assert not np.allclose(bend[0], (_weights(model_a)[0] + _weights(model_b)[0]) / 2)  # trained
    for i, s in enumerate(res.t):
        phi = curve_weights(_weights(model_a), bend, _weights(model_b), s, curve=curve)
        clone = _at(model_a, phi)
        loss, acc = clone.evaluate(*xy, batch_size=len(xy[0]), verbose=0)
        assert res.curve["train_loss"][i] == pytest.approx(loss, rel=1e-5)
        assert res.curve["train_acc"][i] == pytest.approx(acc)
        test_loss, _ = clone.evaluate(xy[0][:40], xy[1][:40], verbose=0)
        assert res.curve["test_loss"][i] == pytest.approx(test_loss, rel=1e-5)
    assert res.curve_barrier == pytest.approx(barrier(res.curve["train_loss"]))
    assert res.linear_barrier == pytest.approx(barrier(res.linear["train_loss"]))


def _numpy_bn_statistics(x, kernel, bias, batch_size):
    """The pre-BatchNorm activations' batch means and (biased) variances, averaged over the
    batches in order, weighted by batch size: the documented method, in NumPy float64."""
    h = x.astype(np.float64) @ kernel + bias
    means, variances, sizes = [], [], []
    for start in range(0, len(x), batch_size):
        part = h[start : start + batch_size]
        means.append(part.mean(0))
        variances.append(part.var(0))
        sizes.append(len(part))
    w = np.asarray(sizes, np.float64) / sum(sizes)
    return w @ np.asarray(means), w @ np.asarray(variances)


def test_batchnorm_statistics_recomputed_along_the_curve(xy):
    model_a = _trained(xy, 0, batch_norm=True)
    model_b = _trained(xy, 1, batch_norm=True)
    before = _state(model_a, model_b)
    batch = 40  # 96 = 40 + 40 + 16: a partial last batch
    res = landscape.connect(model_a, model_b, xy, epochs=1, batch_size=batch, t=[0.4])
    assert all(np.array_equal(p, q) for p, q in zip(before, _state(model_a, model_b)))
    assert res.batchnorm
    bend = res.bend.aligned(model_a.trainable_variables)
    paths = [v.path for v in model_a.trainable_variables]
    kernel_i, bias_i = paths.index("hidden/kernel"), paths.index("hidden/bias")
    for i, s in enumerate(res.t):
        phi = curve_weights(_weights(model_a), bend, _weights(model_b), s)
        mean, var = _numpy_bn_statistics(xy[0], phi[kernel_i], phi[bias_i], batch)
        # the library's statistics at φ(t) against the independent NumPy computation
        pair = _Pair(model_a, model_b)
        data = _training_dataset(xy, batch, None, shuffle=False)
        stats = pair.bn_statistics(phi, lambda data=data: (b[0] for b in data))
        by_path = {pair.non_trainable[k].path: v for k, v in stats.items()}
        np.testing.assert_allclose(by_path["bn/moving_mean"], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(by_path["bn/moving_variance"], var, rtol=1e-5, atol=1e-6)
        # and the evaluated loss is the model with φ(t) and those statistics assigned
        loss, _ = _at(model_a, phi, (mean, var)).evaluate(*xy, batch_size=96, verbose=0)
        assert res.curve["train_loss"][i] == pytest.approx(loss, rel=1e-5)
    # at t = 0 the statistics are recomputed, not model_a's moving averages
    own, _ = model_a.evaluate(*xy, batch_size=96, verbose=0)
    assert res.linear["train_loss"][0] != pytest.approx(own, rel=1e-6)


def _host_point(evaluator, pair, weights, t, recompute):
    """The values at trainable ``weights`` (float64 arrays) by host offsets from w0, each
    rounded once: φ − w0 on the trainable variables, the BatchNorm statistics recomputed at
    ``weights`` or interpolated at ``t``, ``Objective.evaluate``."""
    objective = evaluator.objective
    offsets = [np.zeros(w.shape, np.float64) for w in evaluator.w0]
    for slot, w in zip(evaluator.trainable_slots, weights):
        offsets[slot] = w - evaluator.w0[slot]
    if recompute:
        stats = pair.bn_statistics(weights, evaluator._batches)
    else:
        a, b = pair.nt_values, pair.nt_values_b
        stats = {
            i: (1 - t) * a[i].astype(np.float64) + t * b[i].astype(np.float64) for i, _ in pair.bn
        }
    for i, stat in stats.items():
        offsets[evaluator.bn_slots[i]] = stat - evaluator.w0[evaluator.bn_slots[i]]
    return {
        f"{split}_{name}": value
        for split in objective.splits
        for name, value in objective.evaluate(offsets, split=split).items()
    }


@pytest.mark.parametrize("recompute", [True, False])
def test_a_basis_point_is_the_host_point_at_the_ends_and_to_rounding_between(xy, recompute):
    """A point of ``connect`` and ``connection_plane`` (``_Evaluator.along``: w_a plus two
    rows added in the compiled pass) against host offsets of φ(t) made in float64: the same
    numbers to the bit at t = 0 and 1 without recomputed BatchNorm statistics (the same
    weights), to the weights' rounding elsewhere (``along`` recomputes the statistics at the
    weights it evaluates, the host point at φ(t) rounded once)."""
    model_a = _trained(xy, 0, batch_norm=True)
    model_b = _trained(xy, 1, batch_norm=True)
    pair = _Pair(model_a, model_b)
    evaluator = _Evaluator(pair, xy, xy, batch_size=40, bn_batch_size=40, loss=None,
                           recompute=recompute)  # fmt: skip
    rng = np.random.default_rng(5)
    bend = [(a + rng.normal(0, 0.3, a.shape)).astype(a.dtype) for a in pair.w_a]
    basis = evaluator.path_basis(bend)
    pairs = []
    for t in (0.0, 1.0):
        host = [(1 - t) * a.astype(np.float64) + t * b for a, b in zip(pair.w_a, pair.w_b)]
        pairs.append((evaluator.along(0.0, t, basis, t), _host_point(evaluator, pair, host, t,
                                                                     recompute)))  # fmt: skip
        if not recompute:
            assert pairs[-1][0] == pairs[-1][1]
    for t, curve in ((0.3, "bezier"), (0.7, "polychain")):
        _, c_bend, c_b = curve_coefficients(t, curve)
        phi = curve_weights(pair.w_a, bend, pair.w_b, t, curve=curve)
        pairs.append((evaluator.along(c_bend, c_b, basis, t),
                      _host_point(evaluator, pair, phi, t, recompute)))  # fmt: skip
    # a plane point: w_a + x u + y v for two directions of the trainable weights
    u = [rng.normal(0, 0.1, a.shape) for a in pair.w_a]
    v = [rng.normal(0, 0.1, a.shape) for a in pair.w_a]
    plane = evaluator.rows(u, v)
    phi = [a + 0.7 * p - 1.3 * q for a, p, q in zip(pair.w_a, u, v)]
    pairs.append((evaluator.along(0.7, -1.3, plane, 0.4),
                  _host_point(evaluator, pair, phi, 0.4, recompute)))  # fmt: skip
    for got, want in pairs:
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("curve", ["bezier", "polychain"])
def test_a_plane_through_an_untrained_bend_is_refused_not_drawn_on_its_rounding(xy, curve):
    """The untrained bend is the midpoint rounded to float32: off the line only by rounding,
    so the plane's second direction would be noise; one sentence names ``result``."""
    model_a, model_b = _mlp(0), _mlp(1)
    res = landscape.connect(model_a, model_b, xy, curve=curve, epochs=0, points=3)
    bend = res.bend.aligned(model_a.trainable_variables)
    mid = [(a.astype(np.float64) + b) / 2 for a, b in zip(_weights(model_a), _weights(model_b))]
    assert not all(np.array_equal(p, q) for p, q in zip(bend, mid))  # rounded: off the line
    with pytest.raises(ValueError, match=r"Argument `result` must have a bend off the straight"):
        landscape.connection_plane(model_a, model_b, res, xy, points=2)


def test_a_model_whose_call_takes_no_training_is_refused_in_one_sentence(xy):
    """``stateless_call`` passes ``training`` to ``call`` itself (``__call__`` would drop it):
    a subclassed model without it failed with a TypeError inside the first training step."""

    class NoTraining(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden, self.out = keras.layers.Dense(6, activation="relu"), keras.layers.Dense(3)

        def call(self, x):
            return self.out(self.hidden(x))

    models = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        model = NoTraining()
        model(xy[0][:1])
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        models.append(model)
    with pytest.raises(ValueError, match=r"Argument `model_a` must take `training` in its `call`"):
        landscape.connect(*models, xy, epochs=1, points=3)


def test_bad_arguments_name_the_argument(xy):
    a, b = _mlp(0), _mlp(1)
    cases = [
        ((a, _mlp(2, width=5), xy), {}, "`model_b`"),
        ((a, b, xy), {"t": [0.5, 1.5]}, "`t`"),
        ((a, b, xy), {"t": [-0.1]}, "`t`"),
        ((a, b, xy), {"curve": "spline"}, "curve 'spline'"),
        ((a, b, xy), {"epochs": -1}, "`epochs`"),
        ((a, b, xy), {"batch_size": 0}, "`batch_size`"),
        ((a, b, xy), {"points": 1}, "`points`"),
        ((_mlp(3, compile=False), b, xy), {}, "`model_a`"),
        ((a, "b.keras", xy), {}, "`model_b`"),
        ((a, b, np.zeros(3)), {}, "`data`"),
    ]
    for args, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            landscape.connect(*args, epochs=kwargs.pop("epochs", 0), **kwargs)
    built = keras.optimizers.SGD(0.1)
    built.build(a.trainable_variables)
    with pytest.raises(ValueError, match="`optimizer`"):
        landscape.connect(a, b, xy, epochs=1, optimizer=built)


def test_plane_and_plots(xy, tmp_path):
    model_a, model_b = _trained(xy, 0), _trained(xy, 1)
    res = landscape.connect(model_a, model_b, xy, epochs=1, batch_size=32, points=5)
    plane = landscape.connection_plane(model_a, model_b, res, xy, points=3)
    assert plane.values["train_loss"].shape == (3, 3)
    assert np.isfinite(plane.values["train_loss"]).all()
    (xa, ya), (xm, ym), (xb, yb) = (plane.metadata["points"][k] for k in ("w_a", "bend", "w_b"))
    assert (xa, ya) == (0.0, 0.0) and yb == 0.0 and xb == pytest.approx(res.segment_norm)
    assert ym > 0 and plane.metadata["curve_y"][0] == 0 and plane.metadata["curve_x"][-1] == xb
    # the plane is in weight-space distance: its point (x, y) is w_a + x u + y v
    bend = res.bend.aligned(model_a.trainable_variables)
    wa, wb = _weights(model_a), _weights(model_b)
    flat = [np.concatenate([w.ravel().astype(np.float64) for w in ws]) for ws in (wa, bend, wb)]
    assert np.linalg.norm(flat[2] - flat[0]) == pytest.approx(xb)
    assert np.linalg.norm(flat[1] - flat[0]) == pytest.approx(np.hypot(xm, ym))
    ax = landscape.plot_connection(res)
    assert len(ax.lines) == 2 and "barrier" in ax.get_legend().get_texts()[0].get_text()
    path = tmp_path / "r.json"
    path.write_text(json.dumps(res.as_dict()))
    landscape.plot_connection(str(path), metric="train_acc")
    ax = landscape.plot_connection_plane(plane)
    assert len(ax.lines) >= 3
    with pytest.raises(ValueError, match="metric"):
        landscape.plot_connection(res, metric="test_loss")
    plt.close("all")


def test_cli_connect(tmp_path):
    from landscape.models import mlp

    paths = []
    x, y = landscape.load_embedded()[0]
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        model = mlp((28, 28, 1), hidden=(8,), sam_model=False)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])  # fmt: skip
        model.fit(x[:200], y[:200], epochs=1, verbose=0)
        paths.append(tmp_path / f"m{seed}.keras")
        model.save(paths[-1])
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    args = ["connect", *paths, "--samples", 200, "--test-samples", 100, "--epochs", 1,
            "--points", 3, "--out", out, "--plot", png, "-q"]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "linear_barrier" in result.output and "curve_barrier" in result.output
    saved = json.loads(out.read_text())
    assert len(saved["t"]) == 3 and "test_acc" in saved["curve"] and png.stat().st_size > 0
    block = provenance_check.check(
        saved["provenance"], command="connect", options={"epochs": 1, "points": 3}
    )
    a, b = (keras.models.load_model(p) for p in paths)
    assert block["model_fingerprint"] == {
        "a": provenance_check.weights_fingerprint(a),
        "b": provenance_check.weights_fingerprint(b),
    }
    assert block["settings"]["curve"] == "bezier" and block["data_fingerprint"]["test"]
    for bad, message in (
        ([paths[0], tmp_path / "missing.keras"], "does not exist"),
        ([*paths, "--points", 1], "Invalid value for '--points': 1 is not in the range x>=2."),
    ):
        result = CliRunner().invoke(main, ["connect", *map(str, bad)])
        assert result.exit_code == 2 and message in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("curve", ["bezier", "polychain"])
def test_without_batchnorm_recomputation_each_end_has_its_own_statistics(xy, curve):
    """batchnorm=False: t = 0 is model_a.evaluate, t = 1 model_b.evaluate (each with its own
    moving statistics), and a point in between has (1 − t)·a's + t·b's statistics."""
    model_a = _trained(xy, 0, batch_norm=True)
    model_b = _trained(xy, 1, batch_norm=True)
    stats = [
        [keras.ops.convert_to_numpy(v) for v in (m.get_layer("bn").moving_mean,
                                                 m.get_layer("bn").moving_variance)]
        for m in (model_a, model_b)
    ]  # fmt: skip
    assert np.abs(stats[0][0] - stats[1][0]).max() > 1e-2  # the two models' statistics differ
    own_a, acc_a = model_a.evaluate(*xy, batch_size=96, verbose=0)
    own_b, acc_b = model_b.evaluate(*xy, batch_size=96, verbose=0)
    # the fault this guards against: w_b with model_a's statistics is another loss
    with_a_stats, _ = _at(model_a, _weights(model_b)).evaluate(*xy, batch_size=96, verbose=0)
    assert with_a_stats != pytest.approx(own_b, rel=1e-3)

    before = _state(model_a, model_b)
    res = landscape.connect(model_a, model_b, xy, curve=curve, epochs=1, batch_size=32,
                            t=[0.3], batchnorm=False)  # fmt: skip
    assert all(np.array_equal(p, q) for p, q in zip(before, _state(model_a, model_b)))
    assert not res.batchnorm and list(res.t) == [0.0, 0.3, 1.0]
    for path in (res.linear, res.curve):
        assert path["train_loss"][0] == pytest.approx(own_a, rel=1e-5)
        assert path["train_loss"][-1] == pytest.approx(own_b, rel=1e-5)
        assert path["train_acc"][0] == pytest.approx(acc_a, abs=1e-6)
        assert path["train_acc"][-1] == pytest.approx(acc_b, abs=1e-6)
    # in between: the statistics interpolated linearly in t, on both paths
    s = 0.3
    mixed = tuple((1 - s) * a.astype(np.float64) + s * b for a, b in zip(*stats))
    wa, wb = _weights(model_a), _weights(model_b)
    bend = res.bend.aligned(model_a.trainable_variables)
    points = {
        "linear": [(1 - s) * a.astype(np.float64) + s * b for a, b in zip(wa, wb)],
        "curve": curve_weights(wa, bend, wb, s, curve=curve),
    }
    for name, path in (("linear", res.linear), ("curve", res.curve)):
        loss, _ = _at(model_a, points[name], mixed).evaluate(*xy, batch_size=96, verbose=0)
        assert path["train_loss"][1] == pytest.approx(loss, rel=1e-5)
    # the plane's corners w_a (0, 0) and w_b (‖w_b − w_a‖, 0), with no margin
    plane = landscape.connection_plane(model_a, model_b, res, xy, points=2, margin=0.0)
    (xm, _), xb = plane.metadata["points"]["bend"], plane.metadata["points"]["w_b"][0]
    assert 0.0 <= xm <= xb  # so the grid's first row runs from w_a to w_b
    assert plane.values["train_loss"][0, 0] == pytest.approx(own_a, rel=1e-5)
    assert plane.values["train_loss"][0, -1] == pytest.approx(own_b, rel=1e-5)
