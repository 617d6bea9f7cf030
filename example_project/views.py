from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def index(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "example/index.html",
        {"uses_real_services": settings.USES_REAL_SERVICES},
    )
