"""Deterministic pickles: the same value gives the same bytes in every process.

Results are content-addressed (``serialization``): the sha256 of a value's bytes is its identity
in memo keys, so the consumer of a recomputed result hits only if the result's bytes are the
same as last time, in any process. cloudpickle's bytes are not, in two cases:

1. A ``set`` or ``frozenset`` is written in its iteration order, which for str and bytes items
   follows the process's hash seed (``PYTHONHASHSEED``, random by default). Also a frozenset
   among a code object's constants (``x in {"a", "b"}``) in a function pickled by value.
2. A class pickled *by value* (defined in ``__main__``, or in a pipeline file: ``cli.loading``
   registers those) carries a "tracker id", a random uuid made once per class per process, with
   which the unpickling process maps every instance to one class.

**The way a value goes.** First cloudpickle's C pickler, as before: most values end there.
It writes an exact set without asking anyone, but the bytes show one: a set with items is
EMPTY_SET MEMOIZE MARK, a frozenset FROZENSET MEMOIZE (an empty set's bytes depend on nothing).
Found there (``_may_hold_a_set``, mostly a ``memchr``), the value is pickled again by the
pure-Python pickler (``_OrderedPickler``, ~1 µs an object, several times the C pickler's
time). Those bytes also occur inside numbers and strings: in a pickle of 1 KiB or more the
value is first pickled at protocol 3, where a set is written as ``set(list)`` so the type
``set`` passes ``reducer_override`` (about the C pickler's time again), and goes on only if
one is found. A class by value, a TypeVar or a subclass of set stops the C pickler at once
(``reducer_override`` sees them): the Python pickler takes the value. Which way a value goes
depends on the value only, so it goes the same way in every process. If the Python pickler
fails where the C one did not (nesting deeper than its recursion allows), the C pickler's bytes
are kept: correct, not deterministic, as before.

**The Python pickler** writes a set's items in an order fixed by their values: sorted when all
are str, all bytes or all int; by a canonical text when all are plain data (numbers, str,
bytes, None, tuples and frozensets of those); else by each item's own deterministic pickle (so
mixed types work). It writes equal strings (and bytes) once, whichever objects they are: which
of a class's strings are one object differs between a class as defined and one whose state
cloudpickle set from a pickle (a process worker's reply does that). For the same reason
functions of one module share their globals in the pickle by module name, not by the identity
of their globals dict. It drops ``__slotnames__`` from a class (a cache copyreg sets on the
class when an instance of it is first pickled).

**Classes by value.** Before cloudpickle pickles such a class, it gets a tracker id derived from
its content, put in cloudpickle's tracker as cloudpickle would put its uuid there (``class_id``).
The id is sha256 over the class's own definition (name, bases, metaclass, attributes, methods
with the globals, closures and defaults they read) pickled with every class by value in it
written as its qualified name only, plus the sorted digests of the same for every class by
value reachable from it through such names. Classes may name each other (two classes whose
methods build one another): the set of reachable definitions is the same whichever is pickled
first, so the id is too. The same definition gets the same id in every process (and a class
rebuilt from a pickle of it, the id it came with); two definitions that differ anywhere (the
class, a base, a class one of its methods builds) get different ids. That matters: unpickling a
tracker id the process already knows reuses that class (and sets the pickled state on it). Two
classes of the same content in one process (a factory called twice) share their id: a value of
one may load as the other. The definition is pickled once more for this, once per class per
process; a class changed after that (an attribute set on it) keeps the id it had, as it kept
cloudpickle's uuid. TypeVars by value (tracked the same way) get an id from their name, bound,
constraints and variance.

Decoding is unchanged (``pickle.loads``): these are ordinary pickles, and values stored before
(random ids, sets in any order) decode as before. Left as they were: a ``WeakSet`` (pickled as
a list in iteration order), a class's ``__reduce__`` that itself returns a set's items in its
iteration order, and which loaded submodules cloudpickle lists with a function by value.
"""

from __future__ import annotations

import enum
import hashlib
import io
import pickle
import threading
import types
import typing
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

__all__ = ["dumps", "class_id"]

_cp = getattr(cloudpickle, "cloudpickle", cloudpickle)
_cp_fast = getattr(cloudpickle, "cloudpickle_fast", _cp)


