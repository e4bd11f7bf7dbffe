"""Face-independent views the TwinGraph face (``/api``), ``/ws`` and ``execute-dynamic`` share.

A workflow is a pipeline and an execution is a run (DESIGN.md §1); this module says how run and
task states are spelled on those faces, what a workflow's ``status`` means, which values an
execution reports as its ``outputs``, how the execution graph is drawn from the lineage, and how
component metrics are computed. Nothing here knows HTTP.

Decisions (docs/decisions/0050-twingraph-face.md):

- Workflow ``status``: ``active`` when the pipeline has an enabled schedule, an unfinished run
  (PENDING/RUNNING), or a run created within ``ACTIVE_WINDOW_SECONDS`` (30 days); otherwise
  ``inactive``. A deleted workflow is gone (no soft delete), so it has no status.
- ``success_rate`` = SUCCESS / (SUCCESS + FAILED); cancelled runs count for neither; ``None``
  when no run has finished.
- Outputs: a Python pipeline's return value while this server process holds it (it drove the
  run); a graph pipeline's (or DAG's) values of its sink nodes, read from the result store.
  Only JSON-encoded values up to ``MAX_INLINE_OUTPUT`` bytes are decoded (never a pickle: its
  bytes could come from anywhere the store is shared); others are shown as a reference
  ``{"hash", "encoding", "size"}``.
- Resource usage: the engine does not measure CPU or memory per task, so per-component figures
  are ``None``; what is measured is the whole server process (``getrusage``), reported under a
  key that says so.
"""

from __future__ import annotations

import asyncio
import os
import resource
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twingraph import serialization
from twingraph.core.jsonview import NOT_PLAIN, plain
from twingraph.core.records import TaskRecord
from twingraph.core.states import RunState, TaskState
from twingraph.engine.engine import Engine
from twingraph.errors import NotFoundError
from twingraph.lineage import run_lineage
from twingraph.service.definitions import is_python
from twingraph.service.events import EventHub, Subscriber
from twingraph.service.runs import RunService
from twingraph.stores.metadata.catalog_store import RunRow, SQLCatalog

ACTIVE_WINDOW_SECONDS = 30 * 24 * 3600
MAX_INLINE_OUTPUT = 1024 * 1024

EXECUTION_STATUS = {RunState.PENDING: "pending", RunState.RUNNING: "running",
                    RunState.SUCCESS: "completed", RunState.FAILED: "failed",
                    RunState.CANCELLED: "cancelled"}
NODE_STATUS = {TaskState.PENDING: "pending", TaskState.QUEUED: "queued",
               TaskState.RUNNING: "running", TaskState.RETRYING: "retrying",
               TaskState.SUCCESS: "completed", TaskState.FAILED: "failed",
               TaskState.SKIPPED: "skipped", TaskState.CANCELLED: "cancelled"}


def execution_status(state: RunState | str) -> str:
    return EXECUTION_STATUS[RunState(state)]


def node_status(state: TaskState | str) -> str:
    return NODE_STATUS[TaskState(state)]


# -- workflows ---------------------------------------------------------------------------------
def success_rate(runs_by_state: Mapping[str, int]) -> float | None:
    ok, failed = runs_by_state.get("SUCCESS", 0), runs_by_state.get("FAILED", 0)
    return ok / (ok + failed) if ok + failed else None


def workflow_status(activity: Mapping[str, Any], now: float) -> str:
    by_state = activity.get("runs_by_state", {})
    if activity.get("enabled_schedules", 0) > 0:
        return "active"
    if by_state.get("PENDING", 0) or by_state.get("RUNNING", 0):
        return "active"
    last = activity.get("last_run_at")
    if last is not None and now - last <= ACTIVE_WINDOW_SECONDS:
        return "active"
    return "inactive"


WORKFLOW_STATUSES = ("active", "inactive")


# -- progress ----------------------------------------------------------------------------------
def node_progress(progress: Mapping[str, Any]) -> dict[str, Any]:
    """``RunService.progress`` counts in the TwinGraph spelling (``*_nodes``)."""
    return {"total_nodes": progress["total_tasks"], "completed_nodes": progress["completed_tasks"],
            "failed_nodes": progress["failed_tasks"], "running_nodes": progress["running_tasks"],
            "pending_nodes": progress["pending_tasks"], "skipped_nodes": progress["skipped_tasks"],
            "percent": progress["percent"]}


