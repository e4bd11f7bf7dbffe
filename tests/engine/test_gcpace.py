"""GC pacing during runs (engine/gcpace.py, decision 0011): survivors are frozen while a run
is active, everything is put back when the last run ends, cycles are still freed, and a
process that froze objects itself keeps them frozen.

Nothing is faked: the collector, the engine and its stores are real. Tests set the time and
size triggers (``FULL_EVERY``, ``GROWTH_CAP``, the size limit since the last collection) so
that a full collection falls due on cue instead of after 60 s or 512 MiB, and ``RSS_EVERY``
(how often the size is read); one test wraps the real size read to count its calls."""
import gc
import threading
import weakref

import pytest

from twingraph import component, pipeline
from twingraph.engine import gcpace


class _Node:
    def __init__(self):
        self.me = self                     # a reference cycle: only the collector frees it


@pytest.fixture(autouse=True)
def _no_frozen_objects():
    gc.unfreeze()
    yield
    gc.unfreeze()


def _during(engine, probe):
    """Run a pipeline whose first task waits until ``probe()`` (called from the test thread
    while the run is active, after the loop's hand-overs) has run; returns the probe's value."""
    started, go = threading.Event(), threading.Event()

    @component(executor="thread")
    def wait_here(x):
        started.set()
        assert go.wait(10)
        return x

    @pipeline()
    def p():
        return wait_here(x=1)

    out = {}
    t = threading.Thread(target=lambda: out.update(r=p.run(engine=engine)))
    t.start()
    assert started.wait(10)
    try:
        out["probe"] = probe()
    finally:
        go.set()
        t.join(10)
    assert out["r"].state.value == "SUCCESS", out["r"].error
    return out["probe"]


def _wait_for_freeze():
    for _ in range(200):
        if gc.get_freeze_count() > 0:
            return gc.get_freeze_count()
        threading.Event().wait(0.01)
    return 0


def test_objects_surviving_in_a_run_are_frozen_and_put_back_when_it_ends(engine):
    before = gc.get_threshold()
    frozen = _during(engine, lambda: (_wait_for_freeze(), gc.get_threshold()[0]))
    assert frozen[0] > 0, "the loop's hand-overs froze nothing"
    assert frozen[1] >= gcpace.RUN_THRESHOLD
    assert gc.get_freeze_count() == 0                  # the last run put everything back
    assert gc.get_threshold() == before


def test_cyclic_garbage_that_grows_the_process_is_collected_at_the_next_tick(engine,
                                                                            monkeypatch):
    monkeypatch.setattr(gcpace, "GROWTH_CAP", 16 * 1024 * 1024)
    monkeypatch.setattr(gcpace, "RSS_EVERY", 0.0)      # every tick reads the size

    def probe():
        assert _wait_for_freeze() > 0
        for _ in range(5):
            limit = gcpace._rss_limit = gcpace.resident_bytes() + gcpace.GROWTH_CAP  # as if
            node = _Node()                                                # just collected
            ref = weakref.ref(node)
            gcpace.tick()                                  # no growth yet: frozen while alive
            node.payload = bytearray(64 * 1024 * 1024)     # then it grows 64 MiB (touched) ...
            node.payload[::4096] = b"x" * len(node.payload[::4096])
            del node                                       # ... and becomes garbage, frozen
            gc.collect()
            frozen_garbage = ref() is not None
            if gcpace._rss_limit != limit:
                # the run loop's own tick (at a hand-over) collected meanwhile and moved the
                # limit above the growth: a slow machine's turn; taken again
                continue
            gcpace.tick()                                  # the process grew 64 MiB > 16: collect
            return frozen_garbage, ref() is None
        return "the loop's ticks kept interfering", None
    assert _during(engine, probe) == (True, True)


def test_ticks_read_the_resident_size_at_most_every_rss_every_seconds(engine, monkeypatch):
    # Reading it gives up the GIL; taking it back from busy threads is what costs.
    reads = []
    real = gcpace.resident_bytes
    monkeypatch.setattr(gcpace, "resident_bytes", lambda: reads.append(1) or real())
    monkeypatch.setattr(gcpace, "RSS_EVERY", 3600.0)

    def probe():
        assert _wait_for_freeze() > 0
        gcpace._last_rss = float("-inf")           # as if never read
        reads.clear()
        for _ in range(50):
            gcpace.tick()
        return len(reads)
    assert _during(engine, probe) == 1


def test_a_cycle_that_outlived_a_tick_is_freed_after_the_run(engine):
    def probe():
        node = _Node()
        ref = weakref.ref(node)
        gcpace.tick()                                  # still alive: frozen
        del node
        gc.collect()
        return ref, ref() is not None
    ref, alive_during_the_run = _during(engine, probe)
    assert alive_during_the_run                       # frozen garbage waits ...
    gc.collect()
    assert ref() is None                              # ... until the last run has ended


def test_a_long_run_still_frees_cycles_every_full_every_seconds(engine, monkeypatch):
    def probe():
        node = _Node()
        ref = weakref.ref(node)
        gcpace.tick()                                  # still alive: frozen
        del node
        monkeypatch.setattr(gcpace, "FULL_EVERY", 0.0)     # the next tick is due a full pass
        gcpace.tick()
        return ref() is None
    assert _during(engine, probe), "the cycle outlived the run's full collection"


def test_a_process_with_the_collector_off_is_left_alone(engine):
    gc.disable()
    try:
        def probe():
            made = _Node()
            gcpace.tick()
            return _frozen(made), gc.isenabled()
        assert _during(engine, probe) == (False, False)
        assert gc.get_freeze_count() == 0
    finally:
        gc.enable()


def _frozen(obj):
    return not any(o is obj for o in gc.get_objects())     # in no generation: frozen


def test_a_process_that_froze_objects_itself_keeps_them_frozen(engine):
    mine = _Node()
    gc.freeze()

    def probe():
        made = _Node()
        gcpace.tick()                                       # what a hand-over does
        return _frozen(made)
    assert _during(engine, probe) is False                  # runs froze nothing more ...
    assert _frozen(mine)                                    # ... and unfroze nothing
