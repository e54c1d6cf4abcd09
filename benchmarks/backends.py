"""Backends: the Objective's cost on TensorFlow, JAX and PyTorch against bare compiled code.

Two small models, built once on TensorFlow (weights saved as ``.weights.h5`` and loaded on every
backend, so every backend computes at the same weights on the same data): a CNN with
BatchNormalization (two conv layers, 16×16×3 inputs, 10 classes) and a Transformer block
(Embedding, MultiHeadAttention, LayerNorm, Dense; sequences of 16 tokens). Every backend runs in
its own process (``KERAS_BACKEND`` set by this script, results returned as JSON on stdout), and
times, after a warm-up (compilation excluded):

- bare: the mean cross-entropy over the data written with the backend's own tools, per batch on
  device-resident batches with one sync at the end: the forward pass with what a grid point
  reports, the loss and the number of correct predictions (``model.stateless_call`` under
  ``jax.jit`` / ``tf.function``; PyTorch eagerly under ``torch.no_grad``), the loss's gradient
  (``jax.grad``; ``tf.GradientTape``; ``torch.autograd.grad``) and a Hessian-vector product in
  the backend's natural way (``jax.jvp`` over ``jax.grad``; two nested tapes; double backward);
- toolkit: ``Objective.evaluate_at`` of a new grid point of a 2-direction ``Basis`` (loss and
  accuracy, as ``compute_surface`` evaluates it), ``value_and_gradient``,
  ``hessian_vector_product`` (in the bare product's mode: forward-over-backward on JAX,
  backward-over-backward elsewhere; JAX's default mode too) and
  ``hessian_eigenvalues(obj, k=1)`` (wall time, with its number of products).

Each ratio is timed in adjacent pairs (the two runs back to back, alternating which goes
first, the pairs in a new order in every repetition; a run is the mean of ``--calls`` calls
or of as many as last 0.1 s) and is the median of the per-repetition ratios inside one
process. Every backend computes on ``--threads`` threads (default 1: on a few shared cores,
multi-threaded kernels mostly measure the other workers' load). Before timing, the bare and
the toolkit's loss and product are checked to agree (a benchmark of two different things
would be meaningless). ``torch.compile`` of the bare forward pass is tried in a separate
process, given ``--compile-timeout`` seconds.

    .venv/bin/python benchmarks/backends.py [--reps 5] [--n 512] [--batch 128] [--threads 1]
        [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")
MODELS = ("cnn", "transformer")
VOCAB, SEQ, CLASSES = 64, 16, 10
MIN_RUN_S = 0.1


# ------------------------------------------------------------------ models and data (any backend)
def build(name: str):
    import keras

    L = keras.layers
    keras.utils.set_random_seed(0)
    if name == "cnn":
        inp = keras.Input((16, 16, 3))
        h = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(inp)))
        h = L.ReLU()(L.BatchNormalization()(L.Conv2D(32, 3, strides=2, padding="same")(h)))
        out = L.Dense(CLASSES)(L.GlobalAveragePooling2D()(h))
    else:
        inp = keras.Input((SEQ,), dtype="int32")
        h = L.Embedding(VOCAB, 32)(inp)
        h = L.LayerNormalization()(h + L.MultiHeadAttention(2, 16)(h, h))
        h = L.LayerNormalization()(h + L.Dense(32)(L.Dense(64, activation="relu")(h)))
        out = L.Dense(CLASSES)(L.GlobalAveragePooling1D()(h))
    model = keras.Model(inp, out, name=name)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def make_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n).astype("int32")
    x_img = rng.normal(size=(n, 16, 16, 3)).astype("float32") + y[:, None, None, None] / 5.0
    x_tok = rng.integers(0, VOCAB - CLASSES, (n, SEQ)) + (rng.random((n, SEQ)) < 0.3) * y[:, None]
    return {"cnn_x": x_img, "transformer_x": x_tok.astype("int32"), "y": y}


def build_weights(folder: str) -> None:
    """Train each model briefly on TensorFlow (real BatchNorm statistics) and save its weights."""
    with np.load(os.path.join(folder, "data.npz")) as f:
        data = dict(f)
    for name in MODELS:
        model = build(name)
        model.fit(data[f"{name}_x"], data["y"], batch_size=64, epochs=2, verbose=0)
        model.save_weights(os.path.join(folder, f"{name}.weights.h5"))


# ------------------------------------------------------------------ bare code, one per backend
def _ce(model):
    import keras

    def loss(tv, ntv, x, y):
        out, _ = model.stateless_call(tv, ntv, x, training=False)
        return keras.ops.mean(
            keras.losses.sparse_categorical_crossentropy(y, out, from_logits=True)
        )

    return loss


def _ce_and_accuracy(model):
    """The forward pass as a grid point computes it: the mean cross-entropy and the number of
    correct predictions (a grid point reports the loss and the accuracy)."""
    import keras

    ops = keras.ops

    def forward(tv, ntv, x, y):
        out, _ = model.stateless_call(tv, ntv, x, training=False)
        ce = ops.mean(keras.losses.sparse_categorical_crossentropy(y, out, from_logits=True))
        return ce, ops.sum(ops.cast(ops.equal(ops.argmax(out, axis=-1), y), "float32"))

    return forward


def bare_jax(model, batches, vector):
    import jax
    import jax.numpy as jnp

    loss, forward = _ce(model), _ce_and_accuracy(model)
    tv = [jnp.asarray(v.value) for v in model.trainable_variables]
    ntv = [jnp.asarray(v.value) for v in model.non_trainable_variables]
    batches = [(jnp.asarray(x), jnp.asarray(y)) for x, y in batches]
    vector = [jnp.asarray(v) for v in vector]
    f = jax.jit(forward)
    g = jax.jit(jax.grad(loss))

    @jax.jit
    def h(tv, ntv, x, y, v):
        return jax.jvp(lambda t: jax.grad(loss)(t, ntv, x, y), (tv,), (v,))[1]

    def summed(fn, *extra):
        def run():
            total = None
            for x, y in batches:
                out = fn(tv, ntv, x, y, *extra)
                total = out if total is None else jax.tree.map(jnp.add, total, out)
            return [np.asarray(t) for t in jax.tree.leaves(jax.block_until_ready(total))]

        return run

    return summed(f), summed(g), summed(h, vector)


def bare_tensorflow(model, batches, vector):
    import tensorflow as tf

    from sam._compat import exact_second_derivatives

    loss, forward = _ce(model), _ce_and_accuracy(model)
    tv = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
    ntv = [tf.convert_to_tensor(v.value) for v in model.non_trainable_variables]
    batches = [(tf.constant(x), tf.constant(y)) for x, y in batches]
    vector = [tf.constant(v) for v in vector]

    @tf.function
    def f(tv, ntv, x, y):
        return forward(tv, ntv, x, y)

    @tf.function
    def g(tv, ntv, x, y):
        with tf.GradientTape() as tape:
            tape.watch(tv)
            value = loss(tv, ntv, x, y)
        return [tf.convert_to_tensor(g) for g in tape.gradient(value, tv)]

    @tf.function
    def h(tv, ntv, x, y, v):
        # TensorFlow's LayerNormalization (tf.nn.moments) has a wrong second derivative: the
        # toolkit's replacement of the moments is traced in (values the same to rounding)
        with exact_second_derivatives(), tf.GradientTape() as outer:
            outer.watch(tv)
            with tf.GradientTape() as inner:
                inner.watch(tv)
                value = loss(tv, ntv, x, y)
            grads = [tf.convert_to_tensor(g) for g in inner.gradient(value, tv)]
            gv = tf.add_n([tf.reduce_sum(a * b) for a, b in zip(grads, v)])
        return [tf.convert_to_tensor(h) for h in outer.gradient(gv, tv)]

    def summed(fn, *extra):
        def run():
            total = None
            for x, y in batches:
                out = tf.nest.flatten(fn(tv, ntv, x, y, *extra))
                total = out if total is None else [a + b for a, b in zip(total, out)]
            return [t.numpy() for t in total]

        return run

    return summed(f), summed(g), summed(h, vector)


def bare_torch(model, batches, vector, compiled=False):
    import keras
    import torch

    params = [v.value for v in model.trainable_variables]
    batches = [(torch.as_tensor(x), torch.as_tensor(y)) for x, y in batches]
    vector = [torch.as_tensor(v) for v in vector]

    def loss(x, y):
        out = model(x, training=False)
        return keras.ops.mean(
            keras.losses.sparse_categorical_crossentropy(y, out, from_logits=True)
        )

    def loss_and_accuracy(x, y):  # as a grid point: the loss and the correct predictions
        out = model(x, training=False)
        ce = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, out, from_logits=True))
        return ce, (out.argmax(-1) == y).sum(dtype=torch.float32)

    forward_pass = torch.compile(loss_and_accuracy) if compiled else loss_and_accuracy

    def forward():
        with torch.no_grad():
            parts = [forward_pass(x, y) for x, y in batches]
            return [sum(p[0] for p in parts).numpy(), sum(p[1] for p in parts).numpy()]

    def gradient():
        total = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            total = [t + g for t, g in zip(total, torch.autograd.grad(loss(x, y), params))]
        return [t.numpy() for t in total]

    def hvp():  # the fused CPU attention kernel has no second derivative: the math kernel
        from torch.nn.attention import SDPBackend, sdpa_kernel

        total = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            with sdpa_kernel([SDPBackend.MATH]):
                grads = torch.autograd.grad(loss(x, y), params, create_graph=True)
            gv = sum((g * v).sum() for g, v in zip(grads, vector))
            total = [t + h for t, h in zip(total, torch.autograd.grad(gv, params))]
        return [t.numpy() for t in total]

    return forward, gradient, hvp


# ------------------------------------------------------------------ one backend, one model
def _load(folder: str, name: str, n: int):
    import warnings

    model = build(name)
    warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
    model.load_weights(os.path.join(folder, f"{name}.weights.h5"))
    with np.load(os.path.join(folder, "data.npz")) as f:
        return model, f[f"{name}_x"][:n], f["y"][:n]


def _check(bare, toolkit, what: str, rtol: float = 1e-3) -> float:
    bare = np.concatenate([np.ravel(a) for a in bare]).astype(np.float64)
    toolkit = np.concatenate([np.ravel(a) for a in toolkit]).astype(np.float64)
    err = float(np.linalg.norm(bare - toolkit) / np.linalg.norm(bare))
    if not err < rtol:
        raise AssertionError(f"bare and toolkit {what} differ: relative error {err:.2e}")
    return err


def runs_for(backend: str, folder: str, name: str, args) -> tuple[dict, dict]:
    """The timed callables of one model on this process's backend, checked against each other."""
    import landscape

    model, x, y = _load(folder, name, args.n)
    batches = [(x[i : i + args.batch], y[i : i + args.batch]) for i in range(0, len(x), args.batch)]
    k = len(batches)  # equal batches: the data-set mean is the mean of the batches' means
    obj = landscape.Objective(model, (x, y), batch_size=args.batch)
    rng = np.random.default_rng(0)
    vector = [
        rng.standard_normal(tuple(v.shape)).astype("float32") for v in obj.trainable_variables
    ]
    forward, gradient, hvp = globals()[f"bare_{backend}"](model, batches, vector)
    basis = obj.basis([landscape.random_direction(model, seed=s) for s in (0, 1)])
    mode = "forward_over_backward" if backend == "jax" else "backward_over_backward"
    eig = {}

    def eigen():
        r = landscape.hessian_eigenvalues(obj, k=1, seed=0)
        eig.update(n_hvp=int(r.n_hvp), value=float(r.values[0]))

    runs = {
        "bare_forward": forward,
        "bare_gradient": gradient,
        "bare_hvp": hvp,
        "point": lambda: obj.evaluate_at(rng.uniform(-1, 1, 2), basis),
        "gradient": lambda: obj.value_and_gradient(),
        "hvp": lambda: obj.hessian_vector_product(vector, mode=mode),
        "eigen": eigen,
    }
    if backend == "jax":
        runs["hvp_bob"] = lambda: obj.hessian_vector_product(vector)
    errors = {
        "loss": _check(forward()[:1], [k * obj.evaluate()["loss"]], f"{name} loss"),
        "accuracy": _check(forward()[1:], [len(x) * obj.evaluate()["acc"]], f"{name} accuracy"),
        "gradient": _check(
            gradient(), [k * g for g in obj.value_and_gradient()[1]], f"{name} grad"
        ),
        "hvp": _check(hvp(), [k * h for h in runs["hvp"]()], f"{name} HVP"),
    }
    return runs, {"errors": errors, "eig": eig, "obj": obj}


