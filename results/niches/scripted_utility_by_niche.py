"""Is a niche worth working, in utility, when everyone plays the scripted baseline? Mean
utility per agent-step of the agents by the niche they work, on the held-out evaluation
worlds of a run config (the measure of ``agora eval --against scripted``'s
``utility_by_niche``, here with scripted agents in every slot), and each niche's share of
work.

    python results/niches/scripted_utility_by_niche.py [configs/demo.yaml] [key=value ...]
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from agents.scripted import scripted_actions  # noqa: E402
from economy import Economy  # noqa: E402
from selfplay.config import load_run_config  # noqa: E402
from selfplay.evaluate import EvalSettings, play_worlds  # noqa: E402


def utility_by_niche(cfg, worlds: int = 8, steps: int = 100, burn_in: int = 25) -> dict:
    env = Economy(cfg.economy)
    s = EvalSettings(worlds, steps, burn_in, False).resolved(cfg)
    groups = np.zeros(env.cfg.num_agents, np.int64)
    u = w = 0.0
    for _, sums in play_worlds(env, functools.partial(scripted_actions, env), groups, 1, s):
        u = u + np.asarray(sums["niche_utility"], np.float64)[s.burn_in:, 0].sum(0)
        w = w + np.asarray(sums["work"], np.float64)[s.burn_in:, 0].sum(0)
    names = list(env.cfg.niche_names) + ["rest"]
    return {n: {"utility": float(a / b) if b else None, "share": float(b / w.sum())} for n, a, b in zip(names, u, w)}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    path = argv[0] if argv and "=" not in argv[0] else "configs/demo.yaml"
    cfg = load_run_config(path, [a for a in argv if "=" in a])
    for name, r in utility_by_niche(cfg).items():
        u = "-" if r["utility"] is None else f"{r['utility']:.3f}"
        print(f"{name:12s} utility per agent-step {u:>6s}   share of work {r['share']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
