"""The Hessian of an ``Objective``: eigenvalues with certificates, trace and spectral density.

Everything here is built on ``Objective.hessian_vector_product``: exact products ``H v`` of the
full-data, sample-weighted loss in inference mode (see ``landscape.objective``), with respect to
the trainable weights, summed in float64. The algorithms work on flat float64 vectors of
``n_params`` entries and count every product they use (``n_hvp``).

- ``hessian_eigenvalues``: thick-restart Lanczos (default; Wu & Simon 2000) with full
  reorthogonalization in a basis of fixed size, so memory is bounded, which stops when the Ritz
  residual ‖Hv − λv‖ ≤ tol·|λ| for all wanted pairs; ``"arpack"`` (scipy ``eigsh``, implicit
  restarts); or ``"power"``, power iteration stopped PyHessian's way (relative change of λ below
  tol), for comparison. Every result carries residuals recomputed with fresh products: a
  certificate, not a promise; and says whether the run stopped at its cap (``capped``).
- ``hessian_trace``: Hutchinson's estimator with Rademacher probes, stopped on its standard error,
  or Hutch++ (a low-rank sketch traced exactly plus Hutchinson on the rest); exact (Σᵢ eᵢᵀHeᵢ,
  n unit-vector products) when n is no larger than its cap of products.
- ``hessian_spectrum``: stochastic Lanczos quadrature (SLQ) of the spectral density.

Before any product, the memory a solver's basis needs is compared with ``available_memory()``
and a basis that cannot fit is refused with one ValueError.

References:
    Wu & Simon 2000, "Thick-Restart Lanczos Method for Large Symmetric Eigenvalue Problems",
    SIAM J. Matrix Anal. Appl. 22(2), 602-616, https://doi.org/10.1137/S0895479898334605.
    Ghorbani, Krishnan & Xiao 2019, "An Investigation into Neural Net Optimization via Hessian
    Eigenvalue Density", https://arxiv.org/abs/1901.10159.
    Yao, Gholami, Keutzer & Mahoney 2020, "PyHessian: Neural Networks Through the Lens of the
    Hessian", https://arxiv.org/abs/1912.07145.
    Hutchinson 1990, "A stochastic estimator of the trace of the influence matrix".
    Meyer, Musco, Musco & Woodruff 2021, "Hutch++: Optimal Stochastic Trace Estimation",
    https://arxiv.org/abs/2010.09649.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import keras
import numpy as np
import scipy.linalg
import scipy.sparse.linalg

from landscape import _checks
from landscape._checks import HVPMode, Method, Split, Which
from landscape._draws import rademacher
from landscape._progress import finish, progbar
from landscape._threads import one_blas_thread
from landscape.directions import Direction, variable_owners
from landscape.objective import LOW_PRECISIONS, Objective
from sam import _compat

logger = logging.getLogger("landscape")

HVP_MODES = _checks.options(HVPMode)
METHODS = _checks.options(Method)
WHICH = _checks.options(Which)
#: The curvature matrix of every function here: the Hessian H, or the generalized Gauss-Newton
#: matrix G = Jᵀ H_ℓ J (``Objective.gauss_newton_vector_product``; positive semi-definite).
Curvature = Literal["hessian", "ggn"]
CURVATURES = _checks.options(Curvature)
#: How ``hessian_trace`` computes tr(H): ``"exact"`` (Σᵢ eᵢᵀHeᵢ, n products), ``"hutchinson"``
#: (random probes), or ``"auto"``: exact when n is at most the cap of probes, else Hutchinson;
#: ``"hutchpp"``: exact when n is at most the cap of products, else Hutch++.
TraceMethod = Literal["auto", "exact", "hutchinson", "hutchpp"]
TRACE_METHODS = _checks.options(TraceMethod)

# Lanczos stops on an invariant subspace when β_j ≤ BREAKDOWN · max|θ| (β = 0 in exact arithmetic).
BREAKDOWN = 1e-12
# Default Lanczos basis: max(2k + BASIS_EXTRA, BASIS_MIN) vectors, capped at n_params.
BASIS_EXTRA = 10
BASIS_MIN = 20
# Default cap on the products of one thick-restart Lanczos run (all restarts together).
LANCZOS_MAX_ITER = 1000
# Default cap on ARPACK's restarts (scipy's own default, 10 · n_params, is unbounded in practice).
ARPACK_MAX_RESTARTS = 100
# n-vectors besides a basis that a solver holds at once: the next Lanczos vector, the HVP's
# float64 input and output copies, and a certificate's residual.
WORK_VECTORS = 4
#: a second Gram-Schmidt pass where the first left less than this fraction of w's norm (DGKS)
DGKS = 1.0 / np.sqrt(2.0)
# Products with a stored basis run in column blocks of this many parameters, in float64: the
# scratch memory stays bounded and a float32 basis is never copied to float64 whole.
BLOCK = 1 << 16
# A relative change of λ is measured as |Δλ| / (|λ| + POWER_EPS), as PyHessian does.
POWER_EPS = 1e-6
# A warm start adds a random vector of this relative norm to the vectors it is given.
WARM_START_NOISE = 1e-6
# Hutchinson checks its standard error only once it has this many probes.
TRACE_MIN_SAMPLES = 10
#: Default relative standard error at which Hutchinson's trace stops, everywhere (hessian_trace,
#: layer_curvature, sharpness_report, the CLI): 5 % separates models whose traces differ by more
#: than ~15 %, and costs (r / 0.05)² probes for a per-probe relative spread r (~0.36 on the CNN
#: of `landscape train`: ~50 probes), where 1 % costs 25 times as many (docs/guide/defaults.md).
TRACE_TOL = 0.05
#: Default cap on Hutchinson's probes (one product each), everywhere: it bounds the time of a
#: trace that does not converge (a capped result says so) to about a minute on the default
#: model, at twice the probes that model needs at TRACE_TOL.
TRACE_SAMPLES = 100
#: Default Lanczos steps per run and runs of hessian_spectrum (SLQ): 80 products in all.
SLQ_STEPS = 40
SLQ_RUNS = 2
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
        n_hvp: Hessian-vector products used, including the k for the residuals.
        converged: True when every residual is ≤ ``tol``.
        which: ``"largest"``, ``"magnitude"`` or ``"smallest"``.
        method: ``"lanczos"``, ``"arpack"`` or ``"power"``.
        tol: The requested tolerance.
        n_params: Dimension of the Hessian (number of trainable scalars).
        capped: True when the solver stopped at its cap ``max_iter`` before its own stopping
            rule was met (then ``converged`` is usually False: raise ``max_iter``).
        max_iter: The cap used: products of the Lanczos run, ARPACK restarts, or power
            iterations per eigenvalue.
        basis_size: The Lanczos basis m (None for the other methods).
        restarts: Thick restarts of the Lanczos run (0 for the other methods).
        precision: The dtype the products were computed in (``Objective.precision``):
            ``"float32"`` or ``"float64"``; ``"float16"`` (or ``"bfloat16"``) only when the
            Objective was asked for ``precision="model"`` on a mixed-precision model. Then
            every product carries a relative rounding error of about 1e-3 and the computed H
            is slightly non-symmetric, so residuals stay near 1e-3 and ``converged`` is
            usually False at the default ``tol``: float16 arithmetic, not the solver, is the
            likely cause (a warning says so).
        preconditioned: True when a diagonal ``preconditioner`` P was given: ``values`` are
            then the eigenvalues of P⁻¹H, and ``vectors`` and ``residuals`` those of the
            symmetric P^(-1/2) H P^(-1/2) (its eigenvectors u; P^(-1/2) u are P⁻¹H's).
        warm_start: True when the run started from given vectors (``v0``).
        backend: The Keras backend they were computed on (``Objective.backend``).
        curvature: ``"hessian"`` or ``"ggn"``: the matrix whose eigenpairs these are.
        variables: The paths (``Direction`` keys) of the variables the operator acts on, in
            model order: every trainable variable, or the block ``variables=`` selected
            (then ``n_params`` is the block's size and the vectors name these only).
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
    capped: bool = False
    max_iter: int | None = None
    basis_size: int | None = None
    restarts: int = 0
    precision: str | None = None
    backend: str | None = None
    preconditioned: bool = False
    warm_start: bool = False
    curvature: str = "hessian"
    variables: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class TraceResult:
    """tr(H): exact, or Hutchinson's or Hutch++'s estimate.

    Attributes:
        estimate: tr(H): the sum of the diagonal entries eᵢᵀHeᵢ (``method="exact"``), the
            mean of the probe values zᵀHz (``"hutchinson"``), or ``sketch_trace`` plus the
            mean of the probe values gᵀPHPg, P = I − QQᵀ (``"hutchpp"``).
        stderr: Standard error of that mean (sample standard deviation / √samples); 0 for
            the exact trace. For Hutch++ it is the residual part's (tr(QᵀHQ) has no random
            error given Q).
        n_hvp: Hessian-vector products used (one per probe or unit vector; Hutch++ adds
            2 × ``sketch``).
        samples: Number of probes used (the n unit vectors of the exact trace; Hutch++'s
            residual probes, not counting its sketch).
        converged: True when ``stderr ≤ tol · |estimate|`` (always for the exact trace);
            False when the run stopped at its cap of ``max_samples`` probes first
            (``capped``).
        values: The individual probe values zᵀHz, or the diagonal entries eᵢᵀHeᵢ.
        n_params: Dimension of the Hessian.
        tol: The requested relative standard error.
        max_samples: The cap on probes (``hessian_trace``'s ``samples``).
        precision: The dtype the products were computed in (``Objective.precision``).
        backend: The Keras backend they were computed on (``Objective.backend``).
        curvature: ``"hessian"`` or ``"ggn"``.
        variables: The paths of the variables of the (block of the) operator.
        method: ``"exact"``, ``"hutchinson"`` or ``"hutchpp"``: how the trace was computed.
        sketch: Hutch++'s sketch size k: the columns of Q (0 for the other methods).
        sketch_trace: Hutch++'s tr(QᵀHQ), the part of the estimate with no random error
            (0 for the other methods).
    """

    estimate: float
    stderr: float
    n_hvp: int
    samples: int
    converged: bool
    values: np.ndarray = field(repr=False)
    n_params: int = 0
    tol: float = float("nan")
    max_samples: int | None = None
    precision: str | None = None
    backend: str | None = None
    curvature: str = "hessian"
    variables: tuple[str, ...] = field(default=(), repr=False)
    method: str = "hutchinson"
    sketch: int = 0
    sketch_trace: float = 0.0

    @property
    def capped(self) -> bool:
        """True when the run stopped at its cap of probes before reaching ``tol``."""
        return not self.converged

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the trace, how it was computed and what it cost (not the values)."""
        return {
            "estimate": float(self.estimate),
            "stderr": float(self.stderr),
            "method": self.method,
            "sketch": int(self.sketch),
            **_estimator_fields(self),
            "curvature": self.curvature,
        }


def _estimator_fields(result) -> dict[str, Any]:
    """What a sampled estimate (``TraceResult``, ``DiagonalResult``) cost and how it stopped,
    as JSON-ready builtins: products, probes, convergence, the tolerance and cap, the size,
    precision and backend."""
    return {
        "n_hvp": int(result.n_hvp),
        "samples": int(result.samples),
        "converged": bool(result.converged),
        "capped": bool(result.capped),
        "tol": float(result.tol),
        "max_samples": result.max_samples,
        "n_params": int(result.n_params),
        "precision": result.precision,
        "backend": result.backend,
    }


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
        precision: The dtype the products were computed in (``Objective.precision``).
        backend: The Keras backend they were computed on (``Objective.backend``).
        curvature: ``"hessian"`` or ``"ggn"``.
        variables: The paths of the variables of the (block of the) operator.
    """

    nodes: np.ndarray
    weights: np.ndarray
    n_params: int
    n_hvp: int
    precision: str | None = None
    backend: str | None = None
    curvature: str = "hessian"
    variables: tuple[str, ...] = field(default=(), repr=False)

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
def _describe(variables) -> str:
    text = repr(variables)
    return text if len(text) <= 80 else f"{text[:77]}..."


def block_indices(objective: Objective, variables) -> list[int]:
    """Indices in ``objective.trainable_variables`` of the block ``variables`` selects.

    Args:
        objective: The Objective whose trainable variables are selected from.
        variables: None (all of them); a ``keras.layers.Layer`` (its trainable variables,
            nested layers included); a string: the name of a layer of the model (as a layer),
            else a regular expression searched (``re.search``) in each variable's path
            (its ``Direction`` key, e.g. ``"dense_1/kernel"``); or a sequence of paths
            (exact) and ``keras.Variable`` objects.

    Returns:
        The indices, in model order.

    Raises:
        ValueError: ``variables`` of another type, an invalid regular expression, a path or
            variable that is not a trainable variable of the objective, or a selection with
            no trainable variable in it.
    """
    trainable = objective.trainable_variables
    keys = list(trainable.paths)
    if variables is None:
        return list(range(len(trainable)))
    if isinstance(variables, str):
        variables = _named_layer(objective, variables)
    if isinstance(variables, keras.layers.Layer):
        ids = {id(v) for v in variables.trainable_variables}
        picked = [i for i, v in enumerate(trainable) if id(v) in ids]
    elif isinstance(variables, str):
        try:
            pattern = re.compile(variables)
        except re.error as error:
            raise ValueError(
                "Argument `variables` must be a layer, a layer name, a regular expression on "
                f"the variables' paths or a list of paths/variables; {error}. Received: "
                f"variables={variables!r}."
            ) from None
        picked = [i for i, key in enumerate(keys) if pattern.search(key)]
    elif isinstance(variables, Sequence) and not isinstance(variables, bytes):
        picked = _listed(trainable, keys, variables)
    else:
        raise ValueError(
            "Argument `variables` must be None, a keras Layer, a layer name, a regular "
            "expression on the variables' paths or a list of paths/variables. Received: "
            f"variables={_describe(variables)}."
        )
    if not picked:
        raise ValueError(
            "Argument `variables` must select at least one trainable variable of the "
            f"objective (paths such as {keys[:3]}). Received: variables={_describe(variables)}."
        )
    return picked


def _named_layer(objective: Objective, name: str):
    """The layer of the model called ``name`` (the variables of all, if several), else ``name``
    (then a regular expression on the paths)."""
    layers = [
        layer
        for layer in _compat.all_layers(objective.model)
        if layer.name == name and layer is not objective.model
    ]
    if not layers:
        return name
    return layers[0] if len(layers) == 1 else [v for x in layers for v in x.trainable_variables]


def _listed(trainable, keys: list[str], variables) -> list[int]:
    """Indices of the listed paths (Direction keys or ``variable.path``) and variables."""
    by_key = {key: i for i, key in enumerate(keys)}
    by_path = {v.path: i for i, v in enumerate(trainable)}
    by_id = {id(v): i for i, v in enumerate(trainable)}
    chosen = set()
    for entry in variables:
        if isinstance(entry, str):
            i = by_key.get(entry, by_path.get(entry))
        elif isinstance(entry, keras.Variable):
            i = by_id.get(id(entry))
        else:
            raise ValueError(
                "Argument `variables` must list paths (str) or keras.Variable objects. "
                f"Received an entry {entry!r} in variables={_describe(variables)}."
            )
        if i is None:
            name = entry if isinstance(entry, str) else entry.path
            raise ValueError(
                f"Argument `variables` must name trainable variables of the objective; "
                f"{name!r} is not one (see Objective.trainable_variables.paths). Received: "
                f"variables={_describe(variables)}."
            )
        chosen.add(i)
    return sorted(chosen)


class _Hessian:
    """H (or G) as a float64 operator on flat vectors; counts products and reports progress.

    With ``scale`` s (a positive flat vector), the operator is diag(s) H diag(s): for a
    diagonal preconditioner P, s = P^(-1/2) gives P^(-1/2) H P^(-1/2), whose eigenvalues are
    those of P⁻¹H. With ``variables`` (see ``block_indices``) it is the diagonal block H_BB of
    those variables: a flat vector of the block's ``n`` entries is put into a full vector that
    is zero outside the block, multiplied, and read back on the block. With
    ``curvature="ggn"`` the products are ``Objective.gauss_newton_vector_product``.
    """

    def __init__(
        self,
        objective: Objective,
        split: Split,
        mode: HVPMode,
        scale=None,
        *,
        variables=None,
        curvature: Curvature = "hessian",
    ):
        if not isinstance(objective, Objective):
            raise ValueError(
                "Argument `objective` must be a landscape.Objective. "
                f"Received: objective={type(objective).__name__}."
            )
        _checks.choice("hvp_mode", mode, HVPMode)
        self.curvature = _checks.choice("curvature", curvature, Curvature)
        if split not in objective.splits:
            raise ValueError(f"Unknown split {split!r}; expected one of {objective.splits}.")
        self.objective, self.split, self.mode = objective, split, mode
        self.flat = objective.flat
        if not self.flat.n:
            raise ValueError("The objective's model has no trainable floating-point variables.")
        block = block_indices(objective, variables)
        keys = objective.trainable_variables.paths
        self.paths = tuple(keys[i] for i in block)
        if len(block) == len(keys):
            self._index = None
            self.n = self.flat.n
        else:
            starts = np.concatenate([[0], np.cumsum(self.flat.sizes)])
            self._index = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in block])
            self.n = int(self._index.size)
        if self.curvature == "ggn":
            objective._ggn_splits()  # a loss without a GGN is refused before any product
        self.n_hvp = 0
        self.scale = None if scale is None else _preconditioner_scale(self, scale)

    def _full(self, x: np.ndarray) -> np.ndarray:
        """A block vector as a full flat vector, zero outside the block."""
        if self._index is None:
            return x
        full = np.zeros(self.flat.n)
        full[self._index] = x
        return full

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """H x as a float64 n-vector; written into ``out`` (a float64 n-vector the caller
        reuses, for the whole operator only) where given."""
        self.n_hvp += 1
        if self.scale is not None:
            x = self.scale * x
        arrays = self.flat.split(self._full(x))
        if self.curvature == "ggn":
            hv = self.objective.gauss_newton_vector_product(arrays, split=self.split)
        else:
            hv = self.objective.hessian_vector_product(arrays, split=self.split, mode=self.mode)
        full = self._index is None and self.scale is None
        hv = self.flat.concat(hv, out=out if full else None)
        if self._index is not None:
            hv = hv[self._index]
        return hv if self.scale is None else self.scale * hv

    def flat_vector(self, value, name: str) -> np.ndarray:
        """A ``Direction`` (aligned by path; its entries outside the block are not used) or an
        array of ``n`` entries as a flat float64 vector; a ValueError naming ``name``
        otherwise."""
        if isinstance(value, Direction):
            flat = self.flat.concat(value.aligned(self.objective.trainable_variables))
            return flat if self._index is None else flat[self._index]
        flat = np.asarray(value, dtype=np.float64).reshape(-1)
        if flat.size != self.n:
            raise ValueError(
                f"Argument `{name}` must be a Direction or an array of n_params = {self.n} "
                f"entries. Received: an array of {flat.size} entries."
            )
        return flat

    def direction(self, x: np.ndarray, metadata: dict) -> Direction:
        """A block vector as a ``Direction`` naming the block's variables only (the others
        are zero wherever it is used: ``Direction.aligned``)."""
        if self.curvature != "hessian":
            metadata = {**metadata, "kind": f"{self.curvature}_eigenvector"}
        if self._index is None:
            return self.flat.direction(x, metadata)
        full = self.flat.direction(self._full(x), {**metadata, "variables": list(self.paths)})
        return Direction({k: full.arrays[k] for k in self.paths}, full.metadata)

    def result_fields(self) -> dict[str, Any]:
        """What every result records about the operator."""
        return {
            "precision": self.objective.precision,
            "backend": self.objective.backend,
            "curvature": self.curvature,
            "variables": self.paths,
        }


def _preconditioner_scale(op: _Hessian, preconditioner) -> np.ndarray:
    """P^(-1/2) of a diagonal preconditioner P given as a positive flat vector or Direction."""
    p = op.flat_vector(preconditioner, "preconditioner")
    if not np.all(np.isfinite(p)) or not np.all(p > 0):
        bad = p[~(np.isfinite(p) & (p > 0))][0]
        raise ValueError(
            "Argument `preconditioner` must be the diagonal of a positive definite matrix: "
            f"every entry finite and > 0. Received an entry {bad!r}."
        )
    return 1.0 / np.sqrt(p)


def _start_vector(op: _Hessian, v0, rng: np.random.Generator) -> np.ndarray:
    """The Lanczos start: random, or the sum of the given vectors (a warm start) plus a random
    component of relative norm ``WARM_START_NOISE``, so that the Krylov space is never confined
    to an invariant subspace of the vectors given."""
    noise = rng.standard_normal(op.n)
    if v0 is None:
        return noise
    if isinstance(v0, EigenResult):
        v0 = v0.vectors
    if isinstance(v0, Direction) or (isinstance(v0, np.ndarray) and v0.ndim == 1):
        v0 = [v0]
    start = sum((op.flat_vector(v, "v0") for v in v0), np.zeros(op.n))
    norm = float(np.linalg.norm(start))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError(
            "Argument `v0` must be nonzero and finite vectors (the warm start of Lanczos). "
            f"Received vectors whose sum has norm {norm}."
        )
    return start / norm + WARM_START_NOISE * noise / np.linalg.norm(noise)


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
@dataclass
class _Run:
    """How an eigensolver stopped: at its cap (rather than on its rule), and its restarts."""

    capped: bool = False
    restarts: int = 0
    warm_start: bool = False


def default_basis_size(k: int, n_params: int) -> int:
    """The default Lanczos basis: max(2k + ``BASIS_EXTRA``, ``BASIS_MIN``) vectors, at most n."""
    return min(n_params, max(2 * k + BASIS_EXTRA, BASIS_MIN))


def basis_dtype(precision: str) -> np.dtype:
    """The dtype a Lanczos basis is stored in for products computed in ``precision``.

    float64 when the products are float64; float32 otherwise (float32, or float16/bfloat16
    on request), whose products carry relative errors of at least 1e-7 so that storing the
    basis to float32 rounding (6e-8) adds nothing measurable while halving its memory. Products
    with a float32 basis are float32 within column blocks and float64 across them
    (``_project``, ``_subtract``, ``_combine``), the recurrence and the projected matrix are
    float64, and every certificate is a fresh product of the returned vector, so the storage
    never makes a residual look smaller than it is.
    """
    return np.dtype(np.float64 if precision == "float64" else np.float32)


def _project(basis: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``basis @ w`` as float64 coefficients.

    A float64 basis: one float64 product. A float32 basis: float32 products over column
    blocks of ``BLOCK`` entries, summed in float64 (rounding about 1e-7 relative per block,
    below the float32 products' own; upcasting the basis instead would stream twice its
    memory through every product).
    """
    if basis.dtype == np.float64:
        return basis @ w
    out = np.zeros(len(basis))
    w32 = w if w.dtype == np.float32 else w.astype(np.float32)
    for start in range(0, basis.shape[1], BLOCK):
        cols = slice(start, start + BLOCK)
        out += basis[:, cols] @ w32[cols]
    return out


