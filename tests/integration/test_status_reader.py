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
    import secrets
    admin_url = postgres_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
    name = f"twingraph_close_{secrets.token_hex(4)}"          # a database of its own: counted alone
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        svc = build_services(Settings(home=tmp_path,
                                      database_url=postgres_url.rsplit("/", 1)[0] + f"/{name}"))
        load_modules(svc, [str(RESOURCES / "v1_app.py")])
        svc.catalog.list_projects()

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
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_batch_chosen_as_deadlock_victim_is_written_again(postgres_url: str, tmp_path: Path) -> None:
    import threading

    from twingraph.core.records import RunRecord, RunUpdate
    from twingraph.core.states import RunState
    svc = build_services(Settings(home=tmp_path, database_url=postgres_url))
    store = svc.catalog.store
    store.write([RunRecord("dl-1", "p", RunState.RUNNING, started_at=1.0),
                 RunRecord("dl-2", "p", RunState.RUNNING, started_at=1.0)])
    url = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    other = psycopg.connect(url)                     # holds dl-2, then asks for dl-1: a cycle
    other.execute("UPDATE runs SET error = 'other' WHERE run_id = 'dl-2'")
    done: list[object] = []
    writer = threading.Thread(target=lambda: done.append(store.write(
        [RunUpdate("dl-1", RunState.SUCCESS, 2.0), RunUpdate("dl-2", RunState.SUCCESS, 2.0)])))
    writer.start()
    time.sleep(0.3)                                  # the writer holds dl-1 and waits for dl-2
    try:
        other.execute("UPDATE runs SET error = 'other' WHERE run_id = 'dl-1'")
        other.commit()
    except psycopg.errors.DeadlockDetected:
        other.rollback()
    other.close()
    writer.join(30)
    assert done == [[]], "the batch was lost"
    assert {r: svc.catalog.store.get_run(r).state for r in ("dl-1", "dl-2")} == \
        {"dl-1": RunState.SUCCESS, "dl-2": RunState.SUCCESS}
    svc.close()


def test_a_driver_error_on_the_hot_read_is_a_storage_error(tmp_path: Path) -> None:
    """The raw DBAPI read bypasses the store's error translation: a driver error (here the
    table is gone) must come out as ``StorageError`` like every other read, not as
    ``sqlite3.OperationalError``."""
    import sqlite3

    from twingraph.errors import StorageError
    svc = build_services(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db"))
    try:
        load_modules(svc, [str(RESOURCES / "v1_app.py")])
        run = svc.runs.create(svc.catalog.find_pipeline("sum_numbers"), params={"n": 3})
        reader = svc.catalog.status_reader()
        svc.catalog.run_status(run.run_id, reader=reader)
        with sqlite3.connect(tmp_path / "tg.db") as db:
            db.execute("ALTER TABLE runs RENAME TO runs_gone")
        for kw in ({"reader": reader}, {}):
            with pytest.raises(StorageError, match="no such table"):
                svc.catalog.run_status(run.run_id, **kw)
        reader.close()
    finally:
        svc.close()
