"""What a cancel must not cut short: a transaction's BEGIN, COMMIT and ROLLBACK (``taskrt.store`` note 24).

``to_the_end(aw)`` runs ``aw`` in a task of its own and waits for its end
however often the caller is cancelled meanwhile; then the cancel goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("taskrt.store")
T = TypeVar("T")


async def to_the_end(aw: Coroutine[Any, Any, T]) -> T:
    """``aw``'s result once it has ended, even if the caller was cancelled meanwhile.

    A statement handed to a driver runs whatever happens to the task that
    handed it (aiosqlite's thread runs what it was given; a statement on its
    way to the server arrives): a caller cancelled at that moment must not
    go on as if it had not run. Here the caller waits for it (a second
    cancel too), and then the first cancel is raised; ``aw``'s own error, if
    any, gives way to it (logged at debug level).
    """
    running = asyncio.ensure_future(aw)
    cancel: asyncio.CancelledError | None = None
    while not running.done():
        try:
            await asyncio.wait([running])
        except asyncio.CancelledError as exc:
            cancel = cancel or exc
    if cancel is not None:
        error = None if running.cancelled() else running.exception()
        if error is not None:
            log.debug("what a cancelled task waited for failed: %r", error)
        raise cancel
    return running.result()
