"""taskrt against peer job systems, measured in one run on this machine.

Run with ``python -m bench.compare`` after installing the peers
(``pip install -r bench/requirements-compare.txt``) and Debian's
``redis-server``. Prints one JSON line per figure (``docs/comparison.md`` says
how to read them):

- ``enqueue_rate``: 5,000 no-op jobs enqueued one after another by one
  producer, no worker running.
- ``end_to_end``: workers running at concurrency 10; the clock starts before
  the first of 5,000 sequential enqueues and stops when the 5,000th job has
  been processed.
- ``add_to_start_latency``: 200 jobs added at ~100/s; the job itself measures
  the time from just before its enqueue call to the start of its handler.

Systems: taskrt (SQLite file, ``synchronous=normal``, and ``full`` for
reference), Huey (``SqliteHuey`` file, consumer in a subprocess with 10 worker
threads), arq and SAQ (Redis, worker subprocess with 10 concurrent jobs) and
Celery (Redis broker, no result backend, ``celery worker`` with
``--pool threads -c 10`` and with ``--pool prefork -c 10``). Every peer runs
with its library's defaults plus that concurrency; worker log levels are set to
WARNING for all of them. Redis is a ``redis-server`` this script starts on
127.0.0.1 on a free port without persistence, and stops at the end.

Each system runs in its own subprocess (``--section``), bounded in time; its
worker runs in a further subprocess (``--worker``) in a process group of its
own that is killed at the end. A system that fails prints a JSON line with
``"error"`` for each figure it could not measure and the run goes on. The
peer libraries are imported only inside these functions: taskrt, its tests
and ``python -m bench`` never need them.

Cross-process times use ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for
every process of the machine). A worker-side hook (Huey's SIGNAL_COMPLETE,
arq's ``after_job_end``, SAQ's ``after_process``, Celery's ``task_postrun``)
counts finished jobs and writes the time of the last one to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

JOBS = 5_000
CONCURRENCY = 10
LAT_JOBS = 200
LAT_RATE = 100.0  # jobs per second

SECTION_TIMEOUT = 150.0  # one system, all three figures, worker start and stop
READY_TIMEOUT = 60.0  # a worker subprocess to report it is ready
DRAIN_TIMEOUT = 90.0  # all jobs of end_to_end processed
LAT_TIMEOUT = 30.0  # all latency jobs started, after the last add
STOP_GRACE = 10.0  # SIGTERM, then SIGKILL of the whole process group

REPO = Path(__file__).resolve().parent.parent
FIGURES = ("enqueue_rate", "end_to_end", "add_to_start_latency")

REDIS_DURABILITY = (
    "Redis in memory, persistence off (--save '' --appendonly no): no fsync; "
    "queued jobs are lost if Redis stops"
)

# name -> (package whose version is reported, needs Redis, durability, setup)
SYSTEMS: dict[str, tuple[str, bool, str, str]] = {
    "taskrt": (
        "taskrt",
        False,
        "SQLite file, WAL, synchronous=normal: each add is committed before it returns "
        "(survives a process crash; an OS crash or power loss may lose the last commits)",
        "in-process: producer and pool (concurrency 10) share one asyncio loop",
    ),
    "taskrt-full": (
        "taskrt",
        False,
        "SQLite file, WAL, synchronous=full: each commit is fsynced before add returns",
        "in-process: producer and pool (concurrency 10) share one asyncio loop",
    ),
    "huey": (
        "huey",
        False,
        "SQLite file, WAL, SQLite's default synchronous=FULL (SqliteHuey sets no pragma "
        "by default): every enqueue and dequeue commit is fsynced; a task is removed "
        "from the queue when a worker takes it",
        "SqliteHuey defaults; consumer subprocess, 10 worker threads "
        "(polling: 0.1 s initial delay, backoff 1.15, max 10 s)",
    ),
    "arq": (
        "arq",
        True,
        REDIS_DURABILITY,
        "arq defaults (poll_delay 0.5 s, results kept 1 h); worker subprocess, max_jobs=10",
    ),
    "saq": (
        "saq",
        True,
        REDIS_DURABILITY,
        "SAQ defaults (blocking dequeue); worker subprocess, concurrency=10",
    ),
    "celery-threads": (
        "celery",
        True,
        REDIS_DURABILITY + "; Celery acks before running by default (acks_late off)",
        "celery worker --pool threads -c 10, Redis broker, no result backend, other "
        "settings default (prefetch multiplier 4, mingle/gossip/heartbeat on)",
    ),
    "celery-prefork": (
        "celery",
        True,
        REDIS_DURABILITY + "; Celery acks before running by default (acks_late off)",
        "celery worker --pool prefork -c 10 (Celery's default pool), Redis broker, no "
        "result backend; completion counted with one Redis INCR per job in the children",
    ),
}


def emit(system: str, figure: str, **fields: Any) -> None:
    line: dict[str, Any] = {"bench": "compare", "system": system, "figure": figure}
    if system in SYSTEMS:
        package, _, durability, setup = SYSTEMS[system]
        line["version"] = _version(package)
        line.update(fields)
        line.setdefault("durability", durability)
        line.setdefault("setup", setup)
    else:
        line.update(fields)
    # Other work on this machine skews every figure: say how busy it was.
    line["load_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(line), flush=True)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _latency_fields(values: list[float]) -> dict[str, Any]:
    ms = sorted(v * 1000 for v in values)

    def pick(q: float) -> float:
        return round(ms[min(len(ms) - 1, int(q * len(ms)))], 3)

    return {
        "jobs": len(ms),
        "rate_per_s": LAT_RATE,
        "p50_ms": pick(0.5),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "max_ms": round(ms[-1], 3),
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- shared task bodies (producer and worker import the same definitions) ------


def _stamp_sink(t0: float) -> None:
    """The latency job: measure first, then append the figure to a file."""
    elapsed = time.monotonic() - t0
    with open(os.environ["COMPARE_LAT"], "a") as f:
        f.write(f"{elapsed!r}\n")


def _huey_app(path: str) -> tuple[Any, Any, Any]:
    from huey import SqliteHuey

    huey = SqliteHuey("compare", filename=path)

    @huey.task(name="noop")
    def noop() -> None:
        return None

    @huey.task(name="stamp")
    def stamp(t0: float) -> None:
        _stamp_sink(t0)

    return huey, noop, stamp


def _arq_functions() -> list[Any]:
    from arq.worker import func

    async def noop(ctx: dict[str, Any]) -> None:
        return None

    async def stamp(ctx: dict[str, Any], t0: float) -> None:
        _stamp_sink(t0)

    return [func(noop, name="noop"), func(stamp, name="stamp")]


def _saq_functions() -> list[Any]:
    async def noop(ctx: dict[str, Any]) -> None:
        return None

    async def stamp(ctx: dict[str, Any], *, t0: float) -> None:
        _stamp_sink(t0)

    return [("noop", noop), ("stamp", stamp)]


def _celery_app(url: str) -> tuple[Any, Any, Any]:
    from celery import Celery

    app = Celery("compare", broker=url)  # no result backend (Celery's default)

    @app.task(name="noop")
    def noop() -> None:
        return None

    @app.task(name="stamp")
    def stamp(t0: float) -> None:
        _stamp_sink(t0)

    return app, noop, stamp


# -- worker subprocesses (python -m bench.compare --worker KIND) ---------------


class _DoneCounter:
    """Counts finished jobs; at the n-th, writes the time it finished to a file."""

    def __init__(self, n: int, path: Path) -> None:
        self.n = n
        self.path = path
        self.count = 0
        self.lock = threading.Lock()

    def hit(self) -> None:
        now = time.monotonic()
        with self.lock:
            self.count += 1
            if self.count != self.n:
                return
        _write_atomic(self.path, repr(now))


def worker_main(kind: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    env = os.environ
    n = int(env["COMPARE_JOBS"])
    done = Path(env["COMPARE_DONE"])
    ready = Path(env["COMPARE_READY"])
    counter = _DoneCounter(n, done)
    url = env.get("COMPARE_REDIS_URL", "")

    if kind == "huey":
        from huey.signals import SIGNAL_COMPLETE

        huey, _, _ = _huey_app(env["COMPARE_HUEY_DB"])

        @huey.signal(SIGNAL_COMPLETE)
        def on_complete(sig: str, task: Any, *args: Any, **kwargs: Any) -> None:
            counter.hit()

        @huey.on_startup()
        def on_startup() -> None:
            ready.touch()

        huey.create_consumer(workers=CONCURRENCY, worker_type="thread").run()

    elif kind == "arq":
        from arq.connections import RedisSettings
        from arq.worker import run_worker

        async def startup(ctx: dict[str, Any]) -> None:
            ready.touch()

        async def after_job_end(ctx: dict[str, Any]) -> None:
            counter.hit()

        settings = type(
            "WorkerSettings",
            (),
            {
                "functions": _arq_functions(),
                "redis_settings": RedisSettings.from_dsn(url),
                "max_jobs": CONCURRENCY,
                "on_startup": startup,
                "after_job_end": after_job_end,
            },
        )
        run_worker(settings)

    elif kind == "saq":
        from saq import Queue, Worker

        async def startup(ctx: dict[str, Any]) -> None:
            ready.touch()

        async def after_process(ctx: dict[str, Any]) -> None:
            counter.hit()

        async def run() -> None:
            queue = Queue.from_url(url)
            worker = Worker(
                queue,
                functions=_saq_functions(),
                concurrency=CONCURRENCY,
                startup=startup,
                after_process=after_process,
            )
            await queue.connect()
            try:
                await worker.start()
            finally:
                await queue.disconnect()

        asyncio.run(run())

    elif kind in ("celery-threads", "celery-prefork"):
        from celery.signals import task_postrun, worker_ready

        app, _, _ = _celery_app(url)

        def on_ready(**kwargs: Any) -> None:
            ready.touch()

        worker_ready.connect(on_ready, weak=False)
        if kind == "celery-threads":

            def on_postrun(**kwargs: Any) -> None:
                counter.hit()

            pool = "threads"
        else:
            # Prefork children are separate processes: count in Redis.
            import redis

            clients: dict[int, Any] = {}

            def on_postrun(**kwargs: Any) -> None:
                now = time.monotonic()
                client = clients.get(os.getpid())
                if client is None:
                    client = clients[os.getpid()] = redis.Redis.from_url(url)
                if client.incr("compare:done") == n:
                    _write_atomic(done, repr(now))

            pool = "prefork"
        task_postrun.connect(on_postrun, weak=False)
        app.worker_main(
            ["worker", f"--pool={pool}", f"--concurrency={CONCURRENCY}", "--loglevel=WARNING"]
        )
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")


class WorkerProcess:
    """A worker subprocess in a process group of its own, always killed at the end."""

    def __init__(self, kind: str, tmp: Path, env: dict[str, str]) -> None:
        self.kind = kind
        self.log_path = tmp / f"worker-{kind}.log"
        self.ready = tmp / "ready"
        self.done = tmp / "done"
        self.lat = tmp / "latency.txt"
        for p in (self.ready, self.done, self.lat):
            p.unlink(missing_ok=True)
        self.env = {
            **env,
            "COMPARE_READY": str(self.ready),
            "COMPARE_DONE": str(self.done),
            "COMPARE_LAT": str(self.lat),
        }
        self.pids_file = tmp / "worker.pids"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.compare", "--worker", self.kind],
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        with open(self.pids_file, "a") as f:
            f.write(f"{self.proc.pid}\n")

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.tail()
            raise RuntimeError(
                f"worker exited with code {self.proc.returncode}" + (f": {tail}" if tail else "")
            )

    def tail(self, chars: int = 600) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ready.exists():
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready after {READY_TIMEOUT:.0f}s: {self.tail()}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # let it reach its polling loop

    async def wait_done(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return float(self.done.read_text())
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs not all processed after {timeout:.0f}s")
            await asyncio.sleep(0.01)

    async def wait_latencies(self, count: int, timeout: float) -> list[float]:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(FileNotFoundError):
                lines = self.lat.read_text().split()
                if len(lines) >= count:
                    return [float(x) for x in lines[:count]]
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"latency jobs not all started after {timeout:.0f}s")
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        _kill_group(self.proc.pid, self.proc)
        self.log.close()


def _kill_group(pgid: int, proc: subprocess.Popen[Any] | None = None) -> None:
    """Stop a process group this script created.

    With its leader's Popen: SIGTERM to the leader (the system's own shutdown),
    up to STOP_GRACE to exit, then SIGKILL to whatever is left in the group (a
    prefork pool's children). Without it (leftovers after a section died): SIGKILL
    to the group, which only reaches processes still in it.
    """
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_GRACE)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


# -- the peers, behind one small producer interface --------------------------------


class Peer:
    """Producer side of one peer system."""

    worker: str

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp = tmp
        self.url = url

    def worker_env(self) -> dict[str, str]:
        return {"COMPARE_REDIS_URL": self.url}

    async def open(self, phase: str) -> None: ...
    async def enqueue_noop(self) -> None: ...
    async def enqueue_stamp(self, t0: float) -> None: ...
    async def reset(self) -> None:
        """Empty the store (before a worker starts)."""
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()

    async def close(self) -> None: ...


class HueyPeer(Peer):
    worker = "huey"

    def db(self, phase: str) -> str:
        return str(self.tmp / f"huey-{phase}.db")

    def worker_env(self) -> dict[str, str]:
        return {"COMPARE_HUEY_DB": self.db("bc")}

    async def open(self, phase: str) -> None:
        self.huey, self.noop, self.stamp = _huey_app(self.db(phase))

    async def enqueue_noop(self) -> None:
        self.noop()

    async def enqueue_stamp(self, t0: float) -> None:
        self.stamp(t0)

    async def reset(self) -> None:
        self.huey.flush()

    async def close(self) -> None:
        self.huey.storage.close()


class ArqPeer(Peer):
    worker = "arq"

    async def open(self, phase: str) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        self.pool = await create_pool(RedisSettings.from_dsn(self.url))

    async def enqueue_noop(self) -> None:
        await self.pool.enqueue_job("noop")

    async def enqueue_stamp(self, t0: float) -> None:
        await self.pool.enqueue_job("stamp", t0)

    async def close(self) -> None:
        await self.pool.aclose()


class SaqPeer(Peer):
    worker = "saq"

    async def open(self, phase: str) -> None:
        from saq import Queue

        self.queue = Queue.from_url(self.url)
        await self.queue.connect()

    async def enqueue_noop(self) -> None:
        await self.queue.enqueue("noop")

    async def enqueue_stamp(self, t0: float) -> None:
        await self.queue.enqueue("stamp", t0=t0)

    async def close(self) -> None:
        await self.queue.disconnect()


class CeleryPeer(Peer):
    worker = "celery-threads"

    async def open(self, phase: str) -> None:
        self.app, self.noop, self.stamp = _celery_app(self.url)

    async def enqueue_noop(self) -> None:
        self.noop.delay()

    async def enqueue_stamp(self, t0: float) -> None:
        self.stamp.delay(t0)

    async def close(self) -> None:
        self.app.close()


class CeleryPreforkPeer(CeleryPeer):
    worker = "celery-prefork"


PEERS: dict[str, type[Peer]] = {
    "huey": HueyPeer,
    "arq": ArqPeer,
    "saq": SaqPeer,
    "celery-threads": CeleryPeer,
    "celery-prefork": CeleryPreforkPeer,
}


async def _paced(n: int, rate: float, add: Callable[[float], Awaitable[Any]]) -> None:
    """Add n jobs on a fixed schedule of `rate` per second; each gets its t0."""
    start = time.monotonic()
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        await add(time.monotonic())


async def peer_section(name: str, tmp: Path, n: int) -> None:
    peer = PEERS[name](tmp, os.environ.get("COMPARE_REDIS_URL", ""))
    emitted: set[str] = set()

    def fail(figure: str, exc: BaseException) -> None:
        emit(name, figure, error=f"{type(exc).__name__}: {exc}"[:800])
        emitted.add(figure)

    # (a) enqueue rate, no worker running.
    try:
        await peer.open("a")
        try:
            await peer.enqueue_noop()  # connect the producer before the clock starts
            await peer.reset()
            t = time.monotonic()
            for _ in range(n):
                await peer.enqueue_noop()
            seconds = time.monotonic() - t
        finally:
            await peer.close()
        emit(name, "enqueue_rate", jobs=n, seconds=round(seconds, 3), rate=round(n / seconds))
        emitted.add("enqueue_rate")
    except Exception as exc:
        fail("enqueue_rate", exc)

    # (b) end to end and (c) latency, against one worker subprocess.
    worker = WorkerProcess(
        peer.worker,
        tmp,
        {**os.environ, "COMPARE_JOBS": str(n), **peer.worker_env()},
    )
    try:
        await peer.open("bc")
        try:
            await peer.enqueue_noop()
            await peer.reset()
            worker.start()
            await worker.wait_ready()

            t0 = time.monotonic()
            for _ in range(n):
                await peer.enqueue_noop()
            t_enq = time.monotonic()
            t_done = await worker.wait_done(DRAIN_TIMEOUT)
            seconds = t_done - t0
            emit(
                name,
                "end_to_end",
                jobs=n,
                concurrency=CONCURRENCY,
                seconds=round(seconds, 3),
                rate=round(n / seconds),
                enqueue_seconds=round(t_enq - t0, 3),
                drain_after_last_enqueue_s=round(t_done - t_enq, 3),
            )
            emitted.add("end_to_end")

            await _paced(LAT_JOBS, LAT_RATE, peer.enqueue_stamp)
            values = await worker.wait_latencies(LAT_JOBS, LAT_TIMEOUT)
            emit(name, "add_to_start_latency", **_latency_fields(values))
            emitted.add("add_to_start_latency")
        finally:
            with contextlib.suppress(Exception):
                await peer.close()
    except Exception as exc:
        for figure in FIGURES:
            if figure not in emitted:
                fail(figure, exc)
    finally:
        worker.stop()


# -- taskrt, in process ----------------------------------------------------------------


def _taskrt_runtime(path: Path, synchronous: str, started: list[float] | None = None) -> Any:
    from taskrt import JobContext, Runtime

    rt = Runtime(str(path), synchronous=synchronous)  # type: ignore[arg-type]

    @rt.task(name="noop")
    async def noop(job: JobContext) -> None:
        return None

    @rt.task(name="stamp")
    async def stamp(job: JobContext, t0: float) -> None:
        elapsed = time.monotonic() - t0
        if started is not None:
            started.append(elapsed)

    rt.pool("default", concurrency=CONCURRENCY)
    return rt


async def taskrt_section(name: str, tmp: Path, n: int) -> None:
    sync = "full" if name == "taskrt-full" else "normal"

    # (a) enqueue rate, workers paused.
    try:
        rt = _taskrt_runtime(tmp / "a.db", sync)
        rt.pool("default").pause()
        async with rt:
            await rt.add("noop")
            t = time.monotonic()
            for _ in range(n):
                await rt.add("noop")
            seconds = time.monotonic() - t
        emit(name, "enqueue_rate", jobs=n, seconds=round(seconds, 3), rate=round(n / seconds))
    except Exception as exc:
        emit(name, "enqueue_rate", error=f"{type(exc).__name__}: {exc}")

    # (b) end to end: the pool runs while the producer adds.
    try:
        rt = _taskrt_runtime(tmp / "b.db", sync)
        pool = rt.pool("default")
        async with rt:
            await rt.wait(await rt.add("noop"), timeout=10)
            base = pool.processed
            t0 = time.monotonic()
            for _ in range(n):
                await rt.add("noop")
            t_enq = time.monotonic()
            deadline = t_enq + DRAIN_TIMEOUT
            while pool.processed - base < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"jobs not all processed after {DRAIN_TIMEOUT:.0f}s")
                await asyncio.sleep(0.001)
            await rt.store.flush()  # the last SUCCESS rows committed
            t_done = time.monotonic()
        seconds = t_done - t0
        emit(
            name,
            "end_to_end",
            jobs=n,
            concurrency=CONCURRENCY,
            seconds=round(seconds, 3),
            rate=round(n / seconds),
            enqueue_seconds=round(t_enq - t0, 3),
            drain_after_last_enqueue_s=round(t_done - t_enq, 3),
        )
    except Exception as exc:
        emit(name, "end_to_end", error=f"{type(exc).__name__}: {exc}")

    # (c) add -> start latency.
    try:
        started: list[float] = []
        rt = _taskrt_runtime(tmp / "c.db", sync, started)
        async with rt:
            await rt.wait(await rt.add("noop"), timeout=10)

            async def add(t0: float) -> None:
                await rt.add("stamp", t0)

            await _paced(LAT_JOBS, LAT_RATE, add)
            deadline = time.monotonic() + LAT_TIMEOUT
            while len(started) < LAT_JOBS:
                if time.monotonic() > deadline:
                    raise TimeoutError("latency jobs not all started")
                await asyncio.sleep(0.01)
        emit(name, "add_to_start_latency", **_latency_fields(started))
    except Exception as exc:
        emit(name, "add_to_start_latency", error=f"{type(exc).__name__}: {exc}")


def section_main(name: str, tmp: Path, n: int) -> None:
    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(1)  # run the finally blocks: they stop the worker

    signal.signal(signal.SIGTERM, on_term)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if name.startswith("taskrt"):
        asyncio.run(taskrt_section(name, tmp, n))
    else:
        asyncio.run(peer_section(name, tmp, n))


# -- the driver: Redis, one subprocess per system -----------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """A private redis-server on 127.0.0.1, no persistence; killed on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found (apt-get install -y redis-server)")
    import redis

    port = _free_port()
    log = open(tmp / "redis.log", "wb")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(tmp),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "redis-server did not start: "
                        + (tmp / "redis.log").read_text(errors="replace")[-400:]
                    ) from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        _kill_group(proc.pid, proc)
        log.close()


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


