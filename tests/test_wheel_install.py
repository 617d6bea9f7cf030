"""The built distribution, as a user gets it from PyPI.

Builds the sdist and (from it) the wheel, checks what they carry, installs the
wheel into a brand-new virtualenv, creates a project with ``django-admin
startproject`` and follows README.md's *Install* section step by step. The
steps are parsed from the README, so a README that drifts from what works
fails here. The project then talks to the loopback fake of both upstreams:
a signed-in user's page renders ``{% avaturn_head %}`` and the session API
answers 201.

Slow (a virtualenv and PyPI downloads, pip's cache helps): marker ``packaging``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from django_avaturn import __version__
from django_avaturn.testing import FakeUpstream
from django_avaturn.testing.__main__ import build_parser
from tests.helpers import exclusive_lock

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PROJECT = "mysite"

# What a working install cannot do without: a missing glob in the build config
# would drop one of these silently and only a real install would notice.
REQUIRED_IN_PACKAGE = [
    "django_avaturn/__init__.py",
    "django_avaturn/py.typed",
    "django_avaturn/migrations/0001_initial.py",
    "django_avaturn/templates/django_avaturn/widget.html",
    "django_avaturn/static/django_avaturn/avaturn-widget.js",
    # The modules the entry script imports (tests/test_widget_modules.py walks them).
    *sorted(
        path.relative_to(REPO).as_posix()
        for path in (REPO / "django_avaturn/static/django_avaturn/widget").glob("*.js")
    ),
    "django_avaturn/static/django_avaturn/avaturn-widget.css",
    "django_avaturn/templatetags/avaturn.py",
    "django_avaturn/testing/__main__.py",
    "django_avaturn/testing/standin-sdk.js",
]
FORBIDDEN_FRAGMENTS = [
    ".sqlite3",
    "__pycache__",
    ".pyc",
    "node_modules",
    "/.sdk/",
    ".env",
    # The JavaScript tooling: development only.
    "package.json",
    "package-lock.json",
    "biome.json",
]


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result.stdout + result.stderr


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """``python -m build``: the sdist first, then the wheel built *from the sdist*,
    so a file the sdist forgets is also missing from the wheel.

    Built once per run: pytest-xdist's workers share it through the run's
    temporary root, the first to get its lock building it.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent
    else:
        shared = tmp_path_factory.mktemp("build")
    out = shared / "dist"
    with exclusive_lock(shared / "dist.lock"):
        if not out.is_dir():
            building = shared / "dist-building"
            shutil.rmtree(building, ignore_errors=True)
            run(sys.executable, "-m", "build", "--outdir", building, REPO, cwd=REPO)
            building.rename(out)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dist(sdist=sdist, wheel=wheel)


def test_names_carry_the_single_version(dist: Dist) -> None:
    assert dist.sdist.name == f"django_avaturn-{__version__}.tar.gz"
    assert dist.wheel.name == f"django_avaturn-{__version__}-py3-none-any.whl"


def test_wheel_contents(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"django_avaturn-{__version__}.dist-info/METADATA").decode()
    missing = [name for name in REQUIRED_IN_PACKAGE if name not in names]
    assert missing == []
    assert f"django_avaturn-{__version__}.dist-info/licenses/LICENSE" in names
    # Only the package: no tests, example project or benchmarks on a user's path.
    assert {name.split("/")[0] for name in names} == {
        "django_avaturn",
        f"django_avaturn-{__version__}.dist-info",
    }
    assert [name for name in names if any(bad in name for bad in FORBIDDEN_FRAGMENTS)] == []
    assert "License-Expression: MIT" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    assert "Requires-Python: >=3.10" in metadata
    # The long description is the README, so PyPI shows the same install steps.
    assert "## Install" in metadata


def test_sdist_contents(dist: Dist) -> None:
    prefix = f"django_avaturn-{__version__}/"
    with tarfile.open(dist.sdist) as sdist:
        names = {name.removeprefix(prefix) for name in sdist.getnames()}
    missing = [
        name
        for name in [*REQUIRED_IN_PACKAGE, "LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml"]
        if name not in names
    ]
    assert missing == []
    assert "tests/settings.py" in names  # downstream packagers run the suite from the sdist
    assert [name for name in names if any(bad in name for bad in FORBIDDEN_FRAGMENTS)] == []


def test_twine_check_strict(dist: Dist) -> None:
    output = run(
        sys.executable, "-m", "twine", "check", "--strict", dist.sdist, dist.wheel, cwd=REPO
    )
    assert output.count("PASSED") == 2


# -- the README's install steps, literally ----------------------------------------------


@dataclass(frozen=True)
class Block:
    lang: str
    text: str


