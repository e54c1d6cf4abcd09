"""Trace estimators: Hutch++'s error at equal products against Hutchinson's, on decaying spectra.

``hessian_trace(method="hutchpp")`` (Meyer et al. 2021, arXiv 2010.09649) against
``method="hutchinson"``, both at a fixed budget of m Hessian-vector products (``samples=m`` and a
``tol`` too small to stop early; m < n, so neither falls back to the exact trace). Error: the
relative error |estimate − tr(H)| / |tr(H)|, median over seeds. Problems:

1. A closed form with the decaying spectrum λᵢ = i⁻² (i = 1 … n): linear regression y = Xw, MSE,
   X = √(N/2) U diag(i⁻¹) Vᵀ with random orthonormal U, V, so H = (2/N) XᵀX = V diag(i⁻²) Vᵀ and
   tr(H) = Σ i⁻² exactly (float64).
2. A small real network: an MLP (49 → 24 tanh → 10) trained a few epochs on 1,000 embedded MNIST
   images average-pooled to 7×7, softmax cross-entropy (float32 products); tr(H) is the exact
   trace from n unit-vector products (``method="exact"``).

    .venv/bin/python benchmarks/trace_estimators.py [--seeds 10] [--budgets 30 90 300]
"""

from __future__ import annotations

import argparse
import logging
import statistics

import _common  # noqa: F401 (quiet TensorFlow)
import keras
import numpy as np

import landscape


def regression(n: int, seed: int = 0):
    """(Objective, tr(H)) of MSE linear regression whose Hessian has eigenvalues i⁻²."""
    rng = np.random.default_rng(seed)
    samples = n
    u, _ = np.linalg.qr(rng.normal(size=(samples, n)))
    v, _ = np.linalg.qr(rng.normal(size=(n, n)))
    sigma = 1.0 / np.arange(1, n + 1)
    x = np.sqrt(samples / 2.0) * (u * sigma) @ v.T
    y = rng.normal(size=(samples, 1))
    inp = keras.Input((n,), dtype="float64")
    layer = keras.layers.Dense(1, use_bias=False, dtype="float64")
    model = keras.Model(inp, layer(inp))
    obj = landscape.Objective(model, (x, y), "mse", batch_size=samples, metrics=())
    return obj, float(np.sum(sigma**2))


def mnist_mlp(epochs: int):
    """(Objective, exact tr(H), n) of a small MLP trained on pooled embedded MNIST."""
    (x, y), _ = landscape.load_embedded()
    x = x[:1000].reshape(-1, 7, 4, 7, 4).mean(axis=(2, 4)).reshape(-1, 49).astype("float32")
    y = y[:1000]
    keras.utils.set_random_seed(0)
    inp = keras.Input((49,))
    h = keras.layers.Dense(24, activation="tanh")(inp)
    model = keras.Model(inp, keras.layers.Dense(10)(h))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss)
    model.fit(x, y, epochs=epochs, batch_size=50, verbose=0)
    obj = landscape.Objective(model, (x, y), loss, batch_size=500, metrics=())
    exact = landscape.hessian_trace(obj, method="exact")
    return obj, exact.estimate, exact.n_params


def errors(obj, truth: float, budgets, seeds: int) -> list[tuple[int, float, float]]:
    """(m, median relative error of Hutchinson, of Hutch++) for each budget m."""
    rows = []
    for m in budgets:
        found = {"hutchinson": [], "hutchpp": []}
        for seed in range(seeds):
            for method, out in found.items():
                tr = landscape.hessian_trace(obj, method=method, samples=m, tol=1e-12, seed=seed)
                assert tr.n_hvp == m, (method, tr.n_hvp)
                out.append(abs(tr.estimate - truth) / abs(truth))
        rows.append(
            (m, statistics.median(found["hutchinson"]), statistics.median(found["hutchpp"]))
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budgets", type=int, nargs="+", default=[30, 90, 300])
    parser.add_argument("--n", type=int, default=500, help="dimension of the regression")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("landscape").setLevel(logging.ERROR)  # capped runs warn by design

    problems = []
    obj, truth = regression(args.n)
    problems.append((f"regression, lambda_i = i^-2, n = {args.n}", obj, truth))
    obj, truth, n = mnist_mlp(args.epochs)
    problems.append((f"MNIST MLP 49-24-10, n = {n}", obj, truth))

    print(f"median relative error over {args.seeds} seeds, at equal Hessian-vector products")
    print(f"{'problem':<38} {'tr(H)':>10} {'products':>8} {'Hutchinson':>11} {'Hutch++':>10} "
          f"{'ratio':>7}")  # fmt: skip
    for name, obj, truth in problems:
        for m, hutchinson, hutchpp in errors(obj, truth, args.budgets, args.seeds):
            print(f"{name:<38} {truth:>10.4g} {m:>8d} {hutchinson:>11.2e} {hutchpp:>10.2e} "
                  f"{hutchinson / hutchpp:>7.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
