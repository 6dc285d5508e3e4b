"""Typed, frozen economy configuration (pydantic) with YAML loading and dotted overrides.

A config file is YAML. It may name a ``base:`` file (path relative to itself) that it
extends: mappings merge recursively, and lists of named entries (``goods``, ``niches``)
merge by ``name`` so that a preset adds or changes one niche with one entry. A preset
file holds the economy under an ``economy:`` section next to other sections (``simulate``,
``train``, ``mesh``: :mod:`selfplay.config`); :func:`load_config` accepts either form.

Every bad value stops at load time with :class:`ConfigError`, whose message names the
offending key (as a dotted path) and value.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Iterable, Mapping

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

INT32_MAX = 2**31 - 1
FLOAT32_EXACT = 2**24  # integers below this are exact in float32

NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it."""


# ---- nearest valid sizes ---------------------------------------------------------------


def divisors(n: int) -> list[int]:
    """The positive divisors of ``n >= 1``, ascending (trial division up to sqrt(n))."""
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return small + large[::-1]


def nearest_sizes(value: int, candidates: Iterable[int], valid: Any = None) -> tuple[int | None, int | None]:
    """The nearest of ``candidates`` below and above ``value`` (``None`` where there is
    none) that pass ``valid`` (a predicate; all of them when ``None``). Candidates are tried
    nearest first, so ``valid`` runs only until each side has its answer."""
    below = sorted((c for c in set(candidates) if c < value), reverse=True)
    above = sorted(c for c in set(candidates) if c > value)
    pick = lambda side: next((c for c in side if valid is None or valid(c)), None)  # noqa: E731
    return pick(below), pick(above)


def suggest_sizes(setting: str, value: int, candidates: Iterable[int], valid: Any = None, note: str = "") -> str:
    """``nearest valid SETTING: B below, A above`` (``none below`` / ``none above`` on a
    side without one) for a size that breaks a divisibility rule: ``candidates`` are the
    values the rule allows, ``valid`` (optional) the predicate of every other size rule.
    ``note`` follows the setting's name (e.g. what else adds to it)."""
    below, above = nearest_sizes(value, candidates, valid)
    if below is None and above is None:
        return f"no valid {setting}{note} with the other sizes as they are"
    side = lambda x, where: f"none {where}" if x is None else f"{x} {where}"  # noqa: E731
    return f"nearest valid {setting}{note}: {side(below, 'below')}, {side(above, 'above')}"


