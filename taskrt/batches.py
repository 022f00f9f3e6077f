"""Batched handlers: jobs of a task gathered by key, one handler call a batch.

``@rt.task(batch=Batch(max_size=100, max_wait=5.0))`` makes each job added
with ``task.options(batch_key="user:42")`` (one argument: its item) wait,
``batching``, until ``max_size`` jobs of that key wait or the oldest has
waited ``max_wait`` seconds. Then one handler call receives every item:
``async def digest(job, items)``.

Design notes:

1. **The first member runs the batch.** Forming a batch is one store
   transaction (``JobStore.form_batch``): its oldest member, the leader, is
   released with the list of every member's item as its one argument; the
   others wait (``batched``, ``JobInfo.batch`` = the leader) as dependents of
   the leader that end as it ends (``taskrt.workflows``). So a batch is one
   attempt with the task's retries, its members reach its outcome, and a
   crash anywhere resumes from what the store holds. Counts and statistics
   count each member once; nothing else is added. Retrying the leader runs
   the batch again and puts back the members that ended with it
   (``JobStore.cancelled_by``, ``block_again``): they wait for it again.
2. **Gathering is counted where jobs run.** The process that runs the jobs
   (the owner, or each node) counts each key's waiting jobs and knows its
   oldest: from its own adds, the other nodes' ``added`` events, and a read of
   the store at start and every ``poll`` seconds (adds by other processes).
   An add told after a read that already counted it (ids grow in commit
   order: its id is not above the newest the read found) is not counted again;
   one told while a read was in flight, which the read did not see (its id is
   above the newest the read found), is counted again once the read has
   replaced the counts.
   A key whose count reaches ``max_size`` forms at once; otherwise a timer
   forms it when its oldest job has waited ``max_wait``. Two nodes forming the
   same key at once cannot share a member (``FOR UPDATE SKIP LOCKED``).
3. **The store has the last word.** Every node counts every add, so when a
   key fills up every node finds it full; the first forms the batch, and the
   others, counting on the same jobs, would have formed batches of whatever
   came in since, long before ``max_wait`` (batches of 1 and 2 on three
   nodes). So a batch forms only if the jobs the forming transaction finds
   (and locks) fill it, or the oldest of them has waited ``max_wait``
   (``form_batch``'s ``ripe_before``); a form asked for by hand
   (``form_now``) takes what there is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .background import woken
from .errors import TaskrtError
from .models import Event

if TYPE_CHECKING:
    from .clock import Clock
    from .definitions import TaskSpec
    from .store import JobStore
    from .workflows import Workflows

log = logging.getLogger("taskrt")

Key = tuple[str, str]
"""(task, batch key)."""


class Batcher:
    """Forms the batches of batched tasks where jobs run (see the notes)."""

    def __init__(
        self,
        *,
        store: JobStore,
        clock: Clock,
        tasks: Mapping[str, TaskSpec],
        workflows: Workflows,
        poll: float = 5.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.tasks = tasks
        self.workflows = workflows
        self.poll = poll
        # (task, key) -> [jobs waiting, the oldest's created_at] (note 2)
        self._open: dict[Key, list[float]] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._due: set[Key] = set()
        self._forced: set[Key] = set()  # formed whatever their size (form_now)
        # The newest job of each key a read of the store counted: an add told
        # later of a job not newer (committed before the read) is counted already.
        self._newest: dict[Key, int] = {}
        # Adds told while a read is in flight: the read replaces the counts with what
        # it saw, so those it did not see count again after it (note 2).
        self._told: list[tuple[str, str, float, int]] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- told by the engine -------------------------------------------------------------

    def added(self, task: str, key: str, created_at: float, job_id: int) -> None:
        """Job ``job_id`` joined a batch of ``key`` (committed)."""
        spec = self.tasks.get(task)
        if spec is None or spec.batch is None:
            return  # a task this process does not run
        if job_id <= self._newest.get((task, key), 0):
            return  # a read of the store counted it
        if self._told is not None:
            self._told.append((task, key, created_at, job_id))
        self._count(task, key, created_at)
        self._plan((task, key))

    def _count(self, task: str, key: str, created_at: float) -> None:
        entry = self._open.get((task, key))
        if entry is None:
            entry = self._open[task, key] = [0, created_at]
        entry[0] += 1
        entry[1] = min(entry[1], created_at)

    def heard(self, event: Event) -> None:
        """Another node's ``added`` event."""
        key = event.data.get("batch_key")
        if key is not None:
            self.added(event.task, str(key), event.at, event.job_id)

    def form_now(self, task: str, key: str) -> None:
        """Form ``key``'s batch now, whatever its size (run now of a member)."""
        self._forced.add((task, key))
        self._due.add((task, key))
        self._wake.set()

    async def form_here(self, task: str, key: str) -> None:
        """Form ``key``'s batch now, in this call: a process that runs no jobs where
        every node forms batches (a client of ``mode="nodes"``); the nodes claim it."""
        self._forced.add((task, key))
        await self._form((task, key))

    def _plan(self, which: Key) -> None:
        spec = self.tasks.get(which[0])
        entry = self._open.get(which)
        if spec is None or spec.batch is None or entry is None:
            return
        if entry[0] >= spec.batch.max_size:
            self._due.add(which)
            self._wake.set()
            return
        if which not in self._timers:
            delay = max(0.0, entry[1] + spec.batch.max_wait - self.clock.now())
            loop = asyncio.get_running_loop()
            self._timers[which] = loop.call_later(delay, self._ripe, which)

    def _ripe(self, which: Key) -> None:
        self._timers.pop(which, None)
        self._due.add(which)
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="taskrt-batches")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    async def _run(self) -> None:
        # Until stopped (as ``Workflows._run``: a swallowed cancel still ends it).
        while self._task is not None:
            try:
                await self._read()
                while self._task is not None:
                    await woken(self._wake, self.poll)
                    if not self._due:
                        break  # the poll: read the store again
                    due, self._due = sorted(self._due), set()
                    for which in due:
                        await self._form(which)
            except asyncio.CancelledError:
                raise
            except TaskrtError as exc:
                log.warning("forming batches failed (tried again): %s", exc)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("forming batches failed (tried again)")
                await asyncio.sleep(1.0)

    async def _read(self, one: Key | None = None) -> None:
        """The store's view of what gathers (all keys, or ``one``)."""
        told: list[tuple[str, str, float, int]] = []
        self._told = told
        try:
            rows = await self.store.batches_waiting(one)
        finally:
            self._told = None
        if one is None:
            self._open = {}
        else:
            self._open.pop(one, None)
        for task, key, n, oldest, last in rows:
            if (spec := self.tasks.get(task)) is not None and spec.batch is not None:
                self._open[task, key] = [n, oldest]
                self._newest[task, key] = max(last, self._newest.get((task, key), 0))
        for task, key, created_at, job_id in told:
            if (one is None or (task, key) == one) and job_id > self._newest.get((task, key), 0):
                self._count(task, key, created_at)  # committed after the read looked
        for which in list(self._timers):
            if which not in self._open and (one is None or which == one):
                self._timers.pop(which).cancel()
        for which in [one] if one is not None else list(self._open):
            self._plan(which)

    async def _form(self, which: Key) -> None:
        task, key = which
        spec = self.tasks.get(task)
        if spec is None or spec.batch is None:
            return
        timer = self._timers.pop(which, None)
        if timer is not None:
            timer.cancel()
        entry = self._open.get(which)
        if entry is not None and entry[0] < spec.batch.max_size:
            ripe = entry[1] + spec.batch.max_wait <= self.clock.now() + 0.005
            if not ripe and which not in self._forced:
                self._plan(which)
                return
        forced = which in self._forced
        self._forced.discard(which)
        now = self.clock.now()
        # Note 3: only what the store holds now may form it, unless forced.
        ripe_before = None if forced else now + 0.005 - spec.batch.max_wait
        formed = await self.store.form_batch(task, key, spec.batch.max_size, now, ripe_before)
        if formed is not None:
            leader, pool, _ = formed
            self.workflows.parents.add(leader)  # its end ends the others (note 1)
            await self.workflows.release(leader, pool)
        await self._read(which)
