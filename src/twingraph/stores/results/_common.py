"""Helpers every result store shares: key rules, put validation, buffer slicing, verified streams.

Kept apart from ``base.py`` (the interfaces) so each backend module reads as "what is specific to
this medium".
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from twingraph.core.results import DataType, StorageMetadata
from twingraph.errors import IntegrityError, StorageError
from twingraph.serialization import canonical_json

Buffer = bytes | bytearray | memoryview

# Keys become file names: letters, digits, '_', '.', ':', '-'; no leading dot (no '..', no
# hidden/temp-file clash); 200 chars max so "<key>.<hash16>.bin" fits a 255-byte file name.
_KEY_RE = re.compile(r"[A-Za-z0-9_:\-][A-Za-z0-9_.:\-]{0,199}")


_TYPE_NAMES = {d: d.value for d in DataType}


def validate_key(key: str) -> str:
    """Return ``key`` or raise ``StorageError`` (path traversal, empty, odd characters)."""
    if type(key) is str and len(key) == 64 and key.isascii() and key.isalnum():
        return key                    # a structural key (sha256 hex): valid, without the regex
    if type(key) is not str or _KEY_RE.fullmatch(key) is None:
        raise StorageError(f"invalid result key {key!r}: use [A-Za-z0-9_.:-], no leading dot, "
                           "at most 200 characters")
    return key


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def as_views(data: Buffer | Sequence[Buffer]) -> tuple[list[Buffer], int]:
    """One buffer or a sequence of buffers -> flat byte buffers (no copies) and total size.

    ``bytes`` pass through as they are (the common small case); anything else becomes a 1-D
    unsigned-byte memoryview. A view that is not C-contiguous (``memoryview(b)[::2]``, even
    1-D bytes) is refused here, before any write: hashing or joining it would fail later, in
    the middle of a batch.
    """
    if type(data) is bytes:
        return [data], len(data)
    if type(data) is tuple and len(data) == 1 and type(data[0]) is bytes:
        return [data[0]], len(data[0])
    items: Iterable[Any] = (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        items = iter(items)
    except TypeError:                      # None, an int: neither a buffer nor a sequence
        raise StorageError("result data must be bytes-like or a sequence of bytes-like "
                           f"buffers, got {type(data).__name__}") from None
    views: list[Buffer] = []
    total = 0
    for b in items:
        if type(b) is bytes:
            views.append(b)
            total += len(b)
            continue
        if not isinstance(b, (bytes, bytearray, memoryview)):
            raise StorageError(f"result data must be bytes-like, got {type(b).__name__}")
        mv = memoryview(b)
        if not mv.c_contiguous:
            raise StorageError("result data buffers must be C-contiguous")
        if mv.format.lstrip("@=<>!|") == "O":
            # a view of Python objects (a NumPy object array) holds pointers into this
            # process: its bytes would mean nothing when read back
            raise StorageError("result data must be bytes, not a buffer of Python objects "
                               f"(format {mv.format!r}); encode the value first")
        if mv.format != "B" or mv.ndim != 1:
            try:
                mv = mv.cast("B")
            except TypeError:          # zeros in its shape or strides: no bytes to view
                if mv.nbytes:
                    raise StorageError("result data buffer cannot be read as bytes "
                                       f"(format {mv.format!r}, shape {mv.shape})") from None
                mv = memoryview(b"")
        views.append(mv)
        total += mv.nbytes
    return views, total


@dataclass(slots=True)
class Prepared:
    """A validated put: what the backend writes. ``content_hash`` may still need checking."""

    key: str
    views: list[Buffer]
    size: int
    data_type: DataType
    type_name: str             # data_type.value (Enum.value is a slow descriptor; hot path)
    content_hash: str          # as given; '' means "compute it"
    created_at: str
    meta_json: str | None      # StorageMetadata.metadata as canonical JSON
    dag_id: str | None


def prepare(key: str, data: Buffer | Sequence[Buffer], meta: StorageMetadata,
            now: str) -> Prepared:
    """Validate one put before anything is written (bad input changes nothing).

    Runs once per result on the engine's hot path: keep it lean (~2 µs).
    """
    if type(key) is not str or _KEY_RE.fullmatch(key) is None:
        validate_key(key)  # raises with the explanation
    if not isinstance(meta, StorageMetadata):
        raise StorageError(f"metadata of {key!r} must be a StorageMetadata, "
                           f"got {type(meta).__name__}")
    node_id = meta.node_id
    if node_id and node_id != key:
        raise StorageError(f"metadata.node_id {node_id!r} does not match key {key!r}")
    dt = meta.data_type
    type_name = _TYPE_NAMES.get(dt) if isinstance(dt, DataType) else None
    if type_name is None:
        raise StorageError(f"metadata.data_type must be a DataType, got {dt!r}")
    if type(data) is tuple and len(data) == 1 and type(data[0]) is bytes:
        views: list[Buffer] = [data[0]]
        size = len(data[0])
    else:
        views, size = as_views(data)
    if meta.size != size:
        raise StorageError(f"metadata.size {meta.size} != {size} bytes of data for {key!r}")
    md = meta.metadata
    meta_json = dag_id = None
    if md is not None:
        meta_json, dag_id = dump_meta(md, key)
    return Prepared(key, views, size, dt, type_name, meta.content_hash or "",
                    check_created_at(meta.created_at, key) or now, meta_json, dag_id)


def check_created_at(value: Any, key: str) -> Any:
    """``value`` if it can be stored as ``created_at`` (text, or empty for "now"). Anything else
    is refused before a write, the same on every store: SQLite stored a ``datetime`` as its
    ``str()`` where the filesystem store failed on it, and a lone surrogate is text no store
    can write as UTF-8."""
    if value is None or (type(value) is str and value.isascii()):
        return value                    # the common cases: None, an ISO 8601 timestamp
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            pass
    raise StorageError(f"metadata.created_at of {key!r} must be text (ISO 8601), "
                       f"got {value!r}")


#: What ``prepare_wire`` keeps of a put: (data, data_type's value, content_hash as given or '',
#: size, created_at, metadata as canonical JSON, dag_id, the key in UTF-8).
WirePut = tuple[bytes, str, str, int, str, "str | None", "str | None", bytes]


def prepare_wire(items: Iterable[tuple[Any, Any, Any]], now: str
                 ) -> tuple[dict[str, WirePut], int] | None:
    """``prepare_all`` of puts given as ``core.wire`` rows, ``(key, bytes, StorageMetadata
    field values)`` (the writer process's; ``put_wire_rows``), without a ``StorageMetadata``
    and a ``Prepared`` each: the same checks in the same order, with the same errors. Returns
    key -> what is written of it (the last of a key, in first-seen order) and the largest
    size; None when an item is not in that form (data that is not ``bytes``, metadata values
    of another shape): the caller then makes the items ``prepare_all`` takes, which fail or
    pass as they always did.

    The metadata dict is dumped once per object: the rows of a frame share one (the run loop
    builds one per encoding, and pickle keeps it one object), and nothing changes it while
    this runs."""
    latest: dict[str, WirePut] = {}
    largest = 0
    last_md: Any = None
    last_text: tuple[str, str | None] = ("", None)
    for key, data, meta in items:
        if type(key) is not str:
            validate_key(key)  # raises with the explanation
        try:
            raw = key.encode()
        except UnicodeEncodeError:     # a lone surrogate: not a valid key
            validate_key(key)
            raise
        # 64 ASCII letters or digits (a structural key) is valid: ``bytes.isalnum`` checks that
        # at a fraction of the cost of ``str.isalnum`` (non-ASCII is never alnum in bytes).
        if not (len(raw) == 64 and raw.isalnum()) and _KEY_RE.fullmatch(key) is None:
            validate_key(key)
        if type(data) is not bytes or type(meta) is not tuple or len(meta) != 7:
            return None
        node_id, dt, announced, size, _compression, created_at, md = meta
        if node_id and node_id != key:
            raise StorageError(f"metadata.node_id {node_id!r} does not match key {key!r}")
        if type(dt) is not DataType:     # (an Enum with members has no subclasses)
            raise StorageError(f"metadata.data_type must be a DataType, got {dt!r}")
        n = len(data)
        if size != n:
            raise StorageError(f"metadata.size {size} != {n} bytes of data for {key!r}")
        if n > largest:
            largest = n
        if md is None:
            meta_json = dag_id = None
        else:
            if md is not last_md:
                last_text, last_md = dump_meta(md, key), md
            meta_json, dag_id = last_text
        latest[key] = (data, dt._value_, announced or "", n,
                       check_created_at(created_at, key) or now, meta_json, dag_id, raw)
    return latest, largest


#: Canonical JSON of metadata whose values are all strings or None, by its items: an engine
#: stores every result of a run with the same few such dicts ({"encoding", "dag_id"}), and
#: encoding one again costs more than the rest of a small put's checks. Cleared when full.
_META_TEXT: dict[tuple[Any, ...], tuple[str, str | None]] = {}
_META_TEXT_MAX = 256


def dump_meta(md: Any, key: str) -> tuple[str, str | None]:
    """``metadata`` dict -> (canonical JSON, dag_id); StorageError if it is not JSON-able."""
    if type(md) is dict and len(md) <= 4:
        items = tuple(md.items())
        for k, v in items:
            if type(k) is not str or (type(v) is not str and v is not None):
                break
        else:
            hit = _META_TEXT.get(items)
            if hit is None:
                if len(_META_TEXT) >= _META_TEXT_MAX:
                    _META_TEXT.clear()
                hit = _META_TEXT[items] = _dump_meta(md, key)
            return hit
    return _dump_meta(md, key)


def _dump_meta(md: Any, key: str) -> tuple[str, str | None]:
    if not isinstance(md, dict):
        raise StorageError(f"metadata.metadata must be a dict, got {type(md).__name__}")
    try:
        text = canonical_json(md)
        text.encode("utf-8")          # a lone surrogate: no store can write it
    except (TypeError, ValueError, RecursionError) as exc:
        raise StorageError(f"metadata of {key!r} is not JSON-serializable: {exc}") from exc
    dag = md.get("dag_id")
    return text, (None if dag is None else str(dag))


def dag_text(dag_id: Any) -> str | None:
    """``list_keys``' ``dag_id`` as stored results hold it: as text (``dump_meta`` stores
    ``str(metadata["dag_id"])``). Compared as given, ``list_results(5)`` found a result put
    with ``dag_id`` 5 on SQLite (whose column converts) and not on the other backends."""
    return None if dag_id is None else dag_id if type(dag_id) is str else str(dag_id)


def prepare_all(items: Iterable[tuple[str, Any, StorageMetadata]]) -> list[Prepared]:
    """``prepare`` every item of a batch (so one bad item fails the batch before any write);
    a key given twice keeps its last value, as if the puts had run in order."""
    now = utc_now()
    return list({p.key: p for p in (prepare(k, d, m, now) for k, d, m in items)}.values())


#: Metadata keys a value is read back by (the engine's ``encoding``): no update may change them,
#: since no hash covers metadata (``{"encoding": "utf-8"}`` made every later run fail).
RESERVED_META = ("encoding",)


def merge_meta(old_json: str | None, patch: Any, key: str) -> tuple[str, str | None]:
    """Shallow-merge ``patch`` into the stored metadata JSON -> (new JSON, dag_id)."""
    if not isinstance(patch, dict):
        raise StorageError(f"metadata update must be a dict, got {type(patch).__name__}")
    old = meta_from_json(old_json, key) or {}
    for name in RESERVED_META:
        if name in patch and (name not in old or patch[name] != old[name]):
            raise StorageError(f"metadata {name!r} of {key!r} says how its value is read "
                               f"back: an update cannot change it (give it another name)")
    return dump_meta({**old, **patch}, key)


def check_hash(p: Prepared, actual: str) -> str:
    """The hash to record: ``actual``; raise if the caller announced a different one."""
    if p.content_hash and p.content_hash != actual:
        hash_mismatch(p.key, actual, p.content_hash)
    return actual


def hash_mismatch(key: str, actual: str, announced: str) -> None:
    """Raise the error of a put whose data does not hash to the announced ``content_hash``."""
    raise StorageError(f"put {key!r}: data hashes to {actual} but metadata.content_hash "
                       f"is {announced}; nothing written")


def hash_views(views: Sequence[Buffer]) -> str:
    h = hashlib.sha256()
    for v in views:
        h.update(v)
    return h.hexdigest()


def joined(views: Sequence[Buffer]) -> Buffer:
    """One contiguous buffer (a copy only when there are several pieces)."""
    if len(views) == 1:
        return views[0]
    return b"".join(views)


def slices(views: Sequence[Buffer], size: int) -> Iterator[Buffer]:
    """Pieces of exactly ``size`` bytes (the last may be shorter) across the buffers.

    A piece inside one buffer is a memoryview slice (no copy); a piece spanning buffers is joined
    (one copy of at most ``size`` bytes), so memory stays bounded by the piece size. A
    ``size`` that is not positive would yield empty pieces for ever: refused.
    """
    if size <= 0:
        raise StorageError(f"piece size must be positive, got {size}")
    pending: list[memoryview] = []
    have = 0
    for buf in views:
        mv = memoryview(buf)
        pos, n = 0, len(mv)
        while pos < n:
            if not pending and n - pos >= size:
                yield mv[pos:pos + size]
                pos += size
                continue
            take = min(size - have, n - pos)
            pending.append(mv[pos:pos + take])
            have += take
            pos += take
            if have == size:
                yield b"".join(pending)
                pending, have = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else b"".join(pending)


def check_chunk_size(chunk_size: Any) -> None:
    """``StorageError`` unless ``chunk_size`` (a stream's) is a positive int."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise StorageError(f"chunk_size must be a positive int, got {chunk_size!r}")


def verified_stream(key: str, expected: str, pieces: Iterator[Buffer],
                    chunk_size: int, size: int | None = None) -> Iterator[bytes]:
    """Re-cut ``pieces`` into ``chunk_size`` chunks, hashing as they pass.

    The last chunk is held back until the whole value has been hashed (and, given ``size``,
    counted): on a mismatch ``IntegrityError`` is raised *instead of* the last chunk. A
    consumer may have seen the earlier chunks of a corrupted value, but never all of it
    without an error. A recorded size that is not the value's is a damaged entry too, as a
    whole read says (it gave the bytes while the metadata named another size).
    """
    check_chunk_size(chunk_size)
    h = hashlib.sha256()
    held: bytes | None = None
    buf = bytearray()
    total = 0
    for piece in pieces:
        h.update(piece)
        total += len(piece) if type(piece) is bytes else memoryview(piece).nbytes
        if not buf and len(piece) == chunk_size:      # common case: stored chunk == asked size
            chunks = [piece if type(piece) is bytes else bytes(piece)]
        else:
            buf += piece
            chunks = []
            while len(buf) >= chunk_size:
                chunks.append(bytes(buf[:chunk_size]))
                del buf[:chunk_size]
        for chunk in chunks:
            if held is not None:
                yield held
            held = chunk
    if buf:
        if held is not None:
            yield held
        held = bytes(buf)
    actual = h.hexdigest()
    if actual != expected:
        raise IntegrityError(key, expected, actual)
    if size is not None and total != size:
        raise IntegrityError(key, expected, f"<{total} bytes, recorded size {size}>")
    if held is not None:
        yield held


def verify(key: str, expected: str, data: Buffer, size: int | None = None) -> Buffer:
    """``data`` if it hashes to ``expected`` (and, given ``size``, has that many bytes);
    ``IntegrityError`` otherwise."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise IntegrityError(key, expected, actual)
    if size is not None:
        n = len(data) if type(data) is bytes else memoryview(data).nbytes
        if n != size:
            raise IntegrityError(key, expected, f"<{n} bytes, recorded size {size}>")
    return data


_DATA_TYPES = {d.value: d for d in DataType}


def data_type_of(key: str, digest: str, value: Any) -> DataType:
    """The ``DataType`` a stored entry names; an entry whose metadata names none is damaged
    (``IntegrityError``: the engine then removes it, and the next run recomputes it)."""
    found = _DATA_TYPES.get(value) if isinstance(value, str) else None
    if found is None:
        raise IntegrityError(key, digest, f"<metadata names no known data type: {value!r}>")
    return found


def meta_from_json(text: str | None, key: str, digest: str = "?") -> dict[str, Any] | None:
    """The stored ``metadata`` dict of ``key`` (recorded hash ``digest``). Text that is not a
    JSON object (a torn or edited record) is a damaged entry: ``IntegrityError``, so that the
    engine removes it and the next run recomputes it, not a ``JSONDecodeError`` on every run."""
    if text is None:
        return None
    try:
        md = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:     # JSONDecodeError is a ValueError
        raise IntegrityError(key, digest, f"<metadata is not JSON: {exc}>") from exc
    if not isinstance(md, dict):
        raise IntegrityError(key, digest, f"<metadata is not a JSON object: {text[:40]!r}>")
    return md
