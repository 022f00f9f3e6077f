"""The waiting jobs of one pool: a bounded window in memory, the rest in the store.

A pool with ten million waiting jobs keeps a few thousand of them in memory:
the next to run, and the next to come due. The store holds them all and gives
them back in order, by index, when memory runs low. Nothing a user sees
changes with the window: order, delays, capacity and unique keys behave as if
every job were in memory.

Design notes:

1. **Two ordered lists.** Ready jobs (due now) in run order: highest
   priority first, then earliest ``run_at``, then lowest id; and delayed jobs
   in (``run_at``, id) order. Each is a sorted list with a moving head:
   taking the next is O(1), adding is a binary search plus a move of at most
   the window's entries.
2. **A horizon says what memory holds.** Each list has a horizon, a key:
   every waiting job of the pool whose key is at or below it is in memory
   (``None``: every one is). A job added above the horizon stays in the store
   only; when a list holds more than ``window`` jobs, its last one leaves
   memory and the horizon drops below it. The next job is taken only at or
   below the horizon; when half a window or less is left there, the list is
   refilled from the store, from the horizon on (``Backlog``).
3. **Only committed jobs leave memory.** A job whose WAITING row is still
   queued (a retry) stays in memory, beyond the window if need be, so that a
   refill never reads a stale row and steps over it. While a list is being
   refilled nothing leaves it either: the refill moves the horizon past what
   it read, and a job added meanwhile may be missing from what it read.
4. **Time moves jobs from the delayed list to the ready one**, by the same
   rule as an add: above the ready horizon, a job that came due stays in the
   store until a refill reaches it.
5. **Refills skip what is here.** The backlog leaves out rows of jobs this
   process already holds (in a list, starting, running, or being cancelled),
   and rows whose task is unknown here; the horizon still moves past them.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .errors import TaskrtError

if TYPE_CHECKING:
    from .clock import Clock
    from .context import JobState

log = logging.getLogger("taskrt")
_T = TypeVar("_T")

DEFAULT_WINDOW = 2000
"""Jobs of each list (ready, delayed) a pool keeps in memory."""

_LAST_ID = 2**63 - 1
_NOTHING = (float("-inf"), float("-inf"), -1)  # a ready horizon below every job
_RETRY_READ = (0.05, 2.0)  # first and longest wait before reading again after a failure

ReadyKey = tuple[float, float, int]
"""(-priority, run_at, id): run order, smallest first."""

DelayedKey = tuple[float, int]
"""(run_at, id)."""


class Backlog(Protocol):
    """Where the window's jobs come from and go to (the runtime's adoption)."""

    async def load_ready(
        self, pool: str, now: float, limit: int, after: tuple[int, float, int] | None
    ) -> tuple[list[JobState], int, tuple[int, float, int] | None]:
        """Due jobs after ``after`` = (priority, run_at, id) in run order: the states of
        those not held here yet, how many rows were read, and the last row's key."""
        ...

    async def load_delayed(
        self, pool: str, after: tuple[float, int], limit: int
    ) -> tuple[list[JobState], int, tuple[float, int] | None]:
        """Jobs after ``after`` = (run_at, id) in that order (as ``load_ready``)."""
        ...

    def shelve(self, state: JobState) -> None:
        """The job leaves memory; its committed row in the store stays the truth."""
        ...


