"""A file store opened before ``fork()`` (multiprocessing's default start on Linux) and used
by the forked children (session 23 review): an ``flock`` belongs to the open file, which the
children shared with the parent, so two processes held the store's lock at once; commits
interleaved and one unlinked the data file the other's metadata named ("data file ... is
missing": a result lost as corrupted). Real forked processes over real files."""
from __future__ import annotations

import multiprocessing
import random
import time
from pathlib import Path

import pytest

from twingraph.core.results import DataType, StorageMetadata
from twingraph.stores.results.filesystem import FilesystemStorage
from twingraph.stores.results.hybrid import HybridStorage

VALUES = [bytes([i]) * 20_000 for i in range(3)]


def _meta(data: bytes) -> StorageMetadata:
    return StorageMetadata("K", DataType.BINARY, "", len(data))


def _hammer(store, seed: int, seconds: float, out) -> None:
    rnd, errors, t0 = random.Random(seed), [], time.monotonic()
    while time.monotonic() - t0 < seconds:
        data = VALUES[rnd.randrange(3)]
        try:
            store.put("K", data, _meta(data))
            got = store.get("K")
            if got is not None and bytes(got) not in VALUES:
                errors.append("wrong bytes")
        except Exception as exc:  # noqa: BLE001 - counted: the test says which
            errors.append(repr(exc)[:200])
    out.put(errors)


@pytest.mark.parametrize("make", [
    lambda root: FilesystemStorage(str(root), fsync=False),
    lambda root: HybridStorage(str(root), large_threshold=10_000, fsync=False),   # to its files
], ids=["filesystem", "hybrid"])
def test_a_store_opened_before_a_fork_locks_against_the_forked_processes(tmp_path: Path, make):
    store = make(tmp_path / "store")
    try:
        store.put("K", VALUES[0], _meta(VALUES[0]))
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        procs = [ctx.Process(target=_hammer, args=(store, i, 3.0, out)) for i in range(4)]
        for p in procs:
            p.start()
        errors = [e for _ in procs for e in out.get(timeout=60)]
        for p in procs:
            p.join(30)
        assert errors == [], errors[:5]
        assert bytes(store.get("K")) in VALUES
    finally:
        store.close()
