"""Code version of a component: a hash of its source and of the user code it calls.

"User code" is any plain function (or component) reachable through the global names the function
uses, defined in a module outside the standard library and site-packages. Library code is not
hashed (its version is the environment's business). An explicit ``version=`` replaces all this.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import sysconfig
import types
from typing import Any

_LIB_PREFIXES = tuple({p for p in (sysconfig.get_paths().get("stdlib"),
                                   sysconfig.get_paths().get("purelib"),
                                   sysconfig.get_paths().get("platlib")) if p})


def _is_user_function(obj: Any) -> bool:
    if not isinstance(obj, types.FunctionType):
        return False
    mod = sys.modules.get(obj.__module__ or "")
    path = getattr(mod, "__file__", None) or obj.__code__.co_filename
    if obj.__module__ and obj.__module__.startswith("twingraph."):
        return False
    return not (path and path.startswith(_LIB_PREFIXES))


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _own_text(fn: types.FunctionType) -> bytes:
    try:
        return inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = fn.__code__
        return code.co_code + repr(code.co_consts).encode() + repr(code.co_names).encode()


def code_version(fn: Any) -> str:
    """sha256 (16 hex chars) over the function's source and the user functions it reaches."""
    target = inspect.unwrap(fn)
    h = hashlib.sha256()
    stack: list[Any] = []
    if isinstance(target, type):
        # A class (BaseComponent subclass): its source plus every function defined in it.
        try:
            h.update(inspect.getsource(target).encode())
        except (OSError, TypeError):
            h.update(target.__qualname__.encode())
        for base in target.__mro__:
            if base.__module__.startswith("twingraph.") or base is object:
                continue
            stack.extend(v for v in vars(base).values() if isinstance(v, types.FunctionType))
    else:
        if not isinstance(target, types.FunctionType):
            target = getattr(target, "__call__", target)
            target = getattr(target, "__func__", target)
        stack.append(target)
    seen: set[int] = set()
    while stack:
        f = stack.pop()
        if id(f) in seen or not isinstance(f, types.FunctionType):
            continue
        seen.add(id(f))
        h.update(f.__qualname__.encode() + b"\0" + _own_text(f) + b"\0")
        for name in sorted(_code_names(f.__code__)):
            g = f.__globals__.get(name)
            g = getattr(g, "__wrapped__", g)   # components keep their function in __wrapped__
            if _is_user_function(g):
                stack.append(g)
    return h.hexdigest()[:16]
