"""Reward components: a registry of named, pure per-agent reward terms.

Member ``p`` of the population is trained on ``sum_c w[c][p] * component_c``, with its
weights ``w[c][p]`` drawn at start from ``train.variants.rewards.<c>: [lo, hi]`` (the
component's ``default`` range when the config does not name it). The weights are the
experimental condition of a slot: PBT does not copy them unless ``train.pbt.inherit``
lists ``reward_weights``.

Two kinds of component:

* ``level="agent"``: ``fn(step: StepData) -> float32 [N]``, computed inside the rollout
  from one environment step (its ``info``, the states before and after, the actions);
* ``level="member"``: ``fn(rollout: RolloutData) -> float32 [T, P, n]``, computed on the
  device once per update from the whole rollout (per member ``p`` and its agents ``n``),
  for terms that need every member's behaviour at once (e.g. how a member's niche mix
  differs from the rest of the population's).

Adding a component is one call, e.g. (the README's example, run by the tests)::

    from selfplay.rewards import register_component

    register_component("thrift", lambda s: s.state.money.astype("float32") * 1e-4)

then ``agora train CONFIG 'train.variants.rewards.thrift=[0.0, 0.1]'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp


class StepData(NamedTuple):
    """What an agent-level component sees of one environment step (agent axis first)."""

    info: dict  # the step's info (economy.Economy.step): utility, specialisation, collaboration, units, ...
    state: Any  # EconomyState after the step
    prev_state: Any  # EconomyState before the step
    actions: dict  # int32 actions of every agent, one entry per head


class RolloutData(NamedTuple):
    """What a member-level component sees of one update's rollout, member-major."""

    niche: jax.Array  # int32 [T, P, n] niche chosen by each member's agents (J = rest)
    units: jax.Array  # int32 [T, P, n] units of work done
    agent: dict  # {agent-level component name: float32 [T, P, n]}
    num_niches: int  # J


@dataclass(frozen=True)
class RewardComponent:
    name: str
    fn: Callable[[Any], jax.Array]
    level: Literal["agent", "member"]
    default: tuple[float, float]  # weight range when the config does not name it
    doc: str


REWARD_COMPONENTS: dict[str, RewardComponent] = {}


def register_component(
    name: str,
    fn: Callable[[Any], jax.Array] | None = None,
    *,
    level: Literal["agent", "member"] = "agent",
    default: tuple[float, float] = (0.0, 0.0),
    doc: str = "",
    replace: bool = False,
):
    """Register reward component ``name`` (usable as a decorator when ``fn`` is omitted).

    ``default``: the weight range ``[lo, hi]`` of members when the config does not name
    the component (``(0, 0)``: off). Re-registering a name raises unless ``replace``."""
    if level not in ("agent", "member"):
        raise ValueError(f"reward component {name!r}: level must be 'agent' or 'member', got {level!r}")
    if not name.isidentifier():
        raise ValueError(f"reward component name {name!r} must be an identifier (it is a config key)")
    lo, hi = default
    if lo > hi:
        raise ValueError(f"reward component {name!r}: default range {list(default)} has lo > hi")

    def add(f):
        if name in REWARD_COMPONENTS and not replace:
            raise ValueError(f"reward component {name!r} is already registered (replace=True to override)")
        REWARD_COMPONENTS[name] = RewardComponent(name, f, level, (float(lo), float(hi)), doc or (f.__doc__ or ""))
        return f

    return add if fn is None else add(fn)


def unregister_component(name: str) -> None:
    """Remove a registered component (tests and notebooks)."""
    REWARD_COMPONENTS.pop(name, None)


def component_names() -> tuple[str, ...]:
    """Registered components, in registration order (agent-level first, then member-level)."""
    agent = [c.name for c in REWARD_COMPONENTS.values() if c.level == "agent"]
    member = [c.name for c in REWARD_COMPONENTS.values() if c.level == "member"]
    return tuple(agent + member)


def agent_components(names, step: StepData) -> dict[str, jax.Array]:
    """``{name: float32 [N]}`` of the agent-level components among ``names``."""
    out = {}
    for c in names:
        comp = REWARD_COMPONENTS[c]
        if comp.level == "agent":
            out[c] = jnp.asarray(comp.fn(step), jnp.float32)
    return out


def member_components(names, rollout: RolloutData) -> dict[str, jax.Array]:
    """``{name: float32 [T, P, n]}`` of the member-level components among ``names``."""
    out = {}
    for c in names:
        comp = REWARD_COMPONENTS[c]
        if comp.level == "member":
            x = jnp.asarray(comp.fn(rollout), jnp.float32)
            out[c] = jnp.broadcast_to(x, rollout.niche.shape)
    return out


