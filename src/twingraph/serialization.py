"""Value codec: turn a task's return value into bytes the result store can keep, and back.

Why a codec of our own: results are content-addressed, so the same value must always give the
same bytes (and so the same sha256), and large values must reach the store without being copied.

Encodings, chosen in this order:

``json``    plain data that round-trips exactly: None, bool, int, finite float, str, list and dict
            with str keys, recursively (exact types: a tuple, a set, an ``IntEnum`` or a str
            subclass is *not* JSON, it would come back as something else). Deterministic text:
            ``separators=(',', ':'), ensure_ascii=False``, UTF-8, dict keys in their insertion
            order — a dict comes back in the order the task built it, as it would from a call
            that ran (so two dicts equal in Python but built in another order hash apart: the
            order is part of the value, since code that iterates it can tell them apart).
``npy``     a NumPy ``ndarray`` (exact type, dtype without Python objects): the standard ``.npy``
            format, written as a scatter list ``(header, memoryview of the array's own buffer)``
            — zero copies (one copy only if the array is not C-contiguous). NumPy is never
            imported by ``encode``: an ndarray can only exist if NumPy is already loaded. A
            dtype a ``.npy`` header cannot describe (structured fields out of offset order, as
            ``a[["b", "a"]]`` gives) is pickled instead.
``bytes``   bytes / bytearray / memoryview, kept as is (a view, not a copy).
``pickle5`` a value holding large contiguous buffers (a dict of NumPy arrays, a DataFrame):
            pickle protocol 5 with the buffers *out of band*, written as views — zero copies —
            after a small header; decoding rebuilds the objects over views of the stored bytes.
``pickle``  everything else, via cloudpickle (trusted stores only: loading runs code). A value
            cloudpickle cannot handle (a lock, an open socket, absurd nesting) raises
            ``ValidationError`` naming its type.

``Encoded`` *borrows* the value's memory: do not mutate a bytearray or array until the store has
written it. ``content_hash`` is sha256 hex over the buffers in order, computed once, lazily.

Beware: the content hash is of the bytes only, so ``b'1'`` (bytes) and ``1`` (JSON) have the
same content hash. Anything that identifies a *value* by hash (memo keys) must use
``typed_hash`` (hash of ``encoding:content_hash``) instead.
"""

from __future__ import annotations

import ast
import hashlib
import json
import io
import math
import pickle
import struct
import sys
from collections.abc import Callable
from typing import Any

from twingraph.core.hashing import sha256_hex
from twingraph.core.results import DataType, StorageMetadata
from twingraph.errors import ConfigurationError, ValidationError

__all__ = ["Encoded", "encode", "decode", "content_hash", "typed_hash", "canonical_json",
           "ENCODINGS", "LARGE_THRESHOLD"]

Buffer = bytes | bytearray | memoryview
ENCODINGS = ("json", "npy", "bytes", "pickle", "pickle5")
OOB_MIN_BYTES = 64 * 1024          # buffers at least this large travel out of band
_P5_MAGIC = b"TGP5"
LARGE_THRESHOLD = 64 * 1024 * 1024

_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                         allow_nan=False, check_circular=False)
_json_str = json.encoder.encode_basestring  # ensure_ascii=False quoting, as _JSON does it


def _no_default(o: Any) -> Any:
    raise TypeError(type(o).__name__)


# The C encoder object that JSONEncoder.encode would build on every call, built once (~1 µs
# saved per call, this runs per task). Same output as _JSON; falls back to it without _json.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODER = (_c_make_encoder(None, _no_default, _json_str, None, ":", ",", True, False, False)
              if _c_make_encoder is not None else None)
# Values keep their dicts' order (``_json_text``): the same encoder without sort_keys.
_VALUES = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                           check_circular=False)
_C_VALUES = (_c_make_encoder(None, _no_default, _json_str, None, ":", ",", False, False, False)
             if _c_make_encoder is not None else None)


def canonical_json(value: Any) -> str:
    """Canonical JSON text (sorted keys, no spaces, non-ASCII kept); TypeError or ValueError
    for what JSON cannot hold (NaN, sets, objects). Unlike ``encode`` it does not insist on an
    exact round trip (tuples become lists): meant for metadata, not for values."""
    if _C_ENCODER is not None:
        return "".join(_C_ENCODER(value, 0))
    return _JSON.encode(value)
