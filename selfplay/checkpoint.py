"""Training-state checkpoints stored by name (orbax).

Layout of ``DIR/<step>/`` (one orbax ``CheckpointManager`` step, two items):

``arrays/``
    The state's array leaves as a nested dict keyed by their pytree path components,
    e.g. ``{"params": {"params": {"Dense_0": {"kernel": ...}}}, "update": ...}`` (from
    ``jax.tree_util.tree_flatten_with_path``: attribute names, dict keys, sequence
    indices). orbax stores each array under its name (``params.params.Dense_0.kernel``
    in its OCDBT/zarr store), so a field added to or moved within the state can never be
    restored into the wrong place. Zero-size leaves (e.g. an empty league) are left out:
    orbax cannot store them; :meth:`Checkpoints.restore` rebuilds them from the template.
``meta/``
    JSON ``{"schema": SCHEMA_VERSION, "leaves": [{"path": "params/params/Dense_0/kernel",
    "shape": [...], "dtype": "float32"}, ...]}`` listing every leaf in flatten order,
    zero-size ones included.

``DIGESTS.json``
    Written last, after orbax has committed the step: the SHA-256 and size of every other
    file of the step, the SHA-256 of every saved leaf's bytes (leaves held whole by this
    process), and the SHA-256 of its own content. A step without it was cut short during
    the write and is never taken as complete.

Restoring checks ``DIGESTS.json`` first: any damaged, truncated or missing file (data
chunk, manifest, metadata, small or large) makes the step unreadable, and so does a
restored leaf whose bytes differ from its digest. orbax alone does not notice every
damaged byte (a damaged small chunk was seen to load silently). Then it reads ``meta`` and compares it with the running code's state. Any
structural difference (a path present on one side only, another order, shape or dtype,
another schema, or an old checkpoint written by leaf position: schema 0, a single
``default`` item of ``leaf_0000``... arrays) raises :class:`CheckpointMismatchError`
at once, naming the first differing path; older steps are not tried, since they come from
the same code. A step that cannot be read (missing or truncated files) is reported and
the next older one tried; :class:`CheckpointError` lists every reason when none is
readable. Restoring never deletes anything; saving keeps the newest ``keep`` steps.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from economy import ConfigError

SCHEMA_VERSION = 2  # 2: DIGESTS.json (file and leaf digests); 1: by name without digests
DIGESTS = "DIGESTS.json"


class CheckpointError(RuntimeError):
    """No checkpoint could be read; the message names each step and why."""


class CheckpointMismatchError(ConfigError):
    """A readable checkpoint whose structure differs from the running code's state (the
    CLI treats it as a usage error: resume elsewhere or with ``--no-resume``)."""


def _component(k: Any) -> str:
    tu = jax.tree_util
    if isinstance(k, tu.GetAttrKey):
        return k.name
    if isinstance(k, tu.DictKey):
        return str(k.key)
    if isinstance(k, tu.SequenceKey):
        return str(k.idx)
    if isinstance(k, tu.FlattenedIndexKey):
        return str(k.key)
    raise TypeError(f"unsupported pytree key {k!r}")


def _layout(ts: Any) -> tuple[list[tuple[str, ...]], list[Any], list[dict], Any]:
    """Paths (tuples of names), leaves, meta entries and treedef of ``ts``."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(ts)
    paths = [tuple(_component(k) for k in p) for p, _ in with_path]
    leaves = [x for _, x in with_path]
    if len({".".join(p) for p in paths}) != len(paths):  # orbax names arrays by "."-joined path
        raise ValueError("training state has leaf paths that collide once joined; cannot checkpoint by name")
    # .dtype/.shape, not np.asarray: leaves may be sharded over other processes' devices.
    dtype = lambda x: str(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)  # noqa: E731
    meta = [{"path": "/".join(p), "shape": list(np.shape(x)), "dtype": dtype(x)} for p, x in zip(paths, leaves)]
    return paths, leaves, meta, treedef


def _nest(paths: list[tuple[str, ...]], leaves: list[Any]) -> dict:
    """Nested dict of the non-empty leaves, keyed by path components."""
    out: dict = {}
    for path, x in zip(paths, leaves):
        if np.size(x):
            node = out
            for name in path[:-1]:
                node = node.setdefault(name, {})
            node[path[-1]] = x
    return out


