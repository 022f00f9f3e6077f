"""Several runtimes on one database: one owner, standbys that forward and take over.

Two runtimes in one process behave as two processes do (the ownership lock is
per open file, the relay a real Unix socket); tests/test_multiprocess.py runs
the same against real servers and real SIGKILLs.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from core_support import committed, db_file, make_rt, sqlite_only_write, until

from taskrt import (
    InvalidOption,
    InvalidTransition,
    JobContext,
    JobNotFound,
    JobStatus,
    OwnershipError,
    PoolExists,
    PoolNotFound,
    QueueFull,
    Runtime,
    StoreUnavailable,
)
from taskrt import ownership as ownership_module
from taskrt import relay as relay_module
from taskrt import runtime as runtime_module
from taskrt.events import Broker
from taskrt.models import EventType
from taskrt.ownership import filesystem_of
from taskrt.relay import RelayClient, RelayServer
from taskrt.runtime import JobStream
from taskrt.web import create_app


def app(tmp_path: Path, gate: asyncio.Event | None = None, **options: object) -> Runtime:
    """The same app in every "process": the tasks are declared in each."""
    rt = make_rt(tmp_path, **options)
    rt.pool("p", concurrency=2)

    @rt.task(pool="p")
    async def hello(job: JobContext, name: str) -> str:
        return f"hello {name}"

    @rt.task(pool="p")
    async def steps(job: JobContext, n: int) -> int:
        for i in range(n):
            await job.progress(i + 1, n, f"step {i + 1}")
            await asyncio.sleep(0.005)
        if gate is not None:
            await gate.wait()
        return n

    return rt


async def test_a_second_runtime_with_workers_is_a_standby_and_forwards_adds(
    tmp_path: Path,
) -> None:
    owner, standby = app(tmp_path), app(tmp_path)
    async with owner, standby:
        assert (owner.role, standby.role) == ("owner", "standby")
        status = standby.owner_status()
        assert (status.owner, status.reachable) == (owner.ownership.owner, True)
        await until(lambda: owner.owner_status().peers == 1)
        job_id = await standby.add("hello", "ann")
        # Forwarded: the owner holds it in memory at once, no poll involved.
        assert job_id in owner.live.states or (await owner.get(job_id)).terminal
        info = await standby.wait(job_id, timeout=5)
        assert (info.status, info.result) == (JobStatus.SUCCESS, "hello ann")
    async with committed(tmp_path) as store:
        assert await store.owner_record() is None  # a clean stop removes the record


async def test_an_add_forwarded_to_an_idle_owner_starts_in_its_add(tmp_path: Path) -> None:
    """Pool note 9 holds for the owner's adds on another process's behalf: the add's
    own row is RUNNING, attempt 1 charged, started as it was added (a start of its
    own would come later, at the owner's clock)."""
    gate = asyncio.Event()
    owner, standby = app(tmp_path, gate), app(tmp_path, gate)
    async with owner, standby:
        assert standby.role == "standby"
        job_id = await standby.add("steps", 1)
        async with committed(tmp_path) as store:
            info = await store.get_job(job_id)
        assert info is not None and (info.status, info.attempts) == (JobStatus.RUNNING, 1)
        assert info.started_at == info.created_at
        gate.set()
        assert (await standby.wait(job_id, timeout=5)).result == 1


async def test_a_standby_stream_carries_the_owners_events_with_the_same_numbers(
    tmp_path: Path,
) -> None:
    owner, standby = app(tmp_path), app(tmp_path)
    async with owner, standby:
        job_id = await owner.add("steps", 20)
        async with owner.subscribe(job_id) as a, standby.subscribe(job_id) as b:

            async def read(stream: JobStream) -> list[tuple[EventType, int]]:
                return [(e.type, e.seq) async for e in stream]

            seen_owner, seen_standby = await asyncio.gather(read(a), read(b))
        # Both start from a snapshot (possibly at different points), then agree.
        assert seen_owner[0][0] is seen_standby[0][0] is EventType.SNAPSHOT
        assert seen_standby[-1] == seen_owner[-1] == (EventType.SUCCESS, seen_owner[-1][1])
        tail = {seq for _, seq in seen_standby[1:]}
        assert tail <= {seq for _, seq in seen_owner} | {seen_owner[0][1]}
        progress = [seq for kind, seq in seen_standby if kind is EventType.PROGRESS]
        assert progress == sorted(progress) and len(progress) >= 15


async def test_reads_through_a_standby_come_from_the_owners_memory(tmp_path: Path) -> None:
    gate = asyncio.Event()
    # Progress is written to disk only every 60 s: only the owner's memory has it.
    owner = app(tmp_path, gate, progress_interval=60.0)
    standby = app(tmp_path)
    async with owner, standby:
        job_id = await standby.add("steps", 3)
        await until(lambda: owner.live.states[job_id].current == 3)
        info = await standby.get(job_id)
        assert (info.status, info.current, info.message) == (JobStatus.RUNNING, 3, "step 3")
        [listed] = (await standby.jobs(status="RUNNING")).jobs
        assert (listed.id, listed.current) == (job_id, 3)
        [pool] = [p for p in await standby.pool_statistics() if p.name == "p"]
        assert (pool.running, pool.waiting) == (1, 0)
        attempts = await standby.attempts(job_id)
        assert [a.number for a in attempts] == [1]
        gate.set()
        assert (await standby.wait(job_id, timeout=5)).result == 3
        stats = await standby.stats()
        assert stats.counts["SUCCESS"] == 1


async def test_errors_cross_from_the_owner_as_themselves(tmp_path: Path) -> None:
    owner = app(tmp_path)
    owner.pool("small", capacity=1).pause()
    standby = app(tmp_path)
    standby.pool("small", capacity=1)
    async with owner, standby:
        with pytest.raises(JobNotFound) as missing:
            await standby.cancel(999)
        assert missing.value.job_id == 999
        await standby.enqueue("hello", args=["a"], pool="small")
        with pytest.raises(QueueFull) as full:
            await standby.enqueue("hello", args=["b"], pool="small")
        assert (full.value.pool, full.value.capacity) == ("small", 1)
        done = await standby.add("hello", "c")
        await standby.wait(done, timeout=5)
        with pytest.raises(InvalidTransition):
            await standby.cancel(done)
        # A value the relay cannot carry is refused as the owner would refuse it,
        # not by the relay's JSON encoder (a TypeError).
        for bad in ({"limit": object()}, {"cursor": object()}):
            with pytest.raises(InvalidOption):
                await standby.jobs(**bad)


async def test_pool_actions_on_a_standby_act_on_the_owner_and_a_pause_is_kept(
    tmp_path: Path,
) -> None:
    owner, standby = app(tmp_path), app(tmp_path)
    async with owner, standby:
        stats = await standby.change_pool("p", paused=True, concurrency=5)
        assert (stats.paused, stats.concurrency) == (True, 5)
        assert owner.pools["p"].statistics().paused
        job_id = await standby.add("hello", "later")
        await asyncio.sleep(0.2)
        assert (await standby.get(job_id)).status is JobStatus.WAITING
    async with committed(tmp_path) as store:
        assert await store.paused_pools() == {"p"}
    # The pause outlives the owner: the next one starts paused.
    again = app(tmp_path)
    async with again:
        assert again.pools["p"].statistics().paused
        assert (await again.get(job_id)).status is JobStatus.WAITING
        await again.change_pool("p", paused=False)
        assert (await again.wait(job_id, timeout=5)).result == "hello later"


async def test_pools_are_the_owners_on_a_standby(tmp_path: Path) -> None:
    """The owner says which pools exist and keeps the limits set through a standby.
    Before: POST /pools of an existing pool through a standby changed it (201, not
    409); a pool created through the owner was a 404 on the standby (change_pool,
    GET /events?pool= too); and limits set through a standby were also set in the
    standby's own pools, so a takeover started with them, not the code's."""
    owner, standby = app(tmp_path), app(tmp_path)
    async with owner, standby:
        await owner.change_pool("extra", create=True, concurrency=2)
        assert "extra" not in standby.pools
        stats = await standby.change_pool("extra", concurrency=4)  # the owner has it
        assert (stats.concurrency, owner.pools["extra"].concurrency) == (4, 4)
        with pytest.raises(PoolExists):
            await standby.change_pool("extra", create=True, exists_ok=False, concurrency=9)
        assert owner.pools["extra"].concurrency == 4
        with pytest.raises(PoolNotFound):
            await standby.change_pool("nowhere", concurrency=3)
        await standby.change_pool("p", concurrency=7)
        assert (owner.pools["p"].concurrency, standby.pools["p"].concurrency) == (7, 2)
        transport = httpx.ASGITransport(app=create_app(standby))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            created = await client.post("/pools", json={"name": "extra", "concurrency": 3})
            assert (created.status_code, created.json()["error"]["code"]) == (409, "pool_exists")
            fresh = await client.post("/pools", json={"name": "fresh", "concurrency": 3})
            assert fresh.status_code == 201 and owner.pools["fresh"].concurrency == 3
    assert owner.pools["extra"].concurrency == 4


async def test_a_cancel_on_a_standby_stops_the_owners_running_job(tmp_path: Path) -> None:
    gate = asyncio.Event()
    owner, standby = app(tmp_path, gate), app(tmp_path)
    async with owner, standby:
        job_id = await standby.add("steps", 1)
        await until(lambda: owner.live.states[job_id].status is JobStatus.RUNNING)
        info = await standby.cancel(job_id)
        assert info.status is JobStatus.CANCELLED


async def test_a_cancel_on_a_standby_waits_as_long_as_the_owners_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner answers a cancel once the handler stopped (up to abandon_after + 5 s).
    Before, the relay gave up after its own timeout (10 s), and the standby answered
    the job as the database had it then: RUNNING."""
    monkeypatch.setattr(relay_module, "CALL_TIMEOUT", 0.3)
    owner, standby = app(tmp_path, abandon_after=3.0), app(tmp_path, abandon_after=3.0)

    @owner.task(pool="p")
    async def slow_to_stop(job: JobContext) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.sleep(1.0))  # tidying up, past the relay's timeout
            raise

    standby.register(owner.tasks["slow_to_stop"])
    async with owner, standby:
        job_id = await standby.add("slow_to_stop")
        await until(lambda: job_id in owner.live.states)
        await until(lambda: owner.live.states[job_id].status is JobStatus.RUNNING)
        info = await standby.cancel(job_id)
        assert info.status is JobStatus.CANCELLED


async def test_an_empty_add_forwarded_to_the_owner_makes_no_pool(tmp_path: Path) -> None:
    # Before: the owner made a pool of whatever name an add of nothing named.
    owner, standby = app(tmp_path), app(tmp_path)
    async with owner, standby:
        assert await standby.pool("p").add_many("hello", []) == []
        remote = standby.remote
        assert remote is not None
        assert await remote.call("add", pool="made up", jobs=[]) == []
        assert "made up" not in owner.pools


async def test_what_is_too_large_for_the_relay_goes_through_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relay note 1: a call or an answer above MAX_FRAME is never sent. Before, an
    add_many that large through a standby broke the connection (OwnerUnreachable,
    "the owner may have done it", though it had not, every time), and so did a
    listing whose answer was that large, cutting every stream of the standby."""
    monkeypatch.setattr(relay_module, "MAX_FRAME", 64 * 1024)
    owner, standby = app(tmp_path), app(tmp_path)
    async with owner, standby:
        owner.pools["p"].pause()  # in memory only: the jobs wait
        remote = standby.remote
        assert remote is not None and remote.connected
        big = "x" * 10_000
        ids = await standby.pool("p").add_many("hello", [(big,)] * 10)  # ~100 KB: not sent
        assert len(ids) == 10
        assert remote.connected and standby.remote is remote  # the connection stayed
        small = await standby.add("hello", "small")  # forwarded as before
        listed = await standby.jobs(limit=20)  # the owner's answer is too large
        assert {j.id for j in listed.jobs} >= {*ids, small}
        assert remote.connected and standby.remote is remote
        owner.pools["p"].resume()
        for job_id in (*ids, small):
            assert (await standby.wait(job_id, timeout=10)).status is JobStatus.SUCCESS


async def test_an_owner_that_leaves_a_call_unanswered_is_unreachable_until_it_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An owner whose loop is blocked past CALL_TIMEOUT: the standby serves from the
    database at once and says the owner is unreachable (GET /health: degraded), until
    the owner answers again. Before, every call waited CALL_TIMEOUT anew and the
    standby said the owner was reachable throughout."""
    monkeypatch.setattr(relay_module, "CALL_TIMEOUT", 0.3)
    monkeypatch.setattr(relay_module, "PROBE_EVERY", 0.05)
    owner, standby = app(tmp_path), app(tmp_path)
    blocked = asyncio.Event()
    answer = owner._answer

    async def slow(method: str, args: dict[str, Any]) -> Any:
        if blocked.is_set():  # as if its loop were blocked: no answer for a second
            await asyncio.sleep(1.0)
        return await answer(method, args)

    async with owner, standby:
        owner.relay_server.handle = slow  # type: ignore[union-attr]
        job_id = await standby.add("hello", "x")
        await standby.wait(job_id, timeout=5)
        assert standby.owner_status().reachable
        blocked.set()
        assert (await standby.get(job_id)).status is JobStatus.SUCCESS  # from the database
        assert not standby.owner_status().reachable
        started = time.monotonic()
        assert (await standby.get(job_id)).status is JobStatus.SUCCESS
        assert time.monotonic() - started < 0.25  # not another CALL_TIMEOUT
        blocked.clear()
        await until(lambda: standby.owner_status().reachable, timeout=5)  # answered again


async def test_a_standbys_health_is_the_owners_writes(tmp_path: Path) -> None:
    """A standby writes (almost) nothing itself, so its own store always looked
    healthy: GET /health said ok on a standby while the owner's writes failed and
    an add through that same standby was refused (under ``uvicorn --workers 3``,
    two probes in three said healthy during the outage)."""
    owner, standby = app(tmp_path, busy_timeout=0.1), app(tmp_path, busy_timeout=0.1)
    async with owner, standby:
        assert standby.role == "standby"
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(standby)), base_url="http://testserver"
        ) as client:
            assert (await client.get("/health")).status_code == 200
            other = sqlite3.connect(owner.path, isolation_level=None, timeout=0)
            try:
                other.execute("BEGIN EXCLUSIVE")
                with pytest.raises(StoreUnavailable):
                    await standby.add("hello", "x")  # forwarded, refused by the owner
                r = await client.get("/health")
                assert (r.status_code, r.json()["status"]) == (503, "failing"), r.text
                assert "locked" in r.json()["store"]["error"]
                assert standby.health().ok  # its own store: nothing written, nothing failed
            finally:
                other.execute("COMMIT")
                other.close()
            await until(lambda: owner.health().ok, timeout=3)
            assert (await client.get("/health")).status_code == 200


async def test_a_malformed_frame_ends_that_peers_connection_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, a frame that was JSON but not what a taskrt process sends (a list, a
    watch without its job) was an unhandled exception in the relay's connection
    callback (asyncio's "Unhandled exception in client_connected_cb")."""
    owner, standby = app(tmp_path), app(tmp_path)
    async with owner, standby:
        assert owner.relay_server is not None and owner.relay_server.address is not None
        for body in (b"[1, 2]", b'{"t": "watch"}', b'{"t": "watch", "job": "abc"}'):
            reader, writer = await asyncio.open_unix_connection(owner.relay_server.address)
            writer.write(len(body).to_bytes(4, "big") + body)
            await writer.drain()
            async with asyncio.timeout(5):
                while await reader.read(65536):  # the owner hangs up
                    pass
            writer.close()
        job_id = await standby.add("hello", "still")
        assert (await standby.wait(job_id, timeout=5)).result == "hello still"
    malformed = [r for r in caplog.records if "malformed frame" in r.getMessage()]
    assert len(malformed) == 3
    assert not [r for r in caplog.records if "Unhandled exception" in r.getMessage()]


async def test_when_the_owner_stops_a_standby_owns_at_once_and_runs_what_waits(
    tmp_path: Path,
) -> None:
    owner, standby = app(tmp_path), app(tmp_path)
    await owner.start()
    await standby.start()
    try:
        await owner.change_pool("p", paused=False)
        owner.pools["p"].pause()  # in memory only: jobs wait, the pause is not recorded
        job_id = await standby.add("hello", "next")
        began = time.monotonic()
        await owner.stop()
        await until(lambda: standby.role == "owner", timeout=2)
        assert time.monotonic() - began < 1.0
        assert standby.owner_status().reachable
        info = await standby.wait(job_id, timeout=5)
        assert info.result == "hello next"
    finally:
        await standby.stop()
        await owner.stop()


async def test_a_stream_on_a_standby_continues_across_a_takeover(tmp_path: Path) -> None:
    gate = asyncio.Event()
    owner = app(tmp_path, gate, grace=0.05, abandon_after=0.05)
    standby = app(tmp_path, gate)
    await owner.start()
    await standby.start()
    try:
        job_id = await standby.add("steps", 2)
        await until(lambda: owner.live.states[job_id].status is JobStatus.RUNNING)
        events = []
        async with standby.subscribe(job_id) as stream:

            async def read() -> None:
                async for event in stream:
                    events.append(event)

            reader = asyncio.create_task(read())
            await until(lambda: any(e.type is EventType.PROGRESS for e in events))
            await owner.stop()  # the running attempt is interrupted, the job waits again
            await until(lambda: standby.role == "owner", timeout=2)
            gate.set()
            await asyncio.wait_for(reader, 5)
        kinds = [e.type for e in events]
        # A fresh snapshot after the takeover, then the job runs to its end here
        # (a clean stop charges no attempt for the interrupted run).
        assert kinds.count(EventType.SNAPSHOT) == 2
        assert kinds[-1] is EventType.SUCCESS
        assert kinds.index(EventType.SUCCESS) > kinds.index(EventType.SNAPSHOT, 1)
        info = await standby.get(job_id)
        assert (info.status, info.result, info.attempts) == (JobStatus.SUCCESS, 2, 1)
    finally:
        gate.set()
        await standby.stop()
        await owner.stop()


async def test_a_resume_on_another_process_replays_from_the_owners_window(
    tmp_path: Path,
) -> None:
    owner, standby = app(tmp_path), app(tmp_path)
    async with owner, standby:
        job_id = await owner.add("steps", 5)
        async with owner.subscribe(job_id) as stream:
            events = [e async for e in stream]
        last_seen = events[2].seq
        replayed = await standby.replay_after(job_id, last_seen)
        assert replayed is not None
        assert [e.seq for e in replayed] == [e.seq for e in events if e.seq > last_seen]


async def test_a_lock_file_removed_under_the_owner_makes_no_second_owner(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cleaner removes ``<database>.lock`` while the owner runs. Before, the
    standby's next look (every 0.1 s) made a new file, locked it and took over:
    two processes ran the same jobs. Now the standby sees the owner still holds the
    removed file and stays a standby; the owner locks the file at the path again."""
    owner, standby = app(tmp_path), app(tmp_path)
    async with owner, standby:
        assert (owner.role, standby.role) == ("owner", "standby")
        lock = Path(f"{owner.path}.lock")
        lock.unlink()
        await asyncio.sleep(10 * runtime_module.FOLLOW_INTERVAL)  # many looks of both
        assert (owner.role, standby.role) == ("owner", "standby")
        assert lock.exists()
        with lock.open("rb") as other:  # the file at the path is locked: by the owner
            with pytest.raises(BlockingIOError):
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert "was removed while this process owned the database: made again" in caplog.text
        job_id = await standby.add("hello", "ann")
        assert (await standby.wait(job_id, timeout=5)).result == "hello ann"
        await owner.stop()  # the lock now guarding the database is the one let go
        await until(lambda: standby.role == "owner", timeout=5)


async def test_a_database_opened_through_a_symbolic_link_has_one_owner(tmp_path: Path) -> None:
    """Ownership note 7: the lock is the file's, whatever name opens it. Before, a
    process that opened the database through a symbolic link locked
    ``<link>.lock`` and owned it too: it recovered the owner's running jobs as a
    dead owner's, and every job ran twice."""
    owner = app(tmp_path)
    link = tmp_path / "elsewhere" / "link.db"
    link.parent.mkdir()
    link.symlink_to(owner.path)
    other = Runtime(str(link))
    other.pool("p", concurrency=2)
    ran: list[str] = []

    @other.task(pool="p")
    async def hello(job: JobContext, name: str) -> str:
        ran.append("other")
        return f"hello {name}"

    async with owner, other:
        assert (owner.role, other.role) == ("owner", "standby")
        await until(lambda: owner.owner_status().peers == 1)  # its relay found
        job_id = await other.add("hello", "ann")
        assert (await other.wait(job_id, timeout=5)).result == "hello ann"
        await owner.stop()
        await until(lambda: other.role == "owner", timeout=5)
    assert ran == []


async def test_a_sqlite_uri_is_refused_so_no_second_name_owns_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``taskrt.store.sqlite.files``: SQLite opens ``file:app.db`` as ``app.db``, while
    the lock and the relay were named after a file ``file:app.db``. Before, a
    ``Runtime("file:app.db")`` beside an owner of ``app.db`` owned it too, recovered
    the owner's running jobs and ran them again. Now such a name (and the empty one,
    SQLite's temporary database of each connection) is refused where the runtime is
    made, saying what to write; ``./file:app.db`` is the file of that name."""
    monkeypatch.chdir(tmp_path)
    gate = asyncio.Event()
    owner = app(tmp_path, gate)
    async with owner:
        assert owner.role == "owner"
        job_id = await owner.add("steps", 1)  # running while the others start
        await until(lambda: owner.pool("p").statistics().running == 1)
        for name in ("file:app.db", f"file:{owner.path}", "file:app.db?mode=rw", ""):
            with pytest.raises(InvalidOption) as refused:
                Runtime(name)
            assert refused.value.field == "path"
        with pytest.raises(InvalidOption, match=r"write 'app\.db', the path it names"):
            Runtime("file:app.db")
        other = Runtime("./file:app.db")  # a file of that name: a database of its own
        async with other:
            assert other.role == "owner"
            assert Path("file:app.db").is_file() and Path("file:app.db.lock").is_file()
        assert (await owner.get(job_id)).status is JobStatus.RUNNING
        gate.set()
        assert (await owner.wait(job_id, timeout=5)).result == 1
    async with Runtime(":memory:") as memory:  # the one special name, as documented
        assert memory.role == "owner"


async def test_a_database_whose_name_is_not_utf8_has_an_owner_its_clients_reach(
    tmp_path: Path,
) -> None:
    """A file name that is not UTF-8 (b"\\xff\\xfe.db", held as surrogates): the relay's
    address beside it was measured with str.encode(), a UnicodeEncodeError in
    ``Runtime()``; beside the file, it could not be recorded in the database as text
    either. Its owner listens in the private folder instead, and a client reaches it."""
    name = os.fsdecode(os.fsencode(tmp_path) + b"/\xff\xfe.db")

    def runtime(**options: Any) -> Runtime:
        rt = Runtime(name, **options)

        @rt.task
        async def hello(job: JobContext, who: str) -> str:
            return f"hello {who}"

        return rt

    owner, client = runtime(), runtime(workers=False)
    async with owner, client:
        assert owner.role == "owner"
        await until(lambda: client.owner_status().reachable)
        job_id = await client.add("hello", "ann")
        assert (await client.wait(job_id, timeout=5)).result == "hello ann"
    assert b"\xff\xfe.db" in os.listdir(os.fsencode(tmp_path))


async def test_a_client_never_takes_over_and_falls_back_to_the_database(
    tmp_path: Path,
) -> None:
    owner = app(tmp_path)
    client = app(tmp_path, workers=False)
    await owner.start()
    await client.start()
    try:
        assert client.role == "client" and client.owner_status().reachable
        await owner.stop()
        await until(lambda: not client.owner_status().reachable)
        await asyncio.sleep(0.3)
        assert client.role == "client"
        job_id = await client.add("hello", "from the database")  # durable without an owner
        again = app(tmp_path)
        async with again:
            assert (await again.wait(job_id, timeout=5)).result == "hello from the database"
            await until(lambda: client.owner_status().reachable, timeout=2)
    finally:
        await client.stop()
        await owner.stop()


async def test_a_standby_that_takes_over_while_it_stops_leaves_no_scheduler_running(
    tmp_path: Path,
) -> None:
    """A standby's stop runs its stop hooks first; the scheduler's hook stops it. If
    the owner stops meanwhile, the standby takes over while its slower hooks still
    run, and the take-over starts the scheduler again: it must not outlive the stop
    (its tasks went on polling a closed store)."""
    owner, standby = app(tmp_path), app(tmp_path)
    in_hook, leave_hook = asyncio.Event(), asyncio.Event()

    async def slow_hook(rt: Runtime) -> None:
        in_hook.set()
        await leave_hook.wait()

    standby.on_stop(slow_hook)
    await owner.start()
    await standby.start()

    def scheduler_tasks() -> list[str]:
        return [
            t.get_name()
            for t in asyncio.all_tasks()
            if t.get_name().startswith("taskrt-scheduler") and not t.done()
        ]

    stopping = asyncio.create_task(standby.stop())
    try:
        await in_hook.wait()
        await owner.stop()
        # The owner's scheduler stopped with it: one that runs now is the standby's.
        await until(lambda: standby.role == "owner" and bool(scheduler_tasks()), timeout=5)
    finally:
        leave_hook.set()
        await stopping
        await owner.stop()
    assert scheduler_tasks() == []


async def test_a_relay_start_cancelled_half_way_leaves_nothing_listening(
    tmp_path: Path,
) -> None:
    """A standby stopped while it takes over is cancelled in the middle of starting
    its relay (relay note 9): nothing may go on accepting connections at the
    address for a process that does not own the database (a soak run once left
    such a socket, found as an unclosed one)."""

    async def no_calls(method: str, args: dict[str, object]) -> None:
        raise AssertionError("no call reaches a relay that never started")

    address = str(tmp_path / "relay.sock")
    server = RelayServer(Broker(), no_calls, owner="o", since=0.0)
    start = asyncio.create_task(server.start(address))
    await asyncio.sleep(0)  # the start runs to its first wait
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    with pytest.raises(OSError):
        await asyncio.open_unix_connection(address)


async def test_a_call_cancelled_as_its_answer_arrives_is_cancelled(tmp_path: Path) -> None:
    """A forwarded call whose caller is cancelled in the loop turn its answer comes
    in is cancelled: the answer does not swallow the cancel (on Python 3.11,
    ``wait_for`` returned it, and a stop waiting for that caller waited on)."""

    async def answer(method: str, args: dict[str, object]) -> str:
        return "done"

    address = str(tmp_path / "relay.sock")
    server = RelayServer(Broker(), answer, owner="o", since=0.0)
    await server.start(address)
    client = RelayClient(Broker(), on_closed=lambda c: None)
    await client.connect(address)
    calling = asyncio.create_task(client.call("anything"))
    resolve = client._resolve  # type: ignore[attr-defined]

    def resolve_then_cancel(call_id: object, value: object, error: BaseException | None) -> None:
        resolve(call_id, value, error)
        calling.cancel()  # the same turn: the caller has not resumed yet

    client._resolve = resolve_then_cancel  # type: ignore[attr-defined,method-assign]
    try:
        with pytest.raises(asyncio.CancelledError):
            await calling
    finally:
        await client.close()
        await server.close()


async def test_a_relay_closing_waits_for_no_goodbye_from_a_peer_that_hung_up(
    tmp_path: Path,
) -> None:
    """An owner whose close begins as a peer hangs up (the peer stopped too, or
    died) does not wait out its patience for that peer's goodbye (relay note 7)."""

    async def no_calls(method: str, args: dict[str, object]) -> None:
        raise AssertionError("no call is made")

    address = str(tmp_path / "relay.sock")
    server = RelayServer(Broker(), no_calls, owner="o", since=0.0)
    await server.start(address)
    client = RelayClient(Broker(), on_closed=lambda c: None)
    await client.connect(address)
    await client.close()  # hangs up without a goodbye
    t = time.monotonic()
    await server.close(patience=5.0)
    assert time.monotonic() - t < 1.0


async def test_a_restart_right_after_a_crash_owns_at_once(tmp_path: Path) -> None:
    owner = app(tmp_path)
    await owner.start()
    job_id = await owner.add("hello", "again")
    # A crash, as the kernel sees it: the lock goes, the record stays behind.
    owner.ownership._unlock()  # type: ignore[attr-defined]
    restarted = app(tmp_path)
    async with restarted:
        assert restarted.role == "owner"
        assert restarted.ownership.left_behind == owner.ownership.owner
        assert (await restarted.wait(job_id, timeout=5)).result == "hello again"
    await owner.stop()


async def test_a_takeover_that_fails_and_cannot_remove_its_record_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: giving the lock up after a failed takeover removes the record just
    written, and when that write failed too, its error ended the standby's follow
    task: the standby never took over, however soon the database recovered."""
    owner, standby = app(tmp_path), app(tmp_path)
    await owner.start()
    await standby.start()
    failing = 2  # the first two takeovers fail, each leaving its record behind
    recover, release_lease = standby.adoption.recover, standby.store.release_lease

    async def full_recover(*, unclean: bool) -> None:
        if failing:
            raise StoreUnavailable(standby.path, "database or disk is full")
        await recover(unclean=unclean)

    async def full_release_lease(name: str) -> None:
        nonlocal failing
        if failing:
            failing -= 1
            raise StoreUnavailable(standby.path, "database or disk is full")
        await release_lease(name)

    monkeypatch.setattr(standby.adoption, "recover", full_recover)
    monkeypatch.setattr(standby.store, "release_lease", full_release_lease)
    try:
        owner.pools["p"].pause()  # in memory only: the job waits for the next owner
        job_id = await standby.add("hello", "later")
        await owner.stop()
        await until(lambda: standby.role == "owner", timeout=3)
        assert failing == 0
        assert (await standby.wait(job_id, timeout=5)).result == "hello later"
    finally:
        await standby.stop()
        await owner.stop()


async def test_a_takeover_that_keeps_failing_logs_its_traceback_once_then_a_line_now_and_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A standby tries to take over every FOLLOW_INTERVAL while the database takes no
    writes (runtime note 5): its first failure is logged with its traceback (and
    the release that failed with it), then a line every TAKE_OVER_TOLD_EVERY
    seconds at most, and the takeover that succeeds says how many tries failed.
    Before, every try logged a full traceback (114 of them in 8 s with two
    workers), and each release that failed with it a line of its own."""
    every = 0.3
    monkeypatch.setattr(runtime_module, "TAKE_OVER_TOLD_EVERY", every, raising=False)
    owner, standby = app(tmp_path), app(tmp_path)
    await owner.start()
    await standby.start()
    failing = 15
    recover, release_lease = standby.adoption.recover, standby.store.release_lease

    async def full_recover(*, unclean: bool) -> None:
        nonlocal failing
        if failing:
            failing -= 1
            raise StoreUnavailable(standby.path, "database or disk is full")
        await recover(unclean=unclean)

    async def full_release_lease(name: str) -> None:
        if failing:
            raise StoreUnavailable(standby.path, "database or disk is full")
        await release_lease(name)

    monkeypatch.setattr(standby.adoption, "recover", full_recover)
    monkeypatch.setattr(standby.store, "release_lease", full_release_lease)
    try:
        with caplog.at_level(logging.INFO, logger="taskrt"):
            await owner.stop()
            await until(lambda: any("took over" in r.getMessage() for r in caplog.records), 10)
    finally:
        await standby.stop()
        await owner.stop()
    assert failing == 0
    records = [r for r in caplog.records if r.name == "taskrt" and standby.path in r.getMessage()]
    tracebacks = [r for r in records if r.exc_info]
    assert [r.getMessage() for r in tracebacks] == [
        f"taking over {standby.path} failed; trying again (a line every {every:g} s while it fails)"
    ]
    told = [r for r in records if r.getMessage().startswith(f"taking over {standby.path}")]
    assert 2 <= len(told) < 15, [r.getMessage() for r in told]  # 15 tries, 0.1 s apart
    for before, after in itertools.pairwise(told):
        assert after.created - before.created >= every - 0.05, (before.created, after.created)
        assert "still fails after" in after.getMessage() and "tries in" in after.getMessage()
    releases = [r for r in records if r.getMessage().startswith("releasing the ownership")]
    assert len(releases) == 1
    [took] = [r for r in records if "took over" in r.getMessage()]
    assert ", after 15 failed tries in " in took.getMessage(), took.getMessage()


def test_the_file_system_of_a_path_comes_from_the_longest_mount(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /srv/shared\\040data rw - nfs4 server:/export rw\n"
        "41 22 0:51 / /srv/sharedother rw - tmpfs tmpfs rw\n"
    )
    assert filesystem_of("/srv/shared data/app.db", str(mountinfo)) == "nfs4"
    assert filesystem_of("/srv/sharedother/app.db", str(mountinfo)) == "tmpfs"
    assert filesystem_of("/home/me/app.db", str(mountinfo)) == "ext4"
    assert filesystem_of("/x.db", str(tmp_path / "missing")) is None


async def test_a_database_on_a_network_file_system_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ownership_module, "filesystem_of", lambda path: "nfs4")
    rt = app(tmp_path)
    with pytest.raises(OwnershipError) as refused:
        await rt.start()
    assert "network file system (nfs4)" in str(refused.value)
    assert refused.value.path == db_file(tmp_path)
    assert not rt.started
    # A client never runs jobs: it may use such a file.
    client = app(tmp_path, workers=False)
    async with client:
        assert client.role == "client"


async def test_a_schedule_resumed_on_a_standby_fires_on_the_owner_at_once(
    tmp_path: Path,
) -> None:
    owner, standby = app(tmp_path), app(tmp_path)
    for rt in (owner, standby):
        rt.schedule("greet", "hello", "@every 0.05s", args=["cron"])
    owner.schedules.watch_interval = 60.0  # only being told can make the owner see it soon
    async with owner, standby:
        await owner.schedules.pause("greet")
        await owner.schedules.wait_idle()
        before = owner.counters.added["hello"]
        await asyncio.sleep(0.2)
        assert owner.counters.added["hello"] == before  # paused
        await standby.schedules.resume("greet")
        # The owner was told over the relay, not at its next look (60 s away).
        await until(lambda: owner.counters.added["hello"] > before, timeout=1.0)


async def test_adds_through_a_standby_while_the_owner_stops_are_all_run(tmp_path: Path) -> None:
    """A clean handover (relay note 7): every add is acknowledged once, and runs."""
    gate = asyncio.Event()
    owner = app(tmp_path, gate, grace=0.3, abandon_after=0.05)
    standby = app(tmp_path, gate)
    await owner.start()
    await standby.start()
    added: list[int] = []
    adding = True

    async def adder() -> None:
        while adding:
            added.append(await standby.add("hello", f"n{len(added)}"))
            await asyncio.sleep(0.001)

    try:
        await standby.add("steps", 1)  # keeps the owner draining for its grace
        task = asyncio.create_task(adder())
        await until(lambda: len(added) >= 20)
        await owner.stop()
        await until(lambda: standby.role == "owner", timeout=2)
        count = len(added)
        await until(lambda: len(added) >= count + 20)
        adding = False
        await task  # no add failed, in doubt or not
        gate.set()
        assert len(set(added)) == len(added)
        for job_id in added:
            assert (await standby.wait(job_id, timeout=5)).status is JobStatus.SUCCESS
    finally:
        adding = False
        gate.set()
        await standby.stop()
        await owner.stop()


async def test_a_process_names_the_owner_that_answers_not_a_stale_record(
    tmp_path: Path,
) -> None:
    owner = app(tmp_path)
    async with owner:
        # A record naming another owner at the same address: what a process may
        # read just before a new owner rewrites the row (relay note 8).
        sqlite_only_write(db_file(tmp_path), "UPDATE lease SET owner = 'vm:1:gone'")
        client = app(tmp_path, workers=False)
        async with client:
            status = client.owner_status()
            assert (status.owner, status.reachable) == (owner.ownership.owner, True)


async def test_bulk_actions_count_and_run_now_through_a_standby(tmp_path: Path) -> None:
    owner, standby = app(tmp_path), app(tmp_path)
    async with owner, standby:
        later = await standby.pool("p").add(standby.resolve("hello").options(delay=600), "x")
        assert await standby.count(scheduled=True) == 1
        info = await standby.run_now(later)
        assert info.run_at <= time.time()
        assert (await standby.wait(later, timeout=5)).result == "hello x"
        result = await standby.bulk("purge", status="SUCCESS", dry_run=True)
        assert (result.matched, result.done) == (1, 0)
        result = await standby.bulk("purge", status="SUCCESS")
        assert (result.matched, result.done) == (1, 1)
        assert await owner.count() == 0
