"""The writer process's direct path (decision 0075) stores what the general path stores.

The child unpacks a frame with ``core.wire.unpack_rows``: task rows reach the metadata store as
``TaskRows`` (field values, no ``TaskRecord`` each) and results reach
``SQLiteStorage.put_wire_rows`` as wire rows (no ``StorageMetadata`` or ``Prepared`` each). The
general path is ``unpack``, ``put_many_rows`` and ``write`` of ``TaskRecord``s, as the child
did before and the recorder's thread still does. Here the same frames go both ways into
separate real stores (SQLite files; the machine's PostgreSQL for the metadata), and every
stored row is compared column by column, with its SQLite storage class: any value the direct
path wrote differently fails the comparison. Bad input must fail the same way on both paths
and write nothing. One test sends the frames to a real writer process.

``utc_now`` is the only thing patched: a result stored without ``created_at`` gets the time of
its write, and both paths must see the same time for their rows to be compared whole.
"""
from __future__ import annotations

import hashlib
import sqlite3
from typing import Any

import pytest
from sqlalchemy import text

from twingraph.core.records import (AttemptRecord, EdgeRecord, LogRecord, RunRecord,
                                    TaskRecord, TaskUpdate)
from twingraph.core.results import DataType, StorageMetadata
from twingraph.core.states import RunState, TaskState
from twingraph.core.wire import (TaskRows, frame, pack, pack_result_rows, pack_task_values,
                                 read_frame, unpack, unpack_rows)
from twingraph.errors import StorageError, ValidationError
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.metadata._engine import make_engine
from twingraph.stores.results import _common
from twingraph.stores.results import sqlite as sqlite_module
from twingraph.stores.results.sqlite import SQLiteStorage

NOW = "2026-01-02T03:04:05.000006+00:00"
RUN = "run-fast-path"
TABLES = ("lineage_edges", "logs", "task_attempts", "tasks", "runs", "pipeline_versions",
          "pipelines", "projects")
COMPARED = ("runs", "tasks", "task_attempts", "logs", "lineage_edges")   # not projects: new ids
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(autouse=True)
def _fixed_now(monkeypatch):
    monkeypatch.setattr(_common, "utc_now", lambda: NOW)
    monkeypatch.setattr(sqlite_module, "utc_now", lambda: NOW)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _key(i: int) -> str:
    return _sha(f"key {i}".encode())


def _meta(key: str, data: bytes, **kw: Any) -> tuple[Any, ...]:
    """StorageMetadata field values, as the run loop builds a wire row's."""
    m = StorageMetadata(kw.pop("node_id", key), kw.pop("data_type", DataType.PRIMITIVE),
                        kw.pop("content_hash", _sha(data)), kw.pop("size", len(data)), **kw)
    return (m.node_id, m.data_type, m.content_hash, m.size, m.compression, m.created_at,
            m.metadata)


def _task(node: str, **kw: Any) -> TaskRecord:
    kw.setdefault("state", TaskState.SUCCESS)
    kw.setdefault("cache_key", _sha(node.encode()))
    kw.setdefault("created_at", 10.0)
    return TaskRecord(RUN, node, kw.pop("component", "comp"), **kw)


def _values(rec: TaskRecord) -> tuple[Any, ...]:
    return tuple(getattr(rec, f) for f in TaskRecord.__dataclass_fields__)


