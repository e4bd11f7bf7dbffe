"""Review findings (session 22) on the dynamic scheduler and ``twingraph dynamic execute``.

Real stores in ``tmp_path`` (SQLite, and a user's file store written from the document's
``StorageInterface``), real operations, the CLI as a subprocess; no mocks."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from twingraph.core.results import StorageMetadata
from twingraph.engine.dynamic import (DAGDefinition, DynamicScheduler, ExecutionConfig,
                                      NodeDefinition, NodeStatus)
from twingraph.engine.streaming_node import StreamingNodeExecutor
from twingraph.stores.results import StorageInterface
from twingraph.stores.results.sqlite import SQLiteStorage

N = NodeDefinition
ROOT = Path(__file__).resolve().parents[2]


class DocumentFileStore(StorageInterface):
    """The document's ``FilesystemStorage`` in miniature: ``data: bytes``, ``f.write(data)``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.meta: dict[str, StorageMetadata] = {}

    async def store_result(self, node_id: str, data: bytes, metadata: StorageMetadata) -> bool:
        assert isinstance(data, bytes), type(data)
        (self.base / node_id).write_bytes(data)
        self.meta[node_id] = metadata
        return True

    async def retrieve_result(self, node_id):
        p = self.base / node_id
        return p.read_bytes() if p.exists() else None

    async def stream_result(self, node_id, chunk_size=1 << 20):
        data = await self.retrieve_result(node_id)
        if data is not None:
            for i in range(0, len(data), chunk_size):
                yield data[i:i + chunk_size]

    async def exists(self, node_id):
        return (self.base / node_id).exists()

    async def delete_result(self, node_id):
        return False

    async def list_results(self, dag_id=None):
        return sorted(os.listdir(self.base))

    async def get_metadata(self, node_id):
        return self.meta.get(node_id)

    async def update_metadata(self, node_id, metadata):
        return False


def test_execute_node_and_streaming_nodes_hand_a_users_store_bytes(tmp_path):
    """They handed it the encoder's tuple of buffers / the list of chunks: every node failed
    ("memoryview: a bytes-like object is required, not 'tuple'")."""
    async def double(deps, params):
        return params["v"] * 2

    async def emit(deps, params):
        return b"hello world"

    async def emit_streaming(ctx, params):      # the streaming variant: chunks
        yield b"hello "
        yield b"world"

    async def main():
        store = DocumentFileStore(tmp_path / "store")
        ex = StreamingNodeExecutor(store)
        spilling = StreamingNodeExecutor(store, spool_threshold=4)   # through a temp file
        for e in (ex, spilling):
            e.register_operation("double", double)
            e.register_operation("emit", emit)
            e.register_operation("emit_streaming", emit_streaming)
        a = await ex.execute_node(N("a", "double", [], {"v": 21}))
        s = await ex.execute_streaming_node(N("s", "emit", [], {}))
        big = await spilling.execute_streaming_node(N("big", "emit", [], {}))
        return a, s, big

    a, s, big = asyncio.run(main())
    assert (a.status, s.status, big.status) == (NodeStatus.COMPLETED,) * 3, \
        (a.error_message, s.error_message, big.error_message)
    assert (tmp_path / "store" / "a").read_bytes() == b"42"
    assert (tmp_path / "store" / "s").read_bytes() == b"hello world"
    assert (tmp_path / "store" / "big").read_bytes() == b"hello world"


OPS = '''
from twingraph import operation

@operation
def pairs(deps, params):
    return {("x", "y"): 3, ("y", "z"): 1}

@operation
def ring(deps, params):
    a = [1]
    a.append(a)
    return a

class ValidationError(Exception):
    """A library's (pydantic's, jsonschema's) class of the same name as TwinGraph's."""

@operation
def flaky(deps, params):
    import pathlib
    p = pathlib.Path(params["counter"])
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    if n < 2:
        raise ValidationError(f"attempt {n + 1}: bad payload")
    return n + 1
'''


def _dynamic(tmp_path, dag: dict, *extra: str) -> subprocess.CompletedProcess:
    (tmp_path / "ops.py").write_text(OPS)
    (tmp_path / "dag.json").write_text(json.dumps(dag))
    env = {**os.environ, "TWINGRAPH_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "twingraph", "dynamic", "execute",
                           str(tmp_path / "dag.json"), "--load", str(tmp_path / "ops.py"),
                           "--storage-path", str(tmp_path / "st"), *extra],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


