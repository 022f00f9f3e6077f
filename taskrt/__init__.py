"""taskrt: an asyncio-native background-task runtime.

Bounded worker pools run jobs under timeouts that really cancel, retry them by
policy, persist every job's state to SQLite, and push progress to subscribers
as it happens. See README.md for a tour.
"""

from .clock import Clock, FakeClock, SystemClock
from .context import JobContext
from .definitions import Batch, Hooks, Signature, Task, TaskCall, TaskSpec
from .errors import (
    DuplicateJob,
    DuplicateJobId,
    Fatal,
    InvalidOption,
    InvalidTransition,
    JobNotFound,
    JobTimeout,
    OwnershipError,
    OwnerUnreachable,
    PoolExists,
    PoolNotFound,
    QueueFull,
    Retry,
    RuntimeNotStarted,
    SchemaTooNew,
    SerializationError,
    StoreError,
    StoreUnavailable,
    TaskNotFound,
    TaskrtError,
    ValidationError,
    WorkflowNotFound,
)
from .limits import Limits
from .models import (
    TERMINAL,
    AttemptInfo,
    AttemptOutcome,
    Event,
    EventType,
    JobInfo,
    JobStatus,
    OwnerStatus,
    Page,
    PoolStatistics,
    Stats,
    StoreHealth,
    WorkflowInfo,
)
from .pool import Pool
from .retry import RetryPolicy, parse_duration, parse_retry
from .runtime import JobStream, Runtime, Transaction
from .schedule import CronError
from .scheduler import (
    ScheduleDefinition,
    ScheduleExists,
    ScheduleInfo,
    ScheduleNotFound,
    Scheduler,
    ScheduleStatistics,
)
from .workflows import Flow, GroupBuilder, WorkflowStream

__version__ = "0.1.0"

__all__ = [
    "TERMINAL",
    "AttemptInfo",
    "AttemptOutcome",
    "Batch",
    "Clock",
    "CronError",
    "DuplicateJob",
    "DuplicateJobId",
    "Event",
    "EventType",
    "FakeClock",
    "Fatal",
    "Flow",
    "GroupBuilder",
    "Hooks",
    "InvalidOption",
    "InvalidTransition",
    "JobContext",
    "JobInfo",
    "JobNotFound",
    "JobStatus",
    "JobStream",
    "JobTimeout",
    "Limits",
    "OwnerStatus",
    "OwnerUnreachable",
    "OwnershipError",
    "Page",
    "Pool",
    "PoolExists",
    "PoolNotFound",
    "PoolStatistics",
    "QueueFull",
    "Retry",
    "RetryPolicy",
    "Runtime",
    "RuntimeNotStarted",
    "ScheduleDefinition",
    "ScheduleExists",
    "ScheduleInfo",
    "ScheduleNotFound",
    "ScheduleStatistics",
    "Scheduler",
    "SchemaTooNew",
    "SerializationError",
    "Signature",
    "Stats",
    "StoreError",
    "StoreHealth",
    "StoreUnavailable",
    "SystemClock",
    "Task",
    "TaskCall",
    "TaskNotFound",
    "TaskSpec",
    "TaskrtError",
    "Transaction",
    "ValidationError",
    "WorkflowInfo",
    "WorkflowNotFound",
    "WorkflowStream",
    "__version__",
    "parse_duration",
    "parse_retry",
]