def _subtract(w: np.ndarray, coefficients: np.ndarray, basis: np.ndarray) -> None:
    """``w -= coefficients @ basis`` in place (w stays float64), by column blocks."""
    if basis.dtype == np.float64:
        w -= coefficients @ basis
        return
    c32 = coefficients.astype(np.float32)
    for start in range(0, basis.shape[1], BLOCK):
        cols = slice(start, start + BLOCK)
        w[cols] -= c32 @ basis[:, cols]


def _combine(coefficients: np.ndarray, basis: np.ndarray, out=None) -> np.ndarray:
    """The float64 rows ``coefficients @ basis`` (Ritz vectors), by column blocks; into ``out``
    (float64, coefficients' rows × n) where given."""
    out = np.empty((len(coefficients), basis.shape[1])) if out is None else out
    c = coefficients.astype(basis.dtype)
    for start in range(0, basis.shape[1], BLOCK):
        cols = slice(start, start + BLOCK)
        out[:, cols] = c @ basis[:, cols]
    return out


def _n_kept(k: int, basis_size: int) -> int:
    """Ritz vectors a thick restart keeps: the k wanted and half of the rest of the basis."""
    return k + (basis_size - k) // 2


def _expand(op: _Hessian, V: np.ndarray, T: np.ndarray, j: int, work=None) -> float:
    """One Lanczos step from V[j]: sets T[j, j] = α_j and V[j+1] = w / β_j; returns β_j.

    From w = H v_j the recurrence's known couplings are removed first (column j of T above
    its diagonal: β_{j−1} v_{j−1}, or after a restart the arrowhead σᵢ yᵢ; and α_j v_j), then
    w is orthogonalized against the whole basis V[:j+1] by one classical Gram-Schmidt pass,
    and by a second one where the first removed more than 1 − 1/√2 of what was left (Daniel,
    Gragg, Kaufman & Stewart 1976, the test ARPACK uses): the basis stays orthogonal to
    rounding at one pass over it in most steps instead of two. ``work``: a float64 n-vector
    the product is written into (one per run: a fresh one costs its page faults).
    """
    w = op(V[j], out=work)
    T[j, j] = _project(V[j : j + 1], w)[0]
    column = T[: j + 1, j]
    first = int(np.flatnonzero(column)[0]) if column.any() else j
    _subtract(w, column[first:], V[first : j + 1])
    basis = V[: j + 1]
    for _ in range(2):
        before = float(np.linalg.norm(w))
        _subtract(w, _project(basis, w), basis)
        if np.linalg.norm(w) >= DGKS * before:
            break
    beta = float(np.linalg.norm(w))
    if beta > 0:
        np.divide(w, beta, out=V[j + 1])
    return beta


