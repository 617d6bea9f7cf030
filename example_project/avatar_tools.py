"""The example's site engine tool (``AVATURN_DEMO_ENGINE=site``): about the signed-in visitor."""

from __future__ import annotations

from typing import Any

from django_avaturn.engine import ToolContext, tool


@tool
def demo_user_info(ctx: ToolContext) -> dict[str, Any]:
    """Who the visitor talking to the avatar is: their user name and when they joined."""
    user = ctx.user
    info = {"username": user.get_username(), "joined": user.date_joined.date().isoformat()}
    ctx.send_to_browser({"card": "Signed in as", "text": info["username"]})
    return info
