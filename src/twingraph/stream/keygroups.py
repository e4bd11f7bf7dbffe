"""Key groups: how keyed state is partitioned, and rescaled, across parallel subtasks.

As in Flink, every key falls into one of ``max_parallelism`` key groups, fixed for the life of a
job (it is recorded in every checkpoint). A subtask of an operator with parallelism ``p`` owns the
contiguous range of key groups ``kg`` with ``kg * p // max_parallelism == subtask_index``, so on
restore with another parallelism whole key groups move between subtasks and no key is split.

The hash must be the same in every process and on every run, so Python's salted ``hash()`` is out:
keys are turned into canonical bytes (str, bytes, int, float, bool, None and tuples of those) and
hashed with CRC-32 (C speed), then mixed with Murmur3's 32-bit finalizer so that neighbouring keys
spread evenly over the groups.

Keys that Python holds equal are one key: ``1``, ``True`` and ``1.0`` share a state entry in a
dict, so they must also go to the same subtask. ``canonical_key`` turns a bool and a float
with an integral value into the int it equals (in tuples too) before the bytes are taken; the
bytes of every other key are what they always were, so existing checkpoints keep their groups.
"""

from __future__ import annotations

from typing import Any
from zlib import crc32

from twingraph.errors import StreamError

DEFAULT_MAX_PARALLELISM = 128

_SCALARS = (str, int, float, bool, type(None), bytes)


def canonical_key(key: Any) -> Any:
    """The one representative of the keys Python holds equal to ``key``: a bool or a float with
    an integral value becomes that int (``True`` -> 1, ``2.0`` -> 2, ``-0.0`` -> 0), in tuples
    too; every other key is returned as it is (the same object when nothing changes)."""
    t = type(key)
    if t is bool:
        return int(key)
    if t is float:
        return int(key) if key.is_integer() else key
    if t is tuple:
        parts = [canonical_key(p) for p in key]
        if any(a is not b for a, b in zip(parts, key)):
            return tuple(parts)
    return key


def key_bytes(key: Any) -> bytes:
    """Canonical bytes of a key (equal keys, equal bytes: ``canonical_key``); raises
    ``StreamError`` for keys without a stable form."""
    t = type(key)
    if t is str:
        return key.encode()
    if t is bytes:
        return b"b" + key
    if t in _SCALARS:
        return repr(canonical_key(key)).encode()
    if t is tuple:
        for part in key:
            key_bytes(part)  # validates every part
        return repr(canonical_key(key)).encode()
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
