"""``SQLStreamJobStore``: the stream job manager's registry in the metadata database.

One row per submitted job in ``stream_jobs`` (entry point, JSON arguments, status, times, the
checkpoint directory) and one per completed checkpoint or savepoint in ``stream_checkpoints``.
Writes are single statements; ``record_checkpoint`` is idempotent (a checkpoint id is written
once). Unknown job ids read as ``None``; the database's failures raise ``StorageError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, insert, select, update

from twingraph.stores.metadata.schema import stream_checkpoints, stream_jobs
from twingraph.stores.metadata.store import SQLMetadataStore


@dataclass(frozen=True)
class StreamJobRow:
    job_id: str
    job_name: str
    entrypoint: str
    args: dict[str, Any]
    status: str
    restore_from: str | None
    checkpoint_dir: str | None
    submitted_at: float
    start_time_ms: int | None
    end_time_ms: int | None
    error: str | None


@dataclass(frozen=True)
class StreamCheckpointRow:
    job_id: str
    checkpoint_id: int
    kind: str
    path: str
    duration_ms: float
    completed_at: float


class SQLStreamJobStore:
    def __init__(self, store: SQLMetadataStore, *, clock: Callable[[], float] | None = None) -> None:
        self._store = store
        self._clock = clock or store._clock

    def add(self, *, job_id: str, job_name: str, entrypoint: str, args: dict[str, Any], status: str,
            restore_from: str | None, checkpoint_dir: str | None) -> None:
        with self._store._writing() as conn:
            conn.execute(insert(stream_jobs).values(
                job_id=job_id, job_name=job_name, entrypoint=entrypoint, args=args, status=status,
                restore_from=restore_from, checkpoint_dir=checkpoint_dir, submitted_at=self._clock()))

    def set_status(self, job_id: str, status: str, *, start_time_ms: int | None = None,
                   end_time_ms: int | None = None, error: str | None = None) -> None:
        values: dict[str, Any] = {"status": status}
        if start_time_ms is not None:
            values["start_time_ms"] = start_time_ms
        if end_time_ms is not None:
            values["end_time_ms"] = end_time_ms
        if error is not None:
            values["error"] = error
        with self._store._writing() as conn:
            conn.execute(update(stream_jobs).where(stream_jobs.c.job_id == job_id).values(**values))

    def record_checkpoint(self, job_id: str, checkpoint_id: int, kind: str, path: str, duration_ms: float) -> None:
        with self._store._writing() as conn:
            seen = conn.execute(select(stream_checkpoints.c.checkpoint_id).where(
                stream_checkpoints.c.job_id == job_id, stream_checkpoints.c.checkpoint_id == checkpoint_id)).first()
            if seen is None:
                conn.execute(insert(stream_checkpoints).values(
                    job_id=job_id, checkpoint_id=checkpoint_id, kind=kind, path=path,
                    duration_ms=duration_ms, completed_at=self._clock()))

    def get(self, job_id: str) -> StreamJobRow | None:
        with self._store._reading() as conn:
            row = conn.execute(select(stream_jobs).where(stream_jobs.c.job_id == job_id)).first()
        return None if row is None else _job(row)

    def jobs(self) -> list[StreamJobRow]:
        with self._store._reading() as conn:
            rows = conn.execute(select(stream_jobs).order_by(stream_jobs.c.submitted_at)).all()
        return [_job(r) for r in rows]

    def checkpoints(self, job_id: str) -> list[StreamCheckpointRow]:
        with self._store._reading() as conn:
            rows = conn.execute(select(stream_checkpoints).where(stream_checkpoints.c.job_id == job_id)
                                .order_by(stream_checkpoints.c.checkpoint_id)).all()
        return [StreamCheckpointRow(r.job_id, r.checkpoint_id, r.kind, r.path, r.duration_ms, r.completed_at)
                for r in rows]


def _job(r: Row[Any]) -> StreamJobRow:
    return StreamJobRow(r.job_id, r.job_name, r.entrypoint, dict(r.args or {}), r.status, r.restore_from,
                        r.checkpoint_dir, r.submitted_at, r.start_time_ms, r.end_time_ms, r.error)
