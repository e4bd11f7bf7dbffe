"""The SQLite result store's schema version 2: keys found through ``k64`` (an 8-byte integer
that is not unique), AUTOINCREMENT rowids, and the rebuild of a version 1 file on open.

Real SQLite files; the version 1 file is written with version 1's own DDL, as a TwinGraph of
that version wrote it.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from twingraph.core.results import DataType, StorageMetadata
from twingraph.errors import StorageError
from twingraph.stores.results import SQLiteStorage
from twingraph.stores.results import sqlite as sqlite_store

V1_SCHEMA = """
CREATE TABLE node_results (
    node_id TEXT PRIMARY KEY, data_type TEXT NOT NULL, content_hash TEXT NOT NULL,
    data_size INTEGER NOT NULL, compression TEXT, created_at TEXT NOT NULL, dag_id TEXT,
    metadata TEXT, n_chunks INTEGER NOT NULL, data BLOB
);
CREATE INDEX node_results_dag ON node_results(dag_id) WHERE dag_id IS NOT NULL;
CREATE TABLE node_data_chunks (
    node_id TEXT NOT NULL, chunk_id INTEGER NOT NULL, raw_size INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (node_id, chunk_id)
);
CREATE TRIGGER node_results_replace_chunks AFTER UPDATE OF n_chunks ON node_results
    WHEN old.n_chunks > 0
    BEGIN DELETE FROM node_data_chunks WHERE node_id = old.node_id; END;
CREATE TRIGGER node_results_delete_chunks AFTER DELETE ON node_results
    WHEN old.n_chunks > 0
    BEGIN DELETE FROM node_data_chunks WHERE node_id = old.node_id; END;
PRAGMA user_version = 1;
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def meta(key: str, data: bytes, dag_id: str | None = None) -> StorageMetadata:
    return StorageMetadata(node_id=key, data_type=DataType.BINARY, content_hash="",
                           size=len(data), metadata={"dag_id": dag_id} if dag_id else {})


def v1_file(path: Path, small: dict[str, bytes], chunked: dict[str, list[bytes]]) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V1_SCHEMA)
    db.execute("BEGIN")
    for key, data in small.items():
        db.execute("INSERT INTO node_results VALUES (?, 'binary', ?, ?, NULL, '2026-01-01', 'd1', "
                   "'{\"dag_id\": \"d1\"}', 0, ?)", (key, sha(data), len(data), data))
    for key, pieces in chunked.items():
        whole = b"".join(pieces)
        db.execute("INSERT INTO node_results VALUES (?, 'binary', ?, ?, NULL, '2026-01-01', NULL, "
                   "'{}', ?, NULL)", (key, sha(whole), len(whole), len(pieces)))
        for i, piece in enumerate(pieces):
            db.execute("INSERT INTO node_data_chunks VALUES (?, ?, ?, ?)", (key, i, len(piece), piece))
    db.execute("COMMIT")
    db.close()


