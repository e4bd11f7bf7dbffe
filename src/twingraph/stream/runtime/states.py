"""Job states (the document's spelling) and the one table of allowed transitions."""

from __future__ import annotations

from enum import Enum

from twingraph.errors import InvalidTransition


class JobStatus(str, Enum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    FAILING = "FAILING"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELED = "CANCELED"
    FINISHED = "FINISHED"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.FAILED, JobStatus.CANCELED, JobStatus.FINISHED)


_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.CREATED: frozenset({JobStatus.RUNNING, JobStatus.FAILING, JobStatus.CANCELLING}),
    JobStatus.RUNNING: frozenset({JobStatus.FINISHED, JobStatus.FAILING, JobStatus.CANCELLING}),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELED, JobStatus.FAILING}),
    JobStatus.FAILING: frozenset({JobStatus.FAILED}),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
    JobStatus.FINISHED: frozenset(),
}


def transition(old: JobStatus, new: JobStatus) -> JobStatus:
    """Return ``new`` if the table allows ``old -> new``; raise ``InvalidTransition`` otherwise."""
    if new not in _ALLOWED[old]:
        raise InvalidTransition("stream job", old.value, new.value)
    return new
