"""``agora study STUDY.yaml``: conditions x seeds, trained, evaluated on the same held-out
worlds, aggregated to a mean and a 95 % interval per metric.

A study file::

    name: smoke                      # default: the file's stem
    config: ../tiny.yaml             # the base run config (relative to the study file)
    overrides: [train.updates=10]    # applied to every run
    conditions:                      # each: a name and its own overrides
      - {name: spec_on,  overrides: ["train.variants.rewards.specialisation=[0.2, 0.2]"]}
      - {name: spec_off, overrides: []}
    seeds: 2                         # a count (seeds 0..n-1) or a list of seeds (train.seed)
    eval: {worlds: 2, steps: 50}     # agora eval's settings (burn_in, greedy too)
    frontier: {generations: 24}      # the welfare frontier's search budget (null: no frontier)
    study_dir: runs/studies/{name}   # default

Every condition x seed is its own run directory (``STUDY_DIR/runs/CONDITION/seed_S``:
config, checkpoints, metrics, ``eval.json``), trained by ``agora train``'s loop, so a
killed study resumes where it stopped and finished runs are skipped. The runs are
independent: ``--shard I/N`` (or a Slurm job array) trains every N-th of them, and
``--aggregate`` writes the results from whatever runs are complete (``--merge
OTHER/results.json`` adds the runs of shards aggregated elsewhere). The scripted and
random baselines play the same worlds with the same keys (``STUDY_DIR/baselines.json``).

Outputs: ``results.json`` (per condition: overrides, per-seed metrics, mean, ``ci95`` =
Student's t interval of the mean over seeds, clipped to the metric's range
(:func:`analysis.metrics.bounds`); baselines; missing runs), ``results.md``
and ``report.html``. Every condition's and baseline's distance to its economy's welfare
frontier (``efficiency`` and the rest, :mod:`analysis.frontier`) is computed from its
utility and niche shares against the frontier of that run's economy, and the frontier
itself is a row of the results.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from economy import ConfigError, load_yaml
from economy.config import format_validation_error
from analysis.files import write_atomic
from selfplay.config import RunConfig, check_name_template, load_run_config
from analysis import frontier as welfare
from analysis.catalogue import economy_names
from analysis.frontier import FrontierSettings
from analysis.metrics import bounds
from selfplay.evaluate import METRICS, EvalSettings, economy_frontier, with_distance

CI_METHOD = "Student's t, 95 %, over seeds, clipped to the metric's range"


from economy.config import Frozen  # noqa: E402  (frozen, unknown keys refused, int32, no NaN)


class ConditionConfig(Frozen):
    name: str
    overrides: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not v or not all(c.isalnum() or c in "-_." for c in v):
            raise ValueError(f"condition name {v!r} must be non-empty letters, digits, '-', '_' or '.' (it names a folder)")
        return v


class StudyEvalConfig(Frozen):
    worlds: int = Field(8, ge=1)
    steps: int | None = Field(None, ge=1)
    burn_in: int | None = Field(None, ge=0)
    greedy: bool = False


class StudyConfig(Frozen):
    name: str | None = None
    config: str  # the base run config, relative to the study file
    overrides: tuple[str, ...] = ()
    conditions: tuple[ConditionConfig, ...] = Field(min_length=1)
    seeds: int | tuple[int, ...]
    eval: StudyEvalConfig = StudyEvalConfig()
    frontier: FrontierSettings | None = FrontierSettings()  # the welfare frontier's search budget (null: none)
    study_dir: str = "runs/studies/{name}"

    @field_validator("study_dir")
    @classmethod
    def _study_dir(cls, v):
        return check_name_template("study_dir", v)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"seeds={v}: at least one seed")
        else:
            if not v:
                raise ValueError("seeds=[]: at least one seed")
            if any(s < 0 for s in v) or len(set(v)) != len(v):
                raise ValueError(f"seeds={list(v)}: seeds must be distinct non-negative integers")
        return v

    @model_validator(mode="after")
    def _unique(self):
        names = [c.name for c in self.conditions]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"conditions: duplicate names {dupes}")
        return self

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


@dataclass(frozen=True)
class Run:
    condition: str
    seed: int
    cfg: RunConfig
    run_dir: Path


@dataclass
class Study:
    cfg: StudyConfig
    name: str
    base: Path
    study_dir: Path
    runs: list[Run]
    settings: EvalSettings

    def run_dir(self, condition: str, seed: int) -> Path:
        return self.study_dir / "runs" / condition / f"seed_{seed}"


def load_study(path: str | Path, study_dir: str | Path | None = None) -> Study:
    """Validate a study file and every run config it implies (before anything trains).
    Raises :class:`ConfigError` naming the problem."""
    path = Path(path)
    data = load_yaml(path)
    try:
        cfg = StudyConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, data, prefix="", model=StudyConfig).replace("invalid config", f"invalid study file {path}")) from None
    base = (path.parent / cfg.config).resolve() if not Path(cfg.config).is_absolute() else Path(cfg.config)
    if not base.is_file():
        raise ConfigError(f"{path}: config={cfg.config!r}: run config not found ({base})")
    name = cfg.name or path.stem
    sdir = Path(study_dir) if study_dir is not None else Path(cfg.study_dir.format(name=name))
    runs, problems = [], []
    for c in cfg.conditions:
        for seed in cfg.seed_list:
            try:
                rc = load_run_config(base, [*cfg.overrides, *c.overrides, f"train.seed={seed}"])
            except ConfigError as e:
                problems.append(f"conditions.{c.name} (seed {seed}): {e}")
                break
            runs.append(Run(c.name, seed, rc, sdir / "runs" / c.name / f"seed_{seed}"))
    if problems:
        raise ConfigError(f"invalid study file {path}:\n  " + "\n  ".join(problems))
    e = cfg.eval
    settings = EvalSettings(e.worlds, e.steps, e.burn_in, e.greedy).resolved(runs[0].cfg)
    return Study(cfg, name, base, sdir, runs, settings)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` (1-based) -> ``(I, N)``; None: no shard. Without ``text``, a Slurm job
    array (``SLURM_ARRAY_TASK_ID``, ``SLURM_ARRAY_TASK_MIN``, ``SLURM_ARRAY_TASK_COUNT``)."""
    if text is None:
        count = os.environ.get("SLURM_ARRAY_TASK_COUNT")
        if not count:
            return None
        task = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        return task + 1, int(count)
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard={text!r}: expected I/N, e.g. 1/4") from None
    if not (n >= 1 and 1 <= i <= n):
        raise ConfigError(f"--shard={text!r}: I must lie in 1..N")
    return i, n


