"""Tests of the economy environment (economy/env.py) through its public contract:
the exact ledger, determinism, jit/vmap equivalence, learning by doing, actions and
their checking, observations and episode ends, ``info``, world seeds, public projects
and sharding of the agent axis.

Speed: every new array shape or new :class:`economy.Economy` recompiles (seconds on
two cores). Tests reuse the session fixtures (``tiny_env``, ``tiny_fns``), one jitted
``lax.scan`` rollout per world size (built once per module), and hypothesis varies keys
and values only, never shapes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import economy
from economy import streams
from conftest import CONFIGS, ROOT, subprocess_env

T = 32  # steps per rollout (static: one compile per world size)
FEW = settings(max_examples=5, deadline=None)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def tree_slice(tree, t):
    return jax.tree.map(lambda x: x[t], tree)


def assert_trees_equal(a, b, what=""):
    """Every leaf identical (ints and floats bit for bit)."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb, f"{what}: different tree structure"
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(a)[0]]
    for path, x, y in zip(paths, la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}{path}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
        np.testing.assert_array_equal(x, y, err_msg=f"{what}{path}")


def assert_trees_close(a, b, what=""):
    """Integer (and bool) leaves exactly equal, float leaves within a few ulp."""
    paths_a = jax.tree_util.tree_flatten_with_path(a)[0]
    lb, _ = jax.tree.flatten(b)
    assert len(paths_a) == len(lb), f"{what}: different tree structure"
    for (path, x), y in zip(paths_a, lb):
        x, y = np.asarray(x), np.asarray(y)
        where = f"{what}{jax.tree_util.keystr(path)}"
        assert x.dtype == y.dtype and x.shape == y.shape, where
        if np.issubdtype(x.dtype, np.floating):
            np.testing.assert_allclose(x, y, rtol=2e-6, atol=1e-6, err_msg=where)
        else:
            np.testing.assert_array_equal(x, y, err_msg=where)


def trees_differ(a, b) -> bool:
    return any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def no_override(env, n):
    """``fixed``/``mask`` arguments of a rollout that leave every sampled action alone."""
    fixed = {h.name: np.zeros((n,) + h.shape, np.int32) for h in env.action_spec}
    mask = {h.name: np.zeros((n,) + h.shape, bool) for h in env.action_spec}
    return fixed, mask


def make_rollout(env):
    """Jitted ``rollout(state, key, fixed, mask)``: ``T`` steps of random actions
    (``sample_actions``) in one ``lax.scan``, where ``mask`` selects entries replaced by
    ``fixed``. Returns the stacked per-step states, obs, rewards, flags, info and actions."""
    heads = env.action_spec

    def rollout(state, key, fixed, mask):
        def body(s, k):
            ka, ks = jax.random.split(k)
            sampled = env.sample_actions(ka, s)
            a = {h.name: jnp.where(mask[h.name], fixed[h.name], sampled[h.name]) for h in heads}
            obs, s2, r, term, trunc, info = env.step(ks, s, a)
            return s2, dict(state=s2, obs=obs, reward=r, terminated=term, truncated=trunc, info=info, actions=a)

        _, traj = jax.lax.scan(body, state, jax.random.split(key, T))
        return traj

    return jax.jit(rollout)


def check_ledger(cfg, state0, traj):
    """The ledger identity per market and for the world, and the holding bounds, at every
    step of a rollout (host, int64)."""
    state0, traj = jax.device_get((state0, traj))
    prev, prev_m = economy.ledger(state0), economy.ledger(state0, per_market=True)
    assert isinstance(prev["money"], int) and prev["goods"].shape == (cfg.num_goods,)
    assert prev_m["goods"].shape == (cfg.num_markets, cfg.num_goods) and prev_m["money"].sum() == prev["money"]
    for t in range(traj["obs"].shape[0]):
        st_t = tree_slice(traj["state"], t)
        new, new_m = economy.ledger(st_t), economy.ledger(st_t, per_market=True)
        produced = traj["info"]["produced"][t]
        consumed = traj["info"]["consumed"][t]
        assert produced.dtype.kind == "i" and consumed.dtype.kind == "i"
        assert produced.shape == consumed.shape == (cfg.num_markets, cfg.num_goods)
        assert (produced >= 0).all() and (consumed >= 0).all(), f"step {t}"
        np.testing.assert_array_equal(new_m["money"], prev_m["money"], err_msg=f"step {t}: a market's money changed")
        assert new["money"] == prev["money"], f"step {t}: money {prev['money']} -> {new['money']}"
        expected = prev_m["goods"] + produced.astype(np.int64) - consumed.astype(np.int64)
        np.testing.assert_array_equal(new_m["goods"], expected, err_msg=f"step {t}: a market's goods' != goods + produced - consumed")
        np.testing.assert_array_equal(new["goods"], prev["goods"] + economy.world_total(produced)
                                      - economy.world_total(consumed), err_msg=f"step {t}: the world's goods")
        # In-graph int32 totals of each market agree with the host's int64 ledger.
        B = cfg.agents_per_market
        np.testing.assert_array_equal(st_t.goods.reshape(cfg.num_markets, B, -1).sum(1, dtype=np.int32), new_m["goods"])
        assert st_t.goods.min() >= 0, f"step {t}: negative goods"
        assert st_t.money.min() >= 0, f"step {t}: negative money"
        assert st_t.goods.max() <= cfg.max_holding, f"step {t}: goods {st_t.goods.max()} > max_holding"
        prev, prev_m = new, new_m


