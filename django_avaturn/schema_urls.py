"""The session API's OpenAPI schema, served when drf-spectacular is installed.

Include it anywhere, e.g. ``path("api/schema/", include("django_avaturn.schema_urls"))``.
It documents this app's endpoints only, at the paths your project includes them
under. Without drf-spectacular (``pip install "django-avaturn[schema]"``) the
include is safe too: the same URL answers a JSON 404 that names the extra to
install, not a bare "not found" (a 404, not a 5xx: a crawler asking for it
must not page anyone).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import URLPattern, path
from django.utils.translation import gettext as _

from django_avaturn.api.schema import SCHEMA_SETTINGS, SPECTACULAR_INSTALLED

app_name = "django_avaturn_schema"


def schema_not_installed(request: HttpRequest) -> JsonResponse:
    """What the schema's URL answers without drf-spectacular."""
    return JsonResponse(
        {
            "code": "not_found",
            "detail": _(
                "The OpenAPI schema needs drf-spectacular, which is not installed: "
                'pip install "django-avaturn[schema]" (in a checkout: pip install -e ".[schema]").'
            ),
        },
        status=404,
        headers={"Cache-Control": "no-store"},
    )


urlpatterns: list[URLPattern] = []

if SPECTACULAR_INSTALLED:
    from drf_spectacular.views import SpectacularAPIView

    class AvaturnSchemaView(SpectacularAPIView):
        """The schema of our one API version (``SCHEMA_SETTINGS["VERSION"]``).

        A version the request asks for (``?version=``, or the project's DRF
        versioning) is ignored: drf-spectacular would put it as given into
        the schema and into the answer's ``Content-Disposition``, where a
        quote adds a parameter and a newline is a 500.
        """

        versioning_class = None

        def _get_version_parameter(self, request: Any) -> None:
            return None

    urlpatterns.append(
        path("", AvaturnSchemaView.as_view(custom_settings=SCHEMA_SETTINGS), name="schema")
    )
else:
    urlpatterns.append(path("", schema_not_installed, name="schema"))
