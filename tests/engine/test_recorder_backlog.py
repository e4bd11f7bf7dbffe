"""The recorder bounds its backlog: a producer faster than the disk waits instead of growing the
buffer with the size of the run (issue 2: bookkeeping per node must not grow with the graph)."""
import threading
import time

from twingraph.core.records import LogRecord, RunRecord
from twingraph.core.states import RunState
from twingraph.engine.recorder import Recorder
from twingraph.stores.metadata import SQLMetadataStore


class SlowDisk(SQLMetadataStore):
    """A real SQLite metadata store whose writes take at least 20 ms per batch."""

    def write(self, batch):
        time.sleep(0.02)
        return super().write(batch)


def test_a_fast_producer_waits_for_a_slow_writer(tmp_path):
    meta = SlowDisk(f"sqlite:///{tmp_path / 'meta.db'}", create=True)
    rec = Recorder(None, meta, interval=0.001, max_buffer=10**9, max_backlog=500)
    peak = 0
    try:
        rec.add(RunRecord("run", "p", RunState.RUNNING))
        for i in range(40):
            rec.add_many([LogRecord("run", float(i), "info", f"m{i}.{j}") for j in range(200)])
            with rec._cv:
                peak = max(peak, len(rec._records))
            rec.wait_for_room()
            with rec._cv:
                assert len(rec._records) <= 500
        rec.flush()
    finally:
        rec.close()
    assert peak <= 700          # the backlog bound plus one hand-over
    # nothing was dropped on the way
    assert len(meta.get_logs("run", limit=100_000)) == 40 * 200


def test_waiting_ends_when_the_writer_fails(tmp_path):
    class Broken(SQLMetadataStore):
        def write(self, batch):
            raise RuntimeError("disk on fire")

    meta = Broken(f"sqlite:///{tmp_path / 'meta.db'}", create=True)
    rec = Recorder(None, meta, interval=0.001, max_backlog=10)
    try:
        rec.add_many([LogRecord("run", 0.0, "info", f"m{j}") for j in range(100)])
        done = threading.Event()
        t = threading.Thread(target=lambda: (rec.wait_for_room(), done.set()))
        t.start()
        assert done.wait(5), "wait_for_room hung although the writer had failed"
    finally:
        try:
            rec.close()
        except RuntimeError:
            pass
