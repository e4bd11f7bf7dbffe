"""A live driver cut off from the metadata database (a PostgreSQL outage longer than the live
window) was taken over as soon as the database came back: one stale reading of its heartbeat
made a resume, a `runs cancel` and a server's adopter take it for dead, and two drivers ran
the same tasks (session 30 review). A stale heartbeat is now watched for at least
``MIN_WATCH`` (a resume, a cancel) or found unchanged by two adoption passes ``confirm``
apart; a driver that beats again meanwhile keeps its run. Real SQLite stores, no lock proof
(as on PostgreSQL, where drivers may be on other machines)."""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from twingraph.core.records import RunHeartbeat
from twingraph.core.states import RunState
from twingraph.engine.engine import LIVE_WINDOW, MIN_WATCH, driver_watch
from twingraph.errors import ConflictError
from twingraph.service.adoption import Adopter


@pytest.fixture
def svc(v1_client: TestClient) -> Any:
    return v1_client.app.state.services


def _silent(svc: Any, silent_for: float) -> str:
    """A RUNNING run of `sum_numbers` whose last heartbeat is ``silent_for`` seconds old."""
    run = svc.runs.create(svc.catalog.find_pipeline("sum_numbers"), params={"n": 2})
    assert svc.catalog.claim_start(run.run_id, time.time() - silent_for)
    return run.run_id


def _beat(svc: Any, run_id: str, at: float) -> None:
    svc.runs.engine.metadata.write([RunHeartbeat(run_id, at, None)])


def test_a_stale_heartbeat_is_watched_and_a_driver_that_beats_again_keeps_its_run(svc: Any) -> None:
    assert driver_watch(time.time() - 600, time.time()) == MIN_WATCH
    assert driver_watch(time.time(), time.time()) == pytest.approx(LIVE_WINDOW, abs=0.5)
    run_id = _silent(svc, 60)
    seen = svc.catalog.get_run(run_id).heartbeat_at
    engine = svc.runs.engine
    threading.Timer(2.0, _beat, (svc, run_id, time.time())).start()    # the database is back
    t0 = time.monotonic()
    with pytest.raises(ConflictError, match="still being driven"):
        engine._wait_until_driverless(run_id, seen)
    assert time.monotonic() - t0 < MIN_WATCH
    with pytest.raises(ConflictError):                    # a REST cancel watches the same way
        svc.runs.cancel(_beat_later(svc, _silent(svc, 60)))
    # no beat: taken for gone after the watch, and the cancel ends the run
    quiet = _silent(svc, 60)
    t0 = time.monotonic()
    assert svc.runs.cancel(quiet).state is RunState.CANCELLED
    assert time.monotonic() - t0 >= MIN_WATCH - 0.5


def _beat_later(svc: Any, run_id: str) -> str:
    threading.Timer(2.0, _beat, (svc, run_id, time.time() + 2.0)).start()
    return run_id


def test_the_adopter_takes_a_stale_run_only_when_a_later_pass_finds_it_unchanged(svc: Any) -> None:
    adopter = Adopter(svc.runs, stale_after=30, confirm=1.0)
    back = _silent(svc, 60)          # its driver will beat again
    dead = _silent(svc, 60)
    assert adopter.adopt_once() == []                     # found stale: not taken yet
    _beat(svc, back, time.time())
    time.sleep(1.1)
    assert adopter.adopt_once() == [dead]
    assert svc.catalog.get_run(back).state is RunState.RUNNING
    assert svc.runs.engine.metadata.driver_epoch(back) == 0          # never claimed
    # a heartbeat that moved while still stale (beats written late) starts the watch again
    late = _silent(svc, 60)
    assert adopter.adopt_once() == []
    _beat(svc, late, time.time() - 45)
    time.sleep(1.1)
    assert adopter.adopt_once() == []
    time.sleep(1.1)
    assert adopter.adopt_once() == [late]
    deadline = time.monotonic() + 30
    while {svc.catalog.get_run(r).state for r in (dead, late)} != {RunState.SUCCESS}:
        assert time.monotonic() < deadline
        time.sleep(0.05)
