"""Scale-out: the same training on one device, on 4 (virtual CPU) devices of one process,
and on two processes with 2 devices each (jax.distributed over gloo), gives the same
result.

The economy is split over devices by whole markets and is deterministic under any
split (counter-based per-agent randomness, partitionable threefry), so the environment
state after training is bit-identical; parameters agree to float tolerance (gradients
are summed over devices in another order): 2e-5 absolute after two updates, on weights
of order 0.1-1 (observed: about 2e-6).
"""

from __future__ import annotations

import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import economy
from selfplay.config import load_run_config
from selfplay.train import Trainer, mesh_size
from tests.conftest import CONFIGS, ROOT, subprocess_env
from tests.test_train import OVERRIDES

UPDATES = 2
PARAM_ATOL = 2e-5


def test_mesh_size_from_config():
    cfg = load_run_config(CONFIGS / "tiny.yaml")  # 4 markets, mesh.agents: auto
    assert [mesh_size(cfg, n) for n in (1, 2, 3, 4, 8)] == [1, 2, 2, 4, 4]
    six = load_run_config(CONFIGS / "tiny.yaml", ["economy.num_agents=384", "economy.num_markets=6"])
    assert mesh_size(six, 4) == 3
    two = load_run_config(CONFIGS / "tiny.yaml", ["mesh.agents=2"])
    assert mesh_size(two, 4) == 2
    with pytest.raises(ValueError, match="mesh.agents=2: only 1 devices"):
        mesh_size(two, 1)
    with pytest.raises(economy.ConfigError, match="mesh.agents=3 must divide economy.num_markets=4"):
        load_run_config(CONFIGS / "tiny.yaml", ["mesh.agents=3"])
    with pytest.raises(economy.ConfigError, match="mesh.agents"):
        load_run_config(CONFIGS / "tiny.yaml", ["mesh.agents=0"])


@pytest.fixture(scope="module")
def reference():
    """Two updates on one device (the compiled update is shared with tests/test_train.py
    through the persistent compilation cache)."""
    cfg = load_run_config(CONFIGS / "tiny.yaml", OVERRIDES + [f"train.updates={UPDATES}", "train.log_every=1"])
    trainer = Trainer(cfg)
    ts0 = trainer.init(jax.random.key(cfg.train.seed))
    money0 = economy.ledger(ts0.env_state)["money"]
    ts = ts0
    for _ in range(UPDATES):
        ts, _ = trainer.update(ts)
    return cfg, trainer, jax.device_get(ts), money0


def _restore(trainer, run_dir):
    from selfplay.run import Checkpoints

    ckpt = Checkpoints(run_dir / "checkpoints", keep=3)
    try:
        return jax.device_get(ckpt.restore(trainer.init(jax.random.key(0))))
    finally:
        ckpt.close()


