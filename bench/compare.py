"""taskrt against peer job systems, measured in one run on this machine.

Run with ``python -m bench.compare`` after installing the peers
(``pip install -r bench/requirements-compare.txt``), Debian's
``redis-server`` and, for ``taskrt-pg`` and ``procrastinate``, a PostgreSQL
server. Prints one JSON line per figure (``docs/comparison.md`` says how to
read them):

- ``enqueue_rate``: 5,000 no-op jobs enqueued one after another by one
  producer, no worker running.
- ``end_to_end``: workers running at concurrency 10; the clock starts before
  the first of 5,000 sequential enqueues and stops when the 5,000th job has
  been processed.
- ``add_to_start_latency``: 200 jobs added at ~100/s; the job itself measures
  the time from just before its enqueue call to the start of its handler.
- ``drain_backlog`` (taskrt, taskrt-full, taskrt-pg and procrastinate only):
  10,000 no-op jobs enqueued with no worker running, with each system's
  fastest bulk enqueue (untimed: taskrt ``pool.add_many``, procrastinate
  ``task.batch_defer_async``, one call each); then the worker starts, at
  concurrency 10, and the clock runs from its start to the 10,000th job
  processed. taskrt: the jobs are added by a runtime whose pool is paused in
  that process only (``pool.pause()``, not recorded in the database), which
  then stops; the clock starts just before a new ``Runtime`` on the same
  database enters ``async with`` (open, recovery, intake, pools started) and
  stops when its pool has processed the 10,000th job and ``rt.store.flush()``
  returned. procrastinate: the worker subprocess writes ``time.monotonic()``
  just before it opens its app (after its imports) and that is the start.
  Huey, arq, SAQ and Celery are skipped for this figure: no line is printed
  for them (arq's default polling alone would need 50 s for it). On
  PostgreSQL the figure is measured twice, each on a fresh backlog: as the
  tables are after the bulk insert (``"after_analyze": false``: a fresh table
  that autovacuum has not analyzed yet), and after an untimed ``ANALYZE`` of
  the system's tables (``"after_analyze": true``: what autovacuum does soon
  after such an insert). procrastinate's fetch is a plpgsql function whose
  cached generic plan, without statistics, sorts every waiting job on each
  fetch: the first line measures that, the second what a table with
  statistics gives.
- ``drain_backlog_floor`` (taskrt-pg only): the floor of its analyzed
  ``drain_backlog``, with no runtime: the same backlog drained by taskrt's own
  claim statement in a chain of claims of 10 jobs, each claim's jobs ended at
  once by the least write, on a second connection (``_claim_chain``).

Systems: taskrt (SQLite file, ``synchronous=normal``, and ``full`` for
reference), taskrt-pg (taskrt on PostgreSQL, in process like taskrt, in its
default mode "nodes"; taskrt-pg-owner the same in mode "owner"; each
phase on a fresh schema ``bench_<phase>_<run>`` of the server at
``$COMPARE_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``,
dropped at the end), Huey (``SqliteHuey`` file, consumer in a subprocess with
10 worker threads), arq and SAQ (Redis, worker subprocess with 10 concurrent
jobs), Celery (Redis broker, no result backend, ``celery worker`` with
``--pool threads -c 10`` and with ``--pool prefork -c 10``) and procrastinate
(the same PostgreSQL server, a database ``bench_procrastinate_<run>`` created
for the run with procrastinate's schema manager and dropped at the end
``WITH (FORCE)``; worker subprocess ``run_worker_async(concurrency=10)``,
defaults otherwise, LISTEN/NOTIFY on; producer ``defer_async``). ``<run>`` is
the driver's process id. Every peer runs with its library's defaults plus that
concurrency; worker log levels are set to WARNING for all of them. Redis is a
``redis-server`` this script starts on 127.0.0.1 on a free port without
persistence, and stops at the end. PostgreSQL is the server's own
configuration (the setup line reports ``synchronous_commit`` and ``fsync``).

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
procrastinate has no such hook after its status write: its no-op task counts
itself (the n-th call writes the time), so its clock stops before the last
job's ``succeeded`` row is committed; its ``end_to_end`` and
``drain_backlog`` lines say how much later the database showed every row
succeeded (``rows_succeeded_after_done_s``, polled, an upper bound).
procrastinate has no worker-start hook either: its worker counts as ready
once it has registered itself in ``procrastinate_workers``.

On PostgreSQL, a ``drain_backlog`` line also says where a job's cost lies,
when the server runs on this machine: ``server_cpu_us_per_job``, the CPU
time of every ``postgres`` process over the drain (``/proc``) per job, and
for taskrt, which drains in this process, ``client_cpu_us_per_job``. Both
share this machine's two cores, so a drain is bound by their sum as much
as by its round trips.

The setup line's ``postgres`` also gives ``raw_sequential_commits_per_s``:
1,000 rows inserted one at a time with asyncpg on a bare table, each commit
awaited before the next insert. No system that acknowledges an enqueue only
once it is committed can do ``end_to_end``'s sequential enqueues faster on
that server, so it bounds the ``end_to_end`` ratio of any two of them.
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
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

JOBS = 5_000
BACKLOG = 10_000  # drain_backlog
CONCURRENCY = 10
LAT_JOBS = 200
LAT_RATE = 100.0  # jobs per second

SECTION_TIMEOUT = 150.0  # one system, all three figures, worker start and stop
BACKLOG_SECTION_TIMEOUT = 420.0  # the same with drain_backlog twice (BACKLOG_SYSTEMS)
READY_TIMEOUT = 60.0  # a worker subprocess to report it is ready
DRAIN_TIMEOUT = 90.0  # all jobs of end_to_end processed
BACKLOG_TIMEOUT = 180.0  # all jobs of drain_backlog processed, from the worker's start
LAT_TIMEOUT = 30.0  # all latency jobs started, after the last add
STOP_GRACE = 10.0  # SIGTERM, then SIGKILL of the whole process group

REPO = Path(__file__).resolve().parent.parent
FIGURES = ("enqueue_rate", "end_to_end", "add_to_start_latency", "drain_backlog")
# The systems that measure drain_backlog; the others print no line for it.
BACKLOG_SYSTEMS = ("taskrt", "taskrt-full", "taskrt-pg", "taskrt-pg-owner", "procrastinate")
POSTGRES_SYSTEMS = ("taskrt-pg", "taskrt-pg-owner", "procrastinate")
# taskrt's mode on PostgreSQL, by system: every process a node (the default), or one owner.
PG_MODES = {"taskrt-pg": "nodes", "taskrt-pg-owner": "owner"}
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TASKRT_URL_PARAMS = ("schema", "statement_cache_size")  # taskrt's own, not the server's
TASKRT_PG_PHASES = ("a", "b", "c", "d", "e", "f")  # e: drain_backlog after ANALYZE; f: its floor

PG_DURABILITY = (
    "PostgreSQL, the server's defaults (synchronous_commit=on, fsync=on): a "
    "commit is flushed to the WAL on disk before it is acknowledged"
)
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
    "taskrt-pg": (
        "taskrt",
        False,
        PG_DURABILITY + "; add returns after the transaction holding its job "
        "(group commit: one per batch of concurrent adds) is committed",
        "in-process like taskrt: Runtime('postgresql://...?schema=bench_<phase>_<run>') "
        "(asyncpg), producer and pool (concurrency 10) share one asyncio loop; this "
        "process is a node (mode 'nodes', the default): it claims the jobs it runs "
        "from the table",
    ),
    "taskrt-pg-owner": (
        "taskrt",
        False,
        PG_DURABILITY + "; add returns after the transaction holding its job "
        "(group commit: one per batch of concurrent adds) is committed",
        "as taskrt-pg, in mode 'owner': this process is the schema's owner, the one "
        "process that runs its jobs, and keeps the next waiting jobs in memory",
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
    "procrastinate": (
        "procrastinate",
        False,
        PG_DURABILITY + "; each defer_async is one transaction, committed before it "
        "returns; finished jobs stay in the table (delete_jobs='never', the default)",
        "PsycopgConnector defaults (psycopg_pool, 4 connections); worker subprocess "
        "app.run_worker_async(concurrency=10), other options default (LISTEN/NOTIFY "
        "on, 5 s fallback polling); a fresh database for the run; completion counted "
        "in the no-op task, before its status write",
    ),
}


def figures_of(system: str) -> tuple[str, ...]:
    """The figures a system reports (drain_backlog only for BACKLOG_SYSTEMS)."""
    return FIGURES if system in BACKLOG_SYSTEMS else FIGURES[:3]


def _run_id() -> str:
    """Names this run's PostgreSQL schemas and database: the driver's process id."""
    run = os.environ.get("COMPARE_RUN_ID") or str(os.getpid())
    if not run.isdigit():
        raise ValueError(f"COMPARE_RUN_ID must be digits, found {run!r}")
    return run


def _pg_base_url() -> str:
    return os.environ.get("COMPARE_POSTGRES_URL") or DEFAULT_POSTGRES_URL


def _pg_url(base: str, *, schema: str | None = None, dbname: str | None = None) -> str:
    """``base`` without taskrt's own parameters; with taskrt's ``schema``, or another database."""
    parts = urllib.parse.urlsplit(base)
    query = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if k not in TASKRT_URL_PARAMS
    ]
    if schema is not None:
        query.append(("schema", schema))
    path = f"/{dbname}" if dbname is not None else parts.path
    return urllib.parse.urlunsplit(parts._replace(path=path, query=urllib.parse.urlencode(query)))


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _taskrt_pg_schema(phase: str) -> str:
    return f"bench_{phase}_{_run_id()}"


def _procrastinate_db() -> str:
    return f"bench_procrastinate_{_run_id()}"


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


def _procrastinate_app(
    conninfo: str, on_noop: Callable[[], None] | None = None
) -> tuple[Any, Any, Any]:
    """The app and its two tasks; the worker passes ``on_noop`` (its counter)."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))

    @app.task(name="noop")
    async def noop() -> None:
        if on_noop is not None:
            on_noop()

    @app.task(name="stamp")
    async def stamp(t0: float) -> None:
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

    elif kind == "procrastinate":
        import psycopg

        dsn = env["COMPARE_PROCRASTINATE_DSN"]
        started = Path(env["COMPARE_STARTED"])
        app, _, _ = _procrastinate_app(dsn, on_noop=counter.hit)

        async def announce_ready() -> None:
            # No startup hook: the worker is ready once it has registered itself
            # (the producer emptied procrastinate_workers before starting it).
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                while True:
                    cursor = await conn.execute("SELECT 1 FROM procrastinate_workers LIMIT 1")
                    if await cursor.fetchone() is not None:
                        break
                    await asyncio.sleep(0.02)
            ready.touch()

        async def run_procrastinate() -> None:
            _write_atomic(started, repr(time.monotonic()))
            async with app.open_async():
                watcher = asyncio.create_task(announce_ready())
                try:
                    await app.run_worker_async(concurrency=CONCURRENCY)
                finally:
                    watcher.cancel()

        asyncio.run(run_procrastinate())
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")


