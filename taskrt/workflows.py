"""Workflows: jobs that wait for other jobs, chains, and groups with a callback.

A job added with parents (``options(after=[ids])``, or a step of ``rt.chain``
/ ``rt.group(...).then(...)``) waits in the store until they end; a workflow
is the jobs one chain or group added together, named by its first job's id.

Design notes:

1. **Blocked jobs live in the store.** A job with parents is stored WAITING,
   waiting reason ``blocked``, ``run_at`` at ``models.BLOCKED_AT``, with one
   ``job_deps`` row per parent and a ``job_waits`` row that counts the parents
   still open (``taskrt.store.deps``). No refill, claim or timer takes it
   before then, and nothing of it is held in memory: a backlog of blocked jobs
   costs what any backlog costs.
2. **Settled after commits, in the store.** When a parent's terminal write is
   committed, ``JobStore.settle_deps`` closes its open rows and, in the same
   transaction, releases each dependent whose parents all ended (its run_at
   now, its parents' results put first in its arguments as a chain or a
   callback asked) or cancels it when a parent failed or was cancelled (unless
   it said ``on_parent_failure="run"``). The rows it closes are the guard: a
   second settle of the same parent changes nothing, so repeating one, or
   running one on two processes at once, is safe. The owner then hands each
   released job to its pool. Memory may hold it first: released (a refill
   read it: queued, or even started) or ended (a cancel whose write had not
   committed), both left as they are; or a copy read while it was blocked,
   replaced by a read made after the release committed.
3. **Whichever commits second sees the other.** A dependent's add and its
   parent's end may commit in either order. After the add commits, its parents
   that are not live here are settled (one may have ended already); after a
   parent's terminal write commits, it is settled if it is known to have
   dependents (``Workflows.parents``: the owner sees every add; a node learns
   of its own adds and reads the open parents when it starts). An owner's poll
   that takes in another process's change that may matter (a blocked add, an
   end, a retry that blocked a dependent again) reads the open parents again
   and settles at once (``sweep_now``). Anything missed (a crash between a
   commit and its settle, a parent that ended on another node) is found by a
   sweep at start and every ``sweep_interval`` seconds.
4. **Retention keeps what a blocked job needs.** Cleanup and purge never
   delete a finished job that a blocked job still waits for, nor one whose
   dependent a retry of another parent would make wait again (note 6: the
   dependent was cancelled by that parent's end, which has not succeeded
   since); ``store.deps.KEEP_PARENTS``.
5. **A success is settled when it matters.** Where one owner runs the jobs
   and a dependent's parents were all live here when it was added (a group's
   callback, a chain's step), the owner counts its parents down in memory:
   a parent's success is held (its row stays open, which is what the store
   holds after a crash too) until the dependent's last parent ends, then all
   are settled in one transaction. A group of 10,000 costs one settle, not
   one per member. A failure or cancel is settled at once (it cancels), and
   counted down like a success: a dependent that runs anyway
   (``on_parent_failure="run"``) is released as its last parent ends, with
   the successes held for it. Anything the owner did not follow is settled as
   it ends.
6. **A manual retry resumes a workflow.** A dependent that was cancelled
   before its release (a parent failed, or a cancel by hand) is blocked again
   on its parents when it is retried (``JobStore.block_again``), and counted
   here like a new one (``dependents``); retrying a parent does that for the
   dependents its end cancelled (``JobStore.cancelled_by``), and theirs, and
   for those another failed parent's end cancelled, once that one was retried
   too (``block_again`` refuses them before). So a dependent never runs
   without its parents' results.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .adding import FlowStep
from .background import woken
from .definitions import Signature
from .errors import InvalidOption, TaskrtError, WorkflowNotFound
from .events import check_buffer
from .limits import check_job_id
from .models import BLOCKED_AT, TERMINAL, Event, EventType, JobInfo, JobStatus, WorkflowInfo

if TYPE_CHECKING:
    from .adoption import Adoption
    from .clock import Clock
    from .context import JobState
    from .events import EventBus, Subscription
    from .live import LiveJobs
    from .pool import Pool
    from .store import JobStore
    from .store.protocol import CancelledChild
    from .transitions import Transitions

log = logging.getLogger("taskrt")

SWEEP_INTERVAL = 5.0
"""Seconds between sweeps for dependencies nobody settled (note 3); a node's: 1 s."""

MAX_STEPS = 10_000
"""The most jobs one workflow adds at once."""


