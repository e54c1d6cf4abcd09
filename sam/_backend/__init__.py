"""One small adapter per Keras backend: the autodiff, compile and conversion primitives.

Everything else in ``sam`` and ``landscape`` is backend-free (``keras.ops``, NumPy) and calls
``adapter()``. The interface knows no model; each function takes a Python function of a list of
tensors (the parameters) and returns what the backend's autodiff gives:

- ``value_and_grad(f, params)``: f(params) -> (scalar, aux); returns (scalar, aux, ∇f);
- ``hvp(f, params, vector, mode)``: f as above; returns (aux, H v), by forward-over-reverse or
  reverse-over-reverse (``mode``);
- ``jvp(f, params, tangents)`` / ``vjp(f, params, cotangents)``: f(params) -> list of tensors;
  the Jacobian-vector product (outputs, J v) and the vector-Jacobian product Jᵀ u;
- ``compile(fn, jit_compile=False)``: the backend's compiler (``jax.jit``; PyTorch runs
  eagerly, Keras's own default, or ``torch.compile`` with ``jit_compile``; the Objective's
  TensorFlow loops are compiled by ``landscape._tf_engine`` itself);
- ``compile_step(fn, variables)``: a step called from Python once per batch that may update
  Keras ``variables`` in place (an optimizer's ``apply_gradients``), compiled as Keras's own
  train step is: ``tf.function``; ``jax.jit`` of a pure function over the variables' values in
  a ``keras.StatelessScope``, the new values assigned back after each call; PyTorch eagerly;
- ``HVP_MODE``: the mode the Objective's ``mode="auto"`` picks (the faster measured);
- ``no_grad()``: a context in which the eager checks record no gradient (PyTorch);
- ``to_numpy(t)``, ``float64()`` (whether float64 is computed as float64 end to end),
  ``errors`` (the backend's exception types for a computation that does not fit) and
  ``second_order_errors`` (what it raises where its autodiff has no second-order rule).

Modelled on Keras's own trainers, one file per backend behind one interface
(``keras/src/backend/{tensorflow,jax,torch}/trainer.py``). TensorFlow stays the default backend
when ``KERAS_BACKEND`` is unset.
"""

from __future__ import annotations

import importlib
import os

BACKENDS = ("tensorflow", "jax", "torch")


def name() -> str:
    """The Keras backend of this process (TensorFlow when ``KERAS_BACKEND`` is unset)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    return keras.backend.backend()


def adapter():
    """The adapter module of this process's backend; one ImportError sentence for others."""
    backend = name()
    if backend not in BACKENDS:
        raise ImportError(
            f"sam-landscape runs on Keras's TensorFlow, JAX or PyTorch backend, but "
            f"KERAS_BACKEND is {backend!r}."
        )
    return importlib.import_module(f"sam._backend._{backend}")
