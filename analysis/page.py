"""The HTML pieces of Agora's self-contained report pages (the run report,
:mod:`analysis.report`, and the study report, :mod:`analysis.study_report`): escaping,
number formatting, tables, figures embedded as PNG, and the page itself."""

from __future__ import annotations

import base64
import datetime as _dt
import html
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from analysis import plots
from analysis.files import write_atomic

__all__ = ["DPI", "Figures", "escape", "fmt", "kv_table", "table", "write_page"]

DPI = 80

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1100px; padding: 0 1.2em 3em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.1em; } .sub { color: #666; margin-top: 0; }
nav { position: sticky; top: 0; background: #fff; padding: 0.5em 0; border-bottom: 1px solid #ddd; }
nav a { margin-right: 1em; text-decoration: none; color: #1f5fa8; }
section { margin-top: 1.5em; border-top: 1px solid #eee; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.missing { color: #a05a00; font-style: italic; } .note { color: #666; font-size: 0.9em; }
"""


def escape(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not np.isfinite(v):
        return str(v)
    return f"{v:.{digits}g}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned text."""
    cls = lambda i: ' class="l"' if i < left else ""
    head = "".join(f"<th{cls(i)}>{escape(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{escape(c if isinstance(c, str) else fmt(c))}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f'<tr><th class="l">{escape(k)}</th><td class="l">{escape(v)}</td></tr>' for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"


class Figures:
    """Renders figures to ``<img>`` tags; a figure that fails becomes a note, not a crash."""

    def __init__(self):
        self.count = 0
        self.errors: list[str] = []

    def img(self, alt: str, make: Callable[[], Any]) -> str:
        try:
            fig = make()
            png = plots.figure_png(fig, dpi=DPI)
        except Exception as err:  # noqa: BLE001 - one bad plot must not lose the report
            self.errors.append(f"{alt}: {type(err).__name__}: {err}")
            return f'<p class="missing">Plot "{escape(alt)}" could not be drawn: {escape(type(err).__name__)}: {escape(err)}</p>'
        self.count += 1
        data = base64.b64encode(png).decode("ascii")
        return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def write_page(out: Path, title: str, where: Path, sections: Sequence[tuple[str, str]], body: dict, notes: Sequence[str]) -> Path:
    """Write a self-contained report page (run or study) atomically: a title, the folder it
    describes, a navigation bar, notes, then one ``<section>`` per ``(id, name)``."""
    nav = "".join(f'<a href="#{sid}">{escape(name)}</a>' for sid, name in sections)
    parts = "".join(f'<section id="{sid}"><h2>{escape(name)}</h2>{body[sid]}</section>\n' for sid, name in sections)
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    note_html = "".join(f'<p class="note">{escape(n)}</p>' for n in notes)
    doc = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n<p class=\"sub\">{escape(where.resolve())} — generated {escape(stamp)}</p>\n"
        f"<nav>{nav}</nav>\n{note_html}{parts}</body>\n</html>\n"
    )
    write_atomic(out, doc)
    return out
