"""Where a number came from: the provenance block every JSON and HDF5 output carries.

One function, ``provenance``, builds it; the CLI's commands and the library's writers (the
surface file, the figures' JSON files, the tracker's ``as_dict``, training checkpoints) call it.
The block (JSON-ready builtins)::

    {"provenance_version": 1, "created": ISO 8601 UTC,
     "versions": {"sam-landscape", "python", "keras", "numpy", "scipy", "h5py", and the
                  backend's packages: "tensorflow" | "jax", "jaxlib" | "torch"},
     "backend": "tensorflow" | "jax" | "torch", "platform": platform.platform(),
     "settings": the call's settings, "seeds": ..., "model_fingerprint": SHA-256 of the weights,
     "data_fingerprint": SHA-256 of the data arrays, "precision": "float32" | "float64" | ...,
     "converged": {name: bool}, "invocation": {"command": "landscape hessian", "options": {...}}}

``invocation`` is present when the output was written by a CLI command (the command's name and
every option as parsed, defaults included); keys the caller had nothing for are left out.
The versions are read from the installed distributions' metadata, so building the block imports
nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import importlib.metadata
import json
import math
import os
import platform
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from landscape._version import __version__

PROVENANCE_VERSION = 1
_BACKEND_PACKAGES = {
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "jax": ("jax", "jaxlib"),
    "torch": ("torch",),
}
_COMMON_PACKAGES = ("keras", "numpy", "scipy", "h5py")
_invocation: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "landscape_invocation", default=None
)


def backend_name() -> str:
    """Keras's backend: asked of Keras when it is loaded, else ``KERAS_BACKEND`` (its rule)."""
    keras = sys.modules.get("keras")
    if keras is not None:
        return keras.backend.backend()
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(backend: str | None = None) -> dict[str, str]:
    """The versions of sam-landscape, Python and the packages its numbers depend on."""
    found = {"sam-landscape": __version__, "python": platform.python_version()}
    backend = backend or backend_name()
    for package in (*_COMMON_PACKAGES, *_BACKEND_PACKAGES.get(backend, ())):
        v = _version(package)
        if v is not None:
            found[package] = v
    return found


def plain(value: Any) -> Any:
    """``value`` as JSON-ready builtins: NumPy scalars and arrays, tuples, paths and enums
    converted; a non-finite float becomes None (JSON has no inf or NaN); anything else its
    ``str``."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    tolist = getattr(value, "tolist", None)  # NumPy scalars and arrays
    if callable(tolist):
        return plain(tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


@contextlib.contextmanager
def invocation(command: str, options: Mapping[str, Any]) -> Iterator[None]:
    """Within the block, every provenance built records ``command`` and its ``options``."""
    token = _invocation.set({"command": command, "options": plain(dict(options))})
    try:
        yield
    finally:
        _invocation.reset(token)


def set_invocation(command: str, options: Mapping[str, Any]) -> None:
    """Record ``command`` and ``options`` for the rest of this context (a CLI command's run:
    it is one process, or one call of click's test runner, which copies no context back)."""
    _invocation.set({"command": command, "options": plain(dict(options))})


def provenance(
    *,
    settings: Mapping[str, Any] | None = None,
    seeds: Any = None,
    objective: Any = None,
    model: Any = None,
    model_fingerprint: str | Mapping[str, str] | None = None,
    data_fingerprint: str | Mapping[str, str | None] | None = None,
    precision: str | None = None,
    converged: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """The provenance block of one output (see the module docstring for its keys).

    Args:
        settings: The call's settings (arguments that change the numbers). Defaults to None.
        seeds: The seeds drawn from. Defaults to None.
        objective: An ``Objective``: gives the model and data fingerprints, the precision and
            the backend unless given. Defaults to None.
        model: A Keras model whose weights are fingerprinted (without an objective).
            Defaults to None.
        model_fingerprint: The weights' fingerprint, or ``{name: fingerprint}`` for several
            models. Defaults to None (from ``objective`` or ``model``).
        data_fingerprint: The data's fingerprint (or ``{name: fingerprint}``). Defaults to None
            (from ``objective``).
        precision: The analysis precision. Defaults to None (from ``objective``).
        converged: Convergence flags by quantity (``{"eigenvalues": True, ...}``).
            Defaults to None.

    Returns:
        A dict of JSON-ready builtins; keys without a value are left out.
    """
    backend = getattr(objective, "backend", None) or backend_name()
    if objective is not None:
        model_fingerprint = model_fingerprint or objective.weights_fingerprint()
        data_fingerprint = data_fingerprint or objective.data_fingerprint()
        precision = precision or objective.precision
    elif model is not None and model_fingerprint is None:
        model_fingerprint = model_weights_fingerprint(model)
    block = {
        "provenance_version": PROVENANCE_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "versions": versions(backend),
        "backend": backend,
        "platform": platform.platform(),
        "settings": plain(settings),
        "seeds": plain(seeds),
        "model_fingerprint": plain(model_fingerprint),
        "data_fingerprint": plain(data_fingerprint),
        "precision": precision,
        "converged": plain(converged),
        "invocation": _invocation.get(),
    }
    return {k: v for k, v in block.items() if v is not None}


def model_weights_fingerprint(model: Any) -> str:
    """The SHA-256 fingerprint of a model's weights, by ``Objective.weights_fingerprint``'s rule
    (every floating-point variable, in order), so the two agree for the same model."""
    import keras

    from landscape.directions import fingerprint_arrays, float_variables

    variables = float_variables(model, "all")
    return fingerprint_arrays(keras.ops.convert_to_numpy(v.value) for v in variables)


def as_json(block: Mapping[str, Any]) -> str:
    """The block as one JSON text (an HDF5 attribute's value)."""
    return json.dumps(block, sort_keys=True)
