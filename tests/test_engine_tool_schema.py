"""A tool's JSON schema from its signature and docstring, and the check of the model's arguments."""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Annotated, Any, Literal, Optional, TypedDict, Union

import pytest

from django_avaturn.engine import ToolContext, tool
from django_avaturn.engine.schema import ArgumentError, parse_docstring
from django_avaturn.engine.tools import Tool


class Size(enum.Enum):
    SMALL = "small"
    LARGE = "large"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class _Place(TypedDict):
    street: str
    city: str


class Mixed(enum.Enum):
    A = "a"
    B = 2


class Address(_Place, total=False):
    postcode: str


@dataclasses.dataclass
class Window:
    start: datetime.date
    days: int = 7


def spec(func: Any) -> Tool:
    found: Tool = func.avaturn_tool
    return found


def parameters(func: Any) -> dict[str, Any]:
    return spec(func).definition()["parameters"]


def check(func: Any, arguments: dict[str, Any]) -> Any:
    return spec(func).parameters.check(arguments, "")


# ---------------------------------------------------------------------- schemas


@tool
def scalars(
    ctx: ToolContext, name: str, count: int, ratio: float, on: bool, nothing: None = None
) -> None:
    """Scalars of each kind."""


@tool
def optionals(
    ctx: ToolContext,
    required_nullable: str | None,
    note: str | None = None,
    limit: Optional[int] = 10,  # noqa: UP045 (the spelling under test)
    either: Union[int, str] = 0,  # noqa: UP007 (the spelling under test)
) -> None:
    """Optional things."""


@tool
def choices(
    ctx: ToolContext,
    mode: Literal["fast", "slow"],
    size: Size,
    priority: Priority = Priority.LOW,
    level: Literal[1, 2, 3] | None = None,
) -> None:
    """Choices."""


@tool
def containers(
    ctx: ToolContext,
    skus: list[str],
    quantities: dict[str, int],
    grid: list[list[float]] | None = None,
) -> None:
    """Containers."""


@tool
def dates(ctx: ToolContext, day: datetime.date, at: datetime.datetime) -> None:
    """Dates."""


@tool
def nested(ctx: ToolContext, address: Address, window: Window, sizes: list[Size]) -> None:
    """Nested."""


@tool(name="book-table", description="Book a table for the visitor.")
def booking(
    ctx: ToolContext, guests: Annotated[int, "How many people, the visitor included."]
) -> None:
    """Ignored: description= wins."""


def test_scalars() -> None:
    assert parameters(scalars) == {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "count": {"type": "integer"},
            "ratio": {"type": "number"},
            "on": {"type": "boolean"},
            "nothing": {"type": "null"},
        },
        "required": ["name", "count", "ratio", "on"],
        "additionalProperties": False,
    }


def test_optionals_with_defaults_are_not_required() -> None:
    assert parameters(optionals) == {
        "type": "object",
        "properties": {
            "required_nullable": {"type": ["string", "null"]},
            "note": {"type": ["string", "null"]},
            "limit": {"type": ["integer", "null"]},
            "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        },
        "required": ["required_nullable"],
        "additionalProperties": False,
    }


def test_literals_and_enums_are_enums() -> None:
    assert parameters(choices)["properties"] == {
        "mode": {"type": "string", "enum": ["fast", "slow"]},
        "size": {"type": "string", "enum": ["small", "large"]},
        "priority": {"type": "integer", "enum": [1, 2]},
        "level": {"type": ["integer", "null"], "enum": [1, 2, 3, None]},
    }
    assert parameters(choices)["required"] == ["mode", "size"]


def test_lists_and_dicts() -> None:
    assert parameters(containers)["properties"] == {
        "skus": {"type": "array", "items": {"type": "string"}},
        "quantities": {"type": "object", "additionalProperties": {"type": "integer"}},
        "grid": {
            "anyOf": [
                {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                {"type": "null"},
            ]
        },
    }


def test_dates_are_strings_with_a_format() -> None:
    assert parameters(dates)["properties"] == {
        "day": {"type": "string", "format": "date"},
        "at": {"type": "string", "format": "date-time"},
    }


def test_typeddicts_and_dataclasses_are_objects() -> None:
    assert parameters(nested)["properties"] == {
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "postcode": {"type": "string"},
            },
            "required": ["street", "city"],
            "additionalProperties": False,
        },
        "window": {
            "type": "object",
            "properties": {
                "start": {"type": "string", "format": "date"},
                "days": {"type": "integer"},
            },
            "required": ["start"],
            "additionalProperties": False,
        },
        "sizes": {"type": "array", "items": {"type": "string", "enum": ["small", "large"]}},
    }


def test_name_description_and_annotated_descriptions() -> None:
    assert spec(booking).definition() == {
        "type": "function",
        "name": "book-table",
        "description": "Book a table for the visitor.",
        "parameters": {
            "type": "object",
            "properties": {
                "guests": {
                    "type": "integer",
                    "description": "How many people, the visitor included.",
                }
            },
            "required": ["guests"],
            "additionalProperties": False,
        },
    }


