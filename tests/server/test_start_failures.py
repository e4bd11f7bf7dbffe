"""A run whose start fails with an unexpected error (not a ``TwinGraphError``) before its driver
thread takes over must not be left half-started.

``RunService.start`` handled a ``TwinGraphError`` raised while the start was prepared, and the
failure to start the driver thread, but any other exception (a bug, an unexpected failure in the
pipeline's code, the planning or a store call) went straight to the caller: a REST start left
the run PENDING for ever, and a start the schedule firer had claimed left it RUNNING with no
driver (the firer's own safety net then failed it, without its error's type and without an
event). Now such a run ends FAILED through the catalog, its error names the exception's type
(not its text), a ``run:status`` event tells WebSocket subscribers, the exception still reaches
the caller (REST: the INTERNAL_ERROR envelope), and other runs go on.

The unexpected error is real, not patched in: tests/resources/start_failures.py has a component
whose options come from a site file read by the platform check that both creating and starting
a run do; the tests create the run, remove the file, then start it (``FileNotFoundError``).
The app runs under a real uvicorn on 127.0.0.1 with a real SQLite metadata store; the schedule
firer is driven by calling its ``tick`` (it is not started, so nothing fires on its own).

One patch, in ``test_execution_created_and_started_in_one_request_does_not_stay_pending``:
``POST /api/executions`` creates and starts the run in one request, so the test cannot remove
the file in between from outside. ``SQLCatalog.create_run`` is wrapped (the real one runs, then
the file is removed), standing for another process or an operator removing it at that moment.
Nothing the fix touches is replaced: the start and its failure run as in production.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.sync.client import connect

from twingraph.core.states import RunState
from twingraph.server.app import create_app
from twingraph.server.build import wire_schedules
from twingraph.service import Services, build_services
from twingraph.settings import Settings

RESOURCES = Path(__file__).resolve().parents[1] / "resources"


@dataclass
class Server:
    url: str
    svc: Services
    site: Path          # the site file SiteStep reads its options from
    events: list[dict[str, Any]]      # every event the hub fanned out

    def set_site(self, options: dict[str, Any] | None) -> None:
        if options is None:
            self.site.unlink(missing_ok=True)
        else:
            self.site.write_text(json.dumps(options), encoding="utf-8")

    def pipeline_id(self, name: str) -> str:
        return str(self.svc.catalog.find_pipeline(name).id)

    def run_events(self, run_id: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("run_id") == run_id]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    site = tmp_path / "site" / "options.json"
    site.parent.mkdir()
    site.write_text(json.dumps({"platform": "local"}), encoding="utf-8")
    monkeypatch.setenv("TG_SITE_FILE", str(site))
    svc = build_services(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db"))
    wire_schedules(svc, fire=False)          # the tests tick the firer themselves
    events: list[dict[str, Any]] = []
    svc.hub.listeners.append(events.append)
    port = _free_port()
    app = create_app(svc, load=[str(RESOURCES / "start_failures.py")])
    userver = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                            log_level="warning", access_log=False,
                                            log_config=None))
    thread = threading.Thread(target=userver.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not userver.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield Server(f"http://127.0.0.1:{port}", svc, site, events)
    finally:
        userver.should_exit = True
        thread.join(10)
        svc.close()


def _created(http: httpx.Client, pipeline_id: str, **params: Any) -> str:
    r = http.post("/api/v1/runs", json={"pipeline_id": pipeline_id, "params": params})
    assert r.status_code == 201, r.text
    assert r.json()["data"]["state"] == "PENDING"
    return str(r.json()["data"]["id"])


def _assert_internal_error(r: httpx.Response, *hidden: str) -> None:
    assert r.status_code == 500, r.text
    body = r.json()
    assert body["error"]["code"] == "INTERNAL_ERROR" and body["error"]["details"] == []
    rid = body["meta"]["request_id"]
    assert rid.startswith("req_") and r.headers["x-request-id"] == rid
    assert rid in body["error"]["message"]
    for text in ("Traceback", "FileNotFoundError", *hidden):
        assert text not in r.text, r.text


def _assert_failed_unexpectedly(run: dict[str, Any], *hidden: str) -> None:
    """The run's view (``runs show``): FAILED, ended, its error naming the exception's type
    and not its text."""
    assert run["state"] == "FAILED", run
    assert run["ended_at"] is not None
    assert "FileNotFoundError" in run["error"], run["error"]
    for text in hidden:
        assert text not in run["error"], run["error"]


def _wait_state(http: httpx.Client, run_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = http.get(f"/api/v1/runs/{run_id}").json()["data"]
        if run["state"] in ("SUCCESS", "FAILED", "CANCELLED") or time.monotonic() > deadline:
            return dict(run)
        time.sleep(0.05)


def _ws_recv(ws: Any, timeout: float = 10) -> dict[str, Any]:
    return dict(json.loads(ws.recv(timeout=timeout)))


def test_rest_start_with_an_unexpected_error_ends_the_run_failed(server: Server) -> None:
    """``POST /api/v1/runs/{id}/start``: the answer is the INTERNAL_ERROR envelope and the run
    is FAILED (it stayed PENDING), seen by ``GET /runs/{id}``, its logs and a WebSocket
    subscriber; the other runs are untouched and the next one runs."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        failing = _created(http, server.pipeline_id("site_pipeline"), x=3)
        other = _created(http, server.pipeline_id("plain_pipeline"), n=4)
        with connect(server.url.replace("http", "ws", 1) + "/ws") as ws:
            ws.send(json.dumps({"action": "subscribe", "execution_id": failing}))
            snapshot = _ws_recv(ws)
            assert snapshot["event"] == "execution:update"
            assert snapshot["data"]["status"] == "pending"

            server.set_site(None)
            r = http.post(f"/api/v1/runs/{failing}/start")
            _assert_internal_error(r, str(server.site))

            update = _ws_recv(ws)
            assert update["event"] == "execution:update", update
            assert update["data"]["execution_id"] == failing
            assert update["data"]["status"] == "failed"

        run = http.get(f"/api/v1/runs/{failing}").json()["data"]
        _assert_failed_unexpectedly(run, str(server.site), "No such file")
        logs = http.get(f"/api/v1/runs/{failing}/logs").json()["data"]
        assert any("FileNotFoundError" in entry["message"] and entry["level"] == "ERROR"
                   for entry in logs), logs
        assert [e["status"] for e in server.run_events(failing)] == ["FAILED"]
        assert server.svc.runs.active() == []

        # Starting it again is refused as for any run that ended; nothing else was touched.
        again = http.post(f"/api/v1/runs/{failing}/start")
        assert again.status_code == 409 and again.json()["error"]["code"] == "CONFLICT"
        assert http.get(f"/api/v1/runs/{other}").json()["data"]["state"] == "PENDING"
        r = http.post(f"/api/v1/runs/{other}/start")
        assert r.status_code == 202, r.text
        assert _wait_state(http, other)["state"] == "SUCCESS"

        # The same pipeline runs again once its site file is back.
        server.set_site({"platform": "local"})
        retry = _created(http, server.pipeline_id("site_pipeline"), x=3)
        assert http.post(f"/api/v1/runs/{retry}/start").status_code == 202
        assert _wait_state(http, retry)["state"] == "SUCCESS"
        assert server.svc.runs.outputs(retry)["outputs"]["result"] == 30


