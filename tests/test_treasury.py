"""Tests of the markets' treasuries (``treasury`` config section, ``Economy._treasury``,
``economy.ledger``): a sales tax on sellers' proceeds, procurement of public-project
units and wages per unit of work in named niches, inside the exact integer money ledger.

Every expectation is an exact identity on integers (host int64 / Python ints), never a
threshold read off a run:

* money: agents' money + treasuries is constant, economy-wide and per market;
* tax: ``floor(tax * proceeds)`` of each seller's proceeds, nothing from buyers;
* procurement and wages: a claim is ``pay * public units + wage * units of work``; paid
  in full when the market's treasury (after this step's taxes) covers its claims, else
  ``floor(claim * treasury / claims)`` each; the treasury keeps the rest;
* with nothing to tax or pay the economy is the economy without a treasury, bit for bit.

Speed: one treasury economy (tax 0.3, pay 7, wages for builders and miners) and one inert one, each with one jitted
30-step scripted rollout; the treasury economy's step is jitted once more for the
hand-built states. Worlds come from the session's tiny ``reset`` (the treasury section
does not change world generation). Only values vary between examples, never shapes.
"""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import economy
from agents.scripted import scripted_actions
from economy.config import TreasuryConfig
from economy.env import mul_div_floor
from conftest import CONFIGS

TAX, PAY = 0.3, 7
WAGES = {"builder": 3, "miner": 5}  # money per unit of work (builders also claim PAY per public unit)
WAGE_OVERRIDES = [f"treasury.wages.{k}={v}" for k, v in WAGES.items()]
STEPS = 30


def make_env(*overrides: str) -> SimpleNamespace:
    cfg = economy.load_config(CONFIGS / "tiny.yaml", *overrides)
    env = economy.Economy(cfg)
    return SimpleNamespace(cfg=cfg, env=env, rollout=scripted_rollout(env))


def scripted_rollout(env):
    """Jitted ``(key, state) -> (final, (states, info, actions))``: ``STEPS`` steps of the
    scripted agents in one ``lax.scan``."""
    policy = lambda k, s: scripted_actions(env, k, s)
    metrics = lambda e, s, info, a: (s, info, a)
    return jax.jit(lambda key, state: economy.rollout(env, policy, key, state, STEPS, metrics))


@pytest.fixture(scope="module")
def taxed():
    """The tiny economy with ``treasury: {tax: 0.3, pay: 7, wages: WAGES}`` and its jitted step."""
    w = make_env(f"treasury.tax={TAX}", f"treasury.pay={PAY}", *WAGE_OVERRIDES)
    w.step = jax.jit(w.env.step)
    return w


def public_units(env, units, niche):
    """int64 ``[..., N]`` public units produced: units of work x the niche's ``public``."""
    return np.asarray(units, np.int64) * np.asarray(env.params.public, np.int64)[np.asarray(niche)]


def claims_of(env, units, niche):
    """int64 ``[..., N]`` each agent's claim on its treasury, in Python-exact integers:
    ``PAY`` x public units + its niche's wage x units of work (written from the config's
    names, not from the economy's wage array)."""
    wage = np.array([WAGES.get(name, 0) for name in env.cfg.niche_names] + [0], np.int64)
    return PAY * public_units(env, units, niche) + np.asarray(units, np.int64) * wage[np.asarray(niche)]


def per_market(x, m):
    """``[N]`` -> int64 ``[M]`` sums over each market's contiguous block of agents."""
    return np.asarray(x, np.int64).reshape(m, -1).sum(1)


def expected_procurement(claims, treasury, m):
    """Procurement by the rule, in Python-exact int64: per market with ``treasury`` (after
    this step's taxes) and ``claims`` ``[N]``: the claim when the market's are covered, else
    ``floor(claim * treasury / total claims)``."""
    claims = np.asarray(claims, np.int64).reshape(m, -1)
    treasury = np.asarray(treasury, np.int64)[:, None]
    total = claims.sum(1, keepdims=True)
    share = claims * treasury // np.maximum(total, 1)
    return np.where(total <= treasury, claims, share).reshape(-1)


