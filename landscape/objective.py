"""The loss as a function of the weights: the one evaluator of ``landscape``.

``Objective(model, data)`` evaluates, for an offset δ aligned with the model's variables, the loss
the model is compiled with — exactly as ``model.evaluate`` computes it — over the whole data set:

    L(w0 + δ) = Σₖ λₖ · Nₖ / Dₖ,    Nₖ = Σ_batches Σᵢ sᵢ mᵢ ℓₖ(f(xᵢ; w0 + δ), yᵢ),

one term per compiled output loss ℓₖ with its ``loss_weights`` entry λₖ, its sample weights s
and its mask m (Keras masks propagated to the output, ``ignore_class``), and Dₖ the normalizer of
the loss's reduction summed over every batch: the number of unmasked entries for
``"sum_over_batch_size"`` (Keras's default), Σ sᵢ mᵢ for ``"mean_with_sample_weight"``. This is
the weighted mean over the whole data set, accumulated in float64; it equals ``model.evaluate``
with the whole data in one batch. With several batches Keras averages the per-batch losses
weighted by batch size, which differs when the normalizer varies between batches (masks,
``mean_with_sample_weight``) and is the same otherwise.

The model runs in inference mode (BatchNorm moving statistics, no dropout), in the analysis
precision (``precision="auto"``: float32 for a mixed-precision model, else its own dtype; or
float32, float64, or the model's own float16 on request), recorded as ``Objective.precision``.
The offset is applied through ``keras.StatelessScope``: the model's variables are never
assigned, so they stay bit-identical, also when evaluation raises. One compiled batch loop
(``tf.function`` per data split and entry point, traced once) serves the values, the gradient
and exact Hessian-vector products; the offset of a point is built on the device as
δ = Σₖ αₖ dₖ.

Metrics are the model's compiled metrics (``metrics="auto"``), evaluated through Keras's own
metric objects in the same loop (stateless: the model's metric state is not touched).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from landscape import _checks, _model_checks, _reach, _terms
from landscape._batches import DataSplit, describe, model_inputs
from landscape._checks import HVPMode, Precision, Split
from landscape.directions import (
    Direction,
    ModelVariables,
    fingerprint_arrays,
    float_variables,
    storage_dtype,
)
from sam import _compat

logger = logging.getLogger("landscape")

HVP_MODES = _checks.options(HVPMode)
PRECISIONS = _checks.options(Precision)
#: compute dtypes of mixed precision, which the default analysis precision lifts to float32
LOW_PRECISIONS = ("float16", "bfloat16")
# Significand bits of each floating-point dtype: the narrowest dtype in use names the precision.
_SIGNIFICAND_BITS = {"bfloat16": 8, "float16": 11, "float32": 24, "float64": 53}
#: relative tolerance of the check that the Objective reproduces the model's compiled loss
LOSS_CHECK_RTOL = 1e-4


@dataclass(frozen=True)
class Basis:
    """Directions converted to stacked device tensors ``[k, *variable.shape]``, one per variable."""

    tensors: tuple[tf.Tensor, ...]
    k: int


def _compiled(python_function, signature):
    """``tf.function`` with a fixed signature: one trace per Objective and split.

    TensorFlow keys its "frequent retracing" warning by the code object, so several Objectives
    (each tracing its own closure once) would trigger it wrongly; ``trace_count`` is the check.
    """
    fn = tf.function(python_function, input_signature=signature, autograph=False)
    fn._omit_frequent_tracing_warning = True  # private TF flag; harmless if ignored
    return fn


# ------------------------------------------------------------------------------ precision
def _narrowest(dtypes) -> str | None:
    """The dtype with the fewest significand bits (its rounding dominates), or None."""
    known = [d for d in dtypes if d in _SIGNIFICAND_BITS]
    return min(known, key=_SIGNIFICAND_BITS.__getitem__) if known else None


def _float_policy(layer) -> str | None:
    """The compute dtype of ``layer`` if its dtype policy can be switched, else None.

    Switchable: a plain floating-point ``DTypePolicy`` (not a quantized one, not a
    ``DTypePolicyMap``) of a layer that computes (an ``InputLayer`` only declares a dtype, and a
    functional or Sequential model only routes tensors between its layers).
    """
    policy = layer.dtype_policy
    if (
        isinstance(layer, keras.layers.InputLayer)
        or _compat.is_graph_container(layer)
        or isinstance(policy, keras.dtype_policies.DTypePolicyMap)
    ):
        return None
    if not isinstance(policy, keras.dtype_policies.DTypePolicy) or policy.quantization_mode:
        return None
    dtype = keras.backend.standardize_dtype(policy.compute_dtype)
    return dtype if dtype in _SIGNIFICAND_BITS else None


def _widest(dtypes) -> str:
    return max(dtypes, key=lambda d: _SIGNIFICAND_BITS[d])


class _Precision:
    """The dtype an Objective computes in, and how the model is made to compute in it.

    ``precision`` is resolved against the compute dtypes of the model's layers (the model
    itself and every nested layer). ``applied()`` gives each layer that computes in another
    dtype the policy of the analysis dtype while the model runs — at trace time only: the
    traced graphs keep that arithmetic — and always puts the layer's own policy object back,
    also when the call raises. ``value_dtype(v)`` is the dtype variable v is read in (its
    float32 values cast exactly to float64 for ``"float64"``); the variables are never
    assigned.
    """

    def __init__(self, model: keras.Model, precision: str):
        self.requested = _checks.choice("precision", precision, Precision)
        layers = [(layer, _float_policy(layer)) for layer in _compat.all_layers(model)]
        layers = [(layer, dtype) for layer, dtype in layers if dtype is not None]
        own = keras.backend.standardize_dtype(model.compute_dtype)
        quantized = self._quantized(model, precision)
        #: the model's own (narrowest) compute dtype
        self.model_dtype = _narrowest([*(d for _, d in layers), *quantized]) or own
        if _SIGNIFICAND_BITS.get(precision, 0) and _SIGNIFICAND_BITS[precision] < max(
            (_SIGNIFICAND_BITS[d] for _, d in layers), default=0
        ):
            raise ValueError(
                f"Argument `precision` must not be narrower than the model's own arithmetic: "
                f"its layers compute in {_widest(d for _, d in layers)}. Received: "
                f"precision={precision!r}; use 'auto' or 'model'."
            )
        if precision == "model":
            targets = {}
        elif precision == "auto":
            targets = {id(layer): "float32" for layer, dtype in layers if dtype in LOW_PRECISIONS}
        else:
            targets = {id(layer): precision for layer, dtype in layers if dtype != precision}
        self._switch = [
            (layer, keras.dtype_policies.DTypePolicy(targets[id(layer)]))
            for layer, _ in layers
            if id(layer) in targets
        ]
        used = [targets.get(id(layer), dtype) for layer, dtype in layers] + quantized
        #: the dtype the analysis computes in: the narrowest compute dtype in effect
        self.name = _narrowest(used) or (own if precision in ("auto", "model") else precision)

    @staticmethod
    def _quantized(model: keras.Model, precision: str) -> list[str]:
        """The compute dtypes of the model's quantized layers (``model.quantize``), which keep
        them: a quantized layer's kernel and scales are its own, and its arithmetic is fixed.
        Refuses a ``precision`` that names another dtype."""
        dtypes = []
        for layer in _compat.all_layers(model):
            policy = layer.dtype_policy
            if _compat.is_graph_container(layer) or not getattr(policy, "quantization_mode", None):
                continue
            dtype = keras.backend.standardize_dtype(policy.compute_dtype)
            if precision in _SIGNIFICAND_BITS and precision != dtype:
                raise ValueError(
                    f"Argument `precision` cannot be {precision!r} for this model: its layer "
                    f"{layer.name!r} is quantized ({policy.name}), and a quantized layer "
                    f"computes only in its own dtype, {dtype}. Received: "
                    f"precision={precision!r}; use 'auto' or 'model'."
                )
            dtypes.append(dtype)
        return dtypes

    def value_dtype(self, variable) -> tf.DType:
        """The dtype ``variable`` is read in during the analysis."""
        dtype = keras.backend.standardize_dtype(variable.dtype)
        if self.requested == "auto" and dtype in LOW_PRECISIONS:
            dtype = "float32"
        elif self.requested in ("float32", "float64"):
            dtype = self.requested
        return tf.as_dtype(dtype)

    def check_outputs(self, y_pred) -> None:
        """Outputs narrower than the layers' dtype (the model's own casts) lower ``name`` to
        theirs, with a warning."""
        dtypes = {keras.backend.standardize_dtype(t.dtype) for t in tf.nest.flatten(y_pred)}
        narrow = _narrowest(dtypes)
        if narrow is not None and _SIGNIFICAND_BITS[narrow] < _SIGNIFICAND_BITS.get(self.name, 0):
            logger.warning(
                "The model's outputs are %s although its layers compute in %s "
                "(precision=%r): the model's own code casts to %s (only the layers' dtype "
                "policies are switched), so the analysis carries %s rounding and records "
                "precision %r.",
                narrow, self.name, self.requested, narrow, narrow, narrow,
            )  # fmt: skip
            self.name = narrow

    def switched(self) -> tuple:
        """What ``applied()`` changes: (layer id, policy name) pairs."""
        return tuple((id(layer), policy.name) for layer, policy in self._switch)

    @contextlib.contextmanager
    def applied(self):
        """The layers' policies switched to the analysis dtype, restored on exit."""
        saved = []
        try:
            for layer, policy in self._switch:
                saved.append((layer, layer.dtype_policy))
                layer.dtype_policy = policy
            yield
        finally:
            for layer, policy in reversed(saved):
                layer.dtype_policy = policy


