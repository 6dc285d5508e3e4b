"""Checkpoints stored by name (selfplay.checkpoint): exact round trips, refusal of any
structural mismatch (never a silent load into the wrong fields), fallback past unreadable
steps. Small pytrees only, no training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import economy
from selfplay.checkpoint import (
    DIGESTS, SCHEMA_VERSION, CheckpointError, CheckpointMismatchError, Checkpoints, _layout, write_digests,
)


class Adam(NamedTuple):  # like optax's ScaleByAdamState
    count: jax.Array
    mu: dict
    nu: dict


@flax.struct.dataclass
class State:
    params: dict
    opt_state: tuple
    league: jax.Array  # zero-size: orbax cannot store it
    key: jax.Array
    update: jax.Array


@flax.struct.dataclass
class StateV2:  # one field inserted: an old checkpoint must not load into it
    params: dict
    opt_state: tuple
    fitness_ema: jax.Array
    league: jax.Array
    key: jax.Array
    update: jax.Array


def make(update: int = 5, seed: int = 0, rows: int = 2, cls=State):
    r = np.random.default_rng(seed)
    params = {
        "params": {
            "Dense_0": {"kernel": jnp.asarray(r.normal(size=(rows, 3)), jnp.float32), "bias": jnp.zeros(3)},
            "head": {"scale": jnp.asarray(r.normal(size=4), jnp.bfloat16)},
        }
    }
    zeros = jax.tree.map(jnp.zeros_like, params)
    adam = Adam(jnp.int32(update), jax.tree.map(lambda x: x + 1, zeros), jax.tree.map(lambda x: x + 2, zeros))
    extra = {"fitness_ema": jnp.arange(3, dtype=jnp.float32)} if cls is StateV2 else {}
    return cls(
        params=params,
        opt_state=(adam, jnp.asarray([True, False])),
        league=jnp.zeros((0, 3), jnp.float32),
        key=jnp.asarray(r.integers(0, 2**32, size=2, dtype=np.uint32)),
        update=jnp.int32(update),
        **extra,
    )


def assert_same(a, b):
    assert type(a) is type(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def save_all(directory, *states, keep=5):
    ckpt = Checkpoints(directory, keep=keep)
    for ts in states:
        ckpt.save(ts)
    ckpt.close()


def restore(directory, template, keep=5):
    ckpt = Checkpoints(directory, keep=keep)
    try:
        return ckpt.restore(template)
    finally:
        ckpt.close()


def test_mismatch_is_a_config_error():
    assert issubclass(CheckpointMismatchError, economy.ConfigError)
    assert issubclass(CheckpointError, RuntimeError) and not issubclass(CheckpointError, economy.ConfigError)


def test_round_trip_is_exact_and_stored_by_name(tmp_path):
    ts = make(update=7, seed=1)
    ckpt = Checkpoints(tmp_path, keep=3)
    assert ckpt.latest() is None
    assert ckpt.save(ts) == 7 and ckpt.save(ts) == 7  # saving an existing step is a no-op
    assert ckpt.latest() == 7
    ckpt.close()
    got = restore(tmp_path, make(update=0, seed=2))
    assert_same(got, ts)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(got))
    # On disk: arrays under their names, meta listing every leaf (zero-size one included).
    meta = json.loads((tmp_path / "7" / "meta" / "metadata").read_text())
    paths = [e["path"] for e in meta["leaves"]]
    assert meta["schema"] == SCHEMA_VERSION and len(paths) == len(jax.tree.leaves(ts))
    assert "params/params/Dense_0/kernel" in paths and "opt_state/0/mu/params/head/scale" in paths
    assert {"path": "league", "shape": [0, 3], "dtype": "float32"} in meta["leaves"]
    assert {"path": "update", "shape": [], "dtype": "int32"} in meta["leaves"]
    # orbax's own tree metadata keys arrays by path tuple, e.g. "('params', 'params', 'Dense_0', 'kernel')".
    stored = json.loads((tmp_path / "7" / "arrays" / "_METADATA").read_text())["tree_metadata"]
    assert "('params', 'params', 'Dense_0', 'kernel')" in stored and "('opt_state', '0', 'count')" in stored
    assert "('league',)" not in stored and not any("leaf_" in k for k in stored)


def test_explicit_step_for_a_state_without_update(tmp_path):
    tree = {"w": jnp.arange(4.0), "empty": jnp.zeros((0,), jnp.int32)}
    ckpt = Checkpoints(tmp_path, keep=2)
    with pytest.raises(ValueError, match="step="):
        ckpt.save(tree)
    assert ckpt.save(tree, step=3) == 3
    ckpt.close()
    assert_same(restore(tmp_path, jax.tree.map(jnp.zeros_like, tree)), tree)


def test_added_field_is_refused_by_name(tmp_path):
    save_all(tmp_path, make(update=4), make(update=20))
    with pytest.raises(CheckpointMismatchError) as err:
        restore(tmp_path, make(cls=StateV2))
    msg = str(err.value)
    assert "step 20" in msg and "'fitness_ema'" in msg and "missing in the checkpoint" in msg and "--no-resume" in msg
    # The other way round: a checkpoint field this version lacks.
    save_all(tmp_path / "v2", make(update=3, cls=StateV2))
    with pytest.raises(CheckpointMismatchError, match="'fitness_ema' .in the checkpoint but not"):
        restore(tmp_path / "v2", make())


def test_changed_shape_or_dtype_is_refused_by_name(tmp_path):
    save_all(tmp_path, make(update=2, rows=2))
    with pytest.raises(CheckpointMismatchError, match=r"'params/params/Dense_0/kernel' \(shape \(2, 3\)"):
        restore(tmp_path, make(rows=4))
    other = make()
    other = other.replace(update=other.update.astype(jnp.float32))
    with pytest.raises(CheckpointMismatchError, match="'update'.*int32.*float32"):
        restore(tmp_path, other)


def test_old_position_layout_is_refused(tmp_path):
    import orbax.checkpoint as ocp

    ts = make(update=6)
    mgr = ocp.CheckpointManager(
        tmp_path.absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=3, create=True, enable_async_checkpointing=False),
    )
    flat = {f"leaf_{i:04d}": x for i, x in enumerate(jax.tree.leaves(ts)) if x.size}
    mgr.save(6, args=ocp.args.StandardSave(flat))
    mgr.wait_until_finished()
    mgr.close()
    ckpt = Checkpoints(tmp_path, keep=3)
    assert ckpt.latest() == 6
    with pytest.raises(CheckpointMismatchError, match="older Agora.*position.*schema 0"):
        ckpt.restore(make(update=0))
    ckpt.close()


def test_other_schema_is_refused(tmp_path):
    save_all(tmp_path, make(update=1))
    path = tmp_path / "1" / "meta" / "metadata"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "schema": 99}))
    paths, leaves, _, _ = _layout(make(update=1))
    write_digests(tmp_path / "1", paths, leaves)  # as another version would have sealed it
    with pytest.raises(CheckpointMismatchError, match=f"schema 99 in the checkpoint, {SCHEMA_VERSION} here"):
        restore(tmp_path, make())


def test_keep_last_two(tmp_path):
    save_all(tmp_path, *(make(update=u, seed=u) for u in (1, 2, 3)), keep=2)
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 3]
    assert_same(restore(tmp_path, make(update=0), keep=2), make(update=3, seed=3))


def corrupt(step_dir):
    """Truncate every array data file of a step (orbax's OCDBT ``d/`` folders)."""
    files = [p for p in (step_dir / "arrays").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for p in files:
        p.write_bytes(b"")


def test_unreadable_newest_falls_back_then_fails(tmp_path, capsys):
    save_all(tmp_path, make(update=10, seed=10), make(update=20, seed=20))
    corrupt(tmp_path / "20")
    assert_same(restore(tmp_path, make(update=0)), make(update=10, seed=10))
    err = capsys.readouterr().err
    assert "step 20" in err and "unreadable" in err
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [10, 20]  # nothing deleted
    shutil.rmtree(tmp_path / "10" / "arrays")
    with pytest.raises(CheckpointError) as err:
        restore(tmp_path, make(update=0))
    msg = str(err.value)
    assert "step 20" in msg and "step 10" in msg and str(tmp_path) in msg
    assert "step 10" in capsys.readouterr().err


def _damage(path, how):
    data = path.read_bytes()
    if how == "flip":
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]) if data else path.write_bytes(b"\x01")
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()


