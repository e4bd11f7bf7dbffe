"""Streaming on the server: the job manager's routes (``/jobs``, ``/taskmanagers``,
``/cluster/metrics``) and the Tauro face (``/api/v1/stream/run|status|stop``) on ONE
``JobManager`` whose jobs and checkpoints are recorded in the metadata store.

Submission is by entry point, ``module:function`` naming a stream job (a function decorated
``@stream_job`` or annotated ``-> StreamExecutionEnvironment``, ``twingraph.stream.entrypoints``);
on the server the module must be one the operator loaded (``--load``) — a request never makes
the server import a module of its choosing, nor call anything in it but a stream job. The
document's serialized job graph (multipart ``job_file``) is accepted only from an ``admin``
caller of a server with auth required (``admin_caller``). A Tauro ``pipeline`` may also be just
the name of a stream job in a loaded module. Its ``config`` is an object, or a YAML/JSON file
under the server's working directory, and becomes the function's keyword arguments.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from twingraph.errors import ConfigurationError, NotFoundError, StreamError, ValidationError
from twingraph.server.deps import services
from twingraph.server.envelope import ERROR_RESPONSES, ApiError, iso, ok
from twingraph.service import Services
from twingraph.stream.checkpoints import CheckpointStorage
from twingraph.stream.entrypoints import is_stream_job
from twingraph.stream.jobs import JobManager, JobRecord

MAX_CONFIG_BYTES = 64 * 1024


class LoadedOnly(JobManager):
    """A job manager that runs entry points of loaded modules only."""

    def __init__(self, allowed: set[str], **kw: Any) -> None:
        super().__init__(**kw)
        self.allowed = allowed

    def submit(self, entrypoint: str, args: dict[str, Any] | None = None,
               restore_from: str | None = None, *, job_id: str | None = None) -> JobRecord:
        module = entrypoint.partition(":")[0]
        if module not in self.allowed:
            raise ValidationError(
                f"module {module!r} is not loaded on this server (loaded: "
                f"{', '.join(sorted(self.allowed)) or 'none'}); start it with --load {module}")
        if restore_from not in (None, "latest") and not self._recorded(str(restore_from)):
            # Restoring reads operator state back (pickled user state): only from a checkpoint
            # or savepoint this job manager wrote itself, never from a path a client names.
            raise ValidationError("restore_from must be 'latest' or a checkpoint/savepoint "
                                  "recorded by this server (see GET /jobs/{job_id}/status)")
        return super().submit(entrypoint, args, restore_from, job_id=job_id)

    def approve_restore(self, graph: Any, restore_from: str | None) -> str | None:
        # 'latest' is the newest checkpoint of the job's checkpoint directory, which the
        # client's arguments choose: it is resolved here, and only a checkpoint this server
        # wrote and recorded is restored (a file planted there would be unpickled as state).
        if restore_from != "latest":
            return restore_from
        directory = graph.checkpoint.directory
        if directory is None or not Path(directory).is_dir():
            return restore_from         # nothing to restore from: the job says so itself
        latest = CheckpointStorage(directory).latest()
        if latest is None:
            return None
        if not self._recorded(str(latest)):
            raise ValidationError(f"restore_from='latest' found {latest}, which is not a "
                                  "checkpoint this server recorded")
        return str(latest)

    def _recorded(self, path: str) -> bool:
        if self.registry is None:
            return False
        try:
            wanted = Path(path).resolve()
        except (OSError, ValueError):
            return False
        return any(Path(c.path).resolve() == wanted
                   for job in self.registry.jobs() for c in self.registry.checkpoints(job.job_id))


def wire_stream(svc: Services) -> LoadedOnly:
    """Create the server's job manager, its routes, its metrics; resume jobs on start."""
    from twingraph.stores.metadata.stream_jobs import SQLStreamJobStore
    from twingraph.stream.jobmanager import create_router
    allowed: set[str] = set()
    manager = LoadedOnly(allowed, registry=SQLStreamJobStore(svc.catalog.store),
                         graph_dir=svc.settings.home / "stream-graphs")
    svc.extras["stream"] = manager
    svc.extras["stream_modules"] = allowed
    svc.extras.setdefault("routers", []).extend(
        [create_router(manager, accept_graphs=admin_caller), router])
    svc.extras.setdefault("start", []).append(manager.recover)
    return manager


#: The role a caller needs to submit a serialized job graph: unpickling it runs the caller's
#: code in this process, which is more than ``write`` (submit work the operator installed) grants.
GRAPH_ROLE = "admin"


def admin_caller(request: Request) -> str | None:
    """Serialized job graphs are code: only from an ``admin`` the auth middleware authenticated.

    A server without auth refuses them too, although its anonymous principal holds every role:
    nobody is identified there, and a multipart POST is a request any web page may send to
    127.0.0.1 without a CORS preflight (decision 0022, 2026-12-05)."""
    if request.app.state.auth_mode != "required":
        return "the server runs without authentication (set TWINGRAPH_AUTH=required)"
    principal = getattr(request.state, "principal", None)
    if principal is None or getattr(principal, "kind", "anonymous") == "anonymous":
        return "the caller is not authenticated"
    if not principal.allows(GRAPH_ROLE):
        return (f"{principal.id} lacks the '{GRAPH_ROLE}' role (a serialized job graph is code; "
                "a write key submits entry points)")
    return None