_JSON_SCALARS = frozenset({str, int, bool, type(None)})
_NPY_MAGIC = b"\x93NUMPY"


class Encoded:
    """An encoded value: ``buffers`` are written in order, never concatenated. Treat it as
    read-only.

    A slotted class, not a frozen dataclass: one is built per task result, and the frozen
    dataclass's ``__init__`` (an ``object.__setattr__`` per field) and its ``__dict__`` cache
    cost about 1 µs of the scheduling thread per task."""

    __slots__ = ("encoding", "data_type", "buffers", "size", "_hash")

    def __init__(self, encoding: str, data_type: DataType, buffers: tuple[Buffer, ...],
                 size: int) -> None:
        self.encoding, self.data_type, self.buffers, self.size = encoding, data_type, buffers, size
        self._hash: str | None = None

    def __repr__(self) -> str:
        return f"Encoded({self.encoding!r}, {self.data_type}, size={self.size})"

    def __eq__(self, other: object) -> bool:
        """Equal when they encode the same bytes the same way (buffers may be views)."""
        if not isinstance(other, Encoded):
            return NotImplemented
        return self.encoding == other.encoding and self.data_type == other.data_type \
            and self.size == other.size and self.content_hash == other.content_hash

    def __hash__(self) -> int:
        return hash((self.encoding, self.content_hash))

    @property
    def content_hash(self) -> str:
        """sha256 hex over the buffers in order (incremental; computed on first use)."""
        cached = self._hash
        if cached is None:
            buffers = self.buffers
            if len(buffers) == 1:
                b = buffers[0]
                cached = sha256_hex(b) if type(b) is bytes else hashlib.sha256(b).hexdigest()
            else:
                h = hashlib.sha256()
                for b in buffers:
                    h.update(b)
                cached = h.hexdigest()
            self._hash = cached
        return cached

    @property
    def typed_hash(self) -> str:
        """Identity of the *value* (encoding + bytes): use this in memo keys."""
        return typed_hash(self.encoding, self.content_hash)

    def to_bytes(self) -> bytes:
        """One contiguous copy (for small values and tests; stores take ``buffers``)."""
        if len(self.buffers) == 1 and type(self.buffers[0]) is bytes:
            return self.buffers[0]
        return b"".join(self.buffers)

    def to_metadata(self, node_id: str, metadata: dict[str, Any] | None = None) -> StorageMetadata:
        """The ``StorageMetadata`` to store this value under ``node_id`` (records the encoding)."""
        return StorageMetadata(node_id=node_id, data_type=self.data_type,
                               content_hash=self.content_hash, size=self.size,
                               metadata={**(metadata or {}), "encoding": self.encoding})


def typed_hash(encoding: str, content_hash: str) -> str:
    """sha256 hex of ``"<encoding>:<content_hash>"``: distinguishes ``b'1'`` from ``1``."""
    return hashlib.sha256(f"{encoding}:{content_hash}".encode()).hexdigest()


# ---------------------------------------------------------------------------------------- encode

# Read once per encoded value: a module global, not the enum class's attribute (in CPython 3.11
# that goes through the enum metaclass's __getattr__ hook; see engine.task).
_NESTED, _PRIMITIVE = DataType.NESTED, DataType.PRIMITIVE


def settled(value: Any) -> Any:
    """A task's result as it can be kept: an ndarray that is a view of memory held elsewhere
    (``return BUF[:]`` of a buffer the code reuses) is copied, since its bytes are hashed now
    and written later, and the next fill changed them (the write failed, the run with it).
    A view whose memory nothing else holds (``arr.reshape(...)`` of a local array, two views
    of one local array in the outputs) is kept, the memory's owner made read-only with it
    (``encode(freeze=True)``): no copy of a large result. The owner is found along ``.base``
    (through NumPy's own holders, ``as_strided``'s); one that is not an array (a bytearray, a
    writable mmap) is copied unless it is read-only."""
    np = sys.modules.get("numpy")
    if np is None:
        return value
    if type(value) is dict:             # a component's outputs: each of them
        nd = np.ndarray
        for v in value.values():
            if type(v) is nd and v.base is not None:
                break
        else:
            return value                # (the usual case: no view in it, nothing to do)
        parts = list(value.values())
        # decided first (keys only kept): a result being built would hold the owners too
        copy = [k for k, v in value.items() if type(v) is np.ndarray and _must_copy(np, v, parts)]
        del parts
        if not copy:
            return value
        return {k: v.copy() if k in copy else v for k, v in value.items()}
    if type(value) is np.ndarray and _must_copy(np, value, [value]):
        return value.copy()
    return value


