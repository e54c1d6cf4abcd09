"""The Objective's engine on Keras's JAX and PyTorch backends (``Objective`` dispatches here).

The same loss, metrics, offsets and products as the TensorFlow engine (``landscape._tf_engine``),
written with ``keras.ops`` and the backend's autodiff (``sam._backend``): each batch runs in one
compiled function (``jax.jit``; PyTorch eagerly) and the per-batch sums are accumulated on the
host in float64 NumPy. A batch's own sums are in the model's float dtype (float32 on JAX, whose
64-bit types need ``jax_enable_x64``), as Keras's own ``evaluate`` computes them; so the
data-set-wide loss, gradient and products carry float32 rounding per batch and float64 across
batches. ``precision="float64"`` is refused on these backends: Keras computes some ops' 64-bit
results in 32 bits there (``keras/src/backend/common/dtypes.py``).

The data (arrays, ``tf.data.Dataset`` where TensorFlow is installed, ``keras.utils.PyDataset``,
a PyTorch ``DataLoader``) is read in NumPy batches: arrays sliced on the host, anything else
through Keras's own data adapters (``sam._compat.numpy_batches``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import keras
import numpy as np

from landscape import _terms
from landscape._forms import sample_count, unpack
from sam import _compat
from sam._backend import adapter

ops = keras.ops


def _numpy(t) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t))


def _is_arrays(data) -> bool:
    return isinstance(data, tuple | list)


class PortableSplit:
    """One data set as host NumPy batches: arrays sliced in order, or another source's batches
    (``tf.data``, ``PyDataset``, ``DataLoader``) read through Keras's data adapters."""

    #: whether the split's Objective uses its parent's compiled functions (``share_functions``)
    shared = False

    def __init__(self, data, batch_size: int, steps: int | None, argument: str):
        self.batch_size = batch_size
        self.steps = steps
        self.argument = argument
        self.source = None
        self.n = None
        if not _is_arrays(data):
            _check_source(data, steps, argument)
            self.source = data
            first = next(self._source_batches(), None)
            if first is None:
                raise ValueError(f"Argument `{argument}` is an empty dataset.")
            return
        x, y, w = unpack(data, argument)
        self.x = keras.tree.map_structure(_dense_numpy, x)
        self.y = keras.tree.map_structure(_dense_numpy, y)
        self.w = None if w is None else keras.tree.map_structure(_dense_numpy, w)
        self.n = sample_count(self.x, self.y, self.w, argument, x)
        self.n_batches = -(-self.n // batch_size)

    def _source_batches(self) -> Iterator[tuple]:
        for i, batch in enumerate(_compat.numpy_batches(self.source, self.steps)):
            if self.steps is not None and i >= self.steps:
                return
            x, y, w = unpack(batch, self.argument)
            yield x, y, w

    def iterate(self) -> Iterator[tuple]:
        """The (x, y, w) batches of the split, in order (w may be None)."""
        if self.source is not None:
            yield from self._source_batches()
            return
        yield from self.batches(self.batch_size)

    def share_functions(self) -> None:
        """Let the split's Objective run its parent's compiled per-batch functions (the data
        are their arguments on these backends): ``Objective.batches``."""
        self.shared = True

    @property
    def single_batch(self) -> bool:
        if self.source is not None:
            batches = self._source_batches()
            next(batches, None)
            return next(batches, None) is None
        return self.n_batches == 1

    def first_batch(self, size: int):
        if self.source is not None:
            return next(self._source_batches())
        return self._rows(0, size)

    def probe_batch(self, size: int):
        if self.source is None:
            return self.first_batch(size)
        parts, count = [], 0
        for batch in self._source_batches():
            parts.append(batch)
            count += len(keras.tree.flatten(batch[0])[0])
            if count >= size:
                break
        try:
            return tuple(
                None if part[0] is None else keras.tree.map_structure(_joined, *part)
                for part in zip(*parts)
            )
        except (ValueError, TypeError):
            return parts[0]

    def _rows(self, start: int, size: int):
        def take(a):
            return a[start : start + size]

        return tuple(
            None if part is None else keras.tree.map_structure(take, part)
            for part in (self.x, self.y, self.w)
        )

    def batches(self, size: int) -> Iterator[tuple]:
        """Consecutive (x, y, w) slices of ``size`` samples."""
        if self.source is not None:
            whole = self.probe_batch(np.iinfo(np.int64).max)
            n = len(keras.tree.flatten(whole[0])[0])
            for start in range(0, n, size):
                yield tuple(
                    None
                    if p is None
                    else keras.tree.map_structure(lambda a, s=start: a[s : s + size], p)
                    for p in whole
                )
            return
        for start in range(0, self.n, size):
            yield self._rows(start, size)

    def arrays(self) -> list[np.ndarray] | None:
        if self.source is not None:
            return None
        parts = keras.tree.flatten(self.x) + keras.tree.flatten(self.y)
        return parts + ([] if self.w is None else keras.tree.flatten(self.w))


def _check_source(data, steps: int | None, argument: str) -> None:
    """Refuse a dataset that never ends without ``steps=``, and one that draws another order
    on every pass (each pass of an analysis must see the same data), in one sentence each."""
    if isinstance(data, keras.utils.PyDataset):
        if data.num_batches is None and steps is None:
            raise ValueError(
                f"Argument `{argument}` is a PyDataset with no length (`num_batches` is None); "
                "pass `steps=` to say how many batches the objective covers."
            )
        return
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(data, tf.data.Dataset):
        if int(data.cardinality()) == int(tf.data.INFINITE_CARDINALITY) and steps is None:
            raise ValueError(
                f"Argument `{argument}` is an infinite tf.data.Dataset (it ends in "
                "`.repeat()`); drop the `.repeat()` or pass `steps=` (the number of batches "
                "the objective covers)."
            )
        return
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(data, torch.utils.data.DataLoader):
        if isinstance(data.sampler, torch.utils.data.RandomSampler):
            raise ValueError(
                f"Argument `{argument}` is a DataLoader that shuffles (a RandomSampler draws "
                "another order on every pass, and with `steps=` other samples), but every "
                "pass of an analysis must see the same data: build it with shuffle=False."
            )
        try:
            len(data)
        except TypeError:
            if steps is None:
                raise ValueError(
                    f"Argument `{argument}` is a DataLoader with no length (an "
                    "IterableDataset); pass `steps=` to say how many batches the objective "
                    "covers."
                ) from None
        return
    if steps is None and not hasattr(data, "__len__"):
        raise ValueError(
            f"Argument `{argument}` is a {type(data).__name__} with no length; pass `steps=` "
            "to say how many batches the objective covers."
        )


def _dense_numpy(a) -> np.ndarray:
    if hasattr(a, "toarray"):  # a SciPy sparse matrix
        return np.asarray(a.toarray())
    return _numpy(a)


def _joined(*arrays):
    return np.concatenate([_numpy(a) for a in arrays], 0)


class PortableEngine:
    """The batch loops of ``Objective`` on JAX and PyTorch (a mixin before ``Objective``)."""

    _split_class = PortableSplit

    def _set_precision(self, precision) -> None:
        if precision == "float64":
            raise ValueError(
                f"Argument `precision` cannot be 'float64' on Keras's {keras.backend.backend()} "
                "backend: Keras computes some ops' 64-bit results in 32 bits there "
                "(keras/src/backend/common/dtypes.py), so the analysis would not be float64 "
                "throughout; use precision='auto' (the sums over batches are float64 "
                "anyway), or the TensorFlow backend. Received: precision='float64'."
            )
        super()._set_precision(precision)

    # -- one batch, backend-free -----------------------------------------------------------

    def _batch_pairs(self, x, y, w, y_pred, with_metrics: bool, added=()):
        """[N₁, D₁, ...] of one batch in the widest float of the backend (``_terms._wide``)."""
        wide = _terms._wide()
        terms = list(self._loss.pairs(x, y, w, y_pred))
        if self._with_model_losses:
            n = ops.cast(ops.shape(keras.tree.flatten(y_pred)[0])[0], wide)
            total = sum(ops.cast(a, wide) for a in added) if added else ops.zeros((), wide)
            terms += [total * n, n]
        if with_metrics:
            for fn in self._pair_metrics.values():
                terms.extend(fn(y, y_pred, w))
        return ops.stack([ops.cast(t, wide) for t in terms])

    def _forward(self, values, x, y, w, with_metrics: bool):
        with self._model_scope(values) as scope:
            y_pred = self.model(x, training=False)
            return self._batch_pairs(x, y, w, y_pred, with_metrics, scope.losses), y_pred

    def _penalized(self) -> bool:
        """Whether ``regularization=True`` adds a term that depends on the weights: a trainable
        variable with a regularizer. Without one the penalty is the constant 0, and PyTorch's
        autograd refuses to differentiate a tensor that does not depend on its inputs."""
        trainable = {id(v) for v in self.trainable_variables}
        return self.regularization and any(
            getattr(v, "regularizer", None) is not None and id(v) in trainable
            for v in self.variables
        )

    def _penalty(self, values):
        total = ops.zeros((), _terms._wide())
        trainable = {id(v) for v in self.trainable_variables}
        for v, value in zip(self.variables, values):
            regularizer = getattr(v, "regularizer", None)
            if regularizer is not None and id(v) in trainable:
                total = total + ops.cast(regularizer(value), total.dtype)
        return total

    def _values(self, coefficients, basis) -> list:
        """w0 + Σₖ cₖ bₖ of every variable, in one compiled call (eagerly, the five operations
        per variable cost more than a forward pass of a small model on JAX)."""
        offset = self._compiled(("values",), _offset_values, jit_compile=self._jit_compile())
        with adapter().no_grad():  # constants: PyTorch would record a graph of the trainables
            return offset([v.value for v in self.variables], coefficients, list(basis))

    # -- the fold over batches on the host (float64) ----------------------------------------

    def _compiled(self, key, fn, jit_compile: bool = False):
        # one dict of compiled per-batch functions; the Objectives of ``Objective.batches``
        # share their parent's (``_batch_fns``), so every batch runs the same jitted function
        cache = self._batch_fns if self._splits["train"].shared else self._value_fns
        if key not in cache:
            cache[key] = adapter().compile(fn, jit_compile=jit_compile)
        return cache[key]

    def _jit_compile(self) -> bool:
        """Keras's opt-in to a compiler where the backend runs eagerly by default: the model
        compiled with ``jit_compile=True`` (PyTorch: ``torch.compile``, as Keras's trainer)."""
        return getattr(self.model, "jit_compile", False) is True

    def _finish_np(self, sums: np.ndarray, metric_state, penalty=None) -> dict[str, float]:
        """The loss Σₖ λₖ Nₖ/Dₖ (and its parts, the metrics) from float64 sums."""
        out: dict[str, float] = {}
        weights = self._term_weights()
        terms = [_ratio(sums[2 * k], sums[2 * k + 1]) for k in range(self._loss.n_pairs)]
        out["loss"] = sum(lam * t for lam, t in zip(weights, terms))
        if isinstance(self._loss, _terms.CompiledLoss) and len(self._loss.flat) > 1:
            for term, value in zip(self._loss.flat, terms):
                out[f"{term.name}_loss"] = value
        k = 2 * self._n_loss
        if self._with_model_losses:
            out["loss"] += _ratio(sums[k - 2], sums[k - 1])
        if penalty is not None:
            out["loss"] += penalty
        for i, name in enumerate(self._pair_metrics):
            out[name] = _ratio(sums[k + 2 * i], sums[k + 2 * i + 1])
        if self._keras_metrics is not None:
            result = self._keras_metrics.stateless_result(list(metric_state))
            for name in self._keras_metric_names:
                out[_terms.short_name(name)] = float(_numpy(result[name]))
        return out

    def _term_weights(self) -> list[float]:
        if isinstance(self._loss, _terms.CompiledLoss):
            return [1.0 if t.weight is None else float(t.weight) for t in self._loss.flat]
        return [1.0]

    def _term_scales(self, sums: np.ndarray) -> np.ndarray:
        """λₖ / Dₖ for each loss term (float64): L = Σₖ scaleₖ · Nₖ."""
        weights = self._term_weights() + [1.0] * int(self._with_model_losses)
        return np.array([_ratio(lam, sums[2 * k + 1]) for k, lam in enumerate(weights)])

    def _value_fn(self, split: str):
        data = self._split(split)

        def batch(values, x, y, w, metric_state):
            pairs, y_pred = self._forward(values, x, y, w, True)
            return pairs, self._update_metrics(metric_state, y, y_pred, w)

        step = self._compiled(("value", split), batch, jit_compile=self._jit_compile())

        def value(coefficients, basis):
            self._count(split)
            values = self._values(coefficients, basis)
            sums, state = _HostSum([np.zeros(2 * self._n_pairs(True))]), self._metric_state()
            for x, y, w in data.iterate():
                pairs, state = step(values, x, y, w, state)
                sums.add([pairs])
            sums = sums.result()[0]
            penalty = float(_numpy(self._penalty(values))) if self.regularization else None
            return self._finish_np(sums, state, penalty), sums

        return value

    def _scalar_of(self, x, y, w, scales, slots, values, with_metrics=False):
        """f(trainable values) -> (Σₖ scaleₖ Nₖ of the batch, (pairs, y_pred))."""
        n_loss = self._n_loss

        def f(trainable):
            pairs, y_pred = self._forward(_with(values, slots, trainable), x, y, w, with_metrics)
            numerators = ops.stack([pairs[2 * k] for k in range(n_loss)])
            return ops.sum(ops.cast(scales, numerators.dtype) * numerators), (pairs, y_pred)

        return f

    def _grad_fn(self, split: str):
        data, slots, back = self._split(split), self._trainable_slots(), adapter()

        def batch(values, x, y, w, metric_state, scales):
            f = self._scalar_of(x, y, w, scales, slots, values, True)
            _, (pairs, y_pred), grads = back.value_and_grad(f, [values[i] for i in slots])
            return pairs, self._update_metrics(metric_state, y, y_pred, w), grads

        step = self._compiled(("grad", split), batch)

        def value_and_grad(coefficients, basis):
            self._count(f"{split}/gradient")
            scales = self._normalizers(split)
            values, wide = self._values(coefficients, basis), _as_wide(scales)
            state = self._metric_state()
            fold = _HostSum([np.zeros(2 * self._n_pairs(True))] + self._zeros(slots))
            for x, y, w in data.iterate():
                pairs, state, grads = step(values, x, y, w, state, wide)
                fold.add([pairs, *grads])
            sums, *total = fold.result()
            penalty = None
            if self.regularization:
                penalty, extra = self._penalty_grad(values, slots)
                total = [t + e for t, e in zip(total, extra)]
            out = self._finish_np(sums, state, penalty)
            dtypes = [self._dtypes[i] for i in slots]
            return out, [
                t.astype(keras.backend.standardize_dtype(d)) for t, d in zip(total, dtypes)
            ]

        return value_and_grad

    def _zeros(self, slots) -> list[np.ndarray]:
        return [np.zeros(self.variables[i].shape) for i in slots]

    def _penalty_grad(self, values, slots):
        if not self._penalized():
            return 0.0, [np.zeros(self.variables[i].shape) for i in slots]

        f = self._penalty_of(values, slots)
        value, _, grads = adapter().value_and_grad(f, [values[i] for i in slots])
        return float(_numpy(value)), [_numpy(g).astype(np.float64) for g in grads]

    def _hvp_fn(self, split: str, mode: str):
        data, slots, back = self._split(split), self._trainable_slots(), adapter()

        def batch(values, x, y, w, scales, vectors):
            f = self._scalar_of(x, y, w, scales, slots, values)
            (pairs, _), hv = back.hvp(f, [values[i] for i in slots], vectors, mode)
            return pairs, hv

        step = self._compiled(("hvp", split, mode), batch)

        def hvp(coefficients, basis, vectors, scales):
            self._count(f"{split}/hvp/{mode}")
            values, wide = self._values(coefficients, basis), _as_wide(scales)
            total = _HostSum(self._zeros(slots))
            for x, y, w in data.iterate():
                try:
                    _, hv = step(values, x, y, w, wide, vectors)
                except back.second_order_errors as error:
                    raise _no_second_derivative(error, f"mode={mode!r}") from error
                total.add(hv)
            total = total.result()
            if self._penalized():
                total = self._plus_penalty_hvp(total, values, slots, vectors, mode)
            return total

        return hvp

    def _plus_penalty_hvp(self, total, values, slots, vectors, mode) -> list:
        """``total`` + the weight penalties' Hessian times the vectors (float64)."""

        penalty = self._penalty_of(values, slots)
        _, extra = adapter().hvp(penalty, [values[i] for i in slots], list(vectors), mode)
        return [t + _numpy(e).astype(np.float64) for t, e in zip(total, extra)]

    def _penalty_of(self, values, slots):
        """f(trainable values) -> (the weight penalties, no aux), the rest held at ``values``."""
        return lambda trainable: (self._penalty(_with(values, slots, trainable)), ())

    def _normalizers(self, split: str) -> np.ndarray:
        scales = self._scales.get(split)
        if scales is None:
            self._count_pass("forward")
            _, sums = self._value_fn(split)(*self._offset_args(None))
            scales = self._scales[split] = self._term_scales(sums)
        return scales

    def _ggn_fn(self, split: str):
        data, slots, back = self._split(split), self._trainable_slots(), adapter()
        splits = self._ggn_splits()
        x0, _, _ = self._splits["train"].first_batch(min(self.batch_size, 64))
        self._output_structure = keras.tree.map_structure(lambda _: 0, self._run_model(x0))

        def batch(values, x, y, w, scales, vectors):
            trainable = [values[i] for i in slots]

            def outputs(t):
                with self._model_scope(_with(values, slots, t)):
                    return keras.tree.flatten(self.model(x, training=False))

            outs, jv = back.jvp(outputs, trainable, list(vectors))
            hu = self._loss_hessian_product(x, y, w, outs, jv, scales, splits)
            return back.vjp(outputs, trainable, hu)

        step = self._compiled(("ggn", split), batch)

        def ggn(coefficients, basis, vectors, scales):
            self._count(f"{split}/ggn")
            values, wide = self._values(coefficients, basis), _as_wide(scales)
            total = _HostSum(self._zeros(slots))
            for x, y, w in data.iterate():
                try:
                    gv = step(values, x, y, w, wide, vectors)
                except back.second_order_errors as error:
                    raise _no_second_derivative(error, "curvature='ggn'") from error
                total.add(gv)
            total = total.result()
            if self._penalized():  # the penalties' own Hessian (PSD for L1/L2)
                mode = "backward_over_backward"
                total = self._plus_penalty_hvp(total, values, slots, vectors, mode)
            return total

        return ggn

    def _loss_hessian_product(self, x, y, w, outputs, jv, scales, splits) -> list:
        """(dz/dp) ⊙ ∇²_z ℓ u of one batch, u = (dz/dp) ⊙ J v (see the TensorFlow engine)."""
        n_loss = self._loss.n_pairs
        zs, dz = [], []
        for out, split in zip(outputs, splits):
            if split == "outputs":
                zs.append(out)
                dz.append(None)
            else:
                z, d = _logit_view(ops.stop_gradient(out), split)
                zs.append(z)
                dz.append(d)
        us = [u if d is None else u * d for u, d in zip(jv, dz)]
        structure = self._output_structure

        def loss_of(z):
            preds = [
                zi if s == "outputs" else (ops.softmax(zi) if s == "softmax" else ops.sigmoid(zi))
                for zi, s in zip(z, splits)
            ]
            y_pred = keras.tree.pack_sequence_as(structure, preds)
            pairs = self._loss.pairs(x, y, w, y_pred)
            numerators = ops.stack([ops.cast(pairs[2 * k], _terms._wide()) for k in range(n_loss)])
            return ops.sum(ops.cast(scales[:n_loss], numerators.dtype) * numerators), ()

        _, h = adapter().hvp(loss_of, zs, us, "backward_over_backward")
        return [a if d is None else a * d for a, d in zip(h, dz)]


class _HostSum:
    """Float64 sums on the host of lists of per-batch device tensors, one batch behind: batch
    k is copied to the host after batch k + 1 has been dispatched, so on an asynchronous backend
    (JAX) the copy and the sum overlap the device's work on the next batch. The additions run
    in the batches' order, as a sum in the loop would."""

    def __init__(self, zeros: list[np.ndarray]):
        self._total, self._pending = zeros, None

    def add(self, parts: list) -> None:
        if self._pending is not None:
            self._fold(self._pending)
        self._pending = parts

    def result(self) -> list[np.ndarray]:
        if self._pending is not None:
            self._fold(self._pending)
            self._pending = None
        return self._total

    def _fold(self, parts) -> None:
        self._total = [t + _numpy(p).astype(np.float64) for t, p in zip(self._total, parts)]


def _offset_values(w0, coefficients, basis) -> list:
    coefficients = ops.convert_to_tensor(coefficients)
    as_dtype = {}  # the coefficients cast once per dtype of the basis (eagerly, each op counts)
    out = []
    for w, b in zip(w0, basis):
        key = keras.backend.standardize_dtype(b.dtype)
        if key not in as_dtype:
            as_dtype[key] = _cast(coefficients, key)
        out.append(_cast(w, key) + ops.tensordot(as_dtype[key], b, axes=1))
    return out


def _cast(t, dtype):
    same = keras.backend.standardize_dtype(t.dtype) == keras.backend.standardize_dtype(dtype)
    return t if same else ops.cast(t, dtype)


def _logit_view(p, split: str):
    """(z, dz/dp) of a softmax / sigmoid output p, as ``_tf_engine._logit_view``."""
    tiny = np.finfo(keras.backend.standardize_dtype(p.dtype)).tiny
    if split == "softmax":
        return ops.log(ops.maximum(p, tiny)), ops.where(p > 0, 1.0 / ops.maximum(p, tiny), 0.0)
    q = p * (1.0 - p)
    z = ops.log(ops.maximum(p, tiny)) - ops.log(ops.maximum(1.0 - p, tiny))
    return z, ops.where(q > 0, 1.0 / ops.maximum(q, tiny), 0.0)


def _with(values: list, slots: list[int], trainable) -> list:
    """``values`` with the entries at ``slots`` replaced by ``trainable`` (in order)."""
    out = list(values)
    for i, t in zip(slots, trainable):
        out[i] = t
    return out


def _ratio(a, b) -> float:
    return float(a) / float(b) if float(b) != 0 else 0.0


def _as_wide(array: np.ndarray):
    return ops.convert_to_tensor(np.asarray(array), _terms._wide())


#: The engine's mixins, in the order ``Objective`` puts them before itself.
MIXINS = (PortableEngine,)


def _no_second_derivative(error: Exception, what: str) -> ValueError:
    """One sentence where the backend's autodiff has no rule for a product (PyTorch: a fused
    kernel without double backward or forward mode, ``torch.func`` on mixed dtypes)."""
    first = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else "no message"
    return ValueError(
        f"The {keras.backend.backend()} backend's autodiff cannot take this model's curvature "
        f"product with {what} ({type(error).__name__}: {first[:200]}); try "
        "hvp_mode='backward_over_backward', or the model on another Keras backend."
    )
