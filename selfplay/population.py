"""Population-based training and the league, as pure functions of arrays.

Fitness is a named choice from :data:`FITNESS` (``train.pbt.fitness``); every function
there maps one update's :class:`FitnessInputs` to float32 ``[P]`` (higher is fitter), and
the trainer keeps a moving average (``fitness = (1 - a) * fitness + a * now``, with
``a = train.pbt.fitness_ema``; the first update sets it). Built in:

* ``utility``: the member's mean utility per agent-step;
* ``niche_shared``: that utility divided by the number of members (itself included)
  whose most worked niche is the member's own (fitness sharing);
* ``market_welfare``: the mean utility of ALL agents of the markets the member plays in,
  each market weighted by the share of the member's agents in it (:func:`layout_presence`), so
  a member whose agents pay into the public project is not selected against when its
  markets gain. (With every member in every market in equal numbers, as the ``mixed``
  layout has it, all members tie; PBT then copies nobody, see :func:`pbt_sources`. Under
  ``train.layout=villages`` members share markets with few others, and the fitness ranks
  the groups that share markets.)

:func:`exploit_explore` copies parameters and optimiser state of the sources (always),
their hyperparameters and reward weights as :class:`CopyRule` says (``train.pbt.inherit``),
then perturbs the copies' hyperparameters by their declared laws
(:func:`selfplay.variants.perturb`, factors ``train.pbt.perturb``).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from selfplay import variants


def layout_presence(player_of: np.ndarray, num_markets: int, num_members: int) -> np.ndarray:
    """float32 ``[P, M]``: the share of member ``p``'s agents in market ``m`` (rows sum to
    1), from the player of each agent ``player_of`` int ``[N]`` (markets are contiguous
    blocks of ``N / M`` agents; players ``0..P-1`` are the members). The ``presence`` of
    :class:`FitnessInputs`; host-side, once per trainer."""
    player_of = np.asarray(player_of)
    n = player_of.shape[0]
    counts = np.zeros((int(player_of.max()) + 1, num_markets))
    np.add.at(counts, (player_of, np.arange(n) // (n // num_markets)), 1.0)
    return (counts / counts.sum(-1, keepdims=True))[:num_members].astype(np.float32)


class FitnessInputs(NamedTuple):
    components: dict  # {component: float32 [P]} mean per agent-step of each reward component
    niche_counts: jax.Array  # int32 [P, J+1] agent-steps per niche (last: resting)
    market_utility: jax.Array  # float32 [M] mean utility per agent-step of all agents of each market
    presence: jax.Array  # float32 [P, M] share of member p's agents in market m (rows sum to 1)


FITNESS: dict[str, Callable[[FitnessInputs], jax.Array]] = {}


def register_fitness(name: str, fn: Callable[[FitnessInputs], jax.Array] | None = None, replace: bool = False):
    """Add a named fitness (``train.pbt.fitness``); usable as a decorator. Re-registering a
    name raises unless ``replace``."""

    def add(f):
        if name in FITNESS and not replace:
            raise ValueError(f"fitness {name!r} is already registered (replace=True to override)")
        FITNESS[name] = f
        return f

    return add if fn is None else add(fn)


@register_fitness("utility")
def utility_fitness(x: FitnessInputs) -> jax.Array:
    return x.components["utility"]


@register_fitness("niche_shared")
def niche_shared_fitness(x: FitnessInputs) -> jax.Array:
    dominant = jnp.argmax(x.niche_counts[:, :-1], -1)
    sharing = jnp.sum(dominant[:, None] == dominant[None, :], -1)
    return x.components["utility"] / sharing


@register_fitness("market_welfare")
def market_welfare_fitness(x: FitnessInputs) -> jax.Array:
    w = x.presence / jnp.sum(x.presence, -1, keepdims=True)
    return w @ x.market_utility


def update_fitness(previous: jax.Array, now: jax.Array, first: jax.Array, ema: float) -> jax.Array:
    """The running fitness: ``now`` at the first update, else ``(1 - ema) * previous + ema * now``."""
    return jnp.where(first, now, (1.0 - ema) * previous + ema * now)


def pbt_sources(fitness: jax.Array, fraction: float, founder: jax.Array | None = None,
                max_lineage_share: float = 1.0) -> jax.Array:
    """int32 ``[P]``: the member each slot copies. The bottom ``k = floor(P * fraction)``
    copy the top ``k`` (worst from best, second worst from second best, ...), but only from
    a strictly fitter member: ties (e.g. equal ``market_welfare``) copy nobody. Everyone
    else keeps itself.

    Diversity-preserving selection: with ``founder`` (int32 ``[P]``, the founding member
    each slot descends from) and ``max_lineage_share < 1``, a copy is skipped when it would
    give the source's lineage more than ``max(1, floor(max_lineage_share * P))`` slots, so
    no founder's descendants take over the population."""
    p = fitness.shape[0]
    k = int(p * fraction)
    own = jnp.arange(p, dtype=jnp.int32)
    if k == 0:
        return own
    order = jnp.argsort(fitness, stable=True).astype(jnp.int32)  # ascending
    bottom, top = order[:k], order[::-1][:k]
    better = fitness[top] > fitness[bottom]
    if founder is None or max_lineage_share >= 1.0:
        return own.at[bottom].set(jnp.where(better, top, bottom))
    cap = max(1, int(max_lineage_share * p))
    counts = jnp.zeros((p,), jnp.int32).at[founder].add(1)

    def copy(i, carry):  # pair i: bottom[i] copies top[i] if its lineage stays within the cap
        src, counts = carry
        c, s = bottom[i], top[i]
        fc, fs = founder[c], founder[s]
        after = counts[fs] + 1 - (fc == fs).astype(jnp.int32)
        ok = better[i] & (after <= cap)
        counts = jnp.where(ok, counts.at[fc].add(-1).at[fs].add(1), counts)
        return jnp.where(ok, src.at[c].set(s), src), counts

    src, _ = jax.lax.fori_loop(0, k, copy, (own, counts))
    return src


