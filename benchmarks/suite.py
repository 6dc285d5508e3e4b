"""The benchmark suite: environment step, acting and the full self-play update, at a list
of sizes and device counts, against the machine's measured limits.

First, in a subprocess with one device, the machine's limits: memory bandwidth (the best
of a jitted in-place ``x * 1.0001 + 1``, bytes read + written, and a ``sum``, bytes read,
over a 256 MB float32 array) and the float32 matmul rate (4096^3). Then, for each device
count D (``--devices``: D virtual CPU devices via
``XLA_FLAGS=--xla_force_host_platform_device_count=D``, the agent axis split by whole
markets) and each size N = 2^s (``--sizes``; M = max(N/1024, lcm of the Ds) markets, so
every D runs the same economy), one fresh subprocess per (kind, N, D):

* ``env``: ``step`` inside ``lax.scan`` with actions on the device (benchmarks/env_step.py);
* ``acting``: the trainer's rollout alone, environment + policy sampling of ``--members``
  members (benchmarks/train_step.py);
* ``update``: one jitted self-play update: rollout, GAE, PPO epochs, PBT; beside it, in
  the same subprocess, the same update written the straightforward PureJaxRL way
  (benchmarks/reference_ppo.py, on the default device) and Agora's as a multiple of it.

Acting and update build the Trainer with ``mesh.agents=D``. Each row gives agent-steps/s,
compile seconds and peak RSS, and XLA's own estimate (``compiled.cost_analysis()``: FLOPs
and bytes accessed) of the timed program, as an achieved FLOP/s and bytes/s and as
fractions of the measured matmul rate and bandwidth. XLA counts a loop body once whatever
its trip count, so the estimate comes from loop-free variants (one step; for the update
one step, one epoch, one minibatch) scaled by the trip counts (an estimate; see
train_step.xla_estimate), compiled after the timing; a sharded program's analysis is of
one device's part, so it is multiplied by D. Acting and update rows also give the
network's FLOPs counted from its layer sizes (``layer_*``, as train_step.py).

Writes one JSON file (machine, limits, rows, scaling, compile time against N, errors)
after every row, and a Markdown report: a table per kind, throughput with D devices over
throughput with one, compile time against N. A failing subprocess is reported (its
stderr tail), the others still run, and the exit status is 1. On a 2-core CPU virtual
devices share the cores: expect a small overhead from more devices, not a speed-up.

    python -m benchmarks.suite [--sizes 12 14 16] [--devices 1 2 4] [--kinds env acting update]
    agora bench --quick --kinds env
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.child import run_child

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("env", "acting", "update")
TITLES = {
    "env": "Environment step (lax.scan, actions on the device)",
    "acting": "Acting (rollout alone: environment + policy sampling)",
    "update": "Update (rollout + GAE + PPO epochs + PBT)",
}
QUICK = {"sizes": [10, 12], "devices": [1, 2], "members": 4, "repeats": 1, "steps": 4}
DEFAULTS = {"sizes": [12, 14, 16], "devices": [1, 2, 4], "members": 16, "repeats": 2, "steps": 16}


# ---- measurements (run in subprocesses) ----------------------------------------------
def measure_limits(array_mb: int = 256, matmul_n: int = 4096, repeats: int = 5) -> dict:
    """The machine's memory bandwidth (bytes/s) and float32 matmul rate (FLOP/s)."""
    import jax
    import jax.numpy as jnp

    from benchmarks.train_step import matmul_flops

    n = array_mb * 2**20 // 4
    x = jnp.arange(n, dtype=jnp.float32)
    # scale_add reads and writes the array in place (donated: no fresh pages to fault in).
    scale_add, total = jax.jit(lambda x: x * 1.0001 + 1, donate_argnums=0), jax.jit(jnp.sum)
    bandwidth = {"scale_add": 0.0, "sum": 0.0}
    for _ in range(repeats + 1):  # the first round compiles and warms up
        t0 = time.perf_counter()
        x = scale_add(x).block_until_ready()
        t1 = time.perf_counter()
        total(x).block_until_ready()
        t2 = time.perf_counter()
        bandwidth["scale_add"] = max(bandwidth["scale_add"], 2 * 4 * n / (t1 - t0))  # read + write
        bandwidth["sum"] = max(bandwidth["sum"], 4 * n / (t2 - t1))  # read
    del x
    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: {getattr(device, 'device_kind', str(device))}",
        "memory_bandwidth_bytes_per_s": max(bandwidth.values()),
        "bandwidth_by_kernel_bytes_per_s": bandwidth,
        "bandwidth_array_mb": array_mb,
        "matmul_flops_per_s": matmul_flops(matmul_n),
        # on an accelerator, its bf16 rate too (the tensor cores' peak is in bf16)
        "matmul_bf16_flops_per_s": matmul_flops(matmul_n, dtype="bfloat16") if device.platform != "cpu" else None,
        "matmul_n": matmul_n,
    }


