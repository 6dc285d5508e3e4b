"""``selfplay.study``'s bookkeeping without training: the study file, shards, which runs are
complete, what a (resumed, sharded) study trains and evaluates, the mean and interval over
seeds, merging results aggregated elsewhere, and the cached baselines.

Training and evaluation are replaced by stand-ins that write what they would (a checkpoint
folder, an ``eval.json`` of made-up metrics), so these tests take seconds: they are the
mutation tests of ``selfplay/study.py`` (tools/mutants.py). tests/test_study.py runs the
smoke study end to end.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from economy import ConfigError
from selfplay import study as S
from selfplay.evaluate import METRICS, EvalSettings
from tests.conftest import CONFIGS

J = 7  # niches of the tiny economy


def _write_study(tmp_path, **fields):
    data = {"config": str(CONFIGS / "tiny.yaml"), "overrides": ["train.updates=4"],
            "conditions": [{"name": "plain"}, {"name": "decay", "overrides": ["economy.project.decay=0.1"]}],
            "seeds": 2, "eval": {"worlds": 1, "steps": 8, "burn_in": 2}, "frontier": None}
    data.update(fields)
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _metrics(seed: int, condition: str) -> dict:
    """Made-up metrics of a run: distinct per run, the member metrics set."""
    x = 0.1 * (seed + 1) + (0.5 if condition == "decay" else 0.0)
    out = {k: x for k in METRICS}
    out["niche_shares"] = [x / J] * J + [1 - x]
    out["active_niches"] = 3.0 + seed
    return out


class Fakes:
    """Stand-ins for ``train_run`` and ``evaluate_run``, recording their calls."""

    def __init__(self, monkeypatch):
        self.trained, self.evaluated = [], []
        import selfplay.evaluate
        import selfplay.run

        monkeypatch.setattr(selfplay.run, "train_run", self.train_run)
        monkeypatch.setattr(selfplay.evaluate, "evaluate_run", self.evaluate_run)
        monkeypatch.setattr(selfplay.evaluate, "evaluate_baseline", self.evaluate_baseline)
        self.baselines = []

    def train_run(self, cfg, run_dir, resume, progress, on_update):
        assert resume is True and progress is False
        self.trained.append(run_dir)
        ck = run_dir / "checkpoints"
        start = max((int(p.name) for p in ck.iterdir()), default=0) if ck.is_dir() else 0
        for u in range(start + 1, cfg.train.updates + 1):
            on_update(u, {})
        (run_dir / "checkpoints" / str(cfg.train.updates)).mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))

    def evaluate_run(self, run_dir, settings, baselines, frontier, log):
        assert baselines is False
        self.evaluated.append(run_dir)
        seed, condition = int(run_dir.name.removeprefix("seed_")), run_dir.parent.name
        updates = max(int(p.name) for p in (run_dir / "checkpoints").iterdir())
        (run_dir / "eval.json").write_text(json.dumps(
            {"policies": {"trained": _metrics(seed, condition)}, **settings.record(), "update": updates}))

    def evaluate_baseline(self, env, name, settings):
        self.baselines.append((name, env.cfg.project.decay))
        return {**{k: None for k in METRICS}, "utility": {"scripted": 0.3, "random": 0.1}[name] + env.cfg.project.decay,
                "niche_shares": [1 / (J + 1)] * (J + 1)}


# ---- the study file -------------------------------------------------------------------------------
def test_a_study_file_gives_every_condition_and_seed_its_run(tmp_path):
    st = S.load_study(_write_study(tmp_path, seeds=[3, 5]), study_dir=tmp_path / "d")
    assert st.name == "mini" and st.study_dir == tmp_path / "d"
    assert [(r.condition, r.seed) for r in st.runs] == [("plain", 3), ("plain", 5), ("decay", 3), ("decay", 5)]
    assert [r.run_dir for r in st.runs][2] == tmp_path / "d" / "runs" / "decay" / "seed_3" == st.run_dir("decay", 3)
    assert [r.cfg.train.seed for r in st.runs] == [3, 5, 3, 5]
    assert all(r.cfg.train.updates == 4 for r in st.runs)  # the study's overrides, then the condition's
    assert [r.cfg.economy.project.decay for r in st.runs][1:3] != [0.1, 0.1] and st.runs[2].cfg.economy.project.decay == 0.1
    assert st.settings == EvalSettings(1, 8, 2, False)
    named = S.load_study(_write_study(tmp_path, name="other", eval={"worlds": 2}))
    assert named.name == "other" and str(named.study_dir) == "runs/studies/other"
    assert named.settings == EvalSettings(2, 50, 12, False) and named.cfg.seed_list == [0, 1]
    assert S.load_study(_write_study(tmp_path, study_dir="x/{name}/y")).study_dir.as_posix() == "x/mini/y"


@pytest.mark.parametrize("fields, message", [
    ({"seeds": 0}, "seeds=0: at least one seed"),
    ({"seeds": []}, r"seeds=\[\]: at least one seed"),
    ({"seeds": [1, 1]}, "distinct non-negative"),
    ({"seeds": [2, -1]}, "distinct non-negative"),
    ({"conditions": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}, r"duplicate names \['a'\]"),
    ({"conditions": [{"name": "a/b"}]}, "names a folder"),
    ({"conditions": [{"name": ""}]}, "names a folder"),
    ({"conditions": []}, "conditions"),
    ({"eval": {"worlds": 0}}, "eval.worlds"),
    ({"eval": {"steps": 8, "burn_in": 8}}, "--burn-in=8"),
    ({"colour": "red"}, "colour"),
    ({"config": "nowhere.yaml"}, "config='nowhere.yaml': run config not found"),
    ({"eval": {"steps": 0}}, "eval.steps = 0"),  # not taken for "the economy's episode length"
    ({"eval": {"burn_in": -1}}, "eval.burn_in = -1"),
    ({"study_dir": "runs/{nom}"}, r"study_dir='runs/\{nom\}': only \{name\} may be substituted"),
    ({"conditions": [{"name": "ok"}, {"name": "bad", "overrides": ["train.members=0"]}]},
     r"conditions\.bad \(seed 0\)"),
])
def test_a_bad_study_file_is_refused_naming_the_problem(tmp_path, fields, message):
    with pytest.raises(ConfigError, match=message):
        S.load_study(_write_study(tmp_path, **fields))


def test_the_smallest_valid_values_are_accepted(tmp_path):
    one = S.load_study(_write_study(tmp_path, seeds=1, conditions=[{"name": "only"}], eval={"steps": 1, "burn_in": 0}))
    assert [(r.condition, r.seed) for r in one.runs] == [("only", 0)] and one.cfg.seed_list == [0]
    assert one.settings == EvalSettings(EvalSettings().worlds, 1, 0, False)  # agora eval's default worlds
    assert S.load_study(_write_study(tmp_path, seeds=[0, 2])).cfg.seed_list == [0, 2]  # seed 0 is a seed


def test_a_bad_condition_is_reported_once_not_once_per_seed(tmp_path):
    path = _write_study(tmp_path, seeds=3, conditions=[{"name": "bad", "overrides": ["train.members=0"]},
                                                      {"name": "worse", "overrides": ["train.members=-1"]}])
    with pytest.raises(ConfigError) as e:
        S.load_study(path)
    problems = str(e.value).splitlines()[1:]
    assert [p.split(":")[0].strip() for p in problems if p.startswith("  conditions.")] == \
        ["conditions.bad (seed 0)", "conditions.worse (seed 0)"]


def test_the_run_config_is_found_relative_to_the_study_file(tmp_path, monkeypatch):
    import os

    (tmp_path / "studies").mkdir()
    rel = os.path.relpath(CONFIGS / "tiny.yaml", tmp_path / "studies")
    path = _write_study(tmp_path, config=rel).rename(tmp_path / "studies" / "mini.yaml")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # not relative to the working directory
    st = S.load_study(path, study_dir=tmp_path / "d")
    assert st.base == (CONFIGS / "tiny.yaml").resolve() and st.runs[0].cfg.economy.episode_length == 50


def test_a_run_is_immutable(tmp_path):
    import dataclasses

    run = S.load_study(_write_study(tmp_path), study_dir=tmp_path / "d").runs[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.seed = 7  # its run directory is named after its seed


def test_shards_from_the_command_line_and_a_slurm_array(monkeypatch):
    for k in ("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(k, raising=False)
    assert S.parse_shard("2/5") == (2, 5) and S.parse_shard("1/1") == (1, 1) and S.parse_shard("5/5") == (5, 5)
    for bad in ("0/3", "4/3", "1/0", "a/b", "3", "1/2/3"):
        with pytest.raises(ConfigError, match="--shard"):
            S.parse_shard(bad)
    assert S.parse_shard(None) is None
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert S.parse_shard(None) == (3, 4)  # ids from 0 unless told
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    assert S.parse_shard(None) == (2, 4)
    assert S.parse_shard("1/2") == (1, 2)  # the command line wins


# ---- completeness and resuming --------------------------------------------------------------------
def test_a_run_is_complete_when_evaluated_at_its_last_update_with_the_studys_settings(tmp_path):
    st = S.load_study(_write_study(tmp_path), study_dir=tmp_path / "d")
    run, s = st.runs[0], st.settings
    assert not S.complete(run, s)
    run.run_dir.mkdir(parents=True)
    path = run.run_dir / "eval.json"
    path.write_text("{ torn")
    assert not S.complete(run, s)
    good = {**s.record(), "update": 4}
    path.write_text(json.dumps(good))
    assert S.complete(run, s)
    for k, v in [("update", 3), ("worlds", 2), ("steps", 9), ("burn_in", 1), ("greedy", True)]:
        path.write_text(json.dumps({**good, k: v}))
        assert not S.complete(run, s), k


def test_done_updates_is_the_newest_checkpoint_folder(tmp_path):
    st = S.load_study(_write_study(tmp_path), study_dir=tmp_path / "d")
    run = st.runs[0]
    assert S._done_updates(run) == 0
    for name in ("3", "12", "7", "12.orbax-checkpoint-tmp", "tmp"):
        (run.run_dir / "checkpoints" / name).mkdir(parents=True)
    assert S._done_updates(run) == 12


def test_a_study_trains_what_is_missing_and_evaluates_what_is_stale(tmp_path, monkeypatch):
    fakes = Fakes(monkeypatch)
    st = S.load_study(_write_study(tmp_path), study_dir=tmp_path / "d")
    logs = []
    done = S.run_study(st, shard=(2, 2), progress=False, log=logs.append)
    assert [(r.condition, r.seed) for r in done] == [("plain", 1), ("decay", 1)]  # every 2nd run from the 2nd
    assert fakes.trained == fakes.evaluated == [st.runs[1].run_dir, st.runs[3].run_dir]
    assert logs[0].endswith("4 runs (2 conditions x 2 seeds); this process: 2, 0 complete")
    fakes.trained.clear(), fakes.evaluated.clear()
    # a run trained to its end whose eval.json is stale is evaluated again, not retrained
    stale = st.runs[1].run_dir / "eval.json"
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "steps": 99}))
    # a run killed mid-training resumes
    (st.runs[0].run_dir / "checkpoints" / "2").mkdir(parents=True)
    done = S.run_study(st, progress=False, log=logs.append)
    assert [(r.condition, r.seed) for r in done] == [("plain", 0), ("plain", 1), ("decay", 0)]
    assert fakes.trained == [st.runs[0].run_dir, st.runs[2].run_dir]
    assert fakes.evaluated == [st.runs[0].run_dir, st.runs[1].run_dir, st.runs[2].run_dir]
    assert logs[-1].endswith("this process: 4, 1 complete")
    assert all(S.complete(r, st.settings) for r in st.runs)
    assert S.run_study(st, progress=False, log=logs.append) == [] and logs[-1].endswith("this process: 4, 4 complete")


class Bar:
    """A stand-in for tqdm: what the study's progress bar was told."""
    bars = []

    def __init__(self, **kw):
        self.kw, self.n, self.descriptions, self.closed = kw, kw["initial"], [], False
        Bar.bars.append(self)

    def update(self, k):
        self.n += k

    def set_description(self, d):
        self.descriptions.append(d)

    def close(self):
        self.closed = True


