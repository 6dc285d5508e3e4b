"""Mutation testing of the newer modules with cosmic-ray (``make mutants``).

For each module: a scratch copy of the repository (tracked and untracked, not ignored,
files), so the work tree is never edited; ``cosmic-ray init`` lists the mutants of the
module; operators outside the realistic set below are skipped (``cr-filter-operators``),
as are lines marked ``# pragma: no mutate`` (``cr-filter-pragma``); ``cosmic-ray baseline``
checks the module's fast tests pass unmutated; ``cosmic-ray exec`` runs them once per
mutant, each in a fresh Python process (``pytest -x``, a mutant is killed at the first
failing test). The score per module goes to ``results/mutation/<module>.json``: date,
commit, killed / survived / equivalent / timed out, and every survivor with its diff and,
when ``results/mutation/equivalent.yaml`` explains it, why it is equivalent.

    python tools/mutants.py                       # every module (hours on 2 cores)
    python tools/mutants.py selfplay/population.py --jobs 2
    python tools/mutants.py --report              # rewrite the JSON from finished sessions

A session is kept under ``--work`` (default ``$AGORA_MUTANTS`` or
``~/.cache/agora/mutants``) and resumes where it stopped.

Why cosmic-ray: it applies each mutant to the file on disk and runs the test command as a
new process, so every mutant is traced and compiled by JAX afresh. mutmut 3 forks one
process that has already run the tests and switches mutants at run time through
trampolines: a forked child would reuse ``jax.jit`` caches traced without the mutant and
report false survivors, and forking a process with XLA's threads running can deadlock.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures as cf
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "mutation"

# The module -> its fast tests: files, and a pytest -k expression choosing tests in them
# (test file names match too, so "test_rewards or pbt" keeps all of test_rewards.py).
MODULES: dict[str, tuple[list[str], str]] = {
    "selfplay/population.py": (["tests/test_behaviours.py", "tests/test_train.py"],
                               "test_behaviours or pbt_sources or registered_fitness or lineage_cap or "
                               "reward_weight_ranges or league_refreshes or pbt_copy"),
    "selfplay/variants.py": (["tests/test_variants.py", "tests/test_behaviours.py", "tests/test_train.py"],
                             "test_variants or perturbation or pbt_copy or reward_weight_ranges"),
    "selfplay/rewards.py": (["tests/test_rewards.py", "tests/test_layout.py"], "test_rewards or social_component"),
    "selfplay/evaluate.py": (["tests/test_evaluate.py", "tests/test_behaviours.py"],
                             "test_evaluate or league_players"),
    "selfplay/study.py": (["tests/test_study_files.py"], ""),
    "selfplay/checkpoint.py": (["tests/test_checkpoints.py"], ""),
    "selfplay/run.py": (["tests/test_run.py"], ""),
    "economy/production.py": (["tests/test_production.py", "tests/test_behaviours.py", "tests/test_env.py",
                               "tests/test_registry.py", "tests/test_treasury.py", "tests/test_catalogues.py"],
                              "test_production or skill or learning_by_doing or public_project or ledger_every_mode or observed_niche_values "
                              "or near_cap or niche_recipe or tooled or congestion or readme_rule or procurement or without_the_rule"),
    "economy/interop/pettingzoo.py": (["tests/test_pettingzoo.py"], ""),
    "analysis/study_report.py": (["tests/test_study_report.py", "tests/test_results.py"], ""),
}

# Modules mutated only in part: the top-level functions and classes named (the issue asks
# for the guard and the lock of selfplay/run.py, not its logging and dashboards).
SCOPE: dict[str, tuple[str, ...]] = {
    "selfplay/run.py": ("RunDirLocked", "NonFiniteError", "run_dir_lock", "inject_nan", "nonfinite_report",
                        "set_aside", "prepare_run_dir", "train_run", "_train_locked"),
}

# Realistic one-token bugs: a sign, an operator swapped for its sibling, an off-by-one
# comparison, a flipped boolean or condition, a constant off by one, a decorator dropped,
# a loop that never runs, a break for a continue. The other binary-operator swaps cosmic-ray
# makes (a + b -> a << b, ...) crash at once and only inflate the score.
KEEP = {
    "ReplaceBinaryOperator": ["Add_Sub", "Sub_Add", "Mul_Div", "Div_Mul", "FloorDiv_Div", "Div_FloorDiv",
                              "Mod_FloorDiv", "Pow_Mul", "BitOr_BitAnd", "BitAnd_BitOr", "BitXor_BitOr"],
    "ReplaceComparisonOperator": ["Lt_LtE", "LtE_Lt", "Gt_GtE", "GtE_Gt", "Eq_NotEq", "NotEq_Eq", "Is_IsNot",
                                  "IsNot_Is", "In_NotIn", "NotIn_In", "Lt_Gt", "Gt_Lt"],
    "ReplaceUnaryOperator": ["USub_UAdd", "Delete_Not", "Delete_USub"],
}


def exclude_patterns() -> list[str]:
    """``cr-filter-operators`` regexes: every operator of the families above except the kept ones."""
    return [rf"core/{family}_(?!(?:{'|'.join(kept)})$)" for family, kept in KEEP.items()]


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def copy_repo(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files of the work tree into ``dest``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def flat_name(module: str) -> str:
    """``selfplay/population.py`` -> ``selfplay__population``: the module's session folder and
    its results file."""
    return module.replace("/", "__").removesuffix(".py")


def session_dir(work: Path, module: str) -> Path:
    return work / flat_name(module)


def prepare(module: str, work: Path, timeout: float, fresh: bool) -> Path:
    d = session_dir(work, module)
    if fresh and d.exists():
        shutil.rmtree(d)
    repo, db, cfg = d / "repo", d / "session.sqlite", d / "cosmic-ray.toml"
    if db.exists():
        return d  # resume
    d.mkdir(parents=True, exist_ok=True)
    (d / "commit").write_text(commit())  # the commit whose module (and tests) the session mutates
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir()
    copy_repo(repo)
    command = _command(module, repo)
    cfg.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{module}"\n'
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f'test-command = "{command}"\n'
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
        "[cosmic-ray.filters.operators-filter]\n"
        f"exclude-operators = {json.dumps(exclude_patterns())}\n"
    )
    run = lambda *a: subprocess.run(a, cwd=repo, check=True, capture_output=True, text=True)  # noqa: E731
    run(tool("cosmic-ray"), "init", str(cfg), str(db))
    run(tool("cr-filter-operators"), str(db), str(cfg))
    run(tool("cr-filter-pragma"), str(db))
    skip_annotations(db, repo / module)
    if module in SCOPE:
        skip_outside(db, repo / module, SCOPE[module])
    return d


def scope_spans(path: Path, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """``(first line, last line)`` of each top-level function or class of ``path`` named in
    ``names`` (decorators included); raises if one is missing, so a renamed function is not
    silently left out."""
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in names:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            found[node.name] = (first, node.end_lineno)
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"mutants: {path} has no top-level {', '.join(missing)} (tools/mutants.py SCOPE)")
    return list(found.values())


def skip_outside(db: Path, module: Path, names: tuple[str, ...]) -> int:
    """Mark the mutants outside the scoped functions and classes (:data:`SCOPE`) as skipped;
    returns how many."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans = scope_spans(module, names)
    n = 0
    with use_db(str(db), WorkDB.Mode.open) as work_db:
        for item in list(work_db.work_items):
            line = item.mutations[0].start_pos[0]
            if not any(a <= line <= b for a, b in spans):
                work_db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
                n += 1
    return n


