"""Several processes on one database, for real: ``uvicorn --workers 3`` and
``gunicorn -w 3`` (uvicorn's worker class) serving one app on one SQLite file
(and, for the SIGKILL, on one PostgreSQL schema).

Every request goes over a fresh TCP connection (``Connection: close`` and no
kept-alive connections), so the kernel hands requests to different worker
processes; which one answered is learnt from ``GET /health`` on the same
connection (``ownership.role``). The owner is killed with a real SIGKILL (its
pid is the middle part of ``ownership.owner``).

What is checked:

- every process starts and serves: one owner, connected standbys, no exit;
- jobs added through any process run to SUCCESS, and SSE streams read from
  the owner and from standbys carry snapshot → progress… → success;
- SIGKILL of the owner mid-run: a standby takes over within a second; every
  acknowledged (201) job ends in SUCCESS (the interrupted ones run again);
  every open stream ends with its terminal event, reconnecting with
  ``Last-Event-ID`` when its connection breaks or ends early, with no
  duplicate event id and increasing ids (a ``snapshot`` may reset the
  position, see ``check_stream``);
- a pool paused and resumed through a standby pauses and resumes the owner's pool;
- the moment between the owner's death and the takeover, made to last (a
  ``workers=False`` client and no standby): a stream resumed there with
  ``Last-Event-ID`` goes on to its end, repeating no event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pg_server
import pytest
from httpx_sse import aconnect_sse

from taskrt import Runtime

pytestmark = pytest.mark.server

WORKERS = 3
TERMINAL_EVENTS = frozenset({"success", "failure", "cancelled"})
TERMINAL_STATUSES = frozenset({"SUCCESS", "FAILURE", "CANCELLED"})
TAKEOVER_LIMIT = 1.0
"""Seconds from the SIGKILL until a live new owner answers (runtime note 3)."""
POLL_SLACK = 0.2
"""What polling /health over fresh connections may add to the measured takeover."""
TLS = ssl.create_default_context()
"""Shared by every client: httpx builds a context per client otherwise (some 25 ms
of CPU each, enough to stall the test's event loop when many streams reconnect
at once). The servers speak plain HTTP; it is never used."""

APP = textwrap.dedent(
    """
    import asyncio
    import os

    from taskrt import JobContext, Runtime
    from taskrt.web import create_app

    # Progress writes coalesced over 0.3 s: the database lags what subscribers
    # saw by several events, as it may under load (what a takeover must cope with).
    rt = Runtime(
        os.environ["TASKRT_TEST_DB"],
        workers=os.environ["TASKRT_TEST_ROLE"] != "client",
        mode=os.environ.get("TASKRT_TEST_MODE"),
        progress_interval=0.3,
        busy_timeout=float(os.environ.get("TASKRT_TEST_BUSY_TIMEOUT", "5")),
    )
    rt.pool("work", concurrency=100)


    @rt.task(pool="work", attempts=3)
    async def work(job: JobContext, n: int, delay: float) -> int:
        for i in range(n):
            await asyncio.sleep(delay)
            await job.progress(i + 1, n, f"step {i + 1}")
        return n


    app = create_app(rt, heartbeat=0.5)
    """
)

COMMANDS: dict[str, Callable[[int], list[str]]] = {
    "single": lambda port: [
        sys.executable,
        "-m",
        "uvicorn",
        "app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ],
    "uvicorn": lambda port: [
        sys.executable,
        "-m",
        "uvicorn",
        "app:app",
        "--workers",
        str(WORKERS),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "1",
    ],
    "gunicorn": lambda port: [
        sys.executable,
        "-m",
        "gunicorn",
        "-k",
        "uvicorn_worker.UvicornWorker",
        "-w",
        str(WORKERS),
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "--graceful-timeout",
        "1",
        "app:app",
    ],
}


@dataclass
class Server:
    """One server (a supervisor and its worker processes) on 127.0.0.1."""

    kind: str
    base: str
    proc: subprocess.Popen[bytes]
    log: Path
    workers: int

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def assert_running(self) -> None:
        assert self.proc.poll() is None, f"{self.kind} exited:\n{self.logs()[-4000:]}"


def pid_of(owner: str) -> int:
    """The pid in an owner name (``host:pid:random``)."""
    return int(owner.split(":")[1])


def process_state(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent pid (``/proc``), ``None`` when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return state, int(ppid)


def alive_worker(server: Server, pid: int) -> bool:
    """Whether ``pid`` is a running (not dead, not a zombie) worker of ``server``."""
    found = process_state(pid)
    return found is not None and found[0] not in "ZX" and found[1] == server.proc.pid


def fresh_client(base: str) -> httpx.AsyncClient:
    """A client that opens a new connection for every request."""
    return httpx.AsyncClient(
        base_url=base,
        headers={"Connection": "close"},
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=httpx.Timeout(5.0),
        verify=TLS,
    )


def health_of(server: Server) -> dict[str, Any]:
    with httpx.Client(timeout=1.0, headers={"Connection": "close"}, verify=TLS) as client:
        response = client.get(f"{server.base}/health")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_ready(server: Server, timeout: float = 20.0) -> None:
    """Until the server's processes are connected: an owner with every other
    worker as a peer, or a client connected to the owner."""
    deadline = time.monotonic() + timeout
    while True:
        server.assert_running()
        with contextlib.suppress(httpx.TransportError, AssertionError):
            ownership = health_of(server)["ownership"]
            if ownership["role"] == "client" and ownership["reachable"]:
                return
            if ownership["role"] == "owner" and ownership["peers"] >= server.workers - 1:
                return
        assert time.monotonic() < deadline, f"not ready:\n{server.logs()[-4000:]}"
        time.sleep(0.02)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


Launch = Callable[..., Server]


@pytest.fixture
def launch(tmp_path: Path, free_port: int) -> Iterator[Launch]:
    """``launch("uvicorn")`` / ``launch("gunicorn")``: the app served by
    ``WORKERS`` processes; ``launch("single")``: by one uvicorn process
    (``client=True``: a runtime with ``workers=False``; ``busy_timeout``: the
    runtime's; ``ready=False``: returned at once, not once it is connected).
    All on one database (a SQLite file); every server's process group is
    killed at the end."""
    yield from launcher(tmp_path, free_port, str(tmp_path / "jobs.db"))


@pytest.fixture
def launch_pg(tmp_path: Path, free_port: int) -> Iterator[Launch]:
    """``launch`` on PostgreSQL: a schema of the test's own on the test server."""
    url = f"{pg_server.require()}?schema={pg_server.fresh_schema(tmp_path)}"
    yield from launcher(tmp_path, free_port, url, mode="owner")  # one owner, standbys


def launcher(
    tmp_path: Path, free_port: int, database: str, *, mode: str | None = None
) -> Iterator[Launch]:
    (tmp_path / "app.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRT_")}
    env["TASKRT_TEST_DB"] = database
    if mode is not None:
        env["TASKRT_TEST_MODE"] = mode
    env["PYTHONUNBUFFERED"] = "1"
    servers: list[Server] = []

    def start(
        kind: str, *, client: bool = False, busy_timeout: float = 5.0, ready: bool = True
    ) -> Server:
        port = unused_port() if servers else free_port
        log = tmp_path / f"{kind}-{len(servers)}.log"
        role = "client" if client else "worker"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                COMMANDS[kind](port),
                cwd=tmp_path,
                env={
                    **env,
                    "TASKRT_TEST_ROLE": role,
                    "TASKRT_TEST_BUSY_TIMEOUT": str(busy_timeout),
                },
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one
            )
        workers = 1 if kind == "single" else WORKERS
        server = Server(kind, f"http://127.0.0.1:{port}", proc, log, workers)
        servers.append(server)
        if ready:
            wait_ready(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=10)
            # Shown by pytest when the test failed.
            print(f"--- {server.kind} log ({server.base}) ---\n{server.logs()[-8000:]}")


