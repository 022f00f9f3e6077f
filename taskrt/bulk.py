"""Actions on every job a filter matches: cancel, retry, purge (``rt.bulk``).

The filter is the listing's (``rt.jobs``: status, pool, task, metadata) plus
``ids``, ``older_than`` (created that long ago or more) and ``scheduled``
(waiting for a time still to come, not for other jobs). The matching ids are read first (at most
``BULK_LIMIT``), then each job gets the action as ``rt.cancel`` / ``rt.retry``
would give it, skipping those in a status it does not apply to; ``purge``
deletes finished jobs only. A dry run counts and does nothing, which is what
the dashboard shows before it asks for a confirmation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .errors import InvalidOption, InvalidTransition, JobNotFound
from .models import JobInfo

BULK_LIMIT = 100_000
"""Jobs one bulk action may touch; a larger set is refused (narrow the filter)."""
ACTIONS = ("cancel", "retry", "purge")

ListPage = Callable[[int | None, int], Awaitable[list[JobInfo]]]


def check_action(action: Any) -> str:
    if action not in ACTIONS:
        raise InvalidOption("action", f"expected one of {', '.join(ACTIONS)}, found {action!r}")
    return str(action)


async def matching_ids(list_page: ListPage, count: int) -> list[int]:
    """Every id the filter matches (``count`` of them), newest first, by pages of 1,000."""
    if count > BULK_LIMIT:
        raise InvalidOption(
            "filter",
            f"it matches {count} jobs, more than one bulk action takes ({BULK_LIMIT}); "
            "narrow it (status, pool, task, metadata, older_than)",
        )
    ids: list[int] = []
    before: int | None = None
    while True:
        rows = await list_page(before, 1000)
        ids.extend(r.id for r in rows)
        if len(rows) < 1000:
            return ids
        before = rows[-1].id


async def act_on_each(
    ids: Sequence[int], act: Callable[[int], Awaitable[object]]
) -> tuple[int, int]:
    """Apply ``act`` to each id; (done, skipped: not in a status it applies to, or gone)."""
    done = skipped = 0
    for job_id in ids:
        try:
            await act(job_id)
        except (InvalidTransition, JobNotFound):
            skipped += 1
        else:
            done += 1
    return done, skipped


__all__ = ["ACTIONS", "BULK_LIMIT", "act_on_each", "check_action", "matching_ids"]