def live_progress(engine: Engine, run_id: str) -> dict[str, Any] | None:
    """Node counts of a run this process is driving (from the engine's counters: O(states),
    not O(tasks)); None when the run is not live here."""
    loop = engine.runs.get(run_id)
    if loop is None:
        return None
    counts = loop.state_counts()     # a process task waiting for a worker: queued
    total = sum(counts.values())
    done = counts[TaskState.SUCCESS]
    failed = counts[TaskState.FAILED]
    skipped = counts[TaskState.SKIPPED] + counts[TaskState.CANCELLED]
    running = counts[TaskState.RUNNING]
    finished = done + failed + skipped
    return {"total_nodes": total, "completed_nodes": done, "failed_nodes": failed,
            "running_nodes": running, "pending_nodes": total - finished - running,
            "skipped_nodes": skipped,
            "percent": round(100.0 * finished / total, 2) if total else 0.0}


# -- outputs -----------------------------------------------------------------------------------
def jsonable(value: Any, _within: frozenset[int] = frozenset()) -> Any:
    """``value`` as JSON data: mapping keys as text, what JSON has no type for as its
    ``repr``, a container met again inside itself (a cycle) as its ``repr`` at that point."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in _within:
            return repr(value)
        within = _within | {id(value)}
        if isinstance(value, Mapping):
            return {str(k): jsonable(v, within) for k, v in value.items()}
        if isinstance(value, tuple) and hasattr(value, "_asdict"):
            return jsonable(value._asdict(), within)
        return [jsonable(v, within) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"encoding": "bytes", "size": len(bytes(value))}
    out = plain(value)        # a NumPy or pandas number, an array, a date
    return repr(value) if out is NOT_PLAIN else jsonable(out, _within)


def stored_value(engine: Engine, key: str | None) -> Any:
    """The value stored under ``key`` if it is JSON and small; else a reference to it."""
    if key is None or engine.results is None:
        return None
    meta = engine.results.head(key)
    if meta is None:
        return None
    encoding = (meta.metadata or {}).get("encoding", "bytes")
    if encoding == "json" and meta.size <= MAX_INLINE_OUTPUT:
        data = engine.results.get(key)
        if data is not None:
            return serialization.decode(data, "json")
    return {"hash": meta.content_hash, "encoding": encoding, "size": meta.size}


def sink_tasks(tasks: Sequence[TaskRecord]) -> list[TaskRecord]:
    """Tasks no other task of the run read from (the graph's results)."""
    read = {src for t in tasks for src, _path in (t.inputs or {}).get("deps", ())}
    return [t for t in tasks if t.node_id not in read]


def node_values(engine: Engine, tasks: Sequence[TaskRecord]) -> dict[str, Any]:
    return {t.node_id: stored_value(engine, t.result_key) for t in tasks
            if t.state is TaskState.SUCCESS}


def run_outputs(engine: Engine, catalog: SQLCatalog, result_value: Any, has_result: bool,
                run: RunRow) -> Any:
    """What an execution reports as ``outputs`` (see the module doc); None until SUCCESS."""
    if run.state is not RunState.SUCCESS:
        return None
    python: bool | None = None
    if run.pipeline_id is not None:
        try:
            python = is_python(catalog.get_pipeline(run.pipeline_id).definition)
        except NotFoundError:
            python = None
    if python is not False and has_result:
        return jsonable(result_value)
    if run.result_key is not None:
        return stored_value(engine, run.result_key)
    if python is False or run.source.get("kind") in ("dag", "pipeline"):
        return node_values(engine, sink_tasks(catalog.store.get_tasks(run.run_id)))
    return None


class OutputsCache:
    """Outputs of succeeded runs, which never change: the newest ``size`` of them, so polling
    a finished graph run does not re-read its tasks and result heads on every GET."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: str) -> tuple[bool, Any]:
        with self._lock:
            if run_id not in self._items:
                return False, None
            self._items.move_to_end(run_id)
            return True, self._items[run_id]

    def put(self, run_id: str, value: Any) -> None:
        with self._lock:
            self._items[run_id] = value
            self._items.move_to_end(run_id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


# -- waiting without a thread ------------------------------------------------------------------
TERMINAL_RUN_STATES = frozenset({"SUCCESS", "FAILED", "CANCELLED"})


async def wait_until(hub: EventHub, run_id: str | None, finished: Callable[[], bool],
                     timeout: float | None = None) -> bool:
    """Wait on the event loop, holding no thread, until ``finished()``; False on timeout.

    Woken by ``run_id``'s terminal ``run:status`` event from the hub (after it, the driver
    only records results: ``finished()`` is re-checked every 5 ms). A 1 s re-check is the
    safety net for a run that ends without an event (a driver that failed to start).
    """
    sub = Subscriber()
    if run_id is not None:
        hub.subscribe(run_id, sub)
    loop = asyncio.get_running_loop()
    end = None if timeout is None else loop.time() + timeout
    ended = False
    try:
        while not finished():
            remaining = None if end is None else end - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            if ended:
                await asyncio.sleep(0.005)
                continue
            try:
                ev = await asyncio.wait_for(sub.queue.get(), min(1.0, remaining or 1.0))
            except asyncio.TimeoutError:
                continue
            ended = ev.get("event") == "run:status" and ev.get("status") in TERMINAL_RUN_STATES
        return True
    finally:
        if run_id is not None:
            hub.unsubscribe(run_id, sub)


async def stop_run(runs: RunService, hub: EventHub, run_id: str, reason: str,
                   timeout: float = 10.0) -> RunRow:
    """``RunService.cancel`` without parking a pool thread while a running run winds down:
    a run this process drives is cancelled through the engine (non-blocking) and awaited on
    its terminal event; every other case (PENDING, not yet registered, ended, another process)
    is ``RunService.cancel``'s, which answers at once or raises ``ConflictError``."""
    run = await asyncio.to_thread(runs.catalog.get_run, run_id)
    if run.state is RunState.RUNNING and runs.engine.cancel(run_id, reason):
        # The engine drops the run from ``engine.runs`` after recording its final state.
        await wait_until(hub, run_id, lambda: runs.engine.runs.get(run_id) is None,
                         timeout=timeout)
        return await asyncio.to_thread(runs.catalog.get_run, run_id)
    return await asyncio.to_thread(runs.cancel, run_id, reason)


