"""What the engine writes to and reads from the metadata store: plain frozen records.

The engine batches these and hands them to ``MetadataStore.write`` in order; the store applies a
batch in one transaction. They are messages built on the engine's hot path, so they are plain
slotted dataclasses (not frozen: a frozen dataclass pays a ``object.__setattr__`` per field). Times are POSIX seconds (float); JSON-able dicts only.
Tasks are addressed by ``(run_id, node_id)``; ``node_id`` is unique within a run and stable
across re-executions of the same pipeline (so a resumed run finds its tasks again).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twingraph.core.states import RunState, TaskState


@dataclass(slots=True)
class RunRecord:
    run_id: str
    pipeline: str                       # pipeline name
    state: RunState
    project: str = "default"
    params: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)   # max_parallel, error_handler, no_cache...
    source: dict[str, Any] = field(default_factory=dict)   # how to load it again (file, module, dag)
    pipeline_version: int | None = None
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    result_key: str | None = None
    heartbeat_at: float | None = None


@dataclass(slots=True)
class RunUpdate:
    """Change of a run's state (and the fields that go with it)."""
    run_id: str
    state: RunState
    at: float
    error: str | None = None
    result_key: str | None = None
    # The writing driver's generation (``claim_driver``): a driver a newer one took the run
    # over from is fenced off (its update is dropped). None: unconditional.
    epoch: int | None = None


@dataclass(slots=True)
class RunHeartbeat:
    run_id: str
    at: float
    epoch: int | None = None            # as RunUpdate's


@dataclass(slots=True)
class TaskRecord:
    run_id: str
    node_id: str
    component: str
    state: TaskState = TaskState.PENDING
    platform: str = "local"
    cache_key: str | None = None        # structural key (None until inputs are known)
    cache_status: str | None = None     # 'hit' | 'miss' | 'disabled' | 'resumed'
    cache_reason: str | None = None     # why it hit or missed, in words
    result_key: str | None = None       # key in the result store
    content_hash: str | None = None     # sha256 of the result's encoded bytes
    attempts: int = 0
    fence: int = 0                      # fencing token of the current attempt
    order: int = 0                      # call order within the run (BELONGS_TO component_order)
    inputs: dict[str, Any] = field(default_factory=dict)   # input name -> reference / small value
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None


@dataclass(slots=True)
class TaskUpdate:
    """A task's state change. With ``fence`` set, the store applies it only if ``fence`` is not
    lower than the task's stored fence (a lower one is stale: not applied, reported by
    ``write``); a higher fence raises the stored one."""
    run_id: str
    node_id: str
    state: TaskState
    at: float
    fence: int | None = None
    attempts: int | None = None
    cache_key: str | None = None
    cache_status: str | None = None
    cache_reason: str | None = None
    result_key: str | None = None
    content_hash: str | None = None
    error: str | None = None
    started_at: float | None = None     # explicit times win over the "set when state becomes
    ended_at: float | None = None       # RUNNING / terminal" defaults


@dataclass(slots=True)
class AttemptRecord:
    run_id: str
    node_id: str
    attempt: int                        # 1-based
    fence: int
    state: TaskState                    # RUNNING, then SUCCESS / FAILED / CANCELLED
    executor: str = "local"
    started_at: float = 0.0
    ended_at: float | None = None
    error: str | None = None


@dataclass(slots=True)
class LogRecord:
    run_id: str
    at: float
    level: str                          # debug | info | warning | error
    message: str
    node_id: str | None = None


@dataclass(slots=True)
class EdgeRecord:
    """Lineage edge. DEPENDS_ON: ``src`` fed ``dst`` (properties: data_flow, e.g. the output path).
    BELONGS_TO: task ``src`` belongs to the run's pipeline (properties: component_order)."""
    run_id: str
    src: str
    dst: str
    kind: str = "DEPENDS_ON"
    properties: dict[str, Any] = field(default_factory=dict)


Record = RunRecord | RunUpdate | RunHeartbeat | TaskRecord | TaskUpdate | AttemptRecord | LogRecord | EdgeRecord
