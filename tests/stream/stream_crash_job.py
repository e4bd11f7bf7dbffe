"""A streaming job for the kill -9 recovery test (run as a script, not collected by pytest).

usage: python stream_crash_job.py OUT_DIR CHECKPOINT_DIR N_EVENTS [PARALLELISM [BACKEND [INPUT_DIR]]]

With INPUT_DIR the events are read from the text files there (``word,ts`` lines, a FileSource
split per file) instead of an in-memory collection.

Reads N deterministic (word, ts) events, counts words per 1 s event-time window and keeps a
running count per word in keyed state, writing both to an exactly-once FileSink. Checkpoints every
100 ms and restores from the latest checkpoint on start. A map sleeps a little per batch so that
the job takes a second or two: long enough to be killed mid-flight.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from twingraph.stream import (FileSink, KeyedProcessFunction, StreamExecutionEnvironment, TumblingWindow,
                              ValueState, WatermarkStrategies)


def events(n: int) -> list[tuple[str, int]]:
    # a fixed permutation-like pattern: no randomness, same on every run
    return [(f"w{(i * 7919) % 97}", i * 2 + (i * 31) % 40) for i in range(n)]


class RunningCount(KeyedProcessFunction):
    def open(self, runtime_context: Any) -> None:
        self.count = ValueState(runtime_context.state_backend, "count")

    def process_element(self, value: Any, ctx: Any) -> Any:
        n = (self.count.get() or 0) + 1
        self.count.update(n)
        return [f"running {value[0]} {n}"]


def slow(x: Any) -> Any:
    slow.calls += 1  # type: ignore[attr-defined]
    if slow.calls % 50 == 0:  # type: ignore[attr-defined]
        time.sleep(0.003)
    return x


slow.calls = 0  # type: ignore[attr-defined]


def write_inputs(directory: str, n: int, files: int = 4) -> None:
    import os

    os.makedirs(directory, exist_ok=True)
    evs = events(n)
    for f in range(files):
        with open(os.path.join(directory, f"events-{f}.txt"), "w") as fh:
            fh.writelines(f"{w},{ts}\n" for w, ts in evs[f::files])


def parse(line: str) -> tuple[str, int]:
    word, ts = line.split(",")
    return word, int(ts)


def build(out: str, chk: str, n: int, parallelism: int, backend: str,
          input_dir: str | None = None) -> StreamExecutionEnvironment:
    env = StreamExecutionEnvironment("crash-test").set_parallelism(parallelism).set_batch_size(50)
    # fsync off: the test kills the process, not the machine, and the page cache survives that
    env.enable_checkpointing(100, chk, retained=2, fsync=False)
    env.set_state_backend(backend, chk + "-state")
    if input_dir:
        # files are read one after another per subtask, so event time jumps back between them:
        # a disorder bound above the whole span keeps every element on time (deterministic output)
        words = env.read_text_file(input_dir, timestamp_assigner=lambda line: int(line.split(",")[1]),
                                   watermark_strategy=WatermarkStrategies.bounded_out_of_orderness(10**9)) \
            .map(parse).map(slow)
    else:
        words = env.from_collection(events(n), timestamp_assigner=lambda e: e[1],
                                    watermark_strategy=WatermarkStrategies.bounded_out_of_orderness(40)).map(slow)
    sink = FileSink(out, fsync=False)
    (words.key_by(lambda e: e[0]).window(TumblingWindow(1000))
        .apply(lambda k, w, xs: [f"window {k} {w[0]} {len(xs)}"]).add_sink(sink))
    words.key_by(lambda e: e[0]).process(RunningCount()).add_sink(sink)
    return env


def main() -> None:
    out, chk, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    parallelism = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    backend = sys.argv[5] if len(sys.argv) > 5 else "memory"
    input_dir = sys.argv[6] if len(sys.argv) > 6 else None
    env = build(out, chk, n, parallelism, backend, input_dir)
    client = env.execute_async(restore_from="latest", thread=False)
    print(f"restored {client.run.restored_from}", file=sys.stderr, flush=True)
    client.wait()
    print("finished", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
