"""The reward-component registry and the member-level specialisation component (pointwise
mutual information between member and niche) against closed forms."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfplay import rewards
from selfplay.rewards import PMI_PSEUDOCOUNT, RolloutData, niche_pmi, niche_pmi_table

J = 4  # niches; index J is resting


def _rollout(niche: np.ndarray) -> RolloutData:
    niche = jnp.asarray(niche, jnp.int32)
    return RolloutData(niche=niche, units=jnp.ones_like(niche), agent={}, num_niches=J)


def test_identical_members_are_paid_nothing():
    rng = np.random.default_rng(0)
    one = rng.integers(0, J + 1, (8, 1, 10))  # one member's [T, 1, n] niches
    r = np.asarray(niche_pmi(_rollout(np.repeat(one, 3, axis=1))))  # three identical members
    np.testing.assert_allclose(r, 0.0, atol=1e-6)


@pytest.mark.parametrize("P", [2, 4])
def test_members_each_in_their_own_niche_are_paid_log_p(P):
    """Member p works niche p only: every agent-step pays log(pi_p(p) / pibar(p)), which is
    log P up to the pseudo-count (the closed form with it, and log P as counts grow)."""
    T, n = 16, 32
    niche = np.broadcast_to(np.arange(P)[None, :, None], (T, P, n))
    r = np.asarray(niche_pmi(_rollout(niche)))
    c, a = T * n, PMI_PSEUDOCOUNT
    want = math.log((c + a) / (c + a * J)) - math.log((c + P * a) / (P * c + P * a * J))
    np.testing.assert_allclose(r, want, rtol=1e-5)
    assert abs(want - math.log(P)) < 0.01
    # The population mean is I(member; niche) in nats: log P here.
    assert float(r.mean()) == pytest.approx(want, rel=1e-5)


def test_resting_pays_nothing_and_mean_is_kl():
    rng = np.random.default_rng(1)
    niche = rng.integers(0, J + 1, (12, 3, 20))
    r = np.asarray(niche_pmi(_rollout(niche)))
    assert (r[niche == J] == 0).all()
    table = np.asarray(niche_pmi_table(jnp.asarray(niche), J))
    # Mean over a member's working agent-steps = KL(pi_p || pibar) of the smoothed shares.
    for p in range(3):
        counts = np.bincount(niche[:, p].ravel(), minlength=J + 1)[:J].astype(float)
        work = niche[:, p] < J
        kl_emp = r[:, p][work].mean()
        assert kl_emp == pytest.approx(float((counts / counts.sum() * table[p, :J]).sum()), rel=1e-5)


def test_moving_toward_an_unoccupied_niche_is_paid_more():
    """Members 1..3 all work niche 0; member 0 splits between niche 0 and niche 3, which
    nobody else works. Its agents in niche 3 are paid more than those in niche 0, and the
    more of member 0's work moves to niche 3, the more member 0 is paid in total."""
    T, n = 10, 40

    def member0_total(k):  # k of member 0's n agents work niche 3
        niche = np.zeros((T, 4, n), np.int64)
        niche[:, 0, :k] = 3
        r = np.asarray(niche_pmi(_rollout(niche)))
        assert r[0, 0, 0] > r[0, 0, -1]  # in niche 3 vs in niche 0
        return float(r[:, 0].sum())

    totals = [member0_total(k) for k in (5, 10, 20, 30)]
    assert all(b > a for a, b in zip(totals, totals[1:])), totals


def test_registry_rejects_bad_entries():
    with pytest.raises(ValueError, match="already registered"):
        rewards.register_component("utility", lambda s: s.info["utility"])
    with pytest.raises(ValueError, match="identifier"):
        rewards.register_component("not a name", lambda s: 0.0)
    with pytest.raises(ValueError, match="level"):
        rewards.register_component("x", lambda s: 0.0, level="market")
    assert rewards.component_names()[-1] == "specialisation"  # member-level after agent-level
    assert rewards.REWARD_COMPONENTS["specialisation"].level == "member"