def measure_one(kind: str, log2n: int, devices: int, markets: int, members: int, steps: int, repeats: int) -> dict:
    """One row: ``kind`` at N = 2^log2n agents in ``markets`` markets over ``devices`` devices."""
    n = 2**log2n
    if kind == "env":
        from benchmarks import env_step

        r = env_step.measure(log2n, steps, repeats, devices, markets=markets, xla=True)
        row = {k: r[k] for k in ("agent_steps_per_s", "agent_steps_per_s_median", "compile_s", "peak_rss_mb",
                                 "seconds", "xla_flops", "xla_bytes_accessed", "ns_per_agent_step",
                                 "state_bytes_per_agent", "reads")}  # reads: every output of the step (full)
        return {"members": None, **row}

    import jax

    from benchmarks import train_step
    from selfplay.train import Trainer

    cfg = train_step.run_config(log2n, members, steps, devices=devices, markets=markets)
    trainer = Trainer(cfg)
    ts = trainer.init(jax.random.key(0))
    ref = {}
    if kind == "update":  # in turn with the reference update (train_step.time_paired)
        compile_s, times, ref_times, ts = train_step.time_against_reference(cfg, trainer, ts, repeats)
        best = min(times)
        ref = {"reference_agent_steps_per_s": n * steps / min(ref_times),
               "speedup_vs_reference": train_step.pair_ratios(times, ref_times)["median"]}
    else:
        compile_s, best, times = train_step.time_acting(trainer, ts, repeats)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    xla = train_step.xla_estimate(cfg, ts, kind, devices)
    layer = train_step.network_flops(cfg)[kind]
    return {
        **ref,
        "members": members,
        "agent_steps_per_s": n * steps / best,
        "agent_steps_per_s_median": n * steps / sorted(times)[len(times) // 2],
        "compile_s": compile_s,
        "peak_rss_mb": peak_rss_mb,
        "seconds": best,
        "xla_flops": xla["flops"],
        "xla_bytes_accessed": xla["bytes_accessed"],
        "epochs": cfg.train.epochs,
        "minibatches": cfg.train.minibatches,
        "hidden": list(cfg.train.network.hidden),
        "layer_flops_per_agent_step": layer,
    }


# ---- orchestration --------------------------------------------------------------------
def markets_for(log2n: int, devices: list[int]) -> int:
    """Markets at N = 2^log2n: N/1024, at least the least common multiple of the device
    counts (every device holds whole markets; the same economy at every device count)."""
    return max(2**log2n // 1024, math.lcm(*devices))


def _check(args) -> str | None:
    """Why the requested sizes, devices and members cannot run, or None."""
    for s in args.sizes:
        n, m = 2**s, markets_for(s, args.devices)
        if n % m:
            return f"--sizes {s} with --devices {' '.join(map(str, args.devices))}: {n} agents do not split into {m} markets"
        for d in args.devices:
            if m % d:
                return f"--devices {d} does not divide the {m} markets at 2^{s} agents"
        if set(args.kinds) - {"env"} and (n // m) % args.members:
            return f"--members {args.members} must divide the {n // m} agents per market at 2^{s} agents"
    return None


def _fractions(row: dict, limits: dict | None) -> None:
    s = row["seconds"]
    row["xla_flops_per_s"] = row["xla_flops"] / s
    row["xla_bytes_per_s"] = row["xla_bytes_accessed"] / s
    layer = row.get("layer_flops_per_agent_step")
    if layer is not None:
        row["layer_flops_per_s"] = layer * row["agent_steps_per_s"]
    ok = bool(limits)
    row["fraction_of_bandwidth"] = row["xla_bytes_per_s"] / limits["memory_bandwidth_bytes_per_s"] if ok else None
    row["fraction_of_matmul"] = row["xla_flops_per_s"] / limits["matmul_flops_per_s"] if ok else None
    if layer is not None:
        row["layer_fraction_of_matmul"] = row["layer_flops_per_s"] / limits["matmul_flops_per_s"] if ok else None


def scaling(rows: list[dict]) -> list[dict]:
    """Throughput with D devices over throughput with one device, per kind and size."""
    base = {(r["kind"], r["log2n"]): r for r in rows if r["devices"] == 1}
    out = []
    for r in rows:
        b = base.get((r["kind"], r["log2n"]))
        if b is not None and r["devices"] != 1:
            out.append({"kind": r["kind"], "log2n": r["log2n"], "devices": r["devices"],
                        "throughput_ratio": r["agent_steps_per_s"] / b["agent_steps_per_s"]})
    return out


def compile_vs_n(rows: list[dict]) -> list[dict]:
    """Compile seconds against N per kind and device count, and largest-N / smallest-N."""
    out = []
    for kind in KINDS:
        for d in sorted({r["devices"] for r in rows if r["kind"] == kind}):
            rs = sorted((r for r in rows if r["kind"] == kind and r["devices"] == d), key=lambda r: r["log2n"])
            if rs:
                out.append({"kind": kind, "devices": d, "log2n": [r["log2n"] for r in rs],
                            "compile_s": [r["compile_s"] for r in rs],
                            "largest_over_smallest": rs[-1]["compile_s"] / rs[0]["compile_s"]})
    return out


def machine_info() -> dict:
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "jax": version("jax"),
        "jaxlib": version("jaxlib"),
        "backend": "cpu",
        "compilation_cache": os.environ.get("JAX_COMPILATION_CACHE_DIR"),
    }


# ---- report ---------------------------------------------------------------------------
def _si(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    for div, p in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f} {p}{unit}"
    return f"{x:.2f} {unit}".rstrip()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %" if x >= 0.001 else f"{100 * x:.3f} %"


def markdown(result: dict) -> str:
    m, lim, cfg, rows = result["machine"], result["limits"], result["config"], result["rows"]
    out = [f"# Agora benchmark suite ({result['created']})", ""]
    out.append(f"Machine: {m['platform']}, {m['processor']}, {m['cpus']} CPUs; python {m['python']}, "
               f"jax {m['jax']}, jaxlib {m['jaxlib']}.")
    if lim:
        bw = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in lim["bandwidth_by_kernel_bytes_per_s"].items())
        bf16 = lim.get("matmul_bf16_flops_per_s")
        out.append(f"Limits (one device, {lim.get('device', 'not recorded')}): memory bandwidth "
                   f"**{lim['memory_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s** "
                   f"(best over a {lim['bandwidth_array_mb']} MB float32 array; GB/s by kernel: {bw}); "
                   f"float32 matmul {lim['matmul_n']}^3 **{lim['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s**"
                   + (f"; bf16 matmul **{bf16 / 1e9:.1f} GFLOP/s**" if bf16 else "") + ".")
    else:
        out.append("Limits: not measured (see errors); fractions are left out.")
    out.append(f"Settings: sizes 2^{', 2^'.join(map(str, cfg['sizes']))}; devices {', '.join(map(str, cfg['devices']))} "
               f"(virtual CPU devices sharing the cores); {cfg['steps']} steps per scan / rollout; "
               f"{cfg['members']} members; best of {cfg['repeats']} after a warm-up."
               + (" Compile times may include persistent-cache hits." if m.get("compilation_cache") else ""))
    out.append("Bandwidth and matmul fractions use XLA's cost estimate of each program (bytes accessed, FLOPs); "
               "layer FLOPs are the network's multiply-adds counted from its layer sizes.")
    for kind in KINDS:
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        layer = kind != "env"
        out += ["", f"## {TITLES[kind]}" + (f", {rs[0]['members']} members" if layer else ""), ""]
        head = ["agents", "devices", "agent-steps/s", "ns/agent-step", "XLA bytes/s (of bandwidth)",
                "XLA FLOP/s (of matmul)"] + (["layer FLOP/s (of matmul)"] if layer else []) + ["compile s", "peak RSS MB"]
        if kind == "update":
            head += ["reference agent-steps/s", "update / reference"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in sorted(rs, key=lambda r: (r["log2n"], r["devices"])):
            cells = [f"2^{r['log2n']}", str(r["devices"]), _si(r["agent_steps_per_s"]),
                     f"{1e9 / r['agent_steps_per_s']:.1f}",
                     f"{_si(r['xla_bytes_per_s'], 'B/s')} ({_pct(r['fraction_of_bandwidth'])})",
                     f"{_si(r['xla_flops_per_s'], 'FLOP/s')} ({_pct(r['fraction_of_matmul'])})"]
            if layer:
                cells.append(f"{_si(r['layer_flops_per_s'], 'FLOP/s')} ({_pct(r['layer_fraction_of_matmul'])})")
            cells += [f"{r['compile_s']:.1f}", f"{r['peak_rss_mb']:.0f}"]
            if kind == "update":
                cells += [_si(r.get("reference_agent_steps_per_s")), f"{r['speedup_vs_reference']:.2f}x"
                          if r.get("speedup_vs_reference") else "-"]
            out.append("| " + " | ".join(cells) + " |")
    sc = result["scaling"]
    if sc:
        ds = sorted({s["devices"] for s in sc})
        out += ["", "## Scaling 1 -> D devices (agent-steps/s with D devices / with 1 device)", ""]
        out += ["| kind | agents | " + " | ".join(f"D={d}" for d in ds) + " |", "|---|---|" + "---|" * len(ds)]
        for kind in KINDS:
            for s in sorted({x["log2n"] for x in sc if x["kind"] == kind}):
                by_d = {x["devices"]: x["throughput_ratio"] for x in sc if x["kind"] == kind and x["log2n"] == s}
                out.append(f"| {kind} | 2^{s} | " + " | ".join(f"{by_d[d]:.2f}" if d in by_d else "-" for d in ds) + " |")
    cv = result["compile_vs_n"]
    if cv:
        out += ["", "## Compile time vs N (seconds)", ""]
        lines = []
        for c in cv:
            pts = ", ".join(f"2^{s}: {t:.1f}" for s, t in zip(c["log2n"], c["compile_s"]))
            lines.append(f"- {c['kind']}, {c['devices']} device{'s' * (c['devices'] > 1)}: {pts} "
                         f"(largest / smallest N: {c['largest_over_smallest']:.2f}x)")
        out += lines
        spread = [c for c in cv if len(c["log2n"]) > 1]
        if spread:
            worst = max(spread, key=lambda c: c["largest_over_smallest"])
            d = worst["devices"]
            out += ["", f"Compile time vs N: from the smallest to the largest N the compile time changes by at most "
                    f"{worst['largest_over_smallest']:.2f}x ({worst['kind']}, {d} device{'s' * (d > 1)}; "
                    f"{2 ** (max(worst['log2n']) - min(worst['log2n']))}x more agents)."]
    if result["errors"]:
        out += ["", "## Errors", ""]
        for e in result["errors"]:
            what = "limits" if e["kind"] == "limits" else f"{e['kind']} 2^{e['log2n']} agents, {e['devices']} devices"
            out += [f"- {what}: {e['message'].splitlines()[0]}"]
    return "\n".join(out) + "\n"


# ---- command line ---------------------------------------------------------------------
def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DEFAULTS
    ap.add_argument("--sizes", type=int, nargs="+", help=f"log2 of agent counts (default {' '.join(map(str, d['sizes']))})")
    ap.add_argument("--devices", type=int, nargs="+", help=f"device counts (default {' '.join(map(str, d['devices']))})")
    ap.add_argument("--members", type=int, help=f"population members for acting and update (default {d['members']})")
    ap.add_argument("--steps", type=int, help=f"environment steps per scan / rollout steps per update (default {d['steps']})")
    ap.add_argument("--repeats", type=int, help=f"timed calls after a warm-up; the best counts (default {d['repeats']})")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="what to measure (default: all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/suite.json"), help="JSON file (default %(default)s)")
    ap.add_argument("--md", default=str(ROOT / "benchmarks/results/suite.md"), help="Markdown file (default %(default)s)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny smoke run: sizes 10 12, devices 1 2, members 4, 4 steps, 1 repeat, smaller limit kernels "
                         "(options given explicitly still apply)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per subprocess (default %(default)s)")
    ap.add_argument("--single", nargs=3, metavar=("KIND", "LOG2N", "DEVICES"), help=argparse.SUPPRESS)
    ap.add_argument("--markets", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--limits", action="store_true", help=argparse.SUPPRESS)
    return ap


def main(argv=None, prog: str | None = None) -> int:
    ap = _parser(prog)
    args = ap.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if min(args.sizes) < 1 or min(args.devices) < 1 or args.members < 1 or args.steps < 1 or args.repeats < 1:
        ap.error("sizes, devices, members, steps and repeats must be positive")

    if args.limits:  # child: the machine's limits
        print(json.dumps(measure_limits(64, 2048, 3) if args.quick else measure_limits()))
        return 0
    if args.single:  # child: one row
        kind, log2n, devices = args.single[0], int(args.single[1]), int(args.single[2])
        row = measure_one(kind, log2n, devices, args.markets, args.members, args.steps, args.repeats)
        print(json.dumps(row))
        return 0

    problem = _check(args)
    if problem:
        ap.error(problem)
    args.kinds = [k for k in KINDS if k in args.kinds]
    t_start = time.perf_counter()
    result = {
        "benchmark": "suite",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "config": {k: getattr(args, k) for k in ("sizes", "devices", "members", "steps", "repeats", "kinds", "quick")},
        "limits": None,
        "rows": [],
        "scaling": [],
        "compile_vs_n": [],
        "errors": [],
        "complete": False,
        "wall_s": 0.0,
    }
    out, md = Path(args.out), Path(args.md)

    def write():
        result["scaling"] = scaling(result["rows"])
        result["compile_vs_n"] = compile_vs_n(result["rows"])
        result["wall_s"] = time.perf_counter() - t_start
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(markdown(result))

    def fail(what: dict, message: str):
        result["errors"].append({**what, "message": message})
        label = "limits" if what["kind"] == "limits" else f"{what['kind']} 2^{what['log2n']} devices={what['devices']}"
        print(f"FAILED {label}: {message}", file=sys.stderr, flush=True)

    quick = ["--quick"] if args.quick else []
    limits, why = run_child("benchmarks.suite", ["--limits", *quick], 1, args.timeout)
    if limits is None:
        fail({"kind": "limits", "log2n": None, "devices": 1}, why)
    else:
        result["limits"] = limits
        bf16 = limits.get("matmul_bf16_flops_per_s")
        print(f"limits on {limits.get('device', '?')}: memory bandwidth "
              f"{limits['memory_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, float32 matmul "
              f"{limits['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s"
              + (f", bf16 matmul {bf16 / 1e9:.1f} GFLOP/s" if bf16 else ""), flush=True)
    write()

    for kind in args.kinds:
        for d in args.devices:
            for s in args.sizes:
                m = markets_for(s, args.devices)
                child = ["--single", kind, str(s), str(d), "--markets", str(m), "--members", str(args.members),
                         "--steps", str(args.steps), "--repeats", str(args.repeats)]
                t0 = time.perf_counter()
                row, why = run_child("benchmarks.suite", child, d, args.timeout)
                if row is None:
                    fail({"kind": kind, "log2n": s, "devices": d}, why)
                    write()
                    continue
                row = {"kind": kind, "log2n": s, "agents": 2**s, "markets": m, "devices": d, "steps": args.steps,
                       "repeats": args.repeats, **row, "wall_s": time.perf_counter() - t0}
                _fractions(row, result["limits"])
                result["rows"].append(row)
                write()
                print(f"{kind:6} N=2^{s:<2} devices={d}: {row['agent_steps_per_s']:>12,.0f} agent-steps/s  "
                      f"bandwidth {_pct(row['fraction_of_bandwidth'])}  matmul {_pct(row['fraction_of_matmul'])}  "
                      f"compile {row['compile_s']:.1f} s  peak RSS {row['peak_rss_mb']:.0f} MB  "
                      f"({row['wall_s']:.0f} s)", flush=True)

    result["complete"] = not result["errors"]
    write()
    print()
    print(markdown(result))
    print(f"wrote {out} and {md} ({result['wall_s']:.0f} s)")
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
