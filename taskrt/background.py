"""Work beside the jobs: user hooks, background tasks, the job's logger, and how the
runtime's loops wait.

A hook (``on_add``, ``on_success``, ``on_error``, ``on_progress``) that raises
is logged with the job's fields and changes nothing; an async hook runs as a
background task, and the runtime waits for those (within its grace) at stop.
Whatever a hook raises is its failure, as whatever a handler raises is its
attempt's (``taskrt.pool`` note 12): SystemExit, KeyboardInterrupt,
GeneratorExit and a CancelledError of its own included (``hook_failed``). Only
a cancel of the task it runs in (``hook_timeout``, the tasks cancelled once the
runtime stopped) goes on as a cancel.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from .context import JobState
from .models import JobInfo

log = logging.getLogger("taskrt")


async def woken(wake: asyncio.Event, seconds: float) -> None:
    """Wait until ``wake`` is set or ``seconds`` have passed, then clear it.

    Every loop of the runtime that is woken or polls (the owner's poll, a node's
    look, dependencies, batches) waits here. ``asyncio.timeout``, not
    ``wait_for``: on Python 3.11, ``wait_for`` swallows a cancel that comes as
    the wait ends, and the loop it was meant to stop runs on (a stop that hung).
    """
    try:
        async with asyncio.timeout(seconds):
            await wake.wait()
    except TimeoutError:
        pass
    wake.clear()


def hook_failed(exc: BaseException) -> bool:
    """Whether ``exc``, raised where a user hook ran, is the hook's failure (see the
    module notes): any ``BaseException``, but a CancelledError while the current task
    is being cancelled, which is that cancel's and must go on. A hook's own
    CancelledError (raised, or from a future cancelled elsewhere) finds no cancel
    asked of its task."""
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        return task is None or task.cancelling() == 0
    return True


class JobLogAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Puts job id, task and attempt on every record (``record.job_id`` ...)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return msg, kwargs


def job_logger(info: JobInfo | JobState) -> JobLogAdapter:
    return JobLogAdapter(
        log, {"job_id": info.id, "task": info.task, "pool": info.pool, "attempt": info.attempts}
    )


class Background:
    """The runtime's background tasks, and the running of user hooks."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def hook(self, hook: Callable[..., Any], *args: Any, job: JobState | None = None) -> None:
        """Run a user hook; one that raises is logged (with ``job``'s fields) and changes nothing."""
        logger = log if job is None else job_logger(job)
        try:
            result = hook(*args)
        except BaseException:  # whatever a hook raises (module notes); a call awaits no cancel
            logger.exception("hook %s raised", getattr(hook, "__qualname__", hook))
            return
        if inspect.isawaitable(result):
            self.spawn(_guard(result, hook, logger))

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 - a grace period, not a deadline
        """Let the background tasks finish, for at most ``timeout`` seconds."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)


async def _guard(awaitable: Any, hook: Any, logger: logging.Logger | JobLogAdapter = log) -> None:
    try:
        await awaitable
    except BaseException as exc:  # whatever the hook raises, but a cancel of this task
        if not hook_failed(exc):
            raise
        logger.exception("hook %s raised", getattr(hook, "__qualname__", hook))
