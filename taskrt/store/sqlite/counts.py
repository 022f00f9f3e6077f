"""How many jobs each pool has in each status, exact and read in constant time (note 12).

``job_counts`` (schema version 5) holds one row per pool and status. Every
write that adds, deletes or moves a job changes it in the same transaction:
the write's changes gather in a ``Tally`` and go in with a few UPSERTs at the
end (``Tally.commit``), and the table, a handful of rows, is read back there
for the ``CountMirror`` the owner reads without waiting.

Notes:

1. **Only what really changed is counted.** A counted write names the pool and
   status the caller believes its job is in (``sql.counted``), so a row it
   changes moved exactly from there. A group of them runs as one
   ``executemany`` (``write_group``); when the connection's change count says
   every row changed, every row's move is counted at once, which is the
   common case and costs one ``Counter`` over the group. Otherwise (rare: a
   job another process changed, a refused transition) ``Mismatch`` ends the
   attempt: the batch is rolled back and written again at once with every
   counted write alone (``exact``), each by ``write_one``: a row the belief
   does not match is read, and written again from its stored pool and status
   if the transition table allows it, so the job moves as it did before
   counts existed and the count follows what the row really was.
   Not a savepoint per group (it cost 0.7 µs of the 8 a start+succeed takes:
   SQLite copies every page it touches to the savepoint's journal), and not
   a re-read of the rows after the ``executemany``: that could not tell a row
   this write changed from one another process had already brought to the
   same status and sequence number.
2. **A tally lives as long as one attempt at a transaction.** A batch written
   again (a mismatch, note 1; a retained batch, store note 9; part by part,
   store note 10) starts a new tally, so a rolled-back attempt's changes are
   neither kept nor counted twice.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from ...models import JobStatus
from ..adds import Moves
from ..ops import START, Op
from ..protocol import InsertResult, NewJob
from .sql import SQL_COUNTS, SQL_COUNTS_ADD, SQL_POOL_STATUS, STATEMENT

Key = tuple[str, str]
"""(pool, status as stored)."""

Snapshot = dict[Key, int]
"""The whole of ``job_counts``: (pool, status) -> n."""

STORED: dict[JobStatus, str] = {status: status.value for status in JobStatus}
"""A status as stored (a lookup: the enum's ``value`` is a slower property)."""

_POOL_WAS = itemgetter(-2, -1)  # the last params of a counted write (``Op.implied`` None)
_POOL = itemgetter(-1)  # ... of one whose source goes without saying


def belief(op: Op, params: tuple[Any, ...]) -> tuple[str, str, int]:
    """(pool, was, job id) as a counted write's params say (``sql.counted``)."""
    if op.implied is not None:
        return params[-1], op.implied, params[-2]
    return params[-2], params[-1], params[-3]


class Mismatch(Exception):
    """A counted group changed fewer rows than it had: write the batch again, exactly (note 1)."""


class Tally(Moves):
    """Count changes of one transaction, by pool and status, applied at its end;
    and the jobs whose start changed no row (``unstarted``, store note 20)."""

    __slots__ = ("unstarted",)

    def __init__(self) -> None:
        super().__init__()
        self.unstarted: list[int] = []

    def moved(self, op: Op, rows: Sequence[tuple[Any, ...]], to: str) -> None:
        """Every row of a counted write changed: each moved from its (pool, was) to ``to``."""
        if op.implied is not None:
            for pool, n in Counter(map(_POOL, rows)).items():
                self.move(pool, op.implied, to, n)
            return
        for (pool, was), n in Counter(map(_POOL_WAS, rows)).items():
            self.move(pool, was, to, n)

    def added(
        self, groups: Sequence[Sequence[NewJob]], results: Sequence[InsertResult | BaseException]
    ) -> None:
        """The jobs of ``groups`` that made a row (``results``: one per job, in order),
        RUNNING those their add started (``taskrt.pool`` note 9)."""
        jobs = [job for group in groups for job in group]
        made = Counter(
            (job.pool, result.started)
            for job, result in zip(jobs, results, strict=True)
            if isinstance(result, InsertResult) and result.created
        )
        for (pool, started), n in made.items():
            status = JobStatus.RUNNING if started else JobStatus.WAITING
            self.move(pool, None, STORED[status], n)

    def before(
        self, conn: sqlite3.Connection, sql: str, params: Sequence[Any], to: str | None
    ) -> None:
        """Count what a statement is about to do: ``sql`` (``sql.tally``) gives the
        rows it will change by pool and status; they go to ``to`` (None: deleted)."""
        for pool, status, n in conn.execute(sql, params):
            self.move(str(pool), str(status), to, int(n))

    def apply(self, conn: sqlite3.Connection) -> bool:
        """Add the changes to ``job_counts``; False when there were none."""
        rows = [(pool, status, n) for (pool, status), n in self.changes.items() if n]
        self.changes = {}
        if not rows:
            return False
        conn.executemany(SQL_COUNTS_ADD, rows)
        return True

    def commit(self, conn: sqlite3.Connection, mirror: CountMirror | None = None) -> Counted | None:
        """``apply``, then the whole table as it now is (None: nothing changed).

        With the ``mirror`` of this connection's last reading, and no other
        connection having committed since (``PRAGMA data_version`` unchanged),
        the table is that reading plus these changes: no read back (the write
        batch's hot path).
        """
        changes = [(key, n) for key, n in self.changes.items() if n]
        if not self.apply(conn):
            return None
        version = data_version(conn)
        if mirror is not None and mirror.version == version:
            counts = dict(mirror.counts)
            for key, n in changes:
                counts[key] = counts.get(key, 0) + n
            return counts, version
        return read_counts(conn), version


Counted = tuple[Snapshot, int]
"""The counts table as a transaction left it, and the connection's data_version then."""


def read_counts(conn: sqlite3.Connection) -> Snapshot:
    return {(str(pool), str(status)): int(n) for pool, status, n in conn.execute(SQL_COUNTS)}


def data_version(conn: sqlite3.Connection) -> int:
    """Changes when another connection commits (SQLite's ``PRAGMA data_version``)."""
    row = conn.execute("PRAGMA data_version").fetchone()
    return int(row[0])


class CountMirror:
    """The counts as of this process's latest write that changed them (or its opening).

    Read without I/O by the owner. Another process's writes show only from
    this process's next counted write on (that write reads the table back).
    """

    __slots__ = ("counts", "version")

    def __init__(self) -> None:
        self.counts: Snapshot = {}
        self.version: int | None = None  # the writer connection's data_version then

    def replace(self, counts: Snapshot, version: int | None = None) -> None:
        self.counts = counts
        self.version = version

    def get(self, pool: str, status: JobStatus) -> int:
        return self.counts.get((pool, STORED[status]), 0)


def write_group(
    conn: sqlite3.Connection,
    op: Op,
    to: str,
    rows: list[tuple[Any, ...]],
    tally: Tally,
    *,
    exact: bool = False,
) -> None:
    """Rows of one counted write: one ``executemany`` if every belief holds, else
    ``Mismatch``; ``exact``: row by row (note 1)."""
    if exact or len(rows) == 1:
        for params in rows:
            write_one(conn, op, to, params, tally)
        return
    before = conn.total_changes
    conn.executemany(STATEMENT[op], rows)
    if conn.total_changes - before != len(rows):
        raise Mismatch(op.name)
    tally.moved(op, rows, to)


def write_one(
    conn: sqlite3.Connection, op: Op, to: str, params: tuple[Any, ...], tally: Tally
) -> bool:
    """One counted write (``belief``); True if it changed the row.

    When the row is not where the caller believed, it is read, and written
    from its stored pool and status if the transition table allows (note 1).
    A start that changes no row is told in ``tally.unstarted`` (store note 20).
    """
    if _write_one(conn, op, to, params, tally):
        return True
    if op is START:
        tally.unstarted.append(belief(op, params)[2])
    return False


def _write_one(
    conn: sqlite3.Connection, op: Op, to: str, params: tuple[Any, ...], tally: Tally
) -> bool:
    pool, was, job_id = belief(op, params)
    if conn.execute(STATEMENT[op], params).rowcount:
        tally.move(pool, was, to)
        return True
    found = conn.execute(SQL_POOL_STATUS, (job_id,)).fetchone()
    if found is None:
        return False
    stored_pool, stored = str(found[0]), str(found[1])
    if (stored_pool, stored) == (pool, was) or stored not in op.sources:
        return False
    # An implied source is the stored status now: only the pool was wrong.
    again = (*params[:-1], stored_pool) if op.implied else (*params[:-2], stored_pool, stored)
    if conn.execute(STATEMENT[op], again).rowcount:
        tally.move(stored_pool, stored, to)
        return True
    return False
