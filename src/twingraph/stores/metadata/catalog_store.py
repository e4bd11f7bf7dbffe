"""``SQLCatalog``: what the REST faces read and write beyond the engine's port — projects,
pipelines and their versions by id, PENDING runs, filtered and sorted listings with totals,
statistics and per-component metrics.

It shares the ``SQLMetadataStore``'s engine, lock and error translation (one database, one set
of transactions); it is a separate class so the engine's port stays small.

Listings return ``(rows, total)``: ``total`` counts every row that matches the filters, ``rows``
is the page. ``sort`` is a column name, ``-`` prefixed for descending (``-created_at``); only the
columns named in each method's ``SORTABLE`` are accepted (anything else is a ``ValidationError``).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Select, delete, func, or_, select, update
from sqlalchemy import exc as sa_exc

from twingraph.core.records import LogRecord
from twingraph.core.states import RunState
from twingraph.errors import ConflictError, NotFoundError, StorageError, ValidationError
from twingraph.stores.metadata import _semantics as sem
from twingraph.stores.metadata.catalog import (
    PipelineRecord,
    PipelineVersionRecord,
    ProjectRecord,
    new_id,
)
from twingraph.stores.metadata.schema import (
    logs,
    pipeline_versions,
    pipelines,
    projects,
    runs,
    schedules,
    tasks,
)
from twingraph.stores.metadata.store import SQLMetadataStore
from twingraph.stores.metadata._engine import paged

MAX_LIMIT = 100


@dataclass(frozen=True, slots=True)
class RunRow:
    """A run as the REST faces show it: the engine's columns plus catalog links and tags."""
    run_id: str
    project: str
    pipeline: str
    pipeline_id: str | None
    pipeline_version: int | None
    state: RunState
    params: dict[str, Any]
    config: dict[str, Any]
    source: dict[str, Any]
    tags: dict[str, Any]
    created_at: float
    started_at: float | None
    ended_at: float | None
    heartbeat_at: float | None
    error: str | None
    result_key: str | None
    schedule_id: str | None
    project_id: str | None = None

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