# -- execution graph ---------------------------------------------------------------------------
def execution_graph(catalog: SQLCatalog, run_id: str) -> dict[str, Any]:
    """Nodes (one per task) and DEPENDS_ON edges of a run, from its lineage."""
    catalog.get_run(run_id)                       # NotFoundError for an unknown id
    vertices, edges = run_lineage(catalog.store, run_id)
    nodes = []
    for v in vertices:
        if v.label != "Component":
            continue
        p = v.properties
        started, ended = p.get("started_at"), p.get("completed_at")
        nodes.append({"id": v.id, "label": p.get("name"), "status": node_status(p["status"]),
                      "platform": p.get("platform"), "started_at": started,
                      "completed_at": ended,
                      "duration": (ended - started) if started is not None and ended is not None
                      else None,
                      "properties": {"hash": p.get("hash"), "cache": p.get("cache")}})
    seen: set[tuple[str, str]] = set()
    out_edges = []
    for e in edges:
        if e.kind != "DEPENDS_ON" or (e.src, e.dst) in seen:
            continue
        seen.add((e.src, e.dst))
        out_edges.append({"from": e.src, "to": e.dst, "label": "data_flow",
                          "properties": {"data_flow": e.properties.get("data_flow")}})
    return {"nodes": nodes, "edges": out_edges}


# -- component metrics -------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (NumPy's default); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


_STARTED = time.monotonic()


def process_usage() -> dict[str, Any]:
    """CPU and memory of this whole server process (every component and the server itself)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime
    uptime = max(time.monotonic() - _STARTED, 1e-9)
    rss = None
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    return {"scope": "server_process", "cpu_seconds": round(cpu, 3),
            "avg_cpu": round(cpu / uptime, 4), "memory_bytes": rss,
            "peak_memory_bytes": ru.ru_maxrss * 1024}     # Linux reports ru_maxrss in KiB


def component_metrics(catalog: SQLCatalog, component: str, *, registered: bool) -> dict[str, Any]:
    """Executions, success rate and duration percentiles of ``component`` over every recorded
    task (memo hits count as executions but not as durations). ``registered`` components with
    no task yet answer zeros; an unknown name is a ``NotFoundError``."""
    try:
        m = catalog.component_metrics(component)
        executions, ok, failed, durations = m.executions, m.succeeded, m.failed, m.durations
    except NotFoundError:
        if not registered:
            raise
        executions, ok, failed, durations = 0, 0, 0, []
    return {"component_id": component, "executions": executions,
            "succeeded": ok, "failed": failed,
            "success_rate": ok / (ok + failed) if ok + failed else None,
            "avg_duration": sum(durations) / len(durations) if durations else None,
            "p95_duration": percentile(durations, 95), "p99_duration": percentile(durations, 99),
            "duration_samples": len(durations),
            "resource_usage": {"avg_cpu": None, "avg_memory": None, "peak_memory": None,
                               "measured_per_component": False,
                               "process": process_usage()}}
