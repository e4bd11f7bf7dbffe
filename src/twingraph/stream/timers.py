"""A timer queue keyed by (key, namespace): one timer per (time, key, namespace), fired in time order.

Times live in a heap; the entries of one time in an insertion-ordered dict, so firing order is
deterministic and a delete is O(1) (a time whose entries are all gone is skipped when popped).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any


class TimerQueue:
    __slots__ = ("_heap", "by_time")

    def __init__(self) -> None:
        self._heap: list[int] = []
        self.by_time: dict[int, dict[tuple[Any, Any], int]] = {}

    def add(self, time: int, key: Any, ns: Any, kind: int = 1) -> None:
        entries = self.by_time.get(time)
        if entries is None:
            entries = self.by_time[time] = {}
            heapq.heappush(self._heap, time)
        k = (key, ns)
        entries[k] = entries.get(k, 0) | kind

    def delete(self, time: int, key: Any, ns: Any) -> None:
        entries = self.by_time.get(time)
        if entries is not None:
            entries.pop((key, ns), None)

    def next_time(self) -> int | None:
        heap, by_time = self._heap, self.by_time
        while heap and not by_time.get(heap[0]):
            by_time.pop(heapq.heappop(heap), None)
        return heap[0] if heap else None

    def pop_until(self, time: int) -> Iterator[tuple[int, Any, Any, int]]:
        """Yield (time, key, ns, kind) for every timer ≤ ``time``, earliest first. Timers added
        while iterating at a time ≤ ``time`` fire in the same call."""
        heap, by_time = self._heap, self.by_time
        while heap and heap[0] <= time:
            t = heapq.heappop(heap)
            entries = by_time.pop(t, None)
            if entries:
                for (key, ns), kind in entries.items():
                    yield t, key, ns, kind

    def entries(self) -> Iterator[tuple[int, Any, Any, int]]:
        for t, entries in self.by_time.items():
            for (key, ns), kind in entries.items():
                yield t, key, ns, kind

    def __len__(self) -> int:
        return sum(len(e) for e in self.by_time.values())
