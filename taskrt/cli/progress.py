"""One job's live progress in a terminal (``taskrt watch``, ``taskrt add --watch``):
the bar, and the two sources of its events.

The same events come from one of two sources, as plain dicts (``Event.to_dict()``,
which is also the ``data`` of an SSE frame):

- ``server_events``: the ``/jobs/{id}/events`` stream of a running server
  (httpx + httpx-sse);
- ``runtime_events``: a runtime's ``subscribe`` (a client runtime reads the
  database every ``poll_interval`` seconds).

Design notes (cited where they apply):

1. **Resume, don't restart.** A stream that drops before the terminal event is
   reopened with ``Last-Event-ID`` (the ``seq`` of the last event seen); the
   server continues after it, or sends a fresh snapshot when its replay window
   no longer reaches back (``taskrt.web.streams`` note 2). Reconnects wait
   ``retry`` (the server's, 1 s), doubling up to 10 s; ``max_reconnects``
   failures in a row give up. The first connection is not retried: no server
   there is a one-line error (exit 4), not a wait.
2. **A 204 means finished.** A reconnect to a job whose terminal event the
   client has already seen is answered 204 (streams note 3); its final state is
   then read from ``GET /jobs/{id}``.
3. **The bar is redrawn in place** (``\\r`` and erase-to-end-of-line) only on a
   terminal; elsewhere (a pipe, a log file, a test) each change is one line, so
   the output reads top to bottom. ``--json`` prints the events themselves, one
   JSON object a line.
4. **The terminal event carries the final state.** Both sources add ``job``
   (the final ``JobInfo.to_dict()``) to the terminal event when it lacks it,
   as the server does for a finished job's rebuilt event: the summary then
   tells the attempts and duration even when intermediate events were missed
   (a client runtime polls, so it sees states, not every transition).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import JobNotFound
from ..models import JobStatus, percent
from .support import (
    JOB_FAILED,
    NOT_FOUND,
    OK,
    UNAVAILABLE,
    USAGE,
    StreamError,
    one_line,
    printable,
    waiting_note,
)

if TYPE_CHECKING:
    import httpx

    from ..runtime import Runtime

TERMINAL_TYPES = frozenset({"success", "failure", "cancelled"})
MAX_DELAY = 10.0


# -- what the bar shows -------------------------------------------------------------------


@dataclass(slots=True)
class JobView:
    """A job as far as its events tell; ``apply`` folds one event in."""

    id: int
    task: str = ""
    status: str = ""
    current: float = 0
    total: float = 0
    message: str = ""
    step: str | None = None  # the step reported last (progress(..., step=...))
    attempt: int = 0
    result: Any = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    created_at: float | None = None
    first_started_at: float | None = None
    run_at: float | None = None
    seen: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in (JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELLED)

    def apply(self, event: Mapping[str, Any]) -> None:
        self.seen += 1
        kind = event.get("type")
        job = event.get("job")
        if isinstance(job, Mapping):  # a snapshot, or a final event rebuilt from state
            self.task = str(job.get("task") or self.task)
            self.status = str(job.get("status") or self.status)
            self.current = _number(job.get("current"), self.current)
            self.total = _number(job.get("total"), self.total)
            self.message = str(job.get("message") or "")
            self.step = job.get("step") or None
            self.attempt = int(job.get("attempts") or self.attempt)
            self.result = job.get("result")
            self.error = job.get("error")
            self.started_at = job.get("started_at")
            self.finished_at = job.get("finished_at")
            self.created_at = job.get("created_at", self.created_at)
            self.run_at = job.get("run_at", self.run_at)
        self.task = str(event.get("task") or self.task)
        self.status = str(event.get("status") or self.status)
        if kind == "started":
            self.attempt = int(event.get("attempt") or self.attempt + 1)
            self.started_at = _number(event.get("at"), 0.0) or self.started_at
            if self.first_started_at is None:
                self.first_started_at = self.started_at
            self.current, self.total, self.message = 0, 0, ""
            self.step = None
            self.error = None  # the attempt before's error is not this one's
        if kind in ("progress", "success", "failure", "cancelled") or "current" in event:
            self.current = _number(event.get("current"), self.current)
            self.total = _number(event.get("total"), self.total)
            if event.get("message") is not None:
                self.message = str(event["message"])
            if event.get("step") is not None:
                self.step = str(event["step"])
        if kind == "retrying":
            # Why the job waits again, and until when.
            self.error = str(event["error"]) if event.get("error") else self.error
            self.run_at = _number(event.get("run_at"), 0.0) or self.run_at
        if kind == "success":
            self.result = event.get("result", self.result)
            self.error = None
        if kind in ("failure", "cancelled") and event.get("error"):
            self.error = str(event["error"])
        if kind in TERMINAL_TYPES and self.finished_at is None:
            self.finished_at = _number(event.get("at"), 0.0) or None

    @property
    def duration(self) -> float | None:
        """The job's time: from when it was added (else its first start) to its end."""
        begun = self.created_at if self.created_at is not None else self.first_started_at
        if begun is None:
            begun = self.started_at
        if begun is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - begun)

    @property
    def last_attempt(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)


