"""kill -9 a server in the middle of a run; a restarted server adopts the run and finishes it
without re-running the steps whose results were recorded."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

RESOURCES = Path(__file__).parents[1] / "resources"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TWINGRAPH_HOME": str(home), "TWINGRAPH_ADOPT_AFTER": "11",
           "TWINGRAPH_RATE_LIMIT": "off", "ADOPT_LOG": str(log)}
    env.pop("TWINGRAPH_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "twingraph", "server", "--port", str(port),
                             "--load", str(RESOURCES / "adoptable.py"), "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


@pytest.mark.timeout(120)
def test_killed_server_run_is_adopted_and_finished(tmp_path: Path) -> None:
    log = tmp_path / "executions.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v1"
    server = start_server(tmp_path, port, log)
    try:
        run = httpx.post(f"{base}/runs", json={"pipeline_id": "adoptable", "params": {"n": 8}}).json()["data"]
        httpx.post(f"{base}/runs/{run['id']}/start").raise_for_status()
        deadline = time.monotonic() + 30
        while len(log.read_text().split()) < 4 if log.exists() else True:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    db = sqlite3.connect(tmp_path / "twingraph.db")
    state = db.execute("SELECT state FROM runs WHERE run_id=?", (run["id"],)).fetchone()[0]
    recorded = {nid for (nid,) in db.execute(
        "SELECT node_id FROM tasks WHERE run_id=? AND state='SUCCESS'", (run["id"],))}
    db.close()
    assert state == "RUNNING" and recorded          # the crash left it half-done
    before = log.read_text().split()

    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v1"
    server = start_server(tmp_path, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            got = httpx.get(f"{base}/runs/{run['id']}").json()["data"]
            if got["state"] != "RUNNING" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert got["state"] == "SUCCESS", got
        assert got["progress"]["completed_tasks"] == 8
        after = log.read_text().split()[len(before):]
        done_before = {int(n.rsplit("-", 1)[-1]) for n in recorded}
        assert not done_before & {int(i) for i in after}, (recorded, after)
        assert sorted({int(i) for i in before + after}) == list(range(8))
        logs = httpx.get(f"{base}/runs/{run['id']}/logs?level=WARNING").json()["data"]
        assert any("adopted" in e["message"] for e in logs)
    finally:
        server.terminate()
        server.wait(10)
