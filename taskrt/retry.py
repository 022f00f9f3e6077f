"""Durations and retry policies: pure functions of their inputs.

A retry policy answers one question: after attempt ``n`` failed, how long to
wait before attempt ``n + 1``. Three shapes are accepted everywhere a policy is
(decorator, ``options``, task files, HTTP):

- a fixed delay: ``"200ms"``, ``"30s"``, ``"1h30m"`` or a number of seconds;
- a list: ``"1m,2m,4m"`` or ``[60, 120, 240]``; the last delay repeats;
- exponential: ``{"base": 1, "factor": 2, "cap": 300, "jitter": 0.1}``.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .errors import InvalidOption
from .limits import AGE_OF_NO_JOB, INT64_MAX, MAX_DURATION, shown

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# ASCII digits only: ``\d`` and ``float`` also read "٣", "1_000" or "²".
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_SECONDS = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]+)?")


def parse_duration(value: Any, *, field: str = "duration", source: str | None = None) -> float:
    """Seconds from ``"200ms"``, ``"30s"``, ``"1h30m"``, ``"1d"`` or a number of seconds."""
    return _bounded(_seconds_of(value, field, source), value, field, source)


def parse_age(value: Any, *, field: str = "older_than") -> float:
    """How long ago, for a filter of jobs by when they were created: what
    ``parse_duration`` reads, finite and 0 or more, of any length. An age beyond
    the hundred years a duration may have is no error: from ``AGE_OF_NO_JOB`` on
    it matches no job, and is read as that (a number JSON carries)."""
    seconds = _seconds_of(value, field, None)
    if isinstance(seconds, float) and not math.isfinite(seconds):
        raise InvalidOption(field, f"expected a finite age in seconds, found {shown(value)}")
    try:
        number = float(seconds)
    except OverflowError:  # an int no float holds: older than any job all the same
        number = AGE_OF_NO_JOB
    return min(number, AGE_OF_NO_JOB) + 0.0


def _seconds_of(value: Any, field: str, source: str | None) -> float:
    """The seconds ``value`` says, 0 or more, however many (``math.inf`` too)."""
    if isinstance(value, bool):
        raise InvalidOption(
            field, f"expected a duration like '30s', found {shown(value)}", source=source
        )
    if isinstance(value, int | float):
        if value < 0:
            raise InvalidOption(
                field, f"a duration cannot be negative, found {shown(value)}", source=source
            )
        return value
    if not isinstance(value, str):
        raise InvalidOption(
            field, f"expected a duration like '30s', found {type(value).__name__}", source=source
        )
    text = value.strip().lower()
    if not text:
        raise InvalidOption(
            field, "expected a duration like '30s', found an empty string", source=source
        )
    if _SECONDS.fullmatch(text.removeprefix("-")):
        number = float(text)
        if number < 0:
            raise InvalidOption(
                field,
                f"expected a duration of 0 or more seconds, found {shown(value)}",
                source=source,
            )
        return number
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise InvalidOption(
            field,
            f"bad duration {shown(value)}: expected a number with a unit ms, s, m, h or d "
            "(e.g. '200ms', '30s', '1h30m')",
            source=source,
        )
    return total


def _bounded(seconds: float, given: Any, field: str, source: str | None) -> float:
    """Finite seconds, at most a hundred years (``limits`` note 1)."""
    try:
        number = float(seconds)
    except OverflowError:
        number = math.inf
    if not (math.isfinite(number) and number <= MAX_DURATION):
        raise InvalidOption(
            field,
            f"expected a finite duration of at most {MAX_DURATION:.0f} seconds (100 years), "
            f"found {shown(given)}",
            source=source,
        )
    # -0.0 is 0: kept negative, it was written back as "-0s", which no read accepts.
    return number + 0.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait between attempts.

    ``delays`` is used when given (the last one repeats); otherwise the delay is
    ``base * factor ** (attempt - 1)``, capped at ``cap``, spread by ``jitter``
    (a fraction: 0.1 means +-10 %).
    """

    delays: tuple[float, ...] = ()
    base: float = 0.0
    factor: float = 1.0
    cap: float | None = None
    jitter: float = 0.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if self.delays:
            return self.delays[min(attempt, len(self.delays)) - 1]
        try:
            value = self.base * self.factor ** max(0, attempt - 1)
        except OverflowError:
            value = MAX_DURATION
        value = min(value, MAX_DURATION)  # finite, whatever the attempt number
        if self.cap is not None:
            value = min(value, self.cap)
        if self.jitter:
            spread = value * self.jitter
            value += (rng or random).uniform(-spread, spread)
        return max(0.0, value)

    def describe(self) -> str | dict[str, Any]:
        """The policy as ``parse_retry`` reads it back exactly (a job stores it)."""
        if self.delays:
            return ",".join(f"{_plain(d)}s" for d in self.delays)
        return {"base": self.base, "factor": self.factor, "cap": self.cap, "jitter": self.jitter}


