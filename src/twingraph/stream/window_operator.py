"""The window operator: assigns keyed elements to windows, keeps their contents, fires them.

State: table ``w`` maps ``(key, window)`` to the window's accumulator (``reduce``/``aggregate``)
or its element list (``apply``); for session windows table ``s`` maps ``(key, None)`` to the key's
current sessions. Each window has one timer at ``max_timestamp`` (FIRE) and, with allowed
lateness, one at ``max_timestamp + allowed_lateness`` (PURGE); without lateness one timer does both.

Event time: a window fires when the watermark reaches its max timestamp. An element that arrives
for a window that has fired but is still within allowed lateness is added and the window fires
again at once with its updated contents (Flink's ``EventTimeTrigger``). An element whose window is
past lateness is late: it goes to the late-data side output if one is set, else it is dropped.
Processing time: elements are assigned by the clock and windows fire on processing-time timers.

At the end of a bounded input every pending window fires: event-time ones through the final
watermark, processing-time ones in ``finish()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twingraph.errors import StreamError
from twingraph.stream.functions import AggregateFunction, OutputTag
from twingraph.stream.operators import Batch, KeyedOperator
from twingraph.stream.timers import TimerQueue
from twingraph.stream.watermarks import MAX_WATERMARK, MIN_WATERMARK
from twingraph.stream.windows import SessionWindow, TumblingWindow, WindowAssigner, merge_session

FIRE, PURGE = 1, 2
_MISSING = object()


class WindowOperator(KeyedOperator):
    def __init__(self, uid: str, assigner: WindowAssigner, kind: str, fn: Any,
                 allowed_lateness_ms: int = 0, late_tag: OutputTag | None = None) -> None:
        super().__init__(uid)
        self.assigner, self.kind, self.fn = assigner, kind, fn
        self.lateness, self.late_tag = allowed_lateness_ms, late_tag
        self.processing_time = assigner.processing_time
        self.sessions = isinstance(assigner, SessionWindow)
        self.late_dropped = 0
        init, add, merge, result = _accumulation(kind, fn)
        self._init, self._add, self._merge, self._result = init, add, merge, result
        self._swap = kind == "aggregate"  # AggregateFunction.add takes (value, accumulator)

    def open(self) -> None:
        self.contents = self.backend.table("w")
        self.session_table = self.backend.table("s")
        self.timers: TimerQueue = self.proc_timers if self.processing_time else self.event_timers

    def _register(self, key: Any, w: tuple[int, int]) -> None:
        mt = w[1] - 1
        if self.lateness and not self.processing_time:
            self.timers.add(mt, key, w, FIRE)
            self.timers.add(mt + self.lateness, key, w, PURGE)
        else:
            self.timers.add(mt, key, w, FIRE | PURGE)

    def process(self, batch: Batch) -> None:
        if self.processing_time:
            now = self.ctx.clock.now_ms()
            batch = [(v, now, k) for v, _, k in batch]
        try:
            if self.sessions:
                self._process_sessions(batch)
            else:
                self._process_windows(batch)
        except TypeError:
            if any(r[1] is None for r in batch):
                raise StreamError("an element without a timestamp reached an event-time window; give the "
                                  "source a timestamp_assigner or use a processing-time window") from None
            raise

    def _process_windows(self, batch: Batch) -> None:
        contents, init, add, swap, register = self.contents, self._init, self._add, self._swap, self._register
        get = contents.get
        lateness = self.lateness
        wm = MIN_WATERMARK if self.processing_time else self.watermark
        late: list[Any] = []
        refire: list[tuple[Any, tuple[int, int], Any]] = []
        a = self.assigner
        tumbling = isinstance(a, TumblingWindow)
        size, offset = (a.size_ms, a.offset_ms) if isinstance(a, TumblingWindow) else (0, 0)
        for v, ts, key in batch:
            if tumbling:  # the common case, without a call per element
                start = ts - (ts - offset) % size
                windows: Iterable[tuple[int, int]] = ((start, start + size),)
            else:
                windows = a.assign(ts)
            for w in windows:
                mt = w[1] - 1
                if mt + lateness <= wm:
                    late.append((v, ts))
                    continue
                sk = (key, w)
                acc = get(sk, _MISSING)
                if acc is _MISSING:
                    acc = contents[sk] = init(v)
                    register(key, w)
                else:
                    acc = contents[sk] = add(v, acc) if swap else add(acc, v)
                if mt <= wm:  # within allowed lateness of a window that already fired: fire again
                    refire.append((key, w, acc))
        if late:
            self._late(late)
        if refire:
            out: list[Any] = []
            for key, w, acc in refire:
                self._emit_window(key, w, acc, out)
            self.out(out)

    def _late(self, late: list[Any]) -> None:
        self.late_dropped += len(late)
        if self.late_tag is not None:
            self.side(self.late_tag, late)

    def _process_sessions(self, batch: Batch) -> None:
        contents, sessions = self.contents, self.session_table
        wm = MIN_WATERMARK if self.processing_time else self.watermark
        gap = self.assigner.gap_ms  # type: ignore[union-attr]
        late: list[Any] = []
        refire: list[tuple[Any, tuple[int, int], Any]] = []
        now = self.ctx.clock.now_ms() if self.processing_time else 0
        for v, ts, key in batch:
            if self.processing_time:
                ts = now
            elif ts is None:
                raise StreamError("an element without a timestamp reached an event-time session window")
            existing = sessions.get((key, None)) or []
            merged, absorbed = merge_session(existing, (ts, ts + gap))
            if merged[1] - 1 + self.lateness <= wm:
                late.append((v, ts))
                continue
            acc: Any = _MISSING
            for w in absorbed:
                a = contents.pop((key, w))
                acc = a if acc is _MISSING else self._merge(acc, a)
                self._unregister(key, w)
            if acc is _MISSING:
                acc = self._init(v)
            else:
                acc = self._add(v, acc) if self._swap else self._add(acc, v)
            contents[(key, merged)] = acc
            self._register(key, merged)
            sessions[(key, None)] = [w for w in existing if w not in absorbed] + [merged]
            if merged[1] - 1 <= wm:
                refire.append((key, merged, acc))
        if late:
            self._late(late)
        if refire:
            out: list[Any] = []
            for key, w, acc in refire:
                self._emit_window(key, w, acc, out)
            self.out(out)

    def _unregister(self, key: Any, w: tuple[int, int]) -> None:
        self.timers.delete(w[1] - 1, key, w)
        if self.lateness and not self.processing_time:
            self.timers.delete(w[1] - 1 + self.lateness, key, w)

    def _emit_window(self, key: Any, w: tuple[int, int], acc: Any, out: list[Any]) -> None:
        ts = w[1] - 1
        if self.kind == "apply":
            self.store.current_key = key
            res = self.fn(key, w, list(acc))
            self.store.current_key = None
            if res is not None:
                out.extend((o, ts) for o in res)
        else:
            out.append((self._result(acc), ts))

    def _fire_until(self, time: int) -> None:
        contents, result, apply = self.contents, self._result, self.kind == "apply"
        out: list[Any] = []
        for _t, key, w, kind in self.timers.pop_until(time):
            sk = (key, w)
            acc = contents.get(sk, _MISSING)
            if acc is _MISSING:
                continue
            if kind & FIRE:
                if apply:
                    self._emit_window(key, w, acc, out)
                else:
                    out.append((result(acc), w[1] - 1))
            if kind & PURGE:
                del contents[sk]
                if self.sessions:
                    rest = [x for x in (self.session_table.get((key, None)) or []) if x != w]
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
