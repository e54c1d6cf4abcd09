"""Overhead benchmark: what every analysis costs beyond the model passes it makes.

For each public analysis the passes it makes are counted by the Objective (``Objective.passes``:
forward, gradient, Hessian-vector and Gauss-Newton-vector products; every Objective an analysis
builds for itself counts too, and a connect point's BatchNorm recomputation — a training-mode
forward pass outside the Objective — is counted as one of its own kind, "t", dearer than an
inference pass: BatchNorm computes the batch's moments). Its wall time is divided by Σ_kind count ×
the time of one bare pass of that kind over the same data, measured in the same process: plain
TensorFlow written directly on the model's variables (``tf.function``, no StatelessScope, no batch
loop) — the forward pass computing the loss and the number of correct predictions, the gradient with
one tape, the HVP with two tapes, the GGN product with a forward accumulator, the softmax
cross-entropy's own Hessian and one reverse pass, the training-mode pass as Keras's
``stateless_call(training=True)`` (which returns the new BatchNorm statistics instead of assigning
them). A surface point is also divided by a bare forward pass at w0 + a·d1 + b·d2 (the weights moved
in plain TensorFlow, then ``stateless_call``): the two multiply-adds over every weight are work that
any surface code does per point, and with 64 images they weigh against a short forward pass (with
2,000 images, ``benchmarks/surface_throughput.py``, a point costs 1.05–1.09 forward passes). The
bare passes are checked to agree with the Objective's first (loss, gradient, HVP, GGN product). A
ratio of 1.0 means the analysis costs its passes and nothing more. Two ratios per analysis:
``ratio`` divides by the bare passes' medians over the whole run; ``bracketed`` by the bare passes
of the same kinds timed immediately before and after each call (the mean of the two; after only, for
the first call; each the median of enough passes to fill half a second, at most 9), so that load
from other work on a shared machine falls on both terms alike.

Two models on the first 64 CIFAR-10 training images (``../shared/data/cifar10_10k.npz``, scaled
to [0, 1]; Gaussian noise if absent), one batch of 64, sparse categorical cross-entropy on
logits:

- ``cnn``: Conv(16)-BN-ReLU-pool-Conv(32)-BN-ReLU-pool-Dense(10), 12 k parameters;
- ``resnet50``: ``keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3),
  classes=10, classifier_activation=None)``, 23.6 M parameters.

Analyses run with small caps (each ratio is per pass, so caps change the time, not the ratio):
a surface point, a gradient, an HVP, a GGN product, Lanczos top-2, a Hutchinson trace, an SLQ
density, ε-sharpness (with SciPy's L-BFGS-B routine's own time shown apart: it is the method's
work, on n-vectors), worst-case sharpness ℓ2 / ℓ∞ / adaptive ℓ2, average-case sharpness (with
the time NumPy takes to draw its Gaussian perturbations alone shown apart),
m-sharpness (m = 16, the bare passes on 16 images; timed after one call that traces its shared
per-batch functions, whose one-off time is shown as "first call"), the tracker's probe (a
``SharpnessTracker`` on a 2-epoch fit of a copy of the model; the probes after the first), a
``connect`` point (its evaluations after the first, each timed inside one call of 9 points,
so the curve's set-up, the basis and the traces are not counted), per-layer curvature of two
layers, and the CLI's ``surface``, ``hessian``, ``sharpness`` and ``connect`` commands in
process (click's CliRunner) on the saved model and an ``.npz`` of the same images: each run at
two sizes, giving the marginal ratio per pass and the fixed start-up (loading the model and
data, building and tracing the Objective).

Like the other benchmarks (``_common.py``), TensorFlow runs with ``TF_ENABLE_ONEDNN_OPTS=0``
unless the variable is set. Each model runs in its own process. About 3 minutes for ``cnn`` and
15–25 for ``resnet50`` on a 2-core machine.

    .venv/bin/python benchmarks/overhead.py [--models cnn,resnet50] [--repeats 3] [--no-cli]
        [--only WORDS] [--json results.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

from _common import cifar_subset

import numpy as np

N, M = 64, 16  # images; m of m-sharpness
BRACKET_SECONDS = 0.5  # the least time of bare passes of one kind on each side of a call


# ----------------------------------------------------------------------------------- set-up
def build(name: str):
    import keras

    keras.utils.set_random_seed(0)
    if name == "resnet50":
        model = keras.applications.ResNet50(
            weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None
        )
    else:
        layers = []
        for filters in (16, 32):
            layers += [
                keras.layers.Conv2D(filters, 3, padding="same", use_bias=False),
                keras.layers.BatchNormalization(),
                keras.layers.ReLU(),
                keras.layers.MaxPooling2D(),
            ]
        model = keras.Sequential(
            [keras.Input((32, 32, 3)), *layers, keras.layers.Flatten(), keras.layers.Dense(10)]
        )
    model.compile(
        "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    return model


class Counting:
    """Every pass any Objective makes (and connect's BatchNorm passes), in one counter."""

    def __init__(self):
        from landscape import connectivity, objective

        self.counts: collections.Counter = collections.Counter()
        counts = self.counts
        original = objective.Objective._count_pass

        def count_pass(obj, kind):
            counts[kind] += 1
            original(obj, kind)

        objective.Objective._count_pass = count_pass
        bn = connectivity._Pair.bn_statistics

        def bn_statistics(pair, weights, batches):
            counts["train_forward"] += bool(pair.bn)
            return bn(pair, weights, batches)

        connectivity._Pair.bn_statistics = bn_statistics

    def snapshot(self) -> collections.Counter:
        return collections.Counter(self.counts)


def bare_passes(model):
    """{kind: fn(x, y, v)} of plain TensorFlow passes over one batch (see the module doc)."""
    import tensorflow as tf

    variables = [w.value for w in model.trainable_variables]  # the tf.Variables
    ce = tf.keras.losses.sparse_categorical_crossentropy

    def loss_of(x, y):
        logits = model(x, training=False)
        return tf.reduce_mean(ce(y, logits, from_logits=True)), logits

    @tf.function(reduce_retracing=True)
    def forward(x, y, v):
        loss, logits = loss_of(x, y)
        hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)
        return loss, tf.reduce_sum(hits)

    @tf.function(reduce_retracing=True)
    def gradient(x, y, v):
        with tf.GradientTape() as tape:
            loss, _ = loss_of(x, y)
        return tape.gradient(loss, variables)

    @tf.function(reduce_retracing=True)
    def hvp(x, y, v):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss, _ = loss_of(x, y)
            g = inner.gradient(loss, variables)
            gv = tf.add_n([tf.reduce_sum(a * b) for a, b in zip(g, v)])
        return outer.gradient(gv, variables)

    @tf.function(reduce_retracing=True)
    def ggn(x, y, v):
        with tf.GradientTape() as tape, tf.autodiff.ForwardAccumulator(variables, v) as acc:
            logits = model(x, training=False)
        jv = acc.jvp(logits)
        p = tf.nn.softmax(logits)
        n = tf.cast(tf.shape(logits)[0], logits.dtype)
        hu = (p * jv - p * tf.reduce_sum(p * jv, -1, keepdims=True)) / n
        return tape.gradient(logits, variables, output_gradients=hu)

    trainable, non_trainable = variables, [w.value for w in model.non_trainable_variables]

    @tf.function(reduce_retracing=True)
    def train_forward(x, y, v):  # BatchNorm on batch statistics, which it returns
        return model.stateless_call(trainable, non_trainable, x, training=True)

    @tf.function(reduce_retracing=True)
    def forward_at(x, y, v):  # the forward pass at w0 + a·v + b·v, as a surface point evaluates
        values = [w + 0.5 * d + 0.25 * d for w, d in zip(trainable, v)]
        logits = model.stateless_call(values, non_trainable, x, training=False)[0]
        return tf.reduce_mean(ce(y, logits, from_logits=True))

    return {"forward": forward, "gradient": gradient, "hvp": hvp, "ggn": ggn,
            "train_forward": train_forward, "forward_at": forward_at}  # fmt: skip


