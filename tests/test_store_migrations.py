"""The schema's version (store note 11): new files, files of the first release,
files of a newer release, and several processes opening an old file at once;
version 5's counts (note 12), the index the waiting window reads (note 13), and
version 8's outcome of a dependent's wait."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from core_support import rows, write

from taskrt import JobContext, JobStatus, Runtime, Task
from taskrt.errors import SchemaTooNew, StoreError
from taskrt.store import MIGRATIONS, SCHEMA_VERSION, Store, queries

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.1.0.db"


def old_file(tmp_path: Path) -> str:
    """A copy of a database written by release 0.1.0 (no schema version recorded).

    It holds job 1 (SUCCESS, result {"to": "a@example.com"}), job 2 (FAILURE,
    "nope"), job 3 (WAITING, delayed an hour, priority 5, unique key "later",
    metadata {"user": 7}) and the schedule "nightly".
    """
    path = tmp_path / "old.db"
    shutil.copyfile(FIXTURE, path)
    return str(path)


def version(path: str) -> int:
    return int(rows(path, "PRAGMA user_version")[0][0])


def runtime(path: str) -> Runtime:
    rt = Runtime(path)

    @rt.task(pool="mail", attempts=2, retry="10ms")
    async def send(job: JobContext, to: str) -> dict[str, str]:
        return {"to": to}

    @rt.task(pool="mail", attempts=1)
    async def fail(job: JobContext) -> None:
        raise RuntimeError("nope")

    return rt


def test_the_fixture_is_a_first_release_file() -> None:
    assert version(str(FIXTURE)) == 0
    assert rows(str(FIXTURE), "SELECT id, status FROM jobs ORDER BY id") == [
        (1, "SUCCESS"),
        (2, "FAILURE"),
        (3, "WAITING"),
    ]


async def test_a_new_file_gets_the_current_version(tmp_path: Path) -> None:
    path = str(tmp_path / "new.db")
    async with runtime(path) as rt:
        job = await rt.pool("mail").add("send", "x@example.com")
        assert (await rt.wait(job, timeout=5)).status is JobStatus.SUCCESS
    assert version(path) == SCHEMA_VERSION == len(MIGRATIONS)


async def test_a_file_of_the_first_release_opens_and_upgrades(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = old_file(tmp_path)
    # The fixture's "nightly" came due at 2026-12-01 03:00 UTC: from then on, its
    # catch-up fire at start took id 4 before the add below. It moves to 2100, as job 3.
    write(path, "UPDATE schedules SET next_run_at = 4102444800")
    async with runtime(path) as rt:
        done = await rt.get(1)
        assert (done.status, done.result) == (JobStatus.SUCCESS, {"to": "a@example.com"})
        assert (await rt.get(2)).status is JobStatus.FAILURE
        waiting = await rt.get(3)
        assert waiting.status is JobStatus.WAITING
        assert (waiting.priority, waiting.unique_key, waiting.metadata) == (5, "later", {"user": 7})
        assert waiting.run_at == 4102444800.0  # still delayed (until 2100: no time bomb)
        assert [s.name for s in await rt.schedules.list()] == ["nightly"]
        assert len(await rt.attempts(1)) == 1
        # Ids go on from the old sequence; the unique key is still held.
        send = rt.tasks["send"]
        held = await rt.pool("mail").add(
            Task(send).options(unique_key="later"), "other@example.com"
        )
        assert held == 3
        again = await rt.pool("mail").add("send", "d@example.com")
        assert again == 4
        assert (await rt.wait(again, timeout=5)).status is JobStatus.SUCCESS
    assert version(path) == SCHEMA_VERSION


async def test_a_file_of_a_newer_release_is_refused_untouched(tmp_path: Path) -> None:
    path = old_file(tmp_path)
    write(path, f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    before = rows(path, "SELECT id, status, seq FROM jobs ORDER BY id")
    with pytest.raises(SchemaTooNew) as caught:
        async with runtime(path):
            pass
    assert (caught.value.found, caught.value.supported) == (SCHEMA_VERSION + 5, SCHEMA_VERSION)
    assert "upgrade taskrt" in str(caught.value)
    assert version(path) == SCHEMA_VERSION + 5
    assert rows(path, "SELECT id, status, seq FROM jobs ORDER BY id") == before
    assert rows(path, "SELECT count(*) FROM lease") == [(0,)]


@pytest.mark.parametrize("user_version", [3, SCHEMA_VERSION, SCHEMA_VERSION + 1])
async def test_another_apps_file_with_a_user_version_is_refused_not_migrated(
    tmp_path: Path, user_version: int
) -> None:
    """``PRAGMA user_version`` is taskrt's only in a file with taskrt's tables. Another
    application's file at this release's version opened as "nothing to do" (then
    failed on a missing table), and one below it had taskrt's migrations run on its
    tables; now the runtime and ``Store.migrate`` refuse it, its tables unchanged."""
    path = str(tmp_path / "other.db")
    write(path, "CREATE TABLE jobs (id INTEGER PRIMARY KEY, what TEXT)")
    write(path, f"PRAGMA user_version = {user_version}")
    refused = f"{path} is not a taskrt database (a SQLite database without taskrt's tables"
    with pytest.raises(StoreError, match=re.escape(refused)):
        async with runtime(path):
            pass
    with pytest.raises(StoreError, match=re.escape(refused)):
        await Store(path).migrate()
    assert rows(path, "SELECT name FROM sqlite_master") == [("jobs",)]
    assert version(path) == user_version


async def test_stores_opening_an_old_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = old_file(tmp_path)
    stores = [Store(path) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    for s in stores:
        await s.close()
    assert version(path) == SCHEMA_VERSION
    assert rows(path, "SELECT count(*) FROM jobs") == [(3,)]
    assert rows(path, "SELECT count(*) FROM schedules") == [(1,)]


OPEN = textwrap.dedent(
    """
    import asyncio, sys
    from taskrt.store import Store

    async def main() -> None:
        store = Store(sys.argv[1])
        await store.open()
        await store.close()

    asyncio.run(main())
    """
)


def test_processes_starting_at_once_on_an_old_file_all_open_it(tmp_path: Path) -> None:
    path = old_file(tmp_path)
    script = tmp_path / "open.py"
    script.write_text(OPEN)
    children = [
        subprocess.Popen([sys.executable, str(script), path], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [child.communicate(timeout=30)[1].decode() for child in children]
    assert [child.returncode for child in children] == [0] * 4, errors
    assert version(path) == SCHEMA_VERSION
    assert rows(path, "SELECT id, status FROM jobs ORDER BY id") == [
        (1, "SUCCESS"),
        (2, "FAILURE"),
        (3, "WAITING"),
    ]


def migrate_all(conn: sqlite3.Connection) -> None:
    """What another process's migration commits: every migration, then the version."""
    for statement in (st for migration in MIGRATIONS for st in migration):
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def test_a_migration_that_waited_for_the_lock_reports_the_version_found_under_it(
    tmp_path: Path,
) -> None:
    """Another process holds the write lock and migrates while this one waits for
    it: this one finds the current version there and says so (it upgraded nothing)."""
    import threading

    from taskrt.store.sqlite.schema import migrate

    path = str(tmp_path / "new.db")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    waiter.execute("PRAGMA busy_timeout = 20000")
    at_the_lock = threading.Event()
    waiter.set_trace_callback(lambda sql: "BEGIN" in sql and at_the_lock.set())
    found: list[int] = []
    thread = threading.Thread(target=lambda: found.append(migrate(waiter, path)))
    thread.start()
    try:
        assert at_the_lock.wait(20)  # it read version 0, and asks for the lock we hold
        migrate_all(holder)
        holder.execute("COMMIT")
        thread.join(20)
        assert found == [SCHEMA_VERSION]
    finally:
        holder.close()
        thread.join(20)
        waiter.close()
    assert version(path) == SCHEMA_VERSION


