"""``{% avaturn_head %}``: what the page gets, attribute by attribute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import django
import pytest
from django.template import Context, Template, TemplateSyntaxError
from django.test import RequestFactory
from django.utils.safestring import SafeString

from django_avaturn.conf import DEFAULT_SDK_INTEGRITY, DEFAULT_SDK_URL
from django_avaturn.widget import get_csp_nonce, render_widget
from tests.helpers import AvaturnOverrides, parse

HOSTILE = "\"'><script>alert(1)</script>&amp;"


def render(source: str = "{% avaturn_head %}", **context: Any) -> str:
    context.setdefault("request", RequestFactory().get("/"))
    return Template("{% load avaturn %}" + source).render(Context(context))


def widgets(html: str) -> list[dict[str, str | None]]:
    return [
        attrs for tag, attrs in parse(html).tags if tag == "div" and "data-avaturn-widget" in attrs
    ]


def test_bare_tag_renders_the_assets_exactly() -> None:
    html = render()
    head = html.split("<div", 1)[0]
    assert head == (
        '<link rel="preconnect" href="https://cdn.jsdelivr.net" crossorigin>\n'
        f'<link rel="modulepreload" href="{DEFAULT_SDK_URL}" integrity="{DEFAULT_SDK_INTEGRITY}"'
        ' crossorigin="anonymous">\n'
        '<link rel="stylesheet" href="/static/django_avaturn/avaturn-widget.css">\n'
        '<script type="module" src="/static/django_avaturn/avaturn-widget.js"></script>\n'
    )


def test_bare_tag_configures_the_container_through_data_attributes() -> None:
    request = RequestFactory().get("/")
    (widget,) = widgets(render(request=request))
    csrf_token = widget.pop("data-csrf-token")
    assert csrf_token
    # The masked token must be one the CSRF middleware accepts for this request.
    from django.middleware.csrf import _check_token_format, _does_token_match

    _check_token_format(csrf_token)
    assert _does_token_match(csrf_token, request.META["CSRF_COOKIE"])
    assert widget == {
        "id": "avaturn-1",
        "class": "avaturn-widget",
        "data-avaturn-widget": None,
        "data-state": "idle",
        "data-sessions-url": "/avaturn/sessions/",
        "data-session-url": "/avaturn/sessions/__session_id__/",
        "data-heartbeat-url": "/avaturn/sessions/__session_id__/heartbeat/",
        "data-abandon-url": "/avaturn/sessions/abandon/",
        "data-session-id-placeholder": "__session_id__",
        "data-engine": "openai-realtime",
        "data-sdk-url": DEFAULT_SDK_URL,
        "data-sdk-integrity": DEFAULT_SDK_INTEGRITY,
        "data-audio-source": "true",
        "data-autostart": "false",
        "data-init-timeout": "20",
        "data-heartbeat-interval": "30",
        "data-csrf-cookie-name": "csrftoken",
        "data-login-url": "/accounts/login/?next=/",
    }


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [({"CSRF_COOKIE_NAME": "site_csrf"}, "site_csrf"), ({"CSRF_USE_SESSIONS": True}, "")],
)
def test_the_widget_is_told_where_the_current_csrf_token_is(
    settings: Any, overrides: dict[str, Any], expected: str
) -> None:
    for name, value in overrides.items():
        setattr(settings, name, value)
    (widget,) = widgets(render())
    assert widget["data-csrf-cookie-name"] == expected


def test_transcripts_url_only_when_the_site_stores_transcripts(avaturn: AvaturnOverrides) -> None:
    (widget,) = widgets(render())
    assert "data-transcripts-url" not in widget
    avaturn(TRANSCRIPTS_ENABLED=True)
    (widget,) = widgets(render())
    assert widget["data-transcripts-url"] == "/avaturn/sessions/__session_id__/transcripts/"


def test_the_widget_is_told_the_engine(avaturn: AvaturnOverrides) -> None:
    avaturn(ENGINE="cartesia")
    (widget,) = widgets(render())
    assert widget["data-engine"] == "cartesia"


@pytest.mark.parametrize(
    ("name", "value"), [("TRANSCRIPTS_ENABLED", 1), ("HEARTBEAT_INTERVAL", "30")]
)
def test_a_setting_the_check_refuses_renders_no_widget_and_no_error(
    avaturn: AvaturnOverrides, caplog: pytest.LogCaptureFixture, name: str, value: Any
) -> None:
    # The site's page must still render: the tag logs why and leaves a comment.
    avaturn(**{name: value})
    html = render()
    assert html.strip() == "<!-- django-avaturn: not configured, see the server log -->"
    (record,) = [r for r in caplog.records if r.name == "django_avaturn.widget"]
    assert name in record.getMessage()


def test_controls_and_an_aria_live_status_region() -> None:
    tags = parse(render())
    (start,) = tags.find("button", **{"data-avaturn-start": None})  # type: ignore[arg-type]
    assert "hidden" not in start
    (stop,) = tags.find("button", **{"data-avaturn-stop": None})  # type: ignore[arg-type]
    assert "hidden" in stop
    (mic,) = tags.find("button", **{"data-avaturn-mic": None})  # type: ignore[arg-type]
    assert mic["aria-pressed"] == "false"
    (status,) = tags.find("p", role="status")
    assert status["aria-live"] == "polite"
    assert tags.find("div", **{"data-avaturn-stage": None})  # type: ignore[arg-type]


def test_until_its_script_runs_the_widget_says_it_is_loading_and_start_is_disabled() -> None:
    """Static files not served: what a visitor sees is the markup alone, no dead Start."""
    html = render()
    (start,) = parse(html).find("button", **{"data-avaturn-start": None})  # type: ignore[arg-type]
    assert "disabled" in start
    status = html.split("data-avaturn-status>", 1)[1].split("</p>", 1)[0]
    assert status == "Loading the avatar…"


def test_no_inline_script() -> None:
    html = render("{% avaturn_head %}{% avaturn_head autostart=True %}", csp_nonce="abc")
    scripts = parse(html).find("script")
    assert scripts, "the module script is missing"
    assert all(script.get("src") for script in scripts)
    assert html.count("</script>") == len(scripts)
    assert '<script type="module" src="/static/django_avaturn/avaturn-widget.js"' in html


def test_options_reach_the_data_attributes() -> None:
    (widget,) = widgets(
        render(
            "{% avaturn_head audio_source=False autostart=True css_class='hero round' "
            "width=480 height='60vh' avatar_id='anna' config='support' widget_id='helper' %}"
        )
    )
    assert widget["id"] == "helper"
    assert widget["class"] == "avaturn-widget hero round"
    assert widget["data-audio-source"] == "false"
    assert widget["data-autostart"] == "true"
    assert widget["data-width"] == "480px"
    assert widget["data-height"] == "60vh"
    assert widget["data-avatar-id"] == "anna"
    assert widget["data-config"] == "support"


def test_size_sets_both_dimensions_and_width_wins_over_it() -> None:
    (widget,) = widgets(render("{% avaturn_head size=300 width='20rem' %}"))
    assert widget["data-width"] == "20rem"
    assert widget["data-height"] == "300px"


def test_labels() -> None:
    html = render("{% avaturn_head start_label='Talk to Anna' stop_label='Hang up' %}")
    assert ">Talk to Anna</button>" in html
    assert ">Hang up</button>" in html


def test_unknown_option_fails_when_the_template_is_compiled() -> None:
    with pytest.raises(TemplateSyntaxError, match="colour"):
        Template("{% load avaturn %}{% avaturn_head colour='red' %}")


@pytest.mark.parametrize(
    "option",
    ["css_class", "width", "avatar_id", "config", "widget_id", "start_label", "stop_label"],
)
@pytest.mark.parametrize("as_literal", [True, False], ids=["literal", "variable"])
def test_every_option_is_escaped(option: str, *, as_literal: bool) -> None:
    # A template literal is a SafeString (Django trusts template authors);
    # the widget escapes it anyway, like a value from the context.
    if as_literal:
        html = render("{% avaturn_head " + option + "='" + HOSTILE.replace("'", "") + "' %}")
        expected = HOSTILE.replace("'", "")
    else:
        html = render("{% avaturn_head " + option + "=value %}", value=HOSTILE)
        expected = HOSTILE
    assert "<script>alert" not in html
    tags = parse(html)
    # The parser sees exactly the markup the tag meant, and the hostile value
    # only as a value.
    assert [name for name, _ in tags.tags if name == "script"] == ["script"]
    (widget,) = widgets(html)
    attribute = {
        "css_class": "class",
        "width": "data-width",
        "avatar_id": "data-avatar-id",
        "config": "data-config",
        "widget_id": "id",
        "start_label": None,
        "stop_label": None,
    }[option]
    if attribute is None:
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    else:
        assert str(widget[attribute]).endswith(expected)


def test_every_script_and_link_carries_the_nonce_from_the_context() -> None:
    html = render("{% avaturn_head %}{% avaturn_head %}", csp_nonce="n0nce+/=")
    tags = parse(html)
    loading = [
        attrs
        for name, attrs in tags.tags
        if name == "script" or (name == "link" and attrs.get("rel") != "preconnect")
    ]
    assert len(loading) == 6
    assert all(attrs.get("nonce") == "n0nce+/=" for attrs in loading)


def test_no_nonce_attribute_without_a_nonce() -> None:
    assert "nonce" not in render()


class LazyNonce:
    """Like Django 6's and django-csp's: falsy until read, then a string."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.read = False

    def __bool__(self) -> bool:
        return self.read

    def __str__(self) -> str:
        self.read = True
        return self.value


