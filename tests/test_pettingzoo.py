"""The economy as a PettingZoo ParallelEnv (economy.interop.pettingzoo): PettingZoo's own
API and seed tests, bit-for-bit agreement with the JAX environment for the same world,
keys and actions, the ledger through the wrapper, and bad actions refused before the
world changes."""

from __future__ import annotations

import jax
import numpy as np
import pytest

pytest.importorskip("pettingzoo")
from pettingzoo.test import parallel_api_test, parallel_seed_test  # noqa: E402

from economy import Economy, ledger, world_total  # noqa: E402
from economy.interop.pettingzoo import parallel_env  # noqa: E402
from tests.conftest import CONFIGS  # noqa: E402

TINY = CONFIGS / "tiny.yaml"
SHORT = ["episode_length=12"]  # a short episode: the API tests play it to the end


@pytest.fixture(scope="module")
def env():
    return parallel_env(TINY, *SHORT, seed=0)


def test_pettingzoo_api_and_seed_tests(env):
    parallel_api_test(env, num_cycles=20)
    parallel_seed_test(lambda: parallel_env(TINY, *SHORT), num_cycles=20)


def test_spaces_follow_the_action_spec(env):
    cfg = env.cfg
    G, J = cfg.num_goods, cfg.num_niches
    assert env.possible_agents == [f"agent_{i}" for i in range(cfg.num_agents)] and env.max_num_agents == cfg.num_agents
    assert env.metadata["is_parallelizable"] and env.metadata["name"]
    a = env.action_space("agent_3")
    assert a is env.action_space("agent_0") and env.observation_space("agent_1") is env.observation_space("agent_2")
    assert a["niche"].n == J + 1
    for head, choices in (("side", 3), ("quantity", len(cfg.market.quantity_levels)), ("price", cfg.market.price_ticks)):
        np.testing.assert_array_equal(a[head].nvec, np.full(G, choices))
    box = env.observation_space("agent_0")
    assert box.shape == (env.economy.obs_dim,) and box.dtype == np.float32
    obs, _ = env.reset(seed=4)
    assert all(box.contains(o) for o in obs.values())
    # A new good and niche change the spaces with no code change.
    bigger = parallel_env(CONFIGS / "examples" / "weaver.yaml")  # two goods and two niches added
    b = bigger.action_space("agent_0")
    assert b["niche"].n == J + 3 and b["price"].nvec.shape == (G + 2,)
    assert bigger.observation_space("agent_0").shape == (bigger.economy.obs_dim,) != box.shape


def _random_actions(env, rng):
    n = env.max_num_agents
    arrays = {h.name: rng.integers(0, h.choices, (n,) + h.shape) for h in env.economy.action_spec}
    return arrays, {a: {k: v[i] for k, v in arrays.items()} for i, a in enumerate(env.possible_agents)}


def test_same_world_keys_and_actions_as_the_jax_environment(env):
    """Observations, rewards and truncation through the wrapper equal Economy.step's for the
    same world key, step keys and actions, bit for bit; the ledger identity holds through
    the wrapper (money conserved, goods change by produced minus consumed)."""
    rng = np.random.default_rng(0)
    econ = Economy(env.cfg)
    reset, step = jax.jit(econ.reset), jax.jit(econ.step)  # the JAX environment, jitted as it runs
    obs, infos = env.reset(seed=5)
    assert all(type(o) is np.ndarray and o.dtype == np.float32 for o in obs.values())
    ref_obs, state = reset(env.world_key())
    np.testing.assert_array_equal(np.stack([obs[a] for a in env.possible_agents]), np.asarray(ref_obs))
    before = ledger(env.economy_state)
    for t in range(env.cfg.episode_length):
        arrays, actions = _random_actions(env, rng)
        obs, rew, term, trunc, info = env.step(actions)
        ref_obs, state, ref_rew, _, ref_trunc, ref_info = step(env.step_key(t), state, jax.tree.map(np.int32, arrays))
        np.testing.assert_array_equal(np.stack([obs[a] for a in env.possible_agents]), np.asarray(ref_obs))
        np.testing.assert_array_equal(np.asarray([rew[a] for a in env.possible_agents], np.float32), np.asarray(ref_rew))
        assert [trunc[a] for a in env.possible_agents] == np.asarray(ref_trunc).tolist() and not any(term.values())
        assert all(type(r) is float for r in rew.values()) and set(info["agent_0"]) >= {"utility", "collaboration"}
        for name, key in (("utility", "utility"), ("persistence", "specialisation"), ("collaboration", "collaboration"),
                          ("income", "value_added")):
            np.testing.assert_array_equal(np.asarray([info[a][name] for a in env.possible_agents], np.float32),
                                          np.asarray(ref_info[key]), err_msg=name)
        after = ledger(env.economy_state)
        assert after["money"] == before["money"]
        np.testing.assert_array_equal(
            after["goods"], before["goods"] + world_total(env.last_info["produced"]) - world_total(env.last_info["consumed"])
        )
        before = after
    assert env.agents == [] and all(trunc.values())  # the whole world ends at episode_length
    # The same seed replays the same world; a held-out env plays the evaluation range.
    again = parallel_env(TINY, *SHORT)
    o1, _ = again.reset(seed=5)
    np.testing.assert_array_equal(o1["agent_7"], np.asarray(reset(env.world_key(0))[0])[7])
    held = parallel_env(TINY, *SHORT, held_out=True)
    held.reset(seed=5)
    assert held.world_seed() == env.world_seed(0)
    assert not np.array_equal(np.asarray(jax.random.key_data(held.world_key())), np.asarray(jax.random.key_data(env.world_key(0))))


