"""Tests of the analysis measures (analysis/diversity.py, analysis/niches.py): closed forms
on hand-made cases, float64 NumPy references on random values, the chunked forms against
the unchunked, the Vendi score's documented limits, and a compile-only check that the
diversity matrices of 128 members on 4096 probe states stay under 1 GB of temporaries.

Speed: every new array shape compiles anew, so the functions are jitted once at module
level and called on few fixed shapes: the hand KL example ``HAND`` (P=2, S=2), the random
population ``[P, S] = [4, 6]`` with heads ``niche [.., 5]`` and ``side [.., 2, 4]``, and
fixed small shapes for the niche metrics. Hypothesis varies seeds and values only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import analysis
from analysis import diversity

LN2 = math.log(2.0)
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# The random population's fixed shape: P members on S states; 1 + 2 = 3 categoricals per state.
P, S = 4, 6
HEADS = {"niche": (5,), "side": (2, 4)}
N_CATEGORICALS = 3

kl_jit = jax.jit(analysis.kl_matrix, static_argnames="chunk")
js_jit = jax.jit(analysis.js_matrix, static_argnames=("chunk", "pair_block"))
vendi_jit = jax.jit(analysis.effective_policies)
offdiag_jit = jax.jit(analysis.mean_offdiag)
profile_jit = jax.jit(analysis.niche_profile_distance)


def random_logits(seed: int, scale: float) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(scale * rng.normal(size=(P, S) + shape), jnp.float32) for k, shape in HEADS.items()}


def reference(logits) -> tuple[np.ndarray, np.ndarray]:
    """float64 NumPy KL and JS matrices, pair by pair, straight from the definitions."""
    n = next(iter(logits.values())).shape[0]
    kl, js = np.zeros((n, n)), np.zeros((n, n))
    for x in logits.values():
        x = np.asarray(x, np.float64)
        lp = x - x.max(-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        p = np.exp(lp)
        states = x.shape[1]
        for i in range(n):
            for j in range(n):
                kl[i, j] += np.sum(p[i] * (lp[i] - lp[j])) / states
                m = 0.5 * (p[i] + p[j])
                js[i, j] += 0.5 * (np.sum(p[i] * np.log(p[i] / m)) + np.sum(p[j] * np.log(p[j] / m))) / states
    return kl, js


# --- KL and JS: closed forms ------------------------------------------------------------

# Two members on two states: head "a" (two choices), head "b" (two entries of three choices).
HAND_A = np.array([[[0.2, 0.8], [0.5, 0.5]], [[0.6, 0.4], [0.9, 0.1]]])  # [P, S, 2]
HAND_B = np.array(
    [
        [[[0.1, 0.2, 0.7], [1 / 3, 1 / 3, 1 / 3]], [[0.5, 0.25, 0.25], [0.6, 0.3, 0.1]]],
        [[[0.3, 0.3, 0.4], [0.2, 0.5, 0.3]], [[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]],
    ]
)  # [P, S, 2, 3]
HAND = {"a": jnp.asarray(np.log(HAND_A) + 1.5, jnp.float32), "b": jnp.asarray(np.log(HAND_B) - 2.0, jnp.float32)}


def kl2(p, q):
    """Hand KL of two categoricals (math, float64)."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def js2(p, q):
    m = [(a + b) / 2 for a, b in zip(p, q)]
    return 0.5 * kl2(p, m) + 0.5 * kl2(q, m)


def hand_expected(div) -> tuple[float, float]:
    """``(D(0 || 1), D(1 || 0))`` of the HAND population: mean over states of the sum over heads
    and entries."""
    out = []
    for i, j in ((0, 1), (1, 0)):
        total = 0.0
        for s in range(2):
            total += div(HAND_A[i, s], HAND_A[j, s])
            total += sum(div(HAND_B[i, s, e], HAND_B[j, s, e]) for e in range(2))
        out.append(total / 2)
    return out[0], out[1]


def test_kl_closed_form():
    kl = np.asarray(kl_jit(HAND))
    kl01, kl10 = hand_expected(kl2)
    # e.g. the first state's head a: 0.2 ln(0.2/0.6) + 0.8 ln(0.8/0.4)
    assert kl2(HAND_A[0, 0], HAND_A[1, 0]) == pytest.approx(0.2 * math.log(1 / 3) + 0.8 * math.log(2), abs=1e-12)
    np.testing.assert_allclose(kl, [[0.0, kl01], [kl10, 0.0]], atol=1e-6, rtol=0)
    assert kl01 != pytest.approx(kl10, abs=1e-3)  # KL is not symmetric here


