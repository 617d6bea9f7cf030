"""The least a Django broker can do: the quickstart's calls over clients kept per process.

Same authentication (session cookie + CSRF) and upstream calls as the
quickstart broker, but one OpenAI client and one ``requests.Session`` per
process, like ``django_avaturn``. No database row, no cap, no cleanup, no
Django REST framework: what is left is Django's request cycle and the two
client libraries, so its figures are the floor this machine puts under any
Django broker of these upstreams. ``django_avaturn`` minus the floor is what
its safety costs (see RESULTS.md).
"""

from __future__ import annotations

import threading
from functools import cache

import openai
import requests
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods

from benchmarks.baseline.views import _conf, end_with, start_with

_lock = threading.Lock()


@cache
def _clients() -> tuple[openai.OpenAI, requests.Session]:
    conf = _conf()
    http = requests.Session()
    # As many kept-alive connections as a worker has threads (urllib3 keeps 10).
    http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=100))
    # Proxy and CA settings read from the environment once, not on every call
    # (as django_avaturn's client does): a floor must not carry avoidable work.
    environment = http.merge_environment_settings(conf["api_url"], {}, None, None, None)
    http.proxies.update(environment["proxies"])
    http.verify = environment["verify"]
    http.trust_env = False
    return openai.OpenAI(api_key=conf["openai_key"], base_url=conf["openai_url"]), http


def clients() -> tuple[openai.OpenAI, requests.Session]:
    with _lock:
        return _clients()


@login_required
@require_http_methods(["POST"])
def start(request: HttpRequest) -> JsonResponse:
    return start_with(*clients())


@login_required
@require_http_methods(["DELETE"])
def end(request: HttpRequest, session_id: str) -> HttpResponse:
    _client, http = clients()
    return end_with(http, session_id)
