"""A result store written from the dynamic-scheduler document (its eight async methods only,
no synchronous face) works as an engine's store: the engine adapts it
(``engine/async_store.py``). It used to be accepted and then fail every node with
``AttributeError: ... no attribute 'content_hashes'``. The store here is a real one, a dict
behind the document's interface, written as a user would."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from twingraph import component, pipeline
from twingraph.core.results import DataType, StorageMetadata
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
    assert not any(t.name == "twingraph-user-store" and t.is_alive()
               for t in threading.enumerate())     # closing the engine stops the adapter


def test_an_object_that_is_no_store_is_refused_naming_what_it_lacks():
    class Half:
        async def store_result(self, node_id, data, metadata):
            return True

    with pytest.raises(ConfigurationError, match="missing: retrieve_result"):
        Engine(results=Half(), metadata=MemoryMetadataStore())


class SlowReads(DictStorage):
    def __init__(self) -> None:
        super().__init__()
        self.reading = threading.Event()

    async def retrieve_result(self, node_id):
        self.reading.set()
        await asyncio.sleep(30)
        return self.data.get(node_id)


def test_a_read_under_way_when_the_engine_closes_ends_with_an_error():
    """It was left waiting for ever on the stopped loop."""
    store = SlowReads()
    eng = Engine(results=store, metadata=MemoryMetadataStore(), flush_interval=0.01)
    data = b"x" * 10
    import hashlib
    store.meta["k"] = StorageMetadata("k", DataType.BINARY,
                                      hashlib.sha256(data).hexdigest(), 10, metadata={"encoding": "bytes"})
    store.data["k"] = data
    out = []
    reader = threading.Thread(target=lambda: out.append(_outcome(lambda: eng.results.get("k"))))
    reader.start()
    assert store.reading.wait(5)
    eng.close()
    reader.join(5)
    assert not reader.is_alive() and out == ["ConfigurationError"]


def _outcome(read):
    try:
        read()
        return "value"
    except Exception as exc:  # noqa: BLE001 - what the test looks at
        return type(exc).__name__


class CallsBack(DictStorage):
    engine = None

    async def store_result(self, node_id, data, metadata):
        self.engine.results.head(node_id)          # into the engine's store, from inside it
        return await super().store_result(node_id, data, metadata)


def test_a_store_that_calls_back_into_the_engines_store_fails_the_run_not_hangs():
    store = CallsBack()
    eng = Engine(results=store, metadata=MemoryMetadataStore(), flush_interval=0.01)
    store.engine = eng

    @component(cache=False)
    def one():
        return 1

    @pipeline(name="calls_back")
    def p():
        return one()

    done = []
    t = threading.Thread(target=lambda: done.append(p.run(engine=eng)), daemon=True)
    t.start()
    t.join(20)
    try:
        assert done, "the run hung"
        assert done[0].state is RunState.FAILED
        assert "called back into the engine's result store" in str(done[0].error)
    finally:
        eng.close()


class DropsMetadata(DictStorage):
    async def store_result(self, node_id, data, metadata):
        import dataclasses
        return await super().store_result(node_id, data,
                                          dataclasses.replace(metadata, metadata=None))


def test_a_store_that_drops_the_engines_metadata_misses_instead_of_failing_later_runs():
    """Its entries have no encoding: the second run failed decoding them (as pickle), and
    so did every run after."""
    eng = Engine(results=DropsMetadata(), metadata=MemoryMetadataStore(), flush_interval=0.01)

    @component
    def double(x):
        return {"x": 2 * x}

    @pipeline(name="drops_metadata")
    def p():
        return double(x=1)

    try:
        for _ in range(2):
            r = p.run(engine=eng)
            assert r.state is RunState.SUCCESS, r.error
            assert r.value["outputs"] == {"x": 2}
    finally:
        eng.close()


def test_a_closed_schedulers_finished_results_stay_readable_through_a_users_store():
    store = DictStorage()

    async def go():
        sch = DynamicScheduler(store, ExecutionConfig())
        sch.executor.register_operation("five", lambda d, p: 5)
        await sch.submit_dag(DAGDefinition("closed", [NodeDefinition("a", "five", [], {})]))
        await sch.wait_for_completion("closed")
        sch.close()
        return sch.node_results("closed")

    res = asyncio.run(go())
    assert (res["a"].status.value, res["a"].result_data) == ("completed", 5)


def test_store_methods_that_are_not_async_are_refused():
    class Plain(DictStorage):
        def get_metadata(self, node_id):          # not async
            return self.meta.get(node_id)

    with pytest.raises(ConfigurationError, match="must be async def: get_metadata"):
        Engine(results=Plain(), metadata=MemoryMetadataStore())


def test_reads_after_a_schedulers_close_leave_no_thread_behind():
    """A read after ``close`` restarted the adapter's loop, and nothing closed it again: one
    thread and three descriptors per closed scheduler read afterwards."""
    before = {t for t in threading.enumerate() if t.name.startswith("twingraph-user-store")}

    async def one():            # with task records: node_results reads the store
        sch = DynamicScheduler(DictStorage(), ExecutionConfig(), metadata=MemoryMetadataStore())
        sch.executor.register_operation("five", lambda d, p: 5)
        await sch.submit_dag(DAGDefinition("after_close", [NodeDefinition("a", "five", [], {})]))
        await sch.wait_for_completion("after_close")
        sch.close()
        return sch.node_results("after_close")["a"].result_data

    assert [asyncio.run(one()) for _ in range(5)] == [5] * 5
    time.sleep(0.1)
    now = {t for t in threading.enumerate() if t.name.startswith("twingraph-user-store")
           and t.is_alive()}
    assert now <= before


def test_async_methods_behind_a_plain_decorator_are_accepted():
    """``functools.wraps`` around an ``async def`` is a plain function that returns a
    coroutine: refused as "not async def" by the first check."""
    import functools

    def logged(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            return method(*args, **kwargs)
        return wrapper

    class Logged(DictStorage):
        store_result = logged(DictStorage.store_result)
        get_metadata = logged(DictStorage.get_metadata)

    eng = Engine(results=Logged(), metadata=MemoryMetadataStore(), flush_interval=0.01)

    @component
    def answer():
        return 42

    @pipeline(name="decorated_store")
    def p():
        return answer()

    try:
        assert p.run(engine=eng).value["outputs"]["result"] == 42
        assert p.run(engine=eng).value["outputs"]["result"] == 42     # read back: a hit
    finally:
        eng.close()
