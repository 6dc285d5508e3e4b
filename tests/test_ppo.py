"""PPO: GAE against a float64 NumPy reference, the clipped loss's gradients, and the
minibatch-epoch update (learning, vmapping over members, determinism).

Few shapes: GAE at ``[T, n] = [7, 5]``; the update on a toy actor-critic (obs dim 4,
heads ``a`` (3 choices) and ``b`` (2 entries x 4 choices), hidden 16) with a batch of
32, 2 epochs x 4 minibatches; all update tests share one jitted single-member function
and one jitted vmapped one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agents.networks import ActorCritic, init_population, log_prob
from economy import ActionHead
from selfplay.ppo import clipped_surrogate, gae, minibatch_order, minibatch_split, minibatches, ppo_loss, ppo_update

# ---- GAE --------------------------------------------------------------------------------

T, NE = 7, 5
GAE = jax.jit(gae)


def ref_gae(r, v, d, b, lv, gamma, lam):
    """Float64 reference, written as the truncated sum
    ``A_t = sum_{k>=t} (gamma lam)^(k-t) delta_k`` up to and including the first done."""
    r, v, b, lv = (np.asarray(x, np.float64) for x in (r, v, b, lv))
    d = np.asarray(d, bool)
    gamma, lam = float(np.float32(gamma)), float(np.float32(lam))
    steps, agents = r.shape
    delta = np.zeros((steps, agents))
    for i in range(agents):
        for k in range(steps):
            nxt = b[k, i] if d[k, i] else (v[k + 1, i] if k + 1 < steps else lv[i])
            delta[k, i] = r[k, i] + gamma * nxt - v[k, i]
    adv = np.zeros((steps, agents))
    for i in range(agents):
        for t in range(steps):
            acc, w = 0.0, 1.0
            for k in range(t, steps):
                acc += w * delta[k, i]
                if d[k, i]:
                    break
                w *= gamma * lam
            adv[t, i] = acc
    return adv, adv + v


VALS = st.floats(-3.0, 3.0, width=32)
TN = hnp.arrays(np.float32, (T, NE), elements=VALS)


@pytest.mark.parametrize("mode", ["none", "terminated", "truncated"])
@settings(max_examples=25, deadline=None)
@given(
    rewards=TN,
    values=TN,
    boot=TN,
    last=hnp.arrays(np.float32, (NE,), elements=VALS),
    done_draw=hnp.arrays(np.bool_, (T, NE)),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
)
def test_gae_matches_reference(mode, rewards, values, boot, last, done_draw, gamma, lam):
    if mode == "none":
        dones = np.zeros((T, NE), bool)
        bootstrap = boot  # ignored where not done
    else:
        dones = done_draw.copy()
        dones[3, :] = True  # every agent has an episode end mid-rollout
        dones[T - 1, 0] = True  # and one at the last step (last_value must be ignored there)
        bootstrap = np.zeros_like(boot) if mode == "terminated" else boot
    adv, ret = GAE(rewards, values, dones, bootstrap, last, jnp.float32(gamma), jnp.float32(lam))
    want_adv, want_ret = ref_gae(rewards, values, dones, bootstrap, last, gamma, lam)
    assert adv.shape == ret.shape == (T, NE) and adv.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), want_ret, rtol=1e-5, atol=1e-5)


def test_gae_hand_example_truncation_and_termination():
    """Agent 0: truncated after step 1 (bootstrap 10 != values[2] = 3), terminated after
    step 4 (bootstrap 0); gamma 0.9, lam 0.5. Worked by hand:
    deltas [0.8, 7, 0.6, 1.5, -5, 0.3, 0.2] -> A [3.95, 7, 0.2625, -0.75, -5, 0.39, 0.2]."""
    r = np.zeros((T, NE), np.float32)
    v = np.zeros((T, NE), np.float32)
    d = np.zeros((T, NE), bool)
    b = np.zeros((T, NE), np.float32)
    lv = np.zeros(NE, np.float32)
    v[:, 0] = np.arange(1, 8)
    r[3, 0] = 1.0
    d[1, 0] = d[4, 0] = True
    b[1, 0] = 10.0
    lv[0] = 8.0
    adv, ret = GAE(r, v, d, b, lv, jnp.float32(0.9), jnp.float32(0.5))
    want = np.array([3.95, 7.0, 0.2625, -0.75, -5.0, 0.39, 0.2])
    np.testing.assert_allclose(np.asarray(adv[:, 0]), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ret[:, 0]), want + np.arange(1, 8), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(adv[:, 1:]), 0.0)
    # Bootstrapping at truncation matters: with values[t+1] instead, A_1 would be 0.9*3 - 2.
    assert abs(float(adv[1, 0]) - (0.9 * 3 - 2)) > 1.0


# ---- clipped surrogate ------------------------------------------------------------------

EPS = 0.2
# ratio, advantage: [0] above 1+eps with A>0 (clipped), [1] below 1-eps with A<0 (clipped),
# [2], [3] inside the clip range, [4] above 1+eps with A<0 and [5] below 1-eps with A>0
# (outside the range but the unclipped term is the pessimistic one, so not clipped).
RATIOS = np.array([1.5, 0.5, 1.05, 0.9, 1.5, 0.5], np.float32)
ADVS = np.array([1.0, -1.0, 1.0, -1.0, -1.0, 1.0], np.float32)  # mean 0, std 1: normalisation keeps signs
CLIPPED = np.array([True, True, False, False, False, False])


def test_clipped_surrogate_gradient_zero_outside_clip_region():
    log_ratio = jnp.log(jnp.asarray(RATIOS))
    loss = clipped_surrogate(log_ratio, jnp.asarray(ADVS), EPS)
    want = np.maximum(-RATIOS * ADVS, -np.clip(RATIOS, 1 - EPS, 1 + EPS) * ADVS)
    np.testing.assert_allclose(np.asarray(loss), want, rtol=1e-6)
    g = np.asarray(jax.grad(lambda lr: clipped_surrogate(lr, jnp.asarray(ADVS), EPS).sum())(log_ratio))
    assert np.all(g[CLIPPED] == 0.0), g
    assert np.all(g[~CLIPPED] != 0.0), g
    # d/dlogr of -ratio*A is -ratio*A where unclipped.
    np.testing.assert_allclose(g[~CLIPPED], (-RATIOS * ADVS)[~CLIPPED], rtol=1e-6)


def test_ppo_loss_gradient_zero_for_clipped_samples():
    """Through ``ppo_loss`` with a toy apply_fn whose parameters are the per-sample logits:
    the gradient on a clipped sample's logits is exactly zero (entropy bonus off)."""
    rng = np.random.default_rng(0)
    k = len(RATIOS)
    logits = jnp.asarray(rng.standard_normal((k, 3)), jnp.float32)
    actions = {"a": jnp.asarray(rng.integers(0, 3, k), jnp.int32)}
    new_lp = log_prob({"a": logits}, actions)
    params = {"logits": logits, "v": jnp.zeros(k, jnp.float32)}
    batch = {
        "obs": jnp.zeros((k, 1), jnp.float32),
        "actions": actions,
        "log_prob": new_lp - jnp.log(jnp.asarray(RATIOS)),
        "advantages": jnp.asarray(ADVS),
        "returns": jnp.ones(k, jnp.float32),
        "values": jnp.zeros(k, jnp.float32),
    }

    def apply_fn(p, obs):
        return {"a": p["logits"]}, p["v"]

    grads, metrics = jax.grad(ppo_loss, has_aux=True)(params, apply_fn, batch, EPS, 0.0, 0.5)
    g = np.asarray(grads["logits"])
    assert np.all(g[CLIPPED] == 0.0), g
    assert np.all(np.abs(g[~CLIPPED]).sum(-1) > 0.0), g
    np.testing.assert_allclose(float(metrics["clip_fraction"]), 4 / 6, rtol=1e-6)  # |ratio-1| > eps: 0, 1, 4, 5
    want_kl = np.mean((RATIOS - 1) - np.log(RATIOS))
    np.testing.assert_allclose(float(metrics["approx_kl"]), want_kl, rtol=1e-5)
    # Value loss (PPO2): v=0, v_old=0, R=1 -> 0.5 * 1.
    np.testing.assert_allclose(float(metrics["value_loss"]), 0.5, rtol=1e-6)