# --------------------------------------------------------------------------------------
# Worlds: the tiny session economy plus two more sizes, each built (and compiled) once.
# --------------------------------------------------------------------------------------
SIZES = {"tiny": None, "n64_m2": (64, 2), "n192_m3": (192, 3)}


@pytest.fixture(scope="module")
def worlds(tiny_cfg, tiny_env, tiny_fns):
    cache = {}

    def get(size: str) -> SimpleNamespace:
        if size not in cache:
            if SIZES[size] is None:
                cfg, env, reset = tiny_cfg, tiny_env, tiny_fns["reset"]
            else:
                n, m = SIZES[size]
                cfg = economy.load_config(CONFIGS / "tiny.yaml", num_agents=n, num_markets=m)
                env = economy.Economy(cfg)
                reset = jax.jit(env.reset)
            cache[size] = SimpleNamespace(cfg=cfg, env=env, reset=reset, rollout=make_rollout(env))
        return cache[size]

    return get


# --------------------------------------------------------------------------------------
# The ledger: exact, every step, for any world, keys and (even absurd) holdings/actions.
# --------------------------------------------------------------------------------------
MODES = ["sampled", "wild_actions", "near_cap", "broke"]


def prepare(w, world_seed: int, mode: str, seed: int):
    """A world and rollout arguments for one ledger example; only values change, never shapes."""
    cfg, env = w.cfg, w.env
    n, G = cfg.num_agents, cfg.num_goods
    _, state = w.reset(env.world_key(world_seed))
    fixed, mask = no_override(env, n)
    rng = np.random.default_rng(seed)
    if mode == "wild_actions":  # out of range everywhere: clipped by the unchecked step
        for h in env.action_spec:
            fixed[h.name] = rng.integers(-5, h.choices + 5, (n,) + h.shape).astype(np.int32)
            mask[h.name][...] = True
    elif mode == "near_cap":  # holdings at and near max_holding: production and buying must stop there
        goods = rng.integers(cfg.max_holding - 12, cfg.max_holding + 1, (n, G)).astype(np.int32)
        state = state.replace(goods=jnp.asarray(goods))
    elif mode == "broke":  # half the agents own nothing at all
        poor = rng.random(n) < 0.5
        goods = np.where(poor[:, None], 0, np.asarray(state.goods)).astype(np.int32)
        money = np.where(poor, 0, np.asarray(state.money)).astype(np.int32)
        state = state.replace(goods=jnp.asarray(goods), money=jnp.asarray(money))
    return state, fixed, mask


@pytest.mark.parametrize("size", list(SIZES))
@FEW
@given(
    world_seed=st.integers(0, 999_999),
    action_seed=st.integers(0, 2**32 - 1),
    mode=st.sampled_from(MODES),
)
def test_ledger_identity_exact(worlds, size, world_seed, action_seed, mode):
    w = worlds(size)
    state, fixed, mask = prepare(w, world_seed, mode, action_seed)
    traj = w.rollout(state, jax.random.key(action_seed), fixed, mask)
    check_ledger(w.cfg, state, traj)
    # Something actually happens over the rollout: production, consumption and trade.
    info = jax.device_get(traj["info"])
    assert info["produced"].sum() > 0 and info["consumed"].sum() > 0
    if mode != "near_cap":
        assert info["market_volume"].sum() > 0


@pytest.mark.parametrize("mode", MODES)
def test_ledger_every_mode_each_size(worlds, mode):
    """Every stress mode runs at least once on every size (hypothesis draws modes at random)."""
    for i, size in enumerate(SIZES):
        w = worlds(size)
        state, fixed, mask = prepare(w, 7 + i, mode, 11 + i)
        check_ledger(w.cfg, state, w.rollout(state, jax.random.key(3 + i), fixed, mask))


def test_near_cap_holdings_hit_the_cap_exactly(worlds):
    """With holdings near ``max_holding``, some agents end exactly at the cap, never above."""
    w = worlds("tiny")
    state, fixed, mask = prepare(w, 1, "near_cap", 2)
    traj = jax.device_get(w.rollout(state, jax.random.key(4), fixed, mask))
    goods = traj["state"].goods
    assert goods.max() == w.cfg.max_holding
    check_ledger(w.cfg, state, traj)


# --------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------
def test_same_key_same_trajectory(worlds, tiny_env, tiny_fns):
    w = worlds("tiny")
    fixed, mask = no_override(tiny_env, w.cfg.num_agents)
    o1, s1 = tiny_fns["reset"](tiny_env.world_key(42))
    o2, s2 = tiny_fns["reset"](tiny_env.world_key(42))
    assert_trees_equal((o1, s1), (o2, s2), "reset")
    key = jax.random.key(99)
    traj1 = w.rollout(s1, key, fixed, mask)
    traj2 = w.rollout(s2, key, fixed, mask)
    assert_trees_equal(traj1, traj2, "rollout")
    # The same trajectory stepped one jitted call at a time (no scan).
    s = s1
    keys = jax.random.split(key, T)
    for t in range(4):
        ka, ks = jax.random.split(keys[t])
        a = tiny_fns["sample"](ka, s)
        obs, s, reward, term, trunc, info = tiny_fns["step"](ks, s, a)
        ref = tree_slice(traj1, t)
        assert_trees_close(a, ref["actions"], f"step {t} actions")
        assert_trees_close((obs, s, reward, term, trunc, info),
                           (ref["obs"], ref["state"], ref["reward"], ref["terminated"], ref["truncated"], ref["info"]),
                           f"step {t}")


