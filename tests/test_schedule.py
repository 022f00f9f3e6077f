"""Cron maths: tables of next-fire times, DST rules, errors naming the field.

Every expected datetime below was worked out by hand from the calendar and
the 2026 DST transitions:

- Europe/Berlin: 2026-03-29 01:00Z (02:00 CET -> 03:00 CEST, wall 02:xx missing),
  2026-10-25 01:00Z (03:00 CEST -> 02:00 CET, wall 02:xx repeated);
- America/New_York: 2026-03-08 07:00Z (02:00 EST -> 03:00 EDT),
  2026-11-01 06:00Z (02:00 EDT -> 01:00 EST, wall 01:xx repeated);
- Australia/Lord_Howe: 2026-10-03 15:30Z (02:00 LHST -> 02:30 LHDT, wall
  02:00-02:29 missing).

2026-01-01 is a Thursday.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import taskrt.schedule
from taskrt.errors import InvalidOption, TaskrtError
from taskrt.schedule import (
    CronError,
    CronSpec,
    next_fire,
    next_fire_ts,
    parse_cron,
    validate_cron,
)
from taskrt.web.errors import status_of


def z(text: str) -> datetime:
    """An aware UTC datetime from ``"2026-01-01T10:00:00"`` (always UTC)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- next-fire tables ------------------------------------------------------------

FIVE_FIELDS = [
    ("*/15 * * * *", "2026-01-01T10:07:30", "2026-01-01T10:15:00"),
    ("*/15 * * * *", "2026-01-01T10:15:00", "2026-01-01T10:30:00"),  # strictly after
    ("0 0 * * *", "2026-01-01T00:00:00", "2026-01-02T00:00:00"),
    ("* * * * *", "2026-12-31T23:59:59.999", "2027-01-01T00:00:00"),
    ("30 9 * * mon-fri", "2026-01-02T10:00:00", "2026-01-05T09:30:00"),  # Fri -> Mon
    ("0 12 1 * *", "2026-01-15T00:00:00", "2026-02-01T12:00:00"),
    ("0 0 1 jan,jul *", "2026-02-01T00:00:00", "2026-07-01T00:00:00"),
    ("0 0 29 2 *", "2026-03-01T00:00:00", "2028-02-29T00:00:00"),  # next leap day
    ("0 0 L * *", "2026-02-10T00:00:00", "2026-02-28T00:00:00"),  # last day of month
    ("0 0 * * 5#3", "2026-01-01T00:00:00", "2026-01-16T00:00:00"),  # third Friday
    ("0 0 * * 7", "2026-01-01T00:00:00", "2026-01-04T00:00:00"),  # 7 is Sunday
    ("0 0 * * 0", "2026-01-01T00:00:00", "2026-01-04T00:00:00"),
    ("0 0 13 * 5", "2026-01-01T00:00:00", "2026-01-02T00:00:00"),  # dom OR dow: Friday
    ("0 0 13 * 5", "2026-01-10T00:00:00", "2026-01-13T00:00:00"),  # dom OR dow: the 13th
    ("0 0 1-10/3 * *", "2026-01-02T00:00:00", "2026-01-04T00:00:00"),
    ("5,55 8-9 * * *", "2026-01-01T08:56:00", "2026-01-01T09:05:00"),
    ("0 0 ? * MON", "2026-01-01T00:00:00", "2026-01-05T00:00:00"),
    # A day of month no month of the field has, with a weekday: the weekday fires.
    ("0 0 30 2 mon", "2026-01-01T00:00:00", "2026-02-02T00:00:00"),
    ("0 0 31 4 fri", "2026-04-10T00:00:00", "2026-04-17T00:00:00"),
]

SIX_FIELDS_SECONDS_FIRST = [
    ("*/30 * * * * *", "2026-01-01T10:00:00", "2026-01-01T10:00:30"),
    ("*/30 * * * * *", "2026-01-01T10:00:30", "2026-01-01T10:01:00"),
    ("*/30 * * * * *", "2026-01-01T10:00:29.999999", "2026-01-01T10:00:30"),
    ("0 0 2 * * *", "2026-01-01T02:00:00", "2026-01-02T02:00:00"),
    ("0 0 2 * * *", "2026-01-01T01:59:59.5", "2026-01-01T02:00:00"),
    # Seconds first: second 15 of every minute (seconds last would be minute 15).
    ("15 * * * * *", "2026-01-01T10:00:15", "2026-01-01T10:01:15"),
    ("0 30 * * * *", "2026-01-01T10:00:00", "2026-01-01T10:30:00"),
    ("5 0 0 * * 1", "2026-01-01T00:00:00", "2026-01-05T00:00:05"),
    ("* * * * * *", "2026-01-01T10:00:00.5", "2026-01-01T10:00:01"),
]

