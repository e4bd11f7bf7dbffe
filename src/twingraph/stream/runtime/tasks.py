"""Tasks: one parallel subtask of one operator chain, and the channels between them.

A channel is a ``deque`` of elements, each a tuple whose first item says what it is:

- ``(REC, batch)`` records, ``(WM, t)`` a watermark, ``(IDLE, bool)`` the sender's idleness,
- ``(BARRIER, checkpoint_id)`` a checkpoint barrier, ``(END,)`` end of input (bounded jobs),
- ``(LAT, t0)`` a latency marker: stamped by a source, forwarded without waiting on operators.

Checkpoint alignment (Flink's aligned barriers): when a barrier arrives on one input channel,
that channel is blocked — nothing behind the barrier is read — until the same barrier arrived on
every input channel. Then the task snapshots its operators in chain order, acknowledges to the
coordinator, forwards the barrier on every output channel, and unblocks its inputs. Since nothing
from after the barrier was processed, the snapshot reflects exactly the records before it.
Sources take their snapshot (position) and emit the barrier between two polls.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twingraph.stream.connectors.base import SourceSplitContext
from twingraph.stream.keygroups import KeyGroupCache, subtask_for_key_group
from twingraph.stream.operators import Batch, Operator
from twingraph.stream.runtime.histogram import Histogram
from twingraph.stream.watermarks import MAX_WATERMARK, WatermarkCombiner, WatermarkGenerator

REC, WM, BARRIER, END, IDLE, LAT = 0, 1, 2, 3, 4, 5

Channel = deque
CHANNEL_CAPACITY = 16  # batches queued on one channel before its producer is held back


class Forward:
    def __init__(self, channels: list[Channel]) -> None:
        self.channels = channels
        self.ch = channels[0]

    def __call__(self, batch: Batch) -> None:
        self.ch.append((REC, batch))


class Rebalance:
    def __init__(self, channels: list[Channel]) -> None:
        self.channels, self.i = channels, 0

    def __call__(self, batch: Batch) -> None:
        self.channels[self.i].append((REC, batch))
        self.i = (self.i + 1) % len(self.channels)


class HashPartitioner:
    """Routes each record to the subtask owning its key group; records carry their key onward.

    The subtask of each key is memoized (bounded: cleared past 200,000 keys), so the hot loop is
    one selector call and one dict look-up per record."""

    def __init__(self, channels: list[Channel], selector: Callable[[Any], Any], max_parallelism: int) -> None:
        self.channels, self.sel = channels, selector
        self.kg = KeyGroupCache(max_parallelism)
        n = len(channels)
        self.owner = [subtask_for_key_group(g, max_parallelism, n) for g in range(max_parallelism)]
        self.dest: dict[Any, int] = {}

    def __call__(self, batch: Batch) -> None:
        sel, chs = self.sel, self.channels
        if len(chs) == 1:
            chs[0].append((REC, [(v, t, sel(v)) for v, t in batch]))
            return
        dest = self.dest
        buckets: list[list[Any]] = [[] for _ in chs]
        for v, t in batch:
            k = sel(v)
            d = dest.get(k)
            if d is None:
                if len(dest) >= 200_000:
                    dest.clear()
                d = dest[k] = self.owner[self.kg(k)]
            buckets[d].append((v, t, k))
        for ch, b in zip(chs, buckets):
            if b:
                ch.append((REC, b))


def fan_out(targets: list[Callable[[Batch], None]]) -> Callable[[Batch], None]:
    if not targets:
        return lambda batch: None
    if len(targets) == 1:
        return targets[0]

    def emit(batch: Batch) -> None:
        for t in targets:
            t(batch)
    return emit


class SinkOperator(Operator):
    """Hands records to a ``Sink``; its checkpoint state is the sink's ``pre_commit`` result."""

    def __init__(self, uid: str, sink: Any) -> None:
        super().__init__(uid)
        self.sink = sink

    def process(self, batch: Batch) -> None:
        self.sink.write([r[0] for r in batch])

    def close(self) -> None:
        self.sink.close()


