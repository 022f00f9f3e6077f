"""The runtime on PostgreSQL: ``Runtime("postgresql://...")`` does what it does on SQLite.

The store's own behaviour is the conformance suite's (tests/test_store_conformance.py,
run against PostgreSQL too); these tests drive the whole runtime through the URL a
user gives: jobs run and stream, a restart runs what was waiting, a standby takes
over from an owner that stopped, the application's transaction holds its jobs,
and the HTTP API serves from it. Each test has a schema of its own.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pg_server
import pytest
from asyncpg.pool import PoolConnectionProxy
from core_support import collect, new_job
from store_backends import open_store

from taskrt import JobContext, JobInfo, JobNotFound, JobStatus, QueueFull, Runtime, Transaction
from taskrt.cli import main
from taskrt.errors import InvalidOption, SchemaTooNew, StoreError
from taskrt.models import EventType
from taskrt.scheduler import define
from taskrt.store import JobStore
from taskrt.store.groupcommit import ROLLBACK_RETRIES
from taskrt.store.postgres import PgStore
from taskrt.store.postgres.conns import HeldConnections
from taskrt.store.postgres.copy import NOT_COPIED, TABLES, copy_sqlite_to_postgres
from taskrt.store.postgres.sql import (
    ATTEMPT_PART,
    CANCEL_PART,
    FAIL_PART,
    MIGRATIONS,
    REASON_PART,
    SCHEMA_VERSION,
)
from taskrt.store.postgres.writer import run_pack
from taskrt.store.protocol import InsertResult
from taskrt.web import create_app


@pytest.fixture
def url(tmp_path: Path) -> str:
    """This test's database: the session's PostgreSQL database, a schema of its own."""
    base = pg_server.require()
    return f"{base}?schema={pg_server.fresh_schema(tmp_path)}"


def app(url: str, **options: object) -> Runtime:
    rt = Runtime(url, **options)  # type: ignore[arg-type]
    rt.pool("p", concurrency=2)

    @rt.task(pool="p")
    async def double(job: JobContext, n: int) -> int:
        await job.progress(1, 2, "halfway")
        return n * 2

    @rt.task(pool="p", attempts=2, retry="0s")
    async def flaky(job: JobContext) -> int:
        if job.attempt == 1:
            raise RuntimeError("first time")
        return job.attempt

    return rt


async def cut_off(client: Runtime) -> None:
    """As on another machine: the client has no relay to the owner, and works
    through the database."""
    relay, client.remote = client.remote, None
    assert relay is not None
    await relay.close()


@pytest.mark.parametrize("mode", ["nodes", "owner"])
async def test_jobs_run_retry_and_stream_their_events(url: str, mode: str) -> None:
    async with app(url, mode=mode) as rt:
        assert rt.role == {"owner": "owner", "nodes": "node"}[mode]
        stream = rt.subscribe(job_id := await rt.pool("p").add("double", 21))
        events = await collect(stream)
        assert [e.type for e in events][-1] == EventType.SUCCESS
        assert EventType.PROGRESS in [e.type for e in events]
        done = await rt.get(job_id)
        assert (done.status, done.result, done.message) == (JobStatus.SUCCESS, 42, "halfway")
        retried = await rt.wait(await rt.pool("p").add("flaky"), timeout=5)
        assert (retried.status, retried.result, retried.attempts) == (JobStatus.SUCCESS, 2, 2)
        ids = [await rt.pool("p").add("double", n) for n in range(20)]
        infos = [await rt.wait(i, timeout=5) for i in ids]
        assert [i.result for i in infos] == [2 * n for n in range(20)]
        assert ids == sorted(ids) and len(set(ids)) == 20
        assert (await rt.stats()).counts["SUCCESS"] == 22


async def test_text_with_a_nul_character_is_stored_or_refused_never_lost(url: str) -> None:
    """PostgreSQL's text holds no NUL character. A handler's exception that has one
    fails its job (the error stored escaped), a result holding one is JSON (escaped,
    stored), and where text is stored as given (a progress message, a key, a filter)
    it is refused with the field named. Before, the error's write was refused and
    the job stayed RUNNING in the database while memory said FAILURE; filters with
    one answered 500."""
    rt = Runtime(url, mode="nodes")

    @rt.task
    async def bad(job: JobContext) -> None:
        raise RuntimeError("a\x00b")

    @rt.task
    async def says(job: JobContext) -> str:
        with pytest.raises(InvalidOption, match="message"):
            await job.progress(1, 2, "x\x00y")
        return "r\x00s"

    async with rt:
        failed = await rt.wait(await rt.add(bad), timeout=5)
        done = await rt.wait(await rt.add(says), timeout=5)
        await rt.store.flush()
        schema = url.rsplit("schema=", 1)[1]
        conn = await asyncpg.connect(url.split("?")[0], server_settings={"search_path": schema})
        try:
            stored = {r["id"]: r for r in await conn.fetch("SELECT id, status, error FROM jobs")}
        finally:
            await conn.close()
        transport = httpx.ASGITransport(app=create_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            replies = [
                await client.post("/jobs", json={"task": "says", "unique_key": "a\x00b"}),
                await client.post("/jobs/purge", json={"pool": "a\x00b"}),
                await client.post("/jobs/cancel", json={"metadata": {"k": "a\x00b"}}),
                await client.post("/jobs/purge", json={"metadata": {"a\x00b": 1}}),
                await client.post(
                    "/jobs/purge",
                    content=b'{"metadata": {"k": 1e400}}',
                    headers={"content-type": "application/json"},
                ),
                await client.get("/jobs/count", params={"metadata.a\x00b": "1"}),
                await client.get("/jobs", params={"task": "a\x00b"}),
            ]
    assert (failed.status, failed.error) == (JobStatus.FAILURE, "RuntimeError: a\\x00b")
    assert stored[failed.id]["status"] == "FAILURE"
    assert stored[failed.id]["error"] == "RuntimeError: a\\x00b"
    assert (done.status, done.result, stored[done.id]["status"]) == (
        JobStatus.SUCCESS,
        "r\x00s",
        "SUCCESS",
    )
    assert [r.status_code for r in replies] == [422] * len(replies), [r.text for r in replies]
    assert [r.json()["error"].get("field") for r in replies] == [
        "unique_key",
        "pool",
        "metadata.k",
        "metadata",
        "metadata.k",
        "metadata",
        "task",
    ]


@pytest.mark.parametrize("mode", ["nodes", "owner"])
async def test_without_prepared_statements_as_behind_pgbouncer(url: str, mode: str) -> None:
    """``statement_cache_size=0`` (PgBouncer in transaction mode): the same jobs, the same results."""
    async with app(f"{url}&statement_cache_size=0", mode=mode) as rt:
        assert isinstance(rt.store, PgStore) and rt.store.statement_cache_size == 0
        ids = [await rt.pool("p").add("double", n) for n in range(10)]
        assert [(await rt.wait(i, timeout=5)).result for i in ids] == [2 * n for n in range(10)]
    with pytest.raises(InvalidOption, match="statement_cache_size"):
        Runtime(f"{url}&statement_cache_size=many")


@pytest.mark.parametrize("mode", ["nodes", "owner"])
async def test_a_restart_runs_the_jobs_that_were_waiting(url: str, mode: str) -> None:
    async with app(url, mode=mode, workers=False) as client:
        ids = [await client.pool("p").add("double", n) for n in range(5)]
        assert client.role == "client"
    async with app(url, mode=mode) as rt:
        results = [(await rt.wait(i, timeout=5)).result for i in ids]
    assert results == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("mode", ["nodes", "owner"])
async def test_a_job_added_to_an_idle_pool_is_stored_running_by_its_add(
    url: str, mode: str
) -> None:
    """Pool note 9: the add's own statement starts it; a busy pool's job waits."""
    gate = asyncio.Event()
    rt = Runtime(url, mode=mode)  # type: ignore[arg-type]
    rt.pool("p", concurrency=1)

    @rt.task(pool="p")
    async def hold(job: JobContext) -> None:
        await gate.wait()

    base, _, schema = url.partition("?schema=")
    conn = await asyncpg.connect(base)
    try:
        async with rt:
            first = await rt.pool("p").add(hold)
            # Read before this coroutine yields: no write but the add's has committed.
            row = await conn.fetchrow(
                f'SELECT status, attempts, seq FROM "{schema}".jobs WHERE id = $1', first
            )
            assert tuple(row) == ("RUNNING", 1, 2)
            second = await rt.pool("p").add(hold)
            row = await conn.fetchrow(
                f'SELECT status, attempts FROM "{schema}".jobs WHERE id = $1', second
            )
            assert tuple(row) == ("WAITING", 0)
            gate.set()
            for job_id in (first, second):
                assert (await rt.wait(job_id, timeout=5)).attempts == 1
    finally:
        await conn.close()


async def test_a_standby_takes_over_when_the_owner_stops(url: str) -> None:
    owner, standby = app(url, mode="owner"), app(url, mode="owner")
    async with owner:
        await standby.start()
        try:
            assert (owner.role, standby.role) == ("owner", "standby")
            await owner.stop()
            async with asyncio.timeout(5):
                while standby.role != "owner":
                    await asyncio.sleep(0.02)
            info = await standby.wait(await standby.pool("p").add("double", 5), timeout=5)
            assert info.result == 10
        finally:
            await standby.stop()


@pytest.mark.parametrize("mode", ["nodes", "owner"])
async def test_jobs_added_in_the_applications_transaction_exist_only_if_it_commits(
    url: str,
    mode: str,
) -> None:
    async with app(url, mode=mode) as rt:
        async with rt.transaction() as tx:
            await tx.execute("CREATE TABLE orders (id BIGINT PRIMARY KEY)")
        async with rt.transaction() as tx:
            await tx.execute("INSERT INTO orders (id) VALUES ($1)", (1,))
            kept = await rt.pool("p").add("double", 1, tx=tx)
        with pytest.raises(RuntimeError, match="changed my mind"):
            async with rt.transaction() as tx:
                await tx.execute("INSERT INTO orders (id) VALUES ($1)", (2,))
                await rt.pool("p").add("double", 2, tx=tx)
                raise RuntimeError("changed my mind")
        assert (await rt.wait(kept, timeout=5)).result == 2
        async with rt.transaction() as tx:
            assert [r[0] for r in await tx.execute("SELECT id FROM orders")] == [1]
        assert [j.id for j in (await rt.jobs()).jobs] == [kept]


async def test_a_connection_back_from_an_application_transaction_has_taskrts_settings(
    url: str,
) -> None:
    """``rt.transaction()`` resets what the application's SQL set for the session
    (RESET ALL), which resets taskrt's own settings too: they are set once a
    connection is open, not in its start-up packet (PgBouncer refuses them there),
    so the store sets them again. Without it, the next read on that connection
    found no taskrt table (its search_path gone)."""
    async with app(url, mode="owner") as rt:
        for _ in range(4):
            async with rt.transaction() as tx:
                await tx.execute("SET search_path = public")  # the application's own
                await tx.execute("SET jit = on")
        for _ in range(8):  # the pool's few connections: each one the blocks used
            assert (await rt.jobs()).jobs == []
            assert (await rt.stats()).counts[JobStatus.SUCCESS] == 0
        async with rt.transaction() as tx:
            rows = await tx.execute("SELECT current_setting('search_path'), current_setting('jit')")
        assert list(rows[0]) == [f'"{url.rsplit("=", 1)[1]}", public', "off"]


@pytest.mark.parametrize("mode", ["nodes", "owner"])
async def test_jobs_added_in_the_applications_own_asyncpg_transaction(
    url: str, mode: str, tmp_path: Path
) -> None:
    """``add(..., tx=connection)``: the job exists if and only if the application's
    transaction commits, and the owner starts it at once when it does (NOTIFY; its
    poll here is every 30 s)."""
    schema = pg_server.fresh_schema(tmp_path)
    async with app(url, mode=mode, poll_interval=30) as rt:
        conn = await asyncpg.connect(pg_server.require())
        try:
            path = await conn.fetchval("SHOW search_path")
            await conn.execute(f'CREATE TABLE "{schema}".orders (id BIGINT PRIMARY KEY)')
            async with conn.transaction():
                await conn.execute(f'INSERT INTO "{schema}".orders (id) VALUES (1)')
                kept = await rt.pool("p").add("double", 21, tx=conn)
                assert await conn.fetchval("SHOW search_path") == path  # put back
                with pytest.raises(JobNotFound):
                    await rt.get(kept)  # not committed yet: nobody else sees it
            committed = time.time()
            info = await rt.wait(kept, timeout=5)
            assert (info.status, info.result) == (JobStatus.SUCCESS, 42)
            # Woken by the notification, not by a poll of a second's interval.
            assert info.started_at is not None and info.started_at - committed < 0.5
            with pytest.raises(RuntimeError, match="changed my mind"):
                async with conn.transaction():
                    await conn.execute(f'INSERT INTO "{schema}".orders (id) VALUES (2)')
                    await rt.pool("p").add("double", 2, tx=conn)
                    raise RuntimeError("changed my mind")
            orders = await conn.fetch(f'SELECT id FROM "{schema}".orders')
        finally:
            await conn.close()
        assert [r[0] for r in orders] == [1]
        assert [j.id for j in (await rt.jobs()).jobs] == [kept]
        assert rt.store.counted("p", JobStatus.SUCCESS) == 1
        # A process that cannot reach the owner's relay (another machine) writes
        # the job to the database: the notification wakes the owner (or a node) as well.
        async with app(url, mode=mode, workers=False) as client:
            if mode == "owner":
                await cut_off(client)
            sent = time.time()
            far = await client.pool("p").add("double", 1)
        info = await rt.wait(far, timeout=5)
        assert info.started_at is not None and info.started_at - sent < 0.5


@pytest.mark.parametrize("mode", ["nodes", "owner"])
async def test_an_open_application_transaction_that_added_a_job_holds_up_no_start(
    url: str, mode: str
) -> None:
    """The application's transaction added a job and stays open: jobs added before
    it start meanwhile, in the same pool and in another. Before, in owner mode, its
    add held the count's row of the owner's lifecycle writer (lane 0) until the
    commit, and every start waited for it."""
    async with app(url, mode=mode) as rt:
        rt.pool("q", concurrency=1)
        rt.pool("p").pause()
        rt.pool("q").pause()
        here = await rt.pool("p").add("double", 1)
        there = await rt.pool("q").add("double", 2)
        conn = await asyncpg.connect(pg_server.require())
        try:
            async with conn.transaction():
                held = await rt.pool("p").add("double", 3, tx=conn)
                rt.pool("p").resume()
                rt.pool("q").resume()
                for job_id in (here, there):
                    assert (await rt.wait(job_id, timeout=3)).status is JobStatus.SUCCESS
            assert (await rt.wait(held, timeout=5)).result == 6
        finally:
            await conn.close()


@pytest.mark.parametrize("mode", ["nodes", "owner"])
async def test_adds_in_the_applications_transactions_count_against_a_pools_capacity(
    url: str, mode: str
) -> None:
    """A pool of capacity 2: the third add in one application transaction is
    refused, and so is a later transaction's add once two have committed. Before,
    in owner mode, the owner's check counted its memory, which such jobs reach
    only after their commit: all three were added."""
    async with app(url, mode=mode, poll_interval=30) as rt:
        pool = rt.pool("c", concurrency=1, capacity=2)
        pool.pause()
        conn = await asyncpg.connect(pg_server.require())
        try:
            with pytest.raises(QueueFull):
                async with conn.transaction():
                    for n in range(3):
                        await pool.add("double", n, tx=conn)
            for n in range(2):
                async with conn.transaction():
                    await pool.add("double", n, tx=conn)
            with pytest.raises(QueueFull):
                async with conn.transaction():
                    await pool.add("double", 9, tx=conn)
            waiting = await rt.count(status=JobStatus.WAITING, pool="c")
        finally:
            await conn.close()
    assert waiting == 2


@pytest.mark.parametrize("mode", ["nodes", "owner"])
async def test_an_add_right_after_an_applications_transaction_counts_its_jobs(
    url: str, mode: str
) -> None:
    """A pool of capacity 2, one job waiting: the application's transaction adds a
    second and commits, and the runtime's own add right after it is refused, as is
    one made while such a transaction is open and committed after it. Before, in
    owner mode, the owner's check counted its memory, which a committed job reaches
    only once its notification has arrived and been read: three jobs waited."""
    async with app(url, mode=mode, poll_interval=30) as rt:
        pool = rt.pool("c", concurrency=1, capacity=2)
        pool.pause()
        first = await pool.add("double", 1)
        conn = await asyncpg.connect(pg_server.require())
        watch = await asyncpg.connect(pg_server.require())
        try:
            async with conn.transaction():
                await pool.add("double", 2, tx=conn)
            with pytest.raises(QueueFull):
                await pool.add("double", 3)
            await rt.cancel(first)
            async with conn.transaction():
                await pool.add("double", 4, tx=conn)
                plain = asyncio.create_task(pool.add("double", 5))
                async with asyncio.timeout(5):  # it waits for the last id the transaction holds
                    while not await watch.fetchval(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    ):
                        await asyncio.sleep(0.01)
            with pytest.raises(QueueFull):
                await plain
        finally:
            await conn.close()
            await watch.close()
        assert await rt.count(status=JobStatus.WAITING, pool="c") == 2


async def test_ids_handed_out_in_the_applications_rolled_back_transaction_stay_used(
    url: str,
) -> None:
    """The application's own asyncpg transaction rolls back (taskrt is not told):
    the ids it was handed are not handed out again (``sql.SCHEMA_V12``)."""
    async with app(url, mode="owner") as rt:
        first = await rt.pool("p").add("double", 1)
        conn = await asyncpg.connect(pg_server.require())
        try:
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    handed = await rt.pool("p").add("double", 2, tx=conn)
                    raise RuntimeError("the application's rollback")
        finally:
            await conn.close()
        after = await rt.pool("p").add("double", 3)
        assert first < handed < after
        many = await rt.pool("p").add_many("double", [(4,), (5,)])  # the batched statement
        assert after < many[0] < many[1]


async def test_an_add_that_fails_in_the_applications_transaction_says_why(url: str) -> None:
    """Before, taskrt put the search path back in the aborted transaction after its
    insert failed, and that statement's "current transaction is aborted" was the
    error raised, the cause hidden in its context."""
    async with app(url, mode="owner") as rt:
        conn = await asyncpg.connect(pg_server.require())
        try:
            async with conn.transaction(readonly=True):
                with pytest.raises(StoreError, match="read-only transaction") as refused:
                    await rt.pool("p").add("double", 1, tx=conn)
            assert "aborted" not in str(refused.value)
        finally:
            await conn.close()
        # A connection to another database: no taskrt tables in the runtime's schema,
        # whether or not that database has tables of the same names of its own (in
        # public, on its search_path). Before, with them, the add ran against those:
        # 'column "last" does not exist'. The application's transaction goes on.
        async with pg_server.scratch_database() as elsewhere:
            conn = await asyncpg.connect(elsewhere)
            try:
                for tables in ((), ("jobs (id serial, title text)", "job_ids (x int)")):
                    for table in tables:
                        await conn.execute(f"CREATE TABLE {table}")
                    async with conn.transaction():
                        with pytest.raises(StoreError, match="has no taskrt tables") as refused:
                            await rt.pool("p").add("double", 2, tx=conn)
                        assert await conn.fetchval("SELECT count(*) FROM pg_class") > 0
                    assert "aborted" not in str(refused.value)
            finally:
                await conn.close()
        assert (await rt.jobs()).jobs == []
        assert await rt.pool("p").add("double", 3) > 0  # the runtime keeps running


@pytest.mark.parametrize(
    ("mode", "isolation"), [("nodes", "repeatable_read"), ("owner", "serializable")]
)
async def test_an_add_in_a_snapshot_transaction_that_conflicts_is_the_applications_to_retry(
    url: str, mode: str, isolation: str
) -> None:
    """At REPEATABLE READ or SERIALIZABLE, an add committed after the application's
    snapshot makes its own add a serialization failure (the last issued id is one
    row, note 1): raised as the driver's own error, as for the application's
    statements, with a note saying to retry; retried, it commits. Before, it was
    ``StoreUnavailable`` ("cannot be written now"), as if the database were down."""
    async with app(url, mode=mode, poll_interval=30) as rt:
        conn = await asyncpg.connect(pg_server.require())
        try:
            with pytest.raises(asyncpg.SerializationError) as refused:
                async with conn.transaction(isolation=isolation):  # type: ignore[arg-type]
                    await conn.execute("SELECT 1")  # its snapshot
                    before = await rt.pool("p").add("double", 1)  # committed after it
                    await rt.pool("p").add("double", 2, tx=conn)
            assert "serialization failure in your transaction: retry it" in "".join(
                refused.value.__notes__
            )
            async with conn.transaction(isolation=isolation):  # type: ignore[arg-type]
                await conn.execute("SELECT 1")
                retried = await rt.pool("p").add("double", 2, tx=conn)
        finally:
            await conn.close()
        assert (await rt.wait(retried, timeout=5)).result == 4
        assert [j.id for j in (await rt.jobs()).jobs] == [retried, before]
        # A connection outside a transaction, its session at REPEATABLE READ: the add
        # is taskrt's own transaction (at READ COMMITTED), nothing for the application
        # to retry, though an add committed while it waited for the last id.
        holder = await asyncpg.connect(pg_server.require())
        alone = await asyncpg.connect(
            pg_server.require(),
            server_settings={"default_transaction_isolation": "repeatable read"},
        )
        try:
            async with holder.transaction():
                held = await rt.pool("p").add("double", 3, tx=holder)
                waiting = asyncio.create_task(rt.pool("p").add("double", 4, tx=alone))
                await asyncio.sleep(0.3)  # it waits for the ids' row the holder locked
            added = await asyncio.wait_for(waiting, 5)
        finally:
            await holder.close()
            await alone.close()
        assert held < added
        assert (await rt.wait(added, timeout=5)).result == 8


async def test_an_add_in_a_sqlalchemy_snapshot_transaction_that_conflicts_is_sqlalchemys_error(
    url: str,
) -> None:
    """The same failure in SQLAlchemy's ``AsyncConnection`` is SQLAlchemy's own
    ``DBAPIError`` (SQLSTATE 40001), as for the application's statements there."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(
        pg_server.require().replace("postgresql://", "postgresql+asyncpg://"),
        isolation_level="REPEATABLE READ",
    )
    try:
        async with app(url, mode="owner") as rt:
            with pytest.raises(DBAPIError) as refused:
                async with engine.begin() as conn:
                    await conn.execute(text("SELECT 1"))
                    await rt.pool("p").add("double", 1)
                    await rt.pool("p").add("double", 2, tx=conn)
            assert getattr(refused.value.orig, "sqlstate", None) == "40001"
            assert "retry it" in "".join(refused.value.__notes__)
            async with engine.begin() as conn:
                retried = await rt.pool("p").add("double", 2, tx=conn)
            assert (await rt.wait(retried, timeout=5)).result == 4
    finally:
        await engine.dispose()


