"""Settling dependencies in PostgreSQL, in one transaction (``store.deps``).

Two processes may settle the same parent at once: closing its open rows is
the guard (the second ``UPDATE`` waits for the first and then finds them
closed), and a dependent's count is one row, updated under its lock.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from ..deps import (
    SQL_ARGS_OF,
    SQL_CANCEL_CHILD,
    SQL_CLOSE_ALL,
    SQL_RELEASE,
    SQL_RESULTS_OF,
    SQL_WAIT_COUNT,
    SQL_WAIT_DONE,
    cancelled,
    closed_by_child,
    decide,
    with_inputs,
)
from ..protocol import CancelledChild, Settled
from .sql import SQL_CLOSE_OF, SQL_STATUS_OF, numbered
from .writer import Tally

_CLOSE_ALL = numbered(SQL_CLOSE_ALL)
_WAIT_COUNT = numbered(SQL_WAIT_COUNT)
_WAIT_DONE = numbered(SQL_WAIT_DONE)
_CANCEL_CHILD = numbered(SQL_CANCEL_CHILD)
_ARGS_OF = numbered(SQL_ARGS_OF)
_RESULTS_OF = numbered(SQL_RESULTS_OF)
_RELEASE = numbered(SQL_RELEASE)


async def settle(
    conn: asyncpg.Connection, parents: Sequence[int] | None, now: float, tally: Tally
) -> Settled:
    """``JobStore.settle_deps`` inside the caller's transaction."""
    if parents is None:
        rows = await conn.fetch(_CLOSE_ALL)
    else:
        rows = await conn.fetch(SQL_CLOSE_OF, list(parents))
    closed = [(int(c), int(p)) for c, p in rows]
    if not closed:
        return Settled()
    named = sorted({p for _, p in closed})
    statuses = {int(i): str(s) for i, s in await conn.fetch(SQL_STATUS_OF, named)}
    released: list[tuple[int, str]] = []
    cancels: list[CancelledChild] = []
    for child, (n, failed, how) in sorted(closed_by_child(closed, statuses).items()):
        row = await conn.fetchrow(_WAIT_COUNT, n, failed, how, child)
        if row is None:
            continue
        decision = decide(child, tuple(row), now)
        if decision is None:
            continue
        await conn.execute(_WAIT_DONE, child)
        if not decision.release:
            done = await conn.fetchrow(_CANCEL_CHILD, now, decision.error, child)
            if done is not None:
                tally.move(str(done[1]), "WAITING", "CANCELLED")
                cancels.append(cancelled(child, tuple(done), now, decision.error))
            continue
        args = await conn.fetchval(_ARGS_OF, child)
        if args is None:
            continue  # no longer blocked (cancelled meanwhile)
        results: list[str | None] = []
        if decision.inputs is not None:
            results = [r[0] for r in await conn.fetch(_RESULTS_OF, child)]
        new_args = with_inputs(str(args), decision.inputs, results)
        pool = await conn.fetchval(_RELEASE, new_args, decision.run_at, child)
        if pool is not None:
            released.append((child, str(pool)))
    return Settled(tuple(released), tuple(cancels))
