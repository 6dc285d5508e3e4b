"""The fused PPO loss terms (agents.networks.policy_terms, train.loss_path=fused) against
the traced path (autodiff through per-categorical log-softmax / distrax), the native
kernels against their XLA twin, and the PureJaxRL-style reference (benchmarks/reference_ppo.py)
against Agora's loss: the same law, the same objective, the same gradients up to float
rounding.

Tolerances: float32 sums of up to 446 terms, computed in different orders (the native
kernel's register tiles against XLA's matmul, one shift per row against one per
categorical) and through polynomial exp/log (relative error ~2e-7): values agree to
1e-5 relative, gradients (a further matmul over the rows) to 1e-4 relative to the largest
entry of each leaf. A real bug (a wrong sign, a missing term, a mis-sliced head, a swapped
action) moves them by orders of magnitude more.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import native
from agents.networks import ActorCritic, FusedPolicy, head_sizes, init_population, joint_apply, policy_terms
from economy import Economy
from economy import native as economy_native
from selfplay import ppo
from selfplay.config import load_run_config
from tests.conftest import ROOT

NATIVE = native.available()
PATHS = [False] + [True] * NATIVE  # the XLA twin always; the native kernels where they run
VALUE_RTOL, GRAD_RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def env():
    return Economy(load_run_config(ROOT / "configs/economy/classic.yaml", []).economy)


def traced_terms(h, kernel, bias, actions, sizes):
    """The straightforward definition, differentiated by JAX: per categorical log_softmax."""
    z = h @ kernel + bias
    lps, ents, off = [], [], 0
    for j, c in enumerate(sizes):
        logp = jax.nn.log_softmax(z[..., off:off + c], -1)
        lps.append(jnp.take_along_axis(logp, actions[..., j:j + 1], -1)[..., 0])
        ents.append(-jnp.sum(jnp.exp(logp) * logp, -1))
        off += c
    return jnp.stack(lps, -1), jnp.stack(ents, -1), z[..., -1]


def layer(key, n, hdim, sizes, scale, wide: float | None = None):
    """A random output layer and actions; with ``wide``, the last third of the rows have
    features ``wide`` times larger (logits spanning far more than 80 within a row)."""
    k = jax.random.split(key, 4)
    c = sum(sizes) + 1
    h = jnp.tanh(jax.random.normal(k[0], (n, hdim)))
    if wide is not None:
        h = h.at[2 * n // 3:].multiply(wide)
    kernel = scale * jax.random.normal(k[1], (hdim, c)) / np.sqrt(hdim)
    bias = jax.random.normal(k[2], (c,))
    actions = jnp.stack([jax.random.randint(jax.random.fold_in(k[3], j), (n,), 0, s) for j, s in enumerate(sizes)], -1)
    return h, kernel, bias, actions.astype(jnp.int32)


SIZES_ODD = (5, 1, 13, 13, 2, 40, 3)  # lengths off the 8-lane grid, a one-choice categorical


def _weighted(fn, sizes):
    """A scalar of all three outputs with fixed, distinct weights per categorical."""
    wl = jnp.linspace(-1.0, 2.0, len(sizes))
    we = jnp.linspace(0.5, -1.5, len(sizes))

    def f(h, kernel, bias, actions):
        lp, ent, v = fn(h, kernel, bias, actions)
        return jnp.sum(lp * wl) + jnp.sum(ent * we) + jnp.sum(jnp.sin(v))

    return f


def _close(a, b, rtol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.max(np.abs(b)), 1e-6)
    assert np.max(np.abs(a - b)) <= rtol * scale, (np.max(np.abs(a - b)), scale)


@pytest.mark.parametrize("native_path", PATHS, ids=lambda x: "native" if x else "xla")
@pytest.mark.parametrize("sizes", ["economy", SIZES_ODD], ids=["economy", "odd"])
def test_policy_terms_match_the_traced_definition(env, native_path, sizes):
    """Moderate rows (one shift per row in the kernel) and wide ones (logits spanning
    far more than 80: a shift per categorical) in one batch."""
    sizes = tuple(head_sizes(env.action_spec)) if sizes == "economy" else sizes
    h, kernel, bias, actions = layer(jax.random.key(1), 203, 32, sizes, 1.0, wide=60.0)
    z = np.asarray(h @ kernel + bias)
    assert np.ptp(z[:100, :-1], 1).max() < 80 < np.ptp(z[-60:, :-1], 1).min()
    fused = jax.jit(lambda *a: policy_terms(*a, sizes, native_path))(h, kernel, bias, actions)
    ref = jax.jit(lambda *a: traced_terms(*a, sizes))(h, kernel, bias, actions)
    for got, want in zip(fused, ref):
        _close(got, want, VALUE_RTOL)
    # the entropy of a one-choice categorical is 0 and its action certain
    if 1 in sizes:
        j = sizes.index(1)
        assert np.all(np.abs(np.asarray(fused[0][:, j])) < 1e-5) and np.all(np.abs(np.asarray(fused[1][:, j])) < 1e-5)
    g_fused = jax.jit(jax.grad(_weighted(lambda *a: policy_terms(*a, sizes, native_path), sizes), argnums=(0, 1, 2)))(
        h, kernel, bias, actions)
    g_ref = jax.jit(jax.grad(_weighted(lambda *a: traced_terms(*a, sizes), sizes), argnums=(0, 1, 2)))(
        h, kernel, bias, actions)
    for got, want in zip(g_fused, g_ref):
        _close(got, want, GRAD_RTOL)


@pytest.mark.skipif(not NATIVE, reason="native kernels unavailable")
def test_native_kernels_do_not_depend_on_how_rows_are_split(env):
    """Per-row results (log-probabilities, entropies, values, dh) are bit-identical whatever
    the split of rows (as over shards of the agent axis), and whether members are vmapped
    or called one by one; the sums over rows (dw, db) are the same on every call."""
    sizes = tuple(head_sizes(env.action_spec))
    h, kernel, bias, actions = layer(jax.random.key(2), 1000, 64, sizes, 3.0, wide=30.0)
    g = [jax.random.normal(jax.random.key(k), s) for k, s in ((3, (1000, len(sizes))), (4, (1000, len(sizes))),
                                                              (5, (1000,)))]
    stats = jax.jit(lambda h, a: native.stats(h, kernel, bias, a, sizes))
    grad = jax.jit(lambda h, a, gl, ge, gv: native.stats_grad(h, kernel, bias, a, gl, ge, gv, sizes))
    whole = stats(h, actions), grad(h, actions, *g)
    for cut in (1, 500, 997):
        parts = [(stats(h[s], actions[s]), grad(h[s], actions[s], *(x[s] for x in g)))
                 for s in (slice(0, cut), slice(cut, None))]
        for i in range(3):
            np.testing.assert_array_equal(np.concatenate([p[0][i] for p in parts]), whole[0][i])
        np.testing.assert_array_equal(np.concatenate([p[1][0] for p in parts]), whole[1][0])  # dh
    again = grad(h, actions, *g)
    for i in range(3):
        np.testing.assert_array_equal(again[i], whole[1][i])
    # vmapped over two members = each member alone
    h2, k2, b2, a2 = (jnp.stack([x, x[::-1] * 0.5]) for x in (h, kernel, bias, actions))
    g2 = [jnp.stack([x, x * 2]) for x in g]

    def one(h, k, b, a, gl, ge, gv):
        return native.stats(h, k, b, a, sizes), native.stats_grad(h, k, b, a, gl, ge, gv, sizes)

    batched = jax.jit(jax.vmap(one))(h2, k2, b2, a2, *g2)
    for m in range(2):
        alone = jax.jit(one)(h2[m], k2[m], b2[m], a2[m], *(x[m] for x in g2))
        for i in range(2):
            for j in range(len(alone[i])):
                np.testing.assert_array_equal(batched[i][j][m], alone[i][j])


@pytest.fixture(scope="module")
def minibatch(env):
    net = ActorCritic(env.action_spec)
    params = jax.tree.map(lambda x: x[0], init_population(net, jax.random.key(0), env.obs_dim, 1))
    # a policy far from uniform, so that every term of the loss is exercised
    params = jax.tree.map(lambda x: x * 20 if x.ndim == 2 and x.shape[1] > 100 else x, params)
    n, k = 512, jax.random.key(3)
    actions = {h.name: jax.random.randint(jax.random.fold_in(k, i), (n,) + tuple(h.shape), 0, h.choices)
               for i, h in enumerate(env.action_spec)}
    keys = jax.random.split(jax.random.fold_in(k, 99), 5)
    batch = {"obs": jax.random.normal(keys[0], (n, env.obs_dim)), "actions": actions,
             "values": jax.random.normal(keys[1], (n,)), "advantages": jax.random.normal(keys[2], (n,)),
             "returns": jax.random.normal(keys[3], (n,))}
    lp, *_ = ppo._policy_terms(joint_apply(net), params, {**batch, "log_prob": jnp.zeros((n,))}, 1)
    batch["log_prob"] = lp + 0.2 * jax.random.normal(keys[4], (n,))  # some samples clipped, most not
    return net, params, batch


@pytest.mark.parametrize("native_path", PATHS, ids=lambda x: "native" if x else "xla")
@pytest.mark.parametrize("loss", ["ppo", "imitation"])
def test_fused_loss_and_gradients_equal_the_traced_path(minibatch, native_path, loss):
    net, params, batch = minibatch
    loss_fn = ppo.ppo_loss if loss == "ppo" else ppo.imitation_loss
    hyper = {"clip_eps": 0.2, "ent_coef": 0.01, "vf_coef": 0.5, "ent_coef_niche": 0.05}
    run = lambda apply: jax.jit(jax.value_and_grad(lambda p: loss_fn(p, apply, batch, hyper), has_aux=True))(params)  # noqa: E731
    (l_ref, m_ref), g_ref = run(joint_apply(net))
    (l_fused, m_fused), g_fused = run(FusedPolicy(net, native=native_path))
    if native_path:  # the loss's terms by agora_stats, their gradient by agora_stats_grad
        jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: loss_fn(p, FusedPolicy(net, native=True), batch, hyper)[0]))(params))
        assert "agora_stats_grad" in jaxpr and "agora_stats" in jaxpr.replace("agora_stats_grad", "")
    if loss == "ppo":
        assert 0.02 < float(m_ref["clip_fraction"]) < 0.9  # both branches of the clip are exercised
    assert set(m_fused) == set(m_ref) and "entropy_niche" in m_fused
    _close(l_fused, l_ref, VALUE_RTOL)
    # A mean of per-sample terms that cancel (the surrogate over normalised advantages: a
    # mean near 0 of terms near +-1) carries the float error of its summands, not of its
    # value: compare it at the scale of the mean absolute summand.
    lp_ref, *_ = ppo._policy_terms(joint_apply(net), params, batch, 1)
    adv = (batch["advantages"] - batch["advantages"].mean()) / (batch["advantages"].std() + ppo.ADV_EPS)
    summands = {"policy_loss": float(jnp.mean(jnp.abs(ppo.clipped_surrogate(lp_ref - batch["log_prob"], adv, 0.2))))}
    for name in m_ref:
        scale = max(abs(float(m_ref[name])), summands.get(name, 0.0) if loss == "ppo" else 0.0)
        assert abs(float(m_fused[name]) - float(m_ref[name])) <= (1e-4 if name == "approx_kl" else VALUE_RTOL) * max(scale, 1e-6), name
    jax.tree.map(lambda a, b: _close(a, b, GRAD_RTOL), g_fused, g_ref)


def test_fallback_to_the_xla_path_is_announced_once(monkeypatch, env):
    """Where the native kernels cannot run, the fused loss uses its XLA twin and says why, once."""
    monkeypatch.setattr(native, "_load", lambda: "no AVX2 here (test)")
    economy_native._warn_once.cache_clear()
    net = ActorCritic(env.action_spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = FusedPolicy(net), FusedPolicy(net)
    assert not first.native and not second.native
    said = [w for w in caught if "no AVX2 here (test)" in str(w.message)]
    assert len(said) == 1 and said[0].category is RuntimeWarning
    with pytest.raises(RuntimeError, match="no AVX2 here"):
        FusedPolicy(net, native=True)
    economy_native._warn_once.cache_clear()


def test_reference_update_has_agoras_law_and_loss(minibatch):
    """benchmarks/reference_ppo.py: its network takes Agora's parameters unchanged, its
    distrax log-probabilities are Agora's, and its loss and gradients are Agora's."""
    from benchmarks.reference_ppo import RefNet, dist_log_prob
    from benchmarks.reference_ppo import ppo_loss as ref_loss

    net, params, batch = minibatch
    ref = RefNet(net.action_spec, tuple(net.hidden), net.activation)
    logits_ref, v_ref = jax.jit(ref.apply)(params, batch["obs"])
    logits, v = jax.jit(net.apply)(params, batch["obs"])
    for name in logits:
        np.testing.assert_allclose(logits_ref[name], logits[name], rtol=1e-6, atol=1e-6)
    lp, *_ = ppo._policy_terms(FusedPolicy(net), params, batch, 1)
    _close(dist_log_prob(logits_ref, batch["actions"]), lp, VALUE_RTOL)
    hyper = {"clip_eps": 0.2, "ent_coef": 0.01, "vf_coef": 0.5}
    (l_ref, _), g_ref = jax.jit(jax.value_and_grad(lambda p: ref_loss(p, ref, batch, hyper), has_aux=True))(params)
    (l, _), g = jax.jit(jax.value_and_grad(lambda p: ppo.ppo_loss(p, FusedPolicy(net), batch, hyper), has_aux=True))(params)
    _close(l, l_ref, VALUE_RTOL)
    jax.tree.map(lambda a, b: _close(a, b, GRAD_RTOL), g, g_ref)


@pytest.mark.parametrize("native_path", PATHS, ids=lambda x: "native" if x else "xla")
def test_a_loss_term_added_in_python_reaches_the_gradient(minibatch, native_path):
    """The loss is written once, in JAX, on the per-sample terms: a term a user adds to it
    (here a penalty on the squared log-probability and on the value) changes the gradient
    of the default fused path exactly as it changes the traced path's, with no change to
    the native kernels. (With a loss computed inside a kernel, the Python term would change
    the logged loss and not the gradient.)"""
    net, params, batch = minibatch
    hyper = {"clip_eps": 0.2, "ent_coef": 0.01, "vf_coef": 0.5}

    def with_term(p, apply_fn, b, h):
        loss, metrics = ppo.ppo_loss(p, apply_fn, b, h)
        lp, _, _, value, _ = ppo._policy_terms(apply_fn, p, b, 1)
        return loss + 0.3 * jnp.mean(lp**2) + 0.2 * jnp.mean(jnp.cos(value)), metrics

    grad = lambda fn, apply: jax.jit(jax.grad(lambda p: fn(p, apply, batch, hyper)[0]))(params)  # noqa: E731
    fused = FusedPolicy(net, native=native_path)
    g_plain, g_term = grad(ppo.ppo_loss, fused), grad(with_term, fused)
    g_ref = grad(with_term, joint_apply(net))
    jax.tree.map(lambda a, b: _close(a, b, GRAD_RTOL), g_term, g_ref)  # the term's gradient, as autodiff has it
    moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                zip(jax.tree.leaves(g_term), jax.tree.leaves(g_plain)))
    assert moved > 100 * GRAD_RTOL * max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(g_plain))
