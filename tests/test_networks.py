"""Actor-critic networks, population stacking, agent<->member layout and action distributions.

Few shapes (each compiles anew on 2 cores): one small torso ``hidden=(32, 32)`` on the tiny
economy's action spec, ``P = 3`` members, ``n = 8`` observations per member. The config
with an extra niche is only traced with ``jax.eval_shape`` (nothing compiled, no env run).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import economy
from agents.networks import (
    ActorCritic,
    entropy,
    from_members,
    init_population,
    joint_apply,
    log_prob,
    population_apply,
    sample_actions,
    to_members,
)
from conftest import assert_frequencies

P, n = 3, 8
HIDDEN = (32, 32)


@pytest.fixture(scope="module")
def net(tiny_env):
    return ActorCritic(tiny_env.action_spec, hidden=HIDDEN)


@pytest.fixture(scope="module")
def pop(net, tiny_env):
    return init_population(net, jax.random.key(0), tiny_env.obs_dim, P)


@pytest.fixture(scope="module")
def obs(tiny_env):
    return jnp.asarray(np.random.default_rng(1).standard_normal((P, n, tiny_env.obs_dim)), jnp.float32)


@pytest.fixture(scope="module")
def pop_out(net, pop, obs):
    return jax.jit(lambda p, o: population_apply(net, p, o))(pop, obs)


@pytest.fixture(scope="module")
def apply(net):
    return jax.jit(net.apply)


# Jitted once per argument structure (eager distrax runs op by op, which is slow here).
SAMPLE = jax.jit(sample_actions)
LOG_PROB = jax.jit(log_prob)
ENTROPY = jax.jit(entropy)


def member(params, m):
    return jax.tree.map(lambda x: x[m], params)


# ---- ActorCritic ------------------------------------------------------------------------


def test_output_shapes_follow_action_spec(tiny_env, tiny_cfg, net, pop, obs, apply):
    G, J = tiny_cfg.num_goods, tiny_cfg.num_niches
    assert (G, J, tiny_env.obs_dim) == (6, 7, 47)
    logits, value = apply(member(pop, 0), obs[0])
    assert set(logits) == {h.name for h in tiny_env.action_spec}
    for h in tiny_env.action_spec:
        assert logits[h.name].shape == (n, *h.shape, h.choices), h
        assert logits[h.name].dtype == jnp.float32
    assert logits["niche"].shape == (n, J + 1)
    assert logits["side"].shape == (n, G, 3)
    assert logits["quantity"].shape == (n, G, len(tiny_cfg.market.quantity_levels))
    assert logits["price"].shape == (n, G, tiny_cfg.market.price_ticks)
    assert value.shape == (n,) and value.dtype == jnp.float32
    # Arbitrary leading batch axes (shape-only trace, nothing compiled).
    out = jax.eval_shape(net.apply, member(pop, 0), jax.ShapeDtypeStruct((2, 5, tiny_env.obs_dim), jnp.float32))
    assert out[0]["price"].shape == (2, 5, G, tiny_cfg.market.price_ticks)
    assert out[1].shape == (2, 5)


def test_initial_policy_near_uniform_and_init_scales(pop_out, pop):
    logits = {k: v[0] for k, v in pop_out[0].items()}
    for name, l in logits.items():
        assert float(jnp.abs(l).max()) < 0.1, name  # policy outputs init with scale 0.01
    k = member(pop, 0)["params"]["torso_0"]["kernel"]  # orthogonal, scale sqrt(2): [47, 32]
    np.testing.assert_allclose(np.asarray(k.T @ k), 2.0 * np.eye(HIDDEN[0]), atol=1e-5)
    assert not np.any(np.asarray(member(pop, 0)["params"]["torso_0"]["bias"]))


def test_relu_and_bad_activation(tiny_env):
    spec = tiny_env.action_spec
    relu = ActorCritic(spec, hidden=HIDDEN, activation="relu")
    shapes = jax.eval_shape(relu.init, jax.random.key(0), jax.ShapeDtypeStruct((1, tiny_env.obs_dim), jnp.float32))
    assert shapes["params"]["torso_1"]["kernel"].shape == (HIDDEN[0], HIDDEN[1])
    with pytest.raises(ValueError, match="activation"):
        ActorCritic(spec, hidden=HIDDEN, activation="gelu").init(jax.random.key(0), jnp.zeros((1, tiny_env.obs_dim)))


def test_extra_niche_changes_heads_without_code_change(root, tiny_cfg, tiny_env):
    niches = [x.model_dump() for x in tiny_cfg.niches] + [
        {"name": "weaver", "inputs": {"fish": 1}, "outputs": {"bread": 1}, "labour": 2.0}
    ]
    cfg2 = economy.load_config(root / "configs" / "tiny.yaml", niches=niches)
    assert cfg2.num_niches == tiny_cfg.num_niches + 1
    env2 = economy.Economy(cfg2)  # builds the spec; nothing is compiled or run
    net2 = ActorCritic(env2.action_spec, hidden=HIDDEN)
    obs2 = jax.ShapeDtypeStruct((n, env2.obs_dim), jnp.float32)
    params2 = jax.eval_shape(net2.init, jax.random.key(0), obs2)
    logits2, value2 = jax.eval_shape(net2.apply, params2, obs2)
    J = tiny_cfg.num_niches
    assert logits2["niche"].shape == (n, J + 2)
    assert params2["params"]["policy_niche"]["kernel"].shape == (HIDDEN[-1], J + 2)
    assert params2["params"]["torso_0"]["kernel"].shape == (env2.obs_dim, HIDDEN[0])
    assert env2.obs_dim == tiny_env.obs_dim + 3
    for h in tiny_env.action_spec:
        if h.name != "niche":
            assert logits2[h.name].shape == (n, *h.shape, h.choices)
    assert value2.shape == (n,)


# ---- population -------------------------------------------------------------------------


def test_population_params_stacked_and_members_differ(net, pop, tiny_env):
    single = jax.eval_shape(net.init, jax.random.key(0), jax.ShapeDtypeStruct((1, tiny_env.obs_dim), jnp.float32))
    assert jax.tree.structure(pop) == jax.tree.structure(single)
    for leaf, ref in zip(jax.tree.leaves(pop), jax.tree.leaves(single)):
        assert leaf.shape == (P, *ref.shape) and leaf.dtype == ref.dtype
    kernels = {k: v["kernel"] for k, v in pop["params"].items()}
    assert set(kernels) == {"torso_0", "torso_1", "policy_niche", "policy_side", "policy_quantity", "policy_price", "value"}
    for name, k in kernels.items():
        k = np.asarray(k)
        for a in range(P):
            for b in range(a + 1, P):
                assert not np.allclose(k[a], k[b]), (name, a, b)
    # Member m is exactly net.init with the m-th split key.
    keys = jax.random.split(jax.random.key(0), P)
    ref = jax.jit(net.init)(keys[2], jnp.zeros((1, tiny_env.obs_dim), jnp.float32))
    # Orthogonal init is a Newton-Schulz matmul iteration: a vmapped (batched) matmul
    # rounds differently from a single one in the last float32 bits (seen: 1.3e-7).
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6), member(pop, 2), ref)


def test_population_apply_equals_per_member_apply(net, pop, obs, pop_out, apply):
    logits, value = pop_out
    assert value.shape == (P, n)
    for h in net.action_spec:
        assert logits[h.name].shape == (P, n, *h.shape, h.choices)
    for m in range(P):
        lm, vm = apply(member(pop, m), obs[m])
        np.testing.assert_allclose(np.asarray(value[m]), np.asarray(vm), rtol=1e-5, atol=1e-6)
        for name in lm:
            np.testing.assert_allclose(np.asarray(logits[name][m]), np.asarray(lm[name]), rtol=1e-5, atol=1e-7)
    assert not np.allclose(np.asarray(value[0]), np.asarray(value[1]))


# ---- agent <-> member layout ------------------------------------------------------------


def test_to_members_round_robin_and_round_trip():
    N, PP = 12, 3
    agents = np.arange(N)
    x = {"id": agents, "obs": np.arange(N * 2, dtype=np.float32).reshape(N, 2), "nested": {"a": agents[:, None, None] * np.ones((1, 2, 3))}}
    mx = to_members(x, PP)
    assert mx["id"].shape == (PP, N // PP)
    assert mx["obs"].shape == (PP, N // PP, 2)
    assert mx["nested"]["a"].shape == (PP, N // PP, 2, 3)
    for i in range(N):
        m, k = i % PP, i // PP
        assert int(mx["id"][m, k]) == i
        np.testing.assert_array_equal(np.asarray(mx["obs"][m, k]), x["obs"][i])
    back = from_members(mx)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), back, x)
    # And the other way round: from_members then to_members.
    y = jnp.arange(PP * 5 * 2).reshape(PP, 5, 2)
    np.testing.assert_array_equal(np.asarray(to_members(from_members(y), PP)), np.asarray(y))


def test_to_members_rejects_indivisible():
    with pytest.raises(ValueError, match=r"N=10.*P=3"):
        to_members(jnp.zeros((10, 2)), 3)
    with pytest.raises(ValueError, match=r"N=10.*P=4"):
        to_members({"a": jnp.zeros((12,)), "b": jnp.zeros((10,))}, 4)


# ---- distributions ----------------------------------------------------------------------


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def random_logits(spec, batch, seed):
    rng = np.random.default_rng(seed)
    return {h.name: (3.0 * rng.standard_normal(batch + tuple(h.shape) + (h.choices,))).astype(np.float32) for h in spec}


def test_log_prob_and_entropy_closed_form(tiny_env):
    spec = tiny_env.action_spec
    batch = (5,)
    logits = random_logits(spec, batch, 0)
    rng = np.random.default_rng(1)
    actions = {h.name: rng.integers(0, h.choices, batch + tuple(h.shape)).astype(np.int32) for h in spec}
    want_lp = np.zeros(batch)
    want_ent = np.zeros(batch)
    for h in spec:
        ls = np_log_softmax(logits[h.name])
        picked = np.take_along_axis(ls, actions[h.name][..., None].astype(np.int64), -1)[..., 0]
        ent = -(np.exp(ls) * ls).sum(-1)
        axes = tuple(range(len(batch), picked.ndim))
        want_lp += picked.sum(axes) if axes else picked
        want_ent += ent.sum(axes) if axes else ent
    jl = {k: jnp.asarray(v) for k, v in logits.items()}
    got_lp = LOG_PROB(jl, {k: jnp.asarray(v) for k, v in actions.items()})
    got_ent = ENTROPY(jl)
    assert got_lp.shape == batch and got_ent.shape == batch
    assert got_lp.dtype == jnp.float32 and got_ent.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got_lp), want_lp, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got_ent), want_ent, rtol=1e-5, atol=1e-4)
    # Explicit batch_ndim agrees; a batch-ndim of 0 sums everything.
    both = jax.jit(lambda l, a: (log_prob(l, a, batch_ndim=1), entropy(l, batch_ndim=0)))(jl, actions)
    np.testing.assert_allclose(np.asarray(both[0]), want_lp, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(both[1]), want_ent.sum(), rtol=1e-5)


def test_sample_actions_deterministic_in_range(pop_out, tiny_env):
    logits = {k: v[0] for k, v in pop_out[0].items()}
    a1, lp1 = SAMPLE(jax.random.key(7), logits)
    a2, lp2 = SAMPLE(jax.random.key(7), logits)
    a3, _ = SAMPLE(jax.random.key(8), logits)
    # Key per head in sorted name order: dict insertion order does not matter.
    a4, lp4 = SAMPLE(jax.random.key(7), dict(reversed(list(logits.items()))))
    assert lp1.shape == (n,) and lp1.dtype == jnp.float32
    for h in tiny_env.action_spec:
        a = np.asarray(a1[h.name])
        assert a.shape == (n, *h.shape) and a1[h.name].dtype == jnp.int32
        assert a.min() >= 0 and a.max() < h.choices
        np.testing.assert_array_equal(a, np.asarray(a2[h.name]))
        np.testing.assert_array_equal(a, np.asarray(a4[h.name]))
    np.testing.assert_array_equal(np.asarray(lp1), np.asarray(lp2))
    np.testing.assert_array_equal(np.asarray(lp1), np.asarray(lp4))
    assert any(not np.array_equal(np.asarray(a1[k]), np.asarray(a3[k])) for k in a1)
    np.testing.assert_allclose(np.asarray(lp1), np.asarray(LOG_PROB(logits, a1)), rtol=1e-6, atol=1e-5)
    # The env accepts them as they are.
    assert set(a1) == {h.name for h in tiny_env.action_spec}


def test_sample_frequencies_match_softmax():
    """8000 draws per categorical; every count within its exact binomial interval at the
    5-sigma level (``|f - p| <= 5 sqrt(p (1 - p) / 8000)`` for all but rare choices,
    :func:`conftest.assert_frequencies`); the key is fixed, so the test is deterministic."""
    draws = 8000
    rng = np.random.default_rng(3)
    niche = rng.standard_normal(8).astype(np.float32)
    side = (1.5 * rng.standard_normal((6, 3))).astype(np.float32)
    logits = {
        "niche": jnp.broadcast_to(jnp.asarray(niche), (draws, 8)),
        "side": jnp.broadcast_to(jnp.asarray(side), (draws, 6, 3)),
    }
    actions, lp = SAMPLE(jax.random.key(11), logits)
    assert lp.shape == (draws,)
    assert_frequencies(np.bincount(np.asarray(actions["niche"]), minlength=8), np.exp(np_log_softmax(niche)))
    a_side = np.asarray(actions["side"])
    for g in range(6):
        assert_frequencies(np.bincount(a_side[:, g], minlength=3), np.exp(np_log_softmax(side[g])), err_msg=f"side {g}")


def test_sample_frequencies_match_softmax_many_choices():
    """64 choices (the two-level search): 8000 draws per categorical, every count within
    its exact binomial 5-sigma interval for peaked, spread and masked rows (masked
    choices, probability 0, never drawn)."""
    draws = 8000
    rng = np.random.default_rng(4)
    price = (np.array([0.5, 1.5, 3.0])[:, None] * rng.standard_normal((3, 64))).astype(np.float32)
    price[2, ::2] = -1e4  # every other choice impossible
    # A lone head with a shape: the batch is inferred as [draws, 3] (one log-prob per categorical).
    actions, lp = SAMPLE(jax.random.key(12), {"price": jnp.broadcast_to(jnp.asarray(price), (draws, 3, 64))})
    assert lp.shape == (draws, 3)
    a = np.asarray(actions["price"])
    for g in range(3):
        p = np.exp(np_log_softmax(price[g]))
        assert_frequencies(np.bincount(a[:, g], minlength=64), p, err_msg=f"price {g}")
    assert np.all(a[:, 2] % 2 == 1)
    want = np.stack([np_log_softmax(price[g])[a[:, g]] for g in range(3)], -1)
    np.testing.assert_allclose(np.asarray(lp), want, rtol=1e-5, atol=1e-4)


def test_joint_apply_equals_apply_with_gradients(net, pop, obs):
    """The PPO loss's one-matmul forward: same logits, value and parameter gradients as
    ``net.apply`` (up to summation order)."""
    p0 = member(pop, 0)

    def loss(apply_fn, p):
        logits, value = apply_fn(p, obs[0])
        return sum(jnp.sum(jnp.sin(v)) for v in logits.values()) + jnp.sum(value**2)

    (lj, vj), (la, va) = jax.jit(joint_apply(net))(p0, obs[0]), jax.jit(net.apply)(p0, obs[0])
    assert set(lj) == set(la)
    for k in la:
        np.testing.assert_allclose(np.asarray(lj[k]), np.asarray(la[k]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(vj), np.asarray(va), rtol=1e-5, atol=1e-6)
    gj = jax.jit(jax.grad(lambda p: loss(joint_apply(net), p)))(p0)
    ga = jax.jit(jax.grad(lambda p: loss(net.apply, p)))(p0)
    assert jax.tree.structure(gj) == jax.tree.structure(ga)
    for x, y in zip(jax.tree.leaves(gj), jax.tree.leaves(ga)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
