"""Work (``economy.production.work``) against a NumPy reference of its definition, at
settings where a default hides a bug: three markets, a skill floor of 0.3, a history
decay of 0.25, holding caps that bind, inputs that run out, a niche with its own rule
that reads the number of workers in its market, and agents at rest; with the integer part
by XLA and by the native kernel."""

from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from economy import native
from economy.production import CustomNiche, expected_effort, per_agent, work

M, B, J, G = 3, 8, 3, 4  # markets, agents per market, niches (index J: rest), goods
N = M * B
FLOOR, DECAY, MAX_HOLDING = 0.3, 0.25, 30
CUSTOM = 2  # the niche with its own rule


def custom_rule(ctx):
    """Half a unit per worker of the niche in the agent's market, plus a parameter, times the
    agent's own skill: reads ``workers``, ``skill`` and ``params``."""
    return (0.5 * ctx.workers + ctx.params["k"]) * ctx.skill


def _case(seed: int):
    rng = np.random.default_rng(seed)
    inputs = np.zeros((J + 1, G), np.int32)
    outputs = np.zeros((J + 1, G), np.int32)
    outputs[0, 0] = 3  # a raw niche: no inputs
    inputs[1, 0], outputs[1, 1] = 2, 1  # turns good 0 into good 1
    inputs[2, 0], inputs[2, 2], outputs[2, 3] = 1, 2, 2  # two inputs
    public = np.array([0, 0, 2, 0], np.int32)
    p = types.SimpleNamespace(inputs=jnp.asarray(inputs), outputs=jnp.asarray(outputs), public=jnp.asarray(public),
                              learn=jnp.asarray([0.1, 0.2, 0.3], jnp.float32),
                              forget=jnp.asarray([0.05, 0.02, 0.01], jnp.float32))
    x = dict(
        niche=rng.integers(0, J + 1, N).astype(np.int32),
        goods=rng.integers(0, MAX_HOLDING + 1, (N, G)).astype(np.int32),
        skills=rng.random((N, J)).astype(np.float32),
        history=rng.random((N, J)).astype(np.float32),
        richness=rng.uniform(0.5, 2.0, (M, J)).astype(np.float32),
        labour=np.array([2.5, 1.5, 1.0], np.float32),
        project_mult=rng.uniform(1.0, 1.5, M).astype(np.float32),
        u=rng.random(N).astype(np.float32),
    )
    x["goods"][:B, 0] = 0  # market 0: nobody holds good 0 (inputs run out)
    x["goods"][B:2 * B, 1] = MAX_HOLDING  # market 1: good 1 at the holding cap
    # market 2: three agents turn good 0 into good 1 with room for one unit more of it only
    rows = slice(2 * B, 2 * B + 3)
    x["niche"][rows], x["goods"][rows, 0], x["goods"][rows, 1] = 1, 20, MAX_HOLDING - 1
    x["skills"][rows, 1], x["richness"][2, 1] = 0.9, 2.0
    i = 2 * B + 3  # and one works the custom niche with its inputs at hand
    x["niche"][i], x["skills"][i, CUSTOM], x["goods"][i, [0, 2, 3]] = CUSTOM, 0.9, [10, 10, 0]
    return p, x


