"""The TwinGraph face (/api) in-process: every route, every documented field, and bad input that
answers 4xx with details and writes nothing (checked in the catalog).

Real app, engine and stores. One test wraps the real ``export_lineage`` with a 0.6 s sleep
before it, to hold a run between its end and its export (it still exports)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient

from twingraph.errors import NotFoundError
from twingraph.service import Services

from conftest_server import graph

ISO_Z = "%Y-%m-%dT%H:%M:%S.%fZ"


def _iso(value: str) -> datetime:
    return datetime.strptime(value, ISO_Z).replace(tzinfo=timezone.utc)


def _create(client: TestClient, wid: str = "wf-1", *, name: str = "Squares",
            tags: list[str] | None = None, definition: dict[str, Any] | None = None) -> Any:
    r = client.post(f"/api/workflows/{wid}", json={
        "name": name, "definition": definition or graph(),
        "metadata": {"description": "squares then sum", "tags": tags or ["production", "etl"]}})
    assert r.status_code == 201, r.text
    return r.json()


def _execute(client: TestClient, svc: Services, wid: str = "wf-1", **inputs: Any) -> dict[str, Any]:
    r = client.post("/api/executions", json={"workflow_id": wid, "inputs": inputs or {"n": 4}})
    assert r.status_code == 201, r.text
    eid = r.json()["execution_id"]
    svc.runs.wait(eid, 20)
    body = client.get(f"/api/executions/{eid}").json()
    assert body["status"] in ("completed", "failed"), body
    return body


def _error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] and err["message"]
    return err


def _counts(svc: Services) -> tuple[int, int, int]:
    project = svc.catalog.resolve_project(svc.engine.project)
    _, pipelines = svc.catalog.list_pipelines(project_id=project.id, limit=1)
    _, runs = svc.catalog.list_runs(limit=1)
    versions = sum(len(svc.catalog.pipeline_versions(p.id))
                   for p in svc.catalog.list_pipelines(project_id=project.id, limit=100)[0])
    return pipelines, runs, versions


# -- workflows ---------------------------------------------------------------------------------
def test_create_get_and_list_workflow(client: TestClient, svc: Services) -> None:
    created = _create(client)
    assert created["id"] == "wf-1" and created["name"] == "Squares"
    got = client.get("/api/workflows/wf-1").json()
    assert set(got) >= {"id", "name", "definition", "created_at", "updated_at", "executions",
                        "success_rate"}
    assert [n["id"] for n in got["definition"]["nodes"]] == ["numbers", "squares", "total"]
    assert got["definition"]["edges"][0]["source"] == "numbers"
    assert got["definition"]["metadata"] == {"description": "squares then sum",
                                             "tags": ["production", "etl"]}
    assert got["executions"] == 0 and got["success_rate"] is None
    _iso(got["created_at"]), _iso(got["updated_at"])
    # The same object on the Tauro face: a workflow IS a pipeline of the default project.
    v1 = client.get("/api/v1/pipelines/wf-1").json()["data"]
    assert v1["name"] == "Squares" and v1["project_id"] == svc.catalog.resolve_project("default").id

    listing = client.get("/api/workflows", params={"tag": "production"}).json()
    assert listing["total"] == 1 and listing["page"] == 1 and listing["size"] == 20
    item = listing["workflows"][0]
    assert {k: item[k] for k in ("id", "name", "status", "tags")} == {
        "id": "wf-1", "name": "Squares", "status": "inactive", "tags": ["production", "etl"]}
    assert client.get("/api/workflows", params={"tag": "nope"}).json()["total"] == 0
    # Loaded @pipelines are workflows too (documented, narrow, shapes).
    everything = client.get("/api/workflows").json()
    assert everything["total"] == 4
    assert {"documented", "Squares"} <= {w["name"] for w in everything["workflows"]}


def test_list_paging_and_status(client: TestClient, svc: Services) -> None:
    for i in range(3):
        _create(client, f"wf-{i}", name=f"W{i}", tags=["paged"])
    first = client.get("/api/workflows", params={"tag": "paged", "size": 2}).json()
    second = client.get("/api/workflows", params={"tag": "paged", "size": 2, "page": 2}).json()
    assert first["total"] == second["total"] == 3
    assert len(first["workflows"]) == 2 and len(second["workflows"]) == 1
    assert {w["id"] for w in first["workflows"] + second["workflows"]} == {"wf-0", "wf-1", "wf-2"}

    _execute(client, svc, "wf-1", n=3)                # a recent run makes a workflow active
    active = client.get("/api/workflows", params={"status": "active"}).json()
    assert [w["id"] for w in active["workflows"]] == ["wf-1"] and active["total"] == 1
    inactive = client.get("/api/workflows", params={"status": "inactive", "tag": "paged"}).json()
    assert {w["id"] for w in inactive["workflows"]} == {"wf-0", "wf-2"}
    for bad in ({"status": "sleeping"}, {"page": 0}, {"size": 0}, {"size": 101}, {"page": "x"}):
        _error(client.get("/api/workflows", params=bad), 422)


def test_an_enabled_schedule_makes_a_workflow_active(client: TestClient, svc: Services) -> None:
    from twingraph.stores.metadata.schedules import SQLScheduleStore
    _create(client)
    assert client.get("/api/workflows/wf-1").json()["status"] == "inactive"
    schedules = SQLScheduleStore(svc.catalog.store)
    sched = schedules.create(project_id=svc.catalog.get_pipeline("wf-1").project_id,
                             pipeline_id="wf-1", kind="INTERVAL", expression="1d",
                             params={"n": 2}, enabled=False)
    assert client.get("/api/workflows/wf-1").json()["status"] == "inactive"   # disabled: no
    schedules.create(project_id=svc.catalog.get_pipeline("wf-1").project_id,
                     pipeline_id="wf-1", kind="INTERVAL", expression="1d", params={"n": 2})
    assert client.get("/api/workflows/wf-1").json()["status"] == "active"
    assert [w["id"] for w in client.get("/api/workflows",
                                        params={"status": "active"}).json()["workflows"]] == ["wf-1"]
    assert sched.enabled is False


def test_workflow_executions_and_success_rate(client: TestClient, svc: Services) -> None:
    _create(client)
    failing = {"nodes": [{"id": "boom", "component": "explode"}], "edges": []}
    _create(client, "wf-bad", name="Bad", definition=failing)
    for n in (2, 3, 4):
        assert _execute(client, svc, "wf-1", n=n)["status"] == "completed"
    assert _execute(client, svc, "wf-bad")["status"] == "failed"
    assert client.get("/api/workflows/wf-1").json()["executions"] == 3
    assert client.get("/api/workflows/wf-1").json()["success_rate"] == 1.0
    bad = client.get("/api/workflows/wf-bad").json()
    assert bad["executions"] == 1 and bad["success_rate"] == 0.0


def test_put_keeps_the_previous_version(client: TestClient, svc: Services) -> None:
    _create(client)
    new_def = graph()
    new_def["nodes"][2]["config"] = {"offset": 100}
    r = client.put("/api/workflows/wf-1", json={"name": "Squares v2", "definition": new_def,
                                                 "metadata": {"description": "v2", "tags": ["x"]}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "Squares v2" and body["version"] == 2
    assert body["definition"]["metadata"] == {"description": "v2", "tags": ["x"]}
    versions = svc.catalog.pipeline_versions("wf-1")
    assert [v.version for v in versions] == [1, 2]
    assert versions[0].definition["nodes"][2]["config"] == {"offset": 1}
    assert _execute(client, svc, "wf-1", n=4)["outputs"] == {"total": 114}


def test_delete_workflow(client: TestClient, svc: Services) -> None:
    _create(client)
    r = client.delete("/api/workflows/wf-1")
    assert r.status_code == 200 and r.json() == {"id": "wf-1", "deleted": True}
    _error(client.get("/api/workflows/wf-1"), 404)
    _error(client.delete("/api/workflows/wf-1"), 404)
    with pytest.raises(NotFoundError):
        svc.catalog.get_pipeline("wf-1")


def test_delete_with_a_running_execution_is_a_conflict(client: TestClient, svc: Services) -> None:
    _create(client, definition=graph(delay=5))
    eid = client.post("/api/executions", json={"workflow_id": "wf-1",
                                               "inputs": {"n": 2}}).json()["execution_id"]
    _error(client.delete("/api/workflows/wf-1"), 409)
    assert client.get("/api/workflows/wf-1").status_code == 200
    client.post(f"/api/executions/{eid}/stop")


BAD_WORKFLOWS: list[tuple[str, Any, str]] = [
    ("missing name", {"definition": graph()}, "name"),
    ("missing definition", {"name": "x"}, "definition"),
    ("name not a string", {"name": 5, "definition": graph()}, "name"),
    ("nodes not a list", {"name": "x", "definition": {"nodes": "a", "edges": []}}, "definition.nodes"),
    ("no nodes", {"name": "x", "definition": {"nodes": [], "edges": []}}, "definition.nodes"),
    ("tags not a list", {"name": "x", "definition": graph(), "metadata": {"tags": "etl"}},
     "metadata.tags"),
    ("unknown component", {"name": "x", "definition": {"nodes": [
        {"id": "a", "component": "no_such_component"}], "edges": []}}, "definition.nodes[0].component"),
    ("edge to a missing node", {"name": "x", "definition": {"nodes": [
        {"id": "a", "component": "square_all"}], "edges": [{"source": "a", "target": "zz"}]}},
     "definition.edges[0].target"),
    ("cycle", {"name": "x", "definition": {"nodes": [
        {"id": "a", "component": "square_all"}, {"id": "b", "component": "square_all"}],
        "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}]}},
     "definition.edges"),
    ("duplicate node ids", {"name": "x", "definition": {"nodes": [
        {"id": "a", "component": "square_all"}, {"id": "a", "component": "square_all"}],
        "edges": []}}, "definition.nodes"),
]


def test_bad_workflow_bodies_write_nothing(client: TestClient, svc: Services) -> None:
    _create(client, "existing")
    before = _counts(svc)
    for case, body, field in BAD_WORKFLOWS:
        err = _error(client.post("/api/workflows/new-one", json=body), 422)
        assert field in [d["field"] for d in err["details"]], (case, err)
        err = _error(client.put("/api/workflows/existing", json=body), 422)
        assert field in [d["field"] for d in err["details"]], (case, err)
        assert _counts(svc) == before, case
        assert client.get("/api/workflows/new-one").status_code == 404, case
        assert svc.catalog.get_pipeline("existing").current_version == 1, case


def test_workflow_id_conflicts_and_unknown_ids(client: TestClient, svc: Services) -> None:
    _create(client)
    before = _counts(svc)
    err = _error(client.post("/api/workflows/wf-1", json={"name": "Other", "definition": graph()}), 409)
    assert "wf-1" in err["message"]
    _error(client.post("/api/workflows/wf-2", json={"name": "Squares", "definition": graph()}), 409)
    _error(client.post("/api/workflows/bad id!", json={"name": "Z", "definition": graph()}), 422)
    _error(client.put("/api/workflows/nope", json={"name": "Z", "definition": graph()}), 404)
    _error(client.get("/api/workflows/nope"), 404)
    assert _counts(svc) == before
    # A loaded Python pipeline is code: it cannot be replaced by a graph over REST.
    documented = svc.catalog.find_pipeline("documented")
    _error(client.put(f"/api/workflows/{documented.id}",
                      json={"name": "documented", "definition": graph()}), 422)
    assert svc.catalog.get_pipeline(documented.id).current_version == 1


# -- executions --------------------------------------------------------------------------------
def test_execute_and_get_status(client: TestClient, svc: Services) -> None:
    _create(client)
    r = client.post("/api/executions", json={"workflow_id": "wf-1", "inputs": {"n": 4},
                                             "config": {"max_parallel": 2, "timeout": 60}})
    assert r.status_code == 201, r.text
    started = r.json()
    assert set(started) >= {"execution_id", "workflow_id", "status", "started_at", "progress"}
    assert started["workflow_id"] == "wf-1" and started["status"] in ("running", "completed")
    assert set(started["progress"]) >= {"total_nodes", "completed_nodes", "running_nodes"}
    eid = started["execution_id"]
    svc.runs.wait(eid, 20)
    done = client.get(f"/api/executions/{eid}").json()
    assert done["status"] == "completed"
    assert done["outputs"] == {"total": 0 + 1 + 4 + 9 + 1}        # the sink node's value
    assert done["progress"]["total_nodes"] == 3 and done["progress"]["completed_nodes"] == 3
    assert done["progress"]["failed_nodes"] == 0
    assert _iso(done["completed_at"]) >= _iso(done["started_at"])
    assert done["duration"] == pytest.approx(
        (_iso(done["completed_at"]) - _iso(done["started_at"])).total_seconds(), abs=0.002)
    run = svc.catalog.get_run(eid)
    assert run.config == {"max_parallel": 2, "timeout": 60}
    # The same run on the Tauro face.
    assert client.get(f"/api/v1/runs/{eid}").json()["data"]["state"] == "SUCCESS"


def test_execute_by_name_and_python_outputs(client: TestClient, svc: Services) -> None:
    body = _execute(client, svc, "documented", n=2, delay=0.01)
    assert body["status"] == "completed" and body["workflow_name"] == "documented"
    assert body["outputs"]["outputs"] == {"total": (0 + 1) + (2 + 3), "n": 2}
    assert len(body["outputs"]["hash"]) == 64


def test_a_python_execution_records_the_defaults_it_ran_with(client: TestClient,
                                                              svc: Services) -> None:
    # As ``twingraph run`` does: a run adopted after the pipeline's default was edited keeps
    # the value it started with (created over REST or by a schedule: both go through
    # RunService.create).
    r = client.post("/api/executions", json={"workflow_id": "documented", "inputs": {"n": 2}})
    assert r.status_code == 201, r.text
    eid = r.json()["execution_id"]
    assert svc.catalog.get_run(eid).params == {"n": 2, "delay": 0.2}
    svc.runs.wait(eid, 20)
    assert client.get(f"/api/executions/{eid}").json()["status"] == "completed"


BAD_EXECUTIONS: list[tuple[str, Any, int, str]] = [
    ("missing workflow_id", {"inputs": {"n": 2}}, 422, "workflow_id"),
    ("workflow_id not a string", {"workflow_id": 7}, 422, "workflow_id"),
    ("inputs not an object", {"workflow_id": "wf-1", "inputs": [1]}, 422, "inputs"),
    ("max_parallel zero", {"workflow_id": "wf-1", "inputs": {"n": 2}, "config": {"max_parallel": 0}},
     422, "config.max_parallel"),
    ("max_parallel a string", {"workflow_id": "wf-1", "inputs": {"n": 2},
                               "config": {"max_parallel": "5"}}, 422, "config.max_parallel"),
    ("timeout a bool", {"workflow_id": "wf-1", "inputs": {"n": 2}, "config": {"timeout": True}},
     422, "config.timeout"),
    ("negative timeout", {"workflow_id": "wf-1", "inputs": {"n": 2}, "config": {"timeout": -1}},
     422, "config.timeout"),
    ("unknown config key", {"workflow_id": "wf-1", "inputs": {"n": 2}, "config": {"turbo": 1}},
     422, "config.turbo"),
    ("missing input", {"workflow_id": "wf-1", "inputs": {}}, 422, "body"),
    ("unknown workflow", {"workflow_id": "nope", "inputs": {}}, 404, ""),
    ("python params that do not fit", {"workflow_id": "documented", "inputs": {"bogus": 1}},
     422, "params"),
]


def test_bad_execution_bodies_write_nothing(client: TestClient, svc: Services) -> None:
    _create(client)
    before = _counts(svc)
    for case, body, status, field in BAD_EXECUTIONS:
        err = _error(client.post("/api/executions", json=body), status)
        if field:
            assert field in [d["field"] for d in err["details"]], (case, err)
        assert _counts(svc) == before, case


def test_stop_execution(client: TestClient, svc: Services) -> None:
    _create(client, definition=graph(delay=5))
    eid = client.post("/api/executions", json={"workflow_id": "wf-1",
                                               "inputs": {"n": 2}}).json()["execution_id"]
    t0 = time.monotonic()
    r = client.post(f"/api/executions/{eid}/stop")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["execution_id"] == eid
    assert time.monotonic() - t0 < 4                 # the sleeping task did not run to its end
    got = client.get(f"/api/executions/{eid}").json()
    assert got["status"] == "cancelled" and got["outputs"] is None
    _error(client.post(f"/api/executions/{eid}/stop"), 409)
    _error(client.post("/api/executions/nope/stop"), 404)
    _error(client.get("/api/executions/nope"), 404)


def test_execution_logs_filters(client: TestClient, svc: Services) -> None:
    failing = {"nodes": [{"id": "boom", "component": "explode"},
                         {"id": "fine", "component": "make_numbers", "config": {"n": 2}}],
               "edges": []}
    _create(client, "wf-bad", name="Bad", definition=failing)
    r = client.post("/api/executions", json={"workflow_id": "wf-bad",
                                             "config": {"error_handler": "continue"}})
    eid = r.json()["execution_id"]
    svc.runs.wait(eid, 20)
    every = client.get(f"/api/executions/{eid}/logs").json()
    assert every["execution_id"] == eid and every["total"] == len(every["logs"]) >= 1
    entry = every["logs"][0]
    assert set(entry) == {"timestamp", "level", "message", "component_id"}
    errors = client.get(f"/api/executions/{eid}/logs", params={"level": "error"}).json()["logs"]
    assert errors and all(e["level"] == "error" for e in errors)
    assert any("exploded" in e["message"] for e in errors)
    by_node = client.get(f"/api/executions/{eid}/logs", params={"component_id": "boom"}).json()
    by_component = client.get(f"/api/executions/{eid}/logs",
                              params={"component_id": "explode"}).json()
    assert by_node["total"] >= 1 and by_node["logs"] == by_component["logs"]
    assert all(e["component_id"] == "boom" for e in by_node["logs"])
    assert client.get(f"/api/executions/{eid}/logs",
                      params={"component_id": "fine"}).json()["total"] == 0
    first = _iso(every["logs"][0]["timestamp"])
    later = (first + timedelta(hours=1)).isoformat()
    earlier = (first - timedelta(hours=1)).isoformat()
    assert client.get(f"/api/executions/{eid}/logs",
                      params={"start_time": later}).json()["total"] == 0
    assert client.get(f"/api/executions/{eid}/logs",
                      params={"end_time": earlier}).json()["total"] == 0
    window = client.get(f"/api/executions/{eid}/logs",
                        params={"start_time": earlier, "end_time": later}).json()
    assert window["total"] == every["total"]
    _error(client.get(f"/api/executions/{eid}/logs", params={"level": "loud"}), 422)
    _error(client.get(f"/api/executions/{eid}/logs", params={"start_time": "yesterday"}), 422)
    _error(client.get("/api/executions/nope/logs"), 404)


# -- monitoring --------------------------------------------------------------------------------
def test_execution_graph(client: TestClient, svc: Services) -> None:
    _create(client)
    eid = _execute(client, svc, n=3)["execution_id"]
    g = client.get(f"/api/graph/execution/{eid}").json()
    nodes = {n["id"]: n for n in g["nodes"]}
    assert set(nodes) == {"numbers", "squares", "total"}
    n = nodes["squares"]
    assert n["label"] == "square_all" and n["status"] == "completed" and n["platform"] == "local"
    assert _iso(n["completed_at"]) >= _iso(n["started_at"])
    assert n["duration"] == pytest.approx(
        (_iso(n["completed_at"]) - _iso(n["started_at"])).total_seconds(), abs=0.002)
    assert n["properties"]["cache"] == "miss" and len(n["properties"]["hash"]) == 64
    edges = {(e["from"], e["to"]) for e in g["edges"]}
    assert edges == {("numbers", "squares"), ("squares", "total")}
    assert all(e["label"] == "data_flow" for e in g["edges"])
    _error(client.get("/api/graph/execution/nope"), 404)


def test_component_metrics(client: TestClient, svc: Services) -> None:
    _create(client)
    for n in (2, 3, 4, 5):
        _execute(client, svc, n=n)
    m = client.get("/api/metrics/components/square_all").json()
    assert m["component_id"] == "square_all" and m["executions"] == 4
    assert m["success_rate"] == 1.0
    tasks = [t for run in svc.catalog.list_runs(limit=10)[0]
             for t in svc.catalog.store.get_tasks(run.run_id) if t.component == "square_all"]
    durations = sorted(t.ended_at - t.started_at for t in tasks)  # type: ignore[operator]
    assert m["avg_duration"] == pytest.approx(sum(durations) / 4)
    assert durations[0] <= m["p95_duration"] <= m["p99_duration"] <= durations[-1]
    usage = m["resource_usage"]
    assert usage["measured_per_component"] is False and usage["avg_cpu"] is None
    assert usage["process"]["scope"] == "server_process"
    assert usage["process"]["peak_memory_bytes"] > 0 and usage["process"]["cpu_seconds"] > 0
    # Registered but never run: zeros, not 404; unknown: 404.
    idle = client.get("/api/metrics/components/to_bytes").json()
    assert idle["executions"] == 0 and idle["success_rate"] is None and idle["p99_duration"] is None
    _error(client.get("/api/metrics/components/no_such_component"), 404)


def test_component_metrics_count_failures(client: TestClient, svc: Services) -> None:
    _create(client, "wf-bad", name="Bad",
            definition={"nodes": [{"id": "boom", "component": "explode"}], "edges": []})
    _execute(client, svc, "wf-bad")
    m = client.get("/api/metrics/components/explode").json()
    assert m["executions"] == 1 and m["failed"] == 1 and m["success_rate"] == 0.0


def test_outputs_cache_keeps_the_newest() -> None:
    from twingraph.service.workflows import OutputsCache
    cache = OutputsCache(size=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == (True, 1)          # a is now the newest
    cache.put("c", 3)
    assert cache.get("b") == (False, None) and cache.get("a") == (True, 1)
    assert cache.get("c") == (True, 3)


def test_percentile_interpolates() -> None:
    from twingraph.service.workflows import percentile
    assert percentile([], 95) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)


def test_outputs_of_a_run_whose_driver_is_still_handing_over(client: TestClient, svc: Services,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # The engine records SUCCESS before run() returns; the driver then exports lineage and
    # only then registers the result. A GET in that window must wait for the result, not
    # answer (and cache for good) the sink nodes' values instead.
    import twingraph.service.runs as runs_module
    real_export = runs_module.export_lineage

    def slow_export(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.6)
        real_export(*args, **kwargs)
    monkeypatch.setattr(runs_module, "export_lineage", slow_export)
    r = client.post("/api/executions", json={"workflow_id": "documented",
                                             "inputs": {"n": 2, "delay": 0.01}})
    eid = r.json()["execution_id"]
    deadline = time.monotonic() + 20
    while svc.catalog.get_run(eid).state.value != "SUCCESS":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert svc.runs.driving(eid)                       # inside the window
    body = client.get(f"/api/executions/{eid}").json()
    assert body["outputs"]["outputs"] == {"total": (0 + 1) + (2 + 3), "n": 2}
    assert client.get(f"/api/executions/{eid}").json()["outputs"] == body["outputs"]
