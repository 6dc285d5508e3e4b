"""Environment throughput: ``step`` inside ``lax.scan`` with actions already on the device.

For each N (default 2^12 ... 2^20 agents, M = N/1024 markets, the default catalogue:
G = 6 goods, J = 7 niches, L = 64 ticks) a fresh subprocess measures:
agent-steps/s, compile seconds, state bytes per agent and peak RSS. ``--devices D``
shards the agent axis by whole markets over D host devices (on a CPU, virtual devices
let XLA run markets on several cores). Every output of the step is read (the whole
observation, the reward and the infos: what a policy and a learner read; ``--reads reward``
gives the older, partial reading in which XLA drops most of the observation). The step's
auctions run in the native market kernel where it runs (``--auction``); ``--baseline xla``
measures the XLA auction the same way in the same run and reports the ratio. ``--peer
mpe`` measures JaxMARL's MPE ``simple_spread`` the same way in the same run (``pip install
jaxmarl``) and reports Agora's rate over it. Writes JSON (default
``benchmarks/results/env_step.json``) and prints a Markdown table.

    python -m benchmarks.env_step [--sizes 12 14 16 18 20] [--steps 20] [--devices 1] [--peer mpe] [--baseline xla]
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

from benchmarks.child import run_child

ROOT = Path(__file__).resolve().parents[1]


def xla_cost(compiled, calls: float = 1.0, devices: int = 1) -> dict:
    """XLA's own estimate (``compiled.cost_analysis()``) of the FLOPs and bytes accessed by
    ``calls`` executions of ``compiled``, summed over its ``devices`` (a sharded program's
    analysis is of one device's part). XLA counts a loop body once whatever its trip count,
    so ``compiled`` should be a loop-free (trip count 1) variant and ``calls`` its number
    of repetitions."""
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):  # older jax: one dict per executable
        ca = ca[0] if ca else {}
    ca = ca or {}
    return {
        "flops": float(ca.get("flops", 0.0)) * calls * devices,
        "bytes_accessed": float(ca.get("bytes accessed", 0.0)) * calls * devices,
    }


def read_all(tree):
    """One float32 scalar that depends on every element of every array in ``tree``: what
    a scanned step returns so that XLA computes all of its outputs (a policy reads the
    whole observation; a learner the rewards and infos)."""
    import jax
    import jax.numpy as jnp

    return sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(tree))


def top_ops(compiled, call, steps: int, top: int = 10) -> list[dict]:
    """The ``top`` operations of ``call()`` (one run of ``compiled``, a scan of ``steps``
    steps) by host time, from a ``jax.profiler`` trace: each XLA fusion or custom call
    with its milliseconds per step, its share of the traced program's operations, and the
    JAX primitives it was fused from (from the compiled HLO's metadata)."""
    import collections
    import re
    import tempfile

    import jax

    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            jax.block_until_ready(call())
        paths = sorted(Path(d).rglob("*.xplane.pb"))
        data = jax.profiler.ProfileData.from_file(str(paths[-1]))
    total = collections.Counter()
    skip = ("ThunkExecutor", "SlinkyThreadPool", "$")
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                if not ev.name.startswith(skip):
                    total[ev.name] += ev.duration_ns
    hlo = compiled.as_text()
    whole = sum(total.values()) or 1

    def sources(name: str) -> list[str]:
        m = re.search(r"^\s*%?" + re.escape(name) + r" = [^\n]*?calls=%?([\w.\-]+)", hlo, re.M)
        if not m:
            return []
        body = re.search(r"^%?" + re.escape(m.group(1)) + r" [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S)
        ops = re.findall(r'op_name="[^"]*/([\w\-]+)"', body.group(1) if body else "")
        return sorted(set(ops) - {"closed_call"})

    return [{"op": name, "ms_per_step": ns / 1e6 / steps, "share": ns / whole, "fused_from": sources(name)}
            for name, ns in total.most_common(top)]


def compile_and_time(run, state, actions, key, repeats: int, first: int):
    """Compile ``run(state, actions, key) -> (state, out)`` (state donated), run it once with
    ``key`` to warm up, then ``repeats`` times with ``key(first)``, ``key(first + 1)``, ...:
    ``(compile seconds, seconds of each timed run, final state, last out, the compiled program)``."""
    import jax

    t0 = time.perf_counter()
    compiled = jax.jit(run, donate_argnums=0).lower(state, actions, key).compile()
    compile_s = time.perf_counter() - t0
    state, out = compiled(state, actions, key)  # warm-up
    jax.block_until_ready(out)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        state, out = compiled(state, actions, jax.random.key(first + r))
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    return compile_s, times, state, out, compiled


def measure(log2n: int, steps: int, repeats: int, devices: int, markets: int | None = None, xla: bool = False,
            reads: str = "full", auction: str = "auto", profile: bool = False) -> dict:
    """One size: ``markets`` defaults to N/1024 (at least 1). ``xla``: also XLA's cost
    estimate of the timed program (``xla_flops``, ``xla_bytes_accessed``), from a one-step
    variant scaled by ``steps``. ``reads``: ``full`` (every output read: the whole
    observation, the reward and every info entry, as a policy and a learner would) or
    ``reward`` (the reward, one observation column and the volume: XLA then drops most of
    the observation, the rate before 2026-12-07). ``auction``: ``native`` (the market
    kernel, :mod:`economy.native`), ``xla`` (the XLA auction, the reference) or ``auto``
    (native where it runs). ``profile``: also the step's top operations (:func:`top_ops`)."""
    import jax
    import jax.numpy as jnp

    import economy

    n = 2**log2n
    markets = max(n // 1024, 1) if markets is None else markets
    cfg = economy.load_config(ROOT / "configs/economy/classic.yaml", num_agents=n, num_markets=markets)
    env = economy.Economy(cfg, native={"auto": None, "native": True, "xla": False}[auction])
    key = jax.random.key(0)
    obs, state = jax.jit(env.reset)(key)
    k_act = 4  # distinct action sets cycled through the scan
    actions = jax.jit(jax.vmap(env.sample_actions, in_axes=(0, None)))(jax.random.split(key, k_act), state)

    if devices > 1:
        from economy.sharding import agent_mesh, shard_agents, shard_state

        mesh = agent_mesh(jax.devices()[:devices])
        env.mesh = mesh
        state = shard_state(state, mesh)
        obs = shard_agents(obs, mesh)
        actions = shard_agents(actions, mesh, batch_dims=1)

    def program(steps):
        def run(state, actions, key):
            def body(carry, t):
                state, key, _ = carry
                key, key_step = jax.random.split(key)
                a = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, t % k_act, keepdims=False), actions)
                obs, state, reward, _, _, info = env.step(key_step, state, a)
                if reads == "full":  # the observation materialised in the carry, as a rollout keeps it
                    return (state, key, obs), (read_all((reward, info)), info["market_volume"].sum())
                if reads == "summed":  # every output summed inside the step (XLA may fuse the
                    # observation into the sums and never write it: the rate before 2026-12-08)
                    return (state, key, None), (read_all((obs, reward, info)), info["market_volume"].sum())
                return (state, key, None), (reward.mean() + obs[:, 0].mean(), info["market_volume"].sum())

            state, obs = state  # the observation buffer: donated with the state, so written in place
            (state, key, obs), out = jax.lax.scan(body, (state, key, obs), jnp.arange(steps))
            return (state, obs), out

        return run

    state = (state, obs if reads == "full" else None)

    compile_s, times, state, out, compiled = compile_and_time(program(steps), state, actions, key, repeats, first=1)
    ops = None
    if profile:
        holder = {"state": state}

        def call():
            holder["state"], o = compiled(holder["state"], actions, jax.random.key(99))
            return o

        ops = top_ops(compiled, call, steps)
        state = holder["state"]
    best = min(times)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state[0]))
    row = {
        "agents": n,
        "markets": cfg.num_markets,
        "goods": cfg.num_goods,
        "niches": cfg.num_niches,
        "ticks": cfg.market.price_ticks,
        "devices": devices,
        "steps": steps,
        "reads": reads,
        "auction": "native" if env.native else "xla",
        "agent_steps_per_s": n * steps / best,
        "agent_steps_per_s_median": n * steps / sorted(times)[len(times) // 2],
        "step_ms": best / steps * 1e3,
        "ns_per_agent_step": best / steps / n * 1e9,
        "compile_s": compile_s,
        "state_bytes_per_agent": state_bytes / n,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mean_volume": float(jnp.mean(out[1])),
    }
    if ops is not None:
        row["top_ops"] = ops
    if xla:
        one_step = jax.jit(program(1)).lower(state, actions, key).compile()
        cost = xla_cost(one_step, calls=steps, devices=devices)
        row.update(xla_flops=cost["flops"], xla_bytes_accessed=cost["bytes_accessed"], seconds=best)
    return row


def measure_mpe(log2n: int, steps: int, repeats: int, reads: str = "full") -> dict:
    """The peer, measured the same way: JaxMARL's MPE ``simple_spread_v3`` (3 agents per
    world) ``step_env`` vmapped over N/3 worlds inside ``lax.scan``, actions on the device
    (4 action sets cycled), every output read (all agents' observations, rewards, dones).
    Needs ``pip install jaxmarl`` (not a dependency of Agora)."""
    import jax
    import jax.numpy as jnp
    import jaxmarl

    env = jaxmarl.make("MPE_simple_spread_v3")
    worlds = max(2**log2n // env.num_agents, 1)
    keys = jax.random.split(jax.random.key(0), worlds)
    _, state = jax.jit(jax.vmap(env.reset))(keys)
    k_act = 4
    actions = {a: jax.random.randint(jax.random.key(i), (k_act, worlds), 0, 5) for i, a in enumerate(env.agents)}
    step = jax.vmap(env.step_env)

    def run(state, actions, key):
        def body(carry, t):
            state, key, _ = carry
            key, k = jax.random.split(key)
            a = {name: jax.lax.dynamic_index_in_dim(x, t % k_act, keepdims=False) for name, x in actions.items()}
            obs, state, reward, done, info = step(jax.random.split(k, worlds), state, a)
            if reads == "full":  # the observations materialised in the carry, as a rollout keeps them
                return (state, key, obs), read_all((reward, done))
            return (state, key, None), read_all((obs, reward, done))

        state, obs = state  # the observation buffers: donated with the state, so written in place
        (state, key, obs), out = jax.lax.scan(body, (state, key, obs), jnp.arange(steps))
        return (state, obs), out

    obs = jax.jit(jax.vmap(env.get_obs))(state) if reads == "full" else None
    state = (state, obs)

    compile_s, times, state, _, _ = compile_and_time(run, state, actions, jax.random.key(1), repeats, first=2)
    n = worlds * env.num_agents
    return {"peer": "jaxmarl MPE_simple_spread_v3", "agents": n, "worlds": worlds, "steps": steps, "reads": reads,
            "agent_steps_per_s": n * steps / min(times), "compile_s": compile_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[12, 14, 16, 18, 20], help="log2 of agent counts")
    ap.add_argument("--steps", type=int, default=20, help="steps per scan")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--devices", type=int, nargs="+", default=[1], help="host devices to shard over")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/env_step.json"))
    ap.add_argument("--reads", choices=["full", "summed", "reward"], default="full",
                    help="full: every output is read (the whole observation, reward, infos; default); reward: the "
                    "reward and one observation column (the rate before 2026-12-07: XLA drops most of the observation)")
    ap.add_argument("--peer", choices=["mpe"], help="also measure JaxMARL's MPE simple_spread the same way, in the "
                    "same run, at each size (needs pip install jaxmarl)")
    ap.add_argument("--auction", choices=["auto", "native", "xla"], default="auto",
                    help="the step's orders, auctions and settlement: the native market kernel, XLA's, or native "
                    "where it runs (default)")
    ap.add_argument("--baseline", choices=["xla"], help="also measure the step with XLA's auction (the reference "
                    "path, the step before the native kernel) the same way, in the same run, and report the ratio")
    ap.add_argument("--profile", action="store_true", help="also list each step's top operations (XLA fusions and "
                    "custom calls) by host time, from a jax.profiler trace")
    ap.add_argument("--single", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--single-peer", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer:  # before any measurement, so a missing peer loses nothing
        try:
            import jaxmarl  # noqa: F401
        except ImportError:
            print("--peer mpe needs JaxMARL: pip install jaxmarl", file=sys.stderr)
            return 2
        if 1 not in args.devices:
            print("--peer mpe is measured on one device: include 1 in --devices", file=sys.stderr)
            return 2

    if args.single is not None:
        print(json.dumps(measure(args.single, args.steps, args.repeats, args.devices[0], reads=args.reads,
                                 auction=args.auction, profile=args.profile)))
        return 0
    if args.single_peer is not None:
        print(json.dumps(measure_mpe(args.single_peer, args.steps, args.repeats, reads=args.reads)))
        return 0

    rows = []
    for d in args.devices:
        for s in args.sizes:
            common = ["--single", str(s), "--steps", str(args.steps), "--repeats", str(args.repeats),
                      "--devices", str(d), "--reads", args.reads]
            row, why = run_child("benchmarks.env_step", common + ["--auction", args.auction]
                                 + (["--profile"] if args.profile else []), d)
            if row is None:
                print(why, file=sys.stderr)
                return 1
            rows.append(row)
            if args.baseline:
                base, why = run_child("benchmarks.env_step", common + ["--auction", args.baseline], d)
                if base is None:
                    print(f"baseline: {why}", file=sys.stderr)
                    return 1
                row["baseline"] = base
                row["ratio_to_baseline"] = row["agent_steps_per_s"] / base["agent_steps_per_s"]
            print(
                f"N=2^{s:<2} devices={d} reads={args.reads} {row['agent_steps_per_s'] / 1e6:7.2f} M agent-steps/s  "
                f"{row['ns_per_agent_step']:6.1f} ns/agent-step  compile {row['compile_s']:5.1f} s  "
                f"state {row['state_bytes_per_agent']:.0f} B/agent  peak RSS {row['peak_rss_mb']:.0f} MB  "
                f"auction {row['auction']}" + (f"  ({row['ratio_to_baseline']:.2f}x the {args.baseline} auction's "
                                               f"{row['baseline']['agent_steps_per_s'] / 1e6:.2f})" if args.baseline else ""),
                flush=True,
            )
            for op in row.get("top_ops", []):
                print(f"        {op['ms_per_step']:7.1f} ms/step {op['share']:6.1%}  {op['op']:<32} "
                      f"{' '.join(op['fused_from'])[:80]}", flush=True)
            if args.peer and d == 1:
                peer, why = run_child("benchmarks.env_step", ["--single-peer", str(s), "--steps", str(args.steps),
                                                              "--repeats", str(args.repeats), "--reads", args.reads], 1)
                if peer is None:
                    print(f"peer: {why}", file=sys.stderr)
                    return 1
                row["peer"] = peer
                row["ratio_to_peer"] = row["agent_steps_per_s"] / peer["agent_steps_per_s"]
                print(f"        MPE simple_spread ({peer['agents']:,} agents) {peer['agent_steps_per_s'] / 1e6:7.2f} "
                      f"M agent-steps/s: Agora / MPE = {row['ratio_to_peer']:.2f}", flush=True)
    result = {
        "benchmark": "env_step",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n| agents | devices | reads | M agent-steps/s | ns/agent-step | compile s | state B/agent | peak RSS MB "
          "| MPE M agent-steps/s | Agora / MPE |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peer = r.get("peer")
        print(
            f"| 2^{r['agents'].bit_length() - 1} | {r['devices']} | {r['reads']} | {r['agent_steps_per_s'] / 1e6:.2f} | "
            f"{r['ns_per_agent_step']:.1f} | {r['compile_s']:.1f} | {r['state_bytes_per_agent']:.0f} | {r['peak_rss_mb']:.0f} | "
            + (f"{peer['agent_steps_per_s'] / 1e6:.2f} | {r['ratio_to_peer']:.2f} |" if peer else "— | — |")
        )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
