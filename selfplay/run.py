"""``agora train``: the host loop around :class:`selfplay.train.Trainer`.

A run directory holds ``config.yaml`` (the validated config snapshot), ``tb/``
(TensorBoard event files), ``checkpoints/`` (orbax, last ``keep_checkpoints`` kept),
``metrics.jsonl`` (one line of population metrics per logged update),
``lineage.jsonl`` (PBT copies: who copied whom, when), ``analysis.jsonl`` (one line per
analysis, :func:`analysis.population.population_analysis`) and the lock file ``.lock``
(:func:`run_dir_lock`). A run resumes from its latest
checkpoint by default and then continues exactly as if it had never stopped: every key
lives in the checkpointed state and the update is deterministic.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from analysis.files import read_jsonl, write_atomic
from analysis.metrics import tag
from economy import ConfigError
from selfplay.checkpoint import CheckpointError, CheckpointMismatchError, Checkpoints
from selfplay.config import RunConfig, config_diff
from selfplay.train import Trainer, TrainState


__all__ = [
    "CheckpointError", "CheckpointMismatchError", "Checkpoints", "Dashboard", "NonFiniteError", "Recorder",
    "RunDirLocked", "nonfinite_report", "prepare_run_dir", "run_dir_lock", "snapshot", "train_run",
]


LOCK_FILE = ".lock"


class RunDirLocked(ConfigError):
    """Another process trains in this run directory (it holds the directory's lock)."""


class NonFiniteError(RuntimeError):
    """A loss, gradient norm, parameter or fitness turned non-finite; the message names the
    members, the quantities and the update (the CLI exits 3)."""


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """Hold an exclusive OS lock (``flock``) on ``run_dir/.lock`` for the block; the file
    names the holder's process id. A lock held elsewhere raises :class:`RunDirLocked`
    naming the directory and the holder, having written nothing (the lock file is opened,
    never created or truncated, until the lock is ours). The OS drops the lock when its
    holder dies, so a killed trainer never leaves a stale lock. In a multi-process run,
    process 0 takes it and tells the others whether it did."""
    import fcntl

    multi = jax.process_count() > 1
    fd, holder = None, ""
    if jax.process_index() == 0:
        path = run_dir / LOCK_FILE
        if run_dir.is_dir() and path.exists():
            fd = os.open(path, os.O_RDWR)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            fd = None
    ok = fd is not None or jax.process_index() != 0
    if multi:
        from jax.experimental import multihost_utils

        ok = bool(multihost_utils.broadcast_one_to_all(np.int32(fd is not None)))
    if not ok:
        who = f"process {holder}" if holder else "another process (see process 0)"
        raise RunDirLocked(
            f"run directory {run_dir} is in use: {who} holds its lock ({run_dir / LOCK_FILE}); "
            "wait for it to finish, stop it, or use another run directory"
        )
    try:
        if fd is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def inject_nan(trainer: Trainer, ts: TrainState, member: int) -> TrainState:
    """The fault of ``train.fault``: member ``member``'s utility weight turns NaN, so its
    reward, loss, gradients and parameters do in the next update (a change of the state's
    data, not of the compiled update)."""
    w = dict(ts.reward_weights)
    w["utility"] = w["utility"].at[member].set(jnp.nan)
    return trainer.place(ts.replace(reward_weights=w))


def nonfinite_report(m: dict) -> dict[str, list[int]]:
    """``{quantity: [members]}`` of the non-finite entries of one update's ``m["nonfinite"]``."""
    return {q: np.flatnonzero(np.asarray(v)).tolist() for q, v in m["nonfinite"].items() if np.any(v)}


def snapshot(cfg: RunConfig) -> dict:
    return cfg.model_dump(mode="json")


EARLIER = "earlier"  # a run directory's folder of the runs it held before a fresh start


def set_aside(run_dir: Path) -> Path | None:
    """Move what an earlier run wrote in ``run_dir`` (checkpoints, logs, TensorBoard,
    evaluation, report, config snapshot) into ``run_dir/earlier/K/`` (``K`` = 1, 2, ...: the
    first free), so that a fresh start (``--no-resume``) neither mixes two runs' checkpoints
    and logs nor loses the earlier one. Returns the folder, or None when there was nothing."""
    if not run_dir.is_dir():
        return None
    kept = {LOCK_FILE, EARLIER}
    entries = [p for p in sorted(run_dir.iterdir()) if p.name not in kept]
    if not any(p.name != "config.yaml" for p in entries):
        return None
    k = 1
    while (run_dir / EARLIER / str(k)).exists():
        k += 1
    dest = run_dir / EARLIER / str(k)
    dest.mkdir(parents=True)
    for p in entries:
        p.rename(dest / p.name)
    return dest


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool, write: bool = True) -> None:
    """Create ``run_dir`` and write the config snapshot (if ``write``: process 0); refuse
    to resume a run whose snapshot differs from ``cfg`` (naming the differing keys). A fresh
    start (not ``resume``) first sets an earlier run's files aside (:func:`set_aside`)."""
    if not resume and write:
        moved = set_aside(run_dir)
        if moved is not None:
            print(f"starting afresh: the earlier run's files are now in {moved}")
    if not resume and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("agora: run directory prepared")  # before any process opens checkpoints/
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    new = snapshot(cfg)
    if path.exists() and resume and (run_dir / "checkpoints").exists():
        old = yaml.safe_load(path.read_text())
        diff = config_diff(old, new)
        # The number of updates may grow on resume; everything else must match.
        diff = [d for d in diff if d != "train.updates"]
        if diff:
            raise ConfigError(
                f"{run_dir} holds a run with a different config (keys {', '.join(diff)}); "
                "use another run directory or --no-resume"
            )
    if write:
        write_atomic(path, yaml.safe_dump(new, sort_keys=False))  # other processes may be reading it


