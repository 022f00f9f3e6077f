"""Bulk actions (``rt.bulk``), counting (``rt.count``), the scheduled filter and "run now"."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from core_support import committed_jobs, make_rt, until

from taskrt import (
    Batch,
    FakeClock,
    InvalidOption,
    InvalidTransition,
    JobContext,
    JobNotFound,
    JobStatus,
    Runtime,
)
from taskrt import bulk as bulk_module


def app(tmp_path: Path, **options: object) -> tuple[Runtime, dict[str, object]]:
    rt = make_rt(tmp_path, **options)
    control: dict[str, object] = {"broken": True, "gate": asyncio.Event()}
    rt.pool("p", concurrency=1)

    @rt.task(pool="p")
    async def fragile(job: JobContext, n: int) -> int:
        if control["broken"]:
            raise RuntimeError("down")
        return n

    @rt.task(pool="p")
    async def held(job: JobContext, n: int) -> int:
        gate = control["gate"]
        assert isinstance(gate, asyncio.Event)
        await gate.wait()
        return n

    @rt.task(pool="other")
    async def quick(job: JobContext, n: int) -> int:
        return n

    return rt, control


async def test_retry_every_failure_of_a_task_after_a_dry_run(tmp_path: Path) -> None:
    rt, control = app(tmp_path)
    async with rt:
        failed = [await rt.add("fragile", n) for n in range(5)]
        ok = await rt.add("quick", 9)
        for job_id in [*failed, ok]:
            await rt.wait(job_id, timeout=5)
        preview = await rt.bulk("retry", status="FAILURE", task="fragile", dry_run=True)
        assert (preview.matched, preview.done, preview.dry_run) == (5, 0, True)
        assert [j.status for j in await committed_jobs(tmp_path)].count(JobStatus.FAILURE) == 5
        control["broken"] = False
        done = await rt.bulk("retry", status="FAILURE", task="fragile")
        assert (done.action, done.matched, done.done, done.skipped) == ("retry", 5, 5, 0)
        results = [(await rt.wait(job_id, timeout=5)).result for job_id in failed]
        assert results == list(range(5))
        assert await rt.count(status="SUCCESS") == 6


async def test_cancel_a_pool_running_and_waiting_alike(tmp_path: Path) -> None:
    rt, control = app(tmp_path)
    async with rt:
        jobs = [await rt.add("held", n) for n in range(4)]  # 1 runs, 3 wait
        other = await rt.add("quick", 1)
        await until(lambda: rt.pools["p"].statistics().running == 1)
        result = await rt.bulk("cancel", pool="p")
        gate = control["gate"]
        assert isinstance(gate, asyncio.Event)
        assert (result.matched, result.done, result.skipped) == (4, 4, 0)
        for job_id in jobs:
            assert (await rt.wait(job_id, timeout=5)).status is JobStatus.CANCELLED
        assert (await rt.wait(other, timeout=5)).status is JobStatus.SUCCESS
        # Nothing left to cancel: the finished ones are skipped.
        again = await rt.bulk("cancel", ids=[*jobs, other])
        assert (again.matched, again.done, again.skipped) == (5, 0, 5)


async def test_purge_deletes_finished_jobs_only(tmp_path: Path) -> None:
    clock = FakeClock()
    rt, control = app(tmp_path, clock=clock)
    async with rt:
        old = await rt.add("quick", 1)
        await rt.wait(old, timeout=5)
        waiting = await rt.pool("p").add(rt.resolve("held").options(delay=3600), 2)
        await clock.advance(7200)
        recent = await rt.add("quick", 3)
        await rt.wait(recent, timeout=5)
        result = await rt.bulk("purge", older_than=3600)
        assert (result.matched, result.done, result.skipped) == (2, 1, 1)  # old; the live one stays
        assert {j.id for j in await committed_jobs(tmp_path)} == {waiting, recent}
        one = await rt.bulk("purge", ids=[recent])  # one finished job
        assert one.done == 1
        assert {j.id for j in await committed_jobs(tmp_path)} == {waiting}
        assert not (await rt.get(waiting)).terminal
        gate = control["gate"]
        assert isinstance(gate, asyncio.Event)
        gate.set()


async def test_scheduled_jobs_are_listed_counted_and_run_now(tmp_path: Path) -> None:
    rt, control = app(tmp_path)
    control["broken"] = False
    async with rt:
        later = await rt.pool("other").add(rt.resolve("quick").options(delay=600), 1)
        now = await rt.add("quick", 2)
        await rt.wait(now, timeout=5)
        assert [j.id for j in (await rt.jobs(scheduled=True)).jobs] == [later]
        assert await rt.count(scheduled=True) == 1
        info = await rt.run_now(later)
        assert info.run_at <= rt.clock.now()
        assert (await rt.wait(later, timeout=5)).result == 1
        assert await rt.count(scheduled=True) == 0
        with pytest.raises(InvalidTransition):
            await rt.run_now(later)  # finished: nothing to run


async def test_scheduled_leaves_out_jobs_held_for_their_parents_or_their_batch(
    tmp_path: Path,
) -> None:
    # Held jobs are stored at run_at BLOCKED_AT (year 9999): a time to come to a
    # filter on run_at alone, so `bulk cancel --scheduled` cancelled them.
    rt, control = app(tmp_path)

    @rt.task(pool="other", batch=Batch(max_size=10, max_wait=3600))
    async def digest(job: JobContext, items: list[int]) -> int:
        return sum(items)

    async with rt:
        quick = rt.resolve("quick")
        flow = await rt.chain(rt.resolve("held").s(1), quick.s(), quick.s())
        children = flow.jobs[1:]
        batch = [await rt.pool("other").add(digest.options(batch_key="k"), n) for n in range(2)]
        later = await rt.pool("other").add(quick.options(delay=600), 3)
        reasons = [(await rt.get(i)).waiting_reason for i in (*children, *batch, later)]
        assert reasons == ["blocked", "blocked", "batching", "batching", "scheduled"]
        assert [j.id for j in (await rt.jobs(scheduled=True)).jobs] == [later]
        assert await rt.count(scheduled=True) == 1
        done = await rt.bulk("cancel", scheduled=True)
        assert (done.matched, done.done) == (1, 1)
        assert (await rt.get(later)).status is JobStatus.CANCELLED
        held = [(await rt.get(i)).status for i in (*children, *batch)]
        assert held == [JobStatus.WAITING] * 4
        gate = control["gate"]
        assert isinstance(gate, asyncio.Event)
        gate.set()
        assert (await rt.wait(children[-1], timeout=5)).result == 1


async def test_a_filter_too_large_or_an_unknown_action_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, _ = app(tmp_path)
    monkeypatch.setattr(bulk_module, "BULK_LIMIT", 2)
    async with rt:
        for n in range(3):
            await rt.wait(await rt.add("quick", n), timeout=5)
        with pytest.raises(InvalidOption) as too_many:
            await rt.bulk("purge", status="SUCCESS")
        assert "matches 3 jobs" in str(too_many.value)
        with pytest.raises(InvalidOption) as unknown:
            await rt.bulk("delete", status="SUCCESS")
        assert unknown.value.field == "action"
        assert await rt.count() == 3  # nothing was touched


async def test_retrying_a_failed_chain_in_bulk_counts_every_job_put_back(tmp_path: Path) -> None:
    # The parent's retry puts back the dependents its failure cancelled; retried in
    # the same action, they count as done, not as skipped (they are back, as asked).
    rt = make_rt(tmp_path)
    broken = [True]

    @rt.task
    async def first(n: int) -> int:
        if broken[0]:
            raise RuntimeError("down")
        return n

    @rt.task
    async def then(n: int) -> int:
        return n + 1

    async with rt:
        pool = rt.pool("default")
        parent = await pool.add(first, 1)
        child = await pool.add(then.options(after=[parent]), 2)
        grandchild = await pool.add(then.options(after=[child]), 3)
        for job_id in (parent, child, grandchild):
            await rt.wait(job_id, timeout=5)
        assert (await rt.get(grandchild)).status is JobStatus.CANCELLED
        broken[0] = False
        result = await rt.bulk("retry", ids=[grandchild, child, parent])
        assert (result.matched, result.done, result.skipped) == (3, 3, 0)
        for job_id in (parent, child, grandchild):
            assert (await rt.wait(job_id, timeout=5)).status is JobStatus.SUCCESS


async def test_what_is_no_filter_value_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    # ids="12" was read as jobs 1 and 2, and purged them.
    rt, _ = app(tmp_path)
    async with rt:
        ids = [await rt.add("quick", n) for n in range(3)]
        for job_id in ids:
            await rt.wait(job_id, timeout=5)
        for bad in ("12", 5, [1.9], [True], ["x"], [None], (i for i in [1])):
            with pytest.raises(InvalidOption) as caught:
                await rt.bulk("purge", ids=bad)  # type: ignore[arg-type]
            assert caught.value.field == "ids", bad
        refused: list[tuple[str, dict[str, object]]] = [
            ("dry_run", {"ids": [1], "dry_run": "no"}),
            ("scheduled", {"scheduled": "no", "older_than": 0}),
            ("status", {"status": 5}),
            ("status", {"status": {"SUCCESS": 1}}),
            ("older_than", {"older_than": -1}),
        ]
        for field, kwargs in refused:
            with pytest.raises(InvalidOption) as caught:
                await rt.bulk("purge", **kwargs)  # type: ignore[arg-type]
            assert caught.value.field == field, kwargs
        assert await rt.count() == 3
        for cursor in ([1], True, "-5", "\u0663"):
            with pytest.raises(InvalidOption, match="cursor"):
                await rt.jobs(cursor=cursor)  # type: ignore[arg-type]
        assert [j.id for j in (await rt.jobs(cursor="9" * 30)).jobs] == ids[::-1]
        for statuses in (None, 5):
            with pytest.raises(InvalidOption, match="statuses"):
                await rt.cleanup(statuses=statuses)  # type: ignore[arg-type]
        assert await rt.cleanup(older_than=0, statuses="SUCCESS") == 3
        with pytest.raises(JobNotFound):
            await rt.workflow(2**63)
