"""What the command modules share: the CLI's errors and exit statuses, the one
error formatter, finding the runtime, parsing values and printing tables.

It imports no other module of ``taskrt.cli``: the commands import it, ``main``
imports the commands (``taskrt.cli`` package docstring).

Design notes (cited where they apply, here and in the command modules as
"support note N"; docs/cli.md is the user's page):

1. **Which runtime.** ``--app MODULE:ATTR`` (or ``$TASKRT_APP``) names the
   application's ``Runtime``: its tasks, pools and task files are known, so
   ``add`` validates arguments and applies the task's defaults. ``--db PATH``
   (or ``$TASKRT_DB``) opens a bare database: everything but ``add``. Only
   ``migrate`` makes one (or upgrades one of the first release): a path that is
   not a taskrt database is refused before the runtime opens it, after a look
   that writes nothing (``check_taskrt_file``), a malformed URL or a path that
   SQLite would not open as the file it names (a ``file:`` URI) as bad usage
   (``check_db``). ``--url`` (or ``$TASKRT_URL``) names a running server
   instead; every command that takes it reads it through ``server_url``, which
   refuses a malformed one as bad usage (``check_base_url``).
2. **Always a client.** These commands open the runtime with
   ``workers=False``: they never run a job or fire a schedule, so they work
   while a server owns the database (they go through its relay; without one,
   through the database, which the next owner polls). Only ``serve`` runs the
   runtime for real.
3. **Exit statuses** scripts can rely on: 0 ok; 1 the watched job ended
   FAILURE or CANCELLED (``watch``, ``add --watch``); 2 bad usage or input
   refused (unknown option, bad argument, not allowed in the job's state);
   3 not found (job, task, pool, schedule); 4 unavailable (no database, no
   server, the database is owned or locked, the pool is full: try again).
   Any other error is a bug: 1, with the traceback under ``--debug``.
   ``serve`` stopped by Ctrl-C exits 0; stopped by SIGTERM, uvicorn drains,
   then raises the signal again with its default action, so the process ends
   killed by SIGTERM (-15 to ``subprocess``, 143 in a shell), as a
   supervisor expects; with ``--workers N`` too (``taskrt.cli.serve``'s note).
4. **Output.** Tables for people; ``--json`` prints the HTTP API's shapes
   (``JobInfo.to_dict()``, ``Stats.to_dict()`` ...) for scripts. Errors are one
   line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import ipaddress
import json
import math
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..errors import (
    InvalidOption,
    JobNotFound,
    OwnershipError,
    PoolNotFound,
    QueueFull,
    RuntimeNotStarted,
    SchemaTooNew,
    StoreError,
    TaskNotFound,
    TaskrtError,
)
from ..limits import INT64_MAX
from ..models import BLOCKED_AT, JobInfo, JobStatus, percent
from ..retry import parse_duration
from ..runtime import Runtime
from ..store import SCHEMA_VERSION, is_server_url, look, path_problem

OK, JOB_FAILED, USAGE, NOT_FOUND, UNAVAILABLE = 0, 1, 2, 3, 4

Run = Callable[[argparse.Namespace], int]
AsyncRun = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


# -- errors (note 3) -----------------------------------------------------------------------


class CommandError(Exception):
    """An expected failure of a command: one line on stderr, exit ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class UsageError(CommandError):
    """Bad arguments found after parsing (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


class StreamError(Exception):
    """The server's stream could not be read (exit status ``status``)."""

    def __init__(self, message: str, status: int = 4) -> None:
        super().__init__(message)
        self.status = status


def status_of(exc: BaseException) -> int:
    """The exit status of an error a command let through (note 3)."""
    from ..scheduler import ScheduleNotFound

    if isinstance(exc, JobNotFound | TaskNotFound | PoolNotFound | ScheduleNotFound):
        return NOT_FOUND
    if isinstance(exc, StoreError | OwnershipError | QueueFull | RuntimeNotStarted | OSError):
        return UNAVAILABLE
    if isinstance(exc, TaskrtError):
        return USAGE
    return JOB_FAILED


