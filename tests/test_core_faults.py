"""Faults of the environment: a full disk, a lock held too long, a process that dies,
a handler that blocks the loop. No state may be dropped, and every job completes
once the fault is gone, without a restart (store notes 9 and 10, pool note 5)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from core_support import all_jobs, committed_jobs, committed_now, db_file, new_job, until

from taskrt import AttemptOutcome, JobContext, JobStatus, Runtime, StoreError, StoreUnavailable
from taskrt.web import create_app


async def _fill_disk(rt: Runtime) -> None:
    """The database may not grow by a single page (a portable full disk). Set on the
    writer's connection in a transaction of its own, never beside a write batch."""
    async with rt.store.transaction() as tx:
        pages = (await tx.execute("PRAGMA page_count"))[0][0]
        await tx.execute(f"PRAGMA max_page_count = {pages}")


async def _free_disk(rt: Runtime) -> None:
    async with rt.store.transaction() as tx:
        await tx.execute("PRAGMA max_page_count = 1073741823")


def _big_runtime(tmp_path: Path, **options: Any) -> tuple[Runtime, asyncio.Event]:
    rt = Runtime(db_file(tmp_path), **options)
    gate = asyncio.Event()

    @rt.task(pool="work")
    async def big(job: JobContext, n: int) -> str:
        await job.progress(1, 2, "waiting")
        await gate.wait()
        return "x" * 20_000 + str(n)  # needs new pages to be stored

    rt.pool("work", concurrency=20)
    return rt, gate


async def test_a_full_disk_keeps_every_state_and_recovers_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rt, gate = _big_runtime(tmp_path)
    async with rt:
        ids = [await rt.pool("work").add("big", i) for i in range(11)]
        await until(lambda: rt.pool("work").running == 11)
        await rt.store.flush()  # every attempt charged on disk
        await _fill_disk(rt)
        gate.set()

        # Every job finishes in memory and rt.wait returns, though nothing is written.
        infos = [await rt.wait(i, timeout=5) for i in ids]
        assert {i.status for i in infos} == {JobStatus.SUCCESS}
        await until(lambda: not rt.health().ok)
        health = rt.health()
        assert "database or disk is full" in (health.error or "")
        assert health.retained > 0
        on_disk = await committed_jobs(tmp_path)
        assert {j.status for j in on_disk} == {JobStatus.RUNNING}
        # Reads show the in-memory truth, never going back in time.
        assert (await rt.get(ids[0])).status is JobStatus.SUCCESS
        page = await rt.jobs(limit=50)
        assert {j.status for j in page.jobs} == {JobStatus.SUCCESS}

        # A new add is refused at once with the real error; nothing is half-stored.
        with pytest.raises(StoreUnavailable, match="database or disk is full"):
            await rt.pool("work").add("big", 99)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(rt)), base_url="http://testserver"
        ) as client:
            r = await client.get("/health")
            assert r.status_code == 503
            assert r.json()["status"] == "failing"
            r = await client.post("/jobs", json={"task": "big", "args": [100]})
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "store_unavailable"
            assert str(tmp_path) not in r.text

            freed = time.monotonic()
            await _free_disk(rt)
            await until(lambda: rt.health().ok, timeout=3)
            recovered_in = time.monotonic() - freed
            assert (await client.get("/health")).status_code == 200

        assert recovered_in < 1.5  # backoff is capped at 1 s
        await rt.store.flush()
        stored = {j.id: j.status for j in await committed_jobs(tmp_path)}
        assert stored == {i: JobStatus.SUCCESS for i in ids}
        assert rt.health().outages == 1
        assert rt.health().last_outage is not None
        results = {j.id: j.result for j in await committed_jobs(tmp_path)}
        assert all(isinstance(r, str) and len(r) > 20_000 for r in results.values())
        # And the store takes new work again.
        gate.set()
        new = await rt.pool("work").add("big", 12)
        assert (await rt.wait(new, timeout=5)).status is JobStatus.SUCCESS
    messages = [r.getMessage() for r in caplog.records]
    assert not any("cannot rollback" in m for m in messages)
    assert any("database or disk is full" in m for m in messages)
    assert any("resumed after" in m for m in messages)
    # The WAL was checkpointed once the disk had room again.
    assert os.path.getsize(rt.path + "-wal") < 200_000 if os.path.exists(rt.path + "-wal") else True


