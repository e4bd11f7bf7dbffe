"""A server adopts at once a run whose driver on this machine died holding its lock, and
cancels it at once (session 29, decision 0090): before, it waited until the run's heartbeat
was `stale_after` (30 s) or the live window (11 s) old. A run whose heartbeat is fresh and
whose lock proves nothing is still left alone, and an adoption never undoes what another
driver or a cancel did meanwhile (a regression review of the first version found both)."""
from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from twingraph.core.states import RunState
from twingraph.engine.driverlock import _HOST
from twingraph.errors import ConflictError
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
    (locks.directory / f"{orphan}.lock").write_text(f"{_dead_pid()}:0:{_HOST}")
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


def _orphan(svc: Services, run_id: str) -> None:
    locks = svc.runs.engine._driver_locks
    assert locks is not None
    locks.directory.mkdir(exist_ok=True)
    (locks.directory / f"{run_id}.lock").write_text(f"{_dead_pid()}:0:{_HOST}")


def test_a_server_cancels_at_once_a_run_whose_driver_died(svc: Services) -> None:
    run_id = _running(svc)
    with pytest.raises(ConflictError, match="another process"):
        svc.runs.cancel(run_id)                   # heard from just now, nothing proven
    _orphan(svc, run_id)
    t0 = time.monotonic()
    assert svc.runs.cancel(run_id).state is RunState.CANCELLED
    assert time.monotonic() - t0 < 5


def test_an_adoption_claim_ends_what_the_dead_drivers_file_proves(svc: Services) -> None:
    """Claimed for adoption, the run has a driver again (its thread is about to take the lock):
    a `runs cancel` or resume meanwhile must watch for it, not take the file for proof."""
    run_id = _running(svc)
    _orphan(svc, run_id)
    assert svc.runs.engine.driver_dead(run_id)
    assert svc.catalog.claim_adoption(svc.catalog.get_run(run_id), time.time())
    assert not svc.runs.engine.driver_dead(run_id)
    assert run_id not in svc.runs.engine.orphaned_runs()


def test_an_adoption_another_driver_beat_to_the_lock_leaves_the_run_alone(
        svc: Services) -> None:
    """The adopter's driver found the run's lock held (a resume took it first): it FAILED the
    run that the other process was driving."""
    run_id = _running(svc)
    locks = svc.runs.engine._driver_locks
    assert locks is not None
    locks.directory.mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(locks.directory / (run_id + '.lock'))!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\n"
         "print('held', flush=True)\ntime.sleep(30)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert svc.catalog.claim_adoption(svc.catalog.get_run(run_id), time.time())
        svc.runs.resume(run_id)
        deadline = time.monotonic() + 10
        while svc.runs.active() and run_id in svc.runs.active():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert svc.catalog.get_run(run_id).state is RunState.RUNNING   # not FAILED
    finally:
        holder.kill()
        holder.wait()


def test_an_adopted_run_cancelled_meanwhile_is_not_driven_again(svc: Services) -> None:
    """Cancelled between the adopter's claim and its driver's: the driver made it RUNNING
    again and ran it to SUCCESS after the user was told CANCELLED."""
    run_id = _running(svc)
    assert svc.catalog.claim_adoption(svc.catalog.get_run(run_id), time.time())
    assert svc.catalog.finish_running(run_id, RunState.CANCELLED, "cancelled by user",
                                      time.time())
    svc.runs.resume(run_id)
    deadline = time.monotonic() + 10
    while run_id in svc.runs.active():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.2)
    assert svc.catalog.get_run(run_id).state is RunState.CANCELLED
