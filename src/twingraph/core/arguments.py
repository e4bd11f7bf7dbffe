"""A call's arguments as the memo key sees them: by name, whatever way they were spelled.

``f(3)``, ``f(x=3)`` and ``f(3, y=None)`` (``y`` defaulting to None) run the same computation,
so they must share one structural key. ``Parameters`` is what a component's signature says
about that (read once, when its spec is built); ``named`` turns one call's ``args, kwargs``
into the form that is digested: positional arguments moved under their parameter names, and
arguments that are the parameter's own default left out.

Positional-only parameters are left positional (a keyword of the same name is a ``**kwargs``
entry, another argument). An argument is left out only when it *is* the default object, or is a plain scalar of the same
type that compares equal to it: nothing is called that could be slow, have side effects or
raise (``==`` on arrays, on futures that would wait). Leaving defaults out rather than filling
them in keeps the keys of calls that omit them as they were, and never digests a default that
cannot be digested (a logger, a client).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})
_P = inspect.Parameter


@dataclass(frozen=True)
class Parameters:
    """``skip``: how many leading positional-only parameters there are (their arguments stay
    positional: a keyword of the same name would go to ``**kwargs``); ``positional``: the
    names the next positional arguments bind to, in order (those of ``*args`` stay
    positional); ``defaults``: the defaults of parameters that can be passed by name."""
    skip: int
    positional: tuple[str, ...]
    defaults: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, sig: inspect.Signature, *, skip_first: bool = False) -> Parameters | None:
        """From a signature (``skip_first``: the callable receives its instance first, as an
        unbound ``execute(self, ...)`` does). None if nothing can be normalized: the call's
        arguments are then digested as given."""
        params = list(sig.parameters.values())
        if skip_first and params and params[0].kind in (_P.POSITIONAL_ONLY,
                                                         _P.POSITIONAL_OR_KEYWORD):
            params = params[1:]
        skip = sum(1 for p in params if p.kind is _P.POSITIONAL_ONLY)
        positional = tuple(p.name for p in params if p.kind is _P.POSITIONAL_OR_KEYWORD)
        defaults = tuple((p.name, p.default) for p in params if p.default is not p.empty
                         and p.kind in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY))
        if not positional and not defaults:
            return None
        return cls(skip, positional, defaults)

    def named(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]
              ) -> tuple[tuple[Any, ...], Mapping[str, Any]]:
        """``args, kwargs`` with the positional arguments that have a name moved into the
        keywords and default-valued arguments left out. ``TypeError`` for a call that binds
        one name twice (it would fail when it runs; its key must not be a valid call's)."""
        skip = self.skip
        if len(args) > skip:
            n = min(len(args) - skip, len(self.positional))
            names = self.positional[:n]
            for name in names:
                if name in kwargs:
                    raise TypeError(f"got multiple values for argument {name!r}")
            merged = dict(zip(names, args[skip:skip + n]))
            merged.update(kwargs)
            args, kwargs = args[:skip] + args[skip + n:], merged
        if self.defaults and kwargs:
            out: dict[str, Any] | None = None
            for name, default in self.defaults:
                if name in kwargs and _is_default(kwargs[name], default):
                    if out is None:
                        out = dict(kwargs)
                    del out[name]
            if out is not None:
                kwargs = out
        return args, kwargs


def parameters_of(fn: Any, *, skip_first: bool = False) -> Parameters | None:
    """How ``fn``'s calls are named in memo keys (None if its signature cannot be read).
    ``fn``'s own signature, not the one of a function it wraps (``functools.wraps`` sets
    ``__wrapped__``): a wrapper that sets a default of its own (``kw.setdefault("k", 10)``)
    called ``f(1)`` and ``f(1, k=2)`` one computation when the wrapped ``k`` defaulted to 2.
    A wrapper taking ``*args, **kwargs`` names nothing: its calls are keyed as made."""
    try:
        return Parameters.of(inspect.signature(fn, follow_wrapped=False), skip_first=skip_first)
    except (TypeError, ValueError):
        return None


def _is_default(value: Any, default: Any) -> bool:
    if value is default:
        return True
    t = type(value)
    return t is type(default) and t in _PLAIN and value == default and \
        (t is not float or str(value) == str(default))          # -0.0 is not 0.0 here
