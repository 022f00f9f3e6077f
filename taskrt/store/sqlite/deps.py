"""Settling dependencies in SQLite, in the writer connection's thread (``store.deps``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ...models import BLOCKED_AT
from ..deps import (
    SQL_ARGS_OF,
    SQL_BATCH_MEMBERS,
    SQL_BLOCK_AGAIN,
    SQL_CANCEL_CHILD,
    SQL_CLOSE_ALL,
    SQL_CLOSE_OF,
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
    SQL_STATUS_OF,
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
    marks,
    refusal,
    retried_meanwhile,
    unripe,
    waits_again_as,
    with_inputs,
)
from ..protocol import BlockedAgain, CancelledChild, Settled
from .counts import Tally

_CHUNK = 500


def settle(
    conn: sqlite3.Connection, parents: Sequence[int] | None, now: float, tally: Tally
) -> Settled:
    """``JobStore.settle_deps`` inside the caller's transaction."""
    closed: list[tuple[int, int]] = []
    if parents is None:
        closed = [(int(c), int(p)) for c, p in conn.execute(SQL_CLOSE_ALL).fetchall()]
    else:
        ids = list(parents)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            rows = conn.execute(SQL_CLOSE_OF.format(marks(len(chunk))), chunk).fetchall()
            closed.extend((int(c), int(p)) for c, p in rows)
    if not closed:
        return Settled()
    statuses: dict[int, str] = {}
    named = sorted({p for _, p in closed})
    for start in range(0, len(named), _CHUNK):
        chunk = named[start : start + _CHUNK]
        for job_id, status in conn.execute(SQL_STATUS_OF.format(marks(len(chunk))), chunk):
            statuses[int(job_id)] = str(status)
    released: list[tuple[int, str]] = []
    cancels: list[CancelledChild] = []
    for child, (n, failed, how) in sorted(closed_by_child(closed, statuses).items()):
        row = conn.execute(SQL_WAIT_COUNT, (n, failed, how, child)).fetchone()
        if row is None:
            continue
        decision = decide(child, row, now)
        if decision is None:
            continue
        ended = "cancelled"  # unless released below (store.deps)
        if decision.kind == "follow":
            leader = conn.execute(SQL_LEADER_END, (child,)).fetchone()
            if leader is not None:
                done = conn.execute(SQL_FOLLOW_END, (*leader, child)).fetchone()
                if done is not None:
                    ended = "followed"  # else cancelled by hand before (store.deps)
                    tally.move(str(done[1]), "WAITING", str(leader[0]))
                    cancels.append(followed(child, done, leader))
        elif decision.kind == "cancel":
            done = conn.execute(SQL_CANCEL_CHILD, (now, decision.error, child)).fetchone()
            if done is not None:
                tally.move(str(done[1]), "WAITING", "CANCELLED")
                cancels.append(cancelled(child, done, now, decision.error))
        elif (args := conn.execute(SQL_ARGS_OF, (child,)).fetchone()) is not None:
            results: list[str | None] = []
            if decision.inputs is not None:
                results = [r[0] for r in conn.execute(SQL_RESULTS_OF, (child,))]
            new_args = with_inputs(str(args[0]), decision.inputs, results)
            done = conn.execute(SQL_RELEASE, (new_args, decision.run_at, child)).fetchone()
            if done is not None:
                ended = "released"
                released.append((child, str(done[0])))
        # (no args: no longer blocked, cancelled meanwhile)
        conn.execute(SQL_WAIT_DONE, (ended, child))
    return Settled(tuple(released), tuple(cancels))


def block_again(
    conn: sqlite3.Connection,
    job_id: int,
    run_at: float,
    max_attempts: int | None,
    tally: Tally,
    external: bool = False,
) -> BlockedAgain | None:
    """``JobStore.block_again`` inside the caller's transaction."""
    how = conn.execute(SQL_HOW_IT_WAITED, (job_id,)).fetchone()
    if how is None:
        return None
    if (now := retried_meanwhile(how)) is not None:
        return BlockedAgain(now=now)  # whether it waits again or runs
    if not blocked_again(how):
        return None
    policy = how[0]
    parents = conn.execute(SQL_PARENTS_NOW, (job_id,)).fetchall()
    refused = refusal(str(policy), parents)
    if refused is not None:
        return BlockedAgain(refused=refused)
    reason = waits_again_as(str(policy))
    row = conn.execute(
        SQL_BLOCK_AGAIN, (reason, BLOCKED_AT, max_attempts, int(external), job_id)
    ).fetchone()
    if row is None:
        return BlockedAgain(now=str(how[2]))  # (its rows are locked: not seen)
    pool, seq, was = str(row[0]), int(row[1]), str(how[2])
    conn.execute(SQL_REOPEN, (job_id,))
    conn.execute(SQL_WAIT_AGAIN, (len(parents), run_at, job_id))
    tally.move(pool, was, "WAITING")
    return BlockedAgain(pool, seq, was, tuple(int(p) for p, _ in parents))


def form_batch(
    conn: sqlite3.Connection,
    task: str,
    key: str,
    limit: int,
    now: float,
    ripe_before: float | None = None,
) -> tuple[int, str, list[int]] | None:
    """``JobStore.form_batch`` inside the caller's transaction."""
    rows = conn.execute(SQL_BATCH_MEMBERS, (task, key, limit)).fetchall()
    if not rows or unripe(rows, limit, ripe_before):
        return None
    leader, pool = int(rows[0][0]), str(rows[0][2])
    conn.execute(SQL_LEAD, (batch_args(rows), now, leader, leader))
    members = [int(r[0]) for r in rows[1:]]
    conn.executemany(SQL_FOLLOW, [(leader, m) for m in members])
    conn.executemany(SQL_DEP, [(m, 0, leader) for m in members])
    conn.executemany(SQL_WAIT, [(m, 1, "follow", None, BLOCKED_AT) for m in members])
    return leader, pool, members
