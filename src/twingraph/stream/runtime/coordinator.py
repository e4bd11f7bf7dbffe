"""The checkpoint coordinator: triggers checkpoints at the sources and completes them.

Protocol (one checkpoint in flight at a time, like Flink's default):

1. ``trigger`` picks the next id, opens an in-progress directory, and asks every source subtask
   to snapshot its position and emit a barrier (between two polls, in the scheduler thread).
2. Barriers flow with the data; every task aligns them, snapshots and calls ``ack``.
3. When every task acknowledged, the manifest is written and the directory published atomically
   (:mod:`twingraph.stream.checkpoints`) on a background I/O thread — the fsyncs take tens of
   milliseconds and records keep flowing meanwhile. Once it is published, ``poll`` (called by
   the scheduler every turn) tells the sinks to ``commit`` and notifies the sources. A crash before the publish leaves the previous checkpoint as the latest; a crash
   after it is covered by the re-commit on restore (see ``connectors/base.py``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from twingraph.stream.checkpoints import CheckpointStorage
from twingraph.stream.runtime.histogram import Histogram
from twingraph.stream.runtime.tasks import SinkOperator, Task


class _Pending:
    def __init__(self, cid: int, savepoint: bool, final: bool, directory: Path | None) -> None:
        self.cid, self.savepoint, self.final, self.directory = cid, savepoint, final, directory
        self.started = time.perf_counter()
        self.acks: dict[tuple[str, int], dict[str, Any]] = {}
        self.futures: list[Future[str | None]] = []
        self.operators: dict[str, dict[str, Any]] = {}
        self.publishing: Future[Path] | None = None


class CheckpointCoordinator:
    def __init__(self, *, job_name: str, tasks: list[Task], storage: CheckpointStorage | None,
                 next_id: int, max_parallelism: int, backend: str, uid_parallelism: dict[str, int]) -> None:
        self.job_name, self.tasks, self.storage = job_name, tasks, storage
        self.next_id, self.max_parallelism, self.backend = next_id, max_parallelism, backend
        self.uid_parallelism = uid_parallelism
        self.pending: _Pending | None = None
        self.completed = 0
        self.last_completed_id: int | None = None
        self.last_path: str | None = None
        self.durations_ms: deque[float] = deque(maxlen=100)
        self.duration_histogram = Histogram((0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
        self.state_sizes: dict[tuple[str, int], int] = {}
        self.final_done = False
        self.on_complete: list[Callable[[int, bool, str | None, float], None]] = []
        self._io: ThreadPoolExecutor | None = None
        for t in tasks:
            t.ack = self.ack
            t.checkpoint_dir = self._dir

    def _dir(self, cid: int) -> Path | None:
        p = self.pending
        return p.directory if p is not None and p.cid == cid else None

    def trigger(self, *, savepoint: bool = False, final: bool = False) -> int:
        assert self.pending is None
        cid = self.next_id
        self.next_id += 1
        d = self.storage.begin(cid, savepoint) if self.storage is not None else None
        self.pending = _Pending(cid, savepoint, final, d)
        for t in self.tasks:
            if t.source is not None:
                t.snapshot(cid)
        return cid

    def ack(self, task: Task, cid: int, states: dict[str, Any]) -> None:
        p = self.pending
        assert p is not None and p.cid == cid, "barrier of an unknown checkpoint"
        p.acks[(task.name, task.subtask)] = states
        if len(p.acks) == len(self.tasks):
            self._complete(p)

    def _complete(self, p: _Pending) -> None:
        """Every task acknowledged: publish the checkpoint (fsyncs and rename on the I/O thread,
        while the scheduler keeps processing), then ``poll`` commits the sinks."""
        operators: dict[str, dict[str, Any]] = {}
        for (_, subtask), states in p.acks.items():
            for uid, entry in states.items():
                op = operators.setdefault(uid, {"parallelism": self.uid_parallelism[uid],
                                                "subtasks": [None] * self.uid_parallelism[uid]})
                op["subtasks"][subtask] = entry
                self.state_sizes[(uid, subtask)] = entry["size"]
        p.operators = operators
        if self.storage is None:
            self._finish(p, None)
            return
        manifest = {"checkpoint_id": p.cid, "kind": "savepoint" if p.savepoint else "checkpoint",
                    "job_name": self.job_name, "max_parallelism": self.max_parallelism,
                    "state_backend": self.backend, "timestamp_ms": int(time.time() * 1000),
                    "final": p.final, "operators": operators}
        if self._io is None:
            self._io = ThreadPoolExecutor(1, thread_name_prefix=f"checkpoint-io-{self.job_name}")
        p.publishing = self._io.submit(self.storage.complete, p.cid, p.savepoint, manifest)

    def poll(self) -> bool:
        """Called by the scheduler every turn: finish a checkpoint whose publish is done. Raises
        ``CheckpointError`` if publishing failed (the job fails; the previous checkpoint stands)."""
        p = self.pending
        if p is None or p.publishing is None or not p.publishing.done():
            return False
        path = p.publishing.result()
        self._finish(p, str(path))
        return True

    def _finish(self, p: _Pending, path: str | None) -> None:
        self.pending = None
        operators = p.operators
        for t in self.tasks:
            for sink_op in t.ops:
                if isinstance(sink_op, SinkOperator):
                    sink_op.sink.commit(p.cid, operators[sink_op.uid]["subtasks"][t.subtask]["json"])
        for t in self.tasks:
            if t.source is not None:
                t.source.notify_checkpoint_complete(p.cid)
        duration = (time.perf_counter() - p.started) * 1000.0
        self.durations_ms.append(duration)
        self.duration_histogram.observe(duration / 1000.0)
        self.completed += 1
        self.last_completed_id, self.last_path = p.cid, path
        if p.final:
            self.final_done = True
        for fut in p.futures:
            fut.set_result(path)
        for cb in self.on_complete:
            cb(p.cid, p.savepoint, path, duration)

    def close(self) -> None:
        if self._io is not None:
            self._io.shutdown(wait=True)
            self._io = None

    def abort_pending(self, exc: BaseException) -> None:
        p = self.pending
        if p is None:
            return
        self.pending = None
        if p.publishing is not None:
            try:
                p.publishing.result()  # never delete a directory the I/O thread is renaming
            except Exception:  # noqa: BLE001 - the job is failing anyway; the old checkpoint stands
                pass
        elif self.storage is not None:
            self.storage.abort(p.cid, p.savepoint)
        for fut in p.futures:
            if not fut.done():
                fut.set_exception(exc)