@pytest.mark.parametrize("case", ["missing_agent", "unknown_agent", "unknown_head", "missing_head", "out_of_range",
                                  "negative", "wrong_shape", "not_integer", "not_a_dict"])
def test_bad_actions_raise_naming_agent_and_head_before_the_world_changes(env, case):
    rng = np.random.default_rng(1)
    env.reset(seed=2)
    _, actions = _random_actions(env, rng)
    G = env.cfg.num_goods
    agent, head = "agent_9", "price"
    later = "agent_20"  # a second bad agent: the message names the first one
    if case == "missing_agent":
        del actions[agent], actions[later]
        head = None
    elif case == "unknown_agent":
        actions["agent_99999"] = actions.pop(agent)
        actions["agent_99998"] = actions.pop(later)
        agent, head = "agent_99999", None
    elif case == "unknown_head":
        actions[agent]["zzz"] = 1
        actions[agent]["tax"] = 1
        head = "tax"  # the first in name order
    elif case == "missing_head":
        del actions[agent][head]
    elif case == "out_of_range":
        actions[agent][head] = np.full(G, env.cfg.market.price_ticks)
        actions[later][head] = np.full(G, env.cfg.market.price_ticks + 1)
    elif case == "negative":
        head = "niche"
        actions[agent][head] = actions[later][head] = -1
    elif case == "wrong_shape":
        actions[agent][head] = np.zeros(G + 1, np.int64)
    elif case == "not_integer":
        actions[agent][head] = np.full(G, 1.5)
    else:
        actions[agent] = [0, 1]
        head = None
    leaves = [np.asarray(x).copy() for x in jax.tree.leaves(env.economy_state)]
    with pytest.raises(ValueError) as err:
        env.step(actions)
    msg = str(err.value)
    assert repr(agent) in msg and (head is None or repr(head) in msg), msg
    assert repr(later) not in msg and "zzz" not in msg, msg
    if case == "missing_agent":
        assert "(2 live agents missing)" in msg
    if case == "unknown_agent":
        assert f"'agent_{env.max_num_agents - 1}'" in msg
    for x, y in zip(jax.tree.leaves(env.economy_state), leaves):
        np.testing.assert_array_equal(np.asarray(x), y)
    assert env._t == 0 and env.agents == env.possible_agents


