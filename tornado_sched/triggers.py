"""Shifted multi-line cron schedules, and an APScheduler 3.x trigger built on them.

A workflow fires at the union of the ticks of several 5-field crontab lines, each tick
moved by a fixed shift (negative = earlier), evaluated in the workflow's IANA time zone.

Semantics (these are the documented contract; ``tests/core/test_triggers.py`` pins them):

* **Crontab lines** are standard 5-field lines (minute hour day-of-month month
  day-of-week, 0 or 7 = Sunday, day-of-month and day-of-week OR-ed when both are
  restricted, as in cron). croniter's extensions ``L``, ``W``, ``#`` and ``?`` are
  accepted. The macros ``@hourly``, ``@daily``, ``@midnight``, ``@weekly``,
  ``@monthly``, ``@yearly`` and ``@annually`` are accepted because they are exact
  5-field equivalents. Rejected: a seconds or year field (6/7 fields), ``@reboot``
  (no tick time), Jenkins-style ``H`` / ``R`` tokens (hashed or random, so not
  reproducible between processes), and day/month combinations that can never occur
  (``0 0 30 2 *``).

* **Ticks are wall-clock times** in the workflow's zone. Each wall-clock tick is turned
  into an absolute instant the way Python interprets a naive local time with
  ``fold=0`` (PEP 495):

  - a tick in a repeated hour (DST ends) fires at its *first* occurrence, the one
    still on summer time; e.g. Europe/Berlin 2025-10-26 ``30 2 * * *`` fires once, at
    00:30 UTC (02:30+02:00);
  - except that a line whose hour field is ``*`` (``*/10 * * * *``, ``0 * * * *``,
    ``@hourly``) also fires at the *second* occurrence, so interval-like schedules keep
    their spacing through the repeated hour instead of pausing for 70 minutes. This
    is the rule ISC/Vixie cron uses: fixed-time jobs are not re-run, wildcard jobs
    follow the clock;
  - a tick in a skipped hour (DST starts) is read with the offset in force *before*
    the jump, so it fires the gap length later on the new clock: Europe/Berlin
    2025-03-30 ``30 2 * * *`` fires at 01:30 UTC (03:30+02:00), exactly 24 h after
    the previous day's 02:30. Such a tick is never dropped; if it lands on the
    same instant as a genuine tick (``*/10 * * * *`` at 02:10 lands on 03:10) the
    two fire once.

* **The shift is absolute elapsed time**, applied in UTC: ``fire = tick + shift``.
  Wall-clock arithmetic would produce local times that do not exist or exist twice
  (03:00 minus 30 s on a spring-forward morning is 02:59:30, which never happens),
  and "30 seconds before the tick" means 30 real seconds to whoever set the shift.
  For the same reason ``nominal_tick(fire) == fire - shift`` holds for every fire.

* **Coincident ticks fire once.** Two lines (or a gap tick and a genuine tick) that
  map to the same instant produce a single fire.

* Every returned datetime is aware, reads as the workflow zone's real local time (a
  skipped-hour tick's nominal tick reads 03:30+02:00, not the non-existent 02:30), and
  carries a *fixed-offset* tzinfo named after the zone's abbreviation (``CEST``), not
  the ZoneInfo itself. Python compares and subtracts two datetimes sharing one tzinfo
  object by wall clock, ignoring ``fold`` (PEP 495), so inside a repeated hour
  02:10+01:00 would sort before 02:40+02:00 and APScheduler's wait computations would
  go negative; with fixed offsets ordering and subtraction are always exact. Convert
  with ``.astimezone(ZoneInfo(...))`` before doing calendar arithmetic. Naive inputs
  are rejected: which instant they meant cannot be known.

Assumptions about the zone: its UTC offset changes on whole seconds, at most once in
any 25-hour window, and by at most 24 hours. All IANA zones satisfy this for the
dates a scheduler deals with.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from croniter import CroniterBadDateError, CroniterError, croniter

from .clock import DEFAULT_TIME_ZONE

__all__ = [
    "MAX_SHIFT",
    "ShiftedCronSchedule",
    "ShiftedCronTrigger",
    "parse_shift",
    "validate_crontab",
]

MAX_SHIFT = timedelta(days=7)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_MINUTE = timedelta(minutes=1)
_MICROSECOND = timedelta(microseconds=1)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
_MAX_SHIFT_SECONDS = int(MAX_SHIFT.total_seconds())
_MACROS = ("@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually")
_HOUR_FIELD = 1
# Jenkins-style hashed/random items ("H", "H/5", "H(0-29)/10", "R"). croniter picks a
# random value for "R" per instance, so two processes would disagree on the schedule.
_HASH_ITEM_RE = re.compile(r"[hr](\(\d+-\d+\))?(/\d+)?", re.IGNORECASE)
# Longest DST gap / repeat we must see behind us (Samoa skipped a whole day in 2011).
_LOOKBACK = timedelta(hours=25)
# Offsets are probed this often when looking for the next transition; transitions
# are assumed to be further apart than this.
_PROBE_STEP = timedelta(days=1)
# Each hop crosses one offset transition; two per year over croniter's 50-year search
# horizon is ~100, so this bound is only a guard against an unforeseen zone shape.
_MAX_SEGMENT_HOPS = 1000


def parse_shift(time: int, unit: str) -> timedelta:
    """Turn a workflow's ``execute_shift_time`` / ``execute_shift_unit`` into a timedelta.

    ``unit`` is ``"s"``, ``"m"`` or ``"h"``; ``time`` is an int (bool is refused although
    it is an int subclass, since ``True`` is never a meant shift). Negative means earlier.
    The result is bounded to +/- 7 days.
    """
    if isinstance(time, bool) or not isinstance(time, int):
        raise ValueError(f"shift time must be an integer, got {type(time).__name__} {time!r}")
    if not isinstance(unit, str) or unit not in _UNIT_SECONDS:
        raise ValueError(f"shift unit must be one of 's', 'm', 'h', got {unit!r}")
    seconds = time * _UNIT_SECONDS[unit]
    if abs(seconds) > _MAX_SHIFT_SECONDS:
        raise ValueError(
            f"shift {time}{unit} is out of range: at most 7 days "
            f"({_MAX_SHIFT_SECONDS} s) either way"
        )
    return timedelta(seconds=seconds)


def validate_crontab(line: str) -> str:
    """Check one crontab line and return it stripped; raise ValueError naming the problem.

    See the module docstring for what is accepted.
    """
    if not isinstance(line, str):
        raise ValueError(f"crontab line must be a string, got {type(line).__name__}")
    stripped = line.strip()
    if not stripped:
        raise ValueError("crontab line is empty")
    if stripped.startswith("@"):
        if stripped.lower() not in _MACROS:
            raise ValueError(
                f"crontab line {stripped!r}: unsupported macro; allowed macros are "
                + ", ".join(_MACROS)
            )
    else:
        fields = stripped.split()
        if len(fields) != 5:
            raise ValueError(
                f"crontab line {stripped!r} has {len(fields)} fields, expected exactly 5 "
                "(minute hour day-of-month month day-of-week; no seconds or year field)"
            )
        for field in fields:
            for item in field.split(","):
                if _HASH_ITEM_RE.fullmatch(item):
                    raise ValueError(
                        f"crontab line {stripped!r}: hashed/random item {item!r} is not supported"
                    )
    try:
        croniter.expand(stripped, strict=True)
    except (CroniterError, ValueError, TypeError, KeyError, IndexError) as exc:
        # croniter wraps unexpected ValueErrors in a message holding a whole traceback;
        # its last line is the part a person can act on.
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"invalid crontab line {stripped!r}: {detail}") from None
    return stripped


def _load_zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ValueError(f"time zone must be a non-empty IANA name, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def _as_utc(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value!r}")
    return value.astimezone(UTC)


def _wall(instant: datetime, offset: timedelta) -> datetime:
    """Naive local reading of a UTC instant under ``offset``."""
    return (instant + offset).replace(tzinfo=None)


def _instant(wall: datetime, offset: timedelta) -> datetime:
    """UTC instant of a naive local time read with ``offset``."""
    return wall.replace(tzinfo=UTC) - offset


@functools.lru_cache(maxsize=256)
def _fixed_zone(offset: timedelta, name: str | None) -> timezone:
    return timezone(offset, name) if name else timezone(offset)


def _format_shift(shift: timedelta) -> str:
    seconds = int(shift.total_seconds())
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else "+"
    magnitude = abs(seconds)
    for unit, size in (("h", 3600), ("m", 60)):
        if magnitude % size == 0:
            return f"{sign}{magnitude // size}{unit}"
    return f"{sign}{magnitude}s"


class _Line:
    """One crontab line evaluated on naive wall-clock time.

    croniter is only ever given naive datetimes: that keeps it pure calendar arithmetic,
    and DST is handled by ShiftedCronSchedule with the documented rules instead of
    croniter's own (version-dependent) heuristics.
    """

    __slots__ = ("expr", "hour_wildcard", "_iter")

    def __init__(self, expr: str) -> None:
        self.expr = expr
        expanded, _ = croniter.expand(expr)
        self.hour_wildcard = expanded[_HOUR_FIELD] == ["*"]
        self._iter = croniter(expr, datetime(2000, 1, 1), ret_type=datetime)

    def first_after(self, wall: datetime) -> datetime | None:
        """Earliest tick strictly after ``wall`` (None if there is none)."""
        # Ticks are whole minutes, so flooring loses nothing, and it keeps croniter's
        # float timestamps exact (a float near 1.7e9 s cannot hold every microsecond).
        floor = wall.replace(second=0, microsecond=0)
        try:
            return self._iter.get_next(datetime, start_time=floor)
        except (CroniterBadDateError, OverflowError, ValueError):
            return None

    def first_at_or_after(self, wall: datetime) -> datetime | None:
        floor = wall.replace(second=0, microsecond=0)
        if floor == wall:
            return self.first_after(wall - _MINUTE)
        return self.first_after(wall)


class ShiftedCronSchedule:
    """The union of several crontab lines' ticks, each moved by a fixed shift.

    ``next_fire(after)`` returns ``(fire_time, nominal_tick)`` for the earliest fire
    strictly after ``after``; see the module docstring for the DST and shift rules.
    Each call starts from ``after`` (no replay from a fixed origin), so successive calls
    cost O(number of lines) each. Thread-safe.
    """

    def __init__(
        self,
        cron_lines: Iterable[str],
        shift: timedelta = timedelta(0),
        tz: str = DEFAULT_TIME_ZONE,
    ) -> None:
        if isinstance(cron_lines, str):
            raise ValueError("cron_lines must be a list of crontab lines, not a single string")
        lines = tuple(validate_crontab(line) for line in cron_lines)
        if not lines:
            raise ValueError("at least one crontab line is required")
        if not isinstance(shift, timedelta):
            raise ValueError(f"shift must be a timedelta, got {type(shift).__name__}")
        if shift % _SECOND:
            raise ValueError(f"shift must be a whole number of seconds, got {shift!r}")
        if abs(shift) > MAX_SHIFT:
            raise ValueError(f"shift {shift} is out of range: at most 7 days either way")
        self.cron_lines: tuple[str, ...] = lines
        self.shift: timedelta = shift
        self.tz_name: str = tz
        self.zone: ZoneInfo = _load_zone(tz)
        # Identical lines would only produce identical ticks.
        self._lines = [_Line(expr) for expr in dict.fromkeys(lines)]
        # croniter iterators are stateful; APScheduler may ask from several threads.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"ShiftedCronSchedule({list(self.cron_lines)!r}, shift={self.shift!r}, "
            f"tz={self.tz_name!r})"
        )

    def next_fire(self, after: datetime) -> tuple[datetime, datetime] | None:
        """Earliest ``(fire_time, nominal_tick)`` with ``fire_time > after``, or None."""
        bound = _as_utc(after, "after")
        try:
            with self._lock:
                # fire > after  <=>  tick > after - shift (so a negative shift looks
                # further ahead for the tick).
                tick = self._next_tick(bound - self.shift)
            if tick is None:
                return None
            return self.localize(tick + self.shift), self.localize(tick)
        except OverflowError:
            # Past datetime.max (year 9999): nothing representable to fire at.
            return None

    def localize(self, instant: datetime) -> datetime:
        """``instant`` as the zone's local time, with a fixed-offset tzinfo (see module doc)."""
        local = instant.astimezone(self.zone)
        offset = local.utcoffset()
        assert offset is not None  # a ZoneInfo always has one
        return local.replace(tzinfo=_fixed_zone(offset, local.tzname()), fold=0)

    def upcoming(self, after: datetime, n: int) -> list[tuple[datetime, datetime]]:
        """The next ``n`` fires strictly after ``after`` (fewer if the schedule ends)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        result: list[tuple[datetime, datetime]] = []
        cursor = after
        while len(result) < n:
            item = self.next_fire(cursor)
            if item is None:
                break
            result.append(item)
            cursor = item[0]
        return result

    # -- internals -------------------------------------------------------------------
    #
    # Time is cut into segments of constant UTC offset. Inside a segment with offset o,
    # wall w <-> instant w - o is a bijection, so the first tick after a bound is one
    # croniter call per line. Only the segment's start needs extra care: after a
    # spring-forward its gap ticks map (with the previous offset p) into the segment's
    # first d = o - p; after a fall-back its first p - o of walls are repeats.

    def _offset(self, instant: datetime) -> timedelta:
        offset = instant.astimezone(self.zone).utcoffset()
        assert offset is not None  # a ZoneInfo always has one
        return offset

    def _next_tick(self, bound: datetime) -> datetime | None:
        """Earliest tick instant (UTC) strictly after ``bound``, across all lines."""
        anchor = bound
        for _ in range(_MAX_SEGMENT_HOPS):
            offset = self._offset(anchor)
            seg_start, prev_offset = self._segment_start(anchor, offset)
            best: datetime | None = None
            for line in self._lines:
                candidate = self._line_candidate(line, bound, offset, seg_start, prev_offset)
                if candidate is not None and (best is None or candidate < best):
                    best = candidate
            if best is None:
                return None
            transition = self._transition_after(anchor, offset, best)
            if transition is None:
                return best
            # The offset changes at or before the best candidate, so every candidate
            # (computed with the old offset) is void: redo the search from the new
            # segment. No tick was missed in (bound, transition), since all were later.
            anchor = transition
            bound = transition - _MICROSECOND
        raise RuntimeError(
            f"{self!r}: no fire found after {_MAX_SEGMENT_HOPS} UTC-offset transitions"
        )

    def _line_candidate(
        self,
        line: _Line,
        bound: datetime,
        offset: timedelta,
        seg_start: datetime | None,
        prev_offset: timedelta,
    ) -> datetime | None:
        best: datetime | None = None
        wall = line.first_after(_wall(bound, offset))
        if (
            wall is not None
            and seg_start is not None
            and prev_offset > offset
            and not line.hour_wildcard
        ):
            repeat_end = _wall(seg_start, prev_offset)
            if wall < repeat_end:
                # Second occurrence of a repeated wall time: fixed-hour lines already
                # fired at the first one.
                wall = line.first_at_or_after(repeat_end)
        if wall is not None:
            best = _instant(wall, offset)
        if seg_start is not None and prev_offset < offset:
            gap_start = _wall(seg_start, prev_offset)
            gap_end = _wall(seg_start, offset)
            low = _wall(bound, prev_offset)
            gap_wall = (
                line.first_after(low) if low >= gap_start else line.first_at_or_after(gap_start)
            )
            if gap_wall is not None and gap_wall < gap_end:
                gap_instant = _instant(gap_wall, prev_offset)
                if best is None or gap_instant < best:
                    best = gap_instant
        return best

    def _segment_start(
        self, instant: datetime, offset: timedelta
    ) -> tuple[datetime | None, timedelta]:
        """Transition that started ``instant``'s segment if recent, and the prior offset.

        (None, offset) when the offset has been the same for the whole lookback, in which
        case no gap or repeat can still reach ``instant``.
        """
        earlier = instant - _LOOKBACK
        prev_offset = self._offset(earlier)
        if prev_offset == offset:
            return None, offset
        return self._bisect(earlier, instant, prev_offset), prev_offset

    def _transition_after(
        self, instant: datetime, offset: timedelta, limit: datetime
    ) -> datetime | None:
        """First instant in (instant, limit] whose offset differs from ``offset``."""
        probe = instant
        while probe < limit:
            # Written so as not to overflow near datetime.max.
            nxt = limit if limit - probe <= _PROBE_STEP else probe + _PROBE_STEP
            if self._offset(nxt) != offset:
                return self._bisect(probe, nxt, offset)
            probe = nxt
        return None

    def _bisect(self, low: datetime, high: datetime, low_offset: timedelta) -> datetime:
        """First instant in (low, high] whose offset is not ``low_offset``.

        Works on whole seconds, where tzdb transitions fall; the flooring keeps each end
        on its own side of the transition.
        """
        lo = (low - _EPOCH) // _SECOND
        hi = (high - _EPOCH) // _SECOND
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._offset(_EPOCH + mid * _SECOND) == low_offset:
                lo = mid
            else:
                hi = mid
        found = _EPOCH + hi * _SECOND
        # Clamp so callers always make progress, even for a zone breaking the
        # whole-second assumption.
        return min(max(found, low + _MICROSECOND), high)


class ShiftedCronTrigger(BaseTrigger):
    """APScheduler 3.x trigger firing on a :class:`ShiftedCronSchedule`.

    Fire times are ``tick + shift``; :meth:`nominal_tick` recovers the tick a fire time
    belongs to. No ``jitter`` option: a jittered fire time would no longer map back to
    its tick, and the job relies on that mapping.

    Pickles as (lines, shift seconds, zone name), so persistent job stores work.
    """

    __slots__ = ("schedule",)

    def __init__(
        self,
        cron_lines: Iterable[str],
        shift: timedelta = timedelta(0),
        timezone: str = DEFAULT_TIME_ZONE,
    ) -> None:
        self.schedule = ShiftedCronSchedule(cron_lines, shift, timezone)

    @classmethod
    def from_workflow(
        cls,
        execute_cron_list: Iterable[str],
        execute_shift_time: int = 0,
        execute_shift_unit: str = "s",
        timezone: str = DEFAULT_TIME_ZONE,
    ) -> ShiftedCronTrigger:
        """Build from a workflow's ``execute_*`` fields."""
        return cls(execute_cron_list, parse_shift(execute_shift_time, execute_shift_unit), timezone)

    @property
    def timezone(self) -> ZoneInfo:
        return self.schedule.zone

    @property
    def shift(self) -> timedelta:
        return self.schedule.shift

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        if previous_fire_time is None:
            # First fire at or after now; datetimes have microsecond resolution, so
            # ">= now" is "> now - 1 us".
            _as_utc(now, "now")
            item = self.schedule.next_fire(now - _MICROSECOND)
        else:
            item = self.schedule.next_fire(previous_fire_time)
        return None if item is None else item[0]

    def nominal_tick(self, fire_time: datetime) -> datetime:
        """The cron tick ``fire_time`` belongs to: ``fire_time - shift`` in elapsed time."""
        instant = _as_utc(fire_time, "fire_time")
        return self.schedule.localize(instant - self.schedule.shift)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "version": 1,
            "cron_lines": list(self.schedule.cron_lines),
            "shift_seconds": int(self.schedule.shift.total_seconds()),
            "timezone": self.schedule.tz_name,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        version = state.get("version", 1)
        if version != 1:
            raise ValueError(
                f"Got serialized data for version {version} of {type(self).__name__}, "
                "but only version 1 can be handled"
            )
        self.schedule = ShiftedCronSchedule(
            state["cron_lines"], timedelta(seconds=state["shift_seconds"]), state["timezone"]
        )

    def __str__(self) -> str:
        return (
            f"cron[{' | '.join(self.schedule.cron_lines)}] "
            f"shift {_format_shift(self.schedule.shift)} tz {self.schedule.tz_name}"
        )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} (cron={list(self.schedule.cron_lines)!r}, "
            f"shift='{_format_shift(self.schedule.shift)}', "
            f"timezone='{self.schedule.tz_name}')>"
        )
