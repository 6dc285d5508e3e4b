"""Scripted baseline agents: "work your best niche, sell surplus near the last price,
buy what your utility lacks".

The policy is one pure, jittable function of ``(env, key, state)``; everything is array
arithmetic over the agent axis (``[N, J]`` niche values, ``[N, G]`` orders), with no
Python loop over agents, goods, niches or markets. Agent ``i`` sees the prices, richness
and project stock of its market ``i // (N // M)``.

One step, per agent:

1. **Niche**: the expected units of work in niche ``j`` follow the default production
   rule, ``labour_j * (floor + (1 - floor) * skill_ij) * richness_mj * project_m``,
   capped by the inputs the agent holds and by the holding cap; the niche's value is those
   units (plus the rest of the effort, work that waits for inputs still to be bought, at
   the ``restock_value`` discount) times the recipe's margin at the market's last prices
   (outputs minus inputs), plus
   ``public_value`` per public-project unit, shrinking as the local stock fills, plus
   the money the market's treasury pays per public unit (``treasury.pay``, expected
   at most ``treasury / agents_per_market``; see :func:`niche_values`). Each
   agent takes the niche of highest value (after a small log-normal "taste" noise that
   spreads agents over nearly equal niches), rests if none is worth anything, and with
   probability ``epsilon`` tries a uniformly random niche (or rest) instead.
2. **Needs**: the inputs the chosen niche uses in one step, plus, for every consumer
   good, a holding target ``preference_g * cash_share * money / price_g`` (Cobb-Douglas:
   the share of wealth kept in good ``g`` is its preference weight).
3. **Orders**, on the holdings expected after work: sell the surplus above the needs a
   tick or so (1..``price_spread`` ticks) below the last price, buy the shortfall as
   far above it. The order size is the largest quantity level not above the wanted
   amount; an agent holds when the amount is below the smallest level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from pydantic import BaseModel, ConfigDict, Field

from economy import market
from economy.market import BUY, HOLD, SELL
from economy.production import expected_effort
from economy.production import per_agent as _per_agent
from economy.state import EconomyState

if TYPE_CHECKING:  # pragma: no cover
    from economy.env import Economy

Actions = dict[str, jax.Array]


class ScriptedConfig(BaseModel):
    """Knobs of the scripted baseline (frozen; the defaults are the baseline)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    epsilon: float = Field(0.05, ge=0.0, le=1.0)  # probability of a uniformly random niche (or rest) instead of the best
    value_noise: float = Field(0.3, ge=0.0)  # log-normal spread of each agent's niche values per step
    restock_value: float = Field(0.5, ge=0.0, le=1.0)  # weight of work that waits for inputs still to be bought
    public_value: float = Field(20.0, ge=0.0)  # money value of one public-project unit at an empty local stock
    cash_share: float = Field(0.5, ge=0.0)  # wealth kept in consumer goods, as a multiple of cash (split by preference)
    price_spread: int = Field(1, ge=1, le=1024)  # orders go 1..price_spread price steps beyond the last price (uniformly drawn)


def quantity_index(amount: jax.Array, levels: jax.Array) -> jax.Array:
    """Index of the largest level ``<= amount`` (``-1`` when ``amount`` is below every level).

    ``amount`` float or int ``[...]``; ``levels`` int32 ``[Q]`` increasing -> int32 ``[...]``.
    """
    return jnp.sum(amount[..., None] >= levels, -1).astype(jnp.int32) - 1


