"""Soak (not a test): long runs that show the simulator and the trainer stay correct, fast
and flat in memory over time. Two parts, each optional:

* ``economy``: the 2^20-agent economy (``--log2n``) played by the scripted baseline for
  ``--steps`` steps (one jitted step at a time, as a long simulation runs), the ledger
  identity checked on the host after every step: money is conserved exactly, and every
  good's total changes by exactly what was produced minus what was used, eaten and
  spoiled (int64 sums of the int32 state). Steps/s per window of ``--window`` steps.
* ``train``: the demo configuration (``configs/demo.yaml``) for ``--updates`` updates with
  a checkpoint every ``--checkpoint-every``; updates/s per window, every checkpoint's
  size on disk; then resume: the state restored from the second newest checkpoint and
  trained on to the last update must equal the newest checkpoint bit for bit.

Both record the process's resident memory (RSS, from /proc) after every window, its peak
(``getrusage``) and how much it grew from the first window to the last. Speeds are also
given as a ratio to the machine's float32 matmul rate measured in the same run (the
suite's reference), since machines change between sessions.

    python -m benchmarks.soak --out benchmarks/results/soak.json            # both parts
    python -m benchmarks.soak --parts economy --log2n 14 --steps 200         # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def rss_mb() -> float:
    """Current resident set size of this process, MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def memory_summary(windows: list[dict]) -> dict:
    first, last = windows[0]["rss_mb"], windows[-1]["rss_mb"]
    return {"rss_first_window_mb": first, "rss_final_mb": last, "rss_growth_mb": last - first,
            "rss_growth_fraction": (last - first) / first, "peak_rss_mb": peak_rss_mb()}


