"""Contract suite for result stores: the sync port (``twingraph.ports.ResultStore``) and the
dynamic-scheduler document's async ``StorageInterface``, run over every implementation.

Real SQLite files and real directories under ``tmp_path``; corruption is done by editing the
stored bytes directly (sqlite3 / file writes), never by mocking.
"""

from __future__ import annotations

import asyncio
import base64
import json
import mmap
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from twingraph.core.results import DataType, StorageMetadata, stored_value_id
from twingraph.errors import ConfigurationError, IntegrityError, StorageError
from twingraph.ports import ResultStore
from twingraph.serialization import Encoded, decode, encode
from twingraph.stores.results import (
    FilesystemStorage, HybridStorage, MemoryStorage, ResultStoreBase, SQLiteStorage,
    StorageInterface, create_storage_backend,
)

# Small thresholds so that "large" (chunked, memory-mapped, compressed) paths run on small data.
CHUNK = 256          # SQLite chunk size, filesystem write/read piece size
THRESHOLD = 1024     # SQLite chunk threshold, filesystem mmap threshold
INLINE = 256         # filesystem: values up to this size live in the metadata file
COMPRESS_MIN = 64


# ------------------------------------------------------------------ implementations under test

def _flip(data: bytes, pos: int | None = None) -> bytes:
    b = bytearray(data)
    i = len(b) // 2 if pos is None else pos
    b[i] ^= 0xFF
    return bytes(b)


def _make_sqlite(tmp: Path, compression: str | None) -> ResultStoreBase:
    return SQLiteStorage(tmp / "results.db", chunk_threshold=THRESHOLD, chunk_size=CHUNK,
                         compression=compression, compression_min_size=COMPRESS_MIN)


def _corrupt_sqlite(store: Any, key: str) -> None:
    with sqlite3.connect(store.db_path) as db:
        (n_chunks,) = db.execute("SELECT n_chunks FROM node_results WHERE node_id=?",
                                 (key,)).fetchone()
        if n_chunks == 0:
            (data,) = db.execute("SELECT data FROM node_results WHERE node_id=?", (key,)).fetchone()
            db.execute("UPDATE node_results SET data=? WHERE node_id=?", (_flip(data), key))
        else:
            cid = n_chunks // 2
            (data,) = db.execute("SELECT data FROM node_data_chunks WHERE node_id=? AND "
                                 "chunk_id=?", (key, cid)).fetchone()
            db.execute("UPDATE node_data_chunks SET data=? WHERE node_id=? AND chunk_id=?",
                       (_flip(data), key, cid))


def _lose_sqlite(store: Any, key: str) -> bool:
    with sqlite3.connect(store.db_path) as db:
        return db.execute("DELETE FROM node_data_chunks WHERE node_id=? AND chunk_id=1",
                          (key,)).rowcount > 0


def _count_sqlite(store: Any) -> int:
    with sqlite3.connect(store.db_path) as db:
        return sum(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                   for t in ("node_results", "node_data_chunks"))


def _make_fs(tmp: Path, compression: str | None) -> ResultStoreBase:
    return FilesystemStorage(tmp / "fs", inline_threshold=INLINE, mmap_threshold=THRESHOLD,
                             chunk_size=CHUNK, compression=compression,
                             compression_min_size=COMPRESS_MIN)


def _fs_doc(store: Any, key: str) -> tuple[Path, dict[str, Any]]:
    path = store.metadata_path / f"{key}.json"
    return path, json.loads(path.read_text())


def _corrupt_fs(store: Any, key: str) -> None:
    meta_path, doc = _fs_doc(store, key)
    if "inline" in doc["storage"]:
        raw = _flip(base64.b64decode(doc["storage"]["inline"]))
        doc["storage"]["inline"] = base64.b64encode(raw).decode()
        meta_path.write_text(json.dumps(doc))
    else:
        path = store.base_path / doc["storage"]["path"]
        with open(path, "r+b") as f:
            f.seek(path.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))


def _lose_fs(store: Any, key: str) -> bool:
    _, doc = _fs_doc(store, key)
    if "path" not in doc["storage"]:
        return False
    (store.base_path / doc["storage"]["path"]).unlink()
    return True


def _count_fs(store: Any) -> int:
    return sum(len(files) for _, _, files in os.walk(store.base_path)) - 1  # minus .lock


def _make_hybrid(tmp: Path, compression: str | None) -> ResultStoreBase:
    return HybridStorage(tmp / "hybrid", large_threshold=THRESHOLD, chunk_size=CHUNK,
                         inline_threshold=INLINE, compression=compression,
                         compression_min_size=COMPRESS_MIN)


def _hybrid_side(store: Any, key: str) -> Any:
    return store.small if store.small.has(key) else store.large


def _corrupt_hybrid(store: Any, key: str) -> None:
    side = _hybrid_side(store, key)
    (_corrupt_sqlite if side is store.small else _corrupt_fs)(side, key)


def _lose_hybrid(store: Any, key: str) -> bool:
    side = _hybrid_side(store, key)
    return (_lose_sqlite if side is store.small else _lose_fs)(side, key)


def _count_hybrid(store: Any) -> int:
    return _count_sqlite(store.small) + _count_fs(store.large)


