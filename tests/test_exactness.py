"""The Objective's exactness contract on models the earlier tests never imagined (issue 22).

Every reference here avoids the code path it checks: ``model.evaluate`` (Keras's own loop), a
float64 clone of the model differentiated by a plain ``GradientTape`` and central finite
differences, or values written down by hand.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import landscape

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 6)).astype("float32")
Y = RNG.integers(0, 3, 32)


def _compiled(model, loss=None):
    model.compile(loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _evaluate(model, x=X, y=Y):
    """``model.evaluate`` with the whole data in one batch (the contract's reference)."""
    return float(model.evaluate(x, y, batch_size=len(x), verbose=0))


# ---------------------------------------------------------------------------------- bfloat16
def _bf16_model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((6,))
    h = keras.layers.Dense(5, activation="tanh", dtype="bfloat16", name="low")(inp)
    out = keras.layers.Dense(3, name="head")(h)
    return _compiled(keras.Model(inp, out))


def _float64_clone_hessian(model) -> np.ndarray:
    """Dense Hessian of the loss of a float64 copy of ``model`` (its bfloat16 weights widened
    exactly), by central differences of plain GradientTape gradients."""
    w = [np.asarray(keras.ops.convert_to_numpy(v.value), np.float64) for v in model.weights]
    x, y = tf.constant(X, tf.float64), tf.constant(Y)

    def grad(flat):
        parts, i = [], 0
        for a in w:
            parts.append(tf.constant(flat[i : i + a.size].reshape(a.shape)))
            i += a.size
        with tf.GradientTape() as tape:
            tape.watch(parts)
            k1, b1, k2, b2 = parts
            logits = tf.tanh(x @ k1 + b1) @ k2 + b2
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            )
        return np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, parts)])

    w0 = np.concatenate([a.ravel() for a in w])
    h, n = 1e-5, w0.size
    cols = [(grad(w0 + h * e) - grad(w0 - h * e)) / (2 * h) for e in np.eye(n)]
    hessian = np.stack(cols, axis=1)
    return (hessian + hessian.T) / 2


def test_a_bfloat16_layer_is_analysed_with_every_variable():
    model = _bf16_model()
    obj = landscape.Objective(model, (X, Y), batch_size=32)
    assert [v.path for v in obj.trainable_variables] == [v.path for v in model.trainable_variables]
    eig = landscape.hessian_eigenvalues(obj, k=1, tol=1e-5)
    dense = np.linalg.eigvalsh(_float64_clone_hessian(model))[-1]
    assert eig.values[0] == pytest.approx(dense, rel=2e-4)


def test_a_bfloat16_direction_is_stored_exactly(tmp_path):
    model = _bf16_model()
    d = landscape.random_direction(model, seed=0)
    assert d.arrays["low/kernel"].dtype == np.float32
    w = keras.ops.convert_to_numpy(model.get_layer("low").kernel).astype(np.float32)
    norms = np.linalg.norm(d.arrays["low/kernel"], axis=0)
    np.testing.assert_allclose(norms, np.linalg.norm(w, axis=0), rtol=1e-6)
    d.save(str(tmp_path / "d.h5"))
    back = landscape.Direction.load(str(tmp_path / "d.h5"))
    np.testing.assert_array_equal(back.arrays["low/kernel"], d.arrays["low/kernel"])


# ------------------------------------------------------------------- variables out of reach
def _normalized_model(shift: float):
    keras.utils.set_random_seed(1)
    norm = keras.layers.Normalization()
    norm.adapt(X * (1 + shift) + shift)
    layers = [
        keras.Input((6,)),
        norm,
        keras.layers.Dense(8, activation="tanh"),
        keras.layers.Dense(3),
    ]
    return _compiled(keras.Sequential(layers))


def test_the_plane_through_adapted_normalization_models_passes_through_each():
    models = [_normalized_model(s) for s in (0.0, 1.0, 2.0)]
    before = [keras.ops.convert_to_numpy(v.value).copy() for v in models[0].weights]
    plane = landscape.plane_through(*models)
    obj = landscape.Objective(models[0], (X, Y), batch_size=32)
    for model, coords in zip(models, plane.coordinates):
        value = obj.evaluate_at(list(coords), list(plane.directions))["loss"]
        assert value == pytest.approx(_evaluate(model), rel=1e-5)
    for v, a in zip(models[0].weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v.value), a)


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory):
    keras.utils.set_random_seed(5)
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5)])
    inner.get_layer(index=0).bias.assign(np.linspace(-1, 1, 5).astype("float32"))
    path = str(tmp_path_factory.mktemp("sm") / "inner")
    inner.export(path, verbose=False)
    return path


