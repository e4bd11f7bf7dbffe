"""``ScheduleFirer``: turns due schedules into runs, in any number of processes at once.

One ``tick(now)``:

1. **Fire.** For each enabled schedule with ``next_run_at <= now`` (``store.due``):

   - choose the slots to fire: without catch-up (the default) only the latest slot ``<= now``
     (missed slots are dropped, and logged); with ``catchup=True`` every slot from
     ``next_run_at`` to now, at most ``max_catchup`` (the oldest beyond that are dropped);
   - **claim** them: one compare-and-set moves ``next_run_at`` from the value read to the
     first slot after ``now``. Only the process whose claim succeeds goes on; a losing process
     (or an edit of the schedule in between) fires nothing. A slot is claimed before its run
     is created, so a crash in between loses that slot rather than firing it twice;
   - **overlap**: without catch-up, when ``overlap_policy='skip'`` and the schedule already
     has ``max_concurrency`` active (PENDING or RUNNING) runs, the slot is dropped (logged).
     Otherwise ``launcher.launch(schedule, slot, False)`` creates the run, queued, and
     ``record_fire`` notes it. Catch-up slots are never skipped: they queue. With 'skip' the
     count, the launch and ``record_fire`` run under the schedule's fire lock
     (``store.firing``): two firers that claimed consecutive slots at the same moment would
     otherwise both count no run and both create one. The claim itself is committed before,
     on its own, so a crash in between still loses the slot rather than firing it twice.

2. **Start queued runs.** For each schedule with PENDING runs (fires and backfills alike),
   ``store.claim_queued_runs`` moves as many to RUNNING as ``max_concurrency`` leaves room
   for (atomic across processes) and ``launcher.start_claimed`` starts each.

Errors in one schedule (a failing launcher, a bad row) are logged and do not stop the others
or the thread. ``start()``/``stop()`` run ``tick`` every ``poll_interval`` seconds on a daemon
thread; ``stop`` wakes it at once and joins it. One firer never runs two loops: a ``start()``
after a ``stop()`` that timed out revives the old thread rather than starting another.
``tick`` may also be called from other threads at the same time (e.g. right after a backfill):
concurrent ticks are as safe as two processes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from twingraph.core import schedule as sc
from twingraph.core.schedule import OverlapPolicy, ScheduleRecord
from twingraph.stores.metadata.schedules import FireSection, SQLScheduleStore

if TYPE_CHECKING:
    from twingraph.schedules import RunLauncher

log = logging.getLogger("twingraph.schedules")

#: Most slots one catch-up fires (the latest ones; older missed slots are dropped).
MAX_CATCHUP = 100


class ScheduleFirer:
    def __init__(self, schedules: SQLScheduleStore, launcher: RunLauncher, *,
                 clock: Callable[[], float] = time.time, poll_interval: float = 1.0,
                 batch: int = 100, max_catchup: int = MAX_CATCHUP) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.schedules, self.launcher = schedules, launcher
        self.clock, self.poll_interval = clock, poll_interval
        self.batch, self.max_catchup = batch, max_catchup
        self.ticks = 0                  # completed ticks (tests check that a firer polled)
        self._stop = threading.Event()
        self._lock = threading.Lock()       # start() vs the loop's decision to exit
        self._thread: threading.Thread | None = None

    # -- one step --------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> list[tuple[str, float]]:
        """Fire what is due at ``now`` (default: the clock), then start queued runs. Returns
        the (schedule_id, slot) pairs this call created a run for, in order."""
        now = self.clock() if now is None else now
        fired: list[tuple[str, float]] = []
        for schedule in self.schedules.due(now, self.batch):
            try:
                fired.extend(self._fire(schedule, now))
            except Exception:  # noqa: BLE001 - one bad schedule must not stop the others
                log.exception("schedule %s: firing failed", schedule.id)
        self._start_queued(now)
        self.ticks += 1
        return fired

    def _fire(self, schedule: ScheduleRecord, now: float) -> list[tuple[str, float]]:
        expected = schedule.next_run_at
        assert expected is not None         # due() only returns schedules with one
        args = (schedule.kind, schedule.expression, schedule.timezone)
        anchor = schedule.created_at
        window = self.max_catchup if schedule.catchup else 1
        latest = sc.fire_times_before(*args, now, window, anchor)
        slots = [s for s in latest if s >= expected] or [expected]
        if len(latest) == window and latest[0] > expected:
            log.warning("schedule %s: slots from %s to %s were missed and are not fired%s",
                        schedule.id, sc.logical_date(expected), sc.logical_date(latest[0]),
                        "" if schedule.catchup else " (catchup is off)")
        following = sc.next_fire_after(*args, now, anchor)
        if not self.schedules.claim(schedule.id, expected, following):
            return []           # another process fired it, or the schedule was just edited
        if schedule.catchup or schedule.overlap_policy is not OverlapPolicy.SKIP:
            return self._launch(schedule, slots, None)
        with self.schedules.firing(schedule.id) as section:     # count + create: one step
            if section is None:
                log.info("schedule %s: deleted before it fired", schedule.id)
                return []
            return self._launch(schedule, slots, section)

    def _launch(self, schedule: ScheduleRecord, slots: list[float],
                section: FireSection | None) -> list[tuple[str, float]]:
        """Create the runs of the claimed ``slots``; with a fire ``section`` (overlap 'skip'),
        a slot is dropped while ``max_concurrency`` runs are active."""
        fired: list[tuple[str, float]] = []
        for slot in slots:
            if section is not None and section.active_runs() >= schedule.max_concurrency:
                log.info("schedule %s: slot %s skipped, %d run(s) already active "
                         "(overlap_policy=skip)", schedule.id, sc.logical_date(slot),
                         schedule.max_concurrency)
                continue
            try:
                run_id = self.launcher.launch(schedule, slot, False)
            except Exception:  # noqa: BLE001 - logged; the slot stays claimed (at most once)
                log.exception("schedule %s: launching the run for %s failed", schedule.id,
                              sc.logical_date(slot))
                continue
            if run_id is None:
                log.info("schedule %s: the launcher created no run for %s", schedule.id,
                         sc.logical_date(slot))
                continue
            if section is not None:
                section.record_fire(run_id, slot)
            else:
                self.schedules.record_fire(schedule.id, run_id, slot)
            fired.append((schedule.id, slot))
        return fired

    def _start_queued(self, now: float) -> None:
        """Serve every schedule that has queued runs and room, in pages of ``batch`` (a keyset
        scan on the schedule id): the page query leaves out full schedules, and paging to the
        end means a schedule late in id order is served at every tick too (a single page of
        the first ``batch`` ids starved the others)."""
        after: str | None = None
        while True:
            page = self.schedules.with_queued_runs(self.batch, after=after)
            for schedule_id in page:
                self._start_queued_of(schedule_id, now)
            if len(page) < self.batch:
                return
            after = page[-1]

    def _start_queued_of(self, schedule_id: str, now: float) -> None:
        try:
            claimed = self.schedules.claim_queued_runs(schedule_id, now)
        except Exception:  # noqa: BLE001
            log.exception("schedule %s: claiming queued runs failed", schedule_id)
            return
        for run_id in claimed:
            try:
                self.launcher.start_claimed(run_id)
            except Exception as exc:  # noqa: BLE001 - the run must not hold its slot
                log.exception("schedule %s: starting run %s failed", schedule_id, run_id)
                try:
                    self.schedules.fail_claimed_run(
                        run_id, f"the scheduler could not start the run: {exc}", self.clock())
                except Exception:  # noqa: BLE001
                    log.exception("run %s: could not be marked FAILED", run_id)

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Run ``tick`` every ``poll_interval`` seconds on a daemon thread. At most one loop
        runs per firer, whatever the sequence of ``start``/``stop`` calls.

        If an earlier ``stop(timeout)`` timed out, its thread is still finishing its last tick.
        That thread has not decided to exit yet (it decides, and forgets itself, under
        ``_lock``, which this method holds), so ``start`` revives it: it clears the stop flag
        and the old loop simply keeps polling. A new thread is started only when there is no
        loop, or the old one has already decided to exit (it ticks no more), so two loops of
        one firer never tick."""
        with self._lock:
            thread = self._thread
            if thread is not None and thread.is_alive():
                self._stop.clear()          # running, or stopping: either way it goes on
                return
            self._stop.clear()
            thread = threading.Thread(target=self._loop, name="twingraph-schedule-firer",
                                      daemon=True)
            self._thread = thread
            thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the loop to stop, wake it, and wait (at most ``timeout`` seconds) for its current
        tick to finish. Returns True when no loop is left.

        When the wait times out (a tick blocked on a slow database or launcher), the thread
        still ends after that tick: it fires nothing more. This firer keeps it as its thread,
        so ``running`` is False but a ``start()`` before it has ended revives that same thread
        instead of starting a second loop (see ``start``). Called from the loop's own thread
        (e.g. by a launcher), it does not wait. A ``start()`` from another thread while this
        waits wins: the loop keeps going and this returns False."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is None:
            return True
        if thread is threading.current_thread():
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        while thread.is_alive() and self._stop.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            thread.join(0.1 if left is None else min(left, 0.1))
        if not self._stop.is_set():
            return False                    # a start() meanwhile: the loop goes on
        if thread.is_alive():
            log.warning("schedule firer: the loop did not stop within %s s; it ends after its "
                        "current tick (a start() before then keeps it running)", timeout)
            return False
        return True

    @property
    def running(self) -> bool:
        """True while the loop runs and has not been asked to stop."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stop.is_set()

    def _loop(self) -> None:
        me = threading.current_thread()
        try:
            while True:
                with self._lock:            # deciding to exit and forgetting this thread are
                    if self._stop.is_set():     # one step with respect to start()
                        if self._thread is me:
                            self._thread = None
                        return
                try:
                    self.tick()
                except Exception:  # noqa: BLE001 - e.g. the database is briefly unreachable
                    log.exception("schedule firer: tick failed; retrying")
                self._stop.wait(self.poll_interval)
        finally:
            with self._lock:                # any other way out (BaseException) forgets it too
                if self._thread is me:
                    self._thread = None
