"""Persistence of jobs, attempts, schedules and the ownership lease.

Everything above the store talks to it through its operations (``add`` through
``insert``, ``start``, ``succeed``, ``recover``, ``schedules``, ...), never with
SQL: only this package imports a database driver or holds SQL
(tests/test_layers.py keeps it so). ``protocol`` names the operations
(``JobStore``, ``StoreTransaction``): the seam each backend plugs into.

Shared by the backends: ``ops`` (the queued writes, named once),
``groupcommit`` (the writer task, its batches and health), ``queued`` (the
queued operations), ``adds`` (ids and unique keys of a batch of adds; moves of
counts), ``queries`` (statements both dialects read alike), ``rows`` (rows
in and out), ``window`` (a pool's waiting jobs in run order), ``stats``
(statistics in constant time), ``shielded`` (what a cancel must not cut short).

The SQLite store (``sqlite``, the embedded default): ``store`` (the
``Store``), ``writer`` (its batches), ``batch`` (what one batch does, and its
failures), ``connection`` (a write transaction), ``schema`` (versions,
migrations), ``sql`` (every statement), ``counts`` (jobs by pool and status),
``checkpoint`` (the WAL's). The PostgreSQL store (``postgres``, asyncpg): its
own notes.

Design notes:

1. **Group commit.** Writes are queued as operations; one writer task takes
   everything queued and applies it in one transaction, in one trip to
   aiosqlite's connection thread (``Connection._execute`` runs a function there;
   aiosqlite is pinned below its next minor for that reason). While one batch
   is being written, the next one gathers, so many concurrent ``add`` calls
   share one commit.
2. **Ids.** Job ids come from SQLite's AUTOINCREMENT sequence, read and advanced
   inside the write transaction, so ids strictly increase across processes and
   are never reused, even after rows are deleted, or after a transaction of
   the application that was handed them rolls back (the sequence is moved past
   them then: ``sqlite.Store._keep_issued``). An explicit id (a task's
   ``next_id`` hook) must be above the sequence.
3. **Progress is state.** Progress updates are coalesced per job in memory and
   written with the next batch (at most ``progress_interval`` later); terminal
   writes are never coalesced, and progress writes only touch RUNNING rows so a
   late flush cannot undo a final state.
4. **Transitions.** Every status update names the statuses it may come from
   (``models.TRANSITIONS``) in its WHERE clause; the store refuses any other.
5. **Durability.** WAL journal. ``synchronous="normal"`` survives a process
   crash (a power loss may lose the last commits); ``"full"`` survives power loss.
7. **Few statements, grouped.** An attempt's record is written once, when it
   ends (a running attempt is known from memory, and recovery records the
   attempts a crash interrupted), and a success not at all: the job's row,
   SUCCESS with its attempts, start and end, is that attempt's record, which
   ``attempts`` reads beside the rows of the others (``queries.SQL_ATTEMPTS``;
   the row an earlier release wrote is not given twice). That is a statement
   a job fewer: a no-op drain on SQLite ran 11–20 % faster
   (docs/performance.md). Lifecycle statements of many jobs are grouped
   into ``executemany`` calls (``_run_statements``).
8. **Indexes** are the write rate's main cost: there is one on status (the
   queue, recovery, status filters), partial ones for what is rare (live
   unique keys, finished rows for cleanup and statistics, rows other
   processes changed) and for the waiting window (note 13), and none on
   pool or task otherwise; a listing filtered by those scans newest-first by
   id, which stays fast for 100,000 jobs (see tests/test_dashboard.py).
6. **Reads** use a second connection (WAL readers never block the writer), except
   for ``:memory:`` databases, which exist per connection.
9. **A failed write is kept, never dropped.** When the database takes no
   writes for now (disk full, locked past the busy timeout, an I/O error:
   ``_TRANSIENT_CODES``), the batch's state changes stay queued, first in the
   next batch, and are written again with backoff (20 ms doubling to 1 s)
   until they commit; their futures resolve only then. Adds in that batch are
   refused at once with ``StoreUnavailable`` (nothing acknowledged is lost, and
   the caller may try again), and so are adds made while the kept writes wait
   out their backoff (queued, they waited up to a second to be refused). ``health()`` says so meanwhile; the first commit
   after the outage logs its length and checkpoints the WAL. An outage that kept
   nothing (it refused adds alone) is ended by a probe: with nothing queued, a
   write of one row of ``meta`` (``BatchWriter.probe``) is tried with the same
   backoff, so that ``health()`` does not say *failing* until the next write. Terminal writes
   are idempotent (note 4), so writing one again is safe. Closing keeps trying
   for ``patience`` seconds, then logs what it gives up.
10. **One bad write fails alone.** Any other failure of a batch is the fault of
    one of its parts: the batch is written again with each part (an add, a
    statement, a progress row) under its own savepoint. A refused add fails
    its own caller; a refused statement is logged and handed to
    ``on_rejected``; everything else commits. Values are checked before they
    are queued (``taskrt.limits``), so this is the last line, not the first.
11. **The schema has a version.** ``PRAGMA user_version`` records it; opening
    a file runs the migrations from its version to ``SCHEMA_VERSION`` in one
    transaction (``_migrate``; a file of the first release has version 0) and
    refuses a file of a newer release with ``SchemaTooNew``, touching nothing.
    A version is trusted only in a file with taskrt's tables (``schema.version_of``):
    another application's file that records one is refused before anything is
    written into its tables (``taskrt migrate`` leaves it as it was, byte for byte).
    A change of the tables is a new entry in ``MIGRATIONS``, never an edit of
    an old one.
12. **Counts without a trigger.** ``job_counts`` (schema version 5) holds the
    jobs of each pool in each status, so counting is a lookup at ten million
    rows. Every write that adds, deletes or moves a job changes it in the same
    transaction, with statements the store issues (a trigger on jobs halved
    the start+finish rate): a batch tallies what its writes really changed
    and adds it with a few UPSERTs at its end; immediate operations tally the
    rows they are about to change over the same WHERE clause; ``counts`` says
    how a wrong belief of the caller stays exact. Each such write reads the
    small table back in its transaction for the owner's ``counted()``.
13. **The waiting window.** The runtime holds a bounded window of each pool's
    waiting jobs and refills it with ``ready_jobs``/``delayed_jobs``, which
    walk the partial index ``jobs_waiting`` (pool, priority, run_at, id) one
    priority level at a time (``window``): their cost is the rows they return
    and the levels they cross, not the jobs stored.
14. **Checkpoints off the writer's path.** A thread with a connection of its
    own checkpoints the WAL, PASSIVE, a few times a second while there are
    commits (``sqlite/checkpoint.py``), so no write batch pays for copying the
    pages of the others; the writer's own checkpoint stays as a bound, at ten
    times SQLite's default (``wal_autocheckpoint = 10000`` pages). After a
    checkpoint that copied the whole log, the thread also makes the commit that
    starts the log over (one row of ``meta``), which syncs the log's header:
    that sync fell on the writer's next commit, the tail of add → start latency.
15. **Small commits without a trip.** A trip to the connection's thread and
    back costs more than committing a small batch (two thread wake-ups, each
    slower than the commit on a busy machine), and the caller waits for it:
    an add, a job's start (its attempt is charged before its handler runs).
    So a batch of at most ``INLINE_ROWS`` rows carrying at most
    ``INLINE_BYTES`` of text commits on the event loop's own thread
    (``sqlite/writer.py``) when nothing there can wait: WAL with
    ``synchronous`` ``"normal"`` or ``"off"`` (no fsync at commit), a file
    (not ``:memory:``, whose one connection also reads), and a log the
    checkpoint thread reports well below the writer's own checkpoint (so the
    commit copies no pages). It begins with a busy timeout of 0: if another
    process holds the write lock, it is rolled back at once and the batch
    goes to the connection's thread, which waits for the lock as before.
    Every other batch (large ones, ``synchronous="full"``, a batch written
    part by part) takes the thread. Both paths run under the writes lock, so
    the connection is never used by two threads at once.
16. **Starts first.** A job's handler runs once its start (RUNNING, the
    attempt charged) is committed, and jobs that end together start their
    next ones together: in one batch, the starts would wait for the ends,
    attempt records and adds queued beside them. So the group commit keeps a
    batch's starts apart (``groupcommit.Batch.starts``: each of a job with no
    earlier write in the batch, so no job's writes change order) and, where
    the backend says it pays (``BatchWriter.starts_apart``: SQLite while it
    commits small batches on the loop's thread), commits them first, in a
    transaction of their own, then the rest, marked ``behind``, which SQLite
    writes in the connection's thread while the started handlers run. Unless
    they come back at once: when writes are queued within two turns of the
    loop after the starts commit (handlers that do nothing, the runners'
    ends and next starts), the rest goes first in their batch and commits
    with it, on the loop's thread (``Batch.join``): one commit instead of a
    trip to the thread that the next starts would wait for (no-op jobs at
    concurrency 10 drain about 30 % faster; jobs that sleep keep the thread).
    A rest waits this way once. So a
    start's commit no longer says that writes queued before it for other
    jobs are committed (``flush`` still does), except the ends of runs
    (``ops.ENDING``: a success, a failure, a cancel, a requeue): a batch
    that holds one commits its starts with the rest, in one transaction.
    A start committed before the end of the job whose slot it took let a
    handler that kills its process at once (a poison pill) leave that job
    RUNNING in the file: each restart ran it again and charged it a
    recovery, until it failed as orphaned with the pill. (The ends ride in
    most batches of a drain that starts jobs; measured beside the split:
    no change to drains, the sleepers or add → start latency within the
    noise.) Each start has a future of its
    own, which its runner awaits as it is: resolved at the commit, it wakes
    the runner in the next turn of the loop, and a cancel of one runner
    cancels its own wait, never the others' (a future the batch shared had
    to be awaited behind ``asyncio.shield``, which woke the runner a turn
    later). A batch kept after a failure
    (note 9) keeps every write in order, starts included, in one
    transaction. PostgreSQL commits them together: a second transaction is
    a second round trip.
17. **Rows from JSON.** ``executemany`` costs about 2.5 µs a row in Python's
    ``sqlite3`` before SQLite does any work (binding each parameter, a step
    and a reset per row), as much as the row's B-tree writes. The jobs of an
    ``add_many`` share every column but their ids and arguments, so a run of
    such rows (``sqlite/batch.py``: ids that follow each other, the same
    task, pool and options) is one ``INSERT ... SELECT`` over ``json_each``
    of their ``[args, kwargs]`` texts, with the shared columns bound once:
    about 2× the rows a second of ``executemany``. Only text travels in the
    JSON (SQLite's own reading of a number need not give back the same
    float), and a run ends at about 16 MB of arguments.
18. **The window's reads on the loop's thread.** A refill of the waiting
    window (note 13) reads on the event loop's own thread, on a connection
    of its own that only reads and never waits for a lock
    (``window_query``: ``busy_timeout`` 0, ``query_only``). Read in the
    reader's thread, as every other read is, a chunk of the window ran
    beside the writer's statements on the loop's thread, and the two
    threads passed the interpreter's lock to each other at every step of
    SQLite: the writer's statements took half as long again while a window
    was read. The read costs the loop about 8 µs a row this way, so a
    chunk is 100 rows (``taskrt.waiting`` note 6), and the loop is left
    between two chunks. A read that would have to wait (another connection's lock, an
    outage) goes to the reader's thread as before; ``:memory:``, whose one
    connection also writes, always does.
19. **A settled store answers at once.** ``flush`` and ``settle`` (which
    the reads that overlay memory call first: ``rt.stats()``, counts,
    attempts, listings) queue nothing when everything queued is already
    committed: the writer task waits with no write in hand, nothing is
    queued, no coalesced progress waits for its turn and no transaction
    holds the writes lock (``groupcommit.GroupCommit._settled``). Before,
    each queued an empty batch and waited for the writer's turn: two turns
    of the event loop and, on SQLite, a transaction of no rows, which cost
    milliseconds where the loop was busy (``rt.stats()`` while a restarted
    runtime read its first windows: 8.8–11.5 ms).
20. **A start that changed no row says so.** A start is written as
    "WAITING to RUNNING", guarded by the status it leaves. Where another
    process changed the job first (a cancel made by a process that could not
    reach the owner, ``cancel_external``, lands before the owner's poll reads
    it), the start changes nothing, and the owner must not run the handler
    of a job the store holds as cancelled. So the writer tells which starts
    of the committed batch changed no row (``Batch.unstarted``: SQLite finds
    them when it writes the batch again row by row, counts note 1;
    PostgreSQL's statement returns them), and the group commit hands them to
    ``on_unstarted`` before it resolves the batch's futures, so the runner
    that waits for its start knows before it goes on (``taskrt.pool`` note 5).
21. **A cancel asked for while a job ran is for the job, not the attempt.**
    A process that cannot reach the owner marks the RUNNING row
    (``cancel_requested``); the owner acts on it at its next poll. If the
    attempt failed and was put back to WAITING for a retry first, the mark
    stays on the WAITING row (``requeue`` from RUNNING keeps it) and the poll
    cancels the waiting job (or, if the owner stopped first, the next owner's
    ``recover``; where every node claims, no claim takes it and a node's look
    ends it: ``taskrt.nodes`` note 7). A retry asked for by hand (``requeue`` from
    FAILURE or CANCELLED, ``retry_external``, a dependent blocked again) is a
    new request made after the cancel, so those writes clear the mark: a
    mark left on a finished row never cancels a later retry.
22. **An orphan's ``on_failed`` commits with its failure.** A recovery (or,
    where every node claims, a reap) fails a job left RUNNING
    ``max_recoveries`` times in its own statements, except the orphans of
    tasks whose ``on_failed`` hook this process holds (``failed_hooks``):
    those stay RUNNING (on PostgreSQL, moved to the recovering node, so that
    no other node's reap takes them and the failure passes the fence), their
    interrupted attempt recorded, and go to ``on_orphans``. The runtime
    fails each as any failure with a hook: the FAILURE row and the hook's
    writes in one transaction. A process that dies before that commit
    leaves the job RUNNING, so the next recovery finds the orphan again and
    the hook runs again: never a failure without its hook, as for a failure
    of a running attempt. A node that stops cleanly (``leave``) keeps the
    orphans of its cut-short claims the same way, on itself: its row is gone,
    so if it dies before failing them, any node's next look for jobs of no
    live node (``taskrt.nodes`` note 8) takes them over and fails them. A
    node's reap (or leave) fails no orphan of a task the node does not
    register (``PgStore.registered``): it may have a hook in other nodes'
    code. Such an orphan stays RUNNING where it is, on a node gone, its
    attempt recorded as interrupted once (``sql.UNPARKED``: later looks
    record nothing again and move its sequence past no gap again), for the
    look of a node that registers the task.
23. **The task of an open transaction reads what is committed.** On SQLite
    an application transaction (``transaction``) holds the writes lock for
    its block, and the group commit knows the task that opened it
    (``GroupCommit.holder``). A read in that task that overlays memory
    (``rt.jobs()``, counts, ``rt.stats()``, attempts) would settle first:
    wait for the queued writes, which wait for the block, which waits for the
    read. So ``settle`` returns at once there: the read sees what is
    committed, as every other task does; the block's own writes are not
    committed yet. A write of its own in that task would wait the same way,
    so the runtime refuses it (``taskrt.transaction`` note 1).
24. **A cancel leaves no transaction open.** A statement handed to the
    driver runs whatever happens to the task that handed it: aiosqlite's
    thread runs what it was given, and a statement on its way reaches the
    server. So a task cancelled in a transaction of the store's
    (``transaction``: an ``rt.transaction()`` block under a timeout, an HTTP
    request, a take-over, a schedule's writes) waits for its BEGIN, COMMIT
    or ROLLBACK under way to end (``shielded.to_the_end``), the transaction
    is rolled back unless its block ended and its COMMIT was on its way,
    and only then does the cancel go on, with the writes lock given back
    (SQLite) or the connection back in the pool outside any transaction,
    its session reset (PostgreSQL). Before, on SQLite, a BEGIN that ran
    after its caller was cancelled stayed open: every later batch failed
    ("cannot start a transaction within a transaction"), and a stop gave up
    on the jobs' final states.
"""

from .protocol import (
    InsertResult,
    JobStore,
    MinuteRow,
    NewJob,
    OwnerRecord,
    Progress,
    StoreTransaction,
)
from .sqlite import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Connection,
    FileLook,
    Store,
    Synchronous,
    check_path,
    dumps,
    look,
    path_problem,
)

SERVER_SCHEMES = ("postgresql", "postgres")
"""URL schemes of a database server (``Runtime("postgresql://...")``): the PostgreSQL store."""


def is_server_url(target: str) -> bool:
    """True when ``target`` names a PostgreSQL server rather than a SQLite file."""
    scheme, sep, _ = target.partition("://")
    return bool(sep) and scheme.lower() in SERVER_SCHEMES


__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SERVER_SCHEMES",
    "Connection",
    "FileLook",
    "InsertResult",
    "JobStore",
    "MinuteRow",
    "NewJob",
    "OwnerRecord",
    "Progress",
    "Store",
    "StoreTransaction",
    "Synchronous",
    "check_path",
    "dumps",
    "is_server_url",
    "look",
    "path_problem",
]