def _tfsm_model(path, trainable: bool):
    keras.utils.set_random_seed(6)
    inp = keras.Input((6,))
    h = keras.layers.TFSMLayer(path, trainable=trainable, name="saved")(inp)
    return _compiled(keras.Model(inp, keras.layers.Dense(3)(h)))


def test_a_trainable_savedmodel_layer_is_refused_naming_it(saved_model_dir):
    model = _tfsm_model(saved_model_dir, trainable=True)
    with pytest.raises(ValueError, match=r"^The layer 'saved' \(TFSMLayer: 2 variables\)") as e:
        landscape.Objective(model, (X, Y))
    assert "\n" not in str(e.value) and "trainable = False" in str(e.value)


def test_a_frozen_savedmodel_layer_is_exact_and_cannot_be_moved(saved_model_dir):
    model = _tfsm_model(saved_model_dir, trainable=False)
    before = [keras.ops.convert_to_numpy(v.value).copy() for v in model.weights]
    obj = landscape.Objective(model, (X, Y), batch_size=32)
    assert obj.evaluate()["loss"] == pytest.approx(_evaluate(model), rel=1e-6)
    d = landscape.random_direction(model, include="all", ignore=None, seed=0)
    with pytest.raises(ValueError, match="moves variables of the layer 'saved'"):
        obj.evaluate(d)
    trainable = landscape.random_direction(model, seed=0)
    obj.evaluate_at([0.5], [trainable])  # the trainable head moves
    for v, a in zip(model.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v.value), a)


# ------------------------------------------------------------------- losses coupling samples
def test_a_loss_coupling_samples_is_exact_in_one_batch_and_refused_in_several():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    model.compile(loss=keras.losses.Circle())
    one = landscape.Objective(model, (X, Y), batch_size=32)
    assert one.evaluate()["loss"] == pytest.approx(_evaluate(model), rel=1e-5)
    with pytest.raises(ValueError, match=r"'circle' couples the samples .*`batch_size`") as e:
        landscape.Objective(model, (X, Y), batch_size=8)
    assert "\n" not in str(e.value)


def test_a_model_that_mixes_samples_is_named():
    inp = keras.Input((6,))
    centred = keras.layers.Lambda(lambda t: t - keras.ops.mean(t, axis=0, keepdims=True))(inp)
    model = _compiled(keras.Model(inp, keras.layers.Dense(3)(centred)))
    with pytest.raises(ValueError, match="The model itself"):
        landscape.Objective(model, (X, Y), batch_size=8)
    obj = landscape.Objective(model, (X, Y), batch_size=32)
    assert obj.evaluate()["loss"] == pytest.approx(_evaluate(model), rel=1e-5)


# --------------------------------------------------------------- add_loss and activity terms
class _MeanPenalty(keras.layers.Layer):
    """Adds 0.3·mean(x²) over its batch (a per-sample mean) and a weight-only term."""

    def build(self, shape):
        self.scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(0.7))

    def call(self, x):
        self.add_loss(0.3 * keras.ops.mean(keras.ops.square(x)))
        self.add_loss(0.05 * keras.ops.square(self.scale))
        return x * self.scale


class _SumPenalty(keras.layers.Layer):
    def call(self, x):
        self.add_loss(0.01 * keras.ops.sum(keras.ops.square(x)))
        return x


def _with_model_losses(extra=None, dtype="float32"):
    keras.utils.set_random_seed(4)
    inp = keras.Input((6,), dtype=dtype)
    h = keras.layers.Dense(5, activation="tanh", activity_regularizer="l2", dtype=dtype)(inp)
    h = (extra or _MeanPenalty(dtype=dtype))(h)
    return _compiled(keras.Model(inp, keras.layers.Dense(3, dtype=dtype)(h)))


@pytest.mark.parametrize("batch_size", [32, 8, 5])
def test_add_loss_and_activity_terms_are_in_the_loss_as_model_evaluate_has_them(batch_size):
    model = _with_model_losses()
    obj = landscape.Objective(model, (X, Y), batch_size=batch_size)
    assert obj.included == ("data", "model_losses")
    assert obj.evaluate()["loss"] == pytest.approx(_evaluate(model), rel=1e-6)
    bare = landscape.Objective(model, (X, Y), batch_size=batch_size, model_losses=False)
    assert bare.included == ("data",)
    assert bare.evaluate()["loss"] < obj.evaluate()["loss"]


def test_a_batch_sum_add_loss_is_exact_in_one_batch_and_refused_in_several():
    model = _with_model_losses(_SumPenalty())
    obj = landscape.Objective(model, (X, Y), batch_size=32)
    assert obj.evaluate()["loss"] == pytest.approx(_evaluate(model), rel=1e-6)
    with pytest.raises(ValueError, match="model's own losses .* couples the samples"):
        landscape.Objective(model, (X, Y), batch_size=16)


