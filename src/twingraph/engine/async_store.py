"""A user's ``StorageInterface`` (the dynamic-scheduler document's eight async methods) as the
engine's synchronous ``ResultStore`` port.

The engine reads and writes results from its own threads (the run loop, the recorder), through
the port's synchronous methods, which TwinGraph's stores have besides their async face. A store
a user writes from the document has only the async methods: ``AsyncStoreAdapter`` runs them on
an event loop of its own, on one thread, so the user's store sees one call at a time, from one
loop, as an asyncio object expects. What the port promises and such a store may not keep is
kept here: bytes are checked against their recorded content hash on every read
(``IntegrityError``, never wrong bytes), and a chunked read holds back its last chunk until the
whole value has matched. ``put_many`` stores item by item (the user's store has no
transaction): a crash between two items leaves the earlier ones stored, which the engine treats
as a later run would any result it finds (a memo hit) and the rest as not stored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import inspect
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from twingraph.core.results import StorageMetadata, stored_value_id
from twingraph.errors import ConfigurationError, IntegrityError

Buffer = bytes | bytearray | memoryview
log = logging.getLogger("twingraph.engine")

#: The document's StorageInterface: what a store must have to be adapted.
ASYNC_METHODS = ("store_result", "retrieve_result", "stream_result", "exists", "delete_result",
                 "list_results", "get_metadata", "update_metadata")
#: The engine's synchronous port (ports.ResultStore): a store with these is used as it is.
SYNC_METHODS = ("put", "put_many", "get", "head", "content_hashes", "iter_chunks", "delete")


def has_sync_port(store: Any) -> bool:
    """Whether ``store`` is one of TwinGraph's stores (it has the engine's synchronous port):
    its ``store_result`` also takes a sequence of buffers, written without joining them. A
    user's store written from the document takes ``data: bytes``."""
    return all(callable(getattr(store, m, None)) for m in SYNC_METHODS)


def as_result_store(store: Any) -> Any:
    """``store`` itself if it has the engine's synchronous port, an ``AsyncStoreAdapter`` over
    it if it has the document's async methods only; ``ConfigurationError`` otherwise, naming
    what it lacks."""
    if has_sync_port(store):
        return store
    missing = [m for m in ASYNC_METHODS if not callable(getattr(store, m, None))]
    if missing:
        raise ConfigurationError(
            f"{type(store).__name__} is not a result store: a StorageInterface needs "
            f"{', '.join(ASYNC_METHODS)} (missing: {', '.join(missing)})")
    plain = [m for m in ASYNC_METHODS if m != "stream_result"
             and not inspect.iscoroutinefunction(inspect.unwrap(getattr(store, m)))]
    if plain:
        raise ConfigurationError(
            f"{type(store).__name__}'s StorageInterface methods must be async def: "
            f"{', '.join(plain)} are not")
    return AsyncStoreAdapter(store)


