"""A Kafka→map→Kafka or Redis→map→Redis job for the kill -9 test (a script, not collected).

usage: python connector_crash_job.py PARALLELISM kafka BOOTSTRAP IN_TOPIC OUT_TOPIC CHECKPOINT_DIR
       python connector_crash_job.py PARALLELISM redis REDIS_URL IN_STREAMS(comma-separated) \
              OUT_STREAM CHECKPOINT_DIR MARKER_PREFIX

Bounded source, a checkpoint every 100 ms, restores from the latest checkpoint on
start. The map doubles each number and sleeps a little now and then so the job runs for a second
or two: long enough to be killed mid-flight.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from twingraph.stream import StreamExecutionEnvironment
from twingraph.stream.connectors.kafka import KafkaSinkOperator, KafkaSourceOperator
from twingraph.stream.connectors.redis_streams import RedisStreamSink, RedisStreamSource


def double(value: Any) -> str:
    double.calls += 1  # type: ignore[attr-defined]
    if double.calls % 40 == 0:  # type: ignore[attr-defined]
        time.sleep(0.02)
    n = int(value["n"]) if isinstance(value, dict) else int(value)
    return f"out-{2 * n}"


double.calls = 0  # type: ignore[attr-defined]


def main() -> None:
    parallelism, kind, *args = sys.argv[1:]
    env = StreamExecutionEnvironment(f"connector-crash-{kind}").set_parallelism(int(parallelism))
    env.set_batch_size(50)
    if kind == "kafka":
        bootstrap, in_topic, out_topic, chk = args
        env.enable_checkpointing(100, chk, retained=2)
        stream = env.add_source(KafkaSourceOperator(in_topic, bootstrap, "crash-job", bounded=True,
                                                    value_format="str"))
        sink: Any = KafkaSinkOperator(out_topic, bootstrap)
    else:
        url, in_streams, out_stream, chk, marker_prefix = args
        env.enable_checkpointing(100, chk, retained=2)
        stream = env.add_source(RedisStreamSource(in_streams.split(","), url, bounded=True))
        sink = RedisStreamSink(out_stream, url, marker_prefix=marker_prefix)
    stream.map(double).add_sink(sink)
    client = env.execute_async(restore_from="latest", thread=False)
    print(f"restored {client.run.restored_from}", file=sys.stderr, flush=True)
    client.wait()
    print("finished", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
