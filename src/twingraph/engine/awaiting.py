"""``async def`` task bodies: a component or an operation that is a coroutine function runs
on the task's thread (or worker process) in an event loop of its own, and is cancelled once
the engine abandons the task (its timeout passed, its run was stopped: ``core.stop``), which
it could not do to a thread."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from twingraph.core.stop import stop_requested
from twingraph.errors import NodeExecutionError

#: Seconds between two looks at the stop flag of a running coroutine.
STOP_POLL = 0.05


def run_awaitable(aw: Any) -> Any:
    """The value of awaiting ``aw`` in a new event loop on this thread."""
    return asyncio.run(_stoppable(aw))


async def _stoppable(aw: Any) -> Any:
    task = asyncio.ensure_future(aw)
    while True:
        done, _ = await asyncio.wait((task,), timeout=STOP_POLL)
        if done:
            return task.result()
        if stop_requested():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise NodeExecutionError("cancelled: the node was abandoned (timed out or stopped)",
                                     error_type="Abandoned")


__all__ = ["run_awaitable", "STOP_POLL"]
