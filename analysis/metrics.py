"""Every metric Agora reports, declared once: its name, what it means, its unit, its range,
whether it describes the whole economy or the members, and where it is computed.

The names here are the names everywhere: ``eval.json`` and a study's ``results.json``
(:data:`EVAL`, in this order), ``analysis.jsonl`` and its TensorBoard tags
(``GROUP/NAME``, :func:`tag`), ``metrics.jsonl``, the run and study reports and their
glossaries (:func:`glossary`), and ``docs/metrics.md`` (written from this table by
:func:`glossary_md`). A study's interval of a metric is clipped to its :attr:`Metric.range`
(:func:`bounds`), so an interval never leaves the values the metric can take.

A metric is one entry here; :func:`register_metric` adds one (e.g. for a new niche
statistic) and refuses a name already taken unless asked to replace it. Names that an
older run wrote are read under their new name (:data:`ALIASES`, :func:`canonical`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping

Scope = Literal["economy", "members"]
Where = Literal["eval", "analysis", "train"]


@dataclass(frozen=True)
class Metric:
    """One metric. ``range``: ``(lo, hi)`` of the values it can take, each a number, None
    (unbounded) or ``"niches"`` (``J``, the number of niches) / ``"log2 niches"``;
    ``where``: the records that carry it (``eval``: ``agora eval``'s ``eval.json`` and
    study results; ``analysis``: ``analysis.jsonl``, every ``train.analysis.every``
    updates; ``train``: ``metrics.jsonl``, every update); ``group``: its TensorBoard tag
    group; ``shape``: ``scalar``, ``per niche``, ``per member``, ``per market``, ``per
    good``, ``matrix`` or ``record``."""

    name: str
    definition: str
    unit: str
    scope: Scope
    where: tuple[Where, ...]
    range: tuple[float | str | None, float | str | None] = (None, None)
    group: str = "metrics"
    shape: str = "scalar"


REGISTRY: dict[str, Metric] = {}
ALIASES: dict[str, str] = {}  # a name an older run wrote -> its name now
TRAIN_ALIASES = {"niche_shares": "member_niche_shares"}  # metrics.jsonl only (eval's niche_shares is the economy's)


def register_metric(metric: Metric, *, replace: bool = False, aliases: tuple[str, ...] = ()) -> Metric:
    """Add ``metric`` (a :class:`ValueError` if its name is taken and not ``replace``);
    ``aliases``: names older runs wrote for it (:data:`ALIASES`). Returns ``metric``."""
    if metric.name in REGISTRY and not replace:
        raise ValueError(f"metric {metric.name!r} is already registered (pass replace=True to replace it)")
    REGISTRY[metric.name] = metric
    for a in aliases:
        ALIASES[a] = metric.name
    return metric


def _m(name, definition, unit, scope, where, range=(None, None), group="metrics", shape="scalar", aliases=()):
    register_metric(Metric(name, definition, unit, scope, tuple(where), range, group, shape), aliases=tuple(aliases))


SHARE = (0.0, 1.0)
E, A, T = "eval", "analysis", "train"

# ---- outcomes of the economy (eval.json, results.json) ---------------------------------------
_m("utility", "mean utility per agent-step over the measured steps (after the burn-in) of the held-out worlds",
   "utility / agent-step", "economy", [E], (0.0, None), "outcome")
_m("niche_shares", "share of agent-steps spent working each niche; the last entry is resting (no niche)",
   "share", "economy", [E], SHARE, "niches", "per niche")
_m("effective_niches", "exp of the entropy of the work shares over the niches (resting left out): how many "
   "niches the work is spread over", "niches", "economy", [E], (0.0, "niches"), "niches")
_m("active_niches", "niches receiving at least 1 % of the work (analysis.niches.ACTIVE_SHARE)", "niches", "economy",
   [E], (0.0, "niches"), "niches")
_m("member_niche_mi_bits", "mutual information between the member an agent belongs to and the niche it works: "
   "0 when every member works the same mix, higher when members differ in the work they do",
   "bits", "members", [E], (0.0, "log2 niches"), "niches")
_m("project_per_agent_step", "units paid into the public project per agent-step", "units / agent-step", "economy",
   [E], (0.0, None), "outcome")
_m("project_stock", "mean stock of the public project in a market over the measured steps", "units", "economy", [E],
   (0.0, None), "outcome")
_m("gini", "Gini coefficient of the agents' wealth (cash plus holdings at their market's prices) at the end",
   "fraction", "economy", [E, A], SHARE, "wealth")
# ---- dominance: whole-economy shares of the largest member or lineage ------------------------
_m("largest_output_share", "the largest member's share of all units produced in the economy (every niche together)",
   "share", "members", [E, A], SHARE, "dominance")
_m("largest_wealth_share", "the largest member's share of all wealth at the end", "share", "members", [E], SHARE,
   "dominance")
_m("largest_utility_share", "the largest member's share of all utility", "share", "members", [E], SHARE, "dominance")
_m("largest_lineage_share", "share of the member slots descended from the most common founding member (PBT copies)",
   "share", "members", [E], SHARE, "dominance")
# ---- how different the policies are ------------------------------------------------------------
_m("kl_mean", "mean over ordered pairs of members of KL(pi_i || pi_j) (summed over the action heads, mean over "
   "the probe states)", "nats", "members", [E, A], (0.0, None), "diversity", aliases=["mean_kl"])
_m("js_mean", "mean over pairs of members of the Jensen-Shannon divergence of their policies (summed over the "
   "action heads, mean over the probe states)", "nats", "members", [E, A], (0.0, None), "diversity",
   aliases=["mean_js"])
_m("effective_policies", "Vendi score of the members' JS similarity: the effective number of distinct policies",
   "policies", "members", [E, A], (1.0, None), "diversity")
# ---- distance to the welfare frontier (analysis.frontier) --------------------------------------
_m("frontier_utility", "utility of the market frontier: the best fixed niche shares with scripted orders",
   "utility / agent-step", "economy", [E], (0.0, None), "frontier")
_m("frontier_first_best", "utility of the first-best: a planner who splits output equally", "utility / agent-step",
   "economy", [E], (0.0, None), "frontier")
_m("efficiency", "utility / the market frontier's utility", "fraction", "economy", [E], (0.0, None), "frontier")
_m("efficiency_first_best", "utility / the first-best's utility", "fraction", "economy", [E], (0.0, None), "frontier")
_m("niche_js_to_frontier", "Jensen-Shannon divergence between the work shares and the market frontier's", "bits",
   "economy", [E], SHARE, "frontier")
# ---- generalisation over catalogues (a run over economy.catalogues; agora eval --catalogues both) ----
_m("efficiency_train", "efficiency averaged over the training catalogues (each against its own market frontier); "
   "a run over many catalogues reports efficiency averaged over its held-out ones", "fraction", "economy", [E],
   (0.0, None), "frontier")
_m("generalisation_gap", "efficiency on the training catalogues minus efficiency on the held-out ones",
   "fraction", "economy", [E], (None, None), "frontier")
# ---- the analysis of a population during training (analysis.jsonl) ----------------------------
_m("kl", "KL(pi_i || pi_j) for every ordered pair of members", "nats", "members", [A], (0.0, None), "diversity", "matrix")
_m("js", "Jensen-Shannon divergence for every pair of members", "nats", "members", [A], (0.0, None),
   "diversity", "matrix")
_m("niche_kl", "KL of the niche head alone for every ordered pair of members", "nats", "members", [A], (0.0, None),
   "diversity", "matrix")
_m("niche_profile_distance", "Jensen-Shannon divergence between two members' shares of niche choices (what "
   "they did)", "nats", "members", [A], (0.0, math.log(2)), "diversity", "matrix")
_m("occupancy_entropy", "entropy of the work over niches (all markets)", "nats", "economy", [A], (0.0, None), "niches")
_m("market_occupancy_entropy", "entropy of the work over niches in each market", "nats", "economy", [A], (0.0, None),
   "niches", "per market")
_m("specialisation_index", "per member, the mean over its agents of how concentrated each agent's work is on one "
   "niche over the rollout", "index", "members", [A, T], SHARE, "niches", "per member")
_m("hhi", "Herfindahl index of the members' shares of each niche's output", "index", "members", [A], SHARE, "niches",
   "per niche")
_m("niche_largest_share", "per niche, the largest member's share of that niche's output (a per-niche "
   "concentration, not whole-economy dominance)", "share", "members", [A], SHARE, "niches", "per niche",
   aliases=["largest_share"])
_m("niche_largest_member", "per niche, the member with the largest share of its output (-1: nothing produced)",
   "member", "members", [A], (-1.0, None), "niches", "per niche", aliases=["largest_member"])
_m("niche_output", "units produced in each niche over the rollout", "units", "economy", [A], (0.0, None), "niches",
   "per niche")
_m("niche_concentration", "the largest niche_largest_share over the niches that make at least 1 % of all output",
   "share", "members", [A], SHARE, "niches", aliases=["monopoly_share"])
_m("niche_concentration_niche", "the niche where niche_concentration is reached (-1: none makes 1 %)", "niche",
   "members", [A], (-1.0, None), "niches", aliases=["monopoly_niche"])
_m("lorenz", "Lorenz curve of wealth at 101 points", "share", "economy", [A], SHARE, "wealth", "record")
_m("wealth_histogram", "histogram of the agents' wealth", "agents", "economy", [A], (0.0, None), "histogram", "record")
_m("specialisation_histogram", "histogram of the agents' specialisation index", "agents", "economy", [A], (0.0, None),
   "histogram", "record")
_m("trade_volume", "units of each good traded per step (all markets)", "units / step", "economy", [A], (0.0, None),
   "market", "per good")
_m("price_dispersion", "coefficient of variation of each good's price across markets", "fraction", "economy", [A],
   (0.0, None), "market", "per good")
_m("prices", "each market's last clearing price of each good", "money", "economy", [A], (0.0, None), "market", "matrix")
# ---- training, every update (metrics.jsonl) -----------------------------------------------------
_m("reward", "per member, mean reward per agent-step (all components, weighted)", "reward / agent-step", "members",
   [T], (None, None), "population", "per member")
_m("fitness", "per member, PBT's running fitness after the update", "fitness", "members", [T], (None, None),
   "population", "per member")
_m("member_niche_shares", "per member, the share of its agents' steps spent in each niche (last: resting)", "share",
   "members", [T], SHARE, "member", "matrix")
_m("occupancy", "share of the work in each niche, all players (last: resting)", "share", "economy", [T], SHARE,
   "niche_share", "per niche")
_m("market_price", "mean clearing price of each good over the rollout", "money", "economy", [T], (0.0, None),
   "market", "per good")
_m("market_volume", "units of each good traded over the rollout", "units", "economy", [T], (0.0, None), "market",
   "per good")
_m("project", "mean public-project stock of a market over the rollout", "units", "economy", [T], (0.0, None), "market")
_m("agent_steps_per_s", "agent-steps simulated per second of wall clock in the last update (rollout and learning)",
   "agent-steps / s", "economy", [T], (0.0, None), "perf")
for _k, _d in (("entropy", "policy entropy"), ("policy_loss", "PPO clipped surrogate loss"),
               ("value_loss", "value loss"), ("approx_kl", "approximate KL between the old and new policy"),
               ("clip_fraction", "fraction of samples whose ratio was clipped"),
               ("value_mean", "running mean of the returns (value normalisation)"),
               ("value_std", "running standard deviation of the returns")):
    _m(_k, f"per member, {_d}, mean over the update's minibatches", "—", "members", [T], (None, None), "population",
       "per member")

EVAL = tuple(k for k, m in REGISTRY.items() if "eval" in m.where)
"""The metrics of ``eval.json`` and of a study's ``results.json``, in their order."""
EVAL_MEMBER = tuple(k for k in EVAL if REGISTRY[k].scope == "members")
"""The eval metrics about members (null for a baseline, which has none)."""