def soak_economy(log2n: int, steps: int, window: int, markets: int | None = None) -> dict:
    import jax
    import numpy as np

    import economy
    from agents.scripted import scripted_actions
    from economy import Economy, load_config
    from economy.streams import derive

    n = 2**log2n
    m = markets or max(4, n // 1024)
    cfg = load_config(ROOT / "configs" / "economy" / "classic.yaml", num_agents=n, num_markets=m, episode_length=10**6)
    env = Economy(cfg)
    key = jax.random.key(0)

    @jax.jit
    def step(state, t):
        k = derive(key, t)
        actions = scripted_actions(env, derive(k, "act"), state)
        _, state, _, _, _, info = env.step(derive(k, "env"), state, actions)
        return state, {"produced": info["produced"], "consumed": info["consumed"]}

    _, state = env.reset(env.world_key(0))
    money0 = economy.ledger(state, per_market=True)["money"]
    goods = economy.ledger(state, per_market=True)["goods"]  # int64 [M, G]
    t0 = time.perf_counter()
    state, info = step(state, np.uint32(0))
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    windows, violations = [], 0
    goods = goods + np.asarray(info["produced"], np.int64) - np.asarray(info["consumed"], np.int64)  # per market
    start = time.perf_counter()
    for t in range(1, steps):
        state, info = step(state, np.uint32(t))
        now_ledger = economy.ledger(state, per_market=True)
        goods = goods + np.asarray(info["produced"], np.int64) - np.asarray(info["consumed"], np.int64)
        held = now_ledger["goods"]
        if not np.array_equal(now_ledger["money"], money0) or not np.array_equal(held, goods):
            violations += 1
            goods = held
        if t % window == 0 or t == steps - 1:
            now = time.perf_counter()
            done = t - (windows[-1]["step"] if windows else 0)
            windows.append({"step": t, "steps_per_s": done / (now - start), "agent_steps_per_s": done * n / (now - start),
                            "rss_mb": rss_mb()})
            start = now
            print(f"economy step {t}: {windows[-1]['steps_per_s']:.2f} steps/s, RSS {windows[-1]['rss_mb']:.0f} MB, "
                  f"ledger violations {violations}", flush=True)
    rates = [w["agent_steps_per_s"] for w in windows]
    return {"agents": n, "markets": m, "steps": steps, "compile_s": compile_s, "ledger_checked_steps": steps,
            "ledger_violations": violations, "windows": windows,
            "agent_steps_per_s_first": rates[0], "agent_steps_per_s_last": rates[-1],
            "agent_steps_per_s_min": min(rates), "agent_steps_per_s_max": max(rates), **memory_summary(windows)}


def soak_train(updates: int, checkpoint_every: int, window: int, run_dir: Path) -> dict:
    import jax
    import numpy as np

    from selfplay.checkpoint import Checkpoints
    from selfplay.config import load_run_config
    from selfplay.run import train_run
    from selfplay.train import Trainer

    overrides = [f"train.updates={updates}", f"train.checkpoint_every={checkpoint_every}", "train.keep_checkpoints=3",
                 "train.analysis.images=false"]
    cfg = load_run_config(ROOT / "configs" / "demo.yaml", overrides)
    windows = []
    mark = {"t": time.perf_counter(), "u": 0}

    def on_update(u, m):
        if u == 1:  # windows start after the first update (its compile)
            mark.update(t=time.perf_counter(), u=1)
            return
        if u % window == 0 or u == updates:
            now = time.perf_counter()
            windows.append({"update": u, "updates_per_s": (u - mark["u"]) / (now - mark["t"]),
                            "agent_steps_per_s": (u - mark["u"]) * cfg.economy.num_agents * cfg.train.rollout_steps
                            / (now - mark["t"]), "rss_mb": rss_mb(), "utility": float(np.mean(m["utility"]))})
            mark.update(t=now, u=u)
            print(f"train update {u}: {windows[-1]['updates_per_s']:.2f} updates/s, RSS {windows[-1]['rss_mb']:.0f} MB",
                  flush=True)

    t0 = time.perf_counter()
    train_run(cfg, run_dir, resume=False, progress=False, on_update=on_update)
    wall = time.perf_counter() - t0
    ckpt_dir = run_dir / "checkpoints"
    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
             for p in sorted(ckpt_dir.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1) if p.name.isdigit()}

    # Resume: the second newest checkpoint, trained on to the last update, equals the newest.
    trainer = Trainer(cfg)
    ckpt = Checkpoints(ckpt_dir, keep=3)
    steps = ckpt.steps()
    template = trainer.init(jax.random.key(cfg.train.seed))
    newest = jax.device_get(ckpt.restore(template, step=steps[-1]))
    ts = trainer.place(ckpt.restore(trainer.init(jax.random.key(cfg.train.seed)), step=steps[-2]))
    for _ in range(steps[-1] - steps[-2]):
        ts, _ = trainer.update(ts)
    ts = jax.device_get(ts)
    ckpt.close()
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(ts), jax.tree.leaves(newest)))
    rates = [w["updates_per_s"] for w in windows]
    return {"updates": updates, "checkpoint_every": checkpoint_every, "wall_s": wall, "windows": windows,
            "updates_per_s_first": rates[0], "updates_per_s_last": rates[-1], "updates_per_s_min": min(rates),
            "checkpoint_bytes": sizes, "resume_from": steps[-2], "resume_to": steps[-1], "resume_bit_identical": same,
            **memory_summary(windows)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", choices=["economy", "train"], default=["economy", "train"])
    ap.add_argument("--log2n", type=int, default=20)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--updates", type=int, default=1000)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--window", type=int, default=100, help="steps (economy) or updates (train, /2) per window")
    ap.add_argument("--run-dir", default=None, help="training run directory (default: a temporary one, removed)")
    ap.add_argument("--out", default=str(HERE / "results" / "soak.json"))
    args = ap.parse_args(argv)

    from benchmarks.suite import machine_info, measure_limits

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(), "limits": measure_limits(), "args": vars(args)}
    mm = result["limits"]["matmul_flops_per_s"]

    def save():
        out.write_text(json.dumps(result, indent=1))

    save()
    if "economy" in args.parts:
        r = soak_economy(args.log2n, args.steps, args.window)
        r["agent_steps_per_s_per_matmul_gflops"] = r["agent_steps_per_s_last"] / (mm / 1e9)
        result["economy"] = r
        save()
    if "train" in args.parts:
        tmp = None
        run_dir = Path(args.run_dir) if args.run_dir else Path(tmp := tempfile.mkdtemp(prefix="agora_soak_")) / "run"
        try:
            r = soak_train(args.updates, args.checkpoint_every, max(1, args.window // 2), run_dir)
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        r["updates_per_s_per_matmul_gflops"] = r["updates_per_s_last"] / (mm / 1e9)
        result["train"] = r
        save()
    ok = result.get("economy", {}).get("ledger_violations", 0) == 0 and result.get("train", {}).get("resume_bit_identical", True)
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine",)}, indent=1, default=str)[:3000])
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
