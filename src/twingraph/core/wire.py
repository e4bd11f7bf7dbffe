"""Batches of engine records as plain tuples, framed for a pipe to the writer process.

The recorder can hand its batches to a child process (``engine.writer``, decision 0012). A
record crosses as ``(kind, field values)`` and a result as ``(key, bytes, metadata field
values)``: pickling tuples of plain values costs about half of pickling the dataclasses. A
frame is an 8-byte big-endian length and a pickle (protocol 5). Both ends are this package, on
a pipe between a process and the child it started: nothing else ever writes to it.
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from itertools import groupby
from operator import attrgetter
from typing import Any

from twingraph.core.records import (AttemptRecord, EdgeRecord, LogRecord, RunHeartbeat,
                                    RunRecord, RunUpdate, TaskRecord, TaskUpdate)
from twingraph.core.results import StorageMetadata
from twingraph.core.states import TaskState

_json_dumps: Callable[..., bytes] | None
_json_loads: Callable[[bytes], Any] | None
try:
    import orjson
    _json_dumps, _json_loads = orjson.dumps, orjson.loads
except ImportError:  # pragma: no cover - orjson is a dependency; pickle is the fallback
    _json_dumps = _json_loads = None

KINDS: tuple[type, ...] = (RunRecord, RunUpdate, RunHeartbeat, TaskRecord, TaskUpdate,
                           AttemptRecord, LogRecord, EdgeRecord)
_KIND = {cls: i for i, cls in enumerate(KINDS)}
_TASK = _KIND[TaskRecord]
_VALUES = [attrgetter(*[f.name for f in fields(cls)]) for cls in KINDS]
_META = attrgetter(*[f.name for f in fields(StorageMetadata)])
_HEADER = struct.Struct(">Q")
_STATES = {s.value: s for s in TaskState}     # TaskState(v) is Python code in the enum module
#: Changes with the shape of ``pack``'s output. The writer process runs the package that is on
#: disk when it starts, which after an upgrade in place is not the one its parent loaded: both
#: ends check the other's version when it starts (``engine.writer``, ``stores.writer_child``).
VERSION = 5

#: ``pack``'s output: runs of records, and the results as parts (each a list of wire tuples, or
#: the pickle of one, from ``pack_results``).
Packed = tuple[list[tuple[int, Any]], list[Any]]


class PackedTaskRecords:
    """``TaskRecord``s already in their wire form (``pack_task_values``): ``pack`` passes them
    through as they are. ``count`` is how many records they hold."""
    __slots__ = ("data", "count")

    def __init__(self, data: bytes, count: int) -> None:
        self.data, self.count = data, count

    def records(self) -> list[TaskRecord]:
        """The records again (for a batch written in this process after all)."""
        return unpack(([(_TASK, self.data)], []))[0]


class PackedResults:
    """Results already in their wire form (``pack_results``), with what the recorder still
    needs of them: their keys (for the key index) and tokens (to say they are stored)."""
    __slots__ = ("data", "keys", "tokens", "count")

    def __init__(self, data: bytes, keys: list[str], tokens: list[Any]) -> None:
        self.data, self.keys, self.tokens, self.count = data, keys, tokens, len(keys)

    def items(self) -> list[tuple[str, tuple[bytes], StorageMetadata]]:
        """The results as ``put_many`` items again (for a batch written in this process)."""
        return unpack(([], [self.data]))[1]


def pack_results(puts: Sequence[Any]) -> PackedResults:
    """Results to store (objects with ``key``, ``buffers``, ``meta`` and ``token``, the
    recorder's ``PutResult``) packed now, as ``pack`` would send them: see
    ``pack_task_values``. Raises what pickling raises."""
    return pack_result_rows(_result_rows([(r.key, r.buffers, r.meta) for r in puts]),
                            [r.token for r in puts if r.token is not None])


def pack_result_rows(rows: list[tuple[str, bytes, tuple[Any, ...]]], tokens: list[Any]
                     ) -> PackedResults:
    """``pack_results`` of results given as their wire rows, ``(key, bytes, StorageMetadata
    field values)``, and the tokens that are not None: the run loop builds small results so,
    without a ``PutResult`` and a ``StorageMetadata`` each."""
    return PackedResults(pickle.dumps(rows, protocol=5), [r[0] for r in rows], tokens)


def pack_task_values(rows: list[tuple[Any, ...]]) -> PackedTaskRecords | None:
    """Task rows, given as ``TaskRecord`` field values in field order (the run loop builds them
    so: no ``TaskRecord`` is made), as ``pack`` would send them, packed now: the run loop does
    it while they are fresh in the CPU's caches (later, in the recorder, the same work cost
    ~3x as much). None if orjson is missing or refuses them (an int beyond 64 bits): the loop
    then hands them over as ``TaskRecord``s."""
    if _json_dumps is None:
        return None
    try:
        return PackedTaskRecords(_json_dumps(rows), len(rows))
    except TypeError:
        return None


def pack(records: Iterable[Any], results: Iterable[Any]) -> Packed:
    """Records and ``(key, buffers, StorageMetadata)`` results (or ``PackedResults``) ->
    tuples of plain values.

    Records go as runs of one kind, in order: ``(kind, [field values, ...])``. The recorder
    sorts a batch by kind, so a frame is a handful of runs, each turned into tuples by one
    ``map`` (no tuple per record to say its kind). ``PackedTaskRecords`` are task rows packed
    already: each goes as one run as it is. A run of task rows (most of a frame) goes
    as JSON bytes instead, 2x cheaper to write than their pickle: their values are strings,
    numbers that are never NaN (times, counts), None, the state and the ``inputs`` dict, which
    the metadata store writes as JSON anyway. A run orjson refuses (an int beyond 64 bits in
    ``inputs``) stays tuples."""
    kind, values = _KIND, _VALUES
    runs: list[tuple[int, Any]] = []
    for cls, group in groupby(records, type):
        if cls is PackedTaskRecords:
            runs.extend([(_TASK, p.data) for p in group])
            continue
        i = kind[cls]
        rows = list(map(values[i], group))
        if i == _TASK and _json_dumps is not None:
            try:
                runs.append((i, _json_dumps(rows)))
                continue
            except TypeError:
                pass
        runs.append((i, rows))
    parts: list[Any] = []
    plain: list[Any] = []
    for item in results:
        if type(item) is PackedResults:
            if plain:
                parts.append(_result_rows(plain))
                plain = []
            parts.append(item.data)
        else:
            plain.append(item)
    if plain:
        parts.append(_result_rows(plain))
    return runs, parts


def _result_rows(items: Iterable[tuple[str, Sequence[Any], Any]]) -> list[tuple[str, bytes, Any]]:
    return [(key, buffers[0] if type(buffers) is tuple and len(buffers) == 1
             and type(buffers[0]) is bytes else _joined(buffers), _META(meta))
            for key, buffers, meta in items]


def unpack(packed: Packed) -> tuple[list[Any], list[tuple[str, tuple[bytes], StorageMetadata]]]:
    """``pack``'s inverse: records, and results as ``put_many`` items."""
    runs, res = packed
    recs: list[Any] = []
    for i, rows in runs:
        cls = KINDS[i]
        if type(rows) is bytes:              # task rows as JSON (``pack``): the state by value
            states, loads = _STATES, _json_loads or json.loads
            for r in loads(rows):
                r[3] = states[r[3]]
                recs.append(cls(*r))
            continue
        recs.extend([cls(*vals) for vals in rows])
    items = []
    for part in res:
        rows = pickle.loads(part) if type(part) is bytes else part
        items.extend([(key, (data,), StorageMetadata(*meta)) for key, data, meta in rows])
    return recs, items