def _number(value: Any, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return default


def bar_line(
    view: JobView,
    *,
    columns: int = 80,
    width: int = 24,
    ascii_only: bool = False,
    now: float | None = None,
) -> str:
    """One line: ``job 7 resize  RUNNING  [█████░░░]  62%  5/8  message``, cut to ``columns``."""
    full, empty = ("#", "-") if ascii_only else ("█", "░")
    share = percent(view.current, view.total)
    if view.status == JobStatus.SUCCESS and share is None:
        share = 100.0
    if share is None:
        bar = "[" + (empty * width) + "]"
        amount = f"{_count(view.current)}" if view.current else ""
        pct = "   ?"
    else:
        filled = round(width * share / 100)
        bar = "[" + full * filled + empty * (width - filled) + "]"
        pct = f"{share:3.0f}%"
        amount = f"{_count(view.current)}/{_count(view.total)}" if view.total else ""
    # A job's texts (its task, message, step, error) one line each, controls escaped.
    parts = [f"job {view.id}", printable(view.task), f"{view.status or '?':<9}", bar, pct]
    if amount:
        parts.append(amount)
    if view.attempt > 1:
        parts.append(f"attempt {view.attempt}")
    note = waiting_note(
        view.status, view.run_at, view.error, view.attempt, time.time() if now is None else now
    )
    if note:
        parts.append(printable(note))  # why it waits: a delay, or a retry and its error
    else:
        if view.step:
            parts.append(f"[{printable(view.step)}]")
        if view.message:
            parts.append(printable(view.message))
    line = "  ".join(p for p in parts if p)
    return line if len(line) < columns else line[: max(columns - 2, 10)] + "…"


def summary_line(view: JobView) -> str:
    """The last line: how the job ended (its texts ``printable``: one line, controls escaped)."""
    took = f" in {view.duration:.2f}s" if view.duration is not None else ""
    if took and view.attempt > 1 and view.last_attempt is not None:
        took += f" ({view.attempt} attempts, the last {view.last_attempt:.2f}s)"
    if view.status == JobStatus.SUCCESS:
        result = json.dumps(view.result, ensure_ascii=False, default=str)
        if len(result) > 200:
            result = result[:199] + "…"
        return f"job {view.id} SUCCESS{took}: {printable(result)}"
    if view.status == JobStatus.FAILURE:
        error = printable(view.error or "failed")
        return f"job {view.id} FAILURE after {view.attempt} attempt(s): {error}"
    if view.status == JobStatus.CANCELLED:
        return f"job {view.id} CANCELLED"
    return f"job {view.id} {view.status}"


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


# -- drawing ------------------------------------------------------------------------------


class Bar:
    """Draws a ``JobView`` on ``out``: in place on a terminal, else a line per change (note 3)."""

    def __init__(self, out: TextIO, *, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        encoding = (getattr(out, "encoding", None) or "").lower().replace("-", "")
        self.ascii_only = encoding not in ("utf8", "utf16", "utf32")
        self._last = ""

    def draw(self, view: JobView) -> None:
        columns = shutil.get_terminal_size((100, 24)).columns if self.tty else 1000
        line = bar_line(view, columns=columns, ascii_only=self.ascii_only)
        if line == self._last:
            return
        self._last = line
        if self.tty:
            self.out.write("\r" + line + "\x1b[K")
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def finish(self, view: JobView) -> None:
        if self.tty and self._last:
            self.out.write("\n")
        self.out.write(summary_line(view) + "\n")
        self.out.flush()


async def follow(
    events: AsyncGenerator[dict[str, Any], None],
    job_id: int,
    *,
    out: TextIO | None = None,
    json_lines: bool = False,
) -> JobView:
    """Draw (or print as JSON lines) every event until the job ends; returns the last view."""
    stream = out or sys.stdout
    view = JobView(job_id)
    bar = None if json_lines else Bar(stream)
    async with contextlib.aclosing(events):
        async for event in events:
            view.apply(event)
            if bar is None:
                stream.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
                stream.flush()
            else:
                bar.draw(view)
            if view.terminal:
                break
    if bar is not None:
        bar.finish(view)
    return view


# -- the sources --------------------------------------------------------------------------


async def runtime_events(rt: Runtime, job_id: int) -> AsyncGenerator[dict[str, Any], None]:
    """A job's events from a (started) runtime: its ``subscribe`` stream."""
    async with rt.subscribe(job_id) as stream:
        async for event in stream:
            data = event.to_dict()
            if event.terminal and "job" not in data:
                data["job"] = (await rt.get(job_id)).to_dict()  # note 4
            yield data


async def server_events(
    base_url: str,
    job_id: int,
    *,
    headers: Mapping[str, str] | None = None,
    max_reconnects: int = 5,
    read_timeout: float = 60.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """A job's events from a server's SSE stream, resumed across dropped connections (note 1)."""
    import httpx
    from httpx_sse import SSEError, aconnect_sse

    url = f"{base_url.rstrip('/')}/jobs/{job_id}/events"
    last_id: str | None = None
    delay = 1.0
    failures = 0
    connected = False
    timeout = httpx.Timeout(10.0, read=read_timeout)
    async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
        while True:
            request_headers = dict(headers or {})
            if last_id is not None:
                request_headers["Last-Event-ID"] = last_id
            try:
                sent = httpx.Headers(request_headers, encoding="utf-8")  # a non-ASCII token
                async with aconnect_sse(client, "GET", url, headers=sent) as source:
                    response = source.response
                    if response.status_code == 204:  # note 2
                        yield await _final_state(client, base_url, job_id, headers)
                        return
                    if response.status_code != 200:
                        await response.aread()
                        retry = _refused(response, job_id)
                        if retry is None:
                            raise StreamError(_http_error(response, url), _status_of(response))
                        delay = retry
                        raise httpx.ReadError(_http_error(response, url))
                    connected = True
                    async with contextlib.aclosing(source.aiter_sse()) as frames:
                        async for sse in frames:
                            if sse.retry is not None:
                                delay = max(sse.retry / 1000, 0.05)
                            if not sse.data:
                                continue
                            event = json.loads(sse.data)
                            if sse.id:
                                last_id = sse.id
                            failures = 0
                            if event.get("type") in TERMINAL_TYPES:
                                if "job" not in event:  # note 4
                                    final = await _final_state(client, base_url, job_id, headers)
                                    event["job"] = final["job"]
                                yield event
                                return
                            yield event
            except httpx.TransportError as exc:
                if not connected:
                    raise StreamError(f"cannot reach {url}: {one_line(exc)}") from exc
                reason = one_line(exc)
            except SSEError as exc:
                raise StreamError(f"{url} did not answer with an event stream: {exc}") from exc
            else:
                reason = "the stream ended before the job did"
            failures += 1
            if failures > max_reconnects:
                raise StreamError(f"lost the stream of job {job_id} ({reason}); gave up")
            await asyncio.sleep(min(delay * 2 ** (failures - 1), MAX_DELAY))


async def _final_state(
    client: httpx.AsyncClient, base_url: str, job_id: int, headers: Mapping[str, str] | None
) -> dict[str, Any]:
    import httpx

    response = await client.get(
        f"{base_url.rstrip('/')}/jobs/{job_id}",
        headers=httpx.Headers(dict(headers or {}), encoding="utf-8"),
    )
    if response.status_code != 200:
        raise StreamError(_http_error(response, str(response.url)), _status_of(response))
    job = response.json()
    kind = {"SUCCESS": "success", "FAILURE": "failure", "CANCELLED": "cancelled"}.get(
        job.get("status"), "snapshot"
    )
    return {"job_id": job_id, "type": kind, "status": job.get("status"), "job": job}


def _refused(response: httpx.Response, job_id: int) -> float | None:
    """Seconds to wait before trying again (503), or ``None`` when it is final."""
    if response.status_code == 404:
        raise JobNotFound(job_id)
    if response.status_code == 503:
        try:
            return float(response.headers.get("retry-after", "1"))
        except ValueError:
            return 1.0
    return None


def _status_of(response: httpx.Response) -> int:
    if response.status_code == 404:
        return NOT_FOUND
    if response.status_code in (400, 401, 403, 422):
        return USAGE
    return UNAVAILABLE


def _http_error(response: httpx.Response, url: str) -> str:
    detail = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            detail = str(error.get("message") or "")
        elif error:
            detail = str(body.get("message") or error)
    return f"{url}: HTTP {response.status_code}" + (f": {detail}" if detail else "")


def exit_status(view: JobView) -> int:
    """0 when the job succeeded, 1 when it failed or was cancelled."""
    return OK if view.status == JobStatus.SUCCESS else JOB_FAILED


__all__ = [
    "Bar",
    "JobView",
    "bar_line",
    "exit_status",
    "follow",
    "runtime_events",
    "server_events",
    "summary_line",
]
