"""Catalogues as data (economy.catalogues): a padded economy plays any catalogue that fits.

Realistic bugs these catch: a padded good that can be bought (no seller, but a bid that
moves money or a price), a masked niche that works or learns, per-good random numbers
indexed by the padded length (every real good then draws other numbers), the rest action
left at the catalogue's own J instead of the padded J, value_added in the wrong catalogue's
money unit, a catalogue leaking into another world of the same batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.catalogue import CatalogueSpec, generate
from economy import ConfigError, Economy, ledger, load_config
from economy.catalogues import Sizes, feature_dim, features, pad, pad_state, stack, take

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
T = 12  # steps per rollout


@pytest.fixture(scope="module")
def default_cfg():
    # the default catalogue at a non-default setting where a bug would show: a funded
    # project (tax and procurement move money every step) and observed niche values
    return load_config(ROOT / "configs" / "economy" / "default.yaml", "treasury.tax=0.05", "treasury.pay=4",
                       "observe_values=true", num_agents=256, num_markets=4)


def _blocks(obs: np.ndarray, G: int, J: int, values: bool) -> dict[str, np.ndarray]:
    """The observation's blocks (Economy.observe's layout) for goods G and niches J."""
    widths = [("goods", G), ("money", 1), ("skills", J), ("preferences", G), ("history", J), ("price", G),
              ("volume", G), ("richness", J), ("project", 1)] + ([("values", J)] if values else [])
    out, i = {}, 0
    for name, w in widths:
        out[name] = obs[..., i:i + w]
        i += w
    out["catalogue"] = obs[..., i:]
    return out


def _pad_actions(a: dict, key, G: int, J: int, sizes: Sizes) -> dict:
    """Unpadded actions as the padded economy's: rest J -> sizes.niches, and (to show the
    masks work) some resting agents pick a padded niche, and padded goods get random orders."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    n = a["niche"].shape[0]
    niche = jnp.where(a["niche"] == J, sizes.niches, a["niche"])
    padded_niche = jax.random.randint(k1, (n,), J, sizes.niches)
    niche = jnp.where((a["niche"] == J) & jax.random.bernoulli(k2, 0.5, (n,)), padded_niche, niche)
    dg = sizes.goods - G
    extra = lambda k, hi: jax.random.randint(k, (n, dg), 0, hi)  # noqa: E731
    return {
        "niche": niche,
        "side": jnp.concatenate([a["side"], extra(k3, 3)], -1),
        "quantity": jnp.concatenate([a["quantity"], extra(k4, 6)], -1),
        "price": jnp.concatenate([a["price"], extra(k3, 64)], -1),
    }


