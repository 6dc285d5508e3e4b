"""The RL-variant registry (``selfplay/variants.py``) on its own: range checks, the two
drawing laws, PBT perturbation by each law, declaration rules. Pure functions on a few
members, no trainer (the fast tests of ``make mutants``)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfplay import variants
from selfplay.variants import Variant


@pytest.mark.parametrize("lo,hi,law,bounds,problem", [
    (0.1, 0.2, "uniform", (0.0, 1.0), None),
    (0.2, 0.2, "uniform", (0.0, 1.0), None),              # a point range is valid
    (0.0, 1.0, "uniform", (0.0, 1.0), None),              # the bounds are closed
    (0.3, 0.2, "uniform", (0.0, 1.0), "lo > hi"),
    (-0.1, 0.5, "uniform", (0.0, 1.0), "must lie in"),
    (0.5, 1.1, "uniform", (0.0, 1.0), "must lie in"),
    (math.nan, 0.5, "uniform", (0.0, 1.0), "finite"),
    (0.1, math.inf, "uniform", (0.0, math.inf), "finite"),
    (0.0, 0.5, "log_uniform", (0.0, 1.0), "positive"),
    (1e-9, 0.5, "log_uniform", (0.0, 1.0), None),
])
def test_check_range(lo, hi, law, bounds, problem):
    """(Catches: an open bound, lo = hi refused, a log-uniform range reaching 0 accepted.)"""
    got = Variant("x", (0.1, 0.2), law=law, bounds=bounds).check_range(lo, hi)
    assert (got is None) if problem is None else (problem in got)


def test_draws_follow_their_law_and_stream():
    """Uniform draws have mean (lo + hi) / 2; log-uniform ones have mean log at the mean of
    the log bounds and stay in range; each name draws from its own stream, so adding a
    variant leaves the others' draws unchanged. (Catches: the law ignored, the log taken
    of one bound only, every variant drawn from one stream.)"""
    key = jax.random.key(0)
    u = np.asarray(variants.draw(key, "uniform", 2.0, 4.0, (20000,)))
    assert 2.0 <= u.min() and u.max() <= 4.0 and abs(u.mean() - 3.0) < 0.03
    g = np.asarray(variants.draw(key, "log_uniform", 1e-4, 1e-2, (20000,)))
    assert 1e-4 <= g.min() and g.max() <= 1e-2
    assert abs(np.log(g).mean() - math.log(1e-3)) < 0.05  # log-uniform: the log is uniform
    assert np.median(g) < 2e-3  # a uniform draw would have its median near 5e-3
    one = variants.sample(key, {"gamma": (0.9, 0.97)}, 5)
    two = variants.sample(key, {"gamma": (0.9, 0.97), "clip_eps": (0.15, 0.3)}, 5)
    np.testing.assert_array_equal(one["gamma"], two["gamma"])
    assert two["gamma"].dtype == jnp.float32 and two["gamma"].shape == (5,)
    assert not np.allclose(two["clip_eps"], two["gamma"])


def test_perturb_by_each_law_only_where_masked():
    """scale: x f; complement: 1 - (1 - x) f; none: unchanged; f one of the two factors per
    member; members outside the mask keep their values exactly. (Catches: the complement
    law written as scale, the mask inverted, factors other than the two given.)"""
    hyper = {"learning_rate": jnp.full((64,), 1e-3), "gamma": jnp.full((64,), 0.9), "vf_coef": jnp.full((64,), 0.5)}
    mask = jnp.arange(64) % 2 == 0
    out = {k: np.asarray(v) for k, v in variants.perturb(jax.random.key(1), hyper, mask, (0.8, 1.25)).items()}
    m = np.asarray(mask)
    for f in (out["learning_rate"][m] / 1e-3, (1.0 - out["gamma"][m]) / 0.1):
        near = np.abs(f.astype(np.float64)[:, None] - np.array([0.8, 1.25])) < 1e-5
        assert near.any(1).all() and near.any(0).all()  # every factor one of the two, both drawn
    np.testing.assert_array_equal(out["vf_coef"], 0.5)
    for k, v in hyper.items():
        np.testing.assert_array_equal(out[k][~m], np.asarray(v)[~m])


def test_declaration_rules_and_names_by_target():
    """A new variant is declared once (again only with replace=True), must be an
    identifier other than ``rewards`` and have a valid default; ``names(target)`` lists the
    declared ones of that target in declaration order. (Catches: silent replacement, the
    target filter inverted.)"""
    assert variants.names("gae") == ("gamma", "gae_lambda")
    assert variants.names("optimizer")[0] == "learning_rate"
    assert set(variants.names()) >= {"learning_rate", "ent_coef", "clip_eps", "vf_coef", "gamma", "gae_lambda"}
    v = Variant("b2", (0.99, 0.999), target="optimizer", bounds=(0.0, 1.0))
    try:
        variants.register_variant(v)
        assert variants.names("optimizer")[-1] == "b2"
        with pytest.raises(ValueError, match="already declared"):
            variants.register_variant(v)
        variants.register_variant(Variant("b2", (0.9, 0.9), target="optimizer", bounds=(0.0, 1.0)), replace=True)
        assert variants.VARIANTS["b2"].default == (0.9, 0.9)
    finally:
        variants.unregister_variant("b2")
    assert "b2" not in variants.names()
    for bad in ("rewards", "not a name"):
        with pytest.raises(ValueError, match="identifier"):
            variants.register_variant(Variant(bad, (0.1, 0.2)))
    with pytest.raises(ValueError, match="default range"):
        variants.register_variant(Variant("bad_default", (0.3, 0.1)))
    assert "bad_default" not in variants.VARIANTS


def test_perturb_at_factors_that_are_not_reciprocal():
    """At factors (0.5, 3) (the default 0.8 and 1.25 are reciprocal, so x / f would pass for
    x f): each perturbed value is exactly x f or 1 - (1 - x) f for one of the two, clipped to
    the bounds (gamma 0.9 scaled by 3 in complement stays 1 - 0.3 = 0.7; learning rate 0.5
    times 3 clips to 1)."""
    hyper = {"learning_rate": jnp.full((64,), 0.5), "gamma": jnp.full((64,), 0.9)}
    out = {k: np.asarray(v, np.float64)
           for k, v in variants.perturb(jax.random.key(2), hyper, jnp.ones(64, bool), (0.5, 3.0)).items()}
    assert set(np.round(out["learning_rate"], 6)) == {0.25, 1.0}
    assert set(np.round(out["gamma"], 6)) == {0.95, 0.7}


def test_a_variant_without_bounds_accepts_any_finite_range_and_is_never_clipped():
    v = Variant("unbounded", (-2.0, 5.0))
    assert v.bounds == (-math.inf, math.inf) and v.check_range(-1e6, 1e6) is None
    try:
        variants.register_variant(v)
        out = variants.perturb(jax.random.key(0), {"unbounded": jnp.full((8,), -4.0)}, jnp.ones(8, bool), (0.5, 3.0))
        assert set(np.asarray(out["unbounded"]).tolist()) <= {-2.0, -12.0}
        with pytest.raises(dataclasses.FrozenInstanceError):  # a declaration is frozen: replace=True changes it
            variants.VARIANTS["unbounded"].bounds = (0.0, 1.0)
    finally:
        variants.unregister_variant("unbounded")


def test_the_variants_page_is_written_from_the_declarations(root):
    assert (root / "docs" / "variants.md").read_text() == variants.table_md()
