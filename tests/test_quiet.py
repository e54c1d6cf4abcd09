"""Quiet output: TensorFlow's start-up lines filtered as TF_CPP_MIN_LOG_LEVEL says, and no
retracing warning where the figures evaluate many models."""

from __future__ import annotations

import logging

import keras
import numpy as np

from landscape._startup import filter_startup_lines
from landscape.figures import _fit_metrics

# stderr of `import tensorflow` (TensorFlow 2.21 on a CPU), with a Python warning and an error
# of our own making between the lines.
NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
ONEDNN = (
    "I0000 00:00:1796648781.262819   12890 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results.\n"
)
CPU = (
    "I0000 00:00:1796648787.919177   13496 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.\n"
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.\n"
)
CUDA = "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda drivers on your machine, GPU will not be used.\n"  # noqa: E501
FACTORY = "E0000 00:00:1758131045.203198 3722035 cuda_dnn.cc:8579] Unable to register cuDNN factory: Attempting to register factory for plugin cuDNN when one has already been registered\n"  # noqa: E501
WARN = (
    "W0000 00:00:1758131045.228000 3722035 gpu_device.cc:2341] Cannot dlopen some GPU libraries.\n"  # noqa: E501
)
ERROR = "E0000 00:00:1758131045.300000 3722035 some_op.cc:12] A real error.\n"
PYWARN = "/x/y.py:3: DeprecationWarning: old\n  import z\n"
TEXT = NOTICE + ONEDNN + CPU + CUDA + PYWARN + FACTORY + WARN + ERROR + NOTICE + ONEDNN


def test_startup_lines_follow_the_log_level():
    assert filter_startup_lines(TEXT, 0) == TEXT
    assert filter_startup_lines(TEXT, 1) == PYWARN + WARN + ERROR
    assert filter_startup_lines(TEXT, 2) == PYWARN + ERROR
    assert filter_startup_lines(TEXT, 3) == PYWARN
    assert filter_startup_lines("training cnn with sgd\n", 3) == "training cnn with sgd\n"


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_fit_metrics_of_many_models_trace_no_function():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 6)).astype("float32")  # a full and a partial batch of 512
    y_true = rng.integers(0, 3, 700)
    y_noisy, flipped = y_true.copy(), np.zeros(700, bool)
    flipped[:100] = True
    y_noisy[:100] = (y_true[:100] + 1) % 3
    records = _Records()
    logging.getLogger("tensorflow").addHandler(records)
    try:
        for seed in range(7):  # TensorFlow warns from the fifth trace of one function on
            keras.utils.set_random_seed(seed)
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
            metrics = _fit_metrics(model, x, y_true, y_noisy, flipped)
            predicted = np.argmax(x @ model.weights[0].numpy() + model.weights[1].numpy(), -1)
            assert metrics["train_acc_clean"] == np.mean(predicted == y_true)
            assert metrics["memorized"] == np.mean(predicted[:100] == y_noisy[:100])
    finally:
        logging.getLogger("tensorflow").removeHandler(records)
    assert [m for m in records.messages if "retracing" in m] == []
