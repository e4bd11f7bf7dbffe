"""The TwinGraph face, ``/api``: workflows, executions, the execution graph, component metrics.

Shapes are twingraph-api.md's (bare JSON, ``page``/``size`` paging); errors use the one error
shape of every face (``{error: {code, message, details}, meta}``). A workflow IS a pipeline of
the default project and an execution IS a run (DESIGN.md §1), so ``/api/v1`` shows the same
objects. What the document leaves open is decided in docs/decisions/0050-twingraph-face.md:

- ``POST /api/workflows/{workflow_id}`` creates a pipeline whose id is ``workflow_id`` (409 if
  the id, or the name within the default project, is taken); ``PUT`` replaces an existing
  workflow (404 if unknown), keeping the previous definition as a version.
- A workflow's ``status`` is ``active``/``inactive`` (see ``service.workflows``).
- Execution statuses are spelled pending/running/completed/failed/cancelled.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from twingraph.errors import NotFoundError, ValidationError
from twingraph.server import views
from twingraph.server.deps import services
from twingraph.server.envelope import ERROR_RESPONSES, ApiError, iso, parse_iso
from twingraph.service import Services
from twingraph.service import workflows as wf
from twingraph.service.definitions import DefinitionError, is_python
from twingraph.stores.metadata.catalog import PipelineRecord
from twingraph.stores.metadata.catalog_store import RunRow

router = APIRouter(prefix="/api", responses=ERROR_RESPONSES)

WorkflowId = Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$",
                  description="workflow (pipeline) id: letters, digits, '_', '.', ':', '-'")


class WorkflowMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    description: str | None = None
    tags: list[str] = Field(default_factory=list)


class WorkflowDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")
    nodes: list[dict[str, Any]] = Field(min_length=1)
    edges: list[dict[str, Any]] = Field(default_factory=list)


class WorkflowIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=200)
    definition: WorkflowDefinition
    metadata: WorkflowMetadata = Field(default_factory=WorkflowMetadata)


class ExecutionConfigIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_parallel: StrictInt | None = Field(default=None, ge=1, le=10_000)
    timeout: StrictFloat | None = Field(default=None, gt=0, description="seconds")
    error_handler: Literal["fail", "continue", "retry"] | None = None
    no_cache: StrictBool | None = None


class ExecutionIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    workflow_id: str = Field(min_length=1, description="workflow id, or its name")
    inputs: dict[str, Any] = Field(default_factory=dict)
    config: ExecutionConfigIn = Field(default_factory=lambda: ExecutionConfigIn())


# -- shapes ------------------------------------------------------------------------------------
def _default_project_id(svc: Services, *, create: bool) -> str | None:
    try:
        return svc.catalog.resolve_project(svc.engine.project).id
    except NotFoundError:
        return svc.catalog.store.ensure_project(svc.engine.project) if create else None


def _summary(p: PipelineRecord, activity: dict[str, Any], now: float) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "created_at": iso(p.created_at),
            "updated_at": iso(p.updated_at), "status": wf.workflow_status(activity, now),
            "tags": p.tags, "description": p.description, "version": p.current_version}


def _workflow(svc: Services, p: PipelineRecord) -> dict[str, Any]:
    activity = svc.catalog.pipeline_activity([p.id])[p.id]
    shown = views.pipeline(p)
    meta = dict(p.definition.get("metadata") or {})
    meta.update(description=p.description, tags=p.tags)
    by_state = activity["runs_by_state"]
    return {**_summary(p, activity, time.time()),
            "definition": {"nodes": shown["nodes"], "edges": shown["edges"], "metadata": meta},
            "kind": shown["kind"], "executions": sum(by_state.values()),
            "success_rate": wf.success_rate(by_state)}


def _execution(svc: Services, run: RunRow, *, outputs: bool = True) -> dict[str, Any]:
    res = svc.runs.result(run.run_id, ended=run.state.terminal)
    out = {"execution_id": run.run_id, "workflow_id": run.pipeline_id,
           "workflow_name": run.pipeline, "status": wf.execution_status(run.state),
           "inputs": run.params, "created_at": iso(run.created_at),
           "started_at": iso(run.started_at), "completed_at": iso(run.ended_at),
           "duration": run.duration, "progress": wf.node_progress(svc.runs.progress(run)),
           "error": run.error}
    if outputs:
        cache: wf.OutputsCache = svc.extras.setdefault("outputs_cache", wf.OutputsCache())
        hit, value = cache.get(run.run_id)
        if not hit:
            value = wf.run_outputs(svc.engine, svc.catalog,
                                   None if res is None else res.value, res is not None, run)
            if run.state.value == "SUCCESS" and not svc.runs.driving(run.run_id):
                cache.put(run.run_id, value)      # final: the result, if any, was handed over
        out["outputs"] = value
    return out


def _graph_definition(body: WorkflowIn) -> dict[str, Any]:
    return {"nodes": body.definition.nodes, "edges": body.definition.edges,
            "metadata": body.metadata.model_dump()}


# -- workflows ---------------------------------------------------------------------------------
@router.get("/workflows", tags=["workflows"])
async def list_workflows(request: Request, page: int = Query(1, ge=1, le=1_000_000),
                         size: int = Query(20, ge=1, le=100), tag: str | None = None,
                         status: Literal["active", "inactive"] | None = None) -> Any:
    svc = services(request)

    def read() -> Any:
        project_id = _default_project_id(svc, create=False)
        if project_id is None:
            return [], 0
        offset = (page - 1) * size
        now = time.time()
        if status is None:
            rows, total = svc.catalog.list_pipelines(project_id=project_id, tag=tag, limit=size,
                                                     offset=offset)
            act = svc.catalog.pipeline_activity([p.id for p in rows])
            return [_summary(p, act[p.id], now) for p in rows], total
        every: list[PipelineRecord] = []
        while True:                      # status is computed, not stored: filter all, then page
            rows, total = svc.catalog.list_pipelines(project_id=project_id, tag=tag, limit=100,
                                                     offset=len(every))
            every.extend(rows)
            if not rows or len(every) >= total:
                break
        act = svc.catalog.pipeline_activity([p.id for p in every])
        kept = [s for s in (_summary(p, act[p.id], now) for p in every) if s["status"] == status]
        return kept[offset:offset + size], len(kept)
    items, total = await asyncio.to_thread(read)
    return {"workflows": items, "total": total, "page": page, "size": size}


@router.get("/workflows/{workflow_id}", tags=["workflows"])
async def get_workflow(request: Request, workflow_id: str) -> Any:
    svc = services(request)
    return await asyncio.to_thread(lambda: _workflow(svc, svc.catalog.get_pipeline(workflow_id)))


@router.post("/workflows/{workflow_id}", status_code=201, tags=["workflows"])
async def create_workflow(request: Request, body: WorkflowIn,
                          workflow_id: str = WorkflowId) -> Any:
    svc = services(request)

    def write() -> Any:
        graph = svc.runs.normalize(_graph_definition(body))
        project_id = _default_project_id(svc, create=True)
        assert project_id is not None
        p = svc.catalog.create_pipeline(project_id, body.name, graph,
                                        description=body.metadata.description,
                                        tags=body.metadata.tags, pipeline_id=workflow_id)
        return _workflow(svc, p)
    return await asyncio.to_thread(write)


@router.put("/workflows/{workflow_id}", tags=["workflows"])
async def update_workflow(request: Request, body: WorkflowIn, workflow_id: str) -> Any:
    svc = services(request)

    def write() -> Any:
        current = svc.catalog.get_pipeline(workflow_id)
        if is_python(current.definition):
            raise DefinitionError("this workflow is Python code loaded by the server; its "
                                  "definition changes when its module is reloaded",
                                  [{"field": "definition",
                                    "message": "a Python pipeline cannot be replaced over REST"}])
        graph = svc.runs.normalize(_graph_definition(body))
        p = svc.catalog.update_pipeline(workflow_id, name=body.name, definition=graph,
                                        description=body.metadata.description,
                                        tags=body.metadata.tags)
        return _workflow(svc, p)
    return await asyncio.to_thread(write)


@router.delete("/workflows/{workflow_id}", tags=["workflows"])
async def delete_workflow(request: Request, workflow_id: str) -> Any:
    await asyncio.to_thread(services(request).catalog.delete_pipeline, workflow_id)
    return {"id": workflow_id, "deleted": True}


# -- executions --------------------------------------------------------------------------------
@router.post("/executions", status_code=201, tags=["executions"])
async def create_execution(request: Request, body: ExecutionIn) -> Any:
    svc = services(request)
    config = body.config.model_dump(exclude_none=True)

    def write() -> Any:
        pipe = svc.catalog.find_pipeline(body.workflow_id)
        run = svc.runs.create(pipe, params=body.inputs, config=config)
        run = svc.runs.start(run.run_id)
        return {"execution_id": run.run_id, "workflow_id": run.pipeline_id,
                "status": wf.execution_status(run.state), "started_at": iso(run.started_at),
                "progress": wf.node_progress(svc.runs.progress(run))}
    return await asyncio.to_thread(write)


@router.get("/executions/{execution_id}", tags=["executions"])
async def get_execution(request: Request, execution_id: str) -> Any:
    svc = services(request)
    return await asyncio.to_thread(lambda: _execution(svc, svc.catalog.get_run(execution_id)))


@router.post("/executions/{execution_id}/stop", tags=["executions"])
async def stop_execution(request: Request, execution_id: str) -> Any:
    svc = services(request)
    run = await wf.stop_run(svc.runs, svc.hub, execution_id, "stopped over the API")
    return await asyncio.to_thread(_execution, svc, run, outputs=False)


@router.get("/executions/{execution_id}/logs", tags=["executions"])
async def execution_logs(request: Request, execution_id: str,
                         component_id: str | None = Query(None, description="node id or component name"),
                         level: str | None = Query(None, description="debug, info, warning, error"),
                         start_time: str | None = Query(None, description="ISO-8601, inclusive"),
                         end_time: str | None = Query(None, description="ISO-8601, inclusive"),
                         limit: int = Query(1000, ge=1, le=1000), offset: int = Query(0, ge=0, le=2**62)) -> Any:
    svc = services(request)
    since = parse_iso(start_time, "start_time") if start_time is not None else None
    until = parse_iso(end_time, "end_time") if end_time is not None else None

    def read() -> Any:
        svc.catalog.get_run(execution_id)
        try:
            return svc.catalog.list_logs(execution_id, component=component_id, level=level,
                                         since=since, until=until, limit=limit, offset=offset)
        except ValidationError as exc:
            raise ApiError(422, str(exc), details=[{"field": "level", "message": str(exc)}]) from exc
    rows, total = await asyncio.to_thread(read)
    return {"execution_id": execution_id, "total": total, "limit": limit, "offset": offset,
            "logs": [{"timestamp": iso(e.at), "level": e.level.lower(), "message": e.message,
                      "component_id": e.node_id} for e in rows]}


# -- monitoring --------------------------------------------------------------------------------
@router.get("/graph/execution/{execution_id}", tags=["monitoring"])
async def execution_graph(request: Request, execution_id: str) -> Any:
    svc = services(request)
    graph = await asyncio.to_thread(wf.execution_graph, svc.catalog, execution_id)
    for node in graph["nodes"]:
        node["started_at"], node["completed_at"] = iso(node["started_at"]), iso(node["completed_at"])
    return {"execution_id": execution_id, **graph}


@router.get("/metrics/components/{component_id}", tags=["monitoring"])
async def component_metrics(request: Request, component_id: str) -> Any:
    svc = services(request)
    return await asyncio.to_thread(wf.component_metrics, svc.catalog, component_id,
                                   registered=svc.runs.known_operation(component_id))