def _make_memory(tmp: Path, compression: str | None) -> ResultStoreBase:
    return MemoryStorage()


def _corrupt_memory(store: Any, key: str) -> None:
    store._entries[key].data = _flip(store._entries[key].data)


def _count_memory(store: Any) -> int:
    return len(store._entries)


@dataclass(frozen=True)
class Impl:
    name: str
    make: Callable[[Path, str | None], ResultStoreBase]
    corrupt: Callable[[Any, str], None]          # flip one stored byte of the value
    lose_data: Callable[[Any, str], bool] | None  # drop data, keep metadata (False: not possible)
    count: Callable[[Any], int]                  # stored rows/files (0 after deleting all)
    compresses: bool
    persistent: bool


# Whoever adds a result store backend: add it here, and the whole contract runs over it.
IMPLEMENTATIONS = [
    Impl("sqlite", _make_sqlite, _corrupt_sqlite, _lose_sqlite, _count_sqlite, True, True),
    Impl("filesystem", _make_fs, _corrupt_fs, _lose_fs, _count_fs, True, True),
    Impl("hybrid", _make_hybrid, _corrupt_hybrid, _lose_hybrid, _count_hybrid, True, True),
    Impl("memory", _make_memory, _corrupt_memory, None, _count_memory, False, False),
]
_PARAMS = [pytest.param((impl, comp), id=impl.name + ("-zstd" if comp else ""))
           for impl in IMPLEMENTATIONS for comp in ((None, "zstd") if impl.compresses else (None,))]


@pytest.fixture(params=_PARAMS)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    impl, comp = request.param
    store = impl.make(tmp_path, comp)
    yield impl, store, comp
    store.close()


@pytest.fixture
def store(case: Any) -> ResultStoreBase:
    return case[1]


# ------------------------------------------------------------------------------------ values

