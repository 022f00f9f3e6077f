"""Moving over: a stopped SQLite database's history into an empty PostgreSQL schema.

``taskrt copy --from app.db --to postgresql://...`` keeps what a user had when
they outgrow one machine: every job (its id, state, progress, result, error,
attempts and recoveries), every attempt, the schedules with their next fire
times and counts, the per-minute history, the pools an operator paused, and
the id sequence, so ids go on increasing from where SQLite left them.

Rules:

1. **The source is stopped.** A process that holds its ownership lock is still
   writing to it: the copy is refused rather than taking a moving snapshot.
   The file is read read-only, in one read transaction (one consistent view).
2. **The source has this release's schema.** An older file is refused with
   the command that upgrades it (``taskrt migrate --db``); a newer one too.
3. **The target is empty.** The schema is created or migrated, and must hold
   no job and no schedule; everything is written in one transaction, with
   binary ``COPY``, so a failed copy leaves nothing behind and can be run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from ...errors import StoreError
from ..sqlite.files import lock_path_of
from ..sqlite.schema import SCHEMA_VERSION as SQLITE_VERSION
from .driver import DRIVER_ERRORS, connect
from .store import PgStore

CHUNK = 5_000
"""Rows read from SQLite and sent to PostgreSQL at a time."""

# What is copied, column by column (the same names on both sides).
TABLES: dict[str, tuple[str, ...]] = {
    "jobs": (
        "id",
        "task",
        "pool",
        "status",
        "args",
        "kwargs",
        "attempts",
        "max_attempts",
        "current",
        "total",
        "message",
        "result",
        "error",
        "priority",
        "metadata",
        "unique_key",
        "created_at",
        "run_at",
        "started_at",
        "finished_at",
        "timeout",
        "retry",
        "recoveries",
        "seq",
        "external",
        "cancel_requested",
        "deadline",
        "step",
        "steps",
        "lock_key",
        "waiting_reason",
        "workflow",
        "batch_key",
        "batch",
    ),
    "attempts": (
        "job_id",
        "number",
        "started_at",
        "finished_at",
        "outcome",
        "error",
        "traceback",
        "next",
        "next_at",
    ),
    "schedules": (
        "name",
        "task",
        "args",
        "kwargs",
        "pool",
        "expression",
        "tz",
        "misfire",
        "paused",
        "next_run_at",
        "last_run_at",
        "last_job_id",
        "last_error",
        "fires",
        "failures",
        "created_at",
        "updated_at",
        "origin",
    ),
    "job_minutes": (
        "minute",
        "pool",
        "task",
        "succeeded",
        "failed",
        "cancelled",
        "retried",
        "duration_sum",
        *(f"b{i}" for i in range(12)),
    ),
    "pool_settings": ("name", "paused"),
    "unique_keys": ("key", "job_id", "expires_at"),
    "job_deps": ("child", "position", "parent", "done"),
    "job_waits": (
        "child",
        "pending",
        "on_parent_failure",
        "inputs",
        "run_at",
        "failed_parent",
        "failed_status",
        "outcome",
    ),
}

# What is not copied, and why (a test holds every SQLite column to one of the two).
NOT_COPIED: dict[str, tuple[str, ...]] = {
    "jobs": ("node",),  # always NULL on SQLite: PostgreSQL's nodes set it
    "job_counts": (),  # counted again from the copied jobs
    "meta": (),  # the schema's own; the schedules' version is carried over
    "lease": (),  # the owner of a stopped file: none on the target
    "sqlite_sequence": (),  # the last id issued: carried over to job_ids
}

# Columns PostgreSQL holds as double precision: SQLite may hand back an integer there.
_FLOATS = frozenset(
    {
        "current",
        "total",
        "created_at",
        "run_at",
        "started_at",
        "finished_at",
        "timeout",
        "next_at",
        "next_run_at",
        "last_run_at",
        "updated_at",
        "duration_sum",
        "deadline",
        "expires_at",
    }
)


@dataclass(frozen=True, slots=True)
class Copied:
    """How many rows of each table were copied, and the last job id issued."""

    rows: dict[str, int]
    last_id: int


def _in_use(path: str) -> bool:
    """Whether a process holds the database's ownership lock (it is running)."""
    lock = lock_path_of(path)
    if not os.path.exists(lock):
        return False
    fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _open_source(path: str) -> sqlite3.Connection:
    if not os.path.isfile(path):
        raise StoreError(f"no database at {path}")
    if _in_use(path):
        raise StoreError(f"{path} is in use by a running process: stop it, then copy")
    # Read in worker threads one after the other (``_copy``): never two at once.
    # A URI, so the path is quoted: a '?', '#' or '%' in it is part of the name.
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path!r}: {exc}") from exc
    try:
        try:
            found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:  # not a database at all ("file is not a database")
            raise StoreError(f"cannot open database {path!r}: {exc}") from exc
        if found != SQLITE_VERSION:
            raise StoreError(
                f"{path} has schema version {found}; this release copies version "
                f"{SQLITE_VERSION}: run `taskrt migrate --db {path}` with this release first"
                if found < SQLITE_VERSION
                else f"{path} has schema version {found}, newer than this release's "
                f"{SQLITE_VERSION}: copy it with the release that wrote it"
            )
        conn.execute("BEGIN")  # one read transaction: one consistent view of the file
    except BaseException:
        conn.close()
        raise
    return conn


