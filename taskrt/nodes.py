"""Every node runs workers: the life of one node of a PostgreSQL database.

``Runtime(url, mode="nodes")`` makes each process a node: no process owns
the jobs; each claims due jobs for its free slots (``taskrt.claims``,
``PgStore.claim``), runs them and writes their ends. ``Nodes`` is what a node
does besides running them.

Design notes:

1. **A node is a row with a heartbeat.** At start the node records itself in
   ``nodes`` (host, pid, TTL); a thread of its own refreshes the row every
   ``ttl / 5`` seconds on a connection of its own
   (``store.postgres.heartbeat``), so a handler that blocks the event loop
   does not make a live node look dead.
2. **Any node reaps.** Every ``ttl / 10`` seconds each node deletes the rows
   older than their TTL and, in the same transaction, puts the RUNNING jobs
   of no live node back as recovery does after a crash: the interrupted
   attempt recorded, WAITING again, or FAILURE as orphaned after
   ``max_recoveries`` (``PgStore.reap``). At start a node does it for every
   such job, whoever left it (an owner of ``mode="owner"`` included).
3. **Fenced by node.** A job claimed here carries this node's id; every write
   of a RUNNING job names the node that writes it (the session's
   ``taskrt.node``) and lands only if the job still runs there. A node whose
   heartbeat has not landed for ``0.6 * ttl`` seconds stops starting jobs and
   interrupts its running ones (their writes put them back to WAITING while
   it can still write); its late writes after the others took its jobs back
   are refused, so no job ends twice. A claim needs a fresh heartbeat too.
   When beats land again the node goes on; if its row was reaped meanwhile it
   first waits for its interrupted jobs to end, writes out what it queued,
   and joins again. The heartbeat's age is checked every ``ttl / 10`` seconds
   by a loop that waits on nothing but the clock: a node cut off from the
   database without a reset (a partition) has its statements hang, and it
   checked at the reaper's pace, whose statement hung too, so it never fenced
   and ran its jobs on while another node ran them again.
4. **Told, and polling slowly.** A node listens on the schema's channel:
   ``added:<pool>`` (sent by the statement that adds, so at its commit, with
   the adding node's name: that node ignores its own, having looked already)
   makes that pool claim; ``changed`` (a cancel, a retry, run now, recovered
   jobs) makes every pool claim and looks for cancels of its running jobs;
   ``pools`` applies pauses and the limits set at run time (``PATCH
   /pools/{name}`` on any node: the concurrency and capacity recorded in
   ``pool_settings``, which nodes joining later apply too). Every
   ``poll_interval`` (at least a second) it does all of that anyway: a lost
   notification costs latency, never a job. A recorded rate this release
   refuses (an older one took more: ``taskrt.rates`` note 3) leaves the pool's
   own, with one warning, and the other limits apply.
5. **Limits every node shares.** A lock key is the database's: a claim skips
   jobs whose key a running job holds, takes at most one job per key, and the
   deferred exclusion constraint ``jobs_locks`` refuses the commit of a second
   claim that raced for a key. An attempt that ended while its handler runs on
   (a sync handler's thread, a coroutine that ignored its cancel) holds its key
   on in ``held_locks``, written with its end, until the handler returns or a
   reap finds its node gone (``taskrt.gates`` note 4). Rate limits are rows every node draws from
   (``rate_buckets``): a claim first draws tokens from its pool's bucket (up to
   its free slots) and from each rate-limited task's, claims no more jobs than
   the pool got and no more of a task than it got (the claim's per-task caps),
   then gives back what it did not use (``taskrt.rates`` note 2). A pool held
   back by a rate records why its next job waits and looks again when the next
   token comes. (Where one owner runs the jobs, ``taskrt.gates`` keeps these
   limits in memory.)
6. **A change no node holds is told by the node that makes it.** A job that
   waits is in no node's memory. A node that cancels it, or retries a
   finished job, changes its row alone (``cancel_external``,
   ``retry_external``, which return the job's new sequence) and publishes
   the event itself (``Transitions.announce``); its bus sends it to the
   other nodes, so a stream of the job on any node ends with ``cancelled``,
   and a listener of every job sees the ``retrying``. The node that later
   claims the retry publishes its start.
7. **A cancel outlives the attempt it was asked during.** A cancel of a job
   running on another node marks its row; if the attempt fails and its node
   puts the job back for a retry before it hears of the cancel, the retry
   keeps the mark (store note 21). No claim takes a marked job, and any
   node's next look ends it CANCELLED (``cancel_asked``, found by the
   partial index ``jobs_cancel_asked``) and tells its end (note 6).
8. **A start whose answer was lost is given back.** A claim (or an add that
   starts its job here) may commit and its answer never arrive (the
   connection drops in between): the job is RUNNING on this node in the
   database, and no handler runs it. Nothing else would ever end it while
   the node lives. So after a claim that failed, and every
   ``STRAY_CHECK`` seconds, a look reads the jobs RUNNING here and puts
   back to WAITING those memory does not hold, their attempt given back
   (``release_unheld``). A claim, a starting add or a reap (which may move
   orphans here for the runtime to fail, store note 22) still in flight as
   the read answers may have committed before the read: its jobs are in
   memory once it answers. So the check first waits for those (up to
   ``STRAY_WAIT`` seconds, else it tries again at the next look); one whose
   answer was lost leaves its jobs out of memory, and they are the strays.
   A job goes back only as the read saw it (its sequence unchanged): one
   that ended, or was retried and claimed here again, since, is not a stray.
   (Before, the check was skipped while anything was in flight, which on a
   node busy claiming was nearly always.)
   At the same pace a node recovers the jobs RUNNING on no live node, as
   its start does: a reap recovers only the jobs of the nodes it removes, so
   a claim that committed just after its own node's reap (its statement
   held up past the TTL), by a node that then died, left its jobs RUNNING
   under a node gone for good until the next node started. That recovery
   does not wait for this node's claims, and a look reads its strays before
   its pools claim: a claim the look itself set off, still in flight as the
   read answered, put the check off at every look on a loaded machine.
9. **A cancel waits for a job being started.** ``rt.cancel`` of a job this
   node's memory does not hold reads its row, then cancels it if WAITING and marks it
   if RUNNING (``cancel_external``, one transaction). A claim, this node's or
   another's, or an add here that starts its job (``taskrt.claims`` note 4),
   may hold the row between the two, or take it after the read: the write
   finds it RUNNING and only marks it. Such a cancel then waits for the
   claims and starting adds in flight here (``landed``), stops the job
   itself if one of them started it here, and waits for the job's end, as
   for a job it read RUNNING (the node running it is told by the mark's
   notification). Before, it waited only when its read said RUNNING: it
   answered RUNNING while the job started, and the job's unique key was
   still held, so an add with that key just after the cancel returned the
   cancelled job's id and its work was never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .background import woken
from .claims import Claims
from .context import JobState
from .errors import InvalidOption, TaskrtError
from .models import JobInfo, JobStatus
from .transitions import retry_policy_of

if TYPE_CHECKING:
    from .clock import Clock
    from .definitions import TaskSpec
    from .live import LiveJobs
    from .pool import Pool
    from .transitions import Transitions

log = logging.getLogger("taskrt")

DEFAULT_TTL = 5.0
"""Seconds without a heartbeat after which a node is taken for dead."""
SEQ_GAP_AFTER_REAP = 1_000_000  # as after a crash (``adoption``): resumed streams get a snapshot
STRAY_CHECK = 30.0
"""Seconds between two looks for started jobs memory does not hold (note 8)."""
STRAY_WAIT = 5.0
"""Seconds such a look waits for the claims, reaps and adds in flight (note 8)."""


class NodeStore(Protocol):
    """What a node asks of its store (``store.postgres.PgStore``)."""

    async def join(self, node: str, host: str, pid: int, started_at: float, ttl: float) -> None: ...

    async def leave(self, node: str, now: float, max_recoveries: int) -> int: ...

    async def claim(
        self,
        pool: str,
        tasks: list[str],
        limit: int,
        now: float,
        node: str,
        caps: dict[str, int] | None = None,
    ) -> list[JobInfo]: ...

    async def next_due(self, pool: str, tasks: list[str], now: float) -> float | None: ...

    async def draw_tokens(
        self, draws: list[tuple[str, float, float, float]], now: float
    ) -> dict[str, tuple[float, float]]: ...

    async def settle_tokens(self, deltas: dict[str, float]) -> None: ...

    async def mark_waiting(
        self, pool: str, now: float, rate_limited: list[str] | None = None
    ) -> None: ...

    async def cancels(self, node: str) -> list[int]: ...

    async def running_on(self, node: str) -> list[tuple[int, int]]: ...

    async def release_unheld(self, node: str, jobs: list[tuple[int, int]]) -> int: ...

    def hold_lock(self, job_id: int, key: str) -> asyncio.Future[None]: ...

    def unhold_lock(self, job_id: int) -> asyncio.Future[None]: ...

    starting_adds: set[asyncio.Future[Any]]

    async def cancel_asked(self, now: float) -> list[tuple[int, int, str, str]]: ...

    async def reap(
        self, now: float, *, max_recoveries: int, seq_gap: int, everything: bool = False
    ) -> tuple[int, int, int, int]: ...

    async def notify(self, payload: str) -> None: ...

    async def pool_limits(
        self,
    ) -> dict[str, tuple[int | None, tuple[int | None] | None, tuple[str | None] | None]]: ...

    async def live_counts(self) -> dict[str, dict[JobStatus, int]]: ...

    async def flush(self) -> None: ...

    def heartbeat(self, node: str, interval: float) -> Any: ...


class Nodes:
    """This process as one node of many (see the module notes)."""

    def __init__(
        self,
        *,
        node: str,
        store: NodeStore,
        clock: Clock,
        live: LiveJobs,
        transitions: Transitions,
        tasks: Mapping[str, TaskSpec],
        pools: Mapping[str, Pool],
        apply_pauses: Callable[[], Awaitable[None]],
        max_recoveries: int,
        ttl: float,
        poll_interval: float,
        workers: Callable[[bool], None],
    ) -> None:
        self.node = node
        self.store = store
        self.clock = clock
        self.live = live
        self.transitions = transitions
        self.tasks = tasks
        self.pools = pools
        self._apply_pauses = apply_pauses  # the owner's way (``adoption``)
        self.max_recoveries = max_recoveries
        self.ttl = ttl
        self.poll_interval = max(poll_interval, 1.0)
        self._workers = workers  # turns starting jobs on or off (the runtime's)
        # One reading of the recorded pauses and limits at a time: each notification
        # spawns one, and a reading answered late must not undo a newer one.
        self._applying = asyncio.Lock()
        self._refused_rates: dict[str, str] = {}  # pool: a recorded rate told once (note 4)
        # A job this node ended in the store alone: its dependents settle (workflows).
        self.on_ended: Callable[[int], None] | None = None
        self.heartbeat: Any = None
        self.fenced = False
        self._loops: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._rejoining: asyncio.Task[None] | None = None
        self._stopping = False  # a beat that finds the row gone joins again only before it
        self._unknown: set[str] = set()
        # The schema's WAITING jobs by pool as of the last look (every poll_interval):
        # what a pool here reports as waiting (its statistics, the metrics).
        self.waiting: dict[str, int] = {}
        # When a rate limit that held back a pool's last claim has a token (note 5).
        self._rate_wait: dict[str, float | None] = {}
        self._releasing: asyncio.Task[None] | None = None  # telling of released locks
        self._check_strays_at = 0.0  # monotonic: when a look next reads them (note 8)
        self._in_flight: set[asyncio.Future[None]] = set()  # claims and reaps (note 8)
        self._released_again = False

    # -- start and stop ---------------------------------------------------------

    async def start(self) -> None:
        """Join, take back what dead nodes left, and keep alive (notes 1, 2)."""
        self._stopping = False
        await self.store.join(self.node, socket.gethostname(), os.getpid(), time.time(), self.ttl)
        await self._reap(everything=True)
        await self.apply_pauses()
        self.heartbeat = self.store.heartbeat(self.node, self.ttl / 5)
        self.heartbeat.start(self._beat_changed)
        self._wake = asyncio.Event()
        self._loops = [
            asyncio.create_task(self._reaper(), name="taskrt-reaper"),
            asyncio.create_task(self._watch_heartbeat(), name="taskrt-node-fence"),
            asyncio.create_task(self._poll(), name="taskrt-node-poll"),
        ]

    async def stop(self) -> None:
        self._stopping = True  # a last beat while the heartbeat stops joins nothing again
        extra = [t for t in (self._rejoining, self._releasing) if t is not None]
        self._releasing = None
        for task in [*self._loops, *extra]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loops = []
        self._rejoining = None
        if self.heartbeat is not None:
            await asyncio.to_thread(self.heartbeat.stop)
            self.heartbeat = None

    async def leave(self) -> int:
        """The node stops (its loops and heartbeat first, so nothing joins it again):
        its row goes, and any job still RUNNING here goes back; the orphans kept for
        their ``on_failed`` hooks (store note 22), which the runtime fails now."""
        await self.stop()
        return await self.store.leave(self.node, self.clock.now(), self.max_recoveries)

    def queue_for(self, pool: Pool) -> Claims:
        """The queue of a pool on this node (``taskrt.claims``)."""
        return Claims(pool.name, self, self.clock, pool.free_slots, pool._dispatch)

    # -- claims (taskrt.claims.ClaimSource) -------------------------------------

    async def claim(self, pool: str, limit: int) -> list[JobState]:
        if self.fenced:
            return []
        now = self.clock.now()
        tasks = list(self.tasks)
        draws = self._draws(pool, limit)
        with self._flying():
            try:
                if not draws:
                    rows = await self.store.claim(pool, tasks, limit, now, self.node)
                else:
                    rows = await self._claim_rated(pool, tasks, limit, now, draws)
            except BaseException:
                self._check_strays_at = 0.0  # it may have committed (note 8)
                raise
            states = []
            for info in rows:
                spec = self.tasks[info.task]  # the claim takes only the tasks registered here
                state = JobState(info, spec, retry_policy_of(info, spec))
                self.live.states[info.id] = state
                states.append(state)
            return states

    @contextlib.contextmanager
    def _flying(self) -> Iterator[None]:
        """A claim or a reap in flight until the block ends, its jobs in memory then
        (a stray check waits for it, note 8)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight.add(done)
        try:
            yield
        finally:
            self._in_flight.discard(done)
            done.set_result(None)

    def _draws(self, pool: str, limit: int) -> list[tuple[str, float, float, float]]:
        """The rate limits a claim of ``pool`` draws from (note 5): the pool's, and
        those of the tasks registered here."""
        draws = []
        local = self.pools.get(pool)
        if local is not None and local.rate is not None:
            rate = local.rate
            draws.append((f"pool:{pool}", float(limit), rate.per_second, rate.burst))
        for name, spec in self.tasks.items():
            if spec.rate is not None:
                rate = spec.rate
                draws.append((f"task:{name}", float(limit), rate.per_second, rate.burst))
        return draws

    async def _claim_rated(
        self,
        pool: str,
        tasks: list[str],
        limit: int,
        now: float,
        draws: list[tuple[str, float, float, float]],
    ) -> list[JobInfo]:
        """A claim within the rate limits every node shares (note 5): tokens are
        drawn first, the claim takes no more than the pool and each task got, then
        what was not used goes back."""
        drawn = await self.store.draw_tokens(draws, now)
        rates = {name: per_second for name, _, per_second, _ in draws}
        got = {name: taken for name, (taken, _) in drawn.items()}
        wanted = limit
        pool_key = f"pool:{pool}"
        if pool_key in got:
            limit = min(limit, int(got[pool_key]))
        tasks = [t for t in tasks if got.get(f"task:{t}", 1.0) >= 1.0]
        caps = {t: int(got[f"task:{t}"]) for t in tasks if f"task:{t}" in got}
        rows: list[JobInfo] = []
        try:
            if limit > 0 and tasks:
                rows = await self.store.claim(pool, tasks, limit, now, self.node, caps)
        finally:
            used: dict[str, float] = {pool_key: float(len(rows))}
            for info in rows:
                used[f"task:{info.task}"] = used.get(f"task:{info.task}", 0.0) + 1.0
            deltas = {name: taken - used.get(name, 0.0) for name, taken in got.items()}
            await self.store.settle_tokens({k: v for k, v in deltas.items() if v})
        # The limits that held this claim back: all they gave was used, and it was
        # less than the pool's free slots.
        bound = [
            name for name, taken in got.items() if taken < wanted and used.get(name, 0.0) >= taken
        ]
        if bound:
            held = (
                list(self.tasks)
                if pool_key in bound
                else [name.removeprefix("task:") for name in bound]
            )
            try:  # the next job in line says why it waits
                await self.store.mark_waiting(pool, now, held)
            except TaskrtError as exc:
                log.warning("node %s: recording a rate limit's wait failed: %s", self.node, exc)
        # The pool looks again when the first of them has a token.
        waits = [max(1.0 - (drawn[name][1] + deltas[name]), 0.0) / rates[name] for name in bound]
        self._rate_wait[pool] = now + max(min(waits), 0.001) if waits else None
        return rows

    def backlog(self, pool: str) -> bool:
        """Whether ``pool`` had waiting jobs at the last look (``Claims.ahead``)."""
        return self.waiting.get(pool, 0) > 0

    def rate_wait(self, pool: str) -> float | None:
        return self._rate_wait.get(pool)

    async def next_due(self, pool: str) -> float | None:
        due = await self.store.next_due(pool, list(self.tasks), self.clock.now())
        token = self._rate_wait.get(pool)
        if token is not None and (due is None or token < due):
            return token  # a rate limit's next token (note 5)
        return due

    def give_back(self, states: list[JobState]) -> list[asyncio.Future[None]]:
        writes = []
        for state in states:
            written = self.transitions.unstart(state)
            written.add_done_callback(functools.partial(self._forget_after, state))
            writes.append(written)
        return writes

    def _forget_after(self, state: JobState, _: asyncio.Future[None]) -> None:
        self.forget(state)

    def forget(self, state: JobState) -> None:
        if self.live.states.get(state.id) is state:
            del self.live.states[state.id]
            self.live.changed(state.id)  # a row read before may be older (adoption.shelve)

    # -- notifications and the slow poll (note 4) ---------------------------------

    def hold_lock(self, state: JobState, held: bool) -> None:
        """A lock key held on by a handler that runs past its attempt's end (``held``),
        or let go when it returns (``taskrt.gates`` note 4): a row of ``held_locks``,
        written with the attempt's end (queued before it) and taken out by this node,
        or by a reap once this node is gone (note 5)."""
        if state.lock is None:
            return
        if held:
            self.store.hold_lock(state.id, state.lock)
        else:
            self.store.unhold_lock(state.id)

    def lock_released(self) -> None:
        """A job holding a lock key left RUNNING here: once that is committed, every
        node looks again (a job waiting on the key may start now, note 5)."""
        self._released_again = True
        if self._releasing is None or self._releasing.done():
            self._releasing = asyncio.get_running_loop().create_task(
                self._tell_released(), name="taskrt-lock-released"
            )

    async def _tell_released(self) -> None:
        while self._released_again:
            self._released_again = False
            try:
                await self.store.flush()  # the job's new status is committed first
                await self.store.notify("changed")
            except TaskrtError as exc:
                log.warning("node %s: telling of a released lock failed: %s", self.node, exc)
                for pool in list(self.pools.values()):
                    pool.poke()  # this node at least; the others poll

    def wake_client(self, what: str) -> None:
        """A notification on the schema's channel, in a process without workers: it
        runs no job, but adds (capacity) and serves pools (paused, limits) as the
        operators recorded them."""
        if what.partition(":")[0] == "pools":
            self._spawn(self.apply_pauses())

    def wake(self, what: str) -> None:
        """A notification on the schema's channel."""
        kind, _, pool = what.partition(":")
        if kind == "added" and pool:
            pool, _, by = pool.partition("\t")
            if by == self.node:
                return  # its own adds: the pool looked when they committed
            found = self.pools.get(pool)
            if found is not None:
                found.poke()
            return
        if kind == "pools":
            self._spawn(self.apply_pauses())
            return
        self._wake.set()

    async def _poll(self) -> None:
        while True:
            await woken(self._wake, self.poll_interval)
            try:
                await self.look()
            except TaskrtError as exc:
                log.warning("node %s: looking for changes failed: %s", self.node, exc)
            except Exception:  # a loop that ended would leave the node deaf
                log.exception("node %s: looking for changes failed", self.node)

    async def look(self) -> None:
        """Cancels asked for the jobs running here; every pool claims; the schema's
        waiting jobs by pool, read again (``waiting``)."""
        counts = await self.store.live_counts()
        self.waiting = {pool: n.get(JobStatus.WAITING, 0) for pool, n in counts.items()}
        for job_id in await self.store.cancels(self.node):
            state = self.live.states.get(job_id)
            if state is not None and state.status is JobStatus.RUNNING:
                pool = self.pools.get(state.pool)
                if pool is not None:
                    pool.cancel_running(state)
        for job_id, seq, task, pool_name in await self.store.cancel_asked(self.clock.now()):
            # Note 7: its attempt failed before it heard of the cancel; its retry ends.
            self.transitions.ended_here(job_id, task, pool_name, JobStatus.CANCELLED, seq)
            if self.on_ended is not None:
                self.on_ended(job_id)
        if time.monotonic() >= self._check_strays_at:
            # Before the pools claim: a claim of this look's own still in flight as
            # the read answers would put the stray check off at every look (note 8).
            await self._release_strays()
        for pool in list(self.pools.values()):
            pool.poke()
        now = self.clock.now()
        for name, n in self.waiting.items():
            if n and name in self.pools:
                await self.store.mark_waiting(name, now)  # those a lock holds (note 5)

    async def landed(self) -> bool:
        """Wait for the claims, reaps and starting adds in flight now (up to
        ``STRAY_WAIT`` seconds): what those started here is in memory once they
        answered. False if some had not answered by then (notes 8, 9)."""
        pending = {*self._in_flight, *self.store.starting_adds}
        if not pending:
            return True
        _, late = await asyncio.wait(pending, timeout=STRAY_WAIT)
        await asyncio.sleep(0)  # the tasks those answers woke take their jobs in
        return not late

    async def _release_strays(self) -> None:
        """Jobs RUNNING here in the database that memory does not hold: back to
        WAITING (note 8), once what was in flight as the read answered has answered
        (else tried at the next look)."""
        store = self.store
        running = await store.running_on(self.node)
        # What answered before the read did is in memory now; what is still on its way
        # may have committed before the read: its jobs enter memory as it answers.
        if await self.landed():
            self._check_strays_at = time.monotonic() + STRAY_CHECK
            stray = [(i, seq) for i, seq in running if i not in self.live.states]
            released = await store.release_unheld(self.node, stray) if stray else 0
            if released:
                log.warning(
                    "node %s: %d job(s) were RUNNING here in the database but not in memory "
                    "(a claim or an add whose answer was lost); put back to WAITING",
                    self.node,
                    released,
                )
        # Those of no live node (note 8), whatever this node has in flight: its
        # claims take no part in them.
        await self._reap(everything=True)

    async def apply_pauses(self) -> None:
        """The pauses and limits operators recorded, as they stand now, on this node's pools
        (one reading at a time, in the order they were asked for)."""
        async with self._applying:
            await self._apply_recorded()

    async def _apply_recorded(self) -> None:
        try:
            await self._apply_pauses()
            for name, limits in (await self.store.pool_limits()).items():
                concurrency, capacity, rate = limits
                pool = self.pools.get(name)
                if pool is None:
                    continue
                if rate is not None and rate[0] != (None if pool.rate is None else pool.rate.text):
                    try:
                        pool.set_rate(rate[0])
                    except InvalidOption as exc:  # recorded by a release that took more
                        if self._refused_rates.get(name) != rate[0]:
                            self._refused_rates[name] = str(rate[0])
                            log.warning("node %s: pool %r keeps its rate: %s", self.node, name, exc)
                if capacity is not None and capacity[0] != pool.capacity:
                    pool.set_capacity(capacity[0])
                if concurrency is not None and concurrency != pool.concurrency:
                    pool.set_concurrency(concurrency)
        except TaskrtError as exc:
            log.warning("node %s: reading pool pauses failed: %s", self.node, exc)

    # -- heartbeats, reaping, fencing (notes 1-3) -------------------------------------

    async def _watch_heartbeat(self) -> None:
        """Fence on time (note 3): on the clock alone, never behind a statement."""
        while True:
            await asyncio.sleep(self.ttl / 10)
            self._check_heartbeat()

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 10)
            try:
                await self._reap(everything=False)
            except TaskrtError as exc:
                log.warning("node %s: reaping failed: %s", self.node, exc)
            except Exception:  # a loop that ended would reap no dead node again
                log.exception("node %s: reaping failed", self.node)

    async def _reap(self, *, everything: bool) -> None:
        # A reap may move orphans to this node, in memory only once it answers (store
        # note 22): a stray check reading meanwhile must not take them for strays.
        with self._flying():
            nodes, recovered, orphaned, left = await self.store.reap(
                self.clock.now(),
                max_recoveries=self.max_recoveries,
                seq_gap=SEQ_GAP_AFTER_REAP,
                everything=everything,
            )
        if nodes or recovered or orphaned:
            log.warning(
                "node %s: %d node(s) stopped beating; recovered %d job(s), failed %d orphaned%s",
                self.node,
                nodes,
                recovered,
                orphaned,
                f" ({left} orphan(s) of tasks not registered here left RUNNING for a node "
                "that registers them)"
                if left
                else "",
            )
        if recovered:
            await self.store.notify("changed")

    def _beat_changed(self) -> None:
        self._check_heartbeat()

    def _check_heartbeat(self) -> None:
        beat = self.heartbeat
        if beat is None or self._stopping:
            return
        fresh = beat.fresh(0.6 * self.ttl)
        if not fresh and not self.fenced:
            self._fence()
        if beat.gone:
            if self._rejoining is None:
                self._rejoining = asyncio.get_running_loop().create_task(self._rejoin())
        elif fresh and self.fenced and self._rejoining is None:
            self._unfence()

    def _fence(self) -> None:
        running = [s for p in self.pools.values() for s in p._running.values()]
        log.error(
            "node %s: no heartbeat for %.1f s: it stops starting jobs and interrupts %d",
            self.node,
            0.6 * self.ttl,
            len(running),
        )
        self.fenced = True
        self._workers(False)
        for pool in self.pools.values():
            pool.interrupt_all_for_shutdown()

    def _unfence(self) -> None:
        log.warning("node %s: heartbeats land again; it runs jobs again", self.node)
        self.fenced = False
        self._workers(True)

    async def _rejoin(self) -> None:
        """Reaped while alive: let the interrupted jobs end, write out, join again (note 3)."""
        try:
            while running := [t for p in self.pools.values() for t in p.running_tasks()]:
                await asyncio.wait(running)
            while True:
                try:
                    await self.store.flush()
                    await self.store.join(
                        self.node, socket.gethostname(), os.getpid(), time.time(), self.ttl
                    )
                    break
                except TaskrtError as exc:
                    log.warning("node %s: joining again failed: %s", self.node, exc)
                    await asyncio.sleep(self.ttl / 5)
            self.heartbeat.rejoined()
            log.warning("node %s: joined again", self.node)
        finally:
            self._rejoining = None
        if self.heartbeat.fresh(0.6 * self.ttl):
            self._unfence()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._loops.append(task)
        task.add_done_callback(self._spawned_ended)

    def _spawned_ended(self, task: asyncio.Task[None]) -> None:
        if task in self._loops:
            self._loops.remove(task)
