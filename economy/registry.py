"""Registries: production rules for niches that a recipe cannot express.

A niche whose YAML entry says ``rule: NAME`` gets its units of work per step from the
registered pure function instead of the default rule. The function sees every agent
(arrays with the agent axis first) and returns float32 ``[N]``; only agents who chose
the niche use the result, and inputs, outputs and skills then follow the recipe as for
any niche, so exact accounting never depends on the rule::

    @economy.register_rule("fishery")
    def fishery(ctx: economy.ProductionContext) -> jax.Array:
        # a common pool: output per worker falls once more than `capacity` fish here
        crowd = jnp.maximum(ctx.workers / ctx.params["capacity"], 1.0)
        return economy.default_rule(ctx) / crowd
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class ProductionContext(NamedTuple):
    """What a production rule may look at. Shapes: ``[N]`` unless noted."""

    skill: jax.Array  # the agent's skill in this niche, in [0, 1]
    richness: jax.Array  # richness of the niche's resource in the agent's market
    project: jax.Array  # productivity multiplier from the market's public project (>= 1)
    workers: jax.Array  # number of agents in the same market who chose this niche this step
    goods: jax.Array  # int32 [N, G] holdings before work
    labour: jax.Array  # scalar: this world's labour of the niche (config labour x recipe jitter)
    skill_floor: float  # output multiplier of an unskilled worker
    step: jax.Array  # int32 scalar: steps since reset (for seasonal rules)
    params: dict  # the niche's ``params`` from the config, as float32 scalars


ProductionRule = Callable[[ProductionContext], jax.Array]

PRODUCTION_RULES: dict[str, ProductionRule] = {}


def default_rule(ctx: ProductionContext) -> jax.Array:
    """Units of work per step: labour x skill multiplier x local richness x project bonus."""
    skill_mult = ctx.skill_floor + (1.0 - ctx.skill_floor) * ctx.skill
    return ctx.labour * skill_mult * ctx.richness * ctx.project


def register_rule(name: str, rule: ProductionRule | None = None, replace: bool = False):
    """Register ``rule`` under ``name`` (usable as a decorator). Re-registering a name
    raises unless ``replace``."""

    def deco(fn: ProductionRule) -> ProductionRule:
        if not callable(fn):
            raise TypeError(f"production rule {name!r} must be callable, got {type(fn).__name__}")
        if name in PRODUCTION_RULES and not replace:
            raise ValueError(f"production rule {name!r} is already registered (replace=True to override)")
        PRODUCTION_RULES[name] = fn
        return fn

    return deco(rule) if rule is not None else deco


def make_rule(name: str) -> ProductionRule:
    try:
        return PRODUCTION_RULES[name]
    except KeyError:
        raise KeyError(f"unknown production rule {name!r} (registered: {sorted(PRODUCTION_RULES)})") from None


@register_rule("congestion")
def congestion_rule(ctx: ProductionContext) -> jax.Array:
    """A common-pool resource (a fishing ground, a forest): per-worker output falls as
    ``capacity / workers`` once more than ``params.capacity`` agents of the market work it."""
    crowd = jnp.maximum(ctx.workers.astype(jnp.float32) / ctx.params["capacity"], 1.0)
    return default_rule(ctx) / crowd


@register_rule("tooled")
def tooled_rule(ctx: ProductionContext) -> jax.Array:
    """Capital: an agent holding at least one unit of the good at catalogue index
    ``params.tool`` works ``1 + params.bonus`` times as much (tools make work productive,
    so the goods that make tools are demanded by producers, not only by consumers)."""
    held = ctx.goods[:, int(ctx.params["tool"])] >= 1
    return default_rule(ctx) * (1.0 + ctx.params["bonus"] * held.astype(jnp.float32))
