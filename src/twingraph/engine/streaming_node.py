"""The dynamic-scheduler document's streaming node execution: ``StreamingNodeExecutor`` and
``StreamingContext``.

A node whose operation ``op`` has a streaming variant registered as ``op_streaming`` runs as
``op_streaming(context, parameters)``: an async generator (or a plain generator) that reads its
dependencies chunk by chunk (``context.read_dependency_stream(node_id)``) and yields its output
in chunks. Without a variant, ``execute_streaming_node`` falls back to ``execute_node``.

Unlike the document's sketch, which keeps every chunk in a list and joins them, the output is
held in memory only up to ``spool_threshold`` bytes (``ExecutionConfig.streaming_threshold``);
beyond that it spills to a temporary file that the store then reads through a memory map, so a
node's output never has to fit in memory. Nothing is stored until the generator has finished:
the result is stored in one atomic write (a failure half-way stores nothing) under the node id,
as raw bytes (``DataType.BINARY``, encoding ``bytes``), so ``execute_node`` and further streaming
nodes can name it as a dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mmap
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from twingraph.core.results import DataType, StorageMetadata
from twingraph.engine.dynamic import (ExecutionConfig, ExecutionResult, NodeDefinition,
                                      NodeExecutor, NodeStatus, _operations)
from twingraph.errors import NodeExecutionError, StorageError, ValidationError

STREAMING_SUFFIX = "_streaming"
_END = object()


class StreamingContext:
    """What a streaming operation gets: its dependencies as streams, and a sink for its output.

    ``write_chunk`` hashes and counts every chunk; chunks stay in memory until their total
    passes ``spool_threshold``, then all of them go to an anonymous temporary file. ``finalize``
    stores the output atomically; ``discard`` drops it (both release the temporary file).
    """

    def __init__(self, node_id: str, storage: Any, *,
                 spool_threshold: int = ExecutionConfig.streaming_threshold,
                 metadata: dict[str, Any] | None = None) -> None:
        if spool_threshold < 0:
            raise ValidationError("spool_threshold must be >= 0")
        self.node_id = node_id
        self.storage = storage
        self.metadata = dict(metadata or {})
        self.spool_threshold = spool_threshold
        self.chunks: list[bytes] = []      # in memory while total_size <= spool_threshold
        self.total_size = 0
        self._hash = hashlib.sha256()
        self._file: Any = None             # the temporary file, once spilled
        self._done = False

    @property
    def spilled(self) -> bool:
        """Whether the output went to a temporary file (it grew past ``spool_threshold``)."""
        return self._file is not None

    async def read_dependency_stream(self, dep_node_id: str,
                                     chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        """The stored bytes of ``dep_node_id`` in chunks, verified against their content hash
        as they come (a corrupted value raises ``IntegrityError``, never yields wrong bytes).
        A value stored by a streaming node streams as the raw bytes it wrote; other values as
        their encoding (``metadata['encoding']`` of ``get_metadata``)."""
        if await self.storage.get_metadata(dep_node_id) is None:
            raise NodeExecutionError(f"Dependency {dep_node_id} not found", node_id=self.node_id)
        async for chunk in self.storage.stream_result(dep_node_id, chunk_size):
            yield chunk

    async def write_chunk(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append ``chunk`` to the node's output."""
        if self._done:
            raise ValidationError(f"node {self.node_id}: output already finalized or discarded")
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise ValidationError(f"node {self.node_id}: a streaming operation must yield bytes, "
                                  f"got {type(chunk).__name__}")
        data = bytes(chunk) if not isinstance(chunk, bytes) else chunk
        self._hash.update(data)
        self.total_size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self.chunks.append(data)
        if self.total_size > self.spool_threshold:
            self._file = tempfile.TemporaryFile(prefix="twingraph-stream-")
            for piece in self.chunks:
                self._file.write(piece)
            self.chunks = []

    async def finalize(self) -> StorageMetadata:
        """Store the output under the node id in one atomic write; returns its metadata."""
        if self._done:
            raise ValidationError(f"node {self.node_id}: output already finalized or discarded")
        self._done = True
        meta = StorageMetadata(node_id=self.node_id, data_type=DataType.BINARY,
                               content_hash=self._hash.hexdigest(), size=self.total_size,
                               metadata={**self.metadata, "encoding": "bytes"})
        try:
            if self._file is None:
                ok = await self.storage.store_result(self.node_id, self.chunks, meta)
            else:
                self._file.flush()
                with mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    view = memoryview(mapped)
                    try:
                        ok = await self.storage.store_result(self.node_id, view, meta)
                    finally:
                        view.release()
        except StorageError as exc:
            raise StorageError(f"output of streaming node {self.node_id!r} not stored: "
                               f"{exc}") from exc
        finally:
            self._release()
        if ok is False:
            raise StorageError(f"output of streaming node {self.node_id!r} not stored: "
                               "the storage refused it")
        return meta

    def discard(self) -> None:
        """Drop the output without storing it (a failed node); idempotent."""
        self._done = True
        self._release()

    def _release(self) -> None:
        self.chunks = []
        if self._file is not None:
            self._file.close()
            self._file = None


