"""The study report: the Markdown comparison table of ``results.json``, the self-contained
HTML report of a study directory (overview, comparison, training curves with bands over
seeds), tolerance of missing or partial metrics files, the error for a directory without
results, and the report in headless Chromium (every image loaded, no console errors)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from analysis import study_report
from analysis.report import NotARunError
from analysis.study_report import (
    CURVE_METRICS,
    STUDY_SECTIONS,
    NotAStudyError,
    band_figure,
    format_results_md,
    training_curves,
    write_study_report,
)

P = 3
UPDATES = (1, 2, 3, 4, 5)
NICHES = ["farmer", "fisher", "baker", "rest"]
CURVE_KEYS = [k for k, _, _ in CURVE_METRICS]
SEEDS = {"on": ["0", "1"], "off": ["0", "1"], "solo": ["0"]}


def _results() -> dict:
    """results.json of a study with three conditions (one with a single seed: no
    intervals) and both baselines; some values null."""
    def seed_vals(u, k):
        return {"utility": u, "niche_shares": [0.4, 0.3, 0.2, 0.1], "effective_niches": k,
                "member_niche_mi_bits": 0.5, "gini": None}

    return {
        "study": "smoke",
        "base": "configs/tiny.yaml",
        "metrics": ["utility", "niche_shares", "effective_niches", "member_niche_mi_bits", "gini"],
        "niche_names": NICHES,
        "ci_method": "Student's t, 95 %, over seeds",
        "eval": {"worlds": 2, "steps": 50, "burn_in": 12, "greedy": False},
        "conditions": {
            "on": {
                "overrides": ["train.variants.rewards.specialisation=[0.2,0.2]"],
                "seeds": {"0": seed_vals(0.38, 2.5), "1": seed_vals(0.42246, 2.7)},
                "run_dirs": {"0": "runs/on/seed_0", "1": "runs/on/seed_1"},
                "mean": {"utility": 0.40123, "niche_shares": [0.41, 0.29, 0.2, 0.1], "effective_niches": 2.6,
                         "member_niche_mi_bits": 0.5, "gini": None},
                "ci95": {"utility": [0.35012, 0.45234], "niche_shares": [[0.3, 0.5]] * 4,
                         "effective_niches": [1.33333, 3.86667], "member_niche_mi_bits": [0.5, 0.5], "gini": None},
            },
            "off": {
                "overrides": ["train.variants.rewards.specialisation=[0,0]"],
                "seeds": {"0": seed_vals(0.3, 2.0), "1": seed_vals(0.32, 2.2)},
                "run_dirs": {"0": "runs/off/seed_0", "1": "runs/off/seed_1"},
                "mean": {"utility": 0.31, "niche_shares": [0.25, 0.25, 0.25, 0.25], "effective_niches": 2.1,
                         "member_niche_mi_bits": None, "gini": 0.123456},
                "ci95": {"utility": [0.18294, 0.43706], "niche_shares": [[0.2, 0.3]] * 4,
                         "effective_niches": [0.829, 3.371], "member_niche_mi_bits": None, "gini": [0.1, 0.15]},
            },
            "solo": {
                "overrides": [],
                "seeds": {"0": seed_vals(0.3, 1.0)},
                "run_dirs": {"0": "runs/solo/seed_0"},
                "mean": {"utility": 0.3, "niche_shares": [0.7, 0.1, 0.1, 0.1], "effective_niches": 1.0,
                         "member_niche_mi_bits": 0.25, "gini": None},
                "ci95": {"utility": None, "niche_shares": None, "effective_niches": None,
                         "member_niche_mi_bits": None, "gini": None},
            },
        },
        "baselines": {
            "scripted": {"utility": 0.48, "niche_shares": [0.125, 0.125, 0.25, 0.5], "effective_niches": 3.14159,
                         "member_niche_mi_bits": None, "gini": 0.2},
            "random": {"utility": 0.05, "niche_shares": [0.25, 0.25, 0.25, 0.25], "effective_niches": 4.0,
                       "member_niche_mi_bits": None, "gini": 0.31},
        },
        "missing": [{"condition": "solo", "seed": 1, "reason": "run failed"}],
    }


def make_study(path: Path, curve_keys=CURVE_KEYS) -> tuple[Path, dict]:
    """A study directory: results.json and one metrics.jsonl per run (5 updates, P=3
    members). Returns it and the per-run arrays {(condition, seed): {key: [T, P]}}."""
    rng = np.random.default_rng(0)
    path.mkdir(parents=True, exist_ok=True)
    results = _results()
    (path / "results.json").write_text(json.dumps(results, indent=1))
    data = {}
    for cond, seeds in SEEDS.items():
        for s in seeds:
            run = path / results["conditions"][cond]["run_dirs"][s]
            run.mkdir(parents=True)
            arrays = {k: rng.random((len(UPDATES), P)) for k in curve_keys}
            data[cond, s] = arrays
            rows = [{"update": u, "niche_shares": [[0.25] * 4] * P, **{k: a[i].tolist() for k, a in arrays.items()}}
                    for i, u in enumerate(UPDATES)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, data


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict]:
    return make_study(tmp_path_factory.mktemp("study") / "smoke")


@pytest.fixture(scope="module")
def study_html(study) -> Path:
    return write_study_report(study[0])


def _imgs(text: str) -> list[str]:
    return re.findall(r"<img\b[^>]*>", text)


def _md_tables(md: str) -> list[list[list[str]]]:
    """The Markdown tables of ``md`` as lists of rows of cells (header first, no rule)."""
    tables, cur = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            if cur is None:
                cur = []
                tables.append(cur)
            if not re.fullmatch(r"\|(:?-+:?\|)+", line):
                cur.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
        else:
            cur = None
    return tables


# ---- Markdown ---------------------------------------------------------------------------


def test_markdown_table_rows_and_cells():
    md = format_results_md(_results())
    assert "smoke" in md.splitlines()[0]
    assert "Seeds per condition: on: 2, off: 2, solo: 1" in md
    assert "Student's t, 95 %, over seeds" in md
    assert "worlds: 2, steps: 50, burn_in: 12, greedy: false" in md
    assert "Missing runs (1):" in md and "solo seed 1 (reason: run failed)" in md
    assert "configs/tiny.yaml" in md
    main, niches = _md_tables(md)
    header, rows = main[0], main[1:]
    # One column per scalar metric (niche_shares, a list, is not one), one row per condition
    # then per baseline.
    assert header == ["condition", "utility", "effective_niches", "member_niche_mi_bits", "gini"]
    assert [r[0] for r in rows] == ["on", "off", "solo", "scripted (baseline)", "random (baseline)"]
    cells = {r[0]: dict(zip(header[1:], r[1:])) for r in rows}
    assert cells["on"] == {"utility": "0.401 [0.35, 0.452]", "effective_niches": "2.6 [1.33, 3.87]",
                           "member_niche_mi_bits": "0.5 [0.5, 0.5]", "gini": "—"}
    assert cells["off"] == {"utility": "0.31 [0.183, 0.437]", "effective_niches": "2.1 [0.829, 3.37]",
                            "member_niche_mi_bits": "—", "gini": "0.123 [0.1, 0.15]"}
    # One seed: no interval, the mean alone.
    assert cells["solo"] == {"utility": "0.3", "effective_niches": "1", "member_niche_mi_bits": "0.25", "gini": "—"}
    assert cells["scripted (baseline)"] == {"utility": "0.48", "effective_niches": "3.14",
                                            "member_niche_mi_bits": "—", "gini": "0.2"}
    assert cells["random (baseline)"]["utility"] == "0.05"
    # The mean niche shares, named.
    assert niches[0] == ["condition", *NICHES]
    assert niches[1] == ["on", "0.41", "0.29", "0.2", "0.1"]
    assert niches[4] == ["scripted (baseline)", "0.125", "0.125", "0.25", "0.5"]
    assert len(niches) == 1 + 3 + 2


def test_markdown_table_of_sparse_results():
    """No missing runs, no niche names, no baselines, one seed everywhere: still a table."""
    r = _results()
    r.update(missing=[], baselines={})
    del r["niche_names"]
    r["conditions"] = {"a|b": r["conditions"]["solo"]}
    md = format_results_md(r)
    assert "Missing runs" not in md and "Seeds per condition: 1 (seeds 0)" in md
    main, niches = _md_tables(md)
    assert [row[0] for row in main[1:]] == ["a\\|b"]
    assert niches[0] == ["condition", "niche 0", "niche 1", "niche 2", "niche 3"]
    assert "scripted" not in md


def test_table_columns_without_a_metrics_list_and_intervals_that_could_not_be_computed():
    """Without ``results["metrics"]`` the columns are the metrics in order of appearance,
    conditions then baselines (one only a baseline has included); a metric that is a list
    only in a baseline is a list metric (its own table, not a column); an interval of two
    nulls prints the mean alone; a missing run without a reason, or with only one, is named."""
    r = _results()
    del r["metrics"]
    r["baselines"]["scripted"]["only_baseline"] = 0.5
    r["baselines"]["random"]["per_good"] = [1.0, 2.0]
    for c in r["conditions"].values():
        c["mean"]["per_good"] = None
    r["conditions"]["solo"]["ci95"]["utility"] = [None, None]
    r["conditions"]["on"]["mean"]["per_member"] = [0.1, 0.2, 0.3]  # a list in one condition's mean only
    r["conditions"]["off"]["seeds"]["0"]["seed_list"] = [1, 2]  # a list in one seed's values only
    r["conditions"]["off"]["mean"]["seed_list"] = None
    r["baselines"]["scripted"]["by_niche"] = {"farmer": 1.0}  # not a number: "—"
    r["missing"] = [{"condition": "solo", "seed": 1}, {"reason": "killed"}, "seed 7 of off"]
    r["eval"] = {}
    md = format_results_md(r)
    tables = _md_tables(md)
    main, other = tables[0], tables[1]
    assert main[0] == ["condition", "utility", "effective_niches", "member_niche_mi_bits", "gini"]
    cells = {row[0]: dict(zip(main[0][1:], row[1:])) for row in main[1:]}
    assert cells["solo"]["utility"] == "0.3"
    assert other[0] == ["condition", "only_baseline", "by_niche"]
    others = {row[0]: row[1:] for row in other[1:]}
    assert others["scripted (baseline)"] == ["0.5", "—"] and others["on"] == ["—", "—"]
    assert "per_member" not in main[0] + other[0] and "seed_list" not in main[0] + other[0]
    # seed_list is a list metric (no column) whose means are all null: no table of means
    assert "**Mean per_member**" in md and "seed_list" not in md and "- Evaluation: —\n" in md
    per_good = [t for t in tables if t[0][1:] == ["[0]", "[1]"]]
    assert len(per_good) == 1 and per_good[0][-1] == ["random (baseline)", "1", "2"]
    assert "Missing runs (3):" in md and "  - solo seed 1\n" in md and "  - reason: killed\n" in md
    assert "  - seed 7 of off\n" in md


def test_seeds_sort_numerically_then_by_name():
    r = _results()
    cond = r["conditions"]["on"]
    cond["seeds"] = {s: cond["seeds"]["0"] for s in ("10", "2", "x", "1")}
    cond["run_dirs"] = {}
    md = format_results_md(r)
    assert "on: 4" in md
    assert study_report._seeds(cond) == ["1", "2", "10", "x"]


def test_a_list_metric_without_values_is_skipped_not_the_ones_after_it():
    """A list metric with only empty lists, or (``niche_shares``) only nulls, has no table;
    one of length 1 has one; the tables after them are kept; a shorter list than the
    longest ends in "—"."""
    r = _results()
    r["metrics"] = ["utility", "empty_list", "niche_shares", "one", "ragged"]
    for c in r["conditions"].values():
        c["mean"].update(empty_list=[], niche_shares=None, one=[0.5], ragged=[1.0, 2.0])
    for b in r["baselines"].values():
        b.update(niche_shares=None, ragged=[3.0])
    md = format_results_md(r)
    titles = [line for line in md.splitlines() if line.startswith("**")]
    assert "**Mean one**" in titles and "**Mean ragged**" in titles
    assert not any("empty_list" in t or "niche shares" in t for t in titles)
    ragged = _md_tables(md)[-1]
    assert ragged[0] == ["condition", "[0]", "[1]"] and ragged[-1] == ["random (baseline)", "3", "—"]


# ---- training curves ----------------------------------------------------------------------


def test_training_curves_mean_and_band_over_seeds(study):
    path, data = study
    curves, notes = training_curves(path)
    assert notes == []
    assert set(curves) == {"on", "off", "solo"}
    for cond, seeds in SEEDS.items():
        for key in CURVE_KEYS:
            per_seed = np.stack([data[cond, s][key].mean(1) for s in seeds])  # [S, T]
            c = curves[cond][key]
            np.testing.assert_array_equal(c["updates"], UPDATES)
            np.testing.assert_allclose(c["mean"], per_seed.mean(0))
            np.testing.assert_allclose(c["lo"], per_seed.min(0))
            np.testing.assert_allclose(c["hi"], per_seed.max(0))
            assert c["seeds"].tolist() == [len(seeds)] * len(UPDATES)


def test_member_mean_skips_members_and_updates_without_values(tmp_path):
    """The mean over members counts only the members with a value (null in the log); an
    update where no member has one is left out of the curve, one member's value is the mean;
    a seed without a run directory (merged from elsewhere) is noted and the next seed still
    read."""
    r = _results()
    r["conditions"] = {"on": r["conditions"]["on"]}
    r["conditions"]["on"]["seeds"]["2"] = r["conditions"]["on"]["seeds"]["1"]
    r["conditions"]["on"]["run_dirs"] = {"1": "runs/on/seed_1", "2": "runs/on/seed_2"}
    r["conditions"]["on"]["merged_from"] = {"0": "/elsewhere/results.json"}
    (tmp_path / "results.json").write_text(json.dumps(r))
    (tmp_path / "runs/on/seed_1").mkdir(parents=True)  # no metrics.jsonl (yet)
    run = tmp_path / "runs/on/seed_2"
    run.mkdir(parents=True)
    logged = [[0.2, None, 0.4], [None, None, None], [0.5, None, None], [-0.1, -0.3, 0.1]]
    (run / "metrics.jsonl").write_text("".join(json.dumps({"update": u + 1, "utility": v}) + "\n"
                                               for u, v in enumerate(logged)))
    curves, notes = training_curves(tmp_path, keys=("utility",))
    c = curves["on"]["utility"]
    assert c["updates"].tolist() == [1, 3, 4]
    np.testing.assert_allclose(c["mean"], [0.3, 0.5, -0.1])
    assert c["seeds"].tolist() == [1, 1, 1]
    assert notes == ["condition on, seed 0: merged from /elsewhere/results.json (its run directory is not here); no curve",
                     "condition on, seed 1: runs/on/seed_1/metrics.jsonl is missing; skipped"]


def test_band_figure_draws_one_line_per_curve_and_skips_malformed_ones():
    c = {"updates": [1, 2, 3], "mean": [0.1, 0.2, 0.3], "lo": [0.0, 0.1, 0.2], "hi": [0.2, 0.3, 0.4]}
    bad = {**c, "mean": [0.1, 0.2]}
    empty = {k: [] for k in c}
    fig = band_figure({"a": c, "bad": bad, "empty": empty, "b": c}, "t", "y")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
    assert ax.get_lines()[0].get_color() != ax.get_lines()[1].get_color()  # one colour per condition
    ten = band_figure({f"c{i}": c for i in range(10)}, "t", "y").axes[0].get_lines()
    assert len({line.get_color() for line in ten}) == 10  # ten conditions, ten colours
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), c["mean"])
    assert ax.get_legend() is not None and not ax.texts
    assert band_figure({"bad": bad}, "t", "y").axes[0].texts[0].get_text() == "no data"


def test_band_figure_renders_without_pyplot():
    from matplotlib.figure import Figure

    from analysis import plots

    c = {"updates": [1, 2, 3], "mean": [0.1, 0.2, 0.3], "lo": [0.0, 0.1, 0.2], "hi": [0.2, 0.3, 0.4]}
    for curves in ({"a": c, "b": {k: v[:1] for k, v in c.items()}}, {}):
        fig = band_figure(curves, "t", "y")
        assert isinstance(fig, Figure)
        assert plots.figure_png(fig, dpi=40)[:8] == b"\x89PNG\r\n\x1a\n"
    src = Path(study_report.__file__).read_text()
    assert not re.search(r"import matplotlib\.pyplot|from matplotlib import pyplot|matplotlib\.use\(", src)


# ---- HTML -----------------------------------------------------------------------------------


def test_html_report_is_complete_and_self_contained(study, study_html):
    path, _ = study
    assert study_html == path / "report.html" and study_html.is_file()
    assert not (path / "report.html.tmp").exists()
    text = study_html.read_text()
    for sid, name in STUDY_SECTIONS:
        assert f'<section id="{sid}"><h2>{name}</h2>' in text, sid
    # Self-contained: no network reference, every image a data URI, no scripts.
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"<(script|iframe)\b|<link\b(?![^>]*href=\"data:)", text)
    assert not re.search(r"\b(src|href)=\"(?!data:|#)", text)
    imgs = _imgs(text)
    assert imgs and all('src="data:image/png;base64,' in i for i in imgs)
    # One curve image per metric.
    for key in CURVE_KEYS:
        assert sum(f'alt="{key} over training"' in i for i in imgs) == 1, key
    assert len(imgs) == len(CURVE_KEYS)
    assert "could not be drawn" not in text
    # Overview: conditions with their overrides, seeds, eval settings, missing runs.
    for cond in SEEDS:
        assert f'<td class="l">{cond}</td>' in text, cond
    assert "train.variants.rewards.specialisation=[0.2,0.2]" in text and "(none: the base config)" in text
    assert "runs/on/seed_0, runs/on/seed_1" in text
    assert "worlds: 2, steps: 50, burn_in: 12" in text and "Student&#x27;s t, 95 %, over seeds" in text
    assert "solo seed 1 (reason: run failed)" in text
    # The comparison table, as in the Markdown: conditions then baselines as rows.
    comp = text[text.index('<section id="comparison">'):text.index('<section id="curves">')]
    first = comp[comp.index("<table>"):comp.index("</table>")]
    labels = re.findall(r"<tr><td class=\"l\">(.*?)</td>", first)
    assert labels == ["on", "off", "solo", "scripted (baseline)", "random (baseline)"]
    for cell in ("0.401 [0.35, 0.452]", "0.123 [0.1, 0.15]", "3.14", "—"):
        assert f"<td>{cell}</td>" in first, cell
    assert "Mean niche shares" in comp and all(f"<th>{n}</th>" in comp for n in NICHES)
    assert "Per-seed values" in comp and "<td>0.422</td>" in comp


def test_html_report_tolerates_missing_and_partial_metrics(tmp_path):
    path, _ = make_study(tmp_path / "partial")
    (path / "runs/off/seed_1/metrics.jsonl").unlink()
    shutil.rmtree(path / "runs/solo")
    on1 = path / "runs/on/seed_1/metrics.jsonl"
    lines = on1.read_text().splitlines()
    on1.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # a run still writing
    (path / "runs/off/seed_0/metrics.jsonl").write_text("")
    text = write_study_report(path).read_text()
    assert "condition off, seed 1: runs/off/seed_1/metrics.jsonl is missing; skipped" in text
    assert "condition solo, seed 0: runs/solo/seed_0/metrics.jsonl is missing; skipped" in text
    assert "condition off, seed 0: metrics.jsonl has no updates logged; skipped" in text
    assert "condition on, seed 1: 3 of 5 logged updates (partial run)" in text
    assert "5 of 5 logged updates" not in text  # only the shorter seeds are noted
    assert "unparsable" not in text  # a half-written last line is expected
    assert len(_imgs(text)) == len(CURVE_KEYS) and "could not be drawn" not in text
    curves, _ = training_curves(path)
    assert set(curves) == {"on"}  # off and solo have no data
    assert curves["on"]["utility"]["seeds"].tolist() == [2, 2, 2, 1, 1]
    # A metric no run logged: a note instead of its figure.
    path2, _ = make_study(tmp_path / "nofitness", curve_keys=["utility", "specialisation_index"])
    text = write_study_report(path2).read_text()
    assert "No fitness curves" in text and "has no fitness" in text
    assert len(_imgs(text)) == 2


def test_html_overview_rows_and_a_curve_missing_before_others(tmp_path):
    """The overview names the base config and interval method in their own rows, an override
    given as one string, and a metric no run logged (here the first) does not hide the
    curves after it."""
    path, _ = make_study(tmp_path / "s", curve_keys=["specialisation_index", "fitness"])
    r = json.loads((path / "results.json").read_text())
    r["conditions"]["solo"]["overrides"] = "train.updates=3"
    (path / "results.json").write_text(json.dumps(r))
    text = write_study_report(path).read_text()
    assert '<th class="l">base config</th><td class="l">configs/tiny.yaml</td>' in text
    assert '<th class="l">confidence intervals</th><td class="l">Student&#x27;s t, 95 %, over seeds</td>' in text
    assert "<p>Conditions: mean over seeds [Student&#x27;s t, 95 %, over seeds]" in text
    assert ('<td class="l">solo</td><td class="l">train.updates=3</td><td class="l">0</td>'
            '<td class="l">runs/solo/seed_0</td>') in text
    assert "No utility curves" in text and len(_imgs(text)) == 2
    r.pop("base"), r.pop("ci_method")
    (path / "results.json").write_text(json.dumps(r))
    text = write_study_report(path).read_text()
    assert '<th class="l">base config</th><td class="l">—</td>' in text
    assert "[no interval method given]" in text


@pytest.mark.parametrize("what", ["missing_dir", "file", "no_results", "unparsable", "not_object"])
def test_not_a_study_directory(tmp_path, what):
    d = tmp_path / "study"
    if what == "file":
        d.write_text("x")
    elif what != "missing_dir":
        d.mkdir()
        if what == "unparsable":
            (d / "results.json").write_text('{"study": "x", "conditions": {')
        if what == "not_object":
            (d / "results.json").write_text("[1, 2]")
    with pytest.raises(NotAStudyError) as err:
        write_study_report(d)
    assert isinstance(err.value, NotARunError) and isinstance(err.value, ValueError)
    assert str(d) in str(err.value)
    if what == "no_results":
        assert "results.json is missing" in str(err.value)
    if what == "unparsable":
        assert "could not be parsed" in str(err.value)
    assert not (d / "report.html").exists()


# ---- the report in a browser ----------------------------------------------------------------


def test_study_report_in_headless_chromium(chromium, study_html):
    from selenium.webdriver.common.by import By

    chromium.get(study_html.resolve().as_uri())
    assert "Agora study report: smoke" in chromium.title
    for sid, _ in STUDY_SECTIONS:
        el = chromium.find_element(By.ID, sid)
        chromium.execute_script("arguments[0].scrollIntoView();", el)
        assert el.is_displayed(), sid
        assert el.find_element(By.TAG_NAME, "h2").text.strip(), sid
    images = chromium.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);"
    )
    assert len(images) == len(_imgs(study_html.read_text())) == len(CURVE_KEYS)
    bad = [i for i in images if not (i[1] and i[2] > 0 and i[3] > 0)]
    assert not bad, bad
    severe = [e for e in chromium.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe
