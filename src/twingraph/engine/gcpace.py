"""How runs pace Python's cyclic garbage collector (decision 0011).

A run allocates many objects that live as long as it does (a task and a future per node) and
makes almost no cyclic garbage: a 300,000-node DAG left ~6,000 objects for the collector in all.
The collector's passes over the survivors are pure cost; with it switched off that DAG ran ~10 %
faster. Switching it off is not safe (cycles made by user code would never be freed), so while
any run is active:

- the young generation is collected every ``RUN_THRESHOLD`` allocations instead of 700;
- ``tick()`` (the run loop calls it at every hand-over to the recorder, at least every 20 ms
  while busy) moves every object out of the collector's way (``gc.freeze``): no pass walks
  them again. Objects are still freed by reference counting as always; only cyclic garbage
  waits, for the next full collection;
- a full collection (``gc.unfreeze`` then ``gc.collect``) runs at a tick once ``FULL_EVERY``
  seconds have passed since the last one, or once the process has grown by more than it was
  then (at most ``GROWTH_CAP`` bytes; Linux, where the resident size can be read). The size is
  read at most every ``RSS_EVERY`` seconds: reading it is a file read, which gives up the GIL,
  and in a busy process taking it back took ~1 ms (the loop thread of a 200,000-node DAG waited
  there 4.5 % of its time when every 20 ms tick read it; other threads ran meanwhile, and the
  DAG's throughput was the same within noise). So cyclic garbage cannot pile up for long or grow
  the process much, even in a server whose runs never all end;
- the last run to end restores the threshold and puts everything back.

A process that had frozen objects itself when the first run started (a pre-fork server keeping
shared pages untouched), or had switched the collector off, is left as it is: runs then only
relax the threshold. So is a free-threaded build, where freezing walks the whole heap.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
import time
from collections.abc import Iterator

#: Young-generation threshold while runs are active (Python's default is 700).
RUN_THRESHOLD = 50_000
#: Seconds between two full collections at most.
FULL_EVERY = 60.0
#: Growth of the resident size since the last full collection that calls for the next one:
#: as much as the process had then, at most this many bytes.
GROWTH_CAP = 512 * 1024 * 1024
#: Seconds between two reads of the resident size at ticks.
RSS_EVERY = 1.0

_lock = threading.Lock()
_active = 0
_saved: tuple[int, int, int] | None = None
_freezing = False
_last_full = 0.0
_last_rss = 0.0
_rss_limit: int | None = None

try:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):    # not POSIX
    _PAGE = 0


def resident_bytes() -> int | None:
    """The process's resident size now (Linux), or None."""
    if not _PAGE:
        return None
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _collected(now: float) -> None:
    """Note a full collection (or the first run's start) at ``now``: the next one is due
    ``FULL_EVERY`` seconds later, or when the process has grown past ``_rss_limit``."""
    global _last_full, _rss_limit
    _last_full = now
    rss = resident_bytes()
    _rss_limit = None if rss is None else rss + min(rss, GROWTH_CAP)


def _full_collection(now: float) -> None:
    gc.unfreeze()
    gc.collect()
    _collected(now)


def run_started() -> None:
    """A run (or bulk work on a run's path) begins."""
    global _active, _saved, _freezing
    with _lock:
        if _active == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(max(_saved[0], RUN_THRESHOLD), *_saved[1:])
            _freezing = (gc.get_freeze_count() == 0 and gc.isenabled()
                         and getattr(sys, "_is_gil_enabled", lambda: True)())
            _collected(time.monotonic())
        _active += 1


def run_ended() -> None:
    global _active, _freezing
    with _lock:
        _active -= 1
        if _active == 0:
            if _saved is not None:
                gc.set_threshold(*_saved)
            if _freezing:
                _freezing = False
                gc.unfreeze()


def tick() -> None:
    """Freeze everything (while runs are active and the process left the collector as it is);
    a full collection first when one is due (``FULL_EVERY``, ``GROWTH_CAP``)."""
    global _last_rss
    if not _freezing:
        return
    with _lock:
        if not _freezing or not gc.isenabled():    # switched off since: leave it off
            return
        now = time.monotonic()
        if now - _last_full >= FULL_EVERY:
            _full_collection(now)
        elif _rss_limit is not None and now - _last_rss >= RSS_EVERY:
            _last_rss = now
            rss = resident_bytes()
            if rss is not None and rss > _rss_limit:
                _full_collection(now)
        gc.freeze()


@contextlib.contextmanager
def relaxed() -> Iterator[None]:
    """The run's pacing around other bulk work on a run's path (validating a 200,000-node DAG
    ran ~260 young-generation passes at the default threshold)."""
    run_started()
    try:
        yield
    finally:
        run_ended()
