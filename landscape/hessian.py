"""The Hessian of an ``Objective``: eigenvalues with certificates, trace and spectral density.

Everything here is built on ``Objective.hessian_vector_product``: exact products ``H v`` of the
full-data, sample-weighted loss in inference mode (see ``landscape.objective``), with respect to
the trainable weights, summed in float64. The algorithms work on flat float64 vectors of
``n_params`` entries and count every product they use (``n_hvp``).

- ``hessian_eigenvalues``: Lanczos with full reorthogonalization (default), which stops when the
  Ritz residual ‖Hv − λv‖ ≤ tol·|λ| for all wanted pairs; ``"arpack"`` (scipy ``eigsh``, implicit
  restarts, bounded memory); or ``"power"``, power iteration stopped PyHessian's way (relative
  change of λ below tol), for comparison. Every result carries residuals recomputed with fresh
  products: a certificate, not a promise.
- ``hessian_trace``: Hutchinson's estimator with Rademacher probes, stopped on its standard error.
- ``hessian_spectrum``: stochastic Lanczos quadrature (SLQ) of the spectral density.

References:
    Ghorbani, Krishnan & Xiao 2019, "An Investigation into Neural Net Optimization via Hessian
    Eigenvalue Density", https://arxiv.org/abs/1901.10159.
    Yao, Gholami, Keutzer & Mahoney 2020, "PyHessian: Neural Networks Through the Lens of the
    Hessian", https://arxiv.org/abs/1912.07145.
    Hutchinson 1990, "A stochastic estimator of the trace of the influence matrix".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

from landscape import _checks
from landscape._checks import HVPMode, Method, Split, Which
from landscape._progress import finish, progbar
from landscape.directions import Direction
from landscape.objective import Objective

logger = logging.getLogger("landscape")

HVP_MODES = _checks.options(HVPMode)
METHODS = _checks.options(Method)
WHICH = _checks.options(Which)

# Lanczos stops on an invariant subspace when β_j ≤ BREAKDOWN · max|θ| (β = 0 in exact arithmetic).
BREAKDOWN = 1e-12
# A relative change of λ is measured as |Δλ| / (|λ| + POWER_EPS), as PyHessian does.
POWER_EPS = 1e-6
# Hutchinson checks its standard error only once it has this many probes.
TRACE_MIN_SAMPLES = 10
# Default width of the smoothed density: this fraction of the spread of the SLQ nodes.
SIGMA_FRACTION = 0.01


# ------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class EigenResult:
    """Eigenpairs of the Hessian and how far to trust them.

    Attributes:
        values: The eigenvalues, ordered as asked: ``which="largest"`` descending (algebraic),
            ``"magnitude"`` by descending |λ|, ``"smallest"`` ascending (most negative first).
        vectors: Unit-norm eigenvectors as ``Direction``s keyed by the trainable variables'
            paths (usable as surface directions: ``compute_surface(obj, [eig.vectors[0]])``).
        residuals: ``‖H v − λ v‖ / |λ|`` for each pair, recomputed with fresh products.
        n_hvp: Hessian-vector products used, including the ones for the residuals.
        converged: True when every residual is ≤ ``tol``.
        which: ``"largest"``, ``"magnitude"`` or ``"smallest"``.
        method: ``"lanczos"``, ``"arpack"`` or ``"power"``.
        tol: The requested tolerance.
        n_params: Dimension of the Hessian (number of trainable scalars).
    """

    values: np.ndarray
    vectors: list[Direction]
    residuals: np.ndarray
    n_hvp: int
    converged: bool
    which: str
    method: str
    tol: float
    n_params: int


@dataclass(frozen=True)
class TraceResult:
    """Hutchinson's estimate of tr(H).

    Attributes:
        estimate: Mean of the probe values zᵀHz.
        stderr: Standard error of that mean (sample standard deviation / √samples).
        n_hvp: Hessian-vector products used (one per probe).
        samples: Number of probes used.
        converged: True when ``stderr ≤ tol · |estimate|``.
        values: The individual probe values zᵀHz.
        n_params: Dimension of the Hessian.
    """

    estimate: float
    stderr: float
    n_hvp: int
    samples: int
    converged: bool
    values: np.ndarray = field(repr=False)
    n_params: int = 0


@dataclass(frozen=True)
class SpectrumResult:
    """The Hessian's spectral density by stochastic Lanczos quadrature.

    Run r gives the quadrature measure Σⱼ weights[r, j] δ(t − nodes[r, j]) (weights of a run sum
    to 1); the estimate of the density is their average over runs.

    Attributes:
        nodes: ``(runs, steps)`` Ritz values of each run (a run that found an invariant subspace
            early is padded with weight-0 nodes).
        weights: ``(runs, steps)`` squared first components of the Ritz vectors.
        n_params: Dimension of the Hessian.
        n_hvp: Hessian-vector products used.
    """

    nodes: np.ndarray
    weights: np.ndarray
    n_params: int
    n_hvp: int

    def default_sigma(self) -> float:
        """``SIGMA_FRACTION`` of the spread of the nodes (or of their size if they coincide)."""
        used = self.nodes[self.weights > 0]
        spread = float(np.ptp(used)) if used.size else 0.0
        if spread == 0.0:
            spread = float(np.max(np.abs(used))) if used.size else 0.0
        return SIGMA_FRACTION * spread if spread > 0 else 1.0

    def default_grid(self, num: int = 1000, *, sigma: float | None = None) -> np.ndarray:
        """``num`` points covering the nodes with a margin of 5 σ on each side."""
        sigma = self.default_sigma() if sigma is None else sigma
        used = self.nodes[self.weights > 0]
        return np.linspace(used.min() - 5 * sigma, used.max() + 5 * sigma, num)

    def density(self, grid, *, sigma: float | None = None) -> np.ndarray:
        """The Gaussian-smoothed density ``(1/runs) Σ_r Σ_j w_rj N(t; θ_rj, σ²)`` on ``grid``.

        Args:
            grid: Points t at which to evaluate (any shape).
            sigma: Standard deviation of the Gaussian kernel. Defaults to None: 1 % of the
                spread of the nodes (``default_sigma``).

        Returns:
            The density at ``grid`` (same shape); it integrates to 1 over a grid that covers the
            nodes with a few σ of margin and resolves σ.
        """
        sigma = self.default_sigma() if sigma is None else float(sigma)
        if not sigma > 0:
            raise ValueError(f"Argument `sigma` must be > 0. Received: sigma={sigma}.")
        t = np.asarray(grid, np.float64)
        nodes, weights = self.nodes.reshape(-1), self.weights.reshape(-1) / self.nodes.shape[0]
        keep = weights > 0
        nodes, weights = nodes[keep], weights[keep]
        z = (t.reshape(-1, 1) - nodes) / sigma
        dens = (np.exp(-0.5 * z**2) @ weights) / (sigma * np.sqrt(2 * np.pi))
        return dens.reshape(t.shape)

    def mean(self) -> float:
        """Mean of the spectral measure, an estimate of tr(H) / n_params."""
        return float(np.sum(self.nodes * self.weights) / self.nodes.shape[0])


# ----------------------------------------------------------------------------- the operator
class _Hessian:
    """H as a float64 operator on flat vectors; counts products and reports progress."""

    def __init__(self, objective: Objective, split: Split, mode: HVPMode):
        if not isinstance(objective, Objective):
            raise ValueError(
                "Argument `objective` must be a landscape.Objective. "
                f"Received: objective={type(objective).__name__}."
            )
        _checks.choice("hvp_mode", mode, HVPMode)
        if split not in objective.splits:
            raise ValueError(f"Unknown split {split!r}; expected one of {objective.splits}.")
        self.objective, self.split, self.mode = objective, split, mode
        self.flat = objective.flat
        if not self.flat.n:
            raise ValueError("The objective's model has no trainable floating-point variables.")
        self.n = self.flat.n
        self.n_hvp = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.n_hvp += 1
        hv = self.objective.hessian_vector_product(
            self.flat.split(x), split=self.split, mode=self.mode
        )
        return self.flat.concat(hv)

    def direction(self, x: np.ndarray, metadata: dict) -> Direction:
        return self.flat.direction(x, metadata)


def _order(values: np.ndarray, which: str) -> np.ndarray:
    """Indices of ``values`` in the order ``which`` asks for (best first)."""
    if which == "largest":
        return np.argsort(-values, kind="stable")
    if which == "smallest":
        return np.argsort(values, kind="stable")
    return np.argsort(-np.abs(values), kind="stable")


def _residuals(op: _Hessian, values: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """‖H v − λ v‖ / |λ| with a fresh product for each pair (inf for λ = 0)."""
    out = []
    for lam, v in zip(values, vectors):
        r = float(np.linalg.norm(op(v) - lam * v))
        out.append(r / abs(lam) if lam != 0 else np.inf)
    return np.asarray(out)


# ------------------------------------------------------------------------------ eigenvalues
def _lanczos_step(op: _Hessian, q: list, alpha: list, beta: list) -> np.ndarray:
    """One Lanczos step from q[-1] with full reorthogonalization: appends α_j and β_j.

    Returns the unnormalized next vector w (q_{j+1} = w / β_j). The basis is a list, so memory
    grows with the steps taken, not with ``max_iter``.
    """
    j = len(alpha)
    w = op(q[j])
    alpha.append(float(q[j] @ w))
    w -= alpha[j] * q[j]
    if j:
        w -= beta[j - 1] * q[j - 1]
    for _ in range(2):  # full reorthogonalization (modified Gram-Schmidt), twice is enough
        for u in q:
            w -= (u @ w) * u
    beta.append(float(np.linalg.norm(w)))
    return w


def _lanczos(op, v0, k, which, tol, max_iter, bar):
    """Lanczos with full reorthogonalization, stopped on the Ritz residual estimates.

    The residual of a Ritz pair (θᵢ, Q sᵢ) after j steps is |β_j · sᵢ[j]| (exact, up to rounding,
    with full reorthogonalization), so convergence is checked after every product.
    """
    q, alpha, beta = [v0 / np.linalg.norm(v0)], [], []
    converged = False
    for j in range(min(max_iter, op.n)):
        w = _lanczos_step(op, q, alpha, beta)
        theta, s = scipy.linalg.eigh_tridiagonal(np.array(alpha), np.array(beta[:-1]))
        idx = _order(theta, which)[:k]
        scale = np.maximum(np.abs(theta[idx]), np.finfo(float).tiny)
        estimates = np.abs(beta[j] * s[j, idx]) / scale
        if bar is not None:  # the quantity that stops the run: the largest relative residual
            shown = [("lambda", theta[idx[0]]), ("residual", estimates.max())]
            bar.update(j + 1, shown, finalize=False)
        invariant = beta[j] <= BREAKDOWN * max(np.abs(theta).max(), np.finfo(float).tiny)
        if (len(idx) == k and np.all(estimates <= tol)) or invariant or j + 1 == op.n:
            converged = len(idx) == k
            break
        q.append(w / beta[j])
    finish(bar, len(alpha))
    logger.debug("Lanczos: %d steps, stopped on convergence: %s", len(alpha), converged)
    vectors = np.zeros((len(idx), op.n))
    for i, u in enumerate(q[: len(alpha)]):
        vectors += np.outer(s[i, idx], u)
    return theta[idx], vectors


def _arpack(op, v0, k, which, tol, max_iter, bar):
    start = op.n_hvp

    def matvec(x):
        hx = op(x)
        if bar is not None:  # a count of products only: ARPACK reports no estimate on the way
            bar.update(op.n_hvp - start, finalize=False)
        return hx

    linear = scipy.sparse.linalg.LinearOperator((op.n, op.n), matvec=matvec, dtype=np.float64)
    mode = {"largest": "LA", "magnitude": "LM", "smallest": "SA"}[which]
    try:
        values, vectors = scipy.sparse.linalg.eigsh(
            linear, k=k, which=mode, tol=tol, maxiter=max_iter, v0=v0
        )
    except scipy.sparse.linalg.ArpackNoConvergence as err:
        logger.warning("ARPACK did not converge: %s", err)
        values, vectors = err.eigenvalues, err.eigenvectors
    finish(bar, op.n_hvp - start)
    idx = _order(values, which)
    return values[idx], vectors[:, idx].T


def _power(op, v0, k, tol, max_iter, rng, bar):
    """Power iteration with deflation, stopped as PyHessian does: |Δλ| / (|λ| + 1e-6) < tol."""
    values, vectors, products = [], [], 0
    for i in range(k):
        v = v0 if i == 0 else rng.standard_normal(op.n)
        v /= np.linalg.norm(v)
        lam = None
        for _ in range(max_iter):
            for u in vectors:  # deflation: stay orthogonal to the pairs already found
                v -= (u @ v) * u
            v /= np.linalg.norm(v)
            hv = op(v)
            new = float(hv @ v)
            v = hv / np.linalg.norm(hv)
            products += 1
            if bar is not None:
                _show_power(bar, products, i, lam, new)
            if lam is not None and abs(lam - new) / (abs(lam) + POWER_EPS) < tol:
                lam = new
                break
            lam = new
        values.append(lam)
        vectors.append(v)
    finish(bar, products)
    return np.asarray(values), np.asarray(vectors)


def _show_power(bar, products: int, i: int, previous: float | None, new: float) -> None:
    """Products so far, λ and its relative change (the quantity that stops the iteration).

    The change is defined from an eigenvalue's second iteration on; the bar is not updated on
    the first iteration of a later eigenvalue, so that it never shows the previous one's change.
    """
    if previous is None:
        if i == 0:
            bar.update(products, [("lambda", new)], finalize=False)
        return
    change = abs(previous - new) / (abs(previous) + POWER_EPS)
    bar.update(products, [("lambda", new), ("change", change)], finalize=False)


def hessian_eigenvalues(
    objective: Objective,
    k: int = 1,
    *,
    method: Method = "lanczos",
    which: Which = "largest",
    tol: float = 1e-4,
    max_iter: int | None = None,
    seed: int | None = None,
    split: Split = "train",
    hvp_mode: HVPMode = "backward_over_backward",
    verbose: int = 0,
) -> EigenResult:
    """The ``k`` extreme eigenvalues of the loss's Hessian and their eigenvectors.

    Args:
        objective: The loss; H is taken w.r.t. its trainable variables at w0.
        k: Number of eigenpairs. Defaults to 1.
        method: ``"lanczos"``: Lanczos with full reorthogonalization in float64, stopped as
            soon as every wanted Ritz pair has ‖Hv − θv‖ ≤ tol·|θ| (checked after every
            product; keeps up to ``max_iter`` vectors of ``n_params`` floats). ``"arpack"``:
            scipy's ``eigsh`` (implicitly restarted Lanczos, bounded memory, convergence
            checked once per restart cycle, so usually more products). ``"power"``: power
            iteration with deflation, stopped on a relative change of λ below ``tol`` as
            PyHessian does; it converges to the eigenvalues of largest |λ| and stops early on
            close eigenvalues (kept for comparison; see the residuals). Defaults to
            ``"lanczos"``.
        which: ``"largest"`` (largest algebraic: the sharpest directions), ``"magnitude"``
            (largest |λ|) or ``"smallest"`` (most negative: negative curvature, saddles).
            ``method="power"`` supports ``"magnitude"`` and ``"largest"`` (where it assumes
            the dominant eigenvalue is positive). Defaults to ``"largest"``.
        tol: Relative tolerance: the residual ‖Hv − λv‖ / |λ| for ``"lanczos"`` and
            ``"arpack"``, the relative change of λ for ``"power"``. Defaults to 1e-4.
        max_iter: Most products per Lanczos run (the Krylov dimension), ARPACK restarts, or
            power iterations per eigenvalue. Defaults to None: 300 for Lanczos (capped at
            ``n_params``), ``10 · n_params`` for ARPACK, 100 for power (PyHessian's default).
        seed: Seed of the random start vector. Defaults to None (fresh entropy).
        split: Data split of the objective. Defaults to ``"train"``.
        hvp_mode: How products are computed, see ``Objective.hessian_vector_product``.
            Defaults to ``"backward_over_backward"`` (measured faster in TensorFlow).
        verbose: 1 or 2 shows a ``keras.utils.Progbar`` over Hessian-vector products, aimed
            at the cap (``max_iter`` for Lanczos, at most ``n_params``; ``k · max_iter`` for
            power iteration; open for ARPACK), which a converging run stops short of. Lanczos
            shows the leading Ritz value (``lambda``) and the largest relative residual of the
            wanted pairs (``residual``, the quantity compared with ``tol``); power iteration
            shows λ and its relative change (``change``, compared with ``tol``); ARPACK only
            counts. Defaults to 0.

    Returns:
        An ``EigenResult`` (``values``, ``vectors``, ``residuals``, ``n_hvp``, ``converged``);
        ``converged`` is True only when every recomputed residual is ≤ ``tol`` (for power
        iteration, whose rule looks at λ only, it usually is not).

    Example:
        >>> eig = hessian_eigenvalues(obj, k=3, seed=0)
        >>> eig.values, eig.residuals, eig.converged
        >>> neg = hessian_eigenvalues(obj, which="smallest")    # negative curvature?
        >>> surf = compute_surface(obj, [eig.vectors[0]], x="-1:1:51")
    """
    method = _checks.choice("method", method, Method)
    which = _checks.choice("which", which, Which)
    tol = _checks.fraction("tol", tol)
    op = _Hessian(objective, split, hvp_mode)
    k, max_iter = _eigen_sizes(op, k, method, which, max_iter)
    values, vectors = _solve(op, k, method, which, tol, max_iter, seed, verbose)
    return _eigen_result(op, values, vectors, k=k, method=method, which=which, tol=tol)


def _eigen_sizes(op: _Hessian, k, method: str, which: str, max_iter) -> tuple[int, int]:
    """Checked ``k`` and ``max_iter`` (its default per method)."""
    k = _checks.integer("k", k, 1)
    if k > op.n or (method == "arpack" and k >= op.n):
        raise ValueError(
            f"Argument `k` must be at most the number of parameters ({op.n}"
            f"{', exclusive, for ARPACK' if method == 'arpack' else ''}). Received: k={k}."
        )
    if method == "power" and which == "smallest":
        raise ValueError(
            "Argument `which='smallest'` is not available with method='power' (power "
            "iteration finds the largest |λ|); use method='lanczos'."
        )
    if max_iter is None:
        max_iter = {"lanczos": min(300, op.n), "arpack": 10 * op.n, "power": 100}[method]
    return k, _checks.integer("max_iter", max_iter, 1)


def _solve(op: _Hessian, k, method, which, tol, max_iter, seed, verbose):
    """(values, vectors as rows) from the chosen method, started from a seeded random vector."""
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(op.n)
    # The target is the cap on products (a run usually stops before it); ARPACK's is unknown.
    target = {"lanczos": min(max_iter, op.n), "arpack": None, "power": k * max_iter}[method]
    bar = progbar(target, verbose, "product")
    if method == "lanczos":
        return _lanczos(op, v0, k, which, tol, max_iter, bar)
    if method == "arpack":
        return _arpack(op, v0, k, which, tol, max_iter, bar)
    values, vectors = _power(op, v0, k, tol, max_iter, rng, bar)
    if which == "largest" and np.any(values < 0):
        logger.warning(
            "Power iteration found a dominant negative eigenvalue (%s): it is the largest "
            "|λ|, not the largest algebraic; use method='lanczos'.",
            values.min(),
        )
    return values, vectors


def _eigen_result(op: _Hessian, values, vectors, *, k, method, which, tol) -> EigenResult:
    """Fresh residual certificates, the vectors as Directions, and the result."""
    residuals = _residuals(op, values, vectors)
    converged = bool(len(values) == k and np.all(residuals <= tol))
    logger.info(
        "Hessian eigenvalues (%s, %s): %s, residuals %s, %d products",
        method,
        which,
        values,
        residuals,
        op.n_hvp,
    )
    directions = [
        op.direction(
            v, {"kind": "hessian_eigenvector", "eigenvalue": float(lam), "index": i, "which": which}
        )
        for i, (lam, v) in enumerate(zip(values, vectors))
    ]
    return EigenResult(
        values=np.asarray(values, np.float64),
        vectors=directions,
        residuals=residuals,
        n_hvp=op.n_hvp,
        converged=converged,
        which=which,
        method=method,
        tol=tol,
        n_params=op.n,
    )


# ------------------------------------------------------------------------------------ trace
def hessian_trace(
    objective: Objective,
    *,
    samples: int = 1000,
    tol: float = 1e-2,
    seed: int | None = None,
    split: Split = "train",
    hvp_mode: HVPMode = "backward_over_backward",
    verbose: int = 0,
) -> TraceResult:
    """tr(H) by Hutchinson's estimator: the mean of zᵀHz over Rademacher probes z.

    Stops when the standard error of the mean is at most ``tol · |estimate|`` (checked from
    ``TRACE_MIN_SAMPLES`` probes on), or after ``samples`` probes. PyHessian stops on the
    change of the running mean instead, which can be small while the estimate is still far off.

    Args:
        objective: The loss; H is taken w.r.t. its trainable variables at w0.
        samples: Most probes (one product each). Defaults to 1000.
        tol: Relative standard error to reach. Defaults to 1e-2.
        seed: Seed of the probes. Defaults to None (fresh entropy).
        split: Data split of the objective. Defaults to ``"train"``.
        hvp_mode: See ``Objective.hessian_vector_product``. Defaults to
            ``"backward_over_backward"``.
        verbose: 1 or 2 shows a ``keras.utils.Progbar`` over probes: the running estimate
            (``trace``) and, from the second probe on, its standard error (``stderr``). Its
            length is open (the stopping probe is not known in advance) unless ``samples`` is
            at most ``TRACE_MIN_SAMPLES``. Defaults to 0.

    Returns:
        A ``TraceResult`` (``estimate``, ``stderr``, ``n_hvp``, ``samples``, ``converged``).
    """
    samples = _checks.integer("samples", samples, 1)
    tol = _checks.fraction("tol", tol)
    op = _Hessian(objective, split, hvp_mode)
    rng = np.random.default_rng(seed)
    # The run stops at an unknown probe; only a cap it cannot stop before is a known target.
    bar = progbar(samples if samples <= TRACE_MIN_SAMPLES else None, verbose, "probe")
    values: list[float] = []
    estimate, stderr, converged = 0.0, np.inf, False
    for i in range(samples):
        z = rng.choice(np.array([-1.0, 1.0]), size=op.n)
        values.append(float(z @ op(z)))
        estimate = float(np.mean(values))
        stderr = float(np.std(values, ddof=1) / np.sqrt(len(values))) if i else np.inf
        if bar is not None:  # the standard error is defined from the second probe on
            shown = [("trace", estimate), ("stderr", stderr)] if i else [("trace", estimate)]
            bar.update(i + 1, shown, finalize=False)
        if len(values) >= min(TRACE_MIN_SAMPLES, samples) and stderr <= tol * abs(estimate):
            converged = True
            break
    finish(bar, len(values))
    logger.info("Hessian trace %.6g ± %.2g (%d probes)", estimate, stderr, len(values))
    return TraceResult(
        estimate=estimate,
        stderr=stderr,
        n_hvp=op.n_hvp,
        samples=len(values),
        converged=converged,
        values=np.asarray(values),
        n_params=op.n,
    )


# --------------------------------------------------------------------------------- spectrum
def _slq_run(op: _Hessian, v0: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """One Lanczos run of ``steps`` products from v0: Gauss quadrature nodes and weights."""
    q, alpha, beta = [v0 / np.linalg.norm(v0)], [], []
    for j in range(steps):
        w = _lanczos_step(op, q, alpha, beta)
        if j + 1 == steps:
            break
        if beta[j] <= BREAKDOWN * max(np.abs(alpha).max(), np.finfo(float).tiny):
            break  # invariant subspace: the quadrature is exact
        q.append(w / beta[j])
    m = len(alpha)
    theta, s = scipy.linalg.eigh_tridiagonal(np.array(alpha), np.array(beta[: m - 1]))
    nodes = np.full(steps, theta[0])
    weights = np.zeros(steps)
    nodes[:m], weights[:m] = theta, s[0] ** 2
    return nodes, weights


def hessian_spectrum(
    objective: Objective,
    *,
    steps: int = 80,
    runs: int = 10,
    seed: int | None = None,
    split: Split = "train",
    hvp_mode: HVPMode = "backward_over_backward",
    verbose: int = 0,
) -> SpectrumResult:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    Each run starts Lanczos (full reorthogonalization, float64) from a normalized Rademacher
    vector v; the eigen-decomposition T = S Θ Sᵀ of the ``steps × steps`` tridiagonal matrix
    gives a Gauss quadrature of vᵀ f(H) v with nodes Θ and weights S[0, :]². The average over
    runs estimates the spectral measure (1/n) Σᵢ δ(t − λᵢ); its mean is a Hutchinson estimate
    of tr(H)/n.

    Args:
        objective: The loss; H is taken w.r.t. its trainable variables at w0.
        steps: Lanczos steps (products) per run, capped at ``n_params``. Defaults to 80.
        runs: Independent runs (probe vectors). Defaults to 10.
        seed: Seed of the Rademacher start vectors of the runs. Defaults to None (fresh
            entropy).
        split: Data split of the objective. Defaults to ``"train"``.
        hvp_mode: See ``Objective.hessian_vector_product``. Defaults to
            ``"backward_over_backward"``.
        verbose: 1 or 2 shows a ``keras.utils.Progbar`` over runs, with the largest node of
            the runs so far (``lambda_max``, a lower bound of the top eigenvalue). Defaults
            to 0.

    Returns:
        A ``SpectrumResult`` with ``nodes`` and ``weights`` of shape ``(runs, steps)`` and
        ``density(grid, sigma=None)``.
    """
    steps = _checks.integer("steps", steps, 1)
    runs = _checks.integer("runs", runs, 1)
    op = _Hessian(objective, split, hvp_mode)
    if steps > op.n:
        logger.info("hessian_spectrum: steps=%d capped at n_params=%d", steps, op.n)
        steps = op.n
    rng = np.random.default_rng(seed)
    bar = progbar(runs, verbose, "run")
    nodes, weights = np.zeros((runs, steps)), np.zeros((runs, steps))
    for r in range(runs):
        v0 = rng.choice(np.array([-1.0, 1.0]), size=op.n)
        nodes[r], weights[r] = _slq_run(op, v0, steps)
        if bar is not None:  # the largest Ritz value of all runs so far: λ_max from below
            bar.update(r + 1, [("lambda_max", float(nodes[: r + 1].max()))])
    logger.info("Hessian spectrum: %d runs of %d steps, %d products", runs, steps, op.n_hvp)
    return SpectrumResult(nodes=nodes, weights=weights, n_params=op.n, n_hvp=op.n_hvp)
