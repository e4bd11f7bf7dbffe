"""What a component's function holds, keyed (decision 0091).

A code version (``core.codeversion``) sees plain data by value and code by its version, and
any other object a function holds by its type. What a function holds in its closure cells and
defaults, or a bound method in its object, can change its results all the same
(``make_scorer(np.array(...))``, ``component(Scaler(k=2).apply)``). This module keys that part:
NumPy arrays and scalars by content (a memory map by its file), the plain attributes of the
user's objects by value; nothing else is pickled (a lazy proxy would be forced, a client keyed
apart in every process). Each digest is taken once per function or object.
"""

from __future__ import annotations

import functools
import mmap
import os
import threading
import weakref
from collections.abc import Iterable
from types import FunctionType, MethodType
from typing import Any

from twingraph.core.codeversion import is_user_class
from twingraph.core.hashing import canonical_json, sha256_hex
from twingraph.core.instancestate import attributes, instance_state

_HOLDING = threading.local()
#: ``_held_digest`` per function object, taken once (a function given to 10,000 tasks, or one
#: whose closure loads a model lazily as tasks run: its keys drifted between tasks).
_HELD_DIGESTS: weakref.WeakKeyDictionary[FunctionType, str] = weakref.WeakKeyDictionary()
#: ... and per object (a bound method's), by identity: a ``WeakKeyDictionary`` asked the
#: object's own ``__eq__`` and ``__hash__`` (one comparing arrays raised; two equal by name
#: shared a digest). id -> (a weak reference to it, its digest).
_HELD_OBJECTS: dict[int, tuple[Any, str]] = {}
_HELD_GONE: list[tuple[int, Any]] = []
_HELD_LOCK = threading.Lock()
#: Items of a container held by a function looked through for arrays, how deep, and how many
#: values at most for one function or object.
HELD_ITEMS, HELD_DEPTH, HELD_VISITS = 1000, 3, 10_000
_SCALARS = frozenset({int, float, str, bool, type(None), bytes, complex})


def _held_digest(fn: FunctionType) -> str:
    """What a function holds in its closure cells and defaults that its code version sees by
    type only (``_held_parts``): two closures of one factory over different arrays
    (``make_scorer(w)``) given as arguments had one key, one result served for both in one
    run. "" when it holds none of that. Taken once per function object (``_HELD_DIGESTS``):
    what it holds changing in place later in the process is not seen (as for a version)."""
    with _HELD_LOCK:
        got = _HELD_DIGESTS.get(fn)
    if got is not None:
        return got
    busy = getattr(_HOLDING, "busy", None)
    if busy is None:
        busy = _HOLDING.busy = set()
    if id(fn) in busy:              # a closure that holds itself, or a cycle through others
        return ":again"
    busy.add(id(fn))
    try:
        parts: list[str] = []
        budget = [HELD_VISITS]
        for i, c in enumerate(fn.__closure__ or ()):
            try:
                v = c.cell_contents
            except ValueError:          # an empty cell
                continue
            _held_parts(v, f"c{i}", parts, 0, budget)
        for i, v in enumerate(fn.__defaults__ or ()):
            _held_parts(v, f"d{i}", parts, 0, budget)
        for k, v in sorted((fn.__kwdefaults__ or {}).items()):
            _held_parts(v, f"k{k}", parts, 0, budget)
        got = ":" + sha256_hex("\0".join(parts).encode()) if parts else ""
    finally:
        busy.discard(id(fn))
    with _HELD_LOCK:
        try:
            _HELD_DIGESTS[fn] = got
        except TypeError:             # (not weakly referable)
            pass
    return got