def _frames() -> list[tuple[list[Any], list[Any]]]:
    """(records, results) of three frames, as ``pack`` takes them: every shape a frame holds."""
    shared = {"encoding": "json", "dag_id": "dag-1"}     # one dict for many rows, as the loop's
    loop_rows = [(_key(i), str(i).encode(), _meta(_key(i), str(i).encode(), metadata=shared))
                 for i in range(40)]
    odd = {"encoding": "pickle", "dag_id": 7, "shape": [2, 3], "x": None, "y": 1.5}
    loose = [
        (_key(100), (b"",), StorageMetadata(_key(100), DataType.BINARY, _sha(b""), 0)),
        (_key(101), (b"a" * 300,), StorageMetadata("", DataType.NESTED, "", 300,
                                                   created_at="2020-01-01T00:00:00+00:00",
                                                   metadata=odd)),
        ("my.key:1-x", (b"xyz" * 50,), StorageMetadata("my.key:1-x", DataType.DATASET,
                                                       _sha(b"xyz" * 50), 150,
                                                       compression="ignored")),
        (_key(102), (b"first",), StorageMetadata(_key(102), DataType.PRIMITIVE, _sha(b"first"),
                                                 5, metadata={"encoding": "json"})),
        (_key(102), (b"second",), StorageMetadata(_key(102), DataType.PRIMITIVE,
                                                  _sha(b"second"), 6, metadata=None)),
        (_key(103), (bytes(range(256)) * 2,), StorageMetadata(_key(103), DataType.BINARY,
                                                              _sha(bytes(range(256)) * 2), 512)),
    ]
    packed_rows = pack_task_values([_values(_task(f"n{i}", order=i, inputs={
        "deps": [[f"n{i - 1}", ["outputs", 0]]], "p": {"i": i, "f": i / 3}})) for i in range(30)])
    assert packed_rows is not None
    first = ([RunRecord(RUN, "pipe", RunState.RUNNING, params={"a": [1, 2]}, created_at=1.0),
              packed_rows,
              # consecutive task runs: a task given again (merged: first created_at; a lower fence dropped),
              # inputs the fast encoder hands to the strict one (null, non-ASCII, 1e16), a row
              # orjson refuses (an int beyond 64 bits: its run goes pickled)
              _task("n3", state=TaskState.FAILED, fence=7, created_at=99.0, error="boom",
                    inputs={"n": None, "name": "café ☕", "big": 1e16, "t": (1, 2)}),
              _task("n4", fence=0, created_at=98.0, attempts=2,
                    inputs={"deps": [["n3", [2 ** 70]]]}),
              AttemptRecord(RUN, "n3", 1, 7, TaskState.FAILED, "local", 11.0, 12.0, "boom"),
              LogRecord(RUN, 12.5, "WARN", "hello", "n3"),
              _task("n3", state=TaskState.RUNNING, fence=5, created_at=120.0, started_at=13.0,
                    cache_status="miss", cache_reason="no stored result (new task)"),
              TaskUpdate(RUN, "n2", TaskState.FAILED, 14.0, error="late"),
              EdgeRecord(RUN, "n4", "n5", properties={"data_flow": "x"})],
             [pack_result_rows(loop_rows[:20], []), *loose, pack_result_rows(loop_rows[20:], [])])
    second = ([_task("n5", state=TaskState.SUCCESS, fence=9, created_at=200.0,
                     inputs={"deps": [], "é": [None, True, False, -1, 2.5e-300]}),
               _task("n40", state="QUEUED", created_at=201.0)],        # a state by its value
              # keys stored by the first frame: their rows are updated
              [(_key(0), (b"0",), StorageMetadata(_key(0), DataType.PRIMITIVE, _sha(b"0"), 1,
                                                  metadata={"encoding": "json"})),
               pack_result_rows([(_key(103), b"b" * 300, _meta(_key(103), b"b" * 300))], [])])
    third = ([_task("n6", inputs={}), _task("n7", inputs={"a": "b"})], [])
    return [first, second, third]


def _packed(records: list[Any], results: list[Any]) -> Any:
    """What the child reads: ``pack``'s output through a frame and back."""
    data = frame(("write", pack(records, results), 1))
    pos = [0]

    def read(n: int) -> bytes:
        chunk = data[pos[0]:pos[0] + n]
        pos[0] += len(chunk)
        return chunk
    return read_frame(read)[1]


def _general(results: SQLiteStorage, metadata: SQLMetadataStore, packed: Any) -> None:
    records, items = unpack(packed)
    if items:
        results.put_many_rows(items)
    if records:
        metadata.write(records)


