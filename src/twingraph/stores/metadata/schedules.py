"""``SQLScheduleStore``: the ``schedules`` table, and the two compare-and-sets firing relies on.

It shares the connection pool, transactions and error translation of a ``SQLMetadataStore``
(SQLite or PostgreSQL). Unknown schedule, project or pipeline ids raise ``NotFoundError``; bad
values ``ValidationError`` (nothing is written); anything the database refuses ``StorageError``.

The claim (``claim``)
    ``UPDATE schedules SET next_run_at = :new WHERE id = :id AND next_run_at = :expected AND
    enabled``: one statement, true iff it changed one row. Two firers that read the same due
    row both try it; the database serialises the two updates on the row (PostgreSQL re-checks
    the WHERE on the row the first one committed; SQLite has one writer at a time), so exactly
    one wins the slot. An edit of the schedule that recomputes ``next_run_at`` (or disables it)
    makes a claim based on the old row fail, so an edit never races a fire.
Starting queued runs (``claim_queued_runs``)
    Every run a schedule creates is created PENDING with ``runs.schedule_id`` set (the
    ``RunLauncher`` contract in ``twingraph.schedules``), and only this method moves such a run
    to RUNNING: in one write transaction it locks the schedule row (PostgreSQL ``SELECT ... FOR
    UPDATE``; SQLite writers are already serial under ``BEGIN IMMEDIATE``), counts the
    schedule's RUNNING runs, and moves the oldest PENDING ones to RUNNING up to
    ``max_concurrency``. The count and the moves are atomic with respect to every other claimer,
    so the number of RUNNING runs of a schedule never exceeds ``max_concurrency``, whatever the
    number of processes. The caller then executes the returned runs.
The fire lock (``firing``)
    'skip' promises no run while the schedule has ``max_concurrency`` active ones, so "count the
    active runs, then create one" must be one step with respect to every other firer. The run
    is created by the ``RunLauncher`` in transactions of its own, so the claim's transaction
    cannot cover it: a firer that claimed the next slot meanwhile counted zero runs and created
    one too. ``firing(schedule_id)`` is a mutual exclusion per schedule, held across the count,
    the launch and ``record_fire``, that leaves the launcher's writes free:
    PostgreSQL: a transaction holding a transaction-level advisory lock named after the
    schedule (``_fire_lock_id``), which only other fire sections wait for. Not a lock on the
    schedule's row: the launcher's run INSERT also checks its pipeline's row, and a transaction
    that holds that row and then needs the schedule's (deleting the pipeline, whose cascade
    deletes the schedule; ``upsert_decorator_schedule``) closed a cycle through this thread
    that PostgreSQL cannot see (decision 0073). ``record_fire`` runs in that transaction and
    updates the row only at the end, after the launch; SQLite: an ``flock`` on
    ``<database>-fire.lock`` between processes (the write transaction cannot be held: the
    launcher's own write would wait for it) and a thread lock per database within this one
    (the only lock for an in-memory database, or where ``flock`` is missing). On SQLite it
    covers every schedule of the database; fires are rare and short.

Interval slots are anchored at the schedule's ``created_at`` (``core.schedule``).
"""

from __future__ import annotations

import builtins
import hashlib
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, func, or_, select, update

from twingraph.core import schedule as sc
from twingraph.core.records import RunUpdate
from twingraph.core.schedule import (
    OverlapPolicy,
    ScheduleKind,
    ScheduleRecord,
    ScheduleSource,
)
from twingraph.core.states import RunState
from twingraph.errors import NotFoundError, ValidationError
from twingraph.stores.metadata import _semantics as sem
from twingraph.stores.metadata.catalog import new_id
from twingraph.stores.metadata.schema import pipelines, projects, runs, schedules
from twingraph.stores.metadata.store import SQLMetadataStore, retry_conflicts
from twingraph.stores.metadata._engine import paged

