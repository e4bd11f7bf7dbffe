"""Adoption: a run whose driver died (server killed, CLI killed) is finished by a live server.

Every driver writes the run's ``heartbeat_at`` at least every ``HEARTBEAT_INTERVAL`` seconds
(the engine's loop wakes for it). A server looks, at start and then every ``interval`` seconds,
for RUNNING runs silent for ``stale_after`` seconds whose pipeline it can run; it claims each
with a compare-and-set on ``heartbeat_at`` (one server wins) and resumes it: stored results are
reused, tasks that were running run again, and fencing rejects a late result from the old
driver (DESIGN.md §3 "Durability").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from twingraph.core.records import LogRecord
from twingraph.core.states import RunState
from twingraph.engine.engine import MIN_WATCH
from twingraph.errors import NotFoundError
from twingraph.service.runs import RunService

log = logging.getLogger("twingraph.adoption")


class Adopter:
    def __init__(self, runs: RunService, *, stale_after: float = 30.0, interval: float = 10.0,
                 clock: Callable[[], float] = time.time, confirm: float = MIN_WATCH) -> None:
        """``confirm``: a stale run (one whose driver's death no lock proves) is adopted only
        once a pass at least this long after it was first found stale finds the same
        heartbeat: a live driver cut off from the database beats again once it is back."""
        self.runs, self.stale_after, self.interval, self.clock = runs, stale_after, interval, clock
        self.confirm = confirm
        self._suspects: dict[str, tuple[float | None, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def adopt_once(self) -> list[str]:
        """Claim and resume every stale run this process can drive; returns their ids."""
        now = self.clock()
        adopted = []
        candidates, proven = self._candidates(now)
        self._suspects = {k: v for k, v in self._suspects.items()
                          if k in {run.run_id for run in candidates}}
        for run in candidates:
            if run.run_id in self.runs.active() or not self.runs.can_drive(run):
                continue
            if self.runs.engine.driver_alive(run.run_id) is not None:
                continue                 # silent, but its driver lives (engine.driverlock)
            if run.run_id not in proven and not self._confirmed(run):
                continue                 # found stale just now: looked at again next pass
            if not self.runs.catalog.claim_adoption(run, now):
                continue                 # another server took it
            silent = now - (run.heartbeat_at or run.created_at)
            why = f"no heartbeat for {silent:.0f} s" if silent >= self.stale_after else \
                "its driver died holding the run's lock"
            log.warning("adopting run %s of %s: %s", run.run_id, run.pipeline, why)
            self.runs.engine.recorder.add(LogRecord(
                run.run_id, now, "warning", f"adopted by a new driver: the previous one "
                f"stopped ({why}); stored results are reused"))
            try:
                self.runs.resume(run.run_id)
            except Exception as exc:  # noqa: BLE001 - the run must not stay RUNNING forever
                log.exception("run %s could not be adopted", run.run_id)
                self.runs.catalog.finish_running(run.run_id, RunState.FAILED,
                                                 f"could not be adopted: {exc}", self.clock())
                continue
            adopted.append(run.run_id)
        return adopted

    def _confirmed(self, run: Any) -> bool:
        """Whether ``run`` was found stale with this same heartbeat ``confirm`` seconds ago."""
        at = time.monotonic()
        seen = self._suspects.get(run.run_id)
        if seen is None or seen[0] != run.heartbeat_at:
            self._suspects[run.run_id] = (run.heartbeat_at, at)
            return self.confirm <= 0
        return at - seen[1] >= self.confirm

    def _candidates(self, now: float) -> tuple[list[Any], set[str]]:
        """The stale RUNNING runs, and those whose driver on this machine died holding their
        lock (``Engine.orphaned_runs``: a kill -9, a crash): adopted at once, not after
        ``stale_after``; the ids of those (proven)."""
        stale = self.runs.catalog.stale_running(now - self.stale_after)
        seen = {run.run_id for run in stale}
        proven = set(self.runs.engine.orphaned_runs())
        for run_id in proven:
            if run_id in seen:
                continue
            try:
                run = self.runs.catalog.get_run(run_id)
            except NotFoundError:
                continue
            if run.state is RunState.RUNNING and run.pipeline_id is not None:
                stale.append(run)
        return stale, proven

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="twingraph-adopter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.adopt_once()
            except Exception:  # noqa: BLE001 - e.g. the database is briefly unreachable
                log.exception("adoption pass failed; retrying")
            self._stop.wait(self.interval)
