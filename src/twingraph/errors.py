"""The one exception tree of TwinGraph.

Every error TwinGraph raises on purpose is a ``TwinGraphError``. The dynamic-scheduler document's
hierarchy (``DynamicSchedulerError`` and its four children) is kept as written and hangs under it::

    TwinGraphError                      catch-all for anything TwinGraph raises on purpose
    ├── ConfigurationError              bad settings, a missing optional extra (names the pip command)
    ├── InvalidTransition               a state change the transition table forbids (a bug, not input)
    ├── NotFoundError                   a run / pipeline / result id that does not exist
    ├── ConflictError                   the change clashes with stored state (duplicate name, wrong state)
    ├── StreamError                     the streaming engine: a job failed, bad job graph, bad state
    │   ├── JobFailed                   a streaming job's operator raised; carries job_name, operator
    │   ├── CheckpointError             a checkpoint/savepoint could not be written, read or restored
    │   └── StateError                  keyed state used outside a keyed context, or an unknown state
    ├── PipelineError                   a pipeline run ended badly; carries run_id
    │   ├── PipelineFailed              one or more tasks failed (``failures``: node -> error text)
    │   ├── PipelineTimeout             the pipeline's own ``timeout`` elapsed
    │   └── PipelineCancelled           cancelled by the user or by ``error_handler='fail'``
    └── DynamicSchedulerError           the document's base class
        ├── StorageError                a result store could not store/read; a corrupted value
        │   └── IntegrityError          stored bytes do not match their content hash
        ├── NodeExecutionError          a task raised, timed out or was cancelled
        │   ├── TaskTimeout             per-task timeout elapsed (also a ``TimeoutError``)
        │   └── TaskCancelled           the task was cancelled before it finished
        ├── SchedulingError             the engine cannot schedule the work
        │   ├── ExecutorUnavailable     a component asks for a platform with no executor here
        │   ├── ResourceUnavailable     a local component asks for more CPU/memory/GPU than the machine has
        │   └── StaleAttemptError       a late result from a fenced-off attempt was rejected
        └── ValidationError             bad definitions or parameters (also a ``ValueError``)
            └── GraphValidationError    cycles, unknown operations, dangling references (``nodes``)

Outside the tree: ``RunStopped``, a ``BaseException`` raised inside a pipeline body that went
on after its run stopped, and ``NestedPipelineStopped``, one raised inside a nested pipeline's
body that went on after that pipeline's own timeout (its call turns it into ``PipelineTimeout``).

Catch ``ValidationError`` around user-supplied definitions, ``PipelineError`` around running a
pipeline, ``StorageError`` around direct use of a result store, ``StreamError`` around
``StreamExecutionEnvironment.execute()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class TwinGraphError(Exception):
    """Base class of every error TwinGraph raises on purpose."""


class RunStopped(BaseException):
    """Raised inside a pipeline body that went on after its run stopped (its timeout, a
    cancel) and did not return within a grace period (``engine.bodystop``). Not a
    ``TwinGraphError``: like ``KeyboardInterrupt`` it is a ``BaseException``, so a body's
    ``except Exception`` does not swallow it (its ``finally`` blocks still run)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or ("the run stopped and its body went on past the grace "
                                    "period: stopped here",)))


class NestedPipelineStopped(RunStopped):
    """Raised inside the body of a nested pipeline (one called in a running pipeline) that went
    on past its own ``timeout`` and the grace period. The nested pipeline's call catches it and
    raises ``PipelineTimeout`` to the body that called it, which may handle it and go on: the
    run is not over."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or ("the nested pipeline timed out and its body went on past "
                                    "the grace period: stopped here",)))


class ConfigurationError(TwinGraphError):
    """Settings are wrong or an optional dependency is missing."""


class InvalidTransition(TwinGraphError):
    """A state change that the transition table forbids."""

    def __init__(self, kind: str, old: str, new: str) -> None:
        super().__init__(f"invalid {kind} transition {old} -> {new}")
        self.kind, self.old, self.new = kind, old, new


class NotFoundError(TwinGraphError, LookupError):
    """The named object does not exist."""


class ConflictError(TwinGraphError):
    """The request clashes with what is stored: a duplicate name, or an object in the wrong
    state for the operation (starting a run that is not PENDING)."""


class StreamError(TwinGraphError):
    """The streaming engine could not build or run a job as asked."""


class JobFailed(StreamError):
    """A streaming job stopped because a user function or connector raised (the cause is chained)."""

    def __init__(self, message: str, *, job_name: str = "", operator: str = "") -> None:
        super().__init__(message)
        self.job_name, self.operator = job_name, operator


class CheckpointError(StreamError):
    """A checkpoint or savepoint could not be written, found, read or applied to this job."""


class StateError(StreamError):
    """Keyed state was used outside a keyed context, or a state name was declared twice."""


class PipelineError(TwinGraphError):
    """A pipeline run did not succeed."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class PipelineFailed(PipelineError):
    """One or more tasks of the run failed; ``failures`` maps node id to the error text."""

    def __init__(self, message: str, *, run_id: str | None = None,
                 failures: Mapping[str, str] | None = None) -> None:
        super().__init__(message, run_id=run_id)
        self.failures = dict(failures or {})


class PipelineTimeout(PipelineError, TimeoutError):
    """The pipeline's own timeout elapsed; running tasks were cancelled."""


class PipelineCancelled(PipelineError):
    """The run was cancelled."""


class DynamicSchedulerError(TwinGraphError):
    """Base exception for the dynamic scheduler (as in the dynamic-scheduler document)."""


class StorageError(DynamicSchedulerError):
    """Storage-related errors: a write that did not happen, a read that cannot be trusted."""


