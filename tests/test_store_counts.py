"""The owner's mirror of the live counts (store note 12), beside other processes' writes.

SQLite-specific: a write batch adds its own changes to the counts it last read
and reads the table back only when another connection committed in between
(``PRAGMA data_version``), so two stores on one file show when that matters.
"""

from __future__ import annotations

from pathlib import Path

from test_store_checkpoint import job

from taskrt import JobStatus
from taskrt.store import Store

WAITING = JobStatus.WAITING


async def test_the_mirror_takes_in_what_another_process_wrote(tmp_path: Path) -> None:
    path = str(tmp_path / "app.db")
    owner, other = Store(path), Store(path)
    await owner.open()
    await other.open()
    try:
        await owner.insert([job(i) for i in range(3)])
        assert owner.counted("p", WAITING) == 3
        await owner.insert([job(3)])  # no other writer in between: added, not read back
        assert owner.counted("p", WAITING) == 4
        await other.insert([job(10 + i) for i in range(2)])
        assert other.counted("p", WAITING) == 6
        assert owner.counted("p", WAITING) == 4  # not seen until the owner writes
        await owner.insert([job(20)])
        assert owner.counted("p", WAITING) == 7
        assert await owner.count_waiting("p") == 7
        await other.cancel_external(1, 5.0)
        await owner.insert([job(21)])
        assert owner.counted("p", WAITING) == 7
        assert owner.counted("p", JobStatus.CANCELLED) == 1
    finally:
        await other.close()
        await owner.close()
