"""Structured logging: records about a job carry its id, task, pool and attempt."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskrt import JobContext, Runtime
from taskrt.logging import JsonFormatter, TextFormatter, configure
from taskrt.runtime import job_logger


def job_records(caplog: pytest.LogCaptureFixture, job_id: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "job_id", None) == job_id]


async def test_retries_failures_and_hook_errors_are_logged_with_the_job(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskrt")
    rt = Runtime(str(db_path))

    def on_success(job_id: int, result: object) -> None:
        raise RuntimeError("hook broke")

    @rt.task(pool="mail", attempts=2)
    async def flaky(job: JobContext) -> None:
        raise ValueError("nope")

    @rt.task(pool="mail", on_success=on_success)
    async def fine(job: JobContext) -> int:
        return 1

    async with rt:
        failed = await rt.add(flaky)
        await rt.wait(failed, timeout=5)
        hooked = await rt.add(fine)
        await rt.wait(hooked, timeout=5)

    retry, failure = job_records(caplog, failed)
    assert (retry.levelname, retry.task, retry.pool, retry.attempt) == (  # type: ignore[attr-defined]
        "INFO",
        "flaky",
        "mail",
        1,
    )
    assert "retrying" in retry.getMessage()
    assert (failure.levelname, failure.attempt) == ("WARNING", 2)  # type: ignore[attr-defined]
    assert failure.getMessage() == f"job {failed} failed: ValueError: nope"
    # The logger's name is said once, by the format, not again by the message.
    assert f" WARNING taskrt: job {failed} failed: " in TextFormatter().format(failure)

    [hook] = job_records(caplog, hooked)
    assert hook.levelname == "ERROR" and hook.exc_info is not None
    assert (hook.task, hook.attempt) == ("fine", 1)  # type: ignore[attr-defined]
    assert "on_success" in hook.getMessage()


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("taskrt", logging.WARNING, __file__, 1, "job %d failed", (7,), None)
    rec.__dict__.update(extra)
    return rec


def test_the_json_formatter_renders_job_fields_extras_and_exceptions() -> None:
    line = JsonFormatter().format(
        record(job_id=7, task="resize", pool="img", attempt=2, request_id="r1")
    )
    data = json.loads(line)
    assert data["message"] == "job 7 failed" and data["level"] == "WARNING"
    assert data["logger"] == "taskrt" and data["time"].endswith("+00:00")
    assert list(data)[4:] == ["job_id", "task", "pool", "attempt", "request_id"]
    assert (data["job_id"], data["task"], data["attempt"]) == (7, "resize", 2)

    try:
        raise ValueError("bad")
    except ValueError:
        rec = record(job_id=7)
        rec.exc_info = sys.exc_info()
    data = json.loads(JsonFormatter().format(rec))
    assert data["exc_info"].startswith("Traceback") and "ValueError: bad" in data["exc_info"]
    assert "\n" not in JsonFormatter().format(rec)  # one line, always


def test_the_text_formatter_appends_job_fields_before_a_traceback() -> None:
    fmt = TextFormatter("%(levelname)s %(message)s")
    assert fmt.format(record(job_id=7, task="resize", attempt=1)) == (
        "WARNING job 7 failed [job_id=7 task=resize attempt=1]"
    )
    assert fmt.format(record()) == "WARNING job 7 failed"


@pytest.fixture
def configured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logger = logging.getLogger("taskrt")
    level, propagate = logger.level, logger.propagate
    configure(format="json", level="INFO", stream=stream)
    yield stream
    for name in ("taskrt", "uvicorn", "uvicorn.error", "uvicorn.access"):
        other = logging.getLogger(name)
        for handler in list(other.handlers):
            if handler.get_name() == "taskrt.logging":
                other.removeHandler(handler)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).propagate = True
    logger.setLevel(level)
    logger.propagate = propagate


async def test_configure_sends_job_records_as_json_lines(
    db_path: Path, configured: io.StringIO
) -> None:
    rt = Runtime(str(db_path))

    @rt.task(attempts=2)
    async def boom(job: JobContext) -> None:
        raise RuntimeError("x")

    async with rt:
        job_id = await rt.add(boom)
        info = await rt.wait(job_id, timeout=5)
        job_logger(info).info("custom %s", "line")
    lines = [json.loads(line) for line in configured.getvalue().splitlines()]
    mine = [line for line in lines if line.get("job_id") == job_id]
    assert [(line["level"], line["attempt"]) for line in mine] == [
        ("INFO", 1),
        ("WARNING", 2),
        ("INFO", 2),
    ]
    assert mine[-1]["message"] == "custom line" and mine[-1]["task"] == "boom"
    # configure() again replaces its handler instead of adding a second one.
    configure(format="json", level="INFO", stream=configured)
    assert sum(h.get_name() == "taskrt.logging" for h in logging.getLogger("taskrt").handlers) == 1
