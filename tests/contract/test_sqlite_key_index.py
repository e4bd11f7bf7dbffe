"""The SQLite result store's in-memory key index (``stores/results/_keyfilter.py``): memo
lookups that must miss skip the query, and no stored key is ever reported missing — whether
this instance, another instance in this process or another process wrote it.

Real SQLite files; other processes are real subprocesses; the queries a lookup runs are seen
through sqlite3's own trace callback on the store's connection.
"""

from __future__ import annotations

import gc
import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest

from twingraph.core.results import DataType, StorageMetadata, stored_value_id
from twingraph.stores.results import SQLiteStorage
from twingraph.stores.results._keyfilter import SYNC_EVERY, KeyFilter


def key(i: int, tag: str = "k") -> str:
    return hashlib.sha256(f"{tag}{i}".encode()).hexdigest()


def put(store: SQLiteStorage, keys: list[str]) -> None:
    store.put_many([(k, b"v" + k.encode()[:8], StorageMetadata(k, DataType.BINARY, "", 9))
                    for k in keys])


def ready(store: SQLiteStorage, timeout: float = 10.0) -> None:
    """Make the store build its index (a lookup that misses) and wait for it."""
    store.content_hashes([key(-1, "absent")])
    deadline = time.monotonic() + timeout
    while store._keys.state != "ready":
        assert store._keys.state != "off", "the index switched itself off"
        assert time.monotonic() < deadline, "the index was not built"
        time.sleep(0.005)


def lookups_seen(store: SQLiteStorage) -> list[str]:
    """Statements run on this thread's connection of ``store`` from now on."""
    seen: list[str] = []
    store._conn().set_trace_callback(seen.append)
    return seen


# -- the filter ----------------------------------------------------------------------------

def test_filter_has_no_false_negatives_across_growth_and_few_false_positives() -> None:
    f = KeyFilter(capacity=2048)
    keys = [key(i) for i in range(50_000)]          # 3 growths past the first layer
    f.add_many(keys[:30_000])
    for k in keys[30_000:]:
        f.add(k)
    assert len(f) == 50_000 and len(f._layers) >= 4
    assert all(f.may_contain(k) for k in keys)
    absent = [key(i, "x") for i in range(50_000)]
    false = sum(f.may_contain(k) for k in absent)
    assert false < 0.01 * len(absent), false
    assert f.nbytes < 8 * len(keys)                  # a few bytes a key, not a set of strings


