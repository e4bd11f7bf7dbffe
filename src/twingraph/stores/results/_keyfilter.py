"""Which keys a SQLite result store may hold, answered in memory: memo lookups that must miss
skip the query.

Why: a cold run's memo lookups all miss, and in a deep graph they come one at a time (a node's
key needs its producer's content hash). Each is a SQLite query on the scheduling thread, and
each query gives up the GIL and waits to take it back from the writer thread: that wait, not
SQLite, was ~35 % of a large DAG's time (decision 0010).

``KeyFilter`` is a scalable Bloom filter over ``hash(key)`` (Python's per-process string hash:
nothing here is persisted). It has no false negatives: a key added is always "maybe"; a key
never added is "maybe" with a small probability (under 0.1 % per layer at its capacity), and
those lookups just run the query as before.

``KeyIndex`` keeps one filter in step with one database file, shared by every ``SQLiteStorage``
of this process on that file (``index_for``):
- it is built on the first memo lookup that misses (a run of hits never needs it), by one scan
  on a thread of its own; until it is ready every lookup queries;
- this process's writes add their keys before their transaction commits, so a lookup here never
  misses a result this process stored;
- other processes' writes are read back (rows past the last rowid seen; the table's rowids
  are AUTOINCREMENT, never given out twice, so a new row is always past them) before a lookup when
  ``SYNC_EVERY`` seconds have passed: a result another process committed is found by lookups
  starting at most that long after its commit — the same as a lookup that ran a moment earlier.
  Once this process's results are written by its writer process (``note_elsewhere``; decision
  0012) the interval is ``SYNC_EVERY_OFFLOADED``: those rows are noted before they commit and
  skipped once their rowids come back, but a sync in between would read them all again.
Any error while building or syncing switches the index off (lookups query again).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["KeyFilter", "KeyIndex", "NoIndex", "index_for", "release", "SYNC_EVERY", "SYNC_EVERY_OFFLOADED"]

_MASK64 = (1 << 64) - 1
# 3 probes at 20 bits a key: ~0.3 % false positives at capacity (each one a query that finds
# nothing). Probes are Python bytecode, run once per key written and per key looked up: 3 cost
# half of the 6 that 16 bits a key needed for ~0.09 %.
_BITS_PER_KEY = 20
_FIRST_CAPACITY = 1 << 18      # 640 KiB: one layer up to 262,144 keys
#: Each new layer holds this many times the capacity of all layers before it: a non-member
#: is looked up in every layer, so a million keys in 2 layers, not 5.
_GROWTH = 3

#: Seconds between two reads of rows other processes committed.
SYNC_EVERY = 0.05
#: ... once a writer process writes this process's results.
SYNC_EVERY_OFFLOADED = 1.0


class KeyFilter:
    """A scalable Bloom filter of strings: ``add`` and ``may_contain``; no false negatives.
    ``add`` is thread-safe; ``may_contain`` takes no lock (bits only ever turn on)."""

    __slots__ = ("_layers", "_count", "_capacity", "_lock")

    def __init__(self, capacity: int = _FIRST_CAPACITY) -> None:
        self._layers: list[tuple[bytearray, int]] = []     # (bits, how many)
        self._count = 0
        self._capacity = 0
        self._lock = threading.Lock()
        self._grow(max(1024, capacity))

    def _grow(self, capacity: int) -> None:
        nbytes = -(-capacity * _BITS_PER_KEY // 8)
        self._layers.append((bytearray(nbytes), nbytes * 8))
        self._capacity += capacity

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b, _ in self._layers)

    def add(self, key: str) -> None:
        self.add_many((key,))

    def add_many(self, keys: Iterable[str]) -> None:
        with self._lock:
            bits, m = self._layers[-1]
            count, capacity = self._count, self._capacity
            for key in keys:
                if count >= capacity:
                    self._count = count
                    self._grow(_GROWTH * capacity)
                    capacity = self._capacity
                    bits, m = self._layers[-1]
                h = hash(key) & _MASK64
                b = (h >> 32) | 1
                i = h % m
                bits[i >> 3] |= 1 << (i & 7)
                i = (h + b) % m
                bits[i >> 3] |= 1 << (i & 7)
                i = (h + b + b) % m
                bits[i >> 3] |= 1 << (i & 7)
                count += 1
            self._count = count

    def may_contain(self, key: str) -> bool:
        return bool(self.maybe((key,)))

    def maybe(self, keys: Iterable[str]) -> list[str]:
        """The keys that may have been added (every added key is among them)."""
        out = []
        layers = self._layers
        for key in keys:
            h = hash(key) & _MASK64
            b = (h >> 32) | 1
            for bits, m in layers:
                i = h % m
                if bits[i >> 3] & (1 << (i & 7)):
                    i = (h + b) % m
                    if bits[i >> 3] & (1 << (i & 7)):
                        i = (h + b + b) % m
                        if bits[i >> 3] & (1 << (i & 7)):
                            out.append(key)
                            break
        return out


class KeyIndex:
    """A ``KeyFilter`` kept in step with one SQLite file's ``node_results`` (see the module)."""

    def __init__(self, path: str, busy_timeout: float = 30.0) -> None:
        self._path, self._timeout = path, busy_timeout
        self.users = 0                       # open stores on the file (``index_for``)
        self.filter = KeyFilter()
        self.ready = False
        self._state = "idle"                 # idle -> building -> ready | off
        self._last_rowid = 0
        self._last_sync = 0.0
        self.sync_every = SYNC_EVERY
        self._sync_lock = threading.Lock()
        self._rowid_lock = threading.Lock()
        self._state_lock = threading.Lock()

    @property
    def state(self) -> str:
        return self._state

    # -- writers ---------------------------------------------------------------------------
    def add_many(self, keys: Iterable[str]) -> None:
        """Keys this process is about to commit (called before the transaction)."""
        self.filter.add_many(keys)

    def note_elsewhere(self, keys: Iterable[str]) -> None:
        """Keys a writer process is about to commit for this process (``add_many``); from now
        on the index syncs every ``SYNC_EVERY_OFFLOADED`` seconds."""
        self.sync_every = SYNC_EVERY_OFFLOADED
        self.filter.add_many(keys)

    def wrote(self, before: int, after: int) -> None:
        """A write transaction of this process saw the highest rowid go from ``before`` to
        ``after``. Holding the write lock, it made every row in between (keys added already):
        if the index had read up to ``before``, a sync need not read them back."""
        with self._rowid_lock:
            if self._last_rowid >= before:
                self._last_rowid = max(self._last_rowid, after)

    # -- readers ---------------------------------------------------------------------------
    def candidates(self, keys: Sequence[str], conn: sqlite3.Connection) -> Sequence[str]:
        """The keys a query must still look up: all of them until the index is ready, then
        those the filter cannot rule out (after reading other processes' new rows if due)."""
        if not self.ready:
            return keys
        if time.monotonic() - self._last_sync >= self.sync_every:
            self._sync(conn)
            if not self.ready:
                return keys
        return self.filter.maybe(keys)

    def rules_out(self, key: str) -> bool:
        """True only if ``key`` is certainly not stored: the index is ready and not due for a
        sync, and its filter never saw the key. A lone key's lookup (a deep graph's, one per
        node) then needs no connection and no query."""
        if not self.ready or time.monotonic() - self._last_sync >= self.sync_every:
            return False
        return not self.filter.maybe((key,))

    def missed(self) -> None:
        """A lookup missed: build the index if nobody has yet (on a thread of its own)."""
        if self._state != "idle":
            return
        with self._state_lock:
            if self._state != "idle":
                return
            self._state = "building"
        threading.Thread(target=self._build, name="twingraph-keyindex", daemon=True).start()

    def _build(self) -> None:
        try:
            conn = sqlite3.connect(self._path, timeout=self._timeout)
            try:
                last = 0
                cur = conn.execute("SELECT rowid, node_id FROM node_results")
                add = self.filter.add_many
                while True:
                    rows = cur.fetchmany(4096)
                    if not rows:
                        break
                    last = max(last, max(r[0] for r in rows))
                    add([r[1] for r in rows])
            finally:
                conn.close()
            with self._rowid_lock:
                self._last_rowid = max(self._last_rowid, last)
            self._last_sync = 0.0          # the first lookup reads what landed meanwhile
            with self._state_lock:
                if self._state == "building":
                    self._state, self.ready = "ready", True
        except Exception:  # noqa: BLE001 - e.g. the file went away: lookups just query
            self.off()

    def _sync(self, conn: sqlite3.Connection) -> None:
        with self._sync_lock:                # a lookup waits for a sync in progress elsewhere
            started = time.monotonic()
            if started - self._last_sync < self.sync_every:
                return                       # that other sync was recent enough
            try:
                rows = conn.execute("SELECT rowid, node_id FROM node_results WHERE rowid > ?",
                                    (self._last_rowid,)).fetchall()
                if rows:
                    self.filter.add_many([r[1] for r in rows])
                    high = max(r[0] for r in rows)
                    with self._rowid_lock:
                        self._last_rowid = max(self._last_rowid, high)
                self._last_sync = started    # what was committed before the query is in
            except sqlite3.Error:
                self.off()

    def off(self) -> None:
        with self._state_lock:
            self._state, self.ready = "off", False


