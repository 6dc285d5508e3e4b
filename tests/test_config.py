"""Tests of configuration loading (economy/config.py, selfplay/config.py).

Every bad input must stop at load time with :class:`economy.ConfigError` whose message
names the offending key (as a dotted path) and the offending value; good inputs load
into frozen, typed configs where overrides and ``base:`` merging change exactly what
they name. Nothing here compiles JAX code.
"""

from __future__ import annotations

import functools
import re
import textwrap
from pathlib import Path

import pydantic
import pytest

import economy
from conftest import CONFIGS
from economy import ConfigError
from selfplay.config import RunConfig, load_run_config, run_config_from_dict

DEFAULT = CONFIGS / "economy" / "classic.yaml"
PRESETS = ["tiny.yaml", "demo.yaml", "large.yaml", "examples/weaver.yaml"]


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def flatten(x, prefix: str = "") -> dict[str, object]:
    """``{dotted.path: leaf}`` of a model dump (lists by index)."""
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    if isinstance(x, (list, tuple)) and x and all(isinstance(v, dict) for v in x):
        out = {}
        for i, v in enumerate(x):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): x}


def changed(a: pydantic.BaseModel, b: pydantic.BaseModel) -> dict[str, tuple]:
    """Dotted paths whose values differ between two configs: ``{path: (old, new)}``."""
    fa, fb = flatten(a.model_dump()), flatten(b.model_dump())
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def load_default(*overrides: str, **fields) -> economy.EconomyConfig:
    return economy.load_config(DEFAULT, *overrides, **fields)


def esc(s: str) -> str:
    return re.escape(s)


@pytest.fixture(scope="module")
def default_cfg() -> economy.EconomyConfig:
    return load_default()


# --------------------------------------------------------------------------------------
# Unknown keys and wrong types
# --------------------------------------------------------------------------------------
def test_unknown_top_level_key_in_file(tmp_path):
    path = write(
        tmp_path,
        "eco.yaml",
        f"""\
        base: {DEFAULT}
        num_agentz: 64
        """,
    )
    with pytest.raises(ConfigError, match=r"num_agentz: unknown key \(value 64\)"):
        economy.load_config(path)


def test_unknown_nested_key_in_file(tmp_path):
    path = write(
        tmp_path,
        "eco.yaml",
        f"""\
        base: {DEFAULT}
        market:
          tick_sise: 0.05
        """,
    )
    with pytest.raises(ConfigError, match=r"market\.tick_sise: unknown key \(value 0\.05\)"):
        economy.load_config(path)


def test_unknown_nested_key_in_niche(tmp_path):
    path = write(
        tmp_path,
        "eco.yaml",
        f"""\
        base: {DEFAULT}
        niches:
          - {{name: farmer, labor: 2.0}}
        """,
    )
    with pytest.raises(ConfigError, match=r"niches\.0\.labor: unknown key \(value 2\.0\)"):
        economy.load_config(path)


