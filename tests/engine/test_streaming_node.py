"""The document's StreamingNodeExecutor / StreamingContext on the real result stores: output
written chunk by chunk, spilled to a temporary file past the threshold (bounded memory), stored
atomically (a failure stores nothing), readable by later nodes, streaming or not."""
import asyncio
import hashlib
import os
import tracemalloc

import pytest

from twingraph.core.results import DataType
from twingraph.engine.dynamic import (DynamicScheduler, ExecutionConfig, NodeDefinition,
                                      NodeStatus)
from twingraph.engine.streaming_node import StreamingContext, StreamingNodeExecutor
from twingraph.errors import ValidationError
from twingraph.stores.metadata import MemoryMetadataStore
from twingraph.stores.results.filesystem import FilesystemStorage
from twingraph.stores.results.sqlite import SQLiteStorage

MiB = 1024 * 1024


@pytest.fixture(params=["sqlite", "filesystem"])
def storage(request, tmp_path):
    store = (SQLiteStorage(str(tmp_path / "r.db")) if request.param == "sqlite"
             else FilesystemStorage(tmp_path / "fs"))
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
    assert peak < 4 * MiB, peak                      # the output itself is 12 MiB
    h = hashlib.sha256()
    for i in range(n):
        h.update(_block(i, size))
    assert storage.head("big").content_hash == h.hexdigest()

    small = asyncio.run(_executor(storage, spool=64 * MiB).execute_streaming_node(
        NodeDefinition("small", "gen", [], {"n": 4, "size": size})))
    assert small.status is NodeStatus.COMPLETED and seen == [True, False]


async def half_then_fail(ctx, params):
    yield b"x" * 100_000
    raise RuntimeError("source went away")


async def not_bytes(ctx, params):
    yield "text, not bytes"


def sync_chunks(ctx, params):
    for i in range(3):
        yield bytes([65 + i]) * 10


@pytest.mark.parametrize("op, message", [
    (half_then_fail, "RuntimeError: source went away"),
    (not_bytes, "must yield bytes, got str"),
    (lambda ctx, params: 42, "must be an async generator or a generator of bytes"),
])
def test_a_failing_stream_stores_nothing(storage, op, message):
    ex = StreamingNodeExecutor(storage, spool_threshold=10)     # spilled: a temp file to drop
    ex.register_operation("bad_streaming", op)
    asyncio.run(ex.execute_streaming_node(NodeDefinition("warm", "bad", [], {})))
    before = len(os.listdir("/proc/self/fd"))
    r = asyncio.run(ex.execute_streaming_node(NodeDefinition("out", "bad", [], {})))
    assert r.status is NodeStatus.FAILED and message in r.error_message, r.error_message
    assert storage.head("out") is None
    assert len(os.listdir("/proc/self/fd")) == before          # the temporary file is closed


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


def test_the_scheduler_streams_with_its_configured_threshold(storage):
    sched = DynamicScheduler(storage, ExecutionConfig(streaming_threshold=1234),
                             metadata=MemoryMetadataStore())
    try:
        assert isinstance(sched.executor, StreamingNodeExecutor)
        assert sched.executor.spool_threshold == 1234
    finally:
        sched.engine.close()
