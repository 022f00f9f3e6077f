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
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache, partial

from ...models import JobStatus
from ..deps import KEEP_PARENTS, ORPHAN_ERROR_SQL
from ..ops import (
    ATTEMPT,
    CANCEL,
    CLEAR_EXTERNAL,
    FAIL,
    HOLD_LOCK,
    MINUTES,
    NOTIFY,
    REASON,
    REQUEUE,
    RETRIED,
    SCHEDULE_FAILED,
    START,
    SUCCEED,
    UNHOLD_LOCK,
    Op,
    source_statuses,
)
from ..queries import JOB_COLUMNS, MINUTE_COLUMNS, RETURNING_ENDED

_PLACEHOLDER = re.compile(r"\?")


@lru_cache(maxsize=1024)  # bounded: IN lists give a text for every length
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

# Every node runs workers (``taskrt.nodes``): who runs a RUNNING job, and who is alive.
SCHEMA_V2 = (
    "ALTER TABLE jobs ADD COLUMN node TEXT",
    """CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid BIGINT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        ttl DOUBLE PRECISION NOT NULL,
        heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )""",
)

# Pool limits set at run time in mode "nodes" apply to every node, those that join later too.
SCHEMA_V3 = (
    "ALTER TABLE pool_settings ADD COLUMN concurrency INTEGER, "
    "ADD COLUMN capacity INTEGER, ADD COLUMN capacity_set SMALLINT NOT NULL DEFAULT 0",
)

# Flow control (docs/flow-control.md): named steps of progress (``step``, ``steps``);
# a job not started by its ``deadline`` fails
# (``jobs_deadline`` finds the waiting ones whose deadline passed); a unique key is
# held for a window after its add (``unique_keys``, untouched by retention and purges).
SCHEMA_V4 = (
    "ALTER TABLE jobs ADD COLUMN deadline DOUBLE PRECISION, ADD COLUMN step TEXT, "
    "ADD COLUMN steps TEXT, ADD COLUMN lock_key TEXT, ADD COLUMN waiting_reason TEXT",
    "CREATE INDEX jobs_waiting_reason ON jobs (waiting_reason) WHERE waiting_reason IS NOT NULL",
    # At most one running job per lock key, held by the database: a claim skips the
    # jobs whose key a running job holds, and two claims racing for one key cannot
    # both commit (mode "nodes"). Checked at commit: a batch may start the next job
    # of a key before the write that ends the last one, in the same transaction.
    "ALTER TABLE jobs ADD CONSTRAINT jobs_locks EXCLUDE USING btree (lock_key WITH =) "
    "WHERE (lock_key IS NOT NULL AND status = 'RUNNING') DEFERRABLE INITIALLY DEFERRED",
    # Rate limits every node draws from (mode "nodes"; taskrt.rates note 2); ``granted``:
    # what the last draw took, which the draw returns.
    """CREATE TABLE rate_buckets (
        name TEXT PRIMARY KEY,
        tokens DOUBLE PRECISION NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        granted DOUBLE PRECISION NOT NULL DEFAULT 0
    )""",
    "ALTER TABLE pool_settings ADD COLUMN rate TEXT, ADD COLUMN rate_set SMALLINT NOT NULL "
    "DEFAULT 0",
    "CREATE INDEX jobs_deadline ON jobs (deadline) WHERE deadline IS NOT NULL "
    "AND status = 'WAITING'",
    """CREATE TABLE unique_keys (
        key TEXT PRIMARY KEY,
        job_id BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    )""",
)

# Workflows: a job's workflow; the jobs a blocked job waits for, and how it waits
# (taskrt.store.deps).
SCHEMA_V5 = (
    "ALTER TABLE jobs ADD COLUMN workflow BIGINT, ADD COLUMN batch_key TEXT, "
    "ADD COLUMN batch BIGINT",
    "CREATE INDEX jobs_workflow ON jobs (workflow) WHERE workflow IS NOT NULL",
    "CREATE INDEX jobs_batching ON jobs (task, batch_key, id) WHERE waiting_reason = 'batching'",
    """CREATE TABLE job_deps (
        child BIGINT NOT NULL,
        position INTEGER NOT NULL,
        parent BIGINT NOT NULL,
        done SMALLINT NOT NULL DEFAULT 0,
        PRIMARY KEY (child, position)
    )""",
    "CREATE INDEX job_deps_parent ON job_deps (parent, done)",
    """CREATE TABLE job_waits (
        child BIGINT PRIMARY KEY,
        pending INTEGER NOT NULL,
        on_parent_failure TEXT NOT NULL,
        inputs TEXT,
        run_at DOUBLE PRECISION NOT NULL,
        failed_parent BIGINT,
        failed_status TEXT
    )""",
)

# Counts in lanes (note 12): each writer adds to rows of its own, so an add, a claim
# and an end never wait for one another's commit on one row; a count is their sum.
SCHEMA_V6 = (
    "ALTER TABLE job_counts ADD COLUMN lane SMALLINT NOT NULL DEFAULT 0",
    "ALTER TABLE job_counts DROP CONSTRAINT job_counts_pkey",
    "ALTER TABLE job_counts ADD PRIMARY KEY (pool, status, lane)",
)

# A dependent's ``job_waits`` row stays once it is decided, with how
# (``outcome``): a manual retry of one that never ran, or of the parent whose end
# cancelled it, blocks it again (``taskrt.store.deps``).
SCHEMA_V7 = (
    "ALTER TABLE job_waits ADD COLUMN outcome TEXT",
    "CREATE INDEX job_waits_open ON job_waits (child) WHERE outcome IS NULL",
    "CREATE INDEX job_waits_cancelled ON job_waits (failed_parent) WHERE outcome = 'cancelled'",
)

# The retries of jobs whose cancel was asked for while their attempt ran (store note
# 21): mode "nodes" claims none of them and ends them at a look (taskrt.nodes note 7),
# found by this index (rows leave it as they end), never by a scan of what waits.
SCHEMA_V8 = (
    "CREATE INDEX jobs_cancel_asked ON jobs (id) WHERE cancel_requested = 1 AND status = 'WAITING'",
)

# Jobs of one lock key start in their queue order (``taskrt.gates`` note 2): a claim
# takes a job with a lock key only if no due job of its key waits before it in its
# pool, found by this index (a few entries a key), never by a scan of what waits.
SCHEMA_V9 = (
    "CREATE INDEX jobs_waiting_locks ON jobs (lock_key, pool, priority DESC, run_at, id) "
    "WHERE status = 'WAITING' AND lock_key IS NOT NULL",
)

# Version 10: the lock keys of attempts that ended while their handler runs on (a
# sync handler's thread, a coroutine that ignored its cancel: ``taskrt.gates`` note
# 4) where every node claims: a claim skips the keys held here too, until the node
# that ran the handler sees it return, or is gone (a reap, its leave).
SCHEMA_V10 = (
    """CREATE TABLE held_locks (
        job_id BIGINT NOT NULL,
        node TEXT NOT NULL,
        lock_key TEXT NOT NULL,
        PRIMARY KEY (job_id, node)
    )""",
    "CREATE INDEX held_locks_key ON held_locks (lock_key)",
)

# Version 11: where a schedule comes from (``code`` or ``api``; as SQLite's version 9).
SCHEMA_V11 = ("ALTER TABLE schedules ADD COLUMN origin TEXT NOT NULL DEFAULT 'api'",)

# The highest id an add in the application's transaction handed out (note 1): a
# sequence, because a rollback does not undo a sequence's change, as it undoes
# ``job_ids``'s; ids are issued above both.
SCHEMA_V12 = ("CREATE SEQUENCE job_ids_issued AS BIGINT MINVALUE 0 START WITH 0",)

