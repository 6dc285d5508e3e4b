"""The run directory's guards in one process: the lock (one writer per run directory), the
non-finite guard, Ctrl-C and resuming, on the tiny preset with tests/test_train.py's
settings (its compiled update). tests/test_reliability.py and tests/test_train.py check the
same through the command line, in subprocesses that are killed and stopped; these are the
fast tests the mutation tool runs against ``selfplay/run.py`` (tools/mutants.py)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import select
import signal
import stat
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from jax.experimental import multihost_utils

import selfplay.run as run_module
from economy import ConfigError
from selfplay.checkpoint import Checkpoints
from selfplay.config import load_run_config
from selfplay.run import (
    LOCK_FILE,
    NonFiniteError,
    RunDirLocked,
    inject_nan,
    nonfinite_report,
    prepare_run_dir,
    run_dir_lock,
    set_aside,
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


def _as_process(monkeypatch, index: int, sent_by_0: int | None = None):
    """Make this process look like process ``index`` of two (``jax.distributed``):
    ``broadcast_one_to_all`` hands every process process 0's value (``sent_by_0`` when this
    is not process 0); returns the values this process broadcast and the barriers it met."""
    sent, barriers = [], []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: index)

    def broadcast(x):
        sent.append(int(x))
        return np.asarray(x if index == 0 else sent_by_0)

    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
    monkeypatch.setattr(multihost_utils, "sync_global_devices", barriers.append)
    return sent, barriers


def _key_order(d) -> list:
    """Every key path of a nested mapping, in the mapping's own order."""
    out = []
    for k, v in d.items():
        out.append(k)
        if isinstance(v, dict):
            out += [(k, x) for x in _key_order(v)]
    return out


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


def test_the_lock_in_an_existing_directory_its_file_mode_and_a_long_foreign_holder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()  # a directory made by hand, no lock file yet
    old = os.umask(0)
    try:
        with run_dir_lock(run_dir):
            assert (run_dir / LOCK_FILE).read_text() == f"{os.getpid()}\n"
            mode = stat.S_IMODE(os.stat(run_dir / LOCK_FILE).st_mode)
    finally:
        os.umask(old)
    assert mode == 0o644  # rw-r--r--: readable by all (it names the holder), executable by none
    long = "4242 " + "x" * 100 + "\n"  # not a line a trainer writes: quoted in part, its first 64 bytes
    (run_dir / LOCK_FILE).write_text(long)
    import fcntl

    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunDirLocked) as err:
            with run_dir_lock(run_dir):
                pass
    finally:
        os.close(fd)
    assert f"process {long[:64]} holds its lock" in str(err.value)


def test_the_lock_across_processes(tmp_path, monkeypatch):
    """Two processes (simulated): process 0 takes the lock and broadcasts whether it did; the
    other follows that answer, touching no file."""
    run_dir = tmp_path / "run"
    with monkeypatch.context() as mp:  # process 0, the lock free: taken, and 1 sent
        sent, _ = _as_process(mp, 0)
        with run_dir_lock(run_dir):
            assert (run_dir / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        assert sent == [1]
    with run_dir_lock(run_dir):  # held by another writer (this process, before the simulation)
        with monkeypatch.context() as mp:
            sent, _ = _as_process(mp, 0)
            with pytest.raises(RunDirLocked, match=f"process {os.getpid()} holds its lock"):
                with run_dir_lock(run_dir):
                    pass
            assert sent == [0]
    other = tmp_path / "other"
    with monkeypatch.context() as mp:  # process 1: process 0 could not take it
        _as_process(mp, 1, sent_by_0=0)
        with pytest.raises(RunDirLocked, match=r"another process \(see process 0\) holds its lock"):
            with run_dir_lock(other):
                pass
    with monkeypatch.context() as mp:  # process 1: process 0 holds it
        sent, _ = _as_process(mp, 1, sent_by_0=1)
        with run_dir_lock(other):
            pass
        assert sent == [0]
    assert not other.exists()  # process 1 neither made the directory nor the lock file


# ---- the run directory --------------------------------------------------------------------------------
def test_set_aside_moves_an_earlier_run_but_not_a_lone_config(tmp_path):
    run_dir = tmp_path / "run"
    assert set_aside(run_dir) is None  # no directory
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text("")
    (run_dir / "config.yaml").write_text("a: 1\n")
    assert set_aside(run_dir) is None  # a snapshot alone is no run: nothing moved
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE, "config.yaml"]
    (run_dir / "config.yaml").unlink()
    (run_dir / "metrics.jsonl").write_text("{}\n")  # logs without a snapshot are a run
    assert set_aside(run_dir) == run_dir / "earlier" / "1"
    assert (run_dir / "earlier" / "1" / "metrics.jsonl").read_text() == "{}\n"
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE, "earlier"]


