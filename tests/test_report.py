"""``agora report``: the shared plots, the self-contained HTML report of a run directory
(finished, in progress, not a run), the CLI exit codes, and the report in headless
Chromium (every section shown, every image loaded, no console errors)."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from analysis import plots, report
from analysis.metrics import ALIASES, TRAIN_ALIASES, glossary
from analysis.report import NO_ANALYSIS, SECTIONS, NotARunError, write_report
from selfplay.cli import EXIT_OK, EXIT_USAGE, main
from tests.conftest import ROOT, subprocess_env

P, J, G, M = 3, 3, 2, 2
NICHES = ["farmer", "fisher", "baker"]
GOODS = ["grain", "bread"]
SECTION_IDS = [sid for sid, _ in SECTIONS]


def _shares(rng, *shape):
    x = rng.random(shape) + 0.05
    return (x / x.sum(-1, keepdims=True)).tolist()


def make_run(path: Path, updates=(2, 4, 6, 8, 10), analysis=True, truncate=False, lineage=True, legacy=False) -> Path:
    """A plausible run directory as ``agora train`` (and the analysis) would write it:
    P=3 members, J=3 niches, G=2 goods, M=2 markets; ``legacy``: under the metric names
    runs wrote before analysis.metrics (``mean_kl``, ``monopoly_share``, ...)."""
    old = {new: o for o, new in {**ALIASES, **TRAIN_ALIASES}.items()} if legacy else {}
    named = lambda r: {old.get(k, k): v for k, v in r.items()}
    rng = np.random.default_rng(0)
    path.mkdir(parents=True, exist_ok=True)
    cfg = {
        "economy": {
            "num_agents": 64, "num_markets": M, "episode_length": 50,
            "goods": [{"name": g, "utility": 0.5, "base_price": 10} for g in GOODS],
            "niches": [{"name": n, "inputs": {}, "outputs": {"grain": 1}, "labour": 3.0} for n in NICHES],
        },
        "simulate": {"steps": 10, "seed": 0},
        "train": {"members": P, "updates": 20, "rollout_steps": 8, "league": {"size": 0, "refresh_every": 10},
                  "pbt": {"enabled": True, "interval": 4},
                  "variants": {"learning_rate": [1e-3, 3e-3], "ent_coef": [3e-4, 3e-3], "clip_eps": [0.15, 0.3],
                               "gamma": [0.9, 0.97], "gae_lambda": [0.9, 0.97],
                               "rewards": {"utility": [1, 1], "specialisation": [0, 0.2]}}},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    lines = []
    for u in updates:
        m = {"update": u, "pbt_event": u % 4 == 0, "project": float(rng.random()),
             "member_niche_shares": _shares(rng, P, J + 1), "occupancy": _shares(rng, J + 1),
             "market_price": (10 + rng.random(G)).tolist(), "market_volume": (100 * rng.random(G)).tolist(),
             "pbt_source": list(range(P))}
        for k in ("reward", "utility", "specialisation", "collaboration", "specialisation_index", "fitness",
                  "entropy", "policy_loss", "value_loss", "approx_kl", "clip_fraction", "learning_rate",
                  "ent_coef", "clip_eps", "gamma", "gae_lambda"):
            m[k] = rng.random(P).tolist()
        m["reward_weights"] = {"utility": [1.0] * P, "specialisation": [0.0125, 0.1375, 0.1875][:P]}
        m["founder"] = [0, 0, 2][:P]
        lines.append(json.dumps(named(m)))
    text = "\n".join(lines) + "\n"
    if truncate:  # a run writing its next line right now
        text += lines[-1][: len(lines[-1]) // 2]
    (path / "metrics.jsonl").write_text(text)
    if lineage:
        events = [{"update": 4, "child": 2, "parent": 0, "fitness_parent": 0.4},
                  {"update": 8, "child": 1, "parent": 2, "fitness_parent": 0.5}]
        (path / "lineage.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if analysis:
        rows = []
        for u in updates:
            kl = rng.random((P, P)) * 0.5
            np.fill_diagonal(kl, 0)
            js = 0.25 * (kl + kl.T)
            counts = rng.integers(0, 20, 8)
            lorenz = np.concatenate([[0.0], np.cumsum(np.sort(rng.random(100)))])
            rows.append({
                "update": u, "kl": kl.tolist(), "js": js.tolist(), "niche_kl": (kl / 2).tolist(),
                "kl_mean": float(kl.sum() / (P * (P - 1))), "js_mean": float(js.sum() / (P * (P - 1))),
                "effective_policies": float(1 + rng.random() * (P - 1)),
                "niche_profile_distance": js.tolist(), "occupancy_entropy": float(rng.random()),
                "market_occupancy_entropy": rng.random(M).tolist(),
                "specialisation_index": rng.random(P).tolist(), "hhi": rng.random(J).tolist(),
                "niche_largest_share": [0.5, 0.875, 0.0], "niche_largest_member": [0, 2, -1],
                "niche_output": [40.0, 8.0, 0.0], "niche_concentration": 0.875, "niche_concentration_niche": 1,
                "largest_output_share": 0.4375,
                "gini": float(rng.random()), "lorenz": (lorenz / lorenz[-1]).tolist(),
                "wealth_histogram": {"edges": np.linspace(0, 800, 9).tolist(), "counts": counts.tolist()},
                "specialisation_histogram": {"edges": np.linspace(0, 1, 6).tolist(), "counts": [3, 9, 20, 20, 12]},
                "trade_volume": rng.random(G).tolist(), "price_dispersion": rng.random(G).tolist(),
                "prices": (10 + rng.random((M, G))).tolist(),
            })
        (path / "analysis.jsonl").write_text("".join(json.dumps(named(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def finished_report(tmp_path_factory) -> Path:
    return write_report(make_run(tmp_path_factory.mktemp("report") / "finished"))


def _imgs(text: str) -> list[str]:
    return re.findall(r"<img\b[^>]*>", text)


# ---- plots ----------------------------------------------------------------------------


def test_cluster_order_groups_similar_members():
    assert plots.cluster_order(np.zeros((1, 1))).tolist() == [0]
    assert plots.cluster_order(np.ones((2, 2))).tolist() == [0, 1]
    # Members 0, 2, 4 are one policy, 1, 3 another: clustering puts each group together.
    group = np.array([0, 1, 0, 1, 0])
    d = (group[:, None] != group[None, :]).astype(float) + 0.01 * np.arange(5)[None, :]  # asymmetric
    order = plots.cluster_order(d)
    assert sorted(order.tolist()) == list(range(5))
    g = group[order]
    assert (g[:-1] != g[1:]).sum() == 1, order


def test_plot_functions_return_renderable_figures():
    from matplotlib.figure import Figure

    u = np.arange(1, 6)
    rng = np.random.default_rng(1)
    figs = [
        plots.heatmap_figure(rng.random((4, 4)), "kl"),
        plots.heatmap_figure(rng.random((2, 2)), "kl", labels=["a", "b"], order=[1, 0]),
        plots.niche_shares_figure(u, _shares(rng, 5, J + 1), NICHES + ["rest"]),
        plots.niche_shares_figure(u, _shares(rng, 5, P, J + 1), NICHES + ["rest"]),
        plots.niche_shares_figure([3], _shares(rng, 1, J + 1), NICHES + ["rest"]),
        plots.lineage_figure([{"update": 2, "child": 1, "parent": 0}], 3, 5),
        plots.lineage_figure([], 1, 0),
        plots.lorenz_figure(np.linspace(0, 1, 101) ** 2),
        plots.series_figure(u, {"a": u * 1.0, "b": rng.random((5, 2)), "wrong length": [1, 2]}, "t", "y"),
        plots.histogram_figure(rng.random(50), "h"),
        plots.histogram_figure([1, 2, 3], "h", edges=[0, 1, 2, 3]),
    ]
    for fig in figs:
        assert isinstance(fig, Figure)
        png = plots.figure_png(fig, dpi=40)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 500
    # No GUI backend: the plots and the report never go through pyplot.
    for mod in (plots, report):
        src = Path(mod.__file__).read_text()
        assert not re.search(r"import matplotlib\.pyplot|from matplotlib import pyplot|matplotlib\.use\(", src)


def test_figures_work_with_tensorboardx_add_figure(tmp_path):
    """The trainer logs these figures as TensorBoard images."""
    from tensorboardX import SummaryWriter

    w = SummaryWriter(str(tmp_path / "tb"))
    w.add_figure("kl", plots.heatmap_figure(np.random.default_rng(0).random((3, 3)), "kl"), 1)
    w.close()
    assert any(p.stat().st_size > 1000 for p in (tmp_path / "tb").iterdir())


# ---- report ---------------------------------------------------------------------------


def test_report_of_finished_run_is_complete_and_self_contained(finished_report):
    assert finished_report.name == "report.html" and finished_report.is_file()
    text = finished_report.read_text()
    for sid in SECTION_IDS:
        assert re.search(rf'<section id="{re.escape(sid)}"><h2>', text), sid
    imgs = _imgs(text)
    assert len(imgs) >= 15, len(imgs)
    assert all('src="data:image/png;base64,' in i for i in imgs)
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"<(script|iframe)\b|<link\b(?![^>]*href=\"data:)", text)
    assert NO_ANALYSIS not in text and "could not be drawn" not in text
    # Overview names the run, updates reached/planned, members and agents; monopoly table
    # names the largest member per niche (none for a niche that produced nothing).
    assert "finished" in text and "10 / 20" in text and "64 in 2 markets" in text
    for name in NICHES + GOODS + ["rest"]:
        assert name in text, name
    assert "m2" in text and "— (nothing produced)" in text
    assert f"0.875 ({NICHES[1]}, member 2)" in text  # niche_concentration in the overview
    assert "largest_output_share" in text and "0.438" in text  # whole-economy dominance, its own name
    assert "effective_policies" in text and "gini (wealth)" in text
    # The glossary lists every metric of the registry with its definition.
    gloss = text.split('<section id="glossary">', 1)[1]
    for name, unit, definition in glossary():
        assert f"<td class=\"l\">{name}</td>" in gloss and html.escape(definition) in gloss, name
    # The config is shown verbatim (escaped).
    assert "<pre>economy:" in text and "num_agents: 64" in text


def test_report_of_a_run_under_the_old_metric_names(tmp_path):
    """A run written before the metric registry (``mean_kl``, ``monopoly_share``,
    ``niche_shares`` per member, ...) reads under today's names: the same numbers."""
    old = write_report(make_run(tmp_path / "a" / "run", legacy=True)).read_text()
    new = write_report(make_run(tmp_path / "b" / "run")).read_text()
    strip = lambda t: re.sub(r"<p class=\"sub\">.*?</p>|<title>.*?</title>|<h1>.*?</h1>|"
                             r"src=\"data:image/png;base64,[^\"]*\"", "", t)
    assert strip(old) == strip(new)
    assert f"0.875 ({NICHES[1]}, member 2)" in old and "niche shares per member" in old


