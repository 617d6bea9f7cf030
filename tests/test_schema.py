"""The OpenAPI schema: valid for the example project, accurate for our views, optional."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "drf_spectacular", reason="drf-spectacular is not installed (pip install -e '.[schema]')"
)

from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.settings import patched_settings

from django_avaturn.api.schema import SCHEMA_SETTINGS

REPO = Path(__file__).resolve().parent.parent
ERROR_REF = "#/components/schemas/Error"
OPERATIONS = {
    ("/avaturn/sessions/", "get"): {"200", "403", "503"},
    ("/avaturn/sessions/", "post"): {
        "201", "400", "403", "409", "413", "415", "429", "502", "503", "504",
    },
    ("/avaturn/sessions/abandon/", "post"): {
        "204", "400", "403", "413", "415", "502", "503", "504",
    },
    ("/avaturn/sessions/{session_id}/", "get"): {"200", "403", "404", "503"},
    ("/avaturn/sessions/{session_id}/", "delete"): {"204", "403", "404", "502", "503", "504"},
    ("/avaturn/sessions/{session_id}/heartbeat/", "post"): {
        "204", "400", "403", "404", "409", "413", "415", "503",
    },
    ("/avaturn/sessions/{session_id}/transcripts/", "post"): {
        "201", "400", "403", "404", "409", "413", "415", "429", "503",
    },
    ("/avaturn/sessions/{session_id}/messages/", "post"): {
        "204", "400", "403", "404", "409", "413", "415", "429", "503",
    },
    ("/avaturn/usage/", "get"): {"200", "403", "503"},
}  # fmt: skip


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v for k, v in os.environ.items() if k not in {"AVATURN_API_KEY", "OPENAI_API_KEY"}
    }
    return subprocess.run(
        args, cwd=REPO, env={**environ, **env}, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """Our endpoints as the test project includes them, with the schema view's settings."""
    with patched_settings(SCHEMA_SETTINGS):
        return SchemaGenerator(urlconf="tests.urls").get_schema(request=None, public=True)


def test_example_project_schema_validates_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "schema.yaml"
    result = _run(
        [
            sys.executable,
            "manage.py",
            "spectacular",
            "--validate",
            "--fail-on-warn",
            "--file",
            str(out),
        ],
        DJANGO_SETTINGS_MODULE="example_project.settings",
    )
    assert result.returncode == 0, result.stderr
    assert "/avaturn/sessions/{session_id}/heartbeat/:" in out.read_text()


def test_every_operation_documents_exactly_its_statuses(schema: dict[str, Any]) -> None:
    found = {
        (path, method): set(operation["responses"])
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }
    assert found == OPERATIONS


def test_operation_ids_are_unique_and_tagged(schema: dict[str, Any]) -> None:
    operations = [op for item in schema["paths"].values() for op in item.values()]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids)) == len(OPERATIONS)
    assert all(op["tags"] == ["avaturn"] for op in operations)
    assert all(op["security"] == [{"cookieAuth": []}] for op in operations)


def test_bodies_are_json_only(schema: dict[str, Any]) -> None:
    for item in schema["paths"].values():
        for operation in item.values():
            if "requestBody" in operation:
                assert set(operation["requestBody"]["content"]) == {"application/json"}
            for status, response in operation["responses"].items():
                if status == "204":
                    assert "content" not in response
                    continue
                assert set(response["content"]) == {"application/json"}
                if status >= "400" and status != "429":
                    assert response["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
                    assert response["description"]  # which codes, and when


def test_error_components(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    assert components["Error"]["required"] == ["code", "detail"]
    assert set(components["Error"]["properties"]) == {"code", "detail", "errors"}
    quota = components["QuotaError"]
    assert set(quota["properties"]) == {"code", "detail", "errors", "limit", "allowed", "resets_at"}
    start = schema["paths"]["/avaturn/sessions/"]["post"]
    assert start["responses"]["429"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/QuotaError"
    }


def _descriptions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [
            v for k, v in node.items() if k in ("description", "summary") and isinstance(v, str)
        ]
        return found + [text for value in node.values() for text in _descriptions(value)]
    if isinstance(node, list):
        return [text for value in node for text in _descriptions(value)]
    return []


def test_descriptions_are_markdown_for_api_clients(schema: dict[str, Any]) -> None:
    """OpenAPI descriptions are CommonMark: no reStructuredText, no names of our modules."""
    texts = _descriptions(schema)
    assert len(texts) > 20
    assert [t for t in texts if "``" in t or ":func:" in t or ".py" in t] == []


def test_client_ref_is_documented_as_the_api_checks_it(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    start = components["StartSessionRequest"]
    abandon = components["AbandonStartRequest"]
    assert "client_ref" not in start.get("required", [])
    assert abandon["required"] == ["client_ref"]
    for field in (start["properties"]["client_ref"], abandon["properties"]["client_ref"]):
        assert (field["pattern"], field["minLength"], field["maxLength"]) == (
            "^[A-Za-z0-9_-]+$",
            16,
            64,
        )


def test_session_id_is_one_url_segment(schema: dict[str, Any]) -> None:
    for path, item in schema["paths"].items():
        for operation in item.values():
            parameters = operation.get("parameters", [])
            if "{session_id}" not in path:
                assert parameters == []
                continue
            (parameter,) = parameters
            assert parameter["in"] == "path"
            assert parameter["required"] is True
            assert parameter["schema"] == {"type": "string", "pattern": "^[^/]+$"}


def test_only_our_endpoints_are_published(client: Any, settings: Any) -> None:
    settings.ROOT_URLCONF = "example_project.urls"
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert paths and all(path.startswith("/avaturn/") for path in paths)
    assert response.json()["info"]["title"] == SCHEMA_SETTINGS["TITLE"]


@pytest.mark.parametrize(
    "version",
    ["1\"; filename*=UTF-8''evil.html", "1\r\nX-Injected: yes", "1\x00\x07\x1b", "v\u2028"],
    ids=["quote", "newline", "control", "line-separator"],
)
def test_a_version_parameter_is_neither_a_500_nor_a_header_parameter(
    client: Any, settings: Any, version: str
) -> None:
    settings.ROOT_URLCONF = "example_project.urls"
    response = client.get(
        "/api/schema/", {"version": version}, HTTP_ACCEPT="application/vnd.oai.openapi+json"
    )
    assert response.status_code == 200
    # The app's one version, whatever was asked for: nothing of the query is echoed.
    assert response["Content-Disposition"] == f'inline; filename="{SCHEMA_SETTINGS["TITLE"]}.json"'
    assert response.json()["info"]["version"] == SCHEMA_SETTINGS["VERSION"]


def test_everything_works_without_drf_spectacular() -> None:
    # A fresh interpreter in which drf_spectacular cannot be imported.
    code = textwrap.dedent(
        """
        import sys
        sys.modules["drf_spectacular"] = None
        import django
        django.setup()
        from django.urls import resolve
        from django_avaturn import schema_urls
        from django_avaturn.api.views import SessionListView
        from example_project import settings as example

        assert [p.callback for p in schema_urls.urlpatterns] == [schema_urls.schema_not_installed]
        assert not hasattr(SessionListView.post, "kwargs")
        assert "drf_spectacular" not in example.INSTALLED_APPS
        assert resolve("/avaturn/sessions/").url_name == "session-list"
        print("ok")
        """
    )
    result = _run([sys.executable, "-c", code], DJANGO_SETTINGS_MODULE="tests.settings")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_example_projects_schema_url_names_the_extra_when_it_is_missing(
    tmp_path: Path,
) -> None:
    """After the README's "Try it" install (no [schema] extra), /api/schema/ says what to do."""
    code = textwrap.dedent(
        """
        import json, sys
        sys.modules["drf_spectacular"] = None
        import django
        django.setup()
        from django.test import Client

        response = Client().get("/api/schema/")
        print(json.dumps([response.status_code, response["Content-Type"], response.json()]))
        """
    )
    result = _run(
        [sys.executable, "-c", code],
        DJANGO_SETTINGS_MODULE="example_project.settings",
        EXAMPLE_DB_PATH=str(tmp_path / "example.sqlite3"),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        404,
        "application/json",
        {
            "code": "not_found",
            "detail": "The OpenAPI schema needs drf-spectacular, which is not installed: "
            'pip install "django-avaturn[schema]" (in a checkout: pip install -e ".[schema]").',
        },
    ]