# ---- ppo_update -------------------------------------------------------------------------

SPEC = (ActionHead("a", (), 3), ActionHead("b", (2,), 4))
NET = ActorCritic(SPEC, hidden=(16,))
OBS_DIM, NB, EPOCHS, MINIBATCHES = 4, 32, 2, 4
ADAM = optax.inject_hyperparams(optax.adam)
TX = ADAM(learning_rate=1e-3)  # the learning rate actually used is the one in opt_state


STREAMS = 4  # the NB samples as 4 streams (agents) of 8 steps


def streams(batch, lead=0):
    """``[NB, ...]`` leaves (after ``lead`` leading axes) as ``[STREAMS, NB / STREAMS, ...]``."""
    return jax.tree.map(lambda x: x.reshape(x.shape[:lead] + (STREAMS, -1) + x.shape[lead + 1 :]), batch)


def _update(params, opt_state, batch, key, clip_eps, ent_coef, vf_coef):
    return ppo_update(
        params, opt_state, TX, NET.apply, streams(batch), key, clip_eps, ent_coef, vf_coef, EPOCHS, MINIBATCHES
    )


UPDATE = jax.jit(_update)
_VUPDATE = jax.jit(
    jax.vmap(ppo_update, in_axes=(0, 0, None, None, 0, 0, 0, 0, 0, None, None)), static_argnums=(2, 3, 9, 10)
)


