"""Every SDK method once, as the ``Call`` it sends (see ``_calls``).

``Calls`` groups them by resource; ``TwinGraphClient`` and ``AsyncTwinGraphClient`` expose the
same groups and only decide how a ``Call`` travels (blocking or awaited).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from twingraph.client import _calls as c
from twingraph.client._calls import Call
from twingraph.client.models import Execution, Page
from twingraph.workflow import Workflow

WorkflowLike = Workflow | Mapping[str, Any]
JSON = dict[str, Any]


class WorkflowCalls:
    """``/api/workflows`` (TwinGraph face)."""

    @staticmethod
    def list(tag: str | None = None, status: str | None = None, page: int | None = None,
             size: int | None = None) -> Call[Page]:
        return Call("GET", "/api/workflows", c.query(tag=tag, status=status, page=page, size=size),
                    read=c.api_page("workflows"))

    @staticmethod
    def get(workflow_id: str) -> Call[JSON]:
        return Call("GET", f"/api/workflows/{c.seg(workflow_id)}", read=c.data)

    @staticmethod
    def create(workflow: WorkflowLike, workflow_id: str | None = None,
               name: str | None = None) -> Call[str]:
        wid = c.workflow_id_for(workflow, workflow_id)
        return Call("POST", f"/api/workflows/{c.seg(wid)}", body=c.workflow_body(workflow, name),
                    read=c.created_id(wid))

    @staticmethod
    def update(workflow_id: str, workflow: WorkflowLike, name: str | None = None) -> Call[JSON]:
        return Call("PUT", f"/api/workflows/{c.seg(workflow_id)}",
                    body=c.workflow_body(workflow, name), read=c.data)

    @staticmethod
    def delete(workflow_id: str) -> Call[JSON]:
        return Call("DELETE", f"/api/workflows/{c.seg(workflow_id)}", read=c.data)


class ExecutionCalls:
    """``/api/executions`` (TwinGraph face); an execution is a run."""

    @staticmethod
    def create(workflow_id: str, inputs: Mapping[str, Any] | None = None,
               config: Mapping[str, Any] | None = None) -> Call[Execution]:
        body: dict[str, Any] = {"workflow_id": workflow_id, "inputs": dict(inputs or {})}
        if config is not None:
            body["config"] = dict(config)
        return Call("POST", "/api/executions", body=body, read=c.execution)

    @staticmethod
    def get_status(execution_id: str) -> Call[Execution]:
        return Call("GET", f"/api/executions/{c.seg(execution_id)}", read=c.execution)

    @staticmethod
    def stop(execution_id: str) -> Call[JSON]:
        return Call("POST", f"/api/executions/{c.seg(execution_id)}/stop", body={},
                    read=c.data)

    @staticmethod
    def get_logs(execution_id: str, component_id: str | None = None, level: str | None = None,
                 start_time: str | None = None, end_time: str | None = None) -> Call[list[dict[str, Any]]]:
        return Call("GET", f"/api/executions/{c.seg(execution_id)}/logs",
                    c.query(component_id=component_id, level=level, start_time=start_time,
                            end_time=end_time), read=c.logs)

    @staticmethod
    def graph(execution_id: str) -> Call[JSON]:
        return Call("GET", f"/api/graph/execution/{c.seg(execution_id)}", read=c.data)


class MetricCalls:
    @staticmethod
    def component(component_id: str) -> Call[JSON]:
        return Call("GET", f"/api/metrics/components/{c.seg(component_id)}", read=c.data)


class ProjectCalls:
    """``/api/v1/projects``."""

    @staticmethod
    def list(owner: str | None = None, limit: int | None = None, offset: int | None = None,
             sort: str | None = None) -> Call[Page]:
        return Call("GET", "/api/v1/projects",
                    c.query(owner=owner, limit=limit, offset=offset, sort=sort), read=c.v1_page)

    @staticmethod
    def get(project_id: str) -> Call[JSON]:
        return Call("GET", f"/api/v1/projects/{c.seg(project_id)}", read=c.data)

    @staticmethod
    def create(name: str, description: str | None = None, owner: str | None = None,
               metadata: Mapping[str, Any] | None = None) -> Call[JSON]:
        body = c.without_none(name=name, description=description, owner=owner,
                              metadata=dict(metadata) if metadata is not None else None)
        return Call("POST", "/api/v1/projects", body=body, read=c.data)

    @staticmethod
    def update(project_id: str, **fields: Any) -> Call[JSON]:
        return Call("PUT", f"/api/v1/projects/{c.seg(project_id)}", body=fields, read=c.data)

    @staticmethod
    def delete(project_id: str) -> Call[JSON]:
        return Call("DELETE", f"/api/v1/projects/{c.seg(project_id)}", read=c.data)

    @staticmethod
    def statistics(project_id: str) -> Call[JSON]:
        return Call("GET", f"/api/v1/projects/{c.seg(project_id)}/statistics", read=c.data)


class PipelineCalls:
    """``/api/v1/projects/{id}/pipelines`` and ``/api/v1/pipelines/{id}``."""

    @staticmethod
    def list(project_id: str, tag: str | None = None, limit: int | None = None,
             offset: int | None = None, sort: str | None = None) -> Call[Page]:
        return Call("GET", f"/api/v1/projects/{c.seg(project_id)}/pipelines",
                    c.query(tag=tag, limit=limit, offset=offset, sort=sort), read=c.v1_page)

    @staticmethod
    def create(project_id: str, definition: WorkflowLike, name: str | None = None,
               description: str | None = None, tags: Sequence[str] | None = None) -> Call[JSON]:
        body = c.pipeline_body(name, definition, description, tags)
        if "name" not in body:
            raise ValueError("a pipeline needs a name (name= or a named Workflow)")
        return Call("POST", f"/api/v1/projects/{c.seg(project_id)}/pipelines", body=body,
                    read=c.data)

    @staticmethod
    def get(pipeline_id: str) -> Call[JSON]:
        return Call("GET", f"/api/v1/pipelines/{c.seg(pipeline_id)}", read=c.data)

    @staticmethod
    def update(pipeline_id: str, definition: WorkflowLike | None = None, name: str | None = None,
               description: str | None = None, tags: Sequence[str] | None = None) -> Call[JSON]:
        body = c.pipeline_body(name, definition, description, tags)
        if isinstance(definition, Workflow) and name is None:
            body.pop("name", None)             # keep the stored name unless asked
        return Call("PUT", f"/api/v1/pipelines/{c.seg(pipeline_id)}", body=body, read=c.data)

    @staticmethod
    def delete(pipeline_id: str) -> Call[JSON]:
        return Call("DELETE", f"/api/v1/pipelines/{c.seg(pipeline_id)}", read=c.data)

    @staticmethod
    def versions(pipeline_id: str) -> Call[Page]:
        return Call("GET", f"/api/v1/pipelines/{c.seg(pipeline_id)}/versions", read=c.v1_page)


class RunCalls:
    """``/api/v1/runs``."""

    @staticmethod
    def create(pipeline_id: str, project_id: str | None = None,
               params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
               config: Mapping[str, Any] | None = None) -> Call[JSON]:
        body: dict[str, Any] = {"pipeline_id": pipeline_id, "params": dict(params or {})}
        if project_id is not None:
            body["project_id"] = project_id
        if tags is not None:
            body["tags"] = dict(tags)
        if config is not None:
            body["config"] = dict(config)
        return Call("POST", "/api/v1/runs", body=body, read=c.data)

    @staticmethod
    def start(run_id: str, timeout_seconds: float | None = None) -> Call[JSON]:
        body = {} if timeout_seconds is None else {"timeout_seconds": timeout_seconds}
        return Call("POST", f"/api/v1/runs/{c.seg(run_id)}/start", body=body, read=c.data)

    @staticmethod
    def cancel(run_id: str, reason: str | None = None) -> Call[JSON]:
        body = {} if reason is None else {"reason": reason}
        return Call("POST", f"/api/v1/runs/{c.seg(run_id)}/cancel", body=body, read=c.data)

    @staticmethod
    def get(run_id: str) -> Call[JSON]:
        return Call("GET", f"/api/v1/runs/{c.seg(run_id)}", read=c.data)

    @staticmethod
    def list(project_id: str | None = None, pipeline_id: str | None = None,
             state: str | None = None, schedule_id: str | None = None, limit: int | None = None,
             offset: int | None = None, sort: str | None = None) -> Call[Page]:
        return Call("GET", "/api/v1/runs",
                    c.query(project_id=project_id, pipeline_id=pipeline_id, state=state,
                            schedule_id=schedule_id, limit=limit, offset=offset, sort=sort),
                    read=c.v1_page)

    @staticmethod
    def tasks(run_id: str, limit: int | None = None, offset: int | None = None) -> Call[Page]:
        return Call("GET", f"/api/v1/runs/{c.seg(run_id)}/tasks",
                    c.query(limit=limit, offset=offset), read=c.v1_page)

    @staticmethod
    def logs(run_id: str, level: str | None = None, limit: int | None = None,
             offset: int | None = None) -> Call[Page]:
        return Call("GET", f"/api/v1/runs/{c.seg(run_id)}/logs",
                    c.query(level=level, limit=limit, offset=offset), read=c.v1_page)


class ScheduleCalls:
    """``/api/v1/schedules``."""

    @staticmethod
    def create(pipeline_id: str, kind: str, expression: str, project_id: str | None = None,
               enabled: bool = True, **fields: Any) -> Call[JSON]:
        body = {"pipeline_id": pipeline_id, "kind": kind, "expression": expression,
                "enabled": enabled, **c.without_none(project_id=project_id, **fields)}
        return Call("POST", "/api/v1/schedules", body=body, read=c.data)

    @staticmethod
    def list(project_id: str | None = None, pipeline_id: str | None = None,
             enabled: bool | None = None, limit: int | None = None,
             offset: int | None = None, sort: str | None = None) -> Call[Page]:
        return Call("GET", "/api/v1/schedules",
                    c.query(project_id=project_id, pipeline_id=pipeline_id, enabled=enabled,
                            limit=limit, offset=offset, sort=sort), read=c.v1_page)

    @staticmethod
    def get(schedule_id: str) -> Call[JSON]:
        return Call("GET", f"/api/v1/schedules/{c.seg(schedule_id)}", read=c.data)

    @staticmethod
    def update(schedule_id: str, **fields: Any) -> Call[JSON]:
        return Call("PUT", f"/api/v1/schedules/{c.seg(schedule_id)}", body=fields, read=c.data)

    @staticmethod
    def enable(schedule_id: str) -> Call[JSON]:
        return Call("POST", f"/api/v1/schedules/{c.seg(schedule_id)}/enable", body={},
                    read=c.data)

    @staticmethod
    def disable(schedule_id: str) -> Call[JSON]:
        return Call("POST", f"/api/v1/schedules/{c.seg(schedule_id)}/disable", body={},
                    read=c.data)

    @staticmethod
    def delete(schedule_id: str) -> Call[JSON]:
        return Call("DELETE", f"/api/v1/schedules/{c.seg(schedule_id)}", read=c.data)

    @staticmethod
    def backfill(schedule_id: str, count: int | None = None, start: str | None = None,
                 end: str | None = None, **fields: Any) -> Call[JSON]:
        body = c.without_none(count=count, start=start, end=end, **fields)
        return Call("POST", f"/api/v1/schedules/{c.seg(schedule_id)}/backfill", body=body,
                    read=c.data)


class DynamicCalls:
    """``/api/v1/execute-dynamic`` and ``/api/v1/execution/{id}`` (dynamic-scheduler face)."""

    @staticmethod
    def execute(program: str | Mapping[str, Any], max_concurrent_nodes: int | None = None,
                **fields: Any) -> Call[JSON]:
        """Run a DAG (``twingraph.dagfile`` JSON/YAML text, or a mapping sent as JSON)."""
        text = program if isinstance(program, str) else json.dumps(program)
        body = {"program": text, **c.without_none(max_concurrent_nodes=max_concurrent_nodes,
                                                  **fields)}
        return Call("POST", "/api/v1/execute-dynamic", body=body, read=c.data)

    @staticmethod
    def progress(execution_id: str) -> Call[JSON]:
        return Call("GET", f"/api/v1/execution/{c.seg(execution_id)}/progress", read=c.data)

    @staticmethod
    def cancel(execution_id: str) -> Call[JSON]:
        return Call("DELETE", f"/api/v1/execution/{c.seg(execution_id)}", read=c.data)


class ServerCalls:
    @staticmethod
    def health() -> Call[JSON]:
        return Call("GET", "/health")

    @staticmethod
    def info() -> Call[JSON]:
        return Call("GET", "/api/v1/info", read=c.data)

    @staticmethod
    def statistics() -> Call[JSON]:
        return Call("GET", "/api/v1/statistics", read=c.data)
