"""SQLite result store: one file, WAL, one transaction per put / put_many.

Schema (created on open; ``PRAGMA user_version`` = 2; a version 1 file is rebuilt on open):

- ``node_results``: one row per result — ``id`` (AUTOINCREMENT: a rowid is never given out
  twice, so ``_keyfilter`` reads other processes' rows as "past the highest rowid seen"), ``k64``
  (``k64(key)``, an 8-byte integer, indexed), ``node_id`` (the key), metadata columns, then
  ``data`` (last, so ``head`` never reads it) holding the whole value when it is at most
  ``chunk_threshold`` bytes (``n_chunks`` 0). The document keeps small blobs in a separate
  ``node_data`` table; inlining them here halves the rows the hot path writes (10,000 tiny
  results per ``put_many``) — measured, see decision 0002.
- The key is found through ``k64``, not through an index of its text: keys are content hashes
  that land at random places in an index, and an index of 8-byte integers is a fifth of the
  size of one of 64-character texts, so a million of them stay in the page cache (decision
  0013). ``k64`` is not unique: every lookup also compares ``node_id``, and a put looks its
  keys up inside its write transaction to update the rows that exist and insert the rest.
- ``node_data_chunks``: (node_id, chunk_id) -> ``chunk_size`` bytes (zstd frame per chunk when
  compressed, so reads decompress chunk by chunk in bounded memory).
- Triggers drop a key's old chunks when its row is replaced or deleted, so an overwrite never
  leaves stale chunks and inline puts pay nothing for it.

Concurrency: one connection per thread (WAL lets readers run beside the writer), kept in the
thread's local storage and closed when that goes (the thread ended): a process that runs many
short-lived threads over one store holds connections only for the living ones; in-process
writers serialise on a lock instead of SQLite's sleeping busy handler; other processes wait on
``busy_timeout``. A chunked read holds one read transaction (a snapshot) so a concurrent
overwrite cannot mix old and new chunks; ``iter_chunks`` uses its own connection for that, since
its generator may be stepped from different threads (the async face does).

Durability is SQLite's ``synchronous=NORMAL`` in WAL mode: a commit survives a crash of the
process; the last commits may be lost on power failure (never corrupted).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from zlib import adler32, crc32

from twingraph.core.results import StorageMetadata, value_id
from twingraph.errors import ConfigurationError, IntegrityError, StorageError
from twingraph.stores.results._common import (
    Prepared, check_hash, dag_text, data_type_of, hash_mismatch, merge_meta, meta_from_json, prepare_all,
    prepare_wire,
    slices, utc_now, validate_key, verified_stream, verify,
)
from twingraph.stores.results._compress import CompressionPolicy, decompress_frame, pack_small, worth_it
from twingraph.stores.results._keyfilter import KeyIndex, NoIndex, index_for, release
from twingraph.stores.results.base import Buffer, Item, ResultStoreBase
from twingraph.stores.sqlite_rows import insert_rows, multi_row
from twingraph.stores.sqlite_wal import enable_wal

__all__ = ["SQLiteStorage"]

MiB = 1024 * 1024
#: WAL pages (4 KiB) between automatic checkpoints.
WAL_CHECKPOINT_PAGES = 10_000
#: The columns after ``id``, ``k64`` and ``node_id``, in order (version 1 had them too).
_COLUMNS = """
    data_type    TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    data_size    INTEGER NOT NULL,
    compression  TEXT,
    created_at   TEXT NOT NULL,
    dag_id       TEXT,
    metadata     TEXT,
    n_chunks     INTEGER NOT NULL,
    data         BLOB"""
_NAMES = "data_type, content_hash, data_size, compression, created_at, dag_id, metadata, " \
         "n_chunks, data"
SCHEMA_VERSION = 2


def _table(name: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {name} (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    k64          INTEGER NOT NULL,
    node_id      TEXT NOT NULL,{_COLUMNS}
);"""