def _owner(np: Any, value: Any) -> Any:
    """The object whose memory ``value`` (an ndarray view) uses: along ``.base``."""
    b = value.base
    while isinstance(b, np.ndarray) or hasattr(b, "__array_interface__"):   # (as_strided's)
        nxt = getattr(b, "base", None)
        if nxt is None:
            return b
        b = nxt
    return b


def _must_copy(np: Any, value: Any, parts: list[Any]) -> bool:
    """Whether ``value`` (an ndarray among the result's ``parts``) views memory someone else
    may write; if not, its owner is made read-only."""
    if value.base is None:
        return False
    owner = _owner(np, value)
    if not isinstance(owner, np.ndarray):
        try:
            return not memoryview(owner).readonly
        except TypeError:               # not a buffer: cannot tell who else writes it
            return True
    if not owner.flags.writeable:
        return False
    # Who holds the owner: this name and getrefcount's argument, the result's own parts
    # (the owner itself, and each link of a view's chain that points at it); anyone more
    # may write it after the task returned.
    expected = 2
    for part in parts:
        if part is owner:
            expected += 2               # the result dict, and ``parts``
        elif type(part) is np.ndarray:
            link = part.base
            while link is not None:         # the link whose base is the owner holds it
                if link is owner:
                    expected += 1
                    break
                link = getattr(link, "base", None)
    part = link = None                  # (no reference of ours left but ``owner``)
    if sys.getrefcount(owner) <= expected:
        owner.flags.writeable = False
        return False
    return True


def encode(value: Any, *, large_threshold: int = LARGE_THRESHOLD, freeze: bool = False,
           persistent_id: Callable[[Any], Any] | None = None) -> Encoded:
    """Encode ``value`` (see the module docstring for the choice of encoding). ``freeze``: a
    task's result (the engine's call): an ndarray is made read-only, since its bytes are
    written from the array itself later and its consumers share it — changed in place, the
    stored bytes would no longer match the hash taken now. ``persistent_id``: the pickler's,
    for a pickle that is only hashed (``core.hashing.pickle_ids``: it does not load)."""
    t = type(value)
    text = _json_text(value)
    if text is not None:
        data = text
        dt = _NESTED if t is list or t is dict else _PRIMITIVE
        return _make("json", dt, (data,), len(data), large_threshold)
    if t is bytes or t is bytearray or t is memoryview:
        buf = _byte_view(value)
        return _make("bytes", DataType.BINARY, (buf,), len(buf), large_threshold)
    np = sys.modules.get("numpy")
    if np is not None and t is np.ndarray and not value.dtype.hasobject:
        if freeze:
            value.flags.writeable = False
        parts = _npy_parts(np, value)
        if parts is not None:           # else a dtype .npy cannot describe: pickled below
            header, body = parts
            return _make("npy", DataType.DATASET, (header, body), len(header) + body.nbytes,
                         large_threshold)
    oob: list[Any] = []

    def keep_large(pb: pickle.PickleBuffer) -> bool:
        raw = pb.raw()
        if raw.nbytes >= OOB_MIN_BYTES:
            if freeze and np is not None and isinstance(raw.obj, np.ndarray):
                raw.obj.flags.writeable = False      # written from this memory, later
            oob.append((pb, raw))
            return False                  # out of band: not copied into the pickle stream
        return True

    try:
        data = _cloudpickle().dumps(value, protocol=5, buffer_callback=keep_large) \
            if persistent_id is None else _dumps_with_ids(value, keep_large, persistent_id)
    except Exception as exc:  # PicklingError, TypeError ("cannot pickle '_thread.lock'"), ...
        raise ValidationError(f"cannot encode a value of type {t.__qualname__}: {exc}") from exc
    if not oob:
        return _make("pickle", DataType.NESTED, (data,), len(data), large_threshold)
    views = [raw for _, raw in oob]
    header = _P5_MAGIC + struct.pack(f"<IQ{len(views)}Q", len(views), len(data),
                                     *(v.nbytes for v in views))
    size = len(header) + len(data) + sum(v.nbytes for v in views)
    return _make("pickle5", DataType.NESTED, (header, data, *views), size, large_threshold)


