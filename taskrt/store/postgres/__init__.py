"""The PostgreSQL store: for many processes on many machines (``taskrt.store`` notes hold for it too).

Notes of this backend (cited where they apply):

1. **Ids in commit order.** The last issued id is one row (``job_ids``), read
   ``FOR UPDATE`` by each transaction that adds jobs: adds commit one after
   the other, so ids strictly increase in the order jobs become visible, are
   never reused (deleting jobs leaves the row; an add in the application's
   transaction records its highest id in the sequence ``job_ids_issued``,
   which a rollback does not undo, and ids are issued above both), and an
   explicit id (a
   ``next_id`` hook) must be above it, as on SQLite. A transaction takes it
   before any row of ``job_counts`` (note 12), as the add's own statement
   does: one that counted its other writes first and then waited for the
   ids, while an add on a connection of the same lane held the ids and
   waited for that count, was a deadlock (``writer._ids_first``). It takes
   it after the row of any schedule it writes: a fire and a ``run_now`` lock
   their schedule's row before they add (scheduler note 7), and a batch that
   adds and counts failures of schedules locks those rows first, in name
   order (``writer._failed_schedules``), never in its one statement.
2. **Versioned migrations in a schema of the user's choice** (``?schema=``,
   default ``taskrt``). Opening runs them from the recorded version
   (``meta.schema.version``) in one transaction under an advisory lock, so
   several processes may start at once; ``taskrt migrate`` runs them alone. A
   newer version is refused with ``SchemaTooNew``. taskrt's connections have
   ``search_path`` = that schema, then ``public``.
3. **One statement per batch, when it can be.** Each queued operation is a
   ``sql.Part``: common table expressions over arrays (``unnest``) that find
   their rows by primary key only (a status condition let the planner scan an
   index whose statistics lag a busy queue), lock them, write them and return,
   per job moved, its pool and the status it left. Parts that touch no row in
   common are one statement (``writer.packs``, ``sql.combined``) with the
   update of ``job_counts`` by exactly what moved (whatever the caller
   believed: ``was`` only documents the call), which returns the new counts
   for the owner's mirror. Adds without unique keys or ids of their own are
   numbered in that statement from the locked last id. So the usual batch is
   one statement, its own transaction, one round trip. The counts' rows are
   updated in key order, and they are the last rows a transaction locks: one
   of several statements (a batch that writes a row twice, or with adds that
   have unique keys; a batch written part by part) sums what each moved
   (``sql.combined(count=False)``) and adds it at its end; one statement
   locks the last id (an add's), every job row it writes in id order
   (``k``: per write, two statements writing two jobs in opposite orders
   deadlocked), then the rows of its other writes, then the counts (a write
   its result did not read ran after them). A reap or a recovery locks the
   jobs it puts back in id order first (``sql.recovery``). A count taken
   mid-transaction was held while the next statement waited for a job's
   row, which another connection of the same lane held while it waited for
   that count: a deadlock, rolled back by the server. A transaction the
   application holds (``rt.transaction()``) counts each write as it goes:
   a savepoint of its own may undo one, and the count with it. Its lane is its
   own (note 12).
4. **The database holds unique keys.** ``jobs_unique_live`` is a unique
   partial index; an add asks who holds its keys first (the common answer)
   and inserts with ``ON CONFLICT DO NOTHING``, so a key taken in between by
   another node is answered with that node's job, never a second live job.
5. **What failures mean.** Connection errors and the SQLSTATE classes of
   insufficient resources (a full disk), operator intervention (a restart),
   system errors, transaction rollbacks (deadlock, serialization) and
   unavailable locks are the database's for now: the batch is kept and written
   again (store note 9), on a fresh connection of the pool. Any other error is
   one part's (store note 10). In the application's own transaction a
   rollback is the application's (note 15).
6. **Other processes wake the owner.** What a process that is not the owner
   commits for it (an add it could not forward, a cancel, a retry, a run now,
   an add in the application's own transaction) sends ``pg_notify`` on the
   schema's channel in or after that commit; the owner listens on a
   connection of its own and looks at once (``listen``), its poll being the
   fallback, also while the listener reconnects.
7. **Every node runs workers** (``mode="nodes"``, ``taskrt.nodes``). A node
   claims due jobs in one statement (``SQL_CLAIM_JOBS``: each priority's
   range of ``jobs_waiting``, ``FOR NO KEY UPDATE SKIP LOCKED``, started and counted
   in the same statement, only while the node's heartbeat is fresh). Its
   connections carry its name as the ``taskrt.node`` setting, and every write
   of a RUNNING job compares it with the job's ``node``: a write of a node
   whose jobs were taken back changes nothing. A write a node queued about a
   job it saw RUNNING (its end, its retry: ``ops`` params end with ``was``)
   lands only on a RUNNING row, so not on one another node has ended since
   (a retry from FAILURE is allowed by hand); elsewhere a belief is only the
   counts' guess. ``reap`` deletes the rows of
   nodes past their TTL and recovers their jobs in the same transaction; the
   heartbeat is a thread of its own (``heartbeat``). Adds are announced as
   ``added:<pool>`` by the statement that adds them (note 11), and the events
   for the other nodes ride the batch after the writes they follow (``NOTIFY``).
8. **Adds have a lane of their own, for when the other is busy.** Adds
   without a unique key or an id of their own are group-committed by a second
   writer on a connection of its own (``PgStore.insert``) while the lifecycle
   lane has a batch in flight (the jobs' starts and ends): an add then waits
   for its own commit only, not for that batch, which a producer adding while
   its pools run would otherwise wait for at each add. While the lifecycle
   lane is idle (``GroupCommit.idle``) an add goes there instead, with the
   ends queued beside it: one statement and one flush of the log, where two
   lanes would commit twice and the server flushes its log one commit at a
   time (a producer whose jobs end as fast as it adds them waited for the
   previous end's flush, then for its own). The two lanes take the last id's
   row in turn, so ids still increase in commit order. An add with a unique
   key always goes in the lifecycle lane: a terminal write queued before it
   frees the key first.
9. **Claims plan once.** Planning the claim statement (its priorities'
   recursion, lock keys and rate caps) costs the server more than running
   it: about 1.3 ms against 0.4 ms on the project's 2-core machine. Once a
   table has statistics, PostgreSQL's plan cache keeps planning it for each
   call, because the generic plan's estimate comes out a little higher.
   So a node claims on connections of its own (1 to 4) that force generic
   plans (``plan_cache_mode``), held open and lent without asyncpg's pool
   (``conns``): a drain is a chain of claims, and the pool's acquire and
   release cost each one a few turns of the event loop. Each priority's
   range is read up to a bound written into the statement (the power of two
   at or above the claim's limit, ``claim_sql``): a generic plan takes a
   LIMIT parameter for a tenth of the table and locks and sorts that many
   rows. No connection compiles
   statements (``jit`` off unless the URL says otherwise): a generic plan
   of the claim estimated above ``jit_above_cost`` spent 50 ms compiling a
   statement that runs in 0.4 ms.
10. **Claims do not wait for the disk.** A claim's connections commit with
    ``synchronous_commit = off`` (unless the URL sets it): the claim returns
    when its transaction is visible, not when its log is flushed, half a
    millisecond sooner on the project's machine, and its locks on the
    counts are held that much less. It acknowledges nothing to a user: a
    crash of the *server* in the fraction of a second before the log writer
    flushes it only undoes it (the job WAITING again, the attempt not
    charged), and the node's later writes about that job are refused (note
    7), so the job runs again: at least once, as after a node's crash. Any
    write the node commits later flushes the claim with it. A crash of the
    node is unaffected: its claim is on the server, and ``reap`` counts it.
    The same connections send a job's progress to the other nodes at once
    (``send_events_now``, ``taskrt.nodebus`` note 6): nothing in it must
    outlive a crash of the server.
11. **An add may be its own claim.** A node adding a job it could start now
    (a free slot kept for it, ``taskrt.claims`` note 4; no delay, lock key,
    unique key, parents or rate limit) marks the row, and the add's
    statement stores it RUNNING on the node, attempt 1 charged, when the
    node's heartbeat is fresh and no WAITING job of its pool with its
    priority or a higher one is due: it looks at the first ``START_SCAN``
    (32) of them in ``jobs_waiting`` and, past that many, lets a claim
    decide. Otherwise the row is WAITING, as any add. The statement returns
    the ids it started; the job then starts without a claim's round trip
    (add -> start on the project's machine: about 4.5 -> 2.3 ms at p50).
    The adds' connection plans its statements once (note 9): the check
    made the add's custom plan cost more to plan than to run. The add
    announces ``added:<pool>`` (note 7) only for pools with a new WAITING
    job (``sql.ANNOUNCE_PART``): a transaction that sends nothing does not
    take PostgreSQL's lock on the notification queue, which a committing
    notifier holds through its flush. Where one owner runs every job
    (``mode="owner"``, no ``taskrt.node``), the owner decides in memory, as
    on SQLite (``taskrt.pool`` note 9), and the statement stores the row
    RUNNING as asked (``PgStore.starts_in_add``).
12. **Counts in lanes** (schema version 6). ``job_counts`` keeps a (pool,
    status) in rows by ``lane``: each writer adds to its connection's lane
    (``taskrt.lane``; ``PgStore.lane``: the lifecycle writer, the adds, the
    claims and the pool's connections, spread over ``NODE_SPREAD`` sets by
    the node's name; ``sql.APP_LANE``, no writer's, for the application's own
    connections), and a count is the sum (``SQL_COUNTS_LIVE``). An open
    transaction of the application that added a job holds its lane's row
    until it ends: in the lifecycle writer's lane (0, before), every start
    waited for it. The pool's connections have a lane of
    their own (they used to add to the lifecycle writer's): a transaction
    of the application's counts as it goes (note 3), and one that failed a
    job (an ``on_failed`` hook) and then added one held a count while it
    waited for the last id, which an add of the writer's held while it
    waited for that count. A row's lock is held through the commit's flush,
    so one row per (pool, status) made every add, claim and end wait for
    the commits before it: with direct starts (note 11) an add and an end
    touched the same RUNNING row, and end to end fell from about 450 to 290
    jobs/s. The mirror of the counts is kept by lane too, each lane as of
    this process's last write to it or read of the table.
13. **Statistics kept current** (``planner``). Plans follow the planner's
    statistics, and a queue changes faster than autovacuum analyzes it (a
    bulk add is an empty table to the planner until then, and a page of
    the newest waiting jobs of a pool a sort of all of them: 754 ms beside a
    million). Each process compares the live counts by pool and status
    (note 12) with what the planner expects every few seconds and runs
    ``ANALYZE jobs`` when one is off by a factor of two and 1,000 rows: one
    process of the schema at a time, each at most every 30 seconds.
14. **A frozen node lets go of its rows.** Where every node claims, each of
    taskrt's connections is opened with ``idle_in_transaction_session_timeout``
    at the node's TTL: a node stopped in the middle of a transaction (a
    SIGSTOP, a paused VM) held its rows locked until the server noticed the
    connection gone, and the reap of its jobs waited on them meanwhile. Now
    the server ends such a transaction after the TTL (nothing of it
    commits; a writer that wakes writes its batch again on a new
    connection). The application's transactions (``rt.transaction()``) take
    the server's own setting again for themselves: they may wait on the
    application. A setting in the URL wins.
15. **The application's transaction is its own to retry.** An add in it
    (``add(..., tx=connection)``) locks the last issued id (note 1). At
    REPEATABLE READ or SERIALIZABLE, an add committed after the
    transaction's snapshot changed that row, so the lock is a serialization
    failure (SQLSTATE 40001), as any statement of the application's on a row
    changed since would be: it is raised as the driver's own error, with a
    note saying to retry the transaction, never as ``StoreUnavailable`` (the
    database is up; only that transaction is over). In SQLAlchemy's
    ``AsyncConnection`` at those levels, the lock is taken first with a
    statement of SQLAlchemy's (one more round trip), so the failure is
    SQLAlchemy's ``DBAPIError``, as its statements' are. A connection given
    outside a transaction adds in one of taskrt's own, at READ COMMITTED
    whatever the session's default: nothing to retry.
"""

from .sql import MIGRATIONS, SCHEMA_VERSION
from .store import DEFAULT_SCHEMA, SCHEMES, PgStore, PgTransaction, is_postgres_url, redacted

__all__ = [
    "DEFAULT_SCHEMA",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SCHEMES",
    "PgStore",
    "PgTransaction",
    "is_postgres_url",
    "redacted",
]