def _first_difference(saved: list[dict], want: list[dict]) -> str | None:
    """The first leaf (in flatten order) where ``saved`` (checkpoint) and ``want`` (this
    code's state) differ, described; ``None`` if they match."""
    saved_paths, want_paths = {e["path"] for e in saved}, {e["path"] for e in want}
    for i in range(max(len(saved), len(want))):
        s = saved[i] if i < len(saved) else None
        w = want[i] if i < len(want) else None
        if s == w:
            continue
        if w is not None and w["path"] not in saved_paths:
            return f"'{w['path']}' (missing in the checkpoint)"
        if s is not None and s["path"] not in want_paths:
            return f"'{s['path']}' (in the checkpoint but not in this version's state)"
        if s is None or w is None or s["path"] != w["path"]:
            return f"'{(w or s)['path']}' (leaves in another order)"
        return (
            f"'{w['path']}' (shape {tuple(s['shape'])} {s['dtype']} in the checkpoint, "
            f"{tuple(w['shape'])} {w['dtype']} here)"
        )
    return None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def leaf_digest(x: Any) -> str | None:
    """SHA-256 of a leaf's dtype, shape and bytes (C order); ``None`` for a leaf this
    process does not hold whole (sharded over other processes' devices)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None
    a = np.ascontiguousarray(np.asarray(x))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _self_digest(record: dict) -> str:
    return hashlib.sha256(json.dumps({k: v for k, v in record.items() if k != "sha256"}, sort_keys=True).encode()).hexdigest()


def write_digests(step_dir: Path, paths: list[tuple[str, ...]], leaves: list[Any]) -> None:
    """``step_dir/DIGESTS.json``: every file's SHA-256 and size, every saved leaf's digest
    (:func:`leaf_digest`), and its own digest; written atomically, last."""
    files = {}
    for f in sorted(step_dir.rglob("*")):
        if f.is_file() and f.name != DIGESTS:
            files[f.relative_to(step_dir).as_posix()] = {"sha256": _sha256_file(f), "size": f.stat().st_size}
    digests = {"/".join(p): leaf_digest(x) for p, x in zip(paths, leaves) if np.size(x)}
    record = {"schema": SCHEMA_VERSION, "files": files, "leaves": {k: v for k, v in digests.items() if v is not None}}
    record["sha256"] = _self_digest(record)
    tmp = step_dir / (DIGESTS + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, step_dir / DIGESTS)


def verify_files(step_dir: Path) -> dict:
    """Check every file of a step against its ``DIGESTS.json``; returns the record (with the
    leaf digests). Raises :class:`ValueError` naming the first problem."""
    path = step_dir / DIGESTS
    if not path.is_file():
        raise ValueError(f"no {DIGESTS}: the write was cut short (or the step predates checkpoint digests)")
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{DIGESTS} is damaged ({e})") from None
    if not isinstance(record, dict) or record.get("sha256") != _self_digest(record) or not isinstance(record.get("files"), dict):
        raise ValueError(f"{DIGESTS} is damaged (its own digest does not match)")
    for rel, want in record["files"].items():
        f = step_dir / rel
        if not f.is_file():
            raise ValueError(f"file {rel} is missing")
        size = f.stat().st_size
        if size != want["size"]:
            raise ValueError(f"file {rel} has {size} bytes, {want['size']} when written")
        if _sha256_file(f) != want["sha256"]:
            raise ValueError(f"file {rel} is damaged (SHA-256 differs from the one written)")
    return record


@contextlib.contextmanager
def _quiet_failed_read(settle_s: float = 0.2):
    """orbax reads a step's arrays concurrently on a private event loop and closes the loop
    at the first failed read; tensorstore then finishes the other reads on its threads and
    reports "Event loop is closed" (unraisable), "Future exception was never retrieved"
    (asyncio log) and never-awaited coroutines. That noise says nothing more than the error
    already caught: drop it (only it) while a failed read settles."""
    prev_hook, log = sys.unraisablehook, logging.getLogger("asyncio")

    def hook(u):
        if not (isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed"):
            prev_hook(u)

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Future exception was never retrieved")

    sys.unraisablehook = hook
    log.addFilter(keep)
    try:
        yield
    except Exception:
        time.sleep(settle_s)
        with warnings.catch_warnings():  # orbax's abandoned coroutines, collected here
            warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
            gc.collect()
        raise
    finally:
        sys.unraisablehook = prev_hook
        log.removeFilter(keep)


class Checkpoints:
    """orbax ``CheckpointManager`` over a whole training-state pytree, stored by name
    (module docstring); synchronous saves, the newest ``keep`` steps kept."""

    def __init__(self, directory: Path, keep: int):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.directory = Path(directory)
        # Naming the items fixes orbax in multi-item mode; otherwise it guesses the mode from
        # the first step it sees and an old single-item checkpoint would lock it in.
        self.mgr = ocp.CheckpointManager(
            self.directory.absolute(),
            item_names=("arrays", "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False),
        )

    def latest(self) -> int | None:
        return self.mgr.latest_step()

    def save(self, ts: Any, step: int | None = None) -> int:
        """Write ``ts`` as step ``step`` (default ``int(ts.update)``) unless that step
        exists already; returns the step."""
        if step is None:
            update = getattr(ts, "update", None)
            if update is None or callable(update):  # (a dict's .update is a method)
                raise ValueError("the state has no `update` field: pass step=")
            step = int(update)
        if step in self.mgr.all_steps() and not (self.directory / str(step) / DIGESTS).is_file():
            self._discard_unsealed(step)
        if step not in self.mgr.all_steps():
            paths, leaves, meta, _ = _layout(ts)
            args = self.ocp.args
            self.mgr.save(
                step,
                args=args.Composite(
                    arrays=args.StandardSave(_nest(paths, leaves)),
                    meta=args.JsonSave({"schema": SCHEMA_VERSION, "leaves": meta}),
                ),
            )
            self.mgr.wait_until_finished()
            self._seal(step, paths, leaves)
        return step

    def _discard_unsealed(self, step: int) -> None:
        """A step cut short before its digests (a kill during the write) is written anew
        when training reaches it again, instead of standing as the newest step forever."""
        import shutil

        if jax.process_index() == 0:
            print(f"warning: checkpoint step {step} in {self.directory} was never completed; writing it again",
                  file=sys.stderr, flush=True)
            shutil.rmtree(self.directory / str(step))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"agora checkpoint {step} discarded")
        self.mgr.reload()

    def _seal(self, step: int, paths, leaves) -> None:
        """Write the step's digests (process 0, once every process has committed its files)."""
        multi = jax.process_count() > 1
        if multi:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"agora checkpoint {step} written")
        if jax.process_index() == 0:
            write_digests(self.directory / str(step), paths, leaves)
        if multi:
            multihost_utils.sync_global_devices(f"agora checkpoint {step} sealed")

    def _mismatch(self, step: int, why: str) -> CheckpointMismatchError:
        return CheckpointMismatchError(
            f"checkpoint step {step} in {self.directory} does not match this version's training state: {why}; "
            "start afresh with --no-resume or use another run directory"
        )

    def _refuse_position_layout(self, step: int) -> None:
        """An old leaf-position checkpoint (schema 0) is a mismatch, named, not a damaged step."""
        step_dir = self.directory / str(step)
        if not (step_dir / "meta").exists() and (step_dir / "default").exists():
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} was written by an older Agora (leaves stored by "
                "position, schema 0) and cannot be read by name; start afresh with --no-resume or use another "
                "run directory"
            )

    def _read_meta(self, step: int) -> dict:
        meta = self.mgr.restore(step, args=self.ocp.args.Composite(meta=self.ocp.args.JsonRestore())).meta
        if not isinstance(meta, dict) or "leaves" not in meta:
            raise ValueError(f"meta item is not an Agora checkpoint description: {str(meta)[:100]}")
        return meta

    def steps(self) -> list[int]:
        """Steps on disk, oldest first."""
        return sorted(self.mgr.all_steps())

    def restore(self, template: Any, step: int | None = None) -> Any:
        """The newest readable checkpoint (or exactly ``step``), as ``template``'s pytree
        type with its shardings. Raises :class:`CheckpointMismatchError` on a structural
        difference and :class:`CheckpointError` when no step (or not ``step``) is readable;
        nothing is deleted."""
        paths, leaves, want, treedef = _layout(template)
        # The abstract target carries the template's shardings: restored leaves come back
        # laid out as the update expects (on any number of devices or processes).
        abstract = jax.tree.map(self.ocp.utils.to_shape_dtype_struct, _nest(paths, leaves))
        errors = []
        candidates = sorted(self.mgr.all_steps(), reverse=True)
        if step is not None:
            if step not in candidates:
                raise CheckpointError(f"no checkpoint at update {step} in {self.directory} (steps: {sorted(candidates)})")
            candidates = [step]
        for step in candidates:
            try:
                self._refuse_position_layout(step)
                record = verify_files(self.directory / str(step))
                meta = self._read_meta(step)
                if meta.get("schema") != SCHEMA_VERSION:
                    raise self._mismatch(step, f"schema {meta.get('schema')} in the checkpoint, {SCHEMA_VERSION} here")
                diff = _first_difference(meta["leaves"], want)
                if diff:
                    raise self._mismatch(step, f"first difference at path {diff}")
                args = self.ocp.args.Composite(arrays=self.ocp.args.StandardRestore(abstract))
                with _quiet_failed_read():
                    arrays = self.mgr.restore(step, args=args).arrays if abstract else {}
                out = []
                for path, x in zip(paths, leaves):
                    if np.size(x):
                        node = arrays
                        for name in path:
                            node = node[name]
                        x = node
                    out.append(x)
                for path, x in zip(paths, out):
                    want_digest = record["leaves"].get("/".join(path))
                    if want_digest is not None and np.size(x):
                        got = leaf_digest(x)
                        if got is not None and got != want_digest:
                            raise ValueError(f"leaf {'/'.join(path)} restored with other bytes than were saved")
                return jax.tree.unflatten(treedef, out)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to read is reported by name
                errors.append(f"step {step} ({self.directory / str(step)}): {type(e).__name__}: {str(e)[:300]}")
                print(
                    f"warning: checkpoint step {step} in {self.directory} is unreadable ({type(e).__name__}: "
                    f"{str(e)[:200]}); trying an older one",
                    file=sys.stderr,
                    flush=True,
                )
        raise CheckpointError(f"no readable checkpoint in {self.directory}:\n  " + "\n  ".join(errors or ["(none)"]))

    def close(self) -> None:
        self.mgr.close()
