"""Settings for the example project.

With ``AVATURN_API_KEY`` and ``OPENAI_API_KEY`` in the environment it talks to
the real services. Without them it talks to the loopback fake of both
upstreams (``django_avaturn.testing``), which ``manage.py rundemo`` starts, so
the whole backend flow can be tried offline.
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from django_avaturn.testing import (
    DEFAULT_AVATURN_API_KEY,
    DEFAULT_OPENAI_API_KEY,
    STANDIN_SDK_PATH,
)

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_avaturn",
    "example_project.apps.ExampleProjectConfig",
]
# The OpenAPI schema at /api/schema/ (and `manage.py spectacular`) when the
# optional drf-spectacular is installed: pip install -e ".[schema]".
if find_spec("drf_spectacular") is not None:
    from django_avaturn.api.schema import SCHEMA_SETTINGS

    INSTALLED_APPS.append("drf_spectacular")
    SPECTACULAR_SETTINGS = SCHEMA_SETTINGS

# With Channels and daphne installed, runserver (and so rundemo) serves the ASGI
# application, the site engine's socket included; without them, WSGI as before.
SERVES_ASGI = find_spec("channels") is not None and find_spec("daphne") is not None
if SERVES_ASGI:
    INSTALLED_APPS.insert(0, "daphne")
    # One process serves the demo: the in-memory layer is enough here (W013 says
    # why a deployment needs channels_redis).
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"
ASGI_APPLICATION = "example_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DB_PATH", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": {
            # SQLite serialises writers: IMMEDIATE makes concurrent session starts
            # wait their turn instead of failing with "database is locked".
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            # WAL with synchronous=NORMAL: one fsync per checkpoint, not per commit.
            # A start and an end commit four times; this halves their latency
            # (benchmarks/RESULTS.md).
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        },
    }
}

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

# ---------------------------------------------------------------- django-avaturn

USES_REAL_SERVICES = bool(os.environ.get("AVATURN_API_KEY") and os.environ.get("OPENAI_API_KEY"))
FAKE_UPSTREAM_PORT = int(os.environ.get("AVATURN_FAKE_PORT", "8765"))

AVATURN: dict[str, object] = {
    "INSTRUCTIONS": "You are the friendly guide of this example site. Keep answers short.",
    "SESSION_CONFIG_HOOK": "example_project.hooks.greet_by_name",
    "MAX_DURATION": 600,
    "REALTIME_SESSION": {
        # Lets the widget show what the visitor said, not only the avatar's side.
        "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
    },
}
if not USES_REAL_SERVICES:
    _fake = f"http://127.0.0.1:{FAKE_UPSTREAM_PORT}"
    AVATURN.update(
        {
            "API_URL": _fake,
            "OPENAI_BASE_URL": f"{_fake}/v1",
            # The fake's own well-known test keys: not secrets.
            "API_KEY": DEFAULT_AVATURN_API_KEY,
            "OPENAI_API_KEY": DEFAULT_OPENAI_API_KEY,
            # The real web SDK needs the internet (a CDN, then a video call);
            # the fake serves a stand-in that goes live without video.
            "SDK_URL": f"{_fake}{STANDIN_SDK_PATH}",
            "SDK_INTEGRITY": "",
        }
    )
if os.environ.get("AVATURN_DEMO_ENGINE") == "site":
    # The site engine: Avaturn connects to this site, which opens OpenAI itself and
    # runs example_project.avatar_tools. AVATURN_PUBLIC_URL: where Avaturn reaches it.
    AVATURN["ENGINE"] = "site"
    AVATURN["SITE_ENGINE"] = {
        "PUBLIC_URL": os.environ.get("AVATURN_PUBLIC_URL", "ws://127.0.0.1:8000"),
        "TOOLS": ["example_project.avatar_tools"],
    }
    if not USES_REAL_SERVICES:
        AVATURN["SITE_ENGINE"]["OPENAI_WEBSOCKET_URL"] = os.environ.get(
            "AVATURN_FAKE_REALTIME_URL", f"ws://127.0.0.1:{FAKE_UPSTREAM_PORT + 1}/v1"
        )
if os.environ.get("AVATURN_SDK_URL"):
    AVATURN["SDK_URL"] = os.environ["AVATURN_SDK_URL"]
    AVATURN["SDK_INTEGRITY"] = os.environ.get("AVATURN_SDK_INTEGRITY", "")

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_avaturn": {"handlers": ["console"], "level": "INFO"}},
}
