"""The OpenAPI document against the API it describes: Schemathesis, in process.

Schemathesis reads the document and sends the app requests made from it (no
server, no network): schema-valid ones, which must not be refused (400/422),
schema-violating ones, which must be, and the boundary values of every
parameter and field. Every response goes through all of its checks: no 5xx, a
documented status, a documented content type, a body that fits its schema. A
failure means the document or the code is wrong (taskrt/web/openapi.py says
where each part of the document comes from).

Bounded and deterministic: few examples per operation, Hypothesis
derandomized and without its example database, so every run is the same run.

How it is wired:

- The document is ``openapi.document`` of an app whose runtime never starts
  (it is what ``GET /openapi.json`` serves, less ``servers``), so importing
  this module starts nothing.
- Requests go to ``APP``, which forwards them to the app of the running test:
  a fresh runtime on a fresh database per operation. Schemathesis runs the
  app's lifespan (so the runtime) in its own event loop thread, and ends it
  when the test ends. (``schemathesis.pytest.from_fixture`` would do this for
  us, but does not run under pytest 9.)

One rule cannot be written in OpenAPI, so it is let through: ``GET /stats``
and ``GET /stats/history`` answer 422 when ``until`` is before ``since``, a
rule between two parameters. And a schema-violating body larger than the app's
limit (a workflow of more than 10,000 steps, say) is refused with its
documented 413 before its shape is read, a refusal Schemathesis does not count
as one. ``GET /events`` is left out: it streams until the runtime stops.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from starlette.types import ASGIApp, Receive, Scope, Send

from taskrt import JobContext, Runtime
from taskrt.limits import FAR_TIME, MAX_DURATION, MAX_TIME
from taskrt.web import create_app
from taskrt.web.openapi import document


class CurrentApp:
    """The ASGI app of the running test, for Schemathesis to call."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "no test is running"
        await self.app(scope, receive, send)


APP = CurrentApp()


def make_app(path: Path) -> ASGIApp:
    rt = Runtime(str(path))
    rt.pool("main", concurrency=2)

    @rt.task(pool="main")
    async def echo(job: JobContext, value: Any = None) -> Any:
        return value

    return create_app(rt)


def _document() -> dict[str, Any]:
    api = make_app(Path("never-opened.db")).state.taskrt
    return {**document(api, api.components), "servers": [{"url": "/"}]}


schema = schemathesis.openapi.from_dict(_document()).exclude(path="/events")
schema.app = APP


@pytest.fixture(autouse=True)
def app(tmp_path: Path) -> Iterator[None]:
    APP.app = make_app(tmp_path / "jobs.db")
    yield
    APP.app = None


def inverted_window(case: Any, response: Any) -> bool:
    """The 422 of ``GET /stats`` (and its history) with ``until`` before ``since``."""
    if case.path not in ("/stats", "/stats/history") or response.status_code != 422:
        return False
    error = response.json()["error"]
    return bool(error.get("field") == "until" and "before since" in error["message"])


