"""SAM with Keras 3 subclassed models: layers made in ``__init__``, built by the first call.

``fit`` traces its step as a ``tf.function``, which may create variables in its first trace only;
a subclassed model is built inside that step. Every model here is unbuilt when ``fit`` starts.
"""

from __future__ import annotations

import pickle

import keras
import numpy as np
import pytest
import tensorflow as tf
from sam_reference import L2, make_data, reference_step

from sam import SAM, SAMModel, sam_train_step


def weights_of(model):
    return [v.numpy() for v in model.trainable_variables]


def initial_weights(seed=0, hidden=5, classes=3, features=4):
    """The reference MLP's weights: kernel, bias, kernel, bias (as ``make_mlp`` draws them)."""
    rng = np.random.default_rng(seed)
    shapes = [(features, hidden), (hidden,), (hidden, classes), (classes,)]
    return [rng.normal(0, 0.7, s) for s in shapes]


def given(value):
    """An initializer returning ``value``: the weights are known although made inside fit."""
    return lambda shape, dtype=None: tf.constant(value, dtype=dtype)


def reference_layers(w):
    """Dense(5, relu, L2) -> Dense(3) logits, the MLP of ``sam_reference``, with weights ``w``."""
    hidden = keras.layers.Dense(
        5,
        activation="relu",
        kernel_regularizer=keras.regularizers.L2(L2),
        kernel_initializer=given(w[0]),
        bias_initializer=given(w[1]),
        name="hidden",
    )
    logits = keras.layers.Dense(
        3, kernel_initializer=given(w[2]), bias_initializer=given(w[3]), name="logits"
    )
    return hidden, logits


class SubclassedMLP(keras.Model):
    """The standard pattern: layers in ``__init__``, ``sam_train_step`` in ``train_step``."""

    def __init__(self, w, **kwargs):
        super().__init__(**kwargs)
        self.d1, self.d2 = reference_layers(w)

    def call(self, x):
        return self.d2(self.d1(x))

    def train_step(self, data):
        return sam_train_step(self, data)


class SubclassedSAMModel(SAMModel):
    """``SAMModel`` subclassed the same way."""

    def __init__(self, w, **kwargs):
        super().__init__(**kwargs)
        self.d1, self.d2 = reference_layers(w)

    def call(self, x):
        return self.d2(self.d1(x))


class NestedSequential(SAMModel):
    """A ``Sequential`` without an input shape inside: built only on its first call."""

    def __init__(self, w, **kwargs):
        super().__init__(**kwargs)
        self.body = keras.Sequential(list(reference_layers(w)))

    def call(self, x):
        return self.body(x)


MODELS = {"subclassed": SubclassedMLP, "SAMModel": SubclassedSAMModel, "nested": NestedSequential}


def loss_64():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")