# ------------------------------------------------------------------------------ flat view
class FlatView:
    """The trainable variables of an Objective as one float64 vector w ∈ ℝⁿ.

    The order is ``objective.trainable_variables``, each variable flattened in C order. Used by
    ``hessian`` (Lanczos on flat vectors) and ``sharpness`` (ascent on flat perturbations).

    Attributes:
        n: The number of trainable parameters.
        shapes: The variables' shapes, in order.
        w0: The weights as a float64 array of shape ``(n,)``.
    """

    def __init__(self, objective: Objective):
        self.objective = objective
        self._slots = objective._trainable_slots()
        self.shapes = [tuple(v.shape) for v in objective.trainable_variables]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self._bounds = np.cumsum(self.sizes)[:-1]
        self.n = int(sum(self.sizes))

    @property
    def w0(self) -> np.ndarray:
        return self.concat([v.value for v in self.objective.trainable_variables])

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """A flat float64 vector of shape (n,) as arrays aligned with the trainable variables."""
        flat = np.asarray(flat, np.float64).reshape(-1)
        if flat.size != self.n:
            raise ValueError(f"Expected a flat vector of {self.n} entries; got {flat.size}.")
        parts = np.split(flat, self._bounds)
        return [p.reshape(s) for p, s in zip(parts, self.shapes)]

    def concat(self, arrays: Sequence) -> np.ndarray:
        """Arrays aligned with the trainable variables as one float64 vector of shape (n,)."""
        return np.concatenate(
            [np.asarray(keras.ops.convert_to_numpy(a), np.float64).reshape(-1) for a in arrays]
        )

    def offsets(self, delta: np.ndarray) -> list:
        """Offsets for ``Objective.evaluate``: δ on the trainable variables, zero elsewhere."""
        out: list = [np.zeros(v.shape, np.float64) for v in self.objective.variables]
        for slot, part in zip(self._slots, self.split(delta)):
            out[slot] = part
        return out

    def direction(self, flat: np.ndarray, metadata: dict | None = None) -> Direction:
        """A flat vector as a ``Direction`` keyed by the trainable variables' paths."""
        variables = self.objective.trainable_variables
        arrays = {
            key: a.astype(storage_dtype(v.dtype))
            for v, key, a in zip(variables, variables.paths, self.split(flat))
        }
        return Direction(arrays, dict(metadata or {}))


# ------------------------------------------------------------------------------- objective
def _hvp_of(mode: str, scalar_of, vals: list, slots: list[int], vectors: list):
    """(aux, H v) for the scalar ``scalar_of(vals)`` w.r.t. ``vals[i]`` for i in ``slots``."""
    watched = [vals[i] for i in slots]
    if mode == "forward_over_backward":
        # The accumulator pushes v forward through the forward *and* the backward pass:
        # the tangent of g = ∇L(w) along v is H v.
        with tf.autodiff.ForwardAccumulator(watched, vectors) as acc:
            with tf.GradientTape() as tape:
                tape.watch(watched)
                scalar, aux = scalar_of(vals)
            g = tape.gradient(scalar, watched, unconnected_gradients="zero")
            g = [tf.convert_to_tensor(a) for a in g]  # IndexedSlices of embeddings
        hv = acc.jvp(g, unconnected_gradients="zero")
    else:
        # H v = ∇(∇L(w) · v), the gradient of a scalar: two reverse passes.
        with tf.GradientTape() as outer:
            outer.watch(watched)
            with tf.GradientTape() as inner:
                inner.watch(watched)
                scalar, aux = scalar_of(vals)
            g = inner.gradient(scalar, watched, unconnected_gradients="zero")
            g = [tf.convert_to_tensor(a) for a in g]  # IndexedSlices of embeddings
            # each term in float64: the variables may differ in dtype (LoRA factors in float32
            # beside a float64 model)
            gv = tf.add_n(
                [
                    tf.cast(tf.reduce_sum(a * tf.cast(b, a.dtype)), tf.float64)
                    for a, b in zip(g, vectors)
                ]
            )
        hv = outer.gradient(gv, watched, unconnected_gradients="zero")
    return aux, [tf.cast(tf.convert_to_tensor(h), tf.float64) for h in hv]


def _finite_product(product: list, what: str) -> list:
    """``product`` if every entry is finite, else one sentence: a curvature that TensorFlow's
    autodiff cannot give here (NaN where the loss and gradient are finite)."""
    total = sum(int(tf.size(p)) for p in product)
    bad = total - sum(int(tf.math.count_nonzero(tf.math.is_finite(p))) for p in product)
    if bad:
        raise ValueError(
            f"The {what}-vector product is not finite ({bad} of {total} entries are NaN or "
            "inf): TensorFlow's second derivative of the model or its loss is undefined at "
            "these weights (e.g. a loss built on where(mask, x, -inf), as "
            "keras.losses.Circle is), so no curvature can be measured here."
        )
    return product


#: Where the Gauss-Newton split is taken, per output: the outputs themselves, or the logits
#: that a softmax / sigmoid output was computed from (recovered as log p, or log p - log(1 - p)).
GGN_SPLITS = ("outputs", "softmax", "sigmoid")
#: Keras loss functions with a GGN: the loss is convex in the split's variable, so G is PSD.
_GGN_CROSS_ENTROPIES = {
    "sparse_categorical_crossentropy": "softmax",
    "categorical_crossentropy": "softmax",
    "binary_crossentropy": "sigmoid",
}
#: tolerance of the check that probabilities given to a softmax split sum to 1 per sample
GGN_SOFTMAX_ATOL = 1e-3


def _ggn_refusal(reason: str) -> ValueError:
    return ValueError(
        "Argument `curvature='ggn'` needs a mean squared error or a cross-entropy (sparse, "
        "categorical or binary; from logits, or on softmax / sigmoid outputs) for every output "
        f"loss: {reason}"
    )


def ggn_split(loss: keras.losses.Loss) -> str:
    """Where the GGN of one Keras loss is split: ``"outputs"``, ``"softmax"`` or ``"sigmoid"``.

    Mean squared error and cross-entropies ``from_logits=True`` are convex in the model's
    outputs: the split is at the outputs. A cross-entropy on probabilities is not convex in
    them (Keras renormalizes and clips), so the split is at the logits, recovered from the
    probabilities (see ``Objective.gauss_newton_vector_product``). Anything else is refused.
    """
    fn = getattr(loss, "fn", None)
    name = getattr(fn, "__name__", None)
    config = loss.get_config() if hasattr(loss, "get_config") else {}
    if name == "mean_squared_error":
        return "outputs"
    if name in _GGN_CROSS_ENTROPIES:
        if config.get("from_logits", False):
            return "outputs"
        if config.get("axis", -1) != -1:
            raise _ggn_refusal(f"the loss {config.get('name')!r} has axis={config['axis']}.")
        return _GGN_CROSS_ENTROPIES[name]
    raise _ggn_refusal(f"the loss {config.get('name', _terms.loss_name(loss))!r} is not one.")


