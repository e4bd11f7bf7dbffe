"""A pipeline's parameters by their annotations: the JSON types the CLI and REST check values
against, and the *text kinds* they convert text to (decision 0092).

Values enter a run as text (``twingraph run --param k=v``) or JSON (REST, schedules, a
resumed run's record). A parameter annotated with a JSON type (``str``, ``int``, ``float``,
``bool``, ``list``, ``dict``) must get one. A parameter annotated with a text kind gets its
value built from text:

* ``pathlib.Path`` (any ``PurePath`` class): ``Path(text)``;
* ``datetime.date``, ``datetime.datetime``, ``datetime.time``: ISO 8601 (``fromisoformat``);
* ``uuid.UUID``, ``decimal.Decimal`` (finite only);
* an ``enum.Enum`` class: a member by value, else by name.

A run records such a value as its text (``text_form``), exactly: a resume builds the same value
again. ``Optional[...]`` of either kind also takes ``None`` (``null``).
"""
from __future__ import annotations

import datetime as _dt
import decimal
import enum
import inspect
import types
import typing
import uuid
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from twingraph.errors import ValidationError

_SCALARS = (str, int, float, bool)      # and list, dict: ``param_json_types``


class ParamError(ValidationError):
    """A parameter's value is not of its annotated kind; ``param`` names the parameter."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class Nullable:
    """An annotation that also takes None: ``Optional[int]``, ``Path | None``."""
    __slots__ = ("type",)

    def __init__(self, t: type) -> None:
        self.type = t

    @property
    def __name__(self) -> str:
        return f"{self.type.__name__} or null"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Nullable) and other.type is self.type

    def __hash__(self) -> int:
        return hash((Nullable, self.type))


def param_json_types(fn: Any) -> dict[str, Any]:
    """The parameters of ``fn`` annotated ``str``, ``int``, ``float``, ``bool``, ``list`` or
    ``dict`` (``list[int]``, ``dict[str, float]``: by their container alone), or one of them
    or None (a ``Nullable``): what the CLI converts ``--param`` text to, and what REST checks
    JSON values against. Each parameter's annotation is resolved on its own: one that cannot
    be (a name imported under ``TYPE_CHECKING``) is not checked, and no longer turns off the
    checks of all the others (``zip_code: str`` took ``12345`` as an int then)."""
    return _kinds(fn, _json_kind)


def param_text_types(fn: Any) -> dict[str, Any]:
    """The parameters of ``fn`` annotated with a text kind (or one of them or None, a
    ``Nullable``): the class each one's value is built from text as."""
    return _kinds(fn, _text_kind)


def _kinds(fn: Any, kind_of: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, t in param_hints(fn).items():
        kind = kind_of(t)
        if kind is not None:
            out[k] = kind
        elif typing.get_origin(t) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(t) if a is not type(None)]
            if len(args) == 1 and len(typing.get_args(t)) == 2:
                kind = kind_of(args[0])
                if kind is not None:
                    out[k] = Nullable(kind)
    return out


def _json_kind(t: Any) -> type | None:
    if t in _SCALARS:
        return t  # type: ignore[no-any-return]
    origin = t if t in (list, dict) else typing.get_origin(t)
    return origin if origin in (list, dict) else None


_TEXT_CLASSES = (_dt.date, _dt.time, uuid.UUID, decimal.Decimal)    # datetime is a date


def _text_kind(t: Any) -> type | None:
    if not isinstance(t, type):
        return None
    if issubclass(t, (PurePath, enum.Enum)) or t in _TEXT_CLASSES or t is _dt.datetime:
        return t
    return None


