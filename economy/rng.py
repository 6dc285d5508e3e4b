"""Counter-based random numbers for per-agent stochastic rounding.

Drawing ``[N, G]`` uniforms with threefry costs more than the rest of a step on a CPU.
Here one 64-bit seed is drawn from the step key and every value is a strong integer
hash (two rounds of the ``lowbias32`` mixer) of ``(seed, global index)``. The result
depends only on the key and the global index, so it is identical however the agent
axis is sharded, and reproducible like any JAX randomness.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_GOLDEN = 0x9E3779B9


def _mix(x: jax.Array) -> jax.Array:
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _counter(shape: tuple[int, ...], logical: tuple[int, jax.Array] | None) -> jax.Array:
    """uint32 row-major index of every entry of ``shape``; with ``logical = (axis, n)``
    the index an entry would have if axis ``axis`` were ``n`` long (``n`` may be traced):
    entries ``< n`` along it get the numbers an array of that length gets, so a padded
    array draws for its real entries exactly what the unpadded one draws."""
    if logical is None:
        return jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    axis, n = logical
    axis %= len(shape)
    sizes = [jnp.uint32(d) for d in shape]
    sizes[axis] = jnp.asarray(n).astype(jnp.uint32)
    idx, stride = jnp.zeros(shape, jnp.uint32), jnp.uint32(1)
    for d in reversed(range(len(shape))):  # trace-time loop over the few axes
        idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, d) * stride
        stride = stride * sizes[d]
    return idx


def seeds(key: jax.Array) -> jax.Array:
    """uint32 ``[2]``: the two seeds of :func:`bits` (also the native market kernel's, which
    hashes the same counters)."""
    return jax.random.bits(key, (2,), jnp.uint32)


def bits(key: jax.Array, shape: tuple[int, ...], logical: tuple[int, jax.Array] | None = None) -> jax.Array:
    """uint32 random bits of ``shape`` from ``key`` (counter-based, sharding-invariant):
    ``mix(mix(counter * golden ^ seed0) + seed1)``; ``logical``: see :func:`_counter` (padded
    catalogues)."""
    seed = seeds(key)
    counter = _counter(shape, logical)  # row-major global index
    return _mix(_mix(counter * jnp.uint32(_GOLDEN) ^ seed[0]) + seed[1])


def uniform(key: jax.Array, shape: tuple[int, ...], logical: tuple[int, jax.Array] | None = None) -> jax.Array:
    """float32 uniforms in ``[0, 1)`` on a 2^-24 grid."""
    return (bits(key, shape, logical) >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def uniform_pair(key: jax.Array, shape: tuple[int, ...],
                 logical: tuple[int, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
    """Two independent float32 uniform arrays from one hash per entry: the high and low 16
    bits, each centred in its 2^-16 cell (so stochastic rounding with them is unbiased to
    within 2^-17 of a unit)."""
    x = bits(key, shape, logical)
    scale = jnp.float32(2.0**-16)
    half = jnp.float32(2.0**-17)
    return (x >> 16).astype(jnp.float32) * scale + half, (x & 0xFFFF).astype(jnp.float32) * scale + half


def stochastic_round(x: jax.Array, u: jax.Array) -> jax.Array:
    """Unbiased rounding of non-negative ``x`` to int32 with uniforms ``u`` in [0, 1): E = x.

    ``floor(x + u)`` alone can round up a whole ``x >= 128`` when ``u`` is within float32
    rounding of 1 (``x + u`` becomes ``x + 1``); the ``min`` with ``ceil(x)`` keeps the
    result in ``{floor(x), ceil(x)}``, so eating or spoiling a whole stock never takes more
    than is held."""
    return jnp.minimum(jnp.floor(x + u), jnp.ceil(x)).astype(jnp.int32)


def floor_div(a: jax.Array, b: jax.Array, recip_b: jax.Array | None = None) -> jax.Array:
    """Exact ``a // b`` for int32 ``0 <= a < 2^24``, ``1 <= b < 2^24`` without integer
    division (which does not vectorise on CPUs): a float quotient corrected by one step."""
    recip = (1.0 / b.astype(jnp.float32)) if recip_b is None else recip_b
    q = jnp.floor(a.astype(jnp.float32) * recip).astype(jnp.int32)
    q = q - (q * b > a).astype(jnp.int32)
    return q + ((q + 1) * b <= a).astype(jnp.int32)


def gamma(key: jax.Array, alpha: jax.Array, chunk: int = 2**14) -> jax.Array:
    """``jax.random.gamma(key, alpha)``, the same numbers bit for bit, drawn ``chunk``
    elements at a time. JAX's CPU lowering vmaps the Marsaglia-Tsang rejection loop over the
    whole array, so every round of rejections sweeps all of it: at 2^20 agents x 6 goods
    the world's tastes took 21 s and at 2^24 the draw did not finish in 30 minutes at 17 GB.
    Here the per-element keys are split exactly as JAX splits them and a ``lax.map`` over
    chunks runs the same per-element sampler (JAX's private ``_gamma_one``; where a JAX
    release moves it, this falls back to ``jax.random.gamma``; tests/test_rng.py checks
    the two agree), about 4x faster at 2^18 x 6 and with memory bounded by the chunk."""
    try:
        from jax._src.random.core import _gamma_one
    except ImportError:  # pragma: no cover - a JAX without it: the slow path, same numbers
        return jax.random.gamma(key, alpha)
    from functools import partial

    alpha = jnp.asarray(alpha, jnp.float32)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):  # a raw uint32 key: the same numbers from its typed form
        key = jax.random.wrap_key_data(key)
    shape, size = alpha.shape, alpha.size
    if size <= chunk:
        return jax.random.gamma(key, alpha)
    keys = jax.random.split(key, size)
    flat = alpha.reshape(-1)
    pad = (-size) % chunk
    if pad:  # repeat leading elements to fill the last chunk; their draws are dropped
        keys, flat = jnp.concatenate([keys, keys[:pad]]), jnp.concatenate([flat, flat[:pad]])
    one = jax.vmap(partial(_gamma_one, log_space=False))
    out = jax.lax.map(lambda kv: one(*kv), (keys.reshape(-1, chunk), flat.reshape(-1, chunk)))
    return out.reshape(-1)[:size].reshape(shape)
