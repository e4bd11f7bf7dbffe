"""The job manager's REST face (stream-engine document): a FastAPI router over a ``JobManager``.

Mounted by ``twingraph server`` (whose middleware authenticates every request before a route
runs) or served alone by ``twingraph stream jobmanager --port 8081`` (loopback by default).
Routes: ``POST /jobs/submit``, ``GET /jobs``, ``GET /jobs/{job_id}/status``,
``POST /jobs/{job_id}/cancel?with_savepoint=``, ``GET /jobs/{job_id}/metrics``,
``POST /jobs/{job_id}/savepoint``, ``GET /taskmanagers``, ``GET /cluster/metrics``.
Submission: an entry point as JSON (``{"entrypoint": "module:function", "args": {...}}``; only
stream jobs are called, see ``entrypoints.py``: 422 naming the entry point otherwise), or the
document's multipart ``job_file`` holding a serialized (cloudpickled) ``JobGraph`` — which is
code, so it is accepted only when ``accept_graphs`` allows the caller (the server: an ``admin``
with auth required), is bounded to ``MAX_GRAPH_BYTES``, and is read only after that check; the
stand-alone job manager refuses it (403, before reading the body).
Every figure is measured by the running job (see ``JobRun.metrics``); none is a constant. The
stand-alone app also serves ``GET /metrics`` (Prometheus, see ``twingraph.stream.prometheus``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from pydantic import ValidationError as PydanticValidationError
from starlette.concurrency import run_in_threadpool

from twingraph.errors import ConfigurationError, NotFoundError, StreamError, ValidationError
from twingraph.stream.jobs import JobManager, JobRecord

MAX_ARGS_BYTES = 64 * 1024
#: Largest serialized job graph accepted (the document's ``job_file``).
MAX_GRAPH_BYTES = 16 * 1024 * 1024


class SubmitJob(BaseModel):
    entrypoint: str = Field(max_length=300, description="package.module:function returning a StreamExecutionEnvironment")
    args: dict[str, Any] = Field(default_factory=dict, description="JSON keyword arguments for the function")
    restore_from: str | None = Field(default=None, max_length=4096,
                                     description="checkpoint/savepoint directory, or 'latest'")


def _status(rec: JobRecord) -> dict[str, Any]:
    run = rec.client.run
    return {"job_id": rec.job_id, "status": run.status.value, "start_time": run.start_time_ms,
            "end_time": run.end_time_ms, "metrics": run.metrics() if run.start_time_ms else {},
            "error": repr(run.error) if run.error else None}


async def _bounded_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request larger than {limit} bytes")
    return bytes(body)


async def _job_file(request: Request) -> bytes:
    """The ``job_file`` part of a multipart body of at most ``MAX_GRAPH_BYTES``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_GRAPH_BYTES + 64 * 1024:
        raise HTTPException(413, f"job graph larger than {MAX_GRAPH_BYTES} bytes")
    form = await request.form(max_files=1, max_fields=4)
    part = form.get("job_file")
    if part is None or isinstance(part, str):
        raise HTTPException(422, "multipart field job_file (the serialized job graph) is missing")
    blob = await part.read(MAX_GRAPH_BYTES + 1)
    if len(blob) > MAX_GRAPH_BYTES:
        raise HTTPException(413, f"job graph larger than {MAX_GRAPH_BYTES} bytes")
    return bytes(blob)


def _load_graph(blob: bytes) -> Any:
    import cloudpickle

    from twingraph.stream.graph import JobGraph
    try:
        graph = cloudpickle.loads(blob)      # accept_graphs allowed the caller (checked above)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the caller's bad input
        raise HTTPException(422, f"job_file is not a serialized job graph: {type(exc).__name__}") from None
    if not isinstance(graph, JobGraph):
        raise HTTPException(422, f"job_file holds a {type(graph).__name__}, not a JobGraph")
    return graph