def test_js_closed_form():
    js = np.asarray(js_jit(HAND))
    js01, js10 = hand_expected(js2)
    assert js01 == pytest.approx(js10, abs=1e-12)
    np.testing.assert_allclose(js, [[0.0, js01], [js01, 0.0]], atol=1e-6, rtol=0)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 1.0, 4.0]))
def test_identical_policies_have_zero_divergence(seed, scale):
    one = random_logits(seed, scale)
    # Every member the same policy; member p's logits shifted by p (the same distribution).
    shift = jnp.arange(P, dtype=jnp.float32)
    same = {k: jnp.broadcast_to(v[:1], v.shape) + shift.reshape((P,) + (1,) * (v.ndim - 1)) for k, v in one.items()}
    np.testing.assert_allclose(kl_jit(same), 0.0, atol=1e-6, rtol=0)
    np.testing.assert_allclose(js_jit(same), 0.0, atol=1e-6, rtol=0)
    assert float(offdiag_jit(kl_jit(same))) == pytest.approx(0.0, abs=1e-6)


def test_js_of_disjoint_supports_is_ln2_per_categorical():
    # Member i puts a logit 60 higher on choice i of every categorical: disjoint supports.
    logits = {
        k: jnp.broadcast_to(60.0 * jnp.eye(P, shape[-1]).reshape((P, 1) + (1,) * (len(shape) - 1) + shape[-1:]), (P, S) + shape)
        for k, shape in HEADS.items()
    }
    js = np.asarray(js_jit(logits))
    expected = N_CATEGORICALS * LN2 * (1 - np.eye(P))
    np.testing.assert_allclose(js, expected, atol=1e-6, rtol=0)
    assert float(offdiag_jit(js)) == pytest.approx(N_CATEGORICALS * LN2, abs=1e-6)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.3, 1.0, 3.0, 8.0]))
def test_kl_and_js_match_numpy_reference(seed, scale):
    logits = random_logits(seed, scale)
    kl_ref, js_ref = reference(logits)
    kl, js = np.asarray(kl_jit(logits)), np.asarray(js_jit(logits))
    np.testing.assert_allclose(kl, kl_ref, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(js, js_ref, atol=2e-6, rtol=1e-5)
    # JS: exactly symmetric, zero diagonal, 0 <= JS <= ln 2 per categorical.
    np.testing.assert_array_equal(js, js.T)
    np.testing.assert_array_equal(np.diag(js), 0.0)
    np.testing.assert_array_equal(np.diag(kl), 0.0)
    assert (js >= 0).all() and (js <= N_CATEGORICALS * LN2 + 1e-6).all()
    assert (kl >= 0).all()
    off = ~np.eye(P, dtype=bool)
    assert float(offdiag_jit(kl)) == pytest.approx(kl_ref[off].mean(), rel=1e-5, abs=2e-5)


@pytest.mark.parametrize("chunk", [1, 4, 5])  # 6 states: remainders 0, 2 and 1
def test_chunked_equals_unchunked(chunk):
    logits = random_logits(7, 2.0)
    np.testing.assert_allclose(kl_jit(logits, chunk=chunk), kl_jit(logits, chunk=S), atol=1e-6, rtol=1e-6)
    # pair blocks of 4 over 6 pairs: the last block padded
    np.testing.assert_allclose(
        js_jit(logits, chunk=chunk, pair_block=4), js_jit(logits, chunk=S), atol=1e-7, rtol=1e-6
    )


def test_mean_offdiag():
    m = jnp.asarray([[5.0, 1.0, 2.0], [3.0, 7.0, 4.0], [5.0, 6.0, 9.0]])
    assert float(offdiag_jit(m)) == pytest.approx((1 + 2 + 3 + 4 + 5 + 6) / 6)
    assert float(analysis.mean_offdiag(jnp.ones((1, 1)))) == 0.0


# --- effective number of policies (Vendi score) -------------------------------------------


def test_vendi_identical_policies_is_one():
    assert float(vendi_jit(jnp.zeros((P, P)))) == 1.0
    logits = random_logits(3, 1.0)
    same = {k: jnp.broadcast_to(v[:1], v.shape) for k, v in logits.items()}
    assert float(vendi_jit(js_jit(same))) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(("k", "m"), [(1, 3), (2, 2), (3, 1), (5, 3)])
def test_vendi_copies_plus_distinct(k, m):
    n = k + m
    group = np.concatenate([np.zeros(k, int), np.arange(1, m + 1)])
    js = np.where(group[:, None] == group[None, :], 0.0, 60 * LN2)  # K = 2^-60 between groups
    w = np.array([k / n] + [1 / n] * m)
    expected = math.exp(-np.sum(w * np.log(w)))
    got = float(vendi_jit(jnp.asarray(js, jnp.float32)))
    assert got == pytest.approx(expected, abs=1e-5)
    assert 1.0 <= got <= m + 1 + 1e-6
    if k == 1:
        assert got == pytest.approx(n, abs=1e-5)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 1.0, 5.0]))
