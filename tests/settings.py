"""Minimal settings for the test suite.

SQLite by default. Set ``AVATURN_TEST_DATABASE_URL`` to run the same suite on
PostgreSQL, e.g. ``postgres://postgres@127.0.0.1:5432/avaturn_test``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_avaturn",
    "tests.testapp",
]
AUTH_USER_MODEL = "testapp.User"

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tests.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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


def _database_from_url(url: str) -> dict[str, object]:
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql"}:
        raise ValueError(f"Unsupported AVATURN_TEST_DATABASE_URL scheme: {parsed.scheme}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parsed.path.lstrip("/")) or "postgres",
        "USER": unquote(parsed.username or "postgres"),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "127.0.0.1",
        "PORT": str(parsed.port or 5432),
        "TEST": {"NAME": f"test_avaturn_{os.getpid()}"},
    }


_database_url = os.environ.get("AVATURN_TEST_DATABASE_URL", "")
if _database_url:
    DATABASES = {"default": _database_from_url(_database_url)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": BASE_DIR / "test.sqlite3",
            # Writers queue instead of failing with "database is locked".
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
            # One file per test process: several runs in one checkout (or xdist
            # workers) must not delete each other's tables.
            "TEST": {"NAME": BASE_DIR / f"test-{os.getpid()}.sqlite3"},
        }
    }

# A second database of the same kind, for the tests of a site whose router puts
# everything on a database that is not ``default`` (``tests.routers.EverythingOnOther``).
# Created only for the tests that ask for it (``django_db(databases=...)``).
DATABASES["other"] = {
    **DATABASES["default"],
    "TEST": {
        "NAME": (
            BASE_DIR / f"test-{os.getpid()}-other.sqlite3"
            if not _database_url
            else f"test_avaturn_{os.getpid()}_other"
        )
    },
}

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

AVATURN = {
    "API_KEY": "av-test-key-0123456789",
    "OPENAI_API_KEY": "sk-test-openai-0123456789",
    "API_URL": "https://avaturn.test",
    "OPENAI_BASE_URL": "https://openai.test/v1",
    "OPENAI_HTTP_CLIENT": "tests.upstreams.openai_http_client",
    "OPENAI_MAX_RETRIES": 0,
    "TERMINATE_RETRY_BACKOFF": 0,
    "START_THROTTLE_RATE": None,
}
