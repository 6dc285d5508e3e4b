"""Memory of one training update, from XLA's own accounting of the compiled program: the
update is lowered and compiled for abstract inputs (nothing is allocated or run), and
``compiled.memory_analysis()`` gives its arguments (the train state), outputs, buffers
donated back, and temporaries. The state is split into what grows with the members
(parameters, optimiser state) and with the agents (economy state, observations).

On the CPU this is the CPU backend's plan; a GPU compiles other fusions, so on an
accelerator it is an estimate of the same order (run it there for that device's own).

    python -m benchmarks.update_memory configs/members128.yaml [override ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tree_bytes(tree) -> int:
    import jax

    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def measure(config: str, overrides: list[str]) -> dict:
    import jax

    from selfplay.config import load_run_config
    from selfplay.train import Trainer

    cfg = load_run_config(ROOT / config, overrides)
    trainer = Trainer(cfg)
    abstract = jax.eval_shape(trainer.init_state, jax.random.key(0))
    t0 = time.perf_counter()
    compiled = trainer.update.lower(abstract).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    n, p = cfg.economy.num_agents, cfg.train.members
    members = tree_bytes((abstract.params, abstract.opt_state))
    agents = tree_bytes((abstract.env_state, abstract.obs))
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    return {
        "benchmark": "update_memory",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": str(jax.devices()[0])},
        "config": config, "overrides": overrides, "agents": n, "markets": cfg.economy.num_markets, "members": p,
        "rollout_steps": cfg.train.rollout_steps, "minibatches": cfg.train.minibatches,
        "compile_s": compile_s,
        "argument_gb": mem.argument_size_in_bytes / 1e9,
        "output_gb": mem.output_size_in_bytes / 1e9,
        "donated_gb": mem.alias_size_in_bytes / 1e9,
        "temp_gb": mem.temp_size_in_bytes / 1e9,
        "peak_gb": peak / 1e9,  # arguments + outputs not written in place + temporaries
        "members_state_mb_per_member": members / p / 1e6,  # parameters and optimiser state
        "agents_state_bytes_per_agent": agents / n,  # economy state and observations
        "peak_bytes_per_agent": peak / n,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/update_memory_<config>.json)")
    args = ap.parse_args(argv)
    row = measure(args.config, args.overrides)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"update_memory_{Path(args.config).stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2) + "\n")
    print(f"{row['agents']:,} agents, {row['members']} members: peak {row['peak_gb']:.2f} GB (arguments "
          f"{row['argument_gb']:.2f}, temporaries {row['temp_gb']:.2f}, donated {row['donated_gb']:.2f}); "
          f"{row['members_state_mb_per_member']:.2f} MB per member, {row['agents_state_bytes_per_agent']:.0f} B of state "
          f"and {row['peak_bytes_per_agent']:.0f} B of peak per agent; compiled in {row['compile_s']:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
