"""Several seeds of one condition trained as one program (``agora study --vmap-seeds``).

The runs differ only in ``train.seed``; :meth:`selfplay.train.Trainer.init_seeds` stacks
their states on a leading axis and :meth:`~selfplay.train.Trainer.update_seeds` is the
update ``jax.vmap``-ed over it, so one compiled program advances every seed at once. On an
accelerator that fills the device better than one small population at a time; on the CPU
it saves little (the cores are already busy) and it is off by default.

Each run keeps its own directory exactly as :func:`selfplay.run.train_run` writes it (the
lock, config snapshot, checkpoints, ``metrics.jsonl``, ``lineage.jsonl``,
``analysis.jsonl``, TensorBoard), plus ``vmapped.json`` naming the seeds it was trained
with, so the study's results can say which mode produced them. A vmapped seed agrees with
its sequential run to float tolerance, not bit for bit: the batched matmuls sum in another
order (tests/test_train.py states the tolerance); the economy's integer state is the same.

Two costs of the batch: ``lax.cond`` branches under ``vmap`` run both sides, so the
periodic analysis and PBT are computed every update (and selected), and the runs advance
together: a group whose checkpoints are at different updates is trained one run at a time.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp

from economy import ConfigError
from selfplay.checkpoint import Checkpoints
from selfplay.config import RunConfig
from selfplay.run import NonFiniteError, Recorder, nonfinite_report, prepare_run_dir, run_dir_lock, snapshot, train_run
from selfplay.train import Trainer

MARK = "vmapped.json"


def _same_but_seed(cfgs: list[RunConfig]) -> None:
    def strip(c):
        d = snapshot(c)
        d["train"] = {k: v for k, v in d["train"].items() if k != "seed"}
        return d

    first = strip(cfgs[0])
    for c in cfgs[1:]:
        if strip(c) != first:
            raise ConfigError("--vmap-seeds: the runs of a group must differ only in train.seed")
    seeds = [c.train.seed for c in cfgs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--vmap-seeds: seeds {seeds} repeat")


def _take(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def train_seeds(
    cfgs: list[RunConfig],
    run_dirs: list[str | Path],
    progress: bool = False,
    on_update: Callable[[int, list[dict]], None] | None = None,
    log=print,
) -> str:
    """Train the runs ``cfgs`` (one condition, seeds differing) in ``run_dirs`` to
    ``train.updates``, resuming from their checkpoints, as one vmapped program; returns
    ``"vmapped"``, or ``"sequential"`` when their checkpoints are at different updates
    (then each is trained with :func:`selfplay.run.train_run`). One process, one device.
    A non-finite quantity in any seed stops them all before that update is checkpointed
    (:class:`selfplay.run.NonFiniteError` naming the seed); Ctrl-C checkpoints every run."""
    if jax.process_count() != 1:
        raise ConfigError("--vmap-seeds: one process only (a multi-process run splits one population's agents)")
    if len(cfgs) != len(run_dirs) or not cfgs:
        raise ValueError("train_seeds: one run directory per config")
    _same_but_seed(cfgs)
    run_dirs = [Path(d) for d in run_dirs]
    seeds = [c.train.seed for c in cfgs]
    trainer = Trainer(cfgs[0])
    trainer._check_one_device("--vmap-seeds")
    with contextlib.ExitStack() as stack:
        for d in run_dirs:
            stack.enter_context(run_dir_lock(d))
        for c, d in zip(cfgs, run_dirs):
            prepare_run_dir(c, d, resume=True)
        ckpts = [stack.enter_context(contextlib.closing(Checkpoints(d / "checkpoints", c.train.keep_checkpoints)))
                 for c, d in zip(cfgs, run_dirs)]
        latest = [ck.latest() or 0 for ck in ckpts]
        if len(set(latest)) != 1:
            log(f"--vmap-seeds: the runs' checkpoints are at updates {latest}; training them one at a time")
            stack.close()
            for c, d in zip(cfgs, run_dirs):
                train_run(c, d, resume=True, progress=progress,
                          on_update=None if on_update is None else (lambda u, m: on_update(u, [m])))
            return "sequential"
        ts = trainer.init_seeds(seeds)
        if latest[0]:
            parts = [ck.restore(_take(ts, i)) for i, ck in enumerate(ckpts)]
            ts = jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
        for d in run_dirs:
            (d / MARK).write_text(json.dumps({"seeds": seeds, "device": str(jax.devices()[0].platform)}) + "\n")
        recorders = [stack.enter_context(contextlib.closing(Recorder(d, c, _take(ts, i), enabled=True)))
                     for i, (c, d) in enumerate(zip(cfgs, run_dirs))]
        end = cfgs[0].train.updates
        every = cfgs[0].train.checkpoint_every
        interrupted = []
        try:
            previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
        except ValueError:
            previous = None
        try:
            u = latest[0]
            while u < end and not interrupted:
                t0 = time.perf_counter()
                ts, m = trainer.update_seeds(ts)
                m = jax.device_get(m)
                dt = time.perf_counter() - t0
                ms = [_take(m, i) for i in range(len(seeds))]
                u = int(ms[0]["update"])
                bad = [(i, nonfinite_report(mi)) for i, mi in enumerate(ms)]
                for mi in ms:
                    mi.pop("nonfinite")
                if any(b for _, b in bad):
                    for (i, b), rec, mi in zip(bad, recorders, ms):
                        rec.record(u, mi, dt, last=True, mark={"nonfinite": b, "stopped": "non-finite"} if b else
                                   {"stopped": "non-finite in another seed"})
                    what = "; ".join(f"seed {seeds[i]}: " + ", ".join(f"{q} of members {p}" for q, p in b.items())
                                     for i, b in bad if b)
                    raise NonFiniteError(f"update {u}: non-finite {what}; stopped without checkpointing it")
                if on_update is not None:
                    on_update(u, ms)
                for rec, mi in zip(recorders, ms):
                    rec.record(u, mi, dt, last=u == end)
                if u % every == 0 or u == end or interrupted:
                    for i, ck in enumerate(ckpts):
                        ck.save(_take(ts, i))
            if interrupted:
                log(f"\ninterrupted: checkpoints written at update {u}")
                raise KeyboardInterrupt
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
    return "vmapped"