def _manager(request: Request) -> LoadedOnly:
    manager: LoadedOnly = services(request).extras["stream"]
    return manager


router = APIRouter(prefix="/api/v1/stream", tags=["streaming"], responses=ERROR_RESPONSES)


class StreamRun(BaseModel):
    model_config = ConfigDict(extra="ignore")
    pipeline: str = Field(min_length=1, max_length=300,
                          description="module:function, or a function name in a loaded module")
    config: str | dict[str, Any] | None = Field(
        None, description="keyword arguments: an object, or a YAML/JSON file path under the "
                          "server's working directory")
    mode: Literal["async", "sync"] = "async"
    timeout: float = Field(300.0, gt=0, le=86400, description="sync mode: seconds to wait")
    restore_from: str | None = Field(None, max_length=4096)


class StreamStop(BaseModel):
    model_config = ConfigDict(extra="ignore")
    execution_id: str = Field(min_length=1)
    timeout: float = Field(60.0, gt=0, le=3600)
    with_savepoint: bool = False


def resolve(manager: LoadedOnly, pipeline: str) -> str:
    if ":" in pipeline:
        return pipeline
    namespaces = {m: vars(sys.modules[m]) for m in sorted(manager.allowed) if m in sys.modules}
    having = [m for m, ns in namespaces.items() if pipeline in ns]
    found = [m for m in having if is_stream_job(namespaces[m][pipeline])]
    if not found and having:        # there, but not a stream job: submit() refuses it by name
        return f"{having[0]}:{pipeline}"
    if not found:
        raise NotFoundError(f"no stream pipeline {pipeline!r} in the loaded modules")
    if len(found) > 1:
        raise ValidationError(f"{pipeline!r} is in several loaded modules ({', '.join(found)}); "
                              "name it as module:function")
    return f"{found[0]}:{pipeline}"


def read_config(config: str | dict[str, Any] | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, dict):
        data: Any = config
    else:
        base = Path.cwd().resolve()
        try:
            path = (base / config).resolve()
        except (OSError, ValueError) as exc:
            raise ValidationError(f"config is not a usable path: {exc}") from exc
        if not path.is_relative_to(base):
            raise ValidationError(f"config {config!r} is outside the server's working directory")
        if not path.is_file():
            raise NotFoundError(f"config file {config!r} not found")
        try:
            text = path.read_text()[:MAX_CONFIG_BYTES + 1]
            if len(text) > MAX_CONFIG_BYTES:
                raise ValidationError(f"config file larger than {MAX_CONFIG_BYTES} bytes")
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
            raise ValidationError(f"config file {config!r} cannot be read: "
                                  f"{type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ValidationError("config must be a mapping of keyword arguments")
    return data


def view(rec: JobRecord) -> dict[str, Any]:
    run = rec.client.run
    return {"execution_id": rec.job_id, "job_name": rec.job_name, "pipeline": rec.entrypoint,
            "status": run.status.value,
            "started_at": iso(run.start_time_ms / 1000) if run.start_time_ms else None,
            "ended_at": iso(run.end_time_ms / 1000) if run.end_time_ms else None,
            "metrics": run.metrics() if run.start_time_ms else {},
            "error": repr(run.error) if run.error else None}


async def _wait(rec: JobRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not rec.client.status.terminal:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@router.post("/run", status_code=201)
async def run_stream(request: Request, body: StreamRun) -> Any:
    manager = _manager(request)

    def submit() -> JobRecord:
        entrypoint = resolve(manager, body.pipeline)
        try:
            return manager.submit(entrypoint, read_config(body.config), body.restore_from)
        except ConfigurationError as exc:             # all task slots busy
            raise ApiError(409, str(exc)) from exc
        except StreamError as exc:       # e.g. a checkpoint directory that cannot be made
            raise ValidationError(str(exc)) from exc
    rec = await asyncio.to_thread(submit)
    if body.mode == "sync" and not await _wait(rec, body.timeout):
        raise ApiError(504, f"stream execution {rec.job_id} still running after {body.timeout:g} s",
                       details=[{"field": "timeout", "message": "the job keeps running; stop it "
                                 "with POST /api/v1/stream/stop"}])
    return ok(request, view(rec))


@router.get("/status")
async def stream_status(request: Request, execution_id: str | None = None) -> Any:
    manager = _manager(request)
    if execution_id is not None:
        return ok(request, view(manager.get(execution_id)))
    return ok(request, {"executions": [view(r) for r in manager.jobs()]})


@router.post("/stop")
async def stop_stream(request: Request, body: StreamStop) -> Any:
    manager = _manager(request)
    rec = manager.get(body.execution_id)
    if rec.client.status.terminal:
        raise ApiError(409, f"stream execution {rec.job_id} already ended ({rec.client.status.value})")
    savepoint = await asyncio.to_thread(manager.cancel, rec.job_id, body.with_savepoint)
    if not await _wait(rec, body.timeout):
        raise ApiError(504, f"stream execution {rec.job_id} did not stop within {body.timeout:g} s")
    return ok(request, {**view(rec), "savepoint_path": savepoint})
