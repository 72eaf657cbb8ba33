"""Shifted multi-line cron schedules and their APScheduler trigger.

Expected instants are written out in UTC so that each DST assertion states exactly which
absolute moment the documented rule picks.
"""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from croniter import croniter

from tornado_sched.triggers import (
    ShiftedCronSchedule,
    ShiftedCronTrigger,
    parse_shift,
    validate_crontab,
)

SH = ZoneInfo("Asia/Shanghai")
BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
US = timedelta(microseconds=1)


def u(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SH)


def utc(pairs: list[tuple[datetime, datetime]], which: int = 0) -> list[datetime]:
    return [pair[which].astimezone(UTC) for pair in pairs]


# -- parse_shift -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("time", "unit", "seconds"),
    [(30, "s", 30), (-30, "s", -30), (5, "m", 300), (-1, "m", -60), (2, "h", 7200), (0, "h", 0)],
)
def test_parse_shift_units(time: int, unit: str, seconds: int) -> None:
    assert parse_shift(time, unit) == timedelta(seconds=seconds)


@pytest.mark.parametrize("unit", ["d", "S", "", "sec", " s", None, 1])
def test_parse_shift_rejects_bad_unit(unit: object) -> None:
    with pytest.raises(ValueError, match=r"shift unit must be one of 's', 'm', 'h'"):
        parse_shift(1, unit)  # type: ignore[arg-type]


@pytest.mark.parametrize("time", [1.5, "30", True, False, None, 30.0])
def test_parse_shift_rejects_non_int_time(time: object) -> None:
    with pytest.raises(ValueError, match="shift time must be an integer"):
        parse_shift(time, "s")  # type: ignore[arg-type]


def test_parse_shift_is_bounded_to_seven_days() -> None:
    assert parse_shift(168, "h") == timedelta(days=7)
    assert parse_shift(-168, "h") == timedelta(days=-7)
    for time, unit in [(169, "h"), (-169, "h"), (7 * 24 * 60 + 1, "m"), (10**30, "s")]:
        with pytest.raises(ValueError, match="at most 7 days"):
            parse_shift(time, unit)


# -- validate_crontab -------------------------------------------------------------------