def test_the_progress_bar_counts_updates_done_and_to_do(tmp_path, monkeypatch):
    fakes = Fakes(monkeypatch)
    monkeypatch.setattr("tqdm.tqdm", Bar)
    Bar.bars = []
    st = S.load_study(_write_study(tmp_path), study_dir=tmp_path / "d")  # 4 runs of 4 updates
    done = S.run_study(st, shard=(1, 4), progress=False, log=lambda *_: None)
    assert done == [st.runs[0]] and fakes.trained == [st.runs[0].run_dir]  # the 1st of every 4 runs
    bar = Bar.bars[-1]
    assert bar.kw["total"] == 4 and bar.kw["initial"] == 0 and bar.kw["disable"] is True and bar.n == 4
    (st.runs[1].run_dir / "checkpoints" / "3").mkdir(parents=True)  # killed after 3 of its 4 updates
    S.run_study(st, log=lambda *_: None)  # progress shown unless told
    bar = Bar.bars[-1]
    assert bar.kw["total"] == 16 and bar.kw["initial"] == 4 + 3  # the complete run and the resumed one's part
    assert bar.kw["disable"] is False and bar.kw["dynamic_ncols"] is True  # follows the terminal's width
    assert bar.n == 16 and bar.closed  # one step per update trained: full at the end
    assert bar.descriptions == ["plain/seed 1", "decay/seed 0", "decay/seed 1"]
    assert S.run_study(st, shard=(1, 2), progress=False, log=lambda *_: None) == []
    assert Bar.bars[-1].kw["total"] == Bar.bars[-1].kw["initial"] == 8  # plain/seed 0 and decay/seed 0, done


