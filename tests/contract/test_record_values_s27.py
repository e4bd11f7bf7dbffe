"""Values a metadata column cannot hold the same way on every backend are refused by every
store alike (session 27): a time that is not a finite number (SQLite stored NaN as NULL or
failed a NOT NULL constraint, PostgreSQL and the memory store kept NaN), an unknown cache
status or lineage edge kind (``String(16)`` columns: PostgreSQL's array cast cut a longer one
to 16 characters, the others kept it). A refused batch writes nothing. Memory, SQLite and the
machine's PostgreSQL."""
from __future__ import annotations

import secrets

import pytest

from twingraph.core.records import (AttemptRecord, EdgeRecord, LogRecord, RunRecord, TaskRecord,
                                   TaskUpdate)
from twingraph.core.states import RunState, TaskState
from twingraph.core.wire import TaskRows
from twingraph.errors import ValidationError
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.metadata._write import _TASK_COLUMNS


@pytest.fixture
def store(metadata_store):
    return metadata_store        # memory, SQLite, PostgreSQL (conftest.py)


NAN, INF = float("nan"), float("inf")

BAD = {
    "task created NaN": lambda r: TaskRecord(r, "b", "c", created_at=NAN),
    "task ended -inf": lambda r: TaskRecord(r, "b", "c", created_at=1.0, ended_at=-INF),
    "task update at NaN": lambda r: TaskUpdate(r, "a", TaskState.RUNNING, at=NAN),
    "task update started inf": lambda r: TaskUpdate(r, "a", TaskState.RUNNING, at=2.0, started_at=INF),
    "task update at text": lambda r: TaskUpdate(r, "a", TaskState.RUNNING, at="2"),
    "attempt started NaN": lambda r: AttemptRecord(r, "a", 1, 0, TaskState.RUNNING, started_at=NAN),
    "attempt ended inf": lambda r: AttemptRecord(r, "a", 1, 0, TaskState.FAILED, started_at=1.0,
                                                 ended_at=INF),
    "log at NaN": lambda r: LogRecord(r, NAN, "info", "m"),
    "log at text": lambda r: LogRecord(r, "1.0", "info", "m"),
    "long cache status on update": lambda r: TaskUpdate(r, "a", TaskState.SUCCESS, at=2.0,
                                                        cache_status="resumed-by-hand-x"),
    "unknown cache status on a row": lambda r: TaskRecord(r, "b", "c", created_at=1.0,
                                                          cache_status="HIT"),
    "long edge kind": lambda r: EdgeRecord(r, "a", r, kind="DEPENDS_ON_LATER_X"),
    "unknown edge kind": lambda r: EdgeRecord(r, "a", r, kind="depends_on"),
}


def _run(store) -> str:
    run_id = f"run-{secrets.token_hex(4)}"
    store.write([RunRecord(run_id=run_id, pipeline="p", state=RunState.RUNNING, created_at=1.0),
                 TaskRecord(run_id=run_id, node_id="a", component="c", created_at=1.0)])
    return run_id


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_value_no_backend_keeps_alike_is_refused_and_nothing_is_written(store, case) -> None:
    run_id = _run(store)
    good_log = LogRecord(run_id, 5.0, "info", "kept only if the batch is")
    with pytest.raises(ValidationError, match=r"finite number|unknown (cache status|kind)"):
        store.write([good_log, TaskUpdate(run_id, "a", TaskState.RUNNING, at=3.0),
                     BAD[case](run_id)])
    assert store.get_logs(run_id) == []
    [task] = store.get_tasks(run_id)
    assert (task.node_id, task.state, task.started_at) == ("a", TaskState.PENDING, None)
    assert store.get_edges(run_id) == []
    assert store.get_attempts(run_id, "a") == []


def test_the_writer_process_rows_are_checked_too(tmp_path) -> None:
    s = SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True)
    try:
        run_id = _run(s)
        rec = TaskRecord(run_id, "b", "c", created_at=NAN)
        row = [getattr(rec, f) for f in _TASK_COLUMNS]
        with pytest.raises(ValidationError, match="finite number"):
            s.write([TaskRows([row])])
        assert [t.node_id for t in s.get_tasks(run_id)] == ["a"]
    finally:
        s.close()


def test_every_value_the_engine_writes_is_accepted(store) -> None:
    run_id = _run(store)
    store.write([TaskRecord(run_id, f"t{i}", "c", created_at=1, cache_status=status)
                 for i, status in enumerate(["hit", "miss", "disabled", "resumed", None])]
                + [EdgeRecord(run_id, "a", "t0"), EdgeRecord(run_id, "a", run_id, "BELONGS_TO"),
                   AttemptRecord(run_id, "a", 1, 0, TaskState.SUCCESS, started_at=2, ended_at=3.5),
                   LogRecord(run_id, 4, "info", "m")])
    assert sorted(t.cache_status or "" for t in store.get_tasks(run_id)) == \
        ["", "", "disabled", "hit", "miss", "resumed"]
    assert sorted(e.kind for e in store.get_edges(run_id)) == ["BELONGS_TO", "DEPENDS_ON"]
