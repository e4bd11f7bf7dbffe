"""``HybridStorage``: the dynamic-scheduler document's ``hybrid`` backend.

Values up to ``large_threshold`` bytes (1 MiB) go to a SQLite store (one row each: many small
results cost one transaction per batch), larger ones to a filesystem store (one file each, read
memory-mapped; the database stays small). Both live under one directory: ``results.db`` and
``large/``. Each key is in one of the two; reads look in SQLite first, then in the files.

Writes — ``put_many``, ``delete``, ``patch_metadata`` — hold one lock across both sides (a
thread lock plus an ``flock``, so also across processes sharing the directory): two writers
can never each remove the other's copy of a key that changes sides. A batch is validated whole
before anything is written, content hashes included. The large values are written first (the
file store commits them together), then the small ones (one SQLite transaction), then a key
that changed sides is removed from the side it left. So a batch that mixes sizes is atomic per
side, not as a whole: if the SQLite part fails after the files landed (a full disk), those
large values stay stored — each complete and verified — and a key that was moving to the files
keeps its old SQLite copy, which reads then still prefer. A retry of the batch repairs it.

Reads take no lock. ``get``, ``read``, ``head``, ``has`` and ``iter_chunks`` look again when a
key that is changing sides was missed on both; ``content_hashes`` and ``list_keys`` look once
and may miss such a key for that moment (a memo miss: the task runs again). Each small key
written costs one file-existence check on the large side, and a memo lookup that misses in
SQLite asks the files too: this backend is for ``twingraph dynamic execute`` and stores whose
values span both size classes; the engine's embedded default is plain SQLite.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from twingraph.core.results import StorageMetadata
from twingraph.errors import IntegrityError, StorageError
from twingraph.stores.results import _files
from twingraph.stores.results._common import as_views, check_hash, prepare_all, validate_key
from twingraph.stores.results.base import Buffer, Item, ResultStoreBase
from twingraph.stores.results.filesystem import FilesystemStorage
from twingraph.stores.results.sqlite import SQLiteStorage

MiB = 1024 * 1024


class HybridStorage(ResultStoreBase):
    def __init__(self, path: str | Path, *, large_threshold: int = MiB,
                 compression: str | None = None, compression_level: int = 3,
                 compression_min_size: int = 4096, cache_size: int | None = None,
                 chunk_size: int = MiB, inline_threshold: int = 4096, fsync: bool = True) -> None:
        self.path = Path(path).absolute()
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
        self._lock = _files.ProcessLock(self.path / ".hybrid.lock")

    # ---- writes ----
    def put_many(self, items: Sequence[Item]) -> None:
        items = list(items)
        # Keys, types, sizes, metadata — and below the small values' hashes — all checked
        # before anything is written (the file store checks the large ones before it commits).
        prepared = {p.key: p for p in prepare_all(items)}
        small: dict[str, Item] = {}
        large: dict[str, Item] = {}
        for item in items:                  # a key given twice: its last value, on its side
            key, data, _ = item
            side, other = (large, small) if as_views(data)[1] > self.large_threshold \
                else (small, large)
            other.pop(key, None)
            side[key] = item
        for key in small:
            p = prepared[key]
            if p.content_hash:
                h = hashlib.sha256()
                for view in p.views:
                    h.update(view)
                check_hash(p, h.hexdigest())
        with self._writing():
            if large:
                self.large.put_many(list(large.values()))
            if small:
                self.small.put_many(list(small.values()))
            # A key that changed sides leaves the side it was on (after the new one landed).
            # SQLite is asked directly, not through its memo lookup: that one's key index may
            # miss another process's row for a moment, and a copy left there would be read
            # (SQLite first) instead of the new value for good.
            if large:
                self.small.delete_many(list(large))
            for key in small:
                if self.large.has(key):
                    self.large.delete(key)

    def delete(self, key: str) -> bool:
        validate_key(key)
        with self._writing():
            gone_small = self.small.delete(key)
            gone_large = self.large.delete(key)
        return gone_small or gone_large

    def writer_busy(self) -> bool:
        return self._lock.busy() or self.small.writer_busy()

    def patch_metadata(self, key: str, metadata: dict[str, Any]) -> bool:
        with self._writing():
            return self.small.patch_metadata(key, metadata) or \
                self.large.patch_metadata(key, metadata)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            with self._lock.hold():
                yield
        except OSError as exc:             # the lock of a closed store
            raise StorageError(f"result store {self.path} is unusable: {exc}") from exc

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
        validate_key(key)                   # now, not when the first chunk is asked for
        return self._chunks(key, chunk_size)

    def _chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
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
        try:
            return self.head(key) is not None
        except IntegrityError:   # stored but damaged (its metadata): there, as both sides say
            return True

    def list_keys(self, dag_id: str | None = None) -> list[str]:
        return sorted(set(self.small.list_keys(dag_id)) | set(self.large.list_keys(dag_id)))

    def close(self) -> None:
        try:
            self.small.close()
        finally:
            try:
                self.large.close()
            finally:
                self._lock.close()

    def __repr__(self) -> str:
        return f"HybridStorage({str(self.path)!r})"

