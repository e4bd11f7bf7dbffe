"""Write-behind persistence: results first, then metadata, in batches, off the scheduling path.

The loop appends records and results to an in-memory buffer (cheap) and waits for the disk only
when the writer has fallen ``max_backlog`` entries behind (``wait_for_room``): a scheduler faster
than the disk would otherwise grow the buffer with the size of the graph.
A writer thread flushes every ``interval`` seconds (or sooner when the buffer is large):
``results.put_many`` first, then ``metadata.write`` — so a task recorded SUCCESS always has its
result stored. A crash loses at most the last unflushed interval; a resumed run re-executes only
those tasks (at-least-once execution, exactly-once recorded result, thanks to fencing).

Coalescing: a TaskUpdate for a task whose TaskRecord is still in the buffer is folded into that
record, so a task that starts and ends between two flushes costs one row.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from twingraph.core.records import AttemptRecord, Record, TaskRecord, TaskUpdate
from twingraph.ports import MetadataStore, ResultStore

log = logging.getLogger("twingraph.engine")

_UPDATE_FIELDS = ("state", "attempts", "fence", "cache_key", "cache_status", "cache_reason",
                  "result_key", "content_hash", "error", "started_at", "ended_at")


class PutResult:
    """A result to store, travelling in the same ordered batch as the metadata records."""
    __slots__ = ("key", "buffers", "meta", "token")

    def __init__(self, key: str, buffers: Any, meta: Any, token: Any = None) -> None:
        self.key, self.buffers, self.meta, self.token = key, buffers, meta, token


class Recorder:
    def __init__(self, results: ResultStore | None, metadata: MetadataStore | None, *,
                 interval: float = 0.05, max_buffer: int = 50000, max_backlog: int = 20_000,
                 on_stored: Callable[[list[Any]], None] | None = None,
                 on_stale: Callable[[list[tuple[str, str]]], None] | None = None) -> None:
        self.results, self.metadata = results, metadata
        self.interval, self.max_buffer, self.max_backlog = interval, max_buffer, max_backlog
        self.on_stored, self.on_stale = on_stored, on_stale
        self._records: list[Any] = []
        self._index: dict[tuple[Any, ...], int] = {}   # foldable records still in the buffer
        self._results: list[PutResult] = []
        self._cv = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._flushing = False
        self._thread = threading.Thread(target=self._run, name="twingraph-recorder", daemon=True)
        self._thread.start()

    # -- called from loop threads ------------------------------------------------------------
    def add(self, rec: Any) -> None:
        self.add_many([rec])

    def add_many(self, recs: Sequence[Any]) -> None:
        """Append records (and ``PutResult``s) in order. Updates of a task or attempt whose
        row is still in the buffer are folded into it."""
        with self._cv:
            records, index = self._records, self._index
            for rec in recs:
                t = type(rec)
                if t is TaskUpdate:
                    k = ("t", rec.run_id, rec.node_id)
                    i = index.get(k)
                    if i is not None:
                        records[i] = _fold(records[i], rec)
                        continue
                    index[k] = len(records)
                elif t is TaskRecord:
                    index[("t", rec.run_id, rec.node_id)] = len(records)
                elif t is AttemptRecord:
                    ka: tuple[Any, ...] = ("a", rec.run_id, rec.node_id, rec.attempt)
                    i = index.get(ka)
                    if i is not None:
                        records[i] = rec          # same attempt: the later record is complete
                        continue
                    index[ka] = len(records)
                elif t is PutResult:
                    self._results.append(rec)
                    continue
                records.append(rec)
            if len(records) >= self.max_buffer:
                self._cv.notify()

    def wait_for_room(self) -> None:
        """Block while more than ``max_backlog`` records and results wait for the writer (it
        takes the whole buffer at each write, so what is buffered stays below about twice that).
        Returns at once if the writer failed (``flush`` reports it) or the recorder is closed."""
        with self._cv:
            while len(self._records) + len(self._results) > self.max_backlog \
                    and self._error is None and not self._closed and self._thread.is_alive():
                self._cv.notify()
                self._cv.wait(0.05)

    def flush(self) -> None:
        """Block until everything added so far is written (or raise the writer's error)."""
        with self._cv:
            self._cv.notify()
            while (self._records or self._results or self._flushing) and self._error is None:
                self._cv.wait(0.05)
                self._cv.notify()
            if self._error is not None:
                # Reported once, to the run that flushes; the recorder keeps working for the
                # next batches (the failed batch is lost: its runs end with this error).
                error, self._error = self._error, None
                raise error

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._cv:
                self._closed = True
                self._cv.notify()
            self._thread.join(10)

    # -- writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                if not (self._records or self._results) and not self._closed:
                    self._cv.wait(self.interval)
                if self._closed and not (self._records or self._results):
                    return
                records, self._records = self._records, []
                results, self._results = self._results, []
                self._index = {}
                self._flushing = True
            try:
                self._write(records, results)
            except BaseException as exc:  # noqa: BLE001 - surfaced by flush()
                log.exception("recorder: write failed")
                with self._cv:
                    self._error = exc
            finally:
                with self._cv:
                    self._flushing = False
                    self._cv.notify_all()

    def _write(self, records: Sequence[Record], results: Sequence[PutResult]) -> None:
        # Same-type records are written as one statement each; a stable sort by type keeps every
        # record after the ones it refers to (runs, then tasks, then what hangs off tasks) and
        # keeps updates of one task in order.
        records = sorted(records, key=_rank)
        if results and self.results is not None:
            self.results.put_many([(r.key, r.buffers, r.meta) for r in results])
            if self.on_stored is not None:
                self.on_stored([r.token for r in results if r.token is not None])
        if records and self.metadata is not None:
            stale = self.metadata.write(records)
            if stale and self.on_stale is not None:
                self.on_stale(stale)


_RANKS = {"RunRecord": 0, "TaskRecord": 1, "TaskUpdate": 2, "AttemptRecord": 3,
          "EdgeRecord": 4, "LogRecord": 5, "RunHeartbeat": 6, "RunUpdate": 7}


def _rank(rec: Any) -> int:
    return _RANKS.get(type(rec).__name__, 8)


def _fold(rec: Any, upd: TaskUpdate) -> Any:
    """Apply ``upd`` to a buffered TaskRecord or TaskUpdate of the same task."""
    changes: dict[str, Any] = {"at": upd.at} if type(rec) is TaskUpdate else {}
    for f in _UPDATE_FIELDS:
        v = getattr(upd, f)
        if v is not None:
            changes[f] = v
    if upd.state.value == "SUCCESS":
        changes["error"] = None          # an earlier attempt's error no longer describes it
    if type(rec) is TaskUpdate:
        if upd.state.value == "RUNNING" and rec.started_at is None and upd.started_at is None:
            changes["started_at"] = upd.at
        return dataclasses.replace(rec, **changes)
    st = upd.state
    if st.value == "RUNNING" and rec.started_at is None:
        changes["started_at"] = upd.at
    if st.terminal:
        changes["ended_at"] = upd.at
        if rec.started_at is None and "started_at" not in changes:
            changes["started_at"] = upd.at
    return dataclasses.replace(rec, **changes)