# -- what the tests read -----------------------------------------------------------------


@dataclass
class Seen:
    """One SSE event as a client received it."""

    id: int
    event: str
    data: dict[str, Any]


@dataclass
class Followed:
    """Everything one stream's client saw, across its reconnections."""

    job_id: int
    events: list[Seen] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    """The role of the process that served each connection."""
    connections: list[str] = field(default_factory=list)
    """How each connection went (for the report when a check fails)."""

    def __str__(self) -> str:
        kinds = [f"{e.event}:{e.id}" for e in self.events]
        return f"job {self.job_id}: {kinds} via {self.roles}; {self.connections}"


async def follow(base: str, job_id: int, first: str | None = None) -> Followed:
    """Read a job's stream to its terminal event (see ``follow_into``)."""
    seen = Followed(job_id)
    await follow_into(base, seen, first)
    return seen


async def follow_into(base: str, seen: Followed, first: str | None = None) -> None:
    """Read a job's stream to its terminal event, reconnecting (a fresh connection
    each time, with ``Last-Event-ID``) whenever a connection breaks or ends first.

    ``first``: the role of the process the first connection must reach (the
    kernel hands connections to the workers as it likes: try fresh ones until
    one lands there).
    """
    try:
        async with asyncio.timeout(20):
            await _follow(base, seen, first)
    except TimeoutError:
        raise AssertionError(f"the stream did not end within 20 s: {seen}") from None


