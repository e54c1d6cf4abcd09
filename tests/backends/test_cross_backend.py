"""The same models and data analysed on TensorFlow, JAX and PyTorch give the same numbers.

A CNN with BatchNorm (moving statistics in inference mode) and a small Transformer (Embedding,
MultiHeadAttention, LayerNormalization) are saved as ``.weights.h5`` with their data, then
``_cross_script.py`` runs in one process per backend (``KERAS_BACKEND`` set before Keras loads):
loss, gradient, Hessian-vector product, top-3 Hessian eigenvalues and a 5×5 surface. The
backends share none of the arithmetic (TensorFlow's compiled loops in ``_tf_engine`` against the
portable engine on ``jax.jit`` and on eager PyTorch autograd; each backend's own kernels for
every layer), so agreement to float32 rounding checks each against the others.

Tolerances: every backend computes each batch in float32 (relative rounding ~6e-8 per operation,
grown by the depth of the model and the sums over batch and parameters to ~1e-6) and sums the
batches in float64. Measured differences from TensorFlow: loss, surface and eigenvalues ≤ 1e-7
relative, gradient and HVP ≤ 6e-7 of their largest entry. Tolerances, ~20x above that: loss and
surface rtol 2e-6; gradient and HVP (sums of products of both signs, so single entries near 0
carry a large relative error) atol 1e-5·max|·|; the top eigenvalues (Lanczos to residual 1e-6 on
float32 products) atol 2e-6·λ_max.
Runs in the TensorFlow leg only (it starts every backend itself); ~50 s on 2 shared CPU cores,
most of it jax.jit compiling the Transformer's functions, so it is marked slow (`make test-slow`).
`make test` checks each backend on its own leg against references outside the toolkit
(tests/backends/test_objective_backends.py: loss and gradient against NumPy by hand, Hessian
products against the dense NumPy Hessian and against central differences of the gradient,
through MultiHeadAttention too, top eigenvalues and trace against NumPy, surface points against
``model.evaluate`` at the assigned weights; test_conformance_backends.py: generated models with
BatchNorm, attention and RNNs), so a backend that drifts still fails there.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent.parent
BACKENDS = ("tensorflow", "jax", "torch")

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow"
    or any(importlib.util.find_spec(b) is None for b in BACKENDS),
    reason="runs from the TensorFlow leg, with jax and torch installed",
)


def _cross_script():
    spec = importlib.util.spec_from_file_location("_cross_script", HERE / "_cross_script.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_all(folder: pathlib.Path) -> dict[str, dict[str, np.ndarray]]:
    """Start the script on every backend at once; wait for all; their .npz results."""
    procs = {}
    for backend in BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT),
                   TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")  # fmt: skip
        out = folder / f"{backend}.out.npz"
        procs[backend] = (
            subprocess.Popen(
                [sys.executable, str(HERE / "_cross_script.py"), str(folder), str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),  # fmt: skip
            out,
        )
    results = {}
    for backend, (proc, out) in procs.items():
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{backend}:\n{log[-4000:]}"
        results[backend] = dict(np.load(out))
    return results


@pytest.mark.slow
def test_tensorflow_jax_and_torch_agree_on_loss_gradient_hvp_eigenvalues_and_surface(tmp_path):
    _cross_script().save(str(tmp_path))
    results = _run_all(tmp_path)
    reference = results["tensorflow"]
    assert str(reference["cnn/engine"]) == "TFObjective"
    for backend in ("jax", "torch"):
        got = results[backend]
        assert str(got["backend"]) == backend
        for name in ("cnn", "transformer"):
            assert str(got[f"{name}/engine"]) == "PortableObjective"
            key = f"{backend} {name}"
            np.testing.assert_allclose(got[f"{name}/loss"], reference[f"{name}/loss"],
                                       rtol=2e-6, err_msg=key)  # fmt: skip
            np.testing.assert_allclose(got[f"{name}/surface"], reference[f"{name}/surface"],
                                       rtol=2e-6, err_msg=key)  # fmt: skip
            for part in ("gradient", "hvp"):
                want = reference[f"{name}/{part}"]
                np.testing.assert_allclose(got[f"{name}/{part}"], want, rtol=0,
                                           atol=1e-5 * np.abs(want).max(),
                                           err_msg=f"{key} {part}")  # fmt: skip
            want = reference[f"{name}/eigenvalues"]
            np.testing.assert_allclose(got[f"{name}/eigenvalues"], want, rtol=0,
                                       atol=2e-6 * np.abs(want).max(), err_msg=key)  # fmt: skip
    for name in ("cnn", "transformer"):  # the checks can fail: the surfaces are not flat
        surface = reference[f"{name}/surface"]
        assert surface.shape == (5, 5) and np.ptp(surface) > 0.1 * np.abs(surface).max()
