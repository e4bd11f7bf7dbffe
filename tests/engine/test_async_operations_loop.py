"""``async def`` operations are awaited where the document awaits them: on the loop of the
caller of ``execute_node`` / ``submit_dag``, and otherwise on one loop the process shares
(``engine/awaiting.py``). Each ran on a new loop of its own before (session 22 review): a
caller's ``asyncio.Queue`` was never woken (a hang), a shared ``asyncio.Lock`` or module-level
``Semaphore`` failed with "bound to a different event loop", and 30 concurrent
``execute_node`` calls of ``await asyncio.sleep(1)`` took 5 s.

Real schedulers over SQLite stores in ``tmp_path``; no mocks."""
from __future__ import annotations

import asyncio

import pytest

from twingraph import component, pipeline
from twingraph.engine.dynamic import (DAGDefinition, DynamicScheduler, ExecutionConfig,
                                      NodeDefinition, NodeExecutor, NodeStatus)
from twingraph.stores.results.sqlite import SQLiteStorage

N = NodeDefinition
#: Bound to the first loop that waits on it, as a user's module-level throttle is.
THROTTLE = asyncio.Semaphore(2)


async def _throttled(deps, params):
    async with THROTTLE:
        await asyncio.sleep(0.01)
        return params["i"]


def _sum(deps, params):
    return sum(deps.values())


def test_a_module_level_semaphore_is_shared_by_the_async_operations_of_runs(tmp_path):
    """Each node awaited on a loop of its own: 5 of 8 failed, 'bound to a different event
    loop'. Two runs, one after the other: the same loop serves both."""
    with DynamicScheduler(SQLiteStorage(str(tmp_path / "r.db")),
                          ExecutionConfig(max_retries=0, max_concurrent_nodes=8,
                                          no_cache=True)) as s:
        s.executor.register_operation("throttled", _throttled)
        s.executor.register_operation("sum", _sum)
        nodes = [N(f"n{i}", "throttled", [], {"i": i}) for i in range(8)]
        nodes.append(N("total", "sum", [f"n{i}" for i in range(8)], {}))
        for _ in range(2):
            r = s.run(DAGDefinition("sem", nodes))
            assert r.state.value == "SUCCESS", r.failures
            assert s.node_results("sem", ["total"])["total"].result_data == 28


def test_an_operation_of_a_submitted_dag_runs_on_the_callers_loop(tmp_path):
    """The operation hands the caller a message through the caller's own queue; it was
    awaited on another loop in another thread, and ``events.get()`` never woke."""
    async def main():
        events: asyncio.Queue = asyncio.Queue()
        home = asyncio.get_running_loop()

        async def tell(deps, params):
            await events.put(asyncio.get_running_loop() is home)
            return 1

        with DynamicScheduler(SQLiteStorage(str(tmp_path / "r.db")),
                              ExecutionConfig(max_retries=0)) as s:
            s.executor.register_operation("tell", tell)
            await s.submit_dag(DAGDefinition("q", [N("a", "tell", [], {})]))
            same_loop = await asyncio.wait_for(events.get(), 10)
            result = await s.wait_for_completion("q", 10)
        return same_loop, result

    same_loop, result = asyncio.run(main())
    assert same_loop is True
    assert result.state.value == "SUCCESS"


def test_execute_node_awaits_async_operations_side_by_side_on_the_callers_loop():
    """30 concurrent calls: each is awaited on the caller's loop (they took a pool thread
    each, six at a time). All 30 must be in flight at once for any to finish, and they share
    an ``asyncio.Lock`` of the caller's loop."""
    async def main():
        ex = NodeExecutor()
        inside, all_in = 0, asyncio.Event()
        lock = asyncio.Lock()

        async def wait_for_all(deps, params):
            nonlocal inside
            async with lock:
                inside += 1
                if inside == 30:
                    all_in.set()
            await asyncio.wait_for(all_in.wait(), 10)
            return params["i"]

        ex.register_operation("wait_for_all", wait_for_all)
        return await asyncio.gather(*(ex.execute_node(N(f"n{i}", "wait_for_all", [], {"i": i}))
                                      for i in range(30)))

    results = asyncio.run(main())
    assert [r.status for r in results] == [NodeStatus.COMPLETED] * 30, \
        [r.error_message for r in results if r.error_message]
    assert [r.result_data for r in results] == list(range(30))


