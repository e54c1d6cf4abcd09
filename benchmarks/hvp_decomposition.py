"""HVP ÷ gradient on TensorFlow, split into what the toolkit adds and what TensorFlow costs.

For each model of ``scaling.py`` (same data: 64 CIFAR-10 images, one batch), in its own spawned
process, times interleaved (a new random order in every repetition; medians of per-repetition
ratios), both in wall time and in the process's CPU time (all of TensorFlow's threads; the steadier
measure of work on a machine shared with other jobs):

- ``toolkit``: ``Objective.value_and_gradient`` and ``Objective.hessian_vector_product``
  (back-over-back, the default);
- ``bare``: the same loss written directly in TensorFlow, one ``tf.function`` each, no while
  loop, no StatelessScope, no float64: ``tape.gradient`` of the model's variables, and the
  Hessian-vector product as ``GradientTape`` around ``GradientTape`` with g·v in float32
  (``bare fwd``: ``ForwardAccumulator`` around ``GradientTape``);
- with ``--jit``: the bare pair again with ``jit_compile=True`` (XLA on the CPU).

If the bare ratio is above the target, the cost is TensorFlow's own second-order graph, not the
toolkit's. The script also counts the convolution and matmul operations of each graph.

    .venv/bin/python benchmarks/hvp_decomposition.py [--models cnn,resnet20,resnet50]
        [--repeats 7] [--calls cnn:5] [--jit] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time

from _common import cifar_subset

import numpy as np

HEAVY = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul", "BatchMatMulV2",
         "DepthwiseConv2dNative")  # fmt: skip


def heavy_ops(fn, *args) -> dict:
    """Counts of the convolution / matmul ops in the traced graph of ``fn`` (a tf.function)."""
    graph = fn.get_concrete_function(*args).graph
    counts: dict[str, int] = {}

    for op in graph.get_operations():
        if op.type in HEAVY:
            counts[op.type] = counts.get(op.type, 0) + 1
    return counts


def flop_floor(model) -> dict:
    """Multiply-adds of the convolutions and matmuls: a gradient and Pearlmutter's exact HVP.

    Per layer with weights W and forward cost u (the first such layer gets no input gradient):
    a gradient is forward + input gradient + weight gradient, 3u (first: 2u); the HVP
    (forward over backward, the primal weight gradient unused) is forward u, tangent
    forward 2u (first: u), input gradient u and its tangent 2u (first: none), weight-gradient
    tangent 2u (first: u): 8u (first: 3u).
    """
    import keras

    grad = hvp = 0.0
    first = True
    for layer in model._flatten_layers(include_self=False):
        kernel = getattr(layer, "kernel", None)
        if kernel is None or not layer.trainable_weights:
            continue
        out_shape = layer.output.shape
        if isinstance(layer, keras.layers.Dense):
            positions = int(np.prod(out_shape[1:-1])) if len(out_shape) > 2 else 1
        else:  # a convolution: output positions × kernel size
            positions = int(np.prod(out_shape[1:-1]))
        u = positions * int(np.prod(kernel.shape))
        grad += (2 if first else 3) * u
        hvp += (3 if first else 8) * u
        first = False
    return {"gradient_macs": grad, "hvp_macs": hvp, "ratio": hvp / grad}


def job(name: str, n: int, repeats: int, calls: int, jit: bool) -> dict:
    import keras
    import tensorflow as tf
    from scaling import build

    import landscape

    model = build(name, False)
    x_np, y_np, source = cifar_subset(n)
    obj = landscape.Objective(model, (x_np, y_np), batch_size=n)
    tv = [w.value for w in model.trainable_variables]  # the tf.Variables
    rng = np.random.default_rng(0)
    v_np = [rng.standard_normal(tuple(t.shape)).astype("float32") for t in tv]
    v = [tf.constant(a) for a in v_np]
    x, y = tf.constant(x_np), tf.constant(y_np)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    def loss():
        return loss_fn(y, model(x, training=False))

    def grad():
        with tf.GradientTape() as tape:
            value = loss()
        return tape.gradient(value, tv)

    def hvp_bb(vec):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                value = loss()
            g = inner.gradient(value, tv)
            gv = tf.add_n([tf.reduce_sum(a * b) for a, b in zip(g, vec)])
        return outer.gradient(gv, tv)

    def hvp_fb(vec):
        with tf.autodiff.ForwardAccumulator(tv, vec) as acc:
            g = grad()
        return acc.jvp(g)

    bare_grad, bare_hvp, bare_fwd = (tf.function(f) for f in (grad, hvp_bb, hvp_fb))
    runs = {
        "toolkit_grad": lambda: obj.value_and_gradient()[1][0].numpy(),
        "toolkit_hvp": lambda: obj.hessian_vector_product(v_np)[0].numpy(),
        "bare_grad": lambda: bare_grad()[0].numpy(),
        "bare_hvp": lambda: bare_hvp(v)[0].numpy(),
        "bare_fwd": lambda: bare_fwd(v)[0].numpy(),
    }
    if jit:
        jit_grad = tf.function(grad, jit_compile=True)
        jit_hvp = tf.function(hvp_bb, jit_compile=True)
        runs["jit_grad"] = lambda: jit_grad()[0].numpy()
        runs["jit_hvp"] = lambda: jit_hvp(v)[0].numpy()

    # the products agree (the toolkit's is the float64 sum of the same float32 graph)
    ref = np.concatenate([np.ravel(a) for a in obj.hessian_vector_product(v_np)])
    agree = {}
    for key, fn in (("bare_hvp", bare_hvp), ("bare_fwd", bare_fwd)):
        out = np.concatenate([np.ravel(a.numpy()) for a in fn(v)])
        agree[key] = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    warm = {}
    for key, fn in runs.items():
        start = time.perf_counter()
        fn()
        warm[key] = time.perf_counter() - start
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}  # CPU: all of TF's threads
    times = {c: {k: [] for k in runs} for c in clocks}
    for _ in range(repeats):
        for key in rng.permutation(list(runs)):
            start = {c: clock() for c, clock in clocks.items()}
            for _ in range(calls):
                runs[key]()
            for c, clock in clocks.items():
                times[c][key].append((clock() - start[c]) / calls)

    def ratios(t):
        def ratio(a, b):
            return statistics.median(p / q for p, q in zip(t[a], t[b]))

        out = {
            "median_s": {k: statistics.median(v) for k, v in t.items()},
            "toolkit": ratio("toolkit_hvp", "toolkit_grad"),
            "bare": ratio("bare_hvp", "bare_grad"),
            "bare_fwd": ratio("bare_fwd", "bare_grad"),
            "hvp_toolkit_per_bare": ratio("toolkit_hvp", "bare_hvp"),
            "grad_toolkit_per_bare": ratio("toolkit_grad", "bare_grad"),
        }
        if jit:
            out["jit"] = ratio("jit_hvp", "jit_grad")
            out["jit_grad_per_bare"] = ratio("jit_grad", "bare_grad")
        return out

    out = {
        "model": name,
        "n_params": int(sum(np.prod(t.shape) for t in tv)),
        "data": source,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "agreement": agree,
        "warm_up_s": warm,
        "floor": flop_floor(model),
        "ops": {"grad": heavy_ops(bare_grad), "hvp": heavy_ops(bare_hvp, v)},
        **{c: ratios(t) for c, t in times.items()},
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,resnet20,resnet50")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", default="cnn:5", help="calls per timing, e.g. cnn:5 [1]")
    parser.add_argument("--jit", action="store_true", help="also time XLA (jit_compile=True)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    print(f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)  # fmt: skip
    calls = {k: int(c) for k, c in (p.split(":") for p in args.calls.split(",") if p)}
    rows = []
    for name in args.models.split(","):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            r = pool.apply(job, (name, args.n, args.repeats, calls.get(name, 1), args.jit))
        rows.append(r)
        print(f"\n{name} ({r['n_params']:,} parameters); products agree to {r['agreement']}")
        for c in ("wall", "cpu"):
            q = r[c]
            ms = {k: f"{t * 1e3:.0f}" for k, t in q["median_s"].items()}
            print(f"  {c} time, median ms {ms}")
            print(f"    HVP ÷ gradient: toolkit {q['toolkit']:.2f}, bare TF {q['bare']:.2f} "
                  f"(bare forward-over-backward {q['bare_fwd']:.2f})"
                  + (f", XLA {q['jit']:.2f} (XLA gradient ÷ bare {q['jit_grad_per_bare']:.2f})"
                     if "jit" in q else ""))  # fmt: skip
            print(f"    toolkit ÷ bare: HVP {q['hvp_toolkit_per_bare']:.2f}, "
                  f"gradient {q['grad_toolkit_per_bare']:.2f}")  # fmt: skip
        print(
            f"  FLOP floor of HVP ÷ gradient (convolutions and matmuls): {r['floor']['ratio']:.2f}"
        )
        print(f"  heavy ops: gradient {r['ops']['grad']}, HVP {r['ops']['hvp']}", flush=True)
    print(f"\nload average now {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