def test_migrate_after_another_process_migrated_first_reports_nothing_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``taskrt migrate`` read the version before it took the write lock: when
    another process migrated in between, it too said ``schema version 0 -> 9``
    (``found`` 0 with --json), as the one that did."""
    from taskrt import cli
    from taskrt.store.sqlite import store as sqlite_store

    path = str(tmp_path / "new.db")
    real = sqlite_store.migrate

    def another_first(conn: sqlite3.Connection, name: str) -> int:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            migrate_all(other)
            other.execute("COMMIT")
        finally:
            other.close()
        return real(conn, name)

    monkeypatch.setattr(sqlite_store, "migrate", another_first)
    assert cli.main(["migrate", "--db", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "database": path,
        "found": SCHEMA_VERSION,
        "version": SCHEMA_VERSION,
    }
    monkeypatch.setattr(sqlite_store, "migrate", real)
    assert cli.main(["migrate", "--db", path]) == 0
    assert capsys.readouterr().out == f"{path}: schema version {SCHEMA_VERSION}, nothing to do\n"


def test_processes_migrating_a_new_file_at_once_report_one_upgrade(tmp_path: Path) -> None:
    """Four ``taskrt migrate`` at once, a few times: exactly one says it upgraded."""
    for round_ in range(3):
        path = str(tmp_path / f"new{round_}.db")
        children = [
            subprocess.Popen(
                [sys.executable, "-m", "taskrt", "migrate", "--db", path],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        outs = [child.communicate(timeout=60) for child in children]
        assert [child.returncode for child in children] == [0] * 4, outs
        assert sorted(out for out, _ in outs) == sorted(
            [f"{path}: schema version 0 -> {SCHEMA_VERSION}\n"]
            + [f"{path}: schema version {SCHEMA_VERSION}, nothing to do\n"] * 3
        )


# -- version 5: counts by pool and status, the waiting window's index ---------------------

V4_JOBS = [
    ("mail", "WAITING", 3),
    ("mail", "RUNNING", 1),
    ("mail", "SUCCESS", 2),
    ("img", "WAITING", 1),
    ("img", "FAILURE", 1),
    ("img", "CANCELLED", 4),
]


def v4_file(tmp_path: Path) -> str:
    """A file of schema version 4 (no counts table) holding the jobs of ``V4_JOBS``."""
    path = str(tmp_path / "v4.db")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in (st for migration in MIGRATIONS[:4] for st in migration):
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 4")
        conn.executemany(
            "INSERT INTO jobs (task, pool, status, created_at, run_at) VALUES ('send', ?, ?, 0, 0)",
            [(pool, status) for pool, status, n in V4_JOBS for _ in range(n)],
        )
    finally:
        conn.close()
    return path


def counts_table(path: str) -> list[tuple[str, str, int]]:
    """The counts table's rows, but those at zero (a pool and status that had jobs)."""
    found = rows(path, "SELECT pool, status, n FROM job_counts WHERE n != 0")
    return [(str(p), str(s), int(n)) for p, s, n in found]


