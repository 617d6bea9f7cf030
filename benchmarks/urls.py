"""The example project's URLs plus the baseline broker under ``/baseline/``."""

from django.urls import include, path

urlpatterns = [
    path("baseline/", include("benchmarks.baseline.urls")),
    path("", include("example_project.urls")),
]