def complete(run: Run, settings: EvalSettings) -> bool:
    """Trained to its last update and evaluated with the study's settings (its eval.json says so)."""
    path = run.run_dir / "eval.json"
    if not path.is_file():
        return False
    try:
        e = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    want = settings.record()
    return e.get("update") == run.cfg.train.updates and all(e.get(k) == v for k, v in want.items())


def _done_updates(run: Run) -> int:
    ck = run.run_dir / "checkpoints"
    steps = [int(p.name) for p in ck.glob("*") if p.name.isdigit()] if ck.is_dir() else []
    return max(steps, default=0)


def run_study(study: Study, shard: tuple[int, int] | None = None, progress: bool = True, log=print,
              vmap_seeds: bool = False) -> list[Run]:
    """Train and evaluate this process's share of the runs (all without ``shard``), skipping
    complete ones; returns the runs it trained or evaluated. ``vmap_seeds``: the seeds of a
    condition that still need training train as one vmapped program
    (:func:`selfplay.vmapped.train_seeds`; one device), then each is evaluated."""
    from tqdm import tqdm

    from selfplay.evaluate import evaluate_run
    from selfplay.run import train_run

    mine = study.runs if shard is None else study.runs[shard[0] - 1 :: shard[1]]
    todo = [r for r in mine if not complete(r, study.settings)]
    total = sum(r.cfg.train.updates for r in mine)
    done = sum(r.cfg.train.updates for r in mine if r not in todo) + sum(min(_done_updates(r), r.cfg.train.updates) for r in todo)
    log(f"agora study {study.name}: {len(study.runs)} runs ({len(study.cfg.conditions)} conditions x "
        f"{len(study.cfg.seed_list)} seeds); this process: {len(mine)}, {len(mine) - len(todo)} complete")
    bar = tqdm(total=total, initial=done, disable=not progress, unit="upd", dynamic_ncols=True)
    try:
        if vmap_seeds:
            from selfplay.vmapped import train_seeds

            for c in study.cfg.conditions:  # a condition's unfinished seeds, grouped by the update they are at
                groups: dict[int, list[Run]] = {}
                for r in (r for r in todo if r.condition == c.name):
                    done_r = _done_updates(r)
                    if done_r < r.cfg.train.updates:
                        groups.setdefault(done_r, []).append(r)
                for group in (g for g in groups.values() if len(g) > 1):
                    bar.set_description(f"{c.name}/seeds {', '.join(str(r.seed) for r in group)} (vmapped)")
                    train_seeds([r.cfg for r in group], [r.run_dir for r in group], log=log,
                                on_update=lambda u, ms: bar.update(len(ms)))
        for r in todo:
            bar.set_description(f"{r.condition}/seed {r.seed}")
            if _done_updates(r) < r.cfg.train.updates:
                train_run(r.cfg, r.run_dir, resume=True, progress=False, on_update=lambda u, m: bar.update(1))
            if r.cfg.economy.catalogues is not None:  # many catalogues: each held-out and training one in turn
                evaluate_catalogue_run(r.run_dir, study.settings, study.cfg.frontier, log)
            else:
                evaluate_run(r.run_dir, study.settings, baselines=False, frontier=study.cfg.frontier, log=log)
    finally:
        bar.close()
    return todo


