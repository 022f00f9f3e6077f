"""The schema's version (store note 11): new files, files of the first release,
files of a newer release, and several processes opening an old file at once."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from core_support import rows, write

from taskrt import JobContext, JobStatus, Runtime, Task
from taskrt.errors import SchemaTooNew
from taskrt.store import MIGRATIONS, SCHEMA_VERSION, Store

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
