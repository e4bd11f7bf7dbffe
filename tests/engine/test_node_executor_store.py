"""``NodeExecutor.execute_node`` stores its result under the node id (the document's
execute_node), so a following ``execute_node`` naming that node as an argument reads it back.
Real stores on real files (SQLite database, filesystem tree) in ``tmp_path``."""
import asyncio
import hashlib
import threading

import numpy as np
import pytest

from twingraph.core.results import DataType
from twingraph.engine.dynamic import NodeDefinition, NodeExecutor, NodeStatus
from twingraph.errors import StorageError
from twingraph.stores.results import FilesystemStorage, MemoryStorage, SQLiteStorage


def _open(kind, tmp_path):
    if kind == "sqlite":
        return SQLiteStorage(tmp_path / "results.db")
    if kind == "filesystem":
        return FilesystemStorage(tmp_path / "store")
    return MemoryStorage()


@pytest.fixture(params=["sqlite", "filesystem", "memory"])
def kind(request):
    return request.param


def _executor(storage, value=None):
    ex = NodeExecutor(storage)
    calls = []

    def make(deps, params):
        calls.append(params)
        return params["value"] if value is None else value

    ex.register_operation("make", make)
    ex.register_operation("echo", lambda deps, params: deps[params["of"]])
    ex.calls = calls
    return ex


def run(coro):
    return asyncio.run(coro)


VALUES = [
    pytest.param(41, id="int"),
    pytest.param(2.5, id="float"),
    pytest.param("text", id="str"),
    pytest.param({"a": [1, 2, {"b": None}], "c": True}, id="dict"),
    pytest.param(b"\x00raw\xff" * 100, id="bytes"),
    pytest.param({1, 2, 3}, id="set-pickled"),
]


@pytest.mark.parametrize("value", VALUES)
def test_second_node_reads_the_first_nodes_stored_value(kind, tmp_path, value):
    storage = _open(kind, tmp_path)
    ex = _executor(storage, value)
    first = run(ex.execute_node(NodeDefinition("n_a", "make", [], {})))
    assert first.status is NodeStatus.COMPLETED, first.error_message
    assert first.result_data == value
    second = run(ex.execute_node(NodeDefinition("n_b", "echo", ["n_a"], {"of": "n_a"})))
    assert second.status is NodeStatus.COMPLETED, second.error_message
    assert second.result_data == value and type(second.result_data) is type(value)


def test_numpy_array_round_trips(kind, tmp_path):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    storage = _open(kind, tmp_path)
    ex = _executor(storage, arr)
    ex.register_operation("total", lambda deps, params: float(deps["n_a"].sum()))
    assert run(ex.execute_node(NodeDefinition("n_a", "make", [], {}))).status is NodeStatus.COMPLETED
    second = run(ex.execute_node(NodeDefinition("n_b", "echo", ["n_a"], {"of": "n_a"})))
    np.testing.assert_array_equal(second.result_data, arr)
    assert second.result_data.dtype == np.float32
    total = run(ex.execute_node(NodeDefinition("n_c", "total", ["n_a"], {})))
    assert total.result_data == float(arr.sum())
    assert run(storage.get_metadata("n_a")).data_type is DataType.DATASET


@pytest.mark.parametrize("kind_", ["sqlite", "filesystem"])
def test_stored_result_survives_reopening_the_store(kind_, tmp_path):
    ex = _executor(_open(kind_, tmp_path))
    assert run(ex.execute_node(NodeDefinition("n_a", "make", [], {"value": {"k": 7}}))).status \
        is NodeStatus.COMPLETED
    ex2 = _executor(_open(kind_, tmp_path))             # a new process would see the same files
    got = run(ex2.execute_node(NodeDefinition("n_b", "echo", ["n_a"], {"of": "n_a"})))
    assert got.status is NodeStatus.COMPLETED and got.result_data == {"k": 7}


def test_dict_arguments_name_stored_nodes(kind, tmp_path):
    ex = _executor(_open(kind, tmp_path))
    ex.register_operation("add", lambda deps, params: deps["n_x"] + deps["n_y"])
    run(ex.execute_node(NodeDefinition("n_x", "make", [], {"value": 2})))
    run(ex.execute_node(NodeDefinition("n_y", "make", [], {"value": 3})))
    got = run(ex.execute_node(NodeDefinition("n_s", "add", {"a": "n_x", "b": "n_y"}, {})))
    assert got.status is NodeStatus.COMPLETED and got.result_data == 5


def test_stored_metadata_has_the_documents_fields_and_the_encoding(kind, tmp_path):
    storage = _open(kind, tmp_path)
    ex = _executor(storage)
    node = NodeDefinition("n_a", "make", [], {"value": {"x": [1, 2]}},
                          metadata={"dag_id": "d1", "owner": "me", "inputs": {"n_z": object()}})
    assert run(ex.execute_node(node)).status is NodeStatus.COMPLETED
    meta = run(storage.get_metadata("n_a"))
    data = bytes(run(storage.retrieve_result("n_a")))
    assert meta.node_id == "n_a"
    assert meta.data_type is DataType.NESTED
    assert meta.size == len(data)
    assert meta.content_hash == hashlib.sha256(data).hexdigest()
    assert meta.created_at
    # node metadata is kept, the encoding is recorded, 'inputs' (values, not metadata) is not
    assert meta.metadata == {"dag_id": "d1", "owner": "me", "encoding": "json"}
    assert run(storage.list_results(dag_id="d1")) == ["n_a"]


