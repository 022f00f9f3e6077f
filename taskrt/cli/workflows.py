"""``taskrt workflow``: a workflow's jobs, status and progress; ``--cancel`` stops it."""

from __future__ import annotations

import argparse

from ..models import WorkflowInfo
from .remote import opened
from .support import (
    OK,
    existing,
    in_event_loop,
    job_id,
    print_json,
    progress,
    reason_note,
    table,
    target_args,
)


def workflow_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=job_id, metavar="ID", help="the workflow's id (its first job's)")
    parser.add_argument(
        "--cancel", action="store_true", help="cancel every job of it that has not finished"
    )
    target_args(parser, url=True)


@in_event_loop
async def workflow(args: argparse.Namespace) -> int:
    existing(args.id)
    async with opened(args) as rt:
        if args.cancel:
            info = await rt.cancel_workflow(args.id)
        else:
            info = await rt.workflow(args.id)
    if args.json:
        print_json(info.to_dict())
        return OK
    print(describe(info))
    return OK


def describe(info: WorkflowInfo) -> str:
    """The workflow's status line, then a row per job with the jobs it waits for."""
    parents: dict[int, list[int]] = {}
    for child, parent in info.edges:
        parents.setdefault(child, []).append(parent)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(info.counts.items()))
    head = f"workflow {info.id}  {info.status.value}  {info.progress:.0%}  ({counts})"
    rows = [
        (
            job.id,
            job.task,
            " ".join(filter(None, (job.status.value, reason_note(job)))),
            progress(job),
            ",".join(str(p) for p in parents.get(job.id, [])) or "-",
        )
        for job in info.jobs
    ]
    return head + "\n" + table(("ID", "TASK", "STATUS", "PROGRESS", "AFTER"), rows)