def install_section_blocks(readme: str) -> list[Block]:
    """The fenced code blocks of README.md's ``## Install`` section, in order."""
    match = re.search(r"^## Install\n(.*?)(?=^## )", readme, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Install' section"
    blocks = [
        Block(lang, text)
        for lang, text in re.findall(r"^```(\w+)\n(.*?)^```", match.group(1), re.M | re.S)
    ]
    assert blocks, "README.md's Install section has no code blocks"
    return blocks


def merge_python_block(block: str, existing: str) -> str:
    """Turn a README snippet into lines appended to an existing module.

    The README writes ``NAME = [ # ... , new entries ]`` meaning "add these to
    the list you have": such a list becomes ``NAME += [new entries]`` when the
    module already defines NAME. Everything else (imports, new settings) is
    appended verbatim.
    """
    existing_names = {
        target.id
        for node in ast.parse(existing).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    lines = []
    for node in ast.parse(block).body:
        source = ast.get_source_segment(block, node)
        assert source is not None
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.List)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in existing_names
        ):
            name = node.targets[0].id
            items = [ast.get_source_segment(block, item) for item in node.value.elts]
            lines.append(f"{name} += [{', '.join(item for item in items if item)}]")
        else:
            lines.append(source)
    return "\n\n# From README.md's Install section:\n" + "\n".join(lines) + "\n"


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


CHECK_SCRIPT = textwrap.dedent(
    """
    # A signed-in visitor opens a page with the widget and starts a session
    # the way the widget's script does: POST to the page's data-sessions-url
    # with the page's CSRF token.
    import json
    import os
    import re

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    django.setup()

    import django_avaturn
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()  # adds "testserver" to ALLOWED_HOSTS, nothing else we rely on
    user = get_user_model().objects.create_user("visitor", password="not-a-real-password")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    sign_in_page = Client().get("/accounts/login/")
    anonymous = Client().get("/avatar/")
    page = client.get("/avatar/")
    html = page.content.decode()
    sessions_url = re.search(r'data-sessions-url="([^"]+)"', html).group(1)
    csrf = re.search(r'data-csrf-token="([^"]+)"', html).group(1)
    no_csrf = client.post(sessions_url, {}, content_type="application/json")
    start = client.post(
        sessions_url, {}, content_type="application/json", headers={"X-CSRFToken": csrf}
    )
    body = start.json()
    end = client.delete(
        f"{sessions_url}{body.get('session_id')}/", headers={"X-CSRFToken": csrf}
    )
    print("REPORT " + json.dumps({
        "package_file": django_avaturn.__file__,
        "sign_in_status": sign_in_page.status_code,
        "sign_in_page": sign_in_page.content.decode(),
        "anonymous_redirect": anonymous.headers.get("Location", ""),
        "page_status": page.status_code,
        "page": html,
        "no_csrf_status": no_csrf.status_code,
        "start_status": start.status_code,
        "start_body": body,
        "start_raw": start.content.decode(),
        "end_status": end.status_code,
    }))
    """
)


PRINT_AVATURN = textwrap.dedent(
    """
    import json

    import django
    from django.conf import settings

    django.setup()
    print("AVATURN " + json.dumps(settings.AVATURN))
    """
)


@dataclass
class NewProject:
    """A fresh virtualenv in ``root`` and the project the README's steps build there."""

    root: Path
    wheel: Path
    env: dict[str, str]
    exported: dict[str, str]
    created: bool = False

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def path(self) -> Path:
        return self.root / PROJECT

    def manage(self, *args: str) -> str:
        return run(self.python, "manage.py", *args, cwd=self.path, env=self.env)

    def avaturn_setting(self, env: dict[str, str], settings_module: str) -> dict[str, object]:
        """``settings.AVATURN`` as the project computes it in ``env``."""
        env = {**env, "DJANGO_SETTINGS_MODULE": settings_module}
        output = run(self.python, "-c", PRINT_AVATURN, cwd=self.path, env=env)
        (line,) = [line for line in output.splitlines() if line.startswith("AVATURN ")]
        value = json.loads(line.removeprefix("AVATURN "))
        assert isinstance(value, dict)
        return value

    def ensure_created(self) -> None:
        if not self.created:
            run(
                self.venv / "bin" / "django-admin",
                "startproject",
                PROJECT,
                cwd=self.root,
                env=self.env,
            )
            self.created = True

    def shell_line(self, line: str) -> None:
        if line == "pip install django-avaturn":
            run(self.python, "-m", "pip", "install", "-q", self.wheel, cwd=self.root, env=self.env)
        elif line.startswith("python manage.py "):
            self.ensure_created()
            self.manage(*line.split()[2:])
        elif line.startswith("export "):
            for assignment in line.split()[1:]:
                name = assignment.split("=", 1)[0]
                assert name in self.exported, f"README exports an unknown variable: {name}"
                self.env[name] = self.exported[name]
        else:
            pytest.fail(f"README install step this test does not understand: {line!r}")

    def follow(self, block: Block) -> None:
        if block.lang == "bash":
            for line in block.text.splitlines():
                if line.strip() and not line.strip().startswith("#"):
                    self.shell_line(line.strip())
            return
        self.ensure_created()
        if block.lang == "python":
            first_line = block.text.splitlines()[0]
            target = {"# settings.py": "settings.py", "# urls.py": "urls.py"}.get(first_line)
            assert target, f"README python block names no file: {first_line!r}"
            module = self.path / PROJECT / target
            existing = module.read_text()
            module.write_text(existing + merge_python_block(block.text, existing))
        elif block.lang == "django":
            named = re.fullmatch(r"\{# (templates/\S+) #\}", block.text.splitlines()[0])
            assert named, f"README template block names no file: {block.text.splitlines()[0]!r}"
            template = self.path / named.group(1)
            template.parent.mkdir(parents=True, exist_ok=True)
            template.write_text(block.text)
        else:
            pytest.fail(f"README Install section has a {block.lang!r} block this test ignores")


def test_wheel_installs_into_a_new_project_by_following_the_readme(
    dist: Dist, tmp_path: Path, fake: FakeUpstream
) -> None:
    run(sys.executable, "-m", "venv", tmp_path / "venv", cwd=tmp_path)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "DJANGO", "VIRTUAL_ENV", "AVATURN", "OPENAI"))
    }
    env["PATH"] = f"{tmp_path / 'venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # The README's `export AVATURN_API_KEY=... OPENAI_API_KEY=...`, with the
    # fake's keys: the install path exercises the environment-variable fallback.
    exported = {"AVATURN_API_KEY": fake.avaturn_api_key, "OPENAI_API_KEY": fake.openai_api_key}
    site = NewProject(root=tmp_path, wheel=dist.wheel, env=env, exported=exported)

    for block in install_section_blocks(README.read_text()):
        site.follow(block)

    assert site.created, "the README never got to a project"
    assert set(exported) <= set(env), "the README never exported the API keys"
    project, venv, python = site.path, site.venv, site.python

    # The README's route without keys: with DEBUG on (startproject's), the
    # settings are those `python -m django_avaturn.testing` prints, for the
    # fake it runs with no arguments; with DEBUG off, never.
    without_keys = {key: value for key, value in env.items() if key not in exported}
    cli = build_parser().parse_args([])
    assert (cli.avaturn_key, cli.openai_key) == (fake.avaturn_api_key, fake.openai_api_key)
    printed_by_the_fake = {
        key: value.replace(fake.url, f"http://{cli.host}:{cli.port}")
        for key, value in fake.settings().items()
    }
    offline = site.avaturn_setting(without_keys, f"{PROJECT}.settings")
    assert {key: offline.get(key) for key in printed_by_the_fake} == printed_by_the_fake
    settings_py = project / PROJECT / "settings.py"
    deployed = settings_py.read_text().replace("\nDEBUG = True\n", "\nDEBUG = False\n")
    assert "\nDEBUG = False\n" in deployed
    (project / PROJECT / "settings_deployed.py").write_text(deployed)
    deployed_avaturn = site.avaturn_setting(without_keys, f"{PROJECT}.settings_deployed")
    assert set(printed_by_the_fake) & set(deployed_avaturn) == set()
    with_keys = site.avaturn_setting(env, f"{PROJECT}.settings")
    assert set(printed_by_the_fake) & set(with_keys) == set()

    # Only the upstreams' URLs are the test's own: those of the fake (the keys
    # came from the environment). Pages, templates and sign-in are the README's.
    settings_py.write_text(
        settings_py.read_text()
        + "\n# The test's own site:\n"
        + f"AVATURN = {{**AVATURN, 'API_URL': {fake.avaturn_url!r},"
        + f" 'OPENAI_BASE_URL': {fake.openai_base_url!r}}}\n"
    )

    assert "django_avaturn." not in site.manage("check", "--fail-level", "WARNING")
    found = site.manage("findstatic", "django_avaturn/avaturn-widget.js")
    assert str(venv) in found  # served from the installed wheel, not this checkout

    (project / "check_install.py").write_text(CHECK_SCRIPT)
    output = run(python, "check_install.py", cwd=project, env=env)
    (line,) = [line for line in output.splitlines() if line.startswith("REPORT ")]
    report = json.loads(line.removeprefix("REPORT "))

    assert report["package_file"].startswith(str(venv))
    assert report["sign_in_status"] == 200
    assert "csrfmiddlewaretoken" in report["sign_in_page"]
    assert report["anonymous_redirect"].startswith("/accounts/login/")
    assert report["page_status"] == 200
    assert "data-avaturn-widget" in report["page"]
    assert "/static/django_avaturn/avaturn-widget.js" in report["page"]
    assert report["no_csrf_status"] == 403
    assert report["start_status"] == 201, report["start_raw"]
    assert set(report["start_body"]) == {"session_id", "token", "expires_at", "api_host", "engine"}
    for key in exported.values():
        assert key not in report["start_raw"]
        assert key not in report["page"]
    assert report["end_status"] == 204
    assert fake.live_session_ids() == set()
    assert len(fake.sessions) == 1