def test_any_damaged_byte_of_any_file_refuses_the_step(tmp_path, capsys):
    """Every file of the newest step (orbax's data chunks, manifests and metadata, the meta
    item, DIGESTS.json itself), one byte flipped, truncated to half or deleted: the step is
    refused with a warning naming it and the older one restored; nothing is deleted."""
    pristine = tmp_path / "pristine"
    save_all(pristine, make(update=10, seed=10), make(update=20, seed=20))
    files = sorted(p.relative_to(pristine / "20") for p in (pristine / "20").rglob("*") if p.is_file())
    assert len(files) >= 8 and Path(DIGESTS) in files
    assert any(f.parent.name == "d" for f in files)  # the data chunks are among them
    for i, rel in enumerate(files):
        for how in ("flip", "truncate", "delete"):
            d = tmp_path / f"case_{i}_{how}"
            shutil.copytree(pristine, d)
            _damage(d / "20" / rel, how)
            assert_same(restore(d, make(update=0)), make(update=10, seed=10))
            err = capsys.readouterr().err
            assert "step 20" in err and "unreadable" in err, (rel, how, err)
            assert (d / "20").is_dir()
            shutil.rmtree(d)


def test_a_step_without_digests_is_incomplete_and_leaf_digests_are_checked(tmp_path, capsys):
    """A step cut short before its digests were written is never taken as complete; a step
    whose files match their digests but whose restored leaves differ from the saved ones
    (another step's arrays sealed in its place) is refused by the leaf digests."""
    save_all(tmp_path, make(update=10, seed=10), make(update=20, seed=20))
    (tmp_path / "20" / DIGESTS).unlink()
    assert_same(restore(tmp_path, make(update=0)), make(update=10, seed=10))
    assert "cut short" in capsys.readouterr().err
    record = json.loads((tmp_path / "10" / DIGESTS).read_text())
    paths, leaves, _, _ = _layout(make(update=20, seed=20))
    shutil.rmtree(tmp_path / "10" / "arrays")
    save_all(tmp_path / "other", make(update=10, seed=99))
    shutil.copytree(tmp_path / "other" / "10" / "arrays", tmp_path / "10" / "arrays")
    write_digests(tmp_path / "10", paths, leaves)  # files sealed afresh, leaves of another state
    sealed = json.loads((tmp_path / "10" / DIGESTS).read_text())
    assert sealed["leaves"] != record["leaves"]
    with pytest.raises(CheckpointError, match="restored with other bytes"):
        restore(tmp_path, make(update=0))


