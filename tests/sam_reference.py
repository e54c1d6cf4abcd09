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


# -- a model with attention, normalization, an embedding and rank-2 biases ----------------------

VOCAB, SEQ, CLASSES = 11, 5, 3

# The variables the ASAM reference (SamsungLabs/ASAM asam.py) leaves at T = 1: the parameters
# whose PyTorch name has no "weight", i.e. every bias (MultiHeadAttention's (heads, key_dim)
# biases included) and the normalization β. Listed by hand for ``make_zoo``'s model.
ZOO_OFFSETS = frozenset(
    {
        "mha/query/bias",
        "mha/key/bias",
        "mha/value/bias",
        "mha/attention_output/bias",
        "ln/beta",
        "proj/bias",
        "bn/beta",
        "logits/bias",
    }
)
# SAM-ON's "normalization" selection on ``make_zoo``'s model, by hand.
ZOO_NORMALIZATION = frozenset({"ln/gamma", "ln/beta", "bn/gamma", "bn/beta"})


def make_zoo(seed=0, *, dtype="float64", model_cls=keras.Model):
    """Embedding → MultiHeadAttention → LayerNorm → Dense → BatchNorm → pooling → Dense logits."""
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    tokens = keras.Input((SEQ,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, 4, name="emb")(tokens)
    h = keras.layers.MultiHeadAttention(2, 3, name="mha")(h, h)
    h = keras.layers.LayerNormalization(name="ln")(h)
    h = keras.layers.Dense(4, activation="tanh", name="proj")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(CLASSES, name="logits")(h)
    model = model_cls(tokens, outputs)
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:  # every tensor away from 0 and 1, biases included
        v.assign(rng.normal(0, 0.5, v.shape).astype(dtype))
    return model


def zoo_data(n=8, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, size=(n, SEQ)).astype("int32")
    y = rng.integers(0, CLASSES, size=n).astype("int64")
    sw = rng.uniform(0.5, 2.0, size=n)
    return x, y, sw


class ZooGradient:
    """∇ of the zoo model's mean cross-entropy (training mode) at given weights, in float64.

    A clone of the model holds the weights: no ``sam`` code, nothing of the model under test.
    """

    def __init__(self, model):
        self.clone = keras.models.clone_model(model)
        self.paths = [v.path for v in model.trainable_variables]

    def __call__(self, weights, x, y, sw=None):
        for v, w in zip(self.clone.trainable_variables, weights):
            v.assign(w)
        with tf.GradientTape() as tape:
            logits = self.clone(x, training=True)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            if sw is not None:
                ce = ce * sw
            loss = tf.reduce_sum(ce) / ce.shape[0]
        grads = tape.gradient(loss, self.clone.trainable_variables)
        return [np.asarray(tf.convert_to_tensor(g)) for g in grads]


def asam_epsilon(paths, weights, g, rho, eta=0.01, offsets=ZOO_OFFSETS):
    """ASAM's ε = ρ T²g/‖Tg‖, T = 1 for the reference's offsets and |w| + η otherwise."""
    t = [np.ones_like(w) if p in offsets else np.abs(w) + eta for p, w in zip(paths, weights)]
    norm = np.sqrt(sum(np.sum((ti * gi) ** 2) for ti, gi in zip(t, g)))
    return [rho * ti**2 * gi / norm for ti, gi in zip(t, g)]


def make_second_pass_overflow(model_cls):
    """A mixed_float16 model whose clean pass is finite and whose perturbed pass overflows.

    x = 1 → h = k₁x (float16, k₁ = 60000 < 65504) → y = k₂h (float32, k₂ = 60000), MAE loss:
    g = (∂k₁, ∂k₂) = (k₂, h) = (60000, 60000), all finite in float16; with ρ = 10⁴, ε ≈ 7071 on
    each, so k₁ + ε₁ > 65504 overflows float16 and the perturbed pass's ∂k₂ = h = inf.
    Returns (model, x, y); set the mixed_float16 policy first.
    """
    inputs = keras.Input((1,))
    h = keras.layers.Dense(1, use_bias=False, name="f16")(inputs)
    outputs = keras.layers.Dense(1, use_bias=False, dtype="float32", name="f32")(h)
    model = model_cls(inputs, outputs)
    model.get_layer("f16").kernel.assign([[60000.0]])
    model.get_layer("f32").kernel.assign([[60000.0]])
    return model, np.ones((2, 1), "float32"), np.zeros((2, 1), "float32")
