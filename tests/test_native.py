"""The native acting kernel (agents/native_sample.cc through agents/native.py).

Checked against closed forms and the XLA path: draw frequencies against softmax (fast
path, and the per-categorical path that masked logits take), log-probabilities against
NumPy's log-softmax, the fused output layer against XLA's matmul, invariance to how rows
are split (tiles, threads, vmap), bad shapes, and the fallbacks (no compiler,
``AGORA_NATIVE=0``). Two shapes only: ``[8000, 146]`` draws and ``[2, 999, 16]`` features.
"""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import native
from agents.networks import act_parts, head_sizes, joint_width, split_joint
from economy import rng
from economy.state import ActionHead
from conftest import assert_frequencies

if not native.available():
    ok, why = native._cpu_supported()
    if os.environ.get("CI") == "true" and ok:
        pytest.fail(f"native sampler unavailable on a CPU that supports it: {native._load()}", pytrace=False)
    pytest.skip(f"native sampler unavailable: {native._load()}", allow_module_level=True)

# Sizes: 8, then two 64-choice categoricals, then 6 and 3 (sum 145) and one ignored column.
SIZES = [8, 64, 64, 6, 3]
SPEC = (ActionHead("a_niche", (), 8), ActionHead("b_price", (2,), 64), ActionHead("c_qty", (), 6),
        ActionHead("d_side", (), 3))
DRAWS = 8000


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def segments(row):
    out, off = [], 0
    for c in SIZES:
        out.append(row[off:off + c])
        off += c
    return out


DRAW = jax.jit(lambda key, x: native.sample(key, x, SIZES))


@pytest.mark.parametrize("masked", [False, True], ids=["fast-path", "masked"])
def test_draw_frequencies_and_log_probs(masked):
    """8000 draws of one row; every count within its exact binomial 5-sigma interval
    (``|f - p| <= 5 sqrt(p (1 - p) / 8000)`` for all but rare choices, probability-0 choices
    never drawn: :func:`conftest.assert_frequencies`).
    ``masked``: every other choice of the second 64-choice categorical at -1e4, which puts
    the row on the per-categorical path (logits more than 80 apart); those are never drawn."""
    r = np.random.default_rng(5 + masked)
    row = np.concatenate([r.standard_normal(8), 0.5 * r.standard_normal(64), 3.0 * r.standard_normal(64),
                          1.5 * r.standard_normal(6), r.standard_normal(3), [123.0]]).astype(np.float32)
    if masked:
        row[8 + 64:8 + 128:2] = -1e4
    actions, lp = DRAW(jax.random.key(21), jnp.broadcast_to(jnp.asarray(row), (DRAWS, row.size)))
    a = np.asarray(actions)
    assert a.shape == (DRAWS, len(SIZES)) and a.dtype == np.int32 and lp.shape == (DRAWS,)
    want_lp = np.zeros(DRAWS)
    for j, seg in enumerate(segments(row)):
        p = np.exp(np_log_softmax(seg))
        assert a[:, j].min() >= 0 and a[:, j].max() < seg.size
        assert_frequencies(np.bincount(a[:, j], minlength=seg.size), p, err_msg=f"categorical {j}")
        want_lp += np_log_softmax(seg)[a[:, j]]
    if masked:
        assert np.all(a[:, 2] % 2 == 1)
    np.testing.assert_allclose(np.asarray(lp), want_lp, rtol=1e-5, atol=1e-4)


def test_draw_is_the_inverse_cdf_at_the_uniforms():
    """With explicit uniforms the draw is min{a : cdf_a > u}: u just below / above a CDF
    boundary picks the choice before / after it."""
    row = np.concatenate([np.log([0.1, 0.2, 0.3, 0.4, 1e-3, 1e-3, 1e-3, 1e-3]), np.zeros(137), [0.0]]).astype(np.float32)
    p = np.exp(np_log_softmax(row[:8]))
    cdf = np.cumsum(p)
    us = np.array([0.0, cdf[0] - 1e-4, cdf[0] + 1e-4, cdf[2] + 1e-4, 0.999999], np.float32)
    x = jnp.broadcast_to(jnp.asarray(row), (us.size, row.size))
    u = jnp.asarray(np.stack([us] + [np.full(us.size, 0.5, np.float32)] * 4, -1))
    a, _ = jax.jit(lambda x, u: native.draw(x, u, SIZES))(x, u)
    assert np.asarray(a)[:, 0].tolist() == [0, 0, 1, 3, 7]


# ---- the fused output layer ------------------------------------------------------------------

G, N, H = 2, 999, 16  # 999 rows: a partial 6-row tile and a partial 96-row block per group
C = sum(SIZES) + 1


@pytest.fixture(scope="module")
def parts():
    k = jax.random.key(3)
    h = jnp.tanh(jax.random.normal(k, (G, N, H)))
    w = 0.7 * jax.random.normal(jax.random.fold_in(k, 1), (G, H, C))
    b = jax.random.normal(jax.random.fold_in(k, 2), (G, C))
    u = rng.uniform(jax.random.fold_in(k, 3), (G, N, len(SIZES)))
    return h, w, b, u