ALIASES = [
    ("@yearly", "2026-03-01T00:00:00", "2027-01-01T00:00:00"),
    ("@annually", "2026-03-01T00:00:00", "2027-01-01T00:00:00"),
    ("@monthly", "2026-03-01T00:00:00", "2026-04-01T00:00:00"),
    ("@weekly", "2026-01-01T00:00:00", "2026-01-04T00:00:00"),  # Sunday midnight
    ("@daily", "2026-01-01T12:00:00", "2026-01-02T00:00:00"),
    ("@midnight", "2026-01-01T12:00:00", "2026-01-02T00:00:00"),
    ("@hourly", "2026-01-01T12:00:00", "2026-01-01T13:00:00"),
    ("@minutely", "2026-01-01T12:00:01", "2026-01-01T12:01:00"),
    ("@DAILY", "2026-01-01T12:00:00", "2026-01-02T00:00:00"),
    (" @hourly ", "2026-01-01T12:00:00", "2026-01-01T13:00:00"),
]

EVERY = [
    ("@every 30s", "2026-01-01T10:00:10", "2026-01-01T10:00:30"),
    ("@every 30s", "2026-01-01T10:00:30", "2026-01-01T10:01:00"),
    # 2026-01-01T00:00Z is 1767225600 s, a multiple of 5400 s: a slot.
    ("@every 1h30m", "2026-01-01T00:00:00", "2026-01-01T01:30:00"),
    ("@EVERY  2m", "2026-01-01T00:00:30", "2026-01-01T00:02:00"),
    ("@every 500ms", "2026-01-01T10:00:00.2", "2026-01-01T10:00:00.5"),
    ("@every 500ms", "2026-01-01T10:00:00.5", "2026-01-01T10:00:01"),
    # 1767225600 / 660 = 2677614.5...: the next multiple is 1767225900 (00:05Z).
    ("@every 11m", "2026-01-01T00:00:00", "2026-01-01T00:05:00"),
    ("@every 1d", "2026-01-01T12:00:00", "2026-01-02T00:00:00"),
    ("@every 90", "2026-01-01T00:00:00", "2026-01-01T00:01:30"),
]


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    FIVE_FIELDS + SIX_FIELDS_SECONDS_FIRST + ALIASES + EVERY,
)
def test_next_fire_utc(expression: str, after: str, expected: str) -> None:
    result = next_fire(expression, after=z(after))
    assert result == z(expected)
    assert result.tzinfo is UTC


TIME_ZONES = [
    ("0 9 * * *", "Asia/Tokyo", "2026-01-01T00:00:00", "2026-01-02T00:00:00"),
    ("0 9 * * *", "America/New_York", "2026-01-01T00:00:00", "2026-01-01T14:00:00"),
    ("0 9 * * *", "America/New_York", "2026-07-01T00:00:00", "2026-07-01T13:00:00"),
    ("0 0 * * *", "Asia/Kolkata", "2026-01-01T00:00:00", "2026-01-01T18:30:00"),
    ("30 8 * * mon", "Australia/Sydney", "2026-01-01T00:00:00", "2026-01-04T21:30:00"),
    ("0 0 2 * * *", "Europe/Berlin", "2026-01-01T00:00:00", "2026-01-01T01:00:00"),
    # @every is aligned to the epoch in UTC whatever the zone (note 3).
    ("@every 1d", "Asia/Tokyo", "2026-01-01T12:00:00", "2026-01-02T00:00:00"),
    ("@daily", "Europe/Berlin", "2026-01-01T12:00:00", "2026-01-01T23:00:00"),
]

