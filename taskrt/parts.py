"""What the parts of ``Runtime`` share, declared once for the type checker.

``Runtime`` is one class made of parts, one module each: ``adding`` and
``transitions`` are mixins, ``runtime`` the class itself. A part uses state and
methods another part provides; ``RuntimeParts`` declares them (only for the
type checker: at run time it is an empty base class).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .background import Background
    from .clock import Clock
    from .counters import Counters
    from .definitions import TaskSpec
    from .events import EventBus
    from .limits import Limits
    from .live import LiveJobs
    from .models import JobInfo
    from .pool import Pool
    from .scheduler import Scheduler
    from .store import JobStore
    from .tracing import Instrumentation
    from .transitions import Transitions


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
        live: LiveJobs
        background: Background
        transitions: Transitions

        def pool(
            self, name: str, *, concurrency: int | None = None, capacity: int | None = None
        ) -> Pool: ...

        def _require_started(self, what: str) -> None: ...

        async def get(self, job_id: int) -> JobInfo: ...