# ---- mean and interval over seeds -----------------------------------------------------------------------
def test_the_interval_over_seeds_is_students_t_clipped_to_the_metrics_range():
    mean, ci = S.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * sd 1 / sqrt(3)
    assert mean == 2.0 and ci == pytest.approx([2 - half, 2 + half])
    mean, ci = S.mean_ci([0.1, 0.12], lo=0.0, hi=1.0)
    half = 12.706204736 * 0.02 / math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) * sd / sqrt(2)
    assert mean == pytest.approx(0.11) and ci[0] == 0.0 and ci[1] == pytest.approx(0.11 + half)
    assert S.mean_ci([0.9, 0.95, 1.0], hi=1.0)[1][1] == 1.0
    assert S.mean_ci([5.0]) == (5.0, None)
    assert S.mean_ci([1.0, None]) == (None, None)
    mean, ci = S.mean_ci([[0.0, 1.0], [2.0, 1.0]])
    assert mean == [1.0, 1.0] and ci[1] == [1.0, 1.0] and ci[0][0] < 0 < 2 < ci[0][1]


def test_a_condition_summary_over_its_seeds(tmp_path):
    seeds = {"0": _metrics(0, "plain"), "1": _metrics(1, "plain"), "2": _metrics(2, "plain")}
    mean, ci = S.summarise(seeds, J)
    assert list(mean) == list(METRICS) == list(ci)
    assert mean["utility"] == pytest.approx(0.2) and ci["utility"][0] < 0.2 < ci["utility"][1]
    assert mean["active_niches"] == 4.0 and ci["active_niches"][1] <= J  # within 0 .. J niches
    assert ci["largest_output_share"][0] >= 0.0
    assert S.summarise({}, J) == ({k: None for k in METRICS}, {k: None for k in METRICS})