class StatusReader:
    """One long-lived DBAPI connection in autocommit mode, for one thread's hot reads: no pool
    checkout and no liveness ping per read (the pool pings PostgreSQL on every checkout). A
    broken connection is dropped and the read retried once on a fresh one."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._raw: Any = None

    def _connect(self) -> Any:
        raw = self._engine.raw_connection()
        driver = raw.driver_connection
        if self._engine.dialect.name == "postgresql":
            driver.autocommit = True        # each read sees the latest commit; no COMMIT trip
        return raw

    def fetch(self, sql: str, key: str) -> Any:
        for attempt in (0, 1):
            if self._raw is None:
                self._raw = self._connect()
            try:
                cur = self._raw.driver_connection.cursor()
                cur.execute(sql, (key,))
                row = cur.fetchone()
                cur.close()
                return row
            except Exception:
                raw, self._raw = self._raw, None
                try:
                    raw.invalidate()
                except Exception:  # noqa: BLE001 - it is being thrown away
                    pass
                if attempt:
                    raise
        return None

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None


@dataclass(frozen=True, slots=True)
class ComponentMetrics:
    component: str
    executions: int
    succeeded: int
    failed: int
    durations: list[float] = field(default_factory=list)    # seconds, of finished tasks


def _order(table: Any, sort: str | None, sortable: Sequence[str], default: str) -> list[Any]:
    sort = sort or default
    desc = sort.startswith("-")
    name = sort.lstrip("-+")
    if name not in sortable:
        raise ValidationError(f"cannot sort by {name!r}; sortable: {', '.join(sortable)}")
    col = table.c[name]
    key = table.c.id if "id" in table.c else table.c.run_id
    return [col.desc(), key.desc()] if desc else [col.asc(), key.asc()]


@contextlib.contextmanager
def _unique(message: str) -> Iterator[None]:
    """A unique-index violation inside the block is a ``ConflictError(message)``. The blocks
    check for the duplicate first, but under PostgreSQL's READ COMMITTED two concurrent
    writers can both pass the check; the index then refuses the second one."""
    try:
        yield
    except StorageError as exc:
        cause = exc.__cause__
        if isinstance(cause, sa_exc.IntegrityError) and (
                getattr(cause.orig, "sqlstate", None) == "23505"           # PostgreSQL
                or "UNIQUE constraint failed" in str(cause.orig)):         # SQLite
            raise ConflictError(message) from exc
        raise


def _page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be between 1 and {MAX_LIMIT} (got {limit})")
    sem.check_paging(limit, offset)


class SQLCatalog:
    """Projects, pipelines, runs and statistics for the REST faces (see module doc)."""

    PROJECT_SORT = ("created_at", "updated_at", "name")
    PIPELINE_SORT = ("created_at", "updated_at", "name")
    RUN_SORT = ("created_at", "started_at", "ended_at", "state")

    def __init__(self, store: SQLMetadataStore) -> None:
        self.store = store
        self._clock = store._clock

    # -- projects --------------------------------------------------------------------------
    def create_project(self, name: str, *, description: str | None = None,
                       owner: str | None = None, metadata: dict[str, Any] | None = None) -> ProjectRecord:
        now = self._clock()
        row = {"id": new_id("proj"), "name": name, "description": description, "owner": owner,
               "metadata": sem.json_copy(metadata or {}), "created_at": now, "updated_at": now}
        with _unique(f"a project named {name!r} already exists"), \
                self.store._writing() as conn:
            if conn.execute(select(projects.c.id).where(projects.c.name == name)).first():
                raise ConflictError(f"a project named {name!r} already exists")
            conn.execute(projects.insert(), row)
        return ProjectRecord(**row)

    def get_project(self, project_id: str) -> ProjectRecord:
        with self.store._reading() as conn:
            row = conn.execute(select(projects).where(projects.c.id == project_id)).first()
        if row is None:
            raise NotFoundError(f"project {project_id!r} not found")
        return ProjectRecord(**row._asdict())

    def resolve_project(self, id_or_name: str) -> ProjectRecord:
        """A project by id, or by name (the engine's runs name their project; the embedded
        default is ``default``). An id wins over another project's equal name."""
        with self.store._reading() as conn:
            row = conn.execute(select(projects).where(
                (projects.c.id == id_or_name) | (projects.c.name == id_or_name))
                .order_by((projects.c.id == id_or_name).desc())).first()
        if row is None:
            raise NotFoundError(f"project {id_or_name!r} not found")
        return ProjectRecord(**row._asdict())

    def list_projects(self, *, owner: str | None = None, limit: int = 50, offset: int = 0,
                      sort: str | None = None) -> tuple[list[ProjectRecord], int]:
        _page(limit, offset)
        where = [] if owner is None else [projects.c.owner == owner]
        query = select(projects).where(*where).order_by(
            *_order(projects, sort, self.PROJECT_SORT, "-created_at"))
        with self.store._reading() as conn:
            total = conn.execute(select(func.count()).select_from(projects).where(*where)).scalar_one()
            rows = conn.execute(paged(query, limit, offset)).all()
        return [ProjectRecord(**r._asdict()) for r in rows], int(total)

    def update_project(self, project_id: str, changes: dict[str, Any]) -> ProjectRecord:
        allowed = {"name", "description", "owner", "metadata"}
        values = {k: v for k, v in changes.items() if k in allowed}
        with _unique(f"a project named {values.get('name')!r} already exists"), \
                self.store._writing() as conn:
            old_name = conn.execute(select(projects.c.name)
                                    .where(projects.c.id == project_id)).scalar()
            if old_name is None:
                raise NotFoundError(f"project {project_id!r} not found")
            if "name" in values and conn.execute(select(projects.c.id).where(
                    projects.c.name == values["name"], projects.c.id != project_id)).first():
                raise ConflictError(f"a project named {values['name']!r} already exists")
            if values:
                conn.execute(update(projects).where(projects.c.id == project_id)
                             .values(updated_at=self._clock(), **values))
            if values.get("name", old_name) != old_name:     # runs name their project
                conn.execute(update(runs).where(runs.c.project == old_name)
                             .values(project=values["name"]))
        return self.get_project(project_id)

    def delete_project(self, project_id: str) -> None:
        """Deletes the project, its pipelines, schedules and runs (runs name the project)."""
        with self.store._writing() as conn:
            name = conn.execute(select(projects.c.name).where(projects.c.id == project_id)).scalar()
            if name is None:
                raise NotFoundError(f"project {project_id!r} not found")
            if conn.execute(select(runs.c.run_id).where(
                    runs.c.project == name,
                    runs.c.state.in_([RunState.PENDING.value, RunState.RUNNING.value]))).first():
                raise ConflictError(f"project {project_id!r} has active runs; cancel them first")
            conn.execute(delete(runs).where(runs.c.project == name))
            conn.execute(delete(projects).where(projects.c.id == project_id))

    def project_statistics(self, project_id: str) -> dict[str, Any]:
        project = self.get_project(project_id)
        with self.store._reading() as conn:
            n_pipelines = conn.execute(select(func.count()).select_from(pipelines).where(
                pipelines.c.project_id == project_id)).scalar_one()
            stats = self._run_stats(conn, runs.c.project == project.name)
        return {"project_id": project_id, "total_pipelines": int(n_pipelines), **stats}

    def statistics(self) -> dict[str, Any]:
        with self.store._reading() as conn:
            n_projects = conn.execute(select(func.count()).select_from(projects)).scalar_one()
            n_pipelines = conn.execute(select(func.count()).select_from(pipelines)).scalar_one()
            stats = self._run_stats(conn, None)
        return {"total_projects": int(n_projects), "total_pipelines": int(n_pipelines), **stats}

    @staticmethod
    def _run_stats(conn: Connection, where: Any) -> dict[str, Any]:
        conds = [] if where is None else [where]
        by_state = {state.value: 0 for state in RunState}
        for state, count in conn.execute(select(runs.c.state, func.count()).where(*conds)
                                         .group_by(runs.c.state)):
            by_state[state] = int(count)
        avg = conn.execute(select(func.avg(runs.c.ended_at - runs.c.started_at)).where(
            *conds, runs.c.state == RunState.SUCCESS.value,
            runs.c.started_at.is_not(None), runs.c.ended_at.is_not(None))).scalar()
        finished = by_state["SUCCESS"] + by_state["FAILED"]
        return {"total_runs": sum(by_state.values()), "runs_by_state": by_state,
                "success_rate": (by_state["SUCCESS"] / finished) if finished else None,
                "average_execution_time_seconds": None if avg is None else float(avg)}

    # -- pipelines ---------------------------------------------------------------------------
    def create_pipeline(self, project_id: str, name: str, definition: dict[str, Any], *,
                        description: str | None = None, tags: list[Any] | None = None,
                        source_hash: str | None = None,
                        pipeline_id: str | None = None) -> PipelineRecord:
        """A new pipeline (version 1). ``pipeline_id`` is the id a client chose (the TwinGraph
        face's ``POST /api/workflows/{workflow_id}``); without it the id is ``pipe_<hex>``.
        A taken id or name is a ``ConflictError``; nothing is written then."""
        project = self.get_project(project_id)
        # Checked and inserted in one transaction (not the engine's upsert, which would make
        # a concurrent create of the same name a new version of this one).
        return self._create_with_id(project, pipeline_id or new_id("pipe"), name, definition,
                                    description=description, tags=tags,
                                    source_hash=source_hash)

    def _create_with_id(self, project: ProjectRecord, pipeline_id: str, name: str,
                        definition: dict[str, Any], *, description: str | None,
                        tags: list[Any] | None, source_hash: str | None) -> PipelineRecord:
        definition = sem.json_copy(definition)
        if not isinstance(definition, dict):
            raise ValidationError("a pipeline definition is a JSON object")
        now = self._clock()
        with _unique(f"a pipeline with id {pipeline_id!r} or named {name!r} in project "
                     f"{project.name!r} already exists"), self.store._writing() as conn:
            if conn.execute(select(pipelines.c.id).where(pipelines.c.id == pipeline_id)).first():
                raise ConflictError(f"a pipeline with id {pipeline_id!r} already exists")
            if conn.execute(select(pipelines.c.id).where(pipelines.c.project_id == project.id,
                                                         pipelines.c.name == name)).first():
                raise ConflictError(f"project {project.name!r} already has a pipeline named {name!r}")
            conn.execute(pipelines.insert(), {
                "id": pipeline_id, "project_id": project.id, "name": name,
                "description": description, "definition": definition, "schedule": None,
                "tags": sem.json_copy(tags or []), "current_version": 1, "created_at": now,
                "updated_at": now})
            conn.execute(pipeline_versions.insert(), {
                "pipeline_id": pipeline_id, "version": 1, "definition": definition,
                "source_hash": source_hash, "created_at": now})
        return self.get_pipeline(pipeline_id)

    def pipeline_activity(self, pipeline_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per pipeline: runs by state, the newest run's ``created_at`` and the number of
        enabled schedules — what the TwinGraph face needs for a workflow's status and
        success rate, in three grouped queries for any number of pipelines."""
        out: dict[str, dict[str, Any]] = {
            pid: {"runs_by_state": {}, "last_run_at": None, "enabled_schedules": 0}
            for pid in pipeline_ids}
        if not out:
            return out
        ids = list(out)
        with self.store._reading() as conn:
            for pid, state, n, last in conn.execute(
                    select(runs.c.pipeline_id, runs.c.state, func.count(), func.max(runs.c.created_at))
                    .where(runs.c.pipeline_id.in_(ids)).group_by(runs.c.pipeline_id, runs.c.state)):
                entry = out[pid]
                entry["runs_by_state"][state] = int(n)
                if entry["last_run_at"] is None or last > entry["last_run_at"]:
                    entry["last_run_at"] = float(last)
            for pid, n in conn.execute(
                    select(schedules.c.pipeline_id, func.count())
                    .where(schedules.c.pipeline_id.in_(ids), schedules.c.enabled.is_(True))
                    .group_by(schedules.c.pipeline_id)):
                out[pid]["enabled_schedules"] = int(n)
        return out

    def get_pipeline(self, pipeline_id: str) -> PipelineRecord:
        with self.store._reading() as conn:
            row = conn.execute(self._pipeline_select().where(pipelines.c.id == pipeline_id)).first()
        if row is None:
            raise NotFoundError(f"pipeline {pipeline_id!r} not found")
        return PipelineRecord(**row._asdict())

    def find_pipeline(self, id_or_name: str, project_id: str | None = None) -> PipelineRecord:
        """A pipeline by id, or by name within ``project_id`` (or, without one, by a name that
        is unique across projects)."""
        cond = pipelines.c.id == id_or_name
        name_cond = pipelines.c.name == id_or_name
        if project_id is not None:
            name_cond = name_cond & (pipelines.c.project_id == project_id)
        with self.store._reading() as conn:
            rows = conn.execute(self._pipeline_select().where(cond | name_cond)).all()
        by_id = [r for r in rows if r.id == id_or_name]
        if by_id:
            return PipelineRecord(**by_id[0]._asdict())
        if len(rows) > 1:
            raise ValidationError(f"pipeline name {id_or_name!r} is ambiguous: give project_id "
                                  "or the pipeline's id")
        if not rows:
            where = f" in project {project_id!r}" if project_id else ""
            raise NotFoundError(f"pipeline {id_or_name!r} not found{where}")
        return PipelineRecord(**rows[0]._asdict())

    def list_pipelines(self, *, project_id: str | None = None, tag: str | None = None,
                       limit: int = 50, offset: int = 0,
                       sort: str | None = None) -> tuple[list[PipelineRecord], int]:
        _page(limit, offset)
        where = [] if project_id is None else [pipelines.c.project_id == project_id]
        query = self._pipeline_select().where(*where).order_by(
            *_order(pipelines, sort, self.PIPELINE_SORT, "-created_at"))
        with self.store._reading() as conn:
            if tag is None:
                total = conn.execute(select(func.count()).select_from(pipelines)
                                     .where(*where)).scalar_one()
                rows = conn.execute(paged(query, limit, offset)).all()
                return [PipelineRecord(**r._asdict()) for r in rows], int(total)
            # Tags are a JSON list: filter in Python (catalogs hold pipelines, not millions).
            tagged = [PipelineRecord(**r._asdict()) for r in conn.execute(query)
                      if tag in (r.tags or [])]
        return tagged[offset:offset + limit], len(tagged)

    def update_pipeline(self, pipeline_id: str, *, name: str | None = None,
                        definition: dict[str, Any] | None = None, description: str | None = None,
                        tags: list[Any] | None = None) -> PipelineRecord:
        """Replace fields; a changed definition becomes a new version (the old one is kept)."""
        current = self.get_pipeline(pipeline_id)
        if name is not None and name != current.name:
            with _unique(f"project already has a pipeline named {name!r}"), \
                    self.store._writing() as conn:
                if conn.execute(select(pipelines.c.id).where(
                        pipelines.c.project_id == current.project_id,
                        pipelines.c.name == name)).first():
                    raise ConflictError(f"project already has a pipeline named {name!r}")
                conn.execute(update(pipelines).where(pipelines.c.id == pipeline_id)
                             .values(name=name, updated_at=self._clock()))
        self.store.upsert_pipeline(current.project, name or current.name,
                                   definition if definition is not None else current.definition,
                                   description=description, tags=tags)
        return self.get_pipeline(pipeline_id)

    def delete_pipeline(self, pipeline_id: str) -> None:
        with self.store._writing() as conn:
            if conn.execute(select(pipelines.c.id).where(pipelines.c.id == pipeline_id)).first() is None:
                raise NotFoundError(f"pipeline {pipeline_id!r} not found")
            if conn.execute(select(runs.c.run_id).where(
                    runs.c.pipeline_id == pipeline_id,
                    runs.c.state.in_([RunState.PENDING.value, RunState.RUNNING.value]))).first():
                raise ConflictError(f"pipeline {pipeline_id!r} has active runs; cancel them first")
            conn.execute(delete(pipelines).where(pipelines.c.id == pipeline_id))

    def pipeline_versions(self, pipeline_id: str) -> list[PipelineVersionRecord]:
        self.get_pipeline(pipeline_id)
        return self.store.get_pipeline_versions(pipeline_id)

    def pipeline_run_counts(self, pipeline_id: str) -> dict[str, int]:
        with self.store._reading() as conn:
            return {state: int(n) for state, n in conn.execute(
                select(runs.c.state, func.count()).where(runs.c.pipeline_id == pipeline_id)
                .group_by(runs.c.state))}

    @staticmethod
    def _pipeline_select() -> Select[Any]:
        return (select(pipelines, projects.c.name.label("project"))
                .join(projects, projects.c.id == pipelines.c.project_id))

    # -- runs --------------------------------------------------------------------------------
    def create_run(self, pipeline: PipelineRecord, *, params: dict[str, Any],
                   tags: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                   schedule_id: str | None = None, run_id: str | None = None,
                   source: dict[str, Any] | None = None) -> RunRow:
        """Record a PENDING run of ``pipeline``'s current version (``source``: more of what
        its record says of where it came from)."""
        now = self._clock()
        row = {"run_id": run_id or new_id("run"), "project": pipeline.project,
               "pipeline": pipeline.name, "pipeline_id": pipeline.id,
               "pipeline_version": pipeline.current_version, "state": RunState.PENDING.value,
               "params": sem.json_copy(params), "config": sem.json_copy(config or {}),
               "source": {**sem.json_copy(source or {}), "kind": "pipeline",
                          "pipeline_id": pipeline.id},
               "tags": sem.json_copy(tags or {}), "created_at": now, "schedule_id": schedule_id}
        with self.store._writing() as conn:
            conn.execute(runs.insert(), row)
        return self.get_run(row["run_id"])

    def get_run(self, run_id: str) -> RunRow:
        with self.store._reading() as conn:
            row = conn.execute(self._run_select().where(runs.c.run_id == run_id)).first()
        if row is None:
            raise NotFoundError(f"run {run_id!r} not found")
        return _run_row(row)

    def run_status(self, run_id: str, *, counts: bool = True,
                   reader: StatusReader | None = None) -> tuple[RunRow, dict[str, int]]:
        """The hot read of the faces (a client polling a run): the run and its task counts per
        state in ONE statement (one snapshot, one round trip) on a raw DBAPI connection — no
        SQL compilation, no result processing. ``reader`` is a caller's own long-lived
        connection (``status_reader()``); without one a pooled connection is used."""
        sql = self._status_sql[0 if counts else 1]
        try:
            if reader is not None:
                row = reader.fetch(sql, run_id)
            else:
                raw = self.store._engine.raw_connection()
                try:
                    cur = raw.cursor()
                    cur.execute(sql, (run_id,))
                    row = cur.fetchone()
                    cur.close()
                    raw.commit()        # end the read transaction (psycopg opens one implicitly)
                finally:
                    raw.close()
        except (self._driver_error, sa_exc.SQLAlchemyError) as exc:
            # Raw DBAPI reads bypass ``_translated``: the same StorageError as every other read.
            raise StorageError(f"metadata store error: {exc}") from exc
        if row is None:
            raise NotFoundError(f"run {run_id!r} not found")
        fields = dict(zip(_STATUS_FIELDS, row))
        by_state = row[len(_STATUS_FIELDS)] if counts else None
        if isinstance(by_state, (str, bytes)):
            by_state = json.loads(by_state)
        for name in ("params", "config", "source", "tags"):
            if isinstance(fields[name], (str, bytes)):
                fields[name] = json.loads(fields[name])
        fields["state"] = RunState(fields["state"])
        return RunRow(**fields), {k: int(v) for k, v in (by_state or {}).items()}

    @functools.cached_property
    def _driver_error(self) -> type[Exception]:
        """The DBAPI driver's base exception (sqlite3.Error, psycopg.Error)."""
        error: type[Exception] = self.store._engine.dialect.loaded_dbapi.Error
        return error

    def status_reader(self) -> StatusReader:
        """A dedicated autocommit connection for ``run_status`` (one thread's hot reads)."""
        return StatusReader(self.store._engine)

    @functools.cached_property
    def _status_sql(self) -> tuple[str, str]:
        """(with counts, without): the run, its project id, and ``{state: count}`` as JSON."""
        postgres = self.store._engine.dialect.name == "postgresql"
        mark = "%s" if postgres else "?"
        agg = "json_object_agg(state, n)" if postgres else "json_group_object(state, n)"
        cols = ", ".join(f"r.{c}" for c in _STATUS_FIELDS[:-1])
        base = (f"SELECT {cols}, p.id{{counts}} FROM runs r "
                f"LEFT JOIN projects p ON p.name = r.project WHERE r.run_id = {mark}")
        counts = (f", (SELECT {agg} FROM (SELECT state, COUNT(*) AS n FROM tasks "
                  f"WHERE tasks.run_id = r.run_id GROUP BY state) c)")
        return base.format(counts=counts), base.format(counts="")

    def list_runs(self, *, project: str | None = None, pipeline_id: str | None = None,
                  pipeline: str | None = None, state: str | None = None,
                  schedule_id: str | None = None, limit: int = 50, offset: int = 0,
                  sort: str | None = None) -> tuple[list[RunRow], int]:
        _page(limit, offset)
        where = []
        if project is not None:
            where.append(runs.c.project == project)
        if pipeline_id is not None:
            where.append(runs.c.pipeline_id == pipeline_id)
        if pipeline is not None:
            where.append(runs.c.pipeline == pipeline)
        if (wanted := sem.run_state_filter(state)) is not None:
            where.append(runs.c.state == wanted)
        if schedule_id is not None:
            where.append(runs.c.schedule_id == schedule_id)
        query = self._run_select().where(*where).order_by(
            *_order(runs, sort, self.RUN_SORT, "-created_at"))
        with self.store._reading() as conn:
            total = conn.execute(select(func.count()).select_from(runs).where(*where)).scalar_one()
            rows = conn.execute(paged(query, limit, offset)).all()
        return [_run_row(r) for r in rows], int(total)

    def cancel_pending(self, run_id: str, reason: str) -> bool:
        """PENDING -> CANCELLED in one compare-and-set; False if the run was not PENDING."""
        with self.store._writing() as conn:
            result = conn.execute(update(runs).where(
                runs.c.run_id == run_id, runs.c.state == RunState.PENDING.value).values(
                state=RunState.CANCELLED.value, ended_at=self._clock(), error=reason))
        return result.rowcount == 1

    def claim_start(self, run_id: str, now: float) -> bool:
        """PENDING -> RUNNING in one compare-and-set: exactly one starter wins."""
        with self.store._writing() as conn:
            result = conn.execute(update(runs).where(
                runs.c.run_id == run_id, runs.c.state == RunState.PENDING.value).values(
                state=RunState.RUNNING.value, started_at=now, heartbeat_at=now))
        return result.rowcount == 1

    def finish_running(self, run_id: str, state: RunState, error: str | None, now: float) -> bool:
        """End a RUNNING run whose driver failed before the engine recorded anything (a
        compare-and-set: True if this call ended it, False if it was no longer RUNNING)."""
        with self.store._writing() as conn:
            result = conn.execute(update(runs).where(
                runs.c.run_id == run_id, runs.c.state == RunState.RUNNING.value).values(
                state=state.value, ended_at=now, error=error))
        return result.rowcount == 1

    def stale_running(self, cutoff: float, limit: int = 100) -> list[RunRow]:
        """RUNNING runs of catalogued pipelines whose driver has not beaten since ``cutoff``."""
        beat = func.coalesce(runs.c.heartbeat_at, runs.c.started_at, runs.c.created_at)
        query = (self._run_select().where(runs.c.state == RunState.RUNNING.value,
                                          runs.c.pipeline_id.is_not(None), beat < cutoff)
                 .order_by(runs.c.created_at).limit(limit))
        with self.store._reading() as conn:
            return [_run_row(r) for r in conn.execute(query)]

    def claim_adoption(self, run: RunRow, now: float) -> bool:
        """Take over a silent RUNNING run with a compare-and-set on its heartbeat: of several
        servers that find it stale, exactly one wins. The run's driver epoch goes up: the dead
        driver's lock file no longer proves the run driverless (``engine.driverlock``), so a
        ``runs cancel`` or a resume meanwhile watches for this adopter instead."""
        beat = runs.c.heartbeat_at
        same = beat.is_(None) if run.heartbeat_at is None else beat == run.heartbeat_at
        with self.store._writing() as conn:
            result = conn.execute(update(runs).where(
                runs.c.run_id == run.run_id, runs.c.state == RunState.RUNNING.value, same)
                .values(heartbeat_at=now, driver_epoch=runs.c.driver_epoch + 1))
        return result.rowcount == 1

    def fail_pending(self, run_id: str, error: str) -> bool:
        """PENDING -> FAILED (the run could not be started: its pipeline cannot be compiled)."""
        with self.store._writing() as conn:
            result = conn.execute(update(runs).where(
                runs.c.run_id == run_id, runs.c.state == RunState.PENDING.value).values(
                state=RunState.FAILED.value, ended_at=self._clock(), error=error))
        return result.rowcount == 1

    def pending_runs(self, schedule_id: str, limit: int) -> list[RunRow]:
        """Oldest PENDING runs of a schedule (a backfill's queue)."""
        query = (self._run_select().where(runs.c.schedule_id == schedule_id,
                                          runs.c.state == RunState.PENDING.value)
                 .order_by(runs.c.created_at, runs.c.run_id).limit(limit))
        with self.store._reading() as conn:
            return [_run_row(r) for r in conn.execute(query)]

    @staticmethod
    def _run_select() -> Select[Any]:
        # Every column but the driver epoch (the engine's fencing, read by nobody here).
        return (select(*(c for c in runs.c if c.name != "driver_epoch"),
                       projects.c.id.label("project_id"))
                .join(projects, projects.c.name == runs.c.project, isouter=True))

    def count_logs(self, run_id: str, *, level: str | None = None,
                   node_id: str | None = None) -> int:
        where = [logs.c.run_id == run_id]
        if level is not None:
            where.append(logs.c.level.in_(sem.levels_at_or_above(level)))
        if node_id is not None:
            where.append(logs.c.node_id == node_id)
        with self.store._reading() as conn:
            return int(conn.execute(select(func.count()).select_from(logs).where(*where)).scalar_one())

    def list_logs(self, run_id: str, *, component: str | None = None, level: str | None = None,
                  since: float | None = None, until: float | None = None, limit: int = 1000,
                  offset: int = 0) -> tuple[list[LogRecord], int]:
        """Logs of a run, oldest first, with the total that matches. ``component`` matches a
        task's node id or its component's name; ``since``/``until`` bound ``at`` (inclusive);
        ``level`` keeps that level and above."""
        sem.check_paging(limit, offset)
        where = [logs.c.run_id == run_id]
        if component is not None:
            where.append(or_(logs.c.node_id == component, logs.c.node_id.in_(
                select(tasks.c.node_id).where(tasks.c.run_id == run_id,
                                              tasks.c.component == component))))
        if level is not None:
            where.append(logs.c.level.in_(sem.levels_at_or_above(level)))
        if since is not None:
            where.append(logs.c.at >= since)
        if until is not None:
            where.append(logs.c.at <= until)
        query = paged(select(logs.c.run_id, logs.c.at, logs.c.level, logs.c.message,
                             logs.c.node_id).where(*where).order_by(logs.c.at, logs.c.id),
                      limit, offset)
        with self.store._reading() as conn:
            total = conn.execute(select(func.count()).select_from(logs).where(*where)).scalar_one()
            rows = conn.execute(query).all()
        return [LogRecord(**row._asdict()) for row in rows], int(total)

    # -- components --------------------------------------------------------------------------
    def component_metrics(self, component: str, *, window: int = 10_000) -> ComponentMetrics:
        """Executions of ``component`` (the newest ``window`` finished tasks give durations)."""
        with self.store._reading() as conn:
            counts: dict[str, int] = dict(conn.execute(select(tasks.c.state, func.count()).where(
                tasks.c.component == component).group_by(tasks.c.state)).all())
            durations = [float(d) for (d,) in conn.execute(
                select(tasks.c.ended_at - tasks.c.started_at).where(
                    tasks.c.component == component, tasks.c.ended_at.is_not(None),
                    tasks.c.started_at.is_not(None),
                    or_(tasks.c.cache_status.is_(None), tasks.c.cache_status != "hit"))
                .order_by(tasks.c.ended_at.desc()).limit(window))]
        if not counts:
            raise NotFoundError(f"component {component!r} has no recorded executions")
        return ComponentMetrics(component, executions=int(sum(counts.values())),
                                succeeded=int(counts.get("SUCCESS", 0)),
                                failed=int(counts.get("FAILED", 0)), durations=durations)

    def known_component(self, component: str) -> bool:
        with self.store._reading() as conn:
            return conn.execute(select(tasks.c.run_id).where(
                tasks.c.component == component).limit(1)).first() is not None


_STATUS_FIELDS = ("run_id", "project", "pipeline", "pipeline_id", "pipeline_version", "state",
                  "params", "config", "source", "tags", "created_at", "started_at", "ended_at",
                  "heartbeat_at", "error", "result_key", "schedule_id", "project_id")


def _run_row(row: Any) -> RunRow:
    fields = row._asdict()
    fields["state"] = RunState(fields["state"])
    return RunRow(**fields)

