"""``scripts/screenshots.py``, which makes the documentation's screenshots, still runs.

It drives the real example project (``manage.py rundemo``) in Chromium; this
runs it into a temporary folder and checks it made four real pictures.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.browser import CHROMIUM, REPO_DIR, missing

pytestmark = pytest.mark.browser

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """A PNG's width and height, from its IHDR chunk (always the first)."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def test_the_screenshot_script_makes_the_four_pictures(tmp_path: Path) -> None:
    if not Path(CHROMIUM).is_file():
        missing(f"{CHROMIUM} is missing: run .ci/install-browser-deps")
    pytest.importorskip("playwright", reason="run .ci/install-browser-deps")

    result = subprocess.run(
        [sys.executable, "scripts/screenshots.py", "--out", str(tmp_path)],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    made = {path.name: png_size(path) for path in tmp_path.iterdir()}
    assert sorted(made) == [
        "admin-sessions.png",
        "admin-usage.png",
        "widget-live.png",
        "widget-start.png",
    ]
    for name in ("widget-start.png", "widget-live.png"):
        assert made[name][0] == 800 and 500 <= made[name][1] <= 1200, (name, made[name])
    for name in ("admin-sessions.png", "admin-usage.png"):
        assert made[name][0] == 1440 and 400 <= made[name][1] <= 900, (name, made[name])
    # Pictures, not blank pages: a flat image compresses to almost nothing.
    assert all((tmp_path / name).stat().st_size > 20_000 for name in made)