# ---- aggregating, merging, baselines --------------------------------------------------------------------
def _trained_study(tmp_path, monkeypatch):
    fakes = Fakes(monkeypatch)
    st = S.load_study(_write_study(tmp_path), study_dir=tmp_path / "d")
    S.run_study(st, progress=False, log=lambda *_: None)
    return st, fakes


def test_aggregate_means_every_complete_run_and_lists_the_missing(tmp_path, monkeypatch):
    st, fakes = _trained_study(tmp_path, monkeypatch)
    (st.runs[3].run_dir / "eval.json").unlink()
    r = S.aggregate(st)
    assert r == json.loads((st.study_dir / "results.json").read_text())
    assert (st.study_dir / "results.md").is_file() and (st.study_dir / "report.html").is_file()
    assert r["study"] == "mini" and r["eval"] == st.settings.record() and r["metrics"] == list(METRICS)
    assert r["missing"] == ["runs/decay/seed_1"] and r["niche_names"][-1] == "rest" and len(r["niche_names"]) == J + 1
    plain, decay = r["conditions"]["plain"], r["conditions"]["decay"]
    assert plain["overrides"] == ["train.updates=4"] and decay["overrides"] == ["train.updates=4", "economy.project.decay=0.1"]
    assert sorted(plain["seeds"]) == ["0", "1"] and list(decay["seeds"]) == ["0"]
    assert plain["run_dirs"] == {"0": "runs/plain/seed_0", "1": "runs/plain/seed_1"}
    assert plain["mean"]["utility"] == pytest.approx(0.15) and decay["mean"]["utility"] == pytest.approx(0.6)
    assert decay["ci95"]["utility"] is None  # one seed: no interval
    assert plain["seeds"]["1"]["efficiency"] is None  # no frontier in this study
    # the baselines: scripted and random in the first run's economy, scripted in each other economy
    assert set(r["baselines"]) == {"scripted", "random", "scripted (decay)"}
    assert r["baselines"]["scripted (decay)"]["utility"] == pytest.approx(0.4)
    assert sorted(fakes.baselines) == sorted([("scripted", st.runs[0].cfg.economy.project.decay),
                                              ("random", st.runs[0].cfg.economy.project.decay), ("scripted", 0.1)])
    S.aggregate(st)
    assert len(fakes.baselines) == 3  # cached in baselines.json with their settings and economies
    cached = json.loads((st.study_dir / "baselines.json").read_text())
    cached["settings"]["steps"] = 99
    (st.study_dir / "baselines.json").write_text(json.dumps(cached))
    S.aggregate(st)
    assert len(fakes.baselines) == 6  # measured again: the cache was of other settings


