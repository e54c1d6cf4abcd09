"""One BLAS thread for the host's vector work between the backend's passes.

The analyses alternate the backend's passes with NumPy on n-vectors (norms, dot products,
Gram-Schmidt against a stored basis). OpenBLAS's threads keep spinning for a while after each
call, and the backend's own thread pool after each pass, so on a machine with few cores the two
pools take turns stealing each other's cores. Measured on 2 cores (a 26 k-parameter CNN): a
26 k-vector dot product took 16 ms instead of 3 µs after a TensorFlow pass, and 30 SLQ steps
took 5.6 s, 2.0 s of it host work beside 3.0 s of products; with one BLAS thread (threadpoolctl)
they took 3.0 s in all. On large vectors the host work is bounded by memory bandwidth, which
one thread nearly saturates.
"""

from __future__ import annotations

import functools

import threadpoolctl


def one_blas_thread(fn):
    """``fn`` run with the BLAS libraries limited to one thread (restored after, also when it
    raises)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper
