"""Self-play throughput: the full update (rollout + PPO epochs) and acting alone.

For each N (default 2^14, 2^16, 2^18 agents, M = N/1024 markets, default catalogue) and
each population size P (default 16 and 64 members), a fresh subprocess measures:

* ``update``: agent-steps/s of one jitted update (``rollout_steps`` environment steps of
  all N agents, GAE, ``epochs`` x ``minibatches`` PPO steps for every member);
* ``acting``: agent-steps/s of the rollout alone (environment + policy sampling);
* ``reference``: agent-steps/s of the same update written the straightforward PureJaxRL
  way (benchmarks/reference_ppo.py: the same economy, shapes, batch, law and loss), timed
  in the same process in turn with Agora's (A B A B ..., ``--repeats`` pairs after a
  warm-up pair), and Agora's update as a multiple of it: the median over pairs of the
  ratio of their times (``speedup_vs_reference``, range in ``speedup_range``), so a drift
  in the machine's speed reaches both sides of each ratio;
* compile seconds of the update, peak RSS (minibatches hold at most 2^18 samples, so
  the PPO pass's memory does not grow with N; the on-device analysis is off);
* FLOPs: the network's multiply-adds per agent-step counted from the layer sizes
  (forward = 2 x MACs; an update does one forward while acting and, per epoch, a forward
  and a backward of about twice the forward), the achieved rate, and that rate as a
  fraction of a 4096^3 float32 matmul measured in the same process.

Writes JSON (default ``benchmarks/results/train_step.json``) and prints a Markdown table.

    python -m benchmarks.train_step [--sizes 14 16 18] [--members 16 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

from benchmarks.child import run_child

ROOT = Path(__file__).resolve().parents[1]


def matmul_flops(n: int = 4096, repeats: int = 3, dtype: str = "float32") -> float:
    """FLOP/s of an ``n x n`` matmul in ``dtype`` (``float32`` or ``bfloat16``) on the
    default device, the best of ``repeats`` after a warm-up."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def network_flops(cfg) -> dict:
    """Forward FLOPs per agent-step of the actor-critic, from its layer sizes."""
    from economy import Economy

    env = Economy(cfg.economy)
    widths = [env.obs_dim, *cfg.train.network.hidden]
    outputs = sum(math.prod(h.shape) * h.choices for h in env.action_spec) + 1
    macs = sum(a * b for a, b in zip(widths[:-1], widths[1:])) + widths[-1] * outputs
    fwd = 2 * macs
    return {"forward": fwd, "acting": fwd, "update": fwd * (1 + 3 * cfg.train.epochs)}


def minibatches_for(n: int, steps: int) -> int:
    """Minibatches of at most 2^18 samples (all members together): the PPO pass's memory
    then stays flat in N (4 minibatches at 2^16 agents x 16 steps, 16 at 2^18); rounded up
    to a divisor of ``steps``."""
    want = max(4, n * steps // 2**18)
    return min([m for m in range(1, steps + 1) if steps % m == 0 and m >= want] or [steps])


def run_config(log2n: int, members: int, steps: int, devices: int | None = None, markets: int | None = None):
    """The benchmarked run config: N = 2^log2n agents in ``markets`` (default N/1024)
    markets, no league, on-device analysis off; the agent axis over ``devices`` devices
    (``mesh.agents``; default: the config's own, ``auto``)."""
    from selfplay.config import load_run_config

    n = 2**log2n
    markets = max(n // 1024, 1) if markets is None else markets
    overrides = [
        f"economy.num_agents={n}", f"economy.num_markets={markets}",
        f"train.members={members}", f"train.rollout_steps={steps}", "train.league.size=0",
        f"train.minibatches={minibatches_for(n, steps)}", "train.analysis.every=0",
    ]
    if devices is not None:
        overrides.append(f"mesh.agents={devices}")
    return load_run_config(ROOT / "configs/economy/classic.yaml", overrides)


def time_stateful(update, state, repeats: int):
    """Compile and time a jitted ``update(state) -> (state, metrics)``: (compile s, best s,
    all times, new state), the first call (a warm-up) untimed."""
    import jax

    t0 = time.perf_counter()
    compiled = update.lower(state).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state)
    jax.block_until_ready(m)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, m = compiled(state)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return compile_s, min(times), times, state


def time_paired(update_a, state_a, update_b, state_b, repeats: int):
    """Compile two jitted stateful updates (``update(state) -> (state, metrics)``), warm each
    up once, then time them in turn, A B A B ..., ``repeats`` pairs: a drift in the
    machine's speed then reaches both sides of each pair's ratio alike. Returns (A's
    compile s, A's times, B's times, A's new state)."""
    import jax

    t0 = time.perf_counter()
    fa = update_a.lower(state_a).compile()
    compile_s = time.perf_counter() - t0
    fs, states, times = (fa, update_b.lower(state_b).compile()), [state_a, state_b], ([], [])
    for r in range(repeats + 1):  # the first pair warms up, untimed
        for i in (0, 1):
            t0 = time.perf_counter()
            states[i], m = fs[i](states[i])
            jax.block_until_ready(m)
            if r:
                times[i].append(time.perf_counter() - t0)
    return compile_s, times[0], times[1], states[0]


def pair_ratios(times_a, times_b) -> dict:
    """B's time over A's, pair by pair: median, min and max."""
    ratios = sorted(b / a for a, b in zip(times_a, times_b))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1], "pairs": len(ratios)}


