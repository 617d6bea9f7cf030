from django.apps import AppConfig


class ExampleProjectConfig(AppConfig):
    name = "example_project"
    verbose_name = "django-avaturn example"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from example_project import checks  # noqa: F401  (registers the check)
