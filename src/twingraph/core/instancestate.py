"""The state of an instance as a memo key sees it (decision 0005, session 14 addendum): two
instances of one class that differ in an attribute set from an argument (``Threshold(cut=0.5)``,
``Scaler(3)``) compute different things, so their keys must differ."""

from __future__ import annotations

import enum
from pathlib import PurePath
from collections.abc import Callable
from typing import Any

from twingraph.core.hashing import canonical_json, digest_apart, digest_json, sha256_hex

_PLAIN = frozenset({int, float, str, bool, type(None)})
_STATE_ITEMS = 10_000          # an attribute holding more items than this counts by type only
_STATE_DEPTH = 32
_UNSET = object()


def attributes(obj: Any) -> dict[str, Any] | None:
    """An instance's attributes: its ``__dict__`` (a copy: another thread may add to it) and
    the slots its classes declare (a ``@dataclass(slots=True)`` keeps its fields there, not in
    ``__dict__``; two instances that differ only there got one key). None if it has neither."""
    try:        # not through a ``__getattr__`` of the object's own (a lazy client's may raise)
        state = object.__getattribute__(obj, "__dict__")
    except Exception:  # noqa: BLE001 - no __dict__ (slots only), or a proxy that refuses
        state = None
    out = dict(state) if isinstance(state, dict) else None
    for cls in type(obj).__mro__:
        names = cls.__dict__.get("__slots__", ())
        for name in (names,) if isinstance(names, str) else names:
            if not isinstance(name, str) or name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{cls.__name__.lstrip('_')}{name}"        # private: name-mangled
            try:
                value = object.__getattribute__(obj, name)
            except Exception:  # noqa: BLE001 - an unset slot, or a descriptor that raises
                value = _UNSET
            if value is not _UNSET:
                if out is None:
                    out = {}
                out.setdefault(name, value)
    return out


def instance_state(obj: Any, skip: frozenset[str] = frozenset(),
                   leaf_hash: Callable[[Any], str] | None = None) -> dict[str, Any]:
    """The attributes of an instance (a class component, an operation that is a callable
    instance or a bound method) other than those in ``skip``, as its key sees them:
    plain data by value (numbers, strings, bytes, enum members, paths, and lists, tuples,
    sets and str-keyed dicts of them, up to ``_STATE_ITEMS`` items and ``_STATE_DEPTH``
    levels each), anything else by its type's name (a client, a model: what it holds is not
    seen, as for module globals in ``core.codeversion``). With ``leaf_hash`` (the engine's
    content hash of a leaf value), an attribute that is not all plain data (a NumPy array, a
    dataclass, a list of 20,000 floats) is keyed by its digest instead, walked as arguments
    are (``digest_value``: sets in sorted order, user objects by class and state): by its
    type alone, two instances holding different weights shared one key. Only what cannot be
    hashed (a client holding a socket) stays by type. Read once per instance, when its spec is built
    (``BaseComponent.spec``, ``DynamicScheduler``'s plan). Its attributes are its
    ``__dict__`` and its slots (``attributes``)."""
    out: dict[str, Any] = {}
    for k, v in (attributes(obj) or {}).items():
        if k in skip:
            continue
        lossy = [False]
        for _ in range(3):
            try:
                out[k] = _plain(v, [_STATE_ITEMS], set(), 0, lossy)
                break
            except RuntimeError:                  # changed while read (another thread)
                continue
        else:
            out[k], lossy[0] = _by_type(v), True
        if lossy[0] and leaf_hash is not None:
            try:       # walked as an argument is (sets sorted, objects by class and state)
                digest = digest_apart(v, None, _no_reference, leaf_hash)
                out[k] = {"hash": sha256_hex(digest_json(digest))}
            except RecursionError:
                # too deep to walk: by its pickle (its form cut at ``_STATE_DEPTH`` gave
                # two instances whose attributes differ deep down one key)
                try:
                    out[k] = {"pickle": leaf_hash(v)}
                except Exception:  # noqa: BLE001 - it does not pickle either: by type
                    pass
            except Exception:  # noqa: BLE001 - e.g. a client that does not pickle: by type
                pass
    return out


def _no_reference(value: Any) -> Any:
    raise TypeError("an instance's attributes hold no futures")


def _by_type(value: Any) -> dict[str, str]:
    t = type(value)
    return {"type": f"{t.__module__}.{t.__qualname__}"}


def _plain(value: Any, budget: list[int], path: set[int], depth: int,
           lossy: list[bool]) -> Any:
    """``value`` as JSON for the key, or its type if it is not plain data, too large, too
    deep or cyclic (then ``lossy[0]`` is set). ``budget``: items left for this attribute;
    ``path``: the containers being walked (a cycle counts by type)."""
    budget[0] -= 1
    if budget[0] < 0 or depth > _STATE_DEPTH:
        lossy[0] = True
        return _by_type(value)
    t = type(value)
    if t in _PLAIN:
        if t is float:
            return {"float": repr(value)}
        if t is int and value.bit_length() > 4096:       # beyond str()'s digit limit
            return {"int": sha256_hex(hex(value).encode())}
        return value
    if t is bytes or t is bytearray:       # told apart, as in argument digests
        return {"bytes" if t is bytes else "bytearray": sha256_hex(bytes(value))}
    if issubclass(t, enum.Enum):         # (``type`` only: a lazy proxy is not forced)
        # its name alone: ``FAST = 2`` edited to 3 kept the key. Lossy, so a caller with a
        # ``leaf_hash`` keys it as an argument is keyed (its value and its class's code).
        lossy[0] = True
        return {"enum": f"{t.__module__}.{t.__qualname__}.{value.name}"}
    if issubclass(t, PurePath):
        return {"path": f"{t.__name__}:{value}"}
    if t is list or t is tuple or t is set or t is frozenset or t is dict:
        if id(value) in path:
            lossy[0] = True
            return _by_type(value)
        path.add(id(value))
        try:
            if t is dict:
                if not all(type(k) is str for k in value):
                    lossy[0] = True
                    return _by_type(value)
                # in order (code that iterates it sees its order; as JSON, sorted keys made
                # {"a": 1, "b": 2} and {"b": 2, "a": 1} one key)
                pairs: list[Any] = []
                for k, v in value.items():
                    pairs.append([k, _plain(v, budget, path, depth + 1, lossy)])
                    if budget[0] < 0:
                        return _by_type(value)
                return {"dict": pairs}
            seq = []
            for v in value:
                seq.append(_plain(v, budget, path, depth + 1, lossy))
                if budget[0] < 0:
                    return _by_type(value)
            if t is list:
                return seq
            if t is tuple:
                return {"tuple": seq}
            return {"set" if t is set else "frozenset":        # in no order: sorted
                    sorted(seq, key=canonical_json)}
        finally:
            path.discard(id(value))
    lossy[0] = True
    return _by_type(value)
