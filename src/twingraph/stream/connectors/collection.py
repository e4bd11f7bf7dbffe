"""A bounded, replayable source over an in-memory list (non-parallel, as Flink's fromCollection)."""

from __future__ import annotations

from typing import Any

from twingraph.stream.connectors.base import SourceSplitContext


class CollectionSource:
    """Reads ``items`` in order; its position is the index of the next item."""

    bounded = True
    max_parallelism = 1

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.offset = 0

    def open(self, ctx: SourceSplitContext) -> None:
        state = ctx.restored or {}
        if "subtasks" in state:
            state = state["subtasks"][0] if state["subtasks"] else {}
        self.offset = int(state.get("offset", 0))

    def poll(self, max_records: int) -> list[tuple[Any, int | None]]:
        start = self.offset
        chunk = self.items[start:start + max_records]
        self.offset = start + len(chunk)
        return [(v, None) for v in chunk]

    def finished(self) -> bool:
        return self.offset >= len(self.items)

    def snapshot(self, checkpoint_id: int) -> dict:
        return {"offset": self.offset}

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        return None

    def close(self) -> None:
        return None
