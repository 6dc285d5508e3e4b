"""Tests of the call auction (economy/market.py) against an independent brute-force
reference, its invariants, the fairness of the marginal unit lottery, the price grid, and
the auction as seen through ``Economy.step``.

Speed: every new array shape recompiles, so the auction is jitted once at module level
and called with only two shapes: ``[M, B, G] = [3, 8, 2]`` (hand and hypothesis examples)
and ``[ROUNDS, 8, 2] = [2000, 8, 2]`` (bulk comparison and the fairness rounds), each
with ``max_qty`` None (plain prefix sum) and QMAX (packed). Hypothesis varies values only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import economy
from economy import market

BUY, HOLD, SELL = 0, 1, 2

# One fixed shape for the hand and hypothesis examples.
M, B, G, L = 3, 8, 2, 8
C = L // 2
# A second fixed shape (same B, G, L) for the bulk comparison and the fairness rounds.
ROUNDS = 2000

QMAX = 8  # a bound on every order quantity used with the packed path (generators draw 0..8)
# ``max_qty`` selects the prefix-sum path: None -> plain int32, QMAX -> packed uint32
# (B * QMAX < 2^16). Both are checked; each is compiled once per shape.
_clear = jax.jit(market.clear, static_argnums=(3, 5))
_lottery_start = jax.jit(market.lottery_start)

U_MAX = np.nextafter(np.float32(1), np.float32(0))  # 1 - 2^-24, the largest float32 below 1


def run_clear(side, qty, tick, lottery, num_ticks=L, max_qty=None):
    """``clear`` on NumPy inputs; returns ``(tick, volume, buy_fill, sell_fill, start)``."""
    lottery = np.asarray(lottery)
    assert lottery.dtype == np.float32 and np.all((lottery >= 0) & (lottery < 1))
    out = _clear(
        jnp.asarray(side, jnp.int32),
        jnp.asarray(qty, jnp.int32),
        jnp.asarray(tick, jnp.int32),
        num_ticks,
        jnp.asarray(lottery, jnp.float32),
        max_qty,
    )
    assert isinstance(out, market.Clearing) and len(out) == 5
    return tuple(np.asarray(x) for x in out)


# --------------------------------------------------------------------------------------
# Independent reference: one (market, good) auction, brute force with Python loops.
# --------------------------------------------------------------------------------------
def reference_start(u, total):
    """Start unit of the lottery, as float32 math: ``clip(floor(f32(u) * f32(T)), 0, max(T-1, 0))``."""
    s = int(np.floor(np.float32(u) * np.float32(total)))
    return min(max(s, 0), max(total - 1, 0))


def reference_units(quantities, start, to_fill):
    """Serve ``to_fill`` units one by one from the circular window starting at unit
    ``start`` of the marginal units laid end to end (agent ``i`` owns the ``quantities[i]``
    units after those of agents ``0..i-1``). Returns the units each agent received."""
    owner = []
    for i, q in enumerate(quantities):
        owner += [i] * q
    total = len(owner)
    assert 0 <= to_fill <= total and (total == 0 or 0 <= start < total)
    fills = [0] * len(quantities)
    for step in range(to_fill):
        fills[owner[(start + step) % total]] += 1
    return fills


def reference_auction(side, qty, tick, num_ticks, u_buy, u_sell):
    """Returns ``(tick, volume, buy_fill[B], sell_fill[B], (start_buy, start_sell), (T_buy, T_sell),
    (R_buy, R_sell))`` of one call auction; T = marginal units, R = units to fill at the tick."""
    n = len(side)
    centre = num_ticks // 2

    # D(l) for l = 0..L (D(L) = 0) and S(l) for l = -1..L-1 (S(-1) = 0), stored at l + 1.
    demand = [0] * (num_ticks + 1)
    supply = [0] * (num_ticks + 1)
    for level in range(num_ticks):
        for i in range(n):
            if side[i] == BUY and tick[i] >= level:
                demand[level] += int(qty[i])
            if side[i] == SELL and tick[i] <= level:
                supply[level + 1] += int(qty[i])

    volumes = [min(demand[level], supply[level + 1]) for level in range(num_ticks)]
    vmax = max(volumes)
    if vmax == 0:  # no trade: nobody fills, no marginal units, start 0 whatever the lottery
        return centre, 0, [0] * n, [0] * n, (0, 0), (0, 0), (0, 0)

    valid = []
    for level in range(num_ticks):
        above = demand[level + 1]  # D(l + 1), 0 beyond the top tick
        below = supply[level]  # S(l - 1), 0 below tick 0
        if volumes[level] == vmax and above <= vmax and below <= vmax:
            valid.append(level)
    assert valid, "the specification promises that a valid clearing tick always exists"
    best, best_distance = None, None
    for level in valid:
        distance = 2 * abs(level - centre) + (1 if level > centre else 0)
        if best_distance is None or distance < best_distance:
            best, best_distance = level, distance

    def fill_side(side_code, better, u):
        fills = [0] * n
        done = 0
        for i in range(n):
            if side[i] == side_code and qty[i] > 0 and better(tick[i]):
                fills[i] = int(qty[i])
                done += int(qty[i])
        remaining = vmax - done
        marginal = [i for i in range(n) if side[i] == side_code and qty[i] > 0 and tick[i] == best]
        quantities = [int(qty[i]) for i in marginal]
        total = sum(quantities)
        assert 0 <= remaining <= total, "marginal orders could not cover the volume"
        start = reference_start(u, total)
        for i, f in zip(marginal, reference_units(quantities, start, remaining)):
            fills[i] = f
        return fills, start, total, remaining

    buy_fill, s_buy, t_buy, r_buy = fill_side(BUY, lambda t: t > best, u_buy)
    sell_fill, s_sell, t_sell, r_sell = fill_side(SELL, lambda t: t < best, u_sell)
    return best, vmax, buy_fill, sell_fill, (s_buy, s_sell), (t_buy, t_sell), (r_buy, r_sell)


def reference_clear(side, qty, tick, lottery, num_ticks=L, detail=False):
    """The reference applied to every (market, good) of ``[M, B, G]`` arrays: returns
    ``(tick, volume, buy_fill, sell_fill, start)``, plus ``(T, R)`` ``[M, G, 2]`` with ``detail``."""
    m, n, g = side.shape
    ticks = np.zeros((m, g), np.int64)
    volume = np.zeros((m, g), np.int64)
    buy_fill = np.zeros((m, n, g), np.int64)
    sell_fill = np.zeros((m, n, g), np.int64)
    start = np.zeros((m, g, 2), np.int64)
    total = np.zeros((m, g, 2), np.int64)
    to_fill = np.zeros((m, g, 2), np.int64)
    for a in range(m):
        for k in range(g):
            t, v, bf, sf, s, tt, r = reference_auction(
                [int(x) for x in side[a, :, k]],
                [int(x) for x in qty[a, :, k]],
                [int(x) for x in tick[a, :, k]],
                num_ticks,
                np.float32(lottery[a, k, 0]),
                np.float32(lottery[a, k, 1]),
            )
            ticks[a, k], volume[a, k] = t, v
            buy_fill[a, :, k], sell_fill[a, :, k] = bf, sf
            start[a, k], total[a, k], to_fill[a, k] = s, tt, r
    out = (ticks, volume, buy_fill, sell_fill, start)
    return out + (total, to_fill) if detail else out


# --------------------------------------------------------------------------------------
# Random order books with many edge cases, generated from one seed.
# --------------------------------------------------------------------------------------
MODES = ("dense", "sparse", "all_hold", "buy_only", "sell_only", "ties", "two_ticks", "crossed")


def random_lottery(rs, shape):
    """float32 uniforms in [0, 1), with the edges 0 and U_MAX and exact sixteenths mixed in."""
    u = np.minimum(rs.random_sample(shape).astype(np.float32), U_MAX)  # float32 rounding may reach 1.0
    pick = rs.randint(0, 8, shape)
    u = np.where(pick == 0, np.float32(0), u)
    u = np.where(pick == 1, U_MAX, u)
    u = np.where(pick == 2, rs.randint(0, 16, shape) / np.float32(16), u)
    return u.astype(np.float32)


def random_books(seed: int, m: int = M):
    rs = np.random.RandomState(seed % (2**32))
    side = np.full((m, B, G), HOLD, np.int64)
    qty = np.zeros((m, B, G), np.int64)
    tick = np.zeros((m, B, G), np.int64)
    for a in range(m):
        for k in range(G):
            mode = MODES[rs.randint(len(MODES))]
            if mode == "all_hold":
                s = np.full(B, HOLD)
            elif mode == "buy_only":
                s = rs.choice([BUY, HOLD], B)
            elif mode == "sell_only":
                s = rs.choice([SELL, HOLD], B)
            elif mode == "sparse":
                s = rs.choice([BUY, HOLD, SELL], B, p=[0.15, 0.7, 0.15])
            else:
                s = rs.randint(0, 3, B)
            if mode in ("ties", "two_ticks"):
                lo = rs.randint(L - 1)
                t = rs.randint(lo, lo + 2, B)  # one or two adjacent ticks: heavy ties
                if mode == "ties":
                    t[:] = lo
            elif mode == "crossed":  # buyers high, sellers low: always trades if both exist
                t = np.where(s == BUY, rs.randint(C, L, B), rs.randint(0, C + 1, B))
            else:
                t = rs.randint(0, L, B)
            q = rs.randint(0, 6, B)  # 0..5, zeros included
            r = rs.rand()
            if r < 0.3:
                q = rs.choice([0, 2, 2, 3], B)  # equal quantities, more ties
            elif r < 0.45:
                q = rs.randint(0, QMAX + 1, B)  # up to the packing bound
            side[a, :, k], qty[a, :, k], tick[a, :, k] = s, q, t
    lottery = random_lottery(rs, (m, G, 2))
    return side, qty, tick, lottery


NAMES = ("tick", "volume", "buy_fill", "sell_fill", "start")


def assert_matches_reference(side, qty, tick, lottery, max_qty_values=(None, QMAX)):
    """Both prefix-sum paths of ``clear`` equal the reference exactly (all five outputs);
    returns the first result."""
    want = reference_clear(side, qty, tick, lottery)
    results = []
    for max_qty in max_qty_values:
        got = run_clear(side, qty, tick, lottery, max_qty=max_qty)
        assert len(got) == len(want) == 5
        for name, g_, w_ in zip(NAMES, got, want):
            np.testing.assert_array_equal(g_, w_, err_msg=f"{name} differs from the reference (max_qty={max_qty})")
        results.append(got)
    return results[0]


def assert_invariants(side, qty, tick, lottery, out):
    ctick, volume, buy_fill, sell_fill, start = out
    for x in out:
        assert x.dtype == np.int32
    assert ctick.shape == volume.shape == side.shape[:1] + side.shape[2:]
    assert buy_fill.shape == sell_fill.shape == side.shape
    assert start.shape == ctick.shape + (2,)
    assert np.all((ctick >= 0) & (ctick < L))
    # Buyers get exactly what sellers deliver, and both equal the volume.
    np.testing.assert_array_equal(buy_fill.sum(1), volume)
    np.testing.assert_array_equal(sell_fill.sum(1), volume)
    # 0 <= fill <= qty, and only on the agent's own side.
    assert np.all(buy_fill >= 0) and np.all(sell_fill >= 0)
    assert np.all(buy_fill <= qty) and np.all(sell_fill <= qty)
    assert np.all(buy_fill[side != BUY] == 0)
    assert np.all(sell_fill[side != SELL] == 0)
    # Price priority: strictly better orders fill completely, worse ones not at all.
    t = ctick[:, None, :]
    traded = (volume > 0)[:, None, :]
    buying, selling = side == BUY, side == SELL
    np.testing.assert_array_equal(np.where(buying & (tick > t) & traded, buy_fill, 0), np.where(buying & (tick > t) & traded, qty, 0))
    np.testing.assert_array_equal(np.where(selling & (tick < t) & traded, sell_fill, 0), np.where(selling & (tick < t) & traded, qty, 0))
    assert np.all(buy_fill[buying & (tick < t)] == 0)
    assert np.all(sell_fill[selling & (tick > t)] == 0)
    # No trade: centre tick, nothing filled, start 0.
    assert np.all(ctick[volume == 0] == C)
    assert np.all(buy_fill.sum(1)[volume == 0] == 0) and np.all(sell_fill.sum(1)[volume == 0] == 0)
    assert np.all(start[volume == 0] == 0)
    # At a traded tick, demand and supply both reach the volume (nobody trades beyond their limit).
    d = np.where(buying & (tick >= t), qty, 0).sum(1)
    s = np.where(selling & (tick <= t), qty, 0).sum(1)
    assert np.all(np.minimum(d, s) == volume)
    # The start lies among the marginal units: 0 <= start < max(T, 1).
    marginal_total = np.stack(
        [np.where(buying & (tick == t) & traded, qty, 0).sum(1), np.where(selling & (tick == t) & traded, qty, 0).sum(1)], -1
    )
    assert np.all(start >= 0) and np.all(start < np.maximum(marginal_total, 1))


# --------------------------------------------------------------------------------------
# Reference sanity: hand-computed books.
# --------------------------------------------------------------------------------------
def _one(orders, u=(0.0, 0.0)):
    """[(side, qty, tick)] for agents 0.. of market 0, good 0; every other book is empty.
    Lottery ``u`` = (buyers, sellers) for that book, 0.5 everywhere else (empty books must
    still report start 0)."""
    side = np.full((M, B, G), HOLD)
    qty = np.zeros((M, B, G))
    tick = np.zeros((M, B, G))
    for i, (s, q, t) in enumerate(orders):
        side[0, i, 0], qty[0, i, 0], tick[0, i, 0] = s, q, t
    lottery = np.full((M, G, 2), 0.5, np.float32)
    lottery[0, 0] = u
    return side, qty, tick, lottery


THREE_BUYERS = [(BUY, 2, 4), (BUY, 2, 4), (BUY, 2, 4), (SELL, 3, 4)]


@pytest.mark.parametrize(
    "orders, u, want_tick, want_volume, want_buy, want_sell, want_start",
    [
        # One buyer 5 @ 6, one seller 3 @ 2: V = 3 on ticks 2..6, but D(l+1) = 5 > 3 for
        # l < 6, so only tick 6 is valid; the buyer is marginal there and gets 3.
        # Buyer: T = 5, start floor(0.5 * 5) = 2. The seller is strictly better (T = 0):
        # start 0 whatever its u.
        ([(BUY, 5, 6), (SELL, 3, 2)], (0.5, 0.5), 6, 3, [3, 0], [0, 3], (2, 0)),
        # Equal quantities 4 @ 6 vs 4 @ 2: every tick 2..6 is valid; the nearest to C=4 wins.
        # Both orders are strictly better there: no marginal units, starts 0.
        ([(BUY, 4, 6), (SELL, 4, 2)], (0.3, 0.7), 4, 4, [4, 0], [0, 4], (0, 0)),
        # Equal quantities, range 5..6 above the centre: nearest is 5. The seller is marginal
        # (T = R = 4): start floor(f32(0.7) * 4) = floor(2.8) = 2, the window is all 4 units.
        ([(BUY, 4, 6), (SELL, 4, 5)], (0.3, 0.7), 5, 4, [4, 0], [0, 4], (0, 2)),
        # Range 1..3 below the centre: nearest is 3. The buyer is marginal: floor(1.2) = 1.
        ([(BUY, 4, 3), (SELL, 4, 1)], (0.3, 0.7), 3, 4, [4, 0], [0, 4], (1, 0)),
        # Valid ticks 3..5 contain the centre: tick 4. (The valid ticks always form an
        # interval, so the "then lower" tie-break between C-k and C+k can never decide.)
        ([(BUY, 2, 5), (SELL, 2, 3)], (0.3, 0.7), 4, 2, [2, 0], [0, 2], (0, 0)),
        # Not crossed: buyer @ 2, seller @ 5 -> no trade, centre tick, start 0.
        ([(BUY, 3, 2), (SELL, 3, 5)], (0.9, 0.9), C, 0, [0, 0], [0, 0], (0, 0)),
        # Three buyers 2 @ 4 compete for 3 units from a seller @ 4. Buyer units: agent 0
        # owns 0-1, agent 1 owns 2-3, agent 2 owns 4-5 (T = 6, R = 3).
        # u = 0: start 0, window {0,1,2}: agents 0 and 1 in index order get 2 and 1.
        # Seller: T = R = 3, start floor(f32(0.7) * 3) = floor(2.1) = 2, fills all 3.
        (THREE_BUYERS, (0.0, 0.7), 4, 3, [2, 1, 0, 0], [0, 0, 0, 3], (0, 2)),
        # u = 0.5: start 3, window {3,4,5}: agent 1 gets 1, agent 2 gets 2.
        (THREE_BUYERS, (0.5, 0.0), 4, 3, [0, 1, 2, 0], [0, 0, 0, 3], (3, 0)),
        # u = 0.9: start floor(5.4) = 5, window {5,0,1} wraps: agent 2 gets 1, agent 0 gets 2.
        (THREE_BUYERS, (0.9, 0.0), 4, 3, [2, 0, 1, 0], [0, 0, 0, 3], (5, 0)),
        # u = 1 - 2^-24: f32 product 5.9999996, start 5 = T - 1: the same wrapped window.
        (THREE_BUYERS, (float(U_MAX), 0.0), 4, 3, [2, 0, 1, 0], [0, 0, 0, 3], (5, 0)),
        # Unequal quantities: buyers 1 and 4 @ 4 (units {0} and {1..4}, T = 5), seller 2 @ 4.
        # u = 0.85: start floor(4.25) = 4, window {4, 0}: one unit each.
        ([(BUY, 1, 4), (BUY, 4, 4), (SELL, 2, 4)], (0.85, 0.0), 4, 2, [1, 1, 0], [0, 0, 2], (4, 0)),
        # u = 0.5: start floor(2.5) = 2, window {2, 3}: both units to agent 1.
        ([(BUY, 1, 4), (BUY, 4, 4), (SELL, 2, 4)], (0.5, 0.0), 4, 2, [0, 2, 0], [0, 0, 2], (2, 0)),
        # Sellers rationed with a wrap: sellers 3 @ 3 (units 0-2) and 2 @ 3 (units 3-4),
        # a buyer 4 @ 3; only tick 3 trades (V = 4). Sellers: T = 5, R = 4, start
        # floor(3.75) = 3, window {3,4,0,1}: agent 2 gets 2, agent 0 gets 2. The hold of
        # agent 1 is ignored. Buyer: T = R = 4, start 0.
        ([(SELL, 3, 3), (HOLD, 5, 3), (SELL, 2, 3), (BUY, 4, 3)], (0.0, 0.75), 3, 4, [0, 0, 0, 4], [2, 0, 2, 0], (0, 3)),
        # One-sided book: sellers only, below the centre. Nothing can trade, nobody fills.
        ([(SELL, 1, 0), (SELL, 2, 3), (HOLD, 4, 0)], (0.5, 0.5), C, 0, [0, 0, 0], [0, 0, 0], (0, 0)),
        # One-sided book: buyers only, above the centre (strictly better than the centre
        # tick, yet nobody fills: there is no seller).
        ([(BUY, 1, 7), (BUY, 2, 5)], (0.5, 0.5), C, 0, [0, 0], [0, 0], (0, 0)),
        # Uncrossed book straddling the centre: buyer @ 5, seller @ 6 -> no trade.
        ([(BUY, 3, 5), (SELL, 3, 6)], (0.5, 0.5), C, 0, [0, 0], [0, 0], (0, 0)),
        # Zero quantities and holds never trade.
        ([(BUY, 0, 7), (HOLD, 5, 7), (SELL, 0, 0), (SELL, 2, 0), (BUY, 2, 7)], (0.5, 0.5), 4, 2, [0, 0, 0, 0, 2], [0, 0, 0, 2, 0], (0, 0)),
    ],
)
def test_hand_examples(orders, u, want_tick, want_volume, want_buy, want_sell, want_start):
    side, qty, tick, lottery = _one(orders, u)
    n = len(orders)
    results = [run_clear(side, qty, tick, lottery, max_qty=mq) for mq in (None, QMAX)]
    for result in results + [reference_clear(side, qty, tick, lottery)]:
        ctick, volume, buy_fill, sell_fill, start = result
        assert ctick[0, 0] == want_tick
        assert volume[0, 0] == want_volume
        assert list(buy_fill[0, :n, 0]) == want_buy
        assert list(sell_fill[0, :n, 0]) == want_sell
        assert tuple(start[0, 0]) == want_start
        assert volume[1:].sum() == 0 and volume[0, 1] == 0
        assert np.all(ctick[1:] == C)
        assert start[1:].sum() == 0 and start[0, 1].sum() == 0  # empty books: start 0 despite u = 0.5


# --------------------------------------------------------------------------------------
# Property test against the reference, and invariants.
# --------------------------------------------------------------------------------------
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(seed=SEEDS)
def test_clear_matches_reference(seed):
    assert_matches_reference(*random_books(seed))


@FAST
@given(seed=SEEDS)
def test_clear_invariants(seed):
    books = random_books(seed)
    assert_invariants(*books, run_clear(*books))
    assert_invariants(*books, run_clear(*books, max_qty=QMAX))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=SEEDS)
def test_packed_prefix_sum_with_large_quantities(seed):
    """Quantities near the packing bound (B * max_qty just below 2^16): the packed uint32
    prefix sums must not carry from the buy half into the sell half, and the lottery start
    over up to ~65528 marginal units must still match the float32 reference."""
    big = (2**16 - 1) // B  # 8191: B * big = 65528 < 2^16
    side, qty, tick, lottery = random_books(seed)
    rs = np.random.RandomState(seed % (2**32))
    qty = np.where(qty > 0, big - rs.randint(0, 3, qty.shape), 0)
    assert_matches_reference(side, qty, tick, lottery, max_qty_values=(None, big))


def test_clear_matches_reference_bulk():
    """2000 random books per good in one call (the fairness shape: no extra compile)."""
    side, qty, tick, lottery = random_books(12345, m=ROUNDS)
    got = assert_matches_reference(side, qty, tick, lottery)
    assert_invariants(side, qty, tick, lottery, got)
    # The generator really produced the edge cases it is meant to.
    vol = got[1]
    assert (vol == 0).mean() > 0.1 and (vol > 0).mean() > 0.3
    _, _, _, _, start, total, to_fill = reference_clear(side, qty, tick, lottery, detail=True)
    rationed = (to_fill > 0) & (to_fill < total)
    assert rationed.mean() > 0.1  # many sides really are rationed at the marginal tick
    assert (rationed & (start + to_fill > total)).sum() > 50  # ... with windows that wrap
    assert (rationed & (start + to_fill <= total) & (start > 0)).sum() > 50  # ... and that do not
    assert (rationed & (start == total - 1)).sum() > 20  # ... starting at the last unit
    assert ((to_fill == total) & (total > 0)).sum() > 50  # whole marginal side fills


def test_lottery_start_covers_every_start():
    """``lottery_start`` maps a fine grid of u in [0, 1) onto every start 0..T-1, never
    outside [0, T), non-decreasing in u, equally often (counts differ by at most one), and
    exactly as the float32 formula; T == 0 gives 0."""
    n = 2**17  # grid u = k / 2^17 (exact in float32): finer than 1/T for every T below
    u = np.concatenate([np.arange(n) / n, [U_MAX]]).astype(np.float32)
    totals = np.array([0, 1, 2, 3, 5, 7, 8, 26, 64, 255, 1000, 65528], np.int32)
    start = np.asarray(_lottery_start(jnp.asarray(u)[None, :], jnp.asarray(totals)[:, None]))
    assert start.dtype == np.int32 and start.shape == (len(totals), n + 1)
    for total, s in zip(totals, start):
        total = int(total)
        want = np.clip(np.floor(u * np.float32(total)), 0, max(total - 1, 0)).astype(np.int32)
        np.testing.assert_array_equal(s, want, err_msg=f"T={total}")
        if total == 0:
            assert np.all(s == 0)
            continue
        assert np.all((s >= 0) & (s < total))
        assert np.all(np.diff(s) >= 0)
        assert s[0] == 0 and s[-1] == total - 1  # u = 0 -> 0, u = 1 - 2^-24 -> T - 1
        counts = np.bincount(s[:-1], minlength=total)
        assert counts.min() >= 1, f"T={total}: start {np.argmin(counts)} never drawn"
        assert counts.max() - counts.min() <= 1, (total, counts.min(), counts.max())


# --------------------------------------------------------------------------------------
# Fairness of the marginal unit lottery.
# --------------------------------------------------------------------------------------
# Books of one round: per good, the (side, qty) of agents 0..B-1, all at tick C. Good 0
# rations buyers (the single seller is short), good 1 rations sellers.
PRO_RATA = (
    [(BUY, 1), (BUY, 5), (BUY, 2), (BUY, 8), (BUY, 3), (BUY, 1), (BUY, 6), (SELL, 8)],  # T = 26, R = 8
    [(BUY, 7), (SELL, 6), (SELL, 1), (SELL, 3), (SELL, 8), (SELL, 2), (SELL, 5), (SELL, 1)],  # T = 26, R = 7
)
# Agents 0 and B-1 have equal quantities on the rationed side.
ENDS = (
    [(BUY, 3), (BUY, 8), (BUY, 1), (SELL, 5), (BUY, 6), (BUY, 2), (BUY, 1), (BUY, 3)],  # T = 24, R = 5
    [(SELL, 4), (SELL, 1), (SELL, 7), (SELL, 2), (BUY, 6), (SELL, 8), (SELL, 2), (SELL, 4)],  # T = 28, R = 6
)


def _neighbour_book(neighbour_qty):
    """Agent 3 (4 units) and its left neighbour, agent 2, whose quantity varies."""
    return (
        [(BUY, 2), (BUY, 5), (BUY, neighbour_qty), (BUY, 4), (BUY, 3), (SELL, 8), (BUY, 2), (BUY, 6)],
        [(SELL, 6), (SELL, 1), (SELL, neighbour_qty), (SELL, 4), (BUY, 7), (SELL, 3), (SELL, 2), (SELL, 5)],
    )


def _exact_distribution(book):
    """For the rationed side of one good's book: ``(rationed side, qty[B], T, R, marginal
    agent indices, fills[T, B])`` where ``fills[s]`` is the reference allocation with start unit s. Under a uniform start
    these T allocations are equally likely, which gives exact means and covariances."""
    sides = np.array([s for s, _ in book])
    qty = np.array([q for _, q in book])
    buy, sell = qty[sides == BUY].sum(), qty[sides == SELL].sum()
    rationed = BUY if buy > sell else SELL
    total, to_fill = max(buy, sell), min(buy, sell)
    marginal = np.flatnonzero(sides == rationed)
    fills = np.zeros((total, len(book)), np.int64)
    for s in range(total):
        fills[s, marginal] = reference_units([int(qty[i]) for i in marginal], s, int(to_fill))
    # Each unit lies in exactly R of the T circular windows: exactly pro rata on average.
    np.testing.assert_array_equal(fills.sum(0), np.where(sides == rationed, qty * to_fill, 0))
    return rationed, qty, total, to_fill, marginal, fills


def _fairness_rounds(books, seed, max_qty):
    """ROUNDS independent rounds (the market axis) of the same books with fresh lotteries.
    Checks every round exactly (against the reference; the rationed side's fills sum to R,
    each fill <= qty, the other side fills completely) and returns, per good,
    ``(fills [ROUNDS, B] of the rationed side, start [ROUNDS] of that side, exact distribution)``."""
    side = np.full((ROUNDS, B, G), HOLD)
    qty = np.zeros((ROUNDS, B, G))
    tick = np.full((ROUNDS, B, G), C)
    for k, book in enumerate(books):
        side[:, :, k] = [s for s, _ in book]
        qty[:, :, k] = [q for _, q in book]
    lottery = np.minimum(np.random.RandomState(seed).random_sample((ROUNDS, G, 2)).astype(np.float32), U_MAX)
    out = run_clear(side, qty, tick, lottery, max_qty=max_qty)
    for name, g_, w_ in zip(NAMES, out, reference_clear(side, qty, tick, lottery)):
        np.testing.assert_array_equal(g_, w_, err_msg=f"{name} differs from the reference")
    ctick, volume, buy_fill, sell_fill, start = out
    result = []
    for k, book in enumerate(books):
        rationed, q, total, to_fill, marginal, dist = _exact_distribution(book)
        fills = (buy_fill if rationed == BUY else sell_fill)[:, :, k]
        other = (sell_fill if rationed == BUY else buy_fill)[:, :, k]
        is_rationed = np.isin(np.arange(B), marginal)
        assert np.all(ctick[:, k] == C) and np.all(volume[:, k] == to_fill)
        np.testing.assert_array_equal(fills.sum(1), to_fill)  # exactly R, every round
        assert np.all(fills >= 0) and np.all(fills <= q)
        assert np.all(fills[:, ~is_rationed] == 0)
        np.testing.assert_array_equal(other, np.broadcast_to(np.where(~is_rationed, q, 0), other.shape))
        s = start[:, k, 0 if rationed == BUY else 1]
        assert np.all((s >= 0) & (s < total))
        short = start[:, k, 1 if rationed == BUY else 0]  # the short side has T = R: drawn, but all fill
        assert np.all((short >= 0) & (short < to_fill))
        result.append((fills.astype(np.float64), s, (rationed, q, total, to_fill, marginal, dist)))
    return result


# Tolerances are Z standard errors of the mean over ROUNDS independent rounds. The
# standard errors are exact: the start is uniform on [0, T), so one round's fills are
# uniform over the T allocations of ``_exact_distribution``, whose variances and
# covariances give the per-round variance. (For a fill rate fill/qty in [0, 1] with mean
# p = R/T that variance is at most the Bernoulli p(1 - p), so se <= sqrt(p(1-p)/ROUNDS)
# ~= 0.0103 for p = 8/26; this bound is checked too.) Z = 5: a false alarm has
# probability < 6e-7 per comparison (normal approximation); the seeds are fixed anyway.
Z = 5
FAIR_PATHS = pytest.mark.parametrize("max_qty", [None, QMAX], ids=["plain", "packed"])


def _se(x):
    """Standard error of the mean over ROUNDS of a per-round statistic whose T equally
    likely values are ``x``."""
    return np.sqrt(np.var(x) / ROUNDS)


@FAIR_PATHS
def test_lottery_is_pro_rata(max_qty):
    """Unequal quantities at the marginal tick: every agent's mean fill rate (fill / qty)
    is R / T, on both sides; the start is uniform on [0, T); fills are exact every round."""
    for fills, start, (rationed, q, total, to_fill, marginal, dist) in _fairness_rounds(PRO_RATA, 2024, max_qty):
        p = to_fill / total
        assert len(np.unique(q[marginal])) >= 5  # really different quantities
        rate = fills[:, marginal].mean(0) / q[marginal]
        se = np.array([_se(dist[:, i] / q[i]) for i in marginal])
        assert np.all(se <= np.sqrt(p * (1 - p) / ROUNDS) + 1e-12)
        assert np.all(np.abs(rate - p) <= Z * se), (rationed, rate, p, se)
        # Power: a window that never wraps (start uniform on [0, T-R]) would give the
        # first and last agents far too little: at least Z more standard errors beyond the tolerance.
        no_wrap = dist[: total - to_fill + 1].mean(0)[marginal] / q[marginal]
        assert np.abs(no_wrap - p).max() > 2 * Z * se.max()
        # The start unit is uniform on [0, T): each value with frequency 1/T (Bernoulli se).
        freq = np.bincount(start, minlength=total) / ROUNDS
        assert len(freq) == total
        assert np.all(np.abs(freq - 1 / total) <= Z * np.sqrt((1 / total) * (1 - 1 / total) / ROUNDS)), freq


@FAIR_PATHS
def test_lottery_has_no_index_bias(max_qty):
    """Agents 0 and B-1, equal quantities, at the two ends of the unit line: the same mean
    fill, and both the pro rata q * R / T."""
    for fills, _, (rationed, q, total, to_fill, marginal, dist) in _fairness_rounds(ENDS, 7, max_qty):
        first, last = 0, B - 1
        assert q[first] == q[last] and {first, last} <= set(marginal)
        want = q[first] * to_fill / total
        mean = fills.mean(0)
        # Exact standard error of the difference (includes the two agents' covariance).
        se_diff = _se(dist[:, first] - dist[:, last])
        assert se_diff > 0
        assert abs(mean[first] - mean[last]) <= Z * se_diff, (mean[first], mean[last], se_diff)
        for i in (first, last):
            assert abs(mean[i] - want) <= Z * _se(dist[:, i]), (i, mean[i], want)
        # Power: the non-wrapping window gives each end ~half its due (0.3 vs 0.625 for the
        # buyers, 13.5 se), at least Z more standard errors beyond the tolerance.
        no_wrap = dist[: total - to_fill + 1].mean(0)
        assert abs(no_wrap[first] - want) > 2 * Z * _se(dist[:, first])


@FAIR_PATHS
def test_lottery_ignores_neighbours(max_qty):
    """Agent 3 (4 units) fills at the rate R / T whether its left neighbour (agent 2)
    orders 1 unit or 8: two books that differ only in the neighbour's quantity."""
    agent = 3
    for k_seed, neighbour_qty in enumerate((1, 8)):
        books = _neighbour_book(neighbour_qty)
        rounds = _fairness_rounds(books, 100 + k_seed, max_qty)
        for fills, _, (rationed, q, total, to_fill, marginal, dist) in rounds:
            assert q[agent] == 4 and q[agent - 1] == neighbour_qty and {agent - 1, agent} <= set(marginal)
            p = to_fill / total
            rate = fills[:, agent].mean() / q[agent]
            se = _se(dist[:, agent] / q[agent])
            assert abs(rate - p) <= Z * se, (neighbour_qty, rationed, rate, p, se)


