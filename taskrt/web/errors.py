"""Errors as JSON: ``{"error": {"code", "message", ...}}`` with the right status.

Three kinds of failure reach a client:

1. ``ApiError``: the HTTP layer refuses the request itself (malformed JSON,
   wrong content type, a body over the limit, an unknown query parameter).
2. ``TaskrtError``: the runtime refused (unknown job or task, invalid
   transition, validation, a full pool); each carries its ``code``, and
   ``STATUS`` here says which HTTP status answers it (the core knows nothing
   of HTTP).
3. Anything else is a bug. ``CatchAll`` logs it with its traceback and answers
   a bare JSON 500: the traceback goes to the log, never into a response.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import (
    DuplicateJob,
    DuplicateJobId,
    InvalidOption,
    InvalidTransition,
    JobNotFound,
    OwnershipError,
    OwnerUnreachable,
    PoolExists,
    PoolNotFound,
    QueueFull,
    RuntimeNotStarted,
    SerializationError,
    StoreUnavailable,
    TaskNotFound,
    TaskrtError,
    ValidationError,
)
from ..schedule import CronError
from ..scheduler import ScheduleExists, ScheduleNotFound
from ..taskfiles.problems import DefinitionError

log = logging.getLogger("taskrt.web")

# Codes for the statuses Starlette's router raises itself.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


class ApiError(Exception):
    """A refusal of the HTTP layer: raise it from an endpoint or a helper."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.extra}

    def response(self) -> Response:
        return error_response(self.status, self.to_dict(), self.headers)


def error_response(
    status: int, error: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse({"error": dict(error)}, status_code=status, headers=dict(headers or {}))


# The HTTP status of each error the runtime raises on purpose; a subclass
# answers as its nearest listed base; anything unlisted is the server's (500).
STATUS: dict[type[TaskrtError], int] = {
    InvalidOption: 422,
    ValidationError: 422,
    SerializationError: 422,
    CronError: 422,
    DefinitionError: 422,
    TaskNotFound: 404,
    PoolNotFound: 404,
    PoolExists: 409,
    JobNotFound: 404,
    ScheduleNotFound: 404,
    DuplicateJob: 409,
    DuplicateJobId: 409,
    InvalidTransition: 409,
    OwnershipError: 409,
    ScheduleExists: 409,
    QueueFull: 503,
    StoreUnavailable: 503,
    OwnerUnreachable: 503,
    # The app is mounted but the host's lifespan never started the runtime.
    RuntimeNotStarted: 503,
}


def status_of(exc: TaskrtError) -> int:
    """The HTTP status that answers ``exc`` (``STATUS``)."""
    for cls in type(exc).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


def taskrt_error_response(exc: TaskrtError, *, retry_after: int) -> Response:
    """The response for an error the runtime raised on purpose."""
    status = status_of(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, QueueFull | StoreUnavailable):
        headers["Retry-After"] = str(retry_after)
    if status >= 500 and status != 503:
        # The server's own failure (the database, say): the details, such as
        # file paths, go to the log, not to the client.
        log.error("taskrt.web: %s: %s", type(exc).__name__, exc)
        return error_response(
            status, {"code": exc.code, "message": "internal error; see the server's log"}, headers
        )
    body = exc.to_dict()
    if isinstance(exc, CronError) and body.get("field") == "timezone":
        body["field"] = "tz"  # as the schedule's bodies name it
    return error_response(status, body, headers)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (wrong method), as JSON."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    return error_response(exc.status_code, {"code": code, "message": message}, exc.headers)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


class CatchAll:
    """Outermost middleware: a bug becomes a logged traceback and a JSON 500.

    Unlike Starlette's ``ServerErrorMiddleware`` it does not re-raise after
    answering, so a host app or server prints the traceback once, and the
    client sees no more than ``internal_error``. When the response has already
    started (a stream), the connection can only be closed: it re-raises.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception(
                "taskrt.web: unhandled error in %s %s", scope.get("method"), scope.get("path")
            )
            if started:
                raise
            body = json.dumps(
                {"error": {"code": "internal_error", "message": "internal server error"}}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


__all__ = [
    "ApiError",
    "CatchAll",
    "api_error_handler",
    "error_response",
    "http_exception_handler",
    "taskrt_error_response",
]