def test_nonce_from_the_request_attribute_django_csp() -> None:
    request = RequestFactory().get("/")
    lazy = LazyNonce("from-request")
    request.csp_nonce = lazy  # type: ignore[attr-defined]
    html = render(request=request)
    assert 'nonce="from-request"' in html
    # Reading it is what makes the middleware send it in the header.
    assert lazy.read


def test_context_nonce_wins_over_the_request_one() -> None:
    request = RequestFactory().get("/")
    request.csp_nonce = "from-request"  # type: ignore[attr-defined]
    assert get_csp_nonce({"csp_nonce": LazyNonce("from-context")}, request) == "from-context"
    assert get_csp_nonce({"csp_nonce": ""}, request) == "from-request"
    assert get_csp_nonce({}, None) is None


@pytest.mark.skipif(django.VERSION < (6, 0), reason="Django 6 added its own CSP middleware")
def test_nonce_from_djangos_own_csp_middleware() -> None:  # pragma: no cover - Django 6
    from django.middleware.csp import ContentSecurityPolicyMiddleware

    request = RequestFactory().get("/")
    ContentSecurityPolicyMiddleware(lambda r: None).process_request(request)  # type: ignore[arg-type]
    html = render(request=request)
    (script,) = parse(html).find("script")
    assert script["nonce"]


