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
import hashlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from twingraph.core.results import StorageMetadata
from twingraph.errors import ConfigurationError, IntegrityError

Buffer = bytes | bytearray | memoryview

#: The document's StorageInterface: what a store must have to be adapted.
ASYNC_METHODS = ("store_result", "retrieve_result", "stream_result", "exists", "delete_result",
                 "list_results", "get_metadata", "update_metadata")
#: The engine's synchronous port (ports.ResultStore): a store with these is used as it is.
SYNC_METHODS = ("put", "put_many", "get", "head", "content_hashes", "iter_chunks", "delete")


def as_result_store(store: Any) -> Any:
    """``store`` itself if it has the engine's synchronous port, an ``AsyncStoreAdapter`` over
    it if it has the document's async methods only; ``ConfigurationError`` otherwise, naming
    what it lacks."""
    if all(callable(getattr(store, m, None)) for m in SYNC_METHODS):
        return store
    missing = [m for m in ASYNC_METHODS if not callable(getattr(store, m, None))]
    if missing:
        raise ConfigurationError(
            f"{type(store).__name__} is not a result store: a StorageInterface needs "
            f"{', '.join(ASYNC_METHODS)} (missing: {', '.join(missing)})")
    return AsyncStoreAdapter(store)


class AsyncStoreAdapter:
    """The synchronous port over an async ``StorageInterface`` (module docstring)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="twingraph-user-store")
        self._thread.start()

    def _call(self, coro: Any) -> Any:
        if not self._thread.is_alive():
            coro.close()
            raise ConfigurationError("the engine using this result store was closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

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
        meta = self._call(self.store.get_metadata(key))
        return meta if isinstance(meta, StorageMetadata) else None

    def read(self, key: str) -> tuple[StorageMetadata, Buffer] | None:
        async def both() -> tuple[Any, Any]:
            return (await self.store.get_metadata(key), await self.store.retrieve_result(key))
        meta, data = self._call(both())
        if not isinstance(meta, StorageMetadata) or data is None:
            return None
        _check(key, meta.content_hash, data)
        return meta, data

    def get(self, key: str) -> Buffer | None:
        found = self.read(key)
        return None if found is None else found[1]

    def content_hashes(self, keys: Sequence[str]) -> dict[str, str]:
        async def all_of() -> dict[str, str]:
            out = {}
            for k in keys:
                meta = await self.store.get_metadata(k)
                if isinstance(meta, StorageMetadata) and meta.content_hash:
                    out[k] = meta.content_hash
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

    def list_keys(self, dag_id: str | None = None) -> list[str]:
        return list(self._call(self.store.list_results(dag_id)))

    def close(self) -> None:
        """Stop the adapter's loop (the user's store is the user's to close)."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()


def _check(key: str, expected: str, data: Buffer) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise IntegrityError(key, expected, actual)


__all__ = ["as_result_store", "AsyncStoreAdapter"]