def test_an_async_generator_operation_of_execute_node_gives_its_items():
    async def items(deps, params):
        for i in range(3):
            await asyncio.sleep(0)
            yield i

    async def main():
        ex = NodeExecutor()
        ex.register_operation("items", items)
        return await ex.execute_node(N("a", "items", [], {}))

    r = asyncio.run(main())
    assert r.status is NodeStatus.COMPLETED and r.result_data == [0, 1, 2]


LOCK_OF_COMPONENTS: asyncio.Lock | None = None


@component
async def guarded(x: int) -> int:
    global LOCK_OF_COMPONENTS
    if LOCK_OF_COMPONENTS is None:
        LOCK_OF_COMPONENTS = asyncio.Lock()
    async with LOCK_OF_COMPONENTS:
        await asyncio.sleep(0.005)
        return x * 2


def test_async_components_of_a_pipeline_share_one_loop(engine):
    @pipeline(name="async_shared_lock", max_parallel=6)
    def p():
        return [guarded(x=i) for i in range(12)]

    for _ in range(2):                  # a second run: the same loop, the same lock
        r = p.run(engine=engine)
        assert r.error is None, r.error
        assert [x["outputs"]["result"] for x in r.value] == [i * 2 for i in range(12)]


def test_a_submitter_loop_that_ends_mid_node_fails_the_node_it_does_not_hang(tmp_path):
    """``asyncio.run(submit_dag(...))`` returns, and its loop closes, while an operation is
    awaited on it: the node fails with the reason; a later node runs on the process's loop."""
    gate = {"started": None}

    async def slow(deps, params):
        gate["started"] = True
        await asyncio.sleep(30)
        return 1

    async def quick(deps, params):
        return 2

    with DynamicScheduler(SQLiteStorage(str(tmp_path / "r.db")),
                          ExecutionConfig(max_retries=0)) as s:
        s.executor.register_operation("slow", slow)
        s.executor.register_operation("quick", quick)

        async def submit():
            await s.submit_dag(DAGDefinition("gone", [N("a", "slow", [], {})]))
            while not gate["started"]:
                await asyncio.sleep(0.01)

        asyncio.run(submit())
        result = asyncio.run(s.wait_for_completion("gone", 20))
        assert result.state.value == "FAILED"
        assert "event loop" in s.node_results("gone")["a"].error_message
        r = s.run(DAGDefinition("later", [N("b", "quick", [], {})]))
        assert r.state.value == "SUCCESS"


@pytest.fixture
def engine(tmp_path):
    from twingraph.engine.engine import Engine
    from twingraph.stores.metadata import SQLMetadataStore
    eng = Engine(results=SQLiteStorage(str(tmp_path / "e.db")),
                 metadata=SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True))
    yield eng
    eng.close()


# -- the review of the loop change (session 22, later) -------------------------------------

def _within(seconds: float, fn):
    """``fn()`` on a thread; fails the test (instead of hanging it) if it has not returned."""
    import threading
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert out, f"did not return within {seconds} s (a deadlock)"
    return out[0]


async def _exits(deps, params):
    await asyncio.sleep(0)
    raise SystemExit(3)


async def _fine(deps, params):
    await asyncio.sleep(0.01)
    return 42


