"""``create_app``'s settings and the PostgreSQL URL's options: a bad one is an
``InvalidOption`` naming it when the app (or the Runtime) is made, never a raw
``TypeError``, a 500 on each request later, or nonsense accepted in silence
(docs/http-api.md, "create_app options"; docs/postgres.md)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskrt import InvalidOption, JobContext, Runtime
from taskrt.web import create_app
from taskrt.web.routing import Api, EndpointGroup

PG = "postgresql://postgres@127.0.0.1:5432/postgres"

BAD: list[tuple[str, Any]] = [
    # Raw exceptions before.
    ("send_timeout", "5"),
    ("stream_buffer", "5"),
    ("token_ttl", "300"),
    ("token_ttl", None),
    ("token", 5),
    ("token", b"0123456789abcdefXYZ"),
    ("allowed_hosts", 5),
    ("trusted_origins", 5),
    ("trusted_origins", [["x"]]),
    ("trusted_origins", "https://app.example"),
    ("token_secret", ["a"]),
    ("endpoints", [5]),
    ("endpoints", 5),
    ("routes", [5]),
    ("middleware", [5]),
    # Accepted, then every request failed.
    ("token_ttl", math.nan),
    ("token_ttl", math.inf),
    ("token_ttl", 0),
    ("auth", 5),
    # Wrong secrets, and the right field named.
    ("token_secret", 100),
    ("token_secret", "\ud800" * 20),
    ("token_secret", "short"),
    # Nonsense accepted in silence.
    ("max_body", math.nan),
    ("max_body", 1.5),
    ("max_body", 0),
    ("heartbeat", math.nan),
    ("heartbeat", -1),
    ("retry_after", 1.5),
    ("retry_after", math.nan),
    ("retry_after", math.inf),
    ("retry_after", True),
    ("max_streams", math.nan),
    ("max_streams", 2.5),
    ("stream_buffer", 1.5),
    ("stream_buffer", math.nan),
    ("stream_buffer", True),
    ("stream_buffer", 0),
    ("send_timeout", math.nan),
    ("send_timeout", True),
    ("send_timeout", 0),
    ("expose_tracebacks", "no"),
    ("expose_tracebacks", 1),
    ("title", 5),
    ("title", "\ud800"),
]


@pytest.fixture(autouse=True)
def no_settings_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TASKRT_TOKEN", "TASKRT_ALLOWED_HOSTS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def rt(db_path: Path) -> AsyncIterator[Runtime]:
    runtime = Runtime(str(db_path), poll_interval=0.01)

    @runtime.task
    async def echo(job: JobContext, value: Any = None) -> Any:
        return value

    async with runtime:
        yield runtime


@pytest.mark.parametrize(
    ("field", "value"), BAD, ids=[f"{field}-{i}" for i, (field, _) in enumerate(BAD)]
)
def test_a_bad_setting_is_refused_naming_it(db_path: Path, field: str, value: Any) -> None:
    rt = Runtime(str(db_path))
    with pytest.raises(InvalidOption) as refused:
        create_app(rt, **{field: value})
    assert refused.value.field == field, str(refused.value)
    assert "expected" in str(refused.value)


class Stamp:
    """A plain ASGI middleware: marks every response, to show it ran."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-stamp", b"1")]
            await send(message)

        await self.app(scope, receive, stamped)


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


reports = EndpointGroup("reports")


@reports.get("/reports/daily", summary="The daily report", needs_runtime=False)
async def daily(api: Api, request: Request) -> JSONResponse:
    return JSONResponse({"report": "daily"})


single = EndpointGroup("single")  # its endpoint is given alone, not as a group


@single.get("/reports/weekly", summary="The weekly report", needs_runtime=False)
async def weekly(api: Api, request: Request) -> JSONResponse:
    return JSONResponse({"report": "weekly"})


async def test_the_defaults_and_sensible_settings_serve(rt: Runtime) -> None:
    defaults = create_app(rt)
    transport = httpx.ASGITransport(app=defaults)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/health")).status_code == 200

    app = create_app(
        rt,
        allowed_hosts=["testserver"],
        max_body=1 << 30,
        heartbeat=0,
        max_streams=1,
        send_timeout=None,
        retry_after=0,
        stream_buffer=1,
        token_secret=b"k" * 16,
        token_ttl=60,
        trusted_origins=("https://app.example:8443",),
        expose_tracebacks=True,
        endpoints=[reports, *single.endpoints],
        routes=(Route("/hello", hello),),
        middleware=[Middleware(Stamp)],
        title="jobs",
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        added = await client.post("/jobs", json={"task": "echo", "kwargs": {"value": 1}})
        assert added.status_code == 201, added.text
        assert added.headers["x-stamp"] == "1"
        job_id = added.json()["id"]
        minted = await client.post(
            f"/jobs/{job_id}/token", headers={"origin": "https://app.example:8443"}
        )
        assert minted.status_code == 201, minted.text
        assert 60 <= minted.json()["expires_at"] - rt.clock.now() <= 62  # token_ttl=60
        shown = await client.get(f"/jobs/{job_id}", params={"token": minted.json()["token"]})
        assert shown.status_code == 200, shown.text
        assert (await client.get("/hello")).text == "hello"
        assert (await client.get("/reports/daily")).json() == {"report": "daily"}
        assert (await client.get("/reports/weekly")).json() == {"report": "weekly"}
        assert (await client.get("/openapi.json")).json()["info"]["title"] == "jobs"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?schema=x&statement_cache_size=-1", "statement_cache_size"),
        ("?statement_cache_size=100001", "statement_cache_size"),
        ("?statement_cache_size=+5", "statement_cache_size"),
        ("?statement_cache_size=1_0", "statement_cache_size"),
        ("?statement_cache_size=x", "statement_cache_size"),
        ("?schema=a&schema=b", "schema"),
        ("?statement_cache_size=0&statement_cache_size=5", "statement_cache_size"),
        ("?jit=on&jit=off", "jit"),
        ("?schema=", "schema"),
    ],
)
def test_a_bad_postgres_url_option_is_refused_when_the_runtime_is_made(
    query: str, field: str
) -> None:
    pytest.importorskip("asyncpg")
    with pytest.raises(InvalidOption) as refused:
        Runtime(PG + query)
    assert refused.value.field == field, str(refused.value)


def test_good_postgres_url_options_are_taken_without_io() -> None:
    pytest.importorskip("asyncpg")
    from taskrt.store.postgres import PgStore

    rt = Runtime(PG + "?schema=jobs&statement_cache_size=0&jit=on")
    store = rt.store
    assert isinstance(store, PgStore)
    assert (store.schema, store.statement_cache_size) == ("jobs", 0)
    assert store.dsn == PG + "?jit=on"
    assert Runtime(PG).store.statement_cache_size == 100  # type: ignore[attr-defined]
