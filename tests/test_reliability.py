"""Reliability of ``agora train`` under faults, in subprocesses on the tiny preset: one
writer per run directory (an OS lock), damaged checkpoints refused for older ones (or exit
2 when none is readable), and the non-finite guard (exit 3, the last good checkpoint
stays the newest)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from selfplay.checkpoint import DIGESTS, Checkpoints
from tests.conftest import CONFIGS, ROOT, subprocess_env
from tests.test_train import OVERRIDES, cfg, trainer  # noqa: F401 (the module fixtures: the template state)


def _sealed(ckpt_dir):
    return sorted(int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit() and (p / DIGESTS).is_file())


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _train_args(run_dir, *extra):
    return [sys.executable, "-m", "selfplay.cli", "train", str(CONFIGS / "tiny.yaml"), *OVERRIDES,
            "train.checkpoint_every=2", "train.keep_checkpoints=5", *extra, "--run-dir", str(run_dir), "--no-progress"]


def _flip_byte(path, at=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_one_writer_per_run_directory_and_damaged_checkpoints(tmp_path):
    """A second trainer on a locked run directory exits 2 naming the directory and the
    holder's process id and leaves every file byte-identical; once the holder is killed
    with SIGKILL a new trainer takes the lock. A damaged small data chunk of the newest
    checkpoint (the case orbax loaded silently) is refused with a warning naming the step
    and the run resumes from the older one; with every checkpoint damaged, exit 2 listing
    each step and nothing deleted."""
    run_dir = tmp_path / "run"
    env = subprocess_env()
    holder = subprocess.Popen(_train_args(run_dir, "train.updates=100000"), env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and len(_sealed(run_dir / "checkpoints")) < 2 and holder.poll() is None:
            time.sleep(0.05)
        os.kill(holder.pid, signal.SIGSTOP)  # holds the lock, writes nothing meanwhile
        assert len(_sealed(run_dir / "checkpoints")) >= 2, holder.communicate()[0] if holder.poll() is not None else ""
        before = _tree_bytes(run_dir)
        second = subprocess.run(_train_args(run_dir, "train.updates=100000"), env=env, cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        assert second.returncode == 2, second.stdout + second.stderr
        assert str(run_dir) in second.stderr and f"process {holder.pid}" in second.stderr, second.stderr
        assert _tree_bytes(run_dir) == before
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate()

    steps = _sealed(run_dir / "checkpoints")
    newest, older = steps[-1], steps[-2]
    chunks = sorted((run_dir / "checkpoints" / str(newest) / "arrays" / "ocdbt.process_0" / "d").iterdir(),
                    key=lambda p: p.stat().st_size)
    _flip_byte(chunks[0])  # the smallest data chunk
    resumed = subprocess.run(_train_args(run_dir, f"train.updates={newest + 2}"), env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out
    assert f"checkpoint step {newest}" in resumed.stderr and "damaged" in resumed.stderr, out
    assert f"resumed {run_dir} at update {older}" in resumed.stdout, out

    for s in _sealed(run_dir / "checkpoints"):
        _flip_byte(run_dir / "checkpoints" / str(s) / "meta" / "metadata", at=0)
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    failed = subprocess.run(_train_args(run_dir, f"train.updates={newest + 4}"), env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert "no readable checkpoint" in failed.stderr
    for s in _sealed(run_dir / "checkpoints"):
        assert f"step {s} (" in failed.stderr, failed.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == kept  # nothing deleted


@pytest.mark.slow
@pytest.mark.parametrize("nan_update, lines_at, sealed", [(5, [3, 5], [2, 4]), (4, [3, 4], [2])])
def test_injected_nan_stops_the_run_with_exit_3(trainer, tmp_path, nan_update, lines_at, sealed):
    """A NaN injected into member 2's reward at update U stops the run with exit 3 naming
    member 2 (alone) and update U; metrics.jsonl ends with update U marked; the newest
    checkpoint is the last one before U and finite, also when U is itself a checkpoint
    update (checkpoints every 2: U = 4 writes none)."""
    run_dir = tmp_path / "run"
    proc = subprocess.run(_train_args(run_dir, "train.updates=8", "train.log_every=3",
                                      f"train.fault.nan_update={nan_update}", "train.fault.nan_member=2"),
                          env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"update {nan_update}: non-finite" in proc.stderr and "member 2" in proc.stderr, proc.stderr
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in lines] == lines_at and lines[-1]["stopped"] == "non-finite"
    assert set(lines[-1]["nonfinite"]) >= {"loss", "parameters"}
    assert all(v == [2] for v in lines[-1]["nonfinite"].values()), lines[-1]["nonfinite"]
    assert _sealed(run_dir / "checkpoints") == sealed
    ckpt = Checkpoints(run_dir / "checkpoints", keep=5)
    got = ckpt.restore(trainer.init(jax.random.key(0)))
    ckpt.close()
    assert int(got.update) == sealed[-1]
    for x in jax.tree.leaves(got):
        if np.issubdtype(np.asarray(x).dtype, np.floating):
            assert np.isfinite(np.asarray(x)).all()
