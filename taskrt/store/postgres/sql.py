"""Every SQL statement of the PostgreSQL store (``taskrt.store.postgres`` notes).

The tables are SQLite's (version 5 there), typed for PostgreSQL; times are
seconds since the epoch as ``double precision``, JSON is kept as text (so a
job's arguments read back exactly as written). Lifecycle writes are one
statement per group of jobs: the rows come as arrays (``unnest``), the
statement locks the rows it moves and returns each moved row's pool and the
status it left, so the counts follow exactly what changed (note 3).
"""

from __future__ import annotations

import re
from functools import cache

from ...models import JobStatus
from ..ops import (
    ATTEMPT,
    CANCEL,
    CLEAR_EXTERNAL,
    FAIL,
    MINUTES,
    REQUEUE,
    RETRIED,
    SCHEDULE_FAILED,
    START,
    SUCCEED,
    Op,
    source_statuses,
)
from ..queries import MINUTE_COLUMNS

_PLACEHOLDER = re.compile(r"\?")


@cache
def numbered(sql: str) -> str:
    """A statement written with ``?`` placeholders (``queries``) with ``$1, $2, ...``."""
    count = 0

    def number(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    return _PLACEHOLDER.sub(number, sql)


# -- the schema (note 2: each version a list of statements, never edited) --------------

SCHEMA_V1 = (
    """CREATE TABLE jobs (
        id BIGINT PRIMARY KEY,
        task TEXT NOT NULL,
        pool TEXT NOT NULL,
        status TEXT NOT NULL,
        args TEXT NOT NULL DEFAULT '[]',
        kwargs TEXT NOT NULL DEFAULT '{}',
        attempts BIGINT NOT NULL DEFAULT 0,
        max_attempts BIGINT,
        current DOUBLE PRECISION NOT NULL DEFAULT 0,
        total DOUBLE PRECISION NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        result TEXT,
        error TEXT,
        priority BIGINT NOT NULL DEFAULT 0,
        metadata TEXT NOT NULL DEFAULT '{}',
        unique_key TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        run_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        timeout DOUBLE PRECISION,
        retry TEXT,
        recoveries BIGINT NOT NULL DEFAULT 0,
        seq BIGINT NOT NULL DEFAULT 0,
        external SMALLINT NOT NULL DEFAULT 0,
        cancel_requested SMALLINT NOT NULL DEFAULT 0
    )""",
    # The database enforces unique keys (note 4): one live job per key.
    """CREATE UNIQUE INDEX jobs_unique_live ON jobs (unique_key)
        WHERE unique_key IS NOT NULL AND status IN ('WAITING', 'RUNNING')""",
    "CREATE INDEX jobs_status ON jobs (status, id)",
    "CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE INDEX jobs_external ON jobs (id) WHERE external = 1",
    "CREATE INDEX jobs_waiting ON jobs (pool, priority, run_at, id) WHERE status = 'WAITING'",
    # The last job id issued (note 1): a row, so ids are issued in commit order.
    "CREATE TABLE job_ids (one INTEGER PRIMARY KEY CHECK (one = 1), last BIGINT NOT NULL)",
    "INSERT INTO job_ids (one, last) VALUES (1, 0)",
    """CREATE TABLE attempts (
        job_id BIGINT NOT NULL,
        number BIGINT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
        outcome TEXT NOT NULL,
        error TEXT,
        traceback TEXT,
        next TEXT,
        next_at DOUBLE PRECISION,
        PRIMARY KEY (job_id, number)
    )""",
    """CREATE TABLE lease (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        owner TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        address TEXT,
        since DOUBLE PRECISION
    )""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        task TEXT NOT NULL,
        args TEXT NOT NULL DEFAULT '[]',
        kwargs TEXT NOT NULL DEFAULT '{}',
        pool TEXT,
        expression TEXT NOT NULL,
        tz TEXT NOT NULL DEFAULT 'UTC',
        misfire TEXT NOT NULL DEFAULT 'latest',
        paused SMALLINT NOT NULL DEFAULT 0,
        next_run_at DOUBLE PRECISION,
        last_run_at DOUBLE PRECISION,
        last_job_id BIGINT,
        last_error TEXT,
        fires BIGINT NOT NULL DEFAULT 0,
        failures BIGINT NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE TABLE pool_settings (name TEXT PRIMARY KEY, paused SMALLINT NOT NULL DEFAULT 0)",
    f"""CREATE TABLE job_minutes (
        minute BIGINT NOT NULL,
        pool TEXT NOT NULL,
        task TEXT NOT NULL,
        {", ".join(f"{c} BIGINT NOT NULL DEFAULT 0" for c in MINUTE_COLUMNS.split(", ") if c != "duration_sum")},
        duration_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
        PRIMARY KEY (minute, pool, task)
    )""",
    """CREATE TABLE job_counts (
        pool TEXT NOT NULL,
        status TEXT NOT NULL,
        n BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (pool, status)
    )""",
    # A JSON object's member as text (or as JSON), NULL where the text is not a
    # JSON object: a filter or a tally never fails on one row's metadata.
    """CREATE FUNCTION taskrt_json_text(doc TEXT, member TEXT) RETURNS TEXT
        LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN doc::jsonb ->> member;
        EXCEPTION WHEN others THEN RETURN NULL; END $$""",
    """CREATE FUNCTION taskrt_json_member(doc TEXT, member TEXT) RETURNS JSONB
        LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN doc::jsonb -> member;
        EXCEPTION WHEN others THEN RETURN NULL; END $$""",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (SCHEMA_V1,)
SCHEMA_VERSION = len(MIGRATIONS)

SQL_VERSION = "SELECT value FROM meta WHERE key = 'schema.version'"
SQL_SET_VERSION = (
    "INSERT INTO meta (key, value) VALUES ('schema.version', $1) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)

# -- adding (notes 1, 4) -------------------------------------------------------------

SQL_LAST_ID = "SELECT last FROM job_ids WHERE one = 1 FOR UPDATE"
SQL_SET_LAST_ID = "UPDATE job_ids SET last = $1 WHERE one = 1"
SQL_HOLDERS = (
    "SELECT unique_key, id FROM jobs WHERE unique_key = ANY($1::text[]) "
    "AND status IN ('WAITING', 'RUNNING')"
)
SQL_INSERT = (
    "INSERT INTO jobs (id, task, pool, status, args, kwargs, max_attempts, priority, metadata, "
    "unique_key, created_at, run_at, timeout, retry, seq, external) "
    "SELECT id, task, pool, 'WAITING', args, kwargs, max_attempts, priority, metadata, "
    "unique_key, created_at, run_at, timeout, retry, 1, external FROM unnest("
    "$1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], "
    "$8::text[], $9::text[], $10::float8[], $11::float8[], $12::float8[], $13::text[], "
    "$14::smallint[]) AS v(id, task, pool, args, kwargs, max_attempts, priority, metadata, "
    "unique_key, created_at, run_at, timeout, retry, external) "
    "ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('WAITING', 'RUNNING') "
    "DO NOTHING RETURNING id"
)

# -- a job's lifecycle (note 3) ---------------------------------------------------------


def _in(statuses: frozenset[str] | tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{s}'" for s in sorted(statuses)) + ")"


def _moving(target: JobStatus, columns: str, types: str, assignments: str) -> str:
    """A counted write of a group (note 3): arrays ``columns`` (the job id last) in,
    one row (pool, was) per job it moved out; only from ``target``'s source statuses."""
    where = _in(source_statuses(target))
    arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types.split(), start=1))
    return (
        f"WITH v AS (SELECT * FROM unnest({arrays}) AS v({columns})), "
        f"o AS (SELECT j.id, j.status AS was FROM jobs j JOIN v ON j.id = v.id "
        f"WHERE j.status IN {where} FOR UPDATE OF j) "
        f"UPDATE jobs j SET {assignments} FROM v JOIN o ON o.id = v.id "
        f"WHERE j.id = v.id AND j.status IN {where} RETURNING j.pool, o.was"
    )


