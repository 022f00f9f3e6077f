"""The store's behaviour, through ``JobStore`` only: one suite for every backend.

Each test takes the ``store`` fixture, parametrized over ``store_backends.BACKENDS``
(read that module for how a backend joins). A backend is done when this file is
green for it. The tests use the protocol's operations and reads only: no SQL
(except the application's own table in ``transaction()`` tests, in the
backend's dialect), no driver, no private attributes. Time is an argument:
every timestamp is ``NOW`` plus a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from store_backends import BACKENDS, AppSQL, app_sql, open_store, outage, skip_unavailable

from taskrt.errors import DuplicateJobId, StoreError
from taskrt.models import (
    TRANSITIONS,
    AttemptInfo,
    AttemptOutcome,
    JobInfo,
    JobStatus,
    ScheduleInfo,
)
from taskrt.scheduler import define
from taskrt.store import InsertResult, JobStore, NewJob, OwnerRecord, Progress

NOW = 1_800_000_000.0
NO_PROGRESS: Progress = (0.0, 0.0, "")

WAITING = JobStatus.WAITING
RUNNING = JobStatus.RUNNING
SUCCESS = JobStatus.SUCCESS
FAILURE = JobStatus.FAILURE
CANCELLED = JobStatus.CANCELLED


class Boom(Exception):
    """Raised by a test inside a transaction or savepoint."""


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    skip_unavailable(kind)
    return kind


@pytest.fixture
async def store(backend: str, tmp_path: Path) -> AsyncIterator[JobStore]:
    """A fresh, empty, opened store of ``backend``; closed after the test."""
    async with open_store(backend, tmp_path) as opened:
        yield opened


@pytest.fixture
def sql(backend: str) -> AppSQL:
    return app_sql(backend)


# -- helpers -------------------------------------------------------------------


def job(
    task: str = "send",
    pool: str = "mail",
    *,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    unique_key: str | None = None,
    job_id: int | None = None,
    external: bool = False,
    created_at: float = NOW,
    run_at: float = NOW,
    max_attempts: int | None = 3,
    priority: int = 0,
    timeout: float | None = None,
    retry: Any = None,
    unique_for: float | None = None,
) -> NewJob:
    return NewJob(
        task=task,
        pool=pool,
        args_json=json.dumps(list(args)),
        kwargs_json=json.dumps(kwargs or {}),
        max_attempts=max_attempts,
        priority=priority,
        metadata_json=json.dumps(metadata or {}),
        unique_key=unique_key,
        created_at=created_at,
        run_at=run_at,
        timeout=timeout,
        retry_json=None if retry is None else json.dumps(retry),
        job_id=job_id,
        external=external,
        unique_for=unique_for,
    )


async def add(store: JobStore, *jobs: NewJob) -> list[int]:
    """One add of ``jobs`` (default: one job); every job must have made a row."""
    results = await store.insert(list(jobs) or [job()])
    ids: list[int] = []
    for result in results:
        assert isinstance(result, InsertResult), result
        assert result.created, result
        ids.append(result.job_id)
    return ids


async def add_one(store: JobStore, **options: Any) -> int:
    [job_id] = await add(store, job(**options))
    return job_id


async def get(store: JobStore, job_id: int) -> JobInfo:
    info = await store.get_job(job_id)
    assert info is not None, f"job {job_id} is not stored"
    return info


async def running(store: JobStore, *, started_at: float = NOW, **options: Any) -> int:
    """A job that was added and started (attempt 1, seq 2)."""
    job_id = await add_one(store, **options)
    await store.start(job_id, 1, started_at, 2, pool=options.get("pool", "mail"))
    return job_id


async def in_status(store: JobStore, status: JobStatus, **options: Any) -> int:
    """A job brought to ``status`` by the ordinary operations."""
    pool = options.get("pool", "mail")
    if status is WAITING:
        return await add_one(store, **options)
    if status is CANCELLED:
        job_id = await add_one(store, **options)
        await store.cancel(job_id, NOW + 1, 2, None, pool=pool, was=WAITING)
        return job_id
    job_id = await running(store, **options)
    if status is SUCCESS:
        await store.succeed(job_id, None, NOW + 1, NO_PROGRESS, 3, pool=pool)
    elif status is FAILURE:
        await store.fail(job_id, "boom", NOW + 1, NO_PROGRESS, 3, 1, pool=pool)
    return job_id


async def ids(store: JobStore, **filters: Any) -> list[int]:
    return [info.id for info in await store.list_jobs(**filters)]


async def notes(store: JobStore, sql: AppSQL) -> list[str]:
    async with store.transaction() as tx:
        return [row[0] for row in await tx.execute(sql.select)]


async def make_notes(store: JobStore, sql: AppSQL) -> None:
    async with store.transaction() as tx:
        await tx.execute(sql.create)


async def external(store: JobStore) -> list[tuple[int, JobStatus, bool]]:
    return [(info.id, info.status, flag) for info, flag in await store.external_changes()]


async def assert_counts_exact(store: JobStore) -> dict[str, dict[JobStatus, int]]:
    """The counts (``live_counts``, ``counted``, ``count_waiting``) are the jobs' own.

    The truth is counted from the jobs as listed, so it cannot share a
    mistake with the counts kept on writes. Returns it (pool -> status -> n).
    """
    truth: dict[str, dict[JobStatus, int]] = {}
    for info in await store.list_jobs(limit=1_000_000):
        by_status = truth.setdefault(info.pool, {})
        by_status[info.status] = by_status.get(info.status, 0) + 1
    assert await store.live_counts() == truth
    for pool in {*truth, "mail", "img", "nowhere"}:
        expected = truth.get(pool, {})
        assert {s: store.counted(pool, s) for s in JobStatus} == {
            s: expected.get(s, 0) for s in JobStatus
        }, pool
        assert await store.count_waiting(pool) == expected.get(WAITING, 0)
    return truth


# -- insert --------------------------------------------------------------------


async def test_an_added_job_is_stored_waiting_as_given(store: JobStore) -> None:
    [result] = await store.insert(
        [
            job(
                "resize",
                "images",
                args=(1, "a", None),
                kwargs={"size": [64, 64]},
                metadata={"user": 7, "tag": "x"},
                unique_key="img-1",
                max_attempts=5,
                priority=3,
                created_at=NOW,
                run_at=NOW + 60,
                timeout=2.5,
                retry={"delay": 1.5},
            )
        ]
    )
    assert isinstance(result, InsertResult) and result.created
    info = await get(store, result.job_id)
    assert info == JobInfo(
        id=result.job_id,
        task="resize",
        pool="images",
        status=WAITING,
        args=(1, "a", None),
        kwargs={"size": [64, 64]},
        attempts=0,
        max_attempts=5,
        priority=3,
        metadata={"user": 7, "tag": "x"},
        unique_key="img-1",
        created_at=NOW,
        run_at=NOW + 60,
        timeout=2.5,
        recoveries=0,
        seq=1,
        retry_policy={"delay": 1.5},
    )
    assert await store.get_job(result.job_id + 1000) is None


async def test_ids_strictly_increase_across_adds(store: JobStore) -> None:
    first = await add(store, job(), job(), job())
    second = await add(store, job())
    assert first == sorted(first) and len(set(first)) == 3
    assert second[0] > max(first)
    concurrent = await asyncio.gather(store.insert([job(), job()]), store.insert([job()]))
    later = [r.job_id for results in concurrent for r in results if isinstance(r, InsertResult)]
    assert len(later) == 3 and len(set(later)) == 3
    assert min(later) > second[0]
    assert [r.job_id for r in concurrent[0] if isinstance(r, InsertResult)] == sorted(later[:2])


async def test_ids_are_never_reused_after_cleanup_deletes_the_newest(store: JobStore) -> None:
    done = [await in_status(store, SUCCESS) for _ in range(3)]
    assert await store.cleanup(NOW + 10, [SUCCESS]) == 3
    assert await store.list_jobs() == []
    [after] = await add(store, job())
    assert after > max(done)


async def test_an_explicit_id_above_every_issued_id_is_used(store: JobStore) -> None:
    [first] = await add(store, job())
    [chosen] = await add(store, job(job_id=first + 10))
    assert chosen == first + 10
    assert (await get(store, chosen)).task == "send"
    [next_auto] = await add(store, job())
    assert next_auto > chosen


@pytest.mark.parametrize("taken", ["last", "earlier", "deleted"])
async def test_an_explicit_id_not_above_the_issued_ones_refuses_that_whole_add(
    store: JobStore, taken: str
) -> None:
    earlier, last = await add(store, job(), job())
    if taken == "deleted":
        last = await in_status(store, SUCCESS)
        assert await store.cleanup(NOW + 10, [SUCCESS]) == 1
    bad_id = earlier if taken == "earlier" else last
    before = await ids(store)

    # Two adds queued together: one refused as a whole, the other stored.
    refused, accepted = await asyncio.gather(
        store.insert([job("a"), job("b", job_id=bad_id), job("c")]),
        store.insert([job("ok")]),
    )
    assert len(refused) == 3
    assert all(isinstance(r, DuplicateJobId) and r.job_id == bad_id for r in refused), refused
    [ok] = accepted
    assert isinstance(ok, InsertResult) and ok.created
    assert await ids(store) == [ok.job_id, *before]
    assert (await get(store, earlier)).task == "send"  # nothing was overwritten


async def test_an_add_of_several_jobs_is_all_or_nothing(store: JobStore) -> None:
    [holder] = await add(store, job())
    results = await store.insert([job("a", unique_key="fresh"), job("b"), job("c", job_id=holder)])
    assert [type(r) for r in results] == [DuplicateJobId] * 3
    assert await ids(store) == [holder]
    # Nothing of the refused add holds anything: its unique key is free.
    [res] = await store.insert([job(unique_key="fresh")])
    assert isinstance(res, InsertResult) and res.created


@pytest.mark.parametrize("holder_status", [WAITING, RUNNING])
async def test_a_live_job_holds_its_unique_key(store: JobStore, holder_status: JobStatus) -> None:
    holder = await in_status(store, holder_status, unique_key="k")
    [res] = await store.insert([job("other", unique_key="k")])
    assert res == InsertResult(holder, False)
    assert await ids(store) == [holder]
    assert (await get(store, holder)).task == "send"


@pytest.mark.parametrize("final", [SUCCESS, FAILURE, CANCELLED])
async def test_a_finished_job_frees_its_unique_key(store: JobStore, final: JobStatus) -> None:
    holder = await in_status(store, final, unique_key="k")
    [res] = await store.insert([job(unique_key="k")])
    assert isinstance(res, InsertResult) and res.created and res.job_id > holder
    [again] = await store.insert([job(unique_key="k")])
    assert again == InsertResult(res.job_id, False)


async def test_a_unique_key_repeated_in_one_add_gives_the_first_jobs_id(store: JobStore) -> None:
    results = await store.insert([job(unique_key="k"), job(unique_key="k"), job(unique_key="j")])
    first, second, third = results
    assert isinstance(first, InsertResult) and first.created
    assert second == InsertResult(first.job_id, False)
    assert isinstance(third, InsertResult) and third.created
    assert sorted(await ids(store)) == sorted([first.job_id, third.job_id])


async def test_a_final_write_queued_before_an_add_frees_the_key_for_it(store: JobStore) -> None:
    holder = await running(store, unique_key="k")
    store.succeed(holder, None, NOW + 1, NO_PROGRESS, 3, pool="mail")
    [res] = await store.insert([job(unique_key="k")])
    assert isinstance(res, InsertResult) and res.created and res.job_id != holder


# -- a job's lifecycle (queued writes) ---------------------------------------------


async def test_start_runs_the_job_and_charges_the_attempt(store: JobStore) -> None:
    job_id = await add_one(store)
    await store.start(job_id, 1, NOW + 1, 2, pool="mail")
    info = await get(store, job_id)
    assert (info.status, info.attempts, info.started_at, info.finished_at, info.seq) == (
        RUNNING,
        1,
        NOW + 1,
        None,
        2,
    )


async def test_attempt_records_are_read_back_in_number_order(store: JobStore) -> None:
    job_id = await running(store)
    other = await running(store)
    await store.record_attempt(job_id, 2, NOW + 3, NOW + 4, AttemptOutcome.SUCCESS, None, None)
    await store.record_attempt(
        job_id, 1, NOW + 1, NOW + 2, AttemptOutcome.ERROR, "boom", "Traceback: boom"
    )
    await store.record_attempt(other, 1, NOW, NOW + 1, AttemptOutcome.TIMEOUT, "slow", None)
    assert await store.attempts(job_id) == [
        AttemptInfo(job_id, 1, NOW + 1, NOW + 2, AttemptOutcome.ERROR, "boom", "Traceback: boom"),
        AttemptInfo(job_id, 2, NOW + 3, NOW + 4, AttemptOutcome.SUCCESS, None, None),
    ]
    # One record per attempt number: writing it again replaces it.
    await store.record_attempt(job_id, 2, NOW + 3, NOW + 5, AttemptOutcome.RETRY, "again", None)
    assert [(a.number, a.outcome, a.error) for a in await store.attempts(job_id)] == [
        (1, AttemptOutcome.ERROR, "boom"),
        (2, AttemptOutcome.RETRY, "again"),
    ]
    assert await store.attempts(job_id + 1000) == []


async def test_an_attempt_says_what_followed_it(store: JobStore) -> None:
    job_id = await running(store)
    await store.record_attempt(
        job_id, 1, NOW, NOW + 1, AttemptOutcome.ERROR, "boom", None, retry_at=NOW + 31
    )
    await store.record_attempt(job_id, 2, NOW + 31, NOW + 32, AttemptOutcome.ERROR, "boom", None)
    [first, last] = await store.attempts(job_id)
    assert (first.next, first.next_at) == ("retry", NOW + 31)  # by policy, after its backoff
    assert (last.next, last.next_at) == (None, None)  # it ended the job
    await store.retried(job_id, NOW + 100)  # then an operator asked for a retry
    [first, last] = await store.attempts(job_id)
    assert (first.next, last.next, last.next_at) == ("retry", "retried", NOW + 100)


async def test_a_success_is_read_as_an_attempt_from_the_jobs_row(store: JobStore) -> None:
    # The runtime writes no row for a successful attempt (store note 7): the job's
    # SUCCESS row says it, after the rows of the attempts before it.
    job_id = await add_one(store)
    store.start(job_id, 1, NOW + 1, 2, pool="mail")
    store.record_attempt(job_id, 1, NOW + 1, NOW + 2, AttemptOutcome.ERROR, "boom", "tb")
    store.requeue(job_id, NOW + 2, "boom", 3, 1, 3, NO_PROGRESS, pool="mail")
    await store.start(job_id, 2, NOW + 3, 4, pool="mail")
    running_now = await store.attempts(job_id)
    await store.succeed(job_id, "7", NOW + 6, (1.0, 1.0, ""), 5, pool="mail")
    assert [(a.number, a.outcome) for a in running_now] == [(1, AttemptOutcome.ERROR)]
    assert await store.attempts(job_id) == [
        AttemptInfo(job_id, 1, NOW + 1, NOW + 2, AttemptOutcome.ERROR, "boom", "tb"),
        AttemptInfo(job_id, 2, NOW + 3, NOW + 6, AttemptOutcome.SUCCESS, None, None),
    ]
    # A store of an earlier release wrote the success's row too: given once.
    await store.record_attempt(job_id, 2, NOW + 3, NOW + 5, AttemptOutcome.SUCCESS, None, None)
    assert [(a.number, a.outcome, a.finished_at) for a in await store.attempts(job_id)] == [
        (1, AttemptOutcome.ERROR, NOW + 2),
        (2, AttemptOutcome.SUCCESS, NOW + 5),
    ]
    # A job that failed, or never started, has no success to read.
    failed = await running(store)
    await store.fail(failed, "no", NOW + 2, NO_PROGRESS, 3, 1, pool="mail")
    waiting = await add_one(store)
    assert await store.attempts(failed) == []
    assert await store.attempts(waiting) == []


async def test_succeed_stores_the_result_and_final_progress(store: JobStore) -> None:
    job_id = await running(store)
    result = {"sent": [1, 2.5, "é"], "none": None, "nested": {"ok": True}}
    await store.succeed(job_id, json.dumps(result), NOW + 5, (3.0, 4.0, "done"), 9, pool="mail")
    info = await get(store, job_id)
    assert (info.status, info.result, info.finished_at, info.seq, info.error) == (
        SUCCESS,
        result,
        NOW + 5,
        9,
        None,
    )
    assert (info.current, info.total, info.message, info.duration) == (3.0, 4.0, "done", 5.0)
    empty = await running(store)
    await store.succeed(empty, None, NOW + 1, NO_PROGRESS, 3, pool="mail")
    assert (await get(store, empty)).result is None


async def test_fail_stores_the_error_attempts_and_progress(store: JobStore) -> None:
    job_id = await running(store)
    await store.fail(job_id, "ValueError: bad", NOW + 2, (1.0, 3.0, "stuck"), 7, 4, pool="mail")
    info = await get(store, job_id)
    assert (info.status, info.error, info.finished_at, info.seq, info.attempts) == (
        FAILURE,
        "ValueError: bad",
        NOW + 2,
        7,
        4,
    )
    assert (info.current, info.total, info.message) == (1.0, 3.0, "stuck")


@pytest.mark.parametrize("source", [WAITING, RUNNING])
async def test_cancel_stores_cancelled_with_its_reason(store: JobStore, source: JobStatus) -> None:
    job_id = await in_status(store, source)
    await store.cancel(job_id, NOW + 3, 6, "cancelled by the user", pool="mail", was=source)
    info = await get(store, job_id)
    assert (info.status, info.finished_at, info.seq, info.error) == (
        CANCELLED,
        NOW + 3,
        6,
        "cancelled by the user",
    )


async def test_requeue_puts_the_job_back_to_waiting(store: JobStore) -> None:
    job_id = await running(store, max_attempts=2)
    await store.requeue(
        job_id, NOW + 30, "retry: flaky", 4, 1, 3, (2.0, 5.0, "partial"), pool="mail"
    )
    info = await get(store, job_id)
    assert (info.status, info.run_at, info.error, info.seq) == (
        WAITING,
        NOW + 30,
        "retry: flaky",
        4,
    )
    assert (info.attempts, info.max_attempts) == (1, 3)
    assert (info.current, info.total, info.message) == (2.0, 5.0, "partial")
    assert (info.started_at, info.finished_at) == (None, None)
    # The next start clears the previous attempt's error.
    await store.start(job_id, 2, NOW + 31, 5, pool="mail")
    again = await get(store, job_id)
    assert (again.status, again.attempts, again.error) == (RUNNING, 2, None)


# target -> the write that moves a job there, given the pool and status the caller believes.
Write = Callable[[JobStore, int, str, JobStatus], Any]
OPERATIONS: dict[JobStatus, Write] = {
    RUNNING: lambda s, j, pool, was: s.start(j, 5, NOW + 9, 99, pool=pool),
    SUCCESS: lambda s, j, pool, was: s.succeed(
        j, '"late"', NOW + 9, (9.0, 9.0, "x"), 99, pool=pool
    ),
    FAILURE: lambda s, j, pool, was: s.fail(
        j, "late", NOW + 9, (9.0, 9.0, "x"), 99, 5, pool=pool, was=was
    ),
    CANCELLED: lambda s, j, pool, was: s.cancel(j, NOW + 9, 99, "late", pool=pool, was=was),
    WAITING: lambda s, j, pool, was: s.requeue(
        j, NOW + 9, "late", 99, 5, 9, (9.0, 9.0, "x"), pool=pool, was=was
    ),
}


@pytest.mark.parametrize("belief", ["right", "wrong"])
@pytest.mark.parametrize("target", list(OPERATIONS), ids=lambda s: f"to-{s.value}")
@pytest.mark.parametrize("source", list(JobStatus), ids=lambda s: f"from-{s.value}")
async def test_a_write_moves_a_job_only_as_the_transition_table_allows(
    store: JobStore, source: JobStatus, target: JobStatus, belief: str
) -> None:
    """Whatever pool and status the caller believes the job is in: a wrong
    belief costs time, never a transition or the exactness of the counts."""
    job_id = await in_status(store, source)
    other = await add_one(store)  # in the same batch: a belief that holds
    before = await get(store, job_id)
    if belief == "right":
        pool, was = "mail", source
    else:
        pool, was = "elsewhere", (WAITING if source is RUNNING else RUNNING)
    OPERATIONS[target](store, job_id, pool, was)
    await store.cancel(other, NOW + 9, 99, None, pool="mail", was=WAITING)
    after = await get(store, job_id)
    if target in TRANSITIONS[source]:
        assert (after.status, after.seq) == (target, 99)
    else:
        assert after == before
    assert (await get(store, other)).status is CANCELLED
    await assert_counts_exact(store)


async def test_writes_for_an_unknown_job_change_nothing(store: JobStore) -> None:
    [job_id] = await add(store, job())
    before = await get(store, job_id)
    missing = job_id + 1000
    for target in OPERATIONS:
        await OPERATIONS[target](store, missing, "mail", WAITING)
    assert await store.get_job(missing) is None
    assert await store.list_jobs() == [before]
    await assert_counts_exact(store)


async def test_a_jobs_writes_apply_in_the_order_they_were_queued(store: JobStore) -> None:
    job_id = await add_one(store)
    # A whole retry cycle queued at once, awaited only at the end.
    store.start(job_id, 1, NOW + 1, 2, pool="mail")
    store.record_attempt(job_id, 1, NOW + 1, NOW + 2, AttemptOutcome.RETRY, "flaky", None)
    store.requeue(job_id, NOW + 2, "flaky", 3, 1, 3, NO_PROGRESS, pool="mail")
    store.start(job_id, 2, NOW + 3, 4, pool="mail")
    store.record_attempt(job_id, 2, NOW + 3, NOW + 4, AttemptOutcome.SUCCESS, None, None)
    await store.succeed(job_id, "42", NOW + 4, (1.0, 1.0, ""), 5, pool="mail")
    info = await get(store, job_id)
    assert (info.status, info.attempts, info.result, info.started_at, info.seq) == (
        SUCCESS,
        2,
        42,
        NOW + 3,
        5,
    )
    assert [a.outcome for a in await store.attempts(job_id)] == [
        AttemptOutcome.RETRY,
        AttemptOutcome.SUCCESS,
    ]


async def test_flush_and_settle_make_everything_queued_visible(store: JobStore) -> None:
    a, b, c = await add(store, job(), job(), job())
    store.start(a, 1, NOW, 2, pool="mail")
    store.cancel(b, NOW, 2, None, pool="mail", was=WAITING)
    await store.flush()
    assert [(await get(store, i)).status for i in (a, b)] == [RUNNING, CANCELLED]
    store.succeed(a, None, NOW + 1, NO_PROGRESS, 3, pool="mail")
    await store.settle()
    assert (await get(store, a)).status is SUCCESS
    fut = store.start(c, 1, NOW, 2, pool="mail")
    await store.settle(fut)
    assert fut.done() and (await get(store, c)).status is RUNNING


async def test_a_flush_with_nothing_queued_writes_nothing(store: JobStore) -> None:
    # Store note 19: everything queued is committed, so there is nothing to wait for.
    job_id = await add_one(store)
    await store.start(job_id, 1, NOW, 2, pool="mail")
    before = store.batches
    await store.flush()
    await store.settle()
    assert store.batches == before
    # Coalesced progress waiting for its turn is written by a flush, as before.
    store.progress(job_id, 1.0, 2.0, "half", 3)
    await store.flush()
    assert store.batches == before + 1
    assert ((await get(store, job_id)).current, store.batches) == (1.0, before + 1)
    await store.settle()
    assert store.batches == before + 1


async def test_a_flush_waits_for_a_sqlite_transaction_that_holds_the_writes(
    tmp_path: Path,
) -> None:
    # SQLite only: a PostgreSQL transaction has a connection of its own, not the writer's.
    sql = app_sql("sqlite")
    async with open_store("sqlite", tmp_path) as store:
        await _flush_waits_for_the_transaction(store, sql)


async def _flush_waits_for_the_transaction(store: JobStore, sql: AppSQL) -> None:
    job_id = await add_one(store)
    await make_notes(store, sql)
    flushed = asyncio.Event()

    async def flush() -> None:
        await store.settle()
        flushed.set()

    async with store.transaction() as tx:
        await tx.execute(sql.insert, ("a",))
        waiter = asyncio.create_task(flush())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not flushed.is_set()
    await asyncio.wait_for(waiter, 5)
    assert await notes(store, sql) == ["a"]
    assert (await get(store, job_id)).status is WAITING


async def test_batches_count_commits(store: JobStore) -> None:
    before = store.batches
    job_id = await add_one(store)
    await store.start(job_id, 1, NOW, 2, pool="mail")
    assert store.batches >= before + 2


async def test_closing_writes_what_is_queued(backend: str, tmp_path: Path) -> None:
    async with open_store(backend, tmp_path) as store:
        run = await running(store)
        waiting = await add_one(store)
        store.progress(run, 4.0, 8.0, "half", 3)
        store.cancel(waiting, NOW + 1, 2, None, pool="mail", was=WAITING)
        store.schedule_failed("nobody")  # a write of no row: harmless
    async with open_store(backend, tmp_path) as reopened:
        info = await get(reopened, run)
        assert (info.status, info.current, info.total, info.message) == (
            RUNNING,
            4.0,
            8.0,
            "half",
        )
        assert (await get(reopened, waiting)).status is CANCELLED


async def test_a_write_the_database_refuses_fails_alone(store: JobStore) -> None:
    rejected: list[tuple[int | None, str]] = []
    store.on_rejected = lambda job_id, operation, exc: rejected.append((job_id, operation))
    failed = await in_status(store, FAILURE, unique_key="k")
    holder = await add_one(store, unique_key="k")
    other = await add_one(store)
    # Retrying the failed job would make two live jobs with one key: refused,
    # while the other write of the same batch commits.
    store.requeue(failed, NOW + 5, None, 4, 1, 3, NO_PROGRESS, pool="mail", was=FAILURE)
    store.start(other, 1, NOW, 2, pool="mail")
    await store.flush()
    assert rejected == [(failed, "requeue")]
    assert (await get(store, failed)).status is FAILURE
    assert (await get(store, holder)).status is WAITING
    assert (await get(store, other)).status is RUNNING


# -- progress --------------------------------------------------------------------


async def test_progress_is_coalesced_and_the_last_one_wins(store: JobStore) -> None:
    job_id = await running(store)
    store.progress(job_id, 1.0, 10.0, "one", 3)
    store.progress(job_id, 2.0, 10.0, "two", 4)
    store.progress(job_id, 3.0, 10.0, "three", 5)
    await store.flush()
    info = await get(store, job_id)
    assert (info.status, info.current, info.total, info.message, info.seq) == (
        RUNNING,
        3.0,
        10.0,
        "three",
        5,
    )
    # A progress write never takes the job's sequence back.
    store.progress(job_id, 4.0, 10.0, "four", 1)
    await store.flush()
    info = await get(store, job_id)
    assert (info.current, info.seq) == (4.0, 5)


async def test_progress_is_written_behind_without_a_flush(store: JobStore) -> None:
    job_id = await running(store)
    store.progress(job_id, 5.0, 10.0, "half", 3)
    async with asyncio.timeout(2):
        while (await get(store, job_id)).current != 5.0:
            await asyncio.sleep(0.005)
    assert (await get(store, job_id)).message == "half"


@pytest.mark.parametrize("status", [WAITING, SUCCESS, FAILURE, CANCELLED])
async def test_progress_touches_only_running_jobs(store: JobStore, status: JobStatus) -> None:
    job_id = await in_status(store, status)
    before = await get(store, job_id)
    store.progress(job_id, 5.0, 10.0, "late", 50)
    await store.flush()
    assert await get(store, job_id) == before


async def test_progress_queued_around_a_final_write_does_not_undo_it(store: JobStore) -> None:
    job_id = await running(store)
    store.progress(job_id, 5.0, 10.0, "before", 3)
    done = store.succeed(job_id, None, NOW + 1, (10.0, 10.0, "done"), 4, pool="mail")
    store.progress(job_id, 6.0, 10.0, "after", 5)
    await done
    await store.flush()
    info = await get(store, job_id)
    assert (info.status, info.current, info.message, info.finished_at) == (
        SUCCESS,
        10.0,
        "done",
        NOW + 1,
    )


# -- transaction() ---------------------------------------------------------------


async def test_a_transactions_statements_and_jobs_commit_together(
    store: JobStore, sql: AppSQL
) -> None:
    await make_notes(store, sql)
    async with store.transaction() as tx:
        await tx.execute(sql.insert, ("a",))
        await tx.executemany(sql.insert, [("b",), ("c",)])
        [res] = await store.insert_in(tx, [job("in-tx")])
        assert [row[0] for row in await tx.execute(sql.select)] == ["a", "b", "c"]
    assert res.created
    assert await notes(store, sql) == ["a", "b", "c"]
    info = await get(store, res.job_id)
    assert (info.task, info.status) == ("in-tx", WAITING)
    [later] = await add(store, job())
    assert later > res.job_id


async def test_a_transaction_that_raises_stores_nothing(store: JobStore, sql: AppSQL) -> None:
    await make_notes(store, sql)
    [before] = await add(store, job())
    with pytest.raises(Boom):
        async with store.transaction() as tx:
            await tx.execute(sql.insert, ("lost",))
            await store.insert_in(tx, [job("lost"), job("lost too")])
            await tx.insert_schedule(define("lost", "send", "0 3 * * *"), NOW + 60, NOW)
            await tx.bump_schedules()
            await tx.mark_failed(before, "lost", NOW, NO_PROGRESS, 2, 1, pool="mail", was=WAITING)
            raise Boom
    assert await notes(store, sql) == []
    assert await ids(store) == [before]
    assert (await get(store, before)).status is WAITING
    assert await store.schedules() == []
    assert await store.schedules_version() is None
    # The store goes on working after the rollback.
    [after] = await add(store, job())
    assert after > before


async def test_insert_in_honours_unique_keys_and_explicit_ids(store: JobStore) -> None:
    holder = await add_one(store, unique_key="k")
    async with store.transaction() as tx:
        held, fresh = await store.insert_in(tx, [job(unique_key="k"), job()])
    assert held == InsertResult(holder, False)
    assert fresh.created and fresh.job_id > holder
    with pytest.raises(DuplicateJobId) as caught:
        async with store.transaction() as tx:
            await store.insert_in(tx, [job("dup", job_id=holder)])
    assert caught.value.job_id == holder
    assert sorted(await ids(store)) == [holder, fresh.job_id]


async def test_a_savepoint_that_raises_undoes_only_its_writes(store: JobStore, sql: AppSQL) -> None:
    await make_notes(store, sql)
    job_id = await running(store)
    async with store.transaction() as tx:
        await tx.mark_failed(job_id, "boom", NOW + 1, (1.0, 2.0, "m"), 5, 1, pool="mail")
        with pytest.raises(Boom):
            async with tx.savepoint():
                await tx.execute(sql.insert, ("undone",))
                await store.insert_in(tx, [job("undone")])
                raise Boom
        async with tx.savepoint():
            await tx.execute(sql.insert, ("kept",))
    info = await get(store, job_id)
    assert (info.status, info.error, info.finished_at, info.seq, info.attempts) == (
        FAILURE,
        "boom",
        NOW + 1,
        5,
        1,
    )
    assert (info.current, info.total, info.message) == (1.0, 2.0, "m")
    assert await notes(store, sql) == ["kept"]
    assert await ids(store) == [job_id]


async def test_mark_failed_follows_the_transition_table(store: JobStore) -> None:
    done = await in_status(store, SUCCESS)
    waiting = await add_one(store)
    before = await get(store, done)
    async with store.transaction() as tx:
        # The first moves no row, and says so (its hook then does not run).
        assert not await tx.mark_failed(
            done, "late", NOW + 9, NO_PROGRESS, 9, 9, pool="mail", was=SUCCESS
        )
        assert await tx.mark_failed(
            waiting, "never ran", NOW + 9, NO_PROGRESS, 9, 0, pool="mail", was=WAITING
        )
    assert await get(store, done) == before
    assert (await get(store, waiting)).status is FAILURE


async def test_a_failing_application_statement_raises_store_error(
    store: JobStore, sql: AppSQL
) -> None:
    with pytest.raises(StoreError):
        async with store.transaction() as tx:
            await tx.execute(sql.select)  # the table does not exist
    await make_notes(store, sql)
    assert await notes(store, sql) == []


async def test_a_cancel_anywhere_in_a_transaction_leaves_none_open(
    store: JobStore, sql: AppSQL, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller cancelled at any point of its transaction (its BEGIN on its way, its
    block, its COMMIT or ROLLBACK on their way) gets the cancel, and the store is out
    of the transaction (note 24): later adds and a job's end commit. Before, on
    SQLite, a BEGIN that ran after its caller was cancelled stayed open and every
    later batch failed ("cannot start a transaction within a transaction"); on
    PostgreSQL the connection went back to the pool in its transaction, its session
    reset inside it, for asyncpg to roll back ("Resetting connection with an active
    transaction"). What the block did commits whole or not at all, and the ids it
    handed out stay used (note 2)."""
    await make_notes(store, sql)
    ended = await running(store)
    handed: list[int] = []

    async def block(point: str, inside: asyncio.Event) -> None:
        async with store.transaction() as tx:
            await tx.execute(sql.insert, (point,))
            [res] = await store.insert_in(tx, [job(point)])
            handed.append(res.job_id)
            inside.set()
            if point == "block":
                await asyncio.Event().wait()  # until cancelled
            if point == "rollback":
                raise Boom

    async def cancel_at(point: str, turns: int | None = None) -> bool:
        """Cancel ``block`` after ``turns`` turns of the loop, or once it is inside
        its block; whether the cancel reached it before it ended."""
        inside = asyncio.Event()
        task = asyncio.create_task(block(point, inside))
        if turns is None:
            await inside.wait()
        else:
            for _ in range(turns):
                await asyncio.sleep(0)
        reached = task.cancel()
        if reached:
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            await task
        # Out of the transaction: an add and another transaction commit.
        async with asyncio.timeout(5):
            [later] = await add(store, job())
            assert later > max(handed, default=0)
            async with store.transaction() as tx:
                await tx.execute(sql.insert, (f"{point} after",))
        return reached

    turns = 0  # the first cancels reach its BEGIN on its way, the later ones further on
    while await cancel_at(f"turn {turns}", turns):
        turns += 1
        assert turns < 1000, "the transaction never ended"
    for point in ("block", "commit", "rollback"):
        assert await cancel_at(point), point
    async with asyncio.timeout(5):
        await store.succeed(ended, None, NOW + 1, NO_PROGRESS, 3, pool="mail")
    assert (await get(store, ended)).status is SUCCESS
    # Each block committed whole or not at all.
    stored = {info.task for info in await store.list_jobs(limit=10_000)} - {"send"}
    written = {body for body in await notes(store, sql) if not body.endswith(" after")}
    assert stored == written
    assert f"turn {turns}" in written  # the one that ended before its cancel
    await assert_counts_exact(store)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# -- ownership -----------------------------------------------------------------


