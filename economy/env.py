"""The economy environment: pure, jit- and vmap-able ``reset`` and ``step``.

One step, all agents at once: work, orders, call-auction clearing, consumption,
public projects. See :mod:`economy.market` for the auction and DESIGN.md for the
contracts.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from economy import market, rng, streams
from economy.config import EconomyConfig
from economy.generator import generate
from economy.production import CustomNiche, work
from economy.registry import make_rule
from economy.state import ActionHead, EconomyState, compile_params
from economy.utility import consume

Actions = dict[str, jax.Array]


class Economy:
    """A vectorised trading economy of ``cfg.num_agents`` agents in ``cfg.num_markets`` markets.

    Agent ``i`` trades in market ``i // (N // M)``. Actions are a dict of int32 arrays
    with the agent axis first, one per head of :attr:`action_spec`:

    * ``niche`` ``[N]``: niche to work in, ``J`` = rest;
    * ``side`` ``[N, G]``: 0 buy, 1 hold, 2 sell;
    * ``quantity`` ``[N, G]``: index into ``market.quantity_levels``;
    * ``price`` ``[N, G]``: price tick, ``L // 2`` = the market's last price, one tick =
      ``market.tick_size`` relative.

    Out-of-range actions are clipped into range; with ``checked=True`` they raise.
    """

    def __init__(self, cfg: EconomyConfig, checked: bool = False):
        self.cfg = cfg
        self.params = compile_params(cfg)
        self.checked = checked
        self.custom = tuple(
            CustomNiche(j, make_rule(n.rule), {k: jnp.float32(v) for k, v in n.params.items()})
            for j, n in enumerate(cfg.niches)
            if n.rule is not None
        )
        G, J = cfg.num_goods, cfg.num_niches
        self.action_spec: tuple[ActionHead, ...] = (
            ActionHead("niche", (), J + 1),
            ActionHead("side", (G,), 3),
            ActionHead("quantity", (G,), len(cfg.market.quantity_levels)),
            ActionHead("price", (G,), cfg.market.price_ticks),
        )
        self.obs_dim = 4 * G + 3 * J + 2
        self._price_unit = float(np.mean([g.base_price for g in cfg.goods]))  # info["value_added"]'s money unit
        self._checked_step = jax.jit(checkify.checkify(self._step_checked))

    # ---- public API ---------------------------------------------------------------------
    @property
    def num_agents(self) -> int:
        return self.cfg.num_agents

    def world_key(self, seed: int, evaluation: bool = False) -> jax.Array:
        """Key of world ``seed`` (in the world namespace, :func:`economy.streams.world_key`).
        Training seeds lie below ``world.eval_seed_start``; ``evaluation=True`` maps ``seed``
        into the held-out range above it."""
        start = self.cfg.world.eval_seed_start
        if seed < 0:
            raise ValueError(f"world seed must be non-negative, got {seed}")
        if evaluation:
            return streams.world_key(start + seed)
        if seed >= start:
            raise ValueError(
                f"world seed {seed} lies in the held-out evaluation range [{start}, ...); "
                "use evaluation=True or a smaller seed"
            )
        return streams.world_key(seed)

    def reset(self, key: jax.Array) -> tuple[jax.Array, EconomyState]:
        """Draw a world. Returns ``(obs [N, obs_dim], state)``."""
        state = generate(key, self.cfg, self.params)
        return self.observe(state), state

    def step(self, key: jax.Array, state: EconomyState, actions: Actions):
        """Returns ``(obs, state, reward, terminated, truncated, info)``; see DESIGN.md."""
        actions = self._check_shapes(actions)
        if self.checked:
            err, out = self._checked_step(key, state, actions)
            err.throw()
            return out
        return self._step(key, state, actions)

    def sample_actions(self, key: jax.Array, state: EconomyState) -> Actions:
        """Uniformly random valid actions, agent axis first."""
        keys = jax.random.split(key, len(self.action_spec))
        n = state.goods.shape[0]
        return {
            h.name: jax.random.randint(k, (n,) + h.shape, 0, h.choices, jnp.int32)
            for k, h in zip(keys, self.action_spec)
        }

    def observe(self, state: EconomyState) -> jax.Array:
        """float32 ``[N, obs_dim]``: own holdings and cash (square-root scaled), skills, tastes, niche history, and
        the market's prices (relative to base), volume per agent, richness, project bonus."""
        cfg, p = self.cfg, self.params
        n = state.goods.shape[0]
        m = state.price.shape[0]
        b = n // m
        own = jnp.concatenate(
            [
                jnp.sqrt(state.goods.astype(jnp.float32) * (1.0 / cfg.max_holding)),
                jnp.sqrt(state.money.astype(jnp.float32) * (1.0 / (4 * cfg.world.cash[1] + 1)))[:, None],
                state.skills,
                state.preferences,
                state.history,
            ],
            -1,
        )
        local = jnp.concatenate(
            [
                jnp.log(state.price.astype(jnp.float32) / p.base_price),
                jnp.log1p(state.volume.astype(jnp.float32) * (1.0 / b)),
                jnp.log(state.richness),
                (self._project_mult(state.project) - 1.0)[:, None],
            ],
            -1,
        )
        local = jnp.broadcast_to(local[:, None, :], (m, b, local.shape[-1])).reshape(n, -1)
        return jnp.concatenate([own, local], -1)

    # ---- internals ----------------------------------------------------------------------
    def _project_mult(self, project: jax.Array) -> jax.Array:
        pc = self.cfg.project
        s = project.astype(jnp.float32)
        return 1.0 + pc.gain * s / (s + pc.half)

    def _check_shapes(self, actions: Actions) -> Actions:
        if not isinstance(actions, dict):
            raise TypeError(f"actions must be a dict of arrays with keys {[h.name for h in self.action_spec]}")
        names = {h.name for h in self.action_spec}
        unknown = set(actions) - names
        missing = names - set(actions)
        if unknown or missing:
            raise ValueError(f"actions: unknown heads {sorted(unknown)}, missing heads {sorted(missing)}")
        n = self.cfg.num_agents
        out = {}
        for h in self.action_spec:
            a = jnp.asarray(actions[h.name])
            if a.shape != (n,) + h.shape:
                raise ValueError(f"action head {h.name!r} has shape {a.shape}, expected {(n,) + h.shape}")
            if not jnp.issubdtype(a.dtype, jnp.integer):
                raise ValueError(f"action head {h.name!r} has dtype {a.dtype}, expected an integer dtype")
            out[h.name] = a.astype(jnp.int32)
        return out

    def _step_checked(self, key, state, actions):
        for h in self.action_spec:
            a = actions[h.name]
            checkify.check(
                jnp.all((a >= 0) & (a < h.choices)),
                f"action head {h.name!r} has values outside [0, {h.choices}): min {{lo}}, max {{hi}}",
                lo=a.min(),
                hi=a.max(),
            )
        return self._step(key, state, actions)

    def _step(self, key: jax.Array, state: EconomyState, actions: Actions):
        cfg, p = self.cfg, self.params
        n, G = state.goods.shape
        m = state.price.shape[0]
        b = n // m
        L = cfg.market.price_ticks
        a = {h.name: jnp.clip(actions[h.name], 0, h.choices - 1) for h in self.action_spec}
        key_work, key_market, key_consume, key_project = jax.random.split(key, 4)

        # 1. Work.
        project_mult = self._project_mult(state.project)
        w = work(
            p,
            a["niche"],
            state.goods,
            state.skills,
            state.history,
            state.richness,
            state.labour,
            project_mult,
            rng.uniform(key_work, (n,)),
            num_markets=m,
            max_holding=cfg.max_holding,
            skill_floor=cfg.skill_floor,
            history_decay=cfg.history_decay,
            custom=self.custom,
            step=state.step,
        )
        goods = w.goods

        # 2. Orders, clipped to what each agent owns and can pay.
        grid = market.price_grid(state.price, p.tick_factors, cfg.market.min_price, cfg.market.max_price)
        side, tick = a["side"].reshape(m, b, G), a["price"].reshape(m, b, G)
        qty = jnp.take(p.levels, a["quantity"]).reshape(m, b, G)
        held = goods.reshape(m, b, G)
        limit = market.tick_price(
            state.price[:, None, :], jnp.take(p.tick_factors, tick), cfg.market.min_price, cfg.market.max_price
        )  # [M, B, G]: each order's limit price, equal to grid[m, g, tick]
        buying = side == market.BUY
        # Each buying good gets an equal share of the cash: the largest q <= qty with
        # q * limit * n_buy <= money, so the agent can pay for all its bids together.
        n_buy = jnp.sum(buying, -1, keepdims=True, dtype=jnp.int32)
        cash = state.money.reshape(m, b, 1)
        cost = limit * jnp.maximum(n_buy, 1)  # <= max_price * G, no overflow
        afford = jnp.floor(cash.astype(jnp.float32) / cost.astype(jnp.float32))
        q = jnp.clip(afford, 0, qty).astype(jnp.int32)
        q = q - (q * cost > cash).astype(jnp.int32)  # exact correction of float rounding
        q = q + (((q + 1) * cost <= cash) & (q < qty)).astype(jnp.int32)
        buy_q = jnp.minimum(q, cfg.max_holding - held)
        sell_q = jnp.minimum(qty, held)
        qty = jnp.where(buying, buy_q, jnp.where(side == market.SELL, sell_q, 0))

        # 3. Clearing.
        lottery = jax.random.uniform(key_market, (m, G, 2))
        c = market.clear(side, qty, tick, L, lottery, max_qty=cfg.market.quantity_levels[-1])
        clear_price = jnp.take_along_axis(grid, c.tick[..., None], -1)[..., 0]  # [M, G]
        goods = (held + c.buy_fill - c.sell_fill).reshape(n, G)
        money = state.money + jnp.sum(clear_price[:, None, :] * (c.sell_fill - c.buy_fill), -1).reshape(n)
        price = jnp.where(c.volume > 0, clear_price, state.price)

        # 4. Consumption and utility.
        u_eat, u_spoil = rng.uniform_pair(key_consume, (n, G))
        cons = consume(p, goods, state.preferences, u_eat, u_spoil)

        # 5. Public projects.
        contribution = jnp.sum(w.public.reshape(m, b), -1)
        decay = rng.stochastic_round(cfg.project.decay * state.project.astype(jnp.float32), rng.uniform(key_project, (m,)))
        project = jnp.minimum(state.project - decay + contribution, 2**30)

        new = state.replace(
            goods=cons.goods,
            money=money,
            skills=w.skills,
            history=w.history,
            price=price,
            volume=c.volume,
            project=project,
            step=state.step + 1,
        )
        working = a["niche"] < cfg.num_niches
        specialisation = jnp.where(
            working, jnp.take_along_axis(w.history, jnp.minimum(a["niche"], cfg.num_niches - 1)[:, None], -1)[:, 0], 0.0
        )
        collaboration = w.public.astype(jnp.float32) * (1.0 / cfg.collaboration_scale)
        # Value added by this step's work at the market's prices before it (outputs minus
        # inputs), in units of the catalogue's mean base price: what the scripted agents
        # rank niches by, paid whether or not the goods are then sold or eaten.
        net = (p.outputs - p.inputs).astype(jnp.float32)  # [J+1, G] (row J: rest)
        margin = state.price.astype(jnp.float32) @ net.T  # [M, J+1]
        margin_agent = jnp.take_along_axis(margin, a["niche"].reshape(m, b), axis=1).reshape(n)
        value_added = w.units.astype(jnp.float32) * margin_agent / self._price_unit
        # The environment's reward is the utility of this step's basket. Everything a learner
        # may be rewarded for is a per-agent entry of ``info``; how those are weighted per
        # population member is self-play's business (selfplay.rewards, train.variants.rewards).
        reward = cons.utility
        info = {
            "utility": cons.utility,
            "specialisation": specialisation,
            "collaboration": collaboration,
            "value_added": value_added,  # float32 [N]
            "produced": jnp.sum(w.produced, 0),
            "consumed": jnp.sum(w.used + cons.eaten + cons.spoiled, 0),
            "eaten": jnp.sum(cons.eaten, 0),
            "market_price": clear_price,
            "market_volume": c.volume,
            "niche_occupancy": w.occupancy,
            "project": project,
            "units": w.units,  # int32 [N] units of work each agent did (0 when resting)
        }
        truncated = jnp.broadcast_to(new.step >= cfg.episode_length, (n,))
        terminated = jnp.zeros((n,), bool)
        return self.observe(new), new, reward, terminated, truncated, info


