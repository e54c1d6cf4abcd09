"""landscape._draws.rademacher draws exactly what rng.choice([-1, 1]) draws, and leaves the
generator where choice leaves it (NumPy's own routine is the reference)."""

from __future__ import annotations

import numpy as np
import pytest

from landscape._draws import rademacher

SIGNS = np.array([-1.0, 1.0])


@pytest.mark.parametrize("held", [0, 1, 2, 3])  # odd: a 32-bit half is held over in PCG64
@pytest.mark.parametrize("n", [0, 1, 2, 3, 8, 1001])
def test_same_draws_and_same_state_as_choice(n, held):
    for seed in range(3):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        a.integers(0, 2, size=held), b.integers(0, 2, size=held)
        out = np.full(n, 7.0)
        for size in (n, n + 1, n + 2):  # calls in a row: the held-over half carries
            expected = a.choice(SIGNS, size=size)
            got = rademacher(b, size, out=out) if size == n else rademacher(b, size)
            assert got.dtype == np.float64 and np.array_equal(got, expected)
        assert out is got or size != n
        assert a.bit_generator.state == b.bit_generator.state
        assert a.random() == b.random()


def test_another_bit_generator_falls_back_to_choice():
    a, b = np.random.Generator(np.random.MT19937(4)), np.random.Generator(np.random.MT19937(4))
    assert np.array_equal(rademacher(b, 11), a.choice(SIGNS, size=11))
    out = np.empty(5)
    assert rademacher(b, 5, out=out) is out and np.array_equal(out, a.choice(SIGNS, size=5))
