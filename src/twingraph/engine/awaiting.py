"""``async def`` task bodies: a component or an operation that is a coroutine function (or an
async generator) is awaited on an event loop, and cancelled once the engine abandons the task
(its timeout passed, its run was stopped: ``core.stop``), which it could not do to a thread.

Which loop: the one a DAG was submitted from (``DynamicScheduler.submit_dag``: the document
awaits operations on the caller's loop, so they may share its queues, locks and clients), else
one loop per process that every ``async def`` task body of the process shares (on the thread
``twingraph-aio``). One loop, as an asyncio program has: a module-level ``asyncio.Semaphore``
or client session that several operations use is bound to one loop, and a loop per task (as
before session 22) failed the second task that touched it ("bound to a different event
loop"). The task's own thread waits for the coroutine and watches its stop flag; a blocking
call inside a coroutine holds up the loop's other coroutines, as in any asyncio program.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from typing import Any

from twingraph.core.stop import stop_requested
from twingraph.errors import NodeExecutionError

#: Seconds between two looks at the stop flag of a running coroutine.
STOP_POLL = 0.05

_lock = threading.Lock()
_shared: tuple[int, asyncio.AbstractEventLoop] | None = None     # (pid, loop)


def shared_loop() -> asyncio.AbstractEventLoop:
    """This process's loop for ``async def`` task bodies, started on first use (a worker
    process forked from a parent that had one starts its own: the thread did not come along)."""
    global _shared
    with _lock:
        if _shared is None or _shared[0] != os.getpid() or _shared[1].is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=serve, name="twingraph-aio", daemon=True).start()
            ready.wait()
            _shared = (os.getpid(), loop)
        return _shared[1]


def run_awaitable(aw: Any, loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """The value of awaiting ``aw`` on ``loop`` (a DAG's submitter's loop), or on this
    process's shared loop, waited for on this thread. Called on a loop's own thread (a
    coroutine that calls a component plainly), it runs on a new loop of its own on a thread
    of its own: that loop cannot wait for itself."""
    home = loop if loop is not None and loop.is_running() else shared_loop()
    if _on_thread_of(home):
        return _on_a_thread_of_its_own(aw)
    fut = asyncio.run_coroutine_threadsafe(_awaited(aw), home)
    while True:
        try:
            return fut.result(timeout=STOP_POLL)
        except concurrent.futures.TimeoutError:
            pass
        except concurrent.futures.CancelledError:
            # not by us: the loop it ran on was shut down (``asyncio.run`` ending cancels
            # what is left on its loop)
            raise NodeExecutionError("cancelled: the event loop it ran on was shut down",
                                     error_type="Abandoned") from None
        if stop_requested():
            fut.cancel()           # the coroutine is cancelled on its loop
            raise NodeExecutionError("cancelled: the node was abandoned (timed out or stopped)",
                                     error_type="Abandoned")
        if home is not loop or home.is_running():
            continue
        # The submitter's loop stopped before the coroutine ended (a second ``asyncio.run``
        # will not resume it): nothing will finish it.
        fut.cancel()
        raise NodeExecutionError("cancelled: the event loop the DAG was submitted from "
                                 "stopped while this node ran", error_type="Abandoned")


async def _awaited(aw: Any) -> Any:
    return await aw


def _on_thread_of(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _on_a_thread_of_its_own(aw: Any) -> Any:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append((True, asyncio.run(_awaited(aw))))
        except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread
            out.append((False, exc))

    t = threading.Thread(target=run, name="twingraph-aio-nested", daemon=True)
    t.start()
    t.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


__all__ = ["run_awaitable", "shared_loop", "STOP_POLL"]
