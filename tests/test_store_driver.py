"""The one private API of aiosqlite the SQLite store uses, and the versions it is pinned to.

``store.sqlite.batch.in_thread`` runs a whole write batch in the connection's
thread through ``Connection._execute`` and ``Connection._conn``. An aiosqlite
outside the pinned range, or one without those, must fail here, by name,
rather than somewhere in the group commit.
"""

from __future__ import annotations

import re
import sqlite3
import tomllib
from importlib.metadata import version
from pathlib import Path

import aiosqlite

from taskrt.store.sqlite.batch import in_thread

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def pinned_range() -> tuple[tuple[int, ...], tuple[int, ...]]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    [spec] = [d for d in deps if d.startswith("aiosqlite")]
    low = re.search(r">=\s*([\d.]+)", spec)
    high = re.search(r"<\s*([\d.]+)", spec)
    assert low and high, f"aiosqlite must be pinned to a range, found {spec!r}"
    return _parts(low.group(1)), _parts(high.group(1))


def _parts(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def test_the_installed_aiosqlite_is_in_the_pinned_range() -> None:
    low, high = pinned_range()
    installed = _parts(version("aiosqlite"))
    assert low <= installed < high, (installed, low, high)


async def test_the_private_api_the_store_uses_is_there(tmp_path: Path) -> None:
    db = await aiosqlite.connect(tmp_path / "x.db")
    try:
        assert callable(db._execute)
        assert isinstance(db._conn, sqlite3.Connection)

        def work(conn: sqlite3.Connection, n: int) -> int:
            conn.execute("CREATE TABLE t (x)")
            conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(n)])
            return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])

        assert await in_thread(db, work, 5) == 5
    finally:
        await db.close()
