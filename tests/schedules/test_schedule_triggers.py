"""Pure fire-time arithmetic (core/schedule.py): fixed times, DST in two zones, properties."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from twingraph.core.schedule import (
    OverlapPolicy,
    ScheduleKind,
    ScheduleRecord,
    fire_times_before,
    fire_times_between,
    logical_date,
    next_fire_after,
    parse_interval,
    run_params,
    validate,
    validate_options,
)
from twingraph.errors import ValidationError

BERLIN, NEW_YORK = "Europe/Berlin", "America/New_York"


def at(tz: str, *parts: int) -> float:
    return datetime(*parts, tzinfo=ZoneInfo(tz)).timestamp()      # type: ignore[misc]


def wall(ts: float, tz: str) -> str:
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).isoformat()


def nexts(expr: str, tz: str, after: float, n: int, kind: str = "CRON", anchor: float = 0.0) -> list[float]:
    out = []
    for _ in range(n):
        after = next_fire_after(kind, expr, tz, after, anchor)
        out.append(after)
    return out


# -- intervals -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("15s", 15), ("30m", 1800), ("2h", 7200), ("1d", 86400),
                                           ("1h30m", 5400), ("1d12h", 129600), (" 5m ", 300),
                                           ("90s", 90)])
def test_parse_interval(text: str, seconds: int) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("bad", ["0s", "0d0h", "", "s", "1x", "1.5h", "-1s", "1m1h", "1h1h",
                                 "10", "1 h", "36501d"])
def test_bad_intervals(bad: str) -> None:
    with pytest.raises(ValidationError):
        parse_interval(bad)


def test_interval_slots_are_anchored() -> None:
    anchor = 1000.25
    assert next_fire_after("INTERVAL", "10s", "UTC", anchor, anchor) == 1010.25
    assert next_fire_after("INTERVAL", "10s", "UTC", 1010.25, anchor) == 1020.25   # strictly after
    assert next_fire_after("INTERVAL", "10s", "UTC", 1015.0, anchor) == 1020.25
    assert next_fire_after("INTERVAL", "10s", "UTC", 900.0, anchor) == 900.25     # before the anchor
    assert fire_times_before("INTERVAL", "10s", "UTC", 1030.25, 3, anchor) == [1010.25, 1020.25, 1030.25]
    assert fire_times_before("INTERVAL", "10s", "UTC", 1030.0, 3, anchor) == [1000.25, 1010.25, 1020.25]
    assert fire_times_between("INTERVAL", "10s", "UTC", 1000.25, 1030.25, anchor) == [
        1000.25, 1010.25, 1020.25, 1030.25]


def test_interval_ignores_dst() -> None:
    # 1h in Berlin across the spring-forward night: elapsed hours, whatever the wall clock says.
    start = at(BERLIN, 2026, 3, 29, 0, 0)
    assert [b - a for a, b in zip([start, *nexts("1h", BERLIN, start, 4, "INTERVAL", start)],
                                  nexts("1h", BERLIN, start, 4, "INTERVAL", start))] == [3600.0] * 4


# -- cron ------------------------------------------------------------------------------------

def test_cron_daily_in_utc() -> None:
    t = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc).timestamp()
    assert [logical_date(x) for x in nexts("0 2 * * *", "UTC", t, 3)] == [
        "2026-01-02T02:00:00Z", "2026-01-03T02:00:00Z", "2026-01-04T02:00:00Z"]
    # strictly after: a slot is not its own successor
    slot = datetime(2026, 1, 2, 2, 0, tzinfo=timezone.utc).timestamp()
    assert logical_date(next_fire_after("CRON", "0 2 * * *", "UTC", slot, 0)) == "2026-01-03T02:00:00Z"


def test_cron_follows_the_schedule_timezone() -> None:
    t = at(NEW_YORK, 2026, 1, 10, 12, 0)
    assert logical_date(next_fire_after("CRON", "0 2 * * *", NEW_YORK, t, 0)) == "2026-01-11T07:00:00Z"


def test_berlin_spring_forward() -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist that day, it fires once at 03:00.
    t = at(BERLIN, 2026, 3, 27, 12, 0)
    assert [wall(x, BERLIN) for x in nexts("30 2 * * *", BERLIN, t, 4)] == [
        "2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]
    # hourly keeps elapsed hours: 01:00 CET is followed by 03:00 CEST, one hour later
    hourly = nexts("0 * * * *", BERLIN, at(BERLIN, 2026, 3, 29, 0, 30), 3)
    assert [wall(x, BERLIN) for x in hourly] == [
        "2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"]
    assert hourly[1] - hourly[0] == 3600
    # every 15 minutes of the 2 AM hour: that hour does not exist, so one fire at 03:00
    quarter = fire_times_between("CRON", "*/15 2 * * *", BERLIN, at(BERLIN, 2026, 3, 29, 0, 0),
                                 at(BERLIN, 2026, 3, 30, 0, 0), 0)
    assert [wall(x, BERLIN) for x in quarter] == ["2026-03-29T03:00:00+02:00"]


def test_berlin_fall_back_fires_a_fixed_time_once() -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice, a daily 02:30 fires once.
    t = at(BERLIN, 2026, 10, 24, 12, 0)
    assert [wall(x, BERLIN) for x in nexts("30 2 * * *", BERLIN, t, 3)] == [
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00", "2026-10-27T02:30:00+01:00"]
    # ...while an hourly expression fires in both 02:00 hours (every elapsed hour)
    hourly = nexts("0 * * * *", BERLIN, at(BERLIN, 2026, 10, 25, 0, 30), 4)
    assert [wall(x, BERLIN) for x in hourly] == [
        "2026-10-25T01:00:00+02:00", "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"]
    assert {b - a for a, b in zip(hourly, hourly[1:])} == {3600.0}


def test_new_york_dst_both_ways() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.
    spring = nexts("30 2 * * *", NEW_YORK, at(NEW_YORK, 2026, 3, 7, 12, 0), 2)
    assert [wall(x, NEW_YORK) for x in spring] == ["2026-03-08T03:00:00-04:00",
                                                   "2026-03-09T02:30:00-04:00"]
    fall = nexts("30 1 * * *", NEW_YORK, at(NEW_YORK, 2026, 10, 31, 12, 0), 2)
    assert [wall(x, NEW_YORK) for x in fall] == ["2026-11-01T01:30:00-04:00",
                                                 "2026-11-02T01:30:00-05:00"]
    # 9:00 every day stays 9:00 local, so it is 13:00Z in summer and 14:00Z in winter
    nine = nexts("0 9 * * *", NEW_YORK, at(NEW_YORK, 2026, 10, 31, 12, 0), 2)
    assert [logical_date(x) for x in nine] == ["2026-11-01T14:00:00Z", "2026-11-02T14:00:00Z"]


def test_fire_times_before_across_fall_back() -> None:
    got = fire_times_before("CRON", "30 2 * * *", BERLIN, at(BERLIN, 2026, 10, 27, 0, 0), 4, 0)
    assert [wall(x, BERLIN) for x in got] == [
        "2026-10-23T02:30:00+02:00", "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    slot = at(BERLIN, 2026, 10, 26, 2, 30)
    assert fire_times_before("CRON", "30 2 * * *", BERLIN, slot, 1, 0) == [slot]   # at counts


def test_aliases_and_seconds_field() -> None:
    t = datetime(2026, 5, 5, 5, 5, tzinfo=timezone.utc).timestamp()
    assert logical_date(next_fire_after("CRON", "@daily", "UTC", t, 0)) == "2026-05-06T00:00:00Z"
    assert next_fire_after("CRON", "* * * * * */15", "UTC", t, 0) == t + 15   # 6th: seconds


def test_fire_times_between_caps_the_count() -> None:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    assert len(fire_times_between("CRON", "0 * * * *", "UTC", start, start + 99 * 3600, 0)) == 100
    with pytest.raises(ValidationError, match="more than 50"):
        fire_times_between("CRON", "0 * * * *", "UTC", start, start + 99 * 3600, 0, limit=50)
    with pytest.raises(ValidationError):
        fire_times_between("CRON", "0 * * * *", "UTC", start, start - 1, 0)


# -- validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, expr, tz, message", [
    ("CRON", "61 * * * *", "UTC", "invalid cron"),
    ("CRON", "* * *", "UTC", "invalid cron"),
    ("CRON", "H * * * *", "UTC", "invalid cron"),
    ("CRON", "0 0 30 2 *", "UTC", "never fires"),
    ("CRON", "0 2 * * *", "Mars/Olympus", "unknown timezone"),
    ("CRON", "0 2 * * *", "", "invalid timezone"),
    ("INTERVAL", "0s", "UTC", "at least 1 second"),
    ("INTERVAL", "fortnight", "UTC", "invalid interval"),
    ("WEEKLY", "1d", "UTC", "unknown schedule kind"),
])
def test_validate_rejects_with_a_clear_message(kind: str, expr: str, tz: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validate(kind, expr, tz)


def test_validate_accepts_documented_examples() -> None:
    for expr in ("0 0 * * *", "0 * * * *", "0 0 * * 0", "0 0 1 * *", "0 2 * * *", "0 */6 * * *"):
        assert validate("CRON", expr, "UTC") is ScheduleKind.CRON
    for expr in ("1d", "2h", "30m", "15s"):
        assert validate("interval", expr, "Europe/Berlin") is ScheduleKind.INTERVAL


@pytest.mark.parametrize("kw", [{"max_concurrency": 0}, {"max_concurrency": True},
                                {"max_concurrency": "2"}, {"timeout_seconds": 0},
                                {"overlap_policy": "queue"}, {"catchup": "yes"},
                                {"enabled": 1}, {"params": [1]}, {"description": 5}])
def test_validate_options(kw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        validate_options(**kw)


def test_validate_options_policy() -> None:
    assert validate_options() is OverlapPolicy.SKIP
    assert validate_options(overlap_policy="ALLOW", timeout_seconds=7200) is OverlapPolicy.ALLOW


def test_run_params_carry_the_logical_date() -> None:
    rec = ScheduleRecord("sched_1", "proj_1", "pipe_1", ScheduleKind.CRON, "0 2 * * *",
                         params={"region": "eu", "logical_date": "overridden"})
    slot = datetime(2026, 1, 2, 2, 0, tzinfo=timezone.utc).timestamp()
    assert run_params(rec, slot) == {"region": "eu", "logical_date": "2026-01-02T02:00:00Z"}
    assert rec.params["logical_date"] == "overridden"        # the schedule's own params untouched


# -- properties ---------------------------------------------------------------------------------

EXPRESSIONS = [("CRON", "0 2 * * *"), ("CRON", "30 2 * * *"), ("CRON", "*/20 * * * *"),
               ("CRON", "0 */6 * * *"), ("CRON", "15 1-3 * * *"), ("CRON", "0 0 * * 0"),
               ("CRON", "0 0 1 * *"), ("CRON", "0 * * * *"), ("CRON", "@daily"),
               ("INTERVAL", "1h30m"), ("INTERVAL", "15s"), ("INTERVAL", "1d")]
ZONES = ["UTC", BERLIN, NEW_YORK, "Australia/Lord_Howe", "Asia/Kolkata"]
times = st.floats(min_value=1.6e9, max_value=1.9e9, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(expr=st.sampled_from(EXPRESSIONS), tz=st.sampled_from(ZONES), t=times, anchor=times)
def test_next_fire_after_is_strictly_later_and_increasing(expr: tuple[str, str], tz: str,
                                                          t: float, anchor: float) -> None:
    kind, text = expr
    seq = nexts(text, tz, t, 6, kind, anchor)
    assert seq[0] > t
    assert all(b > a for a, b in zip(seq, seq[1:]))


@settings(max_examples=100, deadline=None)
@given(expr=st.sampled_from(EXPRESSIONS), tz=st.sampled_from(ZONES), t=times, anchor=times,
       count=st.integers(1, 8))
def test_backwards_and_range_queries_agree_with_next(expr: tuple[str, str], tz: str, t: float,
                                                     anchor: float, count: int) -> None:
    kind, text = expr
    before = fire_times_before(kind, text, tz, t, count, anchor)
    assert len(before) == count and before[-1] <= t
    # the slot after the last one is after t, and each is the successor of the one before
    assert next_fire_after(kind, text, tz, before[-1], anchor) > t
    assert [next_fire_after(kind, text, tz, a, anchor) for a in before[:-1]] == before[1:]
    assert fire_times_between(kind, text, tz, before[0], before[-1], anchor) == before
