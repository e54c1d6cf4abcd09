"""The Objective on every Keras backend, against references that share none of its code path.

Runs in the backend's own process (``LANDSCAPE_TEST_BACKEND=jax pytest tests/backends``; the
TensorFlow suite runs it too). References: softmax regression's loss, gradient and Hessian
written in NumPy float64 by hand (H = Σᵢ sᵢ (diag pᵢ − pᵢpᵢᵀ) ⊗ xᵢxᵢᵀ / n), Keras's own
``model.evaluate``, and central differences of the toolkit's gradient (itself checked against
NumPy) for a nonlinear model's Hessian-vector product.
"""

from __future__ import annotations

import collections

import keras
import numpy as np
import pytest

import landscape

BACKEND = keras.backend.backend()
# float32 arithmetic per batch on JAX/PyTorch (and in the model on TensorFlow)
RTOL = 2e-5


def softmax_regression(seed=0, d=5, k=3):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(k)])
    rng = np.random.default_rng(seed)
    kernel, bias = model.trainable_variables
    kernel.assign(rng.normal(0, 0.5, (d, k)).astype("float32"))
    bias.assign(rng.normal(0, 0.5, (k,)).astype("float32"))
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    return model


def data(n=37, d=5, k=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.integers(0, k, n)
    sw = rng.uniform(0.5, 2.0, n).astype("float32")
    return x, y, sw


def numpy_reference(model, x, y, sw):
    """Loss, gradient (kernel, bias) and dense Hessian of the weighted mean cross-entropy."""
    W, b = (np.asarray(keras.ops.convert_to_numpy(v.value), np.float64) for v in model.weights)
    x = x.astype(np.float64)
    z = x @ W + b
    z -= z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    n, k = p.shape
    s = sw.astype(np.float64) / len(sw)  # Keras's "sum_over_batch_size": Σ sᵢℓᵢ / n
    loss = -np.sum(s * np.log(p[np.arange(n), y]))
    r = p.copy()
    r[np.arange(n), y] -= 1.0
    xb = np.concatenate([x, np.ones((n, 1))], 1)  # bias as a last input feature
    g = (xb * s[:, None]).T @ r  # (d+1, k)
    H = np.zeros(((x.shape[1] + 1) * k,) * 2)
    for i in range(n):
        A = np.diag(p[i]) - np.outer(p[i], p[i])
        H += s[i] * np.kron(np.outer(xb[i], xb[i]), A)
    return loss, g[:-1], g[-1], H


def flat(kernel, bias):
    """Kernel (d, k) and bias (k,) as one vector ordered as ``numpy_reference``'s Hessian."""
    return np.concatenate([np.asarray(kernel).reshape(-1), np.asarray(bias).reshape(-1)])


@pytest.fixture(scope="module")
def problem():
    model = softmax_regression()
    x, y, sw = data()
    return model, (x, y, sw), numpy_reference(model, x, y, sw)


def test_the_objective_is_this_backends_engine(problem):
    model, batch, _ = problem
    objective = landscape.Objective(model, batch, batch_size=8)
    assert objective.backend == BACKEND
    engine = "TFObjective" if BACKEND == "tensorflow" else "PortableObjective"
    assert type(objective).__name__ == engine


@pytest.mark.parametrize("batch_size", [8, 37])
def test_loss_and_gradient_equal_numpy_by_hand(problem, batch_size):
    model, batch, (loss, g_kernel, g_bias, _) = problem
    values, grads = landscape.Objective(model, batch, batch_size=batch_size).value_and_gradient()
    np.testing.assert_allclose(values["loss"], loss, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(grads[0]), g_kernel, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grads[1]), g_bias, rtol=1e-4, atol=1e-6)


def test_evaluate_equals_model_evaluate_in_one_batch(problem):
    model, (x, y, sw), _ = problem
    ours = landscape.Objective(model, (x, y, sw), batch_size=8).evaluate()
    keras_values = model.evaluate(x, y, sample_weight=sw, batch_size=len(x), verbose=0,
                                  return_dict=True)  # fmt: skip
    np.testing.assert_allclose(ours["loss"], keras_values["loss"], rtol=1e-5)
    np.testing.assert_allclose(ours["acc"], keras_values["accuracy"], rtol=1e-6)


