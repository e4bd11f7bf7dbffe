"""``async def`` components are awaited by the engine (their call used to return a coroutine
that was never awaited: the task failed to encode it); ``@pipeline`` refuses bodies that
are coroutine or generator functions (a run of no tasks recorded SUCCESS, its value an
object nobody ran)."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from twingraph import component, pipeline
from twingraph.core.states import RunState, TaskState
from twingraph.errors import ValidationError


@component
async def fetch_thread(x):
    await asyncio.sleep(0.01)
    return {"v": x * 3}


@component(executor="process")
async def fetch_process(x):
    await asyncio.sleep(0.01)
    return x * 5


@component
def plus_one(v):
    return v + 1


def test_async_components_are_awaited_in_threads_and_worker_processes(engine):
    @pipeline(name="async_components")
    def p():
        a = fetch_thread(x=2)
        b = fetch_process(x=2)
        return plus_one(v=a["outputs"]["v"]), b

    r = p.run(engine=engine)
    assert r.state is RunState.SUCCESS, r.error
    first, second = r.value
    assert first["outputs"]["result"] == 7           # the dict it returned is its outputs
    assert second["outputs"]["result"] == 10


def test_an_async_component_past_its_timeout_is_cancelled(engine):
    """The engine abandons a thread task past its timeout; a coroutine is cancelled too
    (its thread is freed), which a plain function cannot be."""
    cancelled = threading.Event()

    @component(timeout=0.3, cache=False)
    async def slow():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    @pipeline(name="async_timeout")
    def p():
        return slow()

    t0 = time.monotonic()
    r = p.run(engine=engine)
    assert r.state is RunState.FAILED
    assert time.monotonic() - t0 < 10
    assert cancelled.wait(5), "the coroutine was never cancelled"
    [task] = engine.metadata.get_tasks(r.run_id)
    assert task.state is TaskState.FAILED and "timed out" in (task.error or "")


@pytest.mark.parametrize("body", ["async", "generator", "async generator"])
def test_a_pipeline_body_must_be_a_plain_function(body):
    if body == "async":
        async def f():
            return 1
    elif body == "generator":
        def f():
            yield 1
    else:
        async def f():
            yield 1
    with pytest.raises(ValidationError, match="a pipeline body must be a plain function"):
        pipeline(f)


def test_an_async_generator_component_gives_the_list_of_its_items(engine):
    """As a generator's items are collected; it failed: "cannot pickle 'async_generator'"."""
    @component(cache=False)
    async def ticks(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    @pipeline(name="async_generator_component")
    def p():
        return ticks(n=3)

    r = p.run(engine=engine)
    assert r.state is RunState.SUCCESS, r.error
    assert r.value["outputs"]["result"] == [0, 1, 2]
