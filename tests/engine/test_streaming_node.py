"""The document's StreamingNodeExecutor / StreamingContext on the real result stores: output
written chunk by chunk, spilled to a temporary file past the threshold (bounded memory), stored
atomically (a failure stores nothing), readable by later nodes, streaming or not.

``monkeypatch`` only wraps the real ``StreamingContext.__init__`` / ``finalize`` to see each
context (whether it spilled, that it was closed); they still run. One small subclass of the
real SQLite store deletes a key right after its metadata is read, standing for another
process that deletes it in that window."""
import asyncio
import hashlib
import sqlite3
import threading
import time
import tracemalloc

import pytest

from twingraph.core.results import DataType
from twingraph.engine.dynamic import (DynamicScheduler, ExecutionConfig, NodeDefinition,
                                      NodeStatus)
from twingraph.engine.streaming_node import StreamingContext, StreamingNodeExecutor
from twingraph.errors import ValidationError
from twingraph.stores.metadata import MemoryMetadataStore
from twingraph.stores.results.filesystem import FilesystemStorage
from twingraph.stores.results.memory import MemoryStorage
from twingraph.stores.results.sqlite import SQLiteStorage

MiB = 1024 * 1024


@pytest.fixture(params=["sqlite", "filesystem", "memory"])
def storage(request, tmp_path):
    store = {"sqlite": lambda: SQLiteStorage(str(tmp_path / "r.db")),
             "filesystem": lambda: FilesystemStorage(tmp_path / "fs"),
             "memory": MemoryStorage}[request.param]()
    yield store
    store.close()


