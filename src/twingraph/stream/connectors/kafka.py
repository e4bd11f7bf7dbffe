"""Kafka source and sink (``KafkaSourceOperator``, ``KafkaSinkOperator``) on confluent-kafka.

Source
------
Partitions are assigned without consumer-group rebalancing: subtask ``i`` of ``n`` reads the
partitions ``p`` with ``p % n == i`` through ``Consumer.assign`` (a group join takes 15–20 s on
some brokers and would move partitions under the runtime's feet). The position is the offset of
the next record per partition; ``snapshot`` returns it, ``open`` resumes from it, so a restored
job re-reads exactly what followed its checkpoint. The group's committed offsets are written only
in ``notify_checkpoint_complete`` (for monitoring and for a fresh start with
``starting_offsets="committed"``); correctness never depends on them. Event time is the record's
timestamp. A bounded source stops at the end offsets it saw at ``open``.

End offsets: some Kafka-protocol brokers (tansu 0.6) answer ListOffsets(latest) with the base
offset of the last record batch + 1 instead of the true end. :func:`_end_offsets` therefore reads
the last batch (from ``reported_end - 1``) and takes the largest offset found there + 1; against a
correct broker this reads one record and changes nothing.

Sink: buffered two-phase commit with idempotent re-commit
---------------------------------------------------------
Kafka transactions are *not* used: on tansu (the broker we can run) a read_committed consumer
still sees the records of aborted transactions, and a transaction left open by a killed producer
becomes visible when a new producer with the same transactional id fences it — so a crash would
publish uncommitted output. Instead:

1. ``write`` serializes records into an in-memory buffer; nothing reaches the broker.
2. ``pre_commit(N)`` moves the buffer into a pending entry ``{writer, checkpoint, start,
   count, values, keys}`` (values and keys length-prefixed and base64-encoded as one text each;
   ``start`` = the topic's partition end offsets now, a lower bound
   of where this entry's records will land) and returns every still-uncommitted entry ≤ N; the
   runtime stores that in checkpoint N.
3. ``commit(N, state)`` produces the entries' records (idempotent producer, acks=all) with the
   headers ``twingraph.writer`` (an id unique to this sink instance), ``twingraph.ckpt`` and
   ``twingraph.seq``, then flushes and checks every delivery report.

A ``commit`` of an entry this instance did not produce itself (restore after a crash) first scans
the topic from the entry's ``start`` offsets to the end, collects the ``(writer, ckpt, seq)``
headers already there, and produces only the missing records. A crash in the middle of a commit
thus leaves, after restore, every record exactly once; a re-commit of a finished entry writes
nothing. Output after the restored checkpoint was only ever in memory, so it never becomes visible.
Costs: the checkpoint state holds the records produced between two checkpoints, and a recovery
commit reads the topic from the entry's ``start`` offsets.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twingraph.errors import ConfigurationError, StreamError
from twingraph.stream.connectors.base import SourceSplitContext
from twingraph.stream.connectors.serde import (
    Deserializer, Serializer, _identity, deserializer_for, pack_frames, to_bytes, unpack_frames,
)

H_WRITER, H_CKPT, H_SEQ = "twingraph.writer", "twingraph.ckpt", "twingraph.seq"
_NO_TIMESTAMP = 0  # confluent_kafka.TIMESTAMP_NOT_AVAILABLE


def _ck() -> Any:
    try:
        import confluent_kafka
    except ImportError as exc:  # the optional extra is missing
        raise ConfigurationError(
            "the Kafka connectors need confluent-kafka: pip install 'twingraph[kafka]'") from exc
    return confluent_kafka


@dataclass(frozen=True)
class KafkaRecord:
    """One consumed record, handed out instead of the bare value with ``include_metadata=True``."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: Any
    timestamp_ms: int | None
    headers: tuple[tuple[str, bytes], ...] = ()


def _raise_kafka(what: str, exc: BaseException) -> StreamError:
    return StreamError(f"Kafka {what} failed: {exc}")


