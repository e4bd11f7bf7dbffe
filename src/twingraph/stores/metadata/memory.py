"""``MemoryMetadataStore``: the metadata store in a few dicts, for tests (users' and ours).

Same contract as ``SQLMetadataStore`` and checked by the same suite: batches are atomic (an undo
log restores every change when a record fails), fencing and timestamps follow
``_semantics`` (the code the SQL store uses too), JSON fields come back as a JSON column would
give them, the same errors are raised. Records are mutable, so what goes in and what comes out
are copies: a caller cannot change the store behind its back. Thread-safe by one lock.
Nothing is persisted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from copy import deepcopy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

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
from twingraph.core.states import RunState, TaskState, fence_epoch
from twingraph.errors import ConflictError, NotFoundError, ValidationError
from twingraph.stores.metadata import _semantics as sem
from twingraph.stores.metadata.catalog import (
    PipelineRecord,
    PipelineVersionRecord,
    ProjectRecord,
    new_id,
)

_MISSING = object()


@dataclass
class _Undo:
    """Inverse operations of one batch, replayed backwards on failure."""
    entries: list[tuple[Any, Any, Any]] = field(default_factory=list)

    def set(self, container: dict[Any, Any], key: Any, value: Any) -> None:
        self.entries.append((container, key, container.get(key, _MISSING)))
        container[key] = value

    def append(self, container: list[Any], value: Any) -> None:
        self.entries.append((container, None, len(container)))
        container.append(value)

    def rollback(self) -> None:
        for container, key, old in reversed(self.entries):
            if isinstance(container, list):
                del container[old:]
            elif old is _MISSING:
                container.pop(key, None)
            else:
                container[key] = old


class MemoryMetadataStore:
    """In-memory ``MetadataStore`` with the catalog methods of ``SQLMetadataStore``."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._runs: dict[str, RunRecord] = {}
        self._epochs: dict[str, int] = {}          # driver epochs claimed (claim_driver)
        self._tasks: dict[str, dict[str, TaskRecord]] = {}
        self._attempts: dict[tuple[str, str, int], AttemptRecord] = {}
        self._logs: dict[str, list[LogRecord]] = {}
        self._edges: dict[str, list[EdgeRecord]] = {}
        self._edge_digests: dict[tuple[str, str], None] = {}
        self._projects: dict[str, ProjectRecord] = {}
        self._pipelines: dict[tuple[str, str], PipelineRecord] = {}
        self._versions: dict[str, list[PipelineVersionRecord]] = {}

    def close(self) -> None:
        """Nothing to release; here so code can close any store."""

    # -- the MetadataStore port ------------------------------------------------------------

    def write(self, batch: Sequence[Record]) -> list[tuple[str, str]]:
        stale: list[tuple[str, str]] = []
        with self._lock:
            undo = _Undo()
            try:
                for rec in batch:
                    self._apply(rec, undo, stale)
            except BaseException:
                undo.rollback()
                raise
        return stale

    def _apply(self, rec: Record, undo: _Undo, stale: list[tuple[str, str]]) -> None:
        for name in getattr(rec, "__dataclass_fields__", ()):
            value = getattr(rec, name)
            if type(value) is str and not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:     # as the SQL stores refuse it
                    raise ValidationError(
                        f"text that is not valid UTF-8 cannot be stored ({type(rec).__name__}."
                        f"{name}: {exc}); escape it first (twingraph.core.logtext.storable)"
                    ) from None
        if isinstance(rec, RunRecord):
            sem.check_times("RunRecord", rec.run_id, rec.created_at, rec.started_at,
                            rec.ended_at, rec.heartbeat_at)
            self._ensure_project(rec.project, undo)
            run = replace(rec, state=sem.run_state(rec.state), params=sem.json_copy(rec.params),
                          config=sem.json_copy(rec.config), source=sem.json_copy(rec.source))
            undo.set(self._runs, rec.run_id, run)
            for container in (self._tasks, self._logs, self._edges):
                if rec.run_id not in container:
                    undo.set(container, rec.run_id, {} if container is self._tasks else [])
        elif isinstance(rec, RunUpdate):
            sem.check_times("RunUpdate", rec.run_id, rec.at)
            old_run = self._run(rec.run_id, "RunUpdate")
            if sem.superseded(rec.epoch, self._epochs.get(rec.run_id, 0)):
                return             # a driver the run was taken over from: fenced off
            fields = sem.run_update_fields(rec, old_run.started_at)
            fields["state"] = sem.run_state(fields["state"])
            undo.set(self._runs, rec.run_id, replace(old_run, **fields))
        elif isinstance(rec, RunHeartbeat):
            sem.check_times("RunHeartbeat", rec.run_id, rec.at)
            old_run = self._run(rec.run_id, "RunHeartbeat")
            if not sem.superseded(rec.epoch, self._epochs.get(rec.run_id, 0)):
                undo.set(self._runs, rec.run_id, replace(old_run, heartbeat_at=rec.at))
        elif isinstance(rec, TaskRecord):
            sem.check_task_values("TaskRecord", rec.run_id, rec.node_id, rec.created_at,
                                  rec.started_at, rec.ended_at, rec.cache_status)
            self._run(rec.run_id, "TaskRecord")
            tasks = self._tasks[rec.run_id]
            task = replace(rec, state=sem.task_state(rec.state), inputs=sem.json_copy(rec.inputs))
            old_task = tasks.get(rec.node_id)
            if old_task is None and fence_epoch(task.fence) < self._epochs.get(rec.run_id, 0):
                stale.append((rec.run_id, rec.node_id))
                return             # a first row of a driver the run was taken over from
            if old_task is not None:
                if task.fence < old_task.fence:
                    return         # a taken-over driver's late first row: fenced off
                task = replace(task, created_at=old_task.created_at)
            undo.set(tasks, rec.node_id, task)
        elif isinstance(rec, TaskUpdate):
            self._task_update(rec, undo, stale)
        elif isinstance(rec, AttemptRecord):
            sem.check_attempt(rec)
            if rec.node_id not in self._tasks.get(rec.run_id, {}):
                raise NotFoundError(f"AttemptRecord for unknown task {rec.node_id!r} of run {rec.run_id!r}")
            at = (rec.run_id, rec.node_id, rec.attempt)
            old = self._attempts.get(at)
            if not sem.attempts_to_write([rec], lambda run: self._epochs.get(run, 0)) \
                    or (old is not None and rec.fence < old.fence):
                return                 # a superseded driver's, or below the stored fence
            undo.set(self._attempts, at, replace(rec, state=sem.task_state(rec.state)))
        elif isinstance(rec, LogRecord):
            sem.check_log(rec)
            self._run(rec.run_id, "LogRecord")
            undo.append(self._logs[rec.run_id], replace(rec, level=sem.normalize_level(rec.level)))
        elif isinstance(rec, EdgeRecord):
            sem.check_edge(rec)
            self._run(rec.run_id, "EdgeRecord")
            key = (rec.run_id, sem.edge_digest(rec))
            if key not in self._edge_digests:
                undo.set(self._edge_digests, key, None)
                undo.append(self._edges[rec.run_id],
                            replace(rec, properties=sem.json_copy(rec.properties)))
        else:
            raise ValidationError(f"not a metadata record: {type(rec).__name__}")

    def _task_update(self, rec: TaskUpdate, undo: _Undo, stale: list[tuple[str, str]]) -> None:
        sem.check_task_values("TaskUpdate", rec.run_id, rec.node_id, rec.at, rec.started_at,
                              rec.ended_at, rec.cache_status)
        tasks = self._tasks.get(rec.run_id, {})
        task = tasks.get(rec.node_id)
        if task is None:
            if rec.fence is not None and \
                    fence_epoch(rec.fence) < self._epochs.get(rec.run_id, 0):
                stale.append((rec.run_id, rec.node_id))     # its first row was fenced off
                return
            raise NotFoundError(f"TaskUpdate for unknown task {rec.node_id!r} of run {rec.run_id!r}")
        net: dict[str, Any] = {}
        if not sem.fold_task_update(sem.TaskCursor(task.fence, task.started_at), rec, net):
            stale.append((rec.run_id, rec.node_id))
            return
        net["state"] = sem.task_state(net["state"])
        undo.set(tasks, rec.node_id, replace(task, **net))

    def _run(self, run_id: str, what: str) -> RunRecord:
        run = self._runs.get(run_id)
        if run is None:
            raise NotFoundError(f"{what} for unknown run {run_id!r}")
        return run

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            return deepcopy(self._runs.get(run_id))

    def claim_driver(self, run_id: str, *, heartbeat: Any = ..., now: float | None = None,
                     running: bool = False, only_running: bool = False) -> int:
        with self._lock:
            rec = self._runs.get(run_id)
            if rec is None:
                raise NotFoundError(f"run {run_id!r} not found")
            if (heartbeat is not ... and rec.heartbeat_at != heartbeat) or \
                    (only_running and rec.state is not RunState.RUNNING):
                raise ConflictError(f"run {run_id!r} was claimed by another driver "
                                    "meanwhile; not driving it twice")
            if now is not None:
                rec = self._runs[run_id] = replace(rec, heartbeat_at=now)
            if running:
                self._runs[run_id] = replace(rec, state=RunState.RUNNING, ended_at=None,
                                             error=None)
            epoch = self._epochs[run_id] = self._epochs.get(run_id, 0) + 1
            return epoch

    def driver_epoch(self, run_id: str) -> int | None:
        with self._lock:
            return self._epochs.get(run_id, 0) if run_id in self._runs else None

    def list_runs(self, *, pipeline: str | None = None, state: str | None = None,
                  limit: int | None = 50, offset: int = 0,
                  project: str | None = None) -> list[RunRecord]:
        sem.check_paging(limit, offset)
        wanted = sem.run_state_filter(state)
        with self._lock:
            found = [r for r in self._runs.values()
                     if (pipeline is None or r.pipeline == pipeline)
                     and (wanted is None or r.state.value == wanted)
                     and (project is None or r.project == project)]
        found.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        return deepcopy(found[offset:None if limit is None else offset + limit])

    def find_run_ids(self, prefix: str, *, limit: int = 10) -> list[str]:
        sem.check_prefix(prefix, limit)
        with self._lock:
            return sorted(r for r in self._runs if r.startswith(prefix))[:limit]   # code points

    def get_tasks(self, run_id: str, *, limit: int | None = None,
                  offset: int = 0) -> list[TaskRecord]:
        sem.check_paging(limit, offset)
        with self._lock:
            found = list(self._tasks.get(run_id, {}).values())
        found.sort(key=lambda t: (t.order, t.node_id))
        return deepcopy(found[offset:None if limit is None else offset + limit])

    def task_counts(self, run_id: str) -> dict[TaskState, int]:
        with self._lock:
            return dict(Counter(t.state for t in self._tasks.get(run_id, {}).values()))

    def get_logs(self, run_id: str, *, node_id: str | None = None, level: str | None = None,
                 limit: int | None = 1000, offset: int = 0) -> list[LogRecord]:
        sem.check_paging(limit, offset)
        levels = None if level is None else sem.levels_at_or_above(level)
        with self._lock:
            found = [r for r in self._logs.get(run_id, [])
                     if (node_id is None or r.node_id == node_id)
                     and (levels is None or r.level in levels)]
        found.sort(key=lambda r: r.at)    # stable: equal times keep write order, as the SQL id
        return deepcopy(found[offset:None if limit is None else offset + limit])

    def get_edges(self, run_id: str) -> list[EdgeRecord]:
        with self._lock:
            return deepcopy(self._edges.get(run_id, []))

    # -- beyond the port -------------------------------------------------------------------

    def get_attempts(self, run_id: str, node_id: str | None = None) -> list[AttemptRecord]:
        with self._lock:
            found = [a for (r, n, _), a in self._attempts.items()
                     if r == run_id and (node_id is None or n == node_id)]
        return deepcopy(sorted(found, key=lambda a: (a.node_id, a.attempt)))

    def ensure_project(self, name: str) -> str:
        with self._lock:
            return self._ensure_project(name, _Undo())

    def _ensure_project(self, name: str, undo: _Undo) -> str:
        project = self._projects.get(name)
        if project is None:
            now = self._clock()
            project = ProjectRecord(id=new_id("proj"), name=name, created_at=now, updated_at=now)
            undo.set(self._projects, name, project)
        return project.id

    def get_project(self, name: str) -> ProjectRecord | None:
        with self._lock:
            return self._projects.get(name)

    def upsert_pipeline(self, project: str, name: str, definition: dict[str, Any], *,
                        description: str | None = None, schedule: str | None = None,
                        tags: list[Any] | None = None,
                        source_hash: str | None = None) -> tuple[str, int]:
        definition = sem.json_copy(definition)
        if not isinstance(definition, dict):
            raise ValidationError("a pipeline definition is a JSON object")
        tags = None if tags is None else sem.json_copy(tags)
        now = self._clock()
        with self._lock:
            project_id = self._ensure_project(project, _Undo())
            old = self._pipelines.get((project, name))
            if old is None:
                pipe = PipelineRecord(id=new_id("pipe"), project_id=project_id, project=project,
                                      name=name, definition=definition, current_version=0,
                                      created_at=now, updated_at=now)
            else:
                pipe = old
            versions = self._versions.setdefault(pipe.id, [])
            current = versions[-1] if versions else None
            changes: dict[str, Any] = {
                key: value for key, value in
                (("description", description), ("schedule", schedule), ("tags", tags))
                if value is not None}
            if current is None or current.definition != definition or (
                    source_hash is not None and source_hash != current.source_hash):
                version = pipe.current_version + 1
                versions.append(PipelineVersionRecord(pipe.id, version, definition,
                                                      source_hash, now))
                changes.update(definition=definition, current_version=version)
            if changes:
                pipe = replace(pipe, updated_at=now, **changes)
            self._pipelines[(project, name)] = pipe
            return pipe.id, pipe.current_version

    def get_pipeline(self, project: str, name: str) -> PipelineRecord | None:
        with self._lock:
            return self._pipelines.get((project, name))

    def get_pipeline_versions(self, pipeline_id: str) -> list[PipelineVersionRecord]:
        with self._lock:
            return list(self._versions.get(pipeline_id, []))
