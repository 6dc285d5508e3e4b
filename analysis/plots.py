"""Host-side figures of a run: NumPy in, :class:`matplotlib.figure.Figure` out.

Shared by the HTML reports (``analysis.report``, ``analysis.study_report``, through
``analysis.page``) and the trainer's TensorBoard images
(``tensorboardX.SummaryWriter.add_figure``). Figures are built with the object-oriented
API (``matplotlib.figure.Figure``), never through pyplot, so no GUI backend is loaded and
nothing is kept in pyplot's global figure list; they render with Agg (``figure_png``).
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "cluster_order",
    "figure_png",
    "heatmap_figure",
    "histogram_figure",
    "lineage_figure",
    "lorenz_figure",
    "niche_shares_figure",
    "series_figure",
]

# Niche colours: tab20 without its pale partner shades first, then the pale ones; "rest"
# (the last niche) is always grey.
_TAB = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
    "#dbdb8d", "#9edae5",
]
_REST = "#b0b0b0"


def _colours(n: int, rest_last: bool = False) -> list[str]:
    cols = [_TAB[i % len(_TAB)] for i in range(n)]
    if rest_last and n:
        cols[-1] = _REST
    return cols


def _figure(width: float, height: float) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _integer_x(ax) -> None:
    """Updates are integers: no fractional tick labels."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """The figure as PNG bytes (Agg), without the metadata text chunks."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _symmetric_distance(dist) -> np.ndarray:
    d = np.asarray(dist, np.float64)
    d = np.nan_to_num(0.5 * (d + d.T), nan=0.0, posinf=0.0, neginf=0.0)
    d = np.maximum(d, 0.0)
    np.fill_diagonal(d, 0.0)
    return d


def cluster_order(dist) -> np.ndarray:
    """Leaf order of an average-linkage hierarchical clustering of ``dist`` [P, P]
    (symmetrised as (D + Dᵀ)/2, diagonal zeroed; NaN and negatives treated as 0), so that
    similar members end up next to each other. P = 1 or 2: the identity."""
    d = np.asarray(dist, np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"cluster_order needs a square matrix, got shape {d.shape}")
    P = d.shape[0]
    if P <= 2:
        return np.arange(P)
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    condensed = squareform(_symmetric_distance(d), checks=False)
    return np.asarray(leaves_list(linkage(condensed, method="average")), np.int64)


def _tick_step(n: int, max_ticks: int = 32) -> int:
    return max(1, int(np.ceil(n / max_ticks)))


def heatmap_figure(matrix, title: str, labels: Sequence[str] | None = None, order=None) -> Figure:
    """Heat map of a [P, P] matrix (e.g. KL(π_row‖π_col)); rows and columns in ``order``
    (default: :func:`cluster_order` of the matrix), with a colour bar and member labels
    (default ``m0 … m{P-1}``). Cells are annotated when P ≤ 8."""
    m = np.asarray(matrix, np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"heatmap_figure needs a square matrix, got shape {m.shape}")
    P = m.shape[0]
    labels = [f"m{i}" for i in range(P)] if labels is None else [str(s) for s in labels]
    order = cluster_order(m) if order is None else np.asarray(order, np.int64)
    m = m[np.ix_(order, order)]
    labs = [labels[i] for i in order]
    size = float(np.clip(2.5 + 0.25 * P, 4.0, 9.0))
    fig, ax = _figure(size + 1.2, size)
    finite = m[np.isfinite(m)]
    vmax = float(finite.max()) if finite.size else 1.0
    im = ax.imshow(m, cmap="viridis", vmin=0.0 if finite.size == 0 or finite.min() >= 0 else None,
                   vmax=vmax if vmax > 0 else None, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.85)
    step = _tick_step(P)
    ticks = np.arange(0, P, step)
    ax.set_xticks(ticks, [labs[i] for i in ticks], rotation=90, fontsize=8)
    ax.set_yticks(ticks, [labs[i] for i in ticks], fontsize=8)
    ax.set_xlabel("member (column)")
    ax.set_ylabel("member (row)")
    if P <= 8:
        hi = np.nanmax(m) if finite.size else 0.0
        for i in range(P):
            for j in range(P):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2g}", ha="center", va="center", fontsize=8,
                            color="black" if m[i, j] > 0.6 * hi else "white")
    ax.set_title(title)
    return fig


