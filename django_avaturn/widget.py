"""Plain functions behind ``{% avaturn_head %}``.

The template tag is a thin shell over :func:`render_widget`; everything that
decides what the page gets (URLs, SDK location, nonce, options) lives here so
it can be tested and reused without a template.

Nothing here ever reads a credential: the widget only learns the session API's
URLs, the public SDK location and per-widget options. The session token comes
later, from the API, straight into the browser's memory.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest
from django.middleware.csrf import get_token
from django.shortcuts import resolve_url
from django.template.context import Context
from django.template.loader import get_template
from django.templatetags.static import static
from django.urls import NoReverseMatch, reverse
from django.utils.safestring import SafeString

from django_avaturn.conf import avaturn_settings
from django_avaturn.exceptions import NotConfigured
from django_avaturn.logs import get_logger

logger = get_logger(__name__)

_get_nonce: Callable[[HttpRequest], Any] | None
try:
    from django.middleware.csp import get_nonce as _get_nonce  # type: ignore[import-not-found,no-redef,unused-ignore]
except ImportError:  # Django < 6.0 has no CSP middleware of its own.
    _get_nonce = None

DEFAULT_TEMPLATE = "django_avaturn/widget.html"
WIDGET_SCRIPT = "django_avaturn/avaturn-widget.js"
WIDGET_STYLESHEET = "django_avaturn/avaturn-widget.css"

# A placeholder the script swaps for the real session id. reverse() builds the
# detail URLs with it, so a project mounting the app anywhere still works.
SESSION_ID_PLACEHOLDER = "__session_id__"

_ABSOLUTE_URL = re.compile(r"^[a-z][a-z0-9+.-]*:|^//", re.IGNORECASE)
_REQUEST_COUNTER_ATTR = "_django_avaturn_widget_count"
# Used only when a template renders without a request (e.g. a test or an
# email); ids then stay unique within the process, which is enough.
_fallback_counter = itertools.count(1)

# A template Context or any mapping: only ``.get`` is used.
ContextLike = Context | Mapping[str, Any]


def get_csp_nonce(context: ContextLike, request: HttpRequest | None) -> str | None:
    """The page's CSP nonce, or ``None`` when the page has none.

    Looked up, first hit wins: the ``csp_nonce`` context variable (Django 6's
    ``csp`` context processor), the request's ``csp_nonce`` attribute
    (django-csp), then Django 6's ``get_nonce(request)``. The value is lazy in
    both libraries and reading it is what makes the middleware put it in the
    header, so it is forced with ``str()``; truthiness would say "not
    generated yet" rather than "no nonce".
    """
    candidates: list[Any] = [context.get("csp_nonce")]
    if request is not None:
        candidates.append(getattr(request, "csp_nonce", None))
        candidates.append(_django_get_nonce(request))
    for value in candidates:
        if value is not None:
            text = _text(value)
            if text:
                return text
    return None


def _django_get_nonce(request: HttpRequest) -> Any:
    if _get_nonce is None:
        return None
    return _get_nonce(request)


def sdk_url(request: HttpRequest | None = None) -> str:
    """The URL the page loads the browser SDK from.

    ``SDK_URL`` may be absolute (a CDN), root-relative, or a path inside the
    project's static files (self-hosting: ``"vendor/avaturn/main.js"``).
    """
    url = _text(avaturn_settings.SDK_URL)
    if _ABSOLUTE_URL.match(url) or url.startswith("/"):
        return url
    return static(url)


def preconnect_origin(url: str, request: HttpRequest | None) -> str | None:
    """The SDK's origin when it differs from the page's, else ``None``."""
    parts = urlsplit(url)
    if not parts.netloc:
        return None
    scheme = parts.scheme or (request.scheme if request is not None else "https")
    if request is not None and parts.netloc == request.get_host() and scheme == request.scheme:
        return None
    return f"{scheme}://{parts.netloc}"


def _css_size(value: Any) -> str:
    """A number means pixels; anything else is passed on as a CSS length.

    The browser applies it through the CSSOM (``style.setProperty``), which
    ignores invalid values and is allowed under a strict ``style-src``,
    unlike a ``style`` attribute in the markup.
    """
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        raise TypeError("width/height/size must be a number or a CSS length")
    if isinstance(value, (int, float)):
        return f"{value:g}px"
    return _text(value)


def _text(value: Any) -> str:
    """``value`` as a plain ``str`` the template will escape.

    String literals in a template arrive as ``SafeString`` (Django trusts
    template authors), and ``str()`` keeps them safe; but an option's value
    is data, so it is always escaped, literal or not.
    """
    return "".join((str(value),))


def _flag(value: Any) -> str:
    return "true" if value else "false"


def next_widget_id(request: HttpRequest | None) -> str:
    """A page-unique container id: ``avaturn-1``, ``avaturn-2``..."""
    if request is None:
        return f"avaturn-{next(_fallback_counter)}"
    count = getattr(request, _REQUEST_COUNTER_ATTR, 0) + 1
    setattr(request, _REQUEST_COUNTER_ATTR, count)
    return f"avaturn-{count}"


def widget_context(
    context: ContextLike,
    *,
    audio_source: bool = True,
    autostart: bool = False,
    css_class: str = "",
    width: Any = None,
    height: Any = None,
    size: Any = None,
    avatar_id: str | None = None,
    config: str | None = None,
    widget_id: str | None = None,
    start_label: str | None = None,
    stop_label: str | None = None,
) -> dict[str, Any]:
    """Everything ``django_avaturn/widget.html`` renders, as plain values.

    All values are left unescaped on purpose: the template's autoescaping is
    the one place that escapes them.
    """
    request = context.get("request")
    if not isinstance(request, HttpRequest):
        request = None
    url = sdk_url(request)
    integrity = _text(avaturn_settings.SDK_INTEGRITY or "")
    try:
        urls = api_urls()
    except NoReverseMatch:
        raise NotConfigured(MISSING_INCLUDE) from None
    return {
        "request": request,
        "widget_id": _text(widget_id) if widget_id else next_widget_id(request),
        "css_class": _text(css_class or ""),
        "width": _css_size(width if width is not None else size),
        "height": _css_size(height if height is not None else size),
        "audio_source": _flag(audio_source),
        "autostart": _flag(autostart),
        "avatar_id": "" if avatar_id is None else _text(avatar_id),
        "config": "" if config is None else _text(config),
        "start_label": None if start_label is None else _text(start_label),
        "stop_label": None if stop_label is None else _text(stop_label),
        "nonce": get_csp_nonce(context, request),
        # The "Please sign in" message links here.
        "login_url": sign_in_url(request),
        "csrf_token": get_token(request) if request is not None else "",
        # The widget reads the current token from this cookie when it can: a
        # sign-in in another tab rotates it, and the rendered one goes stale.
        "csrf_cookie_name": "" if settings.CSRF_USE_SESSIONS else settings.CSRF_COOKIE_NAME,
        "sessions_url": urls["sessions"],
        "session_url": urls["session"],
        "heartbeat_url": urls["heartbeat"],
        # Where a page that leaves mid-start ends the start it has no session id for.
        "abandon_url": urls["abandon"],
        # Only when the site stores transcripts: otherwise the widget sends none.
        "transcripts_url": urls["transcripts"] if avaturn_settings.TRANSCRIPTS_ENABLED else "",
        "session_id_placeholder": SESSION_ID_PLACEHOLDER,
        # The site's engine; the widget posts transcripts only for one that sends them.
        "engine": avaturn_settings.ENGINE,
        "sdk_url": url,
        "sdk_integrity": integrity,
        "sdk_preconnect": preconnect_origin(url, request),
        "script_url": static(WIDGET_SCRIPT),
        "stylesheet_url": static(WIDGET_STYLESHEET),
        "init_timeout": _seconds(avaturn_settings.WIDGET_INIT_TIMEOUT),
        "heartbeat_interval": _seconds(avaturn_settings.HEARTBEAT_INTERVAL),
    }


def sign_in_url(request: HttpRequest | None) -> str:
    """``LOGIN_URL`` with ``?next=`` this page, as ``login_required`` redirects; ``""`` if none.

    ``next`` is the page's path, or its absolute URL when ``LOGIN_URL`` is on
    another host (a single sign-on site). Without a request there is no page
    to return to: ``LOGIN_URL`` alone.
    """
    try:
        login_url = resolve_url(settings.LOGIN_URL)
    except NoReverseMatch:
        return ""  # LOGIN_URL names a view the URLconf does not have: no link beats a 500
    if request is None:
        return login_url
    scheme, netloc = urlsplit(login_url)[:2]
    here = request.get_full_path()
    if netloc and (netloc != request.get_host() or (scheme and scheme != request.scheme)):
        here = request.build_absolute_uri()
    return redirect_to_login(here, login_url).url


def api_urls() -> dict[str, str]:
    """The session API's URLs the widget calls (detail ones with the id placeholder).

    ``NoReverseMatch`` when the project's URLconf does not include
    ``django_avaturn.urls``; the system check E005 calls this too.
    """
    detail = {"session_id": SESSION_ID_PLACEHOLDER}
    return {
        "sessions": reverse("django_avaturn:session-list"),
        "session": reverse("django_avaturn:session-detail", kwargs=detail),
        "heartbeat": reverse("django_avaturn:session-heartbeat", kwargs=detail),
        "transcripts": reverse("django_avaturn:session-transcripts", kwargs=detail),
        "abandon": reverse("django_avaturn:session-abandon"),
    }


MISSING_INCLUDE = (
    "The session API's URLs are not in the URLconf: add "
    'path("avaturn/", include("django_avaturn.urls")) to your urlpatterns.'
)


def _seconds(value: float) -> str:
    return f"{value:g}"


def render_widget(
    context: ContextLike, *, template_name: str | None = None, **options: Any
) -> SafeString:
    """Render one widget: its markup plus the (idempotent) asset tags.

    A setting ``manage.py check`` would refuse (or a URLconf without the
    session API: E005) renders nothing but a comment and logs why: the site's
    page must not fail over its avatar.
    """
    try:
        values = widget_context(context, **options)
    except NotConfigured as exc:
        logger.error("The avatar widget is not rendered: %s", exc)
        return SafeString("<!-- django-avaturn: not configured, see the server log -->")
    html = get_template(template_name or DEFAULT_TEMPLATE).render(values)
    return SafeString(html)
