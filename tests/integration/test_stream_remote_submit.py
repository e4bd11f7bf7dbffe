"""The document's serialized job graph: ``env.execute()`` with a job manager URL submits it to a
real server with auth required; it runs there for an admin key; without credentials, with a
write key, or on a server without auth, no graph is ever loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import httpx
import pytest
from fastapi.testclient import TestClient

from twingraph.server.build import build_app
from twingraph.settings import Settings
from twingraph.stream import StreamExecutionEnvironment
from twingraph.stream.connectors.files import read_committed

RESOURCES = Path(__file__).parents[1] / "resources"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(120)
def test_execute_submits_the_graph_to_an_authenticated_server(tmp_path: Path) -> None:
    env = {**os.environ, "TWINGRAPH_HOME": str(tmp_path / "home"), "TWINGRAPH_AUTH": "required",
           "TWINGRAPH_RATE_LIMIT": "off"}
    env.pop("TWINGRAPH_DATABASE_URL", None)
    def create_key(role: str) -> str:
        made = subprocess.run([sys.executable, "-m", "twingraph", "apikey", "create", role,
                               "--role", role], env=env, capture_output=True, text=True, check=True)
        return made.stdout.strip().splitlines()[-1]
    key, write_key = create_key("admin"), create_key("write")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "twingraph", "server", "--port", str(port),
                               "--log-level", "warning"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        out, ck = tmp_path / "out", tmp_path / "ck"
        script = [sys.executable, str(RESOURCES / "remote_stream_job.py"), str(out), str(ck)]
        denied = subprocess.run(script, env={**os.environ, "TWINGRAPH_JOBMANAGER_URL": base},
                                capture_output=True, text=True)
        assert denied.returncode != 0 and "401" in denied.stderr
        # a write key submits entry points; a graph is code, and only an admin may send one
        writer = subprocess.run(script, capture_output=True, text=True, env={
            **os.environ, "TWINGRAPH_JOBMANAGER_URL": base, "TWINGRAPH_API_KEY": write_key})
        assert writer.returncode != 0 and "(403)" in writer.stderr and "'admin' role" in writer.stderr
        assert httpx.get(f"{base}/jobs", headers={"X-API-Key": write_key}).json()["jobs"] == []
        done = subprocess.run(script, capture_output=True, text=True, check=True, env={
            **os.environ, "TWINGRAPH_JOBMANAGER_URL": base, "TWINGRAPH_API_KEY": key})
        job_id = done.stdout.strip().splitlines()[-1]
        assert job_id.startswith("job_")
        headers = {"X-API-Key": key}
        deadline = time.monotonic() + 60
        while (status := httpx.get(f"{base}/jobs/{job_id}/status", headers=headers).json()
               )["status"] not in ("FINISHED", "FAILED"):
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["status"] == "FINISHED", status
        assert sorted(int(x) for x in read_committed(out)) == [2 * i for i in range(500)]
        assert (tmp_path / "home" / "stream-graphs" / f"{job_id}.graph").is_file()  # resumable
    finally:
        server.terminate()
        server.wait(10)


def test_a_server_without_auth_never_loads_a_graph(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db", rate_limit="off")
    app = build_app(settings, schedules=False)
    env = StreamExecutionEnvironment("x")
    env.from_collection([1]).map(str)
    blob = cloudpickle.dumps(env.get_job_graph())
    with TestClient(app) as client:
        r = client.post("/jobs/submit", files={"job_file": ("job.graph", blob)})
        assert r.status_code == 403 and "authentication" in r.json()["error"]["message"]
        assert client.get("/jobs").json()["jobs"] == []
    app.state.services.close()