# --------------------------------------------------------------------------------------
# Price grid.
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "num_ticks, tick_size, min_price, max_price",
    [(64, 0.03, 1, 100_000), (8, 0.03, 1, 100_000), (65, 0.1, 3, 5_000), (17, 1.0, 1, 100_000), (64, 0.001, 1, 100_000)],
)
def test_price_grid(num_ticks, tick_size, min_price, max_price):
    factors = market.tick_factors(num_ticks, tick_size)
    centre = num_ticks // 2
    assert np.asarray(factors)[centre] == 1.0
    rs = np.random.RandomState(num_ticks)
    last = np.concatenate(
        [
            [min_price, min_price + 1, 7, 10, 99, 1000, 12345, max_price - 1, max_price],
            rs.randint(min_price, max_price + 1, 23),
        ]
    ).astype(np.int32)
    last = np.clip(last, min_price, max_price).reshape(4, 8)  # [M, G] like the env
    grid = np.asarray(market.price_grid(jnp.asarray(last), factors, min_price, max_price))
    assert grid.shape == (4, 8, num_ticks) and grid.dtype == np.int32
    np.testing.assert_array_equal(grid[..., centre], last)  # centre tick = last price, exactly
    assert np.all(np.diff(grid, axis=-1) >= 0)  # non-decreasing along ticks
    assert grid.min() >= min_price and grid.max() <= max_price
    # Values: last * (1 + tick_size) ** (t - centre), rounded and clipped (float32 math:
    # allow one unit of rounding difference, relative 1e-5 for large prices).
    k = np.arange(num_ticks) - centre
    with np.errstate(over="ignore"):
        exact = np.clip(np.round(last[..., None].astype(np.float64) * (1.0 + tick_size) ** k), min_price, max_price)
    assert np.all(np.abs(grid - exact) <= np.maximum(1.0, 1e-5 * exact))


