"""The economy environment: pure, jit- and vmap-able ``reset`` and ``step``.

One step, all agents at once: work, orders, call-auction clearing, the markets'
treasuries (sales tax, procurement of public units), consumption, public projects.
See :mod:`economy.market` for the auction and docs/economy.md for the contracts.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from economy import catalogues as cat_lib
from economy import market, rng, streams
from economy import native as native_lib
from economy.config import INT32_MAX, EconomyConfig
from economy.generator import generate
from economy.production import CustomNiche, expected_effort, per_agent, work
from economy.registry import make_rule
from economy.state import ActionHead, EconomyState, compile_params
from economy.utility import cobb_douglas, consume

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

    With ``catalogues`` (configs that share every setting of ``cfg`` but goods, niches and
    resources) the economy is *padded* (:mod:`economy.catalogues`): its goods and niches
    axes have ``sizes`` (default: the largest of the catalogues), each world carries its
    catalogue in ``state.catalogue``, and :meth:`reset` draws one of ``catalogues``
    uniformly (:meth:`reset_catalogue` plays a given one). ``cfg``'s own catalogue is
    then only the template of the shared settings.

    ``native`` (default: :func:`economy.native.available`): work's integer part, orders,
    auctions, settlement and consumption, and the observation by the native kernels
    (:func:`economy.native.work`, :func:`economy.native.market`, :func:`economy.native.observe`:
    one pass each) instead of XLA's; the same numbers either way. ``mesh``: where the state is split over several
    devices (:mod:`economy.sharding`), the kernels then run per device on its whole markets
    (``shard_map``) and the state stays split; without it a sharded step still gives the
    same numbers, through XLA's gathering the kernels' inputs, but its state may come back
    replicated.
    """

    def __init__(self, cfg: EconomyConfig, checked: bool = False,
                 catalogues: Sequence[EconomyConfig] | None = None, sizes: cat_lib.Sizes | None = None,
                 native: bool | None = None, mesh=None):
        self.cfg = cfg
        self.checked = checked
        self.native = native_lib.available() if native is None else bool(native)
        if self.native and not native_lib.available():
            raise RuntimeError(f"native=True, but the native market kernel is unavailable: {native_lib._load()}")
        self.mesh = mesh
        self.catalogues = None
        if catalogues is not None:
            if not catalogues:
                raise ValueError("catalogues: at least one")
            cat_lib.check_shared([cfg, *catalogues])
            self.sizes = cat_lib.Sizes(*(sizes or cat_lib.sizes_of(catalogues)))
            self.catalogue_configs = tuple(catalogues)
            self.rule_keys = cat_lib.rule_keys(catalogues)
            self.catalogues = cat_lib.stack([cat_lib.pad(c, self.sizes, self.rule_keys) for c in catalogues])
            self.params = cat_lib.take(self.catalogues, 0).params
            self.custom = tuple(
                CustomNiche(j, make_rule(rule), {k: jnp.float32(v) for k, v in params}) for j, rule, params in self.rule_keys
            )
        else:
            self.sizes = cat_lib.Sizes(cfg.num_goods, cfg.num_niches, len(cfg.resources))
            self.params = compile_params(cfg)
            self.custom = tuple(
                CustomNiche(j, make_rule(n.rule), {k: jnp.float32(v) for k, v in n.params.items()})
                for j, n in enumerate(cfg.niches)
                if n.rule is not None
            )
        G, J = self.sizes.goods, self.sizes.niches
        # treasury.wages as money per unit of work in each niche, int32 [J + 1] (rest: 0)
        if self.catalogues is not None and cfg.treasury.wages:
            raise ValueError("treasury.wages name niches of one catalogue; a padded economy (catalogues) has none")
        self.wages = np.zeros(J + 1, np.int32)
        if self.catalogues is None:
            self.wages[:J] = [cfg.treasury.wages.get(name, 0) for name in cfg.niche_names]
        self.action_spec: tuple[ActionHead, ...] = (
            ActionHead("niche", (), J + 1),
            ActionHead("side", (G,), 3),
            ActionHead("quantity", (G,), len(cfg.market.quantity_levels)),
            ActionHead("price", (G,), cfg.market.price_ticks),
        )
        self.obs_dim = 4 * G + 3 * J + 2 + (J if cfg.observe_values else 0)
        if self.catalogues is not None:  # what each good and niche of the world's catalogue is
            self.obs_dim += cat_lib.feature_dim(self.sizes)
        self._price_unit = float(np.mean([g.base_price for g in cfg.goods]))  # info["value_added"]'s money unit
        self._checked_step = jax.jit(checkify.checkify(self._step_checked))

    # ---- public API ---------------------------------------------------------------------
    @property
    def num_agents(self) -> int:
        return self.cfg.num_agents

    @property
    def num_goods(self) -> int:
        """G: the goods axis (the padded size in a padded economy)."""
        return self.sizes.goods

    @property
    def num_niches(self) -> int:
        """J: the niches axis (rest is action ``J``; the padded size in a padded economy)."""
        return self.sizes.niches

    @property
    def padded(self) -> bool:
        return self.catalogues is not None

    @property
    def niche_names(self) -> tuple[str, ...]:
        """The niches' names; a padded economy's niches are slots (``slot_0``, ...), whose
        meaning is each world's catalogue's."""
        return self.cfg.niche_names if self.catalogues is None else cat_lib.slot_names(self.sizes)[0]

    @property
    def good_names(self) -> tuple[str, ...]:
        return self.cfg.good_names if self.catalogues is None else cat_lib.slot_names(self.sizes)[1]

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
        """Draw a world. Returns ``(obs [N, obs_dim], state)``. A padded economy first
        draws which of its catalogues the world plays (uniformly)."""
        if self.catalogues is None:
            state = generate(key, self.cfg, self.params)
            return self.observe(state), state
        key_catalogue, key_world = jax.random.split(key)
        c = jax.random.randint(key_catalogue, (), 0, len(self.catalogue_configs))
        return self.reset_catalogue(key_world, cat_lib.take(self.catalogues, c))

    def reset_catalogue(self, key: jax.Array, catalogue: cat_lib.Catalogue) -> tuple[jax.Array, EconomyState]:
        """A world of ``catalogue`` (padded to this economy's sizes, e.g. ``pad(cfg,
        env.sizes)`` of a catalogue it was not built with). Padded economies only."""
        if self.catalogues is None:
            raise ValueError("reset_catalogue: this economy compiles its one catalogue; build it with catalogues=[...]")
        state = generate(key, self.cfg, catalogue.params, catalogue, resources=self.sizes.resources)
        return self.observe(state), state

    def catalogue_params(self, state: EconomyState):
        """The catalogue's arrays: the world's own in a padded economy, else the compiled ones."""
        return self.params if state.catalogue is None else state.catalogue.params

    def _per_unit(self, state: EconomyState):
        """float32 ``1 / price unit`` (the mean base price of the catalogue's goods)."""
        return np.float32(1.0 / self._price_unit) if state.catalogue is None else state.catalogue.per_price_unit

    def _goods_axis(self, state: EconomyState):
        """``logical`` of per-good random draws (:func:`economy.rng.bits`): the real goods count."""
        return None if state.catalogue is None else (1, state.catalogue.num_goods)

    def step(self, key: jax.Array, state: EconomyState, actions: Actions):
        """Returns ``(obs [N, obs_dim], state, reward [N], terminated [N], truncated [N],
        info)``: the reward is the utility of the step's consumption, ``truncated`` is set
        for every agent at ``episode_length``; ``info`` holds the per-agent reward terms and
        the markets' totals (see :meth:`_step` and docs/economy.md)."""
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
        out = {
            h.name: jax.random.randint(k, (n,) + h.shape, 0, h.choices, jnp.int32)
            for k, h in zip(keys[1:], self.action_spec[1:])
        }
        return {"niche": self.random_niche(keys[0], state), **out}

    def random_niche(self, key: jax.Array, state: EconomyState) -> jax.Array:
        """int32 ``[N]``: a niche or rest for every agent, uniformly over the world's real
        niches and rest (in a padded economy the real niches come first; rest is ``J``)."""
        n, J = state.goods.shape[0], self.num_niches
        if state.catalogue is None:
            return jax.random.randint(key, (n,), 0, J + 1, jnp.int32)
        real = jnp.sum(state.catalogue.niches, dtype=jnp.int32)
        k = jax.random.randint(key, (n,), 0, real + 1, jnp.int32)
        return jnp.where(k < real, k, J)

    def observe(self, state: EconomyState) -> jax.Array:
        """float32 ``[N, obs_dim]``: own holdings and cash (square-root scaled), skills, tastes, niche history, and
        the market's log prices relative to base, ``log(1 + volume per agent)``, log richness of
        each niche's resource and project bonus; with ``observe_values`` then :meth:`niche_values`;
        in a padded economy then what each good and niche of the world's catalogue is
        (:func:`economy.catalogues.features`, the same for every agent of the world)."""
        cfg, p = self.cfg, self.catalogue_params(state)
        n = state.goods.shape[0]
        m = state.price.shape[0]
        goods_scale, money_scale = 1.0 / cfg.max_holding, 1.0 / (4 * cfg.world.cash[1] + 1)
        local = jnp.concatenate(
            [
                jnp.log(state.price.astype(jnp.float32) / p.base_price),
                jnp.log1p(state.volume.astype(jnp.float32) * (1.0 / (n // m))),
                jnp.log(state.richness),
                (self._project_mult(state.project) - 1.0)[:, None],
            ],
            -1,
        )  # [M, 2G + J + 1]: small
        blocks = [state.skills, state.preferences, state.history, local]  # per agent, ..., per market
        if cfg.observe_values:
            blocks.append(self.niche_values(state))
        if state.catalogue is not None:
            blocks.append(cat_lib.features(state.catalogue, state.labour)[None])  # [1, F]: per world
        if self.native:  # one pass, each row written once (no [N, D] concatenate)
            call = functools.partial(native_lib.observe, goods_scale=goods_scale, money_scale=money_scale)
            split = tuple(x.shape[0] > 1 for x in blocks)
            return self._per_device(lambda g, mo, *bl: call(g, mo, bl), (True, True, *split), 1)(
                state.goods, state.money, *blocks)
        own = [
            jnp.sqrt(state.goods.astype(jnp.float32) * goods_scale),
            jnp.sqrt(state.money.astype(jnp.float32) * money_scale)[:, None],
        ]
        return jnp.concatenate(own + [per_agent(x, n) if x.shape[0] < n else x for x in blocks], -1)

    def working_niche(self, state: EconomyState, niche: jax.Array) -> jax.Array:
        """int32 ``[N]``: the niche each agent works this step when it draws ``niche``. With
        ``economy.niche_tenure`` K > 1 agent ``i`` takes a new niche only at its renewal
        steps, ``(step + i) % K == 0`` (and a world's first step: every agent then chooses),
        and otherwise keeps ``state.niche``; with K = 1 this is ``niche``. The step applies it
        to the actions it is given; a learner or rule that places orders for its niche asks
        it first (:meth:`selfplay.train.Trainer.complete`, :func:`agents.scripted.scripted_actions`)."""
        if self.cfg.niche_tenure == 1:
            return niche
        return jnp.where(self.renewing(state), niche, state.niche)

    def renewing(self, state: EconomyState) -> jax.Array:
        """bool ``[N]``: which agents take the niche they draw this step (all of them with
        ``niche_tenure`` 1; see :meth:`working_niche`)."""
        K, n = self.cfg.niche_tenure, state.goods.shape[0]
        if K == 1:
            return jnp.ones((n,), bool)
        agent = jnp.arange(n, dtype=jnp.int32)
        return ((state.step + agent) % K == 0) | (state.step == 0)

    def niche_values(self, state: EconomyState) -> jax.Array:
        """float32 ``[N, J]``: what one step of work in each niche would earn the agent now,
        ``expected effort x (outputs - inputs) at the market's last prices`` (plus ``pay`` per
        public unit and the niche's wage while the treasury pays), in units of the catalogue's mean base price,
        signed-log scaled (``sign(v) log(1 + |v|)``); the observation's last ``J`` columns
        with ``observe_values``."""
        p, n = self.catalogue_params(state), state.goods.shape[0]
        J = self.num_niches
        net = (p.outputs[:J] - p.inputs[:J]).astype(jnp.float32)  # [J, G]
        margin = state.price.astype(jnp.float32) @ net.T  # [M, J] money per unit of work
        if self.cfg.treasury.pay or self.wages.any():
            paying = (state.treasury > 0).astype(jnp.float32)[:, None]  # [M, 1]
            paid = self.cfg.treasury.pay * p.public[:J].astype(jnp.float32) + self.wages[:J].astype(np.float32)
            margin = margin + paying * paid[None, :]
        v = expected_effort(self.cfg, state) * per_agent(margin, n) * self._per_unit(state)
        return jnp.sign(v) * jnp.log1p(jnp.abs(v))

    # ---- internals ----------------------------------------------------------------------
    def _project_mult(self, project: jax.Array) -> jax.Array:
        pc = self.cfg.project
        s = project.astype(jnp.float32)
        return 1.0 + pc.gain * s / (s + pc.half)

    def _trade(self, side, quantity, tick, held, money, last_price, factors, lottery, key_consume, p, goods_axis):
        """Steps 2 to 4 of :meth:`_step` but the utility, for ``[M, B, G]`` orders (the
        actions ``side``, ``quantity`` level and price ``tick``, each clipped into range
        here), holdings after work ``held``, ``money [M, B]``, the markets' last
        prices ``[M, G]``, the catalogue's tick factors ``[L]`` and the lottery's uniforms
        ``[M, G, 2]``: each order clipped to what its agent owns and can pay, every (market,
        good) cleared (:func:`economy.market.clear`), the trades settled, then consumption
        (:func:`economy.utility.consume` at ``rng.uniform_pair(key_consume, [N, G],
        goods_axis)``, the catalogue ``p``'s shares eaten and perish rates). Returns int32
        ``(goods [M, B, G] after consumption, eaten [M, B, G], eaten [M, G] and eaten plus
        spoiled [M, G] summed over each market's agents (the ledger's terms), money [M, B],
        proceeds [M, B], clearing price [M, G], volume [M, G])``; ``proceeds`` is each agent's
        sales at the clearing prices. By the native kernel where :attr:`native` (the same
        integers)."""
        cfg = self.cfg
        m, b, G = side.shape
        grid = market.price_grid(last_price, factors, cfg.market.min_price, cfg.market.max_price)  # [M, G, L]
        if self.native:
            # consumption's counters (rng.bits): agent i's good g is i * real + g, real = the
            # goods axis's logical length; the market's first entry is m * B * real
            real = jnp.asarray(G if goods_axis is None else goods_axis[1]).astype(jnp.uint32)
            seed = rng.seeds(key_consume)
            first = jnp.arange(m, dtype=jnp.uint32) * jnp.uint32(b) * real
            counter = jnp.stack([jnp.broadcast_to(seed[0], (m,)), jnp.broadcast_to(seed[1], (m,)), first,
                                 jnp.broadcast_to(real, (m,))], -1)  # [M, 4]
            rates = jnp.broadcast_to(jnp.stack([p.consume, p.perish])[None], (m, 2, G))
            call = functools.partial(native_lib.market, max_holding=cfg.max_holding, levels=cfg.market.quantity_levels)
            return self._per_device(call, (True,) * 9, 8)(side, quantity, tick, held, money, grid, lottery, counter, rates)
        side = jnp.clip(side, 0, 2)
        tick = jnp.clip(tick, 0, cfg.market.price_ticks - 1)
        qty = jnp.take(p.levels, jnp.clip(quantity, 0, len(cfg.market.quantity_levels) - 1))
        limit = market.tick_price(
            last_price[:, None, :], jnp.take(factors, tick), cfg.market.min_price, cfg.market.max_price
        )  # [M, B, G]: each order's limit price, equal to grid[m, g, tick]
        buying = side == market.BUY
        # Each buying good gets an equal share of the cash: the largest q <= qty with
        # q * limit * n_buy <= money, so the agent can pay for all its bids together.
        n_buy = jnp.sum(buying, -1, keepdims=True, dtype=jnp.int32)
        cash = money[..., None]
        cost = limit * jnp.maximum(n_buy, 1)  # <= max_price * G, no overflow
        afford = jnp.floor(cash.astype(jnp.float32) / cost.astype(jnp.float32))
        q = jnp.clip(afford, 0, qty).astype(jnp.int32)
        q = q - (q * cost > cash).astype(jnp.int32)  # exact correction of float rounding
        q = q + (((q + 1) * cost <= cash) & (q < qty)).astype(jnp.int32)
        buy_q = jnp.minimum(q, cfg.max_holding - held)
        sell_q = jnp.minimum(qty, held)
        qty = jnp.where(buying, buy_q, jnp.where(side == market.SELL, sell_q, 0))
        c = market.clear(side, qty, tick, cfg.market.price_ticks, lottery, max_qty=cfg.market.quantity_levels[-1])
        clear_price = jnp.take_along_axis(grid, c.tick[..., None], -1)[..., 0]  # [M, G]
        goods = (held + c.buy_fill - c.sell_fill).reshape(m * b, G)
        money = money + jnp.sum(clear_price[:, None, :] * (c.sell_fill - c.buy_fill), -1)
        proceeds = jnp.sum(clear_price[:, None, :] * c.sell_fill, -1)
        u_eat, u_spoil = rng.uniform_pair(key_consume, (m * b, G), goods_axis)
        cons = consume(p, goods, jnp.zeros_like(goods, jnp.float32), u_eat, u_spoil)  # its utility is _step's
        shaped = lambda x: x.reshape(m, b, G)  # noqa: E731
        eaten_sum, consumed = (jnp.sum(shaped(x), 1) for x in (cons.eaten, cons.eaten + cons.spoiled))
        return shaped(cons.goods), shaped(cons.eaten), eaten_sum, consumed, money, proceeds, clear_price, c.volume

    def _per_device(self, call, split_in: tuple[bool, ...], outputs: int):
        """``call`` (a native kernel whose arrays have the markets axis first where
        ``split_in``, the others replicated; its ``outputs`` arrays, or one array, split) run per device on its own
        markets where :attr:`mesh` splits the state over several devices (``shard_map``)."""
        if self.mesh is None or self.mesh.size <= 1:
            return call
        from jax.sharding import PartitionSpec as PS

        split = PS(self.mesh.axis_names[0])
        return jax.shard_map(call, mesh=self.mesh, in_specs=tuple(split if x else PS() for x in split_in),
                             out_specs=(split,) * outputs if outputs > 1 else split)

    def _work_kernel(self):
        """The integer part of work by :func:`economy.native.work` where :attr:`native`, else
        ``None`` (:func:`economy.production.work`'s XLA formulation); per device where
        :attr:`mesh` splits the markets, the catalogue's recipes replicated."""
        if not self.native:
            return None
        call = functools.partial(native_lib.work, max_holding=self.cfg.max_holding)
        return self._per_device(call, (True, True, True, False, False, False), 6)

    def _treasury(self, treasury: jax.Array, proceeds: jax.Array, public: jax.Array, units: jax.Array,
                  niche: jax.Array):
        """One step of the markets' treasuries, in exact integers.

        ``treasury`` int32 ``[M]`` before the step; ``proceeds`` int32 ``[M, B]`` each
        agent's sales at the clearing prices; ``public``, ``units`` and ``niche`` int32 ``[N]``
        the public units each agent produced, its units of work and its niche. Returns ``(tax [N], procurement [N], treasury
        [M])``, int32: ``money' = money + trade - tax + procurement`` and ``treasury' =
        treasury + sum(tax) - sum(procurement)`` per market, so money plus treasuries is
        conserved exactly (within each market, too).

        * Tax: ``floor(float32(tax) * float32(proceeds))``, clipped to ``[0, proceeds]``,
          where ``proceeds`` = sum over goods of clearing price x units sold.
        * Procurement and wages, after this step's taxes: an agent's claim is ``pay`` x its
          public units + its niche's wage x its units of work (each term, and the claim,
          capped at ``floor((2^31 - 1) / agents per market)``, so a market's claims sum
          exactly in int32; realistic claims are far below). When the treasury covers the
          market's claims each is paid in full; otherwise each is paid ``floor(claim *
          treasury / claims)`` exactly (with wages off: ``floor(units * treasury / total
          units)``), so the payments never sum to more than the treasury, which keeps the rest.

        int32 bounds: money never leaves its market (trade, tax and procurement are all
        within one market), so a treasury never exceeds its market's total money, which
        the config keeps below 2^31 (``num_agents * world.cash[1]``); so do the sums of
        taxes and payments. Proceeds are bounded like the trade sums (``market.max_price``
        check). No product below forms a number larger than the treasury.
        With ``tax == 0`` (``pay == 0`` and no wages) the tax (procurement) is statically zero.
        """
        tc = self.cfg.treasury
        m, b = proceeds.shape
        tax = jnp.zeros((m, b), jnp.int32)
        if tc.tax > 0:
            t = jnp.floor(jnp.float32(tc.tax) * proceeds.astype(jnp.float32))
            t = jnp.minimum(t, jnp.float32(2**31 - 128)).astype(jnp.int32)  # largest float32 below 2^31
            tax = jnp.clip(t, 0, proceeds)
            treasury = treasury + jnp.sum(tax, -1)
        paid = jnp.zeros((m, b), jnp.int32)
        wages = self.wages.any()
        if tc.pay > 0 or wages:
            cap = INT32_MAX // b  # a claim's cap: b of them sum exactly in int32

            def times(rate, x):  # min(rate * x, cap) for rate >= 0, x >= 0, without overflow
                rate = jnp.asarray(rate, jnp.int32)
                return jnp.where(x > cap // jnp.maximum(rate, 1), cap, rate * x)

            claims = times(tc.pay, public) if tc.pay > 0 else jnp.zeros_like(public)
            if wages:  # both terms <= cap <= 2^30, so their sum fits
                claims = jnp.minimum(claims + times(jnp.take(jnp.asarray(self.wages), niche), units), cap)
            claims = claims.reshape(m, b)
            total = jnp.sum(claims, -1)  # [M] the market's claims this step, exact
            covered = total <= treasury
            # floor(claim * T / total) = claim * (T // total) + floor(claim * (T % total) / total),
            # each term at most T.
            d = jnp.maximum(total, 1)
            whole = treasury // d
            rest = treasury - whole * d  # [M] in [0, total)
            share = claims * whole[:, None] + mul_div_floor(claims, jnp.broadcast_to(rest[:, None], (m, b)),
                                                            jnp.broadcast_to(d[:, None], (m, b)))
            paid = jnp.where(covered[:, None], claims, share)
            treasury = treasury - jnp.sum(paid, -1)
        return tax.reshape(m * b), paid.reshape(m * b), treasury

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
        cfg, p = self.cfg, self.catalogue_params(state)
        n, G = state.goods.shape
        J = self.num_niches
        m = state.price.shape[0]
        b = n // m
        # the niche clipped into range here; the orders by _trade (in the market kernel where native)
        a = {"niche": self.working_niche(state, jnp.clip(actions["niche"], 0, J))} | {
            k: actions[k] for k in ("side", "quantity", "price")}
        if state.catalogue is not None:  # a padded niche rests; a padded good is held, never traded
            niches = state.catalogue.niches
            a["niche"] = jnp.where(jnp.take(niches, jnp.minimum(a["niche"], J - 1)) & (a["niche"] < J), a["niche"], J)
            a["side"] = jnp.where(state.catalogue.goods, a["side"], market.HOLD)
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
            custom_on=None if state.catalogue is None else state.catalogue.rules,
            step=state.step,
            kernel=self._work_kernel(),
        )
        # 2-4. Orders clipped to what each agent owns and can pay, the call auctions, the
        # trades settled, consumption (:meth:`_trade`).
        side, quantity, tick = (a[k].reshape(m, b, G) for k in ("side", "quantity", "price"))
        lottery = rng.uniform(key_market, (m, G, 2), self._goods_axis(state))
        goods, eaten, eaten_sum, consumed, money, proceeds, clear_price, volume = self._trade(
            side, quantity, tick, w.goods.reshape(m, b, G), state.money.reshape(m, b), state.price, p.tick_factors, lottery,
            key_consume, p, self._goods_axis(state))
        goods, eaten, money = goods.reshape(n, G), eaten.reshape(n, G), money.reshape(n)
        price = jnp.where(volume > 0, clear_price, state.price)

        # 3b. Treasury: sales tax on each seller's proceeds, then procurement of this
        # step's public units and wages for its work; the same integers leave one side and enter the other.
        tax, procurement, treasury = self._treasury(state.treasury, proceeds, w.public, w.units, a["niche"])
        money = money - tax + procurement

        # 4. Utility of what was eaten (the reward).
        utility = cobb_douglas(state.preferences, eaten)

        # 5. Public projects.
        contribution = jnp.sum(w.public.reshape(m, b), -1)
        decay = rng.stochastic_round(cfg.project.decay * state.project.astype(jnp.float32), rng.uniform(key_project, (m,)))
        project = jnp.minimum(state.project - decay + contribution, 2**30)

        new = state.replace(
            goods=goods,
            money=money,
            skills=w.skills,
            history=w.history,
            price=price,
            volume=volume,
            project=project,
            treasury=treasury,
            step=state.step + 1,
            niche=a["niche"] if cfg.niche_tenure > 1 else None,
        )
        working = a["niche"] < J
        specialisation = jnp.where(
            working, jnp.take_along_axis(w.history, jnp.minimum(a["niche"], J - 1)[:, None], -1)[:, 0], 0.0
        )
        collaboration = w.public.astype(jnp.float32) * (1.0 / cfg.collaboration_scale)
        # Value added by this step's work at the market's prices before it (outputs minus
        # inputs), in units of the catalogue's mean base price: what the scripted agents
        # rank niches by, paid whether or not the goods are then sold or eaten.
        net = (p.outputs - p.inputs).astype(jnp.float32)  # [J+1, G] (row J: rest)
        margin = state.price.astype(jnp.float32) @ net.T  # [M, J+1]
        margin_agent = jnp.take_along_axis(margin, a["niche"].reshape(m, b), axis=1).reshape(n)
        value_added = w.units.astype(jnp.float32) * margin_agent * self._per_unit(state)
        # The environment's reward is the utility of this step's basket. Everything a learner
        # may be rewarded for is a per-agent entry of ``info``; how those are weighted per
        # population member is self-play's business (selfplay.rewards, train.variants.rewards).
        reward = utility
        info = {
            "utility": utility,
            "specialisation": specialisation,
            "collaboration": collaboration,
            "value_added": value_added,  # float32 [N]
            # Ledger terms per market, int32 [M, G], exact (the config bounds each market's
            # sums); world totals are summed on the host in int64 (:func:`world_total`).
            "produced": w.produced,
            "consumed": w.used + consumed,
            "eaten": eaten_sum,
            "market_price": clear_price,
            "market_volume": volume,
            "niche_occupancy": w.occupancy,
            "project": project,
            "niche": a["niche"],  # int32 [N] the niche each agent worked (J: rest), after niche_tenure
            "units": w.units,  # int32 [N] units of work each agent did (0 when resting)
            "tax": tax,  # int32 [N] sales tax each agent paid into its market's treasury
            "procurement": procurement,  # int32 [N] money each agent was paid for its public units and wages
            "treasury": treasury,  # int32 [M] each market's treasury after the step
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


def mul_div_floor(x: jax.Array, y: jax.Array, d: jax.Array) -> jax.Array:
    """Exact ``floor(x * y / d)`` for int32 ``0 <= x <= d``, ``0 <= y < d``, ``1 <= d < 2^31``
    (any equal shapes) although ``x * y`` may not fit in 32 bits: binary long division
    over the 31 bits of ``x`` in uint32, keeping ``acc = q * d + r`` with ``r < d`` (so
    ``2 r`` and ``r + y`` stay below ``2^32``). The result is at most ``x``."""
    x, y, d = (v.astype(jnp.uint32) for v in (x, y, d))

    def body(k, carry):
        q, r = carry
        q, r = q * 2, r * 2  # acc = 2 acc
        over = r >= d
        q, r = q + over.astype(jnp.uint32), jnp.where(over, r - d, r)
        r = r + ((x >> (30 - k).astype(jnp.uint32)) & 1) * y  # acc += bit * y
        over = r >= d
        return q + over.astype(jnp.uint32), jnp.where(over, r - d, r)

    zero = jnp.zeros_like(x)
    q, _ = jax.lax.fori_loop(0, 31, body, (zero, zero), unroll=True)
    return q.astype(jnp.int32)


def world_total(x, axis: int = -2) -> np.ndarray:
    """Exact economy-wide total of per-market int32 values (``info["produced"]``,
    ``["consumed"]``, ``["eaten"]``: ``[..., M, G]``), summed on the host in int64 over the
    markets' axis ``axis``: no int32 sum over the whole world is ever formed, so the
    economy is exact at any size whose markets the config admits."""
    return np.asarray(x, np.int64).sum(axis)


def ledger(state: EconomyState, per_market: bool = False) -> dict[str, Any]:
    """Exact totals, summed on the host in int64: ``{"money", "goods", "treasury"}``.
    ``money`` counts the agents' money and the markets' treasuries (``treasury``, also given
    alone): together they are conserved exactly, within every market too. Economy-wide:
    ``money`` and ``treasury`` ints, ``goods`` int ``[G]``; ``per_market``: int64 ``[M]``,
    ``[M]`` and ``[M, G]`` (markets are contiguous blocks of agents), the terms of the
    per-market ledger ``goods' = goods + info["produced"] - info["consumed"]``."""
    goods = np.asarray(state.goods, dtype=np.int64)
    money = np.asarray(state.money, dtype=np.int64)
    treasury = np.asarray(state.treasury, dtype=np.int64)
    m = treasury.shape[-1]
    lead = money.shape[:-1]  # batch axes (worlds, steps) before the agents'
    market_money = money.reshape(*lead, m, -1).sum(-1) + treasury
    market_goods = goods.reshape(*lead, m, -1, goods.shape[-1]).sum(-2)
    if per_market:
        return {"money": market_money, "goods": market_goods, "treasury": treasury}
    return {
        "money": int(market_money.sum()),
        "goods": market_goods.reshape(-1, goods.shape[-1]).sum(0),
        "treasury": int(treasury.sum()),
    }