def test_different_keys_different_trajectories(worlds, tiny_env, tiny_fns):
    w = worlds("tiny")
    fixed, mask = no_override(tiny_env, w.cfg.num_agents)
    _, s1 = tiny_fns["reset"](tiny_env.world_key(1))
    _, s2 = tiny_fns["reset"](tiny_env.world_key(2))
    for leaf in ("goods", "money", "skills", "preferences", "richness", "labour", "price"):
        assert not np.array_equal(getattr(s1, leaf), getattr(s2, leaf)), f"worlds 1 and 2 share {leaf}"
    # Same world, different action keys.
    t1 = w.rollout(s1, jax.random.key(5), fixed, mask)
    t2 = w.rollout(s1, jax.random.key(6), fixed, mask)
    assert not np.array_equal(t1["state"].goods, t2["state"].goods)
    # Same state and actions, different step keys: stochastic rounding and rationing differ.
    a = tiny_fns["sample"](jax.random.key(0), s1)
    out1 = tiny_fns["step"](jax.random.key(10), s1, a)
    out2 = tiny_fns["step"](jax.random.key(11), s1, a)
    assert trees_differ(out1[1].goods, out2[1].goods)


# --------------------------------------------------------------------------------------
# jit and vmap over a batch of worlds
# --------------------------------------------------------------------------------------
def test_vmap_over_worlds_matches_unbatched(tiny_env, tiny_fns):
    env = tiny_env
    world_keys = jnp.stack([env.world_key(s) for s in (3, 17, 123_456)])
    step_keys = jax.random.split(jax.random.key(8), 3)

    @jax.jit
    def batched(world_keys, step_keys):
        obs, states = jax.vmap(env.reset)(world_keys)
        acts = jax.vmap(env.sample_actions)(step_keys, states)
        return obs, states, acts, jax.vmap(env.step)(step_keys, states, acts)

    bobs, bstates, bacts, bout = batched(world_keys, step_keys)
    assert bobs.shape == (3, env.num_agents, env.obs_dim)
    assert bstates.goods.shape == (3, env.num_agents, env.cfg.num_goods)
    for i in range(3):
        obs, state = tiny_fns["reset"](world_keys[i])
        assert_trees_close((obs, state), tree_slice((bobs, bstates), i), f"reset world {i}")
        state_i = tree_slice(bstates, i)  # isolate step from reset's float rounding
        acts = tiny_fns["sample"](step_keys[i], state_i)
        assert_trees_equal(acts, tree_slice(bacts, i), f"sample world {i}")
        out = tiny_fns["step"](step_keys[i], state_i, acts)
        assert_trees_close(out, tree_slice(bout, i), f"step world {i}")
    # The worlds of the batch really are different worlds.
    assert not np.array_equal(bstates.goods[0], bstates.goods[1])


# --------------------------------------------------------------------------------------
# Learning by doing
# --------------------------------------------------------------------------------------
def test_learning_by_doing(worlds, tiny_cfg, tiny_env, tiny_fns):
    cfg, env, w = tiny_cfg, tiny_env, worlds("tiny")
    n, J = cfg.num_agents, cfg.num_niches
    j = cfg.niche_names.index("farmer")
    farmer = cfg.niches[j]
    assert not farmer.inputs and farmer.public == 0
    (good, per_unit), = farmer.outputs.items()
    g = cfg.good_names.index(good)
    learn = np.float32(farmer.learn)
    forget = np.array([nc.forget for nc in cfg.niches], np.float32)
    floor = np.float32(cfg.skill_floor)

    _, state0 = tiny_fns["reset"](env.world_key(2024))
    fixed, mask = no_override(env, n)
    fixed["niche"][:] = j
    mask["niche"][:] = True  # everybody farms, every step; the other heads are random
    traj = jax.device_get(w.rollout(state0, jax.random.key(1), fixed, mask))
    state0 = jax.device_get(state0)
    assert (traj["state"].project == 0).all()  # nobody builds: no project bonus
    richness = np.repeat(state0.richness[:, j], cfg.agents_per_market)  # [N]
    labour = state0.labour[j]

    prev_skills, prev_goods = state0.skills, state0.goods
    produced, expected = [], []
    for t in range(T):
        skills = traj["state"].skills[t]
        # Output is never capped here, so every farmer practised.
        assert (prev_goods[:, g] <= cfg.max_holding - per_unit).all()
        # Practised niche: s + learn (1 - s); every other niche decays by (1 - forget) exactly.
        want_farm = prev_skills[:, j] + learn * (np.float32(1) - prev_skills[:, j])
        np.testing.assert_allclose(skills[:, j], want_farm, rtol=1e-6, err_msg=f"step {t}")
        others = [k for k in range(J) if k != j]
        want_idle = prev_skills[:, others] * (np.float32(1) - forget[others])
        np.testing.assert_array_equal(skills[:, others], want_idle, err_msg=f"step {t}: forgetting is not exact")
        assert (skills[:, j] > prev_skills[:, j]).all()
        # Units of work: labour x (floor + (1 - floor) skill) x richness, stochastically rounded.
        effort = labour * (floor + (1 - floor) * prev_skills[:, j]) * richness
        frac = effort - np.floor(effort)
        sigma = per_unit * np.sqrt(np.sum(frac * (1 - frac)))
        out = int(economy.world_total(traj["info"]["produced"][t])[g])
        want = per_unit * float(effort.sum())
        assert abs(out - want) <= 6 * sigma + per_unit, f"step {t}: produced {out}, expected {want:.1f} +- {sigma:.1f}"
        assert out % per_unit == 0
        produced.append(out)
        expected.append(want)
        prev_skills, prev_goods = skills, traj["state"].goods[t]
    # Closed form after T steps of practice: 1 - (1 - s0)(1 - learn)^T.
    closed = 1 - (1 - state0.skills[:, j].astype(np.float64)) * (1 - float(learn)) ** T
    np.testing.assert_allclose(prev_skills[:, j], closed, rtol=1e-5)
    np.testing.assert_allclose(prev_skills[:, :j], state0.skills[:, :j] * (1 - forget[:j].astype(np.float64)) ** T, rtol=1e-5)
    # Specialisation (the niche history) grows towards 1 as well.
    spec = traj["info"]["specialisation"]
    assert (spec[-1] > spec[0]).all()
    # Mean output rises from the start to the end of the run, as the expectations say.
    early, late = np.mean(produced[:4]), np.mean(produced[-4:])
    assert np.mean(expected[-4:]) > 1.5 * np.mean(expected[:4])
    assert late > 1.3 * early, (early, late)


