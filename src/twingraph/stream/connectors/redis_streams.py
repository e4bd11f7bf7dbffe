"""Redis Streams source and sink (``RedisStreamSource``, ``RedisStreamSink``) on redis-py.

Source
------
Reads with ``XRANGE`` from just after the last entry id it handed out, so it needs no consumer
group and is replayable: ``snapshot`` returns the last id per stream, ``open`` resumes after it.
Several streams may be given; subtask ``i`` of ``n`` reads the streams at list positions ``k`` with
``k % n == i``. Event time is the millisecond part of the entry id, or an integer field
(``event_time_field``). A bounded source stops at the last entry id each stream had at ``open``. An
unbounded source that finds nothing new waits up to ``block_ms`` in ``XREAD BLOCK`` rather than
letting the runtime spin on empty reads. With ``group=...``, a completed checkpoint moves that
consumer group's last-delivered id to the checkpointed position (``XGROUP SETID``, creating the
group if needed), the Redis counterpart of committing Kafka offsets; a fresh start (no restored
state) then begins after the group's position. Correctness never depends on it.

Sink: buffered per checkpoint, committed in one MULTI/EXEC with a marker
--------------------------------------------------------------------------
``write`` buffers; ``pre_commit(N)`` turns the buffer into a pending entry (all field names and
values length-prefixed in one base64 text of the JSON state) and returns every entry not yet
committed; ``commit(N, state)`` appends each entry's records with ``XADD`` inside one
``MULTI/EXEC`` transaction that also sets the marker key ``<marker_prefix><writer>`` to the entry's
checkpoint id, under ``WATCH`` of that key. ``writer`` is unique to the sink instance (job,
operator, subtask and a random part) and travels in the state, so a commit after a restore uses the
crashed instance's marker: if the marker already holds a checkpoint ≥ the entry's, the entry is
skipped. Redis applies a transaction entirely or not at all, so each checkpoint's output appears
exactly once. Markers expire after ``marker_ttl_s`` (default 7 days): restoring a checkpoint older
than that would write its output again.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twingraph.errors import ConfigurationError, StreamError
from twingraph.stream.connectors.base import SourceSplitContext
from twingraph.stream.connectors.serde import (
    Deserializer, Serializer, deserializer_for, pack_frames, to_bytes, unpack_frames,
)

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _redis() -> Any:
    try:
        import redis
    except ImportError as exc:
        raise ConfigurationError(
            "the Redis Streams connectors need redis-py: pip install 'twingraph[redis]'") from exc
    return redis


def _connect(url: str, client_kwargs: dict[str, Any]) -> Any:
    redis = _redis()
    try:
        client = redis.Redis.from_url(url, **client_kwargs)
        client.ping()
    except redis.RedisError as exc:
        raise StreamError(f"Redis at {url} is not reachable: {exc}") from exc
    return client


def _id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _fmt(entry_id: tuple[int, int]) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


@dataclass(frozen=True)
class RedisStreamRecord:
    """One stream entry, handed out instead of the bare value with ``include_metadata=True``."""

    stream: str
    id: str
    fields: dict[bytes, bytes]
    value: Any


class RedisStreamSource:
    """Reads one or more Redis streams; replayable, last entry id per stream checkpointed.

    ``url`` of the Redis server. ``start_id`` for a fresh start: ``"0"`` (everything) or ``"$"``
    (only entries added after ``open``). Values: by default the entry's fields as a
    ``dict[str, str]``; with ``value_field`` only that field, decoded by ``value_format``
    (``"bytes"``, ``"str"``, ``"json"``) or ``deserializer``. ``include_metadata=True`` hands out
    :class:`RedisStreamRecord` objects. An unbounded source that finds nothing new waits up to
    ``block_ms`` (default 5, 0 = never) in ``XREAD BLOCK`` before ``poll`` returns ``[]``.
    """

    def __init__(self, stream: str | Sequence[str], url: str = DEFAULT_URL, *,
                 bounded: bool = False, start_id: str = "0", group: str | None = None,
                 value_field: str | None = None, value_format: str = "str",
                 deserializer: Deserializer | None = None, event_time_field: str | None = None,
                 include_metadata: bool = False, watermark_strategy: Any = None,
                 block_ms: int = 5, client_kwargs: dict[str, Any] | None = None) -> None:
        self.streams = [stream] if isinstance(stream, str) else list(stream)
        if not self.streams:
            raise StreamError("RedisStreamSource needs at least one stream")
        if start_id not in ("0", "$"):
            raise StreamError("start_id must be '0' (from the beginning) or '$' (new entries)")
        self.url, self.bounded, self.start_id, self.group = url, bounded, start_id, group
        self.value_field = value_field
        self.value_format, self.deserializer = value_format, deserializer
        self._decode = deserializer_for(value_format, deserializer)
        self.event_time_field = event_time_field
        self.include_metadata = include_metadata
        self.watermark_strategy = watermark_strategy
        self.block_ms = block_ms
        self.client_kwargs = dict(client_kwargs or {})
        self._reset()

    def _reset(self) -> None:
        """Fresh runtime state. ``open`` calls it too: the runtime makes one instance per subtask
        with ``copy.copy`` of the prototype, which would otherwise share these containers."""
        self._client: Any = None
        self._pos: dict[str, tuple[int, int]] = {}
        self._end: dict[str, tuple[int, int]] = {}
        self._owned: list[str] = []
        self._rr = 0
        self._snapshots: dict[int, dict[str, tuple[int, int]]] = {}

    def __repr__(self) -> str:
        return f"RedisStreamSource(streams={self.streams!r})"

    def open(self, ctx: SourceSplitContext) -> None:
        redis = _redis()
        self._reset()
        self._client = _connect(self.url, self.client_kwargs)
        self._owned = [s for k, s in enumerate(self.streams)
                       if k % ctx.parallelism == ctx.subtask_index]
        restored: dict[str, tuple[int, int]] = {}
        if ctx.restored:
            for st in ctx.restored.get("subtasks", [ctx.restored]):
                for s, last in (st or {}).get("positions", {}).items():
                    restored[s] = _id(last)
        try:
            for s in self._owned:
                last = self._last_id(s)
                if s in restored:
                    self._pos[s] = restored[s]
                else:
                    self._pos[s] = self._fresh_position(s, last)
                if self.bounded:
                    self._end[s] = last
        except redis.RedisError as exc:
            raise StreamError(f"Redis stream source could not open: {exc}") from exc

    def _last_id(self, stream: str) -> tuple[int, int]:
        newest = self._client.xrevrange(stream, "+", "-", count=1)
        return _id(newest[0][0]) if newest else (0, 0)

    def _fresh_position(self, stream: str, last: tuple[int, int]) -> tuple[int, int]:
        if self.group is not None:
            redis = _redis()
            try:
                for g in self._client.xinfo_groups(stream):
                    name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                    if name == self.group:
                        return _id(g["last-delivered-id"])
            except redis.ResponseError:  # no such stream yet
                pass
        return last if self.start_id == "$" else (0, 0)

    def poll(self, max_records: int) -> list[tuple[Any, int | None]]:
        if self._client is None or max_records <= 0 or not self._owned:
            return []
        redis = _redis()
        out: list[tuple[Any, int | None]] = []
        n = len(self._owned)
        for k in range(n):
            if len(out) >= max_records:
                break
            s = self._owned[(self._rr + k) % n]
            pos = self._pos[s]
            if self.bounded:
                end = self._end[s]
                if pos >= end:
                    continue
                hi = _fmt(end)
            else:
                hi = "+"
            try:
                entries = self._client.xrange(s, "(" + _fmt(pos), hi, count=max_records - len(out))
            except redis.RedisError as exc:
                raise StreamError(f"Redis XRANGE on {s!r} failed: {exc}") from exc
            for raw_id, fields in entries:
                out.append(self._record(s, raw_id, fields))
            if entries:
                self._pos[s] = _id(entries[-1][0])
        self._rr = (self._rr + 1) % n
        if not out and not self.bounded and self.block_ms > 0:
            out = self._wait_for_entries(max_records)
        return out

    def _wait_for_entries(self, max_records: int) -> list[tuple[Any, int | None]]:
        """Nothing new now: let Redis hold the request up to ``block_ms`` (XREAD BLOCK) instead
        of the runtime spinning on empty XRANGEs."""
        redis = _redis()
        try:
            res = self._client.xread({s: _fmt(self._pos[s]) for s in self._owned},
                                     count=max_records, block=self.block_ms)
        except redis.RedisError as exc:
            raise StreamError(f"Redis XREAD on {self._owned!r} failed: {exc}") from exc
        out: list[tuple[Any, int | None]] = []
        for raw_stream, entries in res or []:
            s = raw_stream.decode() if isinstance(raw_stream, bytes) else raw_stream
            for raw_id, fields in entries[:max_records - len(out)]:
                out.append(self._record(s, raw_id, fields))
                self._pos[s] = _id(raw_id)
        return out

    def _record(self, stream: str, raw_id: bytes, fields: dict[bytes, bytes]) -> tuple[Any, int | None]:
        eid = raw_id.decode()
        if self.event_time_field is not None:
            raw_ts = fields.get(self.event_time_field.encode())
            try:
                event_ms = int(raw_ts) if raw_ts is not None else None
            except ValueError as exc:
                raise StreamError(f"entry {eid} of {stream!r}: field {self.event_time_field!r} "
                                  f"is not an integer of milliseconds: {raw_ts!r}") from exc
        else:
            event_ms = _id(eid)[0]
        value: Any
        if self.value_field is not None:
            raw = fields.get(self.value_field.encode())
            value = self._decode(raw) if raw is not None else None
        else:
            value = {k.decode(): v.decode() for k, v in fields.items()}
        if self.include_metadata:
            value = RedisStreamRecord(stream, eid, dict(fields), value)
        return value, event_ms

    def finished(self) -> bool:
        if not self._owned:
            return True
        if not self.bounded:
            return False
        return all(self._pos[s] >= self._end[s] for s in self._owned)

    def snapshot(self, checkpoint_id: int) -> dict:
        self._snapshots[checkpoint_id] = dict(self._pos)
        return {"positions": {s: _fmt(p) for s, p in sorted(self._pos.items())}}

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Move the consumer group (if any) to the checkpoint's positions."""
        positions = self._snapshots.pop(checkpoint_id, None)
        for older in [c for c in self._snapshots if c < checkpoint_id]:
            del self._snapshots[older]
        if self.group is None or not positions or self._client is None:
            return
        redis = _redis()
        for s, pos in positions.items():
            try:
                self._client.xgroup_setid(s, self.group, _fmt(pos))
            except redis.ResponseError:  # no such group (or stream) yet
                try:
                    self._client.xgroup_create(s, self.group, _fmt(pos), mkstream=True)
                except redis.RedisError as exc:
                    raise StreamError(f"Redis consumer group {self.group!r} on {s!r}: {exc}") from exc
            except redis.RedisError as exc:
                raise StreamError(f"Redis consumer group {self.group!r} on {s!r}: {exc}") from exc

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _field_bytes(value: Any) -> bytes:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value).encode()
    return to_bytes(value)


