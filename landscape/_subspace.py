"""Rayleigh–Ritz with stored products: the SharpnessTracker's warm-started eigensolver.

The subspace U (orthonormal rows) is kept beside its products W = H U, all computed at the
current weights by this call. The Ritz pairs (θᵢ, yᵢ = cᵢ U) of G = U Wᵀ then have
H yᵢ = cᵢ W by linearity, so each certificate ‖H yᵢ − θᵢ yᵢ‖ = ‖cᵢ W − θᵢ cᵢ U‖ is computed
explicitly from fresh products at the current weights, without a product of its own (the
separate certificate product of ``landscape.hessian_eigenvalues`` costs one more per
eigenvalue). While a wanted pair's residual exceeds ``tol``, U grows by the residual of the
worst wanted pair (from a single start vector this is Lanczos: the residual of a Ritz vector
of K_j is the next Krylov direction). A full basis keeps the ``_n_kept`` best Ritz vectors and
their products (cᵢ W, no product). Wu & Simon 2000 (thick restart); Parlett 1998, "The
Symmetric Eigenvalue Problem", §11 (Rayleigh–Ritz, residual bounds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from landscape.hessian import (
    BLOCK,
    DGKS,
    _check_memory,
    _combine,
    _Hessian,
    _n_kept,
    _order,
    _project,
    _subtract,
    basis_dtype,
)

# An orthogonalized new direction shorter than this fraction of its length before is dropped
# (it lies in U already) and replaced by a random one.
DEPENDENT = 1e-8


@dataclass(frozen=True)
class Pairs:
    """Certified Ritz pairs: values (ordered as asked), unit vectors as float64 rows, the
    explicit residuals ‖H y − θ y‖/|θ|, products used, and whether the cap stopped the run."""

    values: np.ndarray
    vectors: np.ndarray
    residuals: np.ndarray
    n_hvp: int
    converged: bool
    capped: bool


def check_memory(n: int, k: int, basis_size: int, precision: str) -> None:
    """U and W (``basis_size`` vectors each, ``basis_dtype``) and 3k float64 n-vectors."""
    _check_memory(
        3 * k,
        n,
        stored=2 * basis_size,
        dtype=basis_dtype(precision),
        what=f"SharpnessTracker with basis_size={basis_size} and k={k}",
        advice=f"pass a smaller `basis_size` (at least k + 2 = {k + 2}) or free memory",
    )


class _Basis:
    """U, W = H U and the symmetrized projection G = U Wᵀ, grown one product at a time."""

    def __init__(self, op: _Hessian, m: int, k: int):
        dtype = basis_dtype(op.objective.precision)
        self.op, self.p = op, 0
        self.U, self.W = np.empty((m, op.n), dtype), np.empty((m, op.n), dtype)
        self.G = np.zeros((m, m))
        # Reused n-vectors (a fresh 190 MB one costs its page faults at ResNet-50 size): the
        # product, the k Ritz vectors and residuals, and one row of scratch.
        self.product, self.scratch = np.empty(op.n), np.empty(op.n)
        self.vectors, self.residual = np.empty((k, op.n)), np.empty((k, op.n))

    def add(self, u: np.ndarray) -> bool:
        """Orthogonalize u against U (a second time where the first pass removed more than
        1 − 1/√2 of it: ``hessian.DGKS``), multiply, store; False when u lies in U."""
        u = np.array(u, np.float64)
        before = norm = float(np.linalg.norm(u))
        for _ in range(2 if self.p else 0):
            _subtract(u, _project(self.U[: self.p], u), self.U[: self.p])
            left, norm = norm, float(np.linalg.norm(u))
            if norm >= DGKS * left:
                break
        if not np.isfinite(norm) or norm <= DEPENDENT * before:
            return False
        p = self.p
        self.U[p] = np.divide(u, norm, out=u)
        # The product of the vector as stored (a float32 row goes to the engine as it is: it
        # rounds to the variables' dtype, the same numbers as widening it first).
        self.W[p] = self.op(self.U[p], out=self.product)
        # (uᵢ·w_p + u_p·wᵢ)/2: symmetric although float32 products are not exactly so (W[p] is
        # the product as _project would round it for a float32 basis).
        column = (_project(self.U[: p + 1], self.W[p]) + _project(self.W[: p + 1], self.U[p])) / 2
        self.G[: p + 1, p] = self.G[p, : p + 1] = column
        self.p += 1
        return True

    def ritz(self, which: str, k: int):
        """(θ in the asked order, the rotation c) of the projected G."""
        theta, c = np.linalg.eigh(self.G[: self.p, : self.p])
        order = _order(theta, which)
        return theta[order], c[:, order]

    def restart(self, theta: np.ndarray, c: np.ndarray, keep: int) -> None:
        """Keep the first ``keep`` Ritz vectors and their products (no product needed)."""
        rotation, p = np.ascontiguousarray(c[:, :keep].T), self.p
        for start in range(0, self.U.shape[1], BLOCK):
            cols = slice(start, start + BLOCK)
            self.U[:keep, cols] = rotation @ self.U[:p, cols]
            self.W[:keep, cols] = rotation @ self.W[:p, cols]
        self.G[:] = 0.0
        self.G[np.arange(keep), np.arange(keep)] = theta[:keep]
        self.p = keep


def eigenpairs(op: _Hessian, k, *, which, tol, max_iter, basis_size, start, rng) -> Pairs:
    """The ``k`` wanted eigenpairs of ``op``, from the rows of ``start`` (a warm start) or a
    random vector; certified by explicit residuals from this call's products (module doc)."""
    basis, first = _Basis(op, basis_size, k), op.n_hvp
    pending, capped = [np.asarray(v, np.float64) for v in start], False
    while True:
        while (pending or basis.p < min(k, op.n)) and basis.p < basis_size:
            if not basis.add(pending.pop(0) if pending else rng.standard_normal(op.n)):
                pending.append(rng.standard_normal(op.n))  # it lay in U: a new direction
        theta, c = basis.ritz(which, k)
        values, coeff = theta[:k], c[:, :k].T
        vectors = _combine(coeff, basis.U[: basis.p], out=basis.vectors[: len(values)])
        residual = _combine(coeff, basis.W[: basis.p], out=basis.residual[: len(values)])
        for row, vector, value in zip(residual, vectors, values):  # W c − θ U c
            np.subtract(row, np.multiply(value, vector, out=basis.scratch), out=row)
        norms = np.linalg.norm(residual, axis=1)
        with np.errstate(divide="ignore"):
            relative = np.where(values != 0, norms / np.abs(values), np.inf)
        if np.all(relative <= tol) or basis.p == op.n:
            break
        if op.n_hvp - first >= max_iter:
            capped = True
            break
        if basis.p == basis_size:
            basis.restart(theta, c, _n_kept(k, basis_size))
        pending = [residual[int(np.argmax(relative))]]
    return Pairs(
        values=np.asarray(values, np.float64),
        vectors=vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        residuals=relative,
        n_hvp=op.n_hvp - first,
        converged=bool(np.all(relative <= tol)),
        capped=capped,
    )
