"""Cron schedules: declared in code, in task files or over HTTP, stored in SQLite, fired once.

``rt.schedules`` is the ``Scheduler`` of a runtime: the Python API to list,
pause, resume, run, change and delete schedules, and, in the runtime that owns
the database, the loop that fires them. Cron maths is ``taskrt.schedule``'s.

Design notes (cited where they apply, pinned by tests/test_scheduler.py):

1. **The row is the truth; a slot fires once.** A schedule's row holds
   ``next_run_at``, the oldest slot not yet fired. Firing reads the row, adds
   the slot's job and advances the row in ONE write transaction
   (``rt.transaction()`` with ``add(..., tx=tx)``), so a crash at any moment
   leaves both or neither: a slot is never fired twice, never half-fired. The
   job's unique key ``cron:{name}:{slot}`` names the slot, but it dedupes only
   while the job is live, so it is the row, not the key, that stops a second
   fire after the job has finished.
2. **Wake, don't poll.** One clock timer, armed at the earliest ``next_run_at``
   of the active schedules, fires what is due and re-arms. The clock is the
   runtime's, so tests drive the scheduler with a ``FakeClock``. The system
   clock's timers keep to the wall clock (``taskrt.clock``): one further off
   than a minute wakes each minute to read it again, as event-loop timers
   follow the monotonic clock, which a suspended machine or a stepped wall
   clock leaves behind.
3. **Misfires.** Reached late (downtime, a blocked event loop), a schedule may
   have several slots due at once. ``latest`` (the default) fires only the
   newest; ``skip`` fires the newest only if it is at most ``misfire_grace``
   seconds late when the pass that fires it begins (one pass through many
   schedules takes its time), else none; ``all`` fires every due slot, oldest first, but at
   most the newest ``max_catch_up`` (100). Never a flood.
4. **Declaring is idempotent.** ``rt.schedule``, ``@rt.cron`` and a task
   file's ``cronjob`` declare a definition (task, args, kwargs, pool,
   expression, tz, misfire); at start each is compared with its row: missing,
   it is inserted; equal, nothing changes (pause state, next slot and counters
   are kept); different, it is updated, and the next slot is recomputed only
   when the expression or the time zone changed. A declared row is marked as
   the code's (``origin``); one created at run time (``create``, ``POST
   /schedules``) is not. The owner, as it starts firing, deletes the rows of
   code its own code no longer declares: a schedule removed from the code
   stops (before, it fired for ever). Declare schedules in the code of the
   process that runs the jobs. Where every node fires (PostgreSQL), nodes may
   run different code, so none deletes: a schedule removed from the code is
   deleted by hand there. A row stored before the origin was recorded counts as
   created at run time.
5. **Only the owner fires.** A standby or a client reads and changes
   schedules in the database (a standby that takes over starts firing:
   ``take_over``); every change of a definition bumps a
   version in ``meta``, which the owner reads every ``watch_interval`` seconds
   (polling only for what another process wrote).
6. **Failures.** When a job whose metadata names a schedule (as every job a
   schedule adds does) ends FAILURE, the runtime queues one more failure for
   the schedule with the job's FAILURE write (same batch); recovery counts the
   jobs it fails as orphaned. Retention may delete the jobs; the counts stay.
   (Not a trigger on ``jobs``: any UPDATE trigger there costs about a third of
   the job throughput.)
7. **Changes and fires take turns on the row.** Where every node fires
   (PostgreSQL), a change (update, pause, resume, delete) locks the row and
   builds on it as locked: one that read it before a fire committed wrote the
   fired slot back (the slot fired again, up to 16 times in a review's run),
   and two updates at once each undid the other. A fire takes the row only if
   no one holds it (``SKIP LOCKED``) and looks again shortly: a node frozen
   while it held one row (a SIGSTOP) stopped every schedule of every node.
   The row itself waits no longer than a node's TTL: a fire's (or a
   change's) transaction idle that long between two statements is ended by the server
   (``bound_idle``), and its slots are fired by another node (the frozen one's
   fire fails when it wakes, and commits nothing).
   What adds a schedule's job takes the row before the add (a fire, ``run_now``):
   an add holds the last issued id until it commits (store note 1), and a
   ``run_now`` that added first and then waited for the row a fire held, while
   that fire waited for the id, was a deadlock the server broke by rolling one
   back (the ``run_now`` failed, or the fire, whose slots ``latest`` then lost).
   A node without a schedule's task leaves its slots to those that have it
   (nodes may run different code); where one owner fires, a missing task
   uses up the slot and records why. A slot still unfired ``unclaimed_after``
   seconds after it was due says so in ``last_error`` (a node without the task
   writes it, once, and looks again that often): no node that has the task
   runs. The slot still waits for one, which fires it by the misfire policy
   and clears the error.
8. **Arguments that fit, or no schedule.** A schedule's arguments are checked
   against its task (``TaskSpec.validate``) as soon as the task is known, so a
   misfit is refused by the call that gave it, never stored to fail at every
   slot: ``create`` and ``update`` check at once (the task must be
   registered); a declaration (``rt.schedule``, ``@rt.cron``, a task's
   ``cron``) checks at once if its task is registered, else the task's
   registration checks it and refuses the task (``check_task``: tasks loaded
   at start are registered before any declaration is stored, so the start
   fails and stores nothing). A declaration naming a task this process does
   not register is stored unchecked (another process may run it); its slots
   record why they added no job (``last_error``). A definition checked at once
   is stored with its arguments as the task takes them (``3.0`` for an ``int``
   is ``3``, ``taskrt.params`` note 5); every fire's job is checked as any add.

The module is long because a schedule's whole life is here: the definition's
checks, the Python API, and the owner's loop, which share the row and its
notes; the maths is ``taskrt.schedule``'s, the SQL the store's.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import logging
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from .clock import TimerHandle
from .definitions import Task, TaskCall, TaskSpec
from .errors import (
    InvalidOption,
    PoolNotFound,
    StoreError,
    TaskNotFound,
    TaskrtError,
    ValidationError,
)
from .limits import DEFAULT_LIMITS, check_flag, check_text, encode, shown
from .models import MISFIRE_POLICIES, JobStatus, Misfire, ScheduleDefinition, ScheduleInfo
from .retention import Retention, RetentionStatistics
from .schedule import CronError, CronSpec, next_fire_ts, parse_cron
from .transaction import refuse_in_block

if TYPE_CHECKING:
    from .background import Background
    from .clock import Clock
    from .counters import Counters
    from .definitions import TaskRef
    from .pool import Pool
    from .store import JobStore, StoreTransaction
    from .transaction import Transaction


class SchedulerHost(Protocol):
    """What the scheduler asks of the runtime (a ``RetentionHost`` too)."""

    store: JobStore
    clock: Clock
    counters: Counters
    background: Background
    grace: float

    @property
    def owning(self) -> bool: ...

    @property
    def runs_jobs(self) -> bool:
        """Whether this process fires schedules: the owner, or every node."""
        ...

    @property
    def started(self) -> bool: ...

    @property
    def tasks(self) -> dict[str, TaskSpec]: ...

    @property
    def pools(self) -> dict[str, Pool]: ...

    def require_started(self, what: str) -> None: ...

    async def poke_owner(self) -> None: ...

    async def prune_history(self, older_than: float) -> int: ...

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Transaction]: ...

    def pool(
        self, name: str, *, concurrency: int | None = None, capacity: int | None = None
    ) -> Pool: ...

    async def enqueue(
        self,
        task: TaskRef,
        /,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        pool: str | None = None,
        tx: Transaction | None = None,
        **options: Any,
    ) -> int: ...

    async def cleanup(
        self, older_than: float | timedelta = ..., statuses: Iterable[JobStatus | str] = ...
    ) -> int: ...


log = logging.getLogger("taskrt.scheduler")

MAX_CATCH_UP = 100
MAX_NAME = 200
# A slot search stops after this many slots (see ``newest_slots``).
_SCAN_LIMIT = 100_000
# After an unexpected error firing a schedule, try it again this much later.
_RETRY_AFTER = 1.0
_BUSY_RETRY = 0.1  # seconds before looking again at a row another process holds
UNCLAIMED_AFTER = 30.0  # seconds: a slot unfired that long past due says why (note 7)


class ScheduleNotFound(TaskrtError, LookupError):
    code = "schedule_not_found"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no schedule named {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "schedule": self.name}


class ScheduleExists(TaskrtError):
    """Creating a schedule whose name is taken by a different definition."""

    code = "schedule_exists"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"a schedule named {name!r} exists with a different definition; update it instead"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "schedule": self.name}


# -- values --------------------------------------------------------------------------


# ScheduleDefinition and ScheduleInfo are plain values: taskrt.models.


@dataclass(frozen=True, slots=True)
class ScheduleStat:
    name: str
    paused: bool
    next_run_at: float | None
    last_run_at: float | None
    fires: int
    failures: int


@dataclass(frozen=True, slots=True)
class ScheduleStatistics:
    """A snapshot of every schedule: counts, next fire times, fires and failures."""

    active: int
    paused: int
    next_run_at: float | None
    schedules: tuple[ScheduleStat, ...]
    retention: RetentionStatistics | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "paused": self.paused,
            "next_run_at": self.next_run_at,
            "schedules": [
                {
                    "name": s.name,
                    "paused": s.paused,
                    "next_run_at": s.next_run_at,
                    "last_run_at": s.last_run_at,
                    "fires": s.fires,
                    "failures": s.failures,
                }
                for s in self.schedules
            ],
            "retention": None if self.retention is None else self.retention.to_dict(),
        }


def check_schedule_name(name: Any) -> str:
    """A schedule's name: 1 to ``MAX_NAME`` characters, not all blank, and one a URL
    path segment and an HTTP header carry as it is (``/schedules/{name}``): no
    ``/`` and no control character."""
    if not isinstance(name, str):
        raise InvalidOption("name", f"expected a string, found {type(name).__name__}")
    if not name.strip() or len(name) > MAX_NAME:
        found = repr(name) if len(name) <= MAX_NAME else f"{len(name)} characters"
        raise InvalidOption(
            "name",
            f"expected a non-empty string of at most {MAX_NAME} characters, not all "
            f"white space; found {found}",
        )
    check_text(name, "name", max_bytes=4 * MAX_NAME)
    bad = next((c for c in name if c == "/" or unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise InvalidOption("name", f"expected no '/' and no control character, found {bad!r}")
    if name in (".", ".."):  # a URL's path drops such a segment (RFC 3986)
        raise InvalidOption("name", f"expected a name other than '.' and '..', found {name!r}")
    return name


def check_arguments(definition: ScheduleDefinition, spec: TaskSpec) -> ScheduleDefinition:
    """``definition`` with its args and kwargs as ``spec`` takes them (note 8: a
    ``3.0`` for an ``int`` is ``3``), else ``ValidationError`` naming the task, the
    schedule and what the task refused."""
    try:
        given = dict(definition.kwargs)
        args, kwargs = spec.validate(definition.args, given)
    except ValidationError as exc:
        where = f" parameter {exc.parameter!r}" if exc.parameter else ""
        reason = str(exc).removeprefix(f"task {exc.task!r}{where}: ")
        raise ValidationError(
            spec.name,
            f"schedule {definition.name!r} would add its jobs with arguments the task "
            f"refuses (args {shown(definition.args)}, kwargs {shown(definition.kwargs)}): "
            f"{reason}",
            parameter=exc.parameter,
        ) from None
    if args is definition.args and kwargs is given:
        return definition
    return dataclasses.replace(definition, args=tuple(args), kwargs=kwargs)


def _looked_up(name: Any) -> None:
    """A name an operation looks a schedule up by: what is no string is
    ``InvalidOption``; a string no schedule could have (a control character, a
    lone surrogate, ``/``) names none: ``ScheduleNotFound``, as over HTTP."""
    if not isinstance(name, str):
        check_schedule_name(name)  # raises, naming the field
    try:
        check_schedule_name(name)
    except InvalidOption:
        raise ScheduleNotFound(name) from None


def define(
    name: str,
    task: Task[Any, Any] | str,
    cron: str,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    pool: str | None = None,
    tz: str = "UTC",
    misfire: str = "latest",
) -> ScheduleDefinition:
    """A validated definition; a bad field raises ``InvalidOption`` or ``CronError`` naming it."""
    check_schedule_name(name)
    if isinstance(task, TaskCall):
        raise InvalidOption(
            "task", "expected a task or a task name; per-call options cannot be scheduled"
        )
    task_name = task.name if isinstance(task, Task) else task
    if not isinstance(task_name, str) or not task_name:
        raise InvalidOption("task", f"expected a task or a task name, found {task!r}")
    if not isinstance(tz, str):
        raise InvalidOption("tz", f"expected an IANA time zone name, found {tz!r}")
    parse_cron(cron, tz)
    if isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise InvalidOption("args", f"expected a list of arguments, found {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise InvalidOption("kwargs", f"expected an object, found {type(kwargs).__name__}")
    if kwargs is not None and not all(isinstance(k, str) for k in kwargs):
        raise InvalidOption("kwargs", "expected string keys")
    if pool is not None and (not isinstance(pool, str) or not pool):
        raise InvalidOption("pool", f"expected a non-empty pool name or None, found {pool!r}")
    if misfire not in MISFIRE_POLICIES:
        raise InvalidOption(
            "misfire", f"expected one of {', '.join(MISFIRE_POLICIES)}, found {misfire!r}"
        )
    definition = ScheduleDefinition(
        name=name,
        task=task_name,
        expression=cron,
        args=tuple(args),
        kwargs=dict(kwargs or {}),
        pool=pool,
        tz=tz,
        misfire=misfire,
    )
    # What reaches the schedules table is checked like a job's values (taskrt.limits).
    for field_name, text in (("name", name), ("task", task_name), ("pool", pool), ("tz", tz)):
        if text is not None:
            check_text(text, field_name, max_bytes=DEFAULT_LIMITS.max_key_bytes)
    what = f"the arguments of schedule {name!r}"
    for field, value in (("args", list(args)), ("kwargs", dict(kwargs or {}))):
        encode(
            value,
            what,
            max_bytes=DEFAULT_LIMITS.max_args_bytes,
            max_depth=DEFAULT_LIMITS.max_depth,
            field=field,
        )
    return definition


# -- slots (note 3) ---------------------------------------------------------------------


def newest_slots(spec: CronSpec, first: float, now: float, n: int) -> list[float]:
    """The newest ``n`` slots in ``[first, now]``, oldest first; ``first`` is a slot.

    Searches backwards from ``now`` in windows that double, so that finding the
    latest slot after a long downtime does not walk every slot since ``first``.
    """
    if first > now or n < 1:
        return []
    width = 1.0
    while True:
        low = now - width
        if low <= first:
            return ([first, *_between(spec, first, now)])[-n:]
        found = _between(spec, low, now)
        if len(found) >= n:
            return found[-n:]
        width *= 2


def _between(spec: CronSpec, after: float, until: float) -> list[float]:
    slots = spec.fires_between(_utc(after), _utc(until), _SCAN_LIMIT)
    return [s.timestamp() for s in slots]


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def slot_key(name: str, slot: float) -> str:
    """The unique key of a slot's job: ``cron:{name}:{slot}`` (note 1)."""
    text = f"{slot:.6f}".rstrip("0").rstrip(".")
    return f"cron:{name}:{text}"


