"""When, during training, did a study's populations become one founder's clones, and when
did a group of niches die? Per run of ``agora study``'s directory, from its
``metrics.jsonl``: the first logged update at which one founding member holds every member
slot (PBT's lineage fixation; "never" if it does not happen) and the first at which the
members' mean share of work in the named niches (default: the tools chain, miner and
smith) falls below a threshold (default 1 %) and stays there to the end; a Markdown table
per condition (median and range over seeds).

    python results/niches/study_dynamics.py STUDY_DIR [--niches miner smith] [--below 0.01]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from analysis.files import read_jsonl  # noqa: E402


def run_events(run_dir: Path, niche_idx: list[int], below: float) -> dict:
    """``{"fixation": update | None, "dies": update | None, "updates": last update}``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    rows, _ = read_jsonl(path)  # a run writing its last line right now: that line is skipped
    fixation = next((m["update"] for m in rows if len(set(np.ravel(m["founder"]).tolist())) == 1), None)
    share = np.array([np.asarray(m.get("member_niche_shares", m.get("niche_shares")), np.float64).mean(0)[niche_idx].sum()
                      for m in rows])  # niche_shares: the name before 2026-12-07
    alive = np.flatnonzero(share >= below)
    last_alive = alive[-1] if alive.size else -1
    dies = rows[last_alive + 1]["update"] if last_alive + 1 < len(rows) else None
    return {"fixation": fixation, "dies": dies, "updates": rows[-1]["update"]}


def study_events(study_dir: Path, niches: list[str], below: float) -> dict[str, dict[str, dict]]:
    results = json.loads((study_dir / "results.json").read_text())
    names = results["niche_names"]
    unknown = [n for n in niches if n not in names]
    if unknown:
        raise ValueError(f"unknown niches {unknown}; the study's niches are {names}")
    idx = [names.index(n) for n in niches]
    return {cond: {seed: run_events(study_dir / d, idx, below) for seed, d in c["run_dirs"].items()}
            for cond, c in results["conditions"].items()}


def _summary(values: list, last: int) -> str:
    hit = sorted(v for v in values if v is not None)
    if not hit:
        return f"never (by {last})"
    s = f"{int(np.median(hit))} [{hit[0]}, {hit[-1]}]"
    return s if len(hit) == len(values) else f"{s}; {len(values) - len(hit)} of {len(values)} never"


def format_events_md(events: dict[str, dict[str, dict]], niches: list[str], below: float) -> str:
    lines = [f"| condition | seeds | one founder holds every slot (update) | {' + '.join(niches)} below "
             f"{below:.0%} of work for good (update) |", "|:---|---:|---:|---:|"]
    for cond, runs in events.items():
        if not runs:
            continue
        last = max(r["updates"] for r in runs.values())
        lines.append(f"| {cond} | {len(runs)} | {_summary([r['fixation'] for r in runs.values()], last)} | "
                     f"{_summary([r['dies'] for r in runs.values()], last)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study_dir", type=Path)
    ap.add_argument("--niches", nargs="+", default=["miner", "smith"])
    ap.add_argument("--below", type=float, default=0.01)
    args = ap.parse_args(argv)
    try:
        events = study_events(args.study_dir, args.niches, args.below)
    except (OSError, ValueError, KeyError) as e:
        print(f"study_dynamics: {e}", file=sys.stderr)
        return 2
    print("(median [min, max] over seeds; metrics are logged every few updates)\n")
    print(format_events_md(events, args.niches, args.below), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
