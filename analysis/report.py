"""``agora report RUN_DIR``: one self-contained HTML file describing a run directory.

Reads what ``agora train`` writes (``config.yaml``, ``metrics.jsonl``, ``lineage.jsonl``
and, when present, ``analysis.jsonl``), and ``eval.json`` when ``agora eval`` has written
one, and writes ``RUN_DIR/report.html``: plots as
base64 PNG ``<img>`` elements, inline CSS, no scripts, fonts or network references.
Works on a finished run and on one still being written (an unparsable last line of a
JSONL file is skipped; a missing ``analysis.jsonl`` is reported as "no diversity
analysis yet").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from analysis import plots
from analysis.files import by_update, column, read_jsonl, update_of
from analysis.metrics import glossary, renamed
from analysis.page import Figures, escape, fmt, kv_table, table, write_page

__all__ = ["NotARunError", "write_report", "REQUIRED_FILES", "SECTIONS"]

REQUIRED_FILES = ("config.yaml", "metrics.jsonl")
SECTIONS = (
    ("overview", "Overview"),
    ("diversity", "Policy diversity"),
    ("kl-heatmap", "KL heat map"),
    ("niches", "Niches"),
    ("monopoly", "Dominance and concentration"),
    ("wealth", "Wealth"),
    ("prices", "Prices"),
    ("lineage", "PBT lineage"),
    ("config", "Config"),
    ("glossary", "Glossary"),
)
NO_ANALYSIS = "No diversity analysis yet (analysis.jsonl is missing or empty)."
MAX_LINEAGE_ROWS = 200
MAX_MEMBER_LINES = 12
DOMINANCE = ("largest_output_share", "largest_wealth_share", "largest_utility_share", "largest_lineage_share")


class NotARunError(ValueError):
    """The directory is not a run directory; the message names it and what is missing."""


# ---- reading --------------------------------------------------------------------------


def _per_column_series(rows: Sequence[dict], specs, names: Callable[[int], list[str]], figs: "Figures") -> str:
    """One line plot per ``(key, title, ylabel)`` of ``specs`` whose values are ``[k]`` per
    row: a line per column, named by ``names(k)``."""
    out = ""
    for key, title, ylabel in specs:
        col = column(rows, key)
        if col is None or col[1].ndim != 2:
            continue
        u, v = col
        nm = names(v.shape[1])
        out += figs.img(f"{key} over time", lambda u=u, v=v, nm=nm, t=title, y=ylabel: plots.series_figure(
            u, {nm[j]: v[:, j] for j in range(v.shape[1])}, t, y))
    return out


def _last(rows: Sequence[dict], key: str):
    for r in reversed(rows):
        if key in r and r[key] is not None:
            return r[key]
    return None


def _get(d: Any, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _names(entries: Any, n: int | None, prefix: str) -> list[str]:
    out = [str(e.get("name", f"{prefix} {i}")) if isinstance(e, dict) else str(e)
           for i, e in enumerate(entries or [])]
    if n is not None:
        out = out[:n] + [f"{prefix} {i}" for i in range(len(out), n)]
    return out


# ---- HTML pieces ----------------------------------------------------------------------

# ---- the report -----------------------------------------------------------------------


def _check_run_dir(run_dir: Path) -> None:
    if not run_dir.exists():
        raise NotARunError(f"{run_dir} is not a run directory: it does not exist")
    if not run_dir.is_dir():
        raise NotARunError(f"{run_dir} is not a run directory: it is not a directory")
    missing = [f for f in REQUIRED_FILES if not (run_dir / f).is_file()]
    if missing:
        raise NotARunError(
            f"{run_dir} is not a run directory: {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing (a run directory written by "
            f"'agora train' holds {' and '.join(REQUIRED_FILES)})"
        )


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` and return its path. Raises :class:`NotARunError`
    (naming the directory and what is missing) if ``run_dir`` is not a run directory."""
    import yaml

    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    notes: list[str] = []
    config_text = (run_dir / "config.yaml").read_text(errors="replace")
    try:
        cfg = yaml.safe_load(config_text)
    except yaml.YAMLError as err:
        cfg = None
        notes.append(f"config.yaml could not be parsed ({type(err).__name__}); defaults used")
    if not isinstance(cfg, dict):
        cfg = {}
    metrics, n1 = read_jsonl(run_dir / "metrics.jsonl")
    lineage, n2 = read_jsonl(run_dir / "lineage.jsonl")
    analysis, n3 = read_jsonl(run_dir / "analysis.jsonl")
    notes += n1 + n2 + n3
    # A resumed run re-logs the updates after its last checkpoint: keep the last record.
    metrics, analysis = by_update(metrics), by_update(analysis)
    # Today's metric names (analysis.metrics) for records an older run wrote.
    metrics, analysis = [renamed(r, train=True) for r in metrics], [renamed(r) for r in analysis]
    lineage = list({(update_of(e), e.get("child")): e for e in lineage}.values())

    ctx = _Context(run_dir, cfg, metrics, lineage, analysis)
    figs = Figures()
    body = {sid: fn(ctx, figs) for sid, fn in _BUILDERS.items()}
    body["config"] = f"<pre>{escape(config_text)}</pre>"
    body["glossary"] = glossary_table()
    notes += figs.errors

    title = f"Agora run report: {run_dir.resolve().name}"
    return write_page(run_dir / "report.html", title, run_dir, SECTIONS, body, notes)


