"""Deadlines of waiting jobs: a job not started by its deadline ends.

``options(deadline=...)`` says when a job is of no use any more. A pool that
takes a job after its deadline ends it instead of starting it (pool note 6),
but a job may never be taken: its pool is paused, busy with other work, or
its ``run_at`` lies past the deadline. ``Deadlines`` finds those in the store
and ends them at their deadline.

Design notes:

1. **The store knows.** The waiting jobs whose deadline passed are one indexed
   read (``jobs_deadline``, a partial index that only jobs with a deadline
   pay for), so the check costs nothing where no job has a deadline and does
   not grow with the backlog: no timer per job, nothing held in memory.
2. **On time, and polled.** The sweeper sleeps until the earliest deadline of a
   waiting job, and at most ``interval`` (jobs added by other processes are
   found by then): a job ends within ``interval`` of its deadline, usually at
   once. A job this process adds with a deadline before the sweeper's next
   look wakes it (``added``); before, it waited out the sleep begun before it
   and ended up to a whole interval (and the sweep's time) late. A wake that
   comes while the sweeper looks is kept for its next sleep (cleared before
   the look, not after), and the next look is at the earliest deadline
   after the sweep's last read: the jobs the sweep just ended may still read
   WAITING (their ends are queued), and taken for the next deadline they made
   the sweeper sleep a whole interval past the next job's. Not after *now*: a
   deadline that passed while the sweep ended jobs (a few milliseconds on
   PostgreSQL's nodes, each end a locked compare-and-set) was then neither
   swept nor upcoming, and its job ended an interval late.
3. **The host ends it, once.** Ending a job is the runtime's. The owner holds
   its waiting jobs: it takes the job out of its pool's queue first and ends
   that state through ``Transitions.deadline_passed`` (FAILURE ``deadline
   passed``, the ``on_failed`` hook in its transaction, never a retry), which
   ends a state once: the pool may take the same job meanwhile (pool note 6),
   and a hooked failure stays WAITING in memory until its transaction runs.
   No node holds a waiting job (``taskrt.nodes``): a node reads it, and any
   node may claim it while it does. Its end (``Transitions.end_as_read``)
   locks the row and writes FAILURE only if it is still WAITING as read (a
   compare-and-set; the hook in the same transaction), and tells nothing
   (event, counts, hooks) unless it landed: a claim that came first ends the
   job as a claimed one. Before, a node ended the job from its read: its
   FAILURE, a belief of WAITING that the store takes as a guess, landed on
   the row its own claim had just made RUNNING (or was refused after another
   node's end), while its event and hooks went out either way: a job ended
   twice or three times, and a wait woken by the first end read the job
   RUNNING (or still WAITING).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .errors import TaskrtError

if TYPE_CHECKING:
    from .clock import Clock
    from .store import JobStore

log = logging.getLogger("taskrt")

DEFAULT_INTERVAL = 1.0
"""The longest a job waits past its deadline before it ends (note 2)."""
_BATCH = 500  # jobs ended per read


class Deadlines:
    """Ends the waiting jobs whose deadline passed (see the module notes)."""

    def __init__(
        self,
        store: JobStore,
        clock: Clock,
        end: Callable[[int], Awaitable[None]],
        *,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.store = store
        self.clock = clock
        self.end = end  # ends one job, if it is still WAITING past its deadline (note 3)
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._wakes_at = 0.0  # when the sweeper looks next; inf while it looks (note 2)
        self._swept_to = 0.0  # the time of the sweep's last read (note 2)
        self.ended = 0

    def added(self, deadline: float) -> None:
        """A job with ``deadline`` was added here: the sweeper looks then (note 2)."""
        if self._task is not None and deadline < self._wakes_at:
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="taskrt-deadlines")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def sweep(self) -> int:
        """End every waiting job whose deadline passed; how many there were."""
        ended = 0
        seen: list[int] = []
        while True:
            self._swept_to = now = self.clock.now()
            ids = await self.store.deadlines_passed(now, _BATCH)
            if ids == seen:
                # None of them ended (their tasks are not registered here): reading
                # them again would spin; a process that has their tasks ends them.
                break
            for job_id in ids:
                await self.end(job_id)
            ended += len(ids)
            if len(ids) < _BATCH:
                break
            seen = ids
        self.ended += ended
        return ended

    async def _run(self) -> None:
        while True:
            wait = self.interval
            # A job added from here on wakes the next sleep (note 2).
            self._wake.clear()
            self._wakes_at = math.inf
            try:
                await self.sweep()
                # One passed and not ended is a job this process cannot end (its
                # task is not registered here): the next poll looks again.
                upcoming = await self.store.next_deadline(self._swept_to)
                if upcoming is not None:
                    wait = max(0.0, min(wait, upcoming - self.clock.now()))
            except TaskrtError as exc:
                log.warning("ending jobs past their deadline failed: %s", exc)
            except Exception:
                log.exception("ending jobs past their deadline failed")
            await self._sleep(wait)

    async def _sleep(self, seconds: float) -> None:
        """Until ``seconds`` have passed on the runtime's clock (a fake one in tests),
        or a job added here wakes it (note 2)."""
        self._wakes_at = self.clock.now() + seconds
        timer = self.clock.call_at(self._wakes_at, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()


__all__ = ["DEFAULT_INTERVAL", "Deadlines"]