class FrozenMap(dict):
    """A read-only, hashable ``dict`` (recipes and rule parameters of frozen configs)."""

    def _readonly(self, *args, **kwargs):
        raise TypeError("config mappings are frozen; use apply_overrides or model_copy(update=...)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _readonly

    def __hash__(self):
        return hash(tuple(sorted(self.items())))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


Recipe = Annotated[dict[str, NonNegInt], AfterValidator(FrozenMap)]
Params = Annotated[dict[str, float], AfterValidator(FrozenMap)]


FLOAT_LIMIT = 1e30  # |float| in a config: sums and products of a few stay finite in float32


def check_number_bounds(v: Any) -> Any:
    """Every integer of a config (also inside tuples and mappings) fits in int32 and every
    float stays below :data:`FLOAT_LIMIT`: the simulator's arrays are int32/float32, so a
    larger number could only overflow later."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and not -INT32_MAX <= v <= INT32_MAX:
        raise ValueError(f"{v} does not fit in a 32-bit integer (|value| <= {INT32_MAX})")
    if isinstance(v, float) and abs(v) > FLOAT_LIMIT:
        raise ValueError(f"{v} is too large for float32 arithmetic (|value| <= {FLOAT_LIMIT:g})")
    if isinstance(v, (tuple, list)):
        for x in v:
            check_number_bounds(x)
    if isinstance(v, dict):
        for x in v.values():
            check_number_bounds(x)
    return v


class Frozen(BaseModel):
    """Frozen, unknown keys refused, no NaN or infinite floats, every integer within int32 and
    every float within :data:`FLOAT_LIMIT` (:func:`check_number_bounds`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _int32(cls, v):
        return check_number_bounds(v)


class GoodConfig(Frozen):
    """One tradable good."""

    name: str  # unique identifier used by recipes
    utility: float = Field(0.0, ge=0.0)  # Cobb-Douglas weight in consumption (normalised over goods)
    perish: Fraction = 0.0  # fraction of holdings that spoils each step
    consume: Fraction = 0.3  # fraction of holdings eaten each step (goods with utility > 0)
    base_price: int = Field(10, ge=1)  # initial price in money units per unit
    endowment: tuple[NonNegInt, NonNegInt] = (0, 10)  # initial holding drawn uniformly in [lo, hi]

    @model_validator(mode="after")
    def _check(self):
        if self.endowment[0] > self.endowment[1]:
            raise ValueError(f"endowment range {list(self.endowment)} has lo > hi")
        return self


class NicheConfig(Frozen):
    """A profession: a recipe turning inputs into outputs, scaled by skill and local resources."""

    name: str
    inputs: Recipe = FrozenMap()  # goods consumed per unit of work
    outputs: Recipe = FrozenMap()  # goods produced per unit of work
    public: NonNegInt = 0  # public-project units produced per unit of work (collaboration)
    labour: float = Field(1.0, gt=0.0)  # units of work per step at full skill and richness 1
    learn: float = Field(0.1, gt=0.0, le=1.0)  # skill gain rate when practising
    forget: float = Field(0.02, ge=0.0, lt=1.0)  # skill decay rate when idle
    affinity: str | None = None  # resource whose local richness scales output
    rule: str | None = None  # name of a registered Python production rule (see economy.registry)
    params: Params = FrozenMap()  # extra parameters passed to the rule

    @model_validator(mode="after")
    def _check(self):
        if not any(self.inputs.values()) and not any(self.outputs.values()) and self.public == 0:
            raise ValueError(f"niche {self.name!r} has neither inputs nor outputs")
        if not any(self.outputs.values()) and self.public == 0:
            raise ValueError(f"niche {self.name!r} has inputs but no outputs")
        return self


class MarketConfig(Frozen):
    """Call-auction market settings."""

    price_ticks: int = Field(64, ge=3, le=1024)  # L: size of the price-tick grid around the last price
    tick_size: float = Field(0.03, gt=0.0, le=1.0)  # relative price step between ticks
    quantity_levels: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # order sizes an agent can choose
    min_price: int = Field(1, ge=1)
    max_price: int = Field(100_000, ge=1)

    @field_validator("quantity_levels")
    @classmethod
    def _levels(cls, v):
        if not v or any(q <= 0 for q in v) or list(v) != sorted(set(v)):
            raise ValueError(f"quantity_levels must be positive and strictly increasing, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.min_price > self.max_price:
            raise ValueError(f"min_price {self.min_price} > max_price {self.max_price}")
        return self


class ProjectConfig(Frozen):
    """Public projects: a per-market stock that raises every local producer's output."""

    decay: Fraction = 0.05  # fraction of the stock lost each step
    gain: float = Field(0.5, ge=0.0)  # maximal productivity bonus (output x (1 + gain))
    half: float = Field(200.0, gt=0.0)  # stock at which half the bonus is reached


class TreasuryConfig(Frozen):
    """A public treasury per market, inside the exact money ledger: a sales tax on what
    sellers earn funds procurement of public-project units and, optionally, wages per unit
    of work in named niches (a subsidy that can make a niche whose output the market
    underpays worth working). The defaults (no tax, no pay, no wages) leave the economy
    exactly as without a treasury."""

    tax: Fraction = 0.0  # fraction of each seller's proceeds this step (floored) moved to its market's treasury
    pay: NonNegInt = 0  # money per public-project unit produced, paid to its producer from the market's treasury
    wages: Recipe = FrozenMap()  # niche name -> money per unit of work there, paid from the market's treasury (frozen map)


class WorldConfig(Frozen):
    """Distributions of procedurally generated worlds (drawn by ``reset``)."""

    richness_sigma: float = Field(0.5, ge=0.0)  # log-normal spread of market resource richness
    preference_concentration: float = Field(20.0, gt=0.0)  # Dirichlet concentration of tastes
    recipe_jitter: float = Field(0.1, ge=0.0)  # log-normal spread of each niche's labour per world
    price_jitter: float = Field(0.1, ge=0.0)  # log-normal spread of initial prices per market
    skill_init: tuple[Fraction, Fraction] = (0.0, 0.1)  # initial skill range
    cash: tuple[NonNegInt, NonNegInt] = (200, 1000)  # initial money range per agent
    eval_seed_start: int = Field(1_000_000, ge=1)  # world seeds >= this are held out for evaluation

    @model_validator(mode="after")
    def _check(self):
        for name in ("skill_init", "cash"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} range [{lo}, {hi}] has lo > hi")
        return self


HELD_OUT_CATALOGUE_START = 1_000_000  # held_out: N means catalogue seeds 1_000_000 .. 1_000_000 + N - 1


class CataloguesConfig(Frozen):
    """A distribution of generated catalogues (``analysis.catalogue``) that one padded
    economy plays (``economy.catalogues``): training worlds draw from ``train``, ``agora eval
    --catalogues held_out`` plays ``held_out``. Each catalogue shares every other setting of
    this economy (its goods, niches and resources are only a template)."""

    spec: Annotated[dict[str, Any], AfterValidator(FrozenMap)] = FrozenMap()  # analysis.catalogue.CatalogueSpec fields (ranges of goods, niches, depth, ...)
    train: int | tuple[int, ...] = 8  # a count (seeds 0..n-1) or a list of catalogue seeds
    held_out: int | tuple[int, ...] = 4  # a count (seeds 1_000_000..) or a list, disjoint from train
    first_best: bool = True  # check each catalogue's first-best guarantee when drawing it (compiles an economy each)

    @model_validator(mode="after")
    def _seeds(self):
        t, h = self.train_seeds, self.held_out_seeds
        for name, v in (("train", t), ("held_out", h)):
            if not v:
                raise ValueError(f"{name}: at least one catalogue seed")
            if len(set(v)) != len(v) or min(v) < 0:
                raise ValueError(f"{name}={list(v)}: seeds must be distinct non-negative integers")
        both = sorted(set(t) & set(h))
        if both:
            raise ValueError(f"train and held_out share catalogue seeds {both}: held-out catalogues must be unseen")
        from economy.catalogues import CatalogueSpec  # local import: it imports this module

        try:
            CatalogueSpec.model_validate(dict(self.spec))
        except ValidationError as e:  # re-raised under this field's name
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise ValueError(f"spec{'.' + loc if loc else ''}: {err['msg']}") from None
        return self

    @property
    def train_seeds(self) -> tuple[int, ...]:
        return tuple(range(self.train)) if isinstance(self.train, int) else tuple(self.train)

    @property
    def held_out_seeds(self) -> tuple[int, ...]:
        if isinstance(self.held_out, int):
            return tuple(range(HELD_OUT_CATALOGUE_START, HELD_OUT_CATALOGUE_START + self.held_out))
        return tuple(self.held_out)


class EconomyConfig(Frozen):
    """The whole economy. Derived sizes are properties, computed from the fields."""

    num_agents: int = Field(4096, ge=1)  # N
    num_markets: int = Field(4, ge=1)  # M; N must be divisible by M
    episode_length: int = Field(200, ge=1)  # steps until ``truncated``
    max_holding: int = Field(1000, ge=1)  # cap on any good held by one agent (output beyond it is not produced)
    skill_floor: Fraction = 0.25  # output multiplier of an unskilled worker (1.0 at full skill)
    history_decay: float = Field(0.1, gt=0.0, le=1.0)  # EMA rate of each agent's niche history
    collaboration_scale: float = Field(10.0, gt=0.0)  # public units per unit of collaboration reward
    observe_values: bool = False  # observations also show what a step of work in each niche would earn now (J more)
    # steps an agent keeps the niche it takes: agent i may change niche only when (step + i) % niche_tenure == 0
    # (and at a world's first step); in between its niche action is ignored (1: it chooses every step)
    niche_tenure: int = Field(1, ge=1, le=10_000)
    resources: tuple[str, ...] = ()  # local resources that niches may have an affinity to
    goods: tuple[GoodConfig, ...]
    niches: tuple[NicheConfig, ...]
    market: MarketConfig = MarketConfig()
    project: ProjectConfig = ProjectConfig()
    treasury: TreasuryConfig = TreasuryConfig()
    world: WorldConfig = WorldConfig()
    catalogues: CataloguesConfig | None = None  # play a distribution of generated catalogues (padded)

    # ---- derived -------------------------------------------------------------------
    @property
    def agents_per_market(self) -> int:
        return self.num_agents // self.num_markets

    @property
    def num_goods(self) -> int:
        return len(self.goods)

    @property
    def num_niches(self) -> int:
        return len(self.niches)

    @property
    def good_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.goods)

    @property
    def niche_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.niches)

    # ---- cross-field checks ----------------------------------------------------------
    @model_validator(mode="after")
    def _check(self):
        errors = []
        if self.num_agents % self.num_markets:
            n, m = self.num_agents, self.num_markets
            multiples = [x for x in ((n // m) * m, (n // m + 1) * m) if 1 <= x <= INT32_MAX]
            errors.append(
                f"num_agents={n} is not divisible by num_markets={m} (markets are contiguous blocks of equal size): "
                f"{suggest_sizes('num_agents', n, multiples)}, or {suggest_sizes('num_markets', m, divisors(n))}"
            )
        goods = [g.name for g in self.goods]
        if len(goods) < 1:
            errors.append("goods: at least one good is required")
        _dupes("goods", goods, errors)
        _dupes("niches", [n.name for n in self.niches], errors)
        _dupes("resources", list(self.resources), errors)
        if len(self.niches) < 1:
            errors.append("niches: at least one niche is required")
        if not any(g.utility > 0 for g in self.goods):
            errors.append("goods: at least one good needs utility > 0")
        from economy.registry import PRODUCTION_RULES  # local import: registry imports nothing from here

        for j, n in enumerate(self.niches):
            for field in ("inputs", "outputs"):
                for good in getattr(n, field):
                    if good not in goods:
                        errors.append(f"niches.{j}.{field}.{good}: unknown good {good!r} in niche {n.name!r} (goods: {goods})")
            if n.affinity is not None and n.affinity not in self.resources:
                errors.append(
                    f"niches.{j}.affinity: unknown resource {n.affinity!r} in niche {n.name!r} (resources: {list(self.resources)})"
                )
            if n.rule is not None and n.rule not in PRODUCTION_RULES:
                errors.append(
                    f"niches.{j}.rule: unknown production rule {n.rule!r} in niche {n.name!r} "
                    f"(registered: {sorted(PRODUCTION_RULES)})"
                )
        for name in self.treasury.wages:
            if name not in self.niche_names:
                errors.append(f"treasury.wages.{name}: unknown niche {name!r} (niches: {list(self.niche_names)})")
        if self.treasury.wages and self.catalogues is not None:
            errors.append("treasury.wages: wages name niches of one catalogue; a padded economy (catalogues) has none")
        # Fixed-point bounds: every int32 sum that must be exact is taken within one market
        # (money never leaves its market; world totals are summed on the host in int64), so
        # the bounds are per market: agents_per_market x the largest value one agent's term
        # can take. A step's consumption of one good by one agent (inputs used, then eaten
        # or spoiled) is at most twice max_holding.
        b = self.agents_per_market
        if b * 2 * self.max_holding > INT32_MAX:
            errors.append(
                f"max_holding={self.max_holding}: agents_per_market*2*max_holding = {b * 2 * self.max_holding} must "
                f"stay below 2^31 (int32 ledger of a market: goods held, produced and consumed); use more markets"
            )
        if self.max_holding >= FLOAT32_EXACT:
            errors.append(f"max_holding={self.max_holding} must stay below 2^24 (exact float32 quotients)")
        if b * self.world.cash[1] > INT32_MAX:
            errors.append(
                f"world.cash={list(self.world.cash)}: agents_per_market*max cash = {b * self.world.cash[1]} must stay "
                f"below 2^31 (int32 money of a market: its agents' money and its treasury); use more markets"
            )
        if (self.market.quantity_levels[-1] + 1) * self.market.max_price * len(self.goods) > INT32_MAX:
            errors.append(f"market.max_price={self.market.max_price}: (largest quantity level+1)*max_price*goods must stay below 2^31")
        if self.market.max_price * self.max_holding > INT32_MAX:
            errors.append(f"market.max_price={self.market.max_price}: max_price*max_holding must stay below 2^31")
        if self.agents_per_market * self.market.quantity_levels[-1] >= FLOAT32_EXACT:
            errors.append(
                f"market.quantity_levels: agents_per_market*largest level must stay below 2^24 (exact order-book sums)"
            )
        for g in self.goods:
            if g.base_price > self.market.max_price or g.base_price < self.market.min_price:
                errors.append(f"goods.{g.name}.base_price={g.base_price} lies outside [min_price, max_price]")
            if g.endowment[1] > self.max_holding:
                errors.append(f"goods.{g.name}.endowment={list(g.endowment)} exceeds max_holding={self.max_holding}")
        if errors:
            raise ValueError("; ".join(errors))
        return self


def _dupes(what: str, names: list[str], errors: list[str]) -> None:
    seen = set()
    for name in names:
        if name in seen:
            errors.append(f"{what}: duplicate name {name!r}")
        seen.add(name)


# ---- loading ----------------------------------------------------------------------------


def deep_merge(base: Any, over: Any) -> Any:
    """Merge ``over`` into ``base``: dicts recursively, lists of named dicts by ``name`` (an
    entry of ``over`` with ``remove: true`` deletes the entry of that name)."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else v
        return out
    if (
        isinstance(base, list)
        and isinstance(over, list)
        and all(isinstance(x, dict) and "name" in x for x in base + over)
    ):
        out = [dict(x) for x in base]
        index = {x["name"]: i for i, x in enumerate(out)}
        for x in over:
            if x.get("remove"):
                if x["name"] not in index:
                    raise ConfigError(f"remove: no entry named {x['name']!r} to remove (entries: {sorted(index)})")
                out = [y for y in out if y["name"] != x["name"]]
                index = {y["name"]: i for i, y in enumerate(out)}
            elif x["name"] in index:
                out[index[x["name"]]] = deep_merge(out[index[x["name"]]], x)
            else:
                index[x["name"]] = len(out)
                out.append(x)
        return out
    return copy.deepcopy(over)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config, resolving ``base:`` chains (relative to each file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {str(path)!r}")
    data = _read_mapping(path, str(path))
    return _resolve_bases(data, path.parent, seen=(path.resolve(),))


def _read_mapping(path: Path, where: str) -> dict:
    """The YAML mapping in ``path``; errors start with ``where``."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping, got {type(data).__name__}")
    return data


def _resolve_bases(data: dict, root: Path, seen: tuple) -> dict:
    data = dict(data)
    base = data.pop("base", None)
    for k, v in list(data.items()):
        if isinstance(v, dict) and "base" in v:
            data[k] = _resolve_bases(v, root, seen)
    if base is None:
        return data
    base_path = (root / base).resolve()
    if base_path in seen:
        raise ConfigError(f"base: circular include of {str(base_path)!r}")
    if not base_path.is_file():
        raise ConfigError(f"base: {base!r} not found (looked in {str(root)!r})")
    base_data = _read_mapping(base_path, f"base: {str(base_path)!r}")
    base_data = _resolve_bases(base_data, base_path.parent, seen + (base_path,))
    return deep_merge(base_data, data)


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML); list items by index or name."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                idx = _list_index(node, part, key)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {key!r}: {'.'.join(parts[:i])!r} is not a mapping or list")
    return data


def _list_index(node: list, part: str, key: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if not -len(node) <= idx < len(node):
            raise ConfigError(f"override {key!r}: index {idx} out of range (length {len(node)})")
        return idx
    for i, x in enumerate(node):
        if isinstance(x, dict) and x.get("name") == part:
            return i
    raise ConfigError(f"override {key!r}: no entry named {part!r}")


def _model_at(model: Any, loc: tuple) -> Any:
    """The pydantic model class at ``loc`` below ``model`` (list indices and dict keys
    pass through to the element type), or None."""
    import typing

    def unwrap(t):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
        for a in typing.get_args(t):
            m = unwrap(a)
            if m is not None:
                return m
        return None

    for part in loc:
        if model is None:
            return None
        if isinstance(part, int) or part not in getattr(model, "model_fields", {}):
            continue  # a list index or a mapping key: stay on the element type
        model = unwrap(model.model_fields[part].annotation)
    return model


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known`` to ``key``, or ``""``."""
    import difflib

    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_validation_error(e: ValidationError, data: Any = None, prefix: str = "", model: Any = None) -> str:
    """One line per problem: ``dotted.key = value: message``; an unknown key of ``model``
    (the validated class) names the closest known key."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        loc = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "<config>"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent = _model_at(model, tuple(err["loc"][:-1])) if model is not None else None
            hint = did_you_mean(err["loc"][-1], parent.model_fields) if parent is not None else ""
            lines.append(f"{loc}: unknown key (value {err['input']!r}){hint}")
        elif err["type"] in ("value_error", "assertion_error") and not err["loc"]:
            # A model-wide check names keys relative to the model ("niches.4.outputs: ..."):
            # give each part its section's prefix so the key is named in full.
            parts = msg.split("; ")
            if prefix:
                parts = [f"{prefix}{m}" if re.match(r"[A-Za-z_]\w*[.:=\[ ]", m) and not m.startswith(prefix) else m
                         for m in parts]
            lines += parts
        else:
            lines.append(f"{loc} = {err['input']!r}: {msg}")
    return "invalid config:\n  " + "\n  ".join(lines)


def economy_from_dict(data: Mapping, prefix: str = "") -> EconomyConfig:
    try:
        return EconomyConfig.model_validate(dict(data))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, data, prefix, EconomyConfig)) from None


def load_config(path: str | Path, *overrides: str, **fields: Any) -> EconomyConfig:
    """Load an :class:`EconomyConfig` from YAML.

    ``path`` is an economy file (``configs/economy/default.yaml``) or a preset with an
    ``economy:`` section. ``overrides`` are ``dotted.key=value`` strings and ``fields``
    top-level values (``num_agents=4096``); both are validated like the file.
    """
    data = load_yaml(path)
    if "economy" in data and isinstance(data["economy"], dict):
        data = data["economy"]
    data = apply_overrides(data, overrides)
    data.update(fields)
    return economy_from_dict(data)
