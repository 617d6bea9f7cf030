"""The session API mounted under an instance namespace of the site's choosing."""

from django.urls import include, path

urlpatterns = [path("talk/", include("django_avaturn.urls", namespace="talk"))]
