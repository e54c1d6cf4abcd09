"""SharpnessTracker during ``fit`` on every Keras backend, against NumPy by hand.

Runs in the backend's own process. Reference: the softmax regression's dense Hessian in NumPy
float64 (``test_portable_features.reference``) at the weights the model has where the probe
runs, and the same ``fit`` without the tracker (the tracker must change nothing). On JAX, fit
keeps the weights in its own state between syncs: a probe must see the current ones.
"""

from __future__ import annotations

import keras
import numpy as np
from test_portable_features import arrays, reference, softmax_regression, weights

import landscape

N_STEPS_PER_EPOCH, EPOCHS, BATCH = 4, 2, 8


def _trained(callbacks=()):
    model = softmax_regression(seed=3)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
    x, y, _ = arrays(n=N_STEPS_PER_EPOCH * BATCH, seed=4)
    start = weights(model)
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks)
    return model, (x, y), start


def _top_eigenvalue(W, b, x, y) -> float:
    return float(np.linalg.eigvalsh(reference(W, b, x, y, np.ones(len(x)))[2])[-1])


def test_the_tracker_measures_the_weights_fit_has_reached_and_changes_nothing():
    by_epoch = landscape.SharpnessTracker(arrays(n=32, seed=4)[:2], tol=1e-6, batch_size=16)
    by_step = landscape.SharpnessTracker(
        arrays(n=32, seed=4)[:2], every=N_STEPS_PER_EPOCH, unit="step", tol=1e-6, at_start=False
    )
    model, (x, y), start = _trained([by_epoch, by_step])
    plain, _, _ = _trained()
    for a, b in zip(weights(model), weights(plain)):
        np.testing.assert_array_equal(a, b)  # the probes left the training alone
    assert by_epoch.history["step"] == [0, 4, 8]
    assert by_step.history["step"] == [4, 8]
    expected_start = _top_eigenvalue(*start, x, y)
    expected_end = _top_eigenvalue(*weights(model), x, y)
    assert abs(expected_end - expected_start) > 1e-3 * expected_start  # training moved λ_max
    np.testing.assert_allclose(by_epoch.history["lambda_max"][0], expected_start, rtol=1e-4)
    np.testing.assert_allclose(by_epoch.history["lambda_max"][-1], expected_end, rtol=1e-4)
    np.testing.assert_allclose(by_step.history["lambda_max"][-1], expected_end, rtol=1e-4)
    np.testing.assert_allclose(
        by_step.history["lambda_max"][0], by_epoch.history["lambda_max"][1], rtol=1e-4
    )
    # Warm-started probes are certified by their own products (at least one each).
    for tracker in (by_epoch, by_step):
        assert all(tracker.history["converged"]) and max(tracker.history["residual"]) <= 1e-6
        assert all(1 <= n <= tracker.max_iter for n in tracker.history["n_hvp"])
