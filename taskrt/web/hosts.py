"""Which ``Host`` headers the app answers: the defence against DNS rebinding.

Notes:

1. **The attack.** A page on ``evil.example`` whose DNS name is re-pointed at
   127.0.0.1 makes the victim's browser send ``Host: evil.example`` to a
   server on the victim's loopback interface; the browser thinks it talks to
   its own origin, so cross-site checks pass. Only the ``Host`` header gives
   it away.
2. **The default** (``allowed_hosts=None``) refuses a foreign ``Host`` only
   where the attack lands: on a connection the server accepted on a loopback
   address (``scope["server"]`` in 127.0.0.0/8 or ``::1``), the ``Host`` must
   be a loopback name too (``localhost``, ``*.localhost``, ``127.x.x.x``,
   ``[::1]``, any port). A connection to any other address is answered
   whatever its ``Host``. A reverse proxy on the same machine that forwards
   its public ``Host`` to 127.0.0.1 must therefore name it in
   ``allowed_hosts``.
3. **Explicit ``allowed_hosts``** (``["jobs.example.com", "*.example.com"]``)
   follow Starlette's ``TrustedHostMiddleware``: a host matches a pattern
   equal to it, or one ``*.suffix`` it ends with (``*.example.com`` matches
   ``a.example.com``, not ``example.com``); ``"*"`` allows every host. Ports
   are ignored. Unlike Starlette's, the refusal is a JSON 400 and there is
   no ``www.`` redirect. ``create_app`` reads ``$TASKRT_ALLOWED_HOSTS``
   (comma-separated) when it is not given ``allowed_hosts``.
4. A request without a ``Host``, or with a malformed one, is refused wherever
   a check applies. A WebSocket handshake is refused by closing it (1008).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response

# ``name``, ``name:port``, ``[v6]``, ``[v6]:port``; the host part without the port.
_HOST = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]@]+)(?::(?P<port>[0-9]{1,5}))?")


def split_host(header: str | None) -> tuple[str, int | None] | None:
    """The host (lower-cased, IPv6 in brackets) and port of a ``Host`` header or
    of an origin's netloc, or ``None`` when it is malformed."""
    if header is None:
        return None
    match = _HOST.fullmatch(header.strip())
    if match is None:
        return None
    host = match["host"].lower()
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    port = None if match["port"] is None else int(match["port"])
    if port is not None and port > 65535:
        return None
    return host, port


def host_of(header: str | None) -> str | None:
    """The host of a ``Host`` header, lower-cased (IPv6 in brackets), or ``None``."""
    split = split_host(header)
    return None if split is None else split[0]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name, an IP, or ``[v6]``) names this machine's loopback."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    # A dual-stack listener (uvicorn's with --workers binds ``::``) shows a
    # connection to 127.0.0.1 as ``::ffff:127.0.0.1``, not loopback to Python 3.11.
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def check_patterns(allowed_hosts: Iterable[str]) -> tuple[str, ...]:
    """``allowed_hosts`` lower-cased, or ``ValueError`` for a malformed pattern (note 3)."""
    if isinstance(allowed_hosts, str):
        raise ValueError(f"expected a list of host names, found {allowed_hosts!r}")
    patterns = []
    for pattern in allowed_hosts:
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError(f"expected a host name, found {pattern!r}")
        pattern = pattern.strip().lower()
        wild = "*" in pattern[1:] or (pattern.startswith("*") and not pattern.startswith("*."))
        if wild and pattern != "*":
            raise ValueError(f"a wildcard must be '*' or like '*.example.com', found {pattern!r}")
        # A pattern is compared with the Host's name alone: one with a port, a
        # scheme or a space matched nothing, and every request was refused.
        name = pattern.removeprefix("*.")
        split = split_host(name)
        if pattern != "*" and (split is None or split[0] != name):
            bare = None if split is None else pattern.removesuffix(name) + split[0]
            hint = f" (a port is not part of it: {bare!r})" if bare else ""
            raise ValueError(
                f"expected a host name like 'jobs.example.com', found {pattern!r}{hint}"
            )
        patterns.append(pattern)
    return tuple(patterns)


def matches(host: str, patterns: Iterable[str]) -> bool:
    return any(
        pattern == "*"
        or host == pattern
        or (pattern.startswith("*.") and host.endswith(pattern[1:]))
        for pattern in patterns
    )


class HostCheck:
    """ASGI middleware: a request with a ``Host`` it may not have gets a JSON 400."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] | None = None) -> None:
        """``allowed_hosts``: ``None`` for the default (note 2), else patterns (note 3)."""
        self.app = app
        self.patterns = None if allowed_hosts is None else check_patterns(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.patterns == ("*",):
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("host")
        host = host_of(header)
        reason = self.refusal(scope, header, host)
        if reason is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # closing before accepting refuses the handshake
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid host"})
            return
        response = error_response(400, {"code": "invalid_host", "message": reason})
        await response(scope, receive, send)

    def refusal(self, scope: Scope, header: str | None, host: str | None) -> str | None:
        """Why the request may not be answered, or ``None`` (notes 2, 3)."""
        shown = "no Host header" if header is None else f"Host {header!r}"
        if self.patterns is None:
            server = scope.get("server")
            if not server or not isinstance(server[0], str) or not is_loopback(server[0]):
                return None
            if host is not None and is_loopback(host):
                return None
            return (
                f"{shown}: not a loopback name, on a connection to a loopback address "
                "(a DNS rebinding defence); name the host in allowed_hosts "
                "(taskrt serve --allowed-host, $TASKRT_ALLOWED_HOSTS) to serve it"
            )
        if host is not None and matches(host, self.patterns):
            return None
        return f"{shown}: not one of this server's allowed hosts"


__all__ = ["HostCheck", "check_patterns", "host_of", "is_loopback", "matches", "split_host"]
