"""Consumption and utility: agents eat a fraction of their consumer goods, the rest of
their stocks perish at each good's rate; the reward is the log Cobb-Douglas utility of
this step's consumption basket."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from economy.rng import stochastic_round
from economy.state import EconomyParams


class Consumption(NamedTuple):
    goods: jax.Array  # int32 [N, G] after eating and spoilage
    eaten: jax.Array  # int32 [N, G]
    spoiled: jax.Array  # int32 [N, G]
    utility: jax.Array  # float32 [N]


def cobb_douglas(preferences: jax.Array, basket: jax.Array) -> jax.Array:
    """Log Cobb-Douglas utility ``sum_g w_g log(1 + c_g)`` of baskets ``[N, G]`` -> ``[N]``."""
    return jnp.sum(preferences * jnp.log1p(basket.astype(jnp.float32)), -1)


def consume(p: EconomyParams, goods: jax.Array, preferences: jax.Array, u_eat: jax.Array, u_spoil: jax.Array) -> Consumption:
    """``u_eat``, ``u_spoil``: float32 [N, G] uniforms in (0, 1). Never takes more than is held."""
    eaten = stochastic_round(p.consume * goods.astype(jnp.float32), u_eat)
    left = goods - eaten
    spoiled = stochastic_round(p.perish * left.astype(jnp.float32), u_spoil)
    return Consumption(goods=left - spoiled, eaten=eaten, spoiled=spoiled, utility=cobb_douglas(preferences, eaten))