def member_scalars(m: dict, names: dict) -> dict[str, float]:
    """Flatten one update's metrics into TensorBoard tags: per member, its reward, each
    reward component, its hyperparameters and, beside them, its reward weights
    (``member/P/reward_weight/NAME``)."""
    out: dict[str, float] = {}
    P = len(m["reward"])
    per_member = ["reward", *names["components"], "specialisation_index", "fitness", "entropy", "policy_loss",
                  "value_loss", "approx_kl", "clip_fraction", "value_mean", "value_std", *names["variants"]]
    for c, w in m.get("reward_weights", {}).items():
        w = np.asarray(w, np.float64)
        out[f"population/reward_weight/{c}_mean"] = float(w.mean())
        for p in range(P):
            out[f"member/{p}/reward_weight/{c}"] = float(w[p])
    for k in per_member:
        if k not in m:
            continue
        v = np.asarray(m[k], np.float64)
        out[f"population/{k}_mean"] = float(v.mean())
        for p in range(P):
            out[f"member/{p}/{k}"] = float(v[p])
    for j, name in enumerate(names["niches"]):
        out[tag("occupancy", name)] = float(m["occupancy"][j])
        for p in range(P):
            out[f"member/{p}/member_niche_shares/{name}"] = float(m["member_niche_shares"][p, j])
    for g, name in enumerate(names["goods"]):
        out[tag("market_price", name)] = float(m["market_price"][g])
        out[tag("market_volume", name)] = float(m["market_volume"][g])
    out[tag("project")] = float(m["project"])
    return out


def analysis_record(u: int, an: dict) -> dict:
    """One line of ``analysis.jsonl`` (plain lists and numbers)."""
    return {"update": u, **jax.tree.map(lambda x: np.asarray(x).tolist(), an)}


