"""A real ``twingraph server`` process on 127.0.0.1, once per metadata backend per session.

``server`` is parametrized over ``BACKENDS``: the embedded default (SQLite in a fresh
TWINGRAPH_HOME) and the machine's PostgreSQL (a database of its own, created here and dropped at
the end). Each is ``python -m twingraph server --port <free> --load tests/resources/server_app.py``
as a subprocess, with rate limits off (the tests make hundreds of requests a minute); the fixture
waits for ``/health`` and stops the process (SIGTERM, then SIGKILL) when the session ends. The
server's output goes to a log file whose tail is printed when the server fails to come up.

Whoever adds a metadata backend adds it to ``BACKENDS``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_URL

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "tests" / "resources" / "server_app.py"
BACKENDS = ["sqlite", "postgres"]
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Server:
    backend: str
    base_url: str
    home: Path
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/ws"

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, env_extra: dict[str, str], *, backend: str = "sqlite",
                 load: Path = APP, extra_args: tuple[str, ...] = ()) -> Server:
    """Start ``twingraph server`` and wait until ``/health`` answers 200."""
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TWINGRAPH_HOME=str(home), TWINGRAPH_RATE_LIMIT="off",
               TWINGRAPH_RATE_LIMIT_BULK="off", TWINGRAPH_RATE_LIMIT_WS="off",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.update(env_extra)
    if "TWINGRAPH_DATABASE_URL" not in env_extra:      # the embedded default, whatever the caller's env
        env.pop("TWINGRAPH_DATABASE_URL", None)
    log = home / "server.log"
    for _ in range(3):                      # a port picked free can be taken before we bind it
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "twingraph", "server", "--host", "127.0.0.1",
                 "--port", str(port), "--load", str(load), "--log-level", "warning", *extra_args],
                cwd=str(home), env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        srv = Server(backend, f"http://127.0.0.1:{port}", home, log, proc)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(srv.base_url + "/health", timeout=2).status_code == 200:
                    return srv
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        stop_server(srv)
        if "address already in use" not in srv.log_tail().lower():
            break
    raise RuntimeError(f"twingraph server ({backend}) did not come up:\n{srv.log_tail()}")


def stop_server(srv: Server) -> None:
    if srv.process.poll() is None:
        srv.process.send_signal(signal.SIGTERM)
        try:
            srv.process.wait(15)
        except subprocess.TimeoutExpired:
            srv.process.kill()
            srv.process.wait(10)


@contextlib.contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database (its SQLAlchemy URL), dropped on exit; skips the test if
    PostgreSQL is not reachable."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {ADMIN_URL}: {exc}".strip())
    name = f"{prefix}_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) \
                + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def e2e_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the e2e server only (dropped at the end)."""
    with fresh_postgres_database("twingraph_e2e") as url:
        yield url


@pytest.fixture(scope="session", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    backend = request.param
    env: dict[str, str] = {}
    if backend == "postgres":
        env["TWINGRAPH_DATABASE_URL"] = request.getfixturevalue("e2e_postgres_url")
    srv = start_server(tmp_path_factory.mktemp(f"server-{backend}"), env, backend=backend)
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The embedded default only (for checks that do not depend on the backend)."""
    srv = start_server(tmp_path_factory.mktemp("server-sqlite-only"), {})
    try:
        yield srv
    finally:
        stop_server(srv)


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"
