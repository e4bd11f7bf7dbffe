"""How a stored value is read back cannot be changed, and bytes that do not read back are a
damaged entry (session 26 review): ``update_metadata(k, {"encoding": "utf-8"})`` (plausible
user metadata) made every later run of the pipeline fail with "unknown encoding" for ever,
and a value whose bytes no longer decode raised a raw ``UnpicklingError`` on every run. Real
stores on files."""
from __future__ import annotations

import asyncio

import pytest

from twingraph import component, pipeline
from twingraph.core.results import DataType, StorageMetadata
from twingraph.engine.engine import Engine
from twingraph.errors import IntegrityError, StorageError
from twingraph.stores.metadata import MemoryMetadataStore
from twingraph.stores.results.factory import create_storage_backend

KINDS = ["sqlite", "filesystem", "hybrid", "memory"]


@pytest.fixture(params=KINDS)
def results(request, tmp_path):
    path = str(tmp_path / ("results.db" if request.param == "sqlite" else "results"))
    store = create_storage_backend(request.param, path)
    yield store
    store.close()


@component
def _answer(n):
    return {"x": n * 2}


@pipeline(name="decode_s26")
def _twice(n):
    return _answer(n=n)


def test_an_update_cannot_change_how_a_value_is_read_back(results) -> None:
    eng = Engine(results=results, metadata=MemoryMetadataStore())
    try:
        assert _twice.run(engine=eng, n=21).value["outputs"] == {"x": 42}
        (key,) = results.list_keys()
        encoding = results.head(key).metadata["encoding"]
        with pytest.raises(StorageError, match="cannot change it"):
            asyncio.run(results.update_metadata(key, {"encoding": "utf-8", "owner": "me"}))
        assert "owner" not in results.head(key).metadata          # nothing of it applied
        assert asyncio.run(results.update_metadata(key, {"owner": "me", "encoding": encoding}))
        again = _twice.run(engine=eng, n=21)
        assert again.value["outputs"] == {"x": 42}
        assert results.head(key).metadata["owner"] == "me"
    finally:
        eng.close()


def test_bytes_that_do_not_decode_are_a_damaged_entry_removed_for_the_next_run(results) -> None:
    eng = Engine(results=results, metadata=MemoryMetadataStore())
    try:
        data = b"\x80\x05 this is not a pickle"
        results.put("k" * 64, data, StorageMetadata("k" * 64, DataType.BINARY, "", len(data),
                                                     metadata={"encoding": "pickle"}))
        with pytest.raises(IntegrityError, match="do not decode") as caught:
            eng.load_value("k" * 64)
        assert "removed" in str(caught.value)
        assert results.head("k" * 64) is None
    finally:
        eng.close()


class _RaisesOnLoad:
    """Unpickles by calling ``int("not a number")``: a ValueError from the value's own code,
    as a renamed Enum member or a ``__setstate__`` raises it; the bytes are fine."""

    def __reduce__(self):
        return (int, ("not a number",))


def test_a_value_whose_own_code_refuses_to_load_is_kept(results) -> None:
    import pickle
    eng = Engine(results=results, metadata=MemoryMetadataStore())
    try:
        data = pickle.dumps(_RaisesOnLoad())
        results.put("v" * 64, data, StorageMetadata("v" * 64, DataType.BINARY, "", len(data),
                                                     metadata={"encoding": "pickle"}))
        with pytest.raises(ValueError, match="not a number"):
            eng.load_value("v" * 64)
        assert results.head("v" * 64) is not None            # another code version may read it
    finally:
        eng.close()


def test_an_encoding_cannot_be_added_by_an_update_either(results) -> None:
    """An entry stored without ``encoding`` (read as pickle) accepted ``{"encoding": None}``,
    and the next read called it damaged and deleted it."""
    data = b"\x80\x05K\x01."                                    # pickle of 1
    results.put("w" * 64, data, StorageMetadata("w" * 64, DataType.BINARY, "", len(data)))
    with pytest.raises(StorageError, match="cannot change it"):
        asyncio.run(results.update_metadata("w" * 64, {"encoding": None}))
