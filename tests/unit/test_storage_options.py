"""ExecutionConfig.compression and cache_size reach the result store the CLI creates."""
import pytest

from twingraph.errors import ConfigurationError
from twingraph.serialization import encode
from twingraph.stores.results.factory import create_storage_backend, options_from_config, parse_size


def test_sizes_parse_in_binary_units():
    assert parse_size("512MB") == 512 * 1024 ** 2
    assert parse_size("1.5G") == int(1.5 * 1024 ** 3)
    assert parse_size(4096) == 4096
    for bad in ("lots", "5 parsecs", -1, True):
        with pytest.raises(ConfigurationError):
            parse_size(bad)


@pytest.mark.parametrize("backend", ["sqlite", "filesystem"])
def test_compression_and_cache_size_are_applied(tmp_path, backend):
    on = create_storage_backend(backend, tmp_path / "on", **options_from_config(
        backend, compression=True, cache_size="64MB"))
    off = create_storage_backend(backend, tmp_path / "off", **options_from_config(
        backend, compression=False, cache_size="64MB"))
    value = "abc" * 100_000
    for store in (on, off):
        enc = encode(value)
        store.put("k", enc.buffers, enc.to_metadata("k"))
    assert on.head("k").compression == "zstd" and off.head("k").compression is None
    if backend == "sqlite":
        assert on._conn().execute("PRAGMA cache_size").fetchone()[0] == -64 * 1024
    on.close()
    off.close()