def _dumps_with_ids(value: Any, buffer_callback: Callable[[pickle.PickleBuffer], bool],
                    persistent_id: Callable[[Any], Any]) -> bytes:
    """``cloudpickle.dumps`` with ``persistent_id``."""
    global _IdPickler
    if _IdPickler is None:
        class IdPickler(_cloudpickle().CloudPickler):      # type: ignore[misc]
            def persistent_id(self, obj: Any) -> Any:
                return self.ids(obj)
        _IdPickler = IdPickler
    with io.BytesIO() as f:
        pickler = _IdPickler(f, protocol=5, buffer_callback=buffer_callback)
        pickler.ids = persistent_id
        pickler.dump(value)
        return f.getvalue()


_IdPickler: Any = None


def content_hash(value: Any) -> str:
    """``encode(value).content_hash``, with a fast path for small JSON values (no ``Encoded``)."""
    text = _json_text(value)
    if text is not None:
        return sha256_hex(text)
    return encode(value).content_hash


def _make(encoding: str, dt: DataType, buffers: tuple[Buffer, ...], size: int,
          large_threshold: int) -> Encoded:
    if size > large_threshold:
        dt = DataType.LARGE_OBJECT
    return Encoded(encoding, dt, buffers, size)


def _json_text(value: Any) -> bytes | None:
    """Deterministic UTF-8 JSON of ``value`` (dicts in their order) if it round-trips exactly,
    else None."""
    t = type(value)
    try:
        if t is str:
            return _json_str(value).encode("utf-8")
        if t is int:
            return int.__repr__(value).encode()
        if t is bool or value is None:
            return b"true" if value is True else b"false" if value is False else b"null"
        if t is float:
            return float.__repr__(value).encode() if math.isfinite(value) else None
        if not _is_json(value):
            return None
        if _C_VALUES is not None:
            return "".join(_C_VALUES(value, 0)).encode("utf-8")
        return _VALUES.encode(value).encode("utf-8")
    except (RecursionError, UnicodeEncodeError, ValueError):
        # Too deep or cyclic; a lone surrogate in a str; an int above Python's str-digits limit.
        return None


def _is_json(v: Any) -> bool:
    t = type(v)
    if t in _JSON_SCALARS:
        return True
    if t is float:
        return math.isfinite(v)
    if t is list:
        for x in v:
            if not _is_json(x):
                return False
        return True
    if t is dict:
        for k, x in v.items():
            if type(k) is not str or not _is_json(x):
                return False
        return True
    return False


def _byte_view(value: bytes | bytearray | memoryview) -> Buffer:
    if type(value) is bytes:
        return value
    mv = memoryview(value)
    if not mv.c_contiguous:
        return mv.tobytes()
    return mv.cast("B") if (mv.format != "B" or mv.ndim != 1) else mv


