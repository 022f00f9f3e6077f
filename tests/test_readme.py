"""The README's snippets, run as written, so the README cannot drift.

Each code block is taken from README.md by its first line (the file it says it
is, or its first import), written where it says into a fresh folder, and run
there in a child process, the way a reader would. A Python block this file
does not know fails the test: a new snippet must be run here too. Shell
blocks are the set-up commands (run by CI itself), the tour's server and
``curl`` (checked against a real server: the sample output must match), and
the deployment commands (tests/test_multiprocess.py runs them); the
JavaScript block is the browser's (the demo page does the same).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)
BLOCKS = [(lang, body) for lang, body in BLOCK.findall(README)]

KNOWN_PYTHON = {
    "# app.py": "app.py",
    "# main.py: the tour's app, used from Python": "main.py",
    "import contextlib": "host.py",
    "# scripts/task.py — what the Yao file names (Yao handlers take the job id first)": (
        "scripts/task.py"
    ),
    "from taskrt import JobContext": "schedules.py",
}


def block(first_line: str, lang: str = "python") -> str:
    found = [b for lg, b in BLOCKS if lg == lang and b.splitlines()[0] == first_line]
    assert len(found) == 1, f"README has {len(found)} {lang} blocks starting {first_line!r}"
    return found[0]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def python(folder: Path, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=folder,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A reader's project folder: every Python block written where it says."""
    for first, name in KNOWN_PYTHON.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block(first))
    return tmp_path


def test_every_python_block_is_one_this_file_runs() -> None:
    firsts = [b.splitlines()[0] for lang, b in BLOCKS if lang == "python"]
    assert sorted(firsts) == sorted(KNOWN_PYTHON)


def test_the_python_api_tour_runs_as_written(folder: Path) -> None:
    done = python(folder, "main.py")
    lines = [line.strip() for line in done.stdout.splitlines()]
    assert lines[0] == "snapshot"
    assert "success" in lines  # the stream's terminal event (a success carries no message)
    assert "SUCCESS {'name': 'c.jpg', 'width': 800}" in lines  # as the comment says
    assert any(line.startswith("PoolStatistics(name='images'") for line in lines)


HOST_CHECK = """
import sys
from starlette.testclient import TestClient
import host

app = host.app if sys.argv[1] == "starlette" else host.api
with TestClient(app) as client:               # runs the lifespan: the runtime starts
    assert client.get("/tasks/health").json()["status"] == "ok"
    added = client.post("/tasks/jobs", json={"task": "resize", "kwargs": {"name": "x.jpg"}})
    assert added.status_code == 201, added.text
print("ok")
"""


@pytest.mark.parametrize("which", ["starlette", "fastapi"])
def test_the_starlette_and_fastapi_embedding_runs_as_written(folder: Path, which: str) -> None:
    (folder / "check_host.py").write_text(HOST_CHECK)
    assert python(folder, "check_host.py", which).stdout == "ok\n"


YAO_RUN = """
import asyncio
from taskrt import Runtime
from taskrt.compat.yao import YaoTasks
import scripts.task

async def main():
    rt = Runtime("yao.db", tasks="tasks/")
    scripts.task.YAO = yao = YaoTasks(rt)
    async with rt:
        job_id = await yao.add("send", "ann@example.com")
        await rt.wait(job_id, timeout=10)
        print(job_id, (await yao.get(job_id))["status"], (await yao.get(job_id))["response"])

asyncio.run(main())
"""


def test_the_task_files_validate_and_the_yao_one_runs(folder: Path) -> None:
    (folder / "tasks").mkdir()
    (folder / "tasks" / "send.yao").write_text(
        block("// tasks/send.yao — Yao style: one JSON file per task, comments allowed", "jsonc")
    )
    (folder / "tasks.yaml").write_text(
        block(
            "# tasks.yaml — Anchor style: JSON-Schema parameters, retry lists, cron with seconds",
            "yaml",
        )
    )
    for target in ("tasks/", "tasks.yaml"):
        done = python(folder, "-m", "taskrt", "validate", target)
        assert "problem" not in done.stdout.lower(), done.stdout
    (folder / "run_yao.py").write_text(YAO_RUN)
    # NextID hands out 1025 first; Send reports progress and returns its message.
    assert python(folder, "run_yao.py").stdout == "1025 SUCCESS {'message': 'ok'}\n"


SCHEDULES_RUN = """
import asyncio
import schedules

async def main():
    async with schedules.rt:
        await schedules.operate()
        names = sorted(s.name for s in await schedules.rt.schedules.list())
        info = await schedules.rt.schedules.get("cleanup")
        print(names, info.paused, info.tz)

asyncio.run(main())
"""


def test_the_schedules_block_runs_as_written(folder: Path) -> None:
    (folder / "run_schedules.py").write_text(SCHEDULES_RUN)
    done = python(folder, "run_schedules.py")
    assert done.stdout == "['cleanup', 'report'] True Europe/Berlin\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_tours_server_answers_as_its_sample_output_says(folder: Path) -> None:
    tour = block("# app.py")
    shell = next(b for lang, b in BLOCKS if lang == "sh" and "curl" in b)
    serve = shell.splitlines()[0].split("#")[0].split()
    assert serve[:3] == [".venv/bin/taskrt", "serve", "app:rt"] and "app = create_app(rt)" in tour
    body = json.loads(re.search(r"-d '(\{.*?\})'", shell).group(1))  # type: ignore[union-attr]
    sample = next(line for line in shell.splitlines() if line.startswith("# {"))
    expected = json.loads(sample[2:].replace(", ...}", "}"))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "taskrt", "serve", "app:rt", "--port", str(port)],
        cwd=folder,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        answer = httpx.post(f"{base}/jobs", json=body)
        assert answer.status_code == 201
        job = answer.json()
        # "or RUNNING: a free worker may have taken it already", says the README.
        assert job["status"] in ("WAITING", "RUNNING")
        assert {k: job[k] for k in expected if k != "status"} == {
            k: v for k, v in expected.items() if k != "status"
        }
    finally:
        server.terminate()
        server.wait(20)


def test_make_demo_takes_a_port_and_a_host() -> None:
    assert "make demo PORT=8001 HOST=0.0.0.0" in README
    done = subprocess.run(
        ["make", "-n", "demo", "PORT=8001", "HOST=0.0.0.0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "taskrt serve demo.app:app --host 0.0.0.0 --port 8001" in done.stdout
