"""Adapter functions that several backends share word for word (re-exported by their adapters).

- Dense backends without replicas (JAX, PyTorch): gradients are plain tensors, SAM's steps see
  one replica, sums run left to right.
- Backends whose random draws live in Keras's seed variables (TensorFlow, JAX): no global RNG
  state for the perturbed pass to replay (PyTorch's unseeded dropout has one: see ``_torch``).
"""

from __future__ import annotations

import contextlib
import functools
import operator

import keras

# -- dense gradients, one replica (JAX, PyTorch) ---------------------------------------------


def replica_count() -> int:
    """One: SAM's manual steps see no replicas here (distribution is SPMD or refused)."""
    return 1


def strategy_replica_count() -> int:
    """One: a family member's state is the model's (no replicas in SAM's steps here)."""
    return 1


def add_n(values):
    """The sum of equally shaped tensors, left to right."""
    return functools.reduce(operator.add, values)


def dense(g):
    """A gradient as a tensor (this backend's gradients are dense)."""
    return keras.ops.convert_to_tensor(g)


def rows(g):
    """The entries of a gradient that hold values: all of them (gradients are dense here)."""
    return g


def is_sparse(g) -> bool:
    """Never: this backend's gradients are dense."""
    del g
    return False


def as_slices(g, like):
    """Not reached: there are no sparse gradients here."""
    raise NotImplementedError("This backend's gradients are dense.")


# -- no global RNG state (TensorFlow, JAX) ---------------------------------------------------


def random_state():
    """Nothing: Keras's random layers draw from seed state in the model's variables here."""
    return None


def replay_random(state):
    """Nothing to replay (see ``random_state``)."""
    del state
    return contextlib.nullcontext()
