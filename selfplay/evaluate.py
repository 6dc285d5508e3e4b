"""Held-out evaluation (``agora eval``) and cross-play.

A trained population (a run directory's checkpoint), the scripted baseline and uniform
random play each play the same ``K`` held-out worlds (seeds ``eval_seed_start + k``)
with the same action keys (the ``evaluation`` stream, fixed), for ``T`` steps each; the
measures are taken after a burn-in of ``B`` steps and averaged over worlds. Two
evaluations of one checkpoint agree bit for bit.

Metrics (the names :mod:`selfplay.study` and the reports use), per world then averaged:

* ``utility``: mean utility per agent-step;
* ``niche_shares`` ``[J+1]``: share of agent-steps in each niche (last: resting);
* ``effective_niches``: ``exp`` of the entropy of work over the ``J`` niches (agent-steps
  of working agents); ``active_niches``: niches with >= 1 % of that work;
* ``member_niche_mi_bits``: mutual information between member and niche over work,
  I(member; niche) in bits: 0 when every member works the same mix, ``log2 P`` at most;
* ``project_per_agent_step``: public-project units paid in per agent-step;
  ``project_stock``: mean project stock of a market;
* ``gini``: Gini coefficient of wealth (money + holdings at the market's last prices)
  at the end;
* whole-economy dominance: ``largest_output_share`` (units of work),
  ``largest_wealth_share`` (at the end), ``largest_utility_share``: the largest learning
  member's share of the whole economy's; ``largest_lineage_share``: the largest share of
  the members descending from one founding member (PBT lineage);
* ``kl_mean``, ``js_mean``, ``effective_policies``: policy diversity of the members on a
  probe set of the evaluation's final observations (:mod:`analysis.diversity`);
* the distance to the economy's welfare frontier (:mod:`analysis.frontier`, on the same
  worlds, keys, steps and burn-in): ``frontier_utility`` (the market frontier: best fixed
  niche shares with scripted orders) and ``frontier_first_best`` (the planner's steady
  state), ``efficiency`` = utility / ``frontier_utility``, ``efficiency_first_best`` =
  utility / ``frontier_first_best``, ``niche_js_to_frontier``: Jensen-Shannon divergence
  (bits) between the shares of work over niches and the market frontier's.

Baselines have no members: their member and lineage metrics (and diversity) are null.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from agents.networks import population_apply
from agents.scripted import random_actions, scripted_actions
from analysis import frontier as welfare
from analysis import metrics as metric_registry
from analysis.frontier import DISTANCE_METRICS, FrontierSettings, distance
from analysis.diversity import effective_policies, js_matrix, kl_matrix, mean_offdiag
from analysis.niches import ACTIVE_SHARE, gini, niche_spread  # noqa: F401 (ACTIVE_SHARE: re-exported)
from analysis.population import wealth
from analysis.files import write_atomic
from economy import ConfigError, Economy, eval_keys
from economy.catalogues import take
from economy.streams import derive
from selfplay.config import RunConfig, run_config_from_dict
from selfplay.simulate import rollout

METRICS = metric_registry.EVAL  # eval.json's and results.json's metrics, declared in analysis.metrics
MEMBER_METRICS = metric_registry.EVAL_MEMBER  # null for a baseline (no members)
assert set(DISTANCE_METRICS) <= set(METRICS)
PROBE_STATES = 1024  # observations of the final states in the diversity probe set


class NotARunError(ValueError):
    """The directory is not a run directory of ``agora train`` (or has no checkpoint)."""


@dataclass(frozen=True)
class EvalSettings:
    worlds: int = 8  # held-out worlds: seeds eval_seed_start + 0 .. worlds - 1
    steps: int | None = None  # steps per world (default: economy.episode_length)
    burn_in: int | None = None  # steps not measured at the start of each world (default: steps // 4)
    greedy: bool = False  # the population plays its most likely actions

    def record(self) -> dict:
        """The settings as ``eval.json`` and a study's ``results.json`` record them."""
        return {"worlds": self.worlds, "steps": self.steps, "burn_in": self.burn_in, "greedy": self.greedy}

    def resolved(self, cfg: RunConfig) -> "EvalSettings":
        steps = self.steps or cfg.economy.episode_length
        burn = steps // 4 if self.burn_in is None else self.burn_in
        if self.worlds < 1:
            raise ConfigError(f"--worlds={self.worlds}: at least one world")
        if steps < 1 or not 0 <= burn < steps:
            raise ConfigError(f"--burn-in={burn} must lie in [0, --steps={steps})")
        return EvalSettings(self.worlds, steps, burn, self.greedy)


