"""Named components and operations, for declarative pipelines and the documented
``register_component(name, ComponentClass)``; and named error handlers, for
``@pipeline(error_handler='custom', error_config={'handler': 'name', ...})``.

Every ``@component`` registers itself under its function name; ``register_component`` adds a
``BaseComponent`` subclass (or any callable) under a chosen name. A later registration of the
same name replaces the earlier one (reloading a module must work); ``get`` raises
``NotFoundError`` for an unknown name.
"""

from __future__ import annotations

import threading
from typing import Any

from twingraph.errors import NotFoundError, ValidationError

_lock = threading.Lock()
_components: dict[str, Any] = {}


def register_component(name: str, component: Any) -> Any:
    if not isinstance(name, str) or not name:
        raise ValidationError("component name must be a non-empty string")
    if not callable(component):
        raise ValidationError(f"{name}: a component must be callable or a BaseComponent class")
    with _lock:
        _components[name] = component
    return component


def get_component(name: str) -> Any:
    with _lock:
        try:
            return _components[name]
        except KeyError:
            raise NotFoundError(f"no component registered as {name!r}") from None


def registered_components() -> dict[str, Any]:
    with _lock:
        return dict(_components)


def unregister_component(name: str) -> bool:
    with _lock:
        return _components.pop(name, None) is not None


_error_handlers: dict[str, Any] = {}


def register_error_handler(name: str, handler: Any = None) -> Any:
    """Register ``handler(info)`` under ``name`` for ``error_config={'handler': name}``; ``info``
    has the run id, the node id and the error text. Usable as a decorator:
    ``@register_error_handler("error_notification")``."""
    if not isinstance(name, str) or not name:
        raise ValidationError("error handler name must be a non-empty string")

    def add(fn: Any) -> Any:
        if not callable(fn):
            raise ValidationError(f"error handler {name!r} must be callable")
        with _lock:
            _error_handlers[name] = fn
        return fn
    return add if handler is None else add(handler)


def get_error_handler(name: str) -> Any:
    """The handler registered as ``name``, or None."""
    with _lock:
        return _error_handlers.get(name)