def _partitions(client: Any, topic: str, timeout_s: float) -> list[int]:
    """The topic's partition ids; StreamError when the broker is unreachable or the topic absent."""
    ck = _ck()
    try:
        md = client.list_topics(topic, timeout=timeout_s)
    except ck.KafkaException as exc:
        raise _raise_kafka(f"metadata request for topic {topic!r}", exc) from exc
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None or not tmd.partitions:
        err = tmd.error if tmd is not None else "not in metadata"
        raise StreamError(f"Kafka topic {topic!r} is not available: {err}")
    return sorted(tmd.partitions)


def _end_offsets(consumer: Any, topic: str, partitions: Iterable[int], timeout_s: float,
                 probe_s: float = 0.5) -> dict[int, int]:
    """True end offset (offset of the next record to be written) of each partition, now.

    See the module docstring: the reported end is trusted only as a lower bound; the last batch
    is read to find the real one. Leaves ``consumer`` assigned to nothing.
    """
    ck = _ck()
    ends: dict[int, int] = {}
    probe = []
    for p in partitions:
        try:
            low, high = consumer.get_watermark_offsets(ck.TopicPartition(topic, p),
                                                       timeout=timeout_s, cached=False)
        except ck.KafkaException as exc:
            raise _raise_kafka(f"end-offset request for {topic}[{p}]", exc) from exc
        ends[p] = high
        if high > low:
            probe.append(ck.TopicPartition(topic, p, high - 1))
    if probe:
        consumer.assign(probe)
        waiting = {tp.partition: tp.offset for tp in probe}
        deadline = time.monotonic() + probe_s
        while time.monotonic() < deadline:
            msgs = consumer.consume(1000, 0.05)
            seen = False
            for m in msgs:
                if m.error() is not None:
                    continue
                seen = True
                p = m.partition()
                ends[p] = max(ends[p], m.offset() + 1)
                waiting.pop(p, None)
            # a batch of transaction markers yields no message but moves the position past it
            for tp in consumer.position([ck.TopicPartition(topic, p) for p in waiting]):
                if tp.offset > waiting[tp.partition]:
                    ends[tp.partition] = max(ends[tp.partition], tp.offset)
                    del waiting[tp.partition]
            if not waiting and not seen:
                break
        consumer.unassign()
    return ends


def _fatal_codes() -> frozenset[int]:
    e = _ck().KafkaError
    return frozenset({e.UNKNOWN_TOPIC_OR_PART, e._UNKNOWN_PARTITION, e._UNKNOWN_TOPIC,
                      e.TOPIC_AUTHORIZATION_FAILED, e.GROUP_AUTHORIZATION_FAILED})


def _merged_offsets(restored: dict | None) -> dict[int, int]:
    """Partition -> next offset from a snapshot or from the runtime's merged rescale form."""
    if not restored:
        return {}
    states = restored.get("subtasks", [restored])
    out: dict[int, int] = {}
    for st in states:
        for p, off in (st or {}).get("offsets", {}).items():
            out[int(p)] = int(off)
    return out


