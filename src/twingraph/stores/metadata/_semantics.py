"""What a record does to stored state, written once for every metadata store implementation.

Pure functions (no I/O): the SQL store and the memory fake both call them, so the two cannot
drift apart. The contract suite still checks both from the outside.

Task updates and fencing
    A ``TaskUpdate`` whose ``fence`` is set and lower than the task's stored fence is stale: it
    is not applied and its (run_id, node_id) is reported. An equal fence applies; a higher fence
    applies and raises the stored fence. A ``TaskUpdate`` without fence always applies.
    Only the non-None fields are written, and ``state`` always is. Timestamps follow the state:
    RUNNING sets ``started_at`` if the task has none yet (a retry keeps its first start) and
    clears ``ended_at``; a terminal state sets ``ended_at``; any other state clears ``ended_at``
    (a resumed task is not finished). An explicit ``started_at``/``ended_at`` on the update wins
    over these defaults (the engine's recorder folds RUNNING and SUCCESS into one update).
Task registration
    A ``TaskRecord`` for an existing (run_id, node_id) with a fence at least the stored one
    replaces every field except ``created_at`` (kept). One with a lower fence is dropped: it
    is the late first row of a driver the run was taken over from (a resumed run's driver
    fences every task it registers at its own generation or above), and it must not overwrite
    what the newer driver wrote. Repeated registrations in one batch follow the same rule in
    order (a later one with a lower fence than the one before it is dropped).
Attempts
    An ``AttemptRecord`` is fenced like the task it belongs to: one whose fence belongs to a
    driver generation the run has been taken over from (``fence_epoch(fence)`` below the run's
    ``driver_epoch``) is dropped, and so is one with a lower fence than the stored row of the
    same attempt (an attempt an earlier driver left RUNNING is ended by the new driver under
    its own fence). Repeated rows of one attempt in a batch: the last wins unless its fence is
    lower than the one before it.
Run updates
    RUNNING sets ``started_at`` if none yet and clears ``ended_at`` (resume of a failed run); a
    terminal state sets ``ended_at``; ``error``/``result_key`` are written when not None.
    RUNNING and SUCCESS clear a stored ``error`` first (unless the update carries one): the
    error of a failed or cancelled run no longer describes it once it is resumed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from twingraph.core.records import (AttemptRecord, EdgeRecord, LogRecord, RunUpdate,
                                   TaskRecord, TaskUpdate)
from twingraph.core.states import RunState, TaskState, fence_epoch
from twingraph.errors import ValidationError

T = TypeVar("T")

#: Log levels, lowest first. A level filter returns that level and every level after it.
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
_LEVEL_ALIASES = {"warn": "warning", "fatal": "critical"}

#: TaskUpdate fields written only when not None (``state`` and ``fence`` are handled apart).
TASK_UPDATE_OPTIONAL: tuple[str, ...] = (
    "attempts", "cache_key", "cache_status", "cache_reason", "result_key", "content_hash", "error")


# str-enum members hash and compare as their values: one dict lookup accepts both spellings and
# is 5x cheaper than TaskState(value) on the hot path.
_TASK_STATE = {s.value: s for s in TaskState}
_RUN_STATE = {s.value: s for s in RunState}


def task_state(value: Any) -> TaskState:
    try:
        return _TASK_STATE[value]
    except (KeyError, TypeError):
        raise ValidationError(f"not a task state: {value!r}") from None


def run_state(value: Any) -> RunState:
    try:
        return _RUN_STATE[value]
    except (KeyError, TypeError):
        raise ValidationError(f"not a run state: {value!r}") from None


@dataclass(slots=True)
class TaskCursor:
    """The part of a stored task that decides how the next update applies."""
    fence: int
    started_at: float | None


def fold_task_update(cursor: TaskCursor, update: TaskUpdate, net: dict[str, Any]) -> bool:
    """Apply ``update`` to ``cursor`` and to ``net`` (column -> new value); False when stale.

    Folding several updates of one task into one ``net`` dict gives the same result as applying
    them one by one, so a batch can be written with one UPDATE per task.
    """
    if update.fence is not None:
        if update.fence < cursor.fence:
            return False
        if update.fence > cursor.fence:
            cursor.fence = update.fence
            net["fence"] = update.fence
    state = task_state(update.state)
    net["state"] = state.value
    for name in TASK_UPDATE_OPTIONAL:
        value = getattr(update, name)
        if value is not None:
            net[name] = value
    if state is TaskState.SUCCESS:
        net["error"] = None                 # an earlier attempt's error no longer describes it
    if state is TaskState.RUNNING:
        if cursor.started_at is None:
            cursor.started_at = update.at
            net["started_at"] = update.at
        net["ended_at"] = None
    else:
        net["ended_at"] = update.at if state.terminal else None
    if update.started_at is not None:       # explicit times win over the defaults above
        cursor.started_at = update.started_at
        net["started_at"] = update.started_at
    if update.ended_at is not None:
        net["ended_at"] = update.ended_at
    return True


def superseded(epoch: int | None, driver_epoch: int | None) -> bool:
    """Whether a record written by the driver of generation ``epoch`` comes from a driver the
    run has been taken over from since (``claim_driver`` raised the run's ``driver_epoch``).
    None: an unconditional record."""
    return epoch is not None and (driver_epoch or 0) > epoch


def check_times(what: str, run_id: str, *times: float | None) -> None:
    """A run's times are finite numbers (or None): NaN or infinity was accepted by one
    backend or the other, and every ``runs list`` failed on that row afterwards."""
    for t in times:
        if t is not None and not (type(t) in (int, float) and math.isfinite(t)):
            raise ValidationError(f"{what} of run {run_id!r}: a time must be a finite number "
                                  f"of seconds, got {t!r}")


#: What ``tasks.cache_status`` and ``lineage_edges.kind`` may hold (both ``String(16)``
#: columns: PostgreSQL's array cast cut a longer value to 16 characters, SQLite and the memory
#: store kept it whole).
CACHE_STATUSES = frozenset({"hit", "miss", "disabled", "resumed"})
EDGE_KINDS = frozenset({"DEPENDS_ON", "BELONGS_TO"})


def _finite(t: Any) -> bool:
    # ``t - t`` is NaN for NaN and both infinities; cheaper than math.isfinite on the hot path
    return type(t) is int or (type(t) is float and t - t == 0.0)


def check_task_values(what: str, run_id: str, node_id: str, at: Any, started_at: Any,
                      ended_at: Any, cache_status: Any) -> None:
    """The times and cache status of a task row or update (``at``: its ``created_at`` or the
    update's time). NaN was stored as NULL by SQLite (a NOT NULL failure on some columns), as
    NaN by PostgreSQL and the memory store, and every later read sorted or showed it
    differently; an unknown cache status was cut by PostgreSQL alone."""
    if not (_finite(at) and (started_at is None or _finite(started_at))
            and (ended_at is None or _finite(ended_at))):
        raise ValidationError(f"{what} of task {node_id!r} of run {run_id!r}: a time must be a "
                              f"finite number of seconds, got {(at, started_at, ended_at)!r}")
    if cache_status is not None and cache_status not in CACHE_STATUSES:
        raise ValidationError(f"{what} of task {node_id!r} of run {run_id!r}: unknown cache "
                              f"status {cache_status!r}; expected one of "
                              f"{', '.join(sorted(CACHE_STATUSES))}")


def check_attempt(rec: AttemptRecord) -> None:
    if not (_finite(rec.started_at) and (rec.ended_at is None or _finite(rec.ended_at))):
        raise ValidationError(
            f"attempt {rec.attempt} of task {rec.node_id!r} of run {rec.run_id!r}: a time must "
            f"be a finite number of seconds, got {(rec.started_at, rec.ended_at)!r}")


def check_log(rec: LogRecord) -> None:
    if not _finite(rec.at):
        raise ValidationError(f"log record of run {rec.run_id!r}: a time must be a finite "
                              f"number of seconds, got {rec.at!r}")


def check_edge(rec: EdgeRecord) -> None:
    if rec.kind not in EDGE_KINDS:
        raise ValidationError(f"lineage edge {rec.src!r} -> {rec.dst!r} of run {rec.run_id!r}: "
                              f"unknown kind {rec.kind!r}; expected one of "
                              f"{', '.join(sorted(EDGE_KINDS))}")


def run_update_fields(update: RunUpdate, started_at: float | None) -> dict[str, Any]:
    """Columns a ``RunUpdate`` writes, given the run's stored ``started_at``."""
    state = run_state(update.state)
    fields: dict[str, Any] = {"state": state.value}
    if state in (RunState.RUNNING, RunState.SUCCESS):
        fields["error"] = None              # an earlier failure's error no longer describes it
    if state is RunState.RUNNING:
        if started_at is None:
            fields["started_at"] = update.at
        fields["ended_at"] = None
    else:
        fields["ended_at"] = update.at if state.terminal else None
    if update.error is not None:
        fields["error"] = update.error
    if update.result_key is not None:
        fields["result_key"] = update.result_key
    return fields


def merge_task_records(records: Iterable[TaskRecord]) -> list[TaskRecord]:
    """Collapse repeated registrations of a task (first-seen order): the last wins, with the
    first one's ``created_at``, unless its fence is lower than the one before it (dropped; see
    the module doc)."""
    merged: dict[tuple[str, str], TaskRecord] = {}
    for rec in records:
        key = (rec.run_id, rec.node_id)
        old = merged.get(key)
        if old is None:
            merged[key] = rec
            continue
        if rec.fence < old.fence:
            continue
        fields = {name: getattr(rec, name) for name in rec.__dataclass_fields__}
        fields["created_at"] = old.created_at
        merged[key] = TaskRecord(**fields)
    return list(merged.values())


def attempts_to_write(records: Iterable[AttemptRecord], driver_epoch: Callable[[str], int]
                      ) -> list[AttemptRecord]:
    """The attempt rows of a batch that apply (see the module doc): per (run, node, attempt)
    the last, unless fenced lower than the one before it; none from a superseded driver
    (``driver_epoch(run_id)``: the run's stored generation)."""
    out: dict[tuple[str, str, int], AttemptRecord] = {}
    epochs: dict[str, int] = {}
    for rec in records:
        epoch = epochs.get(rec.run_id)
        if epoch is None:
            epoch = epochs[rec.run_id] = driver_epoch(rec.run_id)
        if fence_epoch(rec.fence) < epoch:
            continue                   # a driver the run was taken over from: fenced off
        key = (rec.run_id, rec.node_id, rec.attempt)
        old = out.get(key)
        if old is not None and rec.fence < old.fence:
            continue
        out[key] = rec
    return list(out.values())


def last_wins(records: Iterable[T], key: Callable[[T], Hashable]) -> list[T]:
    """Keep the last record per key, in first-seen order."""
    out: dict[Hashable, T] = {}
    for rec in records:
        out[key(rec)] = rec
    return list(out.values())


def canonical_json(value: Any) -> str:
    """Sorted, compact JSON; ``ValidationError`` for values JSON cannot hold."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"not JSON-serialisable: {exc}") from exc


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
try:
    import orjson as _orjson
except ImportError:      # pragma: no cover - a dependency; the strict encoder still works
    _orjson = None  # type: ignore[assignment]
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)


def json_encoder() -> Callable[[Any], str]:
    """A JSON-column encoder for one batch (one thread): compact, no NaN, ``ValidationError``
    for values JSON cannot hold. Same text as ``json.dumps``, but ``json.dumps`` builds a C
    encoder on every call; building it once per batch is ~3x faster on 10,000 task inputs."""
    if _c_make_encoder is None:
        encode: Callable[[Any], str] = _ENCODER.encode
    else:
        c_encoder = _c_make_encoder({}, _not_json, json.encoder.encode_basestring_ascii, None,
                                    ":", ",", False, False, False)

        def encode(value: Any) -> str:
            return "".join(c_encoder(value, 0))

    def encode_json(value: Any) -> str:
        try:
            return encode(value)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"not JSON-serialisable: {exc}") from exc

    return encode_json


def fast_json_encoder() -> Callable[[Any], str]:
    """``json_encoder`` for the engine's own structures (task inputs: str, int, float, bool,
    None, lists and dicts), ~8x faster with orjson: the same value (not the same text:
    non-ASCII is not escaped). Whatever orjson would write differently from the strict
    encoder, or refuse — non-str keys, ints beyond 64 bits, non-finite floats (it writes them
    as null: any 'null' is checked again) — goes through ``json_encoder``, errors included."""
    strict = json_encoder()
    if _orjson is None:
        return strict
    dumps, refused = _orjson.dumps, (TypeError, _orjson.JSONEncodeError)
    # What the json module does not write itself (dataclasses, datetimes, subclasses of the
    # basic types) is refused by orjson too, and so decided by the strict encoder.
    opts = (_orjson.OPT_PASSTHROUGH_DATACLASS | _orjson.OPT_PASSTHROUGH_DATETIME
            | _orjson.OPT_PASSTHROUGH_SUBCLASS)

    def encode(value: Any) -> str:
        try:
            out = dumps(value, option=opts)
        except refused:
            return strict(value)
        if b"null" in out:
            return strict(value)
        return out.decode()

    return encode


def json_copy(value: Any) -> Any:
    """What a JSON column gives back for ``value`` (tuples become lists, keys become strings;
    dicts keep their order, as SQLite's and PostgreSQL's ``JSON`` columns keep it: parameters
    are a run's inputs, and a dict's order is part of a memo key, decision 0005)."""
    try:
        return json.loads(json.dumps(value, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"not JSON-serialisable: {exc}") from exc


def edge_digest(edge: EdgeRecord) -> str:
    """Identity of an edge within its run: its kind and endpoints. A second edge with the same
    endpoints (a resumed run re-registering its graph) is a duplicate, whatever its properties;
    the first one written is kept. No JSON here: this runs once per edge on the hot path."""
    return hashlib.sha256(f"{edge.kind}\0{edge.src}\0{edge.dst}".encode()).hexdigest()


#: Characters of a log level the ``logs.level`` column holds.
LEVEL_WIDTH = 16


def normalize_level(level: str) -> str:
    """Stored spelling of a log level: lower case, ``warn`` -> ``warning``. Unknown levels are
    kept (lower-cased) rather than failing the batch they came in; no filter selects them."""
    name = str(level).strip().lower()
    # The column holds 16 characters: PostgreSQL cut a longer custom level there, SQLite kept
    # it; cut here, both keep the same.
    return _LEVEL_ALIASES.get(name, name)[:LEVEL_WIDTH]


def levels_at_or_above(level: str) -> tuple[str, ...]:
    """``'warning'`` -> ``('warning', 'error', 'critical')``; case-insensitive."""
    name = normalize_level(level)
    if name not in LOG_LEVELS:
        raise ValidationError(f"unknown log level {level!r}; expected one of {', '.join(LOG_LEVELS)}")
    return LOG_LEVELS[LOG_LEVELS.index(name):]


def run_state_filter(state: str | RunState | None) -> str | None:
    """Normalise a ``list_runs(state=...)`` filter (``'running'`` or ``RunState.RUNNING``)."""
    if state is None:
        return None
    try:
        return (state if isinstance(state, RunState) else RunState(str(state).upper())).value
    except ValueError as exc:
        raise ValidationError(
            f"unknown run state {state!r}; expected one of {', '.join(s.value for s in RunState)}"
        ) from exc


def check_paging(limit: int | None, offset: int) -> None:
    if (limit is not None and limit < 0) or offset < 0:
        raise ValidationError(f"limit and offset must not be negative (limit={limit}, offset={offset})")


def check_prefix(prefix: Any, limit: int) -> None:
    """Arguments of ``find_run_ids``: a non-empty string prefix and a limit of at least 1."""
    if type(prefix) is not str or not prefix:
        raise ValidationError(f"a run id prefix must be a non-empty string, got {prefix!r}")
    if limit < 1:
        raise ValidationError(f"limit must be at least 1, got {limit}")
