"""Progress reporting shared by the analyses: a ``verbose`` argument backed by Keras's Progbar.

Every bar is made by ``progbar`` here. The values the analyses show are current quantities (an
estimate so far, its standard error, a residual, the lowest loss found), so each is displayed as
given, never averaged over steps as Keras does by default for a training loss. Callers pass a
value only once it is defined (no ``inf`` or ``nan`` placeholder for "not yet"), and close a bar
whose length was open, or that stopped short of its cap, with ``finish``.
"""

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
    """A ``keras.utils.Progbar`` when ``verbose`` asks for one, else None.

    Args:
        target: The number of steps when it is known in advance (a grid's points, a fixed
            number of runs), or the cap a run can reach; None when the run stops on a
            criterion at an unknown step (the bar then counts up, and ``finish`` closes it).
        verbose: 0 (None is returned), 1, 2 or ``"auto"`` (see ``resolve_verbose``).
        unit: The name of a step ("point", "probe", "product", ...). Defaults to "step".

    Returns:
        The bar, displaying every value as given (``stateless_metrics=()``: nothing averaged),
        or None.
    """
    verbose = resolve_verbose(verbose)
    if not verbose:
        return None
    return keras.utils.Progbar(target, verbose=verbose, unit_name=unit, stateless_metrics=())


def finish(bar: keras.utils.Progbar | None, current: int, values=None) -> None:
    """Close ``bar`` after ``current`` steps: its last line, once (nothing when ``bar`` is None).

    A bar without a target gets ``current`` as its target, so that it ends full and
    ``verbose=2`` prints its one line; a bar with a cap keeps it ("12/300": stopped early).
    """
    if bar is None:
        return
    if bar.target is None:
        bar.target = current
    bar.update(current, values, finalize=True)