class KafkaSourceOperator:
    """Reads ``topic`` from Kafka; replayable, partition offsets checkpointed.

    ``watermark_strategy`` is kept for the runtime (event time = the record timestamp).
    ``starting_offsets`` for a fresh start (no restored state): ``"committed"`` (the group's
    committed offset, else the earliest), ``"earliest"`` or ``"latest"``. ``bounded=True`` stops
    at the end offsets seen at ``open``. Values are decoded by ``value_format`` (``"bytes"``,
    ``"str"``, ``"json"``) or by ``deserializer``; ``include_metadata=True`` hands out
    :class:`KafkaRecord` objects instead of bare values. ``consumer_config`` adds librdkafka
    settings.
    """

    def __init__(self, topic: str, bootstrap_servers: str, group_id: str,
                 watermark_strategy: Any = None, *, bounded: bool = False,
                 starting_offsets: str = "committed", value_format: str = "bytes",
                 deserializer: Deserializer | None = None, include_metadata: bool = False,
                 consumer_config: dict[str, Any] | None = None,
                 request_timeout_s: float = 10.0) -> None:
        if starting_offsets not in ("committed", "earliest", "latest"):
            raise StreamError("starting_offsets must be 'committed', 'earliest' or 'latest'")
        deserializer_for(value_format, deserializer)  # validate now, not at open
        self.topic, self.bootstrap_servers, self.group_id = topic, bootstrap_servers, group_id
        self.watermark_strategy = watermark_strategy
        self.bounded = bounded
        self.starting_offsets = starting_offsets
        self.value_format, self.deserializer = value_format, deserializer
        self.include_metadata = include_metadata
        self.consumer_config = dict(consumer_config or {})
        self.request_timeout_s = request_timeout_s
        self._decode: Deserializer = deserializer_for(value_format, deserializer)
        self._reset()

    def _reset(self) -> None:
        """Fresh runtime state. ``open`` calls it too: the runtime makes one instance per subtask
        with ``copy.copy`` of the prototype, which would otherwise share these containers."""
        self._consumer: Any = None
        self._next: dict[int, int] = {}
        self._end: dict[int, int] = {}
        self._pending_commits: dict[int, dict[int, int]] = {}

    def __repr__(self) -> str:
        return f"KafkaSourceOperator(topic={self.topic!r}, group_id={self.group_id!r})"

    def open(self, ctx: SourceSplitContext) -> None:
        ck = _ck()
        self._reset()
        conf = {"bootstrap.servers": self.bootstrap_servers, "group.id": self.group_id,
                "enable.auto.commit": False, "enable.auto.offset.store": False,
                "auto.offset.reset": "latest" if self.starting_offsets == "latest" else "earliest",
                "isolation.level": "read_committed", "fetch.wait.max.ms": 50,
                **self.consumer_config}
        try:
            self._consumer = consumer = ck.Consumer(conf)
        except ck.KafkaException as exc:
            raise _raise_kafka("consumer creation", exc) from exc
        owned = [p for p in _partitions(consumer, self.topic, self.request_timeout_s)
                 if p % ctx.parallelism == ctx.subtask_index]
        restored = _merged_offsets(ctx.restored)
        start: dict[int, int] = {}
        fresh = [p for p in owned if p not in restored]
        if fresh:
            start.update(self._fresh_offsets(consumer, fresh))
        start.update({p: restored[p] for p in owned if p in restored})
        if self.bounded:
            self._end = _end_offsets(consumer, self.topic, owned, self.request_timeout_s)
        self._next = dict(start)
        live = [ck.TopicPartition(self.topic, p, start[p]) for p in owned
                if not self.bounded or start[p] < self._end[p]]
        if live:
            consumer.assign(live)

    def _fresh_offsets(self, consumer: Any, parts: list[int]) -> dict[int, int]:
        ck = _ck()
        out: dict[int, int] = {}
        committed: dict[int, int] = {}
        if self.starting_offsets == "committed":
            try:
                tps = consumer.committed([ck.TopicPartition(self.topic, p) for p in parts],
                                         timeout=self.request_timeout_s)
            except ck.KafkaException as exc:
                raise _raise_kafka(f"committed-offset request for group {self.group_id!r}",
                                   exc) from exc
            committed = {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
        rest = [p for p in parts if p not in committed]
        if self.starting_offsets == "latest":
            out.update(_end_offsets(consumer, self.topic, rest, self.request_timeout_s))
        else:
            for p in rest:
                try:
                    out[p] = consumer.get_watermark_offsets(
                        ck.TopicPartition(self.topic, p), timeout=self.request_timeout_s,
                        cached=False)[0]
                except ck.KafkaException as exc:
                    raise _raise_kafka(f"offset request for {self.topic}[{p}]", exc) from exc
        out.update(committed)
        return out

    def poll(self, max_records: int) -> list[tuple[Any, int | None]]:
        consumer = self._consumer
        if consumer is None or max_records <= 0 or self.finished():
            return []
        try:
            msgs = consumer.consume(max_records, 0.005)
        except _ck().KafkaException as exc:
            raise _raise_kafka(f"consume from {self.topic!r}", exc) from exc
        out: list[tuple[Any, int | None]] = []
        append = out.append
        ends, nxt, bounded = self._end, self._next, self.bounded
        decode = None if self._decode is _identity else self._decode
        meta = self.include_metadata
        reached: list[int] = []
        for m in msgs:
            err = m.error()
            if err is not None:  # librdkafka recovers from the transient ones by itself
                if err.fatal() or err.code() in _fatal_codes():
                    raise StreamError(f"Kafka consumer error on {self.topic!r}: {err}")
                continue
            p, off = m.partition(), m.offset()
            if off < nxt.get(p, 0):  # a stale message from before a re-assign
                continue
            if bounded and off >= ends[p]:
                reached.append(p)
                continue
            ts_type, ts = m.timestamp()
            event_ms = ts if ts_type != _NO_TIMESTAMP and ts >= 0 else None
            value = m.value()
            if decode is not None and value is not None:
                value = decode(value)
            if meta:
                value = KafkaRecord(self.topic, p, off, m.key(), value, event_ms,
                                    tuple(m.headers() or ()))
            append((value, event_ms))
            nxt[p] = off + 1
            if bounded and off + 1 >= ends[p]:
                reached.append(p)
        if bounded and len(msgs) < max_records:
            reached += self._skip_control_records()
        if reached:
            consumer.pause([_ck().TopicPartition(self.topic, p) for p in set(reached)])
        return out

    def _skip_control_records(self) -> list[int]:
        """Advance past transaction markers at the end of a bounded partition.

        A consumer never hands out control records, so after the last data record of a topic
        written transactionally the next offset stays below the end; the consumer's position
        (which librdkafka moves past control records) tells how far it really got.
        """
        ck = _ck()
        nxt, ends = self._next, self._end
        behind = [ck.TopicPartition(self.topic, p) for p in nxt if nxt[p] < ends[p]]
        if not behind:
            return []
        done = []
        for tp in self._consumer.position(behind):
            if tp.offset > nxt[tp.partition]:
                nxt[tp.partition] = min(tp.offset, ends[tp.partition])
                if nxt[tp.partition] >= ends[tp.partition]:
                    done.append(tp.partition)
        return done

    def finished(self) -> bool:
        if not self.bounded:
            return False
        return all(self._next.get(p, 0) >= end for p, end in self._end.items())

    def snapshot(self, checkpoint_id: int) -> dict:
        offsets = dict(self._next)
        self._pending_commits[checkpoint_id] = offsets
        return {"topic": self.topic, "offsets": {str(p): o for p, o in sorted(offsets.items())}}

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Commit the checkpoint's offsets to the group (monitoring; never used for restore)."""
        offsets = self._pending_commits.pop(checkpoint_id, None)
        for older in [c for c in self._pending_commits if c < checkpoint_id]:
            del self._pending_commits[older]
        if offsets and self._consumer is not None:
            ck = _ck()
            try:
                self._consumer.commit(
                    offsets=[ck.TopicPartition(self.topic, p, o) for p, o in offsets.items()],
                    asynchronous=True)
            except ck.KafkaException as exc:
                raise _raise_kafka(f"offset commit for group {self.group_id!r}", exc) from exc

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()


def _entries(state: dict | None) -> list[dict]:
    """Pending entries of a pre_commit state, or of the runtime's merged rescale form."""
    if not state:
        return []
    out: list[dict] = []
    for st in state.get("subtasks", [state]):
        out.extend((st or {}).get("pending", []))
    return sorted(out, key=lambda e: (int(e["checkpoint"]), str(e["writer"])))


class KafkaSinkOperator:
    """Writes records to ``topic`` exactly once per checkpoint (see the module docstring).

    ``serializer(record) -> bytes`` (default: bytes as is, str as UTF-8, else JSON);
    ``key(record) -> bytes | str | None`` picks the message key (and so the partition).
    ``producer_config`` adds librdkafka settings.
    """

    def __init__(self, topic: str, bootstrap_servers: str, *,
                 serializer: Serializer | None = None,
                 key: Callable[[Any], bytes | str | None] | None = None,
                 producer_config: dict[str, Any] | None = None,
                 request_timeout_s: float = 10.0, flush_timeout_s: float = 60.0) -> None:
        self.topic, self.bootstrap_servers = topic, bootstrap_servers
        self.serializer, self.key = serializer, key
        self.producer_config = dict(producer_config or {})
        self.request_timeout_s, self.flush_timeout_s = request_timeout_s, flush_timeout_s
        self._reset()

    def _reset(self) -> None:
        """Fresh runtime state (also in ``open``: subtask instances are shallow copies)."""
        self._producer: Any = None
        self._reader: Any = None
        self._writer = ""
        self._partitions: list[int] = []
        self._values: list[bytes] = []
        self._keys: list[bytes | None] = []
        self._raw: dict[tuple[str, int], tuple[list[bytes | None] | None, list[bytes]]] = {}
        self._pending: dict[tuple[int, str], dict] = {}  # (checkpoint, writer) -> entry
        self._committed: set[tuple[str, int]] = set()
        self._errors: list[str] = []

    def __repr__(self) -> str:
        return f"KafkaSinkOperator(topic={self.topic!r})"

    def open(self, ctx: SourceSplitContext) -> None:
        ck = _ck()
        self._reset()
        job = ctx.job_name or "job"
        op = ctx.operator_uid or self.topic
        self._writer = f"{job}/{op}/{ctx.subtask_index}/{uuid.uuid4().hex[:16]}"
        conf = {"bootstrap.servers": self.bootstrap_servers, "enable.idempotence": True,
                "acks": "all", "linger.ms": 5, "batch.num.messages": 10000,
                # a Python callback per delivered record would cost more than producing it
                "delivery.report.only.error": True, "on_delivery": self._on_delivery,
                **self.producer_config}
        try:
            self._producer = ck.Producer(conf)
            self._reader = ck.Consumer({
                "bootstrap.servers": self.bootstrap_servers, "group.id": f"twingraph-sink-{op}",
                "enable.auto.commit": False, "isolation.level": "read_uncommitted",
                "fetch.wait.max.ms": 50})
        except ck.KafkaException as exc:
            raise _raise_kafka("producer creation", exc) from exc
        self._partitions = _partitions(self._reader, self.topic, self.request_timeout_s)
        for entry in _entries(ctx.restored):  # committed by the runtime's next commit() call
            self._pending.setdefault((int(entry["checkpoint"]), str(entry["writer"])), entry)

    def write(self, records: list[Any]) -> None:
        if self.serializer is not None:
            self._values.extend(map(self.serializer, records))
        else:
            self._values.extend(r.encode() if type(r) is str else to_bytes(r) for r in records)
        keyf = self.key
        if keyf is not None:
            for rec in records:
                k = keyf(rec)
                self._keys.append(k.encode() if isinstance(k, str) else k)

    def pre_commit(self, checkpoint_id: int) -> dict:
        if self._values:
            ck = _ck()
            start = {}
            for p in self._partitions:
                try:
                    start[str(p)] = self._reader.get_watermark_offsets(
                        ck.TopicPartition(self.topic, p), timeout=self.request_timeout_s,
                        cached=False)[1]
                except ck.KafkaException as exc:
                    raise _raise_kafka(f"end-offset request for {self.topic}[{p}]", exc) from exc
            keys = self._keys if self.key is not None else None
            self._pending[(checkpoint_id, self._writer)] = {
                "writer": self._writer, "checkpoint": checkpoint_id, "start": start,
                "count": len(self._values), "values": pack_frames(list(self._values)),
                "keys": pack_frames(keys) if keys is not None else None}
            self._raw[(self._writer, checkpoint_id)] = (keys, self._values)
            self._values, self._keys = [], []
        return {"pending": [e for (c, _), e in sorted(self._pending.items())
                            if c <= checkpoint_id]}

    def commit(self, checkpoint_id: int, state: dict) -> None:
        todo = [e for e in _entries(state)
                if (e["writer"], int(e["checkpoint"])) not in self._committed]
        if not todo:
            return
        foreign = [e for e in todo if (e["writer"], int(e["checkpoint"])) not in self._raw]
        present = self._already_written(foreign) if foreign else set()
        for entry in todo:
            self._produce(entry, present)
        self._flush()
        for entry in todo:
            c = int(entry["checkpoint"])
            self._committed.add((entry["writer"], c))
            self._raw.pop((entry["writer"], c), None)
            self._pending.pop((c, str(entry["writer"])), None)

    def _produce(self, entry: dict, present: set[tuple[str, int, int]]) -> None:
        producer = self._producer
        writer, c = str(entry["writer"]), int(entry["checkpoint"])
        raw = self._raw.get((writer, c))
        if raw is not None:
            keys, values = raw
        else:
            values = [v or b"" for v in unpack_frames(entry["values"])]
            keys = unpack_frames(entry["keys"]) if entry.get("keys") is not None else None
            if len(values) != int(entry["count"]) or (keys is not None and len(keys) != len(values)):
                raise StreamError(f"Kafka sink: checkpoint state of {writer} ckpt {c} is corrupt")
        wh, ch = (H_WRITER, writer.encode()), (H_CKPT, str(c).encode())
        topic = self.topic
        produce = producer.produce
        kafka_exc = _ck().KafkaException
        for seq, value in enumerate(values):
            if present and (writer, c, seq) in present:
                continue
            headers = [wh, ch, (H_SEQ, b"%d" % seq)]
            key = keys[seq] if keys is not None else None
            while True:
                try:
                    produce(topic, value, key, headers=headers)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.05)
                except kafka_exc as exc:  # e.g. a record larger than message.max.bytes
                    raise _raise_kafka(f"produce to {topic!r}", exc) from exc
            if seq % 1000 == 999:
                producer.poll(0)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def _flush(self) -> None:
        left = self._producer.flush(self.flush_timeout_s)
        if left:
            raise StreamError(f"Kafka sink: {left} records to {self.topic!r} not delivered "
                              f"within {self.flush_timeout_s} s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise StreamError(f"Kafka sink: delivery to {self.topic!r} failed: {errors[0]}"
                              f" ({len(errors)} records)")

    def _already_written(self, entries: list[dict]) -> set[tuple[str, int, int]]:
        """(writer, ckpt, seq) of the entries' records already in the topic (recovery scan)."""
        ck = _ck()
        writers = {str(e["writer"]).encode() for e in entries}
        start: dict[int, int] = {}
        for e in entries:
            for p, off in e["start"].items():
                start[int(p)] = min(start.get(int(p), off), int(off))
        reader = self._reader
        for p in _partitions(reader, self.topic, self.request_timeout_s):
            start.setdefault(p, 0)  # added since the pre-commit: all its records are younger
        ends = _end_offsets(reader, self.topic, start, self.request_timeout_s)
        todo = {p: s for p, s in start.items() if s < ends.get(p, 0)}
        found: set[tuple[str, int, int]] = set()
        if not todo:
            return found
        reader.assign([ck.TopicPartition(self.topic, p, s) for p, s in todo.items()])
        pos = dict(todo)
        deadline = time.monotonic() + self.flush_timeout_s
        while any(pos[p] < ends[p] for p in pos):
            if time.monotonic() > deadline:
                raise StreamError(f"Kafka sink: recovery scan of {self.topic!r} timed out")
            for m in reader.consume(1000, 0.1):
                if m.error() is not None:
                    continue
                pos[m.partition()] = max(pos[m.partition()], m.offset() + 1)
                hdrs = dict(m.headers() or ())
                w = hdrs.get(H_WRITER)
                if w in writers:
                    found.add((w.decode(), int(hdrs[H_CKPT]), int(hdrs[H_SEQ])))
        reader.unassign()
        return found

    def close(self) -> None:
        producer, self._producer = self._producer, None
        reader, self._reader = self._reader, None
        if producer is not None:
            producer.flush(self.flush_timeout_s)  # only committed output is ever produced
        if reader is not None:
            reader.close()