SQL_START = _moving(
    JobStatus.RUNNING,
    "attempts, started_at, seq, id",
    "bigint float8 bigint bigint",
    "status = 'RUNNING', attempts = v.attempts, started_at = v.started_at, seq = v.seq, "
    "error = NULL",
)
SQL_SUCCESS = _moving(
    JobStatus.SUCCESS,
    "result, finished_at, current, total, message, seq, id",
    "text float8 float8 float8 text bigint bigint",
    "status = 'SUCCESS', result = v.result, finished_at = v.finished_at, current = v.current, "
    "total = v.total, message = v.message, seq = v.seq, error = NULL",
)
SQL_FAILURE = _moving(
    JobStatus.FAILURE,
    "error, finished_at, current, total, message, seq, attempts, id",
    "text float8 float8 float8 text bigint bigint bigint",
    "status = 'FAILURE', error = v.error, finished_at = v.finished_at, current = v.current, "
    "total = v.total, message = v.message, seq = v.seq, attempts = v.attempts",
)
SQL_CANCELLED = _moving(
    JobStatus.CANCELLED,
    "finished_at, seq, error, id",
    "float8 bigint text bigint",
    "status = 'CANCELLED', finished_at = v.finished_at, seq = v.seq, cancel_requested = 0, "
    "error = v.error",
)
SQL_WAITING = _moving(
    JobStatus.WAITING,
    "run_at, error, seq, attempts, max_attempts, current, total, message, id",
    "float8 text bigint bigint bigint float8 float8 text bigint",
    "status = 'WAITING', run_at = v.run_at, error = v.error, seq = v.seq, "
    "attempts = v.attempts, max_attempts = v.max_attempts, finished_at = NULL, "
    "started_at = NULL, current = v.current, total = v.total, message = v.message",
)
SQL_PROGRESS = (
    "UPDATE jobs j SET current = v.current, total = v.total, message = v.message, "
    "seq = GREATEST(j.seq, v.seq) FROM unnest($1::bigint[], $2::float8[], $3::float8[], "
    "$4::text[], $5::bigint[]) AS v(id, current, total, message, seq) "
    "WHERE j.id = v.id AND j.status = 'RUNNING'"
)
SQL_ATTEMPT = (
    "INSERT INTO attempts (job_id, number, started_at, finished_at, outcome, error, traceback, "
    "next, next_at) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::float8[], "
    "$4::float8[], $5::text[], $6::text[], $7::text[], $8::text[], $9::float8[]) "
    "ON CONFLICT (job_id, number) DO UPDATE SET started_at = excluded.started_at, "
    "finished_at = excluded.finished_at, outcome = excluded.outcome, error = excluded.error, "
    "traceback = excluded.traceback, next = excluded.next, next_at = excluded.next_at"
)
SQL_RETRIED = (
    "UPDATE attempts a SET next = 'retried', next_at = v.at "
    "FROM unnest($1::float8[], $2::bigint[]) AS v(at, job_id) WHERE a.job_id = v.job_id "
    "AND a.number = (SELECT max(number) FROM attempts b WHERE b.job_id = v.job_id)"
)
# Only what the owner read: a change another process made since stays marked.
SQL_CLEAR_EXTERNAL = (
    "UPDATE jobs j SET external = 0, cancel_requested = 0 "
    "FROM unnest($1::bigint[], $2::bigint[], $3::smallint[]) AS v(id, seq, cancel_requested) "
    "WHERE j.id = v.id AND j.seq = v.seq AND j.cancel_requested = v.cancel_requested"
)
_MINUTE_NAMES = MINUTE_COLUMNS.split(", ")
SQL_MINUTES = (
    f"INSERT INTO job_minutes (minute, pool, task, {MINUTE_COLUMNS}) SELECT * FROM unnest("
    "$1::bigint[], $2::text[], $3::text[], "
    + ", ".join(
        f"${i}::{'float8' if c == 'duration_sum' else 'bigint'}[]"
        for i, c in enumerate(_MINUTE_NAMES, start=4)
    )
    + ") ON CONFLICT (minute, pool, task) DO UPDATE SET "
    + ", ".join(f"{c} = job_minutes.{c} + excluded.{c}" for c in _MINUTE_NAMES)
)
SQL_SCHEDULE_FAILED = (
    "UPDATE schedules s SET failures = s.failures + v.n FROM "
    "(SELECT name, count(*) AS n FROM unnest($1::text[]) AS name GROUP BY name) AS v "
    "WHERE s.name = v.name"
)

