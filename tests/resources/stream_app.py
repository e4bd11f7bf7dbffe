"""Stream entry points the server's streaming faces run (``--load`` this file)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twingraph.stream import CollectSink, StreamExecutionEnvironment, TumblingWindow

SINKS: dict[str, CollectSink] = {}


def word_counts(checkpoints: str, n: int = 300, delay_s: float = 0.0, key: str = "default") -> StreamExecutionEnvironment:
    """Counts per key and 100 ms window of ``n`` generated events; results in ``SINKS[key]``."""
    def slow(x: Any) -> Any:
        if delay_s:
            time.sleep(delay_s)
        return x

    env = StreamExecutionEnvironment("WordCounts").set_parallelism(2).set_batch_size(10)
    env.enable_checkpointing(50, checkpoints, fsync=False)
    sink = SINKS[key] = CollectSink()
    (env.from_collection([(f"w{i % 4}", i) for i in range(n)], timestamp_assigner=lambda e: e[1])
        .map(slow).key_by(lambda e: e[0]).window(TumblingWindow(100))
        .apply(lambda k, w, xs: [(k, w[0], len(xs))]).uid("counts").add_sink(sink))
    return env


def record(path: str) -> None:
    """A helper of the loaded module, not an entry point: no request may call it."""
    Path(path).write_text("called")