def time_update(trainer, ts, repeats: int):
    """Compile and time ``trainer.update``: (compile s, best s, all times, new state)."""
    return time_stateful(trainer.update, ts, repeats)


def time_acting(trainer, ts, repeats: int):
    """Compile and time the rollout alone: (compile s, best s, all times)."""
    import jax

    t0 = time.perf_counter()
    rollout = jax.jit(trainer._rollout).lower(ts, jax.random.key(1)).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(rollout(ts, jax.random.key(1)))
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(rollout(ts, jax.random.key(r + 2)))
        times.append(time.perf_counter() - t0)
    return compile_s, min(times), times


def time_against_reference(cfg, trainer, ts, repeats: int):
    """Agora's update (``trainer.update`` from ``ts``) and the reference update
    (benchmarks/reference_ppo.py) of ``cfg``, timed in turn (:func:`time_paired`):
    (compile s, Agora's times, the reference's times, the new state)."""
    import jax

    from benchmarks.reference_ppo import Reference

    ref = Reference(cfg)
    return time_paired(trainer.update, ts, ref.update, ref.init(jax.random.key(0)), repeats)


def xla_estimate(cfg, ts, kind: str, devices: int = 1) -> dict:
    """XLA's cost estimate (FLOPs, bytes accessed) of one acting rollout or one update.
    XLA counts a loop body once, so loop-free variants are compiled (rollout_steps = epochs
    = minibatches = 1) and scaled: acting = T x (1-step rollout); update = T x (1-step
    rollout) + epochs x T x (rest of the 1-step update: GAE, loss and gradient per sample,
    optimiser step, PBT)."""
    import jax

    from benchmarks.env_step import xla_cost
    from selfplay.train import Trainer

    t = cfg.train
    one = Trainer(cfg.model_copy(update={"train": t.model_copy(update={"rollout_steps": 1, "epochs": 1, "minibatches": 1})}))
    act1 = xla_cost(jax.jit(one._rollout).lower(ts, jax.random.key(1)).compile(), devices=devices)
    if kind == "acting":
        return {k: v * t.rollout_steps for k, v in act1.items()}
    upd1 = xla_cost(one.update.lower(ts).compile(), devices=devices)
    return {k: t.rollout_steps * act1[k] + t.epochs * t.rollout_steps * max(upd1[k] - act1[k], 0.0) for k in act1}


