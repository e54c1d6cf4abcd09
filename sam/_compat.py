"""Checks that the TensorFlow backend of Keras 3 is available, with one clear sentence if not."""

from __future__ import annotations

import os

INSTALL_HINT = (
    "sam-landscape needs TensorFlow as the Keras backend: install it with "
    "`pip install 'sam-landscape[cpu]'` (or `'sam-landscape[gpu]'` for CUDA)."
)


def require_tensorflow() -> None:
    """Import TensorFlow and make sure Keras runs on it, or raise one ImportError sentence."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # TensorFlow's C++ start-up INFO/WARNING lines (CPU features, absl) are noise for our users;
    # a value set beforehand wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ImportError(
            f"sam-landscape runs on the TensorFlow backend of Keras, but KERAS_BACKEND is "
            f"{keras.backend.backend()!r}: set KERAS_BACKEND=tensorflow before importing keras."
        )
