"""A pipeline body busy in its own code when its run stops is told (session 23 review): with
``timeout=1``, a body that worked on for 5 s after its last call could not know the run had
timed out (``stop_requested()`` was False), so the run's end waited for it. Real runs on the
in-memory engine of ``conftest.py``."""
from __future__ import annotations

import time

from twingraph import component, pipeline, stop_requested
from twingraph.core.states import RunState
from twingraph.errors import PipelineTimeout


@component(cache=False)
def quick(i: int) -> int:
    return i


@pipeline(name="busy_body_s23", timeout=1)
def busy_body(limit: float):
    seen = [stop_requested()]
    quick(i=1).result()
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if stop_requested():
            seen.append(round(time.monotonic() - t0, 1))
            break
        time.sleep(0.02)
    return seen


def test_a_busy_body_learns_that_its_run_timed_out(engine):
    t0 = time.monotonic()
    r = busy_body.run(engine=engine, limit=10.0)
    took = time.monotonic() - t0
    assert r.state is RunState.FAILED and isinstance(r.error, PipelineTimeout), r.error
    assert took < 5, took                   # it stopped at ~1 s, not after its 10 s of work
    assert stop_requested() is False        # the caller's thread keeps no flag


@component(cache=False)
def breaks() -> int:
    raise ValueError("broken")


@component(cache=False)
def waits() -> int:
    time.sleep(0.2)
    return 1


@pipeline(name="body_after_failure_s23", error_handler="fail")
def body_after_failure():
    breaks()
    told = [stop_requested()]
    t0 = time.monotonic()
    while not stop_requested() and time.monotonic() - t0 < 10:
        time.sleep(0.02)
    told.append(stop_requested())
    return told


def test_a_body_learns_that_a_failure_stopped_its_run(engine):
    t0 = time.monotonic()
    r = body_after_failure.run(engine=engine)
    assert r.state is RunState.FAILED
    assert time.monotonic() - t0 < 5


@component(cache=False)
def runs_a_pipeline() -> list:
    from twingraph.engine.engine import Engine
    from twingraph.stores.metadata import MemoryMetadataStore
    from twingraph.stores.results.memory import MemoryStorage
    eng = Engine(results=MemoryStorage(), metadata=MemoryMetadataStore())
    try:
        r = busy_body.run(engine=eng, limit=0.3)    # a run of its own, from a task's thread
    finally:
        eng.close()
    return [r.state.value, stop_requested()]


@pipeline(name="pipeline_in_a_task_s23")
def pipeline_in_a_task():
    return runs_a_pipeline()


def test_a_run_started_by_a_task_gives_the_task_its_flag_back(engine):
    r = pipeline_in_a_task.run(engine=engine)
    assert r.error is None, r.error
    assert r.value["outputs"]["result"] == ["SUCCESS", False]
