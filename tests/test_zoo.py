"""Model-zoo conformance: the models researchers bring, each measured exactly.

For every model: ``Objective.evaluate`` equals ``model.evaluate`` (one batch, so that Keras's
per-batch normalizer is the data-set-wide one), the weights are bit-identical afterwards, the
filter-normalized direction has the weights' per-filter norms by a rule written here (not the
library's), a 3×3 surface, a certified top Hessian eigenvalue (against a dense Hessian computed
here through Keras's own ``compute_loss`` where the model is small), a Hutchinson trace, a cheap
sharpness report, two steps of SAM ``fit``, and the CLI ``surface`` on the saved model with the
user's ``.npz``. Sizes are tiny: the whole module must stay within CI's budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

import landscape
from landscape.cli import main
from sam import SAM, SAMModel, sam_train_step

N = 16  # samples per model
DENSE_LIMIT = 1500  # trainable parameters up to which the dense Hessian is computed


@dataclass
class Case:
    model: keras.Model
    x: object
    y: object
    sample_weight: np.ndarray | None = None
    dataset: tf.data.Dataset | None = None
    npz: bool = True  # x and y are plain arrays (the CLI's --data)
    heavy: bool = False  # millions of parameters: no ε-sharpness (L-BFGS-B on n-vectors)
    compile_args: dict = field(default_factory=dict)
    name: str = ""

    @property
    def data(self):
        if self.dataset is not None:
            return self.dataset
        if self.sample_weight is None:
            return (self.x, self.y)
        return (self.x, self.y, self.sample_weight)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _images(shape, seed=0):
    return _rng(seed).normal(size=(N, *shape)).astype("float32")


def _labels(k, seed=1, shape=()):
    return _rng(seed).integers(0, k, (N, *shape))


SPARSE = {"loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}


def _compiled(model, *, metrics=("accuracy",), **compile_args):
    args = {**SPARSE, **compile_args}
    model.compile(optimizer="sgd", metrics=list(metrics) if metrics else None, **args)
    return model, args


def resnet50(cls=None):
    model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=4)
    model, args = _compiled(model, loss="sparse_categorical_crossentropy")
    return Case(model, _images((32, 32, 3))[:2], _labels(4)[:2], heavy=True, compile_args=args)


def mobilenet_v2(cls=None):
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), classes=4, alpha=0.35
    )
    model, args = _compiled(model, loss="sparse_categorical_crossentropy")
    return Case(model, _images((32, 32, 3))[:2], _labels(4)[:2], heavy=True, compile_args=args)


def transformer(cls=keras.Model):
    """Padded token ids, Embedding(mask_zero) + MultiHeadAttention + LayerNorm, masked pooling."""
    tokens = _rng(2).integers(1, 30, (N, 8))
    lengths = _rng(3).integers(2, 9, N)
    tokens[np.arange(8) >= lengths[:, None]] = 0
    inp = keras.Input((8,), dtype="int32")
    e = keras.layers.Embedding(30, 8, mask_zero=True)(inp)
    a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(e, e)
    h = keras.layers.LayerNormalization()(keras.layers.Add()([e, a]))
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(h))
    model, args = _compiled(cls(inp, out))
    return Case(model, tokens, _labels(3), compile_args=args)


def lstm(cls=keras.Model):
    inp = keras.Input((5, 3))
    out = keras.layers.Dense(3)(keras.layers.LSTM(6)(inp))
    model, args = _compiled(cls(inp, out))
    return Case(model, _images((5, 3)), _labels(3), compile_args=args)


def gru(cls=keras.Model):
    """A GRU tagging every time step (2-D reset_after bias, sequence output)."""
    inp = keras.Input((5, 3))
    out = keras.layers.Dense(3)(keras.layers.GRU(5, return_sequences=True)(inp))
    model, args = _compiled(cls(inp, out))
    return Case(model, _images((5, 3)), _labels(3, shape=(5,)), compile_args=args)


def group_norm(cls=keras.Model):
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same")(inp)
    h = keras.layers.GroupNormalization(groups=4)(h)
    h = keras.layers.SpatialDropout2D(0.3)(keras.layers.Activation("relu")(h))
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h))
    model, args = _compiled(cls(inp, out))
    return Case(model, _images((8, 8, 3)), _labels(3), compile_args=args)


def nested_shared(cls=keras.Model):
    """A functional model inside another, and one Dense layer applied twice."""
    i = keras.Input((4,))
    inner = keras.Model(i, keras.layers.Dense(6, activation="tanh")(i), name="inner")
    shared = keras.layers.Dense(6, activation="tanh", name="shared")
    inp = keras.Input((4,))
    out = keras.layers.Dense(3)(shared(shared(inner(inp))))
    model, args = _compiled(cls(inp, out))
    return Case(model, _images((4,)), _labels(3), compile_args=args)


def two_towers(cls=keras.Model):
    def tower():
        return keras.Sequential([keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(4)])

    inp = keras.Input((4,))
    h = keras.layers.Concatenate()([tower()(inp), tower()(inp)])
    model, args = _compiled(cls(inp, keras.layers.Dense(3)(h)))
    return Case(model, _images((4,)), _labels(3), compile_args=args)


def sequential(cls=None):
    model = keras.Sequential(
        [
            keras.Input((6, 2)),
            keras.layers.Conv1D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    model, args = _compiled(model)
    return Case(model, _images((6, 2)), _labels(3), compile_args=args)


class Subclassed(keras.Model):
    """Layers made in ``__init__``, built on the first call; SAM in ``train_step``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(6, activation="relu")
        self.norm = keras.layers.BatchNormalization()
        self.head = keras.layers.Dense(3)

    def call(self, x, training=False):
        return self.head(self.norm(self.hidden(x), training=training))

    def train_step(self, data):
        return sam_train_step(self, data)


