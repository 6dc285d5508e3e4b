"""The run directory's guards in one process: the lock (one writer per run directory), the
non-finite guard, Ctrl-C and resuming, on the tiny preset with tests/test_train.py's
settings (its compiled update). tests/test_reliability.py and tests/test_train.py check the
same through the command line, in subprocesses that are killed and stopped; these are the
fast tests the mutation tool runs against ``selfplay/run.py`` (tools/mutants.py)."""

from __future__ import annotations

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfplay.checkpoint import Checkpoints
from selfplay.config import load_run_config
from selfplay.run import (
    LOCK_FILE,
    NonFiniteError,
    RunDirLocked,
    inject_nan,
    nonfinite_report,
    run_dir_lock,
    train_run,
)
from tests.conftest import CONFIGS
from tests.test_train import OVERRIDES


def _cfg(*extra: str):
    return load_run_config(CONFIGS / "tiny.yaml", OVERRIDES + ["train.keep_checkpoints=10", *extra])


def _steps(run_dir) -> list[int]:
    ckpt = Checkpoints(run_dir / "checkpoints", 10)
    try:
        return sorted(ckpt.mgr.all_steps())
    finally:
        ckpt.close()


def _updates(run_dir) -> list[int]:
    return [json.loads(x)["update"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- the lock -------------------------------------------------------------------------------------
def test_the_lock_names_its_holder_and_refuses_a_second_writer(tmp_path):
    run_dir = tmp_path / "new" / "run"  # made by the lock
    with run_dir_lock(run_dir):
        lock = run_dir / LOCK_FILE
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunDirLocked, match=rf"{run_dir} is in use: process {os.getpid()} holds its lock"):
            with run_dir_lock(run_dir):
                pass
        assert lock.read_text() == f"{os.getpid()}\n"  # the refused writer changed nothing
    with run_dir_lock(run_dir):  # released on leaving the block
        pass
    with pytest.raises(ValueError, match="inside"):
        with run_dir_lock(run_dir):
            raise ValueError("inside")
    with run_dir_lock(run_dir):  # and when the block raises
        pass


def test_a_stale_lock_file_is_taken_over_and_an_empty_one_names_no_holder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text("999999999999\nleft by a killed trainer\n")  # nobody holds it
    with run_dir_lock(run_dir):
        assert (run_dir / LOCK_FILE).read_text() == f"{os.getpid()}\n"  # rewritten whole, not overwritten in part
    (run_dir / LOCK_FILE).write_text("")
    import fcntl

    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another writer that has not named itself yet
        with pytest.raises(RunDirLocked, match="process unknown holds its lock"):
            with run_dir_lock(run_dir):
                pass
    finally:
        os.close(fd)
    assert (run_dir / LOCK_FILE).read_text() == ""


# ---- the non-finite guard ---------------------------------------------------------------------------
def test_nonfinite_report_names_the_members_of_each_quantity():
    m = {"nonfinite": {"loss": np.asarray([False, True, False, True]), "grad_norm": np.zeros(4, bool),
                       "fitness": np.asarray([True, False, False, False])}}
    assert nonfinite_report(m) == {"loss": [1, 3], "fitness": [0]}
    assert nonfinite_report({"nonfinite": {"loss": np.zeros(4, bool)}}) == {}


def test_inject_nan_poisons_one_members_utility_weight_only():
    from selfplay.train import Trainer

    trainer = Trainer(_cfg())
    ts = trainer.init(jax.random.key(0))
    bad = inject_nan(trainer, ts, 2)
    before, after = np.asarray(ts.reward_weights["utility"]), np.asarray(bad.reward_weights["utility"])
    assert np.isnan(after[2]) and np.array_equal(np.delete(after, 2), np.delete(before, 2))
    for c in ts.reward_weights:
        if c != "utility":
            assert np.array_equal(np.asarray(bad.reward_weights[c]), np.asarray(ts.reward_weights[c]))


def test_a_nan_stops_the_run_before_it_is_checkpointed(tmp_path):
    """A NaN in member 1 at update 3 (a checkpoint update): the run stops with
    NonFiniteError naming the update, the member and the newest checkpoint (update 2), which
    stays the newest; the update's metrics line is written and marked."""
    run_dir = tmp_path / "run"
    cfg = _cfg("train.updates=4", "train.checkpoint_every=1", "train.log_every=2", "train.fault.nan_update=3",
               "train.fault.nan_member=1")
    with pytest.raises(NonFiniteError) as err:
        train_run(cfg, run_dir, progress=False)
    msg = str(err.value)
    assert msg.startswith("update 3: non-finite ") and "of member 1" in msg and "members 1" not in msg
    assert "the newest checkpoint stays update 2" in msg and str(run_dir) in msg
    assert _steps(run_dir) == [1, 2]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["update"] for x in lines] == [2, 3]  # log_every=2, and the stopped update whatever log_every says
    assert lines[-1]["stopped"] == "non-finite" and lines[-1]["nonfinite"]["loss"] == [1]
    assert "nonfinite" not in lines[0]
    with run_dir_lock(run_dir):  # the lock was let go
        pass
    first = _cfg("train.updates=2", "train.fault.nan_update=1", "train.fault.nan_member=0")
    with pytest.raises(NonFiniteError, match=r"^update 1: .*of member 0.*there is none yet"):
        train_run(first, tmp_path / "first", progress=False)
    assert _steps(tmp_path / "first") == []


