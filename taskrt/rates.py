"""Rate limits: ``"10/s"``, ``"100/m"``, ``"5000/h"`` as a token bucket (plain values).

A pool (``rt.pool("mail", rate="10/s")``) and a task (``@rt.task(rate="100/m")``)
may each limit how many of their jobs start per unit of time. A limit is a
token bucket: it refills at the rate and holds at most one second of it (the
burst), and never less than one token. A start takes a token; a job that finds
none waits, rate limited, until the next one comes (never a failure, never a
busy loop: the pool sets one timer).

Design notes:

1. **Time is an argument.** ``Bucket`` reads no clock: ``take(now)`` and
   ``wait(now)`` are pure functions of the time given, so the runtime's
   injected clock drives them in tests.
2. **Nodes share a bucket.** Where every node of a PostgreSQL schema claims
   jobs, the bucket is a row they all draw from (``taskrt.nodes`` note 5): a
   claim takes tokens first (the row's lock orders the nodes), starts no more
   jobs than it got, and gives back what it did not use.
3. **Every rate has a finite wait.** A count is at least 0.000001 (at most five
   zeros after the point before its first other digit) and below 10**9, as
   ``RATE_PATTERN`` says: the slowest rate, ``"0.000001/h"``, has a token every
   3.6e9 s (about 114 years), so every wait (a pool's ``next_slot``) is a finite
   number. A count of ``0.`` and 320 zeros had a per-second rate so small that
   the wait for its next token was infinite, which JSON cannot carry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidOption
from .limits import shown

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_WHOLE = 1.0 - 1e-9  # a token, give or take the rounding of the refill's arithmetic
_SOON = 1e-3  # the shortest wait: a timer for "now" would fire at once, again and again
#: A rate as text: a count from 0.000001 (note 3) to below 10**9 in ASCII digits
#: (decimals allowed), a "/" and a unit; no spaces, nothing around it. The HTTP API's
#: schema publishes this very pattern (``web.schemas``): the text it lets through is
#: the text taken here.
RATE_PATTERN = r"^(0*[1-9][0-9]{0,8}(\.[0-9]+)?|0+\.0{0,5}[1-9][0-9]*)/[smh]$"
_RATE = re.compile(RATE_PATTERN)


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` starts per ``per`` seconds; ``text`` as it was written."""

    count: float
    per: float
    text: str

    @property
    def per_second(self) -> float:
        return self.count / self.per

    @property
    def burst(self) -> float:
        """The bucket's size: one second of the rate, at least one token."""
        return max(1.0, self.per_second)

    def __str__(self) -> str:
        return self.text


def parse_rate(value: Any, *, field: str = "rate", source: str | None = None) -> Rate | None:
    """A ``Rate`` from ``"N/s"``, ``"N/m"`` or ``"N/h"`` (or a ``Rate``); None stays None."""
    if value is None or isinstance(value, Rate):
        return value
    # fullmatch: "$" alone lets a final newline through, which the schema's "$" does not.
    if not isinstance(value, str) or _RATE.fullmatch(value) is None:
        raise InvalidOption(
            field,
            "expected a rate like '10/s', '100/m' or '5000/h' (a count from 0.000001 to "
            f"below 10**9 in ASCII digits, no spaces), found {shown(value)}",
            source=source,
        )
    count, unit = value.rsplit("/", 1)
    return Rate(float(count), _UNITS[unit], value)  # finite and positive (note 3)


class Bucket:
    """A token bucket for one ``Rate`` (note 1)."""

    __slots__ = ("at", "rate", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = rate.burst  # full: a new limit lets its burst start at once
        self.at = now

    def _refill(self, now: float) -> None:
        if now > self.at:
            rate = self.rate
            self.tokens = min(rate.burst, self.tokens + (now - self.at) * rate.per_second)
            self.at = now

    def ready(self, now: float) -> bool:
        """Whether a start may take a token now."""
        self._refill(now)
        return self.tokens >= _WHOLE

    def take(self, now: float) -> None:
        """A start took a token (``ready`` said it may)."""
        self._refill(now)
        self.tokens -= 1.0

    def wait(self, now: float) -> float:
        """Seconds until the next token (0: one is here)."""
        self._refill(now)
        missing = 1.0 - self.tokens
        return 0.0 if self.tokens >= _WHOLE else max(missing / self.rate.per_second, _SOON)

    def change(self, rate: Rate) -> None:
        """A new rate: the tokens held are kept, within the new burst."""
        self.rate = rate
        self.tokens = min(self.tokens, rate.burst)


__all__ = ["RATE_PATTERN", "Bucket", "Rate", "parse_rate"]