def subclassed(cls=None):
    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    model, args = _compiled(model)
    return Case(model, _images((4,)), _labels(3), compile_args=args)


def two_outputs(cls=keras.Model):
    inp = keras.Input((5,))
    h = keras.layers.Dense(6, activation="relu")(inp)
    outputs = {"cls": keras.layers.Dense(3, name="cls")(h), "reg": keras.layers.Dense(1)(h)}
    model = cls(inp, outputs)
    model, args = _compiled(
        model,
        metrics=None,
        loss={"cls": SPARSE["loss"], "reg": "mse"},
        loss_weights={"cls": 1.0, "reg": 0.3},
    )
    y = {"cls": _labels(3), "reg": _images((1,), seed=4)}
    return Case(model, _images((5,)), y, npz=False, compile_args=args)


def dict_inputs(cls=keras.Model):
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Concatenate()([a, b])
    model, args = _compiled(cls({"a": a, "b": b}, keras.layers.Dense(3)(h)))
    x = {"a": _images((3,)), "b": _images((2,), seed=5)}
    return Case(model, x, _labels(3), npz=False, compile_args=args)


def regression(cls=keras.Model):
    inp = keras.Input((4,))
    out = keras.layers.Dense(2)(keras.layers.Dense(5, activation="tanh")(inp))
    model, args = _compiled(cls(inp, out), loss="mse", metrics=("mae",))
    y = _images((2,), seed=6) * 3.0 + 10.0  # standardized features, targets far from [0, 1]
    return Case(model, _images((4,)), y, compile_args=args)


def mixed_float16(cls=keras.Model):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = keras.Input((4,))
        h = keras.layers.Dense(6, activation="relu")(inp)
        out = keras.layers.Dense(3, dtype="float32")(h)
        model, args = _compiled(cls(inp, out))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return Case(model, _images((4,)), _labels(3), compile_args=args)


def segmentation(cls=keras.Model):
    """Per-pixel classes with "void" pixels (255) left out by ignore_class."""
    inp = keras.Input((6, 6, 3))
    out = keras.layers.Conv2D(4, 1)(keras.layers.Conv2D(4, 3, padding="same")(inp))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    model, args = _compiled(cls(inp, out), loss=loss, metrics=None)
    y = _labels(4, shape=(6, 6))
    y[_rng(7).random(y.shape) < 0.3] = 255
    return Case(model, _images((6, 6, 3)), y, compile_args=args)


def dataset_with_weights(cls=keras.Model):
    inp = keras.Input((4,))
    model, args = _compiled(cls(inp, keras.layers.Dense(3)(inp)))
    x, y = _images((4,)), _labels(3)
    w = _rng(8).uniform(0.2, 2.0, N).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(5)
    return Case(model, x, y, sample_weight=w, dataset=ds, compile_args=args)