#: what is timed back to back (numerator, denominator): ratios of adjacent runs resist the
#: slow swings of a shared machine's load better than runs seconds apart
PAIRS = (
    ("point", "bare_forward"),
    ("gradient", "bare_gradient"),
    ("hvp", "bare_hvp"),
    ("hvp_bob", "bare_hvp"),
    ("hvp", "gradient"),
    ("bare_hvp", "bare_gradient"),
    ("compiled", "eager"),  # torch.compile's worker: the bare pass compiled ÷ eager
    ("point", "compiled"),  # and the toolkit's compiled grid point ÷ the compiled bare pass
)


def interleave(runs: dict, reps: int, calls: int = 1, seed: int = 0):
    """(times per key, ratios per pair): in every repetition the pairs in a new order, each
    pair's two runs back to back in alternating order, each the mean of ``calls`` calls or of
    as many as last ``MIN_RUN_S``."""
    warm = {}
    for key, fn in runs.items():  # warm-up: tracing and compilation, first-call allocations
        fn()
        start = time.perf_counter()
        fn()
        warm[key] = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    pairs = [p for p in PAIRS if p[0] in runs and p[1] in runs]
    # at least MIN_RUN_S per timed run: a few-ms call is at the mercy of one preemption
    n_calls = {p: max(calls, math.ceil(MIN_RUN_S / max(warm[p[0]], warm[p[1]]))) for p in pairs}
    times: dict[str, list[float]] = {key: [] for key in runs}
    ratios: dict[str, list[float]] = {f"{a}/{b}": [] for a, b in pairs}
    singles = [key for key in runs if not any(key in p for p in pairs)]
    for r in range(reps):
        for i in rng.permutation(len(pairs)):
            measured = {}
            for key in pairs[i][:: 1 if r % 2 else -1]:
                start = time.perf_counter()
                for _ in range(n_calls[pairs[i]]):
                    runs[key]()
                measured[key] = (time.perf_counter() - start) / n_calls[pairs[i]]
                times[key].append(measured[key])
            a, b = pairs[i]
            ratios[f"{a}/{b}"].append(measured[a] / measured[b])
        for key in singles:
            start = time.perf_counter()
            runs[key]()
            times[key].append(time.perf_counter() - start)
    return times, ratios