def test_merged_results_fill_the_missing_runs_only_and_must_be_this_studys(tmp_path, monkeypatch):
    st, fakes = _trained_study(tmp_path, monkeypatch)
    other = json.loads(json.dumps(S.aggregate(st)))
    other["conditions"]["decay"]["seeds"]["1"]["utility"] = 0.99
    other["conditions"]["plain"]["seeds"]["0"]["utility"] = -5.0
    other["baselines"]["scripted (decay)"]["utility"] = 0.77
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    (st.runs[3].run_dir / "eval.json").unlink()
    (st.study_dir / "baselines.json").unlink()
    r = S.aggregate(st, merge=[path])
    decay = r["conditions"]["decay"]
    assert decay["seeds"]["1"]["utility"] == 0.99 and decay["merged_from"] == {"1": str(path)}
    assert r["conditions"]["plain"]["seeds"]["0"]["utility"] == pytest.approx(0.1)  # complete here: never replaced
    assert "merged_from" not in r["conditions"]["plain"] and r["missing"] == []
    assert r["baselines"]["scripted (decay)"]["utility"] == 0.77  # not measured here: taken from the merge
    assert decay["run_dirs"] == {"0": "runs/decay/seed_0"}

    def refused(edit, message):
        bad = json.loads(json.dumps(other))
        edit(bad)
        p = tmp_path / "bad.json"
        p.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            S.load_merge(st, [p])

    refused(lambda b: b.update(study="else"), "results of study 'else', not 'mini'")
    refused(lambda b: b["eval"].update(worlds=3), "evaluated with")
    refused(lambda b: b["conditions"]["decay"].update(overrides=["x=1"]), "condition 'decay' ran with overrides")
    refused(lambda b: b.pop("conditions"), "no conditions")
    with pytest.raises(ConfigError, match="not found"):
        S.load_merge(st, [tmp_path / "none.json"])
    (tmp_path / "torn.json").write_text("{")
    with pytest.raises(ConfigError, match="not a results.json"):
        S.load_merge(st, [tmp_path / "torn.json"])
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ConfigError, match="no conditions"):
        S.load_merge(st, [tmp_path / "list.json"])
    assert S.load_merge(st, [path]) == [(str(path), other)]


