"""The operator commands: add, get, ls, cancel, retry, stats, schedules, cleanup,
watch (from the database and from a real server's SSE stream) and serve.

Most run ``cli.main([...])`` in this process; a few run the installed
``taskrt`` console script, as a user would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskrt import Batch, JobContext, JobInfo, JobStatus, Runtime, cli
from taskrt.cli.progress import Bar, JobView, bar_line, summary_line
from taskrt.cli.support import reason_note
from taskrt.web import create_app

Serve = Callable[..., AbstractAsyncContextManager[str]]

APP = """
import asyncio
from taskrt import JobContext, Runtime

rt = Runtime({db!r}, poll_interval=0.01)
rt.pool("work", concurrency=2)
rt.pool("other")
rt.schedule("nightly", "resize", "0 3 * * *")


@rt.task(pool="work", attempts=2)
async def resize(job: JobContext, n: int = 2, fail: bool = False) -> dict:
    for i in range(n):
        await job.progress(i + 1, n, f"step {{i + 1}}")
    if fail:
        raise ValueError("boom")
    return {{"done": n}}


@rt.task
async def echo(job: JobContext, *args: object, **kwargs: object) -> dict:
    return {{"args": list(args), "kwargs": kwargs}}
"""


class App:
    """A throwaway application module in ``tmp_path`` (imported afresh by every run:
    a Runtime lives in one event loop, and every ``main`` call has its own)."""

    def __init__(self, root: Path, db: Path) -> None:
        self.module = f"cliapp_{uuid.uuid4().hex[:8]}"
        self.ref = f"{self.module}:rt"
        self.db = str(db)
        (root / f"{self.module}.py").write_text(APP.format(db=self.db))

    def forget(self) -> None:
        sys.modules.pop(self.module, None)


@pytest.fixture
def app(tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TASKRT_APP", raising=False)
    monkeypatch.delenv("TASKRT_DB", raising=False)
    monkeypatch.delenv("TASKRT_URL", raising=False)
    made = App(tmp_path, db_path)
    yield made
    made.forget()
    with contextlib.suppress(ValueError):
        sys.path.remove(str(tmp_path))


def run(capsys: pytest.CaptureFixture[str], app: App, *argv: str) -> tuple[int, str, str]:
    app.forget()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def add_json(capsys: pytest.CaptureFixture[str], app: App, *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, app, "add", *argv, "--app", app.ref, "--json")
    assert (code, err) == (0, ""), err
    job: dict[str, Any] = json.loads(out)
    return job


# -- add, get, ls ---------------------------------------------------------------------------


def test_add_parses_values_and_options_then_get_and_ls_show_the_job(
    capsys: pytest.CaptureFixture[str], app: App
) -> None:
    job = add_json(
        capsys,
        app,
        "echo",
        "--arg",
        "42",
        "--arg",
        "hello",
        "--arg",
        "[1, 2]",
        "--kwarg",
        "flag=true",
        "--kwarg",
        'code="007"',
        "--meta",
        "user=7",
        "--priority",
        "5",
        "--pool",
        "other",
        "--delay",
        "1h",
    )
    assert job["task"] == "echo" and job["status"] == "WAITING" and job["pool"] == "other"
    assert job["args"] == [42, "hello", [1, 2]]
    assert job["kwargs"] == {"flag": True, "code": "007"}
    assert job["metadata"] == {"user": 7} and job["priority"] == 5
    assert job["run_at"] - job["created_at"] == pytest.approx(3600)

    code, out, err = run(capsys, app, "add", "resize", "--kwarg", "n=3", "--app", app.ref)
    assert code == 0 and err == ""
    assert out == f"added job {job['id'] + 1} (resize, pool work, WAITING)\n"

    code, out, _ = run(capsys, app, "get", str(job["id"]), "--db", app.db, "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["id"] == job["id"] and shown["kwargs"] == job["kwargs"]
    assert shown["attempt_records"] == []

    code, out, _ = run(capsys, app, "get", str(job["id"]), "--db", app.db)
    assert code == 0
    assert f"job {job['id']}" in out and "WAITING" in out and '"code": "007"' in out

    code, out, _ = run(capsys, app, "ls", "--db", app.db, "--json")
    assert [j["task"] for j in json.loads(out)["jobs"]] == ["resize", "echo"]  # newest first

    code, out, _ = run(capsys, app, "ls", "--db", app.db, "--json", "--meta", "user=7")
    assert [j["id"] for j in json.loads(out)["jobs"]] == [job["id"]]

    code, out, err = run(capsys, app, "ls", "--db", app.db, "--limit", "1", "--pool", "work")
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "STATUS",
        "TASK",
        "POOL",
        "PROGRESS",
        "ATTEMPTS",
        "CREATED",
        "MESSAGE",
    ]
    assert lines[1].split()[:4] == [str(job["id"] + 1), "WAITING", "resize", "work"]
    assert len(lines) == 2 and err == ""  # one job, no next page

    code, out, err = run(capsys, app, "ls", "--db", app.db, "--limit", "1")
    assert err == f"more: --cursor {job['id'] + 1}\n"
    code, out, err = run(
        capsys, app, "ls", "--db", app.db, "--limit", "1", "--cursor", str(job["id"] + 1)
    )
    assert out.splitlines()[1].split()[0] == str(job["id"])


def test_cancel_retry_stats_and_cleanup_through_the_database(
    capsys: pytest.CaptureFixture[str], app: App
) -> None:
    first = add_json(capsys, app, "resize")["id"]
    second = add_json(capsys, app, "resize")["id"]

    assert run(capsys, app, "cancel", str(first), "--db", app.db)[:2] == (
        0,
        f"job {first} CANCELLED\n",
    )
    code, _, err = run(capsys, app, "cancel", str(first), "--db", app.db)
    assert code == 2 and err == f"taskrt: error: cannot cancel job {first}: it is CANCELLED\n"

    code, out, _ = run(capsys, app, "stats", "--db", app.db, "--json")
    counts = json.loads(out)["counts"]
    assert (counts["WAITING"], counts["CANCELLED"]) == (1, 1)

    code, out, _ = run(capsys, app, "stats", "--db", app.db, "--since", "1h")
    assert code == 0 and "WAITING" in out and "window" in out
    code, out, _ = run(capsys, app, "stats", "--db", app.db, "--since", str(time.time() + 3600))
    # Nothing finished in a window still to come; WAITING is the count now.
    lines = out.splitlines()
    assert "CANCELLED      0" in lines and "WAITING        1" in lines

    code, out, _ = run(capsys, app, "retry", str(first), "--app", app.ref, "--json")
    assert code == 0 and json.loads(out)["status"] == "WAITING"
    code, _, err = run(capsys, app, "retry", str(second), "--db", app.db)
    assert code == 2 and "retry" in err

    run(capsys, app, "cancel", str(second), "--db", app.db)
    code, out, _ = run(capsys, app, "cleanup", "--db", app.db, "--older-than", "1h")
    assert (code, out) == (0, "deleted 0 jobs\n")
    code, out, _ = run(
        capsys, app, "cleanup", "--db", app.db, "--older-than", "0", "--status", "cancelled"
    )
    assert (code, out) == (0, "deleted 1 job\n")
    assert run(capsys, app, "get", str(second), "--db", app.db)[0] == 3


def test_schedules_lists_the_apps_schedules(capsys: pytest.CaptureFixture[str], app: App) -> None:
    code, out, _ = run(capsys, app, "schedules", "--app", app.ref, "--json")
    assert code == 0
    [nightly] = json.loads(out)
    assert (nightly["name"], nightly["task"], nightly["expression"]) == (
        "nightly",
        "resize",
        "0 3 * * *",
    )
    assert nightly["next_run_at"] > time.time()
    code, out, _ = run(capsys, app, "schedules", "--db", app.db)
    assert out.splitlines()[1].split()[:3] == ["nightly", "resize", "0"]


# -- errors and exit statuses ---------------------------------------------------------------

BEYOND_INT64 = "99999999999999999999"
PG = "postgresql://postgres@127.0.0.1"  # never reached: the URLs below are refused first


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["add", "nope", "--app", "{app}"], 3, "no task named 'nope'"),
        (["add", "echo", "--db", "{db}"], 3, "a bare --db does not know tasks"),
        (["add", "resize", "--kwarg", "n=x", "--app", "{app}"], 2, "'x' is not of type 'integer'"),
        (["add", "resize", "--kwarg", "n", "--app", "{app}"], 2, "--kwarg expects KEY=VALUE"),
        (["add", "resize", "--pool", "nope", "--app", "{app}"], 3, "nope"),
        (["add", "resize", "--delay", "soon", "--app", "{app}"], 2, "bad duration 'soon'"),
        (["add", "resize", "--app", "nomodule_xyz:rt"], 2, "cannot import 'nomodule_xyz'"),
        (["add", "resize", "--app", "{module}:nothing"], 2, "has no attribute 'nothing'"),
        (["get", "999", "--db", "{db}"], 3, "no job with id 999"),
        (["get", "1", "--db", "{db}.missing"], 4, "no database at"),
        (["get", "1"], 2, "which jobs?"),
        (["get", "1", "--db", "{db}", "--app", "{app}"], 2, "not both"),
        (["ls", "--db", "{db}", "--status", "bogus"], 2, "unknown status 'BOGUS'"),
        (["ls", "--db", "{db}", "--limit", "0"], 2, "limit"),
        (["stats", "--db", "{db}", "--since", "yesterday"], 2, "--since"),
        (["cleanup", "--db", "{db}", "--status", "waiting"], 2, "only finished jobs"),
        (["watch", "999", "--db", "{db}"], 3, "no job with id 999"),
        (["serve", "{app}", "--workers", "0"], 2, "--workers: expected 1 or more"),
        # An id beyond 64 bits is well formed and names no job (HTTP: 404).
        *(
            ([*command, BEYOND_INT64, "--db", "{db}"], 3, f"no job with id {BEYOND_INT64}")
            for command in (["get"], ["cancel"], ["retry"], ["run-now"], ["workflow"], ["watch"])
        ),
        (["stats", "--db", "{db}", "--since", "1e20"], 2, "--since: expected a time from year 1"),
        (["stats", "--db", "{db}", "--until=-1e12"], 2, "--until: expected a time from year 1"),
        (["stats", "--db", "{db}", "--since", "0001-01-01"], 2, "--since: expected a time"),
        # Malformed PostgreSQL URLs: bad usage naming the option, before any connection.
        (["ls", "--db", f"{PG}:notaport/postgres"], 2, "--db: expected postgresql://"),
        (["ls", "--db", "postgresql://postgres@[::1:5432/postgres"], 2, "--db: expected"),
        (["ls", "--db", f"{PG}:99999/postgres"], 2, "the port of host '127.0.0.1' is '99999'"),
        (["ls", "--db", f"{PG}:5432/postgres?schema="], 2, "--db: the schema parameter is empty"),
        # asyncpg refused it when it connected: exit 4, as for a server that is down.
        (["ls", "--db", f"{PG}:5432/p?sslmode=bogus"], 2, "--db: the sslmode parameter is 'bogus'"),
        (["copy", "--from", "{db}", "--to", f"{PG}:1/p?sslmode="], 2, "--to: the sslmode"),
        (["migrate", "--db", f"{PG}:notaport/postgres"], 2, "--db: expected postgresql://"),
        (["copy", "--from", "{db}", "--to", f"{PG}:x/postgres"], 2, "--to: expected postgresql"),
        (["copy", "--from", "{db}", "--to", f"{PG}:5432/p?schema="], 2, "--to: the schema"),
        # Malformed server URLs: bad usage naming --url, before any request (they were
        # httpx's InvalidURL, or an ExceptionGroup for the port: exit 1, as bugs).
        (["ls", "--url", "http://127.0.0.1:99999"], 2, "--url: the port of host '127.0.0.1' is"),
        (["ls", "--url", "http://[::1"], 2, "--url: expected http://HOST[:PORT]"),
        (["watch", "1", "--url", "http://[zz]"], 2, "--url: expected http://HOST[:PORT]"),
        (["ls", "--url", "http://[::1]x"], 2, "--url: expected http://HOST[:PORT]"),
        (["get", "1", "--url", "http://u:secret@127.0.0.1:0"], 2, "is '0', expected a number"),
        (["ls", "--url", "ftp://127.0.0.1"], 2, "found scheme 'ftp'"),
        (["ls", "--url", "127.0.0.1:8000"], 2, "found no scheme"),
        (["stats", "--url", "http://:8000"], 2, "found no host"),
        # An empty status was skipped: ``--status ''`` listed every job.
        (["ls", "--db", "{db}", "--status", ""], 2, "--status: empty status in ''"),
        (["ls", "--db", "{db}", "--status", "waiting,,running"], 2, "empty status in 'waiting,,"),
        (["cleanup", "--db", "{db}", "--status", "success,"], 2, "--status: empty status"),
    ],
)
def test_errors_are_one_line_with_a_documented_status(
    capsys: pytest.CaptureFixture[str], app: App, argv: list[str], status: int, message: str
) -> None:
    add_json(capsys, app, "resize")  # the database exists
    argv = [a.format(app=app.ref, db=app.db, module=app.module) for a in argv]
    code, out, err = run(capsys, app, *argv)
    assert code == status
    assert out == ""
    assert err.startswith("taskrt: error: ") and err.count("\n") == 1, err
    assert message in err


# Each command that takes --url, with what it needs besides.
URL_COMMANDS = {
    "bulk": ["bulk", "cancel", "--older-than", "0"],
    "cancel": ["cancel", "1"],
    "get": ["get", "1"],
    "ls": ["ls"],
    "retry": ["retry", "1"],
    "run-now": ["run-now", "1"],
    "schedules": ["schedules"],
    "stats": ["stats"],
    "watch": ["watch", "1"],
    "workflow": ["workflow", "1"],
}


def takes_url(command: cli.Command) -> bool:
    parser = argparse.ArgumentParser()
    command.configure(parser)
    return "--url" in parser.format_usage()


def test_every_command_that_takes_url_refuses_a_malformed_one(
    capsys: pytest.CaptureFixture[str], app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(URL_COMMANDS) == {c.name for c in cli.COMMANDS if takes_url(c)}
    expected = (
        "taskrt: error: --url: the port of host '127.0.0.1' is '99999', "
        "expected a number from 1 to 65535\n"
    )
    for argv in URL_COMMANDS.values():
        code, out, err = run(capsys, app, *argv, "--url", "http://127.0.0.1:99999")
        assert (code, out, err) == (2, "", expected), argv
    # The variable is refused as the flag, naming it: the message said --url.
    monkeypatch.setenv("TASKRT_URL", "http://127.0.0.1:99999")
    assert run(capsys, app, "ls") == (2, "", expected.replace("--url", "$TASKRT_URL"))


def test_a_malformed_taskrt_db_is_named_in_the_error(
    capsys: pytest.CaptureFixture[str], app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no --db flag, the value comes from $TASKRT_DB: the error said ``--db:``,
    naming a flag the user never gave."""
    monkeypatch.setenv("TASKRT_DB", f"{PG}:notaport/postgres")
    for command in (["ls"], ["migrate"], ["get", "1"]):
        code, out, err = run(capsys, app, *command)
        assert (code, out) == (2, ""), command
        assert err.startswith("taskrt: error: $TASKRT_DB: expected postgresql://"), command
    monkeypatch.setenv("TASKRT_DB", "file:x.db")
    code, _, err = run(capsys, app, "ls")
    assert (code, err.split(" 'file:x.db' ")[0]) == (2, "taskrt: error: $TASKRT_DB:")
    code, _, err = run(capsys, app, "ls", "--db", f"{PG}:notaport/postgres")  # the flag wins
    assert (code, err.split(" expected")[0]) == (2, "taskrt: error: --db:")