class StoreUnavailable(StorageError):
    """The store cannot be reached now (its server down or restarting, the connection lost):
    worth trying again for a while, where another ``StorageError`` is not."""


class IntegrityError(StorageError):
    """Stored bytes do not match their recorded content hash; nothing is returned."""

    def __init__(self, node_id: str, expected: str, actual: str) -> None:
        super().__init__(f"result {node_id!r} is corrupted: content hash {actual} != recorded {expected}")
        self.node_id, self.expected, self.actual = node_id, expected, actual


class NodeExecutionError(DynamicSchedulerError):
    """A node (task) failed: it raised, timed out or was cancelled."""

    def __init__(self, message: str, *, node_id: str | None = None,
                 error_type: str | None = None, traceback: str | None = None,
                 error_types: tuple[str, ...] = ()) -> None:
        """``error_type``: the class name of the error that stood behind this one, when that
        error could not travel itself (from a worker process); ``error_types``: the names of
        all its classes (``name`` and ``module.qualname`` each), for retry rules by class."""
        super().__init__(message)
        self.node_id, self.error_type, self.traceback = node_id, error_type, traceback
        self.error_types = error_types


class TaskTimeout(NodeExecutionError, TimeoutError):
    """The task's timeout elapsed. A process task was killed; a thread task was abandoned."""

    def __init__(self, node_id: str, timeout_s: float, *, killed: bool,
                 inline: bool = False) -> None:
        how = ("killed" if killed else
               "not stopped: it ran inline, on the scheduler thread, to its end; its result "
               "is discarded" if inline else "abandoned (threads cannot be killed)")
        super().__init__(f"task {node_id!r} timed out after {timeout_s:g}s and was {how}",
                         node_id=node_id, error_type="TaskTimeout")
        self.timeout_s, self.killed = timeout_s, killed


class MemoryLimitExceeded(NodeExecutionError, MemoryError):
    """A task running in a worker process with a memory limit needed more than the limit
    (``executors.processes``, decision 0076). Retrying the same task with the same inputs
    fails the same way. ``limit_bytes`` is the pool's limit."""

    def __init__(self, node_id: str, limit_bytes: int, detail: str = "") -> None:
        super().__init__(f"node {node_id!r} exceeded its memory limit of "
                         f"{limit_bytes / 2**20:g} MiB{f' ({detail})' if detail else ''}; its "
                         "worker process was replaced",
                         node_id=node_id, error_type="MemoryLimitExceeded")
        self.limit_bytes, self.detail = limit_bytes, detail

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.node_id, self.limit_bytes, self.detail)


class TaskCancelled(NodeExecutionError):
    """The task was cancelled before it finished."""


class SchedulingError(DynamicSchedulerError):
    """The engine cannot schedule the work as asked."""


class ExecutorUnavailable(SchedulingError):
    """A component asks for a platform that has no executor in this installation."""

    def __init__(self, platform: str, components: Iterable[str], *,
                 available: Iterable[str] = ("local",), where: str = "") -> None:
        names = sorted(set(components))
        have = ", ".join(repr(p) for p in sorted(set(available)))
        super().__init__(
            f"no executor for platform {platform!r} (needed by {', '.join(names)}); "
            f"{where + '; ' if where else ''}"
            f"available here: {have}. The {platform} executor is not installed in this build, "
            "and TwinGraph never runs such a component on another platform in its place.")
        self.platform, self.components = platform, names


class ResourceUnavailable(SchedulingError):
    """A local component asks for more CPU, memory or GPUs than this machine has."""

    def __init__(self, components: Iterable[str], over: Iterable[tuple[str, str, str]]) -> None:
        names = sorted(set(components))
        what = "; ".join(f"{name} {asked} (this machine has {have})" for name, asked, have in over)
        super().__init__(
            f"{', '.join(names)} asks for {what}. It would never start here: give the engine "
            "more (Engine(local_resources=...) or $TWINGRAPH_LOCAL_RESOURCES, e.g. "
            "'cpu=8,memory=16Gi,gpu=1') or ask for less.")
        self.components = names


class StaleAttemptError(SchedulingError):
    """A result arrived from an attempt whose fencing token is no longer current."""

    def __init__(self, task_id: str, fence: int, current: int | None) -> None:
        super().__init__(f"stale attempt for task {task_id}: fence {fence}, current {current}")
        self.task_id, self.fence, self.current = task_id, fence, current


class ValidationError(DynamicSchedulerError, ValueError):
    """A definition or parameter is invalid. Nothing was run or written."""


class GraphValidationError(ValidationError):
    """A DAG is invalid; ``nodes`` names the offending nodes (their ids, sorted), ``reason``
    says how, and ``why`` maps a node to what is wrong with it where there is more to say (the
    missing dependencies it names, its unknown operation); the message shows both."""

    def __init__(self, reason: str, nodes: Iterable[str], detail: str = "", *,
                 why: Mapping[str, str] | None = None) -> None:
        self.reason, self.nodes = reason, sorted({str(n) for n in nodes})
        self.why = dict(why or {})
        shown = [f"{n} ({self.why[n]})" if n in self.why else n for n in self.nodes]
        super().__init__(f"{reason}: {', '.join(shown)}" + (f" ({detail})" if detail else ""))


#: Attribute under which an exception raised in another process carries its traceback text.
REMOTE_TRACEBACK = "twingraph_traceback"


def remote_traceback(exc: BaseException, text: str) -> None:
    """Attach ``text``, the traceback of ``exc`` where it was raised (a worker process): the
    traceback object does not travel with the pickled exception. Read by
    ``engine.snapshot.traceback_text``; an exception that takes no attributes keeps none."""
    try:
        setattr(exc, REMOTE_TRACEBACK, text)
    except (AttributeError, TypeError):
        pass
