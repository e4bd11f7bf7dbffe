"""Streaming on the server: the Tauro face (/api/v1/stream/run|status|stop), the job manager's
routes mounted beside it, and the stream metrics on the server's /metrics."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from twingraph.server.build import build_app
from twingraph.service import build_services
from twingraph.settings import Settings
from twingraph.stores.metadata.apikeys import SQLApiKeyStore

RESOURCES = Path(__file__).parents[1] / "resources"


@pytest.fixture()
def client(tmp_path: Path) -> Any:
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db", rate_limit="off")
    app = build_app(settings, load=[str(RESOURCES / "stream_app.py")], schedules=False)
    with TestClient(app) as c:
        yield c
    app.state.services.close()


def test_tauro_stream_run_sync_status_and_metrics(client: TestClient, tmp_path: Path) -> None:
    r = client.post("/api/v1/stream/run", json={
        "pipeline": "word_counts", "mode": "sync", "timeout": 60,
        "config": {"checkpoints": str(tmp_path / "ck"), "n": 400, "key": "sync"}})
    assert r.status_code == 201, r.text
    job = r.json()["data"]
    assert job["status"] == "FINISHED" and job["pipeline"] == "stream_app:word_counts"
    results = sys.modules["stream_app"].SINKS["sync"].results
    assert sum(n for _, _, n in results) == 400          # every event counted once
    assert job["metrics"]["records_in"] > 0
    status = client.get(f"/api/v1/stream/status?execution_id={job['execution_id']}").json()["data"]
    assert status["status"] == "FINISHED"
    listed = client.get("/api/v1/stream/status").json()["data"]["executions"]
    assert [e["execution_id"] for e in listed] == [job["execution_id"]]
    # the same job through the job manager's own routes
    assert client.get(f"/jobs/{job['execution_id']}/status").json()["status"] == "FINISHED"
    assert client.get("/cluster/metrics").json()["total_jobs"] == 1
    metrics = client.get("/metrics").text
    assert "records_processed_total" in metrics and "twingraph_http_requests_total" in metrics


def test_async_run_then_stop(client: TestClient, tmp_path: Path) -> None:
    r = client.post("/api/v1/stream/run", json={
        "pipeline": "stream_app:word_counts", "mode": "async",
        "config": {"checkpoints": str(tmp_path / "ck2"), "n": 5000, "delay_s": 0.002, "key": "slow"}})
    job = r.json()["data"]
    assert r.status_code == 201 and job["status"] in ("CREATED", "RUNNING")
    deadline = time.monotonic() + 30
    while not sys.modules["stream_app"].SINKS["slow"].results:     # some windows have fired
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stop = client.post("/api/v1/stream/stop", json={"execution_id": job["execution_id"],
                                                     "timeout": 30, "with_savepoint": True})
    assert stop.status_code == 200, stop.text
    body = stop.json()["data"]
    assert body["status"] == "CANCELED" and Path(body["savepoint_path"]).is_dir()
    again = client.post("/api/v1/stream/stop", json={"execution_id": job["execution_id"]})
    assert again.status_code == 409
    config = {"checkpoints": str(tmp_path / "ck2"), "n": 5000, "key": "resumed"}
    refused = client.post("/api/v1/stream/run", json={"pipeline": "word_counts", "config": config,
                                                      "restore_from": str(tmp_path)})
    assert refused.status_code == 422                  # not a checkpoint this server recorded
    resumed = client.post("/api/v1/stream/run", json={
        "pipeline": "word_counts", "config": config, "mode": "sync", "timeout": 60,
        "restore_from": body["savepoint_path"]})
    assert resumed.status_code == 201 and resumed.json()["data"]["status"] == "FINISHED", resumed.text
    before = sys.modules["stream_app"].SINKS["slow"].results
    after = sys.modules["stream_app"].SINKS["resumed"].results
    assert 0 < sum(n for *_, n in after) < 5000          # it went on from the savepoint
    assert sum(n for *_, n in before) + sum(n for *_, n in after) >= 5000


def test_config_file_under_the_working_directory(client: TestClient, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "streaming.yaml").write_text(
        f"checkpoints: {tmp_path / 'ck3'}\nn: 120\nkey: file\n")
    r = client.post("/api/v1/stream/run", json={"config": "config/streaming.yaml",
                                                "pipeline": "word_counts", "mode": "sync"})
    assert r.status_code == 201, r.text
    assert sum(n for _, _, n in sys.modules["stream_app"].SINKS["file"].results) == 120


def test_stream_requests_that_must_be_refused(client: TestClient, tmp_path: Path) -> None:
    cases = [
        ({"pipeline": "os:system", "config": {"command": "true"}}, 422),       # not a loaded module
        ({"pipeline": "json:loads", "config": {"s": "1"}}, 422),
        ({"pipeline": "no_such_job"}, 404),
        ({"pipeline": "word_counts", "config": "../../etc/passwd"}, 422),     # outside the cwd
        ({"pipeline": "word_counts", "config": "missing.yaml"}, 404),
        ({"pipeline": "word_counts", "config": {"bogus": 1}}, 422),           # bad arguments
        ({"pipeline": "word_counts", "mode": "later"}, 422),
        ({}, 422),
    ]
    for body, code in cases:
        r = client.post("/api/v1/stream/run", json=body)
        assert r.status_code == code, (body, r.text)
        assert r.json()["error"]["code"] in ("VALIDATION_ERROR", "NOT_FOUND")
    assert client.get("/api/v1/stream/status").json()["data"]["executions"] == []
    assert client.get("/api/v1/stream/status?execution_id=job_nope").status_code == 404
    assert client.post("/api/v1/stream/stop", json={"execution_id": "job_nope"}).status_code == 404
    assert client.post("/jobs/submit", json={"entrypoint": "os:getcwd"}).status_code == 422


def test_latest_restores_only_a_checkpoint_this_server_recorded(client: TestClient,
                                                                 tmp_path: Path) -> None:
    """'latest' is the newest checkpoint of a directory the client's config names: a real
    checkpoint copied (planted) there is refused, since restoring unpickles operator state."""
    import shutil
    r = client.post("/api/v1/stream/run", json={
        "pipeline": "word_counts", "mode": "async",
        "config": {"checkpoints": str(tmp_path / "ck_own"), "n": 5000, "delay_s": 0.002,
                   "key": "planted_src"}})
    job = r.json()["data"]
    deadline = time.monotonic() + 30
    while not sys.modules["stream_app"].SINKS["planted_src"].results:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stop = client.post("/api/v1/stream/stop", json={"execution_id": job["execution_id"],
                                                     "timeout": 30, "with_savepoint": True})
    savepoint = Path(stop.json()["data"]["savepoint_path"])
    shutil.copytree(savepoint, tmp_path / "planted" / "chk-00000099")
    planted = client.post("/api/v1/stream/run", json={
        "pipeline": "word_counts", "restore_from": "latest",
        "config": {"checkpoints": str(tmp_path / "planted"), "n": 10, "key": "planted"}})
    assert planted.status_code == 422 and "not a checkpoint this server recorded" in planted.text
    fresh = client.post("/api/v1/stream/run", json={          # nothing there yet: starts anew
        "pipeline": "word_counts", "restore_from": "latest", "mode": "sync", "timeout": 60,
        "config": {"checkpoints": str(tmp_path / "fresh"), "n": 10, "key": "fresh"}})
    assert fresh.status_code == 201, fresh.text


def test_unreadable_configs_and_stream_errors_are_bad_input(client: TestClient, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    for name in ("bad.yaml", "bad.json", "bin.yaml"):
        r = client.post("/api/v1/stream/run", json={"pipeline": "word_counts", "config": name})
        assert r.status_code == 422 and "cannot be read" in r.text, (name, r.text)
    blocked = tmp_path / "file"
    blocked.write_text("x")                         # a checkpoint "directory" under a file
    r = client.post("/api/v1/stream/run", json={"pipeline": "word_counts",
                                                "config": {"checkpoints": str(blocked / "ck")}})
    assert r.status_code == 422, r.text


def test_only_stream_jobs_of_loaded_modules_are_called(client: TestClient, tmp_path: Path) -> None:
    """A loaded module's helpers and imported names are not entry points: refused by name (422),
    on both faces, and never called."""
    marker = tmp_path / "called"
    runs = [({"pipeline": "record", "config": {"path": str(marker)}}, "stream_app:record"),
            ({"pipeline": "stream_app:record", "config": {"path": str(marker)}}, "stream_app:record"),
            ({"pipeline": "CollectSink"}, "stream_app:CollectSink"),
            ({"pipeline": "stream_app:StreamExecutionEnvironment", "config": {"name": "x"}},
             "stream_app:StreamExecutionEnvironment")]
    for body, entrypoint in runs:
        r = client.post("/api/v1/stream/run", json=body)
        assert r.status_code == 422, (body, r.text)
        error = r.json()["error"]
        assert error["code"] == "VALIDATION_ERROR"
        assert f"entrypoint '{entrypoint}' is not a stream job" in error["message"], error
    r = client.post("/jobs/submit", json={"entrypoint": "stream_app:record",
                                          "args": {"path": str(marker)}})
    assert r.status_code == 422 and "'stream_app:record' is not a stream job" in r.text
    assert not marker.exists()
    assert client.get("/jobs").json()["jobs"] == []


class _Unpickled:
    """Unpickling this writes ``marker``: what a job_file upload does in the server process."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.write_text, (self.marker, "unpickled"))