def analysis_scalars(an: dict, names: dict) -> dict[str, float]:
    """TensorBoard tags of one analysis (:func:`analysis.metrics.tag`: ``GROUP/NAME``)."""
    out = {tag(k): float(an[k]) for k in ("kl_mean", "js_mean", "effective_policies", "occupancy_entropy",
                                           "largest_output_share", "niche_concentration", "gini")}
    P = len(an["kl"])
    off = ~np.eye(P, dtype=bool)
    for k in ("niche_kl", "niche_profile_distance"):
        out[tag(k, "mean")] = float(np.asarray(an[k])[off].mean()) if P > 1 else 0.0
    out[tag("market_occupancy_entropy", "mean")] = float(np.mean(an["market_occupancy_entropy"]))
    for j, name in enumerate(names["niches"][:-1]):
        out[tag("hhi", name)] = float(an["hhi"][j])
        out[tag("niche_largest_share", name)] = float(an["niche_largest_share"][j])
    for g, name in enumerate(names["goods"]):
        out[tag("price_dispersion", name)] = float(an["price_dispersion"][g])
        out[tag("trade_volume", name)] = float(an["trade_volume"][g])
    return out


class Dashboard:
    """TensorBoard output of one run (process 0): scalars every ``log_every`` updates; at
    each analysis, diversity scalars, histograms (specialisation, wealth), images (KL heat
    map ordered by clustering, niche shares over time, PBT lineage) and a text summary."""

    def __init__(self, run_dir: Path, cfg: RunConfig, names: dict):
        from tensorboardX import SummaryWriter

        self.run_dir, self.cfg, self.names = run_dir, cfg, names
        self.writer = SummaryWriter(str(run_dir / "tb"))
        self.shares: list[tuple[int, Any]] = [
            (r["update"], r["member_niche_shares"]) for r in read_jsonl(run_dir / "metrics.jsonl")[0]
            if "member_niche_shares" in r
        ]

    def scalars(self, u: int, scalars: dict[str, float], m: dict) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, u)
        self.shares.append((u, np.asarray(m["member_niche_shares"]).tolist()))

    def analysis(self, u: int, an: dict) -> None:
        w = self.writer
        for k, v in analysis_scalars(an, self.names).items():
            w.add_scalar(k, v, u)
        for kind in ("specialisation", "wealth"):
            h = an[f"{kind}_histogram"]
            w.add_histogram_raw(
                tag(f"{kind}_histogram"), min=float(h["min"]), max=float(h["max"]), num=int(h["num"]), sum=float(h["sum"]),
                sum_squares=float(h["sum_squares"]), bucket_limits=np.asarray(h["edges"][1:]).tolist(),
                bucket_counts=np.asarray(h["counts"]).tolist(), global_step=u,
            )
        w.add_text("analysis", analysis_summary(u, an, self.names), u)
        if self.cfg.train.analysis.images:
            self._images(u, an)
        w.flush()

    def _images(self, u: int, an: dict) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from analysis import plots

        kl = np.asarray(an["kl"])
        figures = {
            "kl_heatmap": plots.heatmap_figure(kl, f"mean KL(pi_i || pi_j), update {u}", order=plots.cluster_order(kl + kl.T)),
            "lineage": plots.lineage_figure(
                read_jsonl(self.run_dir / "lineage.jsonl")[0], self.cfg.train.members, u
            ),
        }
        if self.shares:  # none yet when the first analysis comes before the first logged update
            figures["niche_shares"] = plots.niche_shares_figure(
                np.array([s[0] for s in self.shares]), np.array([s[1] for s in self.shares]), self.names["niches"]
            )
        for name, fig in figures.items():
            self.writer.add_figure(f"images/{name}", fig, u, close=True)

    def close(self):
        self.writer.close()


def analysis_summary(u: int, an: dict, names: dict) -> str:
    niches = names["niches"][:-1]
    j = int(an["niche_concentration_niche"])
    concentration = (f"niche_concentration {float(an['niche_concentration']):.2f} ({niches[j]}, member "
                     f"{int(an['niche_largest_member'][j])})") if j >= 0 else "no niche makes 1% of output"
    return (
        f"update {u}: kl_mean {float(an['kl_mean']):.4f}, js_mean {float(an['js_mean']):.4f}, "
        f"effective_policies {float(an['effective_policies']):.2f}; occupancy_entropy {float(an['occupancy_entropy']):.3f} nats; "
        f"largest_output_share {float(an['largest_output_share']):.2f}; {concentration}; gini {float(an['gini']):.3f}"
    )


