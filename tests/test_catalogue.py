"""economy.catalogue: procedurally generated catalogues (``agora catalogue``).

The same seed gives the same catalogue; over many seeds every draw meets the guarantees
(every consumer good can be produced, no recipe destroys value at base prices, the spec's
ranges and depth hold, one public-project recipe, raw niches tied to resources) and
round-trips through YAML; the planner's first-best uses at least half of the niches; a bad
spec exits 2 naming the field; the checks themselves catch catalogues that break them."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import economy
from economy import ConfigError
from analysis import catalogue as C
from economy.config import economy_from_dict
from selfplay.cli import main

SEEDS = range(40)


def _depth(cfg) -> int:
    """The longest chain of recipes above a raw good (raw goods: 0)."""
    level = {}
    for _ in range(cfg.num_goods + 1):  # fixed point over the recipes
        for n in cfg.niches:
            if n.public and not n.outputs:
                continue
            d = 1 + max((level.get(g, -10**6) for g in n.inputs), default=-1)
            for g in n.outputs:
                level[g] = max(level.get(g, -10**6), d)
    return max(level.values())


def test_the_same_seed_gives_the_same_catalogue():
    a, b = C.generate(7, first_best=False), C.generate(7, first_best=False)
    assert a.model_dump() == b.model_dump()
    assert C.generate(8, first_best=False).model_dump() != a.model_dump()


@pytest.mark.parametrize("spec", [C.CatalogueSpec(), C.CatalogueSpec(depth=3, goods=(6, 9), niches=(8, 12)),
                                  C.CatalogueSpec(depth=1, goods=(2, 3), niches=(3, 5), raw=(1, 2), resources=(1, 2), inputs=(1, 1))],
                         ids=["default", "deep", "small"])
def test_every_draw_meets_the_guarantees_and_the_spec(spec, tmp_path):
    for seed in SEEDS:
        cfg = C.generate(seed, spec, first_best=False)
        assert C.check(cfg, spec, first_best=False) == ""
        assert spec.goods[0] <= cfg.num_goods <= spec.goods[1]
        assert spec.niches[0] <= cfg.num_niches <= spec.niches[1]
        assert _depth(cfg) == spec.depth
        public = [n for n in cfg.niches if n.public]
        assert len(public) == 1 and not public[0].outputs  # one public-project recipe
        for n in cfg.niches:
            if not n.inputs:  # raw producers are tied to a resource
                assert n.affinity in cfg.resources
            elif not n.public:
                assert spec.inputs[0] <= len(n.inputs) <= spec.inputs[1]
        eat = [g for g in cfg.goods if g.utility > 0]
        assert len(eat) >= 1 and np.isclose(sum(g.utility for g in eat), 1.0, atol=1e-3)
        # the YAML it prints loads back to the same catalogue
        path = tmp_path / f"c{seed}.yaml"
        path.write_text(C.to_yaml(cfg))
        back = economy.load_config(path)
        assert back.goods == cfg.goods and back.niches == cfg.niches and back.resources == cfg.resources


def test_the_first_best_uses_at_least_half_of_the_niches():
    spec = C.CatalogueSpec(first_best_worlds=1)
    for seed in (0, 3):
        from analysis.frontier import first_best

        cfg = C.generate(seed, spec)
        shares = np.asarray(first_best(cfg, worlds=1)["shares"])
        assert 2 * np.sum(shares >= C.ACTIVE) >= cfg.num_niches


def test_the_checks_catch_what_they_guard():
    cfg = C.generate(1, first_best=False)
    data = cfg.model_dump(mode="json")
    maker = next(i for i, n in enumerate(data["niches"]) if n["inputs"] and n["outputs"])
    bad = dict(data, niches=[dict(n, outputs={g: 1 for g in n["outputs"]}, inputs={g: 9 for g in n["inputs"]})
                             if i == maker else n for i, n in enumerate(data["niches"])])
    assert C.check(economy_from_dict(bad), first_best=False).startswith("destroys value")
    eat = next(g["name"] for g in data["goods"] if g["utility"] > 0 and g["name"].startswith("made"))
    gone = dict(data, niches=[n for n in data["niches"] if eat not in n["outputs"]])
    assert C.check(economy_from_dict(gone), first_best=False).startswith("unproducible")


@pytest.mark.parametrize("spec, field", [
    ({"goods": [9, 3]}, "spec.goods"), ({"markup": [1.0, 1.5]}, "spec.markup"), ({"colour": 3}, "spec.colour"),
    ({"niches": [3, 4], "goods": [5, 6]}, "spec.niches"), ({"depth": 4}, "spec.depth"),
    ({"goods": [2, 2], "raw": [2, 2], "depth": 2}, "spec.goods"), ({"goods": [2, 6]}, "spec.goods"),
    ({"resources": [4, 4], "raw": [2, 4]}, "spec.resources")])
def test_a_bad_spec_exits_2_naming_the_field(tmp_path, capsys, spec, field):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["catalogue", "--seed", "1", "--spec", str(path), "--no-first-best"]) == 2
    assert field in capsys.readouterr().err


def test_agora_catalogue_prints_a_loadable_economy(tmp_path, capsys):
    out = tmp_path / "c.yaml"
    assert main(["catalogue", "--seed", "5", "--no-first-best", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text() and printed.startswith("# agora catalogue --seed 5")
    assert economy.load_config(out).niches == C.generate(5, first_best=False).niches


def test_the_spec_ranges_hold_at_their_edges():
    """Raw goods and resources at the low ends the spec asks for, the fewest goods a depth
    allows, and a markup so large that prices leave the market's range: each draw keeps
    the ranges, and draws the economy refuses are redrawn or named, never a traceback."""
    spec = C.CatalogueSpec(goods=(4, 6), raw=(2, 4), resources=(2, 2), depth=2)
    for seed in range(30):
        cfg = C.generate(seed, spec, first_best=False)
        raw = [n for n in cfg.niches if not n.inputs and not n.public]
        assert 2 <= len(raw) <= 4 and len(cfg.resources) == 2
    steep = C.CatalogueSpec(depth=3, goods=(6, 8), inputs=(3, 3), markup=(5.0, 10.0), attempts=3)
    for seed in range(5):
        try:
            cfg = C.generate(seed, steep, first_best=False)
        except ConfigError as err:
            assert "invalid economy" in str(err)
        else:
            assert max(g.base_price for g in cfg.goods) <= cfg.market.max_price
    with pytest.raises(ConfigError, match="seed -1"):
        C.generate(-1, first_best=False)


def test_a_spec_no_draw_can_meet_is_refused_naming_the_guarantee(monkeypatch):
    monkeypatch.setattr(C, "check", lambda cfg, spec=None, first_best=True: "first-best too narrow: it uses 1 of 6")
    with pytest.raises(ConfigError, match="no draw of 3 met the guarantees .first-best too narrow: 3 draws"):
        C.generate(0, C.CatalogueSpec(attempts=3))
