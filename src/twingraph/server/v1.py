"""The Tauro face, ``/api/v1``: projects, pipelines (with versions) and runs.

Shapes follow tauro-api.md: the ``{data, meta}`` envelope, list ``meta`` with total/limit/offset,
``limit`` ≤ 100, ``sort`` like ``-created_at``, run states PENDING/RUNNING/SUCCESS/FAILED/
CANCELLED. Pipelines are implied by the document but not listed; their routes are ours
(``/projects/{id}/pipelines``, ``/pipelines/{id}``, ``/pipelines/{id}/versions``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from twingraph.server import views
from twingraph.server.deps import services
from twingraph.server.envelope import ERROR_RESPONSES, ok, page

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)

Limit = Query(50, ge=1, le=100, description="max results (≤ 100)")
Offset = Query(0, ge=0, le=2**62, description="results to skip")
Sort = Query(None, description="sort field, '-' for descending (default -created_at)")


class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    owner: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ProjectPatch(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = None
    owner: str | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("name", "metadata")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        """Omitted means unchanged; an explicit null is refused (a project always has both).
        Defaults are not validated, so this sees only values the client sent."""
        if value is None:
            raise ValueError("may not be null")
        return value


class PipelineIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    nodes: list[dict[str, Any]] | None = None
    edges: list[dict[str, Any]] | None = None
    definition: dict[str, Any] | None = None
    tags: list[str] = Field(default_factory=list)


class PipelinePatch(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = None
    nodes: list[dict[str, Any]] | None = None
    edges: list[dict[str, Any]] | None = None
    definition: dict[str, Any] | None = None
    tags: list[str] | None = None


class RunIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    project_id: str | None = Field(None, min_length=1)
    pipeline_id: str = Field(min_length=1, description="pipeline id, or its name in the project")
    params: dict[str, Any] = Field(default_factory=dict)
    tags: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)


class StartIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    timeout_seconds: float | None = Field(None, gt=0)


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    reason: str | None = None


def _definition(body: PipelineIn | PipelinePatch) -> dict[str, Any] | None:
    if body.definition is not None:
        return body.definition
    if body.nodes is None and body.edges is None:
        return None
    return {"nodes": body.nodes or [], "edges": body.edges or []}


# -- the hot read first: routes are matched in order ---------------------------------
@router.get("/runs/{run_id}", tags=["runs"])
async def get_run(request: Request, run_id: str) -> Any:
    # The hot read (clients poll it): two indexed reads on a raw connection, well under a
    # millisecond, done on the event loop without a thread hop; JSON rendered directly.
    run, progress = services(request).runs.status(run_id)
    return JSONResponse(ok(request, views.run(run, progress)))


def get_run_route() -> Any:
    """The routed ``GET /runs/{run_id}`` (the fast path labels its metrics with it)."""
    return next(r for r in router.routes if getattr(r, "path", "") == "/api/v1/runs/{run_id}")


# -- projects ------------------------------------------------------------------------------
@router.get("/projects", tags=["projects"])
async def list_projects(request: Request, owner: str | None = None, limit: int = Limit,
                        offset: int = Offset, sort: str | None = Sort) -> Any:
    rows, total = await asyncio.to_thread(services(request).catalog.list_projects,
                                          owner=owner, limit=limit, offset=offset, sort=sort)
    return page(request, [views.project(p) for p in rows], total=total, limit=limit, offset=offset)


@router.post("/projects", status_code=201, tags=["projects"])
async def create_project(request: Request, body: ProjectIn) -> Any:
    p = await asyncio.to_thread(services(request).catalog.create_project, body.name,
                                description=body.description, owner=body.owner,
                                metadata=body.metadata)
    return ok(request, views.project(p, []))


@router.get("/projects/{project_id}", tags=["projects"])
async def get_project(request: Request, project_id: str) -> Any:
    cat = services(request).catalog

    def read() -> Any:
        p = cat.resolve_project(project_id)
        pipes, _ = cat.list_pipelines(project_id=p.id, limit=100)
        return views.project(p, pipes)
    return ok(request, await asyncio.to_thread(read))


@router.put("/projects/{project_id}", tags=["projects"])
async def update_project(request: Request, project_id: str, body: ProjectPatch) -> Any:
    cat = services(request).catalog
    p = await asyncio.to_thread(lambda: cat.update_project(
        cat.resolve_project(project_id).id, body.model_dump(exclude_unset=True)))
    return ok(request, views.project(p))


@router.delete("/projects/{project_id}", tags=["projects"])
async def delete_project(request: Request, project_id: str) -> Any:
    cat = services(request).catalog

    def delete() -> str:
        pid = cat.resolve_project(project_id).id
        cat.delete_project(pid)
        return pid
    return ok(request, {"id": await asyncio.to_thread(delete), "deleted": True})


@router.get("/projects/{project_id}/statistics", tags=["projects"])
async def project_statistics(request: Request, project_id: str) -> Any:
    cat = services(request).catalog
    return ok(request, await asyncio.to_thread(
        lambda: cat.project_statistics(cat.resolve_project(project_id).id)))


# -- pipelines -----------------------------------------------------------------------------
@router.get("/projects/{project_id}/pipelines", tags=["pipelines"])
async def list_pipelines(request: Request, project_id: str, tag: str | None = None,
                         limit: int = Limit, offset: int = Offset,
                         sort: str | None = Sort) -> Any:
    cat = services(request).catalog

    def read() -> Any:
        pid = cat.resolve_project(project_id).id
        return cat.list_pipelines(project_id=pid, tag=tag, limit=limit, offset=offset,
                                  sort=sort)
    rows, total = await asyncio.to_thread(read)
    return page(request, [views.pipeline(p) for p in rows], total=total, limit=limit,
                offset=offset)


@router.post("/projects/{project_id}/pipelines", status_code=201, tags=["pipelines"])
async def create_pipeline(request: Request, project_id: str, body: PipelineIn) -> Any:
    svc = services(request)
    definition = _definition(body)

    def write() -> Any:
        pid = svc.catalog.resolve_project(project_id).id
        graph = svc.runs.normalize(definition if definition is not None else {})
        return svc.catalog.create_pipeline(pid, body.name, graph,
                                           description=body.description, tags=body.tags)
    return ok(request, views.pipeline(await asyncio.to_thread(write)))


@router.get("/pipelines/{pipeline_id}", tags=["pipelines"])
async def get_pipeline(request: Request, pipeline_id: str) -> Any:
    return ok(request, views.pipeline(
        await asyncio.to_thread(services(request).catalog.get_pipeline, pipeline_id)))


@router.put("/pipelines/{pipeline_id}", tags=["pipelines"])
async def update_pipeline(request: Request, pipeline_id: str, body: PipelinePatch) -> Any:
    svc = services(request)
    definition = _definition(body)

    def write() -> Any:
        current = svc.catalog.get_pipeline(pipeline_id)
        graph = None
        if definition is not None:
            if current.definition.get("kind") == "python":
                from twingraph.service.definitions import DefinitionError
                raise DefinitionError("a Python pipeline's definition is its code; reload it")
            graph = svc.runs.normalize(definition)
        return svc.catalog.update_pipeline(pipeline_id, name=body.name, definition=graph,
                                           description=body.description, tags=body.tags)
    return ok(request, views.pipeline(await asyncio.to_thread(write)))


@router.delete("/pipelines/{pipeline_id}", tags=["pipelines"])
async def delete_pipeline(request: Request, pipeline_id: str) -> Any:
    await asyncio.to_thread(services(request).catalog.delete_pipeline, pipeline_id)
    return ok(request, {"id": pipeline_id, "deleted": True})


@router.get("/pipelines/{pipeline_id}/versions", tags=["pipelines"])
async def pipeline_versions(request: Request, pipeline_id: str) -> Any:
    rows = await asyncio.to_thread(services(request).catalog.pipeline_versions, pipeline_id)
    return page(request, [views.version(v) for v in rows], total=len(rows), limit=len(rows),
                offset=0)


# -- runs ----------------------------------------------------------------------------------
@router.post("/runs", status_code=201, tags=["runs"])
async def create_run(request: Request, body: RunIn) -> Any:
    svc = services(request)

    def write() -> Any:
        project_id = None
        if body.project_id is not None:
            project_id = svc.catalog.resolve_project(body.project_id).id
        pipe = svc.catalog.find_pipeline(body.pipeline_id, project_id)
        run = svc.runs.create(pipe, params=body.params, tags=body.tags, config=body.config)
        return views.run(run, svc.runs.progress(run))
    return ok(request, await asyncio.to_thread(write))


@router.get("/runs", tags=["runs"])
async def list_runs(request: Request, project_id: str | None = None,
                    pipeline_id: str | None = None, state: str | None = None,
                    schedule_id: str | None = None, limit: int = Limit, offset: int = Offset,
                    sort: str | None = Sort) -> Any:
    svc = services(request)

    def read() -> Any:
        project = svc.catalog.resolve_project(project_id).name if project_id else None
        pid = svc.catalog.find_pipeline(pipeline_id).id if pipeline_id else None
        rows, total = svc.catalog.list_runs(project=project, pipeline_id=pid, state=state,
                                            schedule_id=schedule_id, limit=limit,
                                            offset=offset, sort=sort)
        return [views.run(r, svc.runs.progress(r)) for r in rows], total
    data, total = await asyncio.to_thread(read)
    return page(request, data, total=total, limit=limit, offset=offset)


@router.post("/runs/{run_id}/start", status_code=202, tags=["runs"])
async def start_run(request: Request, run_id: str,
                    body: StartIn | None = Body(None)) -> Any:
    svc = services(request)
    timeout = body.timeout_seconds if body is not None else None
    run = await asyncio.to_thread(svc.runs.start, run_id, timeout_seconds=timeout)
    return ok(request, {"status": "accepted", "run_id": run.run_id, "state": run.state.value,
                        "status_url": f"/api/v1/runs/{run.run_id}"})


@router.post("/runs/{run_id}/cancel", tags=["runs"])
async def cancel_run(request: Request, run_id: str, body: CancelIn | None = Body(None)) -> Any:
    svc = services(request)

    def write() -> Any:
        run = svc.runs.cancel(run_id, body.reason if body is not None else None)
        return views.run(run, svc.runs.progress(run))
    return ok(request, await asyncio.to_thread(write))


@router.get("/runs/{run_id}/tasks", tags=["runs"])
async def run_tasks(request: Request, run_id: str, limit: int = Query(100, ge=1, le=100),
                    offset: int = Offset) -> Any:
    svc = services(request)

    def read() -> Any:
        svc.catalog.get_run(run_id)
        counts = svc.catalog.store.task_counts(run_id)
        rows = svc.catalog.store.get_tasks(run_id, limit=limit, offset=offset)
        return [views.task(t) for t in rows], sum(counts.values())
    data, total = await asyncio.to_thread(read)
    return page(request, data, total=total, limit=limit, offset=offset)


@router.get("/runs/{run_id}/logs", tags=["runs"])
async def run_logs(request: Request, run_id: str, level: str | None = None,
                   limit: int = Query(100, ge=1, le=1000), offset: int = Offset) -> Any:
    svc = services(request)

    def read() -> Any:
        svc.catalog.get_run(run_id)
        rows = svc.catalog.store.get_logs(run_id, level=level, limit=limit, offset=offset)
        return rows, svc.catalog.count_logs(run_id, level=level)
    rows, total = await asyncio.to_thread(read)
    return page(request, [views.log(e) for e in rows], total=total, limit=limit, offset=offset)
