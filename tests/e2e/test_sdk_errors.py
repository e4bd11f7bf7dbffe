"""Typed errors from the SDK against the real server: the API's code, message, details, HTTP
status and request id come back on the exception; bad input changes nothing."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import free_port, unique
from twingraph import NotFoundError, TwinGraphError, Workflow
from twingraph.client import (
    ApiError,
    Conflict,
    NotAcceptable,
    NotFound,
    TransportError,
    TwinGraphClient,
    ValidationFailed,
)


@pytest.fixture
def client(server):
    with TwinGraphClient(server.base_url) as c:
        yield c


def test_not_found(client, server):
    with pytest.raises(NotFound) as info:
        client.runs.get("run_missing")
    err = info.value
    assert (err.status_code, err.code) == (404, "NOT_FOUND")
    assert "run_missing" in err.message and err.request_id.startswith("req_")
    assert err.method == "GET" and err.url.endswith("/api/v1/runs/run_missing")
    assert isinstance(err, NotFoundError) and isinstance(err, TwinGraphError)
    for call in (lambda: client.workflows.get("no-such-workflow"),
                 lambda: client.executions.get_status("run_nope"),
                 lambda: client.executions.get_logs("run_nope"),
                 lambda: client.projects.delete("proj_nope"),
                 lambda: client.schedules.enable("sched_nope")):
        with pytest.raises(NotFound):
            call()
    # the request id is the one the server logged under
    r = httpx.get(server.base_url + "/api/v1/runs/run_missing", headers={"X-Request-ID": "req_e2e_probe"})
    assert r.json()["meta"]["request_id"] == "req_e2e_probe"


def test_conflict(client):
    name = unique("conflict")
    client.projects.create(name)
    with pytest.raises(Conflict) as info:
        client.projects.create(name)
    assert (info.value.status_code, info.value.code) == (409, "CONFLICT")
    run = client.runs.create("etl_python", params={"n": 1})
    client.runs.start(run["id"])
    with pytest.raises(Conflict):
        client.runs.start(run["id"])
    client.runs.wait(run["id"], timeout=30)
    with pytest.raises(Conflict):
        client.runs.cancel(run["id"], reason="too late")


def test_validation_failed_writes_nothing(client):
    before_runs = client.runs.list(limit=1).total
    before_workflows = client.workflows.list().total
    with pytest.raises(ValidationFailed) as info:
        client.runs.create("etl_python", params={"no_such_param": 1})
    assert info.value.code == "VALIDATION_ERROR" and info.value.status_code == 422
    assert info.value.details and all("field" in d for d in info.value.details)

    cyclic = {"name": "cyclic", "nodes": [
        {"id": "a", "type": "component", "component": "extract", "config": {}},
        {"id": "b", "type": "component", "component": "transform", "config": {}}],
        "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}]}
    with pytest.raises(ValidationFailed) as info:
        client.workflows.create(cyclic, workflow_id=unique("cyclic").replace("_", "-"))
    assert any("cycle" in str(d).lower() for d in info.value.details), info.value.details

    wf = Workflow(name="unknown-component")
    wf.add_component("x", "no_such_component")
    with pytest.raises(ValidationFailed) as info:
        client.workflows.create(wf)
    assert any("no_such_component" in str(d) for d in info.value.details)

    with pytest.raises(ValidationFailed):
        client.executions.create("etl_python", config={"max_parallel": 0})
    with pytest.raises(ValidationFailed):
        client.projects.list(limit=1000)
    with pytest.raises(ValidationFailed):
        client.schedules.create("etl_python", kind="WEEKLY", expression="x", project_id="p")
    with pytest.raises(ValidationFailed):
        client.executions.get_logs("run_x", start_time="yesterday")   # checked before lookup

    assert client.runs.list(limit=1).total == before_runs
    assert client.workflows.list().total == before_workflows


def test_api_version_header(server):
    with TwinGraphClient(server.base_url) as client:
        assert client.auth_headers["Accept"] == "application/vnd.twingraph.v2+json"
        assert client.workflows.list().total is not None          # v2 is spoken
    with TwinGraphClient(server.base_url,
                         headers={"Accept": "application/vnd.twingraph.v9+json"}) as future:
        with pytest.raises(NotAcceptable) as info:
            future.workflows.list()
    assert info.value.status_code == 406 and info.value.code == "NOT_ACCEPTABLE"


def test_transport_errors_are_client_errors():
    with TwinGraphClient(f"http://127.0.0.1:{free_port()}", timeout=2) as dead:
        with pytest.raises(TransportError) as info:
            dead.health()
    assert isinstance(info.value, TwinGraphError) and not isinstance(info.value, ApiError)
    assert isinstance(info.value.__cause__, httpx.ConnectError)
