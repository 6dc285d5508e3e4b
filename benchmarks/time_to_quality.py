"""Time to quality: how long the demo configuration trains before the population's
held-out utility reaches 90 % and 100 % of the scripted baseline's on the same worlds.

For each ``train.loss_path`` (default: ``traced``, the update before the fused pass, and
``fused``) and each seed, a fresh subprocess trains ``configs/demo.yaml`` for
``--updates`` updates and, every ``--eval-every`` updates, measures the population's mean
utility on ``--worlds`` held-out worlds exactly as ``agora eval`` does
(:func:`selfplay.evaluate.population_utility`: the same worlds, keys, steps and burn-in;
compiled once). The scripted baseline plays the same worlds with the same keys.

The clock is the training wall-clock: it starts before the first update (so it includes
compiling the update) and stops while the population is evaluated. Reported per run: the
curve ``(update, seconds, utility)``, and the seconds and update at which utility first
reaches each threshold (null when it does not within the run). Writes JSON (default
``benchmarks/results/time_to_quality.json``) and prints a Markdown table.

    python -m benchmarks.time_to_quality [--updates 150] [--eval-every 10] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from benchmarks.child import run_child

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.9, 1.0)


def measure(loss_path: str, seed: int, updates: int, eval_every: int, worlds: int, steps: int, burn_in: int) -> dict:
    import jax

    from selfplay.config import load_run_config
    from selfplay.evaluate import EvalSettings, evaluate_baseline, population_utility
    from selfplay.train import Trainer

    cfg = load_run_config(ROOT / "configs/demo.yaml", [
        f"train.loss_path={loss_path}", f"train.seed={seed}", f"train.updates={updates}"])
    settings = EvalSettings(worlds=worlds, steps=steps, burn_in=burn_in).resolved(cfg)
    trainer = Trainer(cfg)
    scripted = evaluate_baseline(trainer.env, "scripted", settings)["utility"]
    utility = population_utility(trainer, settings)
    ts = trainer.init(jax.random.key(seed))
    t0 = time.perf_counter()
    update = trainer.update.lower(ts).compile()
    compile_s = time.perf_counter() - t0
    clock, curve = compile_s, []
    for u in range(1, updates + 1):
        t0 = time.perf_counter()
        ts, m = update(ts)
        jax.block_until_ready(m)
        clock += time.perf_counter() - t0
        if u % eval_every == 0 or u == updates:
            curve.append({"update": u, "seconds": clock, "utility": utility(ts)})
    reached = {}
    for frac in THRESHOLDS:
        hit = next((c for c in curve if c["utility"] >= frac * scripted), None)
        reached[f"{frac:.0%}"] = {"seconds": hit["seconds"] if hit else None, "update": hit["update"] if hit else None}
    return {
        "loss_path": loss_path, "seed": seed, "updates": updates, "eval_every": eval_every,
        "settings": {"worlds": settings.worlds, "steps": settings.steps, "burn_in": settings.burn_in},
        "scripted_utility": scripted, "compile_s": compile_s, "train_seconds": clock,
        "seconds_per_update": (clock - compile_s) / updates, "final_utility": curve[-1]["utility"],
        "reached": reached, "curve": curve,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loss-paths", nargs="+", default=["traced", "fused"], choices=["traced", "fused"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--updates", type=int, default=150)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--worlds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--burn-in", type=int, default=25)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/time_to_quality.json"))
    ap.add_argument("--single", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.updates < 1 or args.eval_every < 1:
        ap.error("--updates and --eval-every must be >= 1")
    settings = [str(args.updates), str(args.eval_every), str(args.worlds), str(args.steps), str(args.burn_in)]
    if args.single:
        print(json.dumps(measure(args.single[0], int(args.single[1]), *map(int, settings))))
        return 0

    runs = []
    for path in args.loss_paths:
        for seed in args.seeds:
            row, why = run_child("benchmarks.time_to_quality", ["--single", path, str(seed), "--updates", settings[0], "--eval-every",
                                            settings[1], "--worlds", settings[2], "--steps", settings[3],
                                            "--burn-in", settings[4]], timeout=args.timeout)
            if row is None:
                print(why, file=sys.stderr)
                return 1
            runs.append(row)
            hits = ", ".join(f"{k}: {v['seconds']:.0f} s (update {v['update']})" if v["seconds"] is not None
                             else f"{k}: not reached" for k, v in row["reached"].items())
            print(f"{path} seed {seed}: {row['seconds_per_update']:.2f} s/update, final utility "
                  f"{row['final_utility']:.3f} (scripted {row['scripted_utility']:.3f}); {hits}", flush=True)
    result = {
        "benchmark": "time_to_quality",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "config": "configs/demo.yaml", "thresholds": list(THRESHOLDS), "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n| loss path | seed | s/update | final utility / scripted | 90 % reached at | 100 % reached at |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        cells = [f"{r['reached'][k]['seconds']:.0f} s (update {r['reached'][k]['update']})"
                 if r["reached"][k]["seconds"] is not None else "not reached" for k in ("90%", "100%")]
        print(f"| {r['loss_path']} | {r['seed']} | {r['seconds_per_update']:.2f} | "
              f"{r['final_utility'] / r['scripted_utility']:.3f} | {cells[0]} | {cells[1]} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
