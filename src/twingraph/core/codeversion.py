"""Code version of a component: a hash of its code and of everything it reads from its module.

What goes in, starting from the component's function (or ``BaseComponent`` class):

- the function's own source (its bytecode and constants when there is no source), its default
  argument values and the values of its closure cells;
- every global name the function reads (``LOAD_GLOBAL``), followed:

  * user functions and classes: walked the same way (a class by its source, its user base
    classes, its methods, properties and immutable class attributes);
  * user modules (``import helpers; helpers.scale(x)``): the attributes the function reads
    from them (its attribute names), each followed like a global, nested modules too;
    modules imported inside the function body count as well (looked up, never imported);
  * immutable plain data (None, bool, int, float, complex, str, bytes, and tuples/frozensets
    of those; enum members, named tuples, frozen dataclasses, ranges, compiled patterns,
    decimals, dates, paths): the value itself, encoded canonically;
  * anything else at module level (lists, dicts, sets, instances, arrays...): its type and the
    text of the module's top-level statements that bind or mutate that name (following
    ``from x import NAME`` into user module ``x``), and the names those statements read,
    followed like globals (``OPS = {"inc": inc}``: ``inc``'s code counts). Runtime contents
    are deliberately not hashed: an accumulator or a cache filled while tasks run would make
    the version depend on timing. Without module source, plain containers fall back to their
    value;
- the user classes its parameter and return annotations name (``model: Model``): a method
  called on a parameter is dynamic dispatch, and the annotation says whose;
- closure cells and default values have no defining statement: plain data (lists and dicts
  included) is hashed by value, other objects by type (and the class, if it is user code);
  an instance of a user class that is also bound at module level (``cfg=DEFAULT``, also
  ``cfg=settings.DEFAULT``) by that binding's statement as well, as a global is.

"User code" is a module outside the standard library and site-packages that is not
``twingraph`` itself. Library code is identified by its qualified name only: its version is the
environment's business. Never hashed: ``id()``, memory addresses, ``repr()`` of arbitrary
objects, set or dict iteration order, anything that depends on ``PYTHONHASHSEED``. An explicit
``version=`` on the component replaces all this.

Also followed: what a user class's body reads (``METHODS = {"double": ops.double}``, ``scaler =
DEFAULT_SCALER``: ``_class_reads``), what a decorated ``def`` reads when its decorator hides the
function (``@np.vectorize``: ``_def_reads``, ``_decorated_function``), and a package's
submodules when the package makes attributes lazily (PEP 562 ``__getattr__``): walked once
imported, by their files' text before, never importing them (``_submodule_text``;
``__getattr__`` itself is never called, its code counts for other lazy attributes). A module's source is read once per loaded
module object (``_source_lines``): edited on disk but not reloaded, the version stays that of
the code that runs.

The result is not cached here (globals may be rebound between calls); callers compute it once
per component (``Component.spec``, ``BaseComponent.spec``, the dynamic engine's per-run plan).
What cannot change for a given object is cached by object identity: a code object's source and
name scan, a class's source, a module source's statement index. ``code_of_value`` caches a
version by identity while every binding its walk read still holds (``_still``).
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import datetime
import dis
import enum
import functools
import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import linecache
import os
import re
import site
import sys
import sysconfig
import textwrap
import types
import typing
import weakref
from collections import deque
from collections.abc import Iterator
from typing import Any, Generic, NamedTuple, TypeVar

_BUILTINS = vars(builtins)
_MISSING: Any = object()        # a name found unbound
_T = TypeVar("_T")


# --- what is user code -------------------------------------------------------------------------

def _lib_prefixes() -> tuple[str, ...]:
    paths: set[str | None] = set()
    for scheme in (None, f"{os.name}_user"):
        try:
            got = sysconfig.get_paths() if scheme is None else sysconfig.get_paths(scheme)
        except (KeyError, ValueError):
            continue
        paths.update(got.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib"))
    try:
        paths.update(site.getsitepackages())
        paths.add(site.getusersitepackages())
    except AttributeError:      # old virtualenv's site module
        pass
    out = set()
    for p in paths:
        if p:
            out.add(os.path.join(p, ""))
            out.add(os.path.join(os.path.realpath(p), ""))
    return tuple(sorted(out))


_LIB_PREFIXES = _lib_prefixes()


@functools.lru_cache(maxsize=4096)
def _is_lib_path(path: str) -> bool:
    return path.startswith(_LIB_PREFIXES) or os.path.realpath(path).startswith(_LIB_PREFIXES)


def _is_twingraph(modname: object) -> bool:
    return isinstance(modname, str) and (modname == "twingraph" or modname.startswith("twingraph."))


def _is_user_module(m: types.ModuleType) -> bool:
    ns = vars(m)
    name = ns.get("__name__")
    if _is_twingraph(name) or name in sys.builtin_module_names:
        return False
    file = ns.get("__file__")
    if isinstance(file, str) and file:
        return not _is_lib_path(file)
    spec = ns.get("__spec__")
    if getattr(spec, "origin", None) in ("built-in", "frozen"):
        return False
    paths = [p for p in (ns.get("__path__") or ()) if isinstance(p, str)]
    if paths:               # a namespace package
        return not all(_is_lib_path(p) for p in paths)
    return True             # no file: __main__ of ``python -c``, modules made at runtime


def _is_user_named(modname: object, fallback_file: str | None) -> bool:
    """Whether code from module ``modname`` is user code; ``fallback_file`` (a function's
    ``co_filename``) decides when the module is unknown or is ``builtins`` (code run by
    ``exec`` without a ``__name__``)."""
    if isinstance(modname, str):
        if _is_twingraph(modname):
            return False
        m = sys.modules.get(modname)
        if modname != "builtins" and isinstance(m, types.ModuleType):
            return _is_user_module(m)
        if modname == "builtins" and fallback_file is None:
            return False
    return fallback_file is None or not _is_lib_path(fallback_file)


def _is_user_function(f: types.FunctionType) -> bool:
    # Library code that took a user function's name and module (``functools.update_wrapper``:
    # ``singledispatch``'s wrapper) is library code: its file says so.
    filename = f.__code__.co_filename
    if not filename.startswith("<") and _is_lib_path(filename):
        return False
    return _is_user_named(f.__module__, filename)


def _is_user_class(c: type) -> bool:
    modname = c.__dict__.get("__module__", getattr(c, "__module__", None))
    m = sys.modules.get(modname) if isinstance(modname, str) else None
    # A class whose module is not loaded (C types often name a public package) is library code.
    return isinstance(m, types.ModuleType) and not _is_twingraph(modname) \
        and modname != "builtins" and _is_user_module(m)


# --- caches by object identity (never hashed: ids only find entries) ---------------------------

class _IdCache(Generic[_T]):
    """A cache keyed by object identity that forgets an entry when its object dies."""

    def __init__(self) -> None:
        self._d: dict[int, tuple[weakref.ref[Any], _T]] = {}

    def get(self, obj: Any) -> _T | None:
        e = self._d.get(id(obj))
        return e[1] if e is not None and e[0]() is obj else None

    def put(self, obj: Any, value: _T) -> _T:
        k, d = id(obj), self._d

        def drop(ref: weakref.ref[Any]) -> None:
            e = d.get(k)
            if e is not None and e[0] is ref:
                d.pop(k, None)
        try:
            d[k] = (weakref.ref(obj, drop), value)
        except TypeError:       # not weak-referenceable: just don't cache
            pass
        return value


_TEXT_CACHE: _IdCache[bytes] = _IdCache()
_SCAN_CACHE: _IdCache[_Names] = _IdCache()
_CLASS_CACHE: _IdCache[str] = _IdCache()       # "" when the class has no source
_INDEX_CACHE: dict[tuple[str, str], dict[str, list[_Entry]]] = {}


# --- canonical encoding of plain data ----------------------------------------------------------

class _NotPlain(Exception):
    pass


_STR_TYPES = frozenset({
    "decimal.Decimal", "fractions.Fraction", "uuid.UUID", "datetime.date", "datetime.datetime",
    "datetime.time", "datetime.timedelta", "pathlib.Path", "pathlib.PosixPath",
    "pathlib.WindowsPath", "pathlib.PurePath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath",
    "pathlib._local.PurePath", "pathlib._local.Path",      # Python 3.13
})
_PATTERN = type(re.compile(""))
_MAX_DEPTH = 100


def _tname(t: type) -> str:
    return f"{getattr(t, '__module__', '?')}.{getattr(t, '__qualname__', '?')}"


class _Enc:
    """Writes a canonical, tagged, length-prefixed encoding of plain data into a hash; raises
    ``_NotPlain`` for anything else (and for cycles or nesting deeper than ``_MAX_DEPTH``)."""

    def __init__(self) -> None:
        self.mutable = False
        self.path: set[int] = set()
        # Classes whose instances were encoded by value (enum members, named tuples, frozen
        # dataclasses): their methods are code the value's reader may call.
        self.classes: set[type] = set()

    def digest(self, v: Any, depth: int) -> bytes:
        h = hashlib.sha256()
        self.enc(v, h, depth)
        return h.digest()

    def enc(self, v: Any, h: Any, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise _NotPlain
        t = type(v)
        w = h.update
        if v is None:
            w(b"N")
        elif v is Ellipsis:
            w(b".")
        elif t is bool:
            w(b"T" if v else b"F")
        elif t is int:
            w(b"i" + format(v, "x").encode() + b";")
        elif t is float:
            w(b"f" + v.hex().encode() + b";")
        elif t is complex:
            w(b"c" + v.real.hex().encode() + b"," + v.imag.hex().encode() + b";")
        elif t is str or t is bytes or t is bytearray:
            b = v.encode("utf-8", "surrogatepass") if t is str else bytes(v)
            self.mutable |= t is bytearray
            w({str: b"s", bytes: b"b", bytearray: b"B"}[t] + len(b).to_bytes(8, "big") + b)
        elif t is tuple or t is list or (issubclass(t, tuple) and hasattr(t, "_fields")):
            tag = b"(" if t is tuple else b"[" if t is list else b"t" + _tname(t).encode() + b"\0"
            self.mutable |= t is list
            if t is not tuple and t is not list:
                self.classes.add(t)
            self._items(tag, v, h, depth, ordered=True)
        elif t is set or t is frozenset:
            self.mutable |= t is set
            self._items(b"{" if t is frozenset else b"<", v, h, depth, ordered=False)
        elif t is dict:
            self.mutable = True
            self._enter(v)
            pairs = sorted((self.digest(k, depth + 1), self.digest(x, depth + 1))
                           for k, x in v.items())
            self.path.discard(id(v))
            w(b"d" + len(pairs).to_bytes(8, "big") + b"".join(k + x for k, x in pairs))
        elif issubclass(t, enum.Enum):
            self.classes.add(t)
            w(b"e" + _tname(t).encode() + b"\0" + str(v.name).encode() + b"\0")
            self.enc(v.value, h, depth + 1)
        elif (hasattr(t, "__dataclass_fields__") and not issubclass(t, type)
              and getattr(getattr(t, "__dataclass_params__", None), "frozen", False)):
            self._enter(v)
            self.classes.add(t)
            w(b"D" + _tname(t).encode() + b"\0")
            for f in dataclasses.fields(v):
                w(f.name.encode() + b"=")
                self.enc(getattr(v, f.name), h, depth + 1)
            self.path.discard(id(v))
        elif t is range:
            w(b"r")
            for x in (v.start, v.stop, v.step):
                self.enc(x, h, depth + 1)
        elif t is _PATTERN:
            w(b"p")
            self.enc(v.pattern, h, depth + 1)
            self.enc(v.flags, h, depth + 1)
        elif any(_tname(b) in _STR_TYPES for b in t.__mro__):
            b = str(v).encode("utf-8", "surrogatepass")
            tz = getattr(v, "tzinfo", None)
            if tz is not None:
                # ``str`` shows the offset only: Europe/Paris and Africa/Lagos at +01:00 one
                # day are other zones another (and ``fold`` tells a repeated hour apart)
                b += b"\0" + _zone_text(tz) + b"\0" + str(getattr(v, "fold", 0)).encode()
            w(b"x" + _tname(t).encode() + b"\0" + len(b).to_bytes(8, "big") + b)
        elif issubclass(t, datetime.tzinfo):
            # a zone (``tz=ZoneInfo("Europe/Paris")``, ``timezone.utc``): by what it names
            b = _zone_text(v)
            w(b"z" + _tname(t).encode() + b"\0" + len(b).to_bytes(8, "big") + b)
        else:
            raise _NotPlain

    def _enter(self, v: Any) -> None:
        if id(v) in self.path:
            raise _NotPlain         # a self-referencing container
        self.path.add(id(v))

    def _items(self, tag: bytes, v: Any, h: Any, depth: int, ordered: bool) -> None:
        self._enter(v)
        h.update(tag + len(v).to_bytes(8, "big"))
        if ordered:
            for x in v:
                self.enc(x, h, depth + 1)
        else:
            h.update(b"".join(sorted(self.digest(x, depth + 1) for x in v)))
        self.path.discard(id(v))


def _zone_text(tz: Any) -> bytes:
    """A time zone as a key sees it: its ``repr`` when its class has one of its own
    (``ZoneInfo(key=...)``, ``timezone(...)``); else its class, name and offset now (the
    default ``repr`` holds a memory address: a new key in every process)."""
    t = type(tz)
    if t.__repr__ is not object.__repr__:
        return repr(tz).encode("utf-8", "surrogatepass")
    try:
        said = f"{_tname(t)}:{tz.tzname(None)}:{tz.utcoffset(None)}:{tz.dst(None)}"
    except Exception:  # noqa: BLE001 - a zone that needs a datetime: by its class
        said = _tname(t)
    return said.encode("utf-8", "surrogatepass")


class _Plain(NamedTuple):
    digest: bytes
    mutable: bool
    classes: list[type]         # of instances encoded by value, sorted by name


def _plain(v: Any) -> _Plain | None:
    """The digest of plain data (and whether it is mutable, and the classes of the instances
    in it), or None if ``v`` is not plain data."""
    e = _Enc()
    try:
        digest = e.digest(v, 0)
    except (_NotPlain, RecursionError):
        return None
    return _Plain(digest, e.mutable, sorted(e.classes, key=_tname))


# --- per code object: text and the names it reads ----------------------------------------------

class _Names(NamedTuple):
    globals: frozenset[str]     # read as globals (LOAD_GLOBAL / LOAD_NAME)
    attrs: frozenset[str]       # read as attributes (LOAD_ATTR / LOAD_METHOD / IMPORT_FROM)
    # modules imported in the body (IMPORT_NAME): (name, level of a relative import, names
    # taken from it by ``from ... import``)
    imports: frozenset[tuple[str, int, tuple[str, ...]]]


_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_ATTR_OPS = frozenset({"LOAD_ATTR", "LOAD_METHOD", "LOAD_SUPER_ATTR", "IMPORT_FROM",
                       "STORE_ATTR", "DELETE_ATTR"})
_STORE_OPS = frozenset({"STORE_GLOBAL", "DELETE_GLOBAL", "STORE_NAME", "DELETE_NAME"})


def _scan(code: types.CodeType) -> _Names:
    got = _SCAN_CACHE.get(code)
    if got is not None:
        return got
    g: set[str] = set()
    a: set[str] = set()
    imports: set[tuple[str, int, tuple[str, ...]]] = set()
    other: set[str] = set()
    stack = [code]
    while stack:
        c = stack.pop()
        classified: set[str] = set()
        consts: list[Any] = [None, None]      # the last two constants loaded
        try:
            for ins in dis.get_instructions(c):
                if ins.opname == "LOAD_CONST":
                    consts = [consts[1], ins.argval]
                if not isinstance(ins.argval, str):
                    continue
                if ins.opname in _GLOBAL_OPS:
                    g.add(ins.argval)
                elif ins.opname in _ATTR_OPS:
                    a.add(ins.argval)
                elif ins.opname == "IMPORT_NAME":
                    # ``level`` and ``fromlist`` are the two constants loaded before it
                    level = consts[0] if type(consts[0]) is int else 0
                    fromlist = tuple(x for x in consts[1] or () if isinstance(x, str)) \
                        if isinstance(consts[1], tuple) else ()
                    imports.add((ins.argval, level, fromlist))
                elif ins.opname not in _STORE_OPS:
                    continue
                classified.add(ins.argval)
        except Exception:       # an unknown bytecode shape: every name counts as both
            pass
        other |= set(c.co_names) - classified
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    # Names no known instruction explained: treat them as both (over-inclusion is safe).
    return _SCAN_CACHE.put(code, _Names(frozenset(g | other), frozenset(a | other),
                                        frozenset(imports)))


def _code_bytes(code: types.CodeType, with_bytecode: bool = True) -> bytes:
    h = hashlib.sha256()
    if with_bytecode:
        h.update(code.co_code)
    for k in code.co_consts:
        if isinstance(k, types.CodeType):
            h.update(b"code" + _code_bytes(k, with_bytecode))
        else:
            p = _plain(k)
            h.update(p[0] if p is not None else _tname(type(k)).encode())
    h.update("\0".join(code.co_names).encode() + b"\1" + "\0".join(code.co_varnames).encode())
    return h.digest()


def _own_text(code: types.CodeType) -> bytes:
    """The source of exactly this code object (not of what a decorator wraps); its bytecode,
    constants and names when there is no source. Lambdas add their constants and names, as
    two lambdas on one line share the line as their source."""
    got = _TEXT_CACHE.get(code)
    if got is not None:
        return got
    try:
        lines = _PINNED_FILES.get(code.co_filename)
        if lines is not None and 0 < code.co_firstlineno <= len(lines):
            # the text its module was loaded from (``_source_lines``), not the file as it
            # may have been edited since without a reload
            src = "".join(inspect.getblock(lines[code.co_firstlineno - 1:]))
        else:
            src = inspect.getsource(code)
        text = _without_decorators(src).encode("utf-8", "surrogatepass")
        if code.co_name == "<lambda>":
            # The block found is the lambda's first line only: a body that goes on below it
            # (``lambda v:`` then ``v * 3``) is read to the last line its code has.
            last = max((p[1] for p in code.co_positions() if p[1] is not None),
                       default=code.co_firstlineno)
            if last > code.co_firstlineno:
                every = lines if lines is not None else linecache.getlines(code.co_filename)
                text += b"\0" + "".join(every[code.co_firstlineno - 1:last]).encode(
                    "utf-8", "surrogatepass")
            text += b"\0" + _code_bytes(code, with_bytecode=False)
    except Exception:           # OSError, TypeError, IndexError from broken files...
        text = b"\0bytecode\0" + _code_bytes(code)
    return _TEXT_CACHE.put(code, text)


#: Decorators whose arguments are settings, not code: TwinGraph's own.
_OWN_DECORATORS = frozenset({"component", "pipeline", "operation"})


def _without_decorators(src: str) -> str:
    """A function's source from its ``def`` line on, after the decorators that are not
    TwinGraph's. ``@component(labels=..., timeout=...)`` holds settings that do not change
    what the function computes (those that do are in the key's config): changing a label must
    not re-run the component. Another decorator's arguments may (``@scaled(2)`` to
    ``@scaled(3)`` kept the version, and served the old result). Text that does not parse is
    kept whole."""
    if not src.lstrip().startswith("@"):
        return src
    dedented = textwrap.dedent(src)
    try:
        tree = ast.parse(dedented)
    except SyntaxError:
        return src
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return src
    rest = "".join(src.splitlines(keepends=True)[node.lineno - 1:])
    kept = [d for d in node.decorator_list if _decorator_name(d) not in _OWN_DECORATORS]
    if not kept:
        return rest
    return "".join(f"@{ast.get_source_segment(dedented, d) or ast.unparse(d)}\n"
                   for d in kept) + rest


def _decorator_name(node: ast.expr) -> str | None:
    """``component`` for ``@component``, ``@component(...)``, ``@twingraph.component``."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def _class_source(c: type) -> str | None:
    got = _CLASS_CACHE.get(c)
    if got is None:
        try:
            got = _indexed_class_source(c)
            if got is None:
                got = inspect.getsource(c)
        except Exception:
            got = ""
        _CLASS_CACHE.put(c, got)
    return got or None


