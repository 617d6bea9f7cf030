"""Tell whoever runs the example which upstreams it is talking to."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Warning, register


@register()
def offline_fake_in_use(app_configs: list[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    if settings.USES_REAL_SERVICES:
        return []
    return [
        Warning(
            "AVATURN_API_KEY / OPENAI_API_KEY are not set: the example talks to the loopback "
            "fake of both upstreams (manage.py rundemo starts it).",
            hint="Export both keys to talk to the real services.",
            id="example_project.W001",
        )
    ]
