"""The dynamic-scheduler document's integration layer: ``VoxLogicaIntegration`` and
``execute_with_progress``, the path from a program to its results that the document's CLI and
REST integration go through.

In TwinGraph a *program* is a declarative DAG: its JSON/YAML text (the file form,
``twingraph.dagfile``), a dict of the same shape, or a ``DAGDefinition``. The class keeps the
document's name so code written against the document runs unchanged.

An execution's id is its DAG id (``submit_dag`` returns it). Its results: ``status``
('completed' or 'failed'), the engine ``run_id``, ``results`` — the values of the program's
output nodes (those no other node reads; ``DynamicScheduler.node_results`` has every node) —
and ``failures`` (node id -> error) for the nodes that failed. An output whose value cannot be
read when the results are collected (corrupted and removed from the result store) is a failure
too: status 'failed', the node in ``failures`` with the reason, though its run succeeded.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from twingraph.dagfile import dag_from_dict, parse_dag_text
from twingraph.engine.dynamic import (DAGDefinition, DynamicScheduler, ExecutionConfig,
                                      ExecutionProgress, NodeStatus)
from twingraph.engine.snapshot import error_text
from twingraph.errors import NotFoundError, ValidationError


class VoxLogicaIntegration:
    """Runs programs on a ``DynamicScheduler``."""

    def __init__(self, scheduler: DynamicScheduler) -> None:
        self.scheduler = scheduler
        self._outputs: dict[str, list[str]] = {}      # execution id -> its output node ids

    async def execute_program_dynamic(self, program: str | Mapping[str, Any] | DAGDefinition,
                                      config: ExecutionConfig) -> dict[str, Any]:
        """Validate and start ``program``; with ``config.async_execution`` return at once
        (``{'execution_id', 'status': 'submitted'}``), else wait and return its results."""
        dag = await self._generate_dag_from_program(program)
        execution_id = await self.scheduler.submit_dag(dag, config)
        self._outputs[execution_id] = _outputs(dag)
        self._forget_old()
        if config.async_execution:
            return {"execution_id": execution_id, "status": "submitted"}
        return await self._wait_for_completion(execution_id)

    def _forget_old(self) -> None:
        """Drop the output lists of executions the scheduler has forgotten (it keeps the newest
        ``keep_finished``): checked once the map is twice that size, so the cost per execution
        stays constant."""
        sched = self.scheduler
        if len(self._outputs) <= 2 * (sched.keep_finished + len(sched.active_executions)):
            return
        for eid in [e for e in self._outputs
                    if e not in sched.results and e not in sched.active_executions]:
            del self._outputs[eid]

    async def _generate_dag_from_program(
            self, program: str | Mapping[str, Any] | DAGDefinition) -> DAGDefinition:
        if isinstance(program, DAGDefinition):
            return program
        if isinstance(program, Mapping):
            return dag_from_dict(program)
        if isinstance(program, str):
            return parse_dag_text(program)
        raise ValidationError(f"a program is DAG text, a dict or a DAGDefinition, "
                              f"not {type(program).__name__}")

    async def _wait_for_completion(self, execution_id: str) -> dict[str, Any]:
        """Wait (without polling) until the execution has ended; return its results."""
        await self.scheduler.wait_for_completion(execution_id)
        return await self._collect_execution_results(execution_id)

    async def _collect_execution_results(self, execution_id: str) -> dict[str, Any]:
        result = self.scheduler.results.get(execution_id)
        if result is None:
            raise NotFoundError(f"execution {execution_id!r} has not ended (or never started)")
        outputs = self._outputs.get(execution_id)
        values: dict[str, Any] = {}
        failures = dict(result.failures)
        status = _STATUS.get(result.state.value, "failed")
        error = None if result.error is None else error_text(result.error)
        if result.run_id:
            nodes = await self.scheduler.get_node_results(execution_id, outputs)
            values = {nid: r.result_data for nid, r in nodes.items()
                      if r.status is NodeStatus.COMPLETED}
            # An output that ran (or was a memo hit) but whose value cannot be read now (found
            # corrupted and removed, gone): its results are not delivered, which is a failure
            # of the execution, said with the node's reason, not a silently missing value.
            unreadable = {nid: r.error_message or "its result could not be read"
                          for nid, r in nodes.items()
                          if r.status is NodeStatus.FAILED and nid not in failures}
            if unreadable:
                failures.update(unreadable)
                if status == "completed":
                    status = "failed"
                    error = (f"the results of {', '.join(sorted(unreadable))} could not be read "
                             "(the run itself succeeded; see failures)")
        return {"execution_id": execution_id, "run_id": result.run_id or None,
                "status": status, "results": values, "failures": failures, "error": error}


#: An execution's status by its run's state: a cancelled one is not a failure.
_STATUS = {"SUCCESS": "completed", "CANCELLED": "cancelled"}


async def execute_with_progress(
        integration: VoxLogicaIntegration, program: str | Mapping[str, Any] | DAGDefinition,
        config: ExecutionConfig, *,
        on_progress: Callable[[ExecutionProgress], None] | None = None,
        interval: float = 0.5) -> dict[str, Any]:
    """Start ``program``, call ``on_progress`` with its progress every ``interval`` seconds
    (the document draws a progress bar here) and once more at the end; return its results.
    ``config`` is not modified (the execution runs with a copy that is asynchronous)."""
    started = await integration.execute_program_dynamic(
        program, dataclasses.replace(config, async_execution=True))
    execution_id = started["execution_id"]
    sched = integration.scheduler
    while execution_id in sched.active_executions:
        if on_progress is not None:
            progress = await sched.get_execution_progress(execution_id)
            if progress is not None:
                on_progress(progress)
        await asyncio.sleep(interval)
    results = await integration._wait_for_completion(execution_id)
    if on_progress is not None:
        progress = await sched.get_execution_progress(execution_id)
        if progress is not None:
            on_progress(progress)
    return results


def _outputs(dag: DAGDefinition) -> list[str]:
    read = {d for n in dag.nodes for d in dag.deps_of(n)}
    return [n.node_id for n in dag.nodes if n.node_id not in read]
