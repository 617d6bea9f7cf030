"""MkDocs hooks: the site's home page is README.md and its changelog is CHANGELOG.md.

Both files stay at the repository's root, where GitHub and PyPI show them;
the site renders those same files, never copies. Links are written for
GitHub: README.md links into ``docs/``, and the pages link up to
``../README.md`` and ``../CHANGELOG.md``. Here they become links between
the site's pages, which the strict build then checks like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parent.parent
HOME = "index.md"
CHANGELOG = "changelog.md"

# (as written on GitHub, as the site needs it), per kind of page.
_README_LINKS = (("](docs/", "]("), ("](CHANGELOG.md", f"]({CHANGELOG}"))
_PAGE_LINKS = (("](../README.md", f"]({HOME}"), ("](../CHANGELOG.md", f"]({CHANGELOG}"))


def _relink(markdown: str, links: tuple[tuple[str, str], ...]) -> str:
    for github, site in links:
        markdown = markdown.replace(github, site)
    return markdown


def on_files(files: Files, config: MkDocsConfig) -> Files:
    files.append(File.generated(config, CHANGELOG, abs_src_path=str(ROOT / "CHANGELOG.md")))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, **kwargs: Any) -> str:
    if page.file.src_uri == HOME:
        # docs/index.md only points GitHub readers at the README.
        return _relink((ROOT / "README.md").read_text(encoding="utf-8"), _README_LINKS)
    return _relink(markdown, _PAGE_LINKS)
