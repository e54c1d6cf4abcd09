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
# Units of the quantities that are not fractions (fractions are shown in %). Losses are mean
# cross-entropies in nats; ε-sharpness is Keskar et al.'s 100 (max L − L(w)) / (1 + L(w)), in
# percent (``landscape.sharpness``); the ℓ2 sharpnesses are loss increases over L(w), in nats;
# a Hessian's eigenvalues and trace are second derivatives of the loss, nats per squared weight.
UNITS = {"test_loss": "nats", "train_loss": "nats", "epsilon_sharpness": "% of 1 + L",
         "worst_l2": "nats", "average_l2": "nats", "hessian_trace": "nats/w²",
         **{f"hessian_eigenvalue_{i}": "nats/w²" for i in (1, 2, 3)}}  # fmt: skip


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
        "significant", "lower", "higher"}``: ``difference`` = mean(SAM − SGD), ``identical``
        when every seed's pair is equal, ``lower``/``higher`` the number of seeds where SAM's
        value is below/above SGD's, ``relative`` = difference / |mean SGD| (None when the
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
           "p": None, "significant": False, "lower": int(np.sum(d < 0)),
           "higher": int(np.sum(d > 0))}  # fmt: skip
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
        return f"{abs(diff):.3g} {UNITS.get(key, '')} {direction}".replace("  ", " ")
    return f"{abs(relative) * 100:.0f} % {direction}"


def _value(key: str, x: float) -> str:
    return f"{x * 100:.1f} %" if KIND.get(key) == "accuracy" else f"{x:.3g}"


def _means(key: str, comparison: Mapping) -> str:
    """'70.3 % → 76.7 %' for fractions, '1.6 → 1.84 nats' (the unit once) for the rest."""
    text = f"{_value(key, comparison['sgd_mean'])} → {_value(key, comparison['sam_mean'])}"
    unit = None if KIND.get(key) == "accuracy" else UNITS.get(key)
    return text if unit is None else f"{text} {unit.split(' ')[0]}"


def per_seed(comparison: Mapping) -> str:
    """'lower on 3 of 3 seeds' / 'lower on 2 of 3 seeds, higher on 1' (SAM against SGD)."""
    n, counts = comparison["n"], {"lower": comparison["lower"], "higher": comparison["higher"]}
    ranked = sorted((c, w) for w, c in counts.items() if c)[::-1]
    if not ranked:
        return f"equal on {n} of {n} seed{'s' * (n > 1)}"
    (count, word), rest = ranked[0], ranked[1:]
    text = f"{word} on {count} of {n} seed{'s' * (n > 1)}"
    text += "".join(f", {w} on {c}" for c, w in rest)
    equal = n - comparison["lower"] - comparison["higher"]
    return text + (f", equal on {equal}" if equal else "")


def _evidence(comparison: Mapping) -> str:
    if comparison["p"] is None:
        return "1 seed, no test of significance"
    p = comparison["p"]
    test = f"paired t-test p = {p:.2g}" if p >= 1e-4 else "paired t-test p < 0.0001"
    return f"SAM {per_seed(comparison)}, {test}"


def comparison_sentence(key: str, comparison: Mapping) -> str:
    """One sentence comparing SAM with SGD on quantity ``key``, as the numbers say.

    ``"λ₁: 34 % lower for SAM (785 → 518 nats/w²; SAM lower on 3 of 3 seeds, paired t-test
    p = 0.012)"`` when the difference is significant at ``ALPHA`` (or measured on one seed, which
    the sentence says); ``"ε-sharpness: no significant difference between SGD and SAM (79.9 →
    19.7 %; SAM lower on 3 of 3 seeds, paired t-test p = 0.083)"`` otherwise: the per-seed
    direction stands beside p, so a consistent but not significant change reads as one.
    Accuracies (and other fractions) differ in percentage points, other quantities relatively;
    values carry their unit (``UNITS``).
    """
    words = WORDS.get(key, key)
    means = _means(key, comparison)
    if comparison["identical"]:
        n = comparison["n"]
        return f"{words}: the same for SGD and SAM ({means}; {n} seed{'s' * (n > 1)})"
    if comparison["significant"] or comparison["p"] is None:
        return f"{words}: {_amount(key, comparison)} for SAM ({means}; {_evidence(comparison)})"
    return (
        f"{words}: no significant difference between SGD and SAM ({means}; {_evidence(comparison)})"
    )


def _shift(comparison: Mapping) -> str:
    """'flatter' / 'sharper' / 'neither significantly flatter nor sharper' by λ₁."""
    if comparison["identical"]:
        return "as flat as SGD's"
    if comparison["significant"] or comparison["p"] is None:
        return "flatter" if comparison["difference"] < 0 else "sharper"
    return "not significantly flatter or sharper"


def flatness_sentence(curvature: Mapping, loss: Mapping, key: str = "hessian_eigenvalue_1") -> str:
    """SAM's minimum's flatness with its training loss beside it, as the numbers say.

    ``"SAM's minimum is flatter (λ₁: 74 % lower for SAM ...) at a training loss 15 % higher
    (1.6 → 1.84 nats; SAM higher on 3 of 3 seeds, paired t-test p = 0.0073)"``: a flatter
    minimum that fits its training data less well is not the same finding as one that fits it
    as well.

    Args:
        curvature: ``paired_comparison`` of the flatness measure ``key``.
        loss: ``paired_comparison`` of the training loss.
        key: The flatness measure. Defaults to "hessian_eigenvalue_1" (λ₁).
    """
    flat = comparison_sentence(key, curvature)
    means = _means("train_loss", loss)
    if loss["identical"]:
        fit = f"the same training loss ({means})"
    elif loss["significant"] or loss["p"] is None:
        fit = f"a training loss {_amount('train_loss', loss)} ({means}; {_evidence(loss)})"
    else:
        fit = f"a training loss not significantly different ({means}; {_evidence(loss)})"
    return f"SAM's minimum is {_shift(curvature)} ({flat}) at {fit}"


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