def test_price_grid_clips():
    factors = market.tick_factors(64, 0.03)
    last = jnp.asarray([[10, 40]], jnp.int32)
    grid = np.asarray(market.price_grid(last, factors, 5, 50))
    # 10 * 1.03**-32 ~= 3.9 -> clipped up to 5; 40 * 1.03**31 ~= 100 -> clipped down to 50.
    assert grid[0, 0, 0] == 5 and grid[0, 0, -1] == 25 and grid[0, 0, 32] == 10
    assert grid[0, 1, 0] == 16 and grid[0, 1, -1] == 50 and grid[0, 1, 32] == 40
    assert (grid[0, 0] == 5).sum() > 1 and (grid[0, 1] == 50).sum() > 1  # really clipped
    assert np.all(np.diff(grid, axis=-1) >= 0)


# --------------------------------------------------------------------------------------
# Through the environment (tiny economy, shared compiled functions).
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_world(tiny_env, tiny_fns):
    _, state = tiny_fns["reset"](jax.random.key(3))
    return state


def _actions(env, **heads):
    cfg = env.cfg
    n, g = cfg.num_agents, cfg.num_goods
    base = {
        "niche": np.full((n,), cfg.num_niches, np.int32),  # everybody rests: goods unchanged by work
        "side": np.full((n, g), HOLD, np.int32),
        "quantity": np.zeros((n, g), np.int32),
        "price": np.full((n, g), cfg.market.price_ticks // 2, np.int32),
    }
    base.update(heads)
    return {k: jnp.asarray(v) for k, v in base.items()}


def _step(env, fns, state, actions, seed=0):
    obs, new, reward, terminated, truncated, info = fns["step"](jax.random.key(seed), state, actions)
    return new, jax.tree_util.tree_map(np.asarray, info)


def _grid(env, state):
    cfg = env.cfg
    return np.asarray(market.price_grid(state.price, env.params.tick_factors, cfg.market.min_price, cfg.market.max_price))


def _check_money(env, state, new, info, traded_good=0):
    """Money is conserved and each market's sellers receive exactly price * volume."""
    assert economy.ledger(new)["money"] == economy.ledger(state)["money"]
    m = env.cfg.num_markets
    delta = (np.asarray(new.money, np.int64) - np.asarray(state.money, np.int64)).reshape(m, -1)
    np.testing.assert_array_equal(delta.sum(1), 0)
    price = info["market_price"][:, traded_good].astype(np.int64)
    volume = info["market_volume"][:, traded_good].astype(np.int64)
    np.testing.assert_array_equal(np.where(delta > 0, delta, 0).sum(1), price * volume)
    np.testing.assert_array_equal(np.where(delta < 0, -delta, 0).sum(1), price * volume)
    assert np.all(np.asarray(new.money) >= 0)
    return delta


def test_env_excess_supply_lowers_price(tiny_env, tiny_fns, tiny_world):
    env, state = tiny_env, tiny_world
    cfg = env.cfg
    n, g, m = cfg.num_agents, cfg.num_goods, cfg.num_markets
    b = n // m
    side = np.full((n, g), HOLD, np.int32)
    price = np.full((n, g), cfg.market.price_ticks // 2, np.int32)
    quantity = np.zeros((n, g), np.int32)
    side[:, 0] = SELL  # everybody sells good 0 at the lowest tick, the most they can (32)
    price[:, 0] = 0
    quantity[:, 0] = len(cfg.market.quantity_levels) - 1
    buyers = np.concatenate([np.arange(a * b, a * b + 2) for a in range(m)])  # two per market
    side[buyers, 0] = BUY
    quantity[buyers, 0] = 0  # one unit each, at the centre tick (the last price)
    new, info = _step(env, tiny_fns, state, _actions(env, side=side, price=price, quantity=quantity))
    grid = _grid(env, state)
    last = np.asarray(state.price)[:, 0]
    held = np.asarray(state.goods)[:, 0].reshape(m, b)
    supply = held.sum(1) - held[:, :2].sum(1)
    assert np.all(supply > 2)  # supply really exceeds demand
    np.testing.assert_array_equal(info["market_volume"][:, 0], 2)
    np.testing.assert_array_equal(info["market_price"][:, 0], grid[:, 0, 0])  # sellers' tick
    assert np.all(info["market_price"][:, 0] < last)
    np.testing.assert_array_equal(np.asarray(new.price)[:, 0], info["market_price"][:, 0])
    np.testing.assert_array_equal(info["market_volume"][:, 1:], 0)
    np.testing.assert_array_equal(np.asarray(new.price)[:, 1:], np.asarray(state.price)[:, 1:])
    delta = _check_money(env, state, new, info)
    np.testing.assert_array_equal(delta.reshape(-1)[buyers], -grid[:, 0, 0].repeat(2))  # each buyer pays one unit


def test_env_excess_demand_raises_price(tiny_env, tiny_fns, tiny_world):
    env, state = tiny_env, tiny_world
    cfg = env.cfg
    n, g, m = cfg.num_agents, cfg.num_goods, cfg.num_markets
    b = n // m
    L = cfg.market.price_ticks
    held = np.asarray(state.goods)[:, 0].reshape(m, b)
    sellers = (np.argsort(-held, axis=1)[:, :2] + np.arange(m)[:, None] * b).reshape(-1)  # two richest per market
    assert np.all(np.asarray(state.goods)[sellers, 0] >= 1)
    side = np.full((n, g), HOLD, np.int32)
    price = np.full((n, g), L // 2, np.int32)
    quantity = np.zeros((n, g), np.int32)
    side[:, 0] = BUY  # everybody bids one unit of good 0 at the highest tick
    price[:, 0] = L - 1
    side[sellers, 0] = SELL  # two sellers per market offer one unit each at the last price
    new, info = _step(env, tiny_fns, state, _actions(env, side=side, price=price, quantity=quantity), seed=1)
    grid = _grid(env, state)
    last = np.asarray(state.price)[:, 0]
    np.testing.assert_array_equal(info["market_volume"][:, 0], 2)
    np.testing.assert_array_equal(info["market_price"][:, 0], grid[:, 0, L - 1])  # buyers' tick
    assert np.all(info["market_price"][:, 0] > last)
    np.testing.assert_array_equal(np.asarray(new.price)[:, 0], info["market_price"][:, 0])
    delta = _check_money(env, state, new, info)
    np.testing.assert_array_equal(delta.reshape(-1)[sellers], grid[:, 0, L - 1].repeat(2))  # each seller paid once
    assert ((delta < 0).sum(1) == 2).all()  # exactly two buyers were served in each market


def test_env_no_orders_keeps_price(tiny_env, tiny_fns, tiny_world):
    env, state = tiny_env, tiny_world
    new, info = _step(env, tiny_fns, state, _actions(env), seed=2)
    np.testing.assert_array_equal(info["market_volume"], 0)
    np.testing.assert_array_equal(np.asarray(new.price), np.asarray(state.price))
    np.testing.assert_array_equal(info["market_price"], np.asarray(state.price))  # centre tick = last price
    np.testing.assert_array_equal(np.asarray(new.money), np.asarray(state.money))
    assert economy.ledger(new)["money"] == economy.ledger(state)["money"]


def test_env_one_sided_book_trades_nothing(tiny_env, tiny_fns, tiny_world):
    """Everybody offers good 0 at the lowest tick and nobody buys: nothing can trade, so
    volume 0, the price stays, and no money is created for goods that no buyer received."""
    env, state = tiny_env, tiny_world
    cfg = env.cfg
    n, g = cfg.num_agents, cfg.num_goods
    side = np.full((n, g), HOLD, np.int32)
    price = np.full((n, g), cfg.market.price_ticks // 2, np.int32)
    side[:, 0] = SELL
    price[:, 0] = 0
    new, info = _step(env, tiny_fns, state, _actions(env, side=side, price=price), seed=3)
    np.testing.assert_array_equal(info["market_volume"], 0)
    np.testing.assert_array_equal(np.asarray(new.price), np.asarray(state.price))
    np.testing.assert_array_equal(np.asarray(new.money), np.asarray(state.money))
    assert economy.ledger(new)["money"] == economy.ledger(state)["money"]


def test_env_random_actions_conserve_money(tiny_env, tiny_fns, tiny_world):
    env, state = tiny_env, tiny_world
    for i in range(3):
        actions = tiny_fns["sample"](jax.random.key(100 + i), state)
        new, info = _step(env, tiny_fns, state, actions, seed=10 + i)
        assert economy.ledger(new)["money"] == economy.ledger(state)["money"]
        assert np.all(np.asarray(new.money) >= 0)
        assert info["market_volume"].sum() > 0
        traded = info["market_volume"] > 0
        np.testing.assert_array_equal(np.asarray(new.price)[traded], info["market_price"][traded])
        np.testing.assert_array_equal(np.asarray(new.price)[~traded], np.asarray(state.price)[~traded])
        state = new