ACT = jax.jit(lambda h, w, b, u: native.act(h, w, b, u, SIZES))


def test_act_matches_xla_output_layer_and_draw(parts):
    h, w, b, u = parts
    a, lp, v = ACT(h, w, b, u)
    assert a.shape == (G, N, len(SIZES)) and lp.shape == v.shape == (G, N)
    joint = jnp.einsum("gnh,ghc->gnc", h, w, precision="highest") + b[:, None, :]
    np.testing.assert_allclose(np.asarray(v), np.asarray(joint[..., -1]), rtol=1e-5, atol=1e-5)
    a_ref, _ = jax.jit(lambda x, u: native.draw(x, u, SIZES))(joint, u)
    # The same uniforms on logits equal up to summation order: draws differ only where a
    # uniform falls within ~1e-6 of a CDF boundary.
    assert int(np.sum(np.asarray(a) != np.asarray(a_ref))) <= 2
    x = np.asarray(joint, np.float64)
    want = np.zeros((G, N))
    off = 0
    for j, c in enumerate(SIZES):
        seg = x[..., off:off + c]
        ls = seg - seg.max(-1, keepdims=True)
        ls = ls - np.log(np.exp(ls).sum(-1, keepdims=True))
        want += np.take_along_axis(ls, np.asarray(a)[..., j:j + 1], -1)[..., 0]
        off += c
    np.testing.assert_allclose(np.asarray(lp), want, rtol=1e-5, atol=1e-4)


def test_act_rows_are_independent_of_the_split(parts):
    """Tiles, blocks and threads never change a row: groups alone, a prefix of the rows
    and vmap over a leading axis give bit-identical results (what makes the sharded
    rollout equal the single-device one)."""
    h, w, b, u = parts
    full = ACT(h, w, b, u)
    one = ACT(h[1:], w[1:], b[1:], u[1:])
    for x, y in zip(full, one):
        np.testing.assert_array_equal(np.asarray(x)[1:], np.asarray(y))
    part = jax.jit(lambda h, w, b, u: native.act(h, w, b, u, SIZES))(h[:, :500], w, b, u[:, :500])
    for x, y in zip(full, part):
        np.testing.assert_array_equal(np.asarray(x)[:, :500], np.asarray(y))
    batched = jax.jit(jax.vmap(lambda h, w, b, u: native.act(h, w, b, u, SIZES)))(h[:, None], w[:, None], b[:, None], u[:, None])
    for x, y in zip(full, batched):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y)[:, 0])


def test_act_parts_native_and_xla_agree_on_shapes_and_values(parts):
    h, w, b, _ = parts
    spec_w = joint_width(SPEC)
    assert head_sizes(SPEC) == SIZES and spec_w == C - 1
    outs = {nat: jax.jit(lambda k, h, w, b, nat=nat: act_parts(k, h, w, b, SPEC, native=nat))(jax.random.key(1), h, w, b)
            for nat in (True, False)}
    (an, lpn, vn), (ax, lpx, vx) = outs[True], outs[False]
    assert {k: v.shape for k, v in an.items()} == {k: v.shape for k, v in ax.items()} == {
        "a_niche": (G, N), "b_price": (G, N, 2), "c_qty": (G, N), "d_side": (G, N)}
    np.testing.assert_allclose(np.asarray(vn), np.asarray(vx), rtol=1e-5, atol=1e-5)
    logits, _ = split_joint(jnp.einsum("gnh,ghc->gnc", h, w) + b[:, None, :], SPEC)
    from agents.networks import log_prob

    for acts, lp in ((an, lpn), (ax, lpx)):
        np.testing.assert_allclose(np.asarray(lp), np.asarray(jax.jit(log_prob)(logits, acts)), rtol=1e-4, atol=1e-4)


def test_bad_shapes_are_named(parts):
    h, w, b, u = parts
    with pytest.raises(ValueError, match=r"w has shape \(2, 16, 145\), expected \(2, 16, 146\)"):
        native.act(h, w[..., :-1], b, u, SIZES)
    with pytest.raises(ValueError, match=r"u has shape"):
        native.act(h, w, b, u[..., :-1], SIZES)
    with pytest.raises(ValueError, match="positive choice counts"):
        native.act(h, w, b, u, [8, 0])
    with pytest.raises(ValueError, match="fewer than sum"):
        native.draw(jnp.zeros((4, 10)), jnp.zeros((4, 5)), SIZES)


def test_failed_build_names_the_compiler_error(monkeypatch, tmp_path):
    monkeypatch.setenv("AGORA_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    with pytest.raises(RuntimeError, match="building native_sample.cc failed"):
        native.build(force=True)
    assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob("*.tmp"))  # nothing half-written


def test_disabled_by_environment_falls_back(monkeypatch):
    monkeypatch.setenv("AGORA_NATIVE", "0")
    native._load.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # switched off on purpose: no warning
            assert not native.available()
    finally:
        monkeypatch.delenv("AGORA_NATIVE")
        native._load.cache_clear()
    assert native.available()
