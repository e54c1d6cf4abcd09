"""The backend seam on its own (``sam._backend``), against derivatives written by hand.

f(p) = Σᵢ aᵢ pᵢ³ / 3 + (Σᵢ pᵢ)² / 2 over two parameter tensors: ∇f = a ⊙ p² + s·1 with
s = Σᵢ pᵢ, H v = 2 a ⊙ p ⊙ v + (Σᵢ vᵢ)·1; and the map g(p) = p ⊙ p with J v = 2 p ⊙ v,
Jᵀ u = 2 p ⊙ u.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from sam._backend import adapter

ops = keras.ops
RNG = np.random.default_rng(0)
A = [RNG.uniform(0.5, 2.0, (2, 3)), RNG.uniform(0.5, 2.0, (4,))]
P = [RNG.normal(size=(2, 3)), RNG.normal(size=(4,))]
V = [RNG.normal(size=(2, 3)), RNG.normal(size=(4,))]


def tensors(arrays):
    return [ops.convert_to_tensor(a.astype("float32")) for a in arrays]


def f(params):
    cubic = sum(
        ops.sum(ops.convert_to_tensor(a.astype("float32")) * p**3) / 3 for a, p in zip(A, params)
    )
    total = sum(ops.sum(p) for p in params)
    return cubic + total**2 / 2, {"total": total}


def flat(arrays):
    return np.concatenate([np.asarray(keras.ops.convert_to_numpy(a)).reshape(-1) for a in arrays])


def by_hand_gradient():
    s = sum(p.sum() for p in P)
    return [a * p**2 + s for a, p in zip(A, P)]


def by_hand_hvp():
    return [2 * a * p * v + sum(x.sum() for x in V) for a, p, v in zip(A, P, V)]


def test_value_and_gradient():
    value, aux, grads = adapter().value_and_grad(f, tensors(P))
    s = sum(p.sum() for p in P)
    expected = sum((a * p**3).sum() / 3 for a, p in zip(A, P)) + s**2 / 2
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(value)), expected, rtol=1e-5)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(aux["total"])), s, rtol=1e-5)
    np.testing.assert_allclose(flat(grads), flat(by_hand_gradient()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["forward_over_backward", "backward_over_backward"])
def test_hessian_vector_product_in_both_modes(mode):
    aux, hv = adapter().hvp(f, tensors(P), tensors(V), mode)
    np.testing.assert_allclose(flat(hv), flat(by_hand_hvp()), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(aux["total"])), sum(p.sum() for p in P), rtol=1e-5
    )


def test_jacobian_vector_and_vector_jacobian_products():
    def g(params):
        return [p * p for p in params]

    out, jv = adapter().jvp(g, tensors(P), tensors(V))
    np.testing.assert_allclose(flat(out), flat([p * p for p in P]), rtol=1e-6)
    np.testing.assert_allclose(flat(jv), flat([2 * p * v for p, v in zip(P, V)]), rtol=1e-5)
    vjp = adapter().vjp(g, tensors(P), tensors(V))
    np.testing.assert_allclose(flat(vjp), flat([2 * p * v for p, v in zip(P, V)]), rtol=1e-5)


def test_the_compiled_function_computes_the_same():
    compiled = adapter().compile(lambda params: f(params)[0])
    value = float(keras.ops.convert_to_numpy(compiled(tensors(P))))
    np.testing.assert_allclose(
        value, float(keras.ops.convert_to_numpy(f(tensors(P))[0])), rtol=1e-6
    )


def test_the_adapter_is_this_backends_and_says_which_mode_is_faster():
    assert adapter().__name__ == f"sam._backend._{keras.backend.backend()}"
    assert adapter().HVP_MODE in ("forward_over_backward", "backward_over_backward")


def test_host_view_reads_a_tensor_and_its_gradient_without_changing_them():
    """``host_view`` (FlatView.concat's read of each product) gives the tensor's values."""
    back = adapter()
    params = tensors(P)
    _, _, grads = back.value_and_grad(f, params)
    for t, reference in zip([*params, *grads], [*P, *by_hand_gradient()]):
        view = np.asarray(back.host_view(t))
        np.testing.assert_allclose(view, reference, rtol=1e-5)
        np.testing.assert_array_equal(view, np.asarray(keras.ops.convert_to_numpy(t)))