DST = [
    # Europe/Berlin, spring forward: wall 02:00-02:59 on 2026-03-29 does not exist;
    # its slots fire at the gap's end, 03:00 CEST (01:00Z), and only there (note 2).
    ("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00", "2026-03-29T01:00:00"),
    ("30 2 * * *", "Europe/Berlin", "2026-03-29T01:00:00", "2026-03-30T00:30:00"),
    ("0 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00", "2026-03-29T01:00:00"),
    ("0 3 * * *", "Europe/Berlin", "2026-03-28T12:00:00", "2026-03-29T01:00:00"),
    ("0 * * * *", "Europe/Berlin", "2026-03-29T00:00:00", "2026-03-29T01:00:00"),
    ("0 9 * * *", "Europe/Berlin", "2026-03-28T08:00:00", "2026-03-29T07:00:00"),
    ("*/10 2 * * *", "Europe/Berlin", "2026-03-28T01:50:00", "2026-03-29T01:00:00"),
    ("*/10 2 * * *", "Europe/Berlin", "2026-03-29T01:00:00", "2026-03-30T00:00:00"),
    ("30 30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00", "2026-03-29T01:00:00"),
    ("30 30 2 * * *", "Europe/Berlin", "2026-03-29T00:59:59.999999", "2026-03-29T01:00:00"),
    # Europe/Berlin, fall back: wall 02:00-02:59 on 2026-10-25 happens twice.
    ("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00", "2026-10-25T00:30:00"),
    ("30 2 * * *", "Europe/Berlin", "2026-10-25T00:30:00", "2026-10-26T01:30:00"),
    ("0 2 * * *", "Europe/Berlin", "2026-10-25T00:00:00", "2026-10-26T01:00:00"),
    ("*/30 * * * *", "Europe/Berlin", "2026-10-25T00:30:00", "2026-10-25T02:00:00"),
    ("0 3 * * *", "Europe/Berlin", "2026-10-24T12:00:00", "2026-10-25T02:00:00"),
    # ... and from inside the second pass nothing fires until 03:00 CET.
    ("*/5 * * * *", "Europe/Berlin", "2026-10-25T01:10:00", "2026-10-25T02:00:00"),
    ("* * * * * *", "Europe/Berlin", "2026-10-25T01:10:00", "2026-10-25T02:00:00"),
    ("* * * * * *", "Europe/Berlin", "2026-10-25T00:59:59", "2026-10-25T02:00:00"),
    # America/New_York, spring forward: wall 02:00-02:59 on 2026-03-08 does not exist.
    ("30 2 * * *", "America/New_York", "2026-03-07T12:00:00", "2026-03-08T07:00:00"),
    ("30 2 * * *", "America/New_York", "2026-03-08T07:00:00", "2026-03-09T06:30:00"),
    ("0 2 * * *", "America/New_York", "2026-03-07T12:00:00", "2026-03-08T07:00:00"),
    ("0 * * * *", "America/New_York", "2026-03-08T06:00:00", "2026-03-08T07:00:00"),
    # America/New_York, fall back: wall 01:00-01:59 on 2026-11-01 happens twice.
    ("30 1 * * *", "America/New_York", "2026-10-31T12:00:00", "2026-11-01T05:30:00"),
    ("30 1 * * *", "America/New_York", "2026-11-01T05:30:00", "2026-11-02T06:30:00"),
    ("0 * * * *", "America/New_York", "2026-11-01T05:00:00", "2026-11-01T07:00:00"),
    ("*/20 * * * *", "America/New_York", "2026-11-01T06:30:00", "2026-11-01T07:00:00"),
    ("0 0 1 * * *", "America/New_York", "2026-11-01T05:00:00", "2026-11-02T06:00:00"),
    # Australia/Lord_Howe, spring forward by 30 minutes: wall 02:00-02:29 on
    # 2026-10-04 does not exist; the gap ends at 02:30 LHDT (2026-10-03T15:30Z).
    ("0 2 * * *", "Australia/Lord_Howe", "2026-10-03T12:00:00", "2026-10-03T15:30:00"),
    ("15 2 * * *", "Australia/Lord_Howe", "2026-10-03T12:00:00", "2026-10-03T15:30:00"),
    ("30 2 * * *", "Australia/Lord_Howe", "2026-10-03T12:00:00", "2026-10-03T15:30:00"),
    ("15 2 * * *", "Australia/Lord_Howe", "2026-10-03T15:30:00", "2026-10-04T15:15:00"),
]


@pytest.mark.parametrize(("expression", "tz", "after", "expected"), TIME_ZONES + DST)
def test_next_fire_in_time_zone(expression: str, tz: str, after: str, expected: str) -> None:
    assert next_fire(expression, after=z(after), tz=tz) == z(expected)