async def test_adds_during_an_outage_are_refused_at_once_while_kept_writes_wait(
    tmp_path: Path,
) -> None:
    """The kept writes of finished jobs wait out a backoff that doubles to a
    second; an add meanwhile is refused at once, not after the backoff (over HTTP
    a client waited up to a second for each 503)."""
    rt, gate = _big_runtime(tmp_path)
    async with rt:
        ids = [await rt.pool("work").add("big", i) for i in range(3)]
        await until(lambda: rt.pool("work").running == 3)
        await rt.store.flush()
        await _fill_disk(rt)
        gate.set()
        for job_id in ids:
            await rt.wait(job_id, timeout=5)
        await until(lambda: not rt.health().ok)
        await asyncio.sleep(1.5)  # the backoff has grown past half a second
        took = []
        for n in range(8):
            began = time.monotonic()
            with pytest.raises(StoreUnavailable, match="database or disk is full"):
                await rt.pool("work").add("big", 100 + n)
            took.append(time.monotonic() - began)
            await asyncio.sleep(0.05)
        assert max(took) < 0.1, took
        await _free_disk(rt)
        await until(lambda: rt.health().ok, timeout=3)
        new = await rt.pool("work").add("big", 200)  # and adds go in again
        assert (await rt.wait(new, timeout=5)).status is JobStatus.SUCCESS
    stored = {j.id: j.status for j in await committed_jobs(tmp_path)}
    assert stored == {**{i: JobStatus.SUCCESS for i in ids}, new: JobStatus.SUCCESS}


async def test_a_lock_held_past_the_busy_timeout_delays_writes_and_drops_none(
    tmp_path: Path,
) -> None:
    rt = Runtime(db_file(tmp_path), busy_timeout=0.1)
    gate = asyncio.Event()

    @rt.task(pool="work")
    async def wait_gate(job: JobContext, n: int) -> int:
        await gate.wait()
        return n

    rt.pool("work", concurrency=10)
    async with rt:
        ids = [await rt.pool("work").add(wait_gate, i) for i in range(10)]
        await until(lambda: rt.pool("work").running == 10)
        await rt.store.flush()
        other = sqlite3.connect(rt.path, isolation_level=None, timeout=0)
        try:
            other.execute("BEGIN EXCLUSIVE")
            gate.set()
            infos = [await rt.wait(i, timeout=5) for i in ids]
            assert [i.result for i in infos] == list(range(10))
            await until(lambda: not rt.health().ok, timeout=3)
            assert "locked" in (rt.health().error or "")
            with pytest.raises(StoreUnavailable):
                await rt.pool("work").add(wait_gate, 99)
            await asyncio.sleep(0.5)  # the lock is held longer than the busy timeout
            assert not rt.health().ok
        finally:
            other.execute("COMMIT")
            other.close()
        await until(lambda: rt.health().ok, timeout=3)
        await rt.store.flush()
        stored = {j.id: j.status for j in await committed_jobs(tmp_path)}
        assert stored == {i: JobStatus.SUCCESS for i in ids}


async def test_an_outage_that_refused_only_adds_ends_without_another_write(
    tmp_path: Path,
) -> None:
    """An add refused while the database took no writes kept nothing to write again:
    health said *failing* until some later write happened to commit, so an idle
    instance stayed out of a readiness probe's rotation for good. A probe write
    now ends the outage once the database takes writes, and not before."""
    rt = Runtime(db_file(tmp_path), busy_timeout=0.1)

    @rt.task
    async def noop(job: JobContext) -> None:
        return None

    async with rt:
        await rt.store.flush()
        other = sqlite3.connect(rt.path, isolation_level=None, timeout=0)
        try:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(StoreUnavailable):
                await rt.add(noop)
            assert not rt.health().ok
            await asyncio.sleep(0.6)  # probes meanwhile find the lock still held
            assert not rt.health().ok
            assert rt.health().retained == 0
        finally:
            other.execute("COMMIT")
            other.close()
        await until(lambda: rt.health().ok, timeout=3)  # no write of the runtime's
        assert rt.health().outages == 1
        done = await rt.wait(await rt.add(noop), timeout=5)
        assert done.status is JobStatus.SUCCESS


