"""The welfare frontier (``agora frontier``, analysis/frontier.py): the planner's first-best
against a closed form, the market frontier against the scripted baseline on the same worlds
and keys, the cache, the distance metrics and bad input.

One market frontier of the tiny economy (the smoke study's evaluation: 2 worlds x 50 steps,
burn-in 12, and its search budget) serves the module, so its program compiles once and is
shared with tests/test_study.py through the persistent compilation cache.
"""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
import yaml
from scipy.spatial.distance import jensenshannon

import economy
from agents.scripted import scripted_actions
from analysis import frontier as fmod
from analysis.frontier import FrontierSettings, assign_niches, distance, first_best, frontier, js_bits
from selfplay.cli import EXIT_OK, EXIT_USAGE, main
from selfplay.evaluate import EvalSettings, evaluate_baseline, play
from tests.conftest import CONFIGS

WORLDS, STEPS, BURN = 2, 50, 12  # configs/studies/smoke.yaml's evaluation
SMOKE_BUDGET = FrontierSettings(**yaml.safe_load((CONFIGS / "studies" / "smoke.yaml").read_text())["frontier"])


@pytest.fixture(scope="module")
def tiny_frontier(tiny_cfg):
    return frontier(tiny_cfg, WORLDS, STEPS, BURN, settings=SMOKE_BUDGET)


# ---- first-best ----------------------------------------------------------------------------
def _two_niche_cfg(**world) -> economy.EconomyConfig:
    return economy.EconomyConfig.model_validate({
        "num_agents": 64, "num_markets": 4, "episode_length": 20, "resources": ["field", "sea"],
        "goods": [{"name": "a", "utility": 0.6, "consume": 0.5, "perish": 0.1, "base_price": 10},
                  {"name": "b", "utility": 0.4, "consume": 0.3, "perish": 0.0, "base_price": 10}],
        "niches": [{"name": "pa", "outputs": {"a": 1}, "labour": 2.0, "affinity": "field"},
                   {"name": "pb", "outputs": {"b": 2}, "labour": 3.0, "affinity": "sea"}],
        "world": world,
    })


def test_first_best_matches_the_closed_form_of_two_goods_and_two_niches():
    """Two independent producers: per agent-step the planner's market eats
    ``e_a = k_a x`` and ``e_b = k_b (1 - x)`` with ``k_g = c_g/(c_g + p_g - c_g p_g) x labour x
    richness x output``; the optimum of ``w_a log(1 + e_a) + w_b log(1 + e_b)`` is
    ``x* = (w_a k_a (1 + k_b) - w_b k_b) / (k_a k_b (w_a + w_b))`` (clipped to [0, 1]).
    Worlds with spread richness, jittered labour and tastes: every market has its own."""
    cfg = _two_niche_cfg(richness_sigma=0.7, recipe_jitter=0.3)
    env = economy.Economy(cfg)
    fb = first_best(cfg, worlds=2)
    us, xs = [], []
    for world, _ in economy.eval_keys(env, 2):
        _, s = env.reset(world)
        w = np.asarray(s.preferences, np.float64).reshape(4, 16, 2).mean(1)
        rich, lab = np.asarray(s.richness, np.float64), np.asarray(s.labour, np.float64)
        frac = np.array([0.5 / (0.5 + 0.1 - 0.05), 1.0])
        ka = frac[0] * lab[0] * rich[:, 0] * 1
        kb = frac[1] * lab[1] * rich[:, 1] * 2
        x = np.clip((w[:, 0] * ka * (1 + kb) - w[:, 1] * kb) / (ka * kb * w.sum(1)), 0, 1)
        us.append(w[:, 0] * np.log1p(ka * x) + w[:, 1] * np.log1p(kb * (1 - x)))
        xs.append(x)
    xs = np.concatenate(xs)
    assert 0.01 < xs.min() and xs.max() < 0.99  # interior optima: the test checks the first-order condition
    np.testing.assert_allclose(np.asarray(fb["per_market"])[:, 0], xs, atol=1e-3)
    assert fb["utility"] == pytest.approx(float(np.mean(np.concatenate(us))), abs=1e-4)
    assert fb["project_multiplier"] == 1.0 and fb["unproducible"] == []


