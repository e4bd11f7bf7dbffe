"""A task's runtime state inside one run. Mutated only by the run's loop thread.

The loop's bookkeeping per task is O(its edges): ``waiting`` counts unfinished producers (Kahn),
``dependents`` lists consumers to notify, ``consumers`` counts consumers not yet dispatched so the
in-memory value can be dropped early (it stays reloadable from the result store).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from twingraph.core.states import TaskState

# TaskState's members as module globals, for the run loop's hot path: in CPython 3.11 reading
# ``TaskState.SUCCESS`` goes through the enum metaclass's ``__getattr__`` hook (~70 ns; the loop
# did it ~25 times per task) and ``state.terminal`` is a property; a global is a dict read.
PENDING, QUEUED, RUNNING, RETRYING = (TaskState.PENDING, TaskState.QUEUED, TaskState.RUNNING,
                                      TaskState.RETRYING)
SUCCESS, FAILED, SKIPPED, CANCELLED = (TaskState.SUCCESS, TaskState.FAILED, TaskState.SKIPPED,
                                       TaskState.CANCELLED)
#: The terminal task states (``state in TERMINAL`` is ``state.terminal``, without the call).
TERMINAL = frozenset({SUCCESS, FAILED, SKIPPED, CANCELLED})

UNLOADED: Any = type("Unloaded", (), {"__repr__": lambda self: "<unloaded>"})()
#: ``Task.ref_slots`` of a declared task: a declarative graph's node, whose producers came with
#: it (``BodySide.call_declared``) instead of as futures inside its arguments. Its ``args`` are
#: ``(arguments, parameters, names, producers)``; it runs as ``fn(arguments, parameters,
#: {name: producer's value})``, keyed exactly as if those values had been futures.
DECLARED: Any = ("<declared inputs>",)


class Task:
    __slots__ = ("node_id", "order", "spec", "fn", "args", "kwargs", "mode",
                 "producers", "waiting", "dependents", "consumers", "state", "attempt", "fence",
                 "value", "stored", "content_hash", "cache_key", "cache_status", "cache_reason",
                 "error", "event", "observed", "aliases", "started", "job",
                 "dirty", "attempt_row", "ref_slots", "persisted", "created_at", "started_at", "ended_at",
                 "inputs_info", "scope", "result_md")

    def __init__(self, node_id: str, order: int, spec: Any, fn: Any,
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.node_id = node_id
        self.order = order
        self.spec = spec
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.mode = "thread"
        self.producers: list[Task] = []
        self.waiting = 0
        self.dependents: list[Task] = []
        self.consumers = 0
        self.state = PENDING
        self.attempt = 0
        self.fence = 0
        self.value: Any = UNLOADED
        self.stored = False
        self.content_hash: str | None = None
        self.cache_key: str | None = None
        self.cache_status: str | None = None
        self.cache_reason: str | None = None
        self.error: BaseException | None = None
        self.event: threading.Event | None = None
        self.observed = False          # the pipeline body saw this task's failure
        self.aliases: list[Task] | None = None
        self.started = 0.0
        self.job: Any = None
        self.dirty = False             # changed since the last hand-over to the recorder
        self.attempt_row = 0           # last attempt that has a row in the attempts table
        self.ref_slots: Sequence[int | str] = ()   # argument positions / names holding futures
        self.persisted = False         # its TaskRecord has been handed over
        self.created_at = 0.0          # wall-clock times for the record
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.inputs_info: Any = None
        # A declared node's own metadata, stored with its result (``NodeDefinition.metadata``)
        self.result_md: dict[str, Any] | None = None
        self.scope: Any = None         # a nested pipeline's (engine.scopes), if it has settings

    @property
    def component(self) -> str:
        return self.spec.name  # type: ignore[no-any-return]

    def result_view(self, value: Any) -> dict[str, Any]:
        """The documented result shape of a component call (declarative operations: the value)."""
        if self.spec.raw_result:
            return value
        return {"outputs": value, "hash": self.cache_key}

    def __repr__(self) -> str:
        return f"<Task {self.node_id} {self.state.value}>"


class Job:
    """What the executor runs (satisfies ``ports.Job``). Executors set ``started_at``
    (``time.monotonic()``) when the job really starts; a task's timeout counts from then, not
    from the moment it was handed over (a job may wait for a free worker or a process spawn)."""
    __slots__ = ("node_id", "fence", "fn", "args", "kwargs", "mode", "task", "started_at",
                 "on_log", "on_start", "executor", "stop_flag", "code")

    def __init__(self, task: Task, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                 mode: str) -> None:
        self.node_id, self.fence, self.task = task.node_id, task.fence, task
        self.fn, self.args, self.kwargs, self.mode = fn, args, kwargs, mode
        self.started_at: float | None = None
        self.on_log: Any = None
        self.on_start: Any = None      # a process job: the loop hears when a worker took it
        self.executor: Any = None      # the executor it was submitted to (aborts go there)
        self.stop_flag: Any = None     # an inline call taken over: its core.stop flag
        # The user code it runs, whose modules a worker process is sent as this process
        # versioned them (``codeversion.code_modules``); None: as the worker imports them.
        self.code: Any = None
