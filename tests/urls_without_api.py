"""A URLconf that forgot ``include("django_avaturn.urls")``, as a new site may."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