def set_threads(backend: str, n: int) -> None:
    """``n`` compute threads (0: the backend's default); XLA's are set by ``spawn``."""
    if n and backend == "torch":
        import torch

        torch.set_num_threads(n)
        torch.set_num_interop_threads(1)
    elif n and backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def worker(backend: str, folder: str, args) -> dict:
    set_threads(backend, args.threads)
    out = {"backend": backend, "load": os.getloadavg()[0]}
    for name in MODELS:
        runs, info = runs_for(backend, folder, name, args)
        times, ratios = interleave(runs, args.reps, args.calls)
        out[name] = {
            "ms": {key: statistics.median(t) * 1e3 for key, t in times.items()},
            **{key: statistics.median(r) for key, r in ratios.items()},
            "n_hvp": info["eig"]["n_hvp"],
            "errors": info["errors"],
            "traces": info["obj"].trace_count,
        }
    out["load_after"] = os.getloadavg()[0]
    return out


def torch_compile_worker(folder: str, args) -> dict:
    """Eager against ``torch.compile``d bare forward pass (one process; the caller times out)."""
    set_threads("torch", args.threads)
    out = {}
    for name in MODELS:
        model, x, y = _load(folder, name, args.n)
        batches = [
            (x[i : i + args.batch], y[i : i + args.batch]) for i in range(0, len(x), args.batch)
        ]
        eager = bare_torch(model, batches, [])[0]
        start = time.perf_counter()
        compiled = bare_torch(model, batches, [], compiled=True)[0]
        _check(eager(), compiled(), "torch.compile loss", rtol=1e-4)
        out[f"{name}_compile_s"] = time.perf_counter() - start
        point, at_w0 = _compiled_point(model, x, y, args.batch)
        _check(compiled()[:1], [len(batches) * at_w0], "torch.compile point", rtol=1e-4)
        runs = {"eager": eager, "compiled": compiled, "point": point}
        times, ratios = interleave(runs, args.reps)
        out[name] = {key: statistics.median(t) * 1e3 for key, t in times.items()}
        out[name]["point/compiled"] = statistics.median(ratios["point/compiled"])
    return out


