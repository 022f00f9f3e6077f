"""The group commit's order of writes when starts commit first (store note 16).

Against a recording ``BatchWriter``: what matters here is which writes go in
which transaction, in which order, and when each caller learns of its commit;
the backends' own tests cover what they do with a transaction.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

import pytest
from core_support import new_job

from taskrt import StoreUnavailable
from taskrt.store.groupcommit import (
    ROLLBACK_RETRIES,
    Batch,
    GroupCommit,
    ProgressRows,
    Rejected,
    Results,
)
from taskrt.store.ops import REASON, REQUEUE, START, SUCCEED, Op
from taskrt.store.protocol import InsertResult


class Deadlock(Exception):
    """What a server says when it rolled back one of two transactions that waited
    for each other, and its ``detail``: who they were."""

    detail = "Process 11 waits for ShareLock on transaction 7; blocked by process 12."


class Recorder:
    """Records each transaction as [(op name, job id)], and whether it was ``behind``."""

    def __init__(self, apart: bool = True) -> None:
        self.apart = apart
        self.transactions: list[tuple[list[tuple[str, int | None]], bool]] = []
        self.fail_next = 0  # transient failures to give before writing again
        self.deadlocks = 0  # transactions to roll back as a deadlock would
        self.during: list[Any] = []  # what the test checks while a transaction is written
        self.on_write: Any = None
        self.adds: list[int] = []  # jobs inserted, per transaction

    async def write(self, batch: Batch, progress: ProgressRows) -> Results:
        if self.on_write is not None:
            self.during.append(self.on_write())
        if self.fail_next:
            self.fail_next -= 1
            raise sqlite3.OperationalError("database is locked")
        if self.deadlocks:
            self.deadlocks -= 1
            raise Deadlock("deadlock detected")
        self.transactions.append(
            ([(op.name, job_id) for op, _, job_id in batch.statements], batch.behind)
        )
        ids = [InsertResult(100 + i, True) for jobs, _ in batch.inserts for i in range(len(jobs))]
        self.adds.append(len(ids))
        return ids  # type: ignore[return-value]

    async def write_parts(self, batch: Batch, progress: ProgressRows) -> tuple[Results, Rejected]:
        raise AssertionError("not expected")

    def transient(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError | Deadlock)

    def rolled_back(self, exc: BaseException) -> bool:
        return isinstance(exc, Deadlock)

    async def resumed(self) -> None:
        return None

    def starts_apart(self) -> bool:
        return self.apart


def queue(writes: GroupCommit, op: Op, job_id: int) -> asyncio.Future[None]:
    return writes.queue(op, (job_id,), job_id)


async def test_starts_commit_first_and_their_callers_learn_it_before_the_rest() -> None:
    recorder = Recorder()
    writes = GroupCommit("test")
    writes.start(recorder)
    try:
        added = writes.insert([new_job()])
        reason = queue(writes, REASON, 2)
        again = queue(writes, START, 2)  # after its job's earlier write
        started = queue(writes, START, 3)
        recorder.on_write = lambda: (started.done(), reason.done())
        await writes.flush()
        assert recorder.transactions == [
            ([("start", 3)], False),
            ([("reason", 2), ("start", 2), ("flush", None)], True),
        ]
        assert recorder.adds == [0, 1]  # the add went with the rest
        # While the rest was written, the first start was known committed, the rest not yet.
        assert recorder.during == [(False, False), (True, False)]
        assert all(f.done() and f.exception() is None for f in (added, reason, again, started))
    finally:
        await writes.close(1.0)


async def test_starts_commit_with_the_ends_queued_before_them() -> None:
    """A start never commits before an end queued ahead of it (store note 16): the
    job whose slot it takes would stay RUNNING in the file if the process died
    between the two commits (a handler that kills its process at once)."""
    recorder = Recorder()
    writes = GroupCommit("test")
    writes.start(recorder)
    try:
        for op in (SUCCEED, REQUEUE):
            ended = queue(writes, op, 1)
            added = writes.insert([new_job()])
            started = queue(writes, START, 3)
            await writes.flush()
            assert recorder.transactions[-1] == (
                [("start", 3), (op.name, 1), ("flush", None)],
                False,
            )
            assert all(f.done() for f in (ended, added, started))
        assert len(recorder.transactions) == 2
    finally:
        await writes.close(1.0)


async def test_the_rest_waits_for_handlers_that_come_back_at_once() -> None:
    """Jobs that end right after their start (no-op handlers): the rest of the batch
    commits with their ends and next starts, in one transaction, in order."""
    recorder = Recorder()
    writes = GroupCommit("test")
    writes.start(recorder)
    try:
        added = writes.insert([new_job()])
        started = queue(writes, START, 2)
        later: list[asyncio.Future[Any]] = []

        def runner(_: object) -> None:
            # As a runner does once its start is committed: job 2 ends, job 3 starts.
            later.append(queue(writes, SUCCEED, 2))
            later.append(queue(writes, START, 3))

        started.add_done_callback(runner)
        await writes.flush()
        assert recorder.transactions == [
            ([("start", 2)], False),
            # job 3's start goes before job 2's end: their writes are of other jobs
            ([("flush", None), ("start", 3), ("succeed", 2)], False),
        ]
        assert recorder.adds == [0, 1]  # the add went with the rest
        assert (await added)[0] == InsertResult(100, True)
        assert all(f.done() and f.exception() is None for f in (started, *later))
    finally:
        await writes.close(1.0)


async def test_starts_alone_or_not_apart_commit_in_one_transaction() -> None:
    recorder = Recorder()
    writes = GroupCommit("test")
    writes.start(recorder)
    try:
        queue(writes, START, 1)
        await writes.flush()  # nothing but starts (and the flush): one transaction
        recorder.apart = False
        queue(writes, SUCCEED, 1)
        queue(writes, START, 2)
        await writes.flush()
        assert recorder.transactions == [
            ([("start", 1), ("flush", None)], False),
            ([("start", 2), ("succeed", 1), ("flush", None)], False),
        ]
    finally:
        await writes.close(1.0)


async def test_a_batch_whose_starts_failed_is_kept_in_order_and_its_adds_refused() -> None:
    recorder = Recorder()
    recorder.fail_next = 1
    writes = GroupCommit("test")
    writes.start(recorder)
    try:
        requeued = queue(writes, REQUEUE, 2)
        started = queue(writes, START, 3)
        added = writes.insert([new_job()])
        with pytest.raises(StoreUnavailable):
            await added  # adds are refused, never kept (note 9)
        # Queued while the batch waits to be written again: after everything kept.
        again = queue(writes, START, 2)
        await writes.flush()
        assert recorder.transactions == [
            ([("start", 3), ("requeue", 2), ("start", 2), ("flush", None)], False),
        ]
        assert all(f.done() and f.exception() is None for f in (requeued, started, again))
    finally:
        await writes.close(1.0)


async def test_a_batch_rolled_back_by_a_deadlock_is_written_again_with_its_adds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each rollback is logged as a warning naming the parties where the server
    does; the batch is written again until it commits, up to ROLLBACK_RETRIES."""
    caplog.set_level(logging.WARNING, "taskrt.store")
    recorder = Recorder(apart=False)
    writes = GroupCommit("test")
    writes.start(recorder)
    try:
        recorder.deadlocks = ROLLBACK_RETRIES
        ended = queue(writes, SUCCEED, 1)
        added = writes.insert([new_job()])
        await writes.flush()
        assert (await added)[0] == InsertResult(100, True)  # committed, not refused
        assert ended.done() and ended.exception() is None
        assert writes.health().ok and writes.outages == 0
        logged = [r.getMessage() for r in caplog.records if "rolled back" in r.getMessage()]
        assert len(logged) == ROLLBACK_RETRIES
        assert all(Deadlock.detail in m for m in logged), logged[0]
        # More rollbacks in a row than that: an outage, its adds refused.
        recorder.deadlocks = ROLLBACK_RETRIES + 1
        refused = writes.insert([new_job()])
        with pytest.raises(StoreUnavailable, match="deadlock"):
            await refused
        assert writes.outages == 1 and not writes.health().ok
        later = queue(writes, SUCCEED, 2)  # the next write commits: the outage ends
        await writes.flush()
        assert later.exception() is None and writes.health().ok
    finally:
        await writes.close(1.0)


@pytest.mark.parametrize("apart", [True, False])
async def test_each_start_has_a_future_of_its_own_that_a_cancel_leaves_to_the_others(
    apart: bool,
) -> None:
    """A runner waits for its start's commit on a future of its own (note 16), so a
    cancel of one runner meanwhile cancels its wait alone: the others learn of the
    commit, which carries every start. A start queued after a write of its job (it
    commits with the batch) has its own future too."""
    recorder = Recorder(apart)
    writes = GroupCommit("test")
    writes.start(recorder)
    try:
        ended = queue(writes, SUCCEED, 3)
        starts = [queue(writes, START, 1), queue(writes, START, 2), queue(writes, START, 3)]
        assert len({id(f) for f in starts}) == 3 and ended not in starts
        starts[0].cancel()
        await writes.flush()
        assert starts[0].cancelled()
        assert all(f.done() and f.exception() is None for f in (*starts[1:], ended))
        written = [w for statements, _ in recorder.transactions for w in statements]
        assert [w for w in written if w[0] == "start"] == [("start", 1), ("start", 2), ("start", 3)]
    finally:
        await writes.close(1.0)
