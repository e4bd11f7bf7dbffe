"""Running a job: build the tasks from the plan, restore, and drive them with one scheduler thread.

Scheduling (see docs/decisions/0020-stream-cooperative-scheduler.md): every task of every chain
is a plain object stepped in topological order by one thread. A source task polls one batch per
turn; other tasks drain up to a budget of elements from each input channel. A task whose output
channels hold more than ``CHANNEL_CAPACITY`` batches is skipped that turn (backpressure; the
ratio of skipped turns is the backpressure metric). When a whole round made no progress the
thread sleeps for a millisecond (or until the next processing-time timer). Connectors that need
blocking I/O keep their own threads and hand data to ``poll`` without blocking.

End of a bounded job: when every source is exhausted it emits the final watermark and END; the
coordinator then triggers a *final* checkpoint, and once that completed (so every sink
committed) the job is FINISHED.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from twingraph.errors import CheckpointError, JobFailed, StreamError
from twingraph.stream.checkpoints import CheckpointStorage, read_manifest
from twingraph.stream.clock import Clock
from twingraph.stream.connectors.base import SourceSplitContext
from twingraph.stream.graph import JobGraph, Transformation
from twingraph.stream.keygroups import key_group_range
from twingraph.stream.operators import Operator, OperatorContext
from twingraph.stream.runtime.coordinator import CheckpointCoordinator
from twingraph.stream.runtime.plan import Edge, Plan, build_plan
from twingraph.stream.runtime.states import JobStatus, transition
from twingraph.stream.runtime.tasks import LAT, HashPartitioner, Forward, Rebalance, SinkOperator, Task, fan_out
from twingraph.stream.state import MemoryStateBackend, SQLiteStateBackend, StateBackend
from twingraph.stream.watermarks import MIN_WATERMARK

LATENCY_MARKER_INTERVAL_S = 0.2
log = logging.getLogger("twingraph.stream")


def _instance(proto: Any) -> Any:
    """One connector object per subtask: a shallow copy of a prototype, or what a factory (a
    zero-argument function or class) returns."""
    if isinstance(proto, type) or not hasattr(proto, "open"):
        return proto()
    return copy.copy(proto)


def _counted(op: Operator) -> Callable[[Any], None]:
    """A chained operator's input: counts the records (per batch) for the metrics, then processes."""
    process = op.process

    def call(batch: Any) -> None:
        op.records_in += len(batch)
        process(batch)
    return call