def canonical(name: str) -> str:
    """The name of a metric now, given the name it has now or had in an older run."""
    return ALIASES.get(name, name)


def renamed(record: Mapping, train: bool = False) -> dict:
    """A record (a line of ``analysis.jsonl``, or of ``metrics.jsonl`` with ``train``) under
    today's names."""
    names = {**ALIASES, **TRAIN_ALIASES} if train else ALIASES
    return {names.get(k, k): v for k, v in record.items()}


def tag(name: str, *index: str) -> str:
    """The TensorBoard tag of a metric: ``GROUP/NAME`` (``/INDEX`` for an entry of a
    per-niche, per-good or per-member metric)."""
    m = REGISTRY[name]
    return "/".join([m.group, name, *index])


def bounds(name: str, niches: int | None = None) -> tuple[float, float]:
    """``(lo, hi)`` of the values ``name`` can take (``-inf``/``inf`` where unbounded or
    where the bound needs ``niches`` and none is given)."""
    def one(b, default):
        if b is None:
            return default
        if b == "niches":
            return float(niches) if niches else default
        if b == "log2 niches":
            return math.log2(niches) if niches and niches > 1 else (0.0 if niches == 1 else default)
        return float(b)

    lo, hi = REGISTRY[name].range
    return one(lo, -math.inf), one(hi, math.inf)