# --------------------------------------------------------------------------------------
# 1. The ledger over a scripted rollout with taxes and procurement
# --------------------------------------------------------------------------------------
def test_ledger_with_taxes_and_procurement(taxed, tiny_env, tiny_fns):
    """Catches: the treasury left out of ``ledger``; taxes or payments that create or
    destroy money (rounding up, paying full claims from a short treasury); paying from or
    taxing into the wrong market (per-market conservation); procurement paid before this
    step's taxes or by another formula; negative money or treasuries."""
    cfg, env = taxed.cfg, taxed.env
    M = cfg.num_markets
    _, state0 = tiny_fns["reset"](tiny_env.world_key(5))
    _, (states, info, actions) = jax.device_get(taxed.rollout(jax.random.key(6), state0))
    state0 = jax.device_get(state0)
    assert (state0.treasury == 0).all() and state0.treasury.dtype == np.int32

    prev = economy.ledger(state0)
    assert prev["treasury"] == 0
    market_money0 = per_market(state0.money, M) + state0.treasury  # [M]: money never leaves its market
    prev_treasury = state0.treasury.astype(np.int64)
    taxed_total = paid_total = wages_paid = 0
    for t in range(STEPS):
        s = jax.tree.map(lambda x: x[t], states)
        tax, paid = info["tax"][t], info["procurement"][t]
        assert tax.dtype == paid.dtype == s.treasury.dtype == np.int32
        assert tax.shape == paid.shape == (cfg.num_agents,) and s.treasury.shape == (M,)
        np.testing.assert_array_equal(info["treasury"][t], s.treasury)
        new = economy.ledger(s)
        assert new["treasury"] == int(s.treasury.astype(np.int64).sum())
        assert new["money"] == int(s.money.astype(np.int64).sum()) + new["treasury"]
        assert new["money"] == prev["money"], f"step {t}: money + treasuries {prev['money']} -> {new['money']}"
        np.testing.assert_array_equal(per_market(s.money, M) + s.treasury, market_money0, err_msg=f"step {t}")
        expected = prev["goods"] + economy.world_total(info["produced"][t]) - economy.world_total(info["consumed"][t])
        np.testing.assert_array_equal(new["goods"], expected, err_msg=f"step {t}: goods' != goods + produced - consumed")
        assert (tax >= 0).all() and (paid >= 0).all(), f"step {t}"
        assert s.money.min() >= 0 and s.treasury.min() >= 0 and s.goods.min() >= 0, f"step {t}"
        # The treasury's own account: taxes in, procurement out, per market.
        after_tax = prev_treasury + per_market(tax, M)
        np.testing.assert_array_equal(s.treasury, after_tax - per_market(paid, M), err_msg=f"step {t}")
        # Procurement and wages by the rule, from the treasury after this step's taxes.
        claims = claims_of(env, info["units"][t], actions["niche"][t])
        np.testing.assert_array_equal(paid, expected_procurement(claims, after_tax, M), err_msg=f"step {t}")
        taxed_total += int(tax.astype(np.int64).sum())
        paid_total += int(paid.astype(np.int64).sum())
        miners = (actions["niche"][t] == cfg.niche_names.index("miner")) & (info["units"][t] > 0)
        wages_paid += int(paid[miners].astype(np.int64).sum())
        prev, prev_treasury = new, s.treasury.astype(np.int64)
    # No flow may be vacuous: the treasury was filled by taxes and paid out, wages too.
    assert taxed_total > 0 and paid_total > 0 and wages_paid > 0, (taxed_total, paid_total, wages_paid)


