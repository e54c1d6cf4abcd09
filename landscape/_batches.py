"""The data an Objective covers: arrays (any nest), finite datasets, PyDatasets, in batches.

``DataSplit`` holds one data set as device tensors sliced in a graph loop, or as a finite
``tf.data.Dataset``; ``describe`` names a nest of arrays by its shapes for error messages.
Sparse inputs (a SciPy sparse matrix or a ``tf.SparseTensor``, which ``model.fit`` accepts) are
kept sparse and made dense one batch at a time, so the model sees the dense batch that its own
dense layers would compute with.
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np
import scipy.sparse
import tensorflow as tf

from landscape._forms import describe, model_inputs, sample_count, unpack  # noqa: F401


def _to_tensor(t):
    """A tensor of ``t``; a SciPy sparse matrix or a ``tf.SparseTensor`` as a canonically
    ordered ``tf.SparseTensor`` (``tf.sparse.slice`` takes rows from it)."""
    if scipy.sparse.issparse(t):
        coo = scipy.sparse.coo_array(t)
        indices = np.stack([np.asarray(i, np.int64) for i in coo.coords], axis=1)
        t = tf.SparseTensor(indices.reshape(-1, coo.ndim), coo.data, coo.shape)
    if isinstance(t, tf.SparseTensor):
        return tf.sparse.reorder(t)
    return tf.convert_to_tensor(t)


def _tuples(structure):
    """Lists in a batch's structure as tuples (tf.data's structures have no lists)."""
    if isinstance(structure, dict):
        return {k: _tuples(v) for k, v in structure.items()}
    if isinstance(structure, list | tuple):
        return tuple(_tuples(v) for v in structure)
    return structure


#: how many batches of a PyDataset its tf.data signature is read from (as Keras's adapter does)
SPEC_BATCHES = 3


def _spec(batches: list):
    """The TensorSpec nest of ``batches``: the batch axis free, every other axis fixed where the
    batches agree on it (free where they differ, e.g. per-batch padding)."""

    def leaf(*arrays):
        shapes = [np.shape(a) for a in arrays]
        dims = [None] + [
            shapes[0][i] if all(len(s) == len(shapes[0]) and s[i] == shapes[0][i] for s in shapes)
            else None
            for i in range(1, len(shapes[0]))
        ]  # fmt: skip
        return tf.TensorSpec(dims, tf.as_dtype(np.asarray(arrays[0]).dtype))

    return tf.nest.map_structure(leaf, *batches)


def _rows(t, start, size: int):
    """Rows ``start : start + size`` of a tensor; dense for a ``tf.SparseTensor`` (graph-safe)."""
    if not isinstance(t, tf.SparseTensor):
        return t[start : start + size]
    begin = tf.concat(
        [tf.reshape(tf.cast(start, tf.int64), [1]), tf.zeros([t.shape.rank - 1], tf.int64)], 0
    )
    part = tf.sparse.slice(t, begin, tf.concat([[size], t.dense_shape[1:]], 0))
    part.set_shape([None, *t.shape[1:]])
    return tf.sparse.to_dense(part)


def _dense(t):
    return tf.sparse.to_dense(t) if isinstance(t, tf.SparseTensor) else t


def _dense_batch(batch, argument: str = "data") -> tuple:
    """(x, y, w) of a dataset's batch, its sparse tensors made dense."""
    return tuple(
        None if part is None else tf.nest.map_structure(_dense, part)
        for part in unpack(batch, argument)
    )


def _numpy(t) -> list[np.ndarray]:
    """The arrays that define ``t``: its values, or a sparse tensor's indices, values, shape."""
    if isinstance(t, tf.SparseTensor):
        return [keras.ops.convert_to_numpy(a) for a in (t.indices, t.values, t.dense_shape)]
    return [keras.ops.convert_to_numpy(t)]


def _joined(*tensors):
    return tf.concat(tensors, 0)


def _py_dataset(data: keras.utils.PyDataset, steps: int | None) -> tf.data.Dataset:
    """A finite tf.data view of a ``keras.utils.PyDataset`` (batches in index order).

    The batch axis is free; another axis is fixed where the first batches agree on it (so a
    one-hot target keeps its class axis), free where they differ (padding).
    """
    count = data.num_batches
    if count is None:
        if steps is None:
            raise ValueError(
                "Argument `data` is a PyDataset with no length (`num_batches` is None); pass "
                "`steps=` to say how many batches the objective covers."
            )
        count = steps
    count = count if steps is None else min(count, steps)
    spec = _spec([_tuples(tuple(data[i])) for i in range(min(count, SPEC_BATCHES))])

    def batches():
        for i in range(count):
            yield _tuples(tuple(data[i]))

    return tf.data.Dataset.from_generator(batches, output_signature=spec)


