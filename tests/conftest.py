"""Test set-up: quiet, deterministic, two logical CPUs; runs before TensorFlow executes an op."""

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("MPLBACKEND", "Agg")

import tensorflow as tf  # noqa: E402

tf.config.threading.set_inter_op_parallelism_threads(2)
tf.config.threading.set_intra_op_parallelism_threads(2)
# Two logical CPU devices, so MirroredStrategy tests have two replicas.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


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
