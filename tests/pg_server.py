"""The one place the test suite gets a PostgreSQL server from.

Which server:

1. The one at the URL in ``TASKRT_TEST_POSTGRES`` when it is set, e.g.
   ``postgresql://postgres@127.0.0.1:5432/postgres``.
2. Otherwise a throwaway cluster made with the machine's ``initdb`` and
   ``pg_ctl`` (looked for on ``PATH``, then under ``/usr/lib/postgresql/*/bin/``,
   newest version first), in a temporary folder, on a free port of 127.0.0.1
   and a unix socket inside that folder, trust auth, ``fsync=off``. As root
   (initdb refuses to run as root) both run as the ``postgres`` OS user, which
   owns the folder. The server's output goes to ``server.log`` in the folder,
   and a start that fails, or takes longer than ``START_TIMEOUT`` seconds,
   becomes an "unavailable" reason that ends with the log's last lines.
3. Where neither exists, PostgreSQL tests are skipped with a one-line reason
   (``unavailable()``); with ``TASKRT_REQUIRE_POSTGRES=1`` (CI) ``require()``
   fails them instead, so CI cannot go green by skipping.

Isolation and laziness:

4. Each test session gets a database of its own on that server,
   ``taskrt_test_<pid>_<random hex>``; tests separate themselves further with
   ``fresh_schema(tmp_path)``. Nothing touches the server, and no cluster is
   started, until a test first calls ``server_url()`` (or ``unavailable()`` /
   ``require()``, which call it): a run that selects no PostgreSQL test costs
   nothing. The first call does the work once, under a lock; later calls (any
   thread) get the cached answer, including a cached failure.
5. The callers are synchronous (fixture setup, lambdas) and may run while an
   event loop is running in the same thread (an async fixture), and
   pytest-asyncio gives each test its own loop. So the database work never
   uses the caller's loop: it runs in ``asyncio.run`` on a short-lived worker
   thread.
6. At the end of the session (an ``atexit`` handler, in the process that made
   them, so a forked child exiting does not clean up its parent's server): the
   database is dropped ``WITH (FORCE)`` (PostgreSQL 13+, so connections a test
   left open cannot make it hang), and a throwaway cluster is stopped with
   ``pg_ctl stop -m immediate`` and its folder deleted. A process killed
   without running ``atexit`` handlers leaves them behind.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

URL_ENV = "TASKRT_TEST_POSTGRES"
REQUIRE_ENV = "TASKRT_REQUIRE_POSTGRES"
START_TIMEOUT = 30.0  # seconds for initdb and for pg_ctl start, each
CONNECT_TIMEOUT = 10.0  # seconds to connect and create (or drop) the database
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"

# The throwaway cluster's settings: safe to lose, quick to start.
_CLUSTER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'32MB'",
    "max_connections": "200",
    "logging_collector": "off",
}

T = TypeVar("T")


class _Unavailable(Exception):
    """A one-line reason the PostgreSQL tests cannot run here."""


@dataclass(frozen=True, slots=True)
class _Cluster:
    """A throwaway cluster this process started."""

    folder: Path
    pg_ctl: str
    as_user: tuple[str, ...]  # command prefix that runs as the postgres OS user, or ()
    url: str  # its maintenance database


@dataclass(frozen=True, slots=True)
class _Session:
    """This session's database, or why there is none."""

    url: str | None
    reason: str | None


_lock = threading.Lock()
_session: _Session | None = None


# -- public API ----------------------------------------------------------------


def server_url() -> str | None:
    """URL of this session's own database (created lazily on first call, cached), or None."""
    return _resolve().url


def unavailable() -> str | None:
    """One-line reason PostgreSQL tests cannot run here, or None (calls server_url())."""
    return _resolve().reason


def require() -> str:
    """For a test or fixture that needs PostgreSQL: this session's database URL.

    Where there is none, skips the test with the reason, or fails it when
    ``TASKRT_REQUIRE_POSTGRES=1``.
    """
    url = server_url()
    if url is not None:
        return url
    reason = unavailable() or "PostgreSQL unavailable"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(reason)


def fresh_schema(where: Path) -> str:
    """A schema name unique to ``where`` (a test's ``tmp_path``), the same for the same path.

    A valid unquoted PostgreSQL identifier (``t_`` and 16 hex digits). Creates nothing.
    """
    return "t_" + hashlib.sha1(str(where).encode()).hexdigest()[:16]