def _internal(name: str) -> Any:
    """A private name of cloudpickle's (its module moved between 2.x and 3.x); None if gone."""
    return getattr(_cp, name, getattr(_cp_fast, name, None))


_BY_CLASS = _internal("_DYNAMIC_CLASS_TRACKER_BY_CLASS")
_BY_ID = _internal("_DYNAMIC_CLASS_TRACKER_BY_ID")
_TRACKER_LOCK = _internal("_DYNAMIC_CLASS_TRACKER_LOCK")
_should_pickle_by_reference = _internal("_should_pickle_by_reference")
_class_reduce = _internal("_class_reduce")
_class_getstate = _internal("_class_getstate")
_enum_getstate = _internal("_enum_getstate")
_get_bases = _internal("_get_bases")
_BUILTIN_TYPE_NAMES = _internal("_BUILTIN_TYPE_NAMES")
_CloudPickler: Any = cloudpickle.Pickler
_PyPickler: Any = pickle._Pickler
#: What this module reads of cloudpickle's (2.1 to 3.1 have it all). Without it, ``dumps`` is
#: ``cloudpickle.dumps``: not deterministic, as before.
_SUPPORTED = None not in (
    _BY_CLASS, _BY_ID, _TRACKER_LOCK, _should_pickle_by_reference, _class_reduce,
    _class_getstate, _enum_getstate, _get_bases, _BUILTIN_TYPE_NAMES,
    getattr(_CloudPickler, "reducer_override", None),
    getattr(_CloudPickler, "_function_reduce", None),
    getattr(_CloudPickler, "_dynamic_function_reduce", None),
    getattr(_CloudPickler, "_function_getnewargs", None))
_SETS = (set, frozenset)
#: What protocol 5 writes for a set with items (EMPTY_SET MEMOIZE MARK) and a frozenset
#: (FROZENSET MEMOIZE): first byte, the rest (``_may_hold_a_set``).
_SET_OPS = ((pickle.EMPTY_SET[0], pickle.MEMOIZE + pickle.MARK),
            (pickle.FROZENSET[0], pickle.MEMOIZE))
_SORTABLE = (str, bytes, int)
_REPR_KEYED = frozenset({str, bytes, int, float, complex, bool, type(None)})
#: Types the Python pickler's reducer_override passes on at once (most objects it sees).
_PLAIN = frozenset({str, bytes, int, float, bool, type(None), tuple, list, dict, set,
                    frozenset})
_TypeVar = typing.TypeVar
_FunctionType = types.FunctionType

_SHORT_STR, _MEMOIZE = pickle.SHORT_BINUNICODE, pickle.MEMOIZE
#: From this many bytes, ``_fast`` makes sure a set is there before the Python pickler (several
#: times slower) pickles it again: the bytes may be in a number or a string.
_CONFIRM_FROM = 1024

# Modes: how a class pickled by value is written.
_FULL = 0        # by value, under its content id (the bytes that are stored)
_KEY = 1         # as its content id only (a set item's sort key)
_DEFINITION = 2  # as its qualified name only, and noted (a definition, to hash)


# ------------------------------------------------------------------------------------------ dumps

class _Unordered(Exception):
    """Raised inside the C pickler to stop it: this value needs the Python pickler."""


def dumps(value: Any, out_of_band: Callable[[pickle.PickleBuffer], bool] | None = None
          ) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """``cloudpickle.dumps(value, protocol=5)`` made deterministic (module docstring), and the
    buffers sent out of band: those ``out_of_band`` says True for, in the order the pickle
    refers to them."""
    if not _SUPPORTED:  # pragma: no cover - another cloudpickle: as before
        buffers: list[pickle.PickleBuffer] = []
        return cloudpickle.dumps(value, protocol=5,
                                 buffer_callback=_collector(out_of_band, buffers)), buffers
    try:
        data, buffers, p = _fast(value, out_of_band, stop=True)
        # A small value the bytes of a set are found in holds one, most likely: to the Python
        # pickler at once, without making sure (either way, the same value takes one way).
        if not _may_hold_a_set(data) or (
                len(data) >= _CONFIRM_FROM and not _holds_a_set(value, p, bool(buffers))):
            return data, buffers
    except _Unordered:
        pass
    try:
        return _python(value, _FULL, out_of_band)
    except Exception:  # noqa: BLE001 - e.g. RecursionError: the C pickler's bytes, as before
        data, buffers, _ = _fast(value, out_of_band, stop=False)
        return data, buffers


