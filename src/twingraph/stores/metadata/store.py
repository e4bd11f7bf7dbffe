"""``SQLMetadataStore``: the ``MetadataStore`` port on SQLAlchemy Core (SQLite or PostgreSQL).

Transactions: every ``write`` is one transaction (SQLite ``BEGIN IMMEDIATE``), applied by
``_write.BatchWriter``; on any error it is rolled back and nothing of the batch remains.
Reads open a short transaction each, so a reader sees a batch entirely or not at all.

Errors: SQLAlchemy never leaks. A record that refers to a run or task that does not exist raises
``NotFoundError``; a value JSON cannot hold, an unknown record type or a bad filter raises
``ValidationError``; anything the database refuses or cannot do (unreachable, locked too long,
constraint) raises ``StorageError``. All three are ``TwinGraphError``.

Threads: one store may be used from many threads (the engine's writer thread, the CLI, server
requests). SQLite writers of one process queue on a lock instead of on SQLite's busy handler;
writers of other processes wait on ``busy_timeout``. An in-memory SQLite URL gets one shared
connection, and then every call takes the lock.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, NoReturn, TypeVar, cast

from sqlalchemy import Connection, Row, func, select, update
from sqlalchemy import exc as sa_exc

from twingraph.core.records import (
    AttemptRecord,
    EdgeRecord,
    LogRecord,
    Record,
    RunRecord,
    TaskRecord,
)
from twingraph.core.logtext import unstorable
from twingraph.core.states import RunState, TaskState
from twingraph.errors import (ConfigurationError, ConflictError, NotFoundError, StorageError,
                              StoreUnavailable, TwinGraphError, ValidationError)
from twingraph.stores.metadata import _semantics as sem
from twingraph.stores.metadata import migrate
from twingraph.stores.metadata._engine import (
    WRITE_OPTION,
    dialect_insert,
    make_engine,
    paged,
    sqlite_file,
)
from twingraph.stores.metadata._write import BatchWriter
from twingraph.stores.metadata.catalog import (
    PipelineRecord,
    PipelineVersionRecord,
    ProjectRecord,
    new_id,
)
from twingraph.stores.metadata.schema import (
    lineage_edges,
    logs,
    pipeline_versions,
    pipelines,
    projects,
    runs,
    task_attempts,
    tasks,
)
from twingraph.stores.metadata.url import is_memory_sqlite, normalize_url

_F = TypeVar("_F", bound=Callable[..., Any])
_RUN_FIELDS = tuple(RunRecord.__dataclass_fields__)
_TASK_FIELDS = tuple(TaskRecord.__dataclass_fields__)
_ATTEMPT_FIELDS = tuple(AttemptRecord.__dataclass_fields__)


_CHECKED = ("state", "level")


def _none() -> None:
    return None


def _reads(empty: Callable[[], Any]) -> Callable[[_F], _F]:
    """A read given text no store can hold (a NUL, a lone surrogate: ``unstorable``) matches
    nothing and answers ``empty()``, on every backend: it was a storage error (SQLite cannot
    bind a lone surrogate, PostgreSQL a NUL), and a terminal's non-UTF-8 run id said that it
    "cannot be stored"."""
    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def read(self: Any, *args: Any, **kwargs: Any) -> Any:
            for name, value in (*enumerate(args), *kwargs.items()):
                # (a state or level is checked against its names, as by every store)
                if type(value) is str and name not in _CHECKED and unstorable(value):
                    return empty()
            return fn(self, *args, **kwargs)
        return cast(_F, read)
    return wrap


def _file_identity(path: Path | None) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; None if there is none."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class SQLMetadataStore:
    """Metadata store on SQLite (default, a file) or PostgreSQL (``postgresql://...``).

    ``create=True`` migrates the database to head first (idempotent); otherwise a database that
    is not at this TwinGraph's schema revision raises ``ConfigurationError`` naming the fix.
    ``clock`` stamps catalog rows (projects, pipelines); run and task times come from records.
    ``read_only=True`` opens connections that cannot write (``make_engine``): a write then
    fails with ``StorageError``; a SQLite file that does not exist is a ``NotFoundError``.
    """

    def __init__(self, url: str, *, create: bool = False, read_only: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        if create and read_only:
            raise ValidationError("a metadata store opened read-only cannot create its schema")
        parsed = normalize_url(url)
        if read_only:
            path = sqlite_file(parsed)
            if path is not None and not path.is_file():
                raise NotFoundError(f"there is no metadata database at {path}")
        self.url = parsed.render_as_string(hide_password=True)
        # Another process may open the same database (engine.writer); not an in-memory one.
        self._reopen: str | None = None
        if not is_memory_sqlite(parsed):
            again = parsed
            if parsed.get_backend_name() == "sqlite" and parsed.database \
                    and not parsed.database.startswith("file:"):   # relative to this cwd
                again = parsed.set(database=os.path.abspath(parsed.database))
            self._reopen = again.render_as_string(hide_password=False)
        self._clock = clock
        #: The database's file (None: PostgreSQL, or in memory): its runs' drivers are all on
        #: this machine, and hold a lock file beside it (``engine.driverlock``).
        self.local_file = sqlite_file(parsed)
        self._engine = make_engine(parsed, read_only=read_only)
        self._sqlite = parsed.get_backend_name() == "sqlite"
        self._lock = threading.RLock()
        self._read_lock = self._lock if is_memory_sqlite(parsed) else nullcontext()
        self._write_lock = self._lock if self._sqlite else nullcontext()
        try:
            found, wanted = migrate.current(self._engine), migrate.head()
            if create and found != wanted:     # (Alembic is imported only to migrate)
                with self._lock:
                    migrate.upgrade(self._engine)
                found = migrate.current(self._engine)
        except BaseException:
            self._engine.dispose()
            raise
        if found is None and read_only and not _has_tables(self._engine):
            # An empty database: one another process is creating (its file made, its tables
            # not yet): it holds no runs, and asked to be upgraded (`runs list` polled while
            # a first run started exited 2 once in ~80 tries).
            self._engine.dispose()
            raise NotFoundError(f"the metadata database {self.url} is empty")
        # The file it opened (device, inode): one removed or replaced since is refused on the
        # next write (as the result store refuses it), not written into unreachable, every
        # record of the runs going on lost while they said SUCCESS.
        self._identity = _file_identity(self.local_file) \
            if self.local_file is not None and not read_only else None
        if found != wanted:
            self._engine.dispose()
            if found is not None and not migrate.ours(found):
                raise ConfigurationError(migrate.unknown_revision(self.url, found))
            raise ConfigurationError(
                f"metadata database {self.url} is at schema revision {found or 'none'}, this "
                f"TwinGraph needs {wanted}: run `twingraph db upgrade` (or pass create=True); a "
                f"revision newer than {wanted} means a newer TwinGraph migrated this database")

    def check_file(self) -> None:
        """Raise ``StorageError`` if the database file was removed or replaced since it was
        opened (every write is refused then; ``/health`` says so)."""
        if self._identity is not None and self._identity != _file_identity(self.local_file):
            raise StorageError(f"metadata database {self.url} was removed or replaced while "
                               f"open: nothing more is written to it (open it again)")

    def reopen_recipe(self) -> tuple[str, str] | None:
        """How another process opens this database again (``stores.writer_child``); None for
        an in-memory one."""
        return None if self._reopen is None else ("sql", self._reopen)

    def close(self) -> None:
        """Close every pooled connection. The store must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> SQLMetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLMetadataStore({self.url!r})"

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self._write_lock, _translated(), self._engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                self.check_file()
                yield conn

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._read_lock, _translated(), self._engine.connect() as conn, conn.begin():
            yield conn

    # -- the MetadataStore port ------------------------------------------------------------

    def write(self, batch: Sequence[Record]) -> list[tuple[str, str]]:
        """Apply ``batch`` in order in one transaction; return the keys of stale task updates.
        A transaction PostgreSQL chose as a deadlock victim is applied again (it rolled back
        whole, so nothing is written twice)."""
        if not batch:
            return []

        def once() -> list[tuple[str, str]]:
            with self._writing() as conn:
                return BatchWriter(conn, clock=self._clock).apply(batch)
        return retry_conflicts(once)

    @_reads(_none)
    def get_run(self, run_id: str) -> RunRecord | None:
        with self._reading() as conn:
            row = conn.execute(_run_select().where(runs.c.run_id == run_id)).first()
        return None if row is None else _run(row)

    def claim_driver(self, run_id: str, *, heartbeat: Any = ..., now: float | None = None,
                     running: bool = False, only_running: bool = False) -> int:
        # One UPDATE takes the row's write lock (PostgreSQL) or the database's (SQLite): of
        # two claimants, the second reads the first's number and goes one above it (or, with
        # ``heartbeat``, finds it moved and matches no row).
        query = update(runs).where(runs.c.run_id == run_id)
        if heartbeat is not ...:
            beat = runs.c.heartbeat_at
            query = query.where(beat.is_(None) if heartbeat is None else beat == heartbeat)
        if only_running:
            query = query.where(runs.c.state == RunState.RUNNING.value)
        values: dict[str, Any] = {"driver_epoch": runs.c.driver_epoch + 1}
        if now is not None:
            values["heartbeat_at"] = now
        if running:
            values.update(state=RunState.RUNNING.value, ended_at=None, error=None)
        with self._writing() as conn:
            done = conn.execute(query.values(**values))
            if done.rowcount != 1:
                if (heartbeat is not ... or only_running) and conn.execute(select(runs.c.run_id).where(
                        runs.c.run_id == run_id)).first() is not None:
                    raise ConflictError(f"run {run_id!r} was claimed by another driver "
                                        "meanwhile; not driving it twice")
                raise NotFoundError(f"run {run_id!r} not found")
            return int(conn.execute(select(runs.c.driver_epoch)
                                    .where(runs.c.run_id == run_id)).scalar_one())

    @_reads(_none)
    def driver_epoch(self, run_id: str) -> int | None:
        with self._reading() as conn:
            epoch = conn.execute(select(runs.c.driver_epoch)
                                 .where(runs.c.run_id == run_id)).first()
        return None if epoch is None else int(epoch[0] or 0)

    @_reads(list)
    def list_runs(self, *, pipeline: str | None = None, state: str | None = None,
                  limit: int | None = 50, offset: int = 0,
                  project: str | None = None) -> list[RunRecord]:
        """Newest first (``created_at`` then ``run_id`` descending); ``project`` is an extra."""
        sem.check_paging(limit, offset)
        query = _run_select().order_by(runs.c.created_at.desc(), runs.c.run_id.desc())
        if pipeline is not None:
            query = query.where(runs.c.pipeline == pipeline)
        if (wanted := sem.run_state_filter(state)) is not None:
            query = query.where(runs.c.state == wanted)
        if project is not None:
            query = query.where(runs.c.project == project)
        with self._reading() as conn:
            return [_run(row) for row in conn.execute(paged(query, limit, offset))]

    @_reads(list)
    def find_run_ids(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Ids of the runs whose id starts with ``prefix`` (case-sensitive), in code-point order,
        at most ``limit``. Reads only the id column (for resolving an abbreviated run id)."""
        sem.check_prefix(prefix, limit)
        # code-point order on both databases (PostgreSQL's default collation may be a locale's)
        order = runs.c.run_id if self._sqlite else runs.c.run_id.collate("C")
        query = (select(runs.c.run_id)
                 .where(runs.c.run_id.startswith(prefix, autoescape=True),
                        # LIKE ignores ASCII case on SQLite: the exact test keeps it a prefix
                        func.substr(runs.c.run_id, 1, len(prefix)) == prefix)
                 .order_by(order).limit(limit))
        with self._reading() as conn:
            return list(conn.execute(query).scalars())

    @_reads(list)
    def get_tasks(self, run_id: str, *, limit: int | None = None,
                  offset: int = 0) -> list[TaskRecord]:
        """Tasks of a run in call order (``order``, then ``node_id``); paging is an extra."""
        sem.check_paging(limit, offset)
        query = paged(select(*(tasks.c[name] for name in _TASK_FIELDS))
                      .where(tasks.c.run_id == run_id).order_by(tasks.c.order, tasks.c.node_id),
                      limit, offset)
        with self._reading() as conn:
            rows = conn.execute(query).all()
        # Positional construction: no dict per row (a run may have 1,000,000 tasks).
        state_at, task_state, make = _TASK_FIELDS.index("state"), sem.task_state, cast(Any, TaskRecord)
        return [make(*row[:state_at], task_state(row[state_at]), *row[state_at + 1:]) for row in rows]

    @_reads(dict)
    def task_counts(self, run_id: str) -> dict[TaskState, int]:
        """Number of tasks per state (states with none are left out): progress without
        reading a million rows."""
        query = (select(tasks.c.state, func.count()).where(tasks.c.run_id == run_id)
                 .group_by(tasks.c.state))
        with self._reading() as conn:
            return {sem.task_state(state): count for state, count in conn.execute(query)}

    @_reads(list)
    def get_logs(self, run_id: str, *, node_id: str | None = None, level: str | None = None,
                 limit: int | None = 1000, offset: int = 0) -> list[LogRecord]:
        """Oldest first; ``level`` keeps that level and above (debug < info < warning < error)."""
        sem.check_paging(limit, offset)
        query = (select(logs.c.run_id, logs.c.at, logs.c.level, logs.c.message, logs.c.node_id)
                 .where(logs.c.run_id == run_id).order_by(logs.c.at, logs.c.id))
        if node_id is not None:
            query = query.where(logs.c.node_id == node_id)
        if level is not None:
            query = query.where(logs.c.level.in_(sem.levels_at_or_above(level)))
        with self._reading() as conn:
            rows = conn.execute(paged(query, limit, offset)).all()
        return [LogRecord(**row._asdict()) for row in rows]

    @_reads(list)
    def get_edges(self, run_id: str) -> list[EdgeRecord]:
        """Lineage edges of a run in the order they were first written."""
        query = (select(lineage_edges.c.run_id, lineage_edges.c.src, lineage_edges.c.dst,
                        lineage_edges.c.kind, lineage_edges.c.properties)
                 .where(lineage_edges.c.run_id == run_id).order_by(lineage_edges.c.id))
        with self._reading() as conn:
            return [EdgeRecord(**row._asdict()) for row in conn.execute(query)]

    # -- beyond the port: attempts and the catalog -----------------------------------------

    @_reads(list)
    def get_attempts(self, run_id: str, node_id: str | None = None) -> list[AttemptRecord]:
        """Attempts of a run (or of one task), by node then attempt number."""
        query = (select(*(task_attempts.c[name] for name in _ATTEMPT_FIELDS))
                 .where(task_attempts.c.run_id == run_id)
                 .order_by(task_attempts.c.node_id, task_attempts.c.attempt))
        if node_id is not None:
            query = query.where(task_attempts.c.node_id == node_id)
        with self._reading() as conn:
            rows = conn.execute(query).all()
        out = []
        for row in rows:
            fields = row._asdict()
            fields["state"] = TaskState(fields["state"])
            out.append(AttemptRecord(**fields))
        return out

    def ensure_project(self, name: str) -> str:
        """The id of project ``name``, creating it if missing."""
        with self._writing() as conn:
            return self._ensure_project(conn, name)

    @_reads(_none)
    def get_project(self, name: str) -> ProjectRecord | None:
        with self._reading() as conn:
            row = conn.execute(select(projects).where(projects.c.name == name)).first()
        return None if row is None else ProjectRecord(**row._asdict())

    def upsert_pipeline(self, project: str, name: str, definition: dict[str, Any], *,
                        description: str | None = None, schedule: str | None = None,
                        tags: list[Any] | None = None,
                        source_hash: str | None = None) -> tuple[str, int]:
        """Register a pipeline definition; return (pipeline_id, version).

        Creates the project if missing. A new version is recorded only when the definition
        differs from the current version's (or ``source_hash`` is given and differs); otherwise
        the current version is returned. ``description``/``schedule``/``tags`` are not
        versioned: given values replace the stored ones, None leaves them.
        """
        definition = sem.json_copy(definition)
        if not isinstance(definition, dict):
            raise ValidationError("a pipeline definition is a JSON object")
        tags = None if tags is None else sem.json_copy(tags)
        now = self._clock()
        with self._writing() as conn:
            project_id = self._ensure_project(conn, project)
            insert = dialect_insert(conn.dialect.name)
            conn.execute(insert(pipelines).on_conflict_do_nothing(
                index_elements=[pipelines.c.project_id, pipelines.c.name]), {
                "id": new_id("pipe"), "project_id": project_id, "name": name,
                "description": description, "definition": definition, "schedule": schedule,
                "tags": tags or [], "current_version": 0, "created_at": now, "updated_at": now})
            query = select(pipelines.c.id, pipelines.c.current_version).where(
                pipelines.c.project_id == project_id, pipelines.c.name == name)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            pipeline_id, version = conn.execute(query).one()
            changes: dict[str, Any] = {
                key: value for key, value in
                (("description", description), ("schedule", schedule), ("tags", tags))
                if value is not None}
            current = None if version == 0 else conn.execute(
                select(pipeline_versions.c.definition, pipeline_versions.c.source_hash).where(
                    pipeline_versions.c.pipeline_id == pipeline_id,
                    pipeline_versions.c.version == version)).one()
            if current is None or current.definition != definition or (
                    source_hash is not None and source_hash != current.source_hash):
                version += 1
                conn.execute(pipeline_versions.insert(), {
                    "pipeline_id": pipeline_id, "version": version, "definition": definition,
                    "source_hash": source_hash, "created_at": now})
                changes.update(definition=definition, current_version=version)
            if changes:
                conn.execute(update(pipelines).where(pipelines.c.id == pipeline_id)
                             .values(updated_at=now, **changes))
            return pipeline_id, version

    @_reads(_none)
    def get_pipeline(self, project: str, name: str) -> PipelineRecord | None:
        query = (select(pipelines, projects.c.name.label("project"))
                 .join(projects, projects.c.id == pipelines.c.project_id)
                 .where(projects.c.name == project, pipelines.c.name == name))
        with self._reading() as conn:
            row = conn.execute(query).first()
        return None if row is None else PipelineRecord(**row._asdict())

    @_reads(list)
    def get_pipeline_versions(self, pipeline_id: str) -> list[PipelineVersionRecord]:
        """Every recorded version of a pipeline, oldest first."""
        query = (select(pipeline_versions).where(pipeline_versions.c.pipeline_id == pipeline_id)
                 .order_by(pipeline_versions.c.version))
        with self._reading() as conn:
            return [PipelineVersionRecord(**row._asdict()) for row in conn.execute(query)]

    def _ensure_project(self, conn: Connection, name: str) -> str:
        BatchWriter(conn, clock=self._clock).ensure_projects([name])
        project_id = conn.execute(select(projects.c.id).where(projects.c.name == name)).scalar()
        assert project_id is not None
        return str(project_id)


T = TypeVar("T")

#: SQLSTATEs of a transaction the database rolled back to break a conflict: deadlock detected,
#: serialization failure. Running the whole transaction again is the documented remedy.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def retry_conflicts(once: Callable[[], T], attempts: int = 5) -> T:
    """Run the transaction ``once`` again when the database aborted it as a deadlock victim."""
    for attempt in range(attempts):
        try:
            return once()
        except StorageError as exc:
            orig = getattr(exc.__cause__, "orig", None)
            if attempt == attempts - 1 or getattr(orig, "sqlstate", None) not in RETRYABLE_SQLSTATES:
                raise
            time.sleep(0.005 * (attempt + 1))
    raise AssertionError("unreachable")


def _run_select() -> Any:
    return select(*(runs.c[name] for name in _RUN_FIELDS))


def _run(row: Row[Any]) -> RunRecord:
    fields = row._asdict()
    fields["state"] = RunState(fields["state"])
    return RunRecord(**fields)


def _has_tables(engine: Any) -> bool:
    from sqlalchemy import inspect as sa_inspect
    with _translated(), engine.connect() as conn:
        return bool(sa_inspect(conn).get_table_names())


@contextmanager
def _translated() -> Iterator[None]:
    """Turn SQLAlchemy exceptions into TwinGraph errors at this edge (see module doc)."""
    try:
        yield
    except TwinGraphError:
        raise
    except UnicodeEncodeError as exc:       # raised by the driver as it binds the text
        raise ValidationError(
            "text that is not valid UTF-8 cannot be stored (a lone surrogate, as a file name "
            f"or terminal input that is not UTF-8 decodes to): {exc}; escape it first "
            "(twingraph.core.logtext.storable)") from exc
    except sa_exc.IntegrityError as exc:
        if _is_foreign_key_violation(exc):
            raise NotFoundError(
                f"a record refers to a run or task that does not exist: {exc.orig}") from exc
        raise StorageError(f"metadata store refused the write: {exc.orig}") from exc
    except sa_exc.DBAPIError as exc:
        if not _unreachable(exc):
            _statement_error(exc)
        raise StoreUnavailable(f"metadata store unreachable: {exc.orig}") from exc
    except sa_exc.StatementError as exc:
        _statement_error(exc)
    except sa_exc.SQLAlchemyError as exc:
        raise StorageError(f"metadata store error: {exc}") from exc


def _unreachable(exc: sa_exc.DBAPIError) -> bool:
    """A PostgreSQL server that cannot be reached (refused, gone, restarting, shutting down),
    as opposed to one that answered with an error. SQLite's errors are never this."""
    if not type(exc.orig).__module__.startswith("psycopg"):
        return False
    if exc.connection_invalidated:
        return True
    state = getattr(exc.orig, "sqlstate", None)
    return (isinstance(exc, sa_exc.OperationalError) and state is None) or \
        (state is not None and (state.startswith("08") or state in ("57P01", "57P02", "57P03")))


def _statement_error(exc: sa_exc.StatementError) -> NoReturn:
    """The TwinGraph error a failed statement is."""
    said = str(exc.orig)
    if "cannot contain NUL" in said or "UTF8\": 0x00" in said:   # PostgreSQL: the client's
        # word, or the server's for a parameter the bulk path sent; not worth a second try
        raise ValidationError(
            f"text holding a NUL character cannot be stored on PostgreSQL: {exc.orig}; "
            f"escape it first (twingraph.core.logtext.storable)") from exc
    if not isinstance(exc, sa_exc.DBAPIError) and isinstance(exc.orig, (TypeError, ValueError)):
        raise ValidationError(f"a value cannot be stored: {exc.orig}") from exc
    raise StorageError(f"metadata store error: {exc.orig or exc}") from exc


def _is_foreign_key_violation(exc: sa_exc.IntegrityError) -> bool:
    orig = exc.orig
    return (getattr(orig, "sqlstate", None) == "23503"              # PostgreSQL
            or "FOREIGN KEY constraint failed" in str(orig))        # SQLite
