"""Who may act: cross-site refusal (auth note 3), Host checking against DNS
rebinding (``hosts``), and the built-in token with its login form (``login``).

In process through httpx's ASGI transport, whose ``scope["server"]`` is the
base URL's host: ``http://testserver`` is not loopback, ``http://127.0.0.1:8000``
is. A few tests use a real uvicorn server and the ``taskrt`` command line.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from taskrt import InvalidOption, JobContext, JobStatus, Runtime, cli
from taskrt.cli.serve import warn_if_open
from taskrt.web import Unauthorized, create_app
from taskrt.web.login import COOKIE, TokenAuth, TokenPrincipal

Serve = Callable[..., AbstractAsyncContextManager[str]]

TOKEN = "s3cret-token-0123456789"
FORM = {"content-type": "application/x-www-form-urlencoded"}
CROSS_SITE = [
    {"sec-fetch-site": "cross-site"},
    {"origin": "https://evil.example"},
    {"origin": "null"},
    {"origin": "http://testserver.evil.example"},
    {"sec-fetch-site": "same-site", "origin": "http://a.testserver"},
    {"origin": "https://testserver"},  # another scheme is another origin
    {"origin": "http://testserver:8080"},  # and another port
    {"origin": "http://[::1"},  # no origin at all: unbalanced brackets
    {"origin": "https://a]b"},
]


def make_runtime(path: Path) -> Runtime:
    rt = Runtime(str(path), poll_interval=0.01)
    rt.pool("work", concurrency=2)

    @rt.task(pool="work", attempts=1)
    async def boom(job: JobContext) -> None:
        raise RuntimeError("boom")

    @rt.task(pool="work")
    async def echo(job: JobContext, value: Any = None) -> Any:
        return value

    rt.schedule("nightly", "echo", "0 3 * * *")
    return rt


@pytest.fixture(autouse=True)
def no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TASKRT_TOKEN", "TASKRT_ALLOWED_HOSTS", "TASKRT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def rt(db_path: Path) -> AsyncIterator[Runtime]:
    runtime = make_runtime(db_path)
    async with runtime:
        yield runtime


def client_for(app: Any, base_url: str = "http://testserver", **options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url, **options)


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    code: str = body["error"]["code"]
    return code


async def failed_job(rt: Runtime) -> int:
    job_id = await rt.add("boom")
    assert (await rt.wait(job_id, timeout=5)).status is JobStatus.FAILURE
    return job_id


async def snapshot(client: httpx.AsyncClient, job_id: int, **headers: str) -> dict[str, Any]:
    """What a cross-site request might change: the job, the schedule, the pool, the job list."""
    parts = {
        "job": await client.get(f"/jobs/{job_id}", headers=headers),
        "schedule": await client.get("/schedules/nightly", headers=headers),
        "pool": await client.get("/pools/work", headers=headers),
        "jobs": await client.get("/jobs", headers=headers),
    }
    for response in parts.values():
        assert response.status_code == 200, response.text
    state = {name: response.json() for name, response in parts.items()}
    state["pool"] = {k: state["pool"][k] for k in ("concurrency", "capacity", "paused")}
    return state


# -- cross-site requests (auth note 3) --------------------------------------------------------


@pytest.mark.parametrize("headers", CROSS_SITE)
async def test_cross_site_state_changes_are_refused_and_change_nothing(
    rt: Runtime, headers: dict[str, str]
) -> None:
    job_id = await failed_job(rt)
    async with client_for(create_app(rt)) as client:
        before = await snapshot(client, job_id)
        # What an HTML form on another site sends: url-encoded, often no body at all.
        attempts = [
            client.post(f"/jobs/{job_id}/retry", headers={**FORM, **headers}),
            client.post("/schedules/nightly/run", headers={**FORM, **headers}),
            client.post("/schedules/nightly/pause", headers={**FORM, **headers}),
            client.post("/jobs", content=b"task=echo", headers={**FORM, **headers}),
            client.patch("/pools/work", json={"concurrency": 9, "paused": True}, headers=headers),
            client.delete(f"/jobs/{job_id}", headers=headers),
        ]
        for attempt in attempts:
            r = await attempt
            assert r.status_code == 403, r.text
            assert error_code(r) == "cross_site"
        # The same headers may read: a GET is not a state change.
        assert await snapshot(client, job_id, **headers) == before
    assert rt.pools["work"].statistics().concurrency == 2


async def test_cross_site_requests_are_refused_whatever_their_credentials(rt: Runtime) -> None:
    job_id = await failed_job(rt)
    basic = "Basic " + base64.b64encode(f"me:{TOKEN}".encode()).decode()
    app = create_app(rt, token=TOKEN)
    async with client_for(app, headers={"authorization": f"Bearer {TOKEN}"}) as client:
        before = await snapshot(client, job_id)
        cookie = (await client.post("/login", content=f"token={TOKEN}", headers=FORM)).cookies
        assert COOKIE in cookie
        client.cookies = cookie
        for credentials in (f"Bearer {TOKEN}", basic):
            r = await client.post(
                f"/jobs/{job_id}/retry",
                headers={**FORM, "authorization": credentials, "origin": "https://evil.example"},
            )
            assert (r.status_code, error_code(r)) == (403, "cross_site")
        del client.headers["authorization"]
        r = await client.post(
            "/schedules/nightly/run", headers={**FORM, "sec-fetch-site": "cross-site"}
        )
        assert (r.status_code, error_code(r)) == (403, "cross_site")
        client.headers["authorization"] = f"Bearer {TOKEN}"
        assert await snapshot(client, job_id) == before


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, the CLI, another server
        {"origin": "http://testserver", "sec-fetch-site": "same-origin"},
        {"origin": "http://testserver:80"},
        {"sec-fetch-site": "none"},
        {"sec-fetch-site": "same-site", "origin": "https://app.example"},  # trusted
    ],
)
async def test_same_origin_and_header_less_state_changes_still_act(
    rt: Runtime, headers: dict[str, str]
) -> None:
    job_id = await failed_job(rt)
    app = create_app(rt, trusted_origins=["https://app.example:443"])
    async with client_for(app) as client:
        r = await client.post(f"/jobs/{job_id}/retry", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["status"] in ("WAITING", "RUNNING", "FAILURE")
        assert r.json()["attempts"] >= 1
        r = await client.post("/schedules/nightly/pause", headers=headers)
        assert (r.status_code, r.json()["paused"]) == (200, True)
        r = await client.post("/schedules/nightly/run", headers=headers)
        assert r.status_code == 201, r.text
        r = await client.patch("/pools/work", json={"concurrency": 3}, headers=headers)
        assert (r.status_code, r.json()["concurrency"]) == (200, 3)


@pytest.mark.parametrize(
    "trusted",
    [
        ["app.example"],
        ["https://app.example/app"],
        ["http://[::1"],
        ["https://app.example", ""],
        "https://app.example",
    ],
)
async def test_a_trusted_origin_that_is_no_origin_is_refused_when_the_app_is_made(
    rt: Runtime, trusted: Any
) -> None:
    with pytest.raises(InvalidOption, match="trusted_origins"):
        create_app(rt, trusted_origins=trusted)


async def test_the_own_origin_is_the_scheme_host_and_port_the_request_sees(rt: Runtime) -> None:
    async with client_for(create_app(rt), base_url="https://jobs.example:8443") as client:
        ok = await client.post(
            "/jobs", json={"task": "echo"}, headers={"origin": "https://jobs.example:8443"}
        )
        assert ok.status_code == 201, ok.text
        bad = await client.post(
            "/jobs", json={"task": "echo"}, headers={"origin": "https://jobs.example"}
        )
        assert (bad.status_code, error_code(bad)) == (403, "cross_site")


# -- Host checking (hosts notes) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil", "[::2]"],
)
async def test_a_foreign_host_on_a_loopback_server_is_refused_and_adds_nothing(
    rt: Runtime, host: str
) -> None:
    async with client_for(create_app(rt), base_url="http://127.0.0.1:8000") as client:
        listed = await client.get("/jobs", headers={"host": host})
        assert (listed.status_code, error_code(listed)) == (400, "invalid_host")
        added = await client.post("/jobs", json={"task": "echo"}, headers={"host": host})
        assert (added.status_code, error_code(added)) == (400, "invalid_host")
        dashboard = await client.get("/dashboard", headers={"host": host})
        assert dashboard.status_code == 400
        assert (await client.get("/jobs")).json()["jobs"] == []


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:8000", "localhost", "LOCALHOST:9", "app.localhost", "127.8.9.10", "[::1]:8000"],
)
async def test_loopback_names_are_served_on_a_loopback_server(rt: Runtime, host: str) -> None:
    for base in ("http://127.0.0.1:8000", "http://[::1]:8000"):
        async with client_for(create_app(rt), base_url=base) as client:
            assert (await client.get("/jobs", headers={"host": host})).status_code == 200


async def test_any_host_is_served_on_a_server_that_is_not_on_loopback(rt: Runtime) -> None:
    async with client_for(create_app(rt), base_url="http://10.1.2.3:8000") as client:
        r = await client.post("/jobs", json={"task": "echo"}, headers={"host": "jobs.example"})
        assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("jobs.example.com", 200),
        ("JOBS.example.com:443", 200),
        ("a.b.example.com", 200),
        ("example.com", 400),  # "*.example.com" wants a subdomain
        ("jobs.example.org", 400),
        ("localhost", 400),  # explicit hosts replace the loopback default
        ("", 400),
    ],
)
async def test_explicit_allowed_hosts_follow_trusted_host_semantics(
    rt: Runtime, host: str, status: int
) -> None:
    app = create_app(rt, allowed_hosts=["jobs.example.com", "*.example.com"])
    async with client_for(app, base_url="http://127.0.0.1:8000") as client:
        r = await client.get("/jobs", headers={"host": host})
        assert r.status_code == status, r.text
        if status == 400:
            assert error_code(r) == "invalid_host"


async def test_a_star_allows_every_host_and_bad_patterns_are_refused(rt: Runtime) -> None:
    async with client_for(create_app(rt, allowed_hosts=["*"]), "http://127.0.0.1:8000") as client:
        assert (await client.get("/jobs", headers={"host": "evil.example"})).status_code == 200
    for bad in (["a.*.com"], ["*example.com"], [""], "jobs.example.com"):
        with pytest.raises(InvalidOption):
            create_app(rt, allowed_hosts=bad)


@pytest.mark.parametrize(
    ("pattern", "hint"),
    [
        ("jobs.example.com:8443", "'jobs.example.com'"),
        ("*.example.com:80", "'*.example.com'"),
        ("http://jobs.example.com/", None),
        ("jobs example com", None),
    ],
)
async def test_a_pattern_that_is_no_host_name_is_refused(
    rt: Runtime, pattern: str, hint: str | None
) -> None:
    """Before, these were taken and matched no Host: every request was a 400."""
    with pytest.raises(InvalidOption, match="expected a host name") as refused:
        create_app(rt, allowed_hosts=[pattern])
    if hint is not None:
        assert f"a port is not part of it: {hint}" in str(refused.value)


@pytest.mark.parametrize("expires", ["1\u00b9\u00b3", "\u00b2", "\u0663\u0663", "-5", ""])
async def test_a_cookie_whose_expiry_is_no_ascii_number_is_refused_not_an_error(
    rt: Runtime, expires: str
) -> None:
    """``str.isdigit`` is true of "²", which ``int`` refuses: such a cookie was a 500
    (with a traceback in the log) on every route that needs the token."""
    auth = TokenAuth(TOKEN, fallback=None, now=time.time)
    assert auth.cookie_is_valid(f"v1.{expires}.abc") is False
    raw = f"{COOKIE}=v1.{expires}.abc".encode("latin-1", "replace")
    async with client_for(create_app(rt, token=TOKEN)) as client:
        r = await client.get("/jobs", headers=[(b"cookie", raw)])
        assert r.status_code == 401, r.text


async def test_the_host_check_runs_on_the_raw_asgi_scope(rt: Runtime) -> None:
    app = create_app(rt)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/jobs",
        "query_string": b"",
        "headers": [(b"host", b"evil.example")],
        "server": ("::1", 8000),
    }
    sent = await asgi(app, scope)
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["code"] == "invalid_host"
    sent = await asgi(app, {**scope, "headers": []})  # no Host at all
    assert sent[0]["status"] == 400
    sent = await asgi(app, {**scope, "type": "websocket", "path": "/ws"})
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "invalid host"}]


async def asgi(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    """What ``app`` sends for one bodiless request of ``scope``, on the raw ASGI interface."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_a_dual_stack_listeners_ipv4_loopback_is_loopback(rt: Runtime) -> None:
    """uvicorn with --workers binds ``::``, and a connection to 127.0.0.1 arrives as
    ``::ffff:127.0.0.1``, which Python 3.11 does not call loopback: a rebound Host
    was served the job list there."""
    app = create_app(rt)
    for host, status in ((b"evil.example", 400), (b"127.0.0.1:8000", 200)):
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/jobs",
            "query_string": b"",
            "headers": [(b"host", host)],
            "server": ("::ffff:127.0.0.1", 8000),
        }
        sent = await asgi(app, scope)
        assert sent[0]["status"] == status, (host, sent)