def _logit_view(p: tf.Tensor, split: str) -> tuple[tf.Tensor, tf.Tensor]:
    """(z, dz/dp): the logits a softmax / sigmoid output p was computed from, and the
    elementwise derivative of z(p); log p is the logits up to a per-sample constant, which the
    softmax ignores. Entries with p = 0 (underflow) have dp/dw = 0 too and get dz/dp = 0."""
    tiny = tf.constant(np.finfo(p.dtype.as_numpy_dtype).tiny, p.dtype)
    if split == "softmax":
        return tf.math.log(tf.maximum(p, tiny)), tf.math.divide_no_nan(tf.ones_like(p), p)
    z = tf.math.log(tf.maximum(p, tiny)) - tf.math.log(tf.maximum(1.0 - p, tiny))
    return z, tf.math.divide_no_nan(tf.ones_like(p), p * (1.0 - p))


class _BatchLoop:
    """The one compiled batch loop of ``Objective``: values, gradients and HVPs at w0 + δ.

    Every entry point runs the model in a ``keras.StatelessScope`` at the offset weights over
    the batches of a split (``DataSplit.reduce``) and sums float64 (N, D) pairs per loss term
    (``landscape._terms``); one ``tf.function`` per split and entry point, traced once. The
    model runs in the analysis precision (``_set_precision``): its layers' policies switched
    while it is traced, its variables read in ``self._dtypes``.
    """

    @property
    def _n_loss(self) -> int:
        """The number of (N, D) loss terms: the loss's, then the model's own losses if used."""
        return self._loss.n_pairs + int(self._with_model_losses)

    def _n_pairs(self, with_metrics: bool) -> int:
        return self._n_loss + (len(self._pair_metrics) if with_metrics else 0)

    def _batch_pairs(self, x, y, w, y_pred, with_metrics: bool, added=()) -> tf.Tensor:
        """Float64 [N₁, D₁, N₂, D₂, ...] of one batch: the loss terms, the model's own losses
        ``added`` in it (``add_loss``, activity regularizers: a batch-size-weighted mean), then
        the metrics."""
        terms = list(self._loss.pairs(x, y, w, y_pred))
        if self._with_model_losses:
            n = tf.cast(tf.shape(keras.tree.flatten(y_pred)[0])[0], tf.float64)
            total = tf.add_n([tf.cast(a, tf.float64) for a in added]) if added else 0.0
            terms += [total * n, n]
        if with_metrics:
            for fn in self._pair_metrics.values():
                terms.extend(fn(y, y_pred, w))
        return tf.stack([tf.cast(t, tf.float64) for t in terms])

    def _metric_state(self):
        if self._keras_metrics is None:
            return ()
        return tuple(tf.convert_to_tensor(v) for v in self._keras_metrics.stateless_reset_state())

    def _update_metrics(self, state, y, y_pred, w):
        if self._keras_metrics is None:
            return state
        return tuple(self._keras_metrics.stateless_update_state(list(state), y, y_pred, w))

    def _set_precision(self, precision) -> None:
        """Resolve ``precision`` (see ``Objective``) and the dtype each variable is read in."""
        self._precision = _Precision(self.model, precision)
        #: the dtype each of ``self.variables`` is read in (and offsets and vectors are given in)
        self._dtypes = [self._precision.value_dtype(v) for v in self.variables]
        self._keeps_dtypes = all(
            d.name == keras.backend.standardize_dtype(v.dtype)
            for d, v in zip(self._dtypes, self.variables)
        )
        if self._precision.name in LOW_PRECISIONS:
            logger.info(
                "The Objective computes in %s (precision=%r): every loss, gradient and "
                "Hessian-vector product carries its rounding (relative error about 1e-3 in "
                "float16); precision='auto' computes in float32.",
                self._precision.name,
                self._precision.requested,
            )

    def _run_model(self, x, *, reads: set | None = None, added: list | None = None):
        """The model's outputs on ``x`` at w0, in the analysis precision (eagerly); the ids of
        the variables it read are added to ``reads`` and its own losses to ``added``."""
        values = [tf.cast(v.value, d) for v, d in zip(self.variables, self._dtypes)]
        with self._model_scope(values, reads) as scope:
            y_pred = self.model(x, training=False)
            if added is not None:
                added.extend(scope.losses)
            return y_pred

    def _scope(self, values):
        """The StatelessScope in which the variables read as ``values`` (analysis dtypes); it
        collects the losses the model adds in its call."""
        mapping = list(zip(self.variables, values))
        if self._keeps_dtypes:
            scope = keras.StatelessScope(state_mapping=mapping, collect_losses=True)
        else:
            scope = _compat.stateless_scope_keeping_dtypes(mapping)
            scope.collect_losses = True
        return scope

    @contextlib.contextmanager
    def _model_scope(self, values, reads: set | None = None):
        """Where the model runs at ``values``: the analysis precision, the StatelessScope, the
        cached state of layers that keep one recomputed from the values (``_reach``), and
        TensorFlow's ops whose second derivatives are wrong replaced by exact ones
        (``sam._compat.exact_second_derivatives``); the ids of the variables read in it are
        added to ``reads``."""
        scope = self._scope(values)
        seen = _compat.record_reads(scope) if reads is not None else set()
        try:
            widened = contextlib.nullcontext()
            if not self._keeps_dtypes:  # variables read in a wider dtype: type them so
                widened = _compat.autocast_scope(self._precision.name)
            with (
                self._precision.applied(),
                widened,
                scope,
                _reach.recomputed_state(self._cached_layers),
                _compat.exact_second_derivatives(),
            ):
                yield scope
        finally:
            if reads is not None:
                reads.update(seen)

    def _forward(self, values, x, y, w, with_metrics: bool):
        """(pairs, y_pred) at the variable values ``values`` (inference mode, one batch)."""
        with self._model_scope(values) as scope:
            y_pred = self.model(x, training=False)
            return self._batch_pairs(x, y, w, y_pred, with_metrics, scope.losses), y_pred

    def _penalty(self, values) -> tf.Tensor:
        """Float64 Σ regularizer(w) over trainable variables, at ``values`` (one per variable)."""
        total = tf.constant(0.0, tf.float64)
        trainable = {id(v) for v in self.trainable_variables}
        for v, value in zip(self.variables, values):
            regularizer = getattr(v, "regularizer", None)
            if regularizer is not None and id(v) in trainable:
                total += tf.cast(regularizer(value), tf.float64)
        return total

    def _finish(self, sums, metric_state, penalty=None) -> dict[str, tf.Tensor]:
        out = self._loss.combine(sums)
        k = 2 * self._n_loss
        if self._with_model_losses:
            out["loss"] += tf.math.divide_no_nan(sums[k - 2], sums[k - 1])
        if penalty is not None:
            out["loss"] += penalty
        for i, name in enumerate(self._pair_metrics):
            out[name] = tf.math.divide_no_nan(sums[k + 2 * i], sums[k + 2 * i + 1])
        if self._keras_metrics is not None:
            result = self._keras_metrics.stateless_result(list(metric_state))
            for name in self._keras_metric_names:
                out[_terms.short_name(name)] = tf.cast(result[name], tf.float64)
        return out

    def _values(self, coefficients, basis) -> list:
        """w0 + Σₖ cₖ dₖ per variable, in its analysis dtype (the basis is in it already)."""
        return [
            tf.cast(v.value, b.dtype) + tf.tensordot(tf.cast(coefficients, b.dtype), b, axes=1)
            for v, b in zip(self.variables, basis)
        ]

    def _signature(self):
        return [
            tf.TensorSpec([None], tf.float64),
            [tf.TensorSpec([None, *v.shape], d) for v, d in zip(self.variables, self._dtypes)],
        ]

    def _trainable_slots(self) -> list[int]:
        """Indices in ``self.variables`` of the trainable variables, in order."""
        trainable = {id(v) for v in self.trainable_variables}
        return [i for i, v in enumerate(self.variables) if id(v) in trainable]

    def _count(self, key: str) -> None:
        self.trace_count[key] = self.trace_count.get(key, 0) + 1

    def _value_fn(self, split: str):
        fn = self._value_fns.get(split)
        if fn is not None:
            return fn
        data = self._split(split)
        n_terms = 2 * self._n_pairs(True)

        def value(coefficients, basis):
            self._count(split)
            values = self._values(coefficients, basis)

            def body(state, x, y, w):
                sums, metric_state = state
                pairs, y_pred = self._forward(values, x, y, w, True)
                return sums + pairs, self._update_metrics(metric_state, y, y_pred, w)

            init = (tf.zeros([n_terms], tf.float64), self._metric_state())
            sums, metric_state = data.reduce(init, body)
            penalty = self._penalty(values) if self.regularization else None
            return self._finish(sums, metric_state, penalty), sums

        fn = _compiled(value, self._signature())
        self._value_fns[split] = fn
        return fn

    def _grad_fn(self, split: str):
        fn = self._grad_fns.get(split)
        if fn is not None:
            return fn
        data = self._split(split)
        n_terms = 2 * self._n_pairs(True)
        slots = self._trainable_slots()

        def value_and_grad(coefficients, basis):
            self._count(f"{split}/gradient")
            values = self._values(coefficients, basis)

            # ∇ of Σₖ λₖ Nₖ/Dₖ: the Dₖ do not depend on w, so accumulate ∇Nₖ per term and
            # combine once the data-set-wide Dₖ are known.
            n_loss = self._n_loss
            grads0 = tuple(tf.zeros([n_loss, *self.variables[i].shape], tf.float64) for i in slots)

            def body(state, x, y, w):
                sums, metric_state, grads = state
                vals = [tf.identity(v) for v in values]  # the tape sees the body's tensors
                watched = [vals[i] for i in slots]
                with tf.GradientTape(persistent=n_loss > 1) as tape:
                    tape.watch(watched)
                    pairs, y_pred = self._forward(vals, x, y, w, True)
                    numerators = [pairs[2 * k] for k in range(n_loss)]
                per_term = []
                for numerator in numerators:
                    g = tape.gradient(numerator, watched, unconnected_gradients="zero")
                    per_term.append([tf.cast(tf.convert_to_tensor(a), tf.float64) for a in g])
                del tape
                stacked = [tf.stack([t[j] for t in per_term]) for j in range(len(slots))]
                grads = tuple(a + b for a, b in zip(grads, stacked))
                metric_state = self._update_metrics(metric_state, y, y_pred, w)
                return sums + pairs, metric_state, grads

            init = (tf.zeros([n_terms], tf.float64), self._metric_state(), grads0)
            sums, metric_state, grads = data.reduce(init, body)
            scale = self._term_scales(sums)
            grads = [tf.tensordot(scale, g, axes=1) for g in grads]
            penalty = None
            if self.regularization:
                vals = [tf.identity(v) for v in values]
                with tf.GradientTape() as tape:
                    watched = [vals[i] for i in slots]
                    tape.watch(watched)
                    penalty = self._penalty(vals)
                extra = tape.gradient(penalty, watched, unconnected_gradients="zero")
                grads = [g + tf.cast(e, tf.float64) for g, e in zip(grads, extra)]
            out = self._finish(sums, metric_state, penalty)
            return out, [tf.cast(g, self._dtypes[i]) for g, i in zip(grads, slots)]

        fn = _compiled(value_and_grad, self._signature())
        self._grad_fns[split] = fn
        return fn

    def _term_scales(self, sums) -> tf.Tensor:
        """λₖ / Dₖ for each loss term (float64 vector): L = Σₖ scaleₖ · Nₖ."""
        if isinstance(self._loss, _terms.CompiledLoss):
            weights = [1.0 if t.weight is None else float(t.weight) for t in self._loss.flat]
        else:
            weights = [1.0]
        weights += [1.0] * int(self._with_model_losses)
        return tf.stack(
            [
                tf.math.divide_no_nan(tf.constant(lam, tf.float64), sums[2 * k + 1])
                for k, lam in enumerate(weights)
            ]
        )

    def _hvp_fn(self, split: str, mode: str):
        fn = self._hvp_fns.get((split, mode))
        if fn is not None:
            return fn
        data = self._split(split)
        slots = self._trainable_slots()
        n_loss = self._n_loss

        def hvp(coefficients, basis, vectors, scales):
            self._count(f"{split}/hvp/{mode}")
            values = self._values(coefficients, basis)
            hv0 = tuple(tf.zeros(self.variables[i].shape, tf.float64) for i in slots)

            def body(state, x, y, w):
                sums, acc_hv = state
                vals = [tf.identity(v) for v in values]  # the tapes see the body's tensors

                def batch_loss(vs):
                    pairs, _ = self._forward(vs, x, y, w, False)
                    numerators = tf.stack([pairs[2 * k] for k in range(n_loss)])
                    # Σₖ (λₖ/Dₖ) Nₖ with the data-set-wide Dₖ, sliced inside the tape
                    return tf.reduce_sum(scales * numerators), pairs

                pairs, hv = _hvp_of(mode, batch_loss, vals, slots, list(vectors))
                return sums + pairs, tuple(a + b for a, b in zip(acc_hv, hv))

            _, hv = data.reduce((tf.zeros([2 * n_loss], tf.float64), hv0), body)
            if self.regularization:
                vals = [tf.identity(v) for v in values]

                def penalty(vs):
                    return self._penalty(vs), tf.zeros([])

                _, extra = _hvp_of(mode, penalty, vals, slots, list(vectors))
                hv = [a + b for a, b in zip(hv, extra)]
            return hv

        signature = [
            *self._signature(),
            [tf.TensorSpec(self.variables[i].shape, self._dtypes[i]) for i in slots],
            tf.TensorSpec([n_loss], tf.float64),
        ]
        fn = _compiled(hvp, signature)
        self._hvp_fns[(split, mode)] = fn
        return fn

    def _normalizers(self, split: str) -> tf.Tensor:
        """λₖ / Dₖ of the loss terms on ``split`` (they do not depend on the weights)."""
        scales = self._scales.get(split)
        if scales is None:
            _, sums = self._value_fn(split)(*self._offset_args(None))
            scales = self._scales[split] = self._term_scales(sums)
        return scales

    # --------------------------------------------------------------------------- public API