class Waiting:
    """The waiting jobs of one pool (see the module notes)."""

    def __init__(
        self,
        pool: str,
        backlog: Backlog,
        clock: Clock,
        window: int,
        wake: Callable[[], None],
    ) -> None:
        self.pool = pool
        self.window = window
        self._backlog = backlog
        self._clock = clock
        self._wake = wake
        self._ready: list[tuple[float, float, int, JobState]] = []
        self._rh = 0  # head of _ready: entries before it were taken
        self._delayed: list[tuple[float, int, JobState]] = []
        self._dh = 0
        self._members: dict[int, tuple[Any, ...]] = {}  # id -> its entry in a list
        self.ready_upto: ReadyKey | None = None  # horizons (note 2)
        self.delayed_upto: DelayedKey | None = None
        self._reading_ready: asyncio.Task[None] | None = None
        self._reading_delayed: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Jobs in memory."""
        return len(self._members)

    def __contains__(self, state: JobState) -> bool:
        entry = self._members.get(state.id)
        return entry is not None and entry[-1] is state

    @property
    def spilled(self) -> bool:
        """Whether some waiting jobs of the pool are in the store only."""
        return self.ready_upto is not None or self.delayed_upto is not None

    # -- start and stop ----------------------------------------------------------

    async def load(self, now: float) -> None:
        """The pool has waiting jobs in the store: read the first window of each list."""
        self.ready_upto = _NOTHING
        self.delayed_upto = (now, _LAST_ID)  # what is due by now is the ready list's
        self._read_ready()
        self._read_delayed()
        await asyncio.gather(*[t for t in (self._reading_ready, self._reading_delayed) if t])

    def close(self) -> None:
        """Forget every job in memory (the runtime stops); the store keeps them."""
        for task in (self._reading_ready, self._reading_delayed):
            if task is not None:
                task.cancel()
        self._reading_ready = self._reading_delayed = None
        self._ready.clear()
        self._delayed.clear()
        self._rh = self._dh = 0
        self._members.clear()
        self.ready_upto = self.delayed_upto = None

    # -- adding and removing ---------------------------------------------------

    def push(self, state: JobState) -> None:
        """A job is waiting (added, retried, taken in): into memory or the store (note 2)."""
        if state.id in self._members:
            return  # queued already
        if state.run_at > self._clock.now():
            self._place_delayed(state)
        else:
            self._place_ready(state)

    def remove(self, state: JobState) -> bool:
        """Take a job out of memory (cancel, run now); False if it was not here."""
        entry = self._members.get(state.id)
        if entry is None or entry[-1] is not state:
            return False
        del self._members[state.id]
        if len(entry) == 4:
            lst: list[Any] = self._ready
            lo = self._rh
        else:
            lst = self._delayed
            lo = self._dh
        i = bisect.bisect_left(lst, entry, lo)
        del lst[i]
        return True

    def _place_ready(self, state: JobState, *, loaded: bool = False) -> None:
        entry = (-state.priority, state.run_at, state.id, state)
        upto = self.ready_upto
        if (
            upto is not None
            and not loaded
            and (entry[0], entry[1], entry[2]) > upto
            and self._may_leave(state, self._reading_ready)
        ):
            self._backlog.shelve(state)
            return
        ready = self._ready
        if not ready or entry > ready[-1]:
            ready.append(entry)  # the usual case: the newest job runs last
        else:
            bisect.insort(ready, entry, self._rh)
        self._members[state.id] = entry
        if len(ready) - self._rh > self.window and self._reading_ready is None:
            self._trim_ready()

    def _place_delayed(self, state: JobState, *, loaded: bool = False) -> None:
        entry = (state.run_at, state.id, state)
        upto = self.delayed_upto
        if (
            upto is not None
            and not loaded
            and (entry[0], entry[1]) > upto
            and self._may_leave(state, self._reading_delayed)
        ):
            self._backlog.shelve(state)
            return
        delayed = self._delayed
        if not delayed or entry > delayed[-1]:
            delayed.append(entry)
        else:
            bisect.insort(delayed, entry, self._dh)
        self._members[state.id] = entry
        if len(delayed) - self._dh > self.window and self._reading_delayed is None:
            self._trim_delayed()

    @staticmethod
    def _may_leave(state: JobState, reading: asyncio.Task[None] | None) -> bool:
        """Note 3: committed, and no refill of its list is reading."""
        written = state.written
        return reading is None and (written is None or written.done())

    def _trim_ready(self) -> None:
        """Over the window: the last committed jobs leave memory (notes 2, 3)."""
        ready = self._ready
        while len(ready) - self._rh > self.window:
            i = len(ready) - 1
            while i >= self._rh and not self._may_leave(ready[i][3], None):
                i -= 1
            if i < self._rh:
                return
            entry = ready.pop(i)
            del self._members[entry[2]]
            self._backlog.shelve(entry[3])
            below = ready[i - 1] if i - 1 >= self._rh else None
            key: ReadyKey = _NOTHING if below is None else (below[0], below[1], below[2])
            if self.ready_upto is None or key < self.ready_upto:
                self.ready_upto = key

    def _trim_delayed(self) -> None:
        delayed = self._delayed
        while len(delayed) - self._dh > self.window:
            i = len(delayed) - 1
            while i >= self._dh and not self._may_leave(delayed[i][2], None):
                i -= 1
            if i < self._dh:
                return
            entry = delayed.pop(i)
            del self._members[entry[1]]
            self._backlog.shelve(entry[2])
            below = delayed[i - 1] if i - 1 >= self._dh else None
            # Below every job still here: the next read starts after the last one kept.
            key: DelayedKey = (float("-inf"), -1) if below is None else (below[0], below[1])
            if self.delayed_upto is None or key < self.delayed_upto:
                self.delayed_upto = key

    # -- taking ---------------------------------------------------------------

    def take(self) -> JobState | None:
        """The next job to run, or None (none due, or a refill must come first)."""
        if len(self._delayed) > self._dh or self.delayed_upto is not None:
            now = self._clock.now()
            self._promote(now)
            upto = self.delayed_upto
            if upto is not None and upto[0] <= now:
                # Jobs in the store only may be due now, of any priority: read first.
                self._read_delayed()
                return None
        ready = self._ready
        h = self._rh
        if h == len(ready):
            if self.ready_upto is not None:
                self._read_ready()
            return None
        entry = ready[h]
        rupto = self.ready_upto
        if rupto is not None and (entry[0], entry[1], entry[2]) > rupto:
            self._read_ready()
            return None
        self._rh = h = h + 1
        del self._members[entry[2]]
        if h > 512 and h * 2 > len(ready):
            del ready[:h]
            self._rh = 0
        if rupto is not None and self._available_ready(rupto) <= self.window // 2:
            self._read_ready()  # before it runs out (note 2)
        return entry[3]

    def _available_ready(self, upto: ReadyKey) -> int:
        bound = (upto[0], upto[1], upto[2] + 1)
        return bisect.bisect_left(self._ready, bound, self._rh) - self._rh

    def _promote(self, now: float) -> None:
        """Jobs that came due move to the ready list (note 4)."""
        delayed = self._delayed
        h = self._dh
        upto = self.delayed_upto
        while h < len(delayed) and delayed[h][0] <= now:
            entry = delayed[h]
            if upto is not None and (entry[0], entry[1]) > upto:
                break
            h += 1
            del self._members[entry[1]]
            self._place_ready(entry[2])
        if h > 512 and h * 2 > len(delayed):
            del delayed[:h]
            h = 0
        self._dh = h
        if upto is not None:
            bound = (upto[0], upto[1] + 1)
            if bisect.bisect_left(delayed, bound, h) - h <= self.window // 2:
                self._read_delayed()

    def next_due(self) -> float | None:
        """When the first delayed job in memory comes due (the pool's timer)."""
        delayed = self._delayed
        if self._dh == len(delayed):
            if self.delayed_upto is not None:
                self._read_delayed()
            return None
        entry = delayed[self._dh]
        upto = self.delayed_upto
        if upto is not None and (entry[0], entry[1]) > upto:
            self._read_delayed()
            return None
        return entry[0]

    def oldest_due(self, now: float) -> float | None:
        """The earliest ``run_at`` of the due jobs in memory (queue latency)."""
        oldest = min((e[1] for e in self._ready[self._rh :]), default=None)
        if self._dh < len(self._delayed):
            first = self._delayed[self._dh][0]
            if first <= now and (oldest is None or first < oldest):
                oldest = first
        return oldest

    # -- refills (notes 2, 5) ----------------------------------------------------

    def _read_ready(self) -> None:
        if self._reading_ready is None:
            self._reading_ready = asyncio.get_running_loop().create_task(
                self._refill_ready(), name=f"taskrt-window-{self.pool}"
            )

    def _read_delayed(self) -> None:
        if self._reading_delayed is None:
            self._reading_delayed = asyncio.get_running_loop().create_task(
                self._refill_delayed(), name=f"taskrt-window-{self.pool}"
            )

    async def _patiently(self, read: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """``await read(*args)`` until it works: a store that fails now may work later."""
        delay = _RETRY_READ[0]
        while True:
            try:
                return await read(*args)
            except TaskrtError as exc:
                log.warning("reading the waiting jobs of pool %r failed: %s", self.pool, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_READ[1])

    def _load_ready(
        self, limit: int, after: tuple[int, float, int] | None
    ) -> Awaitable[tuple[list[JobState], int, tuple[int, float, int] | None]]:
        return self._backlog.load_ready(self.pool, self._clock.now(), limit, after)

    async def _refill_ready(self) -> None:
        try:
            while self.ready_upto is not None:
                upto = self.ready_upto
                size = len(self._ready) - self._rh
                limit = max(self.window - size, self.window // 4, 1)
                after = None if upto == _NOTHING else (int(-upto[0]), upto[1], upto[2])
                states, rows, last = await self._patiently(self._load_ready, limit, after)
                for state in states:
                    self._place_ready(state, loaded=True)
                if rows < limit or last is None:
                    self.ready_upto = None
                else:
                    self.ready_upto = (-last[0], last[1], last[2])
                if states or rows < limit:
                    break
                # Every row read was here already or unknown: read on.
        finally:
            if self._reading_ready is asyncio.current_task():
                self._reading_ready = None
        if len(self._ready) - self._rh > self.window:
            self._trim_ready()
        self._wake()

    async def _refill_delayed(self) -> None:
        try:
            while self.delayed_upto is not None:
                after = self.delayed_upto
                size = len(self._delayed) - self._dh
                limit = max(self.window - size, self.window // 4, 1)
                states, rows, last = await self._patiently(
                    self._backlog.load_delayed, self.pool, after, limit
                )
                now = self._clock.now()
                for state in states:
                    if state.run_at <= now:
                        self._place_ready(state)
                    else:
                        self._place_delayed(state, loaded=True)
                self.delayed_upto = None if rows < limit or last is None else last
                if states or rows < limit:
                    break
        finally:
            if self._reading_delayed is asyncio.current_task():
                self._reading_delayed = None
        if len(self._delayed) - self._dh > self.window:
            self._trim_delayed()
        self._wake()
