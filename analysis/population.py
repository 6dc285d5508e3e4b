"""One analysis of a population, computed on the device inside the training update.

:func:`population_analysis` gathers every diversity and niche measure of
:mod:`analysis.diversity` and :mod:`analysis.niches` for one update: the members'
policies compared on a probe set of observations drawn from the update's rollout
(every member's agents, every market), the niche and concentration statistics of the
rollout, and the wealth and price statistics of the economy at the end of it. It is a
pure function of arrays, so the trainer runs it under ``lax.cond`` every
``train.analysis.every`` updates and only a few kilobytes come back to the host.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from analysis.diversity import effective_policies, js_matrix, kl_matrix, mean_offdiag, niche_profile_distance
from analysis.niches import gini, herfindahl, lorenz, occupancy_entropy, price_dispersion

LORENZ_POINTS = 101
MAJOR_NICHE = 0.01  # a niche counts for niche_concentration when it makes >= 1% of all output


def wealth(goods: jax.Array, money: jax.Array, price: jax.Array) -> jax.Array:
    """float32 ``[N]``: cash plus holdings valued at the agent's market's last prices.

    ``goods`` int ``[N, G]``, ``money`` int ``[N]``, ``price`` int ``[M, G]``; agents are laid
    out by market (agent ``i`` trades in market ``i // (N / M)``)."""
    n, g = goods.shape
    m = price.shape[0]
    held = goods.astype(jnp.float32).reshape(m, n // m, g) * price.astype(jnp.float32)[:, None, :]
    return money.astype(jnp.float32) + jnp.sum(held, -1).reshape(n)


def histogram(x: jax.Array, bins: int, lo: jax.Array | float, hi: jax.Array | float) -> dict:
    """A fixed-size histogram of ``x`` (any shape) on ``bins`` equal bins over ``[lo, hi]``
    with the moments TensorBoard's raw histograms need: ``edges [bins+1]``, ``counts [bins]``,
    ``min``, ``max``, ``num``, ``sum``, ``sum_squares``."""
    x = x.astype(jnp.float32)  # not flattened: a reshape of a sharded axis would gather it
    lo = jnp.asarray(lo, jnp.float32)
    hi = jnp.maximum(jnp.asarray(hi, jnp.float32), lo + 1e-6)
    edges = lo + (hi - lo) * jnp.linspace(0.0, 1.0, bins + 1)
    idx = jnp.clip(jnp.floor((x - lo) / (hi - lo) * bins).astype(jnp.int32), 0, bins - 1)
    # A sum of comparisons, not a scatter: with x sharded over devices it is a local count
    # plus one small all-reduce.
    counts = jnp.sum(idx[..., None] == jnp.arange(bins, dtype=jnp.int32), tuple(range(x.ndim)), dtype=jnp.int32)
    return {
        "edges": edges, "counts": counts, "min": jnp.min(x), "max": jnp.max(x),
        "num": jnp.asarray(x.size, jnp.int32), "sum": jnp.sum(x), "sum_squares": jnp.sum(x * x),
    }


class RolloutSummary(NamedTuple):
    """What one analysis reads of an update's rollout (``P`` members, ``S`` probe states,
    ``J`` niches, ``M`` markets, ``G`` goods, ``n`` agents per member)."""

    probe_obs: jax.Array  # float32 [S, D]: observations every member is asked about
    niche_counts: jax.Array  # [P, J+1] niche choices of each member's agents over the rollout
    niche_output: jax.Array  # [P, J+1] units produced by each member's agents, by chosen niche
    market_occupancy: jax.Array  # [M, J+1] agents per niche per market, summed over the rollout
    agent_specialisation: jax.Array  # float32 [P, n] per-agent specialisation index
    goods: jax.Array  # the economy state at the end of the rollout: holdings [N, G],
    money: jax.Array  # cash [N]
    price: jax.Array  # and last prices [M, G]
    trade_volume: jax.Array  # float32 [G] units traded per step (all markets), rollout mean


def population_analysis(
    apply_fn: Callable[[Any, jax.Array], tuple[dict, jax.Array]],
    params: Any,
    rollout: RolloutSummary,
    bins: int,
) -> dict[str, Any]:
    """Every measure of one analysis (the keys of a line of ``analysis.jsonl``, named as
    :mod:`analysis.metrics` declares them).

    ``apply_fn``: ``(params [P, ...], obs [P, S, D]) -> (logits {head: [P, S, ..., C]},
    value)``; ``params``: the members' stacked parameters; ``rollout``: what the update's
    rollout left (:class:`RolloutSummary`); ``bins``: histogram bins.
    """
    (probe_obs, niche_counts, niche_output, market_occupancy, agent_specialisation, goods, money, price,
     trade_volume) = rollout
    P = niche_counts.shape[0]
    J = niche_counts.shape[1] - 1
    obs = jnp.broadcast_to(probe_obs[None], (P,) + probe_obs.shape)
    logits, _ = apply_fn(params, obs)
    kl = kl_matrix(logits)
    js = js_matrix(logits)
    shares = niche_counts / jnp.maximum(jnp.sum(niche_counts, -1, keepdims=True), 1)
    hhi, largest_share, largest_member = herfindahl(niche_output[:, :J].astype(jnp.float32))
    output = jnp.sum(niche_output[:, :J], 0).astype(jnp.float32)  # [J] units of work per niche
    major = output >= MAJOR_NICHE * jnp.maximum(jnp.sum(output), 1.0)
    member_output = jnp.sum(niche_output[:, :J], 1).astype(jnp.float32)  # [P] units of work per member
    w = wealth(goods, money, price)
    return {
        "kl": kl,
        "js": js,
        "niche_kl": kl_matrix({"niche": logits["niche"]}),
        "kl_mean": mean_offdiag(kl),
        "js_mean": mean_offdiag(js),
        "effective_policies": effective_policies(js),
        "niche_profile_distance": niche_profile_distance(shares),
        "occupancy_entropy": occupancy_entropy(jnp.sum(market_occupancy, 0)),
        "market_occupancy_entropy": occupancy_entropy(market_occupancy),
        "specialisation_index": jnp.mean(agent_specialisation, -1),
        "hhi": hhi,
        "niche_largest_share": largest_share,
        "niche_largest_member": largest_member,
        "niche_output": output,
        # Whole-economy dominance, as agora eval defines it: the largest member's share of
        # all units produced (here of the members' output; league snapshots left out).
        "largest_output_share": jnp.max(member_output) / jnp.maximum(jnp.sum(member_output), 1.0),
        # Per-niche concentration: the largest member's share of a niche's output, over the
        # niches that make at least MAJOR_NICHE of all output (a niche worked by one agent
        # is trivially concentrated); 0 and niche -1 when there is none.
        "niche_concentration": jnp.max(jnp.where(major, largest_share, 0.0)),
        "niche_concentration_niche": jnp.where(
            jnp.any(major), jnp.argmax(jnp.where(major, largest_share, -1.0)), -1).astype(jnp.int32),
        "gini": gini(w),
        "lorenz": lorenz(w, LORENZ_POINTS),
        "wealth_histogram": histogram(w, bins, 0.0, jnp.max(w)),
        "specialisation_histogram": histogram(agent_specialisation, bins, 0.0, 1.0),
        "trade_volume": trade_volume.astype(jnp.float32),
        "price_dispersion": price_dispersion(price.astype(jnp.float32)),
        "prices": price.astype(jnp.float32),
    }