async def test_the_owner_record_says_who_owns_where_and_since_when(store: JobStore) -> None:
    assert await store.owner_record() is None
    assert await store.claim_ownership("a", "/run/a.sock", NOW) is None  # a new file
    assert await store.owner_record() == OwnerRecord("a", "/run/a.sock", NOW)


async def test_a_record_left_behind_names_the_owner_that_died(store: JobStore) -> None:
    await store.claim_ownership("a", "/run/a.sock", NOW)
    # "a" never released (killed): the next owner is told, and replaces the record.
    assert await store.claim_ownership("b", None, NOW + 5) == "a"
    assert await store.owner_record() == OwnerRecord("b", None, NOW + 5)


async def test_only_the_owner_removes_its_record(store: JobStore) -> None:
    await store.claim_ownership("a", "/run/a.sock", NOW)
    await store.release_lease("b")
    assert await store.owner_record() == OwnerRecord("a", "/run/a.sock", NOW)
    await store.release_lease("a")
    assert await store.owner_record() is None
    assert await store.claim_ownership("b", "/run/b.sock", NOW + 1) is None  # a clean stop


async def test_a_pause_is_recorded_per_pool(store: JobStore) -> None:
    assert await store.paused_pools() == set()
    await store.set_pool_paused("mail", True)
    await store.set_pool_paused("images", True)
    await store.set_pool_paused("images", False)
    assert await store.paused_pools() == {"mail"}
    assert await store.pool_pauses() == {"mail": True, "images": False}


