"""A hook module whose import fails with a message that quotes the site's key.

As a site's module may: one that reads its configuration at import time and
names what it read in the error it raises.
"""

from django.conf import settings

raise ImportError(f"settings_local is missing; AVATURN has API_KEY={settings.AVATURN['API_KEY']}")
