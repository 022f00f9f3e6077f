"""A node's claim connections (``taskrt.store.postgres.conns``), on a real server.

Each test holds a few connections of its own to the session's database and
tells them apart by their server process id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pg_server
import pytest

from taskrt.store.postgres.conns import HeldConnections
from taskrt.store.postgres.driver import DRIVER_ERRORS

PID = "SELECT pg_backend_pid()"


@pytest.fixture
def url() -> str:
    return pg_server.require()


@pytest.fixture
async def admin(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, to end the others' sessions."""
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def held(url: str, size: int, **options: Any) -> AsyncIterator[HeldConnections]:
    conns = HeldConnections(url, options, size)
    await conns.open()
    try:
        yield conns
    finally:
        await conns.close()


async def _pid(conns: HeldConnections) -> int:
    return int((await conns.fetch(PID))[0][0])


async def test_an_idle_connection_is_lent_again_and_no_more_than_size_are_opened(url: str) -> None:
    async with held(url, 2) as conns:
        first = await _pid(conns)
        assert {await _pid(conns) for _ in range(5)} == {first}  # one at a time: the same

        # Three statements at once on two connections: the third waits for one
        # of the first two, then runs on it.
        started = time.monotonic()
        pids = await asyncio.gather(
            *(conns.fetch("SELECT pg_backend_pid() FROM pg_sleep(0.2)") for _ in range(3))
        )
        took = time.monotonic() - started
        assert len({r[0][0] for r in pids}) == 2
        assert took >= 0.4, took  # two rounds of 0.2 s
        async with conns.acquire() as conn:  # the block's way, as progress is sent
            assert await conn.fetchval(PID) in {r[0][0] for r in pids}


async def test_a_statement_the_server_refuses_leaves_its_connection_lendable(url: str) -> None:
    async with held(url, 1) as conns:
        before = await _pid(conns)
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conns.fetch("SELECT 1 / 0")
        assert await _pid(conns) == before
        with pytest.raises(asyncpg.UndefinedTableError):
            async with conns.acquire() as conn:
                await conn.fetch("SELECT * FROM no_such_table")
        assert await _pid(conns) == before


async def test_a_lost_connection_is_replaced_and_a_cancelled_one_too(
    url: str, admin: asyncpg.Connection
) -> None:
    async with held(url, 1) as conns:
        lost = await _pid(conns)
        await admin.execute("SELECT pg_terminate_backend($1)", lost)
        with pytest.raises(DRIVER_ERRORS):
            await conns.fetch(PID)
        again = await _pid(conns)  # a new connection in the lost one's place
        assert again != lost

        # Cancelled half way: that connection is not lent again (its reply may
        # still come), and its place is free for a new one.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await conns.fetch("SELECT pg_sleep(5)")
        after = await _pid(conns)
        assert after not in {lost, again}


async def test_closing_closes_the_idle_connections_and_a_lent_one_when_it_comes_back(
    url: str,
    admin: asyncpg.Connection,
) -> None:
    async with held(url, 2) as conns:

        async def alive(pid: int) -> bool:
            return bool(
                await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)
            )

        both = {
            r[0][0]
            for r in await asyncio.gather(
                *(conns.fetch("SELECT pg_backend_pid() FROM pg_sleep(0.05)") for _ in range(2))
            )
        }
        assert len(both) == 2
        running = asyncio.ensure_future(conns.fetch("SELECT pg_backend_pid() FROM pg_sleep(0.3)"))
        await asyncio.sleep(0.1)
        await conns.close()
        with pytest.raises(asyncpg.InterfaceError, match="closed"):
            await conns.fetch(PID)
        lent = int((await running)[0][0])  # the statement in flight ends as it would
        (idle,) = both - {lent}
        deadline = time.monotonic() + 5
        while (await alive(idle) or await alive(lent)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not await alive(idle) and not await alive(lent)


async def test_a_waiter_opens_a_connection_in_the_place_of_one_that_was_lost(
    url: str, admin: asyncpg.Connection
) -> None:
    async with held(url, 1) as conns:
        first = await _pid(conns)
        slow = asyncio.ensure_future(conns.fetch("SELECT pg_sleep(5)"))
        await asyncio.sleep(0.1)
        waiting = asyncio.ensure_future(_pid(conns))  # none idle, none to open: it waits
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await admin.execute("SELECT pg_terminate_backend($1)", first)
        with pytest.raises(DRIVER_ERRORS):
            await slow
        async with asyncio.timeout(5):
            assert await waiting not in {first}


async def test_a_connection_ended_by_the_server_mid_statement_is_not_lent_again(
    url: str, admin: asyncpg.Connection
) -> None:
    """``pg_terminate_backend`` of a running statement: asyncpg reports it as a
    PostgresError (08003, the connection does not exist), yet the session is
    gone, so the next statement runs on a new connection at its first try."""
    async with held(url, 1) as conns:
        first = await _pid(conns)
        slow = asyncio.ensure_future(conns.fetch("SELECT pg_sleep(5)"))
        await asyncio.sleep(0.2)
        await admin.execute("SELECT pg_terminate_backend($1)", first)
        with pytest.raises(DRIVER_ERRORS):
            await slow
        assert await _pid(conns) != first


async def test_a_statement_the_server_cancelled_leaves_its_session_lendable(url: str) -> None:
    """statement_timeout (57014) cancels the statement, not the session."""
    async with held(url, 1, server_settings={"statement_timeout": "100"}) as conns:
        before = await _pid(conns)
        with pytest.raises(asyncpg.QueryCanceledError):
            await conns.fetch("SELECT pg_sleep(2)")
        assert await _pid(conns) == before