# -- recover -------------------------------------------------------------------


async def test_recover_puts_running_jobs_back_and_records_the_interruption(
    store: JobStore,
) -> None:
    run = await running(store, started_at=NOW + 1)
    waiting = await add_one(store)
    done = await in_status(store, SUCCESS)
    untouched = {i: await get(store, i) for i in (waiting, done)}
    [success] = await store.attempts(done)  # read from its row (store note 7)
    assert success.outcome is AttemptOutcome.SUCCESS
    assert await store.recover(NOW + 100, max_recoveries=3, seq_gap=0) == (1, 0)
    info = await get(store, run)
    assert (info.status, info.recoveries, info.attempts, info.seq) == (WAITING, 1, 1, 3)
    [attempt] = await store.attempts(run)
    assert (attempt.number, attempt.outcome, attempt.started_at, attempt.finished_at) == (
        1,
        AttemptOutcome.INTERRUPTED,
        NOW + 1,
        NOW + 100,
    )
    assert attempt.error
    assert {i: await get(store, i) for i in (waiting, done)} == untouched
    assert await store.attempts(done) == [success]
    assert await store.attempts(waiting) == []
    assert await store.recover(NOW + 101, max_recoveries=3, seq_gap=0) == (0, 0)


async def test_a_job_recovered_max_recoveries_times_fails_as_orphaned(store: JobStore) -> None:
    job_id = await running(store)
    assert await store.recover(NOW + 10, max_recoveries=1, seq_gap=0) == (1, 0)
    await store.start(job_id, 2, NOW + 20, 10, pool="mail")
    assert await store.recover(NOW + 30, max_recoveries=1, seq_gap=0) == (0, 1)
    info = await get(store, job_id)
    assert (info.status, info.finished_at, info.recoveries) == (FAILURE, NOW + 30, 1)
    assert info.error is not None and info.error.startswith("orphaned")
    assert [(a.number, a.outcome, a.started_at) for a in await store.attempts(job_id)] == [
        (1, AttemptOutcome.INTERRUPTED, NOW),
        (2, AttemptOutcome.INTERRUPTED, NOW + 20),
    ]
    # Finished for good: the next recovery leaves it alone.
    assert await store.recover(NOW + 40, max_recoveries=1, seq_gap=0) == (0, 0)