class Recorder:
    """Everything a run writes besides checkpoints, once per update: ``metrics.jsonl``
    (every ``log_every`` updates), ``lineage.jsonl`` (PBT copies), ``analysis.jsonl`` and
    TensorBoard. Only process 0 of a multi-process run records (``enabled``)."""

    def __init__(self, run_dir: Path, cfg: RunConfig, ts: TrainState, enabled: bool):
        self.cfg, self.enabled = cfg, enabled
        from analysis.catalogue import economy_names

        names = economy_names(cfg.economy)
        self.names = {
            "niches": list(names.niches) + ["rest"], "goods": list(names.goods),
            "components": list(cfg.train.variants.rewards), "variants": list(cfg.train.variants.ranges),
        }
        self.steps_per_update = cfg.economy.num_agents * cfg.train.rollout_steps
        if not enabled:
            return
        self.dash = Dashboard(run_dir, cfg, self.names)
        if int(ts.update) == 0:
            w = self.dash.writer
            w.add_text("config", "```\n" + yaml.safe_dump(snapshot(cfg), sort_keys=False) + "\n```", 0)
            hp = {h: np.asarray(v).round(5).tolist() for h, v in ts.hyper.items()}
            hp["reward_weights"] = {c: np.asarray(v).round(4).tolist() for c, v in ts.reward_weights.items()}
            w.add_text("hyperparameters", "```\n" + json.dumps(hp, indent=1) + "\n```", 0)
        self.files = {name: open(run_dir / f"{name}.jsonl", "a") for name in ("metrics", "lineage", "analysis")}

    def _write(self, name: str, records: list[dict]) -> None:
        for r in records:
            self.files[name].write(json.dumps(r) + "\n")
        self.files[name].flush()

    def record(self, u: int, m: dict, dt: float, last: bool, mark: dict | None = None) -> None:
        """``mark``: extra fields for this update's ``metrics.jsonl`` line, which is then
        written whatever ``log_every`` says (e.g. the non-finite quantities that stop a run)."""
        if not self.enabled:
            return
        t = self.cfg.train
        an = m.pop("analysis")
        if bool(m["pbt_event"]):
            src = np.asarray(m["pbt_source"])
            inherited = ["parameters", "optimiser_state", "value_norm", *t.pbt.inherit]
            events = [{"update": u, "child": int(c), "parent": int(src[c]), "fitness_parent": float(m["fitness"][c]),
                       "founder": int(m["founder"][c]), "inherited": inherited}
                      for c in range(len(src)) if src[c] != c]
            self._write("lineage", events)
            if events:
                text = "\n".join(f"update {e['update']}: member {e['child']} <- member {e['parent']}" for e in events)
                text += "\n\ninherited: " + ", ".join(inherited)
                hp = {h: np.asarray(m[h]).round(5).tolist() for h in self.names["variants"]}
                hp["reward_weights"] = {c: np.asarray(v).round(4).tolist() for c, v in m["reward_weights"].items()}
                self.dash.writer.add_text("pbt", text + "\n\nhyperparameters: " + json.dumps(hp), u)
        if u % t.log_every == 0 or last or mark:
            scalars = member_scalars(m, self.names)
            scalars[tag("agent_steps_per_s")] = self.steps_per_update / dt
            self.dash.scalars(u, scalars, m)
            self._write("metrics", [{"update": u, **jax.tree.map(lambda v: np.asarray(v).tolist(), m), **(mark or {})}])
        if bool(m["analysis_done"]):
            self._write("analysis", [analysis_record(u, an)])
            self.dash.analysis(u, an)

    def close(self) -> None:
        if self.enabled:
            self.dash.close()
            for f in self.files.values():
                f.close()


