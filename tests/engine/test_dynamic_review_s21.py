"""Review findings (session 21) on the dynamic scheduler and ``twingraph dynamic execute``.

Real SQLite result and metadata stores in ``tmp_path``, real operations, the CLI as a
subprocess. Corruption is done as it happens: bytes of a stored row changed with ``sqlite3``."""
import asyncio
import gc
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from twingraph.cli.dynamic import _cancel
from twingraph.engine.dynamic import (DAGDefinition, DynamicScheduler, ExecutionConfig,
                                      NodeDefinition, NodeStatus)
from twingraph.engine.engine import Engine
from twingraph.errors import SchedulingError, ValidationError
from twingraph.integration import VoxLogicaIntegration
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.results.sqlite import SQLiteStorage

N = NodeDefinition


def _stores(tmp_path):
    return (SQLiteStorage(str(tmp_path / "results.db")),
            SQLMetadataStore(f"sqlite:///{tmp_path / 'meta.db'}", create=True))


def _scheduler(storage, metadata=None, **config):
    s = DynamicScheduler(storage, ExecutionConfig(**config), metadata=metadata)
    s.executor.register_operation("const", lambda deps, params: params.get("v", 1))
    s.executor.register_operation("big", lambda deps, params: b"A" * params["size"])
    s.executor.register_operation("count_a",
                                  lambda deps, params: bytes(deps["a"]).count(b"A"))
    return s


# -- 1. wrongly typed fields of a DAG built in Python ----------------------------------------

@pytest.mark.parametrize("nodes, names", [
    ([N("a", "const", [], {}), N("b", "const", [1], {})], "b (arguments [1])"),
    ([N("a", "const", [], {}), N("b", "const", [None], {})], "b (arguments [None])"),
    ([N("a", "const", [], {}), N("b", "const", {"x": 1}, {})], "b (arguments {'x': 1})"),
    ([N("a", "const", [], {}), N("b", "const", {1: "a"}, {})], "b (arguments {1: 'a'})"),
    ([N("a", "const", [], {}), N("b", "const", [["a"]], {})], "b (arguments [['a']])"),
    ([N("a", "const", [], {}), N("b", "const", ["a", ["a"], "a"], {})], "b (arguments"),
    ([N("a", "const", [], None)], "parameters must be a mapping of names to values: a"),
    ([N("a", "const", [], [1, 2])], "a (parameters [1, 2])"),
    ([N("a", "const", [], {}), {"node_id": "b", "operation": "const"}],
     "nodes must be NodeDefinition instances: nodes[1] (dict)"),
    ([N("a", ["const"], [], {})], "operation must be the name of an operation (a string): a"),
    ([N("a", "const", [], {}, ["not", "a", "mapping"])],
     "node metadata must be a mapping (or None): a"),
])
def test_wrongly_typed_fields_are_refused_before_anything_runs_naming_the_node(
        tmp_path, nodes, names):
    """Argument ids ``[1]``/``[None]``/``{"x": 1}`` raised a raw TypeError from the graph
    check, ``[["a"]]`` an unhashable TypeError, a dict as a node an AttributeError;
    ``parameters=None`` or a list was accepted and the node failed at run time. Each is a
    ``ValidationError`` naming the node, and no run is started."""
    storage, metadata = _stores(tmp_path)
    with _scheduler(storage, metadata, max_retries=0) as s:
        with pytest.raises(ValidationError) as e:
            asyncio.run(s.submit_dag(DAGDefinition("bad", nodes)))
        assert names in str(e.value)
        with pytest.raises(ValidationError):
            s.run(DAGDefinition("bad", nodes))
    assert metadata.list_runs() == []
    assert storage.list_keys() == []


def test_nodes_given_as_a_tuple_run_like_a_list(tmp_path):
    """Decided: ``nodes`` may be any sequence of ``NodeDefinition`` (a tuple too; it said "has
    no nodes"). Not a string, a mapping, or an iterator (read once, it could not be checked
    and then run)."""
    storage, metadata = _stores(tmp_path)
    with _scheduler(storage, metadata) as s:
        dag = DAGDefinition("t", (N("a", "const", [], {"v": 2}), N("b", "const", ["a"], {})))
        assert s.run(dag).state.value == "SUCCESS"
        assert {k: r.result_data for k, r in s.node_results("t").items()} == {"a": 2, "b": 1}
        for nodes in ("ab", {"a": N("a", "const", [], {})}, iter([N("a", "const", [], {})])):
            with pytest.raises(ValidationError, match="nodes must be a list of NodeDefinition"):
                s.run(DAGDefinition("t2", nodes))