async def _follow(base: str, seen: Followed, first: str | None) -> None:
    timeout = httpx.Timeout(5.0, read=5.0)  # heartbeats come every 0.5 s
    misses = 0
    while True:
        headers = {} if not seen.events else {"Last-Event-ID": str(seen.events[-1].id)}
        try:
            async with httpx.AsyncClient(
                base_url=base,
                timeout=timeout,
                verify=TLS,
                limits=httpx.Limits(max_connections=1),
            ) as client:
                # The same (kept-alive) connection answers both requests.
                health = await client.get("/health")
                role = health.json()["ownership"]["role"]
                if first is not None and not seen.roles and role != first:
                    misses += 1
                    assert misses < 300, f"no connection reached the {first}"
                    await asyncio.sleep(0.002)
                    continue
                async with aconnect_sse(
                    client, "GET", f"/jobs/{seen.job_id}/events", headers=headers
                ) as source:
                    status = source.response.status_code
                    if status != 200:
                        await source.response.aread()
                        seen.connections.append(f"{status} {source.response.text[:200]}")
                        if status == 204:
                            return  # check_stream says what was missing
                        await asyncio.sleep(0.05)
                        continue
                    seen.roles.append(role)
                    async for sse in source.aiter_sse():
                        if not sse.data:
                            # httpx-sse yields the blank line after a heartbeat
                            # comment as an event with no data, which the SSE
                            # spec (and a browser) does not dispatch.
                            continue
                        seen.events.append(Seen(int(sse.id), sse.event, sse.json()))
                        if sse.event in TERMINAL_EVENTS:
                            seen.connections.append("ended with its terminal event")
                            return
                    seen.connections.append("ended early")
        except httpx.TransportError as exc:
            seen.connections.append(f"broke: {type(exc).__name__}")
            await asyncio.sleep(0.02)


def parse_sse(text: str) -> list[Seen]:
    """The events of a whole stream's body (frames with an ``id``; comments skipped)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, sep, value = line.partition(":")
            if sep and name:
                fields[name] = value.removeprefix(" ")
        if "data" in fields:
            events.append(Seen(int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


def check_stream(seen: Followed) -> None:
    """What a client following one job must have seen, across reconnections.

    Ids never repeat, and each event's id is above the one before it, except
    that a ``snapshot`` may reset the position: a reconnect whose
    ``Last-Event-ID`` the owner's replay window no longer covers (after a
    takeover) gets a fresh snapshot, whose id is the job's current ``seq``
    (web/streams.py note 2); a process that cannot reach the owner for a
    moment reads that ``seq`` from the database, where it may be behind what
    the dead owner had published.
    """
    assert seen.events, str(seen)
    assert seen.events[0].event == "snapshot", str(seen)
    assert seen.events[-1].event in TERMINAL_EVENTS, f"no terminal event: {seen}"
    terminal = [e for e in seen.events if e.event in TERMINAL_EVENTS]
    assert len(terminal) == 1, f"more than one terminal event: {seen}"
    ids = [e.id for e in seen.events]
    assert len(set(ids)) == len(ids), f"a duplicate event id: {seen}"
    for before, event in zip(seen.events, seen.events[1:], strict=False):
        if event.event != "snapshot":
            assert event.id > before.id, f"id {event.id} after {before.id}: {seen}"


async def add_job(client: httpx.AsyncClient, n: int, delay: float) -> int:
    response = await client.post("/jobs", json={"task": "work", "kwargs": {"n": n, "delay": delay}})
    assert response.status_code == 201, response.text
    job_id: int = response.json()["id"]
    return job_id


async def wait_terminal(base: str, ids: list[int], timeout: float = 15.0) -> dict[int, Any]:
    """Every job's final state, read over fresh connections."""
    final: dict[int, Any] = {}
    async with fresh_client(base) as client, asyncio.timeout(timeout):
        while len(final) < len(ids):
            for job_id in ids:
                if job_id in final:
                    continue
                with contextlib.suppress(httpx.TransportError):
                    response = await client.get(f"/jobs/{job_id}")
                    if response.status_code == 200 and response.json()["status"] in (
                        TERMINAL_STATUSES
                    ):
                        final[job_id] = response.json()
            await asyncio.sleep(0.05)
    return final


