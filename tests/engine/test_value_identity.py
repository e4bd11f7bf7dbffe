"""A declared node's consumers are keyed by what its result *is*, not only by its bytes: ``b"42"``
(raw bytes) and ``42`` (JSON text) have the same content hash, and a consumer of a producer
whose output changed from one to the other was served its old result (a known stale hit until
session 22). Memo lookups now answer raw bytes as ``"bytes:" + content_hash``
(``core.results.stored_value_id``), as the engine names a result it has just stored.

Real stores in ``tmp_path`` (SQLite, files, and a user's async store), real runs; no mocks."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.engine.test_async_store import DictStorage
from twingraph.core.results import BYTES_ID, DataType, StorageMetadata, stored_value_id
from twingraph.engine.dynamic import DAGDefinition, DynamicScheduler, ExecutionConfig, NodeDefinition
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.filesystem import FilesystemStorage
from twingraph.stores.results.sqlite import SQLiteStorage

N = NodeDefinition


def _kind(deps, params):
    return type(deps["a"]).__name__


def _as_int(deps, params):
    return 42


def _as_bytes(deps, params):
    return b"42"


def _as_text(deps, params):
    return "42"


STORES = {
    "sqlite": lambda tmp: SQLiteStorage(str(tmp / "results.db")),
    "filesystem": lambda tmp: FilesystemStorage(str(tmp / "results")),
}


def _run(storage, metadata, make) -> tuple[str, dict[str, str]]:
    with DynamicScheduler(storage, ExecutionConfig(max_retries=0), metadata=metadata) as s:
        s.executor.register_operation("make", make)
        s.executor.register_operation("kind", _kind)
        r = s.run(DAGDefinition("v", [N("a", "make", [], {}), N("b", "kind", ["a"], {})]))
        assert r.state.value == "SUCCESS", r.error
        status = {t.node_id: t.cache_status for t in metadata.get_tasks(r.run_id)}
        return s.node_results("v")["b"].result_data, status


@pytest.mark.parametrize("kind", [*STORES, "user-async"])
def test_a_producer_whose_output_turns_from_json_to_bytes_reruns_its_consumer(tmp_path: Path,
                                                                             kind: str) -> None:
    storage = DictStorage() if kind == "user-async" else STORES[kind](tmp_path)
    metadata = SQLMetadataStore(f"sqlite:///{tmp_path / 'meta.db'}", create=True)
    assert _run(storage, metadata, _as_int)[0] == "int"
    # "a" runs again (new code) and stores the same bytes, b"42"; "b" must not hit on them
    got, status = _run(storage, metadata, _as_bytes)
    assert got == "bytes"
    assert status == {"a": "miss", "b": "miss"}
    got, status = _run(storage, metadata, _as_bytes)     # unchanged: hits, bytes on both sides
    assert got == "bytes" and status == {"a": "hit", "b": "hit"}
    got, status = _run(storage, metadata, _as_text)      # "42" is JSON text '"42"': apart too
    assert got == "str" and status["b"] == "miss"
    got, status = _run(storage, metadata, _as_int)       # back to 42: b's first result again
    assert got == "int" and status == {"a": "hit", "b": "hit"}


def _meta(key: str, data: bytes, dt: DataType, encoding: str) -> StorageMetadata:
    return StorageMetadata(node_id=key, data_type=dt, content_hash=hashlib.sha256(data).hexdigest(),
                           size=len(data), metadata={"encoding": encoding})


@pytest.mark.parametrize("kind", STORES)
def test_lookups_mark_raw_bytes_small_and_large_and_nothing_else(tmp_path: Path, kind: str) -> None:
    """A value above the engine's large threshold is stored as ``LARGE_OBJECT``: its encoding
    (in its metadata) says whether it is raw bytes."""
    store = STORES[kind](tmp_path)
    try:
        rows = {"raw": (b"42", DataType.BINARY, "bytes"),
                "json": (b"42", DataType.PRIMITIVE, "json"),
                "big-raw": (b"x" * 5000, DataType.LARGE_OBJECT, "bytes"),
                "big-pickle": (b"x" * 5000, DataType.LARGE_OBJECT, "pickle")}
        for key, (data, dt, enc) in rows.items():
            store.put(key, data, _meta(key, data, dt, enc))
        h42, hx = hashlib.sha256(b"42").hexdigest(), hashlib.sha256(b"x" * 5000).hexdigest()
        want = {"raw": BYTES_ID + h42, "json": h42, "big-raw": BYTES_ID + hx, "big-pickle": hx}
        assert store.content_hashes([*rows, "absent"]) == want
        for key in rows:                     # one key at a time: SQLite's single-key query
            assert store.content_hashes([key]) == {key: want[key]}
            assert stored_value_id(store.head(key)) == want[key]   # type: ignore[arg-type]
    finally:
        store.close()


def test_a_large_row_with_damaged_metadata_is_a_miss(tmp_path: Path) -> None:
    """SQLite reads a large row's metadata for its encoding: text that is not JSON is a
    damaged entry, a miss (the task runs and replaces it), not an error for the whole lookup."""
    import sqlite3
    store = SQLiteStorage(str(tmp_path / "results.db"))
    data = b"y" * 100
    store.put("big", data, _meta("big", data, DataType.LARGE_OBJECT, "bytes"))
    store.put("ok", data, _meta("ok", data, DataType.BINARY, "bytes"))
    store.close()
    with sqlite3.connect(tmp_path / "results.db") as c:
        c.execute("UPDATE node_results SET metadata = '{torn' WHERE node_id = 'big'")
    store = SQLiteStorage(str(tmp_path / "results.db"))
    try:
        assert store.content_hashes(["big", "ok"]) == {
            "ok": BYTES_ID + hashlib.sha256(data).hexdigest()}
        assert store.content_hashes(["big"]) == {}
    finally:
        store.close()


def _length(deps, params):
    return len(deps["a"]) + params["k"]


@pytest.mark.parametrize("kind", [*STORES, "user-async"])
@pytest.mark.parametrize("size", [2, 5000])          # small, and stored as a large object
def test_a_consumer_that_must_run_reads_a_bytes_result_that_came_from_the_memo(
        tmp_path: Path, kind: str, size: int) -> None:
    """The producer hits (its value id is ``bytes:`` + hash), its consumer misses (new
    parameters) and reads it: that read compared the marked id with the bare hash and failed
    with ConflictError, in every later run (session 30 review)."""
    storage = DictStorage() if kind == "user-async" else STORES[kind](tmp_path)
    metadata = SQLMetadataStore(f"sqlite:///{tmp_path / 'meta.db'}", create=True)

    def make(deps, params):
        return b"x" * size

    def run(k: int) -> tuple[int, dict[str, str]]:
        with DynamicScheduler(storage, ExecutionConfig(max_retries=0), metadata=metadata) as s:
            s.executor.register_operation("make", make)
            s.executor.register_operation("length", _length)
            r = s.run(DAGDefinition("v", [N("a", "make", [], {}), N("b", "length", ["a"], {"k": k})]))
            assert r.state.value == "SUCCESS", r.error
            status = {t.node_id: t.cache_status for t in metadata.get_tasks(r.run_id)}
            return s.node_results("v")["b"].result_data, status

    assert run(0) == (size, {"a": "miss", "b": "miss"})
    assert run(1) == (size + 1, {"a": "hit", "b": "miss"})
    assert run(1) == (size + 1, {"a": "hit", "b": "hit"})
