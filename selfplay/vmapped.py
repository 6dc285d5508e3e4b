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

Under ``vmap`` a ``lax.cond`` whose condition is batched runs both branches and selects.
The update's conditions (the episode reset in the rollout, PBT, the league refresh, the
analysis, imitation) depend only on the update counter and the economy's step, which the
seeds share (they advance together), so those two are kept unbatched
(:meth:`~selfplay.train.Trainer._seed_axes`) and every ``cond`` stays single-branch. The
runs advance together: a group whose checkpoints (or restored states) are at different
updates is trained one run at a time. ``agent_steps_per_s`` in each run's
metrics is that run's agent-steps over the whole group's update time.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Callable

import jax

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
    if cfgs[0].train.fault.nan_update:
        raise ConfigError("--vmap-seeds: train.fault (the injected NaN of the guard's tests) is for agora train only")
    run_dirs = [Path(d) for d in run_dirs]
    seeds = [c.train.seed for c in cfgs]
    trainer = Trainer(cfgs[0])
    trainer._check_one_device("--vmap-seeds")

    def one_at_a_time(why: str) -> str:
        log(f"--vmap-seeds: {why}; training them one at a time")
        for c, d in zip(cfgs, run_dirs):
            train_run(c, d, resume=True, progress=progress,
                      on_update=None if on_update is None else (lambda u, m: on_update(u, [m])))
        return "sequential"

    with contextlib.ExitStack() as stack:
        for d in run_dirs:
            stack.enter_context(run_dir_lock(d))
        for c, d in zip(cfgs, run_dirs):
            prepare_run_dir(c, d, resume=True)
        ckpts = [stack.enter_context(contextlib.closing(Checkpoints(d / "checkpoints", c.train.keep_checkpoints)))
                 for c, d in zip(cfgs, run_dirs)]
        latest = [ck.latest() or 0 for ck in ckpts]
        if len(set(latest)) != 1:
            stack.close()
            return one_at_a_time(f"the runs' checkpoints are at updates {latest}")
        ts = trainer.init_seeds(seeds)
        if latest[0]:
            parts = [ck.restore(trainer.seed_state(ts, i)) for i, ck in enumerate(ckpts)]
            restored = [int(p.update) for p in parts]  # a damaged newest step falls back to an older one
            if len(set(restored)) != 1:
                stack.close()
                return one_at_a_time(f"the runs restored at updates {restored}")
            ts = trainer.stack_seeds(parts)
            log(f"resumed {len(seeds)} seeds at update {restored[0]}")

        def save(u: int) -> None:
            for i, (ck, d) in enumerate(zip(ckpts, run_dirs)):
                ck.save(trainer.seed_state(ts, i))
                # the mode the study records: this run's updates up to u were trained vmapped with these seeds
                (d / MARK).write_text(json.dumps({"seeds": seeds, "device": str(jax.devices()[0].platform),
                                                  "through_update": u}) + "\n")

        recorders = [stack.enter_context(contextlib.closing(Recorder(d, c, trainer.seed_state(ts, i), enabled=True)))
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
                    for (i, b), ck in zip(bad, ckpts):  # the finite seeds keep this update
                        if not b:
                            ck.save(trainer.seed_state(ts, i))
                    what = "; ".join(f"seed {seeds[i]} ({run_dirs[i]}, newest checkpoint "
                                     f"{ckpts[i].latest()}): " + ", ".join(f"{q} of members {p}" for q, p in b.items())
                                     for i, b in bad if b)
                    raise NonFiniteError(f"update {u}: non-finite {what}; stopped without checkpointing it (the "
                                         "other seeds were checkpointed at this update)")
                if on_update is not None:
                    on_update(u, ms)
                for rec, mi in zip(recorders, ms):
                    rec.record(u, mi, dt, last=u == end)
                if u % every == 0 or u == end or interrupted:
                    save(u)
            if interrupted:
                save(u)  # (saves nothing already there: a signal after the cadence check still gets its checkpoint)
                log(f"\ninterrupted: checkpoints written at update {u}")
                raise KeyboardInterrupt
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
    return "vmapped"