@pytest.mark.parametrize("option", ["--pool", "--task"])
@pytest.mark.parametrize("command", [["ls"], ["bulk", "cancel"]])
def test_an_empty_pool_or_task_is_refused(
    capsys: pytest.CaptureFixture[str], app: App, command: list[str], option: str
) -> None:
    """Empty, it matched no job in a database and every job through a server."""
    add_json(capsys, app, "resize")
    with pytest.raises(SystemExit) as exc:
        cli.main([*command, option, "", "--db", app.db])
    assert exc.value.code == 2
    assert f"argument {option}: expected a name, found ''" in capsys.readouterr().err


def test_an_app_that_fails_to_import_is_bad_usage_naming_it(
    capsys: pytest.CaptureFixture[str], app: App, tmp_path: Path
) -> None:
    """Exit 2 as for a missing module (it was ``RuntimeError: import boom``, exit 1)."""
    module = f"boomapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text('raise RuntimeError("import boom")\n')
    ref = f"{module}:rt"
    expected = (
        f"taskrt: error: cannot import {module!r} (from {ref!r}): RuntimeError: import boom\n"
    )
    for argv in (["add", "echo", "--app", ref], ["ls", "--app", ref], ["serve", ref]):
        assert run(capsys, app, *argv) == (2, "", expected), argv
    code, out, err = run(capsys, app, "--debug", "ls", "--app", ref)
    assert (code, out) == (2, "")
    assert 'raise RuntimeError("import boom")' in err  # the module's own traceback
    assert err.endswith(expected)


