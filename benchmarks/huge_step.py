"""The huge economy on this machine: ``configs/huge.yaml`` (2^24 agents in 16,384 markets of
1024, the default catalogue, cash and holdings) reset and stepped a few times with random
valid actions, the ledger checked exactly in every market after every step (money plus
treasury unchanged, ``goods' = goods + produced - consumed``, on the host in int64), and
the peak memory reported. Exactness is per market (economy/config.py), so the world grows
by adding markets; before, the config refused this size (``num_agents * max cash`` and
``num_agents * max_holding`` had to stay below 2^31).

The speed is stated against a float32 matmul measured in the same run. Writes JSON (default
``benchmarks/results/huge_step.json``).

    python -m benchmarks.huge_step [--config configs/huge.yaml] [--steps 3] [--log2n 24]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run(config: str, steps: int, log2n: int | None) -> dict:
    import jax
    import numpy as np

    import economy
    from benchmarks.train_step import matmul_flops

    fields = {}
    if log2n is not None:  # the same markets of 1024 agents, fewer or more of them
        fields = {"num_agents": 2**log2n, "num_markets": max(2**log2n // 1024, 1)}
    cfg = economy.load_config(ROOT / config, **fields)
    env = economy.Economy(cfg)
    n, m = cfg.num_agents, cfg.num_markets
    t0 = time.perf_counter()
    _, state = jax.jit(env.reset)(env.world_key(0))
    jax.block_until_ready(state)
    reset_s = time.perf_counter() - t0
    state_gb = sum(x.nbytes for x in jax.tree.leaves(state)) / 1e9
    sample = jax.jit(env.sample_actions)
    step = jax.jit(env.step, donate_argnums=1)
    before = economy.ledger(state, per_market=True)
    rows, exact = [], True
    for t in range(steps):
        actions = sample(jax.random.key(100 + t), state)
        t0 = time.perf_counter()
        _, state, reward, _, _, info = step(jax.random.key(t), state, actions)
        jax.block_until_ready(state)
        seconds = time.perf_counter() - t0
        after = economy.ledger(state, per_market=True)
        produced, consumed = np.asarray(info["produced"], np.int64), np.asarray(info["consumed"], np.int64)
        money_ok = bool(np.array_equal(after["money"], before["money"]))
        goods_ok = bool(np.array_equal(after["goods"], before["goods"] + produced - consumed))
        exact &= money_ok and goods_ok
        rows.append({"step": t, "seconds": seconds, "money_exact_per_market": money_ok,
                     "goods_exact_per_market": goods_ok, "mean_reward": float(np.mean(np.asarray(reward))),
                     "world_money": int(after["money"].sum()), "world_goods": after["goods"].sum(0).tolist()})
        print(f"step {t}: {seconds:.2f} s (first includes the compile), ledger exact per market: "
              f"money {money_ok}, goods {goods_ok}; peak RSS {peak_rss_gb():.1f} GB", flush=True)
        before = after
    timed = [r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]]
    flops = matmul_flops()
    agent_steps = n / min(timed)
    return {
        "benchmark": "huge_step",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "device": str(jax.devices()[0])},
        "config": config, "agents": n, "markets": m, "agents_per_market": n // m, "goods": cfg.num_goods,
        "max_holding": cfg.max_holding, "cash": list(cfg.world.cash),
        "steps": steps, "ledger_exact_per_market": exact,
        "reset_s": reset_s, "first_step_s": rows[0]["seconds"], "best_step_s": min(timed),
        "agent_steps_per_s": agent_steps,
        "matmul_float32_flops": flops,
        "agent_steps_per_matmul_gflop": agent_steps / (flops / 1e9),
        "state_gb": state_gb, "state_bytes_per_agent": state_gb * 1e9 / n,
        "peak_rss_gb": peak_rss_gb(),
        "rows": rows,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/huge.yaml")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--log2n", type=int, help="agents (markets of 1024): a smaller or larger world of the same markets")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/huge_step.json"))
    args = ap.parse_args(argv)
    result = run(args.config, args.steps, args.log2n)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['agents']:,} agents in {result['markets']:,} markets: ledger exact per market "
          f"{result['ledger_exact_per_market']}; best step {result['best_step_s']:.2f} s = "
          f"{result['agent_steps_per_s'] / 1e6:.2f} M agent-steps/s ({result['agent_steps_per_matmul_gflop']:.0f} "
          f"agent-steps per GFLOP/s of float32 matmul); state {result['state_gb']:.2f} GB "
          f"({result['state_bytes_per_agent']:.0f} B/agent); peak RSS {result['peak_rss_gb']:.1f} GB; wrote {args.out}")
    return 0 if result["ledger_exact_per_market"] else 1


if __name__ == "__main__":
    sys.exit(main())
