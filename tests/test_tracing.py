"""OpenTelemetry: spans around adds and attempts, the trace carried in the job."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is not installed")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from taskrt import AttemptOutcome, InvalidOption, JobContext, Retry, Runtime
from taskrt.tracing import TRACE_KEY, Tracing, instrument, uninstrument


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    yield tp
    tp.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


def traced_runtime(path: Path, provider: TracerProvider, **options: object) -> Runtime:
    rt = Runtime(str(path), **options)  # type: ignore[arg-type]
    instrument(rt, tracer_provider=provider)
    return rt


async def test_the_attempt_continues_the_trace_of_the_request_that_added_the_job(
    db_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    rt = traced_runtime(db_path, provider)
    seen: dict[str, object] = {}

    @rt.task(pool="mail")
    async def send(job: JobContext, to: str) -> str:
        seen["metadata"] = dict(job.metadata)
        return to

    request_tracer = provider.get_tracer("the-web-app")
    async with rt:
        with request_tracer.start_as_current_span("POST /signup") as request:
            job_id = await rt.add(send, to="a@example.com")
        await rt.wait(job_id, timeout=5)
        info = await rt.get(job_id)

    spans = by_name(exporter)
    [add] = spans["taskrt.add send"]
    [run] = spans["taskrt.run send"]
    trace_id = request.get_span_context().trace_id
    assert add.context.trace_id == run.context.trace_id == trace_id
    assert add.parent is not None and add.parent.span_id == request.get_span_context().span_id
    assert run.parent is not None and run.parent.span_id == add.context.span_id
    assert add.kind is SpanKind.PRODUCER and run.kind is SpanKind.CONSUMER
    assert add.attributes is not None and add.attributes["taskrt.job.id"] == job_id
    assert run.attributes is not None
    assert run.attributes["taskrt.job.id"] == job_id
    assert run.attributes["taskrt.attempt"] == 1
    assert run.attributes["taskrt.outcome"] == "success"
    assert run.status.status_code is StatusCode.UNSET
    # The context is stored with the job (durable), in W3C traceparent form.
    carrier = info.metadata[TRACE_KEY]
    assert carrier["traceparent"].startswith(f"00-{trace_id:032x}-{add.context.span_id:016x}-")
    assert seen["metadata"] == info.metadata


async def test_every_attempt_is_a_child_of_the_add_with_its_outcome(
    db_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    rt = traced_runtime(db_path, provider, abandon_after=0.05)

    @rt.task(attempts=3)
    async def flaky(job: JobContext) -> str:
        if job.attempt == 1:
            raise ValueError("first try")
        if job.attempt == 2:
            await asyncio.sleep(5)  # the timeout cancels this
        return "third time"

    async with rt:
        job_id = await rt.add(flaky.options(timeout=0.05))
        info = await rt.wait(job_id, timeout=5)
    assert info.result == "third time"

    [add] = by_name(exporter)["taskrt.add flaky"]
    runs = sorted(by_name(exporter)["taskrt.run flaky"], key=lambda s: s.start_time or 0)
    assert [s.attributes["taskrt.attempt"] for s in runs if s.attributes] == [1, 2, 3]
    assert [s.attributes["taskrt.outcome"] for s in runs if s.attributes] == [
        "error",
        "timeout",
        "success",
    ]
    assert all(s.parent is not None and s.parent.span_id == add.context.span_id for s in runs)
    assert [s.status.status_code for s in runs] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert runs[0].status.description == "ValueError: first try"
    assert [e.name for e in runs[0].events] == ["exception"]
    assert runs[1].events == ()  # a timeout's CancelledError is not the handler's exception


async def test_a_retry_the_handler_asks_for_is_outcome_retry_an_error_only_if_recorded(
    db_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """``Retry(record_error=False)`` tries again without recording an error; its span
    said outcome ``error`` with status ERROR and the exception recorded, where the
    metrics say ``retry``."""
    rt = traced_runtime(db_path, provider)

    @rt.task(attempts=3)
    async def patient(job: JobContext) -> str:
        if job.attempt == 1:
            raise Retry("not yet", delay=0.01, record_error=False)
        if job.attempt == 2:
            raise Retry("still not", delay=0.01)
        return "now"

    async with rt:
        info = await rt.wait(await rt.add(patient), timeout=5)
    assert info.result == "now"
    runs = sorted(by_name(exporter)["taskrt.run patient"], key=lambda s: s.start_time or 0)
    assert [s.attributes["taskrt.outcome"] for s in runs if s.attributes] == [
        "retry",
        "retry",
        "success",
    ]
    assert [s.status.status_code for s in runs] == [
        StatusCode.UNSET,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert [len(s.events) for s in runs] == [0, 1, 0]


async def test_an_attempt_whose_result_cannot_be_stored_is_an_error_in_its_span(
    db_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # Before: the span closed when the handler returned, and the result was refused
    # after: the attempt failed, its span said success.
    rt = traced_runtime(db_path, provider)

    @rt.task(attempts=2, retry=0)
    async def report(job: JobContext) -> object:
        return object() if job.attempt == 1 else {"rows": 3}

    async with rt:
        job_id = await rt.add(report)
        info = await rt.wait(job_id, timeout=5)
        attempts = await rt.attempts(job_id)
    assert info.result == {"rows": 3}  # the second attempt's, stored

    runs = sorted(by_name(exporter)["taskrt.run report"], key=lambda s: s.start_time or 0)
    assert [s.attributes["taskrt.outcome"] for s in runs if s.attributes] == ["error", "success"]
    assert [s.status.status_code for s in runs] == [StatusCode.ERROR, StatusCode.UNSET]
    refused = "the result is not JSON-serialisable: Object of type object is not JSON serializable"
    assert runs[0].status.description == f"SerializationError: {refused}"
    assert [e.name for e in runs[0].events] == ["exception"]
    # The attempt's record is what an untraced runtime keeps: the error, no traceback
    # (the handler raised nothing).
    assert [(a.outcome, a.error, a.traceback) for a in attempts] == [
        (AttemptOutcome.ERROR, refused, None),
        (AttemptOutcome.SUCCESS, None, None),
    ]


async def test_spans_a_handler_makes_are_children_of_its_attempt_even_in_a_thread(
    db_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    rt = traced_runtime(db_path, provider)
    inner = provider.get_tracer("handler")

    @rt.task
    def blocking(job: JobContext) -> None:  # a sync handler: runs in a worker thread
        with inner.start_as_current_span("GET https://example.com"):
            pass

    async with rt:
        await rt.wait(await rt.add(blocking), timeout=5)

    [run] = by_name(exporter)["taskrt.run blocking"]
    [call] = by_name(exporter)["GET https://example.com"]
    assert call.parent is not None and call.parent.span_id == run.context.span_id


async def test_a_job_added_by_another_process_joins_the_adders_trace(
    db_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The client adds through the database; the owner runs it: one trace."""
    owner = traced_runtime(db_path, provider, poll_interval=0.01)
    client = traced_runtime(db_path, provider, workers=False)
    for rt in (owner, client):

        @rt.task(name="work")
        async def work(job: JobContext) -> int:
            return job.id

    async with owner, client:
        job_id = await client.add("work")
        await owner.wait(job_id, timeout=5)

    [add] = by_name(exporter)["taskrt.add work"]
    [run] = by_name(exporter)["taskrt.run work"]
    assert add.parent is None  # no request around it: the add starts the trace
    assert run.context.trace_id == add.context.trace_id
    assert run.parent is not None and run.parent.span_id == add.context.span_id


