"""Consumption and utility against closed forms (economy/utility.py, economy/rng.py).

* ``stochastic_round(x, u) = floor(x + u)``: ``floor(x) + 1`` exactly where
  ``u >= 1 - frac(x)`` (so its mean over uniform ``u`` is ``x``);
* ``consume``: ``eaten`` is the stochastic rounding of ``consume * goods`` by ``u_eat``,
  spoilage the stochastic rounding of ``perish * (goods - eaten)`` (what is left after
  eating) by ``u_spoil``, ``utility = sum_g w_g log1p(eaten_g)`` (the basket eaten, not the
  holdings), goods never negative;
* through one ``Economy.step`` of the tiny economy (everyone resting and holding, so the
  goods before consumption are the state's): every agent's basket is recovered from its
  utility and its holdings, and the economy-wide ``info`` entries follow.

One jitted ``consume`` at ``[4, G]`` (G = the tiny economy's goods); the step reuses the
session's jitted ``step``.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import economy
from economy.rng import stochastic_round
from economy.utility import cobb_douglas, consume

CONSUME = jax.jit(consume)
ROUND = jax.jit(stochastic_round)
U_MAX = 1.0 - 2.0**-17  # the largest uniform rng.uniform_pair hands to consume (the step's)


def f32(x):
    return np.asarray(x, np.float32)


def ref_round(x, u):
    """``floor(x) + [u >= 1 - frac(x)]`` in float64 (x given as float32 values)."""
    x = np.asarray(x, np.float64)
    fl = np.floor(x)
    return (fl + (np.asarray(u, np.float64) >= 1.0 - (x - fl))).astype(np.int64)


def params_with(tiny_env, consume_frac, perish):
    return tiny_env.params.replace(consume=jnp.asarray(f32(consume_frac)), perish=jnp.asarray(f32(perish)))


# ---- stochastic rounding ------------------------------------------------------------------


def test_stochastic_round_convention_and_mean():
    """Rounds up exactly where ``u >= 1 - frac(x)``; over a midpoint grid of K uniforms the
    mean is ``x`` to within 1/K (unbiased)."""
    x = f32([0.0, 0.25, 0.5, 2.1, 2.9, 7.0, 13.75, 99.4])
    k = 1000
    u = f32((np.arange(k) + 0.5) / k)
    got = np.asarray(ROUND(jnp.asarray(x)[:, None], jnp.asarray(u)[None, :]))
    want = ref_round(x[:, None], u[None, :])
    # Away from the threshold the convention is exact (float32 rounding of x + u only
    # matters within an ulp of it).
    far = np.abs(u[None, :] - (1.0 - (x[:, None] - np.floor(x[:, None])))) > 1e-4
    np.testing.assert_array_equal(got[far], want[far])
    assert set(np.unique(got - np.floor(x)[:, None]).tolist()) <= {0, 1}
    np.testing.assert_allclose(got.mean(1), x, atol=1.0 / k + 1e-6)
    # Power: the other convention ("+1 where u < frac") has the same mean but other values.
    other = (np.floor(x)[:, None] + (u[None, :] < (x - np.floor(x))[:, None])).astype(np.int64)
    assert (other != want).any()


# ---- consume: chosen values -------------------------------------------------------------


# Six goods like the default catalogue (good 3 has no utility: consume 0).
C_FRAC = [0.2, 0.3, 0.1, 0.0, 0.3, 0.1]
P_FRAC = [0.02, 0.2, 0.01, 0.0, 0.1, 0.02]
GOODS = np.array(
    [
        [10, 7, 25, 9, 3, 1000],  # x = c * g = [2, 2.1, 2.5, 0, 0.9, 100]
        [10, 7, 25, 9, 3, 1000],  # the same holdings, uniforms on the other side of each threshold
        [0, 0, 0, 0, 0, 0],  # nothing at all
        [0, 0, 0, 40, 0, 0],  # only the good without utility (never eaten)
    ],
    np.int32,
)
U_EAT = f32(
    [
        [0.95, 0.85, 0.55, 0.99, 0.20, 0.50],  # -> eaten [2, 2, 3, 0, 1, 100]
        [0.05, 0.95, 0.45, 0.01, 0.05, 0.99],  # -> eaten [2, 3, 2, 0, 0, 100]
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        [0.5, 0.5, 0.5, 0.99, 0.5, 0.5],
    ]
)
U_SPOIL = f32(
    [
        [0.5, 0.3, 0.2, 0.5, 0.5, 0.5],
        [0.7, 0.95, 0.9, 0.5, 0.5, 0.5],
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
    ]
)
PREFS = f32(
    [
        [0.10, 0.20, 0.10, 0.00, 0.35, 0.25],
        [0.30, 0.10, 0.15, 0.00, 0.25, 0.20],
        [0.20, 0.20, 0.20, 0.00, 0.20, 0.20],
        [0.20, 0.20, 0.20, 0.20, 0.10, 0.10],  # a weight on the uneaten good: still utility 0
    ]
)


def test_consume_against_closed_form(tiny_env):
    """Eaten, spoiled, goods left and utility per agent and good, from the closed forms."""
    assert GOODS.shape[1] == tiny_env.cfg.num_goods
    p = params_with(tiny_env, C_FRAC, P_FRAC)
    out = jax.device_get(CONSUME(p, jnp.asarray(GOODS), jnp.asarray(PREFS), jnp.asarray(U_EAT), jnp.asarray(U_SPOIL)))
    g = GOODS.astype(np.int64)
    x_eat = (f32(C_FRAC) * GOODS.astype(np.float32)).astype(np.float64)  # the float32 product, as consume forms it
    eaten = ref_round(x_eat, U_EAT)
    np.testing.assert_array_equal(eaten[:2], [[2, 2, 3, 0, 1, 100], [2, 3, 2, 0, 0, 100]])  # by hand
    left = g - eaten
    x_spoil = (f32(P_FRAC) * left.astype(np.float32)).astype(np.float64)
    spoiled = ref_round(x_spoil, U_SPOIL)
    # The cases are clear-cut: every uniform is far from its rounding threshold.
    for x, u in ((x_eat, U_EAT), (x_spoil, U_SPOIL)):
        assert (np.abs(u - (1.0 - (x - np.floor(x)))) > 1e-3).all()
    assert out.eaten.dtype == out.spoiled.dtype == out.goods.dtype == np.int32
    np.testing.assert_array_equal(out.eaten, eaten)
    np.testing.assert_array_equal(out.spoiled, spoiled)
    np.testing.assert_array_equal(out.goods, left - spoiled)
    assert (out.goods >= 0).all()
    utility = (PREFS.astype(np.float64) * np.log1p(eaten)).sum(-1)
    assert out.utility.dtype == np.float32 and out.utility.shape == (4,)
    np.testing.assert_allclose(out.utility, utility, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out.utility[2:], 0.0)  # nothing edible held: nothing eaten, utility 0
    np.testing.assert_array_equal(out.goods[3], GOODS[3])  # the uneaten, imperishable good stays
    # Power: spoilage of the holdings before eating, or utility of the holdings, differ.
    spoil_before = ref_round((f32(P_FRAC) * GOODS.astype(np.float32)).astype(np.float64), U_SPOIL)
    assert (spoil_before[:2] != spoiled[:2]).any()  # [0, 5]: 0.02 * 1000 = 20 vs 0.02 * 900 = 18
    on_holdings = (PREFS.astype(np.float64) * np.log1p(g)).sum(-1)
    assert (np.abs(on_holdings - utility)[[0, 1, 3]] > 0.1).all()


def test_cobb_douglas_closed_form():
    """``sum_g w_g log(1 + c_g)``: a basket of 1 and 3 with weights 1/2 each is 1.5 log 2;
    empty baskets are worth 0; integer baskets are read as numbers."""
    w = jnp.asarray([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]], jnp.float32)
    basket = jnp.asarray([[1, 3, 100], [0, 0, 0], [4, 9, 19]], jnp.int32)
    got = np.asarray(cobb_douglas(w, basket))
    want = [1.5 * np.log(2), 0.0, 0.2 * np.log(5) + 0.3 * np.log(10) + 0.5 * np.log(20)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ---- consume: properties ----------------------------------------------------------------


FRACS = hnp.arrays(np.float32, (6,), elements=st.floats(0.0, float(np.float32(0.999)), width=32))
UNIFORMS = hnp.arrays(np.float32, (4, 6), elements=st.floats(2.0**-17, U_MAX, width=32))


@settings(max_examples=60, deadline=None)
@given(
    goods=hnp.arrays(np.int32, (4, 6), elements=st.integers(0, 1000)),
    c=FRACS,
    per=FRACS,
    u_eat=UNIFORMS,
    u_spoil=UNIFORMS,
)
def test_consume_properties(tiny_env, goods, c, per, u_eat, u_spoil):
    """For fractions below 1 and the step's uniforms: eaten is ``floor`` or ``floor + 1``
    of ``c * goods``, spoiled likewise of ``perish * (goods - eaten)``, the three parts add
    up to the holdings, and nothing goes negative."""
    p = params_with(tiny_env, c, per)
    out = jax.device_get(CONSUME(p, *(jnp.asarray(x) for x in (goods, PREFS, u_eat, u_spoil))))
    x = (c * goods.astype(np.float32)).astype(np.float64)
    assert ((out.eaten == np.floor(x)) | (out.eaten == np.floor(x) + 1)).all()
    left = goods.astype(np.int64) - out.eaten
    xs = (per * left.astype(np.float32)).astype(np.float64)
    assert ((out.spoiled == np.floor(xs)) | (out.spoiled == np.floor(xs) + 1)).all()
    np.testing.assert_array_equal(out.goods.astype(np.int64) + out.eaten + out.spoiled, goods)
    assert (out.eaten >= 0).all() and (out.spoiled >= 0).all() and (out.goods >= 0).all()
    want_u = (PREFS * np.log1p(out.eaten.astype(np.float64))).sum(-1)
    np.testing.assert_allclose(out.utility, want_u, rtol=1e-5, atol=1e-6)


def test_consume_never_takes_more_than_held_at_fraction_one(tiny_env):
    """consume = perish = 1 (allowed: ``Fraction`` is ``[0, 1]``): everything is eaten, nothing
    is left to spoil, at every uniform the step can draw."""
    goods = np.full((4, 6), 600, np.int32)
    u = np.full((4, 6), U_MAX, np.float32)
    out = jax.device_get(CONSUME(params_with(tiny_env, [1.0] * 6, [1.0] * 6), jnp.asarray(goods),
                                 jnp.asarray(PREFS), jnp.asarray(u), jnp.asarray(u)))
    np.testing.assert_array_equal(out.eaten, goods)
    assert (out.goods >= 0).all(), out.goods


# ---- through Economy.step ---------------------------------------------------------------


def test_step_utility_is_of_the_eaten_basket(tiny_cfg, tiny_env, tiny_fns):
    """One step with everyone resting and holding (nothing produced, nothing traded): the
    goods before consumption are the state's. Per agent, the basket eaten is the one
    candidate (``floor`` or ``floor + 1`` of ``consume * goods`` per good) whose utility
    ``sum w log1p(eaten)`` is ``info["utility"]`` and whose spoilage
    (``goods - eaten - goods'``, ``floor`` or ``floor + 1`` of ``perish * (goods - eaten)``)
    is consistent; those baskets add up to ``info["eaten"]``, with spoilage to
    ``info["consumed"]``, and are unbiased (sum of ``eaten - consume * goods`` within 5
    standard errors of 0, the variance being ``sum frac (1 - frac)``). Agents holding nothing
    edible get utility 0; utility of the holdings would match no candidate."""
    cfg, env = tiny_cfg, tiny_env
    N, G, J, L = cfg.num_agents, cfg.num_goods, cfg.num_niches, cfg.market.price_ticks
    _, state = tiny_fns["reset"](env.world_key(0, evaluation=True))
    rng = np.random.default_rng(0)
    c = np.asarray(env.params.consume, np.float32)
    per = np.asarray(env.params.perish, np.float32)
    edible = c > 0
    ore = int(np.flatnonzero(~edible)[0])
    goods = rng.integers(0, 41, (N, G)).astype(np.int32)
    goods[:8] = 0
    goods[:8, ore] = 30  # agents 0..7 hold only the good nobody eats
    goods[8:16] = 0  # agents 8..15 hold nothing
    prefs = rng.uniform(0.05, 1.0, (N, G)) * edible
    prefs[:8, ore] = 0.3  # a weight on it all the same: still nothing eaten, utility 0
    prefs = f32(prefs / prefs.sum(-1, keepdims=True))
    state = state.replace(goods=jnp.asarray(goods), preferences=jnp.asarray(prefs))
    actions = {
        "niche": jnp.full((N,), J, jnp.int32),
        "side": jnp.full((N, G), economy.HOLD, jnp.int32),
        "quantity": jnp.zeros((N, G), jnp.int32),
        "price": jnp.full((N, G), L // 2, jnp.int32),
    }
    _, new, reward, _, _, info = jax.device_get(tiny_fns["step"](jax.random.key(5), state, actions))
    # Premise: nothing produced or traded, so consumption starts from ``goods``.
    assert (info["produced"] == 0).all() and (info["market_volume"] == 0).all() and (info["units"] == 0).all()
    after = np.asarray(new.goods, np.int64)
    utility = np.asarray(info["utility"], np.float64)
    np.testing.assert_array_equal(reward, info["utility"])

    g = goods.astype(np.int64)
    x = (c * goods.astype(np.float32)).astype(np.float64)
    base = np.floor(x).astype(np.int64)
    cols = np.flatnonzero(edible)
    combos = np.array(list(itertools.product((0, 1), repeat=len(cols))))  # [K, E]
    cand = np.broadcast_to(base[:, None, :], (N, len(combos), G)).copy()
    cand[:, :, cols] += combos[None]
    cand_u = (prefs[:, None, :].astype(np.float64) * np.log1p(cand)).sum(-1)  # [N, K]
    spoil = g[:, None, :] - cand - after[:, None, :]
    xs = (per * (g[:, None, :] - cand).astype(np.float32)).astype(np.float64)
    spoil_ok = ((spoil == np.floor(xs)) | (spoil == np.floor(xs) + 1)).all(-1)
    du = np.abs(cand_u - utility[:, None])
    match = (du <= 1e-5 * np.maximum(1.0, np.abs(utility))[:, None]) & spoil_ok
    assert (match.sum(1) >= 1).all(), np.flatnonzero(match.sum(1) == 0)[:10]
    # Each agent's basket is identified: any other consistent candidate is far off in utility.
    other = np.where(match | ~spoil_ok, np.inf, du).min(1)
    same = [len({tuple(b) for b in cand[i][match[i]]}) == 1 for i in range(N)]
    assert all(same) and (other > 1e-4).all()
    eaten = cand[np.arange(N), match.argmax(1)]  # [N, G]
    spoiled = g - eaten - after

    M = tiny_cfg.num_markets
    np.testing.assert_array_equal(eaten.reshape(M, -1, eaten.shape[-1]).sum(1), info["eaten"])  # per market
    np.testing.assert_array_equal((eaten + spoiled).reshape(M, -1, eaten.shape[-1]).sum(1), info["consumed"])
    assert (eaten[:, ~edible] == 0).all() and (after >= 0).all()
    np.testing.assert_array_equal(info["utility"][:16], 0.0)
    np.testing.assert_array_equal(after[:8, ore], 30 - spoiled[:8, ore])
    # Unbiased: E[eaten] = consume * goods; sum over agents and goods within 5 standard errors.
    frac = (x - base)[:, cols]
    z = (eaten[:, cols] - x[:, cols]).sum() / np.sqrt((frac * (1 - frac)).sum())
    assert abs(z) < 5.0, z
    # Power: utility of the holdings would not be the utility reported.
    on_holdings = (prefs.astype(np.float64) * np.log1p(g)).sum(-1)
    held = g[:, cols].sum(1) > 0
    assert (np.abs(on_holdings - utility)[held] > 1e-3).all()
