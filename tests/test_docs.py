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


def test_no_page_names_a_path_outside_the_repository():
    """A path written in code quotes (`../x/y.md`) resolves inside the repository too: a
    reader's clone has nothing beside it."""
    for page in PAGES:
        for path in re.findall(r"`(\.\./[^`\s]+)`", page.read_text()):
            assert (page.parent / path).resolve().is_relative_to(ROOT), f"{page.relative_to(ROOT)} names {path}"


def test_the_link_checker_sees_links():
    """The pattern finds the README's links (an empty match would pass every page)."""
    assert len(_links(ROOT / "README.md")) >= 5


FLOORS = ("economy", "agents", "analysis", "selfplay")  # docs/design.md: each imports only from those before it


def _imports(path: Path):
    import ast

    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            yield n.module, [a.name for a in n.names]
        elif isinstance(n, ast.Import):
            for a in n.names:
                yield a.name, []


def test_the_import_graph_has_four_floors_and_no_private_imports():
    """docs/design.md's contract: a package imports only from the floors before it, and no
    module imports another module's private helper."""
    for i, pkg in enumerate(FLOORS):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for module, names in _imports(path):
                top = module.split(".")[0]
                if top in FLOORS:
                    assert FLOORS.index(top) <= i, f"{path.relative_to(ROOT)} imports {module} (a floor above)"
                    private = [x for x in names if x.startswith("_")]
                    assert not private or module == ".".join(path.relative_to(ROOT).with_suffix("").parts), (
                        f"{path.relative_to(ROOT)} imports private {private} from {module}")


def test_the_design_pages_economy_contract_runs(monkeypatch):
    """docs/design.md's code block runs as written (from the repository root) and keeps the
    ledger identity it states."""
    import numpy as np

    block = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "design.md").read_text(), re.S).group(1)
    ns: dict = {}
    monkeypatch.chdir(ROOT)
    exec(compile(block, "docs/design.md", "exec"), ns)

    obs, state, info = ns["obs"], ns["state"], ns["info"]
    assert obs.shape[0] == 4096
    before = ns["economy"].ledger(ns["env"].reset(ns["key"])[1])
    after = ns["economy"].ledger(state)
    assert after["money"] == before["money"]
    np.testing.assert_array_equal(np.asarray(after["goods"]),
                                  np.asarray(before["goods"]) + ns["economy"].world_total(info["produced"])
                                  - ns["economy"].world_total(info["consumed"]))
