"""KafkaSourceOperator and KafkaSinkOperator against a real Kafka-protocol broker (tansu).

Each test drives the connectors through the Source/Sink contract the way the runtime does:
open → poll/write → snapshot/pre_commit → commit, and a "crash" is an instance abandoned without
close followed by a fresh instance opened with the restored state.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest
from conftest_brokers import create_topic, kafka_bootstrap, read_topic  # noqa: F401

from twingraph.errors import StreamError
from twingraph.stream.connectors.base import Sink, Source, SourceSplitContext
from twingraph.stream.connectors.serde import pack_frames, unpack_frames
from twingraph.stream.connectors.kafka import (
    H_CKPT, H_SEQ, H_WRITER, KafkaRecord, KafkaSinkOperator, KafkaSourceOperator,
)

ck = pytest.importorskip("confluent_kafka")

pytestmark = pytest.mark.timeout(60)


def produce(bootstrap: str, topic: str, values: list[bytes], partitions: int,
            ts0: int = 1_000_000) -> None:
    """values[i] to partition i % partitions with timestamp ts0 + i, batched (linger)."""
    producer = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i, v in enumerate(values):
        producer.produce(topic, value=v, partition=i % partitions, timestamp=ts0 + i)
    assert producer.flush(15) == 0


def ctx(i: int, n: int, restored: dict | None = None, rescaled: bool = False) -> SourceSplitContext:
    return SourceSplitContext(subtask_index=i, parallelism=n, restored=restored,
                              rescaled=rescaled, job_name="job", operator_uid="op")


def drain(src: KafkaSourceOperator, limit: int | None = None, max_records: int = 7,
          rounds: int = 2000) -> list[tuple[Any, int | None]]:
    """Poll until finished (or until ``limit`` records), in small polls as the runtime does."""
    got: list[tuple[Any, int | None]] = []
    for _ in range(rounds):
        if src.finished() or (limit is not None and len(got) >= limit):
            return got
        want = max_records if limit is None else min(max_records, limit - len(got))
        got.extend(src.poll(want))
    raise AssertionError(f"source did not finish; got {len(got)} records")


def source(bootstrap: str, topic: str, group: str | None = None, **kw: Any) -> KafkaSourceOperator:
    return KafkaSourceOperator(topic, bootstrap, group or f"g-{uuid.uuid4().hex[:8]}",
                               bounded=kw.pop("bounded", True), **kw)


def test_connectors_satisfy_the_contract() -> None:
    assert isinstance(KafkaSourceOperator("t", "b:1", "g"), Source)
    assert isinstance(KafkaSinkOperator("t", "b:1"), Sink)


def test_source_splits_partitions_and_resumes_exactly_after_the_snapshot(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, 4)
    values = [f"v{i}".encode() for i in range(400)]
    produce(kafka_bootstrap, topic, values, 4)

    delivered: list[bytes] = []
    states = []
    for i in range(2):
        src = source(kafka_bootstrap, topic)
        src.open(ctx(i, 2))
        before = drain(src, limit=60 + 30 * i)
        states.append(src.snapshot(1))
        lost = drain(src, limit=25)  # polled after the checkpoint: replayed after the "crash"
        assert lost
        # partition p -> subtask p % 2; event time = record timestamp
        for v, ts in before + lost:
            n = int(v[1:])
            assert n % 4 % 2 == i
            assert ts == 1_000_000 + n
        delivered += [v for v, _ in before]
        # crash: abandoned without close

    for i in range(2):
        src = source(kafka_bootstrap, topic)
        src.open(ctx(i, 2, restored=states[i]))
        delivered += [v for v, _ in drain(src)]
        assert src.finished()
        src.close()
    assert sorted(delivered) == sorted(values)
    assert len(set(delivered)) == len(values)


def test_source_resumes_with_a_changed_parallelism(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, 5)
    values = [f"r{i}".encode() for i in range(300)]
    produce(kafka_bootstrap, topic, values, 5)
    delivered: list[bytes] = []
    old_states = []
    for i in range(2):
        src = source(kafka_bootstrap, topic)
        src.open(ctx(i, 2))
        delivered += [v for v, _ in drain(src, limit=50)]
        old_states.append(src.snapshot(3))
        src.close()
    merged = {"subtasks": old_states}
    for i in range(3):
        src = source(kafka_bootstrap, topic)
        src.open(ctx(i, 3, restored=merged, rescaled=True))
        delivered += [v for v, _ in drain(src)]
        src.close()
    assert sorted(delivered) == sorted(values)


def test_bounded_source_reads_to_the_true_end_although_the_broker_reports_less(
        kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, 1)
    values = [f"b{i}".encode() for i in range(50)]
    produce(kafka_bootstrap, topic, values, 1)  # one batch of 50 records
    probe = ck.Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "probe"})
    _, reported = probe.get_watermark_offsets(ck.TopicPartition(topic, 0), timeout=10,
                                              cached=False)
    probe.close()
    src = source(kafka_bootstrap, topic)
    src.open(ctx(0, 1))
    got = [v for v, _ in drain(src, max_records=1000)]
    assert got == values
    # tansu 0.6 reports the last batch's base offset + 1; a correct broker reports 50
    assert reported in (1, 50)


def test_group_offsets_are_committed_only_when_the_checkpoint_completes(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, 2)
    values = [f"c{i}".encode() for i in range(40)]
    produce(kafka_bootstrap, topic, values, 2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    src = source(kafka_bootstrap, topic, group)
    src.open(ctx(0, 1))
    first = drain(src, limit=15)
    state = src.snapshot(7)

    def committed() -> dict[int, int]:
        c = ck.Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
        try:
            tps = c.committed([ck.TopicPartition(topic, p) for p in (0, 1)], timeout=10)
            return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
        finally:
            c.close()

    assert committed() == {}
    src.notify_checkpoint_complete(7)
    src.close()  # close waits for the asynchronous commit
    assert committed() == {int(p): o for p, o in state["offsets"].items()}
    # a fresh start (no restored state) of the same group continues from the committed offsets
    again = source(kafka_bootstrap, topic, group)
    again.open(ctx(0, 1))
    rest = [v for v, _ in drain(again)]
    again.close()
    assert sorted([v for v, _ in first] + rest) == sorted(values)


def test_source_formats_and_metadata(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, 1)
    docs = [{"n": i, "s": "é"} for i in range(5)]
    produce(kafka_bootstrap, topic, [json.dumps(d).encode() for d in docs], 1)
    src = source(kafka_bootstrap, topic, value_format="json")
    src.open(ctx(0, 1))
    assert [v for v, _ in drain(src)] == docs
    src.close()
    meta = source(kafka_bootstrap, topic, value_format="str", include_metadata=True)
    meta.open(ctx(0, 1))
    recs = [v for v, _ in drain(meta)]
    meta.close()
    assert all(isinstance(r, KafkaRecord) for r in recs)
    assert [(r.partition, r.offset, r.timestamp_ms) for r in recs] == [
        (0, i, 1_000_000 + i) for i in range(5)]
    assert json.loads(recs[0].value) == docs[0]
    with pytest.raises(StreamError):
        KafkaSourceOperator(topic, kafka_bootstrap, "g", value_format="pickle")


def test_missing_topic_is_a_stream_error(kafka_bootstrap: str) -> None:
    src = KafkaSourceOperator(f"absent-{uuid.uuid4().hex}", kafka_bootstrap, "g",
                              bounded=True, request_timeout_s=3)
    with pytest.raises(StreamError):
        src.open(ctx(0, 1))
    src.close()
    sink = KafkaSinkOperator(f"absent-{uuid.uuid4().hex}", kafka_bootstrap, request_timeout_s=3)
    with pytest.raises(StreamError):
        sink.open(ctx(0, 1))
    sink.close()


def _values(bootstrap: str, topic: str) -> list[bytes]:
    return sorted(m.value() for m in read_topic(bootstrap, topic))


def test_sink_output_appears_only_on_commit_and_recommit_writes_nothing(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, 3)
    sink = KafkaSinkOperator(topic, kafka_bootstrap, key=lambda r: str(r["k"]))
    sink.open(ctx(0, 1))
    recs = [{"k": i % 5, "v": i} for i in range(100)]
    sink.write(recs[:60])
    sink.write(recs[60:])
    state = sink.pre_commit(1)
    json.dumps(state)  # the runtime stores it as JSON
    assert read_topic(kafka_bootstrap, topic) == []
    sink.commit(1, state)
    msgs = read_topic(kafka_bootstrap, topic)
    assert sorted(json.loads(m.value())["v"] for m in msgs) == list(range(100))
    headers = dict(msgs[0].headers())
    assert headers[H_CKPT] == b"1" and H_WRITER in headers and H_SEQ in headers
    # same key -> same partition
    by_key: dict[bytes, set[int]] = {}
    for m in msgs:
        by_key.setdefault(m.key(), set()).add(m.partition())
    assert all(len(ps) == 1 for ps in by_key.values())
    sink.commit(1, state)
    assert len(read_topic(kafka_bootstrap, topic)) == 100
    # an empty checkpoint commits nothing
    state2 = sink.pre_commit(2)
    sink.commit(2, state2)
    sink.close()
    assert len(read_topic(kafka_bootstrap, topic)) == 100
    # restore from checkpoint 1 long after it committed: the re-commit writes nothing
    again = KafkaSinkOperator(topic, kafka_bootstrap)
    again.open(ctx(0, 1, restored=state))
    again.commit(1, state)
    again.close()
    assert len(read_topic(kafka_bootstrap, topic)) == 100


def test_sink_crash_between_pre_commit_and_commit(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, 2)
    sink = KafkaSinkOperator(topic, kafka_bootstrap)
    sink.open(ctx(0, 1))
    sink.write([f"a{i}" for i in range(30)])
    s1 = sink.pre_commit(1)
    sink.write([f"b{i}" for i in range(30)])
    s2 = sink.pre_commit(2)  # checkpoint 1 not yet committed: carried in checkpoint 2's state
    sink.write([f"lost{i}" for i in range(10)])  # after the last checkpoint: never visible
    del sink  # crash: no commit, no close
    assert read_topic(kafka_bootstrap, topic) == []

    restored = KafkaSinkOperator(topic, kafka_bootstrap)
    restored.open(ctx(0, 1, restored=s2))
    restored.commit(2, s2)
    restored.commit(2, s2)
    expect = sorted([f"a{i}".encode() for i in range(30)] + [f"b{i}".encode() for i in range(30)])
    assert _values(kafka_bootstrap, topic) == expect
    ckpts = [dict(m.headers())[H_CKPT] for m in read_topic(kafka_bootstrap, topic)]
    assert ckpts.count(b"1") == 30 and ckpts.count(b"2") == 30
    # the restored sink goes on with new checkpoints
    restored.write(["c0"])
    restored.commit(3, restored.pre_commit(3))
    restored.close()
    assert _values(kafka_bootstrap, topic) == sorted(expect + [b"c0"])
    assert s1["pending"][0]["checkpoint"] == 1


def test_sink_crash_in_the_middle_of_a_commit_completes_it_exactly_once(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, 3)
    sink = KafkaSinkOperator(topic, kafka_bootstrap)
    sink.open(ctx(0, 1))
    sink.write([f"m{i}" for i in range(90)])
    state = sink.pre_commit(5)
    del sink  # crash during commit(5), after 40 of the 90 records reached the broker:
    entry = state["pending"][0]
    partial = {"pending": [{**entry, "count": 40,
                            "values": pack_frames(unpack_frames(entry["values"])[:40])}]}
    leftover = KafkaSinkOperator(topic, kafka_bootstrap)  # writes them with the dead writer's headers
    leftover.open(ctx(0, 1))
    leftover.commit(5, partial)
    leftover.close()
    assert len(read_topic(kafka_bootstrap, topic)) == 40
    # someone else writes to the topic in between
    other = KafkaSinkOperator(topic, kafka_bootstrap)
    other.open(ctx(0, 1))
    other.write(["other"])
    other.commit(1, other.pre_commit(1))
    other.close()

    restored = KafkaSinkOperator(topic, kafka_bootstrap)
    restored.open(ctx(0, 1, restored=state))
    restored.commit(5, state)
    restored.close()
    assert _values(kafka_bootstrap, topic) == sorted([f"m{i}".encode() for i in range(90)]
                                                     + [b"other"])


def test_sink_rescaled_restore_commits_every_old_subtask(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, 2)
    states = []
    for i in range(3):
        s = KafkaSinkOperator(topic, kafka_bootstrap)
        s.open(ctx(i, 3))
        s.write([f"s{i}-{j}" for j in range(10)])
        states.append(s.pre_commit(4))
        if i == 0:
            s.commit(4, states[0])  # subtask 0 committed before the crash, the others did not
    # new parallelism 2: subtask 0 gets old 0 and 2, subtask 1 gets old 1
    for i, olds in enumerate([[states[0], states[2]], [states[1]]]):
        merged = {"subtasks": olds}
        s = KafkaSinkOperator(topic, kafka_bootstrap)
        s.open(ctx(i, 2, restored=merged, rescaled=True))
        if i == 0:  # restored entries not yet committed ride along with the next checkpoint
            s.write(["new"])
            later = s.pre_commit(5)
            assert len(later["pending"]) == 3  # old subtasks 0 and 2 (both ckpt 4) and the new one
            s.commit(5, later)
        else:
            s.commit(4, merged)
        s.close()
    assert _values(kafka_bootstrap, topic) == sorted(
        [f"s{i}-{j}".encode() for i in range(3) for j in range(10)] + [b"new"])


def test_sink_rejects_records_json_cannot_express(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, 1)
    sink = KafkaSinkOperator(topic, kafka_bootstrap)
    sink.open(ctx(0, 1))
    with pytest.raises(StreamError):
        sink.write([object()])
    sink.close()


def test_tansu_transactions_do_not_hide_aborted_records(kafka_bootstrap: str) -> None:
    """Why the sink does not use Kafka transactions on this broker (docs/stream-connectors.md).

    If this test starts failing, the broker learnt to filter aborted transactions and a
    transactional sink becomes possible.
    """
    topic = create_topic(kafka_bootstrap, 1)
    producer = ck.Producer({"bootstrap.servers": kafka_bootstrap,
                            "transactional.id": f"tx-{uuid.uuid4().hex}"})
    producer.init_transactions(10)
    producer.begin_transaction()
    producer.produce(topic, value=b"aborted")
    producer.flush(10)
    producer.abort_transaction(10)
    producer.begin_transaction()
    producer.produce(topic, value=b"committed")
    producer.commit_transaction(10)
    consumer = ck.Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "rc",
                            "isolation.level": "read_committed"})
    consumer.assign([ck.TopicPartition(topic, 0, 0)])
    seen: list[bytes] = []
    for _ in range(40):
        seen += [m.value() for m in consumer.consume(10, 0.1) if m.error() is None]
        if b"committed" in seen:
            break
    consumer.close()
    assert b"committed" in seen
    assert b"aborted" in seen  # a correct broker would hide it from read_committed readers


def test_a_record_the_broker_cannot_take_fails_the_commit_with_a_stream_error(
        kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, 1)
    sink = KafkaSinkOperator(topic, kafka_bootstrap, producer_config={"message.max.bytes": 10_000})
    sink.open(ctx(0, 1))
    sink.write([b"x" * 20_000])
    with pytest.raises(StreamError):
        sink.commit(1, sink.pre_commit(1))
    sink.close()


def test_shallow_copies_of_one_prototype_keep_their_own_state(kafka_bootstrap: str) -> None:
    """The runtime makes subtask instances with copy.copy(prototype)."""
    topic = create_topic(kafka_bootstrap, 2)
    produce(kafka_bootstrap, topic, [f"p{i}".encode() for i in range(20)], 2)
    proto_src = source(kafka_bootstrap, topic)
    srcs = [copy.copy(proto_src) for _ in range(2)]
    for i, s in enumerate(srcs):
        s.open(ctx(i, 2))
    got = [sorted(v for v, _ in drain(s)) for s in srcs]
    assert got == [sorted(f"p{i}".encode() for i in range(0, 20, 2)),
                   sorted(f"p{i}".encode() for i in range(1, 20, 2))]
    assert [s.snapshot(1)["offsets"] for s in srcs] == [{"0": 10}, {"1": 10}]
    proto = KafkaSinkOperator(topic, kafka_bootstrap)
    sinks = [copy.copy(proto) for _ in range(2)]
    for i, s in enumerate(sinks):
        s.open(ctx(i, 2))
        s.write([f"from {i}"] * (i + 1))
    assert [s.pre_commit(1)["pending"][0]["count"] for s in sinks] == [1, 2]
    for s in srcs + sinks:
        s.close()


def test_unbounded_source_from_latest_sees_only_new_records(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, 2)
    produce(kafka_bootstrap, topic, [b"old0", b"old1", b"old2"], 2)
    src = KafkaSourceOperator(topic, kafka_bootstrap, f"g-{uuid.uuid4().hex[:8]}",
                              starting_offsets="latest")
    src.open(ctx(0, 1))
    assert not src.finished()
    produce(kafka_bootstrap, topic, [b"new0", b"new1"], 2)
    got: list[bytes] = []
    for _ in range(400):
        got += [v for v, _ in src.poll(10)]
        if len(got) >= 2:
            break
    assert sorted(got) == [b"new0", b"new1"]
    assert not src.finished()  # unbounded: never finished
    src.close()


def test_bounded_source_finishes_when_the_topic_ends_with_transaction_markers(
        kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, 1)
    producer = ck.Producer({"bootstrap.servers": kafka_bootstrap,
                            "transactional.id": f"tx-{uuid.uuid4().hex}"})
    producer.init_transactions(10)
    for batch in range(2):
        producer.begin_transaction()
        for i in range(3):
            producer.produce(topic, value=f"{batch}-{i}".encode())
        producer.commit_transaction(10)  # appends a control record after the batch
    src = source(kafka_bootstrap, topic)
    src.open(ctx(0, 1))
    got = [v for v, _ in drain(src)]
    assert got == [f"{b}-{i}".encode() for b in range(2) for i in range(3)]
    state = src.snapshot(1)
    src.close()
    again = source(kafka_bootstrap, topic)
    again.open(ctx(0, 1, restored=state))
    assert again.finished() and drain(again) == []
    again.close()