async def roles_over_fresh_connections(
    server: Server, at_least: int = 30, at_most: int = 200
) -> list[dict[str, Any]]:
    """``/health`` over fresh connections, until both roles answered (after ``at_least``)."""
    answers: list[dict[str, Any]] = []
    async with fresh_client(server.base) as client:
        while len(answers) < at_most:
            response = await client.get("/health")
            assert response.status_code == 200, response.text
            answers.append(response.json())
            roles = {a["ownership"]["role"] for a in answers}
            if len(answers) >= at_least and roles >= {"owner", "standby"}:
                break
    return answers


# -- every process starts and serves -----------------------------------------------------


async def check_everyone_serves(server: Server) -> int:
    """One owner, the others its connected standbys; returns the owner's pid."""
    answers = await roles_over_fresh_connections(server)
    assert all(a["status"] == "ok" for a in answers), answers
    owners = {a["ownership"]["owner"] for a in answers}
    assert len(owners) == 1 and None not in owners, owners
    (owner,) = owners
    roles = [a["ownership"]["role"] for a in answers]
    assert set(roles) == {"owner", "standby"}, roles
    for answer in answers:
        assert answer["ownership"]["reachable"] is True, answer
        if answer["ownership"]["role"] == "owner":
            assert answer["ownership"]["peers"] == WORKERS - 1, answer
    pid = pid_of(owner)
    assert alive_worker(server, pid), (pid, process_state(pid))
    server.assert_running()
    return pid


async def test_every_uvicorn_worker_starts_and_serves(launch: Launch) -> None:
    await check_everyone_serves(launch("uvicorn"))


# -- jobs and streams through any process --------------------------------------------------