def test_validate_crontab_strips_and_accepts_standard_lines() -> None:
    assert validate_crontab("  */10 10 * * 1-5 \n") == "*/10 10 * * 1-5"
    assert validate_crontab("0 0 1 jan,mar fri") == "0 0 1 jan,mar fri"
    assert validate_crontab("0 12 L * *") == "0 12 L * *"
    assert validate_crontab("@daily") == "@daily"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "crontab line is empty"),
        ("   ", "crontab line is empty"),
        ("* * * *", "has 4 fields, expected exactly 5"),
        ("0 * * * * *", "has 6 fields, expected exactly 5"),
        ("0 0 1 1 * 2025", "has 6 fields, expected exactly 5"),
        ("@reboot", "unsupported macro"),
        ("@every 5m", "unsupported macro"),
        ("61 * * * *", "out of range"),
        ("* 24 * * *", "out of range"),
        ("* * * * 8", "out of range"),
        ("0 0 30 2 *", "can never occur"),
        ("0 0 31 4 *", "can never occur"),
        ("*/0 * * * *", "step '0'"),
        ("H * * * *", "hashed/random item 'H'"),
        ("R 2 * * *", "hashed/random item 'R'"),
        ("0 H/2 * * *", "hashed/random item 'H/2'"),
        ("a b c d e", "invalid crontab line 'a b c d e'"),
        ("1-2-3 * * * *", "invalid crontab line"),
    ],
)
def test_validate_crontab_rejects_with_named_problem(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        validate_crontab(line)
    if line.strip():
        # The message names the offending line, so a list of several lines is debuggable.
        assert repr(line.strip()) in str(info.value)
    assert "Traceback" not in str(info.value)


def test_validate_crontab_rejects_non_string() -> None:
    with pytest.raises(ValueError, match="must be a string, got int"):
        validate_crontab(5)  # type: ignore[arg-type]


def test_schedule_constructor_validation() -> None:
    with pytest.raises(ValueError, match="at least one crontab line"):
        ShiftedCronSchedule([])
    with pytest.raises(ValueError, match="not a single string"):
        ShiftedCronSchedule("0 * * * *")
    with pytest.raises(ValueError, match="has 6 fields"):
        ShiftedCronSchedule(["0 * * * *", "0 0 * * * *"])
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        ShiftedCronSchedule(["0 * * * *"], timedelta(0), "Mars/Olympus")
    with pytest.raises(ValueError, match="out of range"):
        ShiftedCronSchedule(["0 * * * *"], timedelta(days=7, seconds=1))
    with pytest.raises(ValueError, match="whole number of seconds"):
        ShiftedCronSchedule(["0 * * * *"], timedelta(milliseconds=500))
    with pytest.raises(ValueError, match="timezone-aware"):
        ShiftedCronSchedule(["0 * * * *"]).next_fire(datetime(2025, 1, 1))


# -- plain schedules (Asia/Shanghai, no DST) --------------------------------------------


def test_default_timezone_is_shanghai() -> None:
    schedule = ShiftedCronSchedule(["0 9 * * *"])
    assert schedule.tz_name == "Asia/Shanghai"
    fire, tick = schedule.next_fire(u(2025, 6, 1, 12))  # 20:00 in Shanghai
    assert fire == tick == u(2025, 6, 2, 1)  # 09:00+08:00
    assert fire.utcoffset() == timedelta(hours=8)
    assert fire.isoformat() == "2025-06-02T09:00:00+08:00"


def test_single_line() -> None:
    schedule = ShiftedCronSchedule(["*/10 10 * * 1-5"], timedelta(0), "Asia/Shanghai")
    # 2025-01-03 is a Friday; the following Monday is 2025-01-06.
    assert schedule.next_fire(sh(2025, 1, 3, 10, 45)) == (sh(2025, 1, 3, 10, 50),) * 2
    assert schedule.next_fire(sh(2025, 1, 3, 10, 50)) == (sh(2025, 1, 6, 10, 0),) * 2
    assert schedule.next_fire(sh(2025, 1, 4, 9, 0)) == (sh(2025, 1, 6, 10, 0),) * 2


def test_several_lines_union_in_order() -> None:
    schedule = ShiftedCronSchedule(["*/10 10 * * 1-5", "*/10 14 * * 1-5"])
    fires = [fire for fire, _ in schedule.upcoming(sh(2025, 1, 3, 10, 35), 9)]
    assert fires == [
        sh(2025, 1, 3, 10, 40),
        sh(2025, 1, 3, 10, 50),
        sh(2025, 1, 3, 14, 0),
        sh(2025, 1, 3, 14, 10),
        sh(2025, 1, 3, 14, 20),
        sh(2025, 1, 3, 14, 30),
        sh(2025, 1, 3, 14, 40),
        sh(2025, 1, 3, 14, 50),
        sh(2025, 1, 6, 10, 0),
    ]


def test_line_order_does_not_matter() -> None:
    a = ShiftedCronSchedule(["*/10 14 * * 1-5", "*/10 10 * * 1-5"], timedelta(seconds=-30))
    b = ShiftedCronSchedule(["*/10 10 * * 1-5", "*/10 14 * * 1-5"], timedelta(seconds=-30))
    start = sh(2025, 1, 3, 9)
    assert a.upcoming(start, 20) == b.upcoming(start, 20)


def test_coincident_ticks_fire_once() -> None:
    schedule = ShiftedCronSchedule(["*/15 * * * *", "*/10 * * * *", "*/10 * * * *"])
    fires = [fire for fire, _ in schedule.upcoming(sh(2025, 1, 1, 0, 0), 8)]
    minutes = [(f.hour, f.minute) for f in fires]
    assert minutes == [(0, 10), (0, 15), (0, 20), (0, 30), (0, 40), (0, 45), (0, 50), (1, 0)]


def test_coincident_ticks_fire_once_with_shift() -> None:
    schedule = ShiftedCronSchedule(["0 10 * * *", "0 10 * * 1-5"], timedelta(minutes=-5))
    fires = schedule.upcoming(sh(2025, 1, 3, 0), 3)
    assert fires == [
        (sh(2025, 1, 3, 9, 55), sh(2025, 1, 3, 10)),
        (sh(2025, 1, 4, 9, 55), sh(2025, 1, 4, 10)),
        (sh(2025, 1, 5, 9, 55), sh(2025, 1, 5, 10)),
    ]


def test_next_fire_is_strictly_after() -> None:
    schedule = ShiftedCronSchedule(["0 0 * * *"], timedelta(seconds=-30))
    fire = sh(2025, 5, 31, 23, 59, 30)
    assert schedule.next_fire(fire - US)[0] == fire
    assert schedule.next_fire(fire)[0] == fire + timedelta(days=1)


# -- shifts ------------------------------------------------------------------------------


def test_negative_shift_across_midnight() -> None:
    schedule = ShiftedCronSchedule(["0 0 * * *"], timedelta(seconds=-30))
    fire, tick = schedule.next_fire(sh(2025, 6, 10, 12))
    assert fire == sh(2025, 6, 10, 23, 59, 30)
    assert tick == sh(2025, 6, 11, 0, 0)
    assert fire.isoformat() == "2025-06-10T23:59:30+08:00"
    assert tick.isoformat() == "2025-06-11T00:00:00+08:00"


def test_negative_shift_looks_past_after_for_the_tick() -> None:
    # after is 23:59:45, past this day's fire (23:59:30) but before its tick (00:00):
    # that tick is spent, so the next fire belongs to the tick a day later.
    schedule = ShiftedCronSchedule(["0 0 * * *"], timedelta(seconds=-30))
    fire, tick = schedule.next_fire(sh(2025, 6, 10, 23, 59, 45))
    assert (fire, tick) == (sh(2025, 6, 11, 23, 59, 30), sh(2025, 6, 12))


@pytest.mark.parametrize(
    ("year", "last_day"),
    [(2027, 28), (2028, 29), (2100, 28), (2000, 29)],
)
def test_negative_shift_across_month_end(year: int, last_day: int) -> None:
    schedule = ShiftedCronSchedule(["0 0 1 3 *"], timedelta(hours=-1))
    fire, tick = schedule.next_fire(sh(year, 1, 1))
    assert fire == sh(year, 2, last_day, 23, 0)
    assert tick == sh(year, 3, 1, 0, 0)


def test_leap_day_line() -> None:
    schedule = ShiftedCronSchedule(["0 12 29 2 *"])
    ticks = [tick for _, tick in schedule.upcoming(sh(2027, 1, 1), 3)]
    assert ticks == [sh(2028, 2, 29, 12), sh(2032, 2, 29, 12), sh(2036, 2, 29, 12)]
    # 2100 is not a leap year.
    assert schedule.next_fire(sh(2096, 3, 1))[1] == sh(2104, 2, 29, 12)


def test_negative_shift_across_year_end() -> None:
    schedule = ShiftedCronSchedule(["0 0 1 1 *"], timedelta(minutes=-1))
    fire, tick = schedule.next_fire(sh(2025, 6, 1))
    assert fire == sh(2025, 12, 31, 23, 59)
    assert tick == sh(2026, 1, 1, 0, 0)
    assert schedule.next_fire(fire)[0] == sh(2026, 12, 31, 23, 59)


def test_positive_shift_in_minutes() -> None:
    schedule = ShiftedCronSchedule(["*/10 10 * * 1-5"], parse_shift(5, "m"))
    assert schedule.upcoming(sh(2025, 1, 3, 10, 40), 3) == [
        (sh(2025, 1, 3, 10, 45), sh(2025, 1, 3, 10, 40)),
        (sh(2025, 1, 3, 10, 55), sh(2025, 1, 3, 10, 50)),
        (sh(2025, 1, 6, 10, 5), sh(2025, 1, 6, 10, 0)),
    ]


def test_positive_shift_in_hours_across_midnight() -> None:
    schedule = ShiftedCronSchedule(["0 23 * * *"], parse_shift(2, "h"))
    # after is past the 23:00 tick but before its fire at 01:00: that fire still comes.
    fire, tick = schedule.next_fire(sh(2025, 12, 31, 23, 30))
    assert (fire, tick) == (sh(2026, 1, 1, 1, 0), sh(2025, 12, 31, 23, 0))
    assert schedule.next_fire(fire) == (sh(2026, 1, 2, 1, 0), sh(2026, 1, 1, 23, 0))


def test_maximum_shifts() -> None:
    early = ShiftedCronSchedule(["0 0 1 * *"], parse_shift(-7, "h") * 24)
    assert early.next_fire(sh(2025, 2, 1)) == (sh(2025, 2, 22), sh(2025, 3, 1))
    late = ShiftedCronSchedule(["0 0 1 * *"], timedelta(days=7))
    assert late.next_fire(sh(2025, 2, 1)) == (sh(2025, 2, 8), sh(2025, 2, 1))


def test_end_of_representable_time_returns_none() -> None:
    schedule = ShiftedCronSchedule(["59 23 31 12 *"], timedelta(0), "UTC")
    assert schedule.next_fire(u(9999, 12, 30)) == (u(9999, 12, 31, 23, 59),) * 2
    assert schedule.next_fire(u(9999, 12, 31, 23, 59)) is None
    assert schedule.upcoming(u(9999, 12, 30), 5) == [(u(9999, 12, 31, 23, 59),) * 2]


# -- DST ---------------------------------------------------------------------------------
# Europe/Berlin: 2025-03-30 01:00 UTC clocks jump 02:00 CET -> 03:00 CEST;
#                2025-10-26 01:00 UTC clocks fall 03:00 CEST -> 02:00 CET.
# America/New_York: 2025-03-09 07:00 UTC 02:00 EST -> 03:00 EDT;
#                   2025-11-02 06:00 UTC 02:00 EDT -> 01:00 EST.


def test_berlin_spring_forward_fixed_time_in_gap_fires_gap_length_later() -> None:
    schedule = ShiftedCronSchedule(["30 2 * * *"], timedelta(0), BERLIN)
    pairs = schedule.upcoming(u(2025, 3, 28, 12), 3)
    assert utc(pairs) == [u(2025, 3, 29, 1, 30), u(2025, 3, 30, 1, 30), u(2025, 3, 31, 0, 30)]
    assert [t.isoformat() for t in utc(pairs, 1)] == [f.isoformat() for f in utc(pairs)]
    assert pairs[1][1].isoformat() == "2025-03-30T03:30:00+02:00"
    assert pairs[1][1].tzname() == "CEST"


def test_berlin_spring_forward_hour_of_ticks_in_gap() -> None:
    schedule = ShiftedCronSchedule(["*/20 2 * * *"], timedelta(0), BERLIN)
    assert utc(schedule.upcoming(u(2025, 3, 30, 0, 0), 4)) == [
        u(2025, 3, 30, 1, 0),
        u(2025, 3, 30, 1, 20),
        u(2025, 3, 30, 1, 40),
        u(2025, 3, 31, 0, 0),
    ]


def test_berlin_spring_forward_interval_line_keeps_spacing() -> None:
    # Gap ticks 02:00/02:20/02:40 land on 03:00/03:20/03:40, which are ticks anyway.
    schedule = ShiftedCronSchedule(["*/20 * * * *"], timedelta(0), BERLIN)
    assert utc(schedule.upcoming(u(2025, 3, 30, 0, 30), 5)) == [
        u(2025, 3, 30, 0, 40),
        u(2025, 3, 30, 1, 0),
        u(2025, 3, 30, 1, 20),
        u(2025, 3, 30, 1, 40),
        u(2025, 3, 30, 2, 0),
    ]


def test_berlin_spring_forward_gap_tick_and_real_tick_fire_once() -> None:
    schedule = ShiftedCronSchedule(["30 2 * * *", "30 3 * * *"], timedelta(0), BERLIN)
    assert utc(schedule.upcoming(u(2025, 3, 30, 0), 3)) == [
        u(2025, 3, 30, 1, 30),
        u(2025, 3, 31, 0, 30),
        u(2025, 3, 31, 1, 30),
    ]


def test_berlin_spring_forward_shift_is_elapsed_time() -> None:
    schedule = ShiftedCronSchedule(["0 3 * * *"], timedelta(seconds=-30), BERLIN)
    fire, tick = schedule.next_fire(u(2025, 3, 29, 12))
    assert tick.astimezone(UTC) == u(2025, 3, 30, 1, 0)
    assert fire.astimezone(UTC) == u(2025, 3, 30, 0, 59, 30)
    # 30 real seconds before 03:00 CEST is 01:59:30 CET, not the non-existent 02:59:30.
    assert fire.isoformat() == "2025-03-30T01:59:30+01:00"


def test_berlin_fall_back_fixed_time_fires_once_at_first_occurrence() -> None:
    schedule = ShiftedCronSchedule(["30 2 * * *"], timedelta(0), BERLIN)
    pairs = schedule.upcoming(u(2025, 10, 25, 12), 2)
    assert utc(pairs) == [u(2025, 10, 26, 0, 30), u(2025, 10, 27, 1, 30)]
    assert pairs[0][0].isoformat() == "2025-10-26T02:30:00+02:00"


def test_berlin_fall_back_fixed_hour_ticks_fire_once() -> None:
    schedule = ShiftedCronSchedule(["*/20 2 * * *"], timedelta(0), BERLIN)
    assert utc(schedule.upcoming(u(2025, 10, 25, 23, 30), 4)) == [
        u(2025, 10, 26, 0, 0),
        u(2025, 10, 26, 0, 20),
        u(2025, 10, 26, 0, 40),
        u(2025, 10, 27, 1, 0),
    ]


def test_berlin_fall_back_wildcard_hour_fires_both_occurrences() -> None:
    schedule = ShiftedCronSchedule(["*/20 * * * *"], timedelta(0), BERLIN)
    pairs = schedule.upcoming(u(2025, 10, 25, 23, 30), 9)
    assert utc(pairs) == [u(2025, 10, 25, 23, 40)] + [
        u(2025, 10, 26, 0, 0) + timedelta(minutes=20 * i) for i in range(8)
    ]
    assert [p[0].strftime("%H:%M%z") for p in pairs] == [
        "01:40+0200",
        "02:00+0200",
        "02:20+0200",
        "02:40+0200",
        "02:00+0100",
        "02:20+0100",
        "02:40+0100",
        "03:00+0100",
        "03:20+0100",
    ]
    fires = [p[0] for p in pairs]
    # Compared as returned (no conversion): ordering must be by instant, not wall clock.
    assert all(a < b for a, b in zip(fires, fires[1:], strict=False))
    assert all(b - a == timedelta(minutes=20) for a, b in zip(fires, fires[1:], strict=False))


def test_berlin_fall_back_mixed_lines() -> None:
    # The fixed-hour line fires 02:30 once; the hourly line fires both 02:00s.
    schedule = ShiftedCronSchedule(["30 2 * * *", "0 * * * *"], timedelta(minutes=-1), BERLIN)
    ticks = utc(schedule.upcoming(u(2025, 10, 25, 23, 30), 5), 1)
    assert ticks == [
        u(2025, 10, 26, 0, 0),
        u(2025, 10, 26, 0, 30),
        u(2025, 10, 26, 1, 0),
        u(2025, 10, 26, 2, 0),
        u(2025, 10, 26, 3, 0),
    ]


def test_new_york_spring_forward() -> None:
    schedule = ShiftedCronSchedule(["30 2 * * *"], timedelta(0), NEW_YORK)
    pairs = schedule.upcoming(u(2025, 3, 8, 12), 3)
    assert utc(pairs) == [u(2025, 3, 9, 7, 30), u(2025, 3, 10, 6, 30), u(2025, 3, 11, 6, 30)]
    assert pairs[0][0].isoformat() == "2025-03-09T03:30:00-04:00"


def test_new_york_fall_back() -> None:
    fixed = ShiftedCronSchedule(["30 1 * * *"], timedelta(0), NEW_YORK)
    assert utc(fixed.upcoming(u(2025, 11, 1, 12), 2)) == [
        u(2025, 11, 2, 5, 30),  # 01:30 EDT, first occurrence only
        u(2025, 11, 3, 6, 30),
    ]
    hourly = ShiftedCronSchedule(["0 * * * *"], timedelta(0), NEW_YORK)
    pairs = hourly.upcoming(u(2025, 11, 2, 3, 30), 4)
    assert utc(pairs) == [u(2025, 11, 2, h) for h in (4, 5, 6, 7)]
    assert [p[0].isoformat() for p in pairs] == [
        "2025-11-02T00:00:00-04:00",
        "2025-11-02T01:00:00-04:00",
        "2025-11-02T01:00:00-05:00",
        "2025-11-02T02:00:00-05:00",
    ]


def test_half_hour_offset_zone() -> None:
    schedule = ShiftedCronSchedule(["0 9 * * *"], timedelta(0), "America/St_Johns")
    assert utc(schedule.upcoming(u(2025, 1, 1), 1)) == [u(2025, 1, 1, 12, 30)]


def _reference_ticks(lines: list[str], tz: str, start: datetime, end: datetime) -> list[datetime]:
    """Brute-force statement of the documented rules, straight from zoneinfo's fold."""
    zone = ZoneInfo(tz)
    wall = start.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)
    wall -= timedelta(days=2)
    wall_end = end.astimezone(zone).replace(tzinfo=None) + timedelta(days=2)
    found: set[datetime] = set()
    for line in lines:
        hour_wildcard = croniter.expand(line)[0][1] == ["*"]
        it = croniter(line, wall, ret_type=datetime)
        while (tick := it.get_next(datetime)) <= wall_end:
            first = tick.replace(tzinfo=zone, fold=0).astimezone(UTC)
            found.add(first)
            second = tick.replace(tzinfo=zone, fold=1).astimezone(UTC)
            repeated = second != first and second.astimezone(zone).replace(tzinfo=None) == tick
            if repeated and hour_wildcard:
                found.add(second)
    return sorted(t for t in found if start < t <= end)