def _npy_parts(np: Any, arr: Any) -> tuple[bytes, memoryview] | None:
    """A version 1.0 (2.0 if huge) .npy header and a byte view of the array's own memory; None
    if the .npy format cannot describe the dtype: a structured one whose fields overlap or are
    out of offset order, as a multi-field index ``a[["b", "a"]]`` gives (pickle keeps it).
    A header that is not Latin-1 (a field named ``"名前"``) is written as version 3.0: 2.0's
    layout in UTF-8, as NumPy itself writes it (NumPy >= 1.17 and ``decode`` read it)."""
    try:
        descr = np.lib.format.dtype_to_descr(arr.dtype)
    except ValueError:
        return None
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    d = {"descr": descr, "fortran_order": False, "shape": tuple(arr.shape)}
    text = "{" + "".join(f"'{k}': {v!r}, " for k, v in sorted(d.items())) + "}"
    versions: tuple[tuple[int, int], ...] = ((1, 2), (2, 4))    # (version, header-length size)
    try:
        raw = text.encode("latin1")
    except UnicodeEncodeError:
        raw, versions = text.encode("utf8"), ((3, 4),)
    for version, fmt_len in versions:
        pre = len(_NPY_MAGIC) + 2 + fmt_len
        pad = -(pre + len(raw) + 1) % 64
        hlen = len(raw) + pad + 1
        if hlen < 256 ** fmt_len:
            header = (_NPY_MAGIC + bytes((version, 0)) + hlen.to_bytes(fmt_len, "little")
                      + raw + b" " * pad + b"\n")
            break
    else:  # pragma: no cover - a 4 GiB header
        raise ValidationError("array header too large for the .npy format")
    flat = arr.reshape(-1).view(np.uint8) if arr.dtype.itemsize else arr.reshape(-1)
    return header, memoryview(flat).cast("B") if arr.dtype.itemsize else memoryview(b"")


# ---------------------------------------------------------------------------------------- decode

def decode(data: Buffer, encoding: str) -> Any:
    """Decode bytes produced by ``encode``. 'npy' gives a read-only array over ``data`` itself
    (no copy: a memory-mapped buffer gives a memory-mapped array); 'bytes' gives ``bytes``."""
    if encoding == "json":
        return json.loads(data if type(data) is bytes else bytes(data))
    if encoding == "bytes":
        return data if type(data) is bytes else bytes(data)
    if encoding == "npy":
        return _decode_npy(data)
    if encoding == "pickle":
        return pickle.loads(data)
    if encoding == "pickle5":
        return _decode_pickle5(data)
    raise ValidationError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")


def _decode_pickle5(data: Buffer) -> Any:
    """Rebuild a protocol-5 pickle over views of ``data`` (no copy of the large buffers)."""
    mv = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    if bytes(mv[:4]) != _P5_MAGIC:
        raise ValidationError("pickle5 value without its header")
    (n,) = struct.unpack_from("<I", mv, 4)
    sizes = struct.unpack_from(f"<Q{n}Q", mv, 8)
    pos = 8 + 8 * (n + 1)
    pick = mv[pos:pos + sizes[0]]
    pos += sizes[0]
    buffers = []
    for size in sizes[1:]:
        buffers.append(mv[pos:pos + size])
        pos += size
    return pickle.loads(pick, buffers=buffers)


def _decode_npy(data: Buffer) -> Any:
    np = _numpy()
    mv = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    if bytes(mv[:6]) != _NPY_MAGIC or len(mv) < 10:
        raise ValidationError("not .npy data (bad magic)")
    major = mv[6]
    if major == 1:
        hlen, start = int.from_bytes(mv[8:10], "little"), 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(mv[8:12], "little"), 12
    else:
        raise ValidationError(f"unsupported .npy format version {major}")
    try:
        header = ast.literal_eval(bytes(mv[start:start + hlen]).decode(
            "utf8" if major == 3 else "latin1"))
        dtype = np.lib.format.descr_to_dtype(header["descr"])
        shape = tuple(int(n) for n in header["shape"])
        fortran = bool(header["fortran_order"])
    except (ValueError, SyntaxError, KeyError, TypeError) as exc:
        raise ValidationError(f"malformed .npy header: {exc}") from exc
    if dtype.hasobject:
        raise ValidationError(".npy data with Python objects is refused (it would need pickle)")
    count = math.prod(shape)
    offset = start + hlen
    if count == 0 or dtype.itemsize == 0:
        arr = np.empty(shape, dtype=dtype)
    else:
        if len(mv) - offset != count * dtype.itemsize:
            raise ValidationError(".npy data length does not match its header")
        arr = np.frombuffer(mv, dtype=dtype, count=count, offset=offset)
        arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    arr.flags.writeable = False
    return arr


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - numpy is installed in the test env
        raise ConfigurationError("decoding arrays needs NumPy: pip install 'twingraph[numpy]'") \
            from exc
    return numpy


def _cloudpickle() -> Any:
    import cloudpickle  # type: ignore[import-untyped]  # a core dependency, imported lazily
    return cloudpickle