# ---- measuring one world ------------------------------------------------------------------
def _step_sums(groups: np.ndarray, num_groups: int, J: int, scale: float):
    """Per-step measures for :func:`selfplay.simulate.rollout`: sums per group (member,
    side, or one group for a baseline)."""
    g = jnp.asarray(groups)

    def metrics(env, state, info, actions):
        one = jax.nn.one_hot(g, num_groups, dtype=jnp.float32)  # [N, G]
        niche = jax.nn.one_hot(info["niche"], J + 1, dtype=jnp.float32)  # [N, J+1] the niche worked
        return {
            "utility": one.T @ info["utility"],  # [G]
            "work": one.T @ niche,  # [G, J+1] agent-steps per niche
            "niche_utility": one.T @ (niche * info["utility"][:, None]),  # [G, J+1] utility of agents by niche worked
            "output": one.T @ info["units"].astype(jnp.float32),  # [G] units of work
            "public": jnp.sum(info["collaboration"]) * scale,  # [] project units paid in
            "project": jnp.mean(info["project"].astype(jnp.float32)),  # [] mean stock of a market
        }

    return metrics


def _mi_bits(work: np.ndarray) -> float:
    """I(member; niche) in bits of a ``[P, J]`` table of work counts."""
    total = work.sum()
    if total <= 0:
        return 0.0
    p = work / total
    pm, pj = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float(np.sum(p[nz] * np.log2(p[nz] / (pm @ pj)[nz])))


def _largest_share(x: np.ndarray, members: int) -> float | None:
    total = float(np.sum(x))
    return float(np.max(x[:members]) / total) if total > 0 else None


def world_metrics(sums: dict, final_wealth: np.ndarray, groups: np.ndarray, members: int, burn_in: int) -> dict:
    """The metrics of one world from the per-step sums ``[T, ...]`` (steps from
    ``burn_in`` on), the final wealth per agent and the agents' groups; member metrics
    only when ``members`` > 0 (groups ``0 .. members-1`` are the learning members)."""
    s = {k: np.asarray(v, np.float64)[burn_in:] for k, v in sums.items()}
    steps, n = s["utility"].shape[0], groups.shape[0]
    work = s["work"].sum(0)  # [G, J+1]
    all_work = work.sum(0)
    effective, active = niche_spread(all_work[:-1])
    out = {
        "utility": float(s["utility"].sum() / (n * steps)),
        "niche_shares": (all_work / all_work.sum()).tolist(),
        "effective_niches": effective,
        "active_niches": active,
        "project_per_agent_step": float(s["public"].sum() / (n * steps)),
        "project_stock": float(s["project"].mean()),
        "gini": float(gini(jnp.asarray(final_wealth, jnp.float32))),
    }
    if members:
        wealth_g = np.bincount(groups, weights=final_wealth, minlength=work.shape[0])
        out.update(
            member_niche_mi_bits=_mi_bits(work[:members, :-1]),
            largest_output_share=_largest_share(s["output"].sum(0), members),
            largest_wealth_share=_largest_share(wealth_g, members),
            largest_utility_share=_largest_share(s["utility"].sum(0), members),
        )
    return out


