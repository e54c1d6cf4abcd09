"""Sharpness-Aware Minimization (SAM, ASAM, m-sharpness) and its family, Keras 3 on TensorFlow."""

from importlib.metadata import PackageNotFoundError, version

from sam._compat import require_tensorflow

require_tensorflow()

from sam.optimizer import SAM, asam_perturbation, sam_perturbation  # noqa: E402
from sam.train_step import SAMModel, sam_train_step  # noqa: E402
from sam.variants import (  # noqa: E402
    ESAM,
    GSAM,
    FriendlySAM,
    LookSAM,
    SAMSchedule,
    SAMVariant,
)

__all__ = [
    "ESAM",
    "GSAM",
    "SAM",
    "FriendlySAM",
    "LookSAM",
    "SAMModel",
    "SAMSchedule",
    "SAMVariant",
    "asam_perturbation",
    "sam_perturbation",
    "sam_train_step",
]
try:  # the installed distribution's version (pyproject reads it from landscape/_version.py)
    __version__ = version("sam-landscape")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"
