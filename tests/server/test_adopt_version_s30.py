"""An adoption drives the run it adopts as it was started (session 30 review): the graph of
the run's own pipeline version, not one edited since, and Python code whose hash is the one
the run recorded, not another file of the same module name. Before, both ran the other
definition, the tasks finished before the kill included."""
from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from twingraph.core.states import RunState
from twingraph.engine.driverlock import _HOST
from twingraph.server.app import create_app
from twingraph.service import build_services
from twingraph.service.adoption import Adopter
from twingraph.settings import Settings

RESOURCES = Path(__file__).resolve().parents[1] / "resources"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    services = build_services(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db"))
    app = create_app(services, load=[str(RESOURCES / "v1_app.py")])
    try:
        with TestClient(app) as c:
            yield c
    finally:
        services.close()


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


def test_an_adopted_graph_run_keeps_its_version(client: TestClient) -> None:
    c, svc = client, client.app.state.services
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


def test_a_run_of_other_python_code_is_not_adopted(client: TestClient) -> None:
    """A run recorded with a code hash this server's loaded pipeline does not have (another
    file of the same module name, an edit) stays RUNNING for `twingraph run --resume`."""
    svc = client.app.state.services
    md = svc.runs.engine.metadata
    pipe = svc.catalog.find_pipeline("sum_numbers")
    current = svc.catalog.pipeline_versions(pipe.id)[-1].definition
    md.upsert_pipeline(pipe.project, pipe.name, {**current, "code_hash": "0123456789abcdef"})
    other = svc.catalog.find_pipeline("sum_numbers")
    assert other.current_version == 2
    run = svc.runs.create(other, params={"n": 2})
    _orphaned(svc, run.run_id)
    assert not svc.runs.can_drive(svc.catalog.get_run(run.run_id))
    assert Adopter(svc.runs, stale_after=60).adopt_once() == []
    assert svc.catalog.get_run(run.run_id).state is RunState.RUNNING
    # the loaded code registered again (a server restart): its own runs are adopted as before
    md.upsert_pipeline(pipe.project, pipe.name, current)
    mine = svc.runs.create(svc.catalog.find_pipeline("sum_numbers"), params={"n": 2})
    _orphaned(svc, mine.run_id)
    assert Adopter(svc.runs, stale_after=60).adopt_once() == [mine.run_id]
