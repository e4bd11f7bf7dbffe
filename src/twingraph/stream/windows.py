"""Window assigners and the pure logic around them: assignment, session merging, lateness.

A window is the half-open interval ``[start, end)`` in milliseconds, represented by the tuple
``(start, end)``; its *max timestamp* is ``end - 1``. Event-time windows fire when the watermark
reaches ``end - 1`` and keep their contents until the watermark passes
``end - 1 + allowed_lateness``; an element for a window that is already past that point is *late*
(dropped, or sent to the late-data side output). Processing-time windows are the same intervals
measured on the clock and have no lateness.

Session windows start as ``[t, t + gap)`` per element and merge with every overlapping or touching
window of the same key (:func:`merge_session`), as Flink's ``MergingWindowAssigner`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

Window = tuple[int, int]


def max_timestamp(window: Window) -> int:
    return window[1] - 1


def is_late(window: Window, allowed_lateness_ms: int, watermark: int) -> bool:
    """True if the window has been purged by the time ``watermark`` arrived (its state is gone)."""
    return window[1] - 1 + allowed_lateness_ms <= watermark


@dataclass(frozen=True)
class TumblingWindow:
    """Fixed, non-overlapping windows of ``size_ms``, aligned to the epoch plus ``offset_ms``."""

    size_ms: int
    offset_ms: int = 0
    processing_time: bool = False

    def __post_init__(self) -> None:
        if self.size_ms <= 0:
            raise ValueError("TumblingWindow size_ms must be > 0")

    def assign(self, ts: int) -> list[Window]:
        start = ts - (ts - self.offset_ms) % self.size_ms
        return [(start, start + self.size_ms)]


@dataclass(frozen=True)
class SlidingWindow:
    """Windows of ``size_ms`` starting every ``slide_ms``; an element is in ``size/slide`` of them."""

    size_ms: int
    slide_ms: int
    offset_ms: int = 0
    processing_time: bool = False

    def __post_init__(self) -> None:
        if self.size_ms <= 0 or self.slide_ms <= 0:
            raise ValueError("SlidingWindow size_ms and slide_ms must be > 0")

    def assign(self, ts: int) -> list[Window]:
        last_start = ts - (ts - self.offset_ms) % self.slide_ms
        out = []
        start = last_start
        while start > ts - self.size_ms:
            out.append((start, start + self.size_ms))
            start -= self.slide_ms
        return out


@dataclass(frozen=True)
class SessionWindow:
    """Per-key windows that close after ``gap_ms`` without elements; overlapping ones merge."""

    gap_ms: int
    processing_time: bool = False

    def __post_init__(self) -> None:
        if self.gap_ms <= 0:
            raise ValueError("SessionWindow gap_ms must be > 0")

    def assign(self, ts: int) -> list[Window]:
        return [(ts, ts + self.gap_ms)]


WindowAssigner = TumblingWindow | SlidingWindow | SessionWindow


def merge_session(existing: list[Window], new: Window) -> tuple[Window, list[Window]]:
    """Merge ``new`` into a key's session windows.

    Returns ``(result, absorbed)``: the window that now covers ``new`` and every existing window
    that overlaps or touches it, and the existing windows it absorbed (their contents must be
    merged into ``result``'s and their timers dropped). ``existing`` windows never overlap each
    other, because every earlier insertion went through this function.
    """
    start, end = new
    absorbed = []
    for w in existing:
        if w[0] <= end and start <= w[1]:
            absorbed.append(w)
            start, end = min(start, w[0]), max(end, w[1])
    return (start, end), absorbed