def _chunks(
    conn: sqlite3.Connection, table: str, columns: tuple[str, ...]
) -> Iterator[list[tuple[Any, ...]]]:
    floats = [i for i, c in enumerate(columns) if c in _FLOATS]
    cursor = conn.execute(f"SELECT {', '.join(columns)} FROM {table}")
    while True:
        rows = cursor.fetchmany(CHUNK)
        if not rows:
            return
        if floats:
            fixed = []
            for row in rows:
                values = list(row)
                for i in floats:
                    if values[i] is not None:
                        values[i] = float(values[i])
                fixed.append(tuple(values))
            rows = fixed
        yield rows


async def copy_sqlite_to_postgres(
    source: str, target: str, *, on_table: Callable[[str, int], None] | None = None
) -> Copied:
    """Copy the SQLite database at ``source`` into the empty schema of URL ``target``
    (see the module notes); ``on_table(name, rows)`` is told as each table is done."""
    conn = await asyncio.to_thread(_open_source, source)
    try:
        store = PgStore(target)
        await store.migrate()
        try:
            pg = await connect(store.dsn, server_settings={"search_path": f'"{store.schema}"'})
        except DRIVER_ERRORS as exc:
            raise StoreError(f"cannot open database {store.path!r}: {exc}") from exc
        try:
            return await _copy(conn, pg, store.path, on_table)
        except DRIVER_ERRORS as exc:
            raise StoreError(f"copying to {store.path!r} failed (nothing was kept): {exc}") from exc
        finally:
            await pg.close()
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


async def _copy(
    conn: sqlite3.Connection,
    pg: asyncpg.Connection,
    name: str,
    on_table: Callable[[str, int], None] | None,
) -> Copied:
    counts: dict[str, int] = {}
    async with pg.transaction():
        held = []  # rows already there would clash with the copied ones, or mix with them
        for table in TABLES:
            rows = await pg.fetchval(f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT 1000) t")
            if rows:
                held.append(f"{rows}{'+' if rows == 1000 else ''} row(s) of {table}")
        if held:
            raise StoreError(
                f"{name} already holds {', '.join(held)}: "
                "copy into an empty schema (a new ?schema= name, or drop this one)"
            )
        for table, columns in TABLES.items():
            chunks = _chunks(conn, table, columns)
            done = 0
            while True:
                rows = await asyncio.to_thread(next, chunks, None)
                if rows is None:
                    break
                await pg.copy_records_to_table(table, records=rows, columns=list(columns))
                done += len(rows)
            counts[table] = done
            if on_table is not None:
                on_table(table, done)
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
        last = max(
            int(row[0]) if row else 0,
            int(await pg.fetchval("SELECT coalesce(max(id), 0) FROM jobs")),
        )
        await pg.execute("UPDATE job_ids SET last = $1 WHERE one = 1", last)
        await pg.execute("DELETE FROM job_counts")
        await pg.execute(
            "INSERT INTO job_counts (pool, status, n) SELECT pool, status, count(*) FROM jobs "
            "GROUP BY pool, status"
        )
        version = conn.execute("SELECT value FROM meta WHERE key = 'schedules.version'").fetchone()
        if version is not None:
            await pg.execute(
                "INSERT INTO meta (key, value) VALUES ('schedules.version', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                str(version[0]),
            )
    return Copied(counts, last)
