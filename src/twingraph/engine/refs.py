"""Futures for component calls inside a running pipeline.

Calling a component inside a pipeline returns a ``Ref`` at once. Indexing a Ref
(``r['outputs']['chunks']``) gives another Ref without waiting; passing a Ref (or containers of
them) to another component creates an edge. Anything that needs the concrete value — iteration,
``len``, comparison, arithmetic, ``str``, ``bool`` — waits for the task and works on its value.
Iterating yields Refs to the items, so ``for chunk in raw['outputs']['chunks']: f(data=chunk)``
keeps lineage item by item. ``ref.result()`` waits and returns the concrete value (raising the
task's error, if it failed).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import decimal
import enum
import fractions
import operator
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import PurePath
from typing import Any

from twingraph.errors import NodeExecutionError, ValidationError


class Ref:
    __slots__ = ("_run", "_task", "_path")

    def __init__(self, run: Any, task: Any, path: tuple[Any, ...] = ()) -> None:
        self._run, self._task, self._path = run, task, path

    # -- lazy navigation ---------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Ref:
        t = type(key)
        if t is Ref or t is tuple or t is slice:
            # a future as the key (or in a tuple key, a slice): its value is the key (it waits
            # for it, as touching a value does). Kept as a future in the path, it was keyed by
            # its printed name (a wrong hit when its value changed), drew no edge, and the
            # loop waited on it for ever when it read the path before the key's task had run.
            key = _concrete_key(key)
        return _ref(self._run, self._task, self._path + (key,))

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            value = self.result()
            return self[key] if key in value else default
        except TypeError:
            return default

    # -- waiting -----------------------------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        """Wait for the task and return the concrete value at this path."""
        return self._run.resolve_ref(self, timeout)

    value = result

    def done(self) -> bool:
        return self._task.state.terminal

    @property
    def node_id(self) -> str:
        return self._task.node_id

    @property
    def path(self) -> tuple[Any, ...]:
        return self._path

    def __iter__(self) -> Any:
        value = self.result()
        if isinstance(value, (list, tuple)):     # items as futures, each its own input
            return _items(self._run, self._task, self._path, len(value))
        return iter(list(value))                  # a dict's keys, a set's items, ...

    def __len__(self) -> int:
        return len(self.result())

    def __contains__(self, item: Any) -> bool:
        return item in self.result()

    def __bool__(self) -> bool:
        return bool(self.result())

    def __str__(self) -> str:
        return str(self.result())

    def __repr__(self) -> str:
        path = "".join(f"[{p!r}]" for p in self._path)
        return f"<Ref {self._task.node_id}{path} {self._task.state.value}>"

    def __fspath__(self) -> Any:
        # ``Path(r)``, ``open(r)``, ``os.path.basename(r)`` of a result that is a path wait
        # for it, as ``str(r)`` does (they raised "expected str ... not Ref")
        return os.fspath(self.result())

    def __format__(self, spec: str) -> str:
        return format(self.result(), spec)

    def __int__(self) -> int:
        return int(self.result())

    def __float__(self) -> float:
        return float(self.result())

    def __index__(self) -> int:
        return self.result().__index__()

    def __hash__(self) -> int:
        # As ``==`` compares values, so does the hash (``c in {1, 2, 3}``, ``d.get(c)``).
        return hash(self.result())

    def __eq__(self, other: Any) -> bool:
        return self.result() == _concrete(other)

    def __ne__(self, other: Any) -> bool:
        return self.result() != _concrete(other)

    def __lt__(self, other: Any) -> bool:
        return self.result() < _concrete(other)

    def __le__(self, other: Any) -> bool:
        return self.result() <= _concrete(other)

    def __gt__(self, other: Any) -> bool:
        return self.result() > _concrete(other)

    def __ge__(self, other: Any) -> bool:
        return self.result() >= _concrete(other)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.result(), name)

    def __reduce__(self) -> Any:
        raise TypeError(
            "a component's future cannot be pickled: pass futures to components directly or "
            "inside lists, tuples (named tuples too), sets, dicts or dataclasses, not inside "
            "other objects (an OrderedDict, a defaultdict, a deque are other objects: make "
            "it a dict or a list); or call .result() first")


def _concrete(v: Any) -> Any:
    return v.result() if type(v) is Ref else v


def _concrete_key(key: Any) -> Any:
    """``key`` with the futures in it (itself, a tuple's items, a slice's bounds) waited for."""
    t = type(key)
    if t is Ref:
        return key.result()
    if t is tuple:
        return tuple(_concrete_key(k) for k in key) if any(
            type(k) is Ref or type(k) is tuple or type(k) is slice for k in key) else key
    if t is slice:
        return slice(_concrete(key.start), _concrete(key.stop), _concrete(key.step))
    return key


def _binop(fn: Callable[[Any, Any], Any], name: str, reflected: bool) -> Any:
    # Through the operator, not the value's own method: ``int.__add__(1.5)`` is
    # NotImplemented, and ``str`` has no ``__radd__``; the operator tries both sides.
    def op(self: Ref, other: Any) -> Any:
        mine, theirs = self.result(), _concrete(other)
        return fn(theirs, mine) if reflected else fn(mine, theirs)
    op.__name__ = name
    return op


for _n, _fn in (("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                ("truediv", operator.truediv), ("floordiv", operator.floordiv),
                ("mod", operator.mod), ("pow", operator.pow), ("and", operator.and_),
                ("or", operator.or_), ("xor", operator.xor), ("matmul", operator.matmul),
                ("lshift", operator.lshift), ("rshift", operator.rshift), ("divmod", divmod)):
    setattr(Ref, f"__{_n}__", _binop(_fn, f"__{_n}__", False))
    setattr(Ref, f"__r{_n}__", _binop(_fn, f"__r{_n}__", True))
setattr(Ref, "__neg__", lambda self: -self.result())
setattr(Ref, "__pos__", lambda self: +self.result())
setattr(Ref, "__abs__", lambda self: abs(self.result()))
setattr(Ref, "__invert__", lambda self: ~self.result())
setattr(Ref, "__round__", lambda self, ndigits=None: round(self.result(), ndigits))


def find_refs(value: Any, out: list[Ref]) -> None:
    """Collect the Refs inside ``value`` (lists, tuples and named tuples, dicts, their keys
    too, sets, dataclass instances)."""
    t = type(value)
    if t is Ref:
        out.append(value)
    elif t is list or t is tuple or t is set or t is frozenset:
        for v in value:
            if type(v) is Ref or type(v) in _CONTAINERS or isinstance(v, tuple) \
                    or _is_instance_of_dataclass(v):
                find_refs(v, out)
    elif t is dict:
        for k, v in value.items():
            if type(k) is Ref or isinstance(k, tuple):
                find_refs(k, out)
            if type(v) is Ref or type(v) in _CONTAINERS or isinstance(v, tuple) \
                    or _is_instance_of_dataclass(v):
                find_refs(v, out)
    elif isinstance(value, tuple):          # a named tuple
        for v in value:
            find_refs(v, out)
    elif _is_instance_of_dataclass(value):
        for f in dataclasses.fields(value):
            find_refs(getattr(value, f.name, None), out)


def find_refs_once(value: Any, out: list[Ref]) -> None:
    """``find_refs`` for a value that holds itself (a list appended to itself, a dict that
    is its own value): each container is walked once. ``find_refs`` recurses without
    remembering where it has been (it is on every call's path), and such a value made it
    raise ``RecursionError``; the caller tries this one then. A value that holds itself and
    futures is refused: putting the futures' values in its place (``substitute``) would
    have to rebuild the cycle. (A container met again on another branch is shared, not a
    cycle: only one met again inside itself is.)"""
    found = len(out)
    on_path: set[int] = set()
    done: set[int] = set()
    cyclic = False
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        v, leaving = stack.pop()
        if leaving:
            on_path.discard(id(v))
            done.add(id(v))
            continue
        t = type(v)
        if t is Ref:
            out.append(v)
            continue
        if not (t in _CONTAINERS or isinstance(v, tuple) or _is_instance_of_dataclass(v)):
            continue
        if id(v) in on_path:
            cyclic = True
            continue
        if id(v) in done:
            continue
        on_path.add(id(v))
        stack.append((v, True))
        if t is dict:
            items: list[Any] = []
            for k, x in v.items():
                items.append(k)
                items.append(x)
        elif t in _CONTAINERS or isinstance(v, tuple):
            items = list(v)
        else:
            items = [getattr(v, f.name, None) for f in dataclasses.fields(v)]
        stack.extend((x, False) for x in reversed(items))
    if cyclic and len(out) > found:
        raise ValidationError("an argument that holds itself (a list or dict that contains "
                              "itself) cannot also hold futures of other calls: pass the "
                              "futures apart from it")


def _is_instance_of_dataclass(value: Any) -> bool:
    return hasattr(type(value), "__dataclass_fields__") and not isinstance(value, type)


_CONTAINERS = frozenset({list, tuple, dict, set, frozenset})
_new = object.__new__


def _ref(run: Any, task: Any, path: tuple[Any, ...]) -> Ref:
    """``Ref(run, task, path)`` without the ``__init__`` call: a pipeline body makes a few per
    component call (its future, ``r['outputs']['result']``, iterating a future)."""
    ref = _new(Ref)
    ref._run, ref._task, ref._path = run, task, path
    return ref


def ref_to(run: Any, task: Any) -> Ref:
    """The future of a component call: ``Ref(run, task)``."""
    return _ref(run, task, ())


def _items(run: Any, task: Any, path: tuple[Any, ...], n: int) -> Iterator[Ref]:
    """References to items ``0..n-1`` below ``path`` (iterating a Ref)."""
    for i in range(n):
        yield _ref(run, task, path + (i,))


#: The containers a component call's arguments are taken apart to (``snapshot``).
_SNAP = frozenset({list, dict, set, frozenset, tuple})
#: Leaves that hold no reference to a container (so a rebuilt container cannot split what
#: they share with it): a call with any other leaf is passed as it is.
_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes, range,
                    datetime.date, datetime.datetime, datetime.time, datetime.timedelta,
                    decimal.Decimal, fractions.Fraction, uuid.UUID, Ref})
_is_plain = _PLAIN.__contains__
#: Items a call's containers may hold in all to be rebuilt (``snapshot``); larger arguments
#: are passed as they are. Each task holds its own copy until it runs: a 200,000-item list
#: passed to 100 calls (``pick(data, i)``) tripled the run's memory, and a 10M-item one
#: passed to a thousand would have copied it a thousand times.
SNAPSHOT_MAX = 10_000


class _AsIs(Exception):
    """The call's arguments are passed as they are: a leaf ``snapshot`` cannot see into, or
    more than ``SNAPSHOT_MAX`` items."""


def snapshot(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A component call's arguments as they are when the body makes the call: its lists,
    dicts, sets and tuples rebuilt (at any depth; one shared or cyclic container stays one).
    The task is keyed and run later, on other threads: a body that went on to change a dict
    it passed (``cfg['lr'] = lr`` in a loop) gave every call its last value, and the key of
    the first; two calls given one list shared each other's changes.

    Only when every leaf is a plain value (numbers, strings, dates, a NumPy array without
    objects in it, a future...): a leaf of another kind (a deque, an object of the user's)
    may hold one of the containers, which a copy would split from it, so such a call's
    arguments are passed as they are, as before. So are those holding more than
    ``SNAPSHOT_MAX`` items in all, and those nested too deep to copy here
    (``RecursionError``)."""
    for v in args:
        if type(v) in _SNAP:
            break
    else:
        for v in kwargs.values():
            if type(v) in _SNAP:
                break
        else:
            return args, kwargs
    memo: dict[int, Any] = {}
    budget = [SNAPSHOT_MAX]
    try:
        return (tuple([_snap(v, memo, budget) for v in args]),
                {k: _snap(v, memo, budget) for k, v in kwargs.items()})
    except (_AsIs, RecursionError):
        return args, kwargs


def _plain_other(v: Any) -> bool:
    """A plain leaf of a type not in ``_PLAIN``: a NumPy array or scalar without objects, an
    enum member, a path."""
    t = type(v)
    if t.__module__ == "numpy":
        dtype = getattr(v, "dtype", None)     # an array, or a scalar: no objects in it
        return dtype is not None and not dtype.hasobject
    return issubclass(t, (enum.Enum, PurePath))


def _snap(v: Any, memo: dict[int, Any], budget: list[int]) -> Any:
    t = type(v)
    if t not in _SNAP:
        if t in _PLAIN or _plain_other(v):
            return v
        raise _AsIs
    done = memo.get(id(v))
    if done is not None:
        return done
    budget[0] -= len(v)
    if budget[0] < 0:
        raise _AsIs
    if t is list:
        new: Any
        if all(map(_is_plain, map(type, v))):       # flat: copied at C speed
            new = memo[id(v)] = v.copy()
            return new
        new = []
        memo[id(v)] = new
        new.extend([_snap(x, memo, budget) for x in v])
    elif t is dict:
        if all(map(_is_plain, map(type, v.values()))) and all(map(_is_plain, map(type, v))):
            new = memo[id(v)] = v.copy()
            return new
        new = {}
        memo[id(v)] = new
        for k, x in v.items():
            if type(k) not in _PLAIN and not _plain_other(k):
                _snap(k, memo, budget)                      # (a tuple key: kept, but looked into)
            new[k] = _snap(x, memo, budget)
    elif t is set or t is frozenset:        # items are hashable: kept as they are, looked into
        if not all(map(_is_plain, map(type, v))):
            for x in v:
                _snap(x, memo, budget)
        new = memo[id(v)] = set(v) if t is set else v
    else:                                   # a tuple: a new one only if an item changed
        items = [_snap(x, memo, budget) for x in v]
        new = v if all(a is b for a, b in zip(items, v)) else tuple(items)
        memo[id(v)] = new
    return new


def substitute(value: Any, fetch: Any) -> Any:
    """Replace every Ref in ``value`` by ``fetch(ref)``; containers are rebuilt, leaves kept."""
    t = type(value)
    if t is Ref:
        return fetch(value)
    walk = _WALK
    if t is list:
        return [substitute(v, fetch) if type(v) in walk or isinstance(v, tuple)
                or _is_instance_of_dataclass(v) else v for v in value]
    if t is dict:
        return {substitute(k, fetch) if type(k) is Ref or isinstance(k, tuple) else k:
                substitute(v, fetch) if type(v) in walk or isinstance(v, tuple)
                or _is_instance_of_dataclass(v) else v
                for k, v in value.items()}
    if t is tuple:
        return tuple([substitute(v, fetch) if type(v) in walk or isinstance(v, tuple)
                      or _is_instance_of_dataclass(v) else v for v in value])
    if t is set or t is frozenset:
        return t(substitute(v, fetch) for v in value)
    if isinstance(value, tuple) and hasattr(t, "_fields"):      # a named tuple
        return t(*[substitute(v, fetch) for v in value])
    if _is_instance_of_dataclass(value):
        found: list[Ref] = []
        find_refs(value, found)
        if found:           # a copy with its fields' futures replaced (frozen ones too)
            new = copy.copy(value)
            for f in dataclasses.fields(value):
                object.__setattr__(new, f.name, substitute(getattr(value, f.name), fetch))
            return new
    return value


_WALK = frozenset({Ref, list, tuple, dict, set, frozenset})


def walk_path(producer: str, value: Any, path: tuple[Any, ...], start: int, what: str = "",
              *, same_kind: bool = False) -> Any:
    """``value[path[start]][path[start + 1]]...``: what a reference reads from task
    ``producer``'s result. A step that is not there names the producer and the path (a bare
    ``KeyError: 'nope'`` read as the consumer's own error; in the body, ``r["output"]`` for
    ``r["outputs"]`` failed the run with ``KeyError: 'output'`` and no word of where): a
    ``NodeExecutionError``, or with ``same_kind`` (the body's ``.result()``, whose ``except
    KeyError`` must still catch it) an error of the step's own type with that message."""
    for i in range(start, len(path)):
        try:
            value = value[path[i]]
        except (LookupError, TypeError) as exc:
            where = "".join(f"[{p!r}]" for p in path[:i + 1])
            keys = ""
            if isinstance(value, dict) and isinstance(exc, KeyError):
                keys = " (it is empty)" if not value else \
                    f" (it has {', '.join(repr(k) for k in list(value)[:10])}" + \
                    (", ...)" if len(value) > 10 else ")")
            said = f"{what}{producer}{where} is not there: {type(exc).__name__}: {exc}{keys}"
            if same_kind:
                try:
                    err = type(exc)(said)
                except Exception:  # noqa: BLE001 - a class that takes other arguments
                    raise exc from None
                raise err from None
            raise NodeExecutionError(said, error_type=type(exc).__name__) from exc
    return value


def path_list(path: tuple[Any, ...]) -> Sequence[Any]:
    """The output path an edge carries, e.g. ['outputs', 'chunks', 3] (JSON-able: the tuple
    itself when it holds only str and int, which JSON writes as that list)."""
    if _PLAIN_PATH.issuperset(map(type, path)):
        return path
    return [p if type(p) is str or type(p) is int else repr(p) for p in path]


_PLAIN_PATH = frozenset({str, int})