def test_after_may_be_in_any_zone() -> None:
    tokyo = datetime(2026, 1, 1, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo"))  # 00:00Z
    assert next_fire("0 0 * * *", after=tokyo) == z("2026-01-02T00:00:00")
    assert next_fire("0 0 * * *", after=tokyo - timedelta(microseconds=1)) == tokyo


FIRES_BETWEEN = [
    # (expression, tz, after, until, number of slots, first, last)
    ("*/1 * * * * *", "UTC", "2026-01-01T10:00:00", "2026-01-01T10:10:00", 600,
     "2026-01-01T10:00:01", "2026-01-01T10:10:00"),
    ("* * * * *", "UTC", "2026-01-01T10:00:00", "2026-01-01T11:00:00", 60,
     "2026-01-01T10:01:00", "2026-01-01T11:00:00"),
    ("@every 30s", "UTC", "2026-01-01T10:00:00", "2026-01-01T10:10:00", 20,
     "2026-01-01T10:00:30", "2026-01-01T10:10:00"),
    ("@every 500ms", "UTC", "2026-01-01T10:00:00.1", "2026-01-01T10:00:10", 20,
     "2026-01-01T10:00:00.5", "2026-01-01T10:00:10"),
    # Spring forward: no instant is missing, so every second still fires.
    ("*/1 * * * * *", "Europe/Berlin", "2026-03-29T00:30:00", "2026-03-29T01:30:00", 3600,
     "2026-03-29T00:30:01", "2026-03-29T01:30:00"),
    # Fall back: two hours of instants, but the repeated hour fires once.
    ("*/1 * * * * *", "Europe/Berlin", "2026-10-25T00:30:00", "2026-10-25T02:30:00", 3600,
     "2026-10-25T00:30:01", "2026-10-25T02:30:00"),
    ("*/1 * * * * *", "America/New_York", "2026-11-01T05:30:00", "2026-11-01T07:30:00", 3600,
     "2026-11-01T05:30:01", "2026-11-01T07:30:00"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("expression", "tz", "after", "until", "count", "first", "last"), FIRES_BETWEEN
)
def test_fires_between_counts(
    expression: str, tz: str, after: str, until: str, count: int, first: str, last: str
) -> None:
    slots = parse_cron(expression, tz).fires_between(z(after), z(until), limit=100_000)
    assert len(slots) == count
    assert (slots[0], slots[-1]) == (z(first), z(last))
    assert slots == sorted(set(slots))


@pytest.mark.parametrize(
    ("tz", "after", "until", "expected"),
    [
        # Fall back: 02:00 CEST fires, 02:00 CET (its repetition) does not.
        ("Europe/Berlin", "2026-10-24T22:00:00", "2026-10-25T03:00:00",
         ["2026-10-24T23:00:00", "2026-10-25T00:00:00", "2026-10-25T02:00:00",
          "2026-10-25T03:00:00"]),
        # Spring forward: 02:00 never exists; 03:00 CEST is the next hour.
        ("Europe/Berlin", "2026-03-28T22:00:00", "2026-03-29T03:00:00",
         ["2026-03-28T23:00:00", "2026-03-29T00:00:00", "2026-03-29T01:00:00",
          "2026-03-29T02:00:00", "2026-03-29T03:00:00"]),
        ("America/New_York", "2026-11-01T04:00:00", "2026-11-01T08:00:00",
         ["2026-11-01T05:00:00", "2026-11-01T07:00:00", "2026-11-01T08:00:00"]),
    ],
)  # fmt: skip
def test_fires_between_hourly_across_dst(
    tz: str, after: str, until: str, expected: list[str]
) -> None:
    slots = parse_cron("0 * * * *", tz).fires_between(z(after), z(until), limit=100)
    assert slots == [z(text) for text in expected]


GAPS = [
    # (expression, tz, after, until, slots): every slot of a gap fires at its end, once.
    # Berlin 2026-03-29: 02:05 CET does not exist; 03:00 CEST is 01:00Z.
    ("5 * * * *", "Europe/Berlin", "2026-03-28T23:00:00", "2026-03-29T03:00:00",
     ["2026-03-28T23:05:00", "2026-03-29T00:05:00", "2026-03-29T01:00:00",
      "2026-03-29T01:05:00", "2026-03-29T02:05:00"]),
    # Three slots in one gap: one fire.
    ("*/20 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00", "2026-03-30T12:00:00",
     ["2026-03-29T01:00:00", "2026-03-30T00:00:00", "2026-03-30T00:20:00",
      "2026-03-30T00:40:00"]),
    # Slots in the gap and one at its end (03:00 CEST): one fire.
    ("*/30 * * * *", "Europe/Berlin", "2026-03-29T00:00:00", "2026-03-29T02:00:00",
     ["2026-03-29T00:30:00", "2026-03-29T01:00:00", "2026-03-29T01:30:00",
      "2026-03-29T02:00:00"]),
    ("*/10 * * * * *", "Europe/Berlin", "2026-03-29T00:59:30", "2026-03-29T01:00:30",
     ["2026-03-29T00:59:40", "2026-03-29T00:59:50", "2026-03-29T01:00:00",
      "2026-03-29T01:00:10", "2026-03-29T01:00:20", "2026-03-29T01:00:30"]),
    ("*/15 2 * * *", "America/New_York", "2026-03-08T00:00:00", "2026-03-09T08:00:00",
     ["2026-03-08T07:00:00", "2026-03-09T06:00:00", "2026-03-09T06:15:00",
      "2026-03-09T06:30:00", "2026-03-09T06:45:00"]),
    # Lord Howe: a 30-minute gap, 02:00-02:29, ending at 02:30 LHDT (15:30Z).
    ("*/10 * * * *", "Australia/Lord_Howe", "2026-10-03T15:00:00", "2026-10-03T16:00:00",
     ["2026-10-03T15:10:00", "2026-10-03T15:20:00", "2026-10-03T15:30:00",
      "2026-10-03T15:40:00", "2026-10-03T15:50:00", "2026-10-03T16:00:00"]),
]  # fmt: skip


@pytest.mark.parametrize(("expression", "tz", "after", "until", "expected"), GAPS)
def test_the_slots_of_a_spring_forward_gap_fire_once_at_its_end(
    expression: str, tz: str, after: str, until: str, expected: list[str]
) -> None:
    spec = parse_cron(expression, tz)
    slots = spec.fires_between(z(after), z(until), limit=1000)
    assert slots == [z(text) for text in expected]
    chained = [spec.next_fire(z(after))]
    while chained[-1] < slots[-1]:
        chained.append(spec.next_fire(chained[-1]))
    assert chained == slots
    # Whatever instant the search starts from, the gap's slot is the same one.
    for start in (z(after) + timedelta(seconds=s) for s in range(0, 3600, 97)):
        assert spec.fires_between(start, z(until), 1000) == [t for t in slots if t > start]


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
def test_a_daily_schedule_fires_once_every_day_of_2027(tz: str) -> None:
    zone = ZoneInfo(tz)
    spec = parse_cron("30 2 * * *", tz)
    start = datetime(2027, 1, 1, tzinfo=zone)
    slots = spec.fires_between(start, datetime(2028, 1, 1, tzinfo=zone), limit=1000)
    # Brute force: a day's slot is the first minute at which its wall clock
    # shows 02:30 or later (the gap's end where 02:30 is skipped, the first
    # 02:30 where it is repeated).
    expected = []
    for day in range(365):
        date = start.date() + timedelta(days=day)
        moment = datetime(date.year, date.month, date.day, tzinfo=zone).astimezone(UTC)
        while moment.astimezone(zone).time() < time(2, 30):
            moment += timedelta(minutes=1)
        expected.append(moment)
    assert slots == expected
    assert len({slot.astimezone(zone).date() for slot in slots}) == 365


def test_fires_between_limits_and_empty_windows() -> None:
    spec = parse_cron("*/1 * * * * *")
    start = z("2026-01-01T10:00:00")
    assert spec.fires_between(start, start + timedelta(minutes=10), limit=3) == [
        z("2026-01-01T10:00:01"),
        z("2026-01-01T10:00:02"),
        z("2026-01-01T10:00:03"),
    ]
    assert parse_cron("@every 1s").fires_between(start, start + timedelta(hours=1), 2) == [
        z("2026-01-01T10:00:01"),
        z("2026-01-01T10:00:02"),
    ]
    assert spec.fires_between(start, start + timedelta(hours=1), limit=0) == []
    assert spec.fires_between(start, start, limit=10) == []
    assert spec.fires_between(start, start - timedelta(hours=1), limit=10) == []
    assert parse_cron("@every 1h").fires_between(start, start + timedelta(minutes=59), 5) == []
    with pytest.raises(InvalidOption) as info:
        spec.fires_between(start, start + timedelta(hours=1), limit=-1)
    assert info.value.field == "limit"


def test_every_slots_are_a_pure_function_of_time() -> None:
    spec = parse_cron("@every 7m")
    # Wherever the search starts, the slots found in a window are the same ones.
    slots = spec.fires_between(z("2026-01-01T00:00:00"), z("2026-01-01T02:00:00"), 100)
    later = spec.fires_between(z("2026-01-01T00:33:20"), z("2026-01-01T02:00:00"), 100)
    assert later == [slot for slot in slots if slot > z("2026-01-01T00:33:20")]
    assert all(int(slot.timestamp()) % 420 == 0 for slot in slots)


def test_next_fire_ts_uses_epoch_seconds() -> None:
    start = z("2026-01-01T00:00:00").timestamp()
    assert start == 1767225600.0
    assert next_fire_ts(parse_cron("0 0 * * *"), start) == 1767225600.0 + 86400
    assert next_fire_ts(parse_cron("@every 500ms"), start + 0.2) == start + 0.5
    assert next_fire_ts(parse_cron("*/30 * * * * *"), start + 29.5) == start + 30


def test_spec_fields() -> None:
    assert parse_cron("*/5 * * * *") == CronSpec("*/5 * * * *", "UTC", False, None)
    assert parse_cron("*/30 * * * * *", "Europe/Berlin") == CronSpec(
        "*/30 * * * * *", "Europe/Berlin", True, None
    )
    assert parse_cron("@every 1h30m").every == 5400.0
    assert parse_cron("@every 500ms").every == 0.5
    assert parse_cron("@daily").every is None
    assert parse_cron("  0  0 * * *  ").expression == "  0  0 * * *  "  # kept as given
    spec = parse_cron("@hourly")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.tz = "Europe/Berlin"  # type: ignore[misc]


def test_naive_datetimes_are_refused() -> None:
    spec = parse_cron("* * * * *")
    with pytest.raises(InvalidOption) as info:
        spec.next_fire(datetime(2026, 1, 1))
    assert info.value.field == "after"
    with pytest.raises(InvalidOption) as info:
        spec.fires_between(z("2026-01-01T00:00:00"), datetime(2026, 1, 2), 10)
    assert info.value.field == "until"


def test_dst_windows_are_jumped_not_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-second schedule must not step through an hour of missing or
    repeated wall times one candidate at a time (3600 croniter steps)."""
    steps = 0

    class Counting(taskrt.schedule.croniter):  # type: ignore[misc,name-defined]
        def get_next(self, *args: object, **kwargs: object) -> object:
            nonlocal steps
            steps += 1
            return super().get_next(*args, **kwargs)

    monkeypatch.setattr(taskrt.schedule, "croniter", Counting)
    spec = parse_cron("* * * * * *", "Europe/Berlin")
    # Spring forward: wall 02:00:00-02:59:59 does not exist.
    assert spec.next_fire(z("2026-03-29T00:59:59")) == z("2026-03-29T01:00:00")
    # Fall back: from inside the repeated hour's second pass.
    assert spec.next_fire(z("2026-10-25T01:00:01")) == z("2026-10-25T02:00:00")
    assert steps <= 4


# -- errors ----------------------------------------------------------------------

BAD = [
    # (expression, field, words the message must contain)
    ("61 * * * *", "minute", ["minute", "'61'", "out of range", "0-59"]),
    ("* 24 * * *", "hour", ["hour", "0-23"]),
    ("* * 32 * *", "day of month", ["day of month", "1-31"]),
    ("* * 0 * *", "day of month", ["day of month", "1-31"]),
    ("* * * 13 *", "month", ["month", "out of range", "1-12"]),
    ("* * * 0 *", "month", ["month", "1-12"]),
    ("* * * foo *", "month", ["month", "'foo'", "jan-dec"]),
    ("* * * * 8", "day of week", ["day of week", "0-7"]),
    ("* * * * funday", "day of week", ["day of week", "sun-sat"]),
    ("* * * * 1#6", "day of week", ["day of week", "1-5"]),
    ("* * * * 1,2#3", "day of week", ["day of week"]),
    ("60 * * * * *", "second", ["second", "out of range", "0-59"]),
    ("*/0 * * * * *", "second", ["second", "step"]),
    ("* 60 * * * *", "minute", ["minute", "0-59"]),
    ("* * * * * 9", "day of week", ["day of week"]),
    ("*/90 * * * *", "minute", ["step", "1-60"]),
    ("5/ * * * *", "minute", ["step"]),
    ("1,,2 * * * *", "minute", ["empty"]),
    ("? * * * *", "minute", ["minute"]),
    ("5-2-1 * * * *", "minute", ["minute"]),
    ("H * * * *", "minute", ["H, R"]),
    ("R * * * *", "minute", ["H, R"]),
    ("* * * *", "expression", ["5 fields", "found 4"]),
    ("* * * * * * *", "expression", ["6 with seconds first", "found 7"]),
    ("", "expression", ["empty"]),
    ("   ", "expression", ["empty"]),
    ("@fortnightly", "expression", ["@fortnightly", "@daily"]),
    ("@every", "expression", ["duration"]),
    ("@everyday", "expression", ["@everyday"]),
    ("@every soon", "expression", ["duration"]),
    ("@every 0s", "expression", ["positive"]),
    ("@every 0.000001s", "expression", ["at least 10 ms", "'0.000001s'"]),
    ("@every 9ms", "expression", ["at least 10 ms"]),
    ("0 0 30 2 *", "day of month", ["'30'", "'2'", "never"]),
    ("0 0 31 4,6 *", "day of month", ["never"]),
    ("0 0 31 4 ?", "day of month", ["never"]),
    # L, W and # where croniter refuses them: why, not only what the field takes.
    ("0 0 1W,15 * *", "day of month", ["'1W,15'", "nW", "stands alone"]),
    ("0 0 15W-20 * *", "day of month", ["stands alone"]),
    ("0 0 1W/2 * *", "day of month", ["stands alone"]),
    ("0 0 LW * *", "day of month", ["LW", "not supported"]),
    ("0 0 L-2 * *", "day of month", ["cannot start a range"]),
    ("0 0 * * 5#3,1", "day of week", ["cannot share a list with plain days"]),
    ("0 0 * * L5,1", "day of week", ["cannot share a list with plain days"]),
    ("0 0 * * 1-5#3", "day of week", ["'1-5#3'", "no range or step"]),
    ("0 0 * * 5#6", "day of week", ["'5#6'", "1-5"]),
    ("0 0 * * 5L", "day of week", ["'5L'", "written L5"]),
    ("0 0 * * Lfri", "day of week", ["'Lfri'", "day number 0-7"]),
]


@pytest.mark.parametrize(("expression", "field", "words"), BAD)
def test_bad_expression_names_the_field(expression: str, field: str, words: list[str]) -> None:
    with pytest.raises(CronError) as info:
        parse_cron(expression)
    error = info.value
    assert error.field == field
    assert error.expression == expression
    for word in words:
        assert word in str(error)
    with pytest.raises(CronError):
        validate_cron(expression)
    with pytest.raises(CronError):
        next_fire(expression, after=z("2026-01-01T00:00:00"))


@pytest.mark.parametrize("tz", ["Mars/Olympus", "Europe", "", "../etc/passwd", "utc"])
def test_unknown_time_zone(tz: str) -> None:
    with pytest.raises(CronError) as info:
        parse_cron("* * * * *", tz)
    assert info.value.field == "timezone"
    assert repr(tz) in str(info.value)
    assert "IANA" in str(info.value)


@pytest.mark.parametrize(
    "tz",
    [
        "localtime",
        "Factory",
        "posixrules",
        "posix/Europe/Berlin",
        "right/Europe/Berlin",
        "right/UTC",
    ],
)
def test_time_zone_names_that_depend_on_the_host_are_refused(tz: str) -> None:
    # localtime is whatever /etc/localtime is, right/ counts leap seconds, and
    # some hosts have none of these: on another host the schedule would fire at
    # other instants, or not load.
    with pytest.raises(CronError) as info:
        parse_cron("* * * * *", tz)
    assert info.value.field == "timezone"
    assert f"{tz!r} depends on the host" in str(info.value)
    assert "expected an IANA name like 'Europe/Berlin'" in str(info.value)


@pytest.mark.parametrize(
    "tz", ["UTC", "Etc/UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "EST5EDT"]
)
def test_iana_time_zone_names_are_accepted(tz: str) -> None:
    assert parse_cron("0 0 * * *", tz).tz == tz


def test_cron_error_is_a_taskrt_value_error_with_data() -> None:
    with pytest.raises(CronError) as info:
        validate_cron("61 * * * *")
    error = info.value
    assert isinstance(error, TaskrtError)
    assert isinstance(error, ValueError)
    assert (error.code, status_of(error)) == ("invalid_cron", 422)
    assert error.to_dict() == {
        "code": "invalid_cron",
        "message": str(error),
        "expression": "61 * * * *",
        "field": "minute",
    }


@pytest.mark.parametrize(
    "expression",
    [
        "0 0 15W * *",
        "0 0 * * L5",
        "0 0 * * sun#1",
        "0 0 * JAN-MAR *",
        "0 0 1-10/2 * *",
        "0 9-17/2 * * 1-5",
        "59 59 23 31 12 *",
        "0 0 29 2 *",
        "@every 1h30m",
        "@YEARLY",
    ],
)
def test_valid_expressions(expression: str) -> None:
    validate_cron(expression, "Europe/Berlin")


# -- against a brute-force oracle ------------------------------------------------

ORACLE_EXPRESSIONS = [
    ("*/15 * * * *", range(0, 60, 15), range(24)),
    ("30 2 * * *", [30], [2]),
    ("0 * * * *", [0], range(24)),
    ("45 1 * * *", [45], [1]),
    ("0,30 2,3 * * *", [0, 30], [2, 3]),
    ("*/20 1-3 * * *", [0, 20, 40], [1, 2, 3]),
]
ORACLE_ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "Australia/Sydney",
    "Asia/Kolkata",
    "UTC",
]
TRANSITIONS_2026 = [
    z(text)
    for text in (
        "2026-03-29T01:00:00",  # Europe
        "2026-10-25T01:00:00",
        "2026-03-08T07:00:00",  # US
        "2026-11-01T06:00:00",
        "2026-04-04T15:00:00",  # Lord Howe
        "2026-10-03T15:30:00",
        "2026-04-04T16:00:00",  # Sydney
        "2026-10-03T16:00:00",
    )
]


def oracle_next(minutes: set[int], hours: set[int], zone: ZoneInfo, after: datetime) -> datetime:
    """Walk UTC minutes; fire where the local wall matches, on its first occurrence,
    or where the clocks have just jumped over a wall time that matches."""

    def matches(wall: datetime) -> bool:
        return wall.minute in minutes and wall.hour in hours

    moment = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while True:
        local = moment.astimezone(zone)
        wall = local.replace(tzinfo=None)
        if local.fold == 0 and matches(wall):
            return moment
        skipped = (moment - timedelta(minutes=1)).astimezone(zone).replace(tzinfo=None)
        while (skipped := skipped + timedelta(minutes=1)) < wall:
            if matches(skipped):
                return moment
        moment += timedelta(minutes=1)


@settings(max_examples=300, deadline=None, database=None)
@given(
    case=st.sampled_from(ORACLE_EXPRESSIONS),
    tz=st.sampled_from(ORACLE_ZONES),
    anchor=st.sampled_from(TRANSITIONS_2026),
    shift=st.integers(min_value=-36 * 3600 * 10**6, max_value=36 * 3600 * 10**6),
)
def test_next_fire_matches_brute_force(
    case: tuple[str, range | list[int], range | list[int]],
    tz: str,
    anchor: datetime,
    shift: int,
) -> None:
    expression, minutes, hours = case
    after = anchor + timedelta(microseconds=shift)
    spec = parse_cron(expression, tz)
    expected = oracle_next(set(minutes), set(hours), ZoneInfo(tz), after)
    assert spec.next_fire(after) == expected
    # fires_between agrees with chained next_fire calls.
    chained = [expected]
    while len(chained) < 5:
        chained.append(spec.next_fire(chained[-1]))
    assert spec.fires_between(after, chained[-1], limit=100) == chained


# -- architecture ----------------------------------------------------------------


def test_only_the_schedule_module_imports_croniter() -> None:
    package = Path(taskrt.schedule.__file__).parent
    importers = sorted(
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if re.search(r"^\s*(import|from)\s+croniter\b", path.read_text(), re.MULTILINE)
    )
    assert importers == ["schedule.py"]


def test_a_nearest_weekday_past_the_months_end_is_the_nearest_to_its_last_day() -> None:
    """ "31W 6" was refused as never occurring in June, while "31W *" fired on June 30:
    both fire on the weekday nearest June's last day."""
    for expression in ("0 0 31W 6 *", "0 0 31W * *"):
        first = next_fire(expression, after=z("2025-06-01T00:00:00"))
        assert first == z("2025-06-30T00:00:00"), expression
    # June 30 2029 is a Saturday: the Friday before.
    assert next_fire("0 0 31W 6 *", after=z("2029-01-01T00:00:00")) == z("2029-06-29T00:00:00")


# -- both day fields restricted: either matches (notes 4 and 5) --------------------

# 2024 is a leap year; 2024-01-01 is a Monday. Third Fridays: Jan 19, Feb 16,
# Mar 15, Apr 19. Last Fridays: Jan 26, Feb 23, Mar 29. Last days: Jan 31
# (Wed), Feb 29 (Thu), Mar 31 (Sun). Day 15: Jan Mon, Feb Thu, Mar Fri, Apr Mon.
EITHER_DAY = [
    # six fields, seconds first: the 15th or the third Friday (Mar 15 is both: once)
    ("0 0 0 15 * 5#3", ["01-15", "01-19", "02-15", "02-16", "03-15", "04-15", "04-19"]),
    # the weekday nearest the 15th (Feb 15, a Thursday) or a Monday (Jan 15 is both)
    ("0 0 15W * 1", ["01-08", "01-15", "01-22", "01-29", "02-05", "02-12", "02-15", "02-19"]),
    ("0 0 L * L5", ["01-26", "01-31", "02-23", "02-29", "03-29", "03-31"]),
    # croniter found no date at all for these three
    ("0 0 1 * 5#3", ["01-19", "02-01", "02-16", "03-01", "03-15", "04-01"]),
    ("0 0 15 * L5", ["01-15", "01-26", "02-15", "02-23", "03-15", "03-29"]),
    ("0 0 L * 5#3", ["01-19", "01-31", "02-16", "02-29", "03-15", "03-31"]),
    # a plain pair, which croniter always got right: the 13th or a Friday
    ("0 0 13 * 5", ["01-05", "01-12", "01-13", "01-19", "01-26", "02-02"]),
    # no February 30th: only the third Fridays of February fire
    ("0 0 30 2 5#3", ["02-16", "2025-02-21", "2026-02-20"]),
]


@pytest.mark.parametrize(("expression", "days"), EITHER_DAY)
def test_either_day_field_matches_with_special_forms(expression: str, days: list[str]) -> None:
    validate_cron(expression)
    expected = [z(day if len(day) > 5 else f"2024-{day}") for day in days]
    after = z("2024-01-01T00:00:00")
    spec = parse_cron(expression)
    assert spec.fires_between(after, expected[-1], limit=100) == expected
    chained = [after]
    for _ in expected:
        chained.append(spec.next_fire(chained[-1]))
    assert chained[1:] == expected


def test_either_day_field_in_a_time_zone_across_dst() -> None:
    """The last Sunday of March 2024 is also its last day, and 02:30 does not
    exist in Berlin that day: the two halves' slot fires once, at 03:00 CEST."""
    spec = parse_cron("30 2 L * L0", "Europe/Berlin")
    assert spec.fires_between(z("2024-03-01T00:00:00"), z("2024-04-30T23:59:59"), 100) == [
        z("2024-03-31T01:00:00"),  # the gap's end, once
        z("2024-04-28T00:30:00"),  # last Sunday, CEST
        z("2024-04-30T00:30:00"),  # last day
    ]