def _direct(results: SQLiteStorage, metadata: SQLMetadataStore, packed: Any) -> None:
    records, items = unpack_rows(packed)
    assert not any(type(r) is TaskRecord for r in records)        # the direct path is taken
    if items:
        results.put_wire_rows(items)
    if records:
        metadata.write(records)


def _sqlite_rows(path: Any, tables: tuple[str, ...]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``tables``, each value with its storage class, in rowid order."""
    conn = sqlite3.connect(path)
    try:
        out = {}
        for table in tables:
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            picked = ", ".join(f'"{c}", typeof("{c}")' for c in cols)
            out[table] = conn.execute(
                f"SELECT rowid, {picked} FROM {table} ORDER BY rowid").fetchall()
        return out
    finally:
        conn.close()


def _result_rows(results: SQLiteStorage) -> dict[str, list[tuple[Any, ...]]]:
    return _sqlite_rows(results.db_path, ("node_results", "node_data_chunks", "sqlite_sequence"))


_PG_KEYS = {"runs": "run_id", "tasks": "run_id, node_id",
            "task_attempts": "run_id, node_id, attempt", "logs": "id", "lineage_edges": "id"}


def _pg_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the compared tables as PostgreSQL renders it in JSON: ``json`` columns
    keep the text they were given, so a JSON text written differently shows."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {table: [tuple(r) for r in conn.execute(text(
                f"SELECT row_to_json(t)::text FROM {table} t ORDER BY {_PG_KEYS[table]}"))]
                for table in COMPARED}
    finally:
        engine.dispose()


def _at(table: str, column: str) -> int:
    """Where ``column``'s value is in a row of ``_sqlite_rows``: (rowid, value, class, ...)."""
    conn = sqlite3.connect(":memory:")
    try:
        if table == "node_results":
            sqlite_module._create_or_upgrade(conn)
        names = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    finally:
        conn.close()
    return 1 + 2 * names.index(column)


def _empty_postgres(request: pytest.FixtureRequest) -> str:
    """The session's PostgreSQL database, migrated, its tables emptied."""
    url: str = request.getfixturevalue("postgres_url")
    SQLMetadataStore(url, create=True).close()
    _truncate(url)
    return url


def _truncate(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


def _write_all(way: Any, root: Any, url: str, compression: str | None,
               frames: list[tuple[list[Any], list[Any]]]) -> tuple[dict, dict]:
    results = SQLiteStorage(str(root / "results.db"), compression=compression,
                            compression_min_size=64, key_index=False)
    metadata = SQLMetadataStore(url, create=True)
    try:
        for records, res in frames:
            way(results, metadata, _packed(records, res))
        meta_rows = _pg_rows(url) if url.startswith("postgresql") else \
            _sqlite_rows(url.removeprefix("sqlite:///"), COMPARED)
        return _result_rows(results), meta_rows
    finally:
        results.close()
        metadata.close()


@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_store_the_same_rows_on_both_paths(tmp_path, backend, compression, request):
    stored = {}
    for name, way in (("general", _general), ("direct", _direct)):
        root = tmp_path / name
        root.mkdir()
        url = _empty_postgres(request) if backend == "postgres" else \
            f"sqlite:///{root / 'meta.db'}"
        stored[name] = _write_all(way, root, url, compression, _frames())
    general, direct = stored["general"], stored["direct"]
    for table in general[0]:
        assert direct[0][table] == general[0][table], table
    for table in general[1]:
        assert direct[1][table] == general[1][table], table
    # what was compared holds what the frames hold
    results = direct[0]["node_results"]
    assert len(results) == 45 and len(direct[1]["tasks"]) == 31
    compressed = [r for r in results if r[_at("node_results", "compression")] == "zstd"]
    assert len(compressed) == (3 if compression else 0)


def test_a_writer_process_stores_the_rows_the_general_path_stores(tmp_path):
    """The same frames sent to a real child (which also binds through its adapters) and
    written here by the general path. The child's own clock stamps results stored without a
    ``created_at``, so that column is compared only where the frames gave it."""
    from twingraph.engine.writer import WriterProcess

    frames = _frames()
    (tmp_path / "general").mkdir()
    general = _write_all(_general, tmp_path / "general",
                         f"sqlite:///{tmp_path / 'general' / 'meta.db'}", None, frames)
    (tmp_path / "child").mkdir()
    results = SQLiteStorage(str(tmp_path / "child" / "results.db"), key_index=False)
    metadata = SQLMetadataStore(f"sqlite:///{tmp_path / 'child' / 'meta.db'}", create=True)
    child = WriterProcess(results.reopen_recipe(), metadata.reopen_recipe())
    try:
        for batch, (records, res) in enumerate(frames):
            child.send_frame(WriterProcess.encode(records, res, batch))
            answer = child.receive()
            assert answer[0] == "ok", answer
    finally:
        child.close()
    try:
        got = _result_rows(results), _sqlite_rows(metadata.url.removeprefix("sqlite:///"),
                                                   COMPARED)
    finally:
        results.close()
        metadata.close()
    for table in general[1]:
        assert got[1][table] == general[1][table], table
    at = _at("node_results", "created_at")
    for mine, theirs in zip(got[0]["node_results"], general[0]["node_results"], strict=True):
        if theirs[at] == NOW:                          # stamped by the child's own clock
            assert mine[at] != NOW and mine[at + 1] == "text"
            mine, theirs = mine[:at] + mine[at + 1:], theirs[:at] + theirs[at + 1:]
        assert mine == theirs
    assert got[0]["sqlite_sequence"] == general[0]["sqlite_sequence"]


# -- bad input: the same error on both paths, and nothing written --------------------------

def _wire(key: Any, data: Any, **kw: Any) -> tuple[Any, Any, tuple[Any, ...]]:
    return key, data, _meta(key if isinstance(key, str) else "", data if isinstance(
        data, bytes) else b"", **kw)


GOOD = _wire(_key(1), b"good")
BAD_PUTS = {
    "a key with a slash": [GOOD, _wire("../x", b"1")],
    "a key that is not a string": [_wire(123, b"1", node_id="")],
    "a key with a lone surrogate": [_wire("ab\ud800", b"1", node_id="")],
    "a key of 201 characters": [_wire("k" * 201, b"1")],
    "another node_id": [_wire(_key(2), b"1", node_id=_key(3))],
    "a data type that is not a DataType": [_wire(_key(2), b"1", data_type="primitive")],
    "a size that is not the data's": [_wire(_key(2), b"12", size=3)],
    "metadata that is not a dict": [_wire(_key(2), b"1", metadata=["x"])],
    "metadata that is not JSON": [_wire(_key(2), b"1", metadata={"x": float("nan")})],
    "data that does not hash to its content_hash": [GOOD, _wire(_key(2), b"1",
                                                                content_hash=_sha(b"2"))],
    # the hash is checked only once all of the batch is valid: the key's error wins
    "a bad hash before a bad key": [_wire(_key(2), b"1", content_hash=_sha(b"2")),
                                    _wire("../x", b"1")],
    "metadata values of another shape": [(_key(2), b"1", _meta(_key(2), b"1") + ("extra",))],
}


@pytest.mark.parametrize("case", list(BAD_PUTS))
def test_bad_puts_fail_the_same_way_and_write_nothing(tmp_path, case):
    items = BAD_PUTS[case]
    errors = []
    for name in ("general", "direct"):
        store = SQLiteStorage(str(tmp_path / f"{name}.db"), key_index=False)
        try:
            store.put_wire_rows([GOOD])         # stored before: still the only row after
            before = _result_rows(store)
            with pytest.raises((StorageError, TypeError)) as info:
                if name == "general":
                    store.put_many_rows([(k, (d,), StorageMetadata(*m)) for k, d, m in items])
                else:
                    store.put_wire_rows(items)
            errors.append((type(info.value), str(info.value)))
            assert _result_rows(store) == before
        finally:
            store.close()
    assert errors[0] == errors[1]


GOOD_ODD_PUTS = {
    # a hash mismatch in a value a later one of the same key replaces is never checked
    "a bad hash replaced by a good value": [_wire(_key(2), b"1", content_hash=_sha(b"2")),
                                            _wire(_key(2), b"3")],
    "data that is not bytes": [(_key(2), bytearray(b"12"), _meta(_key(2), b"12")), GOOD],
    "a value over the chunk threshold": [GOOD, _wire(_key(2), b"x" * 100)],
    "metadata of fewer values (the defaults)": [(_key(2), b"1", _meta(_key(2), b"1")[:4])],
    "a size equal but of another type": [_wire(_key(2), b"12", size=2.0)],
    "no content_hash: computed": [_wire(_key(2), b"12", content_hash="")],
}


@pytest.mark.parametrize("case", list(GOOD_ODD_PUTS))
def test_unusual_puts_store_the_same_rows(tmp_path, case):
    items = GOOD_ODD_PUTS[case]
    stored = []
    for name in ("general", "direct"):
        store = SQLiteStorage(str(tmp_path / f"{name}.db"), chunk_threshold=64, chunk_size=16,
                              key_index=False)
        try:
            if name == "general":
                store.put_many_rows([(k, (d,), StorageMetadata(*m)) for k, d, m in items])
            else:
                store.put_wire_rows(items)
            stored.append(_result_rows(store))
        finally:
            store.close()
    assert stored[0] == stored[1]
    assert stored[0]["node_results"]


def _task_row(node: str, **kw: Any) -> list[Any]:
    return list(_values(_task(node, **kw)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_task_rows_fail_as_task_records_do(tmp_path, backend, request):
    url = _empty_postgres(request) if backend == "postgres" else \
        f"sqlite:///{tmp_path / 'meta.db'}"
    store = SQLMetadataStore(url, create=True)
    try:
        store.write([RunRecord(RUN, "pipe", RunState.RUNNING)])
        before = store.get_tasks(RUN)
        for bad in ({"state": "BOGUS"}, {"inputs": {"x": {1, 2}}}, {"inputs": {"x": float("inf")}}):
            with pytest.raises(ValidationError) as general:
                store.write([_task("ok"), _task("bad", **bad)])
            with pytest.raises(ValidationError) as direct:
                store.write([TaskRows([_task_row("ok"), _task_row("bad", **bad)])])
            assert str(direct.value) == str(general.value)
            assert store.get_tasks(RUN) == before
        # a row of other length means what TaskRecord(*row) means: defaults, or a TypeError
        with pytest.raises(TypeError):
            store.write([TaskRows([_task_row("x") + [None]])])
        store.write([TaskRows([[RUN, "short", "comp"]])])
        assert store.get_tasks(RUN) == [TaskRecord(RUN, "short", "comp")]
    finally:
        store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_of_task_rows_written_again_stores_the_same_rows(tmp_path, backend, request):
    """PostgreSQL applies a batch again when it aborted the transaction to break a deadlock
    (``retry_conflicts``): writing a batch must leave its rows as they were given."""
    url = _empty_postgres(request) if backend == "postgres" else \
        f"sqlite:///{tmp_path / 'meta.db'}"
    store = SQLMetadataStore(url, create=True)
    try:
        store.write([RunRecord(RUN, "pipe", RunState.RUNNING)])
        batch = [TaskRows([_task_row("a", inputs={"deps": [["b", []]]}, fence=1),
                           _task_row("a", inputs={"x": 1}, fence=0, created_at=50.0),
                           _task_row("b", inputs={"n": None})])]
        store.write(batch)
        first = store.get_tasks(RUN)
        store.write(batch)
        assert store.get_tasks(RUN) == first
        # a's second row has a lower fence than its first: dropped (a stale driver's)
        assert [(t.node_id, t.inputs, t.fence, t.created_at) for t in first] == \
            [("a", {"deps": [["b", []]]}, 1, 10.0), ("b", {"n": None}, 0, 10.0)]
    finally:
        store.close()