_FIELDS = tuple(ScheduleRecord.__dataclass_fields__)
#: Fields ``update`` may change; the others are the store's (ids, times, claim and fire columns).
UPDATABLE = frozenset({"kind", "expression", "timezone", "enabled", "max_concurrency",
                       "timeout_seconds", "overlap_policy", "catchup", "params", "description"})
#: Fields a list may be sorted on (``-`` prefix for descending); ties break on ``id``.
SORTABLE = frozenset({"created_at", "updated_at", "next_run_at", "last_run_at", "id",
                      "pipeline_id", "kind"})
_ACTIVE = (RunState.PENDING.value, RunState.RUNNING.value)

try:  # POSIX advisory locks between processes; elsewhere the thread lock only.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


class SQLScheduleStore:
    """Schedules of a ``SQLMetadataStore``; ``clock`` (default: the store's) stamps rows and is
    the "now" from which a new or edited schedule computes its first ``next_run_at``."""

    def __init__(self, store: SQLMetadataStore, *,
                 clock: Callable[[], float] | None = None) -> None:
        self._store = store
        self._clock = clock or store._clock
        self._lock_path: str | None = None      # SQLite fire lock file; "" for a memory database

    # -- CRUD ------------------------------------------------------------------------------

    def create(self, *, project_id: str, pipeline_id: str, kind: ScheduleKind | str,
               expression: str, timezone: str = "UTC", enabled: bool = True,
               max_concurrency: int = 1, timeout_seconds: int | None = None,
               overlap_policy: OverlapPolicy | str = "skip", catchup: bool = False,
               params: Mapping[str, Any] | None = None, description: str | None = None,
               source: ScheduleSource | str = "api") -> ScheduleRecord:
        """Create a schedule; return it with its first ``next_run_at`` (after now; None when
        disabled). ``project_id`` may be a project's id or name, ``pipeline_id`` a pipeline's
        id or its name within that project (the Tauro example names it ``daily_etl``)."""
        row = self._new_row(kind=kind, expression=expression, timezone=timezone, enabled=enabled,
                            max_concurrency=max_concurrency, timeout_seconds=timeout_seconds,
                            overlap_policy=overlap_policy, catchup=catchup, params=params,
                            description=description, source=source)
        with self._store._writing() as conn:
            row["project_id"], row["pipeline_id"] = _resolve(conn, project_id, pipeline_id)
            conn.execute(schedules.insert(), row)
        return _record(row)

    def _new_row(self, *, kind: ScheduleKind | str, expression: str, timezone: str = "UTC",
                 enabled: bool = True, max_concurrency: int = 1,
                 timeout_seconds: int | None = None, overlap_policy: OverlapPolicy | str = "skip",
                 catchup: bool = False, params: Mapping[str, Any] | None = None,
                 description: str | None = None,
                 source: ScheduleSource | str = "api") -> dict[str, Any]:
        """A validated new row without its project_id/pipeline_id (``ValidationError``)."""
        kind = sc.validate(kind, expression, timezone)
        policy = sc.validate_options(
            max_concurrency=max_concurrency, timeout_seconds=timeout_seconds,
            overlap_policy=overlap_policy, catchup=catchup, enabled=enabled,
            params=None if params is None else dict(params), description=description)
        origin = _source(source)
        params_json = sem.json_copy(dict(params or {}))
        now = self._clock()
        return {
            "id": new_id("sched"), "kind": kind.value, "expression": expression.strip(),
            "timezone": timezone.strip(), "enabled": enabled, "max_concurrency": max_concurrency,
            "timeout_seconds": timeout_seconds, "overlap_policy": policy.value,
            "catchup": catchup, "params": params_json, "description": description,
            "last_run_at": None, "last_run_id": None, "source": origin.value,
            "created_at": now, "updated_at": now,
            "next_run_at": (sc.next_fire_after(kind, expression, timezone, now, now)
                            if enabled else None),
        }

    def get(self, schedule_id: str) -> ScheduleRecord:
        with self._store._reading() as conn:
            return _record(_get_row(conn, schedule_id))

    def list(self, *, project_id: str | None = None, pipeline_id: str | None = None,
             enabled: bool | None = None, limit: int | None = 50, offset: int = 0,
             sort: str = "-created_at") -> tuple[builtins.list[ScheduleRecord], int]:
        """One page of schedules and the total that match the filters."""
        sem.check_paging(limit, offset)
        conds = []
        if project_id is not None:
            conds.append(schedules.c.project_id == project_id)
        if pipeline_id is not None:
            conds.append(schedules.c.pipeline_id == pipeline_id)
        if enabled is not None:
            conds.append(schedules.c.enabled == bool(enabled))
        name = sort.lstrip("-+")
        if name not in SORTABLE:
            raise ValidationError(f"cannot sort schedules by {sort!r}; expected one of "
                                  f"{', '.join(sorted(SORTABLE))} (prefix - for descending)")
        column = schedules.c[name]
        order = (column.desc(), schedules.c.id.desc()) if sort.startswith("-") \
            else (column.asc(), schedules.c.id.asc())
        query = paged(select(schedules).where(*conds).order_by(*order), limit, offset)
        with self._store._reading() as conn:
            total = conn.execute(select(func.count()).select_from(schedules).where(*conds)).scalar_one()
            rows = conn.execute(query).all()
        return [_record(row._asdict()) for row in rows], int(total)

    def update(self, schedule_id: str, **changes: Any) -> ScheduleRecord:
        """Change the given fields (``UPDATABLE``); the others stay. ``next_run_at`` is
        recomputed from now when the trigger (kind, expression, timezone) changes or the
        schedule is enabled, and cleared when it is disabled."""
        with self._store._writing() as conn:
            return _record(self._apply_update(conn, schedule_id, changes))

    def _apply_update(self, conn: Connection, schedule_id: str,
                      changes: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValidationError(f"schedule fields that cannot be updated: {', '.join(sorted(unknown))}"
                                  f"; updatable: {', '.join(sorted(UPDATABLE))}")
        old = _get_row(conn, schedule_id, lock=True)
        new = {**old, **changes}
        if new["params"] is None:
            new["params"] = {}
        kind = sc.validate(new["kind"], new["expression"], new["timezone"])
        policy = sc.validate_options(
            max_concurrency=new["max_concurrency"], timeout_seconds=new["timeout_seconds"],
            overlap_policy=new["overlap_policy"], catchup=new["catchup"],
            enabled=new["enabled"], params=new["params"], description=new["description"])
        new.update(kind=kind.value, overlap_policy=policy.value,
                   expression=new["expression"].strip(), timezone=new["timezone"].strip(),
                   params=sem.json_copy(new["params"]))
        now = self._clock()
        retrigger = any(new[k] != old[k] for k in ("kind", "expression", "timezone")) \
            or (new["enabled"] and not old["enabled"])
        if not new["enabled"]:
            new["next_run_at"] = None
        elif retrigger or old["next_run_at"] is None:
            new["next_run_at"] = sc.next_fire_after(kind, new["expression"], new["timezone"],
                                                    now, old["created_at"])
        new["updated_at"] = now
        values = {k: new[k] for k in (*UPDATABLE, "next_run_at", "updated_at")}
        conn.execute(update(schedules).where(schedules.c.id == schedule_id).values(**values))
        return new

    def set_enabled(self, schedule_id: str, enabled: bool) -> ScheduleRecord:
        return self.update(schedule_id, enabled=enabled)

    def delete(self, schedule_id: str) -> None:
        """Delete a schedule. Its queued (PENDING) runs are cancelled in the same transaction;
        its other runs stay, with ``schedule_id`` cleared."""
        now = self._clock()

        def once() -> None:
            # Clearing runs.schedule_id (ON DELETE SET NULL) races the engine's run updates on
            # PostgreSQL; a deadlock victim is run again whole (retry_conflicts).
            with self._store._writing() as conn:
                _get_row(conn, schedule_id, lock=True)
                fields = sem.run_update_fields(
                    RunUpdate("", RunState.CANCELLED, now, error="its schedule was deleted"), None)
                conn.execute(update(runs).where(runs.c.schedule_id == schedule_id,
                                                runs.c.state == RunState.PENDING.value)
                             .values(**fields))
                conn.execute(delete(schedules).where(schedules.c.id == schedule_id))
        retry_conflicts(once)

    # -- firing ----------------------------------------------------------------------------

    def due(self, now: float, limit: int = 100) -> builtins.list[ScheduleRecord]:
        """Enabled schedules whose ``next_run_at <= now``, most overdue first."""
        query = (select(schedules)
                 .where(schedules.c.enabled.is_(True), schedules.c.next_run_at <= now)
                 .order_by(schedules.c.next_run_at, schedules.c.id).limit(limit))
        with self._store._reading() as conn:
            return [_record(row._asdict()) for row in conn.execute(query)]

    def claim(self, schedule_id: str, expected_next_run_at: float,
              new_next_run_at: float) -> bool:
        """Compare-and-set ``next_run_at`` (see module doc); True iff this caller won."""
        stmt = (update(schedules)
                .where(schedules.c.id == schedule_id,
                       schedules.c.next_run_at == expected_next_run_at,
                       schedules.c.enabled.is_(True))
                .values(next_run_at=new_next_run_at))
        with self._store._writing() as conn:
            return conn.execute(stmt).rowcount == 1

    def record_fire(self, schedule_id: str, run_id: str | None, at: float) -> None:
        """Note that the schedule fired at ``at`` (the slot) and created ``run_id``, unless a
        later slot is already recorded: two firers firing consecutive slots may record them in
        either order, and ``last_run_at``/``last_run_id`` must not go back to the older one."""
        with self._store._writing() as conn:
            _record_fire(conn, schedule_id, run_id, at)

    @contextmanager
    def firing(self, schedule_id: str) -> Iterator[FireSection | None]:
        """Hold the schedule's fire lock (module doc) for the body of the ``with``; yield the
        ``FireSection`` to count active runs and record the fire under it, or None when the
        schedule no longer exists. Another ``firing`` of the same schedule (on SQLite: of the
        same database), in any thread or process, waits until this one ends.

        Take it holding no transaction of this store, and inside it write in transactions of
        your own that you commit (a run INSERT), or through the section. On PostgreSQL the
        section holds a pooled connection until it ends: keep it short."""
        if not self._store._sqlite:
            with self._store._writing() as conn:
                # An advisory lock, not a lock on the schedule's row (module doc).
                conn.execute(select(func.pg_advisory_xact_lock(_fire_lock_id(schedule_id))))
                found = conn.execute(select(schedules.c.id)
                                     .where(schedules.c.id == schedule_id)).scalar()
                yield None if found is None else FireSection(self, schedule_id, conn)
            return
        with self._sqlite_fire_lock():
            with self._store._reading() as conn:
                found = conn.execute(select(schedules.c.id)
                                     .where(schedules.c.id == schedule_id)).scalar()
            yield None if found is None else FireSection(self, schedule_id, None)

    @contextmanager
    def _sqlite_fire_lock(self) -> Iterator[None]:
        if self._lock_path is None:
            with self._store._reading() as conn:
                main = [row[2] for row in conn.exec_driver_sql("PRAGMA database_list")
                        if row[1] == "main"]
            self._lock_path = os.path.abspath(main[0]) + "-fire.lock" if main and main[0] \
                else ""
        path = self._lock_path
        with _LOCKS_GUARD:
            thread_lock = (_MEMORY_LOCKS.setdefault(self._store, threading.Lock()) if not path
                           else _FILE_LOCKS.setdefault(path, threading.Lock()))
        with thread_lock:
            if not path or fcntl is None:
                yield
                return
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)                # releases the flock

    def link_run(self, schedule_id: str, run_id: str) -> None:
        """Set ``runs.schedule_id`` of an existing run (for launchers whose run writer does not
        set it). ``NotFoundError`` when either does not exist."""
        with self._store._writing() as conn:
            _get_row(conn, schedule_id)
            done = conn.execute(update(runs).where(runs.c.run_id == run_id)
                                .values(schedule_id=schedule_id)).rowcount
            if done != 1:
                raise NotFoundError(f"run {run_id} not found")

    def active_runs(self, schedule_id: str) -> int:
        """Runs of this schedule that are PENDING (queued) or RUNNING."""
        with self._store._reading() as conn:
            return _active_runs(conn, schedule_id)

    def with_queued_runs(self, limit: int = 100, *, after: str | None = None) -> builtins.list[str]:
        """Ids of schedules that have PENDING (queued) runs AND room to start one (fewer RUNNING
        runs than ``max_concurrency``), in id order, only ids greater than ``after``: a page
        of a keyset scan. Paging with ``after`` = the last id of the previous page visits every
        schedule with room once (``ScheduleFirer`` does that each tick), so a schedule is never
        starved by others earlier in id order, whether they are full (a full schedule is not
        returned at all) or get room back at every tick.

        One statement on both databases, answered from indexes (``runs (schedule_id, state)``,
        ``runs (state, created_at)``, the schedules key). The room is a snapshot; the
        claim itself re-checks it under the schedule's lock (``claim_queued_runs``)."""
        pending = (select(runs.c.run_id)
                   .where(runs.c.schedule_id == schedules.c.id,
                          runs.c.state == RunState.PENDING.value)
                   .exists())
        running = (select(func.count()).select_from(runs)
                   .where(runs.c.schedule_id == schedules.c.id,
                          runs.c.state == RunState.RUNNING.value)
                   .scalar_subquery())
        query = select(schedules.c.id).where(pending, running < schedules.c.max_concurrency)
        if after is not None:
            query = query.where(schedules.c.id > after)
        query = query.order_by(schedules.c.id).limit(limit)
        with self._store._reading() as conn:
            return [str(sid) for sid in conn.execute(query).scalars()]

    def claim_queued_runs(self, schedule_id: str, now: float) -> builtins.list[str]:
        """Move the oldest PENDING runs of the schedule to RUNNING, as many as its
        ``max_concurrency`` leaves room for; return their ids, oldest first (module doc). A
        schedule deleted meanwhile returns []."""
        with self._store._writing() as conn:
            lock = select(schedules.c.max_concurrency).where(schedules.c.id == schedule_id)
            if conn.dialect.name == "postgresql":
                lock = lock.with_for_update()
            limit = conn.execute(lock).scalar()
            if limit is None:
                return []
            running = conn.execute(
                select(func.count()).select_from(runs)
                .where(runs.c.schedule_id == schedule_id,
                       runs.c.state == RunState.RUNNING.value)).scalar_one()
            free = int(limit) - int(running)
            if free <= 0:
                return []
            # PostgreSQL: lock the chosen rows too. A queued run cancelled (``cancel_pending``
            # does not lock the schedule) between this SELECT and the UPDATE below was left
            # CANCELLED by the UPDATE yet returned as claimed, and the firer then started it.
            # Locked, a concurrent cancel waits for this commit and finds the run RUNNING; one
            # committed before the lock is re-checked here and the run is left out.
            pick = (select(runs.c.run_id)
                    .where(runs.c.schedule_id == schedule_id,
                           runs.c.state == RunState.PENDING.value)
                    .order_by(runs.c.created_at, runs.c.run_id).limit(free))
            if conn.dialect.name == "postgresql":     # FOR NO KEY UPDATE, as the UPDATE takes
                pick = pick.with_for_update(key_share=True)
            chosen: builtins.list[str] = [str(rid) for rid in conn.execute(pick).scalars()]
            if chosen:
                fields = sem.run_update_fields(RunUpdate("", RunState.RUNNING, now), None)
                conn.execute(update(runs)
                             .where(runs.c.run_id.in_(chosen),
                                    runs.c.state == RunState.PENDING.value)
                             .values(**fields, heartbeat_at=now))
            return chosen

    def fail_claimed_run(self, run_id: str, error: str, now: float) -> None:
        """End a run that ``claim_queued_runs`` moved to RUNNING but that could not be started
        (the launcher raised): FAILED with ``error``, so it frees its concurrency slot."""
        fields = sem.run_update_fields(RunUpdate(run_id, RunState.FAILED, now, error=error), None)
        with self._store._writing() as conn:
            conn.execute(update(runs).where(runs.c.run_id == run_id,
                                            runs.c.state == RunState.RUNNING.value)
                         .values(**fields))

    # -- the decorator's schedules ---------------------------------------------------------

    def find_for_pipeline(self, pipeline_id: str,
                          source: ScheduleSource | str | None = "decorator") -> builtins.list[ScheduleRecord]:
        """Schedules of a pipeline (of that ``source``; None for all), oldest first."""
        query = select(schedules).where(schedules.c.pipeline_id == pipeline_id)
        if source is not None:
            query = query.where(schedules.c.source == _source(source).value)
        with self._store._reading() as conn:
            rows = conn.execute(query.order_by(schedules.c.created_at, schedules.c.id)).all()
        return [_record(row._asdict()) for row in rows]

    def upsert_decorator_schedule(self, project_id: str, pipeline_id: str,
                                  cron_expr: str | None) -> ScheduleRecord | None:
        """Make the pipeline's one decorator-sourced schedule match ``@pipeline(schedule=...)``:
        create it (CRON, UTC, enabled), or update its expression and enable it; with no
        expression (the ``schedule=`` was removed from the code) disable it. Returns the
        schedule, or None when there is none and none is wanted. Schedules created over the API
        are never touched. One transaction that locks the pipeline row, so servers loading the
        same module at once still leave exactly one decorator schedule."""
        wanted = cron_expr.strip() if cron_expr else None
        row = None if wanted is None else self._new_row(
            kind="CRON", expression=wanted, source="decorator",
            description="from @pipeline(schedule=...)")
        with self._store._writing() as conn:
            lock = select(pipelines.c.id).where(pipelines.c.id == pipeline_id)
            if conn.dialect.name == "postgresql":
                lock = lock.with_for_update()
            if conn.execute(lock).scalar() is None:
                raise NotFoundError(f"pipeline {pipeline_id} not found")
            found = conn.execute(
                select(schedules).where(schedules.c.pipeline_id == pipeline_id,
                                        schedules.c.source == ScheduleSource.DECORATOR.value)
                .order_by(schedules.c.created_at, schedules.c.id)).first()
            current = None if found is None else found._asdict()
            if row is None:
                if current is None or not current["enabled"]:
                    return None if current is None else _record(current)
                return _record(self._apply_update(conn, current["id"], {"enabled": False}))
            if current is None:
                row["project_id"], row["pipeline_id"] = _resolve(conn, project_id, pipeline_id)
                conn.execute(schedules.insert(), row)
                return _record(row)
            if current["kind"] == ScheduleKind.CRON.value and current["expression"] == wanted \
                    and current["enabled"]:
                return _record(current)
            return _record(self._apply_update(
                conn, current["id"], {"kind": "CRON", "expression": wanted, "enabled": True}))

