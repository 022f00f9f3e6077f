"""The queued writes of the group commit, named once for every backend (``taskrt.store`` notes 1, 7, 12).

An ``Op`` is what a queued write does, not how: each backend maps it to its
own statement (``sqlite.sql.STATEMENT``, ``postgres.sql.STATEMENT``). The
lifecycle rank orders a batch's writes (note 7): ``segments`` cuts a batch
into runs that may be grouped into one statement per operation without
changing the order of any one job's writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..models import TRANSITIONS, JobStatus


def source_statuses(target: JobStatus) -> frozenset[str]:
    """The statuses ``target`` may be reached from (note 4), as stored."""
    return frozenset(s.value for s, nexts in TRANSITIONS.items() if target in nexts)


@dataclass(frozen=True, slots=True, eq=False)
class Op:
    """A queued write: a name (for logs, and a backend's statement), a lifecycle rank (note 7).

    ``status``: the status a counted write moves its job to (note 12).
    ``sources``: the statuses it may move a job from; ``implied``: the only
    one, when there is one (its params end with (id, pool)), else None (they
    end with (id, pool, was)).
    """

    name: str
    rank: int | None = None
    status: JobStatus | None = None
    sources: frozenset[str] = field(init=False)
    implied: str | None = field(init=False)

    def __post_init__(self) -> None:
        found = frozenset() if self.status is None else source_statuses(self.status)
        object.__setattr__(self, "sources", found)
        object.__setattr__(self, "implied", next(iter(found)) if len(found) == 1 else None)


def rank_of(op: Op) -> int:
    return op.rank or 0


# The params of each (the backends' statements take them in this order):
FLUSH = Op("flush")  # ()
# Why a waiting job waits (rate_limited, locked, or None); before a start in a batch.
REASON = Op("reason", 0)  # (waiting_reason, id)
START = Op("start", 1, JobStatus.RUNNING)  # (attempt, started_at, seq, id, pool)
ATTEMPT = Op(
    "attempt", 2
)  # (job_id, number, started_at, finished_at, outcome, error, traceback, next, next_at)
SUCCEED = Op(
    "succeed", 3, JobStatus.SUCCESS
)  # (result, finished_at, current, total, message, seq, id, pool)
FAIL = Op(
    "fail", 3, JobStatus.FAILURE
)  # (error, finished_at, current, total, message, seq, attempts, id, pool, was)
CANCEL = Op("cancel", 3, JobStatus.CANCELLED)  # (finished_at, seq, error, id, pool, was)
REQUEUE = Op(
    "requeue", 3, JobStatus.WAITING
)  # (run_at, error, seq, attempts, max_attempts, current, total, message, id, pool, was)
# The writes that end a job's run: a start must not commit before them (note 16).
ENDING = frozenset({SUCCEED, FAIL, CANCEL, REQUEUE})
CLEAR_EXTERNAL = Op("clear_external")  # (id, seq, cancel_requested)
RETRIED = Op("retried", 2)  # (at, job_id, job_id)
MINUTES = Op("minutes")  # (minute, pool, task, succeeded, ..., b11): a MinuteRow
SCHEDULE_FAILED = Op("schedule_failed")  # (name,)
# A lock key an ended attempt's handler holds on to while it runs (mode "nodes",
# ``taskrt.gates`` note 4), and its release; PostgreSQL's only.
HOLD_LOCK = Op("hold_lock")  # (job_id, lock_key)
UNHOLD_LOCK = Op("unhold_lock")  # (job_id,)
# (channel, payload): a notification the batch's commit sends, after its writes
# (PostgreSQL's events across nodes; a backend without notifications never gets one).
NOTIFY = Op("notify")


def failure_params(
    job_id: int,
    error: str,
    finished_at: float,
    progress: tuple[float, float, str],
    seq: int,
    attempts: int,
    pool: str,
    was: JobStatus,
) -> tuple[Any, ...]:
    current, total, message = progress
    return (error, finished_at, current, total, message, seq, attempts, job_id, pool, str(was))


Statement = tuple[Op, tuple[Any, ...], int | None]
"""A queued write: its op, its params, the job it is about (None: not a job's)."""


def segments(statements: list[Statement]) -> Iterator[list[tuple[Op, list[tuple[Any, ...]]]]]:
    """A batch's writes as runs of groups: each group is one op and its rows (note 7).

    Lifecycle operations have a rank (start < attempt record < final or
    waiting state). Within a run they are grouped by operation in rank order;
    a run ends when a job would go back to an earlier or the same rank (it
    retried within the batch) or at any operation without a rank (or without
    a job), which is a run of its own, so each job's writes keep their order.
    """
    segment: dict[Op, list[tuple[Any, ...]]] = {}
    last: dict[int, int] = {}

    def cut() -> list[tuple[Op, list[tuple[Any, ...]]]]:
        out = [(op, segment[op]) for op in sorted(segment, key=rank_of)]
        segment.clear()
        last.clear()
        return out

    for op, params, job_id in statements:
        rank = op.rank
        if rank is None or job_id is None:
            if segment:
                yield cut()
            yield [(op, [params])]
            continue
        prev = last.get(job_id)
        if prev is not None and rank <= prev and segment:
            yield cut()
        rows = segment.get(op)
        if rows is None:
            rows = segment[op] = []
        rows.append(params)
        last[job_id] = rank
    if segment:
        yield cut()
