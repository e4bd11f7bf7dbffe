"""Runtime operators: what a transformation becomes inside a task.

Every operator works on *batches*: lists of ``(value, timestamp)`` pairs, or ``(value, timestamp,
key)`` triples for a keyed operator (the key was computed once, by the partitioner that routed the
record). An operator hands its output to ``self.out`` (the next chained operator, or the task's
partitioners) and side outputs to ``self.side(tag, batch)``.

Life cycle, driven by the task: ``open()`` → any number of ``process(batch)``,
``on_watermark(wm)``, ``on_processing_time(now)`` and ``snapshot(...)`` → ``finish()`` at the end
of input (bounded jobs) → ``close()``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from twingraph.errors import StateError
from twingraph.stream.clock import Clock
from twingraph.stream.functions import KeyedProcessFunction, OutputTag, ProcessFunction
from twingraph.stream.state import NO_KEY, KeyedStateStore, StateBackend
from twingraph.stream.timers import TimerQueue
from twingraph.stream.watermarks import MIN_WATERMARK

Batch = list[Any]
Emit = Callable[[Batch], None]

EVENT, PROC = 0, 1


class OperatorContext:
    """What the runtime tells an operator about where it runs."""

    def __init__(self, *, job_name: str, uid: str, subtask_index: int, parallelism: int,
                 max_parallelism: int, clock: Clock, backend: StateBackend | None = None,
                 key_groups: range | None = None) -> None:
        self.job_name, self.uid = job_name, uid
        self.subtask_index, self.parallelism, self.max_parallelism = subtask_index, parallelism, max_parallelism
        self.clock, self.backend, self.key_groups = clock, backend, key_groups
        self.state_backend: KeyedStateStore | None = KeyedStateStore(backend) if backend is not None else None


class Operator(ABC):
    keyed = False

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.out: Emit = _discard
        self.side_outputs: dict[OutputTag, Emit] = {}
        self.watermark = MIN_WATERMARK
        self.records_in = 0

    def setup(self, ctx: OperatorContext, out: Emit, side_outputs: dict[OutputTag, Emit]) -> None:
        self.ctx, self.out, self.side_outputs = ctx, out, side_outputs

    def side(self, tag: OutputTag, batch: Batch) -> None:
        emit = self.side_outputs.get(tag)
        if emit is not None:
            emit(batch)

    def open(self) -> None:
        return None

    @abstractmethod
    def process(self, batch: Batch) -> None:
        """Handle one batch of records."""

    def on_watermark(self, wm: int) -> None:
        self.watermark = wm

    def next_processing_timer(self) -> int | None:
        return None

    def on_processing_time(self, now_ms: int) -> None:
        return None

    def finish(self) -> None:
        return None

    def snapshot_keyed(self, path: Path) -> int:
        """Keyed operators write their state to ``path`` and return its size; others write nothing."""
        return 0

    def restore_keyed(self, paths: list[Path]) -> None:
        return None

    def close(self) -> None:
        return None


def _discard(batch: Batch) -> None:
    return None


class MapOperator(Operator):
    def __init__(self, uid: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(uid)
        self.fn = fn

    def process(self, batch: Batch) -> None:
        f = self.fn
        self.out([(f(v), t) for v, t in batch])


class FilterOperator(Operator):
    def __init__(self, uid: str, fn: Callable[[Any], bool]) -> None:
        super().__init__(uid)
        self.fn = fn

    def process(self, batch: Batch) -> None:
        f = self.fn
        out = [r for r in batch if f(r[0])]
        if out:
            self.out(out)


class FlatMapOperator(Operator):
    def __init__(self, uid: str, fn: Callable[[Any], Iterable[Any]]) -> None:
        super().__init__(uid)
        self.fn = fn

    def process(self, batch: Batch) -> None:
        f = self.fn
        out = [(o, t) for v, t in batch for o in f(v)]
        if out:
            self.out(out)


class _Ctx:
    """The ``ctx`` handed to process functions."""

    __slots__ = ("op", "ts", "key")

    def __init__(self, op: Any) -> None:
        self.op: Any = op
        self.ts: int | None = None
        self.key: Any = None

    def timestamp(self) -> int | None:
        return self.ts

    def get_current_key(self) -> Any:
        return self.key

    def output(self, tag: OutputTag, value: Any) -> None:
        self.op.side(tag, [(value, self.ts)])

    def timer_service(self) -> Any:
        return self

    def current_watermark(self) -> int:
        return int(self.op.watermark)

    def current_processing_time(self) -> int:
        return int(self.op.ctx.clock.now_ms())

    def _need_keyed(self) -> Any:
        if not self.op.keyed:
            raise StateError("timers are only available on keyed streams (use key_by(...).process)")
        return self.op

    def register_event_time_timer(self, timestamp: int) -> None:
        self._need_keyed().event_timers.add(timestamp, self.key, None)

    def register_processing_time_timer(self, timestamp: int) -> None:
        self._need_keyed().proc_timers.add(timestamp, self.key, None)

    def delete_event_time_timer(self, timestamp: int) -> None:
        self._need_keyed().event_timers.delete(timestamp, self.key, None)

    def delete_processing_time_timer(self, timestamp: int) -> None:
        self._need_keyed().proc_timers.delete(timestamp, self.key, None)


class RuntimeContext:
    """The ``runtime_context`` passed to ``open``: where the function runs, and its keyed state."""

    def __init__(self, ctx: OperatorContext) -> None:
        self.subtask_index, self.parallelism = ctx.subtask_index, ctx.parallelism
        self.job_name = ctx.job_name
        self.state_backend = ctx.state_backend


class ProcessOperator(Operator):
    def __init__(self, uid: str, fn: ProcessFunction) -> None:
        super().__init__(uid)
        self.fn, self.pctx = fn, _Ctx(self)

    def open(self) -> None:
        self.fn.open(RuntimeContext(self.ctx))

    def process(self, batch: Batch) -> None:
        pe, c = self.fn.process_element, self.pctx
        out: list[Any] = []
        for v, t in batch:
            c.ts = t
            res = pe(v, c)
            if res is not None:
                out.extend((o, t) for o in res)
        if out:
            self.out(out)

    def close(self) -> None:
        self.fn.close()


class KeyedOperator(Operator):
    """Base of keyed operators: a state backend for the subtask's key groups, and timers.

    Timers are held in memory and written into the backend's ``__timers`` table at each snapshot
    (key first, so they move with their key group on rescale); restore rebuilds the queues.
    """

    keyed = True

    def setup(self, ctx: OperatorContext, out: Emit, side_outputs: dict[OutputTag, Emit]) -> None:
        super().setup(ctx, out, side_outputs)
        assert ctx.backend is not None and ctx.state_backend is not None
        self.backend, self.store = ctx.backend, ctx.state_backend
        self.event_timers, self.proc_timers = TimerQueue(), TimerQueue()

    def snapshot_keyed(self, path: Path) -> int:
        t = self.backend.table("__timers")
        t.clear()
        for domain, q in ((EVENT, self.event_timers), (PROC, self.proc_timers)):
            for time, key, ns, kind in q.entries():
                t[(key, (domain, time, ns))] = kind
        return self.backend.snapshot(path)

    def restore_keyed(self, paths: list[Path]) -> None:
        assert self.ctx.key_groups is not None
        self.backend.restore(paths, self.ctx.key_groups)
        t = self.backend.table("__timers")
        for (key, (domain, time, ns)), kind in list(t.items()):
            (self.event_timers if domain == EVENT else self.proc_timers).add(time, key, ns, kind)

    def next_processing_timer(self) -> int | None:
        return self.proc_timers.next_time()

    def close(self) -> None:
        self.backend.close()


class KeyedReduceOperator(KeyedOperator):
    """``KeyedStream.reduce``: a rolling reduce that emits the updated value for every element."""

    def __init__(self, uid: str, fn: Callable[[Any, Any], Any]) -> None:
        super().__init__(uid)
        self.fn = fn

    def open(self) -> None:
        self.table = self.backend.table("reduce")

    def process(self, batch: Batch) -> None:
        f, table, out = self.fn, self.table, []
        for v, t, k in batch:
            sk = (k, None)
            acc = table.get(sk)
            acc = v if acc is None else f(acc, v)
            table[sk] = acc
            out.append((acc, t))
        self.out(out)


class KeyedProcessOperator(KeyedOperator):
    def __init__(self, uid: str, fn: KeyedProcessFunction) -> None:
        super().__init__(uid)
        self.fn = fn

    def open(self) -> None:
        self.pctx = _Ctx(self)
        self.fn.open(RuntimeContext(self.ctx))

    def process(self, batch: Batch) -> None:
        pe, c, store = self.fn.process_element, self.pctx, self.store
        out: list[Any] = []
        for v, t, k in batch:
            c.ts, c.key = t, k
            store.current_key = k
            res = pe(v, c)
            if res is not None:
                out.extend((o, t) for o in res)
        store.current_key = NO_KEY
        if out:
            self.out(out)

    def _fire(self, timers: TimerQueue, until: int) -> None:
        c, store = self.pctx, self.store
        out: list[Any] = []
        for t, key, _ns, _kind in timers.pop_until(until):
            c.ts, c.key = t, key
            store.current_key = key
            res = self.fn.on_timer(t, c)
            if res is not None:
                out.extend((o, t) for o in res)
        store.current_key = NO_KEY
        if out:
            self.out(out)

    def on_watermark(self, wm: int) -> None:
        self.watermark = wm
        self._fire(self.event_timers, wm)

    def on_processing_time(self, now_ms: int) -> None:
        self._fire(self.proc_timers, now_ms)

    def close(self) -> None:
        self.fn.close()
        super().close()