@pytest.mark.server
async def test_a_real_loopback_server_refuses_a_rebound_host(rt: Runtime, server: Serve) -> None:
    async with server(create_app(rt)) as base, httpx.AsyncClient(base_url=base) as client:
        r = await client.post("/jobs", json={"task": "echo"}, headers={"host": "evil.example"})
        assert (r.status_code, error_code(r)) == (400, "invalid_host")
        assert (await client.get("/jobs")).json()["jobs"] == []


# -- the built-in token (login notes) -------------------------------------------------------


async def test_the_token_is_required_as_bearer_or_basic_password_but_not_for_health(
    rt: Runtime,
) -> None:
    async with client_for(create_app(rt, token=TOKEN)) as client:
        assert (await client.get("/health")).status_code == 200
        missing = await client.get("/jobs")
        assert (missing.status_code, error_code(missing)) == (401, "unauthorized")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        added = await client.post("/jobs", json={"task": "echo"})
        assert added.status_code == 401
        for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Token {TOKEN}", f"Bearer {TOKEN[:-1]}"):
            assert (await client.get("/jobs", headers={"authorization": wrong})).status_code == 401
        good = {"authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/jobs", headers=good)).json()["jobs"] == []
        assert (await client.post("/jobs", json={"task": "echo"}, headers=good)).status_code == 201
        for user in ("admin", ""):
            assert (await client.get("/jobs", auth=(user, TOKEN))).status_code == 200
        assert (await client.get("/jobs", auth=("admin", "wrong"))).status_code == 401
        assert (
            await client.get("/jobs", auth=(TOKEN, "x"))
        ).status_code == 401  # a user, not a password


