"""Statements every backend shares, written with ``?`` placeholders.

A backend whose driver numbers its parameters (PostgreSQL's ``$1``) rewrites
them once (``postgres.sql.numbered``). These are the reads whose text is the
same in both dialects: a job's columns, the waiting window (note 13), the
statistics (``stats``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

JOB_COLUMNS = (
    "id, task, pool, status, args, kwargs, attempts, max_attempts, current, total, message, "
    "result, error, priority, metadata, unique_key, created_at, run_at, started_at, "
    "finished_at, timeout, retry, recoveries, seq, deadline, step, steps, lock_key, "
    "waiting_reason, node, workflow, batch_key, batch"
)

MINUTE_COLUMNS = "succeeded, failed, cancelled, retried, duration_sum, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11"
# Every column of the minutes in a window summed (statistics; by the primary key's
# leading minute): .format("" or "WHERE minute >= ? AND ...").
SQL_MINUTE_TOTALS = (
    "SELECT "
    + ", ".join(f"coalesce(sum({c}), 0)" for c in MINUTE_COLUMNS.split(", "))
    + " FROM job_minutes {}"
)
SQL_COUNTS_BY_STATUS = "SELECT status, sum(n) FROM job_counts GROUP BY status"
# -- the waiting window (schema version 5, note 13) ----------------------------------
# Every statement names status = 'WAITING' as a literal and the pool, so SQLite
# reads jobs_waiting (pool, priority, run_at, id): a priority level is one seek,
# and a level's rows come in (run_at, id) order without a sort.

_WAITING_OF_POOL = "FROM jobs WHERE pool = ? AND status = 'WAITING'"
SQL_LEVEL_TOP = f"SELECT max(priority) {_WAITING_OF_POOL}"
SQL_LEVEL_BELOW = f"SELECT max(priority) {_WAITING_OF_POOL} AND priority < ?"
# (run_at, id) strictly after (?, ?), written so that run_at >= ? bounds the index range.
_AFTER = "run_at >= ? AND (run_at > ? OR id > ?)"
_IN_RUN_ORDER = "ORDER BY run_at, id LIMIT ?"
SQL_READY = (
    f"SELECT {JOB_COLUMNS} {_WAITING_OF_POOL} AND priority = ? AND run_at <= ? {_IN_RUN_ORDER}"
)
SQL_READY_AFTER = (
    f"SELECT {JOB_COLUMNS} {_WAITING_OF_POOL} AND priority = ? AND run_at <= ? AND {_AFTER} "
    f"{_IN_RUN_ORDER}"
)
# The earliest run_at of one level: the first entry of its index range.
SQL_LEVEL_FIRST = f"SELECT min(run_at) {_WAITING_OF_POOL} AND priority = ?"
SQL_DELAYED = (
    f"SELECT {JOB_COLUMNS} {_WAITING_OF_POOL} AND priority = ? AND {_AFTER} {_IN_RUN_ORDER}"
)

# -- reads of one job, the counts, schedules, the lease (``reads``) ------------------------

# A job's attempts: its rows, and its success, which has no row (store note 7): the job's
# own row says it (a store of an earlier release wrote one; it is not given twice).
# Params: (job id, job id).
# An attempt a stop interrupted is not charged: the run after the restart has its
# number, and its success replaces the interrupted record (as its failure's row does).
_RERUN_OF = (
    "a.outcome = 'interrupted' AND j.status = 'SUCCESS' AND j.attempts = a.number "
    "AND j.started_at >= a.finished_at"
)
SQL_ATTEMPTS = (
    "SELECT a.job_id, a.number, a.started_at, a.finished_at, a.outcome, a.error, a.traceback, "
    "a.next, a.next_at FROM attempts a WHERE a.job_id = ? AND NOT EXISTS "
    f"(SELECT 1 FROM jobs j WHERE j.id = a.job_id AND {_RERUN_OF}) "
    "UNION ALL "
    "SELECT j.id, j.attempts, j.started_at, j.finished_at, 'success', NULL, NULL, NULL, NULL "
    "FROM jobs j WHERE j.id = ? AND j.status = 'SUCCESS' AND j.attempts > 0 "
    "AND j.started_at IS NOT NULL AND NOT EXISTS "
    "(SELECT 1 FROM attempts a WHERE a.job_id = j.id AND a.number = j.attempts "
    f"AND NOT ({_RERUN_OF})) "
    "ORDER BY number"
)
# At an owner's start, before it reads its windows: a WAITING job it takes in from
# the store needs no mark (a window reads every WAITING job in order); only what
# other processes change after this is marked for its poll. A cancel request stays.
SQL_TAKEN_IN = (
    "UPDATE jobs SET external = 0 WHERE external = 1 AND status = 'WAITING' "
    "AND cancel_requested = 0"
)
SQL_EXTERNAL = (
    f"SELECT {JOB_COLUMNS}, cancel_requested FROM jobs WHERE external = 1 ORDER BY id LIMIT ?"
)
# Summed: PostgreSQL keeps a (pool, status) in several rows (its store note 12).
SQL_COUNTS_LIVE = (
    "SELECT pool, status, sum(n) FROM job_counts GROUP BY pool, status "
    "HAVING sum(n) <> 0 ORDER BY pool, status"
)
SQL_COUNT_OF = "SELECT coalesce(sum(n), 0) FROM job_counts WHERE pool = ? AND status = ?"
# The tasks of the jobs left RUNNING (index jobs_status): a recovery's orphans.
SQL_RUNNING_TASKS = "SELECT DISTINCT task FROM jobs WHERE status = 'RUNNING'"
# Waiting jobs whose deadline passed, and the next deadline (index jobs_deadline).
SQL_DEADLINES_PASSED = (
    "SELECT id FROM jobs WHERE deadline IS NOT NULL AND deadline <= ? AND status = 'WAITING' "
    "ORDER BY deadline LIMIT ?"
)
SQL_NEXT_DEADLINE = (
    "SELECT min(deadline) FROM jobs WHERE deadline IS NOT NULL AND deadline > ? "
    "AND status = 'WAITING'"
)
SQL_UNIQUE_HOLDER = "SELECT id FROM jobs WHERE unique_key = ? AND status IN ('WAITING', 'RUNNING')"
SQL_UNIQUE_WINDOW = "SELECT job_id FROM unique_keys WHERE key = ? AND expires_at > ?"
SQL_OWNER = "SELECT owner, address, since FROM lease WHERE id = 1"
SQL_PAUSED_POOLS = "SELECT name FROM pool_settings WHERE paused = 1"
SQL_POOL_PAUSES = "SELECT name, paused FROM pool_settings"
SCHEDULE_COLUMNS = (
    "name, task, args, kwargs, pool, expression, tz, misfire, paused, next_run_at, "
    "last_run_at, last_job_id, last_error, fires, failures, created_at, updated_at"
)
SQL_SCHEDULES = f"SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name"
SQL_SCHEDULE = f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = ?"
SQL_SCHEDULES_VERSION = "SELECT value FROM meta WHERE key = 'schedules.version'"

# -- schedules, in a transaction of the scheduler's (``schedules.ScheduleWrites``) -----------
# One row per schedule. ``next_run_at`` is the next slot not yet fired (NULL
# while paused); a slot's job insert and the row's advance commit together.

SQL_SCHEDULE_INSERT = (
    "INSERT INTO schedules (name, task, args, kwargs, pool, expression, tz, misfire, paused, "
    "next_run_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (name) DO NOTHING RETURNING name"
)
SQL_SCHEDULE_DEFINE = (
    "UPDATE schedules SET task = ?, args = ?, kwargs = ?, pool = ?, expression = ?, tz = ?, "
    "misfire = ?, next_run_at = ?, updated_at = ? WHERE name = ?"
)
SQL_SCHEDULE_PAUSE = (
    "UPDATE schedules SET paused = 1, next_run_at = NULL, updated_at = ? WHERE name = ?"
)
SQL_SCHEDULE_RESUME = (
    "UPDATE schedules SET paused = 0, next_run_at = ?, updated_at = ? WHERE name = ?"
)
SQL_SCHEDULE_FIRED = (
    "UPDATE schedules SET next_run_at = ?, last_run_at = COALESCE(?, last_run_at), "
    "last_job_id = COALESCE(?, last_job_id), last_error = ?, fires = fires + ? WHERE name = ?"
)
SQL_SCHEDULE_RAN = "UPDATE schedules SET last_job_id = ?, last_error = NULL WHERE name = ?"
SQL_SCHEDULE_DELETE = "DELETE FROM schedules WHERE name = ?"
# What a recovery's end of a job returns (``rows.recovered_ends``): the names keep
# these rows apart from the others a script returns.
RETURNING_ENDED = (
    " RETURNING id AS ended_id, seq AS ended_seq, task, pool, status, finished_at, error"
)
# A schedule declared in code (scheduler note 4), and those the code declared.
SQL_SCHEDULE_DECLARED = "UPDATE schedules SET origin = 'code' WHERE name = ? AND origin <> 'code'"
SQL_SCHEDULES_OF_CODE = "SELECT name FROM schedules WHERE origin = 'code' ORDER BY name"
# Every change of a definition (by any process) bumps this; the owner watches it.
SQL_SCHEDULES_BUMP = (
    "INSERT INTO meta (key, value) VALUES ('schedules.version', '1') ON CONFLICT (key) "
    "DO UPDATE SET value = CAST(CAST(meta.value AS INTEGER) + 1 AS TEXT) RETURNING value"
)


# -- the application's transactions (``taskrt.transaction`` notes 2, 3) --------------

_LEAD = r"(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*"  # blanks and comments before the first word
_TO = r"\s+(?:(?:TRANSACTION|WORK)\s+)?TO\b"  # ROLLBACK [TRANSACTION | WORK] TO
# Statements that begin or end a transaction; ROLLBACK TO ends none.
_CONTROL = re.compile(
    _LEAD + rf"(?:BEGIN|START|COMMIT|END|ABORT|PREPARE\s+TRANSACTION|ROLLBACK(?!{_TO}))\b",
    re.IGNORECASE | re.DOTALL,
)
_UNDO = re.compile(_LEAD + "ROLLBACK" + _TO, re.IGNORECASE | re.DOTALL)


def controls_transaction(statement: str) -> bool:
    """Whether ``statement`` begins or ends a transaction (both dialects)."""
    return _CONTROL.match(statement) is not None


def undoes_to_savepoint(statement: str) -> bool:
    """Whether ``statement`` rolls back to a savepoint (``ROLLBACK TO``)."""
    return _UNDO.match(statement) is not None


def existing_ids(ids: Iterable[int]) -> str:
    """The statement that reads which of ``ids`` are jobs (integers, inlined)."""
    return f"SELECT id FROM jobs WHERE id IN ({', '.join(str(int(i)) for i in ids)})"