def _reference(p, x) -> dict:
    inputs, outputs, public = (np.asarray(a) for a in (p.inputs, p.outputs, p.public))
    learn, forget = np.asarray(p.learn), np.asarray(p.forget)
    niche, goods = x["niche"], x["goods"].astype(np.int64)
    market = np.arange(N) // B
    occupancy = np.zeros((M, J + 1), np.int64)
    np.add.at(occupancy, (market, niche), 1)
    effort = np.zeros(N, np.float32)
    for i in range(N):
        j, m = niche[i], market[i]
        if j == J:
            continue
        s = x["skills"][i, j]
        if j == CUSTOM:
            effort[i] = np.float32((0.5 * occupancy[m, j] + 0.75) * s)
        else:
            effort[i] = np.float32(x["labour"][j] * (FLOOR + (1 - FLOOR) * s) * x["richness"][m, j] * x["project_mult"][m])
    e = np.maximum(effort, 0.0)
    units = np.minimum(np.floor(e + x["u"]), np.ceil(e)).astype(np.int64)
    cap = np.full(N, np.iinfo(np.int32).max, np.int64)
    for i in range(N):
        for g in range(G):
            if inputs[niche[i], g] > 0:
                cap[i] = min(cap[i], goods[i, g] // inputs[niche[i], g])
            if outputs[niche[i], g] > 0:
                cap[i] = min(cap[i], (MAX_HOLDING - goods[i, g]) // outputs[niche[i], g])
    units = np.minimum(units, cap)
    used, produced = units[:, None] * inputs[niche], units[:, None] * outputs[niche]
    chosen = niche[:, None] == np.arange(J)
    practised = chosen & (cap >= 1)[:, None]
    skills = np.where(practised, x["skills"] + learn * (1 - x["skills"]), x["skills"] * (1 - forget))
    history = x["history"] + DECAY * (chosen - x["history"])
    return dict(goods=goods - used + produced, skills=skills, history=history, units=units,
                produced=produced.reshape(M, B, G).sum(1), used=used.reshape(M, B, G).sum(1),
                public=units * public[niche], occupancy=occupancy)


@pytest.fixture(scope="module", params=["xla", "native"])
def run_work(request):
    """``work`` jitted, with its integer part by XLA (the reference) or by the native kernel
    (:func:`economy.native.work`)."""
    kernel = None
    if request.param == "native":
        if not native.available():
            pytest.skip(f"native kernels unavailable: {native._load()}")
        kernel = functools.partial(native.work, max_holding=MAX_HOLDING)

    def f(p, x):
        p = types.SimpleNamespace(**p)  # the parameters work reads, as arrays
        return work(p, x["niche"], x["goods"], x["skills"], x["history"], x["richness"], x["labour"],
                    x["project_mult"], x["u"], num_markets=M, max_holding=MAX_HOLDING, skill_floor=FLOOR,
                    history_decay=DECAY, custom=[CustomNiche(CUSTOM, custom_rule, {"k": jnp.float32(0.75)})],
                    kernel=kernel)

    return jax.jit(f)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_work_matches_its_definition(run_work, seed):
    p, x = _case(seed)
    got = jax.device_get(run_work(vars(p), {k: jnp.asarray(v) for k, v in x.items()}))
    want = _reference(p, x)
    for k in ("goods", "units", "produced", "used", "public", "occupancy"):
        np.testing.assert_array_equal(np.asarray(getattr(got, k)), want[k], err_msg=k)
    for k in ("skills", "history"):
        np.testing.assert_allclose(np.asarray(getattr(got, k)), want[k], rtol=1e-6, atol=1e-7, err_msg=k)
    # the case exercises what it is meant to: rest, binding caps, idle inputs, the custom niche
    assert (x["niche"] == J).any() and (want["units"] == 0).any() and (want["units"] > 1).any()
    assert ((x["niche"] == CUSTOM) & (want["units"] > 0)).any()
    assert (want["units"][2 * B:2 * B + 3] == 1).all()  # held to one unit by the room left for its output


def test_work_takes_its_settings_by_keyword_only(run_work):
    p, x = _case(0)
    args = [p, *(x[k] for k in ("niche", "goods", "skills", "history", "richness", "labour", "project_mult", "u"))]
    with pytest.raises(TypeError):
        work(*args, M, MAX_HOLDING, FLOOR, DECAY)


def test_per_agent_and_expected_effort():
    """Market arrays reach agent ``i`` of market ``i // (N / M)``; the expected effort is the
    default rule's closed form with the project's multiplier ``1 + gain s / (s + half)``."""
    x = jnp.arange(M * 2, dtype=jnp.float32).reshape(M, 2)
    np.testing.assert_array_equal(np.asarray(per_agent(x, N)), np.repeat(np.asarray(x), B, axis=0))
    rng = np.random.default_rng(3)
    cfg = types.SimpleNamespace(project=types.SimpleNamespace(gain=0.6, half=40.0), skill_floor=FLOOR)
    state = types.SimpleNamespace(goods=jnp.zeros((N, G), jnp.int32), project=jnp.asarray([0, 10, 200], jnp.int32),
                                  skills=jnp.asarray(rng.random((N, J)), jnp.float32),
                                  labour=jnp.asarray([2.5, 1.5, 1.0], jnp.float32),
                                  richness=jnp.asarray(rng.uniform(0.5, 2, (M, J)), jnp.float32))
    got = np.asarray(expected_effort(cfg, state))
    stock = np.array([0, 10, 200], np.float64)
    mult = np.repeat(1 + 0.6 * stock / (stock + 40.0), B)
    want = (np.asarray(state.labour) * (FLOOR + (1 - FLOOR) * np.asarray(state.skills))
            * np.repeat(np.asarray(state.richness), B, axis=0) * mult[:, None])
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_a_rule_sees_step_zero_by_default_and_negative_effort_does_no_work():
    """A niche's own rule reads ``ctx.step`` (0 unless the caller passes one) and may return
    a negative effort, which is no work at all: never negative units, inputs returned."""
    p, x = _case(0)
    i = 2 * B + 3  # the custom-niche worker with its inputs at hand

    def units(k, **step):
        rule = CustomNiche(CUSTOM, lambda ctx: ctx.step.astype(jnp.float32) + ctx.params["k"], {"k": jnp.float32(k)})
        out = work(p, *(jnp.asarray(x[k_]) for k_ in ("niche", "goods", "skills", "history", "richness", "labour",
                                                      "project_mult", "u")),
                   num_markets=M, max_holding=MAX_HOLDING, skill_floor=FLOOR, history_decay=DECAY, custom=[rule], **step)
        return np.asarray(out.units), np.asarray(out.goods)

    assert units(1.0)[0][i] == 1 and units(0.0, step=2)[0][i] == 2  # effort 1 at step 0, 2 at step 2
    u_neg, goods = units(-3.0, step=0)
    assert u_neg[i] == 0 and (u_neg >= 0).all()
    np.testing.assert_array_equal(goods[i], x["goods"][i])


def test_native_work_caps_exactly_near_2_24():
    """The native kernel's caps divide by a float reciprocal and correct it: with holdings
    near 2^24, where ``floor(a x fl(1/b))`` overshoots ``a // b`` for many ``a`` and ``b``,
    the units an agent can do are still exactly ``a // b`` (what the XLA path gives)."""
    if not native.available():
        pytest.skip(f"native kernels unavailable: {native._load()}")
    hold = 2**24 - 1
    divisors = np.arange(2, 14, dtype=np.int32)  # input amounts of the niches
    a = np.arange(12582912, 12582912 + 64, dtype=np.int32)  # holdings of the input
    niche = np.repeat(np.arange(len(divisors), dtype=np.int32), len(a))[None]  # [1, B]
    held = np.zeros((1, niche.shape[1], 2), np.int32)
    held[0, :, 0] = np.tile(a, len(divisors))
    inputs = np.zeros((len(divisors) + 1, 2), np.int32)
    inputs[:-1, 0] = divisors
    outputs = np.zeros_like(inputs)
    outputs[:-1, 1] = 1  # room for hold - 0 units of the output: never the binding cap
    raw = np.full(niche.shape, 2**30, np.int32)  # effort far above both caps
    _, units, cap, _, produced, used = jax.device_get(native.work(
        niche, raw, held, inputs, outputs, np.zeros(len(divisors) + 1, np.int32), max_holding=hold))
    want = held[0, :, 0] // divisors[niche[0]]
    float_quotient = np.floor(held[0, :, 0].astype(np.float32) * (np.float32(1) / divisors[niche[0]].astype(np.float32)))
    assert (float_quotient != want).any(), "the case no longer needs the correction"
    np.testing.assert_array_equal(units[0], want)
    np.testing.assert_array_equal(cap[0], want)
    np.testing.assert_array_equal(used[0, 0], np.sum(want * divisors[niche[0]], dtype=np.int64).astype(np.int32))