class _Context:
    def __init__(self, run_dir: Path, cfg: dict, metrics: list, lineage: list, analysis: list):
        self.run_dir, self.cfg, self.metrics, self.lineage, self.analysis = run_dir, cfg, metrics, lineage, analysis
        econ = cfg.get("economy") if isinstance(cfg.get("economy"), dict) else {}
        train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
        self.econ, self.train = econ, train
        reward = _last(metrics, "reward")
        self.P = len(reward) if isinstance(reward, list) else int(train.get("members") or 0)
        # Niches (without "rest"): J from the data when there is any, names from the config.
        occ, hhi = _last(metrics, "occupancy"), _last(analysis, "hhi")
        J = len(occ) - 1 if isinstance(occ, list) and occ else len(hhi) if isinstance(hhi, list) else None
        self.niche_names = _names(econ.get("niches"), J, "niche")
        self.niches_rest = self.niche_names + ["rest"]
        price = _last(metrics, "market_price") or _last(analysis, "trade_volume")
        self.good_names = _names(econ.get("goods"), len(price) if isinstance(price, list) else None, "good")
        self.last_update = int(_last(metrics, "update") or 0)

    def eval(self) -> dict | None:
        """``RUN_DIR/eval.json`` (``agora eval``), None when absent or unreadable."""
        path = self.run_dir / "eval.json"
        try:
            e = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return None
        return e if isinstance(e, dict) and isinstance(e.get("policies"), dict) else None

    def eval_trained(self) -> dict | None:
        """The trained population's metrics of ``eval.json``."""
        e = self.eval()
        t = e["policies"].get("trained") if e else None
        return t if isinstance(t, dict) else None

    def member_series(self, key: str) -> tuple[np.ndarray, dict] | None:
        """(updates, lines) of a per-member metric: one line per member, or the mean,
        min and max over members when there are more than ``MAX_MEMBER_LINES``."""
        col = column(self.metrics, key)
        if col is None:
            return None
        u, v = col
        if v.ndim != 2:
            return u, {key: v}
        if v.shape[1] > MAX_MEMBER_LINES:
            return u, {"mean over members": v.mean(1), "min": v.min(1), "max": v.max(1)}
        return u, {f"m{p}": v[:, p] for p in range(v.shape[1])}


def glossary_table(names=None) -> str:
    """The glossary of ``names`` (default: every metric) as an HTML table, from
    :mod:`analysis.metrics` (one definition each); the run and study reports' last section."""
    return table(["metric", "unit", "definition"], [list(g) for g in glossary(names)], left=3)


