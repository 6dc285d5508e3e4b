"""Placing an economy on a device mesh: the agent axis split by whole markets.

Agent arrays ``[N, ...]`` and market arrays ``[M, ...]`` are split along the mesh axis
(``M`` divisible by the number of devices), so each device holds whole markets and
clearing needs no communication; world-level leaves are replicated. ``step`` under
``jax.jit`` then runs sharded, with only economy-wide sums reduced across devices.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from economy.state import EconomyState

AGENT_FIELDS = ("goods", "money", "skills", "history", "preferences", "niche")
MARKET_FIELDS = ("richness", "price", "volume", "project", "treasury")


def agent_mesh(devices=None, axis: str = "agents") -> Mesh:
    """A 1-D mesh over ``devices`` (default: all) named ``axis``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.array(devices), (axis,))


def state_sharding(state: EconomyState, mesh: Mesh, axis: str = "agents") -> EconomyState:
    """A pytree of :class:`NamedSharding` matching ``state``."""
    d = mesh.shape[axis]
    m = state.price.shape[0]
    if m % d:
        raise ValueError(f"num_markets={m} is not divisible by the {d} devices of mesh axis {axis!r}")
    split = NamedSharding(mesh, P(axis))
    rep = NamedSharding(mesh, P())
    fields = {f: split for f in AGENT_FIELDS + MARKET_FIELDS if getattr(state, f) is not None}
    return jax.tree.map(lambda _: rep, state).replace(**fields)


def shard_state(state: EconomyState, mesh: Mesh, axis: str = "agents") -> EconomyState:
    """``state`` placed on ``mesh`` with whole markets per device."""
    return jax.device_put(state, state_sharding(state, mesh, axis))


def shard_agents(tree, mesh: Mesh, axis: str = "agents", batch_dims: int = 0):
    """Place a pytree whose leaves have the agent axis at ``batch_dims`` (e.g. actions)."""
    spec = P(*([None] * batch_dims), axis)
    return jax.device_put(tree, NamedSharding(mesh, spec))
