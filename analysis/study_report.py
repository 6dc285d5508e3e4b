"""The report of a study (``agora study``): a Markdown comparison table and one
self-contained HTML file.

A study directory holds ``results.json`` (conditions × seeds, evaluated after training,
with means and confidence intervals over seeds, the scripted and random baselines and
the welfare frontier's rows) and one run directory per condition and seed (``run_dirs``, relative to the study
directory), each with its ``metrics.jsonl``.

* :func:`format_results_md` — the comparison table as Markdown (for the terminal, a
  README or a pull request).
* :func:`write_study_report` — ``STUDY_DIR/report.html``: overview, the same comparison
  as HTML, training curves per condition (mean over seeds with a min–max band) and a
  glossary. Like the run report (:mod:`analysis.report`), with whose page helpers and
  style (:mod:`analysis.page`) it is written: images are base64 PNG data URIs, CSS is
  inline, no scripts, fonts or network references. Missing or partial ``metrics.jsonl``
  files are noted, not fatal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from analysis import plots
from analysis.files import by_update, column, read_jsonl
from analysis.metrics import REGISTRY, canonical
from analysis.page import Figures, escape, fmt, kv_table, table, write_page
from analysis.report import NotARunError, glossary_table

__all__ = [
    "BASELINES",
    "CURVE_METRICS",
    "NotAStudyError",
    "STUDY_SECTIONS",
    "band_figure",
    "format_results_md",
    "format_summary_md",
    "load_results",
    "training_curves",
    "write_study_report",
]

BASELINES = ("scripted", "random")
# (key in metrics.jsonl, figure title, y label): per-member lists, averaged over members.
CURVE_METRICS = (
    ("utility", "utility per agent-step (mean over members)", "utility"),
    ("specialisation_index", "specialisation index (mean over members)", "index"),
    ("fitness", "PBT fitness (mean over members)", "fitness"),
)
STUDY_SECTIONS = (
    ("overview", "Overview"),
    ("comparison", "Comparison"),
    ("curves", "Training curves"),
    ("glossary", "Glossary"),
)
DIGITS = 3  # significant digits of the comparison tables
VECTOR_METRICS = ("niche_shares",)  # list-valued even when every value is null


class NotAStudyError(NotARunError):
    """The directory is not a study directory (no readable ``results.json``); the message
    names it and what is wrong. A :class:`analysis.report.NotARunError`, so a ``ValueError``."""


# ---- reading --------------------------------------------------------------------------


def load_results(study_dir: str | Path) -> dict:
    """``STUDY_DIR/results.json`` as a dict; :class:`NotAStudyError` if it is missing,
    unparsable or not a JSON object."""
    d = Path(study_dir)
    if not d.exists():
        raise NotAStudyError(f"{d} is not a study directory: it does not exist")
    if not d.is_dir():
        raise NotAStudyError(f"{d} is not a study directory: it is not a directory")
    path = d / "results.json"
    if not path.is_file():
        raise NotAStudyError(
            f"{d} is not a study directory: results.json is missing ('agora study' writes it "
            "once the study's runs are evaluated)"
        )
    try:
        results = json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError as err:
        raise NotAStudyError(f"{path} could not be parsed as JSON ({err}); is the study still being written?") from err
    if not isinstance(results, dict):
        raise NotAStudyError(f"{path} is not a study's results: expected a JSON object, got {type(results).__name__}")
    return results


def _dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _conditions(results: Mapping) -> dict[str, dict]:
    return {str(k): _dict(v) for k, v in _dict(results.get("conditions")).items()}


def _baselines(results: Mapping) -> dict[str, dict]:
    b = _dict(results.get("baselines"))
    names = [n for n in BASELINES if n in b] + [n for n in b if n not in BASELINES]
    return {str(n): _dict(b[n]) for n in names}


def _frontiers(results: Mapping) -> dict[str, dict]:
    """The welfare frontier's rows (``market frontier``, ``first-best``), when the study has them."""
    return {str(n): _dict(v) for n, v in _dict(results.get("frontier")).items()}


def _seed_sort_key(s: str):
    try:
        return (0, int(s), s)
    except (TypeError, ValueError):
        return (1, 0, str(s))


def _seeds(cond: Mapping) -> list[str]:
    keys = set(_dict(cond.get("seeds"))) | set(_dict(cond.get("run_dirs")))
    return sorted((str(k) for k in keys), key=_seed_sort_key)