class _GaussNewtonLoop:
    """The Gauss-Newton products of ``Objective`` (``gauss_newton_vector_product``): a mixin on
    ``_BatchLoop``'s batch loop, whose forward pass, scales and data it uses."""

    def _ggn_splits(self) -> tuple[str, ...]:
        """The GGN split of each flat output (``GGN_SPLITS``), checked once, eagerly, on the
        first batch: the loss must be a compiled one of ``ggn_split``'s kinds; an output split
        at its logits must carry no Keras mask and hold probabilities."""
        if self._ggn_split_cache is not None:
            return self._ggn_split_cache
        if self._with_model_losses:
            raise _ggn_refusal(
                "the model adds its own losses in its call (add_loss, activity regularizers), "
                "whose curvature is not a function of the outputs; pass `model_losses=False` to "
                "leave them out."
            )
        if not isinstance(self._loss, _terms.CompiledLoss):
            raise _ggn_refusal(
                f"the loss is the model's own {self._loss.name}, whose dependence on the "
                "outputs cannot be seen."
            )
        x, y, _ = self._splits["train"].first_batch(min(self.batch_size, 64))
        y_pred = self._run_model(x)
        leaves = keras.tree.flatten(y_pred)
        _, preds = self._loss._targets(y, y_pred)
        splits = ["outputs"] * len(leaves)
        for term, pred in zip(self._loss.flat, preds):
            split = ggn_split(term.loss)
            index = [i for i, leaf in enumerate(leaves) if leaf is pred]
            if len(index) != 1:
                raise _ggn_refusal(f"the output of the loss {term.name!r} cannot be identified.")
            if split != "outputs":
                p = keras.ops.convert_to_numpy(pred).astype(np.float64)
                if _compat.keras_mask(pred) is not None:
                    raise _ggn_refusal(
                        f"the output {term.name!r} has a Keras mask, which is not supported "
                        "for a cross-entropy on probabilities (use from_logits=True)."
                    )
                if not np.all((p >= 0) & (p <= 1)) or (
                    split == "softmax" and not np.allclose(p.sum(-1), 1.0, atol=GGN_SOFTMAX_ATOL)
                ):
                    kind = "softmax outputs (summing to 1)" if split == "softmax" else "in [0, 1]"
                    raise _ggn_refusal(
                        f"the output {term.name!r} of a cross-entropy on probabilities is not "
                        f"{kind} (use from_logits=True on logits)."
                    )
            splits[index[0]] = split
        self._ggn_split_cache = tuple(splits)
        return self._ggn_split_cache

    def _loss_hessian_product(self, x, y, w, y_pred, jv, scales, splits) -> list:
        """H_ℓ u of one batch at the GGN splits, mapped back to the outputs (one per leaf).

        ℓ = Σₖ (λₖ/Dₖ) Nₖ of the batch as a function of the split variables z (the outputs,
        or logits z(p)); u = (dz/dp) ⊙ J v. Returns (dz/dp) ⊙ ∇²_z ℓ u, so that the caller's
        Jᵀ product gives J_zᵀ H_ℓ J_z v.
        """
        n_loss = self._loss.n_pairs
        outputs = keras.tree.flatten(y_pred)
        zs, dz = [], []
        for out, split in zip(outputs, splits):
            if split == "outputs":
                zs.append(out)  # the tensor itself: it carries the Keras mask of the output
                dz.append(None)
            else:
                z, d = _logit_view(tf.stop_gradient(out), split)
                zs.append(z)
                dz.append(d)
        us = [tf.stop_gradient(u if d is None else u * d) for u, d in zip(jv, dz)]
        with tf.GradientTape() as outer:
            outer.watch(zs)
            with tf.GradientTape() as inner:
                inner.watch(zs)
                # A softmax / sigmoid op: Keras's cross-entropy reads its input, the logits z.
                leaves = [
                    z if s == "outputs" else (tf.nn.softmax(z) if s == "softmax" else tf.sigmoid(z))
                    for z, s in zip(zs, splits)
                ]
                pairs = self._loss.pairs(x, y, w, keras.tree.pack_sequence_as(y_pred, leaves))
                numerators = tf.stack([tf.cast(pairs[2 * k], tf.float64) for k in range(n_loss)])
                scalar = tf.reduce_sum(scales * numerators)
            g = inner.gradient(scalar, zs, unconnected_gradients="zero")
            gu = tf.add_n(
                [tf.cast(tf.reduce_sum(a * tf.cast(b, a.dtype)), tf.float64) for a, b in zip(g, us)]
            )
        h = outer.gradient(gu, zs, unconnected_gradients="zero")
        return [tf.cast(a if d is None else a * d, out.dtype) for a, d, out in zip(h, dz, outputs)]

    def _ggn_fn(self, split: str):
        fn = self._ggn_fns.get(split)
        if fn is not None:
            return fn
        data = self._split(split)
        slots = self._trainable_slots()
        splits = self._ggn_splits()

        def ggn(coefficients, basis, vectors, scales):
            self._count(f"{split}/ggn")
            values = self._values(coefficients, basis)
            gv0 = tuple(tf.zeros(self.variables[i].shape, tf.float64) for i in slots)

            def body(acc_gv, x, y, w):
                vals = [tf.identity(v) for v in values]  # the tapes see the body's tensors
                watched = [vals[i] for i in slots]
                with tf.GradientTape() as tape:  # for Jᵀ
                    tape.watch(watched)
                    with (
                        tf.autodiff.ForwardAccumulator(watched, list(vectors)) as acc,  # J v
                        self._model_scope(vals),
                    ):
                        y_pred = self.model(x, training=False)
                outputs = keras.tree.flatten(y_pred)
                jv = [acc.jvp(o, unconnected_gradients="zero") for o in outputs]
                hjv = self._loss_hessian_product(x, y, w, y_pred, jv, scales, splits)
                gv = tape.gradient(
                    outputs, watched, output_gradients=hjv, unconnected_gradients="zero"
                )
                gv = [tf.cast(tf.convert_to_tensor(a), tf.float64) for a in gv]
                return tuple(a + b for a, b in zip(acc_gv, gv))

            gv = list(data.reduce(gv0, body))
            if self.regularization:  # the penalties' own Hessian (PSD for L1 / L2)
                vals = [tf.identity(v) for v in values]

                def penalty(vs):
                    return self._penalty(vs), tf.zeros([])

                _, extra = _hvp_of("backward_over_backward", penalty, vals, slots, list(vectors))
                gv = [a + b for a, b in zip(gv, extra)]
            return gv

        signature = [
            *self._signature(),
            [tf.TensorSpec(self.variables[i].shape, self._dtypes[i]) for i in slots],
            tf.TensorSpec([self._loss.n_pairs], tf.float64),
        ]
        fn = _compiled(ggn, signature)
        self._ggn_fns[split] = fn
        return fn


