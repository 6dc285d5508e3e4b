"""The ``agora`` command line: simulate prints its table, bad configs exit 2 naming the
problem, commands of later issues say they are not available yet."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selfplay.cli import EXIT_USAGE, main
from tests.conftest import CONFIGS, ROOT, subprocess_env

TINY = str(CONFIGS / "tiny.yaml")


def test_simulate_prints_table_and_writes_json(capsys, tmp_path):
    out = tmp_path / "records.json"
    rc = main(["simulate", TINY, "simulate.steps=6", "simulate.print_every=2", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("step"))
    for col in ("p:grain", "v:bread", "%farmer", "%builder", "%rest", "utility"):
        assert col in header.split(), header
    rows = [line.split() for line in lines if line.strip() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [2, 4, 6]
    assert all(len(r) == len(header.split()) for r in rows)
    # Niche shares of each row sum to 100 %.
    cols = header.split()
    share_cols = [i for i, c in enumerate(cols) if c.startswith("%")]
    for r in rows:
        assert abs(sum(float(r[i]) for i in share_cols) - 100.0) < 0.5, r
    assert "agent-steps" in captured.out
    data = json.loads(out.read_text())
    assert len(data["records"]) == 6 and data["goods"][0] == "grain"
    assert len(data["records"][0]["niche_shares"]) == len(data["niches"]) + 1


@pytest.mark.parametrize(
    "overrides, names",
    [
        (["economy.num_agents=255"], ["num_agents=255", "num_markets=4"]),
        (["simulate.stepz=3"], ["simulate.stepz", "unknown key"]),
        (["simulate.steps=-1"], ["simulate.steps", "-1"]),
        (["economy.num_agents=many"], ["economy.num_agents", "'many'"]),
        (["economy.niches.baker.inputs={flour: 2}"], ["niches.4.inputs.flour", "'flour'"]),
        (["economy.market.tick_sise=0.1"], ["economy.market.tick_sise", "unknown key"]),
        (["simulate.agents=smart"], ["simulate.agents", "'smart'"]),
        (["no_equals_sign"], ["no_equals_sign", "key=value"]),
    ],
)
def test_bad_config_exits_2_naming_the_problem(capsys, overrides, names):
    rc = main(["simulate", TINY, *overrides])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE, err
    for name in names:
        assert name in err, (name, err)


def test_missing_config_file(capsys, tmp_path):
    rc = main(["simulate", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE and "nope.yaml" in err and "not found" in err


@pytest.mark.parametrize(
    "overrides, names",
    [
        (["train.members=3"], ["train.members=3", "num_agents=256"]),
        (["train.lerning_rate=0.1"], ["train.lerning_rate", "unknown key"]),
        (["train.variants.learning_rate=[0.01, 0.001]"], ["learning_rate", "lo > hi"]),
        (["train.pbt.fitness=best"], ["train.pbt.fitness", "'best'"]),
        (["economy.reward.specialisation=0.5"], ["economy.reward", "unknown key"]),
        (["train.variants.rewards.wealth=[0, 1]"], ["train.variants.rewards.wealth", "unknown reward component"]),
        (["train.variants.specialisation=[0, 1]"], ["train.variants.specialisation", "train.variants.rewards"]),
        (["train.pbt.inherit=[params]"], ["train.pbt.inherit", "params"]),
        (["train.minibatches=0"], ["train.minibatches", "0"]),
        (["train.network.hidden=[0]"], ["train.network.hidden", "width of at least 1"]),
        (["train.network.hidden=[64, 0, 32]"], ["train.network.hidden", "[64, 0, 32]"]),
        (["train.minibatches=48", "train.rollout_steps=16"], ["train.minibatches=48", "3 groups", "64 agents per player"]),
    ],
)
def test_train_bad_config_exits_2_before_compiling(capsys, tmp_path, overrides, names):
    rc = main(["train", TINY, *overrides, "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE, err
    for name in names:
        assert name in err, (name, err)
    assert not (tmp_path / "run").exists()  # nothing written for a bad config


def test_train_more_devices_than_there_are_exits_2(capsys, tmp_path):
    """``mesh.agents`` above the device count: exit 2 naming the key, nothing written."""
    import jax

    n = jax.device_count()
    want = next((d for d in (2, 4) if d > n), None)  # tiny has 4 markets: mesh.agents must divide 4
    if want is None:
        pytest.skip(f"{n} devices: no mesh.agents dividing 4 exceeds them")
    rc = main(["train", TINY, f"mesh.agents={want}", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE, err
    assert f"mesh.agents={want}" in err and "devices" in err, err
    assert not (tmp_path / "run").exists()


def test_no_command_prints_usage(capsys):
    assert main([]) == EXIT_USAGE
    assert "simulate" in capsys.readouterr().err


def test_console_script_bad_config_exit_code():
    """The installed ``agora`` script (or the module) exits 2 and names the bad key,
    without compiling anything."""
    script = shutil.which("agora", path=str(Path(sys.executable).parent))
    cmd = [script] if script else [sys.executable, "-m", "selfplay.cli"]
    p = subprocess.run(
        cmd + ["simulate", TINY, "economy.max_holding=-5"],
        capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=120,
    )
    assert p.returncode == 2, p.stdout + p.stderr
    assert "economy.max_holding" in p.stderr and "-5" in p.stderr, p.stderr
