"""In-process server fixtures: a real engine and real stores on a temporary SQLite home, the
FastAPI app over them, and a TestClient (HTTP and WebSocket) talking to it.

The end-to-end suite (tests/e2e/) runs a real uvicorn process; these tests drive the same app
in-process so that they can read the catalog directly to check that bad input wrote nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from twingraph.server.app import create_app
from twingraph.service import Services, build_services
from twingraph.settings import Settings

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
LOADED = [str(RESOURCES / "documented.py"), str(RESOURCES / "ops.py")]


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db")
    services = build_services(settings)
    # Graph nodes retry 3 times with 1-2-4 s backoff by default (ExecutionConfig); the failure
    # tests here are about what the faces show, not retries (tests/engine covers those).
    services.scheduler.config = dataclasses.replace(services.scheduler.config,
                                                    retry_failed_nodes=False)
    try:
        yield services
    finally:
        services.close()


@pytest.fixture
def client(svc: Services) -> Iterator[TestClient]:
    app = create_app(svc, load=LOADED)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def v1_client(tmp_path: Path) -> Iterator[TestClient]:
    """The app with ``tests/resources/v1_app.py`` loaded, on a fresh SQLite home and with the
    engine's defaults (its services: ``v1_client.app.state.services``)."""
    services = build_services(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db"))
    try:
        with TestClient(create_app(services, load=[str(RESOURCES / "v1_app.py")])) as c:
            yield c
    finally:
        services.close()

