"""Run and task states, and the one table of allowed transitions.

Nothing else assigns a state: callers ask ``transition_run``/``transition_task`` which returns the
new state or raises ``InvalidTransition``. No I/O happens here; the engine persists and emits.
Each face spells states its own way (Tauro ``SUCCESS``, TwinGraph ``completed``, the dynamic
scheduler's ``NodeStatus.COMPLETED``); the mapping lives with the face.
"""

from __future__ import annotations

from enum import Enum

from twingraph.errors import InvalidTransition


class RunState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    # Enum's __hash__ is Python code (hash of the name); the engine keys dicts and sets by
    # state several times per task. The str hash is the same number, computed in C.
    __hash__ = str.__hash__

    @property
    def terminal(self) -> bool:
        return self in _RUN_TERMINAL


class TaskState(str, Enum):
    PENDING = "PENDING"        # known, waiting for inputs
    QUEUED = "QUEUED"          # inputs ready, waiting for a slot
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"      # failed an attempt, waiting for its backoff
    SUCCESS = "SUCCESS"        # ran, or its result was found in the memo (see cache_status)
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"        # an upstream failed (error_handler='continue')
    CANCELLED = "CANCELLED"

    __hash__ = str.__hash__      # see RunState

    @property
    def terminal(self) -> bool:
        return self in _TASK_TERMINAL


_RUN_TERMINAL = frozenset({RunState.SUCCESS, RunState.FAILED, RunState.CANCELLED})
_TASK_TERMINAL = frozenset({TaskState.SUCCESS, TaskState.FAILED, TaskState.SKIPPED,
                            TaskState.CANCELLED})

_RUN_ALLOWED: dict[RunState, frozenset[RunState]] = {
    RunState.PENDING: frozenset({RunState.RUNNING, RunState.CANCELLED, RunState.FAILED}),
    # RUNNING -> RUNNING is a resume (adoption by a new driver).
    RunState.RUNNING: frozenset({RunState.RUNNING, RunState.SUCCESS, RunState.FAILED,
                                 RunState.CANCELLED}),
    RunState.SUCCESS: frozenset(),
    # A failed or cancelled run may be resumed: stored results are reused, the rest re-runs.
    RunState.FAILED: frozenset({RunState.RUNNING}),
    RunState.CANCELLED: frozenset({RunState.RUNNING}),
}

_TASK_ALLOWED: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset({TaskState.QUEUED, TaskState.SUCCESS, TaskState.SKIPPED,
                                  TaskState.CANCELLED, TaskState.FAILED}),
    TaskState.QUEUED: frozenset({TaskState.RUNNING, TaskState.SUCCESS, TaskState.CANCELLED,
                                 TaskState.FAILED, TaskState.SKIPPED}),
    TaskState.RUNNING: frozenset({TaskState.SUCCESS, TaskState.FAILED, TaskState.RETRYING,
                                  TaskState.CANCELLED, TaskState.QUEUED}),
    TaskState.RETRYING: frozenset({TaskState.QUEUED, TaskState.CANCELLED, TaskState.FAILED}),
    TaskState.SUCCESS: frozenset(),
    TaskState.FAILED: frozenset({TaskState.QUEUED}),      # resume re-queues failed tasks
    TaskState.SKIPPED: frozenset({TaskState.QUEUED}),
    TaskState.CANCELLED: frozenset({TaskState.QUEUED}),
}


def transition_run(old: RunState, new: RunState) -> RunState:
    if new not in _RUN_ALLOWED[old]:
        raise InvalidTransition("run", old.value, new.value)
    return new


def transition_task(old: TaskState, new: TaskState) -> TaskState:
    if new not in _TASK_ALLOWED[old]:
        raise InvalidTransition("task", old.value, new.value)
    return new


#: Fencing tokens: driver ``epoch`` (0 for the run's first driver, then one more for each
#: process that resumed or adopted it, claimed in the metadata store) times this, plus the
#: attempt number. Every token of a later driver is higher than any token of an earlier one,
#: so a stalled old driver's late writes are rejected however many attempts either makes
#: (``retry.MAX_ATTEMPTS`` < this). Kept small enough for PostgreSQL's 32-bit integers
#: through 214,747 resumptions of one run.
FENCE_STRIDE = 10_000


def fence(epoch: int, attempt: int) -> int:
    """The fencing token of ``attempt`` of a task under driver ``epoch``."""
    return epoch * FENCE_STRIDE + attempt


def fence_epoch(token: int) -> int:
    """The driver epoch a fencing token was given under."""
    return token // FENCE_STRIDE