def glossary(names=None) -> list[tuple[str, str, str]]:
    """``(name, unit, definition)`` of ``names`` (default: every metric), registry order."""
    keys = list(REGISTRY) if names is None else [canonical(n) for n in names if canonical(n) in REGISTRY]
    return [(k, REGISTRY[k].unit, REGISTRY[k].definition) for k in keys]


def glossary_text(names=None, width: int = 100) -> str:
    """The glossary as plain text (``agora eval --help``)."""
    import textwrap

    out = []
    for k, unit, d in glossary(names):
        out.append(textwrap.fill(f"{k} [{unit}]: {d}", width, subsequent_indent="    "))
    return "\n".join(out)


def glossary_md() -> str:
    """``docs/metrics.md``: every metric, grouped by the records that carry it."""
    lines = ["# Metrics", "",
             "Every metric Agora reports, from its one declaration in `analysis/metrics.py` (this page is",
             "written from it by `analysis.metrics.glossary_md()`; a test keeps them equal). Scope:",
             "`economy` describes the whole economy, `members` the learning population's members. Range: the",
             "values the metric can take (a study's intervals are clipped to it; J = the number of niches).", ""]
    for where, title in (("eval", "Held-out evaluation (`eval.json`, a study's `results.json`)"),
                         ("analysis", "Analysis during training (`analysis.jsonl`, TensorBoard, the run report)"),
                         ("train", "Every update (`metrics.jsonl`, TensorBoard)")):
        lines += [f"## {title}", "", "| name | unit | scope | range | definition |", "|:---|:---|:---|:---|:---|"]
        for k, m in REGISTRY.items():
            if m.where[0] == where:
                also = [w for w in m.where if w != where]
                lo, hi = ("—" if b is None else ("J" if b == "niches" else "log2 J" if b == "log2 niches" else f"{b:.4g}")
                          for b in m.range)
                extra = f" Also in {', '.join(also)} records." if also else ""
                lines.append(f"| `{k}` | {m.unit} | {m.scope} | [{lo}, {hi}] | {m.definition}.{extra} |")
        lines.append("")
    if ALIASES:
        old = {**ALIASES, **TRAIN_ALIASES}
        lines += ["Older runs wrote " + ", ".join(f"`{a}` (now `{b}`)" for a, b in old.items())
                  + "; the reports read them under the new names.", ""]
    return "\n".join(lines)


__all__ = ["ALIASES", "EVAL", "EVAL_MEMBER", "Metric", "REGISTRY", "bounds", "canonical", "glossary", "glossary_md",
           "glossary_text", "register_metric", "renamed", "tag"]
