"""A large backlog of waiting jobs: memory, restart, reads and latency beside it.

    .venv/bin/python -m bench.backlog_bench                          # 100,000 and 1,000,000
    .venv/bin/python -m bench.backlog_bench --sizes 100000 --table   # one size, then a table
    .venv/bin/python -m bench.backlog_bench --sizes 100000,1000000,10000000 --table

Not part of ``python -m bench`` (it is long: a 10,000,000 backlog is minutes
of adding per shape). Prints one JSON line per figure, then (``--table``)
markdown tables. Every process below is a fresh ``python`` of its own (a
hidden sub-command of this module, given the database and the shape on its
command line), so each RSS is that process's alone; RSS is ``VmRSS`` of
``/proc/self/status`` after a ``gc.collect()``, in MB (2**20 bytes);
``full_gc_ms`` is the time of that full collection, which grows with every
object kept in memory (the runtime's loop watchdog may log it as a stall on
stderr: it is the bench's own, not the runtime's).

For each size N, and for each shape of backlog, on a database of its own in a
temporary folder (removed at the end):

- shapes: ``delayed``: N jobs delayed by 30 days (``task.options(delay=...)``),
  pool ``bulk`` running; ``runnable``: N jobs due now behind the paused pool
  ``bulk`` (paused with ``rt.change_pool(paused=True)``, which is recorded in
  the database, so the restarted process finds it paused too).
- ``backlog_add``: an owner ``Runtime(db)`` with a no-op task in pool ``bulk``
  (concurrency 1) is started; ``rss_empty_mb`` is read; N jobs are added with
  ``pool.add_many`` in chunks of 10,000; ``rss_after_mb`` is read.
  ``rss_above_empty_mb`` is the difference; ``add_rate_per_s`` is N over the
  time of the adds; ``db_mb`` the database file and its WAL on disk.
- ``backlog_restart``: a new process opens the same database: ``restart_s`` is
  the time ``async with rt`` takes to enter (recovery and intake done, pools
  serving, each list of each pool holding its first chunk of jobs);
  ``window_loaded_s`` the time until every pool's first window is in memory;
  ``rss_after_mb`` is read then (``rss_peak_mb``: the process's peak,
  ``VmHWM``); then the median (and max) in ms of 20 calls each of
  ``rt.stats()``, ``rt.stats(since=now - 3600, until=now)``,
  ``rt.pool_statistics()``, a ``/metrics`` render
  (``prometheus_client.generate_latest`` on ``taskrt.metrics.registry(rt)``,
  the registry ``GET /metrics`` serves), and, for the record, the dashboard's
  reads ``rt.jobs(status="WAITING", pool="bulk", limit=50)`` and
  ``rt.count(status="WAITING")``. ``stop_s``: the time ``async with`` takes to exit.
- ``backlog_latency``: in that restarted process, with a second pool ``fast``
  (concurrency 10): 200 runnable jobs added one at a time at 200 a second
  (after 10 not counted, to warm up), each timed from just before ``rt.add``
  to its handler's start (``time.perf_counter()``): p50 and p99 in ms. Then 20
  jobs delayed by 200 ms, one after the other: how late each started after its
  ``run_at`` (its handler's ``time.time()`` minus the stored ``run_at``),
  median in ms; ``loop_stalls``: event-loop stalls over the runtime's
  watchdog threshold seen meanwhile. The ratios are to ``backlog_baseline``:
  the same process run on an empty database, measured for each size just
  before that size's shapes.

``--postgres URL`` runs the same on a PostgreSQL server instead of SQLite
files: each database is a schema of its own at that URL
(``bench_backlog_<shape>_<size>_<pid>``), dropped at the end; ``db_mb`` is
then the schema's tables with their indexes and TOAST
(``pg_total_relation_size``). Every node there runs workers (mode
``"nodes"``, the default), so the restart is a node's start.

``Runtime(..., window=N)`` (a bounded window of waiting jobs per pool in
memory) is passed only when the installed ``Runtime`` takes ``window``
(``--window N``, else its default); every record says the window used
(``null``: this ``Runtime`` has no window, every waiting job is in memory).

A process whose RSS passes ``--max-rss-mb`` (default: 80% of the memory
available when the bench starts) is stopped and reported as ``backlog_error``
rather than left to the OOM killer; so is one that runs past ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from taskrt import JobContext, Runtime
from taskrt.definitions import Task
from taskrt.metrics import registry

ROOT = Path(__file__).resolve().parent.parent
BULK = "bulk"
FAST = "fast"
CHUNK = 10_000
DELAY = 30 * 86_400.0  # 30 days
SHAPES = ("delayed", "runnable")
REPEAT = 20
LATENCY_JOBS = 200
LATENCY_WARMUP = 10
LATENCY_RATE = 200.0
LATE_JOBS = 20
LATE_DELAY = 0.2
READS = ("stats", "stats_1h", "pool_statistics", "metrics", "jobs_page", "count_waiting")


def emit(name: str, **fields: Any) -> None:
    print(json.dumps({"bench": name, **fields}), flush=True)


def note(message: str) -> None:
    print(f"[backlog_bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- measuring ---------------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    return float("nan")


def rss_mb() -> float:
    gc.collect()
    return round(_status_mb("VmRSS"), 1)


def full_gc_ms() -> float:
    """The time of one full ``gc.collect()``: what every object kept in memory costs it."""
    t = time.perf_counter()
    gc.collect()
    return round((time.perf_counter() - t) * 1000, 1)


def peak_mb() -> float:
    return round(_status_mb("VmHWM"), 1)


def available_mb() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def guard_memory(limit_mb: float) -> None:
    """Stop this process (exit 3) once its RSS passes ``limit_mb``, before the OOM killer."""

    def watch() -> None:
        while True:
            rss = _status_mb("VmRSS")
            if rss > limit_mb:
                result = {"error": f"RSS {rss:.0f} MB passed --max-rss-mb {limit_mb:.0f}"}
                sys.stdout.write(json.dumps(result) + "\n")
                sys.stdout.flush()
                os._exit(3)
            time.sleep(0.1)

    threading.Thread(target=watch, name="rss-guard", daemon=True).start()


def window_options(window: int | None) -> tuple[dict[str, Any], int | None]:
    """The keyword to pass to ``Runtime`` (if it takes ``window``) and the window in force."""
    params = inspect.signature(Runtime).parameters
    if "window" not in params:
        return {}, None
    if window is None:
        default = params["window"].default
        return {}, default if isinstance(default, int) else None
    return {"window": window}, window


# -- what every process declares ----------------------------------------------------------------


class Stamps:
    """When each ``stamp`` job's handler started: ``perf_counter`` and wall clock."""

    def __init__(self) -> None:
        self.perf: dict[int, float] = {}
        self.wall: dict[int, float] = {}


