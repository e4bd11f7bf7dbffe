"""The embedded job manager: submits jobs by entry point, tracks them, answers for the REST face.

A job is submitted as an *entry point*, ``"package.module:function"`` plus JSON keyword
arguments: the function, already installed on this machine, builds and returns a
``StreamExecutionEnvironment``. Only a function that says it is an entry point is called
(``@stream_job``, or annotated ``-> StreamExecutionEnvironment``; see ``entrypoints.py``), so a
request cannot call ``os:system`` or a helper. ``submit`` never unpickles anything; the
stream-engine document's pickled JobGraph (``submit_graph``) is code, and the REST face takes it
only from an admin of a server with auth required (``jobmanager.py``). Jobs run in this process,
one scheduler thread each (the embedded task manager); ``slots`` bounds how many run at once.

With a ``registry`` (``twingraph.stores.metadata.stream_jobs.SQLStreamJobStore``, or anything with
its methods) every job, status change and completed checkpoint is recorded in the metadata
store. ``recover()`` — called by whoever starts the job manager — reads the registry after a
restart: jobs that were still running when the process died are submitted again under the same
id from their latest checkpoint (or from scratch if they had no checkpoint directory); finished
ones stay listed with their last status.
"""

from __future__ import annotations

import os
import uuid
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twingraph.errors import ConfigurationError, NotFoundError, ValidationError
from twingraph.stream.api import StreamExecutionEnvironment
from twingraph.stream.clock import SystemClock
from twingraph.stream.entrypoints import check_syntax, load_entrypoint
from twingraph.stream.graph import JobGraph
from twingraph.stream.runtime.job import JobClient, JobRun
from twingraph.stream.runtime.states import JobStatus


#: The registry's ``entrypoint`` of a job submitted as a serialized graph.
GRAPH_ENTRYPOINT = "<job graph>"


@dataclass
class JobRecord:
    job_id: str
    job_name: str
    entrypoint: str
    client: JobClient
    submitted_ms: int = field(default_factory=lambda: int(time.time() * 1000))


