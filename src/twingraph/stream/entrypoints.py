"""Stream job entry points: what ``"package.module:function"`` may name (decision 0022, 2026-12-05).

A job manager imports the module and calls the named object with the client's JSON keyword
arguments. The call happens before anything can look at what comes back, so "it must return a
``StreamExecutionEnvironment``" cannot be the guard: ``os:system`` or an operator's helper has
done its work by the time its return value is refused. The guard is therefore on the object,
before it is called. An entry point is a plain function (``def``) that says it is one:

- decorated with ``@stream_job``, or
- annotated ``-> StreamExecutionEnvironment``: the documented contract ("a function returning a
  ``StreamExecutionEnvironment``") written in its signature. The annotation is read, never
  evaluated: the class (or a subclass), or a string whose last dotted name is
  ``StreamExecutionEnvironment`` (what ``from __future__ import annotations`` leaves).

Everything else is refused with ``ValidationError`` naming the entry point, without being called:
classes (``stream_app:CollectSink``), builtins (``os:system``), bound methods, ``functools.partial``
and other callable objects, and functions that are neither decorated nor annotated. The name is
looked up in the module's namespace (``vars(module)``), so a module ``__getattr__`` is not run.
A wrapper made with ``functools.wraps`` keeps both marks (it copies ``__annotations__`` and
``__dict__``).
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from typing import Any, TypeVar

from twingraph.errors import ValidationError
from twingraph.stream.api import StreamExecutionEnvironment

F = TypeVar("F", bound=Callable[..., StreamExecutionEnvironment])

_MARK = "__twingraph_stream_job__"
_HOW = ("only functions decorated with @twingraph.stream.stream_job or annotated "
        "'-> StreamExecutionEnvironment' may be submitted")


def stream_job(func: F) -> F:
    """Mark ``func`` as a stream job entry point: a job manager may call it with a client's
    JSON arguments (``POST /jobs/submit``, ``twingraph stream submit module:func``). Returns
    ``func`` itself."""
    if not isinstance(func, types.FunctionType):
        raise TypeError(f"@stream_job decorates functions, not {type(func).__name__}")
    setattr(func, _MARK, True)
    return func


def _returns_environment(func: types.FunctionType) -> bool:
    annotation = func.__annotations__.get("return")
    if isinstance(annotation, type):
        return issubclass(annotation, StreamExecutionEnvironment)
    if isinstance(annotation, str):
        return annotation.strip().strip("'\"").rsplit(".", 1)[-1] == StreamExecutionEnvironment.__name__
    return False


def why_not_stream_job(obj: Any) -> str | None:
    """None if ``obj`` may be called as an entry point, else what it is (for the error message)."""
    if not isinstance(obj, types.FunctionType):
        return ("a class" if isinstance(obj, type)
                else "a builtin" if isinstance(obj, types.BuiltinFunctionType)
                else "a method" if isinstance(obj, types.MethodType)
                else f"a {type(obj).__name__} object")
    if getattr(obj, _MARK, False) is True or _returns_environment(obj):
        return None
    return "a function with neither mark"


def is_stream_job(obj: Any) -> bool:
    """True when ``obj`` is a stream job entry point (see the module doc)."""
    return why_not_stream_job(obj) is None


def check_syntax(entrypoint: str) -> tuple[str, str]:
    """``(module, function)`` of ``"package.module:function"``; ``ValidationError`` otherwise."""
    module_name, _, func_name = entrypoint.partition(":")
    if not module_name or not func_name or not all(
            p.isidentifier() for p in module_name.split(".") + [func_name]):
        raise ValidationError(f"entrypoint must look like 'package.module:function', got {entrypoint!r}")
    return module_name, func_name


def load_entrypoint(entrypoint: str) -> Callable[..., Any]:
    """Import the module of ``entrypoint`` and return the stream job it names, uncalled;
    ``ValidationError`` (naming it) if it is malformed, missing or not a stream job."""
    module_name, func_name = check_syntax(entrypoint)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValidationError(f"cannot load entrypoint {entrypoint!r}: {exc}") from exc
    namespace = vars(module)
    if func_name not in namespace:
        raise ValidationError(f"cannot load entrypoint {entrypoint!r}: module {module_name!r} "
                              f"has no attribute {func_name!r}")
    obj = namespace[func_name]
    reason = why_not_stream_job(obj)
    if reason is not None:
        raise ValidationError(f"entrypoint {entrypoint!r} is not a stream job ({reason}): {_HOW}")
    func: Callable[..., Any] = obj
    return func


__all__ = ["check_syntax", "is_stream_job", "load_entrypoint", "stream_job", "why_not_stream_job"]