def declare(rt: Runtime, stamps: Stamps) -> tuple[Task[Any, Any], Task[Any, Any]]:
    rt.pool(BULK, concurrency=1)
    rt.pool(FAST, concurrency=10)

    @rt.task(name="noop", pool=BULK)
    async def noop(job: JobContext) -> None:
        return None

    @rt.task(name="stamp", pool=FAST)
    async def stamp(job: JobContext) -> None:
        stamps.perf[job.id] = time.perf_counter()
        stamps.wall[job.id] = time.time()

    return noop, stamp


def make_runtime(
    db: str, window: int | None
) -> tuple[Runtime, Stamps, Task[Any, Any], Task[Any, Any]]:
    kwargs, _ = window_options(window)
    rt = Runtime(db, **kwargs)
    stamps = Stamps()
    noop, stamp = declare(rt, stamps)
    return rt, stamps, noop, stamp


# -- child 1: fill a database -------------------------------------------------------------------


async def fill(db: str, shape: str, n: int, window: int | None) -> dict[str, Any]:
    rt, _, noop, _ = make_runtime(db, window)
    async with rt:
        if shape == "runnable":
            await rt.change_pool(BULK, paused=True)  # recorded: the restart finds it paused
        empty = rss_mb()
        pool = rt.pool(BULK)
        call = noop.options(delay=DELAY) if shape == "delayed" else noop
        done = 0
        t = time.perf_counter()
        last_note = t
        while done < n:
            k = min(CHUNK, n - done)
            await pool.add_many(call, [()] * k)
            done += k
            if time.perf_counter() - last_note > 30:
                last_note = time.perf_counter()
                rate = done / (last_note - t)
                note(f"fill {shape}: {done:,}/{n:,} added, {rate:,.0f}/s, RSS {rss_mb():,.0f} MB")
        elapsed = time.perf_counter() - t
        gc_ms = full_gc_ms()
        after = rss_mb()
        waiting = pool.waiting
        size = await db_bytes(rt, db)
        t_stop = time.perf_counter()
    stop_s = time.perf_counter() - t_stop
    return {
        "rss_empty_mb": empty,
        "rss_after_mb": after,
        "rss_above_empty_mb": round(after - empty, 1),
        "rss_peak_mb": peak_mb(),
        "full_gc_ms": gc_ms,
        "add_rate_per_s": round(n / elapsed) if n else None,
        "add_s": round(elapsed, 2),
        "pool_waiting": waiting,
        "stop_s": round(stop_s, 3),
        "db_mb": round(size / 2**20, 1),
    }


