"""The pipeline body's side of a run: submitting component calls and waiting on their futures.

These methods run on the body thread (and on any thread that holds a ``Ref``, or that shows a
run's ``progress``). They never touch
the scheduling state: a call is appended to ``submitted`` (the loop is woken through its inbox
only when it sleeps), and a waiter blocks on its task's event, which the loop sets when the task
reaches a terminal state.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from twingraph.core.states import TaskState
from twingraph.engine.bodystop import HARD_STOPS
from twingraph.engine.scopes import current as current_scope
from twingraph.engine.refs import Ref, ref_to, snapshot, walk_path
from twingraph.serialization import own_copy
from twingraph.engine.task import (DECLARED, UNLOADED, Task, CANCELLED, FAILED, PENDING, QUEUED,
                                    RETRYING, RUNNING, SKIPPED, SUCCESS, TERMINAL)
from twingraph.errors import (NodeExecutionError, PipelineCancelled, PipelineTimeout, RunStopped,
                              TaskCancelled)



class BodySide:
    """Mixed into ``RunLoop``; the attributes below are the loop's."""
    engine: Any
    run_id: str
    inbox: queue.SimpleQueue[tuple[Any, ...]]
    submitted: deque[Task]
    sleeping: bool
    crashed: BaseException | None
    done: threading.Event
    lock: threading.Lock
    stopping: str | None
    stop_message: str
    unfinished: int
    counts: dict[TaskState, int]
    waiting: set[Task]
    tasks: dict[str, Task]
    _done_times: deque[float]
    _done_count: int
    _first_start: float | None
    _name_counts: dict[str, int]
    observed_failures: set[str]
    _order: Iterator[int]

    def call(self, spec: Any, fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any], node_id: str | None = None) -> Ref:
        """Submit one component call; returns its future at once."""
        name = spec.name
        if node_id is None:
            n = self._name_counts.get(name, 0)
            self._name_counts[name] = n + 1
            node_id = f"{name}-{n}"
        args, kwargs = snapshot(args, kwargs)     # as they are now: the body goes on
        task = Task(node_id, next(self._order), spec, fn, args, kwargs)
        task.scope = current_scope(self)     # a nested pipeline's with settings (or None)
        self._enqueue(task)
        return ref_to(self, task)

    def call_declared(self, spec: Any, fn: Callable[..., Any], arguments: Any, parameters: Any,
                      names: list[str], producers: list[Task], node_id: str,
                      metadata: dict[str, Any] | None = None) -> Task:
        """Submit one node of a declarative graph whose producers are known: ``producers[i]``
        (a task submitted earlier) is the input called ``names[i]``. Cheaper than ``call``
        with futures (nothing to search for), same semantics; returns the task. ``metadata``
        (the node's own) is stored with its result, under the engine's keys."""
        task = Task(node_id, next(self._order), spec, fn,
                    (arguments, parameters, names, producers), {})
        task.producers, task.ref_slots = producers, DECLARED
        if metadata:
            task.result_md = metadata
        self._enqueue(task)
        return task

    def _enqueue(self, task: Task) -> None:
        if self.crashed is not None or self.done.is_set():
            raise NodeExecutionError(f"cannot submit {task.node_id}: the run has ended "
                                     f"({self.stop_message or 'finished'})", node_id=task.node_id)
        if self.stopping in HARD_STOPS:
            # timed out or cancelled: the body's further calls were taken in and cancelled
            # one by one (a body calling in a loop wrote a million cancelled rows)
            raise RunStopped(f"the run stopped ({self.stop_message}): {task.component} was "
                             f"not called")
        self.submitted.append(task)
        if self.sleeping:
            self.inbox.put(("wake",))

    def backlog(self) -> int:
        """Tasks submitted and not finished yet (read from another thread: an estimate)."""
        return len(self.submitted) + self.unfinished

    def body_returned(self, error: BaseException | None) -> None:
        self.inbox.put(("body", error))

    def cancel(self, reason: str = "cancelled") -> None:
        self.inbox.put(("cancel", reason))

    def resolve_ref(self, ref: Ref, timeout: float | None = None) -> Any:
        task = ref._task
        if task.state not in TERMINAL:
            with self.lock:
                if task.state not in TERMINAL and task.event is None:
                    task.event = threading.Event()
                ev = task.event
            if ev is not None:
                deadline = None if timeout is None else time.monotonic() + timeout
                while not ev.wait(0.5 if deadline is None else
                                  max(0.0, min(0.5, deadline - time.monotonic()))):
                    if self.done.is_set() and task.state not in TERMINAL:
                        raise NodeExecutionError(
                            f"task {task.node_id} can no longer finish: the run has ended "
                            f"({self.stop_message or 'engine stopped'})", node_id=task.node_id)
                    if deadline is not None and time.monotonic() >= deadline:
                        raise TimeoutError(f"waiting for {task.node_id} timed out")
        if task.state is not SUCCESS:
            task.observed = True
            raise self._failure_of(task)
        value = task.value
        if value is UNLOADED:
            value = self.engine.load_value(task.cache_key, task.content_hash, task.node_id)
        return own_copy(walk_path(task.node_id, task.result_view(value), ref._path, 0,
                                  same_kind=True))

    def _failure_of(self, task: Task) -> BaseException:
        if task.state is FAILED:
            err = task.error
            if isinstance(err, NodeExecutionError):
                return err
            out = _task_error(err, task.node_id) if err is not None else \
                NodeExecutionError(f"task {task.node_id} failed", node_id=task.node_id)
            out.__cause__ = err
            return out
        if task.state is SKIPPED:
            why = task.error or "an upstream task failed"
            out = NodeExecutionError(f"task {task.node_id} was skipped: {why}",
                                     node_id=task.node_id, error_type="Skipped")
            out.__cause__ = getattr(task.error, "__cause__", None)     # the upstream's error
            return out
        handled = getattr(task.error, "scope_failure", None)
        if handled is not None:
            # Cancelled by a nested pipeline's timeout: said as that (the run goes on), and
            # the body that catches it has handled that failure (``Engine._finish``).
            self.observed_failures.add(handled)
            return task.error       # type: ignore[return-value]
        if not self.stopping and isinstance(task.error, TaskCancelled):
            return task.error       # cancelled with a nested pipeline that failed
        if self.stopping == "timeout":
            return PipelineTimeout(self.stop_message, run_id=self.run_id)
        return PipelineCancelled(f"task {task.node_id} was cancelled: {self.stop_message}",
                                 run_id=self.run_id)

    def progress(self) -> dict[str, Any]:
        """Counts per state, percent done and an ETA (read from any thread: a snapshot).

        ``rate`` is tasks finished per second, measured over the latest tasks that actually
        ran (memo hits and skipped tasks finish at once and are not counted; None until there
        is enough to measure); ``eta_seconds`` is this run's unfinished tasks at that rate. A
        caller that knows of work not submitted yet (a windowed DAG) scales ``rate`` itself."""
        c = self.state_counts()
        total = len(self.tasks)
        finished = total - self.unfinished
        eta = rate = None
        times = list(self._done_times)    # the loop appends to it while we read
        # Completions per second over the window. While it still holds every completion, from
        # the first task's start: tasks that end in bunches (parallel slots of equal tasks)
        # would otherwise count the first bunch's work as done in no time. No estimate from a
        # burst: tasks finishing within microseconds would claim an absurd rate.
        first = self._first_start
        if first is not None and len(times) < (self._done_times.maxlen or 0):
            start, done = first, len(times)
        else:
            start, done = (times[0], len(times) - 1) if times else (0.0, 0)
            if times and times[-1] - start < 0.2 and first is not None:
                # Fast tasks: the window is a few milliseconds, too short to measure; the
                # run's own average since its first task started, then (there was never an
                # ETA for a DAG of quick nodes).
                start, done = first, self._done_count
        if len(times) >= 3 and times[-1] - start >= 0.2:
            rate = done / (times[-1] - start)
            if self.unfinished:
                eta = self.unfinished / rate
        return {"total": total, "pending": c[PENDING], "queued": c[QUEUED] + c[RETRYING],
                "running": c[RUNNING], "succeeded": c[SUCCESS], "failed": c[FAILED],
                "skipped": c[SKIPPED], "cancelled": c[CANCELLED], "finished": finished,
                "percent": 100.0 * finished / total if total else 0.0, "eta_seconds": eta,
                "rate": rate,
                "running_nodes": [t.node_id for t in list(self.tasks.values())
                                  if t.state is RUNNING and t not in self.waiting][:20]}

    def state_counts(self) -> dict[TaskState, int]:
        """Tasks per state as their rows say: a process task whose job waits for a worker is
        QUEUED, not RUNNING (read from any thread: a snapshot)."""
        waiting = len(self.waiting)
        if not waiting:
            return self.counts
        counts = dict(self.counts)
        waiting = min(waiting, counts.get(RUNNING, 0))
        counts[RUNNING] -= waiting
        counts[QUEUED] = counts.get(QUEUED, 0) + waiting
        return counts