def mean_metrics(per_world: list[dict]) -> dict:
    """Average each metric over worlds (element-wise for lists, over the worlds where an
    entry is not null; null when it is null in every world)."""
    out = {}
    for k in per_world[0]:
        vals = [w[k] for w in per_world]
        if isinstance(vals[0], list):
            cols = list(zip(*vals))
            out[k] = [None if all(v is None for v in c) else float(np.mean([v for v in c if v is not None])) for c in cols]
        else:
            out[k] = None if any(v is None for v in vals) else float(np.mean(np.asarray(vals, np.float64)))
    return out


def play_worlds(env: Economy, policy: Callable, groups: np.ndarray, num_groups: int, settings: EvalSettings,
                params=None, catalogues: Sequence[int] | None = None):
    """``(final state, per-step sums [T, ...] on the host)`` of every evaluation world played
    by ``policy(key, state) -> actions``, or, given ``params``, by ``policy(params)``: the
    parameters are then an argument of the compiled rollout, not constants in it, so every
    population of one economy and shape plays the same program (one compile, shared by a
    study's runs through the persistent cache). One ``jax.jit`` of the whole rollout.
    ``catalogues``: indices of a padded economy's catalogues, each played in turn on the
    same worlds and keys by the same compiled rollout and reset (the catalogue is data)."""
    metrics = _step_sums(groups, num_groups, env.num_niches, env.cfg.collaboration_scale)
    run = jax.jit(lambda p, key, state: rollout(env, policy if params is None else policy(p), key, state,
                                                settings.steps, metrics))
    if catalogues is None:
        reset, which = jax.jit(env.reset), [()]
    else:
        reset = jax.jit(lambda key, c: env.reset_catalogue(key, take(env.catalogues, c)))
        which = [(c,) for c in catalogues]
    for c in which:
        for world, key in eval_keys(env, settings.worlds):
            _, state = reset(world, *c)
            final, sums = run(params, key, state)
            yield final, jax.device_get(sums)


def _world(final, sums, groups: np.ndarray, members: int, settings: EvalSettings) -> dict:
    """:func:`world_metrics` of one played world (its final wealth computed here)."""
    w = np.asarray(wealth(final.goods, final.money, final.price), np.float64)
    return world_metrics(sums, w, groups, members, settings.burn_in)


def play_catalogues(env: Economy, policy: Callable, groups: np.ndarray, num_groups: int, settings: EvalSettings,
                    members: int, params=None) -> list[list[dict]]:
    """Per-world metrics ``[catalogue][world]`` of ``policy`` on each catalogue of a padded
    economy in turn (:func:`play_worlds` with ``catalogues``)."""
    flat = [_world(final, sums, groups, members, settings) for final, sums in
            play_worlds(env, policy, groups, num_groups, settings, params, catalogues=range(len(env.catalogue_configs)))]
    return [flat[i:i + settings.worlds] for i in range(0, len(flat), settings.worlds)]


