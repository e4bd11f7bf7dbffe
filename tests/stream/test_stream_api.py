"""The DataStream API end to end on the embedded runtime, results read from CollectSink."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import pytest

from twingraph.errors import JobFailed, StateError
from twingraph.stream import (AggregateFunction, CollectSink, KeyedProcessFunction, ListState, ManualClock,
                              MapState, OutputTag, ProcessFunction, SessionWindow, SlidingWindow,
                              StreamExecutionEnvironment, TumblingWindow, ValueState, WatermarkStrategies)


def word_events(n: int = 3000, keys: int = 50, seed: int = 7) -> list[tuple[str, int]]:
    rnd = random.Random(seed)
    return [(f"w{rnd.randrange(keys)}", i * 3) for i in range(n)]


def reference_counts(events: list[tuple[str, int]], size: int) -> Counter[tuple[str, int]]:
    return Counter((w, ts - ts % size) for w, ts in events)


def run_wordcount(parallelism: int, events: list[tuple[str, int]]) -> Counter[tuple[str, int]]:
    env = StreamExecutionEnvironment("wc").set_parallelism(parallelism)
    sink = CollectSink()
    (env.from_collection(events, timestamp_assigner=lambda e: e[1])
        .map(lambda e: (e[0], 1))
        .key_by(lambda x: x[0])
        .window(TumblingWindow(1000))
        .apply(lambda key, w, elems: [(key, w[0], len(elems))])
        .add_sink(sink))
    env.execute()
    return Counter({(k, start): c for k, start, c in sink.results})


@pytest.mark.parametrize("parallelism", [1, 3])
def test_tumbling_window_word_count_matches_reference(parallelism: int) -> None:
    events = word_events()
    assert run_wordcount(parallelism, events) == reference_counts(events, 1000)


def test_execute_returns_a_job_id_and_map_filter_flat_map_chain() -> None:
    env = StreamExecutionEnvironment("chain")
    sink = CollectSink()
    (env.from_collection(["a b", "c", "d e f"]).flat_map(str.split).filter(lambda w: w != "c")
        .map(str.upper).add_sink(sink))
    job_id = env.execute()
    assert job_id.startswith("job_")
    assert sink.results == ["A", "B", "D", "E", "F"]


def test_window_reduce_and_aggregate_emit_at_window_end() -> None:
    class Avg(AggregateFunction):
        def create_accumulator(self) -> tuple[int, int]:
            return (0, 0)

        def add(self, value: Any, acc: tuple[int, int]) -> tuple[int, int]:
            return (acc[0] + value[1], acc[1] + 1)

        def get_result(self, acc: tuple[int, int]) -> float:
            return acc[0] / acc[1]

    events = [("a", 1, 0), ("a", 3, 100), ("b", 10, 200), ("a", 5, 1500)]
    env = StreamExecutionEnvironment("agg")
    reduced, averaged = CollectSink(), CollectSink()
    keyed = env.from_collection(events, timestamp_assigner=lambda e: e[2]).map(lambda e: (e[0], e[1])).key_by(lambda x: x[0])
    keyed.window(TumblingWindow(1000)).reduce(lambda a, b: (a[0], a[1] + b[1])).add_sink(reduced)
    keyed.window(TumblingWindow(1000)).aggregate(Avg()).add_sink(averaged)
    env.execute()
    assert sorted(reduced.results) == [("a", 4), ("a", 5), ("b", 10)]
    assert sorted(averaged.results) == [2.0, 5.0, 10.0]


def test_sliding_windows_count_each_element_size_over_slide_times() -> None:
    events = [("k", t) for t in (0, 5, 12, 27)]
    env = StreamExecutionEnvironment("slide")
    sink = CollectSink()
    (env.from_collection(events, timestamp_assigner=lambda e: e[1]).key_by(lambda e: e[0])
        .window(SlidingWindow(size_ms=20, slide_ms=10))
        .apply(lambda k, w, xs: [(w, sorted(x[1] for x in xs))]).add_sink(sink))
    env.execute()
    assert sorted(sink.results) == [((-10, 10), [0, 5]), ((0, 20), [0, 5, 12]), ((10, 30), [12, 27]),
                                    ((20, 40), [27])]


def test_session_windows_merge_per_key() -> None:
    events = [("a", 0), ("a", 4), ("b", 5), ("a", 20), ("a", 8), ("b", 40)]  # gap 5
    env = StreamExecutionEnvironment("sessions")
    sink = CollectSink()
    (env.from_collection(events, timestamp_assigner=lambda e: e[1],
                         watermark_strategy=WatermarkStrategies.bounded_out_of_orderness(20))
        .key_by(lambda e: e[0]).window(SessionWindow(gap_ms=5))
        .apply(lambda k, w, xs: [(k, w, sorted(x[1] for x in xs))]).add_sink(sink))
    env.execute()
    # a: 0,4,8 chain into [0,13) (4 -> [4,9) touches [0,5); 8 -> [8,13)); 20 alone
    assert sorted(sink.results) == [("a", (0, 13), [0, 4, 8]), ("a", (20, 25), [20]),
                                    ("b", (5, 10), [5]), ("b", (40, 45), [40])]


def test_allowed_lateness_refires_and_late_data_goes_to_side_output() -> None:
    # monotonous watermark = latest timestamp; window [0,10) fires when ts 9 is passed
    events = [("k", 1), ("k", 12), ("k", 3), ("k", 16), ("k", 4), ("k", 30)]
    late = OutputTag("late")
    env = StreamExecutionEnvironment("late").set_batch_size(1)  # a watermark after every element
    main, side = CollectSink(), CollectSink()
    windowed = (env.from_collection(events, timestamp_assigner=lambda e: e[1]).key_by(lambda e: e[0])
                .window(TumblingWindow(10)).allowed_lateness(5).side_output_late_data(late)
                .apply(lambda k, w, xs: [(w[0], sorted(x[1] for x in xs))]))
    windowed.add_sink(main)
    windowed.get_side_output(late).add_sink(side)
    env.execute()
    # wm 11 (after ts 12) fires [0,10) = [1]; ts 3 (wm 11 < 9+5) is allowed: refire [1,3];
    # ts 16 moves wm to 15 >= 9+5: window purged; ts 4 is late.
    assert main.results == [(0, [1]), (0, [1, 3]), (10, [12, 16]), (30, [30])]
    assert side.results == [("k", 4)]


def test_late_elements_are_dropped_without_side_output() -> None:
    events = [("k", 20), ("k", 1)]
    env = StreamExecutionEnvironment("drop").set_batch_size(1)
    sink = CollectSink()
    (env.from_collection(events, timestamp_assigner=lambda e: e[1]).key_by(lambda e: e[0])
        .window(TumblingWindow(10)).apply(lambda k, w, xs: [len(xs)]).add_sink(sink))
    env.execute()
    assert sink.results == [1]


class Dedup(KeyedProcessFunction):
    """Emits a key's first value; counts the rest; reports the count on an event-time timer."""

    def open(self, runtime_context: Any) -> None:
        self.seen = ValueState(runtime_context.state_backend, "seen")
        self.dups = ListState(runtime_context.state_backend, "dups")
        self.tags = MapState(runtime_context.state_backend, "tags")

    def process_element(self, value: Any, ctx: Any) -> Any:
        key, v = value
        assert ctx.get_current_key() == key
        self.tags.put(v, True)
        if self.seen.get() is None:
            self.seen.update(v)
            ctx.timer_service().register_event_time_timer(ctx.timestamp() + 100)
            return [("first", key, v)]
        self.dups.add(v)
        return None

    def on_timer(self, timestamp: int, ctx: Any) -> Any:
        out = [("timer", ctx.get_current_key(), timestamp, sorted(self.dups.get()), sorted(k for k, _ in self.tags.items()))]
        self.dups.clear()
        self.tags.remove(0)
        assert not self.tags.contains(0)
        return out


