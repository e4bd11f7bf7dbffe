"""Nested pipelines: a pipeline called inside a running one, with settings of its own.

A nested call runs its body inline, as part of the running pipeline (one run, one lineage, one
resume), and the tasks it submits belong to its *scope*. The settings its decorator was given
apply to them (decision 0004); the ones left at their defaults are the enclosing pipeline's:

* ``max_parallel``: at most this many of the scope's tasks run at once (the run's own limit
  still holds: a scope cannot raise it). A task over the limit is parked on the scope and goes
  back to the ready queue when one of the scope's tasks stops running.
* ``timeout``: the scope's tasks must all finish within this many seconds of the call. When it
  passes, what is left of them is cancelled (running ones killed or abandoned, as a run's
  timeout does) and the scope has failed. A body still busy in its own code ``GRACE`` seconds
  later gets ``NestedPipelineStopped`` raised in it (``bodystop``, as a run's body gets
  ``RunStopped``), and the call raises ``PipelineTimeout`` to the body that made it.
* ``error_handler`` (with ``error_config``): decides about a failure of one of the scope's
  tasks. 'continue' skips what depends on it; 'fail' cancels the scope's other tasks and the
  scope has failed; 'retry' gives its tasks without a policy a default one; 'custom' calls the
  handler and continues if ``continue_on_error``. A scope without a handler of its own leaves
  the decision to the enclosing one.

A scope that has failed is a failure of the enclosing pipeline: its handler decides in turn
('continue' skips what depends on the scope's failed and cancelled tasks, 'fail' ends the
enclosing scope, or the run). Tasks the scope's body submits after it failed are cancelled.

This module holds the scope itself and the body thread's current scope; ``RunLoop`` applies
them (``ScopeSide``, mixed in, runs on the loop's thread).
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import FrameType
from typing import Any

from twingraph.core.records import LogRecord
from twingraph.engine.bodystop import HARD_STOPS, BodyWatch, passes_through
from twingraph.engine.task import CANCELLED, QUEUED, TERMINAL, Task
from twingraph.errors import NestedPipelineStopped, PipelineTimeout, TaskCancelled

#: Held while a timed call closes (``run_nested``) and while its timeout is decided
#: (``_scope_timed_out``): a timeout taken as the body returned was recorded after the call
#: had returned its value, and failed the run with a failure nobody could catch.
_CLOSING = threading.Lock()

#: The body thread's innermost scope (``nested``), read by ``BodySide.call``.
_local = threading.local()


class Scope:
    """One call of a nested pipeline that has settings of its own, in one run."""
    __slots__ = ("loop", "name", "parent", "max_parallel", "error_handler", "error_config",
                 "timeout", "started", "tasks", "active", "parked", "ended", "closed",
                 "timed", "failure_key", "watch", "__weakref__")

    def __init__(self, loop: Any, name: str, parent: Scope | None, settings: Mapping[str, Any],
                 started: float) -> None:
        self.loop, self.name, self.parent = loop, name, parent
        self.max_parallel: int | None = settings.get("max_parallel")
        self.error_handler: str | None = settings.get("error_handler")
        self.error_config: Mapping[str, Any] = settings.get("error_config") or {}
        self.timeout: float | None = settings.get("timeout")
        self.started = started                  # the loop clock's monotonic time of the call
        self.tasks: list[Task] = []             # submitted in it (its nested scopes' too)
        self.active: set[Task] = set()          # of those, the ones running
        self.parked: deque[Task] = deque()      # queued ones waiting for its max_parallel
        self.ended: str | None = None           # why it failed (then it takes no more tasks)
        self.closed = False                     # its body has returned
        self.timed = False                      # its timeout's timer is set
        self.failure_key: str | None = None     # its entry in the run's failures (timed out)
        self.watch: BodyWatch | None = None     # its body's, when it has a timeout (``run_nested``)

    def chain(self) -> Iterator[Scope]:
        """This scope and the ones around it, innermost first."""
        s: Scope | None = self
        while s is not None:
            yield s
            s = s.parent

    def __repr__(self) -> str:
        return f"<Scope {self.name}>"


def current(loop: Any) -> Scope | None:
    """The innermost scope open on this thread for ``loop``'s run, if any."""
    scope: Scope | None = getattr(_local, "scope", None)
    return scope if scope is not None and scope.loop is loop else None


