"""Bad input for every POST/PUT of the server — missing fields, wrong types, unknown ids, cycles
in a definition — answers 4xx with the error envelope (422s name the fields) and writes nothing.

Each case is sent raw (httpx) to the real server; before and after, a snapshot of everything a
write could change (projects, pipelines and their versions, runs, schedules, workflows) must be
the same.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import unique
from tests.resources.server_app import etl_definition

CYCLE = {"nodes": [{"id": "a", "component": "extract", "config": {}},
                   {"id": "b", "component": "transform", "config": {}}],
         "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}]}
UNKNOWN_COMPONENT = {"nodes": [{"id": "a", "component": "no_such_component"}], "edges": []}
DANGLING = {"nodes": [{"id": "a", "component": "extract"}], "edges": [{"source": "a", "target": "zz"}]}


def snapshot(http: httpx.Client, project_id: str, pipeline_id: str, schedule_id: str) -> dict[str, Any]:
    def get(path: str) -> Any:
        r = http.get(path)
        assert r.status_code == 200, (path, r.text)
        return r.json()
    return {
        "projects": get("/api/v1/projects?limit=100")["meta"]["total"],
        "pipelines": get(f"/api/v1/projects/{project_id}/pipelines")["meta"]["total"],
        "runs": get("/api/v1/runs?limit=1")["meta"]["total"],
        "schedules": get("/api/v1/schedules?limit=1")["meta"]["total"],
        "workflows": get("/api/workflows")["total"],
        "project": {k: v for k, v in get(f"/api/v1/projects/{project_id}")["data"].items()},
        "pipeline": get(f"/api/v1/pipelines/{pipeline_id}")["data"],
        "versions": get(f"/api/v1/pipelines/{pipeline_id}/versions")["meta"]["total"],
        "schedule": get(f"/api/v1/schedules/{schedule_id}")["data"],
        "api_keys": get("/api/v1/api-keys")["meta"]["total"],
    }


@pytest.fixture
def world(server):
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        project = http.post("/api/v1/projects", json={"name": unique("badinput")}).json()["data"]
        pipe = http.post(f"/api/v1/projects/{project['id']}/pipelines",
                         json={"name": "bad_input_etl", **etl_definition()}).json()["data"]
        sched = http.post("/api/v1/schedules", json={
            "project_id": project["id"], "pipeline_id": pipe["id"], "kind": "INTERVAL",
            "expression": "1d", "enabled": False}).json()["data"]
        finished = http.post("/api/v1/runs", json={"pipeline_id": pipe["id"]}).json()["data"]
        http.post(f"/api/v1/runs/{finished['id']}/cancel")
        yield http, project["id"], pipe["id"], sched["id"], finished["id"]


def cases(project: str, pipeline: str, schedule: str, ended_run: str) -> list[tuple[str, str, Any, set[int]]]:
    """(method, path, JSON body or raw text, acceptable statuses)."""
    bad_json = "{not json"
    return [
        # projects
        ("POST", "/api/v1/projects", {}, {422}),
        ("POST", "/api/v1/projects", {"name": 123}, {422}),
        ("POST", "/api/v1/projects", {"name": ""}, {422}),
        ("POST", "/api/v1/projects", bad_json, {400, 422}),
        ("PUT", f"/api/v1/projects/{project}", {"name": ["x"]}, {422}),
        ("PUT", "/api/v1/projects/proj_missing", {"description": "x"}, {404}),
        # pipelines
        ("POST", f"/api/v1/projects/{project}/pipelines", {"nodes": CYCLE["nodes"]}, {422}),
        ("POST", f"/api/v1/projects/{project}/pipelines", {"name": "c", **CYCLE}, {422}),
        ("POST", f"/api/v1/projects/{project}/pipelines", {"name": "u", **UNKNOWN_COMPONENT}, {422}),
        ("POST", f"/api/v1/projects/{project}/pipelines", {"name": "d", **DANGLING}, {422}),
        ("POST", f"/api/v1/projects/{project}/pipelines", {"name": "t", "nodes": "abc"}, {422}),
        ("POST", "/api/v1/projects/proj_missing/pipelines", {"name": "x", **etl_definition()}, {404}),
        ("PUT", f"/api/v1/pipelines/{pipeline}", {"definition": CYCLE}, {422}),
        ("PUT", f"/api/v1/pipelines/{pipeline}", {"nodes": UNKNOWN_COMPONENT["nodes"]}, {422}),
        ("PUT", f"/api/v1/pipelines/{pipeline}", {"tags": "not-a-list"}, {422}),
        ("PUT", "/api/v1/pipelines/pipe_missing", {"description": "x"}, {404}),
        # runs
        ("POST", "/api/v1/runs", {}, {422}),
        ("POST", "/api/v1/runs", {"pipeline_id": pipeline, "params": [1, 2]}, {422}),
        ("POST", "/api/v1/runs", {"pipeline_id": "pipe_missing"}, {404}),
        ("POST", "/api/v1/runs", {"pipeline_id": pipeline, "project_id": "proj_missing"}, {404}),
        ("POST", "/api/v1/runs", {"pipeline_id": "etl_python", "params": {"bogus": 1}}, {422}),
        ("POST", "/api/v1/runs", {"pipeline_id": pipeline, "config": {"max_parallel": -1}}, {422}),
        ("POST", "/api/v1/runs/run_missing/start", {}, {404}),
        ("POST", f"/api/v1/runs/{ended_run}/start", {"timeout_seconds": -5}, {422}),
        ("POST", f"/api/v1/runs/{ended_run}/start", {}, {409}),
        ("POST", "/api/v1/runs/run_missing/cancel", {"reason": "x"}, {404}),
        ("POST", f"/api/v1/runs/{ended_run}/cancel", {"reason": 5}, {422}),
        ("POST", f"/api/v1/runs/{ended_run}/cancel", {"reason": "again"}, {409}),
        # schedules
        ("POST", "/api/v1/schedules", {"project_id": project, "pipeline_id": pipeline}, {422}),
        ("POST", "/api/v1/schedules", {"project_id": project, "pipeline_id": pipeline,
                                       "kind": "WEEKLY", "expression": "1d"}, {422}),
        ("POST", "/api/v1/schedules", {"project_id": project, "pipeline_id": pipeline,
                                       "kind": "CRON", "expression": "61 * * * *"}, {422}),
        ("POST", "/api/v1/schedules", {"project_id": project, "pipeline_id": pipeline,
                                       "kind": "INTERVAL", "expression": "5 parsecs"}, {422}),
        ("POST", "/api/v1/schedules", {"project_id": project, "pipeline_id": pipeline,
                                       "kind": "CRON", "expression": "0 2 * * *",
                                       "timezone": "Mars/Olympus"}, {422}),
        ("POST", "/api/v1/schedules", {"project_id": project, "pipeline_id": "pipe_missing",
                                       "kind": "CRON", "expression": "0 2 * * *"}, {404, 422}),
        ("PUT", f"/api/v1/schedules/{schedule}", {"expression": "not cron", "kind": "CRON"}, {422}),
        ("PUT", f"/api/v1/schedules/{schedule}", {"max_concurrency": 0}, {422}),
        ("PUT", "/api/v1/schedules/sched_missing", {"enabled": True}, {404}),
        ("POST", "/api/v1/schedules/sched_missing/enable", None, {404}),
        ("POST", "/api/v1/schedules/sched_missing/disable", None, {404}),
        ("POST", f"/api/v1/schedules/{schedule}/backfill", {}, {422}),
        ("POST", f"/api/v1/schedules/{schedule}/backfill", {"count": 0}, {422}),
        ("POST", f"/api/v1/schedules/{schedule}/backfill", {"count": 2, "start": "2025-01-01T00:00:00Z"}, {422}),
        ("POST", f"/api/v1/schedules/{schedule}/backfill", {"start": "last tuesday"}, {422}),
        ("POST", "/api/v1/schedules/sched_missing/backfill", {"count": 1}, {404}),
        # workflows
        ("POST", f"/api/workflows/{unique('wf').replace('_', '-')}", {"name": "x"}, {422}),
        ("POST", f"/api/workflows/{unique('wf').replace('_', '-')}",
         {"name": "x", "definition": {"nodes": []}}, {422}),
        ("POST", f"/api/workflows/{unique('wf').replace('_', '-')}",
         {"name": "x", "definition": CYCLE}, {422}),
        ("POST", f"/api/workflows/{unique('wf').replace('_', '-')}",
         {"name": "x", "definition": UNKNOWN_COMPONENT}, {422}),
        ("POST", "/api/workflows/bad%20id", {"name": "x", "definition": etl_definition()}, {422}),
        ("POST", f"/api/workflows/{pipeline}", {"name": "dup", "definition": etl_definition()}, {409}),
        ("PUT", f"/api/workflows/{pipeline}", {"name": "x", "definition": CYCLE}, {422}),
        ("PUT", "/api/workflows/wf-missing", {"name": "x", "definition": etl_definition()}, {404}),
        # executions
        ("POST", "/api/executions", {}, {422}),
        ("POST", "/api/executions", {"workflow_id": "wf-missing"}, {404}),
        ("POST", "/api/executions", {"workflow_id": pipeline, "inputs": "x"}, {422}),
        ("POST", "/api/executions", {"workflow_id": pipeline, "config": {"max_parallel": "many"}}, {422}),
        ("POST", "/api/executions", {"workflow_id": pipeline, "config": {"timeout": -1}}, {422}),
        ("POST", "/api/executions", {"workflow_id": "etl_python", "inputs": {"bogus": 1}}, {422}),
        ("POST", "/api/executions/run_missing/stop", None, {404}),
        ("POST", f"/api/executions/{ended_run}/stop", None, {409}),
        # API keys (admin)
        ("POST", "/api/v1/api-keys", {}, {422}),
        ("POST", "/api/v1/api-keys", {"name": "k", "roles": ["superuser"]}, {422}),
        ("POST", "/api/v1/api-keys", {"name": "k", "expires_in_seconds": -1}, {422}),
        ("POST", "/api/v1/api-keys", {"name": 7}, {422}),
        # execute-dynamic
        ("POST", "/api/v1/execute-dynamic", {}, {422}),
        ("POST", "/api/v1/execute-dynamic", {"program": "nodes: [unclosed"}, {422}),
        ("POST", "/api/v1/execute-dynamic", {"program": json.dumps({"nodes": [
            {"id": "a", "operation": "extract", "arguments": ["b"]},
            {"id": "b", "operation": "transform", "arguments": ["a"]}]})}, {422}),
        ("POST", "/api/v1/execute-dynamic", {"program": json.dumps({"nodes": [
            {"id": "a", "operation": "no_such_op"}]})}, {422}),
    ]


def test_bad_input_answers_4xx_and_writes_nothing(world):
    http, project, pipeline, schedule, ended_run = world
    before = snapshot(http, project, pipeline, schedule)
    problems = []
    for method, path, body, expected in cases(project, pipeline, schedule, ended_run):
        if isinstance(body, str):
            r = http.request(method, path, content=body, headers={"Content-Type": "application/json"})
        elif body is None:
            r = http.request(method, path)
        else:
            r = http.request(method, path, json=body)
        where = f"{method} {path} {str(body)[:80]}"
        if r.status_code not in expected:
            problems.append(f"{where}: {r.status_code} (expected {sorted(expected)}) {r.text[:200]}")
            continue
        err = r.json().get("error")
        if not isinstance(err, dict) or not err.get("code") or not err.get("message"):
            problems.append(f"{where}: no error envelope: {r.text[:200]}")
        elif r.status_code == 422 and not (err.get("details") and all(
                isinstance(d, dict) and d.get("field") for d in err["details"])):
            problems.append(f"{where}: 422 without field details: {r.text[:200]}")
    assert not problems, "\n".join(problems)
    after = snapshot(http, project, pipeline, schedule)
    assert after == before
