"""The route table: endpoints declared once, served by Starlette, described by OpenAPI.

An ``Endpoint`` is a template: a method, a path, a handler
``async (api, request) -> Response`` and what the OpenAPI document says about
it. ``create_app`` binds every endpoint to one ``Api`` (the runtime and the
settings of that app), so two apps in one process never share state.

Every bound endpoint, before its handler runs, authenticates
(``auth.authenticate``), then refuses query parameters it does not declare (a
misspelt filter is an error, not a silent "everything"). Errors the runtime raises on purpose and
``ApiError`` become JSON error responses here.

To add routes (the schedules API, the dashboard), make an ``EndpointGroup`` in
a module of this package and list it in ``app.GROUPS``, or pass endpoints to
``create_app(endpoints=...)``; both reach the OpenAPI document.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from starlette.convertors import IntegerConvertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import InvalidOption, TaskrtError
from .auth import Access, AuthCallable, JobTokens, authenticate
from .errors import ApiError, taskrt_error_response
from .sse import StreamSlots

if TYPE_CHECKING:
    from ..runtime import Runtime

Handler = Callable[["Api", Request], Awaitable[Response]]
Schema = dict[str, Any]

_CONVERTOR = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(?::[a-zA-Z_]+)?}")


@dataclass(frozen=True, slots=True)
class Param:
    """A documented path, query or header parameter.

    ``allow_empty``: the handler reads an empty query value (``?limit=``) as
    the parameter left out (OpenAPI's ``allowEmptyValue``).
    """

    name: str
    where: Literal["path", "query", "header"] = "query"
    schema: Schema = field(default_factory=lambda: {"type": "string"})
    description: str = ""
    required: bool = False
    allow_empty: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """A documented response: ``schema`` describes its body (``None``: no body).

    ``media`` is the body's media type, or a tuple of the types it may have
    (e.g. ``("text/css", "text/javascript")``), each with ``schema``.
    """

    description: str
    schema: Schema | None = None
    media: str | tuple[str, ...] = "application/json"

    @property
    def media_types(self) -> tuple[str, ...]:
        return (self.media,) if isinstance(self.media, str) else self.media


@dataclass(frozen=True, slots=True)
class Settings:
    """An app's configuration, as given to ``create_app``."""

    auth: AuthCallable | None = None
    max_body: int = 1 << 20
    heartbeat: float = 15.0
    max_streams: int = 1000
    send_timeout: float | None = 10.0
    retry_after: int = 1
    stream_buffer: int | None = None
    token_ttl: float = 300.0
    trusted_origins: frozenset[str] = frozenset()
    expose_tracebacks: bool = False
    title: str = "taskrt"


class Api:
    """What an endpoint handler gets besides the request: one per app."""

    def __init__(
        self,
        runtime: Runtime,
        settings: Settings,
        tokens: JobTokens,
        endpoints: Sequence[Endpoint],
        components: Mapping[str, Schema] | None = None,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.tokens = tokens
        self.endpoints = tuple(endpoints)
        self.components: dict[str, Schema] = dict(components or {})
        self.streams = StreamSlots(settings.max_streams)
        self.openapi_cache: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One method on one path: its handler, who may call it, and its OpenAPI description.

    ``access``: ``"auth"`` (the app's ``auth``), ``"token"`` (``auth``, or a
    per-job token for the path's ``job_id``) or ``"public"`` (no one asked).
    ``needs_runtime``: the handler reads the store or adds and changes jobs,
    so a runtime that is not started answers ``503 not_started``; ``False``
    for routes that only read what is declared in memory (pools, tasks, the
    dashboard's files). The OpenAPI document says so (``openapi.operation``).
    """

    method: str
    path: str
    handler: Handler
    name: str
    summary: str
    tag: str
    access: Access = "auth"
    params: tuple[Param, ...] = ()
    query_prefixes: tuple[str, ...] = ()
    body: Schema | None = None
    replies: Mapping[int, Reply] = field(default_factory=dict)
    description: str = ""
    needs_runtime: bool = True

    @property
    def openapi_path(self) -> str:
        """The path with Starlette's convertors removed: ``/jobs/{job_id}``."""
        return _CONVERTOR.sub(r"{\1}", self.path)

    def query_names(self) -> frozenset[str]:
        names = {p.name for p in self.params if p.where == "query"}
        if self.access == "token":
            names.add("token")
        return frozenset(names)

    def bind(self, api: Api) -> Callable[[Request], Awaitable[Response]]:
        """This endpoint's handler behind its checks: authentication, then the query."""
        allowed = self.query_names()
        prefixes = self.query_prefixes or ("\0",)
        settings = api.settings
        handler = self.handler
        access = self.access

        async def endpoint(request: Request) -> Response:
            try:
                request.state.principal = await authenticate(
                    request,
                    access=access,
                    auth=settings.auth,
                    tokens=api.tokens,
                    trusted_origins=settings.trusted_origins,
                )
                for key in request.query_params:
                    if key not in allowed and not key.startswith(prefixes):
                        expected = ", ".join(sorted(allowed)) or "none"
                        raise ApiError(
                            422,
                            "invalid_request",
                            f"unknown query parameter {key!r}; expected: {expected}",
                            field=key,
                        )
                return await handler(api, request)
            except ApiError as exc:
                return exc.response()
            except TaskrtError as exc:
                return taskrt_error_response(exc, retry_after=settings.retry_after)

        return endpoint


class _Integer(IntegerConvertor):
    """Starlette's ``int``, except that a number ``int()`` refuses (more than 4300
    digits) is a path no route takes (404), not an exception (500)."""

    def convert(self, value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise HTTPException(404) from None


_INTEGER = _Integer()


def routes(endpoints: Sequence[Endpoint], api: Api) -> list[Route]:
    """One Starlette route per path, dispatching on the method.

    One route per path (not per endpoint) so that a wrong method is answered
    405 with an ``Allow`` header naming every method the path has.
    """
    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    names: dict[str, str] = {}
    for endpoint in endpoints:
        methods = by_path.setdefault(endpoint.path, {})
        if endpoint.method in methods:
            raise InvalidOption("endpoints", f"two endpoints for {endpoint.method} {endpoint.path}")
        methods[endpoint.method] = endpoint.bind(api)
        names.setdefault(endpoint.path, endpoint.name)
    out = []
    for path, methods in by_path.items():
        if "GET" in methods:
            methods.setdefault("HEAD", methods["GET"])

        async def dispatch(
            request: Request, methods: dict[str, Callable[[Request], Awaitable[Response]]] = methods
        ) -> Response:
            return await methods[request.method](request)

        route = Route(path, dispatch, methods=list(methods), name=names[path])
        for param, convertor in route.param_convertors.items():
            if type(convertor) is IntegerConvertor:
                route.param_convertors[param] = _INTEGER
        out.append(route)
    return out


class EndpointGroup:
    """The endpoints of one module, declared with ``@group.get(...)`` and friends."""

    def __init__(
        self, tag: str, description: str = "", *, components: Mapping[str, Schema] | None = None
    ) -> None:
        self.tag = tag
        self.description = description
        self.endpoints: list[Endpoint] = []
        # JSON Schemas this group's replies refer to (``schemas.ref(name)``).
        self.components: dict[str, Schema] = dict(components or {})

    def add(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        name: str | None = None,
        access: Access = "auth",
        params: Sequence[Param] = (),
        query_prefixes: Sequence[str] = (),
        body: Schema | None = None,
        replies: Mapping[int, Reply] | None = None,
        needs_runtime: bool = True,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            doc = (handler.__doc__ or "").strip()
            self.endpoints.append(
                Endpoint(
                    method=method,
                    path=path,
                    handler=handler,
                    name=name or handler.__name__,
                    summary=summary,
                    tag=self.tag,
                    access=access,
                    params=tuple(params),
                    query_prefixes=tuple(query_prefixes),
                    body=body,
                    replies=dict(replies or {}),
                    description=doc,
                    needs_runtime=needs_runtime,
                )
            )
            return handler

        return register

    def get(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.add("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.add("POST", path, **options)

    def patch(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.add("PATCH", path, **options)

    def put(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.add("PUT", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.add("DELETE", path, **options)


__all__ = ["Api", "Endpoint", "EndpointGroup", "Handler", "Param", "Reply", "Settings", "routes"]