def test_the_model_losses_are_differentiated_gradient_and_hvp_against_finite_differences():
    keras.config.set_floatx("float64")
    model = _with_model_losses(dtype="float64")
    x = X.astype(np.float64)
    obj = landscape.Objective(model, (x, Y), batch_size=8)
    _, grads = obj.value_and_gradient()
    v = [np.asarray(RNG.normal(size=tuple(w.shape))) for w in obj.trainable_variables]
    offsets = obj.flat.offsets
    flat_v = obj.flat.concat(v)
    h = 1e-5
    plus = obj.evaluate(offsets(h * flat_v))["loss"]
    minus = obj.evaluate(offsets(-h * flat_v))["loss"]
    directional = float(np.dot(obj.flat.concat(grads), flat_v))
    assert directional == pytest.approx((plus - minus) / (2 * h), rel=1e-7)
    hv = obj.flat.concat(obj.hessian_vector_product(v))
    g_plus = obj.flat.concat(obj.value_and_gradient(offsets(h * flat_v))[1])
    g_minus = obj.flat.concat(obj.value_and_gradient(offsets(-h * flat_v))[1])
    np.testing.assert_allclose(hv, (g_plus - g_minus) / (2 * h), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="model_losses=False"):
        obj.gauss_newton_vector_product(v)


# ------------------------------------------------------------------- no flat surface, no NaN
def _int8_model():
    keras.utils.set_random_seed(7)
    model = _compiled(
        keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.Dense(3)])
    )
    model.quantize("int8")
    return model


def test_a_quantized_model_gives_no_silent_flat_direction():
    model = _int8_model()
    with pytest.raises(ValueError, match=r"zero on every variable.*quantized") as e:
        landscape.random_direction(model, seed=0)
    assert "\n" not in str(e.value)
    obj = landscape.Objective(model, (X, Y), batch_size=32)
    zero = landscape.Direction({v.path: np.zeros(v.shape, "float32") for v in obj.variables})
    with pytest.raises(ValueError, match=r"`directions`: direction 0 is zero"):
        landscape.compute_surface(obj, [zero], x="-1:1:3")


def test_a_diverged_model_is_refused_before_any_work():
    keras.utils.set_random_seed(8)
    model = _compiled(keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)]))
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel).copy()
    kernel[0, 0] = np.nan
    model.layers[0].kernel.assign(kernel)
    with pytest.raises(ValueError, match=r"1 non-finite weight values .*diverged"):
        landscape.Objective(model, (X, Y))
    kernel[0, 0] = 1.0
    model.layers[0].kernel.assign(kernel)
    bad = X.copy()
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="The loss is nan at the model's own weights"):
        landscape.Objective(model, (bad, Y))


