"""Keyed state: the document's ValueState / ListState / MapState over a pluggable backend.

A backend holds named *tables*, each a mutable mapping from ``(key, namespace)`` to a value: the
runtime sets the current key before calling user code, and the state primitives read and write
under it. ``namespace`` is the window for window contents, ``None`` for user state.

Backends:

- :class:`MemoryStateBackend` — plain dicts (the fast default).
- :class:`SQLiteStateBackend` — one SQLite file per operator subtask in a local working directory,
  with a bounded write-back cache in front, for state larger than memory. Rows carry their key
  group so a snapshot is an online SQLite backup of the file and a restore with a different
  parallelism copies just the key-group range a subtask owns.

Serialization: keys and values are pickled (checkpoint files of the memory backend use
``marshal`` instead when the state holds only built-in types: it is faster). Snapshots are written to, and only ever read back
from, the job's own checkpoint directory by the job's own process (never from a network request
or an uploaded file); the job manager's REST face never accepts state. That is the one place
TwinGraph unpickles stream state, and the reason the checkpoint directory must be trusted like the
job's code itself.
"""

from __future__ import annotations

import marshal
import pickle
import sqlite3
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from twingraph.errors import CheckpointError, StateError
from twingraph.stream.keygroups import KeyGroupCache, canonical_key

_PROTO = 5
_DELETED = object()
#: ``KeyedStateStore.current_key`` outside a keyed element or timer (``None`` is a valid key)
NO_KEY: Any = object()


def dumps_state(state: Any) -> bytes:
    """Serialize state for a checkpoint file: ``marshal`` (3x faster than pickle) when the state
    holds only built-in types, else pickle; the first byte says which."""
    try:
        return b"M" + marshal.dumps(state, 4)
    except ValueError:
        return b"P" + pickle.dumps(state, protocol=_PROTO)


def loads_state(data: bytes) -> Any:
    """Read what ``dumps_state`` wrote — only ever from the job's own checkpoint directory."""
    if data[:1] == b"M":
        return marshal.loads(data[1:])
    if data[:1] == b"P":
        return pickle.loads(data[1:])
    raise CheckpointError("not a TwinGraph state file")


class MemoryStateBackend:
    """Tables are dicts. A snapshot pickles them as they are (one C call, no per-entry work on
    the hot checkpoint path); a restore keeps the entries whose key group the subtask owns."""

    kind = "memory"

    def __init__(self, max_parallelism: int) -> None:
        self.tables: dict[str, dict[Any, Any]] = {}
        self._kg = KeyGroupCache(max_parallelism)

    def table(self, name: str) -> MutableMapping[Any, Any]:
        t = self.tables.get(name)
        if t is None:
            t = self.tables[name] = {}
        return t

    def snapshot(self, path: Path) -> int:
        """Write the state to ``path``; returns its size in bytes."""
        data = dumps_state(self.tables)
        path.write_bytes(data)
        return len(data)

    def restore(self, paths: list[Path], key_groups: range) -> None:
        kg = self._kg
        for p in paths:
            tables = loads_state(p.read_bytes())  # our own checkpoint file, see module docstring
            for name, rows in tables.items():
                t = self.table(name)
                for k, v in rows.items():
                    if kg(k[0]) in key_groups:
                        t[k] = v

    def size_bytes_estimate(self) -> int:
        return sum(len(t) for t in self.tables.values()) * 100

    def close(self) -> None:
        self.tables.clear()


def _row_key(k: Any) -> tuple[bytes, bytes | None]:
    """A state entry's row key, and the pickle of ``k`` itself if the row key stands for
    another form of it (None otherwise; iteration gives back the key as it was written).

    The row key is the pickle of ``k`` with the user key part canonical (``1``, ``True`` and
    ``1.0`` are one dict key, so they are one row too: ``canonical_key``) and with equal strings,
    bytes and tuples inside it made one object: pickle writes an object it saw before as a
    reference, so ``("ab", "ab")`` gave other bytes when its two strings were two objects."""
    c = canonical_key(k)
    ok = None if c is k else pickle.dumps(k, _PROTO)
    if type(c) is tuple:
        c = _one_object_each(c, {})
    return pickle.dumps(c, _PROTO), ok