def VUPDATE(params, opt_state, tx, apply_fn, batch, *rest):
    return _VUPDATE(params, opt_state, tx, apply_fn, streams(batch, lead=1), *rest)


@jax.jit
def _policy(params, obs, actions):
    logits, value = NET.apply(params, obs)
    return log_prob(logits, actions), value, jax.nn.softmax(logits["a"], -1)


def make_batch(params, seed):
    """Actions drawn uniformly; head ``a``'s action 1 has advantage +1, others -1."""
    rng = np.random.default_rng(seed)
    obs = jnp.asarray(rng.standard_normal((NB, OBS_DIM)), jnp.float32)
    actions = {
        "a": jnp.asarray(rng.integers(0, 3, NB), jnp.int32),
        "b": jnp.asarray(rng.integers(0, 4, (NB, 2)), jnp.int32),
    }
    lp, value, _ = _policy(params, obs, actions)
    adv = jnp.where(actions["a"] == 1, 1.0, -1.0) + 0.1 * jnp.asarray(rng.standard_normal(NB), jnp.float32)
    return {"obs": obs, "actions": actions, "log_prob": lp, "advantages": adv, "returns": value + 0.5 * adv, "values": value}


@pytest.fixture(scope="module")
def pop():
    return init_population(NET, jax.random.key(0), OBS_DIM, 2)


def member(tree, m):
    return jax.tree.map(lambda x: x[m], tree)


def hp(x):
    return jnp.float32(x)


def test_update_increases_probability_of_advantaged_action(pop):
    params = member(pop, 0)
    opt_state = ADAM(learning_rate=1e-2).init(params)
    batch = make_batch(params, 0)
    _, _, p_before = _policy(params, batch["obs"], batch["actions"])
    new_params, new_opt, metrics = UPDATE(params, opt_state, batch, jax.random.key(1), hp(0.2), hp(0.0), hp(0.5))
    _, _, p_after = _policy(new_params, batch["obs"], batch["actions"])
    before, after = np.asarray(p_before.mean(0)), np.asarray(p_after.mean(0))
    # From a near-uniform 1/3 the clip (eps 0.2) caps the gain per sample near +0.067;
    # 8 Adam steps at lr 1e-2 reach about +0.046 here.
    assert after[1] > before[1] + 0.03, (before, after)
    assert after[0] < before[0] and after[2] < before[2], (before, after)  # negative advantage
    assert set(metrics) == {"loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"}
    for k, m in metrics.items():
        assert m.shape == () and np.isfinite(float(m)), k
    assert 0.0 <= float(metrics["clip_fraction"]) <= 1.0
    assert float(metrics["approx_kl"]) >= 0.0
    assert int(new_opt.count) == int(new_opt.inner_state[0].count) == EPOCHS * MINIBATCHES  # one step per minibatch
    np.testing.assert_allclose(float(new_opt.hyperparams["learning_rate"]), 1e-2, rtol=1e-6)


def test_update_deterministic_under_key(pop):
    params = member(pop, 1)
    opt_state = ADAM(learning_rate=3e-3).init(params)
    batch = make_batch(params, 1)
    args = (batch,)
    out1 = UPDATE(params, opt_state, *args, jax.random.key(5), hp(0.2), hp(0.01), hp(0.5))
    out2 = UPDATE(params, opt_state, *args, jax.random.key(5), hp(0.2), hp(0.01), hp(0.5))
    out3 = UPDATE(params, opt_state, *args, jax.random.key(6), hp(0.2), hp(0.01), hp(0.5))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), out1, out2)
    k1 = np.asarray(out1[0]["params"]["torso_0"]["kernel"])
    k3 = np.asarray(out3[0]["params"]["torso_0"]["kernel"])
    assert not np.array_equal(k1, k3)  # another key, other minibatches