def play(env: Economy, policy: Callable, groups: np.ndarray, num_groups: int, settings: EvalSettings, members: int,
         probe: bool = False, params=None):
    """Play every evaluation world with ``policy`` (and ``params``, see :func:`play_worlds`);
    returns ``(per-world metrics, probe observations or None)``."""
    per_world, probes = [], []
    for final, sums in play_worlds(env, policy, groups, num_groups, settings, params):
        per_world.append(_world(final, sums, groups, members, settings))
        if probe:
            obs = np.asarray(env.observe(final))
            stride = max(1, obs.shape[0] * settings.worlds // PROBE_STATES)
            probes.append(obs[::stride])
    return per_world, (np.concatenate(probes)[:PROBE_STATES] if probe else None)


# ---- a trained population ---------------------------------------------------------------
def load_run(run_dir: str | Path, update: int | None = None):
    """``(cfg, trainer, state)`` of a run directory's latest (or ``update``) checkpoint."""
    from selfplay.checkpoint import Checkpoints
    from selfplay.train import Trainer

    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file() or not (run_dir / "checkpoints").is_dir():
        raise NotARunError(f"{run_dir} is not a run directory of agora train (needs config.yaml and checkpoints/)")
    cfg = run_config_from_dict(yaml.safe_load(path.read_text()))
    trainer = Trainer(cfg)
    ckpt = Checkpoints(run_dir / "checkpoints", keep=10**6)
    try:
        if ckpt.latest() is None:
            raise NotARunError(f"{run_dir} has no checkpoint yet")
        ts = ckpt.restore(trainer.init(jax.random.key(cfg.train.seed)), step=update)
    finally:
        ckpt.close()
    return cfg, trainer, ts


def _diversity(trainer, ts, probe: np.ndarray) -> dict:
    P = trainer.num_members
    obs = jnp.broadcast_to(jnp.asarray(probe), (P,) + probe.shape)
    logits, _ = jax.jit(lambda p, o: population_apply(trainer.net, p, o))(ts.params, obs)
    kl, js = kl_matrix(logits), js_matrix(logits)
    return {
        "kl_mean": float(mean_offdiag(kl)),
        "js_mean": float(mean_offdiag(js)),
        "effective_policies": float(effective_policies(js)),
    }


def evaluate_population(cfg: RunConfig, trainer, ts, settings: EvalSettings) -> dict:
    """The trained population's metrics on the evaluation worlds."""
    env = trainer.env
    PL, P = trainer.num_players, trainer.num_members
    groups = trainer.player_of  # [N] the training layout's player of each agent (train.layout)
    per_world, probe = play(env, lambda p: trainer.policy_with(p, settings.greedy), groups, PL, settings, P,
                            probe=True, params=trainer.players_params(ts))
    out = mean_metrics(per_world)
    founders = np.asarray(jax.device_get(ts.pbt.founder))
    out["largest_lineage_share"] = float(np.bincount(founders, minlength=P).max() / P)
    out.update(_diversity(trainer, ts, probe))
    return {k: out.get(k) for k in METRICS}


def population_utility(trainer, settings: EvalSettings) -> Callable:
    """``ts -> utility``: the population's mean held-out utility exactly as
    :func:`evaluate_population` measures it (same worlds, keys, steps and burn-in), with
    one compile for every state of the trainer (the parameters are an argument), for
    measuring a run as it trains (benchmarks/time_to_quality.py)."""
    env = trainer.env
    PL = trainer.num_players
    groups = trainer.player_of  # [N] the training layout's player of each agent (train.layout)
    metrics = _step_sums(groups, PL, env.num_niches, env.cfg.collaboration_scale)

    @jax.jit
    def world(params_all, world_key, key):
        _, state = env.reset(world_key)
        final, sums = rollout(env, trainer.policy_with(params_all, settings.greedy), key, state, settings.steps, metrics)
        return wealth(final.goods, final.money, final.price), sums

    def utility(ts) -> float:
        params_all = trainer.players_params(ts)
        per_world = []
        for world_key, key in eval_keys(env, settings.worlds):
            w, sums = jax.device_get(world(params_all, world_key, key))
            per_world.append(world_metrics(sums, np.asarray(w, np.float64), groups, trainer.num_members, settings.burn_in))
        return mean_metrics(per_world)["utility"]

    return utility


def evaluate_baseline(env: Economy, name: str, settings: EvalSettings) -> dict:
    """``scripted`` or ``random`` play on the evaluation worlds (member metrics null)."""
    policy = {"scripted": functools.partial(scripted_actions, env), "random": functools.partial(random_actions, env)}[name]
    per_world, _ = play(env, policy, np.zeros(env.cfg.num_agents, np.int64), 1, settings, 0)
    out = mean_metrics(per_world)
    return {k: out.get(k) for k in METRICS}


CATALOGUE_METRICS = ("utility", "efficiency", "active_niches", "niche_js_to_frontier", "effective_niches",
                     "project_stock", "niche_shares")  # what agora eval --catalogues reports per catalogue


def _real_niches(metrics: dict, J: int) -> dict:
    """A padded economy's metrics with the per-niche lists cut to the catalogue's ``J``
    niches and rest (the padded slots are never worked)."""
    out = dict(metrics)
    for k in ("niche_shares", "utility_by_niche"):
        if out.get(k) is not None:
            out[k] = list(out[k][:J]) + [out[k][-1]]
    return out


def evaluate_catalogues(run_dir: str | Path, settings: EvalSettings = EvalSettings(), which: str = "held_out",
                        update: int | None = None, frontier: FrontierSettings | None = FrontierSettings(),
                        write: bool = True, log=None) -> dict:
    """``agora eval --catalogues {held_out,train,both}``: a run over a distribution of
    catalogues (``economy.catalogues``) played on each catalogue of ``which`` in turn (the
    same held-out worlds and keys for the population, the scripted and the random
    baselines), with efficiency against that catalogue's own market frontier (computed on
    the catalogue's unpadded economy with the same worlds' seeds, cached), active niches and
    the niche divergence from the frontier; averaged over the catalogues. ``both``: also
    the generalisation gap (efficiency on the training catalogues minus on the held-out
    ones). Writes ``RUN_DIR/eval_catalogues_{which}.json`` when ``write``."""
    from analysis.catalogue import catalogue_configs

    cfg, trainer, ts = load_run(run_dir, update)
    if cfg.economy.catalogues is None:
        raise ConfigError("--catalogues: this run plays one catalogue (its economy.catalogues is not set)")
    if which not in ("held_out", "train", "both"):
        raise ConfigError(f"--catalogues {which!r}: expected held_out, train or both")
    s = settings.resolved(cfg)
    params_all = trainer.players_params(ts)
    out: dict = {"catalogues": which, **s.record(), "update": int(ts.update), "sets": {}}
    for part in (("train", "held_out") if which == "both" else (which,)):
        c = cfg.economy.catalogues
        seeds = c.train_seeds if part == "train" else c.held_out_seeds
        per = {}
        cfgs = catalogue_configs(cfg.economy, part)
        env = Economy(cfg.economy, catalogues=cfgs, sizes=trainer.env.sizes)
        one = np.zeros(cfg.economy.num_agents, np.int64)
        played = {
            "trained": play_catalogues(env, lambda p: trainer.policy_with(p, s.greedy), trainer.player_of,
                                       trainer.num_players, s, trainer.num_members, params=params_all),
            "scripted": play_catalogues(env, functools.partial(scripted_actions, env), one, 1, s, 0),
            "random": play_catalogues(env, functools.partial(random_actions, env), one, 1, s, 0),
        }
        for i, (seed, ck) in enumerate(zip(seeds, cfgs)):
            J = ck.num_niches
            policies = {}
            for name, worlds in played.items():
                m = mean_metrics(worlds[i])
                policies[name] = {**({k: m.get(k) for k in METRICS} if name != "trained" else m),
                                  "utility_worlds": [w["utility"] for w in worlds[i]]}
            fr = None if frontier is None else welfare.frontier(ck, s.worlds, s.steps, s.burn_in, settings=frontier, log=log)
            policies = {k: with_distance(_real_niches(v, J), fr) for k, v in policies.items()}
            per[str(seed)] = {
                "niches": list(ck.niche_names) + ["rest"],
                "frontier": welfare.summary(fr),
                "frontier_active_niches": None if fr is None else int(np.sum(np.asarray(fr["market"]["shares"]) >= 0.01)),
                "policies": {k: {m: v.get(m) for m in METRICS + ("utility_worlds",)} for k, v in policies.items()},
            }
        mean = {}
        for name in ("trained", "scripted", "random"):
            mean[name] = {}
            for m in CATALOGUE_METRICS[:-1]:
                vals = [p["policies"][name][m] for p in per.values()]
                mean[name][m] = None if any(v is None for v in vals) else float(np.mean(vals))
        if frontier is not None:
            mean["trained"]["catalogues_with_frontier_niches"] = float(np.mean(
                [p["policies"]["trained"]["active_niches"] >= p["frontier_active_niches"] for p in per.values()]))
        out["sets"][part] = {"seeds": list(seeds), "per_catalogue": per, "mean": mean}
    if which == "both":
        e = [out["sets"][p]["mean"]["trained"]["efficiency"] for p in ("train", "held_out")]
        out["generalisation_gap"] = None if None in e else e[0] - e[1]
    founders = np.asarray(jax.device_get(ts.pbt.founder))
    out["largest_lineage_share"] = float(np.bincount(founders, minlength=trainer.num_members).max() / trainer.num_members)
    if write:
        write_atomic(Path(run_dir) / f"eval_catalogues_{which}.json", json.dumps(out, indent=1))
    return out


def catalogue_summary(result: dict) -> dict[str, dict]:
    """``{policy: METRICS}`` of an :func:`evaluate_catalogues` result, for a study's
    ``eval.json``: each scalar metric averaged over the held-out catalogues (over the
    training ones when only those were played); per-niche lists null (a niche slot means
    something else in each catalogue). The trained population also gets
    ``largest_lineage_share`` and, with ``both``, ``efficiency_train`` and
    ``generalisation_gap``."""
    part = "held_out" if "held_out" in result["sets"] else "train"
    per = result["sets"][part]["per_catalogue"].values()
    out = {}
    for name in ("trained", "scripted", "random"):
        m = {}
        for k in METRICS:
            vals = [p["policies"][name].get(k) for p in per]
            scalar = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
            m[k] = float(np.mean(vals)) if vals and scalar else None
        out[name] = m
    out["trained"]["largest_lineage_share"] = result.get("largest_lineage_share")
    if "generalisation_gap" in result:
        out["trained"]["generalisation_gap"] = result["generalisation_gap"]
        out["trained"]["efficiency_train"] = result["sets"]["train"]["mean"]["trained"]["efficiency"]
    return out


def format_catalogues_table(result: dict) -> str:
    """Per catalogue and averaged: the population's utility, efficiency, active niches (the
    frontier's beside) and niche divergence, with the baselines' efficiency."""
    f = lambda x, d=3: "—" if x is None else f"{x:.{d}f}"  # noqa: E731
    lines = []
    for part, r in result["sets"].items():
        lines.append(f"{part} catalogues ({len(r['seeds'])}):")
        lines.append("  catalogue   utility  efficiency  active (frontier)  JS to frontier  scripted eff  random eff")
        rows = list(r["per_catalogue"].items()) + [("mean", {"policies": r["mean"], "frontier_active_niches": None})]
        for seed, p in rows:
            t = p["policies"]["trained"]
            fa = p.get("frontier_active_niches")
            lines.append(f"  {seed:>9}  {f(t['utility'])}    {f(t['efficiency'])}      {f(t['active_niches'], 1):>4} "
                         f"({'—' if fa is None else fa})        {f(t['niche_js_to_frontier'])}          "
                         f"{f(p['policies']['scripted']['efficiency'])}        {f(p['policies']['random']['efficiency'])}")
    if "generalisation_gap" in result:
        lines.append(f"generalisation gap (efficiency, train - held out): {f(result['generalisation_gap'])}")
    return "\n".join(lines)


def economy_frontier(cfg: RunConfig, settings: EvalSettings, frontier_settings: FrontierSettings | None,
                     log=None) -> dict | None:
    """The welfare frontier of the run's economy on the evaluation's worlds (cached, see
    :func:`analysis.frontier.frontier`); None when ``frontier_settings`` is None."""
    if frontier_settings is None or cfg.economy.catalogues is not None:  # many catalogues: one frontier each
        return None
    s = settings.resolved(cfg)
    return welfare.frontier(cfg.economy, s.worlds, s.steps, s.burn_in, settings=frontier_settings, log=log)


def with_distance(metrics: dict, fr: dict | None) -> dict:
    """``metrics`` with its distance to the frontier ``fr`` filled in (null without one)."""
    return {**metrics, **distance(metrics, fr)}


def evaluate_run(run_dir: str | Path, settings: EvalSettings = EvalSettings(), update: int | None = None,
                 baselines: bool = True, write: bool = True,
                 frontier: FrontierSettings | None = FrontierSettings(), log=None) -> dict:
    """``agora eval``: the run's population and (``baselines``) the scripted and random
    baselines on the same worlds, each with its distance to the economy's frontier (computed
    with the ``frontier`` search budget, or taken from the cache; none when None); writes
    ``RUN_DIR/eval.json`` when ``write``."""
    cfg, trainer, ts = load_run(run_dir, update)
    s = settings.resolved(cfg)
    fr = economy_frontier(cfg, s, frontier, log)
    policies = {"trained": evaluate_population(cfg, trainer, ts, s)}
    if baselines:
        for name in ("scripted", "random"):
            policies[name] = evaluate_baseline(trainer.env, name, s)
    policies = {k: with_distance(v, fr) for k, v in policies.items()}
    result = {"policies": policies, **s.record(), "update": int(ts.update), "frontier": welfare.summary(fr),
              "niche_names": list(trainer.env.niche_names)}
    if write:
        write_atomic(Path(run_dir) / "eval.json", json.dumps(result, indent=1))
    return result


# ---- cross-play -------------------------------------------------------------------------
def _economy_diff(a: RunConfig, b: RunConfig) -> list[str]:
    from selfplay.config import config_diff

    return config_diff(a.economy.model_dump(mode="json"), b.economy.model_dump(mode="json"), "economy.")


def crossplay_run(trainer, name) -> int:
    """The run length with which a population plays its half of the agent slots in
    cross-play (its rows are every other agent): 1 under ``train.layout=mixed`` (the rows
    round robin over its players, each player in every market), ``C / 2`` under
    ``villages`` (its players in the markets they trained in: row ``r``, agent ``2 r`` or
    ``2 r + 1``, goes to player ``(r // (C / 2)) % PL = (agent // C) % PL``). Raises
    :class:`ConfigError` when a villages run ``C`` is odd (the halves would split runs)."""
    if trainer.run_length == 1:
        return 1
    if trainer.run_length % 2:
        raise ConfigError(
            f"cross-play: {name} trained with train.layout=villages in runs of {trainer.run_length} agents "
            f"(agents per market / train.village_players), odd, so its runs do not split between the two sides"
        )
    return trainer.run_length // 2


def crossplay(run_a: str | Path, against: str, settings: EvalSettings = EvalSettings()) -> dict:
    """Population A in the even agent slots, B (a run directory, or ``scripted``) in the
    odd ones, on the evaluation worlds: each side's utility (and per measured step), niche
    shares, share of output (units of work) and utility by niche worked. Raises :class:`ConfigError` naming the economy keys that
    differ between the two runs."""
    cfg_a, trainer_a, ts_a = load_run(run_a)
    env = trainer_a.env
    s = settings.resolved(cfg_a)
    act_a = trainer_a.act_on(ts_a, greedy=s.greedy, run=crossplay_run(trainer_a, run_a))
    n = env.cfg.num_agents
    if n % 2:
        raise ConfigError(f"cross-play: {n} agents do not split into two equal sides (use an even economy.num_agents)")
    if against == "scripted":
        scripted = functools.partial(scripted_actions, env)
        act_b = None
    else:
        cfg_b, trainer_b, ts_b = load_run(against)
        diff = _economy_diff(cfg_a, cfg_b)
        if diff:
            raise ConfigError(f"cross-play needs one economy: {run_a} and {against} differ in {', '.join(diff)}")
        run_b = crossplay_run(trainer_b, against)
        act_b = trainer_b.act_on(ts_b, greedy=s.greedy, run=run_b)
        if (n // 2) % (trainer_b.num_players * run_b):
            raise ConfigError(f"cross-play: {against}'s {trainer_b.num_players} players must divide {n // 2} agents")
    if (n // 2) % (trainer_a.num_players * crossplay_run(trainer_a, run_a)):
        raise ConfigError(f"cross-play: {run_a}'s {trainer_a.num_players} players must divide {n // 2} agents")
    side = np.arange(n) % 2

    def policy(key, state):
        # Each side's agents (every other slot, so both meet in every market) are spread over
        # that population's players as in its own training (crossplay_run).
        ka, kb = derive(key, "a"), derive(key, "b")
        obs = env.observe(state)
        a = act_a(ka, obs[0::2])
        b = act_b(kb, obs[1::2]) if act_b is not None else {k: v[1::2] for k, v in scripted(kb, state).items()}
        merge = lambda x, y: jnp.stack([x, y], 1).reshape((n,) + x.shape[1:])  # noqa: E731
        # A side trained with train.orders=scripted drew its niches only: the scripted rule
        # places its orders, for the niches both sides drew, on that side's rows.
        niche = merge(a["niche"], b["niche"])
        complete = lambda x, rows, tr: x if len(x) == len(env.action_spec) else {  # noqa: E731
            h: v[rows] for h, v in tr.complete(derive(key, "orders"), state, {"niche": niche}).items()}
        a = complete(a, slice(0, None, 2), trainer_a)
        b = complete(b, slice(1, None, 2), trainer_b if act_b is not None else None)
        return {k: merge(a[k], b[k]) for k in a}

    per_side = {0: [], 1: []}
    for _, sums in play_worlds(env, policy, side, 2, s):
        sums = {k: np.asarray(v, np.float64)[s.burn_in:] for k, v in sums.items()}
        out_total = sums["output"].sum()
        for g in (0, 1):
            work = sums["work"][:, g].sum(0)
            per_step = sums["utility"][:, g] / (side == g).sum()
            per_side[g].append({
                "utility": float(per_step.mean()),
                "utility_steps": per_step.tolist(),  # mean utility of the side's agents at each measured step
                "niche_shares": (work / work.sum()).tolist(),
                "output_share": float(sums["output"][:, g].sum() / out_total) if out_total > 0 else None,
                # mean utility per agent-step of the side's agents by the niche they worked (null: nobody did)
                "utility_by_niche": [float(u / w) if w > 0 else None
                                     for u, w in zip(sums["niche_utility"][:, g].sum(0), work)],
            })
    names = {0: str(run_a), 1: str(against)}
    return {"sides": {names[g]: mean_metrics(per_side[g]) for g in (0, 1)}, "worlds": s.worlds, "steps": s.steps,
            "burn_in": s.burn_in, "niche_names": list(env.niche_names) + ["rest"]}


# ---- printing -----------------------------------------------------------------------------
def format_eval_table(result: dict, niche_names: list[str] | None = None) -> str:
    """A fixed-width table: one row per metric, one column per policy; a per-niche metric
    (``niche_shares``) gets one row per niche, named, when ``niche_names`` are given."""
    pols = list(result["policies"])
    rows = []
    fmt = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731
    for k in METRICS:
        values = [result["policies"][p].get(k) for p in pols]
        lists = [v for v in values if isinstance(v, list)]
        if not lists:
            rows.append([k, *map(fmt, values)])
            continue
        width = len(lists[0])
        names = list(niche_names or [])
        names = (names + ["rest"])[:width] if len(names) + 1 >= width else [str(i) for i in range(width)]
        for i, name in enumerate(names):
            rows.append([f"{k} {name}", *(fmt(v[i]) if isinstance(v, list) else "—" for v in values)])
    header = ["metric", *pols]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header)] + [line(r) for r in rows])


__all__ = [
    "EvalSettings", "METRICS", "MEMBER_METRICS", "NotARunError", "crossplay", "crossplay_run", "economy_frontier",
    "eval_keys",
    "evaluate_baseline", "with_distance",
    "evaluate_population", "evaluate_run", "format_eval_table", "load_run", "mean_metrics", "play", "play_worlds",
    "world_metrics",
]
