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
assigned, so they stay bit-identical, also when evaluation raises. The batch loops are the
engine's of Keras's backend (``Objective(...)`` returns the backend's subclass): on TensorFlow
one compiled loop per data split and entry point (``landscape._tf_engine``, a ``tf.function``
traced once), on JAX and PyTorch a compiled function per batch whose sums are added on the host
in float64 (``landscape._portable``; ``jax.jit``; PyTorch eagerly, as Keras runs it, or its
forward passes through ``torch.compile`` where the model was compiled with
``jit_compile=True``, Keras's own opt-in); both serve the values, the gradient and exact
Hessian- and Gauss-Newton-vector products, and build the offset of a point on the device as
δ = Σₖ αₖ dₖ.

Metrics are the model's compiled metrics (``metrics="auto"``), evaluated through Keras's own
metric objects in the same loop (stateless: the model's metric state is not touched).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from landscape import _checks, _model_checks, _reach, _terms
from landscape._checks import HVPMode, Precision, Split
from landscape._forms import describe, model_inputs
from landscape._staging import Staging
from landscape.directions import (
    Direction,
    ModelVariables,
    fingerprint_arrays,
    float_variables,
    storage_dtype,
)
from sam import _compat
from sam._backend import adapter

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

    tensors: tuple[Any, ...]
    k: int


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

    def value_dtype(self, variable) -> str:
        """The dtype ``variable`` is read in during the analysis."""
        dtype = keras.backend.standardize_dtype(variable.dtype)
        if self.requested == "auto" and dtype in LOW_PRECISIONS:
            dtype = "float32"
        elif self.requested in ("float32", "float64"):
            dtype = self.requested
        return dtype

    def check_outputs(self, y_pred) -> None:
        """Outputs narrower than the layers' dtype (the model's own casts) lower ``name`` to
        theirs, with a warning."""
        dtypes = {keras.backend.standardize_dtype(t.dtype) for t in keras.tree.flatten(y_pred)}
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
def _numpy_dtype(dtype) -> np.dtype | None:
    """float32 / float64 as NumPy's; None for the 16-bit floats, which TensorFlow may round
    through float32 (so the Objective rounds them itself)."""
    name = keras.backend.standardize_dtype(dtype)
    return np.dtype(name) if name in ("float32", "float64") else None


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
        self._starts = [0, *self._bounds.tolist()]
        self.n = int(sum(self.sizes))
        self._dtypes = [_numpy_dtype(d) for d in objective._dtypes]
        # the variables outside δ (not trainable), which get zero offsets
        trainable = set(self._slots)
        self._fixed = [i for i in range(len(objective.variables)) if i not in trainable]

    @property
    def w0(self) -> np.ndarray:
        return self.weights()

    def weights(self, out: np.ndarray | None = None) -> np.ndarray:
        """The current weights as one float64 vector of shape (n,), into ``out`` where given
        (a reused float64 buffer, as ``concat``)."""
        return self.concat([v.value for v in self.objective.trainable_variables], out=out)

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """A flat vector of shape (n,) as arrays (views) aligned with the trainable variables;
        float32 stays float32 (a stored Lanczos vector: widening it would copy n entries for
        nothing, the engine rounds to the variables' dtype anyway), anything else float64."""
        flat = np.asarray(flat)
        if flat.dtype not in (np.float32, np.float64):
            flat = flat.astype(np.float64)
        flat = flat.reshape(-1)
        if flat.size != self.n:
            raise ValueError(f"Expected a flat vector of {self.n} entries; got {flat.size}.")
        parts = np.split(flat, self._bounds)
        return [p.reshape(s) for p, s in zip(parts, self.shapes)]

    def concat(self, arrays: Sequence, out: np.ndarray | None = None) -> np.ndarray:
        """Arrays aligned with the trainable variables as one float64 vector of shape (n,),
        written into ``out`` where given (a float64 buffer of n entries, reused by the caller:
        at ResNet-50 size a fresh 190 MB array costs its page faults, about 0.2 s)."""
        out = np.empty(self.n, np.float64) if out is None else out
        host = adapter().host_view
        for a, start, size in zip(arrays, self._starts, self.sizes):
            out[start : start + size] = np.asarray(host(a)).reshape(-1)
        return out

    def offsets(self, delta: np.ndarray) -> list:
        """Offsets for ``Objective.evaluate``: δ on the trainable variables (rounded once to
        the dtype the analysis reads each in, as the Objective would round them), zero
        elsewhere."""
        variables = self.objective.variables
        out: list = [None] * len(variables)
        for i in self._fixed:  # fresh zeros (only for these: ResNet-50's 106 of its 320)
            out[i] = np.zeros(variables[i].shape, np.float64)
        staging = self.objective._staging
        for slot, part in zip(self._slots, self.split(delta)):
            dtype = self._dtypes[slot]
            if dtype is None:
                out[slot] = part
            else:  # the numbers of part.astype(dtype), in a buffer the engine may borrow
                out[slot] = staging.get(part.shape, dtype)
                np.copyto(out[slot], part, casting="unsafe")  # as astype
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
def _zeros(shape: list, dtype: np.dtype):
    """Zeros of ``shape``: a backend tensor for a float dtype (its allocator reuses memory,
    where fresh NumPy zeros of ResNet-50's size page-fault: ``evaluate()`` at w0 took 143 ms
    with them, its compiled function 93 ms given the backend's), else NumPy."""
    return keras.ops.zeros(shape, dtype.name) if dtype.kind == "f" else np.zeros(shape, dtype)


def _finite_product(product: list, what: str) -> list:
    """``product`` if every entry is finite, else one sentence: a curvature that the backend's
    autodiff cannot give here (NaN where the loss and gradient are finite)."""
    arrays = [keras.ops.convert_to_numpy(p) for p in product]
    total = sum(a.size for a in arrays)
    bad = total - sum(int(np.count_nonzero(np.isfinite(a))) for a in arrays)
    if bad:
        raise ValueError(
            f"The {what}-vector product is not finite ({bad} of {total} entries are NaN or "
            f"inf): the second derivative that Keras's {keras.backend.backend()} backend "
            "computes of the model or its loss is undefined at "
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


class _ModelRunner:
    """How ``Objective`` runs the model at offset weights, on every backend: the analysis
    precision, the StatelessScope, the loss terms and metric state (a mixin; the batch loops
    are the engines' own: ``landscape._tf_engine``, ``landscape._portable``)."""

    @property
    def _n_loss(self) -> int:
        """The number of (N, D) loss terms: the loss's, then the model's own losses if used."""
        return self._loss.n_pairs + int(self._with_model_losses)

    def _n_pairs(self, with_metrics: bool) -> int:
        return self._n_loss + (len(self._pair_metrics) if with_metrics else 0)

    def _metric_state(self):
        if self._keras_metrics is None:
            return ()
        return tuple(
            keras.ops.convert_to_tensor(v) for v in self._keras_metrics.stateless_reset_state()
        )

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
            keras.backend.standardize_dtype(d) == keras.backend.standardize_dtype(v.dtype)
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
        values = [keras.ops.cast(v.value, d) for v, d in zip(self.variables, self._dtypes)]
        with adapter().no_grad(), self._model_scope(values, reads) as scope:
            y_pred = self.model(x, training=False)
            if added is not None:
                added.extend(scope.losses)
            return y_pred

    def _scope(self, values):
        """The StatelessScope in which the variables read as ``values`` (analysis dtypes); it
        collects the losses the model adds in its call."""
        mapping = list(zip(self.variables, values))
        if self._keeps_dtypes and not _cheap_scope(mapping):
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

    def _trainable_slots(self) -> list[int]:
        """Indices in ``self.variables`` of the trainable variables, in order."""
        trainable = {id(v) for v in self.trainable_variables}
        return [i for i, v in enumerate(self.variables) if id(v) in trainable]

    def _count(self, key: str) -> None:
        self.trace_count[key] = self.trace_count.get(key, 0) + 1


def _cheap_scope(mapping) -> bool:
    """Whether the values of ``mapping`` can go into a StatelessScope as they are: off
    TensorFlow (compiled there, the scope costs only at trace time), every value a tensor of
    its variable's dtype. ``keras.StatelessScope`` converts and checks each value at every entry,
    which costs PyTorch's eager loop about 0.06 ms per batch on a 19-variable model."""
    if keras.backend.backend() == "tensorflow":
        return False
    standardize = keras.backend.standardize_dtype
    return all(
        keras.ops.is_tensor(value) and standardize(value.dtype) == standardize(v.dtype)
        for v, value in mapping
    )


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
            wide = _terms._wide()
            ours = self._loss.combine(keras.ops.stack([keras.ops.cast(t, wide) for t in pairs]))
        except (ValueError, TypeError, KeyError, *adapter().errors) as error:
            if isinstance(error, _terms.Refusal):
                raise
            weights = "" if w is None else f" and sample_weight is {describe(w)}"
            raise ValueError(
                f"Argument `data` does not fit the loss: y is {describe(y)}{weights} but the "
                f"model's outputs are {describe(y_pred)} ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''})."
            ) from error
        ours = float(keras.ops.convert_to_numpy(ours["loss"]))  # PyTorch: detached
        self._with_model_losses = self._model_losses and bool(added) and self._loss.n_pairs > 0
        self._with_model_losses &= isinstance(self._loss, _terms.CompiledLoss)
        _model_checks.reach(self, x, reads)
        _model_checks.finite_loss(
            ours + sum(float(keras.ops.convert_to_numpy(a)) for a in added), x
        )
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
        if keras.tree.is_nested(y_pred) and len(keras.tree.flatten(y_pred)) > 1 and metrics:
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


class Objective(_Construction, _GaussNewtonLoop, _ModelRunner):
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

    def __new__(cls, *args, **kwargs):
        """An ``Objective`` of the engine of Keras's backend: ``landscape._tf_engine`` on
        TensorFlow, ``landscape._portable`` on JAX and PyTorch (same API, same numbers)."""
        return super().__new__(_engine_class(cls))

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
        # aligned host buffers for the engine's inputs, shared with the copies this Objective
        # makes (``with_data``, ``batches``, ``with_precision``): landscape/_staging.py
        self._staging = Staging()
        self.regularization = regularization
        self.batch_size = batch_size
        self.steps = steps
        self.variables = float_variables(model, "all")
        trainable = {id(v) for v in model.trainable_variables}
        pairs = [(v, k) for v, k in zip(self.variables, self.variables.paths) if id(v) in trainable]
        self.trainable_variables = ModelVariables([v for v, _ in pairs], [k for _, k in pairs])
        self._set_precision(precision)
        self._splits: dict[str, Any] = {
            "train": self._split_class(data, self.batch_size, steps, "data")
        }
        if test_data is not None:
            self._splits["test"] = self._split_class(test_data, self.batch_size, steps, "test_data")
        self._loss = _terms.resolve_loss(model, loss)
        self.loss_name = self._loss.name
        self._pair_metrics: dict[str, Callable] = {}
        self._keras_metrics: keras.metrics.Metric | None = None
        self._keras_metric_names: tuple[str, ...] = ()
        self._probe(metrics, loss)
        self._ggn_split_cache: tuple[str, ...] | None = None
        self._fresh_functions()

    def _fresh_functions(self) -> None:
        """No compiled function, trace, normalizer or counted pass yet (a new Objective, or a
        copy that computes differently)."""
        self._value_fns: dict[str, Any] = {}
        self._grad_fns: dict[str, Any] = {}
        self._hvp_fns: dict[tuple[str, str], Any] = {}
        self._ggn_fns: dict[str, Any] = {}
        self._scales: dict[str, Any] = {}
        self.trace_count: dict[str, int] = {}
        #: passes over the data made so far, by kind: ``"forward"`` (``evaluate``,
        #: ``evaluate_at`` and the normalizers' one pass per split), ``"gradient"``, ``"hvp"``,
        #: ``"ggn"``; each is one pass over a split's data (over one batch for the Objectives
        #: of ``batches``, whose passes also count here)
        self.passes: collections.Counter = collections.Counter()
        self._parent_passes: collections.Counter | None = None
        # compiled functions the Objectives of ``batches`` share (traced once for all batches)
        self._batch_fns: dict = {}
        self._batch_traces: dict[str, int] = {}
        self._flat: FlatView | None = None

    # ----------------------------------------------------------------------------- properties
    @property
    def backend(self) -> str:
        """The Keras backend the Objective computes on: ``"tensorflow"``, ``"jax"`` or
        ``"torch"`` (surface files and results record it)."""
        return keras.backend.backend()

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
        sub._fresh_functions()  # traced per split: not shared
        size = batch_size or self.batch_size
        sub._splits = {"train": self._split_class(data, size, None, "data")}
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
        sub._fresh_functions()
        sub._ggn_split_cache = None
        x, _, _ = sub._splits["train"].first_batch(min(sub.batch_size, 64))
        sub._precision.check_outputs(sub._run_model(x))
        return sub

    def batches(self, batch_size: int, *, max_batches: int | None = None) -> Iterator[Objective]:
        """Objectives on consecutive batches of ``batch_size`` training samples (m-sharpness).

        Each has the same model, loss and metrics; the last batch may be smaller. They share
        one compiled function per entry point, traced on the first batch that uses it and kept
        by this Objective for later calls (on TensorFlow each batch's tensors are arguments of
        the ``tf.function``, not captured in it); their passes count in ``self.passes`` too.
        """
        for i, (x, y, w) in enumerate(self._split("train").batches(batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            sub = self.with_data((x, y) if w is None else (x, y, w), batch_size=batch_size)
            sub._share_batch_functions(self)
            yield sub

    def _share_batch_functions(self, parent: Objective) -> None:
        """Use ``parent``'s compiled per-batch functions and count passes in its counter."""
        self._batch_fns, self.trace_count = parent._batch_fns, parent._batch_traces
        self._parent_passes = parent.passes
        self._splits["train"].share_functions()

    def _count_pass(self, kind: str) -> None:
        self.passes[kind] += 1
        if self._parent_passes is not None:
            self._parent_passes[kind] += 1

    def basis(self, directions: Sequence[Direction]) -> Basis:
        """Stack ``directions`` into device tensors aligned with ``self.variables`` (once)."""
        if not directions:
            raise ValueError("Argument `directions` must contain at least one Direction.")
        aligned = [d.aligned(self.variables) for d in directions]
        _model_checks.zero_directions(self, aligned, "directions")
        for arrays in aligned:
            _model_checks.check_offsets(self, arrays, "directions")
        stacked = [
            np.stack([a[i] for a in aligned]).astype(storage_dtype(v))
            for i, v in enumerate(self.variables)
        ]
        return Basis(self._tensors(stacked, self._dtypes), len(directions))

    # ---------------------------------------------------------------------- the batch loop
    def _split(self, split: str):
        if split not in self._splits:
            raise ValueError(f"Unknown split {split!r}; expected one of {self.splits}.")
        return self._splits[split]

    def _offset_args(self, offsets):
        """(coefficients [1.0], basis) of ``w0 + offsets`` for the engines' functions; at w0
        (``offsets`` None) the engine's ``_w0_offset_args``, made once per set of dtypes."""
        if offsets is None:
            key = tuple(str(d) for d in self._dtypes)
            cached = self.__dict__.get("_w0_args")
            if cached is None or cached[0] != key:
                self._w0_args = (key, self._w0_offset_args())
            return self._w0_args[1]
        if isinstance(offsets, Direction):
            offsets = offsets.aligned(self.variables)
        if len(offsets) != len(self.variables):
            raise ValueError(
                f"Argument `offsets` has {len(offsets)} entries; the objective has "
                f"{len(self.variables)} variables (see `Objective.variables`)."
            )
        _model_checks.check_offsets(self, offsets, "offsets")
        # an array's leading axis as a view: one conversion to a tensor (in _tensors)
        stacked = [o[None] if isinstance(o, np.ndarray) else keras.ops.expand_dims(o, 0)
                   for o in offsets]  # fmt: skip
        return self._coefficients(np.ones(1)), list(self._tensors(stacked, self._dtypes))

    def _w0_offset_args(self):
        """The arguments of a zero offset: one term of float zeros from the backend's
        allocator, which reuses memory (``_tf_engine`` passes an empty basis instead)."""
        stacked = [_zeros([1, *v.shape], storage_dtype(v)) for v in self.variables]
        return self._coefficients(np.ones(1)), list(self._tensors(stacked, self._dtypes))

    # -- conversions to the engine's tensors (``_tf_engine`` keeps TensorFlow's own) ---------

    @staticmethod
    def _tensors(arrays, dtypes) -> tuple:
        """Arrays (or tensors) as the backend's tensors of ``dtypes``."""
        return tuple(
            keras.ops.cast(keras.ops.convert_to_tensor(a), d) for a, d in zip(arrays, dtypes)
        )

    @staticmethod
    def _coefficients(coefficients: np.ndarray):
        """A float64 coefficient vector for the engine's functions (NumPy off TensorFlow)."""
        return np.asarray(coefficients, np.float64).reshape(-1)

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
        self._count_pass("forward")
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
        coefficients = self._coefficients(np.asarray(coefficients, np.float64).reshape(-1))
        if int(coefficients.shape[0]) != basis.k:
            raise ValueError(
                f"Got {int(coefficients.shape[0])} coefficients for {basis.k} directions."
            )
        self._count_pass("forward")
        return self._to_float(self._value_fn(split)(coefficients, list(basis.tensors))[0])

    def value_and_gradient(
        self, offsets=None, *, split: Split = "train"
    ) -> tuple[dict[str, float], list]:
        """Loss/metrics and the gradient of the loss at ``w0 + offsets``.

        Returns:
            ``(values, gradients)``: gradients aligned with ``self.trainable_variables``, of the
            same data-set-wide loss that ``evaluate`` reports (float64 accumulation), in the
            dtype the variables are read in (their own, or float64 for
            ``precision="float64"``).
        """
        self._count_pass("gradient")
        values, grads = self._grad_fn(split)(*self._offset_args(offsets))
        return self._to_float(values), grads

    def hessian_vector_product(
        self,
        vector,
        offsets=None,
        *,
        split: Split = "train",
        mode: HVPMode = "auto",
    ) -> list:
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
                the same product to rounding. ``"auto"``: the faster measured on this backend
                (``benchmarks/hessian.py``, ``benchmarks/backends.py``): backward-over-backward
                on TensorFlow and PyTorch (double backward; ``torch.func``'s forward mode lacks
                rules for some layers, e.g. int8 ``Dense``), forward-over-backward on JAX
                (``jax.jvp`` of ``jax.grad``: 1.5–3.7× faster than reverse-over-reverse there).
                Defaults to ``"auto"``.

        Returns:
            ``H v`` as float64 tensors aligned with ``self.trainable_variables``.
        """
        _checks.choice("mode", mode, HVPMode)
        if mode == "auto":
            mode = adapter().HVP_MODE
        vector = self._trainable_vector(vector)
        scales = self._normalizers(split)
        self._count_pass("hvp")
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

    def gauss_newton_vector_product(self, vector, offsets=None, *, split: Split = "train") -> list:
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
        self._count_pass("ggn")
        product = self._ggn_fn(split)(*self._offset_args(offsets), vector, scales)
        return _finite_product(product, "Gauss-Newton")

    def _trainable_vector(self, vector) -> list:
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
        vector = list(self._tensors(vector, dtypes))
        for a, v in zip(vector, self.trainable_variables):
            if tuple(a.shape) != tuple(v.shape):
                raise ValueError(
                    f"Argument `vector` has shape {tuple(a.shape)} for {v.path}; the variable "
                    f"has shape {tuple(v.shape)}."
                )
        return vector


_ENGINES: dict[tuple[str, type], type] = {}


def _engine_class(base: type) -> type:
    """``base`` (``Objective`` or a user's subclass) with the batch loops of this process's
    Keras backend: the engine module's mixins before it (the engines import no ``objective``).
    ``Objective`` itself becomes ``TFObjective`` or ``PortableObjective``; a subclass keeps
    its name."""
    backend = keras.backend.backend()
    key = (backend, base)
    if key not in _ENGINES:
        adapter()  # one ImportError sentence where the backend's library is missing
        if backend == "tensorflow":
            from landscape import _tf_engine as engine

            name = "TFObjective"
        else:
            from landscape import _portable as engine

            name = "PortableObjective"
        if issubclass(base, engine.MIXINS[0]):  # already an engine's class
            return base
        if base is Objective:
            cls = type(name, (*engine.MIXINS, base), {"__module__": engine.__name__})
            setattr(engine, name, cls)  # importable by name, so that pickle finds it
        else:
            cls = type(base.__name__, (*engine.MIXINS, base), {"__module__": base.__module__})
            cls.__qualname__ = base.__qualname__
        _ENGINES[key] = cls
    return _ENGINES[key]