def test_bad_usage_exits_2_and_debug_shows_the_traceback(
    capsys: pytest.CaptureFixture[str], app: App
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["get", "x", "--db", app.db])
    assert exc.value.code == 2
    assert "expected a job id" in capsys.readouterr().err

    add_json(capsys, app, "resize")
    code, _, err = run(capsys, app, "--debug", "get", "999", "--db", app.db)
    assert code == 3
    assert "Traceback" in err and "JobNotFound" in err
    assert err.endswith("taskrt: error: no job with id 999\n")


# -- watch ------------------------------------------------------------------------------------


class Output:
    """What a command running in a thread has printed so far (capsys, read as it comes)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.text = ""

    async def shows(self, fragment: str, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while fragment not in self.text:
                self.text += self.capsys.readouterr().out
                await asyncio.sleep(0.005)

    def rest(self) -> str:
        self.text += self.capsys.readouterr().out
        return self.text


def owner(db: str) -> tuple[Runtime, dict[int, asyncio.Queue[None]]]:
    """The process that owns the database: a task that takes one step per token."""
    rt = Runtime(db, progress_interval=0.01)
    gates: dict[int, asyncio.Queue[None]] = {}

    @rt.task(pool="work")
    async def steps(job: JobContext, n: int, fail: bool = False) -> str:
        gate = gates.setdefault(job.id, asyncio.Queue())
        for i in range(n):
            await gate.get()
            await job.progress(i + 1, n, f"step {i + 1}")
        await gate.get()
        if fail:
            raise RuntimeError("it broke")
        return "ok"

    return rt, gates


def gate(gates: dict[int, asyncio.Queue[None]], job_id: int) -> asyncio.Queue[None]:
    return gates.setdefault(job_id, asyncio.Queue())


async def test_watch_from_the_database_draws_each_step_and_exits_by_outcome(
    capsys: pytest.CaptureFixture[str], db_path: Path
) -> None:
    rt, gates = owner(str(db_path))
    async with rt:
        job_id = await rt.add("steps", n=2)
        out = Output(capsys)
        watching = asyncio.create_task(
            asyncio.to_thread(cli.main, ["watch", str(job_id), "--db", str(db_path)])
        )
        await out.shows("RUNNING")
        gate(gates, job_id).put_nowait(None)
        await out.shows("1/2  step 1")
        gate(gates, job_id).put_nowait(None)
        await out.shows("2/2  step 2")
        gate(gates, job_id).put_nowait(None)
        assert await asyncio.wait_for(watching, 10) == 0
        text = out.rest()
        assert text.splitlines()[-1].startswith(f"job {job_id} SUCCESS in ")
        assert text.splitlines()[-1].endswith(': "ok"')
        assert " 50%" in text and "100%" in text

        failing = await rt.add("steps", n=0, fail=True)
        watching = asyncio.create_task(
            asyncio.to_thread(cli.main, ["watch", str(failing), "--db", str(db_path), "--json"])
        )
        await out.shows(f'"job_id": {failing}')  # the snapshot
        gate(gates, failing).put_nowait(None)
        assert await asyncio.wait_for(watching, 10) == 1
        events = [json.loads(line) for line in out.rest().splitlines() if '"job_id"' in line]
        assert events[-1]["type"] == "failure" and events[-1]["job"]["error"] == (
            "RuntimeError: it broke"
        )


class CuttingProxy:
    """A TCP proxy that cuts its first connection after forwarding the frame with
    ``cut_after``, and keeps each request's head (to see ``Last-Event-ID``)."""

    def __init__(self, target_port: int, cut_after: bytes) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.heads: list[str] = []
        self.cut_at_id: str | None = None
        self.connections = 0
        self._server: asyncio.Server | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        cut = self.connections == 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head.decode("latin-1").lower())
        up_writer.write(head)
        await up_writer.drain()
        try:
            while chunk := await up_reader.read(65536):
                writer.write(chunk)
                await writer.drain()
                if cut and self.cut_after in chunk:
                    ids = [ln for ln in chunk.decode().splitlines() if ln.startswith("id: ")]
                    self.cut_at_id = ids[-1].removeprefix("id: ")
                    break
        except ConnectionError:
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()


@pytest.mark.server
async def test_watch_from_a_server_resumes_with_last_event_id_after_a_dropped_connection(
    capsys: pytest.CaptureFixture[str], db_path: Path, server: Serve, free_port: int
) -> None:
    rt, gates = owner(str(db_path))
    proxy = CuttingProxy(free_port, b'"message":"step 1"')
    async with server(create_app(rt, heartbeat=0)), proxy.running() as url:
        job_id = await rt.add("steps", n=3)
        out = Output(capsys)
        watching = asyncio.create_task(
            asyncio.to_thread(cli.main, ["watch", str(job_id), "--url", url])
        )
        await out.shows("RUNNING")
        gate(gates, job_id).put_nowait(None)
        await out.shows("1/3  step 1")
        # The proxy cut the stream; the watcher comes back with Last-Event-ID.
        async with asyncio.timeout(5):
            while len(proxy.heads) < 2:
                await asyncio.sleep(0.01)
        assert "last-event-id" not in proxy.heads[0]
        assert f"last-event-id: {proxy.cut_at_id}\r\n" in proxy.heads[1]
        gate(gates, job_id).put_nowait(None)
        await out.shows("2/3  step 2")
        gate(gates, job_id).put_nowait(None)
        gate(gates, job_id).put_nowait(None)
        assert await asyncio.wait_for(watching, 10) == 0
        lines = out.rest().splitlines()
        assert lines[-1].startswith(f"job {job_id} SUCCESS")
        assert sum("step 1" in line for line in lines) == 1  # resumed, not replayed
        assert any("3/3  step 3" in line for line in lines)