def test_prepare_run_dir_writes_the_snapshot_and_guards_a_resume(tmp_path, capsys):
    cfg = _cfg()
    run_dir = tmp_path / "a" / "b"  # parents made too
    prepare_run_dir(cfg, run_dir, resume=False)  # writes by default
    text = (run_dir / "config.yaml").read_text()
    want = cfg.model_dump(mode="json")
    assert yaml.safe_load(text) == want
    assert _key_order(yaml.safe_load(text)) == _key_order(want)  # in the config's order, not sorted
    assert _key_order(want) != sorted(_key_order(want), key=str)
    (run_dir / "checkpoints").mkdir()
    other = _cfg("train.seed=4")
    with pytest.raises(ConfigError, match=r"different config \(keys train\.seed\)"):
        prepare_run_dir(other, run_dir, resume=True)
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == want  # left as it was
    longer = _cfg("train.updates=99")  # more updates: a resume may grow them
    prepare_run_dir(longer, run_dir, resume=True)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["updates"] == 99
    # a fresh start's other processes (write=False): no comparison, nothing written
    prepare_run_dir(other, run_dir, resume=False, write=False)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["updates"] == 99
    # checkpoints without a snapshot (lost): nothing to compare, the snapshot written anew
    (run_dir / "config.yaml").unlink()
    prepare_run_dir(other, run_dir, resume=True)
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == other.model_dump(mode="json")
    # a fresh start over a directory holding only a snapshot of another config: overwritten
    lone = tmp_path / "lone"
    prepare_run_dir(other, lone, resume=False)
    prepare_run_dir(cfg, lone, resume=False)
    assert yaml.safe_load((lone / "config.yaml").read_text()) == want and not (lone / "earlier").exists()
    assert "starting afresh" not in capsys.readouterr().out


def test_prepare_run_dir_across_processes_waits_after_setting_aside(tmp_path, monkeypatch, capsys):
    """A fresh start in a multi-process run: process 0 sets the earlier run aside, then every
    process meets at a barrier before any opens ``checkpoints/``; a resume needs none."""
    cfg = _cfg()
    run_dir = tmp_path / "run"
    prepare_run_dir(cfg, run_dir, resume=False)
    (run_dir / "metrics.jsonl").write_text("{}\n")
    seen = []
    with monkeypatch.context() as mp:
        _, barriers = _as_process(mp, 0)
        mp.setattr(multihost_utils, "sync_global_devices",
                   lambda name: seen.append((run_dir / "earlier" / "1" / "metrics.jsonl").exists()))
        prepare_run_dir(cfg, run_dir, resume=False)
    assert seen == [True]  # after the earlier run was set aside
    assert f"now in {run_dir / 'earlier' / '1'}" in capsys.readouterr().out
    with monkeypatch.context() as mp:  # process 1 of the same start
        _, barriers = _as_process(mp, 1, sent_by_0=1)
        prepare_run_dir(cfg, run_dir, resume=False, write=False)
    assert len(barriers) == 1


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


