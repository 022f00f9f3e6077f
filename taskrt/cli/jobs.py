"""The job commands of ``taskrt``: add, get, ls, cancel, retry, stats and cleanup.

Each opens the runtime as a client (support notes 1, 2), exits with a documented
status (support note 3) and prints a table, or the HTTP API's JSON under
``--json`` (support note 4).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..definitions import TaskCall, make_options
from ..errors import PoolNotFound
from ..models import TERMINAL, AttemptInfo, JobInfo, JobStatus
from ..retry import parse_age
from .progress import exit_status, follow, runtime_events
from .remote import opened
from .support import (
    NOT_FOUND,
    OK,
    CommandError,
    UsageError,
    cell,
    existing,
    ids_from,
    in_event_loop,
    job_id,
    later,
    moment,
    nonempty,
    pairs,
    plural,
    print_json,
    progress,
    reason_note,
    run_at_note,
    seconds,
    statuses,
    stored_ids,
    table,
    target_args,
    value_of,
    waiting_note,
    when,
)

# -- add -----------------------------------------------------------------------------------


def add_args(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--pool", type=nonempty, help="another pool than the task's")
    parser.add_argument("--delay", help="run no sooner than this from now: 30, 30s, 5m, 1h30m")
    parser.add_argument("--priority", type=int, help="higher runs first (default: the task's)")
    parser.add_argument(
        "--unique-key", help="if a live job has this key, return it instead of adding one"
    )
    parser.add_argument(
        "--unique-for", help="hold the unique key this long after the add: 30s, 1h, 1d"
    )
    parser.add_argument(
        "--on-conflict",
        choices=["return", "raise"],
        help="when the unique key is taken: return that job (default), or fail",
    )
    parser.add_argument("--lock", help="at most one running job with this lock key")
    parser.add_argument(
        "--deadline",
        help="not started after: epoch seconds, an ISO 8601 date-time or a duration from now",
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


@in_event_loop
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
            unique_for=args.unique_for,
            on_conflict=args.on_conflict,
            lock=args.lock,
            deadline=None if args.deadline is None else later(args.deadline, "--deadline"),
        )
        # ``enqueue``, as the HTTP API does: a job keyword argument named ``tx`` is the job's.
        new_id = await rt.enqueue(
            TaskCall(spec, options), args=call_args, kwargs=call_kwargs, pool=pool.name
        )
        job = await rt.get(new_id)
        if args.watch:
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


def get_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=job_id, metavar="ID", help="the job's id")
    target_args(parser, url=True)


@in_event_loop
async def get(args: argparse.Namespace) -> int:
    existing(args.id)
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
        ("run at", run_at_note(job)),
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


def filter_args(parser: argparse.ArgumentParser) -> None:
    """Which jobs, as ``ls`` and ``bulk`` read them."""
    parser.add_argument(
        "--status",
        action="append",
        default=[],
        help="WAITING, RUNNING, SUCCESS, FAILURE or CANCELLED (repeatable or comma-separated)",
    )
    parser.add_argument("--pool", type=nonempty, help="only this pool's jobs")
    parser.add_argument("--task", type=nonempty, help="only this task's jobs")
    parser.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only jobs whose metadata has KEY equal to VALUE (JSON when it parses)",
    )
    parser.add_argument(
        "--scheduled",
        action="store_true",
        help=(
            "only jobs waiting for a time still to come (a delay, a retry's backoff), "
            "not for other jobs (their parents, their batch)"
        ),
    )
    parser.add_argument(
        "--older-than", help="only jobs created that long ago or more: 3600, 12h, 7d"
    )


def ls_args(parser: argparse.ArgumentParser) -> None:
    filter_args(parser)
    parser.add_argument("--limit", type=int, default=50, help="jobs per page, 1-1000 (default 50)")
    parser.add_argument("--cursor", help="the cursor printed with the previous page")
    target_args(parser, url=True)


@in_event_loop
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
            scheduled=args.scheduled,
            older_than=age_of(args),
        )
    if args.json:
        print_json({"jobs": [j.to_dict() for j in page.jobs], "cursor": page.cursor})
        return OK
    if not page.jobs:
        print("no jobs", file=sys.stderr)
        return OK
    now = time.time()
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
                    (j.error if j.status is JobStatus.FAILURE else None)
                    or waiting_note(j.status, j.run_at, j.error, j.attempts, now)
                    or reason_note(j)
                    or j.message,
                )
                for j in page.jobs
            ],
        )
    )
    if page.cursor:
        print(f"more: --cursor {page.cursor}", file=sys.stderr)
    return OK


# -- cancel, retry -------------------------------------------------------------------------


def id_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=job_id, metavar="ID", help="the job's id")
    target_args(parser, url=True)


@in_event_loop
async def cancel(args: argparse.Namespace) -> int:
    existing(args.id)
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


@in_event_loop
async def retry(args: argparse.Namespace) -> int:
    existing(args.id)
    async with opened(args) as rt:
        job = await rt.retry(args.id)
    if args.json:
        print_json(job.to_dict())
    else:
        print(f"job {job.id} {job.status.value}: will run again")
    return OK


# -- stats ---------------------------------------------------------------------------------


def stats_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since",
        help="what finished at or after (whole minutes): epoch seconds, ISO 8601, or ago (24h)",
    )
    parser.add_argument("--until", help="what finished before (whole minutes; same forms)")
    target_args(parser, url=True)


@in_event_loop
async def stats(args: argparse.Namespace) -> int:
    now = time.time()
    since = moment(args.since, "--since", now=now)
    until = moment(args.until, "--until", now=now)
    if since is not None and until is not None and until < since:
        raise UsageError("--until is before --since")
    async with opened(args) as rt:
        result = await rt.stats(since=since, until=until)
        owner = rt.owner_status()
        # Mode "nodes" has no owner: every node runs jobs (PostgreSQL).
        nodes = await rt.cluster_nodes() if rt.mode == "nodes" else None
    if args.json:
        extra = {} if nodes is None else {"nodes": nodes}
        print_json({**result.to_dict(), "ownership": owner.to_dict(), **extra})
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
    # Who runs the jobs (the lease row, or the nodes alive), as the process this
    # command reached says.
    if nodes is not None:
        running = f"{len(nodes)} alive, each runs jobs" if nodes else None
        rows.append(("nodes", running or "none alive (added jobs wait in the database)"))
    else:
        rows.append(
            (
                "owner",
                f"{owner.owner} since {when(owner.since)}"
                if owner.owner is not None
                else "none reachable (added jobs wait in the database)",
            )
        )
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    return OK


# -- cleanup -------------------------------------------------------------------------------


def cleanup_args(parser: argparse.ArgumentParser) -> None:
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


@in_event_loop
async def cleanup(args: argparse.Namespace) -> int:
    age = parse_age(args.older_than, field="--older-than")
    chosen = statuses(args.status) or sorted(TERMINAL)
    async with opened(args) as rt:
        deleted = await rt.cleanup(older_than=age, statuses=chosen)
    if args.json:
        print_json({"deleted": deleted})
    else:
        print(f"deleted {plural(deleted, 'job')}")
    return OK


# -- many jobs at once, run now ---------------------------------------------------------


def age_of(args: argparse.Namespace) -> float | None:
    if args.older_than is None:
        return None
    return parse_age(args.older_than, field="--older-than")


def bulk_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["cancel", "retry", "purge"])
    filter_args(parser)
    parser.add_argument(
        "--id",
        action="append",
        type=stored_ids,
        default=None,
        metavar="ID[,ID...]",
        help="this job, or these, separated by commas (repeatable)",
    )
    parser.add_argument(
        "--ids-from",
        metavar="FILE",
        help="the jobs whose ids FILE holds, separated by whitespace or commas "
        "('-': standard input)",
    )
    parser.add_argument(
        "--yes", action="store_true", help="do it; without, only say how many jobs it would touch"
    )
    target_args(parser, url=True)


DONE = {"cancel": "cancelled", "retry": "retried", "purge": "purged"}


@in_event_loop
async def bulk(args: argparse.Namespace) -> int:
    ids = None
    if args.id is not None or args.ids_from is not None:
        ids = [job for given in args.id or [] for job in given]
        ids += ids_from(args.ids_from) if args.ids_from is not None else []
    filters = {
        "ids": ids,
        "status": statuses(args.status) or None,
        "pool": args.pool,
        "task": args.task,
        "metadata": pairs(args.meta, "--meta") or None,
        "scheduled": args.scheduled,
        "older_than": age_of(args),
    }
    if all(v is None or v is False for v in filters.values()):
        raise UsageError(
            "which jobs? give --id, --ids-from or a filter (--status, --pool, --task, --meta, "
            "--older-than, --scheduled); for every job say --older-than 0"
        )
    async with opened(args) as rt:
        result = await rt.bulk(args.action, dry_run=not args.yes, **filters)
    if args.json:
        print_json(result.to_dict())
    elif result.dry_run:
        print(f"would {args.action} {plural(result.matched, 'job')}; add --yes to do it")
    else:
        skipped = (
            f" ({result.skipped} skipped: not in a status it applies to)" if result.skipped else ""
        )
        print(f"{DONE[args.action]} {result.done} of {plural(result.matched, 'job')}{skipped}")
    return OK


@in_event_loop
async def run_now(args: argparse.Namespace) -> int:
    existing(args.id)
    async with opened(args) as rt:
        info = await rt.run_now(args.id)
    if args.json:
        print_json(info.to_dict())
    else:
        print(f"job {info.id} runs now ({info.status.value})")
    return OK


__all__ = [
    "add",
    "add_args",
    "bulk",
    "bulk_args",
    "cancel",
    "cleanup",
    "cleanup_args",
    "describe",
    "get",
    "get_args",
    "id_args",
    "ls",
    "ls_args",
    "retry",
    "run_now",
    "stats",
    "stats_args",
]
