"""Cron maths as pure functions of time; the only module that imports croniter.

Nothing here reads the clock: every function takes the instant it reasons from
(``after``) and returns aware UTC datetimes. Time zone rules come from
``zoneinfo``. Errors are ``CronError`` with the offending ``.field``.

Design notes (cited where they apply, pinned by tests/test_schedule.py):

1. Six fields put SECONDS FIRST, as in Anchor and SAQ:
   ``second minute hour day-of-month month day-of-week``. ``"*/30 * * * * *"``
   fires every 30 s, ``"0 0 2 * * *"`` daily at 02:00:00. croniter's own
   six-field form puts seconds last, so we pass ``second_at_beginning=True``.
2. Cron fields are wall-clock times in the schedule's zone. Across DST we
   do what cron (cronie, Vixie cron) does for a job at a fixed time. A wall
   time that does not exist (the spring-forward gap) fires ONCE, at the first
   instant after the gap: ``30 2 * * *`` in Europe/Berlin fires at 03:00 CEST
   on the day the clocks skip 02:00-02:59. All the slots of one gap, and a
   slot at the gap's end, are that one instant, so they fire once, as one
   slot. A wall time that happens twice (fall-back) fires ONCE, at its first
   occurrence; during the repeated hour's second pass nothing fires. croniter
   fires a repeated wall time twice, so we run it on naive wall times and map
   each wall time to an instant ourselves.
3. ``"@every 30s"`` slots are multiples of the interval counted from
   1970-01-01T00:00Z, whatever the zone: a pure function of time, so a
   restart never shifts them. Arithmetic is in integer microseconds; the
   interval is at least ``MIN_EVERY`` (10 ms).
4. When day-of-month and day-of-week are both restricted, either one matches
   (classic cron). Hashed and random values (``H``, ``R``) are refused: they
   would make a schedule depend on something other than time.
5. croniter ORs the two day fields only when both are plain lists: with
   ``L``, ``nW``, ``d#n`` or ``Ld`` in one of them it ANDs them, or finds no
   date at all (``"0 0 1 * 5#3"``). So when both are restricted we split the
   expression in two, one with day-of-week ``*`` and one with day-of-month
   ``*``, each an AND croniter gets right, and merge their slots in time
   order. "Restricted" is croniter's own test (the field does not expand to
   ``*``), so plain pairs keep the slots they always had. A side that never
   fires (``"0 0 30 2 mon"``: no February 30th) adds nothing; the other still
   fires.
"""

from __future__ import annotations

import functools
import math
import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from .errors import InvalidOption, TaskrtError
from .retry import parse_duration

__all__ = [
    "CronError",
    "CronSpec",
    "next_fire",
    "next_fire_ts",
    "parse_cron",
    "validate_cron",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
    "@minutely": "* * * * *",
}

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_SYNTAX = "*, lists a,b, ranges a-b and steps */n"

# croniter splits fields on ASCII whitespace only; so do we.
_TOKENS = re.compile(r"\S+", re.ASCII)
_WORDS = re.compile(r"[a-z]+", re.ASCII)
_NUMBERS = re.compile(r"\d+", re.ASCII)
_NTH = re.compile(r"#\d+$", re.ASCII)


class CronError(TaskrtError, ValueError):
    """A cron expression or its time zone is not valid.

    ``field`` is ``"second"``, ``"minute"``, ``"hour"``, ``"day of month"``,
    ``"month"``, ``"day of week"``, ``"expression"`` (the whole of it) or
    ``"timezone"``.
    """

    code = "invalid_cron"

    def __init__(self, expression: str, field: str, message: str) -> None:
        self.expression = expression
        self.field = field
        super().__init__(f"cron expression {expression!r}: {message}")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "expression": self.expression, "field": self.field}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    words: tuple[str, ...]  # names and letters the field accepts besides numbers
    expected: str

    def describe(self) -> str:
        return f"expected {self.expected}, with {_SYNTAX}"


