"""WAL checkpoints run in a thread of their own, not in the writer's commits (store note 14).

SQLite-specific by nature: the write-ahead log is a file of SQLite's.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from core_support import until

from taskrt.store import NewJob, Store


def job(n: int) -> NewJob:
    return NewJob(
        task="t",
        pool="p",
        args_json=f"[{n}, {'x' * 200!r}]".replace("'", '"'),
        kwargs_json="{}",
        max_attempts=1,
        priority=0,
        metadata_json="{}",
        unique_key=None,
        created_at=1.0,
        run_at=1.0,
        timeout=None,
        retry_json=None,
    )


async def test_the_wal_is_checkpointed_while_writes_go_on(tmp_path: Path) -> None:
    path = str(tmp_path / "app.db")
    store = Store(path)
    await store.open()
    wal = Path(path + "-wal")
    try:

        async def rounds(n: int) -> None:
            for r in range(n):
                await store.insert([job(r * 500 + i) for i in range(500)])
                await asyncio.sleep(0.02)

        await rounds(30)
        await until(lambda: store.checkpoints >= 1, timeout=5)
        first = wal.stat().st_size
        await rounds(60)
        await until(lambda: store.checkpoints >= 3, timeout=5)
        # Twice the writes again, yet the log is reused from its start after each
        # checkpoint instead of growing with every page written.
        assert wal.stat().st_size < 2 * first + 2_000_000
        assert os.path.getsize(path) > 8_000_000  # the rows did reach the database
    finally:
        await store.close()


async def test_an_idle_store_does_not_checkpoint(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "app.db"))
    await store.open()
    try:
        await store.insert([job(1)])
        await until(lambda: store.checkpoints == 1, timeout=5)
        await asyncio.sleep(0.6)  # three turns of the thread with nothing committed
        assert store.checkpoints == 1
    finally:
        await store.close()