class AsyncStoreAdapter:
    """The synchronous port over an async ``StorageInterface`` (module docstring)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._warned = False
        self._closed = False

    def _running_loop(self) -> asyncio.AbstractEventLoop | None:
        """The adapter's loop, started on first use; None once closed."""
        with self._lock:
            if self._closed:
                return None
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                                name="twingraph-user-store")
                self._thread.start()
            return self._loop

    def _call(self, coro: Any) -> Any:
        if threading.current_thread() is self._thread:
            coro.close()
            # The store's own method called the engine's store (a read inside store_result):
            # waiting for the one loop it runs on would wait for ever.
            raise ConfigurationError(f"{type(self.store).__name__} called back into the "
                                     "engine's result store from one of its own methods")
        if not inspect.isawaitable(coro):
            raise ConfigurationError(f"{type(self.store).__name__}'s StorageInterface method "
                                     f"returned {type(coro).__name__}, not an awaitable")
        loop = self._running_loop()
        if loop is None:
            # Closed: a read afterwards (a closed scheduler's finished results) runs on a loop
            # of its own, on a thread of its own that ends with it; nothing is left running.
            out: list[Any] = []

            def once() -> None:
                try:
                    out.append((True, asyncio.run(_awaited(coro))))
                except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread
                    out.append((False, exc))
            t = threading.Thread(target=once, name="twingraph-user-store-once", daemon=True)
            t.start()
            t.join()
            ok, value = out[0]
            if not ok:
                raise value
            return value
        future = asyncio.run_coroutine_threadsafe(_awaited(coro), loop)
        while True:
            try:
                return future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if future.done():        # the store's own TimeoutError (the same class)
                    return future.result()
                if self._loop is not loop:         # closed while it waited: cancelled there
                    raise ConfigurationError("the result store was closed during the call") \
                        from None

    # ---- writes ----
    def put(self, key: str, data: Buffer | Sequence[Buffer], meta: StorageMetadata) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            data = b"".join(data)          # the document's store takes one bytes value
        self._call(self.store.store_result(key, bytes(data), meta))

    def put_many(self, items: Sequence[tuple[str, Buffer | Sequence[Buffer], StorageMetadata]]
                 ) -> None:
        for key, data, meta in items:
            self.put(key, data, meta)

    def delete(self, key: str) -> bool:
        return bool(self._call(self.store.delete_result(key)))

    # ---- reads ----
    def head(self, key: str) -> StorageMetadata | None:
        return self._usable(self._call(self.store.get_metadata(key)))

    def read(self, key: str) -> tuple[StorageMetadata, Buffer] | None:
        async def both() -> tuple[Any, Any]:
            return (await self.store.get_metadata(key), await self.store.retrieve_result(key))
        meta, data = self._call(both())
        meta = self._usable(meta)
        if meta is None or data is None:
            return None
        check_content(key, meta.content_hash, data)
        return meta, data

    def get(self, key: str) -> Buffer | None:
        found = self.read(key)
        return None if found is None else found[1]

    def content_hashes(self, keys: Sequence[str]) -> dict[str, str]:
        async def all_of() -> dict[str, str]:
            out = {}
            for k in keys:
                meta = self._usable(await self.store.get_metadata(k))
                if meta is not None and meta.content_hash:
                    out[k] = stored_value_id(meta)
            return out
        return self._call(all_of())

    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        meta = self.head(key)
        if meta is None:
            return
        stream = self.store.stream_result(key, chunk_size)
        if asyncio.iscoroutine(stream):       # ``async def`` returning an async iterator
            stream = self._call(stream)
        it = stream.__aiter__()
        h, held = hashlib.sha256(), None

        async def step() -> Any:
            try:
                return await it.__anext__()
            except StopAsyncIteration:
                return None
        while True:
            chunk = self._call(step())
            if chunk is None:
                break
            h.update(chunk)
            if held is not None:
                yield held
            held = bytes(chunk)
        if h.hexdigest() != meta.content_hash:
            raise IntegrityError(key, meta.content_hash, h.hexdigest())
        if held is not None:
            yield held

    def _usable(self, meta: Any) -> StorageMetadata | None:
        """``meta`` if the engine can decode the value it describes: the store kept the
        ``metadata`` dict the engine gave it (its ``encoding``). A store that drops it cannot
        serve the engine's results: each is a miss (computed again), said once."""
        if not isinstance(meta, StorageMetadata):
            return None
        if isinstance(meta.metadata, dict) and isinstance(meta.metadata.get("encoding"), str):
            return meta
        if not self._warned:
            self._warned = True
            log.warning("%s returned metadata without the 'encoding' the engine stored with "
                        "it (StorageMetadata.metadata): its results cannot be decoded and are "
                        "computed again", type(self.store).__name__)
        return None

    def list_keys(self, dag_id: str | None = None) -> list[str]:
        return list(self._call(self.store.list_results(dag_id)))

    def close(self) -> None:
        """Stop the adapter's loop, cancelling what runs on it (the user's store is the
        user's to close). A later call runs on a loop of its own, one call at a time."""
        with self._lock:
            self._closed = True
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return

        def stop() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.call_soon(loop.stop)      # after the cancelled tasks' next step
        loop.call_soon_threadsafe(stop)
        thread.join(5)
        if not thread.is_alive():
            loop.close()


async def _awaited(aw: Any) -> Any:
    """``await aw``: an awaitable that is not a coroutine (a decorated method's) too."""
    return await aw


def check_content(key: str, expected: str, data: Buffer) -> None:
    """``IntegrityError`` unless ``data`` has the recorded content hash ``expected``."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise IntegrityError(key, expected, actual)


__all__ = ["as_result_store", "AsyncStoreAdapter", "check_content"]
