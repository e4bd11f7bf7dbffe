"""A write batch the recorder gives up on (decision 0001's addendum) fails its own runs and no
other: its runs' later task records are not written (they would be refused as updates of tasks
whose first rows were lost, and take whole batches down with them, other runs' records and the
run's own end included), and every run that had records in any frame of the lost batch is told.

Real recorder, real writer process, real SQLite files. The failure is real too: another
connection holds the results database's write lock past the store's busy timeout."""
import hashlib
import sqlite3
import time

import pytest

from twingraph.core.records import RunRecord, RunUpdate, TaskRecord, TaskUpdate
from twingraph.core.results import DataType, StorageMetadata
from twingraph.core.states import RunState, TaskState
from twingraph.engine.recorder import PutResult, Recorder
from twingraph.engine.writer import FRAME_MAX
from twingraph.errors import StorageError
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.sqlite import SQLiteStorage


class _Loop:            # what a result's token names first: something with a run id
    def __init__(self, run_id):
        self.run_id = run_id


def _put(key, run):
    data = key.encode()
    return PutResult(key, (data,), StorageMetadata(key, DataType.PRIMITIVE,
                     hashlib.sha256(data).hexdigest(), len(data), metadata={"encoding": "json"}),
                     (_Loop(run), object()))


def _recorder(tmp_path, writer):
    results = SQLiteStorage(str(tmp_path / "r.db"), busy_timeout=0.3)
    metadata = SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True)
    rec = Recorder(results, metadata, on_stored=lambda tokens: None)
    if writer == "process":
        rec.offload()
        deadline = time.monotonic() + 30
        while rec.writer != "process":
            assert time.monotonic() < deadline
            time.sleep(0.02)
    return rec, results, metadata


