"""Data forms and Objective features on every Keras backend, against references of their own.

Runs in the backend's own process (see ``test_objective_backends.py``). References: softmax
regression's loss, gradient and Hessian in NumPy float64 by hand at any weights; Keras's own
``model.evaluate`` in one batch (masks, several outputs with ``loss_weights``, ``add_loss``,
regularization penalties), and central differences of ``model.evaluate`` at assigned weights
for gradients; the closed form 2λv of an L2 penalty's Hessian; NumPy's SVD for PCA.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import landscape

BACKEND = keras.backend.backend()
RTOL = 2e-5  # float32 arithmetic per batch, float64 across batches
N, D, K, BATCH = 32, 5, 3, 8  # batches of one size: one compiled shape on JAX


def _numpy(t) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t), np.float64)


def softmax_regression(seed=0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K)])
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(rng.normal(0, 0.5, tuple(v.shape)).astype("float32"))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def arrays(n=N, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype("float32")
    return x, rng.integers(0, K, n), rng.uniform(0.5, 2.0, n).astype("float32")


def reference(W, b, x, y, sw):
    """Loss, flat gradient (kernel, bias) and dense Hessian of Σᵢ sᵢ ℓᵢ / n, NumPy float64."""
    x, n = x.astype(np.float64), len(x)
    z = x @ W + b
    z -= z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    s = sw.astype(np.float64) / n
    r = p.copy()
    r[np.arange(n), y] -= 1.0
    xb = np.concatenate([x, np.ones((n, 1))], 1)
    g = (xb * s[:, None]).T @ r
    H = sum(s[i] * np.kron(np.outer(xb[i], xb[i]), np.diag(p[i]) - np.outer(p[i], p[i]))
            for i in range(n))  # fmt: skip
    loss = -np.sum(s * np.log(p[np.arange(n), y]))
    return loss, np.concatenate([g[:-1].reshape(-1), g[-1]]), H


def weights(model):
    return [_numpy(v.value) for v in model.trainable_variables]


@pytest.fixture(scope="module")
def problem():
    model = softmax_regression()
    x, y, sw = arrays()
    return model, (x, y, sw), reference(*weights(model), x, y, sw)


def flat(arrays_) -> np.ndarray:
    return np.concatenate([_numpy(a).reshape(-1) for a in arrays_])


def assert_matches_numpy(objective, ref, rtol=RTOL):
    loss, grad, _ = ref
    values, grads = objective.value_and_gradient()
    np.testing.assert_allclose(objective.evaluate()["loss"], loss, rtol=rtol)
    np.testing.assert_allclose(values["loss"], loss, rtol=rtol)
    np.testing.assert_allclose(flat(grads), grad, rtol=1e-4, atol=1e-6)


# -- data forms ----------------------------------------------------------------------------------


class Batches(keras.utils.PyDataset):
    def __init__(self, x, y, sw, batch_size=BATCH):
        super().__init__()
        self.parts, self.batch_size = (x, y, sw), batch_size

    def __len__(self):
        return -(-len(self.parts[0]) // self.batch_size)

    def __getitem__(self, i):
        return tuple(a[i * self.batch_size : (i + 1) * self.batch_size] for a in self.parts)


def _form(name, x, y, sw):
    if name == "pydataset":
        return Batches(x, y, sw)
    if name == "tf_data":
        tf = pytest.importorskip("tensorflow")
        return tf.data.Dataset.from_tensor_slices((x, y, sw)).batch(BATCH)
    if BACKEND != "torch":
        pytest.skip("a PyTorch DataLoader is read on the PyTorch backend")
    import torch

    tensors = torch.utils.data.TensorDataset(*(torch.as_tensor(a) for a in (x, y, sw)))
    return torch.utils.data.DataLoader(tensors, batch_size=BATCH, shuffle=False)


@pytest.mark.parametrize("form", ["pydataset", "tf_data", "torch_dataloader"])
def test_datasets_equal_numpy_by_hand(problem, form):
    model, (x, y, sw), ref = problem
    objective = landscape.Objective(model, _form(form, x, y, sw), batch_size=BATCH)
    assert_matches_numpy(objective, ref)


def test_steps_takes_the_first_batches(problem):
    model, (x, y, sw), _ = problem
    objective = landscape.Objective(model, Batches(x, y, sw), steps=2)
    m = 2 * BATCH
    assert_matches_numpy(objective, reference(*weights(model), x[:m], y[:m], sw[:m]))


def test_sample_weights_as_arrays_equal_numpy_by_hand(problem):
    model, data, ref = problem
    assert_matches_numpy(landscape.Objective(model, data, batch_size=BATCH), ref)


# -- models against Keras's own evaluate -----------------------------------------------------


def _evaluate(model, x, y, sw=None) -> float:
    n = len(keras.tree.flatten(x)[0])
    return model.evaluate(x, y, sample_weight=sw, batch_size=n, verbose=0, return_dict=True)["loss"]


def assert_matches_keras(objective, model, x, y, sw=None, seed=0):
    """The loss equals model.evaluate in one batch; g·v equals central differences of
    model.evaluate along a random v (float32 noise O(ε/h) ≈ 1e-4 of the slope at h = 1e-2)."""
    np.testing.assert_allclose(objective.evaluate()["loss"], _evaluate(model, x, y, sw), rtol=1e-5)
    _, grads = objective.value_and_gradient()
    rng = np.random.default_rng(seed)
    v = [rng.normal(size=tuple(w.shape)) for w in objective.trainable_variables]
    w0 = [_numpy(w.value) for w in objective.trainable_variables]
    h, values = 1e-2, []
    for sign in (1, -1):
        for w, a, d in zip(objective.trainable_variables, w0, v):
            w.assign((a + sign * h * d).astype("float32"))
        values.append(_evaluate(model, x, y, sw))
    for w, a in zip(objective.trainable_variables, w0):
        w.assign(a.astype("float32"))
    slope = (values[0] - values[1]) / (2 * h)
    np.testing.assert_allclose(flat(grads) @ flat(v), slope, rtol=2e-3, atol=1e-4)


def test_several_outputs_with_loss_weights_equal_keras():
    keras.utils.set_random_seed(6)
    inputs = keras.Input((D,))
    h = keras.layers.Dense(4, activation="tanh")(inputs)
    out_a = keras.layers.Dense(K, name="a")(h)
    out_b = keras.layers.Dense(1, name="b")(h)
    model = keras.Model(inputs, {"a": out_a, "b": out_b})
    model.compile(
        loss={"a": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "b": "mse"},
        loss_weights={"a": 0.3, "b": 2.0},
    )
    x, y, sw = arrays(seed=7)
    targets = {"a": y, "b": x[:, :1] ** 2}
    objective = landscape.Objective(model, (x, targets, sw), batch_size=BATCH)
    assert_matches_keras(objective, model, x, targets, sw)


@pytest.mark.parametrize("head", ["pooled", "per_token"])
def test_masks_equal_keras(head):
    """Embedding(mask_zero=True): the mask reaches GlobalAveragePooling1D (pooled), or the
    per-token output, where the loss averages over the unmasked tokens only (per_token)."""
    keras.utils.set_random_seed(8)
    inputs = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(9, 4, mask_zero=True)(inputs)
    if head == "pooled":
        h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, keras.layers.Dense(K)(h))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(9)
    x = rng.integers(1, 9, (N, 6)).astype("int32")
    x[np.arange(N), rng.integers(1, 6, N)] = 0  # padding from a random position on
    x = np.where(np.cumsum(x == 0, 1) > 0, 0, x)
    y = rng.integers(0, K, (N,) if head == "pooled" else (N, 6))
    objective = landscape.Objective(model, (x, y), batch_size=BATCH)
    assert_matches_keras(objective, model, x, y)


class Penalty(keras.layers.Layer):
    """Adds 0.1·mean(h²) with ``add_loss`` (a mean over the batch: exact over batches)."""

    def call(self, h):
        self.add_loss(0.1 * keras.ops.mean(keras.ops.square(h)))
        return h


def test_add_loss_equals_keras():
    keras.utils.set_random_seed(10)
    inputs = keras.Input((D,))
    h = Penalty()(keras.layers.Dense(4, activation="tanh")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(K)(h))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y, _ = arrays(seed=11)
    objective = landscape.Objective(model, (x, y), batch_size=BATCH)
    assert (
        objective.evaluate()["loss"]
        > landscape.Objective(model, (x, y), batch_size=BATCH, model_losses=False).evaluate()[
            "loss"
        ]
    )
    assert_matches_keras(objective, model, x, y)


def test_regularization_equals_keras_and_adds_two_lambda_to_the_hessian(problem):
    lam = 0.1
    keras.utils.set_random_seed(12)
    model = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(K, kernel_regularizer=keras.regularizers.L2(lam))]
    )
    model.set_weights([_numpy(v.value) for v in problem[0].weights])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y, sw = problem[1]
    with_penalty = landscape.Objective(model, (x, y, sw), batch_size=BATCH, regularization=True)
    assert_matches_keras(with_penalty, model, x, y, sw)
    plain = landscape.Objective(model, (x, y, sw), batch_size=BATCH)
    v = [np.random.default_rng(13).normal(size=tuple(w.shape)) for w in model.trainable_variables]
    difference = flat(with_penalty.hessian_vector_product(v)) - flat(
        plain.hessian_vector_product(v)
    )
    np.testing.assert_allclose(difference, flat([2 * lam * v[0], 0 * v[1]]), atol=1e-5)


# -- analyses -------------------------------------------------------------------------------------


def test_layer_curvature_blocks_equal_numpy(problem):
    model, data, (_, _, H) = problem
    objective = landscape.Objective(model, data, batch_size=BATCH)
    kernel, bias = (v.path for v in model.trainable_variables)
    result = landscape.layer_curvature(
        objective, {"kernel": [kernel], "bias": [bias]}, tol=1e-6, trace=True
    )
    n = D * K
    for i, block in enumerate([H[:n, :n], H[n:, n:]]):
        np.testing.assert_allclose(result.lambda_max[i], np.linalg.eigvalsh(block)[-1], rtol=1e-4)
        np.testing.assert_allclose(result.trace[i], np.trace(block), rtol=1e-4)


def test_sharpness_report_against_numpy(problem):
    """Loss and λ₁ by hand; the convex loss gives worst_l2 ∈ [ρ‖g‖, ρ‖g‖ + ρ²λ₁]: the ascent
    along g alone reaches ρ‖g‖, and the curvature on the ball (≈ λ₁ at w0) adds at most ½ρ²·2λ₁."""
    model, data, (loss, grad, H) = problem
    objective = landscape.Objective(model, data, batch_size=BATCH)
    rho = landscape.sharpness.REPORT_RHO["worst_l2"]
    report = landscape.sharpness_report(objective, k=1, steps=5, samples=2, trace_samples=4,
                                        trace_tol=0.5, epsilon=1e-4)  # fmt: skip
    top = np.linalg.eigvalsh(H)[-1]
    np.testing.assert_allclose(report["loss"], loss, rtol=RTOL)
    np.testing.assert_allclose(report["hessian_eigenvalue_1"], top, rtol=1e-4)
    ascent = rho * np.linalg.norm(grad)
    assert ascent * (1 - 1e-3) <= report["worst_l2"] <= ascent + rho**2 * top
    values = [v for v in report.values() if isinstance(v, float)]
    assert np.all(np.isfinite(values)) and report["epsilon_sharpness"] >= 0


def test_interpolation_and_three_model_plane_reach_the_other_models_loss():
    x, y, _ = arrays(seed=14)
    models = [softmax_regression(seed) for seed in (0, 1, 2)]
    objective = landscape.Objective(models[0], (x, y), batch_size=BATCH)
    d = landscape.interpolation_direction(models[0], models[1])
    np.testing.assert_allclose(
        objective.evaluate_at([1.0], [d])["loss"], _evaluate(models[1], x, y), rtol=1e-5
    )
    plane = landscape.plane_through(*models)
    for (a, b), model in zip(plane.coordinates, models):
        value = objective.evaluate_at([a, b], list(plane.directions))["loss"]
        np.testing.assert_allclose(value, _evaluate(model, x, y), rtol=1e-5)


def test_eigenvector_directions_are_the_numpy_hessians_top_eigenvectors(problem):
    model, data, (_, _, H) = problem
    objective = landscape.Objective(model, data, batch_size=BATCH)
    d1, d2 = landscape.eigenvector_directions(objective, "top2", tol=1e-6)
    values, vectors = np.linalg.eigh(H)
    paths = objective.trainable_variables.paths
    for d, i in ((d1, -1), (d2, -2)):
        u = np.concatenate([d.arrays[p].reshape(-1) for p in paths]).astype(np.float64)
        assert abs(abs(u @ vectors[:, i]) - 1) < 1e-4
        np.testing.assert_allclose(u @ H @ u, values[i], rtol=1e-4)


def test_pca_directions_equal_numpy_svd():
    final = softmax_regression(0)
    rng = np.random.default_rng(15)
    w = weights(final)
    checkpoints = [[a + rng.normal(0, s, a.shape) for a in w] for s in (0.3, 0.2, 0.1, 0.05)]
    result = landscape.pca_directions(checkpoints, final, ignore=None)
    diffs = np.stack([flat(c) - flat(w) for c in checkpoints])
    diffs -= diffs.mean(0)
    _, s, vt = np.linalg.svd(diffs, full_matrices=False)
    np.testing.assert_allclose(result.explained_variance_ratio, (s**2 / (s**2).sum())[:2],
                               rtol=1e-5)  # fmt: skip
    paths = landscape.directions.float_variables(final, "trainable").paths
    for d, u in zip(result.directions, vt[:2]):
        got = np.concatenate([d.arrays[p].reshape(-1) for p in paths]).astype(np.float64)
        assert abs(abs(got @ u) - 1) < 1e-5


def test_attention_second_derivatives_agree_across_modes_and_with_differences():
    """MultiHeadAttention (PyTorch's scaled_dot_product_attention): Hv by reverse-over-reverse
    and forward-over-reverse equal central differences of the gradient; the Gauss-Newton
    product (a JVP) is symmetric and positive semi-definite for a cross-entropy."""
    keras.utils.set_random_seed(16)
    inputs = keras.Input((4, 3))
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=2)(inputs, inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, keras.layers.Dense(K, activation="softmax")(h))
    model.compile(loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(17)
    x, y = rng.normal(size=(16, 4, 3)).astype("float32"), rng.integers(0, K, 16)
    objective = landscape.Objective(model, (x, y), batch_size=16)
    u, v = ([rng.normal(size=tuple(w.shape)) for w in model.trainable_variables] for _ in "uv")
    reverse = flat(objective.hessian_vector_product(v))
    forward = flat(objective.hessian_vector_product(v, mode="forward_over_backward"))
    np.testing.assert_allclose(forward, reverse, rtol=1e-4, atol=1e-5 * np.abs(reverse).max())
    h = 1e-3  # truncation O(h²) against float32 noise O(ε/h)
    offsets = objective.flat.offsets(flat(v))
    grads = [flat(objective.value_and_gradient([s * h * o for o in offsets])[1]) for s in (1, -1)]
    fd = (grads[0] - grads[1]) / (2 * h)
    np.testing.assert_allclose(reverse, fd, rtol=2e-2, atol=2e-3 * np.abs(fd).max())
    gv, gu = (flat(objective.gauss_newton_vector_product(a)) for a in (v, u))
    np.testing.assert_allclose(flat(u) @ gv, flat(v) @ gu, rtol=1e-4)
    assert flat(v) @ gv > 0 and flat(u) @ gu > 0


@pytest.mark.skipif(BACKEND != "torch", reason="jit_compile=True means torch.compile on PyTorch")
def test_jit_compile_true_runs_grid_points_through_torch_compile(monkeypatch):
    """Keras's opt-in (``model.compile(jit_compile=True)``) makes the Objective's forward pass a
    ``torch.compile``d function; its loss at a grid point equals the NumPy reference, and the
    weights are left alone (the compiled pass reads them through the StatelessScope too)."""
    import torch

    compiled = []
    real = torch.compile

    def spy(fn, *args, **kwargs):
        compiled.append(fn.__name__)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    model = softmax_regression()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(loss=loss, jit_compile=True)
    x, y, sw = arrays()
    W, b = weights(model)
    obj = landscape.Objective(model, (x, y, sw), batch_size=BATCH)
    d = {v.path: np.full(tuple(v.shape), 0.1, "float32") for v in model.trainable_variables}
    value = obj.evaluate_at([0.5], [landscape.Direction(d)])["loss"]
    assert sorted(compiled) == ["_offset_values", "batch"]  # w0 + Σ cₖbₖ and the forward pass
    np.testing.assert_allclose(value, reference(W + 0.05, b + 0.05, x, y, sw)[0], rtol=RTOL)
    np.testing.assert_array_equal(weights(model)[0], W)