def evaluate_catalogue_run(run_dir: Path, settings, frontier, log=None) -> dict:
    """A run over many catalogues in a study: ``agora eval --catalogues both`` (every
    catalogue against its own frontier), and an ``eval.json`` whose policies are the
    held-out averages (:func:`selfplay.evaluate.catalogue_summary`), which the study
    aggregates like any run's."""
    from selfplay.evaluate import catalogue_summary, evaluate_catalogues

    result = evaluate_catalogues(run_dir, settings, "both", frontier=frontier, log=log)
    ev = {"policies": catalogue_summary(result), **settings.record(), "update": result["update"],
          "catalogues": "held_out averages; per catalogue: eval_catalogues_both.json"}
    write_atomic(Path(run_dir) / "eval.json", json.dumps(ev, indent=1))
    return ev


def baselines(study: Study, merged: list[tuple[str, dict]] = ()) -> dict:
    """The scripted and random baselines on the study's evaluation worlds, in the economy of
    the first run, and the scripted baseline in the economy of every condition whose
    economy differs (e.g. funding), named ``scripted (CONDITION)``; each measured against
    the frontier of its economy. Cached in ``STUDY_DIR/baselines.json`` with the settings
    and economies they were measured in."""
    from economy import Economy
    from selfplay.evaluate import evaluate_baseline

    path = study.study_dir / "baselines.json"
    s = study.settings
    want = {"worlds": s.worlds, "steps": s.steps, "burn_in": s.burn_in}
    first = study.runs[0]
    if first.cfg.economy.catalogues is not None:
        # many catalogues: the baselines' held-out averages, measured beside the first complete
        # run on the same catalogues, worlds and keys (every run plays the same held-out set)
        done = next((r for r in study.runs if complete(r, s)), None)
        if done is None:
            return {}
        ev = json.loads((done.run_dir / "eval.json").read_text())["policies"]
        return {name: ev[name] for name in ("scripted", "random")}
    plays = [(name, first, name) for name in ("scripted", "random")]
    from analysis.frontier import config_hash  # economies that differ only in what learners see are one

    seen = {config_hash(first.cfg.economy)}
    for c in study.cfg.conditions:
        run = next(r for r in study.runs if r.condition == c.name)
        eco = config_hash(run.cfg.economy)
        if eco not in seen:
            seen.add(eco)
            plays.append((f"scripted ({c.name})", run, "scripted"))
    economies = {label: run.cfg.economy.model_dump(mode="json") for label, run, _ in plays}
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("settings") == want and cached.get("economies") == economies:
            return cached["policies"]
    policies = {}
    for label, run, name in plays:
        known = next((m["baselines"][label] for _, m in merged if label in m.get("baselines", {})), None)
        if known is not None:  # the same study's measurement, aggregated elsewhere (load_merge checked it)
            policies[label] = known
            continue
        metrics = evaluate_baseline(Economy(run.cfg.economy), name, s)
        policies[label] = with_distance(metrics, frontier_of(study, run))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"settings": want, "economies": economies, "policies": policies}, indent=1))
    return policies


