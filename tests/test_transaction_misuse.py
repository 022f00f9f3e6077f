"""Misusing ``rt.transaction()`` raises at the call (``taskrt.transaction`` notes 1-4).

Before, on SQLite: a nested transaction, or an add without ``tx=`` in the block,
waited for ever and every other write with it; a transaction used after its
block, or after a ROLLBACK sent through ``tx.execute``, stored jobs that never
ran; ``tx.execute`` let the drivers' ``TypeError``, ``OverflowError`` and
``UnicodeEncodeError`` through. Each test runs on a SQLite file and on
PostgreSQL (one owner, every process a node), each wait bounded so that a hang
fails; after each refusal a plain add still runs.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from taskrt import InvalidOption, JobContext, JobNotFound, JobStatus, Runtime, StoreError

LIMIT = 10.0  # seconds: a refusal is immediate; a hang fails the test


def sqlite(target: tuple[str, dict[str, Any]]) -> bool:
    return not target[0].startswith("postgres")


def sql(target: tuple[str, dict[str, Any]], statement: str) -> str:
    """``statement`` in the backend's placeholders (``?`` on SQLite, ``$n`` on PostgreSQL)."""
    if sqlite(target):
        return statement
    numbers = iter(range(1, 100))
    return re.sub(r"\?", lambda _: f"${next(numbers)}", statement)


def make(target: tuple[str, dict[str, Any]]) -> tuple[Runtime, list[int]]:
    """A runtime with task ``echo`` (``ran`` holds what it ran)."""
    db, base = target
    rt = Runtime(db, **base)
    ran: list[int] = []

    @rt.task(name="echo")
    async def echo(job: JobContext, n: int) -> int:
        ran.append(n)
        return n

    return rt, ran


async def plain_add_runs(rt: Runtime, n: int) -> None:
    """A plain add after a refusal: committed, run, in a bounded time."""
    info = await rt.wait(await rt.add("echo", n), timeout=LIMIT)
    assert (info.status, info.result) == (JobStatus.SUCCESS, n)


async def stored(rt: Runtime) -> list[tuple[int, tuple[Any, ...], JobStatus]]:
    return sorted((j.id, j.args, j.status) for j in (await rt.jobs()).jobs)