def test_execution_created_and_started_in_one_request_does_not_stay_pending(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """``POST /api/executions`` creates the run and starts it: the create succeeded, the start
    raised, and the answer (500) named no run, which stayed PENDING where no one would look."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        pipe = server.pipeline_id("site_pipeline")
        # The platform check runs at create too: a file missing then is an error of the
        # create, which writes nothing.
        server.set_site(None)
        _assert_internal_error(http.post("/api/executions", json={"workflow_id": pipe}))
        assert server.svc.catalog.list_runs(pipeline_id=pipe)[1] == 0

        # Present at create, gone by the start (both inside the request): removed when the
        # run row is written (the patch of the module docstring).
        server.set_site({"platform": "local"})
        catalog = server.svc.catalog
        create_run = catalog.create_run

        def create_then_lose_the_site_file(*args: Any, **kwargs: Any) -> Any:
            row = create_run(*args, **kwargs)
            server.set_site(None)
            return row
        with monkeypatch.context() as patch:
            patch.setattr(catalog, "create_run", create_then_lose_the_site_file)
            r = http.post("/api/executions", json={"workflow_id": pipe, "inputs": {"x": 1}})
        _assert_internal_error(r, str(server.site))
        rows, total = catalog.list_runs(pipeline_id=pipe)
        assert total == 1
        run = http.get(f"/api/v1/runs/{rows[0].run_id}").json()["data"]
        _assert_failed_unexpectedly(run, str(server.site))
        executions = http.get(f"/api/executions/{rows[0].run_id}").json()
        assert executions["status"] == "failed", executions


def _queued_scheduled_run(server: Server, http: httpx.Client) -> tuple[str, str]:
    """A schedule of site_pipeline (max_concurrency 1) and one backfilled run, queued."""
    pipe = server.svc.catalog.find_pipeline("site_pipeline")
    r = http.post("/api/v1/schedules", json={"project_id": pipe.project_id, "pipeline_id": pipe.id,
                                             "kind": "CRON", "expression": "0 0 * * *",
                                             "max_concurrency": 1})
    assert r.status_code == 201, r.text
    sid = str(r.json()["data"]["id"])
    return sid, _backfill_one(server, http, sid)


def _backfill_one(server: Server, http: httpx.Client, sid: str) -> str:
    before = {r.run_id for r in server.svc.catalog.list_runs(schedule_id=sid)[0]}
    r = http.post(f"/api/v1/schedules/{sid}/backfill", json={"count": 1})
    assert r.status_code == 201, r.text
    (run_id,) = {r.run_id for r in server.svc.catalog.list_runs(schedule_id=sid)[0]} - before
    assert server.svc.catalog.get_run(run_id).state is RunState.PENDING
    return str(run_id)


def test_the_firers_claimed_start_ends_the_run_failed_and_the_firer_goes_on(
        server: Server, caplog: pytest.LogCaptureFixture) -> None:
    """The firer claims a queued run (RUNNING) and calls ``start(claimed=True)``, which raised
    and left the run to the firer's safety net: FAILED with the error's text (a path here) and
    no type, and no event for its subscribers."""
    firer = server.svc.extras["schedules"].firer
    with httpx.Client(base_url=server.url, timeout=30) as http:
        sid, failing = _queued_scheduled_run(server, http)
        server.set_site(None)
        firer.tick()                      # logs the error and returns: the firer goes on
        run = http.get(f"/api/v1/runs/{failing}").json()["data"]
        _assert_failed_unexpectedly(run, str(server.site), "No such file")
        assert [e["status"] for e in server.run_events(failing)] == ["FAILED"]
        assert any("FileNotFoundError" in r.getMessage() or
                   (r.exc_info and r.exc_info[0] is FileNotFoundError)
                   for r in caplog.records), "the firer did not log the error"

        # The run freed its slot (max_concurrency 1): the next queued run starts and ends.
        server.set_site({"platform": "local"})
        nxt = _backfill_one(server, http, sid)
        firer.tick()
        assert server.svc.runs.wait(nxt, 30).state is RunState.SUCCESS
        assert firer.running is False        # never started: the ticks above were the tests'


def test_a_claimed_start_that_fails_unexpectedly_does_not_stay_running(server: Server) -> None:
    """``start(claimed=True)`` on its own (the firer's safety net aside): the claimed run was
    left RUNNING with no driver; a cancel of it waited for a driver that never came."""
    svc = server.svc
    run = svc.runs.create(svc.catalog.find_pipeline("site_pipeline"), params={"x": 1})
    assert svc.catalog.claim_start(run.run_id, time.time())     # as the firer's claim does
    server.set_site(None)
    with pytest.raises(FileNotFoundError):
        svc.runs.start(run.run_id, claimed=True)
    final = svc.catalog.get_run(run.run_id)
    assert final.state is RunState.FAILED and final.ended_at is not None
    assert "FileNotFoundError" in (final.error or "")
    assert str(server.site) not in (final.error or "")
    assert svc.runs.active() == [] and not svc.runs._driving(run.run_id)


def test_a_twingraph_error_at_start_keeps_its_handling(server: Server) -> None:
    """Not the bug, its boundary: a pipeline that no longer plans (its component now asks for
    a platform with no executor here) is the client's problem, answered 422 with its reason,
    the run FAILED with the error's text, as before; a bad start body changes nothing."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        run_id = _created(http, server.pipeline_id("site_pipeline"), x=2)
        r = http.post(f"/api/v1/runs/{run_id}/start", json={"timeout_seconds": -1})
        assert r.status_code == 422 and r.json()["error"]["code"] == "VALIDATION_ERROR"
        assert http.get(f"/api/v1/runs/{run_id}").json()["data"]["state"] == "PENDING"

        server.set_site({"platform": "lambda"})
        r = http.post(f"/api/v1/runs/{run_id}/start")
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "VALIDATION_ERROR"
        assert "lambda" in r.json()["error"]["message"]
        run = http.get(f"/api/v1/runs/{run_id}").json()["data"]
        assert run["state"] == "FAILED"
        assert run["error"].startswith("ExecutorUnavailable: ") and "lambda" in run["error"]
