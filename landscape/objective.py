"""The loss as a function of the weights: the one evaluator of ``landscape``.

``Objective(model, data)`` evaluates, for an offset δ aligned with the model's variables,

    L(w0 + δ) = Σᵢ sᵢ ℓ(f(xᵢ; w0 + δ), yᵢ) / D,      acc(w0 + δ) = Σᵢ sᵢ [ŷᵢ = yᵢ] / Σᵢ sᵢ

over the whole data set (sᵢ the sample weights, D = the number of samples as in Keras's default
"sum_over_batch_size" reduction, or Σᵢ sᵢ for a loss with "mean_with_sample_weight"), with the
sums accumulated in float64 and the model in inference mode (BatchNorm moving statistics, no
dropout). The offset is applied through ``keras.StatelessScope``: the model's variables are never
assigned, so they stay bit-identical, also when evaluation raises.

The Hessian-vector product ``H(w0 + δ) v`` of the same loss (``hessian_vector_product``) is
computed exactly, by backward-over-backward (default) or forward-over-backward differentiation,
in the same kind of batch loop.

One ``tf.function`` per data split and entry point is traced once; every later point reuses the
graph. The offset of a point is built on the device as δ = Σₖ αₖ dₖ from the coefficients α and a
basis of directions that is converted to tensors once per surface.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import keras
import numpy as np
import tensorflow as tf

from landscape.directions import Direction, fingerprint_arrays, float_variables

logger = logging.getLogger("landscape")

Split = Literal["train", "test"]
HVPMode = Literal["forward_over_backward", "backward_over_backward"]
HVP_MODES = ("forward_over_backward", "backward_over_backward")
_ACCURACY_NAMES = ("accuracy", "acc")


@dataclass(frozen=True)
class Basis:
    """Directions converted to stacked device tensors ``[k, *variable.shape]``, one per variable."""

    tensors: tuple[tf.Tensor, ...]
    k: int


def _unpack(batch):
    if isinstance(batch, Mapping) or not isinstance(batch, tuple | list):
        raise ValueError(
            "Argument `data` must be (x, y) or (x, y, sample_weight) or a tf.data.Dataset of "
            f"such batches. Received: {type(batch).__name__}."
        )
    if len(batch) == 2:
        return batch[0], batch[1], None
    if len(batch) == 3:
        return tuple(batch)
    raise ValueError(
        f"Argument `data` must have 2 or 3 entries (x, y[, sample_weight]). Received {len(batch)}."
    )


class _Split:
    """One data set: device tensors sliced in a graph loop, or a batched tf.data.Dataset."""

    def __init__(self, data, batch_size: int):
        self.dataset = None
        if isinstance(data, tf.data.Dataset):
            self.dataset = data
            self.n = None
            return
        x, y, w = _unpack(data)
        self.x = tf.nest.map_structure(tf.convert_to_tensor, x)
        self.y = tf.convert_to_tensor(y)
        n = int(tf.nest.flatten(self.x)[0].shape[0])
        if int(self.y.shape[0]) != n:
            raise ValueError(f"x has {n} samples but y has {int(self.y.shape[0])}.")
        if n == 0:
            raise ValueError("Argument `data` is empty.")
        self.w = None if w is None else tf.reshape(tf.convert_to_tensor(w, tf.float64), [-1])
        if self.w is not None and int(self.w.shape[0]) != n:
            raise ValueError(f"x has {n} samples but sample_weight has {int(self.w.shape[0])}.")
        self.n = n
        self.batch_size = batch_size
        self.n_batches = -(-n // batch_size)

    def reduce(self, init, body):
        """state ← body(state, x, y, w) over all batches; w may be None."""
        if self.dataset is not None:

            def step(state, batch):
                x, y, w = _unpack(batch)
                return body(state, x, y, w)

            return self.dataset.reduce(init, step)

        bs = self.batch_size

        def loop_body(i, state):
            start = i * bs

            def take(t):
                return t[start : start + bs]

            x = tf.nest.map_structure(take, self.x)
            w = None if self.w is None else take(self.w)
            return i + 1, body(state, x, take(self.y), w)

        _, state = tf.while_loop(
            lambda i, _: i < self.n_batches,
            loop_body,
            (tf.constant(0), init),
            parallel_iterations=1,
        )
        return state


def _resolve_loss(model: keras.Model, loss) -> tuple[Callable, bool, str]:
    """(per-sample loss function, divide by Σ weights?, name)."""
    if loss is None:
        loss = getattr(model, "loss", None)
        if loss is None:
            raise ValueError(
                "Argument `loss` is None and the model is not compiled with a loss; pass `loss=`."
            )
        if isinstance(loss, list | tuple | dict):
            raise ValueError(
                "The model is compiled with several losses; pass a single `loss=` to Objective."
            )
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        by_weight = loss.reduction == "mean_with_sample_weight"
        obj = loss

        def per_sample(y_true, y_pred):
            y_pred = tf.cast(y_pred, obj.dtype)
            if y_true.dtype.is_floating:
                y_true = tf.cast(y_true, obj.dtype)
            return obj.call(y_true, y_pred)

        return per_sample, by_weight, loss.name
    if callable(loss):
        return loss, False, getattr(loss, "__name__", type(loss).__name__)
    raise ValueError(f"Argument `loss` must be None, a name, a keras Loss or a callable: {loss!r}.")


def _from_logits(loss) -> bool:
    return bool(getattr(loss, "from_logits", False))


def _accuracy(threshold: float) -> Callable:
    def accuracy(y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        if y_pred.shape.rank == 1 or y_pred.shape[-1] == 1:  # binary
            p = tf.reshape(y_pred, [-1]) > tf.cast(threshold, y_pred.dtype)
            t = tf.reshape(tf.cast(y_true, tf.float32), [-1]) > 0.5
            return tf.cast(tf.equal(p, t), tf.float64)
        pred = tf.argmax(y_pred, axis=-1)
        if y_true.shape.rank == y_pred.shape.rank and y_true.shape[-1] == y_pred.shape[-1]:
            true = tf.argmax(y_true, axis=-1)  # one-hot
        else:
            true = tf.cast(tf.reshape(y_true, tf.shape(pred)), tf.int64)
        return tf.cast(tf.equal(pred, true), tf.float64)

    return accuracy


def _per_sample(values, n) -> tf.Tensor:
    """Per-sample float64 values of shape [n]: trailing axes averaged, a scalar broadcast."""
    values = tf.cast(values, tf.float64)
    if values.shape.rank == 0:
        return tf.fill([n], values)
    if values.shape.rank > 1:
        values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
    return values


def _compiled(python_function, signature):
    """``tf.function`` with a fixed signature: one trace per Objective and split.

    TensorFlow keys its "frequent retracing" warning by the code object, so several Objectives
    (each tracing its own closure once) would trigger it wrongly; ``trace_count`` is the check.
    """
    fn = tf.function(python_function, input_signature=signature, autograph=False)
    fn._omit_frequent_tracing_warning = True  # private TF flag; harmless if ignored
    return fn


class Objective:
    """The loss (and metrics) of a model over a data set, as a function of its weights.

    Args:
        model: A built Keras model; its current weights are w0.
        data: ``(x, y)`` or ``(x, y, sample_weight)`` arrays, or a ``tf.data.Dataset`` yielding
            such batches.
        loss: None for the model's compiled loss, a Keras loss name or object, or a callable
            ``loss(y_true, y_pred)`` returning per-sample values (a scalar is taken as the
            batch mean). Defaults to None.
        batch_size: Batch size for array data. Defaults to 256.
        metrics: Metric names or callables ``fn(y_true, y_pred) -> per-sample values``.
            ``"accuracy"`` (reported as ``"acc"``) handles sparse labels, one-hot labels and a
            single output unit (threshold 0.5, or 0 when the loss has ``from_logits=True``).
            Defaults to ``("accuracy",)``.
        test_data: An optional second data set in the same forms as ``data``, evaluated with
            ``split="test"``. Defaults to None.

        regularization: Add the weight-regularization penalties of the trainable variables
            (the ``kernel_regularizer``/``bias_regularizer`` terms of ``model.losses``, e.g.
            λ‖w‖² for an L2 regularizer, which adds 2λI to the Hessian) to the loss, at the
            evaluated weights. Activity regularizers and other ``add_loss`` terms are never
            included. Defaults to False: the loss is the data term only (``model.evaluate``
            does add the penalties), so that surfaces and spectra show the loss itself.

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
        metrics: Sequence[str | Callable] = ("accuracy",),
        test_data=None,
        regularization: bool = False,
    ):
        if not model.built:
            raise ValueError("Argument `model` must be built (call it once or give it an input).")
        if not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise ValueError(
                f"Argument `batch_size` must be a positive int. Received: {batch_size}."
            )
        self.model = model
        if not isinstance(regularization, bool):
            raise ValueError(
                "Argument `regularization` must be a bool. "
                f"Received: regularization={regularization!r}."
            )
        self.regularization = regularization
        self.batch_size = int(batch_size)
        self.variables = float_variables(model, "all")
        trainable = {id(v) for v in model.trainable_variables}
        self.trainable_variables = [v for v in self.variables if id(v) in trainable]
        self._loss_fn, self._by_weight, self.loss_name = _resolve_loss(model, loss)
        loss_obj = loss if loss is not None else getattr(model, "loss", None)
        self._metric_fns: dict[str, Callable] = {}
        for m in metrics:
            if isinstance(m, str) and m in _ACCURACY_NAMES:
                self._metric_fns["acc"] = _accuracy(0.0 if _from_logits(loss_obj) else 0.5)
            elif isinstance(m, str):
                raise ValueError(f"Unknown metric {m!r}; expected 'accuracy' or a callable.")
            elif callable(m):
                self._metric_fns[getattr(m, "__name__", type(m).__name__)] = m
            else:
                raise ValueError(f"Argument `metrics` entries must be names or callables: {m!r}.")
        self._splits: dict[str, _Split] = {"train": _Split(data, self.batch_size)}
        if test_data is not None:
            self._splits["test"] = _Split(test_data, self.batch_size)
        self._value_fns: dict[str, Any] = {}
        self._grad_fns: dict[str, Any] = {}
        self._hvp_fns: dict[tuple[str, str], Any] = {}
        self.trace_count: dict[str, int] = {}

    # ----------------------------------------------------------------------------- properties
    @property
    def splits(self) -> tuple[str, ...]:
        """The data splits: ``("train",)`` or ``("train", "test")``."""
        return tuple(self._splits)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Keys of ``evaluate``'s result: ``"loss"`` then the metrics (e.g. ``"acc"``)."""
        return ("loss", *self._metric_fns)

    def weights_fingerprint(self) -> str:
        """SHA-256 of the current weights (all floating-point variables, in order)."""
        return fingerprint_arrays(keras.ops.convert_to_numpy(v.value) for v in self.variables)

    def data_fingerprint(self) -> str | None:
        """SHA-256 of the array data of every split, or None if a split is a tf.data.Dataset."""
        arrays = []
        for split in self._splits.values():
            if split.dataset is not None:
                return None
            parts = [*tf.nest.flatten(split.x), split.y] + ([] if split.w is None else [split.w])
            arrays += [keras.ops.convert_to_numpy(t) for t in parts]
        return fingerprint_arrays(arrays)

    def with_data(self, data, *, batch_size: int | None = None) -> Objective:
        """The same model, loss, metrics and options on other (training) data.

        The copy has its own compiled functions (traced on first use) and no test split; the
        original is untouched. ``worst_case_sharpness`` uses it for per-batch m-sharpness.
        """
        sub = copy.copy(self)
        sub._value_fns, sub._grad_fns, sub._hvp_fns = {}, {}, {}  # traced per split: not shared
        sub.trace_count = {}
        sub._splits = {"train": _Split(data, batch_size or self.batch_size)}
        return sub

    def basis(self, directions: Sequence[Direction]) -> Basis:
        """Stack ``directions`` into device tensors aligned with ``self.variables`` (once)."""
        if not directions:
            raise ValueError("Argument `directions` must contain at least one Direction.")
        aligned = [d.aligned(self.variables) for d in directions]
        tensors = tuple(
            tf.constant(np.stack([a[i] for a in aligned]).astype(v.dtype))
            for i, v in enumerate(self.variables)
        )
        return Basis(tensors, len(directions))

    # --------------------------------------------------------------------------- evaluation
    def _split(self, split: str) -> _Split:
        if split not in self._splits:
            raise ValueError(f"Unknown split {split!r}; expected one of {self.splits}.")
        return self._splits[split]

    def _batch_terms(self, x, y, w, y_pred):
        """Float64 [Σ sᵢℓᵢ, Σ sᵢ, n, Σ sᵢ mᵢ ...] for one batch."""
        n = tf.shape(y_pred)[0]
        s = tf.ones([n], tf.float64) if w is None else tf.cast(w, tf.float64)
        terms = [
            tf.reduce_sum(s * _per_sample(self._loss_fn(y, y_pred), n)),
            tf.reduce_sum(s),
            tf.cast(n, tf.float64),
        ]
        for fn in self._metric_fns.values():
            terms.append(tf.reduce_sum(s * _per_sample(fn(y, y_pred), n)))
        return tf.stack(terms)

    def _batch_loss(self, y, w, y_pred):
        """Float64 [Σ sᵢℓᵢ, Σ sᵢ, n] for one batch (the loss terms of ``_batch_terms``)."""
        n = tf.shape(y_pred)[0]
        s = tf.ones([n], tf.float64) if w is None else tf.cast(w, tf.float64)
        return tf.stack(
            [
                tf.reduce_sum(s * _per_sample(self._loss_fn(y, y_pred), n)),
                tf.reduce_sum(s),
                tf.cast(n, tf.float64),
            ]
        )

    def _penalty(self, values) -> tf.Tensor:
        """Float64 Σ regularizer(w) over trainable variables, at ``values`` (one per variable)."""
        total = tf.constant(0.0, tf.float64)
        if not self.regularization:
            return total
        trainable = {id(v) for v in self.trainable_variables}
        for v, value in zip(self.variables, values):
            regularizer = getattr(v, "regularizer", None)
            if regularizer is not None and id(v) in trainable:
                total += tf.cast(regularizer(value), tf.float64)
        return total

    def _finish(self, totals, penalty=None) -> dict[str, tf.Tensor]:
        loss_den = totals[1] if self._by_weight else totals[2]
        out = {"loss": totals[0] / loss_den}
        if penalty is not None:
            out["loss"] += penalty
        for i, name in enumerate(self._metric_fns):
            out[name] = totals[3 + i] / totals[1]
        return out

    def _mapping(self, coefficients, basis):
        mapping = []
        for v, b in zip(self.variables, basis):
            offset = tf.tensordot(tf.cast(coefficients, b.dtype), b, axes=1)
            mapping.append((v, v.value + offset))
        return mapping

    def _signature(self):
        return [
            tf.TensorSpec([None], tf.float64),
            [tf.TensorSpec([None, *v.shape], v.dtype) for v in self.variables],
        ]

    def _value_fn(self, split: str):
        fn = self._value_fns.get(split)
        if fn is not None:
            return fn
        data = self._split(split)
        n_terms = 3 + len(self._metric_fns)

        def value(coefficients, basis):
            self.trace_count[split] = self.trace_count.get(split, 0) + 1
            mapping = self._mapping(coefficients, basis)
            with keras.StatelessScope(state_mapping=mapping):

                def body(totals, x, y, w):
                    y_pred = self.model(x, training=False)
                    return totals + self._batch_terms(x, y, w, y_pred)

                totals = data.reduce(tf.zeros([n_terms], tf.float64), body)
            penalty = self._penalty([m for _, m in mapping]) if self.regularization else None
            return self._finish(totals, penalty)

        fn = _compiled(value, self._signature())
        self._value_fns[split] = fn
        return fn

    def _grad_fn(self, split: str):
        fn = self._grad_fns.get(split)
        if fn is not None:
            return fn
        data = self._split(split)
        n_terms = 3 + len(self._metric_fns)
        trainable_ids = {id(v) for v in self.trainable_variables}
        trainable = [i for i, v in enumerate(self.variables) if id(v) in trainable_ids]

        def value_and_grad(coefficients, basis):
            key = f"{split}/gradient"
            self.trace_count[key] = self.trace_count.get(key, 0) + 1
            mapping = self._mapping(coefficients, basis)
            grads0 = tuple(tf.zeros(self.variables[i].shape, tf.float64) for i in trainable)

            def body(state, x, y, w):
                totals, grads = state
                # Identities inside the loop body, so that the tape sees the body's own tensors.
                values = [tf.identity(m) for _, m in mapping]
                with tf.GradientTape() as tape:
                    watched = [values[i] for i in trainable]
                    tape.watch(watched)
                    scope_map = [(v, values[i]) for i, (v, _) in enumerate(mapping)]
                    with keras.StatelessScope(state_mapping=scope_map):
                        y_pred = self.model(x, training=False)
                    terms = self._batch_terms(x, y, w, y_pred)
                    loss_sum = terms[0]  # sliced inside the tape, so that it is recorded
                g = tape.gradient(loss_sum, watched, unconnected_gradients="zero")
                grads = tuple(a + tf.cast(b, tf.float64) for a, b in zip(grads, g))
                return totals + terms, grads

            totals, grads = data.reduce((tf.zeros([n_terms], tf.float64), grads0), body)
            den = totals[1] if self._by_weight else totals[2]
            grads = [g / den for g in grads]
            penalty = None
            if self.regularization:
                values = [tf.identity(m) for _, m in mapping]
                with tf.GradientTape() as tape:
                    watched = [values[i] for i in trainable]
                    tape.watch(watched)
                    penalty = self._penalty(values)
                extra = tape.gradient(penalty, watched, unconnected_gradients="zero")
                grads = [g + tf.cast(e, tf.float64) for g, e in zip(grads, extra)]
            out = self._finish(totals, penalty)
            return out, [tf.cast(g, self.variables[i].dtype) for g, i in zip(grads, trainable)]

        fn = _compiled(value_and_grad, self._signature())
        self._grad_fns[split] = fn
        return fn

    def _hvp_fn(self, split: str, mode: str):
        fn = self._hvp_fns.get((split, mode))
        if fn is not None:
            return fn
        data = self._split(split)
        trainable_ids = {id(v) for v in self.trainable_variables}
        trainable = [i for i, v in enumerate(self.variables) if id(v) in trainable_ids]

        def hvp_of(loss_of_values, values, vectors):
            """H v for the scalar ``loss_of_values(values)``, w.r.t. the trainable entries."""
            watched = [values[i] for i in trainable]
            if mode == "forward_over_backward":
                # The accumulator pushes v forward through the forward *and* the backward pass:
                # the tangent of g = ∇L(w) along v is H v.
                with tf.autodiff.ForwardAccumulator(watched, vectors) as acc:
                    with tf.GradientTape() as tape:
                        tape.watch(watched)
                        loss, aux = loss_of_values(values)
                    g = tape.gradient(loss, watched, unconnected_gradients="zero")
                hv = acc.jvp(g, unconnected_gradients="zero")
            else:
                # H v = ∇(∇L(w) · v), the gradient of a scalar: two reverse passes.
                with tf.GradientTape() as outer:
                    outer.watch(watched)
                    with tf.GradientTape() as inner:
                        inner.watch(watched)
                        loss, aux = loss_of_values(values)
                    g = inner.gradient(loss, watched, unconnected_gradients="zero")
                    g = [tf.convert_to_tensor(a) for a in g]  # IndexedSlices of embeddings
                    gv = tf.add_n(
                        [tf.reduce_sum(a * tf.cast(b, a.dtype)) for a, b in zip(g, vectors)]
                    )
                hv = outer.gradient(gv, watched, unconnected_gradients="zero")
            return aux, [tf.cast(tf.convert_to_tensor(h), tf.float64) for h in hv]

        def hvp(coefficients, basis, vectors):
            key = f"{split}/hvp/{mode}"
            self.trace_count[key] = self.trace_count.get(key, 0) + 1
            mapping = self._mapping(coefficients, basis)
            hv0 = tuple(tf.zeros(self.variables[i].shape, tf.float64) for i in trainable)

            def body(state, x, y, w):
                totals, acc_hv = state
                # Identities inside the loop body, so that the tapes see the body's own tensors.
                values = [tf.identity(m) for _, m in mapping]

                def batch_loss(vals):
                    scope_map = [(v, t) for (v, _), t in zip(mapping, vals)]
                    with keras.StatelessScope(state_mapping=scope_map):
                        y_pred = self.model(x, training=False)
                    terms = self._batch_loss(y, w, y_pred)
                    return terms[0], terms  # sliced inside the tape, so that it is recorded

                terms, hv = hvp_of(batch_loss, values, list(vectors))
                return totals + terms, tuple(a + b for a, b in zip(acc_hv, hv))

            totals, hv = data.reduce((tf.zeros([3], tf.float64), hv0), body)
            den = totals[1] if self._by_weight else totals[2]
            hv = [h / den for h in hv]
            if self.regularization:
                values = [tf.identity(m) for _, m in mapping]

                def penalty(vals):
                    return self._penalty(vals), tf.zeros([])

                _, extra = hvp_of(penalty, values, list(vectors))
                hv = [a + b for a, b in zip(hv, extra)]
            return hv

        signature = [
            *self._signature(),
            [tf.TensorSpec(self.variables[i].shape, self.variables[i].dtype) for i in trainable],
        ]
        fn = _compiled(hvp, signature)
        self._hvp_fns[(split, mode)] = fn
        return fn

    def _offset_args(self, offsets):
        if offsets is None:
            basis = [tf.zeros([1, *v.shape], v.dtype) for v in self.variables]
        else:
            if isinstance(offsets, Direction):
                offsets = offsets.aligned(self.variables)
            if len(offsets) != len(self.variables):
                raise ValueError(
                    f"Argument `offsets` has {len(offsets)} entries; the objective has "
                    f"{len(self.variables)} variables (see `Objective.variables`)."
                )
            basis = [
                tf.expand_dims(tf.cast(o, v.dtype), 0) for o, v in zip(offsets, self.variables)
            ]
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
            ``{"loss": ..., "acc": ...}`` as Python floats.
        """
        return self._to_float(self._value_fn(split)(*self._offset_args(offsets)))

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
        return self._to_float(self._value_fn(split)(coefficients, list(basis.tensors)))

    def value_and_gradient(
        self, offsets=None, *, split: Split = "train"
    ) -> tuple[dict[str, float], list[tf.Tensor]]:
        """Loss/metrics and the gradient of the loss at ``w0 + offsets``.

        Returns:
            ``(values, gradients)``: gradients aligned with ``self.trainable_variables``, of the
            same data-set-wide loss that ``evaluate`` reports (float64 accumulation).
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

        H is the Hessian of the same data-set-wide, sample-weighted loss that ``evaluate``
        reports (inference mode: BatchNorm moving statistics held fixed, no dropout; plus the
        weight penalties if ``regularization=True``), at ``w0 + offsets``. The per-batch
        products are summed in float64 in one compiled batch loop, traced once per split and
        mode.

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
        if mode not in HVP_MODES:
            raise ValueError(f"Unknown mode {mode!r}; expected one of {HVP_MODES}.")
        if isinstance(vector, Direction):
            by_id = dict(zip(map(id, self.variables), vector.aligned(self.variables)))
            vector = [by_id[id(v)] for v in self.trainable_variables]
        if len(vector) != len(self.trainable_variables):
            raise ValueError(
                f"Argument `vector` has {len(vector)} entries; the objective has "
                f"{len(self.trainable_variables)} trainable variables."
            )
        vector = [tf.cast(a, v.dtype) for a, v in zip(vector, self.trainable_variables)]
        for a, v in zip(vector, self.trainable_variables):
            if tuple(a.shape) != tuple(v.shape):
                raise ValueError(
                    f"Argument `vector` has shape {tuple(a.shape)} for {v.path}; the variable "
                    f"has shape {tuple(v.shape)}."
                )
        return self._hvp_fn(split, mode)(*self._offset_args(offsets), vector)
