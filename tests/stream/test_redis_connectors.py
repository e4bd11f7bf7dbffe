"""RedisStreamSource and RedisStreamSink against the machine's Redis (unique key prefix per test).

Driven through the Source/Sink contract as the runtime drives them; a "crash" is an instance
abandoned without close, followed by a fresh instance opened with the restored state.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from conftest_brokers import redis_prefix, redis_url  # noqa: F401

from twingraph.errors import StreamError
from twingraph.stream.connectors.base import Sink, Source, SourceSplitContext
from twingraph.stream.connectors.redis_streams import (
    RedisStreamRecord, RedisStreamSink, RedisStreamSource,
)

redis = pytest.importorskip("redis")

pytestmark = pytest.mark.timeout(30)


def ctx(i: int, n: int, restored: dict | None = None, rescaled: bool = False) -> SourceSplitContext:
    return SourceSplitContext(subtask_index=i, parallelism=n, restored=restored,
                              rescaled=rescaled, job_name="job", operator_uid="op")


@pytest.fixture
def r(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def drain(src: RedisStreamSource, limit: int | None = None, max_records: int = 7) -> list[Any]:
    got: list[Any] = []
    for _ in range(5000):
        if src.finished() or (limit is not None and len(got) >= limit):
            return got
        want = max_records if limit is None else min(max_records, limit - len(got))
        batch = src.poll(want)
        if not batch and not src.bounded:
            return got
        got.extend(batch)
    raise AssertionError("source did not finish")


def test_connectors_satisfy_the_contract() -> None:
    assert isinstance(RedisStreamSource("s"), Source)
    assert isinstance(RedisStreamSink("s"), Sink)


def test_source_resumes_exactly_after_the_snapshot(r: Any, redis_url: str, redis_prefix: str) -> None:
    streams = [f"{redis_prefix}in{k}" for k in range(3)]
    for k, s in enumerate(streams):
        for i in range(50):
            r.xadd(s, {"n": f"{k}-{i}"}, id=f"{1000 + i}-{k}")
    delivered: list[str] = []
    states = []
    for i in range(2):
        src = RedisStreamSource(streams, redis_url, bounded=True)
        src.open(ctx(i, 2))
        before = drain(src, limit=40)
        states.append(src.snapshot(1))
        lost = drain(src, limit=20)
        assert lost
        for value, ts in before + lost:
            k, n = map(int, value["n"].split("-"))
            assert k % 2 == i  # stream at list position k -> subtask k % 2
            assert ts == 1000 + n  # event time = the id's millisecond part
        delivered += [v["n"] for v, _ in before]
    for i in range(2):
        src = RedisStreamSource(streams, redis_url, bounded=True)
        src.open(ctx(i, 2, restored=states[i]))
        delivered += [v["n"] for v, _ in drain(src)]
        assert src.finished()
        src.close()
    assert sorted(delivered) == sorted(f"{k}-{i}" for k in range(3) for i in range(50))
    assert len(set(delivered)) == 150


def test_bounded_source_stops_at_the_last_id_seen_at_open(r: Any, redis_url: str,
                                                         redis_prefix: str) -> None:
    s = f"{redis_prefix}b"
    for i in range(10):
        r.xadd(s, {"n": str(i)})
    src = RedisStreamSource(s, redis_url, bounded=True)
    src.open(ctx(0, 1))
    r.xadd(s, {"n": "late"})
    got = [v["n"] for v, _ in drain(src)]
    assert got == [str(i) for i in range(10)]
    assert src.finished() and src.poll(10) == []
    src.close()
    # an unbounded source sees new entries as they come, and a restarted one resumes
    un = RedisStreamSource(s, redis_url)
    un.open(ctx(0, 1))
    assert [v["n"] for v, _ in drain(un, max_records=100)] == [str(i) for i in range(10)] + ["late"]
    state = un.snapshot(1)
    r.xadd(s, {"n": "later"})
    assert [v["n"] for v, _ in un.poll(10)] == ["later"]
    un.close()
    again = RedisStreamSource(s, redis_url)
    again.open(ctx(0, 1, restored=state))
    assert [v["n"] for v, _ in again.poll(10)] == ["later"]
    assert not again.finished()
    again.close()


def test_source_value_field_event_time_field_and_metadata(r: Any, redis_url: str,
                                                          redis_prefix: str) -> None:
    s = f"{redis_prefix}j"
    docs = [{"n": i} for i in range(4)]
    for i, d in enumerate(docs):
        r.xadd(s, {"payload": json.dumps(d), "ts": str(5000 + i)})
    src = RedisStreamSource(s, redis_url, bounded=True, value_field="payload",
                            value_format="json", event_time_field="ts", include_metadata=True)
    src.open(ctx(0, 1))
    got = drain(src)
    src.close()
    assert [ts for _, ts in got] == [5000, 5001, 5002, 5003]
    assert all(isinstance(v, RedisStreamRecord) for v, _ in got)
    assert [v.value for v, _ in got] == docs
    assert got[0][0].fields[b"ts"] == b"5000"
    r.xadd(s, {"payload": "{}", "ts": "yesterday"})
    bad = RedisStreamSource(s, redis_url, event_time_field="ts")
    bad.open(ctx(0, 1, restored=src.snapshot(1)))
    with pytest.raises(StreamError):
        bad.poll(10)
    bad.close()


def test_rescaled_restore_and_subtasks_without_streams(r: Any, redis_url: str,
                                                       redis_prefix: str) -> None:
    streams = [f"{redis_prefix}x{k}" for k in range(2)]
    for s in streams:
        for i in range(30):
            r.xadd(s, {"v": f"{s}:{i}"})
    src = RedisStreamSource(streams, redis_url, bounded=True)
    src.open(ctx(0, 1))
    first = [v["v"] for v, _ in drain(src, limit=25)]
    merged = {"subtasks": [src.snapshot(2)]}
    rest: list[str] = []
    for i in range(3):  # parallelism 1 -> 3: subtask 2 owns no stream and is finished at once
        s2 = RedisStreamSource(streams, redis_url, bounded=True)
        s2.open(ctx(i, 3, restored=merged, rescaled=True))
        if i == 2:
            assert s2.finished()
        rest += [v["v"] for v, _ in drain(s2)]
        s2.close()
    assert sorted(first + rest) == sorted(f"{s}:{i}" for s in streams for i in range(30))


def test_group_position_moves_only_when_the_checkpoint_completes(r: Any, redis_url: str,
                                                                 redis_prefix: str) -> None:
    s = f"{redis_prefix}g"
    ids = [r.xadd(s, {"n": str(i)}).decode() for i in range(10)]
    src = RedisStreamSource(s, redis_url, group="grp")
    src.open(ctx(0, 1))
    assert len(src.poll(4)) == 4
    src.snapshot(1)
    assert src.poll(100)  # read on, past the checkpoint
    assert r.xinfo_groups(s) == []
    src.notify_checkpoint_complete(1)
    (group,) = r.xinfo_groups(s)
    assert group["last-delivered-id"].decode() == ids[3]
    src.close()
    fresh = RedisStreamSource(s, redis_url, group="grp", bounded=True)
    fresh.open(ctx(0, 1))  # no restored state: starts after the group's position
    assert [v["n"] for v, _ in drain(fresh)] == [str(i) for i in range(4, 10)]
    fresh.close()


def entries(r: Any, stream: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in r.xrange(stream)]


def test_sink_commit_is_atomic_and_recommit_writes_nothing(r: Any, redis_url: str,
                                                           redis_prefix: str) -> None:
    out = f"{redis_prefix}out"
    sink = RedisStreamSink(out, redis_url, marker_prefix=redis_prefix + "m:")
    sink.open(ctx(0, 1))
    sink.write([{"word": "a", "count": 3}, "plain", b"\x00\xff", {"nested": [1, 2]}])
    state = sink.pre_commit(1)
    json.dumps(state)
    assert r.exists(out) == 0
    sink.commit(1, state)
    sink.commit(1, state)
    got = entries(r, out)
    assert got == [{b"word": b"a", b"count": b"3"}, {b"value": b"plain"},
                   {b"value": b"\x00\xff"}, {b"nested": b"[1,2]"}]
    sink.close()
    again = RedisStreamSink(out, redis_url, marker_prefix=redis_prefix + "m:")
    again.open(ctx(0, 1, restored=state))
    again.commit(1, state)  # restore of an already committed checkpoint
    again.close()
    assert len(entries(r, out)) == 4


def test_sink_crash_between_pre_commit_and_commit(r: Any, redis_url: str, redis_prefix: str) -> None:
    out = f"{redis_prefix}out"
    mp = redis_prefix + "m:"
    sink = RedisStreamSink(out, redis_url, marker_prefix=mp)
    sink.open(ctx(0, 1))
    sink.write([f"a{i}" for i in range(20)])
    sink.pre_commit(1)
    sink.write([f"b{i}" for i in range(20)])
    s2 = sink.pre_commit(2)
    sink.write([f"lost{i}" for i in range(5)])
    del sink  # crash before any commit
    assert r.exists(out) == 0
    restored = RedisStreamSink(out, redis_url, marker_prefix=mp)
    restored.open(ctx(0, 1, restored=s2))
    restored.commit(2, s2)
    restored.commit(2, s2)
    expect = [f"a{i}".encode() for i in range(20)] + [f"b{i}".encode() for i in range(20)]
    assert [e[b"value"] for e in entries(r, out)] == expect
    restored.write(["c"])
    restored.commit(3, restored.pre_commit(3))
    restored.close()
    assert [e[b"value"] for e in entries(r, out)] == expect + [b"c"]


def test_sink_crash_after_one_of_two_pending_checkpoints_committed(r: Any, redis_url: str,
                                                                   redis_prefix: str) -> None:
    out = f"{redis_prefix}out"
    mp = redis_prefix + "m:"
    sink = RedisStreamSink(out, redis_url, marker_prefix=mp)
    sink.open(ctx(0, 1))
    sink.write(["x1"])
    s1 = sink.pre_commit(1)
    sink.write(["x2"])
    s2 = sink.pre_commit(2)
    sink.commit(1, s1)  # the crash came after checkpoint 1's commit, before checkpoint 2's
    del sink
    restored = RedisStreamSink(out, redis_url, marker_prefix=mp)
    restored.open(ctx(0, 1, restored=s2))
    restored.commit(2, s2)  # carries checkpoint 1 too: skipped by its marker
    restored.close()
    assert [e[b"value"] for e in entries(r, out)] == [b"x1", b"x2"]
    # rescaled restore: merged states of several old subtasks, some already committed
    outs = f"{redis_prefix}outs"
    states = []
    for i in range(3):
        s = RedisStreamSink(outs, redis_url, marker_prefix=mp)
        s.open(ctx(i, 3))
        s.write([f"{i}-{j}" for j in range(5)])
        states.append(s.pre_commit(9))
        if i == 1:
            s.commit(9, states[1])
    merged = {"subtasks": states}
    new = RedisStreamSink(outs, redis_url, marker_prefix=mp)
    new.open(ctx(0, 1, restored=merged, rescaled=True))
    # restored entries not yet committed ride along with the next checkpoint
    later = new.pre_commit(10)
    assert len(later["pending"]) == 3  # three old writers, all checkpoint 9
    new.commit(10, later)
    new.commit(9, merged)
    new.close()
    assert sorted(e[b"value"] for e in entries(r, outs)) == sorted(
        f"{i}-{j}".encode() for i in range(3) for j in range(5))
    assert 0 < r.ttl(f"{mp}{states[0]['pending'][0]['writer']}") <= 7 * 24 * 3600


def test_unreachable_redis_is_a_stream_error() -> None:
    src = RedisStreamSource("s", "redis://127.0.0.1:1/0")
    with pytest.raises(StreamError):
        src.open(ctx(0, 1))
    with pytest.raises(StreamError):
        RedisStreamSource("s", start_id="42")


def test_shallow_copies_of_one_prototype_keep_their_own_state(r: Any, redis_url: str,
                                                              redis_prefix: str) -> None:
    """The runtime makes subtask instances with copy.copy(prototype)."""
    streams = [f"{redis_prefix}c{k}" for k in range(2)]
    for k, s in enumerate(streams):
        r.xadd(s, {"k": str(k)})
    proto = RedisStreamSource(streams, redis_url, bounded=True)
    srcs = [copy.copy(proto) for _ in range(2)]
    for i, s in enumerate(srcs):
        s.open(ctx(i, 2))
    assert [[v["k"] for v, _ in drain(s)] for s in srcs] == [["0"], ["1"]]
    assert [list(s.snapshot(1)["positions"]) for s in srcs] == [[streams[0]], [streams[1]]]
    sink_proto = RedisStreamSink(f"{redis_prefix}o", redis_url, marker_prefix=redis_prefix + "m:")
    sinks = [copy.copy(sink_proto) for _ in range(2)]
    for i, s in enumerate(sinks):
        s.open(ctx(i, 2))
        s.write([f"from {i}"] * (i + 1))
    assert [s.pre_commit(1)["pending"][0]["count"] for s in sinks] == [1, 2]
    for s in srcs + sinks:
        s.close()


def test_sink_maxlen_trims_the_stream(r: Any, redis_url: str, redis_prefix: str) -> None:
    out = f"{redis_prefix}trim"
    sink = RedisStreamSink(out, redis_url, maxlen=100, marker_prefix=redis_prefix + "m:")
    sink.open(ctx(0, 1))
    for c in range(1, 6):
        sink.write([str(i) for i in range(200)])
        sink.commit(c, sink.pre_commit(c))
    sink.close()
    assert 100 <= r.xlen(out) < 1000  # approximate trimming (~) keeps at least maxlen


def test_idle_unbounded_source_waits_in_xread_and_wakes_on_a_new_entry(
        r: Any, redis_url: str, redis_prefix: str) -> None:
    import threading

    s = f"{redis_prefix}idle"
    r.xadd(s, {"n": "0"})
    src = RedisStreamSource(s, redis_url, block_ms=200)
    src.open(ctx(0, 1))
    assert [v["n"] for v, _ in src.poll(10)] == ["0"]
    t0 = time.monotonic()
    assert src.poll(10) == []  # nothing new: held by Redis for ~block_ms
    assert time.monotonic() - t0 >= 0.15
    timer = threading.Timer(0.05, lambda: r.xadd(s, {"n": "1"}))
    timer.start()
    got = src.poll(10)  # woken by the new entry, well before block_ms ends
    timer.join()
    assert [v["n"] for v, _ in got] == ["1"]
    state = src.snapshot(1)
    src.close()
    again = RedisStreamSource(s, redis_url, block_ms=0)
    again.open(ctx(0, 1, restored=state))
    t0 = time.monotonic()
    assert again.poll(10) == []
    assert time.monotonic() - t0 < 0.15  # block_ms=0: no waiting
    again.close()
