"""Niche and market metrics: occupancy entropy, specialisation, concentration of each
niche's output by member (Herfindahl), wealth inequality (Gini, Lorenz curve) and price
dispersion across markets. Pure and jittable; entropies in nats, results float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _xlogx(p: jax.Array) -> jax.Array:
    """``p log p`` elementwise with ``0 log 0 = 0``."""
    return jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)


def occupancy_entropy(counts: jax.Array) -> jax.Array:
    """float32 ``[...]``: entropy (nats) of the niche occupancy ``counts`` ``[..., J+1]``
    (counts or shares over the niches, the last being "rest"), normalised over the last
    axis. ``ln(J+1)`` when evenly spread, 0 when all in one niche; a row of zeros -> 0.
    ``[J+1]`` for the population, ``[M, J+1]`` per market."""
    x = counts.astype(jnp.float32)
    total = jnp.sum(x, axis=-1, keepdims=True)
    p = x / jnp.where(total > 0, total, 1.0)
    return -jnp.sum(_xlogx(p), axis=-1)


def specialisation_index(niche: jax.Array, num_choices: int) -> jax.Array:
    """Per agent ``1 - H(choices) / log(num_choices)`` of its niche choices over a window.

    ``niche`` int ``[T, ...]`` -> float32 ``[...]``: 1 for an agent that always chose the
    same niche, 0 for one that spread evenly over all of them."""
    counts = jnp.sum(jax.nn.one_hot(niche, num_choices, dtype=jnp.float32), 0)
    p = counts / niche.shape[0]
    h = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), -1)
    return 1.0 - h / jnp.log(float(num_choices))


def herfindahl(output: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Concentration of each niche's output by member: is anyone monopolising?

    ``output`` ``[P, J]`` (units of niche ``j``'s output made by member ``p``, ``>= 0``) ->
    ``(hhi [J], largest_share [J], largest_member [J] int32)``: ``hhi = sum_p share^2``
    of the members' shares (1 for a monopoly, ``1/n`` for ``n`` equal producers), the
    largest share and the member holding it (the lowest index on ties). A niche with no
    output has ``hhi = 0``, ``largest_share = 0``, ``largest_member = -1``. The analysis
    records them as ``hhi``, ``niche_largest_share`` and ``niche_largest_member``
    (:mod:`analysis.metrics`)."""
    x = output.astype(jnp.float32)
    total = jnp.sum(x, axis=0)  # [J]
    active = total > 0
    share = x / jnp.where(active, total, 1.0)
    hhi = jnp.sum(share * share, axis=0)
    largest_share = jnp.max(share, axis=0)
    largest_member = jnp.where(active, jnp.argmax(share, axis=0).astype(jnp.int32), -1)
    return hhi, largest_share, largest_member


def gini(wealth: jax.Array) -> jax.Array:
    """float32 scalar: Gini coefficient of ``wealth`` ``[N]`` (``>= 0``): 0 when all hold
    the same, ``1 - 1/N`` when one holds everything; all-zero -> 0. Sorts (an analysis-
    interval metric): ``G = 2 sum_i i x_(i) / (N sum x) - (N + 1) / N``, ``i = 1..N``
    over the ascending order."""
    x = jnp.sort(wealth.astype(jnp.float32))
    n = x.shape[0]
    total = jnp.sum(x)
    rank = jnp.arange(1, n + 1, dtype=jnp.float32)
    g = 2.0 * jnp.sum(rank * x) / (n * jnp.where(total > 0, total, 1.0)) - (n + 1.0) / n
    return jnp.where(total > 0, jnp.clip(g, 0.0, 1.0), 0.0)


def lorenz(wealth: jax.Array, points: int = 101) -> jax.Array:
    """float32 ``[points]``: Lorenz curve of ``wealth`` ``[N]`` (``>= 0``): the share of the
    total held by the poorest fraction ``q`` of agents at ``q = linspace(0, 1, points)``;
    0 at ``q = 0``, 1 at ``q = 1``, linear between the ``N + 1`` points ``(k/N, poorest k's
    share)``. All-zero wealth gives the line of equality ``q``."""
    x = jnp.sort(wealth.astype(jnp.float32))
    n = x.shape[0]
    total = jnp.sum(x)
    cum = jnp.concatenate([jnp.zeros((1,), jnp.float32), jnp.cumsum(x)])
    frac = jnp.arange(n + 1, dtype=jnp.float32) / n
    curve = jnp.where(total > 0, cum / jnp.where(total > 0, total, 1.0), frac)
    q = jnp.linspace(0.0, 1.0, points, dtype=jnp.float32)
    return jnp.interp(q, frac, curve)


def price_dispersion(prices: jax.Array) -> jax.Array:
    """float32 ``[G]``: coefficient of variation of each good's price across markets,
    ``std / mean`` (population std) over ``prices`` ``[M, G]``; 0 where the mean is 0."""
    x = prices.astype(jnp.float32)
    mean = jnp.mean(x, axis=0)
    std = jnp.std(x, axis=0)
    return jnp.where(mean != 0, std / jnp.where(mean != 0, mean, 1.0), 0.0)


ACTIVE_SHARE = 0.01  # a niche with at least this share of work is active


def niche_spread(work) -> tuple[float, int]:
    """``(effective_niches, active_niches)`` of work over niches ``[J]`` (counts or shares,
    resting left out): ``exp`` of the entropy of the shares, and the niches with at least
    :data:`ACTIVE_SHARE` of the work. ``(0, 0)`` when nobody works."""
    import numpy as np

    w = np.asarray(work, np.float64)
    if w.sum() <= 0:
        return 0.0, 0
    p = w / w.sum()
    nz = p > 0
    return float(np.exp(-np.sum(p[nz] * np.log(p[nz])))), int(np.sum(p >= ACTIVE_SHARE))