# file -> (its lines as linecache holds them, qualname -> first lines of its classes, 0-based)
_CLASS_LINES: dict[str, tuple[list[str], dict[str, list[int]]]] = {}
# Classes whose source is every class statement of their name (none could be told for theirs):
# their mutable attributes count by value (``_Walk.class_body``).
_AMBIGUOUS: "weakref.WeakSet[type]" = weakref.WeakSet()


def _indexed_class_source(c: type) -> str | None:
    """``inspect.getsource(c)``, the same text, from one parse of its file for all its
    classes: on Python 3.11 each ``getsource`` of a class parses the whole module again, and
    a version walking 300 classes of a 1,500-class module took 20 s. The start line is found
    as ``inspect.findsource`` finds it (the first class of that qualified name, decorators
    included), the end by ``inspect.getblock``, as ``getsource`` does. None: not found here
    (``inspect.getsource`` then decides).

    A name bound by several class statements (``if BIG: class M: ...`` / ``else: class M:
    ...``, or one after another) is the statement holding one of its methods' code; with no
    method to tell, it is all of them (each dedented), and the class is ``_AMBIGUOUS``: its
    text was the first statement's, whichever one was bound."""
    if inspect.getattr_static(c, "__wrapped__", None) is not None:
        return None          # getsource unwraps it first: left to it
    file = inspect.getsourcefile(c)
    module = sys.modules.get(c.__module__)
    if not file or module is None:
        return None
    lines = _source_lines(file, vars(module))
    if not lines:
        return None
    cached = _CLASS_LINES.get(file)
    if cached is None or cached[0] is not lines:
        starts: dict[str, list[int]] = {}
        stack: list[str] = []

        def visit(node: ast.AST) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    stack.extend((child.name, "<locals>"))
                    visit(child)
                    del stack[-2:]
                elif isinstance(child, ast.ClassDef):
                    stack.append(child.name)
                    first = child.decorator_list[0].lineno if child.decorator_list \
                        else child.lineno
                    starts.setdefault(".".join(stack), []).append(first - 1)
                    visit(child)
                    stack.pop()
                else:
                    visit(child)
        try:
            visit(ast.parse("".join(lines)))
        except (SyntaxError, ValueError, RecursionError):
            return None
        if len(_CLASS_LINES) >= 64:
            _CLASS_LINES.clear()
        cached = _CLASS_LINES[file] = (lines, starts)
    found = cached[1].get(c.__qualname__)
    if not found:
        return None
    blocks = [(start, inspect.getblock(lines[start:])) for start in found]
    if len(blocks) == 1:
        return "".join(blocks[0][1])
    for v in vars(c).values():         # a method's first line tells which statement it was
        code = getattr(getattr(v, "__func__", v), "__code__", None)
        if isinstance(code, types.CodeType) and code.co_filename == file:
            line = code.co_firstlineno - 1
            for start, block in blocks:
                if start <= line < start + len(block):
                    return "".join(block)
    _AMBIGUOUS.add(c)
    return "\n".join(textwrap.dedent("".join(block)) for _, block in blocks)


