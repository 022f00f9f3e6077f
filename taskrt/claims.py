"""A pool's jobs where every node runs workers: claimed from the store, a slot at a time.

Where one process owns the jobs, a pool keeps its waiting jobs in memory
(``taskrt.waiting``). Where every node of a PostgreSQL database runs workers
(``Runtime(url, mode="nodes")``, ``taskrt.nodes``), no node may hold a waiting
job: any of them may start it. So the pool's queue is ``Claims``: when a slot
is free it asks the store for as many due jobs as it has free slots, in one
statement (``PgStore.claim``: highest priority, then earliest ``run_at``, then
lowest id; rows another node is claiming are skipped), and those jobs are
RUNNING on this node, their attempt charged, when they reach the pool.

Design notes:

1. **Ask only when there may be something.** After a claim that found fewer
   jobs than it asked for, the pool asks again only when told that jobs may be
   due: an add here, a notification of an add elsewhere (``LISTEN/NOTIFY``),
   the timer of the pool's next delayed job, or the slow poll of ``nodes``.
   A claim in flight counts every such poke: one that came meanwhile makes the
   pool ask again.
2. **At most the free slots.** A claim never takes more jobs than the pool
   has free slots; jobs claimed while the pool paused or stopped go back
   (``give_back``: WAITING again, the attempt not charged).
3. **A retry leaves.** A job retried here goes back to the store once its
   WAITING row is committed: any node may run the next attempt; this one
   looks again when it comes due.
4. **A job added here may start here at once.** An add on this node of a
   job the pool could start now keeps a free slot for it (``Pool.keep``; the
   claimed jobs not started yet come first, ``ahead``), and the add's own
   statement stores it RUNNING on this node when no waiting job comes first
   (PostgreSQL store note 11): it starts as if claimed (``Pool.started_here``),
   without a claim's round trip. Otherwise it is stored WAITING, the slot is
   given back (``Pool.release``) and the pool claims as usual. A kept slot is
   not free (``Pool.free_slots``): claims ask for the others, and a claim
   that was in flight meanwhile keeps no more jobs than the slots left (note 2).
   Where jobs wait (the last claim found all it asked for, adds here stored
   some WAITING since, or the node's last look counted some), the slots a
   claim in flight
   asked for count as taken by jobs ahead too: an add that kept one of them
   made the claim give back its best job, which the next claim skipped (its
   row still RUNNING or locked until the give back committed), so a lower
   priority started before it. Such an add is stored WAITING, pokes the
   pool, and the next claim takes it in its turn. Where none waits, an add
   keeps its slot whatever is in flight (the claim comes back empty-handed):
   an idle node starts what it is given at once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .clock import Alarm
from .errors import TaskrtError

if TYPE_CHECKING:
    from .clock import Clock
    from .context import JobState

log = logging.getLogger("taskrt")

_RETRY_AFTER = (0.05, 2.0)  # first and longest wait before claiming again after a failure


class ClaimSource(Protocol):
    """Where a pool's claims go (``taskrt.nodes.Nodes``)."""

    async def claim(self, pool: str, limit: int) -> list[JobState]:
        """Start up to ``limit`` due jobs of ``pool`` on this node; their live states."""
        ...

    async def next_due(self, pool: str) -> float | None:
        """When the pool's first delayed job comes due, or None."""
        ...

    def give_back(self, states: list[JobState]) -> list[asyncio.Future[None]]:
        """Claimed jobs this node will not run: WAITING again, attempt not charged;
        the writes that say so."""
        ...

    def backlog(self, pool: str) -> bool:
        """Whether the pool had waiting jobs at the node's last look."""
        ...

    def rate_wait(self, pool: str) -> float | None:
        """When a rate limit that held back the pool's last claim has a token, or None."""
        ...

    def forget(self, state: JobState) -> None:
        """A job that left this node (retried): reads of it come from the store."""
        ...


HALT_PATIENCE = 5.0
"""Seconds a stopping node waits for its claim in flight (``Claims.halt``)."""


