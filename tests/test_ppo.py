"""PPO: GAE against a float64 NumPy reference, the clipped loss's gradients, and the
minibatch-epoch update (learning, vmapping over members, determinism).

``ppo_loss`` is checked against a float64 NumPy reference (loss, metrics, and gradients
by finite differences) on a toy apply_fn whose parameters are per-sample logits.

Few shapes: GAE at ``[T, n] = [7, 5]``; the reference loss at 12 samples; the update on
a toy actor-critic (obs dim 4, heads ``a`` (3 choices) and ``b`` (2 entries x 4 choices),
hidden 16) with a batch of 32, 2 epochs x 4 minibatches; all update tests share one
jitted single-member function and one jitted vmapped one.
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
from selfplay.ppo import (PPOSettings, clipped_surrogate, gae, minibatch_order, minibatch_split, minibatches, ppo_loss,
                          ppo_update)

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

    hyper = {"clip_eps": EPS, "ent_coef": 0.0, "vf_coef": 0.5}
    grads, metrics = jax.grad(ppo_loss, has_aux=True)(params, apply_fn, batch, hyper)
    g = np.asarray(grads["logits"])
    assert np.all(g[CLIPPED] == 0.0), g
    assert np.all(np.abs(g[~CLIPPED]).sum(-1) > 0.0), g
    np.testing.assert_allclose(float(metrics["clip_fraction"]), 4 / 6, rtol=1e-6)  # |ratio-1| > eps: 0, 1, 4, 5
    want_kl = np.mean((RATIOS - 1) - np.log(RATIOS))
    np.testing.assert_allclose(float(metrics["approx_kl"]), want_kl, rtol=1e-5)
    # Value loss (PPO2): v=0, v_old=0, R=1 -> 0.5 * 1.
    np.testing.assert_allclose(float(metrics["value_loss"]), 0.5, rtol=1e-6)


# ---- ppo_loss against a float64 NumPy reference -----------------------------------------

# A toy apply_fn whose parameters are the per-sample logits of two heads with the economy's
# structure (a scalar head and a per-good head: logits [n, C] and [n, G, C], actions [n] and
# [n, G]) and the per-sample values.
NR, GR = 12, 3
REF_HEADS = {"niche": (NR, 5), "side": (NR, GR, 3)}
REF_HYPER = {"clip_eps": 0.15, "ent_coef": 0.05, "vf_coef": 0.7, "lr": 3e-4, "gamma": 0.99}  # extra keys ignored
# Ratio targets and the signs of the normalised advantages: clipped-active (ratio > 1+eps
# with A > 0, ratio < 1-eps with A < 0), outside the range but unclipped (the pessimistic
# term is the unclipped one), and inside the range; none within 0.05 of a clip boundary.
REF_RATIOS = np.array([1.6, 0.5, 1.3, 0.7, 1.4, 0.6, 1.25, 0.75, 1.05, 0.92, 1.1, 0.95])
REF_SIGNS = np.array([1, -1, 1, -1, -1, 1, -1, 1, 1, -1, -1, 1])


def np_log_softmax_last(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def ref_ppo_loss(logits, v, batch, clip_eps, ent_coef, vf_coef, *, ent_sign=-1.0, value_max=np.maximum,
                 policy_eps=None, value_eps=None):
    """Float64 PPO loss from the definitions; the keyword arguments inject known bugs
    (entropy sign, min for max in the value loss, another eps in either clip)."""
    pe = clip_eps if policy_eps is None else policy_eps
    ve = clip_eps if value_eps is None else value_eps
    new_lp = np.zeros(len(v))
    ent = np.zeros(len(v))
    for name, x in logits.items():
        ls = np_log_softmax_last(x)
        a = np.asarray(batch["actions"][name])
        chosen = np.take_along_axis(ls, a[..., None], -1)[..., 0]
        new_lp += chosen.reshape(len(v), -1).sum(-1)  # summed over the head's entries
        ent += (-(np.exp(ls) * ls).sum(-1)).reshape(len(v), -1).sum(-1)
    log_ratio = new_lp - np.asarray(batch["log_prob"], np.float64)
    ratio = np.exp(log_ratio)
    adv = np.asarray(batch["advantages"], np.float64)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # over every sample, weighted or not
    w = np.asarray(batch.get("weights", np.ones(len(v))), np.float64)
    wmean = lambda x: (x * w).sum() / w.sum()  # noqa: E731  (the policy terms: weighted samples only)
    policy = wmean(np.maximum(-ratio * adv, -np.clip(ratio, 1 - pe, 1 + pe) * adv))
    v_old, ret = (np.asarray(batch[k], np.float64) for k in ("values", "returns"))
    v_clip = v_old + np.clip(v - v_old, -ve, ve)
    value = 0.5 * value_max((v - ret) ** 2, (v_clip - ret) ** 2).mean()
    entropy = wmean(ent)
    loss = policy + vf_coef * value + ent_sign * ent_coef * entropy
    metrics = {
        "policy_loss": policy, "value_loss": value, "entropy": entropy,
        "approx_kl": wmean((ratio - 1) - log_ratio), "clip_fraction": wmean(np.abs(ratio - 1) > pe),
    }
    return loss, metrics


def _ref_case():
    rng = np.random.default_rng(42)
    logits = {k: 1.5 * rng.standard_normal(s) for k, s in REF_HEADS.items()}
    actions = {k: rng.integers(0, s[-1], s[:-1]) for k, s in REF_HEADS.items()}
    new_lp = sum(
        np.take_along_axis(np_log_softmax_last(logits[k]), actions[k][..., None], -1)[..., 0].reshape(NR, -1).sum(-1)
        for k in REF_HEADS
    )
    # Raw advantages with a mean and scale far from (0, 1): normalisation matters.
    adv = 2.0 + 3.0 * REF_SIGNS * (1.0 + 0.5 * rng.random(NR))
    # Every new value is more than eps (0.15) from the old one; half the returns lie beyond the
    # new value (the clipped term is the larger), half on the old value's side (the unclipped).
    v_old = rng.standard_normal(NR)
    step = rng.choice([-1.0, 1.0], NR) * (0.3 + 0.5 * rng.random(NR))
    v = v_old + step
    v_clip = v_old + np.clip(step, -0.15, 0.15)
    beyond = np.arange(NR) % 2 == 0
    ret = np.where(beyond, v + np.sign(step) * (0.2 + rng.random(NR)), v_clip - np.sign(step) * (0.2 + rng.random(NR)))
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    logits = {k: f32(x) for k, x in logits.items()}
    v = f32(v)
    batch = {
        "obs": np.zeros((NR, 1), np.float32),
        "actions": {k: np.asarray(a, np.int32) for k, a in actions.items()},
        "log_prob": f32(new_lp - np.log(REF_RATIOS)),
        "advantages": f32(adv),
        "returns": f32(ret),
        "values": f32(v_old),
    }
    return logits, v, batch


def _toy_apply(p, obs):
    return p["logits"], p["v"]


def assert_logit_grads_match(grads, ref, lg64, v64, fd_h=1e-6):
    """Each head's logit gradient in ``grads`` against central finite differences of the
    float64 reference ``ref(logits, v)[0]`` (no sample near a kink)."""
    for name in REF_HEADS:
        fd = np.zeros_like(lg64[name])
        for idx in np.ndindex(fd.shape):
            up = {k: x.copy() for k, x in lg64.items()}
            dn = {k: x.copy() for k, x in lg64.items()}
            up[name][idx] += fd_h
            dn[name][idx] -= fd_h
            fd[idx] = (ref(up, v64)[0] - ref(dn, v64)[0]) / (2 * fd_h)
        np.testing.assert_allclose(np.asarray(grads["logits"][name], np.float64), fd, rtol=1e-4, atol=2e-6, err_msg=name)
        assert np.abs(fd).max() > 1e-2, name  # a real gradient, not zeros against zeros


_LOSS_AND_GRAD = jax.jit(jax.value_and_grad(ppo_loss, has_aux=True), static_argnums=1)


def test_ppo_loss_matches_float64_reference():
    """Loss, every metric and the gradients (w.r.t. each head's logits and the values)
    against a float64 NumPy reference written from the PPO definitions, with an entropy
    bonus on and the value clip active both ways. The reference differs from the loss by
    orders of magnitude more than the tolerance under each injected bug: entropy sign
    flipped, min for max in the value loss, the clip at another eps (policy or value)."""
    logits, v, batch = _ref_case()
    h = REF_HYPER
    eps, ent_coef, vf_coef = h["clip_eps"], h["ent_coef"], h["vf_coef"]
    ref = lambda lg, vv, **kw: ref_ppo_loss(lg, vv, batch, eps, ent_coef, vf_coef, **kw)  # noqa: E731
    lg64 = {k: np.asarray(x, np.float64) for k, x in logits.items()}
    v64 = np.asarray(v, np.float64)
    want, want_m = ref(lg64, v64)

    # The case exercises what it must: ratios in each regime, both value-loss branches.
    ratio = np.exp(
        sum(np.take_along_axis(np_log_softmax_last(lg64[k]), batch["actions"][k][..., None], -1)[..., 0]
            .reshape(NR, -1).sum(-1) for k in REF_HEADS) - batch["log_prob"]
    )
    a = np.asarray(batch["advantages"], np.float64)
    a = (a - a.mean()) / (a.std() + 1e-8)
    np.testing.assert_array_equal(np.sign(a), REF_SIGNS)
    active = ((ratio > 1 + eps) & (a > 0)) | ((ratio < 1 - eps) & (a < 0))
    outside = np.abs(ratio - 1) > eps
    assert active.sum() >= 2 and (outside & ~active).sum() >= 2 and (~outside).sum() >= 2, (ratio, a)
    v_old, ret = batch["values"].astype(np.float64), batch["returns"].astype(np.float64)
    vc = v_old + np.clip(v64 - v_old, -eps, eps)
    clipped_larger = (vc - ret) ** 2 > (v64 - ret) ** 2 + 1e-3
    unclipped_larger = (v64 - ret) ** 2 > (vc - ret) ** 2 + 1e-3
    assert clipped_larger.sum() >= 3 and unclipped_larger.sum() >= 3 and (clipped_larger | unclipped_larger).all()
    assert (np.abs(np.abs(v64 - v_old) - eps) > 0.1).all()  # no sample near the value clip's kink

    params = {"logits": {k: jnp.asarray(x) for k, x in logits.items()}, "v": jnp.asarray(v)}
    hyper_j = {k: jnp.float32(x) for k, x in h.items()}
    (loss, metrics), grads = _LOSS_AND_GRAD(params, _toy_apply, jax.tree.map(jnp.asarray, batch), hyper_j)
    tol = dict(rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(float(loss), want, **tol)
    assert set(metrics) == set(want_m)
    for k in want_m:
        np.testing.assert_allclose(float(metrics[k]), want_m[k], **tol, err_msg=k)
    np.testing.assert_allclose(float(metrics["clip_fraction"]), outside.mean())

    # Power: each injected bug moves the loss by far more than the tolerance.
    for bug in (dict(ent_sign=+1.0), dict(value_max=np.minimum), dict(policy_eps=0.2), dict(value_eps=0.2)):
        assert abs(ref(lg64, v64, **bug)[0] - want) > 1e-3, bug

    # Gradients against central finite differences of the reference (no sample near a kink).
    fd_h = 1e-6
    assert_logit_grads_match(grads, ref, lg64, v64)
    fd_v = np.zeros(NR)
    for i in range(NR):
        e = np.zeros(NR)
        e[i] = fd_h
        fd_v[i] = (ref(lg64, v64 + e)[0] - ref(lg64, v64 - e)[0]) / (2 * fd_h)
    np.testing.assert_allclose(np.asarray(grads["v"], np.float64), fd_v, rtol=1e-4, atol=2e-6)
    # The value gradient is vf_coef * (v - R) / n where the unclipped term is the larger, and
    # exactly zero where the clipped term is (the clip is saturated: |v - v_old| > eps).
    np.testing.assert_array_equal(np.asarray(grads["v"])[clipped_larger], 0.0)
    np.testing.assert_allclose(
        np.asarray(grads["v"], np.float64)[unclipped_larger], (vf_coef * (v64 - ret) / NR)[unclipped_larger], rtol=1e-5
    )

def test_ppo_loss_weights_count_only_the_weighted_samples_policy_terms():
    """``batch["weights"]`` (0/1; the trainer's renewal steps under ``economy.niche_tenure``):
    surrogate, entropy, KL and clip fraction average over the weight-1 samples, the value loss
    and the advantage normalisation over all; gradients against the float64 reference.
    Catches: weights ignored; the value loss weighted too; a sum over weighted samples
    divided by all samples; the advantages normalised over the weighted ones only."""
    logits, v, batch = _ref_case()
    weights = (np.arange(NR) % 3 != 1).astype(np.float32)
    batch = {**batch, "weights": weights}
    h = REF_HYPER
    ref = lambda lg, vv: ref_ppo_loss(lg, vv, batch, h["clip_eps"], h["ent_coef"], h["vf_coef"])  # noqa: E731
    lg64 = {k: np.asarray(x, np.float64) for k, x in logits.items()}
    v64 = np.asarray(v, np.float64)
    want, want_m = ref(lg64, v64)
    params = {"logits": {k: jnp.asarray(x) for k, x in logits.items()}, "v": jnp.asarray(v)}
    (loss, metrics), grads = _LOSS_AND_GRAD(params, _toy_apply, jax.tree.map(jnp.asarray, batch),
                                            {k: jnp.float32(x) for k, x in h.items()})
    tol = dict(rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(float(loss), want, **tol)
    for k in want_m:
        np.testing.assert_allclose(float(metrics[k]), want_m[k], **tol, err_msg=k)
    unweighted, _ = ref_ppo_loss(lg64, v64, {k: x for k, x in batch.items() if k != "weights"}, h["clip_eps"],
                                 h["ent_coef"], h["vf_coef"])
    assert abs(unweighted - want) > 1e-3  # the weights change the loss: the test has power
    assert_logit_grads_match(grads, ref, lg64, v64)
    for name in REF_HEADS:  # a weight-0 sample's logits get no gradient
        np.testing.assert_array_equal(np.asarray(grads["logits"][name])[weights == 0], 0.0)


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


def hyper(clip_eps, ent_coef, vf_coef):
    """The loss's hyperparameters as ``ppo_update`` takes them (a mapping of scalars)."""
    return {"clip_eps": clip_eps, "ent_coef": ent_coef, "vf_coef": vf_coef}


def _update(params, opt_state, batch, key, clip_eps, ent_coef, vf_coef):
    return ppo_update(params, opt_state, streams(batch), key, hyper(clip_eps, ent_coef, vf_coef),
                      PPOSettings(TX, NET.apply, EPOCHS, MINIBATCHES))


UPDATE = jax.jit(_update)
_VUPDATE = jax.jit(jax.vmap(ppo_update, in_axes=(0, 0, 0, 0, 0, None)), static_argnums=(5,))


def VUPDATE(params, opt_state, batch, keys, hyper, settings):
    return _VUPDATE(params, opt_state, streams(batch, lead=1), keys, hyper, settings)


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


def test_imitation_loss_matches_float64_reference():
    """The warm start's loss: negative log-likelihood of the teacher's actions (summed over
    each head's entries), the unclipped value loss and the entropy bonus, against float64
    NumPy, with its gradients: the logits' is ``(softmax - onehot(a)) / n`` minus the
    entropy term, the values' ``vf_coef * (v - R) / n`` everywhere (no clip: a clipped
    value loss would zero it where ``|v - v_old| > eps``, as in this case everywhere)."""
    from selfplay.ppo import imitation_loss

    logits, v, batch = _ref_case()
    h = REF_HYPER
    lg64 = {k: np.asarray(x, np.float64) for k, x in logits.items()}
    v64 = np.asarray(v, np.float64)
    ret = np.asarray(batch["returns"], np.float64)

    def ref(lg, vv):
        lp = np.zeros(NR)
        ent = np.zeros(NR)
        for name, x in lg.items():
            ls = np_log_softmax_last(x)
            a = np.asarray(batch["actions"][name])
            lp += np.take_along_axis(ls, a[..., None], -1)[..., 0].reshape(NR, -1).sum(-1)
            ent += (-(np.exp(ls) * ls).sum(-1)).reshape(NR, -1).sum(-1)
        nll, value, entropy = -lp.mean(), 0.5 * ((vv - ret) ** 2).mean(), ent.mean()
        return nll + h["vf_coef"] * value - h["ent_coef"] * entropy, nll, value, entropy

    want, nll, value, entropy = ref(lg64, v64)
    params = {"logits": {k: jnp.asarray(x) for k, x in logits.items()}, "v": jnp.asarray(v)}
    hyper_j = {k: jnp.float32(x) for k, x in h.items()}
    (loss, metrics), grads = jax.value_and_grad(imitation_loss, has_aux=True)(
        params, _toy_apply, jax.tree.map(jnp.asarray, batch), hyper_j
    )
    tol = dict(rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(float(loss), want, **tol)
    np.testing.assert_allclose(float(metrics["policy_loss"]), nll, **tol)
    np.testing.assert_allclose(float(metrics["value_loss"]), value, **tol)
    np.testing.assert_allclose(float(metrics["entropy"]), entropy, **tol)
    assert float(metrics["approx_kl"]) == 0.0 and float(metrics["clip_fraction"]) == 0.0
    # The same metric names as ppo_loss (the trainer switches between them under one cond).
    _, ppo_m = ppo_loss(params, _toy_apply, jax.tree.map(jnp.asarray, batch), hyper_j)
    assert set(metrics) == set(ppo_m)
    np.testing.assert_allclose(np.asarray(grads["v"], np.float64), h["vf_coef"] * (v64 - ret) / NR, rtol=1e-5, atol=1e-7)
    assert_logit_grads_match(grads, ref, lg64, v64)


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
    assert set(metrics) == {"loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm"}
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
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
    vparams, vopt, vmetrics = VUPDATE(pop, opt_state, batch, keys, hyper(clip, ent, vf),
                                      PPOSettings(TX, NET.apply, EPOCHS, MINIBATCHES))
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
        ppo_update(params, TX.init(params), batch, jax.random.key(0), hyper(0.2, 0.0, 0.5), PPOSettings(TX, NET.apply, 1, 4))
    with pytest.raises(ValueError, match="streams, samples"):
        ppo_update(params, TX.init(params), {"x": jnp.zeros((3, 8)), "y": jnp.zeros((4, 8))},
                   jax.random.key(0), hyper(0.2, 0.0, 0.5), PPOSettings(TX, NET.apply, 1, 4))


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


def test_niche_entropy_bonus_adds_exactly_its_term():
    """``ent_coef_niche`` subtracts c x (mean entropy of the niche head alone) from the loss
    and reports that entropy; other heads and terms are untouched, and without the key the
    loss has no such term."""
    rng = np.random.default_rng(3)
    n = 16
    params = {"niche": jnp.asarray(rng.normal(size=(n, 5)), jnp.float32),
              "side": jnp.asarray(rng.normal(size=(n, 3, 3)), jnp.float32),
              "v": jnp.asarray(rng.normal(size=(n,)), jnp.float32)}
    apply_fn = lambda p, obs: ({"niche": p["niche"], "side": p["side"]}, p["v"])
    batch = {"obs": jnp.zeros((n, 1)), "actions": {"niche": jnp.asarray(rng.integers(0, 5, n), jnp.int32),
                                                    "side": jnp.asarray(rng.integers(0, 3, (n, 3)), jnp.int32)},
             "log_prob": jnp.asarray(rng.normal(size=n) - 4, jnp.float32), "advantages": jnp.asarray(rng.normal(size=n), jnp.float32),
             "returns": jnp.asarray(rng.normal(size=n), jnp.float32), "values": jnp.asarray(rng.normal(size=n), jnp.float32)}
    base = hyper(0.2, 0.01, 0.5)
    l0, m0 = ppo_loss(params, apply_fn, batch, base)
    l1, m1 = ppo_loss(params, apply_fn, batch, {**base, "ent_coef_niche": 0.3})
    x = np.asarray(params["niche"], np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    h = float(np.mean(-(p * np.log(p)).sum(-1)))
    assert float(m1["entropy_niche"]) == pytest.approx(h, rel=1e-5) and "entropy_niche" not in m0
    assert float(l1) == pytest.approx(float(l0) - 0.3 * h, rel=1e-5, abs=1e-6)
    g0 = jax.grad(lambda q: ppo_loss(q, apply_fn, batch, base)[0])(params)
    g1 = jax.grad(lambda q: ppo_loss(q, apply_fn, batch, {**base, "ent_coef_niche": 0.3})[0])(params)
    np.testing.assert_allclose(g1["side"], g0["side"], rtol=1e-6, atol=1e-7)
    assert not np.allclose(g1["niche"], g0["niche"])


def test_niche_mix_bonus_is_the_entropy_of_the_mean_distribution():
    """``mix_coef_niche`` subtracts c x H(mean over samples of the niche distribution) (the
    mix, not each sample's entropy): a batch of deterministic agents on different niches gets
    the full bonus, the same agents all on one niche none; weights restrict the mean to the
    weighted samples; only the niche logits get its gradient. Catches: the per-sample entropy
    instead of the mix's, a sign error, weights ignored."""
    n, J1 = 6, 4
    rng = np.random.default_rng(5)
    spread = np.full((n, J1), -30.0, np.float32)
    spread[np.arange(n), np.arange(n) % J1] = 0.0  # each sample (nearly) certain, different niches
    one = np.full((n, J1), -30.0, np.float32)
    one[:, 2] = 0.0
    apply_fn = lambda p, obs: ({"niche": p["niche"]}, p["v"])  # noqa: E731
    batch = {"obs": jnp.zeros((n, 1)), "actions": {"niche": jnp.asarray(np.arange(n) % J1, jnp.int32)},
             "log_prob": jnp.zeros((n,), jnp.float32), "advantages": jnp.asarray(rng.normal(size=n), jnp.float32),
             "returns": jnp.zeros((n,), jnp.float32), "values": jnp.zeros((n,), jnp.float32)}
    base = hyper(0.2, 0.0, 0.5)
    c = 0.7

    def bonus(logits, b=batch):
        p = {"niche": jnp.asarray(logits), "v": jnp.zeros((n,), jnp.float32)}
        l0, _ = ppo_loss(p, apply_fn, b, base)
        l1, m1 = ppo_loss(p, apply_fn, b, {**base, "mix_coef_niche": c})
        return float(l0) - float(l1), float(m1["mix_entropy_niche"])

    mix = np.bincount(np.arange(n) % J1, minlength=J1) / n  # [2, 2, 1, 1] / 6
    h = float(-(mix * np.log(mix)).sum())
    d, got = bonus(spread)
    assert got == pytest.approx(h, rel=1e-4) and d == pytest.approx(c * h, rel=1e-4)
    d, got = bonus(one)
    assert abs(got) < 1e-6 and abs(d) < 1e-6
    w = np.asarray([1, 1, 0, 0, 0, 0], np.float32)  # samples on niches 0 and 1
    d, got = bonus(spread, {**batch, "weights": jnp.asarray(w)})
    assert got == pytest.approx(np.log(2.0), rel=1e-4)
    g = jax.grad(lambda q: ppo_loss(q, apply_fn, batch, {**base, "mix_coef_niche": c})[0])(
        {"niche": jnp.asarray(rng.normal(size=(n, J1)), jnp.float32), "v": jnp.zeros((n,), jnp.float32)})
    assert np.abs(np.asarray(g["niche"])).max() > 0