# --- module source: the top-level statements that mention a name -------------------------------

def _leaf_statements(stmts: list[ast.stmt], guards: tuple[ast.AST, ...] = ()
                     ) -> Iterator[tuple[ast.stmt, tuple[ast.AST, ...]]]:
    """The simple statements of a module body, each with what decides whether it runs: the
    tests of the ``if`` statements it is under, and the body of a ``try`` it is in (which
    handler runs, or where the body stops, is decided there). Which branch binds a name is
    part of how it is defined (``if BIG: W = [10]`` / ``else: W = [2]``, or ``try: assert BIG;
    W = [10]`` / ``except AssertionError: W = [2]``, then ``BIG`` edited: the statements of
    ``W`` read the same)."""
    for s in stmts:
        if isinstance(s, ast.If):
            inner = (*guards, s.test)
            yield from _leaf_statements(s.body, inner)
            yield from _leaf_statements(s.orelse, inner)
        elif isinstance(s, ast.Try) or type(s).__name__ == "TryStar":
            inner = (*guards, *s.body)                # type: ignore[attr-defined]
            for field in ("body", "orelse", "finalbody"):
                yield from _leaf_statements(getattr(s, field, None) or [], inner)
            for handler in getattr(s, "handlers", None) or []:
                yield from _leaf_statements(handler.body, inner)
        elif isinstance(s, (ast.With, ast.AsyncWith)):
            yield from _leaf_statements(s.body, guards)
        else:
            yield s, guards


def _resolve(ns: dict[str, Any], module: str | None, level: int) -> str:
    if not level:
        return module or ""
    package = ns.get("__package__") or ""
    if not isinstance(package, str):
        package = ""
    base = package.rsplit(".", level - 1)[0] if level > 1 else package
    return f"{base}.{module}" if module else base


def _mentions(s: ast.stmt, ns: dict[str, Any]) -> dict[str, tuple[str, str] | None]:
    """Names a top-level statement binds or uses, each with where it imports it from."""
    if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {s.name: None}
    if isinstance(s, ast.Import):
        return {(al.asname or al.name.split(".")[0]): None for al in s.names}
    if isinstance(s, ast.ImportFrom):
        src = _resolve(ns, s.module, s.level)
        return {(al.asname or al.name): (src, al.name) for al in s.names if al.name != "*"}
    return {n.id: None for n in ast.walk(s) if isinstance(n, ast.Name)}


class _Entry(NamedTuple):
    """A top-level statement that mentions a name: its text, where it imports the name from
    (``from m import name``), and the other names and attribute names it reads."""
    text: str
    origin: tuple[str, str] | None
    reads: frozenset[str]
    attrs: frozenset[str]


def _reads(s: ast.stmt) -> tuple[frozenset[str], frozenset[str]]:
    """The names and attribute names an assignment or a call statement reads (a def, a class
    or an import reads none here: they are followed as what they bind). A decorated def
    reads what its decorators, defaults and body read: what it binds may be a library
    object that hides the function (``@np.vectorize``: no ``__wrapped__``), so that the
    function's globals (``CUTOFF``, ``relu``) are followed through its statement."""
    if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.decorator_list:
        return _def_reads(s)
    if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import,
                      ast.ImportFrom)):
        return frozenset(), frozenset()
    names, attrs = set(), set()
    for n in ast.walk(s):
        if isinstance(n, ast.Name):
            names.add(n.id)
        elif isinstance(n, ast.Attribute):
            attrs.add(n.attr)
    return frozenset(names), frozenset(attrs)


#: The index's entry for decorated definitions: (name, the names its decorators call).
_DECORATED = "\0decorated"
#: The index's entries for star imports (``from m import *``: origin ``(m, "*")``).
_STAR = "\0star"


def _decorator_names(s: ast.stmt) -> frozenset[str]:
    """The module-level names a def's or class's decorators are (``@register`` and
    ``@register("inc")`` both give ``register``)."""
    if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return frozenset()
    out = set()
    for d in s.decorator_list:
        if isinstance(d, ast.Call):
            d = d.func
        if isinstance(d, ast.Name):
            out.add(d.id)
    return frozenset(out)


def _registered(ns: dict[str, Any], name: str) -> list[str]:
    """Definitions of ``ns``'s module whose decorator is user code that reads global ``name``:
    a registry filled by a decorator (``REG[key] = fn`` inside ``register``)."""
    index = _module_index(ns)
    out = []
    for e in (index or {}).get(_DECORATED, ()):
        for d in sorted(e.reads):
            fn = ns.get(d)
            if isinstance(fn, types.FunctionType) and _is_user_function(fn) \
                    and name in _scan(fn.__code__).globals:
                out.append(e.text)
                break
    return out


#: A loaded module's source lines, kept by its ``__spec__`` (replaced by a reload): (file, lines).
_PINNED: _IdCache[tuple[str, list[str]]] = _IdCache()


#: file -> the lines its module was last loaded from, as ``_source_lines`` pinned them
_PINNED_FILES: dict[str, list[str]] = {}


def _source_lines(file: str, ns: dict[str, Any]) -> list[str]:
    """The lines of module ``ns``'s file as the walk first read them for this module object,
    until the module is reloaded (``importlib.reload`` gives it a new ``__spec__``) or imported
    anew. A file edited on disk while the process keeps running the code it loaded before (a
    notebook, a server) must not change the version: the version would describe code that
    does not run, and the old code's results would be stored under the new code's key (a
    fresh process with the new code then hit them). Read from disk (``linecache``) when the
    module has no spec (``__main__`` of a script) or was never read before: a file edited
    between its import and the first version taken in the process is still read as edited."""
    spec = ns.get("__spec__")
    if spec is not None:
        got = _PINNED.get(spec)
        if got is not None and got[0] == file:
            _PINNED_FILES[file] = got[1]     # the module object walked now is this one
            return got[1]
    linecache.checkcache(file)
    lines = linecache.getlines(file, ns)
    if spec is not None and lines:
        _PINNED.put(spec, (file, lines))
        _PINNED_FILES[file] = lines     # for the text of its functions (``_own_text``)
    return lines


