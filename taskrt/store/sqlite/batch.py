"""What one write batch does in the connection's thread, and how its failures are told apart.

``run_statements`` groups queued operations into ``executemany`` calls (note 7)
and tallies the counted ones (note 12); ``insert_jobs`` assigns ids (note 2);
``transient`` says whether a failure is the database's for now (note 9) or one
part's (note 10).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from json import dumps
from typing import Any

import aiosqlite

from ...errors import StoreError, StoreUnavailable
from ..adds import Row, plan
from ..deps import (
    SQL_BATCHING,
    SQL_BLOCK,
    SQL_DEP,
    SQL_IN_WORKFLOW,
    SQL_PARENTS_FOUND,
    SQL_WAIT,
    links,
    marks,
    parents_named,
)
from ..groupcommit import reason
from ..ops import Statement, segments
from ..protocol import InsertResult, NewJob
from ..queries import SQL_UNIQUE_HOLDER
from .counts import STORED, Tally, write_group
from .sql import (
    INSERT_JOB,
    INSERT_JOBS_JSON,
    INSERT_PLAIN_JOB,
    INSERT_STARTED_JOB,
    JSON_RUN,
    JSON_RUN_CHARS,
    SQL_HOLD_KEY,
    SQL_KEY_WINDOW,
    STATEMENT,
)

log = logging.getLogger("taskrt.store")


async def in_thread(db: aiosqlite.Connection, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(connection, *args)`` in the connection's own thread, in one trip (note 1).

    The store's one use of aiosqlite's private API, because it is worth it: a
    whole write batch (BEGIN, every statement, COMMIT) runs in one hop to the
    connection's thread instead of one hop per statement, which is most of the
    group commit's speed. ``Connection._execute`` runs a function in that
    thread and ``Connection._conn`` is its ``sqlite3.Connection``; aiosqlite is
    pinned below its next minor (pyproject.toml), and tests/test_store_driver.py
    checks that the installed version is in that range and still has both.
    """
    return await db._execute(fn, db._conn, *args)  # type: ignore[no-untyped-call]


def run_statements(
    conn: sqlite3.Connection,
    statements: list[Statement],
    tally: Tally,
    *,
    exact: bool = False,
) -> None:
    """Run queued operations, grouped into ``executemany`` calls (``ops.segments``, note 7).

    What the counted ones (an ``Op`` with a ``status``) really changed goes
    into ``tally`` (note 12); a group of them that changed fewer rows than it
    had raises ``counts.Mismatch``, unless ``exact`` has them written one by one.
    """
    for run in segments(statements):
        for op, rows in run:
            if op.status is not None:
                write_group(conn, op, STORED[op.status], rows, tally, exact=exact)
            elif len(rows) == 1:
                conn.execute(STATEMENT[op], rows[0])
            else:
                conn.executemany(STATEMENT[op], rows)


def insert_jobs(
    conn: sqlite3.Connection, groups: list[list[NewJob]], issued: int = 0
) -> list[InsertResult | BaseException]:
    """Assign ids from the AUTOINCREMENT sequence and insert (note 2, ``adds.plan``);
    ``issued``: the highest id the open transaction handed out (a ``ROLLBACK TO``
    may have taken the sequence back below it: ids above both)."""
    if not groups:
        return []
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()

    at = min(job.created_at for jobs in groups for job in jobs)

    def holder(key: str) -> int | None:
        found = conn.execute(SQL_UNIQUE_HOLDER, (key,)).fetchone()
        if found is None:
            found = conn.execute(SQL_KEY_WINDOW, (key, at)).fetchone()
        return None if found is None else int(found[0])

    named = parents_named(groups)
    found: set[int] | None = None
    if named:
        found = set()
        for start in range(0, len(named), 500):
            chunk = named[start : start + 500]
            sql = SQL_PARENTS_FOUND.format(marks(len(chunk)))
            found.update(int(r[0]) for r in conn.execute(sql, chunk))
    planned = plan(groups, max(int(row[0]) if row else 0, issued), holder, found)
    rows = planned.rows
    if any(job.start for jobs in groups for job in jobs):
        rows = _start_marked(groups, planned.results, rows, conn)
    insert_rows(conn, rows)
    if planned.windows:
        conn.executemany(SQL_HOLD_KEY, planned.windows)
    if any(
        job.after or job.workflow is not None or job.batch_key is not None
        for jobs in groups
        for job in jobs
    ):
        linked = links(groups, planned.results)
        conn.executemany(SQL_DEP, linked.deps)
        conn.executemany(SQL_WAIT, linked.waits)
        conn.executemany(SQL_BLOCK, linked.blocked)
        conn.executemany(SQL_IN_WORKFLOW, linked.members)
        conn.executemany(SQL_BATCHING, linked.batching)
    return planned.results


