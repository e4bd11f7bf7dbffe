"""Result and metadata stores, session 24 review: a store opened with a relative path keeps
its file whatever the process's directory; a compressed file store value whose recorded size
was damaged is corruption (``IntegrityError``), not a ``MemoryError``; a small compressed value
comes back as ``bytes``, as an uncompressed one does."""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from twingraph.core.results import DataType, StorageMetadata
from twingraph.errors import IntegrityError
from twingraph.stores.results.filesystem import FilesystemStorage
from twingraph.stores.results.hybrid import HybridStorage
from twingraph.stores.results.sqlite import SQLiteStorage


def _meta(key: str, data: bytes) -> StorageMetadata:
    return StorageMetadata(node_id=key, data_type=DataType.BINARY,
                           content_hash=hashlib.sha256(data).hexdigest(), size=len(data))


def _put(store, key: str, data: bytes) -> None:
    store.put(key, data, _meta(key, data))


def _in_thread(fn):
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(v=fn()))
    t.start()
    t.join()
    return out["v"]


@pytest.mark.parametrize("make", [lambda: SQLiteStorage("store/r.db"),
                                  lambda: FilesystemStorage("store"),
                                  lambda: HybridStorage("store", large_threshold=8)],
                         ids=["sqlite", "filesystem", "hybrid"])
def test_a_store_opened_by_a_relative_path_keeps_its_file_after_a_chdir(tmp_path: Path,
                                                                        monkeypatch, make):
    """Each thread's SQLite connection and each stream opened ``store/r.db`` again from the
    current directory: after a ``chdir`` (a task's code) reads returned another store's bytes
    and writes went there."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.chdir(b)
    other = make()
    _put(other, "k", b"value-in-b-" * 3)
    other.close()
    monkeypatch.chdir(a)
    s = make()
    try:
        _put(s, "k", b"value-in-a-" * 3)
        monkeypatch.chdir(b)
        assert bytes(_in_thread(lambda: s.get("k"))) == b"value-in-a-" * 3
        assert b"".join(s.iter_chunks("k")) == b"value-in-a-" * 3
        _in_thread(lambda: _put(s, "k2", b"new"))
    finally:
        s.close()
    monkeypatch.chdir(a)
    again = make()
    assert again.has("k2")
    again.close()
    monkeypatch.chdir(b)
    other = make()
    assert not other.has("k2")
    other.close()


def test_a_damaged_size_of_a_compressed_data_file_is_integrity_error(tmp_path: Path):
    s = FilesystemStorage(tmp_path / "fs", compression="zstd")
    data = b"abcdefgh" * 200_000                  # 1.6 MB: a compressed data file
    _put(s, "k", data)
    path = s.metadata_path / "k.json"
    doc = json.loads(path.read_text())
    assert doc["compression"] == "zstd" and "path" in doc["storage"]
    doc["size"] = 1 << 46
    path.write_text(json.dumps(doc))
    for read in (lambda: s.get("k"), lambda: s.read("k"), lambda: b"".join(s.iter_chunks("k"))):
        with pytest.raises(IntegrityError):
            read()
    s.close()


def test_a_small_compressed_value_in_a_data_file_comes_back_as_bytes(tmp_path: Path):
    s = FilesystemStorage(tmp_path / "fs", compression="zstd")
    data = json.dumps([{"n": i, "text": "x" * 20} for i in range(800)]).encode()
    assert 4096 < len(data) < 1024 * 1024
    _put(s, "k", data)
    got = s.get("k")
    assert type(got) is bytes and got == data
    assert json.loads(got)[3]["n"] == 3
    s.close()


def test_a_metadata_file_of_another_key_is_integrity_error(tmp_path: Path):
    """Session 25: the file store took ``metadata/nodes/<key>.json`` at its word. On a
    case-insensitive file system ``A`` and ``a`` are one file, so ``retrieve("A")`` returned
    the value of ``a``; simulated here with a hard link."""
    import os
    store = FilesystemStorage(str(tmp_path / "fs"))
    _put(store, "a", b"value of a")
    nodes = tmp_path / "fs" / "metadata" / "nodes"
    os.link(nodes / "a.json", nodes / "A.json")
    with pytest.raises(IntegrityError, match="metadata file of key 'a'"):
        store.get("A")
    assert bytes(store.get("a")) == b"value of a"
