"""Settling dependencies in PostgreSQL, in one transaction (``store.deps``).

Two processes may settle the same parent at once: closing its open rows is
the guard (the second ``UPDATE`` waits for the first and then finds them
closed), and a dependent's count is one row, updated under its lock. A settle
first locks the ended parents (shared) and closes only those, so a retry of
one by hand elsewhere waits until the settle commits and then finds the
dependents it cancelled (``SQL_LOCK_ENDED_OF``). (Each statement reads what
is committed as it starts: a close that did not go by the locked parents
could close one that ended after the lock looked, unlocked.)
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from ...models import BLOCKED_AT
from ..deps import (
    SQL_ARGS_OF,
    SQL_BATCH_MEMBERS,
    SQL_BLOCK_AGAIN,
    SQL_CANCEL_CHILD,
    SQL_DEP,
    SQL_FOLLOW,
    SQL_FOLLOW_END,
    SQL_HOW_IT_WAITED,
    SQL_LEAD,
    SQL_LEADER_END,
    SQL_PARENTS_NOW,
    SQL_RELEASE,
    SQL_REOPEN,
    SQL_RESULTS_OF,
    SQL_WAIT,
    SQL_WAIT_AGAIN,
    SQL_WAIT_COUNT,
    SQL_WAIT_DONE,
    batch_args,
    blocked_again,
    cancelled,
    closed_by_child,
    decide,
    followed,
    refusal,
    retried_meanwhile,
    unripe,
    waits_again_as,
    with_inputs,
)
from ..protocol import BlockedAgain, CancelledChild, Settled
from .sql import SQL_CLOSE_OF, SQL_LOCK_ENDED_ALL, SQL_LOCK_ENDED_OF, numbered
from .writer import Tally

_WAIT_COUNT = numbered(SQL_WAIT_COUNT)
_WAIT_DONE = numbered(SQL_WAIT_DONE)
_CANCEL_CHILD = numbered(SQL_CANCEL_CHILD)
_ARGS_OF = numbered(SQL_ARGS_OF)
_RESULTS_OF = numbered(SQL_RESULTS_OF)
_RELEASE = numbered(SQL_RELEASE)
_LEADER_END = numbered(SQL_LEADER_END)
_FOLLOW_END = numbered(SQL_FOLLOW_END)
# What its updates take, as a claim (note 7): an add of a dependent
# holds a member ``FOR KEY SHARE``, which ``FOR UPDATE`` would skip.
_BATCH_MEMBERS = numbered(SQL_BATCH_MEMBERS) + " FOR NO KEY UPDATE SKIP LOCKED"
_LEAD = numbered(SQL_LEAD)
_FOLLOW = numbered(SQL_FOLLOW)
_DEP = numbered(SQL_DEP)
_WAIT = numbered(SQL_WAIT)
_HOW_IT_WAITED = numbered(SQL_HOW_IT_WAITED) + " FOR UPDATE"
_PARENTS_NOW = numbered(SQL_PARENTS_NOW) + " FOR UPDATE OF d"
_BLOCK_AGAIN = numbered(SQL_BLOCK_AGAIN)
_REOPEN = numbered(SQL_REOPEN)
_WAIT_AGAIN = numbered(SQL_WAIT_AGAIN)


async def settle(
    conn: asyncpg.Connection, parents: Sequence[int] | None, now: float, tally: Tally
) -> Settled:
    """``JobStore.settle_deps`` inside the caller's transaction."""
    # The ended parents, locked first; only those are closed (module docstring).
    if parents is None:
        locked = [int(r[0]) for r in await conn.fetch(SQL_LOCK_ENDED_ALL)]
    else:
        locked = [int(r[0]) for r in await conn.fetch(SQL_LOCK_ENDED_OF, list(parents))]
    if not locked:
        return Settled()
    rows = await conn.fetch(SQL_CLOSE_OF, locked)
    closed = [(int(c), int(p)) for c, p, _ in rows]
    if not closed:
        return Settled()
    statuses = {int(p): str(s) for _, p, s in rows}  # as the close saw them (sql.py)
    released: list[tuple[int, str]] = []
    cancels: list[CancelledChild] = []
    for child, (n, failed, how) in sorted(closed_by_child(closed, statuses).items()):
        row = await conn.fetchrow(_WAIT_COUNT, n, failed, how, child)
        if row is None:
            continue
        decision = decide(child, tuple(row), now)
        if decision is None:
            continue
        ended = "cancelled"  # unless released below (store.deps)
        if decision.kind == "follow":
            leader = await conn.fetchrow(_LEADER_END, child)
            if leader is not None:
                done = await conn.fetchrow(_FOLLOW_END, *leader, child)
                if done is not None:
                    ended = "followed"  # else cancelled by hand before (store.deps)
                    tally.move(str(done[1]), "WAITING", str(leader[0]))
                    cancels.append(followed(child, tuple(done), tuple(leader)))
        elif decision.kind == "cancel":
            done = await conn.fetchrow(_CANCEL_CHILD, now, decision.error, child)
            if done is not None:
                tally.move(str(done[1]), "WAITING", "CANCELLED")
                cancels.append(cancelled(child, tuple(done), now, decision.error))
        elif (args := await conn.fetchval(_ARGS_OF, child)) is not None:
            results: list[str | None] = []
            if decision.inputs is not None:
                results = [r[0] for r in await conn.fetch(_RESULTS_OF, child)]
            new_args = with_inputs(str(args), decision.inputs, results)
            pool = await conn.fetchval(_RELEASE, new_args, decision.run_at, child)
            if pool is not None:
                ended = "released"
                released.append((child, str(pool)))
        # (no args: no longer blocked, cancelled meanwhile)
        await conn.execute(_WAIT_DONE, ended, child)
    return Settled(tuple(released), tuple(cancels))