async def test_stopping_while_the_disk_is_full_gives_up_after_grace_and_a_restart_runs_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rt, gate = _big_runtime(tmp_path, grace=0.3)
    async with rt:
        job = await rt.pool("work").add("big", 1)
        await until(lambda: rt.pool("work").running == 1)
        await rt.store.flush()
        await _fill_disk(rt)
        gate.set()
        assert (await rt.wait(job, timeout=5)).status is JobStatus.SUCCESS
        await until(lambda: not rt.health().ok)
        started = time.monotonic()
    assert time.monotonic() - started < 3  # stop() neither hangs nor raises
    assert any("were not written" in r.getMessage() for r in caplog.records)
    assert [j.status for j in await committed_jobs(tmp_path)] == [JobStatus.RUNNING]

    # At-least-once: the next start recovers the job and runs it again.
    again, gate2 = _big_runtime(tmp_path)
    gate2.set()
    async with again:
        info = await again.wait(job, timeout=5)
        assert info.status is JobStatus.SUCCESS
        assert info.recoveries == 1
        assert info.attempts == 2


POISON_PILL = textwrap.dedent(
    """
    import asyncio, os, sys
    from taskrt import Runtime

    rt = Runtime(sys.argv[1], max_recoveries=2)
    rt.pool("p", concurrency=1)

    @rt.task(pool="p", call="plain")
    async def pill() -> None:
        os._exit(17)  # dies on its first line, every time

    @rt.task(pool="p", call="plain")
    async def fine(n: int) -> int:
        return n

    async def main() -> None:
        async with rt:
            if sys.argv[2] == "add":
                rt.pool("p").pause()  # all six are stored before the pill can run
                await rt.pool("p").add(pill)
                for n in range(5):
                    await rt.pool("p").add(fine, n)
                rt.pool("p").resume()
            while True:
                page = await rt.jobs(status=["WAITING", "RUNNING"])
                if not page.jobs:
                    return
                await asyncio.sleep(0.02)

    asyncio.run(main())
    """
)


