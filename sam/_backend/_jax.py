"""The JAX adapter (see ``sam._backend``): ``jax.value_and_grad``, ``jax.jvp``/``jax.vjp``,
``jax.jit``. Float64 is float64 only with ``jax_enable_x64``."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import keras
import numpy as np

from sam._backend import _shared

# what this backend shares with another, word for word (``sam._backend._shared``)
add_n = _shared.add_n
as_slices = _shared.as_slices
dense = _shared.dense
is_sparse = _shared.is_sparse
random_state = _shared.random_state
replay_random = _shared.replay_random
replica_count = _shared.replica_count
rows = _shared.rows
strategy_replica_count = _shared.strategy_replica_count


errors = (ValueError, TypeError, IndexError)
#: what the backend raises where its autodiff has no rule for a second-order product
second_order_errors = ()


#: the Hessian-vector mode ``mode="auto"`` picks here (the faster measured)
HVP_MODE = "forward_over_backward"


def float64() -> bool:
    return bool(jax.config.jax_enable_x64)


def value_and_grad(f, params):
    (value, aux), grads = jax.value_and_grad(f, has_aux=True)(list(params))
    return value, aux, grads


def _dot(a, b):
    return sum(jnp.sum(x * y.astype(x.dtype)) for x, y in zip(a, b))


def hvp(f, params, vector, mode):
    params, vector = list(params), list(vector)

    def grad(p):
        return jax.grad(f, has_aux=True)(p)

    if mode == "forward_over_backward":
        _, hv, aux = jax.jvp(grad, (params,), (vector,), has_aux=True)
        return aux, hv

    def gv(p):
        g, aux = grad(p)
        return _dot(g, vector), aux

    hv, aux = jax.grad(gv, has_aux=True)(params)
    return aux, hv


def jvp(f, params, tangents):
    return jax.jvp(f, (list(params),), (list(tangents),))


def vjp(f, params, cotangents):
    _, pullback = jax.vjp(f, list(params))
    return pullback(list(cotangents))[0]


def compile(fn, jit_compile: bool = False):
    del jit_compile  # always compiled here
    return jax.jit(fn)


def compile_step(fn, variables=()):
    """``jax.jit`` of ``fn`` made pure, as Keras's JAX trainer runs a step: the values of
    ``variables`` go in as arguments, ``fn`` runs in a ``keras.StatelessScope`` over them (its
    assignments land in the scope), and the new values are assigned back after each call."""
    import keras

    variables = list(variables)

    def pure(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
            out = fn(*args)
        return out, [scope.get_current_value(v) for v in variables]

    jitted = jax.jit(pure)

    def step(*args):
        out, values = jitted([v.value for v in variables], *args)
        for v, value in zip(variables, values):
            v.assign(value)
        return out

    return step


def to_numpy(t) -> np.ndarray:
    return np.asarray(t)


host_view = to_numpy  # np.asarray of a host array is already a view


def no_grad():
    return contextlib.nullcontext()


def executing_eagerly() -> bool:
    """Whether ops run now: False inside a JAX trace (``jax.jit``, ``jax.grad``), where even a
    new constant is a tracer (as ``keras.src.utils.jax_utils.is_in_jax_tracing_scope``)."""
    return not isinstance(jnp.ones(()), jax.core.Tracer)


# -- what SAM's optimizer asks of the backend (sam.optimizer) --------------------------------


def refuse_traced(method: str) -> None:
    """One sentence when SAM's manual ``method`` (which assigns to variables) runs in a trace."""
    if not executing_eagerly():
        raise ValueError(
            f"SAM.{method} assigns to the model's variables, which JAX allows only eagerly, "
            "not inside jax.jit; call it outside jit, or train with sam.SAMModel (fit)."
        )


# -- what the SAM family asks of the backend (sam.variants) ----------------------------------


def cond(pred, true_fn, false_fn):
    """``jax.lax.cond`` (in a trace: both branches traced, the one taken runs). The branches
    must not assign to variables (a trace's assignments cannot leave ``lax.cond``)."""
    return keras.ops.cond(pred, true_fn, false_fn)


def uniform(shape, seed: int, step):
    """Uniform [0, 1) draws, stateless: ``keras.random.uniform`` with the raw JAX key
    (seed, step) (Threefry, counter-based: the same draws eagerly, in ``jit`` and after a
    reload, where ``step`` is the saved iteration count). float32 unless float64 is enabled."""
    key = jnp.stack([jnp.asarray(seed, jnp.uint32), keras.ops.cast(step, "uint32")])
    dtype = "float64" if float64() else "float32"
    return keras.random.uniform(shape, dtype=dtype, seed=key)


def enable_grad():
    """Nothing to enable: JAX differentiates functions, not recorded operations."""
    return contextlib.nullcontext()


# -- what SAM's fit step asks of the backend (sam.train_step, sam._portable_step) ---------------


def apply_update(optimizer, grads, variables) -> None:
    """``optimizer`` applies ``grads`` to ``variables`` through its ``stateless_apply`` (the
    ``LossScaleOptimizer``'s stateful apply assigns inside ``lax.cond`` branches, which a
    ``StatelessScope`` under ``jax.jit`` cannot hold); the new values are assigned, i.e. land in
    the step's ``StatelessScope``."""
    variables = list(variables)
    new_values, new_state = optimizer.stateless_apply(
        [v.value for v in optimizer.variables], grads, [v.value for v in variables]
    )
    for v, value in zip(variables + list(optimizer.variables), new_values + new_state):
        v.assign(value)


def stateful_step(groups, state, fn):
    """``fn()`` (a stateful-looking step) as a pure function of ``state``: every variable of
    ``groups`` (lists of variables) reads its value in ``state`` (lists aligned with them) from a
    ``keras.StatelessScope``, where ``fn``'s assignments land; returns (fn's result, the new
    state, in the same structure)."""
    mapping = [(v, value) for vs, values in zip(groups, state) for v, value in zip(vs, values)]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        out = fn()
    new_state = tuple([scope.get_current_value(v) for v in vs] for vs in groups)
    return out, new_state


def check_one_process() -> None:
    """Nothing to check: a JAX step under ``keras.distribution`` is one SPMD program, its
    gradients the global batch's."""