# ---- training, resuming, Ctrl-C ----------------------------------------------------------------------
def test_train_checkpoints_resumes_and_stops_after(tmp_path, capsys):
    run_dir = tmp_path / "run"
    seen = []

    def on_update(u, m):
        seen.append((u, "nonfinite" in m))
        with pytest.raises(RunDirLocked):  # inside a run, its directory is locked
            with run_dir_lock(run_dir):
                pass

    ts = train_run(_cfg("train.updates=3", "train.checkpoint_every=2"), run_dir, progress=False, on_update=on_update)
    assert int(ts.update) == 3 and seen == [(1, False), (2, False), (3, False)]
    assert _steps(run_dir) == [2, 3]  # every checkpoint_every updates, and the last
    more = _cfg("train.updates=6", "train.checkpoint_every=2")
    ts = train_run(more, run_dir, progress=False, stop_after=1)
    assert int(ts.update) == 4 and f"resumed {run_dir} at update 3" in capsys.readouterr().out
    assert _steps(run_dir) == [2, 3, 4]  # the call's last update is checkpointed
    ts = train_run(more, run_dir, progress=False)
    assert int(ts.update) == 6 and _steps(run_dir) == [2, 3, 4, 6]
    assert _updates(run_dir) == [3, 4, 5, 6]  # each call's last update, and every log_every (5)
    capsys.readouterr()
    again = train_run(more, run_dir, resume=False, progress=False, stop_after=1)  # --no-resume: from update 0
    out = capsys.readouterr().out
    assert int(again.update) == 1 and "resumed" not in out and f"now in {run_dir / 'earlier' / '1'}" in out
    # the earlier run is set aside whole, not mixed with the new one nor lost
    assert _steps(run_dir) == [1] and _updates(run_dir) == [1]
    assert _steps(run_dir / "earlier" / "1") == [2, 3, 4, 6] and _updates(run_dir / "earlier" / "1") == [3, 4, 5, 6]
    assert (run_dir / "earlier" / "1" / "config.yaml").is_file() and (run_dir / "earlier" / "1" / "tb").is_dir()
    train_run(more, run_dir, resume=False, progress=False, stop_after=1)
    assert _steps(run_dir / "earlier" / "2") == [1] and _steps(run_dir / "earlier" / "1") == [2, 3, 4, 6]


def test_ctrl_c_finishes_the_update_writes_a_checkpoint_and_restores_the_handler(tmp_path, capsys):
    run_dir = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)

    def interrupt(u, m):
        if u == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train_run(_cfg("train.updates=6", "train.checkpoint_every=5"), run_dir, progress=False, on_update=interrupt)
    assert f"interrupted: checkpoint written at update 2 in {run_dir / 'checkpoints'}" in capsys.readouterr().out
    assert _steps(run_dir) == [2]
    assert signal.getsignal(signal.SIGINT) is before
    # interrupted right after a checkpoint update: nothing written twice
    with pytest.raises(KeyboardInterrupt):
        train_run(_cfg("train.updates=6", "train.checkpoint_every=5"), run_dir, progress=False,
                  on_update=lambda u, m: os.kill(os.getpid(), signal.SIGINT) if u == 5 else None)
    assert _steps(run_dir) == [2, 5]
