"""Seed statistics and the words of the figures: every comparing sentence is computed from numbers.

``landscape figures`` trains SGD and SAM from the same seeds. For each quantity it reports the mean
and standard error over seeds per optimizer, and compares the two with a paired t-test over seeds
(the same seed gives both optimizers the same initial weights, labels and batch order, so the
pairs are matched). A difference is called a difference only when the test gives p < ``ALPHA``;
otherwise the sentence says the data show none. With one seed no test is possible and the sentence
says so. TensorFlow-free (SciPy only), so the words can be tested and recomputed anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

ALPHA = 0.05  # two-sided significance level of the paired t-test

# (key, words, kind): kind "accuracy" compares in percentage points, "value" relatively.
QUANTITIES: tuple[tuple[str, str, str], ...] = (
    ("test_acc", "test accuracy", "accuracy"),
    ("test_loss", "test loss", "value"),
    ("train_acc", "training accuracy (labels as trained)", "accuracy"),
    ("train_loss", "training loss (labels as trained)", "value"),
    ("train_acc_clean", "training accuracy (true labels)", "accuracy"),
    ("memorized", "flipped labels fitted", "accuracy"),
    ("hessian_eigenvalue_1", "λ₁", "value"),
    ("hessian_eigenvalue_2", "λ₂", "value"),
    ("hessian_eigenvalue_3", "λ₃", "value"),
    ("hessian_trace", "tr(H)", "value"),
    ("epsilon_sharpness", "ε-sharpness", "value"),
    ("worst_l2", "worst-case ℓ2 sharpness", "value"),
    ("average_l2", "average ℓ2 sharpness", "value"),
    ("basin_area", "basin area", "accuracy"),
)
WORDS = {key: words for key, words, _ in QUANTITIES}
KIND = {key: kind for key, _, kind in QUANTITIES}


def seed_statistics(values: Sequence[float]) -> dict:
    """Mean and standard error of the mean over seeds.

    Args:
        values: One finite value per seed.

    Returns:
        ``{"mean", "stderr", "n", "values"}``; ``stderr`` is the sample standard deviation
        (ddof 1) over √n, None for a single seed.
    """
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    stderr = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    return {"mean": float(x.mean()), "stderr": stderr, "n": n, "values": x.tolist()}


def paired_comparison(sgd: Sequence[float], sam: Sequence[float], alpha: float = ALPHA) -> dict:
    """SAM against SGD over matched seeds: mean difference and a two-sided paired t-test.

    Args:
        sgd: One value per seed for SGD.
        sam: The value for SAM from the same seeds, in the same order.
        alpha: Significance level. Defaults to ``ALPHA`` (0.05).

    Returns:
        ``{"n", "sgd_mean", "sam_mean", "difference", "identical", "relative", "t", "p",
        "significant"}``: ``difference`` = mean(SAM − SGD), ``identical`` when every seed's
        pair is equal, ``relative`` = difference / |mean SGD| (None when the
        SGD mean is 0), ``t`` and ``p`` from ``scipy.stats.ttest_rel`` (None for one seed;
        ``p`` = 0 when every pair differs by the same nonzero amount, 1 when none differs).

    Raises:
        ValueError: the two sequences differ in length or are empty.
    """
    a, b = np.asarray(sgd, dtype=np.float64), np.asarray(sam, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(
            "Arguments `sgd` and `sam` must hold one value per seed, as many for each. "
            f"Received {a.size} and {b.size} values."
        )
    d = b - a
    out = {"n": int(a.size), "sgd_mean": float(a.mean()), "sam_mean": float(b.mean()),
           "difference": float(d.mean()), "identical": bool(np.all(d == 0)), "t": None,
           "p": None, "significant": False}  # fmt: skip
    out["relative"] = float(d.mean() / abs(a.mean())) if a.mean() != 0 else None
    if a.size > 1:
        if np.ptp(d) == 0:  # no spread: the t statistic is ±inf (or undefined if d ≡ 0)
            out["p"] = 1.0 if d[0] == 0 else 0.0
            out["t"] = 0.0 if d[0] == 0 else math.copysign(math.inf, d[0])
        else:
            from scipy import stats

            test = stats.ttest_rel(b, a)
            out["t"], out["p"] = float(test.statistic), float(test.pvalue)
        out["significant"] = out["p"] < alpha
    return out


def _amount(key: str, comparison: Mapping) -> str:
    """'34 % lower' / '6.8 points higher' for the mean difference."""
    diff = comparison["difference"]
    direction = "higher" if diff > 0 else "lower"
    if KIND.get(key) == "accuracy":
        return f"{abs(diff) * 100:.1f} points {direction}"
    relative = comparison["relative"]
    if relative is None:
        return f"{abs(diff):.3g} {direction}"
    return f"{abs(relative) * 100:.0f} % {direction}"


def _value(key: str, x: float) -> str:
    return f"{x * 100:.1f} %" if KIND.get(key) == "accuracy" else f"{x:.3g}"


def _evidence(comparison: Mapping) -> str:
    n = comparison["n"]
    if comparison["p"] is None:
        return "1 seed, no test of significance"
    p = comparison["p"]
    return f"{n} seeds, paired t-test p = {p:.2g}" if p >= 1e-4 else f"{n} seeds, p < 0.0001"


def comparison_sentence(key: str, comparison: Mapping) -> str:
    """One sentence comparing SAM with SGD on quantity ``key``, as the numbers say.

    ``"λ₁: 34 % lower for SAM (785 → 518; 3 seeds, paired t-test p = 0.012)"`` when the
    difference is significant at ``ALPHA`` (or measured on one seed, which the sentence says);
    ``"λ₁: no significant difference between SGD and SAM (785 → 760, 3 seeds, paired t-test
    p = 0.41)"`` otherwise. Accuracies (and other fractions) differ in percentage points, other
    quantities relatively.
    """
    words = WORDS.get(key, key)
    means = f"{_value(key, comparison['sgd_mean'])} → {_value(key, comparison['sam_mean'])}"
    if comparison["identical"]:
        return f"{words}: the same for SGD and SAM ({means}; {_evidence(comparison)})"
    if comparison["significant"] or comparison["p"] is None:
        return f"{words}: {_amount(key, comparison)} for SAM ({means}; {_evidence(comparison)})"
    return (
        f"{words}: no significant difference between SGD and SAM ({means}; {_evidence(comparison)})"
    )


def basin_area(loss: np.ndarray, centre: float, rise: float) -> float:
    """Fraction of the computed grid points whose loss is at most ``rise`` above ``centre``.

    Args:
        loss: A 2D surface's loss values (NaN where not computed; those are left out).
        centre: The loss at the trained weights (the plane's origin).
        rise: The allowed increase, in loss units (nats for cross-entropy).

    Returns:
        A fraction in [0, 1].
    """
    z = np.asarray(loss, dtype=np.float64)
    computed = np.isfinite(z) | np.isinf(z)
    if not computed.any():
        raise ValueError("Argument `loss` has no computed value.")
    return float(np.mean(z[computed] <= centre + rise))