def _one_object_each(x: Any, seen: dict[Any, Any]) -> Any:
    t = type(x)
    if t is tuple:
        x = tuple([_one_object_each(p, seen) for p in x])
    elif t is not str and t is not bytes:
        return x
    try:
        return seen.setdefault((t, x), x)
    except TypeError:            # unhashable inside a tuple: pickled as it is
        return x


class _SQLiteTable(MutableMapping[Any, Any]):
    def __init__(self, backend: SQLiteStateBackend, name: str) -> None:
        self.b, self.sql_name = backend, '"t_' + name.replace('"', "") + '"'
        # ``ok``: the key as written when ``k`` holds another form of it (``_row_key``).
        backend.conn.execute(f"CREATE TABLE IF NOT EXISTS {self.sql_name} "
                             "(k BLOB PRIMARY KEY, kg INTEGER NOT NULL, v BLOB NOT NULL, ok BLOB)")
        self.cache: dict[Any, Any] = {}
        self.dirty: set[Any] = set()

    def __getitem__(self, k: Any) -> Any:
        v = self.cache.get(k, None)
        if v is None and k not in self.cache:
            row = self.b.conn.execute(f"SELECT v FROM {self.sql_name} WHERE k=?",
                                      (_row_key(k)[0],)).fetchone()
            v = _DELETED if row is None else pickle.loads(row[0])
            self._put_cache(k, v, dirty=False)
        if v is _DELETED:
            raise KeyError(k)
        return v

    def __setitem__(self, k: Any, v: Any) -> None:
        self._put_cache(k, v, dirty=True)

    def __delitem__(self, k: Any) -> None:
        self._put_cache(k, _DELETED, dirty=True)

    def _put_cache(self, k: Any, v: Any, *, dirty: bool) -> None:
        if len(self.cache) >= self.b.cache_size and k not in self.cache:
            self.flush()
            self.cache.clear()
        self.cache[k] = v
        if dirty:
            self.dirty.add(k)

    def flush(self) -> None:
        if not self.dirty:
            return
        kg, ups, dels = self.b.kg, [], []
        for k in self.dirty:
            v = self.cache[k]
            kb, ok = _row_key(k)
            if v is _DELETED:
                dels.append((kb,))
            else:
                ups.append((kb, kg(k[0]), pickle.dumps(v, _PROTO), ok))
        with self.b.conn:
            self.b.conn.executemany(f"DELETE FROM {self.sql_name} WHERE k=?", dels)
            # An entry written again keeps the key it was first written with, as a dict does.
            self.b.conn.executemany(f"INSERT INTO {self.sql_name} VALUES (?,?,?,?) ON CONFLICT(k) "
                                    "DO UPDATE SET kg=excluded.kg, v=excluded.v", ups)
        self.dirty.clear()

    def __iter__(self) -> Iterator[Any]:
        self.flush()
        for kb, ok in self.b.conn.execute(f"SELECT k, ok FROM {self.sql_name}").fetchall():
            yield pickle.loads(kb if ok is None else ok)

    def __len__(self) -> int:
        self.flush()
        return int(self.b.conn.execute(f"SELECT count(*) FROM {self.sql_name}").fetchone()[0])

    def clear(self) -> None:
        self.cache.clear()
        self.dirty.clear()
        with self.b.conn:
            self.b.conn.execute(f"DELETE FROM {self.sql_name}")


