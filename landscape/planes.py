"""Surface planes beyond random directions: Hessian eigenvectors and the plane through 3 models.

Both return ordinary ``Direction`` objects (keyed by ``variable.path``), so they work everywhere a
random direction does: ``compute_surface(obj, [d1, d2], ...)``, ``Objective.evaluate_at``,
surface files and their resumption.

- ``eigenvector_directions``: the top two eigenvectors of the loss's Hessian, or the top and the
  bottom (most negative) one, orthonormal. A random plane almost never contains the sharpest
  direction (Li et al. 2018 themselves note that random directions see a convex-looking bowl
  even around saddles); planes along the extreme Hessian eigenvectors show the sharpest
  curvature and negative curvature directly.
- ``plane_through``: the plane through the weights of three models, centred at the first (the
  3-model plane of tomgoldstein/loss-landscape's ``--model_file2/--model_file3``, made
  orthogonal as in Garipov et al. 2018's figures).

This module sits above ``landscape.hessian`` (which imports ``landscape.directions``); the
planes live here rather than in ``directions`` so that no import cycle is needed.

References:
    Li et al. 2018, Visualizing the Loss Landscape of Neural Nets,
    https://arxiv.org/abs/1712.09913; code: https://github.com/tomgoldstein/loss-landscape
    (``net_plotter.setup_direction``: the x/y directions to ``--model_file2``/``--model_file3``).
    Garipov et al. 2018, Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs,
    https://arxiv.org/abs/1802.10026 (the orthonormal plane through three weight vectors).
    Yao et al. 2020, PyHessian, https://arxiv.org/abs/1912.07145 (loss surfaces along the top
    Hessian eigenvectors).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import keras
import numpy as np

from landscape import _checks
from landscape._checks import Include, Split
from landscape.directions import Direction, fingerprint_arrays, float_variables, variable_values
from landscape.hessian import EigenResult, hessian_eigenvalues
from landscape.objective import Objective

logger = logging.getLogger("landscape")

EigenPair = Literal["top2", "top-bottom"]
EIGEN_PAIRS = _checks.options(EigenPair)
# |cos| between the two eigenvectors above which they are reported as not orthogonal (exact
# eigenvectors of distinct eigenvalues are; unconverged Ritz vectors from two runs may not be).
ORTHOGONALITY_WARNING = 1e-3
# m2 counts as on the line through m0 and m1 when its distance from it is below this fraction
# of ‖w1 − w0‖ (the plane would then be undefined, or dominated by rounding).
COLLINEAR_RTOL = 1e-6


# ------------------------------------------------------------------- Hessian eigenvector planes
def _flat(d: Direction) -> np.ndarray:
    return np.concatenate([a.astype(np.float64).ravel() for a in d.arrays.values()])


def _unflat(flat: np.ndarray, like: Direction, metadata: dict) -> Direction:
    arrays, offset = {}, 0
    for key, a in like.arrays.items():
        arrays[key] = flat[offset : offset + a.size].reshape(a.shape).astype(a.dtype)
        offset += a.size
    return Direction(arrays, metadata)


def _eigen_results(source, pair: str, solver: dict) -> list[EigenResult]:
    """The EigenResults to take the vectors from: given, or computed on the Objective."""
    if isinstance(source, Objective):
        if pair == "top2":
            return [hessian_eigenvalues(source, 2, which="largest", **solver)]
        return [
            hessian_eigenvalues(source, 1, which="largest", **solver),
            hessian_eigenvalues(source, 1, which="smallest", **solver),
        ]
    if isinstance(source, EigenResult):
        return [source]
    if isinstance(source, Sequence) and source and all(isinstance(r, EigenResult) for r in source):
        return list(source)
    raise ValueError(
        "Argument `source` must be an Objective, an EigenResult or a sequence of EigenResults. "
        f"Received: source={type(source).__name__}."
    )


def _pick(results: list[EigenResult], pair: str) -> list[tuple[EigenResult, int]]:
    """``[(result, index), (result, index)]`` of the two eigenpairs ``pair`` asks for."""
    for r in results:
        if r.preconditioned:
            raise ValueError(
                "Argument `source` must hold eigenvectors of the Hessian itself; a "
                "preconditioned EigenResult holds those of P^(-1/2) H P^(-1/2). "
                "Received: source with preconditioned=True."
            )
    largest = [r for r in results if r.which == "largest" and len(r.vectors) >= 1]
    if pair == "top2":
        for r in largest:
            if len(r.vectors) >= 2:
                return [(r, 0), (r, 1)]
        raise ValueError(
            "Argument `pair='top2'` needs an EigenResult of which='largest' with k >= 2. "
            f"Received: {[(r.which, len(r.vectors)) for r in results]} (which, k)."
        )
    smallest = [r for r in results if r.which == "smallest" and len(r.vectors) >= 1]
    if not largest or not smallest:
        raise ValueError(
            "Argument `pair='top-bottom'` needs two EigenResults, one of which='largest' and "
            "one of which='smallest'. "
            f"Received: {[(r.which, len(r.vectors)) for r in results]} (which, k)."
        )
    return [(largest[0], 0), (smallest[0], 0)]


def _metadata(r: EigenResult, i: int, pair: str, axis: int) -> dict:
    return {
        "kind": "hessian_eigenvector",
        "pair": pair,
        "axis": axis,
        "which": r.which,
        "index": i,
        "eigenvalue": float(r.values[i]),
        "residual": float(r.residuals[i]),
        "converged": bool(r.converged),
        "tol": float(r.tol),
        "precision": r.precision,
    }


def eigenvector_directions(
    source: Objective | EigenResult | Sequence[EigenResult],
    pair: EigenPair = "top2",
    *,
    tol: float = 1e-4,
    max_iter: int | None = None,
    seed: int | None = 0,
    split: Split = "train",
    verbose: int = 0,
) -> tuple[Direction, Direction]:
    """Two orthonormal surface directions along Hessian eigenvectors.

    ``pair="top2"``: v₁, v₂ of the two largest eigenvalues λ₁ ≥ λ₂ (the two sharpest
    directions). ``pair="top-bottom"``: v of the largest and of the smallest, most negative,
    eigenvalue (sharpest curvature against negative curvature, i.e. a saddle if λ_min < 0).
    Exact eigenvectors of distinct eigenvalues are orthogonal; the returned pair is made exactly
    orthonormal in float64 (d₁ = v₁/‖v₁‖, d₂ = Gram–Schmidt of v₂ against d₁, normalized) and
    then stored in the variables' dtypes. The loss along dᵢ near w0 is L(w0) + ½ λᵢ α² to
    second order (α in units of Euclidean distance in weight space), so a grid of about
    ±few/√|λ₁| shows the curvature; filter normalization is not applied (it would destroy the
    eigenvector property). The directions cover the trainable variables, keyed by their
    ``variable.path`` (non-trainable state such as BatchNorm statistics stays at w0).

    Args:
        source: An ``Objective`` (the eigenpairs are computed with ``hessian_eigenvalues`` at
            its weights w0: one run with k = 2 for ``"top2"``, one with ``which="largest"`` and
            one with ``which="smallest"`` for ``"top-bottom"``); or eigenpairs already computed:
            an ``EigenResult`` of ``which="largest"`` with k ≥ 2 for ``"top2"``, or a sequence of
            EigenResults holding a ``"largest"`` and a ``"smallest"`` one for ``"top-bottom"``.
            Preconditioned results are refused (their vectors are not the Hessian's).
        pair: ``"top2"`` or ``"top-bottom"``. Defaults to ``"top2"``.
        tol: Residual tolerance of the eigensolver (an ``Objective`` source only). Defaults
            to 1e-4.
        max_iter: Cap on the solver's Hessian-vector products (see ``hessian_eigenvalues``).
            Defaults to None (its default).
        seed: Seed of the solver's start vector. Defaults to 0.
        split: The data split whose Hessian is used. Defaults to ``"train"``.
        verbose: Progress bar of the solver (0, 1 or 2). Defaults to 0.

    Returns:
        ``(d1, d2)``: unit-norm, orthogonal ``Direction``s. Each one's ``metadata`` records
        ``kind="hessian_eigenvector"``, ``pair``, ``axis`` (0 or 1), ``which``, ``index``,
        ``eigenvalue``, ``residual`` (‖Hv − λv‖/|λ|, the solver's fresh certificate),
        ``converged``, ``tol`` and ``precision``; d2's also ``overlap``, the cosine between the
        two eigenvectors before orthogonalization. Surface files store this metadata.

    Raises:
        ValueError: an unknown ``pair``, a ``source`` of another type or without the
            eigenpairs ``pair`` needs, eigenvectors over different variables, or a second
            eigenvector parallel to the first.

    Example:
        >>> d1, d2 = landscape.eigenvector_directions(obj, "top2")
        >>> surf = landscape.compute_surface(obj, [d1, d2], x="-0.5:0.5:41", y="-0.5:0.5:41")
        >>> eig = landscape.hessian_eigenvalues(obj, k=5)
        >>> d1, d2 = landscape.eigenvector_directions(eig)   # no new products

    References:
        Yao et al. 2020, PyHessian, https://arxiv.org/abs/1912.07145 (surfaces along the top
        eigenvectors); Li et al. 2018, https://arxiv.org/abs/1712.09913.
    """
    pair = _checks.choice("pair", pair, EigenPair)
    solver = {"tol": tol, "max_iter": max_iter, "seed": seed, "split": split, "verbose": verbose}
    (r1, i1), (r2, i2) = _pick(_eigen_results(source, pair, solver), pair)
    v1, v2 = r1.vectors[i1], r2.vectors[i2]
    if list(v1.arrays) != list(v2.arrays):
        raise ValueError(
            "Argument `source` holds eigenvectors over different variables; compute both "
            f"on one Objective. Received keys {list(v1.arrays)[:2]} and {list(v2.arrays)[:2]}."
        )
    a, b = _flat(v1), _flat(v2)
    a /= np.linalg.norm(a)
    overlap = float(a @ b / np.linalg.norm(b))
    b = b - (a @ b) * a
    if np.linalg.norm(b) <= 1e-6 * np.linalg.norm(_flat(v2)):
        raise ValueError("The two eigenvectors are parallel; they do not span a plane.")
    b /= np.linalg.norm(b)
    for r, i in ((r1, i1), (r2, i2)):
        if not r.converged:
            logger.warning(
                "Eigenvector %d (λ = %.6g, %s) is not certified: residual %.2g > tol %g; the "
                "surface direction is only approximately an eigenvector.",
                i, r.values[i], r.which, r.residuals[i], r.tol,
            )  # fmt: skip
    if abs(overlap) > ORTHOGONALITY_WARNING:
        logger.warning("The two eigenvectors overlap (cos %.2g); d2 was orthogonalized.", overlap)
    d1 = _unflat(a, v1, _metadata(r1, i1, pair, 0))
    d2 = _unflat(b, v2, {**_metadata(r2, i2, pair, 1), "overlap": overlap})
    logger.info(
        "Hessian eigenvector plane (%s): λ = %.6g, %.6g.", pair, r1.values[i1], r2.values[i2]
    )
    return d1, d2


# ---------------------------------------------------------------------- plane through models
@dataclass(frozen=True)
class Plane:
    """The plane through three models' weights w0, w1, w2, centred at w0.

    Iterating gives ``(origin, d1, d2)``: ``origin, d1, d2 = plane_through(m0, m1, m2)``.

    Attributes:
        origin: w0, the weights of ``m0`` (every included variable), as a ``Direction``: the
            centre of the plane. ``compute_surface`` centres at the Objective's model's weights,
            so evaluate the plane with an ``Objective`` of ``m0`` (``check`` verifies it).
        directions: ``(d1, d2)``: d1 = w1 − w0; d2 = the component of w2 − w0 orthogonal to d1,
            rescaled to ‖d1‖ (both axes in the same unit, ‖w1 − w0‖: the picture is not
            distorted). Stored in the variables' dtypes, keyed by ``m0``'s paths.
        coordinates: ``(3, 2)`` float64 array: the coordinates (α, β) of m0, m1, m2, so that
            wᵢ = w0 + αᵢ d1 + βᵢ d2: (0, 0), (1, 0) and (⟨w2 − w0, d1⟩/‖d1‖²,
            ‖(w2 − w0)⊥‖/‖d1‖), solved against the stored (rounded) directions.
        distances: ``(3,)``: the Euclidean distance of each model from the plane spanned by the
            stored directions: 0 in exact arithmetic, a float32 rounding (≈1e-7 ‖w‖) otherwise.
        origin_fingerprint: ``Objective.weights_fingerprint()`` of an Objective of ``m0``.
        include: ``"all"`` or ``"trainable"``, the variables in the plane.
    """

    origin: Direction
    directions: tuple[Direction, Direction]
    coordinates: np.ndarray
    distances: np.ndarray
    origin_fingerprint: str
    include: str

    def __iter__(self):
        return iter((self.origin, *self.directions))

    def check(self, objective: Objective) -> None:
        """Raise ValueError unless ``objective`` evaluates at the plane's origin w0 (model m0)."""
        if objective.weights_fingerprint() != self.origin_fingerprint:
            raise ValueError(
                "Argument `objective` must be an Objective of the plane's first model m0 (its "
                "surfaces are centred at that model's weights); its model has other weights. "
                f"Received: objective with weights {objective.weights_fingerprint()[:12]}, "
                f"plane origin {self.origin_fingerprint[:12]}."
            )

    def grid(self, *, margin: float = 0.25, num: int = 21) -> tuple[tuple, tuple]:
        """``(x, y)`` grid specs ``(min, max, num)`` covering the three models with ``margin``
        (in units of ‖w1 − w0‖) on every side, for ``compute_surface``."""
        margin = float(margin)
        if not margin >= 0:
            raise ValueError(f"Argument `margin` must be >= 0. Received: margin={margin!r}.")
        num = _checks.integer("num", num, 2)
        lo = self.coordinates.min(axis=0) - margin
        hi = self.coordinates.max(axis=0) + margin
        return (float(lo[0]), float(hi[0]), num), (float(lo[1]), float(hi[1]), num)


def _model_weights(models, include: str):
    variables = [float_variables(m, include) for m in models]
    shapes = [[tuple(v.shape) for v in vs] for vs in variables]
    if shapes[1] != shapes[0] or shapes[2] != shapes[0]:
        raise ValueError(
            "Arguments `m0`, `m1` and `m2` must have the same variables and shapes (one "
            f"architecture). Received: {[len(s) for s in shapes]} variables."
        )
    weights = [variable_values(vs) for vs in variables]
    return variables[0], weights


def _solve_coordinates(r: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares coordinates of the rows of ``r`` in the rows of ``basis``, and the
    distances of ``r`` from their span."""
    gram = basis @ basis.T
    coords = np.linalg.solve(gram, basis @ r.T).T
    distances = np.linalg.norm(r - coords @ basis, axis=1)
    return coords, distances


def plane_through(
    m0: keras.Model, m1: keras.Model, m2: keras.Model, *, include: Include = "all"
) -> Plane:
    """The plane through the weights of three models of one architecture, centred at ``m0``.

    With wᵢ the models' weights (flattened over the included variables, float64):

    - d1 = w1 − w0 (not normalized: α = 1 is m1);
    - d2 = r − (⟨r, d1⟩/‖d1‖²) d1 with r = w2 − w0 (Gram–Schmidt), then rescaled to ‖d2‖ =
      ‖d1‖, so one unit is the same distance on both axes;
    - m0 sits at (0, 0), m1 at (1, 0), m2 at (⟨r, d1⟩/‖d1‖², ‖r⊥‖/‖d1‖) (``Plane.coordinates``).

    tomgoldstein/loss-landscape's 3-model plane (``plot_surface.py --model_file2 --model_file3``)
    uses d1 = w1 − w0 and d2 = w2 − w0 as they are, not orthogonalized: m2 is then at (0, 1) but
    the axes are oblique and the picture is sheared. The orthogonal plane here is the same
    plane, drawn with a true metric (as Garipov et al. 2018 draw theirs).

    Evaluate it with an ``Objective`` of ``m0``: ``compute_surface`` centres at the
    Objective's weights (``Plane.check(objective)`` raises if they are another model's). Then
    the surface at ``Plane.coordinates[i]`` is model i's loss (``model.evaluate``, to float32
    rounding of the directions), provided ``include="all"``: with ``"trainable"``, BatchNorm
    statistics stay m0's everywhere and m1, m2 are not reproduced if they have any.

    Args:
        m0: The model at the centre (0, 0); built.
        m1: The model at (1, 0), same architecture (variables matched by position).
        m2: The third model, same architecture.
        include: ``"all"`` (every floating-point variable, BatchNorm statistics included, as
            ``interpolation_direction``) or ``"trainable"``. Defaults to ``"all"``.

    Returns:
        A ``Plane`` (``origin``, ``directions``, ``coordinates``, ``distances``); iterating it
        gives ``(origin, d1, d2)``. The directions' metadata record ``kind="plane"``, the axis,
        ``include`` and the three models' ``coordinates``, which surface files store.

    Raises:
        ValueError: models with different variables or shapes, m1 with the weights of m0, or
            m2 on the line through m0 and m1 (no plane).

    Example:
        >>> plane = landscape.plane_through(m0, m1, m2)
        >>> obj = landscape.Objective(m0, (x, y))
        >>> x, y = plane.grid(margin=0.25, num=21)
        >>> surf = landscape.compute_surface(obj, plane.directions, x=x, y=y)
        >>> plane.coordinates   # where m0, m1, m2 are on the surface's axes

    References:
        Li et al. 2018, https://arxiv.org/abs/1712.09913 and
        https://github.com/tomgoldstein/loss-landscape; Garipov et al. 2018,
        https://arxiv.org/abs/1802.10026.
    """
    include = _checks.choice("include", include, Include)
    variables, (w0, w1, w2) = _model_weights((m0, m1, m2), include)
    flat = [np.concatenate([a.astype(np.float64).ravel() for a in w]) for w in (w0, w1, w2)]
    d1 = flat[1] - flat[0]
    r = flat[2] - flat[0]
    n1 = float(np.linalg.norm(d1))
    if n1 == 0.0:
        raise ValueError("Argument `m1` must have other weights than `m0`; they are equal.")
    perp = r - (r @ d1) / (n1 * n1) * d1
    if np.linalg.norm(perp) <= COLLINEAR_RTOL * n1:
        raise ValueError(
            "Argument `m2` must not lie on the line through `m0` and `m1`: its distance from "
            f"it is {np.linalg.norm(perp):.3g} against ‖w1 − w0‖ = {n1:.3g}."
        )
    d2 = perp * (n1 / np.linalg.norm(perp))

    def direction(flat_d: np.ndarray, meta: dict) -> Direction:
        arrays, offset = {}, 0
        for key, w in zip(variables.paths, w0):
            arrays[key] = flat_d[offset : offset + w.size].reshape(w.shape).astype(w.dtype)
            offset += w.size
        return Direction(arrays, meta)

    meta = {"kind": "plane", "include": include}
    stored = [direction(d1, {**meta, "axis": 0}), direction(d2, {**meta, "axis": 1})]
    basis = np.stack([np.concatenate([a.astype(np.float64).ravel() for a in d.arrays.values()])
                      for d in stored])  # fmt: skip
    coords, distances = _solve_coordinates(np.stack([flat[0] - flat[0], d1, r]), basis)
    coords[0] = 0.0  # m0 is the origin exactly
    stored = [Direction(d.arrays, {**d.metadata, "coordinates": coords.tolist()}) for d in stored]
    origin = Direction(dict(zip(variables.paths, w0)), {"kind": "plane_origin", **meta})
    all_weights = float_variables(m0, "all")
    fingerprint = fingerprint_arrays(
        np.asarray(keras.ops.convert_to_numpy(v.value)) for v in all_weights
    )
    logger.info("Plane through three models: coordinates %s.", coords.round(6).tolist())
    return Plane(origin, tuple(stored), coords, distances, fingerprint, include)