def _error_of(rec, run_id):
    try:
        rec.flush(run_id)
    except StorageError as exc:
        return exc
    return None


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_a_lost_batch_fails_its_run_and_no_other(tmp_path, writer):
    rec, results, metadata = _recorder(tmp_path, writer)
    try:
        metadata.write([RunRecord("A", "p", RunState.RUNNING, created_at=1.0)])
        locker = sqlite3.connect(str(tmp_path / "r.db"), isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")          # held past every retry of the batch
        rec.add_many([TaskRecord("A", "a0", "c", TaskState.SUCCESS, result_key="ka0", fence=1),
                      _put("ka0", "A")])
        assert "database is locked" in str(_error_of(rec, "A"))
        locker.execute("ROLLBACK")
        locker.close()
        # The next batch: a later update of A's lost task, run B's records, A's end.
        rec.add_many([RunRecord("B", "p", RunState.RUNNING, created_at=2.0),
                      TaskRecord("B", "b0", "c", TaskState.SUCCESS, fence=1),
                      TaskUpdate("A", "a0", TaskState.SUCCESS, 3.0, fence=1),
                      RunUpdate("B", RunState.SUCCESS, 3.0),
                      RunUpdate("A", RunState.FAILED, 3.0, error="its batch was lost")])
        assert _error_of(rec, "B") is None
        assert metadata.get_run("B").state is RunState.SUCCESS
        assert [t.node_id for t in metadata.get_tasks("B")] == ["b0"]
        assert metadata.get_run("A").state is RunState.FAILED     # its end is written
    finally:
        rec.close()
        results.close()
        metadata.close()


def test_every_run_in_a_lost_batchs_frames_is_told(tmp_path):
    """A batch larger than a frame whose first frame failed: the later frames were skipped
    without a word, and a run whose records were only in them flushed as if written."""
    rec, results, metadata = _recorder(tmp_path, "process")
    try:
        locker = sqlite3.connect(str(tmp_path / "r.db"), isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        batch = [RunRecord(r, "p", RunState.RUNNING, created_at=1.0) for r in ("A", "B")]
        batch += [TaskRecord("A", f"a{i}", "c", TaskState.SUCCESS, result_key=f"ka{i}")
                  for i in range(3)]
        batch += [TaskRecord("B", f"b{i}", "c", TaskState.SUCCESS) for i in range(3)]
        batch += [RunUpdate("B", RunState.SUCCESS, 2.0)]
        batch += [_put(f"ka{i}", "A") for i in range(FRAME_MAX + 5)]     # more than a frame
        rec.add_many(batch)
        assert "database is locked" in str(_error_of(rec, "A"))
        assert "database is locked" in str(_error_of(rec, "B"))
        locker.execute("ROLLBACK")
        locker.close()
    finally:
        rec.close()
        results.close()
        metadata.close()


def _lose_a_batch_of_run_a(tmp_path, rec, metadata):
    """Run A's first batch, written while another connection holds the results database's
    write lock; returns that connection (still holding it)."""
    metadata.write([RunRecord("A", "p", RunState.RUNNING, created_at=1.0)])
    locker = sqlite3.connect(str(tmp_path / "r.db"), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    rec.add_many([TaskRecord("A", "a0", "c", TaskState.SUCCESS, result_key="ka0", fence=1),
                  _put("ka0", "A")])
    return locker


def test_a_resumed_run_is_written_again(tmp_path):
    """A run whose batch was lost has its task records dropped (above); resumed in the same
    process (``Engine.run(resume=True)`` calls ``revive``) they were dropped still: its tasks
    stayed RUNNING under a run stored SUCCESS."""
    rec, results, metadata = _recorder(tmp_path, "thread")
    try:
        locker = _lose_a_batch_of_run_a(tmp_path, rec, metadata)
        assert _error_of(rec, "A") is not None
        locker.execute("ROLLBACK")
        locker.close()
        rec.revive("A")
        rec.add_many([TaskRecord("A", "a0", "c", TaskState.RUNNING, fence=2)])
        assert _error_of(rec, "A") is None
        rec.add_many([TaskUpdate("A", "a0", TaskState.SUCCESS, 3.0, fence=2)])   # a later batch
        assert _error_of(rec, "A") is None
        assert [(t.node_id, t.state) for t in metadata.get_tasks("A")] == [
            ("a0", TaskState.SUCCESS)]
    finally:
        rec.close()
        results.close()
        metadata.close()


def test_a_run_told_of_its_lost_batch_is_not_told_again(tmp_path):
    """A later frame of a run that has its error already failing too was filed again: the next
    flush (``Engine.close``'s) raised a finished run's error."""
    rec, results, metadata = _recorder(tmp_path, "thread")
    try:
        locker = _lose_a_batch_of_run_a(tmp_path, rec, metadata)
        assert _error_of(rec, "A") is not None          # told
        rec.add_many([TaskRecord("A", "a1", "c", TaskState.SUCCESS, result_key="ka1", fence=1),
                      _put("ka1", "A")])                 # lost as well, the lock still held
        assert _error_of(rec, "A") is None             # waited for: given up, not raised
        locker.execute("ROLLBACK")
        locker.close()
        assert _error_of(rec, None) is None             # not raised again
    finally:
        rec.close()
        results.close()
        metadata.close()


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_a_run_whose_own_row_was_lost_is_written_again_with_its_end(tmp_path, writer):
    """Session 25: a batch holding a run's first row was lost; the run's end (a RunUpdate)
    was then refused as one of an unknown run, taking its whole batch down with it: the run
    was never recorded, and neither were other runs' records in that batch."""
    rec, results, metadata = _recorder(tmp_path, writer)
    try:
        locker = sqlite3.connect(str(tmp_path / "r.db"), isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        rec.add_many([RunRecord("A", "p", RunState.RUNNING, created_at=1.0),
                      TaskRecord("A", "a0", "c", TaskState.SUCCESS, result_key="ka0", fence=1),
                      _put("ka0", "A")])
        assert "database is locked" in str(_error_of(rec, "A"))
        locker.execute("ROLLBACK")
        locker.close()
        rec.add_many([RunRecord("B", "p", RunState.RUNNING, created_at=2.0),
                      RunUpdate("B", RunState.SUCCESS, 3.0),
                      RunUpdate("A", RunState.FAILED, 3.0, error="its batch was lost")])
        assert _error_of(rec, "B") is None
        assert metadata.get_run("B").state is RunState.SUCCESS
        a = metadata.get_run("A")
        assert a is not None and a.state is RunState.FAILED and a.error == "its batch was lost"
    finally:
        rec.close()