async def test_jobs_without_a_trace_start_their_own_and_untraced_runtimes_add_nothing(
    db_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    rt = Runtime(str(db_path))

    @rt.task
    async def plain(job: JobContext) -> None:
        return None

    async with rt:
        assert rt.instrumentation is None
        first = await rt.add(plain)
        await rt.wait(first, timeout=5)
        assert TRACE_KEY not in (await rt.get(first)).metadata
        assert exporter.get_finished_spans() == ()

        rt.pool("default").pause()
        waiting = await rt.add(plain)  # added untraced, run traced
        instrument(rt, tracer_provider=provider)
        with provider.get_tracer("x").start_as_current_span("unrelated"):
            rt.pool("default").resume()  # the runner task starts inside this span
        await rt.wait(waiting, timeout=5)
        uninstrument(rt)
        assert rt.instrumentation is None

    [run] = by_name(exporter)["taskrt.run plain"]
    assert run.parent is None  # its own trace, not the span that happened to be current


def test_tracing_is_opt_in_and_needs_opentelemetry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(Runtime(str(tmp_path / "a.db"), tracing=True).instrumentation, Tracing)
    assert Runtime(str(tmp_path / "b.db")).instrumentation is None
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    with pytest.raises(InvalidOption, match=r"pip install 'taskrt\[otel\]'"):
        Runtime(str(tmp_path / "c.db"), tracing=True)
