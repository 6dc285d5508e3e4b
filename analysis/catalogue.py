"""Procedurally generated catalogues: goods, recipes, niches and a public project drawn
from a seed and a spec (:class:`CatalogueSpec`), returned as the same validated
:class:`~economy.config.EconomyConfig` a YAML file gives, so every tool (training,
``agora frontier``, ``agora eval``) works on it. ``agora catalogue --seed 7 [--spec FILE]``
prints one as YAML.

How a catalogue is drawn (``numpy`` generator seeded by ``(seed, attempt)``):

* goods in levels: raw goods (level 0), each made from nothing by a niche tied to one of
  the resources (its output scales with the market's richness of it), and processed goods
  at levels 1..depth, each made by a niche from 1-3 goods of lower levels, at least one
  from the level just below (so the chains really are ``depth`` long);
* one public-project niche (the builder): 1-2 goods in, public units out;
* extra niches, when the spec asks for more than one per good plus the builder: second
  recipes for processed goods (other inputs);
* base prices: raw goods 5-15; a processed good's price is its inputs' value at base
  prices times a markup > 1 over its output quantity, so by construction **no recipe
  destroys value at base prices** (the builder's output is the project, not goods);
* utility weights from a Dirichlet over the consumer goods (every processed good and some
  raw goods; the rest are intermediate, like ore), perish and consume rates and labour from
  the spec's ranges.

Guarantees, checked on the result (:func:`check`) and named in the error when a spec cannot
meet them in ``attempts`` draws: every consumer good can be produced; no recipe destroys
value at base prices; the planner's first-best (:func:`analysis.frontier.first_best`) uses
at least half of the niches (share >= 1 %, the active-niche threshold).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from economy.catalogues import RESOURCE_NAMES, CatalogueSpec  # noqa: F401 (re-exported: the spec lives with the padded economy)
from economy.config import ConfigError, EconomyConfig, economy_from_dict

ACTIVE = 0.01  # a niche is used by the first-best when its labour share is at least this


def load_spec(path: str | None) -> CatalogueSpec:
    """The spec of a YAML file (None: the defaults); a bad one raises ConfigError naming the field."""
    from pydantic import ValidationError

    from economy.config import format_validation_error, load_yaml

    data = load_yaml(path) if path else {}
    try:
        return CatalogueSpec(**(data or {}))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix="spec.")) from None
    except TypeError as err:
        raise ConfigError(f"spec: {err}") from None


def _draw(seed: int, attempt: int, spec: CatalogueSpec) -> dict[str, Any]:
    rng = np.random.default_rng([seed, attempt])
    uniform = lambda lo_hi: float(rng.uniform(*lo_hi))  # noqa: E731
    integer = lambda lo_hi: int(rng.integers(lo_hi[0], lo_hi[1] + 1))  # noqa: E731

    # the spec's validator makes every range below non-empty: goods >= raw + depth, resources <= raw
    G = min(integer(spec.goods), spec.niches[1] - 1)
    depth = int(spec.depth)
    R = integer((spec.raw[0], min(spec.raw[1], G - depth)))
    levels = [0] * R + list(range(1, depth + 1)) + [int(x) for x in rng.integers(1, depth + 1, G - R - depth)]
    levels = levels[:R] + sorted(levels[R:])
    # neutral names that say the level: raw_a, raw_b, ...; made1_a (level 1), made2_a, ...
    letter = lambda i: chr(ord("a") + i % 26) + (str(i // 26) if i >= 26 else "")  # noqa: E731
    names = [f"raw_{letter(i)}" for i in range(R)]
    names += [f"made{levels[g]}_{letter(g - levels.index(levels[g]))}" for g in range(R, G)]
    K = integer((spec.resources[0], min(spec.resources[1], R)))
    resources = list(RESOURCE_NAMES[:K])

    price = np.zeros(G)
    niches = []
    for g in range(R):  # raw goods: from nothing, tied to a resource
        price[g] = int(rng.integers(5, 16))
        niches.append({"name": f"gather_{names[g]}", "outputs": {names[g]: int(rng.integers(2, 4))},
                       "labour": round(uniform(spec.labour), 2), "affinity": resources[g % K]})

    def recipe(g: int) -> tuple[dict, dict]:
        """Inputs from lower levels (one from the level just below) and the output quantity
        that makes the output worth ``markup`` times the inputs at base prices."""
        below = [h for h in range(G) if levels[h] == levels[g] - 1]
        lower = [h for h in range(G) if levels[h] < levels[g]]
        k = min(integer(spec.inputs), len(lower))
        first = int(rng.choice(below))
        rest = [h for h in lower if h != first]
        chosen = [first] + [int(h) for h in rng.choice(rest, size=k - 1, replace=False)] if k > 1 else [first]
        ins = {names[h]: int(rng.integers(1, 3)) for h in chosen}
        return ins, {names[g]: int(rng.integers(1, 3))}

    for g in range(R, G):  # processed goods, level by level
        ins, outs = recipe(g)
        value_in = sum(q * price[names.index(n)] for n, q in ins.items())
        price[g] = max(1, math.ceil(uniform(spec.markup) * value_in / outs[names[g]]))
        niches.append({"name": f"make_{names[g]}", "inputs": ins, "outputs": outs,
                       "labour": round(uniform(spec.labour), 2)})

    # the public project: 1-2 goods in (not the top level's), public units out
    pool = [h for h in range(G) if levels[h] < depth] or list(range(G))
    k = min(int(rng.integers(1, 3)), len(pool))
    builder = {"name": "builder", "inputs": {names[int(h)]: int(rng.integers(1, 3)) for h in rng.choice(pool, k, replace=False)},
               "public": integer(spec.public), "labour": round(uniform(spec.labour), 2), "learn": 0.05}

    extra = max(0, integer(spec.niches) - (G + 1))
    for i in range(extra):  # second recipes of processed goods, value-adding at base prices by their quantity
        g = int(rng.integers(R, G))
        ins, _ = recipe(g)
        value_in = sum(q * price[names.index(n)] for n, q in ins.items())
        q_out = max(1, math.ceil(uniform(spec.markup) * value_in / price[g]))
        niches.append({"name": f"make_{names[g]}_{i + 2}", "inputs": ins, "outputs": {names[g]: q_out},
                       "labour": round(uniform(spec.labour), 2)})
    niches.append(builder)

    consumer = [g for g in range(G) if levels[g] > 0 or rng.random() < 0.5]
    weights = rng.dirichlet(np.full(len(consumer), spec.utility_concentration))
    weights = np.maximum(weights, 0.02)
    weights = weights / weights.sum()
    goods = []
    for g in range(G):
        eat = g in consumer
        top = max(2, int(round(60 / price[g])))  # cheap goods more plentiful
        goods.append({
            "name": names[g], "utility": round(float(weights[consumer.index(g)]), 4) if eat else 0.0,
            "perish": round(uniform(spec.perish), 3), "consume": round(uniform(spec.consume), 3) if eat else 0.0,
            "base_price": int(price[g]), "endowment": [0, min(top, 20)],
        })
    return {"resources": resources, "goods": goods, "niches": niches}


def generate(seed: int, spec: CatalogueSpec = CatalogueSpec(), first_best: bool = True, **fields: Any) -> EconomyConfig:
    """The catalogue of ``seed`` under ``spec``: the first of ``spec.attempts`` draws that
    meets every guarantee (:func:`check`; ``first_best=False`` leaves out the planner's
    check, which compiles and solves the economy). ``fields``: other top-level economy
    values (``num_agents=...``). Raises ConfigError naming the guarantee no draw met."""
    if seed < 0:
        raise ConfigError(f"catalogue seed {seed}: must be 0 or more")
    failures: dict[str, int] = {}
    for attempt in range(spec.attempts):
        try:  # a draw the economy refuses (e.g. a base price above market.max_price) is a failed draw
            cfg = economy_from_dict({**_draw(seed, attempt, spec), **fields})
        except ConfigError as err:
            cfg, why = None, f"invalid economy: {str(err).splitlines()[-1].strip()}"
        else:
            why = check(cfg, spec, first_best=first_best)
        if not why:
            return cfg
        kind = why.split(":")[0]
        failures[kind] = failures.get(kind, 0) + 1
    raise ConfigError(f"catalogue seed {seed}: no draw of {spec.attempts} met the guarantees ("
                      + "; ".join(f"{k}: {v} draws" for k, v in failures.items())
                      + "); widen spec.niches or spec.utility_concentration, or raise spec.attempts")


_DRAWN: dict[str, tuple[EconomyConfig, ...]] = {}  # catalogue_configs' cache (drawing checks the first-best)


def catalogue_configs(cfg: EconomyConfig, which: str = "train") -> tuple[EconomyConfig, ...]:
    """The catalogues of ``cfg.catalogues`` (``which``: ``"train"`` or ``"held_out"``), each
    drawn by :func:`generate` with every other setting of ``cfg`` (agents, markets, market,
    project, treasury, world, ...). Cached per process."""
    c = cfg.catalogues
    if c is None:
        raise ConfigError("economy.catalogues is not set")
    if which not in ("train", "held_out"):
        raise ConfigError(f"catalogues {which!r}: expected 'train' or 'held_out'")
    seeds = c.train_seeds if which == "train" else c.held_out_seeds
    spec = CatalogueSpec.model_validate(dict(c.spec))
    fields = cfg.model_dump(mode="json", exclude={"goods", "niches", "resources", "catalogues"})
    key = json.dumps([list(seeds), spec.model_dump(mode="json"), fields, c.first_best], sort_keys=True)
    if key not in _DRAWN:
        _DRAWN[key] = tuple(generate(s, spec, first_best=c.first_best, **fields) for s in seeds)
    return _DRAWN[key]


def padded_sizes(cfg: EconomyConfig):
    """The sizes every catalogue of ``cfg.catalogues``' spec fits (its largest goods, niches
    and resources counts), so training and held-out catalogues play one network."""
    from economy.catalogues import Sizes

    spec = CatalogueSpec.model_validate(dict(cfg.catalogues.spec))
    return Sizes(spec.goods[1], spec.niches[1], spec.resources[1])


def economy_for(cfg: EconomyConfig, which: str = "train", checked: bool = False):
    """The economy a run plays: ``Economy(cfg)``, or with ``cfg.catalogues`` the padded
    economy of its ``which`` catalogues at :func:`padded_sizes`."""
    from economy import Economy

    if cfg.catalogues is None:
        return Economy(cfg, checked=checked)
    return Economy(cfg, checked=checked, catalogues=catalogue_configs(cfg, which), sizes=padded_sizes(cfg))


def economy_names(cfg: EconomyConfig):
    """``(niches, goods)`` names of the economy a run plays: the catalogue's, or a padded
    economy's slots (:func:`economy.catalogues.slot_names`)."""
    from collections import namedtuple

    from economy.catalogues import slot_names

    names = (cfg.niche_names, cfg.good_names) if cfg.catalogues is None else slot_names(padded_sizes(cfg))
    return namedtuple("EconomyNames", "niches goods")(*names)


