"""OpenTelemetry tracing (the optional ``otel`` extra): a span around each add
and each attempt, the attempt's span continuing the trace of the add.

Opt in with ``Runtime(..., tracing=True)`` or ``instrument(rt)``; without it the
runtime pays one ``is None`` check per add and per attempt, and this module
never imports OpenTelemetry.

Design notes (cited where they apply, pinned by tests/test_tracing.py):

1. **Generic hooks, one user.** The runtime knows nothing of OpenTelemetry: it
   has an optional ``rt.instrumentation`` (``Instrumentation`` below) that
   ``_add`` hands the add to, and that the pool wraps around each handler
   call. ``Tracing`` is that object for OpenTelemetry.
2. **The trace travels in the job.** ``add`` runs in a ``taskrt.add <task>``
   span (kind PRODUCER) and stores that span's W3C trace context
   (``traceparent``, and ``tracestate`` when there is one) in the job's
   metadata under ``_trace``. It is durable like the rest of the job, so an
   attempt run by another process, after a restart or a retry days later,
   still joins the trace of the request that added the job.
3. **An attempt is a child of the add, never of whatever ran before.** The
   attempt span (``taskrt.run <task>``, kind CONSUMER) takes its parent from
   ``_trace`` only, extracted into an empty context; a job without ``_trace``
   (added before tracing was on, or by an untraced process) starts a trace of
   its own. (The worker task's ambient context belongs to whichever job or
   request created it.)
4. **Outcomes, not just exceptions.** The attempt span gets
   ``taskrt.outcome`` (success, error, timeout, cancelled, interrupted) and
   status ERROR for error and timeout; a timeout or a cancel arrives as a
   ``CancelledError``, which is not recorded as the handler's exception. A
   result that cannot be stored fails the attempt: the pool encodes it inside
   the span (``taskrt.pool`` note 11), so its ``SerializationError`` is the
   span's error.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from .errors import InvalidOption, Retry, message_of
from .pool import Calls, Instrumentation

if TYPE_CHECKING:
    from .context import JobState
    from .definitions import TaskCall, TaskRef
    from .pool import Pool
    from .transaction import Transaction

TRACE_KEY = "_trace"
INSTRUMENTATION_NAME = "taskrt"

AddJobs = Callable[..., Awaitable[list[int]]]


class Traced(Protocol):
    """What tracing needs of a runtime: where its instrumentation goes, and tasks."""

    instrumentation: Instrumentation | None

    def resolve(self, task: TaskRef) -> TaskCall: ...


class Tracing:
    """``rt.instrumentation`` for OpenTelemetry (notes 2-4)."""

    def __init__(self, rt: Traced, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import propagate, trace
            from opentelemetry.context import Context
            from opentelemetry.trace import SpanKind, Status, StatusCode
        except ImportError:
            raise InvalidOption(
                "tracing", "needs OpenTelemetry: pip install 'taskrt[otel]'"
            ) from None
        from . import __version__

        self.rt = rt
        self.tracer = trace.get_tracer(
            INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider
        )
        self._propagate = propagate
        self._empty = Context
        self._kind = SpanKind
        self._status = Status
        self._code = StatusCode

    async def add(
        self,
        proceed: AddJobs,
        pool: Pool,
        task: TaskRef,
        calls: Calls,
        *,
        tx: Transaction | Any,
    ) -> list[int]:
        from .definitions import TaskCall

        call = self.rt.resolve(task)
        spec, opts = call.spec, call.opts
        attributes: dict[str, Any] = {
            "taskrt.task": spec.name,
            "taskrt.pool": pool.name,
            "messaging.system": "taskrt",
            "messaging.operation.type": "send",
            "messaging.destination.name": pool.name,
            "messaging.batch.message_count": len(calls),
        }
        with self.tracer.start_as_current_span(
            f"taskrt.add {spec.name}", kind=self._kind.PRODUCER, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            self._propagate.inject(carrier)
            if carrier:  # note 2
                metadata = {**(opts.metadata or {}), TRACE_KEY: carrier}
                task = TaskCall(spec, dataclasses.replace(opts, metadata=metadata))
            ids = await proceed(pool, task, calls, tx=tx)
            if len(ids) == 1:
                span.set_attribute("taskrt.job.id", ids[0])
            elif ids:
                span.set_attribute("taskrt.job.ids", ids)
            return ids

    @contextlib.contextmanager
    def attempt(self, state: JobState) -> Iterator[None]:
        carrier = state.metadata.get(TRACE_KEY) if isinstance(state.metadata, dict) else None
        parent = self._propagate.extract(
            carrier if isinstance(carrier, dict) else {}, context=self._empty()
        )  # note 3
        attributes: dict[str, Any] = {
            "taskrt.job.id": state.id,
            "taskrt.task": state.task,
            "taskrt.pool": state.pool,
            "taskrt.attempt": state.attempts,
            "messaging.system": "taskrt",
            "messaging.operation.type": "process",
            "messaging.destination.name": state.pool,
            "messaging.message.id": str(state.id),
        }
        if state.max_attempts is not None:
            attributes["taskrt.max_attempts"] = state.max_attempts
        with self.tracer.start_as_current_span(
            f"taskrt.run {state.task}",
            context=parent,
            kind=self._kind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            outcome = "success"
            try:
                yield
            except BaseException as exc:
                retry = exc if isinstance(exc, Retry) else None  # the handler's own retry
                outcome = _interrupted(state) or ("error" if retry is None else "retry")
                # A retry is an error unless the handler said not to record one.
                if outcome == "error" or (outcome == "retry" and retry and retry.record_error):
                    span.record_exception(exc)
                    span.set_status(self._status(self._code.ERROR, _describe(exc)))
                raise
            else:
                outcome = _interrupted(state) or "success"
            finally:
                if outcome == "timeout":
                    span.set_status(self._status(self._code.ERROR, "timed out"))
                span.set_attribute("taskrt.outcome", outcome)


def _interrupted(state: JobState) -> str | None:
    """What stopped the attempt, if not the handler itself (note 4)."""
    if state.timed_out:
        return "timeout"
    if state.cancel_requested:
        return "cancelled"
    if state.shutdown:
        return "interrupted"
    return None


def _describe(exc: BaseException) -> str:
    text = message_of(exc)  # never raising (pool note 12)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def instrument(rt: Traced, *, tracer_provider: Any = None) -> Tracing:
    """Turn tracing on for ``rt`` (the global tracer provider unless one is given).

    Raises ``InvalidOption`` when OpenTelemetry is not installed, or when ``rt``
    already has another instrumentation.
    """
    current = rt.instrumentation
    if current is not None and not isinstance(current, Tracing):
        raise InvalidOption("tracing", f"the runtime is already instrumented by {current!r}")
    tracing = Tracing(rt, tracer_provider)
    rt.instrumentation = tracing
    return tracing


def uninstrument(rt: Traced) -> None:
    """Turn tracing off for ``rt``."""
    if isinstance(rt.instrumentation, Tracing):
        rt.instrumentation = None


__all__ = ["TRACE_KEY", "Instrumentation", "Tracing", "instrument", "uninstrument"]
