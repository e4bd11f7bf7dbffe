"""Entry points the job manager tests submit (``stream_jobs_entry:slow_count``)."""

from __future__ import annotations

import time
from typing import Any

from pathlib import Path

from twingraph.stream import CollectSink, StreamExecutionEnvironment, TumblingWindow, stream_job

RESULTS: dict[str, CollectSink] = {}


def slow_count(checkpoints: str, n: int = 200, delay_s: float = 0.005, parallelism: int = 2) -> StreamExecutionEnvironment:
    def slow(x: Any) -> Any:
        time.sleep(delay_s)
        return x

    env = StreamExecutionEnvironment("SlowCount").set_parallelism(parallelism).set_batch_size(5)
    env.enable_checkpointing(50, checkpoints, fsync=False)
    sink = RESULTS.setdefault(checkpoints, CollectSink())
    (env.from_collection([(f"k{i % 5}", i) for i in range(n)], timestamp_assigner=lambda e: e[1])
        .map(slow).key_by(lambda e: e[0]).window(TumblingWindow(50))
        .apply(lambda k, w, xs: [(k, w[0], len(xs))]).uid("counts").add_sink(sink))
    return env


def not_a_job() -> int:
    return 42


def file_count(checkpoints: str, out: str, n: int = 600, delay_s: float = 0.004) -> StreamExecutionEnvironment:
    """Like slow_count, into an exactly-once FileSink (output that outlives the process)."""
    from twingraph.stream import FileSink

    def slow(x: Any) -> Any:
        time.sleep(delay_s)
        return x

    env = StreamExecutionEnvironment("FileCount").set_parallelism(2).set_batch_size(5)
    env.enable_checkpointing(50, checkpoints, fsync=False)
    (env.from_collection([(f"k{i % 5}", i) for i in range(n)], timestamp_assigner=lambda e: e[1])
        .map(slow).key_by(lambda e: e[0]).window(TumblingWindow(50))
        .apply(lambda k, w, xs: [f"{k} {w[0]} {len(xs)}"]).uid("counts").add_sink(FileSink(out, fsync=False)))
    return env


def touch(path: str) -> None:
    """A helper, not an entry point: a submission naming it must not call it."""
    Path(path).write_text("called")


@stream_job
def decorated_count(checkpoints, n=100):  # type: ignore[no-untyped-def]  # no annotation: the decorator marks it
    return slow_count(checkpoints, n=n, delay_s=0)
