"""The example project's URLs plus a page served under a strict, nonce-based CSP."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.template import Context, Template
from django.urls import path

from example_project.urls import urlpatterns as example_urlpatterns

STRICT_PAGE = Template(
    "{% load avaturn %}<!doctype html><html><head><title>strict</title></head><body>"
    "{% avaturn_head widget_id='strict' %}</body></html>"
)


def strict_csp_page(request: HttpRequest) -> HttpResponse:
    """The widget under the strictest CSP docs/widget.md documents.

    No 'unsafe-inline' anywhere: a style attribute or an inline script in the
    widget would be reported as a violation.
    """
    nonce = secrets.token_urlsafe(16)
    html = STRICT_PAGE.render(Context({"request": request, "csp_nonce": nonce}))
    response = HttpResponse(html)
    sdk_origin = settings.AVATURN["SDK_URL"].rsplit("/", 1)[0]
    api_host = settings.AVATURN["API_URL"]
    response["Content-Security-Policy"] = "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' 'nonce-{nonce}' {sdk_origin}/ https://c.daily.co",
            f"style-src 'self' 'nonce-{nonce}'",
            f"connect-src 'self' {api_host} https://*.daily.co wss://*.daily.co",
            "media-src 'self' blob:",
            "worker-src 'self' blob:",
            "img-src 'self' data:",
            "object-src 'none'",
            "base-uri 'none'",
        ]
    )
    return response


urlpatterns = [
    path("strict-csp/", strict_csp_page, name="strict-csp"),
    *example_urlpatterns,
]
