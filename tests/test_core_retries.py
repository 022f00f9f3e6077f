"""Retries and backoff on an injected clock, Fatal, Retry, attempt records, manual retry."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from core_support import Gate, committed_jobs, make_rt, until

from taskrt import (
    AttemptOutcome,
    EventType,
    FakeClock,
    Fatal,
    InvalidOption,
    InvalidTransition,
    JobContext,
    JobStatus,
    Retry,
    RetryPolicy,
    parse_duration,
    parse_retry,
)
from taskrt.retry import parse_attempts

# -- the policy itself: pure functions ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("200ms", 0.2), ("30s", 30.0), ("1h30m", 5400.0), ("1d", 86400.0), (2, 2.0), ("1.5", 1.5)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    # Unicode digits and underscores, which float() and \d read, are not ASCII digits.
    [
        "-5",
        "nan",
        "inf",
        "1x",
        "",
        -1,
        True,
        None,
        "\u0663s",
        "\u0663",
        "1_000",
        "\u00b2s",
        "1e999",
    ],
)
def test_parse_duration_refuses_what_is_not_a_duration(text: object) -> None:
    with pytest.raises(InvalidOption) as err:
        parse_duration(text, field="delay")
    assert err.value.field == "delay"


@pytest.mark.parametrize("given", [-0.0, "-0", "-0.0", [0.1, -0.0]])
def test_a_negative_zero_delay_is_zero_and_reads_back(given: object) -> None:
    """-0.0 passed the "not negative" check and was stored as "-0s", which no read
    accepts: after a restart the job's own policy was lost for its task's."""
    policy = parse_retry(given)
    assert all(math.copysign(1.0, d) == 1.0 for d in (policy.base, *(policy.delays or ())))
    assert parse_retry(policy.describe()) == policy
    assert "-0" not in str(policy.describe())


@pytest.mark.parametrize("given", [-1.0, 3.0, Decimal(-1), complex(-1)])
def test_attempts_must_be_an_integer_even_minus_one(given: object) -> None:
    """-1.0 (and a Decimal or complex -1) equals -1 and was taken as unlimited,
    while 3.0 was refused."""
    with pytest.raises(InvalidOption, match="expected a positive integer") as err:
        parse_attempts(given)
    assert err.value.field == "attempts"


@pytest.mark.parametrize(
    ("spec", "delays"),
    [
        ("200ms", [0.2, 0.2, 0.2]),
        (30, [30.0, 30.0, 30.0]),
        ("1m,2m,4m", [60.0, 120.0, 240.0, 240.0, 240.0]),
        ([1, "2s"], [1.0, 2.0, 2.0]),
        ({"base": 2, "factor": 3, "cap": 10}, [2.0, 6.0, 10.0, 10.0]),
        ({"base": "1s", "factor": 2}, [1.0, 2.0, 4.0, 8.0, 16.0]),
        (None, [0.0, 0.0]),
    ],
)
def test_retry_policy_delays(spec: object, delays: list[float]) -> None:
    policy = parse_retry(spec)
    assert [policy.delay(n) for n in range(1, len(delays) + 1)] == delays


def test_exponential_jitter_stays_within_its_spread() -> None:
    policy = parse_retry({"base": 10, "factor": 1, "jitter": 0.1})
    rng = random.Random(7)
    seen = [policy.delay(1, rng) for _ in range(200)]
    assert all(9.0 <= d <= 11.0 for d in seen)
    assert len(set(seen)) > 100
    assert policy == RetryPolicy(base=10.0, factor=1.0, jitter=0.1)


# -- retries in the runtime, on a fake clock (nothing sleeps) ----------------------------------


async def test_list_backoff_runs_each_attempt_at_its_time(tmp_path: Path) -> None:
    clock = FakeClock()
    rt = make_rt(tmp_path, clock=clock)
    calls: list[tuple[int, float]] = []

    @rt.task(attempts=4, retry="1s,5s")
    async def flaky(job: JobContext) -> str:
        calls.append((job.attempt, clock.now()))
        if job.attempt < 4:
            raise RuntimeError(f"boom {job.attempt}")
        return "ok"

    async with rt:
        pool = rt.pool("default")
        t0 = clock.now()
        job_id = await pool.add(flaky)

        async def settled(n: int) -> None:
            await until(lambda: len(calls) == n and pool.statistics().running == 0)

        await settled(1)
        info = await rt.get(job_id)
        assert (info.status, info.attempts, info.error) == (
            JobStatus.WAITING,
            1,
            "RuntimeError: boom 1",
        )
        assert info.run_at == t0 + 1
        await clock.advance(0.999)
        assert len(calls) == 1 and pool.statistics().waiting == 1
        await clock.advance(0.001)
        await settled(2)
        await clock.advance(4.999)
        assert len(calls) == 2
        await clock.advance(0.001)
        await settled(3)
        await clock.advance(5)  # the last delay repeats
        await settled(4)
        info = await rt.wait(job_id, timeout=5)

    assert calls == [(1, t0), (2, t0 + 1), (3, t0 + 6), (4, t0 + 11)]
    assert (info.status, info.result, info.attempts, info.error) == (
        JobStatus.SUCCESS,
        "ok",
        4,
        None,
    )


async def test_every_attempt_is_recorded_and_readable(tmp_path: Path) -> None:
    clock = FakeClock()
    rt = make_rt(tmp_path, clock=clock)

    @rt.task(attempts=3, retry="10s")
    async def flaky(job: JobContext) -> int:
        if job.attempt < 3:
            raise ValueError(f"bad {job.attempt}")
        return job.attempt

    async with rt:
        pool = rt.pool("default")
        t0 = clock.now()
        job_id = await pool.add(flaky)
        for _ in range(2):
            await until(lambda: pool.statistics().running == 0 and pool.statistics().waiting == 1)
            await clock.advance(10)
        await rt.wait(job_id, timeout=5)
        attempts = await rt.attempts(job_id)

    assert [(a.number, a.outcome, a.error) for a in attempts] == [
        (1, AttemptOutcome.ERROR, "ValueError: bad 1"),
        (2, AttemptOutcome.ERROR, "ValueError: bad 2"),
        (3, AttemptOutcome.SUCCESS, None),
    ]
    assert [(a.started_at, a.finished_at) for a in attempts] == [
        (t0, t0),
        (t0 + 10, t0 + 10),
        (t0 + 20, t0 + 20),
    ]
    assert attempts[0].traceback is not None
    assert "ValueError: bad 1" in attempts[0].traceback and "in flaky" in attempts[0].traceback
    assert attempts[2].traceback is None
    # What followed each: a retry by policy after its 10 s, then nothing (it ended the job).
    assert [(a.next, a.next_at) for a in attempts] == [
        ("retry", t0 + 10),
        ("retry", t0 + 20),
        (None, None),
    ]


async def test_a_running_retry_shows_no_error_in_memory_or_in_the_store(tmp_path: Path) -> None:
    # While it waits, a retry shows the error that made it; once its next attempt
    # runs, the error belongs to that attempt's history (``rt.attempts``), as its
    # stored row says.
    gate = Gate()
    rt = make_rt(tmp_path)

    @rt.task(attempts=2, retry="0s")
    async def flaky(job: JobContext) -> None:
        if job.attempt == 1:
            raise ValueError("bad 1")
        await gate()

    async with rt:
        job_id = await rt.pool("default").add(flaky)
        await gate.wait_entered(1)
        info = await rt.get(job_id)
        assert (info.status, info.attempts, info.error) == (JobStatus.RUNNING, 2, None)
        await rt.store.flush()
        stored = {j.id: j for j in await committed_jobs(tmp_path)}[job_id]
        assert (stored.status, stored.error) == (JobStatus.RUNNING, None)
        gate.open()
        await rt.wait(job_id, timeout=5)


async def test_exponential_backoff_on_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    rt = make_rt(tmp_path, clock=clock)
    starts: list[float] = []

    @rt.task(attempts=4, retry={"base": 2, "factor": 3, "cap": 10})
    async def flaky(job: JobContext) -> None:
        starts.append(clock.now())
        if job.attempt < 4:
            raise RuntimeError("again")

    async with rt:
        pool = rt.pool("default")
        t0 = clock.now()
        job_id = await pool.add(flaky)
        for n, delay in ((1, 2), (2, 6), (3, 10)):
            await until(lambda n=n: len(starts) == n and pool.statistics().running == 0)
            await clock.advance(delay - 0.01)
            assert len(starts) == n
            await clock.advance(0.01)
        assert (await rt.wait(job_id, timeout=5)).status is JobStatus.SUCCESS
    assert [s - t0 for s in starts] == [0, 2, 8, 18]


async def test_attempts_spent_fails_with_the_last_error_and_on_error_once(tmp_path: Path) -> None:
    errors: list[tuple[int, str]] = []
    rt = make_rt(tmp_path)

    @rt.task(attempts=3, retry=0, on_error=lambda i, e: errors.append((i, e)))
    async def always(job: JobContext) -> None:
        raise OSError(f"disk {job.attempt}")

    async with rt:
        job_id = await rt.pool("default").add(always)
        info = await rt.wait(job_id, timeout=5)
    assert (info.status, info.attempts, info.max_attempts) == (JobStatus.FAILURE, 3, 3)
    assert info.error == "OSError: disk 3"
    assert errors == [(job_id, "OSError: disk 3")]
    assert [(j.status, j.attempts, j.error) for j in await committed_jobs(tmp_path)] == [
        (JobStatus.FAILURE, 3, "OSError: disk 3")
    ]


async def test_unlimited_attempts(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)

    @rt.task(attempts=-1)
    async def stubborn(job: JobContext) -> int:
        if job.attempt < 7:
            raise RuntimeError("not yet")
        return job.attempt

    async with rt:
        job_id = await rt.pool("default").add(stubborn)
        info = await rt.wait(job_id, timeout=5)
    assert (info.status, info.result, info.max_attempts) == (JobStatus.SUCCESS, 7, None)


async def test_fatal_fails_at_once(tmp_path: Path) -> None:
    errors: list[str] = []
    rt = make_rt(tmp_path)

    @rt.task(attempts=5, on_error=lambda i, e: errors.append(e))
    async def picky(job: JobContext, email: str) -> None:
        raise Fatal(f"invalid address {email!r}")

    async with rt:
        job_id = await rt.pool("default").add(picky, "nobody")
        info = await rt.wait(job_id, timeout=5)
        attempts = await rt.attempts(job_id)
    assert (info.status, info.attempts) == (JobStatus.FAILURE, 1)
    assert info.error == "invalid address 'nobody'"
    assert errors == ["invalid address 'nobody'"]
    assert [a.outcome for a in attempts] == [AttemptOutcome.ERROR]


async def test_retry_without_error_records_no_error_and_fires_no_hook(tmp_path: Path) -> None:
    clock = FakeClock()
    errors: list[str] = []
    rt = make_rt(tmp_path, clock=clock)

    @rt.task(attempts=3, retry="1s", on_error=lambda i, e: errors.append(e))
    async def poll(job: JobContext) -> str:
        if job.attempt == 1:
            raise Retry("not ready", delay=30, record_error=False)
        return "ready"

    async with rt:
        pool = rt.pool("default")
        t0 = clock.now()
        job_id = await pool.add(poll)
        async with rt.subscribe(job_id) as stream:
            kinds = []
            async for ev in stream:
                kinds.append(ev.type)
                if ev.type is EventType.RETRYING:
                    assert ev.data["error"] is None
                    assert ev.data["run_at"] == t0 + 30
                    info = await rt.get(job_id)
                    assert (info.status, info.error, info.run_at) == (
                        JobStatus.WAITING,
                        None,
                        t0 + 30,
                    )
                    await clock.advance(29.9)
                    assert pool.statistics().waiting == 1
                    await clock.advance(0.1)
        info = await rt.get(job_id)
        attempts = await rt.attempts(job_id)
    assert kinds[-1] is EventType.SUCCESS
    assert EventType.RETRYING in kinds
    assert (info.status, info.result, info.attempts, info.error) == (
        JobStatus.SUCCESS,
        "ready",
        2,
        None,
    )
    assert [(a.outcome, a.error) for a in attempts] == [
        (AttemptOutcome.RETRY, None),
        (AttemptOutcome.SUCCESS, None),
    ]
    assert errors == []


async def test_a_retry_without_error_that_spends_the_attempts_keeps_the_last_error(
    tmp_path: Path,
) -> None:
    """The last attempt raises ``Retry(record_error=False)``: the job fails with the
    error an attempt recorded last, as it showed between the attempts, not with
    the retry's own "retry requested"; with none recorded, with the retry's."""
    failed: list[str | None] = []
    rt = make_rt(tmp_path)

    @rt.task(attempts=3, retry=0, on_failed=lambda job, tx: failed.append(job.error))
    async def charge(job: JobContext) -> None:
        if job.attempt == 1:
            raise ConnectionError("card declined by bank")
        raise Retry(record_error=False)

    @rt.task(attempts=2, retry=0)
    async def poll(job: JobContext) -> None:
        raise Retry("not ready", record_error=False)

    async with rt:
        charged = await rt.wait(await rt.add(charge), timeout=5)
        polled = await rt.wait(await rt.add(poll), timeout=5)
        attempts = await rt.attempts(charged.id)
    assert (charged.status, charged.error) == (
        JobStatus.FAILURE,
        "ConnectionError: card declined by bank",
    )
    assert failed == [charged.error]
    assert [(a.outcome, a.error) for a in attempts] == [
        (AttemptOutcome.ERROR, "ConnectionError: card declined by bank"),
        (AttemptOutcome.RETRY, None),
        (AttemptOutcome.RETRY, None),
    ]
    assert (polled.status, polled.error) == (JobStatus.FAILURE, "not ready")


async def test_retry_with_a_delay_overrides_the_policy(tmp_path: Path) -> None:
    clock = FakeClock()
    rt = make_rt(tmp_path, clock=clock)

    @rt.task(attempts=2, retry="1h")
    async def rate_limited(job: JobContext) -> str:
        if job.attempt == 1:
            raise Retry("429", delay=2)
        return "done"

    async with rt:
        pool = rt.pool("default")
        t0 = clock.now()
        job_id = await pool.add(rate_limited)
        await until(lambda: pool.statistics().running == 0 and pool.statistics().waiting == 1)
        info = await rt.get(job_id)
        assert (info.run_at, info.error) == (t0 + 2, "429")
        await clock.advance(2)
        assert (await rt.wait(job_id, timeout=5)).result == "done"


async def test_per_call_options_override_the_task(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    runs: list[int] = []

    @rt.task(attempts=5, retry=0)
    async def failing(job: JobContext) -> None:
        runs.append(job.id)
        raise RuntimeError("no")

    async with rt:
        job_id = await rt.pool("default").add(failing.options(attempts=2, metadata={"u": 1}))
        info = await rt.wait(job_id, timeout=5)
    assert (info.status, info.attempts, info.max_attempts, info.metadata) == (
        JobStatus.FAILURE,
        2,
        2,
        {"u": 1},
    )
    assert runs == [job_id, job_id]


# -- delayed jobs -------------------------------------------------------------------------------


async def test_delay_and_run_at_wait_for_the_clock(tmp_path: Path) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    rt = make_rt(tmp_path, clock=clock)
    ran: list[tuple[str, float]] = []

    @rt.task
    async def tick(job: JobContext, name: str) -> None:
        ran.append((name, clock.now()))

    async with rt:
        pool = rt.pool("default")
        a = await pool.add(tick.options(delay=5), "five")
        b = await pool.add(tick.options(run_at=datetime.fromtimestamp(1_800_000_002, UTC)), "two")
        c = await pool.add(tick.options(delay="1m"), "minute")
        assert [(await rt.get(i)).run_at for i in (a, b, c)] == [
            1_800_000_005.0,
            1_800_000_002.0,
            1_800_000_060.0,
        ]
        assert pool.statistics().waiting == 3
        await clock.advance(1.9)
        assert ran == []
        await clock.advance(0.1)
        await until(lambda: len(ran) == 1)
        await clock.advance(3)
        await until(lambda: len(ran) == 2)
        await clock.advance(54.9)
        assert len(ran) == 2 and pool.statistics().waiting == 1
        await clock.advance(0.1)
        await rt.wait(c, timeout=5)
    assert ran == [("two", 1_800_000_002.0), ("five", 1_800_000_005.0), ("minute", 1_800_000_060.0)]


async def test_a_job_due_after_a_busy_slot_frees_still_starts(tmp_path: Path) -> None:
    """One slot, busy when the first delayed job comes due: that job starts when the
    slot frees, and the next delayed job, due after the pool fell idle, starts when it
    comes due (the runner that went idle leaves the pool's alarm set)."""
    clock = FakeClock(start=1_800_000_000.0)
    rt = make_rt(tmp_path, clock=clock)
    gate = Gate()
    ran: list[tuple[str, float]] = []

    @rt.task
    async def tick(job: JobContext, name: str) -> None:
        if name == "busy":
            await gate()
        ran.append((name, clock.now()))

    async with rt:
        pool = rt.pool("default", concurrency=1)
        busy = await pool.add(tick, "busy")
        await gate.wait_entered(1)
        soon = await pool.add(tick.options(delay=2), "soon")
        later = await pool.add(tick.options(delay=10), "later")
        await clock.advance(2)  # "soon" is due while the slot is busy
        gate.open()
        await rt.wait(busy, timeout=5)
        await rt.wait(soon, timeout=5)
        await clock.advance(8)
        assert (await rt.wait(later, timeout=5)).status is JobStatus.SUCCESS
    assert ran == [
        ("busy", 1_800_000_002.0),
        ("soon", 1_800_000_002.0),
        ("later", 1_800_000_010.0),
    ]


# -- manual retry ---------------------------------------------------------------------------------


async def test_manual_retry_of_a_failed_job(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    broken = True

    @rt.task(attempts=2, retry=0)
    async def fragile(job: JobContext) -> int:
        if broken:
            raise RuntimeError("down")
        return job.attempt

    async with rt:
        job_id = await rt.pool("default").add(fragile)
        failed = await rt.wait(job_id, timeout=5)
        assert (failed.status, failed.attempts) == (JobStatus.FAILURE, 2)
        broken = False
        asked = rt.clock.now()
        again = await rt.retry(job_id)
        assert again.status in (JobStatus.WAITING, JobStatus.RUNNING)
        done = await rt.wait(job_id, timeout=5)
        # The history says who retried what: the policy after attempt 1, an operator after 2.
        [first, second, third] = await rt.attempts(job_id)
        assert (first.next, second.next, third.next) == ("retry", "retried", None)
        assert second.next_at is not None and asked <= second.next_at <= rt.clock.now()
        assert (done.status, done.result, done.attempts, done.error) == (
            JobStatus.SUCCESS,
            3,
            3,
            None,
        )
        with pytest.raises(InvalidTransition) as err:
            await rt.retry(job_id)
        assert (err.value.job_id, err.value.status) == (job_id, "SUCCESS")
    assert [(j.status, j.result) for j in await committed_jobs(tmp_path)] == [
        (JobStatus.SUCCESS, 3)
    ]


async def test_manual_retry_renews_the_attempt_budget(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)

    @rt.task(attempts=2, retry=0)
    async def never(job: JobContext) -> None:
        raise RuntimeError(f"no {job.attempt}")

    async with rt:
        job_id = await rt.pool("default").add(never)
        await rt.wait(job_id, timeout=5)
        await rt.retry(job_id)
        info = await rt.wait(job_id, timeout=5)
    assert (info.status, info.attempts, info.error) == (JobStatus.FAILURE, 4, "RuntimeError: no 4")


async def test_manual_retry_of_a_cancelled_job_and_not_of_a_waiting_one(tmp_path: Path) -> None:
    clock = FakeClock()
    rt = make_rt(tmp_path, clock=clock)

    @rt.task
    async def later(job: JobContext) -> str:
        return "ran"

    async with rt:
        job_id = await rt.pool("default").add(later.options(delay=60))
        with pytest.raises(InvalidTransition):
            await rt.retry(job_id)
        assert (await rt.cancel(job_id)).status is JobStatus.CANCELLED
        await rt.retry(job_id)
        info = await rt.wait(job_id, timeout=5)
        assert (info.status, info.result) == (JobStatus.SUCCESS, "ran")


async def test_manual_retry_while_another_job_holds_the_unique_key(tmp_path: Path) -> None:
    rt = make_rt(tmp_path)
    gate = Gate()

    @rt.task(attempts=1)
    async def sync_user(job: JobContext, fail: bool) -> str:
        if fail:
            raise RuntimeError("sync failed")
        await gate()
        return "synced"

    async with rt:
        pool = rt.pool("default")
        failed = await pool.add(sync_user.options(unique_key="user-1"), True)
        assert (await rt.wait(failed, timeout=5)).status is JobStatus.FAILURE
        live = await pool.add(sync_user.options(unique_key="user-1"), False)
        assert live != failed
        await gate.wait_entered(1)
        with pytest.raises(InvalidTransition) as err:
            await rt.retry(failed)
        assert err.value.job_id == failed
        assert str(live) in str(err.value) and "user-1" in str(err.value)
        # Nothing changed: the failed job stays failed, the live one runs on.
        assert (await rt.get(failed)).status is JobStatus.FAILURE
        gate.open()
        assert (await rt.wait(live, timeout=5)).result == "synced"
        # Once the key is free, the retry is allowed.
        await rt.retry(failed)
        assert (await rt.wait(failed, timeout=5)).status is JobStatus.FAILURE
    assert [(j.id, j.status) for j in await committed_jobs(tmp_path)] == [
        (failed, JobStatus.FAILURE),
        (live, JobStatus.SUCCESS),
    ]


async def test_per_call_retry_policy_survives_a_restart(tmp_path: Path) -> None:
    t0 = 1_800_000_000.0

    def runtime(clock: FakeClock) -> tuple[Any, Any]:
        rt = make_rt(tmp_path, clock=clock)

        @rt.task(attempts=3, retry="1h")
        async def flaky(job: JobContext) -> None:
            raise RuntimeError("down")

        return rt, flaky

    clock = FakeClock(start=t0)
    rt, flaky = runtime(clock)
    async with rt:
        job_id = await rt.pool("default").add(flaky.options(retry="5s"))
        await until(lambda: rt.pool("default").statistics().running == 0)
        await until(lambda: rt.pool("default").statistics().waiting == 1)
        assert (await rt.get(job_id)).run_at == t0 + 5
    clock = FakeClock(start=t0 + 5)
    rt, _ = runtime(clock)
    async with rt:
        await until(lambda: rt.pool("default").statistics().waiting == 1)
        await until(lambda: rt.pool("default").statistics().running == 0)
        info = await rt.get(job_id)
        assert (info.attempts, info.run_at) == (2, t0 + 10)


async def test_a_retry_by_hand_renews_the_jobs_own_attempts(tmp_path: Path) -> None:
    # Before: the retry gave the task's attempts, not the job's: 1 more instead of 3
    # (attempts=3 per call), and unlimited for a job of 2 attempts whose task is
    # unlimited (it then retried for ever).
    rt = make_rt(tmp_path)
    runs: dict[int, int] = {}

    @rt.task(retry="0s")
    async def once(job: JobContext) -> None:
        runs[job.id] = runs.get(job.id, 0) + 1
        raise RuntimeError("no")

    @rt.task(attempts=-1, retry="0s")
    async def endless(job: JobContext) -> None:
        runs[job.id] = runs.get(job.id, 0) + 1
        raise RuntimeError("no")

    async with rt:
        pool = rt.pool("default")
        a = await pool.add(once.options(attempts=3))
        b = await pool.add(endless.options(attempts=2))
        for job_id, budget in ((a, 3), (b, 2)):
            assert (await rt.wait(job_id, timeout=5)).status is JobStatus.FAILURE
            assert runs[job_id] == budget
            for round_ in (2, 3):  # each retry by hand gives the same budget again
                retried = await rt.retry(job_id)
                assert retried.max_attempts == budget * round_
                info = await rt.wait(job_id, timeout=5)
                assert (info.status, info.attempts) == (JobStatus.FAILURE, budget * round_)
                assert runs[job_id] == budget * round_


async def test_the_run_after_a_stop_interrupted_an_attempt_shows_its_success(
    tmp_path: Path,
) -> None:
    # A stop interrupts attempt 2 without charging it: the run after the restart is
    # attempt 2 again. Before, rt.attempts() ended with the interrupted record and
    # never showed the success.
    def make(block: bool) -> Any:
        rt = make_rt(tmp_path, grace=0.1)

        @rt.task(attempts=3, retry="0s")
        async def work(job: JobContext) -> int:
            if job.attempt == 1:
                raise RuntimeError("first")
            if block:
                await asyncio.sleep(100)
            return job.attempt

        return rt, work

    rt, work = make(True)
    async with rt:
        job_id = await rt.pool("default").add(work)
        await until(lambda: rt.live.states[job_id].attempts == 2)
    rt, work = make(False)
    async with rt:
        info = await rt.wait(job_id, timeout=5)
        attempts = await rt.attempts(job_id)
    assert (info.status, info.result, info.attempts) == (JobStatus.SUCCESS, 2, 2)
    assert [(a.number, a.outcome) for a in attempts] == [
        (1, AttemptOutcome.ERROR),
        (2, AttemptOutcome.SUCCESS),
    ]


async def test_a_retry_by_hand_goes_on_with_the_backoff_from_the_total_attempt_number(
    tmp_path: Path,
) -> None:
    # As documented: the attempts are renewed, the backoff is not (attempt 3 waits
    # the third delay, not the first one again).
    t0 = 1_800_000_000.0
    clock = FakeClock(start=t0)
    rt = make_rt(tmp_path, clock=clock)

    @rt.task(attempts=2, retry="10s,20s,40s")
    async def flaky(job: JobContext) -> None:
        raise RuntimeError("down")

    async with rt:
        pool = rt.pool("default")
        job_id = await pool.add(flaky)
        await until(lambda: pool.statistics().waiting == 1 and pool.statistics().running == 0)
        assert (await rt.get(job_id)).run_at == t0 + 10
        await clock.advance(10)
        assert (await rt.wait(job_id, timeout=5)).status is JobStatus.FAILURE
        await rt.retry(job_id)
        for _ in range(500):
            info = await rt.get(job_id)
            if info.attempts == 3 and info.status is JobStatus.WAITING:
                break
            await asyncio.sleep(0.01)
        assert (info.attempts, info.status, info.run_at) == (3, JobStatus.WAITING, t0 + 10 + 40)