@pytest.mark.parametrize(
    ("tz", "transition"),
    [
        (BERLIN, u(2025, 3, 30, 1)),
        (BERLIN, u(2025, 10, 26, 1)),
        (NEW_YORK, u(2025, 3, 9, 7)),
        (NEW_YORK, u(2025, 11, 2, 6)),
        ("Australia/Lord_Howe", u(2025, 4, 5, 15)),  # 30-minute DST
        ("Australia/Lord_Howe", u(2025, 10, 4, 15, 30)),
        ("Pacific/Apia", u(2011, 12, 30, 10)),  # 2011-12-30 skipped entirely
        ("Antarctica/Troll", u(2025, 3, 30, 1)),  # two-hour DST
        ("Africa/Casablanca", u(2025, 2, 23, 2)),  # DST suspended for Ramadan
    ],
)
@pytest.mark.parametrize(
    "lines",
    [
        ["*/10 * * * *", "30 2 * * *"],
        ["0 * * * *", "*/20 2 * * *", "15 1,2,3 * * *"],
        ["0 0 * * *", "45 23 * * *", "*/7 0-3 * * *"],
    ],
)
def test_matches_reference_around_transitions(
    tz: str, transition: datetime, lines: list[str]
) -> None:
    start, end = transition - timedelta(hours=26), transition + timedelta(hours=26)
    expected = _reference_ticks(lines, tz, start, end)
    assert expected  # the window is not empty, so the comparison below means something
    schedule = ShiftedCronSchedule(lines, timedelta(seconds=-90), tz)
    got: list[datetime] = []
    cursor = start - timedelta(seconds=90)
    while (item := schedule.next_fire(cursor)) is not None and item[1] <= end:
        fire, tick = item
        assert fire > cursor
        assert fire - tick == timedelta(seconds=-90)
        got.append(tick.astimezone(UTC))
        cursor = fire
    assert got == expected