class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def _compressible(n: int) -> bytes:
    return (b"twingraph result store " * (n // 23 + 1))[:n]


VALUES = {
    "json-int": 42,
    "json-str": "héllo",
    "json-none": None,
    "json-nested": {"b": [1, 2.5, None, True], "a": {"x": "y"}},
    "json-large": [{"i": i, "s": "v" * 20} for i in range(400)],
    "bytes-small": b"\x00\x01\x02",
    "bytes-empty": b"",
    "bytes-chunked": os.urandom(5000),
    "bytes-compressible": _compressible(6000),
    "npy-small": np.arange(12, dtype=np.int32).reshape(3, 4),
    "npy-large": np.linspace(0, 1, 3000),
    "npy-fortran": np.asfortranarray(np.arange(600.0).reshape(20, 30)),
    "pickle-tuple": (1, "a", 2.0),
    "pickle-object": Point(1, 2),
    "pickle-set": {1, 2, 3},
}


def _eq(a: Any, b: Any) -> bool:
    if isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return bool(a == b) and type(a) is type(b)


def _put(store: ResultStoreBase, key: str, value: Any, **md: Any) -> Encoded:
    enc = encode(value)
    store.put(key, enc.buffers, enc.to_metadata(key, md or None))
    return enc


def _meta(key: str, data: bytes, **kw: Any) -> StorageMetadata:
    import hashlib
    return StorageMetadata(node_id=key, data_type=kw.pop("data_type", DataType.BINARY),
                           content_hash=hashlib.sha256(data).hexdigest(), size=len(data), **kw)


# ------------------------------------------------------------------------------ round trips

def test_implements_both_faces(store: ResultStoreBase) -> None:
    assert isinstance(store, ResultStore)
    assert isinstance(store, StorageInterface)


@pytest.mark.parametrize("name", VALUES)
def test_round_trip_every_encoding(store: ResultStoreBase, name: str) -> None:
    value = VALUES[name]
    enc = _put(store, "k1", value, dag_id="dag-1")
    got = store.get("k1")
    assert got is not None and bytes(got) == enc.to_bytes()
    assert _eq(decode(got, enc.encoding), value)
    meta = store.head("k1")
    assert meta is not None
    assert (meta.node_id, meta.data_type, meta.size) == ("k1", enc.data_type, enc.size)
    assert meta.content_hash == enc.content_hash
    assert meta.created_at and meta.metadata == {"dag_id": "dag-1", "encoding": enc.encoding}
    assert b"".join(store.iter_chunks("k1", 100)) == enc.to_bytes()


def test_every_data_type_round_trips(store: ResultStoreBase) -> None:
    for i, dt in enumerate(DataType):
        data = f"value of type {dt.value}".encode() * (1 + i * 30)
        store.put(f"t{i}", data, _meta(f"t{i}", data, data_type=dt))
        assert bytes(store.get(f"t{i}") or b"") == data
        assert store.head(f"t{i}").data_type is dt  # type: ignore[union-attr]
    big = encode(np.zeros(300), large_threshold=1000)
    assert big.data_type is DataType.LARGE_OBJECT
    store.put("big", big.buffers, big.to_metadata("big"))
    assert store.head("big").data_type is DataType.LARGE_OBJECT  # type: ignore[union-attr]
    assert np.array_equal(decode(store.get("big"), "npy"), np.zeros(300))  # type: ignore[arg-type]


def test_scatter_buffers_are_written_in_order(store: ResultStoreBase) -> None:
    parts: list[bytes | bytearray | memoryview] = [b"head-", bytearray(b"x" * 3000),
                                                   memoryview(b"-tail")]
    data = b"".join(parts)
    store.put("scatter", parts, _meta("scatter", data))
    assert bytes(store.get("scatter") or b"") == data


@pytest.mark.parametrize("chunk_size", [1, 7, CHUNK, 1000, 10**6])
def test_streaming_chunk_sizes(store: ResultStoreBase, chunk_size: int) -> None:
    data = os.urandom(3000)
    store.put("s", data, _meta("s", data))
    chunks = list(store.iter_chunks("s", chunk_size))
    assert b"".join(chunks) == data
    assert all(type(c) is bytes for c in chunks)
    assert all(len(c) == chunk_size for c in chunks[:-1]) and 0 < len(chunks[-1]) <= chunk_size


@pytest.mark.parametrize("bad", [0, -1, 1.5, None, True, "64"])
def test_a_bad_chunk_size_is_a_storage_error(store: ResultStoreBase, bad: Any) -> None:
    """1.5 or None raised a bare TypeError from inside the store."""
    store.put("s", b"abc", _meta("s", b"abc"))
    with pytest.raises(StorageError, match="chunk_size"):
        list(store.iter_chunks("s", bad))


def test_empty_value(store: ResultStoreBase) -> None:
    store.put("e", b"", _meta("e", b""))
    got = store.get("e")
    assert got is not None and bytes(got) == b""
    assert list(store.iter_chunks("e")) == []
    assert store.has("e")


def test_missing_content_hash_is_computed(store: ResultStoreBase) -> None:
    data = b"abc" * 500
    store.put("h", data, replace(_meta("h", data), content_hash=""))
    assert store.head("h").content_hash == _meta("h", data).content_hash  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- misses, delete

def test_misses(store: ResultStoreBase) -> None:
    assert store.get("nope") is None
    assert store.head("nope") is None
    assert store.has("nope") is False
    assert store.delete("nope") is False
    assert store.patch_metadata("nope", {"a": 1}) is False
    assert list(store.iter_chunks("nope")) == []
    assert store.list_keys() == [] and store.list_keys("dag") == []


def test_delete_leaves_nothing(case: Any) -> None:
    impl, store, _ = case
    for i, value in enumerate(VALUES.values()):
        _put(store, f"d{i}", value)
    assert impl.count(store) > 0
    for i in range(len(VALUES)):
        assert store.delete(f"d{i}") is True
        assert store.delete(f"d{i}") is False
        assert store.get(f"d{i}") is None and not store.has(f"d{i}")
    assert store.list_keys() == []
    assert impl.count(store) == 0


def test_overwrite_replaces_atomically_and_cleans_up(case: Any) -> None:
    impl, store, _ = case
    big1, small, big2 = os.urandom(5000), b"small", os.urandom(3000)
    for data in (big1, small, big2, big2):
        store.put("k", data, _meta("k", data))
        assert bytes(store.get("k") or b"") == data
        assert b"".join(store.iter_chunks("k")) == data
        assert store.head("k").size == len(data)  # type: ignore[union-attr]
    assert store.list_keys() == ["k"]
    store.delete("k")
    assert impl.count(store) == 0  # no stale chunks or data files from the overwritten versions


# -------------------------------------------------------------------------- list / metadata

def test_list_and_dag_filter(store: ResultStoreBase) -> None:
    _put(store, "b1", 1, dag_id="dag-b")
    _put(store, "a1", 2, dag_id="dag-a")
    _put(store, "a2", os.urandom(2000), dag_id="dag-a")
    _put(store, "n1", 3)
    assert store.list_keys() == ["a1", "a2", "b1", "n1"]
    assert store.list_keys("dag-a") == ["a1", "a2"]
    assert store.list_keys("dag-x") == []


def test_dag_ids_are_compared_as_text_on_every_backend(store: ResultStoreBase) -> None:
    """``list_results(5)`` found a result put with ``dag_id`` 5 on SQLite only (session 23)."""
    _put(store, "i", 1, dag_id=5)
    _put(store, "s", 2, dag_id="5")
    assert store.list_keys(5) == ["i", "s"] == store.list_keys("5")  # type: ignore[arg-type]
    assert store.list_keys(5.0) == []                                  # type: ignore[arg-type]


def test_update_metadata_merges(store: ResultStoreBase) -> None:
    _put(store, "m", {"v": 1}, dag_id="dag-1", owner="me")
    assert store.patch_metadata("m", {"owner": "you", "tag": [1, 2]}) is True
    meta = store.head("m")
    assert meta is not None and meta.metadata == {"dag_id": "dag-1", "owner": "you",
                                                  "tag": [1, 2], "encoding": "json"}
    assert store.patch_metadata("m", {"dag_id": "dag-2"})
    assert store.list_keys("dag-2") == ["m"] and store.list_keys("dag-1") == []
    assert decode(store.get("m"), "json") == {"v": 1}  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [5, 2 << 20])          # both sides of a hybrid store
def test_update_metadata_of_a_result_stored_without_any(store: ResultStoreBase, size: int) -> None:
    """``StorageMetadata.metadata`` defaults to None: the filesystem store (and the hybrid's
    large side) said the result was corrupted (IntegrityError) when it was updated."""
    data = b"h" * size
    store.put("plain", data, _meta("plain", data))
    assert store.patch_metadata("plain", {"owner": "me"}) is True
    meta = store.head("plain")
    assert meta is not None and meta.metadata == {"owner": "me"}
    assert bytes(store.get("plain")) == data  # type: ignore[arg-type]


def test_bad_metadata_is_refused_and_changes_nothing(store: ResultStoreBase) -> None:
    _put(store, "m", 1, a=1)
    with pytest.raises(StorageError):
        store.patch_metadata("m", {"x": object()})
    with pytest.raises(StorageError):
        store.patch_metadata("m", ["not", "a", "dict"])  # type: ignore[arg-type]
    assert store.head("m").metadata == {"a": 1, "encoding": "json"}  # type: ignore[union-attr]
    with pytest.raises(StorageError):
        store.put("n", b"x", _meta("n", b"x", metadata={"x": {1, 2}}))
    assert not store.has("n")
    # A lone surrogate is JSON text no store can write as UTF-8 (a raw UnicodeEncodeError
    # from the real stores; the memory fake took it)
    for md in ({"note": "\ud800"}, {"dag_id": "\udcff"}):
        with pytest.raises(StorageError):
            store.put("n", b"x", _meta("n", b"x", metadata=md))
    with pytest.raises(StorageError):
        store.patch_metadata("m", {"z": "\ud800"})
    assert not store.has("n")
    assert store.head("m").metadata == {"a": 1, "encoding": "json"}  # type: ignore[union-attr]


# ------------------------------------------------------------------------------ compression

def test_compression_recorded_and_transparent(case: Any) -> None:
    impl, store, comp = case
    text, noise, tiny = _compressible(5000), os.urandom(5000), b"ab" * 10
    for key, data in (("text", text), ("noise", noise), ("tiny", tiny), ("mid", text[:500])):
        store.put(key, data, _meta(key, data))
        assert bytes(store.get(key) or b"") == data
        assert b"".join(store.iter_chunks(key, 333)) == data
        meta = store.head(key)
        assert meta is not None and meta.size == len(data)
        assert meta.content_hash == _meta(key, data).content_hash  # hash of uncompressed bytes
    comps = {k: getattr(store.head(k), "compression") for k in ("text", "noise", "tiny", "mid")}
    expected_text = "zstd" if comp else None
    assert comps == {"text": expected_text, "noise": None, "tiny": None, "mid": expected_text}


@pytest.mark.parametrize("size", [0, 40, 600, 5000], ids=["empty", "inline", "mid", "chunked"])
def test_read_gives_metadata_and_value_together(store: ResultStoreBase, size: int) -> None:
    data = _compressible(size)
    store.put("v", data, _meta("v", data, data_type=DataType.NESTED, metadata={"encoding": "x"}))
    found = store.read("v")
    assert found is not None
    meta, value = found
    assert bytes(value) == data
    assert (meta.node_id, meta.size, meta.data_type, meta.content_hash) == \
        ("v", size, DataType.NESTED, store.head("v").content_hash)
    assert meta.metadata == {"encoding": "x"}
    assert store.read("missing") is None


# ---------------------------------------------------------------------------------- integrity

@pytest.mark.parametrize("size", [40, 600, 5000], ids=["inline", "mid", "chunked"])
def test_corruption_raises_integrity_error(case: Any, size: int) -> None:
    impl, store, _ = case
    data = _compressible(size)[: size // 2] + os.urandom(size - size // 2)
    store.put("c", data, _meta("c", data))
    impl.corrupt(store, "c")
    with pytest.raises(IntegrityError):
        store.get("c")
    with pytest.raises(IntegrityError):
        store.read("c")
    seen = bytearray()
    with pytest.raises(IntegrityError):
        for chunk in store.iter_chunks("c", 100):
            seen += chunk
    assert len(seen) < size  # never the whole (wrong) value without an error
    with pytest.raises(IntegrityError):
        asyncio.run(store.retrieve_result("c"))
    with pytest.raises(IntegrityError):
        asyncio.run(_collect(store.stream_result("c", 100)))
    assert store.has("c")  # the store reports, it does not repair


@pytest.mark.parametrize("kind", ["sqlite", "filesystem"])
@pytest.mark.parametrize("size", [3000, 2 << 20], ids=["inline", "large"])
def test_a_recorded_size_that_is_not_the_values_is_a_damaged_entry(tmp_path: Path, kind: str,
                                                                    size: int) -> None:
    """An edited size: a whole read said so for a filesystem data file, a stream gave the
    bytes, and a SQLite row's reads both gave them while ``get_metadata`` named the wrong
    size (review, session 21). Every read now refuses it, as for a wrong hash."""
    data = os.urandom(size)
    if kind == "sqlite":
        store: Any = SQLiteStorage(tmp_path / "r.db")
        store.put("k", data, _meta("k", data))
        with sqlite3.connect(store.db_path) as db:
            db.execute("UPDATE node_results SET data_size = data_size + 1")
    else:
        store = FilesystemStorage(tmp_path / "fs")
        store.put("k", data, _meta("k", data))
        path, doc = _fs_doc(store, "k")
        doc["size"] += 1
        path.write_text(json.dumps(doc))
    try:
        for read in (lambda: store.get("k"), lambda: store.read("k"),
                     lambda: b"".join(store.iter_chunks("k", 4096)),
                     lambda: asyncio.run(store.retrieve_result("k")),
                     lambda: asyncio.run(_collect(store.stream_result("k", 4096)))):
            with pytest.raises(IntegrityError):
                read()
    finally:
        store.close()


def _corrupted_then_replaceable(store: ResultStoreBase, key: str) -> None:
    """Every read of ``key`` raises IntegrityError (what the engine answers by deleting the
    entry and recomputing it), and the delete and a new put then work."""
    with pytest.raises(IntegrityError):
        store.get(key)
    with pytest.raises(IntegrityError):
        store.read(key)
    with pytest.raises(IntegrityError):
        b"".join(store.iter_chunks(key, 100))
    with pytest.raises(IntegrityError):
        asyncio.run(store.retrieve_result(key))
    assert store.delete(key) and not store.has(key)
    store.put(key, b"again", _meta(key, b"again"))
    assert bytes(store.get(key) or b"") == b"again"


@pytest.mark.parametrize("comp", [None, "zstd"])
@pytest.mark.parametrize("value", [None, "text"], ids=["null", "text"])
def test_sqlite_row_whose_data_is_not_a_blob_is_corruption(tmp_path: Path, comp: str | None,
                                                          value: str | None) -> None:
    store = _make_sqlite(tmp_path, comp)
    try:
        data = _compressible(600)                  # kept in its row (compressed with zstd)
        store.put("n", data, _meta("n", data))
        with sqlite3.connect(store.db_path) as db:
            db.execute("UPDATE node_results SET data=? WHERE node_id='n'", (value,))
        _corrupted_then_replaceable(store, "n")
    finally:
        store.close()


@pytest.mark.parametrize("comp", [None, "zstd"])
@pytest.mark.parametrize("damage", ["truncated", "non-ascii", "neither"])
def test_filesystem_damaged_inline_storage_is_corruption(tmp_path: Path, comp: str | None,
                                                         damage: str) -> None:
    store = _make_fs(tmp_path, comp)
    try:
        data = _compressible(200)                  # inline in the metadata file
        store.put("i", data, _meta("i", data))
        path, doc = _fs_doc(store, "i")
        if damage == "truncated":                  # base64 of the wrong length
            doc["storage"]["inline"] = doc["storage"]["inline"][:-1]
        elif damage == "non-ascii":
            doc["storage"]["inline"] = "é" + doc["storage"]["inline"]
        else:                                      # neither inline data nor a data file
            doc["storage"] = {}
        path.write_text(json.dumps(doc))
        _corrupted_then_replaceable(store, "i")
    finally:
        store.close()


def test_missing_data_is_storage_error(case: Any) -> None:
    impl, store, _ = case
    if impl.lose_data is None:
        pytest.skip(f"{impl.name} keeps data and metadata in one object")
    data = os.urandom(5000)
    store.put("lost", data, _meta("lost", data))
    assert impl.lose_data(store, "lost")
    with pytest.raises(StorageError):
        store.get("lost")
    with pytest.raises(StorageError):
        b"".join(store.iter_chunks("lost"))


def test_put_checks_hash_and_size(store: ResultStoreBase) -> None:
    data = os.urandom(3000)
    with pytest.raises(StorageError):
        store.put("x", data, replace(_meta("x", data), content_hash="0" * 64))
    with pytest.raises(StorageError):
        store.put("x", data, replace(_meta("x", data), size=5))
    with pytest.raises(StorageError):
        store.put("x", data, replace(_meta("x", data), node_id="other"))
    with pytest.raises(StorageError):
        store.put("x", "not bytes", _meta("x", data))  # type: ignore[arg-type]
    assert not store.has("x") and store.list_keys() == []


@pytest.mark.parametrize("key", ["../x", "a/b", ".hidden", "", "a b", "k" * 201, "x\x00",
                                 "..", "a\\b"])
def test_invalid_keys_are_refused(store: ResultStoreBase, key: str, tmp_path: Path) -> None:
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for call in (lambda: store.put(key, b"x", _meta(key, b"x")), lambda: store.get(key),
                 lambda: store.head(key), lambda: store.delete(key), lambda: store.has(key),
                 lambda: list(store.iter_chunks(key)), lambda: store.patch_metadata(key, {})):
        with pytest.raises(StorageError):
            call()
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


# ------------------------------------------------------------------------------------ batches

def test_put_many_round_trip(store: ResultStoreBase) -> None:
    items = []
    for i in range(300):
        enc = encode({"i": i} if i % 3 else os.urandom(50 + i * 7))
        items.append((f"r{i:04d}", enc.buffers, enc.to_metadata(f"r{i:04d}", {"dag_id": "d"})))
    store.put_many(items)
    assert store.list_keys("d") == [k for k, _, _ in items]
    for key, bufs, meta in items:
        assert bytes(store.get(key) or b"") == b"".join(bytes(b) for b in bufs)


def test_put_many_of_many_rows_in_any_key_order(store: ResultStoreBase) -> None:
    # More rows than one multi-row statement holds (SQLite writes 512 a statement, then the
    # rest in one executemany), keys not in order, one key given twice: the last value wins.
    keys = [f"m{(i * 7919) % 1000:04d}" for i in range(700)]
    items = []
    for i, key in enumerate(keys):
        data = f"value {i} of {key}".encode()
        items.append((key, data, _meta(key, data, metadata={"dag_id": "many"})))
    dup = items[10][0]
    last = b"the last one"
    items.append((dup, last, _meta(dup, last, metadata={"dag_id": "many"})))
    store.put_many(items)
    assert store.list_keys("many") == sorted(set(keys))
    for key, data, _ in items[:-1]:
        assert bytes(store.get(key) or b"") == (last if key == dup else data)
    assert store.content_hashes(keys) == {k: stored_value_id(m) for k, _, m in items
                                          if k != dup} | {dup: stored_value_id(items[-1][2])}


def test_sqlite_put_many_fits_a_connection_allowing_999_variables(tmp_path: Any) -> None:
    # SQLite before 3.32 allows 999 bound variables a statement; 512 rows of 10 need 5,120.
    store = SQLiteStorage(str(tmp_path / "r.db"))
    try:
        store._conn().setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        items = []
        for i in range(600):
            key, data = f"v{i:04d}", f"value {i}".encode()
            items.append((key, data, _meta(key, data)))
        store.put_many(items)
        assert store.content_hashes([k for k, _, _ in items]) == {k: stored_value_id(m)
                                                                 for k, _, m in items}
    finally:
        store.close()


def test_put_many_same_key_twice_keeps_the_last(case: Any) -> None:
    impl, store, _ = case
    big, small = os.urandom(5000), b"small"
    store.put_many([("k", big, _meta("k", big)), ("k", small, _meta("k", small))])
    assert bytes(store.get("k") or b"") == small
    store.put_many([("k", small, _meta("k", small)), ("k", big, _meta("k", big))])
    assert bytes(store.get("k") or b"") == big
    store.delete("k")
    assert impl.count(store) == 0


@pytest.mark.parametrize("bad", ["key", "hash", "size"])
def test_put_many_is_all_or_nothing(case: Any, bad: str) -> None:
    impl, store, _ = case
    big = os.urandom(5000)
    items: list[Any] = [("g1", b"one", _meta("g1", b"one")), ("g2", big, _meta("g2", big)),
                        ("g3", b"three", _meta("g3", b"three"))]
    if bad == "key":
        items.insert(2, ("../evil", b"x", _meta("../evil", b"x")))
    elif bad == "hash":  # discovered only while the (chunked) value is being written
        items.append(("g4", big[::-1], replace(_meta("g4", big), node_id="g4")))
    else:
        items.append(("g4", b"abc", replace(_meta("g4", b"abc"), size=4)))
    with pytest.raises(StorageError):
        store.put_many(items)
    assert store.list_keys() == [] and not store.has("g1") and not store.has("g2")
    assert impl.count(store) == 0


@pytest.mark.parametrize("shape", ["view", "list", "after-bytes"])
def test_non_contiguous_buffers_are_refused_before_anything_is_written(case: Any,
                                                                      shape: str) -> None:
    # A 1-D byte view with a stride: it looks like bytes, but hashing or joining it fails.
    # It must be refused with the rest of the batch unwritten (the hybrid store used to have
    # written the batch's large values to its files before it failed on it).
    impl, store, _ = case
    strided = memoryview(b"abcdefgh")[::2]
    data: Any = {"view": strided, "list": [strided], "after-bytes": [b"x", strided]}[shape]
    size = 4 + (shape == "after-bytes")
    big = os.urandom(5000)
    with pytest.raises(StorageError, match="C-contiguous"):
        store.put_many([("big", big, _meta("big", big)),
                        ("strided", data, replace(_meta("strided", b""), size=size,
                                                  content_hash=""))])
    assert store.list_keys() == [] and not store.has("big")
    assert impl.count(store) == 0


# ------------------------------------------------------------------------------ concurrency

def test_concurrent_puts_and_gets(store: ResultStoreBase) -> None:
    errors: list[BaseException] = []
    values = {f"t{t}-{i}": os.urandom(64 + (i * 97) % 3000) for t in range(6) for i in range(25)}

    def worker(t: int) -> None:
        try:
            mine = [k for k in values if k.startswith(f"t{t}-")]
            for k in mine:
                store.put(k, values[k], _meta(k, values[k]))
            for k in values:  # read everyone's: present and right, or not yet written
                got = store.get(k)
                assert got is None or bytes(got) == values[k]
            for k in mine:
                assert bytes(store.get(k) or b"") == values[k]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert store.list_keys() == sorted(values)


def test_concurrent_overwrites_never_mix_versions(store: ResultStoreBase) -> None:
    versions = [bytes([v]) * 3000 for v in range(4)] + [b"tiny"]
    store.put("hot", versions[0], _meta("hot", versions[0]))
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(60):
                v = versions[i % len(versions)]
                store.put("hot", v, _meta("hot", v))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            stop.set()

    def reader() -> None:
        try:
            while not stop.is_set():
                got = store.get("hot")
                assert got is not None and bytes(got) in versions
                assert b"".join(store.iter_chunks("hot", 1000)) in versions
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader)
                                                    for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


def test_read_under_overwrites_pairs_metadata_and_bytes_of_one_version(store: ResultStoreBase) -> None:
    # The engine decodes read()'s bytes with the encoding in read()'s metadata: metadata of one
    # version with bytes of another decodes to a wrong value without any error.
    import hashlib
    versions = {f"v{v}": bytes([v]) * 3000 for v in range(3)} | {"tiny": b"t" * 100}
    tags = {data: tag for tag, data in versions.items()}
    items = [(tag, data, _meta("hot", data, metadata={"v": tag})) for tag, data in versions.items()]
    store.put("hot", items[0][1], items[0][2])
    stop = threading.Event()
    errors: list[BaseException] = []
    mixed: list[tuple[str, str]] = []
    reads = [0, 0]

    def writer() -> None:          # 200 overwrites at least, until the readers read 2,000 times
        try:
            deadline, i = time.monotonic() + 10, 0
            while i < 200 or (sum(reads) < 2000 and time.monotonic() < deadline):
                _, data, meta = items[i % len(items)]
                store.put("hot", data, meta)
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            stop.set()

    def reader(n: int) -> None:
        try:
            while not stop.is_set():
                reads[n] += 1
                found = store.read("hot")
                assert found is not None
                meta, data = found
                tag = tags[bytes(data)]
                if (meta.metadata or {}).get("v") != tag or meta.size != len(data) \
                        or meta.content_hash != hashlib.sha256(data).hexdigest():
                    mixed.append(((meta.metadata or {}).get("v"), tag))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(n,))
                                                    for n in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert mixed == []