def _restart(V: np.ndarray, T: np.ndarray, theta, s, beta: float, keep) -> int:
    """Thick restart (Wu & Simon 2000): the basis becomes [Y, v_{m+1}], Y the kept Ritz vectors.

    From H V_m = V_m T_m + β_m v_{m+1} e_mᵀ and T_m = S Θ Sᵀ, each kept pair has
    H yᵢ = θᵢ yᵢ + σᵢ v_{m+1} with σᵢ = β_m S[m−1, i], so the recurrence restarts from v_{m+1}
    with the arrowhead projected matrix [[Θ, σ], [σᵀ, α]] (tridiagonal again after it). The
    rotation V[:l] ← Sᵀ V[:m] runs in float64 column blocks of ``BLOCK``: no n-sized scratch.

    Returns:
        l, the number of kept vectors; V[l] (= v_{m+1}) is the next vector to expand.
    """
    m, l = T.shape[0], len(keep)
    rotation = np.ascontiguousarray(s[:, keep].T)
    for start in range(0, V.shape[1], BLOCK):
        cols = slice(start, start + BLOCK)
        V[:l, cols] = rotation @ V[:m, cols]
    V[l] = V[m]
    T[:] = 0.0
    T[np.arange(l), np.arange(l)] = theta[keep]
    T[:l, l] = T[l, :l] = beta * s[m - 1, keep]
    return l


def _lanczos(op, v0, k, which, tol, max_iter, basis_size, bar):
    """Thick-restart Lanczos with full reorthogonalization in a basis of ``basis_size`` vectors.

    The basis is stored in ``basis_dtype(precision)``; every product with it is float64.

    Stopped on the Ritz residual estimates, checked after every product: a pair (θᵢ, V sᵢ) of
    the projected matrix T after step j has ‖H V sᵢ − θᵢ V sᵢ‖ = |β_j sᵢ[j]| (exact up to
    rounding with full reorthogonalization, before and after restarts). A full basis restarts
    with the ``_n_kept`` best Ritz vectors; the run stops at ``max_iter`` products in all.

    Returns:
        (Ritz values, Ritz vectors as rows, ``_Run``).
    """
    m, tiny = basis_size, np.finfo(float).tiny
    V = np.empty((m + 1, op.n), basis_dtype(op.objective.precision))
    T = np.zeros((m, m))
    V[0] = v0 / np.linalg.norm(v0)
    j, run, start, work = 0, _Run(), op.n_hvp, np.empty(op.n)
    while True:
        beta = _expand(op, V, T, j, work)
        theta, s = np.linalg.eigh(T[: j + 1, : j + 1])
        order = _order(theta, which)
        idx = order[:k]
        estimates = np.abs(beta * s[j, idx]) / np.maximum(np.abs(theta[idx]), tiny)
        if bar is not None:  # the quantity that stops the run: the largest relative residual
            shown = [("lambda", theta[idx[0]]), ("residual", estimates.max())]
            bar.update(op.n_hvp - start, shown, finalize=False)
        invariant = beta <= BREAKDOWN * max(np.abs(theta).max(), tiny)
        if (len(idx) == k and np.all(estimates <= tol)) or invariant or j + 1 == op.n:
            break
        if op.n_hvp - start >= max_iter:
            run.capped = True
            break
        if j + 1 < m:
            T[j, j + 1] = T[j + 1, j] = beta
            j += 1
        else:
            j = _restart(V, T, theta, s, beta, order[: _n_kept(k, m)])
            run.restarts += 1
    finish(bar, op.n_hvp - start)
    logger.debug(
        "Lanczos: %d products, %d restarts, capped: %s", op.n_hvp - start, run.restarts, run.capped
    )
    return theta[idx], _combine(s[:, idx].T, V[: j + 1]), run