def median_seconds(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        out = fn()
        import tensorflow as tf

        tf.nest.map_structure(lambda t: t.numpy(), out)  # wait for the result
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Bare:
    """Bare pass costs per (kind, images), measured several times during the run."""

    def __init__(self, model, x, y, v):
        import tensorflow as tf

        self.fns = bare_passes(model)
        self.args = {n: (tf.constant(x[:n]), tf.constant(y[:n].astype("int32")), v) for n in (N, M)}
        self.samples: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
        for n in (N, M):  # trace
            for fn in self.fns.values():
                fn(*self.args[n])

    def measure(self, calls: int) -> None:
        for n in (N, M):
            for kind, fn in self.fns.items():
                args = self.args[n]
                self.samples[(kind, n)].append(median_seconds(lambda f=fn, a=args: f(*a), calls))

    def seconds(self, counts, n: int = N) -> float:
        return sum(c * statistics.median(self.samples[(k, n)]) for k, c in counts.items())

    def now(self, kinds, n: int, calls: int) -> dict[str, float]:
        """One bare pass of each kind in ``kinds`` timed now (median of ``calls``, or of as many
        as fill ``BRACKET_SECONDS`` for a short pass, at most 9: with a single forward pass of
        about 80 ms on each side a ResNet-50 surface point read 1.45 bracketed against 1.09 by
        the run's medians): the bracket around an analysis, so that the machine's load at that
        moment is in both terms."""
        args = self.args[n]
        out = {}
        for k in kinds:
            typical = statistics.median(self.samples[(k, n)]) if self.samples[(k, n)] else None
            many = calls if not typical else min(9, max(calls, int(BRACKET_SECONDS / typical)))
            out[k] = median_seconds(lambda f=self.fns[k], a=args: f(*a), many)
        return out


def check_agreement(obj, bare: Bare, v) -> dict[str, float]:
    """Largest relative differences of the Objective's passes from the bare ones."""

    def rel(a, b):
        a = np.concatenate([np.ravel(t) for t in a])
        b = np.concatenate([np.ravel(t) for t in b])
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    args = bare.args[N]
    loss, _ = bare.fns["forward"](*args)
    out = {"loss": abs(obj.evaluate()["loss"] / float(loss) - 1)}
    out["gradient"] = rel(obj.value_and_gradient()[1], bare.fns["gradient"](*args))
    out["hvp"] = rel(obj.hessian_vector_product(v), bare.fns["hvp"](*args))
    out["ggn"] = rel(obj.gauss_newton_vector_product(v), bare.fns["ggn"](*args))
    return out


# --------------------------------------------------------------------------------- analyses
def analyses(model, obj, x, y, v, name: str):
    """[(name, fn, bare size, traces on its first call)] of the in-process analyses."""

    import landscape

    small = name == "cnn"
    d1, d2 = (landscape.random_direction(model, seed=s) for s in (1, 2))
    basis = obj.basis([d1, d2])
    points = iter(np.random.default_rng(0).uniform(-1, 1, (10**6, 2)))
    iters = 30 if small else 10
    samples = 20 if small else 3

    def tracker_probe():
        return probe_times(model, x, y, small)

    def connect_points():
        return connect_marginal(model, x, y)

    def layer_curvature():
        weighted = [layer.name for layer in model.layers if layer.trainable_weights]
        groups = [weighted[0], weighted[-1]]
        landscape.layer_curvature(obj, groups, tol=1e-12, max_iter=iters, trace=True,
                                  trace_samples=samples, trace_tol=1e-12)  # fmt: skip

    def ball(norm, adaptive):
        return lambda: landscape.worst_case_sharpness(
            obj, 0.01, norm=norm, adaptive=adaptive, steps=iters // 2, seed=0
        )

    return [
        ("surface point", lambda: obj.evaluate_at(next(points), basis), N, False),
        ("gradient", lambda: obj.value_and_gradient(), N, False),
        ("Hessian-vector product", lambda: obj.hessian_vector_product(v), N, False),
        ("GGN-vector product", lambda: obj.gauss_newton_vector_product(v), N, False),
        (
            "Lanczos top-2",
            lambda: landscape.hessian_eigenvalues(obj, k=2, tol=1e-12, max_iter=iters, seed=0),
            N,
            False,
        ),  # fmt: skip
        (
            "trace (Hutchinson)",
            lambda: landscape.hessian_trace(
                obj, samples=samples, tol=1e-12, seed=0, method="hutchinson"
            ),
            N,
            False,
        ),  # fmt: skip
        (
            "SLQ density",
            lambda: landscape.hessian_spectrum(obj, steps=iters, runs=1, seed=0),
            N,
            False,
        ),  # fmt: skip
        (
            "ε-sharpness",
            lambda: landscape.epsilon_sharpness(obj, max_iter=iters // 2, seed=0),
            N,
            False,
        ),  # fmt: skip
        ("worst-case ℓ2", ball("l2", False), N, False),
        ("worst-case ℓ∞", ball("linf", False), N, False),
        ("worst-case adaptive ℓ2", ball("l2", True), N, False),
        (
            "average-case",
            lambda: landscape.average_sharpness(obj, 0.01, samples=samples, seed=0),
            N,
            False,
        ),  # fmt: skip
        (
            f"m-sharpness (m={M})",
            lambda: landscape.worst_case_sharpness(
                obj, 0.01, steps=iters // 2, batch_size=M, seed=0
            ),
            M,
            True,
        ),  # fmt: skip
        ("tracker probe", tracker_probe, N, False),
        ("connect point", connect_points, N, False),
        ("per-layer curvature (2 layers)", layer_curvature, N, False),
    ]


def copy_of(model, scale: float = 0.0, seed: int = 0):
    """A copy of ``model`` (weights perturbed by ``scale`` × Gaussian noise), compiled alike."""
    import keras

    twin = keras.models.clone_model(model)
    rng = np.random.default_rng(seed)
    twin.set_weights(
        [w + scale * rng.normal(size=w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
         for w in model.get_weights()]
    )  # fmt: skip
    twin.compile("sgd", model.loss, metrics=["accuracy"])
    return twin


def probe_times(model, x, y, small: bool):
    """(seconds, passes) of the tracker's probes after the first, on a 2-epoch fit of a copy."""
    import landscape

    twin = copy_of(model)
    tracker = landscape.SharpnessTracker((x, y), batch_size=N, max_iter=30 if small else 8)
    rows = []
    probe = tracker._probe

    def timed(**kwargs):
        before, start = COUNTING.snapshot(), time.perf_counter()
        out = probe(**kwargs)
        rows.append((time.perf_counter() - start, COUNTING.snapshot() - before))
        return out

    tracker._probe = timed
    twin.fit(x, y, batch_size=N, epochs=2, verbose=0, callbacks=[tracker])
    later = rows[1:]
    return sum(s for s, _ in later), sum((c for _, c in later), collections.Counter())


def connect_marginal(model, x, y):
    """(seconds, passes) of a ``connect`` call's evaluated points after its first (9 points:
    16 evaluations, 15 timed), timed around each evaluation inside the call."""
    import landscape
    from landscape import connectivity

    twin = copy_of(model, 0.01, seed=1)
    rows = []
    along = connectivity._Evaluator.along

    def timed(evaluator, *args):
        before, start = COUNTING.snapshot(), time.perf_counter()
        out = along(evaluator, *args)
        rows.append((time.perf_counter() - start, COUNTING.snapshot() - before))
        return out

    connectivity._Evaluator.along = timed
    try:
        landscape.connect(model, twin, (x, y), epochs=0, points=9, batch_size=N,
                          eval_batch_size=N)  # fmt: skip
    finally:
        connectivity._Evaluator.along = along
    later = rows[1:]  # the first builds the basis and traces the functions
    return sum(t for t, _ in later), sum((c for _, c in later), collections.Counter())


def run_analysis(fn, bare: Bare, size: int) -> tuple[float, collections.Counter, float]:
    """(seconds, passes, bare seconds) of one call; a tuple-returning fn reports its own."""
    seconds, counts = timed_analysis(fn)
    return seconds, counts, bare.seconds(counts, size)


def bracketed(fn, bare: Bare, size: int, kinds, calls: int) -> tuple[float, dict, float]:
    """(seconds, passes, bare seconds) of one call, the bare passes of ``kinds`` timed right
    before it and those it made right after it (the mean per kind where both were timed)."""
    pre = bare.now(kinds, size, calls)
    seconds, counts = timed_analysis(fn)
    post = bare.now(set(kinds) | set(counts), size, calls)
    each = {k: (pre[k] + post[k]) / 2 if k in pre else post[k] for k in post}
    return seconds, counts, sum(c * each[k] for k, c in counts.items())


def timed_analysis(fn) -> tuple[float, collections.Counter]:
    """(seconds, passes) of one call; a tuple-returning fn reports its own."""
    before, start = COUNTING.snapshot(), time.perf_counter()
    result = fn()
    seconds, counts = time.perf_counter() - start, COUNTING.snapshot() - before
    if (
        isinstance(result, tuple)
        and len(result) == 2
        and isinstance(result[1], collections.Counter)
    ):
        seconds, counts = result
    return seconds, counts


# ---------------------------------------------------------------------------------- the CLI
def cli_runs(model, x, y, directory: str, small: bool):
    """[(command, marginal ratio, start-up seconds, seconds of the larger run)]."""
    from click.testing import CliRunner

    from landscape.cli import main

    path = os.path.join(directory, "model.keras")
    twin_path = os.path.join(directory, "model2.keras")
    data = os.path.join(directory, "data.npz")
    model.save(path)
    copy_of(model, 0.01, seed=1).save(twin_path)
    np.savez(data, x_train=x, y_train=y, x_test=x[:M], y_test=y[:M])
    common = ["--data", data, "--batch-size", str(N)]
    out = os.path.join(directory, "out")
    sizes = (4, 10) if small else (3, 6)
    commands = {
        "landscape surface": lambda s: ["surface", path, *common, f"--x=-1:1:{s * 8 + 1}",
                                        "--test-samples", "0", "--out", f"{out}{s}.h5"],
        "landscape hessian": lambda s: ["hessian", path, *common, "--k", "1", "--tol", "1e-12",
                                        "--max-iter", str(s)],
        "landscape sharpness": lambda s: ["sharpness", path, *common, "--no-hessian",
                                          "--no-epsilon", "--steps", str(s),
                                          "--average-samples", str(s)],
        "landscape connect": lambda s: ["connect", path, twin_path, *common, "--epochs", "0",
                                        "--points", str(s), "--test-samples", "0"],
    }  # fmt: skip
    rows = []
    for name, args in commands.items():
        runs = []
        for s in sizes:
            before, start = COUNTING.snapshot(), time.perf_counter()
            result = CliRunner().invoke(main, args(s), catch_exceptions=False)
            assert result.exit_code == 0, result.output
            runs.append((time.perf_counter() - start, COUNTING.snapshot() - before))
        rows.append((name, runs))
    return rows


# ------------------------------------------------------------------------------------- a job
COUNTING: Counting | None = None


def job(name: str, repeats: int, cli: bool, only=()) -> dict:
    global COUNTING
    import keras

    import landscape

    COUNTING = Counting()
    x, y, source = cifar_subset(N)
    model = build(name)
    obj = landscape.Objective(model, (x, y), batch_size=N)
    rng = np.random.default_rng(0)
    v = [rng.normal(size=w.shape).astype("float32") for w in obj.trainable_variables]
    bare = Bare(model, x, y, [keras.ops.convert_to_tensor(a) for a in v])
    agreement = check_agreement(obj, bare, v)
    calls = 5 if name == "cnn" else 2
    bracket_calls = 3 if name == "cnn" else 1
    bare.measure(calls)
    rows = []
    for i, (label, fn, size, traces) in enumerate(analyses(model, obj, x, y, v, name)):
        if only and not any(word in label for word in only):
            continue
        try:
            first, counts = timed_analysis(fn) if traces else (None, {})
            ROUTINE[0] = 0.0
            close = []
            for _ in range(repeats):  # the kinds of passes the last call made, timed around it
                close.append(bracketed(fn, bare, size, sorted(counts), bracket_calls))
                counts = close[-1][1]
            runs = [(s, c, bare.seconds(c, size)) for s, c, _ in close]
        except Exception as error:  # noqa: BLE001 - a benchmark row says what failed
            print(f"{label}: failed: {error}", flush=True)
            rows.append({"analysis": label, "error": str(error)})
            continue
        ratios = [s / b for s, _, b in runs]
        seconds, counts, base = runs[len(runs) // 2]
        rows.append({"analysis": label, "passes": dict(counts), "seconds": seconds,
                     "bare_seconds": base, "ratio": statistics.median(ratios),
                     "bracketed_ratio": statistics.median(s / b for s, _, b in close),
                     "first_call_seconds": first})  # fmt: skip
        if label == "ε-sharpness":
            rows[-1]["own_work_seconds"] = ROUTINE[0] / max(1, repeats)
            rows[-1]["own_work"] = "SciPy's L-BFGS-B routine"
        draws = {
            "average-case": counts["forward"] - 1,
            "worst-case ℓ2": 1,
            "worst-case adaptive ℓ2": 1,
            f"m-sharpness (m={M})": N // M,
        }.get(label)
        if draws:  # the random perturbations / starts of n numbers, timed alone
            rng = np.random.default_rng(0)
            start = time.perf_counter()
            for _ in range(draws):
                rng.standard_normal(obj.flat.n)
            rows[-1]["own_work_seconds"] = time.perf_counter() - start
            rows[-1]["own_work"] = "NumPy's Gaussian draws"
        print(f"{label}: {rows[-1]}", flush=True)
        if i % 3 == 2:
            bare.measure(calls)
    cli_rows = []
    if cli:
        with tempfile.TemporaryDirectory() as directory:
            for label, ((t1, c1), (t2, c2)) in cli_runs(model, x, y, directory, name == "cnn"):
                b1, b2 = bare.seconds(c1), bare.seconds(c2)
                marginal = (t2 - t1) / (b2 - b1) if b2 > b1 else float("nan")
                cli_rows.append({"command": label, "passes": dict(c2), "seconds": t2,
                                 "marginal_ratio": marginal, "startup_seconds": t1 - b1 * marginal,
                                 "ratio": t2 / b2})  # fmt: skip
        bare.measure(calls)
    bare_ms = {f"{k}/{n}": 1e3 * statistics.median(s) for (k, n), s in bare.samples.items()}
    return {"model": name, "parameters": int(model.count_params()), "data": source,
            "agreement": agreement, "bare_ms": bare_ms, "rows": rows, "cli": cli_rows}  # fmt: skip


ROUTINE = [0.0]  # seconds in SciPy's L-BFGS-B routine (ε-sharpness)


def _time_routine() -> None:
    from landscape import _box_lbfgs

    routine = _box_lbfgs._routine
    if routine is None:
        return

    class Timed:
        @staticmethod
        def setulb(*args):
            start = time.perf_counter()
            try:
                return routine.setulb(*args)
            finally:
                ROUTINE[0] += time.perf_counter() - start

    _box_lbfgs._routine = Timed


def in_fresh_process(name: str, repeats: int, cli: bool, only=()) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_job_with_timer, (name, repeats, cli, only))


def _job_with_timer(name, repeats, cli, only):
    _time_routine()
    return job(name, repeats, cli, only)


def _pass_counts(passes: dict) -> str:
    """forward/gradient/HVP/GGN counts, and "+N t" for training-mode forward passes."""
    counts = "/".join(str(passes.get(k, 0)) for k in ("forward", "gradient", "hvp", "ggn"))
    return counts + (f" +{passes['train_forward']} t" if passes.get("train_forward") else "")


def show(result: dict) -> None:
    print(f"\n{result['model']}: {result['parameters']:,} parameters, {result['data']}, "
          f"{N} images in one batch")  # fmt: skip
    print("bare passes (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in result["bare_ms"].items()))
    print("Objective vs bare: " + ", ".join(f"{k} {v:.1e}" for k, v in result["agreement"].items()))
    print(
        f"{'analysis':34s} {'passes (f/g/h/G)':>18s} {'seconds':>9s} {'bare s':>9s} {'ratio':>6s} "
        f"{'bracketed':>9s}"
    )
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['analysis']:34s} failed: {r['error']}")
            continue
        p = r["passes"]
        counts = _pass_counts(p)
        extra = ""
        if r.get("first_call_seconds") is not None:
            extra = f"  (first call {r['first_call_seconds']:.2f} s)"
        if r["analysis"] == "surface point" and "forward_at/64" in result["bare_ms"]:
            at = r["seconds"] / (result["bare_ms"]["forward_at/64"] / 1e3)
            extra = f"  (÷ a bare forward pass at w0 + a·d1 + b·d2: {at:.2f})"
        if "own_work_seconds" in r:
            own = (r["seconds"] - r["own_work_seconds"]) / r["bare_seconds"]
            extra = f"  ({r['own_work']} {r['own_work_seconds']:.2f} s; without it {own:.2f})"
        print(f"{r['analysis']:34s} {counts:>18s} {r['seconds']:9.3f} {r['bare_seconds']:9.3f} "
              f"{r['ratio']:6.2f} {r['bracketed_ratio']:9.2f}{extra}")  # fmt: skip
    for r in result["cli"]:
        p = r["passes"]
        counts = _pass_counts(p)
        print(f"{r['command']:34s} {counts:>18s} {r['seconds']:9.3f} "
              f"marginal ratio {r['marginal_ratio']:.2f}, start-up {r['startup_seconds']:.1f} s, "
              f"end to end {r['ratio']:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cnn,resnet50")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed calls per analysis (default 3 for cnn, 1 for resnet50)",
    )
    parser.add_argument("--no-cli", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated words: run the analyses "
        "whose names contain one of them (e.g. 'sharpness,Lanczos')",
    )
    args = parser.parse_args()
    results = []
    for name in args.models.split(","):
        repeats = args.repeats or (3 if name == "cnn" else 1)
        start = time.perf_counter()
        only = tuple(w for w in args.only.split(",") if w)
        result = in_fresh_process(name, repeats, not args.no_cli, only)
        result["total_seconds"] = time.perf_counter() - start
        show(result)
        print(f"({name}: {result['total_seconds']:.0f} s in all)")
        results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
