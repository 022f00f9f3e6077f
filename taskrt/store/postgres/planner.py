"""The planner's picture of ``jobs``, kept current by taskrt itself (note 13).

PostgreSQL plans a query by what its statistics say the table holds. A queue
table changes faster than they do: 100,000 jobs added in one go are, until the
next ``ANALYZE``, a table the planner believes empty, and a page of the newest
WAITING jobs of a pool (``rt.jobs(status=..., pool=...)``, the dashboard's
list) is then planned as "read every waiting job of the pool, sort them, keep
50": 112 ms beside 100,000 waiting jobs, 754 ms beside 1,000,000, against
0.1 ms once analyzed. Autovacuum analyzes such a table a minute or more after
the change, and not at all where it is turned off.

taskrt knows what the table holds without reading it: the live counts by pool
and status (``job_counts``, store note 12). ``Analyzer`` compares them with
what the planner expects for each status and each pool (its row estimate and
most common values, ``pg_class`` and ``pg_stats``) every ``CHECK_INTERVAL``
seconds, and when a value is off by a factor of two and at least ``MIN_ROWS``
rows it runs ``ANALYZE jobs``: at most one process of the schema at a time
(an advisory lock tried in the same transaction) and at most once per
``GAP`` seconds (or ten times its last run's duration) in each process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ...models import JobStatus

log = logging.getLogger("taskrt.store")

CHECK_INTERVAL = 5.0
"""Seconds between two looks at the planner's picture."""
MIN_ROWS = 1_000
"""A difference of fewer rows than this changes no plan worth an ``ANALYZE``."""
FACTOR = 2.0
"""How far off an estimate may be before it counts as wrong."""
GAP = 30.0
"""Seconds at least between two ``ANALYZE`` of one process (or ten times the last one's time)."""

COLUMNS = ("status", "pool")

# The planner's row estimate is reltuples scaled to the table's pages now (as
# PostgreSQL does); its picture of each column is the most common values with
# their fractions, and the number of distinct values (negative: a fraction of
# the rows). Not ``inherited``: the table's own statistics.
SQL_PICTURE = (
    "SELECT c.reltuples::float8, c.relpages::float8, "
    "(pg_relation_size(c.oid) / current_setting('block_size')::int)::float8, "
    "s.attname::text, s.most_common_vals::text::text[], s.most_common_freqs::float8[], "
    "s.n_distinct::float8 FROM pg_class c LEFT JOIN pg_stats s ON s.schemaname = $1 "
    "AND s.tablename = 'jobs' AND NOT s.inherited AND s.attname IN ('status', 'pool') "
    "WHERE c.oid = to_regclass(quote_ident($1) || '.jobs')"
)
# Who may analyze a table: its owner, the database's, a superuser (and the roles
# that have their privileges); PostgreSQL skips it with a warning for anyone else.
SQL_MAY_ANALYZE = (
    "SELECT pg_has_role(c.relowner, 'USAGE') OR pg_has_role(d.datdba, 'USAGE') "
    "OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) FROM pg_class c, "
    "pg_database d WHERE c.oid = to_regclass(quote_ident($1) || '.jobs') "
    "AND d.datname = current_database()"
)
SQL_ANALYZE = 'ANALYZE "{schema}".jobs'  # a schema's name is an identifier (PgStore checks it)
SQL_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext($1))"


@dataclass(frozen=True, slots=True)
class Column:
    """What the planner knows of one column: its most common values with the
    fraction of rows each has, and how many distinct values it has
    (``n_distinct``: negative for a fraction of the rows)."""

    common: Mapping[str, float]
    distinct: float

    def rows(self, value: str, total: float) -> float:
        """The rows the planner expects with ``value``, of ``total``."""
        if value in self.common:
            return self.common[value] * total
        distinct = -self.distinct * total if self.distinct < 0 else self.distinct
        others = distinct - len(self.common)
        if others < 1:
            return 0.0
        return max(0.0, 1.0 - sum(self.common.values())) * total / others


@dataclass(frozen=True, slots=True)
class Picture:
    """The planner's picture of ``jobs``: its rows (None: never analyzed) and columns."""

    rows: float | None
    columns: Mapping[str, Column]


