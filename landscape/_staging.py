"""Host staging buffers: aligned NumPy arrays an Objective reuses to hand vectors to its engine.

At ResNet-50 size a vector of offsets is 94 MB in float32. Handed to TensorFlow as a fresh NumPy
array it was copied twice per pass (``tf.constant`` copies every array it is given, then again
into an aligned buffer when NumPy's is not 64-byte aligned, which large NumPy arrays are not),
and each fresh array paid its page faults: 86–91 ms per pass on the project's 2-core machine
(the 23.1 M offsets of an MLP), up to 290 ms under memory pressure, against 0.43–0.94 s for
ResNet-50's 16-image gradient (m-sharpness). A staging buffer is written once (the
cast of δ to the variables' dtype, ``FlatView.offsets``) and lent to the engine without a copy
where the backend can borrow host memory (``landscape._tf_engine``: DLPack); any other array is
copied once into a fresh aligned array (``staged``), which the pool does not keep.

A buffer is reused only when nothing refers to it any more: every view of it and every tensor
borrowing it holds a reference to its memory's owner (NumPy collapses a view's ``base`` to the
array that owns the memory; a DLPack capsule and the tensor made from it keep the exported array
alive until the tensor is freed), so its reference count says whether it is free. Values never
change: a buffer holds exactly what ``astype`` or a copy would have made.
"""

from __future__ import annotations

import sys

import numpy as np

#: the alignment TensorFlow requires of host memory it borrows (``EIGEN_MAX_ALIGN_BYTES``)
ALIGNMENT = 64


def aligned(array: np.ndarray) -> bool:
    """Whether ``array`` is C-contiguous and starts on an ``ALIGNMENT``-byte boundary."""
    return bool(array.flags.c_contiguous) and array.__array_interface__["data"][0] % ALIGNMENT == 0


class Staging:
    """A pool of aligned host buffers, by size in bytes, reused once nothing refers to them.

    Memory: the buffers ``get`` handed out that were alive at once (``FlatView.offsets``: one
    copy of the trainable variables in their analysis dtypes per offsets list alive; one for
    an ascent), kept for reuse while the Objective (and the copies that share its pool) lives.
    """

    def __init__(self):
        self._owners: dict[int, list[np.ndarray]] = {}
        self._ids: set[int] = set()  # the owners' ids (an owner lives as long as the pool)

    def get(self, shape, dtype) -> np.ndarray:
        """An aligned, C-contiguous, uninitialized array of ``shape`` and ``dtype`` from a free
        buffer (or a new one)."""
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        owners = self._owners.setdefault(nbytes, [])
        for owner in owners:
            # references: the list, the loop variable and getrefcount's argument; any view or
            # borrowing tensor adds one, and so does another thread's loop variable on the
            # same buffer, so two threads looking at one free buffer at once both pass it by
            if sys.getrefcount(owner) <= 3:
                break
        else:
            owner = np.empty(nbytes + ALIGNMENT, np.uint8)
            owners.append(owner)
            self._ids.add(id(owner))
        return _aligned_view(owner, nbytes, dtype, shape)

    def owns(self, array: np.ndarray) -> bool:
        """Whether ``array`` is (a view of) one of this pool's buffers."""
        return isinstance(array.base, np.ndarray) and id(array.base) in self._ids

    def staged(self, array: np.ndarray) -> np.ndarray:
        """``array`` itself where it is an aligned, writeable view of this pool's memory (DLPack
        exports no read-only array), else a copy of it (same dtype, same values) in a fresh
        aligned array, not kept by the pool: the pool holds only what ``get`` handed out."""
        if self.owns(array) and aligned(array) and array.flags.writeable:
            return array
        out = aligned_empty(array.shape, array.dtype)
        np.copyto(out, array)
        return out


def aligned_empty(shape, dtype) -> np.ndarray:
    """A fresh, uninitialized, C-contiguous array starting on an ``ALIGNMENT``-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return _aligned_view(np.empty(nbytes + ALIGNMENT, np.uint8), nbytes, dtype, tuple(shape))


def _aligned_view(owner: np.ndarray, nbytes: int, dtype, shape) -> np.ndarray:
    """The ``nbytes`` of ``owner`` (``ALIGNMENT`` bytes longer) from its first aligned byte, as
    an array of ``dtype`` and ``shape``: a view, whose ``base`` is ``owner``."""
    start = -owner.__array_interface__["data"][0] % ALIGNMENT
    return owner[start : start + nbytes].view(dtype).reshape(shape)