def test_sam_refuses_a_layer_its_perturbation_cannot_reach(saved_model_dir):
    import sam

    model = _tfsm_model(saved_model_dir, trainable=True)
    sam_model = sam.SAMModel(model.inputs, model.outputs)
    sam_model.compile(
        optimizer=sam.SAM(keras.optimizers.SGD(0.1), rho=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    with pytest.raises(ValueError, match=r"SAM cannot perturb .*'saved' \(TFSMLayer\)"):
        sam_model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    model.get_layer("saved").trainable = False
    frozen = sam.SAMModel(model.inputs, model.outputs)
    frozen.compile(
        optimizer=sam.SAM(keras.optimizers.SGD(0.1), rho=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    frozen.fit(X, Y, batch_size=16, epochs=1, verbose=0)  # the rest of the model trains


# ------------------------------------------------- found by the conformance harness (issue 22)
class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, size):
        super().__init__()
        self.x, self.y, self.size = x, y, size

    def __len__(self):
        return -(-len(self.y) // self.size)

    def __getitem__(self, i):
        part = slice(i * self.size, (i + 1) * self.size)
        x = [a[part] for a in self.x] if isinstance(self.x, list) else self.x[part]
        return x, self.y[part]


def test_a_pydataset_of_list_inputs_and_one_hot_targets_equals_model_evaluate():
    """Harness seeds 17/41 (list inputs: a TypeError) and 16/34/53 (one-hot targets in batches
    of 5 of 15: a reshape error, the class axis was left unknown)."""
    x1, x2 = X[:15, :4], X[:15, 4:]
    onehot = keras.utils.to_categorical(Y[:15], 3)
    a, b = keras.Input((4,)), keras.Input((2,))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], out)
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    obj = landscape.Objective(model, _Batches([x1, x2], onehot, 5))
    reference = model.evaluate([x1, x2], onehot, batch_size=15, verbose=0, return_dict=True)
    got = obj.evaluate()
    assert got["loss"] == pytest.approx(reference["loss"], rel=1e-6)
    assert got["acc"] == pytest.approx(reference["accuracy"], rel=1e-6)


def test_hvp_of_a_float64_model_with_float32_variables_against_finite_differences():
    """Harness seed 27 (long): LoRA factors made under float32 beside float64 layers: the HVP
    summed float32 and float64 terms in one AddN and raised a TypeError."""
    inp = keras.Input((6,), dtype="float64")
    h = keras.layers.Dense(4, activation="tanh", dtype="float64")(inp)
    head = keras.layers.Dense(3, dtype="float32")
    model = _compiled(keras.Model(inp, head(h)))
    x = X.astype(np.float64)
    obj = landscape.Objective(model, (x, Y), batch_size=16)
    dtypes = {keras.backend.standardize_dtype(v.dtype) for v in obj.trainable_variables}
    assert dtypes == {"float32", "float64"}
    v = [RNG.normal(size=tuple(w.shape)) for w in obj.trainable_variables]
    hv = obj.flat.concat(obj.hessian_vector_product(v))
    flat_v, h = obj.flat.concat(v), 1e-3
    plus = obj.flat.concat(obj.value_and_gradient(obj.flat.offsets(h * flat_v))[1])
    minus = obj.flat.concat(obj.value_and_gradient(obj.flat.offsets(-h * flat_v))[1])
    np.testing.assert_allclose(hv, (plus - minus) / (2 * h), rtol=1e-3, atol=1e-4)


def test_precision_float64_computes_float32_variables_in_float64():
    """Harness seed 6 (ci): LoRA factors are float32 in a float64 model; Keras's ops typed
    ``a @ b`` by the variables' float32 dtype, so precision='float64' still rounded it."""
    inp = keras.Input((6,), dtype="float64")
    dense = keras.layers.Dense(4, activation="tanh", dtype="float64")
    h = dense(inp)
    dense.enable_lora(2)
    dense.lora_kernel_b.assign(RNG.normal(size=tuple(dense.lora_kernel_b.shape)))
    model = _compiled(keras.Model(inp, keras.layers.Dense(3, dtype="float64")(h)))
    obj = landscape.Objective(model, (X.astype(np.float64), Y), precision="float64")
    assert "float32" in {keras.backend.standardize_dtype(v.dtype) for v in obj.variables}
    v = RNG.normal(size=obj.flat.n)
    hv = obj.flat.concat(obj.hessian_vector_product(obj.flat.split(v)))
    h = 1e-5
    plus = obj.flat.concat(obj.value_and_gradient(obj.flat.offsets(h * v))[1])
    minus = obj.flat.concat(obj.value_and_gradient(obj.flat.offsets(-h * v))[1])
    fd = (plus - minus) / (2 * h)
    assert np.linalg.norm(hv - fd) <= 1e-7 * np.linalg.norm(fd)


def test_building_an_objective_leaves_the_models_metric_state_bit_identical():
    """The loss trackers the Objective's build runs are put back from copies (a variable's NumPy
    view may share the buffer its in-place update writes)."""
    model = _with_model_losses()
    model.evaluate(X, Y, batch_size=8, verbose=0)
    before = [np.array(keras.ops.convert_to_numpy(v)) for v in model.metrics_variables]
    landscape.Objective(model, (X, Y), batch_size=8)
    after = [keras.ops.convert_to_numpy(v) for v in model.metrics_variables]
    assert len(before) == len(after) > 0
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_a_curvature_tensorflow_cannot_differentiate_is_refused_not_returned_as_nan():
    """Harness seeds 919/957 (long): keras.losses.Circle masks with where(mask, x, -inf) before
    a logsumexp, whose second derivative TensorFlow returns as NaN while the loss and gradient
    are finite (a finite difference of the gradient is finite)."""
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    model.compile(loss=keras.losses.Circle())
    labels = np.array([0, 1] * 7 + [2, 3])  # classes 2 and 3 once: rows with no positive pair
    obj = landscape.Objective(model, (X[:16], labels), batch_size=16)
    _, grads = obj.value_and_gradient()
    assert np.all(np.isfinite(obj.flat.concat(grads)))
    vector = [np.ones(tuple(v.shape), "float32") for v in obj.trainable_variables]
    with pytest.raises(ValueError, match=r"^The Hessian-vector product is not finite") as e:
        obj.hessian_vector_product(vector)
    assert "\n" not in str(e.value)
