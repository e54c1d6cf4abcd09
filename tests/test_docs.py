"""The documentation's links and navigation, checked without MkDocs (`make docs` builds the site).

Every relative link of README.md and of the pages under docs/ must name a file that exists (the
API reference pages, generated at build time by scripts/docs_hooks.py, count as existing), every
page must be in mkdocs.yml's nav, and the README must stay a short page.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Pages scripts/docs_hooks.py generates from the packages' _PUBLIC tables.
GENERATED = {DOCS / "reference" / "landscape.md", DOCS / "reference" / "sam.md"}
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])


def _links(path: pathlib.Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return [m for m in LINK.findall(text) if not re.match(r"[a-z]+:|#", m)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_name_existing_files(page):
    base = ROOT if page.name == "README.md" else page.parent
    missing = []
    for link in _links(page):
        target = (base / link.split("#")[0]).resolve()
        if page.parent == DOCS / "guide" and target.is_relative_to(DOCS / "figures"):
            target = ROOT / "figures" / target.name  # the hook serves figures/ at the site root
        if not target.exists() and target not in GENERATED:
            missing.append(link)
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config[config.index("\nnav:") :]
    entries = {DOCS / m for m in re.findall(r"([\w./-]+\.md)\s*$", nav, re.M)}
    pages = set(DOCS.rglob("*.md")) | GENERATED
    assert pages - entries == set(), "pages missing from mkdocs.yml's nav"
    assert entries - pages == set(), "nav entries without a page"


def test_the_readme_reads_in_five_minutes():
    words = len((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert words <= 1000, f"README.md has {words} words: move details into a page under docs/"