def test_the_padded_step_is_the_unpadded_step_bit_for_bit(default_cfg):
    cfg = default_cfg
    G, J, R = cfg.num_goods, cfg.num_niches, len(cfg.resources)
    sizes = Sizes(G + 3, J + 2, R + 1)
    plain, padded = Economy(cfg), Economy(cfg, catalogues=[cfg], sizes=sizes)
    assert padded.action_spec[0].choices == sizes.niches + 1 and padded.obs_dim > plain.obs_dim
    _, s0 = plain.reset(plain.world_key(3))
    p0 = pad_state(s0, take(padded.catalogues, 0), sizes)
    step_plain, step_padded = jax.jit(plain.step), jax.jit(padded.step)
    key = jax.random.key(11)
    worked_padded_choice = 0
    for t in range(T):
        key, k_act, k_pad, k_step = jax.random.split(key, 4)
        a = plain.sample_actions(k_act, s0)
        ap = _pad_actions(a, k_pad, G, J, sizes)
        worked_padded_choice += int(jnp.sum((ap["niche"] >= J) & (ap["niche"] < sizes.niches)))
        o0, s0, r0, _, tr0, i0 = step_plain(k_step, s0, a)
        o1, p0, r1, _, tr1, i1 = step_padded(k_step, p0, ap)
        np.testing.assert_array_equal(np.asarray(r0), np.asarray(r1), err_msg=f"reward at step {t}")
        np.testing.assert_array_equal(np.asarray(s0.money), np.asarray(p0.money))
        np.testing.assert_array_equal(np.asarray(s0.goods), np.asarray(p0.goods[:, :G]))
        np.testing.assert_array_equal(np.asarray(s0.treasury), np.asarray(p0.treasury))
        np.testing.assert_array_equal(np.asarray(s0.project), np.asarray(p0.project))
        np.testing.assert_array_equal(np.asarray(s0.skills), np.asarray(p0.skills[:, :J]))
        assert not np.asarray(p0.goods[:, G:]).any(), "a padded good was produced, bought or kept"
        assert not np.asarray(p0.skills[:, J:]).any() and not np.asarray(p0.history[:, J:]).any()
        assert not np.asarray(i1["market_volume"][:, G:]).any(), "a padded good traded"
        for k in ("utility", "value_added", "units", "tax", "procurement", "collaboration", "specialisation"):
            np.testing.assert_array_equal(np.asarray(i0[k]), np.asarray(i1[k]), err_msg=k)
        np.testing.assert_array_equal(np.asarray(i0["niche_occupancy"][:, :J]), np.asarray(i1["niche_occupancy"][:, :J]))
        # resting agents (the plain economy's column J) are the padded economy's last column
        np.testing.assert_array_equal(np.asarray(i0["niche_occupancy"][:, J]), np.asarray(i1["niche_occupancy"][:, -1]))
        b0, b1 = _blocks(np.asarray(o0), G, J, True), _blocks(np.asarray(o1), *sizes[:2], True)
        assert b1["catalogue"].shape[-1] == feature_dim(sizes) and b0["catalogue"].shape[-1] == 0
        for name in b0:
            w = b0[name].shape[-1]
            np.testing.assert_array_equal(b0[name], b1[name][..., :w], err_msg=f"observation block {name}")
        np.testing.assert_array_equal(np.asarray(tr0), np.asarray(tr1))
    assert worked_padded_choice > 0  # the mask was exercised
    l0, l1 = ledger(s0), ledger(p0)
    assert l0["money"] == l1["money"] and (l0["goods"] == l1["goods"][:G]).all()


@pytest.fixture(scope="module")
def two_catalogues():
    spec = CatalogueSpec(goods=(4, 6), niches=(5, 8), raw=(2, 3), resources=(1, 2))
    cfgs = [generate(s, spec, first_best=False, num_agents=128, num_markets=2, episode_length=20) for s in (1, 2)]
    assert (cfgs[0].num_goods, cfgs[0].num_niches) != (cfgs[1].num_goods, cfgs[1].num_niches) or \
        cfgs[0].goods != cfgs[1].goods
    return cfgs


def test_worlds_of_different_catalogues_in_one_batch_keep_their_ledgers_and_masks(two_catalogues):
    cfgs = two_catalogues
    env = Economy(cfgs[0], catalogues=cfgs)
    sizes = env.sizes
    cats = env.catalogues
    keys = jax.random.split(jax.random.key(5), 2)
    obs, state = jax.vmap(env.reset_catalogue)(keys, cats)
    assert obs.shape == (2, 128, env.obs_dim)

    def body(state, key):
        ka, ks = jax.random.split(key)
        actions = jax.vmap(env.sample_actions)(jax.random.split(ka, 2), state)
        _, state, reward, _, _, info = jax.vmap(env.step)(jax.random.split(ks, 2), state, actions)
        return state, (actions["niche"], info["produced"], info["consumed"], state.money, state.treasury,
                       state.goods, reward)

    before = ledger(state, per_market=True)
    final, (niche, produced, consumed, money, treasury, goods, reward) = jax.jit(
        lambda s: jax.lax.scan(body, s, jax.random.split(jax.random.key(6), 30)))(state)
    after = ledger(final, per_market=True)
    # exact per-market ledger of every world: goods' = goods + produced - consumed; money + treasury constant
    np.testing.assert_array_equal(after["money"], before["money"])
    np.testing.assert_array_equal(after["goods"], before["goods"] + np.asarray(produced, np.int64).sum(0)
                                  - np.asarray(consumed, np.int64).sum(0))
    for w, cfg in enumerate(cfgs):
        G, J = cfg.num_goods, cfg.num_niches
        n = np.asarray(niche[:, w])
        assert ((n < J) | (n == sizes.niches)).all(), "a padded niche was drawn"
        assert (n == sizes.niches).any() and (n < J).any()
        assert not np.asarray(goods[:, w, :, G:]).any()
        assert np.isfinite(np.asarray(reward[:, w])).all()
        # each world plays its own catalogue: what it produces is what its recipes make
        made = np.asarray(produced[:, w]).sum((0, 1))
        outputs = {i for i, g in enumerate(cfg.goods) if any(g.name in n_.outputs for n_ in cfg.niches)}
        assert set(np.flatnonzero(made)) <= outputs