def test_a_nan_stops_the_run_before_it_is_checkpointed(tmp_path, monkeypatch):
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
    # two members at once (the fault of member 0 and, by hand, member 2): named as members
    monkeypatch.setattr(run_module, "inject_nan", lambda tr, s, member: inject_nan(tr, inject_nan(tr, s, member), 2))
    first = _cfg("train.updates=2", "train.fault.nan_update=1", "train.fault.nan_member=0")
    with pytest.raises(NonFiniteError, match=r"^update 1: non-finite (.*; )?loss of members 0, 2; .*there is none yet"):
        train_run(first, tmp_path / "first", progress=False)
    assert _steps(tmp_path / "first") == []
    lines = [json.loads(x) for x in (tmp_path / "first" / "metrics.jsonl").read_text().splitlines()]
    assert [x["update"] for x in lines] == [1] and lines[0]["nonfinite"]["loss"] == [0, 2]


# ---- training, resuming, Ctrl-C ----------------------------------------------------------------------
def _read_terminal(master: int) -> list[str]:
    """What was written to a pseudo-terminal, one entry per redrawn line."""
    chunks = []
    while select.select([master], [], [], 0)[0]:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return [x for x in re.split(r"[\r\n]+", b"".join(chunks).decode()) if x]


def test_train_checkpoints_resumes_and_stops_after(tmp_path, capsys, monkeypatch):
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
    out = capsys.readouterr()
    assert int(ts.update) == 4 and f"resumed {run_dir} at update 3" in out.out
    assert "/6 [" not in out.err and "steps_s" not in out.err  # progress=False: no progress bar
    assert _steps(run_dir) == [2, 3, 4]  # the call's last update is checkpointed
    # By default a progress bar, here on a terminal 100 columns wide that widens to 200 before
    # the last update; each update takes 0.6 s on a fake clock.
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()

    def resize(cols):
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))

    resize(100)
    clock = iter(1000.0 + 0.6 * np.arange(100))
    try:
        with open(slave, "w", encoding="utf-8", closefd=False) as tty, monkeypatch.context() as mp:
            mp.setattr(sys, "stderr", tty)
            mp.setattr(run_module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
            ts = train_run(more, run_dir, on_update=lambda u, m: resize(200) if u == 6 else None)
        shown = _read_terminal(master)
    finally:
        os.close(master)
        os.close(slave)
    assert int(ts.update) == 6 and _steps(run_dir) == [2, 3, 4, 6]
    steps_s = f"{more.economy.num_agents * more.train.rollout_steps / 0.6:,.0f}"  # agent steps per second
    assert steps_s == "6,827"
    with_rate = [x for x in shown if "steps_s=" in x]
    assert with_rate and all(f"steps_s={steps_s}," in x for x in with_rate), shown
    counts = [int(c) for c in re.findall(r" (\d+)/6 \[", "|".join(with_rate))]
    assert sorted(set(counts)) == [5, 6] and counts == sorted(counts), shown  # one per update, to 6 of 6
    assert all(len(x) == 99 for x in shown if "5/6 [" in x), shown  # the terminal's width less one
    assert [len(x) for x in shown if "6/6 [" in x] and all(len(x) == 199 for x in shown if "6/6 [" in x), shown
    assert _updates(run_dir) == [3, 4, 5, 6]  # each call's last update, and every log_every (5)
    capsys.readouterr()
    again = train_run(more, run_dir, resume=False, progress=False, stop_after=1)  # --no-resume: from update 0
    out = capsys.readouterr().out
    assert int(again.update) == 1 and "resumed" not in out and f"now in {run_dir / 'earlier' / '1'}" in out
    # the earlier run is set aside whole, not mixed with the new one nor lost
    assert _steps(run_dir) == [1] and _updates(run_dir) == [1]
    assert _steps(run_dir / "earlier" / "1") == [2, 3, 4, 6] and _updates(run_dir / "earlier" / "1") == [3, 4, 5, 6]
    assert (run_dir / "earlier" / "1" / "config.yaml").is_file() and (run_dir / "earlier" / "1" / "tb").is_dir()
    before = signal.getsignal(signal.SIGINT)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # not the main thread: Ctrl-C is not the run's
        ts = pool.submit(train_run, more, run_dir, resume=False, progress=False, stop_after=1).result()
    assert int(ts.update) == 1 and signal.getsignal(signal.SIGINT) is before
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
