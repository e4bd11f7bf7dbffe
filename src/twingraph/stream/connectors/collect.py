"""``CollectSink``: gathers what reaches it into ``.results`` (tests, notebooks).

Records become visible in ``results`` only when the checkpoint that covers them completes (the
final one of a bounded job included), so ``results`` holds exactly-once output, in commit order.
Every parallel subtask appends to the same list.
"""

from __future__ import annotations

from typing import Any

from twingraph.stream.connectors.base import SourceSplitContext


class CollectSink:
    def __init__(self) -> None:
        self.results: list[Any] = []

    def open(self, ctx: SourceSplitContext) -> None:
        # per-subtask buffers (the runtime gives each subtask a shallow copy sharing ``results``)
        self._buffer: list[Any] = []
        self._staged: dict[int, list[Any]] = {}

    def write(self, records: list[Any]) -> None:
        self._buffer.extend(records)

    def pre_commit(self, checkpoint_id: int) -> dict:
        self._staged[checkpoint_id], self._buffer = self._buffer, []
        return {}

    def commit(self, checkpoint_id: int, state: dict) -> None:
        self.results.extend(self._staged.pop(checkpoint_id, ()))

    def close(self) -> None:
        self._buffer, self._staged = [], {}
