"""Jobs a runtime finds in the database rather than adds itself.

At start, the owner recovers what a dead process left RUNNING (back to
WAITING, or FAILURE as orphaned after ``max_recoveries``) and reads the first
window of each pool's WAITING jobs; while it runs, it is the pools' backlog
(``taskrt.waiting``): it reads the next jobs when a window runs low and
forgets those that leave memory. It also polls for what client processes
(``workers=False``) added, cancelled or retried (runtime note 3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .background import job_logger, woken
from .context import JobState
from .errors import TaskrtError
from .models import BLOCKED_AT, EventType, JobInfo, JobStatus
from .transitions import retry_policy_of

if TYPE_CHECKING:
    from .clock import Clock
    from .definitions import TaskSpec
    from .live import LiveJobs
    from .pool import Pool
    from .store import JobStore
    from .transitions import Transitions

log = logging.getLogger("taskrt")

SEQ_GAP_AFTER_CRASH = 1_000_000


PIN_READS = 5
"""Reads ``Adoption.pin`` makes of a job that changes while each is under way."""


class Adoption:
    """Recovery at start, and the poll for other processes' changes."""

    def __init__(
        self,
        *,
        store: JobStore,
        clock: Clock,
        live: LiveJobs,
        transitions: Transitions,
        tasks: Mapping[str, TaskSpec],
        pools: Mapping[str, Pool],
        declare_pool: Callable[[str], Pool],
        max_recoveries: int,
        poll_interval: float,
    ) -> None:
        self.store = store
        self.clock = clock
        self.live = live
        self.transitions = transitions
        self.tasks = tasks
        self.pools = pools
        self.declare_pool = declare_pool
        self.max_recoveries = max_recoveries
        self.poll_interval = poll_interval
        # Told when the poll took in a change that may settle dependents (taskrt.workflows).
        self.on_settle: Callable[[], None] | None = None
        self._wake = asyncio.Event()
        self._pools_changed = False
        self._unknown: set[str] = set()  # tasks already warned about
        # Tasks of RUNNING jobs not registered here, during the owner's recovery, and
        # how many of their orphans it left RUNNING.
        self._strangers: set[str] = set()
        self._strangers_kept = 0

    async def recover(self, *, unclean: bool) -> None:
        """Jobs a dead process left RUNNING go back to WAITING, or fail as orphaned;
        then every WAITING job is taken in. ``unclean``: the last owner died."""
        now = self.clock.now()
        # After a crash, events published but not yet written (coalesced
        # progress, a retry) had sequence numbers above the stored ones; a gap
        # keeps every later event above anything a client may have seen, so a
        # stream resuming with Last-Event-ID gets a snapshot, never a hole.
        gap = SEQ_GAP_AFTER_CRASH if unclean else 0
        # An orphan of a task not registered here may have an on_failed hook that
        # only a process with the task can run: it stays RUNNING for such a process,
        # as its waiting jobs wait for one (``orphans``). Before, it was failed
        # without its hook.
        self._strangers = {
            task for task in await self.store.running_tasks() if task not in self.tasks
        }
        # Orphans count as failures of their schedules (scheduler note 6).
        self._strangers_kept = 0
        try:
            recovered, orphaned = await self.store.recover(
                now, max_recoveries=self.max_recoveries, seq_gap=gap
            )
        finally:
            self._strangers = set()
        kept, self._strangers_kept = self._strangers_kept, 0
        if recovered or orphaned:
            log.warning(
                "recovered %d interrupted job(s), failed %d orphaned%s",
                recovered,
                orphaned - kept,
                f" ({kept} more of tasks not registered here left RUNNING)" if kept else "",
            )
        self._unknown.clear()
        counts = await self.store.live_counts()
        loads = []
        for name in sorted(counts):
            if counts[name].get(JobStatus.WAITING, 0) > 0:
                loads.append(self.declare_pool(name).queue.load(now))
        await asyncio.gather(*loads)

    def failed_hooks(self) -> list[str]:
        """The tasks whose orphans a recovery leaves RUNNING for ``orphans``: those
        with an ``on_failed`` hook here, and, in the owner's recovery, those not
        registered here (``recover``)."""
        hooked = [name for name, spec in self.tasks.items() if spec.hooks.on_failed is not None]
        return hooked + sorted(self._strangers)

    def orphans(self, infos: list[JobInfo]) -> None:
        """Orphans a recovery left RUNNING (store note 22): each fails here as any
        failure with an ``on_failed`` hook, the hook in its failure's transaction;
        one of a task not registered here stays RUNNING for a process that has it."""
        for info in infos:
            if info.task not in self.tasks:
                job_logger(info).warning(
                    "job %d of task %r, not registered here, was orphaned (its process "
                    "died while running it %d times); left RUNNING, to fail with its "
                    "on_failed hook where the task is registered",
                    info.id,
                    info.task,
                    info.recoveries + 1,
                )
                self._strangers_kept += 1
                continue
            state = self.hold(info)
            if state is not None:
                self.transitions.fail_orphan(state)

    def adopt(self, info: JobInfo, *, announce: bool) -> JobState | None:
        """Take responsibility for a WAITING job found in the database: queue it."""
        state = self.hold(info)
        if state is None:
            return None
        if announce:
            self.transitions.emit(
                state, EventType.ADDED, {"run_at": info.run_at, "priority": info.priority}
            )
        self.declare_pool(info.pool).push(state)
        return state

    def hold(self, info: JobInfo) -> JobState | None:
        """A live state for a job read from the database, WAITING (not queued) or an
        orphan left RUNNING (``orphans``); None when its task is unknown here."""
        spec = self.tasks.get(info.task)
        if spec is None:
            if info.task not in self._unknown:
                self._unknown.add(info.task)
                job_logger(info).warning(
                    "job %d has unknown task %r; left waiting", info.id, info.task
                )
            return None
        state = JobState(info, spec, retry_policy_of(info, spec))
        self.live.states[info.id] = state
        if info.unique_key is not None:
            self.live.unique[info.unique_key] = info.id
        return state

    # -- the pools' backlog (taskrt.waiting) ------------------------------------

    async def load_ready(
        self, pool: str, now: float, limit: int, after: tuple[int, float, int] | None
    ) -> tuple[list[JobState], int, tuple[int, float, int] | None]:
        with self.live.changes_during() as changed:
            rows = await self.store.ready_jobs(pool, now, limit, after)
        last = None if not rows else (rows[-1].priority, rows[-1].run_at, rows[-1].id)
        return self._held(rows, changed), len(rows), last

    async def load_delayed(
        self, pool: str, after: tuple[float, int], limit: int
    ) -> tuple[list[JobState], int, tuple[float, int] | None]:
        with self.live.changes_during() as changed:
            rows = await self.store.delayed_jobs(pool, after, limit)
        last = None if not rows else (rows[-1].run_at, rows[-1].id)
        return self._held(rows, changed), len(rows), last

    def _held(self, rows: list[JobInfo], changed: set[int]) -> list[JobState]:
        """States for the rows not held here already (waiting note 5), nor of jobs
        that changed while they were read (``LiveJobs.changes_during``): the store
        holds those as they are now, for a later read."""
        states = []
        live = self.live.states
        for info in rows:
            if info.id in live or info.status is not JobStatus.WAITING or info.id in changed:
                continue
            state = self.hold(info)
            if state is not None:
                states.append(state)
        return states

    def shelve(self, state: JobState) -> None:
        """The job leaves memory; its committed row stays the truth. A row of it read
        before now may be older than what memory knew (its run, a retry): the reads
        under way must not take it in (``LiveJobs.changes_during``)."""
        if self.live.states.get(state.id) is state:
            del self.live.states[state.id]
            self.live.changed(state.id)
        self.live.release_key(state)

    async def pin(self, job_id: int) -> JobState | None:
        """The live state of a WAITING job, read from the database if it is not in memory
        (held, so that no refill queues it while an action is under way), or None."""
        for _ in range(PIN_READS):
            state = self.live.states.get(job_id)
            if state is not None:
                return state
            info, fresh = await self._read(job_id)
            state = self.live.states.get(job_id)  # a refill may have read it meanwhile
            if state is not None:
                return state
            if fresh:
                return (
                    None
                    if info is None or info.status is not JobStatus.WAITING
                    else self.hold(info)
                )
            # It changed here while it was read (a release, a cancel): the row may be
            # older than that; read again, or the caller would act on the row alone
            # (an action on a job memory is about to hold).
        return self.live.states.get(job_id)

    def forget(self, state: JobState) -> None:
        """A waiting job leaves memory, its pool's queue too (its row stays the truth)."""
        pool = self.pools.get(state.pool)
        if pool is not None:
            pool.remove(state)
        self.shelve(state)

    def unpin(self, state: JobState) -> None:
        """An action that pinned a waiting job does not go on with it: unless a pool
        holds it, it leaves memory again (its row stays the truth). Left held, a
        copy read before a change (a release) would hide the job from refills."""
        pool = self.pools.get(state.pool)
        if state.status is JobStatus.WAITING and (pool is None or not pool.holds(state)):
            self.shelve(state)

    async def read(self, job_id: int) -> JobInfo | None:
        """A job's row, or None where there is none or the job changed while it was
        read (the row may be older than that change: ``LiveJobs.changes_during``)."""
        info, fresh = await self._read(job_id)
        return info if fresh else None

    async def _read(self, job_id: int) -> tuple[JobInfo | None, bool]:
        """A job's row (None: no row), and whether the job did not change meanwhile."""
        with self.live.changes_during() as changed:
            info = await self.store.get_job(job_id)
        return info, job_id not in changed

    # -- starts the store could not make (store note 20) ----------------------------

    def unstarted(self, job_ids: list[int]) -> None:
        """The store's word that these jobs' starts changed no row (another process
        changed them first): their runners must not run them (``taskrt.pool`` note 5).
        Called before the starts' futures resolve."""
        for job_id in job_ids:
            state = self.live.states.get(job_id)
            if state is not None and state.status is JobStatus.RUNNING:
                state.unstarted = True

    async def not_started(self, state: JobState) -> None:
        """A job its runner did not run (``unstarted``): memory takes in its row. A
        job another process ended ends here too (its event, its waiters); one put
        back to WAITING is queued as the row says; anything else leaves memory."""
        info: JobInfo | None = None
        fresh = False
        for _ in range(PIN_READS):
            try:
                info, fresh = await self._read(state.id)
            except TaskrtError as exc:
                job_logger(state).warning(
                    "job %d was not started; reading it failed: %s", state.id, exc
                )
                break
            if fresh:
                break
        if self.live.states.get(state.id) is not state:
            return  # taken care of meanwhile
        state.unstarted = False
        if fresh and info is not None and info.terminal:
            state.seq = max(state.seq, info.seq)
            data = {"result": info.result} if info.status is JobStatus.SUCCESS else {}
            # A cancel is counted by the process that wrote it (``Runtime.cancel``).
            self.transitions.finalize(
                state,
                info.status,
                data,
                error=info.error,
                write=False,
                counted=info.status is JobStatus.CANCELLED,
            )
            return
        self.shelve(state)
        if fresh and info is not None and info.status is JobStatus.WAITING:
            self.adopt(info, announce=False)
            return
        job_logger(state).warning(
            "job %d was not started: the store holds it as %s",
            state.id,
            "gone" if info is None else info.status.value,
        )

    def wake(self, what: str = "changed") -> None:
        """Another process committed something for the owner: look now (the store's
        ``listen``), not at the next ``poll_interval``; ``"pools"``: an operator
        paused or resumed a pool."""
        if what == "pools":
            self._pools_changed = True
        self._wake.set()

    async def poll(self) -> None:
        """Pick up what client processes wrote, every ``poll_interval`` (runtime note 3),
        or at once when the store tells of it (``wake``)."""
        self._wake = asyncio.Event()
        while True:
            await woken(self._wake, self.poll_interval)
            try:
                if self._pools_changed:
                    self._pools_changed = False
                    await self.apply_pauses()
                await self.poll_once()
            except TaskrtError:
                log.exception("polling for external jobs failed")
            except Exception:
                # A defect in one poll must not stop the polls after it: the rows it
                # did not clear are read again at the next.
                log.exception("polling for external jobs failed (tried again)")
                await asyncio.sleep(self.poll_interval)

    async def apply_pauses(self) -> None:
        """The pauses operators recorded, as they stand now, on this owner's pools."""
        for name, paused in (await self.store.pool_pauses()).items():
            pool = self.pools.get(name) or self.declare_pool(name)
            if paused and not pool.paused:
                pool.pause()
            elif not paused and pool.paused:
                pool.resume()

    async def poll_once(self) -> None:
        with self.live.changes_during() as meanwhile:
            changed = await self.store.external_changes()
        for info, cancel_requested in changed:
            if info.id in meanwhile:
                # It changed here while it was read: the row may be older than that.
                # Left marked, the next poll reads it again.
                self._wake.set()
                continue
            state = self.live.states.get(info.id)
            written = None if state is None else state.written
            if written is not None and not written.done():
                # Memory put it back to WAITING (a retry) and its row is still queued:
                # the row read is older (a cancel that retry undid). Read it again once
                # that write is committed.
                written.add_done_callback(lambda _: self._wake.set())
                continue
            if (
                state is not None
                and info.terminal
                and state.status is JobStatus.WAITING
                and info.seq < state.seq
            ):
                # The same, its write committed while the row was read: a cancel read
                # from before a retry here. Left marked, the next poll reads it as it is.
                self._wake.set()
                continue
            # Queued first, so it lands before anything this owner writes of the job
            # now (it clears only what was read: store note on clear_external).
            self.store.clear_external(info.id, info.seq, cancel_requested)
            if info.status is JobStatus.WAITING and state is None:
                if info.run_at >= BLOCKED_AT:
                    pass  # blocked: it waits for its settle (below)
                elif not cancel_requested:
                    self.adopt(info, announce=True)
                elif (held := self.hold(info)) is not None:
                    # Asked to stop while it ran here, then retried and shelved: the
                    # cancel was for the job (store note 21).
                    self.transitions.finalize(held, JobStatus.CANCELLED, {})
            elif (
                cancel_requested
                and info.status is JobStatus.WAITING
                and state is not None
                and state.status is JobStatus.WAITING
            ):
                # Asked to stop while it ran, and put back for a retry since: the
                # cancel was for the job (store note 21).
                self.pools[state.pool].remove(state)
                self.transitions.finalize(state, JobStatus.CANCELLED, {})
            elif (
                info.status is JobStatus.WAITING
                and state is not None
                and state.status is JobStatus.WAITING
                and info.run_at != state.run_at
            ):
                # "Run now" from a process that could not reach the owner. A job out of
                # its queue is in an action's hands (the owner's own run now, waiting
                # for its write): that action queues it, and a second push here would
                # queue it again once it runs.
                pool = self.pools[state.pool]
                if pool.remove(state):
                    state.update(run_at=info.run_at)
                    pool.push(state)
            elif info.status is JobStatus.CANCELLED and state is not None:
                if state.status is JobStatus.WAITING:
                    self.pools[state.pool].remove(state)
                    state.seq = max(state.seq, info.seq)
                    self.transitions.finalize(  # counted where it was written
                        state, JobStatus.CANCELLED, {}, write=False, counted=True
                    )
                elif state.status is JobStatus.RUNNING:
                    self.pools[state.pool].cancel_running(state)
            elif cancel_requested and state is not None and state.status is JobStatus.RUNNING:
                self.pools[state.pool].cancel_running(state)
        # A job another process ended, or blocked again on its parents (a retry), may
        # release or cancel dependents: the workflows settle now, not at their sweep.
        # (A job this poll ends itself tells the workflows through its end: on_end.)
        if self.on_settle is not None and any(
            info.terminal or info.run_at >= BLOCKED_AT
            for info, _ in changed
            if info.id not in meanwhile
        ):
            self.on_settle()
