"""A tool's parameters: their JSON schema from type hints, and the check of the model's arguments.

Each supported annotation becomes a ``Shape``: it writes its JSON schema for
the model and checks (and converts) what the model sent against the same
rules, so the schema the model sees and the validation it meets cannot drift.
Only the subset of JSON Schema these shapes write is ever validated, so no
general validator is needed.

Supported: ``str``, ``int``, ``float``, ``bool``, ``None``, ``X | None`` and
``Optional[X]``, other unions, ``Literal[...]``, ``Enum`` subclasses (str or
int values), ``list[X]``, ``dict[str, X]``, ``datetime.date`` and
``datetime.datetime`` (ISO 8601 strings), ``TypedDict`` and dataclasses (as
objects), and ``Annotated[X, "description"]``. Anything else raises
``TypeError`` when the tool is defined.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

from django.conf import settings
from django.utils import timezone

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns?|Yields?|Raises|Examples?|Notes?):\s*$")
_ARGS_SECTIONS = frozenset({"Args", "Arguments", "Parameters"})
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


class ArgumentError(ValueError):
    """The model's arguments do not match the tool's schema; the message says where and why."""


def _kind(value: Any) -> str:
    """How the model's JSON value reads in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _where(path: str) -> str:
    return path or "the arguments"


class Shape:
    """One annotation: its JSON schema and the check of a value against it."""

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, value: Any, path: str) -> Any:
        """``value`` as the function receives it, or ``ArgumentError``."""
        raise NotImplementedError


class Scalar(Shape):
    def __init__(self, json_type: str, python: type, noun: str) -> None:
        self.json_type, self.python, self.noun = json_type, python, noun

    def schema(self) -> dict[str, Any]:
        return {"type": self.json_type}

    def check(self, value: Any, path: str) -> Any:
        if self.python is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif self.python is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            # JSON has one number type: 3.0 is the integer 3.
            if isinstance(value, float) and value.is_integer():
                return int(value)
        elif self.python is type(None):
            if value is None:
                return None
        elif isinstance(value, self.python):
            return value
        raise ArgumentError(f"{_where(path)}: expected {self.noun}, got {_kind(value)}.")


class Choice(Shape):
    """``Literal[...]`` or an ``Enum``: one of a fixed set of JSON values."""

    def __init__(self, values: list[Any], convert: Callable[[Any], Any] | None = None) -> None:
        self.values, self.convert = values, convert

    def schema(self) -> dict[str, Any]:
        types_ = {_json_type(value) for value in self.values}
        out: dict[str, Any] = {}
        if len(types_) == 1:
            out["type"] = types_.pop()
        out["enum"] = list(self.values)
        return out

    def check(self, value: Any, path: str) -> Any:
        for allowed in self.values:
            # True == 1 in Python; in JSON they are different values.
            if value == allowed and type(value) is type(allowed):
                return self.convert(allowed) if self.convert else allowed
        listed = ", ".join(_json_literal(allowed) for allowed in self.values)
        raise ArgumentError(
            f"{_where(path)}: expected one of {listed}, got {_json_literal(value)}."
        )


class Nullable(Shape):
    """``X | None``: X, or null."""

    def __init__(self, inner: Shape) -> None:
        self.inner = inner

    def schema(self) -> dict[str, Any]:
        inner = self.inner.schema()
        if isinstance(inner.get("type"), str) and set(inner) <= {"type", "enum", "format"}:
            out = {**inner, "type": [inner["type"], "null"]}
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
            return out
        return {"anyOf": [inner, {"type": "null"}]}

    def check(self, value: Any, path: str) -> Any:
        return None if value is None else self.inner.check(value, path)


class AnyOf(Shape):
    def __init__(self, options: list[Shape]) -> None:
        self.options = options

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [option.schema() for option in self.options]}

    def check(self, value: Any, path: str) -> Any:
        reasons = []
        for option in self.options:
            try:
                return option.check(value, path)
            except ArgumentError as exc:
                reasons.append(str(exc))
        raise ArgumentError(" Or: ".join(reasons))


class Array(Shape):
    def __init__(self, items: Shape) -> None:
        self.items = items

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "items": self.items.schema()}

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise ArgumentError(f"{_where(path)}: expected an array, got {_kind(value)}.")
        return [self.items.check(item, f"{path}[{index}]") for index, item in enumerate(value)]