class AutoReset:
    """Wraps an :class:`Economy` so that ``step`` draws a fresh world when the episode is
    truncated (the whole world ends together). ``info["done"]`` tells when that happened."""

    def __init__(self, env: Economy):
        self.env = env

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def step(self, key: jax.Array, state: EconomyState, actions: Actions):
        key_step, key_reset = jax.random.split(key)
        obs, state, reward, terminated, truncated, info = self.env.step(key_step, state, actions)
        done = jnp.any(terminated) | jnp.any(truncated)
        obs, state = jax.lax.cond(done, lambda: self.env.reset(key_reset), lambda: (obs, state))
        info = dict(info, done=done)
        return obs, state, reward, terminated, truncated, info


def rollout(env: Economy, policy, key: jax.Array, state: EconomyState, steps: int, metrics):
    """Run ``steps`` steps of ``policy`` (``(key, state) -> actions``) from ``state`` in one
    ``lax.scan``; ``metrics(env, state, info, actions)`` gives each step's scan output.

    Pure and jittable with ``env``, ``policy``, ``steps`` and ``metrics`` static, vmappable
    over ``key`` and ``state``. Each step's key splits into the policy's and the step's.
    Returns ``(final state, metrics with a leading [T] axis)``.
    """

    def body(state: EconomyState, key: jax.Array):
        key_act, key_step = jax.random.split(key)
        actions = policy(key_act, state)
        _, state, _, _, _, info = env.step(key_step, state, actions)
        return state, metrics(env, state, info, actions)

    return jax.lax.scan(body, state, jax.random.split(key, steps))


def eval_keys(env: Economy, worlds: int) -> list[tuple[jax.Array, jax.Array]]:
    """``(world key, action key)`` of each held-out evaluation world: the world is
    ``env.world_key(k, evaluation=True)``, the actions the ``evaluation/k`` stream. Every
    policy evaluated (trained populations, baselines, the market frontier) plays these."""
    root = streams.derive(jax.random.key(0), "evaluation")
    return [(env.world_key(k, evaluation=True), streams.derive(root, k)) for k in range(worlds)]


def ledger(state: EconomyState) -> dict[str, Any]:
    """Economy-wide totals, exact (summed on the host in int64): ``{"money": int, "goods": int[G]}``."""
    goods = np.asarray(state.goods, dtype=np.int64)
    money = np.asarray(state.money, dtype=np.int64)
    return {"money": int(money.sum()), "goods": goods.reshape(-1, goods.shape[-1]).sum(0)}
