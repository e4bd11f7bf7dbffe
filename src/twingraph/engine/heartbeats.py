"""Heartbeats of the runs an engine drives, written apart from their records.

A run's loop beats every ``HEARTBEAT_INTERVAL`` seconds while it goes on (it wakes for it when
idle). The beat proves its driver alive: another process adopts, cancels or resumes a run only
once its heartbeat is older than ``LIVE_WINDOW``. Beats used to travel with the run's records,
through the recorder's write-behind queue; a loop taking in a million tasks handed its records
over late and the writer had a backlog to write first, so a live run's heartbeat grew 30 s
old, and ``runs cancel`` and ``--resume`` took the live run over (review, session 21). Here
each run's latest beat is written on a thread of its own, straight to the metadata store, in
a statement of its own: it waits for no backlog, only for the database's write lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from twingraph.core.records import RunHeartbeat

log = logging.getLogger("twingraph.engine")


def taken_over_message(own: int, now: int) -> str:
    return (f"another driver took the run over (driver epoch {own} -> {now}) while this one "
            "was stalled; this process stops and leaves the run to it")


class Heartbeats:
    """The latest beat of each run, written by one daemon thread as soon as it is given."""

    def __init__(self, metadata: Any,
                 on_taken_over: Callable[[str, int, int], None] | None = None) -> None:
        self.metadata = metadata
        #: ``(run_id, own epoch, current epoch)``: a run was taken over from this driver
        self.on_taken_over = on_taken_over
        self._pending: dict[str, RunHeartbeat] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.failures = 0               # beats that could not be written (logged)

    def beat(self, run_id: str, at: float, epoch: int | None) -> None:
        """Note ``run_id``'s beat; a beat not yet written is replaced by this one."""
        if self.metadata is None or self._closed:
            return
        with self._lock:
            self._pending[run_id] = RunHeartbeat(run_id, at, epoch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="twingraph-heartbeats")
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                beats, self._pending = list(self._pending.values()), {}
            for hb in beats:
                try:
                    self.metadata.write([hb])
                    self._check_driver(hb)
                except Exception:  # noqa: BLE001 - its run goes on; the next beat tries again
                    # (a run whose first record is not written yet is unknown: the same)
                    self.failures += 1
                    log.debug("heartbeat of run %s not written", hb.run_id, exc_info=True)
            if self._closed:
                return

    def _check_driver(self, hb: RunHeartbeat) -> None:
        """After a beat: if another driver has claimed the run since this one did (this
        process was stopped or stalled for longer than ``LIVE_WINDOW`` and ``run --resume``
        took the run over), say so: this driver must stop, not finish the run a second time.
        A beat of a taken-over driver is not written (its epoch is fenced off)."""
        current = getattr(self.metadata, "driver_epoch", None)
        if hb.epoch is None or current is None or self.on_taken_over is None:
            return
        now = current(hb.run_id)
        if now is not None and now > hb.epoch:
            self.on_taken_over(hb.run_id, hb.epoch, now)

    def close(self) -> None:
        """Write what is pending, then stop the thread."""
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(5)


__all__ = ["Heartbeats"]