class WorkerProcess:
    """A worker subprocess in a process group of its own, always killed at the end."""

    def __init__(self, kind: str, tmp: Path, env: dict[str, str], tag: str = "") -> None:
        self.kind = kind
        self.log_path = tmp / f"worker-{kind}{tag}.log"
        self.ready = tmp / "ready"
        self.done = tmp / "done"
        self.lat = tmp / "latency.txt"
        self.started = tmp / "started"
        for p in (self.ready, self.done, self.lat, self.started):
            p.unlink(missing_ok=True)
        self.env = {
            **env,
            "COMPARE_READY": str(self.ready),
            "COMPARE_DONE": str(self.done),
            "COMPARE_LAT": str(self.lat),
            "COMPARE_STARTED": str(self.started),
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

    def started_at(self) -> float:
        """The time the worker wrote just before starting (workers that write it)."""
        return float(self.started.read_text())

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


def _server_cpu() -> float | None:
    """CPU seconds (user + system) used so far by this machine's ``postgres`` processes
    (the server's backends and its own workers), from ``/proc``; None where none is
    visible (another machine's server, or no ``/proc``). A drain's share of it, per
    job, says where a job's cost lies: in the server or in the client. A backend
    that ended before the second reading takes its CPU with it, so both readings
    are taken while the drain's connections are open."""
    if _pg_host_is_remote():
        return None
    total, found = 0, False
    with contextlib.suppress(OSError):
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue  # ended meanwhile
            name, _, rest = stat.partition(" (")[2].rpartition(") ")
            if name != "postgres":
                continue
            fields = rest.split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
            found = True
    return total / os.sysconf("SC_CLK_TCK") if found else None


def _pg_host_is_remote() -> bool:
    host = urllib.parse.urlsplit(_pg_base_url()).hostname
    return host not in (None, "", "localhost", "127.0.0.1", "::1")


def _cpu_fields(
    server_before: float | None, client_before: float | None, jobs: int
) -> dict[str, Any]:
    """CPU microseconds a job took on the server and (``client_before`` given: this
    process) in the client, since the readings before the drain."""
    fields: dict[str, Any] = {}
    server_after = _server_cpu()
    if server_before is not None and server_after is not None:
        fields["server_cpu_us_per_job"] = round((server_after - server_before) / jobs * 1e6)
    if client_before is not None:
        client = sum(os.times()[:2]) - client_before
        fields["client_cpu_us_per_job"] = round(client / jobs * 1e6)
    return fields


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
    backlog_api: str | None = None  # its bulk enqueue, for drain_backlog; None: skipped

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp = tmp
        self.url = url

    def worker_env(self) -> dict[str, str]:
        return {"COMPARE_REDIS_URL": self.url}

    async def setup(self) -> None:
        """Before the first phase (a database of the run's own)."""

    async def teardown(self) -> None:
        """After the last phase, whatever happened."""

    async def enqueue_backlog(self, n: int) -> None:
        raise NotImplementedError

    async def analyze(self) -> None:
        """ANALYZE the tables (PostgreSQL peers with a backlog_api)."""
        raise NotImplementedError

    async def all_succeeded_at(self, n: int, timeout: float) -> float | None:
        """When the store shows n no-op jobs succeeded (None: not asked)."""
        return None

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


class ProcrastinatePeer(Peer):
    """procrastinate on a database of its own, created for the run and dropped after."""

    worker = "procrastinate"
    backlog_api = "task.batch_defer_async (one call)"
    TABLES = (
        "procrastinate_jobs, procrastinate_events, procrastinate_periodic_defers, "
        "procrastinate_workers"
    )

    def __init__(self, tmp: Path, url: str) -> None:
        super().__init__(tmp, url)
        self.admin = _pg_url(_pg_base_url())
        self.db = _procrastinate_db()
        self.dsn = _pg_url(_pg_base_url(), dbname=self.db)

    def worker_env(self) -> dict[str, str]:
        return {"COMPARE_PROCRASTINATE_DSN": self.dsn}

    async def _admin(self, statement: str) -> None:
        import psycopg
        from psycopg import sql

        async with await psycopg.AsyncConnection.connect(self.admin, autocommit=True) as conn:
            await conn.execute(sql.SQL(statement).format(db=sql.Identifier(self.db)))

    async def setup(self) -> None:
        await self._admin("CREATE DATABASE {db}")
        app, _, _ = _procrastinate_app(self.dsn)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    async def teardown(self) -> None:
        await self._admin("DROP DATABASE IF EXISTS {db} WITH (FORCE)")

    async def open(self, phase: str) -> None:
        self.app, self.noop, self.stamp = _procrastinate_app(self.dsn)
        await self.app.open_async()

    async def enqueue_noop(self) -> None:
        await self.noop.defer_async()

    async def enqueue_stamp(self, t0: float) -> None:
        await self.stamp.defer_async(t0=t0)

    async def enqueue_backlog(self, n: int) -> None:
        await self.noop.batch_defer_async(*({} for _ in range(n)))

    async def reset(self) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute(f"TRUNCATE {self.TABLES} RESTART IDENTITY CASCADE")

    async def analyze(self) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute(f"ANALYZE {self.TABLES}")

    async def all_succeeded_at(self, n: int, timeout: float) -> float | None:
        import psycopg

        deadline = time.monotonic() + timeout
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            while True:
                cursor = await conn.execute(
                    "SELECT count(*) FROM procrastinate_jobs "
                    "WHERE task_name = 'noop' AND status = 'succeeded'"
                )
                row = await cursor.fetchone()
                now = time.monotonic()
                if row is not None and row[0] >= n:
                    return now
                if now > deadline:
                    raise TimeoutError(f"{row} of {n} jobs succeeded after {timeout:.0f}s")
                await asyncio.sleep(0.001)

    async def close(self) -> None:
        await self.app.close_async()


PEERS: dict[str, type[Peer]] = {
    "huey": HueyPeer,
    "arq": ArqPeer,
    "saq": SaqPeer,
    "celery-threads": CeleryPeer,
    "celery-prefork": CeleryPreforkPeer,
    "procrastinate": ProcrastinatePeer,
}


async def _paced(n: int, rate: float, add: Callable[[float], Awaitable[Any]]) -> None:
    """Add n jobs on a fixed schedule of `rate` per second; each gets its t0."""
    start = time.monotonic()
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        await add(time.monotonic())


async def peer_section(name: str, tmp: Path, n: int, backlog: int) -> None:
    peer = PEERS[name](tmp, os.environ.get("COMPARE_REDIS_URL", ""))
    emitted: set[str] = set()

    def fail(figure: str, exc: BaseException) -> None:
        emit(name, figure, error=f"{type(exc).__name__}: {exc}"[:800])
        emitted.add(figure)

    try:
        await peer.setup()
    except Exception as exc:
        for figure in figures_of(name):
            fail(figure, exc)
        with contextlib.suppress(Exception):
            await peer.teardown()
        return
    try:
        await _peer_phases(name, peer, tmp, n, backlog, emitted, fail)
    finally:
        try:
            await peer.teardown()
        except Exception as exc:
            print(f"{name}: teardown failed: {type(exc).__name__}: {exc}", file=sys.stderr)


async def _peer_phases(
    name: str,
    peer: Peer,
    tmp: Path,
    n: int,
    backlog: int,
    emitted: set[str],
    fail: Callable[[str, BaseException], None],
) -> None:
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
            extra: dict[str, Any] = {}
            t_rows = await peer.all_succeeded_at(n, LAT_TIMEOUT)
            if t_rows is not None:
                extra["rows_succeeded_after_done_s"] = round(t_rows - t_done, 3)
            emit(
                name,
                "end_to_end",
                jobs=n,
                concurrency=CONCURRENCY,
                seconds=round(seconds, 3),
                rate=round(n / seconds),
                enqueue_seconds=round(t_enq - t0, 3),
                drain_after_last_enqueue_s=round(t_done - t_enq, 3),
                **extra,
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
        for figure in ("end_to_end", "add_to_start_latency"):
            if figure not in emitted:
                fail(figure, exc)
    finally:
        worker.stop()

    # (d) drain a backlog: enqueued with no worker running, then the worker starts;
    # as the tables are after the insert, then after an ANALYZE (module docstring).
    if peer.backlog_api is None:
        return
    for after_analyze in (False, True):
        await _peer_drain(name, peer, tmp, backlog, after_analyze, fail)


async def _peer_drain(
    name: str,
    peer: Peer,
    tmp: Path,
    backlog: int,
    after_analyze: bool,
    fail: Callable[[str, BaseException], None],
) -> None:
    worker = WorkerProcess(
        peer.worker,
        tmp,
        {**os.environ, "COMPARE_JOBS": str(backlog), **peer.worker_env()},
        tag="-backlog-analyzed" if after_analyze else "-backlog",
    )
    try:
        await peer.open("d")
        try:
            await peer.enqueue_noop()
            await peer.reset()
            t = time.monotonic()
            await peer.enqueue_backlog(backlog)
            enqueue_seconds = time.monotonic() - t
        finally:
            await peer.close()
        if after_analyze:
            await peer.analyze()
        server_before = _server_cpu() if name in POSTGRES_SYSTEMS else None
        worker.start()
        t_done = await worker.wait_done(BACKLOG_TIMEOUT)
        t_start = worker.started_at()
        seconds = t_done - t_start
        extra: dict[str, Any] = _cpu_fields(server_before, None, backlog)
        t_rows = await peer.all_succeeded_at(backlog, LAT_TIMEOUT)
        if t_rows is not None:
            extra["rows_succeeded_after_done_s"] = round(t_rows - t_done, 3)
        emit(
            name,
            "drain_backlog",
            after_analyze=after_analyze,
            jobs=backlog,
            concurrency=CONCURRENCY,
            seconds=round(seconds, 3),
            rate=round(backlog / seconds),
            enqueue_api=peer.backlog_api,
            enqueue_seconds=round(enqueue_seconds, 3),
            **extra,
        )
    except Exception as exc:
        emit(
            name,
            "drain_backlog",
            after_analyze=after_analyze,
            error=f"{type(exc).__name__}: {exc}"[:800],
        )
    finally:
        worker.stop()


# -- taskrt, in process ----------------------------------------------------------------


def _taskrt_runtime(
    target: str, synchronous: str, started: list[float] | None = None, *, mode: str | None = None
) -> Any:
    from taskrt import JobContext, Runtime

    rt = Runtime(target, synchronous=synchronous, mode=mode)  # type: ignore[arg-type]

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


async def _drop_pg_schemas(base: str, schemas: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(_pg_url(base))
    try:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def _analyze_pg_schema(base: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_pg_url(base))
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
        for row in tables:
            await conn.execute(f'ANALYZE "{schema}"."{row["tablename"]}"')
    finally:
        await conn.close()


async def taskrt_section(name: str, tmp: Path, n: int, backlog: int) -> None:
    sync = "full" if name == "taskrt-full" else "normal"
    if name in PG_MODES:
        # A fresh schema of the server for each phase, dropped at the end.
        base = _pg_base_url()
        schemas = [_taskrt_pg_schema(phase) for phase in TASKRT_PG_PHASES]

        def target(phase: str) -> str:
            return _pg_url(base, schema=_taskrt_pg_schema(phase))

        try:
            await _drop_pg_schemas(base, schemas)  # leftovers of a run with this id
        except Exception as exc:
            for figure in figures_of(name):
                emit(name, figure, error=f"PostgreSQL: {type(exc).__name__}: {exc}"[:800])
            return

        async def analyze() -> None:
            await _analyze_pg_schema(base, _taskrt_pg_schema("e"))

        try:
            await _taskrt_phases(name, target, sync, n, backlog, analyze)
            if name == "taskrt-pg":
                await _claim_chain(name, base, backlog)
        finally:
            try:
                await _drop_pg_schemas(base, schemas)
            except Exception as exc:
                print(f"{name}: DROP SCHEMA failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    else:

        def target(phase: str) -> str:
            return str(tmp / f"{phase}.db")

        await _taskrt_phases(name, target, sync, n, backlog)


async def _taskrt_phases(
    name: str,
    target: Callable[[str], str],
    sync: str,
    n: int,
    backlog: int,
    analyze: Callable[[], Awaitable[None]] | None = None,
) -> None:
    # (a) enqueue rate, workers paused.
    try:
        rt = _taskrt_runtime(target("a"), sync, mode=PG_MODES.get(name))
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
        rt = _taskrt_runtime(target("b"), sync, mode=PG_MODES.get(name))
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
        rt = _taskrt_runtime(target("c"), sync, started, mode=PG_MODES.get(name))
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

    # (d) drain a backlog (on PostgreSQL, as the tables are, then after an ANALYZE).
    variants = (False, True) if analyze is not None else (False,)
    for after_analyze in variants:
        await _taskrt_drain(name, target, sync, backlog, analyze if after_analyze else None)


async def _taskrt_drain(
    name: str,
    target: Callable[[str], str],
    sync: str,
    backlog: int,
    analyze: Callable[[], Awaitable[None]] | None,
) -> None:
    """Jobs added behind a pool paused in this process only (not recorded in the
    database); then a new runtime on the database runs them."""
    fields: dict[str, Any] = {}
    if name in PG_MODES:
        fields["after_analyze"] = analyze is not None
    try:
        phase = "d" if analyze is None else "e"
        rt = _taskrt_runtime(target(phase), sync, mode=PG_MODES.get(name))
        pool = rt.pool("default")
        pool.pause()
        async with rt:
            t = time.monotonic()
            await pool.add_many("noop", [()] * backlog)
            enqueue_seconds = time.monotonic() - t
        if analyze is not None:
            await analyze()
        rt = _taskrt_runtime(target(phase), sync, mode=PG_MODES.get(name))
        pool = rt.pool("default")
        server_before = _server_cpu() if name in PG_MODES else None
        client_before = sum(os.times()[:2])
        t0 = time.monotonic()
        async with rt:
            t_open = time.monotonic()
            deadline = t0 + BACKLOG_TIMEOUT
            while pool.processed < backlog:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{pool.processed} of {backlog} jobs processed after {BACKLOG_TIMEOUT:.0f}s"
                    )
                await asyncio.sleep(0.001)
            await rt.store.flush()  # the last SUCCESS rows committed
            t_done = time.monotonic()
            # Read while the runtime's connections are open: an ended backend's CPU is gone.
            fields.update(_cpu_fields(server_before, client_before, backlog))
        seconds = t_done - t0
        emit(
            name,
            "drain_backlog",
            **fields,
            jobs=backlog,
            concurrency=CONCURRENCY,
            seconds=round(seconds, 3),
            rate=round(backlog / seconds),
            enqueue_api="pool.add_many (one call)",
            enqueue_seconds=round(enqueue_seconds, 3),
            start_seconds=round(t_open - t0, 3),
        )
    except Exception as exc:
        emit(name, "drain_backlog", **fields, error=f"{type(exc).__name__}: {exc}")


async def _claim_chain(name: str, base: str, backlog: int) -> None:
    """The floor of taskrt-pg's analyzed ``drain_backlog``, with no runtime: the same
    backlog, analyzed, drained by taskrt's own claim statement (``claim_sql``) in a
    chain, 10 jobs a claim (the free slots of a pool at concurrency 10), each
    claim's jobs ended at once by the least write (status and end time, one
    statement on a second connection, in flight while the next claim runs, one
    at a time, as the runtime's writer). A node of its own, a row of ``nodes``
    with a long TTL, claims them, in the schema of phase ``f``. What a drain costs
    above this is the runtime's."""
    import asyncpg

    from taskrt.store.postgres.sql import claim_sql

    schema = _taskrt_pg_schema("f")
    try:
        rt = _taskrt_runtime(_pg_url(base, schema=schema), "normal", mode=PG_MODES[name])
        rt.pool("default").pause()
        async with rt:
            await rt.pool("default").add_many("noop", [()] * backlog)
        await _analyze_pg_schema(base, schema)
        settings = {
            "search_path": f'"{schema}", public',
            "jit": "off",
            "plan_cache_mode": "force_generic_plan",
            "taskrt.lane": "0",
        }
        claims = await asyncpg.connect(_pg_url(base), server_settings=settings)
        ends = await asyncpg.connect(_pg_url(base), server_settings=settings)
        try:
            await claims.execute(
                "INSERT INTO nodes (id, host, pid, started_at, ttl) "
                "VALUES ('bench-floor', 'bench', $1, $2, 3600)",
                os.getpid(),
                time.time(),
            )
            claim = claim_sql(CONCURRENCY)
            end = (
                "UPDATE jobs SET status = 'SUCCESS', finished_at = $2, seq = seq + 1 "
                "WHERE id = ANY($1::bigint[])"
            )
            ended: asyncio.Future[Any] | None = None
            done = 0
            t0 = time.monotonic()
            while done < backlog:
                if time.monotonic() > t0 + BACKLOG_TIMEOUT:
                    raise TimeoutError(f"{done} of {backlog} jobs claimed")
                rows = await claims.fetch(
                    claim, "default", time.time(), ["noop"], CONCURRENCY, "bench-floor", [], []
                )
                if not rows:
                    raise RuntimeError(f"a claim found no job after {done} of {backlog}")
                if ended is not None:
                    await ended
                ended = asyncio.ensure_future(ends.execute(end, [r[0] for r in rows], time.time()))
                done += len(rows)
            if ended is not None:
                await ended
            seconds = time.monotonic() - t0
        finally:
            await claims.close()
            await ends.close()
        emit(
            name,
            "drain_backlog_floor",
            after_analyze=True,
            jobs=backlog,
            concurrency=CONCURRENCY,
            seconds=round(seconds, 3),
            rate=round(backlog / seconds),
        )
    except Exception as exc:
        emit(name, "drain_backlog_floor", error=f"{type(exc).__name__}: {exc}")


def section_main(name: str, tmp: Path, n: int, backlog: int) -> None:
    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(1)  # run the finally blocks: they stop the worker

    signal.signal(signal.SIGTERM, on_term)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if name.startswith("taskrt"):
        asyncio.run(taskrt_section(name, tmp, n, backlog))
    else:
        asyncio.run(peer_section(name, tmp, n, backlog))


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
    name: str,
    tmp: Path,
    n: int,
    env: dict[str, str],
    timeout: float = SECTION_TIMEOUT,
    backlog: int = BACKLOG,
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
                "--backlog",
                str(backlog),
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
    missing = [f for f in figures_of(name) if f not in seen]
    if missing:
        detail = stderr_path.read_text(errors="replace").strip()[-600:]
        for figure in missing:
            emit(
                name,
                figure,
                error=": ".join(x for x in (reason or "no figure printed", detail) if x),
            )


RAW_COMMITS = 1_000  # the setup line's raw_sequential_commits_per_s


async def _pg_server_info(base: str) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(_pg_url(base), timeout=10)
    try:
        info: dict[str, Any] = {"url": _without_password(_pg_url(base))}
        for setting in ("server_version", "synchronous_commit", "fsync", "wal_sync_method"):
            info[setting] = await conn.fetchval(f"SHOW {setting}")
        info["raw_sequential_commits_per_s"] = round(await _raw_commit_rate(conn))
        return info
    finally:
        await conn.close()


async def _raw_commit_rate(conn: Any) -> float:
    """One row inserted and committed at a time, each awaited, on a bare table: the
    ceiling of ``end_to_end`` (5,000 sequential enqueues) for any system that answers
    an enqueue once it is committed, whatever it does besides."""
    table = f'"bench_raw_commits_{_run_id()}"'
    await conn.execute(f"DROP TABLE IF EXISTS {table}")
    await conn.execute(f"CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, args TEXT NOT NULL)")
    try:
        insert = f"INSERT INTO {table} (args) VALUES ($1)"
        for _ in range(50):  # the statement prepared, the connection warm
            await conn.execute(insert, "[]")
        t = time.perf_counter()
        for _ in range(RAW_COMMITS):
            await conn.execute(insert, "[]")
        return RAW_COMMITS / (time.perf_counter() - t)
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")


async def _pg_cleanup(base: str) -> None:
    """What a section could not drop itself (it was killed): this run's schemas and database."""
    import asyncpg

    conn = await asyncpg.connect(_pg_url(base), timeout=10)
    try:
        for phase in TASKRT_PG_PHASES:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{_taskrt_pg_schema(phase)}" CASCADE')
        await conn.execute(f'DROP DATABASE IF EXISTS "{_procrastinate_db()}" WITH (FORCE)')
        await conn.execute(f'DROP TABLE IF EXISTS "bench_raw_commits_{_run_id()}"')
    finally:
        await conn.close()


def driver(
    only: list[str],
    n: int,
    keep: str | None = None,
    timeout: float | None = None,
    backlog: int = BACKLOG,
) -> None:
    def redis_version() -> str | None:
        binary = shutil.which("redis-server")
        if binary is None:
            return None
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()

    os.environ["COMPARE_RUN_ID"] = run_id = str(os.getpid())
    uses_pg = any(name in POSTGRES_SYSTEMS for name in only)
    postgres: dict[str, Any] | None = None
    if uses_pg:
        try:
            postgres = asyncio.run(_pg_server_info(_pg_base_url()))
        except Exception as exc:
            postgres = {"error": f"{type(exc).__name__}: {exc}"[:400]}

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
                "postgres": postgres,
                "versions": {
                    p: _version(p)
                    for p in (
                        "taskrt",
                        "aiosqlite",
                        "asyncpg",
                        "huey",
                        "arq",
                        "saq",
                        "celery",
                        "kombu",
                        "procrastinate",
                        "psycopg",
                        "psycopg-pool",
                    )
                }
                | {"redis-py": _version("redis")},
                "jobs": n,
                "backlog_jobs": backlog,
                "concurrency": CONCURRENCY,
                "latency_jobs": LAT_JOBS,
                "latency_rate_per_s": LAT_RATE,
                "run_id": run_id,
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
                    for figure in figures_of(name):
                        emit(name, figure, error=f"no Redis: {redis_error}")
                    continue
                try:
                    _flush(url)
                except Exception as exc:
                    for figure in figures_of(name):
                        emit(name, figure, error=f"Redis FLUSHALL failed: {exc}")
                    continue
            env = {**os.environ, "COMPARE_REDIS_URL": url or ""}
            time.sleep(1.0)  # let the previous system's processes go quiet
            if timeout is None:
                limit = BACKLOG_SECTION_TIMEOUT if name in BACKLOG_SYSTEMS else SECTION_TIMEOUT
            else:
                limit = timeout
            run_section(name, tmp / name, n, env, limit, backlog)
        if uses_pg:
            try:
                asyncio.run(_pg_cleanup(_pg_base_url()))
            except Exception as exc:
                print(f"PostgreSQL clean-up failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated systems: " + ",".join(SYSTEMS))
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument(
        "--backlog", type=int, default=BACKLOG, help="jobs of drain_backlog (default 10,000)"
    )
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help="keep databases and logs in this new folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--section-timeout",
        type=float,
        default=None,
        help=f"seconds per system (default {SECTION_TIMEOUT:.0f}, "
        f"{BACKLOG_SECTION_TIMEOUT:.0f} for those that measure drain_backlog)",
    )
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker)
    elif args.section:
        section_main(args.section, Path(args.tmp), args.jobs, args.backlog)
    else:
        only = args.only.split(",") if args.only else list(SYSTEMS)
        unknown = [s for s in only if s not in SYSTEMS]
        if unknown:
            parser.error(f"unknown systems: {', '.join(unknown)}")
        driver(only, args.jobs, args.tmp, args.section_timeout, args.backlog)


if __name__ == "__main__":
    main()