class StrMapping(Shape):
    """``dict[str, X]``: an object whose every value is X."""

    def __init__(self, values: Shape) -> None:
        self.values = values

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": self.values.schema()}

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise ArgumentError(f"{_where(path)}: expected an object, got {_kind(value)}.")
        return {key: self.values.check(item, _join(path, key)) for key, item in value.items()}


class IsoDate(Shape):
    """``datetime.date`` or ``datetime.datetime`` as an ISO 8601 string."""

    def __init__(self, python: type[datetime.date]) -> None:
        self.python = python
        self.is_datetime = issubclass(python, datetime.datetime)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "date-time" if self.is_datetime else "date"}

    def check(self, value: Any, path: str) -> Any:
        example = "2025-01-31T14:30:00+00:00" if self.is_datetime else "2025-01-31"
        if isinstance(value, str):
            # Python 3.10's fromisoformat does not read the "Z" suffix.
            text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
            try:
                if self.is_datetime:
                    return _aware(datetime.datetime.fromisoformat(text))
                if len(text) == 10:
                    return datetime.date.fromisoformat(text)
            except ValueError:
                pass
        raise ArgumentError(
            f"{_where(path)}: expected an ISO 8601 {'date-time' if self.is_datetime else 'date'} "
            f"such as {example}, got {_json_literal(value)}."
        )


def _aware(moment: datetime.datetime) -> datetime.datetime:
    """With ``USE_TZ``, a date-time the model gave without an offset is in the site's current
    time zone, as Django's forms read one: a tool never compares it with an aware one."""
    if settings.USE_TZ and timezone.is_naive(moment):
        return timezone.make_aware(moment)
    return moment


@dataclasses.dataclass
class Field:
    """One parameter of a tool, or one key of a ``TypedDict``/dataclass argument."""

    name: str
    shape: Shape
    required: bool
    description: str = ""

    def schema(self) -> dict[str, Any]:
        out = self.shape.schema()
        if self.description:
            out = {**out, "description": self.description}
        return out


class Object(Shape):
    """Named fields: a tool's parameters, a ``TypedDict`` or a dataclass."""

    def __init__(
        self, fields: list[Field], build: Callable[[dict[str, Any]], Any] | None = None
    ) -> None:
        self.fields, self.build = fields, build

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {field.name: field.schema() for field in self.fields},
            "required": [field.name for field in self.fields if field.required],
            "additionalProperties": False,
        }

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise ArgumentError(f"{_where(path)}: expected an object, got {_kind(value)}.")
        known = {field.name: field for field in self.fields}
        unknown = sorted(set(value) - set(known))
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            allowed = ", ".join(repr(name) for name in known) or "none"
            raise ArgumentError(f"{_where(path)}: unknown {names} (allowed: {allowed}).")
        out = {}
        for field in self.fields:
            if field.name in value:
                out[field.name] = field.shape.check(value[field.name], _join(path, field.name))
            elif field.required:
                raise ArgumentError(f"{_join(path, field.name)}: required, missing.")
        return self.build(out) if self.build else out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _json_literal(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:40] + "…")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return _kind(value)


_SCALARS: dict[Any, Scalar] = {
    str: Scalar("string", str, "a string"),
    int: Scalar("integer", int, "an integer"),
    float: Scalar("number", float, "a number"),
    bool: Scalar("boolean", bool, "a boolean"),
    type(None): Scalar("null", type(None), "null"),
    None: Scalar("null", type(None), "null"),
}


# A TypedDict key's Required[X] / NotRequired[X] (Python 3.11+): what it holds is X.
_KEY_QUALIFIERS = tuple(
    qualifier
    for qualifier in (getattr(typing, "Required", None), getattr(typing, "NotRequired", None))
    if qualifier is not None
)


def _is_typeddict(annotation: Any) -> bool:
    return isinstance(annotation, type) and typing.is_typeddict(annotation)


