"""In-memory result store: the fake for tests (passes the same contract suite as the real ones).

Values are copied in on ``put`` (the caller's buffers may change afterwards) and verified on
every read, like the real stores, so tests exercise the same failure modes. No compression.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from twingraph.core.results import StorageMetadata
from twingraph.stores.results._common import (
    check_chunk_size, check_hash, dag_text, hash_views, joined, merge_meta, meta_from_json, prepare_all, validate_key,
    verified_stream, verify,
)
from twingraph.stores.results.base import Buffer, Item, ResultStoreBase

__all__ = ["MemoryStorage"]


@dataclass
class _Entry:
    meta: StorageMetadata     # metadata dict kept as JSON text in meta_json (copied on read)
    meta_json: str | None
    dag_id: str | None
    data: bytes


class MemoryStorage(ResultStoreBase):
    """Thread-safe dict-backed store. ``_entries`` is private (tests corrupt it on purpose)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def put_many(self, items: Sequence[Item]) -> None:
        staged: list[tuple[str, _Entry]] = []
        for p in prepare_all(items):
            key = p.key
            digest = check_hash(p, hash_views(p.views))
            blob = bytes(joined(p.views))
            m = StorageMetadata(node_id=key, data_type=p.data_type, content_hash=digest,
                                size=p.size, compression=None, created_at=p.created_at)
            staged.append((key, _Entry(m, p.meta_json, p.dag_id, blob)))
        with self._lock:
            self._entries.update(staged)

    def _entry(self, key: str) -> _Entry | None:
        validate_key(key)
        with self._lock:
            return self._entries.get(key)

    def get(self, key: str) -> Buffer | None:
        e = self._entry(key)
        return None if e is None else verify(key, e.meta.content_hash, e.data, e.meta.size)

    def read(self, key: str) -> tuple[StorageMetadata, Buffer] | None:
        # Metadata and bytes of one entry, taken under one lock: head() then get() could pair
        # one version's metadata (its encoding) with the next version's bytes.
        validate_key(key)
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                return None
            meta = replace(e.meta, metadata=meta_from_json(e.meta_json, key))
        return meta, verify(key, e.meta.content_hash, e.data, e.meta.size)

    def head(self, key: str) -> StorageMetadata | None:
        e = self._entry(key)
        return None if e is None else replace(e.meta,
                                              metadata=meta_from_json(e.meta_json, key))

    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        check_chunk_size(chunk_size)
        e = self._entry(key)
        if e is None:
            return iter(())
        view = memoryview(e.data)
        pieces = (view[i:i + chunk_size] for i in range(0, len(view), chunk_size))
        return verified_stream(key, e.meta.content_hash, pieces, chunk_size, e.meta.size)

    def delete(self, key: str) -> bool:
        validate_key(key)
        with self._lock:
            return self._entries.pop(key, None) is not None

    def has(self, key: str) -> bool:
        return self._entry(key) is not None

    def list_keys(self, dag_id: str | None = None) -> list[str]:
        dag_id = dag_text(dag_id)
        with self._lock:
            return sorted(k for k, e in self._entries.items()
                          if dag_id is None or e.dag_id == dag_id)

    def patch_metadata(self, key: str, metadata: dict[str, Any]) -> bool:
        validate_key(key)
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                return False
            e.meta_json, e.dag_id = merge_meta(e.meta_json, metadata, key)
            return True

    def close(self) -> None:
        pass
