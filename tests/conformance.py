"""The invariants the toolkit must hold on every model Keras can build (tests/model_grammar.py).

``run_case(case)`` builds the case's model and checks, each against a reference that does not
share the toolkit's code path:

(a) ``Objective(...).evaluate()`` equals ``model.evaluate`` on the whole data in one batch, or the
    Objective refuses in one sentence;
(b) every trainable float variable (``keras.backend.is_float_dtype``, bfloat16 included) is in
    ``obj.trainable_variables``, or the refusal names it;
(c) ``obj.evaluate_at([a, b], [d1, d2])`` equals assigning w0 + a d1 + b d2 and ``model.evaluate``;
(d) float64 models: ``hessian_vector_product(v)`` equals a central difference of the Objective's
    float64 gradients at w0 ± h v (no second derivative of TensorFlow's in the reference);
(e) ``random_direction(norm="filter", ignore=None)``: each filter's norm equals the weights'
    (``filter_axes``), and the axes of known kernels are the DESIGN.md conventions;
(f) the model's weights and optimizer state are bit-identical after (a)–(e);
(g) one SAM step through ``fit`` on a copy equals the hand rule in NumPy (ε = ρ g/‖g‖,
    w ← w − lr ∇L(w + ε)), gradients from a GradientTape at assigned weights;
(h) every refusal is one sentence (a single-line ValueError).

Each check returns None or a one-line failure; ``Result`` records which ran, which were skipped
and why, and the failures as ``Failure(check, kind, message)``. ``known_fault`` says which
failures are faults already being fixed (tests/test_conformance.py xfails exactly those).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import keras
import numpy as np
from model_grammar import FLOAT64, ON_TF, Case, compile_case

import landscape
import sam
from landscape import directions as _directions

CHECKS = "abcdefgh"
MAX_HVP_PARAMS = 400  # (d) runs on tiny float64 models only
MAX_REFUSAL_CHARS = 400


@dataclass
class Failure:
    check: str
    kind: str
    message: str

    def line(self) -> str:
        return f"({self.check}) {self.kind}: {self.message}"


@dataclass
class Result:
    case: Case
    ran: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    invalid: str | None = None  # Keras itself cannot build or evaluate the case
    refusal: str | None = None
    refusals: dict[str, str] = field(default_factory=dict)  # check -> one-sentence refusal
    hvp_error: float | None = None  # (d) off TensorFlow: ‖H v − reference‖ / ‖H‖_F
    seconds: float = 0.0

    def fail(self, check: str, kind: str, message: str) -> None:
        self.failures.append(Failure(check, kind, " ".join(str(message).split())[:300]))


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _tolerance(case: Case) -> float:
    if case.exact64:
        return 1e-10
    return 3e-2 if case.mixed else 1e-5


def _snapshot(model) -> list[bytes]:
    variables = list(model.variables) + list(getattr(model.optimizer, "variables", []))
    return [keras.ops.convert_to_numpy(v.value).tobytes() for v in variables]


def _keras_loss(model, data) -> float:
    out = model.evaluate(
        data.evaluate_x(),
        data.y,
        sample_weight=data.sample_weight,
        batch_size=len(data.sample_weight if data.sample_weight is not None else _n(data)),
        verbose=0,
        return_dict=True,
    )
    return float(out["loss"])


def _n(data):
    return np.arange(len(keras.tree.flatten(data.x)[0]))


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    useful = [
        line for line in lines if "Graph execution error" not in line and "Detected at" not in line
    ]
    return (useful or lines or [""])[0]


def one_sentence(message: str) -> bool:
    """A refusal is one line, not a dump, and ends as a sentence."""
    text = message.strip()
    return "\n" not in text and 0 < len(text) <= MAX_REFUSAL_CHARS


# ------------------------------------------------------------------------------- the checks
def check_objective(res: Result, model, data, ref: float):
    """(a), (b), (h): build the Objective; returns it, or None after a refusal or a crash."""
    case = res.case
    try:
        obj = landscape.Objective(
            model, data.for_objective(), batch_size=case.batch_size, regularization=True
        )
    except ValueError as error:
        res.refusal = str(error)
        res.ran += ["h"]
        if not one_sentence(str(error)):
            lines = str(error).count("\n") + 1
            res.fail("h", "refusal-not-one-sentence", f"{lines} lines: {str(error)[:200]}")
        _check_named(res, model, None, str(error))
        return None
    except Exception as error:  # noqa: BLE001 (any other type is the failure)
        res.fail("a", f"crash-{type(error).__name__}", _first_line(error))
        return None
    res.ran += ["a", "b"]
    try:
        # a mixed-precision model is analysed in float32 by default (documented); Keras
        # evaluates it in float16/bfloat16, so the comparison is of its own arithmetic
        ours = (obj.with_precision("model") if case.mixed else obj).evaluate()["loss"]
    except Exception as error:  # noqa: BLE001 (built, then crashed: the failure)
        res.fail("a", f"evaluate-crash-{type(error).__name__}", _first_line(error))
        return None
    if not _rel(ours, ref) <= _tolerance(case) and not (np.isnan(ours) and np.isnan(ref)):
        res.fail(
            "a", "objective-vs-evaluate", f"Objective {ours:.10g} vs model.evaluate {ref:.10g}"
        )
    _check_named(res, model, obj, None)
    return obj


def _check_named(res: Result, model, obj, refusal: str | None) -> None:
    """(b): every trainable float variable is covered, or the refusal names it."""
    covered = set() if obj is None else {id(v) for v in obj.trainable_variables}
    for v in model.trainable_variables:
        if not keras.backend.is_float_dtype(v.dtype) or id(v) in covered:
            continue
        if refusal is not None and (v.path in refusal or v.path.split("/")[0] in refusal):
            continue
        if refusal is not None and obj is None:
            continue  # a refusal for another reason: nothing was analysed
        res.fail("b", "variable-left-out", f"{v.path} ({keras.backend.standardize_dtype(v.dtype)})")


def _directions_pair(model, case):
    include = "all" if case.seed % 3 == 0 else "trainable"
    ignore = None if case.seed % 2 else "biasbn"
    return [
        landscape.random_direction(model, norm="filter", ignore=ignore, seed=s, include=include)
        for s in (1, 2)
    ], include


def check_surface_point(res: Result, model, data, obj) -> None:
    """(c): evaluate_at([a, b], [d1, d2]) against assignment + model.evaluate."""
    case = res.case
    (d1, d2), include = _directions_pair(model, case)
    a, b = 0.3, -0.2
    ours = (obj.with_precision("model") if case.mixed else obj).evaluate_at([a, b], [d1, d2])
    ours = ours["loss"]
    # copies: a variable's NumPy view may share the buffer that assign updates in place
    saved = [np.array(keras.ops.convert_to_numpy(v.value)) for v in obj.variables]
    arrays = zip(obj.variables, saved, d1.aligned(obj.variables), d2.aligned(obj.variables))
    try:
        for v, w, x, y in arrays:
            v.assign((w.astype(np.float64) + a * x.astype(np.float64) + b * y).astype(w.dtype))
        _finalize(model)  # as Keras does after loading weights: cached state from the variables
        ref = _keras_loss(model, data)
    finally:
        for v, w in zip(obj.variables, saved):
            v.assign(w)
        _finalize(model)
    all64 = FLOAT64 and all(
        keras.backend.standardize_dtype(v.dtype) == "float64" for v in obj.variables
    )
    tol = 1e-10 if all64 else (3e-2 if case.mixed else 1e-4)
    if not _rel(ours, ref) <= tol and not (np.isnan(ours) and np.isnan(ref)):
        msg = f"evaluate_at {ours:.10g} vs assign+evaluate {ref:.10g} (include={include})"
        res.fail("c", "surface-point", msg)


def _finalize(model) -> None:
    """``finalize_state()`` of every layer that caches state computed from its variables (an
    adapted ``Normalization``'s mean and variance), as ``load_weights`` calls it; and a fresh
    test function, since the traced one holds the cached tensors as constants."""
    cached = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if hasattr(layer, "finalize_state") and layer.built
    ]
    for layer in cached:
        layer.finalize_state()
    if cached:
        model.make_test_function(force=True)


def check_hvp(res: Result, obj) -> None:
    """(d): H v against (∇L(w0 + h v) − ∇L(w0 − h v)) / 2h of the Objective's float64 gradients."""
    tv = list(obj.trainable_variables)
    rng = np.random.default_rng(res.case.seed)
    v = [rng.standard_normal(tuple(t.shape)) for t in tv]
    scale = np.sqrt(sum(float(np.sum(x * x)) for x in v))
    v = [x / scale for x in v]
    # float64 arithmetic throughout (float32 variables beside float64 ones, e.g. LoRA factors,
    # would leave the finite difference float32-noisy); the mixed-dtype HVP has its own test
    obj = obj.with_precision("float64")
    hv = [keras.ops.convert_to_numpy(t).astype(np.float64) for t in obj.hessian_vector_product(v)]
    h = 1e-5
    index = {id(t): i for i, t in enumerate(tv)}

    def grad(step):
        offsets = [
            step * v[index[id(t)]] if id(t) in index else np.zeros(tuple(t.shape))
            for t in obj.variables
        ]
        _, g = obj.value_and_gradient(offsets)
        return [keras.ops.convert_to_numpy(x).astype(np.float64) for x in g]

    def difference(step):
        return [(p - m) / (2 * step) for p, m in zip(grad(step), grad(-step))]

    def norm(parts):
        return np.sqrt(sum(float(np.sum(p * p)) for p in parts))

    fd, fd4 = difference(h), difference(h / 4)
    size = norm(fd)
    if not norm([a - b for a, b in zip(fd, fd4)]) <= 1e-4 * size + 1e-9:
        # the two differences disagree: a kink within h of w0 (hinge, ReLU, max), where the
        # gradient jumps and no finite difference approximates H v
        res.skipped["d"] = "the loss is not smooth within the finite-difference step"
        return
    err = norm([x - y for x, y in zip(hv, fd)])
    if not err <= 1e-5 * size + 1e-9:
        res.fail("d", "hvp-vs-finite-difference", f"relative error {err / max(size, 1e-300):.3g}")


def _loss_at(model, data, variables, values):
    """The compiled loss at ``values`` for ``variables`` (the others as they are), written here
    without the toolkit: one batch of the whole data, inference mode, ``model.compute_loss``
    inside a ``keras.StatelessScope`` that collects the forward pass's ``add_loss`` terms (the
    weight penalties are read from the scope's values), as Keras's own test step does."""
    tensors = keras.tree.map_structure(keras.ops.convert_to_tensor, (data.x, data.y))
    x, y = tensors
    w = None if data.sample_weight is None else keras.ops.convert_to_tensor(data.sample_weight)
    with keras.StatelessScope(state_mapping=list(zip(variables, values)), collect_losses=True):
        y_pred = model(x, training=False)
        return model.compute_loss(x, y, y_pred, w, training=False)


def _reference_hvp(model, data, variables, vector, mode: str) -> tuple[float, np.ndarray, str]:
    """``(L(w0), ∇²L(w0) v, dtype)`` for the loss of ``_loss_at`` over the flattened
    ``variables``, by the backend's own autodiff on the route the toolkit's ``mode`` does not
    take (its backward-over-backward checked by forward over reverse, and the reverse), in
    float64 where every variable is float64 and the backend computes in it, else float32."""
    dtypes = [keras.backend.standardize_dtype(v.dtype) for v in variables]
    wide = "float64" if FLOAT64 and set(dtypes) == {"float64"} else "float32"
    shapes = [tuple(v.shape) for v in variables]
    ends = np.cumsum([int(np.prod(s)) for s in shapes])
    w0 = np.concatenate(
        [keras.ops.convert_to_numpy(v.value).astype(wide).ravel() for v in variables]
    )
    vec = np.concatenate([x.ravel() for x in vector]).astype(wide)

    def loss(flat):
        starts = [0, *ends[:-1]]
        parts = [
            keras.ops.cast(keras.ops.reshape(flat[a:b], s), d)
            for a, b, s, d in zip(starts, ends, shapes, dtypes)
        ]
        return keras.ops.cast(_loss_at(model, data, variables, parts), wide)

    forward = mode == "backward_over_backward"
    flat, tangent = keras.ops.convert_to_tensor(w0), keras.ops.convert_to_tensor(vec)
    if keras.backend.backend() == "jax":
        import jax

        grad = jax.grad(loss)

        @jax.jit
        def product(p, t):
            if forward:
                return loss(p), jax.jvp(grad, (p,), (t,))[1]
            return loss(p), jax.grad(lambda q: grad(q) @ t)(p)

        value, hv = product(flat, tangent)
    else:
        import torch

        if forward:
            from torch.func import grad, jvp

            with torch.no_grad():
                value = loss(flat)
            _, hv = jvp(grad(loss), (flat,), (tangent,))
        else:
            flat.requires_grad_(True)
            value = loss(flat)
            (g,) = torch.autograd.grad(value, flat, create_graph=True)
            (hv,) = torch.autograd.grad(g @ tangent, flat)
            value = value.detach()
    to_numpy = keras.ops.convert_to_numpy
    return float(to_numpy(value)), np.asarray(to_numpy(hv), np.float64), wide


# float32 (d) off TensorFlow: the toolkit's H v (per-batch float32 sums, float64 across batches)
# and the dense Hessian (one float32 batch) round differently; each entry's error is a few ulps
# of the largest terms summed into it, so the error is measured against ‖H‖_F and allowed a
# thousand float32 ulps of it. A wrong weight, term or factor is an O(‖H‖) error.
HVP_TOL32 = 1000 * float(np.finfo(np.float32).eps)
HVP_TOL64 = 1e-9


def check_hvp_autodiff(res: Result, model, data, obj) -> None:
    """(d) off TensorFlow: H v against the dense Hessian of the loss written here (``_loss_at``)
    and differentiated by the backend's own autodiff (float64 is refused off TensorFlow, so the
    finite difference of float64 gradients of ``check_hvp`` is not available)."""
    tv = list(obj.trainable_variables)
    rng = np.random.default_rng(res.case.seed)
    v = [rng.standard_normal(tuple(t.shape)) for t in tv]
    scale = np.sqrt(sum(float(np.sum(x * x)) for x in v))
    v = [x / scale for x in v]
    # both of the toolkit's routes, by the seed's parity
    mode = "forward_over_backward" if res.case.seed % 2 else "backward_over_backward"
    hv = obj.hessian_vector_product(v, mode=mode)
    hv = np.concatenate([keras.ops.convert_to_numpy(t).astype(np.float64).ravel() for t in hv])
    other = {"forward_over_backward": "backward_over_backward"}.get(mode, "forward_over_backward")
    try:
        value, exact, dtype = _reference_hvp(model, data, tv, v, mode)
    except Exception:  # noqa: BLE001 (the backend's other route cannot: take the toolkit's)
        try:
            value, exact, dtype = _reference_hvp(model, data, tv, v, other)
        except Exception as error:  # noqa: BLE001 (no reference at all: nothing to compare)
            res.skipped["d"] = f"no second derivative on this backend: {_first_line(error)}"
            return
    ours = obj.evaluate()["loss"]
    tol = HVP_TOL64 if dtype == "float64" else HVP_TOL32
    if not _rel(value, ours) <= tol:
        # the reference's loss is not the Objective's: the harness's reference is wrong
        res.fail("d", "hessian-reference-loss", f"reference {value:.10g} vs Objective {ours:.10g}")
        return
    size = float(np.linalg.norm(exact))
    err = float(np.linalg.norm(hv - exact))
    res.hvp_error = err / max(size, 1e-300)
    if not err <= tol * size + 1e-12:
        msg = f"relative error {err / max(size, 1e-300):.3g} ({mode}, {dtype})"
        res.fail("d", "hvp-vs-autodiff", msg)


# Independent statement of DESIGN.md's filter conventions for the kernels whose rule is settled.
def _expected_axes(layer, variable) -> tuple | None | bool:
    ndim, name = len(variable.shape), variable.path.split("/")[-1]
    if name in ("bias", "gamma", "beta", "moving_mean", "moving_variance"):
        return None
    if isinstance(layer, keras.layers.Conv1DTranspose | keras.layers.Conv2DTranspose):
        return (ndim - 2,) if name == "kernel" else False
    if type(layer) in (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D):
        return (ndim - 1,) if name == "kernel" else False
    if isinstance(layer, keras.layers.DepthwiseConv2D) and name == "kernel":
        return (ndim - 2, ndim - 1)
    if type(layer) is keras.layers.Embedding and name == "embeddings":
        return (0,)
    return False  # no settled expectation


def _per_filter_norms(a: np.ndarray, axes) -> np.ndarray:
    a = a.astype(np.float64)
    if axes is None:
        return np.array([np.linalg.norm(a)])
    rest = tuple(i for i in range(a.ndim) if i not in axes)
    return np.sqrt(np.sum(a * a, axis=rest)).ravel()


def check_filter_norms(res: Result, model) -> None:
    """(e): per filter, ‖d‖ = ‖w‖; known kernels' axes as DESIGN.md states them."""
    d = landscape.random_direction(model, norm="filter", ignore=None, seed=res.case.seed)
    owners = _directions.variable_owners(model)
    variables = _directions.float_variables(model, "trainable")
    for key, v in zip(variables.paths, variables):
        if key not in d.arrays:
            res.fail("e", "direction-misses-variable", key)
            continue
        layer = owners.get(id(v))
        axes = landscape.filter_axes(layer, v)
        expected = _expected_axes(layer, v)
        if expected is not False and expected != (None if axes is None else tuple(axes)):
            res.fail("e", "filter-axes-rule", f"{key}: {axes} where DESIGN.md says {expected}")
        w = keras.ops.convert_to_numpy(v.value)
        nd, nw = _per_filter_norms(d.arrays[key], axes), _per_filter_norms(w, axes)
        tol = 1e-7 if res.case.exact64 else 1e-2 if "16" in str(w.dtype) else 1e-5
        if not np.allclose(nd, nw, rtol=tol, atol=1e-12):
            worst = float(np.max(np.abs(nd - nw) / np.maximum(nw, 1e-12)))
            res.fail("e", "filter-norm", f"{key}: per-filter norms differ (rel {worst:.3g})")


SAM_LR, SAM_RHO = 0.1, 0.05


def _sample_weights(data) -> np.ndarray | None:
    """Sample weights as fit makes them (class_weight → weight of each sample's class)."""
    if data.class_weight is None:
        return data.sample_weight
    labels = np.asarray(data.y).reshape(len(np.asarray(data.y)), -1)[:, 0].astype(int)
    return np.array([data.class_weight[c] for c in labels], np.float32)


def _tensor(t):
    import tensorflow as tf  # (g) runs on the TensorFlow backend only

    return t if isinstance(t, tf.SparseTensor) else tf.convert_to_tensor(t)


def _tape_gradient(model, data, weights) -> list[np.ndarray]:
    """∇L at the model's current weights: Keras's own loss, training mode, through a tape."""
    import tensorflow as tf  # (g) runs on the TensorFlow backend only

    x = tf.nest.map_structure(_tensor, data.evaluate_x())  # no mixed nests of arrays/tensors
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(x=x, y=data.y, y_pred=y_pred, sample_weight=weights)
    grads = tape.gradient(loss, model.trainable_variables)
    return [
        np.zeros(tuple(v.shape)) if g is None else keras.ops.convert_to_numpy(g).astype(np.float64)
        for g, v in zip(grads, model.trainable_variables)
    ]


def check_sam_step(res: Result, model, data) -> None:
    """(g): one SAM step through fit on a copy against ε = ρ g/‖g‖, w ← w − lr ∇L(w + ε)."""
    case = res.case
    copy, _ = case.build()
    copy.set_weights(model.get_weights())
    state = [np.array(keras.ops.convert_to_numpy(v.value)) for v in copy.variables]
    tvars = copy.trainable_variables
    w0 = [keras.ops.convert_to_numpy(v.value).astype(np.float64) for v in tvars]
    weights = _sample_weights(data)
    g = _tape_gradient(copy, data, weights)
    norm = np.sqrt(sum(float(np.sum(x * x)) for x in g))
    for v, w, gi in zip(tvars, w0, g):
        v.assign(
            (w + SAM_RHO * gi / (norm + 1e-12)).astype(keras.backend.standardize_dtype(v.dtype))
        )
    g2 = _tape_gradient(copy, data, weights)
    expected = [w - SAM_LR * gi for w, gi in zip(w0, g2)]
    for v, s in zip(copy.variables, state):
        v.assign(s)
    compile_case(case, copy, sam.SAM(keras.optimizers.SGD(SAM_LR), rho=SAM_RHO))
    copy.train_step = lambda batch: sam.sam_train_step(copy, batch)
    copy.fit(
        data.evaluate_x(),
        data.y,
        sample_weight=data.sample_weight,
        class_weight=data.class_weight,
        batch_size=case.n,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    got = [keras.ops.convert_to_numpy(v.value).astype(np.float64) for v in tvars]
    step = np.sqrt(sum(float(np.sum((e - w) ** 2)) for e, w in zip(expected, w0)))
    err = np.sqrt(sum(float(np.sum((a - e) ** 2)) for a, e in zip(got, expected)))
    tol = 1e-8 if case.float64 else (3e-2 if case.mixed else 1e-4)
    ulp = sum(
        float(np.finfo(np.float32).eps if "bfloat16" not in str(v.dtype) else 2**-7)
        * np.linalg.norm(e)
        for v, e in zip(tvars, expected)
    )
    if not err <= tol * step + ulp + 1e-7:
        worst = max(zip(tvars, got, expected), key=lambda t: float(np.max(np.abs(t[1] - t[2]))))[
            0
        ].path
        res.fail("g", "sam-step-vs-hand-rule", f"|Δ| {err:.3g} vs step {step:.3g} (worst {worst})")


# ---------------------------------------------------------------------------------- a case
def _guarded(res: Result, check: str, fn, *args) -> None:
    try:
        fn(res, *args)
        if check not in res.skipped:
            res.ran.append(check)
    except ValueError as error:
        res.ran.append(check)
        if not one_sentence(str(error)):
            res.fail("h", "refusal-not-one-sentence", f"in ({check}): {str(error)[:200]}")
        else:  # a one-sentence refusal is an allowed outcome; the long profile lists them all
            res.refusals[check] = str(error)
    except Exception as error:  # noqa: BLE001 (a crash is what this reports)
        res.ran.append(check)
        res.fail(check, f"crash-{type(error).__name__}", _first_line(error))


def _checks_after_objective(res: Result, model, data, obj) -> None:
    case = res.case
    if any(f.check == "a" for f in res.failures):
        res.skipped["c"] = "(a) failed"
    else:
        _guarded(res, "c", check_surface_point, model, data, obj)
    n_params = sum(int(np.prod(v.shape)) for v in obj.trainable_variables)
    if not ON_TF:
        _hvp_off_tensorflow(res, model, data, obj, n_params)
    elif not case.float64:
        res.skipped["d"] = "not float64"
    elif n_params > MAX_HVP_PARAMS:
        res.skipped["d"] = f"{n_params} parameters"
    else:
        _guarded(res, "d", check_hvp, obj)


def _hvp_off_tensorflow(res: Result, model, data, obj, n_params: int) -> None:
    if res.case.mixed:
        res.skipped["d"] = "mixed precision"
    elif res.case.policy == "int8":
        # Keras's int8 layers differentiate through a custom (straight-through) gradient: no
        # Hessian exists, and JAX's two routes differ by O(1) (long jax profile, seeds 106, 113)
        res.skipped["d"] = "int8 layers have a custom gradient, not a second derivative"
    elif n_params > MAX_HVP_PARAMS:
        res.skipped["d"] = f"{n_params} parameters"
    else:
        _guarded(res, "d", check_hvp_autodiff, model, data, obj)


def run_case(case: Case, *, sam_step: bool = True) -> Result:
    """Build ``case`` and run every check that applies to it."""
    res, start = Result(case), time.perf_counter()
    with case.scope():
        try:
            model, data = case.build()
            ref = _keras_loss(model, data)
        except Exception as error:  # noqa: BLE001 (Keras cannot run it: not a toolkit case)
            res.invalid = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            return res
        before = _snapshot(model)
        obj = check_objective(res, model, data, ref)
        if obj is not None:
            _checks_after_objective(res, model, data, obj)
        else:
            res.skipped.update(c="no Objective", d="no Objective")
        _guarded(res, "e", check_filter_norms, model)
        res.ran.append("f")
        if _snapshot(model) != before:
            res.fail("f", "model-state-changed", "weights or optimizer state changed")
        if not ON_TF:
            res.skipped["g"] = "SAM runs on the TensorFlow backend only in this version"
        elif not sam_step or "dropout" in case.extras or case.policy == "mixed_float16":
            # mixed_float16: dynamic loss scaling may skip the first step (overflow), by design
            res.skipped["g"] = "not asked" if not sam_step else "dropout or loss scaling"
        elif case.weighting == "class" and case.per_step:
            # Keras's fit cannot apply class_weight to per-step targets (a TypeError)
            res.skipped["g"] = "class weights on per-step targets: Keras's fit refuses them"
        elif case.body == "spectral":
            # SpectralNormalization assigns its wrapped kernel in every training-mode call, so
            # neither fit's step nor the tape reference starts from the weights w
            res.skipped["g"] = "a training-mode call writes a trainable kernel"
        else:
            _guarded(res, "g", check_sam_step, model, data)
    res.seconds = time.perf_counter() - start
    return res


# ------------------------------------------------------------------ faults being fixed now
# kind -> (reason, predicate(case, failure)): a fault found and not yet fixed, whose failures
# tests/test_conformance.py xfails (a case xfails only when every failure it has matches one).
# Every fault found on TensorFlow is fixed and has a named regression test
# (tests/test_exactness.py, tests/test_second_derivatives.py); off TensorFlow one is open.
KNOWN_FAULTS: dict = {}


def known_fault(case: Case, failure: Failure) -> str | None:
    """The KNOWN_FAULTS kind that explains ``failure``, or None."""
    for kind, (_, matches) in KNOWN_FAULTS.items():
        if matches(case, failure):
            return kind
    return None
