"""What user code subclasses or passes: process functions, aggregate functions, output tags.

Process functions receive a context whose ``timestamp()``, ``get_current_key()``,
``timer_service()`` and ``output(tag, value)`` behave as in Flink; they return (or yield) the
elements to emit, or None. State is declared in ``open(runtime_context)`` with
``ValueState(runtime_context.state_backend, "name")`` (and ListState / MapState likewise).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class OutputTag:
    """Names a side output (late data, or anything a process function sends with ``ctx.output``)."""

    name: str


class AggregateFunction:
    """Incremental window aggregation: an accumulator per key and window."""

    def create_accumulator(self) -> Any:
        raise TypeError(f"{type(self).__name__} must define create_accumulator()")

    def add(self, value: Any, accumulator: Any) -> Any:
        raise TypeError(f"{type(self).__name__} must define add(value, accumulator)")

    def get_result(self, accumulator: Any) -> Any:
        return accumulator

    def merge(self, a: Any, b: Any) -> Any:
        """Combine two accumulators (session windows merging); required only for sessions."""
        raise TypeError(f"{type(self).__name__} must define merge(a, b) to be used with session windows")


class TimerService(Protocol):
    def register_event_time_timer(self, timestamp: int) -> None: ...
    def register_processing_time_timer(self, timestamp: int) -> None: ...
    def delete_event_time_timer(self, timestamp: int) -> None: ...
    def delete_processing_time_timer(self, timestamp: int) -> None: ...
    def current_watermark(self) -> int: ...
    def current_processing_time(self) -> int: ...


class ProcessFunction:
    """Per element, non-keyed. Override ``process_element``; ``open``/``close`` are optional."""

    def open(self, runtime_context: Any) -> None:
        return None

    def process_element(self, value: Any, ctx: Any) -> Iterable[Any] | None:
        raise TypeError(f"{type(self).__name__} must define process_element(value, ctx)")

    def close(self) -> None:
        return None


class KeyedProcessFunction(ProcessFunction):
    """Per element of a keyed stream, with keyed state and event/processing-time timers."""

    def on_timer(self, timestamp: int, ctx: Any) -> Iterable[Any] | None:
        return None
