"""Housekeeping: the built-in retention schedule that prunes old finished jobs.

By default every hour (``@hourly``) the owner runtime deletes SUCCESS jobs
finished more than 7 days ago and FAILURE and CANCELLED jobs finished more than
30 days ago, with their attempts, through ``rt.cleanup``. Job ids come from
SQLite's AUTOINCREMENT sequence, which a DELETE does not touch, so ids keep
increasing and are never reused. Configure with ``rt.retention(...)``.

Design notes:

1. It is a schedule kept in memory, not a row of ``schedules``: pruning is
   idempotent (a missed or repeated run changes nothing that the next one
   would not), so it needs none of the exactly-once machinery, and it adds no
   jobs, tasks or pools for users to see. Its clock and cron maths are the
   scheduler's.
2. A prune runs as its own task, so a long DELETE never delays the firing of
   a schedule's slot more than the write lock it shares with it.
3. One process prunes at a time. On PostgreSQL every node runs this
   schedule; a prune first asks the store to be ``alone`` (an advisory lock
   it never waits for), and a node that finds another pruning skips that run:
   the deletes would have been the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from .clock import TimerHandle
from .errors import InvalidOption
from .models import TERMINAL, JobStatus
from .retry import parse_duration
from .schedule import CronSpec, next_fire_ts, parse_cron

if TYPE_CHECKING:
    from .clock import Clock
    from .store import JobStore


class RetentionHost(Protocol):
    """What retention asks of the runtime: its clock, its grace, and ``cleanup``."""

    clock: Clock
    grace: float
    store: JobStore

    async def cleanup(
        self, older_than: float | timedelta = ..., statuses: Iterable[JobStatus | str] = ...
    ) -> int: ...

    async def prune_history(self, older_than: float) -> int: ...


log = logging.getLogger("taskrt.retention")

DAY = 86400.0
DEFAULT_AGES: dict[JobStatus, float] = {
    JobStatus.SUCCESS: 7 * DAY,
    JobStatus.FAILURE: 30 * DAY,
    JobStatus.CANCELLED: 30 * DAY,
}
DEFAULT_CRON = "@hourly"
DEFAULT_HISTORY = 30 * DAY  # the per-minute history (taskrt.history)

Ages = Mapping[str | JobStatus, float | timedelta | str | None]


@dataclass(frozen=True, slots=True)
class RetentionStatistics:
    """What retention does and has done in this process."""

    enabled: bool
    ages: dict[str, float]
    expression: str
    tz: str
    next_run_at: float | None
    last_run_at: float | None
    runs: int
    deleted: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "ages": dict(self.ages),
            "expression": self.expression,
            "tz": self.tz,
            "next_run_at": self.next_run_at,
            "last_run_at": self.last_run_at,
            "runs": self.runs,
            "deleted": self.deleted,
        }


def parse_ages(ages: Ages) -> dict[JobStatus, float]:
    """The defaults overridden by ``ages`` (a status mapped to ``None`` is kept forever)."""
    if not isinstance(ages, Mapping):
        raise InvalidOption(
            "retention", f"expected a mapping of status to age or None, found {ages!r}"
        )
    out = dict(DEFAULT_AGES)
    for key, value in ages.items():
        try:
            status = JobStatus(str(key).upper())
        except ValueError:
            status = None
        if status is None or status not in TERMINAL:
            raise InvalidOption(
                "retention", f"expected SUCCESS, FAILURE or CANCELLED as a key, found {key!r}"
            )
        if value is None:
            out.pop(status, None)
        elif isinstance(value, timedelta):  # checked as its seconds: not negative
            out[status] = parse_duration(value.total_seconds(), field=f"retention.{status.value}")
        else:
            out[status] = parse_duration(value, field=f"retention.{status.value}")
    return out


class Retention:
    """``rt.schedules.retention``: prunes finished jobs on a schedule (module notes)."""

    def __init__(self, rt: RetentionHost) -> None:
        self._rt = rt
        self.ages: dict[JobStatus, float] = dict(DEFAULT_AGES)
        self.history: float | None = DEFAULT_HISTORY
        self.spec: CronSpec = parse_cron(DEFAULT_CRON)
        self.runs = 0
        self.deleted = 0
        self.last_run_at: float | None = None
        self._next: float | None = None
        self._timer: TimerHandle | None = None
        self._pruning: asyncio.Task[int] | None = None
        self._running = False

    @property
    def enabled(self) -> bool:
        return bool(self.ages) or self.history is not None

    def configure(
        self,
        ages: Ages | None,
        *,
        cron: str = DEFAULT_CRON,
        tz: str = "UTC",
        history: float | str | timedelta | None = DEFAULT_HISTORY,
    ) -> None:
        """New ages (``None``: no retention), history age and schedule; at once."""
        spec = parse_cron(cron, tz)
        if history is not None:
            history = parse_duration(
                history.total_seconds() if isinstance(history, timedelta) else history,
                field="retention.history",
            )
        self.ages = {} if ages is None else parse_ages(ages)
        self.history = history
        self.spec = spec
        if self._running:
            self._arm()

    def statistics(self) -> RetentionStatistics:
        return RetentionStatistics(
            enabled=self.enabled,
            ages={s.value: age for s, age in self.ages.items()},
            expression=self.spec.expression,
            tz=self.spec.tz,
            next_run_at=self._next,
            last_run_at=self.last_run_at,
            runs=self.runs,
            deleted=self.deleted,
        )

    async def prune(self) -> int:
        """Delete what is older than the ages now; returns how many jobs went
        (0 when another process is pruning: note 3)."""
        deleted = 0
        async with self._rt.store.alone("retention") as alone:
            if not alone:
                log.info("retention skipped: another process is pruning")
                return 0
            for status, age in sorted(self.ages.items()):
                deleted += await self._rt.cleanup(older_than=age, statuses=[status])
            if self.history is not None:
                await self._rt.prune_history(self.history)
            # Unique windows outlive their jobs, not their own end (docs/flow-control.md).
            await self._rt.store.prune_unique_keys(self._rt.clock.now())
        self.runs += 1
        self.deleted += deleted
        self.last_run_at = self._rt.clock.now()
        if deleted:
            log.info("retention deleted %d finished job(s)", deleted)
        return deleted

    async def wait_idle(self) -> None:
        """Return once no prune is running."""
        while self._pruning is not None and not self._pruning.done():
            await asyncio.wait([self._pruning])

    # -- the schedule, run by the scheduler of the owner runtime ----------------------------

    def start(self) -> None:
        self._running = True
        self._arm()

    async def stop(self) -> None:
        self._running = False
        self._disarm()
        if self._pruning is not None and not self._pruning.done():
            await asyncio.wait([self._pruning], timeout=self._rt.grace)
        self._pruning = None

    def _arm(self) -> None:
        self._disarm()
        if not self._running or not self.enabled:
            return
        self._next = next_fire_ts(self.spec, self._rt.clock.now())
        self._timer = self._rt.clock.call_at(self._next, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._next = None

    def _on_timer(self) -> None:
        self._timer = None
        if not self._running:
            return
        if self._pruning is None or self._pruning.done():
            self._pruning = asyncio.create_task(self._run(), name="taskrt-retention")
        self._arm()

    async def _run(self) -> int:
        try:
            return await self.prune()
        except Exception:
            log.exception("retention failed")
            return 0


__all__ = ["DEFAULT_AGES", "Retention", "RetentionStatistics", "parse_ages"]