# -- upcoming / volume -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "shift", "tz", "start"),
    [
        (["*/10 10 * * 1-5", "*/10 14 * * 1-5"], -30, "Asia/Shanghai", u(2025, 1, 3)),
        (["*/20 * * * *", "30 2 * * *"], 0, BERLIN, u(2025, 10, 26, 0, 10)),
        (["30 2 * * *", "0 3 * * *"], -3600, BERLIN, u(2025, 3, 29, 12)),
    ],
)
def test_upcoming_strictly_increasing(
    lines: list[str], shift: int, tz: str, start: datetime
) -> None:
    pairs = ShiftedCronSchedule(lines, timedelta(seconds=shift), tz).upcoming(start, 5)
    assert len(pairs) == 5
    fires = [fire for fire, _ in pairs]
    ticks = [tick for _, tick in pairs]
    assert fires[0] > start
    assert all(a < b for a, b in zip(fires, fires[1:], strict=False))
    assert all(a < b for a, b in zip(ticks, ticks[1:], strict=False))
    assert all(f - t == timedelta(seconds=shift) for f, t in pairs)


def test_upcoming_argument_checks() -> None:
    schedule = ShiftedCronSchedule(["* * * * *"])
    assert schedule.upcoming(u(2025, 1, 1), 0) == []
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="non-negative integer"):
            schedule.upcoming(u(2025, 1, 1), bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("tz", ["Asia/Shanghai", BERLIN])
def test_ten_thousand_successive_calls(tz: str) -> None:
    # Starts the day before Berlin's spring-forward, so the run crosses it there.
    schedule = ShiftedCronSchedule(["* * * * *"], timedelta(seconds=-30), tz)
    cursor = u(2025, 3, 29, 0, 0, 0)
    first = None
    for _ in range(10_000):
        fire, tick = schedule.next_fire(cursor)
        assert fire - cursor == (timedelta(seconds=30) if first is None else timedelta(minutes=1))
        assert tick - fire == timedelta(seconds=30)
        first = first or fire
        cursor = fire
    assert cursor == first + timedelta(minutes=9_999)


# -- APScheduler trigger ----------------------------------------------------------------


def make_trigger(shift: int = -30, tz: str = "Asia/Shanghai") -> ShiftedCronTrigger:
    return ShiftedCronTrigger(["*/10 10 * * 1-5", "*/10 14 * * 1-5"], timedelta(seconds=shift), tz)


def test_trigger_first_fire_is_at_or_after_now() -> None:
    trigger = make_trigger()
    fire = sh(2025, 1, 3, 10, 9, 30)
    assert trigger.get_next_fire_time(None, fire) == fire  # exactly now counts
    assert trigger.get_next_fire_time(None, fire - US) == fire
    assert trigger.get_next_fire_time(None, fire + US) == sh(2025, 1, 3, 10, 19, 30)
    assert trigger.get_next_fire_time(None, sh(2025, 1, 3, 9)) == sh(2025, 1, 3, 9, 59, 30)


def test_trigger_with_previous_fire_is_strictly_after_previous() -> None:
    trigger = make_trigger()
    previous = sh(2025, 1, 3, 10, 9, 30)
    assert trigger.get_next_fire_time(previous, previous) == sh(2025, 1, 3, 10, 19, 30)
    # APScheduler enumerates missed runs this way: previous decides, not now.
    later = sh(2025, 1, 3, 12)
    assert trigger.get_next_fire_time(previous, later) == sh(2025, 1, 3, 10, 19, 30)
    assert trigger.get_next_fire_time(sh(2025, 1, 3, 10, 49, 30), later) == sh(
        2025, 1, 3, 13, 59, 30
    )
    assert trigger.get_next_fire_time(previous - US, later) == previous


def test_trigger_rejects_naive_times() -> None:
    trigger = make_trigger()
    with pytest.raises(ValueError, match="timezone-aware"):
        trigger.get_next_fire_time(None, datetime(2025, 1, 3, 10))
    with pytest.raises(ValueError, match="timezone-aware"):
        trigger.get_next_fire_time(datetime(2025, 1, 3, 10), sh(2025, 1, 3, 10))
    with pytest.raises(ValueError, match="timezone-aware"):
        trigger.nominal_tick(datetime(2025, 1, 3, 10))


def test_trigger_str_and_repr() -> None:
    assert str(make_trigger()) == (
        "cron[*/10 10 * * 1-5 | */10 14 * * 1-5] shift -30s tz Asia/Shanghai"
    )
    assert str(ShiftedCronTrigger(["0 9 * * *"], timedelta(minutes=5), BERLIN)) == (
        "cron[0 9 * * *] shift +5m tz Europe/Berlin"
    )
    assert str(ShiftedCronTrigger(["0 9 * * *"], timedelta(hours=-2))) == (
        "cron[0 9 * * *] shift -2h tz Asia/Shanghai"
    )
    assert str(ShiftedCronTrigger(["0 9 * * *"], timedelta(seconds=90))).endswith(
        "shift +90s tz Asia/Shanghai"
    )
    assert str(ShiftedCronTrigger(["0 9 * * *"])) == "cron[0 9 * * *] shift 0s tz Asia/Shanghai"
    assert repr(make_trigger()) == (
        "<ShiftedCronTrigger (cron=['*/10 10 * * 1-5', '*/10 14 * * 1-5'], "
        "shift='-30s', timezone='Asia/Shanghai')>"
    )


def test_trigger_nominal_tick() -> None:
    trigger = make_trigger()
    assert trigger.nominal_tick(sh(2025, 1, 3, 10, 9, 30)) == sh(2025, 1, 3, 10, 10)
    # Across Berlin's spring-forward, in elapsed time, matching the schedule's own ticks.
    berlin = ShiftedCronTrigger(["0 3 * * *", "30 2 * * *"], timedelta(seconds=-30), BERLIN)
    for fire, tick in berlin.schedule.upcoming(u(2025, 3, 28), 6):
        assert berlin.nominal_tick(fire) == tick
    fire = berlin.get_next_fire_time(None, u(2025, 3, 30, 0))
    assert fire.astimezone(UTC) == u(2025, 3, 30, 0, 59, 30)
    assert berlin.nominal_tick(fire).isoformat() == "2025-03-30T03:00:00+02:00"


def test_trigger_from_workflow() -> None:
    trigger = ShiftedCronTrigger.from_workflow(
        ["*/10 10 * * 1-5", "*/10 14 * * 1-5"], -30, "s", "Asia/Shanghai"
    )
    assert str(trigger) == str(make_trigger())
    assert trigger.shift == timedelta(seconds=-30)
    assert trigger.timezone == ZoneInfo("Asia/Shanghai")
    with pytest.raises(ValueError, match="shift unit"):
        ShiftedCronTrigger.from_workflow(["0 * * * *"], 1, "d")


def test_trigger_pickles() -> None:
    trigger = make_trigger(shift=-3600, tz=BERLIN)
    clone = pickle.loads(pickle.dumps(trigger))
    assert str(clone) == str(trigger)
    now = u(2025, 3, 29, 12)
    assert clone.get_next_fire_time(None, now) == trigger.get_next_fire_time(None, now)
    state = trigger.__getstate__()
    state["version"] = 2
    with pytest.raises(ValueError, match="version 2"):
        ShiftedCronTrigger.__new__(ShiftedCronTrigger).__setstate__(state)


def test_trigger_in_apscheduler() -> None:
    scheduler = BackgroundScheduler(timezone="Asia/Shanghai")
    trigger = ShiftedCronTrigger(["* * * * *"], timedelta(seconds=-30))
    scheduler.add_job(print, trigger, id="wf")
    scheduler.start(paused=True)
    try:
        job = scheduler.get_job("wf")
        assert job is not None
        # Within a minute of the real clock, on the :30 second mark.
        assert job.next_run_time.second == 30
        assert job.next_run_time.astimezone(UTC) - datetime.now(UTC) <= timedelta(minutes=1)
        # Misfire enumeration: APScheduler chains get_next_fire_time(previous, now).
        job.next_run_time = sh(2025, 1, 3, 10, 0, 30)
        assert job._get_run_times(sh(2025, 1, 3, 10, 3, 30)) == [
            sh(2025, 1, 3, 10, 0, 30),
            sh(2025, 1, 3, 10, 1, 30),
            sh(2025, 1, 3, 10, 2, 30),
            sh(2025, 1, 3, 10, 3, 30),
        ]
    finally:
        scheduler.shutdown(wait=False)
