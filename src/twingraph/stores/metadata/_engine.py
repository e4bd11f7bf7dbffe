"""SQLAlchemy engines tuned for the metadata store.

SQLite: WAL (readers never block the writer), ``synchronous=NORMAL`` (a crash of the process
loses nothing; a power cut may lose the last transactions, never corrupt), a busy timeout,
foreign keys on. The sqlite3 driver's own transaction handling is switched off and we emit BEGIN
ourselves: plain ``BEGIN`` for reads (a consistent snapshot across the SELECTs of one read) and
``BEGIN IMMEDIATE`` for writes. A write reads fences before it updates, and a deferred
transaction that upgrades from read to write fails at once with SQLITE_BUSY when another
connection committed in between; taking the write lock first lets ``busy_timeout`` queue
writers instead.

PostgreSQL: psycopg 3 with ``pool_pre_ping`` so a restarted server costs one reconnect, not an
error.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote, urlparse
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, Select, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool, StaticPool

from twingraph.errors import ConfigurationError
from twingraph.stores.metadata.url import is_memory_sqlite, is_sqlite_uri, normalize_url
from twingraph.stores.sqlite_wal import enable_wal

if TYPE_CHECKING:
    from sqlalchemy import Table
    from sqlalchemy.dialects import postgresql, sqlite

#: Execution option that marks a connection as a writer (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION = "twingraph_write"
BUSY_TIMEOUT_S = 30.0
#: PostgreSQL: how long a statement waits for a row lock before it fails (SQLite's busy
#: timeout), and how long a session may sit idle inside a transaction before the server ends
#: it. A driver stopped mid-write (SIGSTOP, a lost host) held the run's row, and a resume or
#: `runs cancel` waited on it without end; now the server ends the stopped session (its
#: locks go with it) well before the waiting statement gives up. No transaction of ours
#: idles between statements for more than milliseconds.
PG_LOCK_TIMEOUT_MS = 30_000
PG_IDLE_IN_TRANSACTION_MS = 15_000


def _json_dumps(value: object) -> str:
    # NaN/Infinity are not JSON: PostgreSQL would refuse them, so every backend refuses them.
    return json.dumps(value, allow_nan=False)


def dialect_insert(dialect_name: str) -> Callable[[Table], postgresql.Insert | sqlite.Insert]:
    """The dialect's own ``insert`` (it has ON CONFLICT), imported when first asked for: the
    PostgreSQL dialect costs an embedded (SQLite) process ~2 MB of RSS and ~25 ms to load."""
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert
    return sqlite_insert


def make_engine(url: str | URL, *, read_only: bool = False) -> Engine:
    """An engine for ``url`` (normalised by ``normalize_url``); SQLite files get their directory.

    ``read_only``: connections that cannot write (SQLite: the file opened ``mode=ro``, nothing
    created, WAL left as it is; PostgreSQL: read-only transactions), so a home on a read-only
    disk, or another user's, can be inspected."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, read_only)
    engine = create_engine(parsed, pool_pre_ping=True, json_serializer=_json_dumps)
    # SET once connected, not sent as startup ``options`` (PgBouncer refuses those: no
    # connection at all); the URL's own ``options`` (a search_path, say) are passed as they
    # are, and a timeout they set is left to them.
    given = parsed.query.get("options", "")
    given = " ".join(given) if isinstance(given, tuple) else given
    settings = [(name, str(ms)) for name, ms in (
        ("lock_timeout", PG_LOCK_TIMEOUT_MS),
        ("idle_in_transaction_session_timeout", PG_IDLE_IN_TRANSACTION_MS)) if name not in given]
    if read_only:
        settings.append(("default_transaction_read_only", "on"))
    if settings:
        @event.listens_for(engine, "connect")
        def _session(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cur:
                for name, value in settings:
                    cur.execute(f"SET {name} = {value}")
            dbapi_connection.commit()
    return engine


def sqlite_file(url: str | URL) -> Path | None:
    """The file of a SQLite URL (None: another backend, or a database in memory)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite" or is_memory_sqlite(parsed):
        return None
    database = parsed.database or ""
    if is_sqlite_uri(parsed):
        database = unquote(urlparse(database).path)     # a URI (``file://host/p``): its path
    return Path(database).expanduser().absolute()


def _sqlite_engine(url: URL, read_only: bool = False) -> Engine:
    kwargs: dict[str, Any] = {
        "json_serializer": _json_dumps,
        "connect_args": {"check_same_thread": False, "timeout": BUSY_TIMEOUT_S},
    }
    memory = is_memory_sqlite(url)
    if read_only and not memory:
        path = sqlite_file(url)
        assert path is not None
        kwargs["creator"] = lambda: _read_only_connection(path)
        # a connection each checkout: one opened immutable (a quiet home it could not share)
        # is a snapshot, and a store kept open showed its old data for good
        kwargs["poolclass"] = NullPool
    elif memory:
        # One private database per connection: share a single connection (the store locks it).
        kwargs["poolclass"] = StaticPool
    else:
        parent = (sqlite_file(url) or Path(url.database or "")).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:      # a traceback and exit 1 from every command before
            raise ConfigurationError(f"cannot create the directory of the metadata database "
                                     f"{parent}: {exc.strerror or exc}") from exc
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None          # we emit BEGIN ourselves (see module doc)
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            if not memory and not read_only:
                enable_wal(cur, BUSY_TIMEOUT_S)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        writer = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def _read_only_connection(path: Path) -> sqlite3.Connection:
    """``path`` opened by SQLite's read-only mode (the path as a URI: ``?``, ``#``, ``%`` in a
    name quoted). A WAL database needs its ``-shm`` file, which a read-only directory cannot
    get: there, with no write-ahead log left to read, the file is opened as immutable (what
    it is on such a disk); with one, the error says why."""
    uri = f"file:{quote(str(path))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
    try:
        conn.execute("PRAGMA schema_version").fetchone()       # opens the file
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        # "unable to open" (no -shm, none can be made) or "attempt to write a readonly
        # database" (another user's -shm, which this one may not write)
        cannot_share = "unable to open" in str(exc) or "readonly database" in str(exc)
        if not cannot_share or os.access(path.parent, os.W_OK) and not _read_only_disk(path):
            raise
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise sqlite3.OperationalError(
                f"{path} has changes in its write-ahead log ({wal.name}) that this process "
                f"cannot read: its directory, or the -shm file beside it, cannot be written "
                f"from here (a read-only disk, another user's home); read it where it can "
                f"be, or once its writer has ended") from exc
    return sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False)


def _read_only_disk(path: Path) -> bool:
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


Q = TypeVar("Q", bound=Select[Any])


def paged(query: Q, limit: int | None, offset: int) -> Q:
    """``query`` with ``LIMIT``/``OFFSET`` only where they say something. SQLAlchemy renders
    ``offset(0)`` with no limit as ``LIMIT -1 OFFSET 0`` on SQLite, and SQLite's sort with a
    limit is far slower than without: ``get_tasks`` of a 100,000-task run took 28 s of a
    ``twingraph run``'s summary (0.4 s without)."""
    if limit is not None:
        query = query.limit(limit)
    if offset:
        query = query.offset(offset)
    return query
