"""A task's row for the metadata store, built from its in-memory state at hand-over time.

Transitions only mark a task dirty; at each hand-over the loop turns every dirty task into ONE
record: a ``TaskRecord`` the first time (it creates the row), a ``TaskUpdate`` after that, plus
an ``AttemptRecord`` for an attempt still running (a long attempt is visible while it runs).
"""

from __future__ import annotations

import traceback
from typing import Any

from twingraph.core.logtext import capped, said, storable
from twingraph.core.records import AttemptRecord, TaskRecord, TaskUpdate
from twingraph.engine.task import Task, QUEUED, RUNNING, SUCCESS, TERMINAL
from twingraph.errors import REMOTE_TRACEBACK, NodeExecutionError


def task_rows(run_id: str, task: Task, out: list[Any], new: list[tuple[Any, ...]] | None = None
              ) -> None:
    """Append ``task``'s row(s) to ``out``. With ``new``, a first row goes there instead, as
    its ``TaskRecord`` field values (to be packed for the writer process: ``core.wire``)."""
    t = task
    ok = t.state is SUCCESS
    err = error_text(t.error) if t.error is not None and not ok else None
    state, attempt, started_at = t.state, t.attempt, t.started_at
    if state is RUNNING and t.mode == "process" and t.job is not None \
            and t.job.on_start is not None and t.job.started_at is None:
        # Handed to the process pool, still waiting for a worker: queued, as before its
        # attempt (a crash now must not count an attempt that never ran; the loop marks it
        # dirty again when a worker takes it)
        state, attempt, started_at = QUEUED, t.attempt - 1, None
    if not t.persisted:
        t.persisted = True
        values = (run_id, t.node_id, t.component, state, t.spec.platform, t.cache_key,
                  t.cache_status, t.cache_reason, t.cache_key if ok else None,
                  t.content_hash if ok else None, attempt, t.fence, t.order,
                  t.inputs_info, t.created_at, started_at, t.ended_at, err)
        if new is not None:
            new.append(values)
        else:
            out.append(TaskRecord(*values))
        t.inputs_info = None           # written: the lineage list is not needed in memory
    else:
        out.append(TaskUpdate(
            run_id, t.node_id, state, t.ended_at or started_at or t.created_at,
            t.fence, attempt or None, t.cache_key, t.cache_status, t.cache_reason,
            t.cache_key if ok else None, t.content_hash if ok else None, err, started_at,
            t.ended_at))
    if t.state in TERMINAL:
        # Final row written: its times are not needed in memory any more (a run of a million
        # tasks keeps every Task; three floats each are 72 bytes).
        t.created_at, t.started_at, t.ended_at = 0.0, None, None
    if state is RUNNING:
        t.attempt_row = t.attempt
        out.append(AttemptRecord(run_id, t.node_id, t.attempt, t.fence, RUNNING,
                                 f"{t.spec.platform}:{t.mode}", t.started_at or 0.0))


def error_text(err: Any) -> str:
    """``"ExcType: message"``; an exception whose ``str()`` raises (user code: a ``__str__``
    reading an attribute never set, returning a non-string) is named, never raised again
    (it failed the run loop: every task ended FAILED, "engine error")."""
    if err is None:
        return ""
    return storable(capped(f"{type(err).__name__}: {message_of(err)}"))


def message_of(err: BaseException) -> str:
    """``str(err)``, or what it raised instead of raising it (``error_text``)."""
    return said(err)


def traceback_text(err: Any) -> str:
    """The traceback an ``error`` event carries (a remote one as the worker sent it)."""
    if err is None:
        return ""
    if isinstance(err, NodeExecutionError) and err.traceback:
        return storable(capped(err.traceback))
    remote = getattr(err, REMOTE_TRACEBACK, None)       # raised in a worker process
    if isinstance(remote, str) and remote:
        return storable(capped(remote))
    return storable(capped("".join(traceback.format_exception(err))))