def test_filter_adds_from_many_threads_lose_no_key() -> None:
    f = KeyFilter(capacity=1024)
    parts = [[key(i, f"t{t}") for i in range(20_000)] for t in range(4)]
    threads = [threading.Thread(target=lambda p=p: [f.add(k) for k in p]) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(f.may_contain(k) for p in parts for k in p)


# -- the store -----------------------------------------------------------------------------

def test_absent_keys_are_answered_without_a_query_once_the_index_is_ready(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "r.db")
    put(store, [key(i) for i in range(100)])
    ready(store)
    store.content_hashes([key(0)])                    # the first lookup after the build syncs
    seen = lookups_seen(store)
    assert store.content_hashes([key(i, "new") for i in range(16)]) == {}
    assert store.content_hashes([key(7, "new")]) == {}
    assert not [s for s in seen if "node_results" in s], seen
    # A large batch is one query per 500 keys: cheaper than ruling each key out in Python.
    assert store.content_hashes([key(i, "new") for i in range(100)]) == {}
    assert len([s for s in seen if "node_results" in s]) == 1
    seen.clear()
    found = store.content_hashes([key(3), key(3, "new")])
    assert list(found) == [key(3)] and found[key(3)] == stored_value_id(store.head(key(3)))
    assert [s for s in seen if "node_results" in s]  # a key that may be there is looked up
    store.close()


def test_a_lone_lookup_ruled_out_needs_no_connection_but_a_closed_store_refuses_it(
        tmp_path: Path) -> None:
    """A lone key the ready index rules out is answered before the store takes a connection
    (a deep graph's lookups, one a node); a stored key is still found, and a closed store
    still raises, whatever the index of the file (shared with another open store) says."""
    from twingraph.errors import StorageError
    store = SQLiteStorage(tmp_path / "r.db")
    other = SQLiteStorage(tmp_path / "r.db")          # keeps the file's index alive
    put(store, [key(i) for i in range(10)])
    ready(store)
    store.content_hashes([key(0)])                     # the first lookup after the build syncs
    assert store.content_hashes([key(1, "new")]) == {}
    assert list(store.content_hashes([key(2)])) == [key(2)]
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.content_hashes([key(1, "new")])
    other.close()


def test_a_run_of_hits_never_builds_the_index(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "r.db")
    put(store, [key(i) for i in range(10)])
    assert len(store.content_hashes([key(i) for i in range(10)])) == 10
    assert store._keys.state == "idle"
    store.close()


def test_keys_written_in_this_process_are_found_at_once(tmp_path: Path) -> None:
    a = SQLiteStorage(tmp_path / "r.db")
    b = SQLiteStorage(tmp_path / "r.db")             # another store on the same file
    put(a, [key(i) for i in range(20)])
    ready(a)
    assert b._keys is a._keys                        # one index per file and process
    for i in range(5):
        put(b, [key(i, "b")])
        assert a.content_hashes([key(i, "b")]) == {key(i, "b"): stored_value_id(b.head(key(i, "b")))}
        put(a, [key(i, "a")])
        assert key(i, "a") in b.content_hashes([key(i, "a")])
    # ... and their rows are not read back: the writer told the index which rowids it made.
    top = a._conn().execute("SELECT max(rowid) FROM node_results").fetchone()[0]
    assert a._keys._last_rowid == top
    a.close()
    b.close()


OTHER_PROCESS = """
import sys
from twingraph.core.results import DataType, StorageMetadata
from twingraph.stores.results import SQLiteStorage
s = SQLiteStorage(sys.argv[1])
s.put(sys.argv[2], b"from-elsewhere", StorageMetadata(sys.argv[2], DataType.BINARY, "", 14))
s.close()
"""


def written_elsewhere(path: Path, k: str) -> None:
    """Another process (a real one) stores ``k``; then wait out one sync interval."""
    subprocess.run([sys.executable, "-c", OTHER_PROCESS, str(path), k], check=True,
                   env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    time.sleep(SYNC_EVERY * 1.5)


def test_a_key_another_process_commits_is_found_within_the_sync_interval(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "r.db")
    put(store, [key(i) for i in range(20)])
    ready(store)
    k = key(1, "other")
    assert store.content_hashes([k]) == {}
    written_elsewhere(tmp_path / "r.db", k)
    assert k in store.content_hashes([k])
    store.close()


def test_a_broken_index_falls_back_to_queries(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "r.db")
    put(store, [key(i) for i in range(5)])
    ready(store)
    store._keys.off()
    seen = lookups_seen(store)
    assert store.content_hashes([key(9, "absent")]) == {}
    assert [s for s in seen if "node_results" in s]
    assert key(2) in store.content_hashes([key(2)])
    store.close()


def test_lookups_agree_with_the_table_under_concurrent_writers(tmp_path: Path) -> None:
    """Two stores on one file write while a third looks up keys written before each lookup
    started: every one must be found (a false negative would re-run a task that has a
    stored result)."""
    path = tmp_path / "r.db"
    reader = SQLiteStorage(path)
    put(reader, [key(0, "seed")])
    ready(reader)
    written: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(tag: str) -> None:
        s = SQLiteStorage(path)
        i = 0
        while not stop.is_set():
            batch = [key(i + j, tag) for j in range(7)]
            put(s, batch)
            with lock:
                written.extend(batch)
            i += 7
        s.close()

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("w1", "w2")]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 1.5
        checked = 0
        while time.monotonic() < deadline:
            with lock:
                sample = written[-50:]
            if sample:
                found = reader.content_hashes(sample)
                assert len(found) == len(sample), set(sample) - set(found)
                checked += len(sample)
        assert checked > 0
    finally:
        stop.set()
        for t in threads:
            t.join()
    reader.close()


@pytest.mark.parametrize("n", [3000])
def test_the_index_is_built_from_what_the_file_already_holds(tmp_path: Path, n: int) -> None:
    first = SQLiteStorage(tmp_path / "r.db")
    put(first, [key(i) for i in range(n)])
    old = weakref.ref(first._keys)
    first.close()
    del first
    gc.collect()
    assert old() is None                             # the index went with the last store
    store = SQLiteStorage(tmp_path / "r.db")         # a later process's view: a fresh index
    ready(store)
    found = store.content_hashes([key(i) for i in range(n)] + [key(1, "absent")])
    assert len(found) == n
    store.close()


def test_a_file_created_again_under_the_same_name_gets_an_index_of_its_own(tmp_path: Path) -> None:
    """A store still open on a removed file must not lend its index (rowids seen, keys) to a
    new file of the same name: the new file's rowids start at 1 again."""
    path = tmp_path / "r.db"
    old = SQLiteStorage(path)
    put(old, [key(i) for i in range(200)])
    ready(old)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    new = SQLiteStorage(path)
    assert new._keys is not old._keys
    ready(new)
    k = key(1, "other")
    written_elsewhere(path, k)
    assert k in new.content_hashes([k])
    new.close()
    old.close()


@pytest.mark.parametrize("deleted", [1, 50])
def test_rows_deleted_from_the_top_elsewhere_then_new_keys_are_found(tmp_path: Path,
                                                                     deleted: int) -> None:
    """A sync reads the rows past the highest rowid it has seen. Rowids are AUTOINCREMENT: after
    another process deletes the top rows (any number of them), a new row still gets a rowid
    past every one seen (version 1 reused them, and a key stored then was missed: decision 0010)."""
    store = SQLiteStorage(tmp_path / "r.db")
    put(store, [key(i) for i in range(100)])
    ready(store)
    store.content_hashes([key(0)])
    other = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    top = other.execute("SELECT max(rowid) FROM node_results").fetchone()[0]
    other.execute("DELETE FROM node_results WHERE rowid > ?", (top - deleted,))
    other.close()
    new = key(2, "after-delete")
    written_elsewhere(tmp_path / "r.db", new)
    assert new in store.content_hashes([new])
    check = sqlite3.connect(tmp_path / "r.db")
    assert check.execute("SELECT rowid FROM node_results WHERE node_id = ?",
                         (new,)).fetchone()[0] > top
    check.close()
    store.close()


def test_a_closed_file_removed_and_created_again_starts_a_new_index(tmp_path: Path) -> None:
    """The new file may get the old one's inode number: closing the last store on a file
    takes its index out of the registry."""
    path = tmp_path / "r.db"
    store = SQLiteStorage(path)
    put(store, [key(i) for i in range(300)])
    ready(store)
    first = store._keys
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = SQLiteStorage(path)                      # the old object is still bound meanwhile
    assert store._keys is not first
    ready(store)
    k = key(1, "other")
    written_elsewhere(path, k)
    assert k in store.content_hashes([k])
    store.close()


def test_only_small_numbers_stay_in_memory() -> None:
    from twingraph.engine.loop import _small
    assert _small(5) and _small(2.5) and _small(None) and _small(True)
    assert not _small(10 ** 40) and not _small("text") and not _small([1])


def test_a_lookup_binds_keys_as_they_are(tmp_path: Path) -> None:
    """Memo lookups do not check each key's characters (the scheduler's hot path): a string
    that ``put`` refuses as a key is simply not found (one that cannot even be encoded too,
    whether or not the key index ruled it out first), stored keys of any valid shape are;
    a key that is not a string is still an error."""
    from twingraph.errors import StorageError
    store = SQLiteStorage(str(tmp_path / "r.db"))
    try:
        put(store, [key(1), "plain-key.v1"])
        found = store.content_hashes([key(1), "plain-key.v1", "../escape", "", "x" * 300])
        assert set(found) == {key(1), "plain-key.v1"}
        assert store.content_hashes(["../escape"]) == {}
        with pytest.raises(StorageError, match="invalid result key"):
            store.content_hashes([key(1), 42])  # type: ignore[list-item]
        assert set(store.content_hashes([key(1), "lone\ud800"])) == {key(1)}
        assert store.content_hashes(["lone\ud800"]) == {}
        with pytest.raises(StorageError):
            store.head("../escape")             # the single-key API still validates
    finally:
        store.close()
