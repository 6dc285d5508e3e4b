"""Uniform-price call auctions on a price-tick grid, one per (market, good).

Everything here works on the per-market layout ``[M, B, G]`` (markets, agents per
market, goods): a reshape of the agent axis, never a sort. Quantities are int32 and the
clearing keeps them exact: buyers receive exactly what sellers deliver and pay exactly
what sellers receive.

Order book of one (market, good): every agent is a buyer, a seller or neither, with a
quantity and a tick ``t`` in ``[0, L)``; tick ``t`` means price ``grid[t]``, and the grid
is centred (tick ``L // 2``) on the market's last price.

* Demand ``D(l)`` = buy quantity at ticks ``>= l``; supply ``S(l)`` = sell quantity at
  ticks ``<= l``; traded volume ``V(l) = min(D(l), S(l))``.
* The clearing tick ``l*`` maximises ``V`` among the ticks at which all strictly better
  orders can be filled (``D(l+1) <= V`` and ``S(l-1) <= V``; such a tick always exists);
  ties go to the tick nearest the last price, then to the lower one.
* Buyers above ``l*`` and sellers below it fill completely; orders at ``l*`` share the
  rest by a unit lottery: the marginal orders' units are laid end to end in agent order
  (an exclusive prefix sum), a start unit is drawn uniformly, and the units in the
  circular window of the size to fill are served. Every marginal unit fills with the
  same probability, so no agent index is favoured; integers stay exact.
* A book with no trade (zero volume) fills nobody and keeps the last price.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

BUY, HOLD, SELL = 0, 1, 2


def tick_factors(num_ticks: int, tick_size: float) -> jax.Array:
    """float32 ``[L]``: price of tick ``t`` relative to the last price, ``(1+tick)^(t-L//2)``."""
    k = jnp.arange(num_ticks, dtype=jnp.float32) - (num_ticks // 2)
    return jnp.exp(k * jnp.log1p(jnp.float32(tick_size)))


def tick_price(last_price: jax.Array, factor: jax.Array, min_price: int, max_price: int) -> jax.Array:
    """int32 price of a tick: ``last_price * factor`` rounded and clipped to
    ``[min_price, max_price]``. The single definition of a tick's price: the grid and
    each order's limit both come from it, so they agree bit for bit."""
    p = jnp.round(last_price.astype(jnp.float32) * factor)
    return jnp.clip(p, min_price, max_price).astype(jnp.int32)


def price_grid(last_price: jax.Array, factors: jax.Array, min_price: int, max_price: int) -> jax.Array:
    """int32 ``[..., L]`` price of each tick; non-decreasing along the tick axis, and the
    centre tick is exactly the last price."""
    return tick_price(last_price[..., None], factors, min_price, max_price)


class Book(NamedTuple):
    """Aggregated order book per (market, good). Shapes ``[M, G, L]`` unless noted."""

    bids: jax.Array  # buy quantity per tick
    asks: jax.Array  # sell quantity per tick


class Clearing(NamedTuple):
    """Result of the auctions. Shapes ``[M, G]`` unless noted."""

    tick: jax.Array  # int32 clearing tick (the centre tick when nothing trades)
    volume: jax.Array  # int32 units traded
    buy_fill: jax.Array  # int32 [M, B, G] units each agent bought
    sell_fill: jax.Array  # int32 [M, B, G] units each agent sold
    start: jax.Array  # int32 [M, G, 2] rationing start unit (buyers, sellers) among marginal units


def order_book(side: jax.Array, qty: jax.Array, tick: jax.Array, num_ticks: int) -> Book:
    """Histogram the orders ``[M, B, G]`` into bid and ask quantities per tick (one
    ``segment_sum`` per market, so sharding whole markets needs no communication)."""
    m, b, g = qty.shape
    L = num_ticks
    is_sell = (side == SELL).astype(jnp.int32)
    q = jnp.where(side == HOLD, 0, qty)
    seg = (jnp.arange(g, dtype=jnp.int32) * (2 * L) + is_sell * L + tick).reshape(m, b * g)
    hist = jax.vmap(lambda s, x: jax.ops.segment_sum(x, s, num_segments=g * 2 * L))(seg, q.reshape(m, b * g))
    hist = hist.reshape(m, g, 2, L)
    return Book(bids=hist[:, :, 0], asks=hist[:, :, 1])


def clearing_tick(book: Book) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Clearing tick, volume and the quantities still to fill at the marginal tick.

    Returns ``(tick, volume, buy_marginal, sell_marginal)``, each int32 ``[M, G]``:
    ``buy_marginal`` of the bids at the clearing tick fill (likewise for asks).
    """
    bids, asks = book
    L = bids.shape[-1]
    demand = jnp.flip(jnp.cumsum(jnp.flip(bids, -1), -1), -1)  # D(l) = sum_{t >= l} bids
    supply = jnp.cumsum(asks, -1)  # S(l) = sum_{t <= l} asks
    volume = jnp.minimum(demand, supply)
    zero = jnp.zeros_like(demand[..., :1])
    demand_above = jnp.concatenate([demand[..., 1:], zero], -1)  # D(l + 1)
    supply_below = jnp.concatenate([zero, supply[..., :-1]], -1)  # S(l - 1)
    vmax = volume.max(-1, keepdims=True)
    valid = (volume == vmax) & (demand_above <= vmax) & (supply_below <= vmax)
    ticks = jnp.arange(L, dtype=jnp.int32)
    centre = L // 2
    distance = 2 * jnp.abs(ticks - centre) + (ticks > centre)  # nearest the last price, then lower
    tick = jnp.argmin(jnp.where(valid, distance, 4 * L), -1).astype(jnp.int32)
    vmax = vmax[..., 0]
    tick = jnp.where(vmax > 0, tick, centre)
    at = lambda x: jnp.take_along_axis(x, tick[..., None], -1)[..., 0]
    buy_marginal = jnp.where(vmax > 0, vmax - at(demand_above), 0)
    sell_marginal = jnp.where(vmax > 0, vmax - at(supply_below), 0)
    return tick, vmax, buy_marginal, sell_marginal


def block_exclusive_cumsum(x: jax.Array) -> jax.Array:
    """Exclusive prefix sum along axis 1 of an integer ``[M, B, ...]`` array."""
    return jnp.cumsum(x, axis=1) - x


def paired_exclusive_cumsum(buy: jax.Array, sell: jax.Array, packed: bool) -> tuple[jax.Array, jax.Array]:
    """Exclusive prefix sums along axis 1 of two int32 ``[M, B, G]`` arrays.

    With ``packed`` (every block total below 2^16) both run as one uint32 prefix sum of
    ``buy | sell << 16``: the prefix sum is the bottleneck of clearing on a CPU, and an
    agent is never on both sides of one good, so this halves it, exactly.
    """
    if not packed:
        both = block_exclusive_cumsum(jnp.stack([buy, sell], -1))
        return both[..., 0], both[..., 1]
    x = buy.astype(jnp.uint32) | (sell.astype(jnp.uint32) << 16)
    before = block_exclusive_cumsum(x)
    return (before & 0xFFFF).astype(jnp.int32), (before >> 16).astype(jnp.int32)


def ration(marginal_qty: jax.Array, before: jax.Array, to_fill: jax.Array, start: jax.Array) -> jax.Array:
    """Share ``to_fill`` units among the marginal orders of each market block by a unit lottery.

    ``marginal_qty`` int32 ``[M, B, G]``; ``before`` its exclusive prefix sum along the
    block, so agent ``i`` owns the units ``[before_i, before_i + qty_i)`` of the ``T``
    marginal units; ``to_fill`` int32 ``[M, G]`` (``R <= T``); ``start`` int32 ``[M, G]``
    in ``[0, T)``. The units in the circular window ``[start, start + R)`` fill. With a
    uniform ``start`` every marginal unit fills with probability exactly ``R / T``, so each
    agent's expected fill is pro rata, whatever its index or its neighbours. Returns int32
    ``[M, B, G]`` fills summing exactly to ``to_fill``.
    """
    total = (before[:, -1] + marginal_qty[:, -1])[:, None, :]  # T
    lo, hi = before, before + marginal_qty
    s, r = start[:, None, :], to_fill[:, None, :]
    inside = jnp.maximum(jnp.minimum(hi, s + r) - jnp.maximum(lo, s), 0)
    wrapped = jnp.maximum(jnp.minimum(hi, s + r - total) - lo, 0)  # the window past T wraps to [0, s+r-T)
    return inside + wrapped


def lottery_start(u: jax.Array, total: jax.Array) -> jax.Array:
    """int32 start unit in ``[0, total)`` (0 when ``total`` is 0) from uniforms ``u`` in [0, 1)."""
    s = jnp.floor(u * total.astype(jnp.float32)).astype(jnp.int32)
    return jnp.clip(s, 0, jnp.maximum(total - 1, 0))


def clear(
    side: jax.Array, qty: jax.Array, tick: jax.Array, num_ticks: int, lottery: jax.Array, max_qty: int | None = None
) -> Clearing:
    """Run every (market, good) auction.

    ``side``, ``qty``, ``tick``: int32 ``[M, B, G]`` orders (quantities already clipped to
    what each agent owns or can pay); ``lottery``: float32 ``[M, G, 2]`` uniforms in
    [0, 1) that draw the rationing start unit for buyers and sellers; ``max_qty``: a bound on any order's quantity (enables
    the packed prefix sum when ``B * max_qty < 2^16``).
    """
    book = order_book(side, qty, tick, num_ticks)
    ctick, volume, buy_marginal, sell_marginal = clearing_tick(book)
    t = ctick[:, None, :]
    traded = (volume > 0)[:, None, :]  # a book that does not trade fills nobody
    buying = (side == BUY) & (qty > 0) & traded
    selling = (side == SELL) & (qty > 0) & traded
    buy_full = jnp.where(buying & (tick > t), qty, 0)
    sell_full = jnp.where(selling & (tick < t), qty, 0)
    buy_marg = jnp.where(buying & (tick == t), qty, 0)
    sell_marg = jnp.where(selling & (tick == t), qty, 0)
    packed = max_qty is not None and qty.shape[1] * max_qty < 2**16
    before_buy, before_sell = paired_exclusive_cumsum(buy_marg, sell_marg, packed)
    start_buy = lottery_start(lottery[..., 0], before_buy[:, -1] + buy_marg[:, -1])
    start_sell = lottery_start(lottery[..., 1], before_sell[:, -1] + sell_marg[:, -1])
    buy_fill = buy_full + ration(buy_marg, before_buy, buy_marginal, start_buy)
    sell_fill = sell_full + ration(sell_marg, before_sell, sell_marginal, start_sell)
    return Clearing(
        tick=ctick,
        volume=volume,
        buy_fill=buy_fill,
        sell_fill=sell_fill,
        start=jnp.stack([start_buy, start_sell], -1),
    )
