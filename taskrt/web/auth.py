"""Who may call: the pluggable ``auth`` callable, per-job tokens, cross-site refusal.

Notes:

1. ``auth(request)`` (sync or async) returns a principal: anything but
   ``None``. ``None``, or raising ``Unauthorized``, refuses with 401; raising
   ``Forbidden`` refuses with 403. The principal is put on
   ``request.state.principal``. Every route goes through it except
   ``GET /health``.
2. Browsers cannot set headers on ``EventSource``, so ``POST /jobs/{id}/token``
   mints a short-lived token scoped to one job (``token_ttl`` seconds, a day
   at most). Given as ``?token=``, it grants that job's state
   (``GET /jobs/{id}``, ``/progress``, ``/result``, ``/attempts`` without
   tracebacks) and its event stream, and nothing else; the ``auth`` callable
   is not asked.
   A token is ``v1.<job id>.<expiry>.<HMAC-SHA256>``: stateless, checked in
   constant time, signed with the app's secret (random per process unless
   ``token_secret`` is given, so a restart or another worker process refuses
   tokens it did not sign).
3. Cross-site requests must not act, whatever credentials come with them
   (cookies, a browser's cached HTTP Basic login, or none at all: an app
   without ``auth`` trusts whoever can reach it, and a page on another site
   can make the browser reach it). A state-changing request (POST, PATCH,
   PUT, DELETE) is refused with 403 ``cross_site`` when ``Sec-Fetch-Site``
   says ``cross-site``, or when it has an ``Origin`` that is neither the
   request's own origin (scheme, host and port as the request sees them:
   ``scope["scheme"]`` and the ``Host`` header, default ports filled in) nor
   one of ``trusted_origins``; ``Origin: null`` is never trusted.
   ``same-origin``, ``same-site`` and ``none`` pass when the origin does.
   A request with neither header (curl, the CLI, another server) is not a
   browser's cross-site request and passes. Behind a proxy that terminates
   TLS, let the server see the real scheme (uvicorn's ``--proxy-headers``)
   or list the public origin in ``trusted_origins``.
4. With a token configured (``create_app(token=)`` or ``$TASKRT_TOKEN``),
   ``login.TokenAuth`` is the ``auth`` callable of note 1: it accepts the
   token and, failing that, asks the application's own ``auth`` (see
   ``login``'s notes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from starlette.requests import Request

from ..errors import InvalidOption
from ..limits import check_seconds, shown
from .errors import ApiError
from .hosts import split_host
from .inputs import to_int

AuthCallable = Callable[[Request], Any | Awaitable[Any]]
Access = Literal["auth", "token", "public"]

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Unauthorized(Exception):
    """Raise from an ``auth`` callable to refuse with 401.

    ``challenge`` (e.g. ``'Bearer realm="jobs"'``) is sent as ``WWW-Authenticate``.
    """

    def __init__(self, message: str = "", *, challenge: str | None = None) -> None:
        super().__init__(message)
        self.challenge = challenge


class Forbidden(Exception):
    """Raise from an ``auth`` callable to refuse with 403."""


@dataclass(frozen=True, slots=True)
class JobTokenPrincipal:
    """The principal of a request authorised by a per-job token (note 2)."""

    job_id: int


MIN_SECRET_BYTES = 16
#: The longest lifetime of a per-job token, in seconds: a day (note 2).
MAX_TOKEN_TTL = 86_400.0


def check_secret(secret: Any) -> bytes:
    """The HMAC key ``token_secret`` names: random when ``None``, else a string
    (UTF-8) or bytes of at least ``MIN_SECRET_BYTES``; ``InvalidOption`` otherwise."""
    if secret is None:
        return secrets.token_bytes(32)
    if isinstance(secret, str):
        try:
            key = secret.encode()
        except UnicodeEncodeError:
            raise InvalidOption(
                "token_secret",
                f"expected valid UTF-8 text, found a lone surrogate in {shown(secret)}",
            ) from None
    elif isinstance(secret, bytes | bytearray):
        key = bytes(secret)
    else:
        raise InvalidOption(
            "token_secret", f"expected a string or bytes (or None), found {shown(secret)}"
        )
    if len(key) < MIN_SECRET_BYTES:
        raise InvalidOption(
            "token_secret", f"expected at least {MIN_SECRET_BYTES} bytes, found {len(key)}"
        )
    return key


class JobTokens:
    """Mints and checks per-job tokens (note 2)."""

    VERSION = "v1"

    def __init__(self, secret: str | bytes | None, ttl: float, now: Callable[[], float]) -> None:
        """``InvalidOption`` naming ``token_secret`` or ``token_ttl`` for a bad one."""
        self._key = check_secret(secret)
        self.ttl = check_seconds(ttl, "token_ttl", most=MAX_TOKEN_TTL, zero=False)
        self._now = now

    def _sign(self, job_id: int, expires: int) -> str:
        message = f"taskrt-job-token|{self.VERSION}|{job_id}|{expires}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def mint(self, job_id: int) -> tuple[str, int]:
        """A token for ``job_id`` and its expiry (epoch seconds)."""
        expires = int(self._now() + self.ttl) + 1
        return f"{self.VERSION}.{job_id}.{expires}.{self._sign(job_id, expires)}", expires

    def check(self, token: str, job_id: int) -> None:
        """Raise a 401 ``ApiError`` unless ``token`` is valid for ``job_id`` now."""
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != self.VERSION:
            raise ApiError(401, "invalid_token", "the token is malformed")
        token_job, expires = to_int(parts[1]), to_int(parts[2])
        if token_job is None or expires is None:
            raise ApiError(401, "invalid_token", "the token is malformed")
        if not hmac.compare_digest(parts[3].encode(), self._sign(token_job, expires).encode()):
            raise ApiError(401, "invalid_token", "the token's signature does not match")
        if token_job != job_id:
            raise ApiError(
                403, "token_scope", f"the token grants job {token_job}, not job {job_id}"
            )
        if expires <= self._now():
            raise ApiError(401, "token_expired", "the token has expired; ask for a new one")


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

Origin = tuple[str, str, int | None]


def origin_of(scheme: str, netloc: str) -> Origin | None:
    """``(scheme, host, port)`` with the scheme's default port filled in, or ``None``."""
    split = split_host(netloc)
    if split is None:
        return None
    host, port = split
    scheme = scheme.lower()
    return scheme, host, _DEFAULT_PORTS.get(scheme) if port is None else port


