"""Catalogues as data: one economy that plays many catalogues (goods, recipes, niches).

A catalogue (an :class:`~economy.config.EconomyConfig`'s goods, niches and resources) is
normally compiled into constants of ``step``. Here it is padded to fixed maxima
(:class:`Sizes`: goods, niches, resources) and carried as arrays (:class:`Catalogue`) in
the world's state, so one compiled ``step`` plays any catalogue that fits, and a batch of
worlds (vmapped, or the markets of a sharded world) can each play its own.

Padding, and what keeps it from changing anything:

* a padded good has no utility, no endowment, no recipe that makes or uses it, base price
  1; the economy holds its orders at *hold* (``Economy.step``), so it is never held,
  traded or eaten;
* a padded niche has no inputs, outputs, public units or labour and is masked: an action
  that picks it rests (the policy gives it probability 0: :attr:`Catalogue.niches`);
* every random number the step draws per good is indexed as if the goods axis were the
  catalogue's own length (:func:`economy.rng.bits`' ``logical``), so the real goods of a
  padded world draw exactly what the unpadded world draws: the step of a padded world is
  the unpadded step bit for bit (tests/test_catalogues.py). A *reset* of a padded world
  draws at the padded shapes: its worlds follow the same distribution as the unpadded
  economy's, not the same draws.

The settings the catalogues share (agents, markets, the market, project, treasury, world
distributions, episode length, holdings cap) must be equal: :func:`check_shared` names the
first that is not. Production rules (``niches[*].rule``, code) are the economy's: it
compiles each distinct ``(niche slot, rule, params)`` of its catalogues once
(:func:`rule_keys`), and a catalogue says which of them it uses (:attr:`Catalogue.rules`),
so a catalogue with a rule the economy was not built with is refused.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from pydantic import Field, model_validator

from economy.config import ConfigError, EconomyConfig, Frozen
from economy.state import EconomyParams, compile_params

RESOURCE_NAMES = ("land", "coast", "forest", "hills", "river", "plains")


class CatalogueSpec(Frozen):
    """What :func:`generate` draws from (every range inclusive)."""

    goods: tuple[int, int] = (5, 8)  # number of goods
    niches: tuple[int, int] = (6, 10)  # number of niches (at least one per good, plus the builder)
    raw: tuple[int, int] = (2, 4)  # goods made from nothing by a niche tied to a resource
    resources: tuple[int, int] = (2, 4)
    depth: int = Field(2, ge=1, le=3)  # the longest chain of recipes above a raw good
    inputs: tuple[int, int] = (1, 3)  # goods per recipe
    utility_concentration: float = Field(1.0, gt=0.0)  # Dirichlet concentration of the utility weights
    perish: tuple[float, float] = (0.0, 0.2)
    consume: tuple[float, float] = (0.1, 0.3)
    labour: tuple[float, float] = (2.0, 4.0)  # units of work per step at full skill
    markup: tuple[float, float] = (1.2, 1.6)  # output value over input value at base prices (> 1)
    public: tuple[int, int] = (3, 6)  # public units per unit of the builder's work
    attempts: int = Field(20, ge=1, le=1000)  # draws per seed before the spec is declared unmeetable
    first_best_worlds: int = Field(2, ge=1, le=64)  # evaluation worlds of the first-best check

    @model_validator(mode="after")
    def _ranges(self):
        bounds = {"goods": (2, 40), "niches": (3, 60), "raw": (1, 20), "resources": (1, len(RESOURCE_NAMES)),
                  "inputs": (1, 3), "perish": (0.0, 0.99), "consume": (0.01, 1.0), "labour": (0.1, 100.0),
                  "markup": (1.0, 10.0), "public": (1, 100)}
        for name, (lo_b, hi_b) in bounds.items():
            lo, hi = getattr(self, name)
            if not lo_b <= lo <= hi <= hi_b:
                raise ValueError(f"{name}: expected {lo_b} <= low <= high <= {hi_b}, got [{lo}, {hi}]")
        if self.markup[0] <= 1.0:
            raise ValueError(f"markup: the low end must exceed 1 (a markup of {self.markup[0]} lets a recipe "
                             "destroy value at base prices)")
        if self.niches[1] < self.goods[0] + 1:
            raise ValueError(f"niches: at most {self.niches[1]} cannot give each of at least {self.goods[0]} goods a "
                             "niche that makes it, plus the builder")
        if self.goods[0] < self.raw[0] + self.depth:
            raise ValueError(f"goods: at least {self.goods[0]} cannot always hold {self.raw[0]} raw goods and one good at "
                             f"each of {self.depth} levels of depth (raise goods' low end to {self.raw[0] + self.depth})")
        if self.resources[0] > self.raw[0]:
            raise ValueError(f"resources: at least {self.resources[0]} cannot each be tied to one of at least "
                             f"{self.raw[0]} raw goods (lower resources' low end to {self.raw[0]})")
        return self


CATALOGUE_FIELDS = ("goods", "niches", "resources")  # what differs between the catalogues of one economy
NOT_SHARED = CATALOGUE_FIELDS + ("observe_values", "catalogues")


class Sizes(NamedTuple):
    """Padded sizes: goods ``G``, niches ``J`` (rest is index ``J``), resources ``R``."""

    goods: int
    niches: int
    resources: int


@struct.dataclass
class Catalogue:
    """One catalogue's arrays, padded to :class:`Sizes` (a leading axis when stacked)."""

    params: EconomyParams  # padded (see the module docstring); rest is row J of inputs/outputs/public
    endowment: jax.Array  # int32 [G, 2] initial holding range (padded goods: [0, 0])
    goods: jax.Array  # bool [G] real goods
    niches: jax.Array  # bool [J] real niches
    num_goods: jax.Array  # int32 [] real goods (the logical length of per-good random draws)
    per_price_unit: jax.Array  # float32 [] 1 / mean base price of the real goods (value_added's money unit)
    rules: jax.Array  # bool [K] which of the economy's production rules (rule_keys) this catalogue uses