async def test_an_orphan_of_a_task_with_a_failure_hook_is_left_running_for_the_runtime(
    store: JobStore,
) -> None:
    """Store note 22: its failure must commit with its ``on_failed`` hook, so the
    recovery leaves it RUNNING (attempt recorded) and hands it over; if nothing
    fails it (the process died first), the next recovery hands it over again."""
    async with store.transaction() as tx:
        await tx.insert_schedule(define("nightly", "send", "0 3 * * *"), NOW + 60, NOW)
    hooked = await running(store, metadata={"schedule": "nightly"})
    plain = await running(store, task="report", metadata={"schedule": "nightly"})
    kept: list[JobInfo] = []
    store.failed_hooks = lambda: ["send"]
    store.on_orphans = kept.extend
    try:
        assert await store.recover(NOW + 10, max_recoveries=0, seq_gap=0) == (0, 2)
        [info] = kept
        assert (info.id, info.status, info.task, info.recoveries) == (hooked, RUNNING, "send", 0)
        assert info.seq == (await get(store, hooked)).seq
        assert (await get(store, hooked)).status is RUNNING
        assert (await get(store, plain)).status is FAILURE
        [attempt] = await store.attempts(hooked)
        assert attempt.outcome is AttemptOutcome.INTERRUPTED
        schedule = await store.schedule("nightly")
        assert schedule is not None and schedule.failures == 1  # the plain one: in SQL
        assert await store.recover(NOW + 20, max_recoveries=0, seq_gap=0) == (0, 1)
        assert [i.id for i in kept] == [hooked, hooked]
        await assert_counts_exact(store)
    finally:
        store.failed_hooks = tuple
        store.on_orphans = None
    assert await store.recover(NOW + 30, max_recoveries=0, seq_gap=0) == (0, 1)
    assert (await get(store, hooked)).status is FAILURE  # no hook held here: failed in SQL


async def test_a_job_whose_cancel_was_asked_while_it_ran_is_cancelled_at_recovery(
    store: JobStore,
) -> None:
    """Else it runs again after its process died, though a client cancelled it."""
    asked = await running(store, started_at=NOW + 1)
    other = await running(store, started_at=NOW + 1)
    await store.cancel_external(asked, NOW + 2)  # the owner dies before it acts on it
    assert await store.recover(NOW + 100, max_recoveries=3, seq_gap=0) == (1, 0)
    info = await get(store, asked)
    assert (info.status, info.finished_at) == (CANCELLED, NOW + 100)
    assert [a.outcome for a in await store.attempts(asked)] == [AttemptOutcome.INTERRUPTED]
    assert (await get(store, other)).status is WAITING
    assert await external(store) == []  # nothing left for the new owner to act on


async def test_a_cancel_asked_while_a_job_ran_outlives_its_retry_not_a_retry_by_hand(
    store: JobStore,
) -> None:
    """The cancel is for the job (store note 21): a retry of the attempt it was
    asked during keeps the mark, and a recovery cancels that retry; a retry by
    hand after the job ended clears it (retried by the owner or by a client)."""
    asked = await running(store, started_at=NOW + 1)
    await store.cancel_external(asked, NOW + 2)
    await store.requeue(asked, NOW + 60, "flaky", 3, 1, 3, NO_PROGRESS, pool="mail")
    by_hand = await running(store, started_at=NOW + 1)
    await store.cancel_external(by_hand, NOW + 2)
    await store.fail(by_hand, "boom", NOW + 3, NO_PROGRESS, 3, 1, pool="mail")
    await store.requeue(by_hand, NOW + 4, None, 4, 1, 3, NO_PROGRESS, pool="mail", was=FAILURE)
    by_client = await running(store, started_at=NOW + 1)
    await store.cancel_external(by_client, NOW + 2)
    await store.fail(by_client, "boom", NOW + 3, NO_PROGRESS, 3, 1, pool="mail")
    assert await store.retry_external(by_client, NOW + 4, 3)
    assert {i: flag for i, _, flag in await external(store)} == {
        asked: True,
        by_hand: False,
        by_client: False,
    }
    assert await store.recover(NOW + 100, max_recoveries=3, seq_gap=0) == (0, 0)
    info = await get(store, asked)
    assert (info.status, info.finished_at) == (CANCELLED, NOW + 100)
    assert (await get(store, by_hand)).status is WAITING
    assert (await get(store, by_client)).status is WAITING
    await assert_counts_exact(store)


async def test_recover_takes_in_waiting_jobs_without_their_marks(store: JobStore) -> None:
    """A new owner reads every WAITING job into its windows at start: what clients
    added before is not read again by its poll (nor its mark cleared job by job);
    what they cancel before, and add after, is."""
    theirs, second = await add(store, job(external=True), job(external=True))
    cancelled = await add_one(store, external=True)
    await store.cancel_external(cancelled, NOW + 1)
    assert await store.recover(NOW + 2, max_recoveries=3, seq_gap=0) == (0, 0)
    assert await external(store) == [(cancelled, CANCELLED, False)]
    later = await add_one(store, external=True)
    assert await external(store) == [(cancelled, CANCELLED, False), (later, WAITING, False)]
    assert {(await get(store, i)).status for i in (theirs, second)} == {WAITING}


async def test_recover_moves_live_jobs_sequences_up_by_the_gap(store: JobStore) -> None:
    waiting = await add_one(store)  # seq 1
    run = await running(store)  # seq 2
    done = await in_status(store, SUCCESS)  # seq 3
    assert await store.recover(NOW, max_recoveries=3, seq_gap=1000) == (1, 0)
    assert (await get(store, waiting)).seq == 1 + 1000
    assert (await get(store, run)).seq == 2 + 1000 + 1  # the gap, then the recovery
    assert (await get(store, done)).seq == 3


