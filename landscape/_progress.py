"""Progress reporting shared by the analyses: a ``verbose`` argument backed by Keras's Progbar."""

from __future__ import annotations

import keras


def resolve_verbose(verbose) -> int:
    """0, 1 or 2 from ``verbose`` (``"auto"``: 1 unless Keras's interactive logging is off)."""
    if verbose == "auto":
        return 1 if keras.config.is_interactive_logging_enabled() else 0
    if verbose in (0, 1, 2, False, True):
        return int(verbose)
    raise ValueError(
        f"Argument `verbose` must be 'auto', 0, 1 or 2. Received: verbose={verbose!r}."
    )


def progbar(target: int | None, verbose, unit: str = "step") -> keras.utils.Progbar | None:
    """A ``keras.utils.Progbar`` when ``verbose`` asks for one, else None."""
    verbose = resolve_verbose(verbose)
    return keras.utils.Progbar(target, verbose=verbose, unit_name=unit) if verbose else None