def _why_no_analysis(c: "_Context") -> str:
    """Why a run has no analysis yet, and what to set."""
    an = c.train.get("analysis") if isinstance(c.train.get("analysis"), dict) else {}
    every = an.get("every", 10)
    if every == 0:
        return "train.analysis.every is 0 (never): set it to a number of updates to analyse the population."
    if isinstance(every, int) and c.last_update < every:
        return (f"The run has reached update {c.last_update}; the first analysis comes at update {every} "
                f"(train.analysis.every={every}): train longer or set train.analysis.every lower.")
    return f"train.analysis.every={every}: analysis.jsonl should have lines by update {c.last_update}; was it deleted?"


def _missing_analysis(c: "_Context") -> str:
    return f'<p class="missing">{escape(NO_ANALYSIS)} {escape(_why_no_analysis(c))}</p>'


def _overview(c: _Context, figs: Figures) -> str:
    planned = c.train.get("updates")
    league = _get(c.train, "league", "size", default=0) or 0
    info = [
        ("run", c.run_dir.resolve().name),
        ("updates reached / planned", f"{c.last_update:,} / {fmt(planned)}"),
        ("members", f"{c.P}" + (f" (+ {league} league snapshots)" if league else "")),
        ("agents", f"{fmt(c.econ.get('num_agents'))} in {fmt(c.econ.get('num_markets'))} markets"),
        ("goods / niches", f"{len(c.good_names)} / {len(c.niche_names)}"),
        ("logged updates", f"{len(c.metrics)} in metrics.jsonl, {len(c.analysis)} in analysis.jsonl"),
        ("PBT copies", f"{len(c.lineage)}"),
    ]
    out = kv_table(info)
    a = c.analysis[-1] if c.analysis else {}
    util = _last(c.metrics, "utility")
    conc = "—"
    if isinstance(a.get("niche_concentration_niche"), int):  # over niches with >= 1% of all output
        j = a["niche_concentration_niche"]
        who = (a.get("niche_largest_member") or [None] * (j + 1))[j] if j >= 0 else None
        name = (c.niche_names[j] if j < len(c.niche_names) else f"niche {j}") if j >= 0 else None
        conc = (f"{fmt(a.get('niche_concentration'), 3)} ({name}, member {who})" if j >= 0
                else "no niche makes 1% of output")
    finals = [
        ("mean utility per agent-step", fmt(np.mean(util)) if util else "—"),
        ("kl_mean (nats)", fmt(a.get("kl_mean"))),
        ("js_mean (nats)", fmt(a.get("js_mean"))),
        ("effective_policies", fmt(a.get("effective_policies"))),
        ("occupancy_entropy (nats)", fmt(a.get("occupancy_entropy"))),
        ("largest_output_share (the largest member's share of all output)", fmt(a.get("largest_output_share"), 3)),
        ("niche_concentration (the largest member's share of one niche)", conc),
        ("gini (wealth)", fmt(a.get("gini"))),
    ]
    at = f" (analysis at update {a['update']})" if "update" in a else ""
    out += f"<h3>Final numbers{escape(at)}</h3>" + table(["quantity", "value"], finals)
    out += _members_table(c)
    out += _eval_table(c)
    if not c.analysis:
        out += _missing_analysis(c)
    if not c.metrics:
        return out + '<p class="missing">No updates logged yet (metrics.jsonl is empty).</p>'
    s = c.member_series("utility")
    if s:
        out += figs.img("utility per member", lambda: plots.series_figure(
            s[0], s[1], "utility per agent-step, per member", "utility"))
    s = c.member_series("fitness")
    if s:
        out += figs.img("PBT fitness per member", lambda: plots.series_figure(
            s[0], s[1], "PBT fitness per member", "fitness"))
    return out


