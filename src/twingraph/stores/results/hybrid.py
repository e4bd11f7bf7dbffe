"""``HybridStorage``: the dynamic-scheduler document's ``hybrid`` backend.

Values up to ``large_threshold`` bytes (1 MiB) go to a SQLite store (one row each: many small
results cost one transaction per batch), larger ones to a filesystem store (one file each, read
memory-mapped; the database stays small). Both live under one directory: ``results.db`` and
``large/``. Each key is in one of the two; reads look in SQLite first, then in the files.

A batch is validated whole before anything is written (as every store does). The large values
are written first (each atomically, fsynced), then the small ones (one SQLite transaction);
then a key that changed sides is removed from the side it left, so a reader never misses it
(in between it sees one complete version or the other). A batch that mixes sizes is therefore
atomic per side, not as a whole: after a crash some of its large values may be stored without
its small ones — each value that is there is complete and verified.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from twingraph.core.results import StorageMetadata
from twingraph.stores.results._common import as_views, prepare_all, validate_key
from twingraph.stores.results.base import Buffer, Item, ResultStoreBase
from twingraph.stores.results.filesystem import FilesystemStorage
from twingraph.stores.results.sqlite import SQLiteStorage

MiB = 1024 * 1024


class HybridStorage(ResultStoreBase):
    def __init__(self, path: str | Path, *, large_threshold: int = MiB,
                 compression: str | None = None, compression_level: int = 3,
                 compression_min_size: int = 4096, cache_size: int | None = None,
                 chunk_size: int = MiB, inline_threshold: int = 4096, fsync: bool = True) -> None:
        self.path = Path(path)
        self.large_threshold = large_threshold
        # SQLite keeps every small value in its row (never chunked: large ones go to files).
        self.small = SQLiteStorage(self.path / "results.db", chunk_threshold=large_threshold,
                                   chunk_size=chunk_size, cache_size=cache_size,
                                   compression=compression, compression_level=compression_level,
                                   compression_min_size=compression_min_size)
        self.large = FilesystemStorage(self.path / "large", inline_threshold=inline_threshold,
                                       mmap_threshold=min(MiB, large_threshold),
                                       chunk_size=chunk_size, fsync=fsync,
                                       compression=compression,
                                       compression_level=compression_level,
                                       compression_min_size=compression_min_size)

    # ---- writes ----
    def put_many(self, items: Sequence[Item]) -> None:
        prepare_all(items)                  # the whole batch valid before anything is written
        small: dict[str, Item] = {}
        large: dict[str, Item] = {}
        for item in items:                  # a key given twice: its last value, on its side
            key, data, _ = item
            side, other = (large, small) if as_views(data)[1] > self.large_threshold \
                else (small, large)
            other.pop(key, None)
            side[key] = item
        if large:
            self.large.put_many(list(large.values()))
        if small:
            self.small.put_many(list(small.values()))
        # A key that changed sides leaves the side it was on (after the new version landed).
        for key in self.small.content_hashes(list(large)):
            self.small.delete(key)
        for key in small:
            if self.large.has(key):
                self.large.delete(key)

    def delete(self, key: str) -> bool:
        validate_key(key)
        gone_small = self.small.delete(key)
        gone_large = self.large.delete(key)
        return gone_small or gone_large

    def patch_metadata(self, key: str, metadata: dict[str, Any]) -> bool:
        return self.small.patch_metadata(key, metadata) or self.large.patch_metadata(key, metadata)

    # ---- reads ----
    def _either(self, name: str, key: str) -> Any:
        """``small.<name>(key)``, else ``large.<name>(key)``. A key moving from the files to
        SQLite meanwhile can be missed by both looks (SQLite looked at before the new row
        landed, the file after it was removed): a miss on both sides is looked at again."""
        for _ in range(3):
            for side in (self.small, self.large):
                found = getattr(side, name)(key)
                if found is not None:
                    return found
        return None

    def get(self, key: str) -> Buffer | None:
        return self._either("get", key)  # type: ignore[no-any-return]

    def read(self, key: str) -> tuple[StorageMetadata, Buffer] | None:
        return self._either("read", key)  # type: ignore[no-any-return]

    def head(self, key: str) -> StorageMetadata | None:
        return self._either("head", key)  # type: ignore[no-any-return]

    def iter_chunks(self, key: str, chunk_size: int = MiB) -> Iterator[bytes]:
        # A key can move sides between a look and the read (an overwrite with a value of the
        # other size class): a side that had it and then yields nothing for a non-empty value
        # lost it meanwhile, and the other side has the new version.
        for _ in range(3):
            for side in (self.small, self.large):
                meta = side.head(key)
                if meta is None:
                    continue
                chunks = side.iter_chunks(key, chunk_size)
                first = next(chunks, None)
                if first is None and meta.size > 0:
                    continue
                if first is not None:
                    yield first
                    yield from chunks
                return

    def content_hashes(self, keys: Sequence[str]) -> dict[str, str]:
        found = self.small.content_hashes(keys)
        rest = [k for k in keys if k not in found]
        if rest:
            found.update(self.large.content_hashes(rest))
        return found

    def has(self, key: str) -> bool:
        return self.head(key) is not None

    def list_keys(self, dag_id: str | None = None) -> list[str]:
        return sorted(set(self.small.list_keys(dag_id)) | set(self.large.list_keys(dag_id)))

    def close(self) -> None:
        try:
            self.small.close()
        finally:
            self.large.close()

    def __repr__(self) -> str:
        return f"HybridStorage({str(self.path)!r})"
