"""The window operator: assigns keyed elements to windows, keeps their contents, fires them.

State: table ``w`` maps ``(key, ns)`` to the window's accumulator (``reduce``/``aggregate``) or
its element list (``apply``). ``ns`` names the window: its start (an int) for tumbling and sliding
windows, whose size is fixed, and ``(start, end)`` for session windows; table ``s`` maps
``(key, None)`` to a key's current sessions. Each window has one timer at ``max_timestamp`` (FIRE) and, with allowed
lateness, one at ``max_timestamp + allowed_lateness`` (PURGE); without lateness one timer does both.

Event time: a window fires when the watermark reaches its max timestamp. An element that arrives
for a window that has fired but is still within allowed lateness is added and the window fires
again at once with its updated contents (Flink's ``EventTimeTrigger``). An element whose window is
past lateness is late: it goes to the late-data side output if one is set, else it is dropped.
Processing time: elements are assigned by the clock and windows fire on processing-time timers.

At the end of a bounded input every pending window fires: event-time ones through the final
watermark, processing-time ones in ``finish()``.

Two layouts. With the memory backend, fixed-size windows keep *panes*: ``{start: {key: acc}}``,
like Flink's heap state tables (namespace first). An element costs two dict look-ups, no per-key
timers exist (a pane fires when the watermark passes its end, for all its keys), and a checkpoint
pickles the panes as they are; a restore keeps the keys of the key groups the subtask owns, so
panes rescale like any keyed state. Session windows and the durable (SQLite) backend use
the table directly, with one timer per key and window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from twingraph.errors import StreamError
from twingraph.stream.functions import AggregateFunction, OutputTag
from twingraph.stream.keygroups import KeyGroupCache
from twingraph.stream.operators import Batch, KeyedOperator
from twingraph.stream.state import NO_KEY, dumps_state, loads_state
from twingraph.stream.timers import TimerQueue
from twingraph.stream.watermarks import MAX_WATERMARK, MIN_WATERMARK
from twingraph.stream.windows import SessionWindow, TumblingWindow, WindowAssigner, merge_session

FIRE, PURGE = 1, 2
_MISSING = object()


class WindowOperator(KeyedOperator):
    def __init__(self, uid: str, assigner: WindowAssigner, kind: str, fn: Any,
                 allowed_lateness_ms: int = 0, late_tag: OutputTag | None = None,
                 window_function: Callable[[Any, tuple[int, int], Any], Iterable[Any] | None] | None = None) -> None:
        super().__init__(uid)
        self.assigner, self.kind, self.fn, self.window_fn = assigner, kind, fn, window_function
        self.lateness, self.late_tag = allowed_lateness_ms, late_tag
        self.processing_time = assigner.processing_time
        self.sessions = isinstance(assigner, SessionWindow)
        self.size = 0 if isinstance(assigner, SessionWindow) else assigner.size_ms
        self.late_dropped = 0
        init, add, merge, result = _accumulation(kind, fn)
        self._init, self._add, self._merge, self._result = init, add, merge, result
        self._swap = kind == "aggregate"  # AggregateFunction.add takes (value, accumulator)

    def open(self) -> None:
        self.contents = self.backend.table("w")
        self.session_table = self.backend.table("s")
        self.timers: TimerQueue = self.proc_timers if self.processing_time else self.event_timers
        self.panes: dict[int, dict[Any, Any]] | None = None
        if self.backend.kind == "memory" and not self.sessions:
            self.panes = {}
        self.fired: set[int] = set()  # panes that fired and wait for their allowed lateness to pass

    # -- checkpoints (pane layout) -----------------------------------------------------------
    def snapshot_keyed(self, path: Path) -> int:
        """Pane layout: the panes are pickled as they are (the operator has no other state: no
        timers, empty tables); restore keeps the keys of the subtask's key groups."""
        if self.panes is None:
            return super().snapshot_keyed(path)
        data = dumps_state({"panes": self.panes, "fired": sorted(self.fired)})
        path.write_bytes(data)
        return len(data)

    def restore_keyed(self, paths: list[Path]) -> None:
        if self.panes is None:
            super().restore_keyed(paths)
            return
        assert self.ctx.key_groups is not None
        owned, kg = self.ctx.key_groups, KeyGroupCache(self.ctx.max_parallelism)
        for p in paths:
            state = loads_state(p.read_bytes())  # the job's own checkpoint file (see state.py)
            for start, pane in state["panes"].items():
                mine = {key: acc for key, acc in pane.items() if kg(key) in owned}
                if mine:
                    self.panes.setdefault(start, {}).update(mine)
                    if start in state["fired"]:
                        self.fired.add(start)

    def next_processing_timer(self) -> int | None:
        if self.panes is not None and self.processing_time:
            return min(self.panes) + self.size - 1 if self.panes else None
        return super().next_processing_timer()

    def _window(self, ns: Any) -> tuple[int, int]:
        return ns if self.sessions else (ns, ns + self.size)

    def _register(self, key: Any, ns: Any, end: int) -> None:
        mt = end - 1
        if self.lateness and not self.processing_time:
            if mt > self.watermark:  # else the window fires at once (refire), as EventTimeTrigger:
                self.timers.add(mt, key, ns, FIRE)  # a timer ≤ the watermark would fire it twice
            self.timers.add(mt + self.lateness, key, ns, PURGE)
        else:
            self.timers.add(mt, key, ns, FIRE | PURGE)

    def _unregister(self, key: Any, ns: Any, end: int) -> None:
        self.timers.delete(end - 1, key, ns)
        if self.lateness and not self.processing_time:
            self.timers.delete(end - 1 + self.lateness, key, ns)

    def _current_watermark(self) -> int:
        return MIN_WATERMARK if self.processing_time else self.watermark

    # -- elements --------------------------------------------------------------------------
    def process(self, batch: Batch) -> None:
        if self.processing_time:
            now = self.ctx.clock.now_ms()
            batch = [(v, now, k) for v, _, k in batch]
        late: list[Any] = []
        refire: list[tuple[Any, Any, Any]] = []
        try:
            if self.sessions:
                self._process_sessions(batch, late, refire)
            elif self.panes is not None and isinstance(self.assigner, TumblingWindow):
                self._process_tumbling_panes(batch, late, refire)
            elif isinstance(self.assigner, TumblingWindow):
                self._process_tumbling(batch, late, refire)
            else:
                assign = self.assigner.assign
                for v, ts, key in batch:
                    # as Flink: an element is late only if every window it falls in is past its
                    # lateness, and then it goes to the side output once (not once per window)
                    skipped: list[Any] = []
                    windows = assign(ts)
                    for start, _end in windows:
                        self._add_element(v, ts, key, start, skipped, refire)
                    if len(skipped) == len(windows):
                        late.append((v, ts))
        except TypeError:
            if any(r[1] is None for r in batch):
                raise StreamError("an element without a timestamp reached an event-time window; give the "
                                  "source a timestamp_assigner or use a processing-time window") from None
            raise
        if late:
            self.late_dropped += len(late)
            if self.late_tag is not None:
                self.side(self.late_tag, late)
        if refire:
            out: list[Any] = []
            for key, ns, acc in refire:
                self._emit_window(key, ns, acc, out)
            self.out(out)

    def _add_element(self, v: Any, ts: int, key: Any, start: int, late: list[Any],
                     refire: list[tuple[Any, Any, Any]]) -> None:
        """The general path for a fixed-size window starting at ``start``."""
        end = start + self.size
        wm = self._current_watermark()
        if end - 1 + self.lateness <= wm:
            late.append((v, ts))
            return
        if self.panes is not None:
            pane = self.panes.get(start)
            if pane is None:
                pane = self.panes[start] = {}
            acc = pane.get(key, _MISSING)
            acc = pane[key] = self._init(v) if acc is _MISSING else (
                self._add(v, acc) if self._swap else self._add(acc, v))
            if start in self.fired:
                refire.append((key, start, acc))
            return
        sk = (key, start)
        acc = self.contents.get(sk, _MISSING)
        if acc is _MISSING:
            acc = self.contents[sk] = self._init(v)
            self._register(key, start, end)
        else:
            acc = self.contents[sk] = self._add(v, acc) if self._swap else self._add(acc, v)
        if end - 1 <= wm:  # within allowed lateness of a window that already fired: fire again
            refire.append((key, start, acc))

    def _process_tumbling_panes(self, batch: Batch, late: list[Any], refire: list[tuple[Any, Any, Any]]) -> None:
        """The hot path (memory backend): per element a pane look-up when the window changes,
        one dict look-up and store per element, and the user's function."""
        assert isinstance(self.assigner, TumblingWindow) and self.panes is not None
        panes, init, add, swap = self.panes, self._init, self._add, self._swap
        size, offset = self.assigner.size_ms, self.assigner.offset_ms
        unfired_from = self._current_watermark() - (size - 1) + 1  # smallest start not yet fired
        last_start: int | None = None
        pane: dict[Any, Any] = {}
        for v, ts, key in batch:
            start = ts - (ts - offset) % size
            if start != last_start:
                if start < unfired_from:
                    self._add_element(v, ts, key, start, late, refire)
                    continue
                p = panes.get(start)
                if p is None:
                    p = panes[start] = {}
                pane, last_start = p, start
            acc = pane.get(key, _MISSING)
            if acc is _MISSING:
                pane[key] = init(v)
            elif swap:
                pane[key] = add(v, acc)
            else:
                pane[key] = add(acc, v)

    def _process_tumbling(self, batch: Batch, late: list[Any], refire: list[tuple[Any, Any, Any]]) -> None:
        """The hot path: one window per element, no call per element except the user's function."""
        assert isinstance(self.assigner, TumblingWindow)
        contents = self.contents
        get, init, add, swap = contents.get, self._init, self._add, self._swap
        size, offset = self.assigner.size_ms, self.assigner.offset_ms
        fired_bound = self._current_watermark() - (size - 1)  # windows starting at or before it have fired
        inline_timers = not self.lateness or self.processing_time
        by_time = self.timers.by_time
        for v, ts, key in batch:
            start = ts - (ts - offset) % size
            if start <= fired_bound:
                self._add_element(v, ts, key, start, late, refire)
                continue
            sk = (key, start)
            acc = get(sk, _MISSING)
            if acc is not _MISSING:
                contents[sk] = add(v, acc) if swap else add(acc, v)
                continue
            contents[sk] = init(v)
            entries = by_time.get(start + size - 1) if inline_timers else None
            if entries is None:
                self._register(key, start, start + size)
            else:
                entries[sk] = FIRE | PURGE

    def _process_sessions(self, batch: Batch, late: list[Any], refire: list[tuple[Any, Any, Any]]) -> None:
        contents, sessions = self.contents, self.session_table
        wm = self._current_watermark()
        gap = self.assigner.gap_ms  # type: ignore[union-attr]
        for v, ts, key in batch:
            existing = sessions.get((key, None)) or []
            merged, absorbed = merge_session(existing, (ts, ts + gap))
            if merged[1] - 1 + self.lateness <= wm:
                late.append((v, ts))
                continue
            acc: Any = _MISSING
            for w in absorbed:
                a = contents.pop((key, w))
                acc = a if acc is _MISSING else self._merge(acc, a)
                self._unregister(key, w, w[1])
            if acc is _MISSING:
                acc = self._init(v)
            else:
                acc = self._add(v, acc) if self._swap else self._add(acc, v)
            contents[(key, merged)] = acc
            self._register(key, merged, merged[1])
            sessions[(key, None)] = [w for w in existing if w not in absorbed] + [merged]
            if merged[1] - 1 <= wm:
                refire.append((key, merged, acc))

    # -- firing ----------------------------------------------------------------------------
    def _emit_window(self, key: Any, ns: Any, acc: Any, out: list[Any]) -> None:
        w = self._window(ns)
        ts = w[1] - 1
        if self.kind == "apply" or self.window_fn is not None:
            self.store.current_key = key
            if self.window_fn is not None:
                res = self.window_fn(key, w, self._result(acc))
            else:
                res = self.fn(key, w, list(acc))
            self.store.current_key = NO_KEY
            if res is not None:
                for o in res:
                    out.append((o, ts))
        else:
            out.append((self._result(acc), ts))

    def _fire_panes(self, time: int) -> None:
        assert self.panes is not None
        size, lateness, out = self.size, self.lateness, []
        result, plain = self._result, self.kind != "apply" and self.window_fn is None
        for start in sorted(s for s in self.panes if s + size - 1 <= time):
            if start not in self.fired:
                ts = start + size - 1
                pane = self.panes[start]
                if plain:
                    out.extend([(result(acc), ts) for acc in pane.values()])
                else:
                    for key, acc in pane.items():
                        self._emit_window(key, start, acc, out)
            if self.processing_time or start + size - 1 + lateness <= time:
                del self.panes[start]
                self.fired.discard(start)
            else:
                self.fired.add(start)
        if out:
            self.out(out)

    def _fire_until(self, time: int) -> None:
        if self.panes is not None:
            self._fire_panes(time)
            return
        contents, result, size = self.contents, self._result, self.size
        plain = self.kind != "apply" and self.window_fn is None
        out: list[Any] = []
        for _t, key, ns, kind in self.timers.pop_until(time):
            sk = (key, ns)
            acc = contents.get(sk, _MISSING)
            if acc is _MISSING:
                continue
            if kind & FIRE:
                if plain:
                    out.append((result(acc), (ns[1] if self.sessions else ns + size) - 1))
                else:
                    self._emit_window(key, ns, acc, out)
            if kind & PURGE:
                del contents[sk]
                if self.sessions:
                    rest = [x for x in (self.session_table.get((key, None)) or []) if x != ns]
                    if rest:
                        self.session_table[(key, None)] = rest
                    else:
                        self.session_table.pop((key, None), None)
        if out:
            self.out(out)

    def on_watermark(self, wm: int) -> None:
        self.watermark = wm
        if not self.processing_time:
            self._fire_until(wm)

    def on_processing_time(self, now_ms: int) -> None:
        if self.processing_time:
            self._fire_until(now_ms)

    def finish(self) -> None:
        if self.processing_time:
            self._fire_until(MAX_WATERMARK)


def _accumulation(kind: str, fn: Any) -> tuple[Callable[[Any], Any], Callable[[Any, Any], Any],
                                                Callable[[Any, Any], Any], Callable[[Any], Any]]:
    """(init, add, merge, result) for the window function kind."""
    if kind == "reduce":
        return (lambda v: v), fn, fn, (lambda a: a)
    if kind == "aggregate":
        agg: AggregateFunction = fn
        return ((lambda v: agg.add(v, agg.create_accumulator())), agg.add, agg.merge, agg.get_result)
    if kind == "apply":
        return (lambda v: [v]), _append, (lambda a, b: a + b), (lambda a: a)
    raise ValueError(f"unknown window function kind {kind!r}")


def _append(acc: list[Any], v: Any) -> list[Any]:
    acc.append(v)  # in place; the caller writes the list back so durable backends see it
    return acc
