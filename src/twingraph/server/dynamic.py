"""The dynamic-scheduler face: ``POST /api/v1/execute-dynamic``, ``GET
/api/v1/execution/{id}/progress``, ``DELETE /api/v1/execution/{id}``.

As dynamic-scheduler-api.md "REST API Integration" shows; where that sketch leaves the
scheduler's lifetime open, this face decides it (docs/decisions/0052-execute-dynamic.md):

- Every request runs on the process's one ``Services.scheduler`` (so progress and cancel find
  the execution), with its own ``ExecutionConfig`` (``max_concurrent_nodes``) for that DAG.
- ``program`` is the JSON or YAML DAG text that ``twingraph.dagfile`` parses (the same files
  ``twingraph dynamic execute`` runs). Nothing in it is executed as code: nodes name operations
  and components registered on the server.
- ``storage_backend``/``storage_path`` are accepted for compatibility and ignored: results go
  to the server's own result store (memoization and lineage work across faces; a client must
  not choose paths on the server's disk).
- The execution id is the DAG's ``dag_id`` (the scheduler tracks DAGs by it); a program without
  one gets ``dag_<hex>``. Submitting a ``dag_id`` that is still running is a 409. The response
  also carries ``run_id``: the same execution on ``/api/executions/{id}``, ``/api/v1/runs/{id}``
  and ``/ws``.
- Responses are bare, as in the document; errors use the envelope's error shape (404 unknown
  id, 409 finished or duplicate, 422 bad program with details).
- Nodes run in worker processes, not in the server (docs/decisions/0076): a request whose
  parameters make an operation allocate past ``TWINGRAPH_NODE_MEMORY_LIMIT`` or run past
  ``TWINGRAPH_NODE_TIMEOUT`` fails that node (``failures`` names it and the limit), and the rest
  of the DAG goes on (error handler 'continue').
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from twingraph.dagfile import parse_dag_text
from twingraph.engine.dynamic import DAGDefinition, DynamicScheduler
from twingraph.errors import GraphValidationError, ValidationError
from twingraph.server.bodies import json_problem
from twingraph.server.deps import services
from twingraph.server.envelope import ERROR_RESPONSES, ApiError
from twingraph.service import Services
from twingraph.service import workflows as wf

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, tags=["dynamic"])


class ExecutionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    program: str = Field(min_length=1, max_length=4 * 1024 * 1024,
                         description="the DAG as JSON or YAML text (twingraph.dagfile format)")
    storage_backend: Literal["sqlite", "filesystem", "hybrid"] = Field(
        "sqlite", description="accepted for compatibility; the server's result store is used")
    storage_path: str = Field("./voxlogica_storage",
                              description="accepted for compatibility; ignored")
    max_concurrent_nodes: StrictInt = Field(4, ge=1, le=1000)
    async_execution: StrictBool = False


class ExecutionResponse(BaseModel):
    execution_id: str
    status: str
    result: dict[str, Any] | None = None
    run_id: str | None = None


def _reject_yaml_aliases(program: str) -> None:
    """YAML anchors/aliases let a few bytes stand for an exponentially large document (the
    "billion laughs"); a DAG file never needs them, so they are refused before parsing."""
    if program.lstrip().startswith("{"):
        return                                    # JSON: no aliases
    import yaml
    try:
        for token in yaml.scan(program):
            if isinstance(token, (yaml.AliasToken, yaml.AnchorToken)):
                raise ApiError(422, "YAML anchors and aliases are not accepted in a program",
                               details=[{"field": "program",
                                         "message": "anchors/aliases are not accepted"}])
    except yaml.YAMLError:
        return                                    # parse_dag_text reports the syntax error


def _check_values(dag: DAGDefinition) -> None:
    """The program is text, so the body's checks (``server.bodies``) never saw what it holds:
    the same rules for the parsed DAG. A lone surrogate (``"\\ud800"`` in the JSON or YAML)
    in an id cannot be stored or answered; parameters nested too deep cannot be shown."""
    view = {"dag_id": dag.dag_id, "metadata": dag.metadata, "dependencies": dag.dependencies,
            "nodes": [{"id": n.node_id, "operation": n.operation, "arguments": n.arguments,
                       "parameters": n.parameters, "metadata": n.metadata} for n in dag.nodes]}
    problem = json_problem(view)
    if problem is not None:
        field, why = problem
        raise ApiError(422, f"program: {field}: {why}",
                       details=[{"field": f"program.{field}", "message": why}])


async def _until_done(svc: Services, dag_id: str, timeout: float | None = None) -> bool:
    """Wait, holding no thread, until ``dag_id`` has finished and its result is recorded."""
    sched = svc.scheduler
    return await wf.wait_until(svc.hub, sched.run_id(dag_id),
                               lambda: dag_id not in sched.active_executions, timeout)


def _status(sched: DynamicScheduler, dag_id: str) -> str:
    if dag_id in sched.active_executions:
        return "running"
    res = sched.results.get(dag_id)
    return "pending" if res is None else wf.execution_status(res.state)


def _result(request: Request, dag_id: str) -> dict[str, Any]:
    svc = services(request)
    sched = svc.scheduler
    res = sched.results.get(dag_id)
    if res is None:       # forgotten already: newer executions pushed it out (keep_finished)
        raise ApiError(404, f"execution {dag_id!r} is no longer held by the server: it was "
                            f"submitted again, or newer executions pushed it out of memory "
                            f"(its run stays recorded: /api/v1/runs)")
    progress = sched.execution_states.get(dag_id)
    tasks = svc.catalog.store.get_tasks(res.run_id) if res.run_id else []
    return {"execution_id": dag_id, "run_id": res.run_id or None,
            "status": wf.execution_status(res.state),
            "progress": None if progress is None else _progress_fields(progress),
            "results": wf.node_values(svc.engine, tasks),
            "failures": dict(res.failures),
            "error": None if res.error is None else f"{type(res.error).__name__}: {res.error}"}


@router.post("/execute-dynamic", response_model=ExecutionResponse)
async def execute_dynamic(request: Request, body: ExecutionRequest) -> Any:
    svc = services(request)
    sched = svc.scheduler
    _reject_yaml_aliases(body.program)
    try:
        dag = parse_dag_text(body.program, default_id=f"dag_{uuid.uuid4().hex[:12]}")
    except ValidationError as exc:
        raise ApiError(422, str(exc), details=[{"field": "program", "message": str(exc)}]) from exc
    _check_values(dag)
    if dag.dag_id in sched.active_executions:
        raise ApiError(409, f"DAG {dag.dag_id!r} is already running; cancel it or use "
                            "another dag_id", details=[{"field": "program.dag_id",
                                                        "message": "already running"}])
    config = dataclasses.replace(sched.config, max_concurrent_nodes=body.max_concurrent_nodes,
                                 async_execution=body.async_execution)
    try:
        await sched.submit_dag(dag, config)
    except GraphValidationError as exc:
        raise ApiError(422, str(exc), details=[{"field": "program", "message": str(exc),
                                                "nodes": exc.nodes, "why": exc.why}]) from exc
    except ValidationError as exc:
        raise ApiError(422, str(exc), details=[{"field": "program", "message": str(exc)}]) from exc
    if body.async_execution:
        # The document's hand-off answer ("submitted"); progress says "running" from then on.
        return {"execution_id": dag.dag_id, "status": "submitted",
                "result": None, "run_id": sched.run_id(dag.dag_id)}
    await _until_done(svc, dag.dag_id)
    result = await asyncio.to_thread(_result, request, dag.dag_id)
    return {"execution_id": dag.dag_id, "status": result["status"], "result": result,
            "run_id": result["run_id"]}


@router.get("/execution/{execution_id}/progress")
async def execution_progress(request: Request, execution_id: str) -> Any:
    sched = services(request).scheduler
    progress = await sched.get_execution_progress(execution_id)
    if progress is None:
        raise ApiError(404, f"execution {execution_id!r} not found")
    return {**_progress_fields(progress), "status": _status(sched, execution_id),
            "run_id": sched.run_id(execution_id)}


@router.delete("/execution/{execution_id}")
async def cancel_execution(request: Request, execution_id: str) -> Any:
    svc = services(request)
    sched = svc.scheduler
    if execution_id not in sched.execution_states:
        raise ApiError(404, f"execution {execution_id!r} not found")
    if execution_id not in sched.active_executions:
        raise ApiError(409, f"execution {execution_id!r} already ended "
                            f"({_status(sched, execution_id)})")
    # False: a cancel is under way already (an earlier request): this one waits for it too.
    await sched.cancel_execution(execution_id)
    await _until_done(svc, execution_id, timeout=10)
    res = sched.results.get(execution_id)
    if res is None:
        # Not ended within the wait: said as it is (it said "cancelled" while it ran on).
        return {"status": _status(sched, execution_id), "execution_id": execution_id}
    # CANCELLED; or it finished on its own before the cancel reached it.
    return {"status": wf.execution_status(res.state), "execution_id": execution_id}


def _progress_fields(progress: Any) -> dict[str, Any]:
    """The document's ``ExecutionProgress`` fields (the status says whether it was cancelled;
    ``cancelled_nodes``, a Python-side extension, is not part of this face)."""
    out = dataclasses.asdict(progress)
    out.pop("cancelled_nodes", None)
    return out
