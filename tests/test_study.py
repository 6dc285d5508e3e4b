"""``agora eval`` and ``agora study`` end to end on the smoke study (configs/studies/smoke.yaml:
2 conditions x 2 seeds of the tiny economy); the evaluation's metrics against closed forms
and its plumbing on untrained runs are in tests/test_evaluate.py.

One smoke study (four short runs) serves the module: its run directories are the
populations that ``agora eval`` and cross-play evaluate. Compiled programs are shared
through the persistent cache (tests/conftest.py), so the sharded and resumed studies
recompile nothing.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from selfplay.cli import EXIT_OK, EXIT_USAGE, main
from tests.conftest import CONFIGS

SMOKE = str(CONFIGS / "studies" / "smoke.yaml")
SCALARS = ("utility", "effective_niches", "member_niche_mi_bits", "project_stock", "gini", "largest_output_share",
           "kl_mean", "effective_policies", "efficiency", "niche_js_to_frontier")


def _study(*args: str) -> int:
    return main(["study", SMOKE, *args, "--no-progress"])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("study") / "smoke"
    assert _study("--study-dir", str(d)) == EXIT_OK
    return d


def _results(d: Path) -> dict:
    return json.loads((d / "results.json").read_text())


# ---- the study ------------------------------------------------------------------------------
def test_smoke_study_results(smoke):
    """results.json parses; each condition's ``mean`` is the mean of its seeds' values and
    its Student's t ``ci95`` contains it; seeds differ; the baselines have null member
    metrics; results.md and report.html exist."""
    r = _results(smoke)
    assert list(r["conditions"]) == ["spec_off", "spec_on"] and r["missing"] == []
    assert r["metrics"][0] == "utility" and "largest_lineage_share" in r["metrics"]
    # one name everywhere: results.json and every run's eval.json carry the registry's eval metrics
    from analysis.metrics import EVAL, bounds

    assert r["metrics"] == list(EVAL)
    for e in smoke.glob("runs/*/*/eval.json"):
        for policy, m in json.loads(e.read_text())["policies"].items():
            assert list(m) == list(EVAL), (e, policy)
    for name, c in r["conditions"].items():
        assert sorted(c["seeds"]) == ["0", "1"]
        for k in SCALARS:
            vals = [c["seeds"][s][k] for s in ("0", "1")]
            assert c["mean"][k] == pytest.approx(np.mean(vals), rel=1e-9, abs=1e-12), (name, k)
            lo, hi = c["ci95"][k]
            assert lo <= c["mean"][k] <= hi, (name, k)
            # Student's t with one degree of freedom: half-width 12.706 * sd / sqrt(2), clipped
            # to the values the metric can take (a share's interval stays in [0, 1])
            half = 12.7062 * np.std(vals, ddof=1) / math.sqrt(2)
            b_lo, b_hi = bounds(k, len(r["niche_names"]) - 1)
            assert b_lo <= lo and hi <= b_hi, (name, k)
            assert hi - lo == pytest.approx(min(np.mean(vals) + half, b_hi) - max(np.mean(vals) - half, b_lo),
                                            rel=1e-3, abs=1e-12)
        assert c["seeds"]["0"]["utility"] != c["seeds"]["1"]["utility"]  # seeds differ
        np.testing.assert_allclose(c["mean"]["niche_shares"], np.mean([c["seeds"][s]["niche_shares"] for s in "01"], 0))
    for name in ("scripted", "random"):
        b = r["baselines"][name]
        assert b["utility"] > 0 and b["member_niche_mi_bits"] is None and b["largest_lineage_share"] is None
    assert r["baselines"]["scripted"]["utility"] > r["baselines"]["random"]["utility"]
    # the welfare frontier beside them: each row's efficiency is its utility over the market frontier
    f = r["frontier"]
    mu, fb = f["market frontier"]["utility"], f["first-best"]["utility"]
    assert r["baselines"]["scripted"]["utility"] < mu < fb
    for row in [*r["baselines"].values(), *(s for c in r["conditions"].values() for s in c["seeds"].values())]:
        assert row["efficiency"] == row["utility"] / mu and row["efficiency_first_best"] == row["utility"] / fb
    assert "market frontier (frontier)" in (smoke / "results.md").read_text()
    assert (smoke / "results.md").read_text().count("spec_o") >= 2 and (smoke / "report.html").is_file()


def test_second_invocation_trains_nothing(smoke, capsys):
    before = {p: p.stat().st_mtime_ns for p in smoke.glob("runs/*/*/metrics.jsonl")}
    assert len(before) == 4
    results = (smoke / "results.json").read_text()
    assert _study("--study-dir", str(smoke)) == EXIT_OK
    assert "4 complete" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in smoke.glob("runs/*/*/metrics.jsonl")} == before
    assert (smoke / "results.json").read_text() == results


def test_study_resumes_a_run_killed_mid_training_and_re_evaluates_a_stale_eval(smoke, tmp_path):
    """One run loses its newest checkpoint and its eval.json (killed after update 3 of 6):
    the study trains it from update 3 and ends with the same evaluation as the run that was
    never stopped. Another run's eval.json says an earlier update: the study evaluates it
    again without training it."""
    d = tmp_path / "resume"
    shutil.copytree(smoke, d)
    killed, stale = d / "runs" / "spec_on" / "seed_0", d / "runs" / "spec_off" / "seed_1"
    want = json.loads((killed / "eval.json").read_text())["policies"]["trained"]
    shutil.rmtree(killed / "checkpoints" / "6")
    (killed / "eval.json").unlink()
    e = json.loads((stale / "eval.json").read_text())
    e["update"] = 3
    (stale / "eval.json").write_text(json.dumps(e))
    stale_metrics = (stale / "metrics.jsonl").stat().st_mtime_ns
    assert _study("--study-dir", str(d)) == EXIT_OK
    assert json.loads((killed / "eval.json").read_text())["policies"]["trained"] == want
    assert (killed / "checkpoints" / "6").is_dir()
    assert json.loads((stale / "eval.json").read_text())["update"] == 6
    assert (stale / "metrics.jsonl").stat().st_mtime_ns == stale_metrics  # not trained again
    assert _results(d)["conditions"] == _results(smoke)["conditions"]


def test_sharded_and_resumed_studies_give_the_same_results(smoke, tmp_path, capsys):
    """Shard 2/2, then shard 1/2, then --aggregate: the same results.json as one unsharded
    study. A study stopped after shard 2/2's runs (a kill between runs) and run again
    without a shard resumes, trains only what is missing and ends with the same file."""
    a = tmp_path / "sharded"
    assert _study("--study-dir", str(a), "--shard", "2/2") == EXIT_OK
    assert sorted(str(p.relative_to(a)) for p in a.glob("runs/*/*/eval.json")) == [
        "runs/spec_off/seed_1/eval.json", "runs/spec_on/seed_1/eval.json"]
    b = tmp_path / "resumed"
    shutil.copytree(a, b)
    assert _study("--study-dir", str(a), "--aggregate") == EXIT_OK  # partial: says what is missing
    partial = _results(a)
    assert partial["missing"] == ["runs/spec_off/seed_0", "runs/spec_on/seed_0"]
    assert "missing runs" in capsys.readouterr().out
    # shards aggregated on two machines: shard 1/2's runs here, shard 2/2's only as a results.json
    c = tmp_path / "merged"
    shutil.copytree(smoke, c, ignore=shutil.ignore_patterns("seed_1"))
    elsewhere = tmp_path / "shard2.json"
    shutil.copy(a / "results.json", elsewhere)
    assert _study("--study-dir", str(c), "--aggregate", "--merge", str(elsewhere)) == EXIT_OK
    merged, want = _results(c), _results(smoke)
    assert merged["missing"] == []
    for name, cond in merged["conditions"].items():
        assert {k: cond[k] for k in ("seeds", "mean", "ci95")} == {k: want["conditions"][name][k] for k in ("seeds", "mean", "ci95")}
        assert cond["merged_from"] == {"1": str(elsewhere)} and list(cond["run_dirs"]) == ["0"]
    # without baselines measured here, the merged file's are taken (no frontier needed)
    (c / "baselines.json").unlink()
    marked = json.loads(elsewhere.read_text())
    marked["baselines"]["scripted"]["utility"] = 123.0
    (tmp_path / "marked.json").write_text(json.dumps(marked))
    assert _study("--study-dir", str(c), "--aggregate", "--merge", str(tmp_path / "marked.json")) == EXIT_OK
    assert _results(c)["baselines"]["scripted"]["utility"] == 123.0
    assert _results(c)["baselines"]["random"] == want["baselines"]["random"]
    assert _study("--study-dir", str(c), "--aggregate", "--merge", str(elsewhere)) == EXIT_OK  # baselines.json kept
    assert _results(c)["baselines"]["scripted"]["utility"] == 123.0
    (c / "baselines.json").unlink()
    assert _study("--study-dir", str(c), "--aggregate", "--merge", str(elsewhere)) == EXIT_OK
    merged = _results(c)
    # the local run wins over a merged one; a results.json of another study is refused
    assert _study("--study-dir", str(smoke), "--aggregate", "--merge", str(elsewhere)) == EXIT_OK
    assert _results(smoke) == want
    other = json.loads(elsewhere.read_text())
    other["study"] = "welfare"
    (tmp_path / "other.json").write_text(json.dumps(other))
    other["study"], other["conditions"]["spec_on"]["overrides"] = "smoke", ["train.updates=7"]
    (tmp_path / "changed.json").write_text(json.dumps(other))
    capsys.readouterr()
    for bad, words in (("other.json", "study 'welfare'"), ("changed.json", "condition 'spec_on'"), ("nope.json", "not found")):
        assert _study("--study-dir", str(c), "--aggregate", "--merge", str(tmp_path / bad)) == EXIT_USAGE
        assert words in capsys.readouterr().err
    assert _study("--study-dir", str(c), "--merge", str(elsewhere)) == EXIT_USAGE
    assert _results(c) == merged  # nothing already written is lost
    # shard 1/2 is seed 0 of each condition: with those runs already here (copied from the
    # unsharded study; the resumed study below trains them anew) it trains nothing
    for cond in ("spec_off", "spec_on"):
        shutil.copytree(smoke / "runs" / cond / "seed_0", a / "runs" / cond / "seed_0")
    capsys.readouterr()
    assert _study("--study-dir", str(a), "--shard", "1/2") == EXIT_OK
    assert "this process: 2, 2 complete" in capsys.readouterr().out
    assert _study("--study-dir", str(a), "--aggregate") == EXIT_OK
    assert _results(a) == _results(smoke)
    capsys.readouterr()
    assert _study("--study-dir", str(b)) == EXIT_OK
    assert "2 complete" in capsys.readouterr().out
    assert _results(b) == _results(smoke)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"conditions": [{"name": "a", "overrides": []}, {"name": "a", "overrides": []}]}, ["duplicate", "'a'"]),
        ({"seeds": 0}, ["seeds", "at least one"]),
        ({"seeds": []}, ["seeds", "at least one"]),
        ({"conditions": [{"name": "a", "overrides": ["train.lerning_rate=1"]}]}, ["conditions.a", "train.lerning_rate"]),
        ({"conditions": [{"name": "a", "override": []}]}, ["override", "unknown key"]),
        ({"colour": "red"}, ["colour", "unknown key"]),
        ({"config": "nope.yaml"}, ["nope.yaml", "not found"]),
    ],
)
def test_bad_study_files_exit_2_before_training(tmp_path, capsys, change, words):
    data = yaml.safe_load(Path(SMOKE).read_text())
    data["config"] = str(CONFIGS / "tiny.yaml")
    data.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    rc = main(["study", str(path), "--study-dir", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE, err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "out").exists()


def test_shard_from_slurm_array(monkeypatch):
    from selfplay.study import parse_shard

    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    assert parse_shard(None) == (3, 4)
    assert parse_shard("2/5") == (2, 5)
    monkeypatch.delenv("SLURM_ARRAY_TASK_COUNT")
    assert parse_shard(None) is None


# ---- agora eval -------------------------------------------------------------------------------
def test_eval_is_deterministic_and_writes_eval_json(smoke, capsys):
    run = smoke / "runs" / "spec_on" / "seed_0"
    (run / "eval.json").unlink()
    budget = yaml.safe_load(Path(SMOKE).read_text())["frontier"]  # the study's frontier: read from the cache
    args = ["eval", str(run), "--worlds", "2", "--steps", "50", "--burn-in", "12",
            f"--population={budget['population']}", f"--generations={budget['generations']}"]
    assert main(args) == EXIT_OK
    first = (run / "eval.json").read_text()
    assert "largest_lineage_share" in capsys.readouterr().out
    assert main(args) == EXIT_OK
    assert (run / "eval.json").read_text() == first
    e = json.loads(first)
    assert set(e["policies"]) == {"trained", "scripted", "random"} and e["update"] == 6 and e["worlds"] == 2
    t = e["policies"]["trained"]
    assert 0 <= t["member_niche_mi_bits"] <= 2 and 1 <= t["effective_policies"] <= 4
    assert 0.25 <= t["largest_lineage_share"] <= 1 and 0.25 - 1e-9 <= t["largest_output_share"] <= 1
    assert e["policies"]["scripted"]["kl_mean"] is None
    # Every policy's distance to the cached frontier of its economy (written by the study).
    from analysis.frontier import cache_dir

    fr = json.loads((cache_dir() / f"{e['frontier']['key']}.json").read_text())
    mu, fb = fr["market"]["utility"], fr["first_best"]["utility"]
    for p in e["policies"].values():
        assert p["efficiency"] == p["utility"] / mu and p["efficiency_first_best"] == p["utility"] / fb
        assert p["frontier_utility"] == mu and 0 <= p["niche_js_to_frontier"] <= 1
    assert r_frontier(smoke) == {"market": mu, "first_best": fb}
    # The run report shows the evaluation under the same metric names.
    assert main(["report", str(run)]) == EXIT_OK
    html = (run / "report.html").read_text()
    assert "Held-out evaluation" in html and "member_niche_mi_bits" in html and "largest_lineage_share" in html
    assert "Welfare frontier" in html and "efficiency" in html


def r_frontier(d: Path) -> dict:
    f = _results(d)["frontier"]
    return {"market": f["market frontier"]["utility"], "first_best": f["first-best"]["utility"]}


def test_crossplay_against_itself_and_mismatched_economies(smoke, tmp_path, capsys):
    """A run against itself: both sides' utility agree within sampling noise (5 standard
    errors of the per-step difference); against a run of another economy: exit 2 naming
    the differing key."""
    from selfplay.evaluate import EvalSettings, crossplay

    run = smoke / "runs" / "spec_off" / "seed_1"
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    out = crossplay(run, str(twin), EvalSettings(worlds=2, steps=40, burn_in=8))
    a, b = (out["sides"][k] for k in (str(run), str(twin)))
    d = np.asarray(a["utility_steps"]) - np.asarray(b["utility_steps"])  # per step, mean over the 2 worlds
    blocks = d.reshape(4, 8).mean(1)  # blocks of 8 steps: the per-step differences are autocorrelated
    assert abs(d.mean()) <= 5 * blocks.std(ddof=1) / math.sqrt(len(blocks)), (a["utility"], b["utility"])
    assert a["output_share"] + b["output_share"] == pytest.approx(1.0)
    vs = crossplay(run, "scripted", EvalSettings(worlds=1, steps=12, burn_in=2))["sides"]
    assert sum(x["output_share"] for x in vs.values()) == pytest.approx(1.0) and set(vs) == {str(run), "scripted"}
    for x in vs.values():  # utility by niche worked: null exactly where the side never worked the niche
        assert all((u is None) == (share == 0) for u, share in zip(x["utility_by_niche"], x["niche_shares"]))
    cfg = yaml.safe_load((twin / "config.yaml").read_text())
    cfg["economy"]["project"]["decay"] = 0.1
    (twin / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["eval", str(run), "--against", str(twin), "--worlds", "1", "--steps", "10"]) == EXIT_USAGE
    assert "economy.project.decay" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing")]) == EXIT_USAGE


# ---- the metrics against closed forms ------------------------------------------------------
def test_member_niche_mutual_information_closed_forms():
    from selfplay.evaluate import _mi_bits

    same = np.tile([[5.0, 3.0, 2.0, 0.0]], (4, 1))
    assert _mi_bits(same) == pytest.approx(0.0, abs=1e-12)
    for P in (2, 4, 8):
        assert _mi_bits(np.eye(P) * 7.0) == pytest.approx(math.log2(P))
    # Two members, half their work shared: I = H(niche) - H(niche | member) = 1.5 - 1 bits.
    assert _mi_bits(np.asarray([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])) == pytest.approx(0.5)


def test_world_metrics_on_a_hand_case():
    """Three members (two agents each) plus a league player: shares of output, wealth and
    utility of the whole economy; active and effective niches; project per agent-step."""
    from selfplay.evaluate import world_metrics

    groups = np.asarray([0, 1, 2, 3, 0, 1, 2, 3])  # 4 players, members 0..2
    T = 3
    sums = {
        "utility": np.tile([4.0, 2.0, 1.0, 1.0], (T, 1)),  # per group per step
        "work": np.tile(np.asarray([[2, 0, 0], [2, 0, 0], [0, 2, 0], [0, 1, 1]], float), (T, 1, 1)),
        "output": np.tile([6.0, 2.0, 1.0, 1.0], (T, 1)),
        "public": np.full(T, 4.0),
        "project": np.asarray([10.0, 20.0, 30.0]),
    }
    wealth = np.asarray([10.0, 5, 1, 4, 30, 5, 9, 16])  # groups: 40, 10, 10, 20
    m = world_metrics(sums, wealth, groups, members=3, burn_in=1)
    assert m["utility"] == pytest.approx(8.0 / 8)
    assert m["largest_utility_share"] == pytest.approx(0.5) and m["largest_output_share"] == pytest.approx(0.6)
    assert m["largest_wealth_share"] == pytest.approx(0.5)
    np.testing.assert_allclose(m["niche_shares"], [4 / 8, 3 / 8, 1 / 8])
    p = np.asarray([4 / 7, 3 / 7])
    assert m["effective_niches"] == pytest.approx(math.exp(-(p * np.log(p)).sum())) and m["active_niches"] == 2
    assert m["project_per_agent_step"] == pytest.approx(4.0 / 8) and m["project_stock"] == pytest.approx(25.0)
    # Members 0, 1 all in niche 0, member 2 all in niche 1: I = H(niche) over members' work.
    q = np.asarray([4 / 6, 2 / 6])
    assert m["member_niche_mi_bits"] == pytest.approx(-(q * np.log2(q)).sum())
