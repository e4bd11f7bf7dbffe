"""The Tauro face's schedules: ``/api/v1/schedules`` CRUD, enable/disable and backfill.

Backfill takes ``{"count": N}`` or ``{"start": ISO, "end": ISO}`` and answers with the
historical dates it created runs for (and the run ids); the runs start as the schedule's
``max_concurrency`` allows.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from twingraph.core.schedule import ScheduleRecord, logical_date
from twingraph.server.deps import services
from twingraph.server.envelope import ERROR_RESPONSES, ApiError, iso, ok, page, parse_iso
from twingraph.server.v1 import Limit, Offset, Sort
from twingraph.service import Services
from twingraph.service.schedules import ScheduledRuns
from twingraph.stores.metadata.catalog import PipelineRecord

router = APIRouter(prefix="/api/v1", tags=["schedules"], responses=ERROR_RESPONSES)

#: A run's timeout at most (ten years): larger values overflow the database's integers.
MAX_TIMEOUT_SECONDS = 10 * 365 * 24 * 3600


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    project_id: str | None = Field(None, min_length=1,
                                   description="omitted: the project of the pipeline (as for runs)")
    pipeline_id: str = Field(min_length=1)
    kind: Literal["CRON", "INTERVAL", "cron", "interval"]
    expression: str = Field(min_length=1)
    timezone: str = "UTC"
    enabled: bool = True
    max_concurrency: int = Field(1, ge=1, le=1000)
    timeout_seconds: int | None = Field(None, ge=1, le=MAX_TIMEOUT_SECONDS)
    overlap_policy: Literal["skip", "allow"] = "skip"
    catchup: bool = False
    params: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None


class SchedulePatch(BaseModel):
    model_config = ConfigDict(extra="ignore")
    kind: Literal["CRON", "INTERVAL", "cron", "interval"] | None = None
    expression: str | None = Field(None, min_length=1)
    timezone: str | None = None
    enabled: bool | None = None
    max_concurrency: int | None = Field(None, ge=1, le=1000)
    timeout_seconds: int | None = Field(None, ge=1, le=MAX_TIMEOUT_SECONDS)
    overlap_policy: Literal["skip", "allow"] | None = None
    catchup: bool | None = None
    params: dict[str, Any] | None = None
    description: str | None = None


class BackfillIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    # strict: a JSON integer only. Lax mode turned true into 1, "3" into 3 and 2.0 into 2,
    # each of which created runs; now they are the 422 VALIDATION_ERROR like any bad count.
    count: int | None = Field(None, ge=1, le=1000, strict=True)
    start: str | None = None
    end: str | None = None


def view(s: ScheduleRecord) -> dict[str, Any]:
    return {"id": s.id, "project_id": s.project_id, "pipeline_id": s.pipeline_id,
            "kind": s.kind.value, "expression": s.expression, "timezone": s.timezone,
            "enabled": s.enabled, "max_concurrency": s.max_concurrency,
            "timeout_seconds": s.timeout_seconds, "overlap_policy": s.overlap_policy.value,
            "catchup": s.catchup, "params": s.params, "description": s.description,
            "source": s.source.value, "next_run_at": iso(s.next_run_at),
            "last_run_at": iso(s.last_run_at), "last_run_id": s.last_run_id,
            "created_at": iso(s.created_at), "updated_at": iso(s.updated_at)}


def check_params(svc: Services, pipeline: PipelineRecord, params: dict[str, Any] | None) -> None:
    """Refuse (422) schedule params with which the pipeline's runs could never start: the
    firer would otherwise drop every fire of the schedule (logged only)."""
    svc.runs.check(pipeline, {**(params or {}), "logical_date": logical_date(0.0)})


def scheduled(request: Request) -> ScheduledRuns:
    sched: ScheduledRuns = services(request).extras["schedules"]
    return sched


@router.post("/schedules", status_code=201)
async def create_schedule(request: Request, body: ScheduleIn) -> Any:
    sched = scheduled(request)
    svc = services(request)
    fields = body.model_dump()
    fields["kind"] = fields["kind"].upper()

    def create() -> ScheduleRecord:
        # A schedule whose runs could never start is refused now, not dropped at each fire.
        project = svc.catalog.resolve_project(body.project_id) if body.project_id else None
        pipeline = svc.catalog.find_pipeline(body.pipeline_id, project.id if project else None)
        check_params(svc, pipeline, body.params)
        if project is None:
            fields["project_id"] = pipeline.project_id
        return sched.store.create(**fields)
    s = await asyncio.to_thread(create)
    return ok(request, view(s))


@router.get("/schedules")
async def list_schedules(request: Request, project_id: str | None = None,
                         pipeline_id: str | None = None, enabled: bool | None = None,
                         limit: int = Limit, offset: int = Offset, sort: str | None = Sort) -> Any:
    svc = services(request)
    sched = scheduled(request)

    def read() -> Any:
        pid = svc.catalog.resolve_project(project_id).id if project_id else None
        pipe = svc.catalog.find_pipeline(pipeline_id, pid).id if pipeline_id else None
        return sched.store.list(project_id=pid, pipeline_id=pipe, enabled=enabled, limit=limit,
                                offset=offset, sort=sort or "-created_at")
    rows, total = await asyncio.to_thread(read)
    return page(request, [view(s) for s in rows], total=total, limit=limit, offset=offset)


@router.get("/schedules/{schedule_id}")
async def get_schedule(request: Request, schedule_id: str) -> Any:
    return ok(request, view(await asyncio.to_thread(scheduled(request).store.get, schedule_id)))


@router.put("/schedules/{schedule_id}")
async def update_schedule(request: Request, schedule_id: str, body: SchedulePatch) -> Any:
    sched = scheduled(request)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("kind"):
        changes["kind"] = changes["kind"].upper()
    svc = services(request)

    def write() -> ScheduleRecord:
        if "params" in changes:         # as at creation: params its runs cannot start with
            current = sched.store.get(schedule_id)
            check_params(svc, svc.catalog.get_pipeline(current.pipeline_id), changes["params"])
        return sched.store.update(schedule_id, **changes)
    s = await asyncio.to_thread(write)
    return ok(request, view(s))


@router.post("/schedules/{schedule_id}/enable")
async def enable_schedule(request: Request, schedule_id: str) -> Any:
    s = await asyncio.to_thread(scheduled(request).store.set_enabled, schedule_id, True)
    return ok(request, view(s))


@router.post("/schedules/{schedule_id}/disable")
async def disable_schedule(request: Request, schedule_id: str) -> Any:
    s = await asyncio.to_thread(scheduled(request).store.set_enabled, schedule_id, False)
    return ok(request, view(s))


@router.delete("/schedules/{schedule_id}")
async def delete_schedule(request: Request, schedule_id: str) -> Any:
    await asyncio.to_thread(scheduled(request).store.delete, schedule_id)
    return ok(request, {"id": schedule_id, "deleted": True})


@router.post("/schedules/{schedule_id}/backfill", status_code=201)
async def backfill_schedule(request: Request, schedule_id: str, body: BackfillIn) -> Any:
    if (body.count is None) == (body.start is None):
        raise ApiError(422, "give either count or start (with an optional end)",
                       details=[{"field": "count", "message": "count or start, not both"}])
    if body.end is not None and body.start is None:
        raise ApiError(422, "end goes with start",
                       details=[{"field": "end", "message": "needs start"}])
    start = parse_iso(body.start, "start", bounded=True) if body.start else None
    end = parse_iso(body.end, "end", bounded=True) if body.end else None
    sched = scheduled(request)
    created = await asyncio.to_thread(lambda: sched.backfill(schedule_id, count=body.count,
                                                             start=start, end=end))
    # Dates spelled as the runs' own ``logical_date`` param, so the two compare equal.
    return ok(request, {"schedule_id": schedule_id, "count": len(created),
                        "dates": [logical_date(slot) for slot, _ in created],
                        "runs": [{"logical_date": logical_date(slot), "run_id": rid}
                                 for slot, rid in created]})
