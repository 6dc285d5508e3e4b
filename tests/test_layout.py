"""The agent -> player layout (``train.layout``: ``mixed`` and ``villages``), the
``market_welfare`` fitness it feeds and the ``social`` reward component.

Markets are contiguous blocks of ``B = N/M`` agents; agent ``i`` is played by player
``(i // C) % PL`` (``C = 1``: mixed; ``C = B / k``: villages of ``k`` players per market).
One villages :class:`Trainer` on the tiny preset (256 agents in 4 markets, 4 members, no
league) serves the module; its update compiles once (the smoke test).
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.networks import agent_players, from_members, population_apply, to_members
from economy import ConfigError
from selfplay import evaluate
from selfplay import population as pop
from selfplay import rewards as rw
from selfplay.config import load_run_config
from selfplay.train import Trainer
from tests.conftest import CONFIGS
from tests.test_train import OVERRIDES as TRAIN_OVERRIDES

# test_train.py's shapes (members, rollout; so the compiled init is shared through the
# disk cache) with the villages layout and group fitness; no analysis (a smaller update).
VILLAGES = [o for o in TRAIN_OVERRIDES if not o.startswith("train.analysis")] + [
    "train.analysis.every=0",
    "train.layout=villages",
    "train.village_players=2",
    "train.pbt.fitness=market_welfare",
]
N, M, PL, K = 256, 4, 4, 2  # tiny preset: agents, markets; players, players per market
B = N // M


@pytest.fixture(scope="module")
def cfg():
    c = load_run_config(CONFIGS / "tiny.yaml", VILLAGES + ["train.updates=10"])
    assert (c.economy.num_agents, c.economy.num_markets, c.train.players) == (N, M, PL)  # no league in tiny
    return c


@pytest.fixture(scope="module")
def trainer(cfg):
    return Trainer(cfg)


# ---- to_members / from_members with runs --------------------------------------------------


@pytest.mark.parametrize("n,p,c", [(24, 3, 2), (24, 2, 4), (24, 4, 6), (12, 3, 1)])
def test_runs_regroup_and_round_trip(n, p, c):
    """Agent ``i`` lands at member ``(i // C) % P``, position ``(i // (P C)) C + i % C``;
    ``from_members(run=C)`` inverts it both ways, on pytrees with trailing axes.
    (Catches: a from_members that does not invert to_members for C > 1, runs dealt in the
    wrong order.)"""
    i = np.arange(n)
    x = {"id": i, "obs": np.stack([i, -i], 1).astype(np.float32),
         "nested": {"a": i[:, None, None] * np.ones((1, 2, 3))}}
    mx = to_members(x, p, run=c)
    assert mx["id"].shape == (p, n // p) and mx["obs"].shape == (p, n // p, 2)
    assert mx["nested"]["a"].shape == (p, n // p, 2, 3)
    member, pos = (i // c) % p, (i // (p * c)) * c + i % c
    np.testing.assert_array_equal(np.asarray(mx["id"])[member, pos], i)
    np.testing.assert_array_equal(agent_players(n, p, c), member)
    for q in range(p):  # each member's row holds exactly its agents, in agent order
        np.testing.assert_array_equal(np.asarray(mx["id"][q]), i[member == q])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), from_members(mx, run=c), x)
    y = jnp.arange(n * 2).reshape(p, n // p, 2)
    np.testing.assert_array_equal(np.asarray(to_members(from_members(y, run=c), p, run=c)), np.asarray(y))


def test_run_one_is_round_robin():
    """``run=1`` (the default) is today's map: the plain reshape-and-swap, member ``i % P``."""
    x = np.arange(12 * 2).reshape(12, 2)
    want = np.swapaxes(x.reshape(4, 3, 2), 0, 1)
    np.testing.assert_array_equal(np.asarray(to_members(x, 3)), want)
    np.testing.assert_array_equal(np.asarray(to_members(x, 3, run=1)), want)
    np.testing.assert_array_equal(np.asarray(from_members(want)), x)
    np.testing.assert_array_equal(agent_players(12, 3), np.arange(12) % 3)


def test_runs_refuse_partial_runs():
    with pytest.raises(ValueError, match=r"N=24.*P=3.*C=3"):
        to_members(jnp.zeros((24, 2)), 3, run=3)  # 24 agents are not whole rounds of 3 runs of 3
    with pytest.raises(ValueError, match=r"C=4"):
        from_members(jnp.zeros((2, 6)), run=4)


# ---- the villages layout of the trainer ---------------------------------------------------


def test_villages_layout_matches_presence(trainer):
    """Every member's agents sit only in its markets: the players the network map gives each
    market (to_members of the agent ids) are exactly the presence matrix's, ``k`` per market
    (``(m k + j) % PL``), each player in ``M k / PL`` markets with ``B / k`` agents in each;
    presence rows sum to 1. (Catches: presence computed with the old ``i % P`` map while the
    rollout regroups by runs, or the other way round.)"""
    C = B // K
    assert trainer.run_length == C
    np.testing.assert_array_equal(trainer.player_of, (np.arange(N) // C) % PL)
    ids = np.asarray(to_members(np.arange(N), PL, trainer.run_length))  # [PL, N/PL] agents of each player
    market_of = ids // B
    counts = np.zeros((PL, M))
    np.add.at(counts, (np.repeat(np.arange(PL), N // PL), market_of.ravel()), 1)
    presence = np.asarray(trainer.presence)
    assert presence.shape == (PL, M)  # all players are members (no league)
    np.testing.assert_allclose(presence.sum(-1), 1.0)
    np.testing.assert_allclose(presence, counts / counts.sum(-1, keepdims=True))
    for m in range(M):
        hosts = set(np.flatnonzero(counts[:, m]).tolist())
        assert hosts == {(m * K + j) % PL for j in range(K)}, (m, hosts)
    assert set((counts > 0).sum(-1).tolist()) == {M * K // PL}
    assert set(counts[counts > 0].tolist()) == {B // K}
    # The mixed layout of the same economy: everyone everywhere, in equal shares.
    np.testing.assert_allclose(pop.layout_presence(agent_players(N, PL), M, PL), np.full((PL, M), 1 / M))


def test_market_welfare_ranks_villages_and_ties_mixed(trainer):
    """Market utilities [1, 2, 3, 4]: under villages members 0 and 1 share markets 0 and 2
    (fitness (1 + 3) / 2 = 2), members 2 and 3 markets 1 and 3 ((2 + 4) / 2 = 3); under
    mixed every member has 2.5. (Catches: fitness fed a presence of the wrong layout.)"""
    fit = pop.FITNESS["market_welfare"]
    mu = jnp.asarray([1.0, 2.0, 3.0, 4.0])
    comps = {"utility": jnp.zeros((PL,))}
    niche = jnp.zeros((PL, 3), jnp.int32)
    villages = fit(pop.FitnessInputs(comps, niche, mu, jnp.asarray(trainer.presence)))
    np.testing.assert_allclose(np.asarray(villages), [2.0, 2.0, 3.0, 3.0], rtol=1e-6)
    mixed = fit(pop.FitnessInputs(comps, niche, mu, jnp.asarray(pop.layout_presence(agent_players(N, PL), M, PL))))
    np.testing.assert_allclose(np.asarray(mixed), np.full(PL, 2.5), rtol=1e-6)


def test_greedy_play_and_evaluation_use_the_layout(trainer, monkeypatch):
    """The acting map (act_with, what evaluation and cross-play play through) gives agent
    ``i`` player ``(i // C) % PL``'s greedy action, not player ``i % PL``'s; evaluation
    counts each player's agents by that map; a villages population plays its half of the
    cross-play slots in runs of ``C / 2`` (its players in their training markets).
    (Catches: act_with or evaluate's groups left on the old map.)"""
    params = jax.jit(lambda k: trainer._init_learners(k)[0])(jax.random.key(0))  # [PL, ...], no league
    obs = jax.random.normal(jax.random.key(1), (N, trainer.env.obs_dim))
    act = jax.jit(lambda p, o: trainer.act_with(p, None, o, greedy=True))(params, obs)
    every = jnp.broadcast_to(obs, (PL,) + obs.shape)  # every player sees every agent's observation
    logits, _ = jax.jit(lambda p, o: population_apply(trainer.net, p, o))(params, every)
    greedy = np.asarray(jnp.argmax(logits["niche"], -1))  # [PL, N] every player's choice for every agent
    want = greedy[trainer.player_of, np.arange(N)]
    np.testing.assert_array_equal(np.asarray(act["niche"]), want)
    assert (want != greedy[np.arange(N) % PL, np.arange(N)]).any()  # the maps are told apart
    # Evaluation's groups (evaluate_population and population_utility): the training map.
    seen = {}

    def capture(name):
        def f(*args, **kwargs):
            seen[name] = np.asarray(args[2] if name == "play" else args[0])
            raise StopIteration
        return f

    monkeypatch.setattr(evaluate, "play", capture("play"))
    monkeypatch.setattr(evaluate, "_step_sums", capture("_step_sums"))
    monkeypatch.setattr(trainer, "players_params", lambda ts: None)
    with pytest.raises(StopIteration):
        evaluate.evaluate_population(trainer.cfg, trainer, None, evaluate.EvalSettings(steps=4, burn_in=0))
    with pytest.raises(StopIteration):
        evaluate.population_utility(trainer, evaluate.EvalSettings(steps=4, burn_in=0))
    for name in ("play", "_step_sums"):
        np.testing.assert_array_equal(seen[name], (np.arange(N) // trainer.run_length) % PL, err_msg=name)
    # Cross-play: row r of a side (agent 2r or 2r + 1) goes to the player of its agent.
    half = evaluate.crossplay_run(trainer, "run")
    assert half == trainer.run_length // 2
    np.testing.assert_array_equal(agent_players(N // 2, PL, half), trainer.player_of[0::2])
    np.testing.assert_array_equal(agent_players(N // 2, PL, half), trainer.player_of[1::2])
    with pytest.raises(ConfigError, match="odd"):
        evaluate.crossplay_run(types.SimpleNamespace(run_length=3), "run")
    assert evaluate.crossplay_run(types.SimpleNamespace(run_length=1), "run") == 1


# ---- the social component -------------------------------------------------------------------


def test_social_component_pays_the_market_mean():
    """Two markets of four agents: each agent is paid its own market's mean utility."""
    u = jnp.asarray([1.0, 2.0, 3.0, 6.0, -1.0, 0.0, 1.0, 4.0])
    state = types.SimpleNamespace(price=jnp.zeros((2, 5), jnp.int32))
    step = rw.StepData({"utility": u}, state, state, {})
    out = rw.agent_components(("social",), step)["social"]
    np.testing.assert_allclose(np.asarray(out), [3.0] * 4 + [1.0] * 4, rtol=1e-6)
    assert rw.REWARD_COMPONENTS["social"].level == "agent" and rw.REWARD_COMPONENTS["social"].default == (0.0, 0.0)
    # Its weight is a per-member range like every component's (a social value orientation).
    c = load_run_config(CONFIGS / "tiny.yaml", ["train.variants.rewards.social=[0.1, 0.5]"])
    assert c.train.variants.rewards["social"] == (0.1, 0.5)
    with pytest.raises(ConfigError, match=r"train\.variants\.rewards\.social.*lo > hi"):
        load_run_config(CONFIGS / "tiny.yaml", ["train.variants.rewards.social=[0.5, 0.1]"])


# ---- config refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,match", [
    (["train.layout=towns"], r"train\.layout.*mixed.*villages"),
    (["train.layout=villages", "train.village_players=3"], r"train\.village_players=3.*divide.*= 64"),
    (["train.layout=villages", "train.village_players=8"], r"train\.village_players=8.*at most.*4 players"),
    (["train.layout=villages", "train.members=16"],
     r"train\.layout=villages.*num_markets=4.*village_players=2.*16 players"),
    (["train.layout=villages", "train.village_players=0"], r"train\.village_players"),
])
def test_config_refuses_bad_layouts(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_run_config(CONFIGS / "tiny.yaml", overrides)


def test_villages_lifts_the_mixed_divisibility():
    """8 players do not divide 12 agents per market (mixed refuses) but villages of 2 do;
    a bad layout is a usage error at the command line (exit 2)."""
    base = ["economy.num_agents=48", "train.members=8"]
    with pytest.raises(ConfigError, match=r"train\.members=8.*agents per market"):
        load_run_config(CONFIGS / "tiny.yaml", base)
    c = load_run_config(CONFIGS / "tiny.yaml", base + ["train.layout=villages"])
    assert c.train.run_length(c.economy.agents_per_market) == 6
    from selfplay.cli import main

    assert main(["train", str(CONFIGS / "tiny.yaml"), "train.layout=towns"]) == 2


# ---- training ---------------------------------------------------------------------------------


def test_villages_training_smoke(trainer):
    """Two updates under villages with market_welfare fitness: finite, the members' fitness
    differs between villages and ties within one, it is the presence-weighted market utility,
    and it equals each member's mean ``social`` component (its agents' market means, regrouped
    by the rollout's map: presence and to_members must agree; the component is computed and
    logged at weight 0 too)."""
    ts = trainer.init(jax.random.key(3))
    for _ in range(2):
        ts, m = trainer.update(ts)
        m = jax.device_get(m)
        assert not any(np.asarray(v).any() for v in m["nonfinite"].values())
        fit = np.asarray(m["fitness_now"], np.float64)
        np.testing.assert_allclose(fit, trainer.presence @ np.asarray(m["market_utility"], np.float64), rtol=1e-5)
        np.testing.assert_allclose(fit, np.asarray(m["social"], np.float64), rtol=1e-4, atol=1e-6)
        assert fit[0] == pytest.approx(fit[1], rel=1e-5) and fit[2] == pytest.approx(fit[3], rel=1e-5)
        assert abs(fit[0] - fit[2]) > 1e-6


def test_niche_curriculum_holds_roles_and_hands_them_back():
    """``train.curriculum``: at the first update every slot (fraction 1) works its role, the
    roles per market follow the shares within one agent; the held set shrinks linearly and
    only shrinks (a slot once released stays released); none is held after ``updates``;
    a share list of the wrong length is refused naming the key."""
    shares = [0.3, 0.2, 0.1, 0.05, 0.2, 0.1, 0.05]
    over = [f"train.curriculum.shares={shares}", "train.curriculum.fraction=1.0", "train.curriculum.updates=10"]
    cfg = load_run_config(CONFIGS / "tiny.yaml", over)
    tr = Trainer(cfg)
    ts = jax.eval_shape(tr.init_state, jax.random.key(0))  # only ts.update is read
    held_at = lambda u: tr._curriculum(ts.replace(update=jnp.asarray(u, jnp.int32)))  # noqa: E731
    held, roles = held_at(0)
    assert bool(jnp.all(held))
    n, m = cfg.economy.num_agents, cfg.economy.num_markets
    counts = np.stack([np.bincount(np.asarray(roles).reshape(m, -1)[k], minlength=7) for k in range(m)])
    assert np.all(np.abs(counts - np.asarray(shares) * (n // m)) < 1.0)
    prev = np.asarray(held)
    for u in (2, 5, 9):
        h = np.asarray(held_at(u)[0])
        assert abs(h.mean() - (1 - u / 10)) < 0.1 and not np.any(h & ~prev)
        prev = h
    assert not np.any(np.asarray(held_at(10)[0])) and not np.any(np.asarray(held_at(50)[0]))
    assert Trainer(load_run_config(CONFIGS / "tiny.yaml"))._curriculum(ts) == (None, None)
    with pytest.raises(ConfigError, match="train.curriculum.shares has 2 entries"):
        load_run_config(CONFIGS / "tiny.yaml", ["train.curriculum.shares=[0.5, 0.5]", "train.curriculum.updates=5"])


def test_niche_mix_bonus_needs_the_traced_loss_path():
    """``train.niche_mix_coef`` takes the mix's entropy from the niche logits, which only the
    traced loss path forms: with the fused path the config stops, naming both keys."""
    with pytest.raises(ConfigError, match=r"train.niche_mix_coef > 0 needs train.loss_path=traced"):
        load_run_config(CONFIGS / "tiny.yaml", ["train.niche_mix_coef=0.5"])
    cfg = load_run_config(CONFIGS / "tiny.yaml", ["train.niche_mix_coef=0.5", "train.loss_path=traced"])
    assert cfg.train.niche_mix_coef == 0.5


def test_niche_tenure_in_the_trainer_records_the_worked_niche():
    """Under ``economy.niche_tenure`` (4, scripted orders) the trainer's rollout records the
    niche each agent worked (``Transition.niche``: the draw at a renewal, else the niche it
    held), flags the renewals (``decides``), and counts the worked niche in its niche
    statistics. Catches: recording or counting the drawn niche (most draws are overridden),
    renewal flags out of step with the economy's lock."""
    cfg = load_run_config(CONFIGS / "tiny.yaml", ["train.members=2", "train.orders=scripted",
                                                  "economy.niche_tenure=4", "train.rollout_steps=6"])
    tr = Trainer(cfg)
    ts = tr.init(jax.random.key(0))
    _, _, _, traj, stats, _, _ = jax.device_get(jax.jit(lambda s: tr._rollout(s, jax.random.key(1)))(ts))
    worked, drawn, decides = np.asarray(traj.niche), np.asarray(traj.actions["niche"]), np.asarray(traj.decides)
    J = tr.env.num_niches
    assert decides[0].all() and 0 < decides[1:].mean() < 0.5
    np.testing.assert_array_equal(worked[decides], drawn[decides])
    for t in range(1, worked.shape[0]):
        np.testing.assert_array_equal(worked[t][~decides[t]], worked[t - 1][~decides[t]], err_msg=f"step {t}")
    assert (worked[1:] != drawn[1:]).mean() > 0.3  # the test has power: most later draws were overridden
    counts = np.stack([[np.bincount(worked[t, p], minlength=J + 1) for p in range(worked.shape[1])]
                       for t in range(worked.shape[0])])
    np.testing.assert_array_equal(np.asarray(stats["niche_counts"]), counts)