def test_an_unsealed_step_is_written_again_when_training_reaches_it(tmp_path, capsys):
    """Killed between orbax's commit and the digests: the step is refused on restore, and
    saving that step again replaces it (it would otherwise stand unsealed forever)."""
    save_all(tmp_path, make(update=10, seed=10), make(update=20, seed=1))
    (tmp_path / "20" / DIGESTS).unlink()
    assert_same(restore(tmp_path, make(update=0)), make(update=10, seed=10))
    save_all(tmp_path, make(update=20, seed=20))
    assert "never completed" in capsys.readouterr().err
    assert_same(restore(tmp_path, make(update=0)), make(update=20, seed=20))


def test_restore_an_explicit_step_and_a_step_without_its_meta_item(tmp_path, capsys):
    """``restore(step=s)`` gives exactly step ``s`` (an older one too) and names the steps on
    disk when ``s`` is not there; a step whose meta item is gone (a newer layout, damaged) is
    unreadable and the next older step is used, not refused as the old position layout."""
    save_all(tmp_path, make(update=10, seed=10), make(update=20, seed=20))
    ckpt = Checkpoints(tmp_path, keep=5)
    try:
        assert_same(ckpt.restore(make(update=0), step=10), make(update=10, seed=10))
        assert_same(ckpt.restore(make(update=0), step=20), make(update=20, seed=20))
        with pytest.raises(CheckpointError, match=r"no checkpoint at update 15 .*\[10, 20\]"):
            ckpt.restore(make(update=0), step=15)
    finally:
        ckpt.close()
    shutil.rmtree(tmp_path / "20" / "meta")
    assert_same(restore(tmp_path, make(update=0)), make(update=10, seed=10))
    assert "step 20" in capsys.readouterr().err


