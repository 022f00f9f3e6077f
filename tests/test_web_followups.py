"""Follow-ups of the token, Host and cross-site work: the public surface of
``taskrt.web``, the OpenAPI document's ``invalid_host`` and ``cross_site``
answers, and event streams that survive data JSON cannot carry (sse note 6).

Streams are served in process through the ASGI interface with a client the
test controls (``FakeClient``): the test reads frames while the stream is open
and then hangs up, so no stream has to end by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message

import taskrt.web
from taskrt import JobContext, Runtime
from taskrt.models import Event, EventType, JobStatus
from taskrt.web import Api, EndpointGroup, Reply, TokenPrincipal, create_app
from taskrt.web.auth import UNSAFE_METHODS
from taskrt.web.openapi import document
from taskrt.web.sse import encode_data, frame

Gates = dict[str, asyncio.Event]


# -- the public surface -------------------------------------------------------------------------


def test_the_web_packages_all_is_honest() -> None:
    namespace: dict[str, object] = {}
    exec("from taskrt.web import *", namespace)
    for name in taskrt.web.__all__:
        assert name in namespace, name
    assert len(set(taskrt.web.__all__)) == len(taskrt.web.__all__)
    public = {
        name
        for name, value in vars(taskrt.web).items()
        if not name.startswith("_") and isinstance(value, type)
    }
    assert public <= set(taskrt.web.__all__), public - set(taskrt.web.__all__)
    # What docs/http-api.md names: the principal of a request that showed the token.
    assert TokenPrincipal("cookie").via == "cookie"
    assert namespace["TokenPrincipal"] is TokenPrincipal


# -- the OpenAPI document: invalid_host and cross_site --------------------------------------------


def make_runtime(path: Path, gates: Gates | None = None) -> Runtime:
    rt = Runtime(str(path))
    rt.pool("work", concurrency=4)
    held = gates if gates is not None else {}

    @rt.task(pool="work")
    async def steps(job: JobContext, n: int, key: str) -> int:
        await held.setdefault(key, asyncio.Event()).wait()
        for i in range(n):
            await job.progress(i + 1, n, f"step {i + 1}")
        return n

    return rt


def responses(app: Any) -> dict[tuple[str, str], dict[str, Any]]:
    api: Api = app.state.taskrt
    doc = document(api, api.components)
    return {
        (method.upper(), path): op["responses"]
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }


def test_every_operation_documents_invalid_host_and_state_changes_cross_site(
    tmp_path: Path,
) -> None:
    ops = responses(create_app(make_runtime(tmp_path / "jobs.db")))
    assert ("GET", "/health") in ops and ("POST", "/jobs") in ops
    for (method, path), replies in ops.items():
        assert "invalid_host" in replies["400"]["description"], (method, path)
        refused = replies.get("403", {}).get("description", "")
        if method in UNSAFE_METHODS:
            assert "cross_site" in refused, (method, path)
        else:
            assert "cross_site" not in refused, (method, path)
    # A JSON body's own 400s are still there beside it.
    assert "malformed JSON" in ops[("POST", "/jobs")]["400"]["description"]
    assert "403" not in ops[("GET", "/health")]  # public: no auth, no cross-site check


def test_an_endpoints_own_400_is_told_about_invalid_host(tmp_path: Path) -> None:
    extra = EndpointGroup("extra")

    @extra.post("/echo", summary="Echo", replies={400: Reply("no echo today")})
    async def echo(api: Api, request: Request) -> Response:
        return JSONResponse({})

    ops = responses(create_app(make_runtime(tmp_path / "jobs.db"), endpoints=[extra]))
    described = ops[("POST", "/echo")]["400"]["description"]
    assert described.startswith("no echo today") and "invalid_host" in described


async def test_the_documented_refusals_are_the_served_ones(tmp_path: Path) -> None:
    rt = make_runtime(tmp_path / "jobs.db")
    ops = responses(create_app(rt))
    async with rt:
        # On a loopback address (httpx's ASGI transport sets ``server`` from the URL).
        transport = httpx.ASGITransport(app=create_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            foreign = await client.get("/health", headers={"host": "evil.example"})
            cross = await client.post(
                "/jobs",
                json={"task": "steps", "kwargs": {"n": 1, "key": "k"}},
                headers={"origin": "https://evil.example"},
            )
    assert foreign.status_code == 400 and foreign.json()["error"]["code"] == "invalid_host"
    assert "400" in ops[("GET", "/health")]
    assert cross.status_code == 403 and cross.json()["error"]["code"] == "cross_site"
    assert "cross_site" in ops[("POST", "/jobs")]["403"]["description"]


# -- event data JSON cannot carry (sse note 6) ----------------------------------------------------


def strict_json(text: str) -> Any:
    """JSON as a browser's ``JSON.parse`` reads it: no NaN, no Infinity."""

    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_the_common_case_is_plain_utf8_json() -> None:
    value = {"message": "步骤 ✓", "current": 1.5, "nested": [None, True, {"k": "v"}]}
    encoded = encode_data(value)
    assert encoded == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    assert "步骤".encode() in encoded  # not escaped: UTF-8 as it is


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"message": "\ud800"}, {"message": "\ud800"}),
        ({"current": math.nan, "total": math.inf}, {"current": None, "total": None}),
        ({"x": [-math.inf, {"y": "a\udfffb"}]}, {"x": [None, {"y": "a\udfffb"}]}),
        ({"x": {(1, 2): 3, 4: "four"}}, {"x": {"(1, 2)": 3, "4": "four"}}),
    ],
)
def test_data_json_cannot_carry_is_escaped_for_that_frame(
    data: dict[str, Any], expected: dict[str, Any]
) -> None:
    event = Event(7, 3, EventType.PROGRESS, "t", "p", JobStatus.RUNNING, 1.0, data)
    text = frame(event, "3").decode("utf-8")  # valid UTF-8
    assert text.startswith("id: 3\nevent: progress\ndata: ") and text.endswith("\n\n")
    assert text.count("\n") == 4  # still one data line
    sent = strict_json(text.split("data: ", 1)[1])
    assert {k: sent[k] for k in expected} == expected
    assert sent["job_id"] == 7 and sent["seq"] == 3