def _fast(value: Any, out_of_band: Callable[[pickle.PickleBuffer], bool] | None, stop: bool
          ) -> tuple[bytes, list[pickle.PickleBuffer], Any]:
    """The C pickler's bytes, buffers, and the pickler. With ``stop``, ``_Unordered`` as soon
    as it meets what needs the Python pickler: a class by value, a TypeVar, a subclass of
    set (an exact set it writes without asking: ``_may_hold_a_set``)."""
    buffers: list[pickle.PickleBuffer] = []
    with io.BytesIO() as file:
        p = _FastPickler(file, _collector(out_of_band, buffers), stop)
        p.dump(value)
        return file.getvalue(), buffers, p


def _may_hold_a_set(data: bytes) -> bool:
    """Whether the bytes protocol 5 writes for a set with items (EMPTY_SET MEMOIZE MARK) or a
    frozenset (FROZENSET MEMOIZE) are in ``data`` (an empty set's bytes depend on nothing).
    Found by ``memchr`` on their first byte, rare but in numbers and binary data: after a few,
    one search for the whole pattern (slower per byte: its last byte is a common one)."""
    for first, rest in _SET_OPS:
        i = data.find(first)
        seen = 0
        while i >= 0:
            if data.startswith(rest, i + 1):
                return True
            seen += 1
            if seen == 16:
                if data.find(bytes((first,)) + rest, i + 1) >= 0:
                    return True
                break
            i = data.find(first, i + 1)
    return False


def _holds_a_set(value: Any, p: Any, out_of_band: bool) -> bool:
    """Whether the C pickler ``p`` wrote a set or frozenset (the bytes it would write for one
    are in its output, perhaps inside a number or a string). Pickled again at protocol 3, where
    a set is written as ``set(list)``, so that the type ``set`` goes by ``reducer_override``:
    about the time the first pickling took, stopped at the first set. Not when large buffers
    went out of band (at protocol 3 they would be copied): then the memo is read, as for
    anything the second pickling cannot do."""
    if not out_of_band:
        try:
            _FastPickler(_Discard(), None, stop=True, protocol=3, find_sets=True).dump(value)
            return False
        except _Unordered:
            return True
        except Exception:  # noqa: BLE001 - e.g. a PickleBuffer, which needs protocol 5
            pass
    for _, obj in p.memo.copy().values():
        t = type(obj)
        if t is set or t is frozenset:
            return True
    return False


class _Discard:
    def write(self, b: Any) -> int:
        return len(b)


def _python(value: Any, mode: int, out_of_band: Callable[[pickle.PickleBuffer], bool] | None,
            found: list[Any] | None = None) -> tuple[bytes, list[pickle.PickleBuffer]]:
    buffers: list[pickle.PickleBuffer] = []
    with io.BytesIO() as file:
        p = _OrderedPickler(file, mode, _collector(out_of_band, buffers), found)
        p.dump(value)
        return file.getvalue(), buffers


def _collector(out_of_band: Callable[[pickle.PickleBuffer], bool] | None,
               buffers: list[pickle.PickleBuffer]) -> Callable[[pickle.PickleBuffer], bool] | None:
    if out_of_band is None:
        return None

    def callback(pb: pickle.PickleBuffer) -> bool:
        if out_of_band(pb):
            buffers.append(pb)
            return False            # out of band
        return True
    return callback


# -------------------------------------------------------------------------------------- picklers

def _by_value(cls: Any) -> bool:
    """Whether cloudpickle pickles this class by value (else by reference: module and name)."""
    if cls in _BUILTIN_TYPE_NAMES:
        return False
    try:
        return not _should_pickle_by_reference(cls)
    except Exception:  # noqa: BLE001 - cloudpickle decides, as it would
        return False


def _class_by_value(cls: type) -> Any:
    """cloudpickle's reduction of a class by value (under its content id, ``class_id``),
    without copyreg's ``__slotnames__``: a cache set on the class when one of its instances
    is first pickled, so the class pickled after an instance differed from before."""
    class_id(cls)
    rv = _class_reduce(cls)
    if type(rv) is tuple and len(rv) > 2 and type(rv[2]) is tuple and rv[2] \
            and type(rv[2][0]) is dict:
        rv[2][0].pop("__slotnames__", None)
    return rv


