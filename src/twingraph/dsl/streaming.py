"""``StreamingComponent``: a component written over a stream of chunks (the architecture
document's Data Flow §3, "for continuous data flows").

A subclass implements ``process_chunk(chunk)`` — or overrides ``execute_streaming(input_stream)``
for anything other than one output per input chunk (filtering, batching, state across chunks).
Called like any component, with the input stream (an iterable: a list, a generator, a file) as
its first argument or as ``input_stream=``, it yields processed chunks outside a pipeline; in a
pipeline it is a task whose result is the list of processed chunks, stored and memoized like any
other result (there the input is hashed whole, so it must be a value — a list, an upstream
task's output — not a generator). Unbounded flows — events that never end, windows, watermarks — are the streaming
engine's (``twingraph.stream``), not a task's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from twingraph.dsl.base import BaseComponent


class StreamingComponent(BaseComponent):
    def process_chunk(self, chunk: Any) -> Any:
        """One processed chunk for one input chunk (override this or ``execute_streaming``)."""
        raise TypeError(f"{type(self).__name__} must override process_chunk or "
                        "execute_streaming")

    def execute_streaming(self, input_stream: Iterable[Any]) -> Iterator[Any]:
        for chunk in input_stream:
            yield self.process_chunk(chunk)

    def execute(self, input_stream: Iterable[Any], **kwargs: Any) -> Any:
        """``execute_streaming(input_stream, **kwargs)``: keyword inputs go to an override that
        takes them; the default takes none (a TypeError here, not lost)."""
        return self.execute_streaming(input_stream, **kwargs)
