"""Shared helpers of the benchmark scripts: set-up, data and interleaved timing."""

from __future__ import annotations

import os
import pathlib
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

CIFAR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_10k.npz"


def cifar_subset(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """The first ``n`` CIFAR-10 training images in [0, 1] (Gaussian noise if the file is absent)."""
    if CIFAR.exists():
        with np.load(CIFAR) as f:
            x = f["x_train"][:n].astype("float32") / 255.0
            y = f["y_train"][:n].astype("int32").reshape(-1)
        return x, y, f"CIFAR-10 ({CIFAR.name})"
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 32, 32, 3)).astype("float32")
    return x, rng.integers(0, 10, n).astype("int32"), "generated noise (CIFAR file not found)"


def interleaved_ratio(
    numerator: Callable[[], object],
    denominator: Callable[[], object],
    *,
    repeats: int = 7,
    calls: int = 3,
) -> tuple[float, float, float]:
    """Median over repetitions of time(numerator) / time(denominator), alternating their order.

    Returns (median ratio, median seconds per numerator call, median seconds per denominator call).
    """
    ratios, nums, dens = [], [], []
    for r in range(repeats):
        order = [(numerator, nums), (denominator, dens)]
        if r % 2:
            order.reverse()
        for fn, out in order:
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            out.append((time.perf_counter() - start) / calls)
        ratios.append(nums[-1] / dens[-1])
    return statistics.median(ratios), statistics.median(nums), statistics.median(dens)
