from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("avaturn/", include("django_avaturn.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
]
