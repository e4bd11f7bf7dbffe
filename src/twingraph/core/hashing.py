"""Structural keys: what makes a task's result reusable.

A task's key is sha256 over (component identity, code version, canonical config, input digests).
An input digest is the content hash of the value — for a value produced by another task, the
producer's result content hash plus the path taken into it (``['outputs']['chunks'][3]``), so keys
form a Merkle DAG over *content*, not over upstream keys: if an upstream change produces the same
bytes, downstream tasks still hit (early cut-off).
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import hashlib
import itertools
import json
import struct
import threading
import types
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import PurePath
from typing import Any

_JSON_SCALARS = (str, int, float, bool, type(None))


def _no_default(o: Any) -> Any:
    raise TypeError(f"not JSON: {type(o).__name__}")


# json.dumps with non-default options builds a new encoder per call (~5 µs); structural keys
# are computed per task, so the C encoder is built once here (same output as json.dumps with
# sort_keys, compact separators, ensure_ascii=False, allow_nan=False).
_c_make = getattr(json.encoder, "c_make_encoder", None)
_C_CANONICAL = (_c_make(None, _no_default, json.encoder.encode_basestring, None, ":", ",",
                        True, False, False) if _c_make is not None else None)


try:
    import orjson as _orjson
    _DIGEST_OPTS = (_orjson.OPT_SORT_KEYS | _orjson.OPT_PASSTHROUGH_SUBCLASS
                    | _orjson.OPT_PASSTHROUGH_DATACLASS | _orjson.OPT_PASSTHROUGH_DATETIME)
    _orjson_dumps: Callable[..., bytes] | None = _orjson.dumps
except ImportError:      # pragma: no cover - a dependency; canonical_json gives the same bytes
    _orjson_dumps = None


def digest_json(digest: Any) -> bytes:
    """``canonical_json`` of an input digest (``digest_value``'s output: str, int, bool, None,
    lists and dicts with str keys — never floats), byte for byte, ~6x faster through orjson.
    What orjson refuses (ints beyond 64 bits, lone surrogates, subclasses) takes the
    canonical_json path, so the bytes — and every memo key — are the same either way."""
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(digest, option=_DIGEST_OPTS)
        except TypeError:
            pass
    return canonical_json(digest)


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8. Raises TypeError for non-JSON.
    A lone surrogate (a file name ``os.listdir`` decoded with ``surrogateescape``) is encoded
    as itself (``surrogatepass``): it failed every task given such a string; any other text
    gives the same bytes as before."""
    try:
        return _canonical(obj)
    except ValueError as exc:
        # An int beyond Python's str-digits limit (4,300 digits): it failed the task while it
        # was keyed. Written in hex, told from a number (only such ints: others as before).
        if "integer string conversion" not in str(exc):
            raise
        return _canonical(_huge_ints(obj))


def _canonical(obj: Any) -> bytes:
    if _C_CANONICAL is not None:
        return "".join(_C_CANONICAL(obj, 0)).encode("utf-8", "surrogatepass")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8", "surrogatepass")


