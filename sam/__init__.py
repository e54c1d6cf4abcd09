"""Sharpness-Aware Minimization (SAM, ASAM, m-sharpness) and its family, for Keras 3.

``import sam`` loads every public name on Keras's TensorFlow, JAX and PyTorch backends,
registering the optimizers and ``SAMModel`` for ``keras.models.load_model``: every optimizer
runs in ``fit`` (``SAMModel``, ``sam_train_step``) and in a custom loop (``step``,
``first_step``/``second_step``) there. TensorFlow is the backend when ``KERAS_BACKEND`` is unset;
``sam``'s backend-free modules (``sam._backend``, ``sam._roles``, ``sam._compat``) also serve
``landscape``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

_PUBLIC = {
    "optimizer": ("SAM", "asam_perturbation", "sam_perturbation"),
    "train_step": ("SAMModel", "sam_train_step"),
    "variants": ("ESAM", "GSAM", "FriendlySAM", "LookSAM", "SAMSchedule", "SAMVariant"),
}
_SUBMODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_SUBMODULE_OF)
try:  # the installed distribution's version (pyproject reads it from landscape/_version.py)
    __version__ = version("sam-landscape")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    """A public name, imported from its submodule (every one is, at the end of this module)."""
    if name not in _SUBMODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_SUBMODULE_OF[name]}"), name)
    globals()[name] = value  # later uses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _default_backend() -> None:
    """TensorFlow when ``KERAS_BACKEND`` is unset, with its start-up log lines quiet (as
    ``require_tensorflow``), set before Keras is imported."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


_default_backend()
for _name in __all__:  # registers the optimizers and SAMModel for keras.models.load_model
    __getattr__(_name)
