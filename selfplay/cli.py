"""The ``agora`` command line.

    agora simulate CONFIG [key=value ...]   run the economy with baseline agents, print a table
    agora bench [options]                   benchmark suite: env, acting, update (benchmarks/suite.py)
    agora train CONFIG [key=value ...]      population self-play (PPO, RL variants, PBT, league)
    agora eval RUN_DIR [--against RUN_B]    held-out evaluation beside the baselines (RUN_DIR/eval.json); cross-play
    agora study STUDY.yaml                  conditions x seeds: train, evaluate, aggregate with 95 % intervals
    agora report RUN_DIR                    write RUN_DIR/report.html, a self-contained HTML report
    agora frontier CONFIG [--only a,b]      the economy's welfare frontier (first-best and market), frontier.json
    agora catalogue --seed 7 [--spec FILE]  a procedurally generated catalogue, printed as economy YAML

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad config (the message names
the offending key and value), 3 a command that is not available yet.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

# Exit codes, one meaning each (docs/cli.md): 0 done; 1 failed (a bug or an unreadable
# result); 2 bad input (config keys and values, study files, damaged checkpoints, a busy run
# directory), nothing written; 3 a run stopped by its non-finite guard; 4 a command this
# version does not have; 130 interrupted (Ctrl-C), after a final checkpoint.
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NONFINITE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="agora",
        description="Agora: a JAX trading economy run by a population of learning policies.",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    sim = sub.add_parser("simulate", help="run the economy with scripted (or random) agents and print a table")
    sim.add_argument("config", help="run config YAML (e.g. configs/demo.yaml) or an economy YAML")
    sim.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. simulate.steps=20")
    sim.add_argument("--json", dest="json_out", help="also write the per-step records to this JSON file")

    train = sub.add_parser("train", help="population self-play: PPO, RL variants, PBT, league")
    train.add_argument("config", help="run config YAML (e.g. configs/demo.yaml)")
    train.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.members=8")
    train.add_argument("--run-dir", help="run directory (default: train.run_dir, {name} = the config's stem)")
    train.add_argument("--no-resume", action="store_true", help="start afresh even if the run directory has a checkpoint (the earlier run's files move to RUN_DIR/earlier/K/)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    dist = train.add_argument_group(
        "several hosts",
        "one process per host (each sees its own devices; the mesh spans all of them). Give all three, or set "
        "AGORA_COORDINATOR, AGORA_NUM_PROCESSES and AGORA_PROCESS_ID; under Slurm or Open MPI (or with "
        "--distributed) jax.distributed detects them. Only process 0 writes logs; all write checkpoints together.",
    )
    dist.add_argument("--coordinator", default=os.environ.get("AGORA_COORDINATOR"), help="HOST:PORT of process 0")
    dist.add_argument("--num-processes", type=int, default=_env_int("AGORA_NUM_PROCESSES"))
    dist.add_argument("--process-id", type=int, default=_env_int("AGORA_PROCESS_ID"))
    dist.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() with cluster auto-detection")

    from analysis.metrics import EVAL, glossary_text

    ev = sub.add_parser("eval", help="evaluate a run's population on held-out worlds beside the scripted and random baselines",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="metrics (eval.json; every metric: docs/metrics.md):\n" + glossary_text(EVAL))
    ev.add_argument("run_dir", help="run directory written by agora train")
    ev.add_argument("--update", type=int, help="evaluate the checkpoint of this update (default: the latest)")
    ev.add_argument("--worlds", type=int, default=8, help="held-out worlds (seeds economy.world.eval_seed_start + k; default 8)")
    ev.add_argument("--steps", type=int, help="steps per world (default: economy.episode_length)")
    ev.add_argument("--burn-in", type=int, help="steps not measured at the start of each world (default: steps // 4)")
    ev.add_argument("--greedy", action="store_true", help="the population plays its most likely actions")
    ev.add_argument("--against", help="cross-play: another run directory (or 'scripted') in the odd agent slots")
    ev.add_argument("--catalogues", choices=("held_out", "train", "both"),
                    help="a run over many catalogues (economy.catalogues): play each catalogue of this set, "
                    "with efficiency against its own frontier (both: also the generalisation gap); writes "
                    "RUN_DIR/eval_catalogues_SET.json")
    ev.add_argument("--no-frontier", action="store_true",
                    help="skip the distance to the welfare frontier (agora frontier; computed once per economy, then cached)")
    _budget_args(ev)

    st = sub.add_parser("study", help="conditions x seeds: train, evaluate on held-out worlds, aggregate with 95 %% intervals")
    st.add_argument("study", help="study file (e.g. configs/studies/smoke.yaml)")
    st.add_argument("--study-dir", help="study directory (default: the file's study_dir, {name} = its name)")
    st.add_argument("--shard", help="I/N: run only every N-th run starting at the I-th (1-based); "
                    "default under a Slurm job array: SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT")
    st.add_argument("--aggregate", action="store_true", help="only write results.json/.md and report.html from the complete runs")
    st.add_argument("--merge", nargs="+", default=[], metavar="RESULTS_JSON",
                    help="with --aggregate: take the runs missing here from these results.json files of the same "
                    "study (shards aggregated on other machines); runs complete here are kept")
    st.add_argument("--vmap-seeds", action="store_true",
                    help="train the seeds of each condition as one vmapped program (one device; for accelerators, "
                    "where one small population leaves the device idle; off by default: on the CPU it saves little)")
    st.add_argument("--no-progress", action="store_true", help="no progress bar")

    fr = sub.add_parser("frontier", help="the economy's welfare frontier: the planner's first-best and the best fixed "
                        "niche shares with scripted orders, on the evaluation worlds (cached; writes frontier.json)")
    fr.add_argument("config", help="run config YAML (e.g. configs/demo.yaml) or an economy YAML")
    fr.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. economy.project.gain=1.0")
    fr.add_argument("--only", help="restrict the allocation to these niches (comma-separated names)")
    fr.add_argument("--worlds", type=int, default=8, help="held-out worlds, as agora eval (default 8)")
    fr.add_argument("--steps", type=int, help="steps per world (default: economy.episode_length)")
    fr.add_argument("--burn-in", type=int, help="steps not measured at the start of each world (default: steps // 4)")
    _budget_args(fr)
    fr.add_argument("--out", help="where to write frontier.json (default: runs/frontier/CONFIG_STEM/frontier.json)")
    fr.add_argument("--recompute", action="store_true", help="ignore the cache")

    cat = sub.add_parser("catalogue", help="a procedurally generated catalogue (goods, recipes, niches, a public "
                         "project) from a seed and a spec, printed as economy YAML (analysis/catalogue.py)")
    cat.add_argument("--seed", type=int, required=True, help="the catalogue's seed")
    cat.add_argument("--spec", help="spec YAML (analysis.catalogue.CatalogueSpec: ranges of goods, niches, depth, ...)")
    cat.add_argument("--no-first-best", action="store_true",
                     help="skip the check that the planner's first-best uses at least half of the niches (it compiles "
                     "and solves the economy: seconds)")
    cat.add_argument("--out", help="also write the YAML to this file")

    report = sub.add_parser("report", help="write RUN_DIR/report.html, a self-contained HTML report of a run")
    report.add_argument("run_dir", help="run directory written by agora train (config.yaml, metrics.jsonl, ...)")

    bench = sub.add_parser(
        "bench", help="benchmark suite: environment, acting and update at several sizes and device counts "
        "(agora bench --help; benchmarks/suite.py)", add_help=False,
        prefix_chars="+",  # no options of its own: every argument, --help included, goes to the suite
    )
    bench.add_argument("args", nargs=argparse.REMAINDER)
    return ap


def _budget_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--population", type=int, help="welfare frontier: CMA-ES candidates per generation (default 10)")
    ap.add_argument("--generations", type=int, help="welfare frontier: CMA-ES generations (default 24)")


def _budget(args):
    """The frontier's search budget of ``--population``/``--generations`` (ConfigError naming a bad one)."""
    from analysis.frontier import FrontierSettings
    from economy import ConfigError

    given = {k: getattr(args, k) for k in ("population", "generations") if getattr(args, k) is not None}
    try:
        return FrontierSettings(**given)
    except ValueError as err:
        msg = "; ".join(f"--{'.'.join(map(str, e['loc']))}={e['input']!r}: {e['msg']}" for e in err.errors())
        raise ConfigError(msg) from None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def _distributed(args) -> str | None:
    """Join a multi-process run if asked to (before any JAX computation). Returns an error
    message for bad arguments, None otherwise."""
    given = {"--coordinator": args.coordinator, "--num-processes": args.num_processes, "--process-id": args.process_id}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            return f"multi-process training needs --coordinator, --num-processes and --process-id; missing {', '.join(missing)}"
        if not (args.num_processes >= 1 and 0 <= args.process_id < args.num_processes):
            return f"--process-id={args.process_id} must lie in [0, --num-processes={args.num_processes})"
        import jax

        jax.distributed.initialize(
            coordinator_address=args.coordinator, num_processes=args.num_processes, process_id=args.process_id
        )
    elif args.distributed or int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        import jax

        jax.distributed.initialize()
    return None