def test_empty_sections_say_why_and_what_to_set(tmp_path):
    """A run shorter than train.analysis.every: the empty sections name the first analysis
    update and the setting; with analysis off (every=0) they say so."""
    run = make_run(tmp_path / "short", updates=(2, 4), analysis=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["analysis"] = {"every": 10}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    text = write_report(run).read_text()
    assert text.count("the first analysis comes at update 10 (train.analysis.every=10)") >= 4
    cfg["train"]["analysis"] = {"every": 0}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert "train.analysis.every is 0 (never)" in write_report(run).read_text()


def test_report_of_run_in_progress(tmp_path):
    """No analysis.jsonl yet, no lineage, the last metrics line half written; names with
    HTML in them are escaped."""
    run = make_run(tmp_path / "<b>running&", updates=(2, 4), analysis=False, truncate=True, lineage=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["economy"]["niches"][0]["name"] = "<script>alert(1)</script>"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    text = write_report(run).read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text and "&lt;b&gt;running&amp;" in text
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in text
    assert text.count(NO_ANALYSIS) >= 4  # diversity, heat map, monopoly, wealth (and more)
    assert "No diversity analysis yet" in text
    assert "4 / 20" in text and "could not be drawn" not in text
    assert "unparsable" not in text  # a partial last line is expected, not a problem
    assert len(_imgs(text)) >= 5
    # Empty metrics (training compiling) and a bad line in the middle are reported, not fatal.
    (run / "metrics.jsonl").write_text("")
    assert "No updates logged yet" in write_report(run).read_text()
    good = json.dumps({"update": 1, "utility": [0.1, 0.2, 0.3]})
    (run / "metrics.jsonl").write_text(f"{good}\n{{oops\n{good}\n")
    assert "skipped unparsable line 2" in write_report(run).read_text()


def test_report_of_resumed_run_keeps_last_record_per_update(tmp_path):
    """A run resumed from an older checkpoint logs some updates twice."""
    from analysis.files import by_update as _by_update, read_jsonl

    run = make_run(tmp_path / "resumed", updates=(1, 2, 3), analysis=False, lineage=False)  # no report: fast
    rows = (run / "metrics.jsonl").read_text().splitlines()
    again = [json.dumps({**json.loads(r), "utility": [9.0] * P}) for r in rows[1:]]
    (run / "metrics.jsonl").write_text("\n".join(rows + again) + "\n")
    metrics = _by_update(read_jsonl(run / "metrics.jsonl")[0])
    assert [m["update"] for m in metrics] == [1, 2, 3] and metrics[-1]["utility"] == [9.0] * P


@pytest.mark.parametrize("what", ["missing", "file", "no_config", "no_metrics", "empty"])
def test_not_a_run_directory(tmp_path, what):
    d = tmp_path / "somewhere"
    if what == "file":
        d.write_text("x")
    elif what != "missing":
        d.mkdir()
        if what == "no_metrics":
            (d / "config.yaml").write_text("economy: {}\n")
        if what == "no_config":
            (d / "metrics.jsonl").write_text("")
    with pytest.raises(NotARunError) as err:
        write_report(d)
    msg = str(err.value)
    assert str(d) in msg
    if what in ("no_config", "empty"):
        assert "config.yaml" in msg
    if what in ("no_metrics", "empty"):
        assert "metrics.jsonl" in msg
    assert not (d / "report.html").exists()


def test_cli_report_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert str(tmp_path / "nope") in err and "does not exist" in err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("economy: {}\n")
    assert main(["report", str(tmp_path / "half")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert str(tmp_path / "half") in err and "metrics.jsonl is missing" in err


def test_cli_report_subprocess_exit_codes(tmp_path):
    run = make_run(tmp_path / "run", updates=(2,), analysis=False, lineage=False)  # few plots: fast
    cmd = [sys.executable, "-m", "selfplay.cli", "report"]
    p = subprocess.run(cmd + [str(run)], capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=120)
    assert p.returncode == EXIT_OK, p.stdout + p.stderr
    assert f"wrote {run / 'report.html'}" in p.stdout and (run / "report.html").is_file()
    (tmp_path / "empty").mkdir()
    p = subprocess.run(cmd + [str(tmp_path / "empty")], capture_output=True, text=True, env=subprocess_env(),
                       cwd=ROOT, timeout=120)
    assert p.returncode == EXIT_USAGE == 2, p.stdout + p.stderr
    assert str(tmp_path / "empty") in p.stderr and "config.yaml" in p.stderr and "metrics.jsonl" in p.stderr


# ---- the report in a browser ----------------------------------------------------------


def test_report_in_headless_chromium(chromium, finished_report):
    from selenium.webdriver.common.by import By

    chromium.get(finished_report.resolve().as_uri())
    assert "Agora run report" in chromium.title
    for sid in SECTION_IDS:
        el = chromium.find_element(By.ID, sid)
        chromium.execute_script("arguments[0].scrollIntoView();", el)
        assert el.is_displayed(), sid
        assert el.find_element(By.TAG_NAME, "h2").text.strip(), sid
    images = chromium.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);"
    )
    assert len(images) == len(_imgs(finished_report.read_text())) >= 15
    bad = [i for i in images if not (i[1] and i[2] > 0 and i[3] > 0)]
    assert not bad, bad
    severe = [e for e in chromium.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe


def test_report_shows_each_members_weights_beside_its_hyperparameters(finished_report):
    """The overview's member table: one row per member with its hyperparameters, its reward
    weight per component (the slot's condition), fitness and founder, at the last update."""
    text = finished_report.read_text()
    table = text[text.index("Members at update 10"):]
    table = table[: table.index("</table>")]
    header = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", table)
    assert header[:6] == ["member", "learning_rate", "ent_coef", "clip_eps", "gamma", "gae_lambda"]
    assert header[6:] == ["weight: utility", "weight: specialisation", "fitness", "founder"]
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    assert len(rows) == P
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows]
    assert [c[0] for c in cells] == ["m0", "m1", "m2"]
    assert [c[7] for c in cells] == ["0.0125", "0.138", "0.188"] and [c[-1] for c in cells] == ["0", "0", "2"]