# Indexes and triggers of ``node_results`` (created again after a rebuild).
_AROUND = """
CREATE INDEX IF NOT EXISTS node_results_k64 ON node_results(k64);
CREATE INDEX IF NOT EXISTS node_results_dag ON node_results(dag_id) WHERE dag_id IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS node_results_replace_chunks AFTER UPDATE OF n_chunks ON node_results
    WHEN old.n_chunks > 0
    BEGIN DELETE FROM node_data_chunks WHERE node_id = old.node_id; END;
CREATE TRIGGER IF NOT EXISTS node_results_delete_chunks AFTER DELETE ON node_results
    WHEN old.n_chunks > 0
    BEGIN DELETE FROM node_data_chunks WHERE node_id = old.node_id; END;
"""
_SCHEMA = _table("node_results") + """
CREATE TABLE IF NOT EXISTS node_data_chunks (
    node_id  TEXT NOT NULL,
    chunk_id INTEGER NOT NULL,
    raw_size INTEGER NOT NULL,
    data     BLOB NOT NULL,
    PRIMARY KEY (node_id, chunk_id)
);""" + _AROUND + f"PRAGMA user_version = {SCHEMA_VERSION};"
# Version 1 keyed node_results by its text (``node_id TEXT PRIMARY KEY``): the rows move to a
# table of version 2's shape, in rowid order, in the transaction that opens the file.
_FROM_V1 = _table("node_results_v2") + f"""
INSERT INTO node_results_v2 (k64, node_id, {_NAMES})
    SELECT twingraph_k64(node_id), node_id, {_NAMES} FROM node_results ORDER BY rowid;
DROP TRIGGER IF EXISTS node_results_replace_chunks;
DROP TRIGGER IF EXISTS node_results_delete_chunks;
DROP TABLE node_results;
ALTER TABLE node_results_v2 RENAME TO node_results;
""" + _AROUND + f"PRAGMA user_version = {SCHEMA_VERSION};"

_INSERT = f"INSERT INTO node_results (k64, node_id, {_NAMES}) " \
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATE = "UPDATE node_results SET data_type = ?, content_hash = ?, data_size = ?, " \
          "compression = ?, created_at = ?, dag_id = ?, metadata = ?, n_chunks = ?, data = ? " \
          "WHERE id = ?"
# stores/sqlite_rows.py says why rows go in groups. Result rows go in larger groups than the
# metadata store's: their key lands at a random place in the index, so each statement's step
# (run without the GIL) is longer, and fewer GIL take-backs per batch left the scheduler
# waiting on the writer half as long (300k-node DAG, session 7: 4.6 -> 2.5 s of 19 s).
# Fewer where the connection allows fewer bound variables (999 before SQLite 3.32).
RESULT_ROWS_PER_STATEMENT = 512
_INSERT_MANY: dict[int, tuple[str, int] | None] = {}     # rows per statement -> statement


def _insert_many(conn: sqlite3.Connection) -> tuple[str, int] | None:
    rows = min(RESULT_ROWS_PER_STATEMENT,
               conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 11)
    found = _INSERT_MANY.get(rows)
    if found is None:
        found = _INSERT_MANY[rows] = multi_row(_INSERT, 11, rows)
    return found


_ONLY_STR = frozenset({str})


def _encodes(key: str) -> bool:
    try:
        key.encode()
    except UnicodeEncodeError:
        return False
    return True


def k64(key: str) -> int:
    """The signed 8-byte integer ``key`` is indexed under: its CRC-32 and Adler-32 side by
    side. Stored in every row: it must never change. Not a cryptographic hash, and it need not
    be: keys that share one are told apart by ``node_id`` (it only costs a row to compare), and
    two C calls cost 0.27 µs against blake2b's 0.69 (computed per key put and looked up)."""
    data = key.encode()
    return ((crc32(data) << 32) | adler32(data)) - _SIGN


_SIGN = 1 << 63
_WHERE = " FROM node_results WHERE k64 = ? AND node_id = ?"
_READ = "SELECT content_hash, data_size, compression, n_chunks, data" + _WHERE
_READ_ALL = "SELECT data_type, created_at, metadata, content_hash, data_size, compression, " \
            "n_chunks, data" + _WHERE
_HEAD = "SELECT data_type, content_hash, data_size, compression, created_at, metadata" + _WHERE
_TOP = "SELECT max(rowid) FROM node_results"
#: What a memo lookup answers per row (``core.results.value_id``): raw bytes are marked in the
#: query; a large value, whose data type no longer says its encoding, is marked ``large:`` for
#: ``_large_ids`` to look at its metadata (SQL JSON functions are not in every SQLite build).
_ID = "CASE data_type WHEN 'binary' THEN 'bytes:' || content_hash WHEN 'large_object' THEN " \
      "'large:' || content_hash ELSE content_hash END"
#: Keys looked up per query by ``k64 IN (...)`` (a put's existing rows, a memo burst's hits).
_PER_QUERY = 500
#: Lookups of at most this many keys ask the key index first. A larger batch is one query per
#: 500 keys, which costs less than ruling each key out in Python.
_FEW = 16
_CHUNKS = "SELECT chunk_id, raw_size, data FROM node_data_chunks WHERE node_id = ? " \
          "ORDER BY chunk_id"