class _FastPickler(_CloudPickler):  # type: ignore[misc]
    """cloudpickle's C pickler. It writes an exact set without asking anyone (``dumps`` looks
    for one afterwards); it asks ``reducer_override`` about a class, a TypeVar or a subclass
    of set. ``stop``: those need the Python pickler, ``_Unordered`` at once; else (the last
    resort) pickled as cloudpickle would, classes by value under content ids still."""

    def __init__(self, file: Any, callback: Any, stop: bool, protocol: int = 5,
                 find_sets: bool = False) -> None:
        super().__init__(file, protocol=protocol, buffer_callback=callback)
        self.stop = stop
        self.find_sets = find_sets

    def reducer_override(self, obj: Any) -> Any:
        if self.find_sets and (obj is set or obj is frozenset):
            raise _Unordered        # protocol 3 writes a set as set(list): ``_holds_a_set``
        t = type(obj)
        if t is _TypeVar or (isinstance(obj, _SETS) and t is not set and t is not frozenset):
            if self.stop:
                raise _Unordered
            return NotImplemented       # cloudpickle's way
        try:
            is_class = issubclass(t, type)
        except TypeError:  # pragma: no cover - as cloudpickle guards
            is_class = False
        if is_class:
            if _by_value(obj):
                if self.stop:
                    # The Python pickler writes strings by value (``_OrderedPickler``): here a
                    # class's bytes depend on which of its strings are one object, which
                    # changes when a pickle of it is loaded (cloudpickle sets its state on it).
                    raise _Unordered
                return _class_by_value(obj)
            return _class_reduce(obj)
        if isinstance(obj, _FunctionType):
            return self._function_reduce(obj)
        return NotImplemented


class _OrderedPickler(_PyPickler):  # type: ignore[misc]
    """The pure-Python pickler with cloudpickle's reducers, deterministic: a set's items in a
    fixed order (``_in_order``), equal strings and bytes written once whichever objects they
    are (which of them are one object varies between processes and with history), classes
    and TypeVars by value under content ids. ``mode``: how a class by value is written."""

    dispatch = dict(_PyPickler.dispatch)
    dispatch_table = _CloudPickler.dispatch_table
    _function_reduce: Any = getattr(_CloudPickler, "_function_reduce", None)
    _dynamic_function_reduce: Any = getattr(_CloudPickler, "_dynamic_function_reduce", None)
    _function_getnewargs: Any = getattr(_CloudPickler, "_function_getnewargs", None)

    def __init__(self, file: Any, mode: int, callback: Any, found: list[Any] | None) -> None:
        super().__init__(file, protocol=5, buffer_callback=callback)
        self.globals_ref = _GlobalsByModule()     # as cloudpickle.Pickler has it
        self.proto = 5
        self.mode = mode
        self.found = found
        self.by_value: dict[Any, int] = {}        # str or bytes -> its memo index

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t in _PLAIN:
            return NotImplemented
        if t is _TypeVar:
            if self.mode == _DEFINITION:
                return str, (f"typevar:{obj.__name__}",)
            _typevar_id(obj)
            return NotImplemented           # cloudpickle's dispatch_table entry takes it
        try:
            is_class = issubclass(t, type)
        except TypeError:  # pragma: no cover - as cloudpickle guards
            is_class = False
        if is_class:
            if not _by_value(obj):
                return _class_reduce(obj)
            if self.mode == _DEFINITION:     # named only, and noted
                if self.found is not None:
                    self.found.append(obj)
                return str, (f"class:{obj.__module__}.{obj.__qualname__}",)
            if self.mode == _KEY:
                tid = class_id(obj)
                if tid is not None:
                    return str, (f"class:{tid}",)
            return _class_by_value(obj)
        if isinstance(obj, _FunctionType):
            g = obj.__globals__
            name = g.get("__name__")
            if type(name) is str:
                self.globals_ref.names[id(g)] = ("module", name)
            return self._function_reduce(obj)
        if isinstance(obj, _SETS):          # a subclass: set's own reduction, items in order
            base = set if isinstance(obj, set) else frozenset
            if t.__reduce_ex__ is base.__reduce_ex__ and t.__reduce__ is base.__reduce__:
                rv = obj.__reduce_ex__(self.proto)
                return (rv[0], (_in_order(obj, self.mode),), *rv[2:])
        return NotImplemented

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        """pickle's own, with a shorter way for a str or an int (most of what it writes):
        nothing else would be asked about them (no persistent ids, no reducer)."""
        t = type(obj)
        if t is str:
            self.framer.commit_frame()
            x = self.memo.get(id(obj))
            if x is None:
                self._save_by_value(obj)
            else:
                self.write(self.get(x[0]))
        elif t is int:
            self.framer.commit_frame()
            self.save_long(obj)
        else:
            _PyPickler.save(self, obj, save_persistent_id)

    def _save_by_value(self, obj: Any) -> None:
        """A str or bytes: memoized by value (``by_value``), not by identity only."""
        i = self.by_value.get(obj)
        if i is not None:
            self.write(self.get(i))
            return
        if type(obj) is str:        # pickle's save_str and memoize, for a short one
            encoded = obj.encode("utf-8", "surrogatepass")
            if len(encoded) <= 0xff:
                i = len(self.memo)
                self.write(_SHORT_STR + bytes((len(encoded),)) + encoded + _MEMOIZE)
                self.memo[id(obj)] = i, obj
                self.by_value[obj] = i
                return
        self._plain_dispatch[type(obj)](self, obj)
        self.by_value[obj] = self.memo[id(obj)][0]

    def _save_set(self, obj: Any) -> None:
        write = self.write
        write(pickle.EMPTY_SET)
        self.memoize(obj)
        items = _in_order(obj, self.mode)
        for i in range(0, len(items), self._BATCHSIZE):
            write(pickle.MARK)
            for item in items[i:i + self._BATCHSIZE]:
                self.save(item)
            write(pickle.ADDITEMS)

    def _save_frozenset(self, obj: Any) -> None:
        write = self.write
        write(pickle.MARK)
        for item in _in_order(obj, self.mode):
            self.save(item)
        if id(obj) in self.memo:    # recursive: drop what was pushed, as pickle does
            write(pickle.POP_MARK + self.get(self.memo[id(obj)][0]))
            return
        write(pickle.FROZENSET)
        self.memoize(obj)

    _plain_dispatch: dict[type, Any] = {str: dispatch[str], bytes: dispatch[bytes]}
    dispatch[str] = _save_by_value
    dispatch[bytes] = _save_by_value
    dispatch[set] = _save_set
    dispatch[frozenset] = _save_frozenset