def test_reset_draws_every_catalogue_and_real_goods_only(two_catalogues):
    cfgs = two_catalogues
    env = Economy(cfgs[0], catalogues=cfgs)
    drawn = set()
    for s in range(12):
        _, st = jax.jit(env.reset)(env.world_key(s))
        G = int(st.catalogue.num_goods)
        J = int(np.sum(np.asarray(st.catalogue.niches)))
        drawn.add((G, J, tuple(np.asarray(st.catalogue.params.base_price[:G]))))
        assert not np.asarray(st.goods[:, G:]).any() and not np.asarray(st.preferences[:, G:]).any()
        assert not np.asarray(st.skills[:, J:]).any()
        np.testing.assert_allclose(np.asarray(st.preferences).sum(-1), 1.0, rtol=1e-5)
    assert len(drawn) == 2  # both catalogues, 12 draws (a miss has probability 2^-11)


def test_catalogues_that_cannot_share_an_economy_are_refused(default_cfg, two_catalogues):
    small = two_catalogues[0]
    with pytest.raises(ConfigError, match="num_agents"):
        Economy(small, catalogues=[small, default_cfg])
    with pytest.raises(ConfigError, match="does not fit.*goods"):
        pad(default_cfg, Sizes(2, 20, 5))
    # the default catalogue's farmers work with tools (rule `tooled`): an economy built
    # without that rule cannot play it
    with pytest.raises(ConfigError, match="farmer.*tooled.*not built with"):
        pad(default_cfg, Sizes(10, 10, 5), rules=())


