"""Sharpness-Aware Minimization (SAM, ASAM, m-sharpness) and its family, for Keras 3.

On TensorFlow (Keras's default) ``import sam`` loads every public name, registering the
optimizers and ``SAMModel`` for ``keras.models.load_model``. On JAX and PyTorch it loads
``sam.optimizer``'s, ``sam.train_step``'s and ``sam.variants``' names too (registering ``SAM``,
``SAMModel`` and the family): every optimizer runs there in ``fit`` (``SAMModel``,
``sam_train_step``) and in a custom loop (``step``, ``first_step``/``second_step``); every
other name loads on first use (PEP 562), where
``require_tensorflow`` says so in one sentence, so that ``sam``'s backend-free modules
(``sam._backend``, ``sam._roles``, ``sam._compat``) serve ``landscape`` on any backend.
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
_ANY_BACKEND = {"optimizer", "train_step", "variants"}  # the submodules on every Keras backend
__all__ = sorted(_SUBMODULE_OF)
try:  # the installed distribution's version (pyproject reads it from landscape/_version.py)
    __version__ = version("sam-landscape")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    """A public name, imported on first use (after the TensorFlow check where it needs it)."""
    if name not in _SUBMODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _SUBMODULE_OF[name] not in _ANY_BACKEND:
        from sam._compat import require_tensorflow

        require_tensorflow(f"sam.{name}")
    value = getattr(importlib.import_module(f"{__name__}.{_SUBMODULE_OF[name]}"), name)
    globals()[name] = value  # later uses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _on_tensorflow() -> bool:
    import os

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as require_tensorflow, before keras
    import keras

    return keras.backend.backend() == "tensorflow"


_everything = _on_tensorflow()
for _name in __all__:  # registers SAM and SAMModel (on TensorFlow all) for keras.models.load_model
    if _everything or _SUBMODULE_OF[_name] in _ANY_BACKEND:
        __getattr__(_name)
