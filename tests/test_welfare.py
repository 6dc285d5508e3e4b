"""The welfare study (configs/studies/welfare.yaml, issue 24): the file loads with every
run it implies, and its smoke version (two of its conditions: the control and the one
with funding, villages and social preferences together, on the tiny preset of the same
catalogue, one seed, two updates) trains, evaluates and aggregates with the frontier of each run's economy.
"""

from __future__ import annotations

import json

import yaml

from selfplay.cli import EXIT_OK, main
from selfplay.study import load_study
from tests.conftest import CONFIGS

WELFARE = CONFIGS / "studies" / "welfare.yaml"
SMOKE_CONDITIONS = ("a_utility", "i_fund_villages_social")


def test_welfare_study_file_loads_every_run():
    study = load_study(WELFARE)
    data = yaml.safe_load(WELFARE.read_text())
    assert len(study.cfg.conditions) >= 8 and study.cfg.seed_list == [0, 1, 2, 3, 4]
    assert len(study.runs) == len(study.cfg.conditions) * 5
    assert any(o == "train.updates=300" for o in data["overrides"])
    assert study.settings.worlds == 8 and study.settings.steps == 100 and study.settings.burn_in == 25
    by_name = {r.condition: r.cfg for r in study.runs}
    assert by_name["f_fund_high"].economy.treasury.tax == 0.05 and by_name["f_fund_high"].economy.treasury.pay == 8
    assert by_name["a_utility"].economy.treasury.tax == 0.0
    assert by_name["g_villages"].train.layout == "villages" and by_name["g_villages"].train.pbt.fitness == "market_welfare"
    assert "shelter" in by_name["a_utility"].economy.good_names  # the default catalogue


def test_welfare_smoke_study_runs(tmp_path):
    data = yaml.safe_load(WELFARE.read_text())
    data["config"] = str(CONFIGS / "tiny_welfare.yaml")
    data["overrides"] = [o for o in data["overrides"] if not o.startswith(("train.updates", "train.checkpoint_every"))]
    data["overrides"] += ["train.members=4", "train.league.size=0", "train.updates=2", "train.rollout_steps=8",
                          "train.pbt.interval=1", "train.checkpoint_every=2", "train.analysis.every=0"]
    data["conditions"] = [c for c in data["conditions"] if c["name"] in SMOKE_CONDITIONS]
    data.update(seeds=1, eval={"worlds": 1, "steps": 20, "burn_in": 5}, frontier={"population": 2, "generations": 1})
    path = tmp_path / "welfare_smoke.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["study", str(path), "--study-dir", str(tmp_path / "out"), "--no-progress"]) == EXIT_OK
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(r["conditions"]) == list(SMOKE_CONDITIONS) and r["missing"] == []
    funded = r["conditions"]["i_fund_villages_social"]["seeds"]["0"]
    plain = r["conditions"]["a_utility"]["seeds"]["0"]
    # each run is measured against the frontier of its own economy: funding changes it
    assert funded["frontier_utility"] != plain["frontier_utility"]
    for c in r["conditions"].values():
        s = c["seeds"]["0"]
        assert s["efficiency"] == s["utility"] / s["frontier_utility"]
    # the scripted baseline plays the funded economies too, against their frontiers
    b = r["baselines"]
    assert set(b) == {"scripted", "random", "scripted (i_fund_villages_social)"}
    assert b["scripted (i_fund_villages_social)"]["frontier_utility"] == funded["frontier_utility"]
    assert b["scripted (i_fund_villages_social)"]["utility"] != b["scripted"]["utility"]
