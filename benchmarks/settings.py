"""The example project's settings, tuned only where a benchmark needs it.

* ``BENCH_DB=postgres`` switches to PostgreSQL on 127.0.0.1:5432 (user
  ``postgres``, database ``BENCH_PG_NAME``); otherwise SQLite at
  ``EXAMPLE_DB_PATH`` with the example's IMMEDIATE transactions.
* The start throttle is off: fifty clients starting a session every half
  second is the load, not abuse.
* MD5 password hashing, so signing fifty clients in costs nothing (never do
  this outside a benchmark).
* ``ROOT_URLCONF`` adds the quickstart-style baseline broker beside the app.
"""

from __future__ import annotations

import os

from example_project.settings import *  # noqa: F403
from example_project.settings import AVATURN, DATABASES

DEBUG = False
ROOT_URLCONF = "benchmarks.urls"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

AVATURN = {**AVATURN, "START_THROTTLE_RATE": None}

# Persistent connections suit a thread pool (gunicorn), not ASGI, where every
# request runs on a thread of its own and would leave its connection behind.
_conn_max_age = int(os.environ.get("BENCH_CONN_MAX_AGE", "0"))

if os.environ.get("BENCH_DB") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": "127.0.0.1",
            "PORT": "5432",
            "USER": "postgres",
            "NAME": os.environ.get("BENCH_PG_NAME", "avaturn_bench"),
            "CONN_MAX_AGE": _conn_max_age,
            # BENCH_PG_POOL=N: Django 5.1+'s psycopg pool (psycopg[pool]) of up
            # to N connections, the way to reuse connections under ASGI. A start
            # holds its connection while it waits on the upstreams, so N must
            # cover a process's concurrent requests (the default is 4).
            "OPTIONS": {"pool": {"min_size": 4, "max_size": int(os.environ["BENCH_PG_POOL"])}}
            if os.environ.get("BENCH_PG_POOL")
            else {},
        }
    }
else:
    DATABASES = {"default": {**DATABASES["default"], "CONN_MAX_AGE": _conn_max_age}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    # Every start and end logs at INFO; WARNING keeps the failures and drops the chatter.
    "loggers": {"django_avaturn": {"handlers": ["console"], "level": "WARNING"}},
}

if os.environ.get("BENCH_TRACE_CONNECTIONS"):
    # Diagnosis only: which client opens new upstream connections, and why.
    LOGGING["loggers"]["urllib3.connectionpool"] = {"handlers": ["console"], "level": "DEBUG"}
    LOGGING["loggers"]["httpcore2"] = {"handlers": ["console"], "level": "DEBUG"}