# -- the scheduler -----------------------------------------------------------------------


class Scheduler:
    """``rt.schedules``: manage schedules; in the owner runtime, fire them.

    ``await rt.schedules()`` (or ``.list()``) lists them. Every method needs a
    started runtime, except declaring (``rt.schedule``, ``@rt.cron``).
    """

    def __init__(self, rt: SchedulerHost) -> None:
        self._rt = rt
        self.misfire_grace = 1.0
        self.max_catch_up = MAX_CATCH_UP
        self.watch_interval = 1.0
        # Seconds a fire's transaction may sit idle holding its row (note 7): the
        # runtime's node TTL.
        self.hold_limit = 5.0
        # Seconds past due after which a slot no node has fired says why (note 7).
        self.unclaimed_after = UNCLAIMED_AFTER
        self.retention = Retention(rt)
        self._declared: dict[str, ScheduleDefinition] = {}
        self._from_tasks: set[str] = set()
        self._due: dict[str, float] = {}
        self._timer: TimerHandle | None = None
        self._timer_at: float | None = None
        self._firing: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._version: str | None = None
        self._running = False

    def __repr__(self) -> str:
        return f"<Scheduler active={len(self._due)} running={self._running}>"

    # -- declaring (note 4) ---------------------------------------------------------------

    def declare(self, definition: ScheduleDefinition) -> ScheduleDefinition:
        """Record a declaration; stored at start, or now in the background if started.
        Its pool, if it names one, is declared too, as a task's is.

        Its arguments must fit its task (``ValidationError``), checked here when
        the task is registered already, else when it registers (``check_task``,
        note 8)."""
        spec = self._rt.tasks.get(definition.task)
        if spec is not None:
            definition = check_arguments(definition, spec)
        self._declare(definition)
        return definition

    def _declare(self, definition: ScheduleDefinition) -> None:
        if definition.pool is not None:
            self._rt.pool(definition.pool)
        self._declared[definition.name] = definition
        self._from_tasks.discard(definition.name)
        if self._rt.started:
            self._rt.background.spawn(self._store_declared([definition]))

    def check_task(self, spec: TaskSpec) -> ScheduleDefinition | None:
        """The schedule a task with ``cron`` declares, refused as ``task_registered``
        would refuse it (``InvalidOption``, ``CronError``); declares nothing.

        The schedules declared for the task (its ``cron`` one included) must have
        arguments that fit it, else ``ValidationError`` refuses the task (note 8)."""
        own: ScheduleDefinition | None = None
        if spec.cron is not None:
            try:
                check_schedule_name(spec.name)
            except InvalidOption as exc:
                raise InvalidOption(
                    "cron",
                    f"a task's cron declares a schedule named after the task, and "
                    f"{spec.name!r} is no schedule name ({exc}); declare it with "
                    "rt.schedule(name, task, cron) under a name of its own",
                ) from None
            own = define(spec.name, spec.name, spec.cron, tz=spec.cron_tz)
        # The declaration the task's own ``cron`` made before is replaced (or dropped).
        replaced = own is not None or spec.name in self._from_tasks
        for d in self._declared.values():
            if d.task == spec.name and not (replaced and d.name == spec.name):
                check_arguments(d, spec)
        if own is not None:
            check_arguments(own, spec)
        return own

    def task_registered(self, spec: TaskSpec, definition: ScheduleDefinition | None) -> None:
        """A task with ``cron`` (Anchor ``cronjob``) declares a schedule named after it:
        ``definition``, what ``check_task`` gave for ``spec``."""
        if definition is not None:
            # Checked against ``spec`` above; the registered task is still the old one.
            self._declare(definition)
            self._from_tasks.add(spec.name)
        elif spec.name in self._from_tasks:
            self._from_tasks.discard(spec.name)
            self._declared.pop(spec.name, None)

    def job_failed(self, metadata: Mapping[str, Any]) -> None:
        """A job of a schedule ended FAILURE (note 6); called by the runtime."""
        name = metadata.get("schedule")
        if isinstance(name, str):
            self._rt.store.schedule_failed(name)

    async def _store_declared(self, definitions: builtins.list[ScheduleDefinition]) -> None:
        try:
            await self._upsert(definitions, replace=True, declared=True)
        except Exception:
            log.exception("storing declared schedules failed")

    async def create(
        self,
        name: str,
        task: Task[Any, Any] | str,
        cron: str,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        pool: str | None = None,
        tz: str = "UTC",
        misfire: str = "latest",
        replace: bool = True,
    ) -> tuple[ScheduleInfo, bool]:
        """Store a schedule now; returns it and whether it changed anything.

        An equal schedule is left as it is. A different one of the same name is
        updated, or, with ``replace=False``, refused with ``ScheduleExists``.
        The task must be registered here, the pool (if one is given) declared
        here, and the arguments must fit the task.
        """
        self._rt.require_started("creating a schedule")
        refuse_in_block("rt.schedules.create()")
        check_flag(replace, "replace")
        definition = define(
            name, task, cron, args=args, kwargs=kwargs, pool=pool, tz=tz, misfire=misfire
        )
        definition = self._check_task(definition)
        [(info, changed)] = await self._upsert([definition], replace=replace)
        return info, changed

    def _check_task(self, definition: ScheduleDefinition) -> ScheduleDefinition:
        """A schedule given at run time names a task registered here and, if any, a
        pool declared here, as ``POST /jobs`` does: its fires would otherwise all be
        refused, or create a pool of whatever name it gave. Its arguments must fit
        the task, refused as a declaration's are, and are returned as the task takes
        them (``check_arguments``, note 8)."""
        spec = self._rt.tasks.get(definition.task)
        if spec is None:
            raise TaskNotFound(definition.task)
        if definition.pool is not None and definition.pool not in self._rt.pools:
            raise PoolNotFound(definition.pool)
        return check_arguments(definition, spec)

    async def _upsert(
        self, definitions: Sequence[ScheduleDefinition], *, replace: bool, declared: bool = False
    ) -> builtins.list[tuple[ScheduleInfo, bool]]:
        """Insert or change each definition (``replace``: a different one of the same
        name is changed, else refused); ``declared``: they are the code's (note 4)."""
        now = self._rt.clock.now()
        out: builtins.list[tuple[ScheduleInfo, bool]] = []
        bumped: int | None = None
        async with self._rt.store.transaction() as conn:
            for d in definitions:
                # Locked (on PostgreSQL), so processes declaring it at once take turns.
                old = await conn.schedule(d.name, lock=True)
                if old is None:
                    spec = parse_cron(d.expression, d.tz)
                    if not await conn.insert_schedule(d, next_fire_ts(spec, now), now):
                        # Another process inserted it since (nodes starting together).
                        old = await conn.schedule(d.name, lock=True)
                        assert old is not None
                if old is None:
                    changed = True
                else:
                    changed = old.definition.canonical() != d.canonical()
                    if changed and not replace:
                        raise ScheduleExists(d.name)
                    if changed:
                        await conn.define_schedule(d, _next_after_change(old, d, now), now)
                if declared:
                    await conn.declared_schedule(d.name)
                info = await conn.schedule(d.name) if changed else old
                assert info is not None  # just written, in this transaction
                if changed:
                    bumped = await conn.bump_schedules()
                out.append((info, changed))
        for info, changed in out:
            if changed:
                self._track(info)
                if self._rt.tasks.get(info.task) is None:
                    log.warning("schedule %r names task %r, not registered", info.name, info.task)
        self._bumped(bumped, len([c for _, c in out if c]))
        return out

    # -- reading ------------------------------------------------------------------------

    async def __call__(self) -> builtins.list[ScheduleInfo]:
        """``await rt.schedules()``: every schedule, by name."""
        return await self.list()

    async def list(self) -> builtins.list[ScheduleInfo]:
        """Every schedule, by name."""
        self._rt.require_started("listing schedules")
        return await self._rt.store.schedules()

    async def get(self, name: str) -> ScheduleInfo:
        """One schedule (``ScheduleNotFound`` when there is none)."""
        self._rt.require_started("reading a schedule")
        _looked_up(name)
        info = await self._rt.store.schedule(name)
        if info is None:
            raise ScheduleNotFound(name)
        return info

    async def statistics(self) -> ScheduleStatistics:
        """Active and paused counts, next fire times, fires and failures per schedule."""
        self._rt.require_started("schedule statistics")
        await self._rt.store.settle()  # pending FAILURE writes feed the counts (note 6)
        infos = await self.list()
        upcoming = [i.next_run_at for i in infos if i.next_run_at is not None and not i.paused]
        return ScheduleStatistics(
            active=sum(1 for i in infos if not i.paused),
            paused=sum(1 for i in infos if i.paused),
            next_run_at=min(upcoming) if upcoming else None,
            schedules=tuple(
                ScheduleStat(i.name, i.paused, i.next_run_at, i.last_run_at, i.fires, i.failures)
                for i in infos
            ),
            retention=self.retention.statistics() if self._rt.runs_jobs else None,
        )

    # -- changing ---------------------------------------------------------------------

    async def pause(self, name: str) -> ScheduleInfo:
        """Stop firing; slots passing while paused are not fired later."""
        refuse_in_block("rt.schedules.pause()")
        now = self._rt.clock.now()

        async def change(conn: StoreTransaction, info: ScheduleInfo) -> bool:
            if info.paused:
                return False
            await conn.pause_schedule(name, now)
            return True

        return await self._modify(name, change)

    async def resume(self, name: str) -> ScheduleInfo:
        """Fire again, from the first slot after now."""
        refuse_in_block("rt.schedules.resume()")
        now = self._rt.clock.now()

        async def change(conn: StoreTransaction, info: ScheduleInfo) -> bool:
            if not info.paused:
                return False
            nxt = next_fire_ts(parse_cron(info.expression, info.tz), now)
            await conn.resume_schedule(name, nxt, now)
            return True

        return await self._modify(name, change)

    async def update(
        self,
        name: str,
        *,
        task: Task[Any, Any] | str | None = None,
        expression: str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        pool: str | None = None,
        tz: str | None = None,
        misfire: str | None = None,
    ) -> ScheduleInfo:
        """Change the given parts of a schedule's definition (``None``: keep).

        A new expression or time zone moves the next slot to the first one of
        the new rule after now. A schedule declared in code is declared again
        at the next start, which undoes a change made here.
        """

        refuse_in_block("rt.schedules.update()")

        def merged(d: ScheduleDefinition) -> ScheduleDefinition:
            return define(
                name,
                d.task if task is None else task,
                d.expression if expression is None else expression,
                args=d.args if args is None else args,
                kwargs=d.kwargs if kwargs is None else kwargs,
                pool=d.pool if pool is None else pool,
                tz=d.tz if tz is None else tz,
                misfire=d.misfire if misfire is None else misfire,
            )

        now = self._rt.clock.now()

        async def change(conn: StoreTransaction, info: ScheduleInfo) -> bool:
            # The parts not given come from the row as locked now, never from a read
            # before: two changes at once each keep the other's (note 7).
            d = info.definition
            new = merged(d)
            if new.canonical() == d.canonical():
                return False
            new = self._check_task(new)
            if new.canonical() == d.canonical():
                return False  # the same once the task took its arguments
            await conn.define_schedule(new, _next_after_change(info, new, now), now)
            return True

        return await self._modify(name, change)

    async def delete(self, name: str) -> None:
        """Remove a schedule (a code declaration brings it back at the next start)."""
        refuse_in_block("rt.schedules.delete()")

        async def change(conn: StoreTransaction, info: ScheduleInfo) -> bool:
            await conn.delete_schedule(name)
            return True

        await self._modify(name, change)
        self._declared.pop(name, None)
        self._due.pop(name, None)
        self._arm()

    async def _modify(
        self, name: str, change: Callable[[StoreTransaction, ScheduleInfo], Awaitable[bool]]
    ) -> ScheduleInfo:
        """Read the row, ``change`` it, bump, read it again; one transaction."""
        self._rt.require_started("changing a schedule")
        _looked_up(name)
        bumped: int | None = None
        async with self._rt.store.transaction() as conn:
            # Locked: a node firing it meanwhile (or another change) goes first, and
            # ``change`` sees what it committed (note 7).
            await conn.bound_idle(self.hold_limit)
            info = await conn.schedule(name, lock=True)
            if info is None:
                raise ScheduleNotFound(name)
            changed = await change(conn, info)
            if changed:
                bumped = await conn.bump_schedules()
                info = await conn.schedule(name) or info  # None: deleted
        if changed:
            self._track(info)
            self._bumped(bumped, 1)
        return info

    async def run_now(self, name: str) -> int:
        """Add the schedule's job now, outside its slots; returns the job's id."""
        refuse_in_block("rt.schedules.run_now()")
        self._rt.require_started("running a schedule")
        _looked_up(name)
        async with self._rt.transaction() as tx:
            conn = tx.connection
            # The row first, then the job's add, as a fire takes them (note 7).
            await conn.bound_idle(self.hold_limit)
            info = await conn.schedule(name, lock=True)
            if info is None:
                raise ScheduleNotFound(name)
            job_id = await self._add_job(info, tx, None)
            await conn.schedule_ran(name, job_id)
        return job_id

    async def _add_job(self, info: ScheduleInfo, tx: Transaction, slot: float | None) -> int:
        spec = self._rt.tasks.get(info.task)
        if spec is None:
            raise TaskNotFound(info.task)
        task: Task[Any, Any] = Task(spec)
        if slot is None:
            call = task.options(metadata={"schedule": info.name, "slot": None})
        else:
            call = task.options(
                unique_key=slot_key(info.name, slot),
                metadata={"schedule": info.name, "slot": slot},
            )
        pool = self._rt.pool(info.pool or spec.pool)
        # ``enqueue``, not ``pool.add``: a job keyword argument named ``tx`` is the job's.
        job_id = await self._rt.enqueue(
            call, args=info.args, kwargs=dict(info.kwargs), pool=pool.name, tx=tx
        )
        return job_id

    # -- the owner's loop (notes 1-3, 5) ---------------------------------------------------

    async def start(self, rt: SchedulerHost) -> None:
        """Store the declared schedules; the owner fires due slots from now on."""
        if self._declared:
            await self._upsert(builtins.list(self._declared.values()), replace=True, declared=True)
        if rt.runs_jobs:
            await self.take_over()

    async def take_over(self) -> None:
        """This process owns the database now: fire due slots from now on (note 5)."""
        if self._running:
            return
        self._running = True
        if self._rt.owning:
            await self._forget_undeclared()
        await self._reload()
        self.retention.start()
        self._watcher = asyncio.create_task(self._watch(), name="taskrt-scheduler-watch")
        # Slots missed while the runtime was down are handled before start returns.
        self._firing = asyncio.create_task(self._run_due(), name="taskrt-scheduler")
        await asyncio.wait([self._firing])

    async def _forget_undeclared(self) -> None:
        """The owner deletes the schedules of code that its code no longer declares
        (note 4): removed from the code, a schedule stops firing."""
        bumped: int | None = None
        gone: builtins.list[str] = []
        async with self._rt.store.transaction() as conn:
            for name in await conn.schedules_of_code():
                if name in self._declared:
                    continue
                info = await conn.schedule(name, lock=True)
                if info is None:
                    continue
                await conn.delete_schedule(name)
                gone.append(name)
            if gone:
                bumped = await conn.bump_schedules()
        for name in gone:
            log.info("schedule %r is no longer declared in the code: deleted", name)
        self._bumped(bumped, len(gone))

    async def stop(self, rt: SchedulerHost) -> None:
        """Stop firing (a slot being fired ends first, within ``grace``)."""
        self._running = False
        self._disarm()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self.retention.stop()
        if self._firing is not None and not self._firing.done():
            # A slot being fired commits or rolls back as a whole (note 1): let it end.
            await asyncio.wait([self._firing], timeout=rt.grace)
        self._firing = None
        self._due.clear()
        self._version = None

    async def wait_idle(self) -> None:
        """Return once no slot is being fired (the due ones are done and the timer re-armed)."""
        while self._firing is not None and not self._firing.done():
            await asyncio.wait([self._firing])

    def _track(self, info: ScheduleInfo) -> None:
        """Follow a row's next slot in memory (owner only)."""
        if not self._running:
            return
        if info.paused or info.next_run_at is None:
            self._due.pop(info.name, None)
        else:
            self._due[info.name] = info.next_run_at
        self._arm()

    def _arm(self) -> None:
        if not self._running or not self._due:
            self._disarm()
            return
        when = min(self._due.values())
        if self._timer is not None and self._timer_at is not None and self._timer_at <= when:
            return  # it wakes in time; a wake looks again (note 2)
        self._disarm()
        self._timer_at = when
        self._timer = self._rt.clock.call_at(when, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if not self._running:
            return
        if self._firing is None or self._firing.done():
            self._firing = asyncio.create_task(self._run_due(), name="taskrt-scheduler")
        # Else the running pass looks again before it re-arms.

    async def _run_due(self) -> None:
        while self._running:
            now = self._rt.clock.now()
            due = sorted((when, name) for name, when in self._due.items() if when <= now)
            if not due:
                self._arm()  # synchronous with the check above: nothing slips between
                return
            for _, name in due:
                if not self._running:
                    return
                try:
                    await self._fire(name, now)
                except Exception:
                    # Nothing was committed (note 1): the slot is still due. Try again later.
                    log.exception("firing schedule %r failed", name)
                    if name in self._due:
                        self._due[name] = self._rt.clock.now() + _RETRY_AFTER

    async def _unclaimed(self, conn: Any, info: ScheduleInfo, now: float) -> None:
        """A schedule whose task this node does not have (note 7): looked at again
        once its slot is ``unclaimed_after`` past due, and then that often; a slot
        no node has fired by then says why, once."""
        first = info.next_run_at
        if info.paused or first is None:
            self._due.pop(info.name, None)
            return
        if now - first < self.unclaimed_after:
            self._due[info.name] = first + self.unclaimed_after
            return
        error = f"no running node has the task {info.task!r}: its slots wait for one"
        if info.last_error != error:
            log.warning("schedule %r: %s", info.name, error)
            await conn.schedule_fired(
                info.name,
                next_run_at=first,
                last_run_at=None,
                last_job_id=None,
                error=error,
                added=0,
            )
        self._due[info.name] = now + self.unclaimed_after

    async def _fire(self, name: str, reached: float) -> None:
        """Fire the due slots of one schedule, in one transaction with its row (note 1).

        ``reached``: when the pass that found it due began. A slot's lateness is
        counted to then (note 3): a pass through many schedules due at once takes
        a while, and counted to each one's own turn, ``skip`` dropped the slots of
        the last ones in line, the same ones at every slot.
        """
        rt = self._rt
        async with rt.transaction() as tx:
            now = rt.clock.now()
            conn = tx.connection
            await conn.bound_idle(self.hold_limit)  # note 7
            found = await conn.schedule(name, lock=True, skip_locked=True)
            if found is None:
                if await conn.schedule(name) is not None:
                    # Another process holds the row (firing it, or changing it): look
                    # again shortly, never wait behind it (note 7).
                    if name in self._due:
                        self._due[name] = now + _BUSY_RETRY
                    return
                self._due.pop(name, None)
                return
            info = found
            if info.task not in rt.tasks and not rt.owning:
                # A node without the task leaves its slots to the nodes that have it.
                await self._unclaimed(conn, info, now)
                return
            first = info.next_run_at
            if info.paused or first is None or first > now:
                self._track(info)  # changed by someone else meanwhile
                return
            try:
                spec = parse_cron(info.expression, info.tz)
                nxt: float | None = next_fire_ts(spec, now)
            except CronError as exc:
                # Stored rules were valid when stored; one that no longer is stops here.
                log.error("schedule %r stopped: %s", name, exc)
                await conn.schedule_fired(
                    name,
                    next_run_at=None,
                    last_run_at=None,
                    last_job_id=None,
                    error=str(exc),
                    added=0,
                )
                self._due.pop(name, None)
                return
            slots = self._slots(spec, first, now, info.misfire, min(reached, now))
            # Due slots left unfired by the policy (note 3): one misfire, for metrics.
            missed = len(newest_slots(spec, first, now, len(slots) + 1)) > len(slots)
            job_id: int | None = None
            added = 0
            error: str | None = None
            last: float | None = None  # the last slot used up
            for slot in slots:
                last = slot
                try:
                    job_id = await self._add_job(info, tx, slot)
                except StoreError:
                    raise
                except TaskrtError as exc:
                    # A refused job (unknown task, bad arguments, full pool) uses up its
                    # slot; the due slots after it (``all``) would be refused alike: they
                    # are dropped, as misfires.
                    error = str(exc)
                    log.warning("schedule %r added no job for a slot: %s", name, exc)
                    missed = missed or slot != slots[-1]
                    break
                added += 1
            await conn.schedule_fired(
                name,
                next_run_at=nxt,
                last_run_at=last,
                last_job_id=job_id,
                error=error,
                added=added,
            )
        rt.counters.scheduler_fires[name] += added  # committed: counted (taskrt.metrics)
        rt.counters.scheduler_misfires[name] += missed
        if nxt is not None and name in self._due:
            self._due[name] = nxt

    def _slots(
        self, spec: CronSpec, first: float, now: float, misfire: str, reached: float
    ) -> builtins.list[float]:
        """Which due slots to fire (note 3); ``reached``: when the scheduler got to them."""
        if misfire == "all":
            return newest_slots(spec, first, now, self.max_catch_up)
        newest = newest_slots(spec, first, now, 1)
        if misfire == "skip" and newest and reached - newest[-1] > self.misfire_grace:
            return []
        return newest

    async def _reload(self) -> None:
        self._version = await self._rt.store.schedules_version()
        infos = await self.list()
        self._due = {
            i.name: i.next_run_at for i in infos if not i.paused and i.next_run_at is not None
        }
        self._arm()

    def _bumped(self, version: int | None, changes: int) -> None:
        """Our own changes need no reload; another process's do (note 5)."""
        if version is not None and not self._running and self._rt.started:
            # Not the owner: tell it now rather than at its next look.
            self._rt.background.spawn(self._rt.poke_owner())
        if version is None or not self._running:
            return
        known = int(self._version) if self._version is not None else 0
        if version == known + changes:
            self._version = str(version)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval)
            try:
                await self.look_for_changes()
            except TaskrtError:
                log.exception("reading schedule changes failed")

    async def look_for_changes(self) -> None:
        """Reload the schedules if another process changed them (note 5)."""
        if not self._running:
            return
        version = await self._rt.store.schedules_version()
        if version != self._version:
            await self._reload()


def _next_after_change(old: ScheduleInfo, new: ScheduleDefinition, now: float) -> float | None:
    """A new expression or time zone moves the next slot to the first one of the new rule."""
    if not old.paused and (old.expression, old.tz) != (new.expression, new.tz):
        return next_fire_ts(parse_cron(new.expression, new.tz), now)
    return old.next_run_at


__all__ = [
    "MAX_CATCH_UP",
    "MISFIRE_POLICIES",
    "Misfire",
    "ScheduleDefinition",
    "ScheduleExists",
    "ScheduleInfo",
    "ScheduleNotFound",
    "ScheduleStat",
    "ScheduleStatistics",
    "Scheduler",
    "define",
    "newest_slots",
    "slot_key",
]
