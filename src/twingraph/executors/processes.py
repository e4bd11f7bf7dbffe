"""A pool of worker processes that run one job at a time each, so one job can be killed.

Each worker is a 'spawn'ed Python process connected by a pipe (started without re-running the
user's ``__main__``: see ``_start_without_main``). The parent sends a cloudpickled
(fn, args, kwargs); the worker sends back frames: ``L`` + a task log record (one per record the
task logs through ``twingraph.get_logger()``, sent as it is emitted, so a task killed later keeps
its logs) and finally ``R`` + ``(ok, payload)``. A reader thread per busy worker waits for them. ``kill(job)`` SIGKILLs the worker running it; the pool replaces workers on
demand. Exceptions that cannot be pickled come back as ``NodeExecutionError`` carrying the
original class name (so retry policies still match by name) and the traceback text.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import cloudpickle

from twingraph.core.logtext import LOGGER_NAME, message_of
from twingraph.errors import NodeExecutionError, remote_traceback
from twingraph.executors.local import JobOutcome
from twingraph.ports import Job, Outcome


class _Forward(logging.Handler):
    """In the child: sends each task log record to the parent as an ``L`` frame. ``pipe_lock``
    keeps frames whole: a task may log from several threads while its result is sent."""

    def __init__(self, conn: Any) -> None:
        super().__init__()
        self.conn = conn
        self.pipe_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            frame = pickle.dumps((record.created, record.levelname.lower(), message_of(record)))
            with self.pipe_lock:
                self.conn.send_bytes(b"L" + frame)
        except Exception:  # noqa: BLE001 - logging must never fail the task
            pass


def _watch_parent(parent: int) -> None:
    """In the child: end this worker when the process that drives it is gone (a driver killed
    with SIGKILL cannot stop its workers; their tasks would run on, unrecorded, and run again
    when the run is resumed)."""
    while True:
        time.sleep(PARENT_CHECK_SECONDS)
        if os.getppid() != parent:
            os._exit(1)


#: How often a worker process checks that its driver is still alive.
PARENT_CHECK_SECONDS = 0.5


def _worker_main(conn: Any, parent: int) -> None:  # runs in the child
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="twingraph-parent-watch").start()
    forward = _Forward(conn)
    task_logger = logging.getLogger(LOGGER_NAME)
    task_logger.setLevel(logging.INFO)
    task_logger.addHandler(forward)
    conn.send_bytes(b"ready")             # booted and imported: jobs' clocks may start now
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            fn, args, kwargs = cloudpickle.loads(data)
            value = fn(*args, **kwargs)
            reply: tuple[Any, ...] = (True, value, "")
        except BaseException as exc:  # noqa: BLE001 - the task's failure is data
            # Its traceback does not pickle: it travels as text (the driver's logs and error
            # events show it, as for a thread task).
            reply = (False, exc, "".join(traceback.format_exception(exc)))
        try:
            out = cloudpickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
            if not reply[0]:
                cloudpickle.loads(out)   # an exception must also unpickle in the driver
        except Exception as exc:  # noqa: BLE001
            tb = reply[2]
            err = reply[1] if not reply[0] else exc
            out = cloudpickle.dumps((False, NodeExecutionError(
                f"{type(err).__name__}: {err} (result not picklable: {exc})" if reply[0] else
                f"{type(err).__name__}: {err}", error_type=type(err).__name__, traceback=tb), tb))
        with forward.pipe_lock:   # not in the middle of a log frame from another thread
            conn.send_bytes(b"R" + out)


def _deliver_log(job: Job, frame: bytes) -> None:
    """An ``L`` frame from our own worker process: hand the record to the job's listener."""
    on_log = getattr(job, "on_log", None)
    if on_log is not None:
        try:
            created, level, message = pickle.loads(frame[1:])
            on_log(created, level, message)
        except Exception:  # noqa: BLE001 - a bad log frame must not lose the task's result
            pass


_start_lock = threading.Lock()


def _start_without_main(proc: Any) -> None:
    """Start a 'spawn' worker without re-running the user's ``__main__`` in it.

    multiprocessing makes a spawned child import the parent's main script (or ``-m`` module)
    first, so a script that runs a pipeline at top level, without the ``if __name__ ==
    "__main__"`` guard, would run again in every worker and fail there. Workers only run
    cloudpickled tasks (functions from ``__main__`` travel by value), so they do not need it:
    the preparation data is computed without the main-module entries while this worker starts.
    """
    import multiprocessing.spawn as spawn
    with _start_lock:
        original = spawn.get_preparation_data

        def without_main(name: str) -> dict[str, Any]:
            data: dict[str, Any] = original(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data
        spawn.get_preparation_data = without_main
        try:
            proc.start()
        finally:
            spawn.get_preparation_data = original


class _Worker:
    def __init__(self, ctx: Any) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, os.getpid()), daemon=True,
                                name="twingraph-process-worker")
        _start_without_main(self.proc)
        child.close()
        self.conn = parent
        self.job: Job | None = None
        self.ready = False


