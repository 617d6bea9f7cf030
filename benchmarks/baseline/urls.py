from django.urls import path

from benchmarks.baseline import views

urlpatterns = [
    path("sessions/", views.start, name="baseline-start"),
    path("sessions/<str:session_id>/", views.end, name="baseline-end"),
]