class JobManager:
    """Registry of the jobs submitted to this process."""

    def __init__(self, *, slots: int | None = None, task_manager_id: str | None = None,
                 port: int | None = None, registry: Any = None,
                 graph_dir: str | os.PathLike[str] | None = None) -> None:
        self.registry = registry
        #: where job graphs submitted as serialized bytes are kept (to resume them after a
        #: restart); None: such jobs are not resumable
        self.graph_dir = Path(graph_dir) if graph_dir is not None else None
        self.slots = slots or os.cpu_count() or 1
        self.host = socket.gethostname()
        self.task_manager_id = task_manager_id or f"embedded-{self.host}"
        self.port = port
        self._jobs: dict[str, JobRecord] = {}
        self._lock = threading.Lock()

    def approve_restore(self, graph: Any, restore_from: str | None) -> str | None:
        """What a job about to start from ``restore_from`` restores (``ValidationError`` to
        refuse): anything here; a server narrows it."""
        return restore_from

    def running(self) -> int:
        return sum(1 for r in self.jobs() if not r.client.status.terminal)

    def submit(self, entrypoint: str, args: dict[str, Any] | None = None,
               restore_from: str | None = None, *, job_id: str | None = None) -> JobRecord:
        """Build the job with ``entrypoint(**args)`` and start it; ``ValidationError`` if the entry
        point is malformed, cannot be imported, is not a stream job (``entrypoints.py``: a
        function decorated ``@stream_job`` or annotated ``-> StreamExecutionEnvironment``; it is
        not called otherwise) or does not return an environment."""
        check_syntax(entrypoint)
        if self.running() >= self.slots:
            raise ConfigurationError(f"all {self.slots} task slots are busy; cancel a job or raise the slots")
        func = load_entrypoint(entrypoint)     # a stream job, or ValidationError before any call
        try:
            env = func(**(args or {}))
        except Exception as exc:  # the caller's function or arguments are wrong: bad input
            raise ValidationError(f"{entrypoint}(**args) raised {exc!r}") from exc
        if not isinstance(env, StreamExecutionEnvironment):
            raise ValidationError(f"{entrypoint} returned {type(env).__name__}, not a StreamExecutionEnvironment")
        graph = env.get_job_graph()
        restore_from = self.approve_restore(graph, restore_from)
        job_id = job_id or "job_" + uuid.uuid4().hex[:8]
        if self.registry is not None and self.registry.get(job_id) is None:
            self.registry.add(job_id=job_id, job_name=env.name, entrypoint=entrypoint, args=args or {},
                              status=JobStatus.CREATED.value, restore_from=restore_from,
                              checkpoint_dir=graph.checkpoint.directory)
        client = JobClient.start(graph, env.clock, restore_from=restore_from, job_id=job_id,
                                 on_status=self._record_status if self.registry is not None else None,
                                 on_checkpoint=self._checkpoint_recorder(job_id) if self.registry is not None else None)
        rec = JobRecord(client.job_id, env.name, entrypoint, client)
        with self._lock:
            self._jobs[rec.job_id] = rec
        return rec

    def submit_graph(self, graph: JobGraph, *, blob: bytes | None = None,
                     restore_from: str | None = None, job_id: str | None = None) -> JobRecord:
        """Start a job from its ``JobGraph`` (a serialized graph from an AUTHENTICATED caller,
        see ``jobmanager.py``). ``blob`` — the bytes it came in — is kept in ``graph_dir`` so that
        ``recover()`` can start the job again after a restart."""
        if not isinstance(graph, JobGraph):
            raise ValidationError(f"a job graph was expected, not {type(graph).__name__}")
        if self.running() >= self.slots:
            raise ConfigurationError(f"all {self.slots} task slots are busy; cancel a job or raise the slots")
        job_id = job_id or "job_" + uuid.uuid4().hex[:8]
        if blob is not None and self.graph_dir is not None:
            self.graph_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.graph_dir / f".{job_id}.tmp"
            tmp.write_bytes(blob)
            os.replace(tmp, self.graph_dir / f"{job_id}.graph")
        if self.registry is not None and self.registry.get(job_id) is None:
            self.registry.add(job_id=job_id, job_name=graph.name, entrypoint=GRAPH_ENTRYPOINT,
                              args={}, status=JobStatus.CREATED.value, restore_from=restore_from,
                              checkpoint_dir=graph.checkpoint.directory)
        client = JobClient.start(graph, SystemClock(), restore_from=restore_from, job_id=job_id,
                                 on_status=self._record_status if self.registry is not None else None,
                                 on_checkpoint=self._checkpoint_recorder(job_id) if self.registry is not None else None)
        rec = JobRecord(client.job_id, graph.name, GRAPH_ENTRYPOINT, client)
        with self._lock:
            self._jobs[rec.job_id] = rec
        return rec

    def _resubmit(self, row: Any, restore: str | None) -> None:
        if row.entrypoint != GRAPH_ENTRYPOINT:
            self.submit(row.entrypoint, row.args, restore, job_id=row.job_id)
            return
        path = self.graph_dir / f"{row.job_id}.graph" if self.graph_dir is not None else None
        if path is None or not path.is_file():
            raise ValidationError("its serialized job graph was not kept")
        import cloudpickle
        # Our own file, written when an authenticated caller submitted the job.
        graph = cloudpickle.loads(path.read_bytes())
        self.submit_graph(graph, restore_from=restore, job_id=row.job_id)

    def _record_status(self, run: JobRun) -> None:
        self.registry.set_status(run.job_id, run.status.value, start_time_ms=run.start_time_ms,
                                 end_time_ms=run.end_time_ms if run.status.terminal else None,
                                 error=repr(run.error) if run.error else None)

    def _checkpoint_recorder(self, job_id: str) -> Any:
        def record(cid: int, savepoint: bool, path: str | None, duration_ms: float) -> None:
            if path is not None:
                self.registry.record_checkpoint(job_id, cid, "savepoint" if savepoint else "checkpoint",
                                                path, duration_ms)
        return record

    def recover(self) -> list[str]:
        """Resubmit the registry's jobs that were running when this process last stopped; returns their ids."""
        if self.registry is None:
            return []
        resumed = []
        for row in self.registry.jobs():
            if row.job_id in self._jobs or JobStatus(row.status).terminal:
                continue
            restore = "latest" if row.checkpoint_dir else None
            try:
                self._resubmit(row, restore)
            except Exception as exc:  # noqa: BLE001 - recorded, and the other jobs still resume
                self.registry.set_status(row.job_id, JobStatus.FAILED.value,
                                         error=f"could not be resumed after a restart: {exc!r}")
                continue
            resumed.append(row.job_id)
        return resumed

    def history(self) -> list[Any]:
        """Registry rows of jobs this process does not hold (earlier runs of the job manager)."""
        if self.registry is None:
            return []
        return [r for r in self.registry.jobs() if r.job_id not in self._jobs]

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            rec = self._jobs.get(job_id)
        if rec is None:
            raise NotFoundError(f"no stream job {job_id!r}")
        return rec

    def jobs(self) -> list[JobRecord]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str, with_savepoint: bool = False) -> str | None:
        rec = self.get(job_id)
        if rec.client.status.terminal:
            return None
        return rec.client.cancel(with_savepoint=with_savepoint)

    def savepoint(self, job_id: str) -> str:
        rec = self.get(job_id)
        if rec.client.status != JobStatus.RUNNING:
            raise ValidationError(f"job {job_id} is {rec.client.status.value}; savepoints need a RUNNING job")
        return rec.client.trigger_savepoint()

    def task_managers(self) -> list[dict[str, Any]]:
        return [{"task_manager_id": self.task_manager_id, "host": self.host, "port": self.port,
                 "task_slots": self.slots, "available_slots": max(0, self.slots - self.running()),
                 "status": "active"}]

    def cluster_metrics(self) -> dict[str, Any]:
        running = self.running()
        return {"total_task_managers": 1, "active_task_managers": 1, "total_slots": self.slots,
                "available_slots": max(0, self.slots - running),
                "utilization": round(running / self.slots, 4), "total_jobs": len(self.jobs()),
                "running_jobs": running}

    def shutdown(self) -> None:
        """Cancel every running job (without savepoints)."""
        for rec in self.jobs():
            if not rec.client.status.terminal:
                rec.client.cancel()