class PBTState(NamedTuple):
    fitness: jax.Array  # float32 [P] running fitness
    parent: jax.Array  # int32 [P] member copied at the last PBT event (own index if never)
    copied_at: jax.Array  # int32 [P] update of the last copy (-1 if never)
    generation: jax.Array  # int32 [P] number of copies in this slot's lineage
    founder: jax.Array  # int32 [P] founding member (slot at update 0) this slot's parameters descend from


def init_pbt(members: int) -> PBTState:
    own = jnp.arange(members, dtype=jnp.int32)
    return PBTState(
        fitness=jnp.zeros((members,), jnp.float32),
        parent=own,
        copied_at=jnp.full((members,), -1, jnp.int32),
        generation=jnp.zeros((members,), jnp.int32),
        founder=own,
    )


class Slots(NamedTuple):
    """What the member slots hold that PBT copies, each leaf ``[P, ...]``."""

    params: Any  # always copied (with anything else that must follow the parameters)
    opt_state: Any  # always copied
    hyper: dict  # {variant: [P]}: copied if inherited, then perturbed in every copied slot
    reward_weights: dict  # {component: [P]}: copied if inherited (by default a slot's condition)


class CopyRule(NamedTuple):
    """``train.pbt``'s rule for a copy: what is inherited beside parameters and optimiser
    state (``inherit``: ``"hyperparameters"``, ``"reward_weights"``) and the perturbation
    factors (``factors``, from ``train.pbt.perturb``)."""

    inherit: tuple[str, ...]
    factors: tuple[float, float]


def exploit_explore(slots: Slots, pbt: PBTState, src: jax.Array, key: jax.Array, update: jax.Array,
                    rule: CopyRule) -> tuple[Slots, PBTState]:
    """Slots with ``src != own`` copy the source's parameters and optimiser state
    (bit-identical), its hyperparameters if ``"hyperparameters" in rule.inherit`` and its
    reward weights if ``"reward_weights" in rule.inherit``; a copied slot's hyperparameters
    (inherited or its own) are then perturbed (:func:`selfplay.variants.perturb`, ``key``,
    ``rule.factors``). In ``pbt`` a copied slot takes the source's fitness and founder, its
    ``parent`` becomes the source, ``copied_at`` becomes ``update`` and ``generation`` the
    source's plus one. Returns ``(slots, pbt)``; the caller writes optimiser
    hyperparameters back into ``opt_state``."""
    params, opt_state, hyper, reward_weights = slots
    P = src.shape[0]
    copied = src != jnp.arange(P, dtype=jnp.int32)
    take = lambda x: x[src]
    params = jax.tree.map(take, params)
    opt_state = jax.tree.map(take, opt_state)
    if "hyperparameters" in rule.inherit:
        hyper = jax.tree.map(take, hyper)
    if "reward_weights" in rule.inherit:
        reward_weights = jax.tree.map(take, reward_weights)
    hyper = variants.perturb(key, hyper, copied, rule.factors)
    pbt = PBTState(
        fitness=pbt.fitness[src],
        parent=jnp.where(copied, src, pbt.parent),
        copied_at=jnp.where(copied, update, pbt.copied_at),
        generation=jnp.where(copied, pbt.generation[src] + 1, pbt.generation),
        founder=pbt.founder[src],
    )
    return Slots(params, opt_state, hyper, reward_weights), pbt


class LeagueState(NamedTuple):
    params: Any  # [K, ...] frozen snapshots
    source: jax.Array  # int32 [K] member the snapshot was taken from
    made_at: jax.Array  # int32 [K] update of the snapshot
    refreshes: jax.Array  # int32 [] snapshots taken so far


def init_league(params: Any, size: int, members: int) -> LeagueState:
    slots = jnp.arange(size, dtype=jnp.int32) % members
    return LeagueState(
        params=jax.tree.map(lambda x: x[slots], params),
        source=slots,
        made_at=jnp.zeros((size,), jnp.int32),
        refreshes=jnp.zeros((), jnp.int32),
    )


def refresh_league(league: LeagueState, params: Any, fitness: jax.Array, update: jax.Array) -> LeagueState:
    """Snapshot the fittest member into the oldest league slot (round robin over slots)."""
    size = league.source.shape[0]
    slot = league.refreshes % size
    best = jnp.argmax(fitness).astype(jnp.int32)
    return LeagueState(
        params=jax.tree.map(lambda l, p: l.at[slot].set(p[best]), league.params, params),
        source=league.source.at[slot].set(best),
        made_at=league.made_at.at[slot].set(update),
        refreshes=league.refreshes + 1,
    )


__all__ = [
    "FITNESS", "CopyRule", "FitnessInputs", "LeagueState", "PBTState", "Slots", "exploit_explore", "init_league", "init_pbt",
    "layout_presence", "pbt_sources", "refresh_league", "register_fitness", "update_fitness",
]