def test_keyed_process_function_with_state_and_event_time_timers() -> None:
    events = [("a", 0, 0), ("b", 1, 10), ("a", 2, 20), ("a", 3, 30), ("b", 4, 500)]
    env = StreamExecutionEnvironment("proc").set_parallelism(2)
    sink = CollectSink()
    (env.from_collection(events, timestamp_assigner=lambda e: e[2]).map(lambda e: (e[0], e[1]))
        .key_by(lambda e: e[0]).process(Dedup()).add_sink(sink))
    env.execute()
    assert sorted(sink.results, key=repr) == sorted([
        ("first", "a", 0), ("first", "b", 1),
        ("timer", "a", 100, [2, 3], [0, 2, 3]),
        ("timer", "b", 110, [4], [1, 4]),
    ], key=repr)


def test_state_outside_a_keyed_context_is_a_state_error() -> None:
    class Bad(KeyedProcessFunction):
        def open(self, runtime_context: Any) -> None:
            self.v = ValueState(runtime_context.state_backend, "v")
            self.v.get()  # no current key in open()

    env = StreamExecutionEnvironment("bad")
    env.from_collection([1]).key_by(lambda x: x).process(Bad()).add_sink(CollectSink())
    with pytest.raises(StateError):
        env.execute()


def test_user_errors_fail_the_job_with_the_cause_chained() -> None:
    env = StreamExecutionEnvironment("boom")
    env.from_collection([1, 0]).map(lambda x: 1 // x).add_sink(CollectSink())
    with pytest.raises(JobFailed) as info:
        env.execute()
    assert isinstance(info.value.__cause__, ZeroDivisionError)


class ClockDriven(ProcessFunction):
    """Advances the manual clock as elements pass: processing time moves with the data."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock

    def process_element(self, value: Any, ctx: Any) -> Any:
        self.clock.set(value[1])
        return [value]


def test_processing_time_timers_fire_from_the_injected_clock() -> None:
    clock = ManualClock(0)

    class Remind(KeyedProcessFunction):
        def process_element(self, value: Any, ctx: Any) -> Any:
            ctx.timer_service().register_processing_time_timer(ctx.current_processing_time() + 50)
            return None

        def on_timer(self, timestamp: int, ctx: Any) -> Any:
            return [(ctx.get_current_key(), timestamp)]

    env = StreamExecutionEnvironment("ptimers", clock=clock).set_batch_size(1)
    sink = CollectSink()
    events = [("a", 0), ("b", 10)] + [("tick", t) for t in range(20, 200, 10)]
    (env.from_collection(events).process(ClockDriven(clock)).filter(lambda e: e[0] != "tick")
        .key_by(lambda e: e[0]).process(Remind()).add_sink(sink))
    env.execute()
    assert sorted(sink.results) == [("a", 50), ("b", 60)]


def test_processing_time_windows_group_by_the_clock() -> None:
    clock = ManualClock(0)
    env = StreamExecutionEnvironment("pwin", clock=clock).set_batch_size(1)
    sink = CollectSink()
    # element timestamps are ignored: what counts is the clock when the element reaches the window
    events = [("k", 5, 99999), ("k", 40, 0), ("k", 120, 5), ("k", 130, 7), ("k", 260, 1)]
    (env.from_collection(events, timestamp_assigner=lambda e: e[2]).process(ClockDriven(clock))
        .key_by(lambda e: e[0]).window(TumblingWindow(100, processing_time=True))
        .apply(lambda k, w, xs: [(w[0], [x[1] for x in xs])]).add_sink(sink))
    env.execute()
    assert sink.results == [(0, [5, 40]), (100, [120, 130]), (200, [260])]


def test_union_and_watermarks_of_parallel_inputs_combine_by_minimum() -> None:
    # Two sources: a fast one far ahead in event time, a slow one behind. With min-combination the
    # slow source's elements are on time; with max they would be late and dropped.
    env = StreamExecutionEnvironment("union").set_batch_size(1)
    sink = CollectSink()
    fast = env.from_collection([("fast", t) for t in range(0, 10_000, 1000)], timestamp_assigner=lambda e: e[1])
    slow = env.from_collection([("slow", t) for t in range(0, 1000, 100)], timestamp_assigner=lambda e: e[1])
    (fast.union(slow).key_by(lambda e: e[0]).window(TumblingWindow(1000))
        .apply(lambda k, w, xs: [(k, w[0], len(xs))]).add_sink(sink))
    env.execute()
    assert ("slow", 0, 10) in sink.results
    assert sum(c for k, _, c in sink.results if k == "fast") == 10


def test_rolling_keyed_reduce() -> None:
    env = StreamExecutionEnvironment("rolling").set_parallelism(2)
    sink = CollectSink()
    env.from_collection([("a", 1), ("b", 2), ("a", 3)]).key_by(lambda e: e[0]).reduce(
        lambda x, y: (x[0], x[1] + y[1])).add_sink(sink)
    env.execute()
    assert sorted(sink.results) == [("a", 1), ("a", 4), ("b", 2)]


def test_non_keyed_process_function_side_output() -> None:
    odd = OutputTag("odd")

    class Split(ProcessFunction):
        def process_element(self, value: Any, ctx: Any) -> Any:
            if value % 2:
                ctx.output(odd, value)
                return None
            return [value]

    env = StreamExecutionEnvironment("split")
    evens, odds = CollectSink(), CollectSink()
    s = env.from_collection(range(6)).process(Split())
    s.add_sink(evens)
    s.get_side_output(odd).add_sink(odds)
    env.execute()
    assert evens.results == [0, 2, 4] and odds.results == [1, 3, 5]


class Silent:
    """An unbounded source that never has data (a quiet partition)."""

    bounded = False

    def open(self, ctx: Any) -> None:
        return None

    def poll(self, max_records: int) -> list[Any]:
        return []

    def finished(self) -> bool:
        return False

    def snapshot(self, checkpoint_id: int) -> dict:
        return {}

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        return None

    def close(self) -> None:
        return None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("idleness", [True, False])
def test_an_idle_source_does_not_stall_event_time_with_an_idleness_timeout(tmp_path: Any, idleness: bool) -> None:
    env = StreamExecutionEnvironment("idle")
    env.enable_checkpointing(50, tmp_path, fsync=False)  # CollectSink output appears per checkpoint
    sink = CollectSink()
    data = env.from_collection([("a", t) for t in range(0, 3000, 100)], timestamp_assigner=lambda e: e[1])
    strategy = WatermarkStrategies.bounded_out_of_orderness(0)
    silent = env.add_source(Silent(), strategy.with_idleness(100) if idleness else strategy)
    (data.union(silent).key_by(lambda e: e[0]).window(TumblingWindow(1000))
        .apply(lambda k, w, xs: [(w[0], len(xs))]).add_sink(sink))
    client = env.execute_async()
    deadline = time.monotonic() + (10 if idleness else 0.8)
    while len(sink.results) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    client.cancel()
    if idleness:
        assert sorted(sink.results) == [(0, 10), (1000, 10), (2000, 10)]
    else:  # the silent source holds the combined watermark at its minimum: nothing fires
        assert sink.results == []


def test_the_documents_kafka_operators_are_importable_from_twingraph_stream() -> None:
    import inspect

    from twingraph.stream import KafkaSinkOperator, KafkaSourceOperator

    src = inspect.signature(KafkaSourceOperator).parameters
    assert list(src)[:4] == ["topic", "bootstrap_servers", "group_id", "watermark_strategy"]
    assert list(inspect.signature(KafkaSinkOperator).parameters)[:2] == ["topic", "bootstrap_servers"]
