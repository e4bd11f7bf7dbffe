"""Local execution: a thread pool for ordinary tasks and a process pool for isolated ones.

Threads are the default: a no-op round trip costs a few microseconds and NumPy/IO release the
GIL. Process mode (``@component(executor='process')``) gives isolation and a timeout that really
stops the task: the worker process is killed and replaced. A thread cannot be killed: on abort
the job is abandoned (its late result is dropped by fence) and a replacement thread keeps the
pool at full strength.

Process workers are started with the 'spawn' method (no fork of a multi-threaded parent); the
function and arguments travel with cloudpickle, results come back pickled over a pipe.
``process_memory_limit`` caps what each worker process may allocate (``executors.processes``;
the server sets it, embedded use leaves it off).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from twingraph.core import stop
from twingraph.ports import Job, JobOutcome, Outcome

__all__ = ["JobOutcome", "LocalExecutor"]


_STOP = object()


class _ThreadPool:
    """Worker threads pulling jobs from one queue; grows to ``size`` lazily."""

    def __init__(self, size: int, name: str = "twingraph-worker") -> None:
        self.size = size
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0                       # idle threads minus queued jobs
        self._lock = threading.Lock()
        # Jobs are tracked by identity: (node id, fence) repeats across runs of a pipeline.
        self._running: dict[Job, stop.Flag] = {}     # job -> its stop flag (``core.stop``)
        self._abandoned: set[Job] = set()    # running when aborted: their thread is written off
        self._dropped: set[Job] = set()      # aborted while still queued: never run
        self._queued: set[Job] = set()       # submitted, not taken by a thread yet
        self._name = name

    def submit(self, job: Job, done: Callable[[Outcome], None]) -> None:
        with self._lock:
            self._queued.add(job)            # before it can be taken
            if self._idle <= 0 and len(self._threads) < self.size:
                self._spawn()
            else:
                self._idle -= 1
        self._q.put((job, done))

    def _spawn(self) -> None:
        t = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
        self._threads.append(t)
        t.start()

    def _work(self) -> None:
        get = self._q.get
        while True:
            item = get()
            if item is _STOP:
                return
            job, done = item
            with self._lock:
                self._queued.discard(job)
                if job in self._dropped:        # aborted before it started: skip it
                    self._dropped.discard(job)
                    self._idle += 1
                    continue
                me = threading.get_ident()
                self._running[job] = flag = stop.watch(me)
            job.started_at = time.monotonic()
            t0 = time.perf_counter()
            try:
                value = job.fn(*job.args, **job.kwargs)
                out = JobOutcome(job.node_id, job.fence, True, value, None, time.perf_counter() - t0)
            except BaseException as exc:  # noqa: BLE001 - the task's failure is data
                out = JobOutcome(job.node_id, job.fence, False, None, exc, time.perf_counter() - t0)
            stop.unwatch(me, flag)
            with self._lock:
                self._running.pop(job, None)
                if job in self._abandoned:
                    # This thread was written off and replaced; it leaves the pool now.
                    self._abandoned.discard(job)
                    self._threads.remove(threading.current_thread())
                    return
                self._idle += 1
            done(out)
            # not held while it waits for the next job: an idle thread kept its last
            # result and inputs alive (four 50 MB arrays after a run)
            item = job = done = out = value = None     # type: ignore[assignment]

    def abandon(self, job: Job) -> None:
        with self._lock:
            if job in self._running:
                self._abandoned.add(job)
                self._running[job].request()       # told, in case it asks (core.stop)
                self._spawn()      # keep capacity: the stuck thread no longer counts
            elif job in self._queued:
                self._dropped.add(job)
            # else it has finished (its outcome not handled yet): nothing to stop. Marked
            # dropped, it stayed in the set for good, and its run with it (the job holds it).

    def shutdown(self) -> None:
        with self._lock:
            n = len(self._threads)
        for _ in range(n):
            self._q.put(_STOP)


class LocalExecutor:
    """The embedded executor: threads by default, a process per job when asked for."""

    platform = "local"
    #: Its process jobs may wait for a worker: it calls ``Job.on_start`` when one takes them.
    reports_start = True

    def __init__(self, max_threads: int = 32, max_processes: int | None = None, *,
                 process_memory_limit: int | None = None) -> None:
        """``max_processes``: worker processes at most (default: the CPUs);
        ``process_memory_limit``: bytes each worker process may allocate beyond its own
        footprint (None: no limit; ``ConfigurationError`` where it cannot be enforced)."""
        self._threads = _ThreadPool(max_threads)
        self._procs: Any = None
        self._max_processes = max_processes or max(1, os.cpu_count() or 1)
        self._memory_limit = process_memory_limit
        self._lock = threading.Lock()
        if process_memory_limit is not None:    # a bad limit fails here, not at the first task
            from twingraph.executors.processes import ProcessPool
            self._procs = ProcessPool(self._max_processes, memory_limit=process_memory_limit)

    def set_thread_capacity(self, n: int) -> None:
        self._threads.size = max(self._threads.size, n)

    def submit(self, job: Job, done: Callable[[Outcome], None]) -> None:
        if job.mode == "process":
            self._process_pool().submit(job, done)
        else:
            self._threads.submit(job, done)

    def abort(self, job: Job) -> bool:
        if job.mode == "process" and self._procs is not None:
            return self._procs.kill(job)
        self._threads.abandon(job)
        return False

    def shutdown(self) -> None:
        self._threads.shutdown()
        if self._procs is not None:
            self._procs.shutdown()

    def _process_pool(self) -> Any:
        with self._lock:
            if self._procs is None:
                from twingraph.executors.processes import ProcessPool
                self._procs = ProcessPool(self._max_processes, memory_limit=self._memory_limit)
            return self._procs
