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

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from ..errors import InvalidOption, TaskrtError
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
    - ``max_body``: the largest request body, in bytes (413 beyond).
    - ``heartbeat``: seconds between comment lines on idle streams (0: none).
    - ``max_streams``: open event streams at once (503 + ``Retry-After`` beyond).
    - ``send_timeout``: seconds a stream waits on a client that stopped reading
      before it disconnects it (``None``: forever).
    - ``retry_after``: the ``Retry-After`` seconds of 503 answers.
    - ``stream_buffer``: events buffered per stream (default: the broker's).
    - ``token_secret``, ``token_ttl``: the HMAC key of per-job tokens (random
      per process when not given) and their lifetime in seconds.
    - ``trusted_origins``: other origins (``https://app.example``) allowed to
      send state changes from a browser (``auth`` note 3).
    - ``expose_tracebacks``: include handler tracebacks in ``/attempts`` in an
      app without ``auth`` (with ``auth``, the requests it lets through get them).
    - ``endpoints``, ``routes``, ``middleware``: what an application adds.
    """
    _check(max_body=max_body, heartbeat=heartbeat, max_streams=max_streams, retry_after=retry_after)
    if send_timeout is not None and send_timeout <= 0:
        raise InvalidOption(
            "send_timeout", f"expected a positive number or None, found {send_timeout!r}"
        )
    if stream_buffer is not None and stream_buffer < 1:
        raise InvalidOption(
            "stream_buffer", f"expected a positive integer, found {stream_buffer!r}"
        )
    hosts_option = "allowed_hosts"
    if allowed_hosts is None:
        raw = os.environ.get("TASKRT_ALLOWED_HOSTS", "")
        listed = [host.strip() for host in raw.split(",") if host.strip()]
        allowed_hosts, hosts_option = (listed or None), "$TASKRT_ALLOWED_HOSTS"
    try:
        hosts = None if allowed_hosts is None else check_patterns(allowed_hosts)
    except ValueError as exc:
        raise InvalidOption(hosts_option, str(exc)) from None
    token_option = "token"
    if token is None:
        token, token_option = os.environ.get("TASKRT_TOKEN", ""), "$TASKRT_TOKEN"
    builtin: login.TokenAuth | None = None
    if token:
        try:
            builtin = login.TokenAuth(token, fallback=auth, now=runtime.clock.now)
        except ValueError as exc:
            raise InvalidOption(token_option, str(exc)) from None
    if isinstance(trusted_origins, str):
        raise InvalidOption(
            "trusted_origins", f"expected a list of origins, found the string {trusted_origins!r}"
        )
    trusted = frozenset(trusted_origins)
    for origin in trusted:
        if not isinstance(origin, str) or parse_origin(origin) is None:
            raise InvalidOption(
                "trusted_origins",
                f"expected origins such as 'https://app.example' (a scheme and a host, "
                f"no path), found {origin!r}",
            )
    settings = Settings(
        auth=auth if builtin is None else builtin,
        max_body=max_body,
        heartbeat=heartbeat,
        max_streams=max_streams,
        send_timeout=send_timeout,
        retry_after=retry_after,
        stream_buffer=stream_buffer,
        token_ttl=token_ttl,
        trusted_origins=trusted,
        expose_tracebacks=expose_tracebacks,
        title=title,
    )
    try:
        tokens = JobTokens(token_secret, token_ttl, runtime.clock.now)
    except ValueError as exc:
        raise InvalidOption(
            "token_secret" if "secret" in str(exc) else "token_ttl", str(exc)
        ) from None
    table: list[Endpoint] = []
    components = {}
    for item in (*GROUPS, *endpoints):
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
        routes=[*api_routes(table, api), *login_routes, *routes],
        middleware=[
            Middleware(CatchAll),
            Middleware(HostCheck, allowed_hosts=hosts),
            *middleware,
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


def _check(**limits: float) -> None:
    for name, value in limits.items():
        low = 0 if name in ("heartbeat", "retry_after") else 1
        if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
            raise InvalidOption(name, f"expected a number >= {low}, found {value!r}")


__all__ = ["GROUPS", "create_app"]
