"""Records on disk: reading the JSON-lines logs a run writes (``metrics.jsonl``,
``analysis.jsonl``, ``lineage.jsonl``) and writing any file atomically. Shared by the
trainer, evaluation, studies, the frontier cache and the reports, none of which needs the
others to read or write a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["by_update", "column", "read_jsonl", "update_of", "write_atomic"]


def read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    """The JSON objects of ``path`` (none if it is missing) and notes on skipped lines.
    An unparsable last line (a run writing it right now) is skipped silently."""
    if not path.is_file():
        return [], []
    lines = path.read_text(errors="replace").splitlines()
    rows, notes = [], []
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if i != last:
                notes.append(f"{path.name}: skipped unparsable line {i + 1}")
            continue
        if isinstance(obj, dict):
            rows.append(obj)
        elif i != last:
            notes.append(f"{path.name}: skipped line {i + 1} (not a JSON object)")
    return rows, notes


def update_of(r: dict) -> float:
    try:
        return float(r.get("update"))
    except (TypeError, ValueError):
        return float("nan")


def by_update(rows: list[dict]) -> list[dict]:
    """Records with a numeric ``update``, sorted by it, the last record of each update kept."""
    last = {}
    for r in rows:
        u = update_of(r)
        if np.isfinite(u):
            last[u] = r
    return [last[u] for u in sorted(last)]


def column(rows: Sequence[dict], key: str, index: str = "update") -> tuple[np.ndarray, np.ndarray] | None:
    """(updates, values stacked over rows) of ``key``, from the rows that have it with the
    shape of its last occurrence; None if no row has it."""
    pairs = []
    for r in rows:
        if key in r and r[key] is not None and index in r:
            try:
                pairs.append((float(r[index]), np.asarray(r[key], np.float64)))
            except (TypeError, ValueError):
                continue
    if not pairs:
        return None
    shape = pairs[-1][1].shape
    pairs = [(u, v) for u, v in pairs if v.shape == shape]
    return np.array([u for u, _ in pairs]), np.stack([v for _, v in pairs])


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers (another
    process, a browser, a resumed study) never see a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
