"""Unexpected server-side failures: the INTERNAL_ERROR envelope, logged once, connection kept.

Starlette runs an ``exception_handler(Exception)`` in its outermost ``ServerErrorMiddleware``,
which sends the 500 and then re-raises: uvicorn logged "Exception in ASGI application" (a second
traceback) and closed the keep-alive connection, so a client's next request on it failed with a
transport error; the 500 also lacked ``X-Request-ID``. These tests run the app under a real
uvicorn on a real socket and break the metadata database under it (a table renamed away, no
mocks), then check that the next request is served on the same TCP connection.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from twingraph.server.app import create_app
from twingraph.service import Services


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live(svc: Services) -> Iterator[str]:
    """The app under uvicorn (httptools, keep-alive) in a thread; yields its base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(svc), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False,
                                           log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _rename_table(svc: Services, table: str) -> None:
    """Break the metadata database under the running server, as another process could."""
    path = svc.settings.database_url.removeprefix("sqlite:///")
    con = sqlite3.connect(path)
    try:
        con.execute(f"ALTER TABLE {table} RENAME TO {table}_gone")
        con.commit()
    finally:
        con.close()


def _local_port(response: httpx.Response) -> int:
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


def _assert_internal_error(response: httpx.Response, *leaks: str) -> str:
    assert response.status_code == 500, response.text
    body = response.json()
    assert body["error"]["code"] == "INTERNAL_ERROR"
    assert body["error"]["details"] == []
    rid = body["meta"]["request_id"]
    assert rid.startswith("req_") and response.headers["x-request-id"] == rid
    assert rid in body["error"]["message"]
    for text in ("Traceback", "sqlite", "no such table", *leaks):
        assert text.lower() not in response.text.lower(), response.text
    return str(rid)


@pytest.mark.parametrize("path", ["/api/v1/runs/run_x", "/api/v1/runs/run_x?fresh=1",
                                  "/api/v1/runs"])
def test_unexpected_exception_is_the_envelope_and_keeps_the_connection(
        live: str, svc: Services, caplog: pytest.LogCaptureFixture, path: str) -> None:
    """The runs table gone: the hot read (``fastpath``), the routed ``get_run`` and the list
    raise raw driver/domain errors. Each answers INTERNAL_ERROR with a request id, logs one
    traceback, and the same connection serves the next request."""
    caplog.set_level(logging.INFO)
    with httpx.Client(base_url=live, timeout=10) as client:
        first = client.get("/api/v1/info")
        assert first.status_code == 200
        _rename_table(svc, "runs")
        caplog.clear()
        broken = client.get(path)
        broken_port = _local_port(broken)
        # Before the fix the server closed the connection after this 500: the next request
        # failed (TransportError) or, when the client saw the close first, went on a new one.
        after = client.get("/api/v1/info")
        assert after.status_code == 200
        assert _local_port(first) == broken_port == _local_port(after)
        rid = _assert_internal_error(broken, "runs_gone")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any("Exception in ASGI application" in r.getMessage() for r in errors)
    mine = [r for r in errors if rid in r.getMessage()]
    assert len(mine) == 1 and mine[0].exc_info is not None, [r.getMessage() for r in errors]


def test_storage_error_text_is_not_sent_to_the_client(
        live: str, svc: Services, caplog: pytest.LogCaptureFixture) -> None:
    """A ``StorageError`` (a ``TwinGraphError`` that is no client mistake) was answered with its
    own text: "StorageError: metadata store error: no such table: projects"."""
    with httpx.Client(base_url=live, timeout=10) as client:
        assert client.post("/api/v1/projects", json={"name": "p"}).status_code == 201
        _rename_table(svc, "projects")
        caplog.clear()
        broken = client.get("/api/v1/projects")
        broken_port = _local_port(broken)
        after = client.get("/api/v1/info")
        assert after.status_code == 200 and broken_port == _local_port(after)
        rid = _assert_internal_error(broken, "StorageError", "projects_gone")
    mine = [r for r in caplog.records if r.levelno >= logging.ERROR and rid in r.getMessage()]
    assert len(mine) == 1 and mine[0].exc_info is not None


def test_an_error_that_echoes_a_lone_surrogate_still_renders() -> None:
    """A message or detail that quotes the request (a path id, a field) may hold a lone
    surrogate; the envelope shows its escape instead of failing to encode the answer."""
    import json as _json

    from starlette.requests import Request

    from twingraph.server.envelope import error_response
    request = Request({"type": "http", "method": "GET", "path": "/x", "headers": [],
                       "query_string": b"", "state": {"request_id": "req_1"}})
    response = error_response(request, 404, "run '\ud800' not found",
                              details=[{"field": "id\udfff", "message": "unknown"}])
    body = _json.loads(response.body)
    assert body["error"]["message"] == "run '\\ud800' not found"
    assert body["error"]["details"] == [{"field": "id\\udfff", "message": "unknown"}]


def test_work_this_installation_cannot_run_is_a_422_not_a_500() -> None:
    """A run whose pipeline needs an executor (or more resources) this server lacks, found at
    start (the pipeline changed after the run was created): the client's problem, said so."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from twingraph.errors import ExecutorUnavailable, ResourceUnavailable
    from twingraph.server.envelope import install
    app = FastAPI()
    install(app)

    @app.post("/start-docker")
    def start_docker() -> None:
        raise ExecutorUnavailable("docker", ["render"])

    @app.post("/start-big")
    def start_big() -> None:
        raise ResourceUnavailable(["train"], [("gpu", "8", "0")])

    client = TestClient(app)
    for path, text in (("/start-docker", "no executor for platform 'docker'"),
                       ("/start-big", "train asks for")):
        r = client.post(path)
        assert r.status_code == 422, r.text
        body = r.json()["error"]
        assert body["code"] == "VALIDATION_ERROR" and text in body["message"]
        assert body["details"][0]["field"] == "pipeline_id"