async def test_jobs_added_anywhere_succeed_and_streams_from_every_process_carry_progress(
    launch: Launch,
) -> None:
    server = launch("uvicorn")
    n = 6
    async with fresh_client(server.base) as client:
        # Paused until the streams are open: on a loaded machine a job could end
        # before its stream opens, which then has its final snapshot alone.
        response = await client.patch("/pools/work", json={"paused": True})
        assert response.status_code == 200, response.text
        ids = [await add_job(client, n, 0.1) for _ in range(6)]
    # Each job followed by three streams: one served by the owner, two by standbys.
    places = ["owner", "standby", "standby"]
    following = asyncio.gather(
        *(follow(server.base, job_id, place) for place in places for job_id in ids)
    )
    await asyncio.sleep(1.0)
    async with fresh_client(server.base) as client:
        response = await client.patch("/pools/work", json={"paused": False})
        assert response.status_code == 200, response.text
    streams = await following
    for seen in streams:
        check_stream(seen)
        assert seen.connections == ["ended with its terminal event"], str(seen)
        kinds = [e.event for e in seen.events]
        assert kinds[0] == "snapshot" and kinds[-1] == "success", str(seen)
        assert set(kinds[1:-1]) <= {"started", "progress"} and "progress" in kinds, str(seen)
        progress = [e.data["current"] for e in seen.events if e.event == "progress"]
        assert progress == sorted(set(progress)) and progress[-1] == n, str(seen)
        assert seen.events[-1].data["result"] == n
    assert [seen.roles[0] for seen in streams] == [p for p in places for _ in ids]
    # Resuming a finished job's stream, on whichever process answers: from the
    # middle, the rest with no gap or duplicate (the owner's replay window) or,
    # if the window lost it, the terminal event once; from the end, 204.
    async with fresh_client(server.base) as client:
        for seen in streams[: len(ids)]:
            url = f"/jobs/{seen.job_id}/events"
            middle = seen.events[len(seen.events) // 2]
            expected = [(e.id, e.event) for e in seen.events if e.id > middle.id]
            for _ in range(3):
                response = await client.get(url, headers={"Last-Event-ID": str(middle.id)})
                assert response.status_code == 200, response.text
                rest = [(e.id, e.event) for e in parse_sse(response.text)]
                assert rest in (expected, expected[-1:]), (rest, str(seen))
                last = str(seen.events[-1].id)
                response = await client.get(url, headers={"Last-Event-ID": last})
                assert response.status_code == 204, response.text
    final = await wait_terminal(server.base, ids)
    assert {job_id: info["status"] for job_id, info in final.items()} == dict.fromkeys(
        ids, "SUCCESS"
    )
    assert all(info["result"] == n for info in final.values())
    server.assert_running()


# -- the owner killed mid-run ---------------------------------------------------------------


@dataclass
class Adds:
    """Jobs added over fresh connections while the owner dies."""

    acknowledged: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


async def keep_adding(base: str, adds: Adds, stop: asyncio.Event) -> None:
    async with fresh_client(base) as client:
        while not stop.is_set():
            try:
                response = await client.post(
                    "/jobs", json={"task": "work", "kwargs": {"n": 2, "delay": 0.02}}
                )
            except httpx.TransportError as exc:
                adds.refused.append(type(exc).__name__)
            else:
                if response.status_code == 201:
                    adds.acknowledged.append(response.json()["id"])
                else:
                    adds.refused.append(f"{response.status_code} {response.text[:200]}")
            await asyncio.sleep(0.005)


def kill_owner_and_measure(server: Server, pid: int) -> tuple[float, int]:
    """SIGKILL the owner; seconds until ``/health`` (fresh connections) names a
    live new owner among the server's workers, and that owner's pid.

    Runs in a thread of its own with a blocking client, so that what the test's
    event loop does meanwhile (the streams reconnecting) adds nothing to the figure.
    """
    assert alive_worker(server, pid), "refusing to kill a process that is not the owner worker"
    timeline: list[str] = []
    with httpx.Client(
        base_url=server.base,
        headers={"Connection": "close"},
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=0.5,
        verify=TLS,
    ) as client:
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while True:
            elapsed = time.monotonic() - started
            assert elapsed < 10, f"no new owner after 10 s: {timeline}\n{server.logs()[-4000:]}"
            try:
                response = client.get("/health")
            except httpx.TransportError as exc:
                timeline.append(f"{elapsed:.3f} {type(exc).__name__}")
                continue
            ownership = response.json()["ownership"]
            owner = ownership["owner"]
            timeline.append(f"{elapsed:.3f} {ownership['role']} {owner}")
            if owner is not None and pid_of(owner) != pid and alive_worker(server, pid_of(owner)):
                took = time.monotonic() - started
                print(f"{server.kind}: /health after the SIGKILL: {timeline[-12:]}")
                return took, pid_of(owner)


async def check_owner_killed_mid_run(server: Server, jobs: int, streams_per_job: int) -> float:
    """Long jobs followed by streams, and adds going on, when the owner is killed."""
    old = await check_everyone_serves(server)
    n, delay = 20, 0.05  # one second per job
    async with fresh_client(server.base) as client:
        long_ids = [await add_job(client, n, delay) for _ in range(jobs)]
    # Half the streams start on the owner (their connections break when it dies),
    # half on standbys (which lose the owner's events when it dies).
    places = [("owner", "standby")[i % 2] for i in range(streams_per_job)]
    plan = [(Followed(job_id), place) for place in places for job_id in long_ids]
    streams = [seen for seen, _ in plan]
    followers = [asyncio.create_task(follow_into(server.base, *each)) for each in plan]
    adds = Adds()
    stop = asyncio.Event()
    adders = [asyncio.create_task(keep_adding(server.base, adds, stop)) for _ in range(2)]
    try:
        # Mid-run: every stream has seen its job make progress, and no job has finished.
        def lacking() -> list[Followed]:
            return [
                seen
                for seen in streams
                if not any(e.event == "progress" and e.data["current"] >= 5 for e in seen.events)
            ]

        try:
            async with asyncio.timeout(10):
                while lacking():
                    await asyncio.sleep(0.01)
        except TimeoutError:
            async with fresh_client(server.base) as client:
                states = {
                    seen.job_id: (await client.get(f"/jobs/{seen.job_id}")).json().get("status")
                    for seen in lacking()
                }
            pytest.fail(f"no progress seen in 10 s (jobs {states}): {[str(x) for x in lacking()]}")
        assert not any(seen.connections for seen in streams), [str(x) for x in streams]
        takeover, new = await asyncio.to_thread(kill_owner_and_measure, server, old)
        await asyncio.sleep(0.3)  # adds go on through the takeover
    finally:
        stop.set()
        await asyncio.gather(*adders)
    server.assert_running()
    await asyncio.wait_for(asyncio.gather(*followers), 20)
    assert [seen.roles[0] for seen in streams] == [place for _, place in plan]
    for seen in streams:
        check_stream(seen)
    # The interrupted jobs ran again (no attempt charged) and every acknowledged add ran.
    final = await wait_terminal(server.base, long_ids + adds.acknowledged)
    statuses = {job_id: info["status"] for job_id, info in final.items()}
    assert statuses == dict.fromkeys(long_ids + adds.acknowledged, "SUCCESS"), statuses
    assert all(final[job_id]["result"] == n for job_id in long_ids)
    # ... once more each: the dead owner's runs were interrupted, not finished.
    assert all(final[job_id]["recoveries"] == 1 for job_id in long_ids), final
    assert adds.acknowledged, adds
    # The new owner is in charge, and every process knows it.
    answers = await roles_over_fresh_connections(server, at_least=10)
    assert [a for a in answers if a["status"] != "ok"] == []
    assert {pid_of(a["ownership"]["owner"]) for a in answers} == {new}, answers
    reconnects = sum(len(seen.connections) - 1 for seen in streams)
    assert reconnects > 0, "no stream was cut by the owner's death: nothing was tested"
    print(
        f"{server.kind}: took over in {takeover:.3f} s; {len(adds.acknowledged)} adds "
        f"acknowledged, {len(adds.refused)} refused {sorted(set(adds.refused))}; "
        f"{reconnects} stream reconnects"
    )
    assert takeover < TAKEOVER_LIMIT + POLL_SLACK, f"the takeover took {takeover:.3f} s"
    return takeover


async def test_sigkill_of_the_uvicorn_owner_mid_run(launch: Launch) -> None:
    await check_owner_killed_mid_run(launch("uvicorn"), jobs=8, streams_per_job=2)


# -- pool actions through a standby ---------------------------------------------------------


async def test_sigkill_of_the_uvicorn_owner_mid_run_on_postgresql(launch_pg: Launch) -> None:
    """The owner's server-held lock goes with its session: a standby takes over as fast."""
    await check_owner_killed_mid_run(launch_pg("uvicorn"), jobs=8, streams_per_job=2)


async def test_pausing_and_resuming_the_pool_through_a_standby(
    launch: Launch,
) -> None:
    server = launch("uvicorn")
    for _ in range(50):
        # One connection (kept alive), so every request below reaches one process.
        standby = httpx.AsyncClient(
            base_url=server.base,
            limits=httpx.Limits(max_connections=1),
            timeout=5.0,
            verify=TLS,
        )
        if (await standby.get("/health")).json()["ownership"]["role"] == "standby":
            break
        await standby.aclose()
    else:
        pytest.fail("no request reached a standby")

    async def on_the_standby(body: dict[str, Any]) -> dict[str, Any]:
        role = (await standby.get("/health")).json()["ownership"]["role"]
        assert role == "standby", "the connection moved to another process"
        response = await standby.patch("/pools/work", json=body)
        assert response.status_code == 200, response.text
        pool: dict[str, Any] = response.json()
        return pool

    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(standby.aclose)
        client = await stack.enter_async_context(fresh_client(server.base))
        assert (await on_the_standby({"paused": True}))["paused"] is True
        for _ in range(5):  # every process sees the owner's pool paused
            assert (await client.get("/pools/work")).json()["paused"] is True
        job_id = await add_job(client, 1, 0.0)
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            assert (await client.get(f"/jobs/{job_id}")).json()["status"] == "WAITING"
            await asyncio.sleep(0.05)
        assert (await client.get("/pools/work")).json()["waiting"] == 1
        assert (await on_the_standby({"paused": False}))["paused"] is False
    final = await wait_terminal(server.base, [job_id], timeout=5)
    assert final[job_id]["status"] == "SUCCESS"
    server.assert_running()


# -- gunicorn --------------------------------------------------------------------------------


async def test_gunicorn_workers_serve_and_survive_a_sigkill_of_the_owner(
    launch: Launch,
) -> None:
    server = launch("gunicorn")
    await check_owner_killed_mid_run(server, jobs=4, streams_per_job=2)


# -- a start while the database takes no writes ------------------------------------------


async def test_uvicorn_workers_started_while_the_database_takes_no_writes_serve_and_own_later(
    launch: Launch, tmp_path: Path
) -> None:
    """A worker that takes the free ownership lock but cannot write its record
    (another process holds the write lock past the busy timeout here; a full disk
    does the same) starts as a standby, and one of them owns once writes succeed.
    Before, its start failed, and uvicorn stopped every worker ("Child process
    failed to start, stopping the parent process"): with the disk full, a kill -9
    of the owner took the whole server down for good, since the worker uvicorn
    started again found the lock free while the standby waited to try its
    takeover again."""
    path = tmp_path / "jobs.db"
    async with Runtime(str(path)):
        pass  # the database, made
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
        server = launch("uvicorn", busy_timeout=0.05, ready=False)
        roles: list[str] = []
        serving_since: float | None = None
        async with fresh_client(server.base) as client, asyncio.timeout(20):
            # Longer than three of uvicorn's looks at its workers (every 0.5 s).
            while serving_since is None or time.monotonic() - serving_since < 2.0:
                server.assert_running()
                with contextlib.suppress(httpx.TransportError):
                    response = await client.get("/health")
                    assert response.status_code == 200, response.text
                    roles.append(response.json()["ownership"]["role"])
                    serving_since = serving_since or time.monotonic()
                await asyncio.sleep(0.05)
        assert set(roles) == {"standby"}, roles
        assert "cannot record itself as the owner" in server.logs(), server.logs()[-4000:]
    finally:
        other.close()  # the write lock goes: the database takes writes again
    wait_ready(server)  # an owner, the others its standbys
    async with fresh_client(server.base) as client:
        job_id = await add_job(client, 2, 0.01)
    final = await wait_terminal(server.base, [job_id])
    assert final[job_id]["status"] == "SUCCESS", final


# -- a stream resumed where no owner is reachable ------------------------------------------


async def test_a_stream_resumed_while_no_owner_is_reachable_repeats_no_event_id(
    launch: Launch,
) -> None:
    """What a standby does in the moment between the owner's death and the
    takeover, made to last: a client process (``workers=False``, never takes
    over) serves a job's stream when the owner is killed; the stream goes on in
    the same response while no owner exists (it reads the database), and to the
    end once a new owner has taken over and run the job again. The client never
    sees an id twice."""
    owner = launch("single")
    client = launch("single", client=True)
    async with fresh_client(client.base) as http:
        job_id = await add_job(http, 30, 0.05)
    seen = Followed(job_id)
    reader = asyncio.create_task(follow_into(client.base, seen, "client"))
    async with asyncio.timeout(10):
        while not any(e.event == "progress" and e.data["current"] >= 3 for e in seen.events):
            await asyncio.sleep(0.01)
    os.killpg(owner.proc.pid, signal.SIGKILL)
    owner.proc.wait(timeout=10)
    async with asyncio.timeout(10):
        while health_of(client)["ownership"]["reachable"] is not False:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert not reader.done()  # the client's stream goes on from the database
    launch("single")  # a new owner: it recovers the job and runs it again
    await asyncio.wait_for(reader, 20)
    check_stream(seen)
    final = await wait_terminal(client.base, [job_id])
    assert final[job_id]["status"] == "SUCCESS", final
    assert final[job_id]["recoveries"] == 1, final
    assert seen.roles == ["client"], seen  # one response, from the kill to the end