def picture_of(records: list[Any]) -> Picture:
    """A ``Picture`` from the rows of ``SQL_PICTURE``."""
    if not records:
        return Picture(None, {})
    reltuples, relpages, pages = (float(v) for v in records[0][:3])
    if reltuples < 0 or relpages <= 0:
        # Never analyzed (-1), or analyzed empty: the planner guesses from the
        # pages alone, and a guess of what a queue holds is no picture of it.
        return Picture(None, {}) if reltuples < 0 or pages > 0 else Picture(0.0, {})
    columns = {
        str(name): Column(dict(zip(values or [], freqs or [], strict=True)), float(distinct))
        for *_, name, values, freqs, distinct in records
        if name is not None
    }
    return Picture(reltuples * pages / relpages, columns)


def mismatch(picture: Picture, counts: Mapping[str, Mapping[JobStatus, int]]) -> str | None:
    """Why the planner's picture is wrong enough to analyze, or None.

    ``counts``: pool -> status -> jobs, as ``live_counts`` gives them."""
    live: dict[str, dict[str, int]] = {"status": {}, "pool": {}}
    for pool, statuses in counts.items():
        for status, n in statuses.items():
            live["status"][status.value] = live["status"].get(status.value, 0) + n
            live["pool"][pool] = live["pool"].get(pool, 0) + n
    total = sum(live["status"].values())
    if picture.rows is None:
        return f"no statistics for {total:,} jobs" if total >= MIN_ROWS else None
    for name in COLUMNS:
        column = picture.columns.get(name)
        seen = live[name]
        for value in sorted(set(seen) | set(column.common if column else ())):
            n = seen.get(value, 0)
            expected = 0.0 if column is None else column.rows(value, picture.rows)
            low, high = sorted((n, expected))
            if high - low >= MIN_ROWS and high > FACTOR * low:
                return f"{name} {value!r}: {n:,} jobs, the planner expects {expected:,.0f}"
    return None


class Analyzer:
    """Keeps the planner's picture of ``jobs`` current (note 13)."""

    def __init__(
        self,
        schema: str,
        acquire: Callable[[], Any],
        counts: Callable[[], Awaitable[Mapping[str, Mapping[JobStatus, int]]]],
    ) -> None:
        self.schema = schema
        self._acquire = acquire  # a connection of the store's pool (an async context)
        self._counts = counts
        self._task: asyncio.Task[None] | None = None
        self._next = 0.0  # monotonic time before which this process does not analyze
        self._may: bool | None = None  # whether this role may analyze jobs (looked up once)
        self.analyzed = 0  # ANALYZE statements this process ran

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="taskrt-statistics")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        # Until stopped: ``stop`` forgets the task first, so a cancel that a driver's
        # timeout swallowed (the wait ending as it came) still ends the loop.
        while self._task is not None:
            try:
                await self.check()
            except Exception as exc:  # the database out of reach: the next look tries again
                log.debug("taskrt: statistics of %s not checked: %s", self.schema, exc)
            await asyncio.sleep(CHECK_INTERVAL)

    async def check(self) -> str | None:
        """Look once; analyze if the picture is wrong and it is this process's turn.
        Returns why it analyzed (None: it did not)."""
        if time.monotonic() < self._next:
            return None
        counts = await self._counts()
        async with self._acquire() as conn:
            why = mismatch(picture_of(await conn.fetch(SQL_PICTURE, self.schema)), counts)
            if why is None:
                return None
            if self._may is None:
                self._may = bool(await conn.fetchval(SQL_MAY_ANALYZE, self.schema))
                if not self._may:
                    log.warning(
                        "taskrt: the planner's statistics of %s.jobs are off (%s), and this role "
                        "may not analyze the table (its owner may): leaving it to autovacuum",
                        self.schema,
                        why,
                    )
            if not self._may:
                return None
            started = time.monotonic()
            async with conn.transaction():
                if not await conn.fetchval(SQL_TRY_LOCK, f"taskrt.{self.schema}.analyze"):
                    return None  # another process of the schema is at it
                await conn.execute(SQL_ANALYZE.format(schema=self.schema))
            took = time.monotonic() - started
        self._next = time.monotonic() + max(GAP, 10 * took)
        self.analyzed += 1
        log.info("taskrt: analyzed %s.jobs in %.2f s (%s)", self.schema, took, why)
        return why
