"""``async def`` task bodies: a component or an operation that is a coroutine function (or an
async generator) is awaited on an event loop, and cancelled once the engine abandons the task
(its timeout passed, its run was stopped: ``core.stop``), which it could not do to a thread.

Which loop: the one a DAG was submitted from (``DynamicScheduler.submit_dag``: the document
awaits operations on the caller's loop, so they may share its queues, locks and clients), else
one loop per process that every ``async def`` task body of the process shares (on the thread
``twingraph-aio``). One loop, as an asyncio program has: a module-level ``asyncio.Semaphore``
or client session that several operations use is bound to one loop, and a loop per task (as
before session 22) failed the second task that touched it ("bound to a different event
loop"). The task's own thread waits for the coroutine and watches its stop flag.

A coroutine that runs a pipeline or a DAG synchronously (``child.run()`` inside an ``async
def``) blocks the shared loop while the nested run's own coroutines would need it: while such
a nested run goes on (``nested_run``, entered by ``Engine.run`` on the loop's thread), a
coroutine that has not started on the shared loop runs on a loop of its own on a thread of its
own instead, as every coroutine did before session 22. (A blocked loop detected by the clock
alone moved coroutines that shared a lock with the blocker to other loops, which hung them.)
``SystemExit`` and ``KeyboardInterrupt`` raised in a coroutine are raised in the
task's thread, not in the loop's (they ended the loop's thread). Log lines a coroutine writes
through ``get_logger()`` are its task's (``tasklog``: the task travels in a context variable).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

from twingraph.core.stop import stop_requested
from twingraph.engine import tasklog
from twingraph.errors import NodeExecutionError

#: Seconds between two looks at the stop flag of a running coroutine.
STOP_POLL = 0.05


class _Shared:
    """This process's loop for ``async def`` task bodies, on a daemon thread of its own."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.nested_runs = 0            # runs going on on the loop's thread (it is blocked)
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), name="twingraph-aio",
                                       daemon=True)
        self.thread.start()
        ready.wait()

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def usable(self) -> bool:
        return self.pid == os.getpid() and self.thread.is_alive() and not self.loop.is_closed()

    def blocked(self) -> bool:
        return self.nested_runs > 0


_lock = threading.Lock()
_shared: _Shared | None = None


def shared_loop() -> asyncio.AbstractEventLoop:
    """This process's loop for ``async def`` task bodies, started on first use (a worker
    process forked from a parent that had one starts its own: the thread did not come along)."""
    return _the_shared().loop


def _the_shared() -> _Shared:
    global _shared
    with _lock:
        if _shared is None or not _shared.usable():
            _shared = _Shared()
        return _shared


@contextlib.contextmanager
def nested_run() -> Iterator[None]:
    """Around a run started on the shared loop's thread (a coroutine that runs a pipeline or
    a DAG synchronously): while it goes on, coroutines go to loops of their own."""
    shared = _shared
    if shared is None or not _on_thread_of(shared.loop):
        yield
        return
    with _lock:
        shared.nested_runs += 1
    try:
        yield
    finally:
        with _lock:
            shared.nested_runs -= 1