_AS_TASK_ERROR: dict[type, type | None] = {}
#: What a NodeExecutionError keeps of its own (not taken from the original error).
_OWN = ("node_id", "error_type", "traceback", "error_types")


def _task_error(err: BaseException, node_id: str) -> NodeExecutionError:
    """The error ``future.result()`` raises for a task that raised ``err``: a
    ``NodeExecutionError`` (node id, error type) that is also an instance of ``err``'s class,
    so ``except ValueError`` in a pipeline body catches what it would catch in a plain call,
    with the original's attributes (``e.response``, ``e.errno``, ``e.code``...). Built from a
    message where its constructor takes one, else from the original's own arguments
    (``JSONDecodeError(msg, doc, pos)``, ``CalledProcessError``, ``HTTPError``: a plain
    ``NodeExecutionError`` before, which ``except ValueError`` missed). A class that cannot
    be combined so gives a plain ``NodeExecutionError``; ``__cause__`` is ``err`` either way."""
    message = f"task {node_id} failed: {type(err).__name__}: {err}"
    cls = type(err)
    if cls in _AS_TASK_ERROR:
        sub = _AS_TASK_ERROR[cls]
    else:
        try:
            sub = type(cls.__name__, (NodeExecutionError, cls),
                       {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                        "__reduce__": _reduce_task_error})
        except TypeError:
            sub = None
        _AS_TASK_ERROR[cls] = sub
    if sub is None:
        return NodeExecutionError(message, node_id=node_id, error_type=cls.__name__)
    out: Any
    try:
        out = sub(message, node_id=node_id, error_type=cls.__name__)
    except Exception:  # noqa: BLE001 - its constructor wants other arguments
        out = None
    if out is not None:
        if isinstance(err, OSError) and err.errno is not None:
            # errno, filename: C-level, not in __dict__ (its text becomes the original's)
            out.errno, out.strerror = err.errno, err.strerror
            if err.filename is not None:
                out.filename = err.filename
            if err.filename2 is not None:
                out.filename2 = err.filename2
    else:
        try:
            out = _made_like(sub, cls, err.args)
        except Exception:  # noqa: BLE001 - a class that cannot be made so: the plain error
            return NodeExecutionError(message, node_id=node_id, error_type=cls.__name__)
        out.node_id, out.error_type, out.traceback = node_id, cls.__name__, None
        out.error_types = ()
    try:
        _copy_state(err, out)
    except Exception:  # noqa: BLE001 - what cannot be copied stays on __cause__
        pass
    return out  # type: ignore[no-any-return]


