"""The operator commands of ``taskrt``: serve, add, get, ls, cancel, retry, stats,
schedules, cleanup and watch (registered in ``taskrt.cli``'s command table).

Design notes (cited where they apply; docs/cli.md is the user's page):

1. **Which runtime.** ``--app MODULE:ATTR`` (or ``$TASKRT_APP``) names the
   application's ``Runtime``: its tasks, pools and task files are known, so
   ``add`` validates arguments and applies the task's defaults. ``--db PATH``
   (or ``$TASKRT_DB``) opens a bare database: everything but ``add``.
2. **Always a client.** These commands open the runtime with
   ``workers=False``: they read and write through the database, never take the
   ownership lease, never run a job or fire a schedule, so they work while a
   server owns the database (its poll picks up what they wrote). Only
   ``serve`` runs the runtime for real.
3. **Exit statuses** scripts can rely on: 0 ok; 1 the watched job ended
   FAILURE or CANCELLED (``watch``, ``add --watch``); 2 bad usage or input
   refused (unknown option, bad argument, not allowed in the job's state);
   3 not found (job, task, pool, schedule); 4 unavailable (no database, no
   server, the database is owned or locked, the pool is full: try again).
   Any other error is a bug: 1, with the traceback under ``--debug``.
   ``serve`` stopped by Ctrl-C exits 0; stopped by SIGTERM, uvicorn drains,
   then raises the signal again with its default action, so the process ends
   killed by SIGTERM (-15 to ``subprocess``, 143 in a shell), as a
   supervisor expects.
4. **Output.** Tables for people; ``--json`` prints the HTTP API's shapes
   (``JobInfo.to_dict()``, ``Stats.to_dict()`` ...) for scripts. Errors are one
   line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from .cli import CommandError, UsageError, command
from .cli_support import (
    NOT_FOUND,
    OK,
    UNAVAILABLE,
    async_command,
    cell,
    job_id,
    load_object,
    moment,
    opened,
    pairs,
    plural,
    print_json,
    progress,
    request_headers,
    seconds,
    statuses,
    table,
    target_args,
    value_of,
    when,
)
from .definitions import TaskCall, make_options
from .errors import InvalidOption, PoolNotFound
from .models import TERMINAL, AttemptInfo, JobInfo, JobStatus
from .retry import parse_duration
from .runtime import Runtime

# -- serve ---------------------------------------------------------------------------------


def _serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "app", metavar="MODULE:ATTR", help="the Runtime (or an ASGI app) to serve, e.g. app:rt"
    )
    parser.add_argument("--host", default="127.0.0.1", help="the interface (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="the TCP port (default: 8000)")
    parser.add_argument(
        "--allowed-host",
        action="append",
        metavar="HOST",
        help="a Host name to answer, e.g. jobs.example.com or *.example.com (repeatable; "
        "default: $TASKRT_ALLOWED_HOSTS, comma-separated; without either, a server on "
        "127.0.0.1 answers loopback names only). For a Runtime: an ASGI app checks its own",
    )
    parser.add_argument(
        "--reload", action="store_true", help="restart when the code changes (development)"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object a line, with job_id, task and attempt (taskrt.logging)",
    )


def asgi_app(reference: str, allowed_hosts: Sequence[str] | None = None) -> Any:
    """The app ``serve`` runs: ``create_app(rt, allowed_hosts=...)`` for a Runtime
    (it reads ``$TASKRT_TOKEN`` and ``$TASKRT_ALLOWED_HOSTS`` itself), else the
    object as it is, which configures its own hosts and auth."""
    found = load_object(reference)
    if isinstance(found, Runtime):
        from .web import create_app

        return create_app(found, allowed_hosts=allowed_hosts)
    if callable(found):
        if allowed_hosts is not None:
            raise UsageError(
                f"--allowed-host applies to a Runtime, and {reference} is an ASGI app: "
                "give its create_app(allowed_hosts=...), or set $TASKRT_ALLOWED_HOSTS"
            )
        return found
    raise UsageError(f"{reference} is a {type(found).__name__}, not a Runtime or an ASGI app")


def reload_factory() -> Any:
    """``uvicorn --reload`` imports the app anew in each worker: the reference is in the
    env (and ``--allowed-host`` is in ``$TASKRT_ALLOWED_HOSTS``, which ``create_app`` reads)."""
    return asgi_app(os.environ["TASKRT_SERVE_APP"])


def warn_if_open(app: Any, host: str, port: int) -> None:
    """A warning on stderr when ``app`` is served beyond loopback without any auth."""
    from .web.hosts import is_loopback

    api = getattr(getattr(app, "state", None), "taskrt", None)
    if api is None or api.settings.auth is not None or is_loopback(host):
        return
    print(
        f"taskrt: warning: serving {host}:{port} without authentication: anyone who can "
        "reach it can add, cancel and retry jobs. Set TASKRT_TOKEN (docs/http-api.md) "
        "or serve on 127.0.0.1.",
        file=sys.stderr,
    )


@command("serve", "serve the app's HTTP API and run its workers (uvicorn)", _serve_args)
def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .logging import configure

    try:
        # Import errors show here, before uvicorn starts.
        app = asgi_app(args.app, args.allowed_host)
    except InvalidOption as exc:  # a malformed --allowed-host, $TASKRT_ALLOWED_HOSTS, $TASKRT_TOKEN
        raise UsageError(str(exc)) from None
    warn_if_open(app, args.host, args.port)
    configure(format=args.log_format, level=args.log_level.upper())
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "timeout_graceful_shutdown": 5,
    }
    if args.log_format == "json":
        options["log_config"] = None  # uvicorn's records go through taskrt's JSON handler
    try:
        if args.reload:
            os.environ["TASKRT_SERVE_APP"] = args.app
            if args.allowed_host:
                os.environ["TASKRT_ALLOWED_HOSTS"] = ",".join(args.allowed_host)
            uvicorn.run("taskrt.cli_commands:reload_factory", factory=True, reload=True, **options)
        else:
            uvicorn.run(app, **options)
    except SystemExit as exc:  # uvicorn exits when it cannot bind or start the app
        if exc.code not in (0, None):
            raise CommandError(
                "the server stopped at start (port taken? database owned?); see the log above",
                UNAVAILABLE,
            ) from None
    return OK


# -- add -----------------------------------------------------------------------------------


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", metavar="TASK", help="the task's name")
    parser.add_argument(
        "--arg",
        dest="args",
        action="append",
        default=[],
        metavar="VALUE",
        help="a positional argument (repeatable); JSON when it parses, else text",
    )
    parser.add_argument(
        "--kwarg",
        dest="kwargs",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a keyword argument (repeatable); the value as for --arg",
    )
    parser.add_argument("--pool", help="another pool than the task's")
    parser.add_argument("--delay", help="run no sooner than this from now: 30, 30s, 5m, 1h30m")
    parser.add_argument("--priority", type=int, help="higher runs first (default: the task's)")
    parser.add_argument(
        "--unique-key", help="if a live job has this key, return it instead of adding one"
    )
    parser.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata (repeatable), searchable with ls --meta",
    )
    parser.add_argument(
        "--watch", action="store_true", help="then show the job's progress until it ends"
    )
    target_args(parser)


@async_command("add", "add a job (returns once it is durable)", _add_args)
async def add(args: argparse.Namespace) -> int:
    call_args = [value_of(v) for v in args.args]
    call_kwargs = pairs(args.kwargs, "--kwarg")
    metadata = pairs(args.meta, "--meta")
    async with opened(args) as rt:
        spec = rt.tasks.get(args.task)
        if spec is None:
            hint = "" if args.app else "; a bare --db does not know tasks: give --app MODULE:ATTR"
            raise CommandError(f"no task named {args.task!r}{hint}", NOT_FOUND)
        pool_name = args.pool or spec.pool
        pool = rt.pools.get(pool_name)
        if pool is None:
            raise PoolNotFound(pool_name)
        options = make_options(
            delay=args.delay,
            priority=args.priority,
            unique_key=args.unique_key,
            metadata=metadata or None,
        )
        # ``_add``, as the HTTP API does: a job keyword argument named ``tx`` is the job's.
        [new_id] = await rt._add(
            pool, TaskCall(spec, options), [(tuple(call_args), call_kwargs)], tx=None
        )
        job = await rt.get(new_id)
        if args.watch:
            from .cli_watch import exit_status, follow, runtime_events

            if not args.json:
                print(f"added job {job.id} ({job.task}, pool {job.pool})")
            view = await follow(runtime_events(rt, new_id), new_id, json_lines=args.json)
            return exit_status(view)
    if args.json:
        print_json(job.to_dict())
    else:
        print(f"added job {job.id} ({job.task}, pool {job.pool}, {job.status.value})")
    return OK


# -- get -----------------------------------------------------------------------------------


def _get_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=job_id, metavar="ID", help="the job's id")
    target_args(parser)


@async_command("get", "show one job: status, progress, result or error, attempts", _get_args)
async def get(args: argparse.Namespace) -> int:
    async with opened(args) as rt:
        job = await rt.get(args.id)
        attempts = await rt.attempts(args.id)
    if args.json:
        data = job.to_dict()
        data["attempt_records"] = [a.to_dict() for a in attempts]
        print_json(data)
        return OK
    print(describe(job, attempts))
    return OK


def describe(job: JobInfo, attempts: Sequence[AttemptInfo]) -> str:
    budget = "unlimited" if job.max_attempts is None else str(job.max_attempts)
    done = f" ({job.current:g}/{job.total:g})" if job.total else ""
    rows: list[tuple[str, Any]] = [
        ("status", job.status.value),
        ("task", job.task),
        ("pool", job.pool),
        ("progress", f"{progress(job)}{done} {job.message}".rstrip()),
        ("attempts", f"{job.attempts} of {budget}"),
        ("priority", job.priority),
        ("created", when(job.created_at)),
        ("run at", when(job.run_at)),
        ("started", when(job.started_at)),
        ("finished", when(job.finished_at)),
        ("duration", seconds(job.duration)),
        ("args", list(job.args)),
        ("kwargs", job.kwargs),
    ]
    if job.metadata:
        rows.append(("metadata", job.metadata))
    if job.unique_key:
        rows.append(("unique key", job.unique_key))
    if job.status is JobStatus.SUCCESS:
        rows.append(("result", job.result))
    if job.error:
        rows.append(("error", job.error))
    lines = [f"job {job.id}"]
    lines += [f"  {name:<11} {cell(value, 400)}" for name, value in rows]
    if attempts:
        lines.append("")
        lines.append(
            table(
                ["ATTEMPT", "OUTCOME", "STARTED", "DURATION", "ERROR"],
                [
                    (
                        str(a.number),
                        a.outcome.value,
                        when(a.started_at),
                        seconds(None if a.finished_at is None else a.finished_at - a.started_at),
                        a.error or "",
                    )
                    for a in attempts
                ],
                cut=80,
            )
        )
    return "\n".join(lines)


# -- ls ------------------------------------------------------------------------------------


def _ls_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--status",
        action="append",
        default=[],
        help="WAITING, RUNNING, SUCCESS, FAILURE or CANCELLED (repeatable or comma-separated)",
    )
    parser.add_argument("--pool", help="only this pool's jobs")
    parser.add_argument("--task", help="only this task's jobs")
    parser.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only jobs whose metadata has KEY equal to VALUE (JSON when it parses)",
    )
    parser.add_argument("--limit", type=int, default=50, help="jobs per page, 1-1000 (default 50)")
    parser.add_argument("--cursor", help="the cursor printed with the previous page")
    target_args(parser)


@async_command("ls", "list jobs, newest first, with filters", _ls_args)
async def ls(args: argparse.Namespace) -> int:
    chosen = statuses(args.status)
    metadata = pairs(args.meta, "--meta")
    async with opened(args) as rt:
        page = await rt.jobs(
            status=chosen or None,
            pool=args.pool,
            task=args.task,
            metadata=metadata,
            limit=args.limit,
            cursor=args.cursor,
        )
    if args.json:
        print_json({"jobs": [j.to_dict() for j in page.jobs], "cursor": page.cursor})
        return OK
    if not page.jobs:
        print("no jobs", file=sys.stderr)
        return OK
    print(
        table(
            ["ID", "STATUS", "TASK", "POOL", "PROGRESS", "ATTEMPTS", "CREATED", "MESSAGE"],
            [
                (
                    str(j.id),
                    j.status.value,
                    j.task,
                    j.pool,
                    progress(j),
                    str(j.attempts),
                    when(j.created_at),
                    (j.error if j.status is JobStatus.FAILURE else j.message) or "",
                )
                for j in page.jobs
            ],
        )
    )
    if page.cursor:
        print(f"more: --cursor {page.cursor}", file=sys.stderr)
    return OK


# -- cancel, retry -------------------------------------------------------------------------


def _id_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=job_id, metavar="ID", help="the job's id")
    target_args(parser)


@async_command("cancel", "cancel a waiting or running job", _id_args)
async def cancel(args: argparse.Namespace) -> int:
    async with opened(args) as rt:
        job = await rt.cancel(args.id)
    if args.json:
        print_json(job.to_dict())
    elif job.status is JobStatus.CANCELLED:
        print(f"job {job.id} CANCELLED")
    else:
        # A job running in another process: its owner cancels it at its next poll.
        print(f"job {job.id} {job.status.value}: cancel requested")
    return OK


@async_command("retry", "run a FAILURE or CANCELLED job again", _id_args)
async def retry(args: argparse.Namespace) -> int:
    async with opened(args) as rt:
        job = await rt.retry(args.id)
    if args.json:
        print_json(job.to_dict())
    else:
        print(f"job {job.id} {job.status.value}: will run again")
    return OK


# -- stats ---------------------------------------------------------------------------------


def _stats_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since", help="jobs created at or after: epoch seconds, ISO 8601, or ago (24h)"
    )
    parser.add_argument("--until", help="jobs created before (same forms)")
    target_args(parser)


@async_command("stats", "counts by status, success rate, mean and p95 duration", _stats_args)
async def stats(args: argparse.Namespace) -> int:
    now = time.time()
    since = moment(args.since, "--since", now=now)
    until = moment(args.until, "--until", now=now)
    if since is not None and until is not None and until < since:
        raise UsageError("--until is before --since")
    async with opened(args) as rt:
        result = await rt.stats(since=since, until=until)
    if args.json:
        print_json(result.to_dict())
        return OK
    rate = "-" if result.success_rate is None else f"{100 * result.success_rate:.1f}%"
    rows = [(status, str(count)) for status, count in result.counts.items()]
    rows += [
        ("total", str(result.total)),
        ("success rate", rate),
        ("mean duration", seconds(result.mean_duration)),
        ("p95 duration", seconds(result.p95_duration)),
    ]
    if since is not None or until is not None:
        rows.append(("window", f"{when(since)} .. {when(until)}"))
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    return OK


# -- schedules -----------------------------------------------------------------------------


def _schedules_args(parser: argparse.ArgumentParser) -> None:
    target_args(parser)


@async_command("schedules", "list the cron schedules and their next fire times", _schedules_args)
async def schedules(args: argparse.Namespace) -> int:
    async with opened(args) as rt:
        infos = await rt.schedules.list()
    if args.json:
        print_json([s.to_dict() for s in infos])
        return OK
    if not infos:
        print("no schedules", file=sys.stderr)
        return OK
    print(
        table(
            ["NAME", "TASK", "CRON", "TZ", "STATE", "NEXT", "LAST", "FIRES", "FAILURES"],
            [
                (
                    s.name,
                    s.task,
                    s.expression,
                    s.tz,
                    "paused" if s.paused else "active",
                    when(s.next_run_at),
                    when(s.last_run_at),
                    str(s.fires),
                    str(s.failures),
                )
                for s in infos
            ],
        )
    )
    return OK


# -- cleanup -------------------------------------------------------------------------------


def _cleanup_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--older-than",
        default="7d",
        help="finished longer ago than this: 7d, 12h, 3600 (default: 7d)",
    )
    parser.add_argument(
        "--status",
        action="append",
        default=[],
        help="only SUCCESS, FAILURE or CANCELLED jobs (repeatable; default: all three)",
    )
    target_args(parser)


@async_command("cleanup", "delete finished jobs older than an age", _cleanup_args)
async def cleanup(args: argparse.Namespace) -> int:
    age = parse_duration(args.older_than, field="--older-than")
    chosen = statuses(args.status) or sorted(TERMINAL)
    async with opened(args) as rt:
        deleted = await rt.cleanup(older_than=age, statuses=chosen)
    if args.json:
        print_json({"deleted": deleted})
    else:
        print(f"deleted {plural(deleted, 'job')}")
    return OK


# -- watch ---------------------------------------------------------------------------------


def _watch_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=job_id, metavar="ID", help="the job's id")
    target_args(parser, url=True)
    parser.add_argument(
        "--reconnects",
        type=int,
        default=5,
        help="with --url: reconnects in a row before giving up (default 5)",
    )


@async_command(
    "watch", "show a job's live progress bar until it ends (exit 1 unless SUCCESS)", _watch_args
)
async def watch(args: argparse.Namespace) -> int:
    from .cli_watch import exit_status, follow, runtime_events, server_events

    if args.url:
        if args.app or args.db:
            raise UsageError("give --url, or --app/--db, not both")
        events = server_events(
            args.url, args.id, headers=request_headers(args), max_reconnects=max(args.reconnects, 0)
        )
        view = await follow(events, args.id, json_lines=args.json)
        return exit_status(view)
    async with opened(args) as rt:
        view = await follow(runtime_events(rt, args.id), args.id, json_lines=args.json)
    return exit_status(view)


__all__ = [
    "add",
    "asgi_app",
    "cancel",
    "cleanup",
    "describe",
    "get",
    "ls",
    "reload_factory",
    "retry",
    "schedules",
    "serve",
    "stats",
    "warn_if_open",
    "watch",
]
