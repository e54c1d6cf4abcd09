"""SciPy's L-BFGS-B on a box, without SciPy's per-variable Python set-up.

``scipy.optimize.minimize(method="L-BFGS-B", bounds=...)`` converts the bounds between its two
representations and fills the solver's bound codes in Python loops over the variables: about
115 s for ResNet-50's 23.6 M weights, against 2 s for one gradient of 64 images, so
``epsilon_sharpness`` was mostly that. ``minimize_in_box`` drives SciPy's own compiled L-BFGS-B
routine (``scipy.optimize._lbfgsb.setulb``, SciPy ≥ 1.15) through its reverse-communication
protocol with the bounds built as arrays: the same routine, the same options and stopping rules
as ``scipy.optimize.minimize`` (tests/test_sharpness.py checks every iterate against it). Where
that routine is missing or has another signature (older or newer SciPy), it runs
``scipy.optimize.minimize`` itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize

logger = logging.getLogger("landscape")

try:  # private: the compiled routine behind scipy.optimize.minimize(method="L-BFGS-B")
    from scipy.optimize import _lbfgsb as _routine
    from scipy.optimize._lbfgsb_py import status_messages as _STATUS
    from scipy.optimize._lbfgsb_py import task_messages as _TASK
except ImportError:  # pragma: no cover - SciPy without it: minimize below
    _routine, _STATUS, _TASK = None, {}, {}

#: scipy.optimize.minimize's L-BFGS-B defaults (maxcor, ftol, gtol, maxls, maxfun)
MAXCOR, FTOL, GTOL, MAXLS, MAXFUN = 10, 2.2204460492503131e-09, 1e-5, 20, 15000
# task codes of the routine: it asks for f and g at x (FG), or reports an iteration (NEW_X)
_FG, _NEW_X, _STOP = 3, 1, 5
_ITERATIONS_REACHED, _EVALUATIONS_EXCEEDED = 504, 502


@dataclass
class BoxResult:
    """What ``minimize_in_box`` found: the last iterate x, f(x), iterations, evaluations and
    the routine's stopping message (as ``scipy.optimize.OptimizeResult`` names them)."""

    x: np.ndarray
    fun: float
    nit: int
    nfev: int
    message: str


def minimize_in_box(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    max_iter: int,
    own_x0: bool = False,
) -> BoxResult:
    """``scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=Bounds(lower,
    upper), options={"maxiter": max_iter})`` with SciPy's other defaults, as a ``BoxResult``.

    Args:
        fun: x (float64, n) -> (f(x), ∇f(x)).
        x0: The start (clipped into the box, as SciPy does).
        lower, upper: Finite bounds, float64 arrays of n entries.
        max_iter: Iterations.
        own_x0: ``x0`` (float64) may be clipped in place and become the iterate the routine
            overwrites, instead of a copy (an n-vector less). Defaults to False.
    """
    if _routine is not None and hasattr(_routine, "setulb"):
        try:
            return _driven(fun, x0, lower, upper, max_iter, own_x0)
        except _SignatureChanged:
            logger.debug("SciPy's L-BFGS-B routine has another signature; using minimize.")
    result = scipy.optimize.minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=scipy.optimize.Bounds(lower, upper),
        options={"maxiter": max_iter},
    )
    return BoxResult(result.x, float(result.fun), int(result.nit), int(result.nfev),
                     str(result.message))  # fmt: skip


class _SignatureChanged(Exception):
    """The routine refused its arguments before any evaluation."""


class _Workspace:
    """The routine's arrays for n variables (the sizes its documentation gives)."""

    def __init__(self, n: int, m: int):
        self.wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m, np.float64)
        self.iwa = np.zeros(3 * n, np.int32)
        self.task = np.zeros(2, np.int32)
        self.ln_task = np.zeros(2, np.int32)
        self.lsave = np.zeros(4, np.int32)
        self.isave = np.zeros(44, np.int32)
        self.dsave = np.zeros(29, np.float64)


def _bound_codes(lower: np.ndarray, upper: np.ndarray):
    """(l, u, nbd): the routine's bounds, 0 where infinite, and its code per variable (0 none,
    1 lower only, 2 both, 3 upper only)."""
    if np.isfinite(lower).all() and np.isfinite(upper).all():  # a box (ε-sharpness's)
        return lower, upper, np.full(lower.shape, 2, np.int32)
    has_l, has_u = np.isfinite(lower), np.isfinite(upper)
    nbd = np.where(has_l, np.where(has_u, 2, 1), np.where(has_u, 3, 0)).astype(np.int32)
    return np.where(has_l, lower, 0.0), np.where(has_u, upper, 0.0), nbd


def _driven(fun, x0, lower, upper, max_iter: int, own_x0: bool = False) -> BoxResult:
    """The routine's reverse-communication loop: it asks for f and g or reports a new
    iterate until it stops; the iteration and evaluation caps are SciPy's."""
    lower = np.asarray(lower, np.float64)
    upper = np.asarray(upper, np.float64)
    low, up, nbd = _bound_codes(lower, upper)
    x = np.asarray(x0, np.float64).ravel()
    x = np.clip(x, lower, upper, out=x if own_x0 else None)
    work = _Workspace(x.size, MAXCOR)
    f, g = np.array(0.0), np.zeros(x.size, np.float64)
    factr = FTOL / np.finfo(float).eps
    nit = nfev = 0
    last_x = None
    while True:
        try:
            _routine.setulb(MAXCOR, x, low, up, nbd, f, g, factr, GTOL, work.wa, work.iwa,
                            work.task, work.lsave, work.isave, work.dsave, MAXLS,
                            work.ln_task)  # fmt: skip
        except TypeError as error:
            if nfev == 0:
                raise _SignatureChanged from error
            raise
        if work.task[0] == _FG:
            if last_x is None or not np.array_equal(x, last_x):  # SciPy re-uses f at the same x
                # the routine overwrites x; fun gets a copy it must not change
                if last_x is None:
                    last_x = x.copy()
                else:
                    np.copyto(last_x, x)
                value, grad = fun(last_x)
                f, g = float(value), np.asarray(grad, np.float64).reshape(-1)
                nfev += 1
        elif work.task[0] == _NEW_X:
            nit += 1
            if nit >= max_iter:
                work.task[:] = (_STOP, _ITERATIONS_REACHED)
            elif nfev > MAXFUN:
                work.task[:] = (_STOP, _EVALUATIONS_EXCEEDED)
        else:
            break
    message = f"{_STATUS.get(int(work.task[0]), work.task[0])}: {_TASK.get(int(work.task[1]), '')}"
    return BoxResult(x, float(f), nit, nfev, message)
