"""The top Hessian (or GGN) eigenvalues of each mini-batch's own loss: their distribution.

``batch_spectrum`` splits an ``Objective``'s training data into consecutive mini-batches
(``Objective.batches``), and on each batch computes the certified top-k eigenvalues of that
batch's loss, exactly as the model defines it (its sample-weighted mean over the batch, masks and
loss weights included), with ``hessian_eigenvalues``. The spread of λ_max over the batches shows
how noisy a single-batch sharpness is; Park & Kim (2022) draw it to compare architectures.

References:
    Park & Kim 2022, "How Do Vision Transformers Work?", https://arxiv.org/abs/2202.06709
    (Hessian max eigenvalue spectra over mini-batches).
    Yao, Gholami, Keutzer & Mahoney 2020, "PyHessian: Neural Networks Through the Lens of the
    Hessian", https://arxiv.org/abs/1912.07145.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from landscape import _checks
from landscape._checks import Which
from landscape._progress import finish, progbar
from landscape._provenance import plain
from landscape.hessian import (
    Curvature,
    EigenResult,
    _check_eigen_memory,
    _eigen_sizes,
    _Hessian,
    hessian_eigenvalues,
)
from landscape.objective import Objective

logger = logging.getLogger("landscape")

# Default number of mini-batches.
BATCHES = 10


@dataclass(frozen=True)
class BatchSpectrum:
    """The top eigenvalues of each mini-batch's Hessian (or GGN), with their certificates.

    Attributes:
        values: ``(batches, k)`` eigenvalues of each batch, ordered as ``which`` asks
            (``"largest"``: descending, so ``values[:, 0]`` is each batch's λ_max).
        residuals: ``(batches, k)`` their certificates ‖Hv − λv‖ / |λ|, fresh products.
        converged: ``(batches,)`` True where every residual of the batch is ≤ ``tol``.
        capped: ``(batches,)`` True where the batch's run stopped at ``max_iter``.
        batch_sizes: ``(batches,)`` samples in each batch (the last may be smaller).
        n_hvp: ``(batches,)`` products used on each batch (each over that batch only).
        full_values: ``(k,)`` eigenvalues of the full-data loss (the whole Objective), or
            None when not asked for (``full=False``).
        full_residuals: ``(k,)`` their certificates, or None.
        full_converged: Whether the full-data eigenvalues are certified, or None.
        k: Eigenvalues per batch.
        which: ``"largest"``, ``"magnitude"`` or ``"smallest"``.
        batch_size: The batch size asked for.
        curvature: ``"hessian"`` or ``"ggn"``.
        tol: The tolerance of the certificates.
        n_params: Dimension of the matrix.
        precision: The dtype of the products (``Objective.precision``).
        backend: The Keras backend.
    """

    values: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    capped: np.ndarray
    batch_sizes: np.ndarray
    n_hvp: np.ndarray
    full_values: np.ndarray | None
    full_residuals: np.ndarray | None
    full_converged: bool | None
    k: int
    which: str
    batch_size: int
    curvature: str
    tol: float
    n_params: int
    precision: str | None = None
    backend: str | None = None

    @property
    def lambda_max(self) -> np.ndarray:
        """``(batches,)`` each batch's first eigenvalue (its λ_max for ``which="largest"``)."""
        return self.values[:, 0]

    @property
    def full_lambda_max(self) -> float | None:
        """The full-data loss's first eigenvalue, or None when not computed."""
        return None if self.full_values is None else float(self.full_values[0])

    def summary(self) -> dict[str, float]:
        """Mean, standard deviation (ddof=1; NaN for one batch), min, median and max of
        ``lambda_max`` over the batches."""
        lam = self.lambda_max
        return {
            "mean": float(np.mean(lam)),
            "std": float(np.std(lam, ddof=1)) if lam.size > 1 else float("nan"),
            "min": float(np.min(lam)),
            "median": float(np.median(lam)),
            "max": float(np.max(lam)),
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: every field as lists and plain numbers, with the ``summary()``
        (``plot_batch_spectrum`` reads this too). A NaN (the std of one batch) is None."""

        full = self.full_values
        return {
            "values": plain(self.values),  # NaN and inf (an empty batch's residual) as None
            "residuals": plain(self.residuals),
            "converged": [bool(c) for c in self.converged],
            "capped": [bool(c) for c in self.capped],
            "batch_sizes": [int(b) for b in self.batch_sizes],
            "n_hvp": [int(n) for n in self.n_hvp],
            "full_values": plain(full),
            "full_residuals": plain(self.full_residuals),
            "full_converged": self.full_converged,
            "summary": plain(self.summary()),
            "k": self.k,
            "which": self.which,
            "batch_size": self.batch_size,
            "curvature": self.curvature,
            "tol": self.tol,
            "n_params": self.n_params,
            "precision": self.precision,
            "backend": self.backend,
        }


def _objective_of(objective_or_model, data) -> Objective:
    """The Objective given, or one of a model and its data (the compiled loss)."""
    if isinstance(objective_or_model, Objective):
        if data is not None:
            raise ValueError(
                "Argument `data` must be None when an Objective is given (it has its own "
                f"data). Received: data of type {type(data).__name__}."
            )
        return objective_or_model
    if isinstance(objective_or_model, keras.Model):
        if data is None:
            raise ValueError(
                "Argument `data` is required with a keras.Model (the mini-batches are drawn "
                "from it). Received: data=None."
            )
        return Objective(objective_or_model, data)
    raise ValueError(
        "Argument `objective_or_model` must be a landscape.Objective or a keras.Model. "
        f"Received: objective_or_model={type(objective_or_model).__name__}."
    )


def _checked(objective: Objective, k, batches, batch_size, which, tol, max_iter, basis_size,
             curvature) -> tuple[int, int | None, int, dict]:  # fmt: skip
    """(k, batches, batch_size, solver options), every one checked on the whole objective's
    operator (its size, the GGN's loss, the basis's memory) before any product."""
    batches = None if batches is None else _checks.integer("batches", batches)
    batch_size = objective.batch_size if batch_size is None else batch_size
    batch_size = _checks.integer("batch_size", batch_size)
    which = _checks.choice("which", which, Which)
    tol = _checks.fraction("tol", tol)
    op = _Hessian(objective, "train", "auto", curvature=curvature)
    k, max_iter, basis_size = _eigen_sizes(op, k, "lanczos", which, max_iter, basis_size)
    _check_eigen_memory(op.n, k, "lanczos", basis_size, objective.precision)
    solver = dict(which=which, tol=tol, max_iter=max_iter, basis_size=basis_size,
                  curvature=op.curvature)  # fmt: skip
    return k, batches, batch_size, solver


def _batch_size_of(sub: Objective) -> int:
    """The number of samples of a one-batch Objective of ``Objective.batches`` (array data)."""
    return int(sub._split("train").n)


def batch_spectrum(
    objective_or_model,
    data=None,
    *,
    k: int = 1,
    batches: int | None = BATCHES,
    batch_size: int | None = None,
    curvature: Curvature = "hessian",
    which: Which = "largest",
    full: bool = False,
    tol: float = 1e-4,
    max_iter: int | None = None,
    basis_size: int | None = None,
    seed: int | None = None,
    verbose: int = 0,
) -> BatchSpectrum:
    """The certified top-k eigenvalues of the Hessian (or GGN) of each mini-batch's loss.

    The training data are cut into consecutive batches of ``batch_size`` samples, in the order
    they come (shuffle them beforehand for a random draw), and the first ``batches`` are used.
    Each batch's loss is the model's own loss on that batch alone, its sample-weighted mean in
    inference mode (``Objective.batches``: the batch's Objective shares one compiled function
    with the others), and its eigenvalues are ``hessian_eigenvalues``' thick-restart Lanczos
    with residual certificates. The full-data loss is the mean of the batch losses weighted by
    size, so its Hessian is the mean of theirs, and its λ_max is at most the mean of theirs
    (λ_max is convex in the matrix): with ``full=True`` it is computed too, on the whole
    Objective (all of its data, not only the batches used).

    Args:
        objective_or_model: A ``landscape.Objective`` (its loss, options and training data),
            or a built, compiled ``keras.Model`` with ``data`` (then the Objective is
            ``Objective(model, data)``: the compiled loss, defaults otherwise).
        data: With a model: ``(x, y)``, ``(x, y, sample_weight)`` or a finite
            ``tf.data.Dataset``, as ``Objective`` takes them. None with an Objective.
            Defaults to None.
        k: Eigenvalues per batch. Defaults to 1.
        batches: The number of batches (the first ones); None for every batch of the data.
            Fewer are used when the data hold fewer. Defaults to 10.
        batch_size: Samples per batch (the last batch of the data may be smaller; the
            result's ``batch_sizes`` says). Defaults to None: the Objective's
            ``batch_size``.
        curvature: ``"hessian"`` or ``"ggn"`` (the generalized Gauss-Newton matrix, see
            ``hessian_eigenvalues``). Defaults to ``"hessian"``.
        which: ``"largest"``, ``"magnitude"`` or ``"smallest"``, as in
            ``hessian_eigenvalues``. Defaults to ``"largest"``.
        full: Also compute the eigenvalues of the full-data loss. Defaults to False.
        tol: Relative residual that certifies an eigenvalue. Defaults to 1e-4.
        max_iter: Cap on the products of each Lanczos run (see ``hessian_eigenvalues``).
            Defaults to None (1000).
        basis_size: The Lanczos basis (see ``hessian_eigenvalues``). Defaults to None.
        seed: Seeds the random start vectors (one independent stream per batch, drawn from
            ``numpy.random.SeedSequence(seed)``). Defaults to None (fresh entropy).
        verbose: 1 or 2 shows a progress bar over the batches. Defaults to 0.

    Returns:
        A ``BatchSpectrum``: ``values`` of shape (batches, k), their ``residuals``,
        ``converged`` and ``capped`` per batch, ``batch_sizes``, ``n_hvp`` per batch, and with
        ``full=True`` the full-data ``full_values``.

    Raises:
        ValueError: a bad argument (named): not an Objective or a model with data, ``k``
            above the number of parameters, a ``batches``/``batch_size`` below 1, an unknown
            ``curvature`` or ``which``, a ``tol`` outside (0, 1), a loss without a GGN, or a
            Lanczos basis that does not fit in memory; all before any product.

    Example:
        >>> spec = landscape.batch_spectrum(obj, batches=20, batch_size=128, full=True, seed=0)
        >>> spec.lambda_max, spec.summary(), spec.full_lambda_max
        >>> landscape.plot_batch_spectrum([sgd_spec, sam_spec], labels=["SGD", "SAM"])

    References:
        Park & Kim 2022, "How Do Vision Transformers Work?", https://arxiv.org/abs/2202.06709
        Wu & Simon 2000, thick-restart Lanczos, https://doi.org/10.1137/S0895479898334605
    """
    objective = _objective_of(objective_or_model, data)
    full = _checks.boolean("full", full)
    k, batches, batch_size, solver = _checked(
        objective, k, batches, batch_size, which, tol, max_iter, basis_size, curvature
    )
    seeds = np.random.SeedSequence(seed)
    bar = progbar(batches, verbose, "batch")
    results: list[EigenResult] = []
    sizes: list[int] = []
    for sub in objective.batches(batch_size, max_batches=batches):
        (stream,) = seeds.spawn(1)
        results.append(hessian_eigenvalues(sub, k, seed=stream, **solver))
        sizes.append(_batch_size_of(sub))
        if bar is not None:
            bar.update(len(results), [("lambda", float(results[-1].values[0]))])
    finish(bar, len(results))
    whole = hessian_eigenvalues(objective, k, seed=seeds.spawn(1)[0], **solver) if full else None
    return _result(results, sizes, whole, k=k, batch_size=batch_size, **solver)


def _padded(a: np.ndarray, k: int) -> np.ndarray:
    """``a`` (at most k entries) with NaN after its own entries, k in all."""
    out = np.full(k, np.nan)
    out[: len(a)] = a
    return out


def _result(results: list[EigenResult], sizes, whole: EigenResult | None, *, k, batch_size,
            which, tol, curvature, **_) -> BatchSpectrum:  # fmt: skip
    """The per-batch results stacked, and one INFO line. A batch whose Krylov space held fewer
    than k eigenvalues (a rank-deficient block) gets NaN for the missing ones and is not
    certified, with a warning."""
    first = results[0]
    short = [i for i, r in enumerate(results) if len(r.values) < k]
    if short:
        logger.warning(
            "%d of %d batches gave fewer than k=%d eigenvalues (batches %s: their %s has a "
            "smaller Krylov space, e.g. rank-deficient or zero-weight); the missing values are "
            "NaN and those batches are not certified.",
            len(short), len(results), k, ", ".join(map(str, short)), curvature,
        )  # fmt: skip
    spectrum = BatchSpectrum(
        values=np.stack([_padded(r.values, k) for r in results]),
        residuals=np.stack([_padded(r.residuals, k) for r in results]),
        converged=np.array([r.converged and len(r.values) == k for r in results]),
        capped=np.array([r.capped for r in results]),
        batch_sizes=np.array(sizes),
        n_hvp=np.array([r.n_hvp for r in results]),
        full_values=None if whole is None else whole.values,
        full_residuals=None if whole is None else whole.residuals,
        full_converged=None if whole is None else whole.converged,
        k=k,
        which=which,
        batch_size=batch_size,
        curvature=curvature,
        tol=tol,
        n_params=first.n_params,
        precision=first.precision,
        backend=first.backend,
    )
    s = spectrum.summary()
    logger.info(
        "batch spectrum (%s, %d batches of %d): λ_1 mean %.6g, std %.3g, range [%.6g, %.6g]; "
        "full data %s; %d of %d batches certified",
        curvature, len(results), batch_size, s["mean"], s["std"], s["min"], s["max"],
        spectrum.full_lambda_max, int(spectrum.converged.sum()), len(results),
    )  # fmt: skip
    return spectrum