ZOO = {
    f.__name__: f
    for f in (
        resnet50,
        mobilenet_v2,
        transformer,
        lstm,
        gru,
        group_norm,
        nested_shared,
        two_towers,
        sequential,
        subclassed,
        two_outputs,
        dict_inputs,
        regression,
        mixed_float16,
        segmentation,
        dataset_with_weights,
    )
}


# ResNet-50 (23.5 M parameters) takes about 3 minutes of the suite, MobileNetV2 about a minute
# (its ~150 layers traced by every test): `make test-slow` runs both. `make test` runs every test
# below on the other cases (BatchNorm in inference mode, residual adds, RNNs, attention, ...);
# depthwise and separable convolutions' filter rules in test_filter_rules.py and
# test_directions.py, their Hessian-vector products against central differences in
# test_second_derivatives.py (the "image" group).
SLOW = ("resnet50", "mobilenet_v2")


@pytest.fixture(
    scope="module",
    params=[pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ZOO],
)
def case(request):
    keras.utils.set_random_seed(0)
    built = ZOO[request.param]()
    built.name = request.param
    return built


@pytest.fixture(scope="module")
def objective(case):
    return landscape.Objective(case.model, case.data, batch_size=N)


def _snapshot(model):
    return [keras.ops.convert_to_numpy(v.value).copy() for v in model.variables]