@pytest.mark.parametrize("mode", ["nodes", "owner"])
async def test_jobs_added_in_a_sqlalchemy_transaction(url: str, mode: str) -> None:
    """SQLAlchemy's ``AsyncConnection`` over asyncpg works as ``tx=`` too."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(
        pg_server.require().replace("postgresql://", "postgresql+asyncpg://")
    )
    try:
        async with app(url, mode=mode) as rt:
            async with engine.begin() as conn:
                await conn.execute(text("SELECT 1"))
                kept = await rt.pool("p").add("double", 4, tx=conn)
            with pytest.raises(RuntimeError):
                async with engine.begin() as conn:
                    await rt.pool("p").add("double", 5, tx=conn)
                    raise RuntimeError("rolled back")
            assert (await rt.wait(kept, timeout=5)).result == 8
            assert [j.id for j in (await rt.jobs()).jobs] == [kept]
            with pytest.raises(InvalidOption, match="tx"):
                await rt.pool("p").add("double", 1, tx=object())
    finally:
        await engine.dispose()


async def test_a_pause_from_another_machine_reaches_the_owner_at_once(url: str) -> None:
    """A process with no relay to the owner records a pause; the notification makes
    the owner apply it in milliseconds (its poll here is every 30 s), and the resume."""
    async with (
        app(url, mode="owner", poll_interval=30) as owner,
        app(url, mode="owner", workers=False) as far,
    ):
        await cut_off(far)
        pool = owner.pool("p")
        for paused in (True, False):
            await far.change_pool("p", paused=paused)
            async with asyncio.timeout(0.5):
                while pool.paused is not paused:
                    await asyncio.sleep(0.005)
        assert (await owner.wait(await far.pool("p").add("double", 3), timeout=5)).result == 6


async def test_the_owners_listener_comes_back_after_its_connection_is_killed(url: str) -> None:
    """``pg_terminate_backend`` of the owner's listener: it listens again within a
    second or two, and the next add from another machine starts at once (poll: 30 s)."""
    async with (
        app(url, mode="owner", poll_interval=30) as owner,
        app(url, mode="owner", workers=False) as far,
    ):
        await cut_off(far)
        admin = await asyncpg.connect(pg_server.require())
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'taskrt owner listener' AND datname = current_database()"
            )
            assert killed == 1
            async with asyncio.timeout(5):  # listening again, on a new session
                while not await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                    "'taskrt owner listener' AND datname = current_database() "
                    "AND query LIKE 'LISTEN%'"
                ):
                    await asyncio.sleep(0.05)
        finally:
            await admin.close()
        sent = time.time()
        info = await owner.wait(await far.pool("p").add("double", 5), timeout=5)
        assert info.result == 10
        assert info.started_at is not None and info.started_at - sent < 0.5


async def test_a_listener_that_reconnects_after_the_store_stopped_listening_hangs_up(
    tmp_path: Path,
) -> None:
    """A dropped listener connects again a second later; a store that stopped
    listening meanwhile (a runtime stopping) must not be left with a connection
    that goes on listening for nobody. Here the reconnect (``_listen``, which the
    timer of a dropped listener runs) finishes after ``unlisten``."""
    listeners = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'taskrt owner listener' "
        "AND datname = current_database()"
    )
    async with open_store("postgres", tmp_path) as store:
        assert isinstance(store, PgStore)
        await store.listen(lambda payload: None)
        await store.unlisten()
        before = {r[0] for r in await store.fetch_all(listeners, ())}
        await store._listen()  # the reconnect, late
        async with asyncio.timeout(5):
            while {r[0] for r in await store.fetch_all(listeners, ())} - before:
                await asyncio.sleep(0.02)  # a hung-up session leaves the view soon after
        assert store._listener is None


@pytest.mark.parametrize("mode", ["nodes", "owner"])
async def test_on_failed_writes_with_the_failure_through_the_driver(url: str, mode: str) -> None:
    """``on_failed(job, tx)``: PostgreSQL's SQL through ``tx`` and ``tx.driver`` (asyncpg)
    commits with the failure; a hook that raises rolls back only its own writes."""
    rt = app(url, mode=mode)

    async def audit(job: JobInfo, tx: Transaction) -> None:
        assert isinstance(tx.driver, asyncpg.Connection | PoolConnectionProxy)
        await tx.execute("INSERT INTO audit VALUES ($1, $2)", (job.id, "via tx"))
        await tx.driver.execute("INSERT INTO audit VALUES ($1, $2)", job.id, "via driver")
        if job.args == (2,):
            raise RuntimeError("hook crashed")

    @rt.task(pool="p", attempts=1, on_failed=audit)
    async def doomed(job: JobContext, n: int) -> None:
        raise ValueError(f"no luck {n}")

    async with rt:
        async with rt.transaction() as tx:
            await tx.execute("CREATE TABLE audit (job_id BIGINT, note TEXT)")
        first, second = [await rt.pool("p").add(doomed, n) for n in (1, 2)]
        for job_id in (first, second):
            assert (await rt.wait(job_id, timeout=5)).status is JobStatus.FAILURE
        async with rt.transaction() as tx:
            rows = await tx.execute("SELECT job_id, note FROM audit ORDER BY note")
    assert [tuple(r) for r in rows] == [(first, "via driver"), (first, "via tx")]


async def test_an_on_failed_transaction_the_database_rolls_back_runs_again_whole(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A deadlock in the hook's own SQL is not the hook's fault: the database rolls
    the transaction back, and the failure and the hook run again in a new one,
    which commits both (before, the failure was stored without the hook's writes)."""
    rt = app(url)
    calls: list[int] = []
    other = await asyncpg.connect(pg_server.require())
    await other.execute(f"SET search_path = {url.rsplit('schema=', 1)[1]}")

    async def other_side() -> None:
        """Takes row 2, then waits for row 1, which the hook's first run holds."""
        async with other.transaction():
            await other.execute("SET LOCAL deadlock_timeout = '10s'")  # the hook detects it
            await other.execute("UPDATE ledger SET n = n + 1 WHERE id = 2")
            await other.execute("UPDATE ledger SET n = n + 1 WHERE id = 1")

    async def settle(job: JobInfo, tx: Transaction) -> None:
        calls.append(job.id)
        conn = tx.driver
        await conn.execute("UPDATE ledger SET n = n + 1 WHERE id = 1")
        if len(calls) == 1:
            await conn.execute("SET LOCAL deadlock_timeout = '10ms'")
            rival = asyncio.create_task(other_side())
            await blocked_by(other_watch, conn, "the other session")
            try:
                await conn.execute("UPDATE ledger SET n = n + 1 WHERE id = 2")
            finally:
                rival_done.append(rival)
        await conn.execute("INSERT INTO audit VALUES ($1)", job.id)

    @rt.task(pool="p", attempts=1, on_failed=settle)
    async def doomed(job: JobContext) -> None:
        raise ValueError("no luck")

    rival_done: list[asyncio.Task[None]] = []
    other_watch = await asyncpg.connect(pg_server.require())
    try:
        async with rt:
            async with rt.transaction() as tx:
                await tx.execute("CREATE TABLE audit (job_id BIGINT)")
                await tx.execute("CREATE TABLE ledger (id INT PRIMARY KEY, n INT)")
                await tx.execute("INSERT INTO ledger VALUES (1, 0), (2, 0)")
            job_id = await rt.pool("p").add(doomed)
            info = await rt.wait(job_id, timeout=10)
            await rival_done[0]
            async with rt.transaction() as tx:
                audit = await tx.execute("SELECT job_id FROM audit")
                ledger = await tx.execute("SELECT id, n FROM ledger ORDER BY id")
    finally:
        await other.close()
        await other_watch.close()
    assert info.status is JobStatus.FAILURE and info.error is not None
    assert "no luck" in info.error
    assert calls == [job_id, job_id]  # the hook ran again after the rollback
    assert [tuple(r) for r in audit] == [(job_id,)]  # and its second run committed
    assert [tuple(r) for r in ledger] == [(1, 2), (2, 1)]  # the rival's, then the hook's
    assert any("rolled back by the database" in r.getMessage() for r in caplog.records)


