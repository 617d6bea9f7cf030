"""``manage.py rundemo``: everything the example needs, in one command.

Applies migrations, creates the ``demo`` user (password ``demo``, staff, so
the admin can be tried too), starts the loopback fake of both upstreams when
no real keys are configured, and serves the site.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Migrate, create the demo user, start the offline fake if needed, and run the server."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")

    def handle(self, *args: Any, addrport: str, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        user_model = get_user_model()
        if not user_model.objects.filter(username="demo").exists():
            user_model.objects.create_superuser("demo", "demo@example.com", "demo")
            self.stdout.write("Created the demo user (demo / demo).")

        if not settings.USES_REAL_SERVICES:
            from django_avaturn.testing import FakeUpstream

            try:
                fake = FakeUpstream(port=settings.FAKE_UPSTREAM_PORT).start()
            except OSError as exc:
                # Most often a rundemo (or a fake) already running: say how out.
                raise CommandError(
                    f"Cannot start the offline fake on 127.0.0.1:{settings.FAKE_UPSTREAM_PORT} "
                    f"({exc.strerror or exc}). Stop whatever uses that port, or pick another "
                    "with the AVATURN_FAKE_PORT environment variable."
                ) from exc
            self.stdout.write(
                self.style.WARNING(
                    f"No AVATURN_API_KEY/OPENAI_API_KEY: using the offline fake at {fake.url}."
                )
            )
            if settings.AVATURN.get("ENGINE") == "site":
                from django_avaturn.testing import FakeRealtime

                # The site engine opens OpenAI itself: the scripted fake, on the port
                # SITE_ENGINE["OPENAI_WEBSOCKET_URL"] names (AVATURN_FAKE_REALTIME_URL,
                # by default the fake's port + 1).
                url = settings.AVATURN["SITE_ENGINE"]["OPENAI_WEBSOCKET_URL"]
                port = urlsplit(url).port or settings.FAKE_UPSTREAM_PORT + 1
                try:
                    realtime = FakeRealtime(port=port).start()
                except OSError as exc:
                    fake.stop()
                    raise CommandError(
                        f"Cannot start the offline OpenAI Realtime fake on 127.0.0.1:{port} "
                        f"({exc.strerror or exc}). Pick another port with "
                        "AVATURN_FAKE_REALTIME_URL (ws://127.0.0.1:<port>/v1)."
                    ) from exc
                self.stdout.write(f"The site engine talks to the offline fake at {realtime.url}.")
        self.stdout.write(f"Open http://{addrport}/ and sign in as demo / demo.")
        # No autoreloader: it would run this command twice and start a second fake.
        call_command("runserver", addrport, use_reloader=False)