def frontier_of(study: Study, run: Run) -> dict | None:
    """The welfare frontier of a run's economy on the study's worlds (cached per economy)."""
    return economy_frontier(run.cfg, study.settings, study.cfg.frontier)


def mean_ci(values: list[Any], lo: float = -math.inf, hi: float = math.inf) -> tuple[Any, Any]:
    """Mean over seeds and Student's t 95 % interval of the mean (element-wise for lists;
    null with a null value or, for the interval, fewer than two seeds), clipped to the
    values the metric can take, ``[lo, hi]`` (a share's interval never leaves [0, 1])."""
    from scipy import stats

    if any(v is None for v in values):
        return None, None
    x = np.asarray(values, np.float64)
    mean = x.mean(0)
    if len(values) < 2:
        return mean.tolist(), None
    half = stats.t.ppf(0.975, len(values) - 1) * x.std(0, ddof=1) / math.sqrt(len(values))
    ci = np.clip(np.stack([mean - half, mean + half], -1), lo, hi)
    return mean.tolist(), ci.tolist()


def summarise(seeds: dict[str, dict], niches: int | None = None) -> tuple[dict, dict]:
    """``(mean, ci95)`` of every metric over a condition's seeds (null without seeds); each
    interval within the metric's range (:func:`analysis.metrics.bounds`, ``niches`` = J)."""
    mean, ci = {}, {}
    for k in METRICS:
        mean[k], ci[k] = mean_ci([m.get(k) for m in seeds.values()], *bounds(k, niches)) if seeds else (None, None)
    return mean, ci


def attach_frontier(results: dict, fr: dict) -> dict:
    """A ``results.json`` of a study whose conditions share one economy, with that economy's
    frontier ``fr`` attached as :func:`aggregate` attaches it (the distance metrics of every
    seed and baseline, their means and intervals, the frontier rows): for results written
    before the frontier existed, from their per-seed ``utility`` and ``niche_shares``."""
    out = dict(results, metrics=list(METRICS), ci_method=CI_METHOD, frontier=welfare.table_rows(fr))
    out["conditions"] = {}
    for name, c in results["conditions"].items():
        seeds = {k: with_distance(v, fr) for k, v in c["seeds"].items()}
        names = c.get("niche_names") or results.get("niche_names")
        mean, ci = summarise(seeds, len(names) - 1 if names else None)
        out["conditions"][name] = dict(c, seeds=seeds, mean=mean, ci95=ci)
    out["baselines"] = {k: with_distance(v, fr) for k, v in results["baselines"].items()}
    return out


def load_merge(study: Study, paths) -> list[tuple[str, dict]]:
    """The ``results.json`` files of other study directories (e.g. shards run on machines that
    share no file system, or a session's run directories since lost), checked to be this
    study's: same name, evaluation settings and overrides of every condition they list;
    otherwise a :class:`ConfigError` naming the difference."""
    want_eval = study.settings.record()
    out = []
    for p in paths:
        p = Path(p)
        try:
            r = json.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"--merge {p}: not found") from None
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"--merge {p}: not a results.json ({err})") from None
        if not isinstance(r, dict) or not isinstance(r.get("conditions"), dict):
            raise ConfigError(f"--merge {p}: not a results.json (no conditions)")
        if r.get("study") != study.name:
            raise ConfigError(f"--merge {p}: results of study {r.get('study')!r}, not {study.name!r}")
        if r.get("eval") != want_eval:
            raise ConfigError(f"--merge {p}: evaluated with {r.get('eval')}, this study with {want_eval}")
        for c in study.cfg.conditions:
            theirs = r["conditions"].get(c.name)
            ours = [*study.cfg.overrides, *c.overrides]
            if theirs is not None and list(theirs.get("overrides", [])) != ours:
                raise ConfigError(f"--merge {p}: condition {c.name!r} ran with overrides {theirs.get('overrides')}, "
                                  f"this study's are {ours}")
        out.append((str(p), r))
    return out