# --------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------
@FEW
@given(seed=st.integers(0, 2**32 - 1))
def test_sample_actions_valid(tiny_env, tiny_fns, seed):
    env = tiny_env
    _, state = tiny_fns["reset"](jax.random.key(seed))
    acts = tiny_fns["sample"](jax.random.key(seed ^ 0x5EED), state)
    assert set(acts) == {h.name for h in env.action_spec}
    for h in env.action_spec:
        a = np.asarray(acts[h.name])
        assert a.shape == (env.num_agents,) + h.shape, h.name
        assert a.dtype == np.int32, h.name
        assert a.min() >= 0 and a.max() < h.choices, h.name
        assert len(np.unique(a)) == h.choices, f"{h.name}: not every choice is sampled"


def test_action_spec(tiny_cfg, tiny_env):
    spec = {h.name: h for h in tiny_env.action_spec}
    G, J = tiny_cfg.num_goods, tiny_cfg.num_niches
    assert spec["niche"].shape == () and spec["niche"].choices == J + 1
    assert spec["side"].shape == (G,) and spec["side"].choices == 3
    assert spec["quantity"].shape == (G,) and spec["quantity"].choices == len(tiny_cfg.market.quantity_levels)
    assert spec["price"].shape == (G,) and spec["price"].choices == tiny_cfg.market.price_ticks


def _wild(env, n, seed):
    rng = np.random.default_rng(seed)
    return {h.name: jnp.asarray(rng.integers(-50, h.choices + 50, (n,) + h.shape).astype(np.int32)) for h in env.action_spec}


def test_out_of_range_actions_are_clipped(tiny_env, tiny_fns):
    env, n = tiny_env, tiny_env.num_agents
    _, state = tiny_fns["reset"](jax.random.key(0))
    wild = _wild(env, n, 0)
    clipped = {h.name: jnp.clip(wild[h.name], 0, h.choices - 1) for h in env.action_spec}
    key = jax.random.key(1)
    out_wild = tiny_fns["step"](key, state, wild)
    out_clip = tiny_fns["step"](key, state, clipped)
    assert_trees_equal(out_wild, out_clip, "wild vs clipped")
    new, info = out_wild[1], out_wild[5]
    check_ledger(env.cfg, state, {"state": jax.tree.map(lambda x: x[None], new), "obs": out_wild[0][None],
                                  "info": jax.tree.map(lambda x: x[None], info)})


@pytest.fixture(scope="module")
def checked_env(tiny_cfg):
    return economy.Economy(tiny_cfg, checked=True)


def test_checked_mode_valid_actions_match(checked_env, tiny_fns):
    _, state = tiny_fns["reset"](jax.random.key(4))
    acts = tiny_fns["sample"](jax.random.key(5), state)
    key = jax.random.key(6)
    assert_trees_close(checked_env.step(key, state, acts), tiny_fns["step"](key, state, acts), "checked vs unchecked")


@pytest.mark.parametrize("head", ["niche", "side", "quantity", "price"])
@pytest.mark.parametrize("bad", ["too_high", "negative"])
def test_checked_mode_out_of_range_raises(checked_env, tiny_fns, head, bad):
    env = checked_env
    _, state = tiny_fns["reset"](jax.random.key(4))
    acts = dict(tiny_fns["sample"](jax.random.key(5), state))
    choices = {h.name: h.choices for h in env.action_spec}[head]
    value = choices if bad == "too_high" else -1
    a = np.array(acts[head])
    a.reshape(-1)[17] = value
    acts[head] = jnp.asarray(a)
    with pytest.raises(Exception, match=rf"'{head}'") as e:
        jax.block_until_ready(env.step(jax.random.key(6), state, acts))
    assert str(value) in str(e.value)