STATEMENT: dict[Op, tuple[str, int]] = {
    START: (SQL_START, 4),
    ATTEMPT: (SQL_ATTEMPT, 9),
    SUCCEED: (SQL_SUCCESS, 7),
    FAIL: (SQL_FAILURE, 8),
    CANCEL: (SQL_CANCELLED, 4),
    REQUEUE: (SQL_WAITING, 9),
    CLEAR_EXTERNAL: (SQL_CLEAR_EXTERNAL, 3),
    RETRIED: (SQL_RETRIED, 2),
    MINUTES: (SQL_MINUTES, 20),
    SCHEDULE_FAILED: (SQL_SCHEDULE_FAILED, 1),
}
"""Each queued write's statement, and how many of its params (from the first) it takes as arrays."""

# -- counts (note 3) -------------------------------------------------------------------

SQL_COUNTS_ADD = (
    "INSERT INTO job_counts (pool, status, n) SELECT * FROM unnest($1::text[], $2::text[], "
    "$3::bigint[]) ON CONFLICT (pool, status) DO UPDATE SET n = job_counts.n + excluded.n"
)
SQL_COUNTS = "SELECT pool, status, n FROM job_counts"
SQL_COUNTS_LIVE = "SELECT pool, status, n FROM job_counts WHERE n != 0 ORDER BY pool, status"
SQL_COUNT_OF = "SELECT n FROM job_counts WHERE pool = $1 AND status = $2"