async def test_an_on_failed_hook_rolled_back_every_time_ends_as_one_that_raised(
    url: str,
) -> None:
    """The runs again are bounded: a hook whose error comes from a deadlock every
    time (here raised from the driver's own error class) runs ``1 + ROLLBACK_RETRIES``
    times; then the failure is stored without its writes, as when a hook raises."""
    rt = app(url)
    calls: list[int] = []

    async def settle(job: JobInfo, tx: Transaction) -> None:
        calls.append(job.id)
        await tx.execute("INSERT INTO audit VALUES ($1)", (job.id,))
        try:
            raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
        except asyncpg.PostgresError as exc:
            raise RuntimeError("could not settle") from exc

    @rt.task(pool="p", attempts=1, on_failed=settle)
    async def doomed(job: JobContext) -> None:
        raise ValueError("no luck")

    async with rt:
        async with rt.transaction() as tx:
            await tx.execute("CREATE TABLE audit (job_id BIGINT)")
        job_id = await rt.pool("p").add(doomed)
        info = await rt.wait(job_id, timeout=10)
        async with rt.transaction() as tx:
            audit = await tx.execute("SELECT job_id FROM audit")
    assert info.status is JobStatus.FAILURE
    assert calls == [job_id] * (1 + ROLLBACK_RETRIES)
    assert list(audit) == []


