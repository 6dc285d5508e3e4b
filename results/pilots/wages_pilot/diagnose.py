"""The wages pilot's two measurements, on the held-out evaluation worlds and keys of ``agora eval``.

1. ``shares``: every agent bound to a niche by fixed shares (the market frontier's player:
   the scripted orders for its niche): mean utility per agent-step of each niche's agents,
   and the economy's. Is the allocation an equilibrium of private incentives?

       python results/pilots/wages_pilot/diagnose.py shares '[0.224, 0.220, ...]' [key=value ...]

2. ``run``: a trained run's population against the same economy at fixed shares (its own
   mix by default, or given ones): how often an agent changes niche from one step to the
   next, its skill in the niche it works, the share of working agent-steps without a unit
   of work (no inputs), and utility.

       python results/pilots/wages_pilot/diagnose.py run RUN_DIR ['[shares]']

The overrides of ``shares`` apply to ``configs/demo.yaml`` (e.g. the treasury of a
condition); ``run`` plays the run's own economy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from agents.scripted import ScriptedConfig, scripted_actions  # noqa: E402
from analysis.frontier import assign_niches  # noqa: E402
from economy import Economy, eval_keys, rollout  # noqa: E402

WORLDS, STEPS, BURN_IN = 8, 100, 25


def _metrics(J: int):
    def metrics(env, state, info, actions):
        worked = info["niche"]
        on = jax.nn.one_hot(worked, J + 1, dtype=jnp.float32)[:, :J]
        skill = jnp.take_along_axis(state.skills, jnp.minimum(worked, J - 1)[:, None], -1)[:, 0]
        working = worked < J
        return {"niche": worked, "utility": jnp.mean(info["utility"]), "by_niche": info["utility"] @ on,
                "agents": on.sum(0), "skill": jnp.sum(jnp.where(working, skill, 0.0)), "working": jnp.sum(working),
                "idle": jnp.sum(working & (info["units"] == 0)), "project": jnp.mean(info["project"].astype(jnp.float32))}
    return metrics


def play(env: Economy, policy, worlds: int = WORLDS) -> dict:
    """Means over the evaluation worlds of ``policy(key, state)``, steps from ``BURN_IN`` on."""
    run = jax.jit(lambda k, s: rollout(env, policy, k, s, STEPS, _metrics(env.num_niches)))
    out = []
    for world, key in eval_keys(env, worlds):
        _, state = env.reset(world)
        _, m = jax.device_get(run(key, state))
        m = {k: v[BURN_IN:] for k, v in m.items()}
        n = m["niche"]
        out.append({
            "utility": float(m["utility"].mean()),
            "by_niche": m["by_niche"].sum(0) / np.maximum(m["agents"].sum(0), 1),
            "shares": m["agents"].sum(0) / (n.shape[0] * n.shape[1]),
            "switch_rate": float(np.mean(n[1:] != n[:-1])),
            "skill": float(m["skill"].sum() / max(m["working"].sum(), 1)),
            "idle": float(m["idle"].sum() / max(m["working"].sum(), 1)),
            "project": float(m["project"].mean()),
        })
    return {k: np.mean([o[k] for o in out], 0) for k in out[0]}


def fixed(env: Economy, shares) -> dict:
    cfg = env.cfg
    niche = jnp.tile(assign_niches(jnp.asarray(shares, jnp.float32), cfg.agents_per_market), cfg.num_markets)
    return play(env, lambda k, s: scripted_actions(env, k, s, ScriptedConfig(), niche=niche))


def show(label: str, names, r: dict) -> None:
    print(f"{label}: utility {r['utility']:.4f}, project stock {r['project']:.0f}, niche switches per agent-step "
          f"{r['switch_rate']:.3f}, skill where working {r['skill']:.3f}, working without a unit {r['idle']:.3f}")
    for name, s, u in zip(names, r["shares"], r["by_niche"]):
        print(f"  {name:11s} share {s:.3f}  utility per agent-step {u:.3f}")


def main(argv) -> None:
    if argv[:1] == ["shares"]:
        from selfplay.config import load_run_config

        cfg = load_run_config("configs/demo.yaml", argv[2:]).economy
        env = Economy(cfg)
        show("fixed shares", cfg.niche_names, fixed(env, json.loads(argv[1])))
    elif argv[:1] == ["run"]:
        from selfplay.evaluate import load_run

        cfg, trainer, ts = load_run(argv[1])
        env = trainer.env
        learned = play(env, trainer.policy_with(trainer.players_params(ts)))
        show("learned", env.niche_names, learned)
        shares = json.loads(argv[2]) if len(argv) > 2 else list(learned["shares"] / learned["shares"].sum())
        show("the same economy at fixed shares " + json.dumps([round(float(x), 3) for x in shares]), env.niche_names,
             fixed(env, shares))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