def one_line(exc: BaseException) -> str:
    """An error as one line: the message of a taskrt or command error, else
    ``TypeName: message`` (whitespace folded; the type name alone when empty)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, TaskrtError | CommandError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def error(message: str) -> None:
    """Print ``taskrt: error: message`` on stderr (note 4)."""
    print(f"taskrt: error: {message}", file=sys.stderr)


def in_event_loop(fn: AsyncRun) -> Run:
    """An ``async`` command as a command: run in ``asyncio.run``, its errors mapped
    to statuses (note 3). It only wraps; ``taskrt.cli.dispatch`` lists the commands."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(fn(args))
        except (CommandError, BrokenPipeError):
            raise  # a closed stdout is the dispatcher's (``taskrt ls | head``)
        except StreamError as exc:
            raise CommandError(str(exc), exc.status) from exc
        except (TaskrtError, OSError) as exc:
            raise CommandError(one_line(exc), status_of(exc)) from exc

    return run


# -- which runtime (notes 1, 2) ------------------------------------------------------------


TARGETS = {"app": "TASKRT_APP", "db": "TASKRT_DB", "url": "TASKRT_URL"}


def targets_from_env(args: argparse.Namespace) -> None:
    """Where the jobs are: a flag on the command line wins over every variable.

    Only when none of ``--app``, ``--db`` and ``--url`` is given do the
    variables count (``$TASKRT_DB`` set in the shell must not clash with an
    explicit ``--app``).
    """
    present = [name for name in TARGETS if hasattr(args, name)]
    if not present or any(getattr(args, name) for name in present):
        return
    for name in present:
        setattr(args, name, os.environ.get(TARGETS[name]) or None)
    if args.app and getattr(args, "db", None):
        args.db = None  # both variables set: the app knows its tasks and its database
    args.from_env = {name: f"${TARGETS[name]}" for name in present if getattr(args, name)}


def given_as(args: argparse.Namespace, name: str) -> str:
    """How the user gave target ``name`` (``"db"``), for a message about its value:
    its flag (``--db``), or the variable it was read from (``$TASKRT_DB``)."""
    taken: dict[str, str] = getattr(args, "from_env", {})
    return taken.get(name, f"--{name}")


def target_args(parser: argparse.ArgumentParser, *, url: bool = False) -> None:
    """``--app``, ``--db`` (and ``--url``) and ``--json``: how a command finds its jobs."""
    where = parser.add_argument_group("where the jobs are")
    where.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help="the application's Runtime, e.g. myapp.tasks:rt (default: $TASKRT_APP)",
    )
    where.add_argument(
        "--db",
        metavar="PATH|URL",
        help="a database file or a postgresql:// URL, without the app (default: $TASKRT_DB)",
    )
    if url:
        where.add_argument(
            "--url",
            metavar="URL",
            help="a running server's base URL, e.g. http://127.0.0.1:8000 (default: $TASKRT_URL)",
        )
        where.add_argument(
            "-H",
            "--header",
            action="append",
            default=[],
            metavar="NAME:VALUE",
            help="an HTTP header for --url (repeatable), e.g. 'Authorization: Bearer ...'",
        )
        where.add_argument(
            "--token",
            metavar="TOKEN",
            default=os.environ.get("TASKRT_TOKEN") or None,
            help="with --url: the server's token, sent as 'Authorization: Bearer TOKEN' "
            "unless --header gives one (default: $TASKRT_TOKEN; prefer the variable: "
            "other users can read a command line)",
        )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def request_headers(args: argparse.Namespace) -> dict[str, str]:
    """The HTTP headers of a ``--url`` command: ``--header``, then ``--token``."""
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"--header expects NAME:VALUE, found {item!r}")
        headers[name.strip()] = value.strip()
    if args.token and not any(name.lower() == "authorization" for name in headers):
        headers["Authorization"] = f"Bearer {args.token}"
    return headers


def load_object(reference: str) -> Any:
    """``package.module:attribute`` (attribute defaults to ``rt``), imported from the cwd first."""
    module_name, _, attribute = reference.partition(":")
    attribute = attribute or "rt"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise UsageError(f"expected MODULE:ATTR (e.g. myapp.tasks:rt), found {reference!r}")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} (from {reference!r}): {exc}") from exc
    except Exception as exc:  # the module itself failed: one line; --debug has its traceback
        raise UsageError(
            f"cannot import {module_name!r} (from {reference!r}): {one_line(exc)}"
        ) from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attribute!r}") from None
    return found


def load_runtime(reference: str) -> Runtime:
    found = load_object(reference)
    if not isinstance(found, Runtime):
        raise UsageError(f"{reference} is a {type(found).__name__}, not a taskrt Runtime")
    return found