class Workflows:
    """Settles dependencies where jobs run: an owner, or each node (see the notes)."""

    def __init__(
        self,
        *,
        store: JobStore,
        clock: Clock,
        live: LiveJobs,
        pools: Mapping[str, Pool],
        adoption: Adoption,
        transitions: Transitions,
        nodes: bool,
        sweep_interval: float | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.live = live
        self.pools = pools
        self.adoption = adoption
        self.transitions = transitions
        self.nodes = nodes
        self.sweep_interval = sweep_interval or (1.0 if nodes else SWEEP_INTERVAL)
        # Jobs that some blocked job waits for (note 3): settled when they end here.
        self.parents: set[int] = set()
        self._due: set[int] = set()
        # Where one owner sees every add (note 5): each parent's dependents, each
        # dependent's parents not ended yet, and the successes held for it.
        self._children: dict[int, list[int]] = {}
        self._left: dict[int, int] = {}
        self._held: dict[int, list[int]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Read the open parents again before the next settle (``sweep_now``).
        self._reread = True

    # -- told by the engine -------------------------------------------------------------

    def dependents(self, child: int, parents: Sequence[int]) -> None:
        """A job that waits for ``parents`` was committed (note 3)."""
        self.parents.update(parents)
        states = self.live.states
        due = [p for p in parents if (s := states.get(p)) is None or s.status in TERMINAL]
        if due:
            self._due.update(due)
            self._wake.set()
        elif not self.nodes:
            # Every parent is live here: their successes are held until the last
            # (note 5).
            self._left[child] = len(parents)
            for p in parents:
                self._children.setdefault(p, []).append(child)

    def parent(self, job_id: int) -> None:
        """A job that some blocked job waits for was claimed here (a node)."""
        self.parents.add(job_id)

    def heard(self, event: Event) -> None:
        """Another node added a job: those of its parents that run here are settled
        when they end here (a node, note 3)."""
        after = event.data.get("after")
        if not after:
            return
        for job_id in after:
            state = self.live.states.get(job_id)
            if state is None:
                continue
            if state.status in TERMINAL:
                self._due.add(job_id)
                self._wake.set()
            else:
                self.parents.add(job_id)

    def ended(self, job_id: int, status: JobStatus | None = None) -> None:
        """A job's terminal write was queued here (``status``: how it ended, if known):
        settle it once committed, or hold its success until its dependents' last
        parent ends (note 5)."""
        held = self._held.pop(job_id, None)
        if held is not None or job_id in self._left:
            self._left.pop(job_id, None)  # a dependent that ended itself (a cancel)
            self._due.update(held or ())
            self._wake.set()
        if job_id not in self.parents:
            return
        self.parents.discard(job_id)
        children = self._children.pop(job_id, None)
        success = status is JobStatus.SUCCESS
        if children is None or not success:
            self._due.add(job_id)  # a failure or cancel is settled at once (note 5)
            self._wake.set()
            if children is None:
                return
        for child in children:
            left = self._left.get(child)
            if left is None:  # not followed here (any more)
                self._due.add(job_id)
                continue
            if success:
                self._held.setdefault(child, []).append(job_id)
            # Counted down either way: the last parent's end settles what is held,
            # releasing a dependent that runs anyway (note 5).
            if left > 1:
                self._left[child] = left - 1
            else:
                del self._left[child]
                self._due.update(self._held.pop(child, ()))
        if self._due:
            self._wake.set()

    def sweep_now(self) -> None:
        """Another process added dependents or changed jobs (an end, a retry): read
        which jobs are parents and settle every finished one now (note 3), rather
        than at the next sweep."""
        self._reread = True
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="taskrt-workflows")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        self._reread = True
        # Until stopped: ``stop`` forgets the task first, so a cancel that Python
        # 3.11's timeouts swallowed (the wait ending as it came) still ends the loop.
        while self._task is not None:
            try:
                if self._reread:  # at start, and when told (``sweep_now``)
                    self._reread = False
                    self.parents.update(await self.store.open_parents())
                    await self.settle(None)
                await woken(self._wake, self.sweep_interval)
                if self._reread:
                    continue
                if self._due:
                    due, self._due = sorted(self._due), set()
                    await self.settle(due)
                else:
                    await self.settle(None)
            except asyncio.CancelledError:
                raise
            except TaskrtError as exc:
                log.warning("settling dependencies failed (tried again): %s", exc)
                await asyncio.sleep(min(self.sweep_interval, 1.0))
            except Exception:
                log.exception("settling dependencies failed (tried again)")
                await asyncio.sleep(min(self.sweep_interval, 1.0))

    async def settle(self, parents: Sequence[int] | None) -> None:
        """Settle ``parents`` (None: every finished parent) once their ends are
        committed, then what that releases or cancels, until nothing more follows."""
        while True:
            await self.store.settle()  # the terminal writes queued so far, committed
            settled = await self.store.settle_deps(parents, self.clock.now())
            for child, pool in settled.released:
                await self.release(child, pool)
            if not settled.cancelled:
                return
            cascade = []
            for child_info in settled.cancelled:
                self._cancelled(child_info)
                cascade.append(child_info.job_id)
                self._left.pop(child_info.job_id, None)
                cascade.extend(self._held.pop(child_info.job_id, ()))
            self.parents.difference_update(cascade)
            parents = cascade

    async def release(self, job_id: int, pool_name: str) -> None:
        """A job the store made due (released, or a batch's leader): to its pool."""
        pool = self.pools.get(pool_name)
        if self.nodes:
            if pool is not None:
                pool.poke()  # a claim takes it (taskrt.claims)
            return
        # A read under way began before the release: what it finds is older.
        self.live.changed(job_id)
        # Memory may hold the job already: released (a refill read it: queued, or even
        # started), ended (a cancel not committed when the release was), both left as
        # they are; or a copy of it blocked (read into a delayed window before the
        # release), read again.
        state = self.live.states.get(job_id)
        if state is None or _blocked_copy(state):
            if state is not None:
                self.adoption.forget(state)
            info = await self.adoption.read(job_id)  # after the release committed
            state = self.live.states.get(job_id)  # a refill may have read it meanwhile
            if state is not None and _blocked_copy(state):
                self.adoption.forget(state)
                state = None
            if state is None:
                if info is None or info.status is not JobStatus.WAITING:
                    return
                state = self.adoption.hold(info)
        if state is not None and state.status is JobStatus.WAITING:
            self.pools[state.pool].push(state)

    def _cancelled(self, child: CancelledChild) -> None:
        self.live.changed(child.job_id)  # a read under way finds it blocked: older
        held = self.live.states.get(child.job_id)
        if held is not None:
            self.adoption.forget(held)
        self.transitions.ended_in_store(child)


def _blocked_copy(state: JobState) -> bool:
    """A waiting job's state read while the store held it blocked (or batching)."""
    return state.status is JobStatus.WAITING and state.run_at >= BLOCKED_AT


# -- building workflows (pure) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flow:
    """A workflow just added: its id (its first job's) and its jobs' ids, in order
    (a group's callback last)."""

    id: int
    jobs: tuple[int, ...]


class GroupBuilder:
    """What ``rt.group([...])`` returns: await it to add the group alone, or
    ``await group.then(callback.s(...))`` to add it with its callback (a chord)."""

    def __init__(self, add: Callable[[Signature | None, Any], Awaitable[Flow]]) -> None:
        self._add = add

    def then(self, callback: Signature, *, tx: Any = None) -> Awaitable[Flow]:
        return self._add(callback, tx)

    def add(self, *, tx: Any = None) -> Awaitable[Flow]:
        """The group alone, in the application's transaction ``tx``."""
        return self._add(None, tx)

    def __await__(self) -> Generator[Any, None, Flow]:
        return self._add(None, None).__await__()


def chain_steps(signatures: Sequence[Signature]) -> list[FlowStep]:
    """A chain: each step after the one before, taking its result first."""
    _check(signatures, "chain")
    return [
        FlowStep(sig) if k == 0 else FlowStep(sig, (-k,), "result")
        for k, sig in enumerate(signatures)
    ]


def group_steps(signatures: Sequence[Signature], then: Signature | None) -> list[FlowStep]:
    """A group (every member at once), and its callback after all of them, taking
    the list of their results in order (a chord)."""
    _check(signatures, "group")
    steps = [FlowStep(sig) for sig in signatures]
    if then is not None:
        _check([then], "then")
        steps.append(FlowStep(then, tuple(-(k + 1) for k in range(len(signatures))), "results"))
    return steps


def _check(signatures: Sequence[Signature], what: str) -> None:
    if isinstance(signatures, Signature) or not isinstance(signatures, list | tuple):
        raise InvalidOption(
            what, f"expected a list of signatures (task.s(...)), found {signatures!r}"
        )
    if not signatures:
        raise InvalidOption(what, "expected at least one signature")
    if len(signatures) > MAX_STEPS:
        raise InvalidOption(
            what, f"expected at most {MAX_STEPS} signatures, found {len(signatures)}"
        )
    for sig in signatures:
        if not isinstance(sig, Signature):
            raise InvalidOption(what, f"expected signatures (task.s(...)), found {sig!r}")


# -- reading and following one ------------------------------------------------------------


async def read(
    store: JobStore,
    live: LiveJobs,
    workflow_id: int,
    told: Callable[[JobInfo], JobInfo],
    here: str | None = None,
) -> WorkflowInfo:
    """A workflow as stored, with what this process holds newer in memory. A job
    read RUNNING here (``here``: this node's name, if a node) that is not held
    here any more ended while the rows were read: it is read again."""
    jobs, edges = await store.workflow(workflow_id)
    if not jobs:
        raise WorkflowNotFound(workflow_id)
    states = live.states
    out: list[JobInfo] = []
    for job in jobs:
        state = states.get(job.id)
        if state is not None:
            job = state.info()
        elif job.status is JobStatus.RUNNING and job.node in (None, here):
            job = await store.get_job(job.id) or job
        out.append(told(job))
    return WorkflowInfo.of(workflow_id, out, edges)


def snapshot_event(info: WorkflowInfo, now: float) -> Event:
    """A workflow stream's first event (and its first after a gap)."""
    first = info.jobs[0]
    return Event(
        info.id,
        0,
        EventType.SNAPSHOT,
        first.task,
        first.pool,
        info.status,
        now,
        {"workflow": info.to_dict()},
    )


class WorkflowStream:
    """``rt.subscribe_workflow(id)``: a snapshot of the workflow, then every event of
    its jobs, until all of them are terminal; after a gap (a slow reader), a fresh
    snapshot. An async iterator, and an async context manager."""

    def __init__(
        self,
        broker: EventBus,
        workflow_id: int,
        read: Callable[[], Any],
        clock: Clock,
        buffer: int | None,
        *,
        relayed: Callable[[], bool] = lambda: True,
        poll_interval: float = 0.5,
    ) -> None:
        # Checked before the broker knows of the stream (it subscribes on the first
        # read): a bad buffer would fail every publish that reaches it.
        check_job_id(workflow_id, "workflow_id")
        check_buffer(buffer)
        self._broker = broker
        # A process no event reaches (a client away from the owner) reads the
        # workflow every ``poll_interval`` and sends a snapshot when it changed.
        self._relayed = relayed
        self._poll_interval = poll_interval
        self.workflow_id = workflow_id
        self._read = read
        self._clock = clock
        self._buffer = buffer
        # The workflow's jobs (a set fixed when it was added), known after the first read.
        self._ids: set[int] | None = None
        self._open: set[int] = set()
        self._seq: dict[int, int] = {}
        self._sub: Subscription | None = None
        self._done = False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        if not self._relayed():
            async for event in self._polled():
                yield event
            return
        try:
            while not self._done:
                yield await self._snapshot()
                if self._done:
                    return
                assert self._sub is not None
                async for event in self._sub:
                    seen = self._seq.get(event.job_id)
                    if seen is None or event.seq <= seen:
                        continue  # not its job (the first read named none yet), or seen already
                    self._seq[event.job_id] = event.seq
                    if event.terminal:
                        self._open.discard(event.job_id)
                    yield event
                    if not self._open:
                        self._done = True
                        return
                if not self._sub.overflowed:
                    return  # closed
        finally:
            self.close()

    async def _snapshot(self) -> Event:
        while True:
            self.close()
            # Subscribed before the read, so nothing between the two is lost: what
            # changes while the rows are read (a dependent the store cancels, a job
            # that ends) is either in the snapshot or an event after its seq. Until
            # the first read names the workflow's jobs, every job's events are taken.
            sub = self._sub = self._broker.subscribe(
                None, accepts=self._accepts, matches=self._mine, maxsize=self._buffer
            )
            info: WorkflowInfo = await self._read()
            if self._ids is None:
                self._ids = {j.id for j in info.jobs}
                if sub.overflowed:
                    continue  # others' events filled it: read again, taking only its own
            self._open = {j.id for j in info.jobs if not j.terminal}
            self._seq = {j.id: j.seq for j in info.jobs}
            if not self._open:
                self._done = True
            return snapshot_event(info, self._clock.now())

    async def _polled(self) -> AsyncIterator[Event]:
        seen: tuple[tuple[int, int, str], ...] | None = None
        while True:
            info: WorkflowInfo = await self._read()
            now = tuple((j.id, j.seq, j.status.value) for j in info.jobs)
            if now != seen:
                seen = now
                yield snapshot_event(info, self._clock.now())
            if info.terminal:
                return
            await asyncio.sleep(self._poll_interval)

    def _accepts(self, job_id: int) -> bool:
        return self._ids is None or job_id in self._ids

    def _mine(self, event: Event) -> bool:
        return self._ids is None or event.job_id in self._ids

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close()

    async def __aenter__(self) -> WorkflowStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