def test_several_widgets_get_unique_ids_and_work_independently() -> None:
    html = render("{% avaturn_head %}{% avaturn_head avatar_id='b' %}{% avaturn_head %}")
    found = widgets(html)
    assert [widget["id"] for widget in found] == ["avaturn-1", "avaturn-2", "avaturn-3"]
    assert [widget.get("data-avatar-id") for widget in found] == [None, "b", None]


def test_ids_are_unique_across_templates_of_one_request() -> None:
    request = RequestFactory().get("/")
    first = widgets(render(request=request))
    second = widgets(render(request=request))
    assert first[0]["id"] != second[0]["id"]


def test_without_a_request() -> None:
    html = Template("{% load avaturn %}{% avaturn_head %}").render(Context({}))
    (widget,) = widgets(html)
    # The script falls back to the csrftoken cookie.
    assert "data-csrf-token" not in widget
    # No page to come back to.
    assert widget["data-login-url"] == "/accounts/login/"
    assert str(widget["id"]).startswith("avaturn-")


def test_empty_integrity_omits_integrity_and_crossorigin(avaturn: AvaturnOverrides) -> None:
    avaturn(SDK_INTEGRITY="")
    html = render()
    (preload,) = parse(html).find("link", rel="modulepreload")
    assert preload == {"rel": "modulepreload", "href": DEFAULT_SDK_URL}
    (widget,) = widgets(html)
    assert "data-sdk-integrity" not in widget


def test_custom_sdk_url_and_integrity(avaturn: AvaturnOverrides) -> None:
    avaturn(SDK_URL="https://cdn.example.com/sdk/main.js?v=1&x=2", SDK_INTEGRITY="sha384-abc")
    html = render()
    assert 'href="https://cdn.example.com/sdk/main.js?v=1&amp;x=2"' in html
    tags = parse(html)
    (preconnect,) = tags.find("link", rel="preconnect")
    assert preconnect["href"] == "https://cdn.example.com"
    (preload,) = tags.find("link", rel="modulepreload")
    assert preload["href"] == "https://cdn.example.com/sdk/main.js?v=1&x=2"
    assert preload["integrity"] == "sha384-abc"
    assert preload["crossorigin"] == "anonymous"
    (widget,) = widgets(html)
    # The script imports exactly the URL the preload verified.
    assert widget["data-sdk-url"] == preload["href"]


@pytest.mark.parametrize(
    ("sdk_url", "expected_href"),
    [
        ("vendor/avaturn/main.js", "/static/vendor/avaturn/main.js"),
        ("/sdk/main.js", "/sdk/main.js"),
        ("http://testserver/sdk/main.js", "http://testserver/sdk/main.js"),
    ],
)
def test_same_origin_sdk_gets_no_preconnect(
    avaturn: AvaturnOverrides, sdk_url: str, expected_href: str
) -> None:
    avaturn(SDK_URL=sdk_url, SDK_INTEGRITY="")
    tags = parse(render())
    assert not tags.find("link", rel="preconnect")
    (preload,) = tags.find("link", rel="modulepreload")
    assert preload["href"] == expected_href