async def test_a_nested_transaction_is_refused_and_the_outer_one_commits(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt, ran = make(target)
    async with rt, asyncio.timeout(LIMIT):
        async with rt.transaction() as tx:
            kept = await rt.add("echo", 1, tx=tx)
            with pytest.raises(InvalidOption, match="do not nest") as refused:
                async with rt.transaction():
                    pytest.fail("the inner block ran")
            assert refused.value.field == "tx"
            also = await rt.add("echo", 2, tx=tx)  # the outer one goes on
        assert (await rt.wait(kept, timeout=LIMIT)).result == 1
        assert (await rt.wait(also, timeout=LIMIT)).result == 2
        async with rt.transaction() as tx:  # one after another is fine
            third = await rt.add("echo", 3, tx=tx)
        assert (await rt.wait(third, timeout=LIMIT)).result == 3
        await plain_add_runs(rt, 4)
    assert sorted(ran) == [1, 2, 3, 4]


async def test_an_add_without_tx_in_the_block_is_refused_in_its_task_only(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt, ran = make(target)
    async with rt, asyncio.timeout(LIMIT):
        started = asyncio.Event()

        async def elsewhere() -> int:
            """Another task of the application: its add waits its turn, never refused."""
            await started.wait()
            return await rt.add("echo", 20)

        other = asyncio.create_task(elsewhere())
        async with rt.transaction() as tx:
            for attempt in (
                rt.add("echo", 1),
                rt.pool("default").add_many("echo", [(2,), (3,)]),
                rt.chain(rt.resolve("echo").s(4)),
                rt.enqueue("echo", args=(5,)),
            ):
                with pytest.raises(InvalidOption, match="tx=tx") as refused:
                    await attempt
                assert refused.value.field == "tx"
            # A task started in the block is not the block's: it waits its turn too.
            child = asyncio.create_task(rt.add("echo", 21))
            started.set()
            for _ in range(5):
                await asyncio.sleep(0)
            in_tx = await rt.add("echo", 6, tx=tx)
        ids = [in_tx, await other, await child]
        infos = [await rt.wait(i, timeout=LIMIT) for i in ids]
        assert [i.result for i in infos] == [6, 20, 21]
        await plain_add_runs(rt, 7)
    assert sorted(ran) == [6, 7, 20, 21]  # none of the refused adds was stored


async def test_a_transaction_whose_block_is_over_takes_nothing(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt, ran = make(target)
    async with rt, asyncio.timeout(LIMIT):
        async with rt.transaction() as tx:
            await tx.execute("CREATE TABLE notes (n INTEGER)")
        assert tx.closed and tx.ended is not None
        with pytest.raises(InvalidOption, match="ended") as refused:
            await rt.add("echo", 5, tx=tx)
        assert refused.value.field == "tx"
        with pytest.raises(InvalidOption, match="ended"):
            await rt.pool("default").add_many("echo", [(6,)], tx=tx)
        with pytest.raises(InvalidOption, match="ended"):
            await rt.chain(rt.resolve("echo").s(7), tx=tx)
        with pytest.raises(StoreError, match="ended"):
            await tx.execute(sql(target, "INSERT INTO notes VALUES (?)"), (1,))
        with pytest.raises(StoreError, match="ended"):
            await tx.executemany(sql(target, "INSERT INTO notes VALUES (?)"), [(2,)])
        with pytest.raises(StoreError, match="ended"):
            _ = tx.driver
        assert await stored(rt) == []
        async with rt.transaction() as fresh:
            [(count,)] = await fresh.execute("SELECT count(*) FROM notes")
            assert count == 0
        await plain_add_runs(rt, 8)
    assert ran == [8]


@pytest.mark.parametrize(
    "statement",
    [
        "ROLLBACK",
        "commit;",
        "  /* by hand */ COMMIT",
        "-- done\nEND",
        "BEGIN",
        "ROLLBACK TRANSACTION",
    ],
)
async def test_transaction_control_through_execute_is_refused_and_the_block_goes_on(
    target: tuple[str, dict[str, Any]], statement: str
) -> None:
    rt, ran = make(target)
    async with rt, asyncio.timeout(LIMIT):
        async with rt.transaction() as tx:
            await tx.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        async with rt.transaction() as tx:
            await tx.execute(sql(target, "INSERT INTO orders (id) VALUES (?)"), (1,))
            first = await rt.add("echo", 1, tx=tx)
            with pytest.raises(InvalidOption, match="taskrt's to begin and end") as refused:
                await tx.execute(statement)
            assert refused.value.field == "statement"
            with pytest.raises(InvalidOption, match="taskrt's"):
                await tx.executemany(statement, [()])
            await tx.execute(sql(target, "INSERT INTO orders (id) VALUES (?)"), (2,))
            second = await rt.add("echo", 2, tx=tx)
        # Both rows and both jobs committed together, and both jobs ran.
        assert [(await rt.wait(i, timeout=LIMIT)).result for i in (first, second)] == [1, 2]
        async with rt.transaction() as tx:
            rows = await tx.execute("SELECT id FROM orders ORDER BY id")
        assert [r[0] for r in rows] == [1, 2]
        await plain_add_runs(rt, 3)
    assert sorted(ran) == [1, 2, 3]


async def test_a_rollback_to_a_savepoint_forgets_the_jobs_it_undid(
    target: tuple[str, dict[str, Any]],
) -> None:
    # Before: the job stayed in memory, WAITING for ever, while its row was gone
    # (and its id went to the next add).
    rt, ran = make(target)
    async with rt, asyncio.timeout(LIMIT):
        async with rt.transaction() as tx:
            kept = await rt.add("echo", 1, tx=tx)
            await tx.execute("SAVEPOINT before_two")
            undone = await rt.add("echo", 2, tx=tx)
            await tx.execute("ROLLBACK TO before_two")
            await tx.execute("RELEASE before_two")
        with pytest.raises(JobNotFound):
            await rt.get(undone)
        assert (await rt.wait(kept, timeout=LIMIT)).result == 1
        await plain_add_runs(rt, 3)
    assert sorted(ran) == [1, 3]


async def test_a_transaction_the_database_ended_takes_nothing_more(
    target: tuple[str, dict[str, Any]],
) -> None:
    # A ROLLBACK through the driver itself: taskrt does not see the statement,
    # but it sees the transaction gone, and stores no job in its place.
    rt, ran = make(target)
    async with rt, asyncio.timeout(LIMIT):
        with pytest.raises(StoreError, match="ended inside its block"):
            async with rt.transaction() as tx:
                await rt.add("echo", 1, tx=tx)
                await tx.driver.execute("ROLLBACK")
                with pytest.raises(InvalidOption, match="no longer in it") as refused:
                    await rt.add("echo", 2, tx=tx)
                assert refused.value.field == "tx"
                with pytest.raises(StoreError, match="no longer in it"):
                    await tx.execute("SELECT 1")
        assert await stored(rt) == []
        await plain_add_runs(rt, 3)
    assert ran == [3]


async def test_a_statement_the_driver_cannot_take_raises_a_taskrt_error(
    target: tuple[str, dict[str, Any]],
) -> None:
    rt, ran = make(target)
    big = "SELECT ?" if sqlite(target) else "SELECT $1::bigint"
    text = "SELECT ?" if sqlite(target) else "SELECT $1::text"
    async with rt, asyncio.timeout(LIMIT):
        async with rt.transaction() as tx:
            await tx.execute("CREATE TABLE notes (n INTEGER)")
        async with rt.transaction() as tx:
            with pytest.raises(InvalidOption, match="expected an SQL string") as bad:
                await tx.execute(123)  # type: ignore[arg-type]
            assert bad.value.field == "statement"
            with pytest.raises(StoreError):
                await tx.execute(big, [2**70])
            with pytest.raises(StoreError):
                await tx.execute(text, ["\ud800"])
            with pytest.raises(InvalidOption, match="list or tuple") as bad:
                await tx.execute(big, 5)  # type: ignore[arg-type]
            assert bad.value.field == "params"
            with pytest.raises(InvalidOption, match="list or tuple"):
                await tx.execute(big, "5")
            with pytest.raises(InvalidOption, match="iterable of rows") as bad:
                await tx.executemany(sql(target, "INSERT INTO notes VALUES (?)"), 5)  # type: ignore[arg-type]
            assert bad.value.field == "params"
            with pytest.raises(InvalidOption, match="list or tuple") as bad:
                await tx.executemany(sql(target, "INSERT INTO notes VALUES (?)"), [(1,), 2])  # type: ignore[list-item]
            assert bad.value.field == "params[1]"
            with pytest.raises(StoreError):
                await tx.executemany(sql(target, "INSERT INTO notes VALUES (?)"), [(2**70,)])
            # The transaction goes on: nothing of the refused statements is in it.
            await tx.executemany(sql(target, "INSERT INTO notes VALUES (?)"), [(1,), (2,)])
            job_id = await rt.add("echo", 1, tx=tx)
        assert (await rt.wait(job_id, timeout=LIMIT)).result == 1
        async with rt.transaction() as tx:
            rows = await tx.execute("SELECT n FROM notes ORDER BY n")
        assert [r[0] for r in rows] == [1, 2]
        await plain_add_runs(rt, 2)
    assert sorted(ran) == [1, 2]


async def test_a_failed_statement_the_application_caught_never_commits_silently(
    target: tuple[str, dict[str, Any]],
) -> None:
    # SQLite goes on after a failed statement; PostgreSQL aborts the transaction,
    # and its COMMIT rolls back without a word: the block's end says so instead.
    rt, ran = make(target)
    async with rt, asyncio.timeout(LIMIT):
        async with rt.transaction() as tx:
            await tx.execute("CREATE TABLE notes (n INTEGER)")

        async def block() -> None:
            async with rt.transaction() as tx:
                await tx.execute(sql(target, "INSERT INTO notes VALUES (?)"), (1,))
                with pytest.raises(StoreError):
                    await tx.execute("SELECT no_such_column FROM notes")

        if sqlite(target):
            await block()
        else:
            with pytest.raises(StoreError, match="aborted"):
                await block()
        async with rt.transaction() as tx:
            rows = await tx.execute("SELECT n FROM notes")
        assert [r[0] for r in rows] == ([1] if sqlite(target) else [])
        await plain_add_runs(rt, 1)
    assert ran == [1]


async def test_reads_in_the_block_answer_with_what_is_committed(
    target: tuple[str, dict[str, Any]],
) -> None:
    """Before, on SQLite, a read that overlays memory (listings, counts, statistics,
    attempts) waited in the block for the writes the block holds: for ever."""
    rt, ran = make(target)
    async with rt, asyncio.timeout(LIMIT):
        done = await rt.add("echo", 1)
        await rt.wait(done, timeout=LIMIT)
        async with rt.transaction() as tx:
            added = await rt.add("echo", 2, tx=tx)
            assert [j.id for j in (await rt.jobs()).jobs] == [done]  # the block's: not yet
            assert await rt.count() == 1
            assert (await rt.stats()).counts["SUCCESS"] == 1
            assert [a.number for a in await rt.attempts(done)] == [1]
            assert (await rt.get(done)).result == 1
            with pytest.raises(JobNotFound):
                await rt.get(added)  # it exists once the block commits
        assert (await rt.wait(added, timeout=LIMIT)).result == 2
    assert sorted(ran) == [1, 2]


async def test_a_write_that_commits_apart_is_refused_in_the_block_and_changes_nothing(
    target: tuple[str, dict[str, Any]],
) -> None:
    """Before, on SQLite, each of these waited for ever in the block (its commit
    waits for the block, which waits for it), ``rt.stop()`` too."""
    db, base = target
    rt = Runtime(db, **base)
    rt.pool("slow", concurrency=1)
    gate = asyncio.Event()

    @rt.task(name="hold", pool="slow")
    async def hold(job: JobContext) -> str:
        await gate.wait()
        return "held"

    @rt.task(name="echo")
    async def echo(job: JobContext, n: int) -> int:
        return n

    @rt.task(name="boom")
    async def boom(job: JobContext) -> None:
        raise ValueError("boom")

    async with rt, asyncio.timeout(LIMIT):
        running = await rt.add("hold")
        waiting = await rt.add("hold")
        while (await rt.get(running)).status is not JobStatus.RUNNING:
            await asyncio.sleep(0.01)
        failed = await rt.add("boom")
        assert (await rt.wait(failed, timeout=LIMIT)).status is JobStatus.FAILURE
        await rt.schedules.create("nightly", "echo", "0 3 * * *", args=[1])
        before = await stored_states(rt)
        async with rt.transaction() as tx:
            for call, attempt in (
                ("rt.cancel()", rt.cancel(waiting)),
                ("rt.cancel()", rt.cancel(running)),
                ("rt.retry()", rt.retry(failed)),
                ("rt.run_now()", rt.run_now(waiting)),
                ("rt.bulk()", rt.bulk("cancel", ids=[waiting])),
                ("rt.cleanup()", rt.cleanup(older_than=0)),
                ("rt.prune_history()", rt.prune_history(0)),
                ("rt.change_pool()", rt.change_pool("slow", paused=True)),
                (
                    "rt.schedules.create()",
                    rt.schedules.create("other", "echo", "@hourly", args=[2]),
                ),
                ("rt.schedules.pause()", rt.schedules.pause("nightly")),
                ("rt.schedules.resume()", rt.schedules.resume("nightly")),
                ("rt.schedules.update()", rt.schedules.update("nightly", args=[3])),
                ("rt.schedules.delete()", rt.schedules.delete("nightly")),
                ("rt.schedules.run_now()", rt.schedules.run_now("nightly")),
                ("rt.stop()", rt.stop()),
            ):
                with pytest.raises(InvalidOption, match=re.escape(call)) as refused:
                    await attempt
                assert refused.value.field == "tx"
            in_tx = await rt.add("echo", 4, tx=tx)  # the block goes on
        assert rt.started
        assert [s for s in await stored_states(rt) if s[0] != in_tx] == before
        [nightly] = await rt.schedules.list()
        assert (nightly.paused, nightly.definition.args) == (False, (1,))
        assert not rt.pools["slow"].statistics().paused
        assert (await rt.wait(in_tx, timeout=LIMIT)).result == 4
        # Each call works after the block.
        assert (await rt.cancel(waiting)).status is JobStatus.CANCELLED
        gate.set()
        assert (await rt.wait(running, timeout=LIMIT)).result == "held"


async def stored_states(rt: Runtime) -> list[tuple[int, JobStatus]]:
    return sorted((j.id, j.status) for j in (await rt.jobs()).jobs)


async def test_an_on_failed_hook_refuses_a_write_that_commits_apart(
    target: tuple[str, dict[str, Any]],
) -> None:
    """The hook runs in the transaction that writes the failure: before, on SQLite, an
    add without ``tx=`` in it waited until ``hook_timeout`` cut the hook short and undid
    what it wrote. Now it is refused at once, and the hook goes on with ``tx=tx``."""
    db, base = target
    rt = Runtime(db, hook_timeout=LIMIT, **base)
    seen: list[str] = []

    @rt.task(name="echo")
    async def echo(job: JobContext, n: int) -> int:
        return n

    async def on_failed(job: Any, tx: Any) -> None:
        for attempt in (rt.add("echo", 1), rt.cancel(job.id)):
            try:
                await attempt
                seen.append("ran")
            except InvalidOption as exc:
                seen.append(exc.field)
        seen.append(str(await rt.add("echo", 2, tx=tx)))

    @rt.task(name="bad", on_failed=on_failed)
    async def bad(job: JobContext) -> None:
        raise ValueError("no")

    async with rt, asyncio.timeout(LIMIT):
        job = await rt.add("bad")
        assert (await rt.wait(job, timeout=LIMIT)).status is JobStatus.FAILURE
        assert seen[:2] == ["tx", "tx"]
        follow_up = int(seen[2])
        assert (await rt.wait(follow_up, timeout=LIMIT)).result == 2


async def test_an_id_handed_out_in_a_rolled_back_transaction_is_never_handed_out_again(
    target: tuple[str, dict[str, Any]],
) -> None:
    """Before, the rollback undid the id sequence's advance with the rows, and the
    next add was given the same id: an application that had logged or shown the
    first found another job under it. Ids handed out stay used."""
    rt, ran = make(target)
    async with rt, asyncio.timeout(LIMIT):
        first = await rt.add("echo", 1)
        handed: list[int] = []
        with pytest.raises(RuntimeError, match="the application changed its mind"):
            async with rt.transaction() as tx:
                handed += [await rt.add("echo", 2, tx=tx), await rt.add("echo", 3, tx=tx)]
                raise RuntimeError("the application changed its mind")
        with pytest.raises(JobNotFound):
            await rt.get(handed[-1])
        after = await rt.add("echo", 4)
        assert first < handed[0] < handed[1] < after, (first, handed, after)
        await plain_add_runs(rt, 5)
    assert sorted(ran) == [1, 4, 5]


async def add_undone(rt: Runtime, tx: Any, n: int) -> int:
    """An add in ``tx`` that a ``ROLLBACK TO`` its own savepoint undoes: its id."""
    await tx.execute("SAVEPOINT undone")
    job_id = await rt.add("echo", n, tx=tx)
    await tx.execute("ROLLBACK TO undone")
    await tx.execute("RELEASE undone")
    return job_id


async def test_ids_a_rollback_to_a_savepoint_undid_stay_used(
    target: tuple[str, dict[str, Any]],
) -> None:
    """A ``ROLLBACK TO`` took the sequence back with the rows it undid (SQLite): the
    next add in the block, and the first after it, were given the undone id."""
    rt, ran = make(target)
    async with rt, asyncio.timeout(LIMIT):
        async with rt.transaction() as tx:
            undone = await add_undone(rt, tx, 1)
            after_in_block = await rt.add("echo", 2, tx=tx)
            undone_last = await add_undone(rt, tx, 3)
        after = await rt.add("echo", 4)
        assert undone < after_in_block < undone_last < after, (
            undone,
            after_in_block,
            undone_last,
            after,
        )
        await plain_add_runs(rt, 5)
    assert sorted(ran) == [2, 4, 5]


async def test_the_first_id_of_a_database_undone_by_a_rollback_to_stays_used(
    target: tuple[str, dict[str, Any]],
) -> None:
    """On SQLite a ``ROLLBACK TO`` of the database's first add removes the
    sequence's row too: the commit moved nothing, and the next add got id 1 again."""
    rt, ran = make(target)
    async with rt, asyncio.timeout(LIMIT):
        async with rt.transaction() as tx:
            undone = await add_undone(rt, tx, 1)
        after = await rt.add("echo", 2)
        assert undone < after, (undone, after)
        await plain_add_runs(rt, 3)
    assert sorted(ran) == [2, 3]


async def test_ids_of_a_first_add_rolled_back_stay_used(
    target: tuple[str, dict[str, Any]],
) -> None:
    """The very first add of a database, rolled back (on SQLite its rollback
    removes the sequence's row as well)."""
    rt, _ = make(target)
    async with rt, asyncio.timeout(LIMIT):
        with pytest.raises(RuntimeError):
            async with rt.transaction() as tx:
                handed = await rt.add("echo", 1, tx=tx)
                raise RuntimeError("rolled back")
        assert await rt.add("echo", 2) > handed