def _assert_same_training(got, ref, money0):
    assert int(got.update) == int(ref.update) == UPDATES
    for x, y in zip(jax.tree.leaves(got.env_state), jax.tree.leaves(ref.env_state)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Observations are floats derived from the state (fused differently per split): 1 ulp.
    np.testing.assert_allclose(got.obs, ref.obs, rtol=1e-6, atol=1e-7)
    assert economy.ledger(got.env_state)["money"] == money0  # money' = money, exactly, on any split
    for x, y in zip(jax.tree.leaves(got.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=PARAM_ATOL)
    for x, y in zip(jax.tree.leaves(got.hyper), jax.tree.leaves(ref.hyper)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6)


def _train_args(run_dir, *extra, overrides=()):
    return [sys.executable, "-m", "selfplay.cli", "train", str(CONFIGS / "tiny.yaml"), *OVERRIDES,
            f"train.updates={UPDATES}", "train.log_every=1", *overrides, "--run-dir", str(run_dir), "--no-progress",
            *extra]


@pytest.mark.slow
def test_four_devices_match_one(reference, tmp_path):
    """``agora train`` on 4 virtual CPU devices (mesh.agents=4: one market each) ends
    where the single-device run ends."""
    cfg, trainer, ref, money0 = reference
    run_dir = tmp_path / "run"
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run(_train_args(run_dir, overrides=["mesh.agents=4"]), env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_same_training(_restore(trainer, run_dir), ref, money0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(reference, tmp_path):
    """Two local processes (jax.distributed, gloo collectives), 2 virtual devices each,
    train one population on a 4-device mesh; they write one set of logs (process 0) and
    one checkpoint together, which restores on one device to the single-process result."""
    cfg, trainer, ref, money0 = reference
    run_dir = tmp_path / "run"
    port = _free_port()
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [
        subprocess.Popen(
            _train_args(run_dir, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)),
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == UPDATES  # written by process 0 only
    _assert_same_training(_restore(trainer, run_dir), ref, money0)


def test_distributed_arguments_are_checked(capsys):
    from selfplay.cli import EXIT_USAGE, main

    rc = main(["train", str(CONFIGS / "tiny.yaml"), "--coordinator", "127.0.0.1:1234", "--num-processes", "2"])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE and "missing --process-id" in err, err
    rc = main(["train", str(CONFIGS / "tiny.yaml"), "--coordinator", "127.0.0.1:1234", "--num-processes", "2",
               "--process-id", "2"])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE and "--process-id=2" in err, err


def test_128_members_train_and_evaluate(tmp_path, monkeypatch):
    """configs/members128.yaml (the seed's ~100 ensembles) scaled down in agents to 8 per
    member: two updates with PBT at each, then the held-out evaluation. Member-indexed
    bookkeeping must hold all 128 (a member id in a narrow integer, or a table sized by a
    smaller constant, breaks here first): every logged per-member metric has 128 entries,
    PBT copies 32 slots per round (a quarter) between valid, distinct members, and the
    evaluation's population metrics lie within their bounds for 128 members."""
    from analysis.files import read_jsonl
    from selfplay.evaluate import EvalSettings, evaluate_run
    from selfplay.run import train_run

    P = 128
    cfg = load_run_config(CONFIGS / "members128.yaml", [
        "economy.num_agents=1024", "economy.num_markets=1", "train.updates=2", "train.rollout_steps=2",
        "train.minibatches=1", "train.epochs=1", "train.pbt.interval=1", "train.analysis.every=2",
        "train.analysis.probe_states=64", "train.checkpoint_every=1"])
    assert cfg.train.members == P
    train_run(cfg, tmp_path, resume=False, progress=False)
    metrics = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert [m["update"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("fitness", "reward", "approx_kl", "founder", "pbt_source"):
            assert len(m[key]) == P and np.all(np.isfinite(m[key])), key
        assert sorted(set(m["founder"])) == sorted(set(m["founder"]) & set(range(P)))
    events = read_jsonl(tmp_path / "lineage.jsonl")[0]
    k = int(P * cfg.train.pbt.fraction)
    assert len(events) <= 2 * k and len({e["child"] for e in events if e["update"] == 1}) == sum(
        e["update"] == 1 for e in events)
    assert all(0 <= e["child"] < P and 0 <= e["parent"] < P and e["child"] != e["parent"] for e in events)
    # the diversity probe: 64 states, not 1024 (its 128 x 128 KL and JS matrices are the slow part with the
    # tests' unoptimised compile; the bookkeeping checked here does not depend on the probe's size)
    monkeypatch.setattr("selfplay.evaluate.PROBE_STATES", 64)
    r = evaluate_run(tmp_path, EvalSettings(worlds=1, steps=3, burn_in=1), baselines=False, frontier=None)
    t = r["policies"]["trained"]
    assert np.isfinite(t["utility"]) and t["utility"] > 0
    assert 1 / P <= t["largest_lineage_share"] <= 1 and 1 <= t["effective_policies"] <= P
    assert np.isclose(sum(t["niche_shares"]), 1) and 0 <= t["member_niche_mi_bits"] <= np.log2(len(t["niche_shares"]))