class Claims:
    """The queue of a pool whose jobs any node may run (see the module notes)."""

    def __init__(
        self,
        pool: str,
        source: ClaimSource,
        clock: Clock,
        free: Callable[[], int],
        wake: Callable[[], None],
    ) -> None:
        self.pool = pool
        self._source = source
        self._clock = clock
        self._free = free  # slots the pool could fill now (0 while paused or stopping)
        self._wake = wake  # the pool's dispatch
        self._claimed: collections.deque[JobState] = collections.deque()
        self._asking: asyncio.Task[None] | None = None
        self._asking_for = 0  # the slots the claim in flight asked for (note 4)
        # Jobs wait (note 4): the last claim found as many as it asked for, or adds
        # here stored some WAITING since.
        self._full = False
        self._halted = False  # the runtime stops: no claim starts (``halt``)
        self._pokes = 0
        self._more = True
        self._timer = Alarm(clock, self.poke)  # the pool's next delayed job comes due
        self._delay = _RETRY_AFTER[0]

    def __len__(self) -> int:
        return len(self._claimed)

    async def load(self, now: float) -> None:
        self.poke()

    def poke(self, *, stored: bool = False) -> None:
        """Jobs may be due in the store now (note 1); ``stored``: adds here stored
        some WAITING, so jobs wait (note 4)."""
        if stored:
            self._full = True
        self._pokes += 1
        self._more = True
        self._wake()

    def push(self, state: JobState) -> None:
        """A job retried here: it goes back to the store (note 3)."""
        written = state.written
        if written is None or written.done():
            self._left(state)
        else:
            written.add_done_callback(lambda _: self._left(state))

    def push_many(self, states: list[JobState]) -> None:
        for state in states:
            self.push(state)

    def _left(self, state: JobState) -> None:
        self._source.forget(state)
        if state.run_at <= self._clock.now():
            self.poke()
        else:
            self._timer.set(state.run_at)

    def ahead(self) -> int:
        """Claimed jobs not started yet, and those a claim in flight may bring where
        jobs wait: they take free slots first (note 4)."""
        waits = self._full or self._source.backlog(self.pool)
        return len(self._claimed) + (self._asking_for if waits else 0)

    def remove(self, state: JobState) -> bool:
        return False  # a claimed job starts at once; nothing waits here

    def holds(self, state: JobState) -> bool:
        return False

    gated = False  # the claim applies rate limits and locks, in the database

    def put_back(self, state: JobState) -> None:
        """A job just taken goes back to the head of the claimed (``taskrt.alone``)."""
        self._claimed.appendleft(state)

    def give_back_taken(self) -> list[asyncio.Future[None]]:
        """The claimed jobs not started go back to the store (``taskrt.alone`` note 3);
        the writes that say so."""
        if not self._claimed:
            return []
        taken = list(self._claimed)
        self._claimed.clear()
        return self._source.give_back(taken)

    def take_first(self, eligible: Callable[[JobState], bool], scan: int) -> JobState | None:
        return self.take()  # claimed jobs passed the database's gates already

    def next_slot(self, now: float) -> float:
        """Seconds until the rate limit that held back the last claim has a token."""
        when = self._source.rate_wait(self.pool)
        return 0.0 if when is None else max(0.0, when - now)

    def take(self) -> JobState | None:
        """A claimed job, or None (a claim is asked for when there may be due jobs)."""
        if self._claimed:
            return self._claimed.popleft()
        if self._more and self._asking is None and not self._halted and self._free() > 0:
            self._asking = asyncio.get_running_loop().create_task(
                self._ask(), name=f"taskrt-claim-{self.pool}"
            )
        return None

    async def _ask(self) -> None:
        pokes = self._pokes
        # Counted here, a loop turn after the slot that asked was freed: the slots
        # freed in that turn (jobs that started together end together) join it.
        limit = self._free()
        try:
            if limit <= 0:
                return
            self._asking_for = limit
            states = await self._source.claim(self.pool, limit)
        except Exception as exc:  # a pool that stopped asking would never run a job again
            if isinstance(exc, TaskrtError):
                log.warning("claiming jobs of pool %r failed: %s", self.pool, exc)
            else:
                log.exception("claiming jobs of pool %r failed", self.pool)
            self._timer.set(self._clock.now() + self._delay)
            self._delay = min(self._delay * 2, _RETRY_AFTER[1])
            return
        finally:
            self._asking = None
            self._asking_for = 0
        self._delay = _RETRY_AFTER[0]
        self._full = len(states) >= limit
        room = self._free()
        if len(states) > room:
            self._source.give_back(states[room:])  # note 2
            states = states[:room]
        self._claimed.extend(states)
        idle = len(states) < limit and self._pokes == pokes
        if idle:
            self._more = False
        self._wake()  # the claimed jobs start now, not a round trip later
        if idle:
            try:
                due = await self._source.next_due(self.pool)
            except TaskrtError as exc:
                log.warning("reading when pool %r's next job is due failed: %s", self.pool, exc)
                due = self._clock.now() + _RETRY_AFTER[1]
            if due is not None:
                self._timer.set(due)

    def next_due(self) -> float | None:
        return None  # the queue keeps its own timer

    def oldest_due(self, now: float) -> float | None:
        return None  # memory holds no waiting job

    def stored_due(self, now: float) -> bool:
        return True  # every waiting job is in the store only

    async def halt(self) -> None:
        """The runtime stops: no claim starts from now on, and one under way is
        waited for, not cancelled. Cancelled, its statement may still commit: its
        jobs were RUNNING on this node with nothing here to give them back, and
        the node's leave charged each a recovery (and an attempt) for a run that
        never began; a few quick restarts failed them as orphaned. ``close``,
        which the runtime calls next, gives back what it took. A claim that gets no
        answer in ``HALT_PATIENCE`` seconds (the database unreachable) is cancelled
        then: its jobs, if it committed, go back with the node's leave or reap."""
        self._halted = True
        self._timer.cancel()
        asking = self._asking
        if asking is not None:
            await asyncio.wait([asking], timeout=HALT_PATIENCE)

    def close(self) -> None:
        """The runtime stops: no more claims; claimed jobs not started go back."""
        self._timer.cancel()
        if self._asking is not None:  # a stop that did not halt first (a failed start)
            self._asking.cancel()
            self._asking = None
        self.give_back_taken()
        self._halted = False
