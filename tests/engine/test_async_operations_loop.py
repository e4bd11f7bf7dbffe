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