RuleKey = tuple  # (niche slot, rule name, sorted params)


def _rules_of(cfg: EconomyConfig) -> list[RuleKey]:
    return [(j, n.rule, tuple(sorted(n.params.items()))) for j, n in enumerate(cfg.niches) if n.rule is not None]


def rule_keys(cfgs: Sequence[EconomyConfig]) -> tuple[RuleKey, ...]:
    """Every distinct ``(niche slot, rule, params)`` of ``cfgs``, in first-seen order."""
    out: list[RuleKey] = []
    for c in cfgs:
        out += [k for k in _rules_of(c) if k not in out]
    return tuple(out)


def sizes_of(cfgs: Sequence[EconomyConfig]) -> Sizes:
    """The smallest sizes every catalogue of ``cfgs`` fits."""
    return Sizes(max(c.num_goods for c in cfgs), max(c.num_niches for c in cfgs), max(len(c.resources) for c in cfgs))


def check_shared(cfgs: Sequence[EconomyConfig]) -> None:
    """Raise :class:`ConfigError` naming the first setting (other than the catalogue) in
    which a config differs from the first."""
    base = cfgs[0].model_dump(mode="json", exclude=set(NOT_SHARED))
    for i, c in enumerate(cfgs):
        other = c.model_dump(mode="json", exclude=set(NOT_SHARED))
        for key in base:
            if other[key] != base[key]:
                raise ConfigError(f"catalogue {i}: economy.{key} differs from catalogue 0's ({other[key]!r} vs "
                                  f"{base[key]!r}); catalogues of one economy share every setting but goods, "
                                  "niches and resources")


def pad(cfg: EconomyConfig, sizes: Sizes, rules: Sequence[RuleKey] | None = None) -> Catalogue:
    """``cfg``'s catalogue padded to ``sizes`` for an economy whose production rules are
    ``rules`` (default: ``cfg``'s own); ConfigError naming a size it exceeds or a rule the
    economy lacks."""
    G, J, R = cfg.num_goods, cfg.num_niches, len(cfg.resources)
    for name, have, cap in (("goods", G, sizes.goods), ("niches", J, sizes.niches), ("resources", R, sizes.resources)):
        if have > cap:
            raise ConfigError(f"catalogue with {have} {name} does not fit the padded economy's {cap} {name}")
    rules = rule_keys([cfg]) if rules is None else tuple(rules)
    for k in _rules_of(cfg):
        if k not in rules:
            raise ConfigError(f"niche {cfg.niches[k[0]].name!r} (slot {k[0]}) has production rule {k[1]!r} with params "
                              f"{dict(k[2])}, which this economy was not built with (its rules: {list(rules)})")
    p = jax.tree.map(np.asarray, compile_params(cfg))
    Gm, Jm, Rm = sizes

    def niche_goods(x):  # [J+1, G] -> [Jm+1, Gm], rest row last
        out = np.zeros((Jm + 1, Gm), x.dtype)
        out[:J, :G] = x[:J]
        return out

    def per_good(x, fill):
        return np.concatenate([x, np.full(Gm - G, fill, x.dtype)])

    def per_niche(x, fill):
        return np.concatenate([x, np.full(Jm - J, fill, x.dtype)])

    public = np.zeros(Jm + 1, np.int32)
    public[:J] = p.public[:J]
    affinity = np.where(p.affinity >= R, Rm, p.affinity).astype(np.int32)  # "no resource" is the last column
    params = EconomyParams(
        inputs=niche_goods(p.inputs), outputs=niche_goods(p.outputs), public=public,
        learn=per_niche(p.learn, 0.0), forget=per_niche(p.forget, 0.0), affinity=per_niche(affinity, Rm),
        labour=per_niche(p.labour, 0.0), utility=per_good(p.utility, 0.0), consume=per_good(p.consume, 0.0),
        perish=per_good(p.perish, 0.0), base_price=per_good(p.base_price, 1), levels=p.levels,
        tick_factors=p.tick_factors,
    )
    endowment = np.zeros((Gm, 2), np.int32)
    endowment[:G] = [g.endowment for g in cfg.goods]
    return Catalogue(
        params=jax.tree.map(jnp.asarray, params),
        endowment=jnp.asarray(endowment),
        goods=jnp.arange(Gm) < G,
        niches=jnp.arange(Jm) < J,
        num_goods=jnp.int32(G),
        per_price_unit=jnp.float32(1.0 / float(np.mean([g.base_price for g in cfg.goods]))),
        rules=jnp.asarray([k in _rules_of(cfg) for k in rules], bool).reshape(len(rules)),
    )