def test_weighted_reward_weights_each_member_by_its_own_weights():
    """``sum_c w_c[p] x_c[..., p, :]`` with per-member weights that differ, over two
    components. (Catches: weights applied to the wrong axis (agents or steps), components
    multiplied instead of summed, a weight of one member used for all.)"""
    x = {"utility": jnp.arange(12, dtype=jnp.float32).reshape(2, 2, 3), "social": jnp.ones((2, 2, 3))}
    w = {"utility": jnp.asarray([1.0, 0.5]), "social": jnp.asarray([0.0, 2.0])}
    got = np.asarray(rewards.weighted_reward(x, w))
    want = np.asarray(x["utility"]) * np.array([1.0, 0.5])[:, None] + np.array([0.0, 2.0])[:, None]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_components_by_level_and_registration_rules():
    """Agent-level components come from the step, member-level ones from the rollout,
    broadcast to ``[T, P, n]``; each function skips the other level; a default range with
    lo > hi is refused; ``replace=True`` replaces; the order is agent-level first.
    (Catches: a level filter inverted, member components not broadcast, lo > hi allowed,
    replace ignored.)"""
    step = rewards.StepData(info={"utility": jnp.asarray([1.0, 2.0]), "specialisation": jnp.asarray([0.5, 0.0])},
                            state=None, prev_state=None, actions={})
    got = rewards.agent_components(("utility", "persistence", "specialisation"), step)
    assert set(got) == {"utility", "persistence"}
    np.testing.assert_array_equal(got["persistence"], [0.5, 0.0])
    roll = _rollout(np.zeros((3, 2, 4)))
    try:
        rewards.register_component("flat", lambda r: jnp.float32(0.25), level="member")
        member = rewards.member_components(("utility", "flat"), roll)
        assert set(member) == {"flat"} and member["flat"].shape == (3, 2, 4)
        np.testing.assert_array_equal(member["flat"], 0.25)
        names = rewards.component_names()
        assert names.index("flat") > names.index("social")  # member-level after every agent-level one
        rewards.register_component("flat", lambda r: jnp.float32(0.5), level="member", replace=True)
        np.testing.assert_array_equal(rewards.member_components(("flat",), roll)["flat"], 0.5)
        with pytest.raises(ValueError, match="lo > hi"):
            rewards.register_component("bad_range", lambda s: 0.0, default=(0.3, 0.1))
        rewards.register_component("even", lambda s: 0.0, default=(0.2, 0.2))
        assert rewards.REWARD_COMPONENTS["even"].default == (0.2, 0.2)
    finally:
        rewards.unregister_component("flat")
        rewards.unregister_component("even")
    assert "flat" not in rewards.component_names()


def _pmi_reference(niche: np.ndarray, a: float) -> np.ndarray:
    """NumPy float64 ``[P, J]`` PMI table from the definition (counts per member and niche)."""
    P = niche.shape[1]
    c = np.stack([np.bincount(niche[:, p].ravel(), minlength=J + 1)[:J] for p in range(P)]).astype(float)
    pm = (c + a) / (c.sum(1, keepdims=True) + a * J)
    pbar = (c.sum(0) + P * a) / (c.sum() + P * a * J)
    return np.log(pm) - np.log(pbar)[None]


@pytest.mark.parametrize("a", [PMI_PSEUDOCOUNT, 0.5, 3.0])
def test_pmi_table_against_its_definition_at_several_pseudocounts(a):
    """The whole table against a NumPy reference, with niches some members never work (the
    pseudo-count keeps those finite) and at pseudo-counts other than 1, where ``P * a`` and
    ``P / a`` differ. (Catches: the pseudo-count dropped or misapplied in either share.)"""
    rng = np.random.default_rng(7)
    niche = rng.integers(0, J + 1, (6, 3, 10))
    niche[:, 0] = np.where(niche[:, 0] == 2, 1, niche[:, 0])  # member 0 never works niche 2
    got = np.asarray(niche_pmi_table(jnp.asarray(niche), J, a))
    assert got.shape == (3, J + 1) and np.isfinite(got).all() and (got[:, J] == 0).all()
    np.testing.assert_allclose(got[:, :J], _pmi_reference(niche, a), rtol=1e-5, atol=1e-6)


def test_registered_doc_and_default_weights():
    """An explicit ``doc`` is kept (else the function's docstring); a component the config
    does not name gets its default range: the economy's utility at weight 1 exactly, every
    other built-in off."""
    from selfplay.config import load_run_config
    from tests.conftest import CONFIGS

    def f(s):
        """docstring"""
        return s.info["utility"]

    try:
        rewards.register_component("doc_given", f, doc="given")
        rewards.register_component("doc_from_fn", f)
        assert rewards.REWARD_COMPONENTS["doc_given"].doc == "given"
        assert rewards.REWARD_COMPONENTS["doc_from_fn"].doc == "docstring"
        with pytest.raises(dataclasses.FrozenInstanceError):  # a registered entry changes only by replace=True
            rewards.REWARD_COMPONENTS["doc_given"].default = (0.0, 1.0)
        with pytest.raises(TypeError):  # the options are keyword-only: a stray positional is refused
            rewards.register_component("positional", f, "member")
        rewards.register_component(name="by_keyword", fn=f)
        assert "positional" not in rewards.REWARD_COMPONENTS and "by_keyword" in rewards.REWARD_COMPONENTS
    finally:
        rewards.unregister_component("doc_given")
        rewards.unregister_component("doc_from_fn")
        rewards.unregister_component("by_keyword")
    cfg = load_run_config(CONFIGS / "tiny.yaml", ["train.variants.rewards={}"])
    got = {k: list(v) for k, v in cfg.train.variants.rewards.items()}
    assert got == {"utility": [1.0, 1.0], **{c: [0.0, 0.0] for c in got if c != "utility"}}
