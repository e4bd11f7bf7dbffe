"""Deadlines of a run: retry backoffs, task timeouts, the pipeline timeout, and heartbeats.

Timers live in a heap ordered by due time; the loop sleeps on its inbox until the first one is
due (``run_forever``) and fires the due ones after handling its events. A timer carries the
task's fence: a timer set for an earlier attempt is ignored.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twingraph.engine.task import Task, QUEUED, RETRYING, RUNNING
from twingraph.errors import TaskTimeout


#: Seconds between a running run's heartbeats (``runs.heartbeat_at``).
HEARTBEAT_INTERVAL = 5.0
#: Seconds without a heartbeat after which a loop asks whether its run is still its own
#: before it goes on (``RunLoop._check_still_driver``): longer than a busy turn, shorter than
#: the ``LIVE_WINDOW`` (2 x the interval + 1 s) after which another driver may take over.
STALLED_AFTER = HEARTBEAT_INTERVAL + 1.0


class TimerSide:
    """Mixed into ``RunLoop``; the attributes below are the loop's."""
    clock: Any
    engine: Any
    _abort: Callable[[Any], bool]
    opt: Any
    run_id: str
    epoch: int
    timers: list[tuple[float, int, str, Any, int]]
    _seq: itertools.count[int]
    ready: deque[Task]
    out: list[Any]
    body_finished: bool
    unfinished: int
    _last_heartbeat: float
    _stop: Callable[[str, str], None]
    _set_state: Callable[..., None]
    _complete: Callable[..., None]
    _scope_timed_out: Callable[[Any], None]

    def _timer(self, delay: float, kind: str, task: Task | None, fence: int) -> None:
        heapq.heappush(self.timers, (self.clock.monotonic() + delay, next(self._seq), kind,
                                     task, fence))

    def _fire_timers(self) -> None:
        now = self.clock.monotonic()
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, _, kind, task, fence = heapq.heappop(timers)
            if kind == "pipeline_timeout":
                if not (self.body_finished and self.unfinished == 0):
                    self._stop("timeout", f"pipeline timed out after {self.opt.timeout:g}s")
                continue
            if kind == "scope_timeout":    # a nested pipeline's (``task``: a weakref to its scope)
                scope = task()
                if scope is not None:        # (gone: the call is over and left no task)
                    self._scope_timed_out(scope)
                continue
            if task is None or task.fence != fence:
                continue
            if kind == "retry" and task.state is RETRYING:
                self._set_state(task, QUEUED)
                self.ready.append(task)
            elif kind == "task_timeout" and task.state is RUNNING:
                started = getattr(task.job, "started_at", None)
                limit = task.spec.timeout
                if started is None or time.monotonic() - started < limit:
                    # Not started yet (waiting for a worker), or started late: wait the rest.
                    rest = limit if started is None else limit - (time.monotonic() - started)
                    self._timer(max(rest, 0.01), "task_timeout", task, fence)
                    continue
                killed = self._abort(task)
                err = TaskTimeout(task.node_id, task.spec.timeout, killed=killed)
                # how long it ran: from the job's real start (a worker's spawn not counted)
                self._complete(task, fence, False, None, err, time.monotonic() - started)

    def _heartbeat(self) -> None:
        now = self.clock.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_INTERVAL:
            self._last_heartbeat = now
            # Written apart from the run's records (engine/heartbeats.py), never behind them.
            self.engine.heartbeats.beat(self.run_id, self.clock.now(), self.epoch)
