"""``agora bench``: the benchmark suite (benchmarks/suite.py) writes one JSON file and a
Markdown report, measures the machine's limits, and reports failing subprocesses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import suite
from selfplay.cli import EXIT_FAIL, main
from tests.conftest import ROOT, subprocess_env


def _agora() -> list[str]:
    script = shutil.which("agora", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "selfplay.cli"]


@pytest.mark.slow
def test_bench_quick_env_writes_json_and_markdown(tmp_path):
    """A quick env-only run (2^10 agents on 1 and 2 virtual devices): limits, one row per
    size x devices with fractions of the limits, the scaling and compile tables."""
    out, md = tmp_path / "suite.json", tmp_path / "suite.md"
    p = subprocess.run(
        _agora() + ["bench", "--quick", "--kinds", "env", "--sizes", "10", "--out", str(out), "--md", str(md)],
        capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads(out.read_text())
    assert {"benchmark", "created", "machine", "config", "limits", "rows", "scaling", "compile_vs_n", "errors",
            "complete"} <= set(data)
    assert data["complete"] and data["errors"] == []
    assert data["config"]["devices"] == [1, 2] and data["config"]["sizes"] == [10]
    lim = data["limits"]
    assert lim["memory_bandwidth_bytes_per_s"] > 0 and lim["matmul_flops_per_s"] > 0
    # the device it ran on, named in the JSON, the printout and the report; bf16 only on an accelerator
    assert lim["device"].startswith("cpu") and lim["matmul_bf16_flops_per_s"] is None
    assert f"limits on {lim['device']}" in p.stdout and f"one device, {lim['device']}" in md.read_text()
    rows = data["rows"]
    assert sorted((r["kind"], r["log2n"], r["devices"]) for r in rows) == [("env", 10, 1), ("env", 10, 2)]
    for r in rows:
        assert r["agents"] == 1024 and r["markets"] == 2 and r["steps"] == 4
        assert r["agent_steps_per_s"] > 0 and r["compile_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["xla_flops"] > 0 and r["xla_bytes_accessed"] > 0
        for key in ("fraction_of_bandwidth", "fraction_of_matmul"):
            assert 0 < r[key] < 1.5, (key, r)
    assert [(s["kind"], s["log2n"], s["devices"]) for s in data["scaling"]] == [("env", 10, 2)]
    assert data["scaling"][0]["throughput_ratio"] > 0
    assert [(c["kind"], c["devices"]) for c in data["compile_vs_n"]] == [("env", 1), ("env", 2)]
    text = md.read_text()
    for heading in ("## Environment step", "## Scaling 1 -> D devices", "## Compile time vs N"):
        assert heading in text and heading in p.stdout, heading
    assert "| 2^10 | 1 |" in text and "| 2^10 | 2 |" in text and "| env | 2^10 |" in text


def test_bench_failing_subprocess_is_reported(tmp_path, capsys):
    """Every subprocess times out: exit status 1, the errors with the reason in both files."""
    out, md = tmp_path / "suite.json", tmp_path / "suite.md"
    rc = main(["bench", "--quick", "--kinds", "env", "--sizes", "10", "--devices", "1", "--timeout", "0.05",
               "--out", str(out), "--md", str(md)])
    err = capsys.readouterr().err
    assert rc == 1 and "FAILED" in err and "timed out" in err, err
    data = json.loads(out.read_text())
    assert not data["complete"] and data["rows"] == [] and data["limits"] is None
    assert [(e["kind"], e["log2n"], e["devices"]) for e in data["errors"]] == [("limits", None, 1), ("env", 10, 1)]
    assert "## Errors" in md.read_text() and "timed out" in md.read_text()


def test_bench_help_and_bad_usage(capsys):
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "agora bench" in out and "--sizes" in out and "--quick" in out and "--kinds" in out
    assert main(["bench", "--sizes", "10", "--devices", "3"]) == 2  # 3 devices do not divide the markets
    assert "--devices" in capsys.readouterr().err


def test_bench_without_the_benchmarks_package(monkeypatch, capsys):
    """An installation without the benchmarks package: a clear message and EXIT_FAIL."""
    monkeypatch.setitem(sys.modules, "benchmarks", None)  # import benchmarks then fails
    assert main(["bench", "--quick"]) == EXIT_FAIL
    assert "benchmarks package is not installed" in capsys.readouterr().err


def test_report_tables_from_rows():
    """Scaling ratios, compile time against N and the Markdown tables from synthetic rows."""
    limits = {"memory_bandwidth_bytes_per_s": 1e10, "matmul_flops_per_s": 1e11, "matmul_n": 4096,
              "bandwidth_array_mb": 256, "bandwidth_by_kernel_bytes_per_s": {"scale_add": 1e10, "sum": 8e9}}
    rows = []
    for kind in suite.KINDS:
        for s in (12, 14):
            for d in (1, 2, 4):
                row = {"kind": kind, "log2n": s, "agents": 2**s, "devices": d, "members": None if kind == "env" else 16,
                       "agent_steps_per_s": 1e6 / d**0.1, "compile_s": 3.0 + s / 100, "peak_rss_mb": 500.0,
                       "seconds": 0.1, "xla_flops": 1e9, "xla_bytes_accessed": 2e8}
                if kind != "env":
                    row["layer_flops_per_agent_step"] = 1e5
                if kind == "update":
                    row.update(reference_agent_steps_per_s=4e5, speedup_vs_reference=2.5)
                suite._fractions(row, limits)
                rows.append(row)
    assert rows[0]["fraction_of_bandwidth"] == pytest.approx(0.2) and rows[0]["fraction_of_matmul"] == pytest.approx(0.1)
    sc = suite.scaling(rows)
    assert len(sc) == 3 * 2 * 2 and all(x["devices"] in (2, 4) for x in sc)
    assert sc[0]["throughput_ratio"] == pytest.approx(2**-0.1)
    cv = suite.compile_vs_n(rows)
    assert len(cv) == 9 and cv[0]["log2n"] == [12, 14] and cv[0]["largest_over_smallest"] == pytest.approx(3.14 / 3.12)
    result = {"created": "now", "machine": {"platform": "p", "processor": "x", "cpus": 2, "python": "3", "jax": "0",
                                            "jaxlib": "0"},
              "config": {"sizes": [12, 14], "devices": [1, 2, 4], "members": 16, "steps": 16, "repeats": 2},
              "limits": limits, "rows": rows, "scaling": sc, "compile_vs_n": cv, "errors": []}
    text = suite.markdown(result)
    for heading in ("## Environment step", "## Acting", "## Update", "## Scaling 1 -> D devices", "## Compile time vs N"):
        assert text.count(heading) == 1, heading
    assert "| update | 2^14 | 0.93 | 0.87 |" in text
    assert "layer FLOP/s (of matmul)" in text and "10.0 GB/s" in text
    update_table = text.split("## Update")[1].split("##")[0]
    assert "| reference agent-steps/s | update / reference |" in update_table
    assert update_table.count("| 400.00 k | 2.50x |") == 6  # every update row, beside its own reference


def test_paired_timing_runs_both_sides_in_turn_and_skips_the_warm_up():
    """train_step.time_paired: each side's state advances once per call (a warm-up pair,
    then ``repeats`` timed pairs, A before B in each), and the ratio is taken pair by pair."""
    import jax
    import jax.numpy as jnp

    from benchmarks import train_step

    calls = []
    step = lambda tag: jax.jit(lambda s: (s + 1, jax.debug.callback(lambda: calls.append(tag), ordered=True) or s))  # noqa: E731
    _, ta, tb, state = train_step.time_paired(step("a"), jnp.zeros(()), step("b"), jnp.zeros(()) + 10, 3)
    jax.effects_barrier()
    assert len(ta) == len(tb) == 3 and int(state) == 4  # A's state after 1 + 3 calls
    assert calls == ["a", "b"] * 4
    r = train_step.pair_ratios([1.0, 2.0, 4.0], [3.0, 5.0, 4.0])
    assert r == {"median": 2.5, "min": 1.0, "max": 3.0, "pairs": 3}
