"""WSGI entry point, e.g. ``gunicorn example_project.wsgi --threads 8``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

application = get_wsgi_application()
