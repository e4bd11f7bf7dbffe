"""A graph run is driven as the version it was made with (session 30 reviews): its adoption
after an edit ran the new graph, the tasks finished before the kill included, and a PENDING
run started after an edit ran the new graph under the old version's number."""
from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from fastapi.testclient import TestClient

from twingraph.core.states import RunState
from twingraph.engine.driverlock import _HOST
from twingraph.service.adoption import Adopter


def _orphaned(svc: Any, run_id: str) -> None:
    """RUNNING, its driver on this machine dead holding the run's lock (a kill -9)."""
    assert svc.catalog.claim_start(run_id, time.time())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    locks = svc.runs.engine._driver_locks
    locks.directory.mkdir(exist_ok=True)
    (locks.directory / f"{run_id}.lock").write_text(f"{dead.pid}:0:{_HOST}")


def _graph(offset: int) -> dict[str, Any]:
    return {"nodes": [{"id": "make", "component": "numbers", "config": {"n": 3}},
                      {"id": "sum", "component": "total", "config": {"offset": offset}}],
            "edges": [{"from": "make", "to": "sum"}]}


def test_an_adopted_graph_run_keeps_its_version(v1_client: TestClient) -> None:
    c, svc = v1_client, v1_client.app.state.services
    pid = c.post("/api/v1/projects", json={"name": "adopt_s30"}).json()["data"]["id"]
    pipe = c.post(f"/api/v1/projects/{pid}/pipelines",
                  json={"name": "gp", **_graph(100)}).json()["data"]
    run = c.post("/api/v1/runs", json={"project_id": pid, "pipeline_id": pipe["id"]}).json()["data"]
    assert run["pipeline_version"] == 1
    _orphaned(svc, run["id"])
    assert c.put(f"/api/v1/pipelines/{pipe['id']}", json=_graph(1000)).status_code == 200
    assert Adopter(svc.runs, stale_after=60).adopt_once() == [run["id"]]
    deadline = time.monotonic() + 30
    while svc.catalog.get_run(run["id"]).state is RunState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert svc.catalog.get_run(run["id"]).state is RunState.SUCCESS
    outputs = c.get(f"/api/executions/{run['id']}").json()["outputs"]
    assert 103 in (outputs.values() if isinstance(outputs, dict) else [outputs]), outputs


def test_a_run_started_after_an_edit_runs_its_own_version(v1_client: TestClient) -> None:
    """A PENDING run made at v1 and started after the graph became v2 ran v2 under v1's
    number; an adoption of it (which drives v1) then ran its finished tasks again."""
    c, svc = v1_client, v1_client.app.state.services
    pid = c.post("/api/v1/projects", json={"name": "start_s30"}).json()["data"]["id"]
    pipe = c.post(f"/api/v1/projects/{pid}/pipelines",
                  json={"name": "gq", **_graph(100)}).json()["data"]
    run = c.post("/api/v1/runs", json={"project_id": pid, "pipeline_id": pipe["id"]}).json()["data"]
    assert c.put(f"/api/v1/pipelines/{pipe['id']}", json=_graph(1000)).status_code == 200
    assert c.post(f"/api/v1/runs/{run['id']}/start").status_code == 202
    deadline = time.monotonic() + 30
    while svc.catalog.get_run(run["id"]).state is not RunState.SUCCESS:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert c.get(f"/api/executions/{run['id']}").json()["outputs"] == {"sum": 103}
    assert svc.catalog.get_run(run["id"]).pipeline_version == 1
