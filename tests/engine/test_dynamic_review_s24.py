"""Review findings (session 24) on the dynamic scheduler: an ``async def`` operation raising
``TimeoutError`` held its DAG for ever; ``execute_node`` of an operation raising
``StopIteration`` never returned; a cancelled DAG larger than the submit window never reached
100 %. Real operations on in-memory stores."""
from __future__ import annotations

import asyncio
import time

from twingraph.engine.dynamic import (DAGDefinition, DynamicScheduler, ExecutionConfig,
                                      NodeDefinition, NodeExecutor, NodeStatus)
from twingraph.stores.results.memory import MemoryStorage

N = NodeDefinition


async def _times_out(deps, params):
    await asyncio.sleep(0)
    raise TimeoutError("the service did not answer")     # as asyncio.wait_for raises it


def test_an_async_operation_raising_timeouterror_fails_its_node():
    """The wait for the coroutine took its own ``TimeoutError`` (the built-in one since 3.11,
    as ``concurrent.futures.TimeoutError``) for "not done yet", and polled for ever."""
    s = DynamicScheduler(MemoryStorage(), ExecutionConfig(max_retries=0))
    s.executor.register_operation("fetch", _times_out)
    t0 = time.monotonic()
    r = s.run(DAGDefinition("async_timeout_s24", [N("x", "fetch", [], {})]))
    assert time.monotonic() - t0 < 10
    assert r.state.value == "FAILED"
    assert "the service did not answer" in r.failures["x"]


def test_execute_node_of_an_operation_raising_stopiteration_returns_failed():
    ex = NodeExecutor(None)
    ex.register_operation("first", lambda deps, params: next(iter(params["items"])))

    async def main():
        return await asyncio.wait_for(ex.execute_node(N("n", "first", [], {"items": []})), 10)

    r = asyncio.run(main())
    assert r.status is NodeStatus.FAILED and "StopIteration" in r.error_message


def test_a_cancelled_dag_larger_than_the_submit_window_ends_at_100_percent():
    """Nodes the run never took in stayed "pending": 37.5 % for good, and the document's
    ``_wait_for_completion`` (polls until 100) never returned."""
    def op(deps, params):
        time.sleep(0.0005)
        return params["i"]

    async def main():
        s = DynamicScheduler(MemoryStorage(), ExecutionConfig(no_cache=True))
        s.executor.register_operation("op", op)
        await s.submit_dag(DAGDefinition("cancel_big_s24", [N(f"n{i}", "op", [], {"i": i})
                                                           for i in range(25_000)]))
        await asyncio.sleep(0.5)
        assert await s.cancel_execution("cancel_big_s24")
        r = await s.wait_for_completion("cancel_big_s24")
        logs = s.engine.metadata.get_logs(r.run_id) if s.engine.metadata is not None else []
        return r, await s.get_execution_progress("cancel_big_s24"), logs

    r, p, logs = asyncio.run(main())
    # the DAG's own body ends quietly (it logged a warning with a traceback of TwinGraph's)
    assert not [x for x in logs if "body" in x.message], [x.message for x in logs]
    assert r.state.value == "CANCELLED"
    assert p.progress_percentage == 100.0 and p.pending_nodes == 0 and p.running_nodes == 0
    assert p.completed_nodes + p.failed_nodes + p.cancelled_nodes == 25_000
    assert p.cancelled_nodes > 0


class _TimingOutStore:
    """The document's StorageInterface, backed by a service that times out on reads."""

    async def store_result(self, node_id, data, metadata):
        return True

    async def retrieve_result(self, node_id):
        await asyncio.sleep(0)
        raise TimeoutError("the store did not answer")

    async def get_metadata(self, node_id):
        return None

    async def exists(self, node_id):
        return False

    async def delete_result(self, node_id):
        return False

    async def list_results(self, dag_id=None):
        return []

    async def stream_result(self, node_id, chunk_size=8192):
        yield b""

    async def update_metadata(self, node_id, metadata):
        return False


def test_a_user_store_raising_timeouterror_raises_it_instead_of_waiting_for_ever():
    import pytest
    from twingraph.engine.async_store import as_result_store
    store = as_result_store(_TimingOutStore())
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="the store did not answer"):
        store.get("k")
    assert time.monotonic() - t0 < 5