def _huge(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 14_000


def _huge_ints(obj: Any) -> Any:
    if _huge(obj):
        return {"int": hex(obj)}
    if isinstance(obj, (list, tuple)):
        return [_huge_ints(v) for v in obj]
    if isinstance(obj, dict):
        return {f"int:{hex(k)}" if _huge(k) else k: _huge_ints(v) for k, v in obj.items()}
    return obj


# SHA-256 of a few dozen bytes (a task's small result) costs ~0.9 µs through OpenSSL, whose
# per-call setup dominates, and ~0.5 µs through CPython's own implementation, which is slower
# per byte (equal at ~150 bytes, 5x slower at 4 KiB). Same digests: both are SHA-256.
try:
    from _sha256 import sha256 as _builtin_sha256   # CPython 3.11
except ImportError:  # pragma: no cover - CPython 3.12+ names it _sha2; other VMs: OpenSSL only
    try:
        from _sha2 import sha256 as _builtin_sha256  # type: ignore[no-redef]
    except ImportError:
        _builtin_sha256 = hashlib.sha256  # type: ignore[assignment]
SMALL_HASH = 128


def sha256_hex(data: bytes) -> str:
    """``hashlib.sha256(data).hexdigest()``, through the faster implementation for its size."""
    if len(data) < SMALL_HASH:
        return _builtin_sha256(data).hexdigest()
    return hashlib.sha256(data).hexdigest()


def key_prefix(component: str, code_version: str, config: Mapping[str, Any],
               leaf_hash: Callable[[Any], str] | None = None) -> bytes:
    """The part of a structural key fixed by the component's definition (computed once)."""
    return canonical_json([component, code_version, config_digest(config, leaf_hash)]) + b"\0"


def config_digest(config: Mapping[str, Any],
                  leaf_hash: Callable[[Any], str] | None = None) -> Any:
    """A component's config as its key reads it: the config itself when it is plain JSON data
    (``_plain_json``: str-keyed dicts, lists, str, int, float, bool, None, which JSON gives
    back as they were); else its ``digest_value`` by sorted key, values hashed by content with
    ``leaf_hash`` (a NumPy array's ``repr`` elides its middle, a set's order follows the hash
    seed, an object's names its address), tuples told from lists and int keys from str keys
    as in arguments. Without ``leaf_hash``, the ``repr`` of its sorted items.

    A config JSON can encode but not give back (``{0: "cat"}`` comes back ``{"0": "cat"}``,
    ``(2, 3)`` as ``[2, 3]``) used to be keyed by what came back: ``Labeler({"labels": {0:
    "cat"}})`` and ``Labeler({"labels": {"0": "cat"}})`` shared one key in one run."""
    if _plain_json(config, 0):
        try:
            return json.loads(canonical_json(config))
        except (TypeError, ValueError):      # NaN, infinity, a lone surrogate
            pass
    if leaf_hash is None:
        return repr(sorted(config.items()))
    items = sorted(config.items(), key=lambda kv: repr(kv[0]))
    if all(type(k) is str for k, _ in items):
        value: Any = dict(items)
    else:
        value = [[digest_apart(k, None, _no_ref, leaf_hash), v] for k, v in items]
    return {"config": digest_apart(value, None, _no_ref, leaf_hash)}


_PLAIN_DEPTH = 200


def _plain_json(value: Any, depth: int) -> bool:
    """Whether ``value`` is JSON data that ``json.loads(canonical_json(value))`` gives back as
    it is: exact types only (an ``IntEnum`` or a ``str`` subclass encodes as its base
    value), dicts with str keys only (JSON makes every key a string), lists but no tuples."""
    t = type(value)
    if t is str or t is int or t is float or t is bool or value is None:
        return True
    if depth > _PLAIN_DEPTH:
        return False
    if t is dict:
        for k, v in value.items():
            if type(k) is not str or not _plain_json(v, depth + 1):
                return False
        return True
    if t is list:
        return all(_plain_json(v, depth + 1) for v in value)
    return False


def _no_ref(value: Any) -> Any:        # a component's config holds no task references
    raise TypeError("a config holds no references")


def structural_key(component: str, code_version: str, config: Mapping[str, Any] | None,
                   input_digest: Any, *, prefix: bytes | None = None) -> str:
    """The memo key of a task: sha256(definition prefix, canonical input digest). With
    ``prefix`` (``key_prefix`` of the same three, computed once) ``config`` is not read."""
    if prefix is None:
        if config is None:
            raise TypeError("structural_key needs config or prefix")
        prefix = key_prefix(component, code_version, config)
    return prefixed_key(prefix, input_digest)


def prefixed_key(prefix: bytes, input_digest: Any) -> str:
    """``structural_key`` given its ``key_prefix`` (the run loop's call, one per task)."""
    return hashlib.sha256(prefix + digest_json(input_digest)).hexdigest()


def own_key(structural: str, run_id: str, node_id: str, epoch: int = 0) -> str:
    """The result key of a task that is not memoized (``cache=False``, ``--no-cache``): its
    structural key made its own by the run, node and driver epoch (``core.states.fence``)
    that computed it. Two identical calls of a component that is not deterministic may
    return different values; under one shared key the later write replaced the earlier and a
    reload gave one call the other's value. With the epoch, a stalled earlier driver's late
    write cannot replace the result of the driver that took the run over; a resumed task
    finds its own under its row's epoch."""
    return sha256_hex(f"{structural}\0{run_id}\0{node_id}\0{epoch}".encode("utf-8",
                                                                            "surrogatepass"))


_PLAIN_NAN = struct.pack(">d", float("nan")).hex()


def digest_value(value: Any, ref_type: type | None, ref_digest: Callable[[Any], Any],
                 leaf_hash: Callable[[Any], str], w: _Walk | None = None) -> Any:
    """A JSON-able digest of an argument value.

    Containers are walked; instances of ``ref_type`` (references to other tasks' outputs)
    become ``ref_digest(ref)``, a string starting with '@'; JSON scalars stay as they are (short
    strings) or become a hash; other leaves become ``leaf_hash(value)``. Runs once per task on
    the engine's hot path, hence the type-identity tests in order of frequency. ``w``: this
    thread's walk (``enter``), passed down so it is looked up once per call from outside.
    """
    t = type(value)
    if t is ref_type:
        return ref_digest(value)
    if t is str:
        # '@' starts reference digests; a literal string starting with it is escaped.
        if len(value) > 64 or value[:1] == "@":
            return {"h": sha256_hex(value.encode("utf-8", "surrogatepass"))}
        return value
    if t is int or t is bool or value is None:
        return value
    if t is float:
        if value != value:
            # Every NaN's repr is 'nan': -nan (sign bit set) and NaNs with payloads are told
            # apart by their bits (``math.copysign`` and ``np.signbit`` tell them apart too);
            # Python's own NaN keeps the key it had.
            bits = struct.pack(">d", value).hex()
            if bits != _PLAIN_NAN:
                return {"f": f"nan:{bits}"}
        return {"f": repr(value)}
    if t is list or t is tuple:
        # ``enter``, inlined (the hot path): met before in this walk, a reference to it
        if w is None:
            w = _WALK
        index, objs = w.index, w.objs
        if not w.depth and objs:        # left by a walk an interrupt cut short: start afresh
            index.clear()
            objs.clear()
        n = index.get(id(value))
        if n is not None:
            return {"ref": n}
        index[id(value)] = len(objs)
        objs.append(value)
        w.depth += 1
        try:
            # A reference item (a fan-in's list of futures) digests without a call through
            # here, and so does an int (``digest_value``'s rule, inlined).
            return {"l" if t is list else "t": [
                v if type(v) is int else ref_digest(v) if type(v) is ref_type else
                digest_value(v, ref_type, ref_digest, leaf_hash, w) for v in value]}
        finally:
            w.depth -= 1
            if not w.depth:
                index.clear()
                objs.clear()
    if t is dict:
        if w is None:
            w = _WALK
        index, objs = w.index, w.objs
        if not w.depth and objs:
            index.clear()
            objs.clear()
        n = index.get(id(value))
        if n is not None:
            return {"ref": n}
        index[id(value)] = len(objs)
        objs.append(value)
        w.depth += 1
        # In order: a dict's order is part of its value (code that iterates it sees it), as
        # in stored results (``serialization``). Keys and digests alternate in one list.
        items: list[Any] = []
        try:
            pairs = iter(value.items())
            for k, v in pairs:
                if type(k) is not str:
                    # a key that is not a string: walked as pairs from here on, the pairs
                    # before it kept (walked again, nested such dicts took 2^depth)
                    head = [x if i % 2 else _key_digest(x, ref_type, ref_digest, leaf_hash)
                            for i, x in enumerate(items)]
                    return {"kd": _pair_list(itertools.chain(((k, v),), pairs), head,
                                             ref_type, ref_digest, leaf_hash)}
                tv = type(v)  # an int, bool or None value, or a reference: no call through here
                items.append(k)
                items.append(v if tv is int or tv is bool or v is None else ref_digest(v)
                             if tv is ref_type else
                             digest_value(v, ref_type, ref_digest, leaf_hash, w))
            return {"o": items}
        finally:
            w.depth -= 1
            if not w.depth:
                index.clear()
                objs.clear()
    if isinstance(value, tuple) and hasattr(t, "_fields"):    # a named tuple: walk it too
        seen = enter(value)
        if seen is not None:
            return seen
        try:
            return {"n": f"{t.__module__}.{t.__qualname__}", "c": leaf_hash(t),  # class code
                    "t": [digest_value(v, ref_type, ref_digest, leaf_hash) for v in value]}
        finally:
            leave()
    if t is set or t is frozenset:
        return _unordered(value, t, ref_type, ref_digest, leaf_hash)
    tag = _MAPPINGS.get(t)
    if tag is not None:           # an OrderedDict, a defaultdict, a Counter: walked as a dict
        return _pairs(value, tag, ref_type, ref_digest, leaf_hash)
    if isinstance(value, enum.Enum):
        # By class and value, not by pickle: a class loaded by value (a pipeline file, decision
        # 0004) pickles with an id of its own in every process (a new key in each).
        return {"en": f"{t.__module__}.{t.__qualname__}", "c": leaf_hash(t),
                "v": digest_value(value.value, ref_type, ref_digest, leaf_hash)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        seen = enter(value)
        if seen is not None:
            return seen
        try:
            # its ``__dict__`` and the fields it lacks (held in slots: a ``slots=True``
            # dataclass over a base without slots has an empty ``__dict__``, and every
            # instance had one key); futures inside digest as references (they are inputs)
            state = dict(vars(value)) if hasattr(value, "__dict__") else {}
            for f in dataclasses.fields(value):
                if f.name not in state and hasattr(value, f.name):
                    state[f.name] = getattr(value, f.name)
            return {"dc": f"{t.__module__}.{t.__qualname__}", "c": leaf_hash(t),  # class code
                    "s": digest_value(state, ref_type, ref_digest, leaf_hash)}
        finally:
            leave()
    if t is memoryview:
        # its bytes alone: ``cast("i")`` or ``cast("B", (2, 3))`` of the same bytes is
        # another value (what ``tolist()``, indexing and ``len`` give); numbered, as the
        # mutable leaves below: ``[m, m]`` is not ``[m, memoryview(copy)]``
        seen = enter(value)
        if seen is not None:
            return seen
        try:
            return {"mv": [value.format, list(value.shape), leaf_hash(value)]}
        finally:
            leave()
    w = _WALK
    if w.depth:
        n = w.index.get(id(value))
        if n is not None:       # an object hashed whole, met before: ``[b, b]`` of one
            return {"ref": n}   # bytearray, array or deque is not ``[b, copy(b)]``
    digest = {"x": leaf_hash(value)}
    number_leaf(value)      # (after its hash: a user object's state walk numbered it first)
    return digest


def number_leaf(value: Any) -> None:
    """Number ``value``, hashed whole, in the walk going on (if any, and unless it is an
    immutable value or already numbered): met again, it is a reference to it."""
    w = _WALK
    if w.depth and not isinstance(value, _IMMUTABLE) and id(value) not in w.index:
        w.index[id(value)] = len(w.objs)
        w.objs.append(value)


def pickle_ids(top: Any) -> Callable[[Any], Any] | None:
    """A ``persistent_id`` for the pickle that hashes leaf ``top`` inside a walk (None
    outside one): each mutable object the pickle meets is numbered in the walk, and one the
    walk met before is written as its number. ``[deque([L]), L]`` and ``[deque([L]),
    copy(L)]`` had one key: what a leaf hashed whole held was not part of the walk."""
    w = _WALK
    if not w.depth:
        return None
    index, objs = w.index, w.objs

    def persistent_id(obj: Any) -> Any:
        if obj is top or isinstance(obj, _UNNUMBERED):
            return None
        n = index.get(id(obj))
        if n is not None:
            return n
        index[id(obj)] = len(objs)
        objs.append(obj)           # (kept alive: a temporary's id is not reused meanwhile)
        return None
    return persistent_id


def digest_kwargs(kwargs: Mapping[str, Any], ref_type: type | None,
                  ref_digest: Callable[[Any], Any], leaf_hash: Callable[[Any], str]) -> Any:
    """The digest of a call's keyword arguments: by name, in no order (``f(x=1, y=2)`` and
    ``f(y=2, x=1)`` are one call), each value as ``digest_value`` gives it. Walked in the
    names' order, as the digest is written: walked in the call's, an object in two of them
    was numbered in one and referred to in the other depending on how the call was written
    (``f(x=[P], y=[[1], P])`` and ``f(y=[Q, Q], x=[[1]])`` had one key)."""
    out = {}
    for k in sorted(kwargs) if len(kwargs) > 1 else kwargs:
        v = kwargs[k]
        tv = type(v)
        out[k] = v if tv is int or tv is bool or v is None else ref_digest(v) \
            if tv is ref_type else digest_value(v, ref_type, ref_digest, leaf_hash)
    return {"d": out}


def _unordered(value: Any, t: type, ref_type: type | None, ref_digest: Callable[[Any], Any],
               leaf_hash: Callable[[Any], str]) -> Any:
    """A set: digested item by item in sorted order (of their canonical JSON). Hashed whole,
    its bytes followed the iteration order, which depends on the process's hash seed (a miss
    in every process).

    Each item is first digested as if it came first (what it meets is forgotten after it),
    which gives an order that is not the hash seed's; then, if any item holds containers or
    objects, the items are digested again in that order as part of the walk, so objects two
    items share, or an item shares with what comes after the set, are references as anywhere
    else (digested apart only, ``{Box(L), Box(L)}`` and ``{Box(L), Box(L2)}`` had one key)."""
    apart: list[tuple[bytes, Any, Any]] = []
    walked = False
    w = _WALK
    seen = enter(value)     # one walk for all its items (an outermost set too); a set met
    if seen is not None:    # twice is one object (``[s, s]`` and ``[s, set(s)]``)
        return seen
    try:
        w.sorting += 1      # sets inside an item digested apart: one pass is order enough
        try:
            for v in value:
                mark = mark_walk()
                try:
                    d = digest_value(v, ref_type, ref_digest, leaf_hash)
                    walked = walked or mark_walk() > mark
                finally:
                    rewind_walk(mark)
                apart.append((digest_json(d), d, v))
        finally:
            w.sorting -= 1
        apart.sort(key=lambda e: e[0])
        if walked and not w.sorting:
            items = [digest_value(v, ref_type, ref_digest, leaf_hash) for _, _, v in apart]
        else:
            items = [d for _, d, _ in apart]
    finally:
        leave()
    return {"s" if t is set else "fs": items}


def _holds(value: Any, ref_type: type) -> bool:
    """Whether a reference is anywhere inside ``value``'s containers (each walked once)."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is ref_type:
            return True
        if t is dict or t in _MAPPINGS:
            if id(v) not in seen:
                seen.add(id(v))
                stack.extend(v.keys())
                stack.extend(v.values())
        elif t is list or t is tuple or t is set or t is frozenset or isinstance(v, tuple):
            if id(v) not in seen:
                seen.add(id(v))
                stack.extend(v)
    return False


#: Leaves hashed whole whose identity is not part of their value: not numbered (two equal
#: ones are one value, as two equal ints are).
_IMMUTABLE = (bytes, complex, decimal.Decimal, fractions.Fraction, datetime.date, datetime.time,
              datetime.timedelta, range, types.FunctionType, types.BuiltinFunctionType, type,
              PurePath)
#: What a leaf's pickle meets that is not numbered (``pickle_ids``): values, not places (which
#: of two equal strings a pickle holds changes nothing a component can see).
_UNNUMBERED = (str, int, float, bool, type(None), tuple, frozenset) + _IMMUTABLE

#: Mappings walked as (key, value) pairs, and the tag that keeps their type in the digest.
_MAPPINGS: dict[type, str] = {dict: "kd", OrderedDict: "od", defaultdict: "dd", Counter: "ct"}


class _Walk(threading.local):
    """What a digest on this thread has met so far (lists, tuples, dicts, the mappings above,
    dataclasses, and the engine's user objects): each object's preorder index, and the
    objects themselves (kept alive for the walk: an id freed and reused by a temporary made
    during it would be taken for one met before). ``depth`` counts the containers being
    walked; the outermost one's end forgets them all."""

    def __init__(self) -> None:
        self.index: dict[int, int] = {}
        self.objs: list[Any] = []
        self.depth = 0
        self.sorting = 0        # inside a set's first pass (``_unordered``)


_WALK = _Walk()


def enter(value: Any) -> dict[str, int] | None:
    """``value``'s walk begins, and None; or, when this digest has met ``value`` before, the
    reference that stands for it, ``{"ref": n}`` (its preorder index), and nothing begins.

    A digest names the graph of objects it walks, as a pickle does: a value that holds
    itself (a list appended to itself, a tree whose nodes point at their parent) and one
    that holds an object twice (``[a, a]``) are walked once per object. Walked only on its
    path (a reference for an ancestor only), ``[a, a]`` and ``[a, b]`` of two lists that hold
    themselves had one key (a wrong hit: ``x[0] is x[1]``), and a 5x5 grid of objects
    holding their neighbours took 84 s (every simple path walked). Before that, such values
    were walked until ``RecursionError`` and pickled deep in the stack, which failed."""
    w = _WALK
    if not w.depth and w.objs:          # left by a walk an interrupt cut short: afresh
        _forget(w)
    n = w.index.get(id(value))
    if n is not None:
        return {"ref": n}
    w.index[id(value)] = len(w.objs)
    w.objs.append(value)
    w.depth += 1                        # last: cut short before it, nothing is left open
    return None


def leave() -> None:
    """The walk ``enter`` began ends (what it met is remembered until the outermost ends)."""
    w = _WALK
    w.depth -= 1
    if not w.depth:
        _forget(w)


def _forget(w: _Walk) -> None:
    w.index.clear()
    w.objs.clear()


def begin_walk() -> None:
    """One walk for several digests (a call's arguments and keyword arguments: ``f(a, a)``
    and ``f(a, [1])`` had one key, each argument a walk of its own); ``end_walk`` ends it."""
    w = _WALK
    if not w.depth and w.objs:
        _forget(w)
    w.depth += 1


end_walk = leave


def outside_walk(fn: Callable[[Any], Any], value: Any) -> Any:
    """``fn(value)`` as if no digest were being walked on this thread (a value too deep to
    walk, hashed by its pickle as the outermost value is)."""
    w = _WALK
    saved = w.index, w.objs, w.depth, w.sorting
    w.index, w.objs, w.depth, w.sorting = {}, [], 0, 0
    try:
        return fn(value)
    finally:
        w.index, w.objs, w.depth, w.sorting = saved


def walking() -> bool:
    """Whether a digest on this thread is inside a container or object being walked."""
    return _WALK.depth > 0


def mark_walk() -> int:
    return len(_WALK.objs)


def rewind_walk(mark: int) -> None:
    """Forget what the walk met since ``mark_walk`` gave ``mark``."""
    w = _WALK
    for obj in w.objs[mark:]:
        w.index.pop(id(obj), None)
    del w.objs[mark:]


def digest_apart(value: Any, ref_type: type | None, ref_digest: Callable[[Any], Any],
                 leaf_hash: Callable[[Any], str]) -> Any:
    """``digest_value`` as a walk of its own: what another walk on this thread is inside of
    is not an ancestor here (an instance's state read when its spec is built, a config)."""
    return outside_walk(lambda v: digest_value(v, ref_type, ref_digest, leaf_hash), value)


def _key_digest(k: Any, ref_type: type | None, ref_digest: Callable[[Any], Any],
                leaf_hash: Callable[[Any], str]) -> Any:
    """A mapping key's digest in ``_pair_list``: an int, bool, None or short string is its
    own."""
    tk = type(k)
    return k if tk is int or tk is bool or k is None \
        or (tk is str and len(k) <= 64 and k[:1] != "@") else ref_digest(k) \
        if tk is ref_type else digest_value(k, ref_type, ref_digest, leaf_hash)


def _pair_list(pairs: Iterator[tuple[Any, Any]], out: list[Any], ref_type: type | None,
               ref_digest: Callable[[Any], Any], leaf_hash: Callable[[Any], str]) -> list[Any]:
    """``out`` with the digests of ``pairs``, keys and values alternating in one list (a
    list per pair cost twice the time: the collector ran over 100,000 of them); an int,
    bool, None or short string is its own digest (``digest_value``'s rule, inlined: no call
    for the common keys and values)."""
    append = out.append
    for k, v in pairs:
        tk, tv = type(k), type(v)
        append(k if tk is int or tk is bool or k is None
               or (tk is str and len(k) <= 64 and k[:1] != "@") else ref_digest(k)
               if tk is ref_type else digest_value(k, ref_type, ref_digest, leaf_hash))
        append(v if tv is int or tv is bool or v is None
               or (tv is str and len(v) <= 64 and v[:1] != "@") else ref_digest(v)
               if tv is ref_type else digest_value(v, ref_type, ref_digest, leaf_hash))
    return out


def _pairs(value: Any, tag: str, ref_type: type | None, ref_digest: Callable[[Any], Any],
           leaf_hash: Callable[[Any], str]) -> Any:
    """A dict whose keys are not all strings, an ``OrderedDict``, a ``defaultdict`` or a
    ``Counter``: its (key, value) pairs in order, each side digested as an argument is (sets
    sorted, enum members and user objects by class code and value), under a tag naming its
    type (a ``defaultdict``'s ``default_factory`` digested as a callable argument is). They
    were hashed whole by their pickle, which names user functions and classes without their
    code (a stale result after an edit) and holds sets and classes loaded by value in an
    order or with ids of each process's own (a miss in every process).

    A mapping met before in the same digest (inside itself, or elsewhere) digests to a
    reference to it (``enter``)."""
    if tag != "kd" and ref_type is not None and _holds(value, ref_type):
        # The engine finds and resolves futures in lists, tuples, sets and plain dicts only
        # (``refs.find_refs``): one inside an OrderedDict would reach the task unresolved, and
        # its key would not follow its producer. Hashed whole, it is refused with the reason
        # (``Engine.hash_value``), as before these mappings were walked.
        return {"x": leaf_hash(value)}
    seen = enter(value)
    if seen is not None:
        return seen
    try:
        out = _pair_list(iter(value.items()), [], ref_type, ref_digest, leaf_hash)
        digest: dict[str, Any] = {tag: out}
        if tag == "dd":
            digest["f"] = digest_value(value.default_factory, ref_type, ref_digest, leaf_hash)
        if tag != "kd":
            attrs = getattr(value, "__dict__", None)      # set on the instance: pickled too
            if attrs:
                digest["a"] = digest_value(dict(attrs), ref_type, ref_digest, leaf_hash)
        return digest
    finally:
        leave()
