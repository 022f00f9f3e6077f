"""Batched handlers: jobs gathered by key, one handler call a batch (docs/workflows.md).

Each behaviour runs on a real SQLite file and on PostgreSQL (one owner, and every
process a node), through the Python API.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from taskrt import Batch, InvalidOption, InvalidTransition, JobStatus, Runtime, ValidationError


def runtime(target: tuple[str, dict[str, Any]]) -> Runtime:
    db, options = target
    return Runtime(db, **options)


async def test_a_full_batch_runs_at_once_and_each_member_gets_its_outcome(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt = runtime(target)
    calls: list[list[Any]] = []

    @rt.task(batch=Batch(max_size=4, max_wait=60))
    async def digest(items: list[dict[str, int]]) -> int:
        calls.append(list(items))
        return sum(i["n"] for i in items)

    async with rt:
        pool = rt.pool("default")
        started = time.monotonic()
        ids = [await pool.add(digest.options(batch_key="user:1"), {"n": n}) for n in range(8)]
        infos = [await rt.wait(job_id, timeout=10) for job_id in ids]
        assert time.monotonic() - started < 5  # full batches do not wait for max_wait
        assert calls == [[{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}], [{"n": n} for n in range(4, 8)]]
        assert [(i.status, i.result, i.batch) for i in infos] == [
            *[(JobStatus.SUCCESS, 6, ids[0])] * 4,
            *[(JobStatus.SUCCESS, 22, ids[4])] * 4,
        ]
        assert infos[1].args == ({"n": 1},)  # a member keeps its own item
        assert infos[0].args == ([{"n": n} for n in range(4)],)  # the leader ran the batch
        stats = await rt.stats()
        counts = {status: n for status, n in stats.counts.items() if n}
        assert counts == {JobStatus.SUCCESS: 8}  # each member counted once, nothing added


async def test_a_batch_forms_when_its_oldest_has_waited_max_wait(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt = runtime(target)
    calls: list[tuple[float, list[Any]]] = []

    @rt.task(batch={"max_size": 100, "max_wait": 0.4})
    async def digest(items: list[str]) -> None:
        calls.append((time.monotonic(), list(items)))

    async with rt:
        pool = rt.pool("default")
        added = time.monotonic()
        a = await pool.add(digest.options(batch_key="a"), "a1")
        b = await pool.add(digest.options(batch_key="b"), "b1")
        a2 = await pool.add(digest.options(batch_key="a"), "a2")
        assert (await rt.get(a)).waiting_reason == "batching"
        for job_id in (a, b, a2):
            assert (await rt.wait(job_id, timeout=10)).status is JobStatus.SUCCESS
        assert sorted(items for _, items in calls) == [["a1", "a2"], ["b1"]]  # keys apart
        for at, _ in calls:
            assert added + 0.35 <= at < added + 3.0


async def test_a_batch_is_one_attempt_with_the_tasks_retries(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt = runtime(target)
    tries: list[int] = []

    @rt.task(batch=Batch(max_size=3, max_wait=60), attempts=2)
    async def flaky(items: list[int]) -> str:
        tries.append(len(items))
        if len(tries) == 1:
            raise ValueError("first try")
        return "ok"

    @rt.task(batch=Batch(max_size=2, max_wait=60))
    async def broken(items: list[int]) -> None:
        raise ValueError("never")

    async with rt:
        pool = rt.pool("default")
        ids = [await pool.add(flaky, n) for n in range(3)]
        infos = [await rt.wait(job_id, timeout=10) for job_id in ids]
        assert tries == [3, 3]
        assert [(i.status, i.result, i.attempts) for i in infos] == [
            (JobStatus.SUCCESS, "ok", 2)
        ] * 3
        bad = [await pool.add(broken, n) for n in range(2)]
        infos = [await rt.wait(job_id, timeout=10) for job_id in bad]
        assert [(i.status, i.error) for i in infos] == [
            (JobStatus.FAILURE, "ValueError: never")
        ] * 2


async def test_retrying_a_failed_batch_brings_back_its_members(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt = runtime(target)
    calls: list[list[int]] = []
    failing = [True]

    @rt.task(batch=Batch(max_size=3, max_wait=60), attempts=1)
    async def digest(items: list[int]) -> int:
        calls.append(list(items))
        if failing[0]:
            raise ValueError("down")
        return sum(items)

    async with rt:
        pool = rt.pool("default")
        leader, *members = [await pool.add(digest, n) for n in (1, 2, 3)]
        infos = [await rt.wait(job_id, timeout=10) for job_id in (leader, *members)]
        assert [(i.status, i.error) for i in infos] == [(JobStatus.FAILURE, "ValueError: down")] * 3

        # A member alone cannot run: its item is one of its batch's.
        with pytest.raises(InvalidTransition) as refused:
            await rt.retry(members[0])
        assert f"it is one item of the batch job {leader} runs: retry that job" in str(
            refused.value
        )
        assert (await rt.get(members[0])).status is JobStatus.FAILURE

        failing[0] = False
        await rt.retry(leader)  # the batch runs again, and its members end as it ends
        infos = [await rt.wait(job_id, timeout=10) for job_id in (leader, *members)]
        assert [(i.status, i.result, i.batch) for i in infos] == [
            (JobStatus.SUCCESS, 6, leader)
        ] * 3
        assert [i.attempts for i in infos] == [2] * 3
        assert calls == [[1, 2, 3], [1, 2, 3]]
        assert (await rt.stats()).counts[JobStatus.SUCCESS] == 3


async def test_a_member_cancelled_by_hand_stays_out_of_its_batchs_retry(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt = runtime(target)
    entered, go = asyncio.Event(), asyncio.Event()
    failing = [True]

    @rt.task(batch=Batch(max_size=3, max_wait=60), attempts=1)
    async def digest(items: list[int]) -> int:
        entered.set()
        await go.wait()
        if failing[0]:
            raise ValueError("down")
        return sum(items)

    async with rt:
        pool = rt.pool("default")
        leader, kept, dropped = [await pool.add(digest, n) for n in (1, 2, 3)]
        await asyncio.wait_for(entered.wait(), 10)
        assert (await rt.cancel(dropped)).status is JobStatus.CANCELLED
        go.set()
        assert (await rt.wait(leader, timeout=10)).status is JobStatus.FAILURE
        assert (await rt.wait(kept, timeout=10)).status is JobStatus.FAILURE
        failing[0] = False
        await rt.retry(leader)
        assert (await rt.wait(kept, timeout=10)).result == 6
        assert (await rt.get(dropped)).status is JobStatus.CANCELLED
        # Retried itself, it waits for its batch's job, which has succeeded: it ends so.
        await rt.retry(dropped)
        info = await rt.wait(dropped, timeout=10)
        assert (info.status, info.result) == (JobStatus.SUCCESS, 6)


async def test_a_member_cancelled_as_its_batch_ends_is_cancelled_or_refused_never_both(
    target: tuple[str, dict[str, Any]],
) -> None:
    """The owner cancelled a batched member from memory and queued the write; its
    batch's end, a transaction of the store's that reads rows, ended the member
    SUCCESS before that write, which then changed nothing: the cancel answered
    CANCELLED and the job was SUCCESS (a hunt: 6 of 66 cancels). Here the write is
    held until the batch's members are settled. Now the member is cancelled in one
    store transaction: it stays cancelled."""
    rt = runtime(target)
    entered, go, settled = asyncio.Event(), asyncio.Event(), asyncio.Event()

    @rt.task(batch=Batch(max_size=3, max_wait=60))
    async def digest(items: list[int]) -> int:
        entered.set()
        await go.wait()
        return sum(items)

    async with rt:
        store = rt.store
        cancel_write, settle_deps = store.cancel, store.settle_deps

        def held_cancel(*args: Any, **kwargs: Any) -> Any:
            async def later() -> None:
                await settled.wait()
                await cancel_write(*args, **kwargs)

            return asyncio.ensure_future(later())

        async def settle_then(*args: Any, **kwargs: Any) -> Any:
            out = await settle_deps(*args, **kwargs)
            settled.set()
            return out

        store.cancel = held_cancel  # type: ignore[method-assign]
        store.settle_deps = settle_then  # type: ignore[method-assign]
        pool = rt.pool("default")
        leader, kept, member = [await pool.add(digest, n) for n in (1, 2, 3)]
        await asyncio.wait_for(entered.wait(), 10)
        answer = await rt.cancel(member)
        assert (answer.status, answer.batch) == (JobStatus.CANCELLED, leader)
        go.set()
        assert (await rt.wait(leader, timeout=10)).result == 6
        assert (await rt.wait(kept, timeout=10)).result == 6
        await asyncio.wait_for(settled.wait(), 10)
        await asyncio.sleep(0.2)  # a held write, if any, lands
        assert (await rt.get(member)).status is JobStatus.CANCELLED


async def test_gathering_batches_survive_a_restart(target: tuple[str, dict[str, Any]]) -> None:
    calls: list[list[int]] = []

    def build() -> tuple[Runtime, Any]:
        rt = runtime(target)

        @rt.task(batch=Batch(max_size=10, max_wait=0.5))
        async def digest(items: list[int]) -> int:
            calls.append(list(items))
            return len(items)

        return rt, digest

    rt, digest = build()
    async with rt:
        pool = rt.pool("default")
        ids = [await pool.add(digest, n) for n in range(3)]
    assert calls == []  # stopped before the batch formed
    rt, _ = build()
    async with rt:
        infos = [await rt.wait(job_id, timeout=10) for job_id in ids]
    assert calls == [[0, 1, 2]]
    assert [i.result for i in infos] == [3, 3, 3]


async def test_run_now_forms_a_members_batch(target: tuple[str, dict[str, Any]]) -> None:
    # Where every process is a node, run now went to the store alone: the member
    # ran by itself with its bare item (TypeError) and its batch without it.
    rt = runtime(target)
    calls: list[list[int]] = []
    gate = asyncio.Event()

    @rt.task(batch=Batch(max_size=50, max_wait=3600))
    async def digest(items: list[int]) -> None:
        calls.append(list(items))
        if 2 in items:
            await gate.wait()

    async with rt:
        pool = rt.pool("default")
        ids = [await pool.add(digest, n) for n in range(2)]
        await rt.run_now(ids[1])
        for job_id in ids:
            assert (await rt.wait(job_id, timeout=10)).status is JobStatus.SUCCESS
        assert calls == [[0, 1]]
        leader = await pool.add(digest, 2)
        member = await pool.add(digest, 3)
        await until_batched(rt, leader)
        with pytest.raises(InvalidTransition, match="it waits for its batch"):
            await rt.run_now(member)  # it ends as its batch's job ends
        gate.set()
        for job_id in (leader, member):
            assert (await rt.wait(job_id, timeout=10)).status is JobStatus.SUCCESS
        assert calls == [[0, 1], [2, 3]]


async def until_batched(rt: Runtime, job_id: int) -> None:
    """Form the batch of ``job_id`` (the oldest of its key) now, and wait until it
    has formed."""
    await rt.run_now(job_id)
    deadline = time.monotonic() + 10
    while (await rt.get(job_id)).batch != job_id:
        assert time.monotonic() < deadline, "the batch did not form"
        await asyncio.sleep(0.01)


async def test_run_now_from_a_client_forms_a_members_batch_where_nodes_run_jobs(
    tmp_path: Path,
) -> None:
    import pg_server

    url = f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}"
    # The node polls rarely: it must be told that the batch's job is due.
    node = Runtime(url, mode="nodes", poll_interval=30)
    client = Runtime(url, mode="nodes", workers=False)
    calls: list[list[int]] = []
    for rt in (node, client):

        @rt.task(batch=Batch(max_size=50, max_wait=3600))
        async def digest(items: list[int]) -> None:
            calls.append(list(items))

    async with node, client:
        ids = [await client.pool("default").add(digest, n) for n in range(2)]
        await client.run_now(ids[0])
        for job_id in ids:
            assert (await client.wait(job_id, timeout=10)).status is JobStatus.SUCCESS
        assert calls == [[0, 1]]


async def test_on_three_nodes_batches_fill_up_as_in_one_process(tmp_path: Path) -> None:
    """Every node counts every add, so when a key fills up every node finds it
    full; the first forms the batch. Before, the others then formed batches of
    whatever came in since (sizes like 8, 1, 7, 1, 1, 6 where 8, 8, 8, 8 were
    due), long before max_wait (batches note 3)."""
    import contextlib

    import pg_server

    url = f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}"
    sizes: list[int] = []
    nodes = [Runtime(url, mode="nodes") for _ in range(3)]
    for rt in nodes:

        @rt.task(batch=Batch(max_size=8, max_wait=60))
        async def digest(items: list[int]) -> None:
            sizes.append(len(items))

    async with contextlib.AsyncExitStack() as stack:
        for rt in nodes:
            await stack.enter_async_context(rt)
        adder = nodes[0].pool("default")
        ids = [await adder.add(digest.options(batch_key="k"), n) for n in range(32)]
        for job_id in ids:  # within max_wait: each batch formed full
            assert (await nodes[0].wait(job_id, timeout=20)).status is JobStatus.SUCCESS
    assert sizes == [8, 8, 8, 8]


async def test_a_batch_formed_on_one_node_wakes_the_node_that_runs_it(tmp_path: Path) -> None:
    """Node x forms the batch but does not run its pool; node y, polling every 30 s,
    runs it at once: the form tells the other nodes (added:<pool>). Before, y
    started it at its next poll."""
    import pg_server

    url = f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}"
    x = Runtime(url, mode="nodes", poll_interval=30)
    y = Runtime(url, mode="nodes", poll_interval=30)
    calls: list[list[int]] = []
    for rt in (x, y):

        @rt.task(batch=Batch(max_size=4, max_wait=3600))
        async def digest(items: list[int]) -> None:
            calls.append(list(items))

    y.batches.start = lambda: None  # type: ignore[method-assign]  # x forms it
    async with x, y:
        x.pool("default").pause()  # here only: y runs it
        began = time.monotonic()
        ids = [await x.pool("default").add(digest.options(batch_key="k"), n) for n in range(4)]
        for job_id in ids:
            assert (await x.wait(job_id, timeout=10)).status is JobStatus.SUCCESS
        assert time.monotonic() - began < 2  # not y's poll (30 s)
    assert calls == [[0, 1, 2, 3]]


async def test_run_now_of_a_member_is_refused_where_the_owner_cannot_be_reached(
    tmp_path: Path,
) -> None:
    # Its batch forms where jobs run; a client that cannot reach that process does
    # not run the member on its own (before: it ran alone, with its bare item).
    owner = Runtime(str(tmp_path / "app.db"))
    client = Runtime(str(tmp_path / "app.db"), workers=False)
    client._forwarding = lambda: None  # type: ignore[method-assign]
    calls: list[list[int]] = []
    for rt in (owner, client):

        @rt.task(batch=Batch(max_size=2, max_wait=3600))
        async def digest(items: list[int]) -> None:
            calls.append(list(items))

    async with owner, client:
        first = await client.pool("default").add(digest, 0)
        with pytest.raises(InvalidTransition, match="its batch forms where jobs run"):
            await client.run_now(first)
        await asyncio.sleep(0.3)  # the owner's poll has read what the client wrote
        assert calls == [] and (await owner.get(first)).waiting_reason == "batching"
        second = await client.pool("default").add(digest, 1)  # the batch is full
        for job_id in (first, second):
            assert (await owner.wait(job_id, timeout=10)).status is JobStatus.SUCCESS
        assert calls == [[0, 1]]


def test_bad_batch_settings_and_adds_are_refused(tmp_path: Path) -> None:
    rt = Runtime(str(tmp_path / "app.db"))
    for bad, field in (
        ({"max_size": 0}, "batch.max_size"),
        ({"max_size": 2.5}, "batch.max_size"),
        ({"max_wait": 0}, "batch.max_wait"),
        ({"size": 3}, "batch.size"),
    ):
        with pytest.raises(InvalidOption) as caught:

            @rt.task(name=f"t{field}", batch=bad)
            async def t(items: list[Any]) -> None: ...

        assert caught.value.field == field

    @rt.task
    async def plain(x: int) -> None: ...

    with pytest.raises(InvalidOption) as caught:
        plain.options(batch_key=3)
    assert caught.value.field == "batch_key"


async def test_bad_batch_adds_are_refused(tmp_path: Path) -> None:
    rt = Runtime(str(tmp_path / "app.db"))

    @rt.task(batch=Batch(max_size=2, max_wait=1))
    async def digest(items: list[int]) -> None: ...

    @rt.task
    async def plain(x: int) -> None: ...

    async with rt:
        pool = rt.pool("default")
        with pytest.raises(ValidationError):
            await pool.add(digest, 1, 2)  # one item a job
        with pytest.raises(InvalidOption) as caught:
            await pool.add(plain.options(batch_key="k"), 1)
        assert caught.value.field == "batch_key"
        with pytest.raises(InvalidOption) as caught:
            await pool.add(digest.options(after=[1]), 1)
        assert caught.value.field == "after"
        assert (await rt.jobs()).jobs == []


async def test_adds_told_while_the_store_is_read_are_still_counted(tmp_path: Path) -> None:
    # The gatherer's read of the store replaces its counts with what the read saw:
    # jobs added while it was in flight, which it did not see, must count after it.
    rt = Runtime(str(tmp_path / "app.db"))

    @rt.task(batch=Batch(max_size=4, max_wait=60))
    async def digest(items: list[int]) -> int:
        return sum(items)

    held, release = asyncio.Event(), asyncio.Event()
    read = rt.store.batches_waiting

    async def slow_read(one: tuple[str, str] | None = None) -> list[Any]:
        rows = await read(one)
        if not held.is_set():  # the first read: it saw nothing, and answers late
            held.set()
            await release.wait()
        return rows

    rt.store.batches_waiting = slow_read  # type: ignore[method-assign]
    async with rt:
        pool = rt.pool("default")
        await held.wait()
        ids = [await pool.add(digest.options(batch_key="k"), n) for n in range(3)]
        release.set()
        await asyncio.sleep(0.05)  # the read has answered
        ids.append(await pool.add(digest.options(batch_key="k"), 3))
        # The fourth job fills the batch: it forms now, not after max_wait (60 s).
        infos = [await rt.wait(job_id, timeout=3) for job_id in ids]
        assert [(i.status, i.result) for i in infos] == [(JobStatus.SUCCESS, 6)] * 4
