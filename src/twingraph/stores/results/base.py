"""The two faces of a result store, and the one base class that joins them.

- ``twingraph.ports.ResultStore`` is the synchronous port the engine uses (``put``, ``put_many``,
  ``get``, ``head``, ``iter_chunks``, ``delete``); its docstring is the contract.
- ``StorageInterface`` is the dynamic-scheduler document's async ABC, with its eight method
  names and parameters as written.

A backend implements the sync methods once (``ResultStoreBase``'s abstract methods); the async
methods here delegate to them: small values inline (a thread hop costs more than the work), large
ones through ``asyncio.to_thread`` so the event loop never waits on a big read or write.

Sync-only extras (the async names are taken by the document): ``has`` (= ``exists``),
``list_keys`` (= ``list_results``), ``patch_metadata`` (= ``update_metadata``), ``close``.

Errors: every failure is a ``StorageError``; a value whose bytes do not match its recorded
content hash raises ``IntegrityError`` and is never returned. Misses are None / False / [].
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from twingraph.core.results import DataType, StorageMetadata, stored_value_id
from twingraph.errors import IntegrityError, StorageError
from twingraph.stores.results._common import as_views

__all__ = ["StorageInterface", "ResultStoreBase", "StorageError", "IntegrityError",
           "StorageMetadata", "DataType", "Buffer", "Item"]

Buffer = bytes | bytearray | memoryview
Item = tuple[str, Buffer | Sequence[Buffer], StorageMetadata]
_DONE = object()


class StorageInterface(ABC):
    """Abstract interface for storage backends (the dynamic-scheduler document's ABC)."""

    @abstractmethod
    async def store_result(self, node_id: str, data: Buffer | Sequence[Buffer],
                           metadata: StorageMetadata) -> bool:
        """Store a result atomically (replacing an existing one). True; StorageError on failure."""

    @abstractmethod
    async def retrieve_result(self, node_id: str) -> Buffer | None:
        """Verified bytes (maybe a read-only memoryview over a memory map); None on a miss."""

    @abstractmethod
    def stream_result(self, node_id: str, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        """Async generator of chunks of at most ``chunk_size`` bytes; nothing on a miss.

        Verified incrementally: a hash mismatch raises IntegrityError instead of the last chunk.
        """

    @abstractmethod
    async def exists(self, node_id: str) -> bool:
        """Whether a complete result is stored under ``node_id``."""

    @abstractmethod
    async def delete_result(self, node_id: str) -> bool:
        """Delete; True if it existed."""

    @abstractmethod
    async def list_results(self, dag_id: str | None = None) -> list[str]:
        """Sorted node ids, optionally only those whose ``metadata['dag_id']`` equals ``dag_id``
        (compared as text: a ``dag_id`` given as 5 and one given as "5" are one DAG)."""

    @abstractmethod
    async def get_metadata(self, node_id: str) -> StorageMetadata | None:
        """Metadata without reading the data; None on a miss."""

    @abstractmethod
    async def update_metadata(self, node_id: str, metadata: dict[str, Any]) -> bool:
        """Merge ``metadata`` into the stored ``metadata`` dict; False on a miss."""


class ResultStoreBase(StorageInterface):
    """Base of every result store: implement the sync methods, get the async face for free."""

    #: Values up to this size are read/written inline by the async face (no thread hop).
    async_inline_limit = 256 * 1024

    # ---- the sync port (twingraph.ports.ResultStore) ----
    def put(self, key: str, data: Buffer | Sequence[Buffer], meta: StorageMetadata) -> None:
        """Store one result atomically; replaces an existing key atomically.

        ``meta.size`` must equal the data's length; ``meta.content_hash`` is checked against the
        data (an empty one is computed). ``created_at`` defaults to now (UTC, ISO 8601).
        """
        self.put_many([(key, data, meta)])

    @abstractmethod
    def put_many(self, items: Sequence[Item]) -> None:
        """Store several results: validated first, then written in one transaction/fsync group."""

    @abstractmethod
    def get(self, key: str) -> Buffer | None:
        """Verified bytes or None; IntegrityError on a hash mismatch."""

    @abstractmethod
    def head(self, key: str) -> StorageMetadata | None:
        """Metadata (``compression`` = what was actually done) or None."""

    @abstractmethod
    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Chunks of ``chunk_size`` bytes (last shorter); nothing on a miss; verified (see
        ``StorageInterface.stream_result``). Memory stays bounded by a few chunks."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete; True if the key existed."""

    def read(self, key: str) -> tuple[StorageMetadata, Buffer] | None:
        """Metadata and verified bytes of ``key`` (None on a miss): what loading a value needs.

        This fallback is ``head`` then ``get``: an overwrite in between pairs the metadata (the
        encoding) of one version with the bytes of the next. Every backend here overrides it
        with one read of one version."""
        meta = self.head(key)
        if meta is None:
            return None
        data = self.get(key)
        return None if data is None else (meta, data)

    def content_hashes(self, keys: Sequence[str]) -> dict[str, str]:
        """Memo lookup for many keys at once: ``{key: value_id}`` for the stored ones
        (missing keys are absent): the content hash, marked for raw bytes
        (``core.results.stored_value_id``). Backends override this with one query."""
        out = {}
        for k in keys:
            try:
                meta = self.head(k)
            except IntegrityError:      # damaged metadata: a miss; the task's put replaces it
                continue
            if meta is not None:
                out[k] = stored_value_id(meta)
        return out

    # ---- sync extras ----
    @abstractmethod
    def has(self, key: str) -> bool:
        """Whether ``key`` is stored (a memo lookup: no data read)."""

    @abstractmethod
    def list_keys(self, dag_id: str | None = None) -> list[str]:
        """Sorted keys, optionally filtered on ``metadata['dag_id']``."""

    @abstractmethod
    def patch_metadata(self, key: str, metadata: dict[str, Any]) -> bool:
        """Merge ``metadata`` into the stored dict (shallow); False on a miss."""

    def close(self) -> None:
        """Release files and connections. The store must not be used afterwards."""

    def __enter__(self) -> ResultStoreBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the async face (StorageInterface) ----
    def writer_busy(self) -> bool:
        """Whether a write here would now wait for another one of this process (a small write
        is then not made on the event loop: it would stall every task on it meanwhile)."""
        return False

    async def store_result(self, node_id: str, data: Buffer | Sequence[Buffer],
                           metadata: StorageMetadata) -> bool:
        if as_views(data)[1] <= self.async_inline_limit and not self.writer_busy():
            self.put(node_id, data, metadata)
        else:
            await asyncio.to_thread(self.put, node_id, data, metadata)
        return True

    async def retrieve_result(self, node_id: str) -> Buffer | None:
        meta = self.head(node_id)
        if meta is None:
            return None
        if meta.size <= self.async_inline_limit:
            return self.get(node_id)
        return await asyncio.to_thread(self.get, node_id)

    async def stream_result(self, node_id: str,
                            chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        meta = self.head(node_id)
        if meta is None:
            return
        it = self.iter_chunks(node_id, chunk_size)
        if meta.size <= self.async_inline_limit:
            for chunk in it:
                yield chunk
            return
        stepper = _ThreadedIterator(it)
        try:
            while (chunk := await asyncio.to_thread(stepper.next)) is not _DONE:
                yield chunk
        finally:
            stepper.close()

    async def exists(self, node_id: str) -> bool:
        return self.has(node_id)

    async def delete_result(self, node_id: str) -> bool:
        return await asyncio.to_thread(self.delete, node_id)

    async def list_results(self, dag_id: str | None = None) -> list[str]:
        return await asyncio.to_thread(self.list_keys, dag_id)

    async def get_metadata(self, node_id: str) -> StorageMetadata | None:
        return self.head(node_id)

    async def update_metadata(self, node_id: str, metadata: dict[str, Any]) -> bool:
        if self.writer_busy():
            return await asyncio.to_thread(self.patch_metadata, node_id, metadata)
        return self.patch_metadata(node_id, metadata)


class _ThreadedIterator:
    """Steps a sync iterator from worker threads; ``close`` is safe even mid-step.

    If the consuming task is cancelled while a worker thread is inside ``next``, the generator is
    closed by whoever finishes last (closing a running generator would raise ValueError).
    """

    def __init__(self, it: Iterator[bytes]) -> None:
        self._it, self._lock, self._closed = it, threading.Lock(), False

    def next(self) -> Any:
        with self._lock:
            if self._closed:
                return _DONE
            try:
                return next(self._it)
            except StopIteration:
                return _DONE

    def close(self) -> None:
        if self._lock.acquire(blocking=False):
            try:
                self._close()
            finally:
                self._lock.release()
        else:
            threading.Thread(target=self._close_locked, daemon=True).start()

    def _close_locked(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        self._closed = True
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
