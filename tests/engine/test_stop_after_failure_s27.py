"""A run (or a nested pipeline) a failure stopped under 'fail' lets its body go on (0085), but
its timeout and a cancel still bound that body (session 27 review): the run-level stop kept
the first reason and ignored both, so a body caught in its own loop after handling a failure
ran for 10 s under ``timeout=1`` and a ``cancel`` returned True and did nothing. Real runs on
the in-memory engine of ``conftest.py``."""
from __future__ import annotations

import threading
import time

from twingraph import component, pipeline
from twingraph.core.states import RunState
from twingraph.errors import PipelineCancelled, PipelineTimeout


@component(cache=False)
def breaks_s27(x: int) -> int:
    raise ValueError("broken")


@component(cache=False)
def fine_s27(x: int) -> int:
    return x


def _busy(seconds: float) -> int:
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:     # its own Python code, no call to the engine
        n += 1
    return n


@pipeline(name="fail_then_busy_s27", timeout=1, error_handler="fail")
def fail_then_busy(seconds: float):
    try:
        breaks_s27(x=1).result()
    except ValueError:
        pass
    return _busy(seconds)


def test_the_timeout_stops_a_body_that_goes_on_after_a_fail_stop(engine) -> None:
    t0 = time.monotonic()
    r = fail_then_busy.run(engine=engine, seconds=20.0)
    took = time.monotonic() - t0
    assert took < 8, took                    # ~1 s + the 1 s grace, not the body's 20 s
    assert r.state is RunState.FAILED and isinstance(r.error, PipelineTimeout), r.error
    assert "broken" in str(r.error)          # the failure that stopped it first is named
    row = engine.metadata.get_run(r.run_id)
    assert row is not None and row.state is RunState.FAILED and "timed out" in (row.error or "")


@pipeline(name="fail_then_cancel_s27", error_handler="fail")
def fail_then_cancel(seconds: float):
    try:
        breaks_s27(x=2).result()
    except ValueError:
        pass
    return _busy(seconds)


def test_a_cancel_stops_a_body_that_goes_on_after_a_fail_stop(engine) -> None:
    ids: list[str] = []
    engine.subscribe(lambda ev: ids.append(ev["run_id"]) if ev.get("event") == "run:status" else None)
    done: list[float] = []

    def cancel_soon() -> None:
        while not ids:
            time.sleep(0.01)
        time.sleep(0.8)
        assert engine.cancel(ids[0])
        done.append(time.monotonic())

    threading.Thread(target=cancel_soon, daemon=True).start()
    t0 = time.monotonic()
    r = fail_then_cancel.run(engine=engine, seconds=20.0)
    assert time.monotonic() - t0 < 8
    assert done, "the cancel was never sent"
    assert r.state is RunState.CANCELLED and isinstance(r.error, PipelineCancelled), r.error


@pipeline(name="inner_fail_then_busy_s27", timeout=1, error_handler="fail")
def inner(seconds: float):
    try:
        breaks_s27(x=3).result()
    except ValueError:
        pass
    return _busy(seconds)


@pipeline(name="outer_s27", error_handler="continue")
def outer(seconds: float):
    try:
        got = inner(seconds=seconds)
    except PipelineTimeout as exc:
        got = str(exc)
    return [got, fine_s27(x=4)]


def test_a_nested_timeout_stops_its_body_after_a_failure_inside_it(engine) -> None:
    t0 = time.monotonic()
    r = outer.run(engine=engine, seconds=20.0)
    assert time.monotonic() - t0 < 8
    assert r.state is RunState.SUCCESS, r.error
    got, fine = r.value
    assert "inner_fail_then_busy_s27 timed out after 1s" in got and "stopped" in got
    assert fine["outputs"]["result"] == 4
