"""Procedural worlds: ``reset(key)`` draws resource richness, tastes, endowments, skills,
recipe jitter and initial prices from the config's distributions."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from economy import rng
from economy.config import EconomyConfig
from economy.state import EconomyParams, EconomyState


def generate(key: jax.Array, cfg: EconomyConfig, p: EconomyParams, catalogue=None,
             resources: int | None = None) -> EconomyState:
    """A world of ``cfg``'s catalogue (``p`` compiled from it), or with ``catalogue`` (a
    padded :class:`economy.catalogues.Catalogue`, ``p`` its params, ``resources`` the padded
    count) a world of that catalogue, which it carries in its state."""
    N, M = cfg.num_agents, cfg.num_markets
    G, J = p.utility.shape[0], p.learn.shape[0]
    R = len(cfg.resources) if resources is None else resources
    w = cfg.world
    (key_rich, key_jitter, key_pref, key_goods, key_cash, key_skill, key_price) = jax.random.split(key, 7)
    resource = jnp.exp(w.richness_sigma * jax.random.normal(key_rich, (M, R)))
    resource = jnp.concatenate([resource, jnp.ones((M, 1))], -1)  # column R: "no resource"
    richness = resource[:, p.affinity]  # [M, J]
    labour = p.labour * jnp.exp(w.recipe_jitter * jax.random.normal(key_jitter, (J,)))
    # Tastes: Dirichlet around the base weights over goods with utility.
    alpha = jnp.where(p.utility > 0, w.preference_concentration * p.utility, 1.0)
    gam = rng.gamma(key_pref, jnp.broadcast_to(alpha, (N, G)))  # = jax.random.gamma, in chunks
    gam = jnp.where(p.utility > 0, gam, 0.0)
    preferences = gam / jnp.maximum(gam.sum(-1, keepdims=True), 1e-12)
    if catalogue is None:
        lo = jnp.asarray([g.endowment[0] for g in cfg.goods], jnp.int32)
        hi = jnp.asarray([g.endowment[1] for g in cfg.goods], jnp.int32)
    else:
        lo, hi = catalogue.endowment[:, 0], catalogue.endowment[:, 1]
    goods = jax.random.randint(key_goods, (N, G), lo, hi + 1, jnp.int32)
    money = jax.random.randint(key_cash, (N,), w.cash[0], w.cash[1] + 1, jnp.int32)
    skills = jax.random.uniform(key_skill, (N, J), minval=w.skill_init[0], maxval=w.skill_init[1])
    if catalogue is not None:  # padded niches: no skill (never practised, so it stays 0)
        skills = jnp.where(catalogue.niches, skills, 0.0)
    price = jnp.round(p.base_price * jnp.exp(w.price_jitter * jax.random.normal(key_price, (M, G))))
    price = jnp.clip(price, cfg.market.min_price, cfg.market.max_price).astype(jnp.int32)
    return EconomyState(
        goods=goods,
        money=money,
        skills=skills.astype(jnp.float32),
        history=jnp.zeros((N, J), jnp.float32),
        preferences=preferences.astype(jnp.float32),
        richness=richness.astype(jnp.float32),
        labour=labour.astype(jnp.float32),
        price=price,
        volume=jnp.zeros((M, G), jnp.int32),
        project=jnp.zeros((M,), jnp.int32),
        treasury=jnp.zeros((M,), jnp.int32),
        step=jnp.zeros((), jnp.int32),
        catalogue=catalogue,
        niche=jnp.full((N,), J, jnp.int32) if cfg.niche_tenure > 1 else None,
    )