def test_results_json_cannot_hold_are_printed_as_their_repr(tmp_path):
    """A result keyed by tuples, or holding itself: the run succeeded, and printing the
    summary ended in a traceback and exit 1 ("keys must be str..."; "Circular reference")."""
    p = _dynamic(tmp_path, {"dag_id": "odd", "nodes": [{"id": "p", "operation": "pairs"},
                                                       {"id": "r", "operation": "ring"}]})
    assert p.returncode == 0, p.stderr
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("Execution completed: ")][0]
    summary = json.loads(line.split(": ", 1)[1])
    assert summary["status"] == "completed"
    assert summary["results"] == {"p": "{('x', 'y'): 3, ('y', 'z'): 1}", "r": "[1, [...]]"}


def test_a_users_exception_named_validationerror_is_retried(tmp_path):
    """Only TwinGraph's own ValidationError is never retried (the document's
    ``isinstance(error, ValidationError)``); a class of the same name from a library was
    matched by name, and the node failed at its first attempt."""
    counter = tmp_path / "count"
    p = _dynamic(tmp_path, {"dag_id": "flaky", "nodes": [
        {"id": "f", "operation": "flaky", "parameters": {"counter": str(counter)}}]},
        "--max-retries", "3", "--no-cache")
    assert p.returncode == 0, p.stdout + p.stderr
    assert counter.read_text() == "3"
    assert '"results": {"f": 3}' in p.stdout


def test_a_cancelled_dag_id_can_be_submitted_again_at_once(tmp_path):
    """``cancel_execution`` answered True, and submitting the id again was refused ("already
    running") for the 10-100 ms the cancelled run took to record its end; the document frees
    the id at once. Its progress counts the nodes as cancelled, not failed."""
    release = threading.Event()

    def wait(deps, params):
        release.wait(10)
        return 1

    async def main():
        with DynamicScheduler(SQLiteStorage(str(tmp_path / "r.db")),
                              ExecutionConfig(max_retries=0, no_cache=True)) as s:
            s.executor.register_operation("wait", wait)
            s.executor.register_operation("quick", lambda deps, params: 2)
            dag = DAGDefinition("d", [N(f"n{i}", "wait", [], {}) for i in range(4)])
            await s.submit_dag(dag)
            await asyncio.sleep(0.2)
            assert await s.cancel_execution("d") is True
            release.set()
            await s.submit_dag(DAGDefinition("d", [N("q", "quick", [], {})]))
            result = await s.wait_for_completion("d", 10)
            return result, s.node_results("d")

    result, nodes = asyncio.run(main())
    assert result.state.value == "SUCCESS" and nodes["q"].result_data == 2


def test_progress_of_a_cancelled_execution_counts_cancelled_nodes_apart(tmp_path):
    release = threading.Event()

    def wait(deps, params):
        release.wait(10)
        return 1

    async def main():
        with DynamicScheduler(SQLiteStorage(str(tmp_path / "r.db")),
                              ExecutionConfig(max_retries=0, no_cache=True,
                                              max_concurrent_nodes=2)) as s:
            s.executor.register_operation("wait", wait)
            await s.submit_dag(DAGDefinition("c", [N(f"n{i}", "wait", [], {}) for i in range(6)]))
            await asyncio.sleep(0.2)
            await s.cancel_execution("c")
            release.set()
            await s.wait_for_completion("c", 10)
            return await s.get_execution_progress("c"), s.node_results("c")

    progress, nodes = asyncio.run(main())
    assert progress.failed_nodes == 0
    assert progress.cancelled_nodes == 6 and progress.completed_nodes == 0
    assert {r.status for r in nodes.values()} == {NodeStatus.CANCELLED}


def test_rest_outputs_of_a_value_holding_itself_are_json_data():
    """``service.workflows.jsonable`` (the REST faces' outputs) recursed for ever on a cycle."""
    from twingraph.service.workflows import jsonable
    ring: list = [1]
    ring.append(ring)
    value = {"r": ring, (1, 2): {"k": ring}, "same": [ring, ring]}
    out = jsonable(value)
    assert json.loads(json.dumps(out)) == {"r": [1, "[1, [...]]"], "(1, 2)": {"k": [1, "[1, [...]]"]},
                                           "same": [[1, "[1, [...]]"], [1, "[1, [...]]"]]}
