"""Sharpness of a minimum: Keskar ε-sharpness, worst-case and average-case sharpness.

Every metric is a statement about the loss L of an ``Objective`` (full data set, inference mode)
in a neighbourhood of the current weights w, and every loss and gradient comes from that one
evaluator: the model's variables are never assigned, so they stay bit-identical.

- ε-sharpness (Keskar et al. 2017), in percent, over a box around w in the span of A:

      φ = 100 · (max_{y ∈ C_ε} L(w + A y) − L(w)) / (1 + L(w)),
      C_ε = {y : |yᵢ| ≤ ε (|(A⁺w)ᵢ| + 1)},   A = I or a random n×p matrix.

- worst-case sharpness (Andriushchenko et al. 2023), with c = |w| (adaptive) or c = 1:

      S_max = max_{‖δ ⊘ c‖ₚ ≤ ρ} L(w + δ) − L(w),   p = 2 or ∞,

  by projected gradient ascent in γ = δ ⊘ c, the coordinates in which the ball is round;
  with ``batch_size=m`` the m-sharpness: the mean over batches of size m of the per-batch S_max.

- average-case sharpness: S_avg = E_δ L(w + δ) − L(w), δ = ρ c ⊙ z with z ~ N(0, I) (ℓ2) or
  z ~ U[−1, 1]ⁿ (ℓ∞).

The adaptive variants are invariant to the rescalings of ReLU layers that leave the function
unchanged (Dinh et al. 2017); the plain ones and ε-sharpness are not.

All metrics perturb ``objective.trainable_variables`` (the variables the Objective differentiates
with respect to); non-trainable state such as BatchNorm moving statistics stays at w0.

References:
    Keskar et al., On Large-Batch Training for Deep Learning: Generalization Gap and Sharp
        Minima, https://arxiv.org/abs/1609.04836
    Dinh et al., Sharp Minima Can Generalize For Deep Nets, https://arxiv.org/abs/1703.04933
    Kwon et al., ASAM: Adaptive Sharpness-Aware Minimization, https://arxiv.org/abs/2102.11600
    Andriushchenko et al., A Modern Look at the Relationship between Sharpness and
        Generalization, https://arxiv.org/abs/2302.07011
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from landscape import _checks
from landscape._box_lbfgs import minimize_in_box
from landscape._checks import SharpnessNorm
from landscape._progress import finish, progbar, resolve_verbose
from landscape._threads import one_blas_thread
from landscape.objective import Objective

logger = logging.getLogger("landscape")

Norm = SharpnessNorm
NORMS = _checks.options(SharpnessNorm)

EPSILON = 1e-3  # Keskar et al.'s box size
MAX_ITER = 10  # Keskar et al.'s L-BFGS-B iterations
STEPS = 20  # ascent steps (Andriushchenko et al. use 20)
SAMPLES = 20  # Monte Carlo samples of the average-case sharpness
STEP_SIZE_FACTOR = 2.0  # default step = 2ρ, the reference's initial APGD step
GRAD_EPS = 1e-12  # keeps g / ‖g‖ finite when the gradient vanishes

# Radii of sharpness_report, one per metric: ρ means different things in different balls
# (an ℓ∞ ball of radius ρ holds ℓ2 perturbations of norm ρ√n; adaptive radii are relative).
REPORT_RHO: dict[str, float] = {
    "worst_l2": 0.05,  # SAM's default radius
    "worst_l2_adaptive": 0.5,  # ASAM's default radius
    "worst_linf": 0.002,
    "worst_linf_adaptive": 0.002,  # relative: every weight moves by at most 0.2 %
    "average_l2": 0.01,  # per-weight standard deviation
    "average_l2_adaptive": 0.1,  # relative per-weight standard deviation
}


# --------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class EpsilonSharpness:
    """Keskar et al.'s ε-sharpness and how it was found.

    Attributes:
        value: φ in percent, 100 · (max_loss − loss) / (1 + loss).
        loss: L(w).
        max_loss: The largest loss found in the box (at least ``loss``: y = 0 is in it).
        iterations: L-BFGS-B iterations.
        evaluations: Loss-and-gradient evaluations (full passes over the data).
        epsilon: The box size ε.
        subspace_dim: p for a random subspace, or None for the full space.
        message: L-BFGS-B's stopping message.
    """

    value: float
    loss: float
    max_loss: float
    iterations: int
    evaluations: int
    epsilon: float
    subspace_dim: int | None
    message: str


@dataclass(frozen=True)
class WorstCaseSharpness:
    """Worst-case (or m-) sharpness: the largest loss increase found in the ball.

    Attributes:
        value: max L(w + δ) − L(w), or for m-sharpness the mean of the per-batch values.
        loss: L(w) (for m-sharpness the mean of the per-batch losses).
        max_loss: ``loss + value``.
        rho, norm, adaptive, steps, step_size: The settings used.
        batch_size: m for m-sharpness, None for the whole data set.
        batch_values: The per-batch values (one entry without ``batch_size``).
        stderr: Standard error of the mean over batches (NaN with fewer than two).
        n_gradients: Loss-and-gradient evaluations, all batches together.
    """

    value: float
    loss: float
    max_loss: float
    rho: float
    norm: str
    adaptive: bool
    steps: int
    step_size: float
    batch_size: int | None
    batch_values: tuple[float, ...]
    stderr: float
    n_gradients: int


@dataclass(frozen=True)
class AverageSharpness:
    """Average-case sharpness: a Monte Carlo mean of L(w + δ) − L(w) over random δ.

    Attributes:
        value: The sample mean.
        stderr: Its standard error (sample standard deviation / √samples; NaN for one sample).
        loss: L(w).
        rho, norm, adaptive, samples: The settings used.
    """

    value: float
    stderr: float
    loss: float
    rho: float
    norm: str
    adaptive: bool
    samples: int


# ------------------------------------------------------------------------------ validation
def _check_objective(objective) -> Objective:
    if not isinstance(objective, Objective):
        raise ValueError(
            "Argument `objective` must be a landscape.Objective. "
            f"Received: objective={type(objective).__name__}."
        )
    if not objective.trainable_variables:
        raise ValueError("The objective's model has no trainable floating-point variables.")
    return objective


# ------------------------------------------------------------------------ the flat weights
class _FlatWeights:
    """``loss(δ)`` and ``loss_and_gradient(δ)``: the Objective at w + δ for a flat δ ∈ ℝⁿ.

    δ is laid out as ``objective.flat`` (the trainable variables); the non-trainable variables
    get a zero offset.
    """

    def __init__(self, objective: Objective, buffers: dict | None = None):
        """``buffers``: the float64 n-vectors (by name) to write gradients and ascent iterates
        into, shared with another ``_FlatWeights`` used one at a time (m-sharpness's batches);
        None starts an empty set. At ResNet-50 size a fresh 190 MB vector costs its page
        faults (0.2–1.3 s on the project's machine), a reused one nothing."""
        self.objective = objective
        self.view = objective.flat
        self.n = self.view.n
        self.n_gradients = 0
        self._w: np.ndarray | None = None
        self.buffers = {} if buffers is None else buffers

    def buffer(self, name: str) -> np.ndarray:
        """The float64 n-vector ``name`` (uninitialized the first time), reused by later calls."""
        if name not in self.buffers:
            self.buffers[name] = np.empty(self.n, np.float64)
        return self.buffers[name]

    def abs_weights(self) -> np.ndarray:
        """|w| as one float64 vector, read into the buffer ``"c"`` and taken in place: one
        n-vector where reading w into its own buffer first took two (190 MB each at ResNet-50
        size; the adaptive average-case also made a third for the product with ρ)."""
        c = self.view.weights(out=self.buffer("c"))
        return np.abs(c, out=c)

    @property
    def w(self) -> np.ndarray:
        """The weights as one float64 vector, read once when a measure needs them (ε's box;
        the adaptive measures read |w| by ``abs_weights``): an n-vector copy of every variable
        (0.3 s for ResNet-50)."""
        if self._w is None:
            self._w = self.view.weights(out=self.buffer("w"))
        return self._w

    def offsets(self, delta: np.ndarray) -> list:
        return self.view.offsets(delta)

    def loss(self, delta: np.ndarray | None = None) -> float:
        offsets = None if delta is None else self.offsets(delta)
        return self.objective.evaluate(offsets)["loss"]

    def loss_and_gradient(self, delta: np.ndarray) -> tuple[float, np.ndarray]:
        """(L(w + δ), ∇L(w + δ)); the gradient is one buffer, overwritten by the next call
        (every caller here uses it, or copies it, before asking for the next)."""
        values, grads = self.objective.value_and_gradient(self.offsets(delta))
        self.n_gradients += 1
        gradient = self.view.concat(grads, out=self.buffer("gradient"))
        return values["loss"], gradient


# ---------------------------------------------------------------------------- ε-sharpness
def _projection(projection, subspace_dim, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """The n×p matrix A of the subspace (given, or Gaussian of ``subspace_dim`` columns)."""
    if projection is not None:
        A = np.asarray(projection, np.float64)
        if A.ndim != 2 or A.shape[0] != n or A.shape[1] < 1:
            raise ValueError(
                f"Argument `projection` must be an n×p matrix with n={n} (the number of "
                f"trainable weights). Received shape {A.shape}."
            )
        if subspace_dim is not None and subspace_dim != A.shape[1]:
            raise ValueError(
                f"Argument `subspace_dim` ({subspace_dim!r}) does not match `projection`'s "
                f"{A.shape[1]} columns."
            )
        return A
    if subspace_dim is not None:
        return rng.standard_normal((n, _checks.integer("subspace_dim", subspace_dim)))
    return None


@one_blas_thread
def epsilon_sharpness(
    objective: Objective,
    epsilon: float = EPSILON,
    *,
    subspace_dim: int | None = None,
    projection: np.ndarray | None = None,
    max_iter: int = MAX_ITER,
    seed: int | None = None,
    verbose: int | str = 0,
) -> EpsilonSharpness:
    """Keskar et al.'s ε-sharpness in percent.

    φ = 100 · (max_{y ∈ C_ε} L(w + A y) − L(w)) / (1 + L(w)) with the box
    C_ε = {y : |yᵢ| ≤ ε (|(A⁺w)ᵢ| + 1)}. The maximum is searched by SciPy's L-BFGS-B with bounds
    on −L, with the exact full-data loss and gradient of the Objective, started from a uniformly
    random point of the box (at an exact minimum the gradient vanishes and a start at y = 0 would
    return φ = 0). The largest loss of any evaluated point (all lie in the box) is kept.

    w is the vector of the trainable variables (``objective.trainable_variables``), the
    variables the Objective differentiates; non-trainable state is not perturbed.

    Args:
        objective: The loss to analyse, at its current weights w.
        epsilon: The box size ε. Defaults to 1e-3.
        subspace_dim: p: search in the span of a random n×p matrix A with standard normal
            entries (Keskar et al.'s "random subspace" variant; A⁺w by least squares). None
            searches the full space, A = I. Defaults to None.
        projection: A given n×p matrix A instead of a random one. Defaults to None.
        max_iter: L-BFGS-B iterations (Keskar et al. use 10). Defaults to 10.
        seed: Seed of the random start (and of a random A). Defaults to None.
        verbose: 0 silent, 1 or 2 a progress bar over evaluations, "auto". Defaults to 0.

    Returns:
        An ``EpsilonSharpness``.

    Raises:
        ValueError: a non-positive ``epsilon`` or ``max_iter``, a bad ``subspace_dim`` or a
            ``projection`` of the wrong shape.

    Example:
        >>> landscape.epsilon_sharpness(obj, epsilon=1e-3, seed=0).value   # percent

    References:
        Keskar et al. 2017, https://arxiv.org/abs/1609.04836 (metric 2.1)
    """
    objective = _check_objective(objective)
    epsilon = _checks.positive("epsilon", epsilon)
    max_iter = _checks.integer("max_iter", max_iter)
    verbose = resolve_verbose(verbose)
    flat = _FlatWeights(objective)
    rng = np.random.default_rng(seed)
    A = _projection(projection, subspace_dim, flat.n, rng)

    loss0, best, result = _maximize_in_box(flat, A, epsilon, rng, max_iter, verbose)
    value = 100.0 * (best - loss0) / (1.0 + loss0)
    logger.info(
        "ε-sharpness (ε=%g, %s): %.6g %% after %d iterations, %d evaluations",
        epsilon,
        "full space" if A is None else f"subspace p={A.shape[1]}",
        value,
        result.nit,
        flat.n_gradients,
    )
    return EpsilonSharpness(
        value=float(value),
        loss=float(loss0),
        max_loss=float(best),
        iterations=int(result.nit),
        evaluations=flat.n_gradients,
        epsilon=epsilon,
        subspace_dim=None if A is None else int(A.shape[1]),
        message=str(result.message),
    )


def _uniform_in_box(rng: np.random.Generator, bound: np.ndarray) -> np.ndarray:
    """``rng.uniform(-bound, bound)``, which is −bound + 2·bound·u from ``rng.random``'s doubles
    u: the same numbers and generator state (tests/test_sharpness.py), without its two n-vector
    temporaries (each a 190 MB page-faulting allocation at ResNet-50 size)."""
    y = rng.random(out=np.empty(bound.size))
    return np.subtract(np.multiply(np.multiply(y, bound, out=y), 2.0, out=y), bound, out=y)


def _maximize_in_box(flat, A, epsilon: float, rng, max_iter: int, verbose):
    """L-BFGS-B on −L(w + Ay) over the box C_ε; (L(w), the largest loss seen, SciPy's result)."""
    # The box C_ε around A⁺w (w itself for A = I).
    center = flat.w if A is None else np.linalg.lstsq(A, flat.w, rcond=None)[0]
    bound = np.abs(center)
    bound = np.multiply(epsilon, np.add(bound, 1.0, out=bound), out=bound)  # ε(|c| + 1)
    lower = np.negative(bound)
    y0 = _uniform_in_box(rng, bound)

    loss0 = flat.loss()
    best = loss0
    bar = progbar(None, verbose, "evaluation")
    if bar is not None:  # SciPy decides how many evaluations an iteration takes
        logger.info("ε-sharpness: L-BFGS-B stops after max_iter=%d iterations (about one loss "
                    "and gradient each) or when it converges first.", max_iter)  # fmt: skip

    def negative_loss(y):
        nonlocal best
        loss, grad = flat.loss_and_gradient(y if A is None else A @ y)
        best = max(best, loss)
        if bar is not None:
            bar.add(1, [("max_loss", best)])
        return -loss, (np.negative(grad, out=grad) if A is None else -(A.T @ grad))

    result = minimize_in_box(negative_loss, y0, lower, bound, max_iter=max_iter, own_x0=True)
    return loss0, best, result


# ------------------------------------------------------------------- worst-case sharpness
def _project(gamma: np.ndarray, rho: float, norm: str) -> np.ndarray:
    """Projection onto the ball ‖γ‖ₚ ≤ ρ, in place."""
    if norm == "l2":
        size = np.linalg.norm(gamma)
        if size > rho:
            np.multiply(gamma, rho / size, out=gamma)
        return gamma
    return np.clip(gamma, -rho, rho, out=gamma)


def _ascent_direction(grad: np.ndarray, norm: str) -> np.ndarray:
    """Steepest ascent direction of unit ‖·‖ₚ, in place: g / ‖g‖₂ (ℓ2) or sign(g) (ℓ∞)."""
    if norm == "l2":
        return np.divide(grad, np.linalg.norm(grad) + GRAD_EPS, out=grad)
    return np.sign(grad, out=grad)


def _draw(rng: np.random.Generator, norm: str, out: np.ndarray) -> np.ndarray:
    """N(0, I) (ℓ2) or U[−1, 1]ⁿ (ℓ∞) into ``out``: the numbers, and the generator state after,
    of ``rng.standard_normal(n)`` and ``rng.uniform(-1.0, 1.0, n)`` (which computes −1 + 2u from
    the same doubles u as ``rng.random``; tests/test_sharpness.py), without a fresh n-vector."""
    if norm == "l2":
        return rng.standard_normal(out=out)
    rng.random(out=out)
    return np.subtract(np.multiply(out, 2.0, out=out), 1.0, out=out)


def _random_start(rng: np.random.Generator, rho: float, norm: str, out: np.ndarray) -> np.ndarray:
    """The reference's random start: ρ·N(0, I) (ℓ2) or ρ·U[−1, 1] (ℓ∞), projected, in ``out``."""
    z = _draw(rng, norm, out)
    return _project(np.multiply(z, rho, out=z), rho, norm)


def _worst_case(
    flat: _FlatWeights,
    *,
    rho: float,
    norm: str,
    adaptive: bool,
    steps: int,
    step_size: float,
    rng: np.random.Generator | None,
    bar,
) -> tuple[float, float]:
    """(L(w), the largest L(w + c⊙γ) seen) by projected gradient ascent in γ, ‖γ‖ₚ ≤ ρ."""
    # None: c = 1 (no product, the same numbers)
    c = flat.abs_weights() if adaptive else None
    loss0 = flat.loss()
    best = loss0
    gamma = flat.buffer("gamma")  # reused by the next batch's ascent
    if rng is None:
        gamma.fill(0.0)
    else:
        _random_start(rng, rho, norm, gamma)
    delta = gamma if c is None else flat.buffer("delta")
    for _ in range(steps):
        loss, grad = flat.loss_and_gradient(
            gamma if c is None else np.multiply(c, gamma, out=delta)
        )
        best = max(best, loss)
        # ∇_γ L(w + c⊙γ) = c ⊙ ∇L: climb in γ, then project back onto the round ball (the
        # steps in place on the fresh gradient and on γ: no n-vector temporaries).
        step = _ascent_direction(grad if c is None else np.multiply(c, grad, out=grad), norm)
        gamma = _project(np.add(gamma, np.multiply(step_size, step, out=step), out=gamma), rho,
                         norm)  # fmt: skip
        if bar is not None:
            bar.add(1, [("max_increase", best - loss0)])
    best = max(best, flat.loss(gamma if c is None else np.multiply(c, gamma, out=delta)))
    return loss0, best


def _worst_cases(objectives, rng, verbose, options) -> tuple[np.ndarray, np.ndarray, int]:
    """(L(w), max L in the ball) per objective (batch), and the gradients used; the bar
    counts steps, ``options["steps"]`` per batch (an open bar when the batches come from an
    iterator, closed at the end)."""
    n_batches = len(objectives) if hasattr(objectives, "__len__") else None
    steps = options["steps"]
    bar = progbar(None if n_batches is None else steps * n_batches, verbose, "step")
    losses, maxima, n_gradients, buffers = [], [], 0, {}
    for sub in objectives:
        flat = _FlatWeights(sub, buffers)  # the same n-vectors for every batch, one at a time
        loss, best = _worst_case(flat, rng=rng, bar=bar, **options)
        losses.append(loss)
        maxima.append(best)
        n_gradients += flat.n_gradients
    if n_batches is None:  # a known total ended full on its last step
        finish(bar, steps * len(losses))
    return np.asarray(losses), np.asarray(maxima), n_gradients


@one_blas_thread
def worst_case_sharpness(
    objective: Objective,
    rho: float,
    *,
    norm: Norm = "l2",
    adaptive: bool = False,
    steps: int = STEPS,
    step_size: float | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
    random_start: bool = True,
    seed: int | None = None,
    verbose: int | str = 0,
) -> WorstCaseSharpness:
    """Worst-case sharpness max_{‖δ ⊘ c‖ₚ ≤ ρ} L(w + δ) − L(w), c = |w| or 1.

    Projected gradient ascent in γ = δ ⊘ c, where the ball is ‖γ‖ₚ ≤ ρ (Andriushchenko et al.):
    normalized-gradient steps γ ← γ + η ∇_γL / ‖∇_γL‖₂ for ℓ2, sign steps γ ← γ + η sign(∇_γL)
    for ℓ∞, with ∇_γL = c ⊙ ∇L (so δ moves by η c²⊙g/‖c⊙g‖ resp. η c⊙sign(g), ASAM's step),
    each followed by the projection onto the ball; the largest loss seen is kept. Unlike the
    reference code, which projects adaptive ℓ2 steps onto the ellipsoid in δ-space, the whole
    ascent runs in γ, which makes the adaptive value exactly invariant to Dinh et al.'s
    reparametrizations. The reference's APGD momentum and step-size halving are left out.

    The ascent starts, as in the reference, at a random point: ρ·N(0, I) projected onto the ball
    (ℓ2) or ρ·U[−1, 1]ⁿ (ℓ∞). At an exact minimum the gradient is zero and a start at γ = 0
    would not move.

    Args:
        objective: The loss to analyse, at its current weights w. Its trainable variables are
            perturbed.
        rho: Radius ρ of the ball (relative to |w| when ``adaptive``).
        norm: ``"l2"`` or ``"linf"``. Defaults to "l2".
        adaptive: c = |w| (adaptive sharpness) instead of c = 1. Defaults to False.
        steps: Gradient-ascent steps. Defaults to 20.
        step_size: Step η in γ. None takes 2ρ (the reference's initial step). Defaults to None.
        batch_size: m for m-sharpness: the mean over consecutive batches of m training examples
            of each batch's worst case (one ascent per batch, each with its own traced
            functions). None uses the whole data set. Defaults to None.
        max_batches: With ``batch_size``, use only the first this many batches (the reference
            evaluates 1024 examples). Defaults to None (all).
        random_start: Start the ascent at a random point of the ball, else at δ = 0.
            Defaults to True.
        seed: Seed of the random start. Defaults to None.
        verbose: 0 silent, 1 or 2 a progress bar over gradient steps, "auto". Defaults to 0.

    Returns:
        A ``WorstCaseSharpness``.

    Raises:
        ValueError: an unknown ``norm`` or a non-positive ``rho``, ``steps``, ``step_size``,
            ``batch_size`` or ``max_batches``.

    Example:
        >>> landscape.worst_case_sharpness(obj, rho=0.002, norm="linf", adaptive=True).value

    References:
        Andriushchenko et al. 2023, https://arxiv.org/abs/2302.07011 (section 3, appendix)
        Foret et al. 2020 (m-sharpness), https://arxiv.org/abs/2010.01412
    """
    objective = _check_objective(objective)
    rho = _checks.positive("rho", rho)
    norm = _checks.choice("norm", norm, SharpnessNorm)
    adaptive = _checks.boolean("adaptive", adaptive)
    steps = _checks.integer("steps", steps)
    step_size = (
        STEP_SIZE_FACTOR * rho if step_size is None else _checks.positive("step_size", step_size)
    )
    if batch_size is not None:
        batch_size = _checks.integer("batch_size", batch_size)
    if max_batches is not None:
        max_batches = _checks.integer("max_batches", max_batches)
    random_start = _checks.boolean("random_start", random_start)
    verbose = resolve_verbose(verbose)
    rng = np.random.default_rng(seed) if random_start else None
    options = dict(rho=rho, norm=norm, adaptive=adaptive, steps=steps, step_size=step_size)

    objectives = (
        [objective]
        if batch_size is None
        else objective.batches(batch_size, max_batches=max_batches)
    )
    losses, maxima, n_gradients = _worst_cases(objectives, rng, verbose, options)
    values = maxima - losses
    stderr = float(np.std(values, ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan
    result = WorstCaseSharpness(
        value=float(np.mean(values)),
        loss=float(np.mean(losses)),
        max_loss=float(np.mean(maxima)),
        batch_size=batch_size,
        batch_values=tuple(float(v) for v in values),
        stderr=stderr,
        n_gradients=n_gradients,
        **options,
    )
    logger.info(
        "worst-case sharpness (%s%s, ρ=%g%s): %.6g",
        norm,
        ", adaptive" if adaptive else "",
        rho,
        "" if batch_size is None else f", m={batch_size} over {values.size} batches",
        result.value,
    )
    return result


# ----------------------------------------------------------------- average-case sharpness
@one_blas_thread
def average_sharpness(
    objective: Objective,
    rho: float,
    *,
    norm: Norm = "l2",
    adaptive: bool = False,
    samples: int = SAMPLES,
    seed: int | None = None,
    verbose: int | str = 0,
) -> AverageSharpness:
    """Average-case sharpness E_δ L(w + δ) − L(w), δ = ρ c ⊙ z, c = |w| or 1.

    z ~ N(0, I) for ``norm="l2"`` (δ ~ N(0, ρ² diag(c²))) and z ~ U[−1, 1]ⁿ for ``"linf"``
    (δ uniform in the box [−ρc, ρc]), as in Andriushchenko et al.; the expectation is a Monte
    Carlo mean over ``samples`` full-data evaluations, returned with its standard error.

    Args:
        objective: The loss to analyse, at its current weights w. Its trainable variables are
            perturbed.
        rho: Scale ρ of the noise (relative to |w| when ``adaptive``).
        norm: ``"l2"`` (Gaussian) or ``"linf"`` (uniform). Defaults to "l2".
        adaptive: c = |w| instead of c = 1. Defaults to False.
        samples: Number of random perturbations. Defaults to 20.
        seed: Seed of the perturbations. Defaults to None.
        verbose: 0 silent, 1 or 2 a progress bar over samples, "auto". Defaults to 0.

    Returns:
        An ``AverageSharpness``.

    Raises:
        ValueError: an unknown ``norm`` or a non-positive ``rho`` or ``samples``.

    References:
        Andriushchenko et al. 2023, https://arxiv.org/abs/2302.07011
    """
    objective = _check_objective(objective)
    rho = _checks.positive("rho", rho)
    norm = _checks.choice("norm", norm, SharpnessNorm)
    adaptive = _checks.boolean("adaptive", adaptive)
    samples = _checks.integer("samples", samples)
    verbose = resolve_verbose(verbose)
    flat = _FlatWeights(objective)
    rng = np.random.default_rng(seed)
    # None: c = 1 (no product, the same numbers); adaptive: ρ·c, once (then δ = (ρ·c) ⊙ z)
    c = np.multiply(flat.abs_weights(), rho, out=flat.buffer("c")) if adaptive else None
    loss0 = flat.loss()
    bar = progbar(samples, verbose, "sample")
    increases = np.empty(samples)
    z = flat.buffer("noise")
    for i in range(samples):
        _draw(rng, norm, z)  # rng.standard_normal(n) / rng.uniform(-1, 1, n), in one buffer
        delta = np.multiply(z, rho, out=z) if c is None else np.multiply(c, z, out=z)
        increases[i] = flat.loss(delta) - loss0
        if bar is not None:
            bar.update(i + 1, [("mean_increase", float(np.mean(increases[: i + 1])))])
    stderr = float(np.std(increases, ddof=1) / math.sqrt(samples)) if samples > 1 else math.nan
    result = AverageSharpness(
        value=float(np.mean(increases)),
        stderr=stderr,
        loss=float(loss0),
        rho=rho,
        norm=norm,
        adaptive=adaptive,
        samples=samples,
    )
    logger.info(
        "average sharpness (%s%s, ρ=%g): %.6g ± %.2g",
        norm,
        ", adaptive" if adaptive else "",
        rho,
        result.value,
        result.stderr,
    )
    return result


# ---------------------------------------------------------------------------------- report
def _report_metric(name: str) -> tuple[str, str, bool]:
    """'worst_linf_adaptive' → ('worst', 'linf', True)."""
    kind, norm, *rest = name.split("_")
    return kind, norm, rest == ["adaptive"]


@one_blas_thread
def sharpness_report(
    objective: Objective,
    *,
    rho: Mapping[str, float] | None = None,
    epsilon: float | None = EPSILON,
    k: int = 5,
    seed: int | None = 0,
    steps: int = STEPS,
    samples: int = SAMPLES,
    include_hessian: bool = True,
    eigen_tol: float | None = None,
    eigen_max_iter: int | None = None,
    basis_size: int | None = None,
    trace_tol: float | None = None,
    trace_samples: int | None = None,
    verbose: int | str = 0,
    weights: bool = False,
) -> dict[str, float | bool | str]:
    """Every sharpness measure of the current weights in one flat dict of floats (and flags).

    Keys, in order:
        ``loss``, ``acc`` (and the other metrics of ``objective.evaluate()``), ``test_loss``,
        ``test_acc``… when the objective has a test split;
        with ``include_hessian``: ``hessian_eigenvalue_1`` … ``hessian_eigenvalue_k``
        (largest first), ``hessian_converged`` (a bool: every eigenvalue certified, its
        residual ≤ the tolerance; False when Lanczos stopped at its cap first),
        ``hessian_trace``, ``hessian_trace_stderr``, ``hessian_trace_converged`` (a bool: the
        relative standard error reached the tolerance; False when Hutchinson stopped at its
        cap of probes first);
        ``epsilon_sharpness`` (percent);
        ``worst_l2``, ``worst_l2_adaptive``, ``worst_linf``, ``worst_linf_adaptive``;
        ``average_l2``, ``average_l2_stderr``, ``average_l2_adaptive``,
        ``average_l2_adaptive_stderr``;
        ``precision``, a string: the dtype every loss, gradient and product was computed in
        (``objective.precision``, e.g. ``"float32"``; ``"float16"`` explains a
        ``hessian_converged`` of False, see ``Objective``'s ``precision``);
        with ``weights``: ``weights/<layer>/alpha``, ``.../alpha_stderr``,
        ``.../stable_rank`` and ``.../spectral_norm`` of each layer of
        ``landscape.weight_spectra(objective.model)`` (α NaN where the layer has too few
        eigenvalues), data-free.
    The radii of the worst- and average-case metrics are ``REPORT_RHO`` updated by ``rho``; a
    metric can be left out by setting its radius to None. Average-case sharpness is reported for
    Gaussian noise only (uniform ℓ∞ noise of the same variance measures the same thing).

    Args:
        objective: The loss to analyse, at its current weights.
        rho: Radii per metric name (keys of ``REPORT_RHO``), overriding the defaults; None
            drops a metric. Defaults to None (``REPORT_RHO``).
        epsilon: Box size of the ε-sharpness; None drops it (its L-BFGS-B search costs
            about ten gradients plus SciPy's work on n-vectors). Defaults to 1e-3.
        k: Number of top Hessian eigenvalues. Defaults to 5.
        seed: Seed of every random start and sample. Defaults to 0.
        steps: Ascent steps of the worst-case metrics. Defaults to 20.
        samples: Samples of the average-case metrics. Defaults to 20.
        include_hessian: Compute the top eigenvalues (``hessian_eigenvalues``, Lanczos) and
            the trace (``hessian_trace``, Hutchinson) with ``landscape.hessian``. Defaults to
            True.
        eigen_tol: Relative residual at which the eigenvalues are certified; None keeps
            ``hessian_eigenvalues``'s default (1e-4). Defaults to None.
        eigen_max_iter: Cap on the Hessian-vector products of the eigenvalues' Lanczos run;
            None keeps ``hessian_eigenvalues``'s default (1000). Defaults to None.
        basis_size: Lanczos basis (memory: see ``hessian_eigenvalues``, about
            ``(basis_size + 1) × n_params × 4`` bytes for a float32 analysis);
            None keeps ``hessian_eigenvalues``'s default, max(2k + 10, 20). Defaults to None.
        trace_tol: Relative standard error at which the trace estimate stops; None keeps
            ``hessian_trace``'s default (``TRACE_TOL``, 0.05). Defaults to None.
        trace_samples: Most Hutchinson probes of the trace (its reported stderr says how
            far it got, ``hessian_trace_converged`` whether it reached ``trace_tol``); None
            keeps ``hessian_trace``'s default (``TRACE_SAMPLES``, 100). Defaults to None.
        verbose: Passed to every metric. Defaults to 0.
        weights: Add the spectra of the weight matrices (``landscape.weight_spectra``), four
            numbers per layer. Defaults to False.

    Returns:
        ``{name: float}``, the two ``bool`` convergence flags and the ``precision`` string,
        JSON-serializable (a consumer of the numbers skips the bools and the string).

    Raises:
        ValueError: an unknown metric name in ``rho``, a bad radius or cost setting, or a
            Lanczos basis that does not fit in memory (before any work).
        ImportError: ``include_hessian=True`` without the ``landscape.hessian`` module.

    Example:
        >>> report = landscape.sharpness_report(obj, rho={"worst_linf": 0.001})
        >>> json.dumps(report)
    """
    objective = _check_objective(objective)
    k = _checks.integer("k", k)
    include_hessian = _checks.boolean("include_hessian", include_hessian)
    weight_rows = _weight_rows(objective.model) if _checks.boolean("weights", weights) else {}
    radii = _report_radii(rho)
    if epsilon is not None:
        epsilon = _checks.positive("epsilon", epsilon)
    steps, samples = _checks.integer("steps", steps), _checks.integer("samples", samples)
    eigen_options, trace_options = _hessian_options(
        eigen_tol, eigen_max_iter, basis_size, trace_tol, trace_samples
    )
    hessian = _hessian_module() if include_hessian else None

    report: dict[str, float | bool | str] = {}
    for split in objective.splits:
        prefix = "" if split == "train" else f"{split}_"
        for name, value in objective.evaluate(split=split).items():
            report[prefix + name] = float(value)
    if hessian is not None:
        hessian_verbose = resolve_verbose(verbose)
        eig = hessian.hessian_eigenvalues(
            objective, k=k, seed=seed, verbose=hessian_verbose, **eigen_options
        )
        for i, value in enumerate(sorted(np.asarray(eig.values, np.float64).ravel(), reverse=True)):
            report[f"hessian_eigenvalue_{i + 1}"] = float(value)
        report["hessian_converged"] = bool(eig.converged)
        trace = hessian.hessian_trace(
            objective, seed=seed, verbose=hessian_verbose, **trace_options
        )
        report["hessian_trace"] = float(trace.estimate)
        report["hessian_trace_stderr"] = float(trace.stderr)
        report["hessian_trace_converged"] = bool(trace.converged)
    if epsilon is not None:
        report["epsilon_sharpness"] = epsilon_sharpness(
            objective, epsilon, seed=seed, verbose=verbose
        ).value
    options = dict(steps=steps, samples=samples, seed=seed, verbose=verbose)
    for name, radius in radii.items():
        if radius is not None:
            report.update(_ball_metric(objective, name, radius, **options))
    report["precision"] = objective.precision
    return {**report, **weight_rows}  # weight_rows computed first: data-free and cheap


def _weight_rows(model) -> dict[str, float]:
    """The report's entries of ``weight_spectra``: four numbers per layer."""
    from landscape.weights import weight_spectra

    out = {}
    for row in weight_spectra(model).rows():
        for key in ("alpha", "alpha_stderr", "stable_rank", "spectral_norm"):
            out[f"weights/{row['name']}/{key}"] = float(row[key])
    return out


def _hessian_options(eigen_tol, eigen_max_iter, basis_size, trace_tol, trace_samples):
    """Checked keyword arguments of ``hessian_eigenvalues`` and ``hessian_trace`` (None: the
    function's default)."""
    eigen: dict = {}
    if eigen_tol is not None:
        eigen["tol"] = _checks.fraction("eigen_tol", eigen_tol)
    if eigen_max_iter is not None:
        eigen["max_iter"] = _checks.integer("eigen_max_iter", eigen_max_iter)
    if basis_size is not None:
        eigen["basis_size"] = _checks.integer("basis_size", basis_size)
    trace: dict = {}
    if trace_tol is not None:
        trace["tol"] = _checks.positive("trace_tol", trace_tol)
    if trace_samples is not None:
        trace["samples"] = _checks.integer("trace_samples", trace_samples)
    return eigen, trace


def _report_radii(rho: Mapping[str, float] | None) -> dict[str, float | None]:
    """``REPORT_RHO`` updated by ``rho`` (checked); None drops a metric."""
    radii = dict(REPORT_RHO)
    for name, value in (rho or {}).items():
        if name not in REPORT_RHO:
            raise ValueError(
                f"Unknown sharpness metric {name!r} in `rho`; expected one of {tuple(REPORT_RHO)}."
            )
        radii[name] = None if value is None else _checks.positive(f"rho[{name!r}]", value)
    return radii


def _hessian_module():
    """``landscape.hessian``, imported here: the report without it is still useful."""
    try:
        return importlib.import_module("landscape.hessian")  # may be absent (tested)
    except ImportError as error:
        raise ImportError(
            "sharpness_report(include_hessian=True) needs landscape.hessian, which could not "
            f"be imported ({error}); pass include_hessian=False."
        ) from error


def _ball_metric(objective, name: str, radius: float, *, steps, samples, seed, verbose):
    """The report's entries of one worst- or average-case metric."""
    kind, norm, adaptive = _report_metric(name)
    options = dict(norm=norm, adaptive=adaptive, seed=seed, verbose=verbose)
    if kind == "worst":
        return {name: worst_case_sharpness(objective, radius, steps=steps, **options).value}
    result = average_sharpness(objective, radius, samples=samples, **options)
    return {name: result.value, f"{name}_stderr": result.stderr}
