"""Result objects of the SDK: ``Execution`` (the TwinGraph face) and ``Page`` (any list).

Everything else comes back as the JSON object the server sent (``/api/v1`` objects unwrapped
from their ``{data, meta}`` envelope), so new fields reach the caller without an SDK release.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Execution statuses after which nothing changes (TwinGraph spelling, then Tauro's).
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "canceled", "stopped",
                               "timeout", "timed_out", "error", "success", "succeeded"})
SUCCESS_STATUSES = frozenset({"completed", "success", "succeeded"})
TERMINAL_RUN_STATES = frozenset({"SUCCESS", "FAILED", "CANCELLED"})


def is_terminal(status: str | None) -> bool:
    return status is not None and status.lower() in TERMINAL_STATUSES


@dataclass(frozen=True)
class Execution:
    """One execution (a run) as ``/api/executions`` shows it. ``raw`` is the whole answer."""

    id: str
    status: str
    workflow_id: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    outputs: Any = None
    started_at: str | None = None
    completed_at: str | None = None
    duration: float | None = None
    error: Any = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> Execution:
        ident = body.get("execution_id") or body.get("id")
        if not isinstance(ident, str):
            raise ValueError(f"an execution answer without an id: {dict(body)!r}")
        progress = body.get("progress")
        return cls(id=ident, status=str(body.get("status") or body.get("state") or "unknown"),
                   workflow_id=body.get("workflow_id") or body.get("pipeline_id"),
                   progress=dict(progress) if isinstance(progress, Mapping) else {},
                   outputs=body.get("outputs"), started_at=body.get("started_at"),
                   completed_at=body.get("completed_at") or body.get("ended_at"),
                   duration=body.get("duration", body.get("duration_seconds")),
                   error=body.get("error"), raw=dict(body))

    @property
    def execution_id(self) -> str:
        return self.id

    @property
    def done(self) -> bool:
        """True once the execution can change no more."""
        return is_terminal(self.status)

    @property
    def succeeded(self) -> bool:
        return self.status.lower() in SUCCESS_STATUSES


@dataclass(frozen=True)
class Page:
    """One page of a list: ``items`` plus what the server said about the whole list
    (``total``, and ``limit``/``offset`` on ``/api/v1`` or ``page``/``size`` on ``/api``)."""

    items: list[Any]
    total: int | None = None
    limit: int | None = None
    offset: int | None = None
    page: int | None = None
    size: int | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]