def test_timeouts_come_from_settings(avaturn: AvaturnOverrides) -> None:
    avaturn(WIDGET_INIT_TIMEOUT=2.5, HEARTBEAT_INTERVAL=5)
    (widget,) = widgets(render())
    assert widget["data-init-timeout"] == "2.5"
    assert widget["data-heartbeat-interval"] == "5"


def test_no_key_reaches_the_page(settings: Any) -> None:
    html = render("{% avaturn_head avatar_id='a' config='c' %}")
    assert settings.AVATURN["API_KEY"] not in html
    assert settings.AVATURN["OPENAI_API_KEY"] not in html


def test_template_can_be_overridden_by_the_project(settings: Any, tmp_path: Path) -> None:
    override = tmp_path / "django_avaturn"
    override.mkdir()
    (override / "widget.html").write_text(
        '<section id="{{ widget_id }}" data-avaturn-widget data-avatar-id="{{ avatar_id }}">'
        "{{ sessions_url }}</section>"
    )
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [tmp_path]}]
    html = render("{% avaturn_head avatar_id=value %}", value="<b>")
    assert html == (
        '<section id="avaturn-1" data-avaturn-widget data-avatar-id="&lt;b&gt;">'
        "/avaturn/sessions/</section>"
    )


def test_template_name_option(settings: Any, tmp_path: Path) -> None:
    (tmp_path / "mine.html").write_text("mine:{{ widget_id }}")
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [tmp_path]}]
    assert render("{% avaturn_head template_name='mine.html' %}") == "mine:avaturn-1"


def test_render_widget_is_usable_without_a_template() -> None:
    html = render_widget({"request": RequestFactory().get("/")}, avatar_id="x")
    assert isinstance(html, SafeString)
    assert 'data-avatar-id="x"' in html


def test_boolean_size_is_refused() -> None:
    with pytest.raises(TypeError):
        render_widget({}, width=True)


def test_the_scripts_fallback_messages_are_the_templates() -> None:
    """A site's own widget template may leave messages out; the script's fallbacks fill in."""
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "django_avaturn"
    template = (package / "templates/django_avaturn/widget.html").read_text()
    script = (package / "static/django_avaturn/widget/messages.js").read_text()
    in_template = dict(
        re.findall(r'<span data-key="(\w+)">\{% translate "([^"]+)" %\}</span>', template)
    )
    block = script[script.index("export const FALLBACK_MESSAGES = {") :]
    block = block[: block.index("};")]
    # One entry a line, or its value on the next when the formatter wraps it.
    in_script = dict(re.findall(r'^\s+(\w+):\s+"([^"]+)",$', block, re.M))
    assert in_template and in_script == in_template


def test_a_urlconf_without_the_session_api_renders_a_comment_and_logs_the_fix(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.ROOT_URLCONF = "tests.urls_without_api"
    html = render()
    assert html == "<!-- django-avaturn: not configured, see the server log -->"
    assert [r.getMessage() for r in caplog.records if r.name == "django_avaturn.widget"] == [
        "The avatar widget is not rendered: The session API's URLs are not in the URLconf: "
        'add path("avaturn/", include("django_avaturn.urls")) to your urlpatterns.'
    ]


@pytest.mark.parametrize(
    ("login_url", "page", "expected"),
    [
        # As login_required redirects: the page, query string included, comes back.
        ("/accounts/login/", "/talk/?topic=a b", "/accounts/login/?next=/talk/%3Ftopic%3Da%2520b"),
        # A URL name, and a LOGIN_URL that has a query string of its own.
        ("login", "/talk/", "/accounts/login/?next=/talk/"),
        ("/signin/?lang=fr", "/talk/", "/signin/?lang=fr&next=/talk/"),
        # Another host (single sign-on): it needs the page's absolute URL.
        (
            "https://sso.example.com/login",
            "/talk/",
            "https://sso.example.com/login?next=http%3A//testserver/talk/",
        ),
        (
            "http://testserver/accounts/login/",
            "/talk/",
            "http://testserver/accounts/login/?next=/talk/",
        ),
    ],
)
def test_the_sign_in_message_links_to_login_url_and_back(
    settings: Any, login_url: str, page: str, expected: str
) -> None:
    settings.LOGIN_URL = login_url
    (widget,) = widgets(render(request=RequestFactory().get(page)))
    assert widget["data-login-url"] == expected


def test_a_login_url_naming_no_view_leaves_the_message_unlinked(settings: Any) -> None:
    settings.LOGIN_URL = "no-such-view"
    (widget,) = widgets(render())
    assert "data-login-url" not in widget
