"""A server adopts at once a run whose driver on this machine died holding its lock (session
29, decision 0090): before, it waited until the run's heartbeat was `stale_after` (30 s) old.
A run whose heartbeat is fresh and whose lock proves nothing is still left alone."""
from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from twingraph.core.states import RunState
from twingraph.server.app import create_app
from twingraph.service import Services, build_services
from twingraph.service.adoption import Adopter
from twingraph.settings import Settings

RESOURCES = Path(__file__).resolve().parents[1] / "resources"


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Services]:
    services = build_services(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/tg.db"))
    app = create_app(services, load=[str(RESOURCES / "v1_app.py")])
    try:
        with TestClient(app):
            yield services
    finally:
        services.close()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _running(svc: Services) -> str:
    """A run of `sum_numbers` RUNNING with a fresh heartbeat, driven by nobody here."""
    run = svc.runs.create(svc.catalog.find_pipeline("sum_numbers"), params={"n": 4})
    assert svc.catalog.claim_start(run.run_id, time.time())
    return run.run_id


def test_a_run_whose_driver_died_holding_its_lock_is_adopted_at_once(svc: Services) -> None:
    quiet = _running(svc)
    orphan = _running(svc)
    adopter = Adopter(svc.runs, stale_after=60)
    assert adopter.adopt_once() == []                 # heard from just now: left alone

    locks = svc.runs.engine._driver_locks
    assert locks is not None
    locks.directory.mkdir(exist_ok=True)
    (locks.directory / f"{orphan}.lock").write_text(str(_dead_pid()))
    assert adopter.adopt_once() == [orphan]
    deadline = time.monotonic() + 30
    while svc.catalog.get_run(orphan).state is RunState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    done = svc.catalog.get_run(orphan)
    assert done.state is RunState.SUCCESS, done.error
    logs = svc.runs.engine.metadata.get_logs(orphan)
    assert any("died holding the run's lock" in rec.message for rec in logs)
    assert svc.catalog.get_run(quiet).state is RunState.RUNNING
    assert not (locks.directory / f"{orphan}.lock").exists()     # its new driver let go