class _Construction:
    """The checks ``Objective`` runs once when it is built: the probe of the first batch and the
    metrics set-up (a mixin, so that the class stays readable)."""

    def _probe(self, metrics, loss) -> None:
        """Run the model on a few samples: check the structures, build and check loss/metrics."""
        x, y, w = self._splits["train"].first_batch(min(max(self.batch_size, 2), 64))
        _model_checks.finite_weights(self.trainable_variables)
        reads, added = set(), []
        try:
            y_pred = self._run_model(x, reads=reads, added=added)
        except Exception as error:  # any failure here is the data not fitting the model
            raise ValueError(
                f"Argument `data` does not fit the model: x is {describe(x)} but the model's "
                f"inputs are {model_inputs(self.model)} ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''})."
            ) from error
        try:
            keras_value = self._loss.build(y, y_pred, w)
            pairs = self._loss.pairs(x, y, w, y_pred)
            ours = self._loss.combine(tf.stack([tf.cast(t, tf.float64) for t in pairs]))
        except (ValueError, TypeError, KeyError, tf.errors.InvalidArgumentError) as error:
            if isinstance(error, _terms.Refusal):
                raise
            weights = "" if w is None else f" and sample_weight is {describe(w)}"
            raise ValueError(
                f"Argument `data` does not fit the loss: y is {describe(y)}{weights} but the "
                f"model's outputs are {describe(y_pred)} ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''})."
            ) from error
        ours = float(ours["loss"])
        self._with_model_losses = self._model_losses and bool(added) and self._loss.n_pairs > 0
        self._with_model_losses &= isinstance(self._loss, _terms.CompiledLoss)
        _model_checks.reach(self, x, reads)
        _model_checks.finite_loss(ours + sum(float(a) for a in added), x)
        if self._loss.per_batch and any(not s.single_batch for s in self._splits.values()):
            raise _terms.per_batch_refusal(sorted(self._loss.per_batch)[0])
        _model_checks.batch_coupling(self)
        if np.isfinite(keras_value) and not np.isclose(
            ours, keras_value, rtol=LOSS_CHECK_RTOL, atol=1e-7
        ):
            raise ValueError(
                f"The Objective could not reproduce the model's compiled loss on the first "
                f"batch (Keras: {keras_value:.8g}, Objective: {ours:.8g}); if the sample weights "
                "are per sample on a per-entry output, give one weight per entry; otherwise pass "
                "`loss=` explicitly."
            )
        self._setup_metrics(metrics, loss, y, y_pred, w)
        self._precision.check_outputs(y_pred)

    def _setup_metrics(self, metrics, loss, y, y_pred, w) -> None:
        compiled = _compat.compiled_metrics(self.model)
        if isinstance(metrics, str):
            if metrics not in ("auto", "compiled"):
                raise ValueError(
                    f"Unknown metrics {metrics!r}; expected 'auto', 'compiled' or a sequence "
                    "of 'accuracy' and callables."
                )
            if compiled is not None:
                if not compiled.built:
                    compiled.build(y, y_pred)
                state = compiled.stateless_reset_state()
                names = tuple(compiled.stateless_result(state))
                if names:
                    self._keras_metrics = compiled
                    self._keras_metric_names = names
                    return
            if metrics == "compiled" or not _terms.is_classification(self.model, loss):
                return
            metrics = ("accuracy",)
        if tf.nest.is_nested(y_pred) and len(tf.nest.flatten(y_pred)) > 1 and metrics:
            raise ValueError(
                "Argument `metrics`: 'accuracy' and callables take single-output models; for "
                "several outputs compile the model with metrics and use metrics='auto'."
            )
        from_logits, ignore_class = _terms.loss_options(self.model, loss)
        for m in metrics:
            if isinstance(m, str) and m in _terms.ACCURACY_NAMES:

                def accuracy(y_true, y_pred, s, t=0.0 if from_logits else 0.5):
                    return _terms.accuracy_pair(
                        y_true, y_pred, s, threshold=t, ignore_class=ignore_class
                    )

                self._pair_metrics["acc"] = accuracy
            elif isinstance(m, str):
                raise ValueError(f"Unknown metric {m!r}; expected 'accuracy' or a callable.")
            elif callable(m):

                def pair(y_true, y_pred, s, fn=m):
                    return _terms.callable_pair(fn, y_true, y_pred, s)

                self._pair_metrics[getattr(m, "__name__", type(m).__name__)] = pair
            else:
                raise ValueError(f"Argument `metrics` entries must be names or callables: {m!r}.")