def test_vendi_bounds_and_reference(seed, scale):
    js = js_jit(random_logits(seed, scale))
    got = float(vendi_jit(js))
    assert 1.0 <= got <= P
    kern = np.exp(-np.asarray(js, np.float64) / LN2) / P
    lam = np.clip(np.linalg.eigvalsh(kern), 0, None)
    lam = lam[lam > 1e-12] / lam.sum()
    assert got == pytest.approx(math.exp(-np.sum(lam * np.log(lam))), rel=1e-4)


# --- behavioural (niche-profile) distance -----------------------------------------------


def js2_np(p, q):
    m = (p + q) / 2
    kl_p = np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / np.where(p > 0, m, 1)), 0.0))
    kl_q = np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1) / np.where(q > 0, m, 1)), 0.0))
    return 0.5 * kl_p + 0.5 * kl_q


def profile_reference(shares: np.ndarray) -> np.ndarray:
    p = shares / shares.sum(-1, keepdims=True)
    n = p.shape[0]
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = js2_np(p[i], p[j])
    return out


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_niche_profile_distance(seed):
    rng = np.random.default_rng(seed)
    shares = rng.integers(0, 5, size=(P, 6)).astype(np.float64)
    shares[:, 0] += 1  # no all-zero rows
    shares[1] = 3 * shares[0]  # same profile as member 0, as counts
    got = np.asarray(profile_jit(jnp.asarray(shares, jnp.float32)))
    np.testing.assert_allclose(got, profile_reference(shares), atol=1e-6, rtol=1e-5)
    assert got[0, 1] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_array_equal(got, got.T)


def test_niche_profile_distance_disjoint():
    shares = jnp.asarray(np.eye(P, 6), jnp.float32)
    np.testing.assert_allclose(profile_jit(shares), LN2 * (1 - np.eye(P)), atol=1e-6, rtol=0)


# --- niche and market metrics -----------------------------------------------------------

occupancy_jit = jax.jit(analysis.occupancy_entropy)
special_jit = jax.jit(analysis.specialisation_index, static_argnums=1)
hhi_jit = jax.jit(analysis.herfindahl)
gini_jit = jax.jit(analysis.gini)
lorenz_jit = jax.jit(analysis.lorenz, static_argnums=1)
dispersion_jit = jax.jit(analysis.price_dispersion)


