"""``AsyncAsyncTwinGraphClient``: the asyncio SDK over httpx (same resources as the blocking one).

    async with AsyncAsyncTwinGraphClient("http://localhost:8000") as client:
        execution = await client.executions.create_async(workflow_id="etl", inputs={"n": 3})
        result = await client.executions.wait_for_completion(execution.id, timeout=1800)
        print(result.status, result.outputs)

``wait_for_completion`` listens on ``/ws`` for the execution's terminal ``execution:update``
and polls (with backoff) only when the WebSocket cannot be used.

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
from twingraph.client._ops import AsyncGroup, async_op
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
from twingraph.client._wait import WaitMode, wait_async, ws_url
from twingraph.client.errors import RequestTimeout, TransportError
from twingraph.client.models import Execution

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0


class Workflows(AsyncGroup):
    list = async_op(WorkflowCalls.list)
    get = async_op(WorkflowCalls.get)
    create = async_op(WorkflowCalls.create)
    update = async_op(WorkflowCalls.update)
    delete = async_op(WorkflowCalls.delete)


class Executions(AsyncGroup):
    create = async_op(ExecutionCalls.create)
    create_async = async_op(ExecutionCalls.create)
    get_status = async_op(ExecutionCalls.get_status)
    stop = async_op(ExecutionCalls.stop)
    get_logs = async_op(ExecutionCalls.get_logs)
    graph = async_op(ExecutionCalls.graph)

    async def wait_for_completion(self, execution_id: str, timeout: float = 1800.0,
                                  mode: WaitMode = "auto") -> Execution:
        """Wait until the execution ends (``/ws`` events; polling if the socket fails);
        returns its final status. Raises ``WaitTimeout`` after ``timeout`` seconds."""
        client = self._client
        assert isinstance(client, AsyncTwinGraphClient)
        return await wait_async(client.ws_url, client.auth_headers, execution_id, timeout,
                                lambda: self.get_status(execution_id), mode)


class Dynamic(AsyncGroup):
    execute = async_op(DynamicCalls.execute)
    progress = async_op(DynamicCalls.progress)
    cancel = async_op(DynamicCalls.cancel)


class Metrics(AsyncGroup):
    component = async_op(MetricCalls.component)


class Projects(AsyncGroup):
    list = async_op(ProjectCalls.list)
    get = async_op(ProjectCalls.get)
    create = async_op(ProjectCalls.create)
    update = async_op(ProjectCalls.update)
    delete = async_op(ProjectCalls.delete)
    statistics = async_op(ProjectCalls.statistics)


class Pipelines(AsyncGroup):
    list = async_op(PipelineCalls.list)
    get = async_op(PipelineCalls.get)
    create = async_op(PipelineCalls.create)
    update = async_op(PipelineCalls.update)
    delete = async_op(PipelineCalls.delete)
    versions = async_op(PipelineCalls.versions)


class Runs(AsyncGroup):
    create = async_op(RunCalls.create)
    start = async_op(RunCalls.start)
    cancel = async_op(RunCalls.cancel)
    get = async_op(RunCalls.get)
    list = async_op(RunCalls.list)
    tasks = async_op(RunCalls.tasks)
    logs = async_op(RunCalls.logs)

    async def wait(self, run_id: str, timeout: float = 1800.0,
                   mode: WaitMode = "auto") -> JSON:
        """Wait until the run is SUCCESS, FAILED or CANCELLED; returns the run."""
        client = self._client
        assert isinstance(client, AsyncTwinGraphClient)
        async def status() -> Execution:
            return Execution.from_api(await self.get(run_id))
        done = await wait_async(client.ws_url, client.auth_headers, run_id, timeout, status, mode)
        return done.raw


class Schedules(AsyncGroup):
    create = async_op(ScheduleCalls.create)
    list = async_op(ScheduleCalls.list)
    get = async_op(ScheduleCalls.get)
    update = async_op(ScheduleCalls.update)
    enable = async_op(ScheduleCalls.enable)
    disable = async_op(ScheduleCalls.disable)
    delete = async_op(ScheduleCalls.delete)
    backfill = async_op(ScheduleCalls.backfill)


class _Server(AsyncGroup):
    health = async_op(ServerCalls.health)
    info = async_op(ServerCalls.info)
    statistics = async_op(ServerCalls.statistics)


class AsyncTwinGraphClient:
    """Asyncio client. ``api_key`` is sent as ``X-API-Key``; ``auth_token`` (with or without
    its ``Bearer `` prefix) as ``Authorization: Bearer ...``. ``timeout`` is httpx's per-request
    timeout in seconds. Use it as ``async with``, or await ``aclose()``."""

    def __init__(self, base_url: str = "http://localhost:8000", api_key: str | None = None,
                 auth_token: str | None = None, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
                 *, headers: dict[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.auth_headers = _calls.headers(api_key, auth_token)
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport,
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

    async def health(self) -> JSON:
        return await self._server.health()

    async def info(self) -> JSON:
        return await self._server.info()

    async def statistics(self) -> JSON:
        return await self._server.statistics()

    async def _send(self, call: Call[T]) -> T:
        try:
            if call.has_body:
                response = await self._http.request(call.method, call.path, params=call.params,
                                                    json=call.body)
            else:
                response = await self._http.request(call.method, call.path, params=call.params)
        except httpx.TimeoutException as exc:
            raise RequestTimeout(f"{call.method} {call.path}: no answer in time ({exc})") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"{call.method} {call.path}: {type(exc).__name__}: {exc}") from exc
        return _calls.decode(call, response)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncTwinGraphClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncTwinGraphClient({str(self.base_url)!r})"


__all__ = ["AsyncTwinGraphClient"]
