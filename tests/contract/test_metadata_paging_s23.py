"""Reads that are not paged carry no ``LIMIT``/``OFFSET`` (session 23): SQLAlchemy rendered
``offset(0)`` as ``LIMIT -1 OFFSET 0`` on SQLite, whose sort is far slower with a limit: the
summary ``twingraph run`` prints read a 100,000-task run's tasks in 28 s (0.4 s without). The
statements the store sends to a real SQLite database are looked at."""
from __future__ import annotations

from sqlalchemy import event

from twingraph.core.records import LogRecord, RunRecord, TaskRecord
from twingraph.core.states import RunState, TaskState
from twingraph.stores.metadata import SQLMetadataStore


def test_unpaged_reads_send_no_limit_and_paged_ones_do(tmp_path):
    store = SQLMetadataStore(f"sqlite:///{tmp_path / 'm.db'}", create=True)
    try:
        store.write([RunRecord("r", "p", RunState.RUNNING, created_at=1.0, started_at=1.0,
                               heartbeat_at=1.0)]
                    + [TaskRecord("r", f"t-{i}", "t", TaskState.SUCCESS, created_at=1.0, order=i)
                       for i in range(5)]
                    + [LogRecord("r", 1.0 + i, "info", f"line {i}") for i in range(3)])
        sent: list[str] = []
        event.listen(store._engine, "before_cursor_execute",
                     lambda conn, cursor, statement, *rest: sent.append(statement))
        assert [t.node_id for t in store.get_tasks("r")] == [f"t-{i}" for i in range(5)]
        assert len(store.get_logs("r", limit=None)) == 3
        assert len(store.list_runs(limit=None)) == 1
        assert not [s for s in sent if "LIMIT" in s.upper()], sent
        sent.clear()
        assert [t.node_id for t in store.get_tasks("r", limit=2, offset=1)] == ["t-1", "t-2"]
        assert [t.node_id for t in store.get_tasks("r", offset=3)] == ["t-3", "t-4"]
        assert sum("LIMIT" in s.upper() for s in sent) == 2
    finally:
        store.close()
