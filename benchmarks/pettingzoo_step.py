"""Agent-steps/s through the PettingZoo wrapper (economy.interop.pettingzoo) against the raw
jitted ``Economy.step`` on the same world, keys and actions, in one run: the wrapper's
cost is building per-agent dicts on the host (actions in, observations, rewards and infos
out). The actions are drawn beforehand, so neither side pays for sampling.

    python -m benchmarks.pettingzoo_step [--log2n 12] [--steps 50] [--out benchmarks/results/pettingzoo_step.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log2n", type=int, default=12)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", default=str(HERE / "results" / "pettingzoo_step.json"))
    args = ap.parse_args(argv)

    import jax
    import numpy as np

    from economy import Economy
    from economy.interop.pettingzoo import parallel_env
    from benchmarks.suite import machine_info

    n, T = 2**args.log2n, args.steps
    env = parallel_env("configs/economy/classic.yaml", num_agents=n, num_markets=max(4, n // 1024), episode_length=T + 1)
    rng = np.random.default_rng(0)
    arrays = [{h.name: rng.integers(0, h.choices, (n,) + h.shape).astype(np.int32) for h in env.economy.action_spec}
              for _ in range(T)]
    dicts = [{a: {k: v[i] for k, v in arr.items()} for i, a in enumerate(env.possible_agents)} for arr in arrays]

    def wrapper():
        env.reset(seed=0)
        for d in dicts:
            env.step(d)

    econ = Economy(env.cfg)
    step = jax.jit(econ.step)
    reset = jax.jit(econ.reset)

    def raw():
        _, state = reset(env.world_key(0))
        for t, arr in enumerate(arrays):
            out = step(env.step_key(t, 0), state, arr)
            state = out[1]
        jax.block_until_ready(state)

    timings = {}
    for name, fn in (("wrapper", wrapper), ("raw", raw)):
        fn()  # compile
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        timings[name] = n * T / best
    result = {"machine": machine_info(), "agents": n, "steps": T, "wrapper_agent_steps_per_s": timings["wrapper"],
              "raw_agent_steps_per_s": timings["raw"], "wrapper_over_raw": timings["wrapper"] / timings["raw"]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