def counted_jobs(path: str) -> list[tuple[str, str, int]]:
    return [
        (str(p), str(s), int(n))
        for p, s, n in rows(path, "SELECT pool, status, count(*) FROM jobs GROUP BY pool, status")
    ]


async def test_a_version_4_file_is_counted_once_at_the_upgrade(tmp_path: Path) -> None:
    path = v4_file(tmp_path)
    store = Store(path)
    await store.open()
    try:
        assert version(path) == SCHEMA_VERSION == 9
        assert sorted(counts_table(path)) == sorted(counted_jobs(path)) == sorted(V4_JOBS)
        assert store.counted("img", JobStatus.CANCELLED) == 4  # loaded at opening
        assert await store.live_counts() == {
            "mail": {JobStatus.WAITING: 3, JobStatus.RUNNING: 1, JobStatus.SUCCESS: 2},
            "img": {JobStatus.WAITING: 1, JobStatus.FAILURE: 1, JobStatus.CANCELLED: 4},
        }
        # From there on, the writes keep it.
        assert await store.cleanup(1.0, [JobStatus.CANCELLED]) == 0  # finished_at is NULL
        assert await store.recover(10.0, max_recoveries=3, seq_gap=0) == (1, 0)
        assert await store.count_waiting("mail") == 4
    finally:
        await store.close()
    assert sorted(counts_table(path)) == sorted(counted_jobs(path))
    assert rows(path, "SELECT count(*) FROM sqlite_master WHERE name = 'jobs_waiting'") == [(1,)]


async def test_a_new_file_starts_with_no_counts_and_a_first_release_file_is_counted(
    tmp_path: Path,
) -> None:
    new, old = str(tmp_path / "new.db"), old_file(tmp_path)
    for path in (new, old):
        store = Store(path)
        await store.open()
        await store.close()
    assert counts_table(new) == []
    assert (
        sorted(counts_table(old))
        == sorted(counted_jobs(old))
        == [
            ("mail", "FAILURE", 1),
            ("mail", "SUCCESS", 1),
            ("mail", "WAITING", 1),
        ]
    )