async def test_an_orphaned_job_of_a_schedule_counts_as_its_failure(store: JobStore) -> None:
    async with store.transaction() as tx:
        await tx.insert_schedule(define("nightly", "send", "0 3 * * *"), NOW + 60, NOW)
    orphan = await running(store, metadata={"schedule": "nightly"})
    other = await running(store, metadata={"schedule": "nightly"})
    assert await store.recover(NOW + 1, max_recoveries=1, seq_gap=0) == (2, 0)
    await store.start(orphan, 2, NOW + 2, 10, pool="mail")  # only this one runs again
    assert await store.recover(NOW + 3, max_recoveries=1, seq_gap=0) == (0, 1)
    assert (await get(store, orphan)).status is FAILURE
    assert (await get(store, other)).status is WAITING
    schedule = await store.schedule("nightly")
    assert schedule is not None and schedule.failures == 1


# -- other processes' actions (external) ----------------------------------------------


async def test_an_external_add_is_listed_until_cleared(store: JobStore) -> None:
    own = await add_one(store)
    theirs, second = await add(store, job(external=True), job(external=True))
    assert await external(store) == [(theirs, WAITING, False), (second, WAITING, False)]
    assert [info.id for info, _ in await store.external_changes(limit=1)] == [theirs]
    await store.clear_external(theirs, 1, False)  # what the owner read: seq 1, no cancel
    assert await external(store) == [(second, WAITING, False)]
    assert (await get(store, own)).status is WAITING


async def test_cancel_external_cancels_a_waiting_job_at_once(store: JobStore) -> None:
    job_id = await add_one(store)
    assert await store.cancel_external(job_id, NOW + 5) == 2  # its new seq: for its event
    info = await get(store, job_id)
    assert (info.status, info.finished_at, info.seq) == (CANCELLED, NOW + 5, 2)
    assert await external(store) == [(job_id, CANCELLED, False)]


async def test_a_start_that_changes_no_row_is_told_before_it_resolves(store: JobStore) -> None:
    # Store note 20: a process that could not reach the owner cancelled the job;
    # the owner's start of its queued copy changes nothing and says so, before the
    # start's future resolves, while a start beside it in the batch commits.
    cancelled, waiting = await add_one(store), await add_one(store)
    await store.cancel_external(cancelled, NOW + 1)
    told: list[tuple[list[int], bool]] = []
    store.on_unstarted = lambda ids: told.append((list(ids), lost.done()))
    try:
        lost = store.start(cancelled, 1, NOW + 2, 3, pool="mail")
        kept = store.start(waiting, 1, NOW + 2, 2, pool="mail")
        await asyncio.gather(lost, kept)
    finally:
        store.on_unstarted = None
    assert told == [([cancelled], False)]
    assert (await get(store, cancelled)).status is CANCELLED
    assert (await get(store, waiting)).status is RUNNING
    assert (store.counted("mail", RUNNING), store.counted("mail", CANCELLED)) == (1, 1)


async def test_a_second_start_of_a_job_in_one_batch_changes_no_row(store: JobStore) -> None:
    # Two starts of one job in a batch (two copies of it in memory: a defect above
    # the store) start it once: the second changes no row and says so, as a start
    # of a job another process changed does (store note 20).
    job_id = await add_one(store)
    told: list[int] = []
    store.on_unstarted = told.extend
    try:
        first = store.start(job_id, 1, NOW + 2, 2, pool="mail")
        second = store.start(job_id, 1, NOW + 2, 3, pool="mail")
        await asyncio.gather(first, second)
    finally:
        store.on_unstarted = None
    assert told == [job_id]
    info = await get(store, job_id)
    assert (info.status, info.attempts) == (RUNNING, 1)
    assert store.counted("mail", RUNNING) == 1


async def test_cancel_external_asks_the_owner_of_a_running_job(store: JobStore) -> None:
    job_id = await running(store)
    assert await store.cancel_external(job_id, NOW + 5) is None  # its owner ends it
    info = await get(store, job_id)
    assert (info.status, info.finished_at) == (RUNNING, None)
    assert await external(store) == [(job_id, RUNNING, True)]
    await store.clear_external(job_id, info.seq, True)
    assert await external(store) == []
    # The owner's own cancel ends it.
    await store.cancel(job_id, NOW + 6, 3, None, pool="mail", was=RUNNING)
    assert (await get(store, job_id)).status is CANCELLED


@pytest.mark.parametrize("status", [SUCCESS, FAILURE, CANCELLED])
async def test_cancel_external_leaves_a_finished_job_alone(
    store: JobStore, status: JobStatus
) -> None:
    job_id = await in_status(store, status)
    before = await get(store, job_id)
    assert await store.cancel_external(job_id, NOW + 5) is None
    assert await get(store, job_id) == before
    assert await external(store) == []


@pytest.mark.parametrize("status", [FAILURE, CANCELLED])
async def test_retry_external_puts_a_finished_job_back_for_the_owner(
    store: JobStore, status: JobStatus
) -> None:
    job_id = await in_status(store, status)
    await store.record_attempt(job_id, 1, NOW, NOW + 1, AttemptOutcome.ERROR, "boom", None)
    before = await get(store, job_id)
    assert await store.retry_external(job_id, NOW + 50, 4) == before.seq + 1
    info = await get(store, job_id)
    assert (info.status, info.run_at, info.max_attempts) == (WAITING, NOW + 50, 4)
    assert (info.started_at, info.finished_at) == (None, None)
    assert (info.attempts, info.seq) == (before.attempts, before.seq + 1)
    assert await external(store) == [(job_id, WAITING, False)]
    [last] = await store.attempts(job_id)
    assert (last.next, last.next_at) == ("retried", NOW + 50)  # its history says so


@pytest.mark.parametrize("status", [WAITING, RUNNING, SUCCESS])
async def test_retry_external_leaves_other_statuses_alone(
    store: JobStore, status: JobStatus
) -> None:
    job_id = await in_status(store, status)
    await store.record_attempt(job_id, 1, NOW, NOW + 1, AttemptOutcome.ERROR, "boom", None)
    before = await get(store, job_id)
    attempts = await store.attempts(job_id)
    assert await store.retry_external(job_id, NOW + 50, 4) is None
    assert await get(store, job_id) == before
    assert await external(store) == []
    assert await store.attempts(job_id) == attempts  # no retry was made: none is said


async def test_retry_external_never_makes_two_live_jobs_with_one_key(store: JobStore) -> None:
    failed = await in_status(store, FAILURE, unique_key="k")
    holder = await add_one(store, unique_key="k")
    before = await get(store, failed)
    with pytest.raises(StoreError):
        await store.retry_external(failed, NOW + 50, 4)
    assert await get(store, failed) == before
    assert (await get(store, holder)).status is WAITING
    assert await external(store) == []


@pytest.mark.parametrize("owner_started_it", [False, True])
async def test_clear_external_keeps_a_change_made_after_the_owner_read(
    store: JobStore, owner_started_it: bool
) -> None:
    """Else a client's cancel is lost and the owner runs a cancelled job."""
    job_id = await add_one(store, external=True)  # a client's add
    [(read, cancel)] = await store.external_changes()  # the owner reads it and adopts it
    assert (read.status, cancel) == (WAITING, False)
    if owner_started_it:
        await store.start(job_id, 1, NOW + 1, 2, pool="mail")
    await store.cancel_external(job_id, NOW + 2)  # meanwhile, a client cancels it
    await store.clear_external(job_id, read.seq, cancel)  # the owner: what it read
    status = RUNNING if owner_started_it else CANCELLED
    assert await external(store) == [(job_id, status, owner_started_it)]


# -- cleanup -------------------------------------------------------------------


async def test_cleanup_deletes_old_finished_jobs_of_the_statuses_and_their_attempts(
    store: JobStore,
) -> None:
    def finished(job_id: int) -> Any:
        return store.record_attempt(job_id, 1, NOW, NOW + 1, AttemptOutcome.ERROR, "x", None)

    old_success = await in_status(store, SUCCESS)  # finished at NOW + 1
    old_failure = await in_status(store, FAILURE)
    old_cancelled = await in_status(store, CANCELLED)
    at_cutoff = await running(store)
    await store.succeed(at_cutoff, None, NOW + 10, NO_PROGRESS, 3, pool="mail")
    recent = await running(store)
    await store.succeed(recent, None, NOW + 20, NO_PROGRESS, 3, pool="mail")
    waiting = await add_one(store)
    run = await running(store)
    for job_id in (old_success, old_failure, recent):
        await finished(job_id)

    deleted = await store.cleanup(NOW + 10, [SUCCESS, FAILURE])
    assert deleted == 2
    remaining = set(await ids(store))
    assert remaining == {old_cancelled, at_cutoff, recent, waiting, run}
    assert await store.attempts(old_success) == []
    assert await store.attempts(old_failure) == []
    assert len(await store.attempts(recent)) == 1
    assert await store.cleanup(NOW + 10, []) == 0
    assert await store.cleanup(NOW + 1000, [WAITING, RUNNING]) == 0
    assert await store.cleanup(NOW + 1000, list(JobStatus)) == 3
    assert set(await ids(store)) == {waiting, run}


# -- reads ---------------------------------------------------------------------


async def test_list_jobs_filters_and_lists_newest_first(store: JobStore) -> None:
    a = await in_status(store, SUCCESS, metadata={"user": 1, "project": "x"})
    b = await in_status(store, FAILURE, metadata={"user": 2, "project": "x"})
    c = await in_status(
        store, WAITING, task="resize", pool="img", metadata={"user": 1, "vip": True}
    )
    d = await in_status(store, RUNNING, task="report", metadata={"user": 1, "vip": False})
    assert await ids(store) == [d, c, b, a]
    assert await ids(store, status=[SUCCESS, FAILURE]) == [b, a]
    assert await ids(store, status=[RUNNING]) == [d]
    assert await ids(store, pool="mail") == [d, b, a]
    assert await ids(store, pool="nowhere") == []
    assert await ids(store, task="send") == [b, a]
    assert await ids(store, pool="mail", task="report", status=[RUNNING]) == [d]
    assert await ids(store, metadata={"user": 1}) == [d, c, a]
    assert await ids(store, metadata={"user": 1, "project": "x"}) == [a]
    assert await ids(store, metadata={"vip": True}) == [c]
    assert await ids(store, metadata={"vip": False}) == [d]
    assert await ids(store, metadata={"user": "1"}) == []  # a string is not a number
    assert await ids(store, metadata={"project": "x"}, status=[FAILURE]) == [b]
    assert await ids(store, metadata={"missing": 1}) == []
    # Given ids, with the other filters (bulk actions): only those that match.
    assert await ids(store, ids=[a, c, 10**9]) == [c, a]
    assert await ids(store, ids=[a, c], metadata={"vip": True}) == [c]
    assert await ids(store, ids=[]) == []
    assert await store.count_jobs(metadata={"user": 1}) == 3


async def test_list_jobs_pages_by_limit_and_cursor(store: JobStore) -> None:
    added = await add(store, *[job() for _ in range(5)])
    newest_first = added[::-1]
    assert await ids(store, limit=2) == newest_first[:2]
    assert await ids(store, limit=2, before_id=newest_first[1]) == newest_first[2:4]
    assert await ids(store, limit=2, before_id=newest_first[3]) == newest_first[4:]
    assert await ids(store, before_id=min(added)) == []
    # A job added meanwhile does not shift the next page.
    await add(store, job())
    assert await ids(store, limit=2, before_id=newest_first[1]) == newest_first[2:4]


async def test_a_boolean_metadata_filter_matches_only_booleans(store: JobStore) -> None:
    one = await add_one(store, metadata={"flag": 1})
    true = await add_one(store, metadata={"flag": True})
    assert await ids(store, metadata={"flag": True}) == [true]
    assert await ids(store, metadata={"flag": 1}) == [one]