def _compiled_point(model, x, y, batch: int):
    """(a new grid point of the Objective of ``model`` compiled with ``jit_compile=True``,
    Keras's opt-in to ``torch.compile``; the loss at w0, by the first, compiling, call)."""
    import landscape

    model.compile(optimizer=model.optimizer, loss=model.loss, jit_compile=True)
    obj = landscape.Objective(model, (x, y), batch_size=batch)
    basis = obj.basis([landscape.random_direction(model, seed=s) for s in (0, 1)])
    rng = np.random.default_rng(1)
    at_w0 = obj.evaluate_at([0.0, 0.0], basis)["loss"]
    return (lambda: obj.evaluate_at(rng.uniform(-1, 1, 2), basis)), at_w0


# ------------------------------------------------------------------ the driver
def spawn(backend: str, argv: list[str], threads: int, timeout: float | None = None):
    """The JSON a worker prints, or a sentence saying why there is none."""
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=_root())
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        if threads == 1:  # XLA's CPU client has no thread-count flag but this one
            env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    try:
        proc = subprocess.run(
            [sys.executable, __file__, *argv], env=env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"did not finish within {timeout:g} s"
    if proc.returncode:
        return "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _root() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def print_table(results: dict, compiled) -> None:
    print(
        f"\n{'backend':10s} {'model':11s} {'fwd':>7s} {'point':>7s} {'pt/fwd':>6s} "
        f"{'grad':>7s} {'bgrad':>7s} {'hvp':>7s} {'bhvp':>7s} {'hvp/bh':>6s} {'hvp/g':>6s} "
        f"{'bh/bg':>6s} {'eig ms':>8s} {'n_hvp':>5s}"
    )
    for backend, res in results.items():
        if isinstance(res, str):
            print(f"{backend:10s} {res}")
            continue
        for name in MODELS:
            r, ms = res[name], res[name]["ms"]
            print(
                f"{backend:10s} {name:11s} {ms['bare_forward']:7.1f} {ms['point']:7.1f} "
                f"{r['point/bare_forward']:6.2f} {ms['gradient']:7.1f} {ms['bare_gradient']:7.1f} "
                f"{ms['hvp']:7.1f} {ms['bare_hvp']:7.1f} {r['hvp/bare_hvp']:6.2f} "
                f"{r['hvp/gradient']:6.2f} {r['bare_hvp/bare_gradient']:6.2f} "
                f"{ms['eigen']:8.0f} {r['n_hvp']:5d}"
            )
    print(
        "fwd/grad/hvp: bare (b*) and toolkit medians in ms; pt/fwd = grid point ÷ bare forward, "
        "hvp/bh = toolkit HVP ÷ bare HVP (targets ≤ 1.10); hvp/g = toolkit HVP ÷ toolkit "
        "gradient; bh/bg = bare HVP ÷ bare gradient; eig = hessian_eigenvalues(k=1)"
    )
    for backend, res in results.items():
        if not isinstance(res, str):
            errs = {m: {k: f"{v:.0e}" for k, v in res[m]["errors"].items()} for m in MODELS}
            extra = {m: round(res[m].get("hvp_bob/bare_hvp", float("nan")), 2) for m in MODELS}
            bob = f"; default-mode (bob) HVP ÷ bare {extra}" if backend == "jax" else ""
            print(
                f"  {backend}: load {res['load']:.2f}-{res['load_after']:.2f}; "
                f"bare vs toolkit rel. error {errs}{bob}"
            )
    if isinstance(compiled, str):
        print(f"  torch.compile of the bare forward pass: {compiled}")
    elif compiled is not None:
        parts = [
            f"{m} eager {compiled[m]['eager']:.1f} ms, compiled {compiled[m]['compiled']:.1f} ms "
            f"(compiling took {compiled[f'{m}_compile_s']:.0f} s), the toolkit's grid point with "
            f"jit_compile=True {compiled[m]['point']:.1f} ms "
            f"(÷ compiled bare {compiled[m]['point/compiled']:.2f})"
            for m in MODELS
        ]
        print("  torch.compile of the bare forward pass: " + "; ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--calls", type=int, default=3, help=f"calls per timed run, at least {MIN_RUN_S} s"
    )
    parser.add_argument("--quick", action="store_true", help="1 repetition, 128 samples of 64")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--compile-timeout", type=float, default=60.0)
    parser.add_argument(
        "--threads", type=int, default=1, help="compute threads per backend (0: its default)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.reps, args.calls, args.n, args.batch = 1, 1, 128, 64
    if args.worker:
        if args.worker == "build":
            build_weights(args.folder)
            out = {}
        elif args.worker == "torch-compile":
            out = torch_compile_worker(args.folder, args)
        else:
            out = worker(args.worker, args.folder, args)
        print(json.dumps(out))
        return

    flags = ["--reps", str(args.reps), "--n", str(args.n), "--batch", str(args.batch)]
    flags += ["--threads", str(args.threads), "--calls", str(args.calls)]
    with tempfile.TemporaryDirectory() as folder:
        np.savez(os.path.join(folder, "data.npz"), **make_data(max(args.n, 512)))
        built = spawn("tensorflow", ["--worker", "build", "--folder", folder], 0)
        if isinstance(built, str):
            sys.exit(f"building the models on TensorFlow {built}")
        results = {}
        for backend in args.backends.split(","):
            print(f"{backend} ... (load {os.getloadavg()[0]:.2f})", flush=True)
            results[backend] = spawn(
                backend, ["--worker", backend, "--folder", folder, *flags], args.threads
            )
        compiled = None
        if "torch" in args.backends:
            # the timeout covers the import and the eager warm-up too
            argv = ["--worker", "torch-compile", "--folder", folder, *flags]
            compiled = spawn("torch", argv, args.threads, timeout=2 * args.compile_timeout + 60)
    print(
        f"{args.n} samples, batch {args.batch}, {args.reps} interleaved repetitions (medians), "
        f"{args.threads or 'default'} compute thread(s) per backend on {os.cpu_count()} shared "
        f"cores; load average after: {os.getloadavg()[0]:.2f}"
    )
    print_table(results, compiled)


if __name__ == "__main__":
    main()