def _n_params(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


# ------------------------------------------------------------------------ the loss itself
def test_objective_equals_model_evaluate(case, objective):
    before = _snapshot(case.model)
    if case.dataset is not None:
        want = case.model.evaluate(case.dataset, verbose=0, return_dict=True)
    else:
        want = case.model.evaluate(
            case.x,
            case.y,
            sample_weight=case.sample_weight,
            batch_size=N,
            verbose=0,
            return_dict=True,
        )
    got = objective.with_precision("model").evaluate()  # model.evaluate's arithmetic (float16)
    for name, value in want.items():
        key = "acc" if name == "accuracy" else name
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    after = _snapshot(case.model)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


# ----------------------------------------------------------------------- filter rules
def _kept_axes(layer, variable) -> tuple[int, ...] | None:
    """The axes that index one filter of ``variable``, or None for the bias/norm class.

    Written from Keras's layouts (kernels are (..., in, out)), independently of landscape.
    """
    rank = len(variable.shape)
    norm_layers = (
        keras.layers.BatchNormalization,
        keras.layers.LayerNormalization,
        keras.layers.GroupNormalization,
    )
    if isinstance(layer, norm_layers) or "bias" in variable.path.rsplit("/", 1)[-1]:
        return None
    if isinstance(layer, keras.layers.Embedding):
        return (0,)
    if isinstance(layer, keras.layers.EinsumDense):
        inputs, output = layer.equation.split("->")
        kernel = inputs.split(",")[1]
        return tuple(i for i, c in enumerate(kernel) if c in output)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return (rank - 2, rank - 1)
    return (rank - 1,)


def _owners(model):
    owners = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for v in layer.trainable_weights:
            owners[id(v)] = layer  # inner layers come later: the innermost owner wins
    return owners


def _filter_norms(a, kept):
    a = np.asarray(a, np.float64)
    summed = tuple(i for i in range(a.ndim) if i not in kept)
    return np.sqrt(np.sum(a * a, axis=summed))


def test_filter_normalized_direction_has_the_weights_norms(case):
    before = _snapshot(case.model)
    d = landscape.random_direction(case.model, norm="filter", ignore="biasbn", seed=0)
    owners = _owners(case.model)
    checked = 0
    for v in case.model.trainable_variables:
        got = d.arrays[v.path]
        kept = _kept_axes(owners[id(v)], v)
        if kept is None:
            assert not np.any(got), f"{v.path} should not move under ignore='biasbn'"
            continue
        w = keras.ops.convert_to_numpy(v.value)
        np.testing.assert_allclose(
            _filter_norms(got, kept),
            _filter_norms(w, kept),
            rtol=1e-5,
            atol=1e-7,
            err_msg=v.path,
        )
        checked += 1
    assert checked > 0
    assert all(np.array_equal(a, b) for a, b in zip(before, _snapshot(case.model)))


# ---------------------------------------------------------------------- surface, Hessian
def test_three_by_three_surface(case, objective):
    dirs = [landscape.random_direction(case.model, seed=s) for s in (0, 1)]
    surf = landscape.compute_surface(objective, dirs, x="-1:1:3", y="-1:1:3", verbose=0)
    z = surf.values["train_loss"]
    assert z.shape == (3, 3) and np.all(np.isfinite(z))
    assert z[1, 1] == pytest.approx(objective.evaluate()["loss"], rel=1e-12)


def _dense_hessian(case):
    """The Hessian of Keras's compute_loss over all samples in one batch, in float64 here."""
    model = case.model
    variables = model.trainable_variables
    others = [v for v in model.variables if all(v is not t for t in variables)]
    sizes = [int(np.prod(v.shape)) for v in variables]
    w0 = np.concatenate([keras.ops.convert_to_numpy(v.value).ravel() for v in variables])
    flat = tf.Variable(w0.astype(np.float64))
    x, y, sw = case.x, case.y, case.sample_weight
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            parts = tf.split(flat, sizes)
            mapping = [
                (v, tf.cast(tf.reshape(p, v.shape), v.dtype)) for v, p in zip(variables, parts)
            ]
            mapping += [(v, v.value) for v in others]
            with keras.StatelessScope(state_mapping=mapping):
                y_pred = model(x, training=False)
                loss = model.compute_loss(x, y, y_pred, sw, training=False)
        g = inner.gradient(loss, flat)
    h = outer.jacobian(g, flat)
    return np.asarray(h, np.float64)


def test_certified_top_eigenvalue_and_trace(case, objective):
    eig = landscape.hessian_eigenvalues(objective, k=1, tol=1e-3, seed=0, max_iter=60)
    assert eig.converged and eig.residuals[0] <= 1e-3
    trace = landscape.hessian_trace(objective, samples=8, tol=1e-9, seed=0)
    assert np.isfinite(trace.estimate) and trace.n_hvp == 8
    if _n_params(case.model) > DENSE_LIMIT or case.dataset is not None:
        return
    h = _dense_hessian(case)
    h = 0.5 * (h + h.T)
    top = np.linalg.eigvalsh(h)[-1]
    assert eig.values[0] == pytest.approx(top, rel=2e-3, abs=1e-5)
    assert abs(trace.estimate - np.trace(h)) <= 5 * trace.stderr + 1e-4 * abs(np.trace(h))


def test_cheap_sharpness_report(case, objective):
    epsilon = None if case.heavy else 1e-3
    report = landscape.sharpness_report(
        objective, include_hessian=False, epsilon=epsilon, steps=1, samples=2, seed=0
    )
    assert ("epsilon_sharpness" in report) == (epsilon is not None)
    assert report["loss"] == pytest.approx(objective.evaluate()["loss"], rel=1e-12)
    assert report.pop("precision") == objective.precision  # the one string entry
    assert all(np.isfinite(v) for k, v in report.items() if not k.endswith("stderr"))


# -------------------------------------------------------------------------- training
def test_sam_fit_two_steps(case):
    fresh = ZOO[case.name](cls=SAMModel)
    model = fresh.model
    if not isinstance(model, SAMModel | Subclassed):  # Sequential, keras.applications
        model = SAMModel(model.inputs, model.outputs)
    model.compile(optimizer=SAM(keras.optimizers.SGD(0.01), rho=0.05), **fresh.compile_args)
    before = _snapshot(model)
    data = fresh.data
    if isinstance(data, tuple):
        data = tf.data.Dataset.from_tensor_slices(data).batch(8)
    history = model.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    after = _snapshot(model)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    assert all(np.all(np.isfinite(a)) for a in after)


# ----------------------------------------------------------------------------------- CLI
def test_cli_surface_on_the_saved_model_with_the_users_npz(case, objective, tmp_path):
    if not case.npz:
        pytest.skip("dict inputs or outputs do not fit the CLI's x_train/y_train arrays")
    model_path, data_path, out = tmp_path / "model.keras", tmp_path / "data.npz", tmp_path / "s.h5"
    case.model.save(model_path)
    extra = {} if case.sample_weight is None else {"sample_weight_train": case.sample_weight}
    x, y = np.asarray(case.x), np.asarray(case.y)
    np.savez(data_path, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2], **extra)
    args = ["surface", model_path, "--data", data_path, "--x=-1:1:3", "--y=-1:1:3"]
    args += ["--test-samples", 0, "--import", __file__, "--out", out, "--quiet"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        centre = float(f["train_loss"][1, 1])
        assert np.all(np.isfinite(f["train_loss"][()]))
    assert centre == pytest.approx(objective.evaluate()["loss"], rel=1e-5)