# ---------------------------------------------------------------------------------- async face

async def _collect(agen: Any) -> bytes:
    return b"".join([c async for c in agen])


def test_async_interface(store: ResultStoreBase) -> None:
    big = os.urandom(5000)
    huge = os.urandom(store.async_inline_limit + 10)  # takes the to_thread path

    async def scenario() -> None:
        assert await store.store_result("a", big, _meta("a", big, metadata={"dag_id": "D"})) is True
        assert await store.store_result("h", huge, _meta("h", huge)) is True
        assert await store.exists("a") and not await store.exists("zz")
        assert bytes(await store.retrieve_result("a") or b"") == big
        assert bytes(await store.retrieve_result("h") or b"") == huge
        assert await store.retrieve_result("zz") is None
        assert await _collect(store.stream_result("a", 333)) == big
        assert await _collect(store.stream_result("h", 4096)) == huge
        assert await _collect(store.stream_result("zz")) == b""
        assert await store.list_results() == ["a", "h"]
        assert await store.list_results(dag_id="D") == ["a"]
        meta = await store.get_metadata("a")
        assert meta is not None and meta.size == len(big) and meta.metadata == {"dag_id": "D"}
        assert await store.get_metadata("zz") is None
        assert await store.update_metadata("a", {"k": "v"}) is True
        assert await store.update_metadata("zz", {"k": "v"}) is False
        meta = await store.get_metadata("a")
        assert meta is not None and meta.metadata == {"dag_id": "D", "k": "v"}
        assert await store.delete_result("a") is True
        assert await store.delete_result("a") is False
        assert await store.list_results() == ["h"]

    asyncio.run(scenario())


