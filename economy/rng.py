"""Counter-based uniforms for per-agent stochastic rounding.

Drawing ``[N, G]`` uniforms with threefry costs more than the rest of a step on a CPU.
Here one 64-bit seed is drawn from the step key and every value is a strong integer hash
(two rounds of the ``lowbias32`` mixer) of ``(seed, global index)``. The result depends
only on the key and the global index, so it is identical however the agent axis is
sharded, and it is reproducible like any JAX randomness.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_GOLDEN = 0x9E3779B9


def _mix(x: jax.Array) -> jax.Array:
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 uniforms in ``[0, 1)`` of ``shape``, from ``key`` (counter-based)."""
    seed = jax.random.bits(key, (2,), jnp.uint32)
    counter = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):  # row-major global index, built without int64
        counter = counter + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride & 0xFFFFFFFF)
        stride *= shape[axis]
    x = _mix(counter * jnp.uint32(_GOLDEN) ^ seed[0])
    x = _mix(x + seed[1])
    return (x >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def stochastic_round(x: jax.Array, u: jax.Array) -> jax.Array:
    """Unbiased rounding of non-negative ``x`` to int32 with uniforms ``u``: E = x."""
    return jnp.floor(x + u).astype(jnp.int32)