# -- 2. node metadata in DAG runs --------------------------------------------------------------

def test_node_metadata_is_kept_in_the_stored_result_as_execute_node_keeps_it(tmp_path):
    """``NodeExecutor.execute_node`` stores a node's ``metadata`` (minus ``inputs``) with its
    result; a DAG run stored only ``dag_id``/``encoding``. Decided for a result shared by
    DAGs (one memo key): its metadata is that of the node whose run computed and stored it,
    as ``dag_id`` is that run's DAG; a memo hit in another DAG does not rewrite it."""
    storage, metadata = _stores(tmp_path)
    with _scheduler(storage, metadata) as s:
        s.run(DAGDefinition("nm", [N("a", "const", [], {"v": 42},
                                     {"owner": "alice", "inputs": {"x": 1}})]))
        (key,) = storage.list_keys()
        assert storage.head(key).metadata == {"owner": "alice", "encoding": "json",
                                              "dag_id": "nm"}
        s.run(DAGDefinition("other", [N("a", "const", [], {"v": 42}, {"owner": "bob"})]))
        assert storage.head(key).metadata["owner"] == "alice"
        big = "x" * 100_000                      # a result written apart, not as a small row
        s.run(DAGDefinition("large", [N("b", "const", [], {"v": big}, {"owner": "carol"})]))
        (b_key,) = set(storage.list_keys()) - {key}
        assert storage.head(b_key).metadata["owner"] == "carol"
        with pytest.raises(ValidationError, match="node metadata must be JSON data"):
            s.run(DAGDefinition("odd", [N("c", "const", [], {"v": 1}, {"when": object()})]))


# -- 3. a result that cannot be read hides only itself -----------------------------------------

def _corrupt_inline_rows(db, marker=b"A" * 50):
    con = sqlite3.connect(db)
    changed = 0
    for key, data in con.execute("SELECT node_id, data FROM node_results").fetchall():
        if data and marker in data:
            data = bytearray(data)
            data[data.index(marker) + 10] = ord("B")
            con.execute("UPDATE node_results SET data = ? WHERE node_id = ?", (bytes(data), key))
            changed += 1
    con.commit()
    con.close()
    assert changed


@pytest.mark.parametrize("with_metadata_store", [True, False])
def test_node_results_answer_every_node_when_one_result_is_corrupted(tmp_path,
                                                                     with_metadata_store):
    """A corrupted memo entry is found (and removed) when read: ``node_results`` raised
    ``NotFoundError`` for the whole DAG. Now the unreadable node is FAILED with the reason
    and the others are returned; the next run recomputes it."""
    storage, metadata = _stores(tmp_path)
    metadata = metadata if with_metadata_store else None
    dag = DAGDefinition("m", [N("a", "big", [], {"size": 100}), N("b", "count_a", ["a"], {})])
    with _scheduler(storage, metadata) as s:
        assert s.run(dag).state.value == "SUCCESS"
    _corrupt_inline_rows(tmp_path / "results.db")
    with _scheduler(storage, metadata) as s:
        assert s.run(dag).state.value == "SUCCESS"            # a and b: memo hits
        got = s.node_results("m")
        assert set(got) == {"a", "b"}
        assert got["b"].status is NodeStatus.COMPLETED and got["b"].result_data == 100
        assert got["a"].status is NodeStatus.FAILED and got["a"].result_data is None
        assert "could not be read" in got["a"].error_message
        assert "corrupted" in got["a"].error_message
        again = asyncio.run(s.get_node_results("m", ["a"]))     # the entry is gone now
        assert again["a"].status is NodeStatus.FAILED and "not in the result store" in \
            again["a"].error_message
    with _scheduler(storage, metadata) as s:
        assert s.run(dag).state.value == "SUCCESS"
        assert s.node_results("m")["a"].result_data == b"A" * 100


def test_an_output_that_cannot_be_read_fails_the_execution_with_its_reason(tmp_path):
    """Through the integration layer (the CLI's and REST's path): the output's value missing
    from ``results`` without a word would be a silent loss; it is a failure naming it."""
    storage, metadata = _stores(tmp_path)
    program = {"dag_id": "one", "nodes": [{"id": "a", "operation": "big",
                                            "parameters": {"size": 100}}]}
    with _scheduler(storage, metadata) as s:
        first = asyncio.run(VoxLogicaIntegration(s).execute_program_dynamic(
            program, ExecutionConfig()))
    assert first["status"] == "completed" and first["results"] == {"a": b"A" * 100}
    _corrupt_inline_rows(tmp_path / "results.db")
    with _scheduler(storage, metadata) as s:
        out = asyncio.run(VoxLogicaIntegration(s).execute_program_dynamic(
            program, ExecutionConfig()))
        assert s.results["one"].state.value == "SUCCESS"
    assert out["status"] == "failed" and out["results"] == {}
    assert "corrupted" in out["failures"]["a"] and "could not be read" in out["error"]


