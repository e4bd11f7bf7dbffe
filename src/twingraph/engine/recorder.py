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

A batch that fails to write (a disk error, a locked database) is written again with the next
one, up to ``WRITE_RETRIES`` times: its records and results are upserts, and a later batch may
refer to them (an update of a task whose first row was in it). Dropped at once, one transient
error made every later update of those tasks "unknown" and lost the runs' final rows. A batch
given up on is reported to the runs whose records it held (``flush(run_id)``), not to
whichever run flushes next.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import operator
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from twingraph.core.records import (AttemptRecord, EdgeRecord, LogRecord, Record, RunHeartbeat,
                                    RunRecord, RunUpdate, TaskRecord, TaskUpdate)
from twingraph.core.wire import PackedResults, PackedTaskRecords
from twingraph.engine.writer import FRAME_MAX, INLINE_MAX, WriterGone, WriterProcess, recipes
from twingraph.errors import StorageError, StoreUnavailable
from twingraph.ports import MetadataStore, ResultStore

log = logging.getLogger("twingraph.engine")

#: Writes of one batch (with the batches after it) before it is given up, ``RETRY_DELAY``
#: seconds apart.
WRITE_RETRIES = 3
#: Run rows lost with a batch kept to be sent again (the newest): a run that writes nothing
#: more keeps its entry, and each is looked for in every later batch.
LOST_ROWS_KEPT = 100
RETRY_DELAY = 0.1
#: How long a batch is written again while the store cannot be reached (``StoreUnavailable``:
#: a PostgreSQL server restarting); the delay doubles up to ``UNAVAILABLE_DELAY_MAX``. A run
#: failed after a one-second outage, ``WRITE_RETRIES`` tries having taken 0.3 s.
UNAVAILABLE_WAIT = 60.0
UNAVAILABLE_DELAY_MAX = 2.0

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
                 on_stale: Callable[[list[tuple[str, str]]], None] | None = None,
                 on_lost: Callable[[str, BaseException], None] | None = None) -> None:
        """``on_lost(run_id, error)``: a batch holding records of ``run_id`` was given up
        (called once a run, from the writer thread): nothing more the run does is recorded."""
        self.results, self.metadata = results, metadata
        self.interval, self.max_buffer, self.max_backlog = interval, max_buffer, max_backlog
        self.on_stored, self.on_stale, self.on_lost = on_stored, on_stale, on_lost
        self._records: list[Any] = []
        self._extra = 0                 # items in the buffer's packed ones, minus one each
        self._large = False             # the buffer holds a result larger than INLINE_MAX
        self._index: dict[tuple[Any, ...], int] = {}   # foldable records still in the buffer
        self._results: list[PutResult] = []
        self._cv = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None       # a failed batch of no known run
        self._run_errors: dict[str, BaseException] = {}  # run id -> its batch's error
        self._retry: tuple[Sequence[Any], Sequence[Any], bool, int, float] | None = None
        self._flushing = False
        self._child: WriterProcess | None = None       # writes go there once it is set
        self._unacked: deque[tuple[Sequence[Record], Sequence[PutResult], int]] = deque()
        self._batches = itertools.count(1)              # numbers the batches sent as frames
        self._bad_batch = 0                             # the last one with a failed frame
        self._bad_error: BaseException | None = None    # ... and its error
        self._bad_runs: set[str] = set()                # ... and the runs told of it
        # Frames the writer process could not write because the store was unreachable (and
        # every failed or skipped frame after them), in order: written again as one batch.
        self._again: list[tuple[Sequence[Any], Sequence[Any]]] = []
        self._again_batches: set[int] = set()
        self._again_error: BaseException | None = None
        # (tries, since) of the batch being written again, until a write succeeds
        self._outage: tuple[int, float] | None = None
        # Runs a batch was given up for (newest last, at most KEEP_DOOMED): their task-level
        # records are not written any more (``_without_doomed``).
        self._doomed: OrderedDict[str, None] = OrderedDict()
        # run id -> its RunRecord, lost with a batch: sent again before its next records
        self._lost_rows: OrderedDict[str, RunRecord] = OrderedDict()
        self._told: OrderedDict[str, None] = OrderedDict()    # runs told of a lost batch
        self._offload = "off"          # off -> starting -> on | failed; or unavailable
        self._thread = threading.Thread(target=self._run, name="twingraph-recorder", daemon=True)
        self._thread.start()

    @property
    def packs_records(self) -> bool:
        """Whether batches go to a writer process now: a run loop may then hand over its new
        task rows and small results packed (``core.wire.pack_task_values``,
        ``pack_results``: no larger than ``INLINE_MAX``) instead of as objects."""
        return self._child is not None

    @property
    def writer(self) -> str:
        """Where batches are written: 'thread' (this process) or 'process' (decision 0012)."""
        return "process" if self._child is not None else "thread"

    def writer_peak_rss(self) -> int | None:
        """The writer process's peak resident memory in bytes (None without one)."""
        child = self._child
        return None if child is None else child.peak_rss()

    def offload(self) -> None:
        """Write from now on in a child process (``engine.writer``), if both stores can be
        opened there. Returns at once: the child starts in the background, and batches are
        written here until it is ready (or if it cannot start, or dies)."""
        with self._cv:
            if self._offload != "off" or self._closed:
                return
            found = recipes(self.results, self.metadata)
            if found is None:
                self._offload = "unavailable"
                return
            self._offload = "starting"
        threading.Thread(target=self._start_writer, args=found, daemon=True,
                         name="twingraph-writer-start").start()

    def _start_writer(self, results_recipe: Any, metadata_recipe: Any) -> None:
        try:
            child = WriterProcess(results_recipe, metadata_recipe)
        except Exception:  # noqa: BLE001 - the thread keeps writing, as before
            with self._cv:
                self._offload = "failed"
                closed = self._closed
            if not closed:     # closed meanwhile: its stores may be gone, and nothing is lost
                log.warning("recorder: the writer process did not start; writing in this "
                            "process", exc_info=True)
            return
        with self._cv:
            if not self._closed:
                self._child, self._offload = child, "on"
                return
        child.close()

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
                    if rec.meta.size > INLINE_MAX:
                        self._large = True
                    continue
                elif t is PackedResults:
                    self._results.append(rec)
                    self._extra += rec.count - 1
                    continue
                elif t is PackedTaskRecords:      # new rows only: nothing folds into them
                    self._extra += rec.count - 1
                records.append(rec)
            if len(records) + len(self._results) + self._extra >= self.max_buffer:
                self._cv.notify()

    def wait_for_room(self) -> None:
        """Block while more than ``max_backlog`` records and results wait for the writer (it
        takes the whole buffer at each write, so what is buffered stays below about twice that).
        Returns at once if the writer failed (``flush`` reports it) or the recorder is closed."""
        with self._cv:
            while len(self._records) + len(self._results) + self._extra > self.max_backlog \
                    and self._error is None and not self._closed and self._thread.is_alive():
                self._cv.notify()
                self._cv.wait(0.05)

    def flush(self, run_id: str | None = None) -> None:
        """Block until everything added so far is written, or raise the error of a batch
        that was given up: of one holding ``run_id``'s records (any run's, without one)."""
        with self._cv:
            self._cv.notify()
            while (self._records or self._results or self._flushing or self._unacked
                   or self._retry is not None) and self._failure_for(run_id) is None:
                if self._closed and not self._thread.is_alive():
                    # closed under a run still ending (``Engine.close`` mid-run): nothing
                    # will write what is left; waiting for it hung the run for ever
                    raise StorageError("the recorder was closed before these records were "
                                       "written")
                self._cv.wait(0.05)
                self._cv.notify()
            # Reported once, to a run whose batch it was; the recorder keeps working for the
            # next batches (the failed batch is lost: its runs end with this error).
            if run_id is not None and run_id in self._run_errors:
                self._told[run_id] = None            # its run has its error: once is enough
                while len(self._told) > KEEP_DOOMED:
                    self._told.popitem(last=False)
                raise self._run_errors.pop(run_id)
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if run_id is None and self._run_errors:
                raise self._run_errors.pop(next(iter(self._run_errors)))

    def _failure_for(self, run_id: str | None) -> BaseException | None:
        if self._error is not None:
            return self._error
        if run_id is None:
            return next(iter(self._run_errors.values()), None)
        return self._run_errors.get(run_id)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._cv:
                self._closed = True
                self._cv.notify()
            self._thread.join(10)
            child, self._child = self._child, None
            if child is not None:
                child.close()

    # -- writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                if not (self._records or self._results or self._unacked
                        or self._retry is not None) and not self._closed:
                    self._cv.wait(self.interval)
                if self._closed and not (self._records or self._results or self._unacked
                                         or self._retry is not None):
                    return
                records: Sequence[Any]
                results: Sequence[Any]
                records, self._records = self._records, []
                results, self._results = self._results, []
                large, self._large, self._extra = self._large, False, 0
                self._index = {}
                self._flushing = True
                retry, self._retry = self._retry, None
            tries, since = 0, 0.0
            if self._doomed and records:
                records = self._without_doomed(records)
            if retry is not None:         # the failed batch first: later records refer to it
                records, results = [*retry[0], *records], [*retry[1], *results]
                large, tries, since = large or retry[2], retry[3], retry[4]
            elif self._outage is not None:
                # A batch written again through the writer process fails in a later turn
                # (its answer comes then): its tries and the outage's start go on from there
                # (from 0 each time, it was written again every 0.1 s for ever).
                tries, since = self._outage
            try:
                try:
                    if records or results:
                        self._write(records, results, large)
                    else:
                        self._drain()     # nothing new: collect what the writer process did
                except BaseException:
                    if not self._again:
                        raise
                    failed = True
                else:
                    failed = False
                if self._again:
                    records, results, large = self._take_again(records, results, large, failed)
                    error, self._again_error = self._again_error, None
                    assert error is not None
                    raise error
                if self._child is None and (records or results):
                    self._outage = None   # written here: whatever failed before is over
            except BaseException as exc:  # noqa: BLE001 - surfaced by flush()
                if tries == 0:
                    since = time.monotonic()
                waiting = isinstance(exc, StoreUnavailable) \
                    and time.monotonic() - since < UNAVAILABLE_WAIT
                again = (tries + 1 < WRITE_RETRIES or waiting) and not self._closed \
                    and bool(records or results)
                delay = RETRY_DELAY if tries + 1 < WRITE_RETRIES else \
                    min(UNAVAILABLE_DELAY_MAX, RETRY_DELAY * 2 ** (tries + 1 - WRITE_RETRIES))
                if again:
                    log.warning("recorder: write failed (%s: %s); writing it again",
                                type(exc).__name__, exc)
                else:
                    # one line (its traceback with debug logging): the run's error says it
                    log.error("recorder: write failed: %s: %s", type(exc).__name__, exc,
                              exc_info=log.isEnabledFor(logging.DEBUG))
                with self._cv:
                    if again:
                        self._retry = (records, results, large, tries + 1, since)
                        self._outage = (tries + 1, since)
                    else:
                        self._outage = None
                        self._blame(exc, records, results)
                if again:
                    time.sleep(delay)
            finally:
                with self._cv:
                    self._flushing = False
                    self._cv.notify_all()

    def _blame(self, exc: BaseException, records: Sequence[Any], results: Sequence[Any]) -> None:
        """A batch given up on: its error goes to the runs it held records of (or to the next
        flush, if it held none that say), and those runs are doomed (``_without_doomed``)."""
        self._blame_runs(exc, _run_ids(records, results))
        # A run whose own row was in it: written again first with its next records (its
        # end, its logs), which were refused as records of an unknown run, each refusal
        # taking a whole batch down, other runs' records with it (runs never recorded).
        for r in records:
            if type(r) is RunRecord:
                self._lost_rows[r.run_id] = r
        while len(self._lost_rows) > LOST_ROWS_KEPT:
            self._lost_rows.popitem(last=False)

    def _blame_runs(self, exc: BaseException, runs: set[str]) -> None:
        if not runs:
            self._error = exc
        for run_id in runs:
            if run_id not in self._told:
                # (a run already told of its lost batch has ended with it: a later frame of
                # that run failing is not raised again, by the next flush or by close)
                if run_id not in self._run_errors:
                    self._run_errors[run_id] = exc
                    if self.on_lost is not None:
                        self.on_lost(run_id, exc)
            self._doomed[run_id] = None
            self._doomed.move_to_end(run_id)
        while len(self._doomed) > KEEP_DOOMED:
            self._doomed.popitem(last=False)

    def revive(self, run_id: str) -> None:
        """``run_id`` is resumed: its records are written again (``_without_doomed`` dropped
        them for good; a resume in the same process then left its tasks' rows RUNNING under a
        run stored SUCCESS). Its lost batch's error, if no flush has raised it yet, is gone
        with it: the resume starts from what the store holds."""
        with self._cv:
            self._doomed.pop(run_id, None)
            self._run_errors.pop(run_id, None)
            self._told.pop(run_id, None)          # a batch it loses now is its to hear of

    def _without_doomed(self, records: Sequence[Any]) -> list[Any]:
        """``records`` without the task-level ones (updates, attempts, edges, task logs) of a
        run a batch was given up for. The lost batch held first rows of that run's tasks;
        their later updates would be refused as updates of unknown tasks, and each failure
        would take a whole batch down with them, other runs' records and this run's final
        state included. The run ends FAILED with the lost batch's error (its ``flush`` raises
        it); what it still writes is its run-level records (its end, its logs) and first rows
        of tasks, which need nothing that was lost."""
        doomed = self._doomed
        lost = self._lost_rows
        first: list[Any] = []
        if lost:
            for r in records:
                ids: set[Any]
                if type(r) is PackedTaskRecords:
                    # decoded only if a lost run's id is in its bytes (it is, as text): every
                    # flush decoded every packed row while a lost row waited (for good, for a
                    # run that writes nothing more)
                    ids = {x.run_id for x in r.records()} \
                        if any(rid.encode() in r.data for rid in lost) else set()
                else:
                    ids = {getattr(r, "run_id", None)}
                for run_id in ids:
                    row = lost.pop(run_id, None) if isinstance(run_id, str) else None
                    if row is not None:
                        first.append(row)
        return first + [r for r in records
                        if type(r) in _RUN_LEVEL or type(r) is PackedTaskRecords
                        or type(r) is TaskRecord or (type(r) is LogRecord and r.node_id is None)
                        or getattr(r, "run_id", None) not in doomed]

    def _write(self, records: Sequence[Record], results: Sequence[Any], large: bool) -> None:
        # Same-type records are written as one statement each; a stable sort by type keeps every
        # record after the ones it refers to (runs, then tasks, then what hangs off tasks) and
        # keeps updates of one task in order.
        records = _in_write_order(records)
        child = self._child
        if child is None or large:
            self._drain()          # the writer process's batches come first
            self._write_here(records, results)
        elif _size(records) + _size(results) <= FRAME_MAX:
            self._send(child, records, results, next(self._batches))
        else:
            # Smaller frames keep the child small: all the results first, then the records.
            # Once a frame of a batch fails, the child (or, if it is gone, this thread) skips
            # the batch's later frames: a task recorded SUCCESS has its result stored.
            batch = next(self._batches)
            for part in _frames(results, FRAME_MAX):
                self._send(child, (), part, batch)
            for part in _frames(records, FRAME_MAX):
                self._send(child, part, (), batch)

    def _write_here(self, records: Sequence[Record], results: Sequence[Any]) -> None:
        if results and self.results is not None:
            items: list[Any] = []
            for r in results:
                if type(r) is PackedResults:
                    items.extend(r.items())
                else:
                    items.append((r.key, r.buffers, r.meta))
            self.results.put_many(items)
            self._stored(results)
        if records and self.metadata is not None:
            if any(type(r) is PackedTaskRecords for r in records):
                records = [x for r in records for x in
                           (r.records() if type(r) is PackedTaskRecords else (r,))]
            self._stale(self.metadata.write(records))

    def _stored(self, results: Sequence[Any]) -> None:
        if results and self.results is not None and self.on_stored is not None:
            tokens: list[Any] = []
            for r in results:
                if type(r) is PackedResults:
                    tokens.extend(r.tokens)
                elif r.token is not None:
                    tokens.append(r.token)
            self.on_stored(tokens)

    def _stale(self, stale: list[tuple[str, str]]) -> None:
        if stale and self.on_stale is not None:
            self.on_stale(stale)

    # -- batches written by the writer process (engine.writer) ---------------------------------
    # A batch answered with an error is kept for the runs it held records of (``_fail``),
    # whose flushes raise it: one batch's failure loses no other batch.

    def _send(self, child: WriterProcess, records: Sequence[Record],
              results: Sequence[Any], batch: int) -> None:
        """Hand a frame of ``batch`` to the writer process. Pipelined: it is packed while the
        child writes the one before, whose answer is collected after this one is sent. A frame
        that cannot be packed is written here; if the child is gone, every unanswered one is."""
        if self._child is not child:          # it died on the way
            self._write_here_of(batch, records, results)
            return
        store = self.results
        items = [r if type(r) is PackedResults else (r.key, r.buffers, r.meta)
                 for r in results] if store is not None else []
        try:
            data = child.encode(list(records), items, batch)
        except Exception:  # noqa: BLE001 - e.g. a value that does not pickle: as without a child
            self._drain()
            self._write_here_of(batch, records, results)
            return
        note = getattr(store, "note_keys", None)
        if items and note is not None:     # before the child commits: never a miss here
            keys: list[str] = []
            for r in results:
                if type(r) is PackedResults:
                    keys.extend(r.keys)
                else:
                    keys.append(r.key)
            note(keys)
        self._unacked.append((records, results, batch))
        try:
            child.send_frame(data)
            while len(self._unacked) > 1:
                self._acknowledge(child.receive())
        except WriterGone:
            self._writer_gone(child)

    def _take_again(self, records: Sequence[Any], results: Sequence[Any], large: bool,
                    failed: bool) -> tuple[list[Any], list[Any], bool]:
        """The frames the writer process could not write for an outage, as one batch to write
        again (with ``records``/``results`` after them if they failed here too), once every
        frame in flight has its answer."""
        self._drain()
        parts, self._again, self._again_batches = self._again, [], set()
        again_records = [r for recs, _ in parts for r in recs]
        again_results = [p for _, res in parts for p in res]
        if failed:
            return [*again_records, *records], [*again_results, *results], large
        return again_records, again_results, False

    def _drain(self) -> None:
        """Collect every answer the writer process owes (or write its batches here if it is
        gone)."""
        if not self._unacked:
            return
        child = self._child
        if child is None:                      # closed under a thread that took too long
            self._rewrite_unacked()
            return
        try:
            while self._unacked:
                self._acknowledge(child.receive())
        except WriterGone:
            self._writer_gone(child)

    def _acknowledge(self, reply: tuple[Any, ...]) -> None:
        """The answer for the oldest batch in flight."""
        _records, results, batch = self._unacked.popleft()
        if reply[0] == "skipped":              # an earlier frame of its batch failed
            if batch in self._again_batches:
                self._again.append((_records, results))
            elif batch == self._bad_batch:
                self._fail_rest(_records, results)
            return
        if reply[0] == "error":
            if isinstance(reply[1], StoreUnavailable) or self._again:
                # The store is down (a server restarting): written again, as by the thread
                # writer, for up to UNAVAILABLE_WAIT. A frame failing after it may refer to
                # rows it held: it goes with it, in order.
                self._again.append((_records, results))
                self._again_batches.add(batch)
                if self._again_error is None:
                    self._again_error = reply[1]
                return
            self._bad_batch, self._bad_error = batch, reply[1]
            self._bad_runs = _run_ids(_records, results)
            self._fail(reply[1], _records, results)
            return
        _, stale, rows = reply
        if not self._again:
            self._outage = None            # the writer process wrote: the outage is over
        note = getattr(self.results, "note_written", None)
        if rows is not None and note is not None:
            note(rows)
        self._stored(results)
        self._stale(stale)

    def _writer_gone(self, child: WriterProcess) -> None:
        log.warning("recorder: the writer process is gone; writing in this process",
                    exc_info=True)
        self._child, self._offload = None, "failed"
        child.kill()
        self._rewrite_unacked()

    def _rewrite_unacked(self) -> None:
        frames, self._unacked = list(self._unacked), deque()
        for records, results, batch in frames:   # upserts: a frame it had applied is harmless
            try:
                self._write_here_of(batch, records, results)
            except Exception as exc:  # noqa: BLE001 - kept; the other batches are written
                self._fail(exc, records, results)

    def _write_here_of(self, batch: int, records: Sequence[Record],
                       results: Sequence[PutResult]) -> None:
        """A frame of ``batch`` written here: nothing if an earlier frame of it failed (its
        runs are told: they lost it too)."""
        if batch == self._bad_batch:
            self._fail_rest(records, results)
            return
        try:
            self._write_here(records, results)
        except BaseException as exc:
            self._bad_batch, self._bad_error = batch, exc
            self._bad_runs = _run_ids(records, results)
            raise

    def _fail_rest(self, records: Sequence[Any], results: Sequence[Any]) -> None:
        """A later frame of the batch whose frame failed, not written: the runs it held
        records of lost the batch too (each told once: a run that has already flushed the
        error is not given it again)."""
        runs = _run_ids(records, results) - self._bad_runs
        if runs and self._bad_error is not None:
            self._bad_runs |= runs
            with self._cv:
                self._blame_runs(self._bad_error, runs)

    def _fail(self, exc: BaseException, records: Sequence[Any], results: Sequence[Any]) -> None:
        """A batch the writer process answered with an error (or that could not be written
        here after it died): its runs' flushes raise it (not retried: decision 0001)."""
        log.error("recorder: a batch failed in the writer process: %s: %s",
                  type(exc).__name__, exc)
        with self._cv:
            self._blame(exc, records, results)