def test_occupancy_entropy_hand():
    counts = jnp.asarray([[3.0, 3.0, 3.0, 3.0], [0.0, 7.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(occupancy_jit(counts), [math.log(4), 0.0, 0.0, LN2], atol=1e-6)
    assert float(occupancy_jit(jnp.asarray([2.0, 2.0, 2.0, 2.0]))) == pytest.approx(math.log(4), abs=1e-6)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_occupancy_entropy_reference(seed):
    counts = np.random.default_rng(seed).integers(0, 4, size=(5, 4)).astype(np.float64)
    counts[0] = 0.0
    p = counts / np.where(counts.sum(-1, keepdims=True) > 0, counts.sum(-1, keepdims=True), 1)
    ref = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1)
    np.testing.assert_allclose(occupancy_jit(jnp.asarray(counts, jnp.float32)), ref, atol=1e-6)


def test_specialisation_index():
    # T=4 choices of 3 agents among 4 niches: always one, evenly all four, two halves.
    niche = jnp.asarray([[2, 0, 1], [2, 1, 3], [2, 2, 1], [2, 3, 3]], jnp.int32)
    np.testing.assert_allclose(special_jit(niche, 4), [1.0, 0.0, 0.5], atol=1e-6)


def test_herfindahl_hand():
    # [P=4, J=4]: niche 0 a monopoly of member 2, niche 1 equal among 4, niche 2 unproduced,
    # niche 3 shares (0.5, 0.25, 0.25, 0).
    output = jnp.asarray([[0.0, 1.0, 0.0, 2.0], [0.0, 1.0, 0.0, 1.0], [5.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    hhi, largest, member = hhi_jit(output)
    np.testing.assert_allclose(hhi, [1.0, 0.25, 0.0, 0.375], atol=1e-7)
    np.testing.assert_allclose(largest, [1.0, 0.25, 0.0, 0.5], atol=1e-7)
    np.testing.assert_array_equal(member, [2, 0, -1, 0])
    assert member.dtype == jnp.int32


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_herfindahl_reference(seed):
    output = np.random.default_rng(seed).integers(0, 3, size=(P, 4)).astype(np.float64)
    hhi, largest, member = hhi_jit(jnp.asarray(output, jnp.float32))
    total = output.sum(0)
    share = output / np.where(total > 0, total, 1)
    np.testing.assert_allclose(hhi, (share**2).sum(0), atol=1e-6)
    np.testing.assert_allclose(largest, share.max(0), atol=1e-6)
    np.testing.assert_array_equal(member, np.where(total > 0, share.argmax(0), -1))


def test_gini_hand():
    assert float(gini_jit(jnp.asarray([0.0, 0.0, 0.0, 1.0]))) == pytest.approx(0.75, abs=1e-6)
    assert float(gini_jit(jnp.asarray([3.0, 3.0, 3.0, 3.0]))) == pytest.approx(0.0, abs=1e-6)
    assert float(gini_jit(jnp.zeros(4))) == 0.0
    assert float(gini_jit(jnp.asarray([1.0, 2.0, 3.0, 4.0]))) == pytest.approx(0.25, abs=1e-6)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_gini_and_lorenz_reference(seed):
    wealth = np.random.default_rng(seed).exponential(size=8) * np.random.default_rng(seed).integers(0, 2, size=8)
    wealth[0] += 0.5
    # Gini as the mean absolute difference over twice the mean.
    ref = np.abs(wealth[:, None] - wealth[None, :]).sum() / (2 * len(wealth) ** 2 * wealth.mean())
    assert float(gini_jit(jnp.asarray(wealth, jnp.float32))) == pytest.approx(ref, abs=1e-6)
    x = np.sort(wealth)
    knots = np.concatenate([[0.0], np.cumsum(x) / x.sum()])
    q = np.linspace(0, 1, 11)
    np.testing.assert_allclose(lorenz_jit(jnp.asarray(wealth, jnp.float32), 11), np.interp(q, np.arange(9) / 8, knots), atol=1e-6)


def test_lorenz_hand():
    np.testing.assert_allclose(lorenz_jit(jnp.asarray([0.0, 0.0, 0.0, 1.0]), 5), [0, 0, 0, 0, 1], atol=1e-7)
    np.testing.assert_allclose(lorenz_jit(jnp.asarray([2.0, 2.0, 2.0, 2.0]), 5), [0, 0.25, 0.5, 0.75, 1], atol=1e-7)
    np.testing.assert_allclose(lorenz_jit(jnp.zeros(4), 5), [0, 0.25, 0.5, 0.75, 1], atol=1e-7)
    # [0, 1, 1, 2]: knots (0, 0, .25, .5, 1); q = 0.125 is halfway between the first two.
    np.testing.assert_allclose(lorenz_jit(jnp.asarray([1.0, 0.0, 2.0, 1.0]), 9), [0, 0, 0, 0.125, 0.25, 0.375, 0.5, 0.75, 1], atol=1e-7)


def test_price_dispersion():
    prices = jnp.asarray([[1.0, 2.0, 0.0], [3.0, 2.0, 0.0], [2.0, 2.0, 0.0], [2.0, 2.0, 0.0]])
    np.testing.assert_allclose(dispersion_jit(prices), [math.sqrt(0.5) / 2, 0.0, 0.0], atol=1e-7)
    x = np.random.default_rng(1).uniform(1, 5, size=(4, 3))
    np.testing.assert_allclose(dispersion_jit(jnp.asarray(x, jnp.float32)), x.std(0) / x.mean(0), rtol=1e-5)


# --- memory: 128 members on 4096 probe states -----------------------------------------------


@pytest.mark.parametrize("name", ["kl_matrix", "js_matrix"])
def test_diversity_memory_compile_only(name):
    """Lower and compile (never run) for P=128, S=4096 with the economy's heads (446 logits
    per state; the input is 0.94 GB): the compiled temporaries stay under 1 GB.
    ``Compiled.memory_analysis()`` reports ``temp_size_in_bytes`` on XLA:CPU in jax 0.10."""
    spec = {"niche": (8,), "side": (6, 3), "quantity": (6, 6), "price": (6, 64)}
    shapes = {k: jax.ShapeDtypeStruct((128, 4096) + v, jnp.float32) for k, v in spec.items()}
    compiled = jax.jit(getattr(diversity, name)).lower(shapes).compile()
    stats = compiled.memory_analysis()
    assert stats is not None
    assert stats.argument_size_in_bytes == 128 * 4096 * 446 * 4
    assert stats.temp_size_in_bytes < 1e9