@pytest.mark.parametrize("mode", ["backward_over_backward", "forward_over_backward"])
def test_hessian_and_ggn_products_equal_the_dense_numpy_hessian(problem, mode):
    model, batch, (_, _, _, H) = problem
    objective = landscape.Objective(model, batch, batch_size=8)
    rng = np.random.default_rng(2)
    for _ in range(2):
        v = [rng.normal(size=tuple(w.shape)).astype("float32") for w in model.trainable_variables]
        expected = H @ flat(v[0], v[1])
        hv = objective.hessian_vector_product(v, mode=mode)
        np.testing.assert_allclose(flat(*hv), expected, rtol=1e-4, atol=1e-5)
        gv = objective.gauss_newton_vector_product(v)  # a linear model: G = H
        np.testing.assert_allclose(flat(*gv), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["backward_over_backward", "forward_over_backward"])
def test_regularization_without_regularizers_adds_nothing(problem, mode):
    # regression (found by the conformance harness on PyTorch): with no regularizer the penalty
    # is the constant 0, whose gradient autograd refused ("element 0 of tensors does not
    # require grad"), so gradients and products crashed under regularization=True
    model, batch, (loss, g_kernel, g_bias, H) = problem
    objective = landscape.Objective(model, batch, batch_size=8, regularization=True)
    values, grads = objective.value_and_gradient()
    np.testing.assert_allclose(values["loss"], loss, rtol=RTOL)
    np.testing.assert_allclose(flat(*grads), flat(g_kernel, g_bias), rtol=1e-4, atol=1e-6)
    v = [np.random.default_rng(3).normal(size=tuple(w.shape)) for w in model.trainable_variables]
    expected = H @ flat(v[0], v[1])
    hv = objective.hessian_vector_product(v, mode=mode)
    np.testing.assert_allclose(flat(*hv), expected, rtol=1e-4, atol=1e-5)
    gv = objective.gauss_newton_vector_product(v)  # a linear model: G = H
    np.testing.assert_allclose(flat(*gv), expected, rtol=1e-4, atol=1e-5)


def test_an_undefined_second_derivative_is_refused_naming_this_backend():
    # regression (conformance harness, PyTorch): the refusal named TensorFlow on every backend
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, kernel_initializer="zeros")])
    model.compile(loss=lambda y, p: keras.ops.sqrt(keras.ops.sum(keras.ops.square(p - y), -1)))
    x, y = np.ones((4, 2), "float32"), np.zeros((4, 2), "float32")
    objective = landscape.Objective(model, (x, y))
    v = [np.ones(tuple(w.shape)) for w in model.trainable_variables]
    with pytest.raises(ValueError, match=f"not finite.*Keras's {BACKEND} backend") as error:
        objective.hessian_vector_product(v)
    assert "\n" not in str(error.value)


def test_top_eigenvalues_and_trace_equal_numpy(problem):
    model, batch, (_, _, _, H) = problem
    objective = landscape.Objective(model, batch, batch_size=16)
    exact = np.sort(np.linalg.eigvalsh(H))[::-1]
    top = landscape.hessian_eigenvalues(objective, k=2, verbose=0)
    np.testing.assert_allclose(top.values, exact[:2], rtol=1e-4)
    trace = landscape.hessian_trace(objective, method="exact", verbose=0)
    np.testing.assert_allclose(trace.estimate, np.trace(H), rtol=1e-4)


def mlp():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(6, activation="tanh")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.LayerNormalization()(h)
    outputs = keras.layers.Dense(3, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_hvp_of_a_nonlinear_model_equals_central_differences_of_its_gradient():
    model = mlp()
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(24, 4)).astype("float32"), rng.integers(0, 3, 24)
    objective = landscape.Objective(model, (x, y), batch_size=10)
    v = [rng.normal(size=tuple(w.shape)).astype("float32") for w in model.trainable_variables]
    h = 1e-3  # truncation O(h²) against float32 noise O(ε/h): 2e-4 of the product here
    offsets = objective.flat.offsets(objective.flat.concat(v))
    plus = objective.flat.concat(objective.value_and_gradient([h * o for o in offsets])[1])
    minus = objective.flat.concat(objective.value_and_gradient([-h * o for o in offsets])[1])
    fd = (plus - minus) / (2 * h)
    hv = objective.flat.concat(objective.hessian_vector_product(v))
    np.testing.assert_allclose(hv, fd, rtol=2e-2, atol=2e-3 * np.abs(fd).max())


