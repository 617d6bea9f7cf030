"""The site engine: OpenAI Realtime bridged by this site, which runs the site's own tools.

Tool modules import from here::

    from django_avaturn.engine import ToolContext, ToolError, tool

Importing this package needs neither Channels nor the openai SDK.
"""

from django_avaturn.engine.tools import BrowserMessageRefused, ToolContext, ToolError, tool

__all__ = ["BrowserMessageRefused", "ToolContext", "ToolError", "tool"]