class TaskRows:
    """Task rows for the metadata store's direct path (``unpack_rows``): each row a list of
    ``TaskRecord`` field values in field order, the state a ``TaskState`` or its value.
    ``SQLMetadataStore.write`` takes it in a batch where it would take the ``TaskRecord``s,
    and writes the same rows (``stores.metadata._write``); only the writer process makes
    them."""
    __slots__ = ("rows",)

    def __init__(self, rows: list[list[Any]]) -> None:
        self.rows = rows


def unpack_rows(packed: Packed) -> tuple[list[Any], list[tuple[str, Any, tuple[Any, ...]]]]:
    """``unpack`` for the writer process, which writes what it unpacks at once: each run of
    task rows becomes a ``TaskRows`` (where ``unpack`` makes a ``TaskRecord`` per row, which
    the metadata store turned back into values; consecutive ones are written together, as
    consecutive ``TaskRecord``s are), and the results stay wire rows, ``(key, bytes,
    StorageMetadata field values)``, for ``put_wire_rows``. The other records are made as
    ``unpack`` makes them."""
    runs, res = packed
    recs: list[Any] = []
    loads = _json_loads or json.loads
    for i, rows in runs:
        if i == _TASK:
            decoded = loads(rows) if type(rows) is bytes else [list(r) for r in rows]
            if decoded:         # (an empty one would part the records around it, unlike unpack)
                recs.append(TaskRows(decoded))
            continue
        cls = KINDS[i]
        recs.extend([cls(*vals) for vals in rows])
    items: list[tuple[str, Any, tuple[Any, ...]]] = []
    for part in res:
        items.extend(pickle.loads(part) if type(part) is bytes else part)
    return recs, items


def _joined(buffers: Sequence[Any]) -> bytes:
    if type(buffers) is tuple and len(buffers) == 1 and type(buffers[0]) is bytes:
        return buffers[0]
    if isinstance(buffers, (bytes, bytearray, memoryview)):
        return bytes(buffers)
    return b"".join(buffers)


def frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=5)
    return _HEADER.pack(len(data)) + data


def read_frame(read: Callable[[int], bytes]) -> Any:
    """The next message from ``read`` (a blocking read of up to n bytes); None at the end of
    the stream, or if it ends inside a frame (the writer died while sending it)."""
    head = _read_exactly(read, _HEADER.size)
    if head is None:
        return None
    data = _read_exactly(read, _HEADER.unpack(head)[0])
    return None if data is None else pickle.loads(data)


def _read_exactly(read: Callable[[int], bytes], n: int) -> bytes | None:
    parts, left = [b""], n
    while left:
        chunk = read(left)
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return parts[-1] if len(parts) <= 2 else b"".join(parts)