def rows(path: Path) -> list[tuple[int, int, str]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT id, k64, node_id FROM node_results ORDER BY id").fetchall()
    finally:
        db.close()


def test_a_version_1_file_is_rebuilt_on_open_and_keeps_every_result(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    small = {f"k{i}": os.urandom(20 + i) for i in range(50)}
    chunked = {"big": [os.urandom(300), os.urandom(300), os.urandom(77)]}
    v1_file(path, small, chunked)
    store = SQLiteStorage(path, chunk_threshold=500, chunk_size=300)
    for key, data in small.items():
        assert bytes(store.get(key)) == data
    assert bytes(store.get("big")) == b"".join(chunked["big"])
    assert store.head("k3").metadata == {"dag_id": "d1"}
    assert sorted(store.list_keys("d1")) == sorted(small)
    assert store.content_hashes(list(small)) == {k: "bytes:" + sha(v) for k, v in small.items()}
    found = rows(path)
    assert [r[2] for r in found] == [*small, "big"]            # rowid order kept
    assert all(h == sqlite_store.k64(key) for _, h, key in found)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN "
                                        "('index', 'trigger') AND tbl_name = 'node_results'")}
    assert {"node_results_k64", "node_results_dag", "node_results_replace_chunks",
            "node_results_delete_chunks"} <= indexes
    db.close()
    # Writes after the rebuild: an old key is updated in place, a new one gets a new rowid,
    # and the chunked key's old chunks go when it is replaced.
    store.put("k0", b"new", meta("k0", b"new"))
    store.put("fresh", b"x", meta("fresh", b"x"))
    store.put("big", b"small now", meta("big", b"small now"))
    assert bytes(store.get("k0")) == b"new" and bytes(store.get("big")) == b"small now"
    after = rows(path)
    assert len(after) == len(found) + 1 and after[-1][2] == "fresh" and after[-1][0] > found[-1][0]
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM node_data_chunks").fetchone()[0] == 0
    db.close()
    store.close()
    SQLiteStorage(path).close()                    # opened again: nothing to do
    assert rows(path) == after


def test_a_version_1_file_opened_by_several_processes_at_once_is_rebuilt_once(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    small = {f"k{i}": os.urandom(16) for i in range(200)}
    v1_file(path, small, {})
    opener = ("import sys\nfrom twingraph.stores.results import SQLiteStorage\n"
              "s = SQLiteStorage(sys.argv[1])\nprint(s.get('k7').hex())\ns.close()\n")
    procs = [subprocess.Popen([sys.executable, "-c", opener, str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
             for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out.strip() == small["k7"].hex()
    assert [r[2] for r in rows(path)] == list(small)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    SQLiteStorage(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 3")
    db.close()
    with pytest.raises(StorageError, match="newer TwinGraph"):
        SQLiteStorage(path)


def test_keys_sharing_a_k64_are_kept_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``k64`` is 8 bytes of a hash: two keys may share one. Every read, put, update and delete
    must still find exactly its own key."""
    monkeypatch.setattr(sqlite_store, "k64", lambda key: 42)
    store = SQLiteStorage(tmp_path / "r.db", chunk_threshold=100, chunk_size=64)
    values = {f"key{i}": f"value {i}".encode() * (1 + 30 * (i % 3 == 0)) for i in range(12)}
    store.put_many([(k, v, meta(k, v, "d" if i % 2 else None))
                    for i, (k, v) in enumerate(values.items())])
    for k, v in values.items():
        assert bytes(store.get(k)) == v
        assert store.head(k).size == len(v) and store.has(k)
    assert store.content_hashes([*values, "absent"]) == {k: "bytes:" + sha(v) for k, v in values.items()}
    assert store.content_hashes(["key5"]) == {"key5": "bytes:" + sha(values["key5"])}
    assert store.has("absent") is False and store.get("absent") is None
    # Updates in place, one of them turning a chunked value into an inline one.
    store.put_many([("key1", b"one", meta("key1", b"one")), ("key3", b"three", meta("key3", b"three"))])
    assert store.patch_metadata("key2", {"tag": "x"})
    assert store.head("key2").metadata["tag"] == "x" and "tag" not in store.head("key4").metadata
    assert store.delete("key4") and not store.has("key4") and bytes(store.get("key5")) == values["key5"]
    assert len(rows(tmp_path / "r.db")) == 11
    assert bytes(store.get("key1")) == b"one" and bytes(store.get("key3")) == b"three"
    assert b"".join(store.iter_chunks("key6")) == values["key6"]
    store.close()


def test_a_key_given_twice_in_one_batch_is_one_row_with_the_last_value(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "r.db")
    store.put_many([("a", b"1", meta("a", b"1")), ("b", b"2", meta("b", b"2")),
                    ("a", b"3", meta("a", b"3"))])
    assert sorted(r[2] for r in rows(tmp_path / "r.db")) == ["a", "b"]
    assert bytes(store.get("a")) == b"3"
    store.close()