@pytest.mark.parametrize("value, encoding, data_type", [
    (7, "json", DataType.PRIMITIVE),
    (b"xy", "bytes", DataType.BINARY),
    ({1, 2}, "pickle", DataType.NESTED),
])
def test_encoding_and_data_type_follow_the_value(tmp_path, value, encoding, data_type):
    storage = _open("sqlite", tmp_path)
    ex = _executor(storage, value)
    assert run(ex.execute_node(NodeDefinition("n_a", "make", [], {}))).status is NodeStatus.COMPLETED
    meta = run(storage.get_metadata("n_a"))
    assert (meta.metadata["encoding"], meta.data_type) == (encoding, data_type)


@pytest.mark.parametrize("bad_id", ["a/b", "../escape", ".hidden", "", "x" * 201, "sp ace"])
def test_a_node_id_that_is_not_a_valid_key_fails_before_the_operation_runs(kind, tmp_path,
                                                                         bad_id):
    storage = _open(kind, tmp_path)
    ex = _executor(storage)
    got = run(ex.execute_node(NodeDefinition(bad_id, "make", [], {"value": 1})))
    assert got.status is NodeStatus.FAILED and got.node_id == bad_id
    assert "StorageError" in got.error_message
    assert f"cannot store a result under node id {bad_id!r}" in got.error_message
    assert "invalid result key" in got.error_message
    assert ex.calls == []                               # the operation never ran
    assert run(storage.list_results()) == []
    if kind == "filesystem":
        assert not (tmp_path / "escape.json").exists() and not (tmp_path / "b").exists()


def test_a_dependency_id_that_is_not_a_valid_key_fails(kind, tmp_path):
    ex = _executor(_open(kind, tmp_path))
    got = run(ex.execute_node(NodeDefinition("n_b", "echo", ["../x"], {"of": "../x"})))
    assert got.status is NodeStatus.FAILED and "invalid result key" in got.error_message


def test_missing_dependency_still_fails_clearly(kind, tmp_path):
    ex = _executor(_open(kind, tmp_path))
    got = run(ex.execute_node(NodeDefinition("n_b", "echo", ["n_a"], {"of": "n_a"})))
    assert got.status is NodeStatus.FAILED and "Dependency n_a not found" in got.error_message


def test_a_value_that_cannot_be_encoded_fails_and_stores_nothing(kind, tmp_path):
    storage = _open(kind, tmp_path)
    ex = _executor(storage, threading.Lock())
    got = run(ex.execute_node(NodeDefinition("n_a", "make", [], {})))
    assert got.status is NodeStatus.FAILED and "cannot encode" in got.error_message
    assert run(storage.exists("n_a")) is False


def test_metadata_the_store_cannot_hold_fails_and_stores_nothing(kind, tmp_path):
    storage = _open(kind, tmp_path)
    ex = _executor(storage)
    node = NodeDefinition("n_a", "make", [], {"value": 1}, metadata={"handle": object()})
    got = run(ex.execute_node(node))
    assert got.status is NodeStatus.FAILED
    assert "result of node 'n_a' not stored" in got.error_message
    assert "not JSON-serializable" in got.error_message
    assert got.result_data is None
    assert run(storage.exists("n_a")) is False
    assert run(storage.list_results()) == []


def test_a_failing_store_makes_the_node_failed_and_keeps_the_old_value(kind, tmp_path):
    storage = _open(kind, tmp_path)
    ex = _executor(storage)
    assert run(ex.execute_node(NodeDefinition("n_a", "make", [], {"value": "old"}))).status \
        is NodeStatus.COMPLETED

    async def broken(node_id, data, metadata):
        raise StorageError("disk full")
    storage.store_result = broken
    got = run(ex.execute_node(NodeDefinition("n_a", "make", [], {"value": "new"})))
    assert got.status is NodeStatus.FAILED
    assert got.error_message == "StorageError: result of node 'n_a' not stored: disk full"
    del storage.store_result
    after = run(ex.execute_node(NodeDefinition("n_b", "echo", ["n_a"], {"of": "n_a"})))
    assert after.result_data == "old"


def test_a_store_that_returns_false_makes_the_node_failed(tmp_path):
    storage = MemoryStorage()

    async def refuses(node_id, data, metadata):
        return False
    storage.store_result = refuses
    got = run(_executor(storage).execute_node(NodeDefinition("n_a", "make", [], {"value": 1})))
    assert got.status is NodeStatus.FAILED and "refused" in got.error_message


def test_re_executing_a_node_replaces_its_value(kind, tmp_path):
    ex = _executor(_open(kind, tmp_path))
    run(ex.execute_node(NodeDefinition("n_a", "make", [], {"value": 1})))
    run(ex.execute_node(NodeDefinition("n_a", "make", [], {"value": [2, 3]})))
    got = run(ex.execute_node(NodeDefinition("n_b", "echo", ["n_a"], {"of": "n_a"})))
    assert got.result_data == [2, 3]


def test_async_operation_result_is_stored(kind, tmp_path):
    ex = _executor(_open(kind, tmp_path))

    async def later(deps, params):
        await asyncio.sleep(0)
        return {"done": params["n"]}
    ex.register_operation("later", later)
    assert run(ex.execute_node(NodeDefinition("n_a", "later", [], {"n": 3}))).status \
        is NodeStatus.COMPLETED
    got = run(ex.execute_node(NodeDefinition("n_b", "echo", ["n_a"], {"of": "n_a"})))
    assert got.result_data == {"done": 3}


def test_without_storage_nothing_is_stored_and_inputs_still_work():
    ex = _executor(None)
    got = run(ex.execute_node(NodeDefinition("any/id", "make", [], {"value": 1})))
    assert got.status is NodeStatus.COMPLETED and got.result_data == 1
    got = run(ex.execute_node(NodeDefinition("n_b", "echo", ["n_a"], {"of": "n_a"},
                                             metadata={"inputs": {"n_a": 9}})))
    assert got.result_data == 9