def niche_shares_figure(updates, shares, niche_names: Sequence[str], max_members: int = 16) -> Figure:
    """Stacked-area niche shares over updates: ``shares`` [T, J+1] (one panel) or
    [T, P, J+1] (small multiples, one per member; the first ``max_members`` members)."""
    x = np.asarray(updates, np.float64)
    s = np.nan_to_num(np.asarray(shares, np.float64))
    if s.ndim not in (2, 3) or s.shape[0] != x.shape[0]:
        raise ValueError(f"niche_shares_figure: shares shape {s.shape} does not fit {x.shape[0]} updates")
    K = s.shape[-1]
    names = list(niche_names)[:K] + [f"niche {k}" for k in range(len(niche_names), K)]
    cols = _colours(K, rest_last=bool(names) and names[-1] == "rest")
    if s.ndim == 2:
        fig, ax = _figure(8.0, 3.6)
        panels = [(ax, s, "niche occupancy, all players")]
    else:
        P = s.shape[1]
        n = min(P, max_members)
        ncols = min(n, 4)
        nrows = int(np.ceil(n / ncols))
        fig = Figure(figsize=(2.6 * ncols + 1.8, 2.0 * nrows + 0.6), layout="constrained")
        axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
        panels = [(axes[p], s[:, p], f"member {p}") for p in range(n)]
        for ax in axes[n:]:
            ax.set_visible(False)
        if n < P:
            fig.suptitle(f"niche shares per member (first {n} of {P})")
        else:
            fig.suptitle("niche shares per member")
    for ax, y, title in panels:
        if x.size == 0:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        elif x.size == 1:  # a single update: a stacked bar is the honest picture
            bottom = 0.0
            for k in range(K):
                ax.bar(x, y[:, k], bottom=bottom, color=cols[k], width=0.8, label=names[k])
                bottom = bottom + y[:, k]
        else:
            ax.stackplot(x, y.T, colors=cols, labels=names, linewidth=0)
            ax.set_xlim(x[0], x[-1])
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=9 if s.ndim == 3 else 11)
        ax.tick_params(labelsize=8)
        _integer_x(ax)
    first = panels[0][0]
    handles, labs = first.get_legend_handles_labels()
    fig.legend(handles, labs, loc="outside right center", fontsize=8, title="niche", title_fontsize=8)
    fig.supxlabel("update", fontsize=9)
    fig.supylabel("share of agent-steps", fontsize=9)
    return fig