@schema.parametrize()
@settings(
    max_examples=10,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_does_what_its_openapi_document_says(case: Any) -> None:
    response = case.call()
    if inverted_window(case, response):
        return
    if response.status_code == 413:
        assert response.json()["error"]["code"] == "body_too_large"
        assert len(response.request.content) > 1024 * 1024
        return
    case.validate_response(response)


def _past(bound: float) -> float:
    return math.nextafter(bound, math.inf)


def _before(bound: float) -> float:
    return math.nextafter(bound, -math.inf)


#: (field, value, whether it is within the field's bounds) for ``POST /jobs``.
JOB_BOUNDS: list[tuple[str, Any, bool]] = [
    *(
        case
        for field in ("delay", "timeout", "unique_for")
        for case in ((field, MAX_DURATION, True), (field, _past(MAX_DURATION), False))
    ),
    ("delay", 0, True),
    ("delay", _before(0.0), False),
    ("retry", MAX_DURATION, True),
    ("retry", _past(MAX_DURATION), False),
    ("retry", [MAX_DURATION], True),
    ("retry", [_past(MAX_DURATION)], False),
    ("retry", [], False),
    ("retry", {"base": MAX_DURATION, "cap": MAX_DURATION}, True),
    ("retry", {"base": _past(MAX_DURATION)}, False),
    ("retry", {"cap": _past(MAX_DURATION)}, False),
    ("retry", {"jitter": 0}, True),
    ("retry", {"jitter": 1}, True),
    ("retry", {"jitter": _before(0.0)}, False),
    ("retry", {"jitter": _past(1.0)}, False),
    *(
        case
        for field in ("run_at", "deadline")
        for case in (
            (field, 0, True),
            (field, _before(0.0), False),
            (field, MAX_TIME, True),
            (field, _past(MAX_TIME), False),
            (field, "1970-01-01T00:00:00Z", True),
            (field, "1969-12-31T23:59:59Z", False),
            (field, "9999-12-31T23:59:59Z", True),
        )
    ),
]

#: (query parameter, value, within its bounds) for ``GET /stats/history``.
WINDOW_BOUNDS: list[tuple[str, float, bool]] = [
    case
    for name in ("since", "until")
    for case in (
        (name, FAR_TIME, True),
        (name, _past(FAR_TIME), False),
        (name, -FAR_TIME, True),
        (name, _before(-FAR_TIME), False),
    )
]


async def test_just_inside_a_documented_bound_is_taken_and_just_outside_refused(
    tmp_path: Path,
) -> None:
    """The document's request schemas carry the handlers' bounds (docs/http-api.md,
    "What /openapi.json promises"): a value the schema takes is not refused for
    its field, and one it refuses is a 422 naming the field. Durations had no
    maximum (the handlers refuse beyond 100 years), ``run_at`` and ``deadline`` no
    range (1970 to the year 9999), a history window no range (within 1e12 seconds
    of 1970), a retry policy's list no minimum length and its jitter no range.
    (This validator does not check ``format``: the values are well-formed.) And
    Schemathesis found ``?step=86400.0`` refused, an integer the schema holds."""
    rt = Runtime(str(tmp_path / "bounds.db"))

    @rt.task
    async def echo(job: JobContext, value: Any = None) -> Any:
        return value

    transport = httpx.ASGITransport(app=create_app(rt))
    async with rt, httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        openapi = (await client.get("/openapi.json")).json()

        def fits(schema: dict[str, Any], value: Any) -> bool:
            root = {**schema, "components": openapi["components"]}
            return Draft202012Validator(root).is_valid(value)

        new_job = {"$ref": "#/components/schemas/NewJob"}
        for i, (field, value, within) in enumerate(JOB_BOUNDS):
            body = {"task": "echo", "unique_key": f"k{i}", field: value}
            assert fits(new_job, body) is within, (field, value)
            r = await client.post("/jobs", json=body)
            if within:
                assert r.status_code == 201, (field, value, r.text)
            else:
                assert r.status_code == 422, (field, value, r.text)
                assert r.json()["error"]["field"].startswith(field), (field, value, r.text)
        parameters = openapi["paths"]["/stats/history"]["get"]["parameters"]
        schemas = {p["name"]: p["schema"] for p in parameters}
        for name, moment, within in WINDOW_BOUNDS:
            assert fits(schemas[name], moment) is within, (name, moment)
            # A window ends now unless told (and may not end before it starts).
            params = {name: repr(moment), **({"until": repr(FAR_TIME)} if name == "since" else {})}
            r = await client.get("/stats/history", params=params)
            assert r.status_code == (200 if within else 422), (name, moment, r.text)
        # The document's integer ``step`` holds 120.0, as a client may write it.
        for step, status in (("120.0", 200), ("120.5", 422), ("1.2e2", 422)):
            r = await client.get("/stats/history", params={"step": step})
            assert r.status_code == status, (step, r.text)
