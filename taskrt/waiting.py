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
6. **Refills read in chunks.** Turning a row into a live job costs the event
   loop about 20 µs, so a refill of half a window (5,000 jobs) read at once
   held the loop for 40-60 ms, every running job and web request with it. A
   refill reads ``READ_CHUNK`` rows at a time instead, the loop free between
   two reads, and the horizon moves past each chunk, so the pool may start
   what came in before the rest is read. A start, too, returns once each
   list has its first chunk, and the rest of the first window comes in while
   the first jobs run. On SQLite a chunk is read on the loop's thread (store
   note 18), so the read costs the loop too (about 8 µs a row): a chunk is
   100 rows (about 3 ms of the loop), and a refill yields twice between two, so
   that a timer that came due during one runs before the next. (While the
   reads ran in the reader's own thread, starting after the first chunk
   made a 10,000-job cold drain about 7 % slower: the two threads took the
   interpreter's lock from each other at every step of the writer's
   statements, which then took half as long again.)
7. **A gate's scan reads past the window.** A pool whose first job in line
   may not start (a lock held, a task's rate spent) looks up to ``SCAN`` jobs
   further for one that may (``taskrt.gates`` note 2). Where fewer than that
   are in memory below the horizon, the ready list reaches on: it holds up to
   ``SCAN`` jobs and is refilled, so that a job beyond the window is found as
   it would be with every job in memory (but for the refill's wait). It
   reads what fits, no more, and keeps that reach while the gates are in use
   (a line of one lock key's jobs would otherwise leave memory and be read
   again at each start: 22 rows read per job started, measured); the list
   goes back to its window when the pool takes jobs without the gates. Only
   a window below ``SCAN`` ever reaches (the default is 10,000).
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

DEFAULT_WINDOW = 10_000
"""Jobs of each list (ready, delayed) a pool keeps in memory."""
READ_CHUNK = 100
"""Rows a refill reads at a time (note 6)."""

_LAST_ID = 2**63 - 1
_RETRY_READ = (0.05, 2.0)  # first and longest wait before reading again after a failure

Key = tuple[Any, ...]
"""A list's order: ready (-priority, run_at, id), delayed (run_at, id)."""

Read = Callable[[int, Key], Awaitable[tuple[list["JobState"], int, Key | None]]]
"""Reads up to ``limit`` jobs after a key: (new states, rows read, the last row's key)."""


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


class _Lane:
    """One ordered list of a pool's waiting jobs and its horizon (notes 1-3, 5).

    Entries are ``(*key, state)``; ``head`` moves past the entries taken.
    ``upto`` is the horizon: every job of the list at or below it is in memory
    (``None``: every job is).
    """

    def __init__(
        self,
        name: str,
        width: int,
        window: int,
        read: Read,
        accept: Callable[[list[JobState]], None],
        shelve: Callable[[JobState], None],
        wake: Callable[[], None],
    ) -> None:
        self.name = name
        self.window = window
        self.reach = 0  # jobs a gate's scan wants in memory, past the window (note 7)
        self.entries: list[tuple[Any, ...]] = []
        self.head = 0
        self.upto: Key | None = None
        self.nothing: Key = (float("-inf"),) * (width - 1) + (-1,)  # below every job
        self.reading: asyncio.Task[None] | None = None
        self.halted = False  # the runtime stops: no refill starts (``Waiting.halt``)
        self._arrived: asyncio.Future[None] | None = None  # a chunk came in (``first_chunk``)
        self._read = read  # reads the next jobs after a key
        self._accept = accept  # places what a refill read
        self._shelve = shelve  # a job goes back to the store
        self._wake = wake  # the pool: a refill is done

    def __len__(self) -> int:
        return len(self.entries) - self.head

    @property
    def cap(self) -> int:
        """Jobs memory may hold: the window, or more while a gate's scan needs them."""
        return self.window if self.reach <= self.window else self.reach

    def first(self) -> tuple[Any, ...] | None:
        """The first entry if it is at or below the horizon; else None (a read is due)."""
        if self.head == len(self.entries):
            if self.upto is not None:
                self.refill()
            return None
        entry = self.entries[self.head]
        if self.upto is not None and entry[:-1] > self.upto:
            self.refill()
            return None
        return entry

    def pop(self) -> None:
        """Drop the first entry (``first`` returned it); refill before it runs out."""
        self.head = h = self.head + 1
        if h > 512 and h * 2 > len(self.entries):
            del self.entries[:h]
            self.head = 0
        upto = self.upto
        if upto is not None:
            bound = (*upto[:-1], upto[-1] + 1)
            if bisect.bisect_left(self.entries, bound, self.head) - self.head <= self.cap // 2:
                self.refill()

    def place(self, entry: tuple[Any, ...], *, loaded: bool = False) -> None:
        """Into memory, or back to the store (``shelve``) when above the horizon (note 2)."""
        state = entry[-1]
        if (
            self.upto is not None
            and not loaded
            and entry[:-1] > self.upto
            and self.reading is None
            and _committed(state)
        ):
            self._shelve(state)
            return
        entries = self.entries
        # Entries before ``head`` were taken: one may be this job's own, with the same
        # key (a start given back), and two states do not compare.
        if self.head == len(entries) or entry > entries[-1]:
            entries.append(entry)  # the usual case: the newest job comes last
        else:
            bisect.insort(entries, entry, self.head)
        if len(entries) - self.head > self.cap and self.reading is None:
            self.trim()

    def remove(self, entry: tuple[Any, ...]) -> None:
        del self.entries[bisect.bisect_left(self.entries, entry, self.head)]

    def trim(self) -> None:
        """Over the window: the last committed jobs leave memory (notes 2, 3)."""
        entries = self.entries
        cap = self.cap
        while len(self) > cap:
            i = len(entries) - 1
            while i >= self.head and not _committed(entries[i][-1]):
                i -= 1
            if i < self.head:
                break
            entry = entries.pop(i)
            self._shelve(entry[-1])
            key = entries[i - 1][:-1] if i - 1 >= self.head else self.nothing
            if self.upto is None or key < self.upto:
                self.upto = key

    def clear(self) -> None:
        if self.reading is not None:
            self.reading.cancel()
            self.reading = None
        self.entries.clear()
        self.head = 0
        self.upto = None
        self.reach = 0
        self.halted = False

    def refill(self) -> None:
        if self.reading is None and not self.halted:
            self.reading = asyncio.get_running_loop().create_task(
                self._refill(), name=f"taskrt-window-{self.name}"
            )

    async def _refill(self) -> None:
        try:
            while self.upto is not None:
                cap = self.cap
                room = cap - len(self)
                # Reaching for a gate's scan (note 7): what fits, never more (the
                # rest would leave again at once); else read ahead a quarter.
                limit = room if self.reach > self.window and room > 0 else max(room, cap // 4, 1)
                took = await self._read_upto(limit)
                if took:
                    break
                # Every row read was here already, or of an unknown task: read on.
        finally:
            if self.reading is asyncio.current_task():
                self.reading = None
        self.trim()  # what was added while it read
        self._wake()

    async def _read_upto(self, limit: int) -> bool:
        """Read up to ``limit`` rows from the horizon on, ``READ_CHUNK`` at a time
        (note 6), moving the horizon past each; whether any job came into memory."""
        took = False
        while limit > 0 and self.upto is not None:
            want = min(limit, READ_CHUNK)
            states, rows, last = await _patiently(self.name, self._read, want, self.upto)
            self._accept(states)
            self.upto = None if rows < want or last is None else last
            limit -= rows
            if states:
                took = True
                self._wake()  # the pool may start them while the rest is read
            arrived = self._arrived
            if arrived is not None and not arrived.done():
                arrived.set_result(None)
            if limit > 0 and self.upto is not None:
                # Note 6: a read that did not wait (SQLite's, store note 18) leaves the
                # loop between two chunks all the same. Twice: a timer that came due
                # during the read is queued behind this task's first wake-up.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
        return took

    async def first_chunk(self) -> None:
        """Until the refill under way has placed its first chunk, or ended (note 6)."""
        reading = self.reading
        if reading is None:
            return
        self._arrived = arrived = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait([reading, arrived], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._arrived = None
            arrived.cancel()
        if reading.done() and not reading.cancelled():
            error = reading.exception()
            if error is not None:
                raise error


def _committed(state: JobState) -> bool:
    """Note 3: a job whose WAITING row is still queued stays in memory."""
    written = state.written
    return written is None or written.done()


async def _patiently(pool: str, read: Read, limit: int, after: Key) -> Any:
    """``await read(limit, after)`` until it works: a store that fails now may work later."""
    delay = _RETRY_READ[0]
    while True:
        try:
            return await read(limit, after)
        except TaskrtError as exc:
            log.warning("reading the waiting jobs of pool %r failed: %s", pool, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_READ[1])


class Waiting:
    """The waiting jobs of one pool (see the module notes)."""

    gated = True  # the pool applies rate limits and locks (``taskrt.gates``)

    def __init__(
        self,
        pool: str,
        backlog: Backlog,
        clock: Clock,
        window: int,
        wake: Callable[[], None],
        saw: Callable[[JobState], None] | None = None,
    ) -> None:
        self.pool = pool
        self._saw = saw  # told of each job placed (a lock key turns the gates on)
        self._backlog = backlog
        self._clock = clock
        self._members: dict[int, tuple[Any, ...]] = {}  # id -> its entry in a lane
        self._ready = _Lane(
            pool, 3, window, self._read_ready, self._accept_ready, self._shelve, wake
        )
        self._delayed = _Lane(
            pool, 2, window, self._read_delayed, self._accept_delayed, self._shelve, wake
        )

    def __len__(self) -> int:
        """Jobs in memory."""
        return len(self._members)

    @property
    def refilling(self) -> bool:
        """Whether a list is being read from the store (after a start: until its first
        window is in, note 6)."""
        return self._ready.reading is not None or self._delayed.reading is not None

    # -- start and stop ----------------------------------------------------------

    async def load(self, now: float) -> None:
        """The pool has waiting jobs in the store: start reading the first window of each
        list, and return once each has its first chunk; the rest comes in while the
        first jobs run (note 6)."""
        self._ready.upto = self._ready.nothing
        self._delayed.upto = (now, _LAST_ID)  # what is due by now is the ready list's
        self._ready.refill()
        self._delayed.refill()
        await asyncio.gather(self._ready.first_chunk(), self._delayed.first_chunk())

    async def halt(self) -> None:
        """The runtime stops: no refill starts from now on, and one under way is
        cancelled and waited for, so that none reads from a store being closed
        (it failed there, and logged a failed read or an unretrieved error)."""
        for lane in (self._ready, self._delayed):
            lane.halted = True
            reading = lane.reading
            if reading is not None:
                reading.cancel()
                await asyncio.wait([reading])

    def poke(self, *, stored: bool = False) -> None:
        """Jobs may have been added elsewhere: the owner learns of them from its poll
        (``adoption``), which queues them, so there is nothing to do here."""

    def close(self) -> None:
        """Forget every job in memory (the runtime stops); the store keeps them."""
        self._ready.clear()
        self._delayed.clear()
        self._members.clear()

    # -- adding and removing ---------------------------------------------------

    def push(self, state: JobState) -> None:
        """A job is waiting (added, retried, taken in): into memory or the store (note 2)."""
        if state.id in self._members:
            return  # queued already
        if state.run_at > self._clock.now():
            self._place(self._delayed, (state.run_at, state.id, state))
        else:
            self._place_ready(state)

    def push_many(self, states: list[JobState]) -> None:
        """Jobs just added (an ``add_many``): ``push`` of each, with the ready ones'
        entries placed here rather than through two calls each (its hot path)."""
        now = self._clock.now()
        members = self._members
        saw = self._saw
        place = self._ready.place
        for state in states:
            job_id = state.id
            if job_id in members:
                continue  # queued already
            if state.run_at > now:
                self._place(self._delayed, (state.run_at, job_id, state))
                continue
            members[job_id] = entry = (-state.priority, state.run_at, job_id, state)
            if saw is not None and state.lock is not None:
                saw(state)
            place(entry)

    def remove(self, state: JobState) -> bool:
        """Take a job out of memory (cancel, run now); False if it was not here."""
        entry = self._members.get(state.id)
        if entry is None or entry[-1] is not state:
            return False
        del self._members[state.id]
        (self._ready if len(entry) == 4 else self._delayed).remove(entry)
        return True

    def holds(self, state: JobState) -> bool:
        entry = self._members.get(state.id)
        return entry is not None and entry[-1] is state

    def _place_ready(self, state: JobState, *, loaded: bool = False) -> None:
        self._place(self._ready, (-state.priority, state.run_at, state.id, state), loaded=loaded)

    def _place(self, lane: _Lane, entry: tuple[Any, ...], *, loaded: bool = False) -> None:
        # A member until the lane sends it (or another) back to the store: ``_shelve``.
        state = entry[-1]
        self._members[state.id] = entry
        if self._saw is not None and state.lock is not None:
            self._saw(state)
        lane.place(entry, loaded=loaded)

    def _shelve(self, state: JobState) -> None:
        self._members.pop(state.id, None)
        self._backlog.shelve(state)

    # -- taking ---------------------------------------------------------------

    def take(self) -> JobState | None:
        """The next job to run, or None (none due, or a refill must come first)."""
        entry = self._first_ready()
        if entry is None:
            return None
        ready = self._ready
        if ready.reach:  # no gate in use any more: the window again (note 7)
            ready.reach = 0
            if ready.reading is None:
                ready.trim()
        ready.pop()
        del self._members[entry[2]]
        state: JobState = entry[3]
        return state

    def _first_ready(self) -> tuple[Any, ...] | None:
        """The first ready entry, once the jobs that came due are ready (note 4)."""
        delayed = self._delayed
        if len(delayed) or delayed.upto is not None:
            now = self._clock.now()
            self._promote(now)
            if delayed.upto is not None and delayed.upto[0] <= now:
                # Jobs in the store only may be due now, of any priority: read first.
                delayed.refill()
                return None
        return self._ready.first()

    def put_back(self, state: JobState) -> None:
        """A job just taken goes back to its place, the head (``taskrt.alone``)."""
        self.push(state)

    def give_back_taken(self) -> list[asyncio.Future[None]]:
        """Nothing: the jobs memory holds are WAITING in the store."""
        return []

    def take_first(self, eligible: Callable[[JobState], bool], scan: int) -> JobState | None:
        """The first of the next ``scan`` ready jobs in memory that ``eligible``
        admits; the others keep their places (``taskrt.gates`` note 2)."""
        ready = self._ready
        entry = self._first_ready()
        if entry is None:
            return None
        if eligible(entry[3]):
            ready.pop()
            del self._members[entry[2]]
            return entry[3]  # type: ignore[no-any-return]
        entries, upto = ready.entries, ready.upto
        end = ready.head + scan
        for i in range(ready.head + 1, min(len(entries), end)):
            entry = entries[i]
            if upto is not None and entry[:-1] > upto:
                break  # beyond what memory holds in order
            if eligible(entry[3]):
                del entries[i]
                del self._members[entry[2]]
                return entry[3]  # type: ignore[no-any-return]
        else:
            if len(entries) >= end or upto is None:
                return None  # looked ``scan`` deep, or at every waiting job
        # Note 7: the scan ran out of memory before ``scan`` jobs; read on.
        ready.reach = scan
        ready.refill()
        return None

    def next_slot(self, now: float) -> float:
        return 0.0  # the pool keeps its own rate limit (``taskrt.gates``)

    def ahead(self) -> int:
        """0 when no job of the pool is due, in memory or in the store; else at
        least 1 (``taskrt.pool`` note 9). Nothing is read or moved."""
        ready = self._ready
        if len(ready) or ready.upto is not None or ready.reading is not None:
            return max(1, len(ready))
        delayed = self._delayed
        now = self._clock.now()
        if delayed.head < len(delayed.entries) and delayed.entries[delayed.head][0] <= now:
            return 1
        if delayed.reading is not None or (delayed.upto is not None and delayed.upto[0] <= now):
            return 1  # jobs in the store only may be due
        return 0

    def _promote(self, now: float) -> None:
        """Jobs that came due move to the ready list (note 4)."""
        delayed = self._delayed
        while (entry := delayed.first()) is not None and entry[0] <= now:
            delayed.pop()
            del self._members[entry[1]]
            self._place_ready(entry[2])

    def next_due(self) -> float | None:
        """When the first delayed job in memory comes due (the pool's timer)."""
        entry = self._delayed.first()
        return None if entry is None else float(entry[0])

    def oldest_due(self, now: float) -> float | None:
        """The earliest ``run_at`` of the due jobs in memory (queue latency)."""
        ready = self._ready
        oldest = min((e[1] for e in ready.entries[ready.head :]), default=None)
        entry = self._delayed.first()
        if entry is not None and entry[0] <= now and (oldest is None or entry[0] < oldest):
            oldest = entry[0]
        return oldest

    def stored_due(self, now: float) -> bool:
        """Whether due jobs may be in the store only: the ready list's horizon, or the
        delayed list's at or before ``now`` (``taskrt.pool`` note 10)."""
        delayed = self._delayed.upto
        return self._ready.upto is not None or (delayed is not None and delayed[0] <= now)

    # -- refills (notes 2, 5) ----------------------------------------------------

    async def _read_ready(self, limit: int, after: Key) -> tuple[list[JobState], int, Key | None]:
        since = None if after == self._ready.nothing else (int(-after[0]), after[1], after[2])
        states, rows, last = await self._backlog.load_ready(
            self.pool, self._clock.now(), limit, since
        )
        return states, rows, None if last is None else (-last[0], last[1], last[2])

    async def _read_delayed(self, limit: int, after: Key) -> tuple[list[JobState], int, Key | None]:
        return await self._backlog.load_delayed(self.pool, (after[0], after[1]), limit)

    def _accept_ready(self, states: list[JobState]) -> None:
        for state in states:
            self._place_ready(state, loaded=True)

    def _accept_delayed(self, states: list[JobState]) -> None:
        now = self._clock.now()
        for state in states:
            if state.run_at <= now:
                self._place_ready(state)
            else:
                self._place(self._delayed, (state.run_at, state.id, state), loaded=True)