async def test_a_token_of_non_ascii_text_is_taken_as_bearer_in_utf_8(rt: Runtime) -> None:
    """The server reads header bytes as Latin-1, so the UTF-8 a client (curl with
    ``$TASKRT_TOKEN``) sends never matched: 401 for the right token."""
    token = "ünïcödé-tökén-1234567"
    async with client_for(create_app(rt, token=token)) as client:
        sent = httpx.Headers({"authorization": f"Bearer {token}"}, encoding="utf-8")
        assert (await client.get("/jobs", headers=sent)).status_code == 200
        wrong = httpx.Headers({"authorization": f"Bearer {token}x"}, encoding="utf-8")
        assert (await client.get("/jobs", headers=wrong)).status_code == 401
        assert (await client.get("/jobs", auth=("admin", token))).status_code == 200


async def test_the_token_comes_from_the_environment_unless_turned_off(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKRT_TOKEN", TOKEN)
    async with client_for(create_app(rt)) as client:
        assert (await client.get("/jobs")).status_code == 401
        assert (
            await client.get("/jobs", headers={"authorization": f"Bearer {TOKEN}"})
        ).status_code == 200
    async with client_for(create_app(rt, token="")) as client:
        assert (await client.get("/jobs")).status_code == 200
        assert (await client.get("/login")).status_code == 404  # no token, no form
    monkeypatch.setenv("TASKRT_TOKEN", "short")
    with pytest.raises(InvalidOption) as short:
        create_app(rt)
    assert short.value.field == "$TASKRT_TOKEN"


async def test_login_form_sets_a_cookie_that_is_not_the_token_and_opens_the_dashboard(
    rt: Runtime,
) -> None:
    html = {"accept": "text/html,application/xhtml+xml"}
    async with client_for(create_app(rt, token=TOKEN)) as client:
        away = await client.get("/dashboard", headers=html)
        assert (away.status_code, away.headers["location"]) == (303, "/login")
        job_page = await client.get("/dashboard/jobs/3", headers=html)
        assert (job_page.status_code, job_page.headers["location"]) == (303, "/login")
        flow_page = await client.get("/dashboard/workflows/3", headers=html)
        assert (flow_page.status_code, flow_page.headers["location"]) == (303, "/login")
        # A script, not a browser page: JSON 401, no redirect.
        assert (await client.get("/dashboard")).status_code == 401
        assert (await client.get("/dashboard/static/dashboard.js", headers=html)).status_code == 401

        form = await client.get("/login")
        assert form.status_code == 200 and 'name="token"' in form.text
        assert 'action="/login"' in form.text
        assert "script-src" not in form.headers["content-security-policy"]

        wrong = await client.post("/login", content="token=nope", headers=FORM)
        assert wrong.status_code == 401 and 'name="token"' in wrong.text
        assert "not the token" in wrong.text and "set-cookie" not in wrong.headers

        right = await client.post("/login", content=f"token={TOKEN}", headers=FORM)
        assert (right.status_code, right.headers["location"]) == (303, "/dashboard")
        set_cookie = right.headers["set-cookie"]
        assert TOKEN not in set_cookie
        assert "httponly" in set_cookie.lower() and "samesite=strict" in set_cookie.lower()
        value = right.cookies[COOKIE]
        assert value and TOKEN not in value

        page = await client.get("/dashboard", headers=html)  # the client keeps the cookie
        assert page.status_code == 200 and "<html" in page.text
        assert (await client.get("/jobs")).status_code == 200
        assert (await client.get("/dashboard/static/dashboard.js")).status_code == 200

        out = await client.get("/logout")
        assert (out.status_code, out.headers["location"]) == (303, "/login")
        assert COOKIE not in client.cookies
        assert (await client.get("/dashboard", headers=html)).status_code == 303

    # A cookie is worth nothing to an app with another token.
    other = create_app(rt, token=TOKEN + "-rotated")
    async with client_for(other, cookies={COOKIE: value}) as client:
        assert (await client.get("/jobs")).status_code == 401


async def test_login_refuses_cross_site_posts_and_non_form_bodies(rt: Runtime) -> None:
    async with client_for(create_app(rt, token=TOKEN)) as client:
        r = await client.post(
            "/login", content=f"token={TOKEN}", headers={**FORM, "origin": "https://evil.example"}
        )
        assert (r.status_code, error_code(r)) == (403, "cross_site")
        assert COOKIE not in r.cookies
        r = await client.post("/login", json={"token": TOKEN})
        assert (r.status_code, error_code(r)) == (415, "unsupported_media_type")
        # More fields than a sign-in form has: the form again (401), not a 500.
        for body in ("&" * 12, "&".join([f"token={TOKEN}"] + [f"f{n}=x" for n in range(11)])):
            r = await client.post("/login", content=body, headers=FORM)
            assert r.status_code == 401, (body, r.status_code)
            assert COOKIE not in r.cookies


async def test_the_login_form_and_redirects_follow_the_mount(rt: Runtime) -> None:
    host = Starlette(routes=[Mount("/tasks", app=create_app(rt, token=TOKEN))])
    async with client_for(host) as client:
        away = await client.get("/tasks/dashboard", headers={"accept": "text/html"})
        assert (away.status_code, away.headers["location"]) == (303, "/tasks/login")
        assert 'action="/tasks/login"' in (await client.get("/tasks/login")).text
        right = await client.post("/tasks/login", content=f"token={TOKEN}", headers=FORM)
        assert right.headers["location"] == "/tasks/dashboard"
        assert "path=/tasks" in right.headers["set-cookie"].lower()
        assert (await client.get("/tasks/jobs")).status_code == 200


def test_a_login_cookie_expires_and_cannot_be_forged() -> None:
    now = [1_000.0]
    auth = TokenAuth(TOKEN, fallback=None, now=lambda: now[0], ttl=60)
    cookie = auth.cookie()
    assert auth.cookie_is_valid(cookie)
    version, expires, signature = cookie.split(".")
    assert not auth.cookie_is_valid(f"{version}.{int(expires) + 3600}.{signature}")
    assert not auth.cookie_is_valid(TOKEN)
    now[0] += 61
    assert not auth.cookie_is_valid(cookie)
    with pytest.raises(ValueError):
        TokenAuth("too-short", fallback=None, now=lambda: 0.0)


async def test_the_token_and_an_auth_callable_compose(rt: Runtime) -> None:
    def auth(request: Request) -> Any:
        if request.headers.get("x-user") == "alice":
            return "alice"
        raise Unauthorized("no such user")

    app = create_app(rt, token=TOKEN, auth=auth)
    async with client_for(app) as client:
        assert (await client.get("/jobs", headers={"x-user": "alice"})).status_code == 200
        assert (
            await client.get("/jobs", headers={"authorization": f"Bearer {TOKEN}"})
        ).status_code == 200
        refused = await client.get("/jobs", headers={"x-user": "mallory"})
        assert refused.status_code == 401 and "no such user" in refused.json()["error"]["message"]
        # The callable's refusal still sends a browser to the login form.
        away = await client.get("/dashboard", headers={"accept": "text/html"})
        assert away.status_code == 303
    scope = {"type": "http", "method": "GET", "path": "/jobs", "headers": []}
    bearer = [(b"authorization", f"Bearer {TOKEN}".encode())]
    builtin = TokenAuth(TOKEN, fallback=auth, now=lambda: 0.0)
    assert await builtin(Request({**scope, "headers": bearer})) == TokenPrincipal("bearer")
    with pytest.raises(Unauthorized, match="no such user"):
        await builtin(Request(scope))


# -- the command line ----------------------------------------------------------------------


@pytest.mark.server
async def test_watch_sends_the_token_from_the_environment_or_token(
    rt: Runtime, server: Serve, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = await rt.add("echo", 7)
    await rt.wait(job_id, timeout=5)
    async with server(create_app(rt, token=TOKEN)) as url:
        code = await asyncio.to_thread(cli.main, ["watch", str(job_id), "--url", url])
        assert code == 2
        assert "HTTP 401" in capsys.readouterr().err

        code = await asyncio.to_thread(
            cli.main, ["watch", str(job_id), "--url", url, "--token", TOKEN, "--json"]
        )
        out = capsys.readouterr().out
        assert code == 0
        assert json.loads(out.splitlines()[-1])["status"] == "SUCCESS"

        monkeypatch.setenv("TASKRT_TOKEN", TOKEN)
        code = await asyncio.to_thread(cli.main, ["watch", str(job_id), "--url", url])
        assert code == 0
        assert capsys.readouterr().out.splitlines()[-1].startswith(f"job {job_id} SUCCESS")

        # An explicit header wins over the variable.
        code = await asyncio.to_thread(
            cli.main, ["watch", str(job_id), "--url", url, "-H", "Authorization: Bearer nope"]
        )
        assert code == 2


async def test_serve_warns_when_it_serves_beyond_loopback_without_auth(
    rt: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    open_app = create_app(rt)
    warn_if_open(open_app, "0.0.0.0", 8000)
    assert "without authentication" in capsys.readouterr().err
    for app, host in (
        (open_app, "127.0.0.1"),
        (open_app, "localhost"),
        (create_app(rt, token=TOKEN), "::"),
    ):
        warn_if_open(app, host, 8000)
        assert capsys.readouterr().err == ""


async def test_allowed_hosts_come_from_the_environment_when_not_given(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKRT_ALLOWED_HOSTS", " jobs.example.com, *.example.org ,")
    async with client_for(create_app(rt), base_url="http://127.0.0.1:8000") as client:
        for host, status in (("jobs.example.com", 200), ("a.example.org", 200), ("localhost", 400)):
            assert (await client.get("/jobs", headers={"host": host})).status_code == status
    async with client_for(
        create_app(rt, allowed_hosts=["localhost"]), "http://127.0.0.1:8000"
    ) as client:
        assert (await client.get("/jobs", headers={"host": "localhost"})).status_code == 200
        assert (await client.get("/jobs", headers={"host": "jobs.example.com"})).status_code == 400
    monkeypatch.setenv("TASKRT_ALLOWED_HOSTS", "a*b")
    with pytest.raises(InvalidOption) as bad:
        create_app(rt)
    assert bad.value.field == "$TASKRT_ALLOWED_HOSTS"
    args = cli.build_parser().parse_args(
        ["serve", "app:rt", "--allowed-host", "a", "--allowed-host", "b"]
    )
    assert args.allowed_host == ["a", "b"]
