"""The comparison brokers: the quickstart's, and the floor (pooled clients, nothing else)."""

from django.urls import path

from benchmarks.baseline import floor, views

urlpatterns = [
    path("sessions/", views.start, name="baseline-start"),
    path("sessions/<str:session_id>/", views.end, name="baseline-end"),
    path("floor/sessions/", floor.start, name="floor-start"),
    path("floor/sessions/<str:session_id>/", floor.end, name="floor-end"),
]