def test_a_missing_or_merged_seed_does_not_hide_the_seeds_after_it(tmp_path, monkeypatch):
    st, _ = _trained_study(tmp_path, monkeypatch)
    other = json.loads(json.dumps(S.aggregate(st)))
    other["conditions"]["decay"]["seeds"]["0"]["utility"] = 0.99
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    for run in (st.runs[0], st.runs[2]):  # the first seed of each condition
        (run.run_dir / "eval.json").unlink()
    r = S.aggregate(st)
    assert r["missing"] == ["runs/plain/seed_0", "runs/decay/seed_0"]
    assert list(r["conditions"]["plain"]["seeds"]) == ["1"] and list(r["conditions"]["decay"]["seeds"]) == ["1"]
    assert r["conditions"]["plain"]["mean"]["utility"] == pytest.approx(0.2)  # seed 1's: 0.1 * 2
    r = S.aggregate(st, merge=[path])
    decay = r["conditions"]["decay"]
    assert decay["seeds"]["0"]["utility"] == 0.99 and decay["seeds"]["1"]["utility"] == pytest.approx(0.7)
    assert decay["merged_from"] == {"0": str(path)} and decay["run_dirs"] == {"1": "runs/decay/seed_1"}
    assert decay["mean"]["utility"] == pytest.approx((0.99 + 0.7) / 2) and r["missing"] == []


def test_a_fresh_study_directory_aggregates_merged_results_alone(tmp_path, monkeypatch):
    st, fakes = _trained_study(tmp_path, monkeypatch)
    path = tmp_path / "other.json"
    path.write_text(json.dumps(S.aggregate(st)))
    measured = len(fakes.baselines)
    fresh = S.load_study(_write_study(tmp_path), study_dir=tmp_path / "new" / "study")  # no folder yet
    r = S.aggregate(fresh, merge=[path])
    assert r["missing"] == [] and r["conditions"]["plain"]["merged_from"] == {"0": str(path), "1": str(path)}
    assert r["conditions"]["decay"]["mean"]["utility"] == pytest.approx(0.65)  # 0.6 and 0.7
    assert len(fakes.baselines) == measured  # the baselines too come from the merge
    assert json.loads((fresh.study_dir / "baselines.json").read_text())["policies"] == r["baselines"]
    assert json.loads((fresh.study_dir / "results.json").read_text()) == r


_FR = {"market": {"utility": 0.5, "stderr": 0.01, "shares": [1 / J] * J, "project_stock": 3.0, "evaluations": 9},
       "first_best": {"utility": 1.0, "shares": [1 / J] * J, "project_multiplier": 1.2}}


