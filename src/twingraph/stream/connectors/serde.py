"""How the Kafka and Redis Streams connectors turn records into bytes and back.

Nothing read from a broker is ever unpickled. A connector decodes what it reads with one of three
formats or with the user's own callable:

* ``"bytes"``: the raw bytes, untouched;
* ``"str"``: UTF-8 text;
* ``"json"``: ``json.loads`` of the UTF-8 text.

Writing, the default :func:`to_bytes` keeps ``bytes`` as they are, encodes ``str`` as UTF-8 and
everything else as compact JSON (a value JSON cannot express raises ``StreamError``). A user may
pass any ``serializer(record) -> bytes`` instead.

Checkpoint state must be JSON, so buffered output travels in it as base64 text (:func:`b64`).
"""

from __future__ import annotations

import base64
import json
import sys
from array import array
from collections.abc import Callable
from typing import Any

from twingraph.errors import StreamError

FORMATS = ("bytes", "str", "json")

Serializer = Callable[[Any], bytes]
Deserializer = Callable[[bytes], Any]


def to_bytes(record: Any) -> bytes:
    """bytes as they are, str as UTF-8, anything else as compact JSON."""
    if isinstance(record, bytes):
        return record
    if isinstance(record, bytearray | memoryview):
        return bytes(record)
    if isinstance(record, str):
        return record.encode()
    try:
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        raise StreamError(
            f"cannot serialize a {type(record).__name__} record as JSON; pass serializer=... "
            "to the sink") from exc


def _decode_str(data: bytes) -> str:
    return data.decode()


def _decode_json(data: bytes) -> Any:
    return json.loads(data)


def _identity(data: bytes) -> bytes:
    return data


def deserializer_for(value_format: str, deserializer: Deserializer | None) -> Deserializer:
    """The user's callable if given, else the decoder of ``value_format`` (bytes, str, json)."""
    if deserializer is not None:
        return deserializer
    if value_format == "bytes":
        return _identity
    if value_format == "str":
        return _decode_str
    if value_format == "json":
        return _decode_json
    raise StreamError(f"value_format must be one of {FORMATS}, not {value_format!r}")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


_NONE = 0xFFFFFFFF
_U32 = next(t for t in "IL" if array(t).itemsize == 4)


def pack_frames(items: list[bytes | None]) -> str:
    """Many byte strings (or None) as one base64 text: a count, the lengths, then the bytes.

    Layout: 4-byte big-endian count n, n 4-byte big-endian lengths (0xFFFFFFFF for None), the
    concatenated bytes. A few C-level calls per checkpoint instead of one base64 call per record
    keeps buffered output cheap to put into JSON checkpoint state.
    """
    lengths = array(_U32, (_NONE if x is None else len(x) for x in items))
    if sys.byteorder == "little":
        lengths.byteswap()
    body = b"".join(x for x in items if x is not None)
    return b64(len(items).to_bytes(4, "big") + lengths.tobytes() + body)


def unpack_frames(text: str) -> list[bytes | None]:
    """Inverse of :func:`pack_frames`; StreamError on truncated or malformed input."""
    data = unb64(text)
    if len(data) < 4:
        raise StreamError("malformed frame block in checkpoint state")
    n = int.from_bytes(data[:4], "big")
    head = 4 + 4 * n
    if len(data) < head:
        raise StreamError("malformed frame block in checkpoint state")
    lengths = array(_U32)
    lengths.frombytes(data[4:head])
    if sys.byteorder == "little":
        lengths.byteswap()
    out: list[bytes | None] = []
    i = head
    for size in lengths:
        if size == _NONE:
            out.append(None)
            continue
        out.append(data[i:i + size])
        i += size
    if i != len(data):
        raise StreamError("malformed frame block in checkpoint state")
    return out
