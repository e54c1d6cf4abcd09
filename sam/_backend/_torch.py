"""The PyTorch adapter (see ``sam._backend``): ``torch.autograd`` with double backward for
reverse-over-reverse, ``torch.func.jvp`` over ``torch.func.grad`` for forward-over-reverse;
eager, as Keras's PyTorch trainer runs by default."""

from __future__ import annotations

import contextlib
import functools

import keras
import numpy as np
import torch

from sam._backend import _shared

# what this backend shares with another, word for word (``sam._backend._shared``)
add_n = _shared.add_n
as_slices = _shared.as_slices
dense = _shared.dense
is_sparse = _shared.is_sparse
replica_count = _shared.replica_count
rows = _shared.rows
strategy_replica_count = _shared.strategy_replica_count


errors = (ValueError, TypeError, IndexError, RuntimeError)
#: what the backend raises where its autodiff has no rule for a second-order product
second_order_errors = (RuntimeError, NotImplementedError)


#: the Hessian-vector mode ``mode="auto"`` picks here (the faster measured)
HVP_MODE = "backward_over_backward"


def float64() -> bool:
    return True


def _leaves(params):
    return [p.detach().requires_grad_(True) for p in params]


def value_and_grad(f, params):
    leaves = _leaves(params)
    with torch.enable_grad():
        value, aux = f(leaves)
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves)]
    return value.detach(), _detached(aux), grads


def _detached(tree):
    import keras

    return keras.tree.map_structure(
        lambda t: t.detach() if isinstance(t, torch.Tensor) else t, tree
    )