def test_update_vmapped_over_members_equals_separate_runs(pop):
    lrs = jnp.asarray([1e-3, 3e-2], jnp.float32)
    opt_state = jax.vmap(lambda p, lr: ADAM(learning_rate=lr).init(p))(pop, lrs)
    batches = [make_batch(member(pop, m), 10 + m) for m in range(2)]
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
    keys = jax.random.split(jax.random.key(3), 2)
    clip = jnp.asarray([0.1, 0.3], jnp.float32)
    ent = jnp.asarray([0.0, 0.01], jnp.float32)
    vf = jnp.asarray([0.5, 1.0], jnp.float32)
    vparams, vopt, vmetrics = VUPDATE(pop, opt_state, TX, NET.apply, batch, keys, clip, ent, vf, EPOCHS, MINIBATCHES)
    assert all(x.shape[0] == 2 for x in jax.tree.leaves((vparams, vopt, vmetrics)))
    for m in range(2):
        sp, so, sm = UPDATE(member(pop, m), member(opt_state, m), batches[m], keys[m], clip[m], ent[m], vf[m])
        for got, want in ((vparams, sp), (vopt, so), (vmetrics, sm)):
            jax.tree.map(
                lambda g, w: np.testing.assert_allclose(np.asarray(g[m]), np.asarray(w), rtol=1e-6, atol=1e-6),
                got,
                want,
            )
    np.testing.assert_allclose(np.asarray(vopt.hyperparams["learning_rate"]), np.asarray(lrs))
    # The members really took different steps: the larger learning rate moved further.
    moved = [
        float(sum(jnp.abs(a[m] - b[m]).sum() for a, b in zip(jax.tree.leaves(vparams), jax.tree.leaves(pop))))
        for m in range(2)
    ]
    assert moved[1] > 5 * moved[0], moved


def test_update_rejects_indivisible_minibatches(pop):
    params = member(pop, 0)
    batch = {"x": jnp.zeros((3, 10, 2))}
    with pytest.raises(ValueError, match="num_minibatches=4 needs 2 groups.*K=10.*B=3 streams"):
        ppo_update(params, TX.init(params), TX, NET.apply, batch, jax.random.key(0), 0.2, 0.0, 0.5, 1, 4)
    with pytest.raises(ValueError, match="streams, samples"):
        ppo_update(params, TX.init(params), TX, NET.apply, {"x": jnp.zeros((3, 8)), "y": jnp.zeros((4, 8))},
                   jax.random.key(0), 0.2, 0.0, 0.5, 1, 4)


@pytest.mark.parametrize("num_minibatches, groups, parts", [(4, 1, 4), (8, 2, 4), (6, 3, 2), (1, 1, 1)])
def test_minibatches_cover_every_sample_once(num_minibatches, groups, parts):
    """6 streams of 4 samples: every (stream, sample) lands in exactly one minibatch; a
    minibatch holds one part of every stream of one interleaved group of streams."""
    b, k = 6, 4
    assert minibatch_split(num_minibatches, b, k) == (groups, parts)
    ids = jnp.arange(b * k, dtype=jnp.int32).reshape(b, k)  # stream * k + sample
    order = minibatch_order(jax.random.key(1), b, k)
    mbs = np.asarray(minibatches(ids, order, num_minibatches))
    assert mbs.shape == (num_minibatches, b // groups, k // parts)
    assert sorted(mbs.reshape(-1).tolist()) == list(range(b * k))
    for m, mb in enumerate(mbs):
        streams = set((mb // k).reshape(-1).tolist())
        assert streams == {s for s in range(b) if s % groups == m // parts}, (m, streams)
        for row in mb // k:  # each row is one stream
            assert len(set(row.tolist())) == 1


def test_minibatch_order_is_a_permutation_per_stream_and_shard_invariant():
    """Every stream gets a permutation of its samples; streams differ; the order of a
    stream does not change when other streams are added after it (it depends only on the
    key and the stream's index, so splitting the stream axis over devices changes nothing)."""
    key = jax.random.key(4)
    order = np.asarray(jax.jit(minibatch_order, static_argnums=(1, 2))(key, 6, 8))
    assert order.shape == (6, 8) and order.dtype == np.int32
    for row in order:
        assert sorted(row) == list(range(8))
    assert len({tuple(r) for r in order}) > 1
    more = np.asarray(jax.jit(minibatch_order, static_argnums=(1, 2))(key, 12, 8))
    np.testing.assert_array_equal(more[:6], order)