def test_a_poison_pill_that_kills_the_process_is_failed_after_its_recoveries(
    tmp_path: Path,
) -> None:
    script = tmp_path / "pill.py"
    script.write_text(POISON_PILL)
    path = db_file(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    codes = []
    for run in range(6):
        mode = "add" if run == 0 else "run"
        # A supervisor restarting the process at once: the dead owner's lock is free.
        done = subprocess.run(
            [sys.executable, str(script), path, mode], env=env, timeout=20, capture_output=True
        )
        codes.append(done.returncode)
        if done.returncode == 0:
            break
    # Three attempts charged before the handler ran, then orphaned; the others ran.
    assert codes == [17, 17, 17, 0], codes
    jobs = committed_now(tmp_path, all_jobs)
    pill = jobs[0]
    assert (pill.id, pill.task, pill.status, pill.attempts, pill.recoveries) == (
        1,
        "pill",
        JobStatus.FAILURE,
        3,
        2,
    )
    assert pill.error is not None and "orphaned" in pill.error
    assert [(j.task, j.status) for j in jobs[1:]] == [("fine", JobStatus.SUCCESS)] * 5
    interrupted = committed_now(tmp_path, lambda store: store.attempts(1))
    assert len(interrupted) == 3


async def test_a_handler_that_blocks_the_loop_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rt = Runtime(db_file(tmp_path), stall_threshold=0.2)

    @rt.task(pool="slow")
    async def blocker(job: JobContext) -> None:
        time.sleep(0.6)

    caplog.set_level(logging.WARNING, logger="taskrt")
    async with rt:
        job = await rt.pool("slow").add(blocker)
        await rt.wait(job, timeout=5)
        await until(lambda: rt.loop_watchdog.statistics().stalls >= 1, timeout=2)
        from taskrt.metrics import exposition, registry

        text = exposition(registry(rt))[0].decode()
    during = [r.getMessage() for r in caplog.records if "has been blocked" in r.getMessage()]
    assert during and f"job {job} (blocker)" in during[0]
    assert "taskrt_loop_stalls_total 1.0" in text


async def test_a_write_that_slipped_past_the_checks_fails_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Store note 10: the batch is written again part by part; only the bad part fails."""
    from taskrt import StoreError

    rt = Runtime(db_file(tmp_path))
    gate = asyncio.Event()

    @rt.task(pool="work")
    async def echo(job: JobContext, n: int) -> int:
        await gate.wait()
        return n

    rt.pool("work", concurrency=60)
    async with rt:
        running = await rt.pool("work").add(echo, -1)
        await until(lambda: rt.pool("work").running == 1)
        await rt.store.flush()
        # Fifty adds from other producers: created first, so that their first steps
        # (which queue their inserts) run before the writer wakes for the poison.
        adds = [asyncio.ensure_future(rt.pool("work").add(echo, i)) for i in range(50)]
        batches = rt.store.batches
        # Values the edges would refuse, queued straight into the store: a progress
        # SQLite cannot bind, an insert with a lone surrogate, a statement it refuses.
        rt.store.progress(running, 10**400, 1, "bad", 99)
        poisoned = rt.store.insert(
            [
                new_job(
                    '["\ud800"]',
                    task="echo",
                    pool="work",
                    created_at=time.time(),
                    run_at=time.time(),
                )
            ]
        )
        refused = rt.store.record_attempt(
            running,
            None,  # type: ignore[arg-type]  # NOT NULL: the database refuses it
            time.time(),
            time.time(),
            AttemptOutcome.ERROR,
            None,
            None,
        )
        [result] = await poisoned
        assert rt.store.batches == batches + 1  # one batch: the poison beside the adds
        ids = await asyncio.gather(*adds)
        assert isinstance(result, StoreError)
        await refused  # the batch committed: the bad statement was rolled back alone
        gate.set()
        infos = [await rt.wait(i, timeout=5) for i in ids]
        assert [i.result for i in infos] == list(range(50))
        assert (await rt.wait(running, timeout=5)).status is JobStatus.SUCCESS
        assert rt.health().ok
        await rt.store.flush()
    stored = {j.id: j.status for j in await committed_jobs(tmp_path)}
    assert set(stored.values()) == {JobStatus.SUCCESS} and len(stored) == 51
    messages = [r.getMessage() for r in caplog.records]
    assert any("writing its parts apart" in m for m in messages)
    assert any(f"refused a write of job {running} (attempt)" in m for m in messages)


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 4 MiB tmpfs of our own (root only), unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the max_page_count test covers the logic")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_real_full_disk_costs_no_state(small_disk: Path) -> None:
    """ENOSPC from the file system itself, not a page limit: same promise."""
    rt, gate = _big_runtime(small_disk)
    filler = small_disk / "filler"
    async with rt:
        ids = [await rt.pool("work").add("big", i) for i in range(8)]
        await until(lambda: rt.pool("work").running == 8)
        await rt.store.flush()
        with filler.open("wb") as f:  # take every free byte
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        gate.set()
        infos = [await rt.wait(i, timeout=5) for i in ids]
        assert {i.status for i in infos} == {JobStatus.SUCCESS}
        await until(lambda: not rt.health().ok, timeout=3)
        with pytest.raises(StoreUnavailable):
            await rt.pool("work").add("big", 99)
        filler.unlink()
        await until(lambda: rt.health().ok, timeout=3)
        await rt.store.flush()
        stored = {j.id: j.status for j in await committed_jobs(small_disk)}
        assert stored == {i: JobStatus.SUCCESS for i in ids}


def _hello_runtime(folder: Path, **options: Any) -> Runtime:
    rt = Runtime(db_file(folder), **options)

    @rt.task(pool="work")
    async def hello(job: JobContext, name: str) -> str:
        return f"hello {name}"

    return rt


async def _a_waiting_job(folder: Path) -> int:
    """A job stored WAITING by a runtime that stopped cleanly."""
    rt = _hello_runtime(folder)
    async with rt:
        rt.pool("work").pause()  # in memory only: the job waits for the next owner
        return await rt.pool("work").add("hello", "later")


async def _check_a_standby_until_writes_succeed(
    rt: Runtime, job_id: int, writes_again: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with rt:
        assert rt.role == "standby"
        assert (await rt.get(job_id)).status is JobStatus.WAITING  # it serves reads
        with pytest.raises(StoreUnavailable):
            await rt.add("hello", "now")  # refused, as an owner's during an outage
        writes_again()
        # The takeover's end, not just its role: a stop cancels a takeover under way.
        await until(lambda: any("took over" in r.getMessage() for r in caplog.records), 3)
        assert rt.role == "owner"
        assert (await rt.wait(job_id, timeout=5)).result == "hello later"
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot record itself as the owner" in m for m in messages), messages
    assert not any("not written" in m for m in messages), messages


async def test_a_start_the_database_cannot_record_now_is_a_standby_that_owns_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A start that took the free ownership lock but could not write its record
    (another process held the write lock past the busy timeout) failed with
    StoreError; a worker under a supervisor then failed its start (runtime note 5)."""
    job_id = await _a_waiting_job(tmp_path)
    other = sqlite3.connect(db_file(tmp_path), isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
        rt = _hello_runtime(tmp_path, busy_timeout=0.05)
        await _check_a_standby_until_writes_succeed(
            rt, job_id, lambda: other.execute("COMMIT"), caplog
        )
    finally:
        other.close()


async def test_a_start_on_a_real_full_disk_is_a_standby_that_owns_once_there_is_room(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ENOSPC at the owner's record ("database or disk is full"), as a worker that
    uvicorn started again after a kill -9 of the owner met it: the same."""
    job_id = await _a_waiting_job(small_disk)
    # Another process keeps the file open, as a standby does: the log and its index
    # stay, emptied, and the owner's record must grow the log.
    other = sqlite3.connect(db_file(small_disk), isolation_level=None)
    filler = small_disk / "filler"
    try:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # take every free byte
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        rt = _hello_runtime(small_disk)
        await _check_a_standby_until_writes_succeed(rt, job_id, filler.unlink, caplog)
    finally:
        other.close()


class _Unreadable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message for you")


async def test_every_way_a_handler_can_fail_ends_its_job_and_counts_as_failed(
    tmp_path: Path,
) -> None:
    """Before: an exception whose str() raised left its job RUNNING for good (the
    runner died describing it); a handler's SystemExit or KeyboardInterrupt stopped
    the whole event loop with the job RUNNING on disk; a result that could not be
    stored was counted as processed, not failed."""
    rt = Runtime(db_file(tmp_path))
    rt.pool("default", concurrency=2)

    @rt.task
    async def unreadable(job: JobContext) -> None:
        raise _Unreadable()

    @rt.task
    def unreadable_in_a_thread(job: JobContext) -> None:
        raise _Unreadable()

    @rt.task
    async def exits(job: JobContext) -> None:
        raise SystemExit(3)

    @rt.task
    def interrupted_in_a_thread(job: JobContext) -> None:
        raise KeyboardInterrupt

    @rt.task
    async def returns_a_set(job: JobContext) -> set[int]:
        return {1, 2}

    @rt.task
    async def fine(job: JobContext) -> str:
        return "fine"

    failing = (unreadable, unreadable_in_a_thread, exits, interrupted_in_a_thread, returns_a_set)
    async with rt:
        ids = [await rt.add(task) for task in failing]
        infos = [await rt.wait(job_id, timeout=5) for job_id in ids]
        after = await rt.wait(await rt.add(fine), timeout=5)  # the runtime runs on
        pool = rt.pools["default"]
        counted = (pool.processed, pool.failed)
    assert [i.status for i in infos] == [JobStatus.FAILURE] * len(failing)
    assert "could not be read" in (infos[0].error or "")
    assert (infos[2].error, infos[3].error) == ("SystemExit: 3", "KeyboardInterrupt")
    assert after.result == "fine"
    assert counted == (1, len(failing))
    stored = {j.id: j.status for j in await committed_jobs(tmp_path)}
    assert [stored[i] for i in ids] == [JobStatus.FAILURE] * len(failing)


async def test_a_damaged_database_file_is_named_as_such_and_never_retried(tmp_path: Path) -> None:
    """A file whose pages no longer make a database (a disk's fault, a bad copy)
    is refused at start, saying what is wrong and what mends it: no retry does."""
    path = db_file(tmp_path)
    rt = Runtime(path)

    @rt.task
    async def noop(text: str) -> None:
        return None

    async with rt:
        rt.pool("default").pause()
        for _ in range(300):
            await rt.pool("default").add(noop, "x" * 500)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # every page past the first third: garbage
        f.seek(size // 3)
        f.write(b"\xa5" * (size - size // 3))
    again = Runtime(path)
    again.task(noop.spec.handler, name="noop")
    with pytest.raises(StoreError) as caught:
        async with again:
            pass
    assert not isinstance(caught.value, StoreUnavailable)  # not "try again later"
    message = str(caught.value)
    assert "malformed" in message and "damaged" in message, message
    assert f"restore {path!r} from a backup" in message, message


READ_ONLY_START = textwrap.dedent(
    """
    import asyncio, sys
    from taskrt import Runtime, StoreError
    from taskrt.store.sqlite import Store

    if sys.argv[2] == "query_only":
        opened = Store.open

        async def open_read_only(self: Store) -> None:
            # What SQLite does with a file it may not write: every write fails
            # with SQLITE_READONLY ("attempt to write a readonly database").
            await opened(self)
            await self.db.execute_fetchall("PRAGMA query_only = ON")

        Store.open = open_read_only  # type: ignore[method-assign]

    rt = Runtime(sys.argv[1])

    async def main() -> None:
        try:
            async with rt:
                print("started", flush=True)
        except StoreError as exc:
            print(type(exc).__name__, exc, flush=True)

    asyncio.run(main())
    """
)


@contextlib.contextmanager
def read_only_file(path: str) -> Iterator[None]:
    """``path`` made read-only for real: immutable for root (who ignores its mode)."""
    if os.geteuid() != 0:
        os.chmod(path, 0o444)
        try:
            yield
        finally:
            os.chmod(path, 0o644)
        return
    done = subprocess.run(["chattr", "+i", path], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot make {path} immutable here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", path], check=True)


@pytest.mark.parametrize("how", ["query_only", "file"])
async def test_a_read_only_database_stops_the_start_saying_so_and_the_process_ends(
    tmp_path: Path, how: str
) -> None:
    """Before: the failed start's cleanup removed the owner's record, a write, which
    failed too; its StoreUnavailable ("cannot be written now") hid the real error,
    and the store was never closed, so its threads kept the process from ending
    (``taskrt serve`` printed that it stopped at start, then hung)."""
    path = db_file(tmp_path)
    async with Runtime(path):
        pass  # a taskrt database, left cleanly
    script = tmp_path / "read_only.py"
    script.write_text(READ_ONLY_START)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with read_only_file(path) if how == "file" else contextlib.nullcontext():
        done = subprocess.run(
            [sys.executable, str(script), path, how], env=env, timeout=10, capture_output=True
        )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err
    assert out.startswith("StoreError "), out  # not StoreUnavailable: no wait mends it
    assert "the file is read-only" in out, out
    assert "cannot be written now" not in out + err, (out, err)


STOP_UNWRITABLE = textwrap.dedent(
    """
    import asyncio, sys, threading
    from taskrt import Runtime

    async def main() -> None:
        owner, standby = Runtime(sys.argv[1]), Runtime(sys.argv[1])
        await owner.start()
        await standby.start()
        inside = asyncio.Event()

        async def recover_for_ever(*, unclean: bool) -> None:
            inside.set()
            await asyncio.Event().wait()  # until the stop cancels the takeover

        standby.adoption.recover = recover_for_ever
        await owner.stop()
        await inside.wait()  # the standby holds the lock and has recorded itself
        # From now on the database takes no write (SQLITE_READONLY, as a read-only file).
        await standby.store.db.execute_fetchall("PRAGMA query_only = ON")
        try:
            await standby.stop()
        except Exception as exc:
            print("raised", type(exc).__name__, exc, flush=True)
        else:
            print("stopped", flush=True)
        # Threads that would keep the interpreter from ending (the loop's own
        # executor, asyncio_N, ends with asyncio.run).
        left = [
            t.name for t in threading.enumerate()
            if t is not threading.current_thread() and not t.daemon
            and not t.name.startswith("asyncio_")
        ]
        print("threads", left, flush=True)

    asyncio.run(main())
    """
)


async def test_a_stop_whose_release_cannot_write_closes_the_store_and_the_process_ends(
    tmp_path: Path,
) -> None:
    """A stop that still holds the lock at its end (here a standby stopped in the
    middle of a takeover, its record written) removes the record, a write: when
    the database takes none, that failure is logged and the stop goes on to close
    the store. Before, the failed release raised out of stop() before
    store.close(), and the two aiosqlite threads kept the process from ending."""
    path = db_file(tmp_path)
    script = tmp_path / "stop_unwritable.py"
    script.write_text(STOP_UNWRITABLE)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, str(script), path], env=env, timeout=10, capture_output=True
    )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err
    assert out.splitlines() == ["stopped", "threads []"], (out, err)
    assert f"releasing the ownership of {path} failed" in err, err
