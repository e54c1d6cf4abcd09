"""Hessian benchmark: HVP cost vs a gradient, and Lanczos vs PyHessian-style power iteration.

A small CNN with BatchNorm (``landscape.models.cnn``, trained briefly so that BatchNorm's moving
statistics and the curvature are those of a real network) over a fixed set of 1,000 CIFAR-10
images (``../shared/data/cifar10_10k.npz``; generated images if it is absent), batch 250.

1. Time of one Hessian-vector product over the data set ÷ time of one gradient over it
   (``Objective.value_and_gradient``), both modes of ``Objective.hessian_vector_product``;
   calls interleaved, median of the per-repetition ratios. Target ≤ 2.5.
2. Top eigenvalue: products used and relative error of ``hessian_eigenvalues`` with Lanczos at
   tol 1e-4 against power iteration stopped PyHessian's way (relative change of λ < 1e-3, at most
   100 iterations), for several start vectors. The reference is a long Lanczos run (tol 1e-7).
   Target: ≤ half the products, far lower error. Counts include the one product each result
   spends on its residual certificate. Power iteration needs about log(tol)/log(λ₂/λ₁) steps,
   so the gap printed with the reference says how hard the case is.

    .venv/bin/python benchmarks/hessian.py [--n 1000] [--repeats 7] [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics

from _common import cifar_subset, interleaved_ratio

import keras
import numpy as np

import landscape
from landscape.models import cnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()

    x, y, source = cifar_subset(args.n)
    keras.utils.set_random_seed(0)
    model = cnn((32, 32, 3), 10, filters=(16, 32), sam_model=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=args.epochs, batch_size=50, verbose=0)
    obj = landscape.Objective(model, (x, y), batch_size=250, metrics=())
    n_params = sum(int(np.prod(v.shape)) for v in obj.trainable_variables)
    print(
        f"data: {source}, {args.n} images; "
        f"model: cnn (16, 32) with BatchNorm, {n_params} parameters"
    )
    print(f"trained {args.epochs} epochs (Adam 1e-3); loss at w0: {obj.evaluate()['loss']:.4f}")

    # ---- 1. HVP ÷ gradient
    rng = np.random.default_rng(0)
    v = [rng.standard_normal(tuple(t.shape)).astype("float32") for t in obj.trainable_variables]

    def gradient():
        obj.value_and_gradient()[1][0].numpy()

    def hvp(mode):
        return lambda: obj.hessian_vector_product(v, mode=mode)[0].numpy()

    for mode in ("forward_over_backward", "backward_over_backward"):
        hvp(mode)()  # trace
    gradient()
    print(
        "\n(1) Hessian-vector product ÷ gradient (interleaved, median of "
        f"{args.repeats} repetitions of {args.calls} calls)"
    )
    for mode in ("forward_over_backward", "backward_over_backward"):
        ratio, t_hvp, t_grad = interleaved_ratio(
            hvp(mode), gradient, repeats=args.repeats, calls=args.calls
        )
        print(
            f"  {mode:24s} {ratio:5.2f}x   "
            f"(HVP {t_hvp * 1e3:7.1f} ms, gradient {t_grad * 1e3:6.1f} ms)"
        )
    print(f"  traces: {obj.trace_count}")

    # ---- 2. top eigenvalue: Lanczos vs power iteration stopped PyHessian's way
    ref = landscape.hessian_eigenvalues(obj, k=2, tol=1e-7, max_iter=300, seed=123)
    lam = float(ref.values[0])
    print(
        f"\n(2) top eigenvalue; reference: long Lanczos run, λ₁ = {lam:.8g}, "
        f"λ₂ = {ref.values[1]:.6g} (λ₂/λ₁ = {ref.values[1] / lam:.3f}; residuals "
        f"{ref.residuals.max():.1e}, {ref.n_hvp} HVPs)"
    )
    print(
        f"  {'method':28s} {'seed':>4s} {'HVPs':>5s} {'λ₁':>12s} "
        f"{'rel. error':>10s} {'residual':>9s}"
    )
    counts = {"lanczos": [], "power": []}
    errors = {"lanczos": [], "power": []}
    for seed in range(args.seeds):
        for method, tol in (("lanczos", 1e-4), ("power", 1e-3)):
            r = landscape.hessian_eigenvalues(obj, k=1, method=method, tol=tol, seed=seed)
            err = abs(float(r.values[0]) - lam) / abs(lam)
            counts[method].append(r.n_hvp)
            errors[method].append(err)
            label = f"{method} tol {tol:g}"
            print(
                f"  {label:28s} {seed:4d} {r.n_hvp:5d} {r.values[0]:12.8g} {err:10.1e} "
                f"{r.residuals[0]:9.1e}"
            )
    hl, hp = statistics.median(counts["lanczos"]), statistics.median(counts["power"])
    el, ep = statistics.median(errors["lanczos"]), statistics.median(errors["power"])
    print(
        f"  median: Lanczos {hl:g} HVPs, error {el:.1e}; power {hp:g} HVPs, error {ep:.1e}; "
        f"HVP ratio Lanczos/power = {hl / hp:.2f}"
    )


if __name__ == "__main__":
    main()