# -- 4. the CLI says "cancelled" only for a run it cancelled ---------------------------------

def test_the_cli_does_not_say_cancelled_for_a_run_that_had_ended(tmp_path, capsys):
    """Collecting the output of a finished run failed: the CLI printed "DAG ... cancelled"
    (nothing was running)."""
    storage, metadata = _stores(tmp_path)
    with _scheduler(storage, metadata) as s:
        s.run(DAGDefinition("done", [N("a", "const", [], {})]))
        assert _cancel(s, "done", "the command failed: IntegrityError") is False
        assert "cancelled" not in capsys.readouterr().err
        assert s.results["done"].state.value == "SUCCESS"


def test_the_cli_cancels_a_live_run_and_says_so(tmp_path, capsys):
    storage, metadata = _stores(tmp_path)

    async def slow(deps, params):
        await asyncio.sleep(30)

    with _scheduler(storage, metadata) as s:
        s.executor.register_operation("slow", slow)
        asyncio.run(s.submit_dag(DAGDefinition("live", [N("a", "slow", [], {})])))
        assert _cancel(s, "live", "interrupted (Ctrl-C)") is True
        assert "DAG live cancelled" in capsys.readouterr().err
        assert s.results["live"].state.value == "CANCELLED"


# -- 5. a scheduler releases its engine ---------------------------------------------------------

def _engine_threads():
    return [t.name for t in threading.enumerate()
            if t.name.startswith(("twingraph-recorder", "twingraph-worker", "twingraph-run"))]


def _threads_settle_at(limit, timeout=10.0):
    """The thread count once it is at most ``limit`` (closed pools end their threads
    asynchronously), or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while threading.active_count() > limit and time.monotonic() < deadline:
        time.sleep(0.02)
    return threading.active_count()


def _one_dag(s, i):
    assert s.run(DAGDefinition(f"l{i}", [N(f"n{j}", "const", [], {"v": j})
                                         for j in range(5)])).state.value == "SUCCESS"


@pytest.mark.parametrize("how", ["close", "with", "del"])
def test_schedulers_made_and_dropped_do_not_leave_threads_behind(tmp_path, how):
    """Each ``DynamicScheduler(storage, config)`` left its engine's recorder and worker
    threads (~3.5) and had no ``close()``. Closed, left by ``with``, or collected: the engine
    it made is closed. The storage stays the caller's (used across all the cycles)."""
    storage = SQLiteStorage(str(tmp_path / "results.db"))
    s = _scheduler(storage, no_cache=True)
    _one_dag(s, -1)
    s.close()
    del s
    gc.collect()
    deadline = time.monotonic() + 10
    while _engine_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    baseline = threading.active_count()
    for i in range(20):
        if how == "with":
            with _scheduler(storage, no_cache=True) as s:
                _one_dag(s, i)
        else:
            s = _scheduler(storage, no_cache=True)
            _one_dag(s, i)
            if how == "close":
                s.close()
                s.close()                           # idempotent
        del s
        gc.collect()
    assert _threads_settle_at(baseline) <= baseline, [t.name for t in threading.enumerate()]
    key = storage.list_keys()[-1]                  # still open: the caller's
    assert storage.read(key) is not None


