"""The native market kernel (economy/native_market.cc through economy/native.py) against
the XLA path of the step, which stays the reference: goods, money, prices, volumes,
treasuries, rewards (what was eaten, drawn by the same counter-based hash) and every info
entry equal bit for bit over several steps, with
orders crowded onto three ticks (so most books ration their marginal orders by the
lottery), at settings where a default would hide a bug: a market whose agent count is
not a multiple of 8 (a row's last lanes), a catalogue with taxes, procurement, the
``tooled`` rule and a holding cap that binds, and a padded economy of 9 goods (two 8-lane chunks per row) vmapped over
two worlds. The sharded step's agreement is tests/test_env.py's subprocess test."""

from __future__ import annotations

import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import economy
from economy import native
from economy.catalogues import Sizes

if not native.available():
    ok, why = native.cpu_supported()
    if os.environ.get("CI") == "true" and ok:
        pytest.fail(f"native market kernel unavailable on a CPU that supports it: {native._load()}", pytrace=False)
    pytest.skip(f"native market kernel unavailable: {native._load()}", allow_module_level=True)

STEPS = 6


def crowded_actions(env, key, state):
    """Random actions whose price ticks lie on the centre tick and its two neighbours, and
    whose sides are buy or sell half the time each: most books trade and ration; and one
    entry in 20 of each order head out of its range (clipped by the step: in the kernel
    where native)."""
    a = env.sample_actions(key, state)
    L = env.cfg.market.price_ticks
    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, 1), 3)
    a["price"] = L // 2 - 1 + jax.random.randint(k1, a["price"].shape, 0, 3, jnp.int32)
    a["side"] = jnp.where(jax.random.bernoulli(k2, 0.5, a["side"].shape), a["side"], 2 * (a["side"] % 2))
    for i, h in enumerate(env.action_spec[1:]):  # side, quantity, price
        kw, kv = jax.random.split(jax.random.fold_in(k3, i))
        wild = jax.random.randint(kv, a[h.name].shape, -3, h.choices + 3, jnp.int32)
        a[h.name] = jnp.where(jax.random.bernoulli(kw, 0.05, wild.shape), wild, a[h.name])
    return a


def run(env, key, worlds: int | None):
    def one(key):
        _, state = env.reset(key)

        def body(state, k):
            ka, ks = jax.random.split(k)
            obs, state, reward, _, _, info = env.step(ks, state, crowded_actions(env, ka, state))
            return state, (obs, reward, info)

        return jax.lax.scan(body, state, jax.random.split(key, STEPS))

    if worlds is None:
        return jax.jit(one)(key)
    return jax.jit(jax.vmap(one))(jax.random.split(key, worlds))


def econ(name):
    if name == "odd_markets":  # 3 markets of 37 agents, taxes, procurement, tooled producers, holdings
        # capped low enough that buyers hit the cap
        cfg = economy.load_config("configs/economy/default.yaml", num_agents=111, num_markets=3, max_holding=24)
        cfg = cfg.model_copy(update={"treasury": cfg.treasury.model_copy(update={"tax": 0.5, "pay": 7}),
                                     "observe_values": True})  # the observation's optional per-agent block
        return cfg, {}, None
    cfg = economy.load_config("configs/economy/classic.yaml", num_agents=128, num_markets=2)
    return cfg, {"catalogues": [cfg], "sizes": Sizes(cfg.num_goods + 3, cfg.num_niches + 2, len(cfg.resources) + 1)}, 2


@pytest.mark.parametrize("name", ["odd_markets", "padded_9_goods_2_worlds"])
def test_native_step_equals_the_xla_step_bit_for_bit(name):
    cfg, kw, worlds = econ(name)
    envs = [economy.Economy(cfg, native=flag, **kw) for flag in (False, True)]
    assert not envs[0].native and envs[1].native
    (s_x, out_x), (s_n, out_n) = (run(env, jax.random.key(3), worlds) for env in envs)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path((s_x, out_x))]
    for path, x, y in zip(names, jax.tree.leaves((s_x, out_x)), jax.tree.leaves((s_n, out_n))):
        assert x.dtype == y.dtype and x.shape == y.shape, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=path)
    info = out_x[2]
    traded = np.asarray(info["market_volume"]) > 0
    real = np.asarray(s_x.catalogue.goods)[..., None, None, :] if s_x.catalogue is not None else True
    assert traded[..., : cfg.num_goods].mean() > 0.5, "the crowded books should mostly trade"
    assert not np.any(traded & ~np.broadcast_to(real, traded.shape)), "a padded good traded"
    if name == "odd_markets":
        assert np.asarray(info["tax"]).sum() > 0
        assert (np.asarray(s_x.goods) == cfg.max_holding).any(), "no holding reached the cap"


