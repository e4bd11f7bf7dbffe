"""In-process server fixtures: a real engine and real stores on a temporary SQLite home, the
FastAPI app over them, and a TestClient (HTTP and WebSocket) talking to it.

The end-to-end suite (tests/e2e/) runs a real uvicorn process; these tests drive the same app
in-process so that they can read the catalog directly to check that bad input wrote nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    try:
        yield services
    finally:
        services.close()


@pytest.fixture
def client(svc: Services) -> Iterator[TestClient]:
    app = create_app(svc, load=LOADED)
    with TestClient(app) as c:
        yield c


def graph(*, delay: float | None = None) -> dict[str, Any]:
    """A small TwinGraph-face definition over tests/resources/ops.py: numbers -> squares -> total
    (``n`` comes from the execution's inputs)."""
    numbers: dict[str, Any] = {"id": "numbers", "type": "component", "component": "make_numbers",
                               "config": {"n": "${params.n}"}}
    nodes = [numbers,
             {"id": "squares", "type": "component", "component": "square_all", "config": {}},
             {"id": "total", "type": "component", "component": "add_all", "config": {"offset": 1}}]
    edges = [{"source": "numbers", "target": "squares", "sourceHandle": "output",
              "targetHandle": "input"},
             {"source": "squares", "target": "total", "sourceHandle": "output",
              "targetHandle": "input"}]
    if delay is not None:
        nodes.append({"id": "nap", "type": "component", "component": "sleepy",
                      "config": {"seconds": delay}})
        edges.append({"source": "nap", "target": "total"})
    return {"nodes": nodes, "edges": edges}