def run_awaitable(aw: Any, loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """The value of awaiting ``aw`` on ``loop`` (a DAG's submitter's loop) while it runs, or
    on this process's shared loop, waited for on this thread (module docstring)."""
    owner = tasklog.current()
    if loop is not None and loop.is_running() and not _on_thread_of(loop):
        return _wait(aw, owner, loop, None)
    shared = _the_shared()
    if _on_thread_of(shared.loop) or shared.blocked():
        return _own_loop(aw, owner)
    return _wait(aw, owner, shared.loop, shared)


class _Claim:
    """Whoever takes it first runs the coroutine: the loop it was handed to, or (the loop
    being blocked, it had not started there) a loop of its own."""
    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def take(self) -> bool:
        return self._lock.acquire(blocking=False)


class _Raised:
    """``SystemExit`` / ``KeyboardInterrupt`` from a coroutine, raised on the task's thread."""
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_SKIPPED = object()


async def _claimed(aw: Any, claim: _Claim, owner: Any) -> Any:
    if not claim.take():
        return _SKIPPED               # it runs on a loop of its own (this loop was blocked)
    tasklog.set_context(owner)
    try:
        return await aw
    except (SystemExit, KeyboardInterrupt) as exc:
        return _Raised(exc)


def _wait(aw: Any, owner: Any, loop: asyncio.AbstractEventLoop, shared: _Shared | None) -> Any:
    claim = _Claim()
    fut = asyncio.run_coroutine_threadsafe(_claimed(aw, claim, owner), loop)
    while True:
        # a CancelledError not by us: the loop it ran on was shut down (``asyncio.run``
        # ending cancels what is left on its loop)
        out = _poll(fut, "cancelled: the event loop it ran on was shut down")
        if out is not _PENDING:
            return out
        if shared is not None:
            if shared.blocked() and claim.take():
                fut.cancel()
                return _own_loop(aw, owner)
            continue
        if not loop.is_running():
            # The submitter's loop stopped before the coroutine ended (a second
            # ``asyncio.run`` will not resume it): nothing will finish it.
            fut.cancel()
            raise NodeExecutionError("cancelled: the event loop the DAG was submitted from "
                                     "stopped while this node ran", error_type="Abandoned")


def _own_loop(aw: Any, owner: Any) -> Any:
    """Await ``aw`` on a new loop on a thread of its own, watching this thread's stop flag."""
    loop = asyncio.new_event_loop()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    t = threading.Thread(target=serve, name="twingraph-aio-own", daemon=True)
    t.start()
    # cancelled, the coroutine ends on its loop, and the loop stops after it (``_then_stop``)
    fut = asyncio.run_coroutine_threadsafe(_then_stop(aw, owner, loop), loop)
    while True:
        out = _poll(fut, _ABANDONED)
        if out is not _PENDING:
            return out


_PENDING = object()


def _poll(fut: concurrent.futures.Future[Any], cancelled: str) -> Any:
    """Wait up to ``STOP_POLL`` for the coroutine behind ``fut``: its value, or ``_PENDING``.
    If this thread's task was abandoned, the coroutine is cancelled on its loop and the task
    ends with that error; ``fut`` cancelled elsewhere ends it with ``cancelled``."""
    try:
        return _value(fut.result(timeout=STOP_POLL))
    except concurrent.futures.TimeoutError:
        # (the built-in TimeoutError since 3.11: one the coroutine raised itself, from
        # ``asyncio.wait_for`` or a socket, is its outcome, not the wait's: read as "still
        # pending", its task was polled for ever)
        if fut.done():
            try:
                return _value(fut.result())
            except concurrent.futures.CancelledError:
                raise NodeExecutionError(cancelled, error_type="Abandoned") from None
    except concurrent.futures.CancelledError:
        raise NodeExecutionError(cancelled, error_type="Abandoned") from None
    if stop_requested():
        fut.cancel()
        raise _abandoned()
    return _PENDING


async def _then_stop(aw: Any, owner: Any, loop: asyncio.AbstractEventLoop) -> Any:
    """On a loop of its own: the coroutine, then the loop's end (after its cancellation's
    cleanup, when it was cancelled: a ``finally: await ...`` of it runs)."""
    try:
        return await _claimed(aw, _Claim(), owner)
    finally:
        loop.call_soon(loop.stop)


def _value(out: Any) -> Any:
    if type(out) is _Raised:
        raise out.exc
    return out


_ABANDONED = "cancelled: the node was abandoned (timed out or stopped)"


def _abandoned() -> NodeExecutionError:
    return NodeExecutionError(_ABANDONED, error_type="Abandoned")


def _on_thread_of(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


__all__ = ["run_awaitable", "shared_loop", "STOP_POLL"]