def test_first_best_of_a_chain_feeds_the_processor_exactly():
    """A farmer (2 grain per unit) and a baker (2 grain -> 1 bread); only bread is eaten.
    At the optimum the baker uses all the grain: ``x_f L_f r 2 = x_b L_b 2``, so
    ``x_f = L_b / (L_f r + L_b)``, whatever the tastes (one consumer good)."""
    cfg = economy.EconomyConfig.model_validate({
        "num_agents": 64, "num_markets": 4, "resources": ["land"],
        "goods": [{"name": "grain", "utility": 0.0, "base_price": 5},
                  {"name": "bread", "utility": 1.0, "consume": 0.4, "perish": 0.2, "base_price": 20}],
        "niches": [{"name": "farmer", "outputs": {"grain": 2}, "labour": 3.0, "affinity": "land"},
                   {"name": "baker", "inputs": {"grain": 2}, "outputs": {"bread": 1}, "labour": 2.0}],
    })
    env = economy.Economy(cfg)
    fb = first_best(cfg, worlds=1)
    _, s = env.reset(economy.eval_keys(env, 1)[0][0])
    lab, rich = np.asarray(s.labour, np.float64), np.asarray(s.richness, np.float64)[:, 0]
    xf = lab[1] / (lab[0] * rich + lab[1])
    np.testing.assert_allclose(np.asarray(fb["per_market"])[:, 0], xf, atol=1e-3)
    bread = (1 - xf) * lab[1] * 0.4 / (0.4 + 0.2 - 0.08)
    assert fb["utility"] == pytest.approx(float(np.mean(np.log1p(bread))), abs=1e-4)


def test_restricting_niches_never_raises_the_optimum(tiny_cfg, tiny_frontier):
    """Nested subsets of the default catalogue: each optimum is at most its superset's, and
    niches left out get no labour."""
    values = []
    for only in (None, ["farmer", "fisher", "woodcutter", "baker"], ["farmer", "fisher", "baker"], ["farmer", "fisher"]):
        fb = first_best(tiny_cfg, WORLDS, only=only, settings=SMOKE_BUDGET)
        if only:
            out = [s for n, s in zip(tiny_cfg.niche_names, fb["shares"]) if n not in only]
            assert max(out) == 0.0
        values.append(fb["utility"])
    assert all(a >= b - 1e-6 for a, b in zip(values, values[1:])), values
    assert values[0] > values[-1]  # the full catalogue is worth more than two food niches
    assert values[0] == pytest.approx(tiny_frontier["first_best"]["utility"], abs=1e-9)


# ---- market frontier --------------------------------------------------------------------------
def test_market_frontier_lies_between_the_scripted_baseline_and_the_first_best(tiny_env, tiny_frontier):
    """On the same held-out worlds and keys: scripted baseline + standard error <= market
    frontier <= first-best; the shares sum to 1 and the project stock is non-negative."""
    scripted = evaluate_baseline(tiny_env, "scripted", EvalSettings(WORLDS, STEPS, BURN))
    mf, fb = tiny_frontier["market"], tiny_frontier["first_best"]
    assert mf["utility"] - mf["stderr"] > scripted["utility"], (mf["utility"], mf["stderr"], scripted["utility"])
    assert mf["utility"] < fb["utility"]
    assert sum(mf["shares"]) == pytest.approx(1.0) and mf["project_stock"] >= 0
    assert mf["evaluations"] == SMOKE_BUDGET.population * SMOKE_BUDGET.generations
    assert mf["history"] == sorted(mf["history"])  # the best so far never falls


def test_market_frontier_replays_as_agora_eval_plays(tiny_env, tiny_frontier):
    """The frontier's shares played by the evaluation's own loop (selfplay.evaluate.play:
    its worlds, keys, steps and burn-in) give the frontier's per-world utilities."""
    shares = np.asarray(tiny_frontier["market"]["shares"], np.float32)
    niche = np.tile(np.asarray(assign_niches(shares, tiny_env.cfg.agents_per_market)), tiny_env.cfg.num_markets)
    policy = functools.partial(scripted_actions, tiny_env, niche=niche)
    per_world, _ = play(tiny_env, policy, np.zeros(tiny_env.cfg.num_agents, np.int64), 1,
                        EvalSettings(WORLDS, STEPS, BURN), 0)
    np.testing.assert_allclose([w["utility"] for w in per_world], tiny_frontier["market"]["per_world"], rtol=1e-5)
    work = np.mean([w["niche_shares"] for w in per_world], 0)
    np.testing.assert_allclose(work[:-1], shares, atol=1.0 / tiny_env.cfg.agents_per_market)


@pytest.mark.parametrize("shares", [[0.5, 0.5], [0.3, 0.2, 0.5], [0.01, 0.02, 0.97], [1.0, 0.0, 0.0]])
def test_assign_niches_gives_each_niche_its_share_within_one_agent(shares):
    for b in (7, 64):
        niche = np.asarray(assign_niches(np.asarray(shares, np.float32), b))
        counts = np.bincount(niche, minlength=len(shares))
        assert counts.sum() == b and np.all(np.abs(counts - np.asarray(shares) * b) < 1.0)
        assert np.all(np.diff(niche) >= 0)  # contiguous blocks, in niche order