def aggregate(study: Study, merge=()) -> dict:
    """``results.json``, ``results.md`` and ``report.html`` from the complete runs. A run not
    complete here is taken from the first of the ``merge`` results (:func:`load_merge`) that
    has its seed, recorded per condition under ``merged_from`` (seed: that file) and
    without a run directory, with the distance to the frontier it was aggregated with (the
    same economy's); runs complete here are never replaced. A baseline not yet measured
    here (no ``baselines.json``) is taken from the merged results where they have it, so a
    merge needs no frontier it did not already have."""
    from selfplay.vmapped import MARK as VMAPPED

    merged = load_merge(study, merge)
    conditions, missing = {}, []
    for c in study.cfg.conditions:
        seeds, dirs, origin, vmapped = {}, {}, {}, []
        for r in (r for r in study.runs if r.condition == c.name):
            seed = str(r.seed)
            if complete(r, study.settings):
                if (r.run_dir / VMAPPED).is_file():  # trained in one program with other seeds (--vmap-seeds)
                    vmapped.append(r.seed)
                trained = json.loads((r.run_dir / "eval.json").read_text())["policies"]["trained"]
                dirs[seed] = str(r.run_dir.relative_to(study.study_dir))
            else:
                src = next(((p, m) for p, m in merged if seed in m["conditions"].get(c.name, {}).get("seeds", {})), None)
                if src is None:
                    missing.append(str(r.run_dir.relative_to(study.study_dir)))
                    continue
                # measured against the same economy's frontier where it was aggregated
                seeds[seed] = src[1]["conditions"][c.name]["seeds"][seed]
                origin[seed] = src[0]
                continue
            # a run over many catalogues carries each catalogue's distance to its own frontier
            seeds[seed] = trained if r.cfg.economy.catalogues is not None else with_distance(trained, frontier_of(study, r))
        cfg_c = next(r.cfg for r in study.runs if r.condition == c.name)  # this condition's economy
        niche_names = economy_names(cfg_c.economy).niches
        mean, ci = summarise(seeds, len(niche_names))
        conditions[c.name] = {"overrides": [*study.cfg.overrides, *c.overrides], "seeds": seeds, "run_dirs": dirs,
                              "mean": mean, "ci95": ci, "niche_names": [*niche_names, "rest"],
                              "vmapped_seeds": vmapped}
        if origin:
            conditions[c.name]["merged_from"] = origin
    s = study.settings
    cfg0 = study.runs[0].cfg
    results = {
        "study": study.name,
        "base": str(study.cfg.config),
        "metrics": list(METRICS),
        "niche_names": [*economy_names(cfg0.economy).niches, "rest"],
        "ci_method": CI_METHOD,
        "eval": s.record(),
        "conditions": conditions,
        "baselines": baselines(study, merged),
        "frontier": welfare.table_rows(frontier_of(study, study.runs[0])),
        "missing": missing,
    }
    study.study_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(study.study_dir / "results.json", json.dumps(results, indent=1))
    from analysis.study_report import format_results_md, write_study_report

    write_atomic(study.study_dir / "results.md", format_results_md(results))
    write_study_report(study.study_dir)
    return results


def enable_compile_cache(study_dir: Path) -> None:
    """Share compiled programs between the runs of a study (and its shards): one update
    program serves every seed and every condition that only changes drawn values."""
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(study_dir / ".jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


__all__ = [
    "CI_METHOD", "ConditionConfig", "Run", "Study", "StudyConfig", "aggregate", "baselines", "complete", "frontier_of",
    "attach_frontier", "summarise",
    "enable_compile_cache", "load_merge", "load_study", "mean_ci", "parse_shard", "run_study",
]
