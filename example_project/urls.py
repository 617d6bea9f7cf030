from django.contrib import admin
from django.urls import include, path

from example_project import views

urlpatterns = [
    path("", views.index, name="index"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("avaturn/", include("django_avaturn.urls")),
    # The API's OpenAPI schema; without drf-spectacular, a JSON 404 naming the extra.
    path("api/schema/", include("django_avaturn.schema_urls")),
]