@pytest.mark.parametrize("mode", ["nodes", "owner"])
async def test_the_http_api_serves_from_postgresql(url: str, mode: str) -> None:
    async with app(url, mode=mode) as rt:
        transport = httpx.ASGITransport(app=create_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post("/jobs", json={"task": "double", "args": [4]})
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
            await rt.wait(job_id, timeout=5)
            body = (await client.get(f"/jobs/{job_id}")).json()
            assert (body["status"], body["result"]) == ("SUCCESS", 8)
            assert (await client.get("/jobs/999999")).status_code == 404


async def test_a_bad_url_or_schema_is_a_clear_error(url: str) -> None:
    with pytest.raises(InvalidOption, match="schema"):
        Runtime(url.replace("?schema=", "?schema=bad-name-"))
    with pytest.raises(InvalidOption, match="schema"):  # not the default schema, silently
        Runtime(url.split("?")[0] + "?schema=")
    # Logs, errors and repr name the database without its password.
    secret = Runtime("postgresql://app:s3cret@db.internal:5433/app?schema=jobs")
    assert secret.path == "postgresql://app:***@db.internal:5433/app?schema=jobs"
    assert "s3cret" not in repr(secret)
    rt = Runtime("postgresql://nobody@127.0.0.1:1/nowhere")
    with pytest.raises(StoreError, match="cannot open database"):
        await rt.start()


async def test_a_schema_of_a_newer_release_is_refused(url: str) -> None:
    store = PgStore(url)
    assert await store.migrate() == (0, SCHEMA_VERSION)
    assert await store.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)  # again: nothing to do
    await store.open()
    try:
        async with store.transaction() as tx:
            await tx.execute("UPDATE meta SET value = '99' WHERE key = 'schema.version'")
    finally:
        await store.close()
    with pytest.raises(SchemaTooNew):
        await PgStore(url).open()