def test_kernel_names_a_bad_shape():
    z = jnp.zeros((2, 4, 3), jnp.int32)
    with pytest.raises(Exception, match="agora_market: money"):
        jax.block_until_ready(native.market(z, z, z, z, jnp.zeros((2, 5), jnp.int32), jnp.zeros((2, 3, 8), jnp.int32),
                                            jnp.zeros((2, 3, 2), jnp.float32), jnp.zeros((2, 4), jnp.uint32),
                                            jnp.zeros((2, 2, 3), jnp.float32), max_holding=10, levels=[1, 2]))


@pytest.mark.parametrize("goods", [1, 3])
def test_kernels_with_fewer_goods_than_a_row_has_lanes(goods):
    """With G < 4 goods an agent's 8-lane row reaches past several agents, and past the
    market's end from rows before its last: the market and work kernels must read and write
    only inside the market (a write past it corrupted the heap) and still equal the XLA
    path bit for bit."""
    cfg = economy.load_config("configs/economy/default.yaml", num_agents=22, num_markets=2, max_holding=24)
    envs = [economy.Economy(cfg, native=flag) for flag in (False, True)]
    m, b, G = 2, 11, goods
    k = jax.random.split(jax.random.key(goods), 8)
    ticks = cfg.market.price_ticks
    side = jax.random.randint(k[0], (m, b, G), -1, 4)  # actions, some out of range (clipped)
    quantity = jax.random.randint(k[1], (m, b, G), -1, len(cfg.market.quantity_levels) + 1)
    tick = ticks // 2 - 1 + jax.random.randint(k[2], (m, b, G), 0, 3)
    held = jax.random.randint(k[3], (m, b, G), 0, 25)
    money = jax.random.randint(k[4], (m, b), 0, 400)
    price = jax.random.randint(k[5], (m, G), 5, 40)
    lottery = jax.random.uniform(k[6], (m, G, 2))
    p = types.SimpleNamespace(consume=jnp.full((G,), 0.3), perish=jnp.full((G,), 0.1), levels=envs[0].params.levels)
    factors = envs[0].params.tick_factors

    def trade(env):
        return jax.jit(lambda *a: env._trade(*a, k[7], p, None))(side, quantity, tick, held, money, price, factors,
                                                                lottery)

    for x, y in zip(trade(envs[0]), trade(envs[1])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    recipes = jax.random.randint(k[0], (2, 4, G), 0, 3)
    niche = jax.random.randint(k[1], (m, b), 0, 4)
    raw = jax.random.randint(k[2], (m, b), 0, 5)
    call = jax.jit(lambda x, y: native.work(niche, raw, held, x, y, jnp.arange(4), max_holding=24))
    goods_after, units, cap, public, produced, used = jax.device_get(call(recipes[0], recipes[1]))
    inp, out = np.asarray(recipes[0])[np.asarray(niche)], np.asarray(recipes[1])[np.asarray(niche)]
    np.testing.assert_array_equal(goods_after, np.asarray(held) - units[..., None] * inp + units[..., None] * out)
    np.testing.assert_array_equal(produced, (units[..., None] * out).sum(1))
    np.testing.assert_array_equal(used, (units[..., None] * inp).sum(1))


def test_orders_beyond_the_edge_ticks_trade_at_them():
    """Bids above the last tick and asks below the first are clipped to those ticks before
    they enter the book and before their fills are decided: with the books clearing at the
    edge ticks, the clipped orders are the marginal ones (rationed by the lottery), not
    orders beyond the clearing tick (filled in full), in the kernel as in the XLA path."""
    cfg = economy.load_config("configs/economy/default.yaml", num_agents=22, num_markets=2, max_holding=24)
    envs = [economy.Economy(cfg, native=flag) for flag in (False, True)]
    m, b, G, L = 2, 11, 3, cfg.market.price_ticks
    buyer = (jnp.arange(b) % 2 == 0)[None, :, None]
    market0 = (jnp.arange(m) == 0)[:, None, None]  # market 0 clears at the top tick, market 1 at the bottom
    side = jnp.broadcast_to(jnp.where(buyer, 0, 2), (m, b, G))
    tick = jnp.where(market0, jnp.where(buyer, L + 5, L - 1), jnp.where(buyer, 0, -4))
    tick = jnp.broadcast_to(tick, (m, b, G))
    quantity = jnp.full((m, b, G), len(cfg.market.quantity_levels) - 1)
    held = jnp.where(buyer, 0, 5) * jnp.ones((m, b, G), jnp.int32)
    money = jnp.full((m, b), 10**6)
    price = jnp.full((m, G), 20)
    lottery = jax.random.uniform(jax.random.key(0), (m, G, 2))
    p = types.SimpleNamespace(consume=jnp.zeros((G,)), perish=jnp.zeros((G,)), levels=envs[0].params.levels)
    factors = envs[0].params.tick_factors
    outs = [jax.jit(lambda *a, env=env: env._trade(*a, jax.random.key(1), p, None))(
        side, quantity, tick, held, money, price, factors, lottery) for env in envs]
    for x, y in zip(*outs):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    goods = np.asarray(outs[0][0])
    bought = goods[:, 0::2].sum((1, 2))
    assert (bought == 5 * 5 * G).all(), bought  # all 5 x 5 units per good sold, none created
