"""Watermarks: generation at the sources and combination of parallel inputs.

A watermark ``W`` says "no more elements with timestamp ≤ W will come". The bounded
out-of-orderness generator emits ``max_seen - bound - 1`` (Flink's formula), so an element up to
``bound`` ms older than the newest one seen is still on time.

An operator with several input channels uses the *minimum* of their watermarks
(:class:`WatermarkCombiner`). A channel whose source has been idle for longer than the idleness
timeout is marked idle and left out of the minimum, so one quiet partition does not hold back
event time forever. When the last active input goes idle, the combined watermark moves to the
largest input watermark (as Flink's ``StatusWatermarkValve`` flushes), so the result does not
depend on the order they went idle. An input back from idle takes part in the minimum again
once its own watermark has caught up with the combined one (Flink's valve calls it aligned):
until then it neither moves event time back nor holds the other inputs' progress.
The idleness decision is made at the source with an injected clock
(:meth:`WatermarkGenerator.on_idle_check`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MIN_WATERMARK = -(2**63)
MAX_WATERMARK = 2**63 - 1


@dataclass(frozen=True)
class WatermarkStrategy:
    """How a source derives watermarks; ``bound_ms`` None means no watermarks at all."""

    bound_ms: int | None
    idle_timeout_ms: int | None = None

    def with_idleness(self, timeout_ms: int) -> WatermarkStrategy:
        """Mark a source subtask idle after ``timeout_ms`` without records."""
        return replace(self, idle_timeout_ms=timeout_ms)

    def create_generator(self) -> WatermarkGenerator:
        return WatermarkGenerator(self.bound_ms, self.idle_timeout_ms)


class WatermarkStrategies:
    """The document's factory (``common.watermarks.WatermarkStrategies``)."""

    @staticmethod
    def bounded_out_of_orderness(max_out_of_orderness_ms: int) -> WatermarkStrategy:
        if max_out_of_orderness_ms < 0:
            raise ValueError("max_out_of_orderness_ms must be >= 0")
        return WatermarkStrategy(max_out_of_orderness_ms)

    @staticmethod
    def for_monotonous_timestamps() -> WatermarkStrategy:
        return WatermarkStrategy(0)

    @staticmethod
    def no_watermarks() -> WatermarkStrategy:
        return WatermarkStrategy(None)


class WatermarkGenerator:
    """Per source subtask: tracks the newest timestamp and the idleness state."""

    __slots__ = ("bound", "idle_timeout", "max_ts", "emitted", "idle", "last_activity_ms")

    def __init__(self, bound_ms: int | None, idle_timeout_ms: int | None) -> None:
        self.bound = bound_ms
        self.idle_timeout = idle_timeout_ms
        self.max_ts = MIN_WATERMARK
        self.emitted = MIN_WATERMARK
        self.idle = False
        self.last_activity_ms: int | None = None

    def on_batch(self, max_ts_in_batch: int | None, now_ms: int) -> tuple[int | None, bool]:
        """Account for a non-empty batch. Returns (new watermark to emit or None, became_active)."""
        self.last_activity_ms = now_ms
        became_active = self.idle
        self.idle = False
        if self.bound is None or max_ts_in_batch is None:
            return None, became_active
        if max_ts_in_batch > self.max_ts:
            self.max_ts = max_ts_in_batch
        wm = self.max_ts - self.bound - 1
        if wm > self.emitted:
            self.emitted = wm
            return wm, became_active
        return None, became_active

    def on_idle_check(self, now_ms: int) -> bool:
        """Called when a poll returned nothing; True when the subtask just became idle."""
        if self.idle_timeout is None or self.idle:
            return False
        if self.last_activity_ms is None:
            self.last_activity_ms = now_ms
            return False
        if now_ms - self.last_activity_ms >= self.idle_timeout:
            self.idle = True
            return True
        return False


class WatermarkCombiner:
    """Minimum over the input channels that are active and aligned; reports only advances."""

    __slots__ = ("wms", "idle", "aligned", "current")

    def __init__(self, n_inputs: int) -> None:
        self.wms = [MIN_WATERMARK] * n_inputs
        self.idle = [False] * n_inputs
        self.aligned = [True] * n_inputs      # an input back from idle: False until it catches up
        self.current = MIN_WATERMARK

    def _recompute(self) -> int | None:
        active = [w for w, i, a in zip(self.wms, self.idle, self.aligned) if a and not i]
        # all inputs idle: none will advance, so flush to the largest (Flink's valve does): else
        # the result would depend on the order in which the inputs went idle
        if active:
            new = min(active)
        elif all(self.idle):
            new = max(self.wms)
        else:                  # the active inputs all lag behind: nothing moves until one catches up
            return None
        if new > self.current:
            self.current = new
            return new
        return None

    def update(self, channel: int, wm: int) -> int | None:
        """A watermark arrived on ``channel``; returns the combined watermark if it advanced."""
        if wm > self.wms[channel]:
            self.wms[channel] = wm
        if self.idle[channel]:
            self._activate(channel)
        if not self.aligned[channel] and self.wms[channel] >= self.current:
            self.aligned[channel] = True
        return self._recompute()

    def set_idle(self, channel: int, idle: bool) -> int | None:
        if not idle:
            if self.idle[channel]:
                self._activate(channel)
            return None
        self.idle[channel] = True
        return self._recompute()

    def _activate(self, channel: int) -> None:
        self.idle[channel] = False
        self.aligned[channel] = self.wms[channel] >= self.current

    @property
    def all_idle(self) -> bool:
        return all(self.idle)
