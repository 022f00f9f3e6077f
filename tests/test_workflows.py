"""Workflows: jobs that wait for jobs, chains, groups with a callback (docs/workflows.md).

Each behaviour runs on a real SQLite file and on PostgreSQL, where one owner
runs the jobs and where every process is a node, through the Python API.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pg_server
import pytest

from taskrt import (
    DuplicateJob,
    Event,
    EventType,
    InvalidOption,
    InvalidTransition,
    JobContext,
    JobInfo,
    JobNotFound,
    JobStatus,
    Runtime,
    ValidationError,
    WorkflowNotFound,
)
from taskrt.models import BLOCKED_AT


def runtime(target: tuple[str, dict[str, Any]], **options: Any) -> Runtime:
    db, base = target
    return Runtime(db, **{**base, **options})


class Gate:
    """Jobs that wait until the test opens their gate."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started: list[Any] = []


# -- after=[ids] ---------------------------------------------------------------------


async def test_a_dependent_waits_blocked_until_its_parent_succeeds(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt = runtime(target)
    gate = Gate()
    order: list[str] = []

    @rt.task
    async def first() -> str:
        gate.started.append("first")
        await gate.open.wait()
        order.append("first")
        return "one"

    @rt.task
    async def second(word: str) -> str:
        order.append("second")
        return word + "!"

    async with rt:
        pool = rt.pool("default")
        a = await pool.add(first)
        b = await pool.add(second.options(after=[a]), "b")
        while not gate.started:
            await asyncio.sleep(0.01)
        info = await rt.get(b)
        assert (info.status, info.waiting_reason) == (JobStatus.WAITING, "blocked")
        await asyncio.sleep(0.1)
        assert order == []  # the parent runs; the dependent does not start
        gate.open.set()
        done = await rt.wait(b, timeout=10)
        assert (done.status, done.result, done.args) == (JobStatus.SUCCESS, "b!", ("b",))
        assert order == ["first", "second"]
        assert done.waiting_reason is None and done.run_at < BLOCKED_AT


async def test_a_parent_that_already_finished_counts_at_once(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt = runtime(target)

    @rt.task
    async def value(n: int) -> int:
        return n

    async with rt:
        pool = rt.pool("default")
        a = await pool.add(value, 1)
        assert (await rt.wait(a, timeout=10)).status is JobStatus.SUCCESS
        b = await pool.add(value.options(after=[a]), 2)
        assert (await rt.wait(b, timeout=10)).result == 2


async def test_a_failed_parent_cancels_its_dependents_and_theirs(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt = runtime(target)
    ran: list[int] = []

    @rt.task
    async def boom() -> None:
        raise ValueError("no")

    @rt.task
    async def child(job: JobContext) -> None:
        ran.append(job.id)

    async with rt:
        pool = rt.pool("default")
        a = await pool.add(boom)
        b = await pool.add(child.options(after=[a]))
        c = await pool.add(child.options(after=[b]))
        anyway = await pool.add(child.options(after=[a], on_parent_failure="run"))
        info_b = await rt.wait(b, timeout=10)
        info_c = await rt.wait(c, timeout=10)
        assert (info_b.status, info_b.error) == (JobStatus.CANCELLED, f"parent job {a} failed")
        assert (info_c.status, info_c.error) == (
            JobStatus.CANCELLED,
            f"parent job {b} was cancelled",
        )
        assert (await rt.wait(anyway, timeout=10)).status is JobStatus.SUCCESS
        assert ran == [anyway]
        stats = await rt.stats()
        assert stats.counts.get(JobStatus.CANCELLED) == 2
        assert stats.counts.get(JobStatus.WAITING, 0) == 0


async def test_a_dependent_that_runs_anyway_starts_as_its_last_parent_ends(
    target: tuple[str, dict[str, Any]],
) -> None:
    """Workflows note 5: a failure is counted down like a success, so a dependent that
    runs anyway is released with its last parent's end, whichever ended last (not at
    the next sweep, 5 s on)."""
    rt = runtime(target)
    gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    @rt.task(attempts=1)
    async def parent(name: str, fails: bool) -> str:
        await gates[name].wait()
        if fails:
            raise ValueError(name)
        return name

    @rt.task
    async def anyway(given: Any) -> Any:
        return given

    async with rt:
        pool = rt.pool("default")
        flow = await rt.group([parent.s("ok", False), parent.s("bad", True)]).then(
            anyway.s().options(on_parent_failure="run")
        )
        a = await pool.add(parent, "bad too", True)
        b = await pool.add(parent, "ok too", False)
        after = await pool.add(anyway.options(after=[a, b], on_parent_failure="run"), "x")
        # The success ends first, then the failure; then the other way round.
        for first, second, child in (flow.jobs, (a, b, after)):
            gates[(await rt.get(first)).args[0]].set()
            await rt.wait(first, timeout=10)
            gates[(await rt.get(second)).args[0]].set()
            done = await rt.wait(child, timeout=2)
            assert done.status is JobStatus.SUCCESS, done
        assert (await rt.get(flow.jobs[2])).result == ["ok", None]
        assert (await rt.get(after)).result == "x"


async def test_unknown_parents_are_refused_at_add(target: tuple[str, dict[str, Any]]) -> None:
    rt = runtime(target)

    @rt.task
    async def noop() -> None: ...

    async with rt:
        pool = rt.pool("default")
        a = await pool.add(noop)
        with pytest.raises(JobNotFound) as caught:
            await pool.add(noop.options(after=[a, 999_999]))
        assert caught.value.job_id == 999_999
        page = await rt.jobs()
        assert [j.id for j in page.jobs] == [a]  # nothing of the refused add was stored


async def test_a_step_whose_unique_key_is_held_fails_the_whole_workflow(
    target: tuple[str, dict[str, Any]],
) -> None:
    # A step was replaced by the key's holder: the chain ran its second step on an
    # unrelated job's result, its first never ran.
    rt = runtime(target)

    @rt.task
    async def step(x: str = "") -> str:
        return f"step({x})"

    @rt.task
    async def other() -> str:
        return "other"

    rt.pool("default").pause()
    async with rt:
        held = await rt.add(other.options(unique_key="held"))
        with pytest.raises(DuplicateJob) as caught:
            await rt.chain(step.s("a").options(unique_key="held"), step.s())
        assert caught.value.existing_id == held
        with pytest.raises(InvalidOption, match="unique_key"):
            await rt.chain(step.s().options(unique_key="k"), step.s().options(unique_key="k"))
        with pytest.raises(InvalidOption, match="unique_key"):
            await rt.group([step.s().options(unique_key="g"), step.s().options(unique_key="g")])
        assert [j.id for j in (await rt.jobs()).jobs] == [held]  # nothing else was stored
        flow = await rt.chain(step.s("b").options(unique_key="free"), step.s())
        assert len(flow.jobs) == 2 and held not in flow.jobs


def test_bad_dependency_options_are_refused_naming_the_field(tmp_path: Path) -> None:
    rt = Runtime(str(tmp_path / "app.db"))

    @rt.task
    async def noop() -> None: ...

    for value in ([], "1", [0], [1.5], [True], {"a": 1}):
        with pytest.raises(InvalidOption) as caught:
            noop.options(after=value)
        assert caught.value.field == "after", value
    with pytest.raises(InvalidOption) as caught:
        noop.options(after=[1], on_parent_failure="ignore")
    assert caught.value.field == "on_parent_failure"
    assert noop.options(after=7).opts.after == (7,)
    assert noop.options(after=[3, 1, 3]).opts.after == (3, 1)


async def test_a_blocked_job_can_be_cancelled_but_not_run_now(tmp_path: Path) -> None:
    rt = Runtime(str(tmp_path / "app.db"))
    gate = Gate()

    @rt.task
    async def slow() -> None:
        await gate.open.wait()

    @rt.task
    async def noop() -> None: ...

    async with rt:
        pool = rt.pool("default")
        a = await pool.add(slow)
        b = await pool.add(noop.options(after=[a]))
        with pytest.raises(InvalidTransition):
            await rt.run_now(b)
        assert (await rt.get(b)).waiting_reason == "blocked"
        assert (await rt.cancel(b)).status is JobStatus.CANCELLED
        gate.open.set()
        assert (await rt.wait(a, timeout=10)).status is JobStatus.SUCCESS
        await asyncio.sleep(0.1)
        assert (await rt.get(b)).status is JobStatus.CANCELLED


# -- a manual retry of a dependent ----------------------------------------------------


async def test_retrying_a_failed_chain_step_resumes_the_steps_it_cancelled(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt = runtime(target)
    broken = {"fetch": True}

    @rt.task
    async def fetch(url: str) -> str:
        if broken["fetch"]:
            raise ConnectionError("down")
        return f"<{url}>"

    @rt.task
    async def parse(html: str) -> int:
        return len(html)

    @rt.task
    async def store(size: int, bucket: str) -> str:
        return f"{bucket}/{size}"

    async with rt:
        flow = await rt.chain(fetch.s("x.org"), parse.s(), store.s(bucket="b"))
        first, second, third = flow.jobs
        assert (await rt.wait(third, timeout=10)).status is JobStatus.CANCELLED
        with pytest.raises(InvalidTransition, match=f"parent job {first} failed: retry that"):
            await rt.retry(second)
        assert (await rt.get(second)).status is JobStatus.CANCELLED  # refused: unchanged
        broken["fetch"] = False
        await rt.retry(first)
        done = await rt.wait(third, timeout=10)
        assert (done.status, done.result, done.args) == (JobStatus.SUCCESS, "b/7", (7,))
        parsed = await rt.get(second)
        assert (parsed.status, parsed.args, parsed.error) == (JobStatus.SUCCESS, ("<x.org>",), None)
        assert (await rt.workflow(flow.id)).status is JobStatus.SUCCESS


async def test_a_dependent_cancelled_by_hand_stays_cancelled_when_its_parent_is_retried(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt = runtime(target)
    gate = Gate()

    @rt.task
    async def parent() -> None:
        gate.started.append(1)
        await gate.open.wait()
        raise ValueError("no")

    @rt.task
    async def child() -> str:
        return "ran"

    async with rt:
        pool = rt.pool("default")
        a = await pool.add(parent)
        by_hand = await pool.add(child.options(after=[a]))
        by_failure = await pool.add(child.options(after=[a]))
        await rt.cancel(by_hand)
        gate.open.set()
        assert (await rt.wait(by_failure, timeout=10)).error == f"parent job {a} failed"
        gate.open.clear()
        await rt.retry(a)
        assert (await rt.get(by_failure)).waiting_reason == "blocked"
        with pytest.raises(TimeoutError):
            await rt.wait(by_failure, timeout=0.2)  # it waits for its parent again
        assert (await rt.get(by_hand)).status is JobStatus.CANCELLED
        # The parent fails again: it is cancelled again; retried by hand, it runs.
        gate.open.set()
        assert (await rt.wait(by_failure, timeout=10)).status is JobStatus.CANCELLED
        assert (await rt.get(a)).status is JobStatus.FAILURE
        with pytest.raises(InvalidTransition, match="retry that job first"):
            await rt.retry(by_hand)
        assert (await rt.get(by_hand)).status is JobStatus.CANCELLED


async def test_a_callback_resumes_once_both_failed_members_are_retried_in_either_order(
    target: tuple[str, dict[str, Any]],
) -> None:
    """Both members of a group failed: the first failure cancelled the callback. It
    stays cancelled while the other member is still FAILURE, and waits again once
    both were retried, whichever was first; a bulk retry of the failures too."""
    rt = runtime(target)
    broken = {"on": True}
    second = asyncio.Event()

    @rt.task(attempts=1)
    async def member(n: int) -> int:
        if n == 2:
            await second.wait()  # fails after the first member
        if broken["on"]:
            raise ValueError(f"m{n}")
        return n

    @rt.task
    async def total(results: list[int]) -> int:
        return sum(results)

    async def both_failed() -> tuple[int, int, int]:
        broken["on"] = True
        second.clear()
        flow = await rt.group([member.s(1), member.s(2)]).then(total.s())
        one, two, callback = flow.jobs
        cancelled = await rt.wait(callback, timeout=10)
        assert (cancelled.status, cancelled.error) == (
            JobStatus.CANCELLED,
            f"parent job {one} failed",
        )
        second.set()
        assert (await rt.wait(two, timeout=10)).status is JobStatus.FAILURE
        broken["on"] = False
        return one, two, callback

    async with rt:
        for order in ("the one that cancelled it first", "the other first"):
            one, two, callback = await both_failed()
            first, then = (one, two) if order.startswith("the one") else (two, one)
            await rt.retry(first)
            if first == one:  # the other still holds it back
                assert (await rt.wait(first, timeout=10)).status is JobStatus.SUCCESS
                assert (await rt.get(callback)).status is JobStatus.CANCELLED, order
            await rt.retry(then)
            done = await rt.wait(callback, timeout=10)
            assert (done.status, done.result) == (JobStatus.SUCCESS, 3), order
            assert (await rt.workflow(one)).status is JobStatus.SUCCESS, order

        one, two, callback = await both_failed()
        result = await rt.bulk("retry", ids=[one, two, callback], status="FAILURE")
        assert (result.matched, result.done) == (2, 2)  # oldest first: the one, then the other
        done = await rt.wait(callback, timeout=10)
        assert (done.status, done.result) == (JobStatus.SUCCESS, 3)
        assert (await rt.workflow(one)).status is JobStatus.SUCCESS


async def test_a_retried_dependent_cancelled_while_it_waited_waits_again(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt = runtime(target)
    gate = Gate()

    @rt.task
    async def slow(n: int) -> int:
        gate.started.append(n)
        await gate.open.wait()
        return n

    @rt.task
    async def total(results: list[int], title: str) -> str:
        return f"{title}={sum(results)}"

    async with rt:
        flow = await rt.group([slow.s(1), slow.s(2)]).then(total.s(title="t"))
        callback = flow.jobs[-1]
        assert (await rt.cancel(callback)).status is JobStatus.CANCELLED
        while not gate.started:
            await asyncio.sleep(0.01)
        async with rt.subscribe(task="total") as stream:
            again = await rt.retry(callback)
            event = await asyncio.wait_for(anext(stream), 10)
        assert (again.status, again.waiting_reason) == (JobStatus.WAITING, "blocked")
        assert (event.job_id, event.type, event.seq) == (callback, EventType.RETRYING, again.seq)
        assert event.data["after"] == list(flow.jobs[:-1])
        await asyncio.sleep(0.1)
        assert (await rt.get(callback)).waiting_reason == "blocked"  # its parents still run
        gate.open.set()
        done = await rt.wait(callback, timeout=10)
        assert (done.status, done.result, done.args) == (JobStatus.SUCCESS, "t=3", ([1, 2],))
        with pytest.raises(InvalidTransition):
            await rt.retry(callback)  # a success is not retried


async def test_two_retries_at_once_run_a_job_once(target: tuple[str, dict[str, Any]]) -> None:
    rt = runtime(target)
    gate = Gate()
    runs: list[tuple[int, Any]] = []

    @rt.task
    async def value() -> int:
        await gate.open.wait()
        return 5

    @rt.task
    async def once(job: JobContext, n: int = 0) -> int:
        runs.append((job.id, n))
        return n

    async with rt:
        pool = rt.pool("default")
        parent = await pool.add(value)
        child = await pool.add(once.options(after=[parent]))  # no input: n stays 0
        chained = (await rt.chain(value.s(), once.s())).jobs[1]  # n: the parent's 5
        pool.pause()
        plain = await pool.add(once, 1)
        for job_id in (plain, child, chained):
            assert (await rt.cancel(job_id)).status is JobStatus.CANCELLED
        pool.resume()
        gate.open.set()
        for job_id in (plain, child, chained):
            outcomes = await asyncio.gather(
                rt.retry(job_id), rt.retry(job_id), return_exceptions=True
            )
            assert sum(isinstance(o, InvalidTransition) for o in outcomes) == 1, outcomes
            assert (await rt.wait(job_id, timeout=10)).status is JobStatus.SUCCESS
        await asyncio.sleep(0.1)  # a second run would have begun
        assert sorted(runs) == sorted([(plain, 1), (child, 0), (chained, 5)])


async def test_a_retried_dependent_that_ran_keeps_its_arguments(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt = runtime(target)
    calls: list[tuple[Any, ...]] = []

    @rt.task
    async def value() -> int:
        return 5

    @rt.task
    async def flaky(n: int, label: str) -> str:
        calls.append((n, label))
        if len(calls) == 1:
            raise ValueError("first time")
        return f"{label}{n}"

    async with rt:
        flow = await rt.chain(value.s(), flaky.s(label="x"))
        child = flow.jobs[1]
        assert (await rt.wait(child, timeout=10)).status is JobStatus.FAILURE
        await rt.retry(child)
        done = await rt.wait(child, timeout=10)
        assert (done.status, done.result) == (JobStatus.SUCCESS, "x5")
        assert calls == [(5, "x"), (5, "x")]  # its parent's result once, not twice


# -- chains and groups -----------------------------------------------------------------


async def test_a_chain_passes_each_result_to_the_next(target: tuple[str, dict[str, Any]]) -> None:
    rt = runtime(target)

    @rt.task
    async def fetch(url: str) -> str:
        return f"<{url}>"

    @rt.task
    async def parse(html: str) -> dict[str, Any]:
        return {"html": html, "size": len(html)}

    @rt.task
    async def store(doc: dict[str, Any], bucket: str) -> str:
        return f"{bucket}/{doc['size']}"

    async with rt:
        flow = await rt.chain(fetch.s("x.org"), parse.s(), store.s(bucket="b"))
        assert len(flow.jobs) == 3 and flow.id == flow.jobs[0]
        last = await rt.wait(flow.jobs[-1], timeout=10)
        assert (last.status, last.result) == (JobStatus.SUCCESS, "b/7")
        assert last.args == ({"html": "<x.org>", "size": 7},)
        info = await rt.workflow(flow.id)
        assert info.status is JobStatus.SUCCESS and info.progress == 1.0
        assert [j.id for j in info.jobs] == list(flow.jobs)
        assert all(j.workflow == flow.id for j in info.jobs)
        assert sorted(info.edges) == [(flow.jobs[1], flow.jobs[0]), (flow.jobs[2], flow.jobs[1])]


async def test_a_group_callback_gets_every_result_in_order(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt = runtime(target)

    @rt.task
    async def square(n: int) -> int:
        await asyncio.sleep(0.001 * (n % 3))  # members end out of order
        return n * n

    @rt.task
    async def total(results: list[int], title: str) -> dict[str, Any]:
        return {"title": title, "sum": sum(results), "first": results[:3]}

    async with rt:
        rt.pool("default").set_concurrency(8)
        flow = await rt.group([square.s(n).options(priority=n % 2) for n in range(1000)]).then(
            total.s(title="squares")
        )
        assert len(flow.jobs) == 1001
        done = await rt.wait(flow.jobs[-1], timeout=60)
        assert done.status is JobStatus.SUCCESS
        assert done.result == {
            "title": "squares",
            "sum": sum(n * n for n in range(1000)),
            "first": [0, 1, 4],
        }
        info = await rt.workflow(flow.id)
        assert info.status is JobStatus.SUCCESS
        assert info.counts == {"SUCCESS": 1001}
        assert len(info.edges) == 1000


async def test_a_callbacks_own_parents_outside_the_workflow_give_it_nothing(
    target: tuple[str, dict[str, Any]],
) -> None:
    """A group's callback that also waits for a job outside the workflow (its own
    ``after``). Before, the outside job's result was appended to the group's list,
    and ``edges`` held the outside dependency too. A chain step's input was right."""
    rt = runtime(target)

    @rt.task
    async def value(v: str) -> str:
        return v

    @rt.task
    async def album(photos: list[str], title: str) -> dict[str, Any]:
        return {"title": title, "photos": photos}

    @rt.task
    async def parse(html: str) -> str:
        return f"parsed({html})"

    async with rt:
        outside = await rt.add(value, "OUTSIDE")
        await rt.wait(outside, timeout=5)
        group = await rt.group([value.s("a"), value.s("b")]).then(
            album.s(title="T").options(after=[outside])
        )
        done = await rt.wait(group.jobs[-1], timeout=5)
        assert done.result == {"title": "T", "photos": ["a", "b"]}
        info = await rt.workflow(group.id)
        callback, members = group.jobs[-1], group.jobs[:-1]
        assert sorted(info.edges) == [(callback, m) for m in members]
        chain = await rt.chain(value.s("html"), parse.s().options(after=[outside]))
        assert (await rt.wait(chain.jobs[-1], timeout=5)).result == "parsed(html)"


async def test_a_group_without_callback_and_a_failing_member(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt = runtime(target)

    @rt.task
    async def maybe(n: int) -> int:
        if n == 2:
            raise ValueError("two")
        return n

    @rt.task
    async def after_all(results: list[int]) -> None: ...

    async with rt:
        plain = await rt.group([maybe.s(1), maybe.s(3)])
        for job_id in plain.jobs:
            await rt.wait(job_id, timeout=10)
        assert (await rt.workflow(plain.id)).status is JobStatus.SUCCESS
        flow = await rt.group([maybe.s(1), maybe.s(2)]).then(after_all.s())
        callback = await rt.wait(flow.jobs[-1], timeout=10)
        assert (callback.status, callback.error) == (
            JobStatus.CANCELLED,
            f"parent job {flow.jobs[1]} failed",
        )
        info = await rt.workflow(flow.id)
        assert info.status is JobStatus.FAILURE
        assert info.counts == {"SUCCESS": 1, "FAILURE": 1, "CANCELLED": 1}


async def test_cancel_a_whole_workflow(target: tuple[str, dict[str, Any]]) -> None:
    rt = runtime(target)
    gate = Gate()

    @rt.task
    async def slow(job: JobContext, before: Any = None) -> None:
        gate.started.append(job.id)
        await gate.open.wait()

    async with rt:
        flow = await rt.chain(slow.s(), slow.s(), slow.s())
        while not gate.started:
            await asyncio.sleep(0.01)
        info = await rt.cancel_workflow(flow.id)
        for job_id in flow.jobs:
            await rt.wait(job_id, timeout=10)
        info = await rt.workflow(flow.id)
        assert info.status is JobStatus.CANCELLED
        assert info.counts == {"CANCELLED": 3}
        assert gate.started == [flow.id]  # the others never started


async def test_a_bad_workflow_is_refused_whole(tmp_path: Path) -> None:
    rt = Runtime(str(tmp_path / "app.db"))

    @rt.task
    async def one(n: int) -> int:
        return n

    async with rt:
        with pytest.raises(InvalidOption):
            await rt.chain()
        with pytest.raises(InvalidOption):
            await rt.group(one.s(1))  # type: ignore[arg-type]
        with pytest.raises(InvalidOption):
            await rt.chain(one.s(1), "one")  # type: ignore[arg-type]
        with pytest.raises(JobNotFound):
            await rt.chain(one.s(1), one.s().options(after=[12345]))
        assert (await rt.jobs()).jobs == []
        with pytest.raises(JobNotFound):
            await rt.workflow(1)


# -- following one -------------------------------------------------------------------


async def test_subscribe_to_a_workflow(tmp_path: Path) -> None:
    rt = Runtime(str(tmp_path / "app.db"))
    gate = Gate()

    @rt.task
    async def step(job: JobContext, n: int = 0) -> int:
        await gate.open.wait()
        await job.progress(1, 2, "half")
        return n + 1

    async with rt:
        flow = await rt.chain(step.s(0), step.s())
        events: list[Event] = []

        async def follow() -> None:
            async for event in rt.subscribe_workflow(flow.id):
                events.append(event)

        follower = asyncio.create_task(follow())
        while not events:
            await asyncio.sleep(0.01)
        gate.open.set()
        await asyncio.wait_for(follower, 10)
        first = events[0]
        assert first.type is EventType.SNAPSHOT
        assert [j["id"] for j in first.data["workflow"]["jobs"]] == list(flow.jobs)
        kinds = [(e.job_id, e.type) for e in events[1:] if e.type is not EventType.PROGRESS]
        assert (flow.jobs[0], EventType.SUCCESS) in kinds
        assert kinds[-1] == (flow.jobs[1], EventType.SUCCESS)
        assert (await rt.get(flow.jobs[1])).result == 2


async def test_a_workflow_stream_ends_when_its_steps_are_cancelled_while_it_reads_them(
    tmp_path: Path,
) -> None:
    """The first step fails while the stream reads the workflow's rows: the store
    cancels the steps after it, which the rows read still show waiting. Their events
    follow the snapshot, once each and in order, and the stream ends; the events of
    other jobs meanwhile are not its own."""
    rt = Runtime(str(tmp_path / "app.db"))
    gate = Gate()

    @rt.task(attempts=1)
    async def first() -> None:
        gate.started.append(1)
        await gate.open.wait()
        raise ValueError("no")

    @rt.task
    async def step(given: Any) -> None: ...

    @rt.task
    async def other() -> None: ...

    async with rt:
        flow = await rt.chain(first.s(), step.s(), step.s())
        while not gate.started:
            await asyncio.sleep(0.01)
        read = rt.store.workflow

        async def workflow(workflow_id: int) -> Any:
            rows = await read(workflow_id)
            # Meanwhile: the first step fails, the store cancels the rest, and another
            # job runs.
            gate.open.set()
            await rt.wait(flow.jobs[-1], timeout=10)
            await rt.wait(await rt.pool("default").add(other), timeout=10)
            return rows

        rt.store.workflow = workflow  # type: ignore[method-assign]
        events: list[Event] = []

        async def follow() -> None:
            async for event in rt.subscribe_workflow(flow.id):
                events.append(event)

        await asyncio.wait_for(follow(), 10)
        snapshot = events[0].data["workflow"]
        assert [j["status"] for j in snapshot["jobs"]] == ["FAILURE", "WAITING", "WAITING"]
        assert [(e.job_id, e.type) for e in events[1:]] == [
            (flow.jobs[1], EventType.CANCELLED),
            (flow.jobs[2], EventType.CANCELLED),
        ]
        assert (await rt.workflow(flow.id)).status is JobStatus.FAILURE


# -- restarts and retention --------------------------------------------------------------


async def test_a_chain_resumes_after_a_crash_between_a_parent_and_its_release(
    target: tuple[str, dict[str, Any]],
) -> None:
    """The parent's end is committed, the settle that would release its dependent never
    runs (the process died in between): the next start's sweep releases it."""
    ran: list[str] = []

    def build() -> tuple[Runtime, Any, Any]:
        rt = runtime(target)

        @rt.task
        async def one() -> str:
            ran.append("one")
            return "1"

        @rt.task
        async def two(x: str) -> str:
            ran.append("two")
            return x + "2"

        return rt, one, two

    rt, one, two = build()
    async with rt:
        rt.transitions.on_end = None  # no parent's end is settled...
        rt.workflows.dependents = lambda child, parents: None  # type: ignore[method-assign]
        await rt.workflows.stop()  # ...and no sweep runs: as if it died
        flow = await rt.chain(one.s(), two.s())
        assert (await rt.wait(flow.jobs[0], timeout=10)).status is JobStatus.SUCCESS
        await asyncio.sleep(0.1)
        assert (await rt.get(flow.jobs[1])).waiting_reason == "blocked"
    rt, _, _ = build()
    async with rt:
        done = await rt.wait(flow.jobs[1], timeout=10)
        assert (done.status, done.result) == (JobStatus.SUCCESS, "12")
    assert ran == ["one", "two"]


async def test_a_group_resumes_after_a_restart(target: tuple[str, dict[str, Any]]) -> None:
    def build() -> tuple[Runtime, Any, Any]:
        rt = runtime(target)

        @rt.task(pool="members")
        async def member(n: int) -> int:
            return n * 10

        @rt.task
        async def collect(results: list[int]) -> list[int]:
            return results

        return rt, member, collect

    rt, member, collect = build()
    async with rt:
        members = rt.pool("members", concurrency=1)
        members.pause()
        flow = await rt.group([member.s(n) for n in range(4)]).then(collect.s())
        assert (await rt.get(flow.jobs[-1])).waiting_reason == "blocked"
    rt, _, _ = build()
    async with rt:
        done = await rt.wait(flow.jobs[-1], timeout=20)
        assert (done.status, done.result) == (JobStatus.SUCCESS, [0, 10, 20, 30])


async def test_retention_keeps_a_parent_a_blocked_job_waits_for(tmp_path: Path) -> None:
    path = str(tmp_path / "app.db")
    rt = Runtime(path)
    gate = Gate()

    @rt.task
    async def quick() -> int:
        return 1

    @rt.task
    async def slow() -> int:
        await gate.open.wait()
        return 2

    @rt.task
    async def both() -> None: ...

    async with rt:
        pool = rt.pool("default")
        a = await pool.add(quick)
        b = await pool.add(slow)
        c = await pool.add(both.options(after=[a, b]))
        assert (await rt.wait(a, timeout=10)).status is JobStatus.SUCCESS
        await rt.workflows.settle([a])
        # a finished, but c waits for it: neither cleanup nor purge deletes it.
        assert await rt.store.cleanup(1e12, [JobStatus.SUCCESS]) == 0
        assert await rt.store.purge([a]) == 0
        gate.open.set()
        assert (await rt.wait(c, timeout=10)).status is JobStatus.SUCCESS
        assert await rt.store.purge([a, b, c]) == 3
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM job_deps").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM job_waits").fetchone()[0] == 0


async def test_retention_deletes_the_parents_of_a_dependent_that_ended_while_it_waited(
    target: tuple[str, dict[str, Any]],
) -> None:
    """A dependent cancelled while it waited, or failed at its deadline, waits no
    more: its finished parents go by their own status and age. Its wait stayed open,
    so they were kept until every other parent ended (a day here)."""
    rt = runtime(target)

    @rt.task
    async def quick() -> int:
        return 1

    async with rt:
        pool = rt.pool("default")
        done = await pool.add(quick)
        assert (await rt.wait(done, timeout=10)).status is JobStatus.SUCCESS
        tomorrow = await pool.add(quick.options(delay=86_400))
        cancelled = await pool.add(quick.options(after=[done, tomorrow]))
        done_too = await pool.add(quick)
        assert (await rt.wait(done_too, timeout=10)).status is JobStatus.SUCCESS
        expired = await pool.add(
            quick.options(after=[done_too, tomorrow], deadline=time.time() + 0.3)
        )
        await rt.cancel(cancelled)
        assert (await rt.wait(expired, timeout=10)).status is JobStatus.FAILURE
        await rt.store.flush()  # the ends committed (an owner announces them first)
        assert await rt.store.cleanup(1e12, [JobStatus.SUCCESS]) == 2
        for gone in (done, done_too):
            with pytest.raises(JobNotFound):
                await rt.get(gone)
        # The one still waiting for a parent keeps it.
        blocked = await pool.add(quick.options(after=[tomorrow]))
        kept = await pool.add(quick)
        assert (await rt.wait(kept, timeout=10)).status is JobStatus.SUCCESS
        waits = await pool.add(quick.options(after=[kept, tomorrow]))
        assert await rt.store.cleanup(1e12, [JobStatus.SUCCESS]) == 0
        assert (await rt.get(kept)).status is JobStatus.SUCCESS
        assert (await rt.get(waits)).status is JobStatus.WAITING
        assert (await rt.get(blocked)).status is JobStatus.WAITING


async def test_retention_keeps_the_parents_a_retry_resumes_a_cancelled_dependent_with(
    target: tuple[str, dict[str, Any]],
) -> None:
    """A group's callback that a member's failure cancelled waits again when that
    member is retried, with every member's result: the members that succeeded stay
    while the failed one is there to retry. Once it is deleted, they go too."""
    rt = runtime(target)
    failing: set[int] = set()

    @rt.task(attempts=1)
    async def member(n: int) -> int:
        if n in failing:
            failing.discard(n)
            raise ValueError(f"m{n}")
        return n

    @rt.task
    async def total(results: list[int]) -> int:
        return sum(results)

    async def cancelled_callback(n: int) -> tuple[int, int, int]:
        failing.add(n)
        flow = await rt.group([member.s(n), member.s(10)]).then(total.s())
        failed, done, callback = flow.jobs
        assert (await rt.wait(callback, timeout=10)).error == f"parent job {failed} failed"
        assert (await rt.wait(done, timeout=10)).status is JobStatus.SUCCESS
        await rt.store.flush()  # the ends committed (an owner announces them first)
        return failed, done, callback

    async with rt:
        failed, done, callback = await cancelled_callback(1)
        assert await rt.store.cleanup(1e12, [JobStatus.SUCCESS]) == 0
        assert await rt.store.purge([done]) == 0
        await rt.retry(failed)
        resumed = await rt.wait(callback, timeout=10)
        assert (resumed.status, resumed.result) == (JobStatus.SUCCESS, 11)
        await rt.store.flush()
        assert await rt.store.cleanup(1e12, [JobStatus.SUCCESS]) == 3  # free again

        failed, done, callback = await cancelled_callback(2)
        assert await rt.store.cleanup(1e12, [JobStatus.FAILURE]) == 1
        assert await rt.store.cleanup(1e12, [JobStatus.SUCCESS]) == 1
        with pytest.raises(JobNotFound):
            await rt.get(done)
        assert (await rt.get(callback)).status is JobStatus.CANCELLED


async def test_blocked_jobs_beyond_a_small_window(tmp_path: Path) -> None:
    """With 5 waiting jobs a pool in memory, 40 dependents (most only in the store)
    are each released when their parent ends, in order of their parents."""
    rt = Runtime(str(tmp_path / "app.db"), window=5)
    done: list[int] = []

    @rt.task
    async def parent(n: int) -> int:
        return n

    @rt.task
    async def child(n: int, tag: str) -> None:
        done.append(n)

    async with rt:
        pool = rt.pool("default", concurrency=1)
        pool.pause()
        parents = [await pool.add(parent, n) for n in range(40)]
        children = [await pool.add(child.options(after=[p]), n, "c") for n, p in enumerate(parents)]
        pool.resume()
        for job_id in children:
            assert (await rt.wait(job_id, timeout=20)).status is JobStatus.SUCCESS
        assert sorted(done) == list(range(40))


async def test_a_release_leaves_a_job_that_a_refill_read_released_and_started(
    tmp_path: Path,
) -> None:
    """A refill may read a released job and the pool start it before the release is
    handed to its pool (their order under load): the release leaves the running job
    as it is, even while its start is not committed yet (the store still reads it
    WAITING), so it runs once."""
    rt = Runtime(str(tmp_path / "app.db"))
    runs: list[int] = []
    gate = Gate()

    @rt.task
    async def work(job: JobContext) -> None:
        runs.append(job.id)
        await gate.open.wait()

    async with rt:
        pool = rt.pool("default", concurrency=1)
        pool.pause()
        job_id = await pool.add(work)
        await rt.store.flush()
        async with rt.transaction():  # holds the writes: the start stays queued
            pool.resume()
            assert rt.live.states[job_id].status is JobStatus.RUNNING
            await rt.workflows.release(job_id, "default")
        gate.open.set()
        assert (await rt.wait(job_id, timeout=5)).status is JobStatus.SUCCESS
        await asyncio.sleep(0.05)
        assert runs == [job_id]


class Dependent:
    """A parent (priority 10: it runs first) and its dependent, in a pool of one slot;
    with ``fillers``, as many jobs that wait at a gate, and a window of 2 jobs, so
    the dependent, once released, stays in the store behind the full window."""

    def __init__(self, tmp_path: Path, *, fillers: int = 0) -> None:
        options: dict[str, Any] = {"window": 2} if fillers else {}
        self.rt = rt = Runtime(str(tmp_path / "app.db"), **options)
        self.fillers = fillers
        self.gate = gate = Gate()
        self.ran: list[str] = []

        @rt.task
        async def filler(n: int) -> None:
            gate.started.append(n)
            await gate.open.wait()

        @rt.task
        async def parent() -> str:
            return "p"

        @rt.task
        async def child() -> None:
            self.ran.append("child")

        self.filler, self.parent, self.child = filler, parent, child

    async def add(self) -> tuple[Any, int, int]:
        """The jobs, added to the paused pool: (the pool, the parent, the dependent)."""
        pool = self.rt.pool("default", concurrency=1)
        pool.pause()
        for n in range(self.fillers):
            await pool.add(self.filler, n)
        parent_id = await pool.add(self.parent.options(priority=10))
        child_id = await pool.add(self.child.options(after=[parent_id]))
        return pool, parent_id, child_id

    async def released(self, child_id: int) -> None:
        while (await self.rt.store.get_job(child_id)).waiting_reason is not None:  # type: ignore[union-attr]
            await asyncio.sleep(0.01)


async def test_a_release_replaces_a_blocked_copy_a_refill_read_before_it(
    tmp_path: Path,
) -> None:
    """A refill that read a dependent's row while it was blocked (a read under way as
    its release committed) may place that copy while the release reads the job: the
    release puts the released job in its place, and it runs."""
    case = Dependent(tmp_path)
    rt = case.rt
    async with rt:
        pool, _, child_id = await case.add()
        await rt.store.flush()
        blocked = await rt.store.get_job(child_id)
        assert blocked is not None and blocked.run_at == BLOCKED_AT
        read = rt.store.get_job

        async def get_job(job_id: int) -> Any:
            info = await read(job_id)
            task = asyncio.current_task()
            if job_id == child_id and task is not None and task.get_name() == "taskrt-workflows":
                stale = rt.adoption.hold(blocked)  # what the refill read, placed meanwhile
                assert stale is not None
                pool.push(stale)
            return info

        rt.store.get_job = get_job  # type: ignore[method-assign]
        pool.resume()
        assert (await rt.wait(child_id, timeout=5)).status is JobStatus.SUCCESS
        assert case.ran == ["child"]


async def test_a_dependent_cancelled_while_its_release_reads_it_stays_cancelled(
    tmp_path: Path,
) -> None:
    """An operator's cancel may take in, end and commit a released dependent while
    the release reads its row: the row read is older than the cancel, and the job
    does not run."""
    case = Dependent(tmp_path)
    rt = case.rt
    async with rt:
        pool, _, child_id = await case.add()
        read = rt.store.get_job
        cancelled: list[JobInfo] = []
        meddled: list[int] = []

        async def get_job(job_id: int) -> Any:
            info = await read(job_id)
            task = asyncio.current_task()
            if (
                job_id == child_id
                and not meddled
                and task is not None
                and task.get_name() == "taskrt-workflows"
            ):
                meddled.append(job_id)
                cancelled.append(await rt.cancel(child_id))  # meanwhile, committed
                await rt.store.flush()
            return info  # as it was before the cancel

        rt.store.get_job = get_job  # type: ignore[method-assign]
        pool.resume()
        assert (await rt.wait(child_id, timeout=5)).status is JobStatus.CANCELLED
        await asyncio.sleep(0.1)  # the release goes on after the cancel
        assert [c.status for c in cancelled] == [JobStatus.CANCELLED]
        assert case.ran == []
        assert (await rt.get(child_id)).status is JobStatus.CANCELLED


async def test_a_refused_run_now_leaves_no_copy_of_a_job_that_hides_it(
    tmp_path: Path,
) -> None:
    """``run_now`` reads a job that is not in memory; a read made before the job's
    release (under way as it committed) finds it blocked, and the call is refused.
    The copy it read leaves memory with the refusal: the released job, in the store
    only behind a full window, still runs."""
    case = Dependent(tmp_path, fillers=5)
    rt = case.rt
    async with rt:
        pool, parent_id, child_id = await case.add()
        blocked = await rt.store.get_job(child_id)
        pool.resume()
        await rt.wait(parent_id, timeout=5)
        await case.released(child_id)
        assert child_id not in rt.live.states  # released behind the window: the store's
        read = rt.store.get_job

        async def stale(job_id: int) -> Any:
            return blocked if job_id == child_id else await read(job_id)

        rt.store.get_job = stale  # type: ignore[method-assign]
        with pytest.raises(InvalidTransition):
            await rt.run_now(child_id)
        rt.store.get_job = read  # type: ignore[method-assign]
        case.gate.open.set()
        assert (await rt.wait(child_id, timeout=5)).status is JobStatus.SUCCESS
        assert case.ran == ["child"]


async def test_a_refill_read_under_way_as_a_dependent_is_released_leaves_its_copy(
    tmp_path: Path,
) -> None:
    """A refill of the delayed window reads a dependent blocked; before the read comes
    back, its parent ends and the store releases it (behind a full window: the store's
    only). The blocked copy the read found is left out, and the job runs."""
    case = Dependent(tmp_path, fillers=5)
    rt = case.rt
    async with rt:
        pool, _, child_id = await case.add()
        read = rt.store.delayed_jobs

        async def slow_read(name: str, after: tuple[float, int], limit: int) -> Any:
            rows = await read(name, after, limit)
            if any(row.id == child_id for row in rows):
                pool.resume()  # meanwhile: the parent runs, its dependent is released
                await case.released(child_id)
                await asyncio.sleep(0.05)
            return rows

        rt.store.delayed_jobs = slow_read  # type: ignore[method-assign]
        states, _, _ = await rt.adoption.load_delayed("default", (time.time(), 2**63 - 1), 10)
        rt.store.delayed_jobs = read  # type: ignore[method-assign]
        for state in states:  # where the refill puts what it read
            pool.push(state)
        case.gate.open.set()
        assert (await rt.wait(child_id, timeout=5)).status is JobStatus.SUCCESS
        assert case.ran == ["child"]


# -- across nodes --------------------------------------------------------------------------


async def test_a_parent_that_ends_on_another_node_releases_its_dependent_at_once(
    tmp_path: Path,
) -> None:
    """Two nodes; the parent's task is registered on one, the dependent's on the other.
    With the sweep out of the way, the node that runs the parent learns of the
    dependent from its claim (added before) or from the other node's ``added`` event
    (added while the parent runs), and releases it when the parent ends."""
    url = f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}"
    gate = Gate()
    starts: dict[int, float] = {}
    # Polls out of the way too: the release itself must wake the child's node.
    runs_parent = Runtime(url, mode="nodes", poll_interval=30)
    runs_child = Runtime(url, mode="nodes", poll_interval=30)

    @runs_parent.task(pool="p")
    async def parent(job: JobContext, hold: bool) -> int:
        if hold:
            gate.started.append(job.id)
            await gate.open.wait()
        return 1

    @runs_child.task(pool="c")
    async def child(job: JobContext) -> None:
        starts[job.id] = asyncio.get_running_loop().time()

    # the child's node adds both, so it must know the parent's task by name
    runs_child.task(pool="p", name="parent")(parent.spec.handler)
    runs_child.pool("p").pause()  # ...but never runs it

    async with runs_parent, runs_child:
        for rt in (runs_parent, runs_child):
            rt.workflows.sweep_interval = 60.0
        pool_c = runs_child.pool("c")
        pool_p = runs_child.pool("p")
        # 1. the dependent exists before the parent is claimed
        a = await pool_p.add("parent", False)
        b = await pool_c.add(child.options(after=[a]))
        info = await runs_child.wait(b, timeout=10)
        assert info.status is JobStatus.SUCCESS
        # 2. the dependent is added while the parent runs on the other node
        c = await pool_p.add("parent", True)
        while not gate.started:
            await asyncio.sleep(0.01)
        d = await pool_c.add(child.options(after=[c]))
        await asyncio.sleep(0.2)  # the "added" event crosses to the parent's node
        gate.open.set()
        started = asyncio.get_running_loop().time()
        info = await runs_child.wait(d, timeout=10)
        assert info.status is JobStatus.SUCCESS
        assert starts[d] - started < 0.5  # not the sweep (60 s), nor a poll (30 s)


async def test_a_retry_on_another_node_during_the_settle_of_the_failure_resumes_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node x fails a chain's first step and settles it (cancels the next step);
    node y retries the step by hand while that settle is still open. Before, y's
    retry committed and looked for the steps the failure cancelled before x's
    cancels committed: it found none, and the chain stayed CANCELLED though the
    step succeeded (4 of 30 runs by timing alone). The settle now holds the
    failed parent locked until it commits, so the retry waits for it."""
    import taskrt.store.postgres.store as pg_store

    url = f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}"
    settling = asyncio.Event()
    settle = pg_store.settle

    async def slow_settle(conn: Any, parents: Any, now: float, tally: Any) -> Any:
        settled = await settle(conn, parents, now, tally)
        if settled.cancelled and not settling.is_set():
            settling.set()
            await asyncio.sleep(0.5)  # a slow commit: the transaction stays open
        return settled

    monkeypatch.setattr(pg_store, "settle", slow_settle)
    x = Runtime(url, mode="nodes")
    y = Runtime(url, mode="nodes")
    broken = {"fetch": True}

    @x.task(pool="p")
    async def fetch(url: str) -> str:
        if broken["fetch"]:
            broken["fetch"] = False
            raise ConnectionError("down")
        return f"<{url}>"

    y.task(pool="p", name="fetch")(fetch.spec.handler)
    y.pool("p").pause()  # x runs (and fails, and settles) the first step
    for rt in (x, y):

        @rt.task(pool="q", name="parse")
        async def parse(html: str) -> int:
            return len(html)

    async with x, y:
        first, second = (await y.chain(fetch.s("x.org"), y.resolve("parse").s())).jobs
        await asyncio.wait_for(settling.wait(), 10)
        assert (await y.get(first)).status is JobStatus.FAILURE
        await y.retry(first)  # while x's settle is open
        done = await y.wait(second, timeout=10)
        assert (done.status, done.result) == (JobStatus.SUCCESS, 7), done


async def test_a_groups_successes_are_settled_once_where_one_owner_runs_them(
    tmp_path: Path,
) -> None:
    """Workflows note 5: the owner holds each member's success until the last one."""
    rt = Runtime(str(tmp_path / "app.db"))
    settles: list[list[int] | None] = []

    @rt.task
    async def member(n: int) -> int:
        return n

    @rt.task
    async def total(results: list[int]) -> int:
        return sum(results)

    async with rt:
        original = rt.store.settle_deps

        async def counted(parents: Any, now: float) -> Any:
            settles.append(None if parents is None else list(parents))
            return await original(parents, now)

        rt.store.settle_deps = counted  # type: ignore[method-assign]
        flow = await rt.group([member.s(n) for n in range(50)]).then(total.s())
        assert (await rt.wait(flow.jobs[-1], timeout=10)).result == sum(range(50))
        mine = [s for s in settles if s is not None]
        assert mine == [sorted(flow.jobs[:-1])]  # one settle of all 50, at the last end


async def test_a_steps_other_arguments_are_checked_when_it_is_added(tmp_path: Path) -> None:
    rt = Runtime(str(tmp_path / "app.db"))

    @rt.task
    async def fetch(url: str) -> str:
        return url

    @rt.task
    async def store(page: str, bucket: str) -> str:
        return bucket

    async with rt:
        with pytest.raises(ValidationError) as caught:
            await rt.chain(fetch.s("x"), store.s(bucket=3))  # bucket is a string
        assert caught.value.parameter == "bucket"
        with pytest.raises(ValidationError):
            await rt.chain(fetch.s("x"), store.s("b", "extra"))  # one argument too many
        assert (await rt.jobs()).jobs == []
        flow = await rt.chain(fetch.s("x"), store.s(bucket="b"))
        assert (await rt.wait(flow.jobs[-1], timeout=10)).result == "b"


async def test_a_workflow_stream_where_no_event_arrives_polls_snapshots(tmp_path: Path) -> None:
    """A process no event reaches (a client away from the owner) reads the workflow
    again and sends a snapshot each time it changed, until it is finished."""
    from taskrt.workflows import WorkflowStream

    rt = Runtime(str(tmp_path / "app.db"))
    gates = [asyncio.Event(), asyncio.Event()]

    @rt.task
    async def step(n: int) -> int:
        await gates[n].wait()
        return n + 1

    async with rt:
        flow = await rt.chain(step.s(0), step.s())
        stream = WorkflowStream(
            rt.broker,
            flow.id,
            lambda: rt.workflow(flow.id),
            rt.clock,
            None,
            relayed=lambda: False,
            poll_interval=0.02,
        )
        seen: list[list[str]] = []

        async def follow() -> None:
            async for event in stream:
                assert event.type is EventType.SNAPSHOT
                seen.append([j["status"] for j in event.data["workflow"]["jobs"]])

        follower = asyncio.create_task(follow())
        while not seen:
            await asyncio.sleep(0.01)
        gates[0].set()
        while seen[-1][0] != "SUCCESS":
            await asyncio.sleep(0.01)
        assert seen[-1][1] in ("WAITING", "RUNNING")  # the first step's end, seen alone
        gates[1].set()
        await asyncio.wait_for(follower, 10)
        assert seen[0][0] in ("WAITING", "RUNNING")
        assert seen[-1] == ["SUCCESS", "SUCCESS"]


async def test_a_group_runs_across_two_nodes(tmp_path: Path) -> None:
    """Both nodes run the members; whichever ends the last one releases the callback
    (the sweep held off), and the callback gets every result in order."""
    url = f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}"
    ran: dict[str, int] = {}

    def node() -> tuple[Runtime, Any, Any]:
        rt = Runtime(url, mode="nodes")

        @rt.task
        async def member(n: int) -> int:
            assert rt.nodes is not None
            ran[rt.nodes.node] = ran.get(rt.nodes.node, 0) + 1
            await asyncio.sleep(0.002)
            return n

        @rt.task
        async def total(results: list[int]) -> list[int]:
            return results

        return rt, member, total

    x, member, total = node()
    y, _, _ = node()
    async with x, y:
        for rt in (x, y):
            rt.workflows.sweep_interval = 60.0
            rt.pool("default").set_concurrency(4)
        flow = await x.group([member.s(n) for n in range(200)]).then(total.s())
        done = await y.wait(flow.jobs[-1], timeout=20)
        assert (done.status, done.result) == (JobStatus.SUCCESS, list(range(200)))
        assert len(ran) == 2 and sum(ran.values()) == 200


async def test_an_action_the_server_rolls_back_as_a_deadlock_is_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry by hand of a failed parent that a settle holds, the settle, and the
    group commit met in a soak (PostgreSQL rolled the retry back: 'deadlock detected'
    reached its caller as a StoreError). Every one-transaction action now runs again
    when the server rolls it back, what it returned before dropped."""
    import asyncpg

    import taskrt.store.postgres.store as pg_store

    url = f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}"
    rowcount = pg_store._rowcount
    calls: list[int] = []

    def deadlocked_once(status: str) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
        return rowcount(status)

    rt = Runtime(url, mode="nodes")

    @rt.task
    async def later(job: JobContext) -> None: ...

    async with rt:
        job_id = await rt.pool("default").add(later.options(delay=3600))
        await rt.store.flush()
        when = time.time() + 60
        monkeypatch.setattr(pg_store, "_rowcount", deadlocked_once)
        rescheduled = await rt.store.reschedule(job_id, when)
        monkeypatch.setattr(pg_store, "_rowcount", rowcount)
        info = await rt.store.get_job(job_id)
    assert (rescheduled, len(calls)) == (True, 2)
    assert info is not None and info.run_at == pytest.approx(when)


async def test_a_settle_the_server_rolls_back_as_a_deadlock_is_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settle, a block again and a retry of a chain lock rows in orders that can
    meet; PostgreSQL ends such a deadlock by rolling one back, which is run again
    (seen twice in a soak's server log once settles lock their parents)."""
    import asyncpg

    import taskrt.store.postgres.store as pg_store

    url = f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}"
    settle = pg_store.settle
    calls: list[int] = []

    async def deadlocked_once(conn: Any, parents: Any, now: float, tally: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
        return await settle(conn, parents, now, tally)

    monkeypatch.setattr(pg_store, "settle", deadlocked_once)
    store = pg_store.PgStore(url)
    await store.open()
    try:
        settled = await store.settle_deps([1], time.time())
    finally:
        await store.close()
    assert (settled.released, settled.cancelled, len(calls)) == ((), (), 2)


async def test_a_job_in_no_workflow_is_no_workflow(target: tuple[str, dict[str, Any]]) -> None:
    """``taskrt workflow 1`` said "no job with id 1" of a job that exists but is in
    no workflow; the error now says what is missing, and is a ``JobNotFound`` still."""
    rt = runtime(target)

    @rt.task
    async def alone() -> None:
        return None

    async with rt:
        job_id = await rt.add(alone)
        for missing in (job_id, job_id + 100):
            with pytest.raises(WorkflowNotFound, match=f"no workflow with id {missing}") as err:
                await rt.workflow(missing)
            assert isinstance(err.value, JobNotFound) and err.value.workflow_id == missing