#: Runs whose given-up batches the recorder remembers (their later task records are dropped).
KEEP_DOOMED = 10_000
_RUN_LEVEL = (RunRecord, RunUpdate, RunHeartbeat)

_RANKS = {"RunRecord": 0, "TaskRecord": 1, "TaskUpdate": 2, "AttemptRecord": 3,
          "EdgeRecord": 4, "LogRecord": 5, "RunHeartbeat": 6, "RunUpdate": 7}
_RANKS["PackedTaskRecords"] = _RANKS["TaskRecord"]
_RANK_OF_TYPE: dict[Any, int] = {cls: _RANKS[cls.__name__] for cls in (RunRecord, TaskRecord, TaskUpdate,
                                                       AttemptRecord, EdgeRecord, LogRecord,
                                                       RunHeartbeat, RunUpdate, PackedTaskRecords)}


def _rank(rec: Any) -> int:
    return _RANKS.get(type(rec).__name__, 8)


_PACKED = frozenset({PackedTaskRecords, PackedResults})


def _size(items: Sequence[Any]) -> int:
    """How many records (or results) ``items`` holds (a packed one counts its own)."""
    return len(items) + sum(r.count - 1 for r in items if type(r) in _PACKED)


def _frames(records: Sequence[Any], limit: int) -> Iterator[Sequence[Any]]:
    """``records`` (or results) in consecutive parts of at most ``limit`` each (a packed one
    holding more is a part of its own)."""
    start, n = 0, 0
    for i, r in enumerate(records):
        w = r.count if type(r) in _PACKED else 1
        if n and n + w > limit:
            yield records[start:i]
            start, n = i, 0
        n += w
    if start < len(records):
        yield records[start:]


def _in_write_order(records: Sequence[Any]) -> Sequence[Any]:
    """``records`` stably sorted by kind (``_RANKS``). A batch is usually in that order
    already (task rows first, as the loop hands them over): checked in C, not re-sorted."""
    ranks: list[Any] = list(map(_RANK_OF_TYPE.get, map(type, records)))
    if None not in ranks and all(map(operator.le, ranks, itertools.islice(ranks, 1, None))):
        return records
    return sorted(records, key=_rank)


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


def _run_ids(records: Sequence[Any], results: Sequence[Any]) -> set[str]:
    """The runs a batch held records or results of (read only when a batch failed)."""
    runs: set[str] = set()
    for r in records:
        if type(r) is PackedTaskRecords:
            runs.update(x.run_id for x in r.records())
        elif isinstance(getattr(r, "run_id", None), str):
            runs.add(r.run_id)
    for r in results:
        tokens = r.tokens if type(r) is PackedResults else [r.token]
        for token in tokens:
            loop = token[0] if isinstance(token, tuple) and token else None
            run_id = getattr(loop, "run_id", None)
            if isinstance(run_id, str):
                runs.add(run_id)
    return runs