def tally(where: str) -> str:
    """The rows a statement with this WHERE clause is about to change, by pool and status
    (locked, so they cannot change in between)."""
    return (
        f"SELECT pool, status, count(*) FROM (SELECT pool, status FROM jobs WHERE {where} "
        "FOR UPDATE) AS t GROUP BY pool, status"
    )


# -- immediate operations (each names its source statuses) ---------------------------------

CANCEL_WAITING_EXTERNAL_WHERE = "id = $1 AND status = 'WAITING'"
SQL_CANCEL_WAITING_EXTERNAL = (
    "UPDATE jobs SET status = 'CANCELLED', finished_at = $2, seq = seq + 1, external = 1 "
    f"WHERE {CANCEL_WAITING_EXTERNAL_WHERE}"
)
SQL_REQUEST_CANCEL = (
    "UPDATE jobs SET cancel_requested = 1, external = 1 WHERE id = $1 AND status = 'RUNNING'"
)
_RETRY_SOURCES = _in(source_statuses(JobStatus.WAITING) - {"RUNNING"})
RETRY_EXTERNAL_WHERE = f"id = $1 AND status IN {_RETRY_SOURCES}"
SQL_RETRY_EXTERNAL = (
    "UPDATE jobs SET status = 'WAITING', run_at = $2, max_attempts = $3, finished_at = NULL, "
    f"started_at = NULL, seq = seq + 1, external = 1 WHERE {RETRY_EXTERNAL_WHERE}"
)
SQL_RETRIED_ONE = (
    "UPDATE attempts SET next = 'retried', next_at = $2 WHERE job_id = $1 "
    "AND number = (SELECT max(number) FROM attempts WHERE job_id = $1)"
)
SQL_SEQ_GAP = "UPDATE jobs SET seq = seq + $1 WHERE status IN ('WAITING', 'RUNNING')"
RECOVER_CANCELLED_WHERE = "status = 'RUNNING' AND cancel_requested = 1"
SQL_RECOVER_CANCELLED = (
    "UPDATE jobs SET status = 'CANCELLED', finished_at = $1, seq = seq + 1, "
    f"cancel_requested = 0, external = 0 WHERE {RECOVER_CANCELLED_WHERE}"
)
RECOVER_WHERE = "status = 'RUNNING' AND recoveries < $1"
SQL_RECOVER = (
    "UPDATE jobs SET status = 'WAITING', recoveries = recoveries + 1, seq = seq + 1 "
    f"WHERE {RECOVER_WHERE}"
)
ORPHAN_WHERE = "status = 'RUNNING'"
SQL_ORPHAN = (
    "UPDATE jobs SET status = 'FAILURE', finished_at = $1, seq = seq + 1, "
    "error = 'orphaned: the job was running when its process died ' || (recoveries + 1) || ' times' "
    f"WHERE {ORPHAN_WHERE}"
)
SQL_INTERRUPT_ATTEMPTS = (
    "INSERT INTO attempts (job_id, number, started_at, finished_at, outcome, error) "
    "SELECT id, attempts, COALESCE(started_at, $1), $1, 'interrupted', "
    "'the process stopped during this attempt' FROM jobs WHERE status = 'RUNNING' AND attempts > 0 "
    "ON CONFLICT (job_id, number) DO UPDATE SET started_at = excluded.started_at, "
    "finished_at = excluded.finished_at, outcome = excluded.outcome, error = excluded.error, "
    "traceback = NULL, next = NULL, next_at = NULL"
)
# Orphaned jobs are failures of their schedules (metadata that is not JSON counts for none).
SQL_SCHEDULE_ORPHANS = (
    "UPDATE schedules s SET failures = s.failures + o.n FROM ("
    "SELECT taskrt_json_text(metadata, 'schedule') AS name, count(*) AS n FROM jobs "
    "WHERE status = 'RUNNING' GROUP BY 1) AS o WHERE s.name = o.name"
)
CLEANUP_WHERE = "finished_at < $1 AND status = ANY($2::text[])"
SQL_CLEANUP = f"DELETE FROM jobs WHERE {CLEANUP_WHERE} RETURNING id"
SQL_DELETE_ATTEMPTS = "DELETE FROM attempts WHERE job_id = ANY($1::bigint[])"
PURGE_WHERE = "id = ANY($1::bigint[]) AND status IN ('SUCCESS', 'FAILURE', 'CANCELLED')"
SQL_PURGE = f"DELETE FROM jobs WHERE {PURGE_WHERE} RETURNING id"
SQL_RESCHEDULE = (
    "UPDATE jobs SET run_at = $1, external = GREATEST(external, $2) "
    "WHERE id = $3 AND status = 'WAITING'"
)

