"""How runs pace Python's cyclic garbage collector (decision 0011).

A run allocates many objects that live as long as it does (a task and a future per node) and
makes almost no cyclic garbage: a 300,000-node DAG left ~6,000 objects for the collector in all.
The collector's passes over the survivors are pure cost; with it switched off that DAG ran ~10 %
faster. Switching it off is not safe (cycles made by user code would never be freed), so while
any run is active:

- the young generation is collected every ``RUN_THRESHOLD`` allocations instead of 700;
- ``tick()`` (the run loop calls it at every hand-over to the recorder, at least every 20 ms
  while busy) moves the objects that survived so far out of the collector's way
  (``gc.freeze``): no later pass walks them again. Objects are still freed by reference
  counting as always; only cycles wait;
- every ``FULL_EVERY`` seconds ``tick()`` puts them back (``gc.unfreeze``) and runs one full
  collection, so a process whose runs never all end (a busy server) still frees its cycles;
- the last run to end restores the threshold and puts everything back.

A process that had frozen objects itself when the first run started (a pre-fork server keeping
shared pages untouched) keeps them frozen: runs then only relax the threshold.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Iterator

#: Young-generation threshold while runs are active (Python's default is 700).
RUN_THRESHOLD = 50_000
#: Seconds of freezing between two full collections.
FULL_EVERY = 60.0

_lock = threading.Lock()
_active = 0
_saved: tuple[int, int, int] | None = None
_freezing = False
_last_full = 0.0


def run_started() -> None:
    """A run (or bulk work on a run's path) begins."""
    global _active, _saved, _freezing, _last_full
    with _lock:
        if _active == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(max(_saved[0], RUN_THRESHOLD), *_saved[1:])
            _freezing = gc.get_freeze_count() == 0
            _last_full = time.monotonic()
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
    """Freeze what survived so far (while runs are active and this process froze nothing
    itself); once every ``FULL_EVERY`` seconds, a full collection first."""
    global _last_full
    if not _freezing:
        return
    with _lock:
        if not _freezing:
            return
        now = time.monotonic()
        if now - _last_full >= FULL_EVERY:
            _last_full = now
            gc.unfreeze()
            gc.collect()
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
