"""The documentation's links: every relative link in the README, ``docs/`` and the results'
Markdown points at a file of the repository (a moved study folder or a renamed doc breaks
one), and none leaves the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "results").rglob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks are not links
    return [m.group(1) for m in LINK.finditer(text) if not re.match(r"[a-z]+:", m.group(1)) and not m.group(1).startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(page):
    for link in _links(page):
        target = (page.parent / link.split("#")[0]).resolve()
        assert target.is_relative_to(ROOT), f"{page.relative_to(ROOT)} links outside the repository: {link}"
        assert target.exists(), f"{page.relative_to(ROOT)}: broken link {link}"


def test_no_page_points_outside_the_repository():
    for page in PAGES:
        assert "../shared/" not in page.read_text(), page


def test_the_link_checker_sees_links():
    """The pattern finds the README's links (an empty match would pass every page)."""
    assert len(_links(ROOT / "README.md")) >= 5