def attention_model():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(11, 8)(inputs)
    h = keras.layers.LayerNormalization()(h + keras.layers.MultiHeadAttention(2, 4)(h, h))
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(h))
    model = keras.Model(inputs, outputs)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_hvp_through_multi_head_attention_equals_central_differences():
    """Both modes against one central difference (one model and one compiled gradient)."""
    # PyTorch's CPU attention kernel has no second derivative: the products must not use it
    model = attention_model()
    rng = np.random.default_rng(6)
    x, y = rng.integers(0, 11, (20, 6)).astype("int32"), rng.integers(0, 3, 20)
    objective = landscape.Objective(model, (x, y), batch_size=8)
    v = [rng.normal(size=tuple(w.shape)).astype("float32") for w in model.trainable_variables]
    h = 1e-3
    offsets = objective.flat.offsets(objective.flat.concat(v))
    plus = objective.flat.concat(objective.value_and_gradient([h * o for o in offsets])[1])
    minus = objective.flat.concat(objective.value_and_gradient([-h * o for o in offsets])[1])
    fd = (plus - minus) / (2 * h)
    for mode in ("backward_over_backward", "forward_over_backward"):
        hv = objective.flat.concat(objective.hessian_vector_product(v, mode=mode))
        np.testing.assert_allclose(hv, fd, rtol=2e-2, atol=2e-3 * np.abs(fd).max(), err_msg=mode)


def test_surface_points_equal_evaluate_at_assigned_weights_and_leave_weights_alone(tmp_path):
    model = mlp()
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(20, 4)).astype("float32"), rng.integers(0, 3, 20)
    before = [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.variables]
    objective = landscape.Objective(model, (x, y), batch_size=8)
    d = landscape.random_direction(model, seed=0)
    surface = landscape.compute_surface(objective, [d], "-1:1:3", path=tmp_path / "s.h5",
                                        verbose=0)  # fmt: skip
    for v, b in zip(model.variables, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v.value), b)
    aligned = d.aligned(objective.variables)
    for alpha, value in zip(surface.x, surface.values["train_loss"]):
        for v, b, a in zip(objective.variables, before, aligned):
            v.assign(b + alpha * a)
        expected = model.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)["loss"]
        np.testing.assert_allclose(value, expected, rtol=1e-5)
    for v, b in zip(objective.variables, before):
        v.assign(b)
    assert landscape.Surface.load(tmp_path / "s.h5").metadata["backend"] == BACKEND


@pytest.mark.skipif(BACKEND == "tensorflow", reason="float64 runs on TensorFlow")
def test_float64_is_refused_off_tensorflow_in_one_sentence(problem):
    model, batch, _ = problem
    with pytest.raises(ValueError, match="precision.*float64.*32 bits"):
        landscape.Objective(model, batch, precision="float64")


def _saved_problem(folder, seed):
    """(recipe of a saved tiny model and data file, one direction, the in-process surface)."""
    model = mlp()
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(12, 4)).astype("float32"), rng.integers(0, 3, 12)
    model.save(folder / "m.keras")
    np.savez(folder / "d.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])
    recipe = landscape.ObjectiveRecipe(model=str(folder / "m.keras"), data=str(folder / "d.npz"))
    objective = recipe()
    directions = [landscape.random_direction(objective.model, seed=0)]
    return recipe, directions, landscape.compute_surface(objective, directions, "-1:1:3", verbose=0)


def test_a_process_pool_computes_the_same_surface_on_this_backend(tmp_path):
    """Workers are spawned on the caller's backend (not KERAS_BACKEND's default)."""
    recipe, directions, here = _saved_problem(tmp_path, 6)
    with landscape.process_pool(1) as pool:
        there = landscape.compute_surface(recipe=recipe, directions=directions, x="-1:1:3",
                                          executor=pool, verbose=0)  # fmt: skip
    for name, values in here.values.items():
        np.testing.assert_array_equal(there.values[name], values)


@pytest.mark.slow
def test_a_dask_local_cluster_computes_the_same_surface_on_this_backend(tmp_path, monkeypatch):
    """Dask's workers are processes of this machine's environment: they take the caller's
    backend from the environment the executor sets up, and compute the in-process surface."""
    pytest.importorskip("distributed")
    import os

    recipe, directions, here = _saved_problem(tmp_path, 7)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    with landscape.dask_executor(workers=2) as executor:
        there = landscape.compute_surface(recipe=recipe, directions=directions, x="-1:1:3",
                                          executor=executor, verbose=0)  # fmt: skip
        assert executor.submit(keras.backend.backend).result() == BACKEND  # in a worker
    for name, values in here.values.items():
        np.testing.assert_array_equal(there.values[name], values)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.func's forward mode lacks this rule")
def test_a_product_the_backend_cannot_differentiate_is_refused_in_one_sentence():
    """torch.func's forward-over-reverse has no rule inside Keras's int8 Dense."""
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(2)])  # fmt: skip
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.quantize("int8")
    x = np.random.default_rng(0).normal(size=(10, 3)).astype("float32")
    objective = landscape.Objective(model, (x, np.arange(10) % 2), batch_size=4)
    v = [np.ones(tuple(t.shape), "float32") for t in objective.trainable_variables]
    with pytest.raises(ValueError, match=r"^The torch backend's autodiff cannot") as info:
        objective.hessian_vector_product(v, mode="forward_over_backward")
    assert ". " not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="the TensorFlow engine's own test covers it")