def test_async_stream_can_be_abandoned(store: ResultStoreBase) -> None:
    huge = os.urandom(store.async_inline_limit * 2)
    store.put("h", huge, _meta("h", huge))

    async def scenario() -> bytes:
        agen: Any = store.stream_result("h", 1024)
        first = await agen.__anext__()
        await agen.aclose()
        return first

    assert asyncio.run(scenario()) == huge[:1024]
    assert bytes(store.get("h") or b"") == huge  # nothing left locked


# ------------------------------------------------------------------------------ persistence

def test_reopen_keeps_results(case: Any, tmp_path: Path) -> None:
    impl, store, comp = case
    if not impl.persistent:
        pytest.skip("in-memory store")
    data = os.urandom(5000)
    _put(store, "p", data, dag_id="x")
    store.close()
    again = impl.make(tmp_path, comp)
    try:
        assert bytes(again.get("p") or b"") == data and again.list_keys("x") == ["p"]
    finally:
        again.close()


# ------------------------------------------------------------------- backend-specific checks

def test_filesystem_large_npy_is_zero_copy(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path / "fs", mmap_threshold=1 << 20)
    arr = np.random.default_rng(0).random((512, 1024))  # 4 MiB
    enc = _put(store, "arr", arr)
    got = store.get("arr")
    assert isinstance(got, memoryview) and got.readonly
    out = decode(got, "npy")
    assert np.array_equal(out, arr) and not out.flags.writeable and not out.flags.owndata
    assert np.shares_memory(out, np.frombuffer(got, dtype=np.uint8))
    base: Any = out
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
    assert enc.size == got.nbytes
    store.close()


