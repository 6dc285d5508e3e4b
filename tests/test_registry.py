"""Tests of the extension points: presets, every niche of the default catalogue, every
registered production rule, the README's custom-rule example, the YAML-only example
(configs/examples/weaver.yaml) and the rule registry itself.

Speed: every new :class:`economy.Economy` (or shape) compiles anew, seconds on two
cores. The niche tests reuse the session's tiny economy with hand-built states; each
extra economy (one per production rule, the README's, the weaver's) is built once per
module.
"""

from __future__ import annotations

import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import economy
from conftest import CONFIGS, ROOT
from economy import production, rng

DEFAULT_CFG = economy.load_config(CONFIGS / "economy" / "classic.yaml")
NICHES = DEFAULT_CFG.niche_names
RULES = sorted(economy.PRODUCTION_RULES)  # at collection: the built-in rules
# Parameters each known rule needs (a rule registered elsewhere gets none).
RULE_PARAMS = {
    "congestion": {"capacity": 4.0}, "seasonal": {"amplitude": 0.5, "period": 20.0}, "tooled": {"tool": 5.0, "bonus": 1.0},
}
EPS = 1e-3  # float slack when bracketing stochastically rounded units


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def check_ledger(cfg, before, after, info):
    """Money constant; goods' = goods + produced - consumed per good (host int64, exact)."""
    lb, la = economy.ledger(before, per_market=True), economy.ledger(after, per_market=True)
    np.testing.assert_array_equal(la["money"], lb["money"], err_msg="a market's money changed")
    produced = np.asarray(info["produced"], np.int64)
    consumed = np.asarray(info["consumed"], np.int64)
    assert produced.shape == consumed.shape == (cfg.num_markets, cfg.num_goods)
    assert (produced >= 0).all() and (consumed >= 0).all(), (produced, consumed)
    np.testing.assert_array_equal(la["goods"], lb["goods"] + produced - consumed)  # per market
    goods, money = np.asarray(after.goods), np.asarray(after.money)
    assert goods.min() >= 0 and goods.max() <= cfg.max_holding
    assert money.min() >= 0


