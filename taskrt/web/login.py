"""Built-in token auth: one shared secret, no code (``$TASKRT_TOKEN``).

Notes:

1. **Where the token comes from.** ``create_app(rt, token="...")``, or, when
   ``token`` is not given, the environment variable ``TASKRT_TOKEN``
   (``token=""`` turns it off whatever the environment says). It must be at
   least 16 characters: ``python -c "import secrets; print(secrets.token_urlsafe(32))"``.
2. **How a request shows it.** ``Authorization: Bearer <token>``; the
   password of HTTP Basic (any user name); or the login cookie (note 3).
   Every route needs it but ``GET /health``, ``/login`` and ``/logout``; a
   per-job token still grants its job's state and stream (auth note 2).
   Compared with ``hmac.compare_digest``.
3. **The login cookie is not the token.** ``POST /login`` with the right token
   sets ``taskrt_session`` to ``v1.<expiry>.<HMAC-SHA256 keyed by the token>``:
   it proves the token was known, expires after ``LOGIN_TTL`` (its
   ``Max-Age`` too), and dies when the token changes. ``HttpOnly``,
   ``SameSite=Strict``, ``Secure`` on https, its ``Path`` the app's root.
   Being stateless, a cookie cannot be revoked before it expires except by
   changing the token; ``/logout`` only removes it from the browser.
4. **With ``auth=`` too.** A request that shows the token is authorised (its
   principal a ``TokenPrincipal``); any other is the application's ``auth``
   callable's to decide, and its answer stands (a principal, 401 or 403).
5. **Browsers.** An unauthenticated ``GET`` of a dashboard page that accepts
   ``text/html`` is redirected (303) to ``/login`` instead of a JSON 401. The
   login form's POST is refused when cross-site (auth note 3) like any state
   change; a wrong token shows the form again with 401. Every answer is
   ``Cache-Control: no-store``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import html
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal
from urllib.parse import parse_qs

from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from .auth import AuthCallable, Unauthorized, cross_site
from .errors import ApiError
from .inputs import to_int

COOKIE = "taskrt_session"
#: Seconds a login lasts (note 3).
LOGIN_TTL = 12 * 3600
MIN_TOKEN_LENGTH = 16
_FORM_LIMIT = 8 * 1024
_VERSION = "v1"
_NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True, slots=True)
class TokenPrincipal:
    """The principal of a request that showed the app's token, and how (note 2)."""

    via: Literal["bearer", "basic", "cookie"]


class LoginRequired(ApiError):
    """An unauthenticated browser asking for a dashboard page: off to the login form."""

    def __init__(self, location: str) -> None:
        super().__init__(303, "login_required", "sign in first", headers={"Location": location})
        self.location = location

    def response(self) -> Response:
        return RedirectResponse(self.location, status_code=303, headers=_NO_STORE)


def check_token(token: str) -> str:
    """``token``, or ``ValueError`` saying why it cannot be the app's token (note 1)."""
    if not isinstance(token, str):
        raise ValueError(f"expected a string, found {type(token).__name__}")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"the token must be at least {MIN_TOKEN_LENGTH} characters, found {len(token)}; "
            'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    if token != token.strip() or not token.isprintable():
        raise ValueError("the token may not contain spaces at its ends or control characters")
    return token


