"""``taskrt schedules``: the cron schedules and their next fire times."""

from __future__ import annotations

import argparse
import sys

from .remote import opened
from .support import OK, in_event_loop, print_json, table, target_args, when


def schedules_args(parser: argparse.ArgumentParser) -> None:
    target_args(parser, url=True)


@in_event_loop
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


__all__ = ["schedules", "schedules_args"]