def hold_actions(env, niche) -> dict:
    """Everyone works ``niche`` (int or [N]) and holds in every market."""
    cfg = env.cfg
    n, G = cfg.num_agents, cfg.num_goods
    return {
        "niche": jnp.broadcast_to(jnp.asarray(niche, jnp.int32), (n,)),
        "side": jnp.full((n, G), economy.HOLD, jnp.int32),
        "quantity": jnp.zeros((n, G), jnp.int32),
        "price": jnp.full((n, G), cfg.market.price_ticks // 2, jnp.int32),
    }


def random_rollout(fns, cfg, key, steps: int):
    """Reset and ``steps`` steps of uniformly random actions, the ledger checked at each."""
    key_reset, key = jax.random.split(key)
    _, state = fns["reset"](key_reset)
    for _ in range(steps):
        key, k_act, k_step = jax.random.split(key, 3)
        actions = fns["sample"](k_act, state)
        _, new, reward, terminated, truncated, info = fns["step"](k_step, state, actions)
        check_ledger(cfg, state, new, info)
        assert np.isfinite(np.asarray(reward)).all()
        state = new
    return state


def jitted(env) -> dict:
    return {"reset": jax.jit(env.reset), "step": jax.jit(env.step), "sample": jax.jit(env.sample_actions)}


def work_phase(env, key, state, actions):
    """The work phase of ``env.step(key, state, actions)``, per agent (mirrors ``Economy._step``:
    the work uniforms come from the first of four splits of the step key)."""
    cfg = env.cfg
    n = state.goods.shape[0]
    key_work = jax.random.split(key, 4)[0]
    return production.work(
        env.params,
        actions["niche"],
        state.goods,
        state.skills,
        state.history,
        state.richness,
        state.labour,
        env._project_mult(state.project),
        rng.uniform(key_work, (n,)),
        num_markets=state.price.shape[0],
        max_holding=cfg.max_holding,
        skill_floor=cfg.skill_floor,
        history_decay=cfg.history_decay,
        custom=env.custom,
        step=state.step,
    )


def per_agent(cfg, market_values):
    """Broadcast ``[M, ...]`` market values to agents ``[N, ...]``."""
    x = np.asarray(market_values)
    return np.repeat(x, cfg.agents_per_market, axis=0)


def assert_bracketed(units, effort, what=""):
    """Stochastic rounding of ``effort``: each unit count is floor or ceil of it (float slack)."""
    units, effort = np.ravel(np.asarray(units, np.int64)), np.ravel(np.asarray(effort, np.float64))
    lo, hi = np.floor(effort - EPS), np.ceil(effort + EPS)
    bad = np.flatnonzero((units < lo) | (units > hi))
    assert bad.size == 0, f"{what}: units {units[bad[:5]]} outside [floor, ceil] of effort {effort[bad[:5]]}"


@pytest.fixture
def restore_rules():
    """Leave the global rule registry as it was."""
    saved = dict(economy.PRODUCTION_RULES)
    yield
    economy.PRODUCTION_RULES.clear()
    economy.PRODUCTION_RULES.update(saved)


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------
def test_tiny_preset_runs_with_exact_ledger(tiny_cfg, tiny_fns):
    assert (tiny_cfg.num_agents, tiny_cfg.num_markets) == (256, 4)
    state = random_rollout(tiny_fns, tiny_cfg, jax.random.key(11), steps=4)
    assert int(state.step) == 4


@pytest.mark.parametrize(
    "preset, agents, markets", [("tiny.yaml", 256, 4), ("demo.yaml", 4096, 8), ("large.yaml", 2**20, 1024)]
)
def test_presets_load_with_sizes(preset, agents, markets):
    cfg = economy.load_config(CONFIGS / preset)
    assert (cfg.num_agents, cfg.num_markets, cfg.agents_per_market) == (agents, markets, agents // markets)
    assert cfg.niche_names == NICHES  # every preset keeps the classic niches (the default catalogue adds a good)
    assert cfg.good_names[: len(DEFAULT_CFG.good_names)] == DEFAULT_CFG.good_names


# --------------------------------------------------------------------------------------
# Every niche of the default catalogue, on the tiny economy
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_work(tiny_env):
    return jax.jit(functools.partial(work_phase, tiny_env))


@pytest.fixture(scope="module")
def tiny_world(tiny_fns):
    _, state = tiny_fns["reset"](jax.random.key(5))
    return state


@pytest.mark.parametrize("name", NICHES)
def test_niche_recipe_exact(name, tiny_cfg, tiny_env, tiny_fns, tiny_work, tiny_world):
    cfg, p = tiny_cfg, tiny_env.params
    j = cfg.niche_names.index(name)
    niche = cfg.niches[j]
    n, G, J = cfg.num_agents, cfg.num_goods, cfg.num_niches
    inp = np.asarray(p.inputs[j], np.int64)
    out = np.asarray(p.outputs[j], np.int64)
    # Ample inputs, no outputs held (no cap binds), half-trained everyone, no project yet.
    goods0 = np.where(inp > 0, 300, 0).astype(np.int32)
    state = tiny_world.replace(
        goods=jnp.asarray(np.broadcast_to(goods0, (n, G))),
        skills=jnp.full((n, J), 0.5, jnp.float32),
        project=jnp.zeros_like(tiny_world.project),
    )
    actions = hold_actions(tiny_env, j)
    key = jax.random.key(100 + j)

    # Per agent, the work phase follows the recipe exactly.
    w = tiny_work(key, state, actions)
    units = np.asarray(w.units, np.int64)
    assert units.min() >= 0 and units.sum() > 0, f"{name}: nobody produced anything"
    by_market = units.reshape(cfg.num_markets, -1).sum(1)[:, None]
    np.testing.assert_array_equal(np.asarray(w.produced), by_market * out[None])
    np.testing.assert_array_equal(np.asarray(w.used), by_market * inp[None])
    np.testing.assert_array_equal(np.asarray(w.goods), goods0[None] - units[:, None] * inp + units[:, None] * out)
    np.testing.assert_array_equal(np.asarray(w.public), units * niche.public)
    assert (units[:, None] * inp[None] < goods0[None])[:, inp > 0].all(), "inputs ran out: not ample"
    # Units are the default rule's effort, stochastically rounded.
    skill_mult = cfg.skill_floor + (1 - cfg.skill_floor) * 0.5
    effort = float(state.labour[j]) * skill_mult * per_agent(cfg, state.richness[:, j])  # project bonus 1 (stock 0)
    assert_bracketed(units, effort, name)

    # The step does the same work: produced = units x outputs, the ledger exact.
    _, new, _, _, _, info = tiny_fns["step"](key, state, actions)
    check_ledger(cfg, state, new, info)
    produced = economy.world_total(info["produced"])
    np.testing.assert_array_equal(produced, units.sum() * out)
    for g in np.flatnonzero(out):
        assert produced[g] % out[g] == 0 and produced[g] // out[g] == units.sum()
    consumed = economy.world_total(info["consumed"])
    assert (consumed >= units.sum() * inp).all()  # inputs used, plus what was eaten or spoiled
    np.testing.assert_array_equal(np.asarray(new.money), np.asarray(state.money))  # everyone held
    np.testing.assert_array_equal(
        np.asarray(info["niche_occupancy"]), np.eye(J + 1, dtype=np.int32)[j][None].repeat(cfg.num_markets, 0) * cfg.agents_per_market
    )
    # Goods that are neither eaten nor perish change by exactly units x (outputs - inputs) per agent.
    still = (np.asarray(p.consume) == 0) & (np.asarray(p.perish) == 0)
    assert still.any()
    delta = np.asarray(new.goods, np.int64) - np.asarray(state.goods, np.int64)
    np.testing.assert_array_equal(delta[:, still], (units[:, None] * (out - inp)[None])[:, still])

    # Learning by doing: the niche's skill rises for everyone (all could practise), others decay.
    skills = np.asarray(new.skills)
    np.testing.assert_allclose(skills[:, j], 0.5 + niche.learn * 0.5, rtol=1e-6)
    assert (skills[:, j] > 0.5).all()
    others = np.delete(skills, j, axis=1)
    assert (others < 0.5).all()

    # A public niche raises every market's project stock by exactly its units x public.
    project = np.asarray(new.project, np.int64)
    expected = units.reshape(cfg.num_markets, -1).sum(-1) * niche.public
    np.testing.assert_array_equal(project, expected)
    if niche.public:
        assert (project > 0).all(), f"{name}: public niche did not raise the project"
    else:
        assert (project == 0).all()


def test_catalogue_has_a_public_niche():
    assert [n.name for n in DEFAULT_CFG.niches if n.public] == ["builder"]


# --------------------------------------------------------------------------------------
# Every registered production rule
# --------------------------------------------------------------------------------------
RULE_NICHE = "miner"  # its output (ore) is neither eaten nor perishes: per-agent units are exact


@functools.cache
def rule_env(rule: str):
    params = RULE_PARAMS.get(rule, {})
    flow = "{" + ", ".join(f"{k}: {v}" for k, v in params.items()) + "}"
    cfg = economy.load_config(
        CONFIGS / "tiny.yaml",
        f"niches.{RULE_NICHE}.rule={rule}",
        f"niches.{RULE_NICHE}.params={flow}",
        f"niches.{RULE_NICHE}.labour=40",
        num_agents=64,
        num_markets=2,
    )
    env = economy.Economy(cfg)
    return cfg, env, jitted(env)


@pytest.mark.parametrize("rule", RULES)
def test_rule_runs_with_exact_ledger(rule):
    cfg, env, fns = rule_env(rule)
    j = cfg.niche_names.index(RULE_NICHE)
    assert cfg.niches[j].rule == rule
    assert [c.index for c in env.custom] == [j] and env.custom[0].rule is economy.PRODUCTION_RULES[rule]
    state = random_rollout(fns, cfg, jax.random.key(21), steps=3)
    # Everyone works the rule's niche: output is non-negative whole recipe units.
    g = cfg.good_names.index("ore")
    for t in range(2):
        _, new, _, _, _, info = fns["step"](jax.random.key(30 + t), state, hold_actions(env, j))
        check_ledger(cfg, state, new, info)
        delta = np.asarray(new.goods[:, g], np.int64) - np.asarray(state.goods[:, g], np.int64)
        assert delta.min() >= 0 and (delta % 2 == 0).all()
        assert int(economy.world_total(info["produced"])[g]) == delta.sum()
        assert (np.asarray(info["produced"]) == 0)[:, np.arange(cfg.num_goods) != g].all()
        state = new


def test_tooled_rule_multiplies_work_of_tool_holders():
    """``tooled``: an agent holding at least one unit of the tool good works
    ``1 + bonus`` times the default rule's units; without one, exactly the default."""
    from economy.registry import tooled_rule

    goods = np.zeros((4, 6), np.int32)
    goods[:, 5] = [0, 1, 3, 0]
    goods[3, 4] = 7  # another good does not count
    ctx = economy.ProductionContext(
        skill=jnp.asarray([0.0, 0.5, 1.0, 1.0]), richness=jnp.asarray([1.0, 2.0, 0.5, 1.0]), project=jnp.ones(4),
        workers=jnp.zeros(4, jnp.int32), goods=jnp.asarray(goods), labour=jnp.float32(3.0), skill_floor=0.25,
        step=jnp.int32(0), params={"tool": jnp.float32(5), "bonus": jnp.float32(0.5)},
    )
    base = np.asarray(economy.default_rule(ctx))
    np.testing.assert_allclose(np.asarray(tooled_rule(ctx)), base * np.array([1.0, 1.5, 1.5, 1.0]), rtol=1e-6)
    cap = economy.load_config(CONFIGS / "economy" / "capital.yaml")
    assert [n.name for n in cap.niches if n.rule == "tooled"] == ["farmer", "fisher", "woodcutter", "miner"]
    assert cap.good_names[5] == "tools"


def test_congestion_lowers_per_worker_output():
    cfg, env, fns = rule_env("congestion")
    j = cfg.niche_names.index(RULE_NICHE)
    g = cfg.good_names.index("ore")
    capacity = cfg.niches[j].params["capacity"]
    M, B, J = cfg.num_markets, cfg.agents_per_market, cfg.num_niches
    _, state = fns["reset"](jax.random.key(8))
    goods = np.asarray(state.goods).copy()
    goods[:, g] = 0
    state = state.replace(
        goods=jnp.asarray(goods),
        skills=jnp.ones_like(state.skills),  # skill multiplier 1
        project=jnp.zeros_like(state.project),  # project bonus 1
    )
    full = float(state.labour[j]) * np.asarray(state.richness[:, j])  # [M] uncongested units per worker
    results = {}
    for workers in (2, int(capacity), B):  # below, at and far above capacity, in every market
        niche = np.full((M, B), J, np.int32)  # rest
        niche[:, :workers] = j
        _, new, _, _, _, info = fns["step"](jax.random.key(9), state, hold_actions(env, niche.reshape(-1)))
        check_ledger(cfg, state, new, info)
        ore = np.asarray(new.goods[:, g], np.int64).reshape(M, B)
        assert ore.max() < cfg.max_holding  # no cap binds
        assert (ore[:, workers:] == 0).all()
        units = ore[:, :workers] // 2
        assert (ore[:, :workers] % 2 == 0).all()
        crowd = max(workers / capacity, 1.0)
        assert_bracketed(units, np.broadcast_to((full / crowd)[:, None], units.shape), f"{workers} workers")
        results[workers] = units.mean(-1)
    # Per-worker output falls once the pool is crowded: B / capacity = 8 times less.
    assert (results[B] < results[2]).all() and (results[B] < results[int(capacity)]).all()
    assert (results[B] <= full / (B / capacity) + 1).all()
    assert (results[2] >= full - 1).all()


# --------------------------------------------------------------------------------------
# The README's custom-rule example, and the YAML-only example
# --------------------------------------------------------------------------------------
def readme_block(marker: str, lang: str) -> str:
    text = (ROOT / "docs" / "economy.md").read_text()
    assert marker in text, f"docs/economy.md lacks {marker!r}"
    after = text.split(marker, 1)[1]
    m = re.match(rf"\s*```{lang}\n(.*?)\n```", after, re.S)
    assert m, f"no ```{lang} block right after {marker!r} in docs/economy.md"
    return m.group(1)


def readme_yaml_example() -> dict:
    text = (ROOT / "docs" / "economy.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)\n```", text, re.S)]
    blocks = [b for b in blocks if isinstance(b, dict) and "economy" in b]
    assert len(blocks) == 1, "expected one YAML niche example in docs/economy.md"
    return blocks[0]


@pytest.fixture(scope="module")
def readme():
    """Run the README's custom-rule example (from the repository root, as documented)."""
    saved = dict(economy.PRODUCTION_RULES)
    code = readme_block("<!-- example: custom-rule -->", "python")
    ns: dict = {"__name__": "readme_example"}
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exec(compile(code, "docs/economy.md:custom-rule", "exec"), ns)
    finally:
        os.chdir(cwd)
    ns["fns"] = jitted(ns["env"])
    yield ns
    economy.PRODUCTION_RULES.clear()
    economy.PRODUCTION_RULES.update(saved)


def test_readme_example_registers_its_rule(readme):
    assert "seasonal" not in RULES  # not built in: the example added it
    assert economy.PRODUCTION_RULES["seasonal"] is readme["seasonal"]
    assert economy.make_rule("seasonal") is readme["seasonal"]
    cfg = readme["cfg"]
    farmer = cfg.niches[cfg.niche_names.index("farmer")]
    assert farmer.rule == "seasonal" and farmer.params == {"amplitude": 0.5, "period": 20.0}
    assert [c.rule for c in readme["env"].custom] == [readme["seasonal"]]


def test_readme_rule_is_seasonal(readme):
    n = 8
    ctx = economy.ProductionContext(
        skill=jnp.linspace(0.0, 1.0, n),
        richness=jnp.linspace(0.5, 2.0, n),
        project=jnp.ones(n),
        workers=jnp.full((n,), 3, jnp.int32),
        goods=jnp.zeros((n, 6), jnp.int32),
        labour=jnp.float32(3.0),
        skill_floor=0.25,
        step=jnp.int32(0),
        params={"amplitude": jnp.float32(0.5), "period": jnp.float32(20.0)},
    )
    base = np.asarray(economy.default_rule(ctx))
    for step, factor in [(0, 1.0), (5, 1.5), (10, 1.0), (15, 0.5)]:
        got = np.asarray(readme["seasonal"](ctx._replace(step=jnp.int32(step))))
        np.testing.assert_allclose(got, base * factor, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")


def test_readme_example_steps_with_exact_ledger(readme):
    cfg, env, fns = readme["cfg"], readme["env"], readme["fns"]
    state = random_rollout(fns, cfg, jax.random.key(31), steps=3)
    # All farmers at the harvest peak (step 5) and trough (step 15): the rule drives output.
    j, g = cfg.niche_names.index("farmer"), cfg.good_names.index("grain")
    goods = np.asarray(state.goods).copy()
    goods[:, g] = 0
    state = state.replace(goods=jnp.asarray(goods), skills=jnp.ones_like(state.skills), project=jnp.zeros_like(state.project))
    full = float(state.labour[j]) * per_agent(cfg, state.richness[:, j])
    totals = {}
    for step, factor in [(5, 1.5), (15, 0.5)]:
        s = state.replace(step=jnp.int32(step))
        _, new, _, _, _, info = fns["step"](jax.random.key(40), s, hold_actions(env, j))
        check_ledger(cfg, s, new, info)
        produced = int(economy.world_total(info["produced"])[g])
        assert produced % 3 == 0
        units = produced // 3
        effort = full * factor
        assert np.floor(effort - EPS).sum() <= units <= np.ceil(effort + EPS).sum(), (step, units, effort.sum())
        totals[step] = units
    assert totals[5] > 2 * totals[15]


def test_readme_yaml_example_is_the_weaver_preset():
    doc = readme_yaml_example()["economy"]
    weaver = yaml.safe_load((CONFIGS / "examples" / "weaver.yaml").read_text())["economy"]
    assert doc["base"] == weaver["base"]
    assert doc["goods"] == weaver["goods"] and doc["niches"] == weaver["niches"]


@pytest.fixture(scope="module")
def weaver():
    cfg = economy.load_config(CONFIGS / "examples" / "weaver.yaml")
    env = economy.Economy(cfg)
    return cfg, env, jitted(env)


def test_weaver_example_loads(weaver):
    cfg, _, _ = weaver
    assert cfg.good_names == DEFAULT_CFG.good_names + ("wool", "cloth")
    assert cfg.niche_names == NICHES + ("shepherd", "weaver")
    assert cfg.niches[: len(NICHES)] == DEFAULT_CFG.niches
    assert cfg.niches[-1].inputs == {"wool": 3} and cfg.niches[-1].outputs == {"cloth": 1}


def test_weaver_example_runs(weaver):
    cfg, env, fns = weaver
    state = random_rollout(fns, cfg, jax.random.key(51), steps=3)
    # Half shepherds, half weavers with wool to spare: both new goods are produced.
    wool, cloth = cfg.good_names.index("wool"), cfg.good_names.index("cloth")
    j_shep, j_weave = cfg.niche_names.index("shepherd"), cfg.niche_names.index("weaver")
    goods = np.asarray(state.goods).copy()
    goods[:, wool] = 100
    goods[:, cloth] = 0
    state = state.replace(goods=jnp.asarray(goods))
    niche = np.where(np.arange(cfg.num_agents) % 2 == 0, j_shep, j_weave)
    _, new, _, _, _, info = fns["step"](jax.random.key(52), state, hold_actions(env, niche))
    check_ledger(cfg, state, new, info)
    produced = economy.world_total(info["produced"])
    assert produced[wool] > 0 and produced[wool] % 3 == 0
    assert produced[cloth] > 0
    assert produced[np.setdiff1d(np.arange(cfg.num_goods), [wool, cloth])].sum() == 0
    # wool neither perishes nor is eaten: its change is shepherds' output minus weavers' input.
    woven = produced[cloth]
    assert economy.ledger(new)["goods"][wool] == economy.ledger(state)["goods"][wool] + produced[wool] - 3 * woven


# --------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------
def test_register_rule_replaces_only_when_asked(restore_rules):
    def first(ctx):
        return economy.default_rule(ctx)

    def second(ctx):
        return 2.0 * economy.default_rule(ctx)

    assert economy.register_rule("test-replace", first) is first
    assert economy.make_rule("test-replace") is first
    with pytest.raises(ValueError, match="'test-replace' is already registered"):
        economy.register_rule("test-replace", second)
    with pytest.raises(ValueError, match="already registered"):
        economy.register_rule("congestion")(second)  # a built-in rule is not silently shadowed
    assert economy.make_rule("test-replace") is first
    economy.register_rule("test-replace", replace=True)(second)  # decorator form
    assert economy.make_rule("test-replace") is second
    assert economy.PRODUCTION_RULES["test-replace"] is second


def test_register_rule_as_decorator_returns_the_function(restore_rules):
    @economy.register_rule("test-deco")
    def rule(ctx):
        return economy.default_rule(ctx)

    assert callable(rule) and economy.make_rule("test-deco") is rule
    # A registered rule passes config validation.
    cfg = economy.load_config(CONFIGS / "tiny.yaml", "niches.farmer.rule=test-deco")
    assert cfg.niches[0].rule == "test-deco"


def test_make_rule_unknown_name():
    with pytest.raises(KeyError, match=r"unknown production rule 'no-such-rule' \(registered: .*'congestion'"):
        economy.make_rule("no-such-rule")


def test_register_rule_not_callable(restore_rules):
    with pytest.raises(TypeError, match=r"production rule 'bad' must be callable, got int"):
        economy.register_rule("bad", 3)
    with pytest.raises(TypeError, match=r"production rule 'bad' must be callable, got str"):
        economy.register_rule("bad")("not a function")
    assert "bad" not in economy.PRODUCTION_RULES


def test_builtin_congestion_rule_formula():
    n = 6
    ctx = economy.ProductionContext(
        skill=jnp.full((n,), 1.0),
        richness=jnp.ones(n),
        project=jnp.ones(n),
        workers=jnp.asarray([1, 2, 4, 8, 16, 40], jnp.int32),
        goods=jnp.zeros((n, 1), jnp.int32),
        labour=jnp.float32(10.0),
        skill_floor=0.25,
        step=jnp.int32(0),
        params={"capacity": jnp.float32(4.0)},
    )
    got = np.asarray(economy.make_rule("congestion")(ctx))
    np.testing.assert_allclose(got, [10, 10, 10, 5, 2.5, 1], rtol=1e-6)
