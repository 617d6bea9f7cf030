"""Every relative link in the README, the changelog and docs/ leads somewhere.

A moved section or a renamed page breaks a link silently on GitHub and PyPI;
here it breaks the build. Anchors are checked against GitHub's heading slugs.
External links are not fetched (no test reaches the internet).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([REPO / "README.md", REPO / "CHANGELOG.md", *(REPO / "docs").glob("*.md")])

_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def without_fences(path: Path) -> str:
    return _FENCE.sub("", path.read_text())


def prose(path: Path) -> str:
    return _INLINE_CODE.sub("", without_fences(path))


def github_slug(heading: str) -> str:
    text = re.sub(r"`", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    # Code in a heading is part of its slug: "### `MAX_DURATION`" is #max_duration.
    return {github_slug(heading) for heading in _HEADING.findall(without_fences(path))}


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in _LINK.findall(prose(path))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("//")
    ]


def test_documents_exist() -> None:
    names = {path.relative_to(REPO).as_posix() for path in DOCUMENTS}
    assert {"docs/index.md", "docs/api.md", "docs/security.md", "docs/testing.md"} <= names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(REPO).as_posix())
def test_relative_links_resolve(document: Path) -> None:
    broken = []
    for target in relative_links(document):
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert broken == []


def test_slugs_match_github() -> None:
    assert github_slug("Content-Security-Policy") == "content-security-policy"
    assert github_slug("Testing your own code: the loopback fake") == (
        "testing-your-own-code-the-loopback-fake"
    )
    assert github_slug("The `AVATURN` dict") == "the-avaturn-dict"
    assert github_slug("`MAX_DURATION`") == "max_duration"
    assert github_slug("`django_avaturn.W004`") == "django_avaturnw004"
    assert github_slug("1. Install the package") == "1-install-the-package"


def test_a_heading_made_of_code_is_an_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Settings\n\n### `MAX_DURATION`\n\n```md\n## not a heading\n```\n")
    assert anchors(page) == {"settings", "max_duration"}


PAGES = sorted(path for path in (REPO / "docs").glob("*.md") if path.name != "index.md")


def test_the_readme_lists_every_page_of_the_reference() -> None:
    listed = {target.partition("#")[0] for target in relative_links(REPO / "README.md")}
    assert sorted(f"docs/{page.name}" for page in PAGES if f"docs/{page.name}" not in listed) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.name)
def test_pages_link_only_within_the_site(page: Path) -> None:
    """The site holds docs/ plus the README and the changelog (docs/hooks.py):
    a page linking anywhere else in the repository works on GitHub but not there."""
    outside = [
        target
        for target in relative_links(page)
        if target.partition("#")[0]
        and "/" in target.partition("#")[0]
        and target.partition("#")[0] not in {"../README.md", "../CHANGELOG.md"}
        and not target.startswith("images/")
    ]
    assert outside == []
