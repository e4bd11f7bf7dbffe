"""Applying one batch of engine records inside one SQL transaction: the hot path.

A batch is split into runs of consecutive records of the same type; each run becomes a few
statements, never one statement (or one SELECT) per record:

- TaskRecord / AttemptRecord / RunRecord: one bulk ``INSERT .. ON CONFLICT DO UPDATE``.
  ``core.wire.TaskRows`` (task rows as field values, from the writer process) are written as
  the ``TaskRecord``s they stand for would be: the same rows through the same statement.
- TaskUpdate: one SELECT of (fence, started_at) for up to 30,000 tasks (``FOR UPDATE`` on
  PostgreSQL; SQLite writers hold the database lock already), then the updates of each task are
  folded in Python (``_semantics.fold_task_update``: stale fences dropped and reported) and
  written with one bulk UPDATE per distinct set of columns. A task that does not exist fails
  the batch.
- LogRecord: one bulk INSERT. EdgeRecord: bulk ``INSERT .. ON CONFLICT DO NOTHING`` by digest.
- RunUpdate / RunHeartbeat: one statement per record (a batch has a handful).

Order is kept: runs of records are applied in batch order, and folding preserves the order of
updates to a task. Anything that goes wrong raises; the caller rolls the transaction back.

How rows reach each database (executemany on SQLite, ``unnest`` arrays on PostgreSQL) is
``_bulk``'s business.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import groupby
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import ARRAY, Connection, String, Table, any_, bindparam, case, select, update
from sqlalchemy.sql.expression import ClauseElement

from twingraph.core.records import (
    AttemptRecord,
    EdgeRecord,
    LogRecord,
    Record,
    RunHeartbeat,
    RunRecord,
    RunUpdate,
    TaskRecord,
    TaskUpdate,
)
from twingraph.core.states import TaskState, fence_epoch
from twingraph.core.wire import TaskRows
from twingraph.errors import NotFoundError, ValidationError
from twingraph.stores.metadata import _semantics as sem
from twingraph.stores.metadata._bulk import Builder, bulk, chunks
from twingraph.stores.metadata._engine import dialect_insert
from twingraph.stores.metadata.catalog import new_id
from twingraph.stores.metadata.schema import (
    lineage_edges,
    logs,
    pipelines,
    projects,
    runs,
    task_attempts,
    tasks,
)

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql, sqlite

#: Bound parameters per ``IN (...)`` on SQLite: 32,766 variables since SQLite 3.32, 999 before.
SQLITE_IN_CHUNK = 30_000 if sqlite3.sqlite_version_info >= (3, 32) else 900
#: Task ids per ``= ANY(array)`` on PostgreSQL (one parameter, however long).
POSTGRES_IN_CHUNK = 20_000

TaskKey = tuple[str, str]

_RUN_COLUMNS = tuple(RunRecord.__dataclass_fields__)
_TASK_COLUMNS = tuple(TaskRecord.__dataclass_fields__)
_ATTEMPT_COLUMNS = tuple(AttemptRecord.__dataclass_fields__)
# attrgetter, not dataclasses.astuple: astuple deep-copies every dict, which the hot path cannot pay.
_run_values = attrgetter(*_RUN_COLUMNS)
_task_values = attrgetter(*_TASK_COLUMNS)
_attempt_values = attrgetter(*_ATTEMPT_COLUMNS)

_TASK_STATE_AT = _TASK_COLUMNS.index("state")
_TASK_INPUTS_AT = _TASK_COLUMNS.index("inputs")
_ATTEMPT_STATE_AT = _ATTEMPT_COLUMNS.index("state")
# The stored spelling of a task state, by the state or its value (``sem.task_state(v).value``
# without the enum's ``value`` descriptor).
_TASK_STATE_TEXT = {s.value: s.value for s in TaskState}
_TASK_WIDTH = len(_TASK_COLUMNS)
_TASK_CREATED_AT = _TASK_COLUMNS.index("created_at")
_TASK_FENCE_AT = _TASK_COLUMNS.index("fence")
_TASK_STARTED_AT = _TASK_COLUMNS.index("started_at")
_TASK_ENDED_AT = _TASK_COLUMNS.index("ended_at")
_TASK_CACHE_STATUS_AT = _TASK_COLUMNS.index("cache_status")


class BatchWriter:
    """Applies records on one connection that is inside a write transaction."""

    def __init__(self, conn: Connection, *, clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.clock = clock
        self.postgres = conn.dialect.name == "postgresql"
        self._insert = dialect_insert(conn.dialect.name)
        self._json = sem.json_encoder()
        self._inputs_json = sem.fast_json_encoder()     # task inputs: the hot path
        self._handlers: dict[type, Callable[[list[Any], list[TaskKey]], None]] = {
            RunRecord: self._run_records,
            RunUpdate: self._run_updates,
            RunHeartbeat: self._heartbeats,
            TaskRecord: self._task_records,
            TaskRows: self._task_rows,
            TaskUpdate: self._task_updates,
            AttemptRecord: self._attempts,
            LogRecord: self._logs,
            EdgeRecord: self._edges,
        }

    def apply(self, batch: Sequence[Record]) -> list[TaskKey]:
        stale: list[TaskKey] = []
        for kind, group in groupby(batch, key=type):
            handler = self._handlers.get(kind)
            if handler is None:
                raise ValidationError(f"not a metadata record: {kind.__name__}")
            handler(list(group), stale)
        return stale

    def _bulk(self, name: str, table: Table, keys: tuple[str, ...],
              rows: list[tuple[Any, ...]], build: Builder) -> None:
        bulk(self.conn, name, table, keys, rows, build)

    def _insert_from(self, table: Table, source: Any) -> postgresql.Insert | sqlite.Insert:
        """INSERT into ``table``: VALUES binds (SQLite) or SELECT from ``source`` (PostgreSQL)."""
        stmt: postgresql.Insert | sqlite.Insert = self._insert(table)
        if source is not None:
            stmt = stmt.from_select(list(source.c.keys()), select(*source.c))
        return stmt

    # -- runs (a handful per batch: plain Core) ---------------------------------------------

    def _run_records(self, records: list[RunRecord], _stale: list[TaskKey]) -> None:
        records = sem.last_wins(records, key=lambda r: r.run_id)
        self.ensure_projects({r.project for r in records})
        pipeline_ids = {pair: self._pipeline_id(*pair)
                        for pair in {(r.project, r.pipeline) for r in records}}
        rows = []
        for r in records:
            sem.check_times("RunRecord", r.run_id, r.created_at, r.started_at, r.ended_at,
                            r.heartbeat_at)
            row = dict(zip(_RUN_COLUMNS, _run_values(r)))
            row["state"] = sem.run_state(r.state).value
            row["pipeline_id"] = pipeline_ids[(r.project, r.pipeline)]
            for name in ("params", "config", "source"):     # fail as ValidationError, early
                self._json(row[name])
            rows.append(row)
        stmt = self._insert(runs)
        stmt = stmt.on_conflict_do_update(
            index_elements=[runs.c.run_id],
            set_={name: stmt.excluded[name] for name in rows[0] if name != "run_id"})
        self.conn.execute(stmt, rows)

    def _run_updates(self, records: list[RunUpdate], _stale: list[TaskKey]) -> None:
        for u in records:
            sem.check_times("RunUpdate", u.run_id, u.at)
            query = select(runs.c.started_at, runs.c.driver_epoch).where(runs.c.run_id == u.run_id)
            if self.postgres:
                query = query.with_for_update()
            row = self.conn.execute(query).first()
            if row is None:
                raise NotFoundError(f"RunUpdate for unknown run {u.run_id!r}")
            if sem.superseded(u.epoch, row.driver_epoch):
                continue           # a driver the run was taken over from: fenced off
            fields = sem.run_update_fields(u, row.started_at)
            self.conn.execute(update(runs).where(runs.c.run_id == u.run_id).values(**fields))

    def _heartbeats(self, records: list[RunHeartbeat], _stale: list[TaskKey]) -> None:
        for hb in sem.last_wins(records, key=lambda r: r.run_id):
            sem.check_times("RunHeartbeat", hb.run_id, hb.at)
            query = update(runs).where(runs.c.run_id == hb.run_id)
            if hb.epoch is not None:          # a taken-over driver's beat would look alive
                query = query.where(runs.c.driver_epoch <= hb.epoch)
            result = self.conn.execute(query.values(heartbeat_at=hb.at))
            if result.rowcount != 1 and self.conn.execute(
                    select(runs.c.run_id).where(runs.c.run_id == hb.run_id)).first() is None:
                raise NotFoundError(f"RunHeartbeat for unknown run {hb.run_id!r}")

    # -- tasks (the hot path) ----------------------------------------------------------------

    def _task_records(self, records: list[TaskRecord], _stale: list[TaskKey]) -> None:
        rows = []
        encode_inputs = self._inputs_json
        check = sem.check_task_values
        for r in records:
            check("TaskRecord", r.run_id, r.node_id, r.created_at, r.started_at, r.ended_at,
                  r.cache_status)
        for r in sem.merge_task_records(records):
            row = list(_task_values(r))
            row[_TASK_STATE_AT] = sem.task_state(r.state).value
            row[_TASK_INPUTS_AT] = encode_inputs(r.inputs)
            rows.append(tuple(row))
        rows = self._of_current_drivers(rows, _stale)
        self._bulk("task_records", tasks, _TASK_COLUMNS, rows, self._task_upsert)

    def _task_rows(self, runs: list[TaskRows], _stale: list[TaskKey]) -> None:
        """``_task_records`` of rows given as ``TaskRecord`` field values (``core.wire.TaskRows``,
        the writer process's direct path), without a ``TaskRecord`` per row: the same merge of
        a task's repeated rows (``sem.merge_task_records``: the last wins, with the first one's
        ``created_at``, unless its fence is lower), the same state and inputs encoding, the
        same statement. The given rows are not changed: a transaction PostgreSQL aborts to
        break a deadlock applies the batch again (``retry_conflicts``)."""
        given = runs[0].rows if len(runs) == 1 else [r for run in runs for r in run.rows]
        width = _TASK_WIDTH
        if set(map(len, given)) - {width}:      # what ``TaskRecord(*r)`` makes of it, or raises
            given = [r if len(r) == width else list(_task_values(TaskRecord(*r))) for r in given]
        ca, sa, ea, ka = _TASK_CREATED_AT, _TASK_STARTED_AT, _TASK_ENDED_AT, _TASK_CACHE_STATUS_AT
        statuses, flt = sem.CACHE_STATUSES, float
        for r in given:         # sem.check_task_values, inline on the writer's hot path
            c, st, en, k = r[ca], r[sa], r[ea], r[ka]
            if not ((type(c) is flt and c - c == 0.0) and (st is None or type(st) is flt
                    and st - st == 0.0) and (en is None or type(en) is flt and en - en == 0.0)
                    and (k is None or k in statuses)):
                sem.check_task_values("TaskRecord", r[0], r[1], c, st, en, k)   # ints, or raises
        merged = {(r[0], r[1]): r for r in given}
        if len(merged) < len(given):         # a task given twice: merge_task_records' rule
            created_at, fence = _TASK_CREATED_AT, _TASK_FENCE_AT
            merged = {}
            for r in given:
                key = (r[0], r[1])
                old = merged.get(key)
                if old is not None:
                    if r[fence] < old[fence]:
                        continue
                    r = r.copy()
                    r[created_at] = old[created_at]
                merged[key] = r
        rows = []
        encode_inputs, state_at, inputs_at = self._inputs_json, _TASK_STATE_AT, _TASK_INPUTS_AT
        states = _TASK_STATE_TEXT
        for r in merged.values():
            row = r.copy()
            try:
                row[state_at] = states[r[state_at]]
            except (KeyError, TypeError):
                sem.task_state(r[state_at])          # raises ValidationError
                raise
            row[inputs_at] = encode_inputs(r[inputs_at])
            rows.append(tuple(row))
        rows = self._of_current_drivers(rows, _stale)
        self._bulk("task_records", tasks, _TASK_COLUMNS, rows, self._task_upsert)

    def _of_current_drivers(self, rows: list[tuple[Any, ...]],
                            stale: list[TaskKey]) -> list[tuple[Any, ...]]:
        """Task rows less those of a driver the run was taken over from (their fence's epoch
        below the run's ``driver_epoch``): the upsert fences a row off only against a stored
        one, so a stalled driver's first row of a task, written after another process had
        ended or resumed the run, went in (a SUCCESS task inside a CANCELLED run). A run never
        taken over (epoch 0, the usual case) costs one query per run and batch."""
        epochs = {run_id: self._driver_epoch(run_id) for run_id in {r[0] for r in rows}}
        if not any(epochs.values()):
            return rows
        fence_at = _TASK_FENCE_AT
        older = [r for r in rows if fence_epoch(r[fence_at]) < epochs[r[0]]]
        if not older:
            return rows
        # Of those, a row for a task already stored is the upsert's to judge (a resumed task
        # keeps the fence of the attempt that computed it: equal to the stored one, it
        # applies); only a first row is dropped here.
        stored = self._stored_tasks([(r[0], r[1]) for r in older])
        drop = {(r[0], r[1]) for r in older} - stored
        stale.extend(sorted(drop))
        return [r for r in rows if (r[0], r[1]) not in drop]

    def _stored_tasks(self, keys: list[TaskKey]) -> set[TaskKey]:
        by_run: dict[str, list[str]] = {}
        for run_id, node_id in keys:
            by_run.setdefault(run_id, []).append(node_id)
        query = select(tasks.c.node_id).where(
            tasks.c.run_id == bindparam("run"),
            tasks.c.node_id.in_(bindparam("nodes", expanding=True)))
        found: set[TaskKey] = set()
        for run_id, nodes in by_run.items():       # (also under PostgreSQL's 65,535 limit)
            for chunk in chunks(sorted(nodes), SQLITE_IN_CHUNK):
                found.update((run_id, n) for (n,) in self.conn.execute(
                    query, {"run": run_id, "nodes": list(chunk)}).all())
        return found

    def _task_upsert(self, source: Any) -> ClauseElement:
        stmt = self._insert_from(tasks, source)
        excluded = stmt.excluded
        set_: dict[str, Any] = {name: excluded[name] for name in _TASK_COLUMNS
                                if name not in ("run_id", "node_id", "created_at", "fence")}
        set_["fence"] = case((excluded.fence > tasks.c.fence, excluded.fence), else_=tasks.c.fence)
        # A row with a lower fence than the stored one is a driver's the run was taken over
        # from (its first row of a task, written late): fenced off, as its updates are.
        return stmt.on_conflict_do_update(index_elements=[tasks.c.run_id, tasks.c.node_id],
                                          set_=set_, where=excluded.fence >= tasks.c.fence)

    def _task_updates(self, records: list[TaskUpdate], stale: list[TaskKey]) -> None:
        cursors = self._task_cursors([(u.run_id, u.node_id) for u in records])
        nets: dict[TaskKey, dict[str, Any]] = {}
        for u in records:
            sem.check_task_values("TaskUpdate", u.run_id, u.node_id, u.at, u.started_at,
                                  u.ended_at, u.cache_status)
            key = (u.run_id, u.node_id)
            cursor = cursors.get(key)
            if cursor is None:
                if u.fence is not None and fence_epoch(u.fence) < self._driver_epoch(u.run_id):
                    # A taken-over driver's update of a task whose first row was fenced off
                    # (``_of_current_drivers``): stale, as its other rows (it raised, and
                    # the batch's other runs lost their records with it).
                    stale.append(key)
                    continue
                raise NotFoundError(f"TaskUpdate for unknown task {u.node_id!r} of run {u.run_id!r}")
            net = nets.get(key)
            if net is None:
                net = nets[key] = {}
            if not sem.fold_task_update(cursor, u, net):
                stale.append(key)
        shapes: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for (run_id, node_id), net in nets.items():
            if net:
                shape = tuple(net)     # same columns in another order: another group, still right
                rows = shapes.get(shape)
                if rows is None:
                    rows = shapes[shape] = []
                rows.append((*net.values(), run_id, node_id))
        for shape, rows in shapes.items():
            self._bulk("task_update", tasks, (*shape, "k_run", "k_node"), rows,
                       partial(self._task_update, shape=shape))

    @staticmethod
    def _task_update(source: Any, shape: tuple[str, ...]) -> ClauseElement:
        if source is None:    # SET columns come from the executemany keys
            return update(tasks).where(tasks.c.run_id == bindparam("k_run"),
                                       tasks.c.node_id == bindparam("k_node"))
        return (update(tasks)
                .where(tasks.c.run_id == source.c.k_run, tasks.c.node_id == source.c.k_node)
                .values({name: source.c[name] for name in shape}))

    def _task_cursors(self, keys: list[TaskKey]) -> dict[TaskKey, sem.TaskCursor]:
        """Fence and start time of the given tasks, locked for this transaction."""
        by_run: dict[str, dict[str, None]] = {}
        for run_id, node_id in keys:
            by_run.setdefault(run_id, {})[node_id] = None
        cols = (tasks.c.node_id, tasks.c.fence, tasks.c.started_at)
        if self.postgres:      # one array parameter; rows locked in a fixed order (no deadlock)
            query = (select(*cols).where(tasks.c.run_id == bindparam("run"),
                                         tasks.c.node_id == any_(bindparam("nodes", type_=ARRAY(String))))
                     .order_by(tasks.c.node_id).with_for_update())
            size = POSTGRES_IN_CHUNK
        else:                  # the writer already holds SQLite's write lock
            query = select(*cols).where(tasks.c.run_id == bindparam("run"),
                                        tasks.c.node_id.in_(bindparam("nodes", expanding=True)))
            size = SQLITE_IN_CHUNK
        cursors: dict[TaskKey, sem.TaskCursor] = {}
        for run_id, nodes in by_run.items():
            for chunk in chunks(sorted(nodes), size):
                for node_id, fence, started_at in self.conn.execute(
                        query, {"run": run_id, "nodes": list(chunk)}).all():
                    cursors[(run_id, node_id)] = sem.TaskCursor(fence, started_at)
        return cursors

    def _attempts(self, records: list[AttemptRecord], _stale: list[TaskKey]) -> None:
        for r in records:
            sem.check_attempt(r)
        rows = []
        for r in sem.attempts_to_write(records, self._driver_epoch):
            row = list(_attempt_values(r))
            row[_ATTEMPT_STATE_AT] = sem.task_state(r.state).value
            rows.append(tuple(row))
        self._bulk("attempts", task_attempts, _ATTEMPT_COLUMNS, rows, self._attempt_upsert)

    def _driver_epoch(self, run_id: str) -> int:
        """The run's driver generation (0 for a run not stored: its rows then fail as rows of
        an unknown run do). On PostgreSQL the run's row stays locked until the batch commits:
        a driver claiming the run meanwhile waits, then finds what this batch wrote."""
        query = select(runs.c.driver_epoch).where(runs.c.run_id == run_id)
        if self.postgres:
            query = query.with_for_update()
        return int(self.conn.execute(query).scalar() or 0)

    def _attempt_upsert(self, source: Any) -> ClauseElement:
        stmt = self._insert_from(task_attempts, source)
        return stmt.on_conflict_do_update(
            index_elements=[task_attempts.c.run_id, task_attempts.c.node_id, task_attempts.c.attempt],
            set_={name: stmt.excluded[name] for name in _ATTEMPT_COLUMNS
                  if name not in ("run_id", "node_id", "attempt")},
            where=stmt.excluded.fence >= task_attempts.c.fence)

    # -- logs and lineage ------------------------------------------------------------------

    def _logs(self, records: list[LogRecord], _stale: list[TaskKey]) -> None:
        for r in records:
            sem.check_log(r)
        self._bulk("logs", logs, ("run_id", "node_id", "at", "level", "message"), [
            (r.run_id, r.node_id, r.at, sem.normalize_level(r.level), r.message) for r in records],
            lambda source: self._insert_from(logs, source))

    def _edges(self, records: list[EdgeRecord], _stale: list[TaskKey]) -> None:
        rows: dict[tuple[str, str], tuple[Any, ...]] = {}
        for e in records:
            sem.check_edge(e)
            digest = sem.edge_digest(e)
            if (e.run_id, digest) not in rows:
                rows[(e.run_id, digest)] = (e.run_id, e.src, e.dst, e.kind,
                                            self._json(e.properties), digest)
        self._bulk("edges", lineage_edges, ("run_id", "src", "dst", "kind", "properties", "digest"),
                   list(rows.values()), self._edge_insert)

    def _edge_insert(self, source: Any) -> ClauseElement:
        return self._insert_from(lineage_edges, source).on_conflict_do_nothing(
            index_elements=[lineage_edges.c.run_id, lineage_edges.c.digest])

    # -- catalog ---------------------------------------------------------------------------

    def ensure_projects(self, names: Iterable[str]) -> None:
        now = self.clock()
        rows: list[dict[str, Any]] = [{"id": new_id("proj"), "name": name, "description": None, "owner": None,
                 "metadata": {}, "created_at": now, "updated_at": now} for name in sorted(names)]
        if rows:
            stmt = self._insert(projects).on_conflict_do_nothing(index_elements=[projects.c.name])
            self.conn.execute(stmt, rows)

    def _pipeline_id(self, project: str, pipeline: str) -> str | None:
        return self.conn.execute(
            select(pipelines.c.id).join(projects, projects.c.id == pipelines.c.project_id)
            .where(projects.c.name == project, pipelines.c.name == pipeline)).scalar()