# ------------------------------------------------------------------------------------ own copies

SHARED_TYPES = frozenset({int, float, str, bool, type(None), bytes, complex, range})


def own_copy(value: Any) -> Any:
    """``value`` as one consumer of a task's result gets it: immutable values and read-only
    NumPy arrays as they are, anything else (a list, a dict, an object) as a copy of its own,
    so that a consumer changing its input in place changes neither its siblings' inputs nor
    the producer's result (which memo keys and stored bytes describe). Large read-only arrays
    inside a copied container stay shared (out of band, not copied). A value that cannot be
    pickled is shared as it is."""
    t = type(value)
    if t in SHARED_TYPES:
        return value
    if t is tuple or t is frozenset:
        for v in value:
            if type(v) not in SHARED_TYPES:
                break
        else:
            return value
    np = sys.modules.get("numpy")
    if np is not None and t is np.ndarray and not value.flags.writeable \
            and not value.dtype.hasobject:
        return value
    if (t is dict or t is list or t is tuple) and len(value) <= _SCAN_ITEMS:
        for v in (value.values() if t is dict else value):
            if _large_immutable(v):
                return _copy_sharing_large(value)
    return _pickled_copy(value)


#: A container with at most this many items is looked at for large bytes or str held directly.
_SCAN_ITEMS = 256


def _large_immutable(v: Any) -> bool:
    t = type(v)
    return (t is bytes or t is str) and len(v) >= OOB_MIN_BYTES


class _SharingPickler(pickle.Pickler):
    """Pickles large ``bytes``/``str`` by reference to ``shared`` (at any depth)."""

    def __init__(self, file: Any, shared: list[Any], buffers: list[pickle.PickleBuffer]) -> None:
        super().__init__(file, protocol=5, buffer_callback=self._buffer)
        self.shared, self.buffers = shared, buffers

    def _buffer(self, pb: pickle.PickleBuffer) -> bool:
        raw = pb.raw()
        if raw.readonly and raw.nbytes >= OOB_MIN_BYTES:
            self.buffers.append(pb)
            return False
        return True

    def persistent_id(self, obj: Any) -> Any:
        if _large_immutable(obj):
            self.shared.append(obj)
            return len(self.shared) - 1
        return None


class _SharingUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, shared: list[Any], buffers: list[pickle.PickleBuffer]) -> None:
        super().__init__(file, buffers=buffers)
        self.shared = shared

    def persistent_load(self, pid: Any) -> Any:
        return self.shared[pid]


def _copy_sharing_large(value: Any) -> Any:
    """``own_copy`` of a container holding large ``bytes``/``str`` (an image, a document):
    those are shared, not copied (they cannot change; pickling copied each twice), wherever
    they sit in it; the rest is copied as ``_pickled_copy`` does. Only for a container found
    to hold one directly: looking at every object costs a call each."""
    shared: list[Any] = []
    buffers: list[pickle.PickleBuffer] = []
    out = io.BytesIO()
    try:
        _SharingPickler(out, shared, buffers).dump(value)
        out.seek(0)
        return _SharingUnpickler(out, shared, buffers).load()
    except Exception:  # noqa: BLE001 - e.g. what only cloudpickle pickles: the usual way
        return _pickled_copy(value)


def _pickled_copy(value: Any) -> Any:
    shared: list[pickle.PickleBuffer] = []

    def keep_shared(pb: pickle.PickleBuffer) -> bool:
        raw = pb.raw()
        if raw.readonly and raw.nbytes >= OOB_MIN_BYTES:
            shared.append(pb)
            return False
        return True
    try:
        data = pickle.dumps(value, protocol=5, buffer_callback=keep_shared)
    except Exception:  # noqa: BLE001 - a lock, a generator, a class loaded by value...
        try:
            shared.clear()
            data = _cloudpickle().dumps(value, protocol=5, buffer_callback=keep_shared)
        except Exception:  # noqa: BLE001 - nothing to copy it with: shared, as before
            return value
    try:
        return pickle.loads(data, buffers=shared)
    except Exception:  # noqa: BLE001 - pickles but does not unpickle (an exception class
        return value   # whose __init__ takes more than its args): shared, as before