GOOD_FEATURES = ("real", "utility", "log_price", "perish", "consume")  # per good, in this order
NICHE_FEATURES = ("real", "public", "log_labour")  # per niche, then its inputs [G] and outputs [G]


def features(cat: Catalogue, labour: jax.Array) -> jax.Array:
    """float32 ``[G * 5 + J * (3 + 2 G)]``: what each good and niche of a world's catalogue is,
    the padded observation's last block (:meth:`economy.Economy.observe`). Per good
    (:data:`GOOD_FEATURES`): real, utility weight, log base price over the catalogue's mean,
    perish and consume rates; then per niche (:data:`NICHE_FEATURES`): real, public units
    per unit of work / 10, log of this world's labour, then its inputs and outputs per unit
    of work over the goods. ``labour`` is the world's ``state.labour``."""
    p = cat.params
    J = p.learn.shape[0]
    real_g = cat.goods.astype(jnp.float32)
    log_price = jnp.where(cat.goods, jnp.log(p.base_price.astype(jnp.float32) * cat.per_price_unit), 0.0)
    goods = jnp.stack([real_g, p.utility, log_price, p.perish, p.consume], -1)
    log_labour = jnp.where(cat.niches, jnp.log(jnp.maximum(labour, 1e-6)), 0.0)
    niches = jnp.concatenate([
        jnp.stack([cat.niches.astype(jnp.float32), p.public[:J].astype(jnp.float32) * 0.1, log_labour], -1),
        p.inputs[:J].astype(jnp.float32), p.outputs[:J].astype(jnp.float32)], -1)
    return jnp.concatenate([goods.reshape(-1), niches.reshape(-1)])


def feature_dim(sizes: Sizes) -> int:
    return sizes.goods * len(GOOD_FEATURES) + sizes.niches * (len(NICHE_FEATURES) + 2 * sizes.goods)


def stack(cats: Sequence[Catalogue]) -> Catalogue:
    """Catalogues of one size stacked on a new leading axis."""
    return jax.tree.map(lambda *x: jnp.stack(x), *cats)


def take(cats: Catalogue, i) -> Catalogue:
    """Catalogue ``i`` (may be traced) of a stack."""
    return jax.tree.map(lambda x: x[i], cats)


def pad_state(state, catalogue: Catalogue, sizes: Sizes):
    """A world of the unpadded economy (``state.catalogue`` None) as the padded economy's
    world of ``catalogue`` (``pad`` of the same config): the same agents and markets,
    padded goods empty at price 1, padded niches unskilled and untried. Stepping both with
    the same keys and actions gives the same real goods, money and rewards bit for bit."""
    G, J = state.goods.shape[1], state.skills.shape[1]
    dg, dj = sizes.goods - G, sizes.niches - J

    def cols(x, d, fill):
        return jnp.concatenate([x, jnp.full(x.shape[:-1] + (d,), fill, x.dtype)], -1)

    return state.replace(
        goods=cols(state.goods, dg, 0), skills=cols(state.skills, dj, 0.0), history=cols(state.history, dj, 0.0),
        preferences=cols(state.preferences, dg, 0.0), richness=cols(state.richness, dj, 1.0),
        labour=cols(state.labour, dj, 0.0), price=cols(state.price, dg, 1), volume=cols(state.volume, dg, 0),
        catalogue=catalogue,
    )


def slot_names(sizes: Sizes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(niches, goods)`` names of a padded economy's axes: slots (``slot_j``, ``good_g``)
    whose meaning is each world's catalogue's."""
    return tuple(f"slot_{j}" for j in range(sizes.niches)), tuple(f"good_{g}" for g in range(sizes.goods))


__all__ = ["CATALOGUE_FIELDS", "CatalogueSpec", "RESOURCE_NAMES", "Catalogue", "GOOD_FEATURES", "NICHE_FEATURES",
           "feature_dim", "features", "Sizes", "check_shared", "pad", "pad_state", "rule_keys", "sizes_of",
           "slot_names", "stack", "take"]