#: id(lines) -> (lines, index): the index of a text already indexed, found without joining
#: its lines again (a module of a thousand classes was joined once per class)
_INDEX_BY_LINES: dict[int, tuple[list[str], dict[str, list[_Entry]]]] = {}


def _module_index(ns: dict[str, Any]) -> dict[str, list[_Entry]] | None:
    file = ns.get("__file__")
    if not isinstance(file, str) or not file:
        return None
    lines = _source_lines(file, ns)
    if not lines:
        return None
    known = _INDEX_BY_LINES.get(id(lines))
    if known is not None and known[0] is lines:     # the same text as last time: no join
        return known[1]
    src = "".join(lines)
    entry = linecache.cache.get(file)
    if entry is not None and len(entry) == 4 and entry[2] is lines and entry[1] is not None:
        key: tuple[str, str] = (file, f"{entry[0]}:{entry[1]}")     # size, mtime (checked above)
    else:
        key = (file, hashlib.sha256(src.encode("utf-8", "surrogatepass")).hexdigest())
    index = _INDEX_CACHE.get(key)
    if index is not None:
        if len(_INDEX_BY_LINES) >= 256:
            _INDEX_BY_LINES.clear()
        _INDEX_BY_LINES[id(lines)] = (lines, index)
        return index
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return None
    index = {}
    for s, guards in _leaf_statements(tree.body):
        text = "".join(lines[s.lineno - 1:s.end_lineno or s.lineno])
        reads, attrs = _reads(s)
        if guards:     # under ``if`` tests, in a ``try``: their text, and what they read
            text = "".join(f"if {ast.unparse(g)}:\n" if isinstance(g, ast.expr) else
                           f"try: {ast.unparse(g)}\n" for g in guards) + text
            more = {n.id for g in guards for n in ast.walk(g) if isinstance(n, ast.Name)}
            more_attrs = {n.attr for g in guards for n in ast.walk(g)
                          if isinstance(n, ast.Attribute)}
            reads, attrs = reads | more, attrs | more_attrs
        for name, origin in _mentions(s, ns).items():
            index.setdefault(name, []).append(_Entry(text, origin, reads, attrs))
        if isinstance(s, ast.ImportFrom) and any(al.name == "*" for al in s.names):
            # ``from settings import *``: a name no statement here mentions is looked for
            # there (``_definition``)
            index.setdefault(_STAR, []).append(_Entry(text, (_resolve(ns, s.module, s.level),
                                                             "*"), reads, attrs))
        decorators = _decorator_names(s)
        if decorators:
            index.setdefault(_DECORATED, []).append(_Entry(s.name, None, decorators,  # type: ignore[attr-defined]
                                                           frozenset()))
    if len(_INDEX_CACHE) >= 256:
        try:
            _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
        except (RuntimeError, StopIteration, KeyError):    # another thread got there first
            pass
    _INDEX_CACHE[key] = index
    if len(_INDEX_BY_LINES) >= 256:
        _INDEX_BY_LINES.clear()
    _INDEX_BY_LINES[id(lines)] = (lines, index)
    return index