@pytest.fixture
def float64():
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")  # the conftest fixture puts float32 back


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("dataset", [False, True], ids=["arrays", "tf.data"])
def test_unbuilt_model_fits_and_equals_hand_computed_sam(kind, jit, dataset):
    x, y, sw = make_data(n=12)
    w0 = initial_weights()
    model = MODELS[kind](w0)
    assert not model.built
    model.compile(
        optimizer=SAM(keras.optimizers.SGD(0.1), rho=0.05), loss=loss_64(), jit_compile=jit
    )
    if dataset:
        data = tf.data.Dataset.from_tensor_slices((x, y, sw)).batch(12)
        model.fit(data, epochs=2, shuffle=False, verbose=0)
    else:
        model.fit(x, y, sample_weight=sw, batch_size=12, epochs=2, shuffle=False, verbose=0)
    for _ in range(2):  # two steps of one whole batch each
        w0 = reference_step(w0, x, y, sw, lr=0.1, rho=0.05)
    for a, b in zip(weights_of(model), w0):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert int(model.optimizer.iterations) == 2


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("jit", [False, True])
def test_plain_optimizer_gets_sam_with_default_rho(jit):
    x, y, sw = make_data(n=12)
    w0 = initial_weights(seed=3)
    model = SubclassedMLP(w0)
    # Momentum gives the base optimizer per-variable state, which must be made in the first trace.
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    model.compile(optimizer=optimizer, loss=loss_64(), jit_compile=jit)
    model.train_on_batch(x, y, sample_weight=sw)
    # The documented ρ = 0.05; momentum's first step (m = -lr·g) is plain SGD's.
    expected = reference_step(w0, x, y, sw, lr=0.1, rho=0.05)
    for a, b in zip(weights_of(model), expected):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_issue_snippet_with_metrics_runs_as_written():
    class MyModel(keras.Model):
        def __init__(self):
            super().__init__()
            self.d1 = keras.layers.Dense(16, activation="relu")
            self.d2 = keras.layers.Dense(3)

        def call(self, x):
            return self.d2(self.d1(x))

        def train_step(self, data):
            return sam_train_step(self, data)

    x, y, _ = make_data(n=64, dtype="float32")
    m = MyModel()
    m.compile(
        optimizer=SAM(keras.optimizers.SGD(0.1)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = m.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert set(history.history) == {"loss", "accuracy"}
    assert history.history["loss"][-1] < history.history["loss"][0]


class Scale(keras.layers.Layer):
    """A layer whose weight's shape is known only at its first call (made in ``build``)."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


class BNDropoutModel(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d1 = keras.layers.Dense(6, kernel_initializer=keras.initializers.GlorotUniform(1))
        self.scale = Scale()
        self.bn = keras.layers.BatchNormalization(momentum=0.5)
        self.drop = keras.layers.Dropout(0.3, seed=3)
        self.d2 = keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(2))

    def call(self, x, training=False):
        h = self.bn(self.scale(self.d1(x)), training=training)
        return self.d2(self.drop(keras.ops.relu(h), training=training))

    def train_step(self, data):
        return sam_train_step(self, data)


@pytest.mark.parametrize("jit", [False, True])
def test_subclassed_batchnorm_dropout_state_comes_from_the_clean_pass(jit):
    """ρ = 0: the perturbed pass is the clean one, so the step must equal plain SGD's, with the
    same dropout mask, and BatchNorm statistics updated once, by the clean pass."""
    x, y, _ = make_data(n=16, dtype="float32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = BNDropoutModel()
    model.compile(optimizer=SAM(keras.optimizers.SGD(0.1), rho=0.0), loss=loss, jit_compile=jit)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)

    plain = BNDropoutModel()  # same initial weights and dropout seed; one step by hand
    plain(x)  # built outside the step below

    @tf.function(jit_compile=jit)  # XLA draws other dropout masks from the same seed
    def sgd_step():
        with tf.GradientTape() as tape:
            value = loss(y, plain(x, training=True))
        grads = tape.gradient(value, plain.trainable_variables)
        for v, g in zip(plain.trainable_variables, grads):
            v.assign_sub(0.1 * g)

    sgd_step()
    names = [v.name for v in model.weights]
    assert names == [v.name for v in plain.weights] and "moving_mean" in names
    for a, b in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_subclassed_batchnorm_statistics_ignore_a_large_perturbation():
    x, y, _ = make_data(n=16, dtype="float32")
    model = BNDropoutModel()
    model.compile(
        optimizer=SAM(keras.optimizers.SGD(0.5), rho=2.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.train_on_batch(x, y)
    reference = BNDropoutModel()
    reference(x, training=True)  # one clean forward pass at the initial w
    np.testing.assert_allclose(model.bn.moving_mean.numpy(), reference.bn.moving_mean.numpy())
    np.testing.assert_allclose(
        model.bn.moving_variance.numpy(), reference.bn.moving_variance.numpy(), rtol=1e-6
    )


def test_functional_sam_model_leaves_the_class_subclassable():
    """Keras makes a Model subclass used with (inputs, outputs) derive from Functional for good."""
    inputs = keras.Input((4,))
    functional = SAMModel(inputs, keras.layers.Dense(3)(inputs))
    assert isinstance(functional, SAMModel) and type(functional).__name__ == "SAMModel"
    assert SAMModel.__bases__ == (keras.Model,)
    unpickled = pickle.loads(pickle.dumps(functional))  # the Keras way: through a saved file
    assert isinstance(unpickled, SAMModel) and type(unpickled).__name__ == "SAMModel"
    x, y, _ = make_data(n=8, dtype="float32")
    model = SubclassedSAMModel(initial_weights())  # after a functional SAMModel: still works
    model.compile(optimizer=SAM(keras.optimizers.SGD(0.1)), loss=keras.losses.MeanSquaredError())
    model.fit(x, np.eye(3)[y], verbose=0)
    assert int(model.optimizer.iterations) == 1


class FunctionalSubclass(SAMModel):
    """Keras's functional subclassing: a subclass whose __init__ calls super with the graph."""

    def __init__(self, units=5, **kwargs):
        inputs = keras.Input((4,))
        outputs = keras.layers.Dense(3)(keras.layers.Dense(units, activation="relu")(inputs))
        super().__init__(inputs, outputs, **kwargs)


def test_functional_subclass_trains_with_sam():
    x, y, _ = make_data(n=8, dtype="float32")
    model = FunctionalSubclass()
    assert isinstance(model, FunctionalSubclass) and type(model).__name__ == "FunctionalSubclass"
    model.compile(
        optimizer=SAM(keras.optimizers.SGD(0.1)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x, y, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


@keras.saving.register_keras_serializable(package="test_sam_models")
class Registered(SAMModel):
    def __init__(self, units=6, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.d1 = keras.layers.Dense(units, activation="relu")
        self.d2 = keras.layers.Dense(3)

    def call(self, x):
        return self.d2(self.d1(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_subclassed_sam_model_built_in_fit_saves_loads_and_resumes(tmp_path):
    x, y, _ = make_data(n=24, dtype="float32")
    keras.utils.set_random_seed(0)
    model = Registered()
    model.compile(
        optimizer=SAM(keras.optimizers.SGD(0.05, momentum=0.9), rho=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "sub.keras")
    loaded = keras.saving.load_model(tmp_path / "sub.keras")
    assert isinstance(loaded, Registered) and loaded.optimizer.rho == 0.1
    assert int(loaded.optimizer.iterations) == 3
    for m in (model, loaded):
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(weights_of(model), weights_of(loaded)):
        np.testing.assert_array_equal(a, b)
