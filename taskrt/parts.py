"""What the parts of ``Runtime`` share, declared once for the type checker.

``Runtime`` is one class made of parts, one module each: ``adding`` and
``transitions`` are mixins, ``runtime`` the class itself. A part uses state and
methods another part provides; ``RuntimeParts`` declares them (only for the
type checker: at run time it is an empty base class).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .clock import Clock
    from .context import JobState
    from .counters import Counters
    from .definitions import TaskSpec
    from .events import EventBus
    from .limits import Limits
    from .models import JobInfo
    from .pool import Pool
    from .scheduler import Scheduler
    from .store import JobStore
    from .tracing import Instrumentation


class RuntimeParts:
    """The base of ``Runtime``'s parts; see the module docstring."""

    if TYPE_CHECKING:
        store: JobStore
        broker: EventBus
        counters: Counters
        clock: Clock
        workers: bool
        limits: Limits
        abandon_after: float
        instrumentation: Instrumentation | None
        schedules: Scheduler
        _tasks: dict[str, TaskSpec]
        _pools: dict[str, Pool]
        _live: dict[int, JobState]
        _unique: dict[str, int]
        _background: set[asyncio.Task[Any]]
        _loop: asyncio.AbstractEventLoop | None
        _loop_thread: int
        _forgetting: dict[asyncio.Future[None], list[JobState]]

        def pool(
            self, name: str, *, concurrency: int | None = None, capacity: int | None = None
        ) -> Pool: ...

        def _require_started(self, what: str) -> None: ...

        async def get(self, job_id: int) -> JobInfo: ...

        def _hook(self, hook: Any, *args: Any, job: JobState | None = None) -> None: ...