def _arpack(op, v0, k, which, tol, max_iter, bar):
    start = op.n_hvp

    def matvec(x):
        hx = op(x)
        if bar is not None:  # a count of products only: ARPACK reports no estimate on the way
            bar.update(op.n_hvp - start, finalize=False)
        return hx

    linear = scipy.sparse.linalg.LinearOperator((op.n, op.n), matvec=matvec, dtype=np.float64)
    mode = {"largest": "LA", "magnitude": "LM", "smallest": "SA"}[which]
    run = _Run()
    try:
        values, vectors = scipy.sparse.linalg.eigsh(
            linear, k=k, which=mode, tol=tol, maxiter=max_iter, v0=v0
        )
    except scipy.sparse.linalg.ArpackNoConvergence as err:  # max_iter restarts reached
        values, vectors, run.capped = err.eigenvalues, err.eigenvectors, True
    finish(bar, op.n_hvp - start)
    idx = _order(values, which)
    return values[idx], vectors[:, idx].T, run


def _power(op, v0, k, tol, max_iter, rng, bar):
    """Power iteration with deflation, stopped as PyHessian does: |Δλ| / (|λ| + 1e-6) < tol."""
    values, vectors, products, run = [], [], 0, _Run()
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
        else:  # max_iter iterations without meeting the rule
            run.capped = True
        values.append(lam)
        vectors.append(v)
    finish(bar, products)
    return np.asarray(values), np.asarray(vectors), run


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


@one_blas_thread
def hessian_eigenvalues(
    objective: Objective,
    k: int = 1,
    *,
    method: Method = "lanczos",
    which: Which = "largest",
    tol: float = 1e-4,
    max_iter: int | None = None,
    basis_size: int | None = None,
    seed: int | None = None,
    v0=None,
    preconditioner=None,
    split: Split = "train",
    hvp_mode: HVPMode = "auto",
    variables=None,
    curvature: Curvature = "hessian",
    verbose: int = 0,
) -> EigenResult:
    """The ``k`` extreme eigenvalues of the loss's Hessian and their eigenvectors.

    The default method is thick-restart Lanczos (Wu & Simon 2000) in float64 arithmetic with
    full reorthogonalization inside a basis of a fixed ``basis_size`` m: when the basis is full,
    the recurrence restarts from the best Ritz vectors (the k wanted and half of the others)
    and the residual vector, with an arrowhead projected matrix. The basis is stored in
    float32 when the products are float32 (``basis_dtype``; float64 for a float64 Objective).
    Its memory is bounded by ``((m + 1) × b + (k + 4) × 8) × n_params`` bytes, b = 4 (float32
    basis) or 8: m + 1 basis vectors, the k float64 eigenvectors and ``WORK_VECTORS`` float64
    n-vectors of scratch; TensorFlow's own memory during a product comes on top. For
    ResNet-50's 23.5 M parameters with k = 5 and the default m = 20 that is 3.7 GB in float32
    (5.6 GB in float64). It stops as soon as every wanted Ritz pair has ‖Hv − θv‖ ≤ tol·|θ|
    (checked after every product), or after ``max_iter`` products in all.

    Args:
        objective: The loss; H is taken w.r.t. its trainable variables at w0.
        k: Number of eigenpairs. Defaults to 1.
        method: ``"lanczos"``: thick-restart Lanczos as above. ``"arpack"``: scipy's
            ``eigsh`` (implicitly restarted Lanczos, basis of max(2k + 1, 20) vectors,
            convergence checked once per restart cycle, so usually more products).
            ``"power"``: power iteration with deflation, stopped on a relative change of λ
            below ``tol`` as PyHessian does; it converges to the eigenvalues of largest |λ|
            and stops early on close eigenvalues (kept for comparison; see the residuals).
            Defaults to ``"lanczos"``.
        which: ``"largest"`` (largest algebraic: the sharpest directions), ``"magnitude"``
            (largest |λ|, from both ends of the spectrum) or ``"smallest"`` (most negative:
            negative curvature, saddles). ``method="power"`` supports ``"magnitude"`` and
            ``"largest"`` (where it assumes the dominant eigenvalue is positive). Defaults to
            ``"largest"``.
        tol: Relative tolerance: the residual ‖Hv − λv‖ / |λ| for ``"lanczos"`` and
            ``"arpack"``, the relative change of λ for ``"power"``. Defaults to 1e-4.
        max_iter: The cap that bounds the time: Hessian-vector products of the Lanczos run
            (all restarts together, before the k certificate products), ARPACK restarts, or
            power iterations per eigenvalue. A run that reaches it stops with
            ``capped=True``. Defaults to None: ``LANCZOS_MAX_ITER`` (1000) for Lanczos (at
            most ``n_params`` when the basis holds the whole space), ``min(10 · n_params,
            ARPACK_MAX_RESTARTS)`` (100) for ARPACK, 100 for power (PyHessian's default).
        basis_size: m, the Lanczos basis (``method="lanczos"`` only), at least k + 2 (or
            ``n_params``); larger takes more memory and usually fewer products. Defaults to
            None: max(2k + 10, 20), at most ``n_params``.
        seed: Seed of the random start vector. Defaults to None (fresh entropy).
        v0: A warm start: a ``Direction``, a flat array of ``n_params`` entries, a sequence
            of them, or an earlier ``EigenResult`` (its vectors), e.g. the eigenvectors at
            the previous weights of a training run. The run starts from their normalized sum
            plus a seeded random vector of relative norm ``WARM_START_NOISE`` (1e-6), so
            that it is never confined to an invariant subspace of the vectors given. The
            certificates are the same as from a random start. Defaults to None (random).
        preconditioner: The diagonal of a positive definite P (a flat array of ``n_params``
            entries or a ``Direction``) to compute the eigenvalues of P⁻¹H instead of H,
            through the symmetric P^(-1/2) H P^(-1/2) (same eigenvalues): the
            "preconditioned sharpness" of an adaptive optimizer, whose update is
            w ← w − η P⁻¹m (Cohen et al. 2022, arXiv 2207.14484). Defaults to None (H).
        split: Data split of the objective. Defaults to ``"train"``.
        hvp_mode: How products are computed, see ``Objective.hessian_vector_product``.
            Defaults to ``"auto"`` (the faster measured on the backend).
        variables: Restrict the operator to a block of the trainable variables: the
            diagonal block H_BB (or G_BB) of the variables selected by a ``keras`` Layer, a
            layer name, a regular expression searched in the variables' paths, or a list of
            paths / variables (see ``block_indices``). Products are taken with vectors that
            are zero outside the block and read back on it; ``n_params`` is the block's size,
            ``variables`` of the result lists its paths and eigenvectors are Directions over
            them only (the other variables are zero wherever they are used, e.g. by
            ``compute_surface``). Block-wise spectra: Zhang et al. 2024, arXiv 2402.16788.
            Defaults to None (every trainable variable).
        curvature: ``"hessian"`` (H) or ``"ggn"``: the generalized Gauss-Newton matrix
            G = Jᵀ H_ℓ J (``Objective.gauss_newton_vector_product``: positive semi-definite,
            defined for mean squared error and cross-entropies; ``hvp_mode`` is not used).
            Martens 2014, arXiv 1412.1193. Defaults to ``"hessian"``.
        verbose: 1 or 2 shows a ``keras.utils.Progbar`` over Hessian-vector products, aimed
            at the cap (``max_iter`` for Lanczos; ``k · max_iter`` for power iteration; open
            for ARPACK), which a converging run stops short of. Lanczos shows the leading Ritz
            value (``lambda``) and the largest relative residual of the wanted pairs
            (``residual``, the quantity compared with ``tol``); power iteration shows λ and
            its relative change (``change``, compared with ``tol``); ARPACK only counts.
            Defaults to 0.

    Returns:
        An ``EigenResult`` (``values`` of shape (k,), ``vectors``, ``residuals``, ``n_hvp``,
        ``converged``, ``capped``, ``restarts``); ``converged`` is True only when every
        residual recomputed with a fresh product is ≤ ``tol`` (for power iteration, whose rule
        looks at λ only, it usually is not); ``capped`` says the run stopped at ``max_iter``;
        ``precision`` the dtype the products were computed in (``Objective.precision``). An
        Objective built with ``precision="model"`` on a mixed-precision model computes in
        float16, whose ~1e-3 rounding per product keeps the residuals above the default
        ``tol``: a warning then names float16 as the likely cause of ``converged=False``.

    Raises:
        ValueError: a bad argument (named), or a basis that does not fit in the available
            memory (``available_memory``), before any product is computed.

    Example:
        >>> eig = hessian_eigenvalues(obj, k=3, seed=0)
        >>> eig.values, eig.residuals, eig.converged, eig.capped, eig.n_hvp
        >>> neg = hessian_eigenvalues(obj, which="smallest")    # negative curvature?
        >>> surf = compute_surface(obj, [eig.vectors[0]], x="-1:1:51")

    References:
        Wu & Simon 2000, "Thick-Restart Lanczos Method for Large Symmetric Eigenvalue
        Problems", SIAM J. Matrix Anal. Appl. 22(2), 602-616,
        https://doi.org/10.1137/S0895479898334605.
        Lehoucq, Sorensen & Yang 1998, "ARPACK Users' Guide" (``method="arpack"``).
        Yao et al. 2020, PyHessian, https://arxiv.org/abs/1912.07145 (``method="power"``).
    """
    method = _checks.choice("method", method, Method)
    which = _checks.choice("which", which, Which)
    tol = _checks.fraction("tol", tol)
    op = _Hessian(
        objective, split, hvp_mode, preconditioner, variables=variables, curvature=curvature
    )
    k, max_iter, basis_size = _eigen_sizes(op, k, method, which, max_iter, basis_size)
    _check_eigen_memory(op.n, k, method, basis_size, op.objective.precision)
    rng = np.random.default_rng(seed)
    start = _start_vector(op, v0, rng)
    values, vectors, run = _solve(
        op, k, method, which, tol, max_iter, basis_size, start, rng, verbose
    )
    run.warm_start = v0 is not None
    return _eigen_result(
        op,
        values,
        vectors,
        run,
        k=k,
        method=method,
        which=which,
        tol=tol,
        max_iter=max_iter,
        basis_size=basis_size,
    )