_SUM = "SELECT sum(raw_size) FROM node_data_chunks WHERE node_id = ?"


def _ids(conn: sqlite3.Connection, keys: Sequence[tuple[int, str]]) -> dict[str, int]:
    """The row ids of the keys in ``keys`` (``(k64(key), key)`` pairs) stored already: one
    query per ``_PER_QUERY`` keys; rows of other keys that share a ``k64`` are left out."""
    found: dict[str, int] = {}
    for i in range(0, len(keys), _PER_QUERY):
        part = [h for h, _ in keys[i:i + _PER_QUERY]]
        found.update(conn.execute("SELECT node_id, id FROM node_results WHERE k64 IN "
                                  f"({','.join('?' * len(part))})", part))
    if found:
        for other in found.keys() - {key for _, key in keys}:
            del found[other]
    return found


def _blob(key: str, digest: str, where: str, data: Any) -> bytes:
    """A value's stored bytes. Anything but a blob there (NULL, text: an edited or damaged
    file) is corruption, reported as such so that the entry is dropped and recomputed, not a
    TypeError from hashing it."""
    if not isinstance(data, bytes):
        raise IntegrityError(key, digest, f"<{where} holds {type(data).__name__}, not a blob>")
    return data


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _count(value: Any) -> bool:
    """Whether ``value`` is an int (and not a bool): a number of bytes."""
    return isinstance(value, int) and not isinstance(value, bool)


def _checked(key: str, digest: Any, size: Any, comp: Any, n_chunks: Any = 0) -> None:
    """Raise ``IntegrityError`` unless a row's columns have the types this store writes: a
    text ``data_size`` or ``n_chunks`` (an edited or damaged file) is a damaged entry, to be
    dropped and recomputed, not a TypeError from using it."""
    if type(digest) is not str or type(size) is not int or size < 0 \
            or type(n_chunks) is not int or n_chunks < 0 or comp not in (None, "zstd"):
        raise IntegrityError(key, str(digest), f"<row holds data_size {size!r}, n_chunks "
                             f"{n_chunks!r}, compression {comp!r}>")


class _Owner:
    """Kept in a thread's local storage beside its connection: when that storage goes (the
    thread ended, or ``close`` dropped it) the connection is closed and the store forgets it.
    Without it every thread that ever touched the store kept a connection (and its file
    descriptors) until ``close``: 500 short-lived threads, 500 connections."""

    __slots__ = ("conn", "conns", "pid")

    def __init__(self, conn: sqlite3.Connection, conns: set[sqlite3.Connection]) -> None:
        self.conn, self.conns, self.pid = conn, conns, os.getpid()

    def __del__(self) -> None:
        if self.pid != os.getpid():
            # A child forked from the process that opened it, dropping the parent's threads:
            # the connection may have been mid-call in one of them (closing it waited for
            # ever), and SQLite forbids using one across a fork. Left alone.
            return
        self.conns.discard(self.conn)          # atomic under the GIL: no lock taken here
        self.conn.close()


def _inline(key: str, digest: str, size: int, comp: str | None, data: Any) -> Buffer:
    """The value kept in a row's ``data`` column."""
    data = _blob(key, digest, "data column", data)
    return decompress_frame(data, size, key, digest) if comp else data