def weighted_reward(components: dict[str, jax.Array], weights: dict[str, jax.Array]) -> jax.Array:
    """``sum_c weights[c][p] * components[c][..., p, :]`` for components ``[..., P, n]`` and
    weights ``[P]``."""
    total = None
    for c, x in components.items():
        term = weights[c][:, None] * x
        total = term if total is None else total + term
    return total


# ---- built-in components -----------------------------------------------------------------
PMI_PSEUDOCOUNT = 1.0  # agent-steps added to every (member, niche) count before taking logs


def niche_pmi_table(niche: jax.Array, num_niches: int, pseudocount: float = PMI_PSEUDOCOUNT) -> jax.Array:
    """float32 ``[P, J+1]``: ``log pi_p(j) - log pibar(j)`` for each member ``p`` and niche
    ``j`` (0 for resting, column ``J``), from the niches ``[T, P, n]`` its agents worked in
    a rollout. ``pi_p(j) = (c_pj + a) / (c_p + a J)`` is member ``p``'s share of its working
    agent-steps in niche ``j`` and ``pibar(j) = (c_j + P a) / (c + P a J)`` the population's
    (``a``: ``pseudocount``), so identical members give 0 exactly."""
    J = num_niches
    P = niche.shape[1]
    counts = jnp.sum(jax.nn.one_hot(niche, J, dtype=jnp.float32), (0, 2))  # [P, J] (resting, J, is all zeros)
    a = pseudocount
    pm = (counts + a) / (jnp.sum(counts, -1, keepdims=True) + a * J)
    tot = jnp.sum(counts, 0)
    pbar = (tot + P * a) / (jnp.sum(tot) + P * a * J)
    table = jnp.log(pm) - jnp.log(pbar)[None, :]
    return jnp.concatenate([table, jnp.zeros((P, 1), jnp.float32)], -1)


def niche_pmi(r: RolloutData) -> jax.Array:
    """Member-level specialisation: an agent of member ``p`` working niche ``j`` is paid the
    pointwise mutual information ``log pi_p(j) - log pibar(j)`` of this rollout
    (:func:`niche_pmi_table`); resting pays 0. Its mean over a member's working agent-steps
    is KL(pi_p || pibar) and its population mean is I(member; niche) (nats), as in DIAYN:
    a member is paid for working niches the rest of the population does not."""
    table = niche_pmi_table(r.niche, r.num_niches)
    P = r.niche.shape[1]
    return table[jnp.arange(P)[None, :, None], r.niche]


register_component(
    "utility", lambda s: s.info["utility"], default=(1.0, 1.0),
    doc="log Cobb-Douglas utility of the basket eaten this step (the economy's own reward)",
)
register_component(
    "persistence", lambda s: s.info["specialisation"],
    doc="per agent: the agent's recent history in the niche it works now (sticking to a niche pays); 0 when resting",
)
register_component(
    "collaboration", lambda s: s.info["collaboration"],
    doc="public-project units this agent produced, / economy.collaboration_scale",
)
register_component(
    "income", lambda s: s.info["value_added"],
    doc="per agent: value added by this step's work at the market's last prices (outputs minus inputs), in units "
        "of the catalogue's mean base price; the scripted agents' niche criterion, paid before any trade",
)


def market_mean_utility(s: StepData) -> jax.Array:
    """Social value orientation: every agent is paid the mean utility of this step over all
    agents of its market (``info["utility"]`` float32 ``[N]`` viewed as ``[M, N/M]``, the
    mean over each market broadcast back to its agents, float32 ``[N]``; ``M`` from
    ``state.price [M, G]``). A member weighting it cares for its neighbours, whoever plays
    them; under ``train.layout=villages`` they are mostly its own and one other's agents."""
    u = jnp.asarray(s.info["utility"], jnp.float32)
    m = s.state.price.shape[0]
    per_market = jnp.mean(u.reshape(m, -1), -1, keepdims=True)  # [M, 1]
    return jnp.broadcast_to(per_market, (m, u.shape[0] // m)).reshape(u.shape)


register_component("social", market_mean_utility, doc=market_mean_utility.__doc__)
register_component("specialisation", niche_pmi, level="member", doc=niche_pmi.__doc__)


__all__ = [
    "REWARD_COMPONENTS", "RewardComponent", "RolloutData", "StepData", "agent_components", "component_names",
    "market_mean_utility", "member_components", "niche_pmi", "niche_pmi_table", "register_component",
    "unregister_component", "weighted_reward",
]
