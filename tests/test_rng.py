"""economy.rng.gamma: the world's tastes drawn in chunks are jax.random.gamma's numbers bit
for bit (so every world, and every result recorded on one, is unchanged), whatever the
chunk, with a last chunk that is padded, and for a multi-dimensional ``alpha``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from economy import rng


@pytest.mark.parametrize("chunk", [256, 1000, 4096])
def test_chunked_gamma_is_jax_random_gamma(chunk):
    alpha = jnp.broadcast_to(jnp.asarray([2.0, 5.0, 1.0, 0.5, 0.05, 30.0]), (700, 6))  # 4200: padded unless 4200 % chunk == 0
    key = jax.random.key(11)
    want = jax.random.gamma(key, alpha)
    got = jax.jit(lambda k, a: rng.gamma(k, a, chunk=chunk))(key, alpha)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert np.all(np.asarray(got) >= 0)  # (alpha 0.05 draws underflow to 0 at times)
    # not a constant or a shuffled draw: another key gives other numbers
    other = rng.gamma(jax.random.key(12), alpha, chunk=chunk)
    assert not np.array_equal(np.asarray(other), np.asarray(got))


def test_a_raw_uint32_key_gives_the_same_numbers():
    alpha = jnp.full((300, 6), 2.0)
    raw = jax.random.PRNGKey(5)
    np.testing.assert_array_equal(np.asarray(rng.gamma(raw, alpha, chunk=256)),
                                  np.asarray(jax.random.gamma(raw, alpha)))