def _block(i: int, size: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (size // 32)


async def generate(ctx, params):
    for i in range(params["n"]):
        yield _block(i, params["size"])


async def upper(ctx, params):
    async for chunk in ctx.read_dependency_stream(params["source"], chunk_size=256 * 1024):
        yield chunk.upper()


def count_lines(deps, params):
    data = next(iter(deps.values()))
    return {"bytes": len(data), "type": type(data).__name__}


def _executor(storage, spool=MiB):
    ex = StreamingNodeExecutor(storage, spool_threshold=spool)
    ex.register_operation("gen", lambda deps, params: b"plain")
    ex.register_operation("gen_streaming", generate)
    ex.register_operation("upper", lambda deps, params: b"")
    ex.register_operation("upper_streaming", upper)
    ex.register_operation("count", count_lines)
    return ex


def test_streamed_output_is_stored_and_feeds_later_nodes(storage):
    ex = _executor(storage)

    async def go():
        r1 = await ex.execute_streaming_node(
            NodeDefinition("big", "gen", [], {"n": 40, "size": 64 * 1024}, {"owner": "t"}))
        r2 = await ex.execute_streaming_node(
            NodeDefinition("loud", "upper", ["big"], {"source": "big"}))
        r3 = await ex.execute_node(NodeDefinition("counted", "count", ["loud"], {}))
        return r1, r2, r3, await storage.get_metadata("big"), await storage.retrieve_result("loud")
    r1, r2, r3, meta, loud = asyncio.run(go())
    expected = b"".join(_block(i, 64 * 1024) for i in range(40))
    assert (r1.status, r2.status, r3.status) == (NodeStatus.COMPLETED,) * 3, (r1, r2, r3)
    assert meta.size == len(expected) and meta.data_type is DataType.BINARY
    assert meta.content_hash == hashlib.sha256(expected).hexdigest()
    assert meta.metadata == {"owner": "t", "encoding": "bytes"}
    assert bytes(loud) == expected.upper()
    assert r3.result_data == {"bytes": len(expected), "type": "bytes"}


def test_output_past_the_threshold_spills_and_memory_stays_bounded(storage, monkeypatch):
    size, n = 256 * 1024, 48                        # 12 MiB of output, 1 MiB spool
    seen = []
    real_finalize = StreamingContext.finalize

    async def finalize(self):
        seen.append(self.spilled)
        return await real_finalize(self)
    monkeypatch.setattr(StreamingContext, "finalize", finalize)
    ex = _executor(storage, spool=MiB)
    tracemalloc.start()
    try:
        r = asyncio.run(ex.execute_streaming_node(
            NodeDefinition("big", "gen", [], {"n": n, "size": size})))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status is NodeStatus.COMPLETED, r.error_message
    assert seen == [True]
    if not isinstance(storage, MemoryStorage):      # which holds every value in memory
        assert peak < 4 * MiB, peak                  # the output itself is 12 MiB
    h = hashlib.sha256()
    for i in range(n):
        h.update(_block(i, size))
    assert storage.head("big").content_hash == h.hexdigest()

    small = asyncio.run(_executor(storage, spool=64 * MiB).execute_streaming_node(
        NodeDefinition("small", "gen", [], {"n": 4, "size": size})))
    assert small.status is NodeStatus.COMPLETED and seen == [True, False]


CLOSED = []


async def half_then_fail(ctx, params):
    try:
        yield b"x" * 100_000
        raise RuntimeError("source went away")
    finally:
        CLOSED.append("half_then_fail")


async def not_bytes(ctx, params):
    try:
        yield b"y" * 100
        yield "text, not bytes"
        yield b"never asked for"
    finally:
        CLOSED.append("not_bytes")


async def returns_bytes(ctx, params):
    return b"an async def returning, not yielding"


def sync_chunks(ctx, params):
    for i in range(3):
        yield bytes([65 + i]) * 10


@pytest.mark.parametrize("op, message", [
    (half_then_fail, "RuntimeError: source went away"),
    (not_bytes, "must yield bytes, got str"),
    (lambda ctx, params: 42, "must be an async generator or a generator of bytes"),
    (returns_bytes, "must be an async generator or a generator of bytes chunks, got coroutine"),
])
def test_a_failing_stream_stores_nothing(storage, monkeypatch, op, message):
    contexts = []
    real_init = StreamingContext.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        contexts.append(self)
    monkeypatch.setattr(StreamingContext, "__init__", init)
    CLOSED.clear()
    ex = StreamingNodeExecutor(storage, spool_threshold=10)     # spilled: a temp file to drop
    ex.register_operation("bad_streaming", op)
    r = asyncio.run(ex.execute_streaming_node(NodeDefinition("out", "bad", [], {})))
    assert r.status is NodeStatus.FAILED and message in r.error_message, r.error_message
    assert storage.head("out") is None
    assert contexts[0]._file is None and contexts[0].chunks == []   # temp file closed
    if op in (half_then_fail, not_bytes):
        assert CLOSED == [op.__name__]                  # the generator was closed, not left


def test_empty_output_and_a_zero_threshold(storage):
    async def nothing(ctx, params):
        for _ in ():
            yield b""

    async def some(ctx, params):
        yield b""
        yield b"abc"
    ex = StreamingNodeExecutor(storage, spool_threshold=0)
    ex.register_operation("nothing_streaming", nothing)
    ex.register_operation("some_streaming", some)

    async def go():
        return (await ex.execute_streaming_node(NodeDefinition("empty", "nothing", [], {})),
                await ex.execute_streaming_node(NodeDefinition("some", "some", [], {})))
    empty, some_r = asyncio.run(go())
    assert empty.status is some_r.status is NodeStatus.COMPLETED
    assert bytes(storage.get("empty")) == b"" and bytes(storage.get("some")) == b"abc"


def test_a_store_failure_after_spilling_reports_the_store_error(storage):
    ex = _executor(storage, spool=1024)
    r = asyncio.run(ex.execute_streaming_node(
        NodeDefinition("big", "gen", [], {"n": 8, "size": 64 * 1024}, {"bad": object()})))
    assert r.status is NodeStatus.FAILED
    assert r.error_message.startswith("StorageError: output of streaming node 'big' not stored")
    assert storage.head("big") is None


def test_a_corrupted_dependency_fails_the_node(tmp_path):
    store = SQLiteStorage(str(tmp_path / "r.db"))
    try:
        ex = _executor(store)
        asyncio.run(ex.execute_streaming_node(
            NodeDefinition("src", "gen", [], {"n": 2, "size": 1024})))
        with sqlite3.connect(tmp_path / "r.db") as db:     # flip the stored bytes on disk
            db.execute("UPDATE node_results SET data = ? WHERE node_id = 'src'", (b"Z" * 2048,))
        r = asyncio.run(ex.execute_streaming_node(
            NodeDefinition("loud", "upper", ["src"], {"source": "src"})))
        assert r.status is NodeStatus.FAILED and "IntegrityError" in r.error_message
        assert store.head("loud") is None
    finally:
        store.close()



def test_plain_generators_missing_dependencies_and_fallback(storage):
    ex = _executor(storage)
    ex.register_operation("abc_streaming", sync_chunks)

    async def go():
        return (await ex.execute_streaming_node(NodeDefinition("abc", "abc", [], {})),
                await ex.execute_streaming_node(NodeDefinition("u", "upper", [], {"source": "nope"})),
                await ex.execute_streaming_node(NodeDefinition("c", "count", ["abc"], {})))
    abc, missing, fallback = asyncio.run(go())
    assert abc.status is NodeStatus.COMPLETED
    assert bytes(storage.get("abc")) == b"A" * 10 + b"B" * 10 + b"C" * 10
    assert missing.status is NodeStatus.FAILED
    assert "Dependency nope not found" in missing.error_message
    # no 'count_streaming': the node runs as execute_node would, with its value
    assert fallback.status is NodeStatus.COMPLETED
    assert fallback.result_data == {"bytes": 30, "type": "bytes"}


def test_a_plain_generator_keeps_one_thread_and_reads_dependencies(storage):
    def rows(ctx, params):
        db = sqlite3.connect(":memory:")        # bound to the thread that opened it
        db.execute("CREATE TABLE t (v BLOB)")
        db.executemany("INSERT INTO t VALUES (?)", [(b"%d," % i,) for i in range(20)])
        for (v,) in db.execute("SELECT v FROM t ORDER BY rowid"):
            yield v
        yield b"|" + b"".join(ctx.iter_dependency(params["dep"], chunk_size=7))
        db.close()
    ex = _executor(storage)
    ex.register_operation("rows_streaming", rows)
    storage.put("dep", b"dependency bytes", _bytes_meta("dep", b"dependency bytes"))

    async def go():
        return await asyncio.gather(*[ex.execute_streaming_node(
            NodeDefinition(f"rows{i}", "rows", [], {"dep": "dep"})) for i in range(3)])
    results = asyncio.run(go())
    assert all(r.status is NodeStatus.COMPLETED for r in results), results
    want = b"".join(b"%d," % i for i in range(20)) + b"|dependency bytes"
    assert all(bytes(storage.get(f"rows{i}")) == want for i in range(3))


def _bytes_meta(key, data):
    from twingraph.core.results import StorageMetadata
    return StorageMetadata(key, DataType.BINARY, hashlib.sha256(data).hexdigest(), len(data),
                           metadata={"encoding": "bytes"})


def test_cancelling_a_node_stops_its_plain_generator(storage):
    closed = threading.Event()

    def slow(ctx, params):
        try:
            while True:
                time.sleep(0.05)
                yield b"tick"
        finally:
            closed.set()
    ex = StreamingNodeExecutor(storage)
    ex.register_operation("slow_streaming", slow)

    async def go():
        await asyncio.wait_for(ex.execute_streaming_node(NodeDefinition("s", "slow", [], {})), 0.3)
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(go())
    assert closed.wait(2), "the generator was not closed"
    assert storage.head("s") is None


def test_context_rules(storage):
    ctx = StreamingContext("n", storage, spool_threshold=4)

    async def go():
        await ctx.write_chunk(bytearray(b"abc"))
        await ctx.write_chunk(memoryview(b"defg"))
        meta = await ctx.finalize()
        with pytest.raises(ValidationError):
            await ctx.write_chunk(b"late")
        with pytest.raises(ValidationError):
            await ctx.finalize()
        return meta
    meta = asyncio.run(go())
    assert bytes(storage.get("n")) == b"abcdefg" and meta.size == 7
    with pytest.raises(ValidationError):
        StreamingContext("n", storage, spool_threshold=-1)


def test_the_scheduler_streams_with_its_configured_threshold(storage, monkeypatch):
    spilled = []
    real_finalize = StreamingContext.finalize

    async def finalize(self):
        spilled.append(self.spilled)
        return await real_finalize(self)
    monkeypatch.setattr(StreamingContext, "finalize", finalize)
    sched = DynamicScheduler(storage, ExecutionConfig(streaming_threshold=1234),
                             metadata=MemoryMetadataStore())
    try:
        sched.executor.register_operation("gen_streaming", generate)
        r = asyncio.run(sched.executor.execute_streaming_node(
            NodeDefinition("big", "gen", [], {"n": 2, "size": 1024})))
        assert r.status is NodeStatus.COMPLETED and spilled == [True]   # 2 KiB > 1234 bytes
    finally:
        sched.engine.close()


class _DeletedAfterHead(SQLiteStorage):
    """A real SQLite store where another process deletes ``gone`` just after its metadata is
    read: the window between a streaming node's look at a dependency and its read of it."""

    def head(self, key):
        meta = super().head(key)
        if key == "gone" and meta is not None:
            self.delete(key)
        return meta


def sync_reader(ctx, params):
    for chunk in ctx.iter_dependency(params["source"]):
        yield chunk


@pytest.mark.parametrize("op", ["upper", "plain_reader"])
def test_a_dependency_deleted_while_it_is_read_fails_the_node(tmp_path, op):
    """The stream of a value deleted in between yields nothing (a miss): the node finished
    COMPLETED and stored what it computed from zero bytes."""
    store = _DeletedAfterHead(str(tmp_path / "r.db"))
    try:
        ex = _executor(store)
        ex.register_operation("plain_reader", lambda deps, params: b"")
        ex.register_operation("plain_reader_streaming", sync_reader)
        asyncio.run(ex.execute_streaming_node(
            NodeDefinition("gone", "gen", [], {"n": 2, "size": 1024})))
        r = asyncio.run(ex.execute_streaming_node(
            NodeDefinition("reader", op, ["gone"], {"source": "gone"})))
        assert r.status is NodeStatus.FAILED, r
        assert "removed or replaced while it was read (0 of" in r.error_message
        assert store.head("reader") is None                      # nothing stored
    finally:
        store.close()
