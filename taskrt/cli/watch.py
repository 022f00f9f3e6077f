"""``taskrt watch``: follow one job until it ends, from a server (``--url``) or
from the database (``--app``/``--db``); the bar and the event sources are in
``taskrt.cli.progress``."""

from __future__ import annotations

import argparse

from .progress import exit_status, follow, runtime_events, server_events
from .support import (
    existing,
    in_event_loop,
    job_id,
    opened,
    request_headers,
    server_url,
    target_args,
)


def watch_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=job_id, metavar="ID", help="the job's id")
    target_args(parser, url=True)
    parser.add_argument(
        "--reconnects",
        type=int,
        default=5,
        help="with --url: reconnects in a row before giving up (default 5)",
    )


@in_event_loop
async def watch(args: argparse.Namespace) -> int:
    existing(args.id)  # as the server's 404 says for an id beyond 64 bits
    url = server_url(args)
    if url:
        events = server_events(
            url, args.id, headers=request_headers(args), max_reconnects=max(args.reconnects, 0)
        )
        view = await follow(events, args.id, json_lines=args.json)
        return exit_status(view)
    async with opened(args) as rt:
        view = await follow(runtime_events(rt, args.id), args.id, json_lines=args.json)
    return exit_status(view)


__all__ = ["watch", "watch_args"]
