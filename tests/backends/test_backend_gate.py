"""The backend gate: each leg of ``make test`` runs on the Keras backend it names.

Collected on every backend (``LANDSCAPE_TEST_BACKEND`` = tensorflow, jax or torch; see conftest.py).
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest
from packaging.version import Version

BACKEND = os.environ.get("LANDSCAPE_TEST_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parents[2]


def test_keras_runs_the_backend_the_leg_names():
    assert keras.backend.backend() == BACKEND


def test_landscape_imports_and_has_a_version():
    import landscape

    version = landscape.__version__
    assert isinstance(version, str)
    assert str(Version(version)) == version  # a normalized PEP 440 version, e.g. "0.9.0"


@pytest.mark.skipif(BACKEND == "tensorflow", reason="TensorFlow is the backend of this leg")
def test_the_analyses_run_where_tensorflow_cannot_be_imported():
    """A fresh interpreter on jax / torch in which ``import tensorflow`` fails (as on a GPU machine
    with JAX and no TensorFlow): an Objective, its Hessian's top eigenvalue, a surface and a
    SAM step of a custom loop and a SAMModel's fit."""
    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None  # importing it raises ImportError\n"
        "import numpy as np, keras, landscape\n"
        "m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation='tanh'),\n"
        "                      keras.layers.Dense(2)])\n"
        "m.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))\n"
        "x = np.random.default_rng(0).normal(size=(10, 3)).astype('float32')\n"
        "o = landscape.Objective(m, (x, np.arange(10) % 2), batch_size=4)\n"
        "assert np.isfinite(o.evaluate()['loss'])\n"
        "assert landscape.hessian_eigenvalues(o, k=1).converged\n"
        "d = landscape.random_direction(m, seed=0)\n"
        "s = landscape.compute_surface(o, [d], '-1:1:3', verbose=0)\n"
        "assert np.isfinite(s.values['train_loss']).all()\n"
        "import sam  # SAM's custom loop too\n"
        "assert keras.saving.get_registered_object('sam>SAM') is not None  # for load_model\n"
        "opt = sam.SAM(keras.optimizers.SGD(0.1))\n"
        "g = [keras.ops.ones(v.shape) for v in m.trainable_variables]\n"
        "opt.first_step(g, m.trainable_variables)\n"
        "opt.second_step(g, m.trainable_variables)\n"
        "i = keras.Input((3,))  # and SAM in fit\n"
        "f = sam.SAMModel(i, keras.layers.Dense(2)(i))\n"
        "f.compile(optimizer=sam.SAM(keras.optimizers.SGD(0.1)), loss='mse')\n"
        "assert np.isfinite(f.fit(x, x[:, :2], verbose=0).history['loss'][0])\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] == 'tensorflow'\n"
        "             and sys.modules[k] is not None))\n"
    )
    if BACKEND == "tensorflow":
        pytest.skip("the TensorFlow backend needs TensorFlow")
    env = {**os.environ, "KERAS_BACKEND": BACKEND}
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[-1] == "[]"
