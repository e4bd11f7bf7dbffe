"""Session 25 fixes: a cancelled DAG's ``node_results`` names every node (the ones it never
submitted as CANCELLED), on a scheduler with and without a metadata store."""
from __future__ import annotations

import asyncio
import time

import pytest

from twingraph.engine.dynamic import (DAGDefinition, DynamicScheduler, ExecutionConfig,
                                      NodeDefinition, NodeStatus)
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.memory import MemoryStorage

N = NodeDefinition


def _slow(deps, params):
    time.sleep(0.0005)
    return params["i"]


@pytest.mark.parametrize("with_metadata", [True, False], ids=["metadata", "in-memory"])
def test_node_results_of_a_cancelled_dag_name_every_node(tmp_path, with_metadata):
    """The nodes the run never took in (it submits a window at a time) were missing."""
    async def main():
        md = SQLMetadataStore(f"sqlite:///{tmp_path / 'md.db'}", create=True) if with_metadata else None
        s = DynamicScheduler(MemoryStorage(), ExecutionConfig(no_cache=True), metadata=md)
        s.executor.register_operation("op", _slow)
        await s.submit_dag(DAGDefinition("cancel_nr_s25", [N(f"n{i}", "op", [], {"i": i})
                                                          for i in range(20_000)]))
        await asyncio.sleep(0.3)
        assert await s.cancel_execution("cancel_nr_s25")
        await s.wait_for_completion("cancel_nr_s25")
        progress = await s.get_execution_progress("cancel_nr_s25")
        every = await s.get_node_results("cancel_nr_s25")
        some = await s.get_node_results("cancel_nr_s25", ["n0", "n19999"])
        s.close()
        return progress, every, some

    progress, every, some = asyncio.run(main())
    assert len(every) == 20_000
    by = {}
    for r in every.values():
        by[r.status] = by.get(r.status, 0) + 1
    assert by.get(NodeStatus.CANCELLED, 0) == progress.cancelled_nodes > 0
    assert by.get(NodeStatus.COMPLETED, 0) == progress.completed_nodes
    assert every["n19999"].status is NodeStatus.CANCELLED
    assert "before this node was submitted" in every["n19999"].error_message
    assert set(some) == {"n0", "n19999"} and some["n0"].status is NodeStatus.COMPLETED
