"""Named, disjoint random streams.

In JAX ``jax.random.fold_in(k, i)`` is the same key as ``jax.random.split(k, n)[i]``, so a
parent from which children are derived both ways can hand out one key twice. Agora
therefore derives keys in ONE way: every child is ``fold_in(parent, tag)``, and a parent
has either named children (tag = a 32-bit hash of the name) or numbered children
(tag = the index: a step, a member, an epoch), never both. Keys handed to library code
that splits them (``Economy.step``, ``Economy.reset``, ``ppo_update``) are leaves: nothing
else is derived from them.

World seeds live in their own namespace: :func:`world_key` puts a fixed tag in the high
word of the key data, where a run's root ``jax.random.key(seed)`` (any seed below 2^32)
has a zero, so no world key is ever a run's root or shares a parent with it.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp

WORLD_TAG = 0x574F524C  # "WORL": high word of every world key (a run's root has 0 there)
WORLD_STRIDE = 7919  # a prime: seed s's episode e plays world (s * WORLD_STRIDE + e) mod the range


def stream_id(name: str) -> int:
    """The 32-bit tag of a named stream (CRC-32 of its UTF-8 name; stable across runs)."""
    return zlib.crc32(name.encode("utf-8")) & 0xFFFFFFFF


def derive(key: jax.Array, *path: str | int | jax.Array) -> jax.Array:
    """The key at ``path`` below ``key``: names (str) by :func:`stream_id`, indices (int or
    traced int) as themselves, one ``fold_in`` per element."""
    for p in path:
        tag = stream_id(p) if isinstance(p, str) else p
        key = jax.random.fold_in(key, jnp.asarray(tag, jnp.uint32) if isinstance(tag, int) else tag)
    return key


def world_key(seed: int | jax.Array) -> jax.Array:
    """Key of world ``seed`` (a non-negative integer below 2^32, may be traced)."""
    data = jnp.stack([jnp.uint32(WORLD_TAG), jnp.asarray(seed).astype(jnp.uint32)])
    return jax.random.wrap_key_data(data)


def episode_world(seed: int | jax.Array, episode: int | jax.Array, start: int) -> jax.Array:
    """uint32 index of the world that episode ``episode`` of a run seeded ``seed`` plays:
    ``(seed * WORLD_STRIDE + episode) mod start`` in uint32 arithmetic (may be traced), the
    one sequence of training worlds of the trainer and the PettingZoo wrapper."""
    seed = jnp.asarray(seed).astype(jnp.uint32)
    return (seed * jnp.uint32(WORLD_STRIDE) + jnp.asarray(episode).astype(jnp.uint32)) % jnp.uint32(start)


__all__ = ["WORLD_STRIDE", "WORLD_TAG", "derive", "episode_world", "stream_id", "world_key"]
