"""The database itself: ``taskrt migrate`` (create or upgrade the tables) and
``taskrt copy`` (a stopped SQLite file into an empty PostgreSQL schema)."""

from __future__ import annotations

import argparse
import os

from ..errors import StoreError
from ..runtime import Runtime
from ..store import is_server_url
from .support import (
    OK,
    UNAVAILABLE,
    CommandError,
    UsageError,
    check_db,
    check_server_url,
    check_taskrt_file,
    client_runtime,
    given_as,
    in_event_loop,
    print_json,
    target_args,
)


def migrate_args(parser: argparse.ArgumentParser) -> None:
    target_args(parser)


@in_event_loop
async def migrate(args: argparse.Namespace) -> int:
    """Create or upgrade the database's tables (safe while other processes run)."""
    # A new file is what migrate is for: only --app needs resolving.
    if args.db and not args.app:
        check_db(args.db, given_as(args, "db"))
    rt = Runtime(args.db, workers=False) if args.db and not args.app else client_runtime(args)
    found, now = await rt.store.migrate()
    database = printable(rt.path)
    if args.json:
        print_json({"database": database, "found": found, "version": now})
    elif found == now:
        print(f"{database}: schema version {now}, nothing to do")
    else:
        print(f"{database}: schema version {found} -> {now}")
    return OK


def printable(path: str) -> str:
    """A file name as text: its bytes that are not UTF-8 (``b"\\xff.db"``, which Python
    holds as surrogates that a UTF-8 stdout refuses) as ``\\xff``, as a shell's
    ``$'...'`` writes them."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def copy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from", dest="source", required=True, metavar="PATH", help="a stopped SQLite database"
    )
    parser.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="URL",
        help="an empty PostgreSQL schema: postgresql://user@host/db?schema=name",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


@in_event_loop
async def copy(args: argparse.Namespace) -> int:
    """Jobs, attempts, schedules, history and the id sequence, in one transaction."""
    if is_server_url(args.source) or not is_server_url(args.target):
        raise UsageError("copy goes --from a SQLite file --to a postgresql:// URL")
    check_server_url(args.target, "--to")
    check_taskrt_file(args.source)  # as ls does: exit 4 for a file that is no database
    from ..store.postgres.copy import copy_sqlite_to_postgres

    def told(table: str, rows: int) -> None:
        if not args.json:
            print(f"{table}: {rows} row(s)", flush=True)  # stderr only for failures

    try:
        done = await copy_sqlite_to_postgres(args.source, args.target, on_table=told)
    except StoreError as exc:
        raise CommandError(str(exc), UNAVAILABLE) from exc
    if args.json:
        print_json({"rows": done.rows, "last_id": done.last_id})
    else:
        print(f"copied {done.rows.get('jobs', 0)} job(s); the next id is above {done.last_id}")
    return OK