def client_runtime(args: argparse.Namespace) -> Runtime:
    """The runtime a command works on, as a client (note 2); not started."""
    if args.app and args.db:
        raise UsageError("give --app or --db, not both")
    if args.app:
        rt = load_runtime(args.app)
        rt.workers = False  # a client of the app's database (note 2)
        return rt
    if args.db:
        check_db(args.db, given_as(args, "db"))
        if not is_server_url(args.db) and args.db != ":memory:":
            if not Path(args.db).is_file():
                raise CommandError(f"no database at {args.db}", UNAVAILABLE)
            check_taskrt_file(args.db)
        return Runtime(args.db, workers=False)
    raise UsageError("which jobs? give --app MODULE:ATTR or --db PATH (or set $TASKRT_APP)")


def check_db(target: str, option: str) -> None:
    """Refuse a database no runtime would open as bad usage naming ``option``, before
    anything opens it: a malformed URL (``check_server_url``), or a name SQLite would
    not open as the file it names, such as a ``file:`` URI (``path_problem``)."""
    if is_server_url(target):
        check_server_url(target, option)
    elif (problem := path_problem(target)) is not None:
        raise UsageError(f"{option}: {problem}")


def server_url(args: argparse.Namespace) -> str | None:
    """The ``--url`` (or ``$TASKRT_URL``) a command goes through, checked
    (``check_base_url``); ``None`` when the jobs are found with ``--app``/``--db``."""
    url: str | None = getattr(args, "url", None)
    if not url:
        return None
    if args.app or args.db:
        raise UsageError("give --url, or --app / --db, not both")
    check_base_url(url, given_as(args, "url"))
    return url