def test_system_exit_in_an_operation_fails_its_node_and_leaves_the_loop_serving(tmp_path):
    """It ended the shared loop's thread, and every later async task of the process hung."""
    with DynamicScheduler(SQLiteStorage(str(tmp_path / "r.db")),
                          ExecutionConfig(max_retries=0, no_cache=True)) as s:
        s.executor.register_operation("exits", _exits)
        s.executor.register_operation("fine", _fine)
        r = _within(20, lambda: s.run(DAGDefinition("d1", [N("a", "exits", [], {})])))
        assert r.state.value == "FAILED"
        assert "SystemExit" in s.node_results("d1")["a"].error_message
        r = _within(20, lambda: s.run(DAGDefinition("d2", [N("b", "fine", [], {})])))
        assert r.state.value == "SUCCESS"


@component
async def leaf_s22(x: int) -> int:
    await asyncio.sleep(0.01)
    return x + 1


@pipeline(name="s22_child")
def child_s22():
    return leaf_s22(x=1)


@component(timeout=10)
async def runs_a_pipeline_s22(x: int) -> int:
    r = child_s22.run()           # blocks the loop it runs on, and its child needs a loop
    return r.value["outputs"]["result"] + x


@pipeline(name="s22_parent")
def parent_s22():
    return runs_a_pipeline_s22(x=10)


def test_an_async_component_that_runs_a_pipeline_does_not_deadlock(tmp_path):
    """The child's coroutine waited for the shared loop its parent was blocking; after the
    parent's timeout the loop stayed blocked for every later run. A coroutine that has not
    started on a loop that has not ticked for ``BLOCKED_AFTER`` runs on a loop of its own."""
    from twingraph.engine.engine import Engine
    from twingraph.stores.metadata import SQLMetadataStore
    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")),
                 metadata=SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True))
    try:
        r = _within(30, lambda: parent_s22.run(engine=eng))
        assert r.error is None, r.error
        assert r.value["outputs"]["result"] == 12
        r = _within(30, lambda: child_s22.run(engine=eng, no_cache=True))
        assert r.error is None and r.value["outputs"]["result"] == 2
    finally:
        eng.close()


def test_a_plain_function_wrapping_a_coroutine_function_runs_on_a_thread():
    """``functools.wraps`` over an async function (what ``async_to_sync`` helpers do): the
    unwrapped function was taken as the operation's and the wrapper called on the caller's
    loop ("asyncio.run() cannot be called from a running event loop")."""
    import functools

    async def compute(deps, params):
        await asyncio.sleep(0)
        return 42

    @functools.wraps(compute)
    def blocking(deps, params):
        return asyncio.run(compute(deps, params))

    async def main():
        ex = NodeExecutor()
        ex.register_operation("blocking", blocking)
        return await ex.execute_node(N("a", "blocking", [], {}))

    r = asyncio.run(main())
    assert r.status is NodeStatus.COMPLETED and r.result_data == 42, r.error_message


def test_an_async_generator_of_a_submitted_dag_runs_on_the_callers_loop(tmp_path):
    """It went to the shared loop, where a lock of the caller's loop never woke it."""
    async def main():
        lock = asyncio.Lock()
        home = asyncio.get_running_loop()

        async def gen(deps, params):
            async with lock:
                yield asyncio.get_running_loop() is home

        with DynamicScheduler(SQLiteStorage(str(tmp_path / "r.db")),
                              ExecutionConfig(max_retries=0, no_cache=True)) as s:
            s.executor.register_operation("gen", gen)
            async with lock:
                await s.submit_dag(DAGDefinition("g", [N("a", "gen", [], {})]))
                await asyncio.sleep(0.2)
            result = await s.wait_for_completion("g", 10)
            return result, s.node_results("g")["a"].result_data

    result, data = asyncio.run(main())
    assert result.state.value == "SUCCESS" and data == [True]


@component
async def logs_s22(x: int) -> int:
    from twingraph import get_logger
    get_logger().info("before await x=%s", x)
    await asyncio.sleep(0)
    get_logger().warning("after await x=%s", x)
    return x


@pipeline(name="s22_async_logs")
def async_logs_s22():
    return logs_s22(x=7)


