"""Unit and property tests of the value codec (``twingraph.serialization``)."""

from __future__ import annotations

import enum
import hashlib
import io
import json
import math
import random
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twingraph.core.results import DataType
from twingraph.errors import ValidationError
from twingraph.serialization import Encoded, content_hash, decode, encode, typed_hash

json_scalars = (st.none() | st.booleans() | st.integers() | st.text()
                | st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8),
                                                                       children, max_size=5),
    max_leaves=30)


def _same(a: Any, b: Any) -> bool:
    """Equal *and* of the same types all the way down (1 != 1.0 != True here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b) or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


# ---------------------------------------------------------------------------- properties

@settings(max_examples=300, deadline=None)  # timing belongs in benchmarks, not in tests
@given(json_values)
def test_json_values_round_trip_exactly(value: object) -> None:
    enc = encode(value)
    data = b"".join(enc.buffers)
    out = decode(data, enc.encoding)
    if enc.encoding == "json":
        assert _same(out, value)
    else:  # only strings with lone surrogates leave JSON (they are not UTF-8)
        assert enc.encoding == "pickle" and out == value
    assert enc.content_hash == hashlib.sha256(data).hexdigest() == content_hash(value)
    assert enc.size == len(data)


@settings(deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=8), st.randoms())
def test_a_dict_comes_back_in_its_order_and_its_order_is_hashed(d: dict, rnd: random.Random) -> None:
    items = list(d.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    assert list(decode(encode(shuffled).to_bytes(), "json").items()) == items
    assert content_hash(shuffled) == encode(shuffled).content_hash
    assert (content_hash(shuffled) == content_hash(d)) == (items == list(d.items()))


@settings(deadline=None)
@given(st.binary(max_size=2000))
def test_bytes_round_trip(data: bytes) -> None:
    for value in (data, bytearray(data), memoryview(data)):
        enc = encode(value)
        assert enc.encoding == "bytes" and enc.data_type is DataType.BINARY
        assert decode(b"".join(enc.buffers), "bytes") == data
        assert enc.content_hash == hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- encodings

@pytest.mark.parametrize("value, encoding, data_type", [
    (None, "json", DataType.PRIMITIVE), (True, "json", DataType.PRIMITIVE),
    (3, "json", DataType.PRIMITIVE), (2.5, "json", DataType.PRIMITIVE),
    ("s", "json", DataType.PRIMITIVE), ([1, "a"], "json", DataType.NESTED),
    ({"a": {"b": []}}, "json", DataType.NESTED), (b"x", "bytes", DataType.BINARY),
    (np.arange(3), "npy", DataType.DATASET), ((1, 2), "pickle", DataType.NESTED),
    ({1: "int key"}, "pickle", DataType.NESTED), ({"a": (1,)}, "pickle", DataType.NESTED),
    ({1, 2}, "pickle", DataType.NESTED), (float("nan"), "pickle", DataType.NESTED),
    (float("inf"), "pickle", DataType.NESTED), (np.float64(1.5), "pickle", DataType.NESTED),
    (np.array([{"a": 1}], dtype=object), "pickle", DataType.NESTED),
    (np.ma.masked_array([1, 2], mask=[False, True]), "pickle", DataType.NESTED),
])
def test_encoding_choice(value: object, encoding: str, data_type: DataType) -> None:
    enc = encode(value)
    assert (enc.encoding, enc.data_type) == (encoding, data_type)
    out = decode(b"".join(enc.buffers), enc.encoding)
    if isinstance(value, np.ndarray):
        assert np.array_equal(np.asarray(out), np.asarray(value))
    else:
        assert _same(out, value)


def test_subclasses_of_json_types_are_not_json() -> None:
    class Color(enum.IntEnum):
        RED = 1

    class Name(str):
        pass

    for value in (Color.RED, Name("x"), [Color.RED], {"k": Name("v")}):
        enc = encode(value)
        assert enc.encoding == "pickle"
        out = decode(enc.to_bytes(), "pickle")
        assert out == value and type(out) is type(value)


def test_json_text_is_deterministic_and_keeps_dict_order() -> None:
    assert encode({"b": 1, "a": "é", "c": [True, None, 1.0]}).to_bytes() == \
        '{"b":1,"a":"é","c":[true,null,1.0]}'.encode()
    assert encode(-0.0).to_bytes() == b"-0.0" and encode(10**30).to_bytes() == b"1" + b"0" * 30
    # agrees with the stdlib encoder configured the documented way
    v = {"z": [1, 2.5e-300, "\u2603\n\"q\""], "a": {"y": None, "x": 1}}
    assert encode(v).to_bytes() == json.dumps(v, separators=(",", ":"),
                                               ensure_ascii=False).encode()
    out = decode(encode(v).to_bytes(), "json")
    assert list(out) == ["z", "a"] and list(out["a"]) == ["y", "x"]
    # the order is part of the value: another order, another content hash
    assert encode({"a": 1, "b": 2}).content_hash != encode({"b": 2, "a": 1}).content_hash


def test_awkward_values_fall_back_to_pickle() -> None:
    def nested(depth: int) -> list:
        v: list = []
        for _ in range(depth):
            v = [v]
        return v
    cyclic: list = [1]
    cyclic.append(cyclic)
    huge_int = 10 ** 5000  # above Python's int/str digit limit
    for value in ("\ud800", huge_int, cyclic):
        enc = encode(value)
        assert enc.encoding == "pickle"
    assert decode(encode(huge_int).to_bytes(), "pickle") == huge_int
    assert encode(nested(300)).encoding == "json"
    assert decode(encode(nested(300)).to_bytes(), "json") == nested(300)
    with pytest.raises(ValidationError, match="cannot encode"):
        encode(nested(100_000))
    with pytest.raises(ValidationError, match="lock"):
        encode(threading.Lock())


def test_large_threshold_marks_large_objects() -> None:
    assert encode(b"x" * 100, large_threshold=99).data_type is DataType.LARGE_OBJECT
    assert encode(b"x" * 99, large_threshold=99).data_type is DataType.BINARY
    assert encode(np.zeros(100), large_threshold=100).data_type is DataType.LARGE_OBJECT
    assert encode(list(range(100)), large_threshold=10).data_type is DataType.LARGE_OBJECT


def test_typed_hash_separates_encodings() -> None:
    # b'1' and 1 encode to the same bytes, so their content hashes collide by design ...
    assert encode(b"1").content_hash == encode(1).content_hash
    # ... and their typed hashes do not.
    assert encode(b"1").typed_hash != encode(1).typed_hash
    assert encode(1).typed_hash == typed_hash("json", content_hash(1))


def test_to_metadata_records_encoding() -> None:
    enc = encode({"a": 1})
    meta = enc.to_metadata("key", {"dag_id": "d"})
    assert (meta.node_id, meta.data_type, meta.size) == ("key", DataType.NESTED, enc.size)
    assert meta.content_hash == enc.content_hash
    assert meta.metadata == {"dag_id": "d", "encoding": "json"}


def test_unknown_encoding() -> None:
    with pytest.raises(ValidationError):
        decode(b"x", "yaml")


# ---------------------------------------------------------------------------------- numpy

@pytest.mark.parametrize("arr", [
    np.arange(24, dtype=np.int16).reshape(2, 3, 4),
    np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    np.arange(20)[::3],
    np.zeros((0, 5)),
    np.array(7.5),
    np.array(["ab", "c"]),
    np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", ">f8")]),
    np.arange(4, dtype=">u4"),
    np.array(["2024-01-01"], dtype="datetime64[D]"),
    np.array([True, False]),
    np.array([1 + 2j]),
])
def test_npy_round_trip_and_standard_format(arr: np.ndarray) -> None:
    enc = encode(arr)
    assert enc.encoding == "npy" and len(enc.buffers) == 2
    data = enc.to_bytes()
    out = decode(data, "npy")
    assert out.dtype == arr.dtype and out.shape == arr.shape and np.array_equal(out, arr)
    assert not out.flags.writeable
    assert np.array_equal(np.load(io.BytesIO(data)), arr)       # readable by numpy itself
    buf = io.BytesIO()
    np.save(buf, arr)
    assert np.array_equal(decode(buf.getvalue(), "npy"), arr)  # reads what numpy writes
    assert len(enc.buffers[0]) % 64 == 0


def test_npy_encode_is_zero_copy() -> None:
    arr = np.ones((1000, 1000))
    header, body = encode(arr).buffers
    assert isinstance(body, memoryview) and len(header) < 200
    assert np.shares_memory(np.frombuffer(body, dtype=np.uint8), arr)
    f = np.asfortranarray(arr)  # only a non-C-contiguous array is copied
    assert not np.shares_memory(np.frombuffer(encode(f).buffers[1], dtype=np.uint8), f)


def test_npy_decode_is_zero_copy() -> None:
    data = bytearray(encode(np.arange(1000.0)).to_bytes())
    out = decode(memoryview(data), "npy")
    assert np.shares_memory(out, np.frombuffer(data, dtype=np.uint8)) and not out.flags.writeable


@pytest.mark.parametrize("n", [3, 20_000], ids=["small", "large"])
def test_structured_fields_out_of_offset_order_are_pickled(n: int) -> None:
    # A multi-field index gives a view whose fields are out of offset order: a .npy header
    # cannot describe that dtype (numpy raises ValueError), so it is pickled, dtype and all.
    a = np.zeros(n, dtype=[("a", "<i4"), ("b", "<f8")])
    a["a"], a["b"] = np.arange(n), np.arange(n) / 2
    v = a[["b", "a"]]
    enc = encode(v)
    assert enc.encoding in ("pickle", "pickle5")
    out = decode(enc.to_bytes(), enc.encoding)
    assert out.dtype == v.dtype and np.array_equal(out, v)
    assert list(out["b"]) == list(np.arange(n) / 2)
    assert content_hash(v) == enc.content_hash         # same value, same bytes


def test_npy_same_array_same_hash() -> None:
    a = np.arange(100.0).reshape(10, 10)
    assert content_hash(a) == content_hash(a.copy()) == content_hash(np.asfortranarray(a))
    assert content_hash(a) != content_hash(a.astype(np.float32))


def test_malformed_npy_is_refused() -> None:
    good = encode(np.arange(10)).to_bytes()
    for bad in (b"not npy at all", good[:-3], good[:6] + b"\x09" + good[7:]):
        with pytest.raises(ValidationError):
            decode(bad, "npy")


def test_numpy_not_imported_by_encode() -> None:
    code = ("import sys; from twingraph.serialization import encode, content_hash;"
            "encode({'a': [1, 2]}); encode(b'x'); encode((1, 2)); content_hash('s');"
            "assert 'numpy' not in sys.modules, 'numpy imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_encoded_hash_is_computed_once_over_all_buffers() -> None:
    enc = encode(b"abc" * 10)
    assert enc.content_hash is enc.content_hash
    assert isinstance(enc, Encoded)
    parts = Encoded("bytes", enc.data_type, (b"ab", memoryview(b"c" * 5)), 7)
    assert parts.content_hash == hashlib.sha256(b"abccccc").hexdigest()
    with pytest.raises(AttributeError):       # slotted: no stray attributes
        parts.extra = 1  # type: ignore[attr-defined]
    # equal by what they encode, whatever holds the bytes
    assert parts == Encoded("bytes", enc.data_type, (b"abccccc",), 7)
    assert len({parts, Encoded("bytes", enc.data_type, (bytearray(b"abccccc"),), 7)}) == 1
    assert encode({"a": 1}) == encode({"a": 1}) and encode(1) != encode(2)
    assert encode(b"1") != encode(1)                  # same bytes, another encoding


def test_pickle5_keeps_large_buffers_out_of_band_and_round_trips():
    np = pytest.importorskip("numpy")
    big = np.arange(100_000, dtype=np.float64)
    value = {"arr": big, "small": np.arange(3), "name": ("t", 1)}
    enc = encode(value)
    assert enc.encoding == "pickle5"
    # the big array travels as a view of its own memory, not a copy
    assert any(isinstance(b, memoryview) and np.shares_memory(np.asarray(b), big)
               for b in enc.buffers)
    data = b"".join(bytes(b) for b in enc.buffers)
    assert len(data) == enc.size
    out = decode(data, "pickle5")
    assert np.array_equal(out["arr"], big) and out["name"] == ("t", 1)
    assert np.shares_memory(out["arr"], np.frombuffer(data, dtype=np.uint8))   # view, not copy


def test_small_values_hash_the_same_through_either_sha256() -> None:
    """Below ``SMALL_HASH`` bytes the content hash goes through CPython's own SHA-256 (faster
    for a few bytes), above it through OpenSSL's: the same digests either way."""
    import hashlib

    from twingraph.core.hashing import SMALL_HASH, sha256_hex
    from twingraph.serialization import content_hash
    for n in (0, 1, 5, SMALL_HASH - 1, SMALL_HASH, SMALL_HASH + 1, 5000):
        data = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
        assert sha256_hex(data) == hashlib.sha256(data).hexdigest()
    for value in (12345, "small", "x" * 300, [1, 2, 3]):
        assert content_hash(value) == encode(value).content_hash == \
            hashlib.sha256(encode(value).to_bytes()).hexdigest()
