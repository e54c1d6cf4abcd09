"""The forms of data an Objective takes, named for error messages; backend-free."""

from __future__ import annotations

import keras


def describe(value) -> str:
    """A short description of a nested structure of arrays: ``{'a': (n, 3), 'b': (n,)}``."""

    def leaf(t):
        shape = getattr(t, "shape", None)
        return "None" if t is None else str(tuple(shape)) if shape is not None else type(t).__name__

    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        inner = ", ".join(describe(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    return leaf(value)


def model_inputs(model: keras.Model) -> str:
    try:
        return describe(keras.tree.map_structure(lambda t: t, model.input))
    except (AttributeError, ValueError):  # a Sequential model never called has only .inputs
        inputs = getattr(model, "inputs", None)
        if inputs:
            return describe(inputs[0] if len(inputs) == 1 else list(inputs))
        return "(not known for this model: it has no symbolic inputs)"


def unpack(batch, argument: str):
    """(x, y, sample_weight) of one element of ``data``; refuses x-only data."""
    if not isinstance(batch, tuple | list):
        raise ValueError(
            f"Argument `{argument}` must be (x, y) or (x, y, sample_weight) arrays, a "
            "tf.data.Dataset or a keras.utils.PyDataset of such batches. "
            f"Received: {type(batch).__name__}."
        )
    x, y, w = keras.utils.unpack_x_y_sample_weight(tuple(batch))
    if y is None or len(batch) > 3:
        raise ValueError(
            f"Argument `{argument}` must have 2 or 3 entries (x, y[, sample_weight]): the "
            f"loss needs targets. Received {len(batch)} entries."
        )
    return x, y, w


def sample_count(x, y, w, argument: str, given) -> int:
    """The number of samples of array data (x, y, w: nests of arrays or tensors), or one
    ValueError sentence naming ``argument`` when the parts disagree or are empty."""
    counts = {int(t.shape[0]) if len(t.shape) else -1 for t in keras.tree.flatten(x)}
    n = min(counts)
    for name, part in (("y", y), ("sample_weight", w)):
        for t in [] if part is None else keras.tree.flatten(part):
            if len(t.shape) == 0 or int(t.shape[0]) != n:
                raise ValueError(
                    f"Argument `{argument}`: x has {n} samples but {name} has shape "
                    f"{tuple(t.shape)}."
                )
    if len(counts) != 1:
        raise ValueError(
            f"Argument `{argument}`: the inputs have different numbers of samples: "
            f"{describe(given)}."
        )
    if n <= 0:
        raise ValueError(f"Argument `{argument}` is empty.")
    return n
