"""The scheduler of one run: an event loop on its own thread, driven by a single inbox.

State and policy
----------------
* Tasks arrive while the run goes on (the pipeline body submits them, or a declarative graph is
  submitted up front). A task waits on a Kahn count of unfinished producers; when it reaches
  zero the task is *ready*: its structural key is computed from the content hashes of its inputs
  and looked up (resumed record of this run -> same key earlier in this run -> result store).
  A hit completes the task without running it; a miss queues it.
* At most ``max_parallel`` tasks run at once. Components measured to finish in well under a
  millisecond run inline on the loop thread (no hand-off), others on the executor.
* Inbox events: ``submit``, ``done`` (executor outcome), ``stored`` (writer flushed results),
  ``body`` (the pipeline body returned), ``cancel``. Timers (retry backoff, task deadlines, the
  pipeline deadline) live in a heap; the loop blocks on the inbox until the next timer. No scans,
  no sleeps: each step costs O(edges of the task it touches).
* Failures: a retry policy may schedule another attempt (new fence). Otherwise the task FAILS
  and ``error_handler`` decides: 'fail' cancels everything still queued or running; 'continue'
  skips what depends on the failure and runs the rest; 'retry' is 'fail' with a default retry
  policy for tasks that have none; 'custom' calls ``error_config['handler']`` and continues if
  ``continue_on_error``.
* Every state change becomes a record for the write-behind recorder and an event for the sink.

The pipeline body's side (``futures``), memo decisions (``memo``) and deadlines (``timers``) live
in their own modules and are mixed into ``RunLoop``; all of it runs under the rules above.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from twingraph import serialization
from twingraph.core import stop
from twingraph.core.records import AttemptRecord, LogRecord, TaskRecord, TaskUpdate
from twingraph.core.retry import RetryPolicy
from twingraph.core.results import StorageMetadata, value_id
from twingraph.core.wire import pack_result_rows, pack_results, pack_task_values
from twingraph.core.specs import DEFAULT_TIMEOUT, resource_amounts
from twingraph.core.states import TaskState, fence as fence_token
from twingraph.engine import gcpace, tasklog
from twingraph.engine.bodystop import HARD_STOPS, BodyWatch
from twingraph.engine.calls import LINEAGE_KWARGS, accepts_lineage
from twingraph.engine.futures import BodySide
from twingraph.engine.heartbeats import taken_over_message
from twingraph.engine.memo import MemoSide, declared_key
from twingraph.engine.scopes import Scope, ScopeSide
from twingraph.engine.timers import HEARTBEAT_INTERVAL, STALLED_AFTER, TimerSide
from twingraph.engine.recorder import PutResult
from twingraph.engine.writer import FRAME_MAX, INLINE_MAX
from twingraph.engine.snapshot import error_text, task_rows, traceback_text
from twingraph.serialization import SHARED_TYPES, own_copy, settled
from twingraph.engine.refs import Ref, find_refs, find_refs_once, path_list, substitute, walk_path
from twingraph.engine.task import (DECLARED, UNLOADED, Job, Task, CANCELLED, FAILED, PENDING, QUEUED,
                                    RETRYING, RUNNING, SKIPPED, SUCCESS, TERMINAL)
from twingraph.ports import JobOutcome
from twingraph.errors import (NodeExecutionError, PipelineError, ResourceUnavailable, TaskCancelled,
                              RunStopped, TaskTimeout, ValidationError)

_NONE: list[Any] = []          # shared empty list for released fields (never appended to)
_EMPTY: dict[str, Any] = {}
#: An inline call still running after this many seconds moves the loop to a new thread
#: (``RunLoop._call_inline``); the watchdog looks this often.
INLINE_ESCAPE = 0.1
#: Seconds between two hand-overs to the recorder while the loop is busy (an idle loop hands
#: over before it sleeps): what a crash can lose of it, beside the recorder's own interval.
HAND_OVER_EVERY = 0.05
#: Submitted tasks taken in by one turn of the loop (``_take_submitted``): a body that submits
#: for long does not hold the loop's other duties (events, timers, dispatch, heartbeats) back;
#: taking them all kept a loop in one turn for 22 s while a body submitted a million tasks.
TAKE_MAX = 10_000
INLINE_WATCH_EVERY = 0.05


class _LoopMoved(BaseException):
    """Unwinds a loop thread whose inline call was taken over (``RunLoop._move_loop``)."""

DEFAULT_RETRY = RetryPolicy(max_attempts=3, backoff="exponential", initial_delay=1.0,
                            max_delay=60.0)
# Values kept in memory once stored, not dropped to be reloaded: a number or None costs its
# task a few dozen bytes at most, a reload costs a query on the scheduling thread (a GIL round
# trip; a late consumer of a far-back producer in a large graph needs one per node).
_SMALL = frozenset({int, float, bool, type(None)})


def _small(value: Any) -> bool:
    t = type(value)
    return t in _SMALL and (t is not int or -(1 << 62) <= value < (1 << 62))


class RunOptions:
    __slots__ = ("max_parallel", "error_handler", "timeout", "no_cache", "error_config",
                 "lineage")

    def __init__(self, max_parallel: int = 10, error_handler: str = "fail",
                 timeout: float | None = None, no_cache: bool = False,
                 error_config: Mapping[str, Any] | None = None, lineage: bool = True) -> None:
        if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
            # 0 or less would start nothing and wait for ever
            raise ValidationError(f"max_parallel must be an integer >= 1, got {max_parallel!r}")
        self.max_parallel, self.error_handler, self.timeout = max_parallel, error_handler, timeout
        self.no_cache, self.error_config = no_cache, dict(error_config or {})
        self.lineage = lineage      # False: task rows carry no DEPENDS_ON data flow


class RunLoop(BodySide, MemoSide, TimerSide, ScopeSide):
    def __init__(self, engine: Any, run_id: str, options: RunOptions,
                 prior: Mapping[str, TaskRecord] | None = None,
                 previous: Callable[[], Mapping[str, TaskRecord]] | None = None,
                 epoch: int = 0) -> None:
        self.engine, self.run_id, self.opt = engine, run_id, options
        self.pipeline = ""
        self.prior = dict(prior or {})           # this run's tasks from before a crash (resume)
        # Of those, the ones recorded SUCCESS, being looked up: task -> its structural key.
        self.resuming: dict[Task, str] = {}
        self.epoch = epoch          # this driver's generation of the run: its fencing tokens
        self.taken_over: int | None = None   # the epoch of a driver that took the run over
        self._fence_base = fence_token(epoch, 0)
        # The last run of the pipeline, to say why a task missed: loaded on the first miss.
        self._previous_loader = previous
        self._previous: Mapping[str, TaskRecord] | None = None
        self.results, self.recorder, self.clock = engine.results, engine.recorder, engine.clock
        self.emit = engine.emit
        self.inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        # Component calls are appended here by the body thread and drained by the loop; the
        # loop is woken through the inbox only when it is asleep (few cross-thread wake-ups).
        self.submitted: deque[Task] = deque()
        self.sleeping = False
        self.out: list[Any] = []                   # records for the recorder, handed over in bulk
        # With a writer process (``recorder.packs_records`` at the last hand-over), small
        # results wait as their wire rows (``core.wire.pack_result_rows``) and tokens: no
        # ``PutResult`` or ``StorageMetadata`` each. One metadata dict per encoding, shared
        # by the rows (pickled once a frame; nothing mutates it).
        self._packing = bool(self.recorder.packs_records)
        self.small: list[tuple[str, bytes, tuple[Any, ...]]] = []
        self.small_tokens: list[Any] = []
        self._small_meta: dict[str, dict[str, Any]] = {}
        self.dirty: list[Task] = []                # tasks changed since the last hand-over
        self.deferred: deque[Task] = deque()       # waiting tasks whose first row can wait
        self.logs: deque[LogRecord] = deque()     # task logs, appended from worker threads
        self._handler_calls: queue.SimpleQueue[Any] | None = None    # _call_error_handler
        self._handler_thread: threading.Thread | None = None
        self.handlers_cut = threading.Event()       # set: the end waits for no handler
        self._handlers_done = threading.Event()     # set by the handler thread as it ends
        self.inline_pipelines: set[str] = set()   # nested pipelines noted (dsl.pipeline)
        self._last_hand_over = 0.0
        # Writes move to a child process once this engine's runs have taken in so many tasks
        # (``Engine.offload_after``), this one's included.
        offload_after = getattr(engine, "offload_after", None)
        self._offload_at: int | None = None if offload_after is None else \
            max(0, offload_after - getattr(engine, "tasks_taken", 0))
        self._steps = 0                            # tasks keyed or started since the last check
        self.tasks: dict[str, Task] = {}
        self.by_key: dict[str, Task] = {}
        # Tasks that are not memoized (cache=False, --no-cache), by their own key: what their
        # r["hash"] gives a body, for ``parent_hash`` strings to name them (``_named_parents``).
        self.by_own_key: dict[str, Task] = {}
        self.ready: deque[Task] = deque()          # keyed, missed: waiting for a slot
        # Local tasks whose ``resources`` are not free yet, in order (engine.resources).
        self.held: deque[Task] = deque()
        self._pool: Any = getattr(engine, "local_resources", None)
        self._held_retry = False                   # some were given back since the head failed
        # id(spec) -> (spec, amounts): the spec is kept so that its id is not given to another
        self._asks: dict[int, tuple[Any, tuple[int, int, int]]] = {}
        self.became_ready: deque[Task] = deque()   # inputs complete: key not computed yet
        self.running = 0
        self.unfinished = 0
        self.counts = dict.fromkeys(TaskState, 0)
        self.timers: list[tuple[float, int, str, Any, int]] = []
        self._seq = itertools.count()
        self.lock = threading.Lock()             # guards task.state/event for waiters
        self.stopping: str | None = None         # 'failed' | 'cancelled' | 'timeout'
        self.body_flag: stop.Flag | None = None  # the body thread's (``Engine._run``)
        self.body_watch: BodyWatch | None = None  # the same body's (``bodystop``)
        # RUNNING process tasks whose job waits for a worker: queued, as rows and progress
        # say (``state_counts``)
        self.waiting: set[Task] = set()
        self.crashed: BaseException | None = None
        self.stop_message = ""
        self.body_finished = False
        self.body_error: BaseException | None = None
        self.done = threading.Event()
        # The thread driving this loop (``Engine.run`` starts it; ``_move_loop`` replaces it).
        self.driver: threading.Thread | None = None
        # The latest inline call, as a one-item list [(task, its start)] of its own: popped by
        # whoever gets there first, the calling thread when the call returns or the watchdog
        # when it runs too long. Each call has its own: a call taken over returns later, on
        # its old thread, and must not take the entry of a call its successor thread made.
        self._inline_cell: list[tuple[Task, float]] = []
        self._watchdog: threading.Thread | None = None
        self._taken_over: tuple[Task, float, stop.Flag | None] | None = None     # for the next driver thread
        self.failures: dict[str, str] = {}
        # Keys of ``failures`` that are not tasks (a nested pipeline that timed out) whose
        # failure the body caught (``BodySide._failure_of``), as a task's ``observed``.
        self.observed_failures: set[str] = set()
        self._name_counts: dict[str, int] = {}
        self._order = itertools.count()
        self._done_times: deque[float] = deque(maxlen=256)
        self._done_count = 0           # tasks that ran and finished (``_done_times``'s, all)
        self._first_start: float | None = None   # when the first task started (the ETA's rate)
        self._last_heartbeat = 0.0
        self._alive_at = 0.0        # when this loop last knew the run was its own (stalls)
        self._hand_over_due = 0.0         # next hand-over of a busy loop (``run_forever``)
        self.started_at = self.clock.monotonic()
        if options.timeout:
            self._timer(options.timeout, "pipeline_timeout", None, 0)
        # Deadlines that must fire on time keep 'auto' components out of inline mode (_mode):
        # the run's own, and those of the running tasks that have one of their own.
        self._tight_run = options.timeout is not None and 0 < options.timeout < DEFAULT_TIMEOUT
        self._tight: set[Task] = set()

    # == the loop ===========================================================================
    def run_forever(self) -> None:
        get, submitted = self.inbox.get, self.submitted
        moved = False
        if not self._alive_at:
            self._alive_at = self.clock.monotonic()
        try:
            taken = self._taken_over
            if taken is not None:       # this thread took over from one stuck in a call
                self._taken_over = None
                self._escaped(*taken)
                self.inbox.put(("wake",))   # ready tasks wait to be dispatched: no sleep first
            while True:
                ev = get_nowait(self.inbox)
                if ev is None and not submitted:
                    self._hand_over()
                    self.sleeping = True           # set first, then look again (no lost wake-up)
                    if not submitted:
                        # Wake at least every HEARTBEAT_INTERVAL: a run whose tasks are all
                        # long still proves its driver alive (others adopt silent runs).
                        timeout = HEARTBEAT_INTERVAL
                        if self.timers:
                            timeout = min(timeout, max(0.0, self.timers[0][0] - self.clock.monotonic()))
                        if self.deferred:     # ... and when the oldest deferred row falls due
                            due = self.deferred[0].created_at + self.DEFER_WAITING
                            timeout = min(timeout, max(0.001, due - self.clock.now()))
                        try:
                            ev = get(timeout=timeout) if timeout > 0 else None
                        except queue.Empty:
                            ev = None
                    self.sleeping = False
                if self._stalled():
                    self._check_still_driver()
                while ev is not None:
                    self._handle(ev)
                    ev = get_nowait(self.inbox)
                if submitted:
                    self._take_submitted()
                self._fire_timers()
                self._dispatch()
                if self.body_finished and self.unfinished == 0 and self.running == 0 \
                        and not submitted:
                    return
                self._heartbeat()
                if self.out or self.dirty:
                    # Busy (a body submitting for long, a flood of ready tasks): rows and
                    # the heartbeat go out every HAND_OVER_EVERY all the same. Handed over
                    # only when idle, a run taking in a million tasks wrote nothing for
                    # 30 s: its heartbeat looked dead (``runs cancel`` and ``--resume``
                    # took the live run over) and a crash lost all that was done.
                    now = self.clock.monotonic()
                    if now >= self._hand_over_due:
                        self._hand_over_due = now + HAND_OVER_EVERY
                        self._hand_over()
        except _LoopMoved:        # another thread drives the loop now (``_move_loop``)
            moved = True
        except BaseException as exc:  # noqa: BLE001 - a bug here must not leave waiters hanging
            self._crash(exc)
        finally:
            if not moved:
                self._end_of_loop()

    def _taken_over_meanwhile(self) -> bool:
        """After an inline call (this thread ran nothing else meanwhile, so nothing checked
        since the turn began): if the loop went ``STALLED_AFTER`` without a heartbeat (the
        process was stopped during the call, or between calls of one long turn), whether
        another driver took the run over meanwhile; then the run is stopped, the task
        cancelled with it, before what depends on it starts."""
        if self._stalled():
            self._check_still_driver()
        return self.taken_over is not None

    def _stalled(self) -> bool:
        return self.clock.monotonic() - max(self._last_heartbeat, self._alive_at) \
            >= STALLED_AFTER

    def _check_still_driver(self) -> None:
        """This loop went without a heartbeat for ``STALLED_AFTER`` (the process was stopped,
        the VM paused): another driver may have taken the run over meanwhile (``run
        --resume`` does once the heartbeat is ``LIVE_WINDOW`` old). Asked of the metadata store
        at once, before a result that came in meanwhile is handled and starts what depends on
        it: taken over, the run stops here (its tasks ran twice otherwise, and this process
        reported an end of its own). The heartbeat thread asks after every beat too."""
        self._alive_at = self.clock.monotonic()
        current = getattr(self.engine.metadata, "driver_epoch", None)
        if current is None or self.taken_over is not None:
            return
        try:
            now = current(self.run_id)
        except Exception:  # noqa: BLE001 - unknown yet, or the store is down: the beat decides
            return
        if now is not None and now > self.epoch:
            self.taken_over = now
            self._stop("cancelled", taken_over_message(self.epoch, now))
            return
        self._last_heartbeat = self._alive_at
        self.engine.heartbeats.beat(self.run_id, self.clock.now(), self.epoch)

    def _end_of_loop(self) -> None:
        try:
            if self._pool is not None:
                self._pool.forget(self._resources_freed)     # never first in line when gone
            if self.prior:
                self._end_orphans()
            self._hand_over(final=True)
        finally:
            took_in = getattr(self.engine, "took_in", None)
            if took_in is not None:
                took_in(len(self.tasks))
            self.done.set()

    # == inline calls that run too long =======================================================
    def _call_inline(self, task: Task, invoke: Callable[..., Any], args: Any,
                     kwargs: Any) -> tuple[Any, BaseException | None, float]:
        """Call ``invoke(*args... )`` for ``task`` on this thread (the loop's): its value, error
        and duration. A call measured fast may still take long once (or hang); the watchdog
        (``_watch_inline``) then moves the loop to a new thread, so that timers, cancels and
        other tasks go on; the call's outcome, when it comes, is then posted as a thread
        task's would be and this thread leaves the loop (``_LoopMoved``)."""
        t0 = time.perf_counter()
        fence = task.fence          # this attempt's: a retry after a timeout has another
        cell = self._inline_cell = [(task, t0)]
        if self._watchdog is None:
            self._start_watchdog()
        try:
            value, error = invoke(task.fn, args, kwargs), None
        except BaseException as exc:  # noqa: BLE001 - the task's failure is data
            value, error = None, exc
        took = time.perf_counter() - t0
        try:
            cell.pop()              # atomic: the watchdog did not take it
        except IndexError:
            stop.unwatch_self()     # the flag the watchdog gave this thread (``_watch_inline``)
            self.inbox.put(("done", JobOutcome(task.node_id, fence, error is None,
                                                  value, error, took)))
            raise _LoopMoved from None
        return value, error, took

    def _start_watchdog(self) -> None:
        self._watchdog = threading.Thread(target=self._watch_inline, daemon=True,
                                          name=f"twingraph-watch-{self.run_id[:8]}")
        self._watchdog.start()

    def _watch_inline(self) -> None:
        done = self.done
        while not done.wait(INLINE_WATCH_EVERY):
            cell = self._inline_cell
            try:
                task, t0 = cell[0]
            except IndexError:        # no call
                continue
            if time.perf_counter() - t0 < INLINE_ESCAPE:
                continue
            # Its thread gets a stop flag (core.stop) before the call is taken: once taken,
            # the call's return removes it (``_call_inline``), so none outlives the call.
            driver = self.driver
            ident = driver.ident if driver is not None else None
            flag = stop.watch(ident) if ident is not None else None
            try:
                task, t0 = cell.pop()
            except IndexError:        # it returned meanwhile
                if flag is not None and ident is not None:
                    stop.unwatch(ident, flag)
                continue
            self._move_loop(task, t0, flag)

    def _move_loop(self, task: Task, t0: float, flag: stop.Flag | None = None) -> None:
        """The watchdog took ``task``'s inline call: the loop goes on in a new thread, where
        the task runs on as a thread task would (``_escaped``), before anything else: an
        event queued meanwhile (a cancel, another task's failure, the call's own outcome)
        must find it RUNNING (queued behind them, a stop ended it as a task not started and
        its slot was never given back: the run hung). The old thread touches no loop state
        once its call returns (``_call_inline``)."""
        self._taken_over = (task, t0, flag)
        driver = threading.Thread(target=self.run_forever, daemon=True,
                                  name=f"twingraph-run-{self.run_id[:8]}")
        self.driver = driver
        driver.start()

    def _escaped(self, task: Task, t0: float, flag: stop.Flag | None = None) -> None:
        """``task``'s inline call went on too long and the loop moved on without it: from now
        on it is a running thread task (its row says RUNNING, its timeout is kept, a stop
        abandons it and raises ``flag``) whose outcome comes through the inbox."""
        if task.state in TERMINAL:
            return
        ran = time.perf_counter() - t0
        # A slow call, so far: the component's next calls run in threads, not inline one
        # after another, each waiting INLINE_ESCAPE for the watchdog (its full duration is
        # observed again when it ends).
        self.engine.observe(task.spec, ran, True)
        task.mode = "thread"
        job = task.job = Job(task, None, (), {}, "thread")
        job.stop_flag = flag
        job.started_at = time.monotonic() - ran       # its timeout counts from the call
        task.started = self.clock.monotonic() - ran
        if task.state is not RUNNING:
            self._set_state(task, RUNNING)
            task.started_at = self.clock.now() - ran      # when the call began, not now
        if task.spec.timeout < DEFAULT_TIMEOUT:
            self._tight.add(task)
        self._timer(max(task.spec.timeout - ran, 0.0), "task_timeout", task, task.fence)
        self.out.append(LogRecord(self.run_id, self.clock.now(), "warning",
                                  f"{task.node_id} ran inline for {ran:.2f} s: the run goes on "
                                  f"beside it (as in a thread)", task.node_id))

    def _end_orphans(self) -> None:
        """A resumed run is over: tasks an earlier driver recorded unfinished that this body
        did not submit again (it took another path) would stay PENDING or RUNNING in a run that
        has ended. They end CANCELLED, fenced as this driver's rows."""
        now = self.clock.now()
        why = (f"the resumed run ended ({self.stop_message}) before submitting it again"
               if self.stopping else "not submitted again by the resumed run")
        for node_id, rec in self.prior.items():
            if node_id not in self.tasks and not rec.state.terminal:
                self.out.append(TaskUpdate(
                    self.run_id, node_id, TaskState.CANCELLED, now, fence=self._fence_base,
                    error=why))

    def _crash(self, exc: BaseException) -> None:
        """The loop itself failed (an engine bug or a store that cannot be read): end every
        unfinished task so nobody waits forever; the run ends FAILED with this error."""
        self.crashed = exc
        self.stopping, self.stop_message = "failed", f"engine error: {error_text(exc)}"
        self.out.append(LogRecord(self.run_id, self.clock.now(), "error", self.stop_message))
        for task in list(self.tasks.values()) + list(self.submitted):
            if task.state not in TERMINAL:
                if task.state is RUNNING:
                    self._abort(task)
                    if task.spec.resources:
                        self._give_back(task)
                    self._end_attempt_row(task, FAILED, exc)
                counts = self.counts
                if self.tasks.get(task.node_id) is not task:
                    # Submitted by the body, never taken in by the loop: it gets a row too.
                    if task.node_id in self.tasks:
                        task.node_id = f"{task.node_id}.{task.order}"
                    self.tasks[task.node_id] = task
                    task.created_at = self.clock.now()
                    task.inputs_info = self.engine.fingerprint(task.spec)
                    task.fence = max(task.fence, self._fence_base)
                else:                   # counted in its state: progress reads the counts
                    counts[task.state] -= 1
                    self.unfinished -= 1
                counts[FAILED] += 1
                err = NodeExecutionError(self.stop_message, node_id=task.node_id)
                with self.lock:
                    task.state, task.error = FAILED, err
                    ev = task.event
                if ev is not None:
                    ev.set()
                if not task.dirty:              # its row says FAILED too
                    task.dirty = True
                    self.dirty.append(task)
        self.failures.setdefault("<engine>", self.stop_message)

    HAND_OVER_EVERY = 0.02       # seconds: the most a busy loop keeps records to itself
    # A task still waiting for inputs or a slot gets its first row after this many seconds (or
    # when it starts): most tasks then write one row with their final state, not two. Nothing
    # is lost by the wait: a resumed run submits unstarted tasks again.
    DEFER_WAITING = 2.0

    def _maybe_hand_over(self) -> None:
        """Inside long bursts (a chain of inline tasks never lets the loop sleep), hand records
        to the recorder at least every 20 ms: it overlaps the writes with scheduling, and a
        crash loses no more than the recorder's interval plus this."""
        now = self.clock.monotonic()
        if now - self._last_hand_over >= self.HAND_OVER_EVERY:
            self._hand_over()

    def _hand_over(self, final: bool = False) -> None:
        """Give the recorder one snapshot row per task changed since the last hand-over
        (``final``: the run is over, nothing waits any more)."""
        packing = self._packing = bool(self.recorder.packs_records)
        if self.small:
            self._small_results(packing)
        deferred = self.deferred
        if self.dirty or deferred:
            # Task rows first: attempts, edges and logs in ``self.out`` refer to them.
            out: list[Any] = []
            # New rows as field values, to be packed at once for a writer process.
            new: list[tuple[Any, ...]] | None = [] if packing else None
            young = float("inf") if final else self.clock.now() - self.DEFER_WAITING
            for t in self.dirty:
                t.dirty = False
                # Only a task that never started waits: one that ran (a retry now QUEUED) has
                # attempt rows in ``self.out`` that need its row first.
                if not t.persisted and t.attempt == 0 and t.created_at > young and \
                        (t.state is PENDING or t.state is QUEUED):
                    deferred.append(t)      # young and waiting: its first row can wait
                else:
                    task_rows(self.run_id, t, out, new)
            self.dirty = []
            # Deferred tasks come out oldest first; one that changed since was dirty again
            # and has its row already (or it is young again in the queue, re-deferred).
            while deferred and deferred[0].created_at <= young:
                t = deferred.popleft()
                if not t.persisted:
                    task_rows(self.run_id, t, out, new)
            if new is not None:
                out = _packed(new, out, self.out)
            else:
                out.extend(self.out)
            self.out = out
        logs = self.logs
        while logs:
            self.out.append(logs.popleft())
        if self._offload_at is not None and len(self.tasks) >= self._offload_at:
            self._offload_at = None
            self.recorder.offload()          # a large run: writes move to a child process
        if self.out:
            self.recorder.add_many(self.out)
            self.out = []
            self.recorder.wait_for_room()     # bounded memory when the disk is the bottleneck
        gcpace.tick()              # what survived so far is not walked again (decision 0011)
        self._last_hand_over = self.clock.monotonic()

    def _small_results(self, packing: bool) -> None:
        """Hand the small results built as wire rows (``_complete``) to ``out``: packed in
        pieces of at most ``FRAME_MAX`` if a writer process takes them, as ``PutResult``s if
        the recorder writes in this process again (its child died) or pickling failed."""
        rows, tokens = self.small, self.small_tokens
        self.small, self.small_tokens = [], []
        if packing:
            try:
                self.out.extend([pack_result_rows(rows[i:i + FRAME_MAX], tokens[i:i + FRAME_MAX])
                                 for i in range(0, len(rows), FRAME_MAX)])
                return
            except Exception:  # noqa: BLE001 - e.g. metadata that does not pickle
                pass
        self.out.extend([PutResult(key, (data, ), StorageMetadata(*meta), token)
                         for (key, data, meta), token in zip(rows, tokens)])

    def _handle(self, ev: tuple[Any, ...]) -> None:
        kind = ev[0]
        if kind == "done":
            self._on_outcome(ev[1])
        elif kind == "wake":
            pass
        elif kind == "stored":
            for t in ev[1]:
                t.stored = True
                if t.consumers <= 0 and t.state is SUCCESS and not _small(t.value):
                    t.value = UNLOADED
        elif kind == "resources":      # some were given back: the first held task tries again
            self._held_retry = True
        elif kind == "body":
            self.body_finished, self.body_error = True, ev[1]
            if ev[1] is not None:
                self._log_body_error(ev[1])
                self._body_failed(ev[1])
        elif kind == "cancel":
            self._stop("cancelled", ev[1])
        elif kind == "lost":           # a batch of this run's records was given up
            self._stop("failed", f"its records could not be stored ({error_text(ev[1])}); "
                                 f"nothing more it did would be recorded")
        elif kind == "scope":          # a nested pipeline with a timeout was entered
            self._scope_opened(ev[1])
        elif kind == "began":          # a worker took a process task's job: its row says so
            task = ev[1]
            if task.state is RUNNING and task.fence == ev[2]:
                self.waiting.discard(task)
                began = getattr(task.job, "started_at", None)
                if began is not None:             # when the worker took it, not the hand-over
                    task.started_at = self.clock.now() - max(0.0, time.monotonic() - began)
                if not task.dirty:
                    task.dirty = True
                    self.dirty.append(task)
                if self.engine.has_sinks:         # the RUNNING event held back at hand-over
                    self.emit({"event": "node:status", "run_id": self.run_id,
                               "node_id": task.node_id, "component": task.component,
                               "status": RUNNING.value, "cache": task.cache_status})

    # == submission and readiness ===========================================================
    def _take_submitted(self) -> None:
        """Take in the tasks the body submitted, up to ``TAKE_MAX`` (the rest next turn). Each
        is taken off the queue once registered:
        if the loop crashes in between, ``_crash`` still finds it (in ``submitted``) and gives
        it a row. A declared task (``BodySide.call_declared``) of a run that is not resumed,
        nor stopping, with nobody listening for events, is taken in here as ``_on_submit``
        would (its producers came with it), in one pass over the batch; any other goes
        through ``_on_submit``."""
        submitted = self.submitted
        engine = self.engine
        if self.epoch or self.stopping or engine.has_sinks \
                or submitted[0].ref_slots is not DECLARED:      # a body's calls: one by one
            for _ in range(TAKE_MAX):
                if not submitted:
                    break
                self._submit_guarded(submitted[0])
                submitted.popleft()
            return
        tasks, dirty, became, counts = self.tasks, self.dirty, self.became_ready, self.counts
        lineage, clock = self.opt.lineage, self.clock
        last_spec: Any = None
        fp: Any = None
        now = clock.now()
        n = 0
        while submitted and n < TAKE_MAX:
            task = submitted[0]
            if self.stopping:         # a failed submission above stopped the run ('fail'):
                self._submit_guarded(task)          # the rest end CANCELLED, as there
                submitted.popleft()
                n += 1
                continue
            spec = task.spec
            if spec is not last_spec:
                try:
                    fp = engine.fingerprint(spec)
                except Exception:  # noqa: BLE001 - _on_submit fails the task with it
                    fp = None
                last_spec = spec if fp is not None else None
            n += 1
            if task.ref_slots is not DECLARED or fp is None or task.node_id in tasks:
                self._submit_guarded(task)
                submitted.popleft()
                continue
            if n & 255 == 0:
                now = clock.now()
            tasks[task.node_id] = task
            self.unfinished += 1
            counts[PENDING] += 1
            task.created_at = now
            task.dirty = True
            dirty.append(task)
            producers = task.producers
            if producers:
                upstream_bad = None
                for p in producers:
                    p.consumers += 1
                    state = p.state
                    if state is SUCCESS:
                        continue
                    if state in TERMINAL:
                        upstream_bad = p
                    else:
                        task.waiting += 1
                        p.dependents.append(task)
                task.inputs_info = {**fp, "deps": [[p.node_id, _NONE] for p in producers]} \
                    if lineage else fp
                if upstream_bad is not None:
                    self._finish(task, SKIPPED, error=_skipped_for(upstream_bad, task))
                elif task.waiting == 0:
                    became.append(task)
            else:
                task.inputs_info = fp
                became.append(task)
            submitted.popleft()

    def _submit_guarded(self, task: Task) -> None:
        try:
            self._on_submit(task)
        except Exception as exc:  # noqa: BLE001 - a bad submission fails that task, not the run loop
            if task.node_id not in self.tasks:
                self.tasks[task.node_id] = task
                self.unfinished += 1
                self.counts[PENDING] += 1
                task.dirty = True
                self.dirty.append(task)
            self._fail_before_start(task, exc)

    def _on_submit(self, task: Task) -> None:
        if task.node_id in self.tasks:      # same node id twice: make it unique, keep order
            task.node_id = f"{task.node_id}.{task.order}"
        self.tasks[task.node_id] = task
        self.unfinished += 1
        self.counts[PENDING] += 1
        task.created_at = self.clock.now()
        if self.epoch:
            # A resumed run: attempts go on from the ones earlier drivers numbered (their rows
            # stay; a retry policy counts them too), and even a task that never starts carries
            # this driver's fence (the store drops rows fenced below the stored one).
            before = self.prior.get(task.node_id)
            if before is not None and before.attempts:
                task.attempt = before.attempts
            task.fence = self._fence_base + task.attempt
        fp = self.engine.fingerprint(task.spec)
        task.dirty = True
        self.dirty.append(task)
        deps: list[list[Any]]
        if task.ref_slots is DECLARED:      # given, distinct, each read whole
            deps = [[p.node_id, _NONE] for p in task.producers]
        else:
            deps = []
            self._find_producers(task, deps)
            kw = task.kwargs
            if kw and ("parent_hash" in kw or "parent_hashes" in kw):
                self._named_parents(task, deps)
        upstream_bad = None
        for p in task.producers:
            p.consumers += 1
            if p.state is SUCCESS:
                continue
            if p.state in TERMINAL:
                upstream_bad = p
            else:
                task.waiting += 1
                p.dependents.append(task)
        # Lineage: the producers this task read (DEPENDS_ON edges, with the output path that
        # flowed) travel in its own row; twingraph.lineage turns them into edges.
        task.inputs_info = {**fp, "deps": deps} if deps and self.opt.lineage else fp
        if self.engine.has_sinks:
            self.emit({"event": "node:status", "run_id": self.run_id, "node_id": task.node_id,
                       "component": task.component, "status": "PENDING"})
        if self.stopping:
            self._finish(task, CANCELLED, error=TaskCancelled(self.stop_message,
                                                                  node_id=task.node_id))
        elif task.scope is not None and not self._scope_joined(task, task.scope):
            pass                        # its nested pipeline has failed: cancelled
        elif upstream_bad is not None:
            self._finish(task, SKIPPED, error=_skipped_for(upstream_bad, task))
        elif task.waiting == 0:
            self.became_ready.append(task)

    @staticmethod
    def _find_producers(task: Task, deps: list[list[Any]]) -> None:
        """The tasks whose futures ``task``'s arguments hold (each once, in order), and which
        top-level arguments hold them (only those are resolved at start)."""
        if not task.args and len(task.kwargs) == 1:
            # The common call, ``f(x=r[...])``: one keyword argument that is a future itself
            # (what the loop below finds for it, without walking).
            for k, v in task.kwargs.items():
                if type(v) is Ref:
                    task.ref_slots = (k,)
                    p = v._task
                    task.producers.append(p)
                    deps.append([p.node_id, path_list(v._path)])
                    return
        refs: list[Ref] = []
        slots: list[int | str] = []
        for i, a in enumerate(task.args):
            n = len(refs)
            try:
                find_refs(a, refs)
            except RecursionError:          # it holds itself: walked once per container
                del refs[n:]
                find_refs_once(a, refs)
            if len(refs) > n:
                slots.append(i)
        for k, v in task.kwargs.items():
            n = len(refs)
            try:
                find_refs(v, refs)
            except RecursionError:
                del refs[n:]
                find_refs_once(v, refs)
            if len(refs) > n:
                slots.append(k)
        if slots:
            task.ref_slots = tuple(slots)
        # Each producer once; for lineage, each output path read from it once (the paths of
        # a producer read twice are compared by repr: a path may hold a slice).
        first: dict[int, Any] = {}
        more: dict[int, set[str]] = {}
        for r in refs:
            p = r._task
            pid = id(p)
            if pid not in first:
                first[pid] = r._path
                task.producers.append(p)
            else:
                read = more.get(pid)
                if read is None:
                    read = more[pid] = {repr(first[pid])}
                text = repr(r._path)
                if text in read:
                    continue
                read.add(text)
            deps.append([p.node_id, path_list(r._path)])

    def _named_parents(self, task: Task, deps: list[list[Any]]) -> None:
        """``parent_hash`` / ``parent_hashes`` given as hash strings (a result the body already
        holds: ``r["hash"]``), not as futures: each names the task of this run whose result
        has that key, a DEPENDS_ON edge as a future's ``r["hash"]`` draws (they drew none).
        Lineage only: the task does not wait for it (the body had its result already)."""
        named = {d[0] for d in deps}
        for k in LINEAGE_KWARGS:
            v = task.kwargs.get(k)
            for h in (v,) if isinstance(v, str) else v if isinstance(v, (list, tuple)) else ():
                p = (self.by_key.get(h) or self.by_own_key.get(h)) if isinstance(h, str) \
                    else None
                if p is not None and p is not task and p.node_id not in named:
                    named.add(p.node_id)
                    deps.append([p.node_id, ["hash"]])
                elif p is None and isinstance(h, str):
                    # said, not dropped without a word (a typo, another run's hash)
                    self.out.append(LogRecord(
                        self.run_id, self.clock.now(), "warning",
                        f"{k} {h[:16]}{'…' if len(h) > 16 else ''} of {task.node_id} names no "
                        f"task of this run: no lineage edge drawn", node_id=task.node_id))

    def _fail_before_start(self, task: Task, exc: BaseException) -> None:
        """A task that could not even be keyed or looked up fails like a task that raised."""
        if task.state not in TERMINAL:
            self._finish(task, FAILED, error=exc)
            self._after_failure(task)

    # == dispatch ===========================================================================
    #: Ready tasks keyed together, their lookups one query (up to this many a burst).
    LOOKUP_BURST = 500

    def _dispatch(self) -> None:
        """Key newly ready tasks, then start queued ones while slots are free (iteratively:
        inline tasks complete inside ``_start`` and make more tasks ready)."""
        ready, became, limit = self.ready, self.became_ready, self.opt.max_parallel
        timers = self.timers
        turns = 0
        while True:
            turns += 1
            if not turns & 63 and timers and timers[0][0] <= self.clock.monotonic():
                # a body that keeps this busy (tasks it submits faster than they end) gets
                # its run's timeout on time: it fired 9-38 s late, after this returned
                # (looked at every 64 turns: a clock read a task cost the fan-out)
                self._fire_timers()
            if became and not ready:
                self._declared_lane()
            while became:
                if timers and timers[0][0] <= self.clock.monotonic():
                    self._fire_timers()          # (once a burst, as above)
                lookup: list[Task] = []
                taken = 0
                while became and taken < self.LOOKUP_BURST:
                    t = became.popleft()
                    if t.state is not PENDING:
                        continue
                    taken += 1       # keyed here: a hit, a resumed task, a twin or a lookup
                    try:
                        if self._on_ready(t):
                            lookup.append(t)
                    except Exception as exc:  # noqa: BLE001 - e.g. an argument that cannot be hashed
                        self._fail_before_start(t, _named_argument(t, exc))
                if lookup:   # one memo query for the whole burst, not one per task
                    try:
                        found = self.results.content_hashes([t.cache_key for t in lookup])
                    except Exception as exc:  # noqa: BLE001 - the store could not be read
                        found = None
                        for t in lookup:
                            self._fail_before_start(t, exc)
                    if found is not None:
                        for t in lookup:
                            # A later task of the burst may have stopped the run (its key
                            # failed under 'fail'): the ones cancelled since stay cancelled.
                            if t.state is PENDING:
                                self._after_lookup(t, found.get(t.cache_key))
                self._progressed(taken)
            if self._held_retry and self._start_held(limit):
                continue
            if not ready or self.running >= limit or self.stopping:
                return
            task = ready.popleft()
            if task.state is QUEUED:
                if task.scope is not None and self._scope_parks(task):
                    continue            # its nested pipeline's max_parallel: it waits there
                spec = task.spec
                if spec.resources:
                    if not self._reserve(task):
                        continue
                elif task.ref_slots is DECLARED and not self.engine.has_sinks \
                        and self._mode(spec) == "inline" \
                        and self._run_declared_inline(task):
                    self._progressed(1)
                    continue
                self._start(task)
                self._progressed(1)

    def _declared_lane(self) -> None:
        """The deep graph's hot path: declared nodes that become ready one at a time (each
        the last input of the next) are keyed, looked up and, on a miss, run inline, one after
        another, without the general path's bursts (a burst of one, there) and queue. Taken
        while exactly one node is ready (more are a burst: one lookup for all of them, and a
        failed lookup fails all of them, as the general path does), nothing waits for a slot
        (``ready``, ``held``), a slot is free, nobody listens for events, and the run memoizes
        and is not resumed. It stops at the first node that is not a declared node running
        inline, leaving it in ``became_ready`` for the general path. Same decisions, rows and
        counts as the general path (a twin is handed to ``_keyed``;
        tests/engine/test_inline_fast_path.py compares them)."""
        engine = self.engine
        if self.prior or self.opt.no_cache or engine.has_sinks or self.held \
                or self._held_retry:
            return
        became, ready, by_key, counts = self.became_ready, self.ready, self.by_key, self.counts
        # No deadline to keep (``_mode``): the engine's choice as it is (one call a node less;
        # the lane starts nothing that could set one).
        executors = engine.executors
        choose_mode = self._mode if self._tight_run or self._tight else engine.choose_mode
        lookup = self.results.content_hashes
        limit = self.opt.max_parallel
        steps = 0
        while len(became) == 1 and self.running < limit and not ready and not self.stopping:
            t = became[0]
            if t.state is not PENDING:
                became.popleft()
                continue
            spec = t.spec
            if t.ref_slots is not DECLARED or t.attempt or not spec.cache \
                    or not spec.raw_result or spec.resources \
                    or spec.platform not in executors or choose_mode(spec) != "inline":
                break
            became.popleft()
            steps += 2                   # keyed and started: as the general path counts
            if steps >= 256:
                self._progressed(steps)
                steps = 0
            try:
                key = declared_key(engine, t)
                if key in by_key:
                    # an in-run twin: followed (False), or failed, when this one takes the key
                    if not self._keyed(t, key):
                        continue
                else:
                    t.cache_key = key
                    by_key[key] = t
                found = lookup([key])
            except Exception as exc:  # noqa: BLE001 - e.g. a store that cannot be read
                self._fail_before_start(t, exc)
                continue
            h = found.get(key) if found else None
            if h is not None:
                self._hit(t, h, "hit", "stored result with the same code, config and inputs")
                continue
            t.cache_status, t.cache_reason = "miss", self._miss_reason(t)
            t.state = QUEUED                  # _set_state(t, QUEUED) without listeners
            counts[PENDING] -= 1
            counts[QUEUED] += 1
            if not t.dirty:
                t.dirty = True
                self.dirty.append(t)
            if not self._run_declared_inline(t):
                ready.append(t)              # e.g. an input to read back: the general path
        if steps:
            self._progressed(steps)

    def _mode(self, spec: Any) -> str:
        """``engine.choose_mode``, except that 'auto' does not run a component inline (on
        this thread, where no timer can fire until the call returns) while a deadline someone
        set must fire on time: the pipeline's own timeout below ``DEFAULT_TIMEOUT``, or a
        running task's (a component with its own timeout). A call measured fast may still
        take long once; it then runs in a thread, and those deadlines are kept."""
        mode = self.engine.choose_mode(spec)
        if mode == "inline" and spec.executor == "auto":
            if self._tight_run:
                return "thread"
            tight = self._tight
            if tight:
                for t in [t for t in tight if t.state is not RUNNING]:
                    tight.discard(t)
                if tight:
                    return "thread"
        return mode

    def _reserve(self, task: Task) -> bool:
        """Take the local resources ``task`` asks for, or hold it back until some are given
        back. In order: once a task of this run waits, the later ones wait behind it."""
        pool = self._pool
        if pool is None or task.spec.platform != "local":
            return True
        try:
            amounts = self._amounts(task)
        except ResourceUnavailable as exc:          # more than there is: it would wait forever
            self._fail_before_start(task, exc)
            return False
        if not self.held and pool.take_or_wait(amounts, self._resources_freed):
            return True
        self.held.append(task)
        return False

    def _start_held(self, limit: int) -> bool:
        """Start the first held task if a slot and its resources are free; True if it started.
        One task per call: a give-back costs the held tasks one try, not one each."""
        held = self.held
        while held and (held[0].state is not QUEUED          # cancelled while it waited
                        or held[0].scope is not None and self._scope_parks(held[0])):
            held.popleft()
        if not held:
            self._held_retry = False
            self._pool.forget(self._resources_freed)         # the next run in line, if any
            return False
        if self.running >= limit or self.stopping:
            return False                # tried again after the next task ends
        if not self._pool.take_or_wait(self._amounts(held[0]), self._resources_freed):
            self._held_retry = False    # until something else is given back
            return False
        self._start(held.popleft())
        self._progressed(1)
        if not held:
            self._pool.forget(self._resources_freed)
        return True

    def _amounts(self, task: Task) -> tuple[int, int, int]:
        """What ``task``'s component asks for, checked against the capacity once per spec."""
        spec = task.spec
        found = self._asks.get(id(spec))
        if found is None:
            self._pool.check([task.component], spec.resources)
            found = self._asks[id(spec)] = (spec, resource_amounts(spec.resources))
        return found[1]

    def _resources_freed(self) -> None:
        """Called (once, from any thread) when local resources are given back."""
        self.inbox.put(("resources",))

    def _give_back(self, task: Task) -> None:
        """A task that held local resources (``_reserve``) has ended or will not start."""
        if self._pool is not None and task.spec.platform == "local":
            self._pool.give_back(self._amounts(task))

    def _progressed(self, n: int) -> None:
        """``n`` more tasks keyed or started. Every 256, across ``_dispatch`` calls (a body
        that keeps submitting never lets the loop sleep; a burst of memo hits starts nothing),
        records are handed over if ``HAND_OVER_EVERY`` has passed."""
        self._steps += n
        if self._steps >= 256:
            self._steps = 0
            self._maybe_hand_over()

    def _run_declared_inline(self, task: Task) -> bool:
        """``_start``, ``_complete`` and ``_finish`` of a declared node that runs inline, in
        one step, for the common case: its local executor is there, its inputs are in memory,
        nobody listens for events, and its first attempt succeeds. False, having done nothing,
        if any of that does not hold before the call (the caller then takes the general path,
        as retries do); after the call, any other outcome (an error, a timeout, a value that
        does not encode) goes on through ``_complete``. The rows, counts and states it leaves
        are the general path's (tests/engine/test_inline_fast_path.py compares them)."""
        spec = task.spec
        if spec.platform not in self.engine.executors or not spec.raw_result \
                or task.attempt:          # a retry: its attempt rows are the general path's
            return False
        arguments, parameters, names, producers = task.args
        values = {}
        for n, p in zip(names, producers):
            v = p.value
            if v is UNLOADED:
                return False          # read back from the store: the general path does it
            if type(v) not in SHARED_TYPES:
                v = own_copy(v)
            values[n] = v if p.spec.raw_result else p.result_view(v)
        self._release_inputs(task)
        task.attempt = attempt = task.attempt + 1
        task.fence = fence = self._fence_base + attempt
        clock = self.clock
        if self._first_start is None:
            self._first_start = clock.monotonic()
        task.mode = "inline"
        self.running += 1
        task.started_at = clock.now()
        ctx = tasklog._ctx
        prev = getattr(ctx, "task", None)
        ctx.task = (self, task.node_id)
        try:
            value, error, took = self._call_inline(task, self.engine.invoke_raw,
                                                   (arguments, parameters, values), _EMPTY)
        finally:
            ctx.task = prev
        if self._taken_over_meanwhile() and task.state in TERMINAL:
            # cancelled as the run stopped (never RUNNING on this path: not counted off)
            self.running -= 1
            return True
        if took > spec.timeout:
            value, error = None, TaskTimeout(task.node_id, spec.timeout, killed=False,
                                             inline=True)
        if error is None:
            try:
                value = settled(value)
                enc = self.engine.encode(value)
            except BaseException:  # noqa: BLE001 - _complete fails the task with it
                enc = None
            if enc is not None:
                self.running -= 1
                self.engine.observe(spec, took, True)
                task.value = value
                self._store_result(task, enc)
                self._succeeded(task, took)
                return True
        self._complete(task, fence, error is None, value, error, took)
        return True

    def _store_result(self, task: Task, enc: Any) -> None:
        """Set ``task``'s content hash and hand its encoded result ``enc`` to the recorder:
        small, to a writer process, as a wire row (``core.wire.pack_result_rows``); else as
        a ``PutResult``."""
        content_hash = enc.content_hash
        task.content_hash = value_id(enc.encoding, content_hash)   # raw bytes are marked
        key = task.cache_key
        assert key is not None     # keyed in _on_ready, before it could run
        buffers = enc.buffers
        if self._packing and enc.size <= INLINE_MAX and len(buffers) == 1 \
                and type(buffers[0]) is bytes:
            meta = self._small_meta.get(enc.encoding) if task.result_md is None else \
                {**task.result_md, "encoding": enc.encoding, "dag_id": self.pipeline}
            if meta is None:
                meta = self._small_meta[enc.encoding] = {"encoding": enc.encoding,
                                                         "dag_id": self.pipeline}
            self.small.append((key, buffers[0], (key, enc.data_type, content_hash,
                                                 enc.size, None, None, meta)))
            self.small_tokens.append((self, task))
        else:
            self.out.append(PutResult(key, buffers,
                                      self.engine.result_meta(self.run_id, task, enc),
                                      (self, task)))

    def _succeeded(self, task: Task, duration: float) -> None:
        """``_finish(task, SUCCESS, duration=...)`` for a task whose inputs were released and
        that nobody listens to the events of (``_run_declared_inline``), with ``_set_state``
        written out: this runs once per node of a large graph."""
        with self.lock:
            task.state = SUCCESS
            ev = task.event
        task.ended_at = self.clock.now()
        counts = self.counts
        counts[QUEUED] -= 1
        counts[SUCCESS] += 1
        if not task.dirty:
            task.dirty = True
            self.dirty.append(task)
        if ev is not None:
            ev.set()
        self.unfinished -= 1
        self._done_times.append(self.clock.monotonic())
        self._done_count += 1
        self._release_dependents(task)

    def _start(self, task: Task) -> None:
        if task.scope is not None:
            self._scope_started(task)
        try:
            executor = self.engine.executor_for(task.spec)
            args, kwargs = task.args, task.kwargs
            if kwargs:                  # copied: lineage arguments may be taken out below
                kwargs = dict(kwargs)
            # An attempt another may follow gets all its arguments copied in one piece below
            # (``own_copy((args, kwargs))``): its inputs are not copied one by one first.
            whole = (task.spec.retry_policy is not None or task.scope is not None
                     or self.opt.error_handler == "retry") \
                and self._may_retry(task, task.attempt + 1)
            if task.ref_slots is DECLARED:
                arguments, parameters, names, producers = args
                values = {}
                for n, p in zip(names, producers):      # each producer's whole result
                    v = p.value
                    if v is UNLOADED:
                        v = self._loaded(p)
                    if not whole:
                        v = own_copy(v)
                    values[n] = v if p.spec.raw_result else p.result_view(v)
                args = (arguments, parameters, values)
            elif task.ref_slots:
                fetch, positional = self._shared_input if whole else self._fetch, list(args)
                for slot in task.ref_slots:
                    if isinstance(slot, int):
                        positional[slot] = substitute(positional[slot], fetch)
                    else:
                        kwargs[slot] = substitute(kwargs[slot], fetch)
                args = tuple(positional)
        except BaseException as exc:  # noqa: BLE001 - e.g. a missing key in an upstream output
            if task.spec.resources:
                self._give_back(task)
            # It never ran: no attempt (its row said attempts=1 with no attempt row).
            self._finish(task, FAILED, error=exc)
            self._after_failure(task)
            return
        self._release_inputs(task)
        if kwargs and not accepts_lineage(task.fn):
            for k in LINEAGE_KWARGS:
                kwargs.pop(k, None)
        task.attempt += 1
        task.fence = self._fence_base + task.attempt      # core.states.fence(epoch, attempt)
        if self._first_start is None:
            self._first_start = self.clock.monotonic()
        mode = self._mode(task.spec) if self._tight_run or self._tight \
            else self.engine.choose_mode(task.spec)
        task.mode = mode
        if whole and (mode == "inline" or mode == "thread"):
            # Each attempt gets the arguments as they were called with (and keyed by): an
            # attempt that changed them in place (``queue.pop(0)``) gave its retry, and the
            # result stored under the call's key, what was left of them. A process or remote
            # attempt gets a copy of its own anyway (pickled).
            args, kwargs = own_copy((args, kwargs))   # one copy: what they share stays shared
        if mode != "inline" and task.spec.timeout < DEFAULT_TIMEOUT:
            self._tight.add(task)          # its deadline must fire on time: see _mode
        self.running += 1
        if mode != "inline" or self.engine.has_sinks:
            self._set_state(task, RUNNING)
        else:
            # Inline without listeners: it ends before the loop does anything else, so nobody
            # could see it RUNNING (no row is handed over, no event wanted): its row goes from
            # QUEUED straight to its end, with the time it started.
            task.started_at = self.clock.now()
        invoke = self.engine.invoke_raw if task.spec.raw_result else self.engine.invoke
        if mode == "inline":         # on this thread: no job, no hand-off
            prev = tasklog.set_current((self, task.node_id))
            try:
                value, error, took = self._call_inline(task, invoke, args, kwargs)
            finally:
                tasklog.set_current(prev)
            if took > task.spec.timeout:
                # Inline calls cannot be stopped: one that overran its timeout is still a
                # timeout (its result is discarded), and the component leaves inline mode.
                value, error = None, TaskTimeout(task.node_id, task.spec.timeout, killed=False,
                                                 inline=True)
            self._complete(task, task.fence, error is None, value, error, took)
            return
        task.started = self.clock.monotonic()     # for its timeout
        if mode == "thread":
            invoke = self.engine.with_task_logs(invoke, self, task.node_id)
        elif mode == "process" and task.spec.environment:   # a worker process of its own
            invoke = self.engine.with_environment(invoke, task.spec.environment)
        # 'remote': the job goes to another platform as it is (picklable: no closures over
        # this loop); its executor applies the environment and forwards logs through on_log.
        job = task.job = Job(task, invoke, (task.fn, args, kwargs), {}, mode)
        inbox = self.inbox
        if mode != "thread":         # ... their worker forwards each record (any thread)
            job.on_log = self._log_sink(task.node_id)
            if mode == "process":
                job.code = task.fn
        if mode == "process" and getattr(executor, "reports_start", False):
            # it may wait for a worker: recorded as started when one takes it (an executor
            # that does not say when is taken at its word: started when handed over)
            fence = task.fence
            job.on_start = lambda: inbox.put(("began", task, fence))
            self.waiting.add(task)
        self._timer(task.spec.timeout, "task_timeout", task, task.fence)
        job.executor = executor
        try:
            executor.submit(job, lambda o: inbox.put(("done", o)))
        except Exception as exc:  # noqa: BLE001 - e.g. a remote platform's API is down
            task.job = None          # nothing to abort: it never started
            self._complete(task, task.fence, False, None, exc, 0.0)

    @staticmethod
    def _abort(task: Task) -> bool:
        """Stop a running task's job on its executor (True: killed; False: abandoned, or it
        ran inline and cannot be stopped)."""
        job = task.job
        if job is None or job.executor is None or task.mode == "inline":
            if job is not None and job.stop_flag is not None:
                job.stop_flag.request()      # an inline call the loop moved away from: told
            return False             # inline: it cannot be stopped (an older job is not it)
        try:
            return bool(job.executor.abort(job))
        except Exception:  # noqa: BLE001 - a failed abort leaves the job abandoned, not the run
            return False

    def _log_sink(self, node_id: str) -> Callable[[float, str, str], None]:
        logs, run_id = self.logs, self.run_id

        def on_log(created: float, level: str, message: str) -> None:
            logs.append(LogRecord(run_id, created, level, message, node_id))
        return on_log

    def _loaded(self, t: Task) -> Any:
        """A finished task's value (read back from the result store if it was dropped)."""
        value = t.value
        if value is UNLOADED:
            value = t.value = self.engine.load_value(t.cache_key, t.content_hash, t.node_id)
        return value

    def _fetch(self, ref: Ref) -> Any:
        """An input's value, as a copy of the task's own."""
        return self._input(ref, own_copy)

    def _shared_input(self, ref: Ref) -> Any:
        """``_fetch`` without the copy (the caller copies all its arguments at once)."""
        return self._input(ref, _same)

    def _input(self, ref: Ref, copy: Callable[[Any], Any]) -> Any:
        t = ref._task
        value = self._loaded(t)
        if not ref._path:
            return t.result_view(copy(value))
        if ref._path[0] == "outputs" and not t.spec.raw_result:
            return copy(walk_path(t.node_id, value, ref._path, 1, "input "))
        return copy(walk_path(t.node_id, t.result_view(value), ref._path, 0, "input "))

    def _release_inputs(self, task: Task) -> None:
        """This task needs its inputs' in-memory values no more (started, or finished without
        running): count it off each producer once; a producer nobody needs and whose result
        is stored drops its value (it can be reloaded)."""
        producers = task.producers
        if producers is _NONE:
            return
        task.producers = _NONE
        for p in producers:
            p.consumers -= 1
            if p.consumers <= 0 and p.stored and p.state is SUCCESS \
                    and not _small(p.value):
                p.value = UNLOADED

    # == completion =========================================================================
    def _on_outcome(self, o: Any) -> None:
        task = self.tasks.get(o.node_id)
        if task is None or task.fence != o.fence or task.state is not RUNNING:
            self.out.append(LogRecord(self.run_id, self.clock.now(), "warning",
                                        f"dropped a late result of {o.node_id} (fence {o.fence})",
                                        o.node_id))
            return
        self._complete(task, o.fence, o.ok, o.value, o.error, o.duration)

    def _complete(self, task: Task, fence: int, ok: bool, value: Any, error: Any,
                  duration: float) -> None:
        if task.mode == "inline":
            was_running = task.state is RUNNING
            if self._taken_over_meanwhile() and task.state in TERMINAL:
                # cancelled as the run stopped: its result is not this run's (a task that was
                # not RUNNING, as inline ones without listeners are not, is counted off here)
                if not was_running:
                    self.running -= 1
                return
        self.running -= 1
        if task.scope is not None:
            self._scope_stopped(task)
        if task.spec.resources:
            self._give_back(task)
        self.engine.observe(task.spec, duration, ok)
        now = self.clock.now()
        if task.started_at is not None and now - duration > task.started_at:
            # It was RUNNING from its hand-over, but ran from the job's real start: a worker
            # process spawned for it first (0.3-0.5 s) is not its time (its row showed 0.9 s
            # for a 0.4 s task, longer than its 0.5 s timeout).
            task.started_at = now - duration
        if ok:
            try:
                value = settled(value)
                enc = self.engine.encode(value)
            except BaseException as exc:  # noqa: BLE001 - unencodable result is a task failure
                ok, error = False, exc
        if ok:
            task.value = value
            self._store_result(task, enc)
            if task.attempt > 1 or task.attempt_row == task.attempt:
                # A first attempt that succeeded is described by the task row itself (attempts=1,
                # fence, times): no attempt row for it unless one was already started.
                self.out.append(AttemptRecord(self.run_id, task.node_id, task.attempt, fence,
                                              SUCCESS, executor=f"{task.spec.platform}:{task.mode}",
                                              started_at=now - duration, ended_at=now))
            self._finish(task, SUCCESS, duration=duration)
            return
        task.error = error
        self.out.append(AttemptRecord(self.run_id, task.node_id, task.attempt, fence,
                                        FAILED, executor=f"{task.spec.platform}:{task.mode}",
                                        started_at=now - duration, ended_at=now,
                                        error=error_text(error)))
        tb = traceback_text(error).rstrip()
        self.out.append(LogRecord(self.run_id, now, "error",
                                  f"attempt {task.attempt} failed: {error_text(error)}"
                                  + (f"\n{tb}" if "\n" in tb else ""), task.node_id))
        policy = self._retry_policy(task)
        if policy is not None and not self.stopping and policy.retries(error, task.attempt) \
                and (task.scope is None or task.scope.ended is None):
            delay = policy.delay(task.attempt, self.engine.rng)
            self._set_state(task, RETRYING)
            self.out.append(LogRecord(self.run_id, now, "info",
                                        f"retrying in {delay:.3g}s", task.node_id))
            self._timer(delay, "retry", task, task.fence)
            return
        self._finish(task, FAILED, error=error, duration=duration)
        self._after_failure(task)

    def _retry_policy(self, task: Task) -> RetryPolicy | None:
        """The policy ``task``'s failures are retried by: its component's, else that of the
        'retry' error handler deciding for it (if that is the handler)."""
        policy = task.spec.retry_policy
        if policy is None:
            handler, config = self._handler_of(task.scope)
            if handler == "retry":
                policy = config.get("retry_policy") or DEFAULT_RETRY
        return policy

    def _may_retry(self, task: Task, attempt: int) -> bool:
        """Whether ``task``'s attempt number ``attempt`` may be followed by another."""
        policy = self._retry_policy(task)
        return policy is not None and policy.max_attempts > attempt

    def _after_failure(self, task: Task) -> None:
        self.failures[task.node_id] = error_text(task.error)
        self.emit({"event": "error", "run_id": self.run_id, "node_id": task.node_id,
                   "error": error_text(task.error), "traceback": traceback_text(task.error)})
        self._handle_failure(task, task.scope,
                             f"task {task.node_id} failed: {error_text(task.error)}")
        if task.aliases:
            # Its in-run twins (the same call made again) fail after it, as following it:
            # released first, a twin that never ran was the one the stop, the handler and
            # the run's error named.
            self._release_twins(task)

    def _handler_of(self, scope: Scope | None) -> tuple[str, Mapping[str, Any]]:
        """The error handler (and its config) that decides for a failure in ``scope``: the
        innermost nested pipeline's that has one of its own, else the run's."""
        while scope is not None:
            if scope.error_handler is not None:
                return scope.error_handler, scope.error_config
            scope = scope.parent
        return self.opt.error_handler, self.opt.error_config

    def _handle_failure(self, task: Task | None, scope: Scope | None, message: str,
                        cancelled: list[Task] | None = None) -> None:
        """Decide about a failure in ``scope`` (None: the run's own tasks): ``task`` failed, or
        a nested pipeline in it failed (``task`` is its failed task, None if it timed out)
        and ``cancelled`` are its tasks cancelled with it (``ScopeSide._fail_scope``)."""
        while scope is not None and scope.error_handler is None:
            scope = scope.parent          # no handler of its own: the enclosing one decides
        handler, config = self._handler_of(scope)
        if handler == "custom":
            # a nested pipeline that failed: its failed task (None: it timed out) and why
            info = {"run_id": self.run_id, "node_id": None if task is None else task.node_id,
                    "error": message if task is None or cancelled is not None
                    else error_text(task.error)}
            self._call_error_handler(config.get("handler"), info)
            if config.get("continue_on_error"):
                handler = "continue"
        if handler == "continue":
            if task is not None:
                self._skip_downstream(task)
            for t in cancelled or ():
                self._skip_downstream(t)
        elif scope is not None:
            self._fail_scope(scope, task, f"stopped: {message}")
        else:
            self._stop("failed", message)

    def _call_error_handler(self, handler: Any, info: dict[str, Any]) -> None:
        """Hand one failure to the custom error handler, called on a thread of the run's own,
        in order: on this thread a slow handler (a webhook) held every timer, outcome and
        start of the run (a pipeline timeout of 1 s took 8 s). Its return value decides
        nothing (``continue_on_error`` does), so the run goes on meanwhile; the run's end
        waits for the calls still going (``wait_for_error_handlers``)."""
        calls = self._handler_calls
        if calls is None:
            calls = self._handler_calls = queue.SimpleQueue()
            self._handler_thread = threading.Thread(
                target=self._error_handlers, args=(calls,), daemon=True,
                name=f"twingraph-onerror-{self.run_id[:8]}")
            self._handler_thread.start()
        calls.put((handler, info))

    def _error_handlers(self, calls: queue.SimpleQueue[Any]) -> None:
        try:
            while (item := calls.get()) is not None:
                handler, info = item
                problem = self.engine.call_error_handler(handler, info)
                if problem:   # ``logs``: the channel other threads write the run's log through
                    self.logs.append(LogRecord(self.run_id, self.clock.now(), "warning",
                                               problem, info["node_id"]))
        finally:
            self._handlers_done.set()

    def wait_for_error_handlers(self, timeout: float) -> None:
        """The run's loop has ended: let the error handler calls still going finish (at most
        ``timeout`` seconds, less if ``handlers_cut`` is set: the engine is closing), and hand
        what they logged over with the run's last records. The run stays alive to others
        meanwhile: its heartbeat goes on (silent for longer than ``LIVE_WINDOW``, another
        process took its driver for dead and ended it). Ctrl-C stops the wait (raised)."""
        thread = self._handler_thread
        if thread is None or self._handler_calls is None:
            return
        self._handler_calls.put(None)
        start = time.monotonic()
        deadline, beat = start + timeout, start
        why = f"{timeout:.0f} s after the run ended"
        done = self._handlers_done
        # An event, not ``Thread.join``: a join that Ctrl-C interrupts can leave the thread
        # looking ended (``is_alive()`` False) while it runs on.
        try:
            while not done.is_set():
                if self.handlers_cut.is_set():
                    why = "when the engine was closed"
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                done.wait(min(left, 0.1))
                if time.monotonic() - beat >= HEARTBEAT_INTERVAL:
                    beat = time.monotonic()
                    self.engine.heartbeats.beat(self.run_id, self.clock.now(), self.epoch)
        except KeyboardInterrupt:
            why = "when the wait for it was interrupted (Ctrl-C)"
            raise
        finally:        # what the handlers logged is recorded, however the wait ended
            if not done.is_set():
                self.logs.append(LogRecord(self.run_id, self.clock.now(), "warning",
                                           f"the error handler was still running {why}; the "
                                           f"run did not wait for it"))
            if self.logs:
                self._hand_over(final=True)

    def _log_body_error(self, exc: BaseException) -> None:
        """The body's own exception, with its traceback, in the run's logs (``runs logs``):
        a typo in the body (``r["output"]``) was told as ``KeyError: 'output'`` alone, with
        no file or line anywhere. Not a task's failure the body re-raised (logged with its
        task), nor the run's own stop (a timeout, a cancel) raised into the body."""
        if isinstance(exc, (PipelineError, KeyboardInterrupt)) or any(
                exc is e for e in self.failures.values()):
            return
        tb = traceback_text(exc).rstrip()
        if isinstance(exc, RunStopped):       # the run's own stop, made to end the body
            self.out.append(LogRecord(self.run_id, self.clock.now(), "warning",
                                      f"the pipeline body was stopped: {exc}"
                                      + (f"\n{tb}" if "\n" in tb else "")))
            return
        self.out.append(LogRecord(self.run_id, self.clock.now(), "error",
                                  f"the pipeline body raised {error_text(exc)}"
                                  + (f"\n{tb}" if "\n" in tb else "")))

    def _body_failed(self, exc: BaseException) -> None:
        """The pipeline body raised. Under 'fail' (and 'retry', whose retries are a task's)
        the run stops as when a task fails: nothing new starts, running tasks are cancelled.
        Under 'continue' what it submitted still runs: none of it depends on the body."""
        handler = self.opt.error_handler
        if handler == "custom" and self.opt.error_config.get("continue_on_error"):
            handler = "continue"
        if handler != "continue":
            self._stop("failed", f"the pipeline body raised {error_text(exc)}")

    def _skip_downstream(self, task: Task) -> None:
        """Skip what depends on failed ``task``; each skip names it and its error (and has it
        as ``__cause__``: the body's ``.result()`` of a skipped task says what failed)."""
        stack = list(task.dependents)
        while stack:
            t = stack.pop()
            if t.state in TERMINAL:
                continue
            self._finish(t, SKIPPED, error=_skipped_for(task, t))
            stack.extend(t.dependents)

    def _finish(self, task: Task, state: TaskState, *, error: BaseException | None = None,
                duration: float | None = None) -> None:
        if error is not None:
            task.error = error
        if task.scope is not None:
            self._scope_stopped(task)
        self._release_inputs(task)
        self._set_state(task, state, duration=duration)
        self.unfinished -= 1
        if duration is not None:                # ran: memo hits and skips would inflate the ETA rate
            self._done_times.append(self.clock.monotonic())
            self._done_count += 1
        if state is SUCCESS:
            self._release_dependents(task)
        elif task.aliases and state is not FAILED:
            self._release_twins(task)     # a failure's twins follow in ``_after_failure``

    def _release_dependents(self, task: Task) -> None:
        """A task has succeeded: count it off its dependents (those it was the last input of
        become ready), drop what only scheduling needed (bounded memory per finished node),
        and finish its in-run twins as it finished."""
        became = self.became_ready
        for d in task.dependents:
            d.waiting -= 1
            if d.waiting == 0 and d.state is PENDING:
                became.append(d)
        task.dependents = _NONE
        task.args, task.kwargs, task.job, task.ref_slots = (), _EMPTY, None, ()
        if task.aliases:
            self._release_twins(task)

    def _release_twins(self, task: Task) -> None:
        aliases, task.aliases = task.aliases, None
        for a in aliases or ():
            if a.state not in TERMINAL:
                self._follow_twin(a, task)

    def _set_state(self, task: Task, state: TaskState, *, duration: float | None = None) -> None:
        """The only place a task's state changes: counts, waiters, the dirty mark for the
        recorder (one snapshot row per task per hand-over), and the event."""
        old = task.state
        if state in TERMINAL:                 # only terminal states wake waiters (see resolve_ref)
            with self.lock:
                task.state = state
                ev = task.event
            task.ended_at = self.clock.now()
        else:
            task.state, ev = state, None
            if state is RUNNING:
                task.started_at = self.clock.now()
        counts = self.counts
        counts[old] -= 1
        counts[state] += 1
        if old is RUNNING and self.waiting:
            self.waiting.discard(task)     # it ended (or is retried) before a worker took it
        if not task.dirty:
            task.dirty = True
            self.dirty.append(task)
        if ev is not None:
            ev.set()
        if self.engine.has_sinks and not (state is RUNNING and task.mode == "process"
                                          and self._reports_start(task)):
            # (a process task's RUNNING event waits for a worker to take it: "began")
            ev_out: dict[str, Any] = {
                "event": "node:status", "run_id": self.run_id, "node_id": task.node_id,
                "component": task.component, "status": state.value, "cache": task.cache_status}
            if duration is not None:
                ev_out["duration"] = duration
            if state is FAILED:
                ev_out["error"] = error_text(task.error)
            self.emit(ev_out)

    def _reports_start(self, task: Task) -> bool:
        """Whether ``task``'s executor says when a worker takes its job (``Job.on_start``)."""
        try:
            return bool(getattr(self.engine.executor_for(task.spec), "reports_start", False))
        except Exception:  # noqa: BLE001 - no executor for it: it never waits for one
            return False

    # == stopping ===========================================================================
    def _end_attempt_row(self, task: Task, state: TaskState, error: BaseException) -> None:
        """A running attempt that ends without an outcome (the run stopped, or its loop
        crashed): its row, if one was written as RUNNING, says how it ended."""
        if task.attempt_row == task.attempt:
            now = self.clock.now()
            self.out.append(AttemptRecord(self.run_id, task.node_id, task.attempt, task.fence,
                                          state, executor=f"{task.spec.platform}:{task.mode}",
                                          started_at=task.started_at or now, ended_at=now,
                                          error=error_text(error)))

    def _cancel(self, task: Task, message: str) -> None:
        """End an unfinished ``task`` CANCELLED (a running one's job killed or abandoned)."""
        if task.state is RUNNING:
            self._cancel_running(task, message)
        else:
            self._finish(task, CANCELLED, error=TaskCancelled(message, node_id=task.node_id))

    def _cancel_running(self, task: Task, message: str) -> None:
        """End a running ``task`` CANCELLED: its job killed if it can be, else abandoned."""
        began = task.mode == "inline" or getattr(task.job, "started_at", None) is not None
        killed = self._abort(task)
        self.running -= 1
        if task.spec.resources:
            self._give_back(task)
        # A job still waiting for a worker (a process being spawned) never ran: it was
        # neither killed nor left running, and is no attempt (a resume would have counted it
        # against the task's retries)
        how = ("killed" if killed else "abandoned") if began else "dropped before it started"
        error = TaskCancelled(f"{message}; running task {how}", node_id=task.node_id)
        if began or task.attempt_row == task.attempt:
            # (a thread job waiting for a free thread has its RUNNING row already: ended
            # here, or it stayed RUNNING in a finished run)
            self._end_attempt_row(task, CANCELLED, error)
        else:           # no attempt row was written for it (an earlier attempt's stays as is)
            task.attempt -= 1
            task.started_at = None
        self._finish(task, CANCELLED, error=error)

    def _stop(self, why: str, message: str) -> None:
        if self.stopping:
            if why in HARD_STOPS and self.stopping not in HARD_STOPS:
                self._harden_stop(why, message)
            return
        self.stopping, self.stop_message = why, message
        if self.body_flag is not None:        # the body's ``stop_requested()`` says so now
            self.body_flag.request()
        if why in HARD_STOPS and self.body_watch is not None:
            self.body_watch.stop_later()      # and if it goes on regardless, it is stopped
        self.out.append(LogRecord(self.run_id, self.clock.now(), "warning", f"stopping: {message}"))
        for task in list(self.tasks.values()):
            if task.state not in TERMINAL:
                self._cancel(task, message)
        self.ready.clear()
        self.held.clear()
        self.resuming.clear()        # lookups in flight end as cancelled tasks
        if self._pool is not None:
            self._pool.forget(self._resources_freed)

    def _harden_stop(self, why: str, message: str) -> None:
        """The run's timeout passed, or it was cancelled, after a failure had stopped it: its
        tasks are ended already, but a body that goes on (it may handle the failure, 0085) is
        bounded by the timeout and the cancel as any body is, and the run ends as they say."""
        self.stopping = why
        self.stop_message = f"{message} (after it had stopped: {self.stop_message})"
        if self.body_watch is not None:
            self.body_watch.stop_later()
        self.out.append(LogRecord(self.run_id, self.clock.now(), "warning", f"stopping: {message}"))


def _named_argument(task: Task, exc: Exception) -> Exception:
    """``exc`` of a task that could not be keyed, naming the argument that could not be
    encoded (the message was the same as for a result that cannot be: "cannot encode a value
    of type Connection"), with what to do about it."""
    if not isinstance(exc, ValidationError) or "cannot encode" not in str(exc):
        return exc
    named = [*((f"#{i + 1}", v) for i, v in enumerate(task.args)), *task.kwargs.items()]
    for name, value in named:
        if isinstance(value, Ref):
            continue
        try:
            serialization.encode(value)
        except ValidationError:
            better = ValidationError(
                f"argument {name} of {task.component}: {exc} (a task's arguments are keyed by "
                f"their content, cache=False too: open a connection, client or lock inside "
                f"the component, and pass it what it needs to, a path or a URL)")
            better.__cause__ = exc.__cause__
            return better
        except Exception:  # noqa: BLE001 - not this one's to explain
            continue
    return exc


def _packed(new: list[tuple[Any, ...]], rows: list[Any], rest: list[Any]) -> list[Any]:
    """A hand-over's ``new`` task rows (``TaskRecord`` field values), its other task ``rows``,
    then the ``rest`` of its records and results, with the new rows and the results small
    enough for the writer process each packed in one piece (``core.wire.pack_task_values``,
    ``pack_results``; the recorder's ``packs_records``): packed now, while fresh in the CPU's
    caches, they cost the recorder a fraction."""
    head: list[Any] = []
    for i in range(0, len(new), FRAME_MAX):     # a frame holds at most FRAME_MAX of them
        part = new[i:i + FRAME_MAX]
        packed_rows = pack_task_values(part)
        if packed_rows is not None:
            head.append(packed_rows)
        else:                                   # orjson refused them: sent as records
            head.extend([TaskRecord(*v) for v in part])
    if head:
        rows = head + rows
    puts = [r for r in rest if type(r) is PutResult and r.meta.size <= INLINE_MAX]
    if puts:
        try:
            packed = [pack_results(puts[i:i + FRAME_MAX]) for i in range(0, len(puts), FRAME_MAX)]
        except Exception:  # noqa: BLE001 - e.g. metadata that does not pickle: sent as they are
            packed = None
        if packed is not None:
            rest = [*packed, *[r for r in rest
                               if type(r) is not PutResult or r.meta.size > INLINE_MAX]] \
                if len(puts) < len(rest) else packed
    rows.extend(rest)
    return rows


def _same(value: Any) -> Any:
    return value


def get_nowait(q: queue.SimpleQueue[Any]) -> Any:
    try:
        return q.get_nowait()
    except queue.Empty:
        return None


def _skipped_for(upstream: Task, task: Task) -> NodeExecutionError:
    """The error of ``task``, skipped because ``upstream`` did not succeed: names the task at
    the root of it (an upstream that was itself skipped passes its root on: a chain of skips
    nested each message in the next, 100 KB a task down a chain of 2,000) and what happened
    to it, with its error as the cause (the body's ``.result()`` shows it)."""
    root = getattr(upstream.error, "skipped_root", None) if upstream.state is SKIPPED else None
    if root is not None:
        upstream = root
    what = "failed" if upstream.state is FAILED else f"was {upstream.state.value.lower()}"
    why = f": {error_text(upstream.error)}" if upstream.error is not None else ""
    err = NodeExecutionError(f"upstream {upstream.node_id} {what}{why}", node_id=task.node_id)
    err.__cause__ = upstream.error
    err.skipped_root = upstream          # type: ignore[attr-defined]
    return err