def _metrics(results: Mapping) -> list[str]:
    """The study's metrics in ``results["metrics"]`` order (else in order of appearance)."""
    m = results.get("metrics")
    if isinstance(m, list):
        return [str(x) for x in m]
    seen: dict[str, None] = {}
    for c in _conditions(results).values():
        for k in _dict(c.get("mean")):
            seen.setdefault(str(k))
    for b in _baselines(results).values():
        for k in b:
            seen.setdefault(str(k))
    return list(seen)


def _values_of(results: Mapping, key: str):
    for c in _conditions(results).values():
        yield _dict(c.get("mean")).get(key)
        for v in _dict(c.get("seeds")).values():
            yield _dict(v).get(key)
    for b in _baselines(results).values():
        yield b.get(key)


def _is_list_metric(results: Mapping, key: str) -> bool:
    return key in VECTOR_METRICS or any(isinstance(v, (list, tuple)) for v in _values_of(results, key))


def _number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


# ---- the comparison -------------------------------------------------------------------


def _cell(mean: Any, ci: Any = None) -> str:
    """``mean [lo, hi]`` (3 significant digits), the mean alone without an interval, "—"
    for null."""
    if mean is None or isinstance(mean, (list, tuple, dict)):
        return "—"
    s = fmt(mean, DIGITS)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and any(_number(b) for b in ci):
        s += f" [{fmt(ci[0], DIGITS)}, {fmt(ci[1], DIGITS)}]"
    return s


def _row_label(name: str, baseline: bool) -> str:
    return f"{name} (baseline)" if baseline else name