class NoIndex:
    """No index, for a store that never looks keys up (the writer process's, decision 0012):
    every key may be stored, and writes note nothing."""

    ready = False

    def add_many(self, keys: Iterable[str]) -> None:
        pass

    def note_elsewhere(self, keys: Iterable[str]) -> None:
        pass

    def wrote(self, before: int, after: int) -> None:
        pass

    def candidates(self, keys: Sequence[str], conn: sqlite3.Connection) -> Sequence[str]:
        return keys

    def rules_out(self, key: str) -> bool:
        return False

    def missed(self) -> None:
        pass


_indexes: weakref.WeakValueDictionary[tuple[int, int], KeyIndex] = weakref.WeakValueDictionary()
_indexes_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child starts with no index (its stores were given ``NoIndex``) and a lock no
    parent thread can hold."""
    global _indexes_lock
    _indexes_lock = threading.Lock()
    _indexes.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def index_for(path: Path, busy_timeout: float = 30.0) -> KeyIndex:
    """The process's ``KeyIndex`` of the database file at ``path``: shared by all stores open
    on that file, dropped with the last of them. Keyed by the file's identity, not its name: a
    file removed and created again under the same name starts over (rowids restart at 1)."""
    st = os.stat(path)
    ident = (st.st_dev, st.st_ino)
    with _indexes_lock:
        idx = _indexes.get(ident)
        if idx is None:
            idx = _indexes[ident] = KeyIndex(str(path.resolve()), busy_timeout)
        idx.users += 1
        return idx


def release(idx: KeyIndex | NoIndex) -> None:
    """A store on the file closed: with the last one the index leaves the registry (a file
    created later may get the same inode number, and must not find this index)."""
    if not isinstance(idx, KeyIndex):
        return
    with _indexes_lock:
        idx.users -= 1
        if idx.users <= 0:
            for ident, other in list(_indexes.items()):
                if other is idx:
                    del _indexes[ident]
            idx.off()
