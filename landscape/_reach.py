"""Which variables an offset reaches, found by a probe when an ``Objective`` is built.

The Objective moves the weights through a ``keras.StatelessScope``: a layer sees the offset
only if it reads the variable through Keras's variable access (``sam._compat.record_reads``
records those reads). Two kinds of layers do not:

* layers that cache a tensor computed from their variables (Keras's own convention for this is
  ``finalize_state()``, which ``Normalization`` uses after ``adapt`` and after loading): the
  Objective recomputes that state inside the scope on every call (``recomputed_state``), so
  the offset reaches it exactly;
* layers whose call captured the variables' handles (``keras.layers.TFSMLayer`` on a reloaded
  SavedModel): found by assigning a perturbed value to each unread variable and running the
  model (``captured``); the Objective refuses them in one sentence naming the layer.

A variable the model never reads at all (an unused layer) is neither: its offset changes
nothing, exactly as assigning it would.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import keras
import numpy as np

logger = logging.getLogger("landscape")

#: relative size of the perturbation the assignment probe applies to an unread variable
PROBE_SCALE = 0.5


def cached_state_layers(unread: Sequence, owners: dict) -> list:
    """The layers owning an unread variable that declare cached state (``finalize_state``)."""
    out: list = []
    for v in unread:
        layer = owners.get(id(v))
        if layer is not None and hasattr(layer, "finalize_state") and layer not in out:
            out.append(layer)
    return out


@contextlib.contextmanager
def recomputed_state(layers: Sequence):
    """Each layer's cached state recomputed from its variables as they read now (inside the
    caller's ``StatelessScope``: from the offset values), and put back on exit."""
    saved = [(layer, dict(layer.__dict__)) for layer in layers]
    try:
        for layer in layers:
            layer.finalize_state()
        yield
    finally:
        for layer, attributes in saved:
            for key in [k for k in layer.__dict__ if k not in attributes]:
                del layer.__dict__[key]
            layer.__dict__.update(attributes)


def _outputs(run: Callable) -> list[np.ndarray]:
    return [
        np.asarray(keras.ops.convert_to_numpy(t), np.float64) for t in keras.tree.flatten(run())
    ]


def captured(variables: Sequence, run: Callable[[], object]) -> list:
    """The variables among ``variables`` whose assigned value changes the model's outputs.

    Each is assigned ``w + PROBE_SCALE·(|w| + 1)·u`` (u uniform in [-1, 1], fixed seed) in
    turn, the model run eagerly by ``run()``, and its original value assigned back exactly
    (also when the run raises), so the weights stay bit-identical.
    """
    if not variables:
        return []
    base = _outputs(run)
    rng = np.random.default_rng(0)
    out = []
    for v in variables:
        original = keras.ops.convert_to_numpy(v.value).copy()
        w = original.astype(np.float64)
        noise = PROBE_SCALE * (np.abs(w) + 1.0) * rng.uniform(-1.0, 1.0, w.shape)
        try:
            v.assign((w + noise).astype(original.dtype))
            moved = _outputs(run)
        finally:
            v.assign(original)
        if any(
            a.shape != b.shape or not np.allclose(a, b, rtol=1e-6, atol=0.0, equal_nan=True)
            for a, b in zip(base, moved)
        ):
            out.append(v)
    return out


def describe_layers(variables: Sequence, owners: dict) -> str:
    """``'tfsm_layer' (TFSMLayer: 2 variables)``, for each owning layer."""
    counts: dict[int, list] = {}
    for v in variables:
        layer = owners.get(id(v))
        counts.setdefault(id(layer), [layer, 0])[1] += 1
    parts = []
    for layer, n in counts.values():
        kind = "no layer" if layer is None else type(layer).__name__
        name = "" if layer is None else f"{layer.name!r} "
        parts.append(f"{name}({kind}: {n} variable{'s' if n > 1 else ''})")
    return ", ".join(parts)


def captured_refusal(variables: Sequence, owners: dict) -> ValueError:
    return ValueError(
        f"The layer {describe_layers(variables, owners)} reads trainable variables outside "
        "Keras's variable access (e.g. a SavedModel's captured handles), so no analysis can "
        "move them and every Hessian, gradient and surface would treat them as constants; set "
        "`layer.trainable = False` to analyse the rest of the model with them fixed."
    )


def moved_refusal(argument: str, variables: Sequence, owners: dict) -> ValueError:
    return ValueError(
        f"Argument `{argument}` moves variables of the layer {describe_layers(variables, owners)}"
        ", which reads them outside Keras's variable access (e.g. a SavedModel's captured "
        "handles), so the offset would change nothing there; use directions that are zero on "
        "them (e.g. include='trainable' with the layer frozen)."
    )
