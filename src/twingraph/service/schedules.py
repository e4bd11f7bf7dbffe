"""Schedules on the server: the ``RunLauncher`` the firer calls, the firer's lifecycle, backfill,
and the schedules that ``@pipeline(schedule=...)`` declares.

A scheduled run is an ordinary run (``RunService``) created PENDING with ``schedule_id`` and the
slot's ``logical_date`` in its params, then started when the schedule store hands it out under
``max_concurrency`` (see ``twingraph.schedules``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from twingraph.core.schedule import ScheduleRecord, run_params
from twingraph.dsl.pipeline import Pipeline
from twingraph.errors import NotFoundError
from twingraph.schedules import ScheduleFirer, backfill
from twingraph.service.runs import RunService
from twingraph.stores.metadata.schedules import SQLScheduleStore

log = logging.getLogger("twingraph.schedules")


class ScheduledRuns:
    """Implements ``twingraph.schedules.RunLauncher`` on the run service."""

    def __init__(self, runs: RunService, store: SQLScheduleStore, *,
                 poll_interval: float = 1.0) -> None:
        self.runs, self.store = runs, store
        self.firer = ScheduleFirer(store, self, poll_interval=poll_interval)

    # -- RunLauncher ---------------------------------------------------------------------------
    def launch(self, schedule: ScheduleRecord, slot: float, backfill: bool) -> str | None:
        try:
            pipeline = self.runs.catalog.get_pipeline(schedule.pipeline_id)
        except NotFoundError:
            return None
        config: dict[str, Any] = {}
        if schedule.timeout_seconds:
            config["timeout"] = float(schedule.timeout_seconds)
        run = self.runs.create(pipeline, params=run_params(schedule, slot), config=config,
                               tags={"trigger": "backfill" if backfill else "schedule",
                                     "schedule_id": schedule.id},
                               schedule_id=schedule.id)
        return run.run_id

    def start_claimed(self, run_id: str) -> None:
        self.runs.start(run_id, claimed=True)

    # -- server-facing ----------------------------------------------------------------------------
    def backfill(self, schedule_id: str, *, count: int | None = None, start: float | None = None,
                 end: float | None = None) -> list[tuple[float, str]]:
        """Create the runs of the historical slots; returns (slot, run_id) pairs, oldest first.
        The runs start as the schedule's ``max_concurrency`` allows (the firer starts them; on
        a server that does not fire schedules they stay queued for one that does)."""
        created: list[tuple[float, str]] = []

        def launch(schedule: ScheduleRecord, slot: float, is_backfill: bool) -> str | None:
            run_id = self.launch(schedule, slot, is_backfill)
            if run_id is not None:
                created.append((slot, run_id))
            return run_id
        backfill(self.store, schedule_id, launch, count=count, start=start, end=end,
                 now=time.time())
        if self.firer.running:       # start what max_concurrency allows now, not at the next
            self.firer.tick()        # poll; a server that does not fire schedules leaves them
        return created

    def pipeline_loaded(self, pipe: Pipeline) -> None:
        """Create, update or disable the schedule ``@pipeline(schedule=...)`` declares."""
        meta = self.runs.engine.metadata
        rec = meta.get_pipeline(self.runs.engine.project, pipe.name)  # type: ignore[union-attr]
        if rec is None:
            return
        sched = self.store.upsert_decorator_schedule(rec.project_id, rec.id, pipe.spec.schedule)
        if sched is not None:
            log.info("pipeline %s: schedule %s %s (%s)", pipe.name, sched.id, sched.expression,
                     "enabled" if sched.enabled else "disabled")

    def start(self) -> None:
        self.firer.start()

    def stop(self) -> None:
        self.firer.stop(timeout=5)