def test_unknown_key_by_override_and_keyword():
    with pytest.raises(ConfigError, match=r"market\.tick_sise: unknown key \(value 0\.1\)"):
        load_default("market.tick_sise=0.1")
    with pytest.raises(ConfigError, match=r"num_agentz: unknown key \(value 5\)"):
        load_default(num_agentz=5)


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("num_agents=many", r"num_agents = 'many': .*valid integer"),
        ("market.price_ticks=wide", r"market\.price_ticks = 'wide': .*valid integer"),
        ("goods.fish.perish=1.5", r"goods\.1\.perish = 1\.5: .*less than or equal to 1"),
        ("niches.farmer=5", r"niches\.0 = 5: .*valid dictionary"),
        ("niches.farmer.labour=0", r"niches\.0\.labour = 0: .*greater than 0"),
        ("world.cash=[100, -5]", r"world\.cash\.1 = -5: .*greater than or equal to 0"),
        ("niche_tenure=0", r"niche_tenure = 0: .*greater than or equal to 1"),
    ],
)
def test_wrong_type_or_range_names_key_and_value(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_default(override)


def test_wrong_type_by_keyword():
    with pytest.raises(ConfigError, match=r"num_agents = 'many': .*valid integer"):
        load_default(num_agents="many")


# --------------------------------------------------------------------------------------
# Cross-field checks
# --------------------------------------------------------------------------------------
def test_num_agents_not_divisible_by_num_markets():
    with pytest.raises(ConfigError, match=r"num_agents=100 is not divisible by num_markets=3"):
        load_default(num_agents=100, num_markets=3)


def test_recipe_with_unknown_good_in_file(tmp_path):
    path = write(
        tmp_path,
        "eco.yaml",
        f"""\
        base: {DEFAULT}
        niches:
          - {{name: tailor, inputs: {{silk: 2}}, outputs: {{bread: 1}}}}
        """,
    )
    # The default catalogue has 7 niches: the appended one is niches.7.
    with pytest.raises(ConfigError, match=r"niches\.7\.inputs\.silk: unknown good 'silk' in niche 'tailor'"):
        economy.load_config(path)


def test_recipe_with_unknown_output_good_by_override():
    with pytest.raises(ConfigError, match=r"niches\.0\.outputs\.rice: unknown good 'rice' in niche 'farmer'"):
        load_default("niches.farmer.outputs={rice: 3}")


def test_negative_quantity_in_recipe():
    with pytest.raises(ConfigError, match=r"niches\.4\.inputs\.grain = -1: .*greater than or equal to 0"):
        load_default("niches.baker.inputs.grain=-1")
    with pytest.raises(ConfigError, match=r"niches\.0\.outputs\.grain = -3: .*greater than or equal to 0"):
        load_default("niches.farmer.outputs.grain=-3")


def test_niche_without_inputs_or_outputs(tmp_path):
    path = write(
        tmp_path,
        "eco.yaml",
        f"""\
        base: {DEFAULT}
        niches:
          - {{name: idler, labour: 1.0}}
        """,
    )
    with pytest.raises(ConfigError, match=r"niches\.7 = \{'name': 'idler'.*\}: niche 'idler' has neither inputs nor outputs"):
        economy.load_config(path)
    # All-zero recipes count as empty too.
    with pytest.raises(ConfigError, match=r"niches\.0 = \{'name': 'farmer'.*\}: niche 'farmer' has neither inputs nor outputs"):
        load_default("niches.farmer.outputs={grain: 0}")


def test_niche_with_inputs_but_no_outputs():
    with pytest.raises(ConfigError, match=r"niches\.6 = \{'name': 'builder'.*'public': 0.*\}: niche 'builder' has inputs but no outputs"):
        load_default("niches.builder.public=0")


def test_duplicate_good_names(tmp_path):
    path = write(
        tmp_path,
        "eco.yaml",
        f"""\
        base: {DEFAULT}
        goods:
          - {{name: grain, utility: 0.1}}
        """,
    )
    # Merging by name means a repeated name in a preset changes the entry, not duplicates it.
    assert economy.load_config(path).good_names.count("grain") == 1
    with pytest.raises(ConfigError, match=r"goods: duplicate name 'grain'"):
        load_default("goods.1.name=grain")


def test_duplicate_niche_names():
    with pytest.raises(ConfigError, match=r"niches: duplicate name 'farmer'"):
        load_default("niches.1.name=farmer")


def test_unknown_resource_affinity():
    with pytest.raises(ConfigError, match=r"niches\.0\.affinity: unknown resource 'swamp' in niche 'farmer'"):
        load_default("niches.farmer.affinity=swamp")


def test_unknown_production_rule():
    with pytest.raises(ConfigError, match=r"niches\.0\.rule: unknown production rule 'nope' in niche 'farmer'"):
        load_default("niches.farmer.rule=nope")


def test_endowment_lo_above_hi():
    with pytest.raises(ConfigError, match=r"goods\.0 = \{'name': 'grain'.*\}: endowment range \[5, 2\] has lo > hi"):
        load_default("goods.grain.endowment=[5, 2]")


def test_world_ranges_lo_above_hi():
    with pytest.raises(ConfigError, match=r"world = .*skill_init range \[0\.5, 0\.1\] has lo > hi"):
        load_default("world.skill_init=[0.5, 0.1]")
    with pytest.raises(ConfigError, match=r"world = .*cash range \[900, 100\] has lo > hi"):
        load_default("world.cash=[900, 100]")


@pytest.mark.parametrize("levels", ["[1, 4, 2]", "[1, 2, 2]", "[0, 1, 2]", "[]"])
def test_quantity_levels_not_increasing(levels):
    shown = esc(levels)
    with pytest.raises(ConfigError, match=rf"market\.quantity_levels = {shown}: quantity_levels must be positive and strictly increasing, got {shown}"):
        load_default(f"market.quantity_levels={levels}")


def test_min_price_above_max_price():
    with pytest.raises(ConfigError, match=r"min_price 50 > max_price 20"):
        load_default("market.min_price=50", "market.max_price=20")


# --------------------------------------------------------------------------------------
# Fixed-point (overflow) bounds
# --------------------------------------------------------------------------------------
def test_the_int32_bounds_are_per_market():
    """Exactness is per market: 2^24 agents in 16,384 markets (configs/huge.yaml) pass with the
    default cash and holdings; a market's agents times twice max_holding, and times the
    largest cash, must stay below 2^31, named when they do not; more markets fix it."""
    from economy import load_config

    huge = load_config(CONFIGS / "huge.yaml")
    assert (huge.num_agents, huge.num_markets, huge.max_holding, huge.world.cash[1]) == (2**24, 2**14, 1000, 1000)
    load_default("max_holding=4000", num_agents=2**19, num_markets=2)  # 2^18 x 2 x 4000 < 2^31
    with pytest.raises(ConfigError, match=r"max_holding=4000: agents_per_market\*2\*max_holding = 4194304000 must "
                                          r"stay below 2\^31 \(int32 ledger of a market") as e:
        load_default("max_holding=4000", num_agents=2**19, num_markets=1)
    assert "cash" not in str(e.value)
    load_default("world.cash=[200, 5000]", num_agents=2**19, num_markets=2)
    with pytest.raises(ConfigError, match=r"world.cash=\[200, 5000\]: agents_per_market\*max cash = 2621440000 must "
                                          r"stay below 2\^31 \(int32 money of a market") as e:
        load_default("world.cash=[200, 5000]", num_agents=2**19, num_markets=1)
    assert "max_holding" not in str(e.value)


def test_max_holding_overflows_float32_quotients():
    with pytest.raises(ConfigError, match=r"max_holding=16777216 must stay below 2\^24") as e:
        load_default("max_holding=16777216", "market.max_price=100", num_agents=4, num_markets=4)
    assert "agents_per_market*2*max_holding" not in str(e.value)  # 1 * 2 * 2^24 < 2^31: only the float32 bound


def test_max_price_overflows():
    with pytest.raises(ConfigError, match=r"market\.max_price=100000000: \(largest quantity level\+1\)\*max_price\*goods must stay below 2\^31"):
        load_default("market.max_price=100000000")
    with pytest.raises(ConfigError, match=r"market\.max_price=10000000: max_price\*max_holding must stay below 2\^31"):
        load_default("market.max_price=10000000")


def test_order_book_sums_overflow_float32():
    with pytest.raises(ConfigError, match=r"market\.quantity_levels: agents_per_market\*largest level must stay below 2\^24"):
        load_default("market.quantity_levels=[1, 1024]", "world.cash=[0, 1]", num_agents=2**14, num_markets=1)


def test_endowment_above_max_holding():
    with pytest.raises(ConfigError, match=r"goods\.grain\.endowment=\[0, 20\] exceeds max_holding=10"):
        load_default("max_holding=10")


def test_base_price_outside_price_range():
    with pytest.raises(ConfigError, match=r"goods\.tools\.base_price=60 lies outside \[min_price, max_price\]"):
        load_default("market.max_price=50")


# --------------------------------------------------------------------------------------
# Files: missing, invalid, circular
# --------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"config file not found: '{esc(str(path))}'"):
        economy.load_config(path)
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_run_config(path)


def test_missing_base(tmp_path):
    path = write(tmp_path, "eco.yaml", "base: nothere.yaml\nnum_agents: 8\n")
    with pytest.raises(ConfigError, match=rf"base: 'nothere\.yaml' not found \(looked in '{esc(str(tmp_path))}'\)"):
        economy.load_config(path)


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "bad.yaml", "goods: [\n  {name: grain\n")
    with pytest.raises(ConfigError, match=rf"{esc(str(path))}: not valid YAML"):
        economy.load_config(path)