def insert_rows(conn: sqlite3.Connection, rows: list[Row]) -> None:
    """Insert planned rows (``adds.Row``): a run of rows alike but for their
    arguments, with ids that follow each other (an ``add_many``), as one statement
    that reads the arguments from a JSON array; the others with ``executemany``
    (note 17)."""
    singles: list[Row] = []
    at = 0
    while at < len(rows):
        first = rows[at]
        task, pool, alike = first[1], first[2], first[5:]
        carried = len(first[3]) + len(first[4])
        end = at + 1
        while (
            end < len(rows)
            and carried < JSON_RUN_CHARS
            and (row := rows[end])[0] == first[0] + end - at
            and row[1] == task
            and row[2] == pool
            and row[5:] == alike
        ):
            carried += len(row[3]) + len(row[4])
            end += 1
        if end - at >= JSON_RUN:
            calls = dumps([[row[3], row[4]] for row in rows[at:end]], ensure_ascii=False)
            conn.execute(INSERT_JOBS_JSON, (first[0], task, pool, *alike, calls))
        else:
            singles.extend(rows[at:end])
        at = end
    if not singles:
        return
    if all(r[-1] is None and r[-2] is None for r in singles):
        conn.executemany(INSERT_PLAIN_JOB, [r[:-2] for r in singles])
    else:
        conn.executemany(INSERT_JOB, singles)


def _start_marked(
    groups: list[list[NewJob]],
    results: list[InsertResult | BaseException],
    rows: list[tuple[Any, ...]],
    conn: sqlite3.Connection,
) -> list[tuple[Any, ...]]:
    """Insert the rows of jobs marked ``start`` RUNNING (``taskrt.pool`` note 9), mark
    their results started; the other rows, to insert as usual."""
    jobs = [job for group in groups for job in group]
    starting: set[int] = set()
    for i, (job, result) in enumerate(zip(jobs, results, strict=True)):
        if job.start and isinstance(result, InsertResult) and result.created:
            starting.add(result.job_id)
            results[i] = InsertResult(result.job_id, True, True)
    started = [(*r, r[9]) for r in rows if r[0] in starting]  # started_at = created_at
    conn.executemany(INSERT_STARTED_JOB, started)
    return [r for r in rows if r[0] not in starting]


# -- failures (notes 9, 10) ----------------------------------------------------

# Primary result codes that say the database cannot take writes *now*; anything
# else (a constraint, a value SQLite cannot bind) is the fault of one write.
_TRANSIENT_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def transient(exc: BaseException) -> bool:
    """True when ``exc`` says the database takes no writes for now (note 9)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and (
        code is None or (code & 0xFF) in _TRANSIENT_CODES
    )


# Primary result codes that say the file itself is damaged: no retry mends it.
_DAMAGED_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def damaged(path: str, exc: BaseException) -> str:
    """What to do, where ``exc`` says the database file is damaged; else ``""``."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or (code & 0xFF) not in _DAMAGED_CODES:
        return ""
    return f"; the file is damaged, which no retry mends: restore {path!r} from a backup"


def read_only(exc: BaseException) -> str:
    """What is wrong, where ``exc`` says the file cannot be written at all; else ``""``.

    SQLite opens a file it may not write (its permissions, an immutable
    attribute, a read-only mount) read-only, and every write then fails with
    ``SQLITE_READONLY``. Where a running store's writes meet it, they are kept
    and tried again as any write the database cannot take now (note 9); where
    a start must write (the owner's record), no waiting mends it.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or (code & 0xFF) != sqlite3.SQLITE_READONLY:
        return ""
    return (
        "; the file is read-only (its permissions, an immutable attribute or a read-only"
        " mount), and the process that runs its jobs must write to it"
    )


def store_error(path: str, exc: BaseException) -> StoreError:
    """``StoreUnavailable`` when the database takes no writes now, else ``StoreError``."""
    if transient(exc):
        return StoreUnavailable(path, reason(exc))
    return StoreError(f"write to {path!r} failed: {exc}{damaged(path, exc)}")


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back if SQLite has not already (a full disk ends the transaction itself)."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:  # the first error is the one worth raising
            log.warning("rollback failed: %s", exc)


def in_savepoint(
    conn: sqlite3.Connection, fn: Callable[..., Any], *args: Any
) -> tuple[Any, BaseException | None]:
    """``fn(*args)`` under a savepoint: (its result, None), or (None, the error) rolled back.

    A transient error is raised: it is the database's, not this part's.
    """
    conn.execute("SAVEPOINT taskrt_part")
    try:
        result = fn(*args)
    except Exception as exc:
        if transient(exc) or not conn.in_transaction:
            raise
        conn.execute("ROLLBACK TO taskrt_part")
        conn.execute("RELEASE taskrt_part")
        return None, exc
    conn.execute("RELEASE taskrt_part")
    return result, None