@pytest.mark.server
async def test_watch_from_a_server_not_found_unreachable_and_failed(
    capsys: pytest.CaptureFixture[str], db_path: Path, server: Serve
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nobody listens here once the socket closes
    code = await asyncio.to_thread(cli.main, ["watch", "1", "--url", f"http://127.0.0.1:{closed}"])
    assert code == 4
    assert "cannot reach" in capsys.readouterr().err

    rt, gates = owner(str(db_path))
    async with server(create_app(rt)) as url:
        code = await asyncio.to_thread(cli.main, ["watch", "77", "--url", url])
        assert (code, capsys.readouterr().err) == (3, "taskrt: error: no job with id 77\n")

        job_id = await rt.add("steps", n=0, fail=True)
        gate(gates, job_id).put_nowait(None)
        await rt.wait(job_id, timeout=5)
        code = await asyncio.to_thread(cli.main, ["watch", str(job_id), "--url", url])
        out = capsys.readouterr().out
        assert code == 1
        assert out.splitlines()[-1] == (
            f"job {job_id} FAILURE after 1 attempt(s): RuntimeError: it broke"
        )


def test_the_bar_redraws_in_place_on_a_terminal() -> None:
    stream = io.StringIO()
    bar = Bar(stream, tty=True)
    view = JobView(3, task="resize", status="RUNNING", current=1, total=4, message="one")
    bar.draw(view)
    bar.draw(view)  # unchanged: nothing written
    view.current = 4
    bar.draw(view)
    view.status = "SUCCESS"
    bar.finish(view)
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.count("\x1b[K") == 2
    assert "\r" not in text.splitlines()[-1]
    assert text.endswith("\njob 3 SUCCESS: null\n")
    assert " 25%  1/4  one" in text and "100%  4/4  one" in text

    narrow = bar_line(
        JobView(1, task="t", status="RUNNING", current=1, total=2, message="x" * 200), columns=60
    )
    assert len(narrow) == 59 and narrow.endswith("…")
    assert "[############------------]" in bar_line(
        JobView(1, status="RUNNING", current=1, total=2), ascii_only=True
    )


def test_watch_names_the_step_a_job_reported() -> None:
    view = JobView(4, task="album")
    view.apply({"type": "snapshot", "job": {"task": "album", "status": "RUNNING", "step": "fetch"}})
    assert bar_line(view, columns=120).endswith("[fetch]")
    view.apply(
        {"type": "progress", "current": 2, "total": 5, "message": "cat.jpg", "step": "resize"}
    )
    assert bar_line(view, columns=120).endswith(" 40%  2/5  [resize]  cat.jpg")
    view.apply({"type": "progress", "current": 3, "total": 5, "message": "dog.jpg"})
    assert bar_line(view, columns=120).endswith(
        "[resize]  dog.jpg"
    )  # a report without a step keeps it
    view.apply({"type": "started", "attempt": 2})
    assert "[resize]" not in bar_line(view)  # a new attempt starts over


# -- the console script, as a user runs it -----------------------------------------------------


def script() -> str:
    path = Path(sys.executable).with_name("taskrt")
    assert path.exists(), f"the console script is not installed at {path}"
    return str(path)


def clean_env() -> dict[str, str]:
    """The environment without taskrt's variables (no ``$TASKRT_DB`` from outside)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TASKRT_")}


def run_script(*argv: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``taskrt *argv`` as a user runs it, in ``cwd``, its output captured."""
    return subprocess.run(
        [script(), *argv], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


def test_the_console_script_adds_lists_and_reports_errors(app: App, tmp_path: Path) -> None:
    env = clean_env()
    env["TASKRT_APP"] = app.ref  # the default for --app

    def taskrt(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script(), *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
        )

    added = taskrt("add", "resize", "--kwarg", "n=4", "--json")
    assert added.returncode == 0, added.stderr
    job_id = json.loads(added.stdout)["id"]
    listed = taskrt("ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [j["id"] for j in json.loads(listed.stdout)["jobs"]] == [job_id]
    missing = taskrt("get", "12345")
    assert (missing.returncode, missing.stdout) == (3, "")
    assert missing.stderr == "taskrt: error: no job with id 12345\n"


def test_a_file_that_is_not_a_database_is_an_error_and_the_cli_exits(tmp_path: Path) -> None:
    """A wrong ``--db``: the error names the file, and the process ends. (The
    connection's thread, which is not a daemon, was left open when a PRAGMA
    failed, so the process printed the error and then never exited.)"""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n")
    done = run_script("ls", "--db", str(notes), cwd=tmp_path, timeout=20)
    assert done.returncode == 4, done.stderr
    assert done.stderr == (
        f"taskrt: error: cannot open database {str(notes)!r}: file is not a database\n"
    )


def other_apps_file(path: Path, kind: str) -> None:
    """A file at ``path`` that is no taskrt database: empty, or another application's."""
    if kind == "empty":
        path.write_bytes(b"")
        return
    import sqlite3

    conn = sqlite3.connect(path)
    if kind == "other app, WAL":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE foo (x)")
    conn.execute("INSERT INTO foo VALUES (1)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("kind", ["empty", "other app", "other app, WAL"])
def test_commands_leave_a_file_that_is_not_a_taskrt_database_untouched(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str
) -> None:
    """Only ``migrate`` makes a database: the others refuse (exit 4, naming the
    file) a zero-byte file or another application's, and write nothing into it.
    (They opened a runtime on it, which wrote taskrt's tables into it.)"""
    path = tmp_path / "other.db"
    other_apps_file(path, kind)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    what = "an empty file" if kind == "empty" else "a SQLite database without taskrt's tables"
    commands = [
        ["ls"],
        ["get", "1"],
        ["stats"],
        ["schedules"],
        ["workflow", "1"],
        ["watch", "1"],
        ["cleanup"],
        ["cancel", "1"],
        ["retry", "1"],
        ["run-now", "1"],
        ["bulk", "cancel", "--older-than", "0", "--yes"],
    ]
    for command in commands:
        code = cli.main([*command, "--db", str(path)])
        out, err = capsys.readouterr()
        assert (code, out) == (4, ""), (command, err)
        assert err == f"taskrt: error: {path} is not a taskrt database ({what}); left " + (
            "untouched: only `taskrt migrate` creates one\n"
        )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    if kind == "empty":  # migrate makes it one; then the others open it
        assert cli.main(["migrate", "--db", str(path)]) == 0
        assert cli.main(["ls", "--db", str(path), "--json"]) == 0
        assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["jobs"] == []


def files(directory: Path) -> dict[str, bytes]:
    """Every file of ``directory`` and its bytes, but a ``-shm`` file's (the shared
    memory of the processes that have a database open: readers take turns in it)."""
    return {p.name: b"" if p.name.endswith("-shm") else p.read_bytes() for p in directory.iterdir()}


def refused(capsys: pytest.CaptureFixture[str], path: Path) -> str:
    """What ``ls`` and ``stats`` print on stderr for ``path``: both exit 4, print nothing."""
    errors = set()
    for command in (["ls"], ["stats"], ["cleanup", "--older-than", "0"]):
        code = cli.main([*command, "--db", str(path)])
        out, err = capsys.readouterr()
        assert (code, out) == (4, ""), (command, err)
        errors.add(err)
    assert len(errors) == 1, errors
    return errors.pop()


NOT_TASKRT = (
    "is not a taskrt database (a SQLite database without taskrt's tables); left untouched: "
    "only `taskrt migrate` creates one\n"
)


@pytest.mark.parametrize("user_version", [3, 9, 20])
def test_another_apps_file_with_a_user_version_of_its_own_is_refused_untouched(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, user_version: int
) -> None:
    """An application that records its own ``PRAGMA user_version``: its file was
    taken for taskrt's (exit 4 with "no such table: main.jobs", or "written by a
    newer taskrt"), switched to WAL mode, and -wal and -shm files were left beside it."""
    import sqlite3

    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('alice')")
    conn.execute(f"PRAGMA user_version = {user_version}")
    conn.commit()
    conn.close()
    before = files(tmp_path)
    assert refused(capsys, path) == f"taskrt: error: {path} {NOT_TASKRT}"
    assert files(tmp_path) == before
    # migrate trusted the version: at 9, "schema version 9, nothing to do" (exit 0);
    # below, it ran taskrt's migrations on the other application's tables.
    assert cli.main(["migrate", "--db", str(path)]) == 4
    out, err = capsys.readouterr()
    assert (out, err) == (
        "",
        f"taskrt: error: {path} is not a taskrt database (a SQLite database without taskrt's "
        f"tables, whose PRAGMA user_version {user_version} is another application's); "
        "left untouched\n",
    )
    assert files(tmp_path) == before


def test_another_apps_file_with_commits_in_its_log_is_refused_untouched(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Another application runs a file in WAL mode, its tables still in the log:
    the header check was skipped while the log was not empty, and the runtime
    wrote taskrt's tables into the file (exit 0, ``no jobs``)."""
    import sqlite3

    path = tmp_path / "other.db"
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("PRAGMA journal_mode = WAL")
        other.execute("PRAGMA wal_autocheckpoint = 0")  # every commit stays in the log
        other.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        other.execute("INSERT INTO customers (name) VALUES ('alice')")
        assert Path(f"{path}-wal").stat().st_size > 0
        before = files(tmp_path)
        assert refused(capsys, path) == f"taskrt: error: {path} {NOT_TASKRT}"
        assert files(tmp_path) == before
        tables = other.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        assert tables == [("customers",)]

        # The process crashed and its -shm is gone: a copy of the file and its log is read.
        crashed = tmp_path / "crashed"
        crashed.mkdir()
        for name in ("other.db", "other.db-wal"):
            (crashed / name).write_bytes((tmp_path / name).read_bytes())
        before = files(crashed)
        assert refused(capsys, crashed / "other.db") == (
            f"taskrt: error: {crashed / 'other.db'} {NOT_TASKRT}"
        )
        assert files(crashed) == before
    finally:
        other.close()


def test_a_taskrt_database_with_its_tables_in_the_log_opens(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A server running a new database: its tables are in the log only; the look
    reads through the log, and the commands open it (also once its -shm is gone)."""
    import sqlite3

    from taskrt.store import MIGRATIONS, SCHEMA_VERSION

    path = tmp_path / "jobs.db"
    server = sqlite3.connect(path, isolation_level=None)
    try:
        server.execute("PRAGMA journal_mode = WAL")
        server.execute("PRAGMA wal_autocheckpoint = 0")
        for statement in (st for migration in MIGRATIONS for st in migration):
            server.execute(statement)
        server.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        crashed = tmp_path / "crashed"
        crashed.mkdir()
        for name in ("jobs.db", "jobs.db-wal"):
            (crashed / name).write_bytes((tmp_path / name).read_bytes())
        for where in (path, crashed / "jobs.db"):
            assert cli.main(["ls", "--db", str(where)]) == 0
            assert capsys.readouterr().err == "no jobs\n"
    finally:
        server.close()


def test_a_first_release_database_points_to_migrate_and_is_left_untouched(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A taskrt database of release 0.1.0 records no schema version: it was called
    "not a taskrt database" (another application's); it is an older one."""
    path = tmp_path / "old.db"
    path.write_bytes((Path(__file__).parent / "fixtures" / "release-0.1.0.db").read_bytes())
    before = files(tmp_path)
    assert refused(capsys, path) == (
        f"taskrt: error: {path} is a taskrt database of an older version (the first "
        "release's, with no schema version recorded); left untouched: "
        f"`taskrt migrate --db {path}` upgrades it\n"
    )
    assert files(tmp_path) == before
    assert cli.main(["migrate", "--db", str(path)]) == 0
    assert capsys.readouterr().out.endswith("schema version 0 -> 9\n")
    assert cli.main(["ls", "--db", str(path), "--status", "waiting", "--json"]) == 0
    assert [job["id"] for job in json.loads(capsys.readouterr().out)["jobs"]] == [3]


def test_a_sqlite_uri_as_db_is_bad_usage_and_makes_no_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``migrate --db file:x.db`` made ``x.db`` (SQLite read the name as a URI), then
    ``ls --db file:x.db`` found no database (it looked for a file ``file:x.db``), and a
    runtime on ``file:x.db`` took a lock of its own beside an owner of ``x.db``. Now the
    name is refused (exit 2) before anything opens it, saying what to write."""
    monkeypatch.chdir(tmp_path)
    for command in (["migrate"], ["ls"], ["stats"]):
        assert cli.main([*command, "--db", "file:x.db"]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err == (
            "taskrt: error: --db: 'file:x.db' is a SQLite URI, and taskrt opens a path as a "
            "file name: write 'x.db', the path it names (or './file:x.db' for a file whose "
            "name starts with 'file:')\n"
        )
    assert list(tmp_path.iterdir()) == []
    assert cli.main(["migrate", "--db", "./file:x.db"]) == 0  # the file of that name
    assert cli.main(["ls", "--db", "./file:x.db"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == ["file:x.db"]


def test_a_file_name_that_is_not_utf8_is_migrated_and_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``migrate --db $'\\xff\\xfe.db'`` failed with UnicodeEncodeError (exit 1, a bug):
    the relay's address beside the file was measured with str.encode(). The read
    commands took the name; now migrate does, and the file is that name's."""
    monkeypatch.chdir(tmp_path)
    name = os.fsdecode(b"\xff\xfe.db")
    assert cli.main(["migrate", "--db", name, "--json"]) == 0
    migrated = json.loads(capsys.readouterr().out)
    assert (migrated["database"], migrated["version"]) == ("\\xff\\xfe.db", 9)  # as $'...'
    assert cli.main(["ls", "--db", name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["jobs"] == []
    assert b"\xff\xfe.db" in os.listdir(os.fsencode(tmp_path))


def test_a_newer_taskrt_database_is_refused_before_it_is_opened(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import sqlite3

    from taskrt.store import SCHEMA_VERSION

    path = tmp_path / "jobs.db"
    assert cli.main(["migrate", "--db", str(path)]) == 0
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    capsys.readouterr()
    before = files(tmp_path)
    assert refused(capsys, path) == (
        f"taskrt: error: {path} has schema version {SCHEMA_VERSION + 1}, written by a newer "
        f"taskrt; this one reads versions up to {SCHEMA_VERSION}: upgrade taskrt to open it\n"
    )
    assert files(tmp_path) == before


def test_ls_refuses_a_postgresql_schema_that_does_not_exist_and_creates_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import asyncpg
    import pg_server

    base = pg_server.require()
    schema = f"cli_none_{pg_server.fresh_schema(tmp_path)}"
    code = cli.main(["ls", "--db", f"{base}?schema={schema}"])
    err = capsys.readouterr().err

    async def created() -> bool:
        conn = await asyncpg.connect(base)
        try:
            found = await conn.fetchval("SELECT to_regnamespace($1)", schema)
            if found is not None:
                await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            return found is not None
        finally:
            await conn.close()

    assert not asyncio.run(created())
    assert code == 4 and schema in err


def test_copy_from_a_file_that_is_no_database_is_exit_4_as_for_ls(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    notes = tmp_path / "notes.db"
    notes.write_text("not a database\n")
    target = "postgresql://postgres@127.0.0.1:1/postgres?schema=never_reached"
    code = cli.main(["copy", "--from", str(notes), "--to", target])
    assert code == 4
    assert capsys.readouterr().err == (
        f"taskrt: error: cannot open database {str(notes)!r}: file is not a database\n"
    )
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert cli.main(["copy", "--from", str(empty), "--to", target]) == 4
    assert f"{empty} is not a taskrt database" in capsys.readouterr().err
    assert empty.read_bytes() == b""


def test_bulk_refuses_an_id_beyond_64_bits_as_the_http_api_does(
    capsys: pytest.CaptureFixture[str], app: App
) -> None:
    add_json(capsys, app, "resize")
    with pytest.raises(SystemExit) as exc:
        cli.main(["bulk", "cancel", "--id", BEYOND_INT64, "--db", app.db])
    assert exc.value.code == 2
    assert "argument --id: expected a job id (a positive integer up to 9223372036854775807)" in (
        capsys.readouterr().err
    )


def test_bulk_takes_ids_separated_by_commas_and_from_a_file_or_stdin(
    capsys: pytest.CaptureFixture[str], app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--id`` repeated N times took argparse time growing with N squared (20,000
    ids: 14 s), and a command line holds fewer than the 100,000 ids a call may
    name: ids go in one ``--id`` separated by commas, or in a file."""
    first, second, third = (add_json(capsys, app, "resize")["id"] for _ in range(3))
    code, out, err = run(capsys, app, "bulk", "cancel", "--id", f"{first},{second}", "--db", app.db)
    assert (code, out, err) == (0, "would cancel 2 jobs; add --yes to do it\n", "")
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{first}\n {second},{third}\n\n")
    code, out, err = run(capsys, app, "bulk", "cancel", "--ids-from", str(ids), "--db", app.db)
    assert (code, out, err) == (0, "would cancel 3 jobs; add --yes to do it\n", "")
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{third}"))
    argv = ["bulk", "cancel", "--ids-from", "-", "--id", str(first), "--yes", "--db", app.db]
    code, out, err = run(capsys, app, *argv)
    assert (code, out, err) == (0, "cancelled 2 of 2 jobs\n", "")
    code, out, _ = run(capsys, app, "get", str(second), "--db", app.db, "--json")
    assert json.loads(out)["status"] == "WAITING"

    # The most a call may name: 100,000 ids, in a file.
    ids.write_text("\n".join(str(i) for i in range(1, 100_001)))
    code, out, err = run(capsys, app, "bulk", "cancel", "--ids-from", str(ids), "--db", app.db)
    assert (code, out, err) == (0, "would cancel 3 jobs; add --yes to do it\n", "")


def test_bulk_names_an_id_that_is_no_id(
    capsys: pytest.CaptureFixture[str], app: App, tmp_path: Path
) -> None:
    expected = "expected a job id (a positive integer up to 9223372036854775807)"
    for given, found in (("1,x,3", "'x' in '1,x,3'"), ("1,,2", "'' in '1,,2'"), ("0", "'0'")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["bulk", "cancel", "--id", given, "--db", app.db])
        assert exc.value.code == 2
        assert f"argument --id: {expected}, found {found}\n" in capsys.readouterr().err
    ids = tmp_path / "ids.txt"
    ids.write_text("1 2,3\n4 -5\n")
    code, out, err = run(capsys, app, "bulk", "cancel", "--ids-from", str(ids), "--db", app.db)
    assert (code, out) == (2, "")
    assert err == f"taskrt: error: --ids-from {ids}, line 2: {expected}, found '-5'\n"
    missing = tmp_path / "missing.txt"
    code, out, err = run(capsys, app, "bulk", "cancel", "--ids-from", str(missing), "--db", app.db)
    assert (code, out) == (2, "")
    assert (
        err == f"taskrt: error: --ids-from {missing}: cannot read it: No such file or directory\n"
    )


def test_values_that_python_reads_as_json_but_json_has_not_are_text(
    capsys: pytest.CaptureFixture[str], app: App
) -> None:
    """NaN, Infinity, -Infinity are not JSON (nor is a number no float holds): text."""
    argv = ["--arg", "NaN", "--arg=-Infinity", "--arg", "1e400", "--arg", "1.5"]
    job = add_json(capsys, app, "echo", *argv, "--kwarg", "note=Infinity")
    assert job["args"] == ["NaN", "-Infinity", "1e400", 1.5]
    assert job["kwargs"] == {"note": "Infinity"}


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "http"])
def test_serve_refuses_a_port_out_of_range_before_starting(
    capsys: pytest.CaptureFixture[str], app: App, port: str
) -> None:
    """Refused at parsing: out of range, uvicorn failed to bind only after the app's
    lifespan had started the runtime, and the process never ended."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", app.ref, "--port", port])
    assert exc.value.code == 2
    assert f"argument --port: expected 0-65535, found {port!r}" in capsys.readouterr().err


@pytest.mark.server
@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_port_taken_exits_4_and_ends(
    app: App, tmp_path: Path, free_port: int, workers: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port))
        taken.listen()
        done = run_script(
            "serve",
            app.ref,
            "--port",
            str(free_port),
            "--workers",
            workers,
            cwd=tmp_path,
            timeout=30,
        )
    assert done.returncode == 4, done.stderr
    assert done.stderr.endswith(
        "taskrt: error: the server stopped at start (port taken? database owned?); "
        "see the log above\n"
    )


@pytest.mark.server
def test_serve_runs_the_app_with_metrics_until_interrupted(
    app: App, tmp_path: Path, free_port: int
) -> None:
    env = clean_env()
    proc = subprocess.Popen(
        [script(), "serve", app.ref, "--port", str(free_port), "--log-format", "json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{free_port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.05)
        created = httpx.post(f"{base}/jobs", json={"task": "resize", "kwargs": {"n": 1}})
        assert created.status_code == 201
        metrics = httpx.get(f"{base}/metrics")
        families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
        added = {s.labels["task"]: s.value for s in families["taskrt_jobs_added"].samples}
        assert added == {"resize": 1.0}
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(r["message"].startswith("Application startup complete") for r in records)


def served(app: App, tmp_path: Path, port: int, *options: str) -> subprocess.Popen[str]:
    """``taskrt serve`` in a process of its own, once its ``/health`` answers."""
    env = clean_env()
    proc = subprocess.Popen(
        [script(), "serve", app.ref, "--port", str(port), *options],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.05)


@pytest.mark.server
@pytest.mark.parametrize("options", [["--workers", "1"], ["--workers", "2"], ["--reload"]])
def test_serve_stopped_by_sigterm_ends_killed_by_it_after_draining(
    app: App, tmp_path: Path, free_port: int, options: list[str]
) -> None:
    """docs/cli.md: SIGTERM drains, then the process ends killed by SIGTERM, as a
    supervisor expects. With --workers 2 (and --reload) the process exited 0: uvicorn's
    supervisor stopped its children and returned normally."""
    proc = served(app, tmp_path, free_port, *options)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM, err
    assert "Application shutdown complete" in err  # drained first
    if options == ["--workers", "2"]:
        assert err.count("Application shutdown complete") == 2


@pytest.mark.server
def test_serve_with_workers_stopped_by_ctrl_c_exits_0(
    app: App, tmp_path: Path, free_port: int
) -> None:
    proc = served(app, tmp_path, free_port, "--workers", "2")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


FAILING_START = """
from taskrt import Runtime

rt = Runtime({db!r})


@rt.on_start
async def boom(rt: Runtime) -> None:
    raise RuntimeError("startup failed on purpose")
"""


@pytest.mark.server
@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_whose_app_fails_to_start_exits_4(
    tmp_path: Path, db_path: Path, free_port: int, workers: str
) -> None:
    """docs/cli.md: the app's startup failed -> 4. With --workers 2 it was 0: uvicorn's
    supervisor stopped when a child failed to start, and returned normally."""
    (tmp_path / "failing.py").write_text(FAILING_START.format(db=str(db_path)))
    done = run_script(
        "serve",
        "failing:rt",
        "--port",
        str(free_port),
        "--workers",
        workers,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 4, done.stderr
    assert "startup failed on purpose" in done.stderr
    assert done.stderr.endswith(
        "taskrt: error: the server stopped at start (port taken? database owned?); "
        "see the log above\n"
    )


OWNER = """
import asyncio, sys
from taskrt import Runtime

async def main() -> None:
    async with Runtime(sys.argv[1]):
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def test_stats_names_the_process_that_owns_the_database(
    capsys: pytest.CaptureFixture[str], app: App, tmp_path: Path
) -> None:
    add_json(capsys, app, "resize")
    code, out, _ = run(capsys, app, "stats", "--db", app.db)
    assert code == 0 and "none reachable" in out  # nobody runs the jobs now
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    owner = subprocess.Popen(
        [sys.executable, str(script), app.db], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline() == "ready\n"
        code, out, _ = run(capsys, app, "stats", "--db", app.db, "--json")
        ownership = json.loads(out)["ownership"]
        assert (ownership["role"], ownership["reachable"]) == ("client", True)
        assert ownership["owner"].split(":")[1] == str(owner.pid)
        code, out, _ = run(capsys, app, "stats", "--db", app.db)
        [line] = [line for line in out.splitlines() if line.startswith("owner")]
        assert f":{owner.pid}:" in line and " since " in line
    finally:
        owner.terminate()
        owner.wait(10)
        if owner.stdout is not None:
            owner.stdout.close()


def test_a_flag_wins_over_the_variables_of_the_others(
    capsys: pytest.CaptureFixture[str], app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_json(capsys, app, "resize")  # the database exists
    monkeypatch.setenv("TASKRT_DB", app.db)
    job = add_json(capsys, app, "resize")  # --app given: $TASKRT_DB does not clash
    assert job["task"] == "resize"
    code, out, _ = run(capsys, app, "get", str(job["id"]), "--json")  # no flag: $TASKRT_DB
    assert code == 0 and json.loads(out)["id"] == job["id"]
    monkeypatch.setenv("TASKRT_APP", app.ref)
    code, out, _ = run(capsys, app, "get", str(job["id"]), "--json")  # both set: the app
    assert code == 0 and json.loads(out)["id"] == job["id"]
    code, _, err = run(capsys, app, "get", "1", "--db", app.db, "--app", app.ref)
    assert code == 2 and "not both" in err  # both given on the command line


def test_a_reader_that_stops_early_gets_no_error(app: App, tmp_path: Path) -> None:
    """``taskrt ls --json | head``: the pipe closes under a long listing."""
    seed = tmp_path / "seed.py"
    seed.write_text(
        "import asyncio, sys\n"
        "from taskrt import Runtime\n"
        "async def main():\n"
        "    rt = Runtime(sys.argv[1], workers=False)\n"
        "    rt.task(lambda job, n: n, name='noop', pool='p')\n"
        "    async with rt:\n"
        "        await rt.pool('p').add_many('noop', [(i,) for i in range(1000)])\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # As a user's shell runs it: asyncio's debug mode (the test run's) would log
    # any step slower than 0.1 s on a loaded machine to the stderr checked below.
    env.pop("PYTHONASYNCIODEBUG", None)
    subprocess.run([sys.executable, str(seed), app.db], env=env, check=True, timeout=30)
    ls = subprocess.Popen(
        [sys.executable, "-m", "taskrt", "ls", "--db", app.db, "--json", "--limit", "1000"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert ls.stdout is not None and ls.stderr is not None
    assert ls.stdout.read(100)  # then stop reading, as head does
    ls.stdout.close()
    err = ls.stderr.read().decode()
    ls.stderr.close()
    assert ls.wait(30) == 0 and err == ""


def test_watch_says_why_a_job_waits_and_how_long_the_job_took() -> None:
    view = JobView(5)
    view.apply(
        {
            "type": "snapshot",
            "job": {"task": "send", "status": "WAITING", "created_at": 100.0, "run_at": 100.0},
        }
    )
    view.apply({"type": "started", "status": "RUNNING", "at": 101.0, "attempt": 1})
    view.apply(
        {
            "type": "retrying",
            "status": "WAITING",
            "at": 102.0,
            "error": "ValueError: nope",
            "run_at": 105.0,
        }
    )
    line = bar_line(view, now=102.0, columns=200)
    assert "WAITING" in line and "retry 2 in 3.0 s after: ValueError: nope" in line
    view.apply({"type": "started", "status": "RUNNING", "at": 105.0, "attempt": 2})
    assert "ValueError" not in bar_line(view, now=105.5)  # the running attempt has no error
    view.apply({"type": "success", "status": "SUCCESS", "at": 106.0, "result": 1})
    assert summary_line(view) == "job 5 SUCCESS in 6.00s (2 attempts, the last 1.00s): 1"

    delayed = JobView(6)
    delayed.apply(
        {"type": "snapshot", "job": {"task": "send", "status": "WAITING", "run_at": 700.0}}
    )
    assert "runs in 10 min" in bar_line(delayed, now=100.0)


def test_ls_says_when_a_delayed_job_runs(capsys: pytest.CaptureFixture[str], app: App) -> None:
    job = add_json(capsys, app, "resize", "--delay", "10m")
    code, out, _ = run(capsys, app, "ls", "--db", app.db)
    [row] = [line for line in out.splitlines() if line.startswith(str(job["id"]))]
    assert code == 0 and "WAITING" in row and re.search(r"runs in (9|10) min", row)


async def test_jobs_held_for_other_jobs_say_why_and_are_not_scheduled(
    capsys: pytest.CaptureFixture[str], db_path: Path
) -> None:
    # Held for its parents or its batch, a job is stored at run_at BLOCKED_AT (year
    # 9999): ls said "runs in 2912102.3 d", get "run at 9999-12-31 23:59:59", and
    # `bulk cancel --scheduled` took them.
    rt = Runtime(str(db_path))

    @rt.task
    async def step(job: JobContext, n: int = 0) -> int:
        return n

    @rt.task(batch=Batch(max_size=10, max_wait=3600))
    async def digest(job: JobContext, items: list[int]) -> int:
        return sum(items)

    async with rt:
        flow = await rt.chain(step.options(delay=3600).s(1), step.s())
        later, child = flow.jobs
        member = await rt.add(digest.options(batch_key="u1"), 1)

    def cli_run(*argv: str) -> tuple[int, str]:
        code = cli.main([*argv, "--db", str(db_path)])
        return code, capsys.readouterr().out

    code, out = await asyncio.to_thread(cli_run, "ls")
    rows = {int(line.split()[0]): line for line in out.splitlines()[1:]}
    assert rows[child].endswith("waits for its parents"), rows[child]
    assert rows[member].endswith("batch 'u1' gathering"), rows[member]
    assert re.search(r"runs in (59|60) min$", rows[later]), rows[later]
    code, out = await asyncio.to_thread(cli_run, "get", str(child))
    assert re.search(r"^  run at +waits for its parents$", out, re.M), out
    code, out = await asyncio.to_thread(cli_run, "ls", "--scheduled", "--json")
    assert [j["id"] for j in json.loads(out)["jobs"]] == [later]
    code, out = await asyncio.to_thread(cli_run, "bulk", "cancel", "--scheduled", "--yes")
    assert (code, out) == (0, "cancelled 1 of 1 job\n")
    code, out = await asyncio.to_thread(cli_run, "get", str(member), "--json")
    assert json.loads(out)["status"] == "WAITING"


def test_bulk_is_a_dry_run_until_yes(capsys: pytest.CaptureFixture[str], app: App) -> None:
    first = add_json(capsys, app, "resize")["id"]
    second = add_json(capsys, app, "resize")["id"]
    later = add_json(capsys, app, "resize", "--delay", "1h")["id"]
    code, out, _ = run(capsys, app, "ls", "--db", app.db, "--scheduled", "--json")
    assert [j["id"] for j in json.loads(out)["jobs"]] == [later]
    code, out, _ = run(capsys, app, "bulk", "cancel", "--status", "WAITING", "--db", app.db)
    assert (code, out) == (0, "would cancel 3 jobs; add --yes to do it\n")
    code, out, _ = run(capsys, app, "get", str(first), "--db", app.db, "--json")
    assert json.loads(out)["status"] == "WAITING"  # a dry run changes nothing
    code, out, _ = run(
        capsys,
        app,
        "bulk",
        "cancel",
        "--id",
        str(first),
        "--id",
        str(second),
        "--yes",
        "--db",
        app.db,
    )
    assert (code, out) == (0, "cancelled 2 of 2 jobs\n")
    code, out, _ = run(
        capsys, app, "bulk", "purge", "--status", "CANCELLED", "--yes", "--db", app.db
    )
    assert (code, out) == (0, "purged 2 of 2 jobs\n")
    code, _, err = run(capsys, app, "get", str(first), "--db", app.db)
    assert code == 3
    code, out, _ = run(capsys, app, "run-now", str(later), "--db", app.db, "--json")
    assert code == 0 and json.loads(out)["run_at"] <= time.time()
    code, _, err = run(capsys, app, "bulk", "retry", "--db", app.db)
    assert code == 2 and "which jobs?" in err


@pytest.mark.server
async def test_the_commands_work_against_a_server_with_its_token(
    capsys: pytest.CaptureFixture[str], db_path: Path, server: Serve
) -> None:
    """--url: a container's jobs without its database file (here: a real server)."""
    rt, gates = owner(str(db_path))
    rt.schedule("nightly", "steps", "0 3 * * *", kwargs={"n": 0})

    async def cli_main(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(cli.main, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    async with server(create_app(rt, token="s3cret-token-for-the-cli")) as url:
        first = await rt.add("steps", n=0, fail=True)
        gate(gates, first).put_nowait(None)
        await rt.wait(first, timeout=5)
        later = await rt.enqueue("steps", kwargs={"n": 0}, delay=600)
        creds = ["--url", url, "--token", "s3cret-token-for-the-cli"]

        code, _, err = await cli_main("ls", "--url", url)  # no token
        assert code == 4 and "401" in err and "--token" in err
        code, out, _ = await cli_main("ls", *creds, "--json")
        assert [j["id"] for j in json.loads(out)["jobs"]] == [later, first]
        code, out, _ = await cli_main("ls", *creds, "--scheduled")
        assert code == 0 and "runs in" in out and str(later) in out
        code, out, _ = await cli_main("get", str(first), *creds)
        assert code == 0 and "FAILURE" in out and "it broke" in out
        code, _, err = await cli_main("get", "999", *creds)
        assert (code, err) == (3, "taskrt: error: no job with id 999\n")
        code, out, _ = await cli_main("stats", *creds)
        assert code == 0 and f":{os.getpid()}:" in out  # the server's owner, from /health
        code, out, _ = await cli_main("schedules", *creds)
        assert code == 0 and "nightly" in out
        code, out, _ = await cli_main("bulk", "retry", "--status", "FAILURE", *creds)
        assert (code, out) == (0, "would retry 1 job; add --yes to do it\n")
        code, out, _ = await cli_main("retry", str(first), *creds)
        assert code == 0
        gate(gates, first).put_nowait(None)
        await rt.wait(first, timeout=5)
        code, out, _ = await cli_main("run-now", str(later), *creds)
        assert code == 0 and "runs now" in out
        gate(gates, later).put_nowait(None)
        assert (await rt.wait(later, timeout=5)).status is JobStatus.SUCCESS
        code, _, err = await cli_main("cancel", str(later), *creds)
        assert code == 2 and "cannot cancel" in err  # finished: refused as from a database
        code, out, _ = await cli_main("bulk", "purge", "--older-than", "0", "--yes", *creds)
        assert code == 0 and out.startswith("purged 2 of 2 jobs")
        code, _, err = await cli_main("ls", *creds, "--db", str(db_path))
        assert code == 2 and "not both" in err


def test_add_takes_the_flow_options_and_ls_says_why_a_job_waits(
    capsys: pytest.CaptureFixture[str], app: App
) -> None:
    first = add_json(
        capsys, app, "resize", "--lock", "acct:1", "--unique-key", "k", "--unique-for", "1h"
    )
    assert (first["lock"], first["unique_key"]) == ("acct:1", "k")
    again = add_json(capsys, app, "resize", "--unique-key", "k")
    assert again["id"] == first["id"]  # within the window
    code, _, err = run(
        capsys,
        app,
        "add",
        "resize",
        "--unique-key",
        "k",
        "--on-conflict",
        "raise",
        "--app",
        app.ref,
    )
    assert code != 0 and f"held by job {first['id']}" in err
    soon = add_json(capsys, app, "resize", "--deadline", "1h")
    assert 3500 < soon["deadline"] - time.time() <= 3600
    code, _, err = run(capsys, app, "add", "resize", "--deadline", "soon", "--app", app.ref)
    assert code != 0 and "--deadline" in err


def test_ls_names_what_holds_a_waiting_job_back() -> None:
    waiting = JobInfo(1, "t", "p", JobStatus.WAITING, lock="acct:1", waiting_reason="locked")
    assert reason_note(waiting) == "locked: acct:1"
    assert reason_note(replace(waiting, waiting_reason="rate_limited")) == "rate limited"
    assert reason_note(replace(waiting, waiting_reason="paused")) == "pool paused"
    assert reason_note(replace(waiting, waiting_reason=None)) == ""
    assert reason_note(replace(waiting, status=JobStatus.RUNNING)) == ""


async def test_workflow_shows_a_workflows_jobs_and_cancels_it(
    capsys: pytest.CaptureFixture[str], db_path: Path, server: Serve
) -> None:
    rt, gates = owner(str(db_path))
    steps = rt.tasks["steps"]

    async def cli_main(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(cli.main, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    async with server(create_app(rt)) as url:
        from taskrt.definitions import Task

        flow = await rt.group([Task(steps).s(0), Task(steps).s(0)]).then(Task(steps).s())
        first, second, callback = flow.jobs
        gate(gates, first).put_nowait(None)
        await rt.wait(first, timeout=5)
        code, out, _ = await cli_main("workflow", str(flow.id), "--url", url)
        assert code == 0, out
        lines = out.splitlines()
        assert lines[0].startswith(f"workflow {flow.id}  RUNNING  33%")
        row = next(line for line in lines if line.startswith(str(callback)))
        assert "WAITING waits for its parents" in row and row.endswith(f"{first},{second}")
        code, out, _ = await cli_main("workflow", str(flow.id), "--db", str(db_path), "--json")
        assert code == 0 and json.loads(out)["edges"] == [[callback, first], [callback, second]]
        code, out, _ = await cli_main("workflow", str(flow.id), "--cancel", "--url", url)
        row = next(line for line in out.splitlines() if line.startswith(str(callback)))
        assert code == 0 and "CANCELLED" in row
        gate(gates, second).put_nowait(None)  # it was told to stop; let it end
        await rt.wait(callback, timeout=5)
        assert (await rt.workflow(flow.id)).status is JobStatus.CANCELLED
        code, _, err = await cli_main("workflow", "999", "--url", url)
        assert code == 3 and "999" in err


def test_a_text_metadata_filter_that_reads_as_json_crosses_to_the_server_as_text() -> None:
    """``ls --url --meta 'user="42"'`` sent ``42``, which the server reads as the
    number: it listed the jobs whose user is 42, not "42" as ``--db`` did."""
    from taskrt.cli.remote import _filter_params
    from taskrt.web.inputs import query_scalar

    metadata = {"user": "42", "flag": "true", "n": 42, "t": "plain", "q": '"x"'}
    params = _filter_params(None, None, None, metadata, False, None)
    assert {key: query_scalar(value) for key, value in params.items()} == {
        f"metadata.{key}": value for key, value in metadata.items()
    }


def test_job_texts_reach_the_terminal_on_one_line_with_controls_escaped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A job's error and messages are what its input made them: ``ls``, ``get`` and
    ``watch``'s last line printed ESC sequences (cursor up, colours) and a
    right-to-left override as they were, which rewrite what an operator reads."""
    db = str(tmp_path / "odd.db")
    nasty = "boom line1\nline2\r\x1b[1Aup\u202eRTL"

    async def make() -> int:
        rt = Runtime(db)

        @rt.task(attempts=1)
        async def odd(job: JobContext) -> None:
            await job.progress(1, 2, "hello\x1b[31mred")
            raise RuntimeError(nasty)

        async with rt:
            job_id = await rt.add(odd)
            await rt.wait(job_id, timeout=5)
        return job_id

    job_id = asyncio.run(make())
    for argv in (["ls"], ["get", str(job_id)]):
        assert cli.main([*argv, "--db", db]) == 0
        out, _ = capsys.readouterr()
        assert "\x1b" not in out and "\u202e" not in out and "\r" not in out, out
        assert "\\x1b[1Aup\\u202e" in out, out
    view = JobView(job_id)
    view.apply({"type": "failure", "status": "FAILURE", "at": 1.0, "error": nasty})
    assert summary_line(view) == (
        f"job {job_id} FAILURE after 0 attempt(s): boom line1 line2 \\x1b[1Aup\\u202eRTL"
    )