def shape_of(annotation: Any, where: str) -> Shape:
    """The ``Shape`` of ``annotation``; ``TypeError`` naming ``where`` if it is not supported."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated or (origin is not None and origin in _KEY_QUALIFIERS):
        return shape_of(args[0], where)
    if annotation in _SCALARS and isinstance(annotation, (type, type(None))):
        return _SCALARS[annotation]
    if origin is Literal:
        values = list(args)
        if not values or not all(
            value is None or isinstance(value, (str, int, float, bool)) for value in values
        ):
            raise TypeError(f"{where}: Literal values must be strings, numbers, booleans or None.")
        return Choice(values)
    if origin is Union or origin is types.UnionType:
        options = [arg for arg in args if arg is not type(None)]
        inner = shape_of(options[0], where) if len(options) == 1 else None
        if inner is None:
            inner = AnyOf([shape_of(option, where) for option in options])
        return Nullable(inner) if len(options) < len(args) else inner
    if origin is list:
        if len(args) != 1:
            raise TypeError(f"{where}: say what the list holds, such as list[str].")
        return Array(shape_of(args[0], f"{where}[]"))
    if origin is dict:
        if len(args) != 2 or args[0] is not str:
            raise TypeError(f"{where}: a dict needs str keys, such as dict[str, int].")
        return StrMapping(shape_of(args[1], f"{where}{{}}"))
    shape = _class_shape(annotation, where) if isinstance(annotation, type) else None
    if shape is not None:
        return shape
    if annotation is list or annotation is dict:
        raise TypeError(f"{where}: say what the {annotation.__name__} holds, such as list[str].")
    raise TypeError(
        f"{where}: {annotation!r} is not a supported tool parameter type (use str, int, float, "
        "bool, None, Literal, an Enum, list[X], dict[str, X], date, datetime, a TypedDict or a "
        "dataclass)."
    )


def _class_shape(annotation: type, where: str) -> Shape | None:
    if issubclass(annotation, enum.Enum):
        return _enum_shape(annotation, where)
    if issubclass(annotation, datetime.date):
        return IsoDate(annotation)
    if _is_typeddict(annotation):
        return _typeddict_shape(annotation, where)
    if dataclasses.is_dataclass(annotation):
        return _dataclass_shape(annotation, where)
    return None


def _enum_shape(enum_type: type[enum.Enum], where: str) -> Shape:
    values = [member.value for member in enum_type]
    if not values or not (
        all(isinstance(value, str) for value in values)
        or all(isinstance(value, int) and not isinstance(value, bool) for value in values)
    ):
        raise TypeError(f"{where}: {enum_type.__name__}'s values must be all strings or all ints.")
    return Choice(values, enum_type)


def resolve_hints(owner: Any, where: str, localns: dict[str, Any] | None = None) -> dict[str, Any]:
    """``owner``'s type hints, resolved; ``TypeError`` naming ``where`` if they cannot be."""
    try:
        hints: dict[str, Any] = typing.get_type_hints(owner, localns=localns, include_extras=True)
        return hints
    except Exception as exc:  # a NameError, most often: a name only imported under TYPE_CHECKING
        raise TypeError(f"{where}: its type hints cannot be resolved ({exc}).") from exc


def annotated_description(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Annotated:
        for extra in typing.get_args(annotation)[1:]:
            if isinstance(extra, str):
                return extra
    return ""


def _typeddict_shape(td: type, where: str) -> Shape:
    hints = resolve_hints(td, where)
    required = getattr(td, "__required_keys__", frozenset(hints))
    fields = [
        Field(
            name,
            shape_of(hint, f"{where}.{name}"),
            name in required,
            annotated_description(hint),
        )
        for name, hint in hints.items()
    ]
    return Object(fields)


def _dataclass_shape(cls: type, where: str) -> Shape:
    hints = resolve_hints(cls, where)
    fields = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        hint = hints[field.name]
        has_default = (
            field.default is not dataclasses.MISSING
            or field.default_factory is not dataclasses.MISSING
        )
        fields.append(
            Field(
                field.name,
                shape_of(hint, f"{where}.{field.name}"),
                not has_default,
                annotated_description(hint),
            )
        )
    return Object(fields, lambda values: cls(**values))


# ---------------------------------------------------------------------- docstrings


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """A Google-style docstring's text before its first section, and its ``Args:`` entries."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    entry_indent: int | None = None
    for line in lines:
        match = _SECTION.match(line)
        if match and not line.startswith((" ", "\t")):
            section, current, entry_indent = match.group(1), None, None
            continue
        if section is None:
            summary.append(line)
            continue
        if section not in _ARGS_SECTIONS or not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:  # prose after the section ends it
            section = None
            continue
        if entry_indent is None:
            entry_indent = indent
        entry = _ARG_LINE.match(line.strip()) if indent <= entry_indent else None
        if entry:
            current = entry.group(1).lstrip("*")
            args[current] = entry.group(2).strip()
        elif current is not None:
            args[current] = f"{args[current]} {line.strip()}".strip()
    description = " ".join(" ".join(summary).split())
    return description, args
