"""Result-store contract, review of session 18: damaged metadata records, memory maps and file
descriptors, SQLite connections of ended threads, .npy headers beyond Latin-1, bad constructor
options and bad put input.

Run over the implementations of ``test_result_stores`` (its ``IMPLEMENTATIONS`` table) where the
contract is every store's; real SQLite files and directories under ``tmp_path``, damage done by
editing what is stored (sqlite3, file writes), never by mocking.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import json
import mmap
import os
import resource
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_result_stores import (  # the contract suite (pytest puts its directory on sys.path)
    IMPLEMENTATIONS, _compressible, _fs_doc, _make_fs, _make_sqlite, _meta,
)

from twingraph import component, pipeline
from twingraph.core.results import DataType, StorageMetadata, stored_value_id
from twingraph.core.states import RunState
from twingraph.errors import ConfigurationError, IntegrityError, StorageError
from twingraph.serialization import decode, encode
from twingraph.stores.results import (
    FilesystemStorage, HybridStorage, ResultStoreBase, SQLiteStorage,
)
from twingraph.stores.results._common import slices

_CASES = [pytest.param(impl, id=impl.name) for impl in IMPLEMENTATIONS]


@pytest.fixture(params=_CASES)
def named(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    impl = request.param
    store = impl.make(tmp_path, None)
    yield impl.name, store
    store.close()


# ------------------------------------------------- 1. a damaged metadata record is corruption

def _tear_sqlite_metadata(store: Any, key: str) -> None:
    with sqlite3.connect(store.db_path) as db:
        db.execute("UPDATE node_results SET metadata = substr(metadata, 1, 10) WHERE node_id=?",
                   (key,))
    db.close()


def _tear_fs_metadata(store: Any, key: str) -> None:
    path = store.metadata_path / f"{key}.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def _tear_metadata(name: str, store: Any, key: str) -> None:
    """Cut the stored metadata record of ``key`` in half (a torn write, an edit)."""
    if name == "sqlite":
        _tear_sqlite_metadata(store, key)
    elif name == "filesystem":
        _tear_fs_metadata(store, key)
    elif name == "hybrid":
        if store.small.has(key):
            _tear_sqlite_metadata(store.small, key)
        else:
            _tear_fs_metadata(store.large, key)
    elif name == "memory":
        store._entries[key].meta_json = store._entries[key].meta_json[:10]
    else:
        pytest.skip(f"no way to damage the metadata of {name} here")


@pytest.mark.parametrize("size", [40, 5000], ids=["small", "large"])
def test_a_damaged_metadata_record_is_integrity_error_and_can_be_deleted(named: Any,
                                                                       size: int) -> None:
    """What the engine needs to recover: a read fails with IntegrityError (not a
    JSONDecodeError or a plain StorageError, which left the entry in place and failed every
    later run), a memo lookup or a listing does not fail, and ``delete`` removes the entry."""
    name, store = named
    data = _compressible(size)
    store.put("d", data, _meta("d", data, metadata={"encoding": "bytes", "dag_id": "g"}))
    store.put("ok", b"fine", _meta("ok", b"fine", metadata={"dag_id": "g"}))
    _tear_metadata(name, store, "d")

    with pytest.raises(IntegrityError):
        store.read("d")
    with pytest.raises(IntegrityError):
        store.head("d")
    with pytest.raises(IntegrityError):
        asyncio.run(store.get_metadata("d"))
    with pytest.raises(IntegrityError):
        store.patch_metadata("d", {"x": 1})
    found = store.content_hashes(["d", "ok"])          # a miss, or a hit whose read then fails
    assert found["ok"] == stored_value_id(store.head("ok"))  # type: ignore[arg-type]
    assert "ok" in store.list_keys("g") and "ok" in store.list_keys()
    assert store.has("d") and asyncio.run(store.exists("d"))   # stored, damaged: every store

    assert store.delete("d") is True
    assert not store.has("d") and store.head("d") is None and store.read("d") is None
    store.put("d", data, _meta("d", data, metadata={"encoding": "bytes"}))
    meta, value = store.read("d")  # type: ignore[misc]
    assert bytes(value) == data and meta.metadata == {"encoding": "bytes"}


@pytest.mark.parametrize("text", ['{"enc', "[1, 2]", "5", "null-ish"])
def test_sqlite_metadata_that_is_no_json_object_is_integrity_error(tmp_path: Path,
                                                                   text: str) -> None:
    store = _make_sqlite(tmp_path, None)
    try:
        store.put("k", b"abc", _meta("k", b"abc", metadata={"encoding": "bytes"}))
        with sqlite3.connect(store.db_path) as db:
            db.execute("UPDATE node_results SET metadata = ?", (text,))
        db.close()
        for op in (store.head, store.read, lambda k: store.patch_metadata(k, {"a": 1})):
            with pytest.raises(IntegrityError):
                op("k")
        assert store.delete("k") and not store.has("k")
    finally:
        store.close()


_FS_FIELDS = [("size", v) for v in ("x", -1, None, 1.5, [], True)] + \
    [("storage", v) for v in (None, 5, "x", [], {})] + \
    [("content_hash", v) for v in (None, 5, [])] + \
    [("metadata", v) for v in ("x", 5, [1])] + \
    [("compression", v) for v in (5, "gzip")] + \
    [("(whole)", v) for v in ([], "text", 5)]
_FS_CASES = [(f, v, size) for f, v in _FS_FIELDS for size in (100, 5000)] + \
    [("storage.path", v, 5000) for v in (5, None, [], "../../etc/passwd")] + \
    [("storage.inline", v, 100) for v in (5, None)]          # 100 bytes: inline; 5000: a file


@pytest.mark.parametrize("field,value,size", _FS_CASES)
def test_filesystem_metadata_fields_of_the_wrong_type_are_integrity_errors(
        tmp_path: Path, field: str, value: Any, size: int) -> None:
    """Valid JSON with a field of the wrong type raised TypeError / AttributeError (and
    ``delete`` could not remove the entry): every read is IntegrityError, every other call a
    StorageError, and the entry can be deleted and written again."""
    store = _make_fs(tmp_path, None)
    try:
        data = _compressible(size)
        store.put("k", data, _meta("k", data, metadata={"dag_id": "g"}))
        path, doc = _fs_doc(store, "k")
        if field == "(whole)":
            doc = value
        elif "." in field:
            outer, inner = field.split(".")
            assert inner in doc[outer]
            doc[outer][inner] = value
        else:
            doc[field] = value
        path.write_text(json.dumps(doc))

        for read in (store.get, store.read, store.head,
                     lambda k: b"".join(store.iter_chunks(k))):
            with pytest.raises(IntegrityError):
                read("k")
        with pytest.raises(StorageError):
            store.patch_metadata("k", {"y": 1})
        assert store.content_hashes(["k"]) == {}      # a miss: the task runs and replaces it
        assert store.list_keys("g") == [] and store.list_keys() == ["k"]
        store.sweep(max_age=0)                       # must not fail on it either
        assert store.delete("k") is True and not store.has("k")
        store.put("k", b"new", _meta("k", b"new"))
        assert bytes(store.get("k") or b"") == b"new"
    finally:
        store.close()


def test_filesystem_overwrite_replaces_a_damaged_metadata_file(tmp_path: Path) -> None:
    store = _make_fs(tmp_path, None)
    try:
        data = _compressible(5000)
        store.put("k", data, _meta("k", data))
        _tear_fs_metadata(store, "k")
        store.put("k", data[:10], _meta("k", data[:10]))
        assert bytes(store.get("k") or b"") == data[:10]
    finally:
        store.close()


_SQLITE_COLUMNS = [("node_results", "data_size", v) for v in ("x", -1, 1.5, b"x", 10**12)] + \
    [("node_results", "n_chunks", v) for v in ("x", b"x", -3)] + \
    [("node_results", "compression", v) for v in ("gzip", 5)] + \
    [("node_data_chunks", "raw_size", v) for v in ("x", 1.5, b"x", -1)]


@pytest.mark.parametrize("table,column,value", _SQLITE_COLUMNS)
def test_sqlite_columns_of_the_wrong_type_are_integrity_errors(tmp_path: Path, table: str,
                                                               column: str, value: Any) -> None:
    """An edited or damaged row (a text ``data_size``, a terabyte) raised TypeError or
    MemoryError on every read: it is a damaged entry, which the engine then deletes."""
    store = _make_sqlite(tmp_path, None)
    try:
        data = os.urandom(5000)                     # chunked (the contract's threshold: 1 KiB)
        store.put("k", data, _meta("k", data))
        with sqlite3.connect(store.db_path) as db:
            db.execute(f"UPDATE {table} SET {column} = ? WHERE node_id = 'k'", (value,))
        db.close()
        for read in (store.get, store.read, lambda k: b"".join(store.iter_chunks(k))):
            with pytest.raises(IntegrityError):
                read("k")
        if table == "node_results" and column != "n_chunks" and value != 10**12:
            with pytest.raises(IntegrityError):          # (a size of the right type: only
                store.head("k")                          # reading the chunks tells)
        assert store.delete("k") and not store.has("k")
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", "filesystem"])
def test_a_damaged_metadata_record_does_not_fail_every_later_run(tmp_path: Path,
                                                                kind: str) -> None:
    """Engine level: after a memo entry's metadata record is torn, at most the next run fails
    (with IntegrityError, and the entry is removed); the run after it recomputes."""
    from twingraph.engine.engine import Engine
    from twingraph.stores.metadata import SQLMetadataStore

    def open_store() -> ResultStoreBase:
        return SQLiteStorage(tmp_path / "r.db") if kind == "sqlite" \
            else FilesystemStorage(tmp_path / "fs")

    @component
    def make(n):
        return {"values": list(range(n))}

    @component
    def total(values):
        return sum(values)

    @pipeline(name=f"s18_torn_metadata_{kind}")
    def p(n: int):
        return total(values=make(n=n)["outputs"]["values"])

    eng = Engine(results=open_store(), flush_interval=0.01,
                 metadata=SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True))
    try:
        first = p.run(engine=eng, n=50)
        key = {t.node_id: t for t in eng.metadata.get_tasks(first.run_id)}["total-0"].result_key
        eng.results.close()
        store = open_store()
        _tear_metadata(kind, store, key)
        eng.results = eng.recorder.results = store

        second = p.run(engine=eng, n=50)
        if second.state is not RunState.SUCCESS:
            err = second.error
            assert isinstance(err, IntegrityError) or isinstance(err.__cause__, IntegrityError)
        third = p.run(engine=eng, n=50)
        assert third.state is RunState.SUCCESS, third.error
        assert third.value["outputs"]["result"] == sum(range(50))
    finally:
        eng.close()


# ---------------------------------------- 2. memory-mapped reads and the descriptor limit

def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class _FdLimit:
    """Lower the soft limit on open descriptors for a block (restored after)."""

    def __init__(self, spare: int) -> None:
        self.spare = spare

    def __enter__(self) -> None:
        self.saved = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (_open_fds() + self.spare, self.saved[1]))

    def __exit__(self, *exc: object) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, self.saved)


def test_filesystem_memory_maps_do_not_use_up_the_descriptors(tmp_path: Path) -> None:
    """Each memory-mapped read kept a descriptor for as long as its view lived: holding more
    values than the limit allows failed with EMFILE (a fan-in task over 1100 large inputs).
    Maps now hold a share of the limit; the reads past it are copies, and the process can
    still open files."""
    store = FilesystemStorage(tmp_path / "fs", mmap_threshold=4096, fsync=False)
    values = {f"k{i}": bytes([i % 251]) * 8192 for i in range(300)}
    for key, data in values.items():
        store.put(key, data, _meta(key, data))
    held: list[Any] = []
    try:
        with _FdLimit(spare=64):
            for key in values:
                held.append(store.get(key))
                held.append(store.read(key)[1])  # type: ignore[index]
            with open(os.devnull, "rb"):         # descriptors are left for the rest
                pass
        assert [bytes(v) for v in held[::2]] == list(values.values())
        assert [bytes(v) for v in held[1::2]] == list(values.values())
        assert isinstance(held[0], memoryview) and isinstance(held[0].obj, mmap.mmap)
        arr = decode(held[0], "bytes")
        assert arr == values["k0"]
    finally:
        held.clear()
        store.close()


def test_filesystem_read_when_a_map_cannot_get_a_descriptor(tmp_path: Path) -> None:
    """One descriptor left: the data file opens, but the map's ``dup`` fails (EMFILE). The read
    gives a copy instead of failing."""
    store = FilesystemStorage(tmp_path / "fs", mmap_threshold=4096, fsync=False)
    data = os.urandom(100_000)
    store.put("big", data, _meta("big", data))
    hoard: list[int] = []
    try:
        with _FdLimit(spare=32):
            try:
                while True:
                    hoard.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
            os.close(hoard.pop())                 # exactly one descriptor free
            got = store.get("big")
            found = store.read("big")
        assert got is not None and bytes(got) == data
        assert found is not None and bytes(found[1]) == data
        assert not isinstance(getattr(got, "obj", None), mmap.mmap)
    finally:
        for fd in hoard:
            os.close(fd)
        store.close()


# ------------------------------------------- 3. SQLite connections of threads that ended

def _fds_on(path: Path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(str(path))
        except OSError:
            pass
    return n


def test_sqlite_closes_the_connections_of_threads_that_ended(tmp_path: Path) -> None:
    """Every thread that ever touched the store kept its connection (3 descriptors) until
    ``close``: 500 short-lived threads, 1500 descriptors. A thread's connection now goes
    with it; the store keeps working from old and new threads, and ``close`` still closes
    everything."""
    db = tmp_path / "r.db"
    store = SQLiteStorage(db)
    store.put("k", b"v", _meta("k", b"v"))
    before = _fds_on(db)
    errors: list[BaseException] = []

    def use() -> None:
        try:
            assert bytes(store.get("k") or b"") == b"v"
            store.put("t", b"w", _meta("t", b"w"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for _ in range(200):
        t = threading.Thread(target=use)
        t.start()
        t.join()
    for _ in range(20):                         # each asyncio.run has its own thread pool
        v = b"x" * 300_000
        asyncio.run(store.store_result("big", v, _meta("big", v)))
        assert bytes(asyncio.run(store.retrieve_result("big")) or b"") == v
    assert not errors
    # SQLite may keep a closed connection's descriptor of the main file until the process
    # releases its locks on it (the unix VFS's unused-descriptor list): a few, not 200.
    assert _fds_on(db) <= before + 4
    assert len(store._conns) == 1                # the main thread's

    running = [threading.Thread(target=use) for _ in range(8)]   # concurrent, and alive
    for t in running:
        t.start()
    for t in running:
        t.join()
    assert not errors and bytes(store.get("t") or b"") == b"w"
    store.close()
    assert _fds_on(db) == 0
    with pytest.raises(StorageError):
        store.get("k")


# ----------------------------------------------------- 4. .npy headers beyond Latin-1

def test_npy_field_names_beyond_latin1_round_trip_through_every_store(named: Any) -> None:
    """A structured dtype with a field named in CJK raised UnicodeEncodeError in ``encode``:
    the header is now .npy version 3.0 (UTF-8), which NumPy itself reads."""
    _, store = named
    import io
    for n in (3, 2000):                         # kept whole, and chunked / a data file
        a = np.zeros(n, dtype=[("名前", "<i4"), ("x", "<f8"), ("é", "u1")])
        a["名前"] = np.arange(n)
        enc = encode(a)
        assert enc.encoding == "npy" and enc.to_bytes()[6] == 3
        store.put("a", enc.buffers, enc.to_metadata("a"))
        meta, data = store.read("a")  # type: ignore[misc]
        out = decode(data, meta.metadata["encoding"])  # type: ignore[index]
        assert out.dtype == a.dtype and out.tobytes() == a.tobytes()
        assert np.load(io.BytesIO(bytes(data))).dtype == a.dtype
    latin = np.zeros(2, dtype=[("é", "<i4")])   # Latin-1 headers stay version 1.0
    assert encode(latin).to_bytes()[6] == 1


# --------------------------------------------------------- 5. chunk_size at construction

@pytest.mark.parametrize("chunk_size", [0, -1, 1.5, True])
def test_a_chunk_size_that_is_no_positive_int_is_refused_at_construction(
        tmp_path: Path, chunk_size: Any) -> None:
    """FilesystemStorage took chunk_size=0 and the next large put never returned."""
    with pytest.raises(ConfigurationError):
        FilesystemStorage(tmp_path / "fs", chunk_size=chunk_size)
    with pytest.raises(ConfigurationError):
        HybridStorage(tmp_path / "h", chunk_size=chunk_size)
    with pytest.raises(ConfigurationError):
        SQLiteStorage(tmp_path / "r.db", chunk_size=chunk_size)
    with pytest.raises(StorageError):
        next(slices([b"abc"], 0))


# ----------------------------------------------------------------- 6. bad input, typed

_BAD_PUTS = {
    "data=None": lambda: ("k", None, StorageMetadata("k", DataType.BINARY, "", 0)),
    "data=int": lambda: ("k", 5, StorageMetadata("k", DataType.BINARY, "", 0)),
    "metadata=None": lambda: ("k", b"x", None),
    "metadata=dict": lambda: ("k", b"x", {"node_id": "k"}),
    "created_at=datetime": lambda: ("k", b"x", _meta("k", b"x",
                                                     created_at=datetime.datetime.now())),
    "created_at=bytes": lambda: ("k", b"x", _meta("k", b"x", created_at=b"2024")),
    "created_at=int": lambda: ("k", b"x", _meta("k", b"x", created_at=5)),
    "created_at=surrogate": lambda: ("k", b"x", _meta("k", b"x", created_at="\udc80")),
}


@pytest.mark.parametrize("bad", list(_BAD_PUTS))
def test_bad_put_input_is_a_storage_error_and_changes_nothing(named: Any, bad: str) -> None:
    """These raised TypeError / AttributeError / UnicodeEncodeError, and SQLite stored a
    ``datetime`` as its ``str()`` where the filesystem store failed: now the same
    StorageError from every store, before anything is written."""
    _, store = named
    store.put("k", b"old", _meta("k", b"old"))
    item = _BAD_PUTS[bad]()
    with pytest.raises(StorageError):
        store.put(*item)
    with pytest.raises(StorageError):
        store.put_many([("other", b"y", _meta("other", b"y")), item])
    with pytest.raises(StorageError):
        asyncio.run(store.store_result(*item))
    assert bytes(store.get("k") or b"") == b"old" and not store.has("other")


def test_created_at_text_is_kept_as_given(named: Any) -> None:
    _, store = named
    for stamp in ("2024-05-01T12:00:00+02:00", "2024-05-01 12:00 heure d'été"):
        store.put("k", b"x", _meta("k", b"x", created_at=stamp))
        assert store.head("k").created_at == stamp  # type: ignore[union-attr]


def test_sqlite_wire_rows_refuse_a_bad_created_at(tmp_path: Path) -> None:
    """The writer process's direct path (``put_wire_rows``) checks as ``put`` does."""
    store = _make_sqlite(tmp_path, None)
    try:
        for created_at in (datetime.datetime.now(), "\udc80"):
            row = ("k", b"x", ("k", DataType.BINARY, "", 1, None, created_at, None))
            with pytest.raises(StorageError):
                store.put_wire_rows([row])
        assert not store.has("k")
    finally:
        store.close()


