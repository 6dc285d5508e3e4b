"""What playing catalogues as data costs (issue 28's speed check), in one process, A/B pairs.

At the default catalogue's sizes (configs/demo.yaml's economy, ``--agents`` agents):

* ``step``: a 10-step scan of ``Economy.step`` reading every output (observation, reward,
  infos), the compiled-catalogue economy (A) against the padded economy of the same
  catalogue (B, ``catalogues=[cfg]``, padded to its own sizes: the observation grows by
  the catalogue's features) and against a padded economy with 3 more goods and 3 more
  niches (C);
* ``network``: forward and backward (gradient of the value, the log-probability of fixed
  actions and the entropies) as the PPO loss sees each network: today's
  :class:`~agents.networks.ActorCritic` (hidden 128, 128) through
  :class:`~agents.networks.FusedPolicy` on the unpadded observation against
  :class:`~agents.networks.EntityActorCritic` (``--width``) through
  :class:`~agents.networks.EntityPolicy` on the padded one, every head;
* ``update``: one whole training update (rollout, GAE, PPO epochs) with the demo's training
  settings: the MLP on the compiled catalogue against the entity network on the padded
  economy of the same catalogue.

Each pair runs A then B (alternating) ``--repeats`` times after a warm-up; the ratio is the
median over pairs of B's time over A's, so a drift of the machine reaches both sides.
Writes JSON (default ``results/benchmarks/catalogue_cost.json``) and prints it.

    python -m benchmarks.catalogue_cost [--agents 16384] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn, *args):
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def pairs(a, b, args_a, args_b, repeats: int) -> dict:
    _timed(a, *args_a), _timed(b, *args_b)  # warm-up (compiled before)
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_timed(a, *args_a))
        tb.append(_timed(b, *args_b))
    ratios = [y / x for x, y in zip(ta, tb)]
    return {"a_s": statistics.median(ta), "b_s": statistics.median(tb), "ratio": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--width", type=int, default=64, help="the entity network's token width")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "catalogue_cost.json"))
    a = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from agents.networks import ActorCritic, EntityActorCritic, EntityPolicy, FusedPolicy
    from economy import Economy
    from economy.catalogues import Sizes
    from selfplay.config import load_run_config

    cfg = load_run_config(ROOT / "configs" / "demo.yaml").economy.model_copy(
        update={"num_agents": a.agents, "num_markets": max(1, a.agents // 1024)})
    plain = Economy(cfg)
    same = Economy(cfg, catalogues=[cfg])
    bigger = Economy(cfg, catalogues=[cfg], sizes=Sizes(cfg.num_goods + 3, cfg.num_niches + 3, len(cfg.resources) + 1))
    steps = 10

    def scan_of(env):
        def run(state, key):
            def body(s, k):
                ka, ks = jax.random.split(k)
                obs, s, r, _, _, info = env.step(ks, s, env.sample_actions(ka, s))
                leaves = [jnp.sum(obs), jnp.sum(r)] + [jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(info)]
                return s, sum(leaves)
            return jax.lax.scan(body, state, jax.random.split(key, steps))
        return jax.jit(run)

    out = {"agents": a.agents, "entity_width": a.width, "markets": cfg.num_markets, "goods": cfg.num_goods, "niches": cfg.num_niches,
           "steps": steps, "repeats": a.repeats, "machine": platform.processor() or platform.machine(),
           "devices": str(jax.devices()[0]), "date": time.strftime("%Y-%m-%d")}
    key = jax.random.key(1)
    states = {}
    for name, env in (("plain", plain), ("padded", same), ("padded_plus3", bigger)):
        _, states[name] = jax.jit(env.reset)(env.world_key(0))
        states[name] = (scan_of(env), states[name])
    (fa, sa), (fb, sb), (fc, sc) = states["plain"], states["padded"], states["padded_plus3"]
    out["step_padded_vs_plain"] = pairs(fa, fb, (sa, key), (sb, key), a.repeats)
    out["step_padded_plus3_vs_plain"] = pairs(fa, fc, (sa, key), (sc, key), a.repeats)
    for k in ("step_padded_vs_plain", "step_padded_plus3_vs_plain"):
        out[k]["a_agent_steps_per_s"] = a.agents * steps / out[k]["a_s"]
        out[k]["b_agent_steps_per_s"] = a.agents * steps / out[k]["b_s"]

    # networks: forward + backward on one world's observations, every head
    obs_a, st_a = plain.reset(plain.world_key(0))
    obs_b, st_b = same.reset(same.world_key(0))
    actions = plain.sample_actions(jax.random.key(2), st_a)
    mlp = ActorCritic(plain.action_spec, hidden=(128, 128))
    ent = EntityActorCritic(same.action_spec, goods=same.num_goods, niches=same.num_niches,
                            values=cfg.observe_values, hidden=a.width)
    pa, pb = mlp.init(jax.random.key(3), obs_a[:1]), ent.init(jax.random.key(3), obs_b[:1])

    def grad_of(view):
        def loss(p, obs):
            lp, ents, value = view.evaluate(p, obs, actions)
            return jnp.mean(lp) + sum(jnp.mean(e) for e in ents.values()) + jnp.mean(value**2)
        return jax.jit(jax.grad(loss))

    out["network_entity_vs_mlp"] = pairs(grad_of(FusedPolicy(mlp)), grad_of(EntityPolicy(ent)), (pa, obs_a), (pb, obs_b),
                                         a.repeats)
    # the whole update (rollout + PPO), demo's training settings at these agents: the MLP on the
    # compiled catalogue against the entity network on the padded economy of the same catalogue
    from selfplay.config import load_run_config as load
    from selfplay.train import Trainer

    over = [f"economy.num_agents={a.agents}", f"economy.num_markets={cfg.num_markets}"]
    run_a = load(ROOT / "configs" / "demo.yaml", over)
    run_b = load(ROOT / "configs" / "demo.yaml", over + ["economy.catalogues.train=1", "economy.catalogues.first_best=false",
                                                          "train.network.kind=entity", f"train.network.width={a.width}"])
    tr_a = Trainer(run_a)
    tr_b = Trainer(run_b, env=Economy(run_a.economy, catalogues=[run_a.economy]))  # the demo's own catalogue, padded
    class Updates:  # the update donates its state: each call carries the new one on
        def __init__(self, tr):
            self.tr, self.ts = tr, tr.init(jax.random.key(0))

        def __call__(self):
            self.ts, m = self.tr.update(self.ts)
            return m

    out["update_entity_padded_vs_mlp"] = pairs(Updates(tr_a), Updates(tr_b), (), (), a.repeats)
    out["network_params"] = {"mlp": int(sum(x.size for x in jax.tree.leaves(pa))),
                             "entity": int(sum(x.size for x in jax.tree.leaves(pb)))}
    out["obs_dim"] = {"plain": plain.obs_dim, "padded": same.obs_dim, "padded_plus3": bigger.obs_dim}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