def _eigen_sizes(op: _Hessian, k, method: str, which: str, max_iter, basis_size):
    """Checked ``k``, ``max_iter`` (its default per method) and ``basis_size`` (Lanczos)."""
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
    if method != "lanczos":
        if basis_size is not None:
            raise ValueError(
                "Argument `basis_size` applies to method='lanczos' only. Received: "
                f"basis_size={basis_size!r} with method={method!r}."
            )
    elif basis_size is None:
        basis_size = default_basis_size(k, op.n)
    else:
        basis_size = min(_checks.integer("basis_size", basis_size, min(k + 2, op.n)), op.n)
    if max_iter is None:
        arpack = min(10 * op.n, ARPACK_MAX_RESTARTS)
        max_iter = {"lanczos": LANCZOS_MAX_ITER, "arpack": arpack, "power": 100}[method]
    return k, _checks.integer("max_iter", max_iter, 1), basis_size


def _solve(op: _Hessian, k, method, which, tol, max_iter, basis_size, v0, rng, verbose):
    """(values, vectors as rows, ``_Run``) from the chosen method and start vector ``v0``."""
    # The target is the cap on products (a run usually stops before it); ARPACK's is unknown.
    # A Lanczos basis that holds the whole space finds it in at most n_params products.
    lanczos = max_iter if basis_size is None or basis_size < op.n else min(max_iter, op.n)
    target = {"lanczos": lanczos, "arpack": None, "power": k * max_iter}[method]
    bar = progbar(target, verbose, "product")
    if method == "lanczos":
        return _lanczos(op, v0, k, which, tol, max_iter, basis_size, bar)
    if method == "arpack":
        return _arpack(op, v0, k, which, tol, max_iter, bar)
    values, vectors, run = _power(op, v0, k, tol, max_iter, rng, bar)
    if which == "largest" and np.any(values < 0):
        logger.warning(
            "Power iteration found a dominant negative eigenvalue (%s): it is the largest "
            "|λ|, not the largest algebraic; use method='lanczos'.",
            values.min(),
        )
    return values, vectors, run


def _eigen_result(
    op: _Hessian, values, vectors, run: _Run, *, k, method, which, tol, max_iter, basis_size
) -> EigenResult:
    """Fresh residual certificates, the vectors as Directions, and the result."""
    residuals = _residuals(op, values, vectors)
    result = EigenResult(
        values=np.asarray(values, np.float64),
        vectors=[
            op.direction(
                v, {"kind": "hessian_eigenvector", "eigenvalue": float(lam), "index": i,
                    "which": which},
            )
            for i, (lam, v) in enumerate(zip(values, vectors))
        ],
        residuals=residuals,
        n_hvp=op.n_hvp,
        converged=bool(len(values) == k and np.all(residuals <= tol)),
        which=which,
        method=method,
        tol=tol,
        n_params=op.n,
        capped=run.capped,
        max_iter=max_iter,
        basis_size=basis_size,
        restarts=run.restarts,
        preconditioned=op.scale is not None,
        warm_start=run.warm_start,
        **op.result_fields(),
    )  # fmt: skip
    _log_eigen(result)
    return result


def _log_eigen(r: EigenResult) -> None:
    """The result in one INFO line; a WARNING when it was computed in float16 and is not
    certified (the likely cause), or when the run stopped at its cap."""
    logger.info(
        "Hessian eigenvalues (%s, %s, %s): %s, residuals %s, %d products, %d restarts, "
        "converged: %s, stopped at the cap: %s",
        r.method, r.which, r.precision, r.values, r.residuals, r.n_hvp, r.restarts, r.converged,
        r.capped,
    )  # fmt: skip
    if r.precision in LOW_PRECISIONS and not r.converged:
        worst = float(np.max(r.residuals)) if r.residuals.size else np.inf
        logger.warning(
            "hessian_eigenvalues did not certify its eigenvalues (largest residual %.2g > tol "
            "%g; stopped at its cap: %s) and every Hessian-vector product was computed in %s "
            "(the Objective's precision='model' on a mixed-precision model): %s rounding, "
            "about 1e-3 relative error per product, which also makes the computed Hessian "
            "non-symmetric, is the likely cause. Build the Objective with precision='auto' "
            "(float32) to certify them.",
            worst, r.tol, r.capped, r.precision, r.precision,
        )  # fmt: skip
    elif r.capped:
        unit = {"lanczos": "products", "arpack": "restarts", "power": "iterations"}[r.method]
        worst = float(np.max(r.residuals)) if r.residuals.size else np.inf
        logger.warning(
            "hessian_eigenvalues stopped at its cap, max_iter=%d %s (%d products in all), "
            "before its stopping rule was met; converged: %s (largest residual %.2g, tol %g). "
            "Raise max_iter (--max-iter) or basis_size (--basis-size) to certify the values.",
            r.max_iter, unit, r.n_hvp, r.converged, worst, r.tol,
        )  # fmt: skip


# ----------------------------------------------------------------------------------- memory
def available_memory() -> int | None:
    """Bytes of memory this process can still use without swapping, or None when unknown.

    Linux's ``MemAvailable`` (``/proc/meminfo``), lowered to the cgroup v2 limit minus the
    cgroup's usage inside a memory-limited container; elsewhere the free physical pages
    (``os.sysconf``); None where neither is known (then no check is made).
    """
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            limit, used = f.read().strip(), int(g.read())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(int(available), 0)


