"""Who may talk to the lab: its own host names, its own page's origin, and the token.

:class:`Access` says what the server accepts; :class:`AccessGuard` is the ASGI middleware that
enforces it on every HTTP request and WebSocket, before any route runs:

- ``Host`` must be one of the names the server is bound as (``127.0.0.1``, ``localhost``,
  ``::1``, the ``--host`` address, each ``--allow-host``), which defeats DNS rebinding; a
  foreign name gets 400.
- A WebSocket, or an HTTP request that changes something, carrying an ``Origin`` must come from
  the page's own origin (an allowed name on the same port); a foreign one gets 403 (a socket is
  closed with code 1008 and the reason).
- The token (``?token=`` in the start URL, which the page turns into a cookie of its own
  origin, or an ``Authorization: token TOKEN`` header from scripts) is required by the API, the
  sockets and the page: missing gets 401, wrong gets 403.

Starlette's ``TrustedHostMiddleware`` is not used because it splits ``Host`` at the first
``:`` and so cannot accept ``[::1]:PORT``.

Example:
    >>> access = Access.local(token="s3cret")
    >>> access.host_allowed("127.0.0.1:8000"), access.host_allowed("evil.example:8000")
    (True, False)
    >>> access.token_matches("s3cret"), access.token_matches("guess")
    (True, False)
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.responses import JSONResponse, PlainTextResponse

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")
OPEN_PATHS = ("/static/", "/vendor/", "/favicon.ico", "/openapi.json", "/docs", "/redoc")
"""Paths served without the token: the page's code and the API schema, the same for every
install (no run, file or setting is reachable through them)."""
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
POLICY_VIOLATION = 1008


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost`` or a loopback address).

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def split_host(netloc: str) -> tuple[str, int | None]:
    """``(name, port)`` of a ``Host`` header or an origin's netloc; brackets of IPv6 removed.

    >>> split_host("[::1]:8000"), split_host("localhost"), split_host("Example.org:80")
    (('::1', 8000), ('localhost', None), ('example.org', 80))
    """
    try:
        parts = urlsplit("//" + netloc)
        return (parts.hostname or "", parts.port)
    except ValueError:
        return ("", None)


@dataclass(frozen=True)
class Access:
    """What the server accepts: the token (None: none required) and the host names.

    ``wildcard`` (bound to ``0.0.0.0`` or ``::``) also accepts any IP address as the host
    name: DNS rebinding needs a name, and the machine's addresses are not known in advance.
    """

    token: str | None
    hosts: frozenset[str] = field(default_factory=lambda: frozenset(LOOPBACK_NAMES))
    wildcard: bool = False

    @classmethod
    def local(cls, token: str | None = None, extra_hosts: tuple[str, ...] = ()) -> Access:
        """Loopback names only; a fresh token unless one is given."""
        return cls.for_host("127.0.0.1", token or new_token(), extra_hosts)

    @classmethod
    def for_host(cls, bind: str, token: str | None, extra_hosts: tuple[str, ...] = ()) -> Access:
        """The names a server bound to ``bind`` answers to."""
        names = {*LOOPBACK_NAMES, *(h.strip().strip("[]").lower() for h in extra_hosts)}
        wildcard = bind in WILDCARD_ADDRESSES
        if not wildcard:
            names.add(bind.strip("[]").lower())
        return cls(token=token, hosts=frozenset(n for n in names if n), wildcard=wildcard)

    def host_allowed(self, netloc: str) -> bool:
        name, _ = split_host(netloc)
        if name in self.hosts:
            return True
        if self.wildcard:
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False

    def origin_allowed(self, origin: str, host_header: str) -> bool:
        """An origin is the page's own when its name is allowed and its port is the one the
        request was sent to."""
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        _, port = split_host(parts.netloc)
        default = 443 if parts.scheme == "https" else 80
        _, host_port = split_host(host_header)
        return self.host_allowed(parts.netloc) and (port or default) == (host_port or 80)

    def token_matches(self, given: str | None) -> bool:
        if self.token is None:
            return True
        return given is not None and secrets.compare_digest(given.encode(), self.token.encode())


def cookie_name(host_header: str) -> str:
    """The token's cookie, one per port (cookies do not tell ports apart, two labs might)."""
    _, port = split_host(host_header)
    return f"mugpt-token-{port or 80}"


def given_token(scope: dict[str, Any]) -> str | None:
    """The token a request carries: ``Authorization: token T`` (or ``Bearer T``), the
    ``token`` query parameter, or the page's cookie; None if none."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0]
    cookies = SimpleCookie()
    try:
        cookies.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header is no token
        return None
    morsel = cookies.get(cookie_name(headers.get("host", "")))
    return morsel.value if morsel is not None else None


def token_help(host_header: str) -> str:
    return (
        f"open the URL that mugpt serve printed (http://{host_header or '127.0.0.1:PORT'}/"
        "?token=...), or send the header 'Authorization: token TOKEN'"
    )


class AccessGuard:
    """ASGI middleware enforcing :class:`Access` (see the module's docstring)."""

    def __init__(self, app: Any, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, detail, reason = refusal
        if kind == "websocket":
            # accept, then close with the reason: a browser sees the code and reason (a socket
            # refused before it is accepted only shows 1006)
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": POLICY_VIOLATION,
                            "reason": reason})  # fmt: skip
            return
        response: Any
        if scope["path"].startswith("/api/"):
            response = JSONResponse(status_code=status, content={"detail": detail})
        else:
            response = PlainTextResponse(detail, status_code=status)
        await response(scope, receive, send)

    def refusal(self, scope: Any) -> tuple[int, str, str] | None:
        """``(status, detail, reason)`` if the request must be refused, else None; ``reason``
        is the short form a WebSocket close frame can carry (at most 123 bytes)."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if not self.access.host_allowed(host):
            return (
                400,
                (
                    f"this lab does not answer to the host name {host!r}; open it as "
                    "http://127.0.0.1:PORT/, or restart mugpt serve with --allow-host NAME"
                ),
                "foreign host name: open the lab as http://127.0.0.1:PORT/ (or --allow-host NAME)",
            )
        origin = headers.get("origin")
        changes = scope["type"] == "websocket" or scope.get("method") not in SAFE_METHODS
        if origin is not None and changes and not self.access.origin_allowed(origin, host):
            return (
                403,
                (
                    f"requests from the page {origin!r} are refused: only the lab's own page "
                    f"(http://{host}/) may talk to it"
                ),
                "foreign origin: only the lab's own page may connect",
            )
        path = scope["path"]
        if self.access.token is None or path.startswith(OPEN_PATHS):
            return None
        given = given_token(scope)
        if given is None:
            return (
                401,
                f"this lab needs its token: {token_help(host)}",
                ("missing token: open the URL mugpt serve printed, or send ?token=TOKEN"),
            )
        if not self.access.token_matches(given):
            return (
                403,
                f"the token is wrong: {token_help(host)}",
                ("wrong token: open the URL mugpt serve printed"),
            )
        return None
