"""The schema's version and its migrations (note 11)."""

from __future__ import annotations

import logging
import sqlite3

from ...errors import SchemaTooNew, StoreError
from .batch import rollback
from .look import has_taskrt_tables
from .sql import (
    SCHEMA_V1,
    SCHEMA_V2,
    SCHEMA_V3,
    SCHEMA_V4,
    SCHEMA_V5,
    SCHEMA_V6,
    SCHEMA_V7,
    SCHEMA_V8,
    SCHEMA_V9,
)

log = logging.getLogger("taskrt.store")

SCHEMA_VERSION = 9
"""The version of the tables this code reads and writes (``PRAGMA user_version``, note 11)."""


def _statements(script: str) -> tuple[str, ...]:
    """The statements of a script (no ``;`` inside a statement, ``--`` comments dropped)."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return tuple(part.strip() for part in "\n".join(lines).split(";") if part.strip())


# MIGRATIONS[n - 1] takes a file of version n - 1 to version n. Version 0 is a
# file of the first release (no version recorded) or a new, empty file; the
# first migration is written to be safe on both (IF NOT EXISTS everywhere).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _statements(SCHEMA_V1),
    _statements(SCHEMA_V2),
    _statements(SCHEMA_V3),
    _statements(SCHEMA_V4),
    _statements(SCHEMA_V5),
    _statements(SCHEMA_V6),
    _statements(SCHEMA_V7),
    _statements(SCHEMA_V8),
    _statements(SCHEMA_V9),
)


def version_of(conn: sqlite3.Connection, path: str) -> int:
    """The file's schema version: its ``PRAGMA user_version``, trusted once its tables
    show the file is taskrt's. Another application may record a version of its own
    (9, like this release's, would have read as "nothing to do"): a file with a
    version and without taskrt's tables is refused with ``StoreError`` before a
    migration writes into it, as the CLI's look refuses it (``look``). Version 0 is a new file or a first
    release's, which the first migration makes or completes."""
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found and not has_taskrt_tables(conn):
        raise StoreError(
            f"{path} is not a taskrt database (a SQLite database without taskrt's tables, "
            f"whose PRAGMA user_version {found} is another application's); left untouched"
        )
    return found


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the file to ``SCHEMA_VERSION`` in one transaction; refuse a newer one.

    Several processes may start at once: the version is read again once the
    write lock is held, so each migration runs exactly once. Returns the version
    found under that lock (``SCHEMA_VERSION`` when another process migrated
    first): the one this call upgraded from.
    """
    found = version_of(conn, path)
    if found == SCHEMA_VERSION:
        return found
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = version_of(conn, path)
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(path, found, SCHEMA_VERSION)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    if 0 < found < SCHEMA_VERSION:
        log.info("upgraded %s from schema version %d to %d", path, found, SCHEMA_VERSION)
    return found
