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


def prose(path: Path) -> str:
    return _INLINE_CODE.sub("", _FENCE.sub("", path.read_text()))


def github_slug(heading: str) -> str:
    text = re.sub(r"`", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {github_slug(heading) for heading in _HEADING.findall(prose(path))}


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