def _math_attention():
    """Attention by PyTorch's composite "math" kernel: its fused kernels (the CPU flash kernel
    that ``scaled_dot_product_attention`` picks for Keras's ``MultiHeadAttention``) have no
    second derivative and no forward mode ("derivative for
    aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented")."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def hvp(f, params, vector, mode):
    with _math_attention():
        return _hvp(f, params, vector, mode)


def _hvp(f, params, vector, mode):
    if mode == "forward_over_backward":
        from torch.func import grad, jvp

        def g(*p):
            return grad(lambda *q: f(list(q)), argnums=tuple(range(len(p))), has_aux=True)(*p)

        (_, aux), (hv, _) = jvp(g, tuple(p.detach() for p in params),
                                tuple(v.detach() for v in vector))  # fmt: skip
        return _detached(aux), list(hv)
    leaves = _leaves(params)
    with torch.enable_grad():
        value, aux = f(leaves)
        grads = torch.autograd.grad(value, leaves, create_graph=True, allow_unused=True)
        gv = sum((g * v.to(g.dtype)).sum() for g, v in zip(grads, vector) if g is not None)
        hv = torch.autograd.grad(gv, leaves, allow_unused=True) if gv.requires_grad else None
    hv = [torch.zeros_like(p) for p in leaves] if hv is None else hv
    hv = [torch.zeros_like(p) if h is None else h for h, p in zip(hv, leaves)]
    return _detached(aux), hv


def jvp(f, params, tangents):
    from torch.func import jvp as func_jvp

    with _math_attention():
        out, jv = func_jvp(lambda *p: f(list(p)), tuple(p.detach() for p in params),
                           tuple(t.detach() for t in tangents))  # fmt: skip
    return out, jv


def vjp(f, params, cotangents):
    leaves = _leaves(params)
    with torch.enable_grad():
        out = f(leaves)
        grads = torch.autograd.grad(out, leaves, grad_outputs=list(cotangents), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves)]


def compile(fn, jit_compile: bool = False):
    """``fn`` eagerly (Keras's PyTorch default), recording no autograd graph: the adapter's
    own derivatives above switch recording on where they need it (``torch.func`` ignores an
    outer ``no_grad``); otherwise a forward pass at values derived from the variables (which
    require grad) would record one for nothing. With ``jit_compile`` (the model compiled with
    ``jit_compile=True``, Keras's opt-in), ``torch.compile(fn)``, as Keras's PyTorch trainer
    does then."""
    body = torch.compile(fn) if jit_compile else fn

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if jit_compile:  # NumPy arrays would break the compiled graph (ndarray.dtype)
            args, kwargs = _tensors(args), _tensors(kwargs)
        with torch.no_grad():
            return body(*args, **kwargs)

    return run


def _tensors(tree):
    import keras

    return keras.tree.map_structure(
        lambda a: torch.from_numpy(a) if isinstance(a, np.ndarray) else a, tree
    )


def compile_step(fn, variables=()):
    """``fn`` itself: eager, its variable updates in place (Keras's PyTorch trainer)."""
    del variables
    return fn


def to_numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


host_view = to_numpy  # .numpy() of a CPU tensor shares its memory


def no_grad():
    """A context without gradient recording (the eager checks need no graph)."""
    return torch.no_grad()


def executing_eagerly() -> bool:
    """Always: Keras's PyTorch backend runs eagerly (its ``jit_compile`` is not supported
    for SAM's manual steps)."""
    return True


# -- what SAM's optimizer asks of the backend (sam.optimizer) --------------------------------


def refuse_traced(method: str) -> None:
    """Nothing to refuse: every call runs eagerly."""
    del method


# -- what the SAM family asks of the backend (sam.variants) ----------------------------------


def cond(pred, true_fn, false_fn):
    """Eager: the branch of ``pred``'s value."""
    return true_fn() if bool(pred) else false_fn()


_MASK64 = (1 << 64) - 1


def _mix(seed: int, step: int) -> int:
    """A 32-bit seed from the pair (seed, step): SplitMix64's finalizer of seed·2³² + step, so
    that nearby pairs (seed, t + 1) and (seed + 1, t) give unrelated streams."""
    z = ((seed << 32) + step + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & 0xFFFFFFFF


def uniform(shape, seed: int, step):
    """Uniform [0, 1) draws, stateless: ``keras.random.uniform`` with a fresh generator seeded
    by (seed, step) (``_mix``): the same draws on every run and after a reload, where ``step``
    is the saved iteration count. float32, as the other backends' default."""
    return keras.random.uniform(shape, dtype="float32", seed=_mix(int(seed), int(step)))


def enable_grad():
    """Gradient recording on (a user's gradient function inside a step run without it)."""
    return torch.enable_grad()


# -- what SAM's fit step asks of the backend (sam.train_step, sam._portable_step) ---------------


def apply_update(optimizer, grads, variables) -> None:
    """``optimizer.apply`` in place, without recording gradients (Keras's PyTorch trainer)."""
    with torch.no_grad():
        optimizer.apply(grads, list(variables))


def stateful_step(groups, state, fn):
    """Refused: PyTorch's trainer runs the step statefully (``train_step(self, data)``)."""
    del groups, state, fn
    raise ValueError(
        "Argument `state` of sam_train_step is for the JAX backend's train_step(self, state, "
        "data); on PyTorch call sam_train_step(self, data). Received: a state."
    )


def random_state():
    """The global RNG state, from which Keras's unseeded ``Dropout`` draws on PyTorch (its fast
    path, ``torch.nn.functional.dropout``): the perturbed pass replays it."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if cuda else None)


@contextlib.contextmanager
def replay_random(state):
    """Draw from the global RNG as from ``state`` (``random_state()``) inside; after it, the
    RNG is as it was before (the perturbed pass draws the clean pass's unseeded masks)."""
    cpu, cuda = state
    devices = range(torch.cuda.device_count()) if cuda is not None else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        yield


def check_one_process() -> None:
    """One sentence where ``torch.distributed`` runs several processes: SAM's step here takes
    each process's own gradients and all-reduces nothing (a DDP-wrapped model's hooks are not
    part of Keras's ``fit``), so the processes' weights would drift apart silently."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise ValueError(
            "SAMModel and sam_train_step run on one process on PyTorch in this version, but "
            f"torch.distributed has {dist.get_world_size()} processes: each would perturb and "
            "update its own copy with its own gradients; train on one process, or with "
            "keras.distribution.DataParallel on JAX, or tf.distribute on TensorFlow."
        )
