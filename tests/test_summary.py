"""Seed statistics and comparison sentences (TensorFlow-free), and the label noise they rest on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from landscape import _summary
from landscape.data import flip_labels


def test_seed_statistics_mean_and_standard_error():
    stats = _summary.seed_statistics([1.0, 2.0, 6.0])
    assert stats["mean"] == pytest.approx(3.0)
    # sample std: sqrt(((−2)² + (−1)² + 3²) / 2) = sqrt(7); SE = sqrt(7/3)
    assert stats["stderr"] == pytest.approx(math.sqrt(7.0 / 3.0))
    assert stats["n"] == 3 and stats["values"] == [1.0, 2.0, 6.0]
    assert _summary.seed_statistics([4.0])["stderr"] is None


def test_paired_comparison_is_the_paired_t_test():
    sgd, sam = [10.0, 12.0, 11.0, 14.0], [7.0, 9.5, 8.0, 10.0]
    c = _summary.paired_comparison(sgd, sam)
    d = np.subtract(sam, sgd)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))  # the paired t statistic by hand
    assert c["t"] == pytest.approx(t)
    assert c["difference"] == pytest.approx(d.mean())
    assert c["relative"] == pytest.approx(d.mean() / np.mean(sgd))
    # two-sided p for t with 3 degrees of freedom: 2·(1 − F(|t|)), F from the closed form
    x = 3.0 / (3.0 + t * t)
    from scipy import special

    assert c["p"] == pytest.approx(special.betainc(1.5, 0.5, x), rel=1e-9)
    assert c["significant"] is (c["p"] < 0.05)


def test_paired_comparison_edge_cases():
    same_shift = _summary.paired_comparison([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert same_shift["p"] == 0.0 and same_shift["significant"]
    identical = _summary.paired_comparison([1.0, 2.0], [1.0, 2.0])
    assert identical["p"] == 1.0 and not identical["significant"]
    one = _summary.paired_comparison([5.0], [4.0])
    assert one["p"] is None and one["t"] is None and not one["significant"]
    with pytest.raises(ValueError, match="one value per seed"):
        _summary.paired_comparison([1.0, 2.0], [1.0])


def test_sentences_say_what_the_numbers_say():
    lower = _summary.paired_comparison([100.0, 110.0, 90.0], [60.0, 75.0, 50.0])
    s = _summary.comparison_sentence("hessian_eigenvalue_1", lower)
    assert s.startswith(
        "λ₁: 38 % lower for SAM (100 → 61.7 nats/w²; SAM lower on 3 of 3 seeds, paired t-test p = "
    )
    higher = _summary.paired_comparison([0.70, 0.72, 0.69], [0.76, 0.79, 0.75])
    s = _summary.comparison_sentence("test_acc", higher)
    assert s.startswith("test accuracy: 6.3 points higher for SAM (70.3 % → 76.7 %; SAM higher on ")
    noisy = _summary.paired_comparison([1.0, 2.0, 3.0], [1.5, 1.0, 3.2])
    s = _summary.comparison_sentence("hessian_trace", noisy)
    assert s.startswith("tr(H): no significant difference between SGD and SAM (2 → 1.9 nats/w²; "
                        "SAM higher on 2 of 3 seeds, lower on 1, paired t-test p = ")  # fmt: skip
    one = _summary.paired_comparison([2.0], [1.0])
    assert _summary.comparison_sentence("worst_l2", one) == (
        "worst-case ℓ2 sharpness: 50 % lower for SAM (2 → 1 nats; 1 seed, no test of significance)"
    )


def test_a_consistent_but_not_significant_change_gives_its_per_seed_direction():
    # the committed example's ε-sharpness: every seed lower, p = 0.083 with 3 seeds
    sgd, sam = [60.0, 62.0, 117.6], [19.0, 19.0, 21.2]
    c = _summary.paired_comparison(sgd, sam)
    assert not c["significant"] and c["lower"] == 3 and c["higher"] == 0
    s = _summary.comparison_sentence("epsilon_sharpness", c)
    assert "SAM lower on 3 of 3 seeds, paired t-test p = " in s
    assert "(79.9 → 19.7 %;" in s  # ε-sharpness is a percentage of 1 + L(w)
    assert _summary.per_seed(_summary.paired_comparison([1, 2, 3, 4], [2, 1, 3, 5])) == (
        "higher on 2 of 4 seeds, lower on 1, equal on 1"
    )
    assert _summary.per_seed(_summary.paired_comparison([1.0], [1.0])) == "equal on 1 of 1 seed"


def test_units_of_every_quantity_that_is_not_a_fraction():
    for key, _, kind in _summary.QUANTITIES:
        assert kind == "accuracy" or key in _summary.UNITS, key
    assert _summary.UNITS["epsilon_sharpness"].startswith("%")  # 100 (max L − L) / (1 + L)
    assert _summary.UNITS["worst_l2"] == _summary.UNITS["train_loss"] == "nats"


@pytest.mark.parametrize(
    ("lam_sam", "loss_sam", "shape", "fit"),
    [
        ([50.0, 60.0, 55.0], [1.8, 1.9, 1.85], "flatter", "a training loss 16 % higher"),
        ([150.0, 170.0, 160.0], [1.42, 1.5, 1.46], "sharper", "a training loss 9 % lower"),
        ([90.0, 120.0, 95.0], [1.7, 1.5, 1.62], "not significantly flatter or sharper",
         "a training loss not significantly different"),
    ],
)  # fmt: skip
def test_flatness_sentence_gives_the_training_loss_beside_the_flatness(
    lam_sam, loss_sam, shape, fit
):
    lam = _summary.paired_comparison([100.0, 110.0, 105.0], lam_sam)
    loss = _summary.paired_comparison([1.55, 1.65, 1.6], loss_sam)
    s = _summary.flatness_sentence(lam, loss)
    assert s.startswith(f"SAM's minimum is {shape} (λ₁: ")
    assert f" at {fit} (1.6 → " in s
    assert (
        f"SAM {_summary.per_seed(loss)}" in s
        and _summary.comparison_sentence("hessian_eigenvalue_1", lam) in s
    )


def test_basin_area_counts_points_within_the_rise():
    loss = np.array([[3.0, 1.4, np.nan], [1.0, 0.5, 2.0], [np.inf, 1.5, 1.6]])
    # computed points: 8 (NaN left out); within 0.5 + 1.0 = 1.5: 1.4, 1.0, 0.5, 1.5
    assert _summary.basin_area(loss, centre=0.5, rise=1.0) == pytest.approx(4 / 8)
    with pytest.raises(ValueError, match="no computed value"):
        _summary.basin_area(np.full((2, 2), np.nan), centre=0.0, rise=1.0)


def test_flip_labels_changes_exactly_the_fraction_to_other_classes():
    y = np.repeat(np.arange(10, dtype=np.int32), 50)
    noisy, flipped = flip_labels(y, 0.4, seed=3)
    assert noisy.dtype == y.dtype and noisy.shape == y.shape
    assert flipped.sum() == 200
    assert np.all(noisy[flipped] != y[flipped]) and np.all(noisy[~flipped] == y[~flipped])
    assert set(np.unique(noisy)) <= set(range(10))
    again, _ = flip_labels(y, 0.4, seed=3)
    assert np.array_equal(again, noisy)
    column, _ = flip_labels(y[:, None], 0.1, seed=0)
    assert column.shape == (500, 1)
    assert np.array_equal(flip_labels(y, 0.0)[0], y)


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.arange(5.0), 0.1), "integer class labels"),
        ((np.arange(5), 1.5), r"fraction.*\[0, 1\]"),
        ((np.zeros(5, dtype=int), 0.1), "num_classes"),
    ],
)
def test_flip_labels_refuses_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        flip_labels(*args)