class _GlobalsByModule(dict):  # type: ignore[type-arg]
    """cloudpickle's ``globals_ref``: the globals a function by value unpickles into, shared by
    the functions pickled together whose globals are one dict (``id`` of it). Here shared by
    module name instead: a class loaded from a pickle (cloudpickle sets the loaded methods on
    a class of the same id) has methods whose globals are copies, no longer the dict its
    module's other functions have, and the sharing, so the bytes, changed with what had been
    loaded."""

    def __init__(self) -> None:
        super().__init__()
        self.names: dict[int, tuple[str, str]] = {}

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return super().setdefault(self.names.get(key, key), default)


def _in_order(items: Iterable[Any], mode: int) -> list[Any]:
    """A set's items in an order fixed by their values: sorted by value when all are str, all
    bytes or all int (total orders); else by a canonical text when all are plain data
    (``_plain_key``); else by each one's deterministic pickle."""
    items = list(items)
    if not items:
        return items
    t = type(items[0])
    if t in _SORTABLE and all(type(x) is t for x in items):
        return sorted(items)
    keys: list[Any] = [_plain_key(x) for x in items]
    if None in keys:
        key_mode = _DEFINITION if mode == _DEFINITION else _KEY
        keys = [_python(x, key_mode, None)[0] for x in items]
    return [items[i] for i in sorted(range(len(items)), key=keys.__getitem__)]


def _plain_key(x: Any) -> str | None:
    """A text that tells plain data apart (str, bytes, numbers, bool, None, and tuples and
    frozensets of them) and is the same in every process; None for anything else."""
    t = type(x)
    if t in _REPR_KEYED:
        return f"{t.__name__}:{x!r}"
    if t is tuple or t is frozenset:
        parts: list[Any] = [_plain_key(v) for v in x]
        if None in parts:
            return None
        if t is frozenset:
            parts.sort()
        return f"{t.__name__}:({','.join(parts)})"
    return None