def param_hints(fn: Any) -> dict[str, Any]:
    """``fn``'s parameter annotations, evaluated: all at once when they can be, else each on
    its own (those that cannot be are left out)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - one of them does not resolve: each on its own below
        hints = None
    if hints is not None:
        hints.pop("return", None)
        return hints
    target = inspect.unwrap(fn)
    scope = getattr(target, "__globals__", {})
    out: dict[str, Any] = {}
    for k, a in getattr(target, "__annotations__", {}).items():
        if k == "return":
            continue
        if isinstance(a, str):
            try:      # the annotation's text, in the module that wrote it (get_type_hints' way)
                a = eval(a, scope)  # noqa: S307 - the user's own module, already imported
            except Exception:  # noqa: BLE001 - a name it cannot see: not checked
                continue
        out[k] = a
    return out


def json_fits(value: Any, annotation: Any) -> bool:
    """Whether a JSON value is of a scalar annotation's type (an int is a float; a bool is
    neither an int nor a float, as JSON tells them apart; a ``Nullable`` also takes None)."""
    if isinstance(annotation, Nullable):
        return value is None or json_fits(value, annotation.type)
    t = type(value)
    if annotation is float:
        return t is int or t is float
    return t is annotation


# -- text kinds -------------------------------------------------------------------------------
def from_text(kind: Any, value: Any) -> Any:
    """``value`` (text, or for an enum any JSON value) as an instance of the text kind
    ``kind``; ``ValueError`` saying what was expected when it is not one. An instance of the
    kind already passes as it is."""
    if isinstance(kind, Nullable):
        return None if value is None else from_text(kind.type, value)
    if isinstance(value, kind):         # a Path's PosixPath too
        return value
    if issubclass(kind, enum.Enum):
        return _member(kind, value)
    if not isinstance(value, str):
        raise ValueError(f"expected {_shape(kind)} as text, got {type(value).__name__}")
    try:
        if issubclass(kind, PurePath):
            if not value or "\x00" in value:
                raise ValueError("not a path")
            return kind(value)
        if kind is _dt.datetime:
            return _dt.datetime.fromisoformat(value)
        if kind is _dt.date:
            return _dt.date.fromisoformat(value)
        if kind is _dt.time:
            return _dt.time.fromisoformat(value)
        if kind is uuid.UUID:
            return uuid.UUID(value)
        number = decimal.Decimal(value)
        if not number.is_finite():
            raise ValueError("not finite")
        return number
    except (ValueError, decimal.InvalidOperation):
        raise ValueError(f"expected {_shape(kind)}, got {value!r}") from None


def _member(kind: type[enum.Enum], value: Any) -> enum.Enum:
    if not isinstance(value, bool):     # JSON tells true from 1 (``json_fits``)
        try:
            return kind(value)
        except (ValueError, TypeError):
            pass
    if isinstance(value, str) and value in kind.__members__:
        return kind.__members__[value]
    choices = ", ".join(repr(m.value) for m in kind)
    raise ValueError(f"expected one of {choices} (or a member's name), got {value!r}")


def _shape(kind: type) -> str:
    if issubclass(kind, PurePath):
        return "a path"
    return {_dt.datetime: "an ISO 8601 date and time (2026-12-07T09:30:00+00:00)",
            _dt.date: "an ISO 8601 date (2026-12-07)",
            _dt.time: "an ISO 8601 time (09:30:00)",
            uuid.UUID: "a UUID",
            decimal.Decimal: "a finite decimal number"}.get(kind, kind.__name__)


def text_form(kind: Any, value: Any) -> Any:
    """How a run records ``value`` of the text kind ``kind``: JSON that ``from_text`` turns
    back into an equal value of the same class, or ``NotImplemented`` when there is none (a
    subclass, a datetime whose zone has a name: recorded as it is, inexact)."""
    if isinstance(kind, Nullable):
        return None if value is None else text_form(kind.type, value)
    if not isinstance(value, kind):
        return NotImplemented
    if isinstance(value, enum.Enum):
        raw = value.value
        text: Any = raw if type(raw) in (str, int) else value.name
    elif isinstance(value, (_dt.date, _dt.time)):
        text = value.isoformat()
    else:
        text = str(value)
    try:
        back = from_text(kind, text)
    except ValueError:
        return NotImplemented
    if type(back) is not type(value) or back != value or repr(back) != repr(value):
        return NotImplemented
    return text


def typed_params(fn: Any, params: Mapping[str, Any], names: Any = None,
                 where: str = "parameter") -> dict[str, Any]:
    """``params`` with the values of ``fn``'s text-kind parameters built from their text
    (only those in ``names``, when given). ``ParamError`` naming the parameter (after
    ``where``, e.g. ``--param``) for a value that is not one."""
    out = dict(params)
    for k, kind in param_text_types(fn).items():
        if k in out and (names is None or k in names):
            out[k] = build_param(k, kind, out[k], where)
    return out


def build_param(name: str, kind: Any, value: Any, where: str = "param") -> Any:
    """``value`` of the text-kind parameter ``name`` built, or ``ParamError`` naming it."""
    try:
        return _built(name, kind, value)
    except ValueError as exc:
        raise ParamError(f"{where} {name}: {exc}", name) from None


def _built(name: str, kind: Any, value: Any) -> Any:
    if name == "logical_date" and isinstance(value, str) and "T" in value and \
            (kind is _dt.date or kind == Nullable(_dt.date)):
        # a schedule's slot is a UTC date and time; ``logical_date: date`` takes its date
        return from_text(_dt.datetime, value).date()
    return from_text(kind, value)


def as_given(fn: Any, params: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """JSON ``params`` a server run is started with (REST, a schedule), as it records them:
    an int given to a ``float`` parameter as a float (as ``--param x=2`` gives ``2.0``, so the
    tasks of both are keyed alike), and a text-kind value as its canonical text (``HIGH`` for
    an enum whose value is 2 records 2). Also the names of the text-kind values, which every
    start of the run (the first, an adoption, a resume) builds from their text.
    ``ParamError`` for one that is not one."""
    out = dict(params)
    for k, t in param_json_types(fn).items():
        if (t is float or t == Nullable(float)) and type(out.get(k)) is int:
            out[k] = float(out[k])
    typed: list[str] = []
    for k, kind in param_text_types(fn).items():
        if out.get(k) is None:
            continue
        value = build_param(k, kind, out[k])
        text = text_form(kind, value)
        if text is not NotImplemented and k != "logical_date":   # a schedule's slot, as is
            out[k] = text
        typed.append(k)
    return out, typed


def same_value(kind: Any, name: str, recorded: Any, given: Any) -> bool:
    """Whether ``given`` (text, or a value already built) is the value a run recorded as
    ``recorded`` for a text-kind parameter (``/data//in.csv`` is ``/data/in.csv``)."""
    try:
        return bool(_built(name, kind, recorded) == _built(name, kind, given))
    except ValueError:
        return False


__all__ = ["Nullable", "ParamError", "as_given", "build_param", "from_text", "json_fits", "param_hints",
           "param_json_types", "param_text_types", "same_value", "text_form", "typed_params"]
