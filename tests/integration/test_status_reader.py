"""The hot run-status read on a dedicated connection: same answer as the Core path, on both
backends, and it survives its connection being killed (PostgreSQL restarted a backend)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from twingraph.server.app import load_modules
from twingraph.service import build_services
from twingraph.settings import Settings

RESOURCES = Path(__file__).parents[1] / "resources"


@pytest.fixture(params=["sqlite", "postgres"])
def services(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    url = (f"sqlite:///{tmp_path}/tg.db" if request.param == "sqlite"
           else request.getfixturevalue("postgres_url"))
    svc = build_services(Settings(home=tmp_path, database_url=url))
    load_modules(svc, [str(RESOURCES / "v1_app.py")])
    yield svc
    svc.close()


def test_status_reader_matches_the_core_path_and_reconnects(services) -> None:  # type: ignore[no-untyped-def]
    svc = services
    run = svc.runs.create(svc.catalog.find_pipeline("sum_numbers"), params={"n": 3},
                          tags={"k": "v"})
    reader = svc.catalog.status_reader()
    row, counts = svc.catalog.run_status(run.run_id, reader=reader)
    assert row == svc.catalog.get_run(run.run_id) and counts == {}
    svc.runs.start(run.run_id)
    svc.runs.wait(run.run_id, 20)
    time.sleep(0.2)
    row, counts = svc.catalog.run_status(run.run_id, reader=reader)
    assert row.state.value == "SUCCESS" and row.tags == {"k": "v"} and counts == {"SUCCESS": 2}
    assert svc.catalog.run_status(run.run_id) == (row, counts)           # pooled path agrees
    if svc.engine.metadata.url.startswith("postgresql"):
        pid = reader._raw.driver_connection.info.backend_pid
        url = svc.engine.metadata.url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url.replace("***", ""), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert svc.catalog.run_status(run.run_id, reader=reader) == (row, counts)
        assert reader._raw.driver_connection.info.backend_pid != pid


def test_closing_services_closes_the_metadata_connections(postgres_url: str, tmp_path: Path) -> None:
    svc = build_services(Settings(home=tmp_path, database_url=postgres_url))
    load_modules(svc, [str(RESOURCES / "v1_app.py")])
    svc.catalog.list_projects()
    name = postgres_url.rsplit("/", 1)[1]
    admin_url = postgres_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"

    def connections() -> int:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                (name,)).fetchone()
            return int(row[0]) if row else 0
    assert connections() >= 1
    svc.close()
    deadline = time.monotonic() + 5
    while connections() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connections() == 0
