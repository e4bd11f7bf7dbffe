"""Filesystem result store: one JSON metadata file per result, data files beside, mmap reads.

Layout under ``base_path`` (as in the dynamic-scheduler document, plus a content-hash suffix)::

    metadata/nodes/<key>.json                       what makes a result visible
    data/<primitives|binary|nested|dataset|large>/<key>.<hash16>.bin   (.zst when compressed)
    .lock                                           flock serialising commits between processes
    tmp/                                            files being written (hidden temp names)

Small values (``inline_threshold``, default 4 KiB) are kept base64 inside the metadata file: one
file per result instead of two, which halves the file creations and fsyncs of the hot path.

Write protocol (crash-safe): each file is written to a hidden temp file in its own directory,
made durable (fsync, or one ``syncfs`` for a batch — see ``_files``), then ``os.replace``d into
place; the data file first, then the metadata file, then the directory is fsynced. Data files are
named by key *and* content hash, so an overwrite never replaces the bytes an older metadata file
points to: a reader (or a crash) sees the old result or the new one, never a mix. The replaced
data file is removed only after the new metadata is durable.

Reads: values of ``mmap_threshold`` bytes or more come back as a read-only memoryview over an
``mmap`` of the data file (zero copies; ``decode(..., 'npy')`` then gives an array over the page
cache). The hash is verified on every read (for an mmap that means reading the pages once). If a
data file vanishes under a reader because the key was just overwritten or deleted, the read is
retried from the metadata; a data file missing for a visible result is a ``StorageError``.
Each map holds a file descriptor for as long as it lives (Python's ``mmap`` keeps a ``dup`` of
the file's): the maps of all stores in the process hold at most a quarter of the descriptor
limit, and a read past that (or one whose ``dup`` fails: EMFILE) gets a copy of the bytes.

A metadata file that cannot be read as this store wrote it (torn, edited: not JSON, fields of
the wrong type) is a damaged entry: ``IntegrityError`` from every read, as for a value whose bytes
do not match its hash, so that the engine deletes it and the next run recomputes it; a memo
lookup takes it for a miss, ``list_keys(dag_id)`` leaves it out (its DAG cannot be told), and
``delete`` removes it (a data file it pointed to is left for ``sweep``).

``put_many`` validates every item before touching the disk, and renames the metadata files only
after every data file is written and durable; a crash in the middle of that last rename loop can
leave a prefix of the batch visible (each item complete). SQLite gives whole-batch atomicity.

Garbage a crash leaves behind: temp files (in ``tmp/``, so nothing else is scanned) are removed
when a store is opened, once they are older than ``TEMP_MAX_AGE`` (an older temp file cannot
belong to a live writer in another process). A data file renamed into place whose metadata never
was is invisible and is removed by ``sweep()``, which scans the whole store (run it explicitly).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import mmap
import os
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # the descriptor limit (POSIX)
    import resource
except ImportError:  # pragma: no cover
    resource = None  # type: ignore[assignment]

from twingraph.core.results import DataType, StorageMetadata
from twingraph.errors import ConfigurationError, IntegrityError, StorageError
from twingraph.stores.results import _files
from twingraph.stores.results._common import (
    Prepared, check_hash, dag_text, data_type_of, merge_meta, prepare_all, slices, validate_key,
    verified_stream, verify,
)
from twingraph.stores.results._compress import CompressionPolicy, decompress_frame, pack_small, worth_it, zstd
from twingraph.stores.results.base import Buffer, Item, ResultStoreBase

__all__ = ["FilesystemStorage"]

MiB = 1024 * 1024
_DIRS = {DataType.PRIMITIVE: "primitives", DataType.BINARY: "binary", DataType.NESTED: "nested",
         DataType.DATASET: "dataset", DataType.LARGE_OBJECT: "large"}
_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
#: Seconds after which a temp file (or an unreferenced data file) is taken for a crash's leftover.
TEMP_MAX_AGE = 3600.0
#: The memory maps every filesystem store of this process has handed out and that still live
#: (each holds a file descriptor); at most 1/``MAP_FD_SHARE`` of the descriptor limit.
_MAPS: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()
MAP_FD_SHARE = 4
#: ``mmap`` failing with these leaves the file to be read as a copy: no descriptor to spare
#: (EMFILE, ENFILE), or no memory map to spare (ENOMEM: ``vm.max_map_count``).
_NO_MAP = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


@dataclass
class _Staged:
    key: str
    meta_tmp: Path
    data_tmp: Path | None = None
    data_final: Path | None = None


class FilesystemStorage(ResultStoreBase):
    """Result store in a directory tree (see the module docstring for layout and protocol)."""

    def __init__(self, base_path: str | Path, *, compression: str | None = None,
                 compression_level: int = 3, compression_min_size: int = 4096,
                 inline_threshold: int = 4096, mmap_threshold: int = MiB,
                 chunk_size: int = MiB, fsync: bool = True) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
            # 0 made every large put loop for ever (``slices``), as SQLiteStorage refuses it
            raise ConfigurationError(f"chunk_size must be an int > 0, got {chunk_size!r}")
        self.base_path = Path(base_path).absolute()     # (as SQLiteStorage's: any cwd)
        self.metadata_path = self.base_path / "metadata" / "nodes"
        self.data_path = self.base_path / "data"
        self.tmp_path = self.base_path / "tmp"
        self.policy = CompressionPolicy(compression, compression_level, compression_min_size)
        self.inline_threshold, self.mmap_threshold = inline_threshold, mmap_threshold
        self.chunk_size, self.fsync = chunk_size, fsync
        with self._translate("open", str(self.base_path)):
            self.metadata_path.mkdir(parents=True, exist_ok=True)
            for d in _DIRS.values():
                (self.data_path / d).mkdir(parents=True, exist_ok=True)
            self.tmp_path.mkdir(exist_ok=True)
            self._lock = _files.ProcessLock(self.base_path / ".lock")
            self._remove_old_temp_files(TEMP_MAX_AGE)

    def _remove_old_temp_files(self, max_age: float) -> int:
        cutoff = time.time() - max_age
        removed = 0
        for entry in os.scandir(self.tmp_path):
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:       # another process removed it first
                pass
        return removed

    def sweep(self, max_age: float = TEMP_MAX_AGE) -> dict[str, int]:
        """Remove what crashed writers left: temp files and data files no metadata file refers
        to, both older than ``max_age`` seconds (younger ones may belong to a live writer).
        Scans every metadata file; returns how many files of each kind were removed."""
        with self._translate("sweep", str(self.base_path)):
            temp = self._remove_old_temp_files(max_age)
            cutoff = time.time() - max_age
            data = 0
            with self._lock.hold():        # no commit can make a data file referenced meanwhile
                referenced, unreadable = set(), set()
                for entry in os.scandir(self.metadata_path):
                    if entry.name.endswith(".json"):
                        try:
                            doc = self._load_meta(entry.name[:-5])
                        except StorageError:     # cannot tell what it points to: keep its data
                            unreadable.add(entry.name[:-5])
                            continue
                        path = ((doc or {}).get("storage") or {}).get("path")
                        if path:
                            referenced.add(path)
                for d in _DIRS.values():
                    for entry in os.scandir(self.data_path / d):
                        rel = f"data/{d}/{entry.name}"
                        # ``{key}.{hash}.bin``: a key may hold dots itself
                        if rel in referenced or entry.name.rsplit(".", 2)[0] in unreadable:
                            continue
                        try:
                            if entry.stat().st_mtime < cutoff:
                                os.unlink(entry.path)
                                data += 1
                        except FileNotFoundError:
                            pass
        return {"temp_files": temp, "data_files": data}

    @contextmanager
    def _translate(self, op: str, key: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise StorageError(f"{op} of {key!r} in {self.base_path} failed: {exc}") from exc

    def _meta_file(self, key: str) -> Path:
        return self.metadata_path / f"{key}.json"

    # ---- writes ----
    def put_many(self, items: Sequence[Item]) -> None:
        preps = prepare_all(items)  # all validated before anything is written
        if not preps:
            return
        n_files = sum(1 if p.size <= self.inline_threshold else 2 for p in preps)
        batch = self.fsync and n_files > 4 and _files.has_syncfs()
        each = self.fsync and not batch              # fsync file by file
        cctx = self.policy.compressor() if any(self.policy.wants(p.size) for p in preps) else None
        staged: list[_Staged] = []
        try:
            with self._translate("put", preps[0].key):
                for p in preps:
                    staged.append(self._stage(p, cctx, each))
                with self._lock.hold():
                    self._commit(staged, batch, each)
        except BaseException:
            for s in staged:                        # temp files not yet renamed into place
                _files.unlink_quiet(s.meta_tmp)
                if s.data_tmp is not None:
                    _files.unlink_quiet(s.data_tmp)
            raise

    def _stage(self, p: Prepared, cctx: Any, fsync: bool) -> _Staged:
        """Write the data file (if any) and the metadata file as temp files."""
        staged = _Staged(p.key, _files.temp_path(self.tmp_path, p.key))
        try:
            self._stage_into(staged, p, cctx, fsync)
        except BaseException:
            _files.unlink_quiet(staged.meta_tmp)
            if staged.data_tmp is not None:
                _files.unlink_quiet(staged.data_tmp)
            raise
        return staged

    def _stage_into(self, staged: _Staged, p: Prepared, cctx: Any, fsync: bool) -> None:
        doc: dict[str, Any] = {"format": 1, "node_id": p.key, "data_type": p.type_name,
                               "size": p.size, "created_at": p.created_at, "dag_id": p.dag_id}
        if p.size <= self.inline_threshold:
            blob, digest, comp = pack_small(p, cctx, self.policy)
            doc["storage"] = {"inline": base64.b64encode(blob).decode("ascii")}
        else:
            directory = self.data_path / _DIRS[p.data_type]
            staged.data_tmp = _files.temp_path(self.tmp_path, p.key)
            digest, comp = self._write_data(staged.data_tmp, p, cctx, fsync)
            name = f"{p.key}.{digest[:16]}.{'zst' if comp else 'bin'}"
            staged.data_final = directory / name
            doc["storage"] = {"path": f"data/{directory.name}/{name}"}
        doc["content_hash"], doc["compression"] = digest, comp
        text = _JSON.encode(doc)[:-1] + ',"metadata":' + (p.meta_json or "null") + "}"
        _files.write_file(staged.meta_tmp, text.encode("utf-8"), fsync=fsync)

    def _write_data(self, tmp: Path, p: Prepared, cctx: Any, fsync: bool) -> tuple[str, str | None]:
        """Stream the buffers to ``tmp`` (compressing if it pays); return (hash, compression)."""
        h = hashlib.sha256()
        comp = cobj = None
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            for i, piece in enumerate(slices(p.views, self.chunk_size)):
                h.update(piece)
                if i == 0 and cctx is not None and self.policy.wants(p.size):
                    cobj = cctx.compressobj(size=p.size)
                    out = cobj.compress(piece) + cobj.flush(zstd().COMPRESSOBJ_FLUSH_BLOCK)
                    if worth_it(len(piece), len(out)):
                        comp = "zstd"
                        _write_all(fd, out)
                        continue
                    cobj = None
                _write_all(fd, cobj.compress(piece) if cobj is not None else piece)
            if cobj is not None:
                _write_all(fd, cobj.flush())
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return check_hash(p, h.hexdigest()), comp

    def _commit(self, staged: list[_Staged], batch: bool, each: bool) -> None:
        """Under the lock: data into place, barrier, metadata into place, old data away."""
        data_dirs = set()
        for s in staged:
            if s.data_tmp is not None and s.data_final is not None:
                os.replace(s.data_tmp, s.data_final)
                s.data_tmp = None
                data_dirs.add(s.data_final.parent)
        if batch:
            _files.syncfs(self.base_path)
        elif each:
            for d in data_dirs:
                _files.fsync_dir(d)
        replaced = []
        for s in staged:
            old = self._old_data_file(s.key)
            os.replace(s.meta_tmp, self._meta_file(s.key))
            if old is not None and old != s.data_final:
                replaced.append(old)
        if self.fsync:
            _files.fsync_dir(self.metadata_path)
        for path in replaced:
            _files.unlink_quiet(path)

    def _old_data_file(self, key: str) -> Path | None:
        """The data file the current metadata of ``key`` points to (None if none or unreadable:
        an overwrite must be able to replace a damaged metadata file)."""
        try:
            doc = self._load_meta(key)
            return None if doc is None else self._data_file_of(key, doc)
        except StorageError:
            return None

    def delete(self, key: str) -> bool:
        validate_key(key)
        with self._translate("delete", key), self._lock.hold():
            try:
                doc = self._load_meta(key)
                data = None if doc is None else self._data_file_of(key, doc)
            except IntegrityError:
                # A damaged entry is removed all the same: it is what the engine deletes when a
                # read fails this way. The data file it may point to is left for ``sweep``.
                doc, data = {}, None
            if doc is None:
                return False
            os.unlink(self._meta_file(key))
            if self.fsync:
                _files.fsync_dir(self.metadata_path)
            if data is not None:
                _files.unlink_quiet(data)
            return True

    def writer_busy(self) -> bool:
        return self._lock.busy()

    def patch_metadata(self, key: str, metadata: dict[str, Any]) -> bool:
        validate_key(key)
        with self._translate("update_metadata", key), self._lock.hold():
            doc = self._load_meta(key)
            if doc is None:
                return False
            stored = doc.get("metadata")
            # Stored without metadata (``None``, the document's default): nothing to merge into.
            text, dag_id = merge_meta(None if stored is None else json.dumps(stored), metadata, key)
            doc["metadata"], doc["dag_id"] = json.loads(text), dag_id
            tmp = _files.temp_path(self.tmp_path, key)
            try:
                _files.write_file(tmp, _JSON.encode(doc).encode("utf-8"), fsync=self.fsync)
                os.replace(tmp, self._meta_file(key))
            finally:
                _files.unlink_quiet(tmp)
            if self.fsync:
                _files.fsync_dir(self.metadata_path)
            return True

    # ---- reads ----
    def _load_meta(self, key: str) -> dict[str, Any] | None:
        """The metadata document of ``key``, None on a miss. One that is not as ``put`` writes
        it (not JSON, a field of the wrong type) is a damaged entry: ``IntegrityError``."""
        try:
            with open(self._meta_file(key), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:   # JSONDecodeError, UnicodeDecodeError
            raise IntegrityError(key, "?", f"<metadata file is not JSON: {exc}>") from exc
        if not isinstance(doc, dict):
            raise IntegrityError(key, "?", "<metadata file holds no JSON object>")
        digest, size = doc.get("content_hash"), doc.get("size")
        if not isinstance(digest, str):
            raise IntegrityError(key, "?", f"<metadata names no content hash: {digest!r}>")
        if doc.get("node_id", key) != key:
            # another key's file under this name: keys that differ only in case are one file
            # on a case-insensitive file system (macOS, Windows), and its value is not ours
            raise IntegrityError(key, digest, f"<metadata file of key {doc['node_id']!r}>")
        if type(size) is not int or size < 0:
            raise IntegrityError(key, digest, f"<metadata size is {size!r}>")
        storage = doc.get("storage")
        if isinstance(storage, dict) and isinstance(storage.get("inline"), str):
            pass
        elif isinstance(storage, dict) and "path" in storage:
            self._data_file(key, storage["path"])     # raises if it is no path in the store
        else:
            raise IntegrityError(key, digest, f"<metadata storage is {storage!r}>")
        if not isinstance(doc.get("metadata"), (dict, type(None))):
            raise IntegrityError(key, digest, f"<metadata is {doc['metadata']!r}>")
        if doc.get("compression") not in (None, "zstd"):
            raise IntegrityError(key, digest, f"<metadata compression is {doc['compression']!r}>")
        return doc

    def _data_file(self, key: str, rel: Any) -> Path:
        parts = rel.split("/") if isinstance(rel, str) else []
        if len(parts) != 3 or parts[0] != "data" or parts[1] not in _DIRS.values() \
                or not parts[2].startswith(key + "."):
            raise IntegrityError(key, "?", f"<metadata points outside the store: {rel!r}>")
        return self.data_path / parts[1] / parts[2]

    def _data_file_of(self, key: str, doc: dict[str, Any]) -> Path | None:
        """The data file ``doc`` points to; None if it keeps its value inline."""
        rel = doc["storage"].get("path")
        return None if rel is None else self._data_file(key, rel)

    def _retrying(self, key: str, read: Any) -> Any:
        """Run ``read(key, doc)``; if its data file vanished under us (the key was overwritten
        or deleted meanwhile), re-read the metadata and try again."""
        for _ in range(5):
            doc = self._load_meta(key)
            if doc is None:
                return None
            try:
                return read(key, doc)
            except FileNotFoundError:
                if self._load_meta(key) == doc:     # not replaced meanwhile: damaged
                    raise IntegrityError(key, doc.get("content_hash", "?"),
                                         f"<data file {doc['storage']['path']} is missing>") \
                        from None
        raise StorageError(f"result {key!r} kept changing while being read")

    def get(self, key: str) -> Buffer | None:
        validate_key(key)
        try:
            return self._retrying(key, self._read)  # type: ignore[no-any-return]
        except OSError as exc:
            raise StorageError(f"get of {key!r} in {self.base_path} failed: {exc}") from exc

    def _stored(self, key: str, doc: dict[str, Any]) -> bytes | Path:
        """Where ``doc`` keeps the value: its inline bytes (still compressed if it was), or its
        data file. Inline text that is not base64, or a ``storage`` naming neither, is a
        damaged metadata file: IntegrityError, so that the entry is dropped and recomputed."""
        storage, digest = doc["storage"], doc["content_hash"]
        if isinstance(storage, dict):
            if "inline" in storage:
                try:
                    return base64.b64decode(storage["inline"], validate=True)
                except (ValueError, TypeError) as exc:    # binascii.Error is a ValueError
                    raise IntegrityError(key, digest, f"<inline data is not base64: {exc}>") \
                        from exc
            if isinstance(storage.get("path"), str):
                return self._data_file(key, storage["path"])
        raise IntegrityError(key, digest, "<metadata names neither inline data nor a data file>")

    def _read(self, key: str, doc: dict[str, Any]) -> Buffer:
        digest, size, comp = doc["content_hash"], doc["size"], doc.get("compression")
        stored = self._stored(key, doc)
        if isinstance(stored, bytes):
            return verify(key, digest,
                          decompress_frame(stored, size, key, digest) if comp else stored, size)
        with open(stored, "rb", buffering=0) as f:
            if comp:
                return self._read_compressed(f, key, size, digest)
            n = os.fstat(f.fileno()).st_size
            if n != size:
                raise IntegrityError(key, digest, f"<data file of {n} bytes, expected {size}>")
            if size < self.mmap_threshold or size == 0:
                return verify(key, digest, f.read())
            view = _map(f)
            if view is None:
                return verify(key, digest, f.read())
        try:
            return verify(key, digest, view)
        except IntegrityError:
            view.release()
            raise

    def _read_compressed(self, f: Any, key: str, size: int, digest: str) -> Buffer:
        # The frame says how long it is (written with ``size=``): told apart from the size
        # the metadata says before that much memory is taken (a damaged size of 2^46 was a
        # MemoryError on every read, not corruption the engine removes).
        try:
            declared = zstd().get_frame_parameters(f.read(18)).content_size
        except zstd().ZstdError as exc:
            raise IntegrityError(key, digest, f"<undecodable zstd header: {exc}>") from exc
        if declared != size:
            raise IntegrityError(key, digest, f"<zstd data of {declared} bytes, expected {size}>")
        f.seek(0)
        if size < self.mmap_threshold:      # bytes, as an uncompressed value this small is
            return verify(key, digest, decompress_frame(f.read(), size, key, digest))
        out = bytearray(size)
        view, pos = memoryview(out), 0
        try:
            reader = zstd().ZstdDecompressor().stream_reader(f, read_size=self.chunk_size)
            while pos < size and (n := reader.readinto(view[pos:])):
                pos += n
            extra = reader.read(1)
        except zstd().ZstdError as exc:
            raise IntegrityError(key, digest, f"<undecodable zstd data: {exc}>") from exc
        if pos != size or extra:
            raise IntegrityError(key, digest, "<zstd data of the wrong length>")
        return verify(key, digest, view.toreadonly())

    def iter_chunks(self, key: str, chunk_size: int = MiB) -> Iterator[bytes]:
        validate_key(key)
        return self._iter_chunks(key, chunk_size)

    def _iter_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        with self._translate("stream", key):
            f = self._retrying(key, self._open_data)
            if f is None:
                return
            doc, source = f
            try:
                yield from verified_stream(key, doc["content_hash"],
                                           self._pieces(key, doc, source), chunk_size,
                                           doc["size"])
            finally:
                if not isinstance(source, bytes):
                    source.close()

    def _open_data(self, key: str, doc: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """``doc`` and its inline bytes or its data file, opened."""
        stored = self._stored(key, doc)
        return doc, stored if isinstance(stored, bytes) else open(stored, "rb")

    def _pieces(self, key: str, doc: dict[str, Any], f: Any) -> Iterator[Buffer]:
        digest, size, comp = doc["content_hash"], doc["size"], doc.get("compression")
        if isinstance(f, bytes):
            yield decompress_frame(f, size, key, digest) if comp else f
            return
        source = f
        if comp:
            source = zstd().ZstdDecompressor().stream_reader(f, read_size=self.chunk_size)
        try:
            while piece := source.read(self.chunk_size):
                yield piece
        except zstd().ZstdError as exc:
            raise IntegrityError(key, digest, f"<undecodable zstd data: {exc}>") from exc

    def read(self, key: str) -> tuple[StorageMetadata, Buffer] | None:
        # Metadata and bytes from one read of the metadata file: head() then get() could give
        # the metadata of one version and the bytes of the next (an overwrite in between), and
        # the bytes would then be decoded with the other version's encoding.
        validate_key(key)
        try:
            return self._retrying(  # type: ignore[no-any-return]
                key, lambda k, doc: (self._metadata(k, doc), self._read(k, doc)))
        except OSError as exc:
            raise StorageError(f"get of {key!r} in {self.base_path} failed: {exc}") from exc

    def head(self, key: str) -> StorageMetadata | None:
        validate_key(key)
        try:
            doc = self._load_meta(key)
        except OSError as exc:
            raise StorageError(f"head of {key!r} in {self.base_path} failed: {exc}") from exc
        return None if doc is None else self._metadata(key, doc)

    @staticmethod
    def _metadata(key: str, doc: dict[str, Any]) -> StorageMetadata:
        return StorageMetadata(node_id=key, data_type=data_type_of(
                                   key, doc.get("content_hash", "?"), doc.get("data_type")),
                               content_hash=doc["content_hash"], size=doc["size"],
                               compression=doc.get("compression"),
                               created_at=doc.get("created_at"), metadata=doc.get("metadata"))

    def has(self, key: str) -> bool:
        validate_key(key)
        return self._meta_file(key).exists()

    def list_keys(self, dag_id: str | None = None) -> list[str]:
        dag_id = dag_text(dag_id)
        with self._translate("list", dag_id or "*"):
            keys = sorted(n[:-5] for n in os.listdir(self.metadata_path)
                          if n.endswith(".json") and not n.startswith("."))
            if dag_id is None:
                return keys
            return [k for k in keys if self._dag_of(k) == dag_id]

    def _dag_of(self, key: str) -> str | None:
        """The ``dag_id`` of ``key``; None if it is gone or its metadata is damaged (which DAG
        stored it cannot be told: one damaged entry does not fail every listing)."""
        try:
            doc = self._load_meta(key)
        except IntegrityError:
            return None
        return None if doc is None else doc.get("dag_id")

    def close(self) -> None:
        self._lock.close()

    def __repr__(self) -> str:
        return f"FilesystemStorage({str(self.base_path)!r})"


def _map(f: Any) -> memoryview | None:
    """A read-only view over a memory map of the open file ``f``; None when the map would take
    a file descriptor the process may need (the caller then reads a copy). A map keeps a
    ``dup`` of the descriptor for as long as it lives, and a task given a thousand large
    inputs holds a thousand maps: unbounded, they failed the read (and every ``open`` in the
    process) with EMFILE. So maps hold at most 1/``MAP_FD_SHARE`` of the descriptor limit."""
    if len(_MAPS) >= _fd_limit() // MAP_FD_SHARE:
        return None
    try:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        if exc.errno in _NO_MAP:
            return None
        raise
    _MAPS.add(mm)
    return memoryview(mm)


def _fd_limit() -> int:
    """The soft limit on open file descriptors (asked each time: a process may change it)."""
    if resource is None:  # pragma: no cover - Windows: maps hold no descriptor there
        return 1 << 30
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 30 if soft == resource.RLIM_INFINITY else soft


def _write_all(fd: int, data: Buffer) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