def check(cfg: EconomyConfig, spec: CatalogueSpec | None = None, first_best: bool = True) -> str:
    """'' when ``cfg`` meets the generator's guarantees, else the first one it breaks."""
    from analysis import frontier

    allowed = np.ones(cfg.num_niches, bool)
    made, eat = frontier.producible(cfg, allowed), frontier.consumer_goods(cfg)
    missing = [g for g, e, m in zip(cfg.good_names, eat, made) if e and not m]
    if missing:
        return f"unproducible: no chain makes the consumer goods {', '.join(missing)}"
    price = {g.name: g.base_price for g in cfg.goods}
    for n in cfg.niches:
        if n.public and not n.outputs:
            continue  # the public project's recipe: its value is the project
        out = sum(q * price[g] for g, q in n.outputs.items())
        into = sum(q * price[g] for g, q in n.inputs.items())
        if out <= into:
            return f"destroys value: {n.name} turns {into} of inputs into {out} at base prices"
    if first_best:
        fb = frontier.first_best(cfg, worlds=spec.first_best_worlds if spec else 2)
        used = int(np.sum(np.asarray(fb["shares"]) >= ACTIVE))
        if used * 2 < cfg.num_niches:
            return f"first-best too narrow: it uses {used} of {cfg.num_niches} niches"
    return ""


def to_yaml(cfg: EconomyConfig) -> str:
    """The catalogue as an economy YAML file (resources, goods and niches, defaults left
    out): ``load_config`` of it gives the same catalogue."""
    import yaml

    data = cfg.model_dump(mode="json", exclude_defaults=True)
    keep = {k: data[k] for k in ("resources", "goods", "niches") if k in data}
    return yaml.safe_dump(keep, sort_keys=False, default_flow_style=None)
