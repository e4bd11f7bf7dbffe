"""``backfill``: one run per historical fire time of a schedule.

The slots are computed first (the last ``count`` at or before ``now``, or every slot in
``[start, end]``), and checked against ``MAX_BACKFILL`` before anything is created, so a bad
request creates nothing. Then ``launch(schedule, slot, True)`` creates each run, oldest slot
first, queued (PENDING, its ``logical_date`` in its params: see ``RunLauncher``). The runs are
started by a ``ScheduleFirer``'s ``tick`` as the schedule's ``max_concurrency`` leaves room,
oldest first: a backfill never has more runs RUNNING than ``max_concurrency`` (together with
the schedule's own fires). A backfill works on a disabled schedule too (disabled stops fires,
not explicit requests); without a running firer its runs stay queued.
"""

from __future__ import annotations

from collections.abc import Callable

from twingraph.core import schedule as sc
from twingraph.core.schedule import MAX_BACKFILL, ScheduleRecord
from twingraph.errors import ValidationError
from twingraph.stores.metadata.schedules import SQLScheduleStore

#: ``RunLauncher.launch``: (schedule, slot, backfill) -> run id or None.
LaunchFn = Callable[[ScheduleRecord, float, bool], "str | None"]


def backfill_slots(schedule: ScheduleRecord, *, count: int | None = None,
                   start: float | None = None, end: float | None = None,
                   now: float) -> list[float]:
    """The slots a backfill of ``schedule`` would create runs for, oldest first (nothing is
    written). Exactly one of ``count`` or ``start`` (with ``end``, default ``now``)."""
    if (count is None) == (start is None):
        raise ValidationError("a backfill takes either count or start (and optionally end)")
    args = (schedule.kind, schedule.expression, schedule.timezone)
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_BACKFILL:
            raise ValidationError(f"count must be an integer from 1 to {MAX_BACKFILL}, got {count!r}")
        if end is not None:
            raise ValidationError("end goes with start, not with count")
        return _dated(sc.fire_times_before(*args, now, count, schedule.created_at))
    assert start is not None
    end = now if end is None else end
    if end > now:
        raise ValidationError("a backfill covers the past: end must not be later than now")
    return _dated(sc.fire_times_between(*args, start, end, schedule.created_at,
                                        limit=MAX_BACKFILL))


def _dated(slots: list[float]) -> list[float]:
    """``slots`` if each can be a run's ``logical_date``. Interval slots go back from the
    schedule's creation without bound, so a long interval's last ``count`` slots can lie
    before year 1, which no date can spell: refuse that before any run is created."""
    if slots:
        try:
            sc.logical_date(slots[0])           # the oldest; the newest is at most now
        except (ValueError, OverflowError, OSError):
            raise ValidationError("the backfill reaches back before year 1; ask for fewer "
                                  "slots (count) or give start") from None
    return slots


def backfill(schedules: SQLScheduleStore, schedule_id: str, launch: LaunchFn, *,
             count: int | None = None, start: float | None = None, end: float | None = None,
             now: float) -> list[float]:
    """Create one queued run per historical slot of the schedule; return the slots (oldest
    first) whose runs were created. ``NotFoundError`` for an unknown schedule,
    ``ValidationError`` for a bad request (nothing is created then)."""
    schedule = schedules.get(schedule_id)
    slots = backfill_slots(schedule, count=count, start=start, end=end, now=now)
    return [slot for slot in slots if launch(schedule, slot, True) is not None]
