"""How a component call's arguments are treated, shared by the DSL and the run loop.

``parent_hash`` / ``parent_hashes`` draw lineage (and ordering) and reach the function only if
it declares them (or ``**kwargs``); then they are inputs like any other, in its memo key (a
function reporting its provenance returned a stale parent hash from a hit). Otherwise they
stay out of the key.
"""

from __future__ import annotations

import inspect
from typing import Any

LINEAGE_KWARGS = ("parent_hash", "parent_hashes")

_accepts: dict[Any, bool] = {}


def accepts_lineage(fn: Any) -> bool:
    """Whether ``fn`` takes ``parent_hash``/``parent_hashes`` (cached per callable)."""
    ok = _accepts.get(fn)
    if ok is None:
        try:
            params = inspect.signature(fn).parameters
            ok = any(p.kind is p.VAR_KEYWORD for p in params.values()) or \
                any(k in params for k in LINEAGE_KWARGS)
        except (TypeError, ValueError):
            ok = False
        _accepts[fn] = ok
    return ok


def receives_lineage(fn: Any) -> bool:
    """Whether the code a task calls through ``fn`` is given the lineage arguments: ``fn``'s
    own signature, or for a ``BaseComponent`` task (its bound ``_task``, marked
    ``lineage_via_execute``) its ``execute``'s. (Any bound method whose class had an
    ``execute`` was taken for one.)"""
    if getattr(fn, "lineage_via_execute", False):
        return accepts_lineage(type(fn.__self__).execute)
    return accepts_lineage(fn)


def strip_lineage(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` without the lineage arguments (the same dict if it has none)."""
    if "parent_hash" in kwargs or "parent_hashes" in kwargs:
        return {k: v for k, v in kwargs.items() if k not in LINEAGE_KWARGS}
    return kwargs
