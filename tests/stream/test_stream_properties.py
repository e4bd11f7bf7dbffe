"""Property: for any events within the disorder bound and any parallelism, windowed counts are
exact (nothing is late, so nothing may be lost or counted twice), for both state backends."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twingraph.stream import (CollectSink, SlidingWindow, StreamExecutionEnvironment, TumblingWindow,
                              WatermarkStrategies)

events_strategy = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", ("t", 1), 7]), st.integers(0, 5000), st.integers(0, 99)),
    min_size=1, max_size=150)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events_strategy, parallelism=st.integers(1, 4), batch=st.integers(1, 50),
       sqlite=st.booleans(), sliding=st.booleans())
def test_window_counts_are_exact(tmp_path: Path, events: list[tuple[object, int, int]], parallelism: int,
                                 batch: int, sqlite: bool, sliding: bool) -> None:
    # element i has timestamp base_i - jitter_i with base non-decreasing: disorder < 100 ms
    bases = sorted(e[1] for e in events)
    stamped = [(key, base - jitter) for (key, _, jitter), base in zip(events, bases)]
    env = StreamExecutionEnvironment("prop").set_parallelism(parallelism).set_batch_size(batch)
    if sqlite:
        env.set_state_backend("sqlite", tmp_path / "state")
    sink = CollectSink()
    assigner = SlidingWindow(300, 100) if sliding else TumblingWindow(250)
    (env.from_collection(stamped, timestamp_assigner=lambda e: e[1],
                         watermark_strategy=WatermarkStrategies.bounded_out_of_orderness(100))
        .key_by(lambda e: e[0]).window(assigner)
        .apply(lambda k, w, xs: [(k, w, len(xs))]).add_sink(sink))
    env.execute()
    expected: Counter[tuple[object, tuple[int, int]]] = Counter()
    for key, ts in stamped:
        for w in assigner.assign(ts):
            expected[(key, w)] += 1
    got = Counter({(k, w): n for k, w, n in sink.results})
    assert len(sink.results) == len(got)  # each window fired once
    assert got == expected