def test_data_that_never_ends_or_reshuffles_is_refused_in_one_sentence():
    model = softmax_regression()
    x, y, _ = data()

    class Endless(keras.utils.PyDataset):
        @property
        def num_batches(self):
            return None

        def __getitem__(self, i):
            return x[:8], y[:8]

    with pytest.raises(ValueError, match=r"PyDataset with no length .* pass `steps=`"):
        landscape.Objective(model, Endless())
    assert np.isfinite(landscape.Objective(model, Endless(), steps=2).evaluate()["loss"])
    if BACKEND == "torch":
        import torch

        rows = torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y))
        shuffled = torch.utils.data.DataLoader(rows, batch_size=8, shuffle=True)
        with pytest.raises(ValueError, match=r"DataLoader that shuffles .* shuffle=False"):
            landscape.Objective(model, shuffled)

        class Stream(torch.utils.data.IterableDataset):
            def __iter__(self):
                while True:
                    yield torch.tensor(x[0]), torch.tensor(y[0])

        with pytest.raises(ValueError, match=r"DataLoader with no length .* pass `steps=`"):
            landscape.Objective(model, torch.utils.data.DataLoader(Stream(), batch_size=4))


def test_batches_run_one_compiled_function_and_count_passes():
    """The Objectives of ``batches`` (m-sharpness) give each batch's own loss and gradient
    (NumPy by hand), run one compiled per-batch function for every batch, and count their
    passes in the parent's ``passes``."""
    model = softmax_regression()
    x, y, sw = data()
    obj = landscape.Objective(model, (x, y, sw), batch_size=16)
    subs = list(obj.batches(10))
    assert len(subs) == 4
    for i, sub in enumerate(subs):
        rows = slice(10 * i, 10 * i + 10)
        loss, want_k, want_b, _ = numpy_reference(model, x[rows], y[rows], sw[rows])
        values, (gk, gb) = sub.value_and_gradient()
        assert values["loss"] == pytest.approx(loss, rel=RTOL)
        got = flat(keras.ops.convert_to_numpy(gk), keras.ops.convert_to_numpy(gb))
        np.testing.assert_allclose(got, flat(want_k, want_b), rtol=1e-4, atol=1e-6)
    assert obj.passes["gradient"] == 4
    assert obj.passes == sum((sub.passes for sub in subs), collections.Counter())
    functions = dict(obj._batch_fns)  # compiled on the first batch, shared by all
    assert functions and all(sub._batch_fns is obj._batch_fns for sub in subs)
    for sub in obj.batches(10):
        sub.value_and_gradient()
    assert obj._batch_fns == functions  # nothing compiled again


def test_an_offsets_list_edited_in_place_changes_no_later_one_against_model_evaluate():
    """``flat.offsets`` gives every call its own arrays, BatchNorm statistics' zeros included:
    a caller editing one list in place (PyTorch edits tensors in place, so a cached zero
    tensor would move every later list) changes nothing after, checked against
    ``model.evaluate`` at w0 + δ assigned in NumPy."""
    keras.utils.set_random_seed(6)
    layers = [keras.layers.Dense(8), keras.layers.BatchNormalization(), keras.layers.Dense(3)]
    model = keras.Sequential([keras.Input((4,)), *layers])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(20, 4)).astype("float32"), rng.integers(0, 3, 20)
    objective = landscape.Objective(model, (x, y), batch_size=20)
    delta = 0.1 * rng.standard_normal(objective.flat.n)
    paths = [v.path for v in objective.variables]
    variance = next(i for i, p in enumerate(paths) if p.endswith("moving_variance"))
    for offsets in objective.flat.offsets(delta), objective.flat.offsets(delta):
        offsets[variance] += 0.5  # edited in place
    loss = objective.evaluate(objective.flat.offsets(delta))["loss"]
    w0 = model.get_weights()
    trainable = iter(objective.flat.split(delta))
    ids = {id(v) for v in model.trainable_variables}
    model.set_weights([
        (w + next(trainable)).astype("float32") if id(v) in ids else w
        for w, v in zip(w0, model.weights)
    ])  # fmt: skip
    np.testing.assert_allclose(loss, model.evaluate(x, y, batch_size=20, verbose=0), rtol=RTOL)
