"""``selfplay.evaluate`` on untrained populations: the metrics against closed forms and
hand computations, ``agora eval``'s plumbing (checkpoint choice, greedy play, baselines,
diversity, lineage, the file it writes) and cross-play's bookkeeping.

The run directories here are written without training (a population at initialisation,
and a second checkpoint whose parameters are all zero, so every member plays uniformly
and greedy play puts every agent in niche 0): fast enough to be the mutation tests of
the module (tools/mutants.py), and exact where a trained run would only be plausible.
tests/test_study.py evaluates trained runs of the smoke study end to end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from economy import ConfigError
from selfplay import evaluate
from selfplay.evaluate import (
    METRICS,
    EvalSettings,
    NotARunError,
    _largest_share,
    _mi_bits,
    _step_sums,
    crossplay,
    crossplay_run,
    economy_frontier,
    evaluate_baseline,
    evaluate_run,
    format_eval_table,
    load_run,
    mean_metrics,
    play,
    population_utility,
    with_distance,
    world_metrics,
)
from tests.conftest import CONFIGS

# The smoke study's settings (configs/studies/smoke.yaml): the same programs as tests/test_study.py.
OVERRIDES = ["train.members=4", "train.updates=6", "train.rollout_steps=16", "train.pbt.interval=3",
             "train.analysis.every=3", "train.checkpoint_every=3"]
SETTINGS = EvalSettings(worlds=2, steps=12, burn_in=3)
FOUNDERS = [0, 0, 0, 2]  # the uniform checkpoint's lineages: three slots descend from member 0


def _config(*extra: str):
    from selfplay.config import load_run_config

    return load_run_config(CONFIGS / "tiny.yaml", OVERRIDES + list(extra))


def _write_run(run_dir: Path, seed: int) -> None:
    """A run directory of ``seed``: update 0 is the population at initialisation, update 1
    the same with every parameter zero and the lineages of :data:`FOUNDERS`."""
    from selfplay.checkpoint import Checkpoints
    from selfplay.run import prepare_run_dir
    from selfplay.train import Trainer

    cfg = _config(f"train.seed={seed}")
    ts = Trainer(cfg).init(jax.random.key(seed))
    uniform = ts.replace(params=jax.tree.map(jnp.zeros_like, ts.params), update=ts.update + 1,
                         pbt=ts.pbt._replace(founder=jnp.asarray(FOUNDERS, jnp.int32)))
    prepare_run_dir(cfg, run_dir, resume=False)
    ckpt = Checkpoints(run_dir / "checkpoints", 10)
    try:
        ckpt.save(ts)
        ckpt.save(uniform)
    finally:
        ckpt.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("eval_runs")
    for seed in (0, 1):
        _write_run(d / f"seed_{seed}", seed)
    return {"a": d / "seed_0", "b": d / "seed_1"}


@pytest.fixture(scope="module")
def evaluated(runs) -> dict:
    """``agora eval`` of run a at its initial checkpoint, with the baselines, written."""
    return evaluate_run(runs["a"], SETTINGS, update=0, frontier=None)


# ---- settings -----------------------------------------------------------------------------------
def test_settings_default_to_the_episode_and_refuse_what_cannot_be_measured():
    cfg = _config()
    assert cfg.economy.episode_length == 50
    assert EvalSettings().resolved(cfg) == EvalSettings(8, 50, 12, False)  # eight held-out worlds
    assert EvalSettings(worlds=3).resolved(cfg) == EvalSettings(3, 50, 12, False)
    assert EvalSettings(steps=10).resolved(cfg).burn_in == 2  # a quarter of the steps, rounded down
    assert EvalSettings(steps=10, burn_in=0).resolved(cfg).burn_in == 0  # no burn-in is a choice, not a default
    assert EvalSettings(steps=10, burn_in=9, greedy=True).resolved(cfg) == EvalSettings(8, 10, 9, True)
    assert EvalSettings(2, 7, 1, True).record() == {"worlds": 2, "steps": 7, "burn_in": 1, "greedy": True}
    assert EvalSettings(steps=1, burn_in=0).resolved(cfg) == EvalSettings(8, 1, 0, False)  # one measured step
    for bad, key in [(dict(worlds=0), "--worlds=0"), (dict(steps=10, burn_in=10), "--burn-in=10"),
                     (dict(steps=10, burn_in=-1), "--burn-in=-1")]:
        with pytest.raises(ConfigError, match=key):
            EvalSettings(**bad).resolved(cfg)
    with pytest.raises(ConfigError, match="--burn-in=0"):
        EvalSettings(steps=-1, burn_in=0).resolved(cfg)  # no steps to measure


def test_settings_are_immutable_values():
    """``EvalSettings()`` is the default argument of ``evaluate_run`` and ``crossplay``: one
    shared instance, so it must not be mutable; and equal settings hash alike (usable as keys)."""
    s = EvalSettings(worlds=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.worlds = 3
    assert hash(s) == hash(EvalSettings(worlds=2)) and len({s, EvalSettings(worlds=2)}) == 1


# ---- metrics against closed forms ---------------------------------------------------------------
def test_mutual_information_of_member_and_niche_closed_forms():
    P = 4
    assert _mi_bits(np.eye(P) * 5) == pytest.approx(math.log2(P))  # each member its own niche
    assert _mi_bits(np.outer([1, 2, 3], [4, 1, 2]).astype(float)) == pytest.approx(0.0, abs=1e-12)  # independent
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty table is no 0 / 0 (a world where nobody worked)
        assert _mi_bits(np.zeros((3, 2))) == 0.0  # nobody worked
    # I is a function of the normalised table: a joint distribution (total 1, or below) gives the same bits
    assert _mi_bits(np.eye(2) / 2) == pytest.approx(1.0) and _mi_bits(np.eye(P) / 8) == pytest.approx(math.log2(P))
    t = np.asarray([[3.0, 1.0], [1.0, 3.0]])  # a binary symmetric channel: 1 - H(1/4)
    h = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert _mi_bits(t) == pytest.approx(1 - h)
    assert _mi_bits(np.asarray([[2.0, 0.0], [1.0, 1.0]])) == pytest.approx(
        sum(p * math.log2(p / (pm * pj)) for p, pm, pj in [(.5, .5, .75), (.25, .5, .75), (.25, .5, .25)]))


def test_largest_share_is_of_the_whole_economy_and_null_when_empty():
    assert _largest_share(np.asarray([3.0, 1.0, 6.0]), members=2) == pytest.approx(0.3)  # player 2 is league
    assert _largest_share(np.asarray([3.0, 5.0, 2.0]), members=2) == pytest.approx(0.5)
    assert _largest_share(np.zeros(3), members=2) is None
    # a total of 1 (or less) is still a total: only 0 has no shares
    assert _largest_share(np.asarray([0.2, 0.3, 0.5]), members=2) == pytest.approx(0.3)
    assert _largest_share(np.asarray([0.1, 0.05, 0.05]), members=2) == pytest.approx(0.5)


def test_step_sums_per_group_against_a_loop():
    """The per-step sums of one step: each group's utility, agent-steps and utility by niche
    worked (``info["niche"]``, not the drawn action, which ``economy.niche_tenure`` may
    override), units of work, the project units paid in (scaled) and the mean project stock."""
    J, G, scale = 2, 2, 0.5
    groups = np.asarray([0, 1, 1, 0, 1])
    info = {"utility": jnp.asarray([1.0, 2.0, 3.0, 4.0, 5.0]), "units": jnp.asarray([1, 0, 2, 3, 0], jnp.int32),
            "collaboration": jnp.asarray([2.0, 0.0, 4.0, 0.0, 0.0]), "project": jnp.asarray([3, 8], jnp.int32)}
    niche = np.asarray([0, 2, 1, 0, 1])  # agent 1 rests (niche J)
    info["niche"] = jnp.asarray(niche)
    drawn = {"niche": jnp.asarray([1, 1, 0, 2, 0])}  # what the agents drew: not what they worked
    got = jax.device_get(_step_sums(groups, G, J, scale)(None, None, info, drawn))
    u, units = np.asarray(info["utility"]), np.asarray(info["units"])
    want_work, want_nu = np.zeros((G, J + 1)), np.zeros((G, J + 1))
    for i, (g, j) in enumerate(zip(groups, niche)):
        want_work[g, j] += 1
        want_nu[g, j] += u[i]
    np.testing.assert_allclose(got["utility"], [u[groups == g].sum() for g in range(G)])
    np.testing.assert_allclose(got["work"], want_work)
    np.testing.assert_allclose(got["niche_utility"], want_nu)
    np.testing.assert_allclose(got["output"], [units[groups == g].sum() for g in range(G)])
    assert float(got["public"]) == pytest.approx(6.0 * scale) and float(got["project"]) == pytest.approx(5.5)


def _gini(x: np.ndarray) -> float:
    """Mean absolute difference over twice the mean (an independent formula)."""
    return float(np.abs(x[:, None] - x[None, :]).mean() / (2 * x.mean()))


def test_world_metrics_against_a_hand_computation():
    """Two members and a league player, 5 steps of which the first 2 are burn-in: every
    metric from the sums by hand."""
    rng = np.random.default_rng(3)
    T, G, J, B = 5, 3, 2, 2
    groups = np.asarray([0, 1, 2, 0, 1, 2, 0])
    n = len(groups)
    work = rng.integers(0, 4, (T, G, J + 1)).astype(float)
    sums = {"utility": rng.random((T, G)), "work": work, "niche_utility": rng.random((T, G, J + 1)),
            "output": rng.random((T, G)) * 10, "public": rng.random(T), "project": rng.random(T) * 9}
    wealth = rng.random(n) * 5
    m = world_metrics(sums, wealth, groups, members=2, burn_in=B)
    w = work[B:].sum(0)
    shares = w.sum(0) / w.sum()
    assert m["utility"] == pytest.approx(sums["utility"][B:].sum() / (n * (T - B)))
    np.testing.assert_allclose(m["niche_shares"], shares)
    p = w.sum(0)[:J] / w.sum(0)[:J].sum()
    assert m["effective_niches"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert m["active_niches"] == (p >= 0.01).sum()
    assert m["project_per_agent_step"] == pytest.approx(sums["public"][B:].sum() / (n * (T - B)))
    assert m["project_stock"] == pytest.approx(sums["project"][B:].mean())
    assert m["gini"] == pytest.approx(_gini(wealth), rel=1e-5)
    assert m["member_niche_mi_bits"] == pytest.approx(_mi_bits(w[:2, :J]))
    out, ut = sums["output"][B:].sum(0), sums["utility"][B:].sum(0)
    wealth_g = np.asarray([wealth[groups == g].sum() for g in range(G)])
    assert m["largest_output_share"] == pytest.approx(out[:2].max() / out.sum())
    assert m["largest_utility_share"] == pytest.approx(ut[:2].max() / ut.sum())
    assert m["largest_wealth_share"] == pytest.approx(wealth_g[:2].max() / wealth_g.sum())
    baseline = world_metrics(sums, wealth, np.zeros(n, np.int64), members=0, burn_in=B)
    assert not {"member_niche_mi_bits", "largest_output_share", "largest_wealth_share"} & set(baseline)


def test_mean_metrics_skip_null_entries_and_null_a_scalar_null_anywhere():
    worlds = [{"utility": 1.0, "shares": [0.5, None, 0.2], "mi": None},
              {"utility": 3.0, "shares": [0.1, None, 0.4], "mi": 2.0},
              {"utility": 5.0, "shares": [0.3, None, None], "mi": 1.0}]
    m = mean_metrics(worlds)
    assert m["utility"] == 3.0 and m["mi"] is None
    assert m["shares"][0] == pytest.approx(0.3) and m["shares"][1] is None and m["shares"][2] == pytest.approx(0.3)


# ---- agora eval ---------------------------------------------------------------------------------
def test_eval_writes_what_it_returns_and_repeats_it_bit_for_bit(runs, evaluated):
    text = (runs["a"] / "eval.json").read_text()
    e = json.loads(text)
    assert e == json.loads(json.dumps(evaluated))
    assert text == json.dumps(evaluated, indent=1)  # one-space indents, like results.json and frontier.json
    assert e["update"] == 0 and (e["worlds"], e["steps"], e["burn_in"], e["greedy"]) == (2, 12, 3, False)
    assert set(e["policies"]) == {"trained", "scripted", "random"} and e["frontier"] is None
    assert e["niche_names"] == ["farmer", "fisher", "woodcutter", "miner", "baker", "smith", "builder"]
    for name, p in e["policies"].items():
        assert list(p) == list(METRICS), name
        assert sum(p["niche_shares"]) == pytest.approx(1.0) and len(p["niche_shares"]) == 8
        assert all(p[k] is None for k in ("efficiency", "frontier_utility", "niche_js_to_frontier")), name
    for k in ("member_niche_mi_bits", "largest_output_share", "largest_lineage_share", "kl_mean"):
        assert e["policies"]["scripted"][k] is None and e["policies"]["random"][k] is None
    t = e["policies"]["trained"]
    assert t["largest_lineage_share"] == 0.25  # every slot its own founder at initialisation
    assert t["kl_mean"] > 0 and t["effective_policies"] > 1  # four independently initialised members
    again = evaluate_run(runs["a"], SETTINGS, update=0, baselines=False, write=False, frontier=None)
    assert again["policies"] == {"trained": evaluated["policies"]["trained"]}


def test_eval_of_uniform_members_closed_forms(runs, evaluated):
    """The latest checkpoint (update 1: all parameters zero): every member plays the same
    uniform policy, so the policies do not diverge (KL 0, one effective policy), the lineage
    share is that of the founders written; greedy play puts every agent in niche 0."""
    latest = evaluate_run(runs["a"], SETTINGS, baselines=False, write=False, frontier=None)
    t = latest["policies"]["trained"]
    assert latest["update"] == 1
    assert t["kl_mean"] == pytest.approx(0.0, abs=1e-7) and t["js_mean"] == pytest.approx(0.0, abs=1e-7)
    assert t["effective_policies"] == pytest.approx(1.0)
    assert t["largest_lineage_share"] == FOUNDERS.count(0) / len(FOUNDERS)
    assert t["utility"] != evaluated["policies"]["trained"]["utility"]  # the checkpoint chosen is the one played
    greedy = evaluate_run(runs["a"], EvalSettings(1, 8, 2, greedy=True), baselines=False, write=False,
                          frontier=None)["policies"]["trained"]
    assert greedy["niche_shares"] == [1.0] + [0.0] * 7
    assert greedy["effective_niches"] == pytest.approx(1.0) and greedy["active_niches"] == 1
    assert greedy["member_niche_mi_bits"] == 0.0 and greedy["largest_output_share"] == pytest.approx(0.25, abs=0.05)


def test_population_utility_is_what_eval_measures(runs, evaluated):
    """The trained utility of ``agora eval`` is benchmarks/time_to_quality.py's measure of the
    same state on the same worlds and keys (one compiled program for every state)."""
    cfg, trainer, ts = load_run(runs["a"], update=0)
    s = SETTINGS.resolved(cfg)
    measure = population_utility(trainer, s)
    assert measure(ts) == pytest.approx(evaluated["policies"]["trained"]["utility"], rel=1e-5)
    _, _, uniform = load_run(runs["a"])
    traces = []
    trace = "/jax/core/compile/jaxpr_trace_duration"
    listener = lambda name, *_, **__: traces.append(name) if name == trace else None  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        other = measure(uniform)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert other != measure(ts)
    assert traces == []  # another state of the same trainer: no new trace, the compiled program is reused


def _sums(rng, T: int, G: int, J: int) -> dict:
    """Per-step sums ``[T, ...]`` as :func:`selfplay.evaluate._step_sums` gives them (random)."""
    return {"utility": rng.random((T, G)), "work": rng.integers(0, 4, (T, G, J + 1)).astype(float),
            "niche_utility": rng.random((T, G, J + 1)), "output": rng.random((T, G)), "public": rng.random(T),
            "project": rng.random(T)}


def test_play_measures_each_world_and_spreads_the_probe_over_every_world(monkeypatch):
    """``play`` on worlds whose final states and sums are given (no rollout): each world's
    metrics from its own sums (after the burn-in) and final wealth; the diversity probe is
    1024 final observations taken with one stride over the worlds in order: every agent
    while they fit, the first 1024 of them when they just overflow, every other agent of
    each of eight worlds of 256 agents; no probe unless asked for."""
    N, D, M, T, J, B = 256, 3, 4, 5, 2, 1
    rng = np.random.default_rng(1)
    played = {}

    def fake_play_worlds(env, policy, groups, num_groups, settings, params=None):
        assert settings is played["settings"]
        yield from played["worlds"]

    monkeypatch.setattr(evaluate, "play_worlds", fake_play_worlds)
    env = SimpleNamespace(observe=lambda state: state.obs)
    groups = np.zeros(N, np.int64)

    def run(W, **kw):
        played["settings"] = EvalSettings(W, T, B)
        played["worlds"] = [
            (SimpleNamespace(goods=np.zeros((N, 2), np.int32), money=rng.integers(0, 9, N).astype(np.int32),
                             price=np.ones((M, 2), np.int32),
                             obs=np.stack([np.full(N, w), np.arange(N), np.full(N, 7)], 1).astype(np.float32)),
             _sums(rng, T, 1, J))
            for w in range(W)]
        per_world, probe = play(env, None, groups, 1, played["settings"], 0, **kw)
        assert len(per_world) == W
        for m, (final, sums) in zip(per_world, played["worlds"]):
            assert m["utility"] == pytest.approx(sums["utility"][B:].sum() / (N * (T - B)))
            assert m["gini"] == pytest.approx(_gini(final.money.astype(float)), rel=1e-5)
        return probe, [final.obs for final, _ in played["worlds"]]

    probe, obs = run(2, probe=True)
    np.testing.assert_array_equal(probe, np.concatenate(obs))  # 512 states: all of them
    probe, obs = run(5, probe=True)
    np.testing.assert_array_equal(probe, np.concatenate(obs)[:1024])  # 1280: the first 1024
    probe, obs = run(8, probe=True)
    assert probe.shape == (1024, D)
    np.testing.assert_array_equal(probe, np.concatenate([o[::2] for o in obs]))  # 2048: every other agent
    assert run(2)[0] is None  # the baselines' play: no probe


def test_scripted_baseline_equals_simulate_on_the_same_world_and_key(evaluated):
    """The evaluation's scripted numbers are those of ``selfplay.simulate.rollout`` (what
    ``agora simulate`` runs) on the same worlds and action keys, averaged over the worlds."""
    from agents.scripted import scripted_actions
    from economy import Economy, eval_keys
    from selfplay.simulate import rollout

    cfg = _config()
    env = Economy(cfg.economy)
    run = jax.jit(functools.partial(rollout, env, functools.partial(scripted_actions, env), steps=SETTINGS.steps))
    utility, shares = [], []
    for world, key in eval_keys(env, SETTINGS.worlds):
        _, state = env.reset(world)
        _, m = run(key, state)
        utility.append(np.mean(np.asarray(m["utility"], np.float64)[SETTINGS.burn_in:]))
        shares.append(np.asarray(m["niche_shares"], np.float64)[SETTINGS.burn_in:].mean(0))
    got = evaluated["policies"]["scripted"]
    assert got["utility"] == pytest.approx(np.mean(utility), rel=1e-5)
    np.testing.assert_allclose(got["niche_shares"], np.mean(shares, 0), rtol=1e-5)
    assert evaluate_baseline(env, "random", SETTINGS.resolved(cfg)) == evaluated["policies"]["random"]


def test_a_directory_without_a_run_or_a_checkpoint_is_refused(tmp_path, runs):
    with pytest.raises(NotARunError, match="needs config.yaml and checkpoints"):
        load_run(tmp_path)
    (tmp_path / "config.yaml").write_text((runs["a"] / "config.yaml").read_text())
    with pytest.raises(NotARunError, match="needs config.yaml and checkpoints"):
        load_run(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(NotARunError, match="no checkpoint yet"):
        load_run(tmp_path)


def test_without_a_frontier_there_is_no_distance():
    cfg = _config()
    assert economy_frontier(cfg, SETTINGS, None) is None
    m = with_distance({"utility": 0.5, "niche_shares": [0.5, 0.5, 0.0]}, None)
    assert m["utility"] == 0.5 and m["efficiency"] is None and m["niche_js_to_frontier"] is None
    fr = {"market": {"utility": 0.8, "shares": [0.5, 0.5]}, "first_best": {"utility": 1.0}}
    assert with_distance({"utility": 0.4, "niche_shares": [0.5, 0.5, 0.0]}, fr)["efficiency"] == pytest.approx(0.5)


# ---- cross-play ---------------------------------------------------------------------------------
def _check_side(x: dict) -> None:
    """A side's books balance: its niche shares sum to one, its utility by niche is null
    exactly where it never worked, and its utility is the shares' mean of utility by niche
    (every agent-step is in exactly one niche or resting)."""
    assert sum(x["niche_shares"]) == pytest.approx(1.0)
    assert all((u is None) == (share == 0) for u, share in zip(x["utility_by_niche"], x["niche_shares"]))
    assert x["utility"] == pytest.approx(sum(u * s for u, s in zip(x["utility_by_niche"], x["niche_shares"]) if u))
    assert x["utility"] == pytest.approx(np.mean(x["utility_steps"]))


def test_crossplay_sides_balance_and_each_plays_its_own_population(runs):
    s = EvalSettings(worlds=1, steps=10, burn_in=2)
    out = crossplay(runs["a"], str(runs["b"]), s)
    assert list(out["sides"]) == [str(runs["a"]), str(runs["b"])]
    assert (out["worlds"], out["steps"], out["burn_in"]) == (1, 10, 2) and out["niche_names"][-1] == "rest"
    a, b = out["sides"].values()
    for x in (a, b):
        _check_side(x)
        assert len(x["utility_steps"]) == 8
    assert a["output_share"] + b["output_share"] == pytest.approx(1.0)
    greedy = crossplay(runs["a"], "scripted", EvalSettings(worlds=1, steps=10, burn_in=2, greedy=True))["sides"]
    assert list(greedy) == [str(runs["a"]), "scripted"]
    mine = greedy[str(runs["a"])]
    assert mine["niche_shares"] == [1.0] + [0.0] * 7  # the latest checkpoint: uniform logits, greedy niche 0
    assert greedy["scripted"]["niche_shares"] != mine["niche_shares"]
    for x in greedy.values():
        _check_side(x)


def test_crossplay_refuses_two_economies_naming_the_key(runs, tmp_path):
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(runs["b"], twin)
    cfg = yaml.safe_load((twin / "config.yaml").read_text())
    cfg["economy"]["project"]["decay"] = 0.1
    (twin / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"differ in economy\.project\.decay"):
        crossplay(runs["a"], str(twin), EvalSettings(worlds=1, steps=4, burn_in=0))


class _Side:
    """A stand-in population for cross-play (no network, no checkpoint): each agent row's
    action is the agent index it observed plus ``tag``; with ``niche_only`` it draws its
    niches only (``train.orders=scripted``) and its :meth:`complete` gives orders of
    ``agent + 10 * tag`` for every agent."""

    def __init__(self, env, players: int, run_length: int, tag: int, niche_only: bool = False):
        self.env, self.num_players, self.run_length = env, players, run_length
        self.tag, self.niche_only = tag, niche_only
        self.seen, self.completed = [], []

    def act_on(self, ts, greedy=False, run=None):
        def act(key, obs):
            self.seen.append(np.asarray(obs))
            a = {"niche": jnp.asarray(obs[:, 1], jnp.int32) + self.tag}
            return a if self.niche_only else {**a, "price": a["niche"]}
        return act

    def complete(self, key, state, actions):
        self.completed.append(np.asarray(actions["niche"]))
        n = self.env.cfg.num_agents
        return {"niche": actions["niche"], "price": jnp.arange(n, dtype=jnp.int32) + 10 * self.tag}


def _fake_crossplay(monkeypatch, n: int, sides: dict, worlds: list[dict]) -> dict:
    """Cross-play with the runs ``sides`` (name -> :class:`_Side` factory of the economy) and
    the per-step sums of ``worlds`` as the played worlds; returns what the fakes saw."""
    cfg = _config()
    env = SimpleNamespace(cfg=SimpleNamespace(num_agents=n, niche_names=["x", "y"]), niche_names=("x", "y"),
                          action_spec={"niche": None, "price": None}, observe=lambda state: state.obs)
    made = {name: make(env) for name, make in sides.items()}
    seen = {"env": env, "sides": made}

    def fake_play_worlds(env_, policy, groups, num_groups, settings, params=None):
        seen["policy"] = policy
        for sums in worlds:
            yield None, sums

    monkeypatch.setattr(evaluate, "load_run", lambda run_dir, update=None: (cfg, made[str(run_dir)], None))
    monkeypatch.setattr(evaluate, "play_worlds", fake_play_worlds)
    monkeypatch.setattr(evaluate, "scripted_actions",
                        lambda env_, key, state: {"niche": jnp.arange(n) + 3000, "price": jnp.arange(n) + 3000})
    return seen


def test_crossplay_gives_each_side_its_own_rows(monkeypatch):
    """A plays the even agent rows on their own observations, B (or the scripted rule) the
    odd ones; a side that draws its niches only has its orders completed for the niches
    both sides drew, and keeps its own rows of them."""
    n, T = 8, 3
    rng = np.random.default_rng(2)
    worlds = [_sums(rng, T, 2, 2)]
    state = SimpleNamespace(obs=np.stack([np.full(n, 5), np.arange(n)], 1).astype(np.float32))
    key = jax.random.key(0)
    i = np.arange(n)
    settings = EvalSettings(worlds=1, steps=T, burn_in=1)

    seen = _fake_crossplay(monkeypatch, n, {"A": lambda e: _Side(e, 2, 1, 1000), "B": lambda e: _Side(e, 4, 1, 2000)},
                           worlds)
    crossplay("A", "B", settings)
    acts = seen["policy"](key, state)
    a, b = seen["sides"]["A"], seen["sides"]["B"]
    np.testing.assert_array_equal(a.seen[-1], state.obs[0::2])
    np.testing.assert_array_equal(b.seen[-1], state.obs[1::2])
    np.testing.assert_array_equal(acts["niche"], i + np.where(i % 2, 2000, 1000))
    np.testing.assert_array_equal(acts["price"], acts["niche"])

    seen = _fake_crossplay(monkeypatch, n, {"A": lambda e: _Side(e, 2, 1, 1000)}, worlds)
    crossplay("A", "scripted", settings)
    acts = seen["policy"](key, state)
    np.testing.assert_array_equal(acts["niche"], i + np.where(i % 2, 3000, 1000))  # the scripted rule's odd rows

    seen = _fake_crossplay(monkeypatch, n, {"A": lambda e: _Side(e, 2, 1, 1000, niche_only=True),
                                           "B": lambda e: _Side(e, 2, 1, 2000, niche_only=True)}, worlds)
    crossplay("A", "B", settings)
    acts = seen["policy"](key, state)
    niche = i + np.where(i % 2, 2000, 1000)
    np.testing.assert_array_equal(acts["niche"], niche)
    np.testing.assert_array_equal(acts["price"], i + np.where(i % 2, 20000, 10000))  # each side's own orders
    for side in seen["sides"].values():
        np.testing.assert_array_equal(side.completed[-1], niche)  # completed for the niches both drew


def test_crossplay_books_against_a_hand_computation(monkeypatch):
    """Each side's utility per agent-step, niche shares, utility by niche worked and share
    of output from given per-step sums, after the burn-in step (8 agents, 4 a side)."""
    burn = [[9, 9, 9], [9, 9, 9]]  # step 0 is burn-in: never counted
    work = np.asarray([burn, [[3, 1, 0], [0, 2, 2]], [[4, 0, 0], [1, 1, 2]]], float)  # [T, side, J+1]
    nu = np.asarray([[[50, 50, 50], [50, 50, 50]], [[1.5, 0.25, 0], [0, 1.0, 0.4]], [[2.0, 0, 0], [0.5, 0.75, 0.2]]])
    sums = {"utility": nu.sum(-1), "work": work, "niche_utility": nu,
            "output": np.asarray([[5.0, 7.0], [1.0, 0], [0, 0]]), "public": np.zeros(3), "project": np.zeros(3)}
    sides = {"A": lambda e: _Side(e, 2, 1, 0), "B": lambda e: _Side(e, 2, 1, 0)}
    _fake_crossplay(monkeypatch, 8, sides, [sums])
    out = crossplay("A", "B", EvalSettings(worlds=1, steps=3, burn_in=1))
    a, b = out["sides"]["A"], out["sides"]["B"]
    assert out["niche_names"] == ["x", "y", "rest"]
    assert a["utility_steps"] == pytest.approx([1.75 / 4, 2.0 / 4]) and a["utility"] == pytest.approx(3.75 / 8)
    assert b["utility_steps"] == pytest.approx([1.4 / 4, 1.45 / 4]) and b["utility"] == pytest.approx(2.85 / 8)
    assert a["niche_shares"] == pytest.approx([7 / 8, 1 / 8, 0])
    assert b["niche_shares"] == pytest.approx([1 / 8, 3 / 8, 4 / 8])
    # one agent-step in a niche is enough to have a utility there; none: null
    assert a["utility_by_niche"][:2] == pytest.approx([3.5 / 7, 0.25]) and a["utility_by_niche"][2] is None
    assert b["utility_by_niche"] == pytest.approx([0.5, 1.75 / 3, 0.6 / 4])
    assert (a["output_share"], b["output_share"]) == (1.0, 0.0)  # the one unit made after the burn-in
    sums["output"][1:] = 0.0  # no output measured: no shares (not 0 / 0)
    _fake_crossplay(monkeypatch, 8, sides, [sums])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = crossplay("A", "B", EvalSettings(worlds=1, steps=3, burn_in=1))
    assert [x["output_share"] for x in out["sides"].values()] == [None, None]


def test_crossplay_refuses_players_that_do_not_divide_a_side(monkeypatch):
    """Each side's players, in their runs, must divide the n / 2 agents of a side (256
    agents: 128): 3 players in runs of 3 (9) do not, nor 8 in runs of 32 (256, which
    divides n but not n / 2); 4 in runs of 16 (64) do."""
    sums = _sums(np.random.default_rng(4), 3, 2, 2)
    s = EvalSettings(worlds=1, steps=3, burn_in=1)
    ok = lambda e: _Side(e, 4, 32, 0)  # noqa: E731
    for players, run_length in [(3, 6), (8, 64)]:  # runs of 3 and of 32
        bad = lambda e: _Side(e, players, run_length, 0)  # noqa: E731
        _fake_crossplay(monkeypatch, 256, {"A": ok, "B": bad}, [sums])
        with pytest.raises(ConfigError, match=f"cross-play: B's {players} players must divide 128 agents$"):
            crossplay("A", "B", s)
        _fake_crossplay(monkeypatch, 256, {"A": bad}, [sums])
        with pytest.raises(ConfigError, match=f"cross-play: A's {players} players must divide 128 agents$"):
            crossplay("A", "scripted", s)
    _fake_crossplay(monkeypatch, 256, {"A": ok, "B": ok}, [sums])
    assert set(crossplay("A", "B", s)["sides"]) == {"A", "B"}
    # an odd number of agents has no two equal sides, even for one player in runs of one
    one = lambda e: _Side(e, 1, 1, 0)  # noqa: E731
    for against in ("B", "scripted"):
        _fake_crossplay(monkeypatch, 255, {"A": one, "B": one}, [sums])
        with pytest.raises(ConfigError, match="cross-play: 255 agents do not split into two equal sides"):
            crossplay("A", against, s)


def test_crossplay_runs_follow_the_training_layout():
    from selfplay.train import Trainer

    assert crossplay_run(Trainer(_config()), "a") == 1  # mixed: each row its own run
    villages = Trainer(_config("train.layout=villages", "train.village_players=2"))
    assert villages.run_length == 32 and crossplay_run(villages, "v") == 16
    assert type(crossplay_run(villages, "v")) is int  # an agent count: to_members reshapes by it
    odd = Trainer(_config("economy.num_agents=48", "train.layout=villages", "train.village_players=4"))
    assert odd.run_length == 3
    with pytest.raises(ConfigError, match="runs of 3 agents"):
        crossplay_run(odd, "odd")


# ---- the table ----------------------------------------------------------------------------------
def test_the_table_names_niches_marks_nulls_and_aligns_columns():
    result = {"policies": {"trained": {"utility": 0.123456, "niche_shares": [0.25, 0.75, 0.0], "gini": None},
                           "scripted": {"utility": 1.5, "niche_shares": None, "gini": 0.2}}}
    lines = format_eval_table(result, ["farmer", "fisher"]).splitlines()
    assert lines[0].split() == ["metric", "trained", "scripted"]
    assert len({len(line) for line in lines}) == 1  # one width for every row
    rows = {line.split("  ")[0].strip(): line.split() for line in lines[1:]}
    assert rows["utility"][-2:] == ["0.1235", "1.5"]
    assert rows["niche_shares farmer"][-2:] == ["0.25", "—"] and rows["niche_shares rest"][-2:] == ["0", "—"]
    assert rows["gini"][-2:] == ["—", "0.2"]
    assert all(line.startswith("metric") or not line.split()[0][0].isspace() for line in lines)
    unnamed = format_eval_table(result, ["farmer"]).splitlines()  # too few names: entries numbered
    assert any(line.startswith("niche_shares 2") for line in unnamed)
    assert len(lines) == 1 + len(METRICS) + 2  # niche_shares takes three rows