class FireSection:
    """What a firer does while it holds a schedule's fire lock (``SQLScheduleStore.firing``):
    on PostgreSQL in the locking transaction (committed when the section ends), on SQLite in
    transactions of their own."""

    def __init__(self, owner: SQLScheduleStore, schedule_id: str,
                 conn: Connection | None) -> None:
        self._owner, self.schedule_id, self._conn = owner, schedule_id, conn

    def active_runs(self) -> int:
        """As ``SQLScheduleStore.active_runs``; runs created by another firer's section are
        counted (that section ended, and its launcher had committed the run)."""
        if self._conn is None:
            return self._owner.active_runs(self.schedule_id)
        return _active_runs(self._conn, self.schedule_id)

    def record_fire(self, run_id: str | None, at: float) -> None:
        """As ``SQLScheduleStore.record_fire``."""
        if self._conn is None:
            self._owner.record_fire(self.schedule_id, run_id, at)
        else:
            _record_fire(self._conn, self.schedule_id, run_id, at)


#: SQLite fire locks within this process: by lock file path, and per store for memory databases.
_LOCKS_GUARD = threading.Lock()
_FILE_LOCKS: dict[str, threading.Lock] = {}
_MEMORY_LOCKS: weakref.WeakKeyDictionary[SQLMetadataStore, threading.Lock] = \
    weakref.WeakKeyDictionary()


