"""A schedule's row, written in a transaction of the scheduler's: the same in both dialects.

``ScheduleWrites`` is what both stores' transactions (``StoreTransaction``) do
with schedules (``taskrt.scheduler``: a slot's job and the row's advance
commit together); a transaction extends it and says how a statement of
``queries`` (``?`` placeholders) runs in it (``run``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..models import ScheduleDefinition, ScheduleInfo
from .queries import (
    SQL_SCHEDULE,
    SQL_SCHEDULE_DECLARED,
    SQL_SCHEDULE_DEFINE,
    SQL_SCHEDULE_DELETE,
    SQL_SCHEDULE_FIRED,
    SQL_SCHEDULE_INSERT,
    SQL_SCHEDULE_PAUSE,
    SQL_SCHEDULE_RAN,
    SQL_SCHEDULE_RESUME,
    SQL_SCHEDULES_BUMP,
    SQL_SCHEDULES_OF_CODE,
)
from .rows import row_to_schedule


class ScheduleWrites:
    """The schedule operations of ``StoreTransaction`` (see the module docstring)."""

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a statement of ``queries`` (``?`` placeholders) in the transaction."""
        raise NotImplementedError

    ROW_LOCK = ""
    SKIP_LOCKED = ""
    """What makes a read lock the row until the transaction ends (PostgreSQL's
    ``FOR UPDATE``; a SQLite write transaction holds the whole file already)."""

    async def bound_idle(self, seconds: float) -> None:
        """Where rows are locked one by one (PostgreSQL): the server ends the
        transaction, and its session, once it has been idle ``seconds`` between two
        statements, so a process frozen while it held a row (a SIGSTOP, a stalled
        loop) holds it no longer. SQLite: nothing (a write holds the whole file)."""

    async def schedule(
        self, name: str, *, lock: bool = False, skip_locked: bool = False
    ) -> ScheduleInfo | None:
        """The schedule's row; ``lock``: locked until the transaction ends, so two
        processes firing one slot take turns and the second sees it fired.
        ``skip_locked``: None at once when another transaction holds the row
        (where rows are locked one by one; a firing node must not wait behind
        one frozen while it held a row)."""
        suffix = self.ROW_LOCK if lock else ""
        if lock and skip_locked:
            suffix += self.SKIP_LOCKED
        rows = await self.run(SQL_SCHEDULE + suffix, (name,))
        return row_to_schedule(rows[0]) if rows else None

    async def insert_schedule(
        self, definition: ScheduleDefinition, next_run_at: float | None, now: float
    ) -> bool:
        """False when a schedule of that name exists (another process may have
        declared it in between: the database says, never a read before)."""
        rows = await self.run(
            SQL_SCHEDULE_INSERT,
            (definition.name, *definition.canonical(), 0, next_run_at, now, now),
        )
        return bool(rows)

    async def define_schedule(
        self, definition: ScheduleDefinition, next_run_at: float | None, now: float
    ) -> None:
        """A changed definition of an existing schedule."""
        await self.run(
            SQL_SCHEDULE_DEFINE, (*definition.canonical(), next_run_at, now, definition.name)
        )

    async def declared_schedule(self, name: str) -> None:
        """The schedule is declared in code (``origin`` ``code``): the owner deletes it
        once its code no longer declares it."""
        await self.run(SQL_SCHEDULE_DECLARED, (name,))

    async def schedules_of_code(self) -> list[str]:
        """The names of the schedules declared in code, by any process."""
        return [str(row[0]) for row in await self.run(SQL_SCHEDULES_OF_CODE)]

    async def pause_schedule(self, name: str, now: float) -> None:
        await self.run(SQL_SCHEDULE_PAUSE, (now, name))

    async def resume_schedule(self, name: str, next_run_at: float, now: float) -> None:
        await self.run(SQL_SCHEDULE_RESUME, (next_run_at, now, name))

    async def delete_schedule(self, name: str) -> None:
        await self.run(SQL_SCHEDULE_DELETE, (name,))

    async def schedule_fired(
        self,
        name: str,
        *,
        next_run_at: float | None,
        last_run_at: float | None,
        last_job_id: int | None,
        error: str | None,
        added: int,
    ) -> None:
        """The row after firing slots: the next slot (``None``: stopped), what was added."""
        await self.run(
            SQL_SCHEDULE_FIRED, (next_run_at, last_run_at, last_job_id, error, added, name)
        )

    async def schedule_ran(self, name: str, job_id: int) -> None:
        """A job added by ``run_now``, outside the slots."""
        await self.run(SQL_SCHEDULE_RAN, (job_id, name))

    async def bump_schedules(self) -> int:
        """Say that definitions changed (the owner reloads them); the new version."""
        rows = await self.run(SQL_SCHEDULES_BUMP)
        return int(rows[0][0])