def test_the_first_conditions_economy_sets_the_studys_shared_settings_and_rows(tmp_path, monkeypatch):
    """Settings resolved from, niche names, baselines and frontier row of the first run's economy
    (each other economy's frontier measures its own condition)."""
    fakes = Fakes(monkeypatch)
    plain_decay = S.load_study(_write_study(tmp_path), study_dir=tmp_path / "p").runs[0].cfg.economy.project.decay
    monkeypatch.setattr(S, "economy_frontier", lambda cfg, settings, fs: {  # a frontier per economy
        "market": {**_FR["market"], "utility": 0.5 if cfg.economy.project.decay == plain_decay else 0.8},
        "first_best": _FR["first_best"]})
    st = S.load_study(_write_study(tmp_path, seeds=1, eval={"worlds": 1}, conditions=[
        {"name": "plain"},
        {"name": "other", "overrides": ["economy.project.decay=0.1", "economy.episode_length=80",
                                        "economy.niches.builder.name=mason"]}]), study_dir=tmp_path / "d")
    tiny = st.runs[0].cfg.economy
    assert tiny.episode_length == 50 and st.runs[1].cfg.economy.episode_length == 80
    assert st.settings == EvalSettings(1, 50, 50 // 4, False)  # steps: the first economy's episode
    S.run_study(st, progress=False, log=lambda *_: None)
    r = S.aggregate(st)
    assert r["niche_names"] == [*tiny.niche_names, "rest"] and "builder" in r["niche_names"]
    assert sorted(fakes.baselines) == sorted([("random", plain_decay), ("scripted", plain_decay), ("scripted", 0.1)])
    assert r["baselines"]["random"]["efficiency"] == pytest.approx((0.1 + plain_decay) / 0.5)
    assert r["baselines"]["scripted (other)"]["efficiency"] == pytest.approx((0.3 + 0.1) / 0.8)
    assert r["frontier"]["market frontier"]["utility"] == 0.5
    assert r["conditions"]["plain"]["seeds"]["0"]["efficiency"] == pytest.approx(0.1 / 0.5)
    assert r["conditions"]["other"]["seeds"]["0"]["efficiency"] == pytest.approx(0.1 / 0.8)  # its own economy's


def test_the_first_conditions_interval_is_clipped_to_its_own_niche_count(tmp_path, monkeypatch):
    Fakes(monkeypatch)
    st = S.load_study(_write_study(tmp_path, conditions=[
        {"name": "plain"}, {"name": "one", "overrides": ["economy.niches=[{name: farmer, outputs: {grain: 3}, labour: 3.0}]"]}]),
        study_dir=tmp_path / "d")
    assert [r.cfg.economy.num_niches for r in st.runs] == [J, J, 1, 1]
    S.run_study(st, progress=False, log=lambda *_: None)
    ci = S.aggregate(st)["conditions"]["plain"]["ci95"]["active_niches"]  # seeds: 3 and 4 active niches
    assert ci[0] == 0.0 and ci[1] == J  # 3.5 -+ t(0.975, 1) * 0.707 / sqrt(2) = 3.5 -+ 6.35, within 0 .. J


def test_every_condition_is_bounded_and_named_by_its_own_economy(tmp_path, monkeypatch):
    """A condition with another niche list: its intervals lie within its own niche count and
    its niche shares carry its own names (not the first condition's)."""
    Fakes(monkeypatch)
    st = S.load_study(_write_study(tmp_path, conditions=[
        {"name": "plain"}, {"name": "one", "overrides": ["economy.niches=[{name: farmer, outputs: {grain: 3}, labour: 3.0}]"]}]),
        study_dir=tmp_path / "d")
    S.run_study(st, progress=False, log=lambda *_: None)
    r = S.aggregate(st)
    one = r["conditions"]["one"]
    assert one["ci95"]["active_niches"] == [0.0, 1.0]  # 3.5 -+ 6.35 clipped to 0 .. 1 niche
    assert one["niche_names"] == ["farmer", "rest"]
    assert r["conditions"]["plain"]["niche_names"] == r["niche_names"] == [*st.runs[0].cfg.economy.niche_names, "rest"]
    # attach_frontier (results written before the frontier) bounds each condition by its own names too
    again = S.attach_frontier(r, _FR)
    assert again["conditions"]["one"]["ci95"]["active_niches"] == [0.0, 1.0]


def test_vmapped_seeds_train_each_conditions_unfinished_seeds_together(tmp_path, monkeypatch):
    """``--vmap-seeds``: the seeds of a condition still to train go to one vmapped program
    (selfplay.vmapped.train_seeds), a lone one to train_run; every run is evaluated; the
    results say which seeds were trained vmapped."""
    import selfplay.vmapped as V

    fakes = Fakes(monkeypatch)
    groups = []

    def train_seeds(cfgs, run_dirs, log, on_update):
        groups.append([d.name for d in run_dirs])
        for cfg, d in zip(cfgs, run_dirs):
            (d / "checkpoints" / str(cfg.train.updates)).mkdir(parents=True, exist_ok=True)
            (d / V.MARK).write_text(json.dumps({"seeds": [c.train.seed for c in cfgs]}))
        for u in range(1, cfgs[0].train.updates + 1):
            on_update(u, [{}] * len(cfgs))
        return "vmapped"

    monkeypatch.setattr(V, "train_seeds", train_seeds)
    st = S.load_study(_write_study(tmp_path, seeds=3), study_dir=tmp_path / "d")
    (st.runs[0].run_dir / "checkpoints" / "4").mkdir(parents=True)  # plain seed 0: trained, not evaluated
    (st.runs[3].run_dir / "checkpoints" / "4").mkdir(parents=True)  # decay seeds 0 and 1: trained
    (st.runs[4].run_dir / "checkpoints" / "4").mkdir(parents=True)
    monkeypatch.setattr("tqdm.tqdm", Bar)
    Bar.bars = []
    S.run_study(st, progress=False, log=lambda *_: None, vmap_seeds=True)
    assert groups == [["seed_1", "seed_2"]]  # plain's two unfinished seeds; decay's lone seed 2 alone
    assert fakes.trained == [st.runs[5].run_dir]
    assert fakes.evaluated == [r.run_dir for r in st.runs]
    assert Bar.bars[0].n == Bar.bars[0].kw["total"] == 6 * 4  # every update counted once
    r = S.aggregate(st)
    assert r["conditions"]["plain"]["vmapped_seeds"] == [1, 2] and r["conditions"]["decay"]["vmapped_seeds"] == []


def test_vmapped_groups_are_the_seeds_at_the_same_update(tmp_path, monkeypatch):
    """Seeds of a condition killed at different updates train as groups of equal progress
    (each group one vmapped program), not all one at a time."""
    import selfplay.vmapped as V

    Fakes(monkeypatch)
    groups = []

    def train_seeds(cfgs, run_dirs, log, on_update):
        groups.append(sorted(d.name for d in run_dirs))
        for cfg, d in zip(cfgs, run_dirs):
            (d / "checkpoints" / str(cfg.train.updates)).mkdir(parents=True, exist_ok=True)
        return "vmapped"

    monkeypatch.setattr(V, "train_seeds", train_seeds)
    st = S.load_study(_write_study(tmp_path, seeds=4, conditions=[{"name": "plain"}]), study_dir=tmp_path / "d")
    for r, done in zip(st.runs, [2, 0, 2, 0]):
        if done:
            (r.run_dir / "checkpoints" / str(done)).mkdir(parents=True)
    S.run_study(st, progress=False, log=lambda *_: None, vmap_seeds=True)
    assert sorted(groups) == [["seed_0", "seed_2"], ["seed_1", "seed_3"]]


def test_attach_frontier_bounds_the_intervals_by_the_results_niche_count():
    from scipy import stats

    def seeds(active):
        return {str(i): {**_metrics(i, "plain"), "active_niches": a} for i, a in enumerate(active)}

    results = {"niche_names": [f"n{j}" for j in range(J)] + ["rest"], "baselines": {},
               "conditions": {"wide": {"seeds": seeds([3.0, 4.0])}, "narrow": {"seeds": seeds([6.1, 6.12])}}}
    out = S.attach_frontier(results, _FR)
    assert out["conditions"]["wide"]["ci95"]["active_niches"] == [0.0, J]  # 3.5 -+ 6.35, clipped to 0 .. J
    half = stats.t.ppf(0.975, 1) * np.std([6.1, 6.12], ddof=1) / math.sqrt(2)
    assert J - 1 < 6.11 + half < J  # not clipped: within J niches
    assert out["conditions"]["narrow"]["ci95"]["active_niches"] == pytest.approx([6.11 - half, 6.11 + half])


def test_attach_frontier_measures_every_row_against_it(tmp_path, monkeypatch):
    st, _ = _trained_study(tmp_path, monkeypatch)
    r = S.aggregate(st)
    fr = {"market": {"utility": 0.5, "stderr": 0.01, "shares": [1 / J] * J, "project_stock": 3.0, "evaluations": 9},
          "first_best": {"utility": 1.0, "shares": [1 / J] * J, "project_multiplier": 1.2}}
    out = S.attach_frontier(r, fr)
    plain = out["conditions"]["plain"]
    assert plain["seeds"]["1"]["efficiency"] == pytest.approx(0.2 / 0.5)
    assert plain["mean"]["efficiency"] == pytest.approx(np.mean([0.1 / 0.5, 0.2 / 0.5]))
    assert plain["ci95"]["efficiency"][0] < plain["mean"]["efficiency"] < plain["ci95"]["efficiency"][1]
    random = 0.1 + st.runs[0].cfg.economy.project.decay  # the stand-in's utility
    assert out["baselines"]["random"]["efficiency_first_best"] == pytest.approx(random / 1.0)
    assert out["frontier"]["market frontier"]["utility"] == 0.5 and out["ci_method"] == S.CI_METHOD
    assert r["conditions"]["plain"]["seeds"]["1"]["efficiency"] is None  # the input is not changed


def test_the_compile_cache_is_the_studys_unless_one_is_set(tmp_path, monkeypatch):
    import jax

    before = jax.config.jax_compilation_cache_dir
    S.enable_compile_cache(tmp_path)
    assert jax.config.jax_compilation_cache_dir == before  # the tests' cache is set: kept
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        S.enable_compile_cache(tmp_path)
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / ".jax_cache")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.5
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