def check_base_url(url: str, option: str) -> None:
    """Refuse a server URL httpx could not connect to as bad usage naming ``option``,
    before any request (httpx's ``InvalidURL``, or a port beyond 65535 failing
    inside the connection, would be an unexpected error, exit 1).

    Checked: the URL splits, its scheme is http or https, it names a host (an IPv6
    address in brackets must be one), and its port, when given, is 1-65535. As for
    ``check_server_url``, the user and password part is never echoed.
    """
    expected = "expected http://HOST[:PORT] or https://HOST[:PORT], e.g. http://127.0.0.1:8000"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed ``[``, a bracketed host that is no IPv6 address
        raise UsageError(f"{option}: {expected}: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or "://" not in url:
        found = f"scheme {parts.scheme!r}" if "://" in url else "no scheme"
        raise UsageError(f"{option}: {expected}; found {found}")
    authority = parts.netloc.rpartition("@")[2]
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")) or not is_ipv6(host):
            raise UsageError(f"{option}: {expected}; found a malformed IPv6 host {authority!r}")
        port = rest[1:]
    else:
        host, _, port = authority.partition(":")
    if not host:
        raise UsageError(f"{option}: {expected}; found no host")
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise UsageError(
            f"{option}: the port of host {host!r} is {port!r}, expected a number from 1 to 65535"
        )


def is_ipv6(host: str) -> bool:
    """Whether ``host`` (between the brackets of a URL) is an IPv6 address, with an
    optional ``%zone`` (an interface)."""
    try:
        ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return False
    return True


def check_server_url(url: str, option: str) -> None:
    """Refuse a malformed ``postgresql://`` URL as bad usage naming ``option``, before
    the driver reads it (its ``ValueError`` would be an unexpected error, exit 1).

    Checked: the URL splits (an unclosed ``[`` of an IPv6 address does not), each
    host of its host list (``host1:5432,host2``) has a port of 1-65535 or none,
    a ``schema`` parameter, when given, is not empty (an empty one would fall
    back to the default schema), and an ``sslmode`` is one libpq knows (asyncpg
    refused another only when it connected: exit 4, as if the server were down). The URL itself is not echoed: it may hold a password.
    """
    expected = "expected postgresql://user@host:port/database[?schema=name]"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UsageError(f"{option}: {expected}: {exc}") from None
    hosts = parts.netloc.rpartition("@")[2]
    for host in hosts.split(","):
        if host.startswith("["):
            name, bracket, rest = host[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise UsageError(f"{option}: {expected}: malformed IPv6 host {host!r}")
            port = rest[1:]
        else:
            name, _, port = host.partition(":")
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise UsageError(
                f"{option}: {expected}: the port of host {name!r} is {port!r}, "
                "expected a number from 1 to 65535"
            )
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "schema" and not value:
            raise UsageError(
                f"{option}: the schema parameter is empty; expected a schema name "
                "(without the parameter: the default schema, taskrt)"
            )
        if key == "sslmode" and value not in SSL_MODES:
            raise UsageError(
                f"{option}: the sslmode parameter is {value!r}; expected one of "
                f"{', '.join(SSL_MODES)}"
            )


SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
"""The ``sslmode`` values of a PostgreSQL URL (libpq's, as asyncpg reads them)."""


def check_taskrt_file(path: str) -> None:
    """Refuse (exit 4) a file that is not a taskrt database of a version this
    release opens, before any connection opens it: opening it would write into
    it (the store switches the file to WAL mode and migrates what it opens), and
    only ``migrate`` makes or upgrades a first release's database (docs/cli.md).

    The store's ``look`` reads the file without writing to it, through its
    write-ahead log when it has one (a server running a new database has its
    tables there only): not SQLite at all is "file is not a database"; a
    zero-byte file, or a SQLite file without taskrt's tables (an empty one,
    another application's, whatever its ``PRAGMA user_version``), is not a taskrt
    database. A taskrt database of the first release (no schema version
    recorded) is left to ``taskrt migrate``, one of a newer release refused.
    """
    try:
        found = look(path)
    except FileNotFoundError:
        raise CommandError(f"no database at {path}", UNAVAILABLE) from None
    except OSError as exc:
        raise CommandError(f"cannot open database {path!r}: {exc.strerror}", UNAVAILABLE) from exc
    except StoreError as exc:
        raise CommandError(str(exc), UNAVAILABLE) from exc
    if found.kind == "not sqlite":
        raise CommandError(f"cannot open database {path!r}: file is not a database", UNAVAILABLE)
    if found.kind != "taskrt":
        what = (
            "an empty file"
            if found.kind == "empty"
            else "a SQLite database without taskrt's tables"
        )
        raise CommandError(
            f"{path} is not a taskrt database ({what}); left untouched: only "
            "`taskrt migrate` creates one",
            UNAVAILABLE,
        )
    if found.version == 0:
        raise CommandError(
            f"{path} is a taskrt database of an older version (the first release's, with no "
            f"schema version recorded); left untouched: `taskrt migrate --db {shlex.quote(path)}` upgrades it",
            UNAVAILABLE,
        )
    if found.version > SCHEMA_VERSION:
        raise CommandError(str(SchemaTooNew(path, found.version, SCHEMA_VERSION)), UNAVAILABLE)


@contextlib.asynccontextmanager
async def opened(args: argparse.Namespace) -> AsyncIterator[Runtime]:
    rt = client_runtime(args)
    probe = getattr(rt.store, "schema_version", None)
    if args.db and is_server_url(args.db) and probe is not None and await probe() == 0:
        # As for a file (``check_taskrt_file``): opening would create the schema.
        schema = getattr(rt.store, "schema", "?")
        raise CommandError(
            f"{rt.path}: schema {schema!r} holds no taskrt tables; left untouched: "
            "only `taskrt migrate` creates them",
            UNAVAILABLE,
        )
    async with rt:
        yield rt


# -- printing (note 4) ---------------------------------------------------------------------


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def when(ts: float | None) -> str:
    """Epoch seconds as local time, to the second; ``-`` for none."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def span(seconds: float) -> str:
    """A time to wait, to a person: ``45 s``, ``10 min``, ``3 h``, ``2 d``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h".replace(".0 h", " h")
    return f"{seconds / 86400:.1f} d".replace(".0 d", " d")


def waiting_note(
    status: str, run_at: float | None, error: str | None, attempts: int, now: float
) -> str:
    """Why a WAITING job waits: its delay, its retry (and the error that caused it).
    Nothing for one that waits for other jobs (its parents, its batch): its run_at is
    the placeholder ``BLOCKED_AT``, no time it runs at (``reason_note`` says why)."""
    if status != JobStatus.WAITING or (run_at is not None and run_at >= BLOCKED_AT):
        return ""
    later = run_at is not None and run_at > now + 0.05
    if error and attempts > 0:
        when_ = f" in {span(run_at - now)}" if later and run_at is not None else ""
        return f"retry {attempts + 1}{when_} after: {error}"
    if later and run_at is not None:
        return f"runs in {span(run_at - now)}"
    return ""


def reason_note(job: JobInfo) -> str:
    """What holds a WAITING job back, besides its time (``JobInfo.waiting_reason``)."""
    reason = job.waiting_reason if job.status is JobStatus.WAITING else None
    if reason == "locked":
        return f"locked: {job.lock}"
    if reason == "rate_limited":
        return "rate limited"
    if reason == "paused":
        return "pool paused"
    if reason == "blocked":
        return "waits for its parents"
    if reason == "batching":
        return f"batch {job.batch_key!r} gathering"
    if reason == "batched":
        return f"in the batch of job {job.batch}"
    return ""


def run_at_note(job: JobInfo) -> str:
    """When a job runs or ran: its ``run_at``; for one held for other jobs (its
    parents, its batch), what holds it, as its run_at is the placeholder ``BLOCKED_AT``
    (one they never released, as a cancelled dependent: ``-``)."""
    if job.run_at >= BLOCKED_AT:
        return reason_note(job) or "-"
    return when(job.run_at)


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.2f}s"
    return f"{value / 60:.1f}m"


def progress(job: JobInfo) -> str:
    share = percent(job.current, job.total)
    if share is None:
        return "-" if not job.current else f"{job.current:g}"
    return f"{share:.0f}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, cut: int = 48) -> str:
    """A plain text table: columns as wide as their widest cell (cut at ``cut``)."""
    cells = [[cell(v, cut) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def cell(value: Any, cut: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = printable(text)
    return text if len(text) <= cut else text[: cut - 1] + "…"


def printable(text: str) -> str:
    """``text`` on one line of a terminal, as it is written: whitespace runs fold to
    one space, and control and format characters (an escape sequence's ESC, a
    right-to-left override) are shown escaped (``\\x1b``, ``\\u202e``). A job's
    error or message is what its input made it: printed raw, it could move the
    cursor, recolour or rewrite what an operator reads."""
    text = " ".join(text.split())
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# -- parsing values ------------------------------------------------------------------------


def _not_json(raw: str) -> Any:
    raise ValueError(f"{raw} is not JSON")


def _finite(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"{raw} is out of range")
    return value


def value_of(raw: str) -> Any:
    """A command-line value: JSON when it parses (42, true, [1,2], {"a":1}, "42"), else text.

    Strict JSON: ``NaN``, ``Infinity`` and ``-Infinity`` (which Python's ``json``
    reads) are not JSON, nor a number too large for a float (``1e400``): text.
    """
    try:
        return json.loads(raw, parse_constant=_not_json, parse_float=_finite)
    except ValueError:
        return raw


def pairs(items: Sequence[str], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> a dict of ``value_of`` values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} expects KEY=VALUE, found {item!r}")
        out[key] = value_of(raw)
    return out


def moment(raw: str | None, option: str, *, now: float | None = None) -> float | None:
    """Epoch seconds, an ISO 8601 date-time, or a duration ago (``2h``: two hours ago)."""
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        return representable(value, raw, option)
    try:
        stamp = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        try:
            ago = parse_duration(raw, field=option)
        except InvalidOption:
            raise UsageError(
                f"{option}: expected epoch seconds, an ISO 8601 date-time or a duration "
                f"ago like 2h, found {raw!r}"
            ) from None
        return representable((time.time() if now is None else now) - ago, raw, option)
    try:
        return representable(stamp.timestamp(), raw, option)  # a naive date-time is local time
    except (OverflowError, OSError, ValueError):
        raise UsageError(f"{option}: expected a time from year 1 to 9999, found {raw!r}") from None


def representable(value: float, raw: str, option: str) -> float:
    """``value``, epoch seconds, when it is a local date-time of year 1 to 9999 (what
    the commands print and the store counts by minute); bad usage otherwise."""
    try:
        datetime.fromtimestamp(value)  # NaN is a ValueError, 1e20 an OverflowError
    except (OverflowError, OSError, ValueError):
        raise UsageError(f"{option}: expected a time from year 1 to 9999, found {raw!r}") from None
    return value


def later(raw: str, option: str, *, now: float | None = None) -> float:
    """Epoch seconds, an ISO 8601 date-time, or a duration from now (``1h``)."""
    try:
        ahead = parse_duration(raw, field=option)
    except InvalidOption:
        found = moment(raw, option, now=now)
        if found is None:
            raise UsageError(f"{option}: expected a time, found {raw!r}") from None
        return found
    if raw.replace(".", "", 1).isdigit():
        return representable(float(raw), raw, option)  # epoch seconds, as for moment
    return (time.time() if now is None else now) + ahead


def statuses(raw: Sequence[str], option: str = "--status") -> list[JobStatus]:
    out: list[JobStatus] = []
    for item in raw:
        for name in item.split(","):
            name = name.strip().upper()
            if not name:
                raise UsageError(
                    f"{option}: empty status in {item!r}; expected a status or a "
                    f"comma-separated list of them: {', '.join(s.value for s in JobStatus)}"
                )
            try:
                out.append(JobStatus(name))
            except ValueError:
                expected = ", ".join(s.value for s in JobStatus)
                raise UsageError(
                    f"{option}: unknown status {name!r}; expected {expected}"
                ) from None
    return out


def nonempty(raw: str) -> str:
    """A name option (``--pool``, ``--task``): refused at parsing when empty (exit 2),
    which would match no job in a database and every job through a server."""
    if not raw.strip():
        raise argparse.ArgumentTypeError(f"expected a name, found {raw!r}")
    return raw


def job_id(raw: str) -> int:
    """An ``ID`` argument: a positive integer. One beyond the ids a database holds
    (64-bit) is well formed and names no job: ``existing`` says "not found", as
    the HTTP API's 404 does."""
    value = int(raw) if raw.isascii() and raw.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a job id (a positive integer), found {raw!r}")
    return value


def stored_id(raw: str) -> int:
    """A job id of a filter (``bulk --id``): as ``job_id``, and within the ids a
    database holds, as the HTTP API's ``ids`` (422 beyond)."""
    value = int(raw) if raw.isascii() and raw.isdigit() else 0
    if not 1 <= value <= INT64_MAX:
        raise argparse.ArgumentTypeError(
            f"expected a job id (a positive integer up to {INT64_MAX}), found {raw!r}"
        )
    return value


def stored_ids(raw: str) -> list[int]:
    """A ``bulk --id`` value: one id, or several separated by commas (``1,2,3``),
    each as ``stored_id``. Commas, not the option repeated, for many ids: argparse
    takes time growing with the square of the options given (20,000 took 14 s)."""
    out: list[int] = []
    for item in raw.split(","):
        try:
            out.append(stored_id(item.strip()))
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc} in {raw!r}" if "," in raw else exc) from None
    return out


def ids_from(name: str) -> list[int]:
    """The job ids of the file ``name`` (``-``: standard input), separated by
    whitespace or commas; bad usage naming the file, the line and the value for
    one that is no id, or for a file that cannot be read."""
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--ids-from {name}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--ids-from {name}: not text (UTF-8): {exc.reason}") from None
    out: list[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        for item in line.replace(",", " ").split():
            try:
                out.append(stored_id(item))
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"--ids-from {name}, line {number}: {exc}") from None
    return out


def existing(job: int) -> int:
    """``job``, an id a database may hold; ``JobNotFound`` (exit 3) beyond 64 bits,
    which no database can hold (the store would fail to bind it)."""
    if job > INT64_MAX:
        raise JobNotFound(job)
    return job


__all__ = [
    "JOB_FAILED",
    "NOT_FOUND",
    "OK",
    "UNAVAILABLE",
    "USAGE",
    "AsyncRun",
    "CommandError",
    "Run",
    "StreamError",
    "UsageError",
    "cell",
    "check_base_url",
    "check_db",
    "check_server_url",
    "check_taskrt_file",
    "client_runtime",
    "error",
    "existing",
    "given_as",
    "ids_from",
    "in_event_loop",
    "is_ipv6",
    "job_id",
    "load_object",
    "load_runtime",
    "moment",
    "nonempty",
    "one_line",
    "opened",
    "pairs",
    "plural",
    "print_json",
    "progress",
    "representable",
    "request_headers",
    "seconds",
    "server_url",
    "status_of",
    "statuses",
    "stored_id",
    "stored_ids",
    "table",
    "target_args",
    "targets_from_env",
    "value_of",
    "when",
]
