"""SharpnessTracker benchmark: what warm starts save, and what tracking adds to training.

On MNIST (``--data embedded``: the 6,000 embedded training images; ``--data mnist``: all 60,000
of ``../shared/data/mnist.npz``; scaled to [0, 1]) a ``landscape.models.cnn`` (filters 16, 32,
BatchNorm; sparse categorical cross-entropy) trains with SGD (learning rate 0.05, momentum 0.9,
batch 128) for ``--epochs`` epochs.

1. Warm starts: one training run carries two trackers that probe the same weights (a tracker
   changes nothing, so both see the same run): one warm-started from the previous probe's
   eigenvectors, one from a random vector every time; top-1 at the default tolerance. Two
   settings: (a) the CNN above, a probe every epoch on the first 1,000 training images; (b)
   full-batch gradient descent at the edge of stability (a tanh MLP, MSE, 500 embedded images
   pooled to 14×14, η = 1.8, 400 steps; the set-up of tests/test_tracking.py), a probe every 20
   steps. Reported: Hessian-vector products per probe after the first (median and mean) for
   each, the reduction, and the largest relative difference of their λ_max.
2. Overhead: the same training without a tracker and with one (warm, every epoch, 1,000
   images), interleaved, ``--repeats`` times in alternating order, each timed around ``fit``
   (the model is built and compiled outside the timing). Reported: the median of
   time(with) / time(without) − 1, the tracker's own ``overhead`` (time in probes over the
   rest of training), each run's products per probe (and their mean after the first), probe
   seconds and the Objective's ``trace_count`` (each function traced once, none per probe),
   and, for the last tracked run, each probe's time beyond its passes (products × one
   product's time, + one forward pass for ``probe_loss``; one product and one forward pass
   timed on the probe set after training).

3. ``--starts`` (only this): why a warm probe takes 3–4 products — the residual after each
   product from the previous eigenvector, and other start vectors on the same weights
   (function ``starts``). About 4 minutes.

Like the other benchmarks (``_common.py``), TensorFlow runs with ``TF_ENABLE_ONEDNN_OPTS=0``
unless the variable is set. About 5 minutes on a 2-core machine with the defaults.

    .venv/bin/python benchmarks/tracking.py [--epochs 4] [--repeats 3] [--probe 1000]
        [--every 1] [--tol 1e-3] [--optimizer sgd|sam] [--data embedded|mnist] [--no-warm]
        [--starts]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import _common  # noqa: F401 (environment before TensorFlow)
import numpy as np


def build(optimizer: str, seed: int):
    import keras

    import landscape
    from sam import SAM

    keras.utils.set_random_seed(seed)
    model = landscape.models.cnn((28, 28, 1), 10, filters=(16, 32), sam_model=optimizer == "sam")
    base = keras.optimizers.SGD(0.05, momentum=0.9)
    model.compile(
        SAM(base, rho=0.05) if optimizer == "sam" else base,
        keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    return model


def fit(model, x, y, epochs: int, callbacks) -> float:
    start = time.perf_counter()
    model.fit(x, y, batch_size=128, epochs=epochs, shuffle=True, verbose=0, callbacks=callbacks)
    return time.perf_counter() - start


def edge_of_stability():
    """Two trackers (warm, cold) on full-batch gradient descent at the edge of stability."""
    import keras
    import tensorflow as tf

    import landscape

    (x, y), _ = landscape.load_embedded()
    n = 500
    x = (x[:n] / 255).astype("float32").reshape(n, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(n, -1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    targets = keras.utils.to_categorical(y[:n], 10)
    keras.utils.set_random_seed(0)
    init = keras.initializers.VarianceScaling(0.5, "fan_in", "truncated_normal", seed=0)
    layers = [keras.layers.Dense(64, activation="tanh", kernel_initializer=init) for _ in range(3)]
    layers.append(keras.layers.Dense(10, kernel_initializer=init))
    model = keras.Sequential([keras.Input((196,)), *layers])
    model.compile(keras.optimizers.SGD(1.8), "mse", steps_per_execution=20)
    trackers = [
        landscape.SharpnessTracker((x, targets), every=20, unit="step", batch_size=n, warm_start=w)
        for w in (True, False)
    ]
    full_batch = tf.data.Dataset.from_tensors((x, targets)).repeat()
    model.fit(full_batch, epochs=1, steps_per_epoch=400, verbose=0, shuffle=False,
              callbacks=trackers)  # fmt: skip
    return trackers


def compare(title: str, warm, cold) -> None:
    """Products per probe after the first, warm against cold, and their λ_max."""
    w, c = warm.history["n_hvp"][1:], cold.history["n_hvp"][1:]
    lam_w, lam_c = np.asarray(warm.history["lambda_max"]), np.asarray(cold.history["lambda_max"])
    print(f"\nWarm starts, {title} (products per probe after the first, certificate included)")
    print(f"  warm: {w}  median {statistics.median(w)}  mean {np.mean(w):.2f}")
    print(f"  cold: {c}  median {statistics.median(c)}  mean {np.mean(c):.2f}")
    print(f"  reduction of the mean: {100 * (1 - np.mean(w) / np.mean(c)):.0f} %")
    certified = all(warm.history["converged"]) and all(cold.history["converged"])
    print(f"  λ_max from {lam_w[0]:.4g} to {lam_w[-1]:.4g}; largest relative difference "
          f"warm/cold {np.max(np.abs(lam_w - lam_c) / np.abs(lam_c)):.1e}; all certified: "
          f"{certified}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe", type=int, default=1000, help="probe-set size")
    parser.add_argument("--every", type=int, default=1, help="probe every N epochs")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--optimizer", choices=["sgd", "sam"], default="sgd")
    parser.add_argument("--data", choices=["embedded", "mnist"], default="embedded")
    parser.add_argument("--no-warm", action="store_true", help="skip the warm-start part")
    parser.add_argument(
        "--starts",
        action="store_true",
        help="only compare start vectors on one run's weights (function starts)",
    )
    args = parser.parse_args()

    import landscape

    if args.data == "mnist":
        with np.load(_common.CIFAR.parent / "mnist.npz") as f:
            x, y = f["x_train"], f["y_train"].astype("int32")
    else:
        (x, y), _ = landscape.load_embedded()
    x = (x[..., None] / 255.0).astype("float32")
    probe = (x[: args.probe], y[: args.probe])
    if args.starts:
        return starts(args, x, y)
    print(
        f"MNIST ({args.data}), {len(x)} training images; cnn (16, 32) + BN, {args.optimizer}, "
        f"batch 128, {args.epochs} epochs; probe set {args.probe} images every {args.every} "
        f"epoch(s), tol {args.tol}; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores",
        flush=True,
    )

    def tracker(warm: bool):
        return landscape.SharpnessTracker(
            probe, every=args.every, tol=args.tol, warm_start=warm, seed=0
        )

    # 1. warm against cold starts, on the same weights
    if not args.no_warm:
        warm, cold = tracker(True), tracker(False)
        fit(build(args.optimizer, 0), x, y, args.epochs, [warm, cold])
        compare("(a) CNN, a probe every epoch", warm, cold)
        compare("(b) gradient descent at the edge of stability, a probe every 20 steps",
                *edge_of_stability())  # fmt: skip

    # 2. overhead, interleaved
    ratios, plain_times, tracked_times, own = [], [], [], []
    for r in range(args.repeats):
        runs = [("plain", None), ("tracked", tracker(True))]
        if r % 2:
            runs.reverse()
        times = {}
        for name, t in runs:
            model = build(args.optimizer, r)
            times[name] = fit(model, x, y, args.epochs, [t] if t else [])
            if t is not None:
                own.append(t.overhead)
                last = t
                probes = len(t.history["step"])
                products = t.history["n_hvp"]
                seconds = [round(s, 2) for s in t.history["seconds"]]
                traced = dict(t._objective.trace_count)  # once each: nothing traced per probe
        ratios.append(times["tracked"] / times["plain"] - 1)
        plain_times.append(times["plain"])
        tracked_times.append(times["tracked"])
        print(f"  repetition {r}: without {times['plain']:.1f} s, with {times['tracked']:.1f} s "
              f"({probes} probes): +{100 * ratios[-1]:.0f} %; products per probe {products} "
              f"(mean after the first {np.mean(products[1:]):.2f}); probe seconds {seconds}; "
              f"traces {traced}",
              flush=True)  # fmt: skip
    print("\nOverhead (median of repetitions)")
    print(f"  training without the tracker {statistics.median(plain_times):.1f} s, with it "
          f"{statistics.median(tracked_times):.1f} s: +{100 * statistics.median(ratios):.0f} % "
          f"(tracker's own estimate +{100 * statistics.median(own):.0f} %)")  # fmt: skip
    split(last)
    print(f"load average now {os.getloadavg()[0]:.1f}")


def split(tracker) -> None:
    """A probe's time against its passes: products × one product's time + one forward pass."""
    from landscape.hessian import _Hessian

    obj = tracker._objective
    op = _Hessian(obj, "train", "auto")
    v = np.random.default_rng(0).standard_normal(op.n)
    product, forward = [], []
    for _ in range(3):
        start = time.perf_counter()
        op(v)
        product.append(time.perf_counter() - start)
        start = time.perf_counter()
        obj.evaluate()
        forward.append(time.perf_counter() - start)
    t_hvp, t_fwd = statistics.median(product), statistics.median(forward)
    rest = [
        s - n * t_hvp - t_fwd for s, n in zip(tracker.history["seconds"], tracker.history["n_hvp"])
    ]
    print(f"  one product {t_hvp:.3f} s, one forward pass {t_fwd:.3f} s on the probe set (after "
          f"training); probe time beyond them: {[round(r, 2) for r in rest]} s (the first "
          f"includes tracing); traced {obj.trace_count}")  # fmt: skip


def starts(args, x, y) -> None:
    """Why a warm probe takes 3–4 products: start vectors tried on the same weights.

    The CNN trains as in part 1; after each epoch the weights are kept. At each of them the top
    eigenvector is computed to a relative residual of 1e-6 (float32 products; a run capped at
    100 products is used as it is). Then for each probe after the first, starting from the
    previous epoch's eigenvector v₁: the relative residual and Ritz value after 1…5 products
    (``_subspace.eigenpairs`` capped there), and the products needed for tol from these starts:
    v₁ (what the tracker does), v₁ extrapolated along the last move, v₁ + β(v₁ − v₀) (β = ½, 1),
    the block [v₁, v₀], and the blocks of the previous epoch's top 2 and top 3 eigenvectors
    (computed at that epoch's weights to a relative residual of 1e-5, or at a 300-product cap,
    printed: the directions that first-order perturbation theory says the top eigenvector turns
    towards most, those of the nearest eigenvalues). The overlaps |cos| of the new top
    eigenvector with the previous top 3 say where it turned.
    """
    import keras

    import landscape
    from landscape import _subspace
    from landscape.hessian import _Hessian

    model = build(args.optimizer, 0)
    snaps = [[v.numpy().copy() for v in model.variables]]

    class Keep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snaps.append([v.numpy().copy() for v in self.model.variables])

    fit(model, x, y, args.epochs, [Keep()])
    obj = landscape.Objective(model, (x[: args.probe], y[: args.probe]), metrics=())

    def operator(t):
        for v, w in zip(model.variables, snaps[t]):
            v.assign(w)
        return _Hessian(obj, "train", "auto")

    def run(op, start, seed, tol, cap=100):
        return _subspace.eigenpairs(
            op,
            1,
            which="largest",
            tol=tol,
            max_iter=cap,
            basis_size=20,
            start=start,
            rng=np.random.default_rng(seed),
        )

    tight, top3 = [], []
    for t in range(len(snaps)):
        op = operator(t)
        tight.append(run(op, [np.random.default_rng(t).standard_normal(op.n)], t, 1e-6))
        top3.append(
            _subspace.eigenpairs(
                op, 3, which="largest", tol=1e-5, max_iter=300, basis_size=20,
                start=[tight[t].vectors[0]], rng=np.random.default_rng(t),
            )
        )  # fmt: skip
    print(f"\nStart vectors (top eigenvector at each epoch, tol {args.tol}; λ_max "
          f"{[round(float(p.values[0]), 3) for p in tight]})")  # fmt: skip
    for t in range(1, len(snaps)):
        op = operator(t)
        v1 = tight[t - 1].vectors[0]
        cosine = abs(float(v1 @ tight[t].vectors[0]))
        path = [run(op, [v1], t, 1e-12, cap) for cap in range(1, 6)]
        steps = ", ".join(f"{p.residuals[0]:.1e} ({abs(p.values[0] / tight[t].values[0] - 1):.0e})"
                          for p in path)  # fmt: skip
        counts = {"v1": run(op, [v1], t, args.tol).n_hvp}
        if t >= 2:
            v0 = tight[t - 2].vectors[0]
            v0 = v0 if v0 @ v1 >= 0 else -v0
            for beta in (0.5, 1.0):
                guess = v1 + beta * (v1 - v0)
                counts[f"extrapolated {beta}"] = run(op, [guess], t, args.tol).n_hvp
            counts["block [v1, v0]"] = run(op, [v1, v0], t, args.tol).n_hvp
        previous = top3[t - 1].vectors
        for b in (2, 3):
            counts[f"previous top {b}"] = run(op, list(previous[:b]), t, args.tol).n_hvp
        overlaps = np.round(np.abs(previous @ tight[t].vectors[0]), 2).tolist()
        print(f"  epoch {t}: |cos(v1, v)| {cosine:.2f}; residual (and λ error) after 1…5 products "
              f"from v1: {steps}; products to tol: {counts}; |cos| of v with the previous top 3 "
              f"{overlaps} (their λ {np.round(top3[t - 1].values, 2).tolist()}, "
              f"{'certified' if top3[t - 1].converged else 'capped'})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
