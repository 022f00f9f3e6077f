"""Every SQL statement of the SQLite store, and the operations the writer queues.

Each status update names the statuses it may come from (``models.TRANSITIONS``)
in its WHERE clause, so the database refuses any other transition (note 4).
"""

from __future__ import annotations

from ...models import TRANSITIONS, JobStatus
from ..deps import KEEP_PARENTS, ORPHAN_ERROR_SQL
from ..ops import (
    ATTEMPT,
    CANCEL,
    CLEAR_EXTERNAL,
    FAIL,
    FLUSH,
    MINUTES,
    REASON,
    REQUEUE,
    RETRIED,
    SCHEDULE_FAILED,
    START,
    SUCCEED,
    Op,
    source_statuses,
)
from ..queries import JOB_COLUMNS, MINUTE_COLUMNS, RETURNING_ENDED

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL,
    pool TEXT NOT NULL,
    status TEXT NOT NULL,
    args TEXT NOT NULL DEFAULT '[]',
    kwargs TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER,
    current REAL NOT NULL DEFAULT 0,
    total REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    result TEXT,
    error TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}',
    unique_key TEXT,
    created_at REAL NOT NULL,
    run_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    timeout REAL,
    retry TEXT,
    recoveries INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL DEFAULT 0,
    external INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_live ON jobs(unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('WAITING', 'RUNNING');
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, id);
-- No index on pool or task: each costs every insert and status change about a
-- fifth of the store's write rate, and a listing filtered by them walks the
-- id index newest first until a page is full (store note 8).
DROP INDEX IF EXISTS jobs_pool;
DROP INDEX IF EXISTS jobs_task;
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_external ON jobs(id) WHERE external = 1;
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL,
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT NOT NULL,
    error TEXT,
    traceback TEXT,
    PRIMARY KEY (job_id, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    args TEXT NOT NULL DEFAULT '[]',
    kwargs TEXT NOT NULL DEFAULT '{}',
    pool TEXT,
    expression TEXT NOT NULL,
    tz TEXT NOT NULL DEFAULT 'UTC',
    misfire TEXT NOT NULL DEFAULT 'latest',
    paused INTEGER NOT NULL DEFAULT 0,
    next_run_at REAL,
    last_run_at REAL,
    last_job_id INTEGER,
    last_error TEXT,
    fires INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
-- An early build counted schedule failures with this trigger; any UPDATE
-- trigger on jobs costs about a third of the job throughput (scheduler note 6).
DROP TRIGGER IF EXISTS schedules_failures;
"""
# Version 2: the lease row records where the owner listens (its relay socket)
# and since when it owns; an operator's pause of a pool survives restarts.
SCHEMA_V2 = """
ALTER TABLE lease ADD COLUMN address TEXT;
ALTER TABLE lease ADD COLUMN since REAL;
CREATE TABLE IF NOT EXISTS pool_settings (
    name TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0
);
"""

# Version 3: what followed an attempt, so a job's history is told from what
# happened: ``retry`` (its backoff ran out at ``next_at``) or ``retried`` (an
# operator asked for a retry at ``next_at``); NULL: it ended the job.
SCHEMA_V3 = """
ALTER TABLE attempts ADD COLUMN next TEXT;
ALTER TABLE attempts ADD COLUMN next_at REAL;
"""

# Version 4: what finished, per minute, pool and task (the history that
# survives restarts and retention of the jobs themselves): counts by outcome,
# and the durations of successes as a sum and a histogram (b0..b11: the
# buckets of ``taskrt.counters.BUCKETS``, then above the last).
SCHEMA_V4 = """
CREATE TABLE IF NOT EXISTS job_minutes (
    minute INTEGER NOT NULL,
    pool TEXT NOT NULL,
    task TEXT NOT NULL,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0,
    retried INTEGER NOT NULL DEFAULT 0,
    duration_sum REAL NOT NULL DEFAULT 0,
    b0 INTEGER NOT NULL DEFAULT 0,
    b1 INTEGER NOT NULL DEFAULT 0,
    b2 INTEGER NOT NULL DEFAULT 0,
    b3 INTEGER NOT NULL DEFAULT 0,
    b4 INTEGER NOT NULL DEFAULT 0,
    b5 INTEGER NOT NULL DEFAULT 0,
    b6 INTEGER NOT NULL DEFAULT 0,
    b7 INTEGER NOT NULL DEFAULT 0,
    b8 INTEGER NOT NULL DEFAULT 0,
    b9 INTEGER NOT NULL DEFAULT 0,
    b10 INTEGER NOT NULL DEFAULT 0,
    b11 INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, pool, task)
) WITHOUT ROWID;
"""

# Version 5: millions of waiting jobs without holding them in memory (notes 12, 13).
# ``jobs_waiting`` orders each pool's WAITING rows by priority, then run_at, then
# id (the rowid is every index's implicit last column): the runtime refills its
# bounded window of a pool from it, and finding the next priority level is one
# seek, so neither read scans the delayed rows nor grows with the table. Partial
# (WAITING only), because every index costs every write of the rows it holds
# (note 8): this one, the only one added, costs about a quarter of the insert
# rate and a sixth of the start+succeed rate (100,000 jobs, one process).
# ``job_counts`` holds how many jobs each pool has in each status, so counting
# is a lookup at ten million rows. It is kept by the store's own statements, in
# the transaction of each write that adds, deletes or moves a job (note 12), not
# by a trigger: a trigger on jobs halved the start+finish write rate (146k/s to
# 74k/s). The migration counts the existing rows once (one pass over the table).
SCHEMA_V5 = """
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs(pool, priority, run_at) WHERE status = 'WAITING';
CREATE TABLE IF NOT EXISTS job_counts (
    pool TEXT NOT NULL,
    status TEXT NOT NULL,
    n INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pool, status)
) WITHOUT ROWID;
DELETE FROM job_counts;
INSERT INTO job_counts (pool, status, n) SELECT pool, status, count(*) FROM jobs GROUP BY pool, status;
"""

# Version 6: flow control (docs/flow-control.md). ``step``, ``steps``: named steps
# of progress (the last reported, and every step seen as JSON). ``lock_key``: at
# most one running job per key. ``waiting_reason``: why a waiting job waits, as
# the runtime found it (rate_limited, locked; ``scheduled`` and ``paused`` are
# told from run_at and the pool when read), indexed where set. ``node``: always
# NULL here (PostgreSQL's nodes run jobs; the columns read are the same). ``deadline``: a job not started
# by it fails; ``jobs_deadline`` finds the waiting ones whose deadline passed
# without reading the others (partial: only rows with a deadline pay for it).
# ``unique_keys``: a unique key held for a window after its add (``unique_for``),
# finished or not; its own table, so retention and purges of jobs leave it be.
SCHEMA_V6 = """
ALTER TABLE jobs ADD COLUMN deadline REAL;
ALTER TABLE jobs ADD COLUMN step TEXT;
ALTER TABLE jobs ADD COLUMN steps TEXT;
ALTER TABLE jobs ADD COLUMN lock_key TEXT;
ALTER TABLE jobs ADD COLUMN waiting_reason TEXT;
ALTER TABLE jobs ADD COLUMN node TEXT;
CREATE INDEX IF NOT EXISTS jobs_waiting_reason ON jobs(waiting_reason)
    WHERE waiting_reason IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_deadline ON jobs(deadline)
    WHERE deadline IS NOT NULL AND status = 'WAITING';