def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """``((line, col), (end line, end col))`` of every type annotation of ``path``: with
    ``from __future__ import annotations`` they are never evaluated, so a mutant inside one
    (``str | Path`` -> ``str & Path``) cannot change behaviour."""
    spans = []
    for node in ast.walk(ast.parse(path.read_text())):
        notes = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            notes = [node.returns] + [x.annotation for x in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]
                                      if x is not None]
        elif isinstance(node, ast.AnnAssign):
            notes = [node.annotation]
        spans += [((n.lineno, n.col_offset), (n.end_lineno, n.end_col_offset)) for n in notes if n is not None]
    return spans


def skip_annotations(db: Path, module: Path) -> int:
    """Mark the mutants inside type annotations as skipped (see :func:`annotation_spans`);
    only in a module that postpones its annotations. Returns how many."""
    if "from __future__ import annotations" not in module.read_text():
        return 0
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans = annotation_spans(module)
    n = 0
    with use_db(str(db), WorkDB.Mode.open) as work_db:
        for item in list(work_db.work_items):
            pos = tuple(item.mutations[0].start_pos)  # 1-based line, 0-based column, as ast's
            if any(a <= pos < b for a, b in spans):
                work_db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
                n += 1
    return n


def execute(module: str, work: Path, timeout: float, fresh: bool) -> str:
    d = prepare(module, work, timeout, fresh)
    repo, db, cfg = d / "repo", d / "session.sqlite", d / "cosmic-ray.toml"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    base = subprocess.run([tool("cosmic-ray"), "baseline", str(cfg)], cwd=repo, env=env, capture_output=True, text=True)
    if base.returncode:
        return f"{module}: the fast tests fail unmutated; fix them first\n{base.stdout[-2000:]}{base.stderr[-2000:]}"
    subprocess.run([tool("cosmic-ray"), "exec", str(cfg), str(db)], cwd=repo, env=env, check=True)
    return report(module, work)