class ProcessPool:
    def __init__(self, size: int) -> None:
        self.size = size
        self._ctx = mp.get_context("spawn")
        self._idle: list[_Worker] = []
        # By identity: (node, fence) repeats across runs. None = its worker is being spawned.
        self._busy: dict[Job, _Worker | None] = {}
        self._waiting: deque[tuple[Job, Callable[[Outcome], None]]] = deque()
        self._lock = threading.Lock()
        self._count = 0
        self._closed = False

    def submit(self, job: Job, done: Callable[[Outcome], None]) -> None:
        with self._lock:
            self._waiting.append((job, done))
        self._pump()

    def _pump(self) -> None:
        while True:
            with self._lock:
                if not self._waiting or self._closed:
                    return
                if self._idle:
                    w: _Worker | None = self._idle.pop()
                elif self._count < self.size:
                    self._count += 1
                    w = None
                else:
                    return
                job, done = self._waiting.popleft()
                # Busy from this moment (its worker may still be spawning), so kill() finds it.
                self._busy[job] = w
            if w is None:
                try:
                    w = _Worker(self._ctx)
                except Exception as exc:  # noqa: BLE001
                    with self._lock:
                        self._count -= 1
                        self._busy.pop(job, None)
                    done(JobOutcome(job.node_id, job.fence, False, None, exc, 0.0))
                    continue
            with self._lock:
                if job not in self._busy:         # killed while its worker was being made
                    self._idle.append(w)
                    continue
                self._busy[job] = w
            self._start(w, job, done)

    def _start(self, w: _Worker, job: Job, done: Callable[[Outcome], None]) -> None:
        try:
            payload = cloudpickle.dumps((job.fn, job.args, job.kwargs))
        except Exception as exc:  # noqa: BLE001
            with self._lock:
                self._busy.pop(job, None)
                self._idle.append(w)
            done(JobOutcome(job.node_id, job.fence, False, None, NodeExecutionError(
                f"cannot send task {job.node_id} to a process: {exc}", node_id=job.node_id)))
            return
        w.job = job
        threading.Thread(target=self._await, args=(w, job, done, payload), daemon=True,
                         name=f"twingraph-proc-wait-{job.node_id}").start()

    def _await(self, w: _Worker, job: Job, done: Callable[[Outcome], None], payload: bytes) -> None:
        t0 = time.perf_counter()
        try:
            if not w.ready:               # a new worker: wait until it has booted
                if w.conn.recv_bytes() != b"ready":
                    raise EOFError("worker did not start")
                w.ready = True
            t0 = time.perf_counter()
            job.started_at = time.monotonic()
            w.conn.send_bytes(payload)
            while True:
                frame = w.conn.recv_bytes()
                if frame[:1] == b"R":
                    break
                _deliver_log(job, frame)
        except (EOFError, OSError, BrokenPipeError):
            # Killed on purpose (abort) or died on its own.
            with self._lock:
                killed = self._busy.pop(job, None) is None
                self._count -= 1
            if not killed:
                w.proc.join(1)             # reaped: its exit code is known
                code = w.proc.exitcode
                done(JobOutcome(job.node_id, job.fence, False, None, NodeExecutionError(
                    f"worker process for {job.node_id} died (exit code {code})",
                    node_id=job.node_id, error_type="WorkerDied"), time.perf_counter() - t0))
            self._pump()
            return
        dt = time.perf_counter() - t0
        try:                              # the whole answer was read: the worker stays usable
            ok, value, tb = cloudpickle.loads(frame[1:])
            if not ok and tb:
                remote_traceback(value, tb)
        except Exception as exc:  # noqa: BLE001 - e.g. a class missing here: the task failed
            ok, value = False, NodeExecutionError(
                f"the result of {job.node_id} could not be read: {type(exc).__name__}: {exc}",
                node_id=job.node_id, error_type=type(exc).__name__)
        with self._lock:
            killed = self._busy.pop(job, None) is None
            w.job = None
            if killed:                  # killed after it answered: the worker is gone
                self._count -= 1
            else:
                self._idle.append(w)
        if killed:
            self._pump()
            return
        done(JobOutcome(job.node_id, job.fence, ok, value if ok else None,
                        None if ok else value, dt))
        self._pump()

    def kill(self, job: Job) -> bool:
        """Stop ``job``: kill its worker if it runs; drop it if it still waits for one."""
        with self._lock:
            if job in self._busy:
                w = self._busy.pop(job)
            else:
                w = None
                self._waiting = deque((j, d) for j, d in self._waiting if j is not job)
        if w is None:                 # never started (queued, or its worker still spawning)
            return False
        w.proc.kill()
        w.proc.join(5)
        w.conn.close()
        return True

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            workers = self._idle + [w for w in self._busy.values() if w is not None]
            self._idle, self._busy = [], {}
        for w in workers:
            w.proc.kill()
            w.proc.join(5)
            w.conn.close()