def test_a_tool_without_parameters() -> None:
    @tool
    def ping(ctx: ToolContext) -> str:
        return "pong"

    assert spec(ping).definition() == {
        "type": "function",
        "name": "ping",
        "description": "",
        "parameters": {
            "type": "object",
            "properties": {},
            "required": [],
            "additionalProperties": False,
        },
    }
    assert spec(ping).is_async is False


def test_options_are_kept_on_the_tool() -> None:
    @tool(permission="shop.view_order", timeout=2.5)
    async def orders(ctx: ToolContext) -> list[str]:
        """Orders."""
        return []

    assert (spec(orders).permission, spec(orders).timeout, spec(orders).is_async) == (
        "shop.view_order",
        2.5,
        True,
    )


# ---------------------------------------------------------------------- docstrings


def test_a_google_docstring_gives_the_description_and_each_parameters() -> None:
    @tool
    def find_orders(ctx: ToolContext, status: str, since: datetime.date | None = None) -> None:
        """Find the visitor's orders
        by their status.

        Orders of other people are never shown.

        Args:
            status (str): The order status, such as
                "shipped" or "pending".
            since: Only orders placed on or after this day.

        Returns:
            The orders.
        """

    definition = spec(find_orders).definition()
    assert definition["description"] == (
        "Find the visitor's orders by their status. Orders of other people are never shown."
    )
    assert definition["parameters"]["properties"] == {
        "status": {
            "type": "string",
            "description": 'The order status, such as "shipped" or "pending".',
        },
        "since": {
            "type": ["string", "null"],
            "format": "date",
            "description": "Only orders placed on or after this day.",
        },
    }


def test_parse_docstring_without_sections_and_without_a_docstring() -> None:
    assert parse_docstring("One line.") == ("One line.", {})
    assert parse_docstring(None) == ("", {})
    assert parse_docstring("Summary.\n\nArguments:\n    x: An x.\n\nRaises:\n    E: never.") == (
        "Summary.",
        {"x": "An x."},
    )


# ------------------------------------------------------------------ what is refused when defined


def test_unsupported_annotations_raise_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match=r"parameter 'tags'.*set\[str\].*not a supported"):

        @tool
        def f(ctx: ToolContext, tags: set[str]) -> None: ...

    with pytest.raises(TypeError, match=r"say what the list holds"):

        @tool
        def g(ctx: ToolContext, items: list) -> None: ...  # type: ignore[type-arg]

    with pytest.raises(TypeError, match=r"a dict needs str keys"):

        @tool
        def h(ctx: ToolContext, counts: dict[int, int]) -> None: ...

    with pytest.raises(TypeError, match=r"Any.*not a supported"):

        @tool
        def i(ctx: ToolContext, anything: Any) -> None: ...

    with pytest.raises(TypeError, match=r"parameter 'x' needs a type hint"):

        @tool
        def j(ctx: ToolContext, x) -> None: ...  # type: ignore[no-untyped-def]

    with pytest.raises(TypeError, match=r"Mixed's values must be all strings or all ints"):

        @tool
        def k(ctx: ToolContext, m: Mixed) -> None: ...


def test_the_context_must_come_first() -> None:
    with pytest.raises(TypeError, match=r"first parameter must be the context"):

        @tool
        def none() -> None: ...

    with pytest.raises(TypeError, match=r"annotate it ToolContext"):

        @tool
        def wrong(ctx: str) -> None: ...

    with pytest.raises(TypeError, match=r"\*args and \*\*kwargs"):

        @tool
        def splat(ctx: ToolContext, **kwargs: str) -> None: ...


def test_names_must_suit_openai() -> None:
    with pytest.raises(ValueError, match=r"1 to 64 letters"):
        tool(name="has space")(lambda ctx: None)
    with pytest.raises(ValueError, match=r"1 to 64 letters"):
        tool(name="x" * 65)(lambda ctx: None)

    @tool(name="x" * 64)
    def longest(ctx: ToolContext) -> None: ...

    assert spec(longest).name == "x" * 64


def test_permission_and_timeout_are_checked() -> None:
    with pytest.raises(ValueError, match=r"'app_label.codename'"):
        tool(name="x", permission="view_order")(lambda ctx: None)
    with pytest.raises(ValueError, match=r"above 0, at most 300"):
        tool(name="x", timeout=0)(lambda ctx: None)
    with pytest.raises(ValueError, match=r"above 0, at most 300"):
        tool(name="x", timeout=301)(lambda ctx: None)


# ---------------------------------------------------------------------- the arguments' check