async def db_bytes(rt: Runtime, db: str) -> int:
    """The database on disk: an SQLite file with its log, or a PostgreSQL schema's tables."""
    if not is_postgres(db):
        return sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))
    import asyncpg

    conn = await asyncpg.connect(server_url(db))
    try:
        return int(
            await conn.fetchval(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relkind = 'r'",
                schema_of(db),
            )
        )
    finally:
        await conn.close()


def is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def schema_of(db: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(db).query)["schema"][0]


def server_url(db: str) -> str:
    """The URL without taskrt's own parameters (what asyncpg connects to)."""
    parts = urllib.parse.urlsplit(db)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "schema"]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


# -- child 2: restart on it, time the reads, measure latency ------------------------------------


async def timed(call: Callable[[], Awaitable[Any] | Any]) -> tuple[float, float]:
    """Median and max in ms of ``REPEAT`` calls (awaited when they return an awaitable)."""
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        result = call()
        if inspect.isawaitable(result):
            await result
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 3), round(max(times), 3)


async def add_latency(rt: Runtime, stamps: Stamps, stamp: Task[Any, Any]) -> dict[str, Any]:
    added: dict[int, float] = {}
    for i in range(LATENCY_WARMUP + LATENCY_JOBS):
        t0 = time.perf_counter()
        job_id = await rt.add(stamp)
        if i >= LATENCY_WARMUP:
            added[job_id] = t0
        await asyncio.sleep(max(0.0, 1 / LATENCY_RATE - (time.perf_counter() - t0)))
    deadline = time.perf_counter() + 60
    while not all(j in stamps.perf for j in added) and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    values = [(stamps.perf[j] - t0) * 1000 for j, t0 in added.items() if j in stamps.perf]
    late: list[float] = []
    for _ in range(LATE_JOBS):
        job_id = await rt.add(stamp.options(delay=LATE_DELAY))
        info = await rt.wait(job_id, timeout=30)
        if job_id in stamps.wall:
            late.append((stamps.wall[job_id] - info.run_at) * 1000)
    return {
        "p50_ms": round(percentile(values, 50), 3) if values else None,
        "p99_ms": round(percentile(values, 99), 3) if values else None,
        "started": len(values),
        "jobs": LATENCY_JOBS,
        "delayed_200ms_late_ms": round(statistics.median(late), 3) if late else None,
        "delayed_200ms_late_max_ms": round(max(late), 3) if late else None,
    }


async def restart(db: str, window: int | None) -> dict[str, Any]:
    rt, stamps, _, stamp = make_runtime(db, window)
    before = rss_mb()
    t = time.perf_counter()
    async with rt:
        restart_s = time.perf_counter() - t
        # Pools serve once each list has its first chunk; the rest of the first window
        # comes in while they run (taskrt.waiting note 6). Memory and reads are measured
        # once it is in.
        queues = [rt.pool(name).queue for name in (BULK, FAST)]
        while any(getattr(queue, "refilling", False) for queue in queues):
            await asyncio.sleep(0.001)
        loaded_s = time.perf_counter() - t
        gc_ms = full_gc_ms()
        after = rss_mb()
        bulk = rt.pool(BULK).statistics()
        reg = registry(rt)
        now = time.time()
        reads: dict[str, Callable[[], Awaitable[Any] | Any]] = {
            "stats": lambda: rt.stats(),
            "stats_1h": lambda: rt.stats(since=now - 3600, until=now),
            "pool_statistics": rt.pool_statistics,
            "metrics": lambda: generate_latest(reg),
            "jobs_page": lambda: rt.jobs(status="WAITING", pool=BULK, limit=50),
            "count_waiting": lambda: rt.count(status="WAITING"),
        }
        result: dict[str, Any] = {
            "restart_s": round(restart_s, 3),
            "window_loaded_s": round(loaded_s, 3),
            "rss_before_start_mb": before,
            "rss_after_mb": after,
            "full_gc_ms": gc_ms,
            "pool_waiting": bulk.waiting,
            "paused": bulk.paused,
        }
        for name, call in reads.items():
            median, worst = await timed(call)
            result[f"{name}_ms"] = median
            result[f"{name}_max_ms"] = worst
        result["rss_peak_mb"] = peak_mb()
        watchdog = getattr(rt, "loop_watchdog", None)
        stalls = None if watchdog is None else watchdog.statistics()
        latency = await add_latency(rt, stamps, stamp)
        if watchdog is not None and stalls is not None:  # stalls over its threshold (1 s)
            now_stalls = watchdog.statistics()
            latency["loop_stalls"] = now_stalls.stalls - stalls.stalls
        result["latency"] = latency
        t_stop = time.perf_counter()
    result["stop_s"] = round(time.perf_counter() - t_stop, 3)
    return result


