"""The economy's state (agents on the leading axis) and the arrays compiled from config."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from economy.config import EconomyConfig


@struct.dataclass
class EconomyState:
    """Everything that changes. Agent arrays ``[N, ...]``; market arrays ``[M, ...]``."""

    goods: jax.Array  # int32 [N, G] holdings
    money: jax.Array  # int32 [N]
    skills: jax.Array  # float32 [N, J] learning-by-doing skill per niche, in [0, 1]
    history: jax.Array  # float32 [N, J] EMA of the agent's own niche choices
    preferences: jax.Array  # float32 [N, G] Cobb-Douglas weights (sum to 1)
    richness: jax.Array  # float32 [M, J] local richness of each niche's resource
    labour: jax.Array  # float32 [J] this world's labour per niche (config x recipe jitter)
    price: jax.Array  # int32 [M, G] last clearing price
    volume: jax.Array  # int32 [M, G] last traded volume
    project: jax.Array  # int32 [M] public-project stock
    treasury: jax.Array  # int32 [M] public money of each market (taxes in, procurement out)
    step: jax.Array  # int32 [] steps since reset
    # the world's catalogue as data (economy.catalogues.Catalogue) in a padded economy; None
    # where the catalogue is compiled into the step (every economy of one YAML file)
    catalogue: Any = None
    # int32 [N] the niche each agent works (J: rest) under economy.niche_tenure > 1; None otherwise
    niche: Any = None


class ActionHead(NamedTuple):
    """One categorical action head: ``shape`` per agent, ``choices`` options per entry."""

    name: str
    shape: tuple[int, ...]
    choices: int


@struct.dataclass
class EconomyParams:
    """Static arrays compiled once from the config (closure constants of ``step``)."""

    inputs: jax.Array  # int32 [J+1, G] goods consumed per unit of work (row J: rest)
    outputs: jax.Array  # int32 [J+1, G] goods produced per unit of work
    public: jax.Array  # int32 [J+1] project units per unit of work
    learn: jax.Array  # float32 [J]
    forget: jax.Array  # float32 [J]
    affinity: jax.Array  # int32 [J] resource index, or R for "no resource" (richness 1)
    labour: jax.Array  # float32 [J] config labour (before world jitter)
    utility: jax.Array  # float32 [G] base Cobb-Douglas weights (normalised)
    consume: jax.Array  # float32 [G] fraction eaten per step (0 for goods without utility)
    perish: jax.Array  # float32 [G]
    base_price: jax.Array  # int32 [G]
    levels: jax.Array  # int32 [Q] order quantity levels
    tick_factors: jax.Array  # float32 [L]


def compile_params(cfg: EconomyConfig) -> EconomyParams:
    goods = {g.name: i for i, g in enumerate(cfg.goods)}
    G, J = cfg.num_goods, cfg.num_niches
    inputs = np.zeros((J + 1, G), np.int32)
    outputs = np.zeros((J + 1, G), np.int32)
    for j, n in enumerate(cfg.niches):
        for name, q in n.inputs.items():
            inputs[j, goods[name]] = q
        for name, q in n.outputs.items():
            outputs[j, goods[name]] = q
    resources = {r: i for i, r in enumerate(cfg.resources)}
    utility = np.array([g.utility for g in cfg.goods], np.float32)
    from economy.market import tick_factors

    return EconomyParams(
        inputs=jnp.asarray(inputs),
        outputs=jnp.asarray(outputs),
        public=jnp.asarray([n.public for n in cfg.niches] + [0], jnp.int32),
        learn=jnp.asarray([n.learn for n in cfg.niches], jnp.float32),
        forget=jnp.asarray([n.forget for n in cfg.niches], jnp.float32),
        affinity=jnp.asarray([resources.get(n.affinity, len(resources)) for n in cfg.niches], jnp.int32),
        labour=jnp.asarray([n.labour for n in cfg.niches], jnp.float32),
        utility=jnp.asarray(utility / utility.sum()),
        consume=jnp.asarray([g.consume if g.utility > 0 else 0.0 for g in cfg.goods], jnp.float32),
        perish=jnp.asarray([g.perish for g in cfg.goods], jnp.float32),
        base_price=jnp.asarray([g.base_price for g in cfg.goods], jnp.int32),
        levels=jnp.asarray(cfg.market.quantity_levels, jnp.int32),
        tick_factors=tick_factors(cfg.market.price_ticks, cfg.market.tick_size),
    )