_SECOND = _Field("second", 0, 59, (), "0-59")
_FIVE = (
    _Field("minute", 0, 59, (), "0-59"),
    _Field("hour", 0, 23, (), "0-23"),
    _Field("day of month", 1, 31, ("l", "w"), "1-31, L (last day) or nW (nearest weekday)"),
    _Field("month", 1, 12, _MONTHS, "1-12 or jan-dec"),
    _Field(
        "day of week",
        0,
        7,
        (*_DAYS, "l"),
        "0-7 (0 and 7 are Sunday), sun-sat, d#n (n 1-5) or Ld (last d of the month)",
    ),
)
_SIX = (_SECOND, *_FIVE)


@dataclass(frozen=True, slots=True)
class CronSpec:
    """A parsed, validated schedule. Build one with ``parse_cron``.

    ``seconds`` is true for six fields (seconds first, note 1); ``every`` is
    the interval in seconds of an ``"@every ..."`` schedule, else ``None``.
    Both methods take aware datetimes in any zone and return UTC ones.
    """

    expression: str
    tz: str = "UTC"
    seconds: bool = False
    every: float | None = None

    def next_fire(self, after: datetime) -> datetime:
        """The first slot strictly after ``after`` (aware, any zone), in UTC."""
        start = _as_utc(after, "after")
        if self.every is not None:
            return _every_slots(self.every, start)[0]
        return next(_cron_slots(self, start))

    def fires_between(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """The slots in ``(after, until]``, oldest first, at most ``limit`` of them."""
        start = _as_utc(after, "after")
        end = _as_utc(until, "until")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidOption("limit", f"expected a whole number >= 0, found {limit!r}")
        if limit == 0 or end <= start:
            return []
        if self.every is not None:
            first, step = _every_slots(self.every, start)
            count = min(limit, (end - first) // step + 1)
            return [first + i * step for i in range(max(count, 0))]
        slots: list[datetime] = []
        for slot in _cron_slots(self, start):
            if slot > end:
                break
            slots.append(slot)
            if len(slots) == limit:
                break
        return slots


def parse_cron(expression: str, tz: str = "UTC") -> CronSpec:
    """Validate ``expression`` and ``tz``; raise ``CronError`` naming the bad field."""
    if not isinstance(expression, str):
        raise CronError(
            repr(expression), "expression", f"expected a string, found {type(expression).__name__}"
        )
    _zone(expression, tz)
    text = expression.strip().lower()
    if not text:
        raise CronError(expression, "expression", f"is empty; {_FIELD_COUNT}")
    head, _, rest = text.partition(" ")
    if head == "@every":
        return CronSpec(expression, tz, False, _parse_every(expression, rest))
    if text.startswith("@"):
        if text not in _ALIASES:
            names = ", ".join(_ALIASES)
            raise CronError(
                expression,
                "expression",
                f"unknown alias {text!r}: expected one of {names} or '@every <duration>'",
            )
        return CronSpec(expression, tz, False, None)
    tokens = _TOKENS.findall(expression)
    fields: tuple[_Field, ...]
    if len(tokens) == 5:
        fields = _FIVE
    elif len(tokens) == 6:
        fields = _SIX
    else:
        raise CronError(expression, "expression", f"{_FIELD_COUNT}, found {len(tokens)}")
    for position, (field, token) in enumerate(zip(fields, tokens, strict=True)):
        _check_field(expression, field, token, position, len(tokens))
    # A day of month that no month of the month field has never fires, unless the
    # day of week is restricted too: then either matches (note 4), and
    # "0 0 30 2 mon" fires on February's Mondays.
    # An nW past a month's last day is the weekday nearest that last day, in every
    # month: "31W 6" fires on June 30 as "31W *" does (it was refused as never).
    strict = tokens[-1] in ("*", "?") and "w" not in tokens[-3].lower()
    try:
        croniter.expand(text, second_at_beginning=len(tokens) == 6, strict=strict)
    except CroniterError as exc:
        # Each field is valid on its own (checked above); what is left is how
        # they combine: a day of month that no month of the month field has.
        if "never occur" not in str(exc):  # no other case is known; keep croniter's words
            raise CronError(expression, "expression", str(exc)) from exc
        dom, month = tokens[-3], tokens[-2]
        raise CronError(
            expression,
            "day of month",
            f"day of month field {dom!r} never occurs in month field {month!r}; "
            "expected a day that exists in at least one of those months",
        ) from exc
    return CronSpec(expression, tz, len(tokens) == 6, None)


def validate_cron(expression: str, tz: str = "UTC") -> None:
    """Raise ``CronError`` unless ``expression`` and ``tz`` make a valid schedule."""
    parse_cron(expression, tz)


def next_fire(expression: str, *, after: datetime, tz: str = "UTC") -> datetime:
    """The first slot of ``expression`` strictly after ``after``, as an aware UTC datetime."""
    return parse_cron(expression, tz).next_fire(after)


def next_fire_ts(spec: CronSpec, after_ts: float) -> float:
    """``spec.next_fire`` on epoch seconds (microsecond resolution)."""
    return spec.next_fire(datetime.fromtimestamp(after_ts, UTC)).timestamp()


# -- parsing -------------------------------------------------------------------

_FIELD_COUNT = (
    "expected 5 fields (minute hour day-of-month month day-of-week), "
    "6 with seconds first (second minute hour day-of-month month day-of-week), "
    "an alias like @daily or '@every <duration>'"
)


MIN_EVERY = 0.01
"""The shortest ``@every`` interval, in seconds (10 ms)."""


def _parse_every(expression: str, rest: str) -> float:
    text = rest.strip()
    if not text:
        raise CronError(expression, "expression", "@every needs a duration, e.g. '@every 30s'")
    try:
        seconds = parse_duration(text, field="@every")
    except InvalidOption as exc:
        raise CronError(expression, "expression", str(exc)) from exc
    if round(seconds * 1_000_000) < 1:
        raise CronError(
            expression, "expression", f"@every needs a positive duration, found {text!r}"
        )
    if seconds < MIN_EVERY:
        # A job a slot: a microsecond's interval would add a million jobs a second.
        raise CronError(
            expression,
            "expression",
            f"@every needs a duration of at least {MIN_EVERY * 1000:g} ms, found {text!r}",
        )
    return seconds


def _check_field(expression: str, field: _Field, token: str, position: int, count: int) -> None:
    """Refuse a bad field with a message naming it and its range.

    Values, names and steps are checked here; croniter then judges the shape
    of the field alone (the other fields set to ``*``).
    """

    def bad(detail: str) -> CronError:
        return CronError(expression, field.name, f"{field.name} field {token!r}: {detail}")

    special = _special_form(field, token.split(","))
    if special is not None:
        raise bad(special)
    for part in token.lower().split(","):
        if not part:
            raise bad(f"empty list item; {field.describe()}")
        base, slash, step = part.partition("/")
        if slash:
            span = field.high - field.low + 1
            if not step.isascii() or not step.isdigit() or not 1 <= int(step) <= span:
                raise bad(f"step {step!r} must be a whole number 1-{span}")
        if field.name == "day of week":
            base = _NTH.sub("", base)  # "5#3": the 3rd Friday; croniter checks n
        for word in _WORDS.findall(base):
            if word in ("h", "r"):
                raise bad("hashed and random values (H, R) are not supported (design note 4)")
            if word not in field.words:
                raise bad(f"unknown name {word!r}; {field.describe()}")
        for number in _NUMBERS.findall(base):
            if not field.low <= int(number) <= field.high:
                raise bad(f"{number} is out of range; {field.describe()}")
    fields = ["*"] * count
    fields[position] = token
    try:
        croniter.expand(" ".join(fields).lower(), second_at_beginning=count == 6)
    except CroniterError as exc:
        raise bad(field.describe()) from exc


_NEAREST = re.compile(r"\d+w", re.ASCII)
_NTH_DAY = re.compile(r"[a-z0-9]+#\d+", re.ASCII)
_LAST_DAY = re.compile(r"l[0-7]", re.ASCII)


def _special_form(field: _Field, given: list[str]) -> str | None:
    """What is wrong with a use of L, W or # that croniter refuses, said plainly
    (its refusal alone would only repeat what the field expects)."""
    parts = [(raw, raw.lower()) for raw in given]
    if field.name == "day of month":
        for _, part in parts:
            if part == "lw":
                return "LW (the last weekday) is not supported; use L (the last day) or nW"
            if "w" in part and (len(parts) > 1 or _NEAREST.fullmatch(part) is None):
                return "nW (the weekday nearest day n) stands alone: no list, range or step"
            if part.startswith("l") and part != "l":
                return "L (the last day) cannot start a range or take a step"
    elif field.name == "day of week":
        nth = [(raw, part) for raw, part in parts if "#" in part or part.startswith("l")]
        for raw, part in nth:
            if "#" in part:
                if _NTH_DAY.fullmatch(part) is None:
                    return f"{raw!r}: d#n (the nth d of the month) takes no range or step"
                if not 1 <= int(part.rpartition("#")[2]) <= 5:
                    return f"{raw!r}: n in d#n must be 1-5"
            elif _LAST_DAY.fullmatch(part) is None:
                return f"{raw!r}: Ld (the last d of the month) takes a day number 0-7, as L5"
        for raw, part in parts:
            if part.endswith("l") and part[:-1].isdigit():
                return f"{raw!r}: the last d of the month is written L{part[:-1]}, not dL"
        if nth and len(nth) < len(parts):
            return "d#n and Ld cannot share a list with plain days; use two schedules"
    return None


def _zone(expression: str, tz: str) -> tzinfo:
    """The zone named ``tz``: "UTC", or an IANA name that means the same on every host."""
    if tz == "UTC":  # no tz database needed for the default
        return UTC
    if isinstance(tz, str) and tz in _iana_zones():
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    host = isinstance(tz, str) and (tz in _HOST_NAMES or tz.startswith(_HOST_TREES))
    problem = "depends on the host" if host else "is unknown"
    raise CronError(
        expression,
        "timezone",
        f"time zone {tz!r} {problem}: expected an IANA name like 'Europe/Berlin' or 'UTC'",
    )


# Names a host's tz database may hold that are not IANA zones: "localtime" is
# whatever /etc/localtime is, "Factory" a placeholder, "posixrules" the rules
# for POSIX TZ strings, and the posix/ and right/ trees are copies of the
# database (right/ counts leap seconds) that only some installs have. A
# schedule must mean the same on every host that fires it.
_HOST_NAMES = frozenset({"localtime", "Factory", "posixrules"})
_HOST_TREES = ("posix/", "right/")


@functools.cache
def _iana_zones() -> frozenset[str]:
    """The IANA zone names a schedule accepts (read once: it walks the tz database)."""
    return frozenset(
        name
        for name in zoneinfo.available_timezones()
        if name not in _HOST_NAMES and not name.startswith(_HOST_TREES)
    )


def _as_utc(moment: datetime, name: str) -> datetime:
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise InvalidOption(name, f"expected an aware datetime (with tzinfo), found {moment!r}")
    return moment.astimezone(UTC)


# -- @every (note 3) --------------------------------------------------------------


def _every_slots(every: float, after: datetime) -> tuple[datetime, timedelta]:
    """The first slot after ``after`` and the interval, both exact to the microsecond."""
    step = round(every * 1_000_000)
    elapsed = (after - _EPOCH) // _MICROSECOND
    return _EPOCH + (elapsed // step + 1) * step * _MICROSECOND, step * _MICROSECOND


# -- cron fields in a time zone (note 2) -----------------------------------------


def _cron_slots(spec: CronSpec, after: datetime) -> Iterator[datetime]:
    """Every slot strictly after ``after`` (UTC), in order, as UTC datetimes."""
    zone = _zone(spec.expression, spec.tz)
    walls = _wall_slots(spec, _wall_start(after, zone))
    last = after  # slots are strictly after it, and each instant is yielded once
    while True:
        wall = next(walls)
        instant = _first_instant(wall, zone)
        if instant is None:
            # In the spring-forward gap: the slot is the gap's end (note 2).
            # Resume at the gap's end rather than stepping through it slot by
            # slot; a slot there is the same instant, which `last` drops.
            instant = _gap_end(wall, zone)
            walls = _wall_slots(spec, _wall(instant, zone) - _MICROSECOND)
        if instant > last:
            yield instant
            last = instant


def _wall_slots(spec: CronSpec, start: datetime) -> Iterator[datetime]:
    """The naive wall times of ``spec`` strictly after the naive ``start``, in
    order, each once: the merge of its day-field halves (note 5)."""
    try:
        halves = _day_halves(spec.expression.strip().lower(), spec.seconds)
        crons = [
            croniter(half, start, ret_type=datetime, second_at_beginning=spec.seconds)
            for half in halves
        ]
    except CroniterBadCronError as exc:  # a CronSpec built by hand, not by parse_cron
        raise CronError(spec.expression, "expression", str(exc)) from exc
    pending: dict[int, datetime] = {}
    failure: CroniterError | None = None

    def advance(index: int) -> None:
        nonlocal failure
        try:
            pending[index] = crons[index].get_next(datetime)
        except CroniterBadDateError as exc:  # this half never fires again
            pending.pop(index, None)
            failure = exc
        except CroniterBadCronError as exc:
            raise CronError(spec.expression, "expression", str(exc)) from exc

    for index in range(len(crons)):
        advance(index)
    while pending:
        wall = min(pending.values())
        yield wall
        for index in [i for i, value in pending.items() if value == wall]:
            advance(index)
    raise CronError(spec.expression, "expression", f"never fires: {failure}")


@functools.lru_cache(maxsize=256)
def _day_halves(text: str, seconds: bool) -> tuple[str, ...]:
    """``text`` (an alias spelled out) as the expressions whose slots it is the
    merge of: itself, or, when both day fields are restricted, one with
    day-of-week ``*`` and one with day-of-month ``*`` (note 5)."""
    text = _ALIASES.get(text, text)
    expanded, _ = croniter.expand(text, second_at_beginning=seconds)
    # croniter puts seconds last, so the day fields are at 2 and 4 either way.
    if expanded[2] == ["*"] or expanded[4] == ["*"]:
        return (text,)
    tokens = _TOKENS.findall(text)
    by_month = " ".join([*tokens[:-1], "*"])
    by_week = " ".join([*tokens[:-3], "*", *tokens[-2:]])
    return (by_month, by_week)


def _first_instant(wall: datetime, zone: tzinfo) -> datetime | None:
    """The first instant showing the naive ``wall`` time in ``zone``; None in a gap."""
    instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) != wall:
        return None
    return instant


def _wall_start(after: datetime, zone: tzinfo) -> datetime:
    """The naive wall time to search from: slots at later wall times are due."""
    local = after.astimezone(zone)
    wall = local.replace(tzinfo=None)
    first = _offset(local.replace(fold=0))
    second = _offset(local)
    if local.fold == 0 or first == second:
        return wall
    # `after` is in the second pass of a repeated hour (note 2): every wall
    # time of it fired in the first pass, so search from the wall time at
    # which the clocks went back, i.e. the end of the repetition.
    change = _offset_change(after - (first - second), after, zone)
    return (change + first).replace(tzinfo=None) - _MICROSECOND


def _gap_end(wall: datetime, zone: tzinfo) -> datetime:
    """The instant (UTC) at which the gap holding the naive ``wall`` time ends:
    the first instant whose wall time is later than every wall time of the gap."""
    before = _offset(wall.replace(tzinfo=zone, fold=0))
    after = _offset(wall.replace(tzinfo=zone, fold=1))
    low = (wall - after).replace(tzinfo=UTC)
    high = (wall - before).replace(tzinfo=UTC)
    return _offset_change(low, high, zone)


def _wall(instant: datetime, zone: tzinfo) -> datetime:
    """The naive wall time ``zone`` shows at ``instant``."""
    return instant.astimezone(zone).replace(tzinfo=None)


def _offset_change(low: datetime, high: datetime, zone: tzinfo) -> datetime:
    """The instant in ``(low, high]`` where ``zone``'s UTC offset changes.

    Transitions fall on whole seconds, so this bisects on epoch seconds.
    """
    lo = math.floor(low.timestamp())
    hi = math.ceil(high.timestamp())
    start = _offset(datetime.fromtimestamp(lo, zone))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(datetime.fromtimestamp(mid, zone)) == start:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def _offset(moment: datetime) -> timedelta:
    offset = moment.utcoffset()
    if offset is None:  # pragma: no cover - every caller passes an aware datetime
        raise ValueError(f"{moment!r} has no UTC offset")
    return offset
