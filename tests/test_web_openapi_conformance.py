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

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from starlette.types import ASGIApp, Receive, Scope, Send

from taskrt import JobContext, Runtime
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