@pytest.mark.parametrize("key", ["x", "a.b"])  # a plain key, and one read by name
async def test_a_text_or_null_metadata_filter_matches_only_its_kind(
    store: JobStore, key: str
) -> None:
    """On SQLite a text filter matched an object or an array written as that text
    (``'{"a":1}'``), and a null filter matched nothing (``= NULL``); PostgreSQL
    compared by JSON type. Bulk actions use the same filter."""
    null = await add_one(store, metadata={key: None})
    obj = await add_one(store, metadata={key: {"a": 1}})
    arr = await add_one(store, metadata={key: [1, 2]})
    text = await add_one(store, metadata={key: "plain"})
    await add_one(store, metadata={"other": None})
    assert await ids(store, metadata={key: None}) == [null]
    assert await store.count_jobs(metadata={key: None}) == 1
    assert await ids(store, metadata={key: '{"a":1}'}) == []
    assert await ids(store, metadata={key: "[1,2]"}) == []
    assert await ids(store, metadata={key: "plain"}) == [text]
    assert {obj, arr}.isdisjoint(await ids(store, metadata={key: "null"}))


MINUTE = int(NOW // 60)  # the history's minute of NOW


def buckets(**counts: int) -> list[int]:
    """The 12 histogram buckets (b0..b11), e.g. ``buckets(b6=18, b8=2)``."""
    return [counts.get(f"b{i}", 0) for i in range(12)]


def minute_row_of(
    minute: int, *, succeeded: int = 0, failed: int = 0, cancelled: int = 0, seconds: float = 0.0,
    hist: list[int] | None = None, pool: str = "mail", task: str = "send",
) -> tuple[Any, ...]:  # fmt: skip
    return (minute, pool, task, succeeded, failed, cancelled, 0, seconds, *(hist or buckets()))


async def test_stats_of_an_empty_store(store: JobStore) -> None:
    nothing = {"counts": {}, "mean": None, "p95": None, "p95_low": None}
    assert await store.stats(None, None) == nothing
    assert await store.stats(NOW - 60, NOW + 60) == nothing


async def test_stats_without_a_window_count_the_stored_jobs_and_every_minute(
    store: JobStore,
) -> None:
    for status in (SUCCESS, SUCCESS, FAILURE, CANCELLED, WAITING, RUNNING, RUNNING):
        await in_status(store, status)
    await in_status(store, WAITING, pool="img")
    # 20 successes in the history: 18 took at most 1 s (b6), 2 at most 30 s (b8).
    await store.record_minutes(
        [
            minute_row_of(MINUTE - 500, succeeded=15, seconds=10.0, hist=buckets(b6=15)),
            minute_row_of(MINUTE, succeeded=5, failed=3, seconds=40.0, hist=buckets(b6=3, b8=2)),
        ]
    )
    stats = await store.stats(None, None)
    # Finished counts are the stored jobs' (the history says 20 successes).
    assert stats["counts"] == {
        "SUCCESS": 2,
        "FAILURE": 1,
        "CANCELLED": 1,
        "WAITING": 2,
        "RUNNING": 2,
    }
    assert stats["mean"] == pytest.approx(50.0 / 20)
    # Nearest rank: the 19th of 20 lies in b8, (5 s, 30 s].
    assert (stats["p95"], stats["p95_low"]) == (30.0, 5.0)


async def test_stats_in_a_window_read_whole_minutes_of_history(store: JobStore) -> None:
    await in_status(store, WAITING)
    await in_status(store, RUNNING, pool="img")
    await in_status(store, SUCCESS)  # stored, but not in the history: not in a window
    await store.record_minutes(
        [
            minute_row_of(MINUTE - 1, succeeded=100, seconds=1e6, hist=buckets(b11=100)),
            minute_row_of(MINUTE, succeeded=2, failed=1, seconds=0.002, hist=buckets(b0=2)),
            minute_row_of(
                MINUTE + 2, succeeded=1, cancelled=4, seconds=0.001, hist=buckets(b0=1), pool="img"
            ),
            minute_row_of(MINUTE + 3, failed=50),
        ]
    )
    # Minutes floor(since / 60) to floor(until / 60), inclusive: MINUTE to MINUTE + 2.
    stats = await store.stats(NOW + 30, NOW + 121)
    assert stats["counts"] == {
        "WAITING": 1,  # live counts, whatever the window
        "RUNNING": 1,
        "SUCCESS": 3,
        "FAILURE": 1,
        "CANCELLED": 4,
    }
    assert stats["mean"] == pytest.approx(0.003 / 3)
    # Three durations in b0: the 95th percentile is in (0, 1 ms].
    assert (stats["p95"], stats["p95_low"]) == (0.001, 0.0)
    # An end takes in the minute it falls in, even on its first instant (as
    # ``Runtime.history`` does), not the minute after; an open end is unbounded.
    assert (await store.stats(NOW, NOW + 120))["counts"]["SUCCESS"] == 3
    assert (await store.stats(NOW, NOW + 119.999))["counts"]["SUCCESS"] == 2
    assert (await store.stats(NOW, None))["counts"]["FAILURE"] == 51
    before = await store.stats(None, NOW - 0.001)
    assert before["counts"] == {"WAITING": 1, "RUNNING": 1, "SUCCESS": 100}
    assert before["mean"] == pytest.approx(1e4)
    # Above the last bound: no upper bound, at least 600 s.
    assert (before["p95"], before["p95_low"]) == (None, 600.0)
    assert (await store.stats(NOW + 600, NOW + 660))["counts"] == {"WAITING": 1, "RUNNING": 1}
    # Ends beyond any minute: everything, or nothing, and never an error.
    assert (await store.stats(-math.inf, math.inf))["counts"]["FAILURE"] == 51
    assert (await store.stats(-1e300, 1e300))["counts"]["CANCELLED"] == 4
    for nothing in ((1e300, None), (None, -math.inf), (math.nan, None)):
        assert (await store.stats(*nothing))["counts"] == {"WAITING": 1, "RUNNING": 1}


async def test_count_waiting_counts_one_pools_waiting_jobs(store: JobStore) -> None:
    await add(store, job(pool="mail"), job(pool="mail"), job(pool="img"))
    await in_status(store, RUNNING, pool="mail")
    await in_status(store, SUCCESS, pool="mail")
    assert await store.count_waiting("mail") == 2
    assert await store.count_waiting("img") == 1
    assert await store.count_waiting("none") == 0


# -- schedules -----------------------------------------------------------------

NIGHTLY = define(
    "nightly",
    "report",
    "0 3 * * *",
    args=[1, "x"],
    kwargs={"full": True},
    pool="reports",
    tz="Europe/Paris",
    misfire="skip",
)


async def test_an_inserted_schedule_reads_back_as_defined(store: JobStore) -> None:
    async with store.transaction() as tx:
        assert await tx.schedule("nightly") is None
        await tx.insert_schedule(NIGHTLY, NOW + 60, NOW)
        seen_in_tx = await tx.schedule("nightly")
    expected = ScheduleInfo(
        name="nightly",
        task="report",
        expression="0 3 * * *",
        args=(1, "x"),
        kwargs={"full": True},
        pool="reports",
        tz="Europe/Paris",
        misfire="skip",
        paused=False,
        next_run_at=NOW + 60,
        created_at=NOW,
        updated_at=NOW,
    )
    assert seen_in_tx == expected
    assert await store.schedule("nightly") == expected
    assert (await store.schedule("nightly")).definition == NIGHTLY  # type: ignore[union-attr]
    assert await store.schedule("other") is None


async def test_schedules_are_listed_by_name(store: JobStore) -> None:
    async with store.transaction() as tx:
        for name in ("b", "c", "a"):
            await tx.insert_schedule(define(name, "send", "* * * * *"), NOW + 60, NOW)
    assert [s.name for s in await store.schedules()] == ["a", "b", "c"]


async def test_a_schedule_name_is_inserted_once(store: JobStore) -> None:
    async with store.transaction() as tx:
        assert await tx.insert_schedule(NIGHTLY, NOW + 60, NOW)
    async with store.transaction() as tx:  # the name is taken: nothing written, no error
        assert not await tx.insert_schedule(define("nightly", "other", "* * * * *"), NOW, NOW + 1)
    assert await store.schedule("nightly") is not None
    assert (await store.schedule("nightly")).task == "report"  # type: ignore[union-attr]


async def test_define_schedule_changes_the_definition_and_keeps_its_history(
    store: JobStore,
) -> None:
    async with store.transaction() as tx:
        await tx.insert_schedule(NIGHTLY, NOW + 60, NOW)
        await tx.schedule_fired(
            "nightly",
            next_run_at=NOW + 120,
            last_run_at=NOW + 60,
            last_job_id=7,
            error=None,
            added=1,
        )
    changed = define("nightly", "report2", "*/5 * * * *", kwargs={"a": 1}, pool=None)
    async with store.transaction() as tx:
        await tx.define_schedule(changed, NOW + 300, NOW + 100)
    info = await store.schedule("nightly")
    assert info is not None
    assert info.definition == changed
    assert (info.next_run_at, info.created_at, info.updated_at) == (NOW + 300, NOW, NOW + 100)
    assert (info.fires, info.last_run_at, info.last_job_id) == (1, NOW + 60, 7)


async def test_pause_resume_and_delete_a_schedule(store: JobStore) -> None:
    async with store.transaction() as tx:
        await tx.insert_schedule(NIGHTLY, NOW + 60, NOW)
        await tx.pause_schedule("nightly", NOW + 1)
    paused = await store.schedule("nightly")
    assert paused is not None
    assert (paused.paused, paused.next_run_at, paused.updated_at) == (True, None, NOW + 1)
    async with store.transaction() as tx:
        await tx.resume_schedule("nightly", NOW + 90, NOW + 2)
    resumed = await store.schedule("nightly")
    assert resumed is not None
    assert (resumed.paused, resumed.next_run_at, resumed.updated_at) == (False, NOW + 90, NOW + 2)
    async with store.transaction() as tx:
        await tx.delete_schedule("nightly")
        await tx.delete_schedule("never existed")
    assert await store.schedule("nightly") is None
    assert await store.schedules() == []


async def test_schedule_fired_and_ran_record_what_was_added(store: JobStore) -> None:
    async with store.transaction() as tx:
        await tx.insert_schedule(NIGHTLY, NOW + 60, NOW)
        await tx.schedule_fired(
            "nightly",
            next_run_at=NOW + 120,
            last_run_at=NOW + 60,
            last_job_id=7,
            error=None,
            added=3,
        )
    info = await store.schedule("nightly")
    assert info is not None
    assert (info.next_run_at, info.last_run_at, info.last_job_id, info.fires) == (
        NOW + 120,
        NOW + 60,
        7,
        3,
    )
    # A slot that added nothing keeps the last run and job, and says why.
    async with store.transaction() as tx:
        await tx.schedule_fired(
            "nightly",
            next_run_at=None,
            last_run_at=None,
            last_job_id=None,
            error="task unknown",
            added=0,
        )
    info = await store.schedule("nightly")
    assert info is not None
    assert (info.next_run_at, info.last_run_at, info.last_job_id, info.last_error, info.fires) == (
        None,
        NOW + 60,
        7,
        "task unknown",
        3,
    )
    async with store.transaction() as tx:
        await tx.schedule_ran("nightly", 9)
    info = await store.schedule("nightly")
    assert info is not None
    assert (info.last_job_id, info.last_error, info.fires) == (9, None, 3)


async def test_bump_schedules_increases_the_version(store: JobStore) -> None:
    assert await store.schedules_version() is None
    async with store.transaction() as tx:
        first = await tx.bump_schedules()
    assert await store.schedules_version() == str(first)
    async with store.transaction() as tx:
        second = await tx.bump_schedules()
        third = await tx.bump_schedules()
    assert first < second < third
    assert await store.schedules_version() == str(third)


async def test_schedule_failed_counts_a_failure(store: JobStore) -> None:
    async with store.transaction() as tx:
        await tx.insert_schedule(NIGHTLY, NOW + 60, NOW)
    store.schedule_failed("nightly")
    await store.schedule_failed("nightly")
    await store.schedule_failed("unknown")
    info = await store.schedule("nightly")
    assert info is not None and info.failures == 2
    assert [s.name for s in await store.schedules()] == ["nightly"]


# -- health --------------------------------------------------------------------


async def test_a_healthy_store_says_so(store: JobStore) -> None:
    await add_one(store)
    health = store.health()
    assert (health.ok, health.error, health.since, health.retained) == (True, None, None, 0)
    assert (health.failed_writes, health.outages) == (0, 0)
    assert store.failing is False


# -- history: what finished, per minute -------------------------------------------


def minute_row(minute: int, pool: str, task: str, *counts: float) -> tuple[Any, ...]:
    """A row of (minute, pool, task, succeeded, failed, cancelled, retried, sum, 12 buckets)."""
    values = list(counts) + [0] * (5 + 12 - len(counts))
    return (minute, pool, task, *values)


async def test_minutes_add_up_and_sum_per_step(store: JobStore) -> None:
    await store.record_minutes([minute_row(100, "p", "a", 2, 1, 0, 3, 0.5)])
    await store.record_minutes([minute_row(100, "p", "a", 1, 0, 1, 0, 0.25)])  # the same minute
    await store.record_minutes([minute_row(101, "q", "b", 4), minute_row(160, "p", "a", 1)])
    per_minute = await store.history(100, 161, 1)
    assert [(r[0], *r[3:8]) for r in per_minute] == [
        (100, 3, 1, 1, 3, 0.75),
        (101, 4, 0, 0, 0, 0.0),
        (160, 1, 0, 0, 0, 0.0),
    ]
    hourly = await store.history(60, 180, 60)
    assert [(r[0], r[3]) for r in hourly] == [(60, 7), (120, 1)]
    assert [(r[0], r[3]) for r in await store.history(0, 200, 60, pool="p", task="a")] == [
        (60, 3),
        (120, 1),
    ]
    assert await store.prune_history(101) == 1  # minute 100 goes, 101 and 160 stay
    assert [r[0] for r in await store.history(0, 200, 1)] == [101, 160]


# -- counts by pool and status (kept on every write) --------------------------------


async def test_counts_stay_exact_through_every_kind_of_write(backend: str, tmp_path: Path) -> None:
    async with open_store(backend, tmp_path) as store:
        assert await assert_counts_exact(store) == {}
        a, b, c, d, e, f = await add(store, *[job() for _ in range(6)])
        g, h, i, j = await add(store, *[job(pool="img") for _ in range(4)])
        held = await add_one(store, pool="img", unique_key="k")
        # A unique key held by a live job: no row made, nothing counted.
        [dup] = await store.insert([job(pool="img", unique_key="k")])
        assert dup == InsertResult(held, False)
        assert (await assert_counts_exact(store))["img"] == {WAITING: 5}

        # Queued together: one batch, each write grouped with its kind.
        for k in (a, b, c):
            store.start(k, 1, NOW, 2, pool="mail")
        await store.start(g, 1, NOW, 2, pool="img")
        store.succeed(a, None, NOW + 1, NO_PROGRESS, 3, pool="mail")
        store.fail(b, "boom", NOW + 1, NO_PROGRESS, 3, 1, pool="mail")
        store.cancel(c, NOW + 1, 3, None, pool="mail", was=RUNNING)
        store.cancel(d, NOW + 1, 2, None, pool="mail", was=WAITING)
        await store.fail(e, "poison", NOW + 1, NO_PROGRESS, 2, 0, pool="mail", was=WAITING)
        assert (await assert_counts_exact(store))["mail"] == {
            SUCCESS: 1,
            FAILURE: 2,
            CANCELLED: 2,
            WAITING: 1,
        }

        # Retries: a manual one of a failure, one of a running job.
        store.requeue(b, NOW + 5, "again", 4, 1, 3, NO_PROGRESS, pool="mail", was=FAILURE)
        await store.requeue(g, NOW + 5, "flaky", 3, 1, 3, NO_PROGRESS, pool="img")
        await assert_counts_exact(store)

        # Refused: a cancelled job does not start, a finished one is not cancelled;
        # a wrong belief (f is WAITING) is still counted from what the row was.
        store.start(d, 2, NOW + 2, 3, pool="mail")
        store.cancel(a, NOW + 2, 4, None, pool="mail", was=RUNNING)
        store.cancel(f, NOW + 2, 2, None, pool="mail", was=RUNNING)
        await store.cancel(h, NOW + 2, 2, None, pool="img", was=WAITING)
        assert [(await get(store, k)).status for k in (d, a, f, h)] == [
            CANCELLED,
            SUCCESS,
            CANCELLED,
            CANCELLED,
        ]
        await assert_counts_exact(store)

        # In transactions: a failure and an insert that commit, and ones rolled back.
        await store.start(i, 1, NOW, 2, pool="img")
        async with store.transaction() as tx:
            await tx.mark_failed(i, "hooked", NOW + 3, NO_PROGRESS, 3, 1, pool="img")
            await store.insert_in(tx, [job(pool="img"), job(pool="tx")])
        with pytest.raises(Boom):
            async with store.transaction() as tx:
                await tx.mark_failed(j, "lost", NOW + 3, NO_PROGRESS, 2, 0, pool="img", was=WAITING)
                await store.insert_in(tx, [job(pool="lost")])
                raise Boom
        async with store.transaction() as tx:
            with pytest.raises(Boom):
                async with tx.savepoint():
                    await tx.mark_failed(
                        j, "undone", NOW + 3, NO_PROGRESS, 2, 0, pool="img", was=WAITING
                    )
                    raise Boom
        assert (await get(store, j)).status is WAITING
        assert "lost" not in await assert_counts_exact(store)

        # Another process: cancels a waiting job, asks a running one to stop, retries.
        running_ids = [await running(store, pool="img") for _ in range(3)]
        await store.cancel_external(j, NOW + 4)
        await store.cancel_external(running_ids[0], NOW + 4)
        await store.retry_external(c, NOW + 4, 3)
        await assert_counts_exact(store)
        # A retry that would make two live jobs with one key is refused whole.
        failed_key = await in_status(store, FAILURE, pool="img", unique_key="live")
        await add_one(store, pool="img", unique_key="live")
        with pytest.raises(StoreError):
            await store.retry_external(failed_key, NOW + 4, 3)
        await assert_counts_exact(store)

    # The process dies with jobs RUNNING; the next one recovers them.
    async with open_store(backend, tmp_path) as store:
        before = await assert_counts_exact(store)  # counted() is loaded at opening
        assert before["img"][RUNNING] == 3
        assert await store.recover(NOW + 10, max_recoveries=1, seq_gap=100) == (2, 0)
        # Asked to stop while it ran: CANCELLED, with h and j before it.
        assert (await assert_counts_exact(store))["img"][CANCELLED] == 3
        await store.start(running_ids[1], 2, NOW + 11, 200, pool="img")
        assert await store.recover(NOW + 12, max_recoveries=1, seq_gap=100) == (0, 1)
        await assert_counts_exact(store)

        # Retention and deletion.
        assert await store.cleanup(NOW + 100, [SUCCESS, FAILURE]) > 0
        await assert_counts_exact(store)
        cancelled = [info.id for info in await store.list_jobs(status=[CANCELLED])]
        assert await store.purge([*cancelled, f + 1000, held]) == len(cancelled)
        truth = await assert_counts_exact(store)
        assert all(CANCELLED not in by_status for by_status in truth.values())


async def test_a_batch_written_part_by_part_counts_only_what_committed(store: JobStore) -> None:
    failed = await in_status(store, FAILURE, unique_key="k")
    holder = await add_one(store, unique_key="k")
    other, third = await add(store, job(), job(pool="img"))
    # One part is refused (two live jobs with one key): the batch is written
    # part by part, and only the parts that commit are counted.
    store.requeue(failed, NOW + 5, None, 4, 1, 3, NO_PROGRESS, pool="mail", was=FAILURE)
    store.start(other, 1, NOW, 2, pool="mail")
    store.cancel(third, NOW, 2, None, pool="img", was=WAITING)
    new = store.insert([job(pool="img")])
    await store.flush()
    [created] = await new
    assert isinstance(created, InsertResult) and created.created
    assert [(await get(store, k)).status for k in (failed, holder, other, third)] == [
        FAILURE,
        WAITING,
        RUNNING,
        CANCELLED,
    ]
    await assert_counts_exact(store)


async def test_a_batch_kept_through_an_outage_is_counted_once(backend: str, tmp_path: Path) -> None:
    hold = outage(backend)
    if hold is None:
        pytest.skip(f"{backend}: cannot simulate an outage")
    async with open_store(backend, tmp_path) as store:
        a, b = await running(store), await add_one(store)
        async with hold(store):
            # The result needs room the database does not have: kept, written again.
            done = store.succeed(a, json.dumps("x" * 50_000), NOW + 1, NO_PROGRESS, 3, pool="mail")
            cancelled = store.cancel(b, NOW + 1, 2, None, pool="mail", was=WAITING)
            async with asyncio.timeout(5):
                while not store.failing:
                    await asyncio.sleep(0.005)
            await asyncio.sleep(0.1)  # a few more attempts, each rolled back
            assert (store.counted("mail", RUNNING), store.counted("mail", WAITING)) == (1, 1)
        await asyncio.gather(done, cancelled)
        assert [(await get(store, k)).status for k in (a, b)] == [SUCCESS, CANCELLED]
        assert (await assert_counts_exact(store))["mail"] == {SUCCESS: 1, CANCELLED: 1}


# -- the waiting window: a pool's waiting jobs by index ----------------------------------


async def window_jobs(store: JobStore) -> list[JobInfo]:
    """Waiting jobs of "mail" over 3 priorities with run_at ties, and jobs that do not belong."""
    specs = [
        (0, NOW - 5),
        (5, NOW),  # due exactly now
        (0, NOW - 5),  # a tie: by id
        (-3, NOW - 100),
        (5, NOW - 1),
        (0, NOW + 50),  # delayed
        (5, NOW + 10),  # delayed
        (-3, NOW + 10),  # delayed, a tie across levels
        (0, NOW - 5),
    ]
    added = await add(store, *[job(priority=p, run_at=r) for p, r in specs])
    await add(store, job(pool="img", run_at=NOW - 1000, priority=9))  # another pool
    await running(store, run_at=NOW - 1000, priority=9)  # not waiting
    await in_status(store, CANCELLED, run_at=NOW - 1000, priority=9)
    return [await get(store, k) for k in added]


async def test_ready_jobs_come_in_run_order_and_page_through_each_job_once(
    store: JobStore,
) -> None:
    jobs = await window_jobs(store)
    due = sorted((j for j in jobs if j.run_at <= NOW), key=lambda j: (-j.priority, j.run_at, j.id))
    assert [j.priority for j in due] == [5, 5, 0, 0, 0, -3]
    assert await store.ready_jobs("mail", NOW, 100) == due
    assert [j.id for j in await store.ready_jobs("mail", NOW, 3)] == [j.id for j in due[:3]]
    for size in (1, 2, 4):
        seen: list[int] = []
        after: tuple[int, float, int] | None = None
        while page := await store.ready_jobs("mail", NOW, size, after):
            assert len(page) <= size
            seen += [j.id for j in page]
            last = page[-1]
            after = (last.priority, last.run_at, last.id)
        assert seen == [j.id for j in due], size
    assert await store.ready_jobs("mail", NOW, 0) == []
    assert await store.ready_jobs("nowhere", NOW, 10) == []
    later = await store.ready_jobs("mail", NOW + 10, 100)
    assert [j.priority for j in later] == [5, 5, 5, 0, 0, 0, -3, -3]


async def test_delayed_jobs_merge_the_priorities_in_run_at_order(store: JobStore) -> None:
    jobs = await window_jobs(store)
    by_time = sorted(jobs, key=lambda j: (j.run_at, j.id))
    delayed = [j for j in by_time if j.run_at > NOW]
    assert await store.delayed_jobs("mail", (NOW, 2**63 - 1), 100) == delayed
    assert [j.run_at for j in delayed] == [NOW + 10, NOW + 10, NOW + 50]
    seen: list[int] = []
    after = (0.0, 0)
    while page := await store.delayed_jobs("mail", after, 2):
        seen += [j.id for j in page]
        after = (page[-1].run_at, page[-1].id)
    assert seen == [j.id for j in by_time]  # from the start: every waiting job once
    assert await store.delayed_jobs("mail", (NOW + 50, 2**63 - 1), 10) == []
    assert await store.delayed_jobs("mail", (NOW, 2**63 - 1), 0) == []


async def test_oldest_due_is_the_earliest_run_at_of_the_due_jobs_of_any_priority(
    store: JobStore,
) -> None:
    assert await store.oldest_due("mail", NOW) is None
    await window_jobs(store)
    assert await store.oldest_due("mail", NOW) == NOW - 100  # the lowest priority's
    assert await store.oldest_due("img", NOW) == NOW - 1000
    assert await store.oldest_due("nowhere", NOW) is None
    assert await store.oldest_due("mail", NOW - 101) is None  # none due yet
    await add(store, job(pool="late", run_at=NOW + 10, priority=2))
    first = await add(store, job(pool="late", run_at=NOW + 5, priority=-1))
    assert await store.oldest_due("late", NOW) is None
    assert await store.oldest_due("late", NOW + 5) == NOW + 5
    await store.start(first[0], 1, NOW + 10, 2, pool="late")  # no longer waits
    assert await store.oldest_due("late", NOW + 20) == NOW + 10


async def test_the_window_follows_the_jobs_state(store: JobStore) -> None:
    first, second = await add(store, job(), job(run_at=NOW + 5))
    await store.start(first, 1, NOW, 2, pool="mail")
    assert await store.ready_jobs("mail", NOW + 10, 10) == [await get(store, second)]
    await store.requeue(first, NOW + 1, "retry", 3, 1, 3, NO_PROGRESS, pool="mail")
    assert [j.id for j in await store.ready_jobs("mail", NOW + 10, 10)] == [first, second]
    assert [j.id for j in await store.delayed_jobs("mail", (NOW, 2**63 - 1), 10)] == [
        first,
        second,
    ]


@pytest.mark.parametrize("status", list(JobStatus), ids=lambda s: s.value)
async def test_unique_holder_is_the_live_job_holding_the_key(
    store: JobStore, status: JobStatus
) -> None:
    job_id = await in_status(store, status, unique_key="k")
    expected = job_id if status in (WAITING, RUNNING) else None
    assert await store.unique_holder("k") == expected
    assert await store.unique_holder("other") is None


async def test_unique_window_is_the_job_whose_window_holds_the_key(store: JobStore) -> None:
    (job_id,) = await add(store, job(unique_key="k", unique_for=60.0, created_at=NOW))
    assert await store.unique_window("k", NOW + 59) == job_id
    assert await store.unique_window("k", NOW + 60) is None  # ended
    assert await store.unique_window("other", NOW) is None


# -- dependencies and batches (taskrt.store.deps) --------------------------------------


def dependent(after: tuple[int, ...], **options: Any) -> NewJob:
    inputs = options.pop("inputs", None)
    policy = options.pop("on_parent_failure", "cancel")
    new = job(**options)
    new.after, new.inputs, new.on_parent_failure = after, inputs, policy
    return new


async def test_a_dependent_is_stored_blocked_and_an_unknown_parent_refuses_its_add(
    store: JobStore,
) -> None:
    parent = await add_one(store)
    [child] = await add(store, dependent((parent,), args=("x",)))
    info = await get(store, child)
    assert (info.status, info.waiting_reason) == (WAITING, "blocked")
    assert info.run_at > NOW + 10 * 365 * 86400  # no refill or claim takes it
    assert await store.ready_jobs("mail", NOW + 60, 10) == [await get(store, parent)]
    assert await store.open_parents() == [parent]
    results = await store.insert([job(), dependent((parent, 10_000))])
    assert all(isinstance(r, Exception) for r in results)  # all or nothing
    assert [j.id for j in await store.list_jobs()] == [child, parent]


async def test_settling_releases_a_dependent_with_its_parents_results_once(
    store: JobStore,
) -> None:
    a, b = await add(store, job(), job())
    [child] = await add(store, dependent((a, b), args=("rest",), inputs="results"))
    for job_id, result in ((a, '{"n": 1}'), (b, None)):
        await store.start(job_id, 1, NOW, 2, pool="mail")
        await store.succeed(job_id, result, NOW + 1, NO_PROGRESS, 3, pool="mail")
    settled = await store.settle_deps([a], NOW + 2)
    assert settled.released == () and settled.cancelled == ()  # b was not settled yet
    settled = await store.settle_deps([b], NOW + 2)
    assert settled.released == ((child, "mail"),)
    info = await get(store, child)
    assert (info.waiting_reason, info.run_at, info.args) == (
        None,
        NOW + 2,
        ([{"n": 1}, None], "rest"),
    )
    again = await store.settle_deps(None, NOW + 3)  # a sweep after it: nothing left
    assert again.released == () and again.cancelled == ()
    assert await store.open_parents() == []
    assert [r.id for r in await store.ready_jobs("mail", NOW + 5, 10)] == [child]


async def test_settling_cancels_the_dependents_of_a_failed_parent_and_counts_them(
    store: JobStore,
) -> None:
    parent = await in_status(store, FAILURE)
    [child, anyway] = await add(
        store, dependent((parent,)), dependent((parent,), on_parent_failure="run")
    )
    settled = await store.settle_deps(None, NOW + 5)
    assert settled.released == ((anyway, "mail"),)
    [gone] = settled.cancelled
    assert (gone.job_id, gone.status, gone.error) == (
        child,
        "CANCELLED",
        f"parent job {parent} failed",
    )
    info = await get(store, child)
    assert (info.status, info.error, info.seq) == (CANCELLED, gone.error, gone.seq)
    assert store.counted("mail", CANCELLED) == 1
    assert store.counted("mail", WAITING) == 1


async def test_retention_keeps_the_parent_of_a_blocked_job(store: JobStore) -> None:
    parent = await in_status(store, SUCCESS)
    [child] = await add(store, dependent((parent,), inputs="result"))
    assert await store.purge([parent]) == 0
    assert await store.cleanup(NOW + 10**6, [SUCCESS]) == 0
    await store.settle_deps([parent], NOW + 5)
    assert await store.purge([parent]) == 1
    assert (await get(store, child)).waiting_reason is None


async def test_a_batch_forms_from_its_oldest_jobs_and_its_members_end_as_it_ends(
    store: JobStore,
) -> None:
    members = []
    for n in range(3):
        new = job(task="digest", args=({"n": n},), created_at=NOW + n)
        new.batch_key = "k"
        members.append(new)
    ids = await add(store, *members)
    assert (await get(store, ids[0])).waiting_reason == "batching"
    assert await store.batches_waiting() == [("digest", "k", 3, NOW, ids[-1])]
    formed = await store.form_batch("digest", "k", 2, NOW + 10)
    assert formed == (ids[0], "mail", [ids[1]])
    leader = await get(store, ids[0])
    assert (leader.args, leader.batch, leader.run_at) == (([{"n": 0}, {"n": 1}],), ids[0], NOW + 10)
    follower = await get(store, ids[1])
    assert (follower.waiting_reason, follower.batch) == ("batched", ids[0])
    assert await store.batches_waiting() == [("digest", "k", 1, NOW + 2, ids[2])]
    # One job left: it neither fills a batch of 2 nor was added by NOW + 1.
    assert await store.form_batch("digest", "k", 2, NOW + 10, ripe_before=NOW + 1) is None
    assert await store.batches_waiting() == [("digest", "k", 1, NOW + 2, ids[2])]
    await store.start(ids[0], 1, NOW + 11, 2, pool="mail")
    await store.succeed(ids[0], "2", NOW + 12, NO_PROGRESS, 3, pool="mail")
    settled = await store.settle_deps([ids[0]], NOW + 13)
    [ended] = settled.cancelled
    assert (ended.job_id, ended.status, ended.result) == (ids[1], "SUCCESS", "2")
    follower = await get(store, ids[1])
    assert (follower.status, follower.result, follower.attempts) == (SUCCESS, 2, 1)
    assert store.counted("mail", SUCCESS) == 2
    assert await store.form_batch("digest", "other", 2, NOW) is None
    # Ripe: added by the bound (waited max_wait), it forms a batch of its own.
    assert await store.form_batch("digest", "k", 2, NOW + 20, ripe_before=NOW + 2) == (
        ids[2],
        "mail",
        [],
    )


async def test_scheduled_lists_jobs_due_later_not_those_held_for_other_jobs(
    store: JobStore,
) -> None:
    # A job held for its parents or its batch is stored at the placeholder run_at
    # BLOCKED_AT, far in the future, but it waits for other jobs, not for a time:
    # `bulk cancel --scheduled` must not take workflow children and batch members.
    parent = await add_one(store)
    later = await add_one(store, run_at=NOW + 3600)
    [child] = await add(store, dependent((parent,)))
    members = []
    for n in range(3):
        new = job(task="digest", args=(n,))
        new.batch_key = "k"
        members.append(new)
    leader, batched, batching = await add(store, *members)
    assert await store.form_batch("digest", "k", 2, NOW) == (leader, "mail", [batched])
    assert [(await get(store, i)).waiting_reason for i in (child, batched, batching)] == [
        "blocked",
        "batched",
        "batching",
    ]
    assert await ids(store, run_after=NOW) == [later]
    assert await ids(store, run_after=NOW, status=[WAITING], pool="mail") == [later]
    assert await store.count_jobs(run_after=NOW) == 1
    assert await ids(store, run_after=NOW, ids=[later, child, batched, batching]) == [later]
    assert await ids(store, run_after=NOW + 3600) == []
