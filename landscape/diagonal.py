"""The diagonal of the Hessian (or of the generalized Gauss-Newton matrix) of an ``Objective``.

``hessian_diagonal`` computes diag(H) (or diag(G)) of the whole model or of a block of its
variables: exactly, from n unit-vector products (H eᵢ's i-th entry), or by Hutchinson's diagonal
estimator (Bekas, Kokiopoulou & Saad 2007): the mean of z ⊙ Hz over Rademacher probes z, whose
i-th entry has mean Hᵢᵢ and variance Σ_{j≠i} Hᵢⱼ² per probe, with a standard error per entry.
The products are ``landscape.hessian``'s (exact, float64 sums, inference mode).

References:
    Bekas, Kokiopoulou & Saad 2007, "An estimator for the diagonal of a matrix", Applied
    Numerical Mathematics 57(11-12), 1214-1229, https://doi.org/10.1016/j.apnum.2007.01.003.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from landscape import _checks
from landscape._checks import HVPMode, Split
from landscape._draws import rademacher
from landscape._progress import finish, progbar
from landscape._provenance import plain
from landscape._threads import one_blas_thread
from landscape.hessian import (
    TRACE_MIN_SAMPLES,
    TRACE_SAMPLES,
    TRACE_TOL,
    Curvature,
    _estimator_fields,
    _exact_trace,
    _Hessian,
)
from landscape.objective import Objective

logger = logging.getLogger("landscape")

#: How ``hessian_diagonal`` computes diag(H): ``"exact"`` (n unit-vector products),
#: ``"hutchinson"`` (random probes), or ``"auto"``: exact when n is at most the cap of probes.
DiagonalMethod = Literal["auto", "exact", "hutchinson"]
DIAGONAL_METHODS = _checks.options(DiagonalMethod)


@dataclass(frozen=True)
class DiagonalResult:
    """diag(H) (or diag(G)) of the operator: exact, or Hutchinson's estimate.

    Attributes:
        values: ``(n_params,)`` the diagonal, flat, in the order of ``variables`` (each
            variable's entries row-major, as ``Objective.flat`` lays them out).
        stderr: ``(n_params,)`` the standard error of each entry (sample standard deviation
            of the probe values zᵢ(Hz)ᵢ / √samples); 0 for the exact diagonal.
        n_hvp: Hessian-vector products used (one per probe or unit vector).
        samples: Probes used (the n unit vectors of the exact diagonal).
        converged: True when ‖stderr‖₂ ≤ ``tol`` · ‖values‖₂ (always for the exact diagonal);
            False when the run stopped at its cap of ``max_samples`` probes first.
        method: ``"exact"`` or ``"hutchinson"``.
        n_params: The operator's dimension (the block's, with ``variables=``).
        tol: The requested norm-wise relative standard error.
        max_samples: The cap on probes (``samples`` of ``hessian_diagonal``).
        variables: The paths of the variables, in model order.
        shapes: Their shapes, aligned with ``variables``.
        precision: The dtype the products were computed in (``Objective.precision``).
        backend: The Keras backend they were computed on (``Objective.backend``).
        curvature: ``"hessian"`` or ``"ggn"``.
    """

    values: np.ndarray = field(repr=False)
    stderr: np.ndarray = field(repr=False)
    n_hvp: int
    samples: int
    converged: bool
    method: str
    n_params: int
    tol: float = float("nan")
    max_samples: int | None = None
    variables: tuple[str, ...] = ()
    shapes: tuple[tuple[int, ...], ...] = field(default=(), repr=False)
    precision: str | None = None
    backend: str | None = None
    curvature: str = "hessian"

    @property
    def capped(self) -> bool:
        """True when the run stopped at its cap of probes before reaching ``tol``."""
        return not self.converged

    def _split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        parts = np.split(flat, np.cumsum(sizes)[:-1])
        return {p: a.reshape(s) for p, a, s in zip(self.variables, parts, self.shapes)}

    def by_variable(self) -> dict[str, np.ndarray]:
        """``{path: the diagonal entries of that variable, in its shape}``."""
        return self._split(self.values)

    def stderr_by_variable(self) -> dict[str, np.ndarray]:
        """``{path: the standard errors of that variable's entries, in its shape}``."""
        return self._split(self.stderr)

    def as_dict(self, *, values: bool = False) -> dict[str, Any]:
        """JSON-ready: how the diagonal was computed and a summary per variable (its
        entries' sum, i.e. the block's trace, mean, min, max and largest standard error);
        with ``values=True`` also each variable's entries and standard errors as nested lists
        (large for a large model)."""
        errors = self.stderr_by_variable()
        rows = {}
        for path, d in self.by_variable().items():
            rows[path] = {
                "shape": list(d.shape),
                "sum": float(d.sum()),
                "mean": float(d.mean()),
                "min": float(d.min()),
                "max": float(d.max()),
                "max_stderr": float(errors[path].max()),
            }
            if values:
                rows[path] |= {"values": d.tolist(), "stderr": errors[path].tolist()}
        return plain(
            {  # an entry's infinite standard error (one probe) as None
                "method": self.method,
                "curvature": self.curvature,
                **_estimator_fields(self),
                "trace": float(self.values.sum()),
                "variables": rows,
            }
        )


@one_blas_thread
def hessian_diagonal(
    objective: Objective,
    *,
    curvature: Curvature = "hessian",
    method: DiagonalMethod = "auto",
    samples: int = TRACE_SAMPLES,
    tol: float = TRACE_TOL,
    variables=None,
    seed: int | None = None,
    split: Split = "train",
    hvp_mode: HVPMode = "auto",
    verbose: int = 0,
) -> DiagonalResult:
    """The diagonal of the loss's Hessian H (or GGN G): exactly, or by Hutchinson's estimator.

    The exact diagonal takes Hᵢᵢ = (H eᵢ)ᵢ from the n unit vectors of the operator's dimension
    (the block's parameters with ``variables``, else the whole model's): n products, rounding
    error only, ``stderr`` 0. Hutchinson's diagonal estimator (Bekas et al. 2007) is the mean
    of z ⊙ Hz over Rademacher probes z (zᵢ² = 1, so no division is needed): entry i has mean
    Hᵢᵢ and per-probe variance Σ_{j≠i} Hᵢⱼ², hence a standard error per entry (sample
    standard deviation / √samples). It is exact from the first probe for a diagonal H, and
    noisy where the off-diagonal part dominates a row. It stops when ‖stderr‖₂ ≤
    ``tol`` · ‖estimate‖₂ (a norm-wise relative standard error, checked from
    ``TRACE_MIN_SAMPLES`` probes on; single entries near zero can stay relatively
    uncertain), or after ``samples`` probes. ``method="auto"`` computes the exact diagonal
    whenever n ≤ ``samples``: no more products than the estimator was allowed to spend, and
    no error.

    With ``variables``, the diagonal is that of the block H_BB: the same entries as H's own
    diagonal on those variables; its Hutchinson estimate is less noisy than the full
    operator's, since only the block's off-diagonal entries add variance. Entries sum to
    ``hessian_trace``'s trace of the same operator (the probes are drawn the same way: with
    the same ``seed`` and number of probes, the sums agree to rounding).

    Args:
        objective: The loss; H is taken w.r.t. its trainable variables at w0.
        curvature: ``"hessian"`` (H) or ``"ggn"``: the generalized Gauss-Newton matrix
            G = Jᵀ H_ℓ J (see ``hessian_eigenvalues``; ``hvp_mode`` is not used). Defaults
            to ``"hessian"``.
        method: ``"auto"`` (exact when n ≤ ``samples``, else Hutchinson), ``"exact"`` (n
            products whatever n is) or ``"hutchinson"`` (random probes even for a small n).
            Defaults to ``"auto"``.
        samples: The cap on probes (one product each), which bounds the time; with
            ``method="auto"``, also the largest n computed exactly. Defaults to
            ``TRACE_SAMPLES`` (100, as ``hessian_trace``).
        tol: Norm-wise relative standard error at which the probes stop. Defaults to 0.05.
        variables: A block of the trainable variables: a layer, a layer name, a regular
            expression on the paths or a list of paths / variables (see
            ``hessian_eigenvalues``). Defaults to None (all).
        seed: Seed of the probes. Defaults to None (fresh entropy).
        split: Data split of the objective. Defaults to ``"train"``.
        hvp_mode: See ``Objective.hessian_vector_product``. Defaults to ``"auto"``.
        verbose: 1 or 2 shows a ``keras.utils.Progbar`` over products, with the estimate's
            sum (``trace``) and, from the second probe on, the relative standard error
            (``rel_stderr``). Defaults to 0.

    Returns:
        A ``DiagonalResult``: ``values`` and ``stderr`` flat, ``by_variable()`` and
        ``stderr_by_variable()`` split by variable path, ``n_hvp``, ``samples``,
        ``converged``, ``method``; ``as_dict()`` for JSON.

    Raises:
        ValueError: a bad argument (named: ``samples`` below 1, ``tol`` outside (0, 1), an
            unknown ``method`` or ``curvature``, a ``variables`` that selects nothing, a loss
            without a GGN), before any product.

    Example:
        >>> diag = landscape.hessian_diagonal(obj, variables="dense", seed=0)
        >>> diag.by_variable()["dense/kernel"], diag.stderr_by_variable()["dense/kernel"]

    References:
        Bekas, Kokiopoulou & Saad 2007, "An estimator for the diagonal of a matrix",
        Applied Numerical Mathematics 57(11-12), https://doi.org/10.1016/j.apnum.2007.01.003.
        Martens 2014, https://arxiv.org/abs/1412.1193 (the GGN).
    """
    method = _checks.choice("method", method, DiagonalMethod)
    samples = _checks.integer("samples", samples, 1)
    tol = _checks.fraction("tol", tol)
    op = _Hessian(objective, split, hvp_mode, variables=variables, curvature=curvature)
    if method == "exact" or (method == "auto" and op.n <= samples):
        values, stderr, converged, method = _exact_trace(op, verbose), np.zeros(op.n), True, "exact"
        used = op.n
        logger.info("Diagonal of %s: exact, %d products", op.curvature, op.n_hvp)
    else:
        values, stderr, used, converged = _diagonal_probes(op, samples, tol, seed, verbose)
        method = "hutchinson"
    by_path = dict(zip(objective.trainable_variables.paths, objective.trainable_variables))
    return DiagonalResult(
        values=values,
        stderr=stderr,
        n_hvp=op.n_hvp,
        samples=used,
        converged=converged,
        method=method,
        n_params=op.n,
        tol=tol,
        max_samples=samples,
        variables=op.paths,
        shapes=tuple(tuple(int(d) for d in by_path[p].shape) for p in op.paths),
        precision=op.objective.precision,
        backend=op.objective.backend,
        curvature=op.curvature,
    )


def _relative(stderr: np.ndarray, mean: np.ndarray) -> float:
    """‖stderr‖₂ / ‖mean‖₂ (0 for a zero error, inf for an error on a zero estimate)."""
    error, size = float(np.linalg.norm(stderr)), float(np.linalg.norm(mean))
    return error / size if size else (0.0 if error == 0 else np.inf)


def _diagonal_probes(op: _Hessian, samples: int, tol: float, seed, verbose: int):
    """Hutchinson's diagonal estimator, mean and variance kept by Welford's recurrence (three
    n-vectors, no probe stored): (estimate, stderr, probes, converged)."""
    rng = np.random.default_rng(seed)
    bar = progbar(samples if samples <= TRACE_MIN_SAMPLES else None, verbose, "probe")
    mean, m2 = np.zeros(op.n), np.zeros(op.n)
    stderr = np.full(op.n, np.inf)
    converged, used = False, 0
    for i in range(samples):
        z = rademacher(rng, op.n)
        d = z * op(z)
        used = i + 1
        delta = d - mean
        mean += delta / used
        m2 += delta * (d - mean)
        if i:
            stderr = np.sqrt(m2 / (i * used))
        relative = _relative(stderr, mean) if i else np.inf
        if bar is not None:
            shown = [("trace", float(mean.sum()))] + ([("rel_stderr", relative)] if i else [])
            bar.update(used, shown, finalize=False)
        if used >= min(TRACE_MIN_SAMPLES, samples) and relative <= tol:
            converged = True
            break
    finish(bar, used)
    logger.info("Diagonal estimated from %d probes, relative standard error %.2g", used, relative)
    if not converged:
        logger.warning(
            "hessian_diagonal stopped at its cap of samples=%d probes with a norm-wise "
            "relative standard error of %.2g > tol=%g; raise samples or tol.",
            samples, relative, tol,
        )  # fmt: skip
    return mean, stderr, used, converged
