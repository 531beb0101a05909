"""The docs cannot rot: docs/templates.md is what tools/gendocs.py makes of the docstrings,
every template command has one, and every relative link in README.md and docs/ resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import gendocs
from composer.templates import TemplateRunner

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_command_has_a_docstring() -> None:
    names = [a.removeprefix("_p_") for a in vars(TemplateRunner) if a.startswith("_p_")]
    assert {"install", "installpkg", "runcmd", "removekmod", "createaddrsize"} <= set(names)
    for name, doc in gendocs.commands():
        synopsis, _, meaning = doc.partition("\n")
        assert synopsis.split()[:1] == [name], f"{name}: the docstring's first line is the synopsis, `{name} ARGS`"
        assert meaning.strip(), f"{name}: the docstring says what the command does after its synopsis"
    assert [n for n, _ in gendocs.commands()] == names


def test_templates_md_is_current() -> None:
    current = gendocs.TEMPLATES_MD.read_text() if gendocs.TEMPLATES_MD.exists() else ""
    if current != gendocs.render():
        pytest.fail("docs/templates.md is out of date with the template commands' docstrings: run `make docs`", pytrace=False)


def test_templates_md_documents_every_command() -> None:
    text = gendocs.render()
    for name, _ in gendocs.commands():
        assert f"\n### {name}\n" in text


def test_rst_to_markdown() -> None:
    doc = "Title\n-----\nSee ``a``\nand :func:`b`. ``two\nlines``\n\nList::\n\n    x  ``y``\n    z\n\nAfter."
    assert gendocs.rst_to_markdown(doc) == (
        "## Title\n\nSee `a`\nand `b`. `two\nlines`\n\nList:\n\n```\nx  ``y``\nz\n```\n\nAfter.\n"
    )


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(path: Path) -> str:
    return re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks hold no links or headings


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as '-'."""
    titles = re.findall(r"(?m)^#{1,6} (.+)$", _prose(path))
    return {re.sub(r"[^\w\- ]", "", t.strip().lower()).replace(" ", "-") for t in titles}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _LINK.findall(_prose(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        dest = page.parent / path if path else page
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to files or headings that do not exist: {broken}"
