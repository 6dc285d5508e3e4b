"""The metric registry (analysis.metrics): one declaration per metric, from which eval.json,
results.json, TensorBoard, the reports, ``agora eval --help`` and docs/metrics.md take their
names; intervals clipped to a metric's range."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from analysis import metrics as M
from selfplay.cli import main
from selfplay.study import mean_ci, summarise

ROOT = Path(__file__).resolve().parents[1]


def test_docs_metrics_page_is_written_from_the_registry():
    assert (ROOT / "docs" / "metrics.md").read_text() == M.glossary_md()


def test_every_metric_is_declared_with_a_unit_a_scope_and_records():
    for name, m in M.REGISTRY.items():
        assert m.name == name and m.definition and m.unit and m.scope in ("economy", "members"), name
        assert m.where and set(m.where) <= {"eval", "analysis", "train"}, name
        if m.unit == "share":
            assert M.bounds(name, 7) == (0.0, 1.0), name
    # eval.json's metrics, in order; the member metrics are those about members
    from selfplay.evaluate import MEMBER_METRICS, METRICS

    assert METRICS == M.EVAL and METRICS[0] == "utility" and "efficiency" in METRICS
    assert set(MEMBER_METRICS) == {k for k in METRICS if M.REGISTRY[k].scope == "members"}
    assert not set(M.ALIASES) & set(M.REGISTRY)  # an old name never shadows a metric


def test_register_refuses_a_taken_name_unless_replacing():
    m = M.REGISTRY["gini"]
    with pytest.raises(ValueError, match="'gini' is already registered"):
        M.register_metric(M.Metric("gini", "x", "y", "economy", ("eval",)))
    try:
        M.register_metric(M.Metric("gini", "replaced", "y", "economy", ("eval",)), replace=True)
        assert M.REGISTRY["gini"].definition == "replaced"
    finally:
        M.register_metric(m, replace=True)
    assert M.REGISTRY["gini"] is m


def test_bounds_resolve_the_number_of_niches():
    assert M.bounds("active_niches", 7) == (0.0, 7.0)
    assert M.bounds("member_niche_mi_bits", 8) == (0.0, 3.0)
    assert M.bounds("kl_mean") == (0.0, math.inf) and M.bounds("reward") == (-math.inf, math.inf)
    assert M.bounds("active_niches") == (0.0, math.inf)  # J unknown: no upper bound


def test_intervals_stay_within_the_range():
    """Two seeds of a share at 0 and 1: Student's t gives mean 0.5 +- 6.35, clipped to [0, 1];
    an unbounded metric keeps its full interval; the mean is never clipped."""
    mean, ci = mean_ci([0.0, 1.0], *M.bounds("gini"))
    assert mean == 0.5 and ci == [0.0, 1.0]
    half = 12.7062 * np.std([0.0, 1.0], ddof=1) / math.sqrt(2)
    _, ci = mean_ci([0.0, 1.0], *M.bounds("kl_mean"))
    assert ci[0] == 0.0 and ci[1] == pytest.approx(0.5 + half, rel=1e-4)
    _, ci = mean_ci([-1.0, 1.0], *M.bounds("reward"))
    assert ci == pytest.approx([-12.7062, 12.7062], rel=1e-4)  # sd sqrt(2) over sqrt(2) seeds
    seeds = {"0": {"active_niches": 1.0, "niche_shares": [0.0, 1.0]}, "1": {"active_niches": 7.0, "niche_shares": [1.0, 0.0]}}
    mean, ci = summarise(seeds, niches=7)
    assert ci["active_niches"] == [0.0, 7.0] and mean["active_niches"] == 4.0
    assert ci["niche_shares"] == [[0.0, 1.0], [0.0, 1.0]]


def test_eval_help_has_the_glossary(capsys):
    try:
        rc = main(["eval", "--help"])
    except SystemExit as e:
        rc = e.code
    assert rc == 0
    out = capsys.readouterr().out
    for name in M.EVAL:
        assert f"{name} [{M.REGISTRY[name].unit}]" in out, name
