"""landscape._compat: every private Keras attribute landscape reads still means what it did."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from sam import _compat


def _model():
    inp = keras.Input((3,))
    out = {"a": keras.layers.Dense(2, name="a")(inp), "b": keras.layers.Dense(1, name="b")(inp)}
    model = keras.Model(inp, out)
    model.compile(loss={"a": "mse", "b": "mae"}, loss_weights={"a": 1.0, "b": 0.5}, metrics=["mae"])
    return model


def test_compiled_loss_resolves_to_per_output_losses():
    model = _model()
    x = np.ones((4, 3), "float32")
    y = {"a": np.zeros((4, 2), "float32"), "b": np.zeros((4, 1), "float32")}
    compile_loss = _compat.compiled_loss(model)
    value = compile_loss(y, model(x), None)
    flat = _compat.flat_losses(compile_loss)
    assert [(t.path, t.weight) for t in flat] == [(("a",), 1.0), (("b",), 0.5)]
    assert all(isinstance(t.loss, keras.losses.Loss) for t in flat)
    y_pred = model(x)
    parts = [t.loss(y[t.path[0]], y_pred[t.path[0]]) for t in flat]
    assert float(value) == pytest.approx(float(parts[0]) + 0.5 * float(parts[1]), rel=1e-6)
    true_struct, pred_struct = _compat.build_structures(compile_loss)
    assert set(true_struct) == set(pred_struct) == {"a", "b"}


def test_compiled_metrics_and_a_fresh_compile_loss():
    model = _model()
    assert isinstance(_compat.compiled_metrics(model), keras.metrics.Metric)
    bare = keras.Model(model.inputs, model.outputs)
    assert _compat.compiled_loss(bare) is None and _compat.compiled_metrics(bare) is None
    made = _compat.make_compile_loss("mse", ["a"])
    assert float(made(np.zeros((2, 1)), np.ones((2, 1)))) == pytest.approx(1.0)


def test_keras_mask_of_a_masked_output_and_of_ignore_class():
    tokens = np.array([[3, 4, 0], [5, 0, 0]])
    out = keras.layers.Embedding(6, 2, mask_zero=True)(tokens)
    np.testing.assert_array_equal(np.asarray(_compat.keras_mask(out)), tokens != 0)
    loss = keras.losses.SparseCategoricalCrossentropy(ignore_class=9)
    values = loss.call(np.array([1, 9]), np.full((2, 3), 1 / 3, "float32"))
    np.testing.assert_array_equal(np.asarray(_compat.keras_mask(values)), [True, False])
    assert _compat.keras_mask(np.zeros(3)) is None


def test_layer_name_counters_drive_automatic_names():
    saved = _compat.layer_name_counters()
    try:
        _compat.set_layer_name_counters({})
        assert keras.layers.Dense(1).name == "dense"
        assert _compat.layer_name_counters()["dense"] == 1
        assert keras.layers.Dense(1).name == "dense_1"
    finally:
        _compat.set_layer_name_counters(saved)


def test_all_layers_lists_the_model_and_its_nested_layers():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="inner_dense")])
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(1, name="outer")(inner(inp)))
    layers = _compat.all_layers(model)
    assert layers[0] is model
    assert {layer.name for layer in layers} >= {"inner_dense", "outer", inner.name}


def test_is_graph_container_tells_routing_models_from_computing_layers():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(1)(inner(inp)))

    class Subclassed(keras.Model):
        def call(self, x):
            return x * 2.0

    assert _compat.is_graph_container(model) and _compat.is_graph_container(inner)
    assert not _compat.is_graph_container(model.layers[-1])
    assert not _compat.is_graph_container(Subclassed())


def test_stateless_scope_keeping_dtypes_reads_float32_variables_as_float64():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    kernel = keras.ops.convert_to_numpy(layer.kernel.value).copy()
    wide = tf.constant(kernel.astype(np.float64) + 0.5)
    with _compat.stateless_scope_keeping_dtypes([(layer.kernel, wide)]):
        value = layer.kernel.value
        assert value.dtype == tf.float64 and value is wide
    # The public scope casts to the variable's dtype; the variable is never assigned.
    with keras.StatelessScope(state_mapping=[(layer.kernel, wide)]):
        assert layer.kernel.value.dtype == tf.float32
    assert keras.ops.convert_to_numpy(layer.kernel.value).tobytes() == kernel.tobytes()


def test_a_renamed_attribute_fails_loudly():
    with pytest.raises(RuntimeError, match="has no `object._compile_loss`"):
        _compat.compiled_loss(object())


def test_adam_velocity_is_adams_second_moment_of_that_variable():
    a, b = keras.Variable(np.ones(3)), keras.Variable(np.ones((2, 2)))
    opt = keras.optimizers.Adam(0.1, beta_2=0.5)
    opt.build([a, b])
    opt.apply([np.full(3, 2.0), np.full((2, 2), 4.0)], [a, b])
    np.testing.assert_allclose(_compat.adam_velocity(opt, a).numpy(), np.full(3, 0.5 * 4.0))
    np.testing.assert_allclose(_compat.adam_velocity(opt, b).numpy(), np.full((2, 2), 0.5 * 16.0))


# -- exact second derivatives -------------------------------------------------------------------
_PATCHED = [
    ("keras.src.backend.tensorflow.nn", "_compute_moments"),
    ("tensorflow.python.ops.gen_image_ops", "resize_nearest_neighbor"),
    ("tensorflow.python.ops.gen_image_ops", "resize_bilinear"),
    ("tensorflow.python.ops.gen_image_ops", "resize_bicubic"),
]


def _attributes():
    import importlib

    return [getattr(importlib.import_module(m), name) for m, name in _PATCHED]


def test_exact_second_derivatives_replaces_the_named_attributes_and_restores_them():
    originals = _attributes()  # each exists: a Keras/TF upgrade that moves one fails here
    with _compat.exact_second_derivatives():
        assert all(a is not b for a, b in zip(_attributes(), originals))
        with _compat.exact_second_derivatives():  # nested
            pass
        assert all(a is not b for a, b in zip(_attributes(), originals))
    assert all(a is b for a, b in zip(_attributes(), originals))
    with pytest.raises(ZeroDivisionError), _compat.exact_second_derivatives():
        raise ZeroDivisionError("the body raises")
    assert all(a is b for a, b in zip(_attributes(), originals))


def test_a_moved_attribute_of_exact_second_derivatives_fails_loudly():
    with pytest.raises(RuntimeError, match="has no `math.no_such_op`"):
        import math

        _compat._module_attribute(math, "no_such_op")


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_exact_moments_equal_tf_nn_moments(dtype):
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, size=(4, 5, 6)), dtype)
    tol = {"float16": 1e-3, "float32": 1e-6, "float64": 1e-13}[dtype]
    for axes, keepdims in (([-1], False), ([0, 1], True), ([0, 2], False)):
        expected = tf.nn.moments(x, axes, keepdims=keepdims)
        got = _compat._exact_moments(x, axes, keepdims)
        for e, g in zip(expected, got):
            assert g.dtype == e.dtype and g.shape == e.shape
            np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=tol, atol=tol)
    with _compat.exact_second_derivatives():  # keras.ops.moments (fp16 handling kept)
        inside = keras.ops.moments(x, [1])
    for e, g in zip(keras.ops.moments(x, [1]), inside):
        assert g.dtype == e.dtype
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=tol, atol=tol)


def _variance_hessian():
    x = tf.constant(np.random.default_rng(1).normal(size=5))
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            variance = keras.ops.moments(x, [0])[1]
        g = inner.gradient(variance, x)
    return outer.jacobian(g, x).numpy()


def test_variance_has_its_exact_hessian_only_under_exact_second_derivatives():
    n = 5
    exact = 2 / n * (np.eye(n) - np.ones((n, n)) / n)  # var = mean((x - mean x)²)
    with _compat.exact_second_derivatives():
        np.testing.assert_allclose(_variance_hessian(), exact, atol=1e-14)
    # TensorFlow's own rule drops the terms through the mean (if this fails, TF fixed
    # tf.nn.moments and the replacement of _compute_moments can go).
    np.testing.assert_allclose(_variance_hessian(), 2 / n * np.eye(n), atol=1e-14)


_RESIZES = [
    (method, size, dtype)
    for method in ("nearest", "bilinear", "bicubic")
    for size in ((7, 5), (3, 2), (4, 9))
    for dtype in ("float32", "float64")
]


@pytest.mark.parametrize(("method", "size", "dtype"), _RESIZES)
def test_exact_resize_equals_tf_image_resize(method, size, dtype):
    images = tf.constant(np.random.default_rng(2).normal(size=(2, 4, 6, 3)), dtype)
    expected = tf.image.resize(images, size, method=method)
    with _compat.exact_second_derivatives():
        got = tf.image.resize(images, size, method=method)
        legacy = tf.compat.v1.image.resize(images, size, method=method, align_corners=True)
    assert got.shape == expected.shape and got.dtype.is_floating
    tol = 0 if method == "nearest" else 1e-6  # the kernels compute in float32
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=tol, atol=tol)
    v1 = tf.compat.v1.image.resize(images, size, method=method, align_corners=True)
    np.testing.assert_allclose(legacy.numpy(), v1.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic"])
def test_exact_resize_has_its_second_derivative(method):
    """f(x) = ½‖R x‖² has H v = Rᵀ R v; R v is a resize, Rᵀ u a first derivative (exact)."""
    rng = np.random.default_rng(3)
    x, v = (tf.constant(rng.normal(size=(1, 4, 5, 2))) for _ in range(2))

    def resize(t):
        return tf.image.resize(t, (7, 3), method=method)

    with _compat.exact_second_derivatives():
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                loss = 0.5 * tf.reduce_sum(tf.cast(resize(x), tf.float64) ** 2)
            g = inner.gradient(loss, x)
            gv = tf.reduce_sum(g * v)
        hv = outer.gradient(gv, x)
        rv = tf.cast(resize(v), tf.float64)  # R v, exact in float64 here
    with tf.GradientTape() as tape:  # Rᵀ (R v) by TF's own first derivative
        tape.watch(x)
        inner_product = tf.reduce_sum(tf.cast(resize(x), tf.float64) * rv)
    expected = tape.gradient(inner_product, x)
    np.testing.assert_allclose(hv.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
    assert np.abs(expected.numpy()).max() > 0.1


def test_autocast_scope_types_float32_variables_as_the_wider_dtype():
    v = keras.Variable(np.ones((2, 2), "float32"))
    w = keras.Variable(np.ones((2, 2), "float32"))
    assert keras.ops.matmul(v, w).dtype == "float32"
    with _compat.autocast_scope("float64"):
        assert keras.backend.standardize_dtype(v.dtype) == "float64"
        assert keras.backend.standardize_dtype(keras.ops.matmul(v, w).dtype) == "float64"
    assert keras.backend.standardize_dtype(v.dtype) == "float32"


def test_an_ema_optimizer_exposes_its_average_and_built_variables():
    v = keras.Variable(np.ones(3, "float32"))
    opt = keras.optimizers.SGD(0.1, use_ema=True)
    opt.build([v])
    assert _compat.built_variables(opt) == [v]
    average = _compat.ema_variables(opt)
    assert len(average) == 1 and tuple(average[0].shape) == (3,)
    assert _compat.ema_variables(keras.optimizers.SGD(0.1)) is None


def test_numpy_batches_reads_datasets_through_keras_adapters_in_order():
    import tensorflow as tf

    x = np.arange(10, dtype="float32").reshape(5, 2)
    y = np.arange(5)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return x[2 * i : 2 * i + 2], y[2 * i : 2 * i + 2]

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    for source in (Batches(), dataset):
        batches = list(_compat.numpy_batches(source))
        assert all(isinstance(b[0], np.ndarray) for b in batches)
        np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
        np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    assert len(list(_compat.numpy_batches(dataset, steps=2))) == 2


def test_backend_neutral_config_points_a_pytorch_optimizer_to_keras_optimizers():
    from sam._compat import backend_neutral_config

    saved_on_torch = {  # what serialize_keras_object records for SGD on Keras 3.15's PyTorch
        "module": "keras.src.backend.torch.optimizers.torch_sgd",
        "class_name": "SGD",
        "config": {"name": "sgd", "learning_rate": 0.25, "momentum": 0.5},
        "registered_name": "SGD",
    }
    loaded = keras.saving.deserialize_keras_object(backend_neutral_config(saved_on_torch))
    assert type(loaded) is keras.optimizers.SGD
    assert float(loaded.momentum) == 0.5
    plain = keras.saving.serialize_keras_object(keras.optimizers.SGD(0.25))
    assert backend_neutral_config(plain) == plain  # TensorFlow's own config is left alone


def test_omit_frequent_tracing_warning_silences_retracing_of_one_closure(caplog):
    import tensorflow as tf

    def traced_functions(omit: bool) -> None:
        for i in range(7):  # seven functions of one code object, each traced once

            def f(x, i=i):
                return x * i

            fn = tf.function(f, input_signature=[tf.TensorSpec([], tf.float32)])
            if omit:
                _compat.omit_frequent_tracing_warning(fn)
            fn(tf.constant(1.0))

    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        traced_functions(omit=False)
    assert "triggered tf.function retracing" in caplog.text  # the warning the flag turns off
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        traced_functions(omit=True)
    assert "retracing" not in caplog.text
    with pytest.raises(RuntimeError, match="has no `Function._omit_frequent_tracing_warning`"):
        _compat.omit_frequent_tracing_warning(lambda x: x)


def test_flat_call_equals_the_plain_call_and_falls_back_for_other_arguments():
    import tensorflow as tf

    weight = tf.Variable([[1.0, 2.0], [3.0, 4.0]])  # captured: read at every call
    signature = [tf.TensorSpec([None], tf.float64), [tf.TensorSpec([None, 2], tf.float32)] * 2]

    @tf.function(input_signature=signature)
    def f(c, xs):
        y = tf.matmul(xs[0] + xs[1], weight)
        return {"sum": tf.reduce_sum(c)}, (y, [tf.shape(y)[0]])

    call = _compat.flat_call(f)
    args = (tf.constant([1.0, 2.5], tf.float64), [tf.ones([3, 2]), tf.fill([3, 2], 2.0)])
    for _ in range(2):
        ours, theirs = call(*args), f(*args)
        assert ours[0]["sum"].numpy() == theirs[0]["sum"].numpy() == 3.5
        np.testing.assert_array_equal(ours[1][0].numpy(), theirs[1][0].numpy())
        assert int(ours[1][1][0]) == 3
        weight.assign_add(tf.ones([2, 2]))  # the flat call reads the variable's new value
    # NumPy arguments, or a dtype other than the spec's, take the plain call (which converts
    # or refuses as TensorFlow does)
    converted = call(np.array([1.0, 2.5]), [np.ones([3, 2], np.float32)] * 2)
    assert converted[0]["sum"].numpy() == 3.5
    with pytest.raises((TypeError, ValueError)):
        call(tf.constant([1.0], tf.float32), args[1])
    assert f.experimental_get_tracing_count() == 1  # one trace for all the calls

    class NoFlatCall:
        input_signature = signature

        @staticmethod
        def get_concrete_function():
            return object()

    with pytest.raises(RuntimeError, match="has no `ConcreteFunction._call_flat`"):
        _compat.flat_call(NoFlatCall())(*args)