def run_section(
    name: str, tmp: Path, n: int, env: dict[str, str], timeout: float = SECTION_TIMEOUT
) -> None:
    """Run one system in a subprocess; relay its JSON lines; report what it missed."""
    tmp.mkdir()
    stderr_path = tmp / "section.log"
    seen: set[str] = set()
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.compare",
                "--section",
                name,
                "--tmp",
                str(tmp),
                "--jobs",
                str(n),
            ],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )

        def relay() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict) and record.get("bench") == "compare":
                    seen.add(record.get("figure", ""))
                    print(line.rstrip("\n"), flush=True)
                else:
                    print(line.rstrip("\n"), file=sys.stderr, flush=True)

        reader = threading.Thread(target=relay, daemon=True)
        reader.start()
        reason = None
        try:
            proc.wait(timeout)
            if proc.returncode != 0:
                reason = f"section exited with code {proc.returncode}"
        except subprocess.TimeoutExpired:
            reason = f"section timed out after {timeout:.0f}s"
        finally:
            _kill_group(proc.pid, proc)
            reader.join(5)
    # Worker groups the section could not stop itself.
    with contextlib.suppress(FileNotFoundError):
        for pid in (tmp / "worker.pids").read_text().split():
            _kill_group(int(pid))
    missing = [f for f in FIGURES if f not in seen]
    if missing:
        detail = stderr_path.read_text(errors="replace").strip()[-600:]
        for figure in missing:
            emit(
                name,
                figure,
                error=": ".join(x for x in (reason or "no figure printed", detail) if x),
            )