# --------------------------------------------------------------------------------------
# 2. Procurement on hand-built states: funded, exactly funded, underfunded, empty
# --------------------------------------------------------------------------------------
def test_procurement_funded_and_underfunded(taxed, tiny_env, tiny_fns):
    """Catches: payments that are not ``pay * units`` when funded; ``<`` instead of ``<=``
    at an exactly covered treasury; pro-rata payments that are not floor-proportional or
    sum to more than the treasury (rounding up or to nearest); paying more than the claim
    when the treasury covers it with a little to spare (the pro-rata formula then exceeds
    the claim); paying a market's builders from another market's treasury; a treasury
    that does not drop by what it paid."""
    cfg, env = taxed.cfg, taxed.env
    N, M, G, J, B = cfg.num_agents, cfg.num_markets, cfg.num_goods, cfg.num_niches, cfg.agents_per_market
    L = cfg.market.price_ticks
    b, miner = cfg.niche_names.index("builder"), cfg.niche_names.index("miner")
    market = np.arange(N) // B
    # The first 10 agents of markets 0 and 1 build (skilled, with inputs), the first 2 of
    # market 3 (large shares of its claims), nobody in market 2 (money but no claims); the
    # next 5 of market 1 mine (wages only, no public units). Everyone else rests; nobody
    # trades (no tax).
    builds = np.arange(N) % B < np.array([10, 10, 0, 2])[market]
    mines = (market == 1) & (np.arange(N) % B >= 10) & (np.arange(N) % B < 15)
    _, state = tiny_fns["reset"](tiny_env.world_key(8))
    goods = np.array(state.goods)
    for name, q in cfg.niches[b].inputs.items():
        goods[:, cfg.good_names.index(name)] = 40 * q
    skills = np.array(state.skills)
    skills[:, b] = 1.0
    state = state.replace(goods=jnp.asarray(goods), skills=jnp.asarray(skills))
    actions = {
        "niche": jnp.asarray(np.where(builds, b, np.where(mines, miner, J)).astype(np.int32)),
        "side": jnp.full((N, G), economy.HOLD, jnp.int32),
        "quantity": jnp.zeros((N, G), jnp.int32),
        "price": jnp.full((N, G), L // 2, jnp.int32),
    }
    key = jax.random.key(9)

    def step(treasury):
        s = state.replace(treasury=jnp.asarray(treasury, jnp.int32))
        _, new, _, _, _, info = jax.device_get(taxed.step(key, s, actions))
        assert (info["tax"] == 0).all()  # nobody sold
        # No trade and no tax: each agent's money changes by exactly what it was paid.
        np.testing.assert_array_equal(new.money.astype(np.int64) - np.asarray(state.money, np.int64), info["procurement"])
        return new, info

    # Funded everywhere: every claim paid in full. Work does not depend on the treasury,
    # so the same key gives the same public units in every case below.
    big = 10**6
    new, info = step([big] * M)
    units = public_units(env, info["units"], actions["niche"])
    assert (units[builds] > 0).all() and (units[~builds] == 0).all()
    work = np.asarray(info["units"], np.int64)
    assert (work[mines] > 0).all()
    # A builder is paid exactly pay x public units + its wage x units of work; a miner its wage x units.
    claim = np.where(builds, PAY * units + WAGES["builder"] * work, np.where(mines, WAGES["miner"] * work, 0))
    np.testing.assert_array_equal(claim, claims_of(env, info["units"], actions["niche"]))
    np.testing.assert_array_equal(info["procurement"], claim)
    claims = per_market(claim, M)  # [M]
    assert (claims[[0, 1, 3]] > 1).all() and claims[2] == 0
    np.testing.assert_array_equal(new.treasury, big - claims)

    # Market 0 funded, market 1 one short, market 2 rich with nobody to pay, market 3
    # covered with PAY - 1 to spare (so treasury // pay still equals its units).
    treasury = np.array([big, claims[1] - 1, 5000, claims[3] + PAY - 1], np.int64)
    new, info = step(treasury)
    np.testing.assert_array_equal(public_units(env, info["units"], actions["niche"]), units)
    np.testing.assert_array_equal(info["units"], work)
    paid = info["procurement"].astype(np.int64)
    in_m = lambda m: market == m
    np.testing.assert_array_equal(paid[in_m(0)], claim[in_m(0)])
    np.testing.assert_array_equal(paid[in_m(3)], claim[in_m(3)])
    np.testing.assert_array_equal(paid[in_m(2)], 0)
    short = treasury[1]
    want = claim[in_m(1)] * short // claims[1]  # floor(claim * treasury / claims), exact
    np.testing.assert_array_equal(paid[in_m(1)], want)
    assert paid[in_m(1)][mines[in_m(1)]].min() > 0  # the miners share the short treasury too
    assert paid[in_m(1)].sum() <= short and (paid[in_m(1)] <= claim[in_m(1)]).all()
    assert paid[in_m(1)].sum() < claims[1]  # not everybody was paid in full
    np.testing.assert_array_equal(new.treasury, treasury - per_market(paid, M))
    np.testing.assert_array_equal(new.treasury[[2, 3]], [5000, PAY - 1])

    # Market 3 exactly covered; nearly empty elsewhere: 3 money among market 1's builders.
    treasury = np.array([0, 3, 0, claims[3]], np.int64)
    new, info = step(treasury)
    paid = info["procurement"].astype(np.int64)
    np.testing.assert_array_equal(paid, expected_procurement(claim, treasury, M))
    np.testing.assert_array_equal(paid[in_m(0)], 0)
    np.testing.assert_array_equal(paid[in_m(3)], claim[in_m(3)])
    assert paid[in_m(1)].sum() <= 3 and new.treasury[3] == 0
    np.testing.assert_array_equal(new.treasury, treasury - per_market(paid, M))
    assert (new.treasury >= 0).all()


# --------------------------------------------------------------------------------------
# 3. The sales tax in closed form
# --------------------------------------------------------------------------------------
def test_sales_tax_closed_form(taxed, tiny_env, tiny_fns):
    """Catches: tax taken from buyers or on net instead of gross takings; rounding up
    (ceil/round); a tax that leaves the seller but does not reach its market's treasury
    (or reaches another market's); taxes that change clearing, goods or prices."""
    cfg = taxed.cfg
    N, M, J = cfg.num_agents, cfg.num_markets, cfg.num_niches
    _, state = tiny_fns["reset"](tiny_env.world_key(13))
    acts = dict(tiny_fns["sample"](jax.random.key(14), state))
    # Even agents only sell (or hold), odd agents only buy (or hold); everybody rests, so
    # no public units are produced and nothing is paid out.
    side = np.asarray(acts["side"])
    seller = np.arange(N) % 2 == 0
    side = np.where(seller[:, None], np.where(side == economy.BUY, economy.HOLD, side),
                    np.where(side == economy.SELL, economy.HOLD, side))
    acts["side"] = jnp.asarray(side.astype(np.int32))
    acts["niche"] = jnp.full((N,), J, jnp.int32)
    treasury0 = np.array([17, 0, 250, 3], np.int64)  # taxes add to what is there
    state = state.replace(treasury=jnp.asarray(treasury0, jnp.int32))
    key = jax.random.key(15)

    # The economy without a treasury clears the same orders: its money changes are each
    # agent's trade alone (proceeds of a seller, minus spending of a buyer).
    _, plain, _, _, _, plain_info = jax.device_get(tiny_fns["step"](key, state, acts))
    _, new, _, _, _, info = jax.device_get(taxed.step(key, state, acts))
    money0 = np.asarray(state.money, np.int64)
    trade = plain.money.astype(np.int64) - money0
    np.testing.assert_array_equal(plain.treasury, treasury0)  # no tax in the plain economy
    assert (plain_info["tax"] == 0).all() and (plain_info["procurement"] == 0).all()
    for leaf in ("goods", "price", "volume", "project"):
        np.testing.assert_array_equal(getattr(new, leaf), getattr(plain, leaf), err_msg=leaf)
    assert (trade[seller] >= 0).all() and (trade[~seller] <= 0).all()
    proceeds = np.where(seller, trade, 0)
    # floor(tax * proceeds) with tax = 3/10 exactly. The step computes it in float32; the
    # two agree for proceeds < 2^20 (float32(0.3) is 0.3 within 4e-8 and a non-integer
    # 3p/10 lies at least 0.1 from the next integer).
    assert proceeds.max() < 2**20
    rate = Fraction(str(TAX))
    want_tax = proceeds * rate.numerator // rate.denominator
    assert (want_tax > 0).sum() >= 10 and len(np.unique(np.arange(N)[want_tax > 0] // cfg.agents_per_market)) >= 2
    np.testing.assert_array_equal(info["tax"], want_tax)
    np.testing.assert_array_equal(info["procurement"], 0)
    # Sellers keep proceeds - floor(tax * proceeds); buyers pay exactly what they paid before.
    np.testing.assert_array_equal(new.money.astype(np.int64) - money0, trade - want_tax)
    np.testing.assert_array_equal(new.treasury, treasury0 + per_market(want_tax, M))
    np.testing.assert_array_equal(info["treasury"], new.treasury)
    assert economy.ledger(new)["money"] == economy.ledger(state)["money"]


# --------------------------------------------------------------------------------------
# 4. No tax, no pay: the economy without a treasury, bit for bit
# --------------------------------------------------------------------------------------
def test_zero_treasury_is_the_plain_economy(tiny_cfg, tiny_env, tiny_fns):
    """Catches: a default that is not (0, 0); treasury code that moves money, rounds a zero
    tax up, pays claims from an empty treasury, or changes the scripted agents' choices
    when there is nothing to be paid.

    ``tax: 0, pay: 0`` is the default config itself. An economy with a tax too small to
    take a unit (``1e-9``: ``floor`` gives 0 on proceeds below 10^9), ``pay: 7`` and wages
    runs every treasury path (tax, procurement, wages, the scripted agents' procurement and
    wage values) with an empty treasury: its trajectory must equal the default economy's bit for bit."""
    cfg0 = economy.load_config(CONFIGS / "tiny.yaml", "treasury.tax=0", "treasury.pay=0")
    assert tiny_cfg.treasury == TreasuryConfig() == TreasuryConfig(tax=0.0, pay=0)
    assert cfg0 == tiny_cfg
    inert = make_env("treasury.tax=1e-9", f"treasury.pay={PAY}", *WAGE_OVERRIDES)
    plain_rollout = scripted_rollout(tiny_env)
    _, state0 = tiny_fns["reset"](tiny_env.world_key(21))
    key = jax.random.key(22)
    plain = jax.device_get(plain_rollout(key, state0))
    other = jax.device_get(inert.rollout(key, state0))
    (_, (states, info, actions)) = plain
    assert (states.treasury == 0).all()
    for name in ("tax", "procurement", "treasury"):
        assert (info[name] == 0).all(), name
    # Something to tax and to pay was there: trade and public work happened.
    assert info["market_volume"].sum() > 0
    assert public_units(tiny_env, info["units"], actions["niche"]).sum() > 0
    la, ta = jax.tree_util.tree_flatten_with_path(plain)
    lb, tb = jax.tree.flatten(other)
    assert ta == tb
    for (path, x), y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


# --------------------------------------------------------------------------------------
# 5. Config
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, key",
    [
        ("treasury.tax=1.5", "treasury.tax"),
        ("treasury.tax=-0.1", "treasury.tax"),
        ("treasury.pay=-1", "treasury.pay"),
        ("treasury.pay=2.5", "treasury.pay"),
        ("treasury.pay=4294967296", "treasury.pay"),
        ("treasury.foo=1", "treasury.foo"),
        ("treasury.wages.nobody=3", "treasury.wages.nobody"),
        ("treasury.wages.miner=-1", "treasury.wages.miner"),
        ("treasury.wages.miner=1.5", "treasury.wages.miner"),
    ],
)
def test_bad_treasury_config_is_refused(override, key):
    """Catches: a tax outside [0, 1], negative, fractional or int32-overflowing pay, wages
    for a niche the catalogue lacks or of a bad value, and unknown keys slipping through,
    or errors that do not name the key."""
    with pytest.raises(economy.ConfigError, match=key.replace(".", r"\.")):
        economy.load_config(CONFIGS / "tiny.yaml", override)


def test_treasury_config_values():
    """The README's example loads; the section is frozen."""
    cfg = economy.load_config(CONFIGS / "tiny.yaml", "treasury={tax: 0.1, pay: 8}")
    assert cfg.treasury == TreasuryConfig(tax=0.1, pay=8)
    with pytest.raises(Exception):
        cfg.treasury.pay = 9


# --------------------------------------------------------------------------------------
# The exact pro-rata helper, at magnitudes the tiny economy never reaches
# --------------------------------------------------------------------------------------
def test_mul_div_floor_exact_near_int32_limits():
    """Catches: int32 overflow of ``units * treasury`` (or float rounding) in pro-rata
    procurement, which the tiny economy's small numbers could not reveal."""
    rng = np.random.default_rng(0)
    n = 4096
    hi = 2**31 - 1
    d = np.concatenate([rng.integers(1, hi, n - 6, endpoint=True), [1, 2, hi, hi, hi, 3]])
    x = (rng.random(n) * (d + 1)).astype(np.int64).clip(0, d)  # 0 <= x <= d
    y = (rng.random(n) * d).astype(np.int64).clip(0, d - 1)  # 0 <= y < d
    x[-6:] = [1, 2, hi, hi, 0, 3]
    y[-6:] = [0, 1, hi - 1, 0, hi - 1, 2]
    got = np.asarray(jax.jit(mul_div_floor)(*(jnp.asarray(v, jnp.int32) for v in (x, y, d))))
    want = np.array([int(a) * int(b) // int(c) for a, b, c in zip(x, y, d)], np.int64)
    np.testing.assert_array_equal(got, want)