class SQLiteStateBackend:
    """Durable state in a SQLite file under ``workdir``; holds only ``cache_size`` rows per table in memory."""

    kind = "sqlite"

    def __init__(self, max_parallelism: int, path: Path, cache_size: int = 10_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        self.path, self.cache_size = path, cache_size
        self.conn = sqlite3.connect(str(path), isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=OFF")  # the checkpoint, not this file, is what is durable
        self.kg = KeyGroupCache(max_parallelism)
        self.tables: dict[str, _SQLiteTable] = {}

    def table(self, name: str) -> MutableMapping[Any, Any]:
        return self._table(name)

    def _table(self, name: str) -> _SQLiteTable:
        t = self.tables.get(name)
        if t is None:
            t = self.tables[name] = _SQLiteTable(self, name)
        return t

    def snapshot(self, path: Path) -> int:
        for t in self.tables.values():
            t.flush()
        dst = sqlite3.connect(str(path))
        try:
            self.conn.backup(dst)
        finally:
            dst.close()
        return path.stat().st_size

    def restore(self, paths: list[Path], key_groups: range) -> None:
        for i, p in enumerate(paths):
            alias = f"old{i}"
            self.conn.execute(f"ATTACH DATABASE ? AS {alias}", (str(p),))
            try:
                names = [r[0] for r in self.conn.execute(
                    f"SELECT name FROM {alias}.sqlite_master WHERE type='table' AND name LIKE 't_%'")]
                for sql_name in names:
                    t = self._table(sql_name[2:])
                    cols = [r[1] for r in self.conn.execute(
                        f"PRAGMA {alias}.table_info(\"{sql_name}\")")]
                    ok = "ok" if "ok" in cols else "NULL"     # written before the ok column
                    with self.conn:
                        self.conn.execute(
                            f"INSERT OR REPLACE INTO {t.sql_name} SELECT k, kg, v, {ok} "
                            f"FROM {alias}.\"{sql_name}\" WHERE kg >= ? AND kg < ?",
                            (key_groups.start, key_groups.stop))
            except sqlite3.Error as exc:
                raise CheckpointError(f"cannot restore SQLite state from {p}: {exc}") from exc
            finally:
                self.conn.execute(f"DETACH DATABASE {alias}")

    def size_bytes_estimate(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def close(self) -> None:
        self.conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)


StateBackend = MemoryStateBackend | SQLiteStateBackend


class KeyedStateStore:
    """What user code receives as ``state_backend``: the backend plus the current key."""

    __slots__ = ("backend", "current_key", "_names")

    def __init__(self, backend: StateBackend) -> None:
        self.backend = backend
        self.current_key: Any = NO_KEY
        self._names: dict[str, str] = {}

    def user_table(self, name: str, kind: str) -> MutableMapping[Any, Any]:
        prev = self._names.setdefault(name, kind)
        if prev != kind:
            raise StateError(f"state {name!r} is already declared as {prev}, not {kind}")
        return self.backend.table("u_" + name)

    def _check(self) -> Any:
        if self.current_key is NO_KEY:
            raise StateError("keyed state is only available while processing a keyed element or timer")
        return self.current_key


class ValueState:
    """One value per key: ``update``, ``get`` (None if unset), ``clear``."""

    def __init__(self, state_backend: KeyedStateStore, key: str) -> None:
        self._s, self._t = state_backend, state_backend.user_table(key, "value")

    def get(self) -> Any:
        return self._t.get((self._s._check(), None))

    def update(self, value: Any) -> None:
        self._t[(self._s._check(), None)] = value

    def clear(self) -> None:
        self._t.pop((self._s._check(), None), None)


class ListState:
    """A list per key: ``add``, ``add_all``, ``get`` (a list, empty if unset), ``clear``."""

    def __init__(self, state_backend: KeyedStateStore, key: str) -> None:
        self._s, self._t = state_backend, state_backend.user_table(key, "list")

    def get(self) -> list[Any]:
        return list(self._t.get((self._s._check(), None)) or [])

    def add(self, value: Any) -> None:
        self.add_all([value])

    def add_all(self, values: list[Any]) -> None:
        k = (self._s._check(), None)
        cur = self._t.get(k)
        self._t[k] = (cur or []) + list(values)

    def clear(self) -> None:
        self._t.pop((self._s._check(), None), None)


class MapState:
    """A map per key: ``put``, ``get``, ``remove``, ``contains``, ``items``, ``keys``, ``values``, ``clear``."""

    def __init__(self, state_backend: KeyedStateStore, key: str) -> None:
        self._s, self._t = state_backend, state_backend.user_table(key, "map")

    def _map(self) -> dict[Any, Any]:
        return self._t.get((self._s._check(), None)) or {}

    def put(self, map_key: Any, map_value: Any) -> None:
        m = dict(self._map())
        m[map_key] = map_value
        self._t[(self._s.current_key, None)] = m

    def get(self, map_key: Any) -> Any:
        return self._map().get(map_key)

    def remove(self, map_key: Any) -> None:
        m = dict(self._map())
        m.pop(map_key, None)
        k = (self._s.current_key, None)
        if m:
            self._t[k] = m
        else:
            self._t.pop(k, None)

    def contains(self, map_key: Any) -> bool:
        return map_key in self._map()

    def items(self) -> list[tuple[Any, Any]]:
        return list(self._map().items())

    def keys(self) -> list[Any]:
        return list(self._map())

    def values(self) -> list[Any]:
        return list(self._map().values())

    def clear(self) -> None:
        self._t.pop((self._s._check(), None), None)
