"""Schedules, pure: the record, validation, and the fire-time arithmetic (no I/O, no clock).

A schedule fires its pipeline at *slots*: POSIX times computed from its expression alone, so
every process computes the same slots and a claim can compare-and-set on them
(``schedules/firer.py`` owns the firing protocol).

CRON
    croniter syntax: 5 fields (minute hour day month weekday), an optional 6th field of seconds
    (croniter's convention: seconds come *last*), ``@hourly``/``@daily``/``@weekly``/
    ``@monthly``/``@yearly``/``@midnight``. Evaluated in the schedule's IANA timezone on
    tz-aware datetimes, so it follows the wall clock across DST:

    - spring forward: a wall time that does not exist that day fires once, at the first
      existing time after it (``30 2 * * *`` in Europe/Berlin on 2026-03-29 fires at 03:00 CEST,
      as Vixie cron does);
    - fall back: an expression whose hour field is restricted (``30 2 * * *``, ``0 */6 * * *``)
      fires once, at the first occurrence of the repeated wall time; one whose hour field is
      ``*`` (``*/15 * * * *``, ``@hourly``) fires by elapsed time, in both repeated hours.
INTERVAL
    ``<n><unit>`` with unit ``d``, ``h``, ``m`` or ``s`` (``15s``, ``30m``, ``2h``, ``1d``), or
    several such parts in descending unit order, each unit at most once (``1h30m``, ``1d12h``).
    Whole numbers only, at least 1 second, at most 36500 days. Slots are ``anchor + k *
    interval`` for every integer ``k`` (the store anchors at the schedule's ``created_at``),
    so intervals ignore the timezone (they measure elapsed time). ``k`` may be negative: a
    backfill may ask for slots before the schedule existed.

Every slot query here is defined by ``next_fire_after`` alone (the backwards queries enumerate
forward from a window they widen until it holds enough slots), so the three functions always
agree with each other.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from twingraph.errors import ValidationError


class ScheduleKind(str, Enum):
    CRON = "CRON"
    INTERVAL = "INTERVAL"


class OverlapPolicy(str, Enum):
    """What a fire does when ``max_concurrency`` runs of the schedule are already active."""
    SKIP = "skip"       # the slot is claimed and dropped (logged); no run is created
    ALLOW = "allow"     # the run is created and queued; it starts when a running one ends


class ScheduleSource(str, Enum):
    API = "api"                 # created over REST / the SDK / the CLI
    DECORATOR = "decorator"     # from ``@pipeline(schedule=...)`` of a loaded module


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """One row of the ``schedules`` table. Times are POSIX seconds; ``next_run_at`` is the claim
    column (None while the schedule is disabled)."""
    id: str
    project_id: str
    pipeline_id: str
    kind: ScheduleKind
    expression: str
    timezone: str = "UTC"
    enabled: bool = True
    max_concurrency: int = 1
    timeout_seconds: int | None = None
    overlap_policy: OverlapPolicy = OverlapPolicy.SKIP
    catchup: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    next_run_at: float | None = None
    last_run_at: float | None = None
    last_run_id: str | None = None
    source: ScheduleSource = ScheduleSource.API
    created_at: float = 0.0
    updated_at: float = 0.0


#: Maximum slots one backfill may create and one catch-up may fire (see ``schedules``).
MAX_BACKFILL = 1000
#: Intervals longer than this are refused (100 years; beyond it datetimes overflow).
MAX_INTERVAL_S = 36500 * 86400
#: Key of the logical date in the params of a scheduled run.
LOGICAL_DATE = "logical_date"

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_INTERVAL_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
            "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
            "@hourly": "0 * * * *"}


# -- parsing and validation --------------------------------------------------------------

def parse_kind(kind: ScheduleKind | str) -> ScheduleKind:
    try:
        return kind if isinstance(kind, ScheduleKind) else ScheduleKind(str(kind).upper())
    except ValueError:
        raise ValidationError(f"unknown schedule kind {kind!r}; expected CRON or INTERVAL") from None


def parse_interval(expression: str) -> int:
    """``'15s'`` -> 15, ``'30m'`` -> 1800, ``'2h'`` -> 7200, ``'1d'`` -> 86400, ``'1h30m'`` ->
    5400. ``ValidationError`` for anything else, for zero and for more than 36500 days."""
    text = expression.strip() if isinstance(expression, str) else ""
    match = _INTERVAL_RE.fullmatch(text)
    if not text or match is None:
        raise ValidationError(
            f"invalid interval {expression!r}: expected a whole number and a unit d, h, m or s "
            "(e.g. '15s', '30m', '2h', '1d', '1h30m')")
    seconds = sum(int(n) * unit for n, unit in zip(match.groups(), _UNITS.values()) if n)
    if seconds == 0:
        raise ValidationError(f"invalid interval {expression!r}: it must be at least 1 second")
    if seconds > MAX_INTERVAL_S:
        raise ValidationError(f"invalid interval {expression!r}: at most 36500 days")
    return seconds


def parse_timezone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(f"invalid timezone {name!r}: expected an IANA name like 'Europe/Berlin'")
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationError(f"unknown timezone {name!r}: expected an IANA name like "
                              "'UTC' or 'America/New_York'") from None


def _cron_text(expression: str) -> str:
    text = " ".join(expression.split()) if isinstance(expression, str) else ""
    return _ALIASES.get(text.lower(), text)


_FIELDS = (("minute", "0-59"), ("hour", "0-23"), ("day-of-month", "1-31"),
           ("month", "1-12 or JAN-DEC"), ("weekday", "0-7 (0 and 7 are Sunday) or SUN-SAT"),
           ("second", "0-59"))


def _bad_field(fields: list[str]) -> str:
    """Which field of a cron expression of the right length is not valid (each tried alone
    with ``*`` in the others), said with its range."""
    for i, text in enumerate(fields):
        probe = ["*"] * len(fields)
        probe[i] = text
        if not croniter.is_valid(" ".join(probe)):
            name, values = _FIELDS[i]
            return (f"the {name} field {text!r} is not valid (values {values}, "
                    f"'*', ranges 'a-b', lists 'a,b' and steps '*/n' with n >= 1)")
    return "its fields are valid one by one but not together"


def validate(kind: ScheduleKind | str, expression: str, timezone: str = "UTC") -> ScheduleKind:
    """Check a schedule's trigger; return its kind. ``ValidationError`` says what is wrong: an
    unknown kind, a bad cron expression (or one that never fires), a bad or zero interval, an
    unknown timezone."""
    parsed = parse_kind(kind)
    tz = parse_timezone(timezone)
    if parsed is ScheduleKind.INTERVAL:
        parse_interval(expression)
        return parsed
    text = _cron_text(expression)
    fields = text.split()
    if len(fields) not in (5, 6) or any(f.upper().startswith("H") for f in fields):
        raise ValidationError(
            f"invalid cron expression {expression!r}: expected 5 fields (minute hour day month "
            "weekday), optionally a 6th for seconds, e.g. '0 2 * * *'")
    if not croniter.is_valid(text):
        raise ValidationError(f"invalid cron expression {expression!r}: {_bad_field(fields)}")
    try:
        croniter(text, datetime(2000, 1, 1, tzinfo=tz)).get_next(datetime)
    except (CroniterError, ValueError, OverflowError) as exc:
        raise ValidationError(f"cron expression {expression!r} never fires: {exc}") from exc
    return parsed


def validate_options(*, max_concurrency: Any = 1, timeout_seconds: Any = None,
                     overlap_policy: Any = "skip", catchup: Any = False, enabled: Any = True,
                     params: Any = None, description: Any = None) -> OverlapPolicy:
    """Check the non-trigger fields of a schedule; return the overlap policy."""
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) \
            or max_concurrency < 1:
        raise ValidationError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")
    if timeout_seconds is not None and (isinstance(timeout_seconds, bool)
                                        or not isinstance(timeout_seconds, int)
                                        or timeout_seconds < 1):
        raise ValidationError(f"timeout_seconds must be null or an integer >= 1, got {timeout_seconds!r}")
    for name, value in (("catchup", catchup), ("enabled", enabled)):
        if not isinstance(value, bool):
            raise ValidationError(f"{name} must be true or false, got {value!r}")
    if params is not None and not isinstance(params, dict):
        raise ValidationError(f"params must be an object, got {type(params).__name__}")
    if description is not None and not isinstance(description, str):
        raise ValidationError(f"description must be a string, got {type(description).__name__}")
    try:
        return overlap_policy if isinstance(overlap_policy, OverlapPolicy) \
            else OverlapPolicy(str(overlap_policy).lower())
    except ValueError:
        raise ValidationError(
            f"unknown overlap_policy {overlap_policy!r}; expected 'skip' or 'allow'") from None


# -- fire times ------------------------------------------------------------------------------

def _hour_is_wildcard(text: str) -> bool:
    return text.split()[1] == "*"


def next_fire_after(kind: ScheduleKind | str, expression: str, tz: str, after: float,
                    anchor: float) -> float:
    """The first slot strictly after ``after`` (see the module doc for DST and anchors)."""
    kind = parse_kind(kind)
    if kind is ScheduleKind.INTERVAL:
        step = parse_interval(expression)
        k = math.floor((after - anchor) / step) + 1
        while anchor + (k - 1) * step > after:      # float rounding, either way
            k -= 1
        while anchor + k * step <= after:
            k += 1
        return anchor + k * step
    for fire in _cron_fires(expression, tz, after):
        return fire
    raise AssertionError("unreachable: _cron_fires never ends without raising")


def _cron_fires(expression: str, tz: str, after: float) -> Iterator[float]:
    """Cron slots strictly after ``after``, in order, forever (``ValidationError`` when the
    expression has no further fire time). The one place cron slots are computed."""
    zone = parse_timezone(tz)
    text = _cron_text(expression)
    skip_second_fold = not _hour_is_wildcard(text)
    start = datetime.fromtimestamp(after, timezone.utc).astimezone(zone)
    try:
        it = croniter(text, start)
        while True:
            fire: datetime = it.get_next(datetime)
            if skip_second_fold and _is_repeated_wall_time(fire, zone):
                continue
            ts = fire.timestamp()
            if ts > after:          # strictly increasing, whatever croniter does around DST
                after = ts
                yield ts
    except (CroniterError, ValueError, OverflowError) as exc:
        raise ValidationError(f"cron expression {expression!r} has no fire time after "
                              f"{after}: {exc}") from exc


def _is_repeated_wall_time(fire: datetime, zone: ZoneInfo) -> bool:
    """True when ``fire`` is the second occurrence of its wall-clock time (DST fall back)."""
    wall = fire.replace(tzinfo=None)
    first = wall.replace(tzinfo=zone, fold=0).timestamp()
    return first < fire.timestamp()


def _interval_at_or_after(step: int, lo: float, anchor: float) -> float:
    """The first interval slot ``anchor + k * step`` at or after ``lo``."""
    k = math.ceil((lo - anchor) / step)
    while anchor + k * step < lo:
        k += 1
    while anchor + (k - 1) * step >= lo:
        k -= 1
    return anchor + k * step


#: Cron slots are never looked for before 1970 (a backfill window cannot widen past it).
_EPOCH_FLOOR = 0.0


def fire_times_before(kind: ScheduleKind | str, expression: str, tz: str, before: float,
                      count: int, anchor: float) -> list[float]:
    """The last ``count`` slots at or before ``before``, oldest first. For CRON fewer are
    returned only when the expression has fewer slots since 1970."""
    kind = parse_kind(kind)
    if count <= 0:
        return []
    if kind is ScheduleKind.INTERVAL:
        step = parse_interval(expression)
        last = _interval_at_or_after(step, before, anchor)
        if last > before:
            last -= step
        k_last = round((last - anchor) / step)
        return [anchor + k * step for k in range(k_last - count + 1, k_last + 1)]
    # Estimate the spacing from two upcoming slots, then widen the window until it holds enough.
    first = next_fire_after(kind, expression, tz, before, anchor)
    spacing = max(1.0, next_fire_after(kind, expression, tz, first, anchor) - first)
    span = spacing * (count + 2)
    while True:
        lo = max(_EPOCH_FLOOR, before - span)
        slots = _enumerate(kind, expression, tz, lo, before, anchor, limit=None)
        if len(slots) >= count or lo <= _EPOCH_FLOOR:
            return slots[-count:]
        span *= 2


def fire_times_between(kind: ScheduleKind | str, expression: str, tz: str, start: float,
                       end: float, anchor: float, limit: int = MAX_BACKFILL) -> list[float]:
    """Every slot in ``[start, end]``, oldest first. More than ``limit`` slots raises
    ``ValidationError`` (narrow the range), so a typo cannot create a million runs."""
    kind = parse_kind(kind)
    if end < start:
        raise ValidationError(f"backfill range ends ({end}) before it starts ({start})")
    slots = _enumerate(kind, expression, tz, start, end, anchor, limit=limit + 1)
    if len(slots) > limit:
        raise ValidationError(f"the range holds more than {limit} fire times; narrow it")
    return slots


def _enumerate(kind: ScheduleKind, expression: str, tz: str, lo: float, hi: float,
               anchor: float, limit: int | None) -> list[float]:
    out: list[float] = []
    if kind is ScheduleKind.INTERVAL:
        step = parse_interval(expression)
        k = round((_interval_at_or_after(step, lo, anchor) - anchor) / step)
        while anchor + k * step <= hi and (limit is None or len(out) < limit):
            out.append(anchor + k * step)
            k += 1
        return out
    for fire in _cron_fires(expression, tz, lo - 1.0):
        if fire > hi or (limit is not None and len(out) >= limit):
            break
        if fire >= lo:
            out.append(fire)
    return out


# -- run params ------------------------------------------------------------------------------

def logical_date(slot: float) -> str:
    """ISO-8601 UTC spelling of a slot: ``2026-01-02T02:00:00Z`` (microseconds when present)."""
    moment = datetime.fromtimestamp(slot, timezone.utc)
    text = moment.isoformat(timespec="microseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def run_params(schedule: ScheduleRecord, slot: float) -> dict[str, Any]:
    """Params of the run a schedule creates for ``slot``: the schedule's own params plus
    ``logical_date`` (the slot, ISO-8601 UTC), which wins over a param of the same name."""
    return {**schedule.params, LOGICAL_DATE: logical_date(slot)}
