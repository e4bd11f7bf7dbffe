"""Pure window, watermark, session-merge, lateness and timer logic (no runtime, injected time)."""

from __future__ import annotations

import pytest

from twingraph.errors import StreamError
from twingraph.stream import ManualClock, SessionWindow, SlidingWindow, TumblingWindow, WatermarkStrategies
from twingraph.stream.keygroups import key_group, key_group_range, subtask_for_key_group
from twingraph.stream.timers import TimerQueue
from twingraph.stream.watermarks import MIN_WATERMARK, WatermarkCombiner
from twingraph.stream.windows import is_late, merge_session


def test_tumbling_assigns_one_aligned_window() -> None:
    w = TumblingWindow(1000)
    assert w.assign(0) == [(0, 1000)]
    assert w.assign(999) == [(0, 1000)]
    assert w.assign(1000) == [(1000, 2000)]
    assert w.assign(-1) == [(-1000, 0)]
    assert TumblingWindow(1000, offset_ms=100).assign(50) == [(-900, 100)]


def test_sliding_assigns_size_over_slide_windows() -> None:
    w = SlidingWindow(size_ms=30, slide_ms=10)
    assert sorted(w.assign(25)) == [(0, 30), (10, 40), (20, 50)]
    assert sorted(w.assign(30)) == [(10, 40), (20, 50), (30, 60)]
    assert len(SlidingWindow(10, 10).assign(7)) == 1


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(ValueError):
        TumblingWindow(0)
    with pytest.raises(ValueError):
        SlidingWindow(10, 0)
    with pytest.raises(ValueError):
        SessionWindow(-1)


def test_session_merge_absorbs_overlapping_and_touching_windows() -> None:
    existing = [(0, 10), (20, 30), (50, 60)]
    merged, absorbed = merge_session(existing, (8, 18))
    assert merged == (0, 18) and absorbed == [(0, 10)]
    merged, absorbed = merge_session(existing, (10, 20))  # touches both neighbours
    assert merged == (0, 30) and sorted(absorbed) == [(0, 10), (20, 30)]
    merged, absorbed = merge_session(existing, (35, 45))
    assert merged == (35, 45) and absorbed == []


def test_lateness_boundary() -> None:
    w = (0, 1000)  # max timestamp 999
    assert not is_late(w, 0, 998)
    assert is_late(w, 0, 999)
    assert not is_late(w, 500, 1498)
    assert is_late(w, 500, 1499)


def test_bounded_out_of_orderness_generator() -> None:
    g = WatermarkStrategies.bounded_out_of_orderness(50).create_generator()
    assert g.on_batch(1000, now_ms=0) == (949, False)
    assert g.on_batch(900, now_ms=1) == (None, False)  # older element: no regression
    assert g.on_batch(1100, now_ms=2) == (1049, False)
    assert WatermarkStrategies.no_watermarks().create_generator().on_batch(1000, 0) == (None, False)


def test_idleness_uses_the_injected_clock() -> None:
    clock = ManualClock(10_000)
    g = WatermarkStrategies.bounded_out_of_orderness(0).with_idleness(500).create_generator()
    g.on_batch(5, clock.now_ms())
    clock.advance(499)
    assert g.on_idle_check(clock.now_ms()) is False
    clock.advance(1)
    assert g.on_idle_check(clock.now_ms()) is True
    assert g.on_idle_check(clock.now_ms()) is False  # reported once
    assert g.on_batch(6, clock.now_ms()) == (5, True)  # active again


def test_combiner_takes_the_minimum_and_skips_idle_inputs() -> None:
    c = WatermarkCombiner(2)
    assert c.update(0, 100) is None  # input 1 still at MIN
    assert c.current == MIN_WATERMARK
    assert c.update(1, 50) == 50
    assert c.update(1, 200) == 100
    assert c.update(0, 150) == 150
    assert c.set_idle(0, True) == 200  # only input 1 counts now
    assert c.update(0, 180) is None  # back, but behind: no regression of the combined watermark
    assert c.update(0, 300) is None and c.update(1, 400) == 300


def test_combiner_all_idle_holds_event_time() -> None:
    c = WatermarkCombiner(2)
    c.update(0, 10)
    c.update(1, 20)
    assert c.set_idle(0, True) == 20
    assert c.set_idle(1, True) is None
    assert c.all_idle


def test_timer_queue_fires_in_time_order_and_supports_delete() -> None:
    q = TimerQueue()
    q.add(30, "a", None)
    q.add(10, "b", None)
    q.add(10, "c", None)
    q.add(20, "d", None)
    q.delete(20, "d", None)
    assert q.next_time() == 10
    assert [(t, k) for t, k, _, _ in q.pop_until(25)] == [(10, "b"), (10, "c")]
    assert q.next_time() == 30
    assert len(q) == 1


def test_key_groups_are_stable_and_cover_every_subtask() -> None:
    assert key_group("user-42", 128) == key_group("user-42", 128)
    assert key_group(("a", 1), 128) == key_group(("a", 1), 128)
    groups = {key_group(f"k{i}", 128) for i in range(5000)}
    assert len(groups) == 128  # spreads over all groups
    for p in (1, 2, 3, 5, 128):
        owned = [g for s in range(p) for g in key_group_range(s, 128, p)]
        assert owned == list(range(128))
        assert all(subtask_for_key_group(g, 128, p) == s for s in range(p) for g in key_group_range(s, 128, p))


def test_unstable_keys_are_refused() -> None:
    with pytest.raises(StreamError, match="stable hash"):
        key_group(object(), 128)
    with pytest.raises(StreamError):
        key_group(("a", object()), 128)