def child(argv: list[str]) -> None:
    """``_fill DB SHAPE N WINDOW LIMIT`` or ``_restart DB WINDOW LIMIT`` (WINDOW ``-``: none)."""
    command, db = argv[0], argv[1]
    if command == "_fill":
        shape, n, window, limit = argv[2], int(argv[3]), argv[4], float(argv[5])
    else:
        shape, n, window, limit = "", 0, argv[2], float(argv[3])
    guard_memory(limit)
    win = None if window == "-" else int(window)
    if command == "_fill":
        result = asyncio.run(fill(db, shape, n, win))
    else:
        result = asyncio.run(restart(db, win))
    print(json.dumps(result), flush=True)


# -- the parent ---------------------------------------------------------------------------------


class Runner:
    def __init__(self, window: int | None, limit_mb: float, timeout: float) -> None:
        self.window = "-" if window is None else str(window)
        self.limit = str(round(limit_mb))
        self.timeout = timeout

    def run(self, *args: str) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "bench.backlog_bench", *args]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, timeout=self.timeout
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {self.timeout:.0f} s"}
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        try:
            result: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            result = {"error": f"exit status {proc.returncode}, no result"}
        if proc.returncode != 0 and "error" not in result:
            result["error"] = f"exit status {proc.returncode}"
        return result

    def fill(self, db: str, shape: str, n: int) -> dict[str, Any]:
        return self.run("_fill", db, shape, str(n), self.window, self.limit)

    def restart(self, db: str) -> dict[str, Any]:
        return self.run("_restart", db, self.window, self.limit)


class Databases:
    """Where each database of the run lives: SQLite files in a temporary folder,
    or schemas on a PostgreSQL server (``--postgres``)."""

    def __init__(self, folder: Path, postgres: str | None) -> None:
        self.folder = folder
        self.postgres = postgres

    def new(self, name: str) -> str:
        if self.postgres is None:
            return str(self.folder / f"{name}.db")
        schema = f"bench_backlog_{name.replace('-', '_')}_{os.getpid()}"
        parts = urllib.parse.urlsplit(self.postgres)
        query = [*urllib.parse.parse_qsl(parts.query), ("schema", schema)]
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

    def remove(self, db: str) -> None:
        if is_postgres(db):
            asyncio.run(_drop_schema(db))
            return
        path = Path(db)
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(db + suffix).unlink(missing_ok=True)
        for extra in path.parent.glob(path.name + "*"):  # the ownership lock, a relay socket ...
            extra.unlink(missing_ok=True)


async def _drop_schema(db: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server_url(db))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema_of(db)}" CASCADE')
    finally:
        await conn.close()


def ratio(value: Any, base: Any) -> float | None:
    if isinstance(value, int | float) and isinstance(base, int | float) and base > 0:
        return round(value / base, 2)
    return None