def lineage_figure(events: Sequence[Mapping], num_members: int, last_update: int,
                   max_arrows: int = 60) -> Figure:
    """PBT lineage: one horizontal line per member over updates, coloured by the original
    member its parameters descend from, and an arrow parent → child at each copy (plain
    connectors with a marker at the child when there are more than ``max_arrows`` copies).

    ``events``: dicts with ``update``, ``child``, ``parent`` (as in ``lineage.jsonl``)."""
    from matplotlib.collections import LineCollection

    P = max(int(num_members), 1)
    evs = sorted(
        (int(e["update"]), int(e["child"]), int(e["parent"]))
        for e in events
        if all(k in e for k in ("update", "child", "parent"))
    )
    evs = [e for e in evs if 0 <= e[1] < P and 0 <= e[2] < P and e[1] != e[2]]
    end = max([int(last_update), 1] + [u for u, _, _ in evs])
    height = float(np.clip(1.2 + 0.3 * P, 2.5, 12.0))
    fig, ax = _figure(8.0, height)
    root = list(range(P))  # the original member each member's parameters descend from
    start = [0] * P
    cols = _colours(P)
    segs, seg_cols = [], []
    by_update: dict[int, list[tuple[int, int]]] = {}
    for u, c, p in evs:
        by_update.setdefault(u, []).append((c, p))
    for u in sorted(by_update):
        pairs = by_update[u]
        before = list(root)  # copies of one update are simultaneous: read roots before any write
        for c, _ in pairs:
            segs.append([(start[c], c), (u, c)])
            seg_cols.append(cols[before[c]])
            start[c] = u
        for c, p in pairs:
            root[c] = before[p]
    for m in range(P):
        segs.append([(start[m], m), (end, m)])
        seg_cols.append(cols[root[m]])
    ax.add_collection(LineCollection(segs, colors=seg_cols, linewidths=2.5 if P <= 32 else 1.2, capstyle="butt"))
    if len(evs) <= max_arrows:
        for u, c, p in evs:
            ax.annotate("", xy=(u, c), xytext=(u, p),
                        arrowprops=dict(arrowstyle="->", color="black", lw=0.9, shrinkA=2, shrinkB=2,
                                        connectionstyle="arc3,rad=0.25" if abs(c - p) > 1 else "arc3"))
    elif evs:
        ax.add_collection(LineCollection([[(u, p), (u, c)] for u, c, p in evs], colors="black",
                                         linewidths=0.4, alpha=0.5))
        ax.scatter([u for u, _, _ in evs], [c for _, c, _ in evs], s=6, color="black", zorder=3)
    ax.set_xlim(0, end * 1.01 + 0.5)
    ax.set_ylim(P - 0.5, -0.5)
    step = _tick_step(P)
    ax.set_yticks(np.arange(0, P, step), [f"m{i}" for i in range(0, P, step)], fontsize=8)
    ax.set_xlabel("update")
    ax.set_ylabel("member")
    _integer_x(ax)
    n = len(evs)
    ax.set_title(f"PBT lineage: {n} cop{'y' if n == 1 else 'ies'} (colour = original ancestor)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def lorenz_figure(lorenz) -> Figure:
    """Lorenz curve of wealth: ``lorenz`` [K] cumulative wealth shares at K evenly spaced
    population fractions from 0 to 1, with the line of equality; Gini in the title."""
    y = np.asarray(lorenz, np.float64).ravel()
    x = np.linspace(0.0, 1.0, y.size) if y.size > 1 else np.ones(y.size)
    fig, ax = _figure(4.8, 4.4)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="equality")
    ax.plot(x, y, color="#1f77b4", lw=2, label="Lorenz curve")
    if y.size > 1:
        ax.fill_between(x, y, x, color="#1f77b4", alpha=0.15)
        gini = 1.0 - 2.0 * float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))
        ax.set_title(f"wealth Lorenz curve (Gini {gini:.3f})")
    else:
        ax.set_title("wealth Lorenz curve")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("fraction of agents (poorest first)")
    ax.set_ylabel("fraction of wealth")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_aspect("equal")
    return fig


def series_figure(updates, series: Mapping[str, object], title: str, ylabel: str,
                  logy: bool = False, max_lines: int = 24) -> Figure:
    """Lines over updates: ``series`` maps a name to values [T] (one line) or [T, k]
    (k lines, ``name[i]``). Entries whose length differs from ``updates`` are skipped."""
    x = np.asarray(updates, np.float64)
    fig, ax = _figure(8.0, 3.6)
    lines = 0
    for name, values in series.items():
        v = np.asarray(values, np.float64)
        if v.ndim == 0 or v.shape[0] != x.shape[0] or v.size == 0:
            continue
        cols = v.reshape(v.shape[0], -1)
        for i in range(cols.shape[1]):
            if lines >= max_lines:
                break
            label = str(name) if cols.shape[1] == 1 else f"{name}[{i}]"
            ax.plot(x, cols[:, i], lw=1.6, label=label, color=_TAB[lines % len(_TAB)],
                    marker="o" if x.size <= 12 else None, ms=3)
            lines += 1
    if logy:
        ax.set_yscale("log")
    _integer_x(ax)
    ax.set_title(title)
    ax.set_xlabel("update")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8, loc="best", ncol=1 if lines <= 8 else 2)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    return fig


def histogram_figure(values, title: str, bins: int = 30, edges=None, xlabel: str = "value") -> Figure:
    """Histogram of samples ``values``; or, with ``edges`` [B+1], of precomputed counts
    ``values`` [B]."""
    fig, ax = _figure(6.0, 3.4)
    v = np.asarray(values, np.float64).ravel()
    if edges is not None:
        e = np.asarray(edges, np.float64).ravel()
        if e.size != v.size + 1:
            raise ValueError(f"histogram_figure: {v.size} counts need {v.size + 1} edges, got {e.size}")
        ax.stairs(v, e, fill=True, color="#1f77b4", alpha=0.8)
    else:
        v = v[np.isfinite(v)]
        if v.size:
            ax.hist(v, bins=bins, color="#1f77b4", alpha=0.8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.grid(alpha=0.3)
    return fig