def retest(module: str, work: Path, timeout: float, only: list[str] | None = None) -> str:
    """Run the module's recorded survivors (``results/mutation/<module>.json``, equivalent
    ones left out) again against the work tree's tests as they are now: how a new test is
    checked to kill what it was written for. Needs only the committed record, not the
    session: each mutant is applied to a fresh copy with ``cosmic-ray apply`` (its diff
    checked against the recorded line and text, so a mutant that moved since the record is
    refused rather than applied elsewhere) and the file restored after. The record is updated in place
    (killed ones counted as ``killed_on_retest``, ``retest_commit``); a session, if kept,
    gets the outcomes in ``retest.json`` so ``--report`` agrees. ``only``: these survivors'
    keys (``function:line:operator:occurrence``), not all of them."""
    path = OUT / f"{flat_name(module)}.json"
    if not path.exists():
        return f"{module}: no record in {path.relative_to(ROOT)}; run the mutants first"
    record = json.loads(path.read_text())
    if subprocess.run(["git", "diff", "--quiet", record["commit"], "--", module], cwd=ROOT).returncode:
        print(f"{module}: changed since the record's commit {record['commit'][:7]}: each survivor is checked to "
              "apply where it was recorded, and code added since is not in the record (--fresh mutates it)",
              flush=True)
    equivalent = _equivalent().get(module, {})
    repo = session_dir(work, module) / "retest"
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    copy_repo(repo)
    command = _command(module, repo)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    base = subprocess.run(command, shell=True, cwd=repo, capture_output=True, env=env)
    if base.returncode:  # otherwise every survivor would count as killed
        return (f"{module}: the fast tests fail unmutated in the copy (exit {base.returncode}); fix them first\n"
                + base.stdout.decode(errors="replace")[-2000:])
    original = (repo / module).read_bytes()
    done = {}
    for s in record["survivors"]:
        if equivalent.get(s["mutant"]) or (only and s["mutant"] not in only):
            continue
        occurrence = s["mutant"].rsplit(":", 1)[1]
        subprocess.run([tool("cosmic-ray"), "apply", module, s["operator"], occurrence], cwd=repo, check=True,
                       capture_output=True)
        try:
            lines, applied = _changed_lines((repo / module).read_bytes(), original)
            recorded = _recorded_lines(s["diff"])
            if s["line"] not in lines or (recorded and applied != recorded):
                raise SystemExit(f"{module}: mutant {s['mutant']} applies at lines {lines} as {applied}, recorded at "
                                 f"line {s['line']} as {recorded}; run the module's mutants afresh (--fresh)")
            r = subprocess.run(command, shell=True, cwd=repo, capture_output=True, timeout=timeout, env=env)
            done[s["mutant"]] = "survived" if r.returncode == 0 else "killed"
        except subprocess.TimeoutExpired:
            done[s["mutant"]] = "killed"
        finally:
            (repo / module).write_bytes(original)
        print(f"  {s['mutant']}: {done[s['mutant']]}", flush=True)
    session = session_dir(work, module) / "session.sqlite"
    if session.exists():
        kept = session.parent / "retest.json"
        old = json.loads(kept.read_text())["outcomes"] if kept.exists() else {}
        kept.write_text(json.dumps({"commit": commit(), "outcomes": {**old, **done}}, indent=1) + "\n")
    if not done:
        return f"{module}: no survivor retested (none left, or none named by --only)"
    killed = {k for k, v in done.items() if v == "killed"}
    record["survivors"] = [s for s in record["survivors"] if s["mutant"] not in killed]
    record["killed"] += len(killed)
    record["killed_on_retest"] = record.get("killed_on_retest", 0) + len(killed)
    # the commit whose tests killed them; a work tree with uncommitted changes is said so
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "tests"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    record["retest_commit"] = commit() + (" with uncommitted test changes (commit them and say which)" if dirty else "")
    path.write_text(json.dumps(rescore(record), indent=1) + "\n")
    write_index()
    return f"{module}: {len(killed)} of {len(done)} survivors killed on retest; score {record['score']}"


