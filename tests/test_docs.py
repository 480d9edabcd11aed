"""The documentation a newcomer navigates: the README is a short entry page, every relative link in it and in
docs/ reaches a file (and, with `#anchor`, a heading there), and every command's `--help` names its page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_cli

from ettin_cli.cli import COMMAND_MODULES, DOC_PAGES

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-'."""
    out = set()
    fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"^#{1,6} (.*)", line)):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_the_readme_is_an_entry_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert "make test" in text and "make demo" in text
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in text, f"README does not link {page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_reach_a_file_and_heading(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target}: no such file"
        if anchor:
            assert anchor in anchors(dest), f"{page.name}: link to {target}: no such heading"


def test_every_command_help_names_its_page(capsys):
    assert set(DOC_PAGES) == set(COMMAND_MODULES)
    for name in COMMAND_MODULES:
        code, stdout, _ = run_cli([name.replace("_", "-"), "--help"], capsys)
        assert code == 0
        page = DOC_PAGES[name]
        assert f"Docs: {page}" in stdout, name
        path, _, anchor = page.partition("#")
        assert (ROOT / path).is_file() and (not anchor or anchor in anchors(ROOT / path))
