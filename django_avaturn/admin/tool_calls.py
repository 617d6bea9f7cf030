"""The site engine's tool calls, read-only, on their session's change page."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.translation import gettext_lazy

from django_avaturn.models import Session, ToolCall
from django_avaturn.upstream.redaction import scrub

if TYPE_CHECKING:
    _TabularInline = admin.TabularInline[ToolCall, Session]
else:  # generic only in the type stubs
    _TabularInline = admin.TabularInline

_FIELDS = ("created_at", "tool", "call_id", "status", "duration_ms", "recorded_arguments")


class ToolCallInline(_TabularInline):
    """Each call's tool, outcome and duration; its arguments only where the site records them
    (``SITE_ENGINE["RECORD_TOOL_ARGUMENTS"]``), scrubbed of any key."""

    model = ToolCall
    fields = _FIELDS
    readonly_fields = _FIELDS
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False
    verbose_name_plural = gettext_lazy("tool calls")

    @admin.display(description=gettext_lazy("arguments"))
    def recorded_arguments(self, obj: ToolCall) -> str:
        if obj.arguments is None:
            return "—"
        return scrub(json.dumps(obj.arguments, ensure_ascii=False, sort_keys=True))

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
