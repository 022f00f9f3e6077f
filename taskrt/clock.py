"""Time as an object, so that tests of delays, backoff and cron do not sleep.

The runtime never reads the clock or sleeps on its own: it asks its ``Clock``
for ``now()`` (epoch seconds) and to ``call_at`` a time. ``FakeClock`` moves only
when a test calls ``advance``.

``SystemClock``'s timers keep to the wall clock. The event loop's timers follow
the monotonic clock, which a suspended machine (a laptop's lid, a paused VM)
or a wall clock stepped forward (NTP) leaves behind: a timer set for the wall
time of a job delayed by a day would ring as late as the machine slept. So a
timer further off than ``MAX_TIMER`` seconds sleeps that long, looks at the
wall clock again, and sleeps again (``_WallTimer``); nearer ones are the loop's
own, as cheap as before.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` in the event loop once ``now() >= when``."""
        ...


class Alarm:
    """One timer of a clock that rings ``callback`` at the earliest time asked for."""

    __slots__ = ("_callback", "_clock", "_handle", "at")

    def __init__(self, clock: Clock, callback: Callable[[], None]) -> None:
        self._clock = clock
        self._callback = callback
        self._handle: TimerHandle | None = None
        self.at: float | None = None

    def set(self, when: float) -> None:
        """Ring at ``when``, unless it rings at or before it already."""
        if self.at is not None and self.at <= when:
            return
        self.cancel()
        self.at = when
        self._handle = self._clock.call_at(when, self._ring)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self.at = None

    def _ring(self) -> None:
        self._handle = None
        self.at = None
        self._callback()


MAX_TIMER = 60.0
"""Seconds a ``SystemClock`` timer sleeps at most before it reads the wall clock again."""


class SystemClock:
    """The wall clock, with timers on the running event loop (module docstring)."""

    def now(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        loop = asyncio.get_running_loop()
        delay = when - self.now()
        if delay <= MAX_TIMER:
            return loop.call_later(max(0.0, delay), callback)
        return _WallTimer(self, loop, when, callback)


class _WallTimer:
    """A timer further off than ``MAX_TIMER``: loop timers of at most that long,
    until the wall clock says ``when`` is near."""

    __slots__ = ("_callback", "_clock", "_handle", "_loop", "_when")

    def __init__(
        self,
        clock: SystemClock,
        loop: asyncio.AbstractEventLoop,
        when: float,
        callback: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._loop = loop
        self._when = when
        self._callback = callback
        self._handle = loop.call_later(MAX_TIMER, self._look)

    def _look(self) -> None:
        delay = self._when - self._clock.now()
        if delay > MAX_TIMER:
            self._handle = self._loop.call_later(MAX_TIMER, self._look)
        else:
            self._handle = self._loop.call_later(max(0.0, delay), self._callback)

    def cancel(self) -> None:
        self._handle.cancel()


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that moves only when told to; timers fire in time order."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._counter = itertools.count()

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _FakeTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._counter), timer))
        return timer

    async def advance(self, seconds: float, *, step: float | None = None) -> None:
        """Move time forward, firing due timers in order and letting the loop run.

        With ``step``, time moves in increments of ``step`` seconds so that work
        started by one timer can schedule the next before time jumps past it.
        """
        target = self._now + seconds
        while True:
            nxt = self._timers[0][0] if self._timers else None
            stop = target if step is None else min(target, self._now + step)
            if nxt is not None and nxt <= stop:
                stop = max(self._now, nxt)
            self._now = max(self._now, stop)
            while self._timers and self._timers[0][0] <= self._now:
                _, _, timer = heapq.heappop(self._timers)
                if not timer.cancelled:
                    timer.callback()
            await settle()
            if self._now >= target and not (self._timers and self._timers[0][0] <= self._now):
                return


async def settle(rounds: int = 20) -> None:
    """Let the event loop run ready callbacks for a few rounds."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def sleep(clock: Clock, seconds: float) -> None:
    """Sleep on ``clock`` (a fake clock sleeps until advanced)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    handle = clock.call_at(clock.now() + seconds, wake)
    try:
        await fut
    finally:
        handle.cancel()
