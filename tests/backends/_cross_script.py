"""The analysis that ``test_cross_backend.py`` runs once per Keras backend, in its own process.

``python _cross_script.py FOLDER OUT.npz`` (``KERAS_BACKEND`` in the environment) rebuilds the
two tiny models below, loads their ``.weights.h5`` and data ``.npz`` from FOLDER, and writes each
model's loss, gradient, Hessian-vector product along a stored vector, top-3 Hessian eigenvalues
and 5×5 surface along two stored directions to OUT.npz, the data in two batches of one size
(one compiled shape on JAX). ``save(FOLDER)`` writes the inputs.
"""

from __future__ import annotations

import os
import sys

import keras
import numpy as np

SEQ, VOCAB = 6, 11


def cnn() -> keras.Model:
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 3, activation="tanh")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(3)(h)
    model = keras.Model(inputs, outputs)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def transformer() -> keras.Model:
    inputs = keras.Input((SEQ,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, 4)(inputs)
    a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=2)(h, h)
    h = keras.layers.LayerNormalization()(h + a)
    h = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(2, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(loss="sparse_categorical_crossentropy")
    return model


MODELS = {"cnn": cnn, "transformer": transformer}


def _data(name: str, rng) -> tuple[np.ndarray, np.ndarray]:
    if name == "cnn":
        return rng.normal(size=(20, 6, 6, 2)).astype("float32"), rng.integers(0, 3, 20)
    return rng.integers(0, VOCAB, (16, SEQ)).astype("int32"), rng.integers(0, 2, 16)


def save(folder: str) -> None:
    """Random weights (BatchNorm's moving statistics too), data, an HVP vector and two surface
    directions for each model, as ``NAME.weights.h5`` and ``NAME.npz``."""
    rng = np.random.default_rng(0)
    for name, build in MODELS.items():
        model = build()
        for v in model.variables:
            shape = tuple(v.shape)
            if "moving_variance" in v.path:
                v.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
            else:
                v.assign(rng.normal(0, 0.5, shape).astype("float32"))
        model.save_weights(os.path.join(folder, f"{name}.weights.h5"))
        x, y = _data(name, rng)
        vector = [rng.normal(size=tuple(v.shape)) for v in model.trainable_variables]
        directions = [
            [0.3 * rng.normal(size=tuple(v.shape)) for v in model.trainable_variables]
            for _ in range(2)
        ]
        np.savez(
            os.path.join(folder, f"{name}.npz"),
            x=x,
            y=y,
            **{f"v{i}": a.astype("float32") for i, a in enumerate(vector)},
            **{
                f"d{j}_{i}": a.astype("float32")
                for j, d in enumerate(directions)
                for i, a in enumerate(d)
            },  # fmt: skip
        )


def analyse(folder: str, name: str) -> dict[str, np.ndarray]:
    import landscape

    model = MODELS[name]()
    model.load_weights(os.path.join(folder, f"{name}.weights.h5"))
    stored = np.load(os.path.join(folder, f"{name}.npz"))
    x, y = stored["x"], stored["y"]
    objective = landscape.Objective(model, (x, y), batch_size=len(x) // 2)
    n = len(objective.trainable_variables)
    values, grads = objective.value_and_gradient()
    hv = objective.hessian_vector_product([stored[f"v{i}"] for i in range(n)])
    eig = landscape.hessian_eigenvalues(objective, k=3, tol=1e-6, seed=0)
    paths = objective.trainable_variables.paths
    directions = [
        landscape.Direction({p: stored[f"d{j}_{i}"] for i, p in enumerate(paths)}) for j in range(2)
    ]
    surface = landscape.compute_surface(objective, directions, x="-1:1:5", y="-1:1:5", verbose=0)
    return {
        f"{name}/loss": np.float64(values["loss"]),
        f"{name}/gradient": objective.flat.concat(grads),
        f"{name}/hvp": objective.flat.concat(hv),
        f"{name}/eigenvalues": np.asarray(eig.values, np.float64),
        f"{name}/surface": np.asarray(surface.values["train_loss"], np.float64),
        f"{name}/engine": np.array(type(objective).__name__),
    }


if __name__ == "__main__":
    folder, out = sys.argv[1], sys.argv[2]
    results = {"backend": np.array(keras.backend.backend())}
    for model_name in MODELS:
        results.update(analyse(folder, model_name))
    np.savez(out, **results)
