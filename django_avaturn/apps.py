from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AvaturnConfig(AppConfig):
    name = "django_avaturn"
    verbose_name = _("Avaturn avatars")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_avaturn import checks  # noqa: F401  (registers the system checks)