def _comparison(results: Mapping, keys: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main table: one row per condition, then per baseline; one
    column per scalar metric (or per metric of ``keys``)."""
    if keys is None:
        keys = [k for k in _metrics(results) if not _is_list_metric(results, k)]
    rows = []
    for name, c in _conditions(results).items():
        mean, ci = _dict(c.get("mean")), _dict(c.get("ci95"))
        rows.append([_row_label(name, False), *[_cell(mean.get(k), ci.get(k)) for k in keys]])
    for name, b in _baselines(results).items():
        rows.append([_row_label(name, True), *[_cell(b.get(k)) for k in keys]])
    for name, f in _frontiers(results).items():
        rows.append([f"{name} (frontier)", *[_cell(f.get(k)) for k in keys]])
    return ["condition", *keys], rows


def _vector_tables(results: Mapping) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per list-valued metric (``niche_shares``: named niches): the
    mean per condition and the baselines' values, element by element."""
    out = []
    for key in _metrics(results):
        if not _is_list_metric(results, key):
            continue
        entries = [(_row_label(n, False), _dict(c.get("mean")).get(key)) for n, c in _conditions(results).items()]
        entries += [(_row_label(n, True), b.get(key)) for n, b in _baselines(results).items()]
        entries += [(f"{n} (frontier)", f.get(key)) for n, f in _frontiers(results).items()]
        K = max((len(v) for _, v in entries if isinstance(v, (list, tuple))), default=0)
        if K == 0:
            continue
        if key == "niche_shares":
            names = [str(s) for s in (results.get("niche_names") or [])][:K]
            names += [f"niche {k}" for k in range(len(names), K)]
            title = "Mean niche shares"
        else:
            names, title = [f"[{k}]" for k in range(K)], f"Mean {key}"
        rows = []
        for label, v in entries:
            v = list(v) if isinstance(v, (list, tuple)) else []
            rows.append([label, *[_cell(v[k]) if k < len(v) else "—" for k in range(K)]])
        out.append((title, ["condition", *names], rows))
    return out


def _seed_counts(results: Mapping) -> str:
    conds = _conditions(results)
    if not conds:
        return "—"
    per = {n: _seeds(c) for n, c in conds.items()}
    sets = {tuple(s) for s in per.values()}
    if len(sets) == 1:
        seeds = next(iter(sets))
        return f"{len(seeds)}" + (f" (seeds {', '.join(seeds)})" if seeds else "")
    return ", ".join(f"{n}: {len(s)}" for n, s in per.items())


def _eval_text(results: Mapping) -> str:
    ev = results.get("eval")
    if not isinstance(ev, dict) or not ev:
        return "—"
    order = [k for k in ("worlds", "steps", "burn_in") if k in ev] + [k for k in ev if k not in ("worlds", "steps", "burn_in")]
    return ", ".join(f"{k}: {json.dumps(ev[k]) if not isinstance(ev[k], str) else ev[k]}" for k in order)


def _missing_text(m: Any) -> str:
    if isinstance(m, dict):
        cond, seed = m.get("condition"), m.get("seed")
        rest = {k: v for k, v in m.items() if k not in ("condition", "seed")}
        head = " ".join(s for s in (str(cond) if cond is not None else "", f"seed {seed}" if seed is not None else "") if s)
        tail = ", ".join(f"{k}: {v}" for k, v in rest.items())
        return f"{head} ({tail})" if head and tail else head or tail or "?"
    return str(m)


def _missing(results: Mapping) -> list[str]:
    m = results.get("missing")
    if not m:
        return []
    return [_missing_text(x) for x in (m if isinstance(m, list) else [m])]


def _study_name(results: Mapping, fallback: str = "study") -> str:
    return str(results.get("study") or fallback)


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    return lines


TABLE_GROUPS = (
    ("Outcome and niches", ("outcome", "niches", "wealth")),
    ("Dominance and diversity among the members", ("dominance", "diversity")),
    ("Distance to the welfare frontier", ("frontier",)),
)


def _table_groups(results: Mapping) -> list[tuple[str, list[str]]]:
    """The scalar metrics split into tables that fit a page: by their group in
    :mod:`analysis.metrics` (metrics it does not know in a last table)."""
    keys = [k for k in _metrics(results) if not _is_list_metric(results, k)]
    out, seen = [], set()
    for title, groups in TABLE_GROUPS:
        ks = [k for k in keys if canonical(k) in REGISTRY and REGISTRY[canonical(k)].group in groups]
        seen.update(ks)
        if ks:
            out.append((title, ks))
    rest = [k for k in keys if k not in seen]
    if rest:
        out.append(("Other metrics", rest))
    return out


def format_results_md(results: dict) -> str:
    """The comparison table of a study as Markdown: header lines (study, base config,
    seeds per condition, CI method, evaluation settings, missing runs), then one row per
    condition ("mean [lo, hi]"), per baseline and per frontier row (its value), one column per scalar metric
    of ``results["metrics"]`` in a few tables by kind (:data:`TABLE_GROUPS`, so each fits a
    page); list-valued metrics (``niche_shares``) in a last table of means. Null values
    read "—"."""
    lines = [f"## Study: {_md(_study_name(results))}", ""]
    if results.get("base"):
        lines.append(f"- Base config: `{results['base']}`")
    lines.append(f"- Seeds per condition: {_seed_counts(results)}")
    lines.append(f"- Confidence intervals: {results.get('ci_method') or '—'}")
    lines.append(f"- Evaluation: {_eval_text(results)}")
    missing = _missing(results)
    if missing:
        lines.append(f"- Missing runs ({len(missing)}):")
        lines += [f"  - {_md(m)}" for m in missing]
    for title, keys in _table_groups(results):
        header, rows = _comparison(results, keys)
        lines += ["", f"**{title}**", "", *_md_table(header, rows)]
    for title, header, rows in _vector_tables(results):
        lines += ["", f"**{title}**", "", *_md_table(header, rows)]
    return "\n".join(lines) + "\n"


def format_summary_md(results: dict, keys: Sequence[str]) -> str:
    """The comparison table restricted to the metrics ``keys`` (in that order): the table a
    README quotes from a committed ``results.json`` (tests check that it still matches)."""
    unknown = [k for k in keys if k not in _metrics(results) or _is_list_metric(results, k)]
    if unknown:
        raise ValueError(f"not scalar metrics of this study: {unknown}")
    header, rows = _comparison(results, keys)
    return "\n".join(_md_table(header, rows)) + "\n"


# ---- training curves ------------------------------------------------------------------


def _member_mean(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(updates, mean over members) of a per-member metric; NaN where no member has a value."""
    col = column(rows, key)
    if col is None:
        return None
    u, v = col
    v = v.reshape(v.shape[0], -1)
    ok = np.isfinite(v)
    n = ok.sum(1)
    mean = np.where(n > 0, np.where(ok, v, 0.0).sum(1) / np.maximum(n, 1), np.nan)
    return u, mean


def _across_seeds(series: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict | None:
    """Mean, min and max over seeds at each update some seed logged (a partial run counts
    where it has values); None without any value."""
    vals: dict[float, list[float]] = {}
    for u, m in series:
        for x, y in zip(u.tolist(), m.tolist()):
            if np.isfinite(y):
                vals.setdefault(x, []).append(y)
    if not vals:
        return None
    ups = sorted(vals)
    return {
        "updates": np.array(ups),
        "mean": np.array([np.mean(vals[x]) for x in ups]),
        "lo": np.array([min(vals[x]) for x in ups]),
        "hi": np.array([max(vals[x]) for x in ups]),
        "seeds": np.array([len(vals[x]) for x in ups]),
    }


def _run_dir(study_dir: Path, cond: Mapping, seed: str) -> Path | None:
    rd = _dict(cond.get("run_dirs")).get(seed)
    if not rd:
        return None
    p = Path(rd)
    return p if p.is_absolute() else study_dir / p


def training_curves(study_dir: str | Path, results: Mapping | None = None,
                    keys: Sequence[str] = tuple(k for k, _, _ in CURVE_METRICS)) -> tuple[dict, list[str]]:
    """Training curves of each condition from its runs' ``metrics.jsonl``: for each metric
    of ``keys`` (per-member lists), the mean over members per update, then over the seeds
    of the condition ``{"updates", "mean", "lo", "hi", "seeds"}`` (lo/hi: min/max over
    seeds; seeds: how many have the update). Returns ``({condition: {key: curve}}, notes)``;
    a condition or metric without data is left out and a missing, empty or partial metrics
    file is noted."""
    study_dir = Path(study_dir)
    results = load_results(study_dir) if results is None else results
    curves: dict[str, dict[str, dict]] = {}
    notes: list[str] = []
    for name, cond in _conditions(results).items():
        per_key: dict[str, list] = {k: [] for k in keys}
        lengths: dict[str, int] = {}
        for seed in _seeds(cond):
            where = f"condition {name}, seed {seed}"
            rd = _run_dir(study_dir, cond, seed)
            if rd is None:
                src = _dict(cond.get("merged_from")).get(seed)
                notes.append(f"{where}: merged from {src} (its run directory is not here); no curve" if src
                             else f"{where}: no run directory recorded; skipped")
                continue
            path = rd / "metrics.jsonl"
            if not path.is_file():
                notes.append(f"{where}: {path.relative_to(study_dir) if path.is_relative_to(study_dir) else path} "
                             "is missing; skipped")
                continue
            rows, bad = read_jsonl(path)
            notes += [f"{where}: {b}" for b in bad]
            rows = by_update(rows)
            if not rows:
                notes.append(f"{where}: metrics.jsonl has no updates logged; skipped")
                continue
            lengths[seed] = len(rows)
            absent = []
            for k in keys:
                s = _member_mean(rows, k)
                if s is None:
                    absent.append(k)
                else:
                    per_key[k].append(s)
            if absent:
                notes.append(f"{where}: metrics.jsonl has no {', '.join(absent)}")
        if lengths and len(set(lengths.values())) > 1:
            most = max(lengths.values())
            notes += [f"condition {name}, seed {s}: {n} of {most} logged updates (partial run)"
                      for s, n in lengths.items() if n < most]
        c = {k: a for k in keys if (a := _across_seeds(per_key[k])) is not None}
        if c:
            curves[name] = c
    return curves, notes


def band_figure(curves: Mapping[str, Mapping[str, Any]], title: str, ylabel: str) -> Figure:
    """One line per entry of ``curves`` (name → ``{"updates", "mean", "lo", "hi"}``): the
    mean over seeds with a shaded band from ``lo`` to ``hi`` (min–max over seeds)."""
    fig = Figure(figsize=(8.0, 3.6), layout="constrained")  # pragma: no mutate (presentation)
    ax = fig.add_subplot()
    lines = 0
    for name, c in curves.items():
        x = np.asarray(c["updates"], np.float64)
        y, lo, hi = (np.asarray(c[k], np.float64) for k in ("mean", "lo", "hi"))
        if x.size == 0 or not (x.shape == y.shape == lo.shape == hi.shape):
            continue
        col = plots._TAB[lines % len(plots._TAB)]
        ax.fill_between(x, lo, hi, color=col, alpha=0.2, linewidth=0)  # pragma: no mutate (presentation)
        ax.plot(x, y, lw=1.8, color=col, label=str(name),  # pragma: no mutate (presentation)
                marker="o" if x.size <= 12 else None, ms=3)  # pragma: no mutate (presentation)
        lines += 1
    plots._integer_x(ax)
    ax.set_title(title)
    ax.set_xlabel("update")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8, loc="best", ncol=1 if lines <= 8 else 2,  # pragma: no mutate (presentation)
                  title="condition (band: min–max over seeds)", title_fontsize=8)  # pragma: no mutate (presentation)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center",  # pragma: no mutate (presentation)
                transform=ax.transAxes, color="grey")
    return fig


# ---- the HTML report ------------------------------------------------------------------


def _overview(study_dir: Path, results: Mapping) -> str:
    info = [
        ("study", _study_name(results, study_dir.resolve().name)),
        ("base config", results.get("base") or "—"),
        ("seeds per condition", _seed_counts(results)),
        ("confidence intervals", results.get("ci_method") or "—"),
        ("evaluation", _eval_text(results)),
    ]
    out = kv_table(info)
    conds = _conditions(results)
    if conds:
        rows = []
        for name, c in conds.items():
            ov = c.get("overrides")
            ov = [str(o) for o in ov] if isinstance(ov, list) else ([str(ov)] if ov else [])
            dirs = _dict(c.get("run_dirs"))
            rows.append([name, "; ".join(ov) or "(none: the base config)", ", ".join(_seeds(c)) or "—",
                         ", ".join(str(dirs[s]) for s in _seeds(c) if s in dirs) or "—"])
        out += "<h3>Conditions</h3>" + table(["condition", "overrides", "seeds", "run directories"],
                                             rows, left=4)  # pragma: no mutate (alignment)
    else:
        out += '<p class="missing">results.json lists no conditions.</p>'
    missing = _missing(results)
    if missing:
        out += (f"<h3>Missing runs ({len(missing)})</h3><ul class=\"missing\">"
                + "".join(f"<li>{escape(m)}</li>" for m in missing) + "</ul>")
    else:
        out += "<p>No missing runs.</p>"
    return out


def _comparison_html(results: Mapping) -> str:
    header, rows = _comparison(results)
    ci = results.get("ci_method") or "no interval method given"
    out = (f"<p>Conditions: mean over seeds [{escape(ci)}]; baselines: their value. "
           "“—”: no value.</p>" + table(header, rows))
    for title, h, r in _vector_tables(results):
        out += f"<h3>{escape(title)}</h3>" + table(h, r)
    keys = [k for k in _metrics(results) if not _is_list_metric(results, k)]
    seed_rows = []
    for name, c in _conditions(results).items():
        vals = _dict(c.get("seeds"))
        for s in _seeds(c):
            if s in vals:
                v = _dict(vals[s])
                seed_rows.append([name, s, *[_cell(v.get(k)) for k in keys]])
    if seed_rows:
        out += ("<details><summary>Per-seed values</summary>"
                + table(["condition", "seed", *keys], seed_rows, left=2)  # pragma: no mutate (alignment)
                + "</details>")
    return out


def _curves_html(study_dir: Path, results: Mapping, figs: Figures) -> str:
    curves, notes = training_curves(study_dir, results)
    out = ("<p>Per update: the mean over a run's members, then across the seeds of a condition "
           "the mean (line) and the range from the lowest to the highest seed (band).</p>")
    out += "".join(f'<p class="note">{escape(n)}</p>' for n in notes)
    for key, title, ylabel in CURVE_METRICS:
        data = {name: c[key] for name, c in curves.items() if key in c}
        if not data:
            out += f'<p class="missing">No {escape(key)} curves: no run of the study logged {escape(key)}.</p>'
            continue
        out += f"<h3>{escape(key)}</h3>" + figs.img(f"{key} over training", lambda d=data, t=title, y=ylabel: band_figure(d, t, y))
    return out


def write_study_report(study_dir: str | Path) -> Path:
    """Write ``STUDY_DIR/report.html`` (atomically) and return its path. Raises
    :class:`NotAStudyError` if ``results.json`` is missing or unparsable."""
    study_dir = Path(study_dir)
    results = load_results(study_dir)
    figs = Figures()
    body = {
        "overview": _overview(study_dir, results),
        "comparison": _comparison_html(results),
        "curves": _curves_html(study_dir, results, figs),
        "glossary": glossary_table(_metrics(results)),
    }
    title = f"Agora study report: {_study_name(results, study_dir.resolve().name)}"
    return write_page(study_dir / "report.html", title, study_dir, STUDY_SECTIONS, body, figs.errors)