def _entries(state: dict | None) -> list[dict]:
    if not state:
        return []
    out: list[dict] = []
    for st in state.get("subtasks", [state]):
        out.extend((st or {}).get("pending", []))
    return sorted(out, key=lambda e: (int(e["checkpoint"]), str(e["writer"])))


class RedisStreamSink:
    """Appends records to ``stream`` exactly once per checkpoint (see the module docstring).

    A ``dict`` record becomes the entry's fields (bytes as is, str as UTF-8, numbers as text,
    anything else as JSON); any other record, or every record when ``serializer`` is given, becomes
    one field ``value_field``. ``maxlen`` trims the stream approximately on each append.
    """

    def __init__(self, stream: str, url: str = DEFAULT_URL, *,
                 serializer: Serializer | None = None, value_field: str = "value",
                 maxlen: int | None = None, marker_prefix: str = "twingraph:sink:",
                 marker_ttl_s: int = 7 * 24 * 3600,
                 client_kwargs: dict[str, Any] | None = None) -> None:
        self.stream, self.url = stream, url
        self.serializer, self.value_field, self.maxlen = serializer, value_field, maxlen
        self.marker_prefix, self.marker_ttl_s = marker_prefix, marker_ttl_s
        self.client_kwargs = dict(client_kwargs or {})
        self._reset()

    def _reset(self) -> None:
        """Fresh runtime state (also in ``open``: subtask instances are shallow copies)."""
        self._client: Any = None
        self._writer = ""
        self._buffer: list[dict[bytes, bytes]] = []
        self._raw: dict[tuple[str, int], list[dict[bytes, bytes]]] = {}
        self._pending: dict[tuple[int, str], dict] = {}  # (checkpoint, writer) -> entry
        self._committed: set[tuple[str, int]] = set()

    def __repr__(self) -> str:
        return f"RedisStreamSink(stream={self.stream!r})"

    def open(self, ctx: SourceSplitContext) -> None:
        self._reset()
        self._client = _connect(self.url, self.client_kwargs)
        job = ctx.job_name or "job"
        op = ctx.operator_uid or self.stream
        self._writer = f"{job}/{op}/{ctx.subtask_index}/{uuid.uuid4().hex[:16]}"
        for entry in _entries(ctx.restored):
            self._pending.setdefault((int(entry["checkpoint"]), str(entry["writer"])), entry)

    def write(self, records: list[Any]) -> None:
        buf, ser, vf = self._buffer, self.serializer, self.value_field.encode()
        for rec in records:
            if ser is None and isinstance(rec, dict):
                buf.append({str(k).encode(): _field_bytes(v) for k, v in rec.items()})
            elif ser is None and type(rec) is str:
                buf.append({vf: rec.encode()})
            else:
                buf.append({vf: (ser or to_bytes)(rec)})

    def pre_commit(self, checkpoint_id: int) -> dict:
        if self._buffer:
            flat: list[bytes | None] = []  # name, value, name, value, ..., None per record
            for fields in self._buffer:
                for name, value in fields.items():
                    flat.append(name)
                    flat.append(value)
                flat.append(None)
            self._pending[(checkpoint_id, self._writer)] = {"writer": self._writer, "checkpoint": checkpoint_id,
                                            "count": len(self._buffer),
                                            "frames": pack_frames(flat)}
            self._raw[(self._writer, checkpoint_id)] = self._buffer
            self._buffer = []
        return {"pending": [e for (c, _), e in sorted(self._pending.items())
                            if c <= checkpoint_id]}

    def commit(self, checkpoint_id: int, state: dict) -> None:
        for entry in _entries(state):
            key = (str(entry["writer"]), int(entry["checkpoint"]))
            if key in self._committed:
                continue
            self._commit_entry(entry, self._raw.get(key))
            self._committed.add(key)
            self._raw.pop(key, None)
            c = key[1]
            self._pending.pop((c, key[0]), None)

    @staticmethod
    def _decode_entry(entry: dict) -> list[dict[bytes, bytes]]:
        records: list[dict[bytes, bytes]] = []
        fields: dict[bytes, bytes] = {}
        name: bytes | None = None
        for item in unpack_frames(entry["frames"]):
            if item is None:
                if name is not None:
                    raise StreamError("malformed Redis sink entry in checkpoint state")
                records.append(fields)
                fields = {}
            elif name is None:
                name = item
            else:
                fields[name], name = item, None
        if fields or name is not None or len(records) != int(entry["count"]):
            raise StreamError("malformed Redis sink entry in checkpoint state")
        return records

    def _commit_entry(self, entry: dict, raw: list[dict[bytes, bytes]] | None) -> None:
        """XADD the entry's records and set its marker in one MULTI/EXEC, unless already done."""
        redis = _redis()
        c = int(entry["checkpoint"])
        marker = self.marker_prefix + str(entry["writer"])
        records = raw if raw is not None else self._decode_entry(entry)
        try:
            with self._client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(marker)
                        done = pipe.get(marker)
                        if done is not None and int(done) >= c:
                            pipe.unwatch()
                            return
                        pipe.multi()
                        for fields in records:
                            pipe.xadd(self.stream, fields, maxlen=self.maxlen,
                                      approximate=self.maxlen is not None)
                        pipe.set(marker, c, ex=self.marker_ttl_s)
                        pipe.execute()
                        return
                    except redis.WatchError:  # the marker moved under us: look again
                        continue
        except redis.RedisError as exc:
            raise StreamError(f"Redis stream sink commit of checkpoint {c} to "
                              f"{self.stream!r} failed: {exc}") from exc

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