def _create_or_upgrade(conn: sqlite3.Connection) -> None:
    """Create the schema, or rebuild a version 1 file as version 2 (inside the caller's
    write transaction: another process may have done either since the caller looked)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        script = _SCHEMA
    elif version == 1:
        conn.create_function("twingraph_k64", 1, k64, deterministic=True)
        script = _FROM_V1
    else:
        return
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""


class SQLiteStorage(ResultStoreBase):
    """Result store in one SQLite file (``db_path``; parent directories are created)."""

    def __init__(self, db_path: str | Path, *, chunk_threshold: int = MiB, chunk_size: int = MiB,
                 compression: str | None = None, compression_level: int = 3,
                 compression_min_size: int = 4096, busy_timeout: float = 30.0,
                 cache_size: int | None = None, key_index: bool = True) -> None:
        """``key_index=False``: no in-memory index of stored keys (``_keyfilter``), for a
        store that only writes (the writer process's); its lookups always query."""
        if str(db_path) == ":memory:" or str(db_path).startswith("file::memory:"):
            raise ConfigurationError("SQLiteStorage needs a file (one connection per thread); "
                                     "use MemoryStorage for an in-memory store")
        if not (_count(chunk_size) and chunk_size > 0 and _count(chunk_threshold)
                and chunk_threshold >= 0):        # (1.5 failed the first chunked put)
            raise ConfigurationError("chunk_size must be an int > 0 and chunk_threshold an "
                                     f"int >= 0, got {chunk_size!r} and {chunk_threshold!r}")
        # absolute: a relative path opened another store (each thread's connection, each
        # stream) once the process changed its directory
        self.db_path = Path(db_path).absolute()
        self._abs_path = self.db_path
        self.chunk_threshold, self.chunk_size = chunk_threshold, chunk_size
        self.policy = CompressionPolicy(compression, compression_level, compression_min_size)
        self._timeout = busy_timeout
        if cache_size is not None and (isinstance(cache_size, bool) or not isinstance(cache_size, int)
                                       or cache_size < 0):
            raise ConfigurationError(f"cache_size must be a number of bytes >= 0, got {cache_size!r}")
        self._cache_kib = None if cache_size is None else max(1, cache_size // 1024)
        self._local = threading.local()
        self._conns: set[sqlite3.Connection] = set()     # the living threads' connections
        self._conns_lock = threading.Lock()    # guards _conns and _closed
        self._write_lock = threading.Lock()    # serialises this process's writers
        self._closed = False
        self._forked_mid_write = False         # (``_after_fork``)
        self._identity: tuple[int, int] | None = None     # the file opened (``_write``)
        with self._translate("open", str(self.db_path)):
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            self._identity = _identity(self._abs_path)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(f"{self.db_path} was written by a newer TwinGraph "
                                   f"(result schema {version})")
            enable_wal(conn, self._timeout)
            if version != SCHEMA_VERSION:
                with self._write("open", str(self.db_path)) as conn:
                    _create_or_upgrade(conn)
        # Memo lookups that must miss skip the query (stores/results/_keyfilter.py).
        self._keys: KeyIndex | NoIndex = index_for(self.db_path, self._timeout) if key_index \
            else NoIndex()
        _OPEN.add(self)

    def writer_busy(self) -> bool:
        return self._write_lock.locked()

    def _after_fork(self) -> None:
        """In a child forked from this process: the parent's locks (one of its threads may
        have held one: every write here waited for ever) and connections (not to be used
        across a fork) are not this process's. New ones; the key index is off here (its
        lookups query). Forked while another thread was writing, the child also inherited
        SQLite's own record of that write's file locks, which nothing here can undo (its
        writes waited for the busy timeout, or for ever): the store refuses to be used
        there, at once and saying why."""
        self._forked_mid_write = self._write_lock.locked()
        self._write_lock = threading.Lock()
        self._conns_lock = threading.Lock()
        self._conns = set()
        self._local = threading.local()
        self._keys = NoIndex()

    # ---- connections and errors ----
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=self._timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        # After a checkpoint, shrink the -wal file back (a 200 MB put would otherwise leave a
        # 200 MB WAL file behind for good).
        conn.execute("PRAGMA journal_size_limit=67108864")
        # Checkpoint every ~40 MB of WAL, not SQLite's 4 MB: content-addressed keys land at
        # random places in the index, so a batch dirties a page per row; fewer checkpoints
        # write each page once for many batches (bench/large_dag.py: 200k-node DAGs).
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        if self._cache_kib is not None:      # page cache per connection, in KiB (negative)
            conn.execute(f"PRAGMA cache_size=-{int(self._cache_kib)}")
        return conn

    def _conn(self) -> sqlite3.Connection:
        try:
            return self._local.conn  # type: ignore[no-any-return]
        except AttributeError:
            pass
        with self._conns_lock:
            if self._closed:
                raise StorageError(f"result store {self.db_path} is closed")
            if self._forked_mid_write:
                raise StorageError(
                    f"result store {self.db_path} cannot be used in this process: it was "
                    f"forked while another thread of its parent wrote to the store, and "
                    f"SQLite's locks of that write came along; start processes with the "
                    f"'spawn' or 'forkserver' method, or fork when no thread writes")
            conn = self._local.conn = self._connect()
            self._conns.add(conn)
            self._local.owner = _Owner(conn, self._conns)
        return conn

    def _error(self, op: str, key: str, exc: BaseException) -> StorageError:
        if key == str(self.db_path):             # the store itself (open), not a value in it
            hint = " (a home on a read-only disk can be inspected with `runs list`, `runs " \
                   "show` and `runs logs`; running needs a writable one)" \
                if "readonly" in str(exc) else ""
            return StorageError(f"SQLite {op} of {self.db_path} failed: {exc}{hint}")
        return StorageError(f"SQLite {op} of {key!r} in {self.db_path} failed: {exc}")

    @contextmanager
    def _translate(self, op: str, key: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._error(op, key, exc) from exc
        except OSError as exc:
            raise StorageError(f"{op} of {key!r} failed: {exc}") from exc

    @contextmanager
    def _write(self, op: str, key: str) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction under the writer lock; rolled back on any error."""
        with self._translate(op, key), self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                if self._identity is not None and _identity(self._abs_path) != self._identity:
                    # Removed or replaced since it was opened: this store's connections write
                    # into the old file, unreachable at the path, and every result written so
                    # was lost while its run said SUCCESS.
                    raise StorageError(f"result store {self.db_path} was removed or replaced "
                                       f"while open; open it again")
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # ---- writes ----
    def put_many(self, items: Sequence[Item]) -> None:
        self.put_many_rows(items)

    def put_many_rows(self, items: Sequence[Item]) -> tuple[int, int] | None:
        """``put_many``, returning the highest rowid before and after its transaction (for
        ``note_written`` in another process on the same file)."""
        preps = prepare_all(items)  # all validated before anything is written
        if not preps:
            return None
        cctx = self.policy.compressor() if any(self.policy.wants(p.size) for p in preps) else None
        latest = {p.key: p for p in preps}        # a key given twice keeps its last value
        rows, chunked = [], []
        for key, p in latest.items():
            if p.size > self.chunk_threshold:
                chunked.append(p)
                continue
            blob, digest, comp = pack_small(p, cctx, self.policy)
            rows.append((k64(key), key, p.type_name, digest, p.size, comp, p.created_at,
                         p.dag_id, p.meta_json, 0, blob))
        return self._put_rows(rows, chunked, list(latest), cctx)

    def put_wire_rows(self, items: Sequence[tuple[str, Any, tuple[Any, ...]]]
                      ) -> tuple[int, int] | None:
        """``put_many_rows`` of results given as ``core.wire`` rows, ``(key, bytes,
        StorageMetadata field values)``: the writer process's direct path, without a
        ``StorageMetadata`` and a ``Prepared`` each. The same checks with the same errors
        (``prepare_wire``), each value hashed and checked against the ``content_hash`` it
        came with, the same rows. A batch that is not all such rows of values stored in their
        row (data that is not ``bytes``, a value over ``chunk_threshold``) is written by
        ``put_many_rows``, as ``core.wire.unpack`` would have handed it."""
        prepared = prepare_wire(items, utc_now())  # all validated before anything is written
        if prepared is None or prepared[1] > self.chunk_threshold:
            return self.put_many_rows([(k, (d,), StorageMetadata(*m)) for k, d, m in items])
        latest, largest = prepared
        if not latest:
            return None
        policy = self.policy
        cctx = policy.compressor() if policy.wants(largest) else None     # wants: a size and up
        sha256, sign = hashlib.sha256, _SIGN
        rows = []
        for key, (data, type_name, announced, size, created_at, meta_json, dag_id, raw) \
                in latest.items():
            digest = sha256(data).hexdigest()       # pack_small's check, on the bytes as sent
            if announced and announced != digest:
                hash_mismatch(key, digest, announced)
            comp = None
            if cctx is not None and policy.wants(size):
                packed = cctx.compress(data)
                if worth_it(size, len(packed)):
                    data, comp = packed, "zstd"
            h = ((crc32(raw) << 32) | adler32(raw)) - sign       # k64(key), inline
            rows.append((h, key, type_name, digest, size, comp, created_at, dag_id, meta_json,
                         0, data))
        return self._put_rows(rows, [], list(latest), cctx)

    def _put_rows(self, rows: list[tuple[Any, ...]], chunked: list[Prepared], keys: list[str],
                  cctx: Any) -> tuple[int, int]:
        """Write a batch's ``rows`` (values kept in their row, ``_INSERT``'s values) and
        ``chunked`` values of ``keys`` (each once) in one transaction."""
        # In k64 order: consecutive inserts then share index pages (random keys otherwise
        # touch a different page each).
        rows.sort()
        self._keys.add_many(keys)             # before the commit: never a miss here
        with self._write("put", keys[0]) as conn:
            before = conn.execute(_TOP).fetchone()[0] or 0
            ids = _ids(conn, [(r[0], r[1]) for r in rows] + [(k64(p.key), p.key) for p in chunked])
            if ids:        # rows of keys stored already are updated in place
                conn.executemany(_UPDATE, [r[2:] + (ids[r[1]],) for r in rows if r[1] in ids])
                rows = [r for r in rows if r[1] not in ids]
            if rows:
                insert_rows(conn.execute, conn.executemany, _INSERT, _insert_many(conn), rows)
            for p in chunked:
                self._put_chunked(conn, p, cctx, ids.get(p.key))
            after = conn.execute(_TOP).fetchone()[0] or 0
        self._keys.wrote(before, after)
        return before, after

    # -- writes made by another process for this one (engine.writer) -----------------------
    def reopen_recipe(self) -> tuple[str, dict[str, Any]]:
        """How another process opens this store again (``stores.writer_child``)."""
        return "sqlite", {"db_path": str(self._abs_path), "chunk_threshold": self.chunk_threshold,
                "chunk_size": self.chunk_size, "compression": self.policy.kind,
                "compression_level": self.policy.level,
                "compression_min_size": self.policy.min_size, "busy_timeout": self._timeout,
                "cache_size": None if self._cache_kib is None else self._cache_kib * 1024}

    def note_keys(self, keys: Iterable[str]) -> None:
        """Another process is about to commit results under ``keys``: lookups here must not
        rule them out (called before it writes, as ``put_many`` does for its own)."""
        self._keys.note_elsewhere(keys)

    def note_written(self, rows: tuple[int, int]) -> None:
        """That process's transaction took the highest rowid from ``rows[0]`` to ``rows[1]``
        (``put_many_rows``): its keys are noted already, the index need not read them back."""
        self._keys.wrote(*rows)

    def _put_chunked(self, conn: sqlite3.Connection, p: Prepared, cctx: Any,
                     row_id: int | None) -> None:
        n = -(-p.size // self.chunk_size)
        # The row goes first: an update's trigger drops the key's old chunks before the new
        # ones land.
        values = (p.type_name, p.content_hash, p.size, None, p.created_at, p.dag_id,
                  p.meta_json, n, None)
        if row_id is None:
            row_id = conn.execute(_INSERT, (k64(p.key), p.key) + values).lastrowid
        else:
            conn.execute(_UPDATE, values + (row_id,))
        h = hashlib.sha256()
        comp: str | None = None
        for i, piece in enumerate(slices(p.views, self.chunk_size)):
            h.update(piece)
            stored: Buffer = piece
            if i == 0 and cctx is not None and self.policy.wants(p.size):
                packed = cctx.compress(piece)
                if worth_it(len(piece), len(packed)):
                    comp, stored = "zstd", packed
            elif comp is not None:
                stored = cctx.compress(piece)
            conn.execute("INSERT INTO node_data_chunks (node_id, chunk_id, raw_size, data) "
                         "VALUES (?, ?, ?, ?)", (p.key, i, len(piece), stored))
        digest = check_hash(p, h.hexdigest())
        conn.execute("UPDATE node_results SET content_hash = ?, compression = ? WHERE id = ?",
                     (digest, comp, row_id))

    def delete(self, key: str) -> bool:
        validate_key(key)
        with self._write("delete", key) as conn:
            return conn.execute("DELETE" + _WHERE, (k64(key), key)).rowcount > 0

    def delete_many(self, keys: Sequence[str]) -> list[str]:
        """Delete ``keys`` in one transaction; the ones that existed. Asks the table, never the
        key index: the index may not know yet of a row another process committed (decision
        0010), and a row left behind would be read instead of its key's newer version (the
        hybrid store removes a key's old copy with this when the key moves to its files)."""
        for key in keys:
            validate_key(key)
        if not keys:
            return []
        with self._write("delete", keys[0]) as conn:
            ids = _ids(conn, [(k64(k), k) for k in keys])
            if ids:
                conn.executemany("DELETE FROM node_results WHERE id = ?",
                                 [(i,) for i in ids.values()])
        return sorted(ids)

    def patch_metadata(self, key: str, metadata: dict[str, Any]) -> bool:
        validate_key(key)
        with self._write("update_metadata", key) as conn:
            row = conn.execute("SELECT id, metadata" + _WHERE, (k64(key), key)).fetchone()
            if row is None:
                return False
            text, dag_id = merge_meta(row[1], metadata, key)
            conn.execute("UPDATE node_results SET metadata = ?, dag_id = ? WHERE id = ?",
                         (text, dag_id, row[0]))
            return True

    # ---- reads ----
    def get(self, key: str) -> Buffer | None:
        validate_key(key)
        try:
            found = self._load(key, _READ)
        except sqlite3.Error as exc:
            raise self._error("get", key, exc) from exc
        return None if found is None else found[1]

    def _load(self, key: str, sql: str) -> tuple[tuple[Any, ...], Buffer] | None:
        """The row ``sql`` selects for ``key`` (its last five columns: content_hash, data_size,
        compression, n_chunks, data) and the verified value, both of one version."""
        conn = self._conn()
        where = (k64(key), key)
        row = conn.execute(sql, where).fetchone()
        if row is None:
            return None
        if row[-2] == 0:
            return row, self._assemble(conn, key, row[-5:])
        conn.execute("BEGIN")                 # snapshot: row and chunks of one version
        try:
            row = conn.execute(sql, where).fetchone()
            return None if row is None else (row, self._assemble(conn, key, row[-5:]))
        finally:
            conn.execute("COMMIT")

    def _assemble(self, conn: sqlite3.Connection, key: str, row: tuple[Any, ...]) -> Buffer:
        digest, size, comp, n_chunks, data = row
        _checked(key, digest, size, comp, n_chunks)
        if n_chunks == 0:
            return verify(key, digest, _inline(key, digest, size, comp, data), size)
        # The chunks must add up to data_size before that many bytes are allocated: a damaged
        # size (a terabyte) would otherwise be a MemoryError on every read, not a damaged entry.
        (stored,) = conn.execute(_SUM, (key,)).fetchone()
        if stored != size:
            raise IntegrityError(key, digest, f"<chunks of {stored} bytes, not {size}>")
        out = bytearray(size)                      # filled in place: peak memory = one value
        pos = 0
        h = hashlib.sha256()
        for piece in self._chunk_pieces(conn, key, row):
            out[pos:pos + len(piece)] = piece
            h.update(piece)
            pos += len(piece)
        if h.hexdigest() != digest:
            raise IntegrityError(key, digest, h.hexdigest())
        return memoryview(out).toreadonly()

    def _chunk_pieces(self, conn: sqlite3.Connection, key: str,
                      row: tuple[Any, ...]) -> Iterator[bytes]:
        digest, size, comp, n_chunks, _ = row
        expected, total = 0, 0
        for chunk_id, raw_size, data in conn.execute(_CHUNKS, (key,)):
            if chunk_id != expected or type(raw_size) is not int or raw_size < 0 \
                    or total + raw_size > size:
                break
            data = _blob(key, digest, f"chunk {chunk_id}", data)
            piece = decompress_frame(data, raw_size, key, digest) if comp else data
            if len(piece) != raw_size:
                raise IntegrityError(key, digest, f"<chunk {chunk_id}: {len(piece)} bytes, "
                                     f"expected {raw_size}>")
            expected += 1
            total += raw_size
            yield piece
        if expected != n_chunks or total != size:
            raise IntegrityError(key, digest, f"<{n_chunks - expected} of {n_chunks} chunks "
                                 "missing or inconsistent>")

    def iter_chunks(self, key: str, chunk_size: int = MiB) -> Iterator[bytes]:
        validate_key(key)
        return self._iter_chunks(key, chunk_size)

    def _iter_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        with self._translate("stream", key):
            conn = self._connect()                 # own connection: held across yields
            try:
                conn.execute("BEGIN")
                row = conn.execute(_READ, (k64(key), key)).fetchone()
                if row is None:
                    return
                digest, size, comp, n_chunks, data = row
                _checked(key, digest, size, comp, n_chunks)
                if n_chunks == 0:
                    pieces: Iterator[Buffer] = iter((_inline(key, digest, size, comp, data),))
                else:
                    pieces = self._chunk_pieces(conn, key, row)
                yield from verified_stream(key, digest, pieces, chunk_size, size)
            finally:
                conn.close()

    def read(self, key: str) -> tuple[StorageMetadata, Buffer] | None:
        # One query for metadata and a small value: loading a value the engine dropped from
        # memory is on its scheduling thread, and each query there waits to re-take the GIL.
        validate_key(key)
        try:
            found = self._load(key, _READ_ALL)
        except sqlite3.Error as exc:
            raise self._error("get", key, exc) from exc
        if found is None:
            return None
        row, data = found
        return StorageMetadata(node_id=key, data_type=data_type_of(key, row[3], row[0]),
                               content_hash=row[3],
                               size=row[4], compression=row[5], created_at=row[1],
                               metadata=meta_from_json(row[2], key, row[3])), data

    def head(self, key: str) -> StorageMetadata | None:
        validate_key(key)
        try:
            row = self._conn().execute(_HEAD, (k64(key), key)).fetchone()
        except sqlite3.Error as exc:
            raise self._error("head", key, exc) from exc
        if row is None:
            return None
        _checked(key, row[1], row[2], row[3])
        return StorageMetadata(node_id=key, data_type=data_type_of(key, row[1], row[0]),
                               content_hash=row[1],
                               size=row[2], compression=row[3], created_at=row[4],
                               metadata=meta_from_json(row[5], key, row[1]))

    def content_hashes(self, keys: Sequence[str]) -> dict[str, str]:
        if len(keys) == 1 and type(keys[0]) is str and not self._closed \
                and self._keys.rules_out(keys[0]):
            return {}                  # the key index rules it out (``_lookup`` would too)
        conn = self._conn()
        # Keys are bound as parameters, never spliced into SQL: a string that ``put`` would
        # refuse as a key is simply not found. Checking each one's characters cost ~0.3 µs a
        # key on the scheduler's hot path; only a key that is not a string is an error here.
        if (len(keys) != 1 or type(keys[0]) is not str) and \
                not _ONLY_STR.issuperset(map(type, keys)):
            for k in keys:
                validate_key(k)            # raises StorageError
        try:
            return self._lookup(keys, conn)
        except UnicodeEncodeError:
            # A lone surrogate cannot be encoded (nor stored): not found either. Whether the
            # key index had ruled it out before it was encoded must not change the answer.
            return self._lookup([k for k in keys if _encodes(k)], conn)

    def _lookup(self, keys: Sequence[str], conn: sqlite3.Connection) -> dict[str, str]:
        out: dict[str, str] = {}
        asked = len(keys)
        if asked <= _FEW:
            keys = self._keys.candidates(keys, conn)
            if not keys:             # all ruled out by the key index: a cold graph's lookups
                if asked:
                    self._keys.missed()
                return out
        if len(keys) == 1:           # the common case in deep graphs: one prepared statement
            try:
                row = conn.execute("SELECT " + _ID + _WHERE, (k64(keys[0]), keys[0])).fetchone()
            except sqlite3.Error as exc:
                raise self._error("head", keys[0], exc) from exc
            if row is not None:
                out[keys[0]] = row[0]
                if row[0][:6] == "large:":
                    self._large_ids(out, conn)
        elif keys:
            hs = [k64(k) for k in keys]
            try:
                for i in range(0, len(hs), _PER_QUERY):
                    part = hs[i:i + _PER_QUERY]
                    out.update(conn.execute(f"SELECT node_id, {_ID} FROM node_results WHERE "
                                            f"k64 IN ({','.join('?' * len(part))})", part))
            except sqlite3.Error as exc:
                raise self._error("head", keys[0], exc) from exc
            for other in out.keys() - set(keys):       # keys that share a k64 with one asked
                del out[other]
            if any(h[:6] == "large:" for h in out.values()):
                self._large_ids(out, conn)
        if len(out) < asked:
            self._keys.missed()      # a run that misses builds the index; one of hits never
        return out

    def _large_ids(self, out: dict[str, str], conn: sqlite3.Connection) -> None:
        """Turn ``large:`` answers of ``_lookup`` into ``value_id``s: by the encoding in each
        one's metadata (damaged metadata: a miss, as ``head`` would raise)."""
        for key in [k for k, h in out.items() if h[:6] == "large:"]:
            try:
                row = conn.execute("SELECT metadata" + _WHERE, (k64(key), key)).fetchone()
                md = None if row is None else meta_from_json(row[0], key)
            except sqlite3.Error as exc:
                raise self._error("head", key, exc) from exc
            except IntegrityError:
                md = row = None
            if row is None:
                del out[key]
            else:
                out[key] = value_id((md or {}).get("encoding"), out[key][6:])

    def has(self, key: str) -> bool:
        validate_key(key)
        try:
            return self._conn().execute("SELECT 1" + _WHERE, (k64(key), key)).fetchone() \
                is not None
        except sqlite3.Error as exc:
            raise self._error("exists", key, exc) from exc

    def list_keys(self, dag_id: str | None = None) -> list[str]:
        dag_id = dag_text(dag_id)
        with self._translate("list", dag_id or "*"):
            if dag_id is None:
                cur = self._conn().execute("SELECT node_id FROM node_results ORDER BY node_id")
            else:
                cur = self._conn().execute("SELECT node_id FROM node_results WHERE dag_id = ? "
                                           "ORDER BY node_id", (dag_id,))
            return [r[0] for r in cur]

    def close(self) -> None:
        with self._conns_lock:
            if not self._closed:
                release(self._keys)
            self._closed = True
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SQLiteStorage({str(self.db_path)!r})"


_OPEN: weakref.WeakSet[SQLiteStorage] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_OPEN):
        store._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
