"""``TwinGraphClient``: the blocking SDK over httpx.

    with TwinGraphClient("http://localhost:8000", api_key="...") as client:
        wid = client.workflows.create(wf)
        execution = client.executions.create(workflow_id=wid, inputs={"n": 3})
        done = client.executions.wait_for_completion(execution.id, timeout=60)
        print(done.status, done.outputs)

Resources: ``workflows``, ``executions``, ``metrics`` (the ``/api`` face) and ``projects``,
``pipelines``, ``runs``, ``schedules`` (the ``/api/v1`` face), plus ``health()``, ``info()``,
``statistics()``. Errors are the typed exceptions of ``twingraph.client.errors``.
"""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

import httpx

from twingraph.client import _calls
from twingraph.client._calls import Call
from twingraph.client._ops import SyncGroup, sync_op
from twingraph.client._resources import (
    JSON,
    DynamicCalls,
    ExecutionCalls,
    MetricCalls,
    PipelineCalls,
    ProjectCalls,
    RunCalls,
    ScheduleCalls,
    ServerCalls,
    WorkflowCalls,
)
from twingraph.client._wait import WaitMode, wait_sync, ws_url
from twingraph.client.errors import RequestTimeout, TransportError
from twingraph.client.models import Execution

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0


class Workflows(SyncGroup):
    list = sync_op(WorkflowCalls.list)
    get = sync_op(WorkflowCalls.get)
    create = sync_op(WorkflowCalls.create)
    update = sync_op(WorkflowCalls.update)
    delete = sync_op(WorkflowCalls.delete)


class Executions(SyncGroup):
    create = sync_op(ExecutionCalls.create)
    get_status = sync_op(ExecutionCalls.get_status)
    stop = sync_op(ExecutionCalls.stop)
    get_logs = sync_op(ExecutionCalls.get_logs)
    graph = sync_op(ExecutionCalls.graph)

    def wait_for_completion(self, execution_id: str, timeout: float = 1800.0,
                            mode: WaitMode = "auto") -> Execution:
        """Block until the execution ends (``/ws`` events; polling if the socket fails);
        returns its final status. Raises ``WaitTimeout`` after ``timeout`` seconds."""
        client = self._client
        assert isinstance(client, TwinGraphClient)
        return wait_sync(client.ws_url, client.auth_headers, execution_id, timeout,
                         lambda: self.get_status(execution_id), mode)


class Dynamic(SyncGroup):
    execute = sync_op(DynamicCalls.execute)
    progress = sync_op(DynamicCalls.progress)
    cancel = sync_op(DynamicCalls.cancel)


class Metrics(SyncGroup):
    component = sync_op(MetricCalls.component)


class Projects(SyncGroup):
    list = sync_op(ProjectCalls.list)
    get = sync_op(ProjectCalls.get)
    create = sync_op(ProjectCalls.create)
    update = sync_op(ProjectCalls.update)
    delete = sync_op(ProjectCalls.delete)
    statistics = sync_op(ProjectCalls.statistics)


class Pipelines(SyncGroup):
    list = sync_op(PipelineCalls.list)
    get = sync_op(PipelineCalls.get)
    create = sync_op(PipelineCalls.create)
    update = sync_op(PipelineCalls.update)
    delete = sync_op(PipelineCalls.delete)
    versions = sync_op(PipelineCalls.versions)


class Runs(SyncGroup):
    create = sync_op(RunCalls.create)
    start = sync_op(RunCalls.start)
    cancel = sync_op(RunCalls.cancel)
    get = sync_op(RunCalls.get)
    list = sync_op(RunCalls.list)
    tasks = sync_op(RunCalls.tasks)
    logs = sync_op(RunCalls.logs)

    def wait(self, run_id: str, timeout: float = 1800.0, mode: WaitMode = "auto") -> JSON:
        """Block until the run is SUCCESS, FAILED or CANCELLED; returns the run."""
        client = self._client
        assert isinstance(client, TwinGraphClient)
        done = wait_sync(client.ws_url, client.auth_headers, run_id, timeout,
                         lambda: Execution.from_api(self.get(run_id)), mode)
        return done.raw


class Schedules(SyncGroup):
    create = sync_op(ScheduleCalls.create)
    list = sync_op(ScheduleCalls.list)
    get = sync_op(ScheduleCalls.get)
    update = sync_op(ScheduleCalls.update)
    enable = sync_op(ScheduleCalls.enable)
    disable = sync_op(ScheduleCalls.disable)
    delete = sync_op(ScheduleCalls.delete)
    backfill = sync_op(ScheduleCalls.backfill)


class _Server(SyncGroup):
    health = sync_op(ServerCalls.health)
    info = sync_op(ServerCalls.info)
    statistics = sync_op(ServerCalls.statistics)


class TwinGraphClient:
    """Blocking client. ``api_key`` is sent as ``X-API-Key``; ``auth_token`` (with or without
    its ``Bearer `` prefix) as ``Authorization: Bearer ...``. ``timeout`` is httpx's per-request
    timeout in seconds. Use it as a context manager, or call ``close()``."""

    def __init__(self, base_url: str = "http://localhost:8000", api_key: str | None = None,
                 auth_token: str | None = None, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
                 *, headers: dict[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.auth_headers = _calls.headers(api_key, auth_token)
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport,
                                  headers={**self.auth_headers, **(headers or {})})
        self.base_url = self._http.base_url
        self.ws_url = ws_url(self.base_url)
        self.workflows = Workflows(self)
        self.executions = Executions(self)
        self.metrics = Metrics(self)
        self.dynamic = Dynamic(self)
        self.projects = Projects(self)
        self.pipelines = Pipelines(self)
        self.runs = Runs(self)
        self.schedules = Schedules(self)
        self._server = _Server(self)

    def health(self) -> JSON:
        return self._server.health()

    def info(self) -> JSON:
        return self._server.info()

    def statistics(self) -> JSON:
        return self._server.statistics()

    def _send(self, call: Call[T]) -> T:
        try:
            if call.has_body:
                response = self._http.request(call.method, call.path, params=call.params,
                                              json=call.body)
            else:
                response = self._http.request(call.method, call.path, params=call.params)
        except httpx.TimeoutException as exc:
            raise RequestTimeout(f"{call.method} {call.path}: no answer in time ({exc})") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"{call.method} {call.path}: {type(exc).__name__}: {exc}") from exc
        return _calls.decode(call, response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TwinGraphClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TwinGraphClient({str(self.base_url)!r})"


__all__ = ["TwinGraphClient"]
