"""Adding jobs: validation, serialisation, capacity, ids, transactional enqueue.

``Adding`` turns ``pool.add(task, *args, **kwargs)`` into a committed row and a
queued job (runtime note 1: durable before acknowledged); the runtime holds one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import store as sql
from .claims import Claims
from .context import JobState
from .definitions import Options, Signature, Task, TaskCall, TaskRef, TaskSpec
from .errors import (
    DuplicateJob,
    InvalidOption,
    OwnerUnreachable,
    QueueFull,
    StoreError,
    TaskNotFound,
    ValidationError,
)
from .limits import INT64_MAX, check_text, check_time, encode, shown
from .models import BLOCKED_AT, Event, EventType, JobStatus
from .params import LATER
from .retry import parse_retry
from .store import NewJob, dumps
from .transaction import Transaction, open_in_this_task, opened

if TYPE_CHECKING:
    from .background import Background
    from .clock import Clock
    from .counters import Counters
    from .events import EventBus
    from .limits import Limits
    from .live import LiveJobs
    from .pool import Instrumentation, Pool
    from .store import JobStore

_NO_OPTIONS = Options()

Forward = Callable[[str, list[NewJob]], Awaitable[list[int]]]
NewState = Callable[[NewJob, tuple[Any, ...], dict[str, Any]], JobState]
"""How a checked job becomes its in-memory state once committed."""
"""Hands checked, encoded jobs to the owner (relay) and returns their ids."""


class Adding:
    """Turns ``add`` into committed, queued jobs (see the module notes)."""

    def __init__(
        self,
        *,
        store: JobStore,
        broker: EventBus,
        clock: Clock,
        counters: Counters,
        limits: Limits,
        live: LiveJobs,
        background: Background,
        tasks: Mapping[str, TaskSpec],
        pools: Mapping[str, Pool],
        owning: Callable[[], bool],
        marks_external: Callable[[], bool],
        forward: Callable[[], Forward | None],
        instrumentation: Callable[[], Instrumentation | None],
        require_started: Callable[[str], None],
        dependents: Callable[[int, tuple[int, ...]], None],
        batching: Callable[[str, str, float, int], None],
        node: Callable[[], str | None] = lambda: None,
        deadline_added: Callable[[float], None] = lambda deadline: None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.clock = clock
        self.counters = counters
        self.limits = limits
        self.live = live
        self.background = background
        self.tasks = tasks
        self.pools = pools
        # Whether this process owns the jobs; else where its adds go (the owner's relay).
        self.owning = owning
        # Whether its adds are marked for the owner's poll (a process that is not it).
        self.marks_external = marks_external
        self.forward = forward
        self.instrumentation = instrumentation
        self.require_started = require_started
        # Told of each committed job that waits for parents (taskrt.workflows).
        self.dependents = dependents
        # Told of each committed job of a batched task (taskrt.batches).
        self.batching = batching
        # This node's name while it may start the jobs it adds (mode "nodes",
        # ``taskrt.claims`` note 4), else None.
        self.node = node
        # Told of each committed job with a deadline (``taskrt.deadlines`` note 2).
        self.deadline_added = deadline_added
        # The unique keys of adds being committed here, each set once its add is
        # over: a full pool's add of the same key waits for it (``_check_capacity``).
        self._keys_adding: dict[str, asyncio.Event] = {}

    def resolve_parts(self, task: TaskRef) -> tuple[TaskSpec, Options]:
        """The registered ``TaskSpec`` and per-call ``Options`` of a task reference."""
        if isinstance(task, TaskCall):
            return task.spec, task.opts
        if isinstance(task, Task):
            spec = self.tasks.get(task.spec.name)
            return (spec or task.spec), _NO_OPTIONS
        if isinstance(task, str):
            spec = self.tasks.get(task)
            if spec is None:
                raise TaskNotFound(task)
            return spec, _NO_OPTIONS
        raise InvalidOption("task", f"expected a task, a task call or a task name, found {task!r}")

    def resolve(self, task: TaskRef) -> TaskCall:
        """The registered task (and per-call options) a task, a call or a name refers to.

        Raises ``TaskNotFound`` for a name no task has.
        """
        spec, opts = self.resolve_parts(task)
        return TaskCall(spec, opts)

    async def add_calls(
        self,
        pool: Pool,
        task: TaskRef,
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        *,
        tx: Transaction | Any,
    ) -> list[int]:
        """Add ``calls`` (args, kwargs) of ``task`` to ``pool``; their ids once durable."""
        instrumentation = self.instrumentation()
        if instrumentation is not None:  # e.g. a tracing span around the add (taskrt.tracing)
            return await instrumentation.add(self._add_jobs, pool, task, calls, tx=tx)
        return await self._add_jobs(pool, task, calls, tx=tx)

    async def _add_jobs(
        self,
        pool: Pool,
        task: TaskRef,
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        *,
        tx: Transaction | Any,
    ) -> list[int]:
        self.require_started("adding a job")
        _check_tx(tx)
        if tx is not None and not isinstance(tx, Transaction):
            tx = await self._adopt(tx)
        spec, opts = self.resolve_parts(task)
        if len(calls) > 1 and opts.unique_key is not None:
            raise InvalidOption("unique_key", "a unique key applies to one job, not to add_many")
        jobs, calls, new_state = self._prepare(pool.name, spec, opts, calls, self.clock.now())
        if opts.unique_key is not None and self.owning():
            existing = self.live.holder(opts.unique_key)
            if existing is not None:
                return [_conflict(jobs[0], existing)]
        if spec.hooks.next_id is not None and opts.job_id is None:
            for job in jobs:
                job.job_id = await self._next_id(spec)
        if tx is not None and tx.foreign:
            for job in jobs:
                job.external = True  # its commit is the application's: the owner finds it
        forward = None if tx is not None else self.forward()
        if forward is not None:
            # The owner checks capacity and unique keys, commits and queues.
            try:
                return await forward(pool.name, jobs)
            except OwnerUnreachable as exc:
                if exc.sent:
                    raise  # it may have been added: adding it again could add it twice
                # Not sent: the database takes it, and the owner finds it (poll).
        # Jobs added earlier in an open transaction are not queued yet, but will be.
        in_tx = 0 if tx is None else sum(1 for s in tx.added if s.pool == pool.name)
        held = await self._check_capacity(pool, len(jobs) + in_tx, jobs)
        if held is not None:
            return [held]
        kept = 0 if tx is not None else self._keep_slots(pool, spec, jobs)
        return await self._commit(pool, jobs, calls, new_state, tx=tx, kept=kept)

    def _keep_slots(self, pool: Pool, spec: TaskSpec, jobs: list[NewJob]) -> int:
        """Mark the jobs the pool may start in their own add, keeping a free slot of
        the pool for each (``taskrt.pool`` note 9); how many. Where every node runs
        workers the store decides in the add (``taskrt.claims`` note 4); where this
        process owns the jobs it decides here, for a store that takes its word."""
        if isinstance(pool.queue, Claims):
            if self.node() is None:
                return 0
        elif not (self.owning() and self.store.starts_in_add):
            return 0
        free = pool.free_slots()
        if free <= 0 or spec.rate is not None or pool.rate is not None:
            return 0
        eligible: list[NewJob] = []
        for job in jobs:
            if (
                job.run_at <= job.created_at
                and job.lock_key is None
                and job.unique_key is None
                and job.job_id is None
                and not job.after
                and job.workflow is None
                and job.batch_key is None
                and not job.external
                and (job.deadline is None or job.deadline > job.created_at)
            ):
                eligible.append(job)
                if len(eligible) == free:
                    break  # an add_many of thousands looks no further
        if not eligible:
            return 0
        kept = pool.keep(len(eligible))
        for job in eligible[:kept]:
            job.start = True
        return kept

    def _prepare(
        self,
        pool: str,
        spec: TaskSpec,
        opts: Options,
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        now: float,
        *,
        takes_input: bool = False,
    ) -> tuple[list[NewJob], list[tuple[tuple[Any, ...], dict[str, Any]]], NewState]:
        """Check and encode ``calls`` of one task: the rows to insert, the calls as the
        task takes them (``TaskSpec.validate``: ``3.0`` for an ``int`` is ``3``), and
        how each becomes its in-memory state once committed. ``takes_input``: its
        first argument will be its parents' results (a workflow's step)."""
        limits = self.limits
        if opts.run_at is not None:
            run_at = opts.run_at
        else:
            run_at = check_time(now + (opts.delay or 0.0), "delay")
        priority = opts.priority if opts.priority is not None else spec.priority
        max_attempts = spec.attempts if opts.attempts == "default" else opts.attempts
        timeout = opts.timeout if opts.timeout is not None else spec.timeout
        retry = opts.retry or spec.retry
        retry_described = None if opts.retry is None else opts.retry.describe()
        retry_json = None if retry_described is None else dumps(retry_described)
        metadata_json = encode(
            opts.metadata or {},
            "metadata",
            max_bytes=limits.max_metadata_bytes,
            max_depth=limits.max_depth,
            field="metadata",
        )
        if opts.unique_key is not None:
            check_text(opts.unique_key, "unique_key", max_bytes=limits.max_key_bytes)
        jobs: list[NewJob] = []
        checked: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        external = self.marks_external()
        what = f"the arguments of task {spec.name!r}"
        after = opts.after or ()
        on_parent_failure = opts.on_parent_failure or "cancel"
        batch_key = _batch_key(spec, opts)
        for args, kwargs in calls:
            if batch_key is not None:
                if len(args) != 1 or kwargs:
                    raise ValidationError(
                        spec.name, "a job of a batched task takes one argument: its item"
                    )
                # The handler gets the list of items.
                ((items,), _) = spec.validate(([args[0]],), {})
                args = (items[0],)
            elif takes_input:
                # Its parents' results come first.
                (_, *given), kwargs = spec.validate((LATER, *args), kwargs)
                args = tuple(given)
            else:
                args, kwargs = spec.validate(args, kwargs)
            checked.append((args, kwargs))
            args_json = (
                encode(
                    list(args),
                    what,
                    max_bytes=limits.max_args_bytes,
                    max_depth=limits.max_depth,
                    field="args",
                )
                if args
                else "[]"
            )
            kwargs_json = (
                encode(
                    kwargs,
                    what,
                    max_bytes=limits.max_args_bytes,
                    max_depth=limits.max_depth,
                    field="kwargs",
                )
                if kwargs
                else "{}"
            )
            # By position, in NewJob's field order: add_many builds one per job.
            jobs.append(
                NewJob(
                    spec.name,
                    pool,
                    args_json,
                    kwargs_json,
                    max_attempts,
                    priority,
                    metadata_json,
                    opts.unique_key,
                    now,
                    run_at,
                    timeout,
                    retry_json,
                    opts.job_id,
                    external,
                    opts.unique_for,
                    opts.on_conflict,
                    opts.deadline,
                    opts.lock,
                    after,
                    None,
                    on_parent_failure,
                    None,
                    batch_key,
                )
            )
        # In memory as a read from disk will give it (tuples are lists, keys strings).
        if not opts.metadata:
            metadata: dict[str, Any] = {}
        elif all(type(k) is str for k in opts.metadata) and _plain_kw(opts.metadata):
            metadata = dict(opts.metadata)
        else:
            metadata = json.loads(metadata_json)

        def new_state(job: NewJob, args: tuple[Any, ...], kwargs: dict[str, Any]) -> JobState:
            state = JobState.new(
                spec,
                retry,
                id=0,  # set once the store has assigned it
                pool=pool,
                # What a restart would read back: JSON's view of the arguments.
                args=tuple(args) if _plain(args) else tuple(json.loads(job.args_json)),
                kwargs=kwargs if _plain_kw(kwargs) else json.loads(job.kwargs_json),
                max_attempts=max_attempts,
                priority=priority,
                metadata=metadata,
                unique_key=opts.unique_key,
                created_at=now,
                run_at=run_at,
                timeout=timeout,
                retry_policy=retry_described,
                deadline=opts.deadline,
                lock=opts.lock,
            )
            if job.after or job.workflow is not None or job.batch_key is not None:
                _link(state, job)
            return state

        return jobs, checked, new_state

    async def add_flow(self, steps: list[FlowStep], *, tx: Transaction | Any = None) -> list[int]:
        """Add a workflow's jobs in one transaction, all or nothing (``taskrt.workflows``):
        each step's parents are earlier steps; the first job's id is the workflow's."""
        self.require_started("adding a workflow")
        _check_tx(tx)
        if tx is not None and not isinstance(tx, Transaction):
            tx = await self._adopt(tx)
        now = self.clock.now()
        jobs: list[NewJob] = []
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        makers: dict[int, NewState] = {}
        at = 0
        while at < len(steps):
            # A run of steps of one call, parents and input (a group's members) is
            # checked and encoded as one add_many is.
            first = steps[at]
            end = at + 1
            while end < len(steps) and _same_run(steps[end], first):
                end += 1
            call = first.signature.call
            spec = self.tasks.get(call.spec.name) or call.spec
            opts = call.opts
            if first.after:
                opts = dataclasses.replace(opts, after=first.after + (opts.after or ()))
            run = [(s.signature.args, dict(s.signature.kwargs)) for s in steps[at:end]]
            made, run, new_state = self._prepare(
                spec.pool, spec, opts, run, now, takes_input=first.inputs is not None
            )
            inputs = first.inputs
            if inputs == "results" and opts.after != first.after:
                # Its own parents come after the group's and give it nothing.
                inputs = f"results:{len(first.after)}"
            for job in made:
                job.inputs = inputs
                job.workflow = -1  # the first job's id
                if spec.hooks.next_id is not None and opts.job_id is None:
                    job.job_id = await self._next_id(spec)
                if tx is not None and tx.foreign:
                    job.external = True
                makers[id(job)] = new_state
            jobs.extend(made)
            calls.extend(run)
            at = end

        def made_state(job: NewJob, args: tuple[Any, ...], kwargs: dict[str, Any]) -> JobState:
            return makers[id(job)](job, args, kwargs)

        keys = [job.unique_key for job in jobs if job.unique_key is not None]
        if len(keys) != len(set(keys)):
            repeated = next(k for k in keys if keys.count(k) > 1)
            raise InvalidOption(
                "unique_key", f"two steps of one workflow have the unique key {repeated!r}"
            )
        forward = None if tx is not None else self.forward()
        if forward is not None:
            try:
                return await forward(jobs[0].pool, jobs)
            except OwnerUnreachable as exc:
                if exc.sent:
                    raise
        for name in dict.fromkeys(job.pool for job in jobs):
            n = sum(1 for j in jobs if j.pool == name)
            held = await self._check_capacity(self.pools[name], n, jobs)
            if held is not None:
                return [held]
        return await self._commit(self.pools[jobs[0].pool], jobs, calls, made_state, tx=tx)

    async def add_forwarded(self, pool: Pool, jobs: list[NewJob]) -> list[int]:
        """Jobs another process checked and encoded (relay): commit and queue them here
        (those of one task the pool can start now start in their add, ``taskrt.pool``
        note 9). One ``add``, ``add_many`` or workflow; a workflow's jobs may name
        several tasks."""
        self.require_started("adding a job")
        if not jobs:
            return []
        specs: list[TaskSpec] = []
        for job in jobs:
            spec = self.tasks.get(job.task)
            if spec is None:
                raise TaskNotFound(job.task)
            specs.append(spec)
        first = jobs[0]
        if len(jobs) == 1 and first.unique_key is not None:
            existing = self.live.holder(first.unique_key)
            if existing is not None:
                return [_conflict(first, existing)]
        for name in dict.fromkeys(job.pool for job in jobs):
            held = await self._check_capacity(
                self.pools.get(name) or pool, sum(1 for job in jobs if job.pool == name), jobs
            )
            if held is not None:
                return [held]
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        for job in jobs:
            job.external = False
            job.start = False  # this process decides (taskrt.pool note 9)
            calls.append((tuple(json.loads(job.args_json)), json.loads(job.kwargs_json)))
        spec_of = {id(job): spec for job, spec in zip(jobs, specs, strict=True)}
        kept = 0
        if all(
            job.pool == pool.name and spec is specs[0]
            for job, spec in zip(jobs, specs, strict=True)
        ):
            kept = self._keep_slots(pool, specs[0], jobs)  # one task's add or add_many

        def new_state(job: NewJob, args: tuple[Any, ...], kwargs: dict[str, Any]) -> JobState:
            spec = spec_of[id(job)]
            described = None if job.retry_json is None else json.loads(job.retry_json)
            retry = spec.retry if described is None else parse_retry(described)
            state = JobState.new(
                spec,
                retry,
                id=0,
                pool=job.pool,
                args=args,
                kwargs=kwargs,
                max_attempts=job.max_attempts,
                priority=job.priority,
                metadata=json.loads(job.metadata_json),
                unique_key=job.unique_key,
                created_at=job.created_at,
                run_at=job.run_at,
                timeout=job.timeout,
                retry_policy=described,
                deadline=job.deadline,
                lock=job.lock_key,
            )
            if job.after or job.workflow is not None or job.batch_key is not None:
                _link(state, job)
            return state

        return await self._commit(pool, jobs, calls, new_state, tx=None, kept=kept)

    async def _commit(
        self,
        pool: Pool,
        jobs: list[NewJob],
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        new_state: Callable[[NewJob, tuple[Any, ...], dict[str, Any]], JobState],
        *,
        tx: Transaction | None,
        kept: int = 0,
    ) -> list[int]:
        """Insert checked jobs; once committed, queue (owner) and announce them.
        ``kept``: slots kept for those marked to start here (``taskrt.claims`` note 4),
        given back for each that did not. The add of one job with a unique key is
        known as being committed until it is over (``_check_capacity``)."""
        with self._adding_key(jobs, tx):
            if tx is not None:
                _check_tx(tx)  # again: the block may have ended while this add was checked
            pool.pending += len(jobs)
            results: list[sql.InsertResult | BaseException] = []
            states: list[JobState] | None = None
            try:
                if tx is not None:
                    results = list(await self.store.insert_in(tx.connection, jobs))
                else:
                    committed = self.store.insert(jobs)
                    if len(jobs) > 8:
                        # Let the writer hand the batch to its thread, then build the
                        # in-memory states while SQLite works (add_many's hot path).
                        await asyncio.sleep(0)
                        states = [new_state(j, a, k) for j, (a, k) in zip(jobs, calls, strict=True)]
                    results = await committed
            finally:
                pool.pending -= len(jobs)
                if kept:  # the slots of jobs stored WAITING, or not at all, go back
                    started = sum(
                        1 for r in results if isinstance(r, sql.InsertResult) and r.started
                    )
                    pool.release(kept - started)
            ids: list[int] = []
            failure: BaseException | None = None
            # The ids of this insert's jobs, for those that name one of them (-k: the k-th).
            refs = (
                [res.job_id if isinstance(res, sql.InsertResult) else 0 for res in results]
                if any(job.after or job.workflow is not None for job in jobs)
                else []
            )
            accepted: list[JobState] = []
            began: set[int] = set()  # the ids of those their add started
            for i, (job, (args, kwargs), res) in enumerate(zip(jobs, calls, results, strict=True)):
                if isinstance(res, BaseException):
                    failure = failure or res
                    continue
                if not res.created:
                    ids.append(_conflict(job, res.job_id))
                    continue
                ids.append(res.job_id)
                state = states[i] if states is not None else new_state(job, args, kwargs)
                state.id = res.job_id
                if job.after:
                    state.parents = tuple(p if p > 0 else refs[-p - 1] for p in job.after)
                if job.workflow is not None:
                    w = job.workflow
                    state.workflow = w if w > 0 else refs[-w - 1]
                if tx is not None:
                    if not tx.foreign:
                        tx.added.append(state)
                else:
                    accepted.append(state)
                    if res.started:
                        began.add(state.id)
            self._accept(accepted, began)
            if failure is not None:
                raise failure
            return ids

    @contextlib.contextmanager
    def _adding_key(self, jobs: list[NewJob], tx: Transaction | None) -> Iterator[None]:
        """The add of one job with a unique key is known as being committed until it
        is over (``_check_capacity``)."""
        key = jobs[0].unique_key if len(jobs) == 1 and tx is None else None
        if key is None or key in self._keys_adding:
            yield
            return
        done = self._keys_adding[key] = asyncio.Event()
        try:
            yield
        finally:
            del self._keys_adding[key]
            done.set()

    def _accept(self, states: list[JobState], started: Set[int] = frozenset()) -> None:
        """Committed jobs: take them in (owner) and tell the world. A job that waits
        for its parents (``blocked``) or its batch (``batching``) is the store's until
        they release it (``taskrt.workflows``, ``taskrt.batches``). ``started``: the ids of
        those their add started on this node (``taskrt.pool`` note 9, ``taskrt.claims`` note 4).
        The jobs of one pool are queued together: a free slot goes to the first of
        them in the queue's order."""
        if not states:
            return
        owning = self.owning()
        waiting: dict[str, list[JobState]] = {}  # by pool
        begun: list[JobState] = []
        added = self.counters.added
        wants = self.broker.wants
        live = self.live.states
        for state in states:
            if (
                owning
                and not state.parents
                and state.batch_key is None
                and state.unique_key is None
                and state.deadline is None
                and state.spec.hooks.on_add is None
                and not wants(state.id)
            ):
                # ``_take_in`` of a plain job, inline (add_many's hot path).
                added[state.task] += 1
                if state.id in live:
                    continue  # a refill's, queued or started already (``_take_in``)
                live[state.id] = state
            elif self._take_in(state, owning):
                continue  # held by its parents or its batch, or in memory already
            if state.id in started:
                begun.append(state)
            else:
                waiting.setdefault(state.pool, []).append(state)
        for state in begun:
            # RUNNING here, attempt 1 charged, as a start leaves it (taskrt.pool note 9,
            # taskrt.claims note 4): its start is the job's second event.
            state.update(
                status=JobStatus.RUNNING,
                attempts=1,
                started_at=state.created_at,
                node=self.node(),
                seq=2,
            )
            self.live.states[state.id] = state
            self.pools[state.pool].started_here(state)
        for name, same in waiting.items():
            if owning:
                self.pools[name].push_all(same)
            elif (pool := self.pools.get(name)) is not None:
                pool.poke(stored=True)  # where every node claims (taskrt.claims): look now

    def _take_in(self, state: JobState, owning: bool) -> bool:
        """Count a committed job, hold it where it waits (the owner's memory, its
        parents, its batch) and announce it; whether it is not for the add to queue:
        it waits for parents or a batch, or memory holds it already."""
        self.counters.added[state.task] += 1
        if state.deadline is not None:
            self.deadline_added(state.deadline)
        held = bool(state.parents) or state.batch_key is not None
        taken = held
        if state.parents:
            self.dependents(state.id, state.parents)
        elif state.batch_key is not None:
            self.batching(state.task, state.batch_key, state.created_at, state.id)
        elif owning:
            if state.id in self.live.states:
                # A refill read its committed row before this ran (taskrt.waiting note 5):
                # the state it made is the job's, queued or even started already.
                taken = True
            else:
                self.live.states[state.id] = state
                if state.unique_key is not None:
                    self.live.unique[state.unique_key] = state.id
        if self.broker.wants(state.id):
            self._announce(state, held)
        if state.spec.hooks.on_add is not None:
            self.background.hook(state.spec.hooks.on_add, state.id, job=state)
        return taken

    def _announce(self, state: JobState, held: bool) -> None:
        """The job's ADDED event (its first)."""
        data: dict[str, Any] = {"run_at": state.run_at, "priority": state.priority}
        if held:
            data |= {
                "after": list(state.parents),
                "workflow": state.workflow,
                "batch_key": state.batch_key,
            }
        self.broker.publish(
            Event(
                state.id,
                1,
                EventType.ADDED,
                state.task,
                state.pool,
                JobStatus.WAITING,
                state.created_at,
                data,
            )
        )

    async def _adopt(self, connection: Any) -> Transaction:
        """The application's own connection, in its transaction, as a ``Transaction``."""
        adopted = await self.store.adopt_transaction(connection)
        if adopted is None:
            raise InvalidOption(
                "tx",
                "expected an rt.transaction(), or on PostgreSQL the application's asyncpg "
                f"connection (or SQLAlchemy AsyncConnection) in its transaction; found {connection!r}",
            )
        return Transaction(adopted, foreign=True)

    async def _check_capacity(self, pool: Pool, n: int, jobs: list[NewJob]) -> int | None:
        """``QueueFull`` when ``n`` more jobs do not fit in ``pool``; None when they do.
        A full pool still answers an add whose unique key is taken with the holder's
        id (``_conflict``), as where the holder is in memory: one whose holder is in
        the store only (beyond the window, or another process's), or whose key a
        finished job's ``unique_for`` window holds, is looked up there. Where the
        store counts the capacity too (``counts_capacity``), the owner's look here
        comes first: its memory misses the jobs the application's own transactions
        committed until their notification arrives, and the add's transaction
        counts them."""
        if pool.capacity is None:
            return None
        if not self.owning() and self.store.counts_capacity:
            # The add's own transaction counts it (a read here would be a round trip
            # of its own, and stale by the time the add commits).
            return None
        key = jobs[0].unique_key if len(jobs) == 1 else None
        while True:
            waiting = pool.waiting if self.owning() else await self.store.count_waiting(pool.name)
            if waiting + pool.pending + n <= pool.capacity:
                return None
            if key is None or (adding := self._keys_adding.get(key)) is None:
                break
            # An add of the same key is being committed (a burst of retries of one
            # request): it is the holder once committed, or it failed and the pool
            # is counted again. Before, the holder was looked up in the store before
            # its commit, not found, and the add refused as if the pool were full.
            await adding.wait()
            if (held := self.live.holder(key)) is not None:
                return _conflict(jobs[0], held)
        if key is not None:
            holder = await self.store.unique_holder(key)
            if holder is None:  # a window the key's last job opened (``unique_for``)
                holder = await self.store.unique_window(key, jobs[0].created_at)
            if holder is not None:
                return _conflict(jobs[0], holder)
        raise QueueFull(pool.name, pool.capacity)

    async def _next_id(self, spec: TaskSpec) -> int:
        assert spec.hooks.next_id is not None
        try:
            value = spec.hooks.next_id()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            raise InvalidOption(
                "next_id", f"the next_id hook of {spec.name!r} failed: {exc}"
            ) from exc
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= INT64_MAX:
            raise InvalidOption(
                "next_id",
                f"the next_id hook of {spec.name!r} returned {shown(value)}, "
                f"not an integer from 1 to {INT64_MAX}",
            )
        return value

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A write transaction for the application's own SQL and ``add(..., tx=tx)``;
        one at a time in a task, usable only in its block (``taskrt.transaction``
        notes 1 and 3)."""
        self.require_started("a transaction")
        if open_in_this_task() is not None:
            raise InvalidOption(
                "tx",
                "rt.transaction() inside the block of another one in this task: "
                "transactions do not nest (on SQLite the inner one would wait for the "
                "outer one for ever). Run the statements and adds in the open one "
                "(tx=tx), with a savepoint for a part that may be undone",
            )
        tx: Transaction | None = None
        try:
            async with self.store.transaction() as conn:
                tx = Transaction(conn)
                with opened(tx):
                    yield tx
                    why = tx.ended
                    if why is not None:  # the store rolls back what may be left of it
                        raise StoreError(
                            f"the transaction ended inside its block ({why}): taskrt "
                            "committed none of it and took in none of its jobs"
                        )
        except asyncio.CancelledError:
            # Cancelled as its COMMIT was on its way: its jobs are in all the same
            # (store note 24), and run.
            if tx is not None and tx.connection.committed:
                self._accept(tx.added)
            raise
        self._accept(tx.added)

    def take_in(self, tx: Transaction) -> None:
        """The jobs added in a transaction taskrt opened and committed (an
        ``on_failed`` hook's, ``taskrt.transitions``): queued and announced, as
        an ``rt.transaction()`` block's are at its end."""
        self._accept(tx.added)


def _check_tx(tx: Transaction | Any) -> None:
    """Refuse an add that would wait for ever or store a job that never runs
    (``taskrt.transaction`` notes 1 and 3): one without ``tx=`` in the task whose
    ``rt.transaction()`` block is open, one with ``tx=`` a transaction that ended."""
    if tx is None:
        if open_in_this_task() is not None:
            raise InvalidOption(
                "tx",
                "an add without tx= inside this task's transaction (an rt.transaction() "
                "block, or an on_failed hook's): pass tx=tx to add the job in the "
                "transaction, or add it after the block (it cannot commit on its own "
                "while the transaction holds the writes)",
            )
    elif isinstance(tx, Transaction) and (why := tx.ended) is not None:
        raise InvalidOption("tx", f"this transaction has ended: {why}")


def _same_run(step: FlowStep, first: FlowStep) -> bool:
    return (
        step.signature.call is first.signature.call
        and step.after == first.after
        and step.inputs == first.inputs
    )


@dataclass(frozen=True, slots=True)
class FlowStep:
    """One job of a workflow to add: its signature, the steps it waits for (``-k``:
    the k-th step), and what it takes from their results (``NewJob.inputs``)."""

    signature: Signature
    after: tuple[int, ...] = ()
    inputs: str | None = None


def _link(state: JobState, job: NewJob) -> None:
    """A job with parents is stored blocked, one of a batched task ``batching``
    (``taskrt.store.deps``): so is its state."""
    if job.after:
        state.run_at = BLOCKED_AT
        state.waiting_reason = "blocked"
    elif job.batch_key is not None:
        state.run_at = BLOCKED_AT
        state.waiting_reason = "batching"
        state.batch_key = job.batch_key


def _batch_key(spec: TaskSpec, opts: Options) -> str | None:
    """The batch a job of ``spec`` joins: its ``batch_key`` (``""`` when not given),
    or None for a task that is not batched."""
    if spec.batch is None:
        if opts.batch_key is not None:
            raise InvalidOption("batch_key", f"task {spec.name!r} is not batched")
        return None
    if opts.after:
        raise InvalidOption("after", "a job of a batched task cannot wait for other jobs")
    return opts.batch_key if opts.batch_key is not None else ""


def _conflict(job: NewJob, existing: int) -> int:
    """The id an add gets when its unique key is taken: the holder's, or
    ``DuplicateJob`` where the add said ``on_conflict="raise"``."""
    if job.on_conflict == "raise" and job.unique_key is not None:
        raise DuplicateJob(job.unique_key, existing)
    return existing


def _plain(args: tuple[Any, ...]) -> bool:
    return not args or all(type(a) in _SCALARS for a in args)


def _plain_kw(kwargs: dict[str, Any]) -> bool:
    return not kwargs or all(type(v) in _SCALARS for v in kwargs.values())


_SCALARS = frozenset({int, float, str, bool, type(None)})
