"""Task logs: what a component logs through ``twingraph.get_logger()`` is recorded with its task.

The logger ``twingraph.task`` is set to INFO and carries one capture handler. While a task runs
(on a worker thread or inline), a thread-local names its run and node; the handler appends a
``LogRecord`` to that run's log queue, which the run loop hands to the recorder with everything
else. Records still propagate, so the user's own handlers see them too. Nothing is attached to
the root logger: the user's logging configuration is left alone. A task in a worker process logs
in another interpreter: the worker forwards each record over its pipe as it is emitted
(``executors.processes``) and the run loop records it the same way (``Job.on_log``).
"""

from __future__ import annotations

import logging
import contextvars
import threading
from typing import Any

from twingraph.core.logtext import LOGGER_NAME, message_of
from twingraph.core.records import LogRecord

_ctx = threading.local()
#: The task of a coroutine awaited on a loop's thread (``engine.awaiting``): it runs on that
#: thread, not on its task's, and each asyncio task has a context of its own.
_in_coroutine: contextvars.ContextVar[Any] = contextvars.ContextVar("twingraph_task",
                                                                    default=None)


def current() -> Any:
    return getattr(_ctx, "task", None)


def set_context(value: Any) -> None:
    """The task the running coroutine (and what it logs) belongs to."""
    _in_coroutine.set(value)


def set_current(value: Any) -> Any:
    prev = getattr(_ctx, "task", None)
    _ctx.task = value
    return prev


class _Capture(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        cur = getattr(_ctx, "task", None)
        if cur is None:
            cur = _in_coroutine.get()
            if cur is None:
                return
        loop, node_id = cur
        loop.logs.append(LogRecord(loop.run_id, record.created, record.levelname.lower(),
                                   message_of(record), node_id))



def get_logger() -> logging.Logger:
    """The logger for component code: INFO and above is recorded with the running task."""
    return _logger


_logger = logging.getLogger(LOGGER_NAME)
if _logger.level == logging.NOTSET:
    _logger.setLevel(logging.INFO)
if not any(isinstance(h, _Capture) for h in _logger.handlers):
    _logger.addHandler(_Capture())
