"""A result store written from the dynamic-scheduler document (its eight async methods only,
no synchronous face) works as an engine's store: the engine adapts it
(``engine/async_store.py``). It used to be accepted and then fail every node with
``AttributeError: ... no attribute 'content_hashes'``. The store here is a real one, a dict
behind the document's interface, written as a user would."""
from __future__ import annotations

import asyncio
import threading

import pytest

from twingraph import component, pipeline
from twingraph.core.results import StorageMetadata
from twingraph.core.states import RunState
from twingraph.engine.dynamic import DAGDefinition, DynamicScheduler, ExecutionConfig, NodeDefinition
from twingraph.engine.engine import Engine
from twingraph.errors import ConfigurationError, IntegrityError
from twingraph.stores.metadata.memory import MemoryMetadataStore
from twingraph.stores.results import StorageInterface


class DictStorage(StorageInterface):
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.meta: dict[str, StorageMetadata] = {}
        self.threads: set[str] = set()

    async def store_result(self, node_id, data, metadata):
        self.threads.add(threading.current_thread().name)
        self.data[node_id], self.meta[node_id] = bytes(data), metadata
        return True

    async def retrieve_result(self, node_id):
        return self.data.get(node_id)

    async def stream_result(self, node_id, chunk_size=1 << 20):
        d = self.data.get(node_id)
        if d is None:
            return
        for i in range(0, len(d), chunk_size):
            await asyncio.sleep(0)
            yield d[i:i + chunk_size]

    async def exists(self, node_id):
        return node_id in self.data

    async def delete_result(self, node_id):
        self.meta.pop(node_id, None)
        return self.data.pop(node_id, None) is not None

    async def list_results(self, dag_id=None):
        return sorted(k for k, m in self.meta.items()
                      if dag_id is None or (m.metadata or {}).get("dag_id") == dag_id)

    async def get_metadata(self, node_id):
        return self.meta.get(node_id)

    async def update_metadata(self, node_id, metadata):
        if node_id not in self.meta:
            return False
        self.meta[node_id].metadata = {**(self.meta[node_id].metadata or {}), **metadata}
        return True


def _dag(dag_id):
    return DAGDefinition(dag_id, [NodeDefinition("a", "one", [], {}),
                                  NodeDefinition("b", "plus", ["a"], {"k": 10})])


CALLS: list[str] = []    # module level: in a closure cell, a list counts by value (a new version)


def test_a_dag_runs_on_a_users_async_store_and_its_rerun_hits():
    store = DictStorage()
    CALLS.clear()

    async def go():
        sch = DynamicScheduler(store, ExecutionConfig())
        try:
            sch.executor.register_operation("one", lambda d, p: CALLS.append("a") or 1)
            sch.executor.register_operation("plus", lambda d, p: CALLS.append("b") or
                                            d["a"] + p["k"])
            out = []
            for dag_id in ("first", "second"):
                await sch.submit_dag(_dag(dag_id))
                r = await sch.wait_for_completion(dag_id)
                assert r.state is RunState.SUCCESS, r.error
                res = await sch.get_node_results(dag_id)
                out.append({k: v.result_data for k, v in res.items()})
            return out
        finally:
            sch.close() if hasattr(sch, "close") else sch.engine.close()

    first, second = asyncio.run(go())
    assert first == second == {"a": 1, "b": 11}
    assert CALLS == ["a", "b"]                   # the second DAG: both memo hits
    assert store.threads == {"twingraph-user-store"}   # one loop, one thread


def test_a_python_pipeline_on_a_users_async_store_never_returns_corrupted_bytes():
    store = DictStorage()
    eng = Engine(results=store, metadata=MemoryMetadataStore(), flush_interval=0.01)

    @component
    def make(n):
        return list(range(n))

    @component(cache=False)
    def total(xs):
        return sum(xs)

    @pipeline(name="user_store_pipeline")
    def p():
        return total(xs=make(n=5)["outputs"]["result"])

    try:
        r = p.run(engine=eng)
        assert r.state is RunState.SUCCESS and r.value["outputs"]["result"] == 10
        [key] = [k for k in store.data if store.data[k].startswith(b'{"result":[0,')]
        store.data[key] = store.data[key].replace(b"4", b"9")     # same size, wrong bytes
        with pytest.raises(IntegrityError):
            eng.results.get(key)
        with pytest.raises(IntegrityError):
            list(eng.results.iter_chunks(key, 2))
        assert eng.results.content_hashes([key, "missing"]) == {key: store.meta[key].content_hash}
    finally:
        eng.close()
    assert not eng.results._thread.is_alive()    # closing the engine stops the adapter


def test_an_object_that_is_no_store_is_refused_naming_what_it_lacks():
    class Half:
        async def store_result(self, node_id, data, metadata):
            return True

    with pytest.raises(ConfigurationError, match="missing: retrieve_result"):
        Engine(results=Half(), metadata=MemoryMetadataStore())
