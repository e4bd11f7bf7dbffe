"""A batch of a run's records that the recorder gives up on stops the run at once (session 28).
It used to go on to its end, every task running with nothing of it recorded, and fail only
then. Real engine, real SQLite files; the failure is real: another connection holds the result
store's write lock past its busy timeout and every retry."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from twingraph import component, pipeline
from twingraph.core.states import RunState
from twingraph.engine.engine import Engine
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.sqlite import SQLiteStorage

ran: list[int] = []


@component(cache=False)
def step_s28(i: int) -> int:
    ran.append(i)
    time.sleep(0.02)
    return i


@pipeline(name="lost_batch_s28", max_parallel=2)
def many(n: int):
    return sum(step_s28(i=i)["outputs"]["result"] for i in range(n))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_run_stops_when_a_batch_of_its_records_is_lost(tmp_path, writer: str) -> None:
    ran.clear()
    results = SQLiteStorage(str(tmp_path / "r.db"), busy_timeout=0.2)
    eng = Engine(results=results,
                 metadata=SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True),
                 flush_interval=0.02, writer=writer)
    deadline = time.monotonic() + 30
    while eng.recorder.writer != writer and time.monotonic() < deadline:
        time.sleep(0.01)
    locker = sqlite3.connect(str(tmp_path / "r.db"), isolation_level=None, timeout=5,
                             check_same_thread=False)
    locked = threading.Event()

    def lock_soon() -> None:
        while not ran:
            time.sleep(0.005)
        locker.execute("BEGIN IMMEDIATE")       # held until the run has ended
        locked.set()

    holder = threading.Thread(target=lock_soon)
    holder.start()
    try:
        t0 = time.monotonic()
        r = many.run(engine=eng, n=400)          # ~4 s of work at two at a time
        took = time.monotonic() - t0
        holder.join()
        assert locked.is_set()
        assert r.state is RunState.FAILED
        assert "database is locked" in str(r.error) or "could not be stored" in str(r.error)
        assert len(ran) < 300 and took < 3.5, (len(ran), took)
    finally:
        if locked.is_set():
            locker.execute("ROLLBACK")
        locker.close()
        eng.close()


@pytest.mark.timeout(60)
def test_a_metadata_database_removed_under_a_run_fails_it(tmp_path) -> None:
    """Session 28 review: the run wrote on into the removed file's inode and said SUCCESS,
    with nothing of it left at the path (the result store refused such a write already)."""
    ran.clear()
    meta_path = tmp_path / "m.db"
    eng = Engine(results=SQLiteStorage(str(tmp_path / "r.db")),
                 metadata=SQLMetadataStore(f"sqlite:///{meta_path}", create=True),
                 flush_interval=0.02, writer="thread")

    def remove_soon() -> None:
        while len(ran) < 20:
            time.sleep(0.005)
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"m.db{suffix}").unlink(missing_ok=True)

    remover = threading.Thread(target=remove_soon)
    remover.start()
    try:
        r = many.run(engine=eng, n=200)
        remover.join()
        assert r.state is RunState.FAILED
        assert "removed or replaced while open" in str(r.error)
        assert len(ran) < 200
    finally:
        eng.close()
