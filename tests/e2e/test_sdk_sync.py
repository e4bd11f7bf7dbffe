"""The blocking SDK against the real server: twingraph-api.md's "Python SDK" flow with a
``Workflow`` built from the components of ``tests/resources/server_app.py``, then the /api/v1
resources (projects, pipelines, runs, schedules) through the same client."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import unique
from tests.resources import server_app as app
from twingraph import Workflow
from twingraph.client import Execution, NotFound, TwinGraphClient


@pytest.fixture
def client(server):
    with TwinGraphClient(base_url=server.base_url, timeout=30) as c:
        yield c


def etl_workflow(name: str, date: str) -> Workflow:
    wf = Workflow(name=name, description="e2e ETL", tags=["e2e", "etl"])
    # a date of its own: no task is a memo hit of another test's, so every one runs and logs
    wf.add_component("load", app.extract, config={"n": "${params.n}", "date": date})
    wf.add_component("process", app.transform, config={"factor": 3})
    wf.add_component("store", "load")                       # by registered name
    wf.connect("load", "process", source_handle="rows", target_handle="rows")
    wf.connect("process", "store", source_handle="rows", target_handle="rows")
    return wf


def test_documented_sdk_flow(client):
    name = unique("SDK Pipeline")
    date = unique("2025-01-26")
    wf = etl_workflow(name, date)
    workflow_id = client.workflows.create(wf)
    assert workflow_id == name.lower().replace(" ", "-").replace("_", "-")

    listed = client.workflows.list(tag="etl")
    assert workflow_id in [w["id"] for w in listed] and listed.page == 1 and listed.size == 20
    got = client.workflows.get(workflow_id)
    assert got["name"] == name and got["executions"] == 0
    assert [n["component"] for n in got["definition"]["nodes"]] == ["extract", "transform", "load"]
    assert got["definition"]["metadata"]["tags"] == ["e2e", "etl"]

    execution = client.executions.create(workflow_id=workflow_id, inputs={"n": 4})
    assert isinstance(execution, Execution) and execution.id
    assert execution.workflow_id == workflow_id and execution.status in ("pending", "running")

    done = client.executions.wait_for_completion(execution.id, timeout=60, mode="websocket")
    assert done.status == "completed" and done.succeeded
    assert done.outputs == {"store": {"loaded": 4, "total": 3 * (0 + 1 + 2 + 3)}}
    status = client.executions.get_status(execution.id)
    assert status.status == "completed" and status.duration is not None
    assert status.progress["failed_nodes"] == 0
    assert status.progress["completed_nodes"] == status.progress["total_nodes"] >= 3

    logs = client.executions.get_logs(execution.id)
    assert [e["message"] for e in logs] == [f"extracting 4 rows for {date}",
                                            "transforming 4 rows", "loading 4 rows"]
    assert [e["message"] for e in client.executions.get_logs(execution.id, level="warning")] == \
        ["loading 4 rows"]
    only = client.executions.get_logs(execution.id, component_id="process")
    assert [e["component_id"] for e in only] == ["process"]
    assert client.executions.get_logs(execution.id, start_time="2999-01-01T00:00:00Z") == []

    graph = client.executions.graph(execution.id)
    assert {"load", "process", "store"} <= {n["id"] for n in graph["nodes"]}
    metrics = client.metrics.component("transform")
    assert metrics["executions"] >= 1

    # the same objects on the Tauro face: the workflow is a pipeline, the execution a run
    run = client.runs.get(execution.id)
    assert run["state"] == "SUCCESS" and run["pipeline_id"] == workflow_id
    assert run["params"] == {"n": 4}

    # update keeps the previous definition as a version; delete removes it
    wf2 = etl_workflow(name, date)
    wf2.add_component("extra", app.sleep_for, config={"seconds": 0})
    client.workflows.update(workflow_id, wf2)
    versions = client.pipelines.versions(workflow_id)
    assert sorted(v["version"] for v in versions) == [1, 2]
    assert client.workflows.get(workflow_id)["executions"] == 1
    client.workflows.delete(workflow_id)
    with pytest.raises(NotFound):
        client.workflows.get(workflow_id)


def test_python_pipeline_execution_and_stop(client):
    ex = client.executions.create("etl_python", inputs={"n": 5, "factor": 1},
                                  config={"max_parallel": 2, "timeout": 60})
    done = client.executions.wait_for_completion(ex.id, timeout=60)
    assert done.status == "completed"
    assert done.outputs["outputs"] == {"loaded": 5, "total": 10}

    wf = Workflow(name=unique("slow"))
    wf.add_component("nap", app.sleep_for, config={"seconds": 30})
    wid = client.workflows.create(wf)
    slow = client.executions.create(wid)
    stopped = client.executions.stop(slow.id)
    assert stopped["status"] == "cancelled"
    final = client.executions.wait_for_completion(slow.id, timeout=30)
    assert final.status == "cancelled" and final.done and not final.succeeded


def test_v1_resources_through_the_sdk(client):
    project = client.projects.create(unique("sdk_project"), description="via SDK",
                                     owner="e2e@example.com")
    assert client.projects.get(project["id"])["owner"] == "e2e@example.com"
    updated = client.projects.update(project["id"], description="changed")
    assert updated["description"] == "changed"
    assert project["id"] in [p["id"] for p in client.projects.list(owner="e2e@example.com")]

    wf = Workflow(name="sdk_etl")
    wf.add_component("extract", app.extract, config={"n": 2, "date": unique("d")})
    wf.add_component("load", app.load)
    wf.connect("extract", "load", source_handle="rows", target_handle="rows")
    pipe = client.pipelines.create(project["id"], wf, tags=["sdk"])
    assert pipe["name"] == "sdk_etl" and pipe["project_id"] == project["id"]
    assert [p["id"] for p in client.pipelines.list(project["id"], tag="sdk")] == [pipe["id"]]
    client.pipelines.update(pipe["id"], description="two nodes")
    assert client.pipelines.get(pipe["id"])["description"] == "two nodes"

    run = client.runs.create("sdk_etl", project_id=project["id"], params={"date": "2025-01-26"},
                             tags={"env": "test"})
    assert run["state"] == "PENDING" and run["tags"] == {"env": "test"}
    started = client.runs.start(run["id"], timeout_seconds=60)
    assert started["status"] == "accepted"
    finished = client.runs.wait(run["id"], timeout=60)
    assert finished["state"] == "SUCCESS"
    tasks = client.runs.tasks(run["id"])
    assert {"extract", "load"} <= {t["id"] for t in tasks} and tasks.total == len(tasks.items)
    logs = client.runs.logs(run["id"], level="WARNING")
    assert [e["message"] for e in logs] == ["loading 2 rows"] and logs.total == 1
    listed = client.runs.list(project_id=project["id"], state="SUCCESS", limit=10)
    assert [r["id"] for r in listed] == [run["id"]] and listed.limit == 10

    sched = client.schedules.create(pipe["id"], kind="INTERVAL", expression="1d",
                                    project_id=project["id"], enabled=False, max_concurrency=2)
    assert sched["enabled"] is False and sched["max_concurrency"] == 2
    assert client.schedules.get(sched["id"])["expression"] == "1d"
    assert client.schedules.enable(sched["id"])["enabled"] is True
    assert client.schedules.disable(sched["id"])["enabled"] is False
    assert client.schedules.update(sched["id"], expression="2h")["expression"] == "2h"
    assert sched["id"] in [s["id"] for s in client.schedules.list(project_id=project["id"])]
    filled = client.schedules.backfill(sched["id"], count=3)
    assert filled["count"] == 3 and len(filled["runs"]) == 3
    client.schedules.delete(sched["id"])
    with pytest.raises(NotFound):
        client.schedules.get(sched["id"])

    stats = client.projects.statistics(project["id"])
    assert stats["total_pipelines"] == 1
    assert client.health()["status"] == "healthy"
    assert client.info()["name"] == "TwinGraph"
    assert client.statistics()["total_projects"] >= 1


def test_execute_dynamic_through_the_sdk(client):
    dag_id = unique("sdk_dag")
    program = {"dag_id": dag_id, "nodes": [
        {"id": "numbers", "operation": "extract", "parameters": {"n": 3}},
        {"id": "nap", "operation": "sleep_for", "parameters": {"seconds": 0.01}}]}
    done = client.dynamic.execute(program, max_concurrent_nodes=2)
    assert done["execution_id"] == dag_id and done["run_id"]
    assert done["status"] in ("completed", "success", "SUCCESS"), done
    progress = client.dynamic.progress(dag_id)
    assert progress["completed_nodes"] == progress["total_nodes"] == 2
    assert client.runs.get(done["run_id"])["state"] == "SUCCESS"       # the same execution

    slow = client.dynamic.execute({"dag_id": unique("sdk_dag_slow"), "nodes": [
        {"id": "nap", "operation": "sleep_for", "parameters": {"seconds": 30}}]},
        async_execution=True)
    cancelled = client.dynamic.cancel(slow["execution_id"])
    assert "cancel" in str(cancelled).lower(), cancelled
    with pytest.raises(NotFound):
        client.dynamic.progress("dag_missing")
