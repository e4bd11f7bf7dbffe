"""What only the hybrid store does (the shared contract runs over it in test_result_stores.py):
small values in SQLite, large ones as files, one copy per key when a key changes sides."""
import hashlib

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
            "a": hashlib.sha256(large).hexdigest(), "b": hashlib.sha256(small).hexdigest()}
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