# ------------------------------------------------------------------------------------ class ids

_IDS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_DEFINITIONS: weakref.WeakKeyDictionary[type, tuple[str, tuple[type, ...]]] = \
    weakref.WeakKeyDictionary()
_LOCK = threading.RLock()
_FAILED = ""


def class_id(cls: type) -> str | None:
    """The content id of a class pickled by value (module docstring), put in cloudpickle's
    tracker the first time; None if its definition cannot be pickled here (cloudpickle's
    random id then, as before)."""
    tid = _IDS.get(cls)
    if tid is None:
        with _LOCK:
            tid = _IDS.get(cls)
            if tid is None:
                tid = _IDS[cls] = _compute_class_id(cls)
    if tid and _BY_CLASS.get(cls) != tid:
        # Not yet, or no longer: loading a pickle that names this class by another id (a
        # process worker's reply under the uuid plain cloudpickle gave it) sets that one.
        _track(cls, tid)
    return tid or None


def _compute_class_id(cls: type) -> str:
    try:
        own, _ = _definition(cls)
        digests: list[str] = []
        seen = {cls}
        stack = list(_definition(cls)[1])
        while stack:        # every class by value reachable through names, each once
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            digest, refs = _definition(c)
            digests.append(digest)
            stack.extend(refs)
    except Exception:  # noqa: BLE001 - RecursionError, an attribute that does not pickle
        return _FAILED
    digests.sort()
    return hashlib.sha256(f"twingraph-class:1:{own}:{','.join(digests)}".encode()).hexdigest()


def _definition(cls: type) -> tuple[str, tuple[type, ...]]:
    """sha256 of the class's own definition, classes by value in it named only; and those
    classes."""
    cached = _DEFINITIONS.get(cls)
    if cached is not None:
        return cached
    if issubclass(cls, enum.Enum):
        clsdict, slotstate = _enum_getstate(cls)
        clsdict.pop("__slotnames__", None)          # a cache (``_reduce``)
        parts: tuple[Any, ...] = (
            "enum", cls.__bases__, cls.__name__, cls.__qualname__, cls.__module__,
            {e.name: e.value for e in cls}, clsdict, slotstate)
    else:
        type_kwargs: dict[str, Any] = {}
        if "__module__" in cls.__dict__:
            type_kwargs["__module__"] = cls.__module__
        if isinstance(cls.__dict__.get("__dict__", None), property):
            type_kwargs["__dict__"] = cls.__dict__["__dict__"]
        clsdict, slotstate = _class_getstate(cls)
        clsdict.pop("__slotnames__", None)
        parts = ("class", type(cls), cls.__name__, cls.__qualname__, _get_bases(cls),
                 type_kwargs, clsdict, slotstate)
    found: list[Any] = []
    data, _ = _python(parts, _DEFINITION, None, found)
    refs = tuple(dict.fromkeys(c for c in found if c is not cls))
    cached = _DEFINITIONS[cls] = (hashlib.sha256(data).hexdigest(), refs)
    return cached


def _typevar_id(tv: Any) -> None:
    """A TypeVar's content id, as ``class_id``: its name, bound, constraints and variance
    (not its ``__module__``: one unpickled names cloudpickle's, where it was rebuilt)."""
    tid = _IDS.get(tv)
    if tid is None:
        with _LOCK:
            tid = _IDS.get(tv)
            if tid is None:
                try:
                    data, _ = _python((tv.__name__, tv.__bound__, tv.__constraints__,
                                       tv.__covariant__, tv.__contravariant__), _DEFINITION, None)
                    tid = hashlib.sha256(b"twingraph-typevar:1:" + data).hexdigest()
                except Exception:  # noqa: BLE001 - cloudpickle's random id, as before
                    tid = _FAILED
                _IDS[tv] = tid
    if tid and _BY_CLASS.get(tv) != tid:
        _track(tv, tid)


def _track(obj: Any, tid: str) -> None:
    """Register ``tid`` as cloudpickle's tracker id for ``obj``, as its
    ``_get_or_create_tracker_id`` registers a uuid: pickled under it from now on, and a pickle
    with it is loaded as ``obj`` unless the id already names another class (one unpickled
    before, of the same content)."""
    with _TRACKER_LOCK:
        _BY_CLASS[obj] = tid
        _BY_ID.setdefault(tid, obj)