def _load_config(args):
    """The validated run config of ``args``, or None after printing why it is invalid."""
    from economy import ConfigError
    from selfplay.config import load_run_config

    try:
        return load_run_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"agora {args.command}: {e}", file=sys.stderr)
        return None


def _simulate(args) -> int:
    cfg = _load_config(args)
    if cfg is None:
        return EXIT_USAGE

    import json

    import numpy as np

    from selfplay.simulate import format_table, simulate_timed

    from analysis.catalogue import economy_names

    e, s = cfg.economy, cfg.simulate
    names = economy_names(e)  # a padded economy (economy.catalogues): goods and niche slots
    print(
        f"agora simulate: {e.num_agents} agents in {e.num_markets} markets, {len(names.goods)} goods, "
        f"{len(names.niches)} niches; {s.steps} steps of {s.agents} agents, world seed {s.seed}",
        flush=True,
    )
    records, timing = simulate_timed(cfg)
    print(format_table(records, names.goods, names.niches, s.print_every))
    print(
        f"\n{timing.agent_steps:,} agent-steps in {timing.run_s:.2f} s "
        f"({timing.agent_steps_per_s / 1e6:.2f} M agent-steps/s; compile {timing.compile_s:.1f} s)"
    )
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = [{k: np.asarray(v).tolist() for k, v in r._asdict().items()} for r in records]
        out.write_text(json.dumps({"goods": list(names.goods), "niches": list(names.niches), "records": rows}, indent=1))
        print(f"wrote {out}")
    return EXIT_OK


