"""Key groups: how keyed state is partitioned, and rescaled, across parallel subtasks.

As in Flink, every key falls into one of ``max_parallelism`` key groups, fixed for the life of a
job (it is recorded in every checkpoint). A subtask of an operator with parallelism ``p`` owns the
contiguous range of key groups ``kg`` with ``kg * p // max_parallelism == subtask_index``, so on
restore with another parallelism whole key groups move between subtasks and no key is split.

The hash must be the same in every process and on every run, so Python's salted ``hash()`` is out:
keys are turned into canonical bytes (str, bytes, int, float, bool, None and tuples of those) and
hashed with CRC-32 (C speed), then mixed with Murmur3's 32-bit finalizer so that neighbouring keys
spread evenly over the groups.
"""

from __future__ import annotations

from typing import Any
from zlib import crc32

from twingraph.errors import StreamError

DEFAULT_MAX_PARALLELISM = 128

_SCALARS = (str, int, float, bool, type(None), bytes)


def key_bytes(key: Any) -> bytes:
    """Canonical bytes of a key; raises ``StreamError`` for keys without a stable form."""
    t = type(key)
    if t is str:
        return key.encode()
    if t is bytes:
        return b"b" + key
    if t in _SCALARS:
        return repr(key).encode()
    if t is tuple:
        for part in key:
            key_bytes(part)  # validates every part
        return repr(key).encode()
    raise StreamError(
        f"key {key!r} of type {t.__name__} has no stable hash across processes; key_by must "
        "return str, bytes, int, float, bool, None or a tuple of those")


def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def key_group(key: Any, max_parallelism: int) -> int:
    """The key group (0 .. max_parallelism-1) of a key."""
    return _fmix32(crc32(key_bytes(key))) % max_parallelism


def subtask_for_key_group(kg: int, max_parallelism: int, parallelism: int) -> int:
    """The subtask that owns key group ``kg`` (Flink's operator-index formula)."""
    return kg * parallelism // max_parallelism


def key_group_range(subtask: int, max_parallelism: int, parallelism: int) -> range:
    """The key groups subtask ``subtask`` of ``parallelism`` owns."""
    start = (subtask * max_parallelism + parallelism - 1) // parallelism
    end = ((subtask + 1) * max_parallelism + parallelism - 1) // parallelism
    return range(start, end)


class KeyGroupCache:
    """Memoizes key -> key group for the hot path (bounded: cleared when it grows too large)."""

    __slots__ = ("_cache", "_maxp", "_limit")

    def __init__(self, max_parallelism: int, limit: int = 200_000) -> None:
        self._cache: dict[Any, int] = {}
        self._maxp = max_parallelism
        self._limit = limit

    def __call__(self, key: Any) -> int:
        kg = self._cache.get(key)
        if kg is None:
            if len(self._cache) >= self._limit:
                self._cache.clear()
            kg = self._cache[key] = key_group(key, self._maxp)
        return kg