def _def_reads(s: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[frozenset[str], frozenset[str]]:
    """The global names (and attribute names) a def statement reads: its decorators, its
    defaults and its body, less its parameters and the names it binds (unless declared
    ``global``). Over-inclusion (a local named like a global) costs a miss, never a hit."""
    names: set[str] = set()
    stored: set[str] = set()
    declared: set[str] = set()
    attrs: set[str] = set()
    a = s.args
    for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
        if arg is not None:
            stored.add(arg.arg)
    for n in ast.walk(s):
        if isinstance(n, ast.Name):
            (names if isinstance(n.ctx, ast.Load) else stored).add(n.id)
        elif isinstance(n, ast.Attribute):
            attrs.add(n.attr)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            declared.update(n.names)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and n is not s:
            stored.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            stored.update((al.asname or al.name).split(".")[0] for al in n.names)
        elif isinstance(n, ast.arg):
            stored.add(n.arg)           # a nested def's or lambda's parameters
    return frozenset(names - (stored - declared)), frozenset(attrs)


_CLASS_READS: _IdCache[tuple[tuple[str, ...], frozenset[str]]] = _IdCache()


def _class_reads(c: type, source: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """The names (sorted) and attribute names ``c``'s class statement reads when it runs: its
    decorators, bases and keywords, and its body's statements outside method bodies (methods
    are walked as functions; their decorators and defaults are read here). A nested class's
    body is its own (walked as that class). Names the body binds are kept as well: a global
    of the same name may be read before the binding (over-inclusion is a miss, never a hit)."""
    got = _CLASS_READS.get(c)
    if got is not None:
        return got
    names: set[str] = set()
    attrs: set[str] = set()
    try:
        tree = ast.parse(textwrap.dedent(source))
        nodes = list(tree.body)        # (several, for a class of several statements)
    except (SyntaxError, ValueError, RecursionError):
        nodes = []
    for node in nodes:
        if not isinstance(node, ast.ClassDef):
            continue
        exprs: list[ast.AST] = [*node.decorator_list, *node.bases, *node.keywords]
        stack: list[ast.stmt] = list(node.body)
        while stack:
            st = stack.pop()
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
                exprs.extend(st.decorator_list)
                exprs.extend(st.args.defaults)
                exprs.extend(d for d in st.args.kw_defaults if d is not None)
            elif isinstance(st, ast.ClassDef):
                exprs.extend((*st.decorator_list, *st.bases, *st.keywords))
            elif isinstance(st, ast.AnnAssign):
                # a field's annotation is not followed (``child: Node`` in every dataclass
                # would pull the whole class graph in, as methods' annotations did)
                if st.value is not None:
                    exprs.append(st.value)
            elif isinstance(st, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                # statements holding statements (``if SLOW: steps = ...``): their tests and
                # iterables here, their bodies (maybe defs) as statements
                for x in (getattr(st, f) for f in st._fields):
                    if isinstance(x, list) and x and isinstance(x[0], ast.stmt):
                        stack.extend(x)
                    elif isinstance(x, list) and x and isinstance(x[0], ast.excepthandler):
                        for hd in x:
                            if hd.type is not None:
                                exprs.append(hd.type)
                            stack.extend(hd.body)
                    elif isinstance(x, ast.AST):
                        exprs.append(x)
                    elif isinstance(x, list):
                        exprs.extend(y for y in x if isinstance(y, ast.AST))
            else:
                exprs.append(st)
        for e in exprs:
            for n in ast.walk(e):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
                    names.add(n.id)
                elif isinstance(n, ast.Attribute):
                    attrs.add(n.attr)
    got = (tuple(sorted(names)), frozenset(attrs))
    _CLASS_READS.put(c, got)
    return got


class _Defined(NamedTuple):
    """How a module-level value is defined: the text of the statements that bind or mutate it,
    and the names those statements read (each with the namespace to look it up in)."""
    text: str
    reads: list[tuple[dict[str, Any], str, frozenset[str]]]


def _definition(ns: dict[str, Any], name: str, depth: int = 0) -> _Defined | None:
    """The top-level statements of ``ns``'s module that mention ``name``, following ``from m
    import name`` into user module ``m``; None when the source is not available."""
    index = _module_index(ns)
    entries = index.get(name) if index is not None else None
    if not entries:
        # bound by a star import (no statement here names it): its definition there
        for e in (index or {}).get(_STAR, ()):
            m = sys.modules.get(e.origin[0]) if e.origin is not None else None
            if depth < 4 and isinstance(m, types.ModuleType) and _is_user_module(m) \
                    and name in vars(m):
                sub = _definition(vars(m), name, depth + 1)
                if sub is not None:
                    return _Defined(f"{e.text}\n{sub.text}", sub.reads)
        return None
    parts: list[str] = []
    reads: list[tuple[dict[str, Any], str, frozenset[str]]] = []
    for e in entries:
        parts.append(e.text)
        reads.extend((ns, n, e.attrs) for n in sorted(e.reads) if n != name)
        if e.origin is not None and depth < 4:
            m = sys.modules.get(e.origin[0])
            if isinstance(m, types.ModuleType) and _is_user_module(m):
                sub = _definition(vars(m), e.origin[1], depth + 1)
                if sub is not None:
                    parts.append(f"from {e.origin[0]}:\n{sub.text}")
                    reads.extend(sub.reads)
    return _Defined("\n".join(parts), reads)


# --- the walk ----------------------------------------------------------------------------------

def _pack(*parts: str | bytes) -> bytes:
    out = []
    for p in parts:
        b = p.encode("utf-8", "surrogatepass") if isinstance(p, str) else p
        out.append(len(b).to_bytes(8, "big") + b)
    return b"".join(out)


_BUILTIN_CALLABLES = (types.BuiltinFunctionType, types.MethodDescriptorType,
                      types.WrapperDescriptorType, types.MethodWrapperType,
                      types.ClassMethodDescriptorType)


_MUTABLE = frozenset({list, dict, set, bytearray})
_CODE_LIKE = (types.FunctionType, staticmethod, classmethod, property, functools.partialmethod,
              functools.cached_property, type)


class _Walk:
    """One code-version computation. User functions and classes get an ordinal when first met
    (deterministic: the walk follows sorted names and source order) and their bodies are hashed
    once, from a queue, so shared helpers and cycles cost nothing more."""

    def __init__(self, values: bool = True) -> None:
        self.h = hashlib.sha256()
        self.values = values                # mutable data with no definition: by value
        self.class_reads_seen: dict[tuple[int, str, frozenset[str]], int] = {}
        self.ordinal: dict[int, int] = {}
        self.keep: list[Any] = []           # keeps ids stable while the walk lasts
        self.todo: deque[Any] = deque()
        self.open_modules: set[tuple[int, frozenset[str]]] = set()
        self.open_defs: set[tuple[int, str]] = set()
        # functions of the class whose version this is and of its user bases (``execute``)
        self.own_methods: set[int] = set()
        self.depth = 0
        # (namespace, name) -> what the walk found bound there (``_MISSING``: nothing): the
        # version holds while each is still bound to the same object (``_still``)
        self.deps: dict[tuple[int, str], tuple[dict[str, Any], str, Any]] = {}

    def lookup(self, ns: dict[str, Any], name: str) -> Any:
        """``ns[name]`` (``_MISSING`` if unbound), recorded as something the version read."""
        v = ns.get(name, _MISSING)
        self.deps.setdefault((id(ns), name), (ns, name, v))
        return v

    def put(self, *parts: str | bytes) -> None:
        self.h.update(_pack(*parts))

    def _ref(self, obj: Any) -> int:
        n = self.ordinal.get(id(obj))
        if n is None:
            n = self.ordinal[id(obj)] = len(self.ordinal)
            self.keep.append(obj)
            self.todo.append(obj)
        return n

    def fn_ref(self, f: types.FunctionType, force: bool = False) -> bytes:
        if not force and not _is_user_function(f):
            return _pack("lib-fn", str(f.__module__), f.__qualname__)
        return _pack("fn", str(self._ref(f)))

    def cls_ref(self, c: type, force: bool = False) -> bytes:
        if not force and not _is_user_class(c):
            return _pack("lib-cls", _tname(c))
        return _pack("cls", str(self._ref(c)))

    def value(self, v: Any, attrs: frozenset[str] = frozenset(),
              home: tuple[dict[str, Any], str] | None = None) -> bytes:
        """Describe a value met through a global (``home`` = its module namespace and name), an
        attribute, a closure cell or a default. Type checks use ``type(v)``: proxies that lie
        about ``__class__`` are never asked."""
        if self.depth > _MAX_DEPTH:         # e.g. a cycle of __wrapped__ or partials
            return _pack("too-deep", _tname(type(v)))
        self.depth += 1
        try:
            return self._value(v, attrs, home)
        finally:
            self.depth -= 1

    def _value(self, v: Any, attrs: frozenset[str],
               home: tuple[dict[str, Any], str] | None) -> bytes:
        t = type(v)
        if issubclass(t, types.ModuleType):
            return self.module(v, attrs)
        if issubclass(t, type):
            return self.cls_ref(v)
        if issubclass(t, types.FunctionType):
            if not _is_user_function(v):
                wrapped = _wrapped(v)
                if wrapped is not None:     # a library wrapper around user code
                    # (and its statements: ``proc.register(int, Impl(2))`` registers an
                    # instance, counted by its class alone)
                    return _pack("lib-wrapper", self.fn_ref(v), self.value(wrapped),
                                 *self.registered(v), self._defined_at(home))
            return self.fn_ref(v)
        if issubclass(t, types.MethodType):
            # ... and the statement that made it (``predict = MODEL.predict``, ``MODEL =
            # Model(2)`` edited to 3: the instance counted by its class alone)
            return _pack("method", self.value(v.__self__), self.value(v.__func__),
                         self._defined_at(home))
        if issubclass(t, (staticmethod, classmethod)):
            return _pack(t.__name__, self.value(v.__func__))
        if issubclass(t, property):
            return _pack("property", *(self.value(x) for x in (v.fget, v.fset, v.fdel)))
        if issubclass(t, (functools.partial, functools.partialmethod)):
            kw = v.keywords or {}
            return _pack("partial", self.value(v.func), *(self.value(x) for x in v.args),
                         *(_pack(k, self.value(kw[k])) for k in sorted(kw)),
                         self._defined_at(home))
        if issubclass(t, functools.singledispatchmethod):
            # its default and what it dispatches to (no ``__wrapped__``: it was an object
            # counted by its class)
            reg = getattr(getattr(v, "dispatcher", None), "registry", None) or {}
            return _pack("singledispatchmethod", self.value(v.func),
                         *(_pack(_tname(k), self.value(f)) for k, f in list(reg.items())
                           if isinstance(k, type)))
        if issubclass(t, functools.cached_property):
            return _pack("cached_property", self.value(v.func))
        if issubclass(t, _BUILTIN_CALLABLES):
            # (``lookup = TABLE.get``: its statement reads ``TABLE``)
            return _pack("builtin", str(getattr(v, "__module__", None)),
                         str(getattr(v, "__qualname__", getattr(v, "__name__", "?"))),
                         self._defined_at(home))
        if t in _MUTABLE and home is not None:
            found = self.defined(home)
            if found is not None:           # identified by its definition, not its contents
                return _pack("defined", _tname(t), found)
        data = _plain(v)
        if data is not None:
            if data.mutable and home is not None:
                found = self.defined(home)
                if found is not None:
                    return _pack("defined", _tname(t), found)
            if data.mutable and not self.values:     # ``code_version(values=False)``
                return _pack("mutable", _tname(t), *(self.cls_ref(c) for c in data.classes))
            # ... and the code of the classes in it (``SETTINGS.apply(x)``, ``Op.DOUBLE.run()``)
            return _pack("data", data.digest, *(self.cls_ref(c) for c in data.classes))
        try:
            wrapped = inspect.getattr_static(v, "__wrapped__", None)
        except Exception:
            wrapped = None
        if wrapped is not None and wrapped is not v:
            # a component, a pipeline, an lru_cache...: what it wraps is the code
            return _pack("wrapper", self.cls_ref(t), self.value(wrapped))
        found = self.defined(home) if home is not None else None
        inner = _decorated_function(v, home) if home is not None else None
        if inner is not None:
            # a library decorator without ``__wrapped__`` (``@np.vectorize``: ``pyfunc``)
            return _pack("decorated", self.cls_ref(t), self.value(inner), found or b"")
        return _pack("object", self.cls_ref(t), found or b"")

    def _defined_at(self, home: tuple[dict[str, Any], str] | None) -> bytes:
        """``defined(home)``, or nothing (no home, no source)."""
        return (self.defined(home) if home is not None else None) or b""

    def defined(self, home: tuple[dict[str, Any], str]) -> bytes | None:
        """A module-level value by its definition (``_definition``): the text of its statements
        and what the code they name is (``OPS = {"inc": inc}``, ``REG["k"] = helpers.f``: a
        change in ``inc`` or ``helpers.f`` is a new version too), and the definitions a
        decorator that reads it registers (``@register("inc")``). Runtime contents are not read.
        None when the module's source is not available."""
        found = _definition(*home)
        if found is None:
            return None
        key = (id(home[0]), home[1])
        if key in self.open_defs:            # ``A = [B]`` and ``B.append(A)``
            return _pack("defined-cycle", home[1])
        self.open_defs.add(key)
        try:
            parts = []
            reads = [*found.reads, *((home[0], d, frozenset()) for d in _registered(*home))]
            for ns, name, attrs in reads:
                if ns is not home[0] or name != home[1]:
                    v = self.lookup(ns, name)
                    if v is not _MISSING:
                        parts.append(_pack(name, self.value(v, attrs, (ns, name))))
            return _pack(found.text, *parts)
        finally:
            self.open_defs.discard(key)

    def registered(self, v: Any) -> list[bytes]:
        """The implementations a ``functools.singledispatch`` function dispatches to (its
        ``registry``: type -> function), by type name."""
        try:
            registry = inspect.getattr_static(v, "registry", None)
            items = sorted(registry.items(), key=lambda kv: _tname(kv[0])) \
                if isinstance(registry, types.MappingProxyType) else []
        except Exception:  # noqa: BLE001 - something else named registry
            return []
        return [_pack(_tname(k), self.value(f)) for k, f in items if isinstance(k, type)]

    def module(self, m: types.ModuleType, attrs: frozenset[str]) -> bytes:
        name = str(vars(m).get("__name__"))
        if not _is_user_module(m):
            return _pack("lib-module", name)
        key = (id(m), attrs)
        if key in self.open_modules:
            return _pack("module-cycle")
        self.open_modules.add(key)
        try:
            ns = vars(m)
            if not any(a in ns for a in attrs):
                # met with no attribute names of its own to follow (an entry of a
                # module-level dict, a class attribute, an argument; the names read beside
                # it are another's: ``{"fast": fast, "sep": os.sep}``): every function and
                # class it defines counts (``fast.run`` edited: nothing of it was walked)
                attrs = attrs | frozenset(k for k, x in list(ns.items())
                                          if type(x) is types.FunctionType
                                          or isinstance(x, type)
                                          if getattr(x, "__module__", None) == name)
            parts: list[bytes] = []
            lazy = False
            lazy_package = "__getattr__" in ns and bool(ns.get("__path__"))
            for a in sorted(attrs):
                v = self.lookup(ns, a)
                if v is not _MISSING:
                    parts.append(_pack(a, self.value(v, attrs, (ns, a))))
                    continue
                text = _submodule_text(m, a) if lazy_package else None
                if text is not None:
                    # A package that makes attributes lazily (PEP 562), whose submodule is
                    # not imported yet: it counts by its file's text, and is not imported
                    # here (importing runs its code). Once imported, it is walked as any
                    # module (what it imports counts too): one new version in that process.
                    parts.append(_pack(a, "submodule-text", text))
                elif "__getattr__" in ns:
                    lazy = True
            if lazy:        # attributes made by the module's __getattr__: its code counts
                parts.append(_pack("__getattr__", self.value(
                    self.lookup(ns, "__getattr__"), attrs, (ns, "__getattr__"))))
            return _pack("module", *parts)
        finally:
            self.open_modules.discard(key)

    def function_body(self, f: types.FunctionType) -> None:
        code = f.__code__
        names = _scan(code)
        g = f.__globals__
        if g.get("__file__") == code.co_filename:
            # its module's text as loaded, pinned (``_own_text`` reads it from there); once
            # per module object: a reload gives a new spec, and the new text is pinned then
            _source_lines(code.co_filename, g)
        self.put("F", str(self.ordinal[id(f)]), f.__qualname__, _own_text(code))
        objects: list[int | str] = []      # defaults that are user objects

        def default(which: int | str, v: Any) -> bytes:
            if not _is_user_object(v):
                return self.value(v, names.attrs)
            objects.append(which)
            return self.value(v, names.attrs, _home_of(v, g))
        for i, v in enumerate(f.__defaults__ or ()):
            self.put("default", default(i, v))
        kw = f.__kwdefaults__ or {}
        for k in sorted(kw):
            self.put("kwdefault", k, default(k, kw[k]))
        if objects:
            # ``cfg=Cfg(scale=SCALE)``, ``cfg=CONFIGS[ENV]``: the object is described by its
            # class (and a binding it was found at, which may be another container holding
            # it, a registry); what its default expression reads counts as well.
            for which, read, attrs in _default_reads(code, objects):
                v = self.lookup(g, read)
                if v is not _MISSING:
                    self.put("default-reads", str(which), read,
                             self.value(v, names.attrs | attrs, (g, read)))
        for name, cell in zip(code.co_freevars, f.__closure__ or ()):
            try:
                v = cell.cell_contents
            except ValueError:
                self.put("cell", name, "<empty>")
                continue
            self.put("cell", name, self.value(
                v, names.attrs, _home_of(v, g) if _is_user_object(v) else None))
        for name in sorted(names.globals):
            v = self.lookup(g, name)
            if v is not _MISSING:
                self.put("global", name, self.value(v, names.attrs, (g, name)))
            elif name not in _BUILTINS:
                self.put("global", name, "<unbound>")
        for modname, level, fromlist in sorted(names.imports):
            self.imported(modname, level, fromlist, g, names.attrs)
        if not _is_method(f) or id(f) in self.own_methods:
            # A method's annotations are not followed: a class's methods annotating other
            # classes would pull in the whole class graph (and its misses) for every
            # component that names one class. A class component's own methods (``execute``,
            # its user bases' too) are its code: theirs are.
            annotated = _annotated_classes(f)
            if annotated:
                self.put("annotations", *(self.cls_ref(c) for c in annotated))

    def imported(self, modname: str, level: int, fromlist: tuple[str, ...],
                 g: dict[str, Any], attrs: frozenset[str]) -> None:
        """A module the body imports: resolved against the function's package if relative
        (``from .helpers import f``, ``from . import helpers``), and imported now if it is
        not yet (the body would import it when it runs; a version taken before that used to
        leave it out, and a change in it then reused a stale result). What ``from ... import``
        takes from a package may be a submodule: imported as well."""
        name = modname
        if level:
            try:
                name = importlib.util.resolve_name("." * level + modname, g.get("__package__"))
            except (ImportError, ValueError, TypeError):
                self.put("import", "." * level + modname, "<unresolved>")
                return
        m = _import(name)
        self.lookup(sys.modules, name)       # imported again (a new module): a new version
        if m is None:
            self.put("import", name, "<not importable>")
            return
        for x in fromlist:
            if x != "*" and not hasattr(m, x):
                _import(f"{name}.{x}")        # a submodule: bound on the package once loaded
        self.put("import", name, self.module(m, attrs | frozenset(fromlist)))

    def class_body(self, c: type) -> None:
        source = _class_source(c)
        self.put("C", str(self.ordinal[id(c)]), c.__qualname__, source or "<no source>")
        for b in c.__bases__:
            self.put("base", self.cls_ref(b))
        ns = c.__dict__
        for name in sorted(k for k in ns if isinstance(k, str)):
            v = ns[name]
            if issubclass(type(v), _CODE_LIKE):
                self.put("attr", name, self.value(v))
                continue
            if name.startswith("__") and name.endswith("__"):
                continue            # __module__, __doc__, __dict__, __dataclass_fields__...
            ambiguous = c in _AMBIGUOUS        # (which statement it was is not known)
            if self.values and isinstance(v, (dict, list, tuple, set, frozenset)):
                # a registry it holds may be filled from outside the class statement
                # (``@Registry.register("d")`` on a module function): the code it holds
                # counts (``_code_items``; a defaultdict or OrderedDict too)
                code = _code_items(v)
                if code:
                    self.put("attr-code", name, *(self.value(x) for x in code))
            if type(v) in _MUTABLE and source is not None and not ambiguous:
                continue            # defined by the class source
            data = _plain(v)
            if data is None:
                self.put("attr", name, self.value(v))
            elif not data.mutable or source is None or ambiguous:
                # immutable values (maybe computed from globals) by value; mutable ones are
                # defined by the class source, when there is one
                self.put("attr", name, _pack("data", data.digest,
                                             *(self.cls_ref(c) for c in data.classes)))
        if source is not None:
            # What the class body reads from its module, followed as a module-level
            # statement's reads are: ``METHODS = {"double": ops.double}``, ``STEPS =
            # (double,)``, ``RELU = functools.partial(relu)``, ``scaler = DEFAULT_SCALER``.
            # The class source holds only the names; what they are is elsewhere.
            m = sys.modules.get(c.__dict__.get("__module__", c.__module__))
            if isinstance(m, types.ModuleType):
                g = vars(m)
                reads, attrs = _class_reads(c, source)
                for name in reads:
                    v = self.lookup(g, name)
                    if v is not _MISSING and v is not c:
                        # Many classes of one module read the same names (a shared schema,
                        # a helper): the first is packed in full, the others name it (the
                        # walk's order is the same every time, and so are the ordinals).
                        seen = self.class_reads_seen
                        key = (id(g), name, attrs)
                        first = seen.get(key)
                        if first is None:
                            seen[key] = len(seen)
                            self.put("class-reads", name, self.value(v, attrs, (g, name)))
                        else:
                            self.put("class-reads-again", name, str(first))

    def drain(self) -> None:
        while self.todo:
            obj = self.todo.popleft()
            if isinstance(obj, type):
                self.class_body(obj)
            else:
                self.function_body(obj)


def _code_items(v: Any) -> list[Any]:
    """The code a class attribute's container holds (a registry a decorator or
    ``__init_subclass__`` fills from outside the class statement): functions, classes, bound
    methods, static and class methods, partials, and instances of user classes, found in
    dicts, lists, tuples and sets and in user instances' attributes, three levels down (up to
    ``_CONTAINER_SCAN`` of them), in an order of their names (a registry filled by iterating
    a set was in hash-seed order: a new version in every process). Only for ``values=True``
    versions: a cache the class fills while tasks run (``_compiled[k] = kern``) would make the
    code look changed (``refresh_version`` asks ``values=False``)."""
    found: list[Any] = []
    seen: set[int] = set()

    def visit(x: Any, depth: int) -> None:
        if len(found) >= _CONTAINER_SCAN or id(x) in seen or depth > 3:
            return
        seen.add(id(x))
        t = type(x)
        if t is types.FunctionType or isinstance(x, type) or t is types.MethodType \
                or t in (staticmethod, classmethod, functools.partial):
            found.append(x)
            return
        try:
            if isinstance(x, dict):
                items = list(x.values())
            elif t in (list, tuple, set, frozenset):
                items = list(x)
            elif _is_user_class(t):
                found.append(x)
                items = list((getattr(x, "__dict__", None) or {}).values()) if depth < 3 else []
            else:
                return
        except Exception:  # noqa: BLE001 - changed while read: nothing counted from it
            return
        for item in items[:_CONTAINER_SCAN]:
            visit(item, depth + 1)

    for item in (list(v.values()) if isinstance(v, dict) else list(v))[:_CONTAINER_SCAN]:
        visit(item, 1)
    return sorted(found, key=_code_name)


def _code_name(x: Any) -> tuple[str, str]:
    """A name for ordering code found in a container, the same in every process."""
    inner = getattr(x, "__func__", None) or getattr(x, "func", None)
    if inner is not None and inner is not x:
        return _code_name(inner)
    named = x if isinstance(x, (type, types.FunctionType)) else type(x)
    return str(getattr(named, "__module__", "")), str(getattr(named, "__qualname__", ""))


def _is_user_object(v: Any) -> bool:
    """An instance of a user class that is not plain data (told by ``type(v)`` only)."""
    t = type(v)
    return not issubclass(t, (types.ModuleType, type)) and _is_user_class(t) \
        and _plain(v) is None


def _default_reads(code: types.CodeType, which: list[int | str]
                   ) -> list[tuple[int | str, str, frozenset[str]]]:
    """The names the default expressions of ``which`` parameters read, with the attribute
    names the expression reads (``settings.Cfg(scale=settings.SCALE)``: ``settings``, with
    ``Cfg`` and ``SCALE``); positional defaults by index into ``__defaults__``, keyword-only
    ones by name; from the function's source, nothing when it cannot be parsed."""
    try:
        # (a lambda's text ends with its constants and names after a NUL: not source)
        text = _own_text(code).split(b"\0", 1)[0].decode("utf-8", "surrogatepass")
        tree = ast.parse(textwrap.dedent(text))
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return []
    node: Any = next((n for n in tree.body
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if node is None and code.co_name == "<lambda>":     # the line a lambda is on
        node = next((n for n in ast.walk(tree) if isinstance(n, ast.Lambda)), None)
    if node is None:
        return []
    exprs: dict[int | str, ast.expr] = dict(enumerate(node.args.defaults))
    for arg, d in zip(node.args.kwonlyargs, node.args.kw_defaults):
        if d is not None:
            exprs[arg.arg] = d
    out: list[tuple[int | str, str, frozenset[str]]] = []
    for w in which:
        e = exprs.get(w)
        if e is not None:
            nodes = list(ast.walk(e))
            attrs = frozenset(x.attr for x in nodes if isinstance(x, ast.Attribute))
            out.extend((w, n.id, attrs) for n in sorted(
                (x for x in nodes if isinstance(x, ast.Name)),
                key=lambda x: (x.lineno, x.col_offset)))
    return out


def _home_of(v: Any, g: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """Where a default or closure value that is a user object (``_is_user_object``, which
    the caller has checked) is bound at module level: a global of ``g`` that is that very object (``cfg=DEFAULT``,
    ``DEFAULT`` imported from a settings module), else an attribute of a user module ``g``
    names (``cfg=settings.DEFAULT``). Its defining statement is then part of the version:
    ``DEFAULT = Cfg(scale=2)`` edited to ``scale=3`` is a new one. Runtime contents are still
    not read, and the value is asked nothing (``type(v)`` only: a lazy proxy is not forced).
    None when it is bound nowhere there (built in place: the source shows it)."""
    modules: list[types.ModuleType] = []
    containers: list[tuple[str, Any, dict[str, Any]]] = []
    for name, x in list(g.items()):
        if x is v:
            return g, name
        tx = type(x)
        if tx is types.ModuleType and _is_user_module(x):
            modules.append(x)
        elif tx is dict or tx is list or tx is tuple:
            containers.append((name, x, g))
    for m in modules:
        ns = vars(m)
        for name, x in list(ns.items()):
            if x is v:
                return ns, name
            tx = type(x)
            if tx is dict or tx is list or tx is tuple:
                containers.append((name, x, ns))
    # an entry of a module-level container (``cfg=CONFIGS["prod"]``, also
    # ``settings.CONFIGS["prod"]``): that container's statements
    for name, x, ns in containers:
        items = list(x.values())[:_CONTAINER_SCAN] if type(x) is dict else x[:_CONTAINER_SCAN]
        if any(item is v for item in items):
            return ns, name
    return None


#: Items of a module-level container looked through for a default's home (``_home_of``).
_CONTAINER_SCAN = 1000


def _is_method(f: types.FunctionType) -> bool:
    """Whether ``f`` was defined in a class body (``Model.predict``; not ``helper``, nor
    ``outer.<locals>.inner``), told by its qualified name: the same answer whatever order the
    walk meets it in."""
    head, dot, _ = f.__qualname__.rpartition(".")
    return bool(dot) and not head.endswith("<locals>")


def _annotated_classes(f: types.FunctionType) -> list[type]:
    """The user classes ``f``'s parameter and return annotations name (``model: Model``,
    ``list[geo.Point] | None``, ``"Model"`` under ``from __future__ import annotations``, a
    TypeVar's bound or constraints), in first-met order. A method called on a parameter
    (``model.predict(x)``) is dynamic dispatch the walk cannot follow; the annotation says
    whose method it is, so an edit of that class is a new version of ``f``. String
    annotations are parsed, never evaluated: their names are looked up in ``f``'s globals and
    attributes of what they name. Objects met are asked nothing beyond their type (a lazy
    proxy in ``Annotated`` metadata is not forced)."""
    try:
        anns = inspect.get_annotations(f)
    except Exception:  # noqa: BLE001 - an annotation that cannot be evaluated (PEP 649)
        return []
    if type(anns) is not dict or not anns:
        return []
    found: dict[int, type] = {}
    seen: dict[Any, Any] = {}
    g = f.__globals__
    for name in sorted(anns, key=str):
        _collect_annotation(anns[name], g, found, seen, 0)
    return list(found.values())


#: Modules whose types are typing constructs to look into (``get_args``): ``typing``'s, the
#: built-in generics' (``list[X]``, ``X | Y``), ``collections.abc``'s (``Callable[[X], Y]``).
_TYPING_MODULES = frozenset({"typing", "types", "typing_extensions", "_collections_abc",
                             "collections.abc"})


def _collect_annotation(a: Any, g: dict[str, Any], found: dict[int, type],
                        seen: dict[Any, Any], depth: int) -> None:
    t = type(a)
    key = a if t is str else id(a)
    if depth > 8 or key in seen:
        return
    seen[key] = a      # kept alive: an id freed and reused must not look seen (get_args lists)
    if t is str:
        for obj in _named_in(a, g):
            _collect_annotation(obj, g, found, seen, depth + 1)
        return
    if t is typing.ForwardRef:           # inside Optional["Model"]
        _collect_annotation(a.__forward_arg__, g, found, seen, depth + 1)
        return
    if t is typing.TypeVar:              # M = TypeVar("M", bound=Model)
        for x in (a.__bound__, *a.__constraints__):
            if x is not None:
                _collect_annotation(x, g, found, seen, depth + 1)
        return
    if t is list or t is tuple:          # Callable[[A, B], C]'s argument list
        for x in a[:32]:
            _collect_annotation(x, g, found, seen, depth + 1)
        return
    if issubclass(t, type):
        if _is_user_class(a):
            found.setdefault(id(a), a)
        return
    if t.__module__ not in _TYPING_MODULES:
        return                           # Annotated's metadata, anything else: not a type
    try:
        args = typing.get_args(a)
        origin = typing.get_origin(a)
    except Exception:  # noqa: BLE001 - not a typing construct after all
        return
    if origin is not None:
        _collect_annotation(origin, g, found, seen, depth + 1)
    for x in args[:32]:
        _collect_annotation(x, g, found, seen, depth + 1)


def _named_in(text: str, g: dict[str, Any]) -> list[Any]:
    """The objects a string annotation names (``"geo.Point | None"``): each name and dotted
    name looked up in ``g`` (then builtins) and, through modules and classes, by
    ``getattr_static``. Nothing is evaluated; what cannot be resolved is left out."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return []
    out: list[Any] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append(node.value)        # a quoted annotation under ``from __future__``
            continue
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            continue
        obj = g.get(node.id, _BUILTINS.get(node.id))
        for attr in reversed(parts):
            if obj is None:
                break
            try:
                obj = inspect.getattr_static(obj, attr, None)
            except Exception:  # noqa: BLE001
                obj = None
        if obj is not None:
            out.append(obj)
    return out


def _decorated_function(v: Any, home: tuple[dict[str, Any], str]) -> types.FunctionType | None:
    """The user function a library decorator without ``__wrapped__`` keeps in its instance's
    ``__dict__`` (``np.vectorize``'s ``pyfunc``, numba's ``py_func``...), told apart as the
    function of that module whose qualified name is the binding's name (a module-level
    ``def``). The value is asked nothing beyond its type: ``__dict__`` is read only through
    the type's own ``__dict__`` slot (a proxy that forwards ``__dict__`` is not forced)."""
    ns, name = home
    modname = ns.get("__name__")
    for k in type(v).__mro__:
        slot = k.__dict__.get("__dict__")
        if slot is None:
            continue
        if type(slot) is not types.GetSetDescriptorType:
            return None
        try:
            d = slot.__get__(v, type(v))
        except Exception:  # noqa: BLE001
            return None
        if type(d) is not dict:
            return None
        for x in list(d.values())[:64]:
            if type(x) is types.FunctionType and x.__qualname__ == name \
                    and x.__module__ == modname and _is_user_function(x):
                return x
        return None
    return None


def _submodule_text(m: types.ModuleType, attr: str) -> bytes | None:
    """The source bytes of package ``m``'s submodule ``attr`` (``lib.mathx`` of a package
    whose ``__getattr__`` imports it on first use), found without importing anything (the
    path finder over the package's ``__path__``), or None if it has none of that name. The
    body may read ``attr`` on another object (``subprocess.run``): a file ``run.py`` of the
    package then counts too (a miss more, never its code run)."""
    name = vars(m).get("__name__")
    if not isinstance(name, str) or not attr.isidentifier():
        return None
    full = f"{name}.{attr}"
    sub = sys.modules.get(full)
    origin = getattr(sub, "__file__", None) if isinstance(sub, types.ModuleType) else None
    if origin is None:
        try:
            spec = importlib.machinery.PathFinder.find_spec(full, list(vars(m)["__path__"]))
        except Exception:  # noqa: BLE001 - odd path entries
            return None
        origin = getattr(spec, "origin", None) if spec is not None else None
    if not isinstance(origin, str) or not origin.endswith(".py"):
        return None
    try:
        with open(origin, "rb") as f:
            return f.read()
    except OSError:
        return None


def _wrapped(v: Any) -> Any:
    try:
        inner = inspect.getattr_static(v, "__wrapped__", None)
    except Exception:  # noqa: BLE001
        return None
    return None if inner is v else inner


def _import(name: str) -> types.ModuleType | None:
    """``name``'s module, imported if it is not yet (None if it cannot be)."""
    m = sys.modules.get(name)
    if isinstance(m, types.ModuleType):
        return m
    try:
        m = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - the body will fail the same way when it runs
        return None
    return m if isinstance(m, types.ModuleType) else None


def code_version(fn: Any, *, values: bool = True) -> str:
    """sha256 (16 hex chars) over the component's code and what it reads (module docstring).
    ``values=False``: mutable data met in closure cells and defaults (which have no defining
    statement) by type, not by value: what can change while the code stays the same (a list a
    closure fills as tasks run), for telling whether the code itself changed since."""
    return _version(fn, values)[0]


_Deps = tuple[tuple[dict[str, Any], str, Any], ...]


def _version(fn: Any, values: bool = True, met: list[types.FunctionType] | None = None
             ) -> tuple[str, _Deps]:
    """``code_version``, and the bindings it read (``_still`` tells whether they hold)."""
    # Unwrap components and library wrappers down to user code; a user function that wraps
    # another (a user decorator) is kept: its closure leads to the wrapped function anyway.
    target = fn
    for _ in range(100):
        if isinstance(target, types.FunctionType) and _is_user_function(target):
            break
        try:
            inner = inspect.getattr_static(target, "__wrapped__", None)
        except Exception:
            inner = None
        if inner is None or inner is target:
            break
        target = inner
    walk = _Walk(values)
    if isinstance(target, type):
        for k in target.__mro__:
            if k is target or _is_user_class(k):
                for v in vars(k).values():
                    fn = v.__func__ if type(v) in (staticmethod, classmethod) else v
                    if type(fn) is types.FunctionType:
                        walk.own_methods.add(id(fn))
    if isinstance(target, types.FunctionType):
        walk.put("root", walk.fn_ref(target, force=True))
    elif isinstance(target, type):
        walk.put("root", walk.cls_ref(target, force=True))
    else:
        walk.put("root", walk.value(target))
    walk.drain()
    deps = tuple(walk.deps.values())
    if met is not None:
        met.extend(f for f in walk.keep if type(f) is types.FunctionType)
    # The texts of the modules it read pinned now, with the version: a process task is sent
    # them (``code_modules``), and a module of constants, whose values the version took, was
    # read from disk at its first task, edited meanwhile. Best effort: the version stands.
    try:
        _modules_read(target, deps)
    except Exception:  # noqa: BLE001 - an odd module: its text is read at its first task
        pass
    return walk.h.hexdigest()[:16], deps


def version_and_deps(fn: Any) -> tuple[str, _Deps, list[types.FunctionType]]:
    """``code_version(fn)``, the bindings its walk read (while ``bindings_hold`` says they are
    bound as they were, the code the version read is the same objects: a reload of a module it
    read rebinds them), and the user functions it met (what they hold is keyed apart:
    ``engine.heldstate``)."""
    met: list[types.FunctionType] = []
    version, deps = _version(fn, met=met)
    return version, deps, met


def bindings_hold(deps: _Deps) -> bool:
    return _still(deps)


def is_user_class(t: type) -> bool:
    """Whether ``t`` is a class of the user's code (not of the standard library, a package
    installed, or TwinGraph)."""
    return _is_user_class(t)


def _still(deps: _Deps) -> bool:
    """Whether every binding a version read is still bound to what it was then: an
    ``importlib.reload`` of a module the walk read rebinds its functions and classes (new
    objects), a notebook cell run again rebinds its names."""
    for ns, name, v in deps:
        if ns.get(name, _MISSING) is not v:
            return False
    return True


_VALUE_CODE: _IdCache[tuple[str, _Deps]] = _IdCache()
#: Where a library wrapper keeps the function it wraps (``functools.wraps``, ``np.vectorize``,
#: numba), and the types whose instances cannot (an array, a datetime: asked once per type).
_WRAPPER_ATTRS = ("__wrapped__", "pyfunc", "py_func")
_NO_WRAPPER: set[type] = set()


def code_of_value(value: Any) -> str | None:
    """What a memo key adds for an argument that is (or carries) code: a function's, class's
    or bound method's ``code_version`` (cloudpickle keys a module's function by its name only:
    editing it kept the key), and for an instance of a user class its class's (its methods
    are code the component may call). None for anything else. Cached by the object's
    identity while the bindings its walk read are unchanged (``_still``): the object's own
    code is fixed once it exists, but what it reaches through its globals is not
    (``importlib.reload(helpers)``: ``helpers.h`` is a new function, and the version cached
    for a ``g`` that calls it was a stale hit)."""
    t = type(value)
    if t is types.MethodType:
        return code_of_value(value.__func__)
    if t is functools.partial:      # the code it calls (its arguments: its pickle has them)
        return code_of_value(value.func)
    if t is not types.FunctionType and not isinstance(value, type) and t not in _NO_WRAPPER \
            and not _is_user_class(t):
        # a library wrapper around user code (``functools.lru_cache``, ``np.vectorize``):
        # pickled by its name, so the code it wraps is its key (editing it kept the key)
        inner = None
        for attr in _WRAPPER_ATTRS:
            try:
                inner = inspect.getattr_static(value, attr, None)
            except Exception:  # noqa: BLE001
                inner = None
            if inner is not None:
                break
        if type(inner) is types.FunctionType:
            return code_of_value(inner)
        if inner is None and not getattr(t, "__dictoffset__", 1) and not any(
                hasattr(t, a) for a in _WRAPPER_ATTRS):
            _NO_WRAPPER.add(t)        # its instances can hold none (no __dict__): not asked again
    if t is types.FunctionType or isinstance(value, type):
        target = value
    elif t is types.ModuleType:     # pickled by its name: its code is what it holds
        if not _is_user_module(value):
            return None
        target = value
    elif _is_user_class(t):
        target = t
    else:
        return None
    got = _VALUE_CODE.get(target)
    if got is None or not _still(got[1]):
        got = _VALUE_CODE.put(target, _version(target))
    return got[0]


#: target -> (its ``code_modules``, the bindings their walk read)
_MODULES: _IdCache[tuple[tuple[tuple[str, str, str], ...], _Deps]] = _IdCache()


def code_modules(fn: Any) -> tuple[tuple[str, str, str], ...]:
    """The user modules ``fn``'s code version was taken from, each as (module name, file,
    the text the version read): what a worker process must run for its result to be the one
    the version names. A worker importing them from disk ran a file edited since this process
    loaded it, a module another directory of its ``sys.path`` held under the same name, or
    the code from before an ``importlib.reload`` here (session 28 review). Modules without
    a file or a pinned text (``__main__``, made at run time) are left out. Cached by the
    target's identity while the bindings the walk read still hold (``_still``)."""
    target = fn
    for _ in range(10):          # a wrapper (a DAG node's call, a partial) down to the code
        if type(target) is types.MethodType:
            target = target.__func__
        elif type(target) is functools.partial:
            target = target.func
        elif not isinstance(target, (types.FunctionType, type)):
            inner = getattr(target, "__wrapped__", None)    # a slot too (getattr_static: not)
            if inner is None or inner is target:
                break
            target = inner
        else:
            break
    got = _MODULES.get(target)
    if got is None or not _still(got[1]):
        _, deps = _version(target)
        got = _MODULES.put(target, (_modules_read(target, deps), deps))
    return got[0]


def _modules_read(target: Any, deps: _Deps) -> tuple[tuple[str, str, str], ...]:
    """The modules the walk read names in, and those of what it found bound there (``from
    hlp import f`` reads ``f`` in the caller's module: ``f``'s own module counts; ``import
    cfg`` of constants only: ``cfg`` counts)."""
    def module_of(v: Any) -> Any:
        t = type(v)          # not isinstance: a lazy proxy's __class__ would force it
        if issubclass(t, types.ModuleType):
            return vars(v)
        name = getattr(v, "__module__", None) \
            if t is types.FunctionType or issubclass(t, type) else None
        m = sys.modules.get(name) if isinstance(name, str) else None
        # (sys.modules may hold objects that are not modules: some libraries put them there)
        return vars(m) if isinstance(m, types.ModuleType) else None

    spaces: list[Any] = [getattr(target, "__globals__", None), module_of(target)]
    for ns, _, v in deps:
        spaces.append(ns)
        spaces.append(module_of(v))
    out: list[tuple[str, str, str]] = []
    seen: set[int] = set()
    for ns in spaces:
        if not isinstance(ns, dict) or id(ns) in seen:
            continue
        seen.add(id(ns))
        name, file, spec = ns.get("__name__"), ns.get("__file__"), ns.get("__spec__")
        if not isinstance(name, str) or name == "__main__" or not isinstance(file, str) \
                or not file.endswith(".py") or spec is None:
            continue
        module = sys.modules.get(name)
        if not isinstance(module, types.ModuleType) or vars(module) is not ns \
                or not _is_user_module(module):
            continue                  # not what importing the name gives
        pinned = _PINNED.get(spec)
        if pinned is None or pinned[0] != file:
            lines = _source_lines(file, ns)        # pinned now: a module it read no text of
            if not lines:
                continue
            pinned = (file, lines)
        out.append((name, file, _joined(pinned[1])))
    return tuple(out)


#: id(lines) -> (lines, their text): one string per pinned text, whatever number of
#: components' ``code_modules`` name it
_JOINED: dict[int, tuple[list[str], str]] = {}


def _joined(lines: list[str]) -> str:
    got = _JOINED.get(id(lines))
    if got is not None and got[0] is lines:
        return got[1]
    if len(_JOINED) >= 256:
        _JOINED.clear()
    text = "".join(lines)
    _JOINED[id(lines)] = (lines, text)
    return text


def is_lib_path(path: str) -> bool:
    """Whether ``path`` is a file of the standard library or of an installed package."""
    return _is_lib_path(path)


#: id(text) -> (text, its digest): the texts ``code_modules`` hands out are few and long-lived
_DIGESTS: dict[int, tuple[str, str]] = {}


def text_digest(text: str) -> str:
    """sha256 of a module's text (cached for the texts ``code_modules`` returns)."""
    got = _DIGESTS.get(id(text))
    if got is not None and got[0] is text:
        return got[1]
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    if len(_DIGESTS) >= 256:
        _DIGESTS.clear()
    _DIGESTS[id(text)] = (text, digest)
    return digest


__all__ = ["code_version", "code_of_value", "code_modules", "is_lib_path", "text_digest"]