# Version 13: the limits of ``pool_settings`` are 64-bit, as a pool's limits are
# everywhere else (``pool._check_limits``); version 3 made them INTEGER, which refused
# a concurrency or capacity above 2**31 - 1 at the write.
SCHEMA_V13 = (
    "ALTER TABLE pool_settings ALTER COLUMN concurrency TYPE BIGINT, "
    "ALTER COLUMN capacity TYPE BIGINT",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    SCHEMA_V1,
    SCHEMA_V2,
    SCHEMA_V3,
    SCHEMA_V4,
    SCHEMA_V5,
    SCHEMA_V6,
    SCHEMA_V7,
    SCHEMA_V8,
    SCHEMA_V9,
    SCHEMA_V10,
    SCHEMA_V11,
    SCHEMA_V12,
    SCHEMA_V13,
)
SCHEMA_VERSION = len(MIGRATIONS)

SQL_VERSION = "SELECT value FROM meta WHERE key = 'schema.version'"
SQL_SET_VERSION = (
    "INSERT INTO meta (key, value) VALUES ('schema.version', $1) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)

# -- adding (notes 1, 4) -------------------------------------------------------------

_ISSUED = "(SELECT last_value FROM job_ids_issued)"
SQL_LAST_ID = f"SELECT greatest(last, {_ISSUED}) FROM job_ids WHERE one = 1 FOR UPDATE"
SQL_SET_LAST_ID = "UPDATE job_ids SET last = $1 WHERE one = 1"
# The same in a transaction that may roll back (the application's, ``rt.transaction()``):
# the sequence is moved in the same round trip (it was a statement of its own).
SQL_SET_LAST_ID_KEPT = (
    "UPDATE job_ids SET last = $1 WHERE one = 1 "
    f"RETURNING CASE WHEN $1 > {_ISSUED} THEN setval('job_ids_issued', $1) END"
)
# The rows of the schedules whose failures a batch that adds counts, locked before
# ``job_ids`` (note 1; writer ``_failed_schedules``), in name order.
SQL_LOCK_SCHEDULES = (
    "SELECT 1 FROM schedules WHERE name = ANY($1::text[]) ORDER BY name FOR NO KEY UPDATE"
)
# A pool's waiting jobs, read by an add holding ``job_ids`` (writer ``_room``): in a
# statement of its own, after the lock, its snapshot holds every add before it.
SQL_WAITING_OF = (
    "SELECT pool, coalesce(sum(n), 0) FROM job_counts WHERE pool = ANY($1::text[]) "
    "AND status = 'WAITING' GROUP BY pool"
)
SQL_HOLDERS = (
    "SELECT unique_key, id FROM jobs WHERE unique_key = ANY($1::text[]) "
    "AND status IN ('WAITING', 'RUNNING')"
)
# Keys within the window of an earlier add (``unique_for``), as of $2.
SQL_WINDOW_HOLDERS = (
    "SELECT key, job_id FROM unique_keys WHERE key = ANY($1::text[]) AND expires_at > $2"
)
# Take the windows of new jobs ($1 keys, $2 job ids, $3 ends) where none is open at
# $4: the row of a key is the lock that orders adds of it on every node; the keys
# taken come back.
SQL_TAKE_WINDOWS = (
    "INSERT INTO unique_keys (key, job_id, expires_at) SELECT * FROM "
    "unnest($1::text[], $2::bigint[], $3::float8[]) ON CONFLICT (key) DO UPDATE "
    "SET job_id = EXCLUDED.job_id, expires_at = EXCLUDED.expires_at "
    "WHERE unique_keys.expires_at <= $4 RETURNING key"
)
SQL_WINDOW_OF = "SELECT key, job_id FROM unique_keys WHERE key = ANY($1::text[])"
SQL_DROP_WINDOWS = "DELETE FROM unique_keys WHERE job_id = ANY($1::bigint[])"
SQL_INSERT = (
    "INSERT INTO jobs (id, task, pool, status, args, kwargs, max_attempts, priority, metadata, "
    "unique_key, created_at, run_at, timeout, retry, seq, external, deadline, lock_key) "
    "SELECT id, task, pool, 'WAITING', args, kwargs, max_attempts, priority, metadata, "
    "unique_key, created_at, run_at, timeout, retry, 1, external, deadline, lock_key FROM unnest("
    "$1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], "
    "$8::text[], $9::text[], $10::float8[], $11::float8[], $12::float8[], $13::text[], "
    "$14::smallint[], $15::float8[], $16::text[]) AS v(id, task, pool, args, kwargs, "
    "max_attempts, priority, metadata, unique_key, created_at, run_at, timeout, retry, external, "
    "deadline, lock_key) "
    "ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('WAITING', 'RUNNING') "
    "DO NOTHING RETURNING id"
)

# -- a job's lifecycle (note 3) ---------------------------------------------------------
# Each queued operation is a ``Part``: common table expressions over arrays (one
# per column, ``unnest``), the last of which, ``g{i}``, writes. A part of a
# counted write returns (pool, was) per job it moved. Parts that touch no row in
# common are combined into one statement (``combined``), with the counts.


def _in(statuses: frozenset[str] | tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{s}'" for s in sorted(statuses)) + ")"


def _arrays(types: str, base: int) -> str:
    return ", ".join(f"${base + i}::{t}[]" for i, t in enumerate(types.split(), start=1))


@dataclass(frozen=True, slots=True)
class Part:
    """How one operation is written for a group of jobs (note 3).

    ``width``: how many of its params (from the first) it takes, each as an
    array; ``table``: the table whose rows it changes (``jobs``, ``attempts``,
    or one it only adds to); ``key``: the param that names the row (its job id);
    ``to``: the status a counted write moves jobs to (None: not counted).
    """

    name: str
    width: int
    table: str
    key: int | None
    to: str | None
    build: Callable[[int, int], list[str]]

    def ctes(self, i: int, base: int) -> list[str]:
        """Its common table expressions, named with ``i``, params from ``$base + 1``."""
        return self.build(i, base)


# A write of a RUNNING job lands only from the node running it (note 7): the
# session's ``taskrt.node`` (unset, so NULL, where one owner runs every job).
NODE = "current_setting('taskrt.node', true)"


def _moving(target: JobStatus, columns: str, types: str, assignments: str) -> Part:
    """A counted write: only from ``target``'s source statuses, and of a RUNNING job
    only by the node that runs it (fenced, note 7); (pool, was) out.

    Where ``target`` has more than one source, the params end with the status the
    writer believed the job had (``ops``: (id, pool, was)). A belief is only a
    guess for the counts (a wrong one costs time, never a transition: the store
    conformance suite), except a node's that the job is RUNNING: that is its
    lease, and its write lands only while the row is RUNNING on it. Without
    that, a reaped node's late retry landed on the job another node had since
    failed (a retry from FAILURE is allowed, by hand) and ran it once more."""
    where = _in(source_statuses(target))
    believed = len(source_statuses(target)) > 1
    if believed:
        columns += ", pool, was"
        types += " text text"
    width = len(columns.split(","))
    key = width - 3 if believed else width - 1  # the job's id

    def build(i: int, base: int) -> list[str]:
        # Rows are found by id only (the primary key): a condition on status would
        # let the planner scan jobs_status, whose statistics lag a busy queue.
        sets = assignments.replace("v.", f"v{i}.")
        late = (
            f" AND (v{i}.was <> 'RUNNING' OR o{i}.was = 'RUNNING' OR {NODE} IS NULL)"
            if believed
            else ""
        )
        return [
            f"v{i} AS (SELECT * FROM unnest({_arrays(types, base)}) AS v({columns}))",
            # Locked by ``combined``'s ``k``, with every job row of the statement.
            f"o{i} AS (SELECT id, was, node FROM k WHERE id = ANY(${base + key + 1}::bigint[]))",
            f"g{i} AS (UPDATE jobs j SET {sets} FROM v{i} JOIN o{i} ON o{i}.id = v{i}.id "
            f"WHERE j.id = v{i}.id AND o{i}.was IN {where} AND (o{i}.was <> 'RUNNING' "
            f"OR o{i}.node IS NOT DISTINCT FROM {NODE}){late} RETURNING j.id, j.pool, o{i}.was)",
        ]

    return Part(target.name.lower(), width, "jobs", key, target.value, build)


def _plain(name: str, table: str, key: int | None, types: str, body: str) -> Part:
    """A write that moves no job: ``body`` reads the arrays as ``v`` (``{v}``). It
    returns a row per row written, for ``combined`` to read before the counts."""

    def build(i: int, base: int) -> list[str]:
        sql = body.format(v=f"v{i}", arrays=_arrays(types, base))
        return [f"g{i} AS ({sql} RETURNING 1 AS written)"]

    return Part(name, len(types.split()), table, key, None, build)


START_PART = _moving(
    JobStatus.RUNNING,
    "attempts, started_at, seq, id",
    "bigint float8 bigint bigint",
    "status = 'RUNNING', attempts = v.attempts, started_at = v.started_at, seq = v.seq, "
    "error = NULL, waiting_reason = NULL",
)
SUCCEED_PART = _moving(
    JobStatus.SUCCESS,
    "result, finished_at, current, total, message, seq, id",
    "text float8 float8 float8 text bigint bigint",
    "status = 'SUCCESS', result = v.result, finished_at = v.finished_at, current = v.current, "
    "total = v.total, message = v.message, seq = v.seq, error = NULL",
)
FAIL_PART = _moving(
    JobStatus.FAILURE,
    "error, finished_at, current, total, message, seq, attempts, id",
    "text float8 float8 float8 text bigint bigint bigint",
    "status = 'FAILURE', error = v.error, finished_at = v.finished_at, current = v.current, "
    "total = v.total, message = v.message, seq = v.seq, attempts = v.attempts",
)
CANCEL_PART = _moving(
    JobStatus.CANCELLED,
    "finished_at, seq, error, id",
    "float8 bigint text bigint",
    "status = 'CANCELLED', finished_at = v.finished_at, seq = v.seq, cancel_requested = 0, "
    "error = v.error",
)
REQUEUE_PART = _moving(
    JobStatus.WAITING,
    "run_at, error, seq, attempts, max_attempts, current, total, message, id",
    "float8 text bigint bigint bigint float8 float8 text bigint",
    "status = 'WAITING', run_at = v.run_at, error = v.error, seq = v.seq, "
    "attempts = v.attempts, max_attempts = v.max_attempts, finished_at = NULL, "
    "started_at = NULL, current = v.current, total = v.total, message = v.message, node = NULL, "
    "cancel_requested = CASE WHEN j.status = 'RUNNING' THEN j.cancel_requested ELSE 0 END",
)
PROGRESS_PART = _plain(
    "progress",
    "jobs",
    0,
    "bigint float8 float8 text bigint",
    "UPDATE jobs j SET current = {v}.current, total = {v}.total, message = {v}.message, "
    "seq = GREATEST(j.seq, {v}.seq) FROM unnest({arrays}) AS {v}(id, current, total, message, "
    "seq) WHERE j.id = {v}.id AND j.status = 'RUNNING' AND j.node IS NOT DISTINCT FROM " + NODE,
)
PROGRESS_STEPS_PART = _plain(
    "progress_steps",
    "jobs",
    0,
    "bigint float8 float8 text bigint text text",
    "UPDATE jobs j SET current = {v}.current, total = {v}.total, message = {v}.message, "
    "seq = GREATEST(j.seq, {v}.seq), step = {v}.step, steps = {v}.steps FROM unnest({arrays}) "
    "AS {v}(id, current, total, message, seq, step, steps) WHERE j.id = {v}.id "
    "AND j.status = 'RUNNING' AND j.node IS NOT DISTINCT FROM " + NODE,
)
"""The progress of a job that names its steps."""
# Written by its node only (fenced, note 7). The check is a scalar subquery, read by
# primary key for each row: as ``EXISTS`` the planner made it a join, and with
# statistics taken while most jobs had no node it guessed one row for "jobs of this
# node" and scanned the whole table once per attempt record (a 40,000-job drain
# slowed from 6,700 to 200 jobs/s as each slower batch made the next one bigger).
ATTEMPT_PART = _plain(
    "attempt",
    "attempts",
    0,
    "bigint bigint float8 float8 text text text text float8",
    "INSERT INTO attempts (job_id, number, started_at, finished_at, outcome, error, traceback, "
    "next, next_at) SELECT * FROM unnest({arrays}) AS {v}(job_id, number, started_at, "
    "finished_at, outcome, error, traceback, next, next_at) WHERE (SELECT j.node IS NOT "
    f"DISTINCT FROM {NODE} FROM jobs j WHERE j.id = {{v}}.job_id) "
    "ON CONFLICT (job_id, number) DO UPDATE SET started_at = excluded.started_at, "
    "finished_at = excluded.finished_at, outcome = excluded.outcome, error = excluded.error, "
    "traceback = excluded.traceback, next = excluded.next, next_at = excluded.next_at",
)
RETRIED_PART = _plain(
    "retried",
    "attempts",
    1,
    "float8 bigint",
    "UPDATE attempts a SET next = 'retried', next_at = {v}.at FROM unnest({arrays}) AS {v}(at, "
    "job_id) WHERE a.job_id = {v}.job_id "
    "AND a.number = (SELECT max(number) FROM attempts b WHERE b.job_id = {v}.job_id)",
)
REASON_PART = _plain(
    "reason",
    "jobs",
    1,
    "text bigint",
    "UPDATE jobs j SET waiting_reason = {v}.reason FROM unnest({arrays}) AS {v}(reason, id) "
    "WHERE j.id = {v}.id AND j.status = 'WAITING'",
)
# Only what the owner read: a change another process made since stays marked.
CLEAR_EXTERNAL_PART = _plain(
    "clear_external",
    "jobs",
    0,
    "bigint bigint smallint",
    "UPDATE jobs j SET external = 0, cancel_requested = 0 FROM unnest({arrays}) AS {v}(id, seq, "
    "cancel_requested) WHERE j.id = {v}.id AND j.seq = {v}.seq "
    "AND j.cancel_requested = {v}.cancel_requested",
)
_MINUTE_NAMES = MINUTE_COLUMNS.split(", ")
MINUTES_PART = _plain(
    "minutes",
    "job_minutes",
    None,
    "bigint text text "
    + " ".join("float8" if c == "duration_sum" else "bigint" for c in _MINUTE_NAMES),
    f"INSERT INTO job_minutes (minute, pool, task, {MINUTE_COLUMNS}) SELECT * FROM unnest("
    "{arrays}) ON CONFLICT (minute, pool, task) DO UPDATE SET "
    + ", ".join(f"{c} = job_minutes.{c} + excluded.{c}" for c in _MINUTE_NAMES),
)
# A lock key held on by an attempt that ended while its handler runs on (mode
# "nodes", SCHEMA_V10): (job_id, lock_key) held, (job_id) let go; by this node.
HOLD_PART = _plain(
    "hold_lock",
    "held_locks",
    0,
    "bigint text",
    f"INSERT INTO held_locks (job_id, node, lock_key) SELECT {{v}}.job_id, {NODE}, "
    "{v}.lock_key FROM unnest({arrays}) AS {v}(job_id, lock_key) "
    f"WHERE {NODE} IS NOT NULL ON CONFLICT DO NOTHING",
)
UNHOLD_PART = _plain(
    "unhold_lock",
    "held_locks",
    0,
    "bigint",
    "DELETE FROM held_locks h USING unnest({arrays}) AS {v}(job_id) "
    f"WHERE h.job_id = {{v}}.job_id AND h.node = {NODE}",
)
SCHEDULE_FAILED_PART = _plain(
    "schedule_failed",
    "schedules",
    None,
    "text",
    "UPDATE schedules s SET failures = s.failures + {v}.n FROM "
    "(SELECT name, count(*) AS n FROM unnest({arrays}) AS name GROUP BY name) AS {v} "
    "WHERE s.name = {v}.name",
)

# Adds without unique keys or chosen ids (the usual add): numbered in the statement
# from the last issued id, whose row it locks until it commits (note 1).
_ADD_COLUMNS = (
    "task, pool, args, kwargs, max_attempts, priority, metadata, created_at, run_at, timeout, "
    "retry, external, deadline, lock_key"
)
_ADD_TYPES = (
    "text text text text bigint bigint text float8 float8 float8 text smallint float8 text smallint"
)
# How many of a pool's waiting jobs an add that asks to start here looks at (note 11).
START_SCAN = 32
# An add asking to start here (``start`` = 1; never one delayed or with a lock key)
# starts if this node's heartbeat is fresh and no WAITING job of its pool has its
# priority or a higher one and is due: among
# the first START_SCAN of those (an index range of jobs_waiting), none is due, and
# there are fewer. The subquery runs for those rows only (note 11). Where one
# owner runs every job (no ``taskrt.node``), the owner decided (``taskrt.pool``
# note 9): it holds every waiting job.
_STARTS = (
    "CASE WHEN NOT (v.start = 1 AND v.run_at <= v.created_at AND v.lock_key IS NULL) "
    "THEN false WHEN current_setting('taskrt.node', true) IS NULL THEN true "
    "WHEN EXISTS (SELECT 1 FROM nodes WHERE id = "
    "current_setting('taskrt.node', true) AND heartbeat_at > now() - make_interval(secs => ttl)) "
    "THEN (SELECT count(*) < " + str(START_SCAN) + " AND NOT coalesce(bool_or(w.run_at <= "
    "v.created_at), false) FROM (SELECT run_at FROM jobs WHERE status = 'WAITING' AND pool = "
    "v.pool AND priority >= v.priority ORDER BY pool, priority, run_at LIMIT "
    + str(START_SCAN)
    + ") w) ELSE false END"
)


def _add(i: int, base: int, gated: bool = False) -> list[str]:
    n = f"cardinality(${base + 1}::text[])"
    values = ", ".join("v." + c for c in _ADD_COLUMNS.split(", "))
    # Gated (``ADD_GATED_PART``): only if the counts the gate read let every job in,
    # and the last id is still the one it read, so no add committed since its
    # snapshot (every add moves it): else nothing is added, and no last id returned.
    gate = f" AND (SELECT ok FROM g{i - 1}) AND last = (SELECT seen FROM g{i - 1})" if gated else ""
    return [
        f"l{i} AS (UPDATE job_ids SET last = greatest(last, {_ISSUED}) + {n} WHERE one = 1"
        f"{gate} RETURNING last)",
        # OFFSET 0: each row's decision is made once, not inlined into every column.
        f"s{i} AS (SELECT v.*, {_STARTS} AS run FROM unnest({_arrays(_ADD_TYPES, base)}) "
        f"WITH ORDINALITY AS v({_ADD_COLUMNS}, start, ord) OFFSET 0)",
        f"g{i} AS (INSERT INTO jobs (id, {_ADD_COLUMNS}, status, seq, attempts, started_at, node) "
        f"SELECT l{i}.last - {n} + v.ord, {values}, "
        "CASE WHEN v.run THEN 'RUNNING' ELSE 'WAITING' END, CASE WHEN v.run THEN 2 ELSE 1 END, "
        "CASE WHEN v.run THEN 1 ELSE 0 END, CASE WHEN v.run THEN v.created_at END, "
        "CASE WHEN v.run THEN current_setting('taskrt.node', true) END "
        f"FROM s{i} AS v, l{i} RETURNING id, pool, status, NULL::text AS was)",
    ]


ADD_PART = Part("add", len(_ADD_TYPES.split()), "", None, JobStatus.WAITING.value, _add)
"""Its rows: a job's columns (``writer._add_row``), then 1 to start it on this node if
it may (note 11), else 0."""


def _gate(i: int, base: int) -> list[str]:
    return [
        f"g{i} AS (SELECT coalesce(bool_and(coalesce((SELECT sum(c.n) FROM job_counts c "
        "WHERE c.pool = v.pool AND c.status = 'WAITING'), 0) + v.n <= v.cap), true) AS ok, "
        "(SELECT last FROM job_ids WHERE one = 1) AS seen "
        f"FROM unnest(${base + 1}::text[], ${base + 2}::bigint[], ${base + 3}::bigint[]) "
        "AS v(pool, cap, n))"
    ]


GATE_PART = Part("gate", 3, "", None, None, _gate)
"""(pool, capacity, jobs added to it) of the pools with a capacity that the
``ADD_GATED_PART`` right after it adds to: whether they all fit, as counted in the
statement's snapshot, and the last id issued in it (writer ``_room``)."""
ADD_GATED_PART = Part(
    "add", len(_ADD_TYPES.split()), "", None, JobStatus.WAITING.value, partial(_add, gated=True)
)
"""An ``ADD_PART`` that adds only where the ``GATE_PART`` before it lets it."""
ADDS = (ADD_PART, ADD_GATED_PART)


def _notify(i: int, base: int) -> list[str]:
    return [
        f"g{i} AS (SELECT pg_notify(v.c, v.p) FROM unnest(${base + 1}::text[], "
        f"${base + 2}::text[]) WITH ORDINALITY AS v(c, p, ord) ORDER BY v.ord)"
    ]


NOTIFY_PART = Part("notify", 2, "", None, None, _notify)
"""Notifications (channel, payload) sent at the commit of the statement's
transaction, in order: in ``mode="nodes"`` the events ride the writes they follow
(``taskrt.nodebus``), and adds wake the other nodes (``writer.added_payload``)."""


def _announce(i: int, base: int) -> list[str]:
    # The adds of the part before it (an ADD_PART): a pool none of whose new jobs is
    # WAITING (each started on this node, note 11) wakes nobody.
    return [
        f"g{i} AS (SELECT pg_notify(v.c, v.p) FROM unnest(${base + 1}::text[], "
        f"${base + 2}::text[], ${base + 3}::text[]) AS v(c, p, pool) WHERE EXISTS (SELECT 1 "
        f"FROM g{i - 1} AS a WHERE a.pool = v.pool AND a.status = 'WAITING'))"
    ]


ANNOUNCE_PART = Part("announce", 3, "", None, None, _announce)
"""The notification (channel, payload, pool) of the adds of the ``ADD_PART`` just
before it in the statement, for each pool with a new WAITING job (note 7)."""

PARTS: dict[Op, Part] = {
    START: START_PART,
    ATTEMPT: ATTEMPT_PART,
    SUCCEED: SUCCEED_PART,
    FAIL: FAIL_PART,
    CANCEL: CANCEL_PART,
    REQUEUE: REQUEUE_PART,
    CLEAR_EXTERNAL: CLEAR_EXTERNAL_PART,
    RETRIED: RETRIED_PART,
    REASON: REASON_PART,
    MINUTES: MINUTES_PART,
    SCHEDULE_FAILED: SCHEDULE_FAILED_PART,
    HOLD_LOCK: HOLD_PART,
    UNHOLD_LOCK: UNHOLD_PART,
    NOTIFY: NOTIFY_PART,
}
"""Each queued write's part (``FLUSH`` has none: it writes nothing)."""


UNSTARTED = "unstarted"
"""The status of a row ``combined`` returns for a start that changed no row:
(NULL, this, the job's id)."""


@cache
def combined(parts: tuple[Part, ...], count: bool = True) -> str:
    """One statement that writes ``parts`` (which touch no row in common) and adds
    what the counted ones moved to ``job_counts``. It returns the new count of each
    (pool, status) it changed (``count`` False: it leaves ``job_counts`` alone and
    returns what each changed by, for its transaction to add at its end, note 3),
    and for an ``ADD_PART``, a row (NULL, NULL, the last
    id issued) and one (NULL, 'RUNNING', id) per job it started on this node; for a
    ``START_PART``, one (NULL, ``UNSTARTED``, id) per start that changed no row.
    Params: each part's arrays, in order. Built once per combination."""
    ctes: list[str] = []
    ids: list[str] = []
    first: list[str] = []
    moved: list[str] = []
    out: list[str] = []
    plain: list[str] = []
    base = 0
    for i, part in enumerate(parts):
        ctes.extend(part.ctes(i, base))
        if part.table == "jobs" and part.key is not None:
            ids.append(f"${base + part.key + 1}::bigint[]")
        base += part.width
        if part in ADDS:  # WAITING, or RUNNING where it started on this node (note 11)
            moved.append(f"SELECT pool, was, status FROM g{i}")
            first.append(f"SELECT NULL::text, NULL::text, last FROM l{i}")
            out.append(f"SELECT NULL::text, status, id FROM g{i} WHERE status = 'RUNNING'")
        elif part.to is not None:
            moved.append(f"SELECT pool, was, '{part.to}'::text AS status FROM g{i}")
        if part is START_PART:  # the starts that changed no row (store note 20)
            out.append(
                f"SELECT NULL::text, '{UNSTARTED}'::text, v.id FROM v{i} AS v "
                f"WHERE NOT EXISTS (SELECT 1 FROM g{i} AS s WHERE s.id = v.id)"
            )
        if part.to is None and part not in ADDS:
            # Each read to the end (a notification is sent for each row read).
            plain.append(
                f"SELECT NULL::text, NULL::text, NULL::bigint FROM g{i} HAVING count(*) < 0"
            )
    # Rows are locked in the order of the branches (note 3): the last id (an add's
    # ``l``), every job row the statement writes, in id order (``k``), the rows of
    # the other writes, then the counts. A write the main query does not read runs
    # after it: a count or an attempt locked before a job's row was a deadlock with
    # a transaction that locks them the other way, and so were two statements that
    # locked two jobs in opposite orders (one write's jobs, then another's). The job
    # rows are locked as their updates lock them (FOR NO KEY UPDATE: no key changes),
    # so an add holding a parent FOR KEY SHARE (SQL_PARENTS_FOUND) does not hold
    # back the parent's writes, nor every other write of their batch.
    if ids:
        ctes.insert(
            0,
            "k AS MATERIALIZED (SELECT id, status AS was, node FROM jobs WHERE id = ANY("
            + " || ".join(ids)
            + ") ORDER BY id FOR NO KEY UPDATE)",
        )
        first.append("SELECT NULL::text, NULL::text, NULL::bigint FROM k HAVING count(*) < 0")
    out[:0] = first
    if moved:
        ctes.append(f"m AS ({' UNION ALL '.join(moved)})")
        if plain:
            out.append("SELECT NULL::text, NULL::text, NULL::bigint FROM m HAVING count(*) < 0")
    out.extend(plain)
    if moved:
        ctes.append(
            "d AS (SELECT pool, status, sum(n)::bigint AS n FROM ("
            "SELECT pool, was AS status, -1 AS n FROM m WHERE was IS NOT NULL "
            "UNION ALL SELECT pool, status, 1 FROM m) AS x GROUP BY pool, status "
            "HAVING sum(n) <> 0)"
        )
        if count:
            ctes.append(
                f"c AS (INSERT INTO job_counts (pool, status, lane, n) SELECT pool, status, "
                f"{LANE}, n FROM d ORDER BY pool, status ON CONFLICT (pool, status, lane) DO "
                "UPDATE SET n = job_counts.n + excluded.n RETURNING pool, status, n)"
            )
        out.append(f"SELECT pool, status, n FROM {'c' if count else 'd'}")
    if not out:
        out.append("SELECT NULL::text, NULL::text, NULL::bigint WHERE false")
    return "WITH " + ", ".join(ctes) + " " + " UNION ALL ".join(out)


# -- counts (note 3) -------------------------------------------------------------------

# The lane of ``job_counts`` a connection adds to (note 12): its ``taskrt.lane``
# setting, ``APP_LANE`` where it has none (the application's own connections, an
# add in their transaction). Before, that was 0, the lane of the owner's lifecycle
# writer (and of one node in NODE_SPREAD's): an open transaction of the
# application that had added a job held the count's row, and every start waited
# for its commit, in every pool.
APP_LANE = 32  # past every writer's (store.NODE_SPREAD * store.LANES_PER_NODE)
LANE = f"coalesce(nullif(current_setting('taskrt.lane', true), ''), '{APP_LANE}')::smallint"

SQL_COUNTS_ADD = (
    f"INSERT INTO job_counts (pool, status, lane, n) SELECT v.pool, v.status, {LANE}, v.n "
    "FROM unnest($1::text[], $2::text[], $3::bigint[]) AS v(pool, status, n) "
    "ON CONFLICT (pool, status, lane) DO UPDATE SET n = job_counts.n + excluded.n "
    "RETURNING pool, status, n"
)
SQL_COUNTS = "SELECT pool, status, lane, n FROM job_counts"


def locking(where: str) -> str:
    """The ids of the rows with this WHERE clause, locked in id order (so two such
    statements wait for each other rather than deadlock)."""
    return f"SELECT id FROM jobs WHERE {where} ORDER BY id FOR UPDATE"


def tally(where: str) -> str:
    """The rows a statement with this WHERE clause is about to change, by pool and status
    (locked, so they cannot change in between)."""
    return (
        f"SELECT pool, status, count(*) FROM (SELECT pool, status FROM jobs WHERE {where} "
        "ORDER BY id FOR UPDATE) AS t GROUP BY pool, status"
    )


# -- immediate operations (each names its source statuses) ---------------------------------

CANCEL_WAITING_EXTERNAL_WHERE = "id = $1 AND status = 'WAITING'"
SQL_CANCEL_WAITING_EXTERNAL = (
    "UPDATE jobs SET status = 'CANCELLED', finished_at = $2, seq = seq + 1, external = 1 "
    f"WHERE {CANCEL_WAITING_EXTERNAL_WHERE} RETURNING seq"
)
# A waiting job as a node read it ($2: the sequence it will write, one past the
# read's), locked for the write that ends it (``JobStore.mark_failed``, as_read).
SQL_LOCK_AS_READ = (
    "SELECT id FROM jobs WHERE id = $1 AND status = 'WAITING' AND seq < $2 FOR NO KEY UPDATE"
)
SQL_REQUEST_CANCEL = (
    "UPDATE jobs SET cancel_requested = 1, external = 1 WHERE id = $1 AND status = 'RUNNING'"
)
_RETRY_SOURCES = _in(source_statuses(JobStatus.WAITING) - {"RUNNING"})
RETRY_EXTERNAL_WHERE = f"id = $1 AND status IN {_RETRY_SOURCES}"
SQL_RETRY_EXTERNAL = (
    "UPDATE jobs SET status = 'WAITING', run_at = $2, max_attempts = $3, finished_at = NULL, "
    "started_at = NULL, seq = seq + 1, cancel_requested = 0, external = 1, node = NULL "
    f"WHERE {RETRY_EXTERNAL_WHERE} RETURNING seq"
)
SQL_RETRIED_ONE = (
    "UPDATE attempts SET next = 'retried', next_at = $2 WHERE job_id = $1 "
    "AND number = (SELECT max(number) FROM attempts WHERE job_id = $1)"
)
SQL_SEQ_GAP = "UPDATE jobs SET seq = seq + $1 WHERE status IN ('WAITING', 'RUNNING')"


# A RUNNING job whose attempt a recovery recorded as interrupted already: an orphan
# a node's recovery left for a node with its task (store note 22). Later recoveries
# record nothing again, and move its sequence past no gap again.
UNPARKED = (
    " AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.job_id = jobs.id "
    "AND a.number = jobs.attempts AND a.outcome = 'interrupted')"
)


def recovery(
    lost: str = "", *, known: bool = False
) -> list[tuple[str, tuple[str, ...], JobStatus | None]]:
    """The statements that put interrupted RUNNING jobs back, in one transaction
    (``lost``: a condition on which; none: every one). Each is (SQL, the names of
    its params: ``now``, ``max`` recoveries, a status): with a status, the SQL is a
    WHERE clause whose rows the next statement moves there (``tally``). ``known``
    (a node's recovery): ``failing`` names the tasks whose orphans fail here, and
    an orphan of a task the node does not register stays RUNNING as it is (store
    note 22); else ``failing`` names those that do not (the hooked ones)."""
    cancelled = f"status = 'RUNNING' AND cancel_requested = 1{lost}"
    if not lost:  # and a retry put back before the owner acted on the cancel (store note 21)
        cancelled = (
            "cancel_requested = 1 AND (status = 'RUNNING' OR (status = 'WAITING' "
            "AND waiting_reason IS DISTINCT FROM 'blocked'))"
        )
    back = f"status = 'RUNNING' AND recoveries < $1{lost}"
    orphan = f"status = 'RUNNING'{lost}"
    # Those of a task with an on_failed hook here stay RUNNING, moved to this node
    # (store note 22); the rest fail here, except, on a node, those of a task it does
    # not register ($1 of the failing statements: the names).
    failing = f"{orphan} AND {'' if known else 'NOT '}(task = ANY($1::text[]))"
    return [
        # The jobs first, in id order (note 3): an attempt's row locked before its
        # job's was a deadlock with a batch of the node being reaped (the job, then
        # its attempt).
        (
            f"SELECT 1 FROM jobs WHERE ({orphan}) OR ({cancelled}) ORDER BY id FOR UPDATE",
            (),
            None,
        ),
        (
            "INSERT INTO attempts (job_id, number, started_at, finished_at, outcome, error) "
            "SELECT id, attempts, COALESCE(started_at, $1), $1, 'interrupted', "
            "'the process stopped during this attempt' FROM jobs WHERE status = 'RUNNING' "
            f"AND attempts > 0{lost}{UNPARKED} ON CONFLICT (job_id, number) DO UPDATE SET "
            "started_at = excluded.started_at, finished_at = excluded.finished_at, "
            "outcome = excluded.outcome, error = excluded.error, traceback = NULL, "
            "next = NULL, next_at = NULL",
            ("now",),
            None,
        ),
        (cancelled, (), JobStatus.CANCELLED),
        (
            "UPDATE jobs SET status = 'CANCELLED', finished_at = $1, seq = seq + 1, "
            f"cancel_requested = 0, external = 0 WHERE {cancelled}" + RETURNING_ENDED,
            ("now",),
            None,
        ),
        (back, ("max",), JobStatus.WAITING),
        (
            "UPDATE jobs SET status = 'WAITING', recoveries = recoveries + 1, seq = seq + 1, "
            f"node = NULL WHERE {back}",
            ("max",),
            None,
        ),
        (
            f"UPDATE jobs SET node = $1 WHERE {orphan} AND task = ANY($2::text[]) "
            f"RETURNING {JOB_COLUMNS}, true AS kept_orphan",
            ("node", "hooked"),
            None,
        ),
        # Orphaned jobs are failures of their schedules (metadata that is not JSON
        # counts for none).
        (
            "UPDATE schedules s SET failures = s.failures + o.n FROM ("
            "SELECT taskrt_json_text(metadata, 'schedule') AS name, count(*) AS n FROM jobs "
            f"WHERE {failing} GROUP BY 1) AS o WHERE s.name = o.name",
            ("failing",),
            None,
        ),
        (failing, ("failing",), JobStatus.FAILURE),
        (
            "UPDATE jobs SET status = 'FAILURE', finished_at = $2, seq = seq + 1, "
            f"error = {ORPHAN_ERROR_SQL} WHERE {failing}" + RETURNING_ENDED,
            ("failing", "now"),
            None,
        ),
    ]


# A finished job that a blocked job waits for, or may wait for again after a retry of
# another parent, stays (taskrt.workflows note 4).
CLEANUP_WHERE = "finished_at < $1 AND status = ANY($2::text[]) AND " + KEEP_PARENTS.format("jobs")
# Cleanup and purge lock their rows first (``locking``), then delete those of them
# that no blocked job waits for, as a later statement sees it: an add of a
# dependent that held a parent (SQL_PARENTS_FOUND) has committed by then.
SQL_DELETE_LOCKED = (
    "DELETE FROM jobs WHERE id = ANY($1::bigint[]) AND "
    + KEEP_PARENTS.format("jobs")
    + " RETURNING id, pool, status"
)
SQL_DELETE_ATTEMPTS = "DELETE FROM attempts WHERE job_id = ANY($1::bigint[])"
SQL_DELETE_DEPS = (
    "DELETE FROM job_deps WHERE child = ANY($1::bigint[])",
    "DELETE FROM job_waits WHERE child = ANY($1::bigint[])",
)
PURGE_WHERE = (
    "id = ANY($1::bigint[]) AND status IN ('SUCCESS', 'FAILURE', 'CANCELLED') AND "
    + KEEP_PARENTS.format("jobs")
)
SQL_RESCHEDULE = (
    "UPDATE jobs SET run_at = $1, external = GREATEST(external, $2) "
    "WHERE id = $3 AND status = 'WAITING' "
    "AND coalesce(waiting_reason, '') NOT IN ('blocked', 'batching', 'batched')"
)
# Dependencies (taskrt.store.deps): the statements over lists of ids.
# The open dependencies on finished parents, closed, with each parent's status as the
# statement saw it: read in a later statement (a snapshot of its own), a parent
# cancelled and then retried meanwhile would read WAITING, and its dependent be
# released with no result for it instead of cancelled.
_CLOSE = (
    "UPDATE job_deps d SET done = 1 FROM jobs p WHERE d.done = 0 AND {} AND p.id = d.parent "
    "AND p.status IN ('SUCCESS', 'FAILURE', 'CANCELLED') RETURNING d.child, d.parent, p.status"
)
SQL_CLOSE_OF = _CLOSE.format("d.parent = ANY($1::bigint[])")
# Before a close, its ended parents are locked (shared, in id order) until the settle
# commits: a retry of one of them (another process's, by hand) waits for it, and then
# finds the dependents it cancelled to put back (``deps``); else the retry could
# commit and look for them before the cancels committed, and they stayed CANCELLED.
_LOCK_ENDED = (
    "SELECT p.id FROM jobs p WHERE {} AND p.status IN ('SUCCESS', 'FAILURE', 'CANCELLED') "
    "ORDER BY p.id FOR SHARE OF p"
)
SQL_LOCK_ENDED_OF = _LOCK_ENDED.format("p.id = ANY($1::bigint[])")
SQL_LOCK_ENDED_ALL = _LOCK_ENDED.format(
    "p.id IN (SELECT d.parent FROM job_deps d WHERE d.done = 0 AND d.child IN "
    "(SELECT child FROM job_waits WHERE outcome IS NULL))"
)
# Locked until the add commits (FOR KEY SHARE: the parents' own writes go on), so a
# cleanup or purge deleting one waits, then sees the new dependent and keeps it; an
# add that waited for a delete finds the parent gone.
SQL_PARENTS_FOUND = (
    "SELECT id, status FROM jobs WHERE id = ANY($1::bigint[]) ORDER BY id FOR KEY SHARE"
)

# What other processes commit for the owner wakes it (note 6).
SQL_NOTIFY = "SELECT pg_notify($1, 'changed')"
# Notifications on channel $1, one per payload of $2, in the array's order (unnest's
# rows come in it, and each pg_notify is called as its row is) (taskrt.nodebus note 6).
SQL_NOTIFY_EACH = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p"
SQL_NOTIFY_POOLS = "SELECT pg_notify($1, 'pools')"

# -- ownership ---------------------------------------------------------------------------

SQL_CLAIM = (
    "INSERT INTO lease (id, owner, expires_at, address, since) VALUES (1, $1, 0, $2, $3) "
    "ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, address = excluded.address, "
    "since = excluded.since"
)
SQL_RELEASE = "DELETE FROM lease WHERE id = 1 AND owner = $1"
SQL_SET_PAUSED = (
    "INSERT INTO pool_settings (name, paused) VALUES ($1, $2) "
    "ON CONFLICT (name) DO UPDATE SET paused = excluded.paused"
)
# $2: the concurrency or NULL (unchanged); $3: 1 if the capacity is set, then $4 (NULL: none).
SQL_SET_LIMITS = (
    "INSERT INTO pool_settings (name, concurrency, capacity_set, capacity, rate_set, rate) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET "
    "concurrency = COALESCE(excluded.concurrency, pool_settings.concurrency), "
    "capacity_set = GREATEST(pool_settings.capacity_set, excluded.capacity_set), "
    "capacity = CASE WHEN excluded.capacity_set = 1 THEN excluded.capacity "
    "ELSE pool_settings.capacity END, "
    "rate_set = GREATEST(pool_settings.rate_set, excluded.rate_set), "
    "rate = CASE WHEN excluded.rate_set = 1 THEN excluded.rate ELSE pool_settings.rate END"
)
SQL_POOL_LIMITS = (
    "SELECT name, concurrency, capacity_set, capacity, rate_set, rate FROM pool_settings "
    "WHERE concurrency IS NOT NULL OR capacity_set = 1 OR rate_set = 1"
)

# -- nodes: every process runs workers (note 7) ------------------------------------------

SQL_JOIN = (
    "INSERT INTO nodes (id, host, pid, started_at, ttl) VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), ttl = excluded.ttl"
)
SQL_HEARTBEAT = "UPDATE nodes SET heartbeat_at = now() WHERE id = $1"
SQL_LEAVE = "DELETE FROM nodes WHERE id = $1"
# The other connections listening to a schema's events (taskrt.nodebus note 5), and
# those of releases that named every listener alike.
SQL_EVENT_LISTENERS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name IN ($1, 'taskrt listener') AND pid <> $2"
)
SQL_NODES = (
    "SELECT id, host, pid, started_at, ttl, extract(epoch FROM heartbeat_at)::float8, "
    "extract(epoch FROM now())::float8 FROM nodes ORDER BY id"
)
# The priorities a pool's waiting jobs have, highest first, each found by an index
# seek (jobs_waiting), so a claim reads each priority's due jobs by range and never
# walks past delayed ones.
_PRIORITIES = (
    "p AS ((SELECT priority FROM jobs WHERE status = 'WAITING' AND pool = $1 "
    "ORDER BY priority DESC LIMIT 1) UNION ALL SELECT (SELECT j.priority FROM jobs j "
    "WHERE j.status = 'WAITING' AND j.pool = $1 AND j.priority < p.priority "
    "ORDER BY j.priority DESC LIMIT 1) FROM p WHERE p.priority IS NOT NULL)"
)
_CLAIM_COLUMNS = ", ".join(f"g.{c}" for c in JOB_COLUMNS.split(", "))
# A waiting job's lock key is free: no running job holds it, nor an attempt that
# ended while its handler runs on (``held_locks``), and no claim in flight
# is taking it (a transaction-scoped advisory lock; the unique index jobs_locks is
# what holds when a claim that read before another's commit tries it anyway).
# It is also the first due job of its key in the pool ($1, at $2) that is not to be
# ended at a look (a cancel asked): one the claim leaves out (its task is not this
# node's, or its rate gave no token) keeps the later ones of its key waiting
# (``taskrt.gates`` note 2; the index jobs_waiting_locks).
_LOCK_FREE = (
    "NOT EXISTS (SELECT 1 FROM jobs r WHERE r.lock_key = jobs.lock_key "
    "AND r.status = 'RUNNING') "
    "AND NOT EXISTS (SELECT 1 FROM held_locks h WHERE h.lock_key = jobs.lock_key) AND jobs.id = (SELECT e.id FROM jobs e "
    "WHERE e.lock_key = jobs.lock_key AND e.status = 'WAITING' AND e.pool = $1 "
    "AND e.run_at <= $2 AND e.cancel_requested = 0 "
    "ORDER BY e.priority DESC, e.run_at, e.id LIMIT 1) "
    "AND pg_try_advisory_xact_lock(hashtext(current_schema() || ':lock:' || lock_key))"
)
# Claim up to $4 due jobs of pool $1 whose tasks ($3) this node has, at $2, for node
# $5, if its heartbeat is fresh: highest priority, then earliest run_at, then lowest
# id; rows another node is claiming are skipped (SKIP LOCKED; locked FOR NO KEY UPDATE,
# what the claim's UPDATE takes, so that an add holding a parent FOR KEY SHARE until
# its dependent commits does not hide the parent from claims). They start here: the
# attempt is charged in the same statement, and the counts move with them. Each
# priority's range is read up to {bound}, a constant of the statement's text, never
# a parameter: a claim runs with a generic plan (store note 9), and a generic plan
# takes a LIMIT parameter for a tenth of the table, sorted (``claim_sql``).
_SQL_CLAIM_JOBS = (
    f"WITH RECURSIVE {_PRIORITIES}, "
    "alive AS (SELECT 1 FROM nodes WHERE id = $5 AND heartbeat_at > now() - make_interval("
    "secs => ttl)), "
    "y AS (SELECT y.id, y.priority, y.run_at, y.lock_key, y.task FROM p, LATERAL (SELECT id, "
    "priority, run_at, lock_key, task FROM jobs WHERE status = 'WAITING' AND pool = $1 "
    "AND priority = p.priority AND run_at <= $2 AND task = ANY($3::text[]) "
    "AND cancel_requested = 0 "
    f"AND (lock_key IS NULL OR {_LOCK_FREE}) "
    "ORDER BY run_at, id LIMIT {bound} FOR NO KEY UPDATE SKIP LOCKED) y "
    "WHERE EXISTS (SELECT 1 FROM alive)), "
    # One job per lock key in one claim (the first in run order), and no more jobs of
    # a task than the tokens its rate limit gave ($6 tasks, $7 tokens).
    "c AS (SELECT z.id FROM (SELECT id, priority, run_at, task, row_number() OVER (PARTITION "
    "BY coalesce(lock_key, id::text) ORDER BY priority DESC, run_at, id) AS nth, "
    "row_number() OVER (PARTITION BY task ORDER BY priority DESC, run_at, id) AS tnth FROM y) z "
    "LEFT JOIN unnest($6::text[], $7::bigint[]) AS cap(task, n) ON cap.task = z.task "
    "WHERE z.nth = 1 AND (cap.n IS NULL OR z.tnth <= cap.n) "
    "ORDER BY z.priority DESC, z.run_at, z.id LIMIT $4), "
    "g AS (UPDATE jobs j SET status = 'RUNNING', node = $5, attempts = j.attempts + 1, "
    "started_at = $2, finished_at = NULL, error = NULL, waiting_reason = NULL, seq = j.seq + 1 "
    "FROM c "
    "WHERE j.id = c.id RETURNING j.*), "
    "d AS (SELECT count(*) AS n FROM g), "
    f"k AS (INSERT INTO job_counts (pool, status, lane, n) SELECT $1, s.status, {LANE}, "
    "CASE WHEN s.status = 'WAITING' THEN -d.n ELSE d.n END FROM d, "
    "unnest(ARRAY['RUNNING', 'WAITING']) AS s(status) WHERE d.n > 0 ORDER BY 2 "
    "ON CONFLICT (pool, status, lane) DO UPDATE SET n = job_counts.n + excluded.n "
    "RETURNING status, n) "
    # Whether a blocked job waits for it (taskrt.workflows note 3), then the counts.
    f"SELECT {_CLAIM_COLUMNS}, EXISTS (SELECT 1 FROM job_deps dd JOIN job_waits ww "
    "ON ww.child = dd.child WHERE dd.parent = g.id AND ww.outcome IS NULL), "
    "(SELECT n FROM k WHERE status = 'WAITING'), "
    "(SELECT n FROM k WHERE status = 'RUNNING') FROM g "
    "ORDER BY g.priority DESC, g.run_at, g.id"
)


def claim_sql(limit: int) -> str:
    """The claim of at most ``limit`` jobs: each priority's range is read up to the
    power of two at or above it, so a node's claims are a handful of statements."""
    return _SQL_CLAIM_JOBS.replace("{bound}", str(1 << max(0, limit - 1).bit_length()))


# When the pool's next delayed job (of tasks $3) comes due after $2.
SQL_NEXT_DUE = (
    f"WITH RECURSIVE {_PRIORITIES} SELECT min(y.run_at) FROM p, LATERAL (SELECT run_at "
    "FROM jobs WHERE status = 'WAITING' AND pool = $1 AND priority = p.priority "
    "AND run_at > $2 AND task = ANY($3::text[]) ORDER BY run_at, id LIMIT 1) y"
)
# Rate limits (mode "nodes"): each bucket ($1, with its rate per second $3 and burst
# $4) is refilled to $5 and gives up to $2 whole tokens; every node draws from the
# same row, so the draws of nodes are serialized by its lock.
SQL_NEW_BUCKETS = (
    "INSERT INTO rate_buckets (name, tokens, at) SELECT name, burst, $3 FROM "
    "unnest($1::text[], $2::float8[]) AS v(name, burst) ON CONFLICT (name) DO NOTHING"
)
_REFILLED = "LEAST(v.burst, b.tokens + GREATEST(0, $5 - b.at) * v.rate)"
SQL_DRAW_TOKENS = (
    f"UPDATE rate_buckets b SET granted = GREATEST(0, LEAST(v.want, floor({_REFILLED} + 1e-9))), "
    f"tokens = {_REFILLED} - GREATEST(0, LEAST(v.want, floor({_REFILLED} + 1e-9))), "
    "at = GREATEST(b.at, $5) FROM unnest($1::text[], $2::float8[], $3::float8[], "
    "$4::float8[]) AS v(name, want, rate, burst) WHERE b.name = v.name "
    "RETURNING b.name, b.granted, b.tokens"
)
# Tokens a claim drew and did not use, given back.
SQL_SETTLE_TOKENS = (
    "UPDATE rate_buckets b SET tokens = b.tokens + v.delta FROM unnest($1::text[], "
    "$2::float8[]) AS v(name, delta) WHERE b.name = v.name"
)
# Why waiting jobs wait, where every node claims (mode "nodes"): the first due job
# of the pool ($1, at $2) among the tasks $3 a rate limit held back; and the due
# jobs, among the first thousand, whose lock key a running job holds or an earlier
# due job of the pool has.
SQL_MARK_RATE_LIMITED = (
    "UPDATE jobs SET waiting_reason = 'rate_limited' WHERE id = (SELECT id FROM jobs "
    "WHERE status = 'WAITING' AND pool = $1 AND run_at <= $2 AND task = ANY($3::text[]) "
    "ORDER BY priority DESC, run_at, id LIMIT 1) AND status = 'WAITING' "
    "AND waiting_reason IS DISTINCT FROM 'rate_limited'"
)
SQL_MARK_LOCKED = (
    "UPDATE jobs j SET waiting_reason = 'locked' FROM (SELECT id, lock_key, row_number() "
    "OVER (PARTITION BY lock_key ORDER BY priority DESC, run_at, id) AS nth FROM (SELECT id, "
    "lock_key, priority, run_at FROM jobs "
    # Nothing is read where no job has a lock key (one-time checks, by jobs_locks and
    # jobs_waiting_locks).
    "WHERE (EXISTS (SELECT 1 FROM jobs h WHERE h.lock_key IS NOT NULL AND h.status = 'RUNNING') "
    "OR EXISTS (SELECT 1 FROM jobs h WHERE h.lock_key IS NOT NULL AND h.status = 'WAITING')) "
    "AND status = 'WAITING' AND pool = $1 AND run_at <= $2 AND cancel_requested = 0 "
    "ORDER BY priority DESC, run_at, id LIMIT 1000) f WHERE lock_key IS NOT NULL) w "
    "WHERE j.id = w.id AND j.status = 'WAITING' "
    "AND j.waiting_reason IS DISTINCT FROM 'locked' AND (w.nth > 1 OR EXISTS (SELECT 1 "
    "FROM jobs r WHERE r.lock_key = w.lock_key AND r.status = 'RUNNING') "
    "OR EXISTS (SELECT 1 FROM held_locks h WHERE h.lock_key = w.lock_key))"
)
SQL_CANCELS = "SELECT id FROM jobs WHERE status = 'RUNNING' AND node = $1 AND cancel_requested = 1"
SQL_RUNNING_ON = "SELECT id, seq FROM jobs WHERE status = 'RUNNING' AND node = $1"
# Jobs a node's claim (or add) started whose answer it never got (nodes note 8): back
# to WAITING, the attempt the claim charged given back (no handler ran).
# $1 ids, $3 their sequences as read (a job changed since is not a stray), $2 the node.
UNHELD_WHERE = (
    "(id, seq) IN (SELECT * FROM unnest($1::bigint[], $3::bigint[])) "
    "AND status = 'RUNNING' AND node = $2"
)
SQL_RELEASE_UNHELD = (
    "UPDATE jobs SET status = 'WAITING', attempts = greatest(attempts - 1, 0), "
    f"started_at = NULL, node = NULL, seq = seq + 1 WHERE {UNHELD_WHERE}"
)
# Retries whose cancel was asked for while their attempt ran: CANCELLED (nodes note 7).
CANCEL_ASKED_WHERE = (
    "cancel_requested = 1 AND status = 'WAITING' AND waiting_reason IS DISTINCT FROM 'blocked'"
)
SQL_CANCEL_ASKED = (
    "UPDATE jobs SET status = 'CANCELLED', finished_at = $1, seq = seq + 1, "
    f"cancel_requested = 0 WHERE {CANCEL_ASKED_WHERE} RETURNING id, seq, task, pool"
)
# Nodes whose heartbeat is older than their TTL are gone; so are their RUNNING jobs'
# attempts, which recovery then puts back (``recovery``, with LOST).
SQL_REAP = "DELETE FROM nodes WHERE heartbeat_at < now() - make_interval(secs => ttl) RETURNING id"
# The keys held on by handlers of nodes gone (SCHEMA_V10): free again.
SQL_FREE_HELD_LOST = (
    "DELETE FROM held_locks h WHERE NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = h.node)"
)
LOST = " AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = jobs.node)"
SQL_SEQ_GAP_LOST = (
    "UPDATE jobs SET seq = seq + $1 WHERE status = 'RUNNING'"
    + LOST
    + UNPARKED
    + " RETURNING id, seq"
)
# The orphans of tasks a node does not register that its recovery left RUNNING
# (``recovery`` with ``known``; $1 the tasks it registers).
SQL_LEFT_ORPHANS = (
    "SELECT 1 FROM jobs WHERE status = 'RUNNING'" + LOST + " AND NOT (task = ANY($1::text[]))"
)
# The jobs a reap takes back, and their sequences past the gap, told on the events
# channel in the reap's transaction (``taskrt.nodebus`` note 7): $1 the channel, $2
# the reaping node. REAPED_PER_NOTIFY of them a notification, under 8,000 bytes.
REAPED_PER_NOTIFY = 150
SQL_TELL_REAPED = (
    "SELECT pg_notify($1, json_build_object('n', $2::text, 'e', '[]'::json, "
    "'r', json_agg(json_build_array(id, seq) ORDER BY id))::text) "
    f"FROM (SELECT id, seq, (row_number() OVER (ORDER BY id) - 1) / {REAPED_PER_NOTIFY} "
    "AS chunk FROM jobs WHERE status = 'RUNNING'" + LOST + UNPARKED + ") AS r GROUP BY chunk"
)


# -- schedules (taskrt.scheduler) --------------------------------------------------------


# -- reads --------------------------------------------------------------------------------

# ``BatchWriter.probe``: whether the database takes writes again (store note 9).
SQL_PROBE = (
    "INSERT INTO meta (key, value) VALUES ('writes.probed_at', $1) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
