"""A thread task the engine abandons is told so (``twingraph.stop_requested()``), and an
``async def`` operation is cancelled: Python cannot kill a thread, so before, an abandoned task
went on for as long as it liked, beside the tasks that took its slot.

Real engines and threads; each task writes down when it noticed, and the tests check that it
did, soon after it was abandoned."""
import asyncio
import threading
import time

from twingraph import component, pipeline, stop_requested
from twingraph.core.states import RunState, TaskState
from twingraph.engine.dynamic import DAGDefinition, DynamicScheduler, ExecutionConfig, NodeDefinition
from twingraph.stores.metadata import MemoryMetadataStore
from twingraph.stores.results.memory import MemoryStorage

noticed: dict[str, float] = {}


def _wait_for(key: str, seconds: float = 3.0) -> float | None:
    deadline = time.monotonic() + seconds
    while key not in noticed and time.monotonic() < deadline:
        time.sleep(0.02)
    return noticed.get(key)


@component(cache=False, executor="thread", timeout=0.3)
def polls_until_told(tag):
    while not stop_requested() and time.monotonic() - noticed.setdefault(f"{tag}-start", time.monotonic()) < 10:
        time.sleep(0.01)
    noticed[tag] = time.monotonic()
    return tag


def test_a_thread_task_past_its_timeout_is_told_to_stop(engine):
    @pipeline(name="told_on_timeout", error_handler="continue")
    def p():
        return polls_until_told("timeout")

    r = p.run(engine=engine)
    ended = time.monotonic()
    (task,) = engine.metadata.get_tasks(r.run_id)
    assert task.state is TaskState.FAILED and "TaskTimeout" in task.error
    at = _wait_for("timeout")
    assert at is not None and at - ended < 1.0         # it stopped, not 10 s later
    assert stop_requested() is False                  # only the abandoned task's thread


def test_the_next_task_on_a_thread_is_not_stopped(engine):
    """A flag belongs to the task, not the thread: a later task on the same thread ran."""
    @pipeline(name="told_then_fine", error_handler="continue")
    def p():
        return polls_until_told("first")

    p.run(engine=engine)
    assert _wait_for("first") is not None

    @component(cache=False, executor="thread")
    def asks():
        return stop_requested()

    @pipeline(name="after_the_stop", max_parallel=8)
    def q():
        return [asks() for _ in range(16)]

    assert [x["outputs"]["result"] for x in q.run(engine=engine).value] == [False] * 16


def test_an_inline_call_the_loop_left_is_told_when_its_run_is_cancelled(engine):
    release = threading.Event()

    @component(cache=False)
    def lookup(i):
        if i < 0:
            start = time.monotonic()
            noticed["inline-began"] = time.time()
            while not stop_requested() and time.monotonic() - start < 10:
                time.sleep(0.01)
            noticed["inline"] = time.monotonic()
        return i

    @pipeline(name="inline_told_warm")
    def warm():
        return [lookup(i=i).result() for i in range(20)]

    @pipeline(name="inline_told")
    def p():
        return lookup(i=-1)

    warm.run(engine=engine)
    assert engine.choose_mode(lookup.spec) == "inline"
    threading.Timer(0.6, lambda: engine.cancel(next(iter(engine.runs)), "user cancel")).start()
    try:
        r = p.run(engine=engine)
    finally:
        release.set()
    ended = time.monotonic()
    assert r.state is RunState.CANCELLED
    at = _wait_for("inline")
    assert at is not None and at - ended < 1.0
    # its row starts when the call began, not when the loop moved on without it (0.1 s on)
    (row,) = [t for t in engine.metadata.get_tasks(r.run_id) if t.node_id == "lookup-0"]
    assert row.started_at <= noticed["inline-began"] + 0.05, \
        (row.started_at, noticed["inline-began"])


def test_an_async_operation_is_cancelled_when_its_execution_is():
    async def waits(deps, params):
        try:
            await asyncio.sleep(10)
        finally:
            noticed["async"] = time.monotonic()
        return 1

    s = DynamicScheduler(MemoryStorage(), ExecutionConfig(max_concurrent_nodes=2),
                         metadata=MemoryMetadataStore())
    s.executor.register_operation("waits", waits)
    try:
        async def go():
            dag_id = await s.submit_dag(DAGDefinition("async_cancel", [
                NodeDefinition("w", "waits", [], {})]))
            await asyncio.sleep(0.4)
            assert await s.cancel_execution(dag_id)
            return await s.wait_for_completion(dag_id, timeout=10)
        r = asyncio.run(go())
        ended = time.monotonic()
        assert r.state is RunState.CANCELLED
        at = _wait_for("async")
        assert at is not None and at - ended < 1.0
    finally:
        s.engine.close()
