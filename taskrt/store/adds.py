"""Ids and unique keys for a batch of adds, the same on every backend (``taskrt.store`` note 2).

``plan`` decides, before anything is written, which job of each ``add`` makes
a row and with which id: ids follow the last one issued (or a ``next_id``
hook's, which must be above it), a unique key held by a live job, or within
the window of an earlier add (``unique_for``), gives that job's id, and a key
repeated within the batch gives its first job's id. Each group (one ``add`` or
``add_many`` call) is all or nothing. A job added with ``unique_for`` holds its
key's window (``Plan.windows``) in the same transaction. Where the backend
counts a pool's waiting jobs in the adds' transaction (PostgreSQL, where
several processes add at once), ``room`` says how many more each pool with a
capacity takes, and a group that would pass it fails with ``QueueFull``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import DuplicateJob, DuplicateJobId, JobNotFound, QueueFull
from ..models import BLOCKED_AT
from .protocol import InsertResult, NewJob

Row = tuple[Any, ...]
"""(id, task, pool, args, kwargs, max_attempts, priority, metadata, unique_key,
created_at, run_at, timeout, retry, external, deadline, lock_key): what an insert binds."""


@dataclass(slots=True)
class Plan:
    results: list[InsertResult | BaseException] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    last: int = 0
    """The last id issued once these rows are in."""
    windows: list[tuple[str, int, float]] = field(default_factory=list)
    """(key, job id, until): the unique windows the new rows hold."""


def plan(
    groups: list[list[NewJob]],
    last: int,
    holder: Callable[[str], int | None],
    found: set[int] | None = None,
    room: dict[str, tuple[int, int]] | None = None,
) -> Plan:
    """The rows to insert after id ``last``; ``holder(key)``: the job holding a key
    (live, or within a window); ``found``: the named parents (``NewJob.after``) that
    exist (a group naming another fails with ``JobNotFound``); ``room``: (capacity,
    free room) of each pool with a capacity, taken by the new rows (as the runtime's
    own check counts them, those an add may start at once included)."""
    out = Plan(last=last)
    keys: dict[str, int] = {}
    for jobs in groups:
        if found is not None:
            missing = next((p for job in jobs for p in job.after if p > 0 and p not in found), None)
            if missing is not None:
                out.results.extend([JobNotFound(missing)] * len(jobs))
                continue
        group_results: list[InsertResult] = []
        group_rows: list[Row] = []
        group_keys: dict[str, int] = {}
        group_windows: list[tuple[str, int, float]] = []
        group_last = out.last
        error: BaseException | None = None
        for job in jobs:
            if job.unique_key is not None:
                existing = keys.get(job.unique_key) or group_keys.get(job.unique_key)
                if existing is None:
                    existing = holder(job.unique_key)
                if existing is not None:
                    if job.workflow is not None:
                        # A workflow's step is no job on its own: it is added with the
                        # others, all or none, never replaced by the key's holder.
                        error = DuplicateJob(job.unique_key, existing)
                        break
                    group_results.append(InsertResult(existing, False))
                    continue
            if job.job_id is not None:
                if job.job_id <= group_last:
                    error = DuplicateJobId(job.job_id, group_last)
                    break
                job_id = job.job_id
            else:
                job_id = group_last + 1
            group_last = job_id
            if job.unique_key is not None:
                group_keys[job.unique_key] = job_id
                if job.unique_for is not None:
                    until = job.created_at + job.unique_for
                    group_windows.append((job.unique_key, job_id, until))
            group_rows.append(
                (
                    job_id,
                    job.task,
                    job.pool,
                    job.args_json,
                    job.kwargs_json,
                    job.max_attempts,
                    job.priority,
                    job.metadata_json,
                    job.unique_key,
                    job.created_at,
                    BLOCKED_AT if job.after or job.batch_key is not None else job.run_at,
                    job.timeout,
                    job.retry_json,
                    1 if job.external else 0,
                    job.deadline,
                    job.lock_key,
                )
            )
            group_results.append(InsertResult(job_id, True))
        if error is None and room is not None:
            error = _take_room(room, jobs, group_results)
        if error is not None:
            out.results.extend([error] * len(jobs))
            continue
        out.last = group_last
        keys.update(group_keys)
        out.rows.extend(group_rows)
        out.windows.extend(group_windows)
        out.results.extend(group_results)
    return out


def _take_room(
    room: dict[str, tuple[int, int]], jobs: list[NewJob], results: list[InsertResult]
) -> QueueFull | None:
    """Take the room of a group's new jobs, or ``QueueFull`` (nothing taken)."""
    wanted: dict[str, int] = {}
    for job, result in zip(jobs, results, strict=True):
        if result.created and job.pool in room:
            wanted[job.pool] = wanted.get(job.pool, 0) + 1
    for pool, n in wanted.items():
        capacity, free = room[pool]
        if n > free:
            return QueueFull(pool, capacity)
    for pool, n in wanted.items():
        capacity, free = room[pool]
        room[pool] = (capacity, free - n)
    return None


class Moves:
    """Jobs a transaction moves, by pool and status (``taskrt.store`` note 12): what
    its counts change by, added to ``job_counts`` at its end."""

    __slots__ = ("changes",)

    def __init__(self) -> None:
        self.changes: dict[tuple[str, str], int] = {}

    def move(self, pool: str, was: str | None, to: str | None, n: int = 1) -> None:
        """``n`` jobs of ``pool`` left ``was`` for ``to`` (None: they were added / deleted)."""
        if was == to or n == 0:
            return
        changes = self.changes
        if was is not None:
            changes[pool, was] = changes.get((pool, was), 0) - n
        if to is not None:
            changes[pool, to] = changes.get((pool, to), 0) + n

    def merge(self, other: Moves) -> None:
        for key, n in other.changes.items():
            self.changes[key] = self.changes.get(key, 0) + n


def count_by(counts: dict[str, dict[Any, int]], statuses: Any | None, pool: str | None) -> int:
    """How many of the live ``counts`` (pool -> status -> n) are in ``statuses`` and ``pool``."""
    wanted = set(statuses) if statuses is not None else None
    return sum(
        n
        for name, by_status in counts.items()
        if pool is None or name == pool
        for s, n in by_status.items()
        if wanted is None or s in wanted
    )