def create_router(manager: JobManager, *,
                  accept_graphs: Callable[[Request], str | None] | None = None) -> APIRouter:
    """The routes over ``manager``. ``accept_graphs(request)`` returns None when the caller may
    submit a serialized job graph, else why not; without it none is accepted."""
    router = APIRouter(tags=["stream jobs"])

    def get(job_id: str) -> JobRecord:
        try:
            return manager.get(job_id)
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc

    def past(job_id: str) -> dict[str, Any] | None:
        """A job recorded by an earlier run of the job manager (registry only)."""
        for r in manager.history():
            if r.job_id == job_id:
                return {"job_id": r.job_id, "status": r.status, "start_time": r.start_time_ms,
                        "end_time": r.end_time_ms, "metrics": {}, "error": r.error}
        return None

    def started(submit: Any) -> dict[str, Any]:
        try:
            rec = submit()
        except ValidationError as exc:
            raise HTTPException(422, str(exc)) from exc
        except ConfigurationError as exc:
            raise HTTPException(409, str(exc)) from exc
        except StreamError as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"job_id": rec.job_id, "status": rec.client.status.value}

    @router.post("/jobs/submit", openapi_extra={"requestBody": {"content": {
        "application/json": {"schema": SubmitJob.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "required": ["job_file"],
                                           "properties": {"job_file": {"type": "string",
                                                                       "format": "binary"}}}}}}})
    async def submit(request: Request) -> dict[str, Any]:
        """An entry point (JSON), or the document's serialized job graph (multipart
        ``job_file``) — the latter only from a caller ``accept_graphs`` allows (see module doc)."""
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            refused = accept_graphs(request) if accept_graphs is not None else (
                "this job manager has no authentication")
            if refused:
                raise HTTPException(403, f"serialized job graphs are not accepted: {refused}; "
                                         "submit an entry point (JSON) instead")
            blob = await _job_file(request)
            graph = _load_graph(blob)
            return await run_in_threadpool(started, lambda: manager.submit_graph(graph, blob=blob))
        if ctype.split(";")[0].strip().lower() != "application/json":
            # A web page may POST text/plain to a loopback server without a CORS preflight:
            # only JSON declared as JSON starts a job (as on the routes with a body model).
            raise HTTPException(415, "submit an entry point as application/json, or a job "
                                     "graph as multipart/form-data")
        try:
            body = SubmitJob.model_validate_json(await _bounded_body(request, MAX_ARGS_BYTES * 2))
        except PydanticValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        if len(str(body.args)) > MAX_ARGS_BYTES:
            raise HTTPException(413, f"args larger than {MAX_ARGS_BYTES} bytes")
        return await run_in_threadpool(
            started, lambda: manager.submit(body.entrypoint, body.args, body.restore_from))

    @router.get("/jobs")
    def list_jobs() -> dict[str, Any]:
        past = [{"job_id": r.job_id, "job_name": r.job_name, "status": r.status, "start_time": r.start_time_ms}
                for r in manager.history()]
        return {"jobs": past + [{"job_id": r.job_id, "job_name": r.job_name, "status": r.client.status.value,
                                 "start_time": r.client.run.start_time_ms} for r in manager.jobs()]}

    @router.get("/jobs/{job_id}/status")
    def status(job_id: str) -> dict[str, Any]:
        return past(job_id) or _status(get(job_id))

    @router.post("/jobs/{job_id}/cancel")
    def cancel(job_id: str, with_savepoint: bool = False) -> dict[str, Any]:
        rec = get(job_id)
        try:
            path = manager.cancel(job_id, with_savepoint)
        except StreamError as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"job_id": job_id, "status": rec.client.status.value, "savepoint_path": path}

    @router.get("/jobs/{job_id}/metrics")
    def metrics(job_id: str) -> dict[str, Any]:
        m = get(job_id).client.metrics()
        return {"job_id": job_id, "throughput": m["throughput"], "latency_ms": m["latency_ms"],
                "backpressure_ratio": m["backpressure_ratio"], "checkpoint_duration_ms": m["checkpoint_duration_ms"],
                "checkpoints_completed": m["checkpoints_completed"], "watermark_lag_ms": m["watermark_lag_ms"],
                "records_in": m["records_in"]}

    @router.post("/jobs/{job_id}/savepoint")
    def savepoint(job_id: str) -> dict[str, Any]:
        get(job_id)
        try:
            path = manager.savepoint(job_id)
        except (ValidationError, StreamError) as exc:
            raise HTTPException(409, str(exc)) from exc
        m = re.search(r"sp-(\d+)$", path)
        return {"checkpoint_id": int(m.group(1)) if m else None, "location": path,
                "s3_location": None}  # filesystem storage: no S3 location

    @router.get("/taskmanagers")
    def taskmanagers() -> dict[str, Any]:
        return {"task_managers": manager.task_managers()}

    @router.get("/cluster/metrics")
    def cluster_metrics() -> dict[str, Any]:
        return manager.cluster_metrics()

    return router


def create_app(manager: JobManager | None = None) -> FastAPI:
    """A stand-alone job manager application (``twingraph stream jobmanager``)."""
    manager = manager or JobManager()
    app = FastAPI(title="TwinGraph stream job manager")
    app.state.job_manager = manager

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default handler echoes the input, and fails on a non-UTF-8 body (a pickle)
        return JSONResponse({"detail": [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                                        for e in exc.errors()]}, status_code=422)

    app.include_router(create_router(manager))

    from prometheus_client import CollectorRegistry, generate_latest

    from twingraph.stream.prometheus import StreamCollector

    registry = CollectorRegistry()
    registry.register(StreamCollector(lambda: [r.client.run for r in manager.jobs()]))

    @app.get("/metrics", include_in_schema=False)
    def metrics_endpoint() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")
    return app