def parse_origin(origin: str) -> Origin | None:
    """An ``Origin`` header (``https://app.example:8443``) as ``origin_of`` gives it,
    or ``None`` when it is not one (``null``, or garbage such as ``http://[::1``)."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:  # an unbalanced bracket ("Invalid IPv6 URL")
        return None
    if not parts.scheme or not parts.netloc or parts.path or parts.query or parts.fragment:
        return None
    return origin_of(parts.scheme, parts.netloc)


def cross_site(request: Request, trusted_origins: Iterable[str]) -> str | None:
    """Why a state change must be refused as cross-site, or ``None`` (note 3)."""
    if request.method not in UNSAFE_METHODS:
        return None
    headers = request.headers
    if headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
        return "Sec-Fetch-Site: cross-site"
    origin = headers.get("origin")
    if origin is None:
        return None
    claimed = parse_origin(origin)
    if claimed is None:  # "null" (a sandboxed frame, a redirect), or garbage
        return f"Origin: {origin}"
    if claimed == origin_of(request.url.scheme, headers.get("host", "")):
        return None
    if any(claimed == parse_origin(trusted) for trusted in trusted_origins):
        return None
    return f"Origin {origin} is not this site"


async def authenticate(
    request: Request,
    *,
    access: Access,
    auth: AuthCallable | None,
    tokens: JobTokens,
    trusted_origins: Iterable[str],
) -> Any:
    """The request's principal, or an ``ApiError`` (notes 1-4)."""
    if access == "public":
        return None
    if access == "token":
        token = request.query_params.get("token")
        if token is not None:
            job_id = request.path_params["job_id"]
            tokens.check(token, job_id)
            return JobTokenPrincipal(job_id)
    reason = cross_site(request, trusted_origins)
    if reason is not None:
        raise ApiError(
            403,
            "cross_site",
            f"a cross-site {request.method} may not change anything here ({reason}); "
            "send it from this site, or list its origin in trusted_origins",
        )
    if auth is None:
        return None
    try:
        principal = auth(request)
        if inspect.isawaitable(principal):
            principal = await principal
    except Unauthorized as exc:
        error = _unauthorized(str(exc))
        if exc.challenge:
            error.headers["WWW-Authenticate"] = exc.challenge
        raise error from None
    except Forbidden as exc:
        raise ApiError(403, "forbidden", str(exc) or "forbidden") from None
    if principal is None:
        raise _unauthorized("")
    return principal


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message or "authentication required")


__all__ = [
    "UNSAFE_METHODS",
    "Access",
    "AuthCallable",
    "Forbidden",
    "JobTokenPrincipal",
    "JobTokens",
    "Unauthorized",
    "authenticate",
    "check_secret",
    "cross_site",
    "origin_of",
    "parse_origin",
]
