"""Drive Agora's economy through PettingZoo's ParallelEnv API with random actions and print
the mean utility per agent-step (what any PettingZoo learner sees).

    pip install -e ".[pettingzoo]"
    python examples/pettingzoo_random.py [--agents 1024] [--steps 50] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from economy.interop.pettingzoo import parallel_env  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=1024)
    ap.add_argument("--markets", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    env = parallel_env("configs/economy/default.yaml", num_agents=args.agents, num_markets=args.markets,
                       episode_length=args.steps, render_mode="ansi")
    observations, infos = env.reset(seed=args.seed)
    for agent in env.possible_agents:  # reproducible random actions
        env.action_space(agent).seed(args.seed)
        break
    total, steps = 0.0, 0
    while env.agents:
        actions = {agent: env.action_space(agent).sample() for agent in env.agents}
        observations, rewards, terminations, truncations, infos = env.step(actions)
        total += float(np.mean(list(rewards.values())))
        steps += 1
    print(env.render())
    print(f"{steps} steps of {env.max_num_agents} agents with random actions: mean utility {total / steps:.4f} per agent-step")
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
