"""Work: each agent picks a niche (or rests); inputs are consumed, outputs produced,
skills updated (learning by doing). Integer-exact: goods change by whole recipe units."""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from economy.registry import ProductionContext, ProductionRule, default_rule
from economy.rng import floor_div, stochastic_round
from economy.state import EconomyParams

_BIG = jnp.iinfo(jnp.int32).max


class CustomNiche(NamedTuple):
    index: int  # niche index j
    rule: ProductionRule
    params: dict  # float32 scalars


class Work(NamedTuple):
    goods: jax.Array  # int32 [N, G] after work
    skills: jax.Array  # float32 [N, J]
    history: jax.Array  # float32 [N, J]
    units: jax.Array  # int32 [N] units of work done
    produced: jax.Array  # int32 [M, G] goods produced, summed over each market's agents
    used: jax.Array  # int32 [M, G] inputs consumed, summed over each market's agents
    public: jax.Array  # int32 [N] project units produced
    occupancy: jax.Array  # int32 [M, J+1] agents per niche (last column: resting) per market


def work(
    p: EconomyParams,
    niche: jax.Array,
    goods: jax.Array,
    skills: jax.Array,
    history: jax.Array,
    richness: jax.Array,
    labour: jax.Array,
    project_mult: jax.Array,
    u: jax.Array,
    *,
    num_markets: int,
    max_holding: int,
    skill_floor: float,
    history_decay: float,
    custom: Sequence[CustomNiche] = (),
    custom_on: jax.Array | None = None,
    step: jax.Array | int = 0,
    kernel: Callable | None = None,
) -> Work:
    """``niche`` int32 [N] in [0, J] (J = rest); ``richness`` [M, J]; ``labour`` [J];
    ``project_mult`` [M]; ``u`` float32 [N] uniforms for stochastic rounding;
    ``custom_on`` bool ``[len(custom)]``: which custom rules apply (a padded economy's
    catalogue; default all). ``kernel``: :func:`economy.native.work` with ``max_holding`` bound
    (or a function with its signature) to do the integer part (caps, goods after work, public units, the market sums)
    in one pass; default the XLA formulation here, the reference."""
    n_agents, num_niches = skills.shape
    m = num_markets
    b = n_agents // m
    working = niche < num_niches
    j = jnp.minimum(niche, num_niches - 1)  # the chosen niche's column (rest: any, masked by ``working``)
    occupancy = jnp.sum(
        (niche.reshape(m, b, 1) == jnp.arange(num_niches + 1, dtype=niche.dtype)).astype(jnp.int32), axis=1
    )

    def pick(x):  # [N, J] -> [N]: the chosen niche's value, 0 at rest (a gather, no [N, J] select)
        return jnp.where(working, jnp.take_along_axis(x, j[:, None], -1)[:, 0], 0.0)

    rich_agent = jnp.take_along_axis(richness, j.reshape(m, b), -1).reshape(n_agents)  # [N]
    proj_agent = per_agent(project_mult, n_agents)
    ctx = ProductionContext(
        skill=pick(skills),
        richness=jnp.where(working, rich_agent, 0.0),
        project=proj_agent,
        workers=jnp.zeros((n_agents,), jnp.int32),
        goods=goods,
        labour=jnp.where(working, jnp.take(labour, j), 0.0),
        skill_floor=skill_floor,
        step=jnp.asarray(step, jnp.int32),
        params={},
    )
    effort = default_rule(ctx)
    for k, c in enumerate(custom):  # trace-time loop over the few niches with their own Python rule
        workers = per_agent(occupancy[:, c.index], n_agents)
        cctx = ctx._replace(
            skill=skills[:, c.index],
            richness=per_agent(richness[:, c.index], n_agents),
            workers=workers,
            labour=labour[c.index],
            params=c.params,
        )
        use = niche == c.index if custom_on is None else (niche == c.index) & custom_on[k]
        effort = jnp.where(use, c.rule(cctx).astype(jnp.float32), effort)
    units = stochastic_round(jnp.maximum(effort, 0.0), u)
    if kernel is not None:
        goods, units, cap, public, produced, used = kernel(
            niche.reshape(m, b), units.reshape(m, b), goods.reshape(m, b, -1), p.inputs, p.outputs, p.public)
        goods = goods.reshape(n_agents, -1)
        units, cap, public = (x.reshape(n_agents) for x in (units, cap, public))
    else:
        inp = jnp.take(p.inputs, niche, axis=0)  # [N, G]
        out = jnp.take(p.outputs, niche, axis=0)
        cap_in = jnp.min(jnp.where(inp > 0, floor_div(goods, jnp.maximum(inp, 1)), _BIG), -1)
        cap_out = jnp.min(jnp.where(out > 0, floor_div(max_holding - goods, jnp.maximum(out, 1)), _BIG), -1)
        cap = jnp.minimum(cap_in, cap_out)
        units = jnp.minimum(units, cap)
        used = units[:, None] * inp
        produced = units[:, None] * out
        goods = goods - used + produced
        public = units * jnp.take(p.public, niche)
        produced, used = (jnp.sum(x.reshape(m, b, -1), 1) for x in (produced, used))
    chosen = niche[:, None] == jnp.arange(num_niches, dtype=niche.dtype)  # [N, J] one-hot (rest: none)
    practised = chosen & (cap >= 1)[:, None]
    skills = jnp.where(practised, skills + p.learn * (1.0 - skills), skills * (1.0 - p.forget))
    history = history + history_decay * (chosen.astype(jnp.float32) - history)
    return Work(
        goods=goods,
        skills=skills,
        history=history,
        units=units,
        produced=produced,
        used=used,
        public=public,
        occupancy=occupancy,
    )


def per_agent(x: jax.Array, n: int) -> jax.Array:
    """Market array ``[M, ...]`` -> agent array ``[N, ...]`` (agent i in market i // (N // M))."""
    m = x.shape[0]
    return jnp.broadcast_to(x[:, None], (m, n // m) + x.shape[1:]).reshape((n,) + x.shape[1:])


def expected_effort(cfg, state) -> jax.Array:
    """float32 ``[N, J]``: units of work one step in each niche would give each agent by the
    default rule, ``labour_j x (floor + (1 - floor) skill_ij) x richness_mj x project_m``
    (before the inputs and holding caps; a niche's own rule may differ)."""
    n = state.goods.shape[0]
    pc = cfg.project
    stock = state.project.astype(jnp.float32)
    project_mult = per_agent(1.0 + pc.gain * stock / (stock + pc.half), n)  # [N]
    skill_mult = cfg.skill_floor + (1.0 - cfg.skill_floor) * state.skills
    return state.labour * skill_mult * per_agent(state.richness, n) * project_mult[:, None]