class DataSplit:
    """One data set: device tensors sliced in a graph loop, or a finite tf.data.Dataset."""

    #: whether the tensors are given to the compiled functions as arguments (``share_functions``)
    fed = False

    def __init__(self, data, batch_size: int, steps: int | None, argument: str):
        self.dataset = None
        self.n = None
        if isinstance(data, keras.utils.PyDataset):
            data = _py_dataset(data, steps)
            steps = None
        if isinstance(data, tf.data.Dataset):
            infinite = int(data.cardinality()) == int(tf.data.INFINITE_CARDINALITY)
            if infinite and steps is None:
                raise ValueError(
                    f"Argument `{argument}` is an infinite tf.data.Dataset (it ends in "
                    "`.repeat()`); drop the `.repeat()` or pass `steps=` (the number of "
                    "batches the objective covers)."
                )
            if steps is not None:
                data = data.take(steps)
            if int(data.cardinality()) == 0:
                raise ValueError(f"Argument `{argument}` is an empty dataset.")
            self.dataset = data
            return
        x, y, w = unpack(data, argument)
        # Only x stays sparse (batches are densified as they are cut); targets and weights
        # are made dense once.
        self.x = tf.nest.map_structure(_to_tensor, x)
        self.y = tf.nest.map_structure(lambda t: _dense(_to_tensor(t)), y)
        self.w = None if w is None else tf.nest.map_structure(lambda t: _dense(_to_tensor(t)), w)
        n = self.n = sample_count(self.x, self.y, self.w, argument, x)
        self.batch_size = batch_size
        self.n_batches = -(-n // batch_size)

    def share_functions(self) -> None:
        """Make the split's batch an argument of the compiled functions, so that batches of the
        same structure share one trace (``Objective.batches``): for one batch of dense tensors
        (else the split stays captured in its functions)."""
        if self.dataset is not None or self.n > self.batch_size:
            return
        parts = tuple(p for p in (self.x, self.y, self.w) if p is not None)
        if not all(isinstance(t, tf.Tensor) for t in tf.nest.flatten(parts)):
            return
        self.args = parts
        self.specs = tf.nest.map_structure(
            lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), parts
        )
        self.spec_key = repr(self.specs)
        self.fed = True

    @property
    def single_batch(self) -> bool:
        """Whether the split is one batch (so a per-batch loss value is the data set's)."""
        if self.dataset is not None:
            return int(self.dataset.cardinality()) == 1
        return self.n_batches == 1

    def first_batch(self, size: int):
        """(x, y, w) of the first ``size`` samples (or the dataset's first batch), eagerly."""
        if self.dataset is not None:
            for batch in self.dataset.take(1):
                return _dense_batch(batch)
            raise ValueError("Argument `data` is an empty dataset.")

        def take(t):
            return _rows(t, 0, size)

        return tuple(
            None if part is None else tf.nest.map_structure(take, part)
            for part in (self.x, self.y, self.w)
        )

    def probe_batch(self, size: int):
        """(x, y, w) of up to ``size`` samples from the start of the split, eagerly: the first
        ``size`` samples of arrays, or a dataset's first batches joined (its first batch alone
        where they do not join, e.g. padded to other lengths)."""
        if self.dataset is None:
            return self.first_batch(size)
        parts, count = [], 0
        for batch in self.dataset.take(size):
            parts.append(_dense_batch(batch))
            count += int(tf.shape(tf.nest.flatten(parts[-1][0])[0])[0])
            if count >= size:
                break
        if not parts:
            raise ValueError("Argument `data` is an empty dataset.")
        try:
            return tuple(
                None if part[0] is None else tf.nest.map_structure(_joined, *part)
                for part in zip(*parts)
            )
        except (ValueError, TypeError, tf.errors.InvalidArgumentError):
            return parts[0]

    def batches(self, size: int) -> Iterator[tuple]:
        """Consecutive (x, y, w) slices of ``size`` samples, eagerly."""
        if self.dataset is not None:
            for batch in self.dataset.unbatch().batch(size):
                yield _dense_batch(batch)
            return
        for start in range(0, self.n, size):

            def take(t, s=start):
                return _rows(t, s, size)

            yield tuple(
                None if part is None else tf.nest.map_structure(take, part)
                for part in (self.x, self.y, self.w)
            )

    def arrays(self) -> list[np.ndarray] | None:
        if self.dataset is not None:
            return None
        parts = tf.nest.flatten(self.x) + tf.nest.flatten(self.y)
        parts += [] if self.w is None else tf.nest.flatten(self.w)
        return [a for t in parts for a in _numpy(t)]

    def reduce(self, init, body):
        """state ← body(state, x, y, w) over all batches (in a graph loop); w may be None."""
        if self.dataset is not None:

            def step(state, batch):
                return body(state, *_dense_batch(batch))

            return self.dataset.reduce(init, step)

        bs = self.batch_size

        def loop_body(i, state):
            start = i * bs

            def take(t):
                return _rows(t, start, bs)

            x = tf.nest.map_structure(take, self.x)
            y = tf.nest.map_structure(take, self.y)
            w = None if self.w is None else tf.nest.map_structure(take, self.w)
            return i + 1, body(state, x, y, w)

        _, state = tf.while_loop(
            lambda i, _: i < self.n_batches,
            loop_body,
            (tf.constant(0), init),
            parallel_iterations=1,
        )
        return state