def test_close_leaves_a_callers_engine_open_and_cancels_what_runs(tmp_path):
    """Decided: ``close()`` cancels the executions still running and waits for them to
    record their end (a bounded wait), then refuses new ones; a given engine is not closed
    (by ``close`` or by collection): the caller owns it."""
    storage, metadata = _stores(tmp_path)
    engine = Engine(results=storage, metadata=metadata)

    async def slow(deps, params):
        await asyncio.sleep(30)

    try:
        s = DynamicScheduler(storage, engine=engine)
        s.executor.register_operation("slow", slow)
        asyncio.run(s.submit_dag(DAGDefinition("live", [N("a", "slow", [], {})])))
        started = time.monotonic()
        s.close()
        assert time.monotonic() - started < 10
        assert s.closed and "live" not in s.active_executions
        result = s.results["live"]
        assert result.state.value == "CANCELLED"
        assert metadata.get_run(result.run_id).state.value == "CANCELLED"
        assert "the scheduler was closed" in (metadata.get_run(result.run_id).error or "")
        with pytest.raises(SchedulingError, match="closed"):
            asyncio.run(s.submit_dag(DAGDefinition("x", [N("a", "const", [], {})])))
        with pytest.raises(SchedulingError, match="closed"):
            s.run(DAGDefinition("x", [N("a", "const", [], {})]))
        del s
        gc.collect()
        s2 = DynamicScheduler(storage, engine=engine)
        s2.executor.register_operation("const", lambda deps, params: 7)
        assert s2.run(DAGDefinition("after", [N("a", "const", [], {})])).state.value == \
            "SUCCESS"                                # the caller's engine still works
    finally:
        engine.close()


# -- 4 and 6: the CLI ---------------------------------------------------------------------------

OPS = ("from twingraph import operation\n"
       "@operation('make_numbers')\n"
       "def make_numbers(deps, params):\n"
       "    return list(range(params['n']))\n"
       "@operation('square_all')\n"
       "def square_all(deps, params):\n"
       "    return [x * x for x in deps['numbers']]\n"
       "@operation('fail')\n"
       "def fail(deps, params):\n"
       "    raise RuntimeError('nope')\n")


@pytest.fixture
def cli(tmp_path):
    env = dict(os.environ, TWINGRAPH_HOME=str(tmp_path / "home"), COLUMNS="200")
    env.pop("TWINGRAPH_DATABASE_URL", None)
    (tmp_path / "ops.py").write_text(OPS)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "twingraph", "dynamic", "execute", *args],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return run


def test_cli_a_corrupted_output_is_a_failure_not_a_cancelled_dag(cli, tmp_path):
    """The run ended SUCCESS, its output was found corrupted when collected: the CLI said
    "the command failed: IntegrityError: DAG one cancelled" (nothing was cancelled)."""
    (tmp_path / "one.yaml").write_text("dag_id: one\nnodes:\n  - id: numbers\n"
                                       "    operation: make_numbers\n    parameters: {n: 40}\n")
    args = ("one.yaml", "--storage-path", "st", "--load", "ops.py")
    assert cli(*args).returncode == 0
    con = sqlite3.connect(tmp_path / "st" / "results.db")
    for key, data in con.execute("SELECT node_id, data FROM node_results").fetchall():
        data = bytearray(data)
        data[3] = ord("9")
        con.execute("UPDATE node_results SET data = ? WHERE node_id = ?", (bytes(data), key))
    con.commit()
    con.close()
    out = cli(*args)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "cancelled" not in out.stderr
    line = next(l for l in out.stderr.splitlines() if l.startswith("Execution failed: "))
    summary = json.loads(line.split(": ", 1)[1])
    assert summary["status"] == "failed" and "corrupted" in summary["failures"]["numbers"]


def test_cli_a_failed_dag_is_said_to_have_failed(cli, tmp_path):
    (tmp_path / "fail.yaml").write_text("nodes:\n  - {id: a, operation: fail}\n"
                                        "  - {id: numbers, operation: make_numbers, "
                                        "parameters: {n: 3}}\n")
    out = cli("fail.yaml", "--storage-path", "st", "--load", "ops.py")
    assert out.returncode == 1
    assert "Execution completed" not in out.stdout
    line = next(l for l in out.stderr.splitlines() if l.startswith("Execution failed: "))
    assert json.loads(line.split(": ", 1)[1])["failures"] == {"a": "RuntimeError: nope"}


def test_cli_unknown_operations_hint_at_load_and_at_close_names(cli, tmp_path):
    (tmp_path / "dag.yaml").write_text("nodes:\n  - {id: numbers, operation: make_numbers, "
                                       "parameters: {n: 3}}\n  - {id: sq, operation: squre_all,"
                                       " arguments: [numbers]}\n")
    out = cli("dag.yaml", "--storage-path", "st")
    assert out.returncode == 2
    said = " ".join(out.stderr.split())
    assert "unknown operations" in said and "--load module_or_file.py" in said
    out = cli("dag.yaml", "--storage-path", "st", "--load", "ops.py")
    said = " ".join(out.stderr.split())
    assert out.returncode == 2
    assert "sq (operation 'squre_all'; did you mean 'square_all'?)" in said
    assert "--load module_or_file.py" not in said
    assert not (tmp_path / "st").exists()
