"""Run by test_fit_backends.py with two JAX host devices: SAM-family fit under DataParallel
against the same fit on one device; prints "ok" per optimizer, or raises."""

import jax
import keras
import numpy as np

import sam

assert len(jax.devices()) == 2, jax.devices()
rng = np.random.default_rng(0)
X, Y = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")
OPTIMIZERS = {
    "SAM": lambda: sam.SAM(keras.optimizers.SGD(0.1, momentum=0.9), rho=0.05),
    "GSAM": lambda: sam.GSAM(keras.optimizers.SGD(0.1), rho=0.05, alpha=0.3),
    "LookSAM": lambda: sam.LookSAM(keras.optimizers.SGD(0.1), rho=0.05, k=2),
}


def trained(make, distribution):
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(1)
    inputs = keras.Input((3,))
    h = keras.layers.BatchNormalization()(keras.layers.Dense(4, activation="tanh")(inputs))
    model = sam.SAMModel(inputs, keras.layers.Dense(2)(h))
    model.compile(optimizer=make(), loss="mse")
    model.fit(X, Y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    if distribution is not None:  # the weights were laid out over both devices
        assert len(model.trainable_variables[0].value.sharding.device_set) == 2
    return [np.asarray(v) for v in model.get_weights()]


for name, make in OPTIMIZERS.items():
    one = trained(make, None)
    two = trained(make, keras.distribution.DataParallel(devices=jax.devices()))
    for a, b in zip(one, two):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=name)
    print("ok")