@pytest.fixture()
def secured(tmp_path: Path) -> Any:
    """The server app with auth required, and a key per role (secret by role name)."""
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db",
                        rate_limit="off", auth="required")
    svc = build_services(settings)
    store = SQLApiKeyStore(svc.catalog.store)
    keys = {role: store.create(role, [role])[1] for role in ("read", "write", "admin")}
    app = build_app(settings, load=[str(RESOURCES / "stream_app.py")], schedules=False,
                    services=svc)
    with TestClient(app) as c:
        yield c, keys
    svc.close()


def test_serialized_job_graphs_need_the_admin_role(secured: Any, tmp_path: Path) -> None:
    """A job_file is unpickled, i.e. run: write keys (which may submit entry points) get 403
    FORBIDDEN before the body is read; an admin may submit a graph."""
    import cloudpickle

    from twingraph.stream import CollectSink, StreamExecutionEnvironment
    client, keys = secured
    marker = tmp_path / "unpickled"
    evil = cloudpickle.dumps(_Unpickled(marker))
    for role, need in (("read", "write"), ("write", "admin")):
        r = client.post("/jobs/submit", files={"job_file": ("job.graph", evil)},
                        headers={"X-API-Key": keys[role]})
        assert r.status_code == 403, (role, r.text)
        error = r.json()["error"]
        assert error["code"] == "FORBIDDEN" and f"lacks the '{need}' role" in error["message"]
    assert not marker.exists()
    assert client.get("/jobs", headers={"X-API-Key": keys["read"]}).json()["jobs"] == []

    entry = client.post("/jobs/submit", headers={"X-API-Key": keys["write"]}, json={
        "entrypoint": "stream_app:word_counts",
        "args": {"checkpoints": str(tmp_path / "ck"), "n": 20, "key": "by_writer"}})
    assert entry.status_code == 200, entry.text
    env = StreamExecutionEnvironment("AdminGraph")
    env.from_collection([1, 2, 3]).map(str).add_sink(CollectSink())
    graph = client.post("/jobs/submit", headers={"X-API-Key": keys["admin"]},
                        files={"job_file": ("job.graph", cloudpickle.dumps(env.get_job_graph()))})
    assert graph.status_code == 200, graph.text
    listed = client.get("/jobs", headers={"X-API-Key": keys["read"]}).json()["jobs"]
    assert {j["job_id"] for j in listed} == {entry.json()["job_id"], graph.json()["job_id"]}
