"""``create_app``: the HTTP API of one runtime, as a Starlette app.

Served on its own, the app's lifespan enters the runtime (``async with rt``).
Mounted in a host app (``Mount("/tasks", app=create_app(rt))``), Starlette does
not run a mounted app's lifespan: the host's lifespan runs the runtime, and
the app only serves it. Either way, a runtime that is already started when the
lifespan begins is left to whoever started it.

Where routes go: each module of this package declares an ``EndpointGroup``;
``GROUPS`` lists the groups every app serves. A new API (schedules, say) adds
its group there; an application adds its own with ``endpoints=`` (documented
in ``/openapi.json``, authenticated like the rest) or plain Starlette
``routes=`` (served as they are, e.g. a static page).

Every request passes two gates before any route: ``hosts.HostCheck`` (the
``Host`` header, against DNS rebinding) and, in each endpoint,
``auth.authenticate`` (cross-site state changes, then who is calling). With
a token (``token=`` or ``$TASKRT_TOKEN``), ``login.TokenAuth`` is the
``auth`` callable, wrapping the application's own, and ``/login`` and
``/logout`` are served.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from ..errors import InvalidOption, TaskrtError
from ..events import check_buffer
from ..limits import check_count, check_flag, check_seconds, check_text, shown
from ..runtime import Runtime
from . import (
    bulk,
    dashboard,
    jobs,
    login,
    metrics,
    openapi,
    pools,
    schedules,
    streams,
    system,
    workflows,
)
from .auth import AuthCallable, JobTokens, parse_origin
from .errors import (
    ApiError,
    CatchAll,
    api_error_handler,
    http_exception_handler,
    taskrt_error_response,
)
from .hosts import HostCheck, check_patterns
from .routing import Api, Endpoint, EndpointGroup, Settings
from .routing import routes as api_routes

# The ranges of create_app's settings (docs/http-api.md, "create_app options").
HOUR = 3600.0
MAX_BODY = 1 << 30  # a request body is read into memory: a GiB at most
MAX_STREAMS = 1_000_000
MAX_RETRY_AFTER = 86_400  # a day
MAX_TITLE_BYTES = 1 << 10

#: The endpoint groups every app serves, in routing order.
GROUPS: tuple[EndpointGroup, ...] = (
    jobs.group,
    bulk.group,
    streams.group,
    workflows.group,
    pools.group,
    schedules.group,
    system.group,
    metrics.group,
    openapi.group,
    dashboard.group,
)


def create_app(
    runtime: Runtime,
    *,
    auth: AuthCallable | None = None,
    token: str | None = None,
    allowed_hosts: Iterable[str] | None = None,
    max_body: int = 1 << 20,
    heartbeat: float = 15.0,
    max_streams: int = 1000,
    send_timeout: float | None = 10.0,
    retry_after: int = 1,
    stream_buffer: int | None = None,
    token_secret: str | bytes | None = None,
    token_ttl: float = 300.0,
    trusted_origins: Iterable[str] = (),
    expose_tracebacks: bool = False,
    endpoints: Iterable[Endpoint | EndpointGroup] = (),
    routes: Iterable[BaseRoute] = (),
    middleware: Sequence[Middleware] = (),
    title: str = "taskrt",
) -> Starlette:
    """The HTTP API of ``runtime``.

    - ``auth``: ``request -> principal`` (sync or async); ``None`` or raising
      ``Unauthorized`` answers 401. Every route but ``/health`` goes through it.
    - ``token``: a shared secret every route but ``/health`` requires, as
      ``Authorization: Bearer``, the HTTP Basic password, or the cookie of
      the ``/login`` form (``login`` notes). ``None``: ``$TASKRT_TOKEN`` if
      set; ``""``: none. With ``auth`` too, a request showing the token is
      authorised and any other is ``auth``'s to decide.
    - ``allowed_hosts``: the ``Host`` names served (``"*.example.com"``,
      ``"*"`` for all). ``None``: ``$TASKRT_ALLOWED_HOSTS`` (comma-separated)
      if set, else on a loopback address only loopback names, elsewhere any
      (``hosts`` notes).
    - ``max_body``: the largest request body, in bytes (413 beyond): an
      integer from 1 to 2**30.
    - ``heartbeat``: seconds between comment lines on idle streams (0: none),
      at most 3600.
    - ``max_streams``: open event streams at once (503 + ``Retry-After``
      beyond): an integer from 1 to 1,000,000.
    - ``send_timeout``: seconds a stream waits on a client that stopped reading
      before it disconnects it, above 0 and at most 3600 (``None``: forever).
    - ``retry_after``: the ``Retry-After`` seconds of 503 answers: an integer
      from 0 to 86400.
    - ``stream_buffer``: events buffered per stream, an integer from 1 to
      1,000,000 (default: the broker's).
    - ``token_secret``, ``token_ttl``: the HMAC key of per-job tokens (a
      string or bytes of at least 16 bytes; random per process when not given)
      and their lifetime in seconds (above 0, at most 86400).
    - ``trusted_origins``: other origins (``https://app.example``) allowed to
      send state changes from a browser (``auth`` note 3).
    - ``expose_tracebacks``: include handler tracebacks in ``/attempts`` in an
      app without ``auth`` (with ``auth``, the requests it lets through get them).
    - ``endpoints``, ``routes``, ``middleware``: what an application adds
      (``Endpoint`` or ``EndpointGroup``, Starlette routes, ``Middleware``).
    - ``title``: the OpenAPI document's title (at most 1 KiB of text).

    A bad setting raises ``InvalidOption`` naming it, here, not on a request.
    """
    # Every setting is checked here, when the app is made: a bad one is an
    # ``InvalidOption`` naming it, never a 500 on each request later.
    if auth is not None and not callable(auth):
        raise InvalidOption(
            "auth", f"expected a callable (request -> principal), found {shown(auth)}"
        )
    max_body = check_count(max_body, "max_body", least=1, most=MAX_BODY)
    heartbeat = check_seconds(heartbeat, "heartbeat", most=HOUR)
    max_streams = check_count(max_streams, "max_streams", least=1, most=MAX_STREAMS)
    if send_timeout is not None:
        send_timeout = check_seconds(send_timeout, "send_timeout", most=HOUR, zero=False)
    retry_after = check_count(retry_after, "retry_after", least=0, most=MAX_RETRY_AFTER)
    if stream_buffer is not None:
        stream_buffer = check_buffer(stream_buffer, "stream_buffer")  # as a subscriber's
    check_flag(expose_tracebacks, "expose_tracebacks")
    title = check_text(title, "title", max_bytes=MAX_TITLE_BYTES)
    hosts_option = "allowed_hosts"
    if allowed_hosts is None:
        raw = os.environ.get("TASKRT_ALLOWED_HOSTS", "")
        listed = [host.strip() for host in raw.split(",") if host.strip()]
        allowed_hosts, hosts_option = (listed or None), "$TASKRT_ALLOWED_HOSTS"
    else:
        allowed_hosts = _listed(allowed_hosts, "allowed_hosts", "host names")
    try:
        hosts = None if allowed_hosts is None else check_patterns(allowed_hosts)
    except ValueError as exc:
        raise InvalidOption(hosts_option, str(exc)) from None
    token_option = "token"
    if token is None:
        token, token_option = os.environ.get("TASKRT_TOKEN", ""), "$TASKRT_TOKEN"
    if not isinstance(token, str):
        raise InvalidOption("token", f"expected a string or None, found {shown(token)}")
    builtin: login.TokenAuth | None = None
    if token:
        try:
            builtin = login.TokenAuth(token, fallback=auth, now=runtime.clock.now)
        except ValueError as exc:
            raise InvalidOption(token_option, str(exc)) from None
    origins = _listed(trusted_origins, "trusted_origins", "origins")
    for origin in origins:
        if not isinstance(origin, str) or parse_origin(origin) is None:
            raise InvalidOption(
                "trusted_origins",
                f"expected origins such as 'https://app.example' (a scheme and a host, "
                f"no path), found {shown(origin)}",
            )
    trusted = frozenset(origins)
    tokens = JobTokens(token_secret, token_ttl, runtime.clock.now)  # InvalidOption if bad
    added = _listed(endpoints, "endpoints", "endpoints or endpoint groups")
    for item in added:
        if not isinstance(item, Endpoint | EndpointGroup):
            raise InvalidOption(
                "endpoints", f"expected an Endpoint or an EndpointGroup, found {shown(item)}"
            )
    extra_routes = _listed(routes, "routes", "Starlette routes")
    for route in extra_routes:
        if not isinstance(route, BaseRoute):
            raise InvalidOption("routes", f"expected a Starlette route, found {shown(route)}")
    extra_middleware = _listed(middleware, "middleware", "Middleware(...) entries")
    for entry in extra_middleware:
        if not isinstance(entry, Middleware):
            raise InvalidOption(
                "middleware",
                f"expected starlette.middleware.Middleware(cls, ...), found {shown(entry)}",
            )
    settings = Settings(
        auth=auth if builtin is None else builtin,
        max_body=max_body,
        heartbeat=heartbeat,
        max_streams=max_streams,
        send_timeout=send_timeout,
        retry_after=retry_after,
        stream_buffer=stream_buffer,
        token_ttl=tokens.ttl,
        trusted_origins=trusted,
        expose_tracebacks=expose_tracebacks,
        title=title,
    )
    table: list[Endpoint] = []
    components = {}
    for item in (*GROUPS, *added):
        if isinstance(item, EndpointGroup):
            table.extend(item.endpoints)
            components.update(item.components)
        else:
            table.append(item)
    api = Api(runtime, settings, tokens, table, components)

    async def on_taskrt_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, TaskrtError):  # pragma: no cover - registered for TaskrtError only
            raise exc
        return taskrt_error_response(exc, retry_after=retry_after)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if runtime.started:  # the host runs it
            yield
            return
        async with runtime:
            yield

    login_routes = [] if builtin is None else login.routes(builtin, trusted)
    app = Starlette(
        routes=[*api_routes(table, api), *login_routes, *extra_routes],
        middleware=[
            Middleware(CatchAll),
            Middleware(HostCheck, allowed_hosts=hosts),
            *extra_middleware,
        ],
        exception_handlers={
            HTTPException: http_exception_handler,
            ApiError: api_error_handler,
            TaskrtError: on_taskrt_error,
        },
        lifespan=lifespan,
    )
    app.state.taskrt = api
    return app


def _listed(value: Any, field: str, what: str) -> list[Any]:
    """``value``'s items, or ``InvalidOption`` when it is not a list of them (a
    string is one value, not a list of its characters)."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidOption(field, f"expected a list of {what}, found {shown(value)}")
    return list(value)


__all__ = ["GROUPS", "create_app"]