def niche_values(env: "Economy", state: EconomyState, config: ScriptedConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Expected value of one step of work in each niche, per agent.

    Returns ``(value, units, effort)``, float32 ``[N, J]``: ``effort`` is the units of
    work the default rule gives, ``units`` the same capped by the inputs held and the
    holding cap, ``value`` = (``units`` + ``restock_value`` x (``effort`` - ``units``)) x
    (margin at last prices + public value), where a
    public unit is worth ``public_value * (half / (stock + half))^2`` plus, with a paying
    treasury, ``min(pay, treasury / agents_per_market)`` money; a niche's wage
    (``treasury.wages``) adds ``min(wage, treasury / agents_per_market)`` per unit of work.
    """
    cfg, p = env.cfg, env.catalogue_params(state)  # a padded economy: the world's own catalogue
    n, _ = state.goods.shape
    J = env.num_niches
    pc = cfg.project
    price = _per_agent(state.price.astype(jnp.float32), n)  # [N, G]
    stock = state.project.astype(jnp.float32)  # [M]
    effort = expected_effort(cfg, state)  # [N, J]

    inputs = p.inputs[:J].astype(jnp.float32)  # [J, G]
    outputs = p.outputs[:J].astype(jnp.float32)
    goods = state.goods.astype(jnp.float32)[:, None, :]  # [N, 1, G]
    big = jnp.float32(3.0e38)
    cap_in = jnp.min(jnp.where(inputs > 0, jnp.floor(goods / jnp.maximum(inputs, 1.0)), big), -1)
    cap_out = jnp.min(jnp.where(outputs > 0, jnp.floor((cfg.max_holding - goods) / jnp.maximum(outputs, 1.0)), big), -1)
    units = jnp.minimum(effort, jnp.minimum(cap_in, cap_out))  # [N, J]

    margin = price @ (outputs - inputs).T  # [N, J] money per unit of work
    # Marginal bonus of one more public unit relative to an empty stock: d mult / d stock.
    public_scale = _per_agent((pc.half / (stock + pc.half)) ** 2, n)  # [N]
    public = p.public[:J].astype(jnp.float32) * config.public_value * public_scale[:, None]
    # the market's treasury per agent [N]: what it could pay each of its agents
    treasury = _per_agent(state.treasury.astype(jnp.float32) * (1.0 / (n // state.treasury.shape[0])), n)
    if cfg.treasury.pay > 0:  # static: with pay = 0 the values are exactly those without a treasury
        # Procurement pays ``pay`` money per public unit from the market's treasury, as far
        # as it reaches: expected min(pay, treasury / agents per market), i.e. in full while
        # the treasury could pay one unit to every agent of the market, pro rata below.
        procurement = jnp.minimum(jnp.float32(cfg.treasury.pay), treasury)  # [N]
        public = public + p.public[:J].astype(jnp.float32) * procurement[:, None]
    if env.wages.any():  # static; wages per unit of work, paid as far as the treasury reaches (as above)
        public = public + jnp.minimum(jnp.asarray(env.wages[:J], jnp.float32)[None, :], treasury[:, None])
    # Work the inputs held allow pays now; the rest of the effort pays once the inputs
    # bought this step arrive, so it counts at the ``restock_value`` discount.
    value = (units + config.restock_value * (effort - units)) * (margin + public)
    return value, units, effort


def scripted_actions(
    env: "Economy",
    key: jax.Array,
    state: EconomyState,
    config: ScriptedConfig = ScriptedConfig(),
    niche: jax.Array | None = None,
) -> Actions:
    """Scripted actions for every agent, in the format of ``env.sample_actions``.

    Pure and jittable (``env`` and ``config`` are static). ``state`` is the economy
    state before the step; ``key`` drives exploration, value noise and price ticks.
    ``niche`` (int32 ``[N]``, ``J`` = rest), when given, fixes each agent's niche instead
    of step 1 (no exploration); the needs and orders then follow it exactly as for a
    niche the agent chose (the market frontier, :mod:`analysis.frontier`, plays so).
    Under ``economy.niche_tenure`` an agent between its renewal steps keeps the niche it
    works (:meth:`economy.Economy.working_niche`), and its orders are for that niche.
    """
    cfg, p = env.cfg, env.catalogue_params(state)
    n, G = state.goods.shape
    J = env.num_niches
    L = cfg.market.price_ticks
    key_explore, key_random, key_noise, key_tick = jax.random.split(key, 4)

    # 1. Niche: best value (with taste noise), rest if nothing pays, epsilon exploration.
    value, units, effort = niche_values(env, state, config)
    noise = jnp.exp(config.value_noise * jax.random.normal(key_noise, (n, J)))
    value = jnp.where(value > 0, value * noise, value)
    if state.catalogue is not None:  # a padded economy's padded niches are never chosen
        value = jnp.where(state.catalogue.niches, value, -jnp.inf)
    value = jnp.concatenate([value, jnp.zeros((n, 1), value.dtype)], -1)  # column J: rest
    best = jnp.argmax(value, -1).astype(jnp.int32)
    if niche is None:
        explore = jax.random.uniform(key_explore, (n,)) < config.epsilon
        niche = jnp.where(explore, env.random_niche(key_random, state), best)
    else:
        niche = jnp.broadcast_to(jnp.asarray(niche, jnp.int32), (n,))
    niche = env.working_niche(state, niche)  # under economy.niche_tenure: the niche it is bound to

    # 2. Needs: one more step of the chosen niche's inputs, and the consumption targets.
    working = niche < J
    chosen = jnp.minimum(niche, J - 1)
    pick = lambda x: jnp.where(working, jnp.take_along_axis(x, chosen[:, None], -1)[:, 0], 0.0)
    inputs = jnp.take(p.inputs, niche, axis=0).astype(jnp.float32)  # [N, G] (row J: rest, zeros)
    outputs = jnp.take(p.outputs, niche, axis=0).astype(jnp.float32)
    held = state.goods.astype(jnp.float32) + pick(units)[:, None] * (outputs - inputs)  # after work
    price = _per_agent(state.price.astype(jnp.float32), n)
    consumer = (p.consume > 0)[None, :]
    target = jnp.where(consumer, state.preferences * config.cash_share * state.money.astype(jnp.float32)[:, None] / price, 0.0)
    need = target + jnp.ceil(pick(effort))[:, None] * inputs

    # 3. Orders: sell the surplus below the last price, buy the shortfall above it.
    surplus = held - need
    level = quantity_index(jnp.floor(jnp.abs(surplus)), p.levels)
    side = jnp.where(level < 0, HOLD, jnp.where(surplus > 0, SELL, BUY)).astype(jnp.int32)
    # Integer prices: near a low price several ticks round to it, so "one tick" means the
    # nearest tick whose price differs from the last price (then ``offset - 1`` more).
    grid = market.price_grid(state.price, p.tick_factors, cfg.market.min_price, cfg.market.max_price)  # [M, G, L]
    last = state.price[..., None]
    below = _per_agent(jnp.sum(grid < last, -1) - 1, n)  # [N, G] highest tick priced below the last price
    above = _per_agent(L - jnp.sum(grid > last, -1), n)  # lowest tick priced above it
    centre = L // 2
    below = jnp.where(below < 0, centre - 1, below)  # at min_price (max_price): a plain tick
    above = jnp.where(above >= L, centre + 1, above)
    offset = jax.random.randint(key_tick, (n, G), 0, config.price_spread, jnp.int32)
    tick = jnp.clip(jnp.where(side == SELL, below - offset, above + offset), 0, L - 1)
    return {
        "niche": niche,
        "side": side,
        "quantity": jnp.maximum(level, 0),
        "price": jnp.where(side == HOLD, centre, tick).astype(jnp.int32),
    }


def random_actions(env: "Economy", key: jax.Array, state: EconomyState) -> Actions:
    """Uniformly random valid actions (``env.sample_actions``): the baseline to beat."""
    return env.sample_actions(key, state)
