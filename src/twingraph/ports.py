"""The small interfaces the engine talks to. Adapters implement them; the engine imports only these.

Semantics are part of the contract and are checked by the contract suites in ``tests/contract``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from twingraph.core.records import EdgeRecord, LogRecord, Record, RunRecord, TaskRecord
from twingraph.core.results import StorageMetadata

Buffer = bytes | bytearray | memoryview


@runtime_checkable
class ResultStore(Protocol):
    """Synchronous, content-verified result store keyed by node id (= structural key).

    - ``put`` is atomic: after a crash the key is either absent or complete. Putting an existing
      key replaces it atomically. ``data`` may be one buffer or a sequence of buffers (written in
      order, never concatenated in memory).
    - ``put_many`` writes all items in one transaction (SQLite) or one fsync group (filesystem).
    - ``get`` returns the verified bytes, or None on a miss; a hash mismatch raises
      ``IntegrityError`` (a ``StorageError``). It may return a read-only memoryview over a
      memory map (zero-copy); callers must not assume ``bytes``.
    - ``head`` returns metadata without reading data, None on a miss.
    - ``content_hashes`` is the memo lookup for many keys at once: ``{key: content_hash}`` for
      the keys that are stored, missing keys absent; a value stored as raw bytes answers
      ``"bytes:" + content_hash`` (``core.results.stored_value_id``).
    - ``iter_chunks`` yields nothing on a miss; it verifies as it goes and holds back the last
      chunk until the whole value has matched its hash.
    """

    def put(self, key: str, data: Buffer | Sequence[Buffer], meta: StorageMetadata) -> None: ...
    def put_many(self, items: Sequence[tuple[str, Buffer | Sequence[Buffer], StorageMetadata]]) -> None: ...
    def get(self, key: str) -> Buffer | None: ...
    def head(self, key: str) -> StorageMetadata | None: ...
    def read(self, key: str) -> tuple[StorageMetadata, Buffer] | None: ...
    def content_hashes(self, keys: Sequence[str]) -> dict[str, str]: ...
    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]: ...
    def delete(self, key: str) -> bool: ...


@runtime_checkable
class MetadataStore(Protocol):
    """Durable record of runs, tasks, attempts, logs and lineage.

    ``write`` applies a batch of records in order in ONE transaction (all or nothing).
    The engine writes an attempt row for every attempt that failed, was retried, or was still
    running when its records were handed over; a task whose first attempt succeeded quickly is
    described by its task row alone (``attempts`` = 1, ``fence``, start and end times). A
    ``TaskUpdate`` carrying a ``fence`` that is lower than the task's stored fence is not applied;
    ``write`` returns the (run_id, node_id) of such stale updates. Reads return None / [] on a miss.
    ``find_run_ids`` gives the ids starting with ``prefix`` (case-sensitive), in code-point order,
    at most ``limit`` (to resolve an abbreviated run id).
    """

    def write(self, batch: Sequence[Record]) -> list[tuple[str, str]]: ...
    def get_run(self, run_id: str) -> RunRecord | None: ...
    def claim_driver(self, run_id: str, *, heartbeat: Any = ..., now: float | None = None,
                     running: bool = False, only_running: bool = False) -> int:
        """The next driver epoch of ``run_id`` (1 for the first process that resumes or
        adopts it), claimed atomically: two claimants never get the same number.
        ``only_running``: ``ConflictError`` unless the run is RUNNING (an adoption: a run
        ended meanwhile, cancelled, is not made RUNNING again).
        With ``heartbeat`` (the run's ``heartbeat_at`` as the claimant last read it, None
        included), a compare-and-set: ``ConflictError`` if the heartbeat moved meanwhile (a
        driver is alive, or another claimant won); ``now`` becomes the heartbeat, so later
        claimants see a driver. ``running``: the run becomes RUNNING in the same step (a
        resume of an ended run: a claimant reading it just after saw it ended, skipped the
        wait for its driver, and claimed over the fresh heartbeat). ``NotFoundError`` for an
        unknown run."""
    def driver_epoch(self, run_id: str) -> int | None:
        """The epoch of ``run_id``'s current driver (0 until a driver claims it; None for an
        unknown run): a driver whose own epoch is lower has been taken over from."""
        ...
    def list_runs(self, *, pipeline: str | None = None, state: str | None = None,
                  limit: int = 50, offset: int = 0) -> list[RunRecord]: ...
    def find_run_ids(self, prefix: str, *, limit: int = 10) -> list[str]: ...
    def get_tasks(self, run_id: str) -> list[TaskRecord]: ...
    def get_logs(self, run_id: str, *, node_id: str | None = None, level: str | None = None,
                 limit: int = 1000, offset: int = 0) -> list[LogRecord]: ...
    def get_edges(self, run_id: str) -> list[EdgeRecord]: ...


class EventSink(Protocol):
    """Receives engine events (dicts with an ``event`` key). Must not block; must not raise."""

    def __call__(self, event: dict[str, Any]) -> None: ...


class Clock(Protocol):
    """Injected time: ``now()`` wall seconds, ``monotonic()`` for durations and deadlines."""

    def now(self) -> float: ...
    def monotonic(self) -> float: ...


TaskFn = Callable[..., Any]


class Job(Protocol):
    """What an executor runs: ``fn(*args, **kwargs)`` for task ``node_id`` under ``fence``."""
    node_id: str
    fence: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    mode: str                   # 'thread' | 'process' (local); platform executors ignore it
    started_at: float | None    # set by the executor (time.monotonic()) when it really starts
    # Where a job running in another interpreter sends its task log records
    # (``on_log(created, level, message)``, any thread); None: nobody listens.
    on_log: Callable[[float, str, str], None] | None
    # Called (any thread) once ``started_at`` is set, by an executor that may keep a job
    # waiting for a worker: until then the task's row says it is queued, not running, and no
    # attempt is counted; None: nobody listens.
    on_start: Callable[[], None] | None


class Outcome(Protocol):
    """How a job ended: ``ok`` with ``value``, or not ok with ``error`` (an exception object)."""
    node_id: str
    fence: int
    ok: bool
    value: Any
    error: BaseException | None
    duration: float


@dataclass(slots=True)
class JobOutcome:
    """An ``Outcome`` as executors (and the run loop, for an inline call it was taken over
    from) report it."""
    node_id: str
    fence: int
    ok: bool
    value: Any = None
    error: BaseException | None = None
    duration: float = 0.0


class Executor(Protocol):
    """Runs jobs somewhere and reports each outcome exactly once through ``done``.

    ``done`` may be called from any thread. ``abort(job)`` stops a running job as hard as the
    platform allows (a process is killed; a thread is abandoned) and returns True if it was
    killed; after it, ``done`` is not called for that job's fence.
    """

    platform: str

    def submit(self, job: Job, done: Callable[[Outcome], None]) -> None: ...
    def abort(self, job: Job) -> bool: ...
    def shutdown(self) -> None: ...