class Task:
    """One subtask of one chain. ``ops`` run in chain order; ``source`` is set for a source chain."""

    def __init__(self, name: str, subtask: int, ops: list[Operator], n_inputs: int,
                 source: Any = None, source_uid: str = "", source_ctx: SourceSplitContext | None = None,
                 timestamp_assigner: Callable[[Any], int] | None = None,
                 wm_gen: WatermarkGenerator | None = None) -> None:
        self.name, self.subtask, self.ops = name, subtask, ops
        self.inputs: list[Channel] = [deque() for _ in range(n_inputs)]
        self.outputs: list[Channel] = []  # every channel this subtask feeds (control events go to all)
        self.source, self.source_uid, self.source_ctx = source, source_uid, source_ctx
        self.assigner, self.wm_gen = timestamp_assigner, wm_gen
        self.combiner = WatermarkCombiner(n_inputs)
        self.blocked: set[int] = set()
        self.ended: set[int] = set()
        self.input_done = False  # END seen on all inputs (or source exhausted)
        self.idle_out = False
        self.watermark = -(2**63)
        self.head: Callable[[Batch], None] = ops[0].process if ops else (lambda b: None)
        self.records_in = 0
        self.turns = 0
        self.backpressured_turns = 0
        self.latencies_ms: deque[float] = deque(maxlen=1024)  # recent, for the mean in metrics()
        self.latency = Histogram()  # cumulative, for Prometheus
        self.has_sink = any(isinstance(op, SinkOperator) for op in ops)
        self.ack: Callable[[Task, int, dict[str, Any]], None] = lambda task, cid, states: None
        self.checkpoint_dir: Callable[[int], Path | None] = lambda cid: None

    # -- control events ------------------------------------------------------------------
    def broadcast(self, element: tuple[Any, ...]) -> None:
        for ch in self.outputs:
            ch.append(element)

    def advance_watermark(self, wm: int) -> None:
        self.watermark = wm
        for op in self.ops:
            op.on_watermark(wm)
        self.broadcast((WM, wm))

    def backpressured(self) -> bool:
        for ch in self.outputs:
            if len(ch) > CHANNEL_CAPACITY:
                return True
        return False

    # -- checkpoints ---------------------------------------------------------------------
    def snapshot(self, checkpoint_id: int) -> None:
        d = self.checkpoint_dir(checkpoint_id)
        states: dict[str, Any] = {}
        if self.source is not None:
            states[self.source_uid] = {"json": self.source.snapshot(checkpoint_id), "file": None, "size": 0}
        for op in self.ops:
            entry: dict[str, Any] = {"json": None, "file": None, "size": 0}
            if isinstance(op, SinkOperator):
                entry["json"] = op.sink.pre_commit(checkpoint_id)
            elif op.keyed and d is not None:
                fname = f"{op.uid}-{self.subtask}.state"
                entry["file"], entry["size"] = fname, op.snapshot_keyed(d / fname)
            states[op.uid] = entry
        self.ack(self, checkpoint_id, states)
        self.broadcast((BARRIER, checkpoint_id))

    # -- processing ----------------------------------------------------------------------
    def step_source(self, batch_size: int, now_ms: int) -> bool:
        """Poll once and push the batch through the chain; False if there was nothing to do."""
        if self.input_done:
            return False
        self.turns += 1
        if self.backpressured():
            self.backpressured_turns += 1
            return False
        recs = self.source.poll(batch_size)
        if recs:
            self.records_in += len(recs)
            if self.ops:
                self.ops[0].records_in += len(recs)
            gen = self.wm_gen
            a = self.assigner
            if a is not None:
                recs = [(v, a(v)) for v, _ in recs]
            max_ts = None
            if gen is not None and gen.bound is not None:
                try:
                    max_ts = max([r[1] for r in recs])
                except TypeError:  # some records without a timestamp
                    max_ts = max([r[1] for r in recs if r[1] is not None], default=None)
            self.head(recs)
            if gen is not None:
                wm, became_active = gen.on_batch(max_ts, now_ms)
                if became_active and self.idle_out:
                    self.idle_out = False
                    self.broadcast((IDLE, False))
                if wm is not None:
                    self.advance_watermark(wm)
            return True
        if self.source.bounded and self.source.finished():
            self.advance_watermark(MAX_WATERMARK)
            self.finish()
            return True
        if self.wm_gen is not None and self.wm_gen.on_idle_check(now_ms):
            self.idle_out = True
            self.broadcast((IDLE, True))
        return False

    def finish(self) -> None:
        for op in self.ops:
            op.finish()
        self.input_done = True
        self.broadcast((END,))

    def step(self, budget: int = 64) -> bool:
        """Drain up to ``budget`` elements per unblocked input channel; False if none was there."""
        self.turns += 1
        if self.backpressured():
            self.backpressured_turns += 1
            return False
        progressed = False
        for idx, ch in enumerate(self.inputs):
            if not ch or idx in self.blocked:
                continue
            progressed = True
            for _ in range(budget):
                if not ch:
                    break
                el = ch.popleft()
                kind = el[0]
                if kind == REC:
                    self.records_in += len(el[1])
                    self.ops[0].records_in += len(el[1])
                    self.head(el[1])
                elif kind == WM:
                    wm = self.combiner.update(idx, el[1])
                    if wm is not None:
                        self.advance_watermark(wm)
                    if self.idle_out and not self.combiner.all_idle:
                        self.idle_out = False
                        self.broadcast((IDLE, False))
                elif kind == BARRIER:
                    self.blocked.add(idx)
                    if len(self.blocked) == len(self.inputs):
                        self.blocked.clear()
                        self.snapshot(el[1])
                    break  # stop reading this channel: what follows belongs after the barrier
                elif kind == END:
                    self.ended.add(idx)
                    if len(self.ended) == len(self.inputs):
                        self.finish()
                elif kind == IDLE:
                    wm = self.combiner.set_idle(idx, el[1])
                    if wm is not None:
                        self.advance_watermark(wm)
                    if el[1] and self.combiner.all_idle and not self.idle_out:
                        self.idle_out = True
                        self.broadcast((IDLE, True))
                    elif not el[1] and self.idle_out:
                        self.idle_out = False
                        self.broadcast((IDLE, False))
                elif kind == LAT:
                    if self.has_sink:
                        ms = time.perf_counter() * 1000.0 - el[1]
                        self.latencies_ms.append(ms)
                        self.latency.observe(ms / 1000.0)
                    else:
                        self.broadcast(el)
        return progressed

    def next_processing_timer(self) -> int | None:
        best = None
        for op in self.ops:
            t = op.next_processing_timer()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def on_processing_time(self, now_ms: int) -> None:
        for op in self.ops:
            op.on_processing_time(now_ms)