def _eval_table(c: _Context) -> str:
    """``agora eval``'s numbers (RUN_DIR/eval.json), when the run has been evaluated: one
    column per policy, one row per metric (the names of eval.json and results.json)."""
    e = c.eval()
    if e is None:
        return ""
    pols = list(e["policies"])
    rows = []
    for k in next(iter(e["policies"].values()), {}):
        vals = [e["policies"][p].get(k) for p in pols]
        if any(isinstance(v, list) for v in vals):
            continue
        rows.append([k, *[fmt(v, 4) for v in vals]])
    head = (f"<h3>Held-out evaluation (agora eval: update {fmt(e.get('update'))}, {fmt(e.get('worlds'))} worlds x "
            f"{fmt(e.get('steps'))} steps, burn-in {fmt(e.get('burn_in'))})</h3>")
    fr = e.get("frontier")
    if isinstance(fr, dict) and isinstance(fr.get("market"), dict) and isinstance(fr.get("first_best"), dict):
        head += (f"<p>Welfare frontier of this economy on the same worlds (agora frontier): market frontier "
                 f"{fmt(fr['market'].get('utility'), 4)} (best fixed niche shares with scripted orders), first-best "
                 f"{fmt(fr['first_best'].get('utility'), 4)} (a planner's steady state); <code>efficiency</code> is "
                 f"utility over the market frontier.</p>")
    return head + table(["metric", *pols], rows)


def _members_table(c: _Context) -> str:
    """Each member's hyperparameters and, beside them, its reward weights (the slot's
    experimental condition), its fitness and founding member, at the last logged update."""
    variants = _get(c.train, "variants", default={}) or {}
    hyper = [k for k in variants if k != "rewards"] if isinstance(variants, dict) else []
    weights = _last(c.metrics, "reward_weights")
    weights = weights if isinstance(weights, dict) else {}
    last = {k: _last(c.metrics, k) for k in (*hyper, "fitness", "founder")}
    cols = [k for k in hyper if isinstance(last[k], list)]
    comps = [k for k, v in weights.items() if isinstance(v, list)]
    if not (cols or comps) or not c.P:
        return ""
    pick = lambda v, p: v[p] if isinstance(v, list) and p < len(v) else None
    rows = [
        [f"m{p}", *[fmt(pick(last[k], p), 4) for k in cols], *[fmt(pick(weights[k], p), 3) for k in comps],
         fmt(pick(last["fitness"], p), 4), fmt(pick(last["founder"], p))]
        for p in range(c.P)
    ]
    header = ["member", *cols, *[f"weight: {k}" for k in comps], "fitness", "founder"]
    return (f"<h3>Members at update {c.last_update}</h3><p>Hyperparameters (after PBT) and reward weights "
            "(each slot's condition; copied by PBT only when <code>train.pbt.inherit</code> lists them).</p>"
            + table(header, rows))


def _diversity(c: _Context, figs: Figures) -> str:
    if not c.analysis:
        return _missing_analysis(c)
    out = ""
    series = {k: column(c.analysis, k) for k in ("kl_mean", "js_mean")}
    series = {k: v for k, v in series.items() if v is not None}
    if series:
        u = next(iter(series.values()))[0]
        data = {k: v[1] for k, v in series.items() if v[0].shape == u.shape}
        out += figs.img("mean KL and JS over time", lambda: plots.series_figure(
            u, data, "mean pairwise divergence between members", "nats"))
    eff = column(c.analysis, "effective_policies")
    if eff is not None:
        out += figs.img("effective number of policies", lambda: plots.series_figure(
            eff[0], {"effective policies": eff[1]}, "effective number of distinct policies", "policies"))
    ent = column(c.analysis, "occupancy_entropy")
    if ent is not None:
        mk = column(c.analysis, "market_occupancy_entropy")
        data = {"population": ent[1]}
        if mk is not None and mk[0].shape == ent[0].shape and mk[1].ndim == 2:
            data.update({f"market {i}": mk[1][:, i] for i in range(mk[1].shape[1])})
        out += figs.img("niche occupancy entropy", lambda: plots.series_figure(
            ent[0], data, "niche occupancy entropy", "nats"))
    return out or '<p class="missing">analysis.jsonl has no diversity fields.</p>'


