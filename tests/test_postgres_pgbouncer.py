"""taskrt behind PgBouncer in session mode, the pooling docs/postgres.md supports.

PgBouncer refuses a connection whose start-up packet carries a setting it does
not know (``search_path``, ``jit``, taskrt's own ``taskrt.node``), and drops one
it is told to ignore: taskrt's connections send ``application_name`` only and
set the rest once open (``store.postgres.driver.connect``). A real PgBouncer
(Debian's ``pgbouncer``) runs in front of the test server; where it is not
installed the tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pg_server
import pytest

from taskrt import JobContext, JobStatus, Runtime


def _pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    if found is None and os.path.exists("/usr/sbin/pgbouncer"):
        found = "/usr/sbin/pgbouncer"
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def bouncer(tmp_path: Path) -> Iterator[str]:
    """A PgBouncer in session mode in front of the test server: the URL of the test's
    own schema through it."""
    binary = _pgbouncer()
    if binary is None:
        pytest.skip("PgBouncer is not installed (apt-get install pgbouncer)")
    base = urlsplit(pg_server.require())
    user = base.username or "postgres"
    folder = Path(tempfile.mkdtemp(prefix="taskrt-pgbouncer-"))
    folder.chmod(0o755)  # read by the postgres OS user when we are root
    port = _free_port()
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={base.hostname or '127.0.0.1'} port={base.port or 5432}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {folder / 'users.txt'}\n"
        "pool_mode = session\n"
        "max_client_conn = 200\n"
        "default_pool_size = 100\n"
    )
    log = (folder / "pgbouncer.log").open("wb")
    process = subprocess.Popen(
        [*pg_server._as_postgres_user(), binary, str(folder / "pgbouncer.ini")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"PgBouncer did not start: {(folder / 'pgbouncer.log').read_text()}")
            time.sleep(0.05)
        schema = pg_server.fresh_schema(tmp_path)
        yield urlunsplit(base._replace(netloc=f"{user}@127.0.0.1:{port}", query=f"schema={schema}"))
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("mode", ["nodes", "owner"])
async def test_a_runtime_runs_jobs_through_pgbouncer_in_session_mode(
    bouncer: str, mode: str
) -> None:
    """Before, opening the store through PgBouncer failed: ``unsupported startup
    parameter: search_path`` (or, with it ignored, ``relation "job_counts" does not
    exist``)."""
    rt = Runtime(bouncer, mode=mode)  # type: ignore[arg-type]
    rt.pool("p", concurrency=2)

    @rt.task(pool="p", attempts=2, retry=0)
    async def double(job: JobContext, n: int) -> int:
        await job.progress(1, 2, "half")
        if job.attempt == 1 and n == 2:
            raise RuntimeError("once")
        return 2 * n

    async with rt:
        first = await rt.add(double, 1)
        second = await rt.add(double, 2)
        later = await rt.pool("p").add(double.options(delay=3600), 3)
        assert (await rt.cancel(later)).status is JobStatus.CANCELLED
        done = await rt.wait(second, timeout=10)
        one = await rt.wait(first, timeout=10)
        assert (one.result, one.current, one.total, one.message) == (2, 1, 2, "half")
        assert (done.status, done.result, done.attempts) == (JobStatus.SUCCESS, 4, 2)
        stats = await rt.stats()
    assert (stats.counts[JobStatus.SUCCESS], stats.counts[JobStatus.CANCELLED]) == (2, 1)