# -- ownership ---------------------------------------------------------------------------

SQL_OWNER = "SELECT owner, address, since FROM lease WHERE id = 1"
SQL_CLAIM = (
    "INSERT INTO lease (id, owner, expires_at, address, since) VALUES (1, $1, 0, $2, $3) "
    "ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, address = excluded.address, "
    "since = excluded.since"
)
SQL_RELEASE = "DELETE FROM lease WHERE id = 1 AND owner = $1"
SQL_PAUSED_POOLS = "SELECT name FROM pool_settings WHERE paused = 1"
SQL_SET_PAUSED = (
    "INSERT INTO pool_settings (name, paused) VALUES ($1, $2) "
    "ON CONFLICT (name) DO UPDATE SET paused = excluded.paused"
)

# -- schedules (taskrt.scheduler) --------------------------------------------------------

SCHEDULE_COLUMNS = (
    "name, task, args, kwargs, pool, expression, tz, misfire, paused, next_run_at, "
    "last_run_at, last_job_id, last_error, fires, failures, created_at, updated_at"
)
SQL_SCHEDULES = f"SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name"
SQL_SCHEDULE_GET = f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = $1"
SQL_SCHEDULE_INSERT = (
    "INSERT INTO schedules (name, task, args, kwargs, pool, expression, tz, misfire, paused, "
    "next_run_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
)
SQL_SCHEDULE_DEFINE = (
    "UPDATE schedules SET task = $1, args = $2, kwargs = $3, pool = $4, expression = $5, "
    "tz = $6, misfire = $7, next_run_at = $8, updated_at = $9 WHERE name = $10"
)
SQL_SCHEDULE_PAUSE = (
    "UPDATE schedules SET paused = 1, next_run_at = NULL, updated_at = $1 WHERE name = $2"
)
SQL_SCHEDULE_RESUME = (
    "UPDATE schedules SET paused = 0, next_run_at = $1, updated_at = $2 WHERE name = $3"
)
SQL_SCHEDULE_FIRED = (
    "UPDATE schedules SET next_run_at = $1, last_run_at = COALESCE($2, last_run_at), "
    "last_job_id = COALESCE($3, last_job_id), last_error = $4, fires = fires + $5 WHERE name = $6"
)
SQL_SCHEDULE_RAN = "UPDATE schedules SET last_job_id = $1, last_error = NULL WHERE name = $2"
SQL_SCHEDULE_DELETE = "DELETE FROM schedules WHERE name = $1"
SQL_SCHEDULES_BUMP = (
    "INSERT INTO meta (key, value) VALUES ('schedules.version', '1') "
    "ON CONFLICT (key) DO UPDATE SET value = (meta.value::bigint + 1)::text RETURNING value"
)
SQL_SCHEDULES_VERSION = "SELECT value FROM meta WHERE key = 'schedules.version'"

# -- reads --------------------------------------------------------------------------------

SQL_UNIQUE_HOLDER = "SELECT id FROM jobs WHERE unique_key = $1 AND status IN ('WAITING', 'RUNNING')"
SQL_POOL_STATUS = "SELECT id, pool, status FROM jobs WHERE id = ANY($1::bigint[]) FOR UPDATE"
SQL_ATTEMPTS = (
    "SELECT job_id, number, started_at, finished_at, outcome, error, traceback, next, next_at "
    "FROM attempts WHERE job_id = $1 ORDER BY number"
)