async def block_again(
    conn: asyncpg.Connection,
    job_id: int,
    run_at: float,
    max_attempts: int | None,
    tally: Tally,
    external: bool = False,
) -> BlockedAgain | None:
    """``JobStore.block_again`` inside the caller's transaction. Its rows are locked
    in a settle's order (dependencies, how it waits, the job), so that a settle of
    its parents or a second retry waits for it, and never deadlocks with it."""
    parents = [tuple(r) for r in await conn.fetch(_PARENTS_NOW, job_id)]
    how = await conn.fetchrow(_HOW_IT_WAITED, job_id)
    if how is None:
        return None
    if (now := retried_meanwhile(tuple(how))) is not None:
        return BlockedAgain(now=now)  # whether it waits again or runs
    if not blocked_again(tuple(how)):
        return None
    refused = refusal(str(how[0]), parents)
    if refused is not None:
        return BlockedAgain(refused=refused)
    reason = waits_again_as(str(how[0]))
    row = await conn.fetchrow(_BLOCK_AGAIN, reason, BLOCKED_AT, max_attempts, int(external), job_id)
    if row is None:
        return BlockedAgain(now=str(how[2]))  # (its rows are locked: not seen)
    pool, seq, was = str(row[0]), int(row[1]), str(how[2])
    await conn.execute(_REOPEN, job_id)
    await conn.execute(_WAIT_AGAIN, len(parents), run_at, job_id)
    tally.move(pool, was, "WAITING")
    return BlockedAgain(pool, seq, was, tuple(int(p) for p, _ in parents))


async def form_batch(
    conn: asyncpg.Connection,
    task: str,
    key: str,
    limit: int,
    now: float,
    ripe_before: float | None = None,
) -> tuple[int, str, list[int]] | None:
    """``JobStore.form_batch`` inside the caller's transaction; members another
    process is taking (locked) are skipped."""
    rows = await conn.fetch(_BATCH_MEMBERS, task, key, limit)
    if not rows or unripe(rows, limit, ripe_before):
        return None
    leader, pool = int(rows[0][0]), str(rows[0][2])
    await conn.execute(_LEAD, batch_args(rows), now, leader, leader)
    members = [int(r[0]) for r in rows[1:]]
    if members:
        await conn.executemany(_FOLLOW, [(leader, m) for m in members])
        await conn.executemany(_DEP, [(m, 0, leader) for m in members])
        await conn.executemany(_WAIT, [(m, 1, "follow", None, BLOCKED_AT) for m in members])
    return leader, pool, members
