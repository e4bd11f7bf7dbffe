"""The job manager REST face and the ``twingraph stream`` CLI, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from twingraph.cli.stream import app as cli
from twingraph.stream.jobmanager import create_app
from twingraph.stream.jobs import JobManager

sys.path.insert(0, str(Path(__file__).parent))  # so the job manager can import stream_jobs_entry
import stream_jobs_entry  # noqa: E402


@pytest.fixture()
def jobmanager() -> Iterator[tuple[str, JobManager]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = JobManager(slots=4, port=port)
    server = uvicorn.Server(uvicorn.Config(create_app(manager), host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", manager
    manager.shutdown()
    server.should_exit = True
    th.join(10)


def wait_status(c: httpx.Client, job_id: str, wanted: set[str], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st = c.get(f"/jobs/{job_id}/status").json()
        if st["status"] in wanted or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


@pytest.mark.timeout(90)
def test_submit_status_metrics_savepoint_cancel_and_restore(jobmanager: tuple[str, JobManager], tmp_path: Path) -> None:
    url, _ = jobmanager
    chk = str(tmp_path / "chk")
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/jobs/submit", json={"entrypoint": "stream_jobs_entry:slow_count",
                                         "args": {"checkpoints": chk, "n": 800}})  # ~4 s of work
        assert r.status_code == 200, r.text
        job_id = r.json()["job_id"]
        st = wait_status(c, job_id, {"RUNNING"})
        assert st["status"] == "RUNNING" and st["start_time"] > 0 and st["end_time"] is None
        time.sleep(0.3)
        m = c.get(f"/jobs/{job_id}/metrics").json()
        assert m["throughput"] > 0 and m["checkpoints_completed"] >= 1 and m["checkpoint_duration_ms"] > 0
        assert 0.0 <= m["backpressure_ratio"] <= 1.0
        prom = c.get("/metrics").text
        counted = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
                   for line in prom.splitlines() if line.startswith("records_processed_total{")}
        assert any('operator="counts"' in labels and n > 0 for labels, n in counted.items())
        for name in ("checkpoint_duration_seconds_count", "backpressure_ratio{", "watermark_lag_ms{",
                     "processing_latency_seconds_bucket{", "state_size_bytes{"):
            assert name in prom, name
        sp = c.post(f"/jobs/{job_id}/savepoint").json()
        assert Path(sp["location"], "_metadata.json").exists() and sp["checkpoint_id"] >= 1
        tms = c.get("/taskmanagers").json()["task_managers"]
        assert tms[0]["task_slots"] == 4 and tms[0]["available_slots"] == 3
        cm = c.get("/cluster/metrics").json()
        assert cm["running_jobs"] == 1 and cm["total_jobs"] == 1 and cm["utilization"] == 0.25
        r = c.post(f"/jobs/{job_id}/cancel", params={"with_savepoint": "true"}).json()
        assert r["status"] == "CANCELED" and Path(r["savepoint_path"], "_metadata.json").exists()
        assert [j["status"] for j in c.get("/jobs").json()["jobs"]] == ["CANCELED"]

        # restore the cancelled job from its savepoint with another parallelism; it runs to the end
        sink = stream_jobs_entry.RESULTS[chk]
        r = c.post("/jobs/submit", json={"entrypoint": "stream_jobs_entry:slow_count",
                                         "args": {"checkpoints": chk, "n": 800, "parallelism": 3, "delay_s": 0},
                                         "restore_from": r["savepoint_path"]})
        job2 = r.json()["job_id"]
        assert wait_status(c, job2, {"FINISHED", "FAILED"})["status"] == "FINISHED"
        assert sorted(sink.results) == sorted((f"k{k}", w, 10) for w in range(0, 800, 50) for k in range(5))


def test_bad_submissions_and_unknown_jobs(jobmanager: tuple[str, JobManager]) -> None:
    url, _ = jobmanager
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("/jobs/submit", json={"entrypoint": "os.system"}).status_code == 422  # no ':'
        assert c.post("/jobs/submit", json={"entrypoint": "no_such_module_x:f"}).status_code == 422
        assert c.post("/jobs/submit", json={"entrypoint": "stream_jobs_entry:not_a_job"}).status_code == 422
        assert c.post("/jobs/submit", content=b"\x80\x04pickle", headers={"content-type": "application/octet-stream"}).status_code == 415
        # a web page can POST text/plain to a loopback server without a CORS preflight
        plain = c.post("/jobs/submit", content=b'{"entrypoint": "stream_jobs_entry:slow_count"}',
                       headers={"content-type": "text/plain", "origin": "http://evil.example"})
        assert plain.status_code == 415
        assert c.get("/jobs/job_nope/status").status_code == 404
        assert c.post("/jobs/job_nope/cancel").status_code == 404
        assert c.get("/jobs").json() == {"jobs": []}


@pytest.mark.timeout(60)
def test_only_stream_jobs_are_called(jobmanager: tuple[str, JobManager], tmp_path: Path) -> None:
    """An entry point is called with the request's arguments before its result can be checked,
    so anything but a stream job (``@stream_job``, or ``-> StreamExecutionEnvironment``) is
    refused by name WITHOUT being called: a builtin, a class, a helper function."""
    url, _ = jobmanager
    marker = tmp_path / "called"
    refused = [("os:system", {"command": f"touch {marker}"}),
               ("subprocess:getoutput", {"cmd": f"touch {marker}"}),
               ("stream_jobs_entry:touch", {"path": str(marker)}),        # an unmarked helper
               ("stream_jobs_entry:CollectSink", {}),                     # an imported class
               ("stream_jobs_entry:time", {}),                            # a module
               ("stream_jobs_entry:not_a_job", {})]
    with httpx.Client(base_url=url, timeout=30) as c:
        for entrypoint, args in refused:
            r = c.post("/jobs/submit", json={"entrypoint": entrypoint, "args": args})
            assert r.status_code == 422, (entrypoint, r.text)
            assert f"entrypoint '{entrypoint}' is not a stream job" in r.json()["detail"], r.text
        assert not marker.exists()
        assert c.get("/jobs").json() == {"jobs": []}
        # a decorated function needs no annotation
        r = c.post("/jobs/submit", json={"entrypoint": "stream_jobs_entry:decorated_count",
                                         "args": {"checkpoints": str(tmp_path / "chk")}})
        assert r.status_code == 200, r.text
        assert wait_status(c, r.json()["job_id"], {"FINISHED", "FAILED"})["status"] == "FINISHED"


@pytest.mark.timeout(60)
def test_cli_submit_list_status_cancel(jobmanager: tuple[str, JobManager], tmp_path: Path) -> None:
    url, _ = jobmanager
    runner = CliRunner()
    r = runner.invoke(cli, ["submit", "stream_jobs_entry:slow_count", "--arg", f"checkpoints={tmp_path}",
                            "--arg", "n=2000", "--url", url])
    assert r.exit_code == 0, r.output
    job_id = r.output.split('"job_id": "')[1].split('"')[0]
    r = runner.invoke(cli, ["list", "--url", url])
    assert job_id in r.output
    r = runner.invoke(cli, ["status", job_id, "--url", url])
    assert r.exit_code == 0 and '"status"' in r.output
    r = runner.invoke(cli, ["cancel", job_id, "--with-savepoint", "--url", url])
    assert r.exit_code == 0 and '"CANCELED"' in r.output and "savepoints" in r.output
    r = runner.invoke(cli, ["status", "job_missing", "--url", url])
    assert r.exit_code == 1


@pytest.mark.timeout(90)
def test_registry_records_jobs_and_checkpoints_and_resumes_running_jobs(tmp_path: Path) -> None:
    from twingraph.stores.metadata.store import SQLMetadataStore
    from twingraph.stores.metadata.stream_jobs import SQLStreamJobStore

    url = f"sqlite:///{tmp_path / 'meta.db'}"
    chk = str(tmp_path / "chk")
    registry = SQLStreamJobStore(SQLMetadataStore(url, create=True))
    first = JobManager(registry=registry)
    rec = first.submit("stream_jobs_entry:slow_count", {"checkpoints": chk, "n": 400})
    deadline = time.monotonic() + 30
    while not registry.checkpoints(rec.job_id) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert registry.get(rec.job_id).status == "RUNNING"  # type: ignore[union-attr]
    assert registry.checkpoints(rec.job_id)[0].kind == "checkpoint"
    # The job manager's process "dies": the job stops without recording it (the row still says
    # RUNNING, as after kill -9); its committed output and its checkpoints stay on disk.
    rec.client.run.status_listeners.clear()
    rec.client.cancel()

    second = JobManager(registry=SQLStreamJobStore(SQLMetadataStore(url)))
    assert second.recover() == [rec.job_id]
    again = second.get(rec.job_id).client
    again.wait(60)
    row = registry.get(rec.job_id)
    assert row is not None and row.status == "FINISHED" and row.end_time_ms
    assert again.run.restored_from is not None  # resumed from a checkpoint, not from scratch
    sink = stream_jobs_entry.RESULTS[chk]
    assert sorted(sink.results) == sorted((f"k{k}", w, 10) for w in range(0, 400, 50) for k in range(5))
    ids = [c.checkpoint_id for c in registry.checkpoints(rec.job_id)]
    assert ids == sorted(set(ids)) and len(ids) >= 2
    assert second.recover() == []  # nothing left to resume


@pytest.mark.timeout(120)
def test_kill_minus_9_of_the_job_manager_then_restart_resumes_the_job(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess

    from twingraph.stream import read_committed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, TWINGRAPH_DATABASE_URL=f"sqlite:///{tmp_path / 'meta.db'}",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[2] / "src"),
                                           os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "twingraph", "stream", "jobmanager", "--port", str(port)]

    def start() -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/jobs", timeout=1)
                return p
            except httpx.HTTPError:
                time.sleep(0.1)
        p.kill()
        raise AssertionError("job manager did not start")

    out, chk = tmp_path / "out", tmp_path / "chk"
    p = start()
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/jobs/submit", timeout=30, json={
            "entrypoint": "stream_jobs_entry:file_count", "args": {"checkpoints": str(chk), "out": str(out)}})
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 30
        while not list(chk.glob("chk-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert httpx.get(f"http://127.0.0.1:{port}/jobs/{job_id}/status").json()["status"] == "RUNNING"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    p = start()  # recovers the registry's RUNNING job from its latest checkpoint
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = httpx.get(f"http://127.0.0.1:{port}/jobs/{job_id}/status").json()
            if st.get("status") in ("FINISHED", "FAILED"):
                break
            time.sleep(0.1)
        assert st["status"] == "FINISHED", st
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(10)
    lines = sorted(read_committed(out))
    assert lines == sorted(f"k{k} {w} 10" for w in range(0, 600, 50) for k in range(5))


@pytest.mark.timeout(30)         # before the fix it served on 0.0.0.0 until killed
def test_the_stand_alone_job_manager_refuses_to_bind_beyond_loopback() -> None:
    """It has no authentication: beyond loopback anyone could start jobs."""
    result = CliRunner().invoke(cli, ["jobmanager", "--host", "0.0.0.0", "--no-registry"])
    assert result.exit_code == 2
    assert "no authentication" in result.output and "twingraph server" in result.output


@pytest.mark.timeout(60)
def test_the_stand_alone_job_manager_answers_421_to_a_rebound_host_name(tmp_path: Path) -> None:
    import subprocess
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "twingraph", "stream", "jobmanager", "--port",
                             str(port), "--no-registry"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                ok = httpx.get(f"{base}/jobs", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert ok.status_code == 200
        rebound = httpx.get(f"{base}/jobs", headers={"Host": f"attacker.example:{port}"}, timeout=5)
        assert rebound.status_code == 421
    finally:
        proc.terminate()
        proc.wait(10)