# ---- cache ------------------------------------------------------------------------------------
def test_the_cache_is_read_back_and_a_changed_catalogue_recomputes(tiny_cfg, tiny_frontier, monkeypatch):
    calls = []

    def fake_first_best(cfg, *a, **k):
        calls.append("first_best")
        return {"utility": 1.0, "shares": [1.0] + [0.0] * (cfg.num_niches - 1), "project_multiplier": 1.0}

    def fake_market(cfg, *a, **k):
        calls.append("market")
        return {"utility": 0.5, "stderr": 0.0, "shares": [1.0] + [0.0] * (cfg.num_niches - 1), "evaluations": 1}

    monkeypatch.setattr(fmod, "first_best", fake_first_best)
    monkeypatch.setattr(fmod, "market_frontier", fake_market)
    again = frontier(tiny_cfg, WORLDS, STEPS, BURN, settings=SMOKE_BUDGET)
    assert again["cached"] and calls == [] and again["market"] == tiny_frontier["market"]
    changed = tiny_cfg.model_copy(update={"project": tiny_cfg.project.model_copy(update={"gain": 0.9})})
    fresh = frontier(changed, WORLDS, STEPS, BURN, settings=SMOKE_BUDGET)
    assert not fresh["cached"] and calls == ["first_best", "market"] and fresh["market"]["utility"] == 0.5
    assert frontier(changed, WORLDS, STEPS, BURN, settings=SMOKE_BUDGET)["cached"] and len(calls) == 2
    # other evaluation settings or another budget are other entries; a damaged entry is recomputed
    assert not frontier(changed, WORLDS, STEPS, BURN + 1, settings=SMOKE_BUDGET)["cached"]
    path = fmod.cache_dir() / f"{fresh['key']}.json"
    path.write_text("{not json")
    assert not frontier(changed, WORLDS, STEPS, BURN, settings=SMOKE_BUDGET)["cached"] and len(calls) == 6


# ---- distance to the frontier -------------------------------------------------------------------
def test_distance_metrics_against_closed_forms():
    fr = {"market": {"utility": 0.5, "shares": [0.5, 0.5, 0.0]}, "first_best": {"utility": 0.8}}
    d = distance({"utility": 0.4, "niche_shares": [0.25, 0.25, 0.0, 0.5]}, fr)  # resting left out
    assert d == pytest.approx({"frontier_utility": 0.5, "frontier_first_best": 0.8, "efficiency": 0.8,
                               "efficiency_first_best": 0.5, "niche_js_to_frontier": 0.0})
    d = distance({"utility": 0.4, "niche_shares": [0.0, 0.0, 0.6, 0.4]}, fr)
    assert d["niche_js_to_frontier"] == pytest.approx(1.0)  # disjoint supports: 1 bit
    p, q = [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]
    assert js_bits(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-9)
    assert distance({"utility": 0.4, "niche_shares": [1, 0, 0, 0]}, None) == dict.fromkeys(fmod.DISTANCE_METRICS)


# ---- command line -------------------------------------------------------------------------------
def test_agora_frontier_prints_and_writes_json(tiny_frontier, tmp_path, capsys):
    out = tmp_path / "f.json"
    rc = main(["frontier", str(CONFIGS / "tiny.yaml"), f"--worlds={WORLDS}", f"--steps={STEPS}", f"--burn-in={BURN}",
               f"--population={SMOKE_BUDGET.population}", f"--generations={SMOKE_BUDGET.generations}", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == EXIT_OK
    saved = json.loads(out.read_text())
    assert saved["market"]["utility"] == tiny_frontier["market"]["utility"]  # from the cache: same numbers
    assert "(from the cache)" in text and "first-best" in text and "farmer" in text


def _bad_catalogue(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "num_agents": 64, "num_markets": 4,
        "goods": [{"name": "wool", "utility": 0.0}, {"name": "cloth", "utility": 1.0}],
        "niches": [{"name": "weaver", "inputs": {"wool": 2}, "outputs": {"cloth": 1}}],
    }))
    return str(path)


@pytest.mark.parametrize("args, words", [
    (lambda t: [str(CONFIGS / "tiny.yaml"), "--only", "farmer,plumber"], ["--only", "'plumber'", "unknown niche"]),
    (lambda t: [str(CONFIGS / "tiny.yaml"), "--only", "smith"], ["smith needs", "ore", "wood"]),
    (_bad_catalogue, None),
    (lambda t: [str(CONFIGS / "tiny.yaml"), "--population=1"], ["--population", "greater than or equal to 2"]),
    (lambda t: [str(CONFIGS / "tiny.yaml"), "economy.project.gian=1"], ["project.gian"]),
])
def test_agora_frontier_bad_input_exits_2_naming_it(args, words, tmp_path, capsys):
    argv = args(tmp_path)
    argv = [argv] if isinstance(argv, str) else argv
    out = tmp_path / "out.json"
    assert main(["frontier", *argv, "--out", str(out)]) == EXIT_USAGE
    err = capsys.readouterr().err
    for w in words or ["weaver needs wool", "no niche makes", "cloth"]:
        assert w in err, err
    assert not out.exists()
