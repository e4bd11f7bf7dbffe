"""SIGTERM ends a command's run as Ctrl-C does: cancelled, and its end recorded.

``timeout``, ``kill``, ``docker stop`` and CI runners stop a process with SIGTERM, whose
default action ends it at once: the run it was driving stayed RUNNING in the store for good
(a DAG run, which cannot be resumed, until someone ran ``runs cancel``). While a command
drives a run, SIGTERM raises ``Terminated`` (a ``KeyboardInterrupt``) in the main thread
instead, so the engine's Ctrl-C path cancels and records the run; the command then exits
with 143 (128 + SIGTERM), as a shell reports a process SIGTERM ended.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: The exit status of a command that SIGTERM stopped.
EXIT_TERMINATED = 128 + signal.SIGTERM
EXIT_INTERRUPTED = 128 + signal.SIGINT


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while a command drove a run."""

    def __init__(self, message: str = "terminated (SIGTERM)") -> None:
        super().__init__(message)


def exit_code(exc: BaseException) -> int:
    """130 after Ctrl-C, 143 after SIGTERM."""
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises ``Terminated`` in the main thread (only there can a
    handler be set; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