def measure(log2n: int, members: int, steps: int, repeats: int, acting_only: bool = False,
            reference: bool = True, loss_path: str | None = None) -> dict:
    import jax

    from selfplay.train import Trainer

    n = 2**log2n
    cfg = run_config(log2n, members, steps)
    if loss_path:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"loss_path": loss_path})})
    peak = matmul_flops()
    trainer = Trainer(cfg)
    ts = trainer.init(jax.random.key(0))
    ref_s, ratio = math.nan, None
    if acting_only:
        compile_s, acting_s, _ = time_acting(trainer, ts, repeats)
        update_s = math.nan
    elif reference:
        compile_s, times, ref_times, ts = time_against_reference(cfg, trainer, ts, repeats)
        update_s, ref_s, ratio = min(times), min(ref_times), pair_ratios(times, ref_times)
        _, acting_s, _ = time_acting(trainer, ts, repeats)
    else:
        compile_s, update_s, _, ts = time_update(trainer, ts, repeats)
        _, acting_s, _ = time_acting(trainer, ts, repeats)
    del ts

    flops = network_flops(cfg)
    agent_steps = n * steps
    upd_rate = agent_steps / update_s
    act_rate = agent_steps / acting_s
    row = {
        "agents": n,
        "members": members,
        "rollout_steps": steps,
        "epochs": cfg.train.epochs,
        "minibatches": cfg.train.minibatches,
        "hidden": list(cfg.train.network.hidden),
        "update_agent_steps_per_s": upd_rate,
        "acting_agent_steps_per_s": act_rate,
        "update_s": update_s,
        "loss_path": cfg.train.loss_path,
        "reference_agent_steps_per_s": agent_steps / ref_s,
        "reference_s": ref_s,
        # median over pairs (A B A B ...) of the reference's time / the update's, and its range
        "speedup_vs_reference": ratio and ratio["median"],
        "speedup_range": ratio and [ratio["min"], ratio["max"]],
        "pairs": ratio and ratio["pairs"],
        "compile_s": compile_s,  # of the update (of the rollout with --acting-only)
        "acting_only": acting_only,
        "flops_per_agent_step": flops,
        "update_gflops": upd_rate * flops["update"] / 1e9,
        "acting_gflops": act_rate * flops["acting"] / 1e9,
        "matmul_gflops": peak / 1e9,
        "update_fraction_of_matmul": upd_rate * flops["update"] / peak,
        "acting_fraction_of_matmul": act_rate * flops["acting"] / peak,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if acting_only:  # strict JSON: null, not NaN
        row.update({k: None for k in ("update_agent_steps_per_s", "update_s", "update_gflops", "update_fraction_of_matmul")})
    if acting_only or not reference:
        row.update({k: None for k in ("reference_agent_steps_per_s", "reference_s", "speedup_vs_reference",
                                      "speedup_range", "pairs")})
    return row


def _ratio(row) -> str:
    lo, hi = row["speedup_range"]
    return f"{row['speedup_vs_reference']:.2f}x ({lo:.2f}-{hi:.2f})" if row["pairs"] > 1 else f"{row['speedup_vs_reference']:.2f}x"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[14, 16, 18], help="log2 of agent counts")
    ap.add_argument("--members", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--steps", type=int, default=16, help="rollout steps per update")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls (pairs with the reference) after a warm-up")
    ap.add_argument("--no-reference", action="store_true", help="skip the PureJaxRL-style reference update")
    ap.add_argument("--loss-path", choices=["fused", "traced"], help="train.loss_path (default: the config's)")
    ap.add_argument("--acting-only", action="store_true",
                    help="time acting alone (e.g. at 2^20 agents, where one update takes minutes)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/train_step.json"))
    ap.add_argument("--single", type=int, nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.single is not None:
        print(json.dumps(measure(args.single[0], args.single[1], args.steps, args.repeats, args.acting_only,
                                 not args.no_reference, args.loss_path)))
        return 0

    rows = []
    for s in args.sizes:
        for p in args.members:
            row, why = run_child("benchmarks.train_step", ["--single", str(s), str(p), "--steps", str(args.steps),
                                             "--repeats", str(args.repeats)] + ["--acting-only"] * args.acting_only
                                  + ["--no-reference"] * args.no_reference
                                  + (["--loss-path", args.loss_path] if args.loss_path else []))
            if row is None:
                print(why, file=sys.stderr)
                return 1
            rows.append(row)
            upd = "—" if row["acting_only"] else (
                f"{row['update_agent_steps_per_s']:,.0f} agent-steps/s ({row['update_fraction_of_matmul']:.0%} of matmul)"
                + (f", {_ratio(row)} the reference ({row['reference_agent_steps_per_s']:,.0f})"
                   if row["speedup_vs_reference"] else ""))
            print(
                f"N=2^{s} P={p}: update {upd}, acting {row['acting_agent_steps_per_s']:,.0f} "
                f"({row['acting_fraction_of_matmul']:.0%}), compile {row['compile_s']:.1f} s, "
                f"peak RSS {row['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    result = {
        "benchmark": "train_step",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n| agents | members | update agent-steps/s | reference agent-steps/s | update / reference | "
          "update GFLOP/s (of matmul) | acting agent-steps/s | acting GFLOP/s (of matmul) | compile s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = (f"{r['reference_agent_steps_per_s']:,.0f} | {_ratio(r)}"
               if r["speedup_vs_reference"] else "— | —")
        upd = "— | — | — | —" if r["acting_only"] else (
            f"{r['update_agent_steps_per_s']:,.0f} | {ref} | {r['update_gflops']:.1f} ({r['update_fraction_of_matmul']:.0%})")
        print(
            f"| 2^{r['agents'].bit_length() - 1} | {r['members']} | {upd} | {r['acting_agent_steps_per_s']:,.0f} | "
            f"{r['acting_gflops']:.1f} ({r['acting_fraction_of_matmul']:.0%}) | {r['compile_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