def _fire_lock_id(schedule_id: str) -> int:
    """The PostgreSQL advisory lock key (a signed 64-bit int) of a schedule's fire lock."""
    digest = hashlib.sha256(b"twingraph-fire\0" + schedule_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _active_runs(conn: Connection, schedule_id: str) -> int:
    return int(conn.execute(select(func.count()).select_from(runs)
                            .where(runs.c.schedule_id == schedule_id,
                                   runs.c.state.in_(_ACTIVE))).scalar_one())


def _record_fire(conn: Connection, schedule_id: str, run_id: str | None, at: float) -> None:
    stmt = (update(schedules)
            .where(schedules.c.id == schedule_id,
                   or_(schedules.c.last_run_at.is_(None), schedules.c.last_run_at <= at))
            .values(last_run_at=at, last_run_id=run_id))
    if conn.execute(stmt).rowcount != 1:
        _get_row(conn, schedule_id)         # NotFoundError; else a later slot won


def _source(value: ScheduleSource | str) -> ScheduleSource:
    try:
        return value if isinstance(value, ScheduleSource) else ScheduleSource(str(value))
    except ValueError:
        raise ValidationError(f"unknown schedule source {value!r}; expected 'api' or 'decorator'") from None


def _resolve(conn: Connection, project: str, pipeline: str) -> tuple[str, str]:
    """(project id, pipeline id) from ids or names; the pipeline must belong to the project."""
    project_id = conn.execute(select(projects.c.id).where(
        or_(projects.c.id == project, projects.c.name == project))
        .order_by((projects.c.id == project).desc())).scalar()
    if project_id is None:
        raise NotFoundError(f"project {project} not found")
    row = conn.execute(select(pipelines.c.id, pipelines.c.project_id).where(
        or_(pipelines.c.id == pipeline,
            and_(pipelines.c.project_id == project_id, pipelines.c.name == pipeline)))
        .order_by((pipelines.c.id == pipeline).desc())).first()
    if row is None:
        raise NotFoundError(f"pipeline {pipeline} not found in project {project}")
    if row.project_id != project_id:
        raise ValidationError(f"pipeline {pipeline} belongs to another project than {project}")
    return str(project_id), str(row.id)


def _get_row(conn: Connection, schedule_id: str, *, lock: bool = False) -> dict[str, Any]:
    query = select(schedules).where(schedules.c.id == schedule_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row: Row[Any] | None = conn.execute(query).first()
    if row is None:
        raise NotFoundError(f"schedule {schedule_id} not found")
    return row._asdict()


def _record(row: Mapping[str, Any]) -> ScheduleRecord:
    fields = {name: row[name] for name in _FIELDS}
    fields["kind"] = ScheduleKind(fields["kind"])
    fields["overlap_policy"] = OverlapPolicy(fields["overlap_policy"])
    fields["source"] = ScheduleSource(fields["source"])
    fields["enabled"] = bool(fields["enabled"])
    fields["catchup"] = bool(fields["catchup"])
    fields["params"] = dict(fields["params"] or {})
    return ScheduleRecord(**fields)


__all__ = ["SORTABLE", "UPDATABLE", "FireSection", "SQLScheduleStore"]
