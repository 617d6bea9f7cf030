from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AvaturnConfig(AppConfig):
    name = "django_avaturn"
    verbose_name = _("Avaturn avatars")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import post_save, pre_delete, pre_save

        from django_avaturn import checks  # noqa: F401  (registers the system checks)
        from django_avaturn.users import (
            end_sessions_after_password_change,
            end_sessions_of_deactivated_user,
            end_sessions_of_deleted_user,
            end_sessions_of_signed_out_user,
            note_password_change,
        )

        pre_delete.connect(
            end_sessions_of_deleted_user,
            sender=settings.AUTH_USER_MODEL,
            dispatch_uid="django_avaturn.end_sessions_of_deleted_user",
        )
        post_save.connect(
            end_sessions_of_deactivated_user,
            sender=settings.AUTH_USER_MODEL,
            dispatch_uid="django_avaturn.end_sessions_of_deactivated_user",
        )
        pre_save.connect(
            note_password_change,
            sender=settings.AUTH_USER_MODEL,
            dispatch_uid="django_avaturn.note_password_change",
        )
        post_save.connect(
            end_sessions_after_password_change,
            sender=settings.AUTH_USER_MODEL,
            dispatch_uid="django_avaturn.end_sessions_after_password_change",
        )
        user_logged_out.connect(
            end_sessions_of_signed_out_user,
            dispatch_uid="django_avaturn.end_sessions_of_signed_out_user",
        )