def test_top_level_not_a_mapping(tmp_path):
    path = write(tmp_path, "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match=rf"{esc(str(path))}: top level must be a mapping, got list"):
        economy.load_config(path)


def test_invalid_yaml_in_base(tmp_path):
    write(tmp_path, "bad.yaml", "goods: [\n")
    path = write(tmp_path, "eco.yaml", "base: bad.yaml\nnum_agents: 8\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*not valid YAML"):
        economy.load_config(path)


def test_base_not_a_mapping(tmp_path):
    write(tmp_path, "list.yaml", "- 1\n- 2\n")
    path = write(tmp_path, "eco.yaml", "base: list.yaml\n")
    with pytest.raises(ConfigError, match=r"list\.yaml.*must be a mapping"):
        economy.load_config(path)


def test_circular_base(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\nnum_agents: 8\n")
    write(tmp_path, "b.yaml", "base: a.yaml\nnum_markets: 2\n")
    with pytest.raises(ConfigError, match=rf"base: circular include of '{esc(str((tmp_path / 'a.yaml').resolve()))}'"):
        economy.load_config(tmp_path / "a.yaml")


def test_self_include(tmp_path):
    path = write(tmp_path, "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match=rf"base: circular include of '{esc(str(path.resolve()))}'"):
        economy.load_config(path)


def test_circular_base_in_economy_section(tmp_path):
    write(tmp_path, "eco.yaml", "base: run.yaml\nnum_agents: 8\n")
    path = write(tmp_path, "run.yaml", "economy:\n  base: eco.yaml\n")
    with pytest.raises(ConfigError, match=r"base: circular include of '.*run\.yaml'"):
        load_run_config(path)


# --------------------------------------------------------------------------------------
# Override syntax
# --------------------------------------------------------------------------------------
def test_override_without_equals():
    with pytest.raises(ConfigError, match=r"override 'foo' is not of the form key=value"):
        load_default("foo")


def test_override_list_index_out_of_range():
    with pytest.raises(ConfigError, match=r"override 'niches\.99\.labour': index 99 out of range \(length 7\)"):
        load_default("niches.99.labour=1")
    with pytest.raises(ConfigError, match=r"override 'goods\.-7\.utility': index -7 out of range \(length 6\)"):
        load_default("goods.-7.utility=1")


def test_override_unknown_list_entry_name():
    with pytest.raises(ConfigError, match=r"override 'niches\.tailor\.labour': no entry named 'tailor'"):
        load_default("niches.tailor.labour=1")


def test_override_through_a_scalar():
    with pytest.raises(ConfigError, match=r"override 'num_agents\.x': 'num_agents' is not a mapping or list"):
        load_default("num_agents.x=1")


# --------------------------------------------------------------------------------------
# The positive side: presets, overrides, merging, freezing
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load(preset):
    cfg = economy.load_config(CONFIGS / preset)
    assert isinstance(cfg, economy.EconomyConfig)
    assert cfg.num_agents % cfg.num_markets == 0
    run = load_run_config(CONFIGS / preset)
    assert isinstance(run, RunConfig)
    assert run.economy == cfg


def test_preset_sizes():
    tiny = economy.load_config(CONFIGS / "tiny.yaml")
    assert (tiny.num_agents, tiny.num_markets, tiny.agents_per_market, tiny.episode_length) == (256, 4, 64, 50)
    demo = economy.load_config(CONFIGS / "demo.yaml")
    assert (demo.num_agents, demo.num_markets, demo.agents_per_market) == (4096, 8, 512)
    large = economy.load_config(CONFIGS / "large.yaml")
    assert (large.num_agents, large.num_markets, large.agents_per_market) == (2**20, 1024, 1024)


def test_presets_keep_their_catalogue(default_cfg):
    """The test presets and the classic demo play the classic catalogue; the demo, the large
    preset and the welfare study's tiny preset the default one (classic + shelter + tools as capital)."""
    new = economy.load_config(CONFIGS / "economy" / "default.yaml")
    assert new.good_names == (*default_cfg.good_names, "shelter") and new.niche_names == default_cfg.niche_names
    for preset, want in (("tiny.yaml", default_cfg), ("demo_classic.yaml", default_cfg), ("demo.yaml", new),
                         ("large.yaml", new), ("tiny_welfare.yaml", new)):
        cfg = economy.load_config(CONFIGS / preset)
        assert cfg.goods == want.goods, preset
        assert cfg.niches == want.niches, preset
        assert cfg.resources == want.resources and cfg.project == want.project, preset


def test_bare_economy_file_as_run_config(default_cfg):
    run = load_run_config(DEFAULT)
    assert run.economy == default_cfg
    assert run.simulate == RunConfig.model_fields["simulate"].default


def test_run_config_override_changes_exactly_that_value():
    before = load_run_config(CONFIGS / "tiny.yaml")
    after = load_run_config(CONFIGS / "tiny.yaml", ["economy.num_agents=512"])
    assert after.economy.num_agents == 512
    assert changed(before, after) == {"economy.num_agents": (256, 512)}
    after = load_run_config(CONFIGS / "tiny.yaml", ["simulate.steps=3", "economy.niches.farmer.labour=5"])
    assert changed(before, after) == {"simulate.steps": (10, 3), "economy.niches.0.labour": (3.0, 5.0)}


def test_economy_override_and_keyword_change_exactly_that_value(default_cfg):
    by_override = load_default("num_agents=512")
    by_keyword = load_default(num_agents=512)
    assert by_override == by_keyword
    assert changed(default_cfg, by_override) == {"num_agents": (4096, 512)}


def test_override_list_item_by_name_and_index(default_cfg):
    by_name = load_default("niches.farmer.labour=2.0")
    assert changed(default_cfg, by_name) == {"niches.0.labour": (3.0, 2.0)}
    by_index = load_default("niches.0.labour=2.0")
    assert by_index == by_name
    by_negative = load_default("goods.-1.base_price=70")  # tools, the last good
    assert changed(default_cfg, by_negative) == {"goods.5.base_price": (60, 70)}


def test_override_nested_and_structured_values(default_cfg):
    cfg = load_default("market.tick_size=0.05", "niches.baker.inputs={grain: 3}", "world.cash=[10, 20]")
    assert changed(default_cfg, cfg) == {
        "market.tick_size": (0.03, 0.05),
        "niches.4.inputs.grain": (2, 3),
        "world.cash": ((200, 1000), (10, 20)),
    }


def test_override_on_preset_applies_inside_economy_section():
    cfg = economy.load_config(CONFIGS / "tiny.yaml", "num_markets=8")
    assert (cfg.num_agents, cfg.num_markets) == (256, 8)


def test_base_merging_by_name_adds_one_niche(tmp_path, default_cfg):
    path = write(
        tmp_path,
        "eco.yaml",
        f"""\
        base: {DEFAULT}
        goods:
          - {{name: silk, utility: 0.0, base_price: 20}}
        niches:
          - {{name: tailor, inputs: {{silk: 2}}, outputs: {{tools: 1}}, labour: 2.0}}
        """,
    )
    cfg = economy.load_config(path)
    assert cfg.niche_names == default_cfg.niche_names + ("tailor",)
    assert cfg.niches[:-1] == default_cfg.niches
    assert cfg.niches[-1] == economy.NicheConfig(name="tailor", inputs={"silk": 2}, outputs={"tools": 1}, labour=2.0)
    assert cfg.good_names == default_cfg.good_names + ("silk",)
    assert cfg.goods[:-1] == default_cfg.goods


def test_base_merging_by_name_changes_one_field(tmp_path, default_cfg):
    path = write(
        tmp_path,
        "eco.yaml",
        f"""\
        base: {DEFAULT}
        niches:
          - {{name: smith, labour: 7.0}}
        market: {{tick_size: 0.05}}
        """,
    )
    cfg = economy.load_config(path)
    assert changed(default_cfg, cfg) == {"niches.5.labour": (3.0, 7.0), "market.tick_size": (0.03, 0.05)}


def test_base_chain_relative_to_each_file(tmp_path, default_cfg):
    (tmp_path / "sub").mkdir()
    write(tmp_path, "sub/mid.yaml", f"base: {DEFAULT}\nnum_agents: 64\n")
    path = write(tmp_path, "top.yaml", "economy:\n  base: sub/mid.yaml\n  num_markets: 2\n")
    cfg = economy.load_config(path)
    assert changed(default_cfg, cfg) == {"num_agents": (4096, 64), "num_markets": (4, 2)}


def test_remove_named_entry(tmp_path, default_cfg):
    path = write(
        tmp_path,
        "eco.yaml",
        f"""\
        base: {DEFAULT}
        niches:
          - {{name: builder, remove: true}}
        """,
    )
    cfg = economy.load_config(path)
    assert cfg.niche_names == tuple(n for n in default_cfg.niche_names if n != "builder")
    assert cfg.niches == default_cfg.niches[:-1]
    assert cfg.goods == default_cfg.goods


def test_remove_a_good_still_used_is_an_error(tmp_path):
    path = write(
        tmp_path,
        "eco.yaml",
        f"""\
        base: {DEFAULT}
        goods:
          - {{name: ore, remove: true}}
        """,
    )
    with pytest.raises(ConfigError, match=r"niches\.3\.outputs\.ore: unknown good 'ore' in niche 'miner'"):
        economy.load_config(path)


def test_configs_are_frozen(default_cfg):
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        default_cfg.num_agents = 8
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        default_cfg.market.tick_size = 0.5
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        default_cfg.niches[0].labour = 9.0
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        default_cfg.goods[0].utility = 0.0
    with pytest.raises(TypeError):
        default_cfg.goods[0] = default_cfg.goods[1]  # tuples
    run = load_run_config(CONFIGS / "tiny.yaml")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        run.simulate.steps = 1
    assert default_cfg.num_agents == 4096 and default_cfg.market.tick_size == 0.03


def test_recipe_dicts_are_frozen():
    cfg = load_default()
    with pytest.raises(TypeError):
        cfg.niches[0].outputs["grain"] = 99
    assert cfg.niches[0].outputs["grain"] == 3
    hash(cfg)  # frozen all the way down: hashable


def test_remove_unknown_entry_names_it(tmp_path):
    path = write(tmp_path, "eco.yaml", "base: %s\nniches:\n  - {name: alchemist, remove: true}\n" % (CONFIGS / "economy/classic.yaml"))
    with pytest.raises(ConfigError, match=r"remove.*'alchemist'"):
        economy.load_config(path)


def test_derived_sizes(default_cfg):
    assert default_cfg.num_goods == 6 and default_cfg.num_niches == 7
    assert default_cfg.agents_per_market == 1024
    assert default_cfg.good_names == ("grain", "fish", "wood", "ore", "bread", "tools")
    assert default_cfg.niche_names == ("farmer", "fisher", "woodcutter", "miner", "baker", "smith", "builder")


# --------------------------------------------------------------------------------------
# selfplay run configs
# --------------------------------------------------------------------------------------
def test_run_config_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"train2: unknown section"):
        load_run_config(CONFIGS / "tiny.yaml", ["train2.lr=0.1"])
    path = write(tmp_path, "run.yaml", f"economy:\n  base: {DEFAULT}\nsimulat:\n  steps: 3\n")
    with pytest.raises(ConfigError, match=r"simulat: unknown section"):
        load_run_config(path)


def test_run_config_unknown_key_in_simulate():
    with pytest.raises(ConfigError, match=r"simulate\.stepz: unknown key \(value 5\)"):
        load_run_config(CONFIGS / "tiny.yaml", ["simulate.stepz=5"])


def test_run_config_bad_value_in_simulate():
    with pytest.raises(ConfigError, match=r"simulate\.agents = 'smart': "):
        load_run_config(CONFIGS / "tiny.yaml", ["simulate.agents=smart"])
    with pytest.raises(ConfigError, match=r"simulate\.steps = 0: .*greater than or equal to 1"):
        load_run_config(CONFIGS / "tiny.yaml", ["simulate.steps=0"])


def test_run_config_economy_errors_are_prefixed():
    with pytest.raises(ConfigError, match=r"economy\.market\.tick_sise: unknown key \(value 0\.1\)"):
        load_run_config(CONFIGS / "tiny.yaml", ["economy.market.tick_sise=0.1"])
    with pytest.raises(ConfigError, match=r"economy\.num_agents = 'many': .*valid integer"):
        load_run_config(CONFIGS / "tiny.yaml", ["economy.num_agents=many"])


def test_run_config_missing_economy(tmp_path):
    path = write(tmp_path, "run.yaml", "simulate:\n  steps: 3\n")
    with pytest.raises(ConfigError, match=r"economy: missing section"):
        load_run_config(path)


def test_run_config_seed_in_eval_range():
    with pytest.raises(ConfigError, match=r"simulate\.seed=1000000 lies in the held-out evaluation range \(economy\.world\.eval_seed_start=1000000\)"):
        load_run_config(CONFIGS / "tiny.yaml", ["simulate.seed=1000000"])
    with pytest.raises(ConfigError, match=r"simulate\.seed=10 lies in the held-out evaluation range \(economy\.world\.eval_seed_start=10\)"):
        load_run_config(CONFIGS / "tiny.yaml", ["simulate.seed=10", "economy.world.eval_seed_start=10"])
    ok = load_run_config(CONFIGS / "tiny.yaml", ["simulate.seed=9", "economy.world.eval_seed_start=10"])
    assert ok.simulate.seed == 9


def test_unknown_keys_name_the_closest_known_key():
    """A mistyped key at any depth (a section, a field, a nested model, a list entry)
    names the closest known key; a key like no other gets no guess. (Catches: suggestions
    drawn from the wrong level of the config.)"""
    with pytest.raises(ConfigError) as e:
        load_run_config(CONFIGS / "tiny.yaml", ["train.updtes=3", "train.pbt.intervall=3", "economy.num_agnets=256",
                                                "economy.niches.farmer.outputz.grain=2", "train.zzzqqq=1"])
    msg = str(e.value)
    for wrong, right in [("train.updtes", "updates"), ("train.pbt.intervall", "interval"),
                         ("economy.num_agnets", "num_agents"), ("economy.niches.0.outputz", "outputs")]:
        assert re.search(rf"{re.escape(wrong)}: unknown key .*did you mean '{right}'\?", msg), msg
    assert re.search(r"train\.zzzqqq: unknown key \(value 1\)$", msg, re.M), msg


# --------------------------------------------------------------------------------------
# Size rules name the nearest valid sizes
# --------------------------------------------------------------------------------------
def nearest_named(msg: str, setting: str) -> tuple[int | None, int | None]:
    """``(below, above)`` as the message proposes them for ``setting`` (``None``: none)."""
    if re.search(rf"no valid {esc(setting)}\b", msg):
        return None, None
    m = re.search(rf"nearest valid {esc(setting)}(?: \([^)]*\))?: (none|\d+) below, (none|\d+) above", msg)
    assert m, (setting, msg)
    return tuple(None if x == "none" else int(x) for x in m.groups())


@functools.cache
def tiny_data() -> dict:
    return economy.load_yaml(CONFIGS / "tiny.yaml")


def loads_run(overrides: list[str]) -> bool:
    """Whether tiny.yaml with ``overrides`` loads (the file read once: this runs often)."""
    try:
        run_config_from_dict(economy.apply_overrides(tiny_data(), overrides))
    except ConfigError:
        return False
    return True


def test_num_agents_not_divisible_names_nearest_valid_sizes():
    with pytest.raises(ConfigError) as e:
        load_default(num_agents=100, num_markets=3)
    msg = str(e.value)
    assert nearest_named(msg, "num_agents") == (99, 102), msg
    assert nearest_named(msg, "num_markets") == (2, 4), msg
    for fields in ({"num_agents": 99}, {"num_agents": 102}, {"num_markets": 2}, {"num_markets": 4}):
        assert load_default(**{"num_agents": 100, "num_markets": 3, **fields})
    # Fewer agents than markets: no multiple below, no more markets than agents.
    with pytest.raises(ConfigError) as e:
        load_default(num_agents=2, num_markets=3)
    assert nearest_named(str(e.value), "num_agents") == (None, 3)
    assert nearest_named(str(e.value), "num_markets") == (2, None)


VILLAGES = ["train.layout=villages"]
BIG_VILLAGES = [*VILLAGES, "economy.num_agents=8192", "economy.num_markets=8", "train.village_players=8"]


@pytest.mark.parametrize("overrides, rule, setting, want", [
    (["mesh.agents=3"], r"mesh\.agents=3 must divide", "mesh.agents", (2, 4)),
    (["train.members=3"], r"3 players must divide economy\.num_agents=256", "train.members", (2, 4)),
    # The league adds its snapshots to the players: 5 + 2 = 7 does not divide 256, 2 + 2 and 6 + 2 do.
    (["train.members=5", "train.league.size=2"], r"7 players must divide", "train.members", (2, 6)),
    (["train.members=300"], r"300 players must divide", "train.members", (64, None)),
    (["economy.num_agents=48", "train.members=8"], r"agents per market", "train.members", (6, 12)),
    ([*VILLAGES, "train.village_players=3"], r"village_players=3.*must divide", "train.village_players", (2, 4)),
    ([*VILLAGES, "train.village_players=8"], r"village_players=8.*at most", "train.village_players", (4, None)),
    ([*VILLAGES, "train.members=16"], r"market seats", "train.members", (8, None)),
    ([*VILLAGES, "train.members=16"], r"market seats", "train.village_players", (None, 4)),
    # 8 markets * 8 village players = 64 seats: 102 players do not divide them, 62 + 2 do; no
    # players above 64 can, and no village size both divides the 1024 agents per market and
    # gives a multiple of 102 seats.
    ([*BIG_VILLAGES, "train.members=100", "train.league.size=2"], r"64 market seats .* 102 players",
     "train.members", (62, None)),
    ([*BIG_VILLAGES, "train.members=100", "train.league.size=2"], r"64 market seats", "train.village_players",
     (None, None)),
    (["train.minibatches=48", "train.rollout_steps=16"], r"minibatches=48", "train.minibatches", (32, 64)),
])
def test_size_errors_name_the_nearest_valid_sizes(overrides, rule, setting, want):
    """A size that breaks a divisibility rule is refused with the nearest valid values of
    the setting below and above (every size rule considered, the league's players
    included); those load, and nothing between them and the refused value does. (Catches:
    a proposal computed from one rule that another refuses, or one that is not the nearest.)"""
    with pytest.raises(ConfigError, match=rule) as e:
        load_run_config(CONFIGS / "tiny.yaml", overrides)
    msg = str(e.value)
    below, above = nearest_named(msg, setting)
    assert (below, above) == want, msg
    given = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{setting}=")]
    section, name = setting.split(".")
    value = int(given[-1]) if given else RunConfig.model_fields[section].default.model_dump()[name]
    kept = [o for o in overrides if not o.startswith(f"{setting}=")]
    for proposed in (below, above):
        if proposed is not None:
            assert loads_run([*kept, f"{setting}={proposed}"]), (setting, proposed)
    lo = below + 1 if below is not None else max(1, value - 8)
    hi = above if above is not None else value + 9
    for v in range(lo, hi):
        assert not loads_run([*kept, f"{setting}={v}"]), (setting, v)


def test_size_error_exits_2_with_the_nearest_valid_sizes(capsys, tmp_path):
    from selfplay.cli import main

    rc = main(["simulate", str(CONFIGS / "tiny.yaml"), "train.members=5", "train.league.size=2"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "nearest valid train.members (train.league.size=2 adds 2 players): 2 below, 6 above" in err, err
