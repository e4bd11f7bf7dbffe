"""The source/sink contract between the streaming runtime and its connectors.

A connector is a plain object satisfying :class:`Source` or :class:`Sink`. The runtime creates
one instance per parallel subtask (it calls the user's factory or deep-copies the prototype the
user passed), so an instance never needs locks: every method of one instance is called from one
thread, the runtime's scheduler thread.

Source protocol
---------------
``open(ctx)`` is called once before the first ``poll``. ``ctx.subtask_index`` and
``ctx.parallelism`` say which share of the input this subtask reads (a source splits its input
itself, e.g. partitions ``p`` with ``p % parallelism == subtask_index``). ``ctx.restored`` is
``None`` on a fresh start, or the dict this subtask's ``snapshot`` returned in the checkpoint
being restored; the source must then resume *exactly after* the last record it had polled when
that snapshot was taken. When a job is restored with a different parallelism, the runtime merges
the snapshots of all old subtasks into ``{"subtasks": [state0, state1, ...]}`` and hands that same
merged dict to every new subtask (``SourceSplitContext.rescaled`` is then True); each new subtask
picks the splits it now owns from it.

``poll(max_records)`` returns at most ``max_records`` ``(value, event_time_ms | None)`` pairs and
must not block for long (≤ ~10 ms; return ``[]`` when nothing is there now): the runtime is a
cooperative scheduler and a blocking poll stalls every other subtask. ``finished()`` is True once
a bounded source has handed out its last record. ``snapshot(checkpoint_id)`` is called between
two polls, when the runtime injects a checkpoint barrier after the records polled so far; it
returns a JSON-able dict. ``notify_checkpoint_complete(checkpoint_id)`` is informational (commit
consumer-group offsets for monitoring); correctness never depends on it, because the restored
position comes from the checkpoint, not from the broker.

Sink protocol and the restore rule
----------------------------------
Exactly-once output is two-phase:

1. ``write(records)`` receives records in order; nothing written may become visible to readers
   yet (write into a transaction, a temp file, a staging key...).
2. When the checkpoint barrier reaches the sink, ``pre_commit(checkpoint_id)`` flushes and returns
   a JSON-able dict describing what must be made visible for this checkpoint (a transactional id,
   temp file names, a sequence range). The runtime stores it in the checkpoint.
3. Once *every* sink subtask acknowledged the checkpoint and the checkpoint is durable,
   ``commit(checkpoint_id, state)`` makes that output visible. It must be **idempotent**.

On restore from checkpoint N the runtime calls ``Sink.open(ctx)`` with ``ctx.restored`` = the
state this sink subtask returned from ``pre_commit(N)``, then calls ``commit(N, that state)``
again (the crash may have come between the checkpoint becoming durable and the commit), and
everything written after N is discarded: the sink must abort or delete any open transaction or
temp file that ``open`` finds from the previous attempt and that no checkpoint ≤ N names. The
replayed records after N are then written again and committed with the next checkpoints. With a
changed parallelism, the restored states of old sink subtasks are handed out round-robin: new
subtask ``i`` receives ``{"subtasks": [states of old subtasks j with j % new_parallelism == i]}``
and ``rescaled`` is True; ``commit`` is then called with that same merged dict.

``close()`` is called once, on a normal end, a failure or a cancel. For a bounded job that runs
to its end, the runtime takes one final checkpoint after the sources finished, so everything
written is committed before ``execute()`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass
class SourceSplitContext:
    """Where a connector instance runs: its subtask, the operator's parallelism, restored state."""

    subtask_index: int
    parallelism: int
    restored: dict | None = None
    #: True when ``restored`` is the merged ``{"subtasks": [...]}`` form (restore with a changed
    #: parallelism, see the module docstring).
    rescaled: bool = False
    #: The job's name and the operator's uid, for connectors that name transactions or files.
    job_name: str = ""
    operator_uid: str = ""
    #: The id of the checkpoint being restored (None on a fresh start): a sink deletes staged
    #: output of later checkpoints that never completed, and keeps this one's for ``commit``.
    restored_checkpoint_id: int | None = None


@runtime_checkable
class Source(Protocol):
    """A replayable input split across subtasks; see the module docstring for the protocol."""

    bounded: bool

    def open(self, ctx: SourceSplitContext) -> None: ...

    def poll(self, max_records: int) -> list[tuple[Any, int | None]]: ...

    def finished(self) -> bool: ...

    def snapshot(self, checkpoint_id: int) -> dict: ...

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Sink(Protocol):
    """A two-phase-commit output; see the module docstring for the protocol and restore rule."""

    def open(self, ctx: SourceSplitContext) -> None: ...

    def write(self, records: list[Any]) -> None: ...

    def pre_commit(self, checkpoint_id: int) -> dict: ...

    def commit(self, checkpoint_id: int, state: dict) -> None: ...

    def close(self) -> None: ...
