"""Where this process stands: a worker process of the local executor runs tasks and nothing
else. A component called in one is a plain call inside a task, never outside a pipeline: one
meant for another platform must not run there in its place (``dsl.component``)."""

from __future__ import annotations

_worker = False


def mark_worker_process() -> None:
    """Called once by a worker process of the local executor as it starts."""
    global _worker
    _worker = True


def in_worker_process() -> bool:
    return _worker


__all__ = ["mark_worker_process", "in_worker_process"]