def driver(
    only: list[str], n: int, keep: str | None = None, timeout: float = SECTION_TIMEOUT
) -> None:
    def redis_version() -> str | None:
        binary = shutil.which("redis-server")
        if binary is None:
            return None
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()

    print(
        json.dumps(
            {
                "bench": "compare",
                "figure": "setup",
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "command": "python -m bench.compare",
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "load_1m": round(os.getloadavg()[0], 2),
                "sqlite": sqlite3.sqlite_version,
                "redis_server": redis_version(),
                "versions": {
                    p: _version(p)
                    for p in ("taskrt", "aiosqlite", "huey", "arq", "saq", "celery", "kombu")
                }
                | {"redis-py": _version("redis")},
                "jobs": n,
                "concurrency": CONCURRENCY,
                "latency_jobs": LAT_JOBS,
                "latency_rate_per_s": LAT_RATE,
            }
        ),
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        if keep is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="taskrt-compare-")))
        else:
            tmp = Path(keep)
            tmp.mkdir(parents=True, exist_ok=False)
        url: str | None = None
        redis_error = ""
        if any(SYSTEMS[name][1] for name in only):
            try:
                url = stack.enter_context(redis_server(tmp))
            except Exception as exc:
                redis_error = f"{type(exc).__name__}: {exc}"
        for name in only:
            if SYSTEMS[name][1]:
                if url is None:
                    for figure in FIGURES:
                        emit(name, figure, error=f"no Redis: {redis_error}")
                    continue
                try:
                    _flush(url)
                except Exception as exc:
                    for figure in FIGURES:
                        emit(name, figure, error=f"Redis FLUSHALL failed: {exc}")
                    continue
            env = {**os.environ, "COMPARE_REDIS_URL": url or ""}
            time.sleep(1.0)  # let the previous system's processes go quiet
            run_section(name, tmp / name, n, env, timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated systems: " + ",".join(SYSTEMS))
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help="keep databases and logs in this new folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--section-timeout", type=float, default=SECTION_TIMEOUT, help="seconds per system"
    )
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker)
    elif args.section:
        section_main(args.section, Path(args.tmp), args.jobs)
    else:
        only = args.only.split(",") if args.only else list(SYSTEMS)
        unknown = [s for s in only if s not in SYSTEMS]
        if unknown:
            parser.error(f"unknown systems: {', '.join(unknown)}")
        driver(only, args.jobs, args.tmp, args.section_timeout)


if __name__ == "__main__":
    main()