WINDOW_STATEMENTS = {
    "level_top": (queries.SQL_LEVEL_TOP, ("mail",)),
    "level_below": (queries.SQL_LEVEL_BELOW, ("mail", 5)),
    "ready": (queries.SQL_READY, ("mail", 0, 100.0, 10)),
    "ready_after": (queries.SQL_READY_AFTER, ("mail", 0, 100.0, 50.0, 50.0, 7, 10)),
    "delayed": (queries.SQL_DELAYED, ("mail", 0, 100.0, 100.0, 2**63 - 1, 10)),
}


@pytest.mark.parametrize("name", list(WINDOW_STATEMENTS))
def test_the_window_reads_walk_the_waiting_index_without_a_sort(tmp_path: Path, name: str) -> None:
    """Else a refill scans the table: seconds at ten million jobs, not microseconds."""
    path = v4_file(tmp_path)
    asyncio.run(_open_and_close(path))
    statement, params = WINDOW_STATEMENTS[name]
    plan = " / ".join(str(r[3]) for r in rows(path, f"EXPLAIN QUERY PLAN {statement}", params))
    assert "USING INDEX jobs_waiting" in plan or "USING COVERING INDEX jobs_waiting" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


def test_the_unique_holder_read_uses_the_live_key_index(tmp_path: Path) -> None:
    path = v4_file(tmp_path)
    asyncio.run(_open_and_close(path))
    plan = " / ".join(
        str(r[3]) for r in rows(path, f"EXPLAIN QUERY PLAN {queries.SQL_UNIQUE_HOLDER}", ("k",))
    )
    assert "jobs_unique_live" in plan, plan


async def _open_and_close(path: str) -> None:
    store = Store(path)
    await store.open()
    await store.close()


async def test_a_version_7_file_keeps_its_blocked_jobs_at_the_upgrade(tmp_path: Path) -> None:
    path = str(tmp_path / "app.db")

    def runtime() -> tuple[Runtime, Task[..., Any], Task[..., Any]]:
        rt = Runtime(path)

        @rt.task
        async def first() -> int:
            return 20

        @rt.task
        async def then(n: int, plus: int) -> int:
            return n + plus

        return rt, first, then

    rt, first, then = runtime()
    async with rt:
        rt.pool("default").pause()
        flow = await rt.chain(first.s(), then.s(plus=1))
    # What the file was at version 7: no outcome column, no index on it.
    write(path, "DROP INDEX job_waits_open")
    write(path, "DROP INDEX job_waits_cancelled")
    write(path, "ALTER TABLE job_waits DROP COLUMN outcome")
    write(path, "ALTER TABLE schedules DROP COLUMN origin")
    write(path, "PRAGMA user_version = 7")
    store = Store(path)
    await store.open()
    await store.close()
    assert version(path) == SCHEMA_VERSION == 9
    assert rows(path, "SELECT child, outcome FROM job_waits") == [(flow.jobs[1], None)]
    rt, first, then = runtime()
    async with rt:
        rt.pool("default").resume()
        assert (await rt.wait(flow.jobs[1], timeout=10)).result == 21
    assert rows(path, "SELECT child, outcome FROM job_waits") == [(flow.jobs[1], "released")]


async def test_a_schedule_stored_before_version_9_is_kept_by_an_owner_that_does_not_declare_it(
    tmp_path: Path,
) -> None:
    # Version 9 records where a schedule comes from; one stored before cannot say, so
    # it counts as created at run time: only a schedule known to be the code's is
    # deleted when the code no longer declares it (scheduler note 4).
    path = str(tmp_path / "app.db")
    rt = Runtime(path)

    @rt.task
    async def report() -> None: ...

    rt.schedule("nightly", report, "0 3 * * *")
    async with rt:
        pass
    write(path, "ALTER TABLE schedules DROP COLUMN origin")
    write(path, "PRAGMA user_version = 8")
    rt = Runtime(path)
    rt.task(report.spec.handler, name="report")
    async with rt:
        assert [s.name for s in await rt.schedules.list()] == ["nightly"]
    assert rows(path, "SELECT name, origin FROM schedules") == [("nightly", "api")]
