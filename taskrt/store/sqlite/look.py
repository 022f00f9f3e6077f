"""What a file is, found without writing to it: ``look``.

The store migrates what it opens, and its first connection switches the file to
WAL mode: opening another application's file would change it. The CLI asks
``look`` first (``taskrt.cli.support``'s ``check_taskrt_file``), so it can refuse
a file that is not a taskrt database and leave it as it was, byte for byte,
with no ``-wal`` or ``-shm`` file of ours beside it.

A SQLite connection opened read only (``?mode=ro``) on a file in WAL mode still
creates the ``-wal`` and ``-shm`` files when they are missing, and cannot remove
them when it closes. So the file is read in one of three ways:

1. Its log and its ``-shm`` are there (a process has it open, or had): read
   only, through the log, as any reader would.
2. Its log is missing or empty: the file itself holds every commit; it is read
   as ``immutable`` (no lock, no log, nothing created). A file in rollback
   journal mode (another application's) is read only, with its locks.
3. Its log holds commits but its ``-shm`` is gone (a process crashed and the
   file was moved without it): a copy of the file and its log, in a directory
   of our own, is opened instead; opening it recovers the log there.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...errors import StoreError

SQLITE_MAGIC = b"SQLite format 3\x00"
"""The first 16 bytes of every SQLite database file (sqlite.org/fileformat.html)."""

WAL_MODE = 2
"""The file format's read and write versions (header bytes 18 and 19) in WAL mode."""

TASKRT_TABLES: dict[str, frozenset[str]] = {
    "jobs": frozenset(
        ("id", "task", "pool", "status", "args", "kwargs", "created_at", "run_at", "seq")
    ),
    "attempts": frozenset(("job_id", "number", "started_at", "outcome")),
    "lease": frozenset(("id", "owner", "expires_at")),
    "meta": frozenset(("key", "value")),
    "schedules": frozenset(("name", "task", "expression", "next_run_at")),
}
"""The tables (and some of their columns) every taskrt database has had, from the
first release on (``SCHEMA_V1``): a file that lacks one is another application's."""

Kind = Literal["empty", "not sqlite", "other", "taskrt"]


@dataclass(frozen=True, slots=True)
class FileLook:
    """What ``look`` found: ``kind`` is ``empty`` (zero bytes), ``not sqlite``,
    ``other`` (a SQLite database without taskrt's tables) or ``taskrt``;
    ``version`` is the file's ``PRAGMA user_version`` (0 for the first
    release's taskrt databases, which recorded none)."""

    kind: Kind
    version: int = 0


def look(path: str) -> FileLook:
    """What the file at ``path`` is, read without writing to it (module docstring).

    ``OSError`` when the file cannot be read, ``StoreError`` when SQLite cannot read it.
    """
    with open(path, "rb") as file:
        header = file.read(100)
    if not header:
        return FileLook("empty")
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        return FileLook("not sqlite")
    uri = Path(path).resolve().as_uri()
    log, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    try:
        if header[18] != WAL_MODE or (log.is_file() and shm.is_file()):  # 1.
            return _read(f"{uri}?mode=ro")
        if not log.is_file() or log.stat().st_size == 0:  # 2.
            return _read(f"{uri}?immutable=1")
        with tempfile.TemporaryDirectory(prefix="taskrt-look-") as tmp:  # 3.
            copy = Path(tmp) / "copy.db"
            shutil.copyfile(path, copy)
            shutil.copyfile(log, f"{copy}-wal")
            return _read(f"{copy.as_uri()}?mode=rw")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path!r}: {exc}") from exc


def _read(uri: str) -> FileLook:
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        return FileLook("taskrt" if has_taskrt_tables(conn) else "other", version)
    finally:
        conn.close()


def has_taskrt_tables(conn: sqlite3.Connection) -> bool:
    """Whether the database of ``conn`` has the tables every taskrt database has had
    (``TASKRT_TABLES``): without them, its ``PRAGMA user_version`` is not taskrt's."""
    for table, columns in TASKRT_TABLES.items():
        found = {row[1] for row in conn.execute("SELECT * FROM pragma_table_info(?)", (table,))}
        if not columns <= found:
            return False
    return True
