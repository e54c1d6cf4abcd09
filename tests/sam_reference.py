"""An independent SAM reference: a tiny MLP written in NumPy-style TF ops, not through Keras.

``reference_step`` computes one SAM (or ASAM) SGD step by the paper's formulas, from a loss that
never touches the ``sam`` package or a Keras layer, so tests can compare the library against it.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# Kernel regularizer of the first layer, counted in both passes. Keras holds the factor as float32.
L2 = float(np.float32(1e-3))


def make_mlp(seed=0, *, dtype="float64", model_cls=keras.Model, hidden=5, classes=3, features=4):
    """Dense(hidden, relu, L2) -> Dense(classes) logits, with weights from ``seed``.

    Sets floatx and the dtype policy to ``dtype`` too, so that losses (also those of a reloaded
    model) are computed in it (the test fixture
    puts float32 back).
    """
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    inputs = keras.Input((features,), dtype=dtype)
    h = keras.layers.Dense(
        hidden,
        activation="relu",
        kernel_regularizer=keras.regularizers.L2(L2),
        name="hidden",
        dtype=dtype,
    )(inputs)
    outputs = keras.layers.Dense(classes, name="logits", dtype=dtype)(h)
    model = model_cls(inputs, outputs)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.7, w.shape).astype(dtype) for w in model.get_weights()])
    return model


def compile_mlp(model, optimizer):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=model.dtype),
        metrics=["accuracy"],
    )
    return model


def make_data(n=12, seed=1, features=4, classes=3, dtype="float64"):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(dtype)
    y = rng.integers(0, classes, size=n).astype("int64")
    sw = rng.uniform(0.5, 2.0, size=n).astype(dtype)
    return x, y, sw


def loss_fn(weights, x, y, sw=None):
    """Mean sample-weighted cross-entropy of the MLP (Keras's sum_over_batch_size) + L2 term."""
    w1, b1, w2, b2 = weights
    logits = tf.nn.relu(x @ w1 + b1) @ w2 + b2
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    if sw is not None:
        ce = ce * sw
    return tf.reduce_sum(ce) / tf.cast(tf.shape(x)[0], ce.dtype) + L2 * tf.reduce_sum(w1**2)


def grad(weights, x, y, sw=None):
    weights = [tf.constant(w) for w in weights]
    with tf.GradientTape() as tape:
        tape.watch(weights)
        loss = loss_fn(weights, x, y, sw)
    return [g.numpy() for g in tape.gradient(loss, weights)]


def epsilon(weights, g, rho, adaptive=False, eta=0.01):
    """ε(w) = ρ g/‖g‖ (SAM) or ρ T²g/‖Tg‖ with T = |w| + η for kernels (ASAM)."""
    t = [np.abs(w) + eta if (adaptive and w.ndim >= 2) else np.ones_like(w) for w in weights]
    norm = np.sqrt(sum(np.sum((ti * gi) ** 2) for ti, gi in zip(t, g)))
    return [rho * ti**2 * gi / norm for ti, gi in zip(t, g)]


def sam_gradient(weights, x, y, sw=None, *, rho=0.05, adaptive=False):
    g = grad(weights, x, y, sw)
    e = epsilon(weights, g, rho, adaptive)
    return grad([w + ei for w, ei in zip(weights, e)], x, y, sw)


def reference_step(weights, x, y, sw=None, *, lr, rho=0.05, adaptive=False):
    """w − lr · ∇L(w + ε(w)) for plain SGD."""
    g2 = sam_gradient(weights, x, y, sw, rho=rho, adaptive=adaptive)
    return [w - lr * gi for w, gi in zip(weights, g2)]