class OwnCluster:
    """A throwaway cluster for one test that may restart it (``own_cluster``)."""

    def __init__(self, cluster: _Cluster) -> None:
        self._cluster = cluster
        self.url = cluster.url

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session ends; committed work stays."""
        cluster = self._cluster
        _run_logged(
            [
                *cluster.as_user,
                cluster.pg_ctl,
                "restart",
                "-D",
                str(cluster.folder / "data"),
                "-m",
                "fast",
                "-l",
                str(cluster.folder / "server.log"),
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
            ],
            cluster.folder / "pg_ctl.log",
            "pg_ctl restart",
            server_log=cluster.folder / "server.log",
        )


@contextlib.contextmanager
def own_cluster() -> Iterator[OwnCluster]:
    """A cluster of this test's own, made with ``initdb``/``pg_ctl`` and stopped after
    (for a test that restarts the server). Where it cannot be made the test is
    skipped, or fails under ``TASKRT_REQUIRE_POSTGRES=1``."""
    try:
        cluster = _start_cluster()
    except _Unavailable as exc:
        reason = _one_line(str(exc))
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1)", pytrace=False)
        pytest.skip(reason)
    try:
        yield OwnCluster(cluster)
    finally:
        _stop_cluster(cluster)


# -- the session's database ----------------------------------------------------


@contextlib.asynccontextmanager
async def scratch_database(**defaults: str) -> AsyncIterator[str]:
    """A database of one test's own whose sessions start with ``defaults`` (server
    settings, ``ALTER DATABASE ... SET``), for a test that needs settings the test
    server does not have; its URL, and it is dropped after."""
    base = require()
    name = f"taskrt_scratch_{os.getpid()}_{secrets.token_hex(4)}"
    await _create_database(base, name)
    try:
        import asyncpg

        conn = await asyncpg.connect(base, timeout=CONNECT_TIMEOUT)
        try:
            for setting, value in defaults.items():
                await conn.execute(f'ALTER DATABASE "{name}" SET {setting} = {value}')
        finally:
            await conn.close()
        yield _with_database(base, name)
    finally:
        await _drop_database(base, name)


def _resolve() -> _Session:
    """The first call does the work, under the lock; later calls get its answer (note 4)."""
    global _session
    with _lock:
        if _session is None:
            try:
                _session = _Session(_create(), None)
            except _Unavailable as exc:
                _session = _Session(None, _one_line(str(exc)))
        return _session


def _create() -> str:
    """Find or start the server, create this session's database; returns its URL."""
    try:
        import asyncpg  # noqa: F401  (only a session that needs PostgreSQL needs asyncpg)
    except ImportError as exc:
        raise _Unavailable(f"asyncpg is not installed ({exc})") from exc
    given = os.environ.get(URL_ENV)
    cluster = None
    if given:
        base = given
    else:
        cluster = _start_cluster()
        base = cluster.url
    name = f"taskrt_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        _in_fresh_loop(lambda: _create_database(base, name))
    except Exception as exc:
        if cluster is not None:
            _stop_cluster(cluster)
        raise _Unavailable(
            f"cannot create a database on PostgreSQL at {_redact(base)}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    atexit.register(_cleanup, os.getpid(), base, name, cluster)
    return _with_database(base, name)


async def _create_database(url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    try:
        version = int(await conn.fetchval("SHOW server_version_num"))
        if version < 130000:
            raise RuntimeError(f"server version {version}: the tests need PostgreSQL 13+")
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _cleanup(owner: int, base: str, name: str, cluster: _Cluster | None) -> None:
    """End of session (atexit): drop the database, stop a throwaway cluster (note 6)."""
    if os.getpid() != owner:
        return
    if cluster is not None:
        _stop_cluster(cluster)  # the database goes with the folder
        return
    try:
        # In this thread: no loop runs at exit, and Python 3.12+ refuses new
        # threads in atexit handlers.
        asyncio.run(_bounded(lambda: _drop_database(base, name)))
    except Exception as exc:
        print(
            f"taskrt tests: could not drop database {name} on {_redact(base)}: {exc!r}",
            file=sys.stderr,
        )


def _in_fresh_loop(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work()`` in a new event loop on a short-lived thread (note 5).

    Even when no loop runs here: ``asyncio.run`` in the caller's thread would
    leave that thread without a current event loop, which pytest-asyncio may
    have set.
    """
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(asyncio.run(_bounded(work)))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="taskrt-pg-server")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


async def _bounded(work: Callable[[], Awaitable[T]]) -> T:
    async with asyncio.timeout(CONNECT_TIMEOUT + 5):
        return await work()


# -- the throwaway cluster -----------------------------------------------------


def _start_cluster() -> _Cluster:
    initdb, pg_ctl = _find_binaries()
    as_user = _as_postgres_user()
    folder = Path(tempfile.mkdtemp(prefix="taskrt-pg-"))
    try:
        data = folder / "data"
        sockets = folder / "sock"  # the unix socket, kept inside the folder
        sockets.mkdir()
        if as_user:  # initdb and the server write here as the postgres user
            entry = pwd.getpwnam("postgres")
            for path in (folder, sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        _run_logged(
            [
                *as_user,
                initdb,
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            folder / "initdb.log",
            "initdb",
        )
        for _attempt in range(3):  # another process may take the free port first
            port = _free_port()
            settings = {
                **_CLUSTER_SETTINGS,
                "port": str(port),
                "unix_socket_directories": f"'{sockets}'",
            }
            with open(data / "postgresql.auto.conf", "a") as conf:
                conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
            cluster = _Cluster(
                folder, pg_ctl, as_user, f"postgresql://postgres@127.0.0.1:{port}/postgres"
            )
            try:
                _run_logged(
                    [
                        *as_user,
                        pg_ctl,
                        "start",
                        "-D",
                        str(data),
                        "-l",
                        str(folder / "server.log"),
                        "-w",
                        "-t",
                        str(int(START_TIMEOUT)),
                    ],
                    folder / "pg_ctl.log",
                    "pg_ctl start",
                    server_log=folder / "server.log",
                )
                return cluster
            except _Unavailable as exc:
                if "already in use" not in str(exc):
                    raise
        raise _Unavailable("pg_ctl start: no free port after 3 attempts")
    except BaseException:
        _stop_cluster(_Cluster(folder, pg_ctl, as_user, ""))
        raise


def _stop_cluster(cluster: _Cluster) -> None:
    """``pg_ctl stop -m immediate``, then delete the folder; never raises."""
    data = cluster.folder / "data"
    if (data / "postmaster.pid").exists():
        try:
            stopped = _run(
                [
                    *cluster.as_user,
                    cluster.pg_ctl,
                    "stop",
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "-w",
                ],
                subprocess.DEVNULL,
                cluster.folder,
                START_TIMEOUT,
            )
        except OSError:
            stopped = None
        if stopped != 0:
            _kill_postmaster(data)
    shutil.rmtree(cluster.folder, ignore_errors=True)


def _kill_postmaster(data: Path) -> None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)


def _run_logged(
    command: list[str], log: Path, what: str, *, server_log: Path | None = None
) -> None:
    """Run ``command`` with its output in ``log``; a failure or timeout is unavailable."""
    with open(log, "ab") as out:
        try:
            code = _run(command, out, log.parent, START_TIMEOUT + 5)
        except OSError as exc:
            raise _Unavailable(f"{what}: {exc}") from exc
    if code == 0:
        return
    outcome = (
        f"timed out after {START_TIMEOUT + 5:.0f} s" if code is None else f"exit status {code}"
    )
    tail = _tail(log) + (_tail(server_log) if server_log is not None else [])
    raise _Unavailable(f"{what} failed ({outcome}): " + " | ".join(tail))


def _run(command: list[str], out: IO[bytes] | int, cwd: Path, timeout: float) -> int | None:
    """Run ``command``; its exit status, or None if it had to be killed after ``timeout`` s.

    In a session of its own, so that a timeout kills what it started too (a
    program run through ``runuser`` is its child, not ours) and a Ctrl-C meant
    for pytest does not reach the server: the session's end stops it.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=cwd,  # somewhere the postgres user may enter (not root's home)
        env=env,  # without PG* variables, which would redirect initdb and pg_ctl
        start_new_session=True,
    )
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


def _find_binaries() -> tuple[str, str]:
    """``initdb`` and ``pg_ctl`` from one folder: PATH first, then Debian's, newest first."""
    folders: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path is not None:
        folders.append(Path(on_path).parent)
    folders.extend(sorted(Path("/").glob(DEBIAN_BINDIRS.lstrip("/")), key=_version, reverse=True))
    for folder in folders:
        initdb, pg_ctl = folder / "initdb", folder / "pg_ctl"
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return str(initdb), str(pg_ctl)
    raise _Unavailable(
        f"{URL_ENV} is unset and there is no initdb/pg_ctl on PATH or in {DEBIAN_BINDIRS}"
    )


def _version(bindir: Path) -> tuple[int, ...]:
    """``/usr/lib/postgresql/9.6/bin`` -> (9, 6); unparsable sorts first (oldest)."""
    parts = re.findall(r"\d+", bindir.parent.name)
    return tuple(int(part) for part in parts) if parts else (-1,)


def _as_postgres_user() -> tuple[str, ...]:
    """The command prefix that runs a program as the postgres OS user when we are root."""
    if os.geteuid() != 0:
        return ()
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise _Unavailable(
            "running as root (initdb refuses) and there is no 'postgres' OS user"
        ) from None
    if shutil.which("runuser"):
        return ("runuser", "-u", "postgres", "--")
    if shutil.which("setpriv"):
        entry = pwd.getpwnam("postgres")
        return (
            "setpriv",
            f"--reuid={entry.pw_uid}",
            f"--regid={entry.pw_gid}",
            "--init-groups",
            "--",
        )
    raise _Unavailable("running as root (initdb refuses) and neither runuser nor setpriv exist")


# -- small helpers -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(log: Path, lines: int = 5) -> list[str]:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()][-lines:]


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _redact(url: str) -> str:
    """``url`` without its password, for reasons and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _one_line(text: str) -> str:
    return " ".join(text.split())