def _made_like(sub: type, cls: type, args: tuple[Any, ...]) -> Any:
    """An instance of ``sub`` made with ``args``, ``cls``'s own way: its ``__new__`` (an
    OSError's, an ExceptionGroup's refuse ``BaseException.__new__``), then its ``__init__``
    (a UnicodeError's C-level fields), or just its ``args`` if they are not the constructor's
    (``JSONDecodeError`` keeps the formatted message)."""
    try:
        out = cls.__new__(sub, *args)
    except TypeError:
        out = BaseException.__new__(sub, *args)
    try:
        cls.__init__(out, *args)  # type: ignore[misc]
    except Exception:  # noqa: BLE001 - args are not its constructor's
        out.args = args
    return out


def _copy_state(err: BaseException, out: Any) -> None:
    """The original's attributes onto ``out`` (its ``__dict__`` and ``__slots__``), but the
    task error's own."""
    for k, v in getattr(err, "__dict__", {}).items():
        if k not in _OWN:
            out.__dict__[k] = v
    for name in _slot_names(type(err)):
        if name not in _OWN:
            try:
                setattr(out, name, getattr(err, name))
            except AttributeError:
                pass


def _slot_names(cls: type) -> list[str]:
    """The ``__slots__`` attributes of ``cls`` and its bases (not kept in ``__dict__``)."""
    return [n for klass in cls.__mro__ for n in (getattr(klass, "__slots__", ()) or ())
            if isinstance(n, str) and n not in ("__dict__", "__weakref__")]


def _rebuild_task_error(sub: type, args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    out = _made_like(sub, sub.__bases__[1], args)    # (bases: NodeExecutionError, the class)
    for name, value in state.pop("__c_fields__", {}).items():     # an OSError's
        setattr(out, name, value)
    out.__dict__.update(state)
    return out


def _reduce_task_error(self: Any) -> Any:
    """Copied or pickled (``copy.copy`` of a caught error): rebuilt as it was made; the
    default (``type(self)(*self.args)``) went through NodeExecutionError's constructor with
    the original's arguments, and failed."""
    state = dict(self.__dict__)
    names = _slot_names(type(self))
    if isinstance(self, OSError):
        names += ["errno", "strerror", "filename", "filename2"]
    # what is not in __dict__: slots, an OSError's C-level fields
    state["__c_fields__"] = {n: getattr(self, n) for n in names
                             if getattr(self, n, None) is not None}
    return (_rebuild_task_error, (type(self), self.args, state))