class StreamingNodeExecutor(NodeExecutor):
    """A ``NodeExecutor`` that also runs streaming variants of operations."""

    def __init__(self, storage: Any = None, *,
                 spool_threshold: int = ExecutionConfig.streaming_threshold) -> None:
        super().__init__(storage)
        if spool_threshold < 0:
            raise ValidationError("spool_threshold must be >= 0")
        self.spool_threshold = spool_threshold

    def streaming_operation(self, operation: str) -> Callable[..., Any] | None:
        """The streaming variant of ``operation`` (registered as ``<operation>_streaming`` here
        or process-wide), or None."""
        name = operation + STREAMING_SUFFIX
        return self.operation_registry.get(name) or _operations.get(name)

    async def execute_streaming_node(self, node_def: NodeDefinition) -> ExecutionResult:
        """Run ``node_def`` through its streaming variant and store the output under its node
        id; without a variant, ``execute_node``. Failures come back as a FAILED result with
        the reason, and nothing is stored."""
        fn = self.streaming_operation(node_def.operation)
        if fn is None:
            return await self.execute_node(node_def)
        start = time.perf_counter()
        ctx: StreamingContext | None = None
        try:
            if self.storage is None:
                raise NodeExecutionError("a streaming node needs a storage for its output",
                                         node_id=node_def.node_id)
            await self._check_key(node_def.node_id)
            md = {k: v for k, v in (node_def.metadata or {}).items() if k != "inputs"}
            ctx = StreamingContext(node_def.node_id, self.storage,
                                   spool_threshold=self.spool_threshold, metadata=md)
            out = fn(ctx, dict(node_def.parameters))
            async with contextlib.aclosing(_chunks(out, node_def.node_id)) as chunks:
                async for chunk in chunks:
                    await ctx.write_chunk(chunk)
            await ctx.finalize()
            return ExecutionResult(node_def.node_id, NodeStatus.COMPLETED,
                                   execution_time_ms=int((time.perf_counter() - start) * 1000))
        except Exception as exc:  # noqa: BLE001 - the document returns failures as data
            return ExecutionResult(node_def.node_id, NodeStatus.FAILED,
                                   error_message=f"{type(exc).__name__}: {exc}",
                                   execution_time_ms=int((time.perf_counter() - start) * 1000))
        finally:
            if ctx is not None:
                ctx.discard()


async def _chunks(out: Any, node_id: str) -> AsyncGenerator[Any, None]:
    """The chunks of a streaming operation's result: an async generator as it is; a plain
    generator or iterable stepped in a worker thread (its work must not block the event
    loop)."""
    if hasattr(out, "__aiter__"):
        try:
            async for chunk in out:
                yield chunk
        finally:
            aclose = getattr(out, "aclose", None)
            if aclose is not None:
                await aclose()
        return
    if isinstance(out, (bytes, bytearray, memoryview, str)) or not hasattr(out, "__iter__"):
        raise ValidationError(f"node {node_id}: a streaming operation must be an async "
                              f"generator or a generator of bytes chunks, got "
                              f"{type(out).__name__}")
    it = iter(out)
    try:
        while (chunk := await asyncio.to_thread(next, it, _END)) is not _END:
            yield chunk
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
