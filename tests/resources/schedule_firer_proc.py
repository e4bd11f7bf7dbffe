"""One schedule firer in its own OS process, for the two-process test (tests/schedules).

Usage: ``python schedule_firer_proc.py DB_URL``. Connects, prints ``ready``, waits for a line
``go SECONDS`` on stdin (the test sends it once every process is ready, so they poll together
however long the imports took), runs a ``ScheduleFirer`` with a 50 ms poll for SECONDS, and
prints one JSON line: pid, ticks, claims won and lost.
The launcher records every launch as a row (schedule_id, slot, pid) in ``fire_log``, a table
with no unique constraint, so a slot fired twice shows up as two rows.
"""

from __future__ import annotations

import json
import os
import sys
import time

from sqlalchemy import text

from twingraph.core.schedule import ScheduleRecord
from twingraph.schedules import ScheduleFirer
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.metadata.schedules import SQLScheduleStore


class CountingStore(SQLScheduleStore):
    won = lost = 0

    def claim(self, schedule_id: str, expected: float, new: float) -> bool:
        ok = super().claim(schedule_id, expected, new)
        if ok:
            self.won += 1
        else:
            self.lost += 1
        return ok


class LoggingLauncher:
    """Records each launch; creates no run (this test is about who fires, not about runs)."""

    def __init__(self, meta: SQLMetadataStore) -> None:
        self.meta = meta

    def launch(self, schedule: ScheduleRecord, slot: float, backfill: bool) -> str | None:
        with self.meta._writing() as conn:
            conn.execute(text("INSERT INTO fire_log (schedule_id, slot, pid) VALUES (:s, :t, :p)"),
                         {"s": schedule.id, "t": slot, "p": os.getpid()})
        return f"fire-{os.getpid()}-{slot}"

    def start_claimed(self, run_id: str) -> None:
        raise AssertionError("no run is ever queued in this test")


def main() -> None:
    meta = SQLMetadataStore(sys.argv[1])
    schedules = CountingStore(meta)
    firer = ScheduleFirer(schedules, LoggingLauncher(meta), poll_interval=0.05)
    schedules.due(0.0)                  # connected and warm
    print("ready", flush=True)
    word, seconds = sys.stdin.readline().split()
    assert word == "go"
    firer.start()
    time.sleep(float(seconds))
    firer.stop()
    meta.close()
    print(json.dumps({"pid": os.getpid(), "ticks": firer.ticks, "won": schedules.won,
                      "lost": schedules.lost}))


if __name__ == "__main__":
    main()
