"""Behaviours no other test exercised (issue 25), each at a setting where a realistic bug
shows: PBT selection with the lineage cap against an independent reference, fitness
sharing for a member that mostly rests, the running fitness at a rate other than 0.5,
PBT perturbation at a bound, and the active-niche threshold at exactly 1 %.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.niches import ACTIVE_SHARE, niche_spread
from selfplay import population as pop
from selfplay import variants


def _reference_sources(fitness, fraction, founder, share):
    """pbt_sources written out as its docstring says: pairs worst/best, second worst/second
    best, ...; a pair copies when the source is strictly fitter and the source's lineage
    stays within max(1, floor(share * P)) slots, counting the copies made before it (a
    copier leaves its own lineage)."""
    p = len(fitness)
    k = int(p * fraction)
    src = list(range(p))
    if k == 0:
        return src
    order = sorted(range(p), key=lambda i: (fitness[i], i))  # ascending, stable
    bottom, top = order[:k], order[::-1][:k]
    cap = max(1, int(share * p))
    counts = np.bincount(founder, minlength=p).tolist()
    founder = list(founder)
    for c, s in zip(bottom, top):
        if not fitness[s] > fitness[c]:
            continue
        fc, fs = founder[c], founder[s]
        after = counts[fs] + 1 - (fc == fs)
        if share >= 1.0 or after <= cap:
            counts[fc] -= 1
            counts[fs] += 1
            src[c] = s
    return src


def test_lineage_cap_with_several_copies_in_one_round():
    """A hand case where the second copy of the round is allowed only because the first
    copier left the lineage the second one copies from, and one where a lineage at the cap
    takes no copy; then 60 random rounds against the reference (ties included)."""
    # slot fitness 6..1: pairs (5 <- 0), (4 <- 1), (3 <- 2); cap floor(0.34 * 6) = 2
    fit = jnp.asarray([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    # lineage 0 holds slots 0 and 4 (at the cap): slot 5 may not copy slot 0; slot 4 leaves
    # lineage 0 to copy slot 1 (lineage 1: 2 slots); slot 3 copies slot 2.
    founder = jnp.asarray([0, 1, 2, 3, 0, 4])
    assert np.asarray(pop.pbt_sources(fit, 0.5, founder, 0.34)).tolist() == [0, 1, 2, 2, 1, 5]
    # lineage 1 holds slots 1 and 5 (at the cap): slot 5 leaves it to copy slot 0, and only
    # because it left may slot 4 then copy slot 1; slot 3 copies slot 2.
    founder = jnp.asarray([0, 1, 4, 2, 3, 1])
    assert np.asarray(pop.pbt_sources(fit, 0.5, founder, 0.34)).tolist() == [0, 1, 2, 2, 1, 0]
    # lineage 1 holds three slots (1, 3, 5: over the cap of 2): slot 5 leaves it to copy slot
    # 0, leaving it two, still at the cap, so slot 4 may not copy slot 1; slot 3 copies slot 2.
    founder = [0, 1, 2, 1, 4, 1]
    want = [0, 1, 2, 2, 4, 0]
    assert _reference_sources(np.asarray(fit), 0.5, founder, 0.34) == want
    assert np.asarray(pop.pbt_sources(fit, 0.5, jnp.asarray(founder), 0.34)).tolist() == want
    # cap floor(0.5 * 8) = 4, lineage 0 holds slots 0 and 1: both pairs (7 <- 0), (6 <- 1) copy
    # from it, the second one filling it exactly to the cap.
    fit8 = jnp.arange(8.0, 0.0, -1.0)
    founder = [0, 0, 2, 3, 4, 5, 6, 7]
    want = [0, 1, 2, 3, 4, 5, 1, 0]
    assert _reference_sources(np.asarray(fit8), 0.25, founder, 0.5) == want
    assert np.asarray(pop.pbt_sources(fit8, 0.25, jnp.asarray(founder), 0.5)).tolist() == want
    # without a share, founders do not cap anything
    distinct = jnp.arange(6, dtype=jnp.int32)
    assert np.asarray(pop.pbt_sources(fit, 0.5, distinct)).tolist() == [0, 1, 2, 2, 1, 0]
    rng = np.random.default_rng(0)
    for _ in range(60):
        p = int(rng.choice([4, 6]))
        fitness = rng.integers(0, 4, p).astype(np.float32)  # many ties
        founder = rng.integers(0, p, p)
        fraction = float(rng.choice([0.25, 0.34, 0.5]))
        share = float(rng.choice([0.2, 0.34, 0.5, 1.0]))
        got = np.asarray(pop.pbt_sources(jnp.asarray(fitness), fraction, jnp.asarray(founder), share)).tolist()
        assert got == _reference_sources(fitness, fraction, founder, share), (fitness, founder, fraction, share)


def test_niche_shared_fitness_ignores_resting():
    """A member that mostly rests is counted in the niche it works most, not in "rest": it
    shares niche 0 with member 1; member 2 has niche 1 to itself."""
    counts = jnp.asarray([[1, 0, 100], [5, 0, 0], [0, 3, 1]], jnp.int32)  # [P, J+1], last: rest
    x = pop.FitnessInputs({"utility": jnp.asarray([0.6, 0.4, 0.3])}, counts, jnp.zeros((2,)), jnp.ones((3, 2)) / 2)
    np.testing.assert_allclose(np.asarray(pop.FITNESS["niche_shared"](x)), [0.3, 0.2, 0.3], rtol=1e-6)


def test_running_fitness_at_a_rate_other_than_a_half():
    """(1 - ema) * previous + ema * now at ema 0.25 (a rate of 0.5 hides swapped weights);
    the first update takes ``now`` alone."""
    prev, now = jnp.asarray([1.0, 2.0]), jnp.asarray([3.0, 6.0])
    np.testing.assert_allclose(np.asarray(pop.update_fitness(prev, now, jnp.asarray(False), 0.25)), [1.5, 3.0])
    np.testing.assert_allclose(np.asarray(pop.update_fitness(prev, now, jnp.asarray(True), 0.25)), [3.0, 6.0])


def test_pbt_perturbation_clips_at_the_declared_bounds():
    """A hyperparameter at (or near) its bound, perturbed up or down, stays within the
    declared bounds; members outside the mask are untouched; a value inside moves by one of
    the two factors by its law (scale; complement for the discount)."""
    lo_lr, hi_lr = variants.VARIANTS["learning_rate"].bounds
    hyper = {"learning_rate": jnp.asarray([hi_lr, hi_lr * 0.99, 1e-3, 1e-3]),
             "gamma": jnp.asarray([0.999, 0.5, 0.9, 0.9])}
    mask = jnp.asarray([True, True, True, False])
    seen = set()
    for seed in range(20):
        out = variants.perturb(jax.random.key(seed), hyper, mask, (0.8, 1.25))
        lr, g = np.asarray(out["learning_rate"]), np.asarray(out["gamma"])
        assert lr[0] <= hi_lr and lr[1] <= hi_lr and lo_lr <= lr.min()
        assert lr[3] == pytest.approx(1e-3) and g[3] == pytest.approx(0.9)  # not in the mask
        assert np.isclose(lr[2], 1e-3 * 0.8) or np.isclose(lr[2], 1e-3 * 1.25)
        assert np.isclose(g[2], 1 - 0.1 * 0.8) or np.isclose(g[2], 1 - 0.1 * 1.25)
        assert 0.0 <= g.min() and g.max() <= 1.0
        seen.add(bool(np.isclose(lr[0], hi_lr)))
    assert seen == {True, False}  # at the upper bound: scaling up is clipped back, down moves below it


def test_active_niche_threshold_is_inclusive_at_one_percent():
    assert ACTIVE_SHARE == 0.01
    assert niche_spread([1, 99])[1] == 2  # exactly 1 %: active
    assert niche_spread([1, 100])[1] == 1  # just under: not
    assert niche_spread([0, 0]) == (0.0, 0)
    eff, act = niche_spread([1, 1, 2])
    assert act == 3 and eff == pytest.approx(np.exp(-(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5))))


def test_member_metrics_count_league_players_in_the_whole_economy():
    """Two learning members and one league player: a member's share of output, wealth and
    utility is of the WHOLE economy (league included), and the niche table of I(member;
    niche) has the learning members only."""
    from selfplay.evaluate import world_metrics

    groups = np.asarray([0, 1, 2, 0, 1, 2])  # group 2: a league snapshot
    T = 3
    sums = {
        "utility": np.tile([[1.0, 2.0, 7.0]], (T, 1)),  # [T, groups]
        "work": np.tile(np.asarray([[[2, 0, 0], [0, 2, 0], [1, 1, 0]]], np.float64), (T, 1, 1)),  # [T, groups, J+1]
        "output": np.tile([[3.0, 1.0, 6.0]], (T, 1)),
        "public": np.zeros(T), "project": np.zeros(T),
        "niche_utility": np.zeros((T, 3, 3)),
    }
    wealth = np.asarray([1.0, 1.0, 4.0, 1.0, 1.0, 2.0])  # members: 2, 2; league: 6
    m = world_metrics(sums, wealth, groups, members=2, burn_in=1)
    assert m["largest_output_share"] == pytest.approx(0.3)  # 3 / (3 + 1 + 6), not 3 / 4
    assert m["largest_wealth_share"] == pytest.approx(0.2)
    assert m["largest_utility_share"] == pytest.approx(0.2)
    assert m["member_niche_mi_bits"] == pytest.approx(1.0)  # the two members work disjoint niches


def test_skill_decays_when_the_chosen_niche_lacks_its_inputs():
    """An agent that chooses the baker's niche without the grain it needs does no work and
    does not practise: its skills all decay by their forgetting rate, like a resting agent's;
    an agent with the grain works and learns."""
    import economy
    from economy.production import work

    cfg = economy.load_config("configs/tiny.yaml", num_agents=4, num_markets=1)
    env = economy.Economy(cfg)
    p, J = env.params, cfg.num_niches
    baker = cfg.niche_names.index("baker")
    goods = np.zeros((4, cfg.num_goods), np.int32)
    goods[1, cfg.good_names.index("grain")] = 50  # agent 1 has grain, agent 0 none
    skills = np.full((4, J), 0.5, np.float32)
    w = work(p, jnp.asarray([baker, baker, J, J], jnp.int32), jnp.asarray(goods), jnp.asarray(skills),
             jnp.zeros((4, J)), jnp.ones((1, J)), jnp.asarray(p.labour), jnp.ones((1,)), jnp.full((4,), 0.5),
             num_markets=1, max_holding=cfg.max_holding, skill_floor=cfg.skill_floor, history_decay=0.1)
    decayed = 0.5 * (1 - np.asarray(p.forget))
    units, sk = np.asarray(w.units), np.asarray(w.skills)
    assert units[0] == 0 and units[1] > 0
    np.testing.assert_allclose(sk[0], decayed, rtol=1e-6)  # chose baker, lacked grain: no practice
    np.testing.assert_allclose(sk[2], decayed, rtol=1e-6)  # rested
    assert sk[1, baker] == pytest.approx(0.5 + float(p.learn[baker]) * 0.5)
    np.testing.assert_array_equal(np.asarray(w.goods)[0], goods[0])  # nothing used, nothing made


def test_one_nan_entry_of_one_parameter_flags_that_member_alone():
    """The run's guard on parameters: a NaN (or an infinity) in ONE entry of ONE leaf of
    member 1 flags member 1 and no other (a NaN in every entry would hide an ``any``
    written as ``all``)."""
    from selfplay.train import nonfinite_members

    params = {"dense": {"kernel": jnp.zeros((3, 4, 5)), "bias": jnp.zeros((3, 5))}, "head": jnp.zeros((3, 2))}
    assert np.asarray(nonfinite_members(params)).tolist() == [False, False, False]
    bad = dict(params, dense=dict(params["dense"], kernel=params["dense"]["kernel"].at[1, 2, 3].set(jnp.nan)))
    assert np.asarray(nonfinite_members(bad)).tolist() == [False, True, False]
    bad = dict(params, head=params["head"].at[2, 0].set(jnp.inf))
    assert np.asarray(nonfinite_members(bad)).tolist() == [False, False, True]


def test_presence_of_a_hand_layout():
    """Two markets of 6 agents, players 0..2 (2 members and one league player): member 0
    holds agents 0, 1 (market 0) and 9 (market 1), member 1 agents 2..5 (market 0) and
    member 2 the rest. Presence is each member's share of its own agents per market, the
    league player dropped. (Catches: presence divided by the market's size or by all
    agents, markets cut at the wrong agent, the league row kept.)"""
    player_of = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 0, 2, 2])
    got = pop.layout_presence(player_of, 2, 2)
    np.testing.assert_allclose(got, [[2 / 3, 1 / 3], [1.0, 0.0]], rtol=1e-6)
    assert got.dtype == np.float32


def test_league_starts_as_copies_of_the_members_round_robin():
    """A league larger than the population starts as members 0, 1, 0 (round robin), each
    slot holding its source's parameters. (Catches: slots dealt by ``//`` instead of ``%``,
    every slot a copy of member 0.)"""
    params = {"w": jnp.arange(2 * 3, dtype=jnp.float32).reshape(2, 3)}
    league = pop.init_league(params, 3, 2)
    np.testing.assert_array_equal(league.source, [0, 1, 0])
    np.testing.assert_array_equal(league.params["w"], np.asarray(params["w"])[[0, 1, 0]])
    assert int(league.refreshes) == 0 and not np.asarray(league.made_at).any()


def test_pbt_ties_break_by_slot_and_the_cap_needs_founders():
    """Among equal fitness the lower slot counts as worse and the higher as better, on
    every backend (a stable sort); without founders the lineage cap is not applied.
    (Catches: an unstable sort, whose tie order differs between runs and backends; a cap
    path taken without founders.)"""
    fitness = jnp.asarray([0.0, 0.0, 1.0, 1.0, 0.5, 0.5, 1.0, 0.0])
    src = np.asarray(pop.pbt_sources(fitness, 0.25))  # k = 2: slots 0, 1 copy 6, 3
    np.testing.assert_array_equal(src, [6, 3, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(pop.pbt_sources(fitness, 0.25, None, 0.25), src)


def test_lineage_records_of_two_rounds_of_copies():
    """Round 1: slot 1 copies 0; round 2: slot 2 copies slot 1 (a copy of a copy). Slot 2
    then has generation 2, parent 1, founder 0 and the round's update; slots never copied
    keep generation 0, their own parent and copied_at -1; the running fitness moves with
    the parameters. (Catches: generation not counted, or counted from the copier instead
    of its source; founder taken from the copier.)"""
    P = 4
    params = {"w": jnp.arange(P, dtype=jnp.float32)[:, None]}
    hyper = {"learning_rate": jnp.full((P,), 1e-3)}
    state = pop.init_pbt(P)._replace(fitness=jnp.asarray([4.0, 3.0, 2.0, 1.0]))
    step = lambda s, src, u: pop.exploit_explore(pop.Slots(params, params, hyper, {}), s,  # noqa: E731
                                                 jnp.asarray(src, jnp.int32), jax.random.key(u), jnp.int32(u),
                                                 pop.CopyRule((), (0.8, 1.25)))[1]
    s1 = step(state, [0, 0, 2, 3], 10)
    s2 = step(s1, [0, 1, 1, 3], 20)
    np.testing.assert_array_equal(s2.generation, [0, 1, 2, 0])
    np.testing.assert_array_equal(s2.parent, [0, 0, 1, 3])
    np.testing.assert_array_equal(s2.founder, [0, 0, 0, 3])
    np.testing.assert_array_equal(s2.copied_at, [-1, 10, 20, -1])
    np.testing.assert_array_equal(s2.fitness, [4.0, 4.0, 4.0, 1.0])


def test_fitness_registry_refuses_a_silent_replacement():
    """(Catches: a plug-in fitness that shadows a built-in one without saying so.)"""
    with pytest.raises(ValueError, match="'utility' is already registered"):
        pop.register_fitness("utility", lambda x: x.components["utility"] * 2)
    new = lambda x: x.components["utility"]  # noqa: E731
    try:
        assert pop.register_fitness("test_fit", new) is new
        other = lambda x: -x.components["utility"]  # noqa: E731
        pop.register_fitness("test_fit", replace=True)(other)
        assert pop.FITNESS["test_fit"] is other
    finally:
        pop.FITNESS.pop("test_fit", None)