def _square(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    try:
        m = np.asarray(x, np.float64)
    except (TypeError, ValueError):
        return None
    return m if m.ndim == 2 and m.shape[0] == m.shape[1] and m.shape[0] > 0 else None


def _heatmaps(c: _Context, figs: Figures) -> str:
    if not c.analysis:
        return _missing_analysis(c)
    a = c.analysis[-1]
    kl = _square(a.get("kl"))
    out = f"<p>At update {escape(a.get('update', '?'))}. Members ordered by average-linkage clustering of the KL matrix (symmetrised).</p>"
    order = plots.cluster_order(kl) if kl is not None else None
    labels = [f"m{i}" for i in range(kl.shape[0])] if kl is not None else None
    for key, title in (("kl", "KL(π_row ‖ π_col), summed over heads"), ("js", "Jensen–Shannon divergence"),
                       ("niche_kl", "KL of the niche head only"), ("niche_profile_distance", "niche-profile distance")):
        m = _square(a.get(key))
        if m is None:
            continue
        o = order if order is not None and len(order) == m.shape[0] else None
        out += figs.img(f"{key} heat map", lambda m=m, o=o, t=title: plots.heatmap_figure(
            m, t, labels=[f"m{i}" for i in range(m.shape[0])], order=o))
    if order is not None and labels:
        out += f"<p class=\"note\">Cluster order: {escape(', '.join(labels[i] for i in order))}</p>"
    return out


def _niches(c: _Context, figs: Figures) -> str:
    if not c.metrics:
        return '<p class="missing">No updates logged yet.</p>'
    out = ""
    occ = column(c.metrics, "occupancy")
    if occ is not None:
        out += figs.img("population niche occupancy", lambda: plots.niche_shares_figure(
            occ[0], occ[1], c.niches_rest))
    sh = column(c.metrics, "member_niche_shares")
    if sh is not None and sh[1].ndim == 3:
        out += figs.img("niche shares per member", lambda: plots.niche_shares_figure(
            sh[0], sh[1], c.niches_rest))
        last = sh[1][-1]
        rows = [[f"m{p}", *[float(x) for x in last[p]]] for p in range(last.shape[0])]
        out += f"<h3>Niche shares at update {int(sh[0][-1])}</h3>" + table(["member", *c.niches_rest], rows)
    s = c.member_series("specialisation_index")
    if s:
        out += figs.img("specialisation index per member", lambda: plots.series_figure(
            s[0], s[1], "specialisation index per member (1 − normalised entropy of niche choices)", "index"))
    sh = _last(c.analysis, "specialisation_histogram")
    if isinstance(sh, dict) and "counts" in sh and "edges" in sh:
        out += figs.img("specialisation index histogram", lambda: plots.histogram_figure(
            sh["counts"], "specialisation index of agents (latest analysis)", edges=sh["edges"], xlabel="index"))
    elif c.analysis:
        si = _last(c.analysis, "specialisation_index")
        if isinstance(si, list) and si:
            out += figs.img("specialisation index histogram", lambda: plots.histogram_figure(
                si, "specialisation index (latest analysis)", bins=min(20, max(3, len(si))), xlabel="index"))
    return out or '<p class="missing">metrics.jsonl has no niche fields.</p>'


def _monopoly(c: _Context, figs: Figures) -> str:
    if not c.analysis:
        return _missing_analysis(c)
    names = lambda k: c.niche_names[:k] + [f"niche {i}" for i in range(len(c.niche_names), k)]
    out = ""
    dom = column(c.analysis, "largest_output_share")
    if dom is not None:
        out += figs.img("largest_output_share over time", lambda: plots.series_figure(
            dom[0], {"largest_output_share": dom[1]}, "the largest member's share of all output (whole economy)",
            "share"))
    e = c.eval_trained()
    if e:
        out += ("<h3>Dominance on the held-out worlds (eval.json)</h3>"
                + table(["metric", "value"], [[k, e.get(k)] for k in DOMINANCE]))
    out += "<h3>Concentration within each niche</h3>" + _per_column_series(c.analysis, (
        ("niche_largest_share", "niche_largest_share: the largest member's share of a niche's output", "share"),
        ("hhi", "hhi: Herfindahl index of members within each niche", "HHI"),
    ), names, figs)
    a = c.analysis[-1]
    ls, hhi, lm = a.get("niche_largest_share"), a.get("hhi"), a.get("niche_largest_member")
    if isinstance(ls, list):
        nm = names(len(ls))
        rows = []
        for j in range(len(ls)):
            who = lm[j] if isinstance(lm, list) and j < len(lm) else None
            who = "— (nothing produced)" if who is None or int(who) < 0 else f"m{int(who)}"
            h = hhi[j] if isinstance(hhi, list) and j < len(hhi) else None
            rows.append([nm[j], who, ls[j], h])
        out += (f"<h3>Largest member per niche at update {escape(a.get('update', '?'))}</h3>"
                + table(["niche", "niche_largest_member", "niche_largest_share", "hhi"], rows, left=2))
    return out or '<p class="missing">analysis.jsonl has no monopoly fields.</p>'


def _wealth(c: _Context, figs: Figures) -> str:
    if not c.analysis:
        return _missing_analysis(c)
    out = ""
    lor = _last(c.analysis, "lorenz")
    if isinstance(lor, list) and lor:
        out += figs.img("Lorenz curve", lambda: plots.lorenz_figure(lor))
    g = column(c.analysis, "gini")
    if g is not None:
        out += figs.img("Gini over time", lambda: plots.series_figure(g[0], {"Gini": g[1]}, "wealth Gini", "Gini"))
    h = _last(c.analysis, "wealth_histogram")
    if isinstance(h, dict) and "counts" in h and "edges" in h:
        out += figs.img("wealth histogram", lambda: plots.histogram_figure(
            h["counts"], "wealth distribution (latest analysis)", edges=h["edges"], xlabel="wealth"))
    return out or '<p class="missing">analysis.jsonl has no wealth fields.</p>'


def _prices(c: _Context, figs: Figures) -> str:
    goods = lambda k: c.good_names[:k] + [f"good {i}" for i in range(len(c.good_names), k)]
    out = _per_column_series(c.metrics, (
        ("market_price", "mean market price per good", "price"),
        ("market_volume", "traded volume per good", "volume"),
    ), goods, figs)
    if not c.analysis:
        return out + _missing_analysis(c)
    out += _per_column_series(c.analysis, (
        ("price_dispersion", "price dispersion across markets", "dispersion"),
        ("trade_volume", "trade volume per good (analysis)", "volume"),
    ), goods, figs)
    a = c.analysis[-1]
    prices = a.get("prices")
    try:
        pm = np.asarray(prices, np.float64) if prices is not None else None
    except (TypeError, ValueError):
        pm = None
    if pm is not None and pm.ndim == 2:
        nm = goods(pm.shape[1])
        rows = [[f"market {m}", *pm[m].tolist()] for m in range(pm.shape[0])]
        out += f"<h3>Prices per market at update {escape(a.get('update', '?'))}</h3>" + table(["market", *nm], rows)
    return out


def _lineage(c: _Context, figs: Figures) -> str:
    P = c.P or int(c.train.get("members") or 1)
    ev = [e for e in c.lineage if all(k in e for k in ("update", "child", "parent"))]
    out = figs.img("PBT lineage", lambda: plots.lineage_figure(ev, P, max(c.last_update, 1)))
    if not ev:
        return out + "<p>No PBT copies yet (lineage.jsonl is missing or empty).</p>"
    shown = ev[-MAX_LINEAGE_ROWS:]
    rows = [[e["update"], f"m{e['child']}", f"m{e['parent']}", e.get("fitness_parent")] for e in shown]
    out += f"<h3>{len(ev)} cop{'y' if len(ev) == 1 else 'ies'}</h3>"
    if len(shown) < len(ev):
        out += f'<p class="note">The last {len(shown)} are listed.</p>'
    return out + table(["update", "child", "parent (copied from)", "fitness of parent"], rows, left=0)


_BUILDERS: dict[str, Callable[[_Context, Figures], str]] = {
    "overview": _overview,
    "diversity": _diversity,
    "kl-heatmap": _heatmaps,
    "niches": _niches,
    "monopoly": _monopoly,
    "wealth": _wealth,
    "prices": _prices,
    "lineage": _lineage,
}