def test_example_script_runs(capsys):
    """examples/pettingzoo_random.py, the README's example, on a small economy."""
    import runpy

    mod = runpy.run_path(str(CONFIGS.parent / "examples" / "pettingzoo_random.py"), run_name="example")
    assert mod["main"](["--agents", "256", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "5 steps of 256 agents with random actions: mean utility" in out


def test_reset_to_a_world_after_other_seeds_and_two_episodes_of_one_seed(env):
    """``reset(options={"world": k})`` gives world k whatever was played before (it equals the
    economy's own world k); ``reset(seed=s)`` then ``reset()`` are episodes 0 and 1 of seed s,
    the same two worlds each time the seed is given again, and different from each other."""
    first = lambda out: np.stack([out[0][a] for a in env.possible_agents])  # noqa: E731
    fresh = first(env.reset(options={"world": 3}))
    env.reset(seed=11)
    env.reset()
    again = first(env.reset(options={"world": 3}))
    np.testing.assert_array_equal(again, fresh)
    eco = env.economy
    want, _ = eco.reset(eco.world_key(3, evaluation=env.held_out))
    np.testing.assert_array_equal(fresh, np.asarray(want))
    a0, a1 = first(env.reset(seed=5)), first(env.reset())
    b0, b1 = first(env.reset(seed=5)), first(env.reset())
    np.testing.assert_array_equal(a0, b0)
    np.testing.assert_array_equal(a1, b1)
    assert not np.array_equal(a0, a1)


def test_worlds_of_a_seed_config_paths_and_config_objects(tmp_path, monkeypatch):
    """Seed ``s``'s episode ``e`` plays world ``(s * 7919 + e) mod eval_seed_start`` of the
    training range (the trainer's sequence; not held out unless asked), a fresh env without a
    seed starts at world 0 of seed 0; a relative config path is found from any working
    directory, a file there first; an ``EconomyConfig`` takes fields and refuses overrides;
    ``render`` shows the mean price per good and the niche shares."""
    from economy import load_config
    from economy.interop.pettingzoo import AgoraParallelEnv

    def first(env, out):
        return np.stack([out[0][a] for a in env.possible_agents])

    env = parallel_env(TINY, *SHORT, seed=3)
    eco, start = env.economy, env.cfg.world.eval_seed_start
    reset = jax.jit(eco.reset)  # the program the wrapper runs
    assert env.held_out is False
    first(env, env.reset(seed=3))
    assert [env.world_seed(e) for e in (0, 1, 5)] == [(3 * 7919 + e) % start for e in (0, 1, 5)]
    want, _ = reset(eco.world_key((3 * 7919 + 1) % start, evaluation=False))
    np.testing.assert_array_equal(first(env, env.reset()), np.asarray(want))
    fresh = AgoraParallelEnv(env.cfg)
    for w in (0, 1):
        want, _ = reset(eco.world_key(w, evaluation=False))
        np.testing.assert_array_equal(first(fresh, fresh.reset()), np.asarray(want))
    # paths: relative to the checkout from elsewhere; a file in the working directory first
    monkeypatch.chdir(tmp_path)
    assert parallel_env("configs/tiny.yaml").max_num_agents == env.max_num_agents
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text(
        f"economy:\n  base: {CONFIGS / 'economy' / 'classic.yaml'}\n  num_agents: 128\n  num_markets: 2\n")
    assert parallel_env("configs/tiny.yaml").max_num_agents == 128
    # an EconomyConfig object: fields apply, overrides are refused
    cfg = load_config(TINY)
    assert parallel_env(cfg).cfg == cfg and parallel_env(cfg, num_agents=128).max_num_agents == 128
    with pytest.raises(ValueError, match="overrides"):
        parallel_env(cfg, "num_agents=128")
    # render: the mean price over markets per good, the niche shares of all agents
    shown = parallel_env(TINY, *SHORT, seed=1, render_mode="ansi", held_out=True)
    shown.reset(seed=1)
    rng = np.random.default_rng(0)
    shown.step(_random_actions(shown, rng)[1])
    text = shown.render().splitlines()
    assert text[0].startswith("step 1 of 12, world ") and text[0].endswith("(held out)")
    price = np.asarray(shown.economy_state.price).mean(0)
    assert text[1] == "mean price: " + ", ".join(f"{g}={p:.1f}" for g, p in zip(shown.cfg.good_names, price))
    occ = shown.last_info["niche_occupancy"].sum(0) / shown.max_num_agents
    assert text[2] == "niches: " + ", ".join(f"{n}={x:.2f}" for n, x in zip([*shown.cfg.niche_names, "rest"], occ))
    assert abs(occ.sum() - 1) < 1e-9
    plain = parallel_env(TINY, *SHORT, seed=1, render_mode="ansi")
    plain.reset(seed=1)
    assert plain.render().splitlines()[0] == f"step 0 of 12, world {plain.world_seed()}"


def test_without_the_extra_the_import_names_it(monkeypatch):
    """Without pettingzoo installed, importing the wrapper says which extra to install."""
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "pettingzoo", None)  # import pettingzoo -> ImportError
    monkeypatch.delitem(sys.modules, "economy.interop.pettingzoo")
    with pytest.raises(ImportError, match=r"\.\[pettingzoo\]"):
        importlib.import_module("economy.interop.pettingzoo")