def test_valid_arguments_are_converted_to_what_the_function_declares() -> None:
    converted = check(
        nested,
        {
            "address": {"street": "1 Main St", "city": "Bath"},
            "window": {"start": "2025-03-01"},
            "sizes": ["small", "large"],
        },
    )
    assert converted == {
        "address": {"street": "1 Main St", "city": "Bath"},
        "window": Window(start=datetime.date(2025, 3, 1), days=7),
        "sizes": [Size.SMALL, Size.LARGE],
    }
    assert check(dates, {"day": "2025-01-31", "at": "2025-01-31T14:30:00Z"}) == {
        "day": datetime.date(2025, 1, 31),
        "at": datetime.datetime(2025, 1, 31, 14, 30, tzinfo=datetime.timezone.utc),
    }
    assert check(scalars, {"name": "n", "count": 3.0, "ratio": 2, "on": False}) == {
        "name": "n",
        "count": 3,
        "ratio": 2.0,
        "on": False,
    }
    assert check(choices, {"mode": "fast", "size": "small", "priority": 2, "level": None}) == {
        "mode": "fast",
        "size": Size.SMALL,
        "priority": Priority.HIGH,
        "level": None,
    }
    assert check(optionals, {"required_nullable": None, "either": "x"}) == {
        "required_nullable": None,
        "either": "x",
    }


def test_a_date_time_without_an_offset_is_in_the_sites_time_zone(settings: Any) -> None:
    settings.USE_TZ = True
    settings.TIME_ZONE = "Europe/Paris"
    at = check(dates, {"day": "2025-01-31", "at": "2025-01-31T14:30:00"})["at"]
    assert at == datetime.datetime(2025, 1, 31, 13, 30, tzinfo=datetime.timezone.utc)
    settings.USE_TZ = False
    at = check(dates, {"day": "2025-01-31", "at": "2025-01-31T14:30:00"})["at"]
    assert at == datetime.datetime(2025, 1, 31, 14, 30) and at.tzinfo is None


@pytest.mark.parametrize(
    ("func", "arguments", "message"),
    [
        (
            scalars,
            {"name": "n", "count": "3", "ratio": 1, "on": True},
            "count: expected an integer, got a string.",
        ),
        (
            scalars,
            {"name": "n", "count": 1.5, "ratio": 1, "on": True},
            "count: expected an integer, got a number.",
        ),
        (
            scalars,
            {"name": "n", "count": True, "ratio": 1, "on": True},
            "count: expected an integer, got a boolean.",
        ),
        (
            scalars,
            {"name": "n", "count": 1, "ratio": "1", "on": True},
            "ratio: expected a number, got a string.",
        ),
        (
            scalars,
            {"name": "n", "count": 1, "ratio": 1, "on": 1},
            "on: expected a boolean, got an integer.",
        ),
        (scalars, {"count": 1, "ratio": 1, "on": True}, "name: required, missing."),
        (
            scalars,
            {"name": "n", "count": 1, "ratio": 1, "on": True, "user_id": 7},
            "the arguments: unknown 'user_id' "
            "(allowed: 'name', 'count', 'ratio', 'on', 'nothing').",
        ),
        (
            choices,
            {"mode": "medium", "size": "small"},
            "mode: expected one of 'fast', 'slow', got 'medium'.",
        ),
        (
            choices,
            {"mode": "fast", "size": "huge"},
            "size: expected one of 'small', 'large', got 'huge'.",
        ),
        (
            choices,
            {"mode": "fast", "size": "small", "level": True},
            "level: expected one of 1, 2, 3, got true.",
        ),
        (containers, {"skus": "A1", "quantities": {}}, "skus: expected an array, got a string."),
        (
            containers,
            {"skus": ["A1", 2], "quantities": {}},
            "skus[1]: expected a string, got an integer.",
        ),
        (
            containers,
            {"skus": [], "quantities": {"A1": "two"}},
            "quantities.A1: expected an integer, got a string.",
        ),
        (
            containers,
            {"skus": [], "quantities": {}, "grid": [[1, "x"]]},
            "grid[0][1]: expected a number, got a string.",
        ),
        (
            dates,
            {"day": "31/01/2025", "at": "2025-01-31T14:30:00"},
            "day: expected an ISO 8601 date such as 2025-01-31, got '31/01/2025'.",
        ),
        (
            dates,
            {"day": "2025-01-31T10:00:00", "at": "2025-01-31T14:30:00"},
            "day: expected an ISO 8601 date such as 2025-01-31, got '2025-01-31T10:00:00'.",
        ),
        (
            dates,
            {"day": "2025-01-31", "at": 5},
            "at: expected an ISO 8601 date-time such as 2025-01-31T14:30:00+00:00, got 5.",
        ),
        (
            nested,
            {"address": {"street": "s"}, "window": {"start": "2025-01-01"}, "sizes": []},
            "address.city: required, missing.",
        ),
        (
            nested,
            {
                "address": {"street": "s", "city": "c"},
                "window": {"start": "2025-01-01", "end": 1},
                "sizes": [],
            },
            "window: unknown 'end' (allowed: 'start', 'days').",
        ),
        (
            optionals,
            {"required_nullable": None, "either": 1.5},
            "either: expected an integer, got a number. "
            "Or: either: expected a string, got a number.",
        ),
    ],
)
def test_invalid_arguments_say_where_and_why(
    func: Any, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ArgumentError) as raised:
        check(func, arguments)
    assert str(raised.value) == message