def train_run(
    cfg: RunConfig,
    run_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
    on_update: Callable[[int, dict], None] | None = None,
) -> TrainState:
    """Train ``cfg`` in ``run_dir`` until ``train.updates`` (or ``stop_after`` updates in
    this call). Ctrl-C finishes the update in flight, writes a final checkpoint, then raises
    ``KeyboardInterrupt``. In a multi-process run (``jax.distributed``) every process calls
    this with the same arguments; process 0 writes the logs, all write the checkpoints.

    One writer per run directory: process 0 holds its lock (:func:`run_dir_lock`) for the
    whole call. A non-finite loss, gradient norm, parameter or fitness stops the run with
    :class:`NonFiniteError` before that update is checkpointed; its ``metrics.jsonl`` line
    is written, marked ``"nonfinite"``."""

    run_dir = Path(run_dir)
    trainer = Trainer(cfg)  # checks the devices (mesh.agents) before anything is written
    with run_dir_lock(run_dir):
        return _train_locked(cfg, trainer, run_dir, resume, progress, stop_after, on_update)


def _train_locked(cfg, trainer, run_dir, resume, progress, stop_after, on_update) -> TrainState:
    from tqdm import tqdm

    t = cfg.train
    lead = jax.process_index() == 0
    prepare_run_dir(cfg, run_dir, resume, write=lead)
    ckpt = Checkpoints(run_dir / "checkpoints", t.keep_checkpoints)
    ts = trainer.init(jax.random.key(t.seed))
    if resume and ckpt.latest() is not None:
        ts = ckpt.restore(ts)
        print(f"resumed {run_dir} at update {int(ts.update)}")
    start = int(ts.update)
    recorder = Recorder(run_dir, cfg, ts, enabled=lead)
    end = t.updates if stop_after is None else min(t.updates, start + stop_after)
    bar = tqdm(total=t.updates, initial=start, disable=not (progress and lead), unit="upd", dynamic_ncols=True)
    last_saved = start
    # Ctrl-C (SIGINT) only raises a flag, checked between updates: an update in flight
    # owns the (donated) state buffers, so it finishes before the final checkpoint.
    interrupted = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    except ValueError:  # not the main thread: Ctrl-C is not ours to handle
        previous = None
    try:
        while int(ts.update) < end and not interrupted:
            t0 = time.perf_counter()
            if t.fault.nan_update == int(ts.update) + 1:
                ts = inject_nan(trainer, ts, t.fault.nan_member)
            ts, m = trainer.update(ts)
            m = jax.device_get(m)
            dt = time.perf_counter() - t0
            u = int(m["update"])
            bad = nonfinite_report(m)
            m.pop("nonfinite")
            if bad:
                recorder.record(u, m, dt, last=True, mark={"nonfinite": bad, "stopped": "non-finite"})
                what = "; ".join(f"{q} of member{'s' if len(p) > 1 else ''} {', '.join(map(str, p))}"
                                 for q, p in bad.items())
                raise NonFiniteError(
                    f"update {u}: non-finite {what}; stopped without checkpointing it (the newest checkpoint stays "
                    f"{'update ' + str(ckpt.latest()) if ckpt.latest() is not None else 'none: there is none yet'}) in {run_dir}"
                )
            if on_update is not None:
                on_update(u, m)
            recorder.record(u, m, dt, last=u == end)
            bar.update(1)
            bar.set_postfix(
                steps_s=f"{recorder.steps_per_update / dt:,.0f}", utility=f"{float(np.mean(m['utility'])):.4f}"
            )
            if u % t.checkpoint_every == 0 or u == end:
                ckpt.save(ts)
                last_saved = u
        if interrupted:
            bar.close()
            if int(ts.update) != last_saved:
                ckpt.save(ts)
            print(f"\ninterrupted: checkpoint written at update {int(ts.update)} in {run_dir / 'checkpoints'}")
            raise KeyboardInterrupt
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        bar.close()
        recorder.close()
        ckpt.close()
    return ts