class JobRun:
    def __init__(self, job: JobGraph, clock: Clock, restore_from: str | os.PathLike[str] | None = None, *,
                 job_id: str | None = None) -> None:
        self.job, self.clock = job, clock
        self.job_id = job_id or "job_" + uuid.uuid4().hex[:8]
        #: called (in the job's thread) after every status change, and after every completed
        #: checkpoint with (checkpoint_id, savepoint, path, duration_ms); exceptions are logged
        self.status_listeners: list[Callable[[JobRun], None]] = []
        self.checkpoint_listeners: list[Callable[[int, bool, str | None, float], None]] = []
        self.status = JobStatus.CREATED
        self.start_time_ms: int | None = None
        self.end_time_ms: int | None = None
        self.error: BaseException | None = None
        self.plan: Plan = build_plan(job)
        self.storage = CheckpointStorage(job.checkpoint.directory, job.checkpoint.retained, job.checkpoint.fsync) \
            if job.checkpoint.directory else None
        self._requests: list[tuple[str, Any]] = []
        self._savepoint_waiters: list[Future[str | None]] = []
        self._lock = threading.Lock()
        self._started_perf = 0.0
        self._ended_perf: float | None = None
        self.done = threading.Event()
        self.restored_from: str | None = None
        self._restore = self._load_restore(restore_from)
        self._state_root: Path | None = None
        self.tasks: list[Task] = []

    # -- restore ----------------------------------------------------------------------------
    def _load_restore(self, restore_from: str | os.PathLike[str] | None) -> tuple[Path, dict[str, Any]] | None:
        if restore_from is None:
            return None
        if os.fspath(restore_from) == "latest":
            if self.storage is None:
                raise CheckpointError("restore_from='latest' needs a checkpoint directory (enable_checkpointing)")
            latest = self.storage.latest()
            if latest is None:
                return None
            restore_from = latest
        path, manifest = read_manifest(restore_from)
        if manifest.get("max_parallelism") != self.job.max_parallelism:
            raise CheckpointError(f"{path} was taken with max parallelism {manifest.get('max_parallelism')}; "
                                  f"this job has {self.job.max_parallelism} (it is fixed for the life of a job)")
        if manifest.get("state_backend") != self.job.state_backend:
            raise CheckpointError(f"{path} holds {manifest.get('state_backend')} state; this job uses {self.job.state_backend}")
        uids = {t.state_uid for t in self.plan.nodes.values()}
        unknown = sorted(set(manifest["operators"]) - uids)
        if unknown:
            raise CheckpointError(f"{path} has state for operators this job does not have: {', '.join(unknown)} "
                                  "(set .uid(...) on operators to keep their state across job edits)")
        self.restored_from = str(path)
        return path, manifest

    def _restored_for(self, uid: str, subtask: int, parallelism: int, *, kind: str) -> tuple[Any, bool, list[Path]]:
        """(json state or merged form, rescaled, keyed state files) for one operator subtask."""
        if self._restore is None:
            return None, False, []
        path, manifest = self._restore
        op = manifest["operators"].get(uid)
        if op is None:
            return None, False, []
        subs = op["subtasks"]
        files = [path / s["file"] for s in subs if s and s.get("file")]
        if op["parallelism"] == parallelism:
            return subs[subtask]["json"], False, files
        if kind == "sink":
            mine = [s["json"] for j, s in enumerate(subs) if j % parallelism == subtask]
        else:
            mine = [s["json"] for s in subs]
        return {"subtasks": mine}, True, files

    # -- building -----------------------------------------------------------------------------
    def _backend(self, uid: str, subtask: int) -> StateBackend:
        if self.job.state_backend == "sqlite":
            if self._state_root is None:
                base = self.job.state_dir or tempfile.gettempdir()
                os.makedirs(base, exist_ok=True)
                self._state_root = Path(tempfile.mkdtemp(prefix=f"{self.job_id}-", dir=base))
            return SQLiteStateBackend(self.job.max_parallelism, self._state_root / f"{uid}-{subtask}.db")
        return MemoryStateBackend(self.job.max_parallelism)

    def _build(self) -> None:
        restored_id = self._restore[1]["checkpoint_id"] if self._restore else None
        by_chain, input_offset, uid_par = self._create_tasks(restored_id)
        self._wire(by_chain, input_offset)
        # after every id in the directory: an older restore must not reuse (or retire) newer ones
        last_id = max(restored_id or 0, self.storage.highest_id() if self.storage else 0)
        self.coordinator = CheckpointCoordinator(
            job_name=self.job.name, tasks=self.tasks, storage=self.storage,
            next_id=last_id + 1, max_parallelism=self.job.max_parallelism,
            backend=self.job.state_backend, uid_parallelism=uid_par)
        self.coordinator.on_complete.extend(self._guarded(cb) for cb in self.checkpoint_listeners)

    def _create_tasks(self, restored_id: int | None) -> tuple[dict[int, list[Task]], dict[int, dict[int, int]], dict[str, int]]:
        """One task per subtask of every chain, with its operators and input channels.

        Returns the tasks by chain head, where each input edge's channels start in a consumer's
        input list (one channel per producer subtask; one for a forward edge), and the
        parallelism of every operator uid."""
        plan = self.plan
        by_chain: dict[int, list[Task]] = {}
        input_offset: dict[int, dict[int, int]] = {}  # consumer head -> id(edge) -> first channel index
        uid_par: dict[str, int] = {}
        self._restored_sinks: list[tuple[SinkOperator, Any]] = []
        for chain in plan.chains:
            head = plan.nodes[chain[0]]
            p = plan.parallelism[chain[0]]
            offsets, n = {}, 0
            for e in plan.inputs[chain[0]]:
                offsets[id(e)] = n
                n += 1 if e.kind == "forward" else plan.parallelism[e.producer]
            input_offset[chain[0]] = offsets
            for tid in chain:
                uid_par[plan.nodes[tid].state_uid] = p
            tasks = []
            for i in range(p):
                ops = [self._make_op(plan.nodes[tid], i, p, restored_id) for tid in chain
                       if plan.nodes[tid].kind != "source"]
                task = Task(f"{head.name}#{chain[0]}", i, ops, n)
                if head.kind == "source":
                    self._attach_source(task, head, i, p, restored_id)
                tasks.append(task)
            by_chain[chain[0]] = tasks
            self.tasks.extend(tasks)
        return by_chain, input_offset, uid_par

    def _wire(self, by_chain: dict[int, list[Task]], input_offset: dict[int, dict[int, int]]) -> None:
        """Connect every operator's main and side outputs: the next chained operator, or
        partitioners writing into the consumer tasks' input channels."""
        plan = self.plan
        head_of = {tid: ch[0] for ch in plan.chains for tid in ch}
        for chain in plan.chains:
            op_nodes = [tid for tid in chain if plan.nodes[tid].kind != "source"]
            for task in by_chain[chain[0]]:
                i = task.subtask
                outs: dict[tuple[int, Any], list[Callable[[Any], None]]] = {}
                for tid in chain:
                    for e in plan.outputs[tid]:
                        if e.kind == "chain":
                            continue
                        targets = by_chain[head_of[e.consumer]]
                        base = input_offset[e.consumer][id(e)]
                        chs = [targets[i].inputs[base]] if e.kind == "forward" else [tk.inputs[base + i] for tk in targets]
                        task.outputs.extend(chs)
                        outs.setdefault((tid, e.tag), []).append(self._partitioner(e, chs))
                ops_by_node = dict(zip(op_nodes, task.ops))
                for pos, tid in enumerate(op_nodes):
                    op = ops_by_node[tid]
                    if pos + 1 < len(op_nodes):
                        main = _counted(ops_by_node[op_nodes[pos + 1]])
                    else:
                        main = fan_out(outs.get((tid, None), []))
                    sides = {tag: fan_out(ps) for (n, tag), ps in outs.items() if n == tid and tag is not None}
                    op.setup(op.ctx, main, sides)
                if not op_nodes:  # a source whose records go straight to channels
                    task.head = fan_out(outs.get((chain[0], None), []))

    def _guarded(self, cb: Callable[[int, bool, str | None, float], None]) -> Callable[[int, bool, str | None, float], None]:
        def call(cid: int, savepoint: bool, path: str | None, duration: float) -> None:
            try:
                cb(cid, savepoint, path, duration)
            except Exception:
                log.exception("stream job %s: checkpoint listener failed", self.job_id)
        return call

    def _partitioner(self, e: Edge, chs: list[Any]) -> Callable[[Any], None]:
        if e.kind == "hash":
            sel = self.plan.nodes[e.consumer].key_selector
            assert sel is not None
            return HashPartitioner(chs, sel, self.job.max_parallelism)
        if e.kind == "forward":
            return Forward(chs)
        return Rebalance(chs)

    def _make_op(self, t: Transformation, i: int, p: int, restored_id: int | None) -> Operator:
        uid = t.state_uid
        if t.kind == "sink":
            sink = _instance(t.sink)
            state, rescaled, _ = self._restored_for(uid, i, p, kind="sink")
            sink.open(SourceSplitContext(i, p, state, rescaled, self.job.name, uid,
                                         restored_id if state is not None else None))
            op: Operator = SinkOperator(uid, sink)
            if state is not None:
                self._restored_sinks.append((op, state))  # type: ignore[arg-type]
            ctx = OperatorContext(job_name=self.job.name, uid=uid, subtask_index=i, parallelism=p,
                                  max_parallelism=self.job.max_parallelism, clock=self.clock)
        else:
            assert t.operator is not None
            op = t.operator(uid)
            keyed = t.key_selector is not None
            ctx = OperatorContext(job_name=self.job.name, uid=uid, subtask_index=i, parallelism=p,
                                  max_parallelism=self.job.max_parallelism, clock=self.clock,
                                  backend=self._backend(uid, i) if keyed else None,
                                  key_groups=key_group_range(i, self.job.max_parallelism, p) if keyed else None)
        op.ctx = ctx
        return op

    def _attach_source(self, task: Task, head: Transformation, i: int, p: int, restored_id: int | None) -> None:
        uid = head.state_uid
        state, rescaled, _ = self._restored_for(uid, i, p, kind="source")
        task.source = _instance(head.source)
        task.source_uid = uid
        task.source_ctx = SourceSplitContext(i, p, state, rescaled, self.job.name, uid,
                                             restored_id if state is not None else None)
        task.assigner = head.timestamp_assigner
        if head.watermark_strategy is not None:
            task.wm_gen = head.watermark_strategy.create_generator()

    def _open(self) -> None:
        for task in self.tasks:
            if task.source is not None:
                assert task.source_ctx is not None
                task.source.open(task.source_ctx)
            for op in task.ops:
                op.open()
                if op.keyed and self._restore is not None:
                    _, _, files = self._restored_for(op.uid, op.ctx.subtask_index, op.ctx.parallelism, kind="keyed")
                    op.restore_keyed(files)
        if self._restore is not None:
            cid = self._restore[1]["checkpoint_id"]
            for op, state in self._restored_sinks:
                op.sink.commit(cid, state)  # idempotent re-commit of the restored checkpoint

    # -- control from other threads -----------------------------------------------------------
    def request(self, kind: str, arg: Any = None) -> Future[str | None]:
        fut: Future[str | None] = Future()
        with self._lock:
            self._requests.append((kind, (arg, fut)))
        return fut

    # -- the loop -------------------------------------------------------------------------------
    def _set(self, new: JobStatus) -> None:
        self.status = transition(self.status, new)
        if new.terminal:
            self.end_time_ms = int(time.time() * 1000)
            self._ended_perf = time.perf_counter()
        for listener in self.status_listeners:
            try:
                listener(self)
            except Exception:  # a registry that cannot be written must not stop the job
                log.exception("stream job %s: status listener failed", self.job_id)

    def run(self) -> None:
        try:
            self._build()
            self._open()
            self.start_time_ms = int(time.time() * 1000)
            self._set(JobStatus.RUNNING)
            self._started_perf = time.perf_counter()
            self._loop()
        except BaseException as exc:
            self.error = exc
            if self.status in (JobStatus.CREATED, JobStatus.RUNNING, JobStatus.CANCELLING):
                self._set(JobStatus.FAILING)
            if hasattr(self, "coordinator"):
                self.coordinator.abort_pending(exc)
            self._close(quiet=True)
            self._set(JobStatus.FAILED)
        else:
            self._close(quiet=False)
            self._set(JobStatus.CANCELED if self.status == JobStatus.CANCELLING else JobStatus.FINISHED)
        finally:
            self.end_time_ms = int(time.time() * 1000)
            self._fail_requests()
            self.done.set()

    def _loop(self) -> None:
        job, coord, clock = self.job, self.coordinator, self.clock
        interval = job.checkpoint.interval_ms / 1000.0 if job.checkpoint.interval_ms and self.storage else None
        next_ckpt = time.monotonic() + interval if interval else float("inf")
        next_marker = time.monotonic() + LATENCY_MARKER_INTERVAL_S
        sources = [t for t in self.tasks if t.source is not None]
        others = [t for t in self.tasks if t.source is None]
        batch = job.batch_size
        savepoint_waiters = self._savepoint_waiters
        stop_after: int | None = None  # checkpoint id after which a cancel-with-savepoint stops
        cancel_now = False
        while True:
            if self._requests:
                with self._lock:
                    reqs, self._requests = self._requests, []
                for kind, (arg, fut) in reqs:
                    if kind == "savepoint":
                        savepoint_waiters.append(fut)
                    elif kind == "cancel" and self.status == JobStatus.RUNNING:
                        self._set(JobStatus.CANCELLING)
                        if arg:
                            savepoint_waiters.append(fut)
                            stop_after = -1
                        else:
                            fut.set_result(None)
                            cancel_now = True
            if cancel_now:
                coord.abort_pending(StreamError("job cancelled"))
                return
            if stop_after is not None and stop_after >= 0 and coord.last_completed_id is not None \
                    and coord.last_completed_id >= stop_after:
                return
            now_ms = clock.now_ms()
            progressed = coord.poll()
            for t in sources:
                t_next = t.next_processing_timer()
                if t_next is not None and t_next <= now_ms:
                    t.on_processing_time(now_ms)
                if t.step_source(batch, now_ms):
                    progressed = True
            for t in others:
                t_next = t.next_processing_timer()
                if t_next is not None and t_next <= now_ms:
                    t.on_processing_time(now_ms)
                    progressed = True
                if t.step():
                    progressed = True
            mono = time.monotonic()
            if mono >= next_marker:
                stamp = time.perf_counter() * 1000.0
                for t in sources:
                    if not t.input_done:
                        t.broadcast((LAT, stamp))
                next_marker = mono + LATENCY_MARKER_INTERVAL_S
            if savepoint_waiters and coord.pending is None and not coord.final_done:
                # savepoints go before periodic checkpoints, which would otherwise starve them
                if self.storage is None:
                    exc = CheckpointError("savepoints need a checkpoint directory (enable_checkpointing or set_checkpoint_storage)")
                    for f in savepoint_waiters:
                        f.set_exception(exc)
                    savepoint_waiters.clear()
                    if stop_after == -1:
                        return
                else:
                    cid = coord.trigger(savepoint=True)
                    assert coord.pending is not None  # published asynchronously, see coordinator
                    coord.pending.futures.extend(savepoint_waiters)
                    savepoint_waiters.clear()
                    if stop_after == -1:
                        stop_after = cid
            if coord.pending is None:
                if all(t.input_done for t in sources) and stop_after is None:
                    if coord.final_done:
                        return
                    coord.trigger(final=True)
                    progressed = True
                elif mono >= next_ckpt and stop_after is None:
                    coord.trigger()
                    next_ckpt = mono + interval if interval else float("inf")
                    progressed = True
            if not progressed:
                time.sleep(0.001)

    def _close(self, *, quiet: bool) -> None:
        first: BaseException | None = None
        if hasattr(self, "coordinator"):
            self.coordinator.close()
        for task in self.tasks:
            closers = [op.close for op in task.ops] + ([task.source.close] if task.source is not None else [])
            for close in closers:
                try:
                    close()
                except Exception as exc:  # close everything, report the first problem
                    first = first or exc
        if self._state_root is not None:
            shutil.rmtree(self._state_root, ignore_errors=True)
        if first is not None and not quiet:
            raise first

    def _fail_requests(self) -> None:
        with self._lock:
            reqs, self._requests = self._requests, []
        reqs += [("savepoint", (None, f)) for f in self._savepoint_waiters]
        for _kind, (_arg, fut) in reqs:
            if not fut.done():
                fut.set_exception(StreamError(f"job {self.job_id} is {self.status.value}"))

    # -- observation ------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """Measured figures: throughput since start, latency-marker latency, backpressure, checkpoints."""
        end = self._ended_perf if self._ended_perf is not None else time.perf_counter()
        elapsed = (end - self._started_perf) if self._started_perf else 0.0
        src_records = sum(t.records_in for t in self.tasks if t.source is not None)
        lat = [x for t in self.tasks for x in list(t.latencies_ms)]
        bp = [t.backpressured_turns / t.turns for t in self.tasks if t.turns]
        durs = list(self.coordinator.durations_ms) if hasattr(self, "coordinator") else []
        wms = [t.watermark for t in self.tasks if t.watermark > MIN_WATERMARK]
        now = self.clock.now_ms()
        return {
            "job_id": self.job_id,
            "throughput": src_records / elapsed if elapsed > 0 else 0.0,
            "records_in": src_records,
            "latency_ms": sum(lat) / len(lat) if lat else None,
            "backpressure_ratio": max(bp) if bp else 0.0,
            "checkpoint_duration_ms": durs[-1] if durs else None,
            "checkpoints_completed": self.coordinator.completed if hasattr(self, "coordinator") else 0,
            "watermark_lag_ms": (now - min(wms)) if wms and min(wms) < 2**62 else None,
            "state_size_bytes": sum(self.coordinator.state_sizes.values()) if hasattr(self, "coordinator") else 0,
        }