def test_what_an_async_component_logs_is_recorded_with_its_task(engine):
    r = async_logs_s22.run(engine=engine)
    assert r.error is None, r.error
    lines = [(log.node_id, log.message) for log in engine.metadata.get_logs(r.run_id)]
    assert ("logs_s22-0", "before await x=7") in lines
    assert ("logs_s22-0", "after await x=7") in lines


THROTTLE_ONE = asyncio.Semaphore(1)


async def _holds_then_blocks(deps, params):
    async with THROTTLE_ONE:
        if params["i"] == 0:
            import time as _t
            _t.sleep(1.0)             # a blocking call inside (a sync client, CPU work)
        await asyncio.sleep(0)
        return params["i"]


def test_a_coroutine_that_blocks_the_loop_a_while_does_not_strand_the_others(tmp_path):
    """A loop not ticking for 0.5 s was taken for blocked and the queued coroutines moved to
    loops of their own: the semaphore they share with the blocker then never woke them (a
    hang). Only a nested run moves them now."""
    with DynamicScheduler(SQLiteStorage(str(tmp_path / "r.db")),
                          ExecutionConfig(max_retries=0, no_cache=True,
                                          max_concurrent_nodes=8)) as s:
        s.executor.register_operation("op", _holds_then_blocks)
        r = _within(30, lambda: s.run(DAGDefinition("b", [N(f"n{i}", "op", [], {"i": i})
                                                          for i in range(8)])))
        assert r.state.value == "SUCCESS", r.failures


CLEANED: list[str] = []


@component(timeout=0.5)
async def times_out_s22(x: int) -> int:
    try:
        await asyncio.sleep(30)
    finally:
        await asyncio.sleep(0)
        CLEANED.append("cleanup ran")
    return x


@pipeline(name="s22_child_timeout", error_handler="continue")
def child_timeout_s22():
    return times_out_s22(x=1)


@component(timeout=20)
async def runs_child_timeout_s22(x: int) -> str:
    r = child_timeout_s22.run()          # its coroutine runs on a loop of its own
    return type(r.error).__name__


@pipeline(name="s22_parent_timeout")
def parent_timeout_s22():
    return runs_child_timeout_s22(x=1)


def test_a_coroutine_on_a_loop_of_its_own_is_cancelled_with_its_cleanup(engine):
    """The loop of its own was stopped at once, before the cancelled coroutine's ``finally``
    ran ("Task was destroyed but it is pending")."""
    import time as _t
    CLEANED.clear()
    r = _within(30, lambda: parent_timeout_s22.run(engine=engine))
    assert r.error is None, r.error
    assert r.value["outputs"]["result"] == "PipelineFailed"
    deadline = _t.monotonic() + 5
    while not CLEANED and _t.monotonic() < deadline:
        _t.sleep(0.05)
    assert CLEANED == ["cleanup ran"]


@component(cache=False, executor="process")
async def logs_in_a_worker_s22(i: int) -> int:
    from twingraph import get_logger
    get_logger().info(f"worker line {i}")
    await asyncio.sleep(0.01)
    return i


@pipeline(name="s22_worker_logs", max_parallel=1)
def worker_logs_s22():
    return [logs_in_a_worker_s22(i=i) for i in range(3)]


def test_an_async_process_tasks_log_lines_are_kept_on_every_job_of_its_worker(engine):
    """In a worker process the shared loop's thread was started by the worker's first job
    and taken for that job's thread: the lines of every later job on it were dropped."""
    import time as _t
    r = worker_logs_s22.run(engine=engine)
    assert r.error is None, r.error
    deadline = _t.monotonic() + 5
    want = {(f"logs_in_a_worker_s22-{i}", f"worker line {i}") for i in range(3)}
    got: set = set()
    while _t.monotonic() < deadline and not want <= got:
        got = {(log.node_id, log.message) for log in engine.metadata.get_logs(r.run_id)}
        _t.sleep(0.05)
    assert want <= got, got