def bench_size(
    runner: Runner, dbs: Databases, n: int, shapes: list[str], window: int | None
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    note(f"size {n:,}: baseline on an empty database")
    empty = dbs.new(f"empty-{n}")
    filled = runner.fill(empty, "delayed", 0)
    base = runner.restart(empty) if "error" not in filled else filled
    dbs.remove(empty)
    if "error" in base:
        emit("backlog_error", size=n, shape="empty", window=window, error=base["error"])
        base_latency: dict[str, Any] = {}
    else:
        base_latency = base.pop("latency")
        emit("backlog_baseline", size=0, for_size=n, window=window, **base, **base_latency)
    for shape in shapes:
        row: dict[str, Any] = {"size": n, "shape": shape, "window": window}
        db = dbs.new(f"{shape}-{n}")
        note(f"size {n:,}, {shape}: adding")
        added = runner.fill(db, shape, n)
        if "error" in added:
            emit("backlog_error", size=n, shape=shape, window=window, step="add", **added)
            dbs.remove(db)
            rows.append({**row, "error": added["error"]})
            continue
        emit("backlog_add", size=n, shape=shape, window=window, **added)
        row["add"] = added
        note(f"size {n:,}, {shape}: restarting")
        again = runner.restart(db)
        dbs.remove(db)
        if "error" in again:
            emit("backlog_error", size=n, shape=shape, window=window, step="restart", **again)
            rows.append({**row, "error": again["error"]})
            continue
        latency = again.pop("latency")
        emit("backlog_restart", size=n, shape=shape, window=window, **again)
        for key in ("p50_ms", "p99_ms", "delayed_200ms_late_ms"):
            latency[f"baseline_{key}"] = base_latency.get(key)
        latency["ratio_p50"] = ratio(latency["p50_ms"], base_latency.get("p50_ms"))
        latency["ratio_p99"] = ratio(latency["p99_ms"], base_latency.get("p99_ms"))
        emit("backlog_latency", size=n, shape=shape, window=window, **latency)
        rows.append({**row, "restart": again, "latency": latency, "baseline": base})
    return rows


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> None:
    print()
    print("Memory and restart (MB, s):")
    print()
    print(
        "| backlog | shape | window | RSS empty | RSS after adding | above empty | adds/s "
        "| restart s | RSS after restart | peak RSS | full gc ms |"
    )
    print("|" + "---|" * 11)
    for r in rows:
        head = f"| {r['size']:,} | {r['shape']} | {_cell(r['window'])} "
        if "error" in r:
            print(head + f"| {r['error']} |" + " |" * 7)
            continue
        a, s = r["add"], r["restart"]
        print(
            head + f"| {_cell(a['rss_empty_mb'])} | {_cell(a['rss_after_mb'])} "
            f"| {_cell(a['rss_above_empty_mb'])} | {_cell(a['add_rate_per_s'])} "
            f"| {_cell(s['restart_s'], 2)} | {_cell(s['rss_after_mb'])} | {_cell(s['rss_peak_mb'])} "
            f"| {_cell(s['full_gc_ms'])} |"
        )
    print()
    print("Reads after the restart (median of 20, ms), empty database in brackets; latency (ms):")
    print()
    print(
        "| backlog | shape | stats() | stats(1 h) | pool_statistics() | /metrics | jobs page "
        "| count | add→start p50 | p99 | ratio p50 / p99 | 200 ms delay: late by |"
    )
    print("|" + "---|" * 12)
    for r in rows:
        if "error" in r:
            continue
        s, lat, base = r["restart"], r["latency"], r["baseline"]
        cells = [f"{_cell(s[f'{k}_ms'], 2)} ({_cell(base.get(f'{k}_ms'), 2)})" for k in READS]
        print(
            f"| {r['size']:,} | {r['shape']} | "
            + " | ".join(cells)
            + f" | {_cell(lat['p50_ms'], 3)} ({_cell(lat['baseline_p50_ms'], 3)})"
            f" | {_cell(lat['p99_ms'], 3)} ({_cell(lat['baseline_p99_ms'], 3)})"
            f" | {_cell(lat['ratio_p50'], 2)} / {_cell(lat['ratio_p99'], 2)}"
            f" | {_cell(lat['delayed_200ms_late_ms'], 2)} ({_cell(lat['baseline_delayed_200ms_late_ms'], 2)}) |"
        )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_fill", "_restart"):
        child(argv)
        return
    parser = argparse.ArgumentParser(prog="python -m bench.backlog_bench", description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000", help="backlog sizes, comma separated")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="delayed,runnable")
    parser.add_argument(
        "--window", type=int, default=None, help="Runtime(window=N), if it takes one"
    )
    parser.add_argument("--table", action="store_true", help="markdown tables at the end")
    parser.add_argument(
        "--max-rss-mb", type=float, default=None, help="stop a process past this RSS"
    )
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds per process")
    parser.add_argument("--tmpdir", default=None, help="where the temporary folder goes")
    parser.add_argument(
        "--postgres", default=None, help="a PostgreSQL URL: schemas there instead of SQLite files"
    )
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if any(s not in SHAPES for s in shapes):
        parser.error(f"--shapes: expected some of {', '.join(SHAPES)}")
    kwargs, window = window_options(args.window)
    if args.window is not None and not kwargs:
        note("this Runtime takes no window=: --window ignored")
    limit = args.max_rss_mb if args.max_rss_mb is not None else 0.8 * available_mb()
    emit(
        "backlog_config",
        sizes=sizes,
        shapes=shapes,
        window=window,
        runtime_takes_window="window" in inspect.signature(Runtime).parameters,
        max_rss_mb=round(limit),
        cpus=os.cpu_count(),
        backend="sqlite" if args.postgres is None else "postgresql",
    )
    runner = Runner(args.window if kwargs else None, limit, args.timeout)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="taskrt-backlog-", dir=args.tmpdir) as tmp:
        for n in sizes:
            rows += bench_size(runner, Databases(Path(tmp), args.postgres), n, shapes, window)
    if args.table:
        table(rows)


if __name__ == "__main__":
    main()