@pytest.mark.parametrize(
    "case, head, exc",
    [
        ("missing", "price", ValueError),
        ("unknown", "colour", ValueError),
        ("shape", "side", ValueError),
        ("agents", "niche", ValueError),
        ("dtype", "quantity", ValueError),
    ],
)
def test_bad_action_structure_raises(tiny_env, tiny_fns, case, head, exc):
    env, n = tiny_env, tiny_env.num_agents
    _, state = tiny_fns["reset"](jax.random.key(0))
    acts = dict(tiny_fns["sample"](jax.random.key(1), state))
    if case == "missing":
        del acts[head]
    elif case == "unknown":
        acts[head] = acts["niche"]
    elif case == "shape":
        acts[head] = acts[head][:, 0]
    elif case == "agents":
        acts[head] = acts[head][: n - 1]
    elif case == "dtype":
        acts[head] = acts[head].astype(jnp.float32)
    with pytest.raises(exc, match=head):
        env.step(jax.random.key(2), state, acts)
    with pytest.raises(exc, match=head):  # the same under jit
        tiny_fns["step"](jax.random.key(2), state, acts)


# --------------------------------------------------------------------------------------
# Observations, episode ends, AutoReset
# --------------------------------------------------------------------------------------
def test_obs_and_truncation(worlds, tiny_cfg, tiny_env, tiny_fns):
    cfg, env, w = tiny_cfg, tiny_env, worlds("tiny")
    n = cfg.num_agents
    obs, state = tiny_fns["reset"](jax.random.key(3))
    assert obs.shape == (n, env.obs_dim) and obs.dtype == jnp.float32
    assert np.isfinite(np.asarray(obs)).all()
    start = cfg.episode_length - 10
    state = state.replace(step=state.step + start)
    fixed, mask = no_override(env, n)
    traj = jax.device_get(w.rollout(state, jax.random.key(4), fixed, mask))
    assert traj["obs"].shape == (T, n, env.obs_dim) and traj["obs"].dtype == np.float32
    assert np.isfinite(traj["obs"]).all()
    assert traj["reward"].shape == (T, n) and traj["reward"].dtype == np.float32
    assert np.isfinite(traj["reward"]).all()
    steps = start + 1 + np.arange(T)
    np.testing.assert_array_equal(traj["state"].step, steps)  # step never auto-resets
    assert traj["truncated"].shape == (T, n) and traj["truncated"].dtype == np.bool_
    np.testing.assert_array_equal(traj["truncated"], np.broadcast_to((steps >= cfg.episode_length)[:, None], (T, n)))
    assert not traj["truncated"][8].any() and traj["truncated"][9].all()  # exactly at episode_length
    assert traj["terminated"].dtype == np.bool_ and not traj["terminated"].any()


def test_autoreset(tiny_cfg, tiny_env, tiny_fns):
    cfg, env = tiny_cfg, tiny_env
    auto = economy.AutoReset(env)
    assert auto.action_spec == env.action_spec and auto.obs_dim == env.obs_dim
    astep = jax.jit(auto.step)
    _, state = tiny_fns["reset"](jax.random.key(7))
    acts = tiny_fns["sample"](jax.random.key(8), state)
    key = jax.random.key(9)
    # An ordinary step: no reset.
    obs, s1, reward, term, trunc, info = astep(key, state, acts)
    assert not bool(info["done"]) and int(s1.step) == 1 and not trunc.any()
    inner = tiny_fns["step"](jax.random.split(key)[0], state, acts)
    assert_trees_close((obs, s1, reward, term, trunc), inner[:5], "autoreset (no reset) vs step")
    # The last step of the episode: truncated, done, and the world is re-drawn.
    last = state.replace(step=state.step + cfg.episode_length - 1)
    obs, s2, reward, term, trunc, info = astep(key, last, acts)
    assert bool(info["done"]) and trunc.all() and not term.any()
    assert int(s2.step) == 0
    robs, rstate = tiny_fns["reset"](jax.random.split(key)[1])
    assert_trees_close((obs, s2), (robs, rstate), "autoreset state vs fresh reset")
    assert trees_differ(s2.goods, state.goods)
    # Reward and info still describe the step that ended the episode.
    inner = tiny_fns["step"](jax.random.split(key)[0], last, acts)
    assert_trees_close((reward, info["produced"]), (inner[2], inner[5]["produced"]))


