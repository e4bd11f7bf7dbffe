"""A cumulative histogram (Prometheus semantics: bucket counts only grow), for measured latencies."""

from __future__ import annotations

import bisect

LATENCY_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(upper bound as text, cumulative count), ..., ("+Inf", count)]``."""
        out, acc = [], 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], self.counts):
            acc += n
            out.append((bound, acc))
        return out