class JobClient:
    """A handle on a running or finished job."""

    def __init__(self, run: JobRun, thread: threading.Thread | None) -> None:
        self.run, self._thread = run, thread

    @classmethod
    def start(cls, job: JobGraph, clock: Clock, *, restore_from: str | os.PathLike[str] | None = None,
              thread: bool = True, job_id: str | None = None,
              on_status: Callable[[JobRun], None] | None = None,
              on_checkpoint: Callable[[int, bool, str | None, float], None] | None = None) -> JobClient:
        run = JobRun(job, clock, restore_from, job_id=job_id)
        if on_status is not None:
            run.status_listeners.append(on_status)
        if on_checkpoint is not None:
            run.checkpoint_listeners.append(on_checkpoint)
        th = None
        if thread:
            th = threading.Thread(target=run.run, name=f"twingraph-stream-{run.job_id}", daemon=True)
            th.start()
        return cls(run, th)

    @property
    def job_id(self) -> str:
        return self.run.job_id

    @property
    def status(self) -> JobStatus:
        return self.run.status

    def metrics(self) -> dict[str, Any]:
        return self.run.metrics()

    def wait(self, timeout: float | None = None) -> str:
        """Block until the job ends; return its id, or raise ``JobFailed`` (cause chained)."""
        if self._thread is None:
            self.run.run()
        elif not self.run.done.wait(timeout):
            raise TimeoutError(f"job {self.job_id} still {self.status.value} after {timeout}s")
        err = self.run.error
        if err is not None:
            if isinstance(err, StreamError) and not isinstance(err, JobFailed):
                raise err
            raise JobFailed(f"stream job {self.run.job.name!r} ({self.job_id}) failed: {err!r}",
                            job_name=self.run.job.name) from err
        return self.job_id

    def trigger_savepoint(self, timeout: float | None = 60) -> str:
        """Take a savepoint now; returns its directory."""
        path = self.run.request("savepoint").result(timeout)
        assert path is not None
        return path

    def cancel(self, with_savepoint: bool = False, timeout: float | None = 60) -> str | None:
        """Cancel the job, optionally after a savepoint; returns the savepoint directory or None."""
        fut = self.run.request("cancel", with_savepoint)
        path = fut.result(timeout)
        self.run.done.wait(timeout)
        return path