class Objective(_Construction, _GaussNewtonLoop, _BatchLoop):
    """The loss (and metrics) of a model over a data set, as a function of its weights.

    Args:
        model: A built Keras model; its current weights are w0.
        data: ``(x, y)`` or ``(x, y, sample_weight)`` with x, y and the sample weights arrays
            or any nest of arrays Keras takes (dicts of inputs, lists of outputs), a finite
            ``tf.data.Dataset`` of such batches, or a ``keras.utils.PyDataset``.
        loss: None for the model's compiled loss (every output, ``loss_weights``, masks,
            ``ignore_class``, sample weights, and a ``compute_loss`` override), or what
            ``model.compile(loss=...)`` accepts — a name, a keras Loss, a callable
            ``loss(y_true, y_pred)`` returning per-sample values, or a dict/list of them per
            output. Defaults to None.
        batch_size: Batch size for array data. Defaults to 256.
        metrics: ``"auto"``: the model's compiled metrics (reported under Keras's names, with
            "accuracy" shortened to "acc"), or accuracy when the model has none and the loss is
            a cross-entropy; ``"compiled"``: the compiled metrics only; or a sequence of
            ``"accuracy"`` (sparse, one-hot or binary, sample-weighted, masks and the loss's
            ``ignore_class`` honoured; threshold 0 for ``from_logits=True``, else 0.5) and
            callables ``fn(y_true, y_pred) -> per-sample values``. Defaults to ``"auto"``.
        test_data: An optional second data set in the same forms as ``data``, evaluated with
            ``split="test"``. Defaults to None.
        regularization: Add the weight-regularization penalties of the trainable variables
            (the ``kernel_regularizer``/``bias_regularizer`` terms of ``model.losses``, e.g.
            λ‖w‖² for an L2 regularizer, which adds 2λI to the Hessian) to the loss, at the
            evaluated weights. Defaults to False: the loss is the data term (and the model's
            own losses, below) without the penalties (``model.evaluate`` does add them), so
            that surfaces and spectra show the loss itself.
        model_losses: Add the losses the model adds in its call — ``add_loss`` terms and
            activity regularizers (Keras divides those by the batch size) — at the evaluated
            weights, as ``model.evaluate`` does: each batch's sum of them, averaged over the
            batches weighted by batch size, which is exact for terms that are means over the
            batch's samples or do not depend on the data. A term that is neither (a sum over
            the batch, a batch statistic) is found on the first batch and is exact only with
            the whole data in one batch (refused in several). ``included`` records which
            terms are in. ``curvature="ggn"`` refuses them (pass False). Defaults to True.
        steps: The number of batches taken from a dataset (required for an infinite one, e.g.
            ending in ``.repeat()``; a dataset whose cardinality TensorFlow cannot tell, e.g.
            after ``.filter()``, is taken to be finite, as ``model.evaluate`` does). Defaults
            to None: the whole dataset.
        precision: The dtype the model computes in during the analysis (``self.precision``
            says which was used, and every Hessian and sharpness result records it).
            ``"auto"``: float32 for a mixed-precision model (layers computing in float16 or
            bfloat16, e.g. under the ``mixed_float16`` policy), otherwise the model's own
            dtype. Float16 rounds every product to about 1e-3 relative error and makes the
            computed Hessian slightly non-symmetric, so eigenvalue residuals below ~1e-3 are
            out of reach; the mixed-precision layers keep float32 variables, so float32
            computation uses the very weights training found. ``"float32"`` or ``"float64"``:
            every floating-point layer computes in that dtype, its variables read as values
            of it (float32 weights cast exactly to float64). ``"model"``: the model's own
            compute dtypes, float16 included (then ``precision`` is ``"float16"`` and
            certificates usually fail at the default tolerances). The dtype is switched
            through the layers' ``dtype_policy`` while the Objective traces its functions (and
            in its one eager call at construction); each layer gets its own policy object back
            right after, also when the call raises, and the variables are never assigned. Casts
            written in a model's own ``call`` are kept: when the outputs come out narrower
            than the layers' dtype, a warning says so and ``precision`` records the outputs'
            dtype. Defaults to ``"auto"``.

    Raises:
        ValueError: an unknown ``precision``; the model is not built or has no loss; the
            data are not in one of the forms above, have no targets, are infinite without
            ``steps``, or do not fit the model's inputs/outputs (the message names both
            structures); the loss has a "sum" reduction; or the Objective's loss differs from
            Keras's own on the first batch (a loss structure it cannot reproduce: pass
            ``loss=``).

    Example:
        >>> obj = Objective(model, (x, y), batch_size=256)
        >>> obj.evaluate()                          # at w0: {"loss": ..., "acc": ...}
        >>> obj.evaluate(offsets=[...])             # at w0 + δ, δ aligned with obj.variables
        >>> obj.evaluate_at([0.5, -0.2], [d1, d2])  # at w0 + 0.5 d1 − 0.2 d2
    """

    def __init__(
        self,
        model: keras.Model,
        data,
        loss=None,
        *,
        batch_size: int = 256,
        metrics: str | Sequence[str | Callable] = "auto",
        test_data=None,
        regularization: bool = False,
        steps: int | None = None,
        precision: Precision = "auto",
        model_losses: bool = True,
    ):
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"Argument `model` must be a keras.Model. Received: {type(model).__name__}."
            )
        if not model.built:
            raise ValueError("Argument `model` must be built (call it once or give it an input).")
        batch_size = _checks.integer("batch_size", batch_size)
        steps = None if steps is None else _checks.integer("steps", steps)
        regularization = _checks.boolean("regularization", regularization)
        self._model_losses = _checks.boolean("model_losses", model_losses)
        self._with_model_losses = False  # set by the probe: does the model add losses?
        self._cached_layers: list = []  # layers whose cached state the offsets must reach
        self._unmovable: dict[int, Any] = {}  # id -> variable the scope cannot move
        self._owners: dict[int, Any] = {}  # id(variable) -> owning layer, when needed
        self.model = model
        self.regularization = regularization
        self.batch_size = batch_size
        self.steps = steps
        self.variables = float_variables(model, "all")
        trainable = {id(v) for v in model.trainable_variables}
        pairs = [(v, k) for v, k in zip(self.variables, self.variables.paths) if id(v) in trainable]
        self.trainable_variables = ModelVariables([v for v, _ in pairs], [k for _, k in pairs])
        self._set_precision(precision)
        self._splits: dict[str, DataSplit] = {
            "train": DataSplit(data, self.batch_size, steps, "data")
        }
        if test_data is not None:
            self._splits["test"] = DataSplit(test_data, self.batch_size, steps, "test_data")
        self._loss = _terms.resolve_loss(model, loss)
        self.loss_name = self._loss.name
        self._pair_metrics: dict[str, Callable] = {}
        self._keras_metrics: keras.metrics.Metric | None = None
        self._keras_metric_names: tuple[str, ...] = ()
        self._probe(metrics, loss)
        self._value_fns: dict[str, Any] = {}
        self._grad_fns: dict[str, Any] = {}
        self._hvp_fns: dict[tuple[str, str], Any] = {}
        self._ggn_fns: dict[str, Any] = {}
        self._ggn_split_cache: tuple[str, ...] | None = None
        self._scales: dict[str, tf.Tensor] = {}
        self.trace_count: dict[str, int] = {}
        self._flat: FlatView | None = None

    # ----------------------------------------------------------------------------- properties
    @property
    def precision(self) -> str:
        """The dtype the analysis computes in: ``"float32"``, ``"float64"``, ``"float16"``….

        The narrowest compute dtype of the model's layers while the Objective runs them, or
        of its outputs if the model's own code casts them narrower (see the ``precision``
        argument); every result of ``landscape.hessian`` and ``landscape.sharpness`` records
        it.
        """
        return self._precision.name

    @property
    def included(self) -> tuple[str, ...]:
        """The terms of the loss this Objective measures, in order: ``"data"`` (the compiled
        loss, or the model's ``compute_loss``), ``"model_losses"`` (``add_loss`` terms and
        activity regularizers, when the model has them and ``model_losses=True``) and
        ``"weight_penalties"`` (with ``regularization=True``). ``model.evaluate`` includes all
        three."""
        terms = ("data",) + ("model_losses",) * self._with_model_losses
        return terms + ("weight_penalties",) * self.regularization

    @property
    def splits(self) -> tuple[str, ...]:
        """The data splits: ``("train",)`` or ``("train", "test")``."""
        return tuple(self._splits)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Keys of ``evaluate``'s result: ``"loss"``, per-output losses, then the metrics."""
        parts = ()
        if isinstance(self._loss, _terms.CompiledLoss) and len(self._loss.flat) > 1:
            parts = tuple(f"{t.name}_loss" for t in self._loss.flat)
        keras_names = tuple(_terms.short_name(n) for n in self._keras_metric_names)
        return ("loss", *parts, *self._pair_metrics, *keras_names)

    @property
    def flat(self) -> FlatView:
        """The trainable variables as one float64 vector (see ``FlatView``)."""
        if self._flat is None:
            self._flat = FlatView(self)
        return self._flat

    def weights_fingerprint(self) -> str:
        """SHA-256 of the current weights (all floating-point variables, in order)."""
        return fingerprint_arrays(keras.ops.convert_to_numpy(v.value) for v in self.variables)

    def data_fingerprint(self) -> str | None:
        """SHA-256 of the array data of every split, or None if a split is a dataset."""
        arrays = []
        for split in self._splits.values():
            part = split.arrays()
            if part is None:
                return None
            arrays += part
        return fingerprint_arrays(arrays)

    def with_data(self, data, *, batch_size: int | None = None) -> Objective:
        """The same model, loss, metrics and options on other (training) data.

        The copy has its own compiled functions (traced on first use) and no test split; the
        original is untouched. ``worst_case_sharpness`` uses it for per-batch m-sharpness.
        """
        sub = copy.copy(self)
        sub._value_fns, sub._grad_fns, sub._hvp_fns = {}, {}, {}  # traced per split: not shared
        sub._ggn_fns = {}
        sub.trace_count, sub._scales = {}, {}
        sub._flat = None
        size = batch_size or self.batch_size
        sub._splits = {"train": DataSplit(data, size, None, "data")}
        return sub

    def with_precision(self, precision: Precision) -> Objective:
        """The same model, data, loss, metrics and options, computed in another ``precision``.

        The original is untouched. The copy shares the original's compiled functions when the
        arithmetic is the same (``"model"`` or ``"auto"`` of a float32 model), else it has its
        own (traced on first use). See the ``precision`` argument of ``Objective``.
        """
        sub = copy.copy(self)
        sub._set_precision(precision)
        if sub._precision.switched() == self._precision.switched() and sub._dtypes == self._dtypes:
            sub._precision.name = self._precision.name  # as its outputs were checked
            return sub
        sub._value_fns, sub._grad_fns, sub._hvp_fns = {}, {}, {}
        sub._ggn_fns, sub._ggn_split_cache = {}, None
        sub.trace_count, sub._scales = {}, {}
        sub._flat = None
        x, _, _ = sub._splits["train"].first_batch(min(sub.batch_size, 64))
        sub._precision.check_outputs(sub._run_model(x))
        return sub

    def batches(self, batch_size: int, *, max_batches: int | None = None) -> Iterator[Objective]:
        """Objectives on consecutive batches of ``batch_size`` training samples (m-sharpness).

        Each has the same model, loss and metrics; the last batch may be smaller.
        """
        for i, (x, y, w) in enumerate(self._split("train").batches(batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            yield self.with_data((x, y) if w is None else (x, y, w), batch_size=batch_size)

    def basis(self, directions: Sequence[Direction]) -> Basis:
        """Stack ``directions`` into device tensors aligned with ``self.variables`` (once)."""
        if not directions:
            raise ValueError("Argument `directions` must contain at least one Direction.")
        aligned = [d.aligned(self.variables) for d in directions]
        _model_checks.zero_directions(self, aligned, "directions")
        for arrays in aligned:
            _model_checks.check_offsets(self, arrays, "directions")
        tensors = tuple(
            tf.cast(tf.constant(np.stack([a[i] for a in aligned]).astype(storage_dtype(v))), d)
            for i, (v, d) in enumerate(zip(self.variables, self._dtypes))
        )
        return Basis(tensors, len(directions))

    # ---------------------------------------------------------------------- the batch loop
    def _split(self, split: str) -> DataSplit:
        if split not in self._splits:
            raise ValueError(f"Unknown split {split!r}; expected one of {self.splits}.")
        return self._splits[split]

    def _offset_args(self, offsets):
        if offsets is None:
            basis = [tf.zeros([1, *v.shape], d) for v, d in zip(self.variables, self._dtypes)]
        else:
            if isinstance(offsets, Direction):
                offsets = offsets.aligned(self.variables)
            if len(offsets) != len(self.variables):
                raise ValueError(
                    f"Argument `offsets` has {len(offsets)} entries; the objective has "
                    f"{len(self.variables)} variables (see `Objective.variables`)."
                )
            _model_checks.check_offsets(self, offsets, "offsets")
            basis = [tf.expand_dims(tf.cast(o, d), 0) for o, d in zip(offsets, self._dtypes)]
        return tf.constant([1.0], tf.float64), basis

    @staticmethod
    def _to_float(result) -> dict[str, float]:
        return {k: float(v) for k, v in result.items()}

    def evaluate(self, offsets=None, *, split: Split = "train") -> dict[str, float]:
        """Loss and metrics at ``w0 + offsets``.

        Args:
            offsets: None (at w0), a ``Direction``, or one tensor per entry of
                ``self.variables`` (all floating-point variables, trainable first as in
                ``model.variables``). Defaults to None.
            split: ``"train"`` or ``"test"``. Defaults to ``"train"``.

        Returns:
            ``{"loss": ..., <per-output losses>, <metrics>}`` as Python floats (keys as in
            ``metric_names``).
        """
        return self._to_float(self._value_fn(split)(*self._offset_args(offsets))[0])

    def evaluate_at(
        self,
        coefficients: Sequence[float],
        directions: Sequence[Direction] | Basis,
        *,
        split: Split = "train",
    ) -> dict[str, float]:
        """Loss and metrics at ``w0 + Σₖ coefficients[k] · directions[k]``.

        Pass a ``Basis`` from ``self.basis(directions)`` to avoid converting the directions at
        every call (``compute_surface`` does).
        """
        basis = directions if isinstance(directions, Basis) else self.basis(directions)
        coefficients = tf.constant(np.asarray(coefficients, np.float64).reshape(-1))
        if int(coefficients.shape[0]) != basis.k:
            raise ValueError(
                f"Got {int(coefficients.shape[0])} coefficients for {basis.k} directions."
            )
        return self._to_float(self._value_fn(split)(coefficients, list(basis.tensors))[0])

    def value_and_gradient(
        self, offsets=None, *, split: Split = "train"
    ) -> tuple[dict[str, float], list[tf.Tensor]]:
        """Loss/metrics and the gradient of the loss at ``w0 + offsets``.

        Returns:
            ``(values, gradients)``: gradients aligned with ``self.trainable_variables``, of the
            same data-set-wide loss that ``evaluate`` reports (float64 accumulation), in the
            dtype the variables are read in (their own, or float64 for
            ``precision="float64"``).
        """
        values, grads = self._grad_fn(split)(*self._offset_args(offsets))
        return self._to_float(values), grads

    def hessian_vector_product(
        self,
        vector,
        offsets=None,
        *,
        split: Split = "train",
        mode: HVPMode = "backward_over_backward",
    ) -> list[tf.Tensor]:
        """The exact product ``H v`` of the loss's Hessian w.r.t. the trainable weights.

        H is the Hessian of the same data-set-wide loss that ``evaluate`` reports (inference
        mode: BatchNorm moving statistics held fixed, no dropout; plus the weight penalties if
        ``regularization=True``), at ``w0 + offsets``. The per-batch products are summed in
        float64 in one compiled batch loop, traced once per split and mode; the normalizers
        Dₖ (which do not depend on the weights) are computed once per split.

        Args:
            vector: v, a ``Direction`` (its trainable entries are used; missing ones are zero)
                or one array per entry of ``self.trainable_variables``.
            offsets: Where to take the Hessian, as in ``evaluate``. Defaults to None (at w0).
            split: ``"train"`` or ``"test"``. Defaults to ``"train"``.
            mode: ``"backward_over_backward"`` differentiates the scalar ``∇L · v`` with a
                second ``GradientTape`` around the first (the backward pass is recorded and
                reversed once more). ``"forward_over_backward"`` pushes v through the gradient
                computation with ``tf.autodiff.ForwardAccumulator`` around a ``GradientTape``:
                the textbook choice (about twice a gradient in JAX), but TensorFlow computes
                most forward-mode rules by the double-VJP trick, so here it is the slower one:
                on the CNN with BatchNorm of ``benchmarks/hessian.py`` 2.3–2.5× a gradient
                for backward-over-backward against 2.5–2.7× (interleaved medians). Both give
                the same product to rounding. Defaults to ``"backward_over_backward"``, the
                faster measured.

        Returns:
            ``H v`` as float64 tensors aligned with ``self.trainable_variables``.
        """
        _checks.choice("mode", mode, HVPMode)
        vector = self._trainable_vector(vector)
        scales = self._normalizers(split)
        try:
            return _finite_product(
                self._hvp_fn(split, mode)(*self._offset_args(offsets), vector, scales), "Hessian"
            )
        except TypeError as error:
            if mode != "forward_over_backward":
                raise
            raise ValueError(
                "Argument `mode='forward_over_backward'` cannot differentiate this model: "
                "TensorFlow's forward-mode accumulator fails inside it (e.g. the tf.while_loop "
                "of an RNN layer); use mode='backward_over_backward' (the default), which is "
                "exact here."
            ) from error

    def gauss_newton_vector_product(
        self, vector, offsets=None, *, split: Split = "train"
    ) -> list[tf.Tensor]:
        """The exact product ``G v`` of the generalized Gauss-Newton matrix G = Jᵀ H_ℓ J.

        J is the Jacobian of the model's outputs (at the split, below) w.r.t. the trainable
        weights and H_ℓ the Hessian of the loss w.r.t. them: G drops the term of H that holds
        the outputs' own second derivatives, Σ (∂ℓ/∂f) ∇²f, so it is positive semi-definite
        when ℓ is convex in the split variables. The loss is the one ``evaluate`` reports —
        the data-set-wide Σₖ λₖ Nₖ/Dₖ with sample weights, masks (``ignore_class``,
        propagated Keras masks at the outputs) and ``loss_weights`` of several outputs — at
        ``w0 + offsets`` in inference mode; the per-batch products J v (forward mode,
        ``tf.autodiff.ForwardAccumulator``), H_ℓ (J v) (two reverse passes through the loss
        only) and Jᵀ(H_ℓ J v) (one reverse pass) are summed in float64 in one compiled batch
        loop per split, traced once. With ``regularization=True`` the penalties' own Hessian
        (2λI for L2, PSD) is added.

        Where G is defined (every compiled output loss must be one of these, else a
        ValueError): mean squared error, and sparse / categorical / binary cross-entropy.
        With ``from_logits=True`` the split is at the outputs. For a cross-entropy on
        probabilities p (softmax or sigmoid outputs) the split is at the logits a, as the
        GGN is usually defined (Martens 2014, §9; then G is the Fisher matrix): Keras's loss
        is not convex in p (it renormalizes p), so a split at p is not PSD. The logits are
        recovered from p as z = log p (softmax: z = a up to a per-sample constant that the
        softmax ignores, and J_zᵀ H J_z = J_aᵀ (diag p − p pᵀ) J_a exactly) or
        z = log p − log(1 − p) (sigmoid: z = a), with J_z v = (J v) / p or (J v) / (p(1 − p))
        and H the Hessian of Keras's own loss at softmax(z) or sigmoid(z). Such an output must
        hold probabilities (checked on the first batch) and carry no Keras mask. A model's own
        ``compute_loss`` override is refused (its dependence on the outputs cannot be seen).

        Args:
            vector: v, a ``Direction`` (its trainable entries; missing ones are zero) or one
                array per entry of ``self.trainable_variables``.
            offsets: Where to take G, as in ``evaluate``. Defaults to None (at w0).
            split: ``"train"`` or ``"test"``. Defaults to ``"train"``.

        Returns:
            ``G v`` as float64 tensors aligned with ``self.trainable_variables``.

        Raises:
            ValueError: a loss outside the list above, or an output split at its logits that
                does not hold probabilities or carries a mask (one sentence naming
                ``curvature='ggn'``); a ``vector`` of the wrong length or shapes.

        References:
            Schraudolph 2002, "Fast curvature matrix-vector products for second-order
            gradient descent", Neural Computation 14(7).
            Martens 2014, "New insights and perspectives on the natural gradient method",
            https://arxiv.org/abs/1412.1193.
        """
        vector = self._trainable_vector(vector)
        scales = self._normalizers(split)
        product = self._ggn_fn(split)(*self._offset_args(offsets), vector, scales)
        return _finite_product(product, "Gauss-Newton")

    def _trainable_vector(self, vector) -> list[tf.Tensor]:
        """A ``Direction`` or one array per trainable variable as tensors of their analysis
        dtypes, checked against the variables' number and shapes."""
        if isinstance(vector, Direction):
            by_id = dict(zip(map(id, self.variables), vector.aligned(self.variables)))
            vector = [by_id[id(v)] for v in self.trainable_variables]
        if len(vector) != len(self.trainable_variables):
            raise ValueError(
                f"Argument `vector` has {len(vector)} entries; the objective has "
                f"{len(self.trainable_variables)} trainable variables."
            )
        dtypes = [self._dtypes[i] for i in self._trainable_slots()]
        vector = [tf.cast(a, d) for a, d in zip(vector, dtypes)]
        for a, v in zip(vector, self.trainable_variables):
            if tuple(a.shape) != tuple(v.shape):
                raise ValueError(
                    f"Argument `vector` has shape {tuple(a.shape)} for {v.path}; the variable "
                    f"has shape {tuple(v.shape)}."
                )
        return vector