@contextmanager
def nested(loop: Any, name: str, settings: Mapping[str, Any],
           entry: FrameType | None = None) -> Iterator[Scope]:
    """While the body of nested pipeline ``name`` runs on this thread, the tasks it submits
    to ``loop`` belong to a new scope with ``settings`` (only the ones its decorator set).
    With a timeout, its timer starts now (tasks or not), and the body called from frame
    ``entry`` is watched: stopped if it goes on past the timeout (``run_nested``)."""
    parent = current(loop)
    scope = Scope(loop, name, parent, settings, loop.clock.monotonic())
    if scope.timeout is not None and entry is not None:
        scope.watch = BodyWatch(threading.get_ident(), entry, NestedPipelineStopped)
        loop.inbox.put(("scope", weakref.ref(scope)))    # (gone when taken: no timer)
    before = getattr(_local, "scope", None)
    _local.scope = scope
    try:
        yield scope
    finally:
        _local.scope = before
        scope.closed = True     # read by the loop when the timeout passes


@passes_through
def run_nested(loop: Any, name: str, settings: Mapping[str, Any], fn: Callable[..., Any],
               args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """Call nested pipeline ``name``'s body ``fn`` in a scope of ``loop``'s run. If its
    timeout passes, the call raises ``PipelineTimeout``: a body that went on past it is
    stopped (``NestedPipelineStopped``, raised in it ``GRACE`` seconds later), one that
    returned late is not given its value. That is a failure of the run the scope's failure
    already is, which the calling body handles by catching it (as it would a future of the
    scope's); one the nested body handled itself (it caught a cancelled future of its own)
    is not raised again."""
    with nested(loop, name, settings, sys._getframe()) as scope:
        watch = scope.watch
        if watch is None:
            return fn(*args, **kwargs)
        stopped = False
        try:
            value = fn(*args, **kwargs)
        except NestedPipelineStopped:
            with watch.lock:            # (the stopper sends and says so under it)
                mine = watch.sent
            if not mine:
                raise               # a pipeline around this one timed out: its to end
            stopped = True
        finally:
            # first: nothing is raised in it after this (one sent as the body returned is
            # taken back, or caught here, or raised as settle is called: caught, and settled
            # again); then the watch goes (the scope may be kept)
            while True:
                try:
                    stopped = watch.settle() or stopped
                    break
                except NestedPipelineStopped:
                    stopped = True
            scope.watch = None
        with _CLOSING:      # closed, or timed out: one or the other, as the loop sees it
            scope.closed = True
            key = scope.failure_key
        if not stopped and (key is None or key in loop.observed_failures):
            return value
        if key is not None:
            loop.observed_failures.add(key)
        error = PipelineTimeout(f"pipeline {name} {scope.ended or 'timed out'}; its body "
                                + ("went on and was stopped" if stopped else
                                   "returned after that"), run_id=loop.run_id)
        error.scope_failure = key      # type: ignore[attr-defined]
        raise error


class ScopeSide:
    """Mixed into ``RunLoop``: the loop thread's side of scopes (see the module's text)."""
    ready: deque[Task]
    out: list[Any]
    run_id: str
    stopping: str | None
    failures: dict[str, str]
    clock: Any
    _timer: Callable[..., None]
    _finish: Callable[..., None]
    _cancel: Callable[[Task, str], None]
    _handle_failure: Callable[..., None]
    _skip_downstream: Callable[[Task], None]

    def _scope_joined(self, task: Task, scope: Scope) -> bool:
        """``task`` was submitted in ``scope``: counted in it and the ones around it, its
        timeout's timer set on the first. False: the scope (or one around it) has already
        failed, and the task is cancelled."""
        for s in scope.chain():
            if s.ended is not None:
                error = TaskCancelled(f"pipeline {s.name} {s.ended}", node_id=task.node_id)
                if s.failure_key is not None:
                    error.scope_failure = s.failure_key      # type: ignore[attr-defined]
                self._finish(task, CANCELLED, error=error)
                return False
        for s in scope.chain():
            s.tasks.append(task)
            if s.timeout is not None and not s.timed:
                s.timed = True
                left = s.started + s.timeout - self.clock.monotonic()
                self._timer(max(left, 0.0), "scope_timeout", weakref.ref(s), 0)
        return True

    def _scope_opened(self, ref: Callable[[], Scope | None]) -> None:
        """A scope with a timeout was entered: its timer counts from the call, whether or not
        its body submits a task (a body busy before its first call was never timed out)."""
        scope = ref()
        if scope is not None and not scope.timed and scope.timeout is not None:
            scope.timed = True
            left = scope.started + scope.timeout - self.clock.monotonic()
            # held weakly: a call that is over and left no task needs no timer (200,000 calls
            # of a nested pipeline with an hour's timeout kept every scope for the hour)
            self._timer(max(left, 0.0), "scope_timeout", weakref.ref(scope), 0)

    def _scope_parks(self, task: Task) -> bool:
        """Whether ``task`` (queued, about to start) must wait for a scope's ``max_parallel``:
        then it is parked on the first full scope of its chain."""
        for s in task.scope.chain():
            if s.max_parallel is not None and len(s.active) >= s.max_parallel:
                s.parked.append(task)
                return True
        return False

    def _scope_started(self, task: Task) -> None:
        for s in task.scope.chain():
            s.active.add(task)

    def _scope_stopped(self, task: Task) -> None:
        """``task`` runs no more (it ended, running or not, or waits for a retry): parked
        tasks of each scope that has room go back to the front of the ready queue, as many as
        it has room for. Not one per task that stopped running: a task given a slot that
        ends before it starts (cancelled with its nested pipeline, or failing before its
        start) would keep it, and the tasks parked behind it would wait for ever. Handing
        out more than fits is harmless: ``_dispatch`` parks again what does not fit."""
        for s in task.scope.chain():
            s.active.discard(task)
            parked = s.parked
            if not parked:
                continue
            room = len(parked) if s.max_parallel is None else s.max_parallel - len(s.active)
            while parked and room > 0:
                t = parked.popleft()
                if t.state is QUEUED:
                    self.ready.appendleft(t)
                    room -= 1

    def _scope_timed_out(self, scope: Scope) -> None:
        """A scope's timeout has passed: if it is not done, what is left of it is cancelled
        and the scope has failed."""
        if self.stopping in HARD_STOPS or any(s.failure_key is not None for s in scope.chain()):
            return          # the run, or a pipeline around this one, stops its body already
        # A scope (or the run) a failure ended has no task left to cancel, but its body may
        # go on (it handles the failure): the timeout bounds it all the same.
        why = f"timed out after {scope.timeout:g}s"
        # A failure of the run, as a failed task is (no task of it failed: the call is named,
        # one entry per call); a body that catches it (``.result()`` of a task it cancelled)
        # has handled it, as it handles a task's failure (``BodySide._failure_of``).
        key = f"pipeline {scope.name}"
        n = 1
        while key in self.failures:
            n += 1
            key = f"pipeline {scope.name} (call {n})"
        with _CLOSING:
            if scope.closed and all(t.state in TERMINAL for t in scope.tasks):
                return
            scope.failure_key = key
        self.failures[key] = why
        if scope.ended is None:
            self._fail_scope(scope, None, why)
        else:                           # the failure's tasks are ended already
            scope.ended = why
        if scope.watch is not None and not scope.closed:
            scope.watch.stop_later()       # a body that goes on regardless is stopped

    def _fail_scope(self, scope: Scope, task: Task | None, why: str) -> None:
        """``scope`` has failed (``task`` failed in it under 'fail', or its timeout passed):
        its other tasks are cancelled, and the enclosing scope (or the run) decides about it
        with every task of it that did not succeed. A scope fails once: a later failure in it
        (an in-run twin following a task it cancelled) skips what depends on that task, as
        the enclosing scope decided for the scope."""
        if scope.ended is not None:
            if task is not None:
                self._skip_downstream(task)
            return
        scope.ended = why
        message = f"pipeline {scope.name} {why}"
        left = sum(1 for t in scope.tasks if t.state not in TERMINAL)
        # in the run's log, as a run's own stop is (``runs logs``)
        self.out.append(LogRecord(self.run_id, self.clock.now(), "warning",
                                  f"stopping nested pipeline {scope.name}: {why}"
                                  + (f"; cancelling its {left} unfinished task"
                                     f"{'' if left == 1 else 's'}" if left else "")))
        for t in scope.tasks:
            if t.state in TERMINAL:
                continue
            self._cancel(t, message)
            if scope.failure_key is not None:
                t.error.scope_failure = scope.failure_key   # type: ignore[union-attr]
        # Every task of it that was cancelled, by this failure or by a pipeline inside it
        # that failed earlier: what depends on them is the enclosing scope's to skip.
        cancelled = [t for t in scope.tasks if t.state is CANCELLED]
        self._handle_failure(task, scope.parent, message, cancelled)