def test_first_difference_names_the_leaf():
    from selfplay.checkpoint import _first_difference

    a, b, c = ({"path": p, "shape": [2], "dtype": "float32"} for p in "abc")
    assert _first_difference([a, b], [a, b]) is None
    assert _first_difference([a, b, c], [a, b]) == "'c' (in the checkpoint but not in this version's state)"
    assert _first_difference([a, b], [a, b, c]) == "'c' (missing in the checkpoint)"
    assert _first_difference([a, b], [b, a]) == "'b' (leaves in another order)"
    wide = {**b, "shape": [3]}
    assert _first_difference([a, b], [a, wide]) == "'b' (shape (2,) float32 in the checkpoint, (3,) float32 here)"


def test_damaged_digest_records_are_named(tmp_path, capsys):
    """DIGESTS.json edited into other valid JSON (a leaf digest changed) fails its own
    digest; one that is not UTF-8 or not JSON is named damaged; either way the older step is
    restored and the warning says why."""
    from selfplay.checkpoint import verify_files

    save_all(tmp_path, make(update=10, seed=10), make(update=20, seed=20))
    path = tmp_path / "20" / DIGESTS
    record = json.loads(path.read_text())
    leaf = next(iter(record["leaves"]))
    record["leaves"][leaf] = "0" * 64
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="its own digest does not match"):
        verify_files(tmp_path / "20")
    for raw in (b"\xff\xfe not utf-8", b'{"schema": 2, "files": '):
        path.write_bytes(raw)
        with pytest.raises(ValueError, match=f"{DIGESTS} is damaged \\("):
            verify_files(tmp_path / "20")
        assert_same(restore(tmp_path, make(update=0)), make(update=10, seed=10))
        err = capsys.readouterr().err
        assert "step 20" in err and f"{DIGESTS} is damaged" in err, err


def test_leaf_digests_of_host_and_device_arrays_agree():
    from selfplay.checkpoint import leaf_digest

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert leaf_digest(x) == leaf_digest(jnp.asarray(x)) != leaf_digest(x.reshape(3, 2))
    assert leaf_digest(x) != leaf_digest(x.astype(np.float64))


def test_only_the_event_loop_noise_of_a_failed_read_is_dropped(monkeypatch):
    """Inside ``_quiet_failed_read`` an unraisable "Event loop is closed" RuntimeError is
    dropped and any other unraisable still reaches the previous hook; a failed read settles
    for a moment and its own error propagates unchanged."""
    import sys
    import types

    from selfplay.checkpoint import _quiet_failed_read

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    with _quiet_failed_read(settle_s=0.0):
        sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed")))
        sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError("something else")))
        sys.unraisablehook(types.SimpleNamespace(exc_value=ValueError("Event loop is closed")))
    assert seen == ["something else", "Event loop is closed"]
    with pytest.raises(KeyError, match="the read's own error"):
        with _quiet_failed_read():
            raise KeyError("the read's own error")
