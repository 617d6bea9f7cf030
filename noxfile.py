"""The version matrix: each supported Django on the Pythons it supports.

    nox                 # every combination whose interpreter is on PATH
    nox -t edges        # only the oldest and the newest combination available here
    nox -s package      # build the sdist and wheel, twine check --strict

On SQLite, or on the PostgreSQL database ``AVATURN_TEST_DATABASE_URL`` names
(the environment reaches the tests; ``.ci/run`` runs the oldest edge there).

Virtualenvs are reused between runs (``reuse_venv``): reinstalling Django,
DRF and the OpenAI SDK for every run would cost more than the tests.
The browser tier and the wheel-install test are left to ``.ci/run``: the first
needs Chromium, the second builds its own virtualenv and does not depend on
the interpreter nox picked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import nox

if sys.version_info >= (3, 11):
    import tomllib
else:  # nox itself brings tomli on Python 3.10
    import tomli as tomllib

nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = False

# (Python, Django): the oldest Python each Django supports, and 3.11 for 5.2's
# most common deployment. Django 6.x needs Python 3.12+.
MATRIX = [
    ("3.10", "5.2"),
    ("3.11", "5.2"),
    ("3.12", "6.0"),
    ("3.13", "6.1"),
]


def _lowest_dependencies() -> list[str]:
    """pyproject's runtime floors as pins (``openai>=3`` -> ``openai==3``), Django aside.

    The oldest combination runs on them, so a floor that no longer works
    (openai 2 lacked the httpx2 the app imports) fails here, not for a user.
    """
    with open("pyproject.toml", "rb") as file:
        declared = tomllib.load(file)["project"]["dependencies"]
    pins = []
    for requirement in declared:
        found = re.fullmatch(r"([A-Za-z0-9_.\-]+)>=([0-9.]+)", requirement)
        if found is None:
            raise ValueError(f"not a plain floor, cannot pin it: {requirement!r}")
        name, floor = found.groups()
        if name.lower() != "django":
            pins.append(f"{name}=={floor}")
    return pins


def _available(python: str) -> bool:
    # Run it: a pyenv shim is on PATH for every version but only works for the
    # selected ones.
    found = shutil.which(f"python{python}")
    if found is None:
        return False
    return subprocess.run([found, "-c", ""], check=False).returncode == 0  # noqa: S603 (a PATH interpreter)


_AVAILABLE = [combo for combo in MATRIX if _available(combo[0])]
# Tagging at import time lets ``nox -t edges`` mean "oldest and newest on this
# machine" without the caller knowing which interpreters exist.
_EDGES = {_AVAILABLE[0], _AVAILABLE[-1]} if _AVAILABLE else set()


def _params() -> list[nox.param]:
    return [
        nox.param(
            python,
            django,
            id=f"py{python}-django{django}",
            tags=["edges"] if (python, django) in _EDGES else [],
        )
        for python, django in MATRIX
    ]


@nox.session
@nox.parametrize(("python", "django"), _params())
def tests(session: nox.Session, django: str) -> None:
    """The test suite (no browser, no wheel install) with every warning an error.

    The oldest combination gets the oldest versions of the other runtime
    dependencies that pyproject.toml admits; the others get the newest.
    """
    oldest = (session.python, django) == MATRIX[0]
    session.install(
        "-e",
        ".[test,postgres]",
        f"django~={django}.0",
        *(_lowest_dependencies() if oldest else []),
    )
    session.run(
        "python",
        "-m",
        "pytest",
        "-W",
        "error",
        "-m",
        "not browser and not packaging",
        "-p",
        "no:cacheprovider",
        # .ci/matrix runs sessions side by side: each keeps its temporary
        # directories in its own environment, so no session's clean-up of the
        # shared default root races another's.
        f"--basetemp={session.create_tmp()}/pytest",
        "-q",
        *session.posargs,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )


@nox.session(python=False)
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel into dist/ and check their metadata strictly."""
    shutil.rmtree("dist", ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", "dist", ".")
    session.run("python", "-m", "twine", "check", "--strict", "dist/*")