# --------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------
def test_info_contents(tiny_cfg, tiny_env, tiny_fns):
    cfg = tiny_cfg
    N, M, G, J = cfg.num_agents, cfg.num_markets, cfg.num_goods, cfg.num_niches
    B = cfg.agents_per_market
    _, state = tiny_fns["reset"](jax.random.key(12))
    acts = tiny_fns["sample"](jax.random.key(13), state)
    _, new, reward, _, _, info = jax.device_get(tiny_fns["step"](jax.random.key(14), state, acts))
    for name in ("utility", "specialisation", "collaboration"):
        assert info[name].shape == (N,) and info[name].dtype == np.float32, name
        assert np.isfinite(info[name]).all(), name
    for name in ("produced", "consumed", "eaten"):
        assert info[name].shape == (M, G) and info[name].dtype.kind == "i", name
    for name in ("market_price", "market_volume"):
        assert info[name].shape == (M, G) and info[name].dtype.kind == "i", name
    assert (info["market_volume"] >= 0).all()
    # Value added: units x (outputs - inputs) of the chosen niche at the market's prices
    # before the step, in mean base prices (NumPy, agent by agent's market and niche).
    net = np.asarray(tiny_env.params.outputs, np.float64) - np.asarray(tiny_env.params.inputs, np.float64)
    price = np.asarray(state.price, np.float64)[np.arange(N) // B]  # [N, G]
    want = info["units"] * np.einsum("ng,ng->n", price, net[np.asarray(acts["niche"])])
    want /= np.mean([g.base_price for g in cfg.goods])
    assert info["value_added"].dtype == np.float32 and (info["units"] > 0).sum() > N // 4
    np.testing.assert_allclose(info["value_added"], want, rtol=1e-6, atol=1e-6)
    assert (info["value_added"][np.asarray(acts["niche"]) == J] == 0).all()
    assert (info["market_price"] >= cfg.market.min_price).all() and (info["market_price"] <= cfg.market.max_price).all()
    np.testing.assert_array_equal(new.volume, info["market_volume"])
    occ = info["niche_occupancy"]
    assert occ.shape == (M, J + 1) and occ.dtype.kind == "i"
    np.testing.assert_array_equal(occ.sum(1), np.full(M, B))
    niche = np.asarray(acts["niche"]).reshape(M, B)
    want = np.stack([np.bincount(row, minlength=J + 1) for row in niche])
    np.testing.assert_array_equal(occ, want)
    assert (info["collaboration"] >= 0).all() and (info["utility"] >= 0).all()
    # Units of work per agent: none when resting; they account for every good produced.
    units = info["units"]
    assert units.shape == (N,) and units.dtype.kind == "i" and (units >= 0).all()
    niche_flat = np.asarray(acts["niche"])
    assert (units[niche_flat == J] == 0).all()
    outputs = np.asarray(tiny_env.params.outputs)
    np.testing.assert_array_equal(info["produced"], (units[:, None] * outputs[niche_flat]).reshape(M, B, -1).sum(1))
    # The environment's own reward is the utility component (self-play weights the rest).
    np.testing.assert_array_equal(reward, info["utility"])


# --------------------------------------------------------------------------------------
# World seeds
# --------------------------------------------------------------------------------------
def test_world_key(tiny_cfg, tiny_env):
    env, start = tiny_env, tiny_cfg.world.eval_seed_start
    data = lambda k: np.asarray(jax.random.key_data(k))
    # World keys live in their own namespace: never a run's root key(seed).
    np.testing.assert_array_equal(data(env.world_key(5)), [streams.WORLD_TAG, 5])
    np.testing.assert_array_equal(data(env.world_key(start - 1)), [streams.WORLD_TAG, start - 1])
    np.testing.assert_array_equal(data(env.world_key(3, evaluation=True)), [streams.WORLD_TAG, start + 3])
    assert not np.array_equal(data(env.world_key(5)), data(jax.random.key(5)))
    for seed in (start, start + 1, 10 * start):
        with pytest.raises(ValueError, match=str(seed)) as e:
            env.world_key(seed)
        assert "evaluation" in str(e.value)
    with pytest.raises(ValueError, match="-1"):
        env.world_key(-1)
    # evaluation=True maps into the held-out range, disjoint from every training seed.
    np.testing.assert_array_equal(data(env.world_key(0, evaluation=True)), data(streams.world_key(start)))
    np.testing.assert_array_equal(data(env.world_key(7, evaluation=True)), data(streams.world_key(start + 7)))
    assert not np.array_equal(data(env.world_key(7, evaluation=True)), data(env.world_key(7)))


# --------------------------------------------------------------------------------------
# Public projects (collaboration)
# --------------------------------------------------------------------------------------
def _project_mult(cfg, stock):
    pc = cfg.project
    return 1.0 + pc.gain * stock / (stock + pc.half)


def test_public_project_raises_productivity(tiny_cfg, tiny_env, tiny_fns):
    cfg, env = tiny_cfg, tiny_env
    N, M, G, J = cfg.num_agents, cfg.num_markets, cfg.num_goods, cfg.num_niches
    B, L = cfg.agents_per_market, cfg.market.price_ticks
    builder = cfg.niche_names.index("builder")
    bcfg = cfg.niches[builder]
    gidx = {name: cfg.good_names.index(name) for name in bcfg.inputs}
    in_market0 = np.arange(N) < B

    def actions(niche_of_market0):
        return {
            "niche": jnp.asarray(np.where(in_market0, niche_of_market0, J).astype(np.int32)),  # others rest
            "side": jnp.full((N, G), economy.HOLD, jnp.int32),  # nobody trades
            "quantity": jnp.zeros((N, G), jnp.int32),
            "price": jnp.full((N, G), L // 2, jnp.int32),
        }

    _, state = tiny_fns["reset"](jax.random.key(21))
    assert (np.asarray(state.project) == 0).all()
    build = actions(builder)
    keys = jax.random.split(jax.random.key(22), 12)
    for t, key in enumerate(keys):
        goods = np.array(state.goods)
        for name, q in bcfg.inputs.items():  # supply builders with their inputs
            goods[:, gidx[name]] = 40 * q
        state = state.replace(goods=jnp.asarray(goods))
        before = np.asarray(state.project)
        _, state, _, _, _, info = tiny_fns["step"](key, state, build)
        after = np.asarray(state.project)
        public = np.rint(np.asarray(info["collaboration"]) * cfg.collaboration_scale).astype(np.int64)
        assert (public[~in_market0] == 0).all()
        assert (public[in_market0] % bcfg.public == 0).all()
        contribution = public[in_market0].sum()
        decay = before[0] - (after[0] - contribution)
        assert np.floor(cfg.project.decay * before[0]) <= decay <= np.ceil(cfg.project.decay * before[0]), t
        assert (after[1:] == 0).all()
        assert contribution > 0
    stock = int(state.project[0])
    assert stock > cfg.project.half  # a substantial project after a dozen steps of building

    # Same state, same key, same actions (market 0 farms): with and without the project.
    farmer = cfg.niche_names.index("farmer")
    grain = cfg.good_names.index("grain")
    per_unit = cfg.niches[farmer].outputs["grain"]
    farm = actions(farmer)
    key = jax.random.key(23)
    with_project = economy.world_total(tiny_fns["step"](key, state, farm)[5]["produced"])[grain]
    without = economy.world_total(
        tiny_fns["step"](key, state.replace(project=jnp.zeros_like(state.project)), farm)[5]["produced"])[grain]
    with_project, without = int(with_project), int(without)
    assert with_project > without > 0
    # Expected: labour x skill multiplier x richness x (1 + gain s / (s + half)).
    s = jax.device_get(state)
    effort = s.labour[farmer] * (cfg.skill_floor + (1 - cfg.skill_floor) * s.skills[:B, farmer]) * s.richness[0, farmer]
    for mult, got in ((1.0, without), (_project_mult(cfg, stock), with_project)):
        e = effort * mult
        frac = e - np.floor(e)
        sigma = per_unit * np.sqrt(np.sum(frac * (1 - frac)))
        assert abs(got - per_unit * e.sum()) <= 6 * sigma + per_unit, (mult, got, per_unit * e.sum())


# --------------------------------------------------------------------------------------
# Sharding the agent axis over devices (subprocess with 4 host CPU devices)
# --------------------------------------------------------------------------------------
SHARDING_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import economy

    assert len(jax.devices()) == 4, jax.devices()
    cfg = economy.load_config({tiny!r})
    env = economy.Economy(cfg)
    N, M = cfg.num_agents, cfg.num_markets
    mesh = jax.make_mesh((4,), ("agents",), axis_types=(jax.sharding.AxisType.Auto,))
    split, rep = NamedSharding(mesh, P("agents")), NamedSharding(mesh, P())

    def shard(x):
        return jax.device_put(x, split if x.ndim >= 1 and x.shape[0] in (N, M) else rep)

    reset, step, sample = jax.jit(env.reset), jax.jit(env.step), jax.jit(env.sample_actions)
    # the XLA auction (the reference), and the native kernel run per device on its markets
    step_xla = jax.jit(economy.Economy(cfg, native=False).step)
    step_mesh = jax.jit(economy.Economy(cfg, mesh=mesh).step)
    _, plain = reset(jax.random.key(0))
    sharded = jax.tree.map(shard, plain)
    assert len(sharded.goods.sharding.device_set) == 4
    for t, key in enumerate(jax.random.split(jax.random.key(1), 3)):
        acts = sample(key, plain)
        out_plain = step(key, plain, acts)
        out_sharded = step_mesh(key, sharded, jax.tree.map(shard, acts))
        la = jax.tree.leaves(out_plain)
        # the same numbers: sharded with the mesh, sharded without it, and by XLA's auction
        for other in (out_sharded, step(key, sharded, jax.tree.map(shard, acts)), step_xla(key, plain, acts)):
            lb = jax.tree.leaves(other)
            assert len(la) == len(lb)
            for x, y in zip(la, lb):
                assert x.dtype == y.dtype and x.shape == y.shape
                assert np.array_equal(np.asarray(x), np.asarray(y)), (t, x.shape)
        # with the mesh the kernels run per device and the state stays split by markets
        plain, sharded = out_plain[1], out_sharded[1]
        goods = sharded.goods
        assert len(goods.sharding.device_set) == 4, goods.sharding
        assert not goods.sharding.is_fully_replicated, goods.sharding
        shard_shapes = sorted(s.data.shape for s in goods.addressable_shards)
        assert shard_shapes == [(N // 4, cfg.num_goods)] * 4, shard_shapes
        print("STEP_OK", t, goods.sharding)
    print("SHARDED_EQUAL_OK")
    """
)


def test_sharded_step_matches_unsharded():
    script = SHARDING_SCRIPT.format(tiny=str(CONFIGS / "tiny.yaml"))
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SHARDED_EQUAL_OK" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.count("STEP_OK") == 3


def test_observed_niche_values_against_their_closed_form(tiny_cfg):
    """``economy.observe_values``: the observation gains J columns, each the signed log of
    expected effort x the niche's margin at the market's last prices (in mean base prices),
    plus ``pay`` per public unit and the niche's wage while the treasury pays; everything
    before them unchanged."""
    cfg = tiny_cfg.model_copy(update={"observe_values": True,
                                      "treasury": tiny_cfg.treasury.model_copy(update={"pay": 3, "wages": {"miner": 4}})})
    env, plain = economy.Economy(cfg), economy.Economy(tiny_cfg)
    _, state = env.reset(env.world_key(5))
    state = state.replace(treasury=state.treasury.at[1].set(100))  # market 1 pays for public units
    obs = np.asarray(env.observe(state))
    J, n, m = cfg.num_niches, cfg.num_agents, cfg.num_markets
    assert env.obs_dim == plain.obs_dim + J == obs.shape[1]
    np.testing.assert_array_equal(obs[:, :plain.obs_dim], np.asarray(plain.observe(state)))
    p = env.params
    market = np.arange(n) // (n // m)
    skill = cfg.skill_floor + (1 - cfg.skill_floor) * np.asarray(state.skills, np.float64)
    stock = np.asarray(state.project, np.float64)
    mult = 1 + cfg.project.gain * stock / (stock + cfg.project.half)
    effort = np.asarray(state.labour, np.float64) * skill * np.asarray(state.richness, np.float64)[market] * mult[market, None]
    net = np.asarray(p.outputs[:J] - p.inputs[:J], np.float64)
    wage = np.array([4.0 if name == "miner" else 0.0 for name in cfg.niche_names])
    paid = 3 * np.asarray(p.public[:J]) + wage
    margin = np.asarray(state.price, np.float64) @ net.T + paid[None, :] * (np.arange(m) == 1)[:, None]
    v = effort * margin[market] / np.mean([g.base_price for g in cfg.goods])
    np.testing.assert_allclose(obs[:, plain.obs_dim:], np.sign(v) * np.log1p(np.abs(v)), rtol=1e-5, atol=1e-5)


def test_niche_tenure_binds_each_agent_between_its_renewals():
    """``economy.niche_tenure`` K = 4: agent ``i`` works the niche it draws only at steps with
    ``(step + i) % K == 0`` and at a world's first step, otherwise the niche it worked last
    step (``info["niche"]``, ``state.niche``); the scripted agents' niche and orders follow
    the bound niche; the ledger stays exact. Catches: a lock that ignores the agent's offset
    (everyone renewing together), one that never lets an agent renew or forgets the first
    step (every agent would rest until its first renewal), ``state.niche`` not updated,
    ``info["niche"]`` reporting the drawn niche instead of the worked one, and scripted
    orders placed for a niche the agent is not bound to."""
    from agents.scripted import scripted_actions

    K, steps = 4, 9
    cfg = economy.load_config(CONFIGS / "tiny.yaml", f"niche_tenure={K}")
    env = economy.Economy(cfg)
    N, J = cfg.num_agents, cfg.num_niches
    _, state0 = jax.jit(env.reset)(env.world_key(3))
    assert state0.niche.shape == (N,) and (np.asarray(state0.niche) == J).all()
    metrics = lambda e, s, info, a: (s, info, a)  # noqa: E731
    random = jax.jit(lambda k, s: economy.rollout(env, env.sample_actions, k, s, steps, metrics))
    _, (states, info, actions) = jax.device_get(random(jax.random.key(4), state0))
    agent = np.arange(N)
    prev = None
    for t in range(steps):
        drawn, worked = actions["niche"][t], info["niche"][t]
        renew = ((t + agent) % K == 0) | (t == 0)
        np.testing.assert_array_equal(worked[renew], drawn[renew], err_msg=f"step {t}")
        if prev is not None:
            np.testing.assert_array_equal(worked[~renew], prev[~renew], err_msg=f"step {t}")
            assert (worked != drawn).mean() > 0.3  # the draws were mostly overridden
        np.testing.assert_array_equal(states.niche[t], worked)
        assert 0 < renew.sum() < N or t == 0
        prev = worked
    # units and occupancy follow the worked niche
    np.testing.assert_array_equal(info["niche_occupancy"][-1].sum(0), np.bincount(prev, minlength=J + 1))
    # the exact ledger
    before = economy.ledger(state0)
    for t in range(steps):
        after = economy.ledger(tree_slice(states, t))
        assert after["money"] == before["money"]
        np.testing.assert_array_equal(after["goods"], before["goods"] + economy.world_total(info["produced"][t])
                                      - economy.world_total(info["consumed"][t]))
        before = after
    # scripted agents: between renewals their niche (and so their orders) is the bound one
    s = tree_slice(states, steps - 1)
    a = scripted_actions(env, jax.random.key(5), s)
    renew = (np.asarray(s.step) + agent) % K == 0
    np.testing.assert_array_equal(np.asarray(a["niche"])[~renew], np.asarray(s.niche)[~renew])
    fixed = scripted_actions(env, jax.random.key(5), s, niche=jnp.full((N,), J, jnp.int32))
    np.testing.assert_array_equal(np.asarray(fixed["niche"])[~renew], np.asarray(s.niche)[~renew])
    assert (np.asarray(fixed["niche"])[renew] == J).all()
