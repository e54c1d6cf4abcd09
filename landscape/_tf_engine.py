"""The Objective's compiled batch loops on TensorFlow (``Objective`` dispatches here when Keras
runs on TensorFlow): one ``tf.function`` per split and entry point over ``tf.data`` or a
``tf.while_loop`` of device slices, float64 sums on the device, tapes and
``tf.autodiff.ForwardAccumulator``. The JAX and PyTorch engine is ``landscape._portable``.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from landscape import _terms
from landscape._batches import DataSplit
from sam import _compat


def _compiled(python_function, signature):
    """``tf.function`` with a fixed signature: one trace per Objective and split.

    TensorFlow keys its "frequent retracing" warning by the code object, so several Objectives
    (each tracing its own closure once) would trigger it wrongly; ``trace_count`` is the check.
    """
    fn = tf.function(python_function, input_signature=signature, autograph=False)
    _compat.omit_frequent_tracing_warning(fn)
    return _compat.flat_call(fn)  # no per-call binding of the arguments to the signature


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


def _logit_view(p: tf.Tensor, split: str) -> tuple[tf.Tensor, tf.Tensor]:
    """(z, dz/dp): the logits a softmax / sigmoid output p was computed from, and the
    elementwise derivative of z(p); log p is the logits up to a per-sample constant, which the
    softmax ignores. Entries with p = 0 (underflow) have dp/dw = 0 too and get dz/dp = 0."""
    tiny = tf.constant(np.finfo(p.dtype.as_numpy_dtype).tiny, p.dtype)
    if split == "softmax":
        return tf.math.log(tf.maximum(p, tiny)), tf.math.divide_no_nan(tf.ones_like(p), p)
    z = tf.math.log(tf.maximum(p, tiny)) - tf.math.log(tf.maximum(1.0 - p, tiny))
    return z, tf.math.divide_no_nan(tf.ones_like(p), p * (1.0 - p))


class TFBatchLoop:
    """The one compiled batch loop of ``Objective``: values, gradients and HVPs at w0 + δ.

    Every entry point runs the model in a ``keras.StatelessScope`` at the offset weights over
    the batches of a split (``DataSplit.reduce``) and sums float64 (N, D) pairs per loss term
    (``landscape._terms``); one ``tf.function`` per split and entry point, traced once. The
    model runs in the analysis precision (``_set_precision``): its layers' policies switched
    while it is traced, its variables read in ``self._dtypes``.
    """

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

    def _traced(self, cache: dict, key, split: str, python_function, signature):
        """``python_function`` compiled once as ``cache[key]``.

        The split of an Objective of ``Objective.batches`` holds one batch whose tensors are
        the function's last argument (``batch``), so every batch of the parent runs one trace
        (kept in ``self._batch_fns``, which the batches share); other splits are captured in
        their function (``batch`` is empty).
        """
        data = self._split(split)
        if not data.fed:
            fn = cache[key] = _compiled(python_function, signature)
            return fn
        shared = (python_function.__name__, key, data.spec_key)
        fn = self._batch_fns.get(shared)
        if fn is None:
            fn = self._batch_fns[shared] = _compiled(python_function, [*signature, data.specs])
        batch = data.args

        def bound(*args):
            return fn(*args, batch)

        cache[key] = bound
        return bound

    @staticmethod
    def _reduce(data, batch):
        """The fold over the batches: the split's own loop, or the one batch given."""
        if not batch:
            return data.reduce
        x, y, *w = batch
        return lambda init, body: body(init, x, y, w[0] if w else None)

    def _value_fn(self, split: str):
        fn = self._value_fns.get(split)
        if fn is not None:
            return fn
        data = self._split(split)
        n_terms = 2 * self._n_pairs(True)

        def value(coefficients, basis, batch=()):
            self._count(split)
            values = self._values(coefficients, basis)

            def body(state, x, y, w):
                sums, metric_state = state
                pairs, y_pred = self._forward(values, x, y, w, True)
                return sums + pairs, self._update_metrics(metric_state, y, y_pred, w)

            init = (tf.zeros([n_terms], tf.float64), self._metric_state())
            sums, metric_state = self._reduce(data, batch)(init, body)
            penalty = self._penalty(values) if self.regularization else None
            return self._finish(sums, metric_state, penalty), sums

        return self._traced(self._value_fns, split, split, value, self._signature())

    def _grad_fn(self, split: str):
        fn = self._grad_fns.get(split)
        if fn is not None:
            return fn
        data = self._split(split)
        n_terms = 2 * self._n_pairs(True)
        slots = self._trainable_slots()

        def value_and_grad(coefficients, basis, batch=()):
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
            sums, metric_state, grads = self._reduce(data, batch)(init, body)
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

        return self._traced(self._grad_fns, split, split, value_and_grad, self._signature())

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

        def hvp(coefficients, basis, vectors, scales, batch=()):
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

            _, hv = self._reduce(data, batch)((tf.zeros([2 * n_loss], tf.float64), hv0), body)
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
        return self._traced(self._hvp_fns, (split, mode), split, hvp, signature)

    def _normalizers(self, split: str) -> tf.Tensor:
        """λₖ / Dₖ of the loss terms on ``split`` (they do not depend on the weights)."""
        scales = self._scales.get(split)
        if scales is None:
            self._count_pass("forward")
            _, sums = self._value_fn(split)(*self._offset_args(None))
            scales = self._scales[split] = self._term_scales(sums)
        return scales

    # --------------------------------------------------------------------------- public API