def test_data_that_cannot_be_written_at_all_leaves_the_event_itself() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    event = Event(7, 3, EventType.PROGRESS, "t", "p", JobStatus.RUNNING, 1.0, {"loop": loop})
    sent = strict_json(frame(event, "3").decode().split("data: ", 1)[1])
    assert sent == {
        "job_id": 7,
        "seq": 3,
        "type": "progress",
        "task": "t",
        "pool": "p",
        "status": "RUNNING",
        "at": 1.0,
    }


class FakeClient:
    """The client side of one streaming request: reads everything, hangs up on demand."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.gone = asyncio.Event()

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def text(self) -> str:
        return b"".join(m.get("body", b"") for m in self.messages).decode("utf-8")

    def frames(self) -> list[dict[str, Any]]:
        """Every frame's fields, its data read as strict JSON."""
        out = []
        for block in self.text.split("\n\n"):
            fields = dict(
                line.split(": ", 1) for line in block.split("\n") if line and ":" in line[1:]
            )
            if "data" in fields:
                out.append({**fields, "data": strict_json(fields["data"])})
        return out


def scope_for(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@pytest.fixture
def gates() -> Gates:
    return {}


@pytest.fixture
async def rt(tmp_path: Path, gates: Gates) -> AsyncIterator[Runtime]:
    runtime = make_runtime(tmp_path / "jobs.db", gates)
    async with runtime:
        yield runtime
        for gate in gates.values():
            gate.set()


@pytest.mark.parametrize(
    "bad",
    [
        {"message": "\ud800"},
        {"current": math.nan, "total": 4},
        {"current": 1, "total": math.inf, "message": "x\udc80"},
    ],
    ids=["lone-surrogate", "nan", "inf-and-surrogate"],
)
async def test_a_frame_json_cannot_carry_breaks_no_stream(
    rt: Runtime, gates: Gates, bad: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(rt, heartbeat=0)
    api: Api = app.state.taskrt
    job_a = await rt.add("steps", 1, "a")
    job_b = await rt.add("steps", 2, "b")
    await wait_until(lambda: "a" in gates and "b" in gates)  # both running, held
    clients = {"a": FakeClient(), "b": FakeClient(), "all": FakeClient()}
    paths = {"a": f"/jobs/{job_a}/events", "b": f"/jobs/{job_b}/events", "all": "/events"}
    calls = {
        name: asyncio.create_task(app(scope_for(paths[name]), client.receive, client.send))
        for name, client in clients.items()
    }
    await wait_until(lambda: rt.broker.subscribers == 3)
    await wait_until(lambda: all("event: snapshot" in clients[k].text for k in ("a", "b")))

    # A hand-made event with data JSON cannot carry, then an ordinary one.
    seq = (await rt.get(job_a)).seq
    now = rt.clock.now()
    with caplog.at_level(logging.WARNING, logger="taskrt.web"):
        rt.broker.publish(
            Event(job_a, seq + 1, EventType.PROGRESS, "steps", "work", JobStatus.RUNNING, now, bad)
        )
        rt.broker.publish(
            Event(
                job_a,
                seq + 2,
                EventType.PROGRESS,
                "steps",
                "work",
                JobStatus.RUNNING,
                now,
                {"message": "still here"},
            )
        )
        for name in ("a", "all"):  # the later event arrives on both streams that saw it
            await wait_until(lambda name=name: "still here" in clients[name].text)
    # Encoded once for both streams, and said so once.
    assert [r.getMessage() for r in caplog.records].count(
        f"taskrt.web: event {job_a}/{seq + 1} has data JSON cannot carry as it is; sent escaped"
    ) == 1

    # Another job's stream goes on to its end, and the multiplexed one with it.
    gates["b"].set()
    await asyncio.wait_for(calls["b"], 5)  # its terminal event ends it
    await wait_until(lambda: f'"job_id":{job_b},' in clients["all"].text.rsplit("event:", 1)[-1])
    for name in ("a", "all"):
        assert not calls[name].done()  # still open
        clients[name].gone.set()
        await asyncio.wait_for(calls[name], 5)
    for call in calls.values():
        assert call.exception() is None

    # Every frame on every stream is valid JSON; the bad one is there, made safe.
    frames = {name: client.frames() for name, client in clients.items()}
    for name in ("a", "all"):
        (made_safe,) = [
            f["data"]
            for f in frames[name]
            if f["data"]["job_id"] == job_a and f["data"]["seq"] == seq + 1
        ]
        for key, value in bad.items():
            expected = None if isinstance(value, float) and not math.isfinite(value) else value
            assert made_safe[key] == expected
        assert frames[name][-1]["event"] in ("progress", "success")
    assert [f["event"] for f in frames["b"]] == ["snapshot", "progress", "progress", "success"]
    assert frames["b"][-1]["data"]["result"] == 2
    b_seen = [f["data"]["seq"] for f in frames["all"] if f["data"]["job_id"] == job_b]
    assert b_seen == [f["data"]["seq"] for f in frames["b"][1:]]
    assert rt.broker.subscribers == 0 and api.streams.active == 0