def _held_parts(v: Any, where: str, parts: list[str], depth: int, budget: list[int]) -> None:
    """The NumPy arrays and scalars in ``v`` (a closure cell, a default), in the lists, tuples
    and dicts it is (``HELD_DEPTH`` levels, ``HELD_ITEMS`` items each), in a function's own
    cells and defaults, a ``functools.partial``'s, a bound method's object, and the plain
    attributes of an object of the user's (by value, as a class component's: ``Scaler(2.0)``
    edited to ``Scaler(4.0)`` kept the key), each as ``where: digest``. Everything else is left
    to the code version (plain data by value, code by its version, other objects by their type
    or statement): hashing them meant pickling, which forces lazy proxies and keys clients and
    sessions apart in every process. Asked by ``type(v)`` only."""
    t = type(v)
    if t in _SCALARS:               # (most of what a big list holds: nothing to find)
        return
    budget[0] -= 1
    if budget[0] < 0:               # ``HELD_VISITS`` looked at: the rest by the version
        return
    try:
        if any(c.__module__ == "numpy" and c.__name__ in ("ndarray", "generic")
               for c in t.__mro__):
            if getattr(getattr(v, "dtype", None), "hasobject", False):
                return              # objects: pickled, a per-process key (by type, as before)
            parts.append(f"{where}:{_array_digest(v)}")
        elif depth >= HELD_DEPTH:
            return
        elif t is FunctionType:
            held = _held_digest(v)
            if held:
                parts.append(f"{where}:{held}")
        elif t is functools.partial:
            _held_parts(v.func, f"{where}.f", parts, depth + 1, budget)
            for i, x in enumerate(v.args[:HELD_ITEMS]):
                _held_parts(x, f"{where}.{i}", parts, depth + 1, budget)
            for k, x in list((v.keywords or {}).items())[:HELD_ITEMS]:
                _held_parts(x, f"{where}.{k!r}", parts, depth + 1, budget)
        elif t is list or t is tuple:
            for i, x in enumerate(v[:HELD_ITEMS]):
                _held_parts(x, f"{where}.{i}", parts, depth + 1, budget)
        elif t is dict:
            for k, x in list(v.items())[:HELD_ITEMS]:
                _held_parts(x, f"{where}.{k!r}", parts, depth + 1, budget)
        elif t is MethodType:
            _held_parts(v.__self__, f"{where}.self", parts, depth + 1, budget)
        elif is_user_class(t) and not issubclass(t, (type, BaseException)):
            # its plain attributes, and the arrays it holds (``m.predict`` over ``m.w``)
            state = instance_state(v)             # plain data by value, the rest by type
            if state:
                parts.append(f"{where}:" + sha256_hex(canonical_json(state)))
            for k, x in list((attributes(v) or {}).items())[:HELD_ITEMS]:
                _held_parts(x, f"{where}.{k}", parts, depth + 1, budget)
    except Exception:  # noqa: BLE001 - what does not hash: by its type (the version)
        return


def _array_digest(v: Any) -> str:
    """A held array's key: a memory-mapped one (``np.load(mmap_mode="r")``) by its file, where
    and how it maps it, and the file's size and modification time (hashed, a 1 GB file was read
    and copied whole); any other by its content, as an argument is."""
    # the array ``np.load``/``np.memmap`` made over the mapping itself, not a view of it (a
    # slice keeps the file's name and offset: ``MM[:5]`` and ``MM[5:]`` shared one key)
    filename = getattr(v, "filename", None) if type(v).__name__ == "memmap" and \
        type(getattr(v, "base", None)) is mmap.mmap else None
    if isinstance(filename, str):
        st = os.stat(filename)
        return sha256_hex(f"memmap\0{filename}\0{getattr(v, 'offset', 0)}\0{v.shape}\0"
                          f"{v.dtype.str}\0{v.strides}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    from twingraph.engine.engine import Engine     # (it keys held functions with these)
    return Engine.hash_value(v)


def held_state(fn: Any, met: Iterable[Any] = ()) -> str:
    """What a component's function holds that its code version sees by type only: the arrays
    of a closure's cells and defaults (``_held_digest``: ``make_scorer(np.array(...))`` edited
    kept the version); a bound method's object's (or a callable object's) attributes that are
    plain data, by value (``component(Scaler(k=2).apply)`` edited to ``k=3`` kept it), as a
    class component's are. "" when there is none."""
    others = "".join(_held_digest(f) for f in met if f is not fn)
    if others:            # what the functions it reads hold (``price = make(np.array(...))``)
        return _held_own(fn) + ":" + sha256_hex(others.encode())
    return _held_own(fn)


def _held_own(fn: Any) -> str:
    if type(fn) is FunctionType:
        return _held_digest(fn)
    owner = fn.__self__ if type(fn) is MethodType else fn
    if issubclass(type(owner), type):           # (``type`` only: a proxy is not asked)
        return ""
    key = id(owner)
    with _HELD_LOCK:           # once per object, as for a function (a model that loads its
        _drop_gone()                        # weights at its first call: its next version
        entry = _HELD_OBJECTS.get(key)
    if entry is not None and entry[0]() is owner:       # missed)
        return str(entry[1])
    parts: list[str] = []
    _held_parts(owner, "self", parts, 0, [HELD_VISITS])
    got = ":" + sha256_hex("\0".join(parts).encode()) if parts else ""
    try:
        ref = weakref.ref(owner, functools.partial(_forget_held, key))
    except TypeError:                 # not weakly referable: not kept
        return got
    with _HELD_LOCK:
        _HELD_OBJECTS[key] = (ref, got)
    return got


def _forget_held(key: int, ref: Any) -> None:
    """An object ``_HELD_OBJECTS`` kept a digest for is gone (its id may be another's next):
    noted only (a weak reference's callback may run inside any allocation, this module's lock
    held), and dropped at the next look (``_drop_gone``)."""
    _HELD_GONE.append((key, ref))


def _drop_gone() -> None:
    """(``_HELD_LOCK`` held.)"""
    while _HELD_GONE:
        key, ref = _HELD_GONE.pop()
        entry = _HELD_OBJECTS.get(key)
        if entry is not None and entry[0] is ref:
            del _HELD_OBJECTS[key]


def with_held_state(version: str, fn: Any, met: Iterable[Any] = ()) -> str:
    """``version`` with ``held_state(fn, met)`` folded in (unchanged when there is none)."""
    held = held_state(fn, met)
    return version if not held else sha256_hex(f"{version}{held}".encode())[:16]
