"""``{% load avaturn %}{% avaturn_head %}``: the embeddable avatar widget.

A thin shell over :func:`django_avaturn.widget.render_widget`. The options are
spelled out so that a typo is a ``TemplateSyntaxError`` when the template is
compiled, not a silently ignored keyword.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.template.context import Context
from django.utils.safestring import SafeString

from django_avaturn.widget import render_widget

register = template.Library()


@register.simple_tag(takes_context=True)
def avaturn_head(
    context: Context,
    *,
    audio_source: bool = True,
    autostart: bool = False,
    css_class: str = "",
    width: Any = None,
    height: Any = None,
    size: Any = None,
    avatar_id: str | None = None,
    config: str | None = None,
    widget_id: str | None = None,
    start_label: str | None = None,
    stop_label: str | None = None,
    template_name: str | None = None,
) -> SafeString:
    """Render an avatar widget (markup, one ES module, the SDK preload hints)."""
    return render_widget(
        context,
        template_name=template_name,
        audio_source=audio_source,
        autostart=autostart,
        css_class=css_class,
        width=width,
        height=height,
        size=size,
        avatar_id=avatar_id,
        config=config,
        widget_id=widget_id,
        start_label=start_label,
        stop_label=stop_label,
    )