def _plain(seconds: float) -> str:
    """``seconds`` in digits ``parse_duration`` reads, no exponent and nothing rounded
    (``1234567.0`` -> ``"1234567"``, ``1e-07`` -> ``"0.0000001"``)."""
    text = format(Decimal(repr(seconds)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


NO_DELAY = RetryPolicy()


def parse_retry(value: Any, *, field: str = "retry", source: str | None = None) -> RetryPolicy:
    """A ``RetryPolicy`` from any of the accepted shapes (see the module docstring)."""
    if value is None:
        return NO_DELAY
    if isinstance(value, RetryPolicy):
        return value
    if isinstance(value, str) and "," in value:
        parts = [s.strip() for s in value.split(",")]
        if not all(parts):  # "1m,,2m" or "1m,": a delay left out is a mistake, not a gap
            raise InvalidOption(
                field,
                f"bad delay list {shown(value)}: expected durations separated by single commas, "
                "like '1m,2m,4m'",
                source=source,
            )
        return RetryPolicy(
            delays=tuple(parse_duration(p, field=field, source=source) for p in parts)
        )
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return RetryPolicy(delays=(parse_duration(value, field=field, source=source),))
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            raise InvalidOption(field, "empty delay list", source=source)
        return RetryPolicy(
            delays=tuple(
                parse_duration(p, field=f"{field}[{i}]", source=source) for i, p in enumerate(value)
            )
        )
    if isinstance(value, Mapping):
        unknown = set(value) - {"base", "factor", "cap", "jitter"}
        if unknown:
            raise InvalidOption(
                field,
                f"unknown key(s) {sorted(unknown)}; expected base, factor, cap, jitter",
                source=source,
            )
        base = parse_duration(value.get("base", 1), field=f"{field}.base", source=source)
        factor = value.get("factor", 2)
        if (
            not isinstance(factor, int | float)
            or isinstance(factor, bool)
            or not 1 <= factor <= 1000  # NaN fails too
        ):
            raise InvalidOption(
                f"{field}.factor",
                f"expected a number from 1 to 1000, found {shown(factor)}",
                source=source,
            )
        cap = value.get("cap")
        jitter = value.get("jitter", 0)
        if not isinstance(jitter, int | float) or isinstance(jitter, bool) or not 0 <= jitter <= 1:
            raise InvalidOption(
                f"{field}.jitter",
                f"expected a fraction between 0 and 1, found {shown(jitter)}",
                source=source,
            )
        return RetryPolicy(
            base=base,
            factor=float(factor),
            cap=None if cap is None else parse_duration(cap, field=f"{field}.cap", source=source),
            jitter=float(jitter),
        )
    raise InvalidOption(
        field,
        f"expected a duration, a list of durations or {{base, factor, cap, jitter}}, found {shown(value)}",
        source=source,
    )


def parse_attempts(value: Any, *, field: str = "attempts", source: str | None = None) -> int | None:
    """``None`` for unlimited (given as ``None`` or ``-1``), else a positive int.
    An integer only: ``-1.0`` is refused as ``3.0`` is (it equals -1, which let it in)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOption(
            field,
            f"expected a positive integer, or -1 for unlimited, found {shown(value)}",
            source=source,
        )
    if value == -1:
        return None
    if not 1 <= value <= INT64_MAX:
        raise InvalidOption(
            field,
            f"expected a positive integer, or -1 for unlimited, found {shown(value)}",
            source=source,
        )
    return value
