"""What only the hybrid store does (the shared contract runs over it in test_result_stores.py):
small values in SQLite, large ones as files, one copy per key when a key changes sides."""
import hashlib
import os
import subprocess
import sys
import time

from twingraph.core.results import DataType, StorageMetadata
from twingraph.stores.results import HybridStorage, create_storage_backend
from twingraph.stores.results.factory import options_from_config


def _meta(key, data):
    return StorageMetadata(key, DataType.BINARY, hashlib.sha256(data).hexdigest(), len(data),
                           metadata={"encoding": "bytes", "dag_id": "d"})


def test_sizes_go_to_their_side_and_a_key_keeps_one_copy(tmp_path):
    store = HybridStorage(tmp_path / "h", large_threshold=1000)
    try:
        small, large = b"s" * 10, b"L" * 5000
        store.put_many([("a", small, _meta("a", small)), ("b", large, _meta("b", large))])
        assert store.small.has("a") and not store.large.has("a")
        assert store.large.has("b") and not store.small.has("b")
        store.put("a", large, _meta("a", large))              # a grows: moves to the files
        assert store.large.has("a") and not store.small.has("a")
        store.put("b", small, _meta("b", small))              # b shrinks: moves to SQLite
        assert store.small.has("b") and not store.large.has("b")
        assert bytes(store.get("a")) == large and bytes(store.get("b")) == small
        assert store.list_keys("d") == ["a", "b"]
        assert store.content_hashes(["a", "b", "zz"]) == {
            "a": "bytes:" + hashlib.sha256(large).hexdigest(),    # raw bytes: marked
            "b": "bytes:" + hashlib.sha256(small).hexdigest()}
        assert store.delete("a") and not store.has("a") and not store.delete("a")
    finally:
        store.close()


def test_the_factory_and_the_documents_config_open_it(tmp_path):
    opts = options_from_config("hybrid", compression=True, cache_size="64MB")
    assert opts == {"compression": "zstd", "cache_size": 64 * 1024 * 1024}
    store = create_storage_backend("hybrid", tmp_path / "h", **opts)
    try:
        assert isinstance(store, HybridStorage)
        assert (tmp_path / "h" / "results.db").exists() and (tmp_path / "h" / "large").is_dir()
    finally:
        store.close()


def test_a_bad_hash_anywhere_in_a_mixed_batch_writes_nothing(tmp_path):
    import pytest

    from twingraph.errors import StorageError
    store = HybridStorage(tmp_path / "h", large_threshold=1000)
    try:
        old, big, tiny = b"old", b"B" * 5000, b"t" * 10
        store.put("moving", old, _meta("moving", old))
        bad = StorageMetadata("bad", DataType.BINARY, "0" * 64, len(tiny))
        with pytest.raises(StorageError, match="nothing written"):
            store.put_many([("moving", big, _meta("moving", big)),
                            ("other", big, _meta("other", big)), ("bad", tiny, bad)])
        assert bytes(store.get("moving")) == old and not store.large.has("moving")
        assert not store.has("other") and not store.has("bad")
    finally:
        store.close()


def test_writers_of_both_sizes_never_lose_a_key(tmp_path):
    # Each round two stores (as two processes would) put the same key at once, one small and
    # one large; after every round the key must be there, on exactly one side.
    import threading
    import time
    stores = [HybridStorage(tmp_path / "h", large_threshold=1000) for _ in range(2)]
    values = [b"s" * 10, b"L" * 3000]
    rounds, lost = 10, []
    real = stores[0].small.put_many

    def slow_small_put(items):         # widen the window between a write and its clean-up
        real(items)
        time.sleep(0.03)
    stores[0].small.put_many = slow_small_put
    start, end = threading.Barrier(3), threading.Barrier(3)

    def write(store, data):
        for _ in range(rounds):
            start.wait()
            store.put("k", data, _meta("k", data))
            end.wait()
    threads = [threading.Thread(target=write, args=(st, v)) for st, v in zip(stores, values)]
    for t in threads:
        t.start()
    try:
        for r in range(rounds):
            start.wait()
            end.wait()
            s = stores[0]
            if not s.has("k") or s.small.has("k") == s.large.has("k"):
                lost.append(r)
        for t in threads:
            t.join()
        assert lost == []
    finally:
        for st in stores:
            st.close()


def test_items_may_be_any_iterable_and_bad_keys_fail_at_once(tmp_path):
    import pytest

    from twingraph.errors import StorageError
    store = HybridStorage(tmp_path / "h", large_threshold=1000)
    try:
        store.put_many((k, b"v", _meta(k, b"v")) for k in ("g1", "g2"))
        assert store.list_keys() == ["g1", "g2"]
        with pytest.raises(StorageError):
            store.iter_chunks("../escape")
    finally:
        store.close()


OTHER_PROCESS = """
import sys
from twingraph.core.results import DataType, StorageMetadata
from twingraph.stores.results import HybridStorage
s = HybridStorage(sys.argv[1], large_threshold=1000)
s.put("k", b"old small", StorageMetadata("k", DataType.BINARY, "", 9))
s.close()
"""


def test_a_key_stored_small_elsewhere_moves_to_the_files_without_leaving_its_old_copy(tmp_path):
    # The SQLite side's key index reads rows other processes committed only every
    # ``sync_every`` seconds (decision 0010). A key another process stored small and that is
    # overwritten here with a large value inside that window must still lose its SQLite copy:
    # reads look in SQLite first and would return the old value for good. The window is
    # widened to an hour so that the overwrite certainly falls inside it.
    store = HybridStorage(tmp_path / "h", large_threshold=1000)
    try:
        store.put("warm", b"w", _meta("warm", b"w"))
        store.small.content_hashes(["absent"])            # a miss builds the key index
        deadline = time.monotonic() + 10
        while store.small._keys.state != "ready":
            assert store.small._keys.state != "off" and time.monotonic() < deadline
            time.sleep(0.005)
        store.small.content_hashes(["absent"])            # reads other processes' rows now...
        store.small._keys.sync_every = 3600.0             # ...and not again for an hour
        subprocess.run([sys.executable, "-c", OTHER_PROCESS, str(tmp_path / "h")], check=True,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        assert store.small.content_hashes(["k"]) == {}    # the index does not know of it yet
        new = b"N" * 5000
        store.put("k", new, _meta("k", new))
        assert not store.small.has("k") and store.large.has("k")
        assert bytes(store.get("k")) == new
        found = store.read("k")
        assert found is not None and bytes(found[1]) == new
    finally:
        store.close()