def _size(n_bytes: float) -> str:
    """``n_bytes`` for a message: "4.70 GB", "8.6 kB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{int(n_bytes)} bytes"


def _check_memory(
    n_vectors: int, n: int, *, what: str, advice: str, stored: int = 0, dtype=np.float64
) -> None:
    """One ValueError, before any work, when ``n_vectors`` float64 n-vectors and ``stored``
    basis vectors of ``dtype`` cannot fit."""
    itemsize = np.dtype(dtype).itemsize
    needed, available = (n_vectors * 8 + stored * itemsize) * n, available_memory()
    if available is not None and needed > available:
        vectors = f"{n_vectors} float64 vectors"
        if stored:
            vectors = f"{stored} {np.dtype(dtype).name} basis vectors and " + vectors
        raise ValueError(
            f"{what} needs about {_size(needed)} ({vectors} of {n:,} parameters) but "
            f"{_size(available)} of memory is available; {advice}."
        )


def lanczos_memory(n_params: int, k: int, basis_size: int, precision: str) -> int:
    """Bytes the thick-restart Lanczos solver holds at most (TensorFlow's products on top).

    ``basis_size + 1`` basis vectors in ``basis_dtype(precision)``, and ``k`` eigenvectors and
    ``WORK_VECTORS`` scratch vectors in float64, of ``n_params`` entries each.
    """
    itemsize = basis_dtype(precision).itemsize
    return ((basis_size + 1) * itemsize + (k + WORK_VECTORS) * 8) * n_params


def _check_eigen_memory(
    n: int, k: int, method: str, basis_size: int | None, precision: str
) -> None:
    """The memory bound of each eigensolver against ``available_memory()``."""
    if method == "lanczos":
        _check_memory(
            k + WORK_VECTORS,
            n,
            stored=basis_size + 1,
            dtype=basis_dtype(precision),
            what=f"hessian_eigenvalues with basis_size={basis_size} and k={k}",
            advice=f"pass a smaller `basis_size` (--basis-size, at least k + 2 = {k + 2}), "
            "a smaller `k`, or free memory",
        )
    elif method == "arpack":  # eigsh's basis, its 3 work vectors and the k eigenvectors
        _check_memory(
            min(n, max(2 * k + 1, 20)) + 3 + k + WORK_VECTORS,
            n,
            what=f"hessian_eigenvalues(method='arpack') with k={k}",
            advice="use method='lanczos' with a small `basis_size`, or a smaller `k`",
        )
    else:
        _check_memory(
            k + 1 + WORK_VECTORS,
            n,
            what=f"hessian_eigenvalues(method='power') with k={k}",
            advice="pass a smaller `k`",
        )


# ------------------------------------------------------------------------------------ trace
@one_blas_thread
def hessian_trace(
    objective: Objective,
    *,
    samples: int = TRACE_SAMPLES,
    tol: float = TRACE_TOL,
    seed: int | None = None,
    split: Split = "train",
    hvp_mode: HVPMode = "auto",
    variables=None,
    curvature: Curvature = "hessian",
    method: TraceMethod = "auto",
    verbose: int = 0,
) -> TraceResult:
    """tr(H): exactly from n unit vectors, or by Hutchinson's or Hutch++'s estimator.

    The exact trace is Σᵢ eᵢᵀHeᵢ over the n unit vectors of the operator's dimension (the
    block's parameters with ``variables``, else the whole model's): n products, rounding
    error only, ``stderr=0``. Hutchinson's estimate is the mean of zᵀHz over Rademacher probes
    z; it stops when the standard error of the mean is at most ``tol · |estimate|`` (checked
    from ``TRACE_MIN_SAMPLES`` probes on), or after ``samples`` probes. PyHessian stops on the
    change of the running mean instead, which can be small while the estimate is still far
    off.

    Hutch++ (Meyer et al. 2021, Algorithm 1) spends its budget of ``samples`` products in
    thirds: k = ⌊samples / 3⌋ products H S with a Rademacher S of k columns, Q = qr(H S)
    (orthonormal, n × k), k products for tr(QᵀHQ) (exact given Q: the top of the spectrum),
    and Hutchinson's estimator on the rest, tr(PHP) with P = I − QQᵀ, with the remaining
    ``samples − 2k`` Rademacher probes g (values gᵀPHPg). For a positive semi-definite H it
    reaches a relative error ε with O(1/ε) products where Hutchinson needs O(1/ε²) (the
    paper's bound); the gain is large where the trace is carried by a few large eigenvalues,
    and small where it is spread over a flat bulk. Where this departs from the paper: the
    residual probes stop early, like Hutchinson's, once their standard error (the ``stderr``
    reported) is at most ``tol · |estimate|``; and the QR factorization holds 3k float64
    n-vectors at once (H S, LAPACK's copy, Q), checked against the available memory before
    any product.

    Where the exact trace is chosen: ``method="auto"`` and ``"hutchpp"`` compute the exact
    trace whenever n ≤ ``samples``: then it costs no more products than the estimator was
    allowed to spend, and has no error (Hutch++ itself would reach the exact trace only with
    a sketch of n columns, 2n products).

    Args:
        objective: The loss; H is taken w.r.t. its trainable variables at w0.
        samples: The cap on probes (one product each), which bounds the time: a run that
            has not reached ``tol`` by then stops with ``converged=False``. For Hutch++ the
            cap on all its products, sketch included (at least 3 where Hutch++ runs). With
            ``method="auto"`` or ``"hutchpp"``, also the largest n traced exactly. Defaults
            to ``TRACE_SAMPLES`` (100).
        tol: Relative standard error to reach (of the Hutchinson probes, Hutch++'s residual
            probes included). Defaults to ``TRACE_TOL`` (0.05).
        seed: Seed of the probes. Defaults to None (fresh entropy).
        split: Data split of the objective. Defaults to ``"train"``.
        hvp_mode: See ``Objective.hessian_vector_product``. Defaults to
            ``"auto"``.
        variables: A block of the trainable variables (see ``hessian_eigenvalues``).
            Defaults to None (all).
        curvature: ``"hessian"`` or ``"ggn"`` (see ``hessian_eigenvalues``). Defaults to
            ``"hessian"``.
        method: ``"auto"`` (exact when n ≤ ``samples``, else Hutchinson), ``"exact"`` (n
            products whatever n is), ``"hutchinson"`` (random probes even for a small n) or
            ``"hutchpp"`` (exact when n ≤ ``samples``, else Hutch++). Defaults to ``"auto"``.
        verbose: 1 or 2 shows a ``keras.utils.Progbar`` over probes whose length is the
            cap ``samples`` (a run that converges first ends short of it, e.g. "51/100"):
            the running estimate (``trace``) and, from the second probe on, its standard
            error (``stderr``) and the relative error it is stopped on (``rel_err``, compared
            with ``tol``); the exact trace's is n, with the partial sum; Hutch++'s counts
            products up to ``samples``, from the end of its sketch on. Defaults to 0.

    Returns:
        A ``TraceResult`` (``estimate``, ``stderr``, ``n_hvp``, ``samples`` used,
        ``converged``, ``capped``: stopped at ``samples`` before reaching ``tol``;
        ``method``: ``"exact"``, ``"hutchinson"`` or ``"hutchpp"``; Hutch++'s ``sketch`` and
        ``sketch_trace``).

    Raises:
        ValueError: a ``samples`` below 1 (below 3 where Hutch++ runs), a ``tol`` outside
            (0, 1), an unknown ``method``, or a Hutch++ sketch that does not fit in the
            available memory, before any product.

    Example:
        >>> tr = hessian_trace(obj, method="hutchpp", samples=300, seed=0)
        >>> tr.estimate, tr.stderr, tr.n_hvp, tr.sketch

    References:
        Hutchinson 1990, "A stochastic estimator of the trace of the influence matrix for
        Laplacian smoothing splines", Commun. Stat. Simul. Comput. 19(2).
        Meyer, Musco, Musco & Woodruff 2021, "Hutch++: Optimal Stochastic Trace
        Estimation", https://arxiv.org/abs/2010.09649.
    """
    samples = _checks.integer("samples", samples, 1)
    tol = _checks.fraction("tol", tol)
    method = _checks.choice("method", method, TraceMethod)
    op = _Hessian(objective, split, hvp_mode, variables=variables, curvature=curvature)
    sketch = {}
    if method == "exact" or (method in ("auto", "hutchpp") and op.n <= samples):
        values = _exact_trace(op, verbose)
        estimate, stderr, converged, method = float(np.sum(values)), 0.0, True, "exact"
        logger.info("Hessian trace %.6g (exact, %d products)", estimate, op.n_hvp)
    elif method == "hutchpp":
        k = _hutchpp_sketch_size(op, samples)
        values, estimate, stderr, converged, sketch = _hutchpp(op, k, samples, tol, seed, verbose)
    else:
        values, estimate, stderr, converged = _hutchinson(op, samples, tol, seed, verbose)
        method = "hutchinson"
    return TraceResult(
        estimate=estimate,
        stderr=stderr,
        n_hvp=op.n_hvp,
        samples=len(values),
        converged=converged,
        values=values,
        n_params=op.n,
        tol=tol,
        max_samples=samples,
        method=method,
        **sketch,
        **op.result_fields(),
    )


def _exact_trace(op: _Hessian, verbose: int) -> np.ndarray:
    """The diagonal entries eᵢᵀHeᵢ of the operator, one unit-vector product each."""
    bar = progbar(op.n, verbose, "product")
    diagonal = np.empty(op.n)
    e = np.zeros(op.n)
    for i in range(op.n):
        e[i] = 1.0
        diagonal[i] = op(e)[i]
        e[i] = 0.0
        if bar is not None:
            bar.update(i + 1, [("trace", float(diagonal[: i + 1].sum()))], finalize=False)
    finish(bar, op.n)
    return diagonal


def _hutchinson(op: _Hessian, samples: int, tol: float, seed, verbose: int):
    """Hutchinson's probes until the standard error reaches ``tol`` or ``samples`` probes:
    (values, estimate, stderr, converged)."""
    rng = np.random.default_rng(seed)
    # The bar's length is the cap; a run that converges first is closed short of it.
    bar = progbar(samples, verbose, "probe")
    if bar is not None:
        logger.info(
            "Hutchinson's trace: stops when stderr <= tol * |trace| (tol=%g), from %d probes on, "
            "or at the cap of %d probes.", tol, min(TRACE_MIN_SAMPLES, samples), samples,
        )  # fmt: skip
    values: list[float] = []
    estimate, stderr, converged = 0.0, np.inf, False
    z, hz = np.empty(op.n), np.empty(op.n)
    for i in range(samples):
        rademacher(rng, op.n, out=z)
        values.append(float(z @ op(z, out=hz)))
        estimate = float(np.mean(values))
        stderr = float(np.std(values, ddof=1) / np.sqrt(len(values))) if i else np.inf
        if bar is not None:  # the standard error is defined from the second probe on
            shown = [("trace", estimate)]
            if i:
                shown += [
                    ("stderr", stderr),
                    ("rel_err", stderr / max(abs(estimate), np.finfo(float).tiny)),
                ]
            bar.update(i + 1, shown, finalize=False)
        if len(values) >= min(TRACE_MIN_SAMPLES, samples) and stderr <= tol * abs(estimate):
            converged = True
            break
    finish(bar, len(values))
    logger.info("Hessian trace %.6g ± %.2g (%d probes)", estimate, stderr, len(values))
    if not converged:
        logger.warning(
            "hessian_trace stopped at its cap of samples=%d probes with a relative standard "
            "error of %.2g > tol=%g; raise samples (--trace-probes) or tol (--trace-tol).",
            samples,
            stderr / abs(estimate) if estimate else np.inf,
            tol,
        )
    return np.asarray(values), estimate, stderr, converged


def _hutchpp_sketch_size(op: _Hessian, samples: int) -> int:
    """Hutch++'s k = ⌊samples / 3⌋ (the paper's split), checked, with the memory of Q."""
    if samples < 3:
        raise ValueError(
            "Argument `samples` must be >= 3 with method='hutchpp' on an operator of more "
            f"than `samples` parameters (a sketch, its products and a probe). Received: "
            f"samples={samples} (n_params={op.n})."
        )
    k = samples // 3
    _check_memory(
        3 * k + WORK_VECTORS,  # H S, LAPACK's copy of it and Q, and the products' scratch
        op.n,
        what=f"hessian_trace(method='hutchpp') with a sketch of {k} vectors",
        advice="pass a smaller `samples` (a third of it is the sketch), or free memory",
    )
    return k


def _hutchpp(op: _Hessian, k: int, samples: int, tol: float, seed, verbose: int):
    """Hutch++ (Meyer et al. 2021, Algorithm 1) with ``samples`` products at most, the residual
    probes stopped on their standard error: (values, estimate, stderr, converged, fields)."""
    rng = np.random.default_rng(seed)
    bar = progbar(samples, verbose, "product")
    # Q = orth(H S), S an n × k Rademacher matrix: k products.
    hs = np.empty((op.n, k))
    for j in range(k):
        hs[:, j] = op(rademacher(rng, op.n))
    q = np.linalg.qr(hs)[0]  # reduced: orthonormal n × k even where H S is rank deficient
    del hs
    # tr(QᵀHQ): k products, no random error given Q.
    top = float(sum(q[:, j] @ op(np.ascontiguousarray(q[:, j])) for j in range(k)))
    if bar is not None:
        bar.update(op.n_hvp, [("trace", top)], finalize=False)
    # Hutchinson on (I − QQᵀ) H (I − QQᵀ) with the remaining probes.
    values: list[float] = []
    residual, stderr, converged = 0.0, np.inf, False
    for i in range(samples - 2 * k):
        g = rademacher(rng, op.n)
        g -= q @ (q.T @ g)
        values.append(float(g @ op(g)))
        residual = float(np.mean(values))
        stderr = float(np.std(values, ddof=1) / np.sqrt(len(values))) if i else np.inf
        if bar is not None:
            shown = [("trace", top + residual)] + ([("stderr", stderr)] if i else [])
            bar.update(op.n_hvp, shown, finalize=False)
        wanted = min(TRACE_MIN_SAMPLES, samples - 2 * k)
        if len(values) >= wanted and stderr <= tol * abs(top + residual):
            converged = True
            break
    finish(bar, op.n_hvp)
    estimate = top + residual
    logger.info(
        "Hessian trace %.6g ± %.2g (Hutch++: sketch of %d, %d probes, %d products)",
        estimate, stderr, k, len(values), op.n_hvp,
    )  # fmt: skip
    if not converged:
        logger.warning(
            "hessian_trace(method='hutchpp') stopped at its cap of samples=%d products with "
            "a relative standard error of %.2g > tol=%g; raise samples or tol.",
            samples, stderr / abs(estimate) if estimate else np.inf, tol,
        )  # fmt: skip
    fields = {"sketch": k, "sketch_trace": top}
    return np.asarray(values), estimate, stderr, converged, fields


# --------------------------------------------------------------------------------- spectrum
def _slq_run(op: _Hessian, v0: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """One Lanczos run of ``steps`` products from v0: Gauss quadrature nodes and weights.

    The steps are ``_expand``'s (full reorthogonalization: classical Gram-Schmidt over column
    blocks of the basis stored in ``basis_dtype``, a second pass where DGKS asks): the basis
    holds up to steps + 1 vectors.
    """
    V = np.empty((steps + 1, op.n), basis_dtype(op.objective.precision))
    T = np.zeros((steps, steps))
    V[0] = v0 / np.linalg.norm(v0)
    betas, work = [], np.empty(op.n)
    for j in range(steps):
        betas.append(_expand(op, V, T, j, work))
        if j + 1 == steps:
            break
        alphas = np.diag(T)[: j + 1]
        if betas[j] <= BREAKDOWN * max(np.abs(alphas).max(), np.finfo(float).tiny):
            break  # invariant subspace: the quadrature is exact
        T[j, j + 1] = T[j + 1, j] = betas[j]
    m = len(betas)
    theta, s = scipy.linalg.eigh_tridiagonal(np.diag(T)[:m].copy(), np.array(betas[: m - 1]))
    nodes = np.full(steps, theta[0])
    weights = np.zeros(steps)
    nodes[:m], weights[:m] = theta, s[0] ** 2
    return nodes, weights


def _slq_shown(nodes: np.ndarray, weights: np.ndarray, n: int) -> list[tuple[str, float]]:
    """The SLQ bar's values after some runs: the largest node so far (``lambda_max``, λ_max
    from below) and the trace estimate n·Σ w θ (each run's is vᵀHv, a Hutchinson probe) with
    its standard error over the runs (from the second run on)."""
    traces = n * np.sum(weights * nodes, axis=1)
    shown = [("lambda_max", float(nodes.max())), ("trace", float(traces.mean()))]
    if len(traces) > 1:
        shown.append(("stderr", float(np.std(traces, ddof=1) / np.sqrt(len(traces)))))
    return shown


@one_blas_thread
def hessian_spectrum(
    objective: Objective,
    *,
    steps: int = SLQ_STEPS,
    runs: int = SLQ_RUNS,
    seed: int | None = None,
    split: Split = "train",
    hvp_mode: HVPMode = "auto",
    variables=None,
    curvature: Curvature = "hessian",
    verbose: int = 0,
) -> SpectrumResult:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    Each run starts Lanczos (full reorthogonalization in float64 arithmetic; a run keeps its
    ``steps`` vectors, stored as ``basis_dtype(objective.precision)``: float32 unless the
    products are float64, so ``(steps + 1) × n_params × 4 + 4 × n_params × 8`` bytes for a
    float32 analysis) from a normalized Rademacher vector v; the
    eigen-decomposition T = S Θ Sᵀ of the ``steps × steps`` tridiagonal matrix
    gives a Gauss quadrature of vᵀ f(H) v with nodes Θ and weights S[0, :]². The average over
    runs estimates the spectral measure (1/n) Σᵢ δ(t − λᵢ); its mean is a Hutchinson estimate
    of tr(H)/n.

    Args:
        objective: The loss; H is taken w.r.t. its trainable variables at w0.
        steps: Lanczos steps (products) per run, capped at ``n_params``. Defaults to
            ``SLQ_STEPS`` (40): the extreme eigenvalues and the bulk's outline; the density
            is smoothed at 1 % of its range anyway.
        runs: Independent runs (probe vectors); each already averages the n eigenvalues,
            so more runs mostly refine the trace estimate. Defaults to ``SLQ_RUNS`` (2).
        seed: Seed of the Rademacher start vectors of the runs. Defaults to None (fresh
            entropy).
        split: Data split of the objective. Defaults to ``"train"``.
        hvp_mode: See ``Objective.hessian_vector_product``. Defaults to
            ``"auto"``.
        variables: A block of the trainable variables (see ``hessian_eigenvalues``).
            Defaults to None (all).
        curvature: ``"hessian"`` or ``"ggn"`` (see ``hessian_eigenvalues``). Defaults to
            ``"hessian"``.
        verbose: 1 or 2 shows a ``keras.utils.Progbar`` over the ``runs`` (its known
            length), with the largest node of the runs so far (``lambda_max``, a lower bound
            of the top eigenvalue), the trace estimate n·mean(Σ w θ) (``trace``) and, from
            the second run on, its standard error over the runs (``stderr``). Defaults to 0.

    Returns:
        A ``SpectrumResult`` with ``nodes`` and ``weights`` of shape ``(runs, steps)`` and
        ``density(grid, sigma=None)``.

    Raises:
        ValueError: a ``steps`` or ``runs`` below 1, or a run's basis (bytes as above) that
            does not fit in the available memory (``available_memory``), before any product.
    """
    steps = _checks.integer("steps", steps, 1)
    runs = _checks.integer("runs", runs, 1)
    op = _Hessian(objective, split, hvp_mode, variables=variables, curvature=curvature)
    if steps > op.n:
        logger.info("hessian_spectrum: steps=%d capped at n_params=%d", steps, op.n)
        steps = op.n
    _check_memory(
        WORK_VECTORS,
        op.n,
        stored=steps + 1,
        dtype=basis_dtype(op.objective.precision),
        what=f"hessian_spectrum with steps={steps}",
        advice="pass fewer `steps` (--steps)",
    )
    rng = np.random.default_rng(seed)
    bar = progbar(runs, verbose, "run")
    nodes, weights = np.zeros((runs, steps)), np.zeros((runs, steps))
    v0 = np.empty(op.n)
    for r in range(runs):
        nodes[r], weights[r] = _slq_run(op, rademacher(rng, op.n, out=v0), steps)
        if bar is not None:
            bar.update(r + 1, _slq_shown(nodes[: r + 1], weights[: r + 1], op.n))
    logger.info("Hessian spectrum: %d runs of %d steps, %d products", runs, steps, op.n_hvp)
    return SpectrumResult(
        nodes=nodes,
        weights=weights,
        n_params=op.n,
        n_hvp=op.n_hvp,
        **op.result_fields(),
    )


# ------------------------------------------------------------------------------- per layer
@dataclass(frozen=True)
class LayerCurvature:
    """The top eigenvalue and the trace of each diagonal block of H (or G), one per group.

    Attributes:
        names: The groups' names, in model order (a layer's: the path of its variables
            without the variable's name, e.g. ``"conv2d"`` or ``"block_1/dense"``).
        variables: The paths of each group's variables.
        n_params: ``(groups,)`` number of parameters of each block.
        lambda_max: ``(groups,)`` largest eigenvalue of each block (units of the loss per
            squared weight unit).
        residuals: ``(groups,)`` its certificate ‖H_BB v − λv‖ / |λ|, a fresh product.
        converged: ``(groups,)`` True where the residual is ≤ ``tol``.
        trace: ``(groups,)`` tr(H_BB) (NaN when not computed): exact for a block of at most
            ``trace_samples`` parameters, else Hutchinson's estimate (see ``trace_method``).
        trace_stderr: ``(groups,)`` its standard error (0 where exact).
        trace_converged: ``(groups,)`` True where the trace is exact or reached
            ``trace_tol``.
        n_hvp: Products used in all.
        curvature: ``"hessian"`` or ``"ggn"``.
        precision: The dtype of the products (``Objective.precision``).
        tol: The eigenvalue tolerance.
        trace_method: ``(groups,)`` how each trace was computed: ``"exact"``,
            ``"hutchinson"`` or ``"hutchpp"`` (None where no trace was computed).
    """

    names: tuple[str, ...]
    variables: tuple[tuple[str, ...], ...]
    n_params: np.ndarray
    lambda_max: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    trace: np.ndarray
    trace_stderr: np.ndarray
    trace_converged: np.ndarray
    n_hvp: int
    curvature: str = "hessian"
    precision: str | None = None
    tol: float = float("nan")
    trace_method: tuple[str | None, ...] = ()

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per group."""
        return [
            {
                "name": self.names[i],
                "variables": list(self.variables[i]),
                "n_params": int(self.n_params[i]),
                "lambda_max": float(self.lambda_max[i]),
                "residual": float(self.residuals[i]),
                "converged": bool(self.converged[i]),
                "trace": float(self.trace[i]),
                "trace_stderr": float(self.trace_stderr[i]),
                "trace_converged": bool(self.trace_converged[i]),
                "trace_method": self.trace_method[i] if self.trace_method else None,
            }
            for i in range(len(self.names))
        ]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the rows and the run's ``curvature``, ``precision``, ``tol``, ``n_hvp``
        (``plot_layer_curvature`` reads this too)."""
        return {
            "curvature": self.curvature,
            "precision": self.precision,
            "tol": self.tol,
            "n_hvp": int(self.n_hvp),
            "layers": self.rows(),
        }


def _block_name(paths: Sequence[str]) -> str:
    """A layer's name from its variables' paths: their common prefix without the last part."""
    heads = {p.rpartition("/")[0] or p for p in paths}
    return heads.pop() if len(heads) == 1 else paths[0]


def _layer_groups(objective: Objective) -> dict[str, list[str]]:
    """The trainable variables grouped by the innermost layer that owns them, in model order."""
    owners = variable_owners(objective.model)
    groups: dict[int, list[str]] = {}
    for v, key in zip(objective.trainable_variables, objective.trainable_variables.paths):
        groups.setdefault(id(owners.get(id(v), v)), []).append(key)
    out: dict[str, list[str]] = {}
    for paths in groups.values():
        name = _block_name(paths)
        while name in out:  # two layers whose variables share a prefix
            name = f"{name}'"
        out[name] = paths
    return out


def _selected_groups(objective: Objective, groups) -> dict[str, Any]:
    """``layer_curvature``'s groups as {name: selector}, checked."""
    if groups is None:
        selected: dict[str, Any] = dict(_layer_groups(objective))
    elif isinstance(groups, dict):
        selected = {str(name): sel for name, sel in groups.items()}
    elif isinstance(groups, Sequence) and not isinstance(groups, str | bytes):
        selected = {}
        for sel in groups:
            name = sel.name if isinstance(sel, keras.layers.Layer) else str(sel)
            selected[name] = sel
    else:
        raise ValueError(
            "Argument `groups` must be None, a dict {name: selector} or a sequence of "
            f"selectors. Received: groups={_describe(groups)}."
        )
    if not selected:
        raise ValueError(f"Argument `groups` must not be empty. Received: groups={groups!r}.")
    return selected


@one_blas_thread
def layer_curvature(
    objective: Objective,
    groups=None,
    *,
    curvature: Curvature = "hessian",
    tol: float = 1e-4,
    max_iter: int | None = None,
    trace: bool = False,
    trace_samples: int = TRACE_SAMPLES,
    trace_tol: float = TRACE_TOL,
    trace_method: TraceMethod = "auto",
    seed: int | None = 0,
    split: Split = "train",
    hvp_mode: HVPMode = "auto",
    verbose: int = 0,
) -> LayerCurvature:
    """Which layers are sharp: the top eigenvalue and the trace of each layer's block of H.

    For each group B of trainable variables (by default one per layer that owns trainable
    variables), the largest eigenvalue of the diagonal block H_BB (``hessian_eigenvalues``
    with ``variables=B``: thick-restart Lanczos, certified by a fresh residual) and tr(H_BB)
    (``hessian_trace``): exact, from |B| unit vectors, for a block of at most
    ``trace_samples`` parameters (a BatchNorm's, a small layer's), else Hutchinson's estimate.
    The blocks ignore the coupling between layers: λ_max(H_BB) ≤ λ_max(H) for a positive
    semi-definite H (Cauchy interlacing), and the traces of all layers add up to tr(H). The
    cost is about one eigenvalue run and at most ``trace_samples`` products per group, each
    product a full one (the backward pass goes through the whole model).

    Args:
        objective: The loss; H is taken w.r.t. its trainable variables at w0.
        groups: None (one group per layer, named by the path of its variables), or
            ``{name: selector}`` / a sequence of selectors, each selector anything
            ``variables=`` of ``hessian_eigenvalues`` takes (a layer, a layer name, a regular
            expression on the paths, a list of paths or variables). Defaults to None.
        curvature: ``"hessian"`` or ``"ggn"`` (see ``hessian_eigenvalues``). Defaults to
            ``"hessian"``.
        tol: Relative residual that certifies each top eigenvalue. Defaults to 1e-4.
        max_iter: Cap on the products of each eigenvalue run. Defaults to None
            (``LANCZOS_MAX_ITER``).
        trace: Also compute each block's trace (its cost is up to ``trace_samples`` products
            per group: 308 of the 350 products on ``landscape train``'s CNN, 1,000 examples,
            where the eigenvalues alone took 42 products and 15 s). Defaults to False, as
            ``landscape hessian --layers`` without ``--trace``.
        trace_samples: Cap on the Hutchinson probes per group (on all of Hutch++'s products
            with ``trace_method="hutchpp"``); with ``trace_method="auto"`` or ``"hutchpp"``
            a block of at most this many parameters is traced exactly. Defaults to
            ``TRACE_SAMPLES`` (100).
        trace_tol: Relative standard error at which a Hutchinson trace stops. Defaults to
            ``TRACE_TOL`` (0.05).
        trace_method: ``"auto"``, ``"exact"``, ``"hutchinson"`` or ``"hutchpp"``
            (``hessian_trace``'s ``method``). Defaults to ``"auto"``.
        seed: Seed of the start vectors and probes (the same for every group). Defaults to 0.
        split: Data split of the objective. Defaults to ``"train"``.
        hvp_mode: See ``Objective.hessian_vector_product``. Defaults to
            ``"auto"``.
        verbose: 1 or 2 shows the solvers' progress bars. Defaults to 0.

    Returns:
        A ``LayerCurvature`` (``names``, ``n_params``, ``lambda_max``, ``residuals``,
        ``converged``, ``trace``, ``trace_stderr``, ``trace_method``; ``rows()`` and
        ``as_dict()`` for JSON).

    Raises:
        ValueError: ``groups`` of another type, a selector that selects nothing (naming
            ``variables``), a loss without a GGN for ``curvature="ggn"``, an unknown
            ``trace_method``, or a bad cap or tolerance (named).

    Example:
        >>> report = landscape.layer_curvature(obj, trace=True)
        >>> for row in report.rows(): print(row["name"], row["lambda_max"], row["trace"])
        >>> landscape.plot_layer_curvature(report)

    References:
        Zhang et al. 2024, "Why Transformers Need Adam: A Hessian Perspective",
        https://arxiv.org/abs/2402.16788 (block-wise Hessian spectra).
    """
    curvature = _checks.choice("curvature", curvature, Curvature)
    trace = _checks.boolean("trace", trace)
    trace_method = _checks.choice("trace_method", trace_method, TraceMethod)
    selected = _selected_groups(objective, groups)
    rows, n_hvp, precision = [], 0, None
    for name, sel in selected.items():
        eig = hessian_eigenvalues(
            objective, 1, tol=tol, max_iter=max_iter, seed=seed, split=split,
            hvp_mode=hvp_mode, variables=sel, curvature=curvature, verbose=verbose,
        )  # fmt: skip
        n_hvp += eig.n_hvp
        precision = eig.precision
        tr_values = (np.nan, np.nan, False, None)
        if trace:
            tr = hessian_trace(
                objective, samples=trace_samples, tol=trace_tol, seed=seed, split=split,
                hvp_mode=hvp_mode, variables=sel, curvature=curvature, method=trace_method,
                verbose=verbose,
            )  # fmt: skip
            n_hvp += tr.n_hvp
            tr_values = (tr.estimate, tr.stderr, tr.converged, tr.method)
        rows.append((name, eig, tr_values))
        logger.info(
            "%s block %s (%d parameters): lambda_max %.6g (residual %.2g), trace %.6g",
            curvature, name, eig.n_params, eig.values[0], eig.residuals[0], tr_values[0],
        )  # fmt: skip
    return LayerCurvature(
        names=tuple(name for name, _, _ in rows),
        variables=tuple(eig.variables for _, eig, _ in rows),
        n_params=np.array([eig.n_params for _, eig, _ in rows]),
        lambda_max=np.array([eig.values[0] for _, eig, _ in rows]),
        residuals=np.array([eig.residuals[0] for _, eig, _ in rows]),
        converged=np.array([eig.converged for _, eig, _ in rows]),
        trace=np.array([t[0] for _, _, t in rows], np.float64),
        trace_stderr=np.array([t[1] for _, _, t in rows], np.float64),
        trace_converged=np.array([t[2] for _, _, t in rows]),
        n_hvp=n_hvp,
        curvature=curvature,
        precision=precision,
        tol=float(tol),
        trace_method=tuple(t[3] for _, _, t in rows),
    )
