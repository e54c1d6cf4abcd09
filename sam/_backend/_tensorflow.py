"""The TensorFlow adapter (see ``sam._backend``): ``tf.GradientTape`` (nested for
reverse-over-reverse), ``tf.autodiff.ForwardAccumulator`` for forward mode. The Objective's own
compiled batch loops on TensorFlow (``tf.function`` over ``tf.data``/``tf.while_loop``) stay in
``landscape.objective``; this adapter runs the backend-free engine on TensorFlow too, which the
tests use as an independent path."""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

from sam._backend import _shared

# what this backend shares with another, word for word (``sam._backend._shared``)
random_state = _shared.random_state
replay_random = _shared.replay_random


errors = (ValueError, TypeError, IndexError, tf.errors.InvalidArgumentError)
#: what the backend raises where its autodiff has no rule for a second-order product
second_order_errors = ()


#: the Hessian-vector mode ``mode="auto"`` picks here (the faster measured)
HVP_MODE = "backward_over_backward"


def float64() -> bool:
    return True


def _dense(gs, params):
    return [tf.zeros_like(p) if g is None else tf.convert_to_tensor(g) for g, p in zip(gs, params)]


def value_and_grad(f, params):
    params = [tf.convert_to_tensor(p) for p in params]
    with tf.GradientTape() as tape:
        tape.watch(params)
        value, aux = f(params)
    return value, aux, _dense(tape.gradient(value, params), params)


def hvp(f, params, vector, mode):
    params = [tf.convert_to_tensor(p) for p in params]
    if mode == "forward_over_backward":
        with tf.autodiff.ForwardAccumulator(params, list(vector)) as acc:
            with tf.GradientTape() as tape:
                tape.watch(params)
                value, aux = f(params)
            grads = _dense(tape.gradient(value, params), params)
        return aux, _dense(acc.jvp(grads), params)
    with tf.GradientTape() as outer:
        outer.watch(params)
        with tf.GradientTape() as inner:
            inner.watch(params)
            value, aux = f(params)
        grads = _dense(inner.gradient(value, params), params)
        gv = tf.add_n([tf.reduce_sum(g * tf.cast(v, g.dtype)) for g, v in zip(grads, vector)])
    return aux, _dense(outer.gradient(gv, params), params)


def jvp(f, params, tangents):
    params = [tf.convert_to_tensor(p) for p in params]
    with tf.autodiff.ForwardAccumulator(params, list(tangents)) as acc:
        out = f(params)
    return out, [tf.zeros_like(o) if j is None else j for j, o in zip(acc.jvp(out), out)]


def vjp(f, params, cotangents):
    params = [tf.convert_to_tensor(p) for p in params]
    with tf.GradientTape() as tape:
        tape.watch(params)
        out = f(params)
    return _dense(tape.gradient(out, params, output_gradients=list(cotangents)), params)


def compile(fn, jit_compile: bool = False):
    del jit_compile  # the TensorFlow engine compiles its own loops
    return fn


def compile_step(fn, variables=()):
    """``tf.function`` of ``fn``, which may assign ``variables`` (captured, updated in place)."""
    del variables
    return tf.function(fn, reduce_retracing=True, autograph=False)


def to_numpy(t) -> np.ndarray:
    return t.numpy() if hasattr(t, "numpy") else np.asarray(t)


def host_view(t) -> np.ndarray:
    """A read-only NumPy view of a host tensor where one exists without a copy (an eager
    tensor's own buffer), else ``to_numpy``; the caller copies out of it at once."""
    return np.asarray(t) if isinstance(t, tf.Tensor) else to_numpy(t)


def no_grad():
    return contextlib.nullcontext()


# -- what SAM's optimizer asks of the backend (sam.optimizer) --------------------------------


def executing_eagerly() -> bool:
    """Whether ops run now (False while a ``tf.function`` is traced)."""
    return tf.executing_eagerly()


def replica_count() -> int:
    """The replicas in sync in the current ``tf.distribute`` replica context (1 outside)."""
    ctx = tf.distribute.get_replica_context()
    return 1 if ctx is None else ctx.num_replicas_in_sync


def add_n(values):
    """The sum of equally shaped tensors (``tf.add_n``: its own order of additions)."""
    return tf.add_n(values)


def dense(g):
    """A gradient as a dense tensor (an Embedding's ``tf.IndexedSlices`` scattered)."""
    return tf.convert_to_tensor(g)


def rows(g):
    """The entries of a gradient that hold values: an ``IndexedSlices``' rows, else itself."""
    return g.values if isinstance(g, tf.IndexedSlices) else g


def refuse_traced(method: str) -> None:
    """Nothing to refuse: the manual steps run in a ``tf.function`` too (see ``run_if``)."""
    del method


def run_if(flag, fn) -> None:
    """In a graph, run ``fn`` (assignments) only when the boolean tensor ``flag`` is true."""

    def run():
        fn()
        return tf.constant(True)

    tf.cond(flag, run, lambda: tf.constant(False))


# -- what the SAM family asks of the backend (sam.variants) ----------------------------------


def strategy_replica_count() -> int:
    """The replicas of the current ``tf.distribute`` strategy, in a replica context or not."""
    ctx = tf.distribute.get_replica_context()
    strategy = tf.distribute.get_strategy()
    return ctx.num_replicas_in_sync if ctx is not None else strategy.num_replicas_in_sync


def is_sparse(g) -> bool:
    """Whether a gradient is an ``IndexedSlices`` (an Embedding's), which passes through."""
    return isinstance(g, tf.IndexedSlices)


def as_slices(g, like):
    """``g`` as IndexedSlices typed as ``like`` (a dense ``g`` becomes all its rows, exact)."""
    if isinstance(g, tf.IndexedSlices):
        return tf.IndexedSlices(
            g.values,
            tf.cast(g.indices, like.indices.dtype),
            tf.cast(g.dense_shape, like.dense_shape.dtype),
        )
    rows = tf.range(tf.shape(g, out_type=like.indices.dtype)[0])
    return tf.IndexedSlices(g, rows, tf.shape(g, out_type=like.dense_shape.dtype))


def cond(pred, true_fn, false_fn):
    """``tf.cond``: in a graph only the branch taken runs (its assignments included)."""
    return tf.cond(pred, true_fn, false_fn)


def uniform(shape, seed: int, step):
    """Uniform [0, 1) draws, stateless: ``tf.random.stateless_uniform`` at seed (seed, step),
    in float64 (the same draws on every replica, after a reload, eagerly and in a graph)."""
    pair = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
    return tf.random.stateless_uniform(shape, seed=pair, dtype=tf.float64)


def enable_grad():
    """Nothing to enable: TensorFlow records gradients where a tape watches."""
    return contextlib.nullcontext()


def stateful_step(groups, state, fn):
    """Refused: TensorFlow's trainer runs the step statefully (``train_step(self, data)``)."""
    del groups, state, fn
    raise ValueError(
        "Argument `state` of sam_train_step is for the JAX backend's train_step(self, state, "
        "data); on TensorFlow call sam_train_step(self, data). Received: a state."
    )


def check_one_process() -> None:
    """Nothing to check: ``tf.distribute`` has its own path (``sam.train_step``)."""
