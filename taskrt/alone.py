"""A job at its last recovery runs alone in its process.

A poison pill (a handler that kills its process: a segfaulting extension, an
out-of-memory kill) is recovered after each restart and fails as orphaned
after ``max_recoveries`` recoveries (guarantees, at-least-once). But every job
running beside it dies with it and is charged a recovery too, and since the
same jobs tend to start together again after each restart (the same order, the
same free slots), a harmless neighbour reached the limit with the pill and was
failed as orphaned with it, its handler never having failed.

Design notes (cited where they apply):

1. **The last chance is taken alone.** A job whose next recovery would fail it
   (``recoveries >= max_recoveries``) starts only when nothing else runs in this
   process, and nothing else starts while it runs: if the process dies now,
   that job killed it. So no job is failed as orphaned without one run on its
   own. Jobs below the limit run as usual: one crash (a deploy, a kill) costs
   the jobs it interrupted nothing but a recovery each, and no throughput.
2. **Waiting for the process to empty.** Such a job, taken while others run,
   goes back to the head of its queue, and no pool of the process starts a job
   until the running ones have ended (or been cut short and their threads
   returned); then the job's own pool dispatches first. Slots kept for adds
   that start their job (``pool`` note 9) count as running.
3. **Where every node claims** (``taskrt.claims``), a claimed job is RUNNING in
   the database before it starts: the jobs a node holds claimed beside the
   lone job are given back when it starts, so that a pill does not charge them
   a recovery for a run that never began, and the node claims nothing while it
   runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol

RECHECK = 0.05
"""Seconds between looks at whether the process has emptied for a waiting lone job
(besides the look at each attempt's end: a thread cut short returns on its own)."""


class Job(Protocol):
    """What the rule reads of a job."""

    recoveries: int


class Seat(Protocol):
    """What the rule asks of a pool (``taskrt.pool.Pool``)."""

    def busy(self) -> bool: ...

    def _dispatch(self) -> None: ...

    def give_back_taken(self) -> list[asyncio.Future[None]]: ...


class Alone:
    """The process-wide rule of note 1: who runs alone, and who waits to."""

    def __init__(self, pools: Callable[[], Iterable[Seat]], max_recoveries: int) -> None:
        self._pools = pools
        self.max_recoveries = max_recoveries
        self.running: Job | None = None  # the job running alone
        self.waiting: Seat | None = None  # the pool whose head waits to run alone
        self._timer: asyncio.TimerHandle | None = None
        self._settling: list[asyncio.Future[None]] = []  # note 3: the give-backs' writes

    def blocks(self) -> bool:
        """Whether no job may start now but a lone one (notes 1, 2)."""
        return self.running is not None or self.waiting is not None

    def last_chance(self, state: Job) -> bool:
        return state.recoveries >= self.max_recoveries > 0

    def may_start(self, state: Job, pool: Seat) -> bool:
        """Whether ``state``, just taken from ``pool``'s queue, starts now. A lone job
        that cannot start yet makes the pools wait for the process to empty (note 2)."""
        if not self.last_chance(state):
            return not self.blocks()
        if self.running is not None or self._busy():
            self.waiting = pool
            self._recheck_later()
            return False
        self.waiting = None
        self.running = state
        for each in self._pools():  # note 3
            self._settling += each.give_back_taken()
        return True

    async def settled(self) -> None:
        """Before the lone job's handler runs: the jobs given back are WAITING on disk
        (a pill that killed the process first would have them charged, note 3)."""
        settling, self._settling = self._settling, []
        if settling:
            await asyncio.gather(*settling, return_exceptions=True)

    def ended(self, state: Job) -> None:
        """An attempt ended: the lone one lets the others start; or the process may
        be empty for the one waiting."""
        if self.running is state:
            self.running = None
            for pool in list(self._pools()):
                pool._dispatch()
        elif self.waiting is not None:
            self._recheck_later(at_once=True)

    def reset(self) -> None:
        """The runtime stops: nothing runs, nothing waits."""
        self.running = self.waiting = None
        self._settling = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _busy(self) -> bool:
        return any(pool.busy() for pool in self._pools())

    def _recheck_later(self, at_once: bool = False) -> None:
        if self._timer is not None:
            if not at_once:
                return
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(0 if at_once else RECHECK, self._recheck)

    def _recheck(self) -> None:
        self._timer = None
        pool = self.waiting
        if pool is None:
            return
        if self._busy():
            self._recheck_later()
            return
        self.waiting = None  # its pool dispatches first: its head starts alone
        pool._dispatch()
        if self.running is None and self.waiting is None:
            # The head that waited is gone (cancelled, taken elsewhere): all start.
            for each in list(self._pools()):
                each._dispatch()
