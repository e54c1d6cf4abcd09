"""Sharpness-Aware Minimization (SAM, ASAM, m-sharpness) for Keras 3 on TensorFlow."""

from sam._compat import require_tensorflow

require_tensorflow()

from sam.optimizer import SAM, asam_perturbation, sam_perturbation  # noqa: E402
from sam.train_step import SAMModel, sam_train_step  # noqa: E402

__all__ = ["SAM", "SAMModel", "asam_perturbation", "sam_perturbation", "sam_train_step"]
__version__ = "0.1.0"
