"""Staging buffers (landscape/_staging.py): reused only when free, never changing a value."""

import gc
import sys

import keras
import numpy as np
import tensorflow as tf

import landscape
from landscape._staging import Staging, aligned


def test_a_buffer_is_reused_only_once_no_view_and_no_borrowing_tensor_holds_it():
    staging = Staging()
    a = staging.get((1000,), np.float32)
    assert aligned(a) and staging.owns(a)
    address = a.__array_interface__["data"][0]
    view = a[None]
    del a
    b = staging.get((1000,), np.float32)  # the view still holds the first buffer
    assert b.__array_interface__["data"][0] != address
    b[:] = 2.0
    lent = tf.experimental.dlpack.from_dlpack(b.__dlpack__())
    del b, view
    gc.collect()
    c = staging.get((1000,), np.float32)  # the first buffer, free again
    assert c.__array_interface__["data"][0] == address
    c[:] = 3.0
    d = staging.get((1000,), np.float32)  # not the one the tensor borrows
    d[:] = 4.0
    np.testing.assert_array_equal(lent.numpy(), np.full(1000, 2.0, np.float32))
    assert not staging.owns(np.ones(3)) and not staging.owns(np.ones(3)[1:])


def test_staged_copies_what_it_does_not_own_or_what_is_not_aligned():
    staging = Staging()
    mine = staging.get((64,), np.float64)
    mine[:] = np.arange(64.0)
    assert staging.staged(mine) is mine
    shifted = mine[1:]  # 8 bytes past an aligned start
    copy = staging.staged(shifted)
    assert copy is not shifted and aligned(copy)
    np.testing.assert_array_equal(copy, np.arange(1.0, 64.0))
    theirs = np.arange(5000.0)
    staged = staging.staged(theirs)
    assert staged is not theirs and aligned(staged) and staged.dtype == theirs.dtype
    np.testing.assert_array_equal(staged, theirs)


def _dense_objective():
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(300, activation="tanh"), keras.layers.BatchNormalization()]
    model = keras.Sequential([keras.Input((40,)), *layers, keras.layers.Dense(3)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(48, 40)).astype("float32"), rng.integers(0, 3, 48)
    return landscape.Objective(model, (x, y), batch_size=48), rng


def test_offsets_edited_or_made_read_only_by_a_caller_change_no_later_pass():
    """Each offsets list is the caller's own: editing one in place (a BatchNorm statistic's
    zero offset among them) or marking it read-only changes no later list, and a read-only
    one is still evaluated (DLPack exports no read-only array: it is copied)."""
    obj, rng = _dense_objective()
    delta = 0.05 * rng.standard_normal(obj.flat.n)
    expected = obj.evaluate(obj.flat.offsets(delta))["loss"]
    edited = obj.flat.offsets(delta)
    for a in edited:
        a += 0.5
    moved = obj.evaluate(edited)["loss"]
    frozen = obj.flat.offsets(delta)
    for a in frozen:
        a.flags.writeable = False
    assert obj.evaluate(frozen)["loss"] == expected
    assert obj.evaluate(obj.flat.offsets(delta))["loss"] == expected != moved
    staging = obj._staging
    mine = staging.get((8192,), np.float32)
    mine.flags.writeable = False
    assert staging.staged(mine) is not mine


def test_offsets_kept_across_passes_keep_their_values_against_model_evaluate():
    """Two sets of offsets from the same FlatView, the first kept while the second is made and
    evaluated: each equals model.evaluate at its own weights (assigned in NumPy), so no staging
    buffer was handed out twice."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((40,)), keras.layers.Dense(300, activation="tanh"),
                              keras.layers.Dense(3)])  # fmt: skip
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(48, 40)).astype("float32"), rng.integers(0, 3, 48)
    obj = landscape.Objective(model, (x, y), batch_size=48)
    deltas = [0.05 * rng.standard_normal(obj.flat.n) for _ in range(2)]
    first = obj.flat.offsets(deltas[0])
    second = obj.flat.offsets(deltas[1])
    losses = [obj.evaluate(second)["loss"], obj.evaluate(first)["loss"]][::-1]
    w0 = model.get_weights()
    for delta, loss in zip(deltas, losses):
        model.set_weights([(w + p).astype(np.float32) for w, p in zip(w0, obj.flat.split(delta))])
        expected = model.evaluate(x, y, batch_size=48, verbose=0)
        model.set_weights(w0)
        np.testing.assert_allclose(loss, expected, rtol=2e-6)
    assert losses[0] != losses[1]


def test_two_threads_taking_the_one_free_buffer_at_once_get_two(monkeypatch):
    """The reference count is read, then the view made: a thread switch in between (forced
    here by a slow count) must not let two threads take the same free buffer (an Objective
    shared by the threads of a Dask worker)."""
    import threading
    import time

    from landscape import _staging

    staging = Staging()
    staging.get((4096,), np.float32)  # one buffer, free again at once
    count = sys.getrefcount

    def slow_count(obj):
        references = count(obj) - 1  # less this function's own
        del obj
        time.sleep(0.05)  # the other thread runs now, between the count and the taking
        return references

    monkeypatch.setattr(_staging.sys, "getrefcount", slow_count)
    taken, start = [], threading.Barrier(2)

    def take():
        start.wait()
        taken.append(staging.get((4096,), np.float32))

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not np.shares_memory(taken[0], taken[1])