def test_stack_and_take_round_trip(two_catalogues):
    sizes = Sizes(8, 10, 3)
    cats = [pad(c, sizes) for c in two_catalogues]
    s = stack(cats)
    for i, c in enumerate(cats):
        for a, b in zip(jax.tree.leaves(take(s, i)), jax.tree.leaves(c)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---- the policy that plays any catalogue (agents.networks.EntityActorCritic) -------------------
@pytest.fixture(scope="module")
def entity_setup(two_catalogues, default_cfg):
    from agents.networks import EntityActorCritic

    cfgs = list(two_catalogues)
    env = Economy(cfgs[0], catalogues=cfgs, sizes=Sizes(8, 10, 3))
    net = EntityActorCritic(env.action_spec, goods=env.num_goods, niches=env.num_niches, hidden=16)
    keys = jax.random.split(jax.random.key(8), 2)
    obs, state = jax.vmap(env.reset_catalogue)(keys, env.catalogues)
    params = net.init(jax.random.key(9), obs[0, :1])
    # larger output weights than the 0.01 initialisation, so masked and unmasked logits differ visibly
    params = jax.tree.map(lambda x: x * 30.0 if x.ndim == 2 and x.shape[-1] in (1, 3, 6, 64) else x, params)
    return env, net, params, obs, state


def test_features_say_what_each_good_and_niche_is(entity_setup):
    env, _, _, obs, state = entity_setup
    from agents.networks import padded_obs_blocks

    for w, cfg in enumerate(env.catalogue_configs):
        b = padded_obs_blocks(obs[w, 0], env.num_goods, env.num_niches, cfg.observe_values)
        G, J = cfg.num_goods, cfg.num_niches
        names = [g.name for g in cfg.goods]
        np.testing.assert_array_equal(np.asarray(b["good_features"][:, 0]), np.arange(env.num_goods) < G)
        mean = np.mean([g.base_price for g in cfg.goods])
        np.testing.assert_allclose(np.asarray(b["good_features"][:G, 2]), np.log([g.base_price / mean for g in cfg.goods]),
                                   rtol=1e-5, atol=1e-6)
        for j, n in enumerate(cfg.niches):
            want_in = np.zeros(env.num_goods)
            want_out = np.zeros(env.num_goods)
            for k, q in n.inputs.items():
                want_in[names.index(k)] = q
            for k, q in n.outputs.items():
                want_out[names.index(k)] = q
            np.testing.assert_array_equal(np.asarray(b["inputs"][j]), want_in)
            np.testing.assert_array_equal(np.asarray(b["outputs"][j]), want_out)
            assert float(b["niche_features"][j, 1]) == pytest.approx(n.public / 10)
        assert not np.asarray(b["inputs"][J:]).any() and not np.asarray(b["niche_features"][J:, 0]).any()
        # every agent of a world sees its world's catalogue
        np.testing.assert_array_equal(np.asarray(obs[w, :, -b["good_features"].size:]),
                                      np.broadcast_to(np.asarray(obs[w, 0, -b["good_features"].size:]),
                                                      (obs.shape[1], b["good_features"].size)))


def test_masked_niches_and_goods_have_probability_zero_and_are_never_chosen(entity_setup):
    from agents.networks import sample_actions

    env, net, params, obs, state = entity_setup
    apply = jax.jit(lambda o: net.apply(params, o))

    def body(state, key):
        ka, ks = jax.random.split(key)
        o = jax.vmap(env.observe)(state)
        logits, _ = apply(o)
        actions, _ = sample_actions(ka, logits, batch_ndim=2)
        _, state, _, _, _, _ = jax.vmap(env.step)(jax.random.split(ks, 2), state, actions)
        return state, (actions, jax.nn.softmax(logits["niche"]), jax.nn.softmax(logits["side"]))

    _, (actions, p_niche, p_side) = jax.jit(lambda s: jax.lax.scan(body, s, jax.random.split(jax.random.key(3), 20)))(state)
    for w, cfg in enumerate(env.catalogue_configs):
        G, J = cfg.num_goods, cfg.num_niches
        assert not np.asarray(p_niche[:, w, :, J:env.num_niches]).any(), "a padded niche has probability > 0"
        n = np.asarray(actions["niche"][:, w])
        assert ((n < J) | (n == env.num_niches)).all() and len(np.unique(n)) > 2
        side = np.asarray(actions["side"][:, w])
        assert (side[..., G:] == 1).all(), "a padded good was bought or sold"
        assert (side[..., :G] != 1).any()
        np.testing.assert_array_equal(np.asarray(p_side[:, w, :, G:, 1]), 1.0)


@pytest.mark.parametrize("native", [True, False], ids=["native", "xla"])
def test_the_trainers_entity_policy_acts_and_learns_by_the_networks_law(entity_setup, native):
    """EntityPolicy (the trainer's fused path: the order heads as one output layer over every
    (agent, good) row, natively where the kernels run) gives the network's law: over a
    rollout a padded good is only held and a padded niche never chosen; the log-probability
    it acts with is the network's of the drawn actions; evaluate's log-probability, every
    head's entropy, the value and their gradients equal autodiff of the network's logits.
    Catches a kernel built from the heads in the wrong order, a mask row on the wrong
    column, rows reshaped goods-major instead of agent-major, a side not masked."""
    from agents import native as _native
    from agents.networks import EntityPolicy, entropy, log_prob

    if native and not _native.available():
        pytest.skip("the native kernels do not run here")
    env, net, params, obs, state = entity_setup
    pol = EntityPolicy(net, native=native)
    stacked = jax.tree.map(lambda x: x[None], params)

    def body(state, key):
        ka, ks = jax.random.split(key)
        o = jax.vmap(env.observe)(state)  # [W, n, D]: one member per world
        acts, lp, value = jax.vmap(lambda k, oo: pol.act(k, stacked, oo[None]))(jax.random.split(ka, 2), o)
        acts = jax.tree.map(lambda x: x[:, 0], acts)
        _, state, _, _, _, _ = jax.vmap(env.step)(jax.random.split(ks, 2), state, acts)
        return state, (o, acts, lp[:, 0], value[:, 0])

    _, (o, acts, lp, value) = jax.jit(lambda s: jax.lax.scan(body, s, jax.random.split(jax.random.key(4), 8)))(state)
    for w, cfg in enumerate(env.catalogue_configs):
        G, J = cfg.num_goods, cfg.num_niches
        side, n = np.asarray(acts["side"][:, w]), np.asarray(acts["niche"][:, w])
        assert (side[..., G:] == 1).all() and (side[..., :G] != 1).any()
        assert ((n < J) | (n == env.num_niches)).all() and len(np.unique(n)) > 2
    flat_o = o.reshape((-1, o.shape[-1]))
    flat_a = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[3:]), acts)
    logits, v_net = net.apply(params, flat_o)
    np.testing.assert_allclose(np.asarray(lp).ravel(), np.asarray(log_prob(logits, flat_a)), rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(np.asarray(value).ravel(), np.asarray(v_net), rtol=1e-4, atol=1e-4)

    def fused(p):
        lp, ents, v = pol.evaluate(p, flat_o, flat_a)
        return lp, ents, v

    def traced(p):
        lg, v = net.apply(p, flat_o)
        return log_prob(lg, flat_a), {k: entropy({k: lg[k]}, batch_ndim=1) for k in lg}, v

    (lp1, e1, v1), (lp2, e2, v2) = fused(params), traced(params)
    np.testing.assert_allclose(np.asarray(lp1), np.asarray(lp2), rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(np.asarray(v1), np.asarray(v2), rtol=1e-5, atol=1e-5)
    assert sorted(e1) == sorted(e2)
    for k in e1:
        np.testing.assert_allclose(np.asarray(e1[k]), np.asarray(e2[k]), rtol=1e-4, atol=2e-3)

    def scalar(f):
        def g(p):
            lp, ents, v = f(p)
            return jnp.mean(lp) + sum(0.3 * jnp.mean(e) for e in ents.values()) + jnp.mean(v ** 2)
        return g

    g1, g2 = jax.grad(scalar(fused))(params), jax.grad(scalar(traced))(params)
    for path, a in jax.tree_util.tree_leaves_with_path(g1):
        b = dict(jax.tree_util.tree_leaves_with_path(g2))[path]
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=1e-4 * float(np.abs(b).max()) + 1e-7,
                                   err_msg=jax.tree_util.keystr(path))


def test_the_entity_network_does_not_care_about_the_order_of_goods_and_niches(entity_setup):
    from agents.networks import padded_obs_blocks

    env, net, params, obs, _ = entity_setup
    cfg = env.catalogue_configs[0]
    Gm, Jm = env.num_goods, env.num_niches
    pg = np.random.default_rng(0).permutation(Gm)  # real and padded goods mixed: the masks travel with them
    pn = np.random.default_rng(1).permutation(Jm)
    o = obs[0, :32]
    b = padded_obs_blocks(o, Gm, Jm, cfg.observe_values)
    perm = dict(b)
    for k in ("goods", "preferences", "price", "volume", "good_features"):
        perm[k] = b[k][:, pg]
    for k in ("skills", "history", "richness", "niche_features") + (("values",) if cfg.observe_values else ()):
        perm[k] = b[k][:, pn]
    perm["inputs"], perm["outputs"] = b["inputs"][:, pn][:, :, pg], b["outputs"][:, pn][:, :, pg]
    flat = [perm[k] for k in ("goods", "money", "skills", "preferences", "history", "price", "volume", "richness",
                              "project")] + ([perm["values"]] if cfg.observe_values else [])
    nf = jnp.concatenate([perm["niche_features"], perm["inputs"], perm["outputs"]], -1)
    o2 = jnp.concatenate(flat + [perm["good_features"].reshape(32, -1), nf.reshape(32, -1)], -1)
    (l1, v1), (l2, v2) = net.apply(params, o), net.apply(params, o2)
    np.testing.assert_allclose(np.asarray(v2), np.asarray(v1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(l2["niche"][:, :Jm]), np.asarray(l1["niche"][:, pn]), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.asarray(l2["niche"][:, Jm]), np.asarray(l1["niche"][:, Jm]), rtol=1e-4, atol=1e-3)
    for h in ("side", "quantity", "price"):
        np.testing.assert_allclose(np.asarray(l2[h]), np.asarray(l1[h][:, pg]), rtol=1e-4, atol=1e-3)
    # and a catalogue's goods are not interchangeable: the outputs differ between goods
    assert np.ptp(np.asarray(l1["price"][:, :cfg.num_goods]), axis=1).max() > 1e-3


def test_scripted_agents_play_each_worlds_own_catalogue(two_catalogues):
    """The scripted baseline (and train.orders=scripted) in a padded economy: it reads the
    world's own recipes, never picks a padded niche (not even exploring) and holds padded
    goods; its utility is that of the catalogue, not of catalogue 0."""
    from agents.scripted import ScriptedConfig, scripted_actions

    env = Economy(two_catalogues[0], catalogues=two_catalogues, sizes=Sizes(8, 10, 3))
    keys = jax.random.split(jax.random.key(4), 2)
    _, state = jax.vmap(env.reset_catalogue)(keys, env.catalogues)
    explore = ScriptedConfig(epsilon=0.5)  # many exploring draws: the masks must hold for them too

    def body(state, key):
        ka, ks = jax.random.split(key)
        a = jax.vmap(lambda k, s: scripted_actions(env, k, s, explore))(jax.random.split(ka, 2), state)
        _, state, r, _, _, info = jax.vmap(env.step)(jax.random.split(ks, 2), state, a)
        return state, (a["niche"], a["side"], r, info["produced"])

    _, (niche, side, reward, produced) = jax.jit(lambda s: jax.lax.scan(body, s, jax.random.split(jax.random.key(7), 15)))(state)
    for w, cfg in enumerate(two_catalogues):
        G, J = cfg.num_goods, cfg.num_niches
        n = np.asarray(niche[:, w])
        assert ((n < J) | (n == env.num_niches)).all()
        assert len(np.unique(n[n < J])) >= min(J, 3)
        assert (np.asarray(side[:, w, :, G:]) == 1).all()
        assert np.asarray(produced[:, w]).sum() > 0 and np.isfinite(np.asarray(reward[:, w])).all()


def test_the_pettingzoo_wrapper_refuses_many_catalogues():
    pytest.importorskip("pettingzoo")
    from economy.interop.pettingzoo import AgoraParallelEnv

    cfg = load_config(ROOT / "configs" / "economy" / "classic.yaml", "catalogues.train=2", num_agents=64, num_markets=2)
    with pytest.raises(ConfigError, match="economy.catalogues"):
        AgoraParallelEnv(cfg)


def test_a_catalogue_without_the_rule_plays_the_same_beside_one_with_it(default_cfg):
    """A production rule is switched on per catalogue: a generated catalogue (no rule) plays
    bit for bit the same in an economy that also holds the default catalogue (whose farmers,
    fishers, woodcutters and miners in slots 0-3 work with tools, rule `tooled`, tool = good
    5) as in an economy of its own; a rule applied to every catalogue would double the work
    of its slot-0-3 workers who hold good 5."""
    fields = default_cfg.model_dump(mode="json", exclude={"goods", "niches", "resources", "catalogues"})
    spec = CatalogueSpec(goods=(6, 8), niches=(7, 9), raw=(2, 3), resources=(1, 2))
    gen = generate(3, spec, first_best=False, **fields)
    sizes = Sizes(max(gen.num_goods, default_cfg.num_goods), max(gen.num_niches, default_cfg.num_niches),
                  max(len(gen.resources), len(default_cfg.resources)))
    both = Economy(default_cfg, catalogues=[default_cfg, gen], sizes=sizes)
    alone = Economy(default_cfg, catalogues=[gen], sizes=sizes)
    assert both.rule_keys and not alone.rule_keys
    cat_both, cat_alone = take(both.catalogues, 1), take(alone.catalogues, 0)
    assert not np.asarray(cat_both.rules).any() and np.asarray(take(both.catalogues, 0).rules).all()
    _, s_alone = alone.reset_catalogue(jax.random.key(2), cat_alone)
    s_both = s_alone.replace(catalogue=cat_both)
    assert np.asarray(s_alone.goods[:, 5]).any()  # agents hold the good the rule would read
    step_a, step_b = jax.jit(alone.step), jax.jit(both.step)
    key = jax.random.key(12)
    for _ in range(4):
        key, ka, ks = jax.random.split(key, 3)
        a = alone.sample_actions(ka, s_alone)
        a["niche"] = jnp.where(jnp.arange(a["niche"].shape[0]) % 2 == 0, jnp.arange(a["niche"].shape[0]) % 4, a["niche"])
        _, s_alone, r0, _, _, i0 = step_a(ks, s_alone, a)
        _, s_both, r1, _, _, i1 = step_b(ks, s_both, a)
        np.testing.assert_array_equal(np.asarray(i0["units"]), np.asarray(i1["units"]))
        np.testing.assert_array_equal(np.asarray(r0), np.asarray(r1))
        np.testing.assert_array_equal(np.asarray(s_alone.goods), np.asarray(s_both.goods))