class TFGaussNewtonLoop:
    """The Gauss-Newton products on TensorFlow (see ``Objective.gauss_newton_vector_product``)."""

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

        def ggn(coefficients, basis, vectors, scales, batch=()):
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

            gv = list(self._reduce(data, batch)(gv0, body))
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
        return self._traced(self._ggn_fns, split, split, ggn, signature)


#: the dtypes whose host arrays TensorFlow borrows (NumPy has no bfloat16 of its own), and the
#: least size worth a staging buffer (smaller arrays: ``tf.constant``, as fast)
_BORROWED = (np.dtype(np.float32), np.dtype(np.float64))
_BORROW_BYTES = 1 << 14


class TFConversions:
    """The TensorFlow engine's data, dtypes and tensors (``DataSplit``; ``tf.DType``s)."""

    _split_class = DataSplit

    def _set_precision(self, precision) -> None:
        super()._set_precision(precision)
        self._dtypes = [tf.as_dtype(d) for d in self._dtypes]

    def _tensors(self, arrays, dtypes) -> tuple:
        return tuple(tf.cast(self._borrowed(a) if isinstance(a, np.ndarray) else a, d)
                     for a, d in zip(arrays, dtypes))  # fmt: skip

    def _borrowed(self, array: np.ndarray) -> tf.Tensor:
        """A tensor of ``array``'s values. A large float array is staged (landscape/_staging.py:
        itself where it is a writeable staging buffer, else copied into a fresh aligned array)
        and lent to TensorFlow through DLPack, which takes aligned host memory without a copy,
        where ``tf.constant`` copied it twice (an MLP's 23.1 M offsets: 87 ms against 12 ms for
        the cast into a staging buffer and the loan)."""
        if array.dtype not in _BORROWED or array.nbytes < _BORROW_BYTES:
            return tf.constant(array)
        return tf.experimental.dlpack.from_dlpack(self._staging.staged(array).__dlpack__())

    @staticmethod
    def _coefficients(coefficients: np.ndarray):
        return tf.constant(np.asarray(coefficients, np.float64).reshape(-1))

    def _w0_offset_args(self):
        """At w0: no coefficient and an empty basis (k = 0, which the signature's
        ``[None, ...]`` takes without a trace), so the function adds zeros made in the graph:
        w + 0 = w, the numbers of a one-term zero offset, without building n zeros on the host
        and multiplying them (ResNet-50, 64 images: the compiled forward pass took 52 ms given
        k = 0 against 67 ms given a zero offset, and the zeros 18 ms)."""
        empty = [tf.zeros([0, *v.shape], d) for v, d in zip(self.variables, self._dtypes)]
        return tf.zeros([0], tf.float64), empty


#: The engine's mixins, in the order ``Objective`` puts them before itself.
MIXINS = (TFConversions, TFGaussNewtonLoop, TFBatchLoop)
