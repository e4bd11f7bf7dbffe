"""The document's integration layer (VoxLogicaIntegration, execute_with_progress): a program —
DAG text, a dict or a DAGDefinition — to its results, synchronously or not."""
import asyncio
import json

import pytest

from tests.resources import ops
from twingraph.engine.dynamic import (DynamicScheduler, ExecutionConfig, ExecutionProgress,
                                      register_operation)
from twingraph.errors import GraphValidationError, ValidationError
from twingraph.integration import VoxLogicaIntegration, execute_with_progress
from twingraph.stores.metadata import MemoryMetadataStore
from twingraph.stores.results.memory import MemoryStorage

PROGRAM = {"dag_id": "prog", "nodes": [
    {"id": "nums", "operation": "make_numbers", "parameters": {"n": 4}},
    {"id": "sq", "operation": "square_all", "arguments": ["nums"]},
    {"id": "total", "operation": "add_all", "arguments": ["sq", "nums"]},
    {"id": "side", "operation": "square_all", "arguments": ["nums"]}]}


@pytest.fixture
def integration():
    for name in ("make_numbers", "square_all", "add_all", "explode", "sleepy"):
        register_operation(name, getattr(ops, name))
    s = DynamicScheduler(MemoryStorage(), ExecutionConfig(max_concurrent_nodes=2),
                         metadata=MemoryMetadataStore())
    yield VoxLogicaIntegration(s)
    s.engine.close()


def test_a_program_runs_to_its_output_values(integration):
    out = asyncio.run(integration.execute_program_dynamic(json.dumps(PROGRAM), ExecutionConfig()))
    assert out["execution_id"] == "prog" and out["status"] == "completed" and out["run_id"]
    # the program's outputs: nodes nothing else reads
    assert out["results"] == {"total": (0 + 1 + 4 + 9) + 6, "side": [0, 1, 4, 9]}
    assert out["failures"] == {} and out["error"] is None


def test_async_execution_returns_at_once_and_progress_reaches_100(integration):
    seen: list[ExecutionProgress] = []
    program = {"dag_id": "slow", "nodes": [
        {"id": f"s{i}", "operation": "sleepy", "parameters": {"seconds": 0.2}} for i in range(4)]}
    config = ExecutionConfig()

    async def go():
        started = await integration.execute_program_dynamic(
            program, ExecutionConfig(async_execution=True))
        assert started == {"execution_id": "slow", "status": "submitted"}
        await integration._wait_for_completion("slow")
        return await execute_with_progress(integration, {**program, "dag_id": "slow2"}, config,
                                           on_progress=seen.append, interval=0.05)
    out = asyncio.run(go())
    assert out["status"] == "completed" and set(out["results"]) == {"s0", "s1", "s2", "s3"}
    assert seen and seen[-1].progress_percentage == 100.0
    assert config.async_execution is False                 # the caller's config is untouched


def test_failures_and_bad_programs(integration):
    failing = {"dag_id": "bad", "nodes": [{"id": "boom", "operation": "explode"},
                                          {"id": "after", "operation": "add_all",
                                           "arguments": ["boom"]}]}
    out = asyncio.run(integration.execute_program_dynamic(
        failing, ExecutionConfig(retry_failed_nodes=False)))
    assert out["status"] == "failed" and "boom" in out["failures"] and out["results"] == {}
    with pytest.raises(GraphValidationError, match="unknown operations"):
        asyncio.run(integration.execute_program_dynamic(
            {"nodes": [{"id": "a", "operation": "no_such_op"}]}, ExecutionConfig()))
    with pytest.raises(ValidationError, match="a program is DAG text"):
        asyncio.run(integration.execute_program_dynamic(42, ExecutionConfig()))


def test_output_lists_of_forgotten_executions_are_dropped():
    """Each execution's output node ids are kept while the scheduler keeps the execution
    (its newest ``keep_finished``); the map does not grow with every program run."""
    register_operation("make_numbers", ops.make_numbers)
    s = DynamicScheduler(MemoryStorage(), ExecutionConfig(), metadata=MemoryMetadataStore(),
                         keep_finished=2)
    integration = VoxLogicaIntegration(s)
    try:
        for i in range(12):
            program = {"dag_id": f"p{i}", "nodes": [
                {"id": "nums", "operation": "make_numbers", "parameters": {"n": i}}]}
            out = asyncio.run(integration.execute_program_dynamic(program, ExecutionConfig()))
            assert out["results"] == {"nums": list(range(i))}
            assert len(integration._outputs) <= 7    # pruned past 2 x (2 kept + 1 running)
        assert {"p10", "p11"} <= set(integration._outputs)
    finally:
        s.engine.close()
