"""Where the tests get PostgreSQL from (tests/pg_server.py): a database of their own, or a reason.

The cases that change the environment (no server, no URL at all) run in a
fresh Python process, since the answer is computed once per process.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import asyncpg
import pg_server
import pytest

TESTS = Path(__file__).resolve().parent


def run_script(body: str, env: dict[str, str | None], timeout: float = 30) -> str:
    """Run ``body`` in a fresh Python that can ``import pg_server``; returns its stdout."""
    environ = dict(os.environ)
    for key, value in env.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    script = f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport pg_server\n{body}"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def port_is_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_require_gives_a_database_of_this_session() -> None:
    """A test that needs PostgreSQL gets a URL it can query, naming this session's own database."""
    url = pg_server.require()
    assert pg_server.server_url() == url
    assert pg_server.unavailable() is None
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        name = await conn.fetchval("SELECT current_database()")
    finally:
        await conn.close()
    assert name.startswith(f"taskrt_test_{os.getpid()}_")


def test_fresh_schema_is_one_valid_name_per_test_folder(tmp_path: Path) -> None:
    """Each test's folder maps to its own schema name, the same every time, usable unquoted."""
    first = pg_server.fresh_schema(tmp_path)
    assert pg_server.fresh_schema(Path(str(tmp_path))) == first
    assert pg_server.fresh_schema(tmp_path / "other") != first
    for name in (first, pg_server.fresh_schema(tmp_path / "other")):
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name)
        assert len(name) <= 63


def test_unreachable_server_is_a_reason_and_fails_when_required() -> None:
    """A URL nobody answers at skips the tests with a one-line reason naming it; CI fails instead."""
    with socket.socket() as held:  # bound, never listening: connections to it are refused
        held.bind(("127.0.0.1", 0))
        url = f"postgresql://postgres:secret@127.0.0.1:{held.getsockname()[1]}/postgres"
        out = run_script(
            "import json, os\n"
            "outcomes = []\n"
            "for required in ('', '1'):\n"
            "    os.environ['TASKRT_REQUIRE_POSTGRES'] = required\n"
            "    try:\n"
            "        pg_server.require()\n"
            "    except BaseException as exc:\n"
            "        outcomes.append([type(exc).__name__, str(exc)])\n"
            "print(json.dumps({'reason': pg_server.unavailable(), 'outcomes': outcomes}))\n",
            {"TASKRT_TEST_POSTGRES": url, "TASKRT_REQUIRE_POSTGRES": None},
        )
    result = json.loads(out)
    reason = result["reason"]
    assert "\n" not in reason
    assert url.replace(":secret@", ":***@") in reason
    assert "secret" not in reason
    (skipped, skip_message), (failed, fail_message) = result["outcomes"]
    assert skipped == "Skipped"
    assert skip_message == reason
    assert failed == "Failed"
    assert reason in fail_message
    assert "TASKRT_REQUIRE_POSTGRES=1" in fail_message


def test_without_a_url_a_throwaway_cluster_serves_and_is_removed_at_exit() -> None:
    """With no server configured, the session starts its own cluster and leaves nothing behind."""
    out = run_script(
        "import asyncio, json, pathlib, urllib.parse, asyncpg\n"
        "reason = pg_server.unavailable()\n"
        "if reason is not None:\n"
        "    print(json.dumps({'reason': reason}))\n"
        "    raise SystemExit\n"
        "url = pg_server.require()\n"
        "async def main():\n"
        "    conn = await asyncpg.connect(url)\n"
        "    try:\n"
        "        return await conn.fetchval('SELECT 1'), await conn.fetchval('SHOW data_directory')\n"
        "    finally:\n"
        "        await conn.close()\n"
        "one, data = asyncio.run(main())\n"
        "folder = pathlib.Path(data).parent\n"
        "print(json.dumps({'one': one, 'url': url, 'folder': str(folder),\n"
        "                  'existed': folder.is_dir(),\n"
        "                  'port': urllib.parse.urlsplit(url).port}))\n",
        {"TASKRT_TEST_POSTGRES": None},
    )
    result = json.loads(out)
    if "reason" in result:
        if os.environ.get("TASKRT_REQUIRE_POSTGRES") == "1":
            pytest.fail(result["reason"], pytrace=False)
        pytest.skip(result["reason"])
    assert result["one"] == 1
    assert result["url"].startswith("postgresql://postgres@127.0.0.1:")
    assert result["url"].rsplit("/", 1)[1].startswith("taskrt_test_")
    assert result["existed"]
    assert not Path(result["folder"]).exists()
    assert port_is_closed(result["port"])


def test_a_run_that_asks_for_no_postgres_touches_nothing(tmp_path: Path) -> None:
    """Importing the helper and naming schemas neither connects to the server nor starts a cluster."""
    body = (
        f"pg_server.fresh_schema(__import__('pathlib').Path({str(tmp_path)!r}))\n"
        "print('asyncpg' in sys.modules)\n"
    )
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/postgres"
        assert run_script(body, {"TASKRT_TEST_POSTGRES": url}) == "False\n"
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nobody connected
            listener.accept()
    # Without a URL, the first step of starting a cluster would be loading the driver.
    assert run_script(body, {"TASKRT_TEST_POSTGRES": None}) == "False\n"
