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
import inspect
import mmap
import tempfile
import threading
import time
import traceback
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

from twingraph.core.results import DataType, StorageMetadata
from twingraph.engine.async_store import has_sync_port
from twingraph.engine.dynamic import (ExecutionConfig, ExecutionResult, NodeDefinition,
                                      NodeExecutor, NodeStatus, _operations)
from twingraph.errors import IntegrityError, NodeExecutionError, StorageError, ValidationError

STREAMING_SUFFIX = "_streaming"
AHEAD = 2          # chunks a plain generator may run ahead of the store


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
        """The stored bytes of ``dep_node_id`` in chunks. A value stored by a streaming node
        streams as the raw bytes it wrote; other values as their encoding
        (``metadata['encoding']`` of ``get_metadata``). The content hash is checked as the
        chunks go by: a corrupted value raises ``IntegrityError`` instead of its last chunk, so
        the node fails and stores nothing (earlier chunks were already handed over)."""
        meta = await self.storage.get_metadata(dep_node_id)
        if meta is None:
            raise NodeExecutionError(f"Dependency {dep_node_id} not found", node_id=self.node_id)
        got = 0
        if has_sync_port(self.storage):        # TwinGraph's stores check what they stream
            async for chunk in self.storage.stream_result(dep_node_id, chunk_size):
                got += len(chunk)
                yield chunk
            self._check_whole(dep_node_id, meta, got)
            return
        # A user's store need not: hashed here, its last chunk held back until all of it
        # matched (a flipped byte went on into the node's output, stored as COMPLETED).
        h, held = hashlib.sha256(), None
        async for chunk in self.storage.stream_result(dep_node_id, chunk_size):
            got += len(chunk)
            h.update(chunk)
            if held is not None:
                yield held
            held = bytes(chunk)
        self._check_whole(dep_node_id, meta, got)
        if h.hexdigest() != meta.content_hash:
            raise IntegrityError(dep_node_id, meta.content_hash, h.hexdigest())
        if held is not None:
            yield held

    def _check_whole(self, dep_node_id: str, meta: Any, got: int) -> None:
        """The stream of ``dep_node_id`` ended after ``got`` bytes: all of the value its
        metadata described, or it was deleted or replaced between the two reads (another
        process; a miss streams nothing) and the node would have computed from a part of
        it, or from nothing, and stored that as its result."""
        if got != meta.size:
            raise NodeExecutionError(
                f"Dependency {dep_node_id} was removed or replaced while it was read "
                f"({got} of {meta.size} bytes)", node_id=self.node_id)

    def iter_dependency(self, dep_node_id: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """``read_dependency_stream`` for a plain generator (which runs in a thread of its own
        and cannot iterate an async stream): the store's synchronous reader, same checks."""
        head = getattr(self.storage, "head", None)
        chunks = getattr(self.storage, "iter_chunks", None)
        if head is None or chunks is None:
            raise NodeExecutionError(f"{type(self.storage).__name__} has no synchronous reader: "
                                     "use read_dependency_stream from an async generator",
                                     node_id=self.node_id)
        meta = head(dep_node_id)
        if meta is None:
            raise NodeExecutionError(f"Dependency {dep_node_id} not found", node_id=self.node_id)
        got = 0
        for chunk in chunks(dep_node_id, chunk_size):
            got += len(chunk)
            yield chunk
        self._check_whole(dep_node_id, meta, got)

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
                # a user's store (the document's interface) takes one bytes value
                data = self.chunks if has_sync_port(self.storage) else b"".join(self.chunks)
                ok = await self.storage.store_result(self.node_id, data, meta)
            else:
                ok = await self._store_spilled(meta)
        except StorageError as exc:
            raise StorageError(f"output of streaming node {self.node_id!r} not stored: "
                               f"{exc}") from exc
        finally:
            self._release()
        if ok is False:
            raise StorageError(f"output of streaming node {self.node_id!r} not stored: "
                               "the storage refused it")
        return meta

    async def _store_spilled(self, meta: StorageMetadata) -> Any:
        """Store the temporary file through a memory map (the store reads pages, not a copy)."""
        self._file.flush()
        mapped = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mapped)
        try:
            if not has_sync_port(self.storage):     # the document's interface: bytes
                return await self.storage.store_result(self.node_id, bytes(view), meta)
            return await self.storage.store_result(self.node_id, view, meta)
        except BaseException as exc:
            # The failed store's frames may still hold slices of the map: let them go, or the
            # map cannot be closed (BufferError) and would replace the real error.
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            view.release()
            try:
                mapped.close()
            except BufferError:    # a slice still referenced: unmapped when it is collected
                pass

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
    generator (or other iterable) on a thread of its own, so its work does not block the
    event loop and whatever it holds that is bound to a thread (a database connection) stays
    on one thread."""
    if hasattr(out, "__aiter__"):
        try:
            async for chunk in out:
                yield chunk
        finally:
            aclose = getattr(out, "aclose", None)
            if aclose is not None:
                await aclose()
        return
    if inspect.iscoroutine(out):
        out.close()
    if isinstance(out, (bytes, bytearray, memoryview, str)) or not hasattr(out, "__iter__"):
        raise ValidationError(f"node {node_id}: a streaming operation must be an async "
                              f"generator or a generator of bytes chunks, got "
                              f"{type(out).__name__}")
    pump = _Pump(iter(out), node_id)
    try:
        while True:
            kind, value = await pump.get()
            if kind == "chunk":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        pump.stop()


class _Pump:
    """Runs a plain generator on one thread, at most ``AHEAD`` chunks ahead of the consumer,
    handing chunks to the event loop. ``stop`` ends it early: the generator is closed on its
    own thread once its current step returns (a running generator cannot be closed)."""

    def __init__(self, it: Iterator[Any], node_id: str) -> None:
        self._it = it
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._room = threading.Semaphore(AHEAD)
        self._stopped = threading.Event()
        threading.Thread(target=self._run, name=f"twingraph-stream-{node_id}",
                         daemon=True).start()

    async def get(self) -> tuple[str, Any]:
        item = await self._queue.get()
        self._room.release()
        return item

    def stop(self) -> None:
        self._stopped.set()
        self._room.release()           # a producer waiting for room sees the stop

    def _run(self) -> None:
        try:
            for chunk in self._it:
                if not self._send("chunk", chunk):
                    return
            self._send("end", None)
        except BaseException as exc:  # noqa: BLE001 - the operation's failure is the node's
            self._send("error", exc)
        finally:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()

    def _send(self, kind: str, value: Any) -> bool:
        while not self._room.acquire(timeout=0.5):
            if self._stopped.is_set():
                return False
        if self._stopped.is_set():
            return False
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
        except RuntimeError:           # the event loop is gone: nobody is listening
            return False
        return True
