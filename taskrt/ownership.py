"""Who may run jobs on a database, and how that is known: the ownership seam.

Exactly one runtime may run a database's jobs (two would run the same jobs).
``Ownership`` is what the runtime asks of whatever decides that: take it at
start (or learn that another live process has it), keep it while running, hear
when it is lost, give it up at stop. Today's implementation is a lease, a row
with an expiry renewed every ``ttl / 3`` seconds (``LeaseOwnership``); the
several-processes issue adds an OS file lock, PostgreSQL per-node heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from .errors import OwnershipError, TaskrtError
from .store import JobStore

log = logging.getLogger("taskrt")


class Ownership(Protocol):
    """What the runtime asks of the one who decides who runs jobs."""

    owner: str
    """This process's name as an owner (host, pid and a random part)."""

    left_behind: bool
    """After ``acquire``: the previous owner died without giving ownership up."""

    async def acquire(self) -> None:
        """Take ownership, or raise ``OwnershipError`` naming the live owner."""
        ...

    def keep(self, on_lost: Callable[[str], None]) -> None:
        """Hold it in the background; ``on_lost(new_owner)`` if another takes it."""
        ...

    async def stop_keeping(self) -> None:
        """Stop holding it in the background (at stop, before the last writes)."""
        ...

    async def release(self) -> None:
        """Stop keeping it and give it up (best effort: it also expires)."""
        ...


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseOwnership:
    """Ownership as a lease row in the store, renewed every ``ttl / 3`` seconds."""

    def __init__(self, store: JobStore, path: str, *, ttl: float) -> None:
        self.store = store
        self.path = path
        self.ttl = ttl
        self.owner = owner_name()
        self.left_behind = False
        self._task: asyncio.Task[None] | None = None

    async def acquire(self) -> None:
        # A lease row left behind means its owner died without stopping cleanly.
        self.left_behind = await self.store.lease_left_behind()
        taken, owner, expires = await self.store.take_lease(self.owner, time.time(), self.ttl)
        if not taken:
            raise OwnershipError(self.path, owner, expires)

    def keep(self, on_lost: Callable[[str], None]) -> None:
        self._task = asyncio.create_task(self._renew(on_lost), name="taskrt-lease")

    async def _renew(self, on_lost: Callable[[str], None]) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                taken, owner, _ = await self.store.take_lease(self.owner, time.time(), self.ttl)
            except TaskrtError:
                log.exception("taskrt: renewing the ownership lease failed")
                continue
            if not taken:
                on_lost(owner)
                return

    async def stop_keeping(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def release(self) -> None:
        await self.stop_keeping()
        await self.store.release_lease(self.owner)