@pytest.mark.parametrize(
    ("table", "why"),
    [
        (
            "(key TEXT PRIMARY KEY, value TEXT); INSERT INTO meta VALUES ('schema.version', 'v2')",
            "its 'schema.version' is 'v2', not a version number",
        ),
        ("(k TEXT)", 'column "value" does not exist'),
    ],
)
async def test_a_schema_holding_a_meta_table_of_another_program_is_a_clear_error(
    url: str, table: str, why: str
) -> None:
    """A schema where another program keeps a ``meta`` table: the runtime and
    ``taskrt migrate`` name the table and what is wrong with it, and change nothing
    (it was a ValueError from int(), exit 1, for a version that is no number)."""
    base, _, schema = url.partition("?schema=")
    conn = await asyncpg.connect(base, server_settings={"search_path": schema})
    try:
        await conn.execute(f"CREATE SCHEMA {schema}; CREATE TABLE meta {table}")
        expected = f'the table "{schema}".meta is not taskrt\'s \\({why}\\)'
        with pytest.raises(StoreError, match=expected):
            await Runtime(url).start()
        assert await asyncio.to_thread(main, ["migrate", "--db", url]) == 4
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
        assert [row[0] for row in tables] == ["meta"]
    finally:
        await conn.close()


async def test_an_open_cancelled_half_way_leaves_no_connection_open(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store whose open is cancelled after its pool is made (a runtime stopped
    while it starts) closes the pool and the claims' connections: none stays
    open on the server for a store nobody will close."""
    reached = asyncio.Event()
    opened: list[Any] = []
    open_held = HeldConnections.open

    async def stuck(held: HeldConnections) -> None:
        opened.append(held)
        await open_held(held)  # its first connection is open ...
        reached.set()
        await asyncio.Event().wait()  # ... and the open goes no further

    monkeypatch.setattr(HeldConnections, "open", stuck)
    store = PgStore(url)
    store.node = "n1"  # a node claims on connections of its own
    opening = asyncio.create_task(store.open())
    await asyncio.wait_for(reached.wait(), 10)
    pool = store.pool
    assert pool.get_size() > 0 and opened
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    assert pool._closed  # type: ignore[attr-defined]
    assert opened[0]._closed and not opened[0]._idle  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="not open"):
        store.pool  # noqa: B018


async def test_migrations_from_several_processes_at_once_run_once(url: str) -> None:
    found = await asyncio.gather(*(PgStore(url).migrate() for _ in range(4)))
    done = (SCHEMA_VERSION, SCHEMA_VERSION)
    assert sorted(found) == [(0, SCHEMA_VERSION), done, done, done]


async def test_a_schema_of_the_first_release_is_upgraded_and_keeps_its_jobs(url: str) -> None:
    """Version 1 (one owner) gains what every node running workers needs, jobs kept."""
    schema = url.rsplit("schema=", 1)[1]
    conn = await asyncpg.connect(url.split("?")[0])
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"; SET search_path = "{schema}"')
        for statement in MIGRATIONS[0]:
            await conn.execute(statement)
        await conn.execute("INSERT INTO meta (key, value) VALUES ('schema.version', '1')")
    finally:
        await conn.close()
    async with app(url, workers=False) as client:
        job_id = await client.pool("p").add("double", 4)
    assert await PgStore(url).migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
    async with app(url, mode="nodes") as rt:
        assert (await rt.wait(job_id, timeout=10)).result == 8
        assert [n["id"] for n in await rt.store.nodes()] == [rt.nodes.node]


async def schema_at(url: str, version: int, *statements: str) -> None:
    """The URL's schema made by the first ``version`` migrations, then ``statements``."""
    schema = url.rsplit("schema=", 1)[1]
    conn = await asyncpg.connect(url.split("?")[0])
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"; SET search_path = "{schema}"')
        for statement in (st for migration in MIGRATIONS[:version] for st in migration):
            await conn.execute(statement)
        await conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema.version', $1)", str(version)
        )
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_counts_of_a_version_5_schema_move_to_lane_0_and_stay_exact(url: str) -> None:
    """Version 6 keeps each (pool, status) in lanes, one per writer (store note 12):
    the counts of version 5 become lane 0, and what runs next adds to the others."""
    await schema_at(
        url,
        5,
        "INSERT INTO jobs (id, task, pool, status, created_at, run_at) "
        "SELECT g, 'double', 'p', CASE WHEN g <= 3 THEN 'SUCCESS' ELSE 'FAILURE' END, 0, 0 "
        "FROM generate_series(1, 5) AS g",
        "UPDATE job_ids SET last = 5",
        "INSERT INTO job_counts (pool, status, n) VALUES ('p', 'SUCCESS', 3), ('p', 'FAILURE', 2)",
    )
    async with app(url, mode="nodes") as rt:
        store = rt.store
        assert isinstance(store, PgStore)
        assert store.counted("p", JobStatus.SUCCESS) == 3
        ids = [await rt.pool("p").add("double", n) for n in range(10)]
        for job_id in ids:
            assert (await rt.wait(job_id, timeout=10)).status is JobStatus.SUCCESS
        await store.flush()
        assert await store.live_counts() == {"p": {JobStatus.SUCCESS: 13, JobStatus.FAILURE: 2}}
        assert store.counted("p", JobStatus.SUCCESS) == 13
        assert store.counted("p", JobStatus.RUNNING) == 0
        lanes = await store.pool.fetch(
            "SELECT lane, n FROM job_counts WHERE pool = 'p' AND status = 'SUCCESS' ORDER BY lane"
        )
        assert lanes[0]["lane"] == 0 and sum(r["n"] for r in lanes) == 13


async def test_pool_limits_of_a_version_12_schema_are_kept_and_become_64_bit(url: str) -> None:
    """Version 13 widens ``pool_settings``' limits to BIGINT (they were INTEGER: a
    concurrency above 2**31 - 1 failed at the write); the limits recorded are kept."""
    schema = url.rsplit("schema=", 1)[1]
    await schema_at(
        url,
        12,
        "INSERT INTO pool_settings (name, concurrency, capacity_set, capacity) "
        "VALUES ('p', 7, 1, 50)",
    )
    async with app(url, mode="nodes") as rt:
        assert (rt.pool("p").concurrency, rt.pool("p").capacity) == (7, 50)
        await rt.change_pool("p", concurrency=2**63 - 1, capacity=2**31)
        assert isinstance(rt.store, PgStore)
        assert await rt.store.pool_limits() == {"p": (2**63 - 1, (2**31,), None)}
        types = await rt.store.pool.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = 'pool_settings' "
            "AND column_name IN ('concurrency', 'capacity')",
            schema,
        )
        assert {r["column_name"]: r["data_type"] for r in types} == {
            "concurrency": "bigint",
            "capacity": "bigint",
        }


