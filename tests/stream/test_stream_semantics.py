"""Regression tests for window, lateness and checkpoint semantics compared with Flink's rules
(session 14): late side output per element, a single late firing, checkpoint ids that never
collide with the ones already in the directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from twingraph.stream import (CollectSink, KeyedProcessFunction, OutputTag, SessionWindow, SlidingWindow,
                              StreamExecutionEnvironment, TumblingWindow, ValueState)
from twingraph.stream.watermarks import WatermarkCombiner


def _windowed(events: list[tuple[str, int]], assigner: Any, *, lateness: int = 0, backend: str = "memory",
              tmp_path: Path | None = None) -> tuple[list[Any], list[Any]]:
    """One element per poll, so each element sees the watermark of the ones before it."""
    env = StreamExecutionEnvironment("semantics").set_batch_size(1)
    if backend == "sqlite":
        env.set_state_backend("sqlite", tmp_path)
    late = OutputTag("late")
    main, side = CollectSink(), CollectSink()
    w = env.from_collection(events, timestamp_assigner=lambda e: e[1]).key_by(lambda e: e[0]).window(assigner)
    if lateness:
        w = w.allowed_lateness(lateness)
    out = w.side_output_late_data(late).reduce(lambda a, b: (a[0], a[1] + b[1]),
                                               window_function=lambda k, win, r: [(k, win, r[1])])
    out.add_sink(main)
    out.get_side_output(late).add_sink(side)
    env.execute()
    return main.results, side.results


def test_sliding_element_late_for_some_windows_is_not_sent_to_the_late_output() -> None:
    # watermark 44 when ("a", 25) arrives: its windows [0,30) and [10,40) are gone, [20,50) is open.
    # Flink adds it to [20,50) and does not report it late (late = skipped by every window).
    main, side = _windowed([("a", 45), ("a", 25)], SlidingWindow(30, 10))
    assert ("a", (20, 50), 70) in main
    assert side == []


def test_sliding_element_late_for_every_window_goes_to_the_late_output_once() -> None:
    main, side = _windowed([("a", 100), ("a", 25)], SlidingWindow(30, 10))
    assert side == [("a", 25)]
    assert all(r[2] == 100 for r in main)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_late_but_allowed_element_fires_its_session_once(backend: str, tmp_path: Path) -> None:
    # [0,10) fires at watermark 49; ("a", 5) is within the lateness and fires [0,15) at once; the
    # watermark moved by ("b", 60) must not fire [0,15) a second time.
    main, _ = _windowed([("a", 0), ("a", 50), ("a", 5), ("b", 60)], SessionWindow(10), lateness=1000,
                        backend=backend, tmp_path=tmp_path)
    assert main.count(("a", (0, 15), 5)) == 1
    assert main == [("a", (0, 10), 0), ("a", (0, 15), 5), ("a", (50, 60), 50), ("b", (60, 70), 60)]


def test_late_but_allowed_element_of_a_new_key_fires_its_window_once_with_sqlite_state(tmp_path: Path) -> None:
    # key "b" has no state in [0,100) when ("b", 5) arrives after it fired for "a": one late firing
    main, _ = _windowed([("a", 0), ("a", 150), ("b", 5), ("a", 300)], TumblingWindow(100), lateness=1000,
                        backend="sqlite", tmp_path=tmp_path)
    assert main == [("a", (0, 100), 0), ("b", (0, 100), 5), ("a", (100, 200), 150), ("a", (300, 400), 300)]


def _counting_job(directory: Path, sink: CollectSink) -> StreamExecutionEnvironment:
    env = StreamExecutionEnvironment("ids")
    env.enable_checkpointing(60_000, directory, retained=3, fsync=False)
    env.from_collection(list(range(5))).map(lambda x: x * 10).add_sink(sink)
    return env


def _ids(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("chk-"))


def test_restore_from_an_older_checkpoint_does_not_reuse_newer_checkpoint_ids(tmp_path: Path) -> None:
    _counting_job(tmp_path, CollectSink()).execute()           # final checkpoint chk-1
    first = tmp_path / "chk-00000001"
    _counting_job(tmp_path, CollectSink()).execute(restore_from=first)  # chk-2
    assert _ids(tmp_path) == ["chk-00000001", "chk-00000002"]
    # restoring chk-1 again used to take id 2 again: the publish failed ("Directory not empty"),
    # or retention removed the new checkpoint as "older" than the previous run's
    _counting_job(tmp_path, CollectSink()).execute(restore_from=first)
    assert _ids(tmp_path) == ["chk-00000001", "chk-00000002", "chk-00000003"]


def test_a_fresh_start_in_a_directory_with_checkpoints_continues_their_ids(tmp_path: Path) -> None:
    _counting_job(tmp_path, CollectSink()).execute()
    sink = CollectSink()
    _counting_job(tmp_path, sink).execute()  # no restore: a new run in the same directory
    assert sink.results == [0, 10, 20, 30, 40]
    assert _ids(tmp_path) == ["chk-00000001", "chk-00000002"]


class _CountPerKey(KeyedProcessFunction):
    def open(self, runtime_context: Any) -> None:
        self.n = ValueState(runtime_context.state_backend, "n")

    def process_element(self, value: Any, ctx: Any) -> list[Any]:
        n = (self.n.get() or 0) + 1
        self.n.update(n)
        return [(ctx.get_current_key(), n)]


def test_none_is_a_key_with_its_own_state() -> None:
    # docs/streaming.md lists None among the valid keys; the state store used None as "no key"
    env = StreamExecutionEnvironment("none-key")
    sink = CollectSink()
    env.from_collection([("a", 1), (None, 2), (None, 3), ("a", 4)]).key_by(lambda e: e[0]) \
        .process(_CountPerKey()).add_sink(sink)
    env.execute()
    assert sink.results == [("a", 1), (None, 1), (None, 2), ("a", 2)]


@pytest.mark.parametrize("order", [(1, 0), (0, 1)])
def test_when_every_input_goes_idle_the_watermark_flushes_to_the_largest(order: tuple[int, int]) -> None:
    # Flink's StatusWatermarkValve: the result must not depend on which input went idle first
    c = WatermarkCombiner(2)
    c.update(0, 100)
    c.update(1, 500)
    for ch in order:
        c.set_idle(ch, True)
    assert c.current == 500
    assert c.update(0, 200) is None  # an input back from idle does not move event time back


def test_keys_python_holds_equal_go_to_one_key_group() -> None:
    # 1, True and 1.0 are one dict key, so one state entry: they must be one routing target too,
    # in every process (a routing cache keyed by the key made the first one seen decide).
    from twingraph.stream.keygroups import canonical_key, key_group
    for same in [(1, True, 1.0), (0, False, 0.0, -0.0), (2, 2.0), ((1, "a"), (True, "a"), (1.0, "a"))]:
        assert len({key_group(k, 128) for k in same}) == 1, same
        assert len({key_group(k, 32768) for k in same}) == 1, same
    # keys that are not equal keep their own groups, and their bytes stay what they were
    assert canonical_key(1.5) == 1.5 and canonical_key("1") == "1" and canonical_key((2, "x")) == (2, "x")
    assert key_group(1.5, 32768) != key_group(1, 32768)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_equal_keys_of_different_types_share_one_state_across_subtasks(backend: str, tmp_path: Path) -> None:
    env = StreamExecutionEnvironment("equal-keys").set_parallelism(4)
    if backend == "sqlite":
        env.set_state_backend("sqlite", tmp_path)
    sink = CollectSink()
    keys = [1, True, 1.0, 2, 2.0, False, 0, 0.0]
    env.from_collection([(k, i) for i, k in enumerate(keys)]).key_by(lambda e: e[0]) \
        .process(_CountPerKey()).add_sink(sink)
    env.execute()
    # per key, the counts go 1, 2, 3 whichever type each element's key had
    assert sorted(n for _, n in sink.results) == [1, 1, 1, 2, 2, 2, 3, 3]


def test_sqlite_state_rows_follow_python_key_equality(tmp_path: Path) -> None:
    from twingraph.stream.state import SQLiteStateBackend
    b = SQLiteStateBackend(128, tmp_path / "s.db", cache_size=1)
    try:
        t = b.table("count")
        t[(True, "n")] = 5
        t[("other", "n")] = 1            # pushes the first entry out of the cache: written
        assert t[(1, "n")] == 5 and t[(1.0, "n")] == 5
        t[(1.0, "n")] = 6
        t[("more", "n")] = 2
        assert t[(True, "n")] == 6 and len(t) == 3
        # iteration gives each key back as it was first written (a dict keeps its first key too)
        assert sorted(map(repr, t)) == sorted(map(repr, [(True, "n"), ("other", "n"), ("more", "n")]))
        # equal strings that are one object or two pickle differently (a reference, or the
        # string again): one row all the same
        shared = "a" + str(len(t))
        t[(shared, shared)] = 7
        t[("x", "n")] = 0
        assert t[("a3", "".join(["a", "3"]))] == 7 and len(t) == 5
    finally:
        b.close()


def test_sqlite_state_restores_a_checkpoint_written_before_the_original_key_column(tmp_path: Path) -> None:
    import pickle
    import sqlite3

    from twingraph.stream.keygroups import key_group
    from twingraph.stream.state import SQLiteStateBackend
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as c:          # the layout of earlier checkpoints: k, kg, v
        c.execute('CREATE TABLE "t_count" (k BLOB PRIMARY KEY, kg INTEGER NOT NULL, v BLOB NOT NULL)')
        c.execute('INSERT INTO "t_count" VALUES (?,?,?)',
                  (pickle.dumps(("k1", "n"), 5), key_group("k1", 128), pickle.dumps(41, 5)))
    c.close()
    b = SQLiteStateBackend(128, tmp_path / "s.db")
    try:
        b.restore([old], range(0, 128))
        t = b.table("count")
        assert t[("k1", "n")] == 41 and list(t) == [("k1", "n")]
    finally:
        b.close()


def test_an_input_back_from_idle_rejoins_once_it_catches_up() -> None:
    # Flink's StatusWatermarkValve: a channel that was idle is left out of the minimum until its
    # watermark reaches the combined one; meanwhile the other inputs move event time on.
    c = WatermarkCombiner(2)
    c.update(0, 100)
    c.update(1, 500)
    c.set_idle(0, True)
    assert c.current == 500
    c.set_idle(0, False)              # back, far behind
    assert c.update(0, 200) is None and c.current == 500
    assert c.update(1, 900) == 900    # input 1 alone moves it on
    assert c.update(0, 800) is None   # still behind: no effect
    assert c.update(0, 950) is None   # caught up (950 >= 900): aligned, and the minimum is 900
    assert c.update(1, 1200) == 950   # now both count
    assert c.update(0, 1300) == 1200


def test_an_input_back_from_idle_alone_waits_until_it_catches_up() -> None:
    c = WatermarkCombiner(2)
    c.update(0, 100)
    c.update(1, 500)
    c.set_idle(0, True)
    c.set_idle(1, True)
    assert c.current == 500
    assert c.update(0, 300) is None and c.current == 500   # the only active input, behind
    assert c.update(0, 700) == 700