def test_filesystem_layout_and_atomic_files(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path / "fs", inline_threshold=16)
    _put(store, "small", 1)
    _put(store, "blob", os.urandom(100))
    assert (tmp_path / "fs/metadata/nodes/small.json").exists()
    doc = json.loads((tmp_path / "fs/metadata/nodes/blob.json").read_text())
    assert doc["storage"]["path"].startswith("data/binary/blob.")
    leftovers = [p for p in (tmp_path / "fs").rglob(".*") if p.name != ".lock"]
    assert leftovers == []  # no temp files after successful puts
    store.close()


def test_sqlite_schema_and_chunks(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "r.db", chunk_threshold=1000, chunk_size=300)
    data = os.urandom(1000 + 1)
    store.put("c", data, _meta("c", data))
    with sqlite3.connect(tmp_path / "r.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = db.execute("SELECT chunk_id, length(data) FROM node_data_chunks ORDER BY chunk_id")
        assert list(rows) == [(0, 300), (1, 300), (2, 300), (3, 101)]
    store.close()
    with pytest.raises(ConfigurationError):
        SQLiteStorage(":memory:")


def test_factory(tmp_path: Path) -> None:
    s1 = create_storage_backend("sqlite", str(tmp_path / "dir"))
    assert isinstance(s1, SQLiteStorage) and s1.db_path == tmp_path / "dir" / "results.db"
    s2 = create_storage_backend("sqlite", str(tmp_path / "x.sqlite"), compression="zstd")
    assert isinstance(s2, SQLiteStorage) and s2.db_path == tmp_path / "x.sqlite"
    s3 = create_storage_backend("filesystem", str(tmp_path / "fs"))
    assert isinstance(s3, FilesystemStorage)
    assert isinstance(create_storage_backend("memory", ""), MemoryStorage)
    for s in (s1, s2, s3):
        s.close()
    with pytest.raises(ConfigurationError):
        create_storage_backend("s3", str(tmp_path))
    with pytest.raises(ConfigurationError):
        create_storage_backend("sqlite", str(tmp_path / "y.db"), no_such_option=1)
    with pytest.raises(ConfigurationError):
        create_storage_backend("sqlite", str(tmp_path / "z.db"), compression="lz4")


def test_filesystem_crash_leftovers_are_swept(tmp_path: Path) -> None:
    """A writer killed mid-put leaves a temp file in tmp/: invisible, kept while it could still
    belong to a live writer, removed by the next open once it is old."""
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "fs"
    FilesystemStorage(root).close()
    code = ("import sys; from twingraph.stores.results import FilesystemStorage;"
            "from twingraph.serialization import encode;"
            "s = FilesystemStorage(sys.argv[1]); enc = encode(b'x' * (400 << 20));"
            "s.put('big', enc.buffers, enc.to_metadata('big'))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)])
    deadline = time.monotonic() + 60
    while not any((root / "tmp").iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "writer ended too early"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list((root / "tmp").iterdir())
    assert left, "the killed writer left no temp file to sweep"
    store = FilesystemStorage(root)               # young: could be a live writer's, kept
    assert store.get("big") is None and store.head("big") is None
    assert list((root / "tmp").iterdir()) == left
    store.close()
    old = time.time() - 2 * 3600
    for p in left:
        os.utime(p, (old, old))
    store = FilesystemStorage(root)
    assert list((root / "tmp").iterdir()) == []
    store.close()


def test_filesystem_sweep_removes_only_unreferenced_old_data(tmp_path: Path) -> None:
    import time

    store = FilesystemStorage(tmp_path / "fs", inline_threshold=16)
    _put(store, "kept", os.urandom(100))
    _put(store, "orphan", os.urandom(100))
    _put(store, "young", os.urandom(100))
    data = {k: tmp_path / "fs" / json.loads((tmp_path / f"fs/metadata/nodes/{k}.json")
                                            .read_text())["storage"]["path"]
            for k in ("kept", "orphan", "young")}
    # A crash between the data rename and the metadata rename: data without metadata.
    (tmp_path / "fs/metadata/nodes/orphan.json").unlink()
    (tmp_path / "fs/metadata/nodes/young.json").unlink()
    old = time.time() - 2 * 3600
    for k in ("kept", "orphan"):
        os.utime(data[k], (old, old))
    assert store.sweep() == {"temp_files": 0, "data_files": 1}
    assert not data["orphan"].exists()
    assert data["young"].exists()                  # may belong to a commit in progress
    assert data["kept"].exists() and store.get("kept") is not None
    store.close()


def test_filesystem_sweep_keeps_the_data_of_a_dotted_key_whose_metadata_is_unreadable(
        tmp_path: Path) -> None:
    """Data files are ``{key}.{hash}.bin``; the sweep took the key up to the first dot, so a
    key like ``task.v1`` with damaged metadata lost its data file."""
    import time

    store = FilesystemStorage(tmp_path / "fs", inline_threshold=16)
    _put(store, "task.v1", os.urandom(100))
    meta = tmp_path / "fs/metadata/nodes/task.v1.json"
    data = tmp_path / "fs" / json.loads(meta.read_text())["storage"]["path"]
    meta.write_text("{ truncated")
    old = time.time() - 2 * 3600
    os.utime(data, (old, old))
    assert store.sweep()["data_files"] == 0 and data.exists()
    store.close()


def test_sqlite_store_opened_by_many_at_once(tmp_path: Path) -> None:
    """Openers racing to put a fresh file in WAL mode got "database is locked" at once."""
    for k in range(20):
        errors: list[BaseException] = []

        def open_close(path: Path = tmp_path / f"r{k}.db") -> None:
            try:
                SQLiteStorage(path).close()
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)
        threads = [threading.Thread(target=open_close) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