def _train(args) -> int:
    cfg = _load_config(args)
    if cfg is None:
        return EXIT_USAGE
    problem = _distributed(args)
    if problem:
        print(f"agora train: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from economy import ConfigError
    from selfplay.run import CheckpointError, NonFiniteError, train_run
    from selfplay.train import mesh_size

    try:
        mesh_size(cfg)  # more devices asked for than there are: exit 2 before anything is written
    except ConfigError as err:
        print(f"agora train: {err}", file=sys.stderr)
        return EXIT_USAGE

    run_dir = Path(args.run_dir or cfg.train.run_dir.format(name=Path(args.config).stem))
    e, t = cfg.economy, cfg.train
    print(
        f"agora train: {e.num_agents} agents in {e.num_markets} markets; {t.members} members"
        f"{f' + {t.league.size} league snapshots' if t.league.size else ''}; {t.updates} updates of "
        f"{t.rollout_steps} steps; run directory {run_dir}",
        flush=True,
    )
    try:
        ts = train_run(cfg, run_dir, resume=not args.no_resume, progress=not args.no_progress)
    except ConfigError as err:
        print(f"agora train: {err}", file=sys.stderr)
        return EXIT_USAGE
    except CheckpointError as err:  # every checkpoint damaged: bad input, named
        print(f"agora train: {err}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteError as err:
        print(f"agora train: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    print(f"done: {int(ts.update)} updates in {run_dir}; next:\n"
          f"  agora report {run_dir}              # the dashboard (report.html)\n"
          f"  agora eval {run_dir}                # held-out worlds, beside the baselines and the frontier\n"
          f"  tensorboard --logdir {run_dir / 'tb'}")
    return EXIT_OK


def _eval(args) -> int:
    """``agora eval``: RUN_DIR/eval.json (or, with --against, RUN_DIR/crossplay_NAME.json)."""
    import json

    from analysis.files import write_atomic
    from economy import ConfigError
    from selfplay.checkpoint import CheckpointError
    from selfplay.evaluate import EvalSettings, NotARunError, crossplay, evaluate_run, format_eval_table

    settings = EvalSettings(worlds=args.worlds, steps=args.steps, burn_in=args.burn_in, greedy=args.greedy)
    try:
        if args.catalogues and args.against:
            raise ConfigError("--catalogues and --against: one at a time")
        if args.catalogues:
            from selfplay.evaluate import evaluate_catalogues, format_catalogues_table

            result = evaluate_catalogues(args.run_dir, settings, args.catalogues, update=args.update,
                                         frontier=None if args.no_frontier else _budget(args),
                                         log=lambda m: print(m, flush=True))
            out = Path(args.run_dir) / f"eval_catalogues_{args.catalogues}.json"
            print(format_catalogues_table(result))
        elif args.against:
            if args.update is not None:
                raise ConfigError("--update applies to agora eval without --against")
            result = crossplay(args.run_dir, args.against, settings)
            name = "scripted" if args.against == "scripted" else Path(args.against).resolve().name
            out = Path(args.run_dir) / f"crossplay_{name}.json"
            write_atomic(out, json.dumps(result, indent=1))
            for side, m in result["sides"].items():
                shares = " ".join(f"{n}={x:.2f}" for n, x in zip(result["niche_names"], m["niche_shares"]))
                per = " ".join(f"{n}={'-' if x is None else f'{x:.3f}'}"
                               for n, x in zip(result["niche_names"], m["utility_by_niche"]))
                print(f"{side}: utility {m['utility']:.4f}, output share {m['output_share']:.3f}; niches {shares}")
                print(f"  utility per agent-step by niche worked: {per}")
        else:
            result = evaluate_run(args.run_dir, settings, update=args.update,
                                  frontier=None if args.no_frontier else _budget(args),
                                  log=lambda m: print(m, flush=True))
            out = Path(args.run_dir) / "eval.json"
            print(f"update {result['update']}: {result['worlds']} held-out worlds x {result['steps']} steps "
                  f"(burn-in {result['burn_in']})")
            print(format_eval_table(result, result["niche_names"]))
    except (ConfigError, NotARunError) as err:
        print(f"agora eval: {err}", file=sys.stderr)
        return EXIT_USAGE
    except CheckpointError as err:
        print(f"agora eval: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {out}")
    return EXIT_OK


def _study(args) -> int:
    """``agora study``: train and evaluate this process's runs, then aggregate (unsharded)."""
    from economy import ConfigError
    from selfplay.checkpoint import CheckpointError
    from selfplay.run import NonFiniteError
    from selfplay.study import aggregate, enable_compile_cache, load_study, parse_shard, run_study

    try:
        study = load_study(args.study, args.study_dir)
        shard = None if args.aggregate else parse_shard(args.shard)
        if args.merge and not args.aggregate:
            raise ConfigError("--merge works with --aggregate only (it trains nothing)")
    except ConfigError as err:
        print(f"agora study: {err}", file=sys.stderr)
        return EXIT_USAGE
    enable_compile_cache(study.study_dir)
    try:
        if not args.aggregate:
            run_study(study, shard, progress=not args.no_progress, vmap_seeds=args.vmap_seeds)
        if shard is not None:
            print(f"shard {shard[0]}/{shard[1]} done; when every shard is: agora study {args.study} --aggregate")
            return EXIT_OK
        results = aggregate(study, args.merge)
    except ConfigError as err:
        print(f"agora study: {err}", file=sys.stderr)
        return EXIT_USAGE
    except CheckpointError as err:
        print(f"agora study: {err}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteError as err:
        print(f"agora study: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if results["missing"]:
        print(f"missing runs (not in the results): {', '.join(results['missing'])}")
    print((study.study_dir / "results.md").read_text())
    print(f"wrote {study.study_dir / 'results.json'}, results.md, report.html")
    return EXIT_OK


def _report(args) -> int:
    from analysis.report import NotARunError, write_report

    try:
        path = write_report(args.run_dir)
    except NotARunError as err:
        print(f"agora report: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {path}")
    return EXIT_OK


def _catalogue(args) -> int:
    """``agora catalogue``: print the generated catalogue as YAML (exit 2 on a bad spec or
    one no draw meets)."""
    from economy import ConfigError
    from analysis import catalogue

    try:
        spec = catalogue.load_spec(args.spec)
        cfg = catalogue.generate(args.seed, spec, first_best=not args.no_first_best)
    except ConfigError as err:
        print(f"agora catalogue: {err}", file=sys.stderr)
        return EXIT_USAGE
    text = f"# agora catalogue --seed {args.seed}" + (f" --spec {args.spec}" if args.spec else "") + "\n" + catalogue.to_yaml(cfg)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text, end="")
    return EXIT_OK


def _frontier(args) -> int:
    """``agora frontier``: print both frontiers and write frontier.json (exit 2 on bad input)."""
    from economy import ConfigError

    cfg = _load_config(args)
    if cfg is None:
        return EXIT_USAGE
    import json

    from analysis.frontier import format_frontier, frontier
    from analysis.files import write_atomic
    from selfplay.evaluate import EvalSettings

    try:
        s = EvalSettings(worlds=args.worlds, steps=args.steps, burn_in=args.burn_in).resolved(cfg)
        settings = _budget(args)
        only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only is not None else None
        if args.only is not None and not only:
            raise ConfigError("--only: name at least one niche")
        e = cfg.economy
        print(f"agora frontier: {e.num_agents} agents in {e.num_markets} markets, {e.num_niches} niches; "
              f"{s.worlds} held-out worlds x {s.steps} steps (burn-in {s.burn_in})", flush=True)
        fr = frontier(e, s.worlds, s.steps, s.burn_in, only=only, settings=settings, recompute=args.recompute,
                      log=lambda m: print(m, flush=True))
    except ConfigError as err:
        print(f"agora frontier: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    out = Path(args.out) if args.out else Path("runs") / "frontier" / Path(args.config).stem / "frontier.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(fr, indent=1))
    print(("(from the cache)\n" if fr["cached"] else "") + format_frontier(fr))
    print(f"wrote {out}")
    return EXIT_OK


def _unavailable(what: str) -> int:
    print(f"agora {what}: not yet available in this version of Agora", file=sys.stderr)
    return EXIT_UNAVAILABLE


def _bench(args) -> int:
    """The benchmark suite (benchmarks/suite.py; its options, its --help)."""
    try:
        from benchmarks import suite
    except ModuleNotFoundError as e:
        if e.name not in ("benchmarks", "benchmarks.suite"):
            raise
        print("agora bench: the benchmarks package is not installed (bench runs from a source checkout: "
              "pip install -e .)", file=sys.stderr)
        return EXIT_FAIL
    try:
        return int(suite.main(args.args, prog="agora bench") or 0)
    except SystemExit as e:  # the suite's argparse: 0 after --help, 2 on bad usage
        return e.code if isinstance(e.code, int) else EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    ap = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad usage, 0 on --help
        return int(e.code or 0)
    if args.command is None:
        ap.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "train":
        return _train(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "report":
        return _report(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "study":
        return _study(args)
    if args.command == "frontier":
        return _frontier(args)
    if args.command == "catalogue":
        return _catalogue(args)
    return _unavailable(args.command)


if __name__ == "__main__":
    sys.exit(main())