@pytest.mark.parametrize("level", [100, 23, "3", 2.5, True, None])
def test_a_compression_level_zstd_refuses_is_refused_at_construction(tmp_path: Path,
                                                                     level: Any) -> None:
    """compression_level=100 was accepted, then every put that compressed failed."""
    for make in (lambda: SQLiteStorage(tmp_path / "r.db", compression="zstd",
                                       compression_level=level),
                 lambda: FilesystemStorage(tmp_path / "fs", compression="zstd",
                                           compression_level=level),
                 lambda: HybridStorage(tmp_path / "h", compression="zstd",
                                       compression_level=level)):
        with pytest.raises(ConfigurationError):
            make()


@pytest.mark.parametrize("level", [-5, 1, 22])
def test_compression_levels_zstd_takes_are_accepted(tmp_path: Path, level: int) -> None:
    data = _compressible(50_000)
    for store in (SQLiteStorage(tmp_path / "r.db", compression="zstd", compression_level=level),
                  FilesystemStorage(tmp_path / "fs", compression="zstd",
                                    compression_level=level)):
        try:
            store.put("k", data, _meta("k", data))
            assert bytes(store.get("k") or b"") == data
            assert store.head("k").compression == "zstd"  # type: ignore[union-attr]
        finally:
            store.close()


def test_a_sqlite_store_whose_file_was_replaced_refuses_writes(tmp_path: Path) -> None:
    """Removed and created again by another process while open: its connections went on
    writing into the old file, unreachable at the path; the runs said SUCCESS and every
    result they wrote was lost."""
    path = tmp_path / "r.db"
    store = SQLiteStorage(path)
    try:
        store.put("a", b"one", _meta("a", b"one"))
        for f in tmp_path.glob("r.db*"):
            f.unlink()
        SQLiteStorage(path).close()             # a new, empty store at the same path
        with pytest.raises(StorageError, match="removed or replaced while open"):
            store.put("b", b"two", _meta("b", b"two"))
    finally:
        store.close()
    fresh = SQLiteStorage(path)
    try:
        assert fresh.head("b") is None              # nothing went into the void silently
    finally:
        fresh.close()