CREATE TABLE IF NOT EXISTS unique_keys (
    key TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
"""

# Workflows (schema version 7): a job's workflow and its batch (batched handlers:
# the key it is gathered by, the job that runs its batch); the jobs a blocked job waits for
# (``job_deps``: one row per parent, open until that parent's end is settled) and
# how it waits (``job_waits``: one row while it is blocked). ``taskrt.store.deps``.
SCHEMA_V7 = """
ALTER TABLE jobs ADD COLUMN workflow INTEGER;
ALTER TABLE jobs ADD COLUMN batch_key TEXT;
ALTER TABLE jobs ADD COLUMN batch INTEGER;
CREATE INDEX IF NOT EXISTS jobs_workflow ON jobs(workflow) WHERE workflow IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_batching ON jobs(task, batch_key, id)
    WHERE waiting_reason = 'batching';
CREATE TABLE IF NOT EXISTS job_deps (
    child INTEGER NOT NULL,
    position INTEGER NOT NULL,
    parent INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (child, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS job_deps_parent ON job_deps(parent, done);
CREATE TABLE IF NOT EXISTS job_waits (
    child INTEGER PRIMARY KEY,
    pending INTEGER NOT NULL,
    on_parent_failure TEXT NOT NULL,
    inputs TEXT,
    run_at REAL NOT NULL,
    failed_parent INTEGER,
    failed_status TEXT
);
"""

# A dependent's ``job_waits`` row stays once it is decided, with how
# (``outcome``): a manual retry of one that never ran, or of the parent whose end
# cancelled it, blocks it again (``taskrt.store.deps``). Schema version 8.
SCHEMA_V8 = """
ALTER TABLE job_waits ADD COLUMN outcome TEXT;
CREATE INDEX IF NOT EXISTS job_waits_open ON job_waits(child) WHERE outcome IS NULL;
CREATE INDEX IF NOT EXISTS job_waits_cancelled ON job_waits(failed_parent)
    WHERE outcome = 'cancelled';
"""

# Version 9: where a schedule comes from: ``code`` (declared: ``rt.schedule``,
# ``@rt.cron``, a task file's cron), else ``api`` (created at run time). The owner
# deletes a schedule of code that its code no longer declares (scheduler note 4).
SCHEMA_V9 = """
ALTER TABLE schedules ADD COLUMN origin TEXT NOT NULL DEFAULT 'api';
"""

# The columns an add writes, in the order of ``adds.Row`` (status and seq are the
# statement's own); every insert of a job below names them through this.
_ADDED = (
    "id, task, pool, status, args, kwargs, max_attempts, priority, metadata, unique_key, "
    "created_at, run_at, timeout, retry, seq, external"
)
INSERT_JOB = (
    f"INSERT INTO jobs ({_ADDED}, deadline, lock_key) "
    "VALUES (?, ?, ?, 'WAITING', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)"
)
# The usual add, without a deadline or a lock key: two parameters fewer per row
# (add_many's rate is bound by what each row binds).
INSERT_PLAIN_JOB = (
    f"INSERT INTO jobs ({_ADDED}) VALUES (?, ?, ?, 'WAITING', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)"
)
# A run of jobs alike but for their arguments, ids from ?1 up (store note 17): the
# shared columns of INSERT_JOB's row, then a JSON array of [args, kwargs] texts.
INSERT_JOBS_JSON = (
    f"INSERT INTO jobs ({_ADDED}, deadline, lock_key) "
    "SELECT ?1 + key, ?2, ?3, 'WAITING', json_extract(value, '$[0]'), "
    "json_extract(value, '$[1]'), ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1, ?12, ?13, ?14 "
    "FROM json_each(?15)"
)
JSON_RUN = 4
"""The shortest run that INSERT_JOBS_JSON inserts: below it, ``executemany`` costs less."""
JSON_RUN_CHARS = 1 << 24
"""A run's arguments end at about this many characters (an ``add_many`` of big
arguments goes in several statements, each far below SQLite's limit on a value)."""
# A job its owner's add starts (taskrt.pool note 9): RUNNING since it was added,
# attempt 1 charged; the row of INSERT_JOB, then its created_at again.
INSERT_STARTED_JOB = (
    f"INSERT INTO jobs ({_ADDED}, deadline, lock_key, attempts, started_at) "
    "VALUES (?, ?, ?, 'RUNNING', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 2, ?, ?, ?, 1, ?)"
)
# A unique key's window (schema version 6): taken for ``expires_at`` by ``job_id``.
SQL_HOLD_KEY = "INSERT OR REPLACE INTO unique_keys (key, job_id, expires_at) VALUES (?, ?, ?)"
SQL_KEY_WINDOW = "SELECT job_id FROM unique_keys WHERE key = ? AND expires_at > ?"

# Params (id, current, total, message, seq): ``groupcommit.split_progress``.
PROGRESS = (
    "UPDATE jobs SET current = ?2, total = ?3, message = ?4, seq = MAX(seq, ?5) "
    "WHERE id = ?1 AND status = 'RUNNING'"
)
# The progress of a job that names its steps (schema version 6): then (step, steps).
PROGRESS_STEPS = (
    "UPDATE jobs SET current = ?2, total = ?3, message = ?4, seq = MAX(seq, ?5), step = ?6, "
    "steps = ?7 WHERE id = ?1 AND status = 'RUNNING'"
)


def status_list(*statuses: JobStatus) -> str:
    return "(" + ", ".join(f"'{s.value}'" for s in statuses) + ")"


def sources(target: JobStatus) -> str:
    """SQL list of the statuses ``target`` may be reached from (note 4)."""
    return status_list(*(s for s, nexts in TRANSITIONS.items() if target in nexts))


def counted(target: JobStatus) -> str:
    """The WHERE clause of a counted write (note 12): its params end with (id, pool, was),
    or with (id, pool) when ``target`` has one source status (``was`` goes without saying).

    The row must be the job, in the pool and the status the caller believes,
    and that status one ``target`` may be reached from (note 4). A row the
    belief does not match is left for the exact, slower path (``counts.write_one``).
    """
    if len(source_statuses(target)) == 1:
        return f"WHERE id = ? AND pool = ? AND status IN {sources(target)}"
    return f"WHERE id = ? AND pool = ? AND status = ? AND status IN {sources(target)}"


# -- statements used by the runtime (note 4: each names its source statuses) --

SQL_START = (
    "UPDATE jobs SET status = 'RUNNING', attempts = ?, started_at = ?, seq = ?, error = NULL, "
    "waiting_reason = NULL "
    f"{counted(JobStatus.RUNNING)}"
)
SQL_ATTEMPT = (
    "INSERT OR REPLACE INTO attempts (job_id, number, started_at, finished_at, outcome, error, "
    "traceback, next, next_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A retry asked for by hand: said on the job's last attempt (schema version 3).
SQL_RETRIED = (
    "UPDATE attempts SET next = 'retried', next_at = ? WHERE job_id = ? "
    "AND number = (SELECT max(number) FROM attempts WHERE job_id = ?)"
)
SQL_SUCCESS = (
    "UPDATE jobs SET status = 'SUCCESS', result = ?, finished_at = ?, current = ?, total = ?, "
    f"message = ?, seq = ?, error = NULL {counted(JobStatus.SUCCESS)}"
)
SQL_FAILURE = (
    "UPDATE jobs SET status = 'FAILURE', error = ?, finished_at = ?, current = ?, total = ?, "
    f"message = ?, seq = ?, attempts = ? {counted(JobStatus.FAILURE)}"
)
SQL_CANCELLED = (
    "UPDATE jobs SET status = 'CANCELLED', finished_at = ?, seq = ?, cancel_requested = 0, "
    f"error = ? {counted(JobStatus.CANCELLED)}"
)
# A cancel asked for while the job ran outlives its attempt's retry (the owner's poll
# acts on it: store note 21); a retry by hand is a new request and clears it.
SQL_WAITING = (
    "UPDATE jobs SET status = 'WAITING', run_at = ?, error = ?, seq = ?, attempts = ?, "
    "max_attempts = ?, finished_at = NULL, started_at = NULL, current = ?, total = ?, message = ?, "
    "cancel_requested = CASE WHEN status = 'RUNNING' THEN cancel_requested ELSE 0 END "
    f"{counted(JobStatus.WAITING)}"
)
# Only what the owner read: a change another process made since (its seq, its
# cancel request) keeps the row marked for the next poll.
SQL_CLEAR_EXTERNAL = (
    "UPDATE jobs SET external = 0, cancel_requested = 0 "
    "WHERE id = ? AND seq = ? AND cancel_requested = ?"
)
SQL_REQUEST_CANCEL = (
    "UPDATE jobs SET cancel_requested = 1, external = 1 WHERE id = ? AND status = 'RUNNING'"
)
# Statements that move or delete many rows, or rows whose status they do not
# know, are counted by a tally over the same WHERE clause run just before them
# in their transaction (note 12): the ``*_WHERE`` constants are shared by both.
CANCEL_WAITING_EXTERNAL_WHERE = "id = ? AND status = 'WAITING'"
SQL_CANCEL_WAITING_EXTERNAL = (
    "UPDATE jobs SET status = 'CANCELLED', finished_at = ?, seq = seq + 1, external = 1 "
    f"WHERE {CANCEL_WAITING_EXTERNAL_WHERE} RETURNING seq"
)
RETRY_EXTERNAL_WHERE = f"id = ? AND status IN {sources(JobStatus.WAITING)} AND status != 'RUNNING'"
SQL_RETRY_EXTERNAL = (
    "UPDATE jobs SET status = 'WAITING', run_at = ?, max_attempts = ?, finished_at = NULL, "
    "started_at = NULL, seq = seq + 1, cancel_requested = 0, external = 1 "
    f"WHERE {RETRY_EXTERNAL_WHERE} RETURNING seq"
)
SQL_SEQ_GAP = "UPDATE jobs SET seq = seq + ? WHERE ? > 0 AND status IN ('WAITING', 'RUNNING')"
# A cancel was asked for while the job ran (by a client): it ends CANCELLED, not again;
# so does its retry, put back before the owner acted on the cancel (store note 21).
RECOVER_CANCELLED_WHERE = (
    "cancel_requested = 1 AND (status = 'RUNNING' "
    "OR (status = 'WAITING' AND waiting_reason IS NOT 'blocked'))"
)
SQL_RECOVER_CANCELLED = (
    "UPDATE jobs SET status = 'CANCELLED', finished_at = ?, seq = seq + 1, "
    f"cancel_requested = 0, external = 0 WHERE {RECOVER_CANCELLED_WHERE}" + RETURNING_ENDED
)
RECOVER_WHERE = "status = 'RUNNING' AND recoveries < ?"
SQL_RECOVER = (
    "UPDATE jobs SET status = 'WAITING', recoveries = recoveries + 1, seq = seq + 1 "
    f"WHERE {RECOVER_WHERE}"
)
# Orphans of a task with an ``on_failed`` hook (``?``: their names, a JSON array) stay
# RUNNING for the runtime to fail, the hook in the failure's transaction (store note 22).
_HOOKED = "task IN (SELECT value FROM json_each(?))"
SQL_KEEP_ORPHANS = (
    f"SELECT {JOB_COLUMNS}, 1 AS kept_orphan FROM jobs WHERE status = 'RUNNING' AND {_HOOKED}"
)
ORPHAN_WHERE = f"status = 'RUNNING' AND NOT {_HOOKED}"
SQL_ORPHAN = (
    "UPDATE jobs SET status = 'FAILURE', finished_at = ?, seq = seq + 1, "
    f"error = {ORPHAN_ERROR_SQL} WHERE {ORPHAN_WHERE}" + RETURNING_ENDED
)
SQL_INTERRUPT_ATTEMPTS = (
    "INSERT OR REPLACE INTO attempts (job_id, number, started_at, finished_at, outcome, error) "
    "SELECT id, attempts, COALESCE(started_at, ?), ?, 'interrupted', "
    "'the process stopped during this attempt' FROM jobs WHERE status = 'RUNNING' AND attempts > 0"
)
# A finished job that a blocked job waits for, or may wait for again after a retry of
# another parent, stays (taskrt.workflows note 4).
CLEANUP_WHERE = (
    "finished_at < ? AND status IN ({}) AND "  # .format(one ? per status)
    + KEEP_PARENTS.format("jobs")
)
SQL_CLEANUP = f"DELETE FROM jobs WHERE {CLEANUP_WHERE}"
SQL_CLEANUP_ATTEMPTS = "DELETE FROM attempts WHERE job_id NOT IN (SELECT id FROM jobs)"
SQL_CLEANUP_DEPS = (
    "DELETE FROM job_deps WHERE child NOT IN (SELECT id FROM jobs)",
    "DELETE FROM job_waits WHERE child NOT IN (SELECT id FROM jobs)",
)
PURGE_WHERE = (
    "id IN ({}) AND status IN ('SUCCESS', 'FAILURE', 'CANCELLED') AND "  # .format(ids)
    + KEEP_PARENTS.format("jobs")
)
SQL_PURGE = f"DELETE FROM jobs WHERE {PURGE_WHERE}"
SQL_PURGE_ATTEMPTS = (
    "DELETE FROM attempts WHERE job_id IN ({}) AND job_id NOT IN (SELECT id FROM jobs)"
)


def tally(where: str) -> str:
    """The rows a statement with this WHERE clause is about to change, by pool and status."""
    return f"SELECT pool, status, count(*) FROM jobs WHERE {where} GROUP BY pool, status"


# -- counts by pool and status (schema version 5, note 12) ----------------------------

SQL_COUNTS_ADD = (
    "INSERT INTO job_counts (pool, status, n) VALUES (?, ?, ?) "
    "ON CONFLICT (pool, status) DO UPDATE SET n = n + excluded.n"
)
SQL_COUNTS = "SELECT pool, status, n FROM job_counts"
SQL_POOL_STATUS = "SELECT pool, status FROM jobs WHERE id = ?"


# Added to what a minute already holds (history: schema version 4).
SQL_MINUTES = (
    f"INSERT INTO job_minutes (minute, pool, task, {MINUTE_COLUMNS}) VALUES ("
    + ", ".join(["?"] * 20)
    + ") ON CONFLICT (minute, pool, task) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in MINUTE_COLUMNS.split(", "))
)
# After SQL_RETRY_EXTERNAL in one script: only if that put the job back
# (``changes()`` is the row count of the connection's previous statement).
SQL_RETRIED_IF_CHANGED = SQL_RETRIED + " AND changes() > 0"


# -- schedules (taskrt.scheduler) --------------------------------------------
# One row per schedule. ``next_run_at`` is the next slot not yet fired (NULL
# while paused); a slot's job insert and the row's advance commit together.

# A job of the schedule (``metadata.schedule``) ended FAILURE; queued with that write.
SQL_SCHEDULE_FAILED = "UPDATE schedules SET failures = failures + 1 WHERE name = ?"
# At recovery, before SQL_ORPHAN fails them: orphaned jobs are failures of their schedules.
# (CASE keeps json_extract away from metadata that is not JSON: it would raise.)
_RUNNING_OF_SCHEDULE = (
    f"FROM jobs WHERE {ORPHAN_WHERE} AND CASE WHEN json_valid(jobs.metadata) "
    "THEN json_extract(jobs.metadata, '$.schedule') END = schedules.name"
)
SQL_SCHEDULE_ORPHANS = (
    f"UPDATE schedules SET failures = failures + (SELECT count(*) {_RUNNING_OF_SCHEDULE}) "
    f"WHERE EXISTS (SELECT 1 {_RUNNING_OF_SCHEDULE})"
)


STATEMENT: dict[Op, str] = {
    FLUSH: "SELECT 1",
    START: SQL_START,
    ATTEMPT: SQL_ATTEMPT,
    SUCCEED: SQL_SUCCESS,
    FAIL: SQL_FAILURE,
    CANCEL: SQL_CANCELLED,
    REQUEUE: SQL_WAITING,
    CLEAR_EXTERNAL: SQL_CLEAR_EXTERNAL,
    RETRIED: SQL_RETRIED,
    REASON: "UPDATE jobs SET waiting_reason = ? WHERE id = ? AND status = 'WAITING'",
    MINUTES: SQL_MINUTES,
    SCHEDULE_FAILED: SQL_SCHEDULE_FAILED,
}
"""Each queued write's statement (``taskrt.store.ops``)."""

# After a rolled-back ``rt.transaction()``: its ids stay used (store note 2). The
# sequence's row exists once a job was ever inserted; a rollback of the first may
# have undone it.
SQL_SEQUENCE_ROW = (
    "INSERT INTO sqlite_sequence (name, seq) SELECT 'jobs', 0 "
    "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'jobs')"
)
SQL_SEQUENCE_PAST = "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'jobs'"
# A job still WAITING as its reader saw it (its sequence not moved since): the end of
# a job no process holds, ``Connection.mark_failed(as_read=True)``.
SQL_STILL_AS_READ = "SELECT 1 FROM jobs WHERE id = ? AND status = 'WAITING' AND seq < ?"

# ``BatchWriter.probe``: whether the database takes writes again (store note 9).
SQL_PROBE = (
    "INSERT INTO meta (key, value) VALUES ('writes.probed_at', ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
