"""Text that not every metadata store can hold (a NUL: PostgreSQL refuses it; a lone surrogate:
UTF-8 cannot encode it) behaves the same on every store (session 26 review): a read given
such text matches nothing, a write is a ``ValidationError`` (never retried as a storage
error), and a DAG whose ids hold it is refused before it runs. Memory, SQLite and the
machine's PostgreSQL."""
from __future__ import annotations

import secrets
import subprocess
import sys

import pytest

from twingraph.core.records import LogRecord, RunRecord, TaskRecord
from twingraph.core.states import RunState
from twingraph.engine.dynamic import DAGDefinition, DynamicScheduler, NodeDefinition
from twingraph.errors import ValidationError
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.memory import MemoryStorage


@pytest.fixture
def store(metadata_store):
    return metadata_store        # memory, SQLite, PostgreSQL (conftest.py)


ODD = ["a\x00b", "x\udcffy", "\udcff\udcfe\udcfd\udcfc\udcfb\udcfa"]


@pytest.mark.parametrize("text", ODD)
def test_a_read_given_unstorable_text_matches_nothing(store, text) -> None:
    run_id = f"run-{secrets.token_hex(4)}"
    store.write([RunRecord(run_id=run_id, pipeline="p", state=RunState.RUNNING, created_at=1.0),
                 TaskRecord(run_id=run_id, node_id="a-0", component="a", created_at=1.0)])
    assert store.get_run(text) is None
    assert store.list_runs(pipeline=text) == []
    assert store.find_run_ids(text) == []
    assert store.get_tasks(text) == []
    assert store.get_logs(run_id, node_id=text) == []
    assert store.get_attempts(run_id, text) == []
    assert store.get_run(run_id) is not None            # and the store reads on


def test_a_lone_surrogate_is_refused_by_every_store_and_nothing_is_written(store) -> None:
    run_id = f"run-{secrets.token_hex(4)}"
    with pytest.raises(ValidationError, match="not valid UTF-8"):
        store.write([RunRecord(run_id=run_id, pipeline="p", state=RunState.FAILED,
                               created_at=1.0, error="x\udcffy")])
    assert store.get_run(run_id) is None


@pytest.mark.postgres
def test_a_nul_on_postgresql_is_a_validation_error(postgres_url) -> None:
    with SQLMetadataStore(postgres_url, create=True) as s:
        run_id = f"run-{secrets.token_hex(4)}"
        s.write([RunRecord(run_id=run_id, pipeline="p", state=RunState.RUNNING, created_at=1.0)])
        with pytest.raises(ValidationError, match="NUL"):
            s.write([LogRecord(run_id, 1.0, "info", "a\x00b")])
        assert s.get_logs(run_id) == []


def _ok(deps, params):
    return 1


@pytest.mark.parametrize("dag_id,node", [("dag\x00", "a"), ("dag", "a\x00"), ("dag", "a\udcff")])
def test_a_dag_whose_ids_cannot_be_recorded_is_refused_before_it_runs(dag_id, node) -> None:
    s = DynamicScheduler(MemoryStorage())
    s.executor.register_operation("ok", _ok)
    with pytest.raises(ValidationError) as caught:
        s.run(DAGDefinition(dag_id, [NodeDefinition(node, "ok", [], {})]))
    assert "NUL" in str(caught.value)


def test_the_cli_given_a_run_id_that_is_not_utf8_says_not_found(tmp_path) -> None:
    import os
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    SQLMetadataStore(f"sqlite:///{tmp_path / 'home' / 'twingraph.db'}", create=True).close()
    out = subprocess.run([sys.executable, "-m", "twingraph", "runs", "show",
                          b"\xff\xfe\xfd\xfc\xfb\xfa"], env=env, capture_output=True,
                         timeout=60)
    assert out.returncode == 1, out.stderr
    assert b"not found" in out.stderr and b"cannot be stored" not in out.stderr


def test_task_counts_given_unstorable_text_is_empty_and_a_bad_state_is_refused_everywhere(store) -> None:
    for text in ODD:
        assert store.task_counts(text) == {}
        with pytest.raises(ValidationError):
            store.list_runs(state=text)
