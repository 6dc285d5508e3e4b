"""A population trained over a distribution of generated catalogues (economy.catalogues)
and evaluated on catalogues it never saw (agora eval --catalogues).

Realistic bugs these catch: a held-out catalogue that is in fact a training one (seed sets
not disjoint, or the wrong set played), every catalogue evaluated on the first one's
worlds or catalogue, the frontier of the template economy used for every catalogue, niche
shares of padded slots counted in the divergence from the frontier, a trained population
that plays padded niches or cannot act in an unseen catalogue."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from analysis.catalogue import catalogue_configs, economy_for
from conftest import subprocess_env
from economy import ConfigError
from selfplay.config import load_run_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny_catalogues.yaml"
UPDATES = 30
SETTINGS = dict(worlds=4, steps=40, burn_in=10)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from selfplay.run import train_run

    cfg = load_run_config(CONFIG, [f"train.updates={UPDATES}"])
    run_dir = tmp_path_factory.mktemp("catalogues") / "run"
    train_run(cfg, run_dir, progress=False)
    return cfg, run_dir


def test_training_and_held_out_catalogues_are_disjoint_and_fit_one_economy(trained):
    cfg, _ = trained
    train, held = catalogue_configs(cfg.economy, "train"), catalogue_configs(cfg.economy, "held_out")
    assert len(train) == 3 and len(held) == 2
    dump = lambda c: json.dumps(c.model_dump(mode="json", include={"goods", "niches"}), sort_keys=True)  # noqa: E731
    assert not {dump(c) for c in train} & {dump(c) for c in held}
    env = economy_for(cfg.economy)
    assert env.padded and len(env.catalogue_configs) == 3
    for c in train + held:  # every catalogue fits the spec's padded sizes
        assert c.num_goods <= env.num_goods and c.num_niches <= env.num_niches
    with pytest.raises(ConfigError, match="held-out catalogues must be unseen"):
        load_run_config(CONFIG, ["economy.catalogues.train=[0, 1]", "economy.catalogues.held_out=[1]"])
    with pytest.raises(ConfigError, match="train.network.kind=entity"):
        load_run_config(CONFIG, ["train.network.kind=mlp"])


def test_a_trained_population_beats_random_play_on_every_held_out_catalogue(trained):
    """Per held-out catalogue, on the same worlds and keys: the trained population's utility
    (so its efficiency: one frontier per catalogue divides both) above random play's by a
    one-sided paired t-test at 5 % over the worlds."""
    from selfplay.evaluate import EvalSettings, evaluate_catalogues

    _, run_dir = trained
    r = evaluate_catalogues(run_dir, EvalSettings(**SETTINGS), "held_out", frontier=None, write=False)
    per = r["sets"]["held_out"]["per_catalogue"]
    assert list(per) == ["1000000", "1000001"]
    held = catalogue_configs(load_run_config(CONFIG).economy, "held_out")
    for (seed, p), ck in zip(per.items(), held):
        assert p["niches"] == [*ck.niche_names, "rest"]
        t = np.asarray(p["policies"]["trained"]["utility_worlds"])
        rnd = np.asarray(p["policies"]["random"]["utility_worlds"])
        assert len(t) == SETTINGS["worlds"]
        d = t - rnd
        se = d.std(ddof=1) / np.sqrt(len(d))
        assert d.mean() > stats.t.ppf(0.95, len(d) - 1) * se, (seed, d.mean(), se)
        shares = p["policies"]["trained"]["niche_shares"]
        assert len(shares) == ck.num_niches + 1 and sum(shares) == pytest.approx(1.0)


def test_cli_eval_catalogues_reports_efficiency_against_each_catalogues_frontier(trained, tmp_path):
    _, run_dir = trained
    # the suite's compiler settings and compilation cache (conftest.subprocess_env): the child
    # compiles about 200 programs (2 catalogues' frontiers, 3 policies), 80 s with LLVM's optimisation on
    env = subprocess_env(AGORA_FRONTIER_CACHE=str(tmp_path / "frontier"))
    cmd = [sys.executable, "-m", "selfplay.cli", "eval", str(run_dir), "--catalogues", "held_out", "--worlds", "2",
           "--steps", "20", "--burn-in", "5", "--generations", "1", "--population", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "held_out catalogues (2)" in res.stdout
    out = json.loads((Path(run_dir) / "eval_catalogues_held_out.json").read_text())
    fronts = []
    for p in out["sets"]["held_out"]["per_catalogue"].values():
        mu = p["frontier"]["market"]["utility"]
        fronts.append(mu)
        for name in ("trained", "scripted", "random"):
            m = p["policies"][name]
            assert m["efficiency"] == pytest.approx(m["utility"] / mu, rel=1e-12)
            assert 0.0 <= m["niche_js_to_frontier"] <= 1.0
        assert 1 <= p["frontier_active_niches"] <= len(p["niches"]) - 1
    assert fronts[0] != fronts[1]  # each catalogue its own frontier
    mean = out["sets"]["held_out"]["mean"]["trained"]
    effs = [p["policies"]["trained"]["efficiency"] for p in out["sets"]["held_out"]["per_catalogue"].values()]
    assert mean["efficiency"] == pytest.approx(np.mean(effs))
    # --catalogues with --against: refused, exit 2
    one = subprocess.run([sys.executable, "-m", "selfplay.cli", "eval", str(run_dir), "--catalogues", "held_out",
                          "--against", "scripted"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert one.returncode == 2 and "--catalogues and --against" in one.stderr