def test_the_cli_migrates_and_lists_a_postgresql_database(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``taskrt migrate --db URL`` creates the tables; ``ls``/``add`` work on the URL as on a file."""
    assert main(["migrate", "--db", url]) == 0
    assert f"schema version 0 -> {SCHEMA_VERSION}" in capsys.readouterr().out
    assert main(["migrate", "--db", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["found"] == SCHEMA_VERSION

    async def add() -> int:
        async with app(url, workers=False) as client:
            return await client.pool("p").add("double", 3)

    job_id = asyncio.run(add())
    assert main(["ls", "--db", url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(j["id"], j["status"]) for j in listed["jobs"]] == [(job_id, "WAITING")]


def test_the_cli_migrates_a_sqlite_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "new.db")
    assert main(["migrate", "--db", path]) == 0
    assert f"{path}: schema version 0 -> " in capsys.readouterr().out
    assert main(["migrate", "--db", path]) == 0
    assert "nothing to do" in capsys.readouterr().out


# -- moving over: taskrt copy ---------------------------------------------------------------


def sqlite_app(path: str, **options: object) -> Runtime:
    rt = Runtime(path, **options)  # type: ignore[arg-type]
    rt.pool("p", concurrency=2)

    @rt.task(pool="p", attempts=2, retry="0s")
    async def flaky(job: JobContext, fail: bool) -> str:
        await job.progress(1, 3, "one third")
        if fail:
            raise ValueError("no luck")
        return "done"

    rt.schedule("nightly", flaky, "0 3 * * *", kwargs={"fail": False})
    return rt


async def sql_rows(url: str, statement: str) -> list[tuple[Any, ...]]:
    """The rows of ``statement`` in the test's schema, read by a connection of its own."""
    base, _, schema = url.partition("?schema=")
    conn = await asyncpg.connect(base, server_settings={"search_path": schema})
    try:
        return [tuple(r) for r in await conn.fetch(statement)]
    finally:
        await conn.close()


def test_copy_accounts_for_every_column_of_the_sqlite_schema(tmp_path: Path) -> None:
    """A column added to SQLite and not to the copy was lost in the move (before:
    ``schedules.origin``, so schedules declared in code became run-time ones)."""
    path = tmp_path / "new.db"
    assert main(["migrate", "--db", str(path)]) == 0
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            assert table in TABLES or table in NOT_COPIED, f"table {table} is not accounted for"
            if table in TABLES:
                accounted = {*TABLES[table], *NOT_COPIED.get(table, ())}
                assert columns == accounted, (table, columns ^ accounted)
            else:
                assert NOT_COPIED[table] == (), table  # the whole table stays behind
    finally:
        db.close()


def test_copy_moves_a_stopped_sqlite_database_over_whole(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A folder whose name a SQLite URI would read otherwise ('?', '#', '%').
    folder = tmp_path / "a?b#c%41"
    folder.mkdir()
    path = str(folder / "old.db")

    async def make_history() -> dict[str, Any]:
        async with sqlite_app(path) as old:
            finished = [await old.pool("p").add("flaky", fail=f) for f in (False, True, False)]
            for job_id in finished:
                await old.wait(job_id, timeout=5)
            later = await old.pool("p").add(old.resolve("flaky").options(delay=3600), fail=False)
            cancelled = await old.pool("p").add(
                old.resolve("flaky").options(delay=3600), fail=False
            )
            await old.cancel(cancelled)
            # The newest job is deleted: the id sequence, not the highest id, goes over.
            gone = await old.pool("p").add("flaky", fail=False)
            await old.wait(gone, timeout=5)
            await old.change_pool("p", paused=True)
            old.transitions.flush_history()
            await old.store.flush()
            assert await old.store.purge([gone]) == 1
            last.append(gone)
            # Refused while a process runs it: a moving snapshot would lose writes.
            with pytest.raises(StoreError, match="in use by a running process"):
                await copy_sqlite_to_postgres(path, url)
            link = tmp_path / "link.db"  # the same file by another name (ownership note 7)
            link.symlink_to(path)
            with pytest.raises(StoreError, match="in use by a running process"):
                await copy_sqlite_to_postgres(str(link), url)
            return await everything(old.store, [*finished, later, cancelled])

    async def everything(store: JobStore, ids: list[int]) -> dict[str, Any]:
        return {
            "jobs": {i: await store.get_job(i) for i in ids},
            "attempts": {i: await store.attempts(i) for i in ids},
            "schedules": await store.schedules(),
            "history": await store.history(0, 2**40, 60),
            "stats": await store.stats(None, None),
            "paused": await store.paused_pools(),
        }

    async def on_postgres(ids: list[int]) -> tuple[dict[str, Any], int]:
        store = PgStore(url)
        await store.open()
        try:
            seen = await everything(store, ids)
        finally:
            await store.close()
        async with sqlite_app(url, workers=False) as new:
            return seen, await new.pool("p").add("flaky", fail=False)

    last: list[int] = []
    before = asyncio.run(make_history())
    ids = sorted(before["jobs"])
    assert before["paused"] == {"p"} and len(before["schedules"]) == 1 and before["history"]
    assert last[0] > max(ids)
    assert main(["copy", "--from", path, "--to", url, "--json"]) == 0
    copied = json.loads(capsys.readouterr().out)
    assert copied["rows"]["jobs"] == 5 and copied["last_id"] == last[0]
    after, next_id = asyncio.run(on_postgres(ids))
    assert after == before
    assert next_id == last[0] + 1
    # Declared in code, so the owner deletes it once the code no longer declares it.
    assert asyncio.run(sql_rows(url, "SELECT name, origin FROM schedules")) == [("nightly", "code")]

    # Into a schema that holds jobs: refused, nothing changed.
    assert main(["copy", "--from", path, "--to", url]) == 4
    err = capsys.readouterr().err
    assert "already holds 6 row(s) of jobs, " in err and " of pool_settings:" in err, err

    # Into one that holds no job but other rows (a pool paused there): refused by name.
    other = url.replace("?schema=", "?schema=o_")

    async def pause_there() -> None:
        async with Runtime(other, workers=False) as there:
            await there.change_pool("p", paused=True, create=True)

    asyncio.run(pause_there())
    assert main(["copy", "--from", path, "--to", other]) == 4
    err = capsys.readouterr().err
    assert "already holds 1 row(s) of pool_settings:" in err, err

    # Into an empty schema, as text: what it copied on stdout, nothing on stderr.
    third = url.replace("?schema=", "?schema=t_")
    assert main(["copy", "--from", path, "--to", third]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "jobs: 5 row(s)" in out.splitlines(), (out, err)
    assert out.splitlines()[-1] == f"copied 5 job(s); the next id is above {last[0]}"

    # From a file that is no database: the store's error, not the driver's.
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all, " * 100)
    with pytest.raises(StoreError, match="cannot open database"):
        asyncio.run(copy_sqlite_to_postgres(str(junk), other))


async def test_an_add_goes_with_the_lifecycle_writes_unless_a_batch_of_them_is_in_flight(
    url: str,
) -> None:
    """Store note 8: with nothing in flight in the lifecycle lane, an add commits
    there, in one statement with the writes queued beside it (one flush of the log,
    not two); while a batch of it is in flight, the add's own lane takes it, so it
    does not wait for that batch."""
    async with app(url) as rt:
        store = rt.store
        assert isinstance(store, PgStore)
        writes, adds = store.lanes()
        pool = rt.pool("p")
        pool.pause()
        await store.flush()
        assert writes.idle
        before = (writes.batches, adds.batches)
        first = await pool.add("double", 1)
        assert writes.batches > before[0] and adds.batches == before[1]

        async with writes.lock:  # as a lifecycle batch being written holds it
            assert not writes.idle
            second = await asyncio.wait_for(pool.add("double", 2), 5)
            assert adds.batches == before[1] + 1
        assert second > first
        pool.resume()
        assert [(await rt.wait(i, timeout=5)).result for i in (first, second)] == [2, 4]


async def blocked_by(watcher: asyncpg.Connection, holder: asyncpg.Connection, what: str) -> None:
    """Return once a session waits for a lock ``holder`` holds (``what``: for the failure)."""
    blocked = "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))"
    deadline = time.monotonic() + 5
    while not await watcher.fetchval(blocked, holder.get_server_pid()):
        assert time.monotonic() < deadline, f"{what} never waited for the lock"
        await asyncio.sleep(0.01)


async def add_to_count(conn: asyncpg.Connection, status: str, lane: int) -> None:
    """Lock pool p's count of ``status`` in ``lane`` as an add's statement does (adding
    0); with the connection's ``lock_timeout``, fails if another transaction holds it."""
    await conn.execute(
        "INSERT INTO job_counts AS c (pool, status, lane, n) VALUES ('p', $1, $2, 0) "
        "ON CONFLICT (pool, status, lane) DO UPDATE SET n = c.n",
        status,
        lane,
    )


async def test_a_batch_that_adds_takes_the_ids_before_it_counts_anything(tmp_path: Path) -> None:
    """Store note 1: a lifecycle batch with a write that moves a job and an add with
    a unique key takes ``job_ids`` before it adds to ``job_counts``. While another
    transaction holds the ids, the batch waits holding no count, so a transaction
    of the same lane that adds to that count (an add's statement: the ids, then
    the counts) is not held up by it: the two used to deadlock."""
    base, schema = pg_server.require(), pg_server.fresh_schema(tmp_path)
    async with open_store("postgres", tmp_path) as store:
        assert isinstance(store, PgStore)
        [waiting] = await store.insert([new_job()])
        assert isinstance(waiting, InsertResult)
        await store.flush()
        holder = await asyncpg.connect(base, server_settings={"search_path": schema})
        other = await asyncpg.connect(
            base, server_settings={"search_path": schema, "lock_timeout": "3s"}
        )
        try:
            held = holder.transaction()
            await held.start()
            await holder.fetchval("SELECT last FROM job_ids WHERE one = 1 FOR UPDATE")
            writes, _ = store.lanes()
            # One batch: queued without a yield between them.
            cancelled = store.cancel(
                waiting.job_id, time.time(), 2, None, pool="p", was=JobStatus.WAITING
            )
            keyed = writes.insert([new_job(unique_key="k")])
            await blocked_by(other, holder, "the batch")
            for status in ("WAITING", "CANCELLED"):
                await add_to_count(other, status, store.lane(0))
            await held.rollback()
            await asyncio.wait_for(cancelled, 5)
            [added] = await asyncio.wait_for(keyed, 5)
            assert isinstance(added, InsertResult) and added.job_id > waiting.job_id
        finally:
            await holder.close()
            await other.close()
        assert store.health().ok
        found = await store.get_job(waiting.job_id)
        assert found is not None and found.status is JobStatus.CANCELLED


@pytest.mark.parametrize("key", [None, "k"], ids=["one statement", "unique key"])
async def test_a_batch_that_adds_takes_a_schedules_row_before_the_ids(
    tmp_path: Path, key: str | None
) -> None:
    """Store note 1: a batch that adds and counts the failure of a schedule (scheduler
    note 6) locks the schedule's row before ``job_ids``, as a fire does (the row,
    then its add: scheduler note 7). Here the "fire" holds the row, the batch waits
    for it holding no ids, and the fire's add goes on. The batch used to take the
    ids first (its one statement, or its transaction) and then wait for the row
    while the fire waited for the ids: a deadlock, which failed the fire or had the
    batch written again a second later."""
    base, schema = pg_server.require(), pg_server.fresh_schema(tmp_path)
    async with open_store("postgres", tmp_path) as store:
        assert isinstance(store, PgStore)
        async with store.transaction() as tx:
            await tx.insert_schedule(define("tick", "t", "@every 1h"), None, 1.0)
        settings = {"search_path": schema, "deadlock_timeout": "100ms"}
        fire, watcher = [await asyncpg.connect(base, server_settings=settings) for _ in range(2)]
        try:
            held = fire.transaction()
            await held.start()
            await fire.execute("SELECT 1 FROM schedules WHERE name = 'tick' FOR UPDATE")
            # One batch: queued without a yield between them.
            failed = store.schedule_failed("tick")
            added = store.insert([new_job(unique_key=key)])
            await blocked_by(watcher, fire, "the batch")
            await fire.fetchval("SELECT last FROM job_ids WHERE one = 1 FOR UPDATE")
            await held.commit()
            await asyncio.wait_for(failed, 5)
            [job] = await asyncio.wait_for(added, 5)
            assert isinstance(job, InsertResult) and job.created
        finally:
            await fire.close()
            await watcher.close()
        assert store.health().ok
        [info] = await store.schedules()
        assert info.failures == 1


async def test_a_statement_writes_every_row_before_it_counts(tmp_path: Path) -> None:
    """Store note 3: the counts are the last rows a batch's statement locks, after
    the rows of its writes that move no job too (a write the statement's result
    did not read ran after the counts). While a job's row is locked elsewhere, the
    statement waits holding no count."""
    base, schema = pg_server.require(), pg_server.fresh_schema(tmp_path)
    async with open_store("postgres", tmp_path) as store:
        assert isinstance(store, PgStore)
        found = await store.insert([new_job(), new_job()])
        moved, held_row = (r.job_id for r in found if isinstance(r, InsertResult))
        await store.flush()
        settings = {"search_path": schema, "lock_timeout": "3s"}
        holder, other, writer = [
            await asyncpg.connect(base, server_settings=settings) for _ in range(3)
        ]
        try:
            held = holder.transaction()
            await held.start()
            await holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", held_row)
            pack = [
                (CANCEL_PART, [(time.time(), 2, None, moved, "p", "WAITING")]),
                (REASON_PART, [("limited", held_row)]),
            ]
            written = asyncio.ensure_future(run_pack(writer, pack))
            await blocked_by(other, holder, "the statement")
            await add_to_count(other, "CANCELLED", 0)
            await held.rollback()
            counts = await asyncio.wait_for(written, 5)
            assert ("p", "CANCELLED", 1) in [tuple(r) for r in counts]
            reason = await other.fetchval("SELECT waiting_reason FROM jobs WHERE id = $1", held_row)
            assert reason == "limited"
        finally:
            for conn in (holder, other, writer):
                await conn.close()


async def two_jobs(store: JobStore) -> tuple[int, int]:
    """Two WAITING jobs of pool p, committed: their ids, the lower first."""
    assert isinstance(store, PgStore)
    found = await store.insert([new_job(), new_job()])
    a, b = sorted(r.job_id for r in found if isinstance(r, InsertResult))
    await store.flush()
    return a, b


async def test_statements_lock_the_jobs_they_write_in_id_order(tmp_path: Path) -> None:
    """Store note 3: a batch's statement locks every job row it writes in id order,
    whichever write it belongs to. Statement one cancels b and sets a's waiting
    reason; statement two cancels a and sets b's. They used to lock b then a, and
    a then b: with a held, then b let go, one took b and waited for a, and two
    took a once it was let go: a deadlock. Now both take a first, and each
    commits in turn."""
    base, schema = pg_server.require(), pg_server.fresh_schema(tmp_path)
    async with open_store("postgres", tmp_path) as store:
        a, b = await two_jobs(store)
        settings = {"search_path": schema, "deadlock_timeout": "100ms"}
        has_a, has_b, watcher, one, two = [
            await asyncpg.connect(base, server_settings=settings) for _ in range(5)
        ]

        async def waits(conn: asyncpg.Connection, what: str, not_for: int = 0) -> None:
            """Until ``conn`` waits for a lock, held by another than ``not_for``."""
            blocked = (
                "SELECT cardinality(pg_blocking_pids($1)) > 0 "
                "AND NOT $2 = ANY(pg_blocking_pids($1))"
            )
            deadline = time.monotonic() + 5
            while not await watcher.fetchval(blocked, conn.get_server_pid(), not_for):
                assert time.monotonic() < deadline, f"{what} never waited for a row"
                await asyncio.sleep(0.01)

        try:
            held = [holder.transaction() for holder in (has_a, has_b)]
            for tx, holder, job in zip(held, (has_a, has_b), (a, b), strict=True):
                await tx.start()
                await holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job)
            now = time.time()
            first = asyncio.ensure_future(
                run_pack(
                    one,
                    [(CANCEL_PART, [(now, 2, None, b, "p", "WAITING")]), (REASON_PART, [("x", a)])],
                )
            )
            await waits(one, "statement one")
            second = asyncio.ensure_future(
                run_pack(
                    two,
                    [(CANCEL_PART, [(now, 2, None, a, "p", "WAITING")]), (REASON_PART, [("y", b)])],
                )
            )
            await waits(two, "statement two")
            await held[1].rollback()  # b: statement one, if it waited for b, takes it
            await waits(one, "statement one", not_for=has_b.get_server_pid())
            await held[0].rollback()  # a
            done = await asyncio.wait_for(asyncio.gather(first, second), 10)
            assert sorted(r[2] for rows in done for r in rows if r[1] == "CANCELLED") == [1, 2]
            rows = await watcher.fetch("SELECT status FROM jobs WHERE id = ANY($1)", [a, b])
            assert [r[0] for r in rows] == ["CANCELLED", "CANCELLED"]
        finally:
            for conn in (has_a, has_b, watcher, one, two):
                await conn.close()


async def test_a_reap_locks_the_jobs_it_puts_back_in_id_order(tmp_path: Path) -> None:
    """Store note 3: a reap locks the RUNNING jobs it puts back in id order, as a
    batch does, before it writes any of them. A late batch of the reaped node
    ends jobs a and b (a then b); the reap used to lock them in the order it read
    the table (b, then a, in this test): with a held elsewhere, the batch
    waited for a, the reap took b and waited for a, and once a was let go the
    batch waited for b: a deadlock. Now the reap waits for a behind the batch,
    then finds both jobs ended and leaves them."""
    base, schema = pg_server.require(), pg_server.fresh_schema(tmp_path)
    async with open_store("postgres", tmp_path) as store:
        a, b = await two_jobs(store)
        settings = {"search_path": schema, "deadlock_timeout": "100ms"}
        holder, watcher = [await asyncpg.connect(base, server_settings=settings) for _ in range(2)]
        late = await asyncpg.connect(base, server_settings={**settings, "taskrt.node": "gone"})
        try:
            await watcher.execute(
                "INSERT INTO nodes (id, host, pid, started_at, ttl, heartbeat_at) "
                "VALUES ('gone', 'h', 1, 0, 1, now() - interval '1 hour')"
            )
            for job in (a, b):
                await watcher.execute(
                    "UPDATE jobs SET status = 'RUNNING', node = 'gone', attempts = 1, "
                    "started_at = 1, seq = 2 WHERE id = $1",
                    job,
                )
            # The batch finds its jobs by primary key (in id order, among many jobs);
            # the reap reads the table in its order (a plan the planner may choose
            # where most jobs run; here, without the index on (status, id)), which
            # here has b first.
            await store.insert([new_job(pool="q") for _ in range(500)])
            await store.flush()
            await watcher.execute(
                "DROP INDEX jobs_status; CREATE INDEX jobs_backwards ON jobs (id DESC); "
                "CLUSTER jobs USING jobs_backwards; DROP INDEX jobs_backwards; ANALYZE jobs"
            )
            await watcher.execute(
                "UPDATE job_counts SET n = 0 WHERE pool = 'p' AND status = 'WAITING'; "
                "INSERT INTO job_counts (pool, status, lane, n) VALUES ('p', 'RUNNING', 0, 2) "
                "ON CONFLICT (pool, status, lane) DO UPDATE SET n = job_counts.n + 2"
            )
            held = holder.transaction()
            await held.start()
            await holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", a)
            now = time.time()
            batch = asyncio.ensure_future(
                run_pack(
                    late,
                    [
                        (
                            FAIL_PART,
                            [("boom", now, 0.0, 0.0, "", 3, 1, j, "p", "RUNNING") for j in (a, b)],
                        ),
                        (
                            ATTEMPT_PART,
                            [(j, 1, 1.0, now, "failed", "boom", None, None, None) for j in (a, b)],
                        ),
                    ],
                )
            )
            await blocked_by(watcher, holder, "the late batch")
            reap = asyncio.ensure_future(store.reap(now, max_recoveries=3, seq_gap=10))
            deadline = time.monotonic() + 5
            waiting = (
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE pg_blocking_pids(pid) && ARRAY[$1, $2]::int[]"
            )
            parties = (holder.get_server_pid(), late.get_server_pid())
            while await watcher.fetchval(waiting, *parties) < 2:
                assert time.monotonic() < deadline, "the reap never waited"
                await asyncio.sleep(0.01)
            await held.rollback()
            await asyncio.wait_for(batch, 5)
            assert await asyncio.wait_for(reap, 5) == (1, 0, 0, 0)
            rows = await watcher.fetch(
                "SELECT status, node FROM jobs WHERE id = ANY($1) ORDER BY id", [a, b]
            )
            assert [tuple(r) for r in rows] == [("FAILURE", "gone")] * 2
            outcomes = await watcher.fetch(
                "SELECT outcome FROM attempts WHERE job_id = ANY($1)", [a, b]
            )
            assert [r[0] for r in outcomes] == ["failed"] * 2
        finally:
            for conn in (holder, watcher, late):
                await conn.close()


async def test_adds_in_both_lanes_at_once_get_every_id_once_in_commit_order(url: str) -> None:
    """Plain adds commit on a lane of their own, adds with unique keys with the
    lifecycle writes (store note 8): together they still get ids with no gap and
    no repeat, each add's job readable once it returns."""
    async with app(url, workers=False) as rt:
        pool = rt.pool("p")

        async def plain(n: int) -> list[int]:
            return [await pool.add("double", n)]

        async def keyed(n: int) -> list[int]:
            return [await rt.enqueue("double", args=[n], unique_key=f"k{n}")]

        async def many(n: int) -> list[int]:
            return await pool.add_many("double", [(n,), (n + 1,)])

        found = await asyncio.gather(*(f(n) for n in range(60) for f in (plain, keyed, many)))
        ids = sorted(i for got in found for i in got)
        assert ids == list(range(ids[0], ids[0] + 240))
        assert await rt.count(status="WAITING") == 240
        assert isinstance(rt.store, PgStore) and rt.store.health().ok


async def test_jobs_added_in_the_applications_own_transaction_count_against_the_capacity(
    url: str,
) -> None:
    # mode owner: before, the owner's counts did not see such jobs until it wrote a
    # job of that pool itself, so a paused pool's capacity let more in.
    async with app(url, mode="owner", poll_interval=0.05) as rt:
        pool = rt.pool("p", capacity=3)
        pool.pause()
        conn = await asyncpg.connect(pg_server.require())
        try:
            async with conn.transaction():
                for n in range(3):
                    await pool.add("double", n, tx=conn)
        finally:
            await conn.close()
        async with asyncio.timeout(5):
            while pool.waiting != 3:
                await asyncio.sleep(0.02)
        with pytest.raises(QueueFull):
            await pool.add("double", 9)
        assert await rt.count(pool="p", status="WAITING") == 3


async def test_a_pool_connection_never_given_back_holds_a_stop_only_so_long(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncpg's close waits for every connection to come back, warning once a minute:
    a task that kept one held the stop for ever (a CI run's test timed out at 60 s
    in ``Pool.close()``). Past the patience the pool's connections are cut."""
    from taskrt.store.postgres import store as store_module

    monkeypatch.setattr(store_module, "POOL_CLOSE_PATIENCE", 0.5)
    rt = Runtime(url, mode="owner")
    await rt.start()
    assert isinstance(rt.store, PgStore)
    await rt.store.pool.acquire()  # never released
    began = time.monotonic()
    await asyncio.wait_for(rt.stop(), 20)
    assert time.monotonic() - began < 5
    assert "was not given back within 0.5 s" in caplog.text
