"""Test set-up: quiet, deterministic, two threads; runs before the Keras backend executes an op.

``LANDSCAPE_TEST_BACKEND`` (tensorflow, jax or torch; defaults to tensorflow) names the Keras
backend of the run; each backend runs in its own process (``make test`` runs the three legs).
TensorFlow gets two logical CPUs, so MirroredStrategy tests have two replicas. On jax and torch
only the backend-neutral tests under tests/backends/ are collected.
"""

import os
from pathlib import Path

import pytest

BACKENDS = ("tensorflow", "jax", "torch")
BACKEND = os.environ.get("LANDSCAPE_TEST_BACKEND", "tensorflow")
if BACKEND not in BACKENDS:
    raise pytest.UsageError(
        f"LANDSCAPE_TEST_BACKEND must be one of {', '.join(BACKENDS)}. Received: {BACKEND!r}."
    )

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ["KERAS_BACKEND"] = BACKEND
os.environ.setdefault("MPLBACKEND", "Agg")

_BACKEND_NEUTRAL = Path(__file__).parent / "backends"


def _configure_tensorflow():
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(2)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )


def _configure_torch():
    import torch

    torch.set_num_threads(2)
    torch.set_num_interop_threads(2)


if BACKEND == "tensorflow":
    _configure_tensorflow()
elif BACKEND == "torch":
    _configure_torch()
# JAX keeps XLA's default threading (XLA_FLAGS is left as the caller set it).

import keras  # noqa: E402
import numpy as np  # noqa: E402


def pytest_ignore_collect(collection_path, config):
    """On jax and torch, everything but tests/backends/ (and the folders above it) is skipped."""
    if BACKEND == "tensorflow":
        return None
    path = Path(collection_path)
    on_the_way = path in _BACKEND_NEUTRAL.parents  # tests/ itself, so pytest walks into backends/
    inside = path == _BACKEND_NEUTRAL or _BACKEND_NEUTRAL in path.parents
    return None if on_the_way or inside else True


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts from the float32 policy and a clean Keras name space."""
    keras.mixed_precision.set_global_policy("float32")
    keras.config.set_floatx("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")
    keras.config.set_floatx("float32")
    keras.backend.clear_session(free_memory=False)


@pytest.fixture(scope="session")
def mnist_small():
    import landscape

    return landscape.load_embedded()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