class TokenAuth:
    """The ``auth`` callable of an app with a token (notes 2-5)."""

    def __init__(
        self,
        token: str,
        *,
        fallback: AuthCallable | None,
        now: Callable[[], float],
        ttl: int = LOGIN_TTL,
    ) -> None:
        self._token = check_token(token).encode()
        self.fallback = fallback
        self.ttl = ttl
        self._now = now

    def matches(self, candidate: str) -> bool:
        """Whether ``candidate`` is the token, in constant time."""
        return hmac.compare_digest(candidate.encode(), self._token)

    def matches_header(self, value: str) -> bool:
        """Whether a header's ``value`` is the token: its bytes as sent, which the
        server reads as Latin-1 (a token of non-ASCII text arrives as its UTF-8)."""
        try:
            sent = value.encode("latin-1")
        except UnicodeEncodeError:
            sent = value.encode()
        return hmac.compare_digest(sent, self._token)

    def _sign(self, expires: int) -> str:
        message = f"taskrt-login|{_VERSION}|{expires}".encode()
        digest = hmac.new(self._token, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def cookie(self) -> str:
        """A fresh login cookie's value (note 3)."""
        expires = int(self._now()) + self.ttl
        return f"{_VERSION}.{expires}.{self._sign(expires)}"

    def cookie_is_valid(self, value: str) -> bool:
        version, _, rest = value.partition(".")
        raw_expires, _, signature = rest.partition(".")
        # ASCII digits only: isdigit() is true of "²", which int() refuses (inputs note 4).
        expires = to_int(raw_expires) if len(raw_expires) <= 12 else None
        if version != _VERSION or expires is None:
            return False
        if not hmac.compare_digest(signature.encode(), self._sign(expires).encode()):
            return False
        return expires > self._now()

    def shown(self, request: Request) -> TokenPrincipal | None:
        """How the request shows the token, or ``None`` (note 2)."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme == "bearer" and self.matches_header(credentials):
            return TokenPrincipal("bearer")
        if scheme == "basic":
            password = basic_password(credentials)
            if password is not None and self.matches(password):
                return TokenPrincipal("basic")
        cookie = request.cookies.get(COOKIE)
        if cookie is not None and self.cookie_is_valid(cookie):
            return TokenPrincipal("cookie")
        return None

    async def __call__(self, request: Request) -> Any:
        principal: Any = self.shown(request)
        if principal is not None:
            return principal
        if self.fallback is not None:  # note 4
            try:
                principal = self.fallback(request)
                if inspect.isawaitable(principal):
                    principal = await principal
            except Unauthorized:
                if wants_login(request):
                    raise LoginRequired(url_for(request, "/login")) from None
                raise
            if principal is not None:
                return principal
        if wants_login(request):
            raise LoginRequired(url_for(request, "/login"))
        raise Unauthorized(
            "authentication required: send the token as 'Authorization: Bearer <token>'",
            challenge='Bearer realm="taskrt"',
        )


def basic_password(credentials: str) -> str | None:
    """The password of HTTP Basic ``credentials`` (base64 of ``user:password``)."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _user, sep, password = decoded.partition(":")
    return password if sep else None


def route_path(request: Request) -> str:
    """The request's path inside the app (without the mount's root path)."""
    path: str = request.scope["path"]
    root = root_of(request)
    return path[len(root) :] if root and path.startswith(root) else path


def root_of(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def url_for(request: Request, path: str) -> str:
    return root_of(request) + path


_DASHBOARD_PAGE = re.compile(r"/dashboard(/(jobs|workflows)/[^/]+)?/?")


def wants_login(request: Request) -> bool:
    """Whether an unauthenticated request is a browser opening a dashboard page (note 5)."""
    return (
        request.method in ("GET", "HEAD")
        and "text/html" in request.headers.get("accept", "")
        and _DASHBOARD_PAGE.fullmatch(route_path(request)) is not None
    )


# -- the form -------------------------------------------------------------------------------


@functools.cache
def _template() -> tuple[str, str]:
    """The page and its Content-Security-Policy (the inline style allowed by its hash)."""
    text = resources.files("taskrt").joinpath("static", "login.html").read_text("utf-8")
    style = text[text.index("<style>") + len("<style>") : text.index("</style>")]
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    csp = (
        f"default-src 'none'; style-src 'sha256-{digest}'; img-src data:; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    return text, csp


def login_page(request: Request, *, error: str = "", status: int = 200) -> Response:
    text, csp = _template()
    body = (
        text.replace("{{root}}", html.escape(root_of(request), quote=True))
        .replace("{{error_hidden}}", "" if error else " hidden")
        .replace("{{error}}", html.escape(error))
    )
    headers = {
        **_NO_STORE,
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }
    return Response(body, status, headers, media_type="text/html; charset=utf-8")


async def _form_token(request: Request) -> str | None:
    """The ``token`` field of a small url-encoded form, or an ``ApiError``."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected Content-Type: application/x-www-form-urlencoded, found {media or 'none'}",
        )
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > _FORM_LIMIT:
                raise ApiError(
                    413, "body_too_large", f"the login form is at most {_FORM_LIMIT} bytes"
                )
    except ClientDisconnect:
        raise ApiError(400, "bad_request", "the client disconnected before the body") from None
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    except ValueError:  # more fields than a sign-in form has
        return None
    values = fields.get("token", [])
    return values[0] if len(values) == 1 else None


def routes(auth: TokenAuth, trusted_origins: Iterable[str]) -> list[BaseRoute]:
    """``GET``/``POST /login`` and ``GET /logout`` (note 5)."""
    trusted = tuple(trusted_origins)

    async def show(request: Request) -> Response:
        return login_page(request)

    async def submit(request: Request) -> Response:
        try:
            reason = cross_site(request, trusted)
            if reason is not None:
                raise ApiError(403, "cross_site", f"a cross-site sign-in is refused ({reason})")
            token = await _form_token(request)
        except ApiError as exc:
            return exc.response()
        if token is None or not auth.matches(token):
            return login_page(request, error="That is not the token.", status=401)
        response = RedirectResponse(url_for(request, "/dashboard"), 303, _NO_STORE)
        response.set_cookie(
            COOKIE,
            auth.cookie(),
            max_age=auth.ttl,
            path=url_for(request, "") or "/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse(url_for(request, "/login"), 303, _NO_STORE)
        response.delete_cookie(
            COOKIE,
            path=url_for(request, "") or "/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    return [
        Route("/login", show, methods=["GET"], name="login_form"),
        Route("/login", submit, methods=["POST"], name="login"),
        Route("/logout", logout, methods=["GET"], name="logout"),
    ]


__all__ = [
    "COOKIE",
    "LOGIN_TTL",
    "LoginRequired",
    "TokenAuth",
    "TokenPrincipal",
    "basic_password",
    "check_token",
    "login_page",
    "routes",
    "wants_login",
]
