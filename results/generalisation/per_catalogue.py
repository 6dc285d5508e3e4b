"""Per held-out catalogue, per condition: the seeds' mean efficiency and active niches, beside
the scripted and random baselines and the catalogue's market frontier (its active niches).

Reads every run's ``eval_catalogues_both.json`` of a generalisation study directory and
writes ``per_catalogue.json`` and ``per_catalogue.md`` here:

    python results/generalisation/per_catalogue.py STUDY_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(study_dir: str) -> int:
    runs = sorted(Path(study_dir, "runs").glob("*/seed_*/eval_catalogues_both.json"))
    table: dict = {}
    base: dict = {}
    for path in runs:
        cond = path.parent.parent.name
        r = json.loads(path.read_text())
        for seed, p in r["sets"]["held_out"]["per_catalogue"].items():
            t = p["policies"]["trained"]
            table.setdefault(seed, {}).setdefault(cond, []).append((t["efficiency"], t["active_niches"]))
            base[seed] = {"scripted": p["policies"]["scripted"]["efficiency"], "random": p["policies"]["random"]["efficiency"],
                          "frontier_utility": p["frontier"]["market"]["utility"] if p["frontier"] else None,
                          "frontier_active_niches": p["frontier_active_niches"], "niches": len(p["niches"]) - 1}
    out = {"catalogues": {}}
    conds = sorted({c for v in table.values() for c in v})
    lines = ["| held-out catalogue | niches | frontier utility (active niches) | scripted | random | "
             + " | ".join(f"{c} (efficiency, active niches)" for c in conds) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(conds)]
    for seed in sorted(table):
        b = base[seed]
        row = {"baselines": b, "conditions": {}}
        cells = []
        for c in conds:
            v = np.asarray(table[seed].get(c, []), np.float64)
            if len(v):
                row["conditions"][c] = {"seeds": len(v), "efficiency": float(v[:, 0].mean()), "active_niches": float(v[:, 1].mean())}
                cells.append(f"{v[:, 0].mean():.3f}, {v[:, 1].mean():.1f} ({len(v)})")
            else:
                cells.append("—")
        out["catalogues"][seed] = row
        lines.append(f"| {seed} | {b['niches']} | {b['frontier_utility']:.3f} ({b['frontier_active_niches']}) | "
                     f"{b['scripted']:.3f} | {b['random']:.3f} | " + " | ".join(cells) + " |")
    (HERE / "per_catalogue.json").write_text(json.dumps(out, indent=1))
    (HERE / "per_catalogue.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
