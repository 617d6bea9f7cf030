"""What minting a client secret relies on in the ``openai`` SDK it is installed with."""

from __future__ import annotations

import typing
from typing import Annotated, Any, get_args, get_origin, get_type_hints

import typing_extensions
from openai._utils._transform import PropertyInfo
from openai.types.realtime import client_secret_create_params

# Where the SDK would rename a key or format a value before sending it.
Rewrite = tuple[str, str | None, str | None]


def rewrites(hint: Any, path: str, seen: set[int] | None = None) -> list[Rewrite]:
    """Every alias or format the SDK's request types declare under ``hint``."""
    seen = set() if seen is None else seen
    if get_origin(hint) in (typing.Annotated, typing_extensions.Annotated):
        base, *metadata = get_args(hint)
        found = [
            (path, info.alias, info.format)
            for info in metadata
            if isinstance(info, PropertyInfo) and (info.alias or info.format)
        ]
        return found + rewrites(base, path, seen)
    if typing_extensions.is_typeddict(hint):
        if id(hint) in seen:
            return []
        seen.add(id(hint))
        return [
            rewrite
            for name, field in get_type_hints(hint, include_extras=True).items()
            for rewrite in rewrites(field, f"{path}.{name}", seen)
        ]
    return [rewrite for arg in get_args(hint) for rewrite in rewrites(arg, path, seen)]


def test_the_sdk_sends_a_realtime_session_as_it_is_given() -> None:
    """The session goes in ``extra_body``, as JSON, without the SDK's walk of its types.

    That is the same request only while those types rename and format nothing: an
    SDK release that adds an alias there must fail this, not reach OpenAI unaliased.
    """
    hints = get_type_hints(
        client_secret_create_params.ClientSecretCreateParams, include_extras=True
    )
    assert rewrites(hints["session"], "session") == []


class _Renamed(typing_extensions.TypedDict, total=False):
    async_: Annotated[bool, PropertyInfo(alias="async")]


class _Outer(typing_extensions.TypedDict, total=False):
    items: list[_Renamed | None]


def test_the_walk_finds_an_alias_however_deep() -> None:
    assert rewrites(_Outer, "session") == [("session.items.async_", "async", None)]
