"""Schedules: claim-based firing (``ScheduleFirer``), backfill, and the ``RunLauncher`` port.

How a scheduled run comes to life (docs/decisions/0045-schedules.md)::

    firer.tick(now)
      1. for each due schedule: claim the slot (CAS on next_run_at)      -- one process wins
      2. the winner calls launcher.launch(schedule, slot, False)         -- run created PENDING
         (backfill() calls launcher.launch(schedule, slot, True) per historical slot)
      3. store.claim_queued_runs(schedule_id, now)                       -- PENDING -> RUNNING,
         never more RUNNING runs than max_concurrency, atomic across processes
      4. launcher.start_claimed(run_id) for each run claimed in 3        -- executes it

Every scheduled run, fired or backfilled, is started through step 3, so ``max_concurrency``
holds for all of them together, in any number of server processes.
"""

from __future__ import annotations

from typing import Protocol

from twingraph.core.schedule import (
    LOGICAL_DATE,
    OverlapPolicy,
    ScheduleKind,
    ScheduleRecord,
    ScheduleSource,
    logical_date,
    run_params,
)


class RunLauncher(Protocol):
    """Creates and starts the runs of schedules; implemented by the server (``service/``).

    ``launch`` only CREATES a run; ``start_claimed`` only STARTS one. The firer decides when
    a created run may start (``SQLScheduleStore.claim_queued_runs``), which is how
    ``max_concurrency`` is enforced across processes. Both are called from the firer's thread
    (``backfill`` calls ``launch`` from the caller's thread) and must be thread-safe.
    """

    def launch(self, schedule: ScheduleRecord, slot: float, backfill: bool) -> str | None:
        """Create one run of ``schedule.pipeline_id`` (project ``schedule.project_id``) for the
        logical time ``slot`` (POSIX seconds) and return its run id.

        The run MUST be written, before this returns, in state PENDING with
        ``runs.schedule_id = schedule.id`` (write the ``RunRecord`` and, if your writer cannot
        set ``schedule_id``, call ``SQLScheduleStore.link_run``) and with params
        ``twingraph.schedules.run_params(schedule, slot)`` (the schedule's params plus
        ``logical_date``, ISO-8601 UTC). Apply ``schedule.timeout_seconds`` as the run's
        timeout when it starts. Do NOT start the run: the firer starts it with
        ``start_claimed`` when the schedule has room. ``backfill`` is True for runs created by
        ``backfill()``, False for fires (including catch-up); it only labels the run (e.g. a
        tag), both kinds are queued alike.

        Return None when no run should exist (e.g. the pipeline has been deleted); raise on a
        failure: the firer logs it and goes on (the slot is not fired again), ``backfill()``
        lets it propagate (the runs created before it stay queued).

        For a schedule with ``overlap_policy='skip'`` (no catch-up) the firer calls this while
        it holds the schedule's fire lock (``SQLScheduleStore.firing``), so that "no run is
        active" and "create one" are one step for all firers. So: commit the run before
        returning (in your own transactions, as above); do not call ``record_fire`` (the
        firer does); do not wait for another firer's tick; and return promptly, since other
        fires of the schedule (on SQLite, of any schedule of the database) wait meanwhile.
        """
        ...

    def start_claimed(self, run_id: str) -> None:
        """Start executing run ``run_id``, which the schedule store has just moved from PENDING
        to RUNNING (started_at and heartbeat_at set) on the firer's behalf. Do not check or
        change its state first (e.g. ``Engine.run(..., run_id=run_id, pending=True)`` on a
        worker thread: RUNNING -> RUNNING is allowed). Return as soon as it is started; do not
        wait for the run to end. If this raises, the firer marks the run FAILED with the error
        so that it frees its concurrency slot.
        """
        ...


from twingraph.schedules.backfill import backfill  # noqa: E402  (needs RunLauncher above)
from twingraph.schedules.firer import ScheduleFirer  # noqa: E402

__all__ = [
    "LOGICAL_DATE",
    "OverlapPolicy",
    "RunLauncher",
    "ScheduleFirer",
    "ScheduleKind",
    "ScheduleRecord",
    "ScheduleSource",
    "backfill",
    "logical_date",
    "run_params",
]