def _changed_lines(mutated: bytes, original: bytes) -> tuple[list[int], list[str]]:
    """The (1-based) numbers and the text, blanks removed, of the lines a mutant changed."""
    a, b = original.decode().splitlines(), mutated.decode().splitlines()
    changed = [(i + 1, "".join(y.split())) for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return [i for i, _ in changed], [t for _, t in changed]


def _recorded_lines(diff: str) -> list[str]:
    return ["".join(line[1:].split()) for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]


def rescore(record: dict) -> dict:
    """The record's survivors judged again against ``equivalent.yaml`` (a reason added or
    removed since), the counts and the score recomputed."""
    equivalent = _equivalent().get(record["module"], {})
    for s in record["survivors"]:
        s["equivalent"] = equivalent.get(s["mutant"])
    record["equivalent"] = sum(1 for s in record["survivors"] if s["equivalent"])
    record["survived"] = len(record["survivors"]) - record["equivalent"]
    caught = record["killed"] + record["timeout"] + record["incompetent"]
    scored = caught + record["survived"]
    record["score"] = round(caught / scored, 4) if scored else None
    return record


def _command(module: str, repo: Path) -> str:
    """The module's fast tests as one shell command, run in ``repo`` (a fresh process per
    mutant; the copy first on the path, since the package is installed editable from the
    work tree; one pytest worker; stop at the first failure)."""
    files, k = MODULES[module]
    tests = " ".join(t for t in files if (repo / t).exists()) + (f" -k '{k}'" if k else "")
    return f"env PYTHONPATH={repo} {sys.executable} -m pytest -x -q -p no:cacheprovider {tests}"


def _equivalent() -> dict:
    path = OUT / "equivalent.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def _key(m: dict) -> str:
    return f"{m['definition_name']}:{m['start_pos'][0]}:{m['operator_name'].removeprefix('core/')}:{m['occurrence']}"


def report(module: str, work: Path) -> str:
    d = session_dir(work, module)
    dump = subprocess.run([tool("cosmic-ray"), "dump", str(d / "session.sqlite")], capture_output=True, text=True,
                          check=True).stdout
    equivalent = _equivalent().get(module, {})
    retested = json.loads((d / "retest.json").read_text()) if (d / "retest.json").exists() else {"outcomes": {}}
    counts = {"killed": 0, "survived": 0, "equivalent": 0, "timeout": 0, "incompetent": 0, "pending": 0,
              "killed_on_retest": 0}
    survivors = []
    for line in dump.splitlines():
        item, result = json.loads(line)
        if result is None:
            counts["pending"] += 1
            continue
        if result.get("worker_outcome") == "skipped":
            continue
        m = item["mutations"][0]
        outcome, test_outcome = result.get("worker_outcome"), result.get("test_outcome")
        if outcome == "abnormal":
            counts["timeout"] += 1  # a mutant that hangs the tests is caught (the suite would not finish)
        elif test_outcome == "killed":
            counts["killed"] += 1
        elif test_outcome == "incompetent":
            counts["incompetent"] += 1
        elif retested["outcomes"].get(_key(m)) == "killed":
            counts["killed"] += 1
            counts["killed_on_retest"] += 1
        else:
            key = _key(m)
            why = equivalent.get(key)
            counts["equivalent" if why else "survived"] += 1
            survivors.append({"mutant": key, "line": m["start_pos"][0], "function": m["definition_name"],
                              "operator": m["operator_name"], "equivalent": why,
                              "diff": "\n".join(result.get("diff") or [])[-1500:] if isinstance(result.get("diff"), list)
                              else (result.get("diff") or "")[-1500:]})
    caught = counts["killed"] + counts["timeout"] + counts["incompetent"]
    scored = caught + counts["survived"]
    record = {
        "module": module,
        "date": dt.date.today().isoformat(),
        "commit": (d / "commit").read_text().strip() if (d / "commit").exists() else commit(),
        "tool": "cosmic-ray " + subprocess.run([tool("cosmic-ray"), "--version"], capture_output=True,
                                               text=True).stdout.split()[-1],
        "operators": {"kept": KEEP, "other families": "all of cosmic-ray's core operators"},
        "retest_commit": retested.get("commit"),  # survivors run again against the tests of this commit
        "tests": {"files": MODULES[module][0], "k": MODULES[module][1]},
        "scope": list(SCOPE.get(module, ("the whole module",))),
        **counts,
        "score": round(caught / scored, 4) if scored else None,  # killed / non-equivalent (timeouts count as killed)
        "survivors": survivors,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    name = flat_name(module)
    (OUT / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    write_index()
    return f"{module}: {caught} killed, {counts['survived']} survived, {counts['equivalent']} equivalent, " \
           f"{counts['pending']} pending; score {record['score']}"


def write_index() -> Path:
    """``results/mutation/README.md``: one row per module with a committed score (written
    from the JSON files, so it cannot disagree with them)."""
    rows = []
    for m in MODULES:
        path = OUT / f"{flat_name(m)}.json"
        if not path.exists():
            rows.append(f"| `{m}` | not yet run | | | | | |")
            continue
        r = json.loads(path.read_text())
        part = f" ({', '.join(SCOPE[m])} only)" if m in SCOPE else ""
        rows.append(f"| `{m}`{part} | {r['date']} | {r['commit'][:7]}"
                    + (f" (survivors retested at {r['retest_commit'][:7]})" if r.get("retest_commit") else "")
                    + f" | {r['killed'] + r['timeout'] + r['incompetent']} | {r['survived']} | {r['equivalent']}"
                    f" | {r['score']} |")
    text = (
        "# Mutation testing: scores per module\n\n"
        "Written by `tools/mutants.py` (`make mutants`, cosmic-ray; see docs/cli.md) from the JSON files here:\n"
        "each lists the module's fast tests, the operators used, and every survivor with its diff and, when it\n"
        "cannot change behaviour, why (`equivalent.yaml`). Score: killed / (killed + survived); equivalent\n"
        "mutants are left out; a mutant that hangs the tests counts as killed. Aim: at least 0.85 per module.\n\n"
        "| module | date | commit | killed | survived | equivalent | score |\n|---|---|---|---:|---:|---:|---:|\n"
        + "\n".join(rows) + "\n"
    )
    out = OUT / "README.md"
    out.write_text(text)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help=f"modules (default: all of {', '.join(MODULES)})")
    ap.add_argument("--jobs", type=int, default=1, help="modules mutated at once")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds one mutant's tests may take")
    ap.add_argument("--work", default=os.environ.get("AGORA_MUTANTS", str(Path.home() / ".cache/agora/mutants")))
    ap.add_argument("--fresh", action="store_true", help="start the sessions anew instead of resuming")
    ap.add_argument("--report", action="store_true", help="only rewrite results/mutation (from kept sessions, else from the records and equivalent.yaml)")
    ap.add_argument("--retest", action="store_true", help="run the recorded survivors again against the tests as they are now")
    ap.add_argument("--only", action="append", default=[], metavar="KEY",
                    help="with --retest: only this survivor (function:line:operator:occurrence, as in the record); repeatable")
    args = ap.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        print(f"mutants: unknown module(s) {unknown}; known: {list(MODULES)}", file=sys.stderr)
        return 2
    modules, work = args.modules or list(MODULES), Path(args.work)
    if args.retest:
        if args.only:
            known = {sv["mutant"] for m in modules if (OUT / f"{flat_name(m)}.json").exists()
                     for sv in json.loads((OUT / f"{flat_name(m)}.json").read_text())["survivors"]}
            unknown = sorted(set(args.only) - known)
            if unknown:
                print(f"mutants: --only {unknown}: not a survivor in the records of {modules}", file=sys.stderr)
                return 2
        for m in modules:
            if (OUT / f"{flat_name(m)}.json").exists():
                print(retest(m, work, args.timeout, args.only), flush=True)
        return 0
    if args.report:  # from a kept session, else the committed record judged against equivalent.yaml again
        for m in modules:
            path = OUT / f"{flat_name(m)}.json"
            if (session_dir(work, m) / "session.sqlite").exists():
                print(report(m, work))
            elif path.exists():
                r = rescore(json.loads(path.read_text()))
                path.write_text(json.dumps(r, indent=1) + "\n")
                print(f"{m}: {r['survived']} survived, {r['equivalent']} equivalent; score {r['score']}")
        write_index()
        return 0
    with cf.ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(lambda m: execute(m, work, args.timeout, args.fresh), modules):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
